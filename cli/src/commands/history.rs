//! `mandate history`: a task's events as a human timeline, or (`--json`) as
//! JSON Lines, one event per line.
//!
//! The chain is verified first; a broken chain is refused with the first bad
//! seq. `--json --unverified` exports the stored rows as they are, so a
//! tampered history can still be handed to whoever investigates it.
//!
//! With `--server` the events come from `GET /v1/tasks/{id}/history` and
//! their chain is verified again here; `--unverified` needs the database.

use std::io::Write;
use std::process::ExitCode;

use mandate_engine::core::chain::RawEvent;
use mandate_engine::{TaskState, runtime};
use serde::Serialize;
use serde_json::Value;

use crate::app::{self, Database, refused};
use crate::args::HistoryArgs;
use crate::remote::Remote;
use crate::{summary, timeline};

/// One line of `history --json`: the stored envelope and payload.
#[derive(Debug, Serialize)]
pub struct EventLine<'a> {
    pub task_id: &'a str,
    pub seq: i64,
    #[serde(rename = "type")]
    pub event_type: &'a str,
    pub actor: &'a str,
    pub recorded_at: String,
    pub recorded_at_ms: i64,
    pub hash: &'a str,
    pub prev_hash: &'a str,
    pub payload: Value,
}

pub async fn run(db: &Database, args: HistoryArgs) -> anyhow::Result<ExitCode> {
    db.require_existing()?;
    let (engine, _world) = app::open_engine(db).await?;

    if args.unverified {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        let raw: Vec<RawEvent> = engine.store().load_history(&args.id).await?;
        if raw.is_empty() {
            return Err(runtime::Error::TaskNotFound { task_id: args.id }.into());
        }
        for e in &raw {
            let line = EventLine {
                task_id: &e.task_id,
                seq: e.seq,
                event_type: &e.event_type,
                actor: &e.actor,
                recorded_at: summary::rfc3339_ms(e.recorded_at_ms),
                recorded_at_ms: e.recorded_at_ms,
                hash: &e.hash,
                prev_hash: &e.prev_hash,
                payload: e.payload.clone(),
            };
            writeln!(out, "{}", serde_json::to_string(&line)?)?;
        }
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }

    let events = engine.history(&args.id).await.map_err(|e| {
        let hint = matches!(
            e,
            runtime::Error::Corrupt { .. } | runtime::Error::Unparseable { .. }
        )
        .then(|| {
            format!(
                "the history of task {} does not verify; `mandate history {} --json --unverified` exports the stored rows as they are",
                args.id, args.id
            )
        });
        let e = anyhow::Error::new(e);
        match hint {
            Some(h) => e.context(h),
            None => e,
        }
    })?;
    print(&args, &events)
}

pub async fn remote(remote: &Remote, args: HistoryArgs) -> anyhow::Result<ExitCode> {
    if args.unverified {
        return Err(refused(
            "--unverified exports the stored rows and needs the database: run it without --server, \
             with --db naming the server's database",
        ));
    }
    let events = remote.history(&args.id).await?;
    print(&args, &events)
}

fn print(args: &HistoryArgs, events: &[mandate_engine::Event]) -> anyhow::Result<ExitCode> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.json {
        for e in events {
            let (event_type, payload) = e.payload.to_parts();
            let line = EventLine {
                task_id: &e.task_id,
                seq: e.seq,
                event_type,
                actor: &e.actor,
                recorded_at: summary::rfc3339_ms(e.recorded_at_ms),
                recorded_at_ms: e.recorded_at_ms,
                hash: &e.hash,
                prev_hash: &e.prev_hash,
                payload,
            };
            writeln!(out, "{}", serde_json::to_string(&line)?)?;
        }
    } else {
        let state = TaskState::fold(events);
        let first = events.first().map(|e| e.recorded_at_ms).unwrap_or(0);
        let header = format!(
            "task {} ({} v{}), {} events, chain verified; times UTC, from {}",
            args.id,
            state.workflow,
            state.workflow_version,
            events.len(),
            summary::day(first)
        );
        writeln!(out, "{}", summary::escape(&header))?;
        for line in timeline::render(events) {
            writeln!(out, "  {line}")?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
