//! The engine's governance gateway, implemented over the catalog and the
//! Cedar policies in force: `decide` asks it before every step of every
//! workflow. It reads only the policy set in memory (no I/O per call).

use mandate_engine::core::gateway::{
    ApprovalRequirement, Gateway, GatewayDecision, GatewayRequest, PreapprovalUse, Principal,
    RuleRef, WorkflowApproval,
};

use super::eval::CheckRequest;
use super::{Governance, InterventionPath, PolicyDecision};

fn builtin(id: &str, message: String) -> RuleRef {
    RuleRef {
        id: id.to_string(),
        message,
        level: "builtin".into(),
        file: None,
    }
}

impl From<PolicyDecision> for GatewayDecision {
    fn from(d: PolicyDecision) -> GatewayDecision {
        GatewayDecision {
            path: d.decision,
            decided_by: d.decided_by,
            policy_hash: d.policy_hash,
            approval: d.approval,
            operation: d.operation.map(|o| o.as_str().to_string()),
            scope: d.scope,
            owners: d.owners,
            risk: (!d.risk.is_empty()).then_some(d.risk),
            data_classes: d.data_classes,
            crudlex: (!d.crudlex.is_empty()).then_some(d.crudlex),
            autonomy: d.autonomy,
            recovery_path: d.recovery_path,
            preapproval: d.preapproval.and_then(|p| {
                Some(PreapprovalUse {
                    id: p["task_id"].as_str()?.to_string(),
                    granted_by: p["granted_by"].as_str()?.to_string(),
                    expires_at_ms: p["expires_at_ms"].as_i64()?,
                })
            }),
        }
    }
}

impl Gateway for Governance {
    fn evaluate(&self, r: &GatewayRequest<'_>) -> GatewayDecision {
        let set = {
            self.reload_if_changed();
            self.current()
        };
        let Some(agent) = &r.principal.agent else {
            // A task an operator submitted without naming an agent acts as
            // that operator (a person, authenticated as an operator): agent
            // rules do not apply, and the decision says so.
            let tool = set.catalog.tool(r.tool);
            return GatewayDecision {
                path: InterventionPath::MonitoredExecute,
                decided_by: vec![builtin(
                    "identity.operator-task",
                    "submitted by an operator with no agent: agent policies do not apply; the step is recorded and monitored".into(),
                )],
                policy_hash: set.hash.clone(),
                approval: None,
                operation: tool.map(|t| t.operation.as_str().to_string()),
                scope: None,
                owners: tool.map(|t| t.owners.clone()).unwrap_or_default(),
                risk: None,
                data_classes: tool.map(|t| t.data_classes.clone()).unwrap_or_default(),
                crudlex: None,
                autonomy: None,
                recovery_path: tool.and_then(|t| set.catalog.recovery_path(t)),
                preapproval: None,
            };
        };
        set.evaluate(&CheckRequest {
            step: r.step.to_string(),
            tool: r.tool.to_string(),
            input: r.input.clone(),
            agent: agent.clone(),
            on_behalf_of: r.principal.on_behalf_of.clone(),
            environment: None,
            now_ms: r.now_ms,
        })
        .into()
    }

    fn workflow_approval(
        &self,
        _principal: &Principal,
        workflow: &str,
        subject: &str,
    ) -> WorkflowApproval {
        let set = self.current();
        let d = &set.catalog.defaults;
        WorkflowApproval {
            requirement: ApprovalRequirement {
                approvers: d.approvers.clone(),
                quorum: 1,
                timeout_ms: d.approval_timeout_ms,
                escalation: None,
            },
            decided_by: vec![builtin(
                "catalog.default-approvers",
                format!(
                    "workflow {workflow} asks for approval {subject:?}: decided by the catalog's default approvers ({})",
                    if d.approvers.is_empty() {
                        "none named".to_string()
                    } else {
                        d.approvers.join(", ")
                    }
                ),
            )],
            policy_hash: set.hash.clone(),
        }
    }

    fn admit(&self, principal: &Principal) -> Result<(), String> {
        let set = self.current();
        let c = &set.catalog;
        if let Some(user) = &principal.on_behalf_of
            && c.user(user).is_none()
        {
            return Err(format!(
                "field on_behalf_of: {user:?} is not a user in the catalog; name a user of the catalog's users list (or none)"
            ));
        }
        let Some(agent_id) = &principal.agent else {
            return Ok(());
        };
        let Some(agent) = c.agent(agent_id) else {
            return Err(format!(
                "field agent: {agent_id:?} is not an agent in the catalog; add it to the catalog's agents before it submits"
            ));
        };
        if let Some(user) = &principal.on_behalf_of
            && !agent.on_behalf_of.is_empty()
            && !agent.on_behalf_of.contains(user)
        {
            return Err(format!(
                "field on_behalf_of: agent {agent_id} may act only for {}, not for {user}",
                agent.on_behalf_of.join(", ")
            ));
        }
        Ok(())
    }

    fn may_preapprove(&self, identity: &str, tool: &str, agent: &str) -> Result<(), String> {
        let set = self.current();
        let c = &set.catalog;
        let Some(t) = c.tool(tool) else {
            return Err(format!("field tool: {tool:?} is not in the catalog"));
        };
        if c.agent(agent).is_none() {
            return Err(format!(
                "field agent: {agent:?} is not an agent in the catalog"
            ));
        }
        if !t.owners.iter().any(|o| o == identity) {
            return Err(format!(
                "{identity} does not own {tool} (owners: {}); only an owner may pre-approve it",
                t.owners.join(", ")
            ));
        }
        Ok(())
    }
}
