//! Mandate's engine: durable, event-sourced sagas for AI-agent tasks.
//!
//! - [`core`]: pure — events, the state fold, the hash chain, workflow replay, the decider.
//! - [`store`]: the storage trait with SQLite and PostgreSQL backends and group commit.
//! - [`runtime`]: the shell — the client API ([`Engine`]), workers, the clock.
//! - [`audit`]: what `mandate replay` and `mandate verify` check (reads only).

pub mod audit;
pub mod core;
pub mod evidence;
pub mod runtime;
pub mod store;

pub use crate::core::event::{Compensation, Event, EventPayload};
pub use crate::core::limits::Limits;
pub use crate::core::retry::RetryPolicy;
pub use crate::core::state::{TaskState, TaskStatus};
pub use crate::core::workflow::{
    Signal, StepError, StepOptions, Workflow, WorkflowContext, WorkflowError, WorkflowRegistry,
};
pub use mandate_activities as activities;
pub use runtime::{Engine, SubmitOptions, Submitted, WorkerConfig, WorkerHandle};
