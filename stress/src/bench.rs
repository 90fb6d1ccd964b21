//! The benchmark: every figure measured in one run, on a fresh database,
//! beside its own baseline (the raw durable-append rate of the same store).
//! Measures only; asserts nothing.
//!
//! - throughput: `--tasks` five-step tasks submitted at once, time until all
//!   are final (median of `--runs`), and its ratio to the raw append rate;
//! - latency: one five-step task at a time, submit → final, p50/p99;
//! - approval → next step: a task waits for an approval (its driver has let
//!   go); from the `decide_approval` call (an approver the request names) to
//!   the next step's tool starting, in process;
//! - recovery: `--recovery-tasks` tasks mid-step (each one's tool call
//!   running) in an engine child process, SIGKILL, a new process started at
//!   once: time until all are final (the re-run call returns at once);
//! - memory: peak RSS of this process (engine + worker in process) with
//!   `--memory-tasks` tasks waiting on a signal;
//! - CPU per task: this process's CPU time (user + system, from the OS)
//!   over each throughput run, divided by its tasks; on PostgreSQL also the
//!   server's processes' CPU time over the same run;
//! - replay: `audit_task` (read, verify, fold, re-run the code) of one
//!   `--replay-events`-event history (as `replay-bench`), median of 5;
//! - decide cost: the total CPU `decide` spends over a task of 100 / 1,000 /
//!   10,000 commands and its growth with the length (`decide_bench`).

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::FutureExt;
use futures::future::BoxFuture;
use futures::future::join_all;
use mandate_activities::{Tool, ToolContext, ToolKind, ToolRegistry, ToolResult, World};
use mandate_engine::core::decide::projection;
use mandate_engine::core::event::{NewEvent, seal};
use mandate_engine::runtime::{ApprovalDecision, ApprovalTarget};
use mandate_engine::store::{AppendOutcome, AppendRequest, LeaseUpdate};
use mandate_engine::{Engine, EventPayload, TaskState, TaskStatus, WorkerConfig};
use serde_json::{Value, json};

use crate::freshdb::FreshDb;
use crate::stats::{median, percentile, proc_status_kb};

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// `sqlite`, or a PostgreSQL URL (a fresh database is created on its server).
    #[arg(long, default_value = "sqlite")]
    pub db: String,
    /// Tasks in each throughput run.
    #[arg(long, default_value_t = 2_000)]
    pub tasks: usize,
    /// Throughput runs; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Tasks run one at a time for the latency figures.
    #[arg(long, default_value_t = 200)]
    pub latency_tasks: usize,
    /// Appends in the raw durable-append measurement.
    #[arg(long, default_value_t = 2_000)]
    pub appends: usize,
    /// Approval decisions timed, one at a time (0 skips the measurement).
    #[arg(long, alias = "signals", default_value_t = 200)]
    pub approvals: usize,
    /// Tasks in flight when the engine process is SIGKILLed (0 skips recovery).
    #[arg(long, default_value_t = 1_000)]
    pub recovery_tasks: usize,
    /// The lease of the engine processes in the recovery measurement.
    #[arg(long, default_value_t = 5_000)]
    pub recovery_lease_ms: i64,
    /// Tasks waiting on a signal for the memory figure (0 skips it).
    #[arg(long, default_value_t = 100_000)]
    pub memory_tasks: usize,
    /// Most tasks the in-process worker drives at once (`WorkerConfig::max_active_tasks`).
    #[arg(long, default_value_t = WorkerConfig::default().max_active_tasks)]
    pub max_active_tasks: usize,
    /// Events in the history whose replay is timed (0 skips it).
    #[arg(long, default_value_t = 10_000)]
    pub replay_events: usize,
    /// Task lengths (commands) of the decide-cost benchmark (the flag with
    /// no value skips it).
    #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "100,1000,10000")]
    pub decide_commands: Vec<usize>,
    /// Most decide CPU seconds one length of the decide-cost benchmark may
    /// take; a length that needs more is reported as stopped there.
    #[arg(long, default_value_t = 60.0)]
    pub decide_budget_s: f64,
    /// Write the figures as JSON to this file too.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// The hidden engine process of the recovery measurement: demo tools and
/// `bench.hold`, a worker with the given lease, until stdin closes or it is
/// killed.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchWorkerArgs {
    #[arg(long)]
    pub db: String,
    #[arg(long)]
    pub worker_id: String,
    #[arg(long)]
    pub lease_ms: i64,
    /// `bench.hold` steps announce themselves and never return (the
    /// process is to be killed mid-step); without it they return at once.
    #[arg(long)]
    pub hold: bool,
}

/// A five-step task: five sequential `test.echo` steps.
pub fn five_step_input(n: usize) -> Value {
    let stages: Vec<Value> = (0..5)
        .map(|i| json!([{"tool": "test.echo", "input": {"task": n, "step": i}}]))
        .collect();
    json!({ "stages": stages })
}

/// `bench.stamp` (read): notes when each task's call started, in process.
#[derive(Clone, Default)]
pub(crate) struct Stamp {
    started: Arc<Mutex<HashMap<String, Instant>>>,
    notify: Arc<tokio::sync::Notify>,
}

impl Tool for Stamp {
    fn name(&self) -> &str {
        "bench.stamp"
    }
    fn kind(&self) -> ToolKind {
        ToolKind::Read
    }
    fn call<'a>(&'a self, ctx: ToolContext, input: Value) -> BoxFuture<'a, ToolResult> {
        let now = Instant::now();
        self.started
            .lock()
            .expect("stamps")
            .entry(ctx.task_id)
            .or_insert(now);
        self.notify.notify_waiters();
        futures::future::ready(Ok(input)).boxed()
    }
}

/// An engine on `url` with the demo tools and `extra`.
pub(crate) async fn engine_on(url: &str, extra: Option<Arc<dyn Tool>>) -> anyhow::Result<Engine> {
    let store = mandate_engine::store::open(url).await?;
    let world = World::connect(url).await?;
    let mut tools = ToolRegistry::new();
    mandate_activities::register_demo_tools(&mut tools, world);
    if let Some(t) = extra {
        tools.register_arc(t);
    }
    Ok(Engine::new(
        store,
        mandate_workflows::registry(),
        tools,
        std::sync::Arc::new(mandate_activities::Governance::shipped()),
    ))
}

/// Submits `n` five-step sagas at once; their ids.
pub(crate) async fn submit_five_step(engine: &Engine, n: usize) -> anyhow::Result<Vec<String>> {
    Ok(
        join_all((0..n).map(|i| engine.submit("saga", five_step_input(i), Default::default())))
            .await
            .into_iter()
            .map(|r| r.map(|s| s.task_id))
            .collect::<Result<_, _>>()?,
    )
}

/// Waits until every id in `ids` is final, when some may have ended before
/// anyone listened: each is read once, then final updates are counted.
pub(crate) async fn wait_all_final(
    engine: &Engine,
    ids: &[String],
    timeout: Duration,
) -> anyhow::Result<()> {
    let finals = Finals::start(engine);
    // Tasks that ended before the subscription published their update
    // already: as if updates were missed, so the stragglers are read.
    finals.seen.lock().expect("finals").lagged = true;
    finals.wait(engine, ids, timeout).await
}

/// Final updates watched from before a batch is submitted, so that waiting
/// for the batch reads nothing from the store unless updates were missed:
/// the per-task status reads `wait_all_final` starts with would be counted
/// in the CPU per task, and they are the client's cost, not the engine's.
pub(crate) struct Finals {
    seen: Arc<Mutex<FinalsSeen>>,
    notify: Arc<tokio::sync::Notify>,
    watcher: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct FinalsSeen {
    /// Seen final since `wait` last looked.
    fresh: Vec<String>,
    /// Updates were dropped (the channel lagged): stragglers must be read.
    lagged: bool,
}

impl Finals {
    /// Starts watching `engine`'s updates (its own task drains them while
    /// the batch is submitted, so the channel rarely lags).
    pub(crate) fn start(engine: &Engine) -> Self {
        let mut updates = engine.subscribe();
        let seen = Arc::new(Mutex::new(FinalsSeen::default()));
        let notify = Arc::new(tokio::sync::Notify::new());
        let (s, n) = (seen.clone(), notify.clone());
        let watcher = tokio::spawn(async move {
            loop {
                match updates.recv().await {
                    Ok(u) if u.status.is_final() => {
                        s.lock().expect("finals").fresh.push(u.task_id);
                        n.notify_one();
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        s.lock().expect("finals").lagged = true;
                        n.notify_one();
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Self {
            seen,
            notify,
            watcher,
        }
    }

    /// Waits until every id in `ids` was seen final. Each final update is
    /// looked at once, so one `Finals` serves one wait.
    pub(crate) async fn wait(
        &self,
        engine: &Engine,
        ids: &[String],
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pending: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
        loop {
            let (fresh, lagged) = {
                let mut seen = self.seen.lock().expect("finals");
                (
                    std::mem::take(&mut seen.fresh),
                    std::mem::take(&mut seen.lagged),
                )
            };
            for id in &fresh {
                pending.remove(id.as_str());
            }
            if lagged {
                // Some updates were missed: read the stragglers.
                let mut still = std::collections::HashSet::new();
                for id in pending {
                    if !engine.task(id).await?.status.is_final() {
                        still.insert(id);
                    }
                }
                pending = still;
            }
            if pending.is_empty() {
                return Ok(());
            }
            tokio::select! {
                _ = self.notify.notified() => {}
                _ = tokio::time::sleep_until(deadline) => anyhow::bail!("{} tasks not final after {timeout:?}", pending.len()),
            }
        }
    }
}

impl Drop for Finals {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// Final updates for waiters that each wait for one task of a batch, many
/// at once (a bounded number in flight): one subscription serves them all
/// and wakes only the task's own waiter, so waiting reads nothing from the
/// store unless updates were missed. `Engine::wait_until_final` reads the
/// task's row at the start and after each of its updates, and every waiter
/// sees every task's updates: a client's cost the engine's CPU per task
/// would otherwise include.
pub(crate) struct FinalWaits {
    state: Arc<Mutex<WaitState>>,
    watcher: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct WaitState {
    /// Seen final, nobody waiting yet.
    finals: std::collections::HashSet<String>,
    /// Waiting: woken with `true` when final, `false` when updates were
    /// missed (then the waiter reads the task).
    waiting: HashMap<String, tokio::sync::oneshot::Sender<bool>>,
    /// Times updates were missed.
    lags: u64,
}

impl FinalWaits {
    pub(crate) fn start(engine: &Engine) -> Self {
        let mut updates = engine.subscribe();
        let state = Arc::new(Mutex::new(WaitState::default()));
        let st = state.clone();
        let watcher = tokio::spawn(async move {
            loop {
                match updates.recv().await {
                    Ok(u) if u.status.is_final() => {
                        let mut s = st.lock().expect("final waits");
                        match s.waiting.remove(&u.task_id) {
                            Some(w) => {
                                let _ = w.send(true);
                            }
                            None => {
                                s.finals.insert(u.task_id);
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        let mut s = st.lock().expect("final waits");
                        s.lags += 1;
                        for (_, w) in s.waiting.drain() {
                            let _ = w.send(false);
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Self { state, watcher }
    }

    /// Waits until `id` (submitted after `start`) is final.
    pub(crate) async fn wait(
        &self,
        engine: &Engine,
        id: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut lags_read = 0;
        loop {
            let (woken, lags) = {
                let mut s = self.state.lock().expect("final waits");
                if s.finals.remove(id) {
                    return Ok(());
                }
                let (tx, rx) = tokio::sync::oneshot::channel();
                s.waiting.insert(id.to_string(), tx);
                (rx, s.lags)
            };
            if lags != lags_read {
                // Updates were missed since this waiter last looked.
                lags_read = lags;
                if engine.task(id).await?.status.is_final() {
                    self.state.lock().expect("final waits").waiting.remove(id);
                    return Ok(());
                }
            }
            tokio::select! {
                r = woken => if r == Ok(true) { return Ok(()) },
                _ = tokio::time::sleep_until(deadline) => anyhow::bail!("task {id} not final after {timeout:?}"),
            }
        }
    }
}

impl Drop for FinalWaits {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// Every figure of one store.
#[derive(Debug, Default)]
pub struct Figures {
    pub store: &'static str,
    pub durability: String,
    pub tasks_per_s: f64,
    pub tasks_per_s_runs: Vec<f64>,
    pub steps_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub raw_appends_per_s: f64,
    pub approval_p50_ms: Option<f64>,
    pub approval_p99_ms: Option<f64>,
    pub recovery_s: Option<f64>,
    pub recovery_in_flight: usize,
    pub memory_peak_mb: Option<f64>,
    pub memory_baseline_mb: Option<f64>,
    pub memory_submit_s: Option<f64>,
    /// This process's CPU per task (ms), median over the throughput runs,
    /// with its user and system parts.
    pub cpu_ms_per_task: f64,
    pub cpu_user_ms_per_task: f64,
    pub cpu_sys_ms_per_task: f64,
    pub cpu_ms_per_task_runs: Vec<f64>,
    /// The PostgreSQL server's CPU per task (ms), median over the runs.
    pub server_cpu_ms_per_task: Option<f64>,
    /// Replay of a `replay_events`-event history, median (ms).
    pub replay_ms: Option<f64>,
    /// The store's group-commit writer over the throughput runs (medians):
    /// commits per task, operations per commit, and the share of the run's
    /// wall time the writer spent inside transactions (statements and the
    /// commit's fsync).
    pub writer_commits_per_task: f64,
    pub writer_ops_per_commit: f64,
    pub writer_busy_share: f64,
    pub decide: Vec<crate::decide_bench::DecideCost>,
    pub decide_parallel: Vec<crate::decide_bench::DecideCost>,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    // Memory first, while this process is fresh: the allocator keeps what
    // later measurements used, and that would be counted as the waiting
    // tasks' cost. Each measurement gets a database of its own, so that
    // neither earlier tasks nor another measurement weigh on it.
    let memory_figures = if args.memory_tasks > 0 {
        let fresh = FreshDb::create(&args.db).await?;
        let r = memory(&args, &fresh.url).await;
        fresh.drop_now().await;
        Some(r?)
    } else {
        None
    };

    let fresh = FreshDb::create(&args.db).await?;
    let result = measure(&args, &fresh.url).await;
    fresh.drop_now().await;
    let mut f = result?;
    if let Some((baseline, peak, submit_s)) = memory_figures {
        f.memory_baseline_mb = Some(baseline);
        f.memory_peak_mb = Some(peak);
        f.memory_submit_s = Some(submit_s);
    }

    if args.recovery_tasks > 0 {
        let fresh = FreshDb::create(&args.db).await?;
        let r = recovery(&args, &fresh.url).await;
        fresh.drop_now().await;
        f.recovery_s = Some(r?);
        f.recovery_in_flight = args.recovery_tasks;
    }

    if args.replay_events > 0 {
        let fresh = FreshDb::create(&args.db).await?;
        let r = replay_ms(&fresh.url, args.replay_events).await;
        fresh.drop_now().await;
        f.replay_ms = Some(r?);
    }

    if !args.decide_commands.is_empty() {
        let lengths = args.decide_commands.clone();
        let budget = args.decide_budget_s;
        use crate::decide_bench::Shape;
        let (chain, parallel) = tokio::task::spawn_blocking(move || {
            println!("{}:\n", Shape::Chain.describe());
            let chain = crate::decide_bench::run(&lengths, budget, Shape::Chain);
            println!("\n{}:\n", Shape::Parallel.describe());
            let parallel = crate::decide_bench::run(&lengths, budget, Shape::Parallel);
            (chain, parallel)
        })
        .await?;
        f.decide = chain;
        f.decide_parallel = parallel;
        println!();
    }

    let ratio = f.tasks_per_s / f.raw_appends_per_s;
    let opt = |v: Option<f64>, unit: &str| {
        v.map_or("not measured".to_string(), |v| format!("{v:.2} {unit}"))
    };
    println!("| figure ({}) | value | target |", f.store);
    println!("|---|---|---|");
    println!(
        "| 5-step tasks/s ({} tasks at once, median of {}: {}) | {:.0} ({:.0} steps/s) | ≥ {} |",
        args.tasks,
        f.tasks_per_s_runs.len(),
        f.tasks_per_s_runs
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", "),
        f.tasks_per_s,
        f.steps_per_s,
        if f.store == "sqlite" {
            "3,000"
        } else {
            "1,500"
        }
    );
    println!(
        "| CPU per 5-step task, this process (user + system; median of the runs: {}) | {:.2} ms ({:.2} + {:.2}) | ≤ 0.5 ms |",
        f.cpu_ms_per_task_runs
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", "),
        f.cpu_ms_per_task,
        f.cpu_user_ms_per_task,
        f.cpu_sys_ms_per_task,
    );
    if let Some(s) = f.server_cpu_ms_per_task {
        println!(
            "| CPU per 5-step task, PostgreSQL server processes (median) | {s:.2} ms (total {:.2} ms) | ≤ 0.5 ms with the engine's |",
            s + f.cpu_ms_per_task
        );
    }
    println!(
        "| raw durable appends/s (one event per commit, each awaited) | {:.0} | — |",
        f.raw_appends_per_s
    );
    println!("| tasks/s ÷ raw append rate | {ratio:.2} | ≥ 0.3 |");
    println!(
        "| the writer during the runs (medians): commits per task, operations per commit, busy share of the run | {:.2}, {:.1}, {:.0}% | — |",
        f.writer_commits_per_task,
        f.writer_ops_per_commit,
        f.writer_busy_share * 100.0
    );
    println!(
        "| one 5-step task, p50 / p99 ({} one at a time) | {:.2} ms / {:.2} ms | p50 ≤ {} ms |",
        args.latency_tasks,
        f.p50_ms,
        f.p99_ms,
        if f.store == "sqlite" { "2" } else { "4" }
    );
    println!(
        "| approval decided → next step started, p50 / p99 ({} approvals) | {} / {} | p99 ≤ 10 ms |",
        args.approvals,
        opt(f.approval_p50_ms, "ms"),
        opt(f.approval_p99_ms, "ms")
    );
    println!(
        "| SIGKILL with {} tasks in flight → all final (lease {} ms) | {} | ≤ lease + 1 s = {:.1} s |",
        f.recovery_in_flight,
        args.recovery_lease_ms,
        opt(f.recovery_s, "s"),
        args.recovery_lease_ms as f64 / 1e3 + 1.0
    );
    println!(
        "| peak RSS with {} tasks waiting on a signal (baseline {}) | {} | ≤ 120 MB |",
        args.memory_tasks,
        opt(f.memory_baseline_mb, "MB"),
        opt(f.memory_peak_mb, "MB")
    );
    println!(
        "| replay of a {}-event history (audit_task, median of 5) | {} | ≤ 50 ms |",
        args.replay_events,
        opt(f.replay_ms, "ms")
    );
    let decide_slope = slope(&f.decide);
    let decide_parallel_slope = slope(&f.decide_parallel);
    for (label, costs, k) in [
        ("a chain", &f.decide, decide_slope),
        ("parallel steps", &f.decide_parallel, decide_parallel_slope),
    ] {
        if costs.is_empty() {
            continue;
        }
        println!(
            "| total decide CPU vs length, {label} ({}) | {} | linear |",
            costs
                .iter()
                .map(|c| format!(
                    "{}: {:.3} s{}",
                    c.commands,
                    c.decide_cpu_s,
                    if c.complete { "" } else { " (stopped)" }
                ))
                .collect::<Vec<_>>()
                .join(", "),
            k.map_or("not measured at two complete lengths".to_string(), |k| {
                format!("exponent {k:.2} (1 = linear, 2 = quadratic)")
            }),
        );
    }
    println!("\ndurability: {}", f.durability);
    let doc = json!({
        "store": f.store, "durability": f.durability, "machine": machine(),
        "tasks": args.tasks, "tasks_per_s": f.tasks_per_s, "tasks_per_s_runs": f.tasks_per_s_runs,
        "steps_per_s": f.steps_per_s,
        "latency_tasks": args.latency_tasks, "p50_ms": f.p50_ms, "p99_ms": f.p99_ms,
        "raw_appends_per_s": f.raw_appends_per_s, "ratio": ratio,
        "approvals": args.approvals, "approval_to_step_p50_ms": f.approval_p50_ms, "approval_to_step_p99_ms": f.approval_p99_ms,
        "recovery_tasks": f.recovery_in_flight, "recovery_lease_ms": args.recovery_lease_ms, "recovery_s": f.recovery_s,
        "memory_tasks": args.memory_tasks, "memory_peak_rss_mb": f.memory_peak_mb,
        "memory_baseline_rss_mb": f.memory_baseline_mb, "memory_submit_s": f.memory_submit_s,
        "cpu_ms_per_task": f.cpu_ms_per_task, "cpu_user_ms_per_task": f.cpu_user_ms_per_task,
        "cpu_sys_ms_per_task": f.cpu_sys_ms_per_task, "cpu_ms_per_task_runs": f.cpu_ms_per_task_runs,
        "server_cpu_ms_per_task": f.server_cpu_ms_per_task,
        "writer_commits_per_task": f.writer_commits_per_task,
        "writer_ops_per_commit": f.writer_ops_per_commit, "writer_busy_share": f.writer_busy_share,
        "replay_events": args.replay_events, "replay_ms": f.replay_ms,
        "decide": f.decide.iter().map(decide_json).collect::<Vec<_>>(),
        "decide_exponent": decide_slope,
        "decide_parallel": f.decide_parallel.iter().map(decide_json).collect::<Vec<_>>(),
        "decide_parallel_exponent": decide_parallel_slope,
    });
    let path = args.json.clone().unwrap_or_else(|| {
        std::path::PathBuf::from(format!("stress/results/bench-{}.json", f.store))
    });
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(&doc)?)
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!("figures written to {}", path.display());
    Ok(())
}

fn decide_json(c: &crate::decide_bench::DecideCost) -> serde_json::Value {
    json!({
        "commands": c.commands, "commands_done": c.commands_done, "decisions": c.decisions,
        "events": c.events, "decide_cpu_s": c.decide_cpu_s, "complete": c.complete,
        "us_per_command": c.us_per_command(),
    })
}

/// The exponent k of `total ∝ length^k` between the shortest and the
/// longest complete lengths of the decide benchmark.
fn slope(costs: &[crate::decide_bench::DecideCost]) -> Option<f64> {
    let done: Vec<_> = costs.iter().filter(|c| c.complete).collect();
    let (a, b) = (done.first()?, done.last()?);
    (b.commands > a.commands).then(|| {
        (b.decide_cpu_s / a.decide_cpu_s).ln() / (b.commands as f64 / a.commands as f64).ln()
    })
}

/// Stores one `events`-event history and times `audit_task` on it (median of 5, ms).
async fn replay_ms(url: &str, events: usize) -> anyhow::Result<f64> {
    let store = mandate_engine::store::open(url).await?;
    let workflows = mandate_workflows::registry();
    let (task_id, _) = crate::replay_bench::store_long_history(store.as_ref(), events).await?;
    let options = mandate_engine::audit::AuditOptions::default();
    let mut runs = Vec::new();
    for _ in 0..5 {
        let t0 = Instant::now();
        let a = mandate_engine::audit::audit_task(store.as_ref(), &workflows, &task_id, &options)
            .await?;
        runs.push(t0.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(
            a.verdict == mandate_engine::audit::Verdict::Ok,
            "the replay history does not hold: {:?}",
            a.problem()
        );
    }
    Ok(median(&runs))
}

/// The machine, for the results file.
fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    let mem_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .unwrap_or(0);
    json!({
        "cpu": cpu,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_gb": (mem_kb as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
    })
}

/// What the store promises on commit, read back from the database.
async fn durability(engine: &Engine, url: &str) -> String {
    match engine.store().backend() {
        mandate_engine::store::Backend::Sqlite => {
            "SQLite WAL, synchronous=FULL (set by the store on every connection)".to_string()
        }
        mandate_engine::store::Backend::Postgres => {
            let show = async {
                let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(url).await?;
                let mut out = Vec::new();
                for setting in [
                    "synchronous_commit",
                    "fsync",
                    "wal_sync_method",
                    "full_page_writes",
                ] {
                    let v: String =
                        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SHOW {setting}")))
                            .fetch_one(&mut c)
                            .await?;
                    out.push(format!("{setting}={v}"));
                }
                Ok::<_, sqlx::Error>(out.join(", "))
            };
            match show.await {
                Ok(s) if s.contains("synchronous_commit=on") && s.contains("fsync=on") => {
                    format!("PostgreSQL {s}")
                }
                Ok(s) => {
                    format!("PostgreSQL {s} — WEAKER THAN DURABLE: figures are not comparable")
                }
                Err(e) => format!("PostgreSQL (settings unreadable: {e})"),
            }
        }
    }
}

async fn measure(args: &BenchArgs, url: &str) -> anyhow::Result<Figures> {
    let stamp = Stamp::default();
    let engine = engine_on(url, Some(Arc::new(stamp.clone()))).await?;
    let store_name = engine.store().backend().as_str();
    let durability = durability(&engine, url).await;

    // The ceiling: one event per transaction, each awaited before the next.
    let raw_appends_per_s = raw_append_rate(&engine, args.appends).await?;

    let worker = engine.start_worker(WorkerConfig {
        eager_start: std::env::var("MANDATE_BENCH_NO_EAGER").is_err(),
        max_active_tasks: args.max_active_tasks,
        ..WorkerConfig::default()
    });
    // Warm up (connections, caches).
    let finals = Finals::start(&engine);
    let warm = submit_five_step(&engine, 50).await?;
    finals.wait(&engine, &warm, Duration::from_secs(60)).await?;
    drop(finals);

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
    lat.sort_by(|a, b| a.total_cmp(b));

    // Throughput: all at once, a few times; the CPU the OS counted for this
    // process (and the PostgreSQL server) over each run, per task.
    let mut runs = Vec::new();
    let (mut cpu_runs, mut user_runs, mut sys_runs, mut server_runs) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut commits_runs, mut batch_runs, mut busy_runs) = (Vec::new(), Vec::new(), Vec::new());
    let writer = engine.store().writer_stats();
    let postgres = engine.store().backend() == mandate_engine::store::Backend::Postgres;
    for _ in 0..args.runs.max(1) {
        let (u0, s0) = crate::stats::process_cpu_s();
        let server0 = postgres.then(crate::stats::postgres_server_cpu_s).flatten();
        let (b0, o0, busy0) = writer.snapshot();
        let t0 = Instant::now();
        let finals = Finals::start(&engine);
        let ids = submit_five_step(&engine, args.tasks).await?;
        finals.wait(&engine, &ids, Duration::from_secs(600)).await?;
        let wall = t0.elapsed().as_secs_f64();
        runs.push(args.tasks as f64 / wall);
        let (b1, o1, busy1) = writer.snapshot();
        commits_runs.push((b1 - b0) as f64 / args.tasks as f64);
        batch_runs.push((o1 - o0) as f64 / (b1 - b0).max(1) as f64);
        busy_runs.push((busy1 - busy0) as f64 / 1e6 / wall);
        let (u1, s1) = crate::stats::process_cpu_s();
        let per = |d: f64| d * 1e3 / args.tasks as f64;
        user_runs.push(per(u1 - u0));
        sys_runs.push(per(s1 - s0));
        cpu_runs.push(per(u1 - u0 + s1 - s0));
        if let (Some(a), Some(b)) = (
            server0,
            postgres.then(crate::stats::postgres_server_cpu_s).flatten(),
        ) {
            server_runs.push(per(b - a));
        }
        for id in ids.iter().step_by((ids.len() / 20).max(1)) {
            anyhow::ensure!(
                engine.task(id).await?.status == TaskStatus::Completed,
                "task {id} did not complete"
            );
        }
    }
    let tasks_per_s = median(&runs);

    let (approval_p50_ms, approval_p99_ms) = if args.approvals > 0 {
        let (a, b) = approval_latency(&engine, &stamp, args.approvals).await?;
        (Some(a), Some(b))
    } else {
        (None, None)
    };
    worker.shutdown().await;
    Ok(Figures {
        store: store_name,
        durability,
        tasks_per_s,
        tasks_per_s_runs: runs,
        steps_per_s: tasks_per_s * 5.0,
        p50_ms: percentile(&lat, 50.0),
        p99_ms: percentile(&lat, 99.0),
        raw_appends_per_s,
        approval_p50_ms,
        approval_p99_ms,
        cpu_ms_per_task: median(&cpu_runs),
        cpu_user_ms_per_task: median(&user_runs),
        cpu_sys_ms_per_task: median(&sys_runs),
        cpu_ms_per_task_runs: cpu_runs,
        server_cpu_ms_per_task: (!server_runs.is_empty()).then(|| median(&server_runs)),
        writer_commits_per_task: median(&commits_runs),
        writer_ops_per_commit: median(&batch_runs),
        writer_busy_share: median(&busy_runs),
        ..Default::default()
    })
}

/// From the approval decision (`Engine::decide_approval` by an approver the
/// request names, as the API and the CLI decide) to the next step's tool
/// starting, for tasks whose driver has let go of them while they wait.
async fn approval_latency(engine: &Engine, stamp: &Stamp, n: usize) -> anyhow::Result<(f64, f64)> {
    let input =
        json!({"stages": [[{"wait_signal": "go", "approval": true}], [{"tool": "bench.stamp"}]]});
    let ids: Vec<String> =
        join_all((0..n).map(|_| engine.submit("saga", input.clone(), Default::default())))
            .await
            .into_iter()
            .map(|r| r.map(|s| s.task_id))
            .collect::<Result<_, _>>()?;
    // Wait until every task shows needs_approval and nobody holds it.
    let deadline = Instant::now() + Duration::from_secs(120);
    for id in &ids {
        loop {
            let row = engine.task(id).await?;
            if row.status == TaskStatus::NeedsApproval && row.lease_owner.is_none() {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "task {id} never came to wait idle for its approval"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let mut lat = Vec::with_capacity(n);
    for id in &ids {
        // Whom the request names (read before the clock starts).
        let (inbox, _) = engine.approval_inbox(Some(id), None).await?;
        let [request] = inbox.as_slice() else {
            anyhow::bail!(
                "task {id} has {} open approval requests, not one",
                inbox.len()
            );
        };
        let approver = request
            .approvers
            .first()
            .with_context(|| format!("the approval request of task {id} names no approver"))?
            .clone();
        let started = stamp.notify.notified();
        tokio::pin!(started);
        started.as_mut().enable();
        let t0 = Instant::now();
        engine
            .decide_approval(
                id,
                ApprovalTarget::Seq(request.request_seq),
                &approver,
                ApprovalDecision {
                    approved: true,
                    via: Some("bench".into()),
                    ..Default::default()
                },
            )
            .await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(t) = stamp.started.lock().expect("stamps").get(id) {
                lat.push(t.duration_since(t0).as_secs_f64() * 1e3);
                break;
            }
            tokio::select! {
                _ = started.as_mut() => {
                    started.set(stamp.notify.notified());
                    started.as_mut().enable();
                }
                _ = tokio::time::sleep_until(deadline) => anyhow::bail!("the step after the approval of {id} never started"),
            }
        }
    }
    wait_all_final(engine, &ids, Duration::from_secs(60)).await?;
    lat.sort_by(|a, b| a.total_cmp(b));
    Ok((percentile(&lat, 50.0), percentile(&lat, 99.0)))
}

/// `bench.hold` (read): the step the recovery measurement kills its engine
/// process in. In the first process (`--hold`) it prints `started <task
/// id>` on stdout, so the parent knows the call is running, and never
/// returns; in the process that takes over it returns its input at once, so
/// the recovery figure is the engine's (lease expiry, take-over, re-run,
/// the rest of the task), not a tool's duration.
struct Hold {
    hold: bool,
}

impl Tool for Hold {
    fn name(&self) -> &str {
        "bench.hold"
    }
    fn kind(&self) -> ToolKind {
        ToolKind::Read
    }
    fn call<'a>(&'a self, ctx: ToolContext, input: Value) -> BoxFuture<'a, ToolResult> {
        if self.hold {
            println!("started {}", ctx.task_id);
            futures::future::pending().boxed()
        } else {
            futures::future::ready(Ok(input)).boxed()
        }
    }
}

/// SIGKILL an engine process with `recovery_tasks` tasks mid-step (each
/// one's `bench.hold` call running in it), start a new one at once, and
/// time until every task is final.
async fn recovery(args: &BenchArgs, url: &str) -> anyhow::Result<f64> {
    // The submitter runs no worker: the children do all the work.
    let engine = engine_on(url, None).await?;
    let input = json!({"stages": [
        // Longer than the hold can last, so no attempt times out before the kill.
        [{"tool": "bench.hold", "input": {}, "timeout_ms": 3_600_000}],
        [{"tool": "test.echo", "input": {}}],
    ]});
    let ids: Vec<String> = join_all(
        (0..args.recovery_tasks).map(|_| engine.submit("saga", input.clone(), Default::default())),
    )
    .await
    .into_iter()
    .map(|r| r.map(|s| s.task_id))
    .collect::<Result<_, _>>()?;
    let spawn = |name: &str, hold: bool| -> anyhow::Result<tokio::process::Child> {
        let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
        cmd.args([
            "bench-worker",
            "--db",
            url,
            "--worker-id",
            name,
            "--lease-ms",
            &args.recovery_lease_ms.to_string(),
        ]);
        if hold {
            cmd.arg("--hold");
        }
        Ok(cmd
            .stdin(Stdio::piped())
            .stdout(if hold { Stdio::piped() } else { Stdio::null() })
            .kill_on_drop(true)
            .spawn()?)
    };
    let mut first = spawn("recovery-first", true)?;
    // In flight: every task's step call running in the first process, as it
    // says on its stdout.
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
        first.stdout.take().context("the first child's stdout")?,
    ));
    let wanted: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
    let mut started = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while started.len() < wanted.len() {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "only {} of {} steps started in the first engine process within 300 s",
                    started.len(),
                    wanted.len()
                )
            })??
            .with_context(|| {
                format!(
                    "the first engine process ended with {} of {} steps started",
                    started.len(),
                    wanted.len()
                )
            })?;
        if let Some(id) = line.strip_prefix("started ")
            && let Some(id) = wanted.get(id)
        {
            started.insert(*id);
        }
    }
    let counts = engine.store().count_by_status().await?;
    anyhow::ensure!(
        counts.iter().all(|(s, n)| !s.is_final() || *n == 0),
        "tasks ended while their steps were held: {counts:?}"
    );
    first.start_kill()?;
    let t0 = Instant::now();
    first.wait().await?;
    let mut second = spawn("recovery-second", false)?;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let counts = engine.store().count_by_status().await?;
        if counts.iter().all(|(s, _)| s.is_final()) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "tasks still unfinished 300 s after the kill: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = t0.elapsed().as_secs_f64();
    drop(second.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(10), second.wait()).await;
    // Each task completed, and its step was taken over mid-call (re-run as
    // a new attempt by the second process), not merely finished by it.
    for id in &ids {
        anyhow::ensure!(
            engine.task(id).await?.status == TaskStatus::Completed,
            "task {id} did not complete after the recovery"
        );
        anyhow::ensure!(
            engine
                .history(id)
                .await?
                .iter()
                .any(|e| matches!(e.payload, EventPayload::StepAttemptRestarted { .. })),
            "task {id} completed without its held step being re-run"
        );
    }
    Ok(took)
}

pub async fn run_worker(args: BenchWorkerArgs) -> anyhow::Result<()> {
    let hold: Arc<dyn Tool> = Arc::new(Hold { hold: args.hold });
    let engine = engine_on(&args.db, Some(hold)).await?;
    let worker = engine.start_worker(WorkerConfig {
        id: args.worker_id,
        lease_ms: args.lease_ms,
        eager_start: false,
        ..WorkerConfig::default()
    });
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while matches!(tokio::io::AsyncReadExt::read(&mut stdin, &mut buf).await, Ok(n) if n > 0) {}
    worker.shutdown().await;
    Ok(())
}

/// Peak RSS of this process (engine and worker in process) with
/// `memory_tasks` tasks waiting on a signal. Returns (baseline MB before
/// submitting, peak MB, seconds the submissions took).
async fn memory(args: &BenchArgs, url: &str) -> anyhow::Result<(f64, f64, f64)> {
    let engine = engine_on(url, None).await?;
    let worker = engine.start_worker(WorkerConfig {
        max_active_tasks: args.max_active_tasks,
        ..WorkerConfig::default()
    });
    // The peak so far belongs to the earlier measurements in this process.
    anyhow::ensure!(
        crate::stats::reset_peak_rss(),
        "cannot reset the peak RSS (/proc/self/clear_refs): the memory figure would include the earlier measurements"
    );
    let baseline = proc_status_kb("VmRSS").unwrap_or(0) as f64 / 1024.0;
    let input = json!({"stages": [[{"wait_signal": "go", "approval": true}]]});
    let t0 = Instant::now();
    let mut submitted = 0;
    while submitted < args.memory_tasks {
        let n = (args.memory_tasks - submitted).min(1_000);
        for r in
            join_all((0..n).map(|_| engine.submit("saga", input.clone(), Default::default()))).await
        {
            r?;
        }
        submitted += n;
    }
    let submit_s = t0.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let counts = engine.store().count_by_status().await?;
        let waiting: i64 = counts
            .iter()
            .filter(|(s, _)| *s == TaskStatus::NeedsApproval)
            .map(|(_, n)| n)
            .sum();
        if waiting as usize >= args.memory_tasks {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {waiting} tasks came to wait"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let the drivers that still hold a task go idle and give it back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let peak = proc_status_kb("VmHWM").unwrap_or(0) as f64 / 1024.0;
    worker.shutdown().await;
    Ok((baseline, peak, submit_s))
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
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Finals` sees tasks that ended before `wait` was called (after it
    /// started), and falls back to reading the store when updates were lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn finals_sees_every_task_of_a_batch() -> anyhow::Result<()> {
        let fresh = FreshDb::create("sqlite").await?;
        let engine = engine_on(&fresh.url, None).await?;
        let worker = engine.start_worker(WorkerConfig::default());

        let finals = Finals::start(&engine);
        let ids = submit_five_step(&engine, 20).await?;
        // Let them all end before waiting: their updates must not be lost.
        for id in &ids {
            engine.wait_until_final(id, Duration::from_secs(30)).await?;
        }
        finals.wait(&engine, &ids, Duration::from_secs(30)).await?;
        for id in &ids {
            assert_eq!(engine.task(id).await?.status, TaskStatus::Completed);
        }

        // Updates lost to a lagging channel: the stragglers are read instead.
        let lost = Finals::start(&engine);
        lost.watcher.abort();
        let more = submit_five_step(&engine, 5).await?;
        for id in &more {
            engine.wait_until_final(id, Duration::from_secs(30)).await?;
        }
        lost.seen.lock().expect("finals").lagged = true;
        lost.wait(&engine, &more, Duration::from_secs(30)).await?;

        // Without the fallback nothing would end this wait: a task never seen
        // final times out with how many are missing.
        let never = Finals::start(&engine);
        never.watcher.abort();
        let err = never
            .wait(&engine, &more, Duration::from_millis(200))
            .await
            .expect_err("no updates and no lag: nothing is seen final");
        assert!(err.to_string().contains("5 tasks not final"), "{err}");

        worker.shutdown().await;
        fresh.drop_now().await;
        Ok(())
    }

    /// `FinalWaits` ends each waiter's wait on its own task's final update,
    /// whether the task ended before or after the wait began; after missed
    /// updates it reads the task; with neither, the wait times out.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn final_waits_end_each_wait_on_its_own_task() -> anyhow::Result<()> {
        let fresh = FreshDb::create("sqlite").await?;
        let engine = engine_on(&fresh.url, None).await?;
        let worker = engine.start_worker(WorkerConfig::default());

        let waits = Arc::new(FinalWaits::start(&engine));
        let ids = submit_five_step(&engine, 20).await?;
        // Half end before anyone waits; half are waited on at once.
        for id in &ids[..10] {
            engine.wait_until_final(id, Duration::from_secs(30)).await?;
        }
        join_all(ids.iter().map(|id| {
            let (waits, engine) = (waits.clone(), engine.clone());
            async move { waits.wait(&engine, id, Duration::from_secs(30)).await }
        }))
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<()>>>()?;
        for id in &ids {
            assert_eq!(engine.task(id).await?.status, TaskStatus::Completed);
        }
        assert!(waits.state.lock().expect("final waits").waiting.is_empty());

        // Updates missed: the waiter reads the task instead.
        let lost = FinalWaits::start(&engine);
        lost.watcher.abort();
        let more = submit_five_step(&engine, 2).await?;
        engine
            .wait_until_final(&more[0], Duration::from_secs(30))
            .await?;
        lost.state.lock().expect("final waits").lags = 1;
        lost.wait(&engine, &more[0], Duration::from_secs(30))
            .await?;

        // Neither an update nor a lag: the wait times out, naming the task.
        let never = FinalWaits::start(&engine);
        never.watcher.abort();
        engine
            .wait_until_final(&more[1], Duration::from_secs(30))
            .await?;
        let err = never
            .wait(&engine, &more[1], Duration::from_millis(200))
            .await
            .expect_err("no update and no lag: nothing ends the wait");
        assert!(err.to_string().contains(more[1].as_str()), "{err}");

        worker.shutdown().await;
        fresh.drop_now().await;
        Ok(())
    }
}
