//! `engine::audit` — what `mandate replay` and `mandate verify` report — on
//! both stores, for each outcome: an untouched task, an edited, deleted or
//! moved event, a tampered derived row, changed workflow code, an unknown task,
//! and a sweep over many tasks.

use futures::future::BoxFuture;
use mandate_engine::audit::{
    self, AuditOptions, BreakKind, ChainVerdict, DeterminismVerdict, NotCheckedReason,
    ProjectionVerdict, Selection, SweepOptions, TaskAudit, Verdict,
};
use mandate_engine::{StepOptions, TaskStatus, Workflow, WorkflowContext, WorkflowError};
use mandate_engine::{WorkflowRegistry, store::TaskRow};
use mandate_tests::{Backend, Harness, backend_tests, exec_sql};
use serde_json::{Value, json};

/// Two echo steps; the changed code calls another tool for the second.
struct TwoSteps {
    changed: bool,
}

impl Workflow for TwoSteps {
    fn name(&self) -> &str {
        "two_steps"
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
            let second = if changed {
                StepOptions::new("kv.put", json!({"key": "k", "value": 2})).name("second")
            } else {
                StepOptions::new("test.echo", json!({"n": 2})).name("second")
            };
            ctx.step(second).await?;
            Ok(json!({"done": true}))
        })
    }
}

async fn audit_of(h: &Harness, id: &str) -> TaskAudit {
    audit::audit_task(
        h.engine.store().as_ref(),
        h.engine.workflows(),
        id,
        &AuditOptions::default(),
    )
    .await
    .expect("audit")
}

fn chain_break(a: &TaskAudit) -> (i64, BreakKind, String) {
    match &a.chain {
        ChainVerdict::Broken(b) => (b.seq, b.kind, b.message.clone()),
        ChainVerdict::Ok { .. } => panic!("the chain of {} verified", a.task_id),
    }
}

/// A completed `deploy_with_rollback` (9 events; seq 5 schedules the deploy).
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

async fn untouched_rolled_back_task_holds(b: Backend) {
    let mut h = Harness::new(b).await;
    let (id, row) = h
        .run(
            "deploy_with_rollback",
            json!({"service": "api", "version": "v3-bad", "expect_healthy": false}),
        )
        .await;
    assert_eq!(row.status, TaskStatus::FailedTerminal);
    h.stop_worker().await;
    let a = audit_of(&h, &id).await;
    assert_eq!(a.verdict, Verdict::Ok, "{:?}", a.problem());
    assert_eq!(a.status, Some(TaskStatus::FailedTerminal));
    assert_eq!(a.stored_status, Some(TaskStatus::FailedTerminal));
    assert_eq!(a.projection, ProjectionVerdict::Ok);
    assert_eq!(a.determinism, DeterminismVerdict::Ok);
    let ChainVerdict::Ok { events, head_hash } = &a.chain else {
        panic!("{:?}", a.chain)
    };
    assert_eq!(*events, a.events.len());
    assert_eq!(head_hash, &row.last_hash);
    assert!(
        a.events
            .iter()
            .any(|e| e.payload.type_name() == "CompensationCompleted")
    );
}

async fn edited_payload_is_tampering_named_by_seq(b: Backend) {
    let (h, id) = completed_deploy(b).await;
    let n = exec_sql(
        &h.db,
        &format!(
            "UPDATE events SET payload = replace(payload, 'v2', 'v9') WHERE task_id = '{id}' AND seq = 6"
        ),
    )
    .await;
    assert_eq!(n, 1);
    let a = audit_of(&h, &id).await;
    assert_eq!(a.verdict, Verdict::ChainBroken);
    let (seq, kind, message) = chain_break(&a);
    assert_eq!((seq, kind), (6, BreakKind::HashMismatch), "{message}");
    assert!(message.contains("seq 6 (PolicyEvaluated)"), "{message}");
    // An untrusted history is shown but not replayed.
    assert_eq!(a.events.len(), 12);
    assert!(matches!(
        a.determinism,
        DeterminismVerdict::NotChecked {
            reason: NotCheckedReason::ChainBroken,
            ..
        }
    ));
}

async fn deleted_middle_event_is_a_gap(b: Backend) {
    let (h, id) = completed_deploy(b).await;
    exec_sql(
        &h.db,
        &format!("DELETE FROM events WHERE task_id = '{id}' AND seq = 4"),
    )
    .await;
    let a = audit_of(&h, &id).await;
    assert_eq!(a.verdict, Verdict::ChainBroken);
    let (seq, kind, message) = chain_break(&a);
    assert_eq!((seq, kind), (4, BreakKind::Gap), "{message}");
    assert!(
        message.contains("after seq 3 the next stored event is seq 5"),
        "{message}"
    );
}

async fn swapped_events_are_a_reordering(b: Backend) {
    let (h, id) = completed_deploy(b).await;
    for sql in [
        "UPDATE events SET seq = -1 WHERE task_id = '{id}' AND seq = 3",
        "UPDATE events SET seq = 3 WHERE task_id = '{id}' AND seq = 4",
        "UPDATE events SET seq = 4 WHERE task_id = '{id}' AND seq = -1",
    ] {
        assert_eq!(exec_sql(&h.db, &sql.replace("{id}", &id)).await, 1);
    }
    let a = audit_of(&h, &id).await;
    assert_eq!(a.verdict, Verdict::ChainBroken);
    let (seq, kind, message) = chain_break(&a);
    assert_eq!((seq, kind), (3, BreakKind::Reordered), "{message}");
    assert!(message.contains("was recorded as seq 4"), "{message}");
}

async fn deleted_tail_is_a_truncation(b: Backend) {
    let (h, id) = completed_deploy(b).await;
    exec_sql(
        &h.db,
        &format!("DELETE FROM events WHERE task_id = '{id}' AND seq >= 8"),
    )
    .await;
    let a = audit_of(&h, &id).await;
    let (seq, kind, message) = chain_break(&a);
    assert_eq!((seq, kind), (8, BreakKind::Truncated), "{message}");
}

async fn tampered_derived_rows_are_named_field_by_field(b: Backend) {
    let (h, id) = completed_deploy(b).await;
    exec_sql(
        &h.db,
        &format!("UPDATE tasks SET status = 'running', ready_at_ms = 1 WHERE id = '{id}'"),
    )
    .await;
    exec_sql(
        &h.db,
        &format!(
            "INSERT INTO timers (task_id, seq, fire_at_ms, kind) VALUES ('{id}', 7, 42, 'retry')"
        ),
    )
    .await;
    let a = audit_of(&h, &id).await;
    assert_eq!(a.verdict, Verdict::ProjectionMismatch, "{:?}", a.problem());
    assert!(a.chain.is_ok());
    // The history itself still replays.
    assert_eq!(a.determinism, DeterminismVerdict::Ok);
    let ProjectionVerdict::Mismatch { diffs } = &a.projection else {
        panic!("{:?}", a.projection)
    };
    let fields: Vec<&str> = diffs.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(fields, ["status", "ready_at_ms", "timers[seq 7]"]);
    assert_eq!(
        (&diffs[0].stored, &diffs[0].rebuilt),
        (&json!("running"), &json!("completed"))
    );
    assert_eq!(
        diffs[1].note.as_deref(),
        Some("a final task is never queued")
    );
    assert_eq!(diffs[2].stored, json!({"fire_at_ms": 42, "kind": "retry"}));
    assert_eq!(diffs[2].rebuilt, Value::Null);
}

async fn changed_workflow_code_is_non_determinism_at_its_seq(b: Backend) {
    let mut h = Harness::with(b, |w, _| {
        w.register(TwoSteps { changed: false });
    })
    .await;
    let (id, row) = h.run("two_steps", json!({})).await;
    assert_eq!(row.status, TaskStatus::Completed);
    h.stop_worker().await;
    assert_eq!(audit_of(&h, &id).await.verdict, Verdict::Ok);
    let second_seq = h
        .engine
        .history(&id)
        .await
        .unwrap()
        .iter()
        // A governed step's command event is its decision.
        .filter(|e| e.payload.type_name() == "PolicyEvaluated")
        .nth(1)
        .expect("two steps")
        .seq;
    // A new binary with changed code reads the same database.
    let mut changed = mandate_workflows::registry();
    changed.register(TwoSteps { changed: true });
    let a = audit::audit_task(
        h.engine.store().as_ref(),
        &changed,
        &id,
        &AuditOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(a.verdict, Verdict::ReplayFailed);
    let DeterminismVerdict::NonDeterminism {
        seq,
        expected,
        found,
    } = &a.determinism
    else {
        panic!("{:?}", a.determinism)
    };
    assert_eq!(*seq, second_seq);
    assert_eq!(expected, "step \"second\" (tool test.echo)");
    assert_eq!(found, "step \"second\" (tool kv.put)");
    // A binary without the workflow cannot replay it either.
    let a = audit::audit_task(
        h.engine.store().as_ref(),
        &WorkflowRegistry::new(),
        &id,
        &AuditOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(a.verdict, Verdict::ReplayFailed);
    assert!(matches!(
        a.determinism,
        DeterminismVerdict::NotChecked {
            reason: NotCheckedReason::WorkflowNotRegistered,
            ..
        }
    ));
}

async fn unknown_task_is_a_clear_error(b: Backend) {
    let (h, _) = completed_deploy(b).await;
    let err = audit::audit_task(
        h.engine.store().as_ref(),
        h.engine.workflows(),
        "no-such-task",
        &AuditOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, audit::Error::TaskNotFound { task_id } if task_id == "no-such-task"),
        "{err}"
    );
    assert!(err.to_string().contains("mandate list"), "{err}");
}

async fn sweep_pages_through_every_task_and_lists_the_bad(b: Backend) {
    let (h, done) = completed_deploy(b).await;
    // Queued tasks (no worker runs): in flight, and each replays.
    let mut queued = Vec::new();
    for i in 0..6 {
        queued.push(
            h.engine
                .submit(
                    "saga",
                    json!({"stages": [[{"tool": "test.echo", "input": {"i": i}}]]}),
                    Default::default(),
                )
                .await
                .unwrap()
                .task_id,
        );
    }
    exec_sql(
        &h.db,
        &format!(
            "UPDATE events SET actor = 'agent:mallory' WHERE task_id = '{}' AND seq = 1",
            queued[2]
        ),
    )
    .await;
    exec_sql(
        &h.db,
        &format!(
            "UPDATE tasks SET last_seq = 1, agent = 'x' WHERE id = '{}'",
            queued[4]
        ),
    )
    .await;
    let store = h.engine.store().as_ref();
    let workflows = h.engine.workflows();
    let mut seen = Vec::new();
    let summary = audit::sweep(
        store,
        workflows,
        &SweepOptions {
            page_size: 2,
            concurrency: 3,
            ..SweepOptions::default()
        },
        &mut |v| seen.push(v.task_id.clone()),
    )
    .await
    .unwrap();
    assert_eq!(summary.checked, 7);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 7, "every task exactly once across pages");
    assert_eq!(
        (
            summary.ok,
            summary.chain_broken,
            summary.projection_mismatch,
            summary.replay_failed
        ),
        (5, 1, 1, 0)
    );
    assert_eq!(summary.worst(), Verdict::ChainBroken);
    let bad: Vec<(&str, Verdict)> = summary
        .bad
        .iter()
        .map(|v| (v.task_id.as_str(), v.verdict))
        .collect();
    assert!(
        bad.contains(&(queued[2].as_str(), Verdict::ChainBroken)),
        "{bad:?}"
    );
    assert!(
        bad.contains(&(queued[4].as_str(), Verdict::ProjectionMismatch)),
        "{bad:?}"
    );
    assert!(summary.bad.iter().all(|v| v.problem.is_some()));

    // In flight: the queued six, not the completed deploy.
    let in_flight = audit::sweep(
        store,
        workflows,
        &SweepOptions {
            selection: Selection::InFlight,
            ..SweepOptions::default()
        },
        &mut |v| assert_ne!(v.task_id, done),
    )
    .await
    .unwrap();
    assert_eq!(in_flight.checked, 6);
    assert_eq!(
        audit::count_selected(store, Selection::InFlight)
            .await
            .unwrap(),
        6
    );
    let completed = audit::sweep(
        store,
        workflows,
        &SweepOptions {
            selection: Selection::Status(TaskStatus::Completed),
            ..SweepOptions::default()
        },
        &mut |_| {},
    )
    .await
    .unwrap();
    assert_eq!((completed.checked, completed.ok), (1, 1));
    // Nothing was created in the future.
    let row: TaskRow = h.engine.task(&done).await.unwrap();
    let future = audit::sweep(
        store,
        workflows,
        &SweepOptions {
            since_ms: Some(row.created_at_ms + 3_600_000),
            ..SweepOptions::default()
        },
        &mut |_| {},
    )
    .await
    .unwrap();
    assert_eq!(future.checked, 0);
}

async fn changed_code_fails_the_safe_deploy_sweep(b: Backend) {
    let mut h = Harness::with(b, |w, _| {
        w.register(TwoSteps { changed: false });
    })
    .await;
    let (id, _) = h.run("two_steps", json!({})).await;
    h.stop_worker().await;
    let mut changed = mandate_workflows::registry();
    changed.register(TwoSteps { changed: true });
    let summary = audit::sweep(
        h.engine.store().as_ref(),
        &changed,
        &SweepOptions::default(),
        &mut |_| {},
    )
    .await
    .unwrap();
    assert_eq!((summary.checked, summary.replay_failed), (1, 1));
    assert_eq!(summary.bad[0].task_id, id);
    assert!(
        summary.bad[0]
            .problem
            .as_deref()
            .unwrap()
            .contains("non-determinism at seq"),
        "{:?}",
        summary.bad[0]
    );
    // `verify` does not re-run code: the same task is fine there.
    let verified = audit::sweep(
        h.engine.store().as_ref(),
        &changed,
        &SweepOptions {
            audit: AuditOptions {
                check_determinism: false,
            },
            ..SweepOptions::default()
        },
        &mut |_| {},
    )
    .await
    .unwrap();
    assert_eq!(verified.worst(), Verdict::Ok);
}

backend_tests!(
    untouched_rolled_back_task_holds,
    edited_payload_is_tampering_named_by_seq,
    deleted_middle_event_is_a_gap,
    swapped_events_are_a_reordering,
    deleted_tail_is_a_truncation,
    tampered_derived_rows_are_named_field_by_field,
    changed_workflow_code_is_non_determinism_at_its_seq,
    unknown_task_is_a_clear_error,
    sweep_pages_through_every_task_and_lists_the_bad,
    changed_code_fails_the_safe_deploy_sweep,
);
