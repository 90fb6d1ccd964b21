//! `mandate-stress routing-bench`: what routing costs and how fast a
//! notification reaches its owner.
//!
//! Runs the same load twice on fresh SQLite databases: N one-step plans
//! (a monitored `kv.put`) without routing, then with routing (the step's
//! owner notified through a signed webhook to a receiver on loopback, the
//! follower and delivery worker running). Reports task throughput both
//! ways, the notifications delivered per second, and the latency from the
//! routing decision being recorded (`OwnersNotified`, in the decision that
//! schedules the step) to the receiver holding the request, p50/p99.
//! Measures only.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mandate_activities::{Governance, ToolRegistry, World};
use mandate_engine::core::gateway::Gateway;
use mandate_engine::core::routing::Routed;
use mandate_engine::{Engine, EventPayload, SubmitOptions, WorkerConfig};
use mandate_routing::outbox::Outbox;
use mandate_routing::wire::{EngineRouter, Follower, FollowerParts, LinkSettings};
use mandate_routing::worker::{DeliveryWorker, system_clock};
use mandate_routing::{ConfigCell, RoutingConfig};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(clap::Args, Debug)]
pub struct RoutingBenchArgs {
    /// Tasks per run
    #[arg(long, default_value_t = 2_000)]
    pub tasks: usize,
    /// Submissions in flight at once
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A minimal HTTP/1.1 receiver: answers 200 to every request and records
/// the notification id and the arrival time.
async fn receiver() -> anyhow::Result<(String, Arc<Mutex<Vec<(String, i64)>>>)> {
    let got: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let g = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let g = g.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let Ok(n) = sock.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    // One request per read cycle: headers, then the body by length.
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if buf.len() < end + 4 + len {
                            break;
                        }
                        let id = head
                            .lines()
                            .find_map(|l| l.strip_prefix("x-mandate-notification-id:"))
                            .map(|v| v.trim().to_string())
                            .unwrap_or_default();
                        g.lock().unwrap().push((id, now_ms()));
                        buf.drain(..end + 4 + len);
                        if sock
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            });
        }
    });
    Ok((format!("http://{addr}"), got))
}

struct RunResult {
    elapsed: Duration,
    latencies_ms: Vec<i64>,
    delivered: usize,
    delivery_elapsed: Duration,
}

async fn run_once(args: &RoutingBenchArgs, routing: bool) -> anyhow::Result<RunResult> {
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}/bench.db", dir.path().display());
    let store = mandate_engine::store::open(&url).await?;
    let world = World::connect(&url).await?;
    let governance = Arc::new(Governance::shipped());
    let mut tools = ToolRegistry::new();
    mandate_activities::register_demo_tools(&mut tools, world.clone());
    mandate_activities::register_governance_tools(&mut tools, governance.clone(), world);
    let (base, got) = receiver().await?;
    let config = Arc::new(ConfigCell::fixed(
        RoutingConfig::from_yaml(
            "bench owners.yaml",
            &format!(
                "version: 1
sinks: [{{id: hook, kind: webhook, url: '{base}/hook', secret: 'bench-secret-0123456789'}}]
channels: [{{id: team-platform, contacts: [{{sink: hook}}]}}]
ownership: [{{tool: 'kv.*', owners: [team-platform]}}]
routes: {{notify: [owners], group_wait_seconds: 0}}
"
            ),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?,
    ));
    let gateway: Arc<dyn Gateway> = if routing {
        Arc::new(Routed {
            gateway: governance.clone(),
            router: Arc::new(EngineRouter {
                config: config.clone(),
                scope_field: None,
            }),
        })
    } else {
        governance.clone()
    };
    let engine = Engine::new(
        store,
        mandate_workflows::registry_with(governance),
        tools,
        gateway,
    );
    let worker = engine.start_worker(WorkerConfig::default());
    let mut side = None;
    if routing {
        let outbox = Arc::new(
            Outbox::open(&url)
                .await?
                .with_writer(engine.store().clone()),
        );
        let delivery = DeliveryWorker::spawn(
            outbox.clone(),
            config.clone(),
            mandate_routing::worker::WorkerConfig::default(),
            system_clock(),
        );
        let follower = Follower::spawn(FollowerParts {
            engine: engine.clone(),
            outbox,
            config,
            links: LinkSettings {
                secret: b"bench-link-secret-0123456789".to_vec(),
                base_url: "http://127.0.0.1".into(),
                ttl_ms: 3_600_000,
            },
            clock: system_clock(),
            wake: delivery.wake.clone(),
            poll_interval: Duration::from_millis(50),
        });
        side = Some((follower, delivery));
    }
    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let mut handles = Vec::with_capacity(args.tasks);
    for i in 0..args.tasks {
        let permit = sem.clone().acquire_owned().await?;
        let engine = engine.clone();
        handles.push(tokio::spawn(async move {
            let plan = json!({"agent": "agent-deployer-7", "reason": "bench", "steps": [
                {"id": "mark", "tool": "kv.put", "input": {"key": format!("k{i}"), "value": i}}]});
            let id = engine
                .submit(
                    "plan",
                    plan,
                    SubmitOptions {
                        agent: Some("agent-deployer-7".into()),
                        ..Default::default()
                    },
                )
                .await?
                .task_id;
            engine
                .wait_until_final(&id, Duration::from_secs(120))
                .await?;
            drop(permit);
            anyhow::Ok(id)
        }));
    }
    let mut ids = Vec::with_capacity(args.tasks);
    for h in handles {
        ids.push(h.await??);
    }
    let elapsed = started.elapsed();
    let mut latencies_ms = Vec::new();
    let mut delivered = 0;
    let mut delivery_elapsed = elapsed;
    if routing {
        // Wait (bounded) for every notification to arrive.
        let deadline = Instant::now() + Duration::from_secs(120);
        while got.lock().unwrap().len() < args.tasks && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        delivery_elapsed = started.elapsed();
        let arrivals: std::collections::HashMap<String, i64> =
            got.lock().unwrap().iter().cloned().collect();
        delivered = arrivals.len();
        for id in &ids {
            for e in engine.history(id).await? {
                if let EventPayload::OwnersNotified { about_seq, .. } = &e.payload {
                    let key = mandate_engine::core::routing::item_key(
                        id,
                        *about_seq,
                        "team-platform",
                        "hook",
                    );
                    let nid = mandate_routing::outbox::notification_id(&key);
                    if let Some(at) = arrivals.get(&nid) {
                        latencies_ms.push(at - e.recorded_at_ms);
                    }
                }
            }
        }
    }
    if let Some((f, d)) = side {
        f.shutdown().await;
        d.shutdown().await;
    }
    worker.shutdown().await;
    Ok(RunResult {
        elapsed,
        latencies_ms,
        delivered,
        delivery_elapsed,
    })
}

fn pct(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub async fn run(args: RoutingBenchArgs) -> anyhow::Result<()> {
    let plain = run_once(&args, false).await?;
    let routed = run_once(&args, true).await?;
    let rate = |n: usize, d: Duration| n as f64 / d.as_secs_f64();
    let mut lat = routed.latencies_ms.clone();
    lat.sort_unstable();
    let plain_rate = rate(args.tasks, plain.elapsed);
    let routed_rate = rate(args.tasks, routed.elapsed);
    println!(
        "routing-bench: {} one-step plans (monitored kv.put), {} in flight, SQLite",
        args.tasks, args.concurrency
    );
    println!("  without routing: {plain_rate:.0} tasks/s");
    println!(
        "  with routing:    {routed_rate:.0} tasks/s ({:+.1}%)",
        (routed_rate / plain_rate - 1.0) * 100.0
    );
    println!(
        "  notifications:   {} delivered, {:.0}/s (submission start → last delivery)",
        routed.delivered,
        rate(routed.delivered, routed.delivery_elapsed)
    );
    println!(
        "  decision recorded → delivered: p50 {} ms, p99 {} ms (n={})",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat.len()
    );
    Ok(())
}
