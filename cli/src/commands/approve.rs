//! `mandate approve | reject <task> [--step S] --as ID [--comment] [--edit JSON]`:
//! one decision on a gated plan step, sent as the signal `approval:<step>`
//! with sender `approver:<ID>`. The plan workflow refuses (exit 2, nothing
//! written) a wrong identity, the submitting agent, a repeated identity and
//! a step that is not awaiting approval. Prints the seq of the recorded
//! decision.

use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use mandate_engine::Limits;
use mandate_workflows::plan::approvals;
use serde_json::json;

use crate::app::{self, Database, refused};
use crate::input;

#[derive(Debug, Args)]
pub struct DecideArgs {
    /// Task id
    pub id: String,
    /// The gated step [default: the only step awaiting approval]
    #[arg(long, value_name = "S")]
    pub step: Option<String>,
    /// The approver's identity (recorded as approver:<ID>)
    #[arg(long = "as", value_name = "ID")]
    pub identity: String,
    /// Why, recorded with the decision
    #[arg(long, value_name = "TEXT")]
    pub comment: Option<String>,
    /// With approve: input fields to change (JSON object, @FILE or -); re-checked by policy
    #[arg(long, value_name = "JSON|@FILE|-", allow_hyphen_values = true)]
    pub edit: Option<String>,
}

pub async fn run(db: &Database, args: DecideArgs, decision: &str) -> anyhow::Result<ExitCode> {
    let limits = Limits::default();
    limits
        .check_name("--as identity", &args.identity)
        .map_err(refused)?;
    if args
        .comment
        .as_ref()
        .is_some_and(|c| c.chars().count() > 1_000)
    {
        return Err(refused("--comment is longer than 1000 characters"));
    }
    let edit = match &args.edit {
        Some(_) if decision == "reject" => {
            return Err(refused("--edit goes with approve, not reject"));
        }
        Some(e) => Some(input::read_json("--edit", e, &limits).map_err(refused)?),
        None => None,
    };
    db.require_existing()?;
    let (engine, _world) = app::open_engine(db).await?;
    let step = match args.step {
        Some(s) => s,
        None => {
            let history = engine.history(&args.id).await?;
            let pending = approvals::pending(&history);
            match pending.as_slice() {
                [one] => one.step.clone(),
                [] => {
                    return Err(refused(format!(
                        "task {} has no step awaiting approval",
                        args.id
                    )));
                }
                many => {
                    return Err(refused(format!(
                        "task {} has several steps awaiting approval ({}); pass --step",
                        args.id,
                        many.iter()
                            .map(|p| p.step.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
        }
    };
    let mut payload = json!({"decision": decision, "comment": args.comment});
    if let Some(e) = edit {
        payload["edit"] = e;
    }
    let seq = engine
        .signal(
            &args.id,
            &approvals::signal_name(&step),
            payload,
            &format!("approver:{}", args.identity),
        )
        .await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{seq}")?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
