//! Mandate's built-in workflows.
//!
//! - [`DeployWithRollback`] (`deploy_with_rollback`): snapshot → deploy → health
//!   check; on failure the engine rolls the deploy back (its compensation was
//!   recorded before it ran).
//! - [`GatedDeploy`] (`gated_deploy`): waits for an `approve` signal (with a
//!   timeout) before doing the same.
//! - [`Saga`] (`saga`): a data-driven sequence of stages, each stage a set of
//!   steps run in parallel; used by tests, the demo and the stress suite.
//!
//! Workflow code must be deterministic: it reads the world only through its
//! `WorkflowContext` (see ARCHITECTURE.md, "Writing a workflow").

mod deploy;
mod saga;

pub use deploy::{DeployWithRollback, GatedDeploy};
pub use saga::{Saga, SagaInput, SagaItem, SagaStep};

use mandate_engine::WorkflowRegistry;

/// Every built-in workflow.
pub fn registry() -> WorkflowRegistry {
    let mut r = WorkflowRegistry::new();
    register_all(&mut r);
    r
}

/// Registers every built-in workflow into `r`.
pub fn register_all(r: &mut WorkflowRegistry) {
    r.register(DeployWithRollback)
        .register(GatedDeploy)
        .register(Saga);
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
