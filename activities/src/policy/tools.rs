//! The governance tools plan steps are checked and approved through:
//!
//! - `policy.check` (read): evaluates a step against the policies in force
//!   and returns the [`PolicyDecision`]. Its recorded output *is* the
//!   decision in the task's history, so replay never evaluates again.
//! - `approval.escalate` (read): records that an approval request passed its
//!   timeout and went to the secondary approver.
//! - `preapproval.grant` / `preapproval.revoke` (reversible writes): a batch
//!   pre-approval (tool, agent, scope, expiry, who granted it), kept in the
//!   world's `preapproval` namespace where `policy.check` looks for it.
//!
//! These tools never decide what a workflow does with a decision.

use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::eval::CheckRequest;
use super::{Governance, InterventionPath};
use crate::world::World;
use mandate_engine::tool::ToolRegistry;
use mandate_engine::tool::{Tool, ToolContext, ToolError, ToolKind, ToolResult};

pub const POLICY_CHECK: &str = "policy.check";
pub const APPROVAL_ESCALATE: &str = "approval.escalate";
pub const PREAPPROVAL_GRANT: &str = "preapproval.grant";
pub const PREAPPROVAL_REVOKE: &str = "preapproval.revoke";
/// The world namespace pre-approvals live in, keyed by the granting task id.
pub const PREAPPROVAL_NAMESPACE: &str = "preapproval";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `policy.check` (read): input `{step, tool, input, agent, on_behalf_of?,
/// environment?}` → a [`super::PolicyDecision`].
pub struct PolicyCheck {
    governance: Arc<Governance>,
    world: Option<World>,
}

impl PolicyCheck {
    pub fn new(governance: Arc<Governance>, world: Option<World>) -> Self {
        Self { governance, world }
    }
}

impl Tool for PolicyCheck {
    fn name(&self) -> &str {
        POLICY_CHECK
    }
    fn kind(&self) -> ToolKind {
        ToolKind::Read
    }
    fn call<'a>(&'a self, _ctx: ToolContext, input: Value) -> BoxFuture<'a, ToolResult> {
        async move {
            let mut request: CheckRequest = serde_json::from_value(input).map_err(|e| {
                ToolError::non_retryable(format!("{POLICY_CHECK}: invalid input: {e}"))
            })?;
            let now = now_ms();
            request.now_ms = now;
            let mut decision = self.governance.check(&request);
            if decision.decision == InterventionPath::GatedExecute
                && let Some(world) = &self.world
            {
                let grants = world
                    .list(PREAPPROVAL_NAMESPACE)
                    .await
                    .map_err(|e| ToolError::retryable(format!("{POLICY_CHECK}: {e}")))?;
                let scope = decision.scope.clone().unwrap_or_default();
                decision.preapproval = grants
                    .into_iter()
                    .find(|(_, g)| {
                        g["tool"] == request.tool.as_str()
                            && g["agent"] == request.agent.as_str()
                            && (g["scope"].is_null()
                                || g["scope"] == "*"
                                || g["scope"] == scope.as_str())
                            && g["expires_at_ms"].as_i64().is_some_and(|e| e > now)
                    })
                    .map(|(task_id, g)| {
                        json!({"task_id": task_id, "granted_by": g["granted_by"],
                               "expires_at_ms": g["expires_at_ms"], "scope": g["scope"]})
                    });
            }
            serde_json::to_value(&decision)
                .map_err(|e| ToolError::non_retryable(format!("{POLICY_CHECK}: {e}")))
        }
        .boxed()
    }
}

/// `approval.escalate` (read): input `{step, to, after_ms}` → the same, with
/// `escalated: true`. Recording it is the point: the history shows who the
/// request went to and when.
pub struct ApprovalEscalate;

impl Tool for ApprovalEscalate {
    fn name(&self) -> &str {
        APPROVAL_ESCALATE
    }
    fn kind(&self) -> ToolKind {
        ToolKind::Read
    }
    fn call<'a>(&'a self, _ctx: ToolContext, input: Value) -> BoxFuture<'a, ToolResult> {
        async move {
            let to = input.get("to").and_then(Value::as_str).ok_or_else(|| {
                ToolError::non_retryable(format!("{APPROVAL_ESCALATE}: field to is required"))
            })?;
            Ok(json!({"escalated": true, "to": to, "step": input.get("step"), "after_ms": input.get("after_ms")}))
        }
        .boxed()
    }
}

/// `preapproval.grant` (reversible write): input `{id, tool, agent, scope?,
/// expires_at_ms, granted_by}`; stored under `id` in the `preapproval`
/// namespace. Undo with `preapproval.revoke {id}`.
pub struct PreapprovalGrant {
    world: World,
}

impl PreapprovalGrant {
    pub fn new(world: World) -> Self {
        Self { world }
    }
}

impl Tool for PreapprovalGrant {
    fn name(&self) -> &str {
        PREAPPROVAL_GRANT
    }
    fn kind(&self) -> ToolKind {
        ToolKind::WriteReversible
    }
    fn call<'a>(&'a self, ctx: ToolContext, input: Value) -> BoxFuture<'a, ToolResult> {
        async move {
            let field = |f: &str| {
                input.get(f).and_then(Value::as_str).map(str::to_string).ok_or_else(|| {
                    ToolError::non_retryable(format!("{PREAPPROVAL_GRANT}: field {f} is required"))
                })
            };
            let id = field("id")?;
            let record = json!({
                "tool": field("tool")?,
                "agent": field("agent")?,
                "scope": input.get("scope").cloned().unwrap_or(Value::Null),
                "granted_by": field("granted_by")?,
                "expires_at_ms": input.get("expires_at_ms").and_then(Value::as_i64).ok_or_else(|| {
                    ToolError::non_retryable(format!("{PREAPPROVAL_GRANT}: field expires_at_ms is required"))
                })?,
            });
            self.world
                .apply(&ctx.idempotency_key, PREAPPROVAL_GRANT, PREAPPROVAL_NAMESPACE, &id, |_| {
                    Ok((Some(record.clone()), json!({"id": id, "grant": record})))
                })
                .await
                .map_err(|e| ToolError::retryable(format!("{PREAPPROVAL_GRANT}: {e}")))
        }
        .boxed()
    }
}

/// `preapproval.revoke` (reversible write): input `{id}`; removes the grant.
pub struct PreapprovalRevoke {
    world: World,
}

impl PreapprovalRevoke {
    pub fn new(world: World) -> Self {
        Self { world }
    }
}

impl Tool for PreapprovalRevoke {
    fn name(&self) -> &str {
        PREAPPROVAL_REVOKE
    }
    fn kind(&self) -> ToolKind {
        ToolKind::WriteReversible
    }
    fn call<'a>(&'a self, ctx: ToolContext, input: Value) -> BoxFuture<'a, ToolResult> {
        async move {
            let id = input.get("id").and_then(Value::as_str).ok_or_else(|| {
                ToolError::non_retryable(format!("{PREAPPROVAL_REVOKE}: field id is required"))
            })?;
            self.world
                .apply(
                    &ctx.idempotency_key,
                    PREAPPROVAL_REVOKE,
                    PREAPPROVAL_NAMESPACE,
                    id,
                    |prev| Ok((None, json!({"id": id, "previous": prev}))),
                )
                .await
                .map_err(|e| ToolError::retryable(format!("{PREAPPROVAL_REVOKE}: {e}")))
        }
        .boxed()
    }
}

/// Registers the governance tools (and the catalog's remote HTTP tools).
pub fn register_governance_tools(
    registry: &mut ToolRegistry,
    governance: Arc<Governance>,
    world: World,
) {
    for entry in governance.current().catalog.tools.iter() {
        if let Some(endpoint) = &entry.endpoint {
            registry.register(crate::http::HttpTool::new(
                entry.name.clone(),
                entry.kind,
                governance.current().catalog.recovery_path(entry),
                endpoint.clone(),
            ));
        }
    }
    registry
        .register(PolicyCheck::new(governance, Some(world.clone())))
        .register(ApprovalEscalate)
        .register(PreapprovalGrant::new(world.clone()))
        .register(PreapprovalRevoke::new(world));
}
