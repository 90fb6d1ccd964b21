//! The command line, declared with clap. Only shapes and help texts here;
//! checks that need more than a type (JSON, names, limits) happen in the
//! commands so their errors can say what to do.

use clap::{ArgAction, Args, Parser, Subcommand};

/// Mandate runs AI-agent tasks as durable, event-sourced sagas on SQLite or PostgreSQL.
///
/// Start here: `mandate demo` routes an agent's plan to its owner and approver,
/// runs a deploy that completes and one that is rolled back, in a throw-away
/// database, and prints what happened.
#[derive(Debug, Parser)]
#[command(name = "mandate", version, propagate_version = true)]
pub struct Cli {
    /// Database URL: sqlite://PATH (created on first use) or postgres://USER@HOST:PORT/DB
    /// [default: sqlite://mandate.db]
    #[arg(
        long,
        global = true,
        env = "MANDATE_DATABASE_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub db: Option<String>,

    /// Policy directory: catalog.yaml and Cedar rules (org/, team/<team>/, agent/<agent>/),
    /// reloaded when its files change [default: the shipped catalog and baseline]
    #[arg(long, global = true, env = "MANDATE_POLICY_DIR", value_name = "DIR")]
    pub policies: Option<std::path::PathBuf>,

    /// A Mandate API server (http://HOST:PORT): submit, status, list, history, signal,
    /// cancel, pause, resume, retry, approve, reject, approvals, halt and plan go through
    /// it instead of the database (serve, demo, replay, verify and token always use the database)
    #[arg(long, global = true, env = "MANDATE_SERVER", value_name = "URL")]
    pub server: Option<String>,

    /// Bearer token for --server (from `mandate token create`); it decides who you are
    #[arg(
        long,
        global = true,
        env = "MANDATE_TOKEN",
        hide_env_values = true,
        value_name = "T"
    )]
    pub token: Option<String>,

    /// Log to stderr: -v info, -vv debug, -vvv trace (default warn; RUST_LOG wins when set)
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a worker that claims and advances tasks until Ctrl-C or SIGTERM
    Serve(ServeArgs),
    /// The story in a temporary database: an agent's plan notifies its owner and waits
    /// for a named approver's one-click link, two deploys (one rolled back), replay
    Demo,
    /// Create a task; prints its id alone on stdout
    Submit(SubmitArgs),
    /// Show one task: its row, its steps and its result (with --server the lease
    /// and idempotency key are not shown: the API does not give them)
    Status(StatusArgs),
    /// List tasks, newest first
    List(ListArgs),
    /// Print a task's history as a timeline, or as JSON Lines with --json
    History(HistoryArgs),
    /// Send a signal (e.g. an approval) to a task; prints the seq of the recorded event
    Signal(SignalArgs),
    /// Ask a task to stop, optionally rolling back its completed steps
    Cancel(CancelArgs),
    /// Pause a task: attempts in flight finish, nothing new starts until resumed
    Pause(PauseArgs),
    /// Resume a paused task where it was
    Resume(ResumeArgs),
    /// Run now the attempts a failed_retryable task holds back for backoff; prints the seq
    Retry(RetryArgs),
    /// The kill switch: halt all work or one agent's (running attempts finish, no new
    /// step starts); `halt --lift` lifts it and resumes the tasks it paused
    Halt(HaltArgs),
    /// Prove what happened to a task: verify its hash chain, rebuild its state,
    /// replay its workflow code, print its timeline (exit 0 ok, 1 non-determinism,
    /// 2 tampered, 3 derived rows differ); --all checks every task in flight
    Replay(ReplayArgs),
    /// Check the hash chain and derived rows of every task (or one), in bounded memory
    Verify(VerifyArgs),
    /// Plans: `plan check FILE` (dry run: decisions, rules, owners, rollback) and `plan submit FILE`
    Plan(crate::commands::plan::PlanArgs),
    /// Approve a gated step of a task as an identity (--as; with --server the token's),
    /// optionally with an edit
    Approve(crate::commands::approve::DecideArgs),
    /// Reject a gated step of a task as an identity (--as; with --server the token's);
    /// the task rolls back
    Reject(crate::commands::approve::DecideArgs),
    /// List pending approvals: summary, risk, owners, evidence, rollback plan
    Approvals(crate::commands::approvals::ApprovalsArgs),
    /// API tokens: `token create --role R --name N` (printed once), `token list`, `token revoke N`
    Token(crate::commands::token::TokenArgs),
    /// Serve the MCP gateway on stdio for the agent of MANDATE_TOKEN: each tool call
    /// becomes a governed, recorded, undoable step (with --server, through that server's /mcp)
    Mcp(crate::commands::mcp::McpArgs),
    /// Batch pre-approvals, granted and revoked by an owner of the tool:
    /// `preapproval grant --tool T --agent A --for 4h`, `preapproval list`, `preapproval revoke ID`
    Preapproval(crate::commands::preapproval::PreapprovalArgs),
    /// Checkpoint signing keys: `keys generate`, `keys public FILE`, `keys rotate`,
    /// `keys verify-rotation`
    Keys(crate::commands::keys::KeysArgs),
    /// Print the inclusion proofs of a task's events against a signed checkpoint
    Proof(crate::commands::proof::ProofArgs),
    /// Acknowledge a notification (as --as ID; with --server the token's identity)
    Ack(crate::commands::notify::AckArgs),
    /// Answer a notification: acknowledge, pause_task, pause_agent, cancel_rollback,
    /// trigger_recovery, assign, approve, reject, mark_reviewed, helpful, not_helpful
    Respond(crate::commands::notify::RespondArgs),
    /// Close an escalated_to_human task, saying what was done (--note)
    Resolve(crate::commands::notify::ResolveArgs),
    /// Time to intervention P50/P95 per action, ownership and recovery-path coverage,
    /// relevance, from the recorded history
    Tti(crate::commands::notify::TtiArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Lease owner id of this worker; unique per process [default: a generated id]
    #[arg(long, value_name = "ID")]
    pub worker_id: Option<String>,
    /// How long a claim holds a task without renewal; after a crash other workers
    /// take its tasks over once this has passed
    #[arg(long, value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(i64).range(1_000..=3_600_000))]
    pub lease_ms: i64,
    /// How long a notification delivery claim holds it; after a crash mid-delivery it is
    /// sent again (same id, the receiver's idempotency key) once this has passed. Keep it
    /// above the sinks' timeouts
    #[arg(long, value_name = "N", default_value_t = 30_000,
          value_parser = clap::value_parser!(i64).range(1_000..=3_600_000))]
    pub delivery_lease_ms: i64,
    /// Most tasks driven at once by this process (each holds its history in memory while
    /// driven) [default: 1000]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_active: Option<u64>,
    /// Address of the HTTP API (port 0 picks a free port; the address is printed)
    #[arg(long, value_name = "ADDR", default_value = mandate_api::DEFAULT_LISTEN)]
    pub listen: String,
    /// Run the worker only, without the HTTP API
    #[arg(long, conflicts_with = "listen")]
    pub no_http: bool,
    /// Requests per second each API token may make (sustained)
    #[arg(long, value_name = "N", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rate_limit: u32,
    /// Requests an API token may make at once above its rate
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rate_burst: u32,
    /// How long an API request (not an event stream) may take before it is
    /// answered 503 `timeout`
    #[arg(long, value_name = "MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub request_timeout_ms: u64,
    /// How long a client has to send a request's headers, from the connection's
    /// start or the previous response (also closes silent kept-alive connections)
    #[arg(long, value_name = "MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub header_timeout_ms: u64,
    /// A connection on which no byte moves either way for this long is closed
    #[arg(long, value_name = "MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(100..=86_400_000))]
    pub idle_timeout_ms: u64,
    /// Most HTTP connections open at once; more are answered 503 and closed
    #[arg(long, value_name = "N", default_value_t = 1_024,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,
    /// Most event streams (GET /v1/events) open at once; more get 503
    #[arg(long, value_name = "N", default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_streams: u64,
    /// Most event streams one token may hold open; more get 429
    #[arg(long, value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_streams_per_token: u64,
    /// Most submissions (POST /v1/tasks) handled at once; more get 503 with Retry-After
    #[arg(long, value_name = "N", default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_inflight_submissions: u64,
    /// Sign evidence checkpoints with this private key file (from `mandate keys generate`);
    /// the key is never stored in the database
    #[arg(long, value_name = "FILE", env = "MANDATE_SIGNING_KEY_FILE")]
    pub signing_key: Option<std::path::PathBuf>,
    /// A checkpoint every N new events…
    #[arg(long, value_name = "N", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub checkpoint_every: u64,
    /// …or every S seconds when events were added
    #[arg(long, value_name = "S", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub checkpoint_interval_s: u64,
    /// Also write each checkpoint here (`<size>.checkpoint`, and `latest`)
    #[arg(long, value_name = "DIR", requires = "signing_key")]
    pub checkpoint_dir: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Workflow to run (e.g. deploy_with_rollback, gated_deploy, saga)
    pub workflow: String,
    /// The task's input: inline JSON, @FILE to read a file, or - to read stdin
    #[arg(long, value_name = "JSON|@FILE|-", allow_hyphen_values = true)]
    pub input: String,
    /// The submitting agent (recorded; the actor becomes agent:<A>)
    #[arg(long, value_name = "A")]
    pub agent: Option<String>,
    /// The user the agent acts for
    #[arg(long, value_name = "U")]
    pub on_behalf_of: Option<String>,
    /// A retry with the same key returns the task the first call created
    #[arg(long, value_name = "K")]
    pub idempotency_key: Option<String>,
    /// Wait until the task is final; exit 1 unless it completed (needs a running `mandate serve`)
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this many seconds [default: 300]
    #[arg(long, value_name = "N", requires = "wait",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout_secs: Option<u64>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Task id (from `mandate submit` or `mandate list`)
    pub id: String,
    /// Print one JSON object instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only tasks with this status (queued, running, completed, failed_terminal, …)
    #[arg(long, value_name = "S")]
    pub status: Option<String>,
    /// Only tasks of this workflow
    #[arg(long, value_name = "W")]
    pub workflow: Option<String>,
    /// Only tasks submitted by this agent
    #[arg(long, value_name = "A")]
    pub agent: Option<String>,
    /// Most tasks shown
    #[arg(long, value_name = "N", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub limit: u32,
    /// Print a JSON array instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Task id
    pub id: String,
    /// Print JSON Lines, one event per line
    #[arg(long)]
    pub json: bool,
    /// With --json: dump the stored rows without verifying the hash chain
    /// (to export a history that fails verification)
    #[arg(long, requires = "json")]
    pub unverified: bool,
}

#[derive(Debug, Args)]
pub struct SignalArgs {
    /// Task id
    pub id: String,
    /// Signal name (e.g. approve)
    pub name: String,
    /// Payload: inline JSON, @FILE or - for stdin [default: {}]
    #[arg(long, value_name = "JSON|@FILE|-", allow_hyphen_values = true)]
    pub payload: Option<String>,
    /// Identity recorded as the sender [default: user:cli; with --server the token's]
    #[arg(long = "as", value_name = "IDENTITY")]
    pub identity: Option<String>,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    /// Task id
    pub id: String,
    /// Compensate the task's completed steps (in reverse order) before it ends
    #[arg(long)]
    pub rollback: bool,
    /// Why, recorded in the history
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Identity recorded as the one who cancelled [default: user:cli; with --server the token's]
    #[arg(long = "as", value_name = "IDENTITY")]
    pub identity: Option<String>,
}

#[derive(Debug, Args)]
pub struct PauseArgs {
    /// Task id
    pub id: String,
    /// Why, recorded in the history
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Identity recorded as the one who paused [default: user:cli; with --server the token's]
    #[arg(long = "as", value_name = "IDENTITY")]
    pub identity: Option<String>,
}

#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// Task id
    pub id: String,
    /// Identity recorded as the one who resumed [default: user:cli; with --server the token's]
    #[arg(long = "as", value_name = "IDENTITY")]
    pub identity: Option<String>,
}

#[derive(Debug, Args)]
pub struct RetryArgs {
    /// Task id
    pub id: String,
}

#[derive(Debug, Args)]
pub struct HaltArgs {
    /// Only this agent's tasks [default: all work]
    #[arg(long, value_name = "A")]
    pub agent: Option<String>,
    /// Why, recorded with the halt
    #[arg(long, value_name = "TEXT", conflicts_with = "lift")]
    pub reason: Option<String>,
    /// Lift the halt of this scope (global, or --agent's) and resume the tasks it paused
    #[arg(long)]
    pub lift: bool,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Task id (or --all)
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub id: Option<String>,
    /// Replay every task in flight with this binary's code: the safe-deploy check
    #[arg(long)]
    pub all: bool,
    /// With --all: only tasks with this status (e.g. needs_approval, running)
    #[arg(long, value_name = "S", conflicts_with = "id")]
    pub status: Option<String>,
    /// With --all: only tasks submitted within this long, e.g. 30m, 2h, 7d
    #[arg(long, value_name = "DURATION", conflicts_with = "id")]
    pub since: Option<String>,
    /// With --all: final tasks too (completed, failed_terminal, escalated_to_human, cancelled)
    #[arg(long, conflicts_with_all = ["id", "status"])]
    pub every: bool,
    /// Print one JSON document instead of text (schema: docs/replay.md)
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Verify only this task [default: every task]
    #[arg(conflicts_with_all = ["all", "status", "since"])]
    pub id: Option<String>,
    /// Every task (the default when no id is given)
    #[arg(long)]
    pub all: bool,
    /// Only tasks with this status
    #[arg(long, value_name = "S")]
    pub status: Option<String>,
    /// Only tasks submitted within this long, e.g. 30m, 2h, 7d
    #[arg(long, value_name = "DURATION")]
    pub since: Option<String>,
    /// Print one JSON document instead of text (schema: docs/replay.md)
    #[arg(long)]
    pub json: bool,
    /// Verify every event against this signed checkpoint (docs/hash-chain.md): its
    /// signature, a consistency proof to the current log, then each event at its gseq
    #[arg(long, value_name = "FILE", conflicts_with_all = ["id", "status", "since"], requires = "public_key")]
    pub checkpoint: Option<std::path::PathBuf>,
    /// The log's public key for --checkpoint (NAME+HASH+KEY, or a file holding it)
    #[arg(long, value_name = "FILE|KEY", requires = "checkpoint")]
    pub public_key: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn timeout_needs_wait_and_unverified_needs_json() {
        assert!(
            Cli::try_parse_from([
                "mandate",
                "submit",
                "saga",
                "--input",
                "{}",
                "--timeout-secs",
                "3"
            ])
            .is_err()
        );
        assert!(Cli::try_parse_from(["mandate", "history", "x", "--unverified"]).is_err());
        assert!(Cli::try_parse_from(["mandate", "history", "x", "--json", "--unverified"]).is_ok());
    }

    #[test]
    fn replay_takes_an_id_or_all_and_verify_takes_either() {
        assert!(Cli::try_parse_from(["mandate", "replay"]).is_err());
        assert!(Cli::try_parse_from(["mandate", "replay", "x", "--all"]).is_err());
        assert!(Cli::try_parse_from(["mandate", "replay", "x", "--since", "1h"]).is_err());
        assert!(
            Cli::try_parse_from([
                "mandate", "replay", "--all", "--every", "--status", "running"
            ])
            .is_err()
        );
        assert!(
            Cli::try_parse_from(["mandate", "replay", "--all", "--since", "7d", "--json"]).is_ok()
        );
        assert!(Cli::try_parse_from(["mandate", "verify"]).is_ok());
        assert!(Cli::try_parse_from(["mandate", "verify", "--all", "--status", "running"]).is_ok());
        assert!(Cli::try_parse_from(["mandate", "verify", "x", "--all"]).is_err());
    }

    #[test]
    fn stdin_input_and_global_db_parse() {
        let cli = Cli::try_parse_from([
            "mandate",
            "submit",
            "saga",
            "--input",
            "-",
            "--db",
            "sqlite://x.db",
        ])
        .unwrap();
        assert_eq!(cli.db.as_deref(), Some("sqlite://x.db"));
        match cli.command {
            Command::Submit(s) => assert_eq!(s.input, "-"),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn server_and_token_are_global_and_halt_lifts_without_a_reason() {
        let cli = Cli::try_parse_from([
            "mandate",
            "status",
            "x",
            "--server",
            "http://h:1",
            "--token",
            "mdt_t",
        ])
        .unwrap();
        assert_eq!(cli.server.as_deref(), Some("http://h:1"));
        assert_eq!(cli.token.as_deref(), Some("mdt_t"));
        assert!(Cli::try_parse_from(["mandate", "halt", "--lift", "--agent", "a"]).is_ok());
        assert!(Cli::try_parse_from(["mandate", "halt", "--lift", "--reason", "r"]).is_err());
        assert!(Cli::try_parse_from(["mandate", "retry"]).is_err());
        // Without --as, local commands fall back to user:cli; approve asks for it.
        match Cli::try_parse_from(["mandate", "cancel", "x"])
            .unwrap()
            .command
        {
            Command::Cancel(c) => assert_eq!(c.identity, None),
            other => panic!("parsed as {other:?}"),
        }
        assert!(Cli::try_parse_from(["mandate", "approve", "x"]).is_ok());
    }
}
