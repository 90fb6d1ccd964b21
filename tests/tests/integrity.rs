//! Tampering and non-determinism are found and named, on both stores.

use std::time::Duration;

use futures::future::BoxFuture;
use mandate_engine::core::workflow::check_history;
use mandate_engine::runtime::Error as EngineError;
use mandate_engine::{
    EventPayload, Limits, StepOptions, TaskStatus, Workflow, WorkflowContext, WorkflowError,
};
use mandate_tests::{Backend, Harness, TestDb, backend_tests, exec_sql};
use serde_json::{Value, json};

async fn completed_deploy(b: Backend) -> (Harness, String) {
    let mut h = Harness::new(b).await;
    let (id, row) = h
        .run(
            "deploy_with_rollback",
            json!({"service": "api", "version": "v2"}),
        )
        .await;
    assert_eq!(row.status, TaskStatus::Completed);
    h.stop_worker().await;
    (h, id)
}

fn corrupt_seq(err: EngineError) -> (String, i64) {
    match err {
        EngineError::Corrupt { source, .. } => (source.kind().to_string(), source.seq()),
        other => panic!("expected a corrupt chain, got {other}"),
    }
}

async fn edited_event_names_its_seq(b: Backend) {
    let (h, id) = completed_deploy(b).await;
    let n = exec_sql(
        &h.db,
        &format!("UPDATE events SET payload = replace(payload, 'v2', 'v9') WHERE task_id = '{id}' AND seq = 6"),
    )
    .await;
    assert_eq!(n, 1);
    let err = h.engine.history(&id).await.unwrap_err();
    assert!(err.to_string().contains("seq 6"), "{err}");
    assert_eq!(corrupt_seq(err), ("hash_mismatch".to_string(), 6));
}

async fn deleted_event_is_a_gap(b: Backend) {
    let (h, id) = completed_deploy(b).await;
    exec_sql(
        &h.db,
        &format!("DELETE FROM events WHERE task_id = '{id}' AND seq = 4"),
    )
    .await;
    let (kind, seq) = corrupt_seq(h.engine.history(&id).await.unwrap_err());
    assert_eq!((kind.as_str(), seq), ("gap", 5));
}

async fn swapped_events_are_found(b: Backend) {
    let (h, id) = completed_deploy(b).await;
    // Exchange the contents of seq 3 and 4 (the primary key stays ordered).
    exec_sql(
        &h.db,
        &format!("UPDATE events SET seq = -1 WHERE task_id = '{id}' AND seq = 3"),
    )
    .await;
    exec_sql(
        &h.db,
        &format!("UPDATE events SET seq = 3 WHERE task_id = '{id}' AND seq = 4"),
    )
    .await;
    exec_sql(
        &h.db,
        &format!("UPDATE events SET seq = 4 WHERE task_id = '{id}' AND seq = -1"),
    )
    .await;
    let (kind, seq) = corrupt_seq(h.engine.history(&id).await.unwrap_err());
    assert_eq!(seq, 3, "{kind}");
}

async fn tampered_task_is_halted(b: Backend) {
    let mut h = Harness::new(b).await;
    h.start_worker();
    let id = h
        .engine
        .submit(
            "gated_deploy",
            json!({"service": "s", "version": "v1"}),
            Default::default(),
        )
        .await
        .unwrap()
        .task_id;
    h.wait_for(&id, |s| s == TaskStatus::NeedsApproval).await;
    let before = h.engine.store().load_history(&id).await.unwrap().len();
    exec_sql(
        &h.db,
        &format!("UPDATE events SET actor = 'agent:mallory' WHERE task_id = '{id}' AND seq = 1"),
    )
    .await;
    // Outside appends refuse to build on a broken chain, and write nothing.
    let err = h
        .engine
        .signal(&id, "approve", json!({"approved": true}), "user:x")
        .await
        .unwrap_err();
    assert_eq!(corrupt_seq(err), ("hash_mismatch".to_string(), 1));
    assert_eq!(
        h.engine.store().load_history(&id).await.unwrap().len(),
        before
    );
}

/// The same workflow name, before and after a code change.
struct Flip {
    changed: bool,
}

impl Workflow for Flip {
    fn name(&self) -> &str {
        "flip"
    }
    fn run(
        &self,
        ctx: WorkflowContext,
        _input: Value,
    ) -> BoxFuture<'static, Result<Value, WorkflowError>> {
        let changed = self.changed;
        Box::pin(async move {
            ctx.step(StepOptions::new("test.echo", json!({"n": 1})).name("first"))
                .await?;
            if changed {
                ctx.step(
                    StepOptions::new("kv.put", json!({"key": "new", "value": 1})).name("inserted"),
                )
                .await?;
            }
            ctx.wait_signal("go", None).await;
            ctx.step(StepOptions::new("test.echo", json!({"n": 2})).name("second"))
                .await?;
            Ok(json!({}))
        })
    }
}

async fn changed_code_is_non_deterministic_at_the_right_seq(b: Backend) {
    let mut h = Harness::with(b, |w, _| {
        w.register(Flip { changed: false });
    })
    .await;
    h.start_worker();
    let id = h
        .engine
        .submit("flip", json!({}), Default::default())
        .await
        .unwrap()
        .task_id;
    h.wait_for(&id, |s| s == TaskStatus::Running).await;
    let wait_seq = loop {
        let history = h.engine.history(&id).await.unwrap();
        if let Some(e) = history
            .iter()
            .find(|e| matches!(e.payload, EventPayload::SignalWaitStarted { .. }))
        {
            break e.seq;
        }
        let mut u = h.engine.subscribe();
        let _ = tokio::time::timeout(Duration::from_millis(100), u.recv()).await;
    };
    h.engine
        .signal(&id, "go", json!({}), "user:x")
        .await
        .unwrap();
    let row = h
        .engine
        .wait_until_final(&id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(row.status, TaskStatus::Completed);
    let history = h.engine.history(&id).await.unwrap();
    // The old code replays; the changed code diverges where it issues the new step.
    check_history(&Flip { changed: false }, &history).unwrap();
    let nd = check_history(&Flip { changed: true }, &history).unwrap_err();
    assert_eq!(nd.seq, wait_seq, "{nd}");
    assert_eq!(nd.task_id, id);
    assert!(nd.expected.contains("wait for signal \"go\""), "{nd}");
    assert!(nd.found.contains("step \"inserted\" (tool kv.put)"), "{nd}");
}

async fn in_flight_task_with_changed_code_is_blocked(b: Backend) {
    let db = TestDb::new(b).await;
    let url = db.url.clone();
    let mut old = Harness::on(db, Limits::default(), |w, _| {
        w.register(Flip { changed: false });
    })
    .await;
    old.start_worker();
    let id = old
        .engine
        .submit("flip", json!({}), Default::default())
        .await
        .unwrap()
        .task_id;
    loop {
        let history = old.engine.history(&id).await.unwrap();
        if history
            .iter()
            .any(|e| matches!(e.payload, EventPayload::SignalWaitStarted { .. }))
        {
            break;
        }
        let mut u = old.engine.subscribe();
        let _ = tokio::time::timeout(Duration::from_millis(100), u.recv()).await;
    }
    old.stop_worker().await;
    // A new binary with changed code takes over the same database.
    let (new_engine, world) = mandate_tests::engine_for(&url, Limits::default(), |w, _| {
        w.register(Flip { changed: true });
    })
    .await;
    let worker = new_engine.start_worker(mandate_tests::test_worker_config());
    new_engine
        .signal(&id, "go", json!({}), "user:x")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let blocked = loop {
        let history = new_engine.history(&id).await.unwrap();
        if let Some(e) = history
            .iter()
            .find(|e| matches!(e.payload, EventPayload::TaskBlocked { .. }))
        {
            break e.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the changed code was not reported"
        );
        let mut u = new_engine.subscribe();
        let _ = tokio::time::timeout(Duration::from_millis(100), u.recv()).await;
    };
    let EventPayload::TaskBlocked {
        reason,
        at_seq,
        found,
        ..
    } = &blocked.payload
    else {
        unreachable!()
    };
    assert_eq!(reason, "non_determinism");
    assert_eq!(*at_seq, Some(6), "seq 6 is the recorded wait");
    assert!(found.as_deref().unwrap().contains("kv.put"));
    // Nothing of the changed code ran, and the task is out of the queue.
    assert_eq!(world.get("kv", "new").await.unwrap(), None);
    let row = new_engine.task(&id).await.unwrap();
    assert_eq!(row.blocked_reason.as_deref(), Some("non_determinism"));
    assert_eq!(row.ready_at_ms, None);
    // A signal to a blocked task is recorded but does not put it back in the queue.
    new_engine
        .signal(&id, "go", json!({}), "user:x")
        .await
        .unwrap();
    assert_eq!(new_engine.task(&id).await.unwrap().ready_at_ms, None);
    worker.shutdown().await;
}

backend_tests!(
    edited_event_names_its_seq,
    deleted_event_is_a_gap,
    swapped_events_are_found,
    tampered_task_is_halted,
    changed_code_is_non_deterministic_at_the_right_seq,
    in_flight_task_with_changed_code_is_blocked,
);
