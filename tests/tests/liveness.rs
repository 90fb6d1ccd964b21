//! Liveness under quick successions of outside events: a signal or cancel
//! that lands while the task's driver is going idle must still be acted on.
//!
//! Found through the CLI over HTTP: after pause and resume, a signal sent
//! right after was sometimes never taken — the worker re-claimed the task
//! while its previous driver, having released the lease, had not yet left,
//! so no driver ran and the lease was renewed forever. Races are not
//! deterministic; each test repeats the succession enough times that the old
//! bug (seen in ~1 of 10 rounds) would show.

use std::time::Duration;

use mandate_engine::TaskStatus;
use mandate_tests::{Backend, Harness, backend_tests};
use serde_json::json;

/// The task's row once it is final; panics naming `what` if it is not
/// final within 15 s.
async fn final_row(h: &Harness, id: &str, what: String) -> mandate_engine::store::TaskRow {
    h.engine
        .wait_until_final(id, Duration::from_secs(15))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

const ROUNDS: usize = 40;

async fn signal_right_after_resume_is_taken(b: Backend) {
    let mut h = Harness::new(b).await;
    h.start_worker();
    for round in 0..ROUNDS {
        let id = h
            .engine
            .submit(
                "gated_deploy",
                json!({"service": format!("svc{round}"), "version": "v2", "timeout_ms": 60_000}),
                Default::default(),
            )
            .await
            .unwrap()
            .task_id;
        h.wait_for(&id, |s| s == TaskStatus::NeedsApproval).await;
        h.engine.pause(&id, "user:test", None).await.unwrap();
        h.wait_for(&id, |s| s == TaskStatus::Paused).await;
        h.engine.resume(&id, "user:test").await.unwrap();
        h.wait_for(&id, |s| s == TaskStatus::NeedsApproval).await;
        h.engine
            .decide_approval(
                &id,
                mandate_engine::runtime::ApprovalTarget::Only,
                "carol",
                mandate_engine::runtime::ApprovalDecision {
                    approved: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let row = final_row(&h, &id, format!("round {round}: the signal was not taken")).await;
        assert_eq!(row.status, TaskStatus::Completed, "round {round}");
    }
}

async fn cancel_right_after_resume_is_taken(b: Backend) {
    let mut h = Harness::new(b).await;
    h.start_worker();
    for round in 0..ROUNDS {
        let id = h
            .engine
            .submit(
                "gated_deploy",
                json!({"service": format!("svc{round}"), "version": "v2", "timeout_ms": 60_000}),
                Default::default(),
            )
            .await
            .unwrap()
            .task_id;
        h.wait_for(&id, |s| s == TaskStatus::NeedsApproval).await;
        h.engine.pause(&id, "user:test", None).await.unwrap();
        h.engine.resume(&id, "user:test").await.unwrap();
        h.engine.cancel(&id, true, "user:test", None).await.unwrap();
        let row = final_row(&h, &id, format!("round {round}: the cancel was not taken")).await;
        assert_eq!(row.status, TaskStatus::Cancelled, "round {round}");
    }
}

async fn signal_to_an_idle_saga_runs_the_next_stage(b: Backend) {
    let mut h = Harness::new(b).await;
    h.start_worker();
    let input = json!({"stages": [[{"wait_signal": "go"}], [{"tool": "test.echo", "input": {}}]]});
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(
            h.engine
                .submit("saga", input.clone(), Default::default())
                .await
                .unwrap()
                .task_id,
        );
    }
    for id in &ids {
        h.wait_for(id, |s| s == TaskStatus::Running).await;
    }
    for id in &ids {
        h.engine
            .signal(id, "go", json!({"approved": true}), "bench")
            .await
            .unwrap();
    }
    for id in &ids {
        let row = final_row(&h, id, id.to_string()).await;
        assert_eq!(row.status, TaskStatus::Completed);
    }
}

/// A signal or cancel appended right after a submission commits, while
/// the local worker's driver is starting from the history the submission
/// handed it (without reading the store), is taken: the driver's first
/// append fails its seq fence and it reloads.
async fn signal_or_cancel_right_after_submit_is_taken(b: Backend) {
    let mut h = Harness::new(b).await;
    h.start_worker();
    let input = json!({"stages": [[{"wait_signal": "go"}], [{"tool": "test.echo", "input": {}}]]});
    for round in 0..ROUNDS {
        let id = h
            .engine
            .submit("saga", input.clone(), Default::default())
            .await
            .unwrap()
            .task_id;
        let cancel = round % 2 == 0;
        if cancel {
            h.engine.cancel(&id, true, "user:test", None).await.unwrap();
        } else {
            h.engine
                .signal(&id, "go", json!({"approved": true}), "user:test")
                .await
                .unwrap();
        }
        let row = final_row(&h, &id, format!("round {round}: not taken")).await;
        let want = if cancel {
            TaskStatus::Cancelled
        } else {
            TaskStatus::Completed
        };
        assert_eq!(row.status, want, "round {round}");
    }
}

/// A burst of submissions starts at most `max_active_tasks` drivers: each
/// submission reserves its place before it hands the task to the local
/// worker. (Each used to see the same free room, so a burst of 200 started
/// about 200 drivers whatever the limit, and 100,000 submissions held
/// hundreds of megabytes.) The tasks beyond the limit wait their turn and
/// all reach their approval.
async fn a_burst_never_runs_more_drivers_than_the_limit(b: Backend) {
    let h = Harness::new(b).await;
    let worker = h.engine.start_worker(mandate_engine::WorkerConfig {
        max_active_tasks: 4,
        ..mandate_tests::test_worker_config()
    });
    let ids: Vec<String> = futures::future::join_all((0..200).map(|i| {
        h.engine.submit(
            "gated_deploy",
            json!({"service": format!("svc{i}"), "version": "v2", "timeout_ms": 600_000}),
            Default::default(),
        )
    }))
    .await
    .into_iter()
    .map(|r| r.unwrap().task_id)
    .collect();
    for id in &ids {
        h.wait_for(id, |s| s == TaskStatus::NeedsApproval).await;
    }
    let (_, peak) = h.engine.drivers();
    assert!(
        (1..=4).contains(&peak),
        "{peak} drivers ran at once; the limit is 4"
    );
    worker.shutdown().await;
}

backend_tests!(
    a_burst_never_runs_more_drivers_than_the_limit,
    signal_right_after_resume_is_taken,
    cancel_right_after_resume_is_taken,
    signal_to_an_idle_saga_runs_the_next_stage,
    signal_or_cancel_right_after_submit_is_taken,
);
