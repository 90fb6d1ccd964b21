//! `mandate-stress routing-bench`: what routing costs and how fast a
//! notification reaches its owner.
//!
//! Runs the same load on fresh databases (SQLite, or PostgreSQL with
//! `--db`), `--runs` times each way, alternating: N one-step plans (a
//! monitored `kv.put`) without routing, then with routing (the step's owner
//! notified through a signed webhook to a receiver on loopback, the
//! follower and delivery worker running). Reports the median task
//! throughput both ways and the median of the runs' ratios, and the latency
//! from the routing decision being recorded (`OwnersNotified`, in the
//! decision that schedules the step) to the receiver holding the request,
//! p50/p99. Then the fan-out: `--fanout-tasks` plans whose step is owned by
//! `--fanout-owners` teams, each with its own webhook, so every step
//! notifies that many people; the rate is the notifications delivered over
//! the time from the first routing decision recorded to the last arrival.
//! With `--decisions-only` the routing decisions are recorded but no
//! follower or delivery worker runs: what deciding and recording costs on
//! its own. Measures only.

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

use crate::stats::{median, process_cpu_s};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(clap::Args, Debug)]
pub struct RoutingBenchArgs {
    /// Tasks per run
    #[arg(long, default_value_t = 2_000)]
    pub tasks: usize,
    /// Submissions in flight at once
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Runs each way (alternating; medians reported)
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// `sqlite`, or a PostgreSQL URL whose server gets a fresh database per run
    #[arg(long, default_value = "sqlite")]
    pub db: String,
    /// Tasks in the fan-out run (0 skips it)
    #[arg(long, default_value_t = 500)]
    pub fanout_tasks: usize,
    /// Owning teams per step in the fan-out run (each one notification)
    #[arg(long, default_value_t = 8)]
    pub fanout_owners: usize,
    /// Record the routing decisions but run no follower and no delivery
    /// worker: what the decision itself costs (nothing is delivered)
    #[arg(long)]
    pub decisions_only: bool,
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
    /// This process's CPU time (user + system) from the first submission
    /// until every task is final and every notification arrived, per task,
    /// in ms (the receiver runs in this process too).
    cpu_ms_per_task: f64,
    latencies_ms: Vec<i64>,
    delivered: usize,
    /// From the first routing decision recorded to the last arrival.
    delivery_span: Duration,
}

/// The routing configuration: `owners` teams own `kv.*`, each reached
/// through its own webhook sink on the receiver.
fn config_yaml(base: &str, owners: usize) -> String {
    let sinks: Vec<String> = (0..owners)
        .map(|i| format!("{{id: hook{i}, kind: webhook, url: '{base}/hook{i}', secret: 'bench-secret-0123456789'}}"))
        .collect();
    let channels: Vec<String> = (0..owners)
        .map(|i| format!("{{id: team-{i}, contacts: [{{sink: hook{i}}}]}}"))
        .collect();
    let teams: Vec<String> = (0..owners).map(|i| format!("team-{i}")).collect();
    format!(
        "version: 1
sinks: [{}]
channels: [{}]
ownership: [{{tool: 'kv.*', owners: [{}]}}]
routes: {{notify: [owners], group_wait_seconds: 0}}
",
        sinks.join(", "),
        channels.join(", "),
        teams.join(", ")
    )
}

/// One run on a fresh database: `tasks` plans, routed to `owners` teams
/// (0: routing off).
async fn run_once(
    args: &RoutingBenchArgs,
    tasks: usize,
    owners: usize,
) -> anyhow::Result<RunResult> {
    let routing = owners > 0;
    let fresh = crate::freshdb::FreshDb::create(&args.db).await?;
    let url = fresh.url.clone();
    let result = run_on(args, &url, tasks, owners, routing).await;
    fresh.drop_now().await;
    result
}

async fn run_on(
    args: &RoutingBenchArgs,
    url: &str,
    tasks: usize,
    owners: usize,
    routing: bool,
) -> anyhow::Result<RunResult> {
    let url = url.to_string();
    let store = mandate_engine::store::open(&url).await?;
    let world = World::connect(&url).await?;
    let governance = Arc::new(Governance::shipped());
    let mut tools = ToolRegistry::new();
    mandate_activities::register_demo_tools(&mut tools, world.clone());
    mandate_activities::register_governance_tools(&mut tools, governance.clone(), world);
    let (base, got) = receiver().await?;
    let config = Arc::new(ConfigCell::fixed(
        RoutingConfig::from_yaml("bench owners.yaml", &config_yaml(&base, owners.max(1)))
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
    let deliver = routing && !args.decisions_only;
    if deliver {
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
    let finals = Arc::new(crate::bench::FinalWaits::start(&engine));
    let started = Instant::now();
    let cpu0 = process_cpu_s();
    let sem = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let mut handles = Vec::with_capacity(tasks);
    for i in 0..tasks {
        let permit = sem.clone().acquire_owned().await?;
        let engine = engine.clone();
        let finals = finals.clone();
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
            finals.wait(&engine, &id, Duration::from_secs(120)).await?;
            drop(permit);
            anyhow::Ok(id)
        }));
    }
    let mut ids = Vec::with_capacity(tasks);
    for h in handles {
        ids.push(h.await??);
    }
    let elapsed = started.elapsed();
    let mut latencies_ms = Vec::new();
    let mut delivered = 0;
    let mut delivery_span = elapsed;
    if deliver {
        // Wait (bounded) for every notification to arrive.
        let want = tasks * owners;
        let deadline = Instant::now() + Duration::from_secs(120);
        while got.lock().unwrap().len() < want && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // With routing: until every notification arrived too.
    let cpu1 = process_cpu_s();
    let cpu_ms_per_task = ((cpu1.0 + cpu1.1) - (cpu0.0 + cpu0.1)) * 1e3 / tasks as f64;
    if routing {
        let arrivals: std::collections::HashMap<String, i64> =
            got.lock().unwrap().iter().cloned().collect();
        delivered = arrivals.len();
        let mut first_recorded = i64::MAX;
        for id in &ids {
            for e in engine.history(id).await? {
                if let EventPayload::OwnersNotified { about_seq, .. } = &e.payload {
                    first_recorded = first_recorded.min(e.recorded_at_ms);
                    for team in 0..owners {
                        let key = mandate_engine::core::routing::item_key(
                            id,
                            *about_seq,
                            &format!("team-{team}"),
                            &format!("hook{team}"),
                        );
                        let nid = mandate_routing::outbox::notification_id(&key);
                        if let Some(at) = arrivals.get(&nid) {
                            latencies_ms.push(at - e.recorded_at_ms);
                        }
                    }
                }
            }
        }
        let last_arrival = arrivals.values().copied().max().unwrap_or(first_recorded);
        delivery_span = Duration::from_millis((last_arrival - first_recorded).max(1) as u64);
    }
    if let Some((f, d)) = side {
        f.shutdown().await;
        d.shutdown().await;
    }
    worker.shutdown().await;
    Ok(RunResult {
        elapsed,
        cpu_ms_per_task,
        latencies_ms,
        delivered,
        delivery_span,
    })
}

fn pct(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub async fn run(args: RoutingBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.runs >= 1, "--runs must be at least 1");
    anyhow::ensure!(
        (1..=mandate_routing::limits::MAX_RECIPIENTS).contains(&args.fanout_owners),
        "--fanout-owners must be 1..={}",
        mandate_routing::limits::MAX_RECIPIENTS
    );
    let rate = |n: usize, d: Duration| n as f64 / d.as_secs_f64();
    let store = if args.db.starts_with("postgres") {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    println!(
        "routing-bench: {} one-step plans (monitored kv.put), {} in flight, {store}, {} runs each way",
        args.tasks, args.concurrency, args.runs
    );
    let (mut plain, mut routed, mut ratios, mut lat) = (vec![], vec![], vec![], vec![]);
    let (mut cpu_plain, mut cpu_routed) = (vec![], vec![]);
    for run in 1..=args.runs {
        let pr = run_once(&args, args.tasks, 0).await?;
        let p = rate(args.tasks, pr.elapsed);
        let r = run_once(&args, args.tasks, 1).await?;
        let rr = rate(args.tasks, r.elapsed);
        println!(
            "  run {run}: without {p:.0} tasks/s ({:.2} ms CPU/task), with {rr:.0} tasks/s ({:.2} ms CPU/task) ({:+.1}%), {} delivered",
            pr.cpu_ms_per_task,
            r.cpu_ms_per_task,
            (rr / p - 1.0) * 100.0,
            r.delivered
        );
        plain.push(p);
        routed.push(rr);
        ratios.push(rr / p - 1.0);
        cpu_plain.push(pr.cpu_ms_per_task);
        cpu_routed.push(r.cpu_ms_per_task);
        lat.extend(r.latencies_ms);
    }
    lat.sort_unstable();
    println!("  without routing: {:.0} tasks/s (median)", median(&plain));
    println!(
        "  with routing:    {:.0} tasks/s (median); cost: median of the runs' ratios {:+.1}%",
        median(&routed),
        median(&ratios) * 100.0
    );
    println!(
        "  CPU per task (this process, submission → final): {:.2} ms without, {:.2} ms with routing (median)",
        median(&cpu_plain),
        median(&cpu_routed)
    );
    if args.decisions_only {
        println!(
            "  (--decisions-only: routing decisions recorded, nothing delivered; no fan-out run)"
        );
        return Ok(());
    }
    println!(
        "  decision recorded → delivered: p50 {} ms, p99 {} ms (n={})",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat.len()
    );
    if args.fanout_tasks > 0 {
        let f = run_once(&args, args.fanout_tasks, args.fanout_owners).await?;
        let mut flat = f.latencies_ms.clone();
        flat.sort_unstable();
        println!(
            "  fan-out: {} plans × {} owners: {} of {} notifications delivered, {:.0}/s (first decision recorded → last arrival), p50 {} ms, p99 {} ms",
            args.fanout_tasks,
            args.fanout_owners,
            f.delivered,
            args.fanout_tasks * args.fanout_owners,
            rate(f.delivered, f.delivery_span),
            pct(&flat, 0.5),
            pct(&flat, 0.99),
        );
    }
    Ok(())
}
