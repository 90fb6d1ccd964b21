//! Mandate's engine: durable, event-sourced sagas for AI-agent tasks.
//!
//! - [`core`] (the `mandate-core` crate): pure — events, the state fold, the hash chain, workflow replay, the decider.
//! - [`store`]: the storage trait with SQLite and PostgreSQL backends and group commit.
//! - [`runtime`]: the shell — the client API ([`Engine`]), workers, the clock.
//! - [`tool`]: the tool contract (`Tool`, `ToolContext`, `ToolError`) and the registry.
//! - [`audit`]: what `mandate replay` and `mandate verify` check (reads only).

pub mod audit;
pub mod evidence;
pub mod runtime;
pub mod store;
pub mod tool;

/// The pure core, its own crate (`mandate-core`) so that its dependency list
/// proves it does no I/O.
pub use mandate_core as core;

pub use crate::core::event::{Compensation, Event, EventPayload};
pub use crate::core::limits::Limits;
pub use crate::core::retry::RetryPolicy;
pub use crate::core::state::{TaskState, TaskStatus};
pub use crate::core::workflow::{
    Signal, StepError, StepOptions, Workflow, WorkflowContext, WorkflowError, WorkflowRegistry,
};
pub use runtime::{Engine, SubmitOptions, Submitted, WorkerConfig, WorkerHandle};
pub use tool::{Tool, ToolContext, ToolError, ToolKind, ToolRegistry, ToolResult};
