//! `mandate submit`: creates a task and prints its id, alone, on stdout.
//!
//! Everything that can be checked without the database (the workflow name,
//! the JSON, its size, the names) is checked first: a refused submission
//! neither creates the database file nor writes a row.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use mandate_engine::{Limits, SubmitOptions, TaskState, TaskStatus};

use crate::app::{self, Database, refused};
use crate::args::SubmitArgs;
use crate::{input, summary};

const DEFAULT_WAIT_SECS: u64 = 300;

pub async fn run(db: &Database, args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let limits = Limits::default();
    let workflows = mandate_workflows::registry();
    if workflows.get(&args.workflow).is_none() {
        return Err(refused(format!(
            "unknown workflow {:?}; this binary has: {}",
            args.workflow,
            workflows.names().join(", ")
        )));
    }
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

    let (engine, _world) = app::open_engine(db).await?;
    let submitted = engine
        .submit(
            &args.workflow,
            task_input,
            SubmitOptions {
                agent: args.agent,
                on_behalf_of: args.on_behalf_of,
                idempotency_key: args.idempotency_key.clone(),
                actor: None,
            },
        )
        .await?;
    let id = submitted.task_id;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{id}")?;
        out.flush()?;
    }
    if submitted.existing {
        eprintln!(
            "idempotency key {:?} names an existing task; nothing new was submitted",
            args.idempotency_key.unwrap_or_default()
        );
    }
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
            return Err(anyhow::anyhow!(
                "task {id} is still {status} after {}{hint}. It keeps going; follow it with `mandate status {id}`",
                summary::duration(timeout.as_millis() as i64)
            ));
        }
        Err(e) => return Err(e.into()),
    };
    if row.status == TaskStatus::Completed {
        eprintln!("task {id} completed");
        return Ok(ExitCode::SUCCESS);
    }
    let error = engine
        .history(&id)
        .await
        .ok()
        .and_then(|h| TaskState::fold(&h).error)
        .map(|e| format!(": {}", summary::text(&e, summary::MAX_TEXT_CHARS)))
        .unwrap_or_default();
    eprintln!(
        "task {id} ended {}{error}. See `mandate history {id}`",
        row.status
    );
    Ok(ExitCode::from(app::EXIT_FAILURE))
}
