//! `mandate submit`: creates a task and prints its id, alone, on stdout.
//!
//! Everything that can be checked without the database (the workflow name,
//! the JSON, its size, the names) is checked first: a refused submission
//! neither creates the database file nor writes a row. With `--server` the
//! workflow name is the server's to check (it may run another version), and
//! `--wait` follows the task's event stream.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use mandate_engine::{Limits, SubmitOptions, TaskState, TaskStatus};
use serde_json::Value;

use crate::app::{self, Database, refused};
use crate::args::SubmitArgs;
use crate::remote::Remote;
use crate::remote::TaskExt;
use crate::{input, summary};

const DEFAULT_WAIT_SECS: u64 = 300;

/// The input, read and checked, and the names checked.
fn checked_input(args: &SubmitArgs) -> anyhow::Result<serde_json::Value> {
    let limits = Limits::default();
    let task_input = input::read_json("--input", &args.input, &limits).map_err(refused)?;
    for (flag, value) in [
        ("--agent", &args.agent),
        ("--on-behalf-of", &args.on_behalf_of),
        ("--idempotency-key", &args.idempotency_key),
    ] {
        if let Some(v) = value {
            limits.check_name(flag, v).map_err(refused)?;
        }
    }
    Ok(task_input)
}

/// Prints the id (alone, on stdout) and says when the key named an older task.
fn print_submitted(id: &str, existing: bool, key: Option<&str>) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{id}")?;
    out.flush()?;
    if existing {
        eprintln!(
            "idempotency key {:?} names an existing task; nothing new was submitted",
            key.unwrap_or_default()
        );
    }
    Ok(())
}

/// The exit of `--wait` once the task is final: 0 only when it completed.
/// `events` is its history, when it could be read, for the error.
pub fn report_final(
    id: &str,
    status: TaskStatus,
    events: Option<&[mandate_engine::Event]>,
) -> ExitCode {
    if status == TaskStatus::Completed {
        eprintln!("task {id} completed");
        return ExitCode::SUCCESS;
    }
    let error = events
        .and_then(|h| TaskState::fold(h).error)
        .map(|e| format!(": {}", summary::text(&e, summary::MAX_TEXT_CHARS)))
        .unwrap_or_default();
    eprintln!("task {id} ended {status}{error}. See `mandate history {id}`");
    ExitCode::from(app::EXIT_FAILURE)
}

/// The error of a `--wait` that timed out.
pub fn still_running(id: &str, status: TaskStatus, timeout: Duration, hint: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "task {id} is still {status} after {}{hint}. It keeps going; follow it with `mandate status {id}`",
        summary::duration(timeout.as_millis() as i64)
    )
}

/// `--agent` / `--on-behalf-of`, or, for a plan, the plan's own `agent` /
/// `on_behalf_of` (as `mandate plan submit` records them).
fn attribution(args: &SubmitArgs, input: &Value) -> (Option<String>, Option<String>) {
    let from_plan = |field: &str| {
        (args.workflow == "plan")
            .then(|| input[field].as_str().map(str::to_string))
            .flatten()
    };
    (
        args.agent.clone().or_else(|| from_plan("agent")),
        args.on_behalf_of
            .clone()
            .or_else(|| from_plan("on_behalf_of")),
    )
}

pub async fn remote(remote: &Remote, args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let task_input = checked_input(&args)?;
    let (agent, on_behalf_of) = attribution(&args, &task_input);
    let task = remote
        .submit(
            Some(&args.workflow),
            task_input,
            agent.as_deref(),
            on_behalf_of.as_deref(),
            args.idempotency_key.as_deref(),
        )
        .await?;
    print_submitted(
        &task.id,
        task.existing == Some(true),
        args.idempotency_key.as_deref(),
    )?;
    if !args.wait {
        return Ok(ExitCode::SUCCESS);
    }
    let timeout = Duration::from_secs(args.timeout_secs.unwrap_or(DEFAULT_WAIT_SECS));
    wait_remote(remote, &task.id, timeout).await
}

/// `--wait` over HTTP: follows the task until it is final or `timeout` passes.
pub async fn wait_remote(remote: &Remote, id: &str, timeout: Duration) -> anyhow::Result<ExitCode> {
    match remote.wait_until_final(id, timeout).await? {
        Ok(task) => {
            let status = task.status()?;
            let events = if status == TaskStatus::Completed {
                None
            } else {
                remote.history(id).await.ok()
            };
            Ok(report_final(id, status, events.as_deref()))
        }
        Err(task) => Err(still_running(id, task.status()?, timeout, "")),
    }
}

pub async fn run(db: &Database, args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let workflows = mandate_workflows::registry();
    if workflows.get(&args.workflow).is_none() {
        return Err(refused(format!(
            "unknown workflow {:?}; this binary has: {}",
            args.workflow,
            workflows.names().join(", ")
        )));
    }
    let task_input = checked_input(&args)?;
    let (agent, on_behalf_of) = attribution(&args, &task_input);

    let (engine, _world) = app::open_engine(db).await?;
    let submitted = engine
        .submit(
            &args.workflow,
            task_input,
            SubmitOptions {
                agent,
                on_behalf_of,
                idempotency_key: args.idempotency_key.clone(),
                actor: None,
            },
        )
        .await?;
    let id = submitted.task_id;
    print_submitted(&id, submitted.existing, args.idempotency_key.as_deref())?;
    if !args.wait {
        return Ok(ExitCode::SUCCESS);
    }

    let timeout = Duration::from_secs(args.timeout_secs.unwrap_or(DEFAULT_WAIT_SECS));
    let row = match engine.wait_until_final(&id, timeout).await {
        Ok(row) => row,
        Err(mandate_engine::runtime::Error::Timeout { status, .. }) => {
            let hint = if status == TaskStatus::Queued {
                format!(
                    "; no worker picked it up: is `mandate serve --db {}` running?",
                    db.shown()
                )
            } else {
                String::new()
            };
            return Err(still_running(&id, status, timeout, &hint));
        }
        Err(e) => return Err(e.into()),
    };
    let events = if row.status == TaskStatus::Completed {
        None
    } else {
        engine.history(&id).await.ok()
    };
    Ok(report_final(&id, row.status, events.as_deref()))
}
