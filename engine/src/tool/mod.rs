//! The tool contract: what a tool is, what the engine tells it about a call,
//! how it reports failure, and the registry the engine looks tools up in.
//!
//! The engine owns this contract; tool crates (`mandate-activities`, remote
//! tools) implement it. This module holds plain types only. It must never
//! perform I/O or know about any particular tool.

mod registry;

pub use mandate_core::tool::{ToolCatalog, ToolInfo, ToolKind};
pub use registry::ToolRegistry;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

/// What the engine tells a tool about the call.
#[derive(Debug, Clone)]
pub struct ToolContext {
    /// The task that made the call.
    pub task_id: String,
    /// History seq of the event that scheduled this call.
    pub seq: i64,
    /// Which attempt this is, starting at 1.
    pub attempt: u32,
    /// Always `format!("{task_id}:{seq}")`: the same for every attempt and
    /// every duplicate delivery of one scheduled call, so a write tool can
    /// make sure its effect happens at most once.
    pub idempotency_key: String,
    /// For a compensation: the idempotency key of the step it undoes
    /// (`task_id:step_seq`); `None` for a step.
    ///
    /// An attempt of that step may still be running after the engine gave
    /// up on it (it timed out), and may try to apply its effect after the
    /// compensation ran. A write tool fences this key in the same
    /// transaction as the undo, so that such a late attempt is refused
    /// instead of leaving its effect behind: see the [`Tool`] contract.
    pub compensates: Option<String>,
}

impl ToolContext {
    /// Builds a context, deriving the idempotency key from the task and seq.
    pub fn new(task_id: impl Into<String>, seq: i64, attempt: u32) -> Self {
        let task_id = task_id.into();
        let idempotency_key = format!("{task_id}:{seq}");
        ToolContext {
            task_id,
            seq,
            attempt,
            idempotency_key,
            compensates: None,
        }
    }

    /// A compensation's context: the compensation is the call scheduled at
    /// `seq` (its `CompensationStarted`), undoing the step scheduled at
    /// `step_seq` of the same task.
    pub fn compensation(task_id: impl Into<String>, seq: i64, attempt: u32, step_seq: i64) -> Self {
        let mut ctx = ToolContext::new(task_id, seq, attempt);
        ctx.compensates = Some(format!("{}:{step_seq}", ctx.task_id));
        ctx
    }
}

/// A tool call that did not succeed.
///
/// `retryable` is the tool's judgement of whether the same call could
/// succeed later (a timeout, a busy database), as opposed to a call that is
/// wrong and will stay wrong (bad input, an unhealthy deploy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ToolError {
    /// What went wrong, for a human: name the tool and, for bad input, the field.
    pub message: String,
    /// Whether the engine may try the same call again.
    pub retryable: bool,
}

impl ToolError {
    /// A failure that may go away if the call is tried again.
    pub fn retryable(msg: impl Into<String>) -> Self {
        ToolError {
            message: msg.into(),
            retryable: true,
        }
    }

    /// A failure that trying again will not fix.
    pub fn non_retryable(msg: impl Into<String>) -> Self {
        ToolError {
            message: msg.into(),
            retryable: false,
        }
    }
}

/// The outcome of one tool call: a JSON output or a [`ToolError`].
pub type ToolResult = Result<serde_json::Value, ToolError>;

/// A named operation with side effects or reads.
///
/// A write tool must be idempotent per [`ToolContext::idempotency_key`]: the
/// engine may deliver the same call more than once (after a crash, a lost
/// acknowledgement or a retry), and the world must change only once.
///
/// A write tool used as a compensation must also *fence* the step it undoes,
/// [`ToolContext::compensates`]: in the same transaction as the undo, record
/// that key as closed (insert a tombstone under the unique key its effects
/// are recorded by, doing nothing if a row is already there), and refuse,
/// with a non-retryable error and without applying anything, any later call
/// whose idempotency key is fenced. The engine gives up on an attempt that
/// outlives its timeout, but cannot stop it: without the fence that attempt
/// could apply its effect after the compensation ran, and the rollback would
/// leave it in place. With it, the unique key decides the race: if the
/// step's effect committed first, the compensation sees it and undoes it; if
/// the fence committed first, the step can no longer apply. A refused undo
/// should still fence (the step is being rolled back either way).
/// `mandate_activities::World::apply_call` does all of this for the demo
/// tools; remote tools receive the key as the `X-Mandate-Compensates` header
/// (`mandate_activities::http`).
pub trait Tool: Send + Sync + 'static {
    /// The name steps use to call this tool, e.g. `deploy.set_version`.
    fn name(&self) -> &str;

    /// How the tool affects the world.
    fn kind(&self) -> ToolKind;

    /// What a human should do when no automatic compensation exists or it failed.
    fn recovery_path(&self) -> Option<&str> {
        None
    }

    /// Performs the call. `input` is the step's JSON input, unvalidated.
    fn call<'a>(&'a self, ctx: ToolContext, input: serde_json::Value) -> BoxFuture<'a, ToolResult>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_derives_the_idempotency_key_from_task_and_seq() {
        let ctx = ToolContext::new("task-1", 7, 3);
        assert_eq!(ctx.idempotency_key, "task-1:7");
        assert_eq!(ctx.attempt, 3);
        assert_eq!(ctx.compensates, None);
    }

    #[test]
    fn a_compensation_context_names_the_step_it_undoes() {
        let ctx = ToolContext::compensation("task-1", 12, 2, 7);
        assert_eq!(ctx.idempotency_key, "task-1:12");
        assert_eq!(ctx.compensates.as_deref(), Some("task-1:7"));
        assert_eq!(ctx.attempt, 2);
    }

    #[test]
    fn tool_error_constructors_set_retryable() {
        assert!(ToolError::retryable("x").retryable);
        assert!(!ToolError::non_retryable("x").retryable);
        assert_eq!(ToolError::non_retryable("boom").to_string(), "boom");
    }
}
