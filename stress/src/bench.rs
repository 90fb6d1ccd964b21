//! The benchmark. See the crate docs for what it measures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::future::join_all;
use mandate_activities::{ToolRegistry, World};
use mandate_engine::core::decide::projection;
use mandate_engine::core::event::{NewEvent, seal};
use mandate_engine::store::{AppendOutcome, AppendRequest, LeaseUpdate};
use mandate_engine::{Engine, EventPayload, TaskState, TaskStatus, WorkerConfig};
use serde_json::{Value, json};

use crate::freshdb::FreshDb;

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// `sqlite`, or a PostgreSQL URL (a fresh database is created on its server).
    #[arg(long, default_value = "sqlite")]
    pub db: String,
    /// Tasks in the throughput run.
    #[arg(long, default_value_t = 2_000)]
    pub tasks: usize,
    /// Tasks run one at a time for the latency figures.
    #[arg(long, default_value_t = 200)]
    pub latency_tasks: usize,
    /// Appends in the raw durable-append measurement.
    #[arg(long, default_value_t = 2_000)]
    pub appends: usize,
    /// Write the figures as JSON to this file too.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// A five-step task: five sequential `test.echo` steps.
pub fn five_step_input(n: usize) -> Value {
    let stages: Vec<Value> = (0..5)
        .map(|i| json!([{"tool": "test.echo", "input": {"task": n, "step": i}}]))
        .collect();
    json!({ "stages": stages })
}

async fn engine_on(url: &str) -> anyhow::Result<Engine> {
    let store = mandate_engine::store::open(url).await?;
    let world = World::connect(url).await?;
    let mut tools = ToolRegistry::new();
    mandate_activities::register_demo_tools(&mut tools, world);
    Ok(Engine::new(store, mandate_workflows::registry(), tools))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Waits until every id in `ids` is final, counting final updates.
async fn wait_all_final(engine: &Engine, ids: &[String], timeout: Duration) -> anyhow::Result<()> {
    let mut pending: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
    let mut updates = engine.subscribe();
    let deadline = tokio::time::Instant::now() + timeout;
    while !pending.is_empty() {
        tokio::select! {
            u = updates.recv() => match u {
                Ok(u) if u.status.is_final() => { pending.remove(u.task_id.as_str()); }
                Ok(_) => {}
                Err(_) => {
                    // Lagged: re-read the stragglers from the store.
                    let mut still = std::collections::HashSet::new();
                    for id in &pending {
                        if !engine.task(id).await?.status.is_final() { still.insert(*id); }
                    }
                    pending = still;
                }
            },
            _ = tokio::time::sleep_until(deadline) => anyhow::bail!("{} tasks not final after {timeout:?}", pending.len()),
        }
    }
    Ok(())
}

pub struct Figures {
    pub store: &'static str,
    pub tasks_per_s: f64,
    pub steps_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub raw_appends_per_s: f64,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let fresh = FreshDb::create(&args.db).await?;
    let result = measure(&args, &fresh.url).await;
    fresh.drop_now().await;
    let f = result?;
    let ratio = f.tasks_per_s / f.raw_appends_per_s;
    println!("store                         {}", f.store);
    println!(
        "5-step tasks/s (throughput)   {:.0}  ({} tasks, {:.0} steps/s)",
        f.tasks_per_s, args.tasks, f.steps_per_s
    );
    println!(
        "one 5-step task p50 / p99     {:.2} ms / {:.2} ms  ({} tasks, one at a time)",
        f.p50_ms, f.p99_ms, args.latency_tasks
    );
    println!(
        "raw durable appends/s         {:.0}  (one event per commit, each awaited)",
        f.raw_appends_per_s
    );
    println!("tasks/s ÷ raw append rate     {ratio:.2}");
    if let Some(path) = &args.json {
        let doc = json!({
            "store": f.store, "tasks": args.tasks, "tasks_per_s": f.tasks_per_s, "steps_per_s": f.steps_per_s,
            "latency_tasks": args.latency_tasks, "p50_ms": f.p50_ms, "p99_ms": f.p99_ms,
            "raw_appends_per_s": f.raw_appends_per_s, "ratio": ratio,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

async fn measure(args: &BenchArgs, url: &str) -> anyhow::Result<Figures> {
    let engine = engine_on(url).await?;
    let store_name = engine.store().backend().as_str();

    // The ceiling: one event per transaction, each awaited before the next.
    let raw_appends_per_s = raw_append_rate(&engine, args.appends).await?;

    let worker = engine.start_worker(WorkerConfig {
        eager_start: std::env::var("MANDATE_BENCH_NO_EAGER").is_err(),
        ..WorkerConfig::default()
    });
    // Warm up (connections, caches).
    let warm: Vec<String> =
        join_all((0..50).map(|i| engine.submit("saga", five_step_input(i), Default::default())))
            .await
            .into_iter()
            .map(|r| r.map(|s| s.task_id))
            .collect::<Result<_, _>>()?;
    wait_all_final(&engine, &warm, Duration::from_secs(60)).await?;

    // Latency: one task at a time.
    let mut lat = Vec::with_capacity(args.latency_tasks);
    for i in 0..args.latency_tasks {
        let t0 = Instant::now();
        let id = engine
            .submit("saga", five_step_input(i), Default::default())
            .await?
            .task_id;
        wait_all_final(&engine, std::slice::from_ref(&id), Duration::from_secs(30)).await?;
        lat.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());

    // Throughput: all at once.
    let t0 = Instant::now();
    let ids: Vec<String> = join_all(
        (0..args.tasks).map(|i| engine.submit("saga", five_step_input(i), Default::default())),
    )
    .await
    .into_iter()
    .map(|r| r.map(|s| s.task_id))
    .collect::<Result<_, _>>()?;
    wait_all_final(&engine, &ids, Duration::from_secs(600)).await?;
    let elapsed = t0.elapsed().as_secs_f64();
    worker.shutdown().await;
    for id in ids.iter().step_by((ids.len() / 20).max(1)) {
        anyhow::ensure!(
            engine.task(id).await?.status == TaskStatus::Completed,
            "task {id} did not complete"
        );
    }
    Ok(Figures {
        store: store_name,
        tasks_per_s: args.tasks as f64 / elapsed,
        steps_per_s: (args.tasks * 5) as f64 / elapsed,
        p50_ms: percentile(&lat, 50.0),
        p99_ms: percentile(&lat, 99.0),
        raw_appends_per_s,
    })
}

/// Appends `n` single-event transactions to one task, each awaited.
async fn raw_append_rate(engine: &Engine, n: usize) -> anyhow::Result<f64> {
    let id = engine
        .submit("saga", json!({"stages": []}), Default::default())
        .await?
        .task_id;
    let history = engine.history(&id).await?;
    let mut state = TaskState::fold(&history);
    let store = engine.store().clone();
    let t0 = Instant::now();
    for i in 0..n {
        let now = engine.now_ms();
        let new = [NewEvent::engine(EventPayload::SignalReceived {
            name: "bench".into(),
            payload: json!({"i": i}),
            sender: "bench".into(),
        })];
        let sealed = seal(&id, state.last_seq, &state.last_hash, now, &new);
        let req = AppendRequest {
            task_id: id.clone(),
            expected_seq: state.last_seq,
            events: sealed.iter().map(|(_, r)| r.clone()).collect(),
            projection: projection(&state, now),
            timers: None,
            create: None,
            lease: LeaseUpdate::Keep,
            wake: false,
        };
        anyhow::ensure!(
            store.append(req).await? == AppendOutcome::Appended,
            "raw append conflicted"
        );
        for (e, _) in &sealed {
            state.apply(&id, e.seq, e.recorded_at_ms, &e.payload);
            state.last_hash = e.hash.clone();
        }
    }
    let _ = Arc::new(());
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}
