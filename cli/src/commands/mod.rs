//! One module per command. Each takes the parsed arguments and the database,
//! checks what it can before opening the database (so a refusal writes
//! nothing), and returns the process's exit code.
//!
//! With `--server` the commands that read or change tasks take a
//! [`Remote`](crate::remote::Remote) instead (a `remote` function beside
//! `run`) and print the same things: the same stdout, the same exit codes.
//!
//! Output discipline: stdout carries only what a script may read (an id, a
//! seq, a table, JSON); progress and explanations go to stderr.

pub(crate) mod approvals;
pub(crate) mod approve;
mod control;
mod demo;
mod halt;
mod history;
pub(crate) mod keys;
mod list;
pub(crate) mod mcp;
pub(crate) mod notify;
pub(crate) mod plan;
pub(crate) mod preapproval;
pub(crate) mod proof;
mod replay;
mod serve;
mod status;
mod submit;
pub(crate) mod token;
pub(crate) mod verify;

use std::process::ExitCode;

use crate::app::Database;
use crate::args::{Cli, Command};
use crate::remote::Remote;

/// Runs the command `cli` names.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    crate::app::set_policy_dir(cli.policies);
    let db = Database::from_arg(cli.db);
    // Connected only for the commands that use it, so `serve` or `token` with
    // MANDATE_SERVER set in the environment still work on the database.
    // An empty MANDATE_SERVER means none, as if it were unset.
    let server = cli.server.filter(|s| !s.trim().is_empty());
    let token = cli.token;
    let remote = || -> anyhow::Result<Option<Remote>> {
        server
            .as_deref()
            .map(|url| Remote::connect(url, token.as_deref()))
            .transpose()
    };
    match cli.command {
        Command::Serve(args) => serve::run(&db, args).await,
        Command::Mcp(args) => mcp::run(&db, server.as_deref(), token.as_deref(), args).await,
        Command::Demo => demo::run(&db).await,
        Command::Submit(args) => match remote()? {
            Some(r) => submit::remote(&r, args).await,
            None => submit::run(&db, args).await,
        },
        Command::Status(args) => match remote()? {
            Some(r) => status::remote(&r, args).await,
            None => status::run(&db, args).await,
        },
        Command::List(args) => match remote()? {
            Some(r) => list::remote(&r, args).await,
            None => list::run(&db, args).await,
        },
        Command::History(args) => match remote()? {
            Some(r) => history::remote(&r, args).await,
            None => history::run(&db, args).await,
        },
        Command::Signal(args) => control::signal(&db, remote()?, args).await,
        Command::Cancel(args) => control::cancel(&db, remote()?, args).await,
        Command::Pause(args) => control::pause(&db, remote()?, args).await,
        Command::Resume(args) => control::resume(&db, remote()?, args).await,
        Command::Retry(args) => control::retry(&db, remote()?, args).await,
        Command::Halt(args) => halt::run(&db, remote()?, args).await,
        Command::Replay(args) => replay::run(&db, args).await,
        Command::Verify(args) => verify::run(&db, args).await,
        Command::Plan(args) => plan::run(&db, remote()?, args).await,
        Command::Approve(args) => approve::run(&db, remote()?, args, "approve").await,
        Command::Reject(args) => approve::run(&db, remote()?, args, "reject").await,
        Command::Approvals(args) => match remote()? {
            Some(r) => approvals::remote(&r, args).await,
            None => approvals::run(&db, args).await,
        },
        Command::Token(args) => token::run(&db, args).await,
        Command::Preapproval(args) => preapproval::run(&db, remote()?, args).await,
        Command::Keys(args) => keys::run(args).await,
        Command::Proof(args) => proof::run(&db, args).await,
        Command::Ack(args) => notify::ack(&db, remote()?, args).await,
        Command::Respond(args) => notify::respond(&db, remote()?, args).await,
        Command::Resolve(args) => notify::resolve(&db, remote()?, args).await,
        Command::Tti(args) => notify::tti(&db, args).await,
    }
}
