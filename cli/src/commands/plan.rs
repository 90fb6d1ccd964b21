//! `mandate plan check FILE` (dry run) and `mandate plan submit FILE`.
//!
//! `check` validates the whole plan as a submission would, then evaluates
//! each step against the policies in force and prints, per step, the
//! decision, the rules behind it, the owners, and the compensation or
//! recovery path. It runs nothing and opens no database. References to
//! earlier outputs are unresolved in a dry run, so rules on such fields see
//! the reference text.
//!
//! With `--server`, `check` asks the server's dry run (`POST
//! /v1/plans/dry-run`: its policies, not this machine's) and `submit` posts
//! `{"plan": ...}` to `/v1/tasks`; an agent's token submits as that agent.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use mandate_engine::{Limits, SubmitOptions, TaskStatus};
use mandate_workflows::plan::parse_text;
use serde_json::Value;

use crate::app::{self, Database, refused};
use crate::remote::Remote;
use crate::summary;

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(subcommand)]
    pub command: PlanCommand,
}

#[derive(Debug, Subcommand)]
pub enum PlanCommand {
    /// Dry run: validate the plan and print each step's policy decision, rules,
    /// owners and rollback; runs nothing (exit 2 when the plan is refused)
    Check {
        /// Plan file (YAML or JSON), or - for stdin
        file: String,
        /// Print one JSON document instead of text
        #[arg(long)]
        json: bool,
    },
    /// Submit a plan file (YAML or JSON) as a `plan` task; prints the task id
    Submit {
        /// Plan file (YAML or JSON), or - for stdin
        file: String,
        /// A retry with the same key returns the task the first call created
        #[arg(long, value_name = "K")]
        idempotency_key: Option<String>,
        /// Wait until the task is final; exit 1 unless it completed
        #[arg(long)]
        wait: bool,
    },
}

fn read_plan(file: &str) -> anyhow::Result<Value> {
    let limits = Limits::default();
    let max = limits.max_payload_bytes.saturating_mul(4);
    let text = if file == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(
            &mut std::io::Read::take(std::io::stdin(), max as u64 + 1),
            &mut s,
        )?;
        s
    } else {
        let meta = std::fs::metadata(file)
            .map_err(|e| refused(format!("cannot read plan file {file}: {e}")))?;
        if meta.len() as usize > max {
            return Err(refused(format!(
                "plan file {file} is larger than {max} bytes"
            )));
        }
        std::fs::read_to_string(file)
            .map_err(|e| refused(format!("cannot read plan file {file}: {e}")))?
    };
    let value = parse_text(file, &text).map_err(refused)?;
    limits
        .check_payload(&value)
        .map_err(|m| refused(format!("{file}: {m}")))?;
    Ok(value)
}

/// How long `plan submit --wait` waits.
const WAIT: Duration = Duration::from_secs(300);

pub async fn run(
    db: &Database,
    remote: Option<Remote>,
    args: PlanArgs,
) -> anyhow::Result<ExitCode> {
    match (args.command, remote) {
        (PlanCommand::Check { file, json }, None) => {
            let plan = read_plan(&file)?;
            check(&dry_run(&plan)?, json)
        }
        (PlanCommand::Check { file, json }, Some(r)) => {
            let plan = read_plan(&file)?;
            check(&r.dry_run(&plan).await?, json)
        }
        (
            PlanCommand::Submit {
                file,
                idempotency_key,
                wait,
            },
            None,
        ) => submit(db, &file, idempotency_key, wait).await,
        (
            PlanCommand::Submit {
                file,
                idempotency_key,
                wait,
            },
            Some(r),
        ) => {
            let plan = read_plan(&file)?;
            if let Some(k) = &idempotency_key {
                Limits::default()
                    .check_name("--idempotency-key", k)
                    .map_err(refused)?;
            }
            let task = r
                .submit(None, plan, None, None, idempotency_key.as_deref())
                .await?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", task.id)?;
            out.flush()?;
            drop(out);
            if !wait {
                return Ok(ExitCode::SUCCESS);
            }
            crate::commands::submit::wait_remote(&r, &task.id, WAIT).await
        }
    }
}

/// The dry-run report of a plan: one entry per step, in run order.
pub fn dry_run(plan: &Value) -> anyhow::Result<Value> {
    let governance = app::governance()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let mut report = mandate_workflows::plan::dry_run(plan, &governance, now)
        .map_err(|e| refused(format!("plan refused: {e}")))?;
    mandate_routing::wire::route_dry_run(
        &mut report,
        &app::routing_config()?.get(),
        Some(&mandate_api::notifications::scope_field(&governance)),
        now,
    );
    Ok(report)
}

fn check(report: &Value, as_json: bool) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    if as_json {
        writeln!(out, "{}", serde_json::to_string_pretty(report)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    // The plan is agent-written: every line is escaped on its way out.
    for line in check_lines(report) {
        writeln!(out, "{}", summary::escape(&line))?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// The human rendering of a dry run, line by line.
fn check_lines(report: &Value) -> Vec<String> {
    let str_of = |v: &Value| v.as_str().unwrap_or("").to_string();
    let hash = str_of(&report["policy_hash"]);
    let mut lines = vec![
        format!(
            "plan by {}{}: {}",
            report["agent"].as_str().unwrap_or("?"),
            report["on_behalf_of"]
                .as_str()
                .map(|u| format!(" for {u}"))
                .unwrap_or_default(),
            report["reason"].as_str().unwrap_or("(no reason given)")
        ),
        format!("policy set {}", &hash[..12.min(hash.len())]),
    ];
    for s in report["steps"].as_array().into_iter().flatten() {
        lines.push(String::new());
        lines.push(format!(
            "step {}  ({}{})  → {}",
            str_of(&s["step"]),
            str_of(&s["tool"]),
            s["kind"]
                .as_str()
                .map(|k| format!(", {k}"))
                .unwrap_or_default(),
            str_of(&s["decision"])
        ));
        for r in s["rules"].as_array().into_iter().flatten() {
            lines.push(format!(
                "  rule {} [{}]: {}",
                str_of(&r["id"]),
                str_of(&r["level"]),
                str_of(&r["message"])
            ));
        }
        lines.push(format!("  owners: {}", summary::list(&s["owners"])));
        if let Some(a) = s["approval"].as_object() {
            lines.push(format!(
                "  approval: quorum {} of {}; timeout {} ms{}",
                a["quorum"],
                summary::list(&a["approvers"]),
                a["timeout_ms"],
                a.get("escalation")
                    .and_then(Value::as_str)
                    .map(|e| format!("; escalates to {e}"))
                    .unwrap_or_default()
            ));
        }
        let notify: Vec<String> = s["notify"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| {
                format!(
                    "{} (rule {}: {})",
                    n["recipient"].as_str().unwrap_or(""),
                    n["rule"].as_str().unwrap_or(""),
                    n["why"].as_str().unwrap_or("")
                )
            })
            .collect();
        if s.get("notify").is_some() {
            lines.push(format!(
                "  notify: {}",
                if notify.is_empty() {
                    "nobody".to_string()
                } else {
                    summary::escape(&notify.join("; ")).into_owned()
                }
            ));
        }
        let rollback = &s["rollback"];
        let text = if let Some(c) = rollback.get("compensation") {
            format!(
                "compensate with {} {}",
                str_of(&c["tool"]),
                summary::json(&c["input"], summary::MAX_JSON_CHARS)
            )
        } else if let Some(r) = rollback.get("recovery_path").and_then(Value::as_str) {
            format!("no automatic undo; recovery path: {r}")
        } else if s["kind"] == "read" {
            "nothing to undo (read)".to_string()
        } else {
            "no automatic undo and no recovery path".to_string()
        };
        lines.push(format!("  rollback: {text}"));
    }
    lines
}

async fn submit(
    db: &Database,
    file: &str,
    idempotency_key: Option<String>,
    wait: bool,
) -> anyhow::Result<ExitCode> {
    let plan = read_plan(file)?;
    let agent = plan["agent"].as_str().map(str::to_string);
    let on_behalf_of = plan["on_behalf_of"].as_str().map(str::to_string);
    let (engine, _world) = app::open_engine(db).await?;
    let submitted = engine
        .submit(
            "plan",
            plan,
            SubmitOptions {
                agent,
                on_behalf_of,
                idempotency_key,
                actor: None,
            },
        )
        .await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", submitted.task_id)?;
        out.flush()?;
    }
    if !wait {
        return Ok(ExitCode::SUCCESS);
    }
    let row = engine.wait_until_final(&submitted.task_id, WAIT).await?;
    eprintln!("task {} ended {}", submitted.task_id, row.status);
    Ok(if row.status == TaskStatus::Completed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(app::EXIT_FAILURE)
    })
}
