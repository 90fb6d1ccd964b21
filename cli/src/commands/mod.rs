//! One module per command. Each takes the parsed arguments and the database,
//! checks what it can before opening the database (so a refusal writes
//! nothing), and returns the process's exit code.
//!
//! Output discipline: stdout carries only what a script may read (an id, a
//! seq, a table, JSON); progress and explanations go to stderr.

mod control;
mod demo;
mod history;
mod list;
mod serve;
mod status;
mod submit;

use std::process::ExitCode;

use crate::app::Database;
use crate::args::{Cli, Command};

/// Runs the command `cli` names.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
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
    }
}
