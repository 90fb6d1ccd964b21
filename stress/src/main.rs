//! `mandate-stress`: measures Mandate against its limits.
//!
//! `mandate-stress bench --db URL` runs, on a fresh database each time:
//! - throughput: N five-step tasks submitted at once, time until all are final;
//! - latency: one five-step task at a time, submit → final, p50/p99;
//! - the raw durable-append rate of the same store (one event per commit,
//!   waiting for each), the ceiling a step's first append cannot beat.
//!
//! Every figure is measured in the same run; nothing is asserted.

mod bench;
mod freshdb;

use clap::{Parser, Subcommand};

// The engine allocates many small JSON values per step; glibc's allocator
// spent a third of the benchmark's CPU in malloc/free (perf), mimalloc does not.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "mandate-stress",
    version,
    about = "Stress and benchmark Mandate against SQLite or PostgreSQL"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Throughput, latency and the durable-append ceiling on one store.
    Bench(bench::BenchArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Bench(args) => bench::run(args).await,
        }
    })
}
