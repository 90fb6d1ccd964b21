//! `mandate-stress replay-bench`: how long `mandate replay` takes on a long
//! history, and how much memory `mandate verify` needs over many tasks.
//!
//! - A history of `--events` events (default 10,000, the history limit) is
//!   built the way the engine builds one — `decide` driving the built-in
//!   `saga` workflow over 1,000 steps, each failing a few attempts before it
//!   succeeds, with signals arriving in between — and stored with one append.
//!   `audit::audit_task` (read, verify the chain, fold, compare, re-run the
//!   workflow code) is then timed; the median of `--runs` is reported, with
//!   the read and the judging apart.
//! - With `--tasks N`, N small tasks are stored (batched appends, group
//!   commit), peak RSS is reset, and the `verify --all` sweep runs over them;
//!   the peak RSS of the sweep is read from `/proc/self/status` (VmHWM).
//!
//! Measures only; asserts nothing but that the audits find the tasks intact.

use std::time::{Duration, Instant};

use anyhow::Context;
use futures::future::join_all;
use mandate_activities::ToolRegistry;
use mandate_engine::audit::{self, AuditOptions, SweepOptions, Verdict};
use mandate_engine::core::decide::{self, AttemptOutcome, DecideInput, Target};
use mandate_engine::core::event::{Event, NewEvent, RecordedError, seal};
use mandate_engine::core::workflow::Workflow;
use mandate_engine::store::{AppendOutcome, AppendRequest, LeaseUpdate, NewTask, Store};
use mandate_engine::{EventPayload, Limits, TaskState};
use serde_json::{Value, json};

use crate::freshdb::FreshDb;

#[derive(clap::Args, Debug, Clone)]
pub struct ReplayBenchArgs {
    /// `sqlite` (a temporary file), `sqlite://PATH` (kept, e.g. to run
    /// `mandate replay` / `mandate verify` on it afterwards), or a PostgreSQL
    /// URL (a fresh database is created on its server and dropped).
    #[arg(long, default_value = "sqlite")]
    pub db: String,
    /// Events in the history whose replay is timed.
    #[arg(long, default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(10..=100_000))]
    pub events: u64,
    /// Timed replays; the median is reported.
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub runs: u64,
    /// Also store this many small tasks and measure the peak RSS of the
    /// `verify --all` sweep over them.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub tasks: Option<u64>,
}

pub async fn run(args: ReplayBenchArgs) -> anyhow::Result<()> {
    // A sqlite://PATH is the user's to keep; anything else is fresh and dropped.
    let (url, fresh) = if args.db.starts_with("sqlite://") {
        (args.db.clone(), None)
    } else {
        let fresh = FreshDb::create(&args.db).await?;
        (fresh.url.clone(), Some(fresh))
    };
    let result = measure(&args, &url).await;
    if let Some(f) = fresh {
        f.drop_now().await;
    }
    result
}

async fn measure(args: &ReplayBenchArgs, url: &str) -> anyhow::Result<()> {
    let store = mandate_engine::store::open(url).await?;
    let workflows = mandate_workflows::registry();
    println!(
        "store                            {}",
        store.backend().as_str()
    );

    let built = Instant::now();
    let (task_id, shape) = store_long_history(store.as_ref(), args.events as usize).await?;
    println!(
        "history                          {} events: {shape} (built and stored in {:.1} s)",
        args.events,
        built.elapsed().as_secs_f64()
    );
    println!("task                             {task_id}");

    let options = AuditOptions::default();
    let mut total = Vec::new();
    let mut read = Vec::new();
    let mut judge = Vec::new();
    for _ in 0..args.runs {
        let t0 = Instant::now();
        let a = audit::audit_task(store.as_ref(), &workflows, &task_id, &options).await?;
        total.push(t0.elapsed());
        anyhow::ensure!(
            a.verdict == Verdict::Ok,
            "the benchmark history does not hold: {:?}",
            a.problem()
        );
        anyhow::ensure!(
            a.event_count == args.events as usize,
            "wrong history length"
        );
        let t0 = Instant::now();
        let stored = audit::read_task(store.as_ref(), &task_id).await?;
        read.push(t0.elapsed());
        let t0 = Instant::now();
        let a = audit::audit_stored(&task_id, &stored, &workflows, &options);
        judge.push(t0.elapsed());
        anyhow::ensure!(a.verdict == Verdict::Ok);
    }
    println!(
        "replay (audit_task), median      {}  (min {}, max {}; {} runs)",
        ms(median(&mut total)),
        ms(total[0]),
        ms(total[total.len() - 1]),
        args.runs
    );
    println!("  read the rows (I/O)            {}", ms(median(&mut read)));
    println!(
        "  chain + fold + compare + re-run {}",
        ms(median(&mut judge))
    );
    // Where the judging time goes, on the last read.
    let stored = audit::read_task(store.as_ref(), &task_id).await?;
    let t0 = Instant::now();
    let chain = audit::check_chain(&task_id, &stored.events, None);
    let t_chain = t0.elapsed();
    anyhow::ensure!(chain.is_ok());
    let t0 = Instant::now();
    let events: Vec<Event> = stored
        .events
        .iter()
        .map(mandate_engine::core::event::parse)
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!(e))?;
    let t_parse = t0.elapsed();
    let t0 = Instant::now();
    let state = TaskState::fold(&events);
    let t_fold = t0.elapsed();
    let saga = workflows.get(&state.workflow).context("saga")?;
    let t0 = Instant::now();
    mandate_engine::core::workflow::check_history(saga.as_ref(), &events)?;
    let t_replay = t0.elapsed();
    println!(
        "    of which: chain {}, parse {}, fold {}, re-run the code {}",
        ms(t_chain),
        ms(t_parse),
        ms(t_fold),
        ms(t_replay)
    );
    if url.starts_with("sqlite://") && !args.db.eq("sqlite") {
        println!("cli                              time mandate replay {task_id} --db {url}");
    }

    if let Some(n) = args.tasks {
        verify_memory(store.as_ref(), &workflows, n as usize).await?;
    }
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Sorts `v` and returns its median.
fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// A saga of `steps` echo steps, each allowed `attempts` attempts.
fn saga_input(steps: usize, attempts: u32) -> Value {
    let stages: Vec<Value> = (0..steps)
        .map(|i| {
            json!([{
                "tool": "test.echo",
                "input": {"step": i, "note": "replay benchmark"},
                "retry": {"max_attempts": attempts, "initial_backoff_ms": 10, "max_backoff_ms": 10},
            }])
        })
        .collect();
    json!({ "stages": stages })
}

/// Drives `decide` over the saga with synthetic attempt outcomes — each step
/// fails `failures` times, then succeeds — and, after each step, records one of
/// `signals` signals. Returns the sealed history.
fn build_history(
    task_id: &str,
    saga: &dyn Workflow,
    steps: usize,
    failures: u32,
    mut signals: usize,
    t0: i64,
) -> Vec<Event> {
    let tools = ToolRegistry::new();
    // The benchmark history may be longer than the default limit (`--events`).
    let limits = Limits {
        max_history_events: 10_000_000,
        ..Limits::default()
    };
    let mut now = t0;
    let submitted = [NewEvent {
        actor: "agent:bench".into(),
        payload: EventPayload::TaskSubmitted {
            workflow: "saga".into(),
            workflow_version: saga.version(),
            input: saga_input(steps, failures + 1),
            agent: None,
            on_behalf_of: Some("user-bench".into()),
            idempotency_key: None,
        },
    }];
    let mut history: Vec<Event> = seal(task_id, 0, "", now, &submitted)
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    let mut state = TaskState::fold(&history);
    let mut outcomes: Vec<AttemptOutcome> = Vec::new();
    let governance = mandate_activities::Governance::shipped();
    while !state.is_final() {
        now += 3;
        let decision = decide::decide(
            &DecideInput {
                history: &history,
                now_ms: now,
                outcomes: &outcomes,
                workflow: Some(saga),
                tools: &tools,
                gateway: &governance,
                preapprovals: &[],
                worker: "bench",
                limits: &limits,
                halt: None,
                inherited: &Default::default(),
            },
            state.clone(),
        );
        assert!(
            !decision.events.is_empty(),
            "the saga stalled at seq {}",
            state.last_seq
        );
        append(&mut history, &mut state, now, &decision.events);
        assert!(
            state.blocked.is_none(),
            "the saga was blocked: {:?}",
            state.blocked
        );
        if signals > 0 && !state.is_final() {
            signals -= 1;
            let signal = [NewEvent {
                actor: "user:operator".into(),
                payload: EventPayload::SignalReceived {
                    name: "note".into(),
                    payload: json!({"seq": state.last_seq}),
                    sender: "user:operator".into(),
                },
            }];
            append(&mut history, &mut state, now, &signal);
        }
        // Every attempt of every open step, recorded in one go: the fails, then the success.
        outcomes = decide::actions(&state, now)
            .into_iter()
            .flat_map(|a| {
                let Target::Step(_) = a.target else {
                    unreachable!("nothing is compensated in the benchmark saga")
                };
                (1..=failures + 1).map(move |attempt| AttemptOutcome {
                    target: a.target,
                    attempt,
                    result: if attempt <= failures {
                        Err(RecordedError {
                            message: format!("transient failure {attempt}: connection reset"),
                            retryable: true,
                            effect_unknown: false,
                        })
                    } else {
                        Ok(a.input.clone())
                    },
                    started_at_ms: now,
                    duration_ms: 1,
                })
            })
            .collect();
    }
    history
}

fn append(history: &mut Vec<Event>, state: &mut TaskState, now: i64, new: &[NewEvent]) {
    let sealed = seal(&state.task_id, state.last_seq, &state.last_hash, now, new);
    for (e, _) in sealed {
        state.apply(&e.task_id, e.seq, e.recorded_at_ms, &e.payload);
        state.last_hash = e.hash.clone();
        history.push(e);
    }
}

/// The request that stores a whole history as a new task.
fn create_request(history: &[Event]) -> AppendRequest {
    let state = TaskState::fold(history);
    let now = state.updated_at_ms;
    let first = &history[0];
    AppendRequest {
        task_id: first.task_id.clone(),
        expected_seq: 0,
        events: history
            .iter()
            .map(|e| {
                let (_, payload) = e.payload.payload_forms().expect("a sealed payload");
                mandate_engine::core::chain::SealedEvent {
                    task_id: e.task_id.clone(),
                    seq: e.seq,
                    event_type: e.payload.type_name().to_string(),
                    recorded_at_ms: e.recorded_at_ms,
                    actor: e.actor.clone(),
                    payload,
                    prev_hash: e.prev_hash.clone(),
                    hash: e.hash.clone(),
                }
            })
            .collect(),
        projection: decide::projection(&state, now),
        timers: Some(state.pending_timers()),
        create: Some(NewTask {
            workflow: state.workflow.clone(),
            workflow_version: state.workflow_version,
            agent: state.agent.clone(),
            idempotency_key: None,
            created_at_ms: first.recorded_at_ms,
            lease_owner: None,
        }),
        lease: LeaseUpdate::Keep,
        wake: false,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Builds and stores a history of exactly `events` events; returns its task id
/// and a description of its shape.
pub(crate) async fn store_long_history(
    store: &dyn Store,
    events: usize,
) -> anyhow::Result<(String, String)> {
    let workflows = mandate_workflows::registry();
    let saga = workflows
        .get("saga")
        .context("the saga workflow is built in")?;
    // submitted + started + completed, then per step: the gateway's
    // decision, scheduled, the failures, completed.
    let steps = (events / 10).clamp(1, Limits::default().max_commands_per_task);
    let failures = ((events.saturating_sub(3) / steps).saturating_sub(3)).min(50) as u32;
    let signals = events.saturating_sub(3 + steps * (3 + failures as usize));
    let task_id = uuid::Uuid::now_v7().to_string();
    let history = build_history(&task_id, saga.as_ref(), steps, failures, signals, now_ms());
    anyhow::ensure!(
        history.len() == events,
        "built {} events instead of {events}",
        history.len()
    );
    let outcome = store.append(create_request(&history)).await?;
    anyhow::ensure!(outcome == AppendOutcome::Appended, "append: {outcome:?}");
    Ok((
        task_id,
        format!("{steps} steps × {failures} failed attempts + a success, {signals} signals"),
    ))
}

/// A process's memory figures from `/proc/self/status`, in KiB.
fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Stores `n` small tasks (nine in ten completed, one in ten still queued),
/// then measures the `verify --all` sweep over them.
async fn verify_memory(
    store: &dyn Store,
    workflows: &mandate_engine::WorkflowRegistry,
    n: usize,
) -> anyhow::Result<()> {
    let saga = workflows
        .get("saga")
        .context("the saga workflow is built in")?;
    let template = build_history("template", saga.as_ref(), 1, 0, 0, now_ms());
    let new_events: Vec<NewEvent> = template
        .iter()
        .map(|e| NewEvent {
            actor: e.actor.clone(),
            payload: e.payload.clone(),
        })
        .collect();
    let t0 = Instant::now();
    const BATCH: usize = 2_000;
    let mut made = 0;
    while made < n {
        let count = BATCH.min(n - made);
        let requests: Vec<AppendRequest> = (0..count)
            .map(|i| {
                let id = uuid::Uuid::now_v7().to_string();
                let len = if (made + i) % 10 == 9 {
                    1
                } else {
                    new_events.len()
                };
                let history: Vec<Event> = seal(&id, 0, "", now_ms(), &new_events[..len])
                    .into_iter()
                    .map(|(e, _)| e)
                    .collect();
                create_request(&history)
            })
            .collect();
        for outcome in join_all(requests.into_iter().map(|r| store.append(r))).await {
            anyhow::ensure!(outcome? == AppendOutcome::Appended, "a task was not stored");
        }
        made += count;
    }
    println!(
        "verify: stored                   {n} tasks ({} events each, 1 in 10 queued with 1) in {:.1} s",
        new_events.len(),
        t0.elapsed().as_secs_f64()
    );
    let before_kib = proc_status_kib("VmHWM:");
    // Reset the peak so that it measures the sweep alone (Linux ≥ 4.0).
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let rss_start = proc_status_kib("VmRSS:");
    let t0 = Instant::now();
    let options = SweepOptions {
        audit: AuditOptions {
            check_determinism: false,
        },
        ..SweepOptions::default()
    };
    let summary = audit::sweep(store, workflows, &options, &mut |_| {}).await?;
    let took = t0.elapsed().as_secs_f64();
    anyhow::ensure!(
        summary.worst() == Verdict::Ok,
        "verify found bad tasks: {:?}",
        summary.bad.first()
    );
    let peak = proc_status_kib("VmHWM:");
    println!(
        "verify --all sweep               {} tasks in {took:.1} s ({:.0} tasks/s)",
        summary.checked,
        summary.checked as f64 / took
    );
    let mib = |k: Option<u64>| {
        k.map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
            .unwrap_or_else(|| "?".into())
    };
    println!(
        "  peak RSS during the sweep      {}  (RSS at its start {}; {})",
        mib(peak),
        mib(rss_start),
        if reset {
            "peak reset before the sweep".to_string()
        } else {
            format!(
                "peak could not be reset; process peak before the sweep was {}",
                mib(before_kib)
            )
        }
    );
    Ok(())
}
