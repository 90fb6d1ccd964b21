//! `mandate approve | reject <task> [--step S] --as ID [--comment] [--edit JSON]`:
//! one decision on an approval request (a gated step, or a workflow's own
//! approval), recorded through the engine's approval call as
//! `approver:<ID>` (with the OS user who vouched for it). The engine refuses
//! (exit 2, nothing written) an identity the request does not name, the
//! submitting agent, the user the task acts for, a repeated identity, a
//! request past its deadline, and a step that is not awaiting approval.
//! Prints the seq of the recorded decision.
//!
//! With `--server` the decision goes to `POST /v1/approvals/<task>:<step>`
//! and the identity is the token's name, never `--as`: an `--as` that
//! differs from the identity recorded earns a warning on stderr (the API
//! has no way to ask a token's name beforehand, so the recorded event is
//! read back). Without `--step`, the step is the only one of the task in
//! the token's inbox.

use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use mandate_engine::Limits;
use mandate_engine::runtime::{ApprovalDecision, ApprovalTarget};
use serde_json::Value;

use crate::app::{self, Database, refused};
use crate::input;
use crate::remote::Remote;

#[derive(Debug, Args)]
pub struct DecideArgs {
    /// Task id
    pub id: String,
    /// The gated step, or the request's seq [default: the only request awaiting approval]
    #[arg(long, value_name = "S")]
    pub step: Option<String>,
    /// The approver's identity, recorded as approver:<ID> (required without --server;
    /// with --server the token's name is the identity and --as is ignored)
    #[arg(long = "as", value_name = "ID")]
    pub identity: Option<String>,
    /// Why, recorded with the decision
    #[arg(long, value_name = "TEXT")]
    pub comment: Option<String>,
    /// With approve: input fields to change (JSON object, @FILE or -); re-checked by policy
    #[arg(long, value_name = "JSON|@FILE|-", allow_hyphen_values = true)]
    pub edit: Option<String>,
}

pub async fn run(
    db: &Database,
    remote: Option<Remote>,
    args: DecideArgs,
    decision: &str,
) -> anyhow::Result<ExitCode> {
    let limits = Limits::default();
    if let Some(id) = &args.identity {
        limits.check_name("--as identity", id).map_err(refused)?;
    }
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
    let seq = match &remote {
        Some(r) => decide_remote(r, &args, decision, edit).await?,
        None => decide_local(db, &args, decision, edit).await?,
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{seq}")?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// The OS user running this command, recorded with a local decision as how
/// the identity was vouched for (the database's owner).
pub(crate) fn os_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

async fn decide_local(
    db: &Database,
    args: &DecideArgs,
    decision: &str,
    edit: Option<Value>,
) -> anyhow::Result<i64> {
    let Some(identity) = &args.identity else {
        return Err(refused(
            "--as ID is required: the approver's identity, recorded as approver:<ID> \
             (with --server the token's name is the identity instead)",
        ));
    };
    db.require_existing()?;
    let (engine, _world) = app::open_engine(db).await?;
    let target = match &args.step {
        Some(s) => ApprovalTarget::parse(s),
        None => ApprovalTarget::Only,
    };
    let recorded = engine
        .decide_approval(
            &args.id,
            target,
            identity,
            ApprovalDecision {
                approved: decision == "approve",
                comment: args.comment.clone(),
                edit,
                via: Some(format!("cli:{}", os_user())),
            },
        )
        .await?;
    Ok(recorded.seq)
}

async fn decide_remote(
    remote: &Remote,
    args: &DecideArgs,
    decision: &str,
    edit: Option<Value>,
) -> anyhow::Result<i64> {
    let step = match &args.step {
        Some(s) => s.clone(),
        None => {
            let pending: Vec<String> = remote
                .approvals()
                .await?
                .into_iter()
                .filter(|a| a["task_id"] == args.id.as_str())
                .filter_map(|a| a["request_seq"].as_i64().map(|s| s.to_string()))
                .collect();
            match pending.as_slice() {
                [one] => one.clone(),
                [] => {
                    return Err(refused(format!(
                        "task {} has no request awaiting a decision by this token's identity (none in its GET /v1/approvals inbox)",
                        args.id
                    )));
                }
                many => {
                    return Err(refused(format!(
                        "task {} has several requests awaiting this identity (seqs {}); pass --step",
                        args.id,
                        many.join(", ")
                    )));
                }
            }
        }
    };
    let decided = remote
        .decide(&args.id, &step, decision, args.comment.as_deref(), edit)
        .await;
    let seq = match (decided, &args.identity) {
        (Ok(seq), _) => seq,
        (Err(e), Some(id)) => {
            return Err(e.context(format!(
                "the decision was refused; note that --as {id} is ignored with --server: \
                 the token's name is the approver's identity"
            )));
        }
        (Err(e), None) => return Err(e),
    };
    if let Some(id) = &args.identity {
        let asked = format!("approver:{id}");
        let recorded = remote
            .history(&args.id)
            .await
            .ok()
            .and_then(|h| h.into_iter().find(|e| e.seq == seq).map(|e| e.actor));
        match recorded {
            Some(actor) if actor == asked => {}
            Some(actor) => eprintln!(
                "warning: the decision was recorded as {}, not {}: with --server the token's name \
                 is the identity and --as is ignored",
                crate::summary::escape(&actor),
                crate::summary::escape(&asked)
            ),
            None => eprintln!(
                "warning: --as {id} is ignored with --server; the decision (event #{seq}) was recorded as the token's identity"
            ),
        }
    }
    Ok(seq)
}
