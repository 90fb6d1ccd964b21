//! Rollback when an attempt may be out that the engine no longer waits for:
//! a retry in flight when the rollback starts, and an attempt a stalled
//! worker started before another worker took its task over. Either attempt
//! may apply its effect; the rollback must undo it (or fence it off), and
//! the stalled worker must write nothing once it lost the lease.
//!
//! The kill switch meets the same question: a halt must let the attempts
//! in flight finish and record them, and run nothing twice after the lift.
//!
//! Orders are forced with gates the test opens, never with sleeps.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use mandate_activities::demo::names::KV_DELETE;
use mandate_activities::{Tool, ToolContext, ToolError, ToolKind, ToolResult, World, world};
use mandate_engine::runtime::Clock;
use mandate_engine::{EventPayload, Limits, TaskStatus};
use mandate_tests::{Backend, Harness, TestDb, backend_tests, engine_with_clock};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc, watch};

/// How long a test waits for something the engine must do; a bound on a
/// hang, never a pause.
const WAIT: Duration = Duration::from_secs(30);

fn put(
    world: &World,
    ctx: &ToolContext,
    key: &str,
) -> BoxFuture<'static, Result<Value, world::Error>> {
    let (world, ctx, key) = (world.clone(), ctx.clone(), key.to_string());
    async move {
        world
            .apply_call(&ctx, "test.put", "kv", &key, |_| {
                Ok((Some(json!("written")), json!({"key": key})))
            })
            .await
    }
    .boxed()
}

/// `flaky.put`: attempt 1 fails (retryable, nothing applied); attempt 2
/// applies its write, says so on `applied`, and never answers, like a call
/// whose response is slow to come back.
struct FlakyPut {
    world: World,
    applied: Arc<Notify>,
}

impl Tool for FlakyPut {
    fn name(&self) -> &str {
        "flaky.put"
    }
    fn kind(&self) -> ToolKind {
        ToolKind::WriteReversible
    }
    fn call<'a>(&'a self, ctx: ToolContext, input: Value) -> BoxFuture<'a, ToolResult> {
        async move {
            if ctx.attempt == 1 {
                return Err(ToolError::retryable("flaky.put: busy, try again"));
            }
            let key = input["key"].as_str().unwrap_or("k").to_string();
            put(&self.world, &ctx, &key)
                .await
                .map_err(|e| ToolError::retryable(e.to_string()))?;
            self.applied.notify_one();
            futures::future::pending().await
        }
        .boxed()
    }
}

fn step_failed(
    history: &[mandate_engine::Event],
    step: i64,
) -> mandate_engine::core::event::RecordedError {
    history
        .iter()
        .find_map(|e| match &e.payload {
            EventPayload::StepFailed {
                step_seq, error, ..
            } if *step_seq == step => Some(error.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("step {step} was not recorded failed"))
}

fn compensated(history: &[mandate_engine::Event], step: i64) -> bool {
    let started = history.iter().find_map(|e| match &e.payload {
        EventPayload::CompensationStarted { step_seq, .. } if *step_seq == step => Some(e.seq),
        _ => None,
    });
    started.is_some_and(|c| {
        history.iter().any(|e| {
            matches!(&e.payload, EventPayload::CompensationCompleted { compensation_seq, .. } if *compensation_seq == c)
        })
    })
}

fn scheduled_seq(history: &[mandate_engine::Event], name: &str) -> i64 {
    history
        .iter()
        .find(|e| matches!(&e.payload, EventPayload::StepScheduled { name: n, .. } if n == name))
        .unwrap_or_else(|| panic!("step {name} was not scheduled"))
        .seq
}

/// A step's retry is running (its write already applied, its answer not
/// back) when the task is cancelled with rollback. Nothing records that the
/// retry started, so the rollback must treat the step's effect as unknown
/// and compensate it; before, the step was abandoned as never applied and
/// its write stayed behind. (A plan whose branch fails meets the same case.)
async fn a_retry_in_flight_when_the_rollback_starts_is_undone(b: Backend) {
    let db = TestDb::new(b).await;
    let world = World::connect(&db.url).await.expect("open world");
    let applied = Arc::new(Notify::new());
    let mut h = Harness::on(db, Limits::default(), |_, tools| {
        tools.register(FlakyPut {
            world,
            applied: applied.clone(),
        });
    })
    .await;
    h.start_worker();
    let id = h
        .engine
        .submit(
            "saga",
            json!({"stages": [[
                {"name": "put", "tool": "flaky.put", "input": {"key": "r"},
                 "retry": {"max_attempts": 3, "initial_backoff_ms": 1, "max_backoff_ms": 1},
                 "compensate": {"tool": KV_DELETE, "input": {"key": "r"}}},
            ]]}),
            Default::default(),
        )
        .await
        .expect("submit")
        .task_id;
    tokio::time::timeout(WAIT, applied.notified())
        .await
        .expect("the retry applied its write");
    h.engine
        .cancel(&id, true, "operator:test", Some("stop it".into()))
        .await
        .expect("cancel");
    let row = h.engine.wait_until_final(&id, WAIT).await.expect("final");
    assert_eq!(row.status, TaskStatus::Cancelled);
    let history = h.engine.history(&id).await.unwrap();
    let put = scheduled_seq(&history, "put");
    let error = step_failed(&history, put);
    assert!(
        error.effect_unknown && error.message.contains("may have started"),
        "{error:?}"
    );
    assert!(
        compensated(&history, put),
        "the abandoned retry was not undone"
    );
    assert_eq!(
        h.world.get("kv", "r").await.unwrap(),
        None,
        "the retry's write was left behind by the rollback"
    );
    h.assert_replays(&id).await;
}

/// A clock running an hour ahead: to it, every other worker's lease has
/// long expired (as if that worker had stalled).
struct Ahead;

impl Clock for Ahead {
    fn now_ms(&self) -> i64 {
        mandate_engine::runtime::SystemClock.now_ms() + 3_600_000
    }
}

/// Worker A's attempt (`twin.put` on A) starts, reports on `entered`, and
/// waits for `release`; then it applies through the world and reports what
/// happened on `late`.
struct SlowTwin {
    world: World,
    entered: mpsc::UnboundedSender<ToolContext>,
    release: Arc<Notify>,
    late: mpsc::UnboundedSender<Result<Value, world::Error>>,
}

impl Tool for SlowTwin {
    fn name(&self) -> &str {
        "twin.put"
    }
    fn kind(&self) -> ToolKind {
        ToolKind::WriteReversible
    }
    fn call<'a>(&'a self, ctx: ToolContext, input: Value) -> BoxFuture<'a, ToolResult> {
        async move {
            let _ = self.entered.send(ctx.clone());
            self.release.notified().await;
            let key = input["key"].as_str().unwrap_or("k").to_string();
            let result = put(&self.world, &ctx, &key).await;
            let answer = match &result {
                Ok(v) => Ok(v.clone()),
                Err(e) => Err(ToolError::non_retryable(e.to_string())),
            };
            let _ = self.late.send(result);
            answer
        }
        .boxed()
    }
}

/// Worker B's `twin.put`: the service refuses the repeated call for good
/// (say, because the first one is still in progress). Reports each call's
/// attempt number on `attempts`.
struct RefusingTwin {
    attempts: mpsc::UnboundedSender<u32>,
}

impl Tool for RefusingTwin {
    fn name(&self) -> &str {
        "twin.put"
    }
    fn kind(&self) -> ToolKind {
        ToolKind::WriteReversible
    }
    fn call<'a>(&'a self, ctx: ToolContext, _: Value) -> BoxFuture<'a, ToolResult> {
        let _ = self.attempts.send(ctx.attempt);
        async {
            Err(ToolError::non_retryable(
                "twin.put: refused, a call is in progress",
            ))
        }
        .boxed()
    }
}

/// Worker A stalls mid-attempt past its lease; worker B takes the task over
/// and repeats the attempt, which fails for good. B cannot know A's attempt
/// applied nothing, so the step's effect is unknown and the rollback
/// compensates it, fencing the key; when A's attempt finally applies, the
/// fence refuses it, and A, having lost the lease, appends nothing.
///
/// B's call is a re-run, so it is attempt 2, recorded by B
/// (`StepAttemptRestarted`) before it is made, and the tool is told so.
async fn a_stalled_workers_attempt_is_fenced_after_a_takeover(b: Backend) {
    let db = TestDb::new(b).await;
    let (entered_tx, mut entered) = mpsc::unbounded_channel();
    let (late_tx, mut late) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let world_a = World::connect(&db.url).await.expect("open world");
    let (engine_a, world) = {
        let release = release.clone();
        let world_a = world_a.clone();
        engine_with_clock(
            &db.url,
            Limits::default(),
            Arc::new(mandate_engine::runtime::SystemClock),
            move |_, tools| {
                tools.register(SlowTwin {
                    world: world_a,
                    entered: entered_tx,
                    release,
                    late: late_tx,
                });
            },
        )
        .await
    };
    let (b_attempts_tx, mut b_attempts) = mpsc::unbounded_channel();
    let (engine_b, _) =
        engine_with_clock(&db.url, Limits::default(), Arc::new(Ahead), |_, tools| {
            tools.register(RefusingTwin {
                attempts: b_attempts_tx,
            });
        })
        .await;

    let config_a = mandate_tests::test_worker_config();
    let actor_a = format!("worker:{}", config_a.id);
    let worker_a = engine_a.start_worker(config_a);
    let id = engine_a
        .submit(
            "saga",
            json!({"stages": [[{
                "name": "put", "tool": "twin.put", "input": {"key": "t"},
                "retry": {"max_attempts": 1},
                "compensate": {"tool": KV_DELETE, "input": {"key": "t"}},
            }]]}),
            Default::default(),
        )
        .await
        .expect("submit")
        .task_id;
    let a_ctx = tokio::time::timeout(WAIT, entered.recv())
        .await
        .expect("A's attempt started")
        .expect("A's attempt reported");

    // B sees A's lease as expired, takes the task over and rolls it back.
    let config_b = mandate_tests::test_worker_config();
    let actor_b = format!("worker:{}", config_b.id);
    let worker_b = engine_b.start_worker(config_b);
    let row = engine_b.wait_until_final(&id, WAIT).await.expect("final");
    assert_eq!(row.status, TaskStatus::FailedTerminal);
    let history = engine_b.history(&id).await.unwrap();
    let put_seq = scheduled_seq(&history, "put");
    assert_eq!(a_ctx.idempotency_key, format!("{id}:{put_seq}"));
    assert_eq!(a_ctx.attempt, 1);
    assert_eq!(b_attempts.try_recv(), Ok(2), "B's re-run was not attempt 2");
    assert!(b_attempts.try_recv().is_err(), "B called more than once");
    let restarted = history
        .iter()
        .position(|e| {
            e.actor == actor_b
                && matches!(&e.payload, EventPayload::StepAttemptRestarted { step_seq, attempt: 2, .. } if *step_seq == put_seq)
        })
        .expect("B recorded the re-run as attempt 2");
    let failed = history
        .iter()
        .position(|e| matches!(&e.payload, EventPayload::StepFailed { step_seq, attempt: 2, .. } if *step_seq == put_seq))
        .expect("the step failed on attempt 2");
    assert!(restarted < failed);
    let error = step_failed(&history, put_seq);
    assert!(
        error.effect_unknown && error.message.contains("took the task over"),
        "{error:?}"
    );
    assert!(compensated(&history, put_seq));

    // Now A's attempt applies: refused by the compensation's fence.
    release.notify_one();
    let late_result = tokio::time::timeout(WAIT, late.recv())
        .await
        .expect("A's attempt finished")
        .expect("A's attempt reported");
    assert!(
        matches!(late_result, Err(world::Error::Fenced { .. })),
        "{late_result:?}"
    );
    assert_eq!(world.get("kv", "t").await.unwrap(), None);
    assert_eq!(world.fence_count().await.unwrap(), 1);

    // A appended nothing after the takeover (it only started the task),
    // whether its driver already tried (and lost the lease) or not.
    worker_a.shutdown().await;
    worker_b.shutdown().await;
    let after = engine_b.history(&id).await.unwrap();
    assert_eq!(
        after.len(),
        history.len(),
        "appended after the task was final"
    );
    let by_a: Vec<&str> = after
        .iter()
        .filter(|e| e.actor == actor_a)
        .map(|e| e.payload.type_name())
        .collect();
    assert_eq!(
        by_a,
        ["TaskStarted"],
        "A's worker appended after the takeover"
    );
    mandate_tests::assert_replays(&engine_b, &id).await;
}

/// `gated.count`: counts its calls per idempotency key (with the attempt
/// number each call was told), reports each call on `entered`, and answers
/// once the test opens `gate`.
#[derive(Clone)]
struct GatedCounter {
    calls: Arc<Mutex<HashMap<String, Vec<u32>>>>,
    entered: mpsc::UnboundedSender<String>,
    gate: watch::Receiver<bool>,
}

impl Tool for GatedCounter {
    fn name(&self) -> &str {
        "gated.count"
    }
    fn kind(&self) -> ToolKind {
        ToolKind::WriteIrreversible
    }
    fn call<'a>(&'a self, ctx: ToolContext, _: Value) -> BoxFuture<'a, ToolResult> {
        async move {
            self.calls
                .lock()
                .unwrap()
                .entry(ctx.idempotency_key.clone())
                .or_default()
                .push(ctx.attempt);
            let _ = self.entered.send(ctx.idempotency_key.clone());
            let mut gate = self.gate.clone();
            let _ = gate.wait_for(|open| *open).await;
            Ok(json!({"done": ctx.idempotency_key}))
        }
        .boxed()
    }
}

/// Waits until `pred` holds for the task's history.
async fn wait_history(
    engine: &mandate_engine::Engine,
    id: &str,
    what: &str,
    pred: impl Fn(&[mandate_engine::Event]) -> bool,
) -> Vec<mandate_engine::Event> {
    let mut updates = engine.subscribe();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let history = engine.history(id).await.expect("history");
        if pred(&history) {
            return history;
        }
        tokio::select! {
            _ = updates.recv() => {}
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = tokio::time::sleep_until(deadline) => panic!(
                "task {id}: {what} did not happen within {WAIT:?}; history: {:?}",
                mandate_tests::types(&history)
            ),
        }
    }
}

/// Three steps are mid-call when the kill switch is pressed. Like a pause,
/// the halt lets them finish and records their results while it holds;
/// after the lift nothing that completed runs again. Before, the driver
/// that recorded the halt's pause gave the task back and hung up on its
/// calls, and after the lift every step was called a second time.
async fn a_halt_lets_attempts_in_flight_finish_and_runs_nothing_twice(b: Backend) {
    const N: usize = 3;
    let (entered_tx, mut entered) = mpsc::unbounded_channel();
    let (open, gate) = watch::channel(false);
    let tool = GatedCounter {
        calls: Arc::default(),
        entered: entered_tx,
        gate,
    };
    let calls = tool.calls.clone();
    let mut h = Harness::with(b, move |_, tools| {
        tools.register(tool);
    })
    .await;
    h.start_worker();
    let steps: Vec<Value> = (0..N)
        .map(|i| json!({"name": format!("s{i}"), "tool": "gated.count", "input": {}}))
        .collect();
    let id = h
        .engine
        .submit("saga", json!({"stages": [steps]}), Default::default())
        .await
        .expect("submit")
        .task_id;
    for _ in 0..N {
        tokio::time::timeout(WAIT, entered.recv())
            .await
            .expect("every step's call started")
            .expect("reported");
    }

    let halt = h
        .engine
        .halt(None, "operator:test", Some("kill switch".into()))
        .await
        .expect("halt");
    let actor = format!("halt:{}", halt.id);
    wait_history(&h.engine, &id, "the halt's pause", |hist| {
        hist.iter()
            .any(|e| e.actor == actor && matches!(e.payload, EventPayload::TaskPaused { .. }))
    })
    .await;

    // The calls answer while the halt holds: their results are recorded.
    open.send(true).expect("open the gate");
    let completed = |hist: &[mandate_engine::Event]| {
        hist.iter()
            .filter(|e| matches!(e.payload, EventPayload::StepCompleted { .. }))
            .count()
    };
    let during = wait_history(&h.engine, &id, "every step's completion", |hist| {
        completed(hist) == N
    })
    .await;
    assert!(
        !during
            .iter()
            .any(|e| matches!(e.payload, EventPayload::TaskResumed { .. })),
        "completed only after a resume"
    );
    assert_eq!(h.engine.task(&id).await.unwrap().status, TaskStatus::Paused);

    let lifted = h
        .engine
        .lift_halt(None, "operator:test")
        .await
        .expect("lift");
    assert_eq!(lifted.resumed, vec![id.clone()]);
    let row = h.engine.wait_until_final(&id, WAIT).await.expect("final");
    assert_eq!(row.status, TaskStatus::Completed);
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), N, "{calls:?}");
    for (key, attempts) in &calls {
        assert_eq!(attempts, &vec![1], "{key} was called again: {calls:?}");
    }
    let history = h.engine.history(&id).await.unwrap();
    assert_eq!(completed(&history), N);
    h.assert_replays(&id).await;
}

backend_tests!(
    a_retry_in_flight_when_the_rollback_starts_is_undone,
    a_stalled_workers_attempt_is_fenced_after_a_takeover,
    a_halt_lets_attempts_in_flight_finish_and_runs_nothing_twice,
);
