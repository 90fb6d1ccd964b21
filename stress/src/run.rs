//! The stress run (the default command): N seeded saga tasks against one
//! store, driven by engine child processes that are SIGKILLed and restarted,
//! and SIGSTOPped past their lease, while the child's store and tools inject
//! faults. At the end every task is checked (`check`) and a report printed;
//! the exit code is 1 when any invariant failed.

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use futures::future::join_all;
use mandate_activities::{ToolRegistry, World};
use mandate_engine::{Engine, SubmitOptions};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

use crate::check::{Invariant, Outcome, TaskVerdict, check_task};
use crate::faults::{FaultKind, FaultSet};
use crate::freshdb::FreshDb;
use crate::scenario::{PlannedTask, generate};
use crate::stats::{parse_duration, percentile};

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// `sqlite` (a fresh temporary file), `postgres` (a fresh database on
    /// 127.0.0.1:5432), or a database URL, used as is: the run touches only
    /// its own tasks and keys (add --fresh to create a new database on that
    /// URL's PostgreSQL server instead).
    #[arg(long, default_value = "sqlite")]
    pub db: String,
    /// Create a fresh database on the server of a postgres:// URL (dropped after).
    #[arg(long)]
    pub fresh: bool,
    /// Keep the fresh database after the run (its URL is printed). A run
    /// whose invariants fail always keeps it, so the histories can be read.
    #[arg(long)]
    pub keep: bool,
    /// Tasks to run.
    #[arg(long, default_value_t = 1_000)]
    pub tasks: usize,
    /// The seed of the tasks and of the fault schedule.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Faults to inject, comma separated: all, none, or any of tool-retryable,
    /// tool-terminal, tool-timeout, tool-hang, duplicate, store-before-commit,
    /// store-after-commit, compensation-failure, kill, lease-expiry.
    #[arg(long, default_value = "all")]
    pub faults: FaultSet,
    /// SIGKILL the engine process (and restart it) this often, e.g. 8s,
    /// 500ms; the second engine is SIGSTOPped past its lease as often. Under
    /// a faulted step's timeout plus the lease, a hanging attempt is
    /// restarted by each new engine before it can time out, so its task may
    /// never finish unless `--kills` bounds the kills.
    #[arg(long, default_value = "8s", value_parser = parse_duration)]
    pub kill_every: Duration,
    /// Stop after this many kills (and as many lease-expiry stops); unlimited if absent.
    #[arg(long)]
    pub kills: Option<u32>,
    /// The engine processes' lease.
    #[arg(long, default_value_t = 2_000)]
    pub lease_ms: i64,
    /// Give up waiting for tasks to finish after this long; the rest count as lost.
    #[arg(long, default_value = "15m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// One engine child process.
struct EngineProcess {
    name: String,
    child: Child,
}

/// The latest fault counters each child incarnation printed.
type Counters = Arc<Mutex<HashMap<String, Value>>>;

fn spawn_engine(
    args: &RunArgs,
    url: &str,
    name: &str,
    counters: &Counters,
) -> anyhow::Result<EngineProcess> {
    let exe = std::env::current_exe().context("locating the mandate-stress binary")?;
    let mut child = Command::new(exe)
        .args([
            "worker",
            "--db",
            url,
            "--seed",
            &args.seed.to_string(),
            "--faults",
            &args.faults.to_arg(),
            "--worker-id",
            name,
            "--lease-ms",
            &args.lease_ms.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting the engine child process")?;
    let stdout = child.stdout.take().context("child stdout")?;
    let counters = counters.clone();
    let key = name.to_string();
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.strip_prefix("faults ")
                && let Ok(v) = serde_json::from_str::<Value>(rest)
            {
                counters.lock().expect("counters").insert(key.clone(), v);
            }
        }
    });
    Ok(EngineProcess {
        name: name.to_string(),
        child,
    })
}

fn signal(child: &Child, sig: i32) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on a pid we spawned and have not reaped.
        unsafe {
            libc::kill(pid as i32, sig);
        }
    }
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let (url, fresh) = match args.db.as_str() {
        "sqlite" => {
            let f = FreshDb::create("sqlite").await?;
            (f.url.clone(), Some(f))
        }
        "postgres" => {
            let f = FreshDb::create("postgres://postgres@127.0.0.1:5432/postgres").await?;
            (f.url.clone(), Some(f))
        }
        u if args.fresh => {
            let f = FreshDb::create(u).await?;
            (f.url.clone(), Some(f))
        }
        u => (u.to_string(), None),
    };
    let result = stress(&args, &url).await;
    if let Some(f) = fresh {
        if args.keep || matches!(result, Ok(true)) {
            let url = f.keep();
            eprintln!(
                "the run's database is kept for inspection: {url}\n  \
                 e.g. `mandate --db {url} history <task-id>`; delete it when done"
            );
        } else {
            f.drop_now().await;
        }
    }
    let failed = result?;
    if failed {
        std::process::exit(1);
    }
    Ok(())
}

/// Runs the stress test; returns whether an invariant failed.
async fn stress(args: &RunArgs, url: &str) -> anyhow::Result<bool> {
    anyhow::ensure!(args.tasks > 0, "--tasks must be at least 1");
    // The parent only submits and checks: a plain store, no worker.
    let store = mandate_engine::store::open(url).await?;
    let world = World::connect(url).await?;
    let mut tools = ToolRegistry::new();
    crate::child::register_stress_tools(
        &mut tools,
        world.clone(),
        Arc::new(crate::faults::Faults {
            seed: args.seed,
            enabled: FaultSet::all(),
            counters: Default::default(),
        }),
    );
    let engine = Engine::new(
        store,
        mandate_workflows::registry(),
        tools,
        std::sync::Arc::new(mandate_activities::Governance::shipped()),
    );
    let backend = engine.store().backend().as_str();
    let run_id = format!("r{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let planned: Vec<PlannedTask> = (0..args.tasks)
        .map(|i| generate(args.seed, &args.faults, &run_id, i))
        .collect();
    let kills_on = args.faults.contains(FaultKind::Kill);
    let stops_on = args.faults.contains(FaultKind::LeaseExpiry);
    eprintln!(
        "mandate-stress: {} tasks on {backend}, seed {}, faults {}, lease {} ms, run {run_id}",
        args.tasks,
        args.seed,
        args.faults.to_arg(),
        args.lease_ms
    );
    let progress_window = Duration::from_millis(
        crate::scenario::FAULTED_STEP_TIMEOUT_MS + args.lease_ms.max(0) as u64 + 1_000,
    );
    if (kills_on || stops_on) && args.kills.is_none() && args.kill_every < progress_window {
        eprintln!(
            "warning: --kill-every {:?} is shorter than a faulted step's timeout plus the lease ({:?}): \
             an attempt that hangs is restarted by each new engine before it times out, and its task \
             may never finish (it would count as lost); raise --kill-every or bound --kills",
            args.kill_every, progress_window
        );
    }

    let counters: Counters = Arc::new(Mutex::new(HashMap::new()));
    let mut incarnation = 0u32;
    let mut next_name = |role: &str| {
        incarnation += 1;
        format!("{role}-{incarnation}")
    };
    let mut primary = spawn_engine(args, url, &next_name("a"), &counters)?;
    let mut secondary = if stops_on {
        Some(spawn_engine(args, url, &next_name("b"), &counters)?)
    } else {
        None
    };

    let bar = indicatif::ProgressBar::new(args.tasks as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} final  {msg}",
        )?
        .progress_chars("=> "),
    );

    // Submit in batches (the engine's group commit takes each batch at once);
    // the engine processes are already working on the first ones.
    let t0 = Instant::now();
    let started_ms = engine.now_ms();
    let mut ids: Vec<String> = Vec::with_capacity(args.tasks);
    for chunk in planned.chunks(500) {
        let submitted = join_all(chunk.iter().map(|p| {
            engine.submit(
                "saga",
                p.input.clone(),
                SubmitOptions {
                    // An operator's task: the stress suite tests the durable
                    // core; the shipped policies govern agents, not it.
                    actor: Some("user:mandate-stress".into()),
                    idempotency_key: Some(format!("{run_id}/t{}", p.index)),
                    ..Default::default()
                },
            )
        }))
        .await;
        for s in submitted {
            ids.push(s.context("submitting a stress task")?.task_id);
        }
        bar.set_message(format!("submitted {}", ids.len()));
    }

    // Watch, kill, stop, until every task is final or the time is up.
    let deadline = t0 + args.timeout;
    let max_kills = args.kills.unwrap_or(u32::MAX);
    let (mut kills, mut stops) = (0u32, 0u32);
    let mut next_kill = t0 + args.kill_every;
    let mut next_stop = t0 + args.kill_every / 2;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut finished;
    loop {
        tick.tick().await;
        finished = count_final(&engine, &ids).await?;
        bar.set_position(finished as u64);
        bar.set_message(format!("kills {kills}, lease expiries {stops}"));
        if finished == ids.len() || Instant::now() >= deadline {
            break;
        }
        let now = Instant::now();
        if kills_on && kills < max_kills && now >= next_kill {
            primary.child.start_kill().ok(); // SIGKILL
            let _ = primary.child.wait().await;
            kills += 1;
            primary = spawn_engine(args, url, &next_name("a"), &counters)?;
            next_kill = now + args.kill_every;
        }
        if let Some(b) = &secondary
            && stops < max_kills
            && now >= next_stop
        {
            // Freeze it past its lease: the other process takes its tasks
            // over, and whatever it appends after SIGCONT must be fenced off.
            signal(&b.child, libc::SIGSTOP);
            stops += 1;
            let frozen = Duration::from_millis(args.lease_ms as u64) + Duration::from_millis(1_500);
            tokio::time::sleep(frozen).await;
            signal(&b.child, libc::SIGCONT);
            next_stop = Instant::now() + args.kill_every;
        }
    }
    let elapsed = t0.elapsed();
    bar.finish_and_clear();

    // Stop the engines before judging, so nothing moves under the checker.
    let mut engines = vec![primary];
    engines.extend(secondary.take());
    for e in &mut engines {
        drop(e.child.stdin.take());
    }
    for mut e in engines {
        // An engine waits for its zombie calls before it exits.
        let grace =
            Duration::from_millis(crate::faults::LATE_APPLY_MAX_DELAY_MS) + Duration::from_secs(5);
        if tokio::time::timeout(grace, e.child.wait()).await.is_err() {
            e.child.start_kill().ok();
            let _ = e.child.wait().await;
            eprintln!(
                "engine process {} did not stop in {} s; killed",
                e.name,
                grace.as_secs()
            );
        }
    }
    let mut faults_injected = sum_counters(&counters);
    // Tombstones compensations left under the keys of steps they undid
    // (the whole database's: exact for a fresh one).
    match world.fence_count().await {
        Ok(n) => {
            faults_injected.insert("fenced-keys".into(), n as u64);
        }
        Err(e) => anyhow::bail!("counting the world's fenced keys: {e}"),
    }

    eprintln!("checking {} tasks…", ids.len());
    let kv: HashMap<String, Value> = match world.list("kv").await {
        Ok(list) => list.into_iter().collect(),
        Err(e) => anyhow::bail!("reading the world's kv namespace: {e}"),
    };
    let verdicts: Vec<TaskVerdict> = futures::stream::iter(planned.iter().zip(&ids))
        .map(|(p, id)| {
            let engine = &engine;
            let kv = &kv;
            async move { check_task(engine, p, id, kv).await }
        })
        .buffered(16)
        .collect()
        .await;

    let report = Report::build(
        args,
        backend,
        &run_id,
        &verdicts,
        elapsed,
        started_ms,
        kills,
        stops,
        faults_injected,
    );
    report.print();
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report.json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report.failed)
}

async fn count_final(engine: &Engine, ids: &[String]) -> anyhow::Result<usize> {
    // One grouped count is cheap; it is exact when the database holds only
    // this run's tasks and an upper bound otherwise, so confirm the end by rows.
    let counts = engine.store().count_by_status().await?;
    let total: i64 = counts.iter().map(|(_, n)| n).sum();
    let final_n: i64 = counts
        .iter()
        .filter(|(s, _)| s.is_final())
        .map(|(_, n)| n)
        .sum();
    if total as usize == ids.len() && (final_n as usize) < ids.len() {
        return Ok(final_n as usize);
    }
    let rows = futures::stream::iter(ids)
        .map(|id| engine.task(id))
        .buffered(16)
        .collect::<Vec<_>>()
        .await;
    let mut n = 0;
    for r in rows {
        if r?.status.is_final() {
            n += 1;
        }
    }
    Ok(n)
}

fn sum_counters(counters: &Counters) -> BTreeMap<String, u64> {
    let mut sum = BTreeMap::new();
    for v in counters.lock().expect("counters").values() {
        if let Some(m) = v.as_object() {
            for (k, n) in m {
                *sum.entry(k.clone()).or_default() += n.as_u64().unwrap_or(0);
            }
        }
    }
    sum
}

struct Report {
    json: Value,
    failed: bool,
    text: String,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    fn build(
        args: &RunArgs,
        backend: &str,
        run_id: &str,
        verdicts: &[TaskVerdict],
        elapsed: Duration,
        started_ms: i64,
        kills: u32,
        stops: u32,
        mut faults: BTreeMap<String, u64>,
    ) -> Report {
        let count = |o: Outcome| verdicts.iter().filter(|v| v.outcome == o).count();
        let (completed, rolled_back, escalated) = (
            count(Outcome::Completed),
            count(Outcome::RolledBack),
            count(Outcome::Escalated),
        );
        let mut by_invariant: BTreeMap<Invariant, Vec<(&str, &str)>> = BTreeMap::new();
        for v in verdicts {
            for (inv, detail) in &v.violations {
                by_invariant
                    .entry(*inv)
                    .or_default()
                    .push((v.task_id.as_str(), detail.as_str()));
            }
        }
        let left: usize = verdicts.iter().map(|v| v.left_for_a_person).sum();
        let mut lat: Vec<f64> = verdicts
            .iter()
            .filter_map(|v| v.latency_ms)
            .map(|l| l as f64)
            .collect();
        lat.sort_by(|a, b| a.total_cmp(b));
        let last_final = verdicts.iter().filter_map(|v| v.final_at_ms).max();
        let wall_s = last_final
            .map(|l| (l - started_ms) as f64 / 1e3)
            .unwrap_or(elapsed.as_secs_f64())
            .max(1e-3);
        let final_n = lat.len();
        faults.insert("kill".into(), u64::from(kills));
        faults.insert("lease-expiry".into(), u64::from(stops));
        let failed = !by_invariant.is_empty();

        let mut t = String::new();
        use std::fmt::Write;
        let _ = writeln!(
            t,
            "mandate-stress report — {backend}, seed {}, run {run_id}",
            args.seed
        );
        let _ = writeln!(t, "  faults enabled              {}", args.faults.to_arg());
        let list = |late: bool| {
            faults
                .iter()
                .filter(|(k, _)| (k.starts_with("late-") || k.as_str() == "fenced-keys") == late)
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(t, "  faults injected             {}", list(false));
        let _ = writeln!(
            t,
            "  zombie calls of timed-out writes  {}  (fenced-keys: steps their compensation fenced)",
            list(true)
        );
        let _ = writeln!(t, "  submitted                   {}", verdicts.len());
        let _ = writeln!(t, "  completed                   {completed}");
        let _ = writeln!(t, "  rolled back                 {rolled_back}");
        let _ = writeln!(
            t,
            "  escalated                   {escalated}  ({left} key(s) left for a person, named in recovery paths)"
        );
        for inv in Invariant::ALL {
            let n = by_invariant.get(&inv).map_or(0, Vec::len);
            let mark = if n == 0 { "ok" } else { "FAILED" };
            let _ = writeln!(t, "  {:<46} {n:>5}  {mark}", inv.label());
        }
        let _ = writeln!(
            t,
            "  throughput                  {:.0} tasks/s ({final_n} final in {wall_s:.1} s, first submit to last final)",
            final_n as f64 / wall_s
        );
        let _ = writeln!(
            t,
            "  latency submit→final        p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            percentile(&lat, 50.0),
            percentile(&lat, 90.0),
            percentile(&lat, 99.0),
            lat.last().copied().unwrap_or(f64::NAN)
        );
        if failed {
            let _ = writeln!(t, "\nINVARIANTS FAILED (seed {}):", args.seed);
            for (inv, list) in &by_invariant {
                let _ = writeln!(t, "  {} — {} task(s):", inv.label(), list.len());
                for (id, detail) in list.iter().take(20) {
                    let _ = writeln!(t, "    {id}: {detail}");
                }
                if list.len() > 20 {
                    let _ = writeln!(t, "    … and {} more", list.len() - 20);
                }
            }
            let _ = writeln!(
                t,
                "reproduce: mandate-stress --db {} --tasks {} --seed {} --faults {}",
                args.db,
                args.tasks,
                args.seed,
                args.faults.to_arg()
            );
        }
        let mut invariants = serde_json::Map::new();
        for inv in Invariant::ALL {
            let list = by_invariant.get(&inv);
            invariants.insert(
                inv.key().into(),
                json!({
                    "count": list.map_or(0, Vec::len),
                    "tasks": list.map(|l| l.iter().map(|(id, d)| json!({"task_id": id, "detail": d})).collect::<Vec<_>>()).unwrap_or_default(),
                }),
            );
        }
        let json = json!({
            "store": backend, "seed": args.seed, "run": run_id, "faults_enabled": args.faults.to_arg(),
            "faults_injected": faults, "lease_ms": args.lease_ms,
            "submitted": verdicts.len(), "completed": completed, "rolled_back": rolled_back,
            "escalated": escalated, "keys_left_for_a_person": left,
            "lost": by_invariant.get(&Invariant::Lost).map_or(0, Vec::len),
            "invariants": invariants, "passed": !failed,
            "throughput_tasks_per_s": final_n as f64 / wall_s, "wall_s": wall_s,
            "latency_ms": {"p50": percentile(&lat, 50.0), "p90": percentile(&lat, 90.0), "p99": percentile(&lat, 99.0), "max": lat.last()},
        });
        Report {
            json,
            failed,
            text: t,
        }
    }

    fn print(&self) {
        println!("{}", self.text);
    }
}
