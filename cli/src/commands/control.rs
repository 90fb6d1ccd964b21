//! `mandate signal | cancel | pause | resume`: outside events appended to a
//! task. Each prints the seq of the event it recorded on stdout; a task that
//! is unknown, final, or in the wrong state for the request is refused
//! (exit 2) and nothing is written.

use std::io::Write;
use std::process::ExitCode;

use mandate_engine::Limits;
use serde_json::Value;

use crate::app::{self, Database, refused};
use crate::args::{CancelArgs, PauseArgs, ResumeArgs, SignalArgs};
use crate::input;

/// Longest `--reason` recorded in a history (the engine does not bound it).
const MAX_REASON_CHARS: usize = 1_000;

fn check_identity(limits: &Limits, identity: &str) -> anyhow::Result<()> {
    limits
        .check_name("--as identity", identity)
        .map_err(|m| refused(format!("{m} (e.g. --as user:alice)")))
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

pub async fn signal(db: &Database, args: SignalArgs) -> anyhow::Result<ExitCode> {
    let limits = Limits::default();
    limits
        .check_name("signal name", &args.name)
        .map_err(refused)?;
    check_identity(&limits, &args.identity)?;
    let payload = match &args.payload {
        Some(arg) => input::read_json("--payload", arg, &limits).map_err(refused)?,
        None => Value::Object(Default::default()),
    };
    db.require_existing()?;
    let (engine, _world) = app::open_engine(db).await?;
    let seq = engine
        .signal(&args.id, &args.name, payload, &args.identity)
        .await?;
    eprintln!(
        "signal '{}' from {} recorded as event #{seq} of task {}",
        args.name, args.identity, args.id
    );
    print_seq(seq)
}

pub async fn cancel(db: &Database, args: CancelArgs) -> anyhow::Result<ExitCode> {
    check_identity(&Limits::default(), &args.identity)?;
    check_reason(&args.reason)?;
    db.require_existing()?;
    let (engine, _world) = app::open_engine(db).await?;
    let seq = engine
        .cancel(&args.id, args.rollback, &args.identity, args.reason)
        .await?;
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

pub async fn pause(db: &Database, args: PauseArgs) -> anyhow::Result<ExitCode> {
    check_identity(&Limits::default(), &args.identity)?;
    check_reason(&args.reason)?;
    db.require_existing()?;
    let (engine, _world) = app::open_engine(db).await?;
    let seq = engine.pause(&args.id, &args.identity, args.reason).await?;
    eprintln!(
        "task {} paused (event #{seq}); attempts in flight finish, nothing new starts until `mandate resume {}`",
        args.id, args.id
    );
    print_seq(seq)
}

pub async fn resume(db: &Database, args: ResumeArgs) -> anyhow::Result<ExitCode> {
    check_identity(&Limits::default(), &args.identity)?;
    db.require_existing()?;
    let (engine, _world) = app::open_engine(db).await?;
    let seq = engine.resume(&args.id, &args.identity).await?;
    eprintln!("task {} resumed (event #{seq})", args.id);
    print_seq(seq)
}
