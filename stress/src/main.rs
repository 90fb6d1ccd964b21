//! `mandate-stress`: proves rollback under load and faults, and measures
//! Mandate against its limits.
//!
//! - `mandate-stress --db URL --tasks N --seed S [--faults LIST] [--kill-every D]`
//!   (the default command, `run`): N seeded saga tasks driven by engine child
//!   processes that are SIGKILLed, restarted and frozen past their lease,
//!   while their store and tools inject faults; then an invariant report.
//!   Exits 1 when an invariant fails. See `run` and `check`.
//! - `mandate-stress bench --db URL`: throughput, latency, the durable-append
//!   ceiling, approval → next step, recovery after SIGKILL, memory. Measures
//!   only; asserts nothing. See `bench`.
//! - `mandate-stress replay-bench`: replay and verify costs. See `replay_bench`.
//! - `mandate-stress mcp-bench`: the MCP gateway's cost per allowed call
//!   against calling the upstream MCP server directly. See `mcp_bench`.
//! - `mandate-stress worker` (hidden): the engine child process of a run.

mod bench;
mod check;
mod child;
mod console_bench;
mod decide_bench;
mod evidence_bench;
mod faults;
mod freshdb;
mod http_bench;
mod mcp_bench;
mod policy_bench;
mod replay_bench;
mod routing_bench;
mod run;
mod scenario;
mod stats;

use clap::{Parser, Subcommand};

// The engine allocates many small JSON values per step; glibc's allocator
// spent a third of the benchmark's CPU in malloc/free (perf), mimalloc does not.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay`: its place in mimalloc.h's `mi_option_t` (the
/// same in mimalloc 2 and 3); the bindings export no constant for it.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// mimalloc gives freed pages back to the OS 100 ms after they fall empty
/// rather than its default 1 s (10 s for whole arenas), so memory freed
/// after a burst leaves the RSS: with 100,000 tasks waiting, peak RSS
/// 116.5–118.5 MB against 120.6–142.9 MB on SQLite, at no measurable CPU
/// cost (README, Performance); at once (0) costs about 13% more CPU per
/// task. An operator's
/// `MIMALLOC_PURGE_DELAY` still wins. Called first thing in `main`, before
/// any other thread exists (mimalloc's options are not thread-safe).
fn tune_allocator() {
    // SAFETY: a plain setter of a C global; no other thread runs yet.
    unsafe { libmimalloc_sys::mi_option_set_default(MI_OPTION_PURGE_DELAY, 100) }
}

#[derive(Parser)]
#[command(
    name = "mandate-stress",
    version,
    about = "Stress and benchmark Mandate against SQLite or PostgreSQL",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Without a subcommand: the stress run.
    #[command(flatten)]
    run: run::RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Throughput, latency, the durable-append ceiling, approval latency,
    /// recovery after SIGKILL and memory, on one store.
    Bench(bench::BenchArgs),
    /// Time `mandate replay` of a long history; with --tasks, the peak RSS of `verify --all`.
    ReplayBench(replay_bench::ReplayBenchArgs),
    /// The total CPU `decide` spends over a task's life vs its length (pure;
    /// no store): a chain of steps and parallel steps.
    DecideBench(decide_bench::DecideBenchArgs),
    /// Cost of the policy gate per plan step.
    PolicyBench(policy_bench::PolicyBenchArgs),
    /// The HTTP API under concurrent load: request rate and latency.
    HttpBench(http_bench::HttpBenchArgs),
    /// The evidence log: throughput with checkpoints on vs off; proof size and
    /// build/verify time up to 1,000,000 leaves.
    EvidenceBench(evidence_bench::EvidenceBenchArgs),
    /// Routing: task throughput with and without it, notifications/s, and
    /// decision recorded → delivered to a receiver, p50/p99.
    RoutingBench(routing_bench::RoutingBenchArgs),
    /// The web console's task page (long history) and inbox (many tasks).
    ConsoleBench(console_bench::ConsoleBenchArgs),
    /// The MCP gateway: one allowed call through it vs calling the upstream
    /// MCP server directly, p50/p99.
    McpBench(mcp_bench::McpBenchArgs),
    /// The upstream MCP server of `mcp-bench` (on stdio).
    #[command(hide = true)]
    McpUpstream,
    /// The engine child process of a stress run (started by the run itself).
    #[command(hide = true)]
    Worker(child::WorkerArgs),
    /// The engine child process of the recovery benchmark.
    #[command(hide = true)]
    BenchWorker(bench::BenchWorkerArgs),
}

fn main() -> anyhow::Result<()> {
    tune_allocator();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            None => run::run(cli.run).await,
            Some(Command::Bench(args)) => bench::run(args).await,
            Some(Command::ReplayBench(args)) => replay_bench::run(args).await,
            Some(Command::DecideBench(args)) => decide_bench::run_cli(args),
            Some(Command::PolicyBench(args)) => policy_bench::run(args),
            Some(Command::HttpBench(args)) => http_bench::run(args).await,
            Some(Command::EvidenceBench(args)) => evidence_bench::run(args).await,
            Some(Command::RoutingBench(args)) => routing_bench::run(args).await,
            Some(Command::ConsoleBench(args)) => console_bench::run(args).await,
            Some(Command::McpBench(args)) => mcp_bench::run(args).await,
            Some(Command::McpUpstream) => mcp_bench::serve_upstream().await,
            Some(Command::Worker(args)) => child::run(args).await,
            Some(Command::BenchWorker(args)) => bench::run_worker(args).await,
        }
    })
}
