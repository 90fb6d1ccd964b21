//! `mandate serve`: one worker and the HTTP API (docs/http-api.md) in this
//! process, until SIGINT or SIGTERM.
//!
//! On the first signal the worker stops claiming, gives its leases back and
//! the process exits 0; a second signal exits at once (130), leaving the
//! leases to expire. Either way no task is lost: another worker takes over.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use mandate_engine::{Limits, WorkerConfig};
use tokio::signal::unix::{SignalKind, signal};

use crate::app::{self, Database, refused};
use crate::args::ServeArgs;

pub async fn run(db: &Database, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut config = WorkerConfig::default();
    if let Some(id) = args.worker_id {
        Limits::default()
            .check_name("--worker-id", &id)
            .map_err(refused)?;
        config.id = id;
    }
    config.lease_ms = args.lease_ms;
    if let Some(n) = args.max_active {
        config.max_active_tasks = count(n);
    }

    // Listen before anything starts, so an early Ctrl-C is not lost.
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;

    // Bind before starting the worker: a taken port fails fast, changing nothing.
    let listener = if args.no_http {
        None
    } else {
        Some(
            tokio::net::TcpListener::bind(&args.listen)
                .await
                .map_err(|e| {
                    refused(format!(
                        "cannot listen on {}: {e}; pass another --listen ADDR",
                        args.listen
                    ))
                })?,
        )
    };
    let (engine, _world) = app::open_engine(db).await?;
    let worker = engine.start_worker(config);
    let worker_id = worker.id().to_string();

    // The HTTP API shares `engine`; it stops before the worker so no request
    // lands on a stopping engine.
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http = match listener {
        Some(listener) => {
            let addr = listener
                .local_addr()
                .context("listening socket has no address")?;
            let state = mandate_api::AppState::new(
                engine.clone(),
                app::governance()?,
                mandate_api::ApiConfig {
                    rate_per_second: args.rate_limit,
                    rate_burst: args.rate_burst,
                    request_timeout: Duration::from_millis(args.request_timeout_ms),
                    header_timeout: Duration::from_millis(args.header_timeout_ms),
                    idle_timeout: Duration::from_millis(args.idle_timeout_ms),
                    max_connections: count(args.max_connections),
                    max_streams: count(args.max_streams),
                    max_streams_per_token: count(args.max_streams_per_token),
                    max_inflight_submissions: count(args.max_inflight_submissions),
                },
            );
            eprintln!("mandate API listening on http://{addr} (docs: http://{addr}/docs)");
            Some(tokio::spawn(mandate_api::serve(listener, state, async {
                let _ = http_stopped.await;
            })))
        }
        None => None,
    };

    eprintln!(
        "mandate serving {} as worker {worker_id}; Ctrl-C to stop",
        db.shown()
    );
    let received = tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    };
    eprintln!(
        "{received}: stopping the API and worker {worker_id}, giving its leases back (signal again to exit at once)"
    );
    let _ = stop_http.send(());
    if let Some(http) = http {
        tokio::select! {
            r = http => match r {
                Ok(Err(e)) => eprintln!("the HTTP server failed: {e}"),
                Err(e) => eprintln!("the HTTP server panicked: {e}"),
                Ok(Ok(())) => {}
            },
            _ = interrupt.recv() => return Ok(ExitCode::from(130)),
            _ = terminate.recv() => return Ok(ExitCode::from(143)),
        }
    }
    tokio::select! {
        _ = worker.shutdown() => {}
        _ = interrupt.recv() => return Ok(ExitCode::from(130)),
        _ = terminate.recv() => return Ok(ExitCode::from(143)),
    }
    eprintln!("worker {worker_id} stopped");
    Ok(ExitCode::SUCCESS)
}

/// A flag's count as a `usize` (the flags are range-checked far below it).
fn count(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}
