//! `mandate approve | reject <task> [--step S] --as ID [--comment] [--edit JSON]`:
//! one decision on a gated plan step, sent as the signal `approval:<step>`
//! with sender `approver:<ID>`. The plan workflow refuses (exit 2, nothing
//! written) a wrong identity, the submitting agent, a repeated identity and
//! a step that is not awaiting approval. Prints the seq of the recorded
//! decision.
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
use mandate_workflows::plan::approvals;
use serde_json::{Value, json};

use crate::app::{self, Database, refused};
use crate::input;
use crate::remote::Remote;

#[derive(Debug, Args)]
pub struct DecideArgs {
    /// Task id
    pub id: String,
    /// The gated step [default: the only step awaiting approval]
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

/// The one step in `pending`, or a refusal saying why there is not one.
fn only_step(task_id: &str, pending: Vec<String>, whose: &str) -> anyhow::Result<String> {
    match pending.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(refused(format!(
            "task {task_id} has no step awaiting {whose}"
        ))),
        many => Err(refused(format!(
            "task {task_id} has several steps awaiting approval ({}); pass --step",
            many.join(", ")
        ))),
    }
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
    let step = match &args.step {
        Some(s) => s.clone(),
        None => {
            let history = engine.history(&args.id).await?;
            let pending = approvals::pending(&history)
                .into_iter()
                .map(|p| p.step)
                .collect();
            only_step(&args.id, pending, "approval")?
        }
    };
    let mut payload = json!({"decision": decision, "comment": args.comment});
    if let Some(e) = edit {
        payload["edit"] = e;
    }
    Ok(engine
        .signal(
            &args.id,
            &approvals::signal_name(&step),
            payload,
            &format!("approver:{identity}"),
        )
        .await?)
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
            let pending = remote
                .approvals()
                .await?
                .into_iter()
                .filter(|a| a["task_id"] == args.id.as_str())
                .filter_map(|a| a["step"].as_str().map(str::to_string))
                .collect();
            only_step(
                &args.id,
                pending,
                "a decision by this token's identity (none in its GET /v1/approvals inbox)",
            )?
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
