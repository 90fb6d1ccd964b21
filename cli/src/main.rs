//! `mandate`: the command-line interface of the Mandate engine.
//!
//! Parses arguments, sets up logging, runs one command and turns its result
//! into an exit code: 0 ok, 2 bad input or a refused operation, 1 any other
//! failure. The commands themselves live in [`commands`]; opening the engine
//! and classifying errors live in [`app`]. This file must stay small: no
//! command logic here.

mod app;
mod args;
mod commands;
mod input;
mod remote;
mod style;
mod summary;
mod timeline;

use std::process::ExitCode;

// The engine allocates many small JSON values per step; glibc's allocator
// spent a third of the benchmark's CPU in malloc/free (perf), mimalloc does not.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    init_tracing(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            app::report(&anyhow::Error::new(e).context("cannot start the async runtime"));
            return ExitCode::from(app::EXIT_FAILURE);
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(error) => {
            let code = app::exit_code(&error);
            if code != app::EXIT_OK {
                app::report(&error);
            }
            ExitCode::from(code)
        }
    }
}

/// Logs go to stderr: `RUST_LOG` when set, else warn, raised by each `-v`.
fn init_tracing(verbose: u8) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(s) if !s.trim().is_empty() => tracing_subscriber::EnvFilter::new(s),
        _ => tracing_subscriber::EnvFilter::new(match verbose {
            0 => "warn",
            1 => "info",
            2 => "debug",
            _ => "trace",
        }),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(style::stderr_colored())
        .init();
}
