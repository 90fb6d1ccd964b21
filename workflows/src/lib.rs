//! Mandate's built-in workflows.
//!
//! - [`DeployWithRollback`] (`deploy_with_rollback`): snapshot → deploy → health
//!   check; on failure the engine rolls the deploy back (its compensation was
//!   recorded before it ran).
//! - [`GatedDeploy`] (`gated_deploy`): asks for an engine approval (with a
//!   timeout) before doing the same.
//! - [`Saga`] (`saga`): a data-driven sequence of stages, each stage a set of
//!   steps run in parallel; used by tests, the demo and the stress suite.
//!
//! - [`Plan`] (`plan`): a DAG of tool calls submitted as data. Like every
//!   workflow's steps, each is decided by the engine's gateway (and, when
//!   gated, approved by people) before it is scheduled. [`Preapproval`]
//!   (`preapproval`) is release 0.1's, kept only to replay its histories.
//!
//! - [`McpSession`] (`mcp_session`): one MCP session of an agent; its
//!   steps are the agent's MCP tool calls (crate `mandate-mcp`).
//!
//! Workflow code must be deterministic: it reads the world only through its
//! `WorkflowContext` (see ARCHITECTURE.md, "Writing a workflow").

mod deploy;
pub mod mcp;
pub mod plan;
mod saga;

pub use deploy::{DeployWithRollback, GatedDeploy};
pub use mcp::McpSession;
pub use plan::{Plan, Preapproval};
pub use saga::{Saga, SagaInput, SagaItem, SagaStep};

use std::sync::Arc;

use mandate_activities::Governance;
use mandate_engine::WorkflowRegistry;

/// Every built-in workflow; `plan` and `preapproval` validate against the
/// shipped default catalog and policies.
pub fn registry() -> WorkflowRegistry {
    registry_with(Arc::new(Governance::shipped()))
}

/// Every built-in workflow, `plan` and `preapproval` governed by `governance`.
pub fn registry_with(governance: Arc<Governance>) -> WorkflowRegistry {
    let mut r = WorkflowRegistry::new();
    register_all(&mut r);
    register_governed(&mut r, governance);
    r
}

/// Registers every built-in workflow that needs no governance into `r`.
pub fn register_all(r: &mut WorkflowRegistry) {
    r.register(DeployWithRollback)
        .register(GatedDeploy)
        .register(Saga);
}

/// Registers `plan` and `mcp_session`, governed by `governance`, and the
/// replay-only `preapproval` of release 0.1.
pub fn register_governed(r: &mut WorkflowRegistry, governance: Arc<Governance>) {
    r.register(Plan::new(governance.clone()))
        .register(Preapproval)
        .register(McpSession::new(governance));
}

/// Reads a required string field of a workflow input.
pub(crate) fn str_field<'a>(
    input: &'a serde_json::Value,
    workflow: &str,
    field: &str,
) -> Result<&'a str, mandate_engine::WorkflowError> {
    input.get(field).and_then(|v| v.as_str()).ok_or_else(|| {
        mandate_engine::WorkflowError::new(format!(
            "{workflow}: input field {field:?} is required and must be a string"
        ))
    })
}
