//! `mandate approvals [--as ID] [--json]`: the approval inbox. For each task
//! in `needs_approval`, each open approval request with its summary,
//! risk, owners affected, evidence, the rollback plan (compensations and
//! recovery paths of what already ran, and of the step itself), who may
//! decide and who already did. Read-only.
//!
//! With `--server` the inbox is `GET /v1/approvals`: an approver's token sees
//! what it may decide, an operator's or auditor's everything; `--as` then
//! narrows it the same way as locally, and the scan limit is the server's.

use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use serde_json::Value;

use crate::app::{self, Database};
use crate::remote::Remote;
use crate::summary;

/// The longest rendering of an approval's evidence.
const MAX_EVIDENCE_CHARS: usize = 400;

#[derive(Debug, Args)]
pub struct ApprovalsArgs {
    /// Only requests this identity may decide (and has not yet)
    #[arg(long = "as", value_name = "ID")]
    pub identity: Option<String>,
    /// Print a JSON array instead of text
    #[arg(long)]
    pub json: bool,
}

pub async fn run(db: &Database, args: ApprovalsArgs) -> anyhow::Result<ExitCode> {
    db.require_existing()?;
    let (engine, _world) = app::open_engine(db).await?;
    let (entries, truncated) = engine
        .approval_inbox(None, args.identity.as_deref())
        .await?;
    if truncated {
        eprintln!(
            "only the newest {} tasks waiting for decisions were read; there are more",
            mandate_engine::runtime::INBOX_SCAN_LIMIT
        );
    }
    let inbox = entries
        .into_iter()
        .map(serde_json::to_value)
        .collect::<Result<Vec<_>, _>>()?;
    print(&args, &inbox)
}

pub async fn remote(remote: &Remote, args: ApprovalsArgs) -> anyhow::Result<ExitCode> {
    let mut inbox = remote.approvals().await?;
    if let Some(who) = args.identity.as_deref() {
        inbox.retain(|a| may_decide(a, who));
    }
    print(&args, &inbox)
}

/// What the engine's inbox keeps for an identity: it is a named approver
/// (or the escalation target) and has not decided yet.
fn may_decide(entry: &Value, who: &str) -> bool {
    let any =
        |list: &Value, hit: &dyn Fn(&Value) -> bool| list.as_array().into_iter().flatten().any(hit);
    (any(&entry["approvers"], &|a| *a == who) || entry["escalated_to"] == who)
        && !any(&entry["decisions"], &|d| d["identity"] == who)
}

fn print(args: &ApprovalsArgs, inbox: &[Value]) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(inbox)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    if inbox.is_empty() {
        eprintln!("no pending approvals");
    }
    // Everything here may be agent-written (the plan's reason, rule
    // messages, evidence): escaped, one bounded line each.
    let text = |v: &Value| summary::value(v, summary::MAX_TEXT_CHARS);
    for a in inbox {
        writeln!(
            out,
            "task {}  step {}  risk {}  (approve with: mandate approve {} --step {})",
            text(&a["task_id"]),
            text(&a["step"]),
            text(&a["risk"]),
            text(&a["task_id"]),
            a["request_seq"]
        )?;
        writeln!(out, "  summary: {}", text(&a["summary"]))?;
        for r in a["rules"].as_array().into_iter().flatten() {
            writeln!(out, "  rule {}: {}", text(&r["id"]), text(&r["message"]))?;
        }
        writeln!(out, "  owners affected: {}", join(&a["owners"]))?;
        writeln!(
            out,
            "  evidence: {}",
            summary::json(&a["evidence"], MAX_EVIDENCE_CHARS)
        )?;
        writeln!(
            out,
            "  approvers: {} (quorum {}; decided: {})",
            join(&a["approvers"]),
            text(&a["quorum"]),
            a["decisions"].as_array().map_or(0, Vec::len)
        )?;
        for r in a["rollback_plan"].as_array().into_iter().flatten() {
            writeln!(out, "  rollback: {}", text(r))?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// A JSON array of strings as `a, b` (escaped, bounded), or `-` when empty.
fn join(items: &Value) -> String {
    summary::text(&summary::list(items), summary::MAX_TEXT_CHARS)
}
