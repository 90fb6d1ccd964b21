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

/// The evidence follower's settings; the signing key from `--signing-key`
/// (or `MANDATE_SIGNING_KEY_FILE`), or its text in `MANDATE_SIGNING_KEY`.
fn evidence_config(args: &ServeArgs) -> anyhow::Result<mandate_engine::evidence::FollowerConfig> {
    let key = match (&args.signing_key, std::env::var("MANDATE_SIGNING_KEY")) {
        (Some(path), _) => Some(crate::commands::keys::signer_key(path)?),
        (None, Ok(text)) if !text.trim().is_empty() => Some(
            mandate_engine::evidence::SignerKey::parse(&text)
                .map_err(|e| refused(format!("MANDATE_SIGNING_KEY: {e}")))?,
        ),
        _ => None,
    };
    if let Some(dir) = &args.checkpoint_dir {
        std::fs::create_dir_all(dir).map_err(|e| {
            refused(format!(
                "cannot create the checkpoint directory {}: {e}",
                dir.display()
            ))
        })?;
    }
    if let Some(k) = &key {
        eprintln!("signing checkpoints as {}", k.verifier());
    }
    Ok(mandate_engine::evidence::FollowerConfig {
        key,
        every_events: args.checkpoint_every,
        every: std::time::Duration::from_secs(args.checkpoint_interval_s),
        dir: args.checkpoint_dir.clone(),
        ..Default::default()
    })
}

pub async fn run(db: &Database, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let evidence = evidence_config(&args)?;
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
    let follower = mandate_engine::evidence::Follower::spawn(&engine, evidence);
    let worker_id = worker.id().to_string();
    let (routing_follower, delivery, responder) =
        start_routing(db, &engine, &args.listen, args.delivery_lease_ms).await?;

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
            )
            .with_routing(mandate_api::RoutingApi {
                responder,
                slack_signing_secret: std::env::var("MANDATE_SLACK_SIGNING_SECRET")
                    .ok()
                    .map(String::into_bytes),
            });
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
    follower.shutdown().await;
    routing_follower.shutdown().await;
    delivery.shutdown().await;
    eprintln!("worker {worker_id} stopped");
    Ok(ExitCode::SUCCESS)
}

/// Routing's side of `serve`: the follower that enqueues the deliveries of
/// recorded `OwnersNotified` events (and fires escalation steps), and the
/// delivery worker. Links are signed with `MANDATE_LINK_SECRET` (else a
/// key drawn at start: links then stop working at restart) and point at
/// `MANDATE_PUBLIC_URL` (else `http://<listen>`).
async fn start_routing(
    db: &Database,
    engine: &mandate_engine::Engine,
    listen: &str,
    delivery_lease_ms: i64,
) -> anyhow::Result<(
    mandate_routing::wire::Follower,
    mandate_routing::worker::DeliveryWorker,
    mandate_routing::wire::Responder,
)> {
    let config = app::routing_config()?;
    let secret = match std::env::var("MANDATE_LINK_SECRET") {
        Ok(s) if s.len() >= 16 => s.into_bytes(),
        Ok(_) => return Err(refused("MANDATE_LINK_SECRET must be at least 16 bytes")),
        Err(_) => random_secret(),
    };
    let base_url =
        std::env::var("MANDATE_PUBLIC_URL").unwrap_or_else(|_| format!("http://{listen}"));
    let links = mandate_routing::wire::LinkSettings {
        secret,
        base_url,
        ttl_ms: 24 * 3_600_000,
    };
    start_routing_with(db, engine, config, links, delivery_lease_ms).await
}

/// A secret drawn at start (links signed with it stop working at restart).
pub(crate) fn random_secret() -> Vec<u8> {
    format!(
        "{}{}",
        uuid::Uuid::now_v7().simple(),
        uuid::Uuid::new_v4().simple()
    )
    .into_bytes()
}

/// Routing's follower, delivery worker and responder over `config`, with
/// response links made as `links` says.
pub(crate) async fn start_routing_with(
    db: &Database,
    engine: &mandate_engine::Engine,
    config: std::sync::Arc<mandate_routing::ConfigCell>,
    links: mandate_routing::wire::LinkSettings,
    delivery_lease_ms: i64,
) -> anyhow::Result<(
    mandate_routing::wire::Follower,
    mandate_routing::worker::DeliveryWorker,
    mandate_routing::wire::Responder,
)> {
    use std::sync::Arc;
    let outbox = Arc::new(
        mandate_routing::outbox::Outbox::open(&db.url)
            .await
            .context("cannot open the notifications outbox")?
            // Its writes share the engine's group-commit transactions.
            .with_writer(engine.store().clone()),
    );
    let clock = mandate_routing::worker::system_clock();
    let delivery = mandate_routing::worker::DeliveryWorker::spawn(
        outbox.clone(),
        config.clone(),
        mandate_routing::worker::WorkerConfig {
            lease_ms: delivery_lease_ms,
            ..Default::default()
        },
        clock.clone(),
    );
    let responder = mandate_routing::wire::Responder {
        engine: engine.clone(),
        outbox: outbox.clone(),
        links: links.clone(),
        config: config.clone(),
        clock: clock.clone(),
    };
    let follower = mandate_routing::wire::Follower::spawn(mandate_routing::wire::FollowerParts {
        engine: engine.clone(),
        outbox,
        config,
        links,
        clock,
        wake: delivery.wake.clone(),
        poll_interval: Duration::from_secs(1),
    });
    Ok((follower, delivery, responder))
}

/// A flag's count as a `usize` (the flags are range-checked far below it).
fn count(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}
