//! Answers to notifications and the figures they make:
//!
//! - `mandate ack <notification> --as ID` and `mandate respond <notification>
//!   <action> --as ID [--assign-to O] [--comment T]`: recorded in the task's
//!   history as `NotificationResponded` by `user:<ID>` (with the OS user who
//!   vouched for it); only the notification's recipient may answer. With
//!   `--server` the identity is the token's (`POST
//!   /v1/notifications/{id}/respond`).
//! - `mandate resolve <task> --note TEXT [--recovery-done] --as ID`: closes
//!   an `escalated_to_human` task (`EscalationResolved`; `POST
//!   /v1/tasks/{id}/resolve` with `--server`).
//! - `mandate tti [--since DURATION] [--json]`: time to intervention P50/P95
//!   per action type against the seeds' targets, ownership and
//!   recovery-path coverage and relevance, from the recorded history.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use mandate_engine::Limits;
use mandate_routing::wire::{Answer, Figures, Responder};
use serde_json::{Value, json};

use crate::app::{self, Database, refused};
use crate::remote::Remote;

#[derive(Debug, Args)]
pub struct AckArgs {
    /// Notification id (in every delivery)
    pub id: String,
    /// Who answers: the notification's recipient (required without --server;
    /// with --server the token's name is the identity)
    #[arg(long = "as", value_name = "ID")]
    pub identity: Option<String>,
}

#[derive(Debug, Args)]
pub struct RespondArgs {
    /// Notification id (in every delivery)
    pub id: String,
    /// acknowledge, pause_task, pause_agent, cancel_rollback, trigger_recovery,
    /// assign, approve, reject, mark_reviewed, helpful, not_helpful
    pub action: String,
    /// With assign: the owner to hand it to
    #[arg(long, value_name = "OWNER")]
    pub assign_to: Option<String>,
    #[arg(long, value_name = "TEXT")]
    pub comment: Option<String>,
    /// Who answers (see `ack`)
    #[arg(long = "as", value_name = "ID")]
    pub identity: Option<String>,
}

#[derive(Debug, Args)]
pub struct ResolveArgs {
    /// Task id (an escalated_to_human task)
    pub id: String,
    /// What was done, recorded with the resolution
    #[arg(long, value_name = "TEXT")]
    pub note: String,
    /// The recovery path was carried out
    #[arg(long)]
    pub recovery_done: bool,
    /// Who resolves (required without --server; with --server the token's name)
    #[arg(long = "as", value_name = "ID")]
    pub identity: Option<String>,
}

#[derive(Debug, Args)]
pub struct TtiArgs {
    /// Only answers recorded in this last span (e.g. 30m, 24h, 7d)
    #[arg(long, value_name = "DURATION")]
    pub since: Option<String>,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

pub async fn ack(db: &Database, remote: Option<Remote>, args: AckArgs) -> anyhow::Result<ExitCode> {
    respond(
        db,
        remote,
        RespondArgs {
            id: args.id,
            action: "acknowledge".into(),
            assign_to: None,
            comment: None,
            identity: args.identity,
        },
    )
    .await
}

pub async fn respond(
    db: &Database,
    remote: Option<Remote>,
    args: RespondArgs,
) -> anyhow::Result<ExitCode> {
    let limits = Limits::default();
    limits
        .check_name("notification id", &args.id)
        .map_err(refused)?;
    if !mandate_engine::runtime::RESPONSE_ACTIONS.contains(&args.action.as_str()) {
        return Err(refused(format!(
            "{:?} is not an action; use one of {}",
            args.action,
            mandate_engine::runtime::RESPONSE_ACTIONS.join(", ")
        )));
    }
    let answered: Value = match &remote {
        Some(r) => {
            let mut body = json!({"action": args.action});
            if let Some(a) = &args.assign_to {
                body["assign_to"] = json!(a);
            }
            if let Some(c) = &args.comment {
                body["comment"] = json!(c);
            }
            r.post_json(&["v1", "notifications", &args.id, "respond"], &body)
                .await?
        }
        None => {
            let identity = local_identity(&args.identity)?;
            db.require_existing()?;
            let responder = local_responder(db).await?;
            let a = responder
                .respond(
                    &args.id,
                    &identity,
                    &format!("cli:{}", super::approve::os_user()),
                    false,
                    Answer {
                        action: args.action.clone(),
                        assign_to: args.assign_to.clone(),
                        comment: args.comment.clone(),
                    },
                )
                .await
                .map_err(answer_error)?;
            serde_json::to_value(a)?
        }
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", answered["seq"])?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

pub async fn resolve(
    db: &Database,
    remote: Option<Remote>,
    args: ResolveArgs,
) -> anyhow::Result<ExitCode> {
    let seq = match &remote {
        Some(r) => r
            .post_json(
                &["v1", "tasks", &args.id, "resolve"],
                &json!({"note": args.note, "recovery_done": args.recovery_done}),
            )
            .await?["seq"]
            .clone(),
        None => {
            let identity = local_identity(&args.identity)?;
            db.require_existing()?;
            let (engine, _world) = app::open_engine(db).await?;
            json!(
                engine
                    .resolve_escalation(
                        &args.id,
                        &identity,
                        &format!("cli:{}", super::approve::os_user()),
                        &args.note,
                        args.recovery_done,
                    )
                    .await?
            )
        }
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{seq}")?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

pub async fn tti(db: &Database, args: TtiArgs) -> anyhow::Result<ExitCode> {
    let since_ms = match &args.since {
        Some(s) => Some(
            super::verify::parse_duration(s)
                .map_err(|e| refused(format!("--since: {e}")))?
                .as_millis(),
        ),
        None => None,
    };
    db.require_existing()?;
    let (engine, _world) = app::open_engine(db).await?;
    let since = since_ms.map(|d| engine.now_ms() - d as i64);
    let f = mandate_routing::wire::figures(&engine, since, mandate_routing::wire::MAX_FIGURES_SCAN)
        .await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&f)?)?;
    } else {
        write_figures(&mut out, &f)?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn write_figures(out: &mut impl Write, f: &Figures) -> std::io::Result<()> {
    let secs = |ms: i64| format!("{:.1} s", ms as f64 / 1000.0);
    writeln!(out, "time to intervention (notification → first answer):")?;
    if f.tti.is_empty() {
        writeln!(out, "  no answers recorded")?;
    }
    for t in &f.tti {
        let target = match (t.target_p95_ms, t.meets_target) {
            (Some(ms), Some(true)) => format!("target P95 < {}: met", secs(ms)),
            (Some(ms), _) => format!("target P95 < {}: MISSED", secs(ms)),
            (None, _) => "no target".into(),
        };
        writeln!(
            out,
            "  {:<17} n={:<5} P50 {:>9}  P95 {:>9}  {target}",
            t.action,
            t.count,
            secs(t.p50_ms),
            secs(t.p95_ms)
        )?;
    }
    let pct = |r: Option<f64>| {
        r.map(|r| format!("{:.0}%", r * 100.0))
            .unwrap_or("-".into())
    };
    writeln!(
        out,
        "ownership coverage:     {} of {} routed steps (target > 90%)",
        pct(f.ownership_coverage),
        f.steps_routed
    )?;
    writeln!(
        out,
        "recovery-path coverage: {} of {} write steps (target > 80%)",
        pct(f.recovery_path_coverage),
        f.write_steps
    )?;
    writeln!(
        out,
        "relevance:              {} of {} rated helpful (target > 70%)",
        pct(f.relevance),
        f.rated
    )?;
    if f.truncated {
        writeln!(
            out,
            "(only the newest {} events were read)",
            f.events_scanned
        )?;
    }
    Ok(())
}

fn local_identity(identity: &Option<String>) -> anyhow::Result<String> {
    let Some(id) = identity else {
        return Err(refused(
            "--as ID is required: who answers, recorded as user:<ID> \
             (with --server the token's name is the identity instead)",
        ));
    };
    Limits::default()
        .check_name("--as identity", id)
        .map_err(refused)?;
    Ok(id.clone())
}

async fn local_responder(db: &Database) -> anyhow::Result<Responder> {
    let (engine, _world) = app::open_engine(db).await?;
    let outbox = Arc::new(mandate_routing::outbox::Outbox::open(&db.url).await?);
    Ok(Responder {
        engine,
        outbox,
        // Answers from the CLI use no link.
        links: mandate_routing::wire::LinkSettings {
            secret: Vec::new(),
            base_url: String::new(),
            ttl_ms: 0,
        },
        config: app::routing_config()?,
        clock: mandate_routing::worker::system_clock(),
    })
}

fn answer_error(e: mandate_routing::wire::RespondError) -> anyhow::Error {
    use mandate_routing::wire::RespondError as R;
    match e {
        R::Engine(e) => anyhow::Error::new(e),
        R::Outbox(e) => anyhow::Error::new(e),
        other => refused(other.to_string()),
    }
}
