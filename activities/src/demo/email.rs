//! The email tool: "sends" an email by recording it in the world's `email`
//! namespace. The one demo tool whose effect cannot be undone.
//!
//! It must never actually send anything: the recorded row is the email.

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::input::Input;
use super::names::EMAIL_SEND;
use super::namespaces::EMAIL;
use super::world_failure;
use crate::world::World;
use mandate_engine::tool::{Tool, ToolContext, ToolError, ToolKind, ToolResult};

/// `email.send` (irreversible write): input `{to, subject}` → `{message_id}`.
///
/// The message id is derived from the idempotency key, so every delivery of
/// one call names the same message; the world records it once.
#[derive(Debug, Clone)]
pub struct EmailSend {
    world: World,
}

impl EmailSend {
    /// An email tool recording into `world`.
    pub fn new(world: World) -> Self {
        EmailSend { world }
    }
}

impl Tool for EmailSend {
    fn name(&self) -> &str {
        EMAIL_SEND
    }

    fn kind(&self) -> ToolKind {
        ToolKind::WriteIrreversible
    }

    fn recovery_path(&self) -> Option<&str> {
        Some("email → send a correction email")
    }

    fn call<'a>(&'a self, ctx: ToolContext, input: Value) -> BoxFuture<'a, ToolResult> {
        async move {
            let input = Input::new(EMAIL_SEND, &input)?;
            let to = input.string("to")?.to_owned();
            let subject = input.string("subject")?.to_owned();
            if !to.contains('@') {
                return Err(ToolError::non_retryable(format!(
                    "{EMAIL_SEND}: input field `to` must be an email address, got {to:?}"
                )));
            }
            let message_id = format!("msg-{}", ctx.idempotency_key);
            let task_id = ctx.task_id.clone();
            self.world
                .apply_call(&ctx, EMAIL_SEND, EMAIL, &message_id, |_current| {
                    let email = json!({
                        "message_id": message_id,
                        "to": to,
                        "subject": subject,
                        "task_id": task_id,
                    });
                    Ok((Some(email), json!({ "message_id": message_id })))
                })
                .await
                .map_err(|error| world_failure(EMAIL_SEND, error))
        }
        .boxed()
    }
}
