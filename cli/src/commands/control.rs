//! `mandate signal | cancel | pause | resume | retry`: outside events appended
//! to a task. Each prints the seq of the event it recorded on stdout; a task
//! that is unknown, final, or in the wrong state for the request is refused
//! (exit 2) and nothing is written.
//!
//! With `--server` the API records them, as the token's identity: `--as` is
//! then ignored, with a warning.

use std::io::Write;
use std::process::ExitCode;

use mandate_engine::Limits;
use serde_json::{Value, json};

use crate::app::{self, Database, refused};
use crate::args::{CancelArgs, PauseArgs, ResumeArgs, RetryArgs, SignalArgs};
use crate::input;
use crate::remote::Remote;

/// Longest `--reason` recorded in a history (the engine does not bound it).
const MAX_REASON_CHARS: usize = 1_000;

/// Who acts when `--as` is not given, locally.
pub const DEFAULT_IDENTITY: &str = "user:cli";

/// The identity to record locally, checked; over HTTP the token decides, so
/// an explicit `--as` only earns a warning. Returns the words for messages.
fn actor(identity: Option<&str>, remote: Option<&Remote>) -> anyhow::Result<String> {
    match (identity, remote) {
        (Some(id), Some(r)) => {
            eprintln!(
                "warning: --as {id} is ignored with --server: {} records the token's identity",
                r.shown()
            );
            Ok("the token's identity".into())
        }
        (None, Some(_)) => Ok("the token's identity".into()),
        (id, None) => {
            let id = id.unwrap_or(DEFAULT_IDENTITY);
            Limits::default()
                .check_name("--as identity", id)
                .map_err(|m| refused(format!("{m} (e.g. --as user:alice)")))?;
            Ok(id.to_string())
        }
    }
}

fn check_reason(reason: &Option<String>) -> anyhow::Result<()> {
    match reason {
        Some(r) if r.chars().count() > MAX_REASON_CHARS => Err(refused(format!(
            "--reason is {} characters; at most {MAX_REASON_CHARS} are recorded. Shorten it",
            r.chars().count()
        ))),
        _ => Ok(()),
    }
}

fn print_seq(seq: i64) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{seq}")?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

pub async fn signal(
    db: &Database,
    remote: Option<Remote>,
    args: SignalArgs,
) -> anyhow::Result<ExitCode> {
    let limits = Limits::default();
    limits
        .check_name("signal name", &args.name)
        .map_err(refused)?;
    let who = actor(args.identity.as_deref(), remote.as_ref())?;
    let payload = match &args.payload {
        Some(arg) => input::read_json("--payload", arg, &limits).map_err(refused)?,
        None => Value::Object(Default::default()),
    };
    let seq = match &remote {
        Some(r) => r.signal(&args.id, &args.name, payload).await?,
        None => {
            db.require_existing()?;
            let (engine, _world) = app::open_engine(db).await?;
            engine.signal(&args.id, &args.name, payload, &who).await?
        }
    };
    eprintln!(
        "signal '{}' from {who} recorded as event #{seq} of task {}",
        args.name, args.id
    );
    print_seq(seq)
}

pub async fn cancel(
    db: &Database,
    remote: Option<Remote>,
    args: CancelArgs,
) -> anyhow::Result<ExitCode> {
    let who = actor(args.identity.as_deref(), remote.as_ref())?;
    check_reason(&args.reason)?;
    let seq = match &remote {
        Some(r) => {
            r.control(
                &args.id,
                "cancel",
                json!({"rollback": args.rollback, "reason": args.reason}),
            )
            .await?
        }
        None => {
            db.require_existing()?;
            let (engine, _world) = app::open_engine(db).await?;
            engine
                .cancel(&args.id, args.rollback, &who, args.reason)
                .await?
        }
    };
    let how = if args.rollback {
        "its completed steps will be compensated, then it ends cancelled"
    } else {
        "it ends cancelled without rollback"
    };
    eprintln!(
        "cancellation of task {} recorded as event #{seq}; {how}",
        args.id
    );
    print_seq(seq)
}

pub async fn pause(
    db: &Database,
    remote: Option<Remote>,
    args: PauseArgs,
) -> anyhow::Result<ExitCode> {
    let who = actor(args.identity.as_deref(), remote.as_ref())?;
    check_reason(&args.reason)?;
    let seq = match &remote {
        Some(r) => {
            r.control(&args.id, "pause", json!({"reason": args.reason}))
                .await?
        }
        None => {
            db.require_existing()?;
            let (engine, _world) = app::open_engine(db).await?;
            engine.pause(&args.id, &who, args.reason).await?
        }
    };
    eprintln!(
        "task {} paused (event #{seq}); attempts in flight finish, nothing new starts until `mandate resume {}`",
        args.id, args.id
    );
    print_seq(seq)
}

pub async fn resume(
    db: &Database,
    remote: Option<Remote>,
    args: ResumeArgs,
) -> anyhow::Result<ExitCode> {
    let who = actor(args.identity.as_deref(), remote.as_ref())?;
    let seq = match &remote {
        Some(r) => r.control(&args.id, "resume", json!({})).await?,
        None => {
            db.require_existing()?;
            let (engine, _world) = app::open_engine(db).await?;
            engine.resume(&args.id, &who).await?
        }
    };
    eprintln!("task {} resumed (event #{seq})", args.id);
    print_seq(seq)
}

pub async fn retry(
    db: &Database,
    remote: Option<Remote>,
    args: RetryArgs,
) -> anyhow::Result<ExitCode> {
    let seq = match &remote {
        Some(r) => r.control(&args.id, "retry", json!({})).await?,
        None => {
            db.require_existing()?;
            let (engine, _world) = app::open_engine(db).await?;
            engine.retry(&args.id, DEFAULT_IDENTITY).await?
        }
    };
    eprintln!(
        "retry of task {} recorded as event #{seq}; its waiting attempts run now",
        args.id
    );
    print_seq(seq)
}
