//! `mandate status`: one task — its derived row, and from its verified
//! history the steps with what became of them, and the output or error.
//!
//! When the history does not verify, the row is still shown (it says why the
//! task is blocked) and the command then fails with the chain error.
//!
//! With `--server` the row comes from `GET /v1/tasks/{id}` and the steps from
//! the history the API returns (its chain verified here). The API does not
//! give the lease or the idempotency key, so those are left out.

use std::io::Write;
use std::process::ExitCode;

use comfy_table::{ContentArrangement, Table, presets};
use mandate_engine::core::state::{Outcome, StepState};
use mandate_engine::store::TaskRow;
use mandate_engine::{TaskState, TaskStatus};
use serde_json::{Value, json};

use crate::app::{self, Database};
use crate::args::StatusArgs;
use crate::remote::Remote;
use crate::remote::TaskExt;
use crate::summary;

/// Output and input shown in text mode; `--json` shows all of it.
const MAX_SHOWN_CHARS: usize = 400;

/// Row fields the API does not give (left out of `--json` over HTTP).
const LOCAL_ONLY_FIELDS: [&str; 3] = ["idempotency_key", "lease_owner", "lease_expires_at_ms"];

pub async fn run(db: &Database, args: StatusArgs) -> anyhow::Result<ExitCode> {
    db.require_existing()?;
    let (engine, _world) = app::open_engine(db).await?;
    let row = engine.task(&args.id).await?;
    let history = engine.history(&args.id).await.map_err(anyhow::Error::new);
    print(&args, &row, history, false)
}

pub async fn remote(remote: &Remote, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let row = remote.task(&args.id).await?.into_row()?;
    let history = remote.history(&args.id).await;
    print(&args, &row, history, true)
}

/// Prints the row and what the history says; fails afterwards when the
/// history could not be read.
fn print(
    args: &StatusArgs,
    row: &TaskRow,
    history: anyhow::Result<Vec<mandate_engine::Event>>,
    remote: bool,
) -> anyhow::Result<ExitCode> {
    let state = history.as_deref().ok().map(TaskState::fold);
    let history_error = history.as_ref().err().map(ToString::to_string);

    let mut out = std::io::stdout().lock();
    if args.json {
        let mut doc = row_json(row);
        if remote && let Some(obj) = doc.as_object_mut() {
            for field in LOCAL_ONLY_FIELDS {
                obj.remove(field);
            }
        }
        if let Some(state) = &state {
            add_state_json(&mut doc, state);
        }
        if let Some(e) = &history_error {
            doc["history_error"] = Value::from(e.as_str());
        }
        writeln!(out, "{}", serde_json::to_string(&doc)?)?;
    } else {
        write_text(&mut out, row, state.as_ref())?;
    }
    out.flush()?;
    drop(out);
    history.map(|_| ExitCode::SUCCESS)
}

fn row_json(row: &TaskRow) -> Value {
    json!({
        "id": row.id,
        "workflow": row.workflow,
        "workflow_version": row.workflow_version,
        "status": row.status.as_str(),
        "agent": row.agent,
        "idempotency_key": row.idempotency_key,
        "created_at": summary::rfc3339_ms(row.created_at_ms),
        "created_at_ms": row.created_at_ms,
        "updated_at": summary::rfc3339_ms(row.updated_at_ms),
        "updated_at_ms": row.updated_at_ms,
        "last_seq": row.last_seq,
        "blocked_reason": row.blocked_reason,
        "lease_owner": row.lease_owner,
        "lease_expires_at_ms": row.lease_expires_at_ms,
    })
}

fn add_state_json(doc: &mut Value, state: &TaskState) {
    doc["on_behalf_of"] = json!(state.on_behalf_of);
    doc["paused"] = json!(state.paused);
    doc["input"] = state.input.clone();
    doc["steps"] = state
        .steps
        .values()
        .map(|s| {
            let (progress, _) = progress(state, s);
            let rollback = rollback(state, s);
            json!({
                "seq": s.seq,
                "name": s.name,
                "tool": s.tool,
                "kind": s.kind.as_str(),
                "state": progress,
                "attempts": attempts(s),
                "input": s.input,
                "output": match &s.outcome {
                    Some(Outcome::Completed { output, .. }) => output.clone(),
                    _ => Value::Null,
                },
                "error": match &s.outcome {
                    Some(Outcome::Failed { error, .. }) => Value::from(error.message.as_str()),
                    _ => Value::Null,
                },
                "compensation": s.compensation.as_ref().map(|c| json!({"tool": c.tool, "input": c.input})),
                "rollback": rollback.map(|(r, _)| r),
            })
        })
        .collect::<Vec<_>>()
        .into();
    doc["waits"] = state
        .waits
        .values()
        .map(|w| {
            json!({
                "seq": w.seq,
                "name": w.name,
                "approval": w.approval,
                "deadline_at_ms": w.deadline_at_ms,
                "resolved": w.resolved,
            })
        })
        .collect::<Vec<_>>()
        .into();
    doc["signals"] = state
        .signals
        .values()
        .map(|g| {
            json!({
                "seq": g.seq,
                "name": g.name,
                "sender": g.sender,
                "payload": g.payload,
                "consumed": g.consumed,
            })
        })
        .collect::<Vec<_>>()
        .into();
    doc["output"] = json!(state.output);
    doc["error"] = json!(state.error);
}

/// Attempts made so far (the one in flight included).
fn attempts(s: &StepState) -> u32 {
    match s.outcome {
        Some(Outcome::Failed { .. }) => s.next_attempt() - 1,
        _ => s.next_attempt(),
    }
}

/// What became of a step: a machine word and a sentence.
fn progress(state: &TaskState, s: &StepState) -> (&'static str, String) {
    match &s.outcome {
        Some(Outcome::Completed { .. }) => {
            ("completed", format!("completed (attempt {})", attempts(s)))
        }
        Some(Outcome::Failed { error, .. }) => (
            "failed",
            format!(
                "failed after {} attempt(s): {}",
                attempts(s),
                summary::text(&error.message, summary::MAX_TEXT_CHARS)
            ),
        ),
        None => match s.next_attempt_at_ms {
            Some(at) => (
                "retrying",
                format!(
                    "attempt {} failed; next attempt at {}",
                    s.next_attempt() - 1,
                    summary::datetime(at)
                ),
            ),
            None if state.is_final() => {
                ("abandoned", "never finished (the task ended)".to_string())
            }
            None => ("running", format!("attempt {} in flight", attempts(s))),
        },
    }
}

/// How a completed step was rolled back, if it was.
fn rollback(state: &TaskState, s: &StepState) -> Option<(&'static str, String)> {
    if let Some(c) = state.compensations.values().find(|c| c.step_seq == s.seq) {
        return Some(match &c.outcome {
            None => (
                "compensating",
                format!("compensating with {} (#{})", c.tool, c.seq),
            ),
            Some(Outcome::Completed { .. }) => ("compensated", format!("compensated (#{})", c.seq)),
            Some(Outcome::Failed { error, .. }) => (
                "compensation_failed",
                format!(
                    "compensation #{} failed: {}",
                    c.seq,
                    summary::text(&error.message, summary::MAX_TEXT_CHARS)
                ),
            ),
        });
    }
    state
        .skipped
        .iter()
        .find(|(seq, _)| *seq == s.seq)
        .map(|(_, path)| {
            (
                "not_compensated",
                format!(
                    "not compensated; recovery path: {}",
                    path.as_deref().unwrap_or("none recorded")
                ),
            )
        })
}

fn write_text(
    out: &mut impl Write,
    row: &TaskRow,
    state: Option<&TaskState>,
) -> std::io::Result<()> {
    // Every value may hold agent-written text: escaped on its way out.
    let field = |out: &mut dyn Write, name: &str, value: &str| {
        writeln!(out, "{name:<13} {}", summary::escape(value))
    };
    field(out, "task", &row.id)?;
    field(
        out,
        "workflow",
        &format!("{} (version {})", row.workflow, row.workflow_version),
    )?;
    let mut status = row.status.to_string();
    if state.is_some_and(|s| s.paused) && row.status != TaskStatus::Paused {
        status.push_str(" (paused)");
    }
    field(out, "status", &status)?;
    let mut agent = row.agent.clone().unwrap_or_else(|| "-".into());
    if let Some(user) = state.and_then(|s| s.on_behalf_of.as_deref()) {
        agent.push_str(&format!(" (on behalf of {user})"));
    }
    field(out, "agent", &agent)?;
    field(out, "created", &summary::datetime(row.created_at_ms))?;
    field(
        out,
        "updated",
        &format!(
            "{} (+{})",
            summary::datetime(row.updated_at_ms),
            summary::duration(row.updated_at_ms - row.created_at_ms)
        ),
    )?;
    field(out, "last seq", &row.last_seq.to_string())?;
    field(out, "blocked", row.blocked_reason.as_deref().unwrap_or("-"))?;
    if let (Some(owner), Some(until)) = (&row.lease_owner, row.lease_expires_at_ms) {
        field(
            out,
            "held by",
            &format!("worker {owner} until {}", summary::datetime(until)),
        )?;
    }
    if let Some(key) = &row.idempotency_key {
        field(out, "idem. key", key)?;
    }
    let Some(state) = state else {
        return Ok(());
    };
    field(out, "input", &summary::json(&state.input, MAX_SHOWN_CHARS))?;
    if state.steps.is_empty() {
        field(out, "steps", "none yet")?;
    } else {
        writeln!(out, "\nsteps (in the order they were scheduled)")?;
        let mut table = Table::new();
        table
            .load_preset(presets::NOTHING)
            .set_content_arrangement(ContentArrangement::Disabled)
            .set_header(["SEQ", "STEP", "TOOL", "KIND", "STATE"]);
        for s in state.steps.values() {
            let mut what = progress(state, s).1;
            if let Some((_, r)) = rollback(state, s) {
                what.push_str("; ");
                what.push_str(&r);
            }
            table.add_row([
                format!("#{}", s.seq),
                summary::text(&s.name, 40),
                summary::text(&s.tool, 60),
                s.kind.as_str().to_string(),
                summary::escape(&what).into_owned(),
            ]);
        }
        writeln!(out, "{table}")?;
        writeln!(out)?;
    }
    for w in state.waits.values().filter(|w| !w.resolved) {
        let what = if w.approval { "approval" } else { "signal" };
        let mut text = format!("{what} '{}' (since #{})", w.name, w.seq);
        if let Some(d) = w.deadline_at_ms {
            text.push_str(&format!(", deadline {}", summary::datetime(d)));
        }
        if !state.is_final() {
            text.push_str(&match w.name.strip_prefix("approval:") {
                // Approvals are decided, not signalled (the API refuses
                // an approval:* signal).
                Some(step) => format!(
                    "; decide it with `mandate approve {id} --step {step}` or `mandate reject {id} --step {step}`",
                    id = row.id
                ),
                None => format!(
                    "; send it with `mandate signal {} {} --payload JSON`",
                    row.id, w.name
                ),
            });
        }
        field(out, "waiting for", &text)?;
    }
    for a in state.approvals.values().filter(|a| a.is_open()) {
        let mut text = format!(
            "approval of '{}' (request #{}) from {} (quorum {}, {} decided), deadline {}",
            summary::text(&a.subject, 60),
            a.seq,
            summary::text(&a.approvers.join(", "), 200),
            a.quorum,
            a.decisions.len(),
            summary::datetime(a.deadline_at_ms)
        );
        if !state.is_final() {
            text.push_str(&format!(
                "; decide it with `mandate approve {id} --step {step}` or `mandate reject {id} --step {step}`",
                id = row.id,
                step = summary::text(&a.subject, 60)
            ));
        }
        field(out, "waiting for", &text)?;
    }
    for g in state.signals.values().filter(|g| !g.consumed) {
        field(
            out,
            "signal",
            &format!(
                "'{}' from {} (#{}) not taken yet: {}",
                g.name,
                g.sender,
                g.seq,
                summary::json(&g.payload, summary::MAX_JSON_CHARS)
            ),
        )?;
    }
    if let Some(output) = &state.output {
        field(out, "output", &summary::json(output, MAX_SHOWN_CHARS))?;
    }
    if let Some(error) = &state.error {
        field(out, "error", &summary::text(error, MAX_SHOWN_CHARS))?;
    }
    if let Some(blocked) = &state.blocked {
        field(out, "BLOCKED", &summary::text(blocked, MAX_SHOWN_CHARS))?;
    }
    Ok(())
}
