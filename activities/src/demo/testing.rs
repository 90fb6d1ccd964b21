//! Tools for tests, benchmarks and demos: `test.echo` (no I/O at all, to
//! measure the engine's own overhead) and `test.fault` / `test.fault_write`,
//! which misbehave on request (fail, fail a number of times, hang, sleep).
//!
//! Their misbehaviour depends only on the input and the attempt number, never
//! on hidden state, so a test can predict exactly what each attempt does.

use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::input::Input;
use super::names::{TEST_ECHO, TEST_FAULT, TEST_FAULT_WRITE};
use super::namespaces::KV;
use super::world_failure;
use crate::world::World;
use mandate_engine::tool::{Tool, ToolContext, ToolError, ToolKind, ToolResult};

/// Longest `sleep_ms` accepted: an hour is far beyond any test, and a bound
/// keeps a typo from parking a worker for days.
pub const MAX_SLEEP_MS: u64 = 60 * 60 * 1000;

/// `test.echo` (read): returns its input unchanged, with no I/O.
#[derive(Debug, Clone, Copy, Default)]
pub struct TestEcho;

impl Tool for TestEcho {
    fn name(&self) -> &str {
        TEST_ECHO
    }

    fn kind(&self) -> ToolKind {
        ToolKind::Read
    }

    fn call<'a>(&'a self, _ctx: ToolContext, input: Value) -> BoxFuture<'a, ToolResult> {
        futures::future::ready(Ok(input)).boxed()
    }
}

/// `test.fault` (read): a tool that can be told to misbehave.
///
/// Input `{mode, times?, sleep_ms?, message?, output?}`, where `mode` is
/// - `ok`: return `output` (or `{}`);
/// - `fail`: a retryable error on every attempt;
/// - `fail_terminal`: a non-retryable error;
/// - `hang`: never return;
/// - `fail_times`: a retryable error while the attempt is ≤ `times`
///   (required), then like `ok`;
/// - `sleep`: sleep `sleep_ms` (required, at most [`MAX_SLEEP_MS`]), then
///   like `ok`.
///
/// Error messages include `message` (if given), the mode and the attempt.
#[derive(Debug, Clone, Copy, Default)]
pub struct TestFault;

impl Tool for TestFault {
    fn name(&self) -> &str {
        TEST_FAULT
    }

    fn kind(&self) -> ToolKind {
        ToolKind::Read
    }

    fn call<'a>(&'a self, ctx: ToolContext, input: Value) -> BoxFuture<'a, ToolResult> {
        async move { misbehave(TEST_FAULT, &ctx, &input).await }.boxed()
    }
}

/// `test.fault_write` (reversible write): behaves like [`TestFault`], and on
/// success, if the input has a `key`, writes the output to that key in the
/// world's `kv` namespace (once per idempotency key). Undo it with
/// `kv.delete {key}`. Every failure mode fails before writing anything.
#[derive(Debug, Clone)]
pub struct TestFaultWrite {
    world: World,
}

impl TestFaultWrite {
    /// A faulty write tool writing to `world`.
    pub fn new(world: World) -> Self {
        TestFaultWrite { world }
    }
}

impl Tool for TestFaultWrite {
    fn name(&self) -> &str {
        TEST_FAULT_WRITE
    }

    fn kind(&self) -> ToolKind {
        ToolKind::WriteReversible
    }

    fn call<'a>(&'a self, ctx: ToolContext, input: Value) -> BoxFuture<'a, ToolResult> {
        async move {
            // Read the key first so a bad key fails before any misbehaviour
            // (a `hang` with a bad key should not hang).
            let key = Input::new(TEST_FAULT_WRITE, &input)?
                .optional_string("key")?
                .map(str::to_owned);
            let output = misbehave(TEST_FAULT_WRITE, &ctx, &input).await?;
            let Some(key) = key else {
                return Ok(output);
            };
            self.world
                .apply_call(&ctx, TEST_FAULT_WRITE, KV, &key, |_current| {
                    Ok((Some(output.clone()), output))
                })
                .await
                .map_err(|error| world_failure(TEST_FAULT_WRITE, error))
        }
        .boxed()
    }
}

/// The shared behaviour of the fault tools: fails, hangs or sleeps as the
/// input says, and otherwise returns the success output.
async fn misbehave(tool: &'static str, ctx: &ToolContext, input: &Value) -> ToolResult {
    let input = Input::new(tool, input)?;
    let mode = input.string("mode")?;
    let message = input
        .optional_string("message")?
        .unwrap_or("injected failure");
    let output = input
        .optional_value("output")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let attempt = ctx.attempt;
    let failure =
        |detail: &str| format!("{tool}: {message} (mode {mode}, {detail}attempt {attempt})");
    match mode {
        "ok" => Ok(output),
        "fail" => Err(ToolError::retryable(failure(""))),
        "fail_terminal" => Err(ToolError::non_retryable(failure(""))),
        "hang" => futures::future::pending().await,
        "fail_times" => {
            let times = input.u64_at_most("times", u64::from(u32::MAX))?;
            if u64::from(attempt) <= times {
                Err(ToolError::retryable(failure(&format!(
                    "failing the first {times} attempts, "
                ))))
            } else {
                Ok(output)
            }
        }
        "sleep" => {
            let sleep_ms = input.u64_at_most("sleep_ms", MAX_SLEEP_MS)?;
            tokio::time::sleep(Duration::from_millis(sleep_ms)).await;
            Ok(output)
        }
        other => Err(ToolError::non_retryable(format!(
            "{tool}: input field `mode` must be one of ok, fail, fail_terminal, hang, fail_times, sleep; got {other:?}"
        ))),
    }
}
