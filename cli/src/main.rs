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

use clap::Parser;

fn main() -> ExitCode {
    tune_allocator();
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
