//! Crash recovery, for real: `mandate serve` is SIGKILLed while 100+ tasks are
//! mid-flight, a new process takes over after the leases expire, and every
//! task reaches a final status with no step recorded completed twice and every
//! failed task compensated completely, in reverse completion order. On SQLite
//! and on PostgreSQL.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mandate_engine::{EventPayload, Limits, TaskStatus};
use mandate_tests::{Backend, TestDb, engine_for};
use serde_json::{Value, json};

const TASKS: usize = 120;
const LEASE_MS: u64 = 1_500;

fn serve(url: &str, worker: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_mandate"))
        .args([
            "--db",
            url,
            "serve",
            "--worker-id",
            worker,
            "--lease-ms",
            &LEASE_MS.to_string(),
            "--no-http",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mandate serve")
}

/// Task `i`: two parallel writes, a slow step, a third write; every fourth
/// task then fails for good and must be rolled back.
fn saga(i: usize) -> Value {
    let put = |k: String| json!({"tool": "kv.put", "input": {"key": k, "value": i}, "compensate": {"tool": "kv.delete", "input": {"key": k}}});
    let mut stages = vec![
        json!([put(format!("{i}-a")), put(format!("{i}-b"))]),
        json!([{"tool": "test.fault", "input": {"mode": "sleep", "sleep_ms": 1_000 + (i % 7) * 200}}]),
        json!([put(format!("{i}-c"))]),
    ];
    if i.is_multiple_of(4) {
        stages.push(json!([{"tool": "test.fault", "input": {"mode": "fail_terminal"}}]));
    }
    json!({ "stages": stages })
}

async fn sigkill_mid_flight_then_recover(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (engine, world) = engine_for(&db.url, Limits::default(), |_, _| {}).await;
    // Everything is queued before the engine starts, so it takes all of them
    // on at once and they are in flight together when it is killed.
    let mut ids = Vec::new();
    for i in 0..TASKS {
        ids.push(
            engine
                .submit("saga", saga(i), Default::default())
                .await
                .unwrap()
                .task_id,
        );
    }
    let mut first = serve(&db.url, "first");
    // The engine runs in another process, so there is no in-process event to
    // wait on: look at the database at a bounded interval, within a timeout.
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    // Each task sleeps 1-2 s in its middle stage, so even on a loaded machine
    // most of them overlap.
    let last_counts = std::sync::Mutex::new(Vec::new());
    let in_flight = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            tick.tick().await;
            let counts = engine.store().count_by_status().await.unwrap();
            let moving: i64 = counts
                .iter()
                .filter(|(s, _)| !s.is_final() && *s != TaskStatus::Queued)
                .map(|(_, n)| n)
                .sum();
            *last_counts.lock().unwrap() = counts;
            if moving >= 100 {
                return moving;
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "100 tasks never were in flight at once; last counts {:?}",
            last_counts.lock().unwrap()
        )
    });
    first.kill().expect("SIGKILL mandate serve");
    first.wait().unwrap();
    let unfinished = engine
        .store()
        .list_tasks(mandate_engine::store::TaskFilter {
            limit: 1_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .iter()
        .filter(|t| !t.status.is_final())
        .count();
    assert!(
        unfinished >= 100,
        "only {unfinished} tasks were unfinished at the kill ({in_flight} in flight)"
    );

    let mut second = serve(&db.url, "second");
    let all_final = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            tick.tick().await;
            let counts = engine.store().count_by_status().await.unwrap();
            if counts.iter().all(|(s, _)| s.is_final()) {
                return counts;
            }
        }
    })
    .await;
    second.kill().unwrap();
    second.wait().unwrap();
    let counts = all_final.expect("not every task reached a final status after the restart");
    let n: i64 = counts.iter().map(|(_, n)| n).sum();
    assert_eq!(n as usize, TASKS, "a task was lost: {counts:?}");

    let mut taken_over = 0;
    for (i, id) in ids.iter().enumerate() {
        let history = engine.history(id).await.expect("chain verifies");
        let row = engine.task(id).await.unwrap();
        let expected = if i.is_multiple_of(4) {
            TaskStatus::FailedTerminal
        } else {
            TaskStatus::Completed
        };
        assert_eq!(row.status, expected, "task {i} ({id})");
        // No step and no compensation recorded completed twice.
        let mut completed: HashMap<i64, usize> = HashMap::new();
        let mut order = Vec::new();
        let mut compensated = Vec::new();
        for e in &history {
            match &e.payload {
                EventPayload::StepCompleted { step_seq, .. } => {
                    *completed.entry(*step_seq).or_default() += 1;
                    order.push(*step_seq);
                }
                EventPayload::CompensationCompleted {
                    compensation_seq, ..
                } => {
                    *completed.entry(-compensation_seq).or_default() += 1;
                }
                EventPayload::CompensationStarted { step_seq, .. } => compensated.push(*step_seq),
                _ => {}
            }
            if e.actor == "worker:second" {
                taken_over += 1;
            }
        }
        assert!(
            completed.values().all(|n| *n == 1),
            "task {id} recorded a completion twice: {completed:?}"
        );
        if expected == TaskStatus::FailedTerminal {
            // Every completed write (all have compensations) undone, newest first.
            let writes: Vec<i64> = order
                .iter()
                .copied()
                .filter(|s| {
                    history.iter().any(|e| {
                        e.seq == *s
                            && matches!(
                                &e.payload,
                                EventPayload::StepScheduled {
                                    compensation: Some(_),
                                    ..
                                }
                            )
                    })
                })
                .collect();
            assert_eq!(
                compensated,
                writes.iter().rev().copied().collect::<Vec<_>>(),
                "task {id}"
            );
            for k in ["a", "b", "c"] {
                assert_eq!(
                    world.get("kv", &format!("{i}-{k}")).await.unwrap(),
                    None,
                    "task {id} left {i}-{k} behind"
                );
            }
        } else {
            for k in ["a", "b", "c"] {
                assert_eq!(
                    world.get("kv", &format!("{i}-{k}")).await.unwrap(),
                    Some(json!(i)),
                    "task {id}"
                );
            }
        }
        mandate_tests::assert_replays(&engine, id).await;
    }
    assert!(
        taken_over > 0,
        "the second process recorded nothing: the crash hit no task"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_sigkill_mid_flight_then_recover() {
    sigkill_mid_flight_then_recover(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sigkill_mid_flight_then_recover() {
    sigkill_mid_flight_then_recover(Backend::Postgres).await;
}
