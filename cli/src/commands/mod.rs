//! One module per command. Each takes the parsed arguments and the database,
//! checks what it can before opening the database (so a refusal writes
//! nothing), and returns the process's exit code.
//!
//! Output discipline: stdout carries only what a script may read (an id, a
//! seq, a table, JSON); progress and explanations go to stderr.

pub(crate) mod approvals;
pub(crate) mod approve;
mod control;
mod demo;
mod history;
mod list;
pub(crate) mod plan;
mod replay;
mod serve;
mod status;
mod submit;
mod verify;

use std::process::ExitCode;

use crate::app::Database;
use crate::args::{Cli, Command};

/// Runs the command `cli` names.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    crate::app::set_policy_dir(cli.policies);
    let db = Database::from_arg(cli.db);
    match cli.command {
        Command::Serve(args) => serve::run(&db, args).await,
        Command::Demo => demo::run(&db).await,
        Command::Submit(args) => submit::run(&db, args).await,
        Command::Status(args) => status::run(&db, args).await,
        Command::List(args) => list::run(&db, args).await,
        Command::History(args) => history::run(&db, args).await,
        Command::Signal(args) => control::signal(&db, args).await,
        Command::Cancel(args) => control::cancel(&db, args).await,
        Command::Pause(args) => control::pause(&db, args).await,
        Command::Resume(args) => control::resume(&db, args).await,
        Command::Replay(args) => replay::run(&db, args).await,
        Command::Verify(args) => verify::run(&db, args).await,
        Command::Plan(args) => plan::run(&db, args).await,
        Command::Approve(args) => approve::run(&db, args, "approve").await,
        Command::Reject(args) => approve::run(&db, args, "reject").await,
        Command::Approvals(args) => approvals::run(&db, args).await,
    }
}
