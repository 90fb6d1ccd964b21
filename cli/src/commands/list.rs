//! `mandate list`: tasks, newest first, as a table or (`--json`) a JSON array.
//! With `--server` the rows come from `GET /v1/tasks` (page after page up to
//! `--limit`); an agent's token lists only that agent's tasks.

use std::io::Write;
use std::process::ExitCode;

use comfy_table::{Cell, Color, ContentArrangement, Table, presets};
use mandate_engine::TaskStatus;
use mandate_engine::store::{TaskFilter, TaskRow};
use serde_json::{Value, json};

use crate::app::{self, Database, refused};
use crate::args::ListArgs;
use crate::remote::Remote;
use crate::remote::TaskExt;
use crate::summary;

fn parse_status(args: &ListArgs) -> anyhow::Result<Option<TaskStatus>> {
    match &args.status {
        None => Ok(None),
        Some(s) => Ok(Some(TaskStatus::parse(s).ok_or_else(|| {
            let valid: Vec<&str> = TaskStatus::ALL.iter().map(|s| s.as_str()).collect();
            refused(format!(
                "unknown status {s:?} for --status; use one of: {}",
                valid.join(", ")
            ))
        })?)),
    }
}

pub async fn remote(remote: &Remote, args: ListArgs) -> anyhow::Result<ExitCode> {
    let status = parse_status(&args)?;
    // One more than asked, to tell the user when there are more.
    let rows = remote
        .list_tasks(
            status.map(|s| s.as_str()),
            args.workflow.as_deref(),
            args.agent.as_deref(),
            args.limit as usize + 1,
        )
        .await?
        .into_iter()
        .map(|t| t.into_row())
        .collect::<anyhow::Result<Vec<_>>>()?;
    print(&args, rows)
}

pub async fn run(db: &Database, args: ListArgs) -> anyhow::Result<ExitCode> {
    let status = parse_status(&args)?;
    db.require_existing()?;
    let (engine, _world) = app::open_engine(db).await?;
    // One more than asked, to tell the user when there are more.
    let rows = engine
        .store()
        .list_tasks(TaskFilter {
            status,
            workflow: args.workflow.clone(),
            agent: args.agent.clone(),
            since_ms: None,
            before: None,
            limit: args.limit.saturating_add(1),
        })
        .await?;
    print(&args, rows)
}

fn print(args: &ListArgs, mut rows: Vec<TaskRow>) -> anyhow::Result<ExitCode> {
    let more = rows.len() > args.limit as usize;
    rows.truncate(args.limit as usize);

    let mut out = std::io::stdout().lock();
    if args.json {
        let docs: Vec<Value> = rows.iter().map(row_json).collect();
        writeln!(out, "{}", serde_json::to_string(&docs)?)?;
    } else if rows.is_empty() {
        eprintln!("no tasks match");
    } else {
        writeln!(out, "{}", table(&rows))?;
    }
    out.flush()?;
    if more {
        eprintln!(
            "showing the newest {} tasks; there are more (raise --limit or filter with --status/--workflow/--agent)",
            args.limit
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn row_json(row: &TaskRow) -> Value {
    json!({
        "id": row.id,
        "workflow": row.workflow,
        "workflow_version": row.workflow_version,
        "status": row.status.as_str(),
        "agent": row.agent,
        "created_at": summary::rfc3339_ms(row.created_at_ms),
        "created_at_ms": row.created_at_ms,
        "updated_at": summary::rfc3339_ms(row.updated_at_ms),
        "updated_at_ms": row.updated_at_ms,
        "last_seq": row.last_seq,
        "blocked_reason": row.blocked_reason,
    })
}

fn table(rows: &[TaskRow]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header([
            "ID",
            "WORKFLOW",
            "STATUS",
            "AGENT",
            "CREATED (UTC)",
            "UPDATED",
            "SEQ",
        ]);
    if !crate::style::stdout_colored() {
        table.force_no_tty();
    }
    for row in rows {
        let mut status = row.status.to_string();
        if row.blocked_reason.is_some() {
            status.push_str(" (blocked)");
        }
        table.add_row([
            Cell::new(summary::escape(&row.id)),
            Cell::new(summary::escape(&row.workflow)),
            status_cell(row.status, status),
            Cell::new(summary::escape(row.agent.as_deref().unwrap_or("-"))),
            Cell::new(summary::datetime(row.created_at_ms).trim_end_matches(" UTC")),
            Cell::new(format!(
                "+{}",
                summary::duration(row.updated_at_ms - row.created_at_ms)
            )),
            Cell::new(row.last_seq),
        ]);
    }
    table
}

/// Green for done, red for a person's attention, yellow for waiting on one
/// (only shown on a terminal).
fn status_cell(status: TaskStatus, text: String) -> Cell {
    let cell = Cell::new(text);
    match status {
        TaskStatus::Completed => cell.fg(Color::Green),
        TaskStatus::FailedTerminal | TaskStatus::EscalatedToHuman => cell.fg(Color::Red),
        TaskStatus::NeedsApproval | TaskStatus::Paused => cell.fg(Color::Yellow),
        _ => cell,
    }
}
