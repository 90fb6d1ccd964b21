//! `mandate halt [--agent A] [--reason R]` and `mandate halt --lift [--agent A]`:
//! the kill switch. A halt stops all work (or one agent's) from starting new
//! steps; attempts in flight finish, and each task it reaches is paused with
//! the halt as the actor. Lifting resumes exactly the tasks its pauses hold.
//!
//! `halt` prints the halt's id; `halt --lift` prints the ids of the tasks it
//! resumed, one per line. Lifting a scope with no active halt is refused.
//! Locally the halt is recorded by `user:cli` and reaches the workers of
//! other processes within about a second (they reread the halts).

use std::io::Write;
use std::process::ExitCode;

use crate::app::{self, Database, refused};
use crate::args::HaltArgs;
use crate::commands::control::DEFAULT_IDENTITY;
use crate::remote::Remote;

pub async fn run(
    db: &Database,
    remote: Option<Remote>,
    args: HaltArgs,
) -> anyhow::Result<ExitCode> {
    let scope = match &args.agent {
        Some(a) => format!("agent {a}"),
        None => "all work".to_string(),
    };
    if args.lift {
        return lift(db, remote, args.agent, &scope).await;
    }
    let (id, agent) = match &remote {
        Some(r) => {
            let h = r
                .halt(args.agent.as_deref(), args.reason.as_deref())
                .await?;
            (h.id, h.agent)
        }
        None => {
            db.require_existing()?;
            let (engine, _world) = app::open_engine(db).await?;
            let h = engine
                .halt(args.agent.as_deref(), DEFAULT_IDENTITY, args.reason)
                .await?;
            (h.id, h.agent)
        }
    };
    let lift_hint = match &agent {
        Some(a) => format!("mandate halt --lift --agent {a}"),
        None => "mandate halt --lift".to_string(),
    };
    eprintln!(
        "halted {scope} ({id}): attempts in flight finish, no new step starts until `{lift_hint}`"
    );
    let mut out = std::io::stdout().lock();
    writeln!(out, "{id}")?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

async fn lift(
    db: &Database,
    remote: Option<Remote>,
    agent: Option<String>,
    scope: &str,
) -> anyhow::Result<ExitCode> {
    let (halts, resumed) = match &remote {
        Some(r) => {
            let l = r.lift_halt(agent.as_deref()).await?;
            (
                l.lifted.into_iter().map(|h| h.id).collect::<Vec<_>>(),
                l.resumed,
            )
        }
        None => {
            db.require_existing()?;
            let (engine, _world) = app::open_engine(db).await?;
            let l = engine.lift_halt(agent.as_deref(), DEFAULT_IDENTITY).await?;
            (l.halts.into_iter().map(|h| h.id).collect(), l.resumed)
        }
    };
    if halts.is_empty() {
        // The same refusal the API gives.
        return Err(refused(match agent {
            Some(a) => format!("no active halt for agent {a}"),
            None => {
                "no active global halt (an agent's halt is lifted with --agent NAME)".to_string()
            }
        }));
    }
    eprintln!(
        "lifted the halt of {scope} ({}); {} task(s) resumed",
        halts.join(", "),
        resumed.len()
    );
    let mut out = std::io::stdout().lock();
    for id in &resumed {
        writeln!(out, "{id}")?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
