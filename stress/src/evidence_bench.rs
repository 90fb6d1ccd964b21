//! The cost of the evidence log (engine::evidence). Measures only.
//!
//! - throughput with the log and signed checkpoints on vs off: `--tasks`
//!   five-step tasks at once, median of `--runs`, each mode on a fresh
//!   database, modes alternating; with the log on, also how long after the
//!   last task it took the log to take every event;
//! - at `--leaves` leaves (appended straight into the log, not through
//!   tasks): the append rate, and for tree sizes 10³ … `--leaves` the
//!   inclusion and consistency proof sizes, the time to build a proof from
//!   the stored nodes and the time to verify one (`--samples` each).

use std::time::{Duration, Instant};

use mandate_engine::evidence::log::LeafRow;
use mandate_engine::evidence::merkle;
use mandate_engine::evidence::{Follower, FollowerConfig, SignerKey};
use mandate_engine::{TaskStatus, WorkerConfig};
use rand::Rng;
use serde_json::json;

use crate::bench::{engine_on, submit_five_step, wait_all_final};
use crate::freshdb::FreshDb;
use crate::stats::{median, percentile};

#[derive(clap::Args, Debug, Clone)]
pub struct EvidenceBenchArgs {
    /// `sqlite`, or a PostgreSQL URL (fresh databases are created on its server).
    #[arg(long, default_value = "sqlite")]
    pub db: String,
    /// Tasks in each throughput run (0 skips the throughput comparison).
    #[arg(long, default_value_t = 2_000)]
    pub tasks: usize,
    /// Throughput runs per mode; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Leaves appended straight into the log for the proof figures (0 skips them).
    #[arg(long, default_value_t = 1_000_000)]
    pub leaves: u64,
    /// Proofs built and verified per tree size.
    #[arg(long, default_value_t = 200)]
    pub samples: usize,
    /// Checkpoint every N events while measuring throughput with the log on.
    #[arg(long, default_value_t = 1_000)]
    pub checkpoint_every: u64,
}

pub async fn run(args: EvidenceBenchArgs) -> anyhow::Result<()> {
    let mut out =
        json!({"store": if args.db.starts_with("postgres") { "postgres" } else { "sqlite" }});
    if args.tasks > 0 {
        let mut off = Vec::new();
        let mut on = Vec::new();
        let mut catch_up = Vec::new();
        for run in 0..args.runs.max(1) {
            // Alternate which mode goes first, so drift favours neither.
            for with_log in if run % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            } {
                let (rate, lag) = throughput(&args, with_log).await?;
                eprintln!(
                    "run {run} log {}: {rate:.0} tasks/s{}",
                    if with_log { "on " } else { "off" },
                    lag.map(|l| format!(", log caught up {l:.0} ms after the last task"))
                        .unwrap_or_default()
                );
                if with_log {
                    on.push(rate);
                    catch_up.extend(lag);
                } else {
                    off.push(rate);
                }
            }
        }
        let (m_off, m_on) = (median(&off), median(&on));
        out["throughput"] = json!({
            "tasks": args.tasks,
            "tasks_per_s_off": m_off,
            "tasks_per_s_on": m_on,
            "runs_off": off,
            "runs_on": on,
            "slowdown_percent": (1.0 - m_on / m_off) * 100.0,
            "log_catch_up_ms": median(&catch_up),
            "checkpoint_every": args.checkpoint_every,
        });
    }
    if args.leaves > 0 {
        out["proofs"] = proofs(&args).await?;
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// Tasks per second on a fresh database; with the log on, also how long
/// (ms) after the last task ended the log held every event.
async fn throughput(
    args: &EvidenceBenchArgs,
    with_log: bool,
) -> anyhow::Result<(f64, Option<f64>)> {
    let fresh = FreshDb::create(&args.db).await?;
    let engine = engine_on(&fresh.url, None).await?;
    let follower = with_log.then(|| {
        Follower::spawn(
            &engine,
            FollowerConfig {
                key: Some(SignerKey::from_seed("bench.example/log", [1; 32]).expect("a key")),
                every_events: args.checkpoint_every,
                ..FollowerConfig::default()
            },
        )
    });
    let worker = engine.start_worker(WorkerConfig::default());
    let warm = submit_five_step(&engine, 50).await?;
    wait_all_final(&engine, &warm, Duration::from_secs(60)).await?;
    let t0 = Instant::now();
    let ids = submit_five_step(&engine, args.tasks).await?;
    wait_all_final(&engine, &ids, Duration::from_secs(600)).await?;
    let rate = args.tasks as f64 / t0.elapsed().as_secs_f64();
    anyhow::ensure!(
        engine.task(&ids[0]).await?.status == TaskStatus::Completed,
        "a task did not complete"
    );
    worker.shutdown().await;
    let lag = match follower {
        Some(f) => {
            let done = Instant::now();
            let head = engine.store().event_head().await? as u64;
            f.wait_for(Duration::from_secs(600), |p| p.size >= head)
                .await
                .map_err(anyhow::Error::msg)?;
            let lag = done.elapsed().as_secs_f64() * 1e3;
            f.shutdown().await;
            Some(lag)
        }
        None => None,
    };
    drop(engine);
    fresh.drop_now().await;
    Ok((rate, lag))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Appends `--leaves` synthetic leaves, then measures proofs at growing sizes.
async fn proofs(args: &EvidenceBenchArgs) -> anyhow::Result<serde_json::Value> {
    let fresh = FreshDb::create(&args.db).await?;
    let store = mandate_engine::store::open(&fresh.url).await?;
    let log = store.evidence_log();
    let mut frontier = log.frontier().await?;
    let batch = 5_000u64;
    let event_hash = |i: u64| merkle::leaf_hash(&i.to_be_bytes());
    let t0 = Instant::now();
    let mut next = 0u64;
    while next < args.leaves {
        let rows: Vec<LeafRow> = (next..(next + batch).min(args.leaves))
            .map(|i| LeafRow {
                index: i,
                task_id: "bench".to_string(),
                seq: i as i64 + 1,
                event_hash: hex(&event_hash(i)),
            })
            .collect();
        next += rows.len() as u64;
        log.append(&mut frontier, &rows).await?;
    }
    let append_s = t0.elapsed().as_secs_f64();
    eprintln!("{} leaves appended in {append_s:.1} s", args.leaves);

    let mut sizes = Vec::new();
    let mut n = 1_000u64;
    while n < args.leaves {
        sizes.push(n);
        n *= 10;
    }
    sizes.push(args.leaves);
    let mut rng = rand::rng();
    let mut by_size = Vec::new();
    for &size in &sizes {
        let root = log.root(size).await?;
        let (mut build_ms, mut verify_us, mut hashes) = (Vec::new(), Vec::new(), 0);
        for _ in 0..args.samples {
            let index = rng.random_range(0..size);
            let t = Instant::now();
            let proof = log.prove_inclusion(index, size).await?;
            build_ms.push(t.elapsed().as_secs_f64() * 1e3);
            hashes = hashes.max(proof.len());
            let t = Instant::now();
            merkle::verify_inclusion(&event_hash(index), index, size, &root, &proof)
                .map_err(anyhow::Error::msg)?;
            verify_us.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let old = size / 2 + 1;
        let t = Instant::now();
        let consistency = log.prove_consistency(old, size).await?;
        let consistency_ms = t.elapsed().as_secs_f64() * 1e3;
        let old_root = log.root(old).await?;
        let t = Instant::now();
        merkle::verify_consistency(old, &old_root, size, &root, &consistency)
            .map_err(anyhow::Error::msg)?;
        let consistency_verify_us = t.elapsed().as_secs_f64() * 1e6;
        build_ms.sort_by(|a, b| a.total_cmp(b));
        verify_us.sort_by(|a, b| a.total_cmp(b));
        let row = json!({
            "tree_size": size,
            "inclusion_hashes_max": hashes,
            "inclusion_bytes_max": hashes * 32,
            "inclusion_build_ms_p50": percentile(&build_ms, 50.0),
            "inclusion_build_ms_p99": percentile(&build_ms, 99.0),
            "inclusion_verify_us_p50": percentile(&verify_us, 50.0),
            "consistency_from": old,
            "consistency_hashes": consistency.len(),
            "consistency_build_ms": consistency_ms,
            "consistency_verify_us": consistency_verify_us,
        });
        eprintln!("{row}");
        by_size.push(row);
    }
    drop(log);
    drop(store);
    fresh.drop_now().await;
    Ok(json!({
        "leaves": args.leaves,
        "append_s": append_s,
        "append_leaves_per_s": args.leaves as f64 / append_s,
        "by_size": by_size,
    }))
}
