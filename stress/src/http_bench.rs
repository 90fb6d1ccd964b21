//! `mandate-stress http-bench`: the HTTP API under concurrent load. Serves the
//! API in this process on a fresh database (with a worker, as `mandate serve`
//! does) and drives it over loopback with a pool of concurrent clients:
//!
//! 1. submit N two-step sagas (`POST /v1/tasks`): request rate, p50/p99 latency;
//! 2. wait until all N are final: tasks completed per second end to end;
//! 3. read each task (`GET /v1/tasks/{id}`): request rate, p50/p99 latency.
//!
//! Client and server share the machine's cores, so these are lower bounds
//! for a server with cores of its own. Measures only; asserts nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use mandate_activities::{ToolRegistry, World};
use mandate_api::{ApiConfig, AppState};
use mandate_engine::{Engine, WorkerConfig};
use serde_json::json;

use crate::freshdb::FreshDb;
use crate::stats::{median, percentile};

#[derive(clap::Args, Debug)]
pub struct HttpBenchArgs {
    /// `sqlite`, or a PostgreSQL URL whose server gets a fresh database
    #[arg(long, default_value = "sqlite")]
    pub db: String,
    /// Tasks submitted per round
    #[arg(long, default_value_t = 1_000)]
    pub tasks: usize,
    /// Requests in flight at once
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Rounds, each on a fresh database; the report gives medians
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Print one JSON object
    #[arg(long)]
    pub json: bool,
}

struct Round {
    submit_rps: f64,
    submit_p50_ms: f64,
    submit_p99_ms: f64,
    tasks_per_s: f64,
    read_rps: f64,
    read_p50_ms: f64,
    read_p99_ms: f64,
}

/// The API served by this process on a free loopback port: its base URL, the
/// sender that stops it, and the server's task.
pub async fn serve_in_process(
    state: AppState,
) -> anyhow::Result<(
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(mandate_api::serve(listener, state, async {
        let _ = stopped.await;
    }));
    Ok((base, stop, server))
}

/// Runs `requests` with `concurrency` in flight; returns (wall, sorted latencies in ms).
async fn drive<F, Fut>(
    n: usize,
    concurrency: usize,
    make: F,
) -> anyhow::Result<(Duration, Vec<f64>)>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let started = Instant::now();
    let mut lat: Vec<f64> = futures::stream::iter(0..n)
        .map(|i| {
            let fut = make(i);
            async move {
                let t0 = Instant::now();
                fut.await.map(|_| t0.elapsed().as_secs_f64() * 1e3)
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    lat.sort_by(|a, b| a.total_cmp(b));
    Ok((started.elapsed(), lat))
}

async fn round(args: &HttpBenchArgs) -> anyhow::Result<Round> {
    let db = FreshDb::create(&args.db).await?;
    let store = mandate_engine::store::open(&db.url).await?;
    let world = World::connect(&db.url).await?;
    let mut tools = ToolRegistry::new();
    mandate_activities::register_demo_tools(&mut tools, world);
    let engine = Engine::new(
        store,
        mandate_workflows::registry(),
        tools,
        std::sync::Arc::new(mandate_activities::Governance::shipped()),
    );
    let worker = engine.start_worker(WorkerConfig::default());
    let state = AppState::new(
        engine.clone(),
        Arc::new(mandate_activities::Governance::shipped()),
        ApiConfig {
            rate_per_second: 1_000_000,
            rate_burst: 1_000_000,
            // The bench measures the server, not its admission limits.
            max_inflight_submissions: args.concurrency.max(256) * 2,
            max_connections: args.concurrency.max(1024) * 2,
            ..Default::default()
        },
    );
    let (_, token) =
        mandate_api::create_token(engine.store().as_ref(), "agent", "bench", 0).await?;
    let (base, stop, server) = serve_in_process(state).await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let saga = json!({"workflow": "saga", "input": {"stages": [
        [{"tool": "test.echo", "input": {"n": 1}}], [{"tool": "test.echo", "input": {"n": 2}}]]}});

    let ids = Arc::new(std::sync::Mutex::new(Vec::with_capacity(args.tasks)));
    let t_all = Instant::now();
    let (submit_wall, submit_lat) = drive(args.tasks, args.concurrency, |_| {
        let req = http
            .post(format!("{base}/v1/tasks"))
            .bearer_auth(&token)
            .json(&saga);
        let ids = ids.clone();
        async move {
            let r = req.send().await?;
            anyhow::ensure!(r.status().as_u16() == 201, "submit answered {}", r.status());
            let v: serde_json::Value = r.json().await?;
            ids.lock()
                .expect("ids")
                .push(v["id"].as_str().context("no id")?.to_string());
            Ok(())
        }
    })
    .await?;
    let ids: Vec<String> = ids.lock().expect("ids").clone();
    for id in &ids {
        engine
            .wait_until_final(id, Duration::from_secs(600))
            .await
            .with_context(|| format!("task {id}"))?;
    }
    let all_wall = t_all.elapsed();
    let (read_wall, read_lat) = drive(ids.len(), args.concurrency, |i| {
        let req = http
            .get(format!("{base}/v1/tasks/{}", ids[i]))
            .bearer_auth(&token);
        async move {
            let r = req.send().await?;
            anyhow::ensure!(r.status().is_success(), "read answered {}", r.status());
            r.bytes().await?;
            Ok(())
        }
    })
    .await?;
    let _ = stop.send(());
    let _ = server.await;
    worker.shutdown().await;
    drop(engine);
    db.drop_now().await;
    Ok(Round {
        submit_rps: args.tasks as f64 / submit_wall.as_secs_f64(),
        submit_p50_ms: percentile(&submit_lat, 50.0),
        submit_p99_ms: percentile(&submit_lat, 99.0),
        tasks_per_s: args.tasks as f64 / all_wall.as_secs_f64(),
        read_rps: ids.len() as f64 / read_wall.as_secs_f64(),
        read_p50_ms: percentile(&read_lat, 50.0),
        read_p99_ms: percentile(&read_lat, 99.0),
    })
}

pub async fn run(args: HttpBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.tasks > 0 && args.concurrency > 0 && args.rounds > 0,
        "--tasks, --concurrency and --rounds must be positive"
    );
    let mut rounds = Vec::new();
    for r in 0..args.rounds {
        eprintln!(
            "round {}/{}: {} tasks, {} in flight, {}",
            r + 1,
            args.rounds,
            args.tasks,
            args.concurrency,
            args.db
        );
        rounds.push(round(&args).await?);
    }
    let m = |f: fn(&Round) -> f64| median(&rounds.iter().map(f).collect::<Vec<_>>());
    let report = json!({
        "db": if args.db.starts_with("postgres") { "postgres" } else { "sqlite" },
        "tasks": args.tasks, "concurrency": args.concurrency, "rounds": args.rounds,
        "submit_requests_per_s": m(|r| r.submit_rps),
        "submit_p50_ms": m(|r| r.submit_p50_ms),
        "submit_p99_ms": m(|r| r.submit_p99_ms),
        "tasks_completed_per_s": m(|r| r.tasks_per_s),
        "read_requests_per_s": m(|r| r.read_rps),
        "read_p50_ms": m(|r| r.read_p50_ms),
        "read_p99_ms": m(|r| r.read_p99_ms),
    });
    if args.json {
        println!("{report}");
        return Ok(());
    }
    println!(
        "HTTP API, {} ({} tasks, {} in flight; medians of {} rounds)",
        report["db"], args.tasks, args.concurrency, args.rounds
    );
    println!(
        "  POST /v1/tasks      {:>8.0} req/s   p50 {:>7.2} ms   p99 {:>7.2} ms",
        m(|r| r.submit_rps),
        m(|r| r.submit_p50_ms),
        m(|r| r.submit_p99_ms)
    );
    println!(
        "  end to end          {:>8.0} tasks/s (submitted and completed, 2 steps each)",
        m(|r| r.tasks_per_s)
    );
    println!(
        "  GET /v1/tasks/{{id}}  {:>8.0} req/s   p50 {:>7.2} ms   p99 {:>7.2} ms",
        m(|r| r.read_rps),
        m(|r| r.read_p50_ms),
        m(|r| r.read_p99_ms)
    );
    Ok(())
}
