//! The `plan` workflow as release 0.1 ran it (version 1): each step checked
//! by a recorded `policy.check` step, approvals waited for as signals. Kept
//! only so that histories written then still replay (`mandate replay`,
//! `mandate verify`); new tasks run version 2, governed by the engine's
//! gateway.

use std::time::Duration;

use futures::future::FutureExt;
use mandate_activities::policy::tools::{APPROVAL_ESCALATE, POLICY_CHECK};
use mandate_activities::policy::{InterventionPath, PolicyDecision};
use mandate_engine::{StepOptions, WorkflowContext, WorkflowError};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::{
    PlanLimits, PlanStep, RunState, Settle, StepResult, approvals, merge, refs,
    resolve_compensation, steps_context, validate,
};

impl RunState {
    async fn policy_check(
        &self,
        name: String,
        step: &PlanStep,
        input: &Value,
    ) -> Result<PolicyDecision, String> {
        Settle(false).await;
        let out = self
            .ctx
            .step(
                StepOptions::new(
                    POLICY_CHECK,
                    json!({
                        "step": step.id,
                        "tool": step.tool,
                        "input": input,
                        "agent": self.doc.agent,
                        "on_behalf_of": self.doc.on_behalf_of,
                        "environment": self.doc.environment,
                    }),
                )
                .name(name),
            )
            .await
            .map_err(|e| e.to_string())?;
        serde_json::from_value(out).map_err(|e| {
            format!(
                "step {:?}: policy.check returned an unreadable decision: {e}",
                step.id
            )
        })
    }

    fn denied(step: &PlanStep, d: &PolicyDecision) -> String {
        format!(
            "step {:?} ({}) denied by policy (set {}): {}",
            step.id,
            step.tool,
            &d.policy_hash[..d.policy_hash.len().min(12)],
            d.explain()
        )
    }

    /// Waits for the approvals a gated step needs; returns the input to run
    /// (edited by an approver, re-checked by policy).
    async fn approve(
        &self,
        step: &PlanStep,
        d: &PolicyDecision,
        input: Value,
    ) -> Result<Value, String> {
        let req = d
            .approval
            .clone()
            .unwrap_or(mandate_activities::policy::ApprovalRequirement {
                approvers: d.owners.clone(),
                quorum: 1,
                timeout_ms: 3_600_000,
                escalation: None,
            });
        let name = approvals::signal_name(&step.id);
        let mut approved: Vec<String> = Vec::new();
        let mut edit: Option<Value> = None;
        let mut escalated = false;
        while (approved.len() as u32) < req.quorum.max(1) {
            Settle(false).await;
            let signal = self
                .ctx
                .wait_approval_signal_v1(&name, Some(Duration::from_millis(req.timeout_ms)))
                .await;
            let Some(signal) = signal else {
                if let (Some(to), false) = (&req.escalation, escalated) {
                    Settle(false).await;
                    self.ctx
                        .step(
                            StepOptions::new(
                                APPROVAL_ESCALATE,
                                json!({"step": step.id, "to": to, "after_ms": req.timeout_ms}),
                            )
                            .name(format!("{}.escalate", step.id)),
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                    escalated = true;
                    continue;
                }
                return Err(format!(
                    "step {:?} ({}): no approval within {} ms{}; the step was not run",
                    step.id,
                    step.tool,
                    req.timeout_ms,
                    if escalated { " after escalation" } else { "" }
                ));
            };
            let who = approvals::identity(&signal.sender).to_string();
            let comment = signal.payload["comment"].as_str().unwrap_or("").to_string();
            if signal.payload["decision"].as_str() == Some("reject") {
                return Err(format!(
                    "step {:?} ({}) rejected by {who}{}",
                    step.id,
                    step.tool,
                    if comment.is_empty() {
                        String::new()
                    } else {
                        format!(": {comment}")
                    }
                ));
            }
            if approved.contains(&who) {
                continue;
            }
            approved.push(who);
            if let Some(e) = signal.payload.get("edit").filter(|e| e.is_object()) {
                edit = Some(e.clone());
            }
        }
        let Some(edit) = edit else { return Ok(input) };
        let edited = merge(&input, &edit);
        let recheck = self
            .policy_check(format!("{}.policy.edit", step.id), step, &edited)
            .await?;
        if recheck.decision == InterventionPath::Deny {
            return Err(format!(
                "the approver's edit of {}",
                Self::denied(step, &recheck)
            ));
        }
        Ok(edited)
    }

    async fn run_step_v1(&self, index: usize) -> StepResult {
        let step = &self.doc.steps[index];
        let steps = steps_context(&self.outputs());
        let input = refs::resolve(&step.input, &json!({"steps": steps}), "input")
            .map_err(|e| format!("step {:?}: {e}", step.id))?;
        let decision = self
            .policy_check(format!("{}.policy", step.id), step, &input)
            .await?;
        let input = match decision.decision {
            InterventionPath::Deny => return Err(Self::denied(step, &decision)),
            InterventionPath::GatedExecute if decision.preapproval.is_none() => {
                self.approve(step, &decision, input).await?
            }
            _ => input,
        };
        let mut options = StepOptions::new(step.tool.clone(), input.clone()).name(step.id.clone());
        if let Some(r) = &step.retry {
            options = options.retry(r.clone());
        }
        if let Some(t) = step.timeout_ms {
            options = options.timeout(Duration::from_millis(t));
        }
        options.compensation = resolve_compensation(
            step,
            decision.compensation.as_ref(),
            &self.outputs(),
            &input,
        )?;
        if let Some(r) = step
            .recovery_path
            .clone()
            .or(decision.recovery_path.clone())
        {
            options = options.recovery(r);
        }
        Settle(false).await;
        let output = self.ctx.step(options).await.map_err(|e| e.to_string())?;
        self.outputs().insert(step.id.clone(), output);
        Ok(())
    }
}

pub(super) async fn run_plan(ctx: WorkflowContext, input: Value) -> Result<Value, WorkflowError> {
    let doc = validate::parse(&input).map_err(WorkflowError::new)?;
    let structure =
        validate::structure(&doc, &PlanLimits::default()).map_err(WorkflowError::new)?;
    let state = Arc::new(RunState {
        ctx,
        doc,
        outputs: Mutex::new(BTreeMap::new()),
        catalog: Value::Null,
    });
    super::run_dag(state, &structure, |state, i| {
        async move { state.run_step_v1(i).await }.boxed()
    })
    .await
}
