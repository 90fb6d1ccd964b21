//! `mandate approvals [--as ID] [--json]`: the approval inbox. For each plan
//! task in `needs_approval`, each step awaiting a decision with its summary,
//! risk, owners affected, evidence, the rollback plan (compensations and
//! recovery paths of what already ran, and of the step itself), who may
//! decide and who already did. Read-only.

use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use mandate_engine::TaskStatus;
use mandate_engine::store::TaskFilter;
use mandate_workflows::plan::approvals;
use serde_json::{Value, json};

use crate::app::{self, Database};

#[derive(Debug, Args)]
pub struct ApprovalsArgs {
    /// Only requests this identity may decide (and has not yet)
    #[arg(long = "as", value_name = "ID")]
    pub identity: Option<String>,
    /// Most tasks scanned
    #[arg(long, value_name = "N", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub limit: u32,
    /// Print a JSON array instead of text
    #[arg(long)]
    pub json: bool,
}

pub async fn run(db: &Database, args: ApprovalsArgs) -> anyhow::Result<ExitCode> {
    db.require_existing()?;
    let (engine, _world) = app::open_engine(db).await?;
    let rows = engine
        .store()
        .list_tasks(TaskFilter {
            status: Some(TaskStatus::NeedsApproval),
            limit: args.limit,
            ..Default::default()
        })
        .await?;
    let mut inbox = Vec::new();
    for row in rows {
        let history = engine.history(&row.id).await?;
        let (_actor, agent, input) = approvals::submitter(&history);
        let done = approvals::rollback_plan(&history);
        for p in approvals::pending(&history) {
            if let Some(who) = &args.identity
                && (!p.approvers.contains(who) || p.decisions.iter().any(|d| &d.identity == who))
            {
                continue;
            }
            let own = match (&p.decision.compensation, &p.decision.recovery_path) {
                (Some(c), _) => format!(
                    "{}: compensate with {} {}",
                    p.step,
                    c["tool"].as_str().unwrap_or(""),
                    c["input"]
                ),
                (None, Some(r)) => format!("{}: no automatic undo; {r}", p.step),
                (None, None) => format!("{}: no automatic undo and no recovery path", p.step),
            };
            let mut rollback = vec![own];
            rollback.extend(done.iter().cloned());
            inbox.push(json!({
                "task_id": row.id,
                "step": p.step,
                "summary": format!("{} wants {} {} ({})", agent.clone().unwrap_or_default(), p.tool, p.input, input["reason"].as_str().unwrap_or("no reason given")),
                "risk": p.decision.risk,
                "decision": p.decision.decision,
                "rules": p.decision.decided_by,
                "owners": p.decision.owners,
                "evidence": input["evidence"],
                "rollback_plan": rollback,
                "approvers": p.approvers,
                "quorum": p.quorum,
                "decisions": p.decisions,
                "escalated_to": p.escalated_to,
                "deadline_at_ms": p.deadline_at_ms,
            }));
        }
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&Value::Array(inbox))?
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    if inbox.is_empty() {
        eprintln!("no pending approvals");
    }
    for a in &inbox {
        writeln!(
            out,
            "task {}  step {}  risk {}",
            a["task_id"].as_str().unwrap_or(""),
            a["step"].as_str().unwrap_or(""),
            a["risk"].as_str().unwrap_or("")
        )?;
        writeln!(out, "  summary: {}", a["summary"].as_str().unwrap_or(""))?;
        for r in a["rules"].as_array().into_iter().flatten() {
            writeln!(
                out,
                "  rule {}: {}",
                r["id"].as_str().unwrap_or(""),
                r["message"].as_str().unwrap_or("")
            )?;
        }
        writeln!(out, "  owners affected: {}", join(&a["owners"]))?;
        writeln!(out, "  evidence: {}", a["evidence"])?;
        writeln!(
            out,
            "  approvers: {} (quorum {}; decided: {})",
            join(&a["approvers"]),
            a["quorum"],
            a["decisions"].as_array().map(|d| d.len()).unwrap_or(0)
        )?;
        for r in a["rollback_plan"].as_array().into_iter().flatten() {
            writeln!(out, "  rollback: {}", r.as_str().unwrap_or(""))?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn join(v: &Value) -> String {
    let items: Vec<&str> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if items.is_empty() {
        "-".into()
    } else {
        items.join(", ")
    }
}
