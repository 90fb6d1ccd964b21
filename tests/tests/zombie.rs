//! Zombie attempts: a step attempt the engine timed out keeps running and
//! tries to apply its effect later. Once the step's compensation ran, that
//! late apply must be refused (the compensation fenced the step's key); if
//! the late apply committed first, the compensation must undo it. Either
//! way the rollback leaves nothing behind.
//!
//! Each order is forced with gates the test opens, never with sleeps: the
//! late apply waits for `release_late`, the compensation for
//! `release_undo`.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use mandate_activities::demo::names::KV_DELETE;
use mandate_activities::{Tool, ToolContext, ToolError, ToolKind, ToolResult, World, world};
use mandate_engine::{EventPayload, TaskStatus};
use mandate_tests::{Backend, Harness, TestDb, backend_tests};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc, watch};

/// How long a test waits for something the engine must do; a bound on a
/// hang, never a pause.
const WAIT: Duration = Duration::from_secs(30);

/// `zombie.put` (reversible write): the attempt hands its write to a
/// detached tokio task (the remote side, which keeps working after the
/// caller gave up) and never answers, so the engine times it out. The write
/// waits for `release_late`, then applies through the world like any demo
/// tool, and its result goes to `late_results`.
struct ZombiePut {
    world: World,
    release_late: Arc<Notify>,
    late_results: mpsc::UnboundedSender<(ToolContext, Result<Value, world::Error>)>,
}

impl Tool for ZombiePut {
    fn name(&self) -> &str {
        "zombie.put"
    }
    fn kind(&self) -> ToolKind {
        ToolKind::WriteReversible
    }
    fn call<'a>(&'a self, ctx: ToolContext, input: Value) -> BoxFuture<'a, ToolResult> {
        let key = input["key"].as_str().unwrap_or("zombie").to_string();
        let (world, release, results) = (
            self.world.clone(),
            self.release_late.clone(),
            self.late_results.clone(),
        );
        tokio::spawn(async move {
            release.notified().await;
            let result = world
                .apply_call(&ctx, "zombie.put", "kv", &key, |_| {
                    Ok((Some(json!("zombie")), json!({"key": key})))
                })
                .await;
            let _ = results.send((ctx, result));
        });
        futures::future::pending().boxed()
    }
}

/// `gated.delete`: `kv.delete` that first reports its context on `entered`
/// and waits until `release_undo` is true. The compensation inherits the
/// step's 100 ms timeout, so its attempts time out while the gate is shut;
/// the saga gives it many quick retries, each waiting at the same gate.
struct GatedDelete {
    inner: Arc<dyn Tool>,
    entered: mpsc::UnboundedSender<ToolContext>,
    release_undo: watch::Receiver<bool>,
}

impl Tool for GatedDelete {
    fn name(&self) -> &str {
        "gated.delete"
    }
    fn kind(&self) -> ToolKind {
        ToolKind::WriteReversible
    }
    fn call<'a>(&'a self, ctx: ToolContext, input: Value) -> BoxFuture<'a, ToolResult> {
        async move {
            let _ = self.entered.send(ctx.clone());
            let mut release = self.release_undo.clone();
            if release.wait_for(|open| *open).await.is_err() {
                return Err(ToolError::retryable("gated.delete: the test ended"));
            }
            self.inner.call(ctx, input).await
        }
        .boxed()
    }
}

struct Gates {
    release_late: Arc<Notify>,
    late_results: mpsc::UnboundedReceiver<(ToolContext, Result<Value, world::Error>)>,
    release_undo: watch::Sender<bool>,
    undo_entered: mpsc::UnboundedReceiver<ToolContext>,
}

async fn harness(b: Backend) -> (Harness, Gates) {
    let db = TestDb::new(b).await;
    let world = World::connect(&db.url).await.expect("open world");
    let release_late = Arc::new(Notify::new());
    let (release_undo, undo_gate) = watch::channel(false);
    let (late_tx, late_results) = mpsc::unbounded_channel();
    let (entered_tx, undo_entered) = mpsc::unbounded_channel();
    let gates = Gates {
        release_late: release_late.clone(),
        late_results,
        release_undo,
        undo_entered,
    };
    let h = Harness::on(db, Default::default(), move |_, tools| {
        let inner = tools.get(KV_DELETE).expect("kv.delete is registered");
        tools.register(ZombiePut {
            world,
            release_late,
            late_results: late_tx,
        });
        tools.register(GatedDelete {
            inner,
            entered: entered_tx,
            release_undo: undo_gate,
        });
    })
    .await;
    (h, gates)
}

/// One step whose only attempt times out after 100 ms, undone by `undo`
/// (with up to 100 attempts 10 ms apart, for the gated undo).
fn zombie_saga(undo: &str) -> Value {
    json!({"stages": [[{
        "name": "write", "tool": "zombie.put", "input": {"key": "z"}, "timeout_ms": 100,
        "retry": {"max_attempts": 1},
        "compensate": {"tool": undo, "input": {"key": "z"},
                       "retry": {"max_attempts": 100, "initial_backoff_ms": 10, "max_backoff_ms": 10}},
    }]]})
}

/// The seqs of the step and of its compensation in the task's history.
async fn step_and_compensation_seqs(h: &Harness, id: &str) -> (i64, i64) {
    let history = h.engine.history(id).await.expect("history verifies");
    let step = history
        .iter()
        .find(|e| matches!(e.payload, EventPayload::StepScheduled { .. }))
        .expect("the step was scheduled")
        .seq;
    assert!(
        history.iter().any(|e| matches!(&e.payload,
            EventPayload::StepFailed { step_seq, error, .. } if *step_seq == step && error.effect_unknown)),
        "the timed-out step is recorded failed with an unknown effect"
    );
    let compensation = history
        .iter()
        .find(|e| matches!(&e.payload, EventPayload::CompensationStarted { step_seq, .. } if *step_seq == step))
        .expect("the step was compensated")
        .seq;
    (step, compensation)
}

async fn a_late_attempt_after_the_rollback_is_fenced_off(b: Backend) {
    let (mut h, mut gates) = harness(b).await;
    let (id, row) = h.run("saga", zombie_saga(KV_DELETE)).await;
    assert_eq!(row.status, TaskStatus::FailedTerminal);
    let (step, compensation) = step_and_compensation_seqs(&h, &id).await;

    // The rollback is over; now the abandoned attempt tries to apply.
    gates.release_late.notify_one();
    let (late_ctx, late) = tokio::time::timeout(WAIT, gates.late_results.recv())
        .await
        .expect("the late attempt finished")
        .expect("the late attempt reported");
    assert_eq!(late_ctx.idempotency_key, format!("{id}:{step}"));
    match late {
        Err(world::Error::Fenced {
            idempotency_key,
            fenced_by,
        }) => {
            assert_eq!(idempotency_key, format!("{id}:{step}"));
            assert_eq!(fenced_by, format!("{id}:{compensation}"));
        }
        other => panic!("the late attempt was not fenced off: {other:?}"),
    }
    assert_eq!(
        h.world.get("kv", "z").await.unwrap(),
        None,
        "the late attempt left its effect behind after the rollback"
    );
    assert_eq!(h.world.fence_count().await.unwrap(), 1);
    h.assert_replays(&id).await;
}

async fn a_late_attempt_before_the_undo_is_undone(b: Backend) {
    let (mut h, mut gates) = harness(b).await;
    h.start_worker();
    let id = h
        .engine
        .submit("saga", zombie_saga("gated.delete"), Default::default())
        .await
        .expect("submit")
        .task_id;
    // The compensation has started (so the engine has given up on the
    // attempt) and waits at its gate; the late attempt applies first.
    let undo_ctx = tokio::time::timeout(WAIT, gates.undo_entered.recv())
        .await
        .expect("the compensation started")
        .expect("the compensation reported");
    gates.release_late.notify_one();
    let (late_ctx, late) = tokio::time::timeout(WAIT, gates.late_results.recv())
        .await
        .expect("the late attempt finished")
        .expect("the late attempt reported");
    assert_eq!(
        late.expect("nothing fenced the step yet"),
        json!({"key": "z"})
    );
    assert_eq!(h.world.get("kv", "z").await.unwrap(), Some(json!("zombie")));
    // The compensation knows which step it undoes.
    assert_eq!(
        undo_ctx.compensates.as_deref(),
        Some(late_ctx.idempotency_key.as_str())
    );

    gates.release_undo.send_replace(true);
    let row = h.engine.wait_until_final(&id, WAIT).await.expect("final");
    assert_eq!(row.status, TaskStatus::FailedTerminal);
    let (step, compensation) = step_and_compensation_seqs(&h, &id).await;
    assert_eq!(late_ctx.idempotency_key, format!("{id}:{step}"));
    assert_eq!(undo_ctx.idempotency_key, format!("{id}:{compensation}"));
    let history = h.engine.history(&id).await.unwrap();
    assert!(history.iter().any(|e| matches!(&e.payload,
        EventPayload::CompensationCompleted { output, .. } if output["previous"] == json!("zombie"))),
        "the compensation saw and undid the late effect");
    assert_eq!(h.world.get("kv", "z").await.unwrap(), None);
    // The step's key already held its effect, so there was nothing to fence.
    assert_eq!(h.world.fence_count().await.unwrap(), 0);
    h.assert_replays(&id).await;
}

backend_tests!(
    a_late_attempt_after_the_rollback_is_fenced_off,
    a_late_attempt_before_the_undo_is_undone,
);
