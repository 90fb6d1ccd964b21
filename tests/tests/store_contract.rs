//! The store contract, written once against the `Store` trait and run on both
//! backends: fenced appends, creation, idempotency keys, leases, group commit,
//! listing, and the engine's limits.

use std::time::Duration;

use futures::future::join_all;
use mandate_engine::core::decide::projection;
use mandate_engine::core::event::{NewEvent, seal};
use mandate_engine::store::{AppendOutcome, AppendRequest, LeaseUpdate, TaskFilter};
use mandate_engine::{EventPayload, Limits, TaskState, TaskStatus};
use mandate_tests::{Backend, Harness, TestDb, backend_tests, exec_sql};
use serde_json::json;

/// An append of one signal event after `expected_seq`, built by hand.
async fn signal_request(h: &Harness, id: &str, expected_seq: i64) -> AppendRequest {
    let history = h.engine.history(id).await.unwrap();
    let state = TaskState::fold(&history);
    let new = [NewEvent::engine(EventPayload::SignalReceived {
        name: "x".into(),
        payload: json!({}),
        sender: "test".into(),
    })];
    let now = h.engine.now_ms();
    let sealed = seal(id, expected_seq, &state.last_hash, now, &new);
    AppendRequest {
        task_id: id.to_string(),
        expected_seq,
        events: sealed.into_iter().map(|(_, r)| r).collect(),
        projection: projection(&state, now),
        timers: None,
        create: None,
        lease: LeaseUpdate::Keep,
        wake: false,
    }
}

async fn appends_are_fenced_by_expected_seq(b: Backend) {
    let h = Harness::new(b).await;
    let id = h
        .engine
        .submit("saga", json!({"stages": []}), Default::default())
        .await
        .unwrap()
        .task_id;
    let store = h.engine.store();
    // A stale writer (expects seq 0, or a future seq) loses and writes nothing.
    for expected in [0, 2, 7] {
        let mut req = signal_request(&h, &id, 1).await;
        req.expected_seq = expected;
        let out = store.append(req).await.unwrap();
        assert_eq!(
            out,
            AppendOutcome::Conflict {
                actual_seq: Some(1)
            },
            "expected {expected}"
        );
    }
    assert_eq!(store.load_history(&id).await.unwrap().len(), 1);
    // The right writer wins; a second writer with the same expectation loses.
    assert_eq!(
        store
            .append(signal_request(&h, &id, 1).await)
            .await
            .unwrap(),
        AppendOutcome::Appended
    );
    assert_eq!(
        store
            .append(signal_request(&h, &id, 1).await)
            .await
            .unwrap(),
        AppendOutcome::Conflict {
            actual_seq: Some(2)
        }
    );
    let row = store.get_task(&id).await.unwrap().unwrap();
    assert_eq!(row.last_seq, 2);
    h.engine
        .history(&id)
        .await
        .expect("the chain still verifies");
    // Appending to a task that does not exist is a conflict too.
    let mut req = signal_request(&h, &id, 2).await;
    req.task_id = "no-such-task".into();
    assert_eq!(
        store.append(req).await.unwrap(),
        AppendOutcome::Conflict { actual_seq: None }
    );
}

async fn concurrent_appends_share_commits(b: Backend) {
    let h = Harness::new(b).await;
    // 300 submissions at once go through the group-commit writer together.
    let ids: Vec<String> = join_all((0..300).map(|i| {
        h.engine.submit(
            "saga",
            json!({"stages": [[{"tool": "test.echo", "input": {"n": i}}]]}),
            Default::default(),
        )
    }))
    .await
    .into_iter()
    .map(|r| r.unwrap().task_id)
    .collect();
    let all = h
        .engine
        .store()
        .list_tasks(TaskFilter {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 300);
    // Many concurrent appends to one task: exactly one wins per seq.
    let id = &ids[0];
    let reqs = join_all((0..20).map(|_| signal_request(&h, id, 1))).await;
    let outs = join_all(reqs.into_iter().map(|r| h.engine.store().append(r))).await;
    let won = outs
        .iter()
        .filter(|o| matches!(o, Ok(AppendOutcome::Appended)))
        .count();
    assert_eq!(won, 1, "{outs:?}");
    h.engine.history(id).await.unwrap();
}

async fn leases_exclude_until_they_expire(b: Backend) {
    let h = Harness::new(b).await;
    let store = h.engine.store();
    let id = h
        .engine
        .submit("saga", json!({"stages": []}), Default::default())
        .await
        .unwrap()
        .task_id;
    let now = h.engine.now_ms() + 10;
    assert_eq!(
        store.claim("a", now, 1_000, 10).await.unwrap(),
        vec![id.clone()]
    );
    assert!(
        store.claim("b", now, 1_000, 10).await.unwrap().is_empty(),
        "a holds it"
    );
    assert_eq!(
        store.renew("a", now + 500, 1_000).await.unwrap(),
        vec![(id.clone(), 1)]
    );
    // Renewed to now+1500: b still cannot take it at now+1200, can at now+1600.
    assert!(
        store
            .claim("b", now + 1_200, 1_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.claim("b", now + 1_600, 1_000, 10).await.unwrap(),
        vec![id.clone()]
    );
    // a lost it: its renewal returns nothing and its release is refused.
    assert!(
        store
            .renew("a", now + 1_700, 1_000)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(!store.release(&id, "a", 1).await.unwrap());
    // b releases only if nothing was appended since it looked.
    assert!(!store.release(&id, "b", 0).await.unwrap());
    assert!(store.release(&id, "b", 1).await.unwrap());
    let row = store.get_task(&id).await.unwrap().unwrap();
    assert_eq!((row.lease_owner, row.lease_expires_at_ms), (None, None));
    assert_eq!(
        store.claim("c", now + 1_800, 1_000, 10).await.unwrap(),
        vec![id]
    );
}

/// A worker's append names the lease it holds: once another worker took
/// the task over, the old holder's appends (going on or giving the task
/// back) are refused as `LeaseLost` and write nothing, while external
/// appends (`Keep`) and the new holder's pass.
async fn appends_are_fenced_by_the_lease(b: Backend) {
    let h = Harness::new(b).await;
    let store = h.engine.store();
    let id = h
        .engine
        .submit("saga", json!({"stages": []}), Default::default())
        .await
        .unwrap()
        .task_id;
    let now = h.engine.now_ms() + 10;
    assert_eq!(
        store.claim("a", now, 1_000, 10).await.unwrap(),
        vec![id.clone()]
    );
    let mut req = signal_request(&h, &id, 1).await;
    req.lease = LeaseUpdate::Hold { owner: "a".into() };
    assert_eq!(store.append(req).await.unwrap(), AppendOutcome::Appended);

    // a stalls past its lease; b takes the task over.
    assert_eq!(
        store.claim("b", now + 1_500, 1_000, 10).await.unwrap(),
        vec![id.clone()]
    );
    for lease in [
        LeaseUpdate::Hold { owner: "a".into() },
        LeaseUpdate::Release { owner: "a".into() },
    ] {
        let mut req = signal_request(&h, &id, 2).await;
        req.lease = lease.clone();
        assert_eq!(
            store.append(req).await.unwrap(),
            AppendOutcome::LeaseLost {
                holder: Some("b".into())
            },
            "{lease:?}"
        );
        // Even with a stale seq, the lost lease is what a is told.
        let mut req = signal_request(&h, &id, 1).await;
        req.lease = lease;
        assert!(matches!(
            store.append(req).await.unwrap(),
            AppendOutcome::LeaseLost { .. }
        ));
    }
    let row = store.get_task(&id).await.unwrap().unwrap();
    assert_eq!((row.last_seq, row.lease_owner.as_deref()), (2, Some("b")));

    // A signal needs no lease; the holder goes on, then gives the task back.
    assert_eq!(
        store
            .append(signal_request(&h, &id, 2).await)
            .await
            .unwrap(),
        AppendOutcome::Appended
    );
    let mut req = signal_request(&h, &id, 3).await;
    req.lease = LeaseUpdate::Release { owner: "b".into() };
    assert_eq!(store.append(req).await.unwrap(), AppendOutcome::Appended);
    let row = store.get_task(&id).await.unwrap().unwrap();
    assert_eq!((row.last_seq, row.lease_owner), (4, None));
    // Nobody holds it now: a worker's append is refused until it claims.
    let mut req = signal_request(&h, &id, 4).await;
    req.lease = LeaseUpdate::Hold { owner: "b".into() };
    assert_eq!(
        store.append(req).await.unwrap(),
        AppendOutcome::LeaseLost { holder: None }
    );
    // Within one batch too: a release and a later hold by the same worker.
    assert_eq!(
        store.claim("c", now + 1_600, 1_000, 10).await.unwrap(),
        vec![id.clone()]
    );
    let mut release = signal_request(&h, &id, 4).await;
    release.lease = LeaseUpdate::Release { owner: "c".into() };
    let mut hold = signal_request(&h, &id, 5).await;
    hold.lease = LeaseUpdate::Hold { owner: "c".into() };
    // seq 5 is not sealed after the release's event; only the lease matters.
    let outs = join_all([store.append(release), store.append(hold)]).await;
    assert_eq!(outs[0].as_ref().unwrap(), &AppendOutcome::Appended);
    assert!(
        matches!(
            outs[1].as_ref().unwrap(),
            AppendOutcome::LeaseLost { holder: None }
        ),
        "{outs:?}"
    );
    h.engine
        .history(&id)
        .await
        .expect("the chain still verifies");
}

async fn listing_filters_and_pages_newest_first(b: Backend) {
    let mut h = Harness::new(b).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let agent = if i % 2 == 0 { "even" } else { "odd" };
        let opts = mandate_engine::SubmitOptions {
            agent: Some(agent.into()),
            ..Default::default()
        };
        ids.push(
            h.engine
                .submit("saga", json!({"stages": []}), opts)
                .await
                .unwrap()
                .task_id,
        );
        // Distinct creation times make the order observable.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let store = h.engine.store().clone();
    let page1 = store
        .list_tasks(TaskFilter {
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        page1.iter().map(|t| &t.id).collect::<Vec<_>>(),
        vec![&ids[4], &ids[3]]
    );
    let last = page1.last().unwrap();
    let page2 = store
        .list_tasks(TaskFilter {
            limit: 2,
            before: Some((last.created_at_ms, last.id.clone())),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        page2.iter().map(|t| &t.id).collect::<Vec<_>>(),
        vec![&ids[2], &ids[1]]
    );
    let odd = store
        .list_tasks(TaskFilter {
            agent: Some("odd".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(odd.len(), 2);
    let queued = store
        .list_tasks(TaskFilter {
            status: Some(TaskStatus::Queued),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(queued.len(), 5);
    drop(store);
    h.start_worker();
    for id in &ids {
        h.engine
            .wait_until_final(id, Duration::from_secs(30))
            .await
            .unwrap();
    }
    let counts = h.engine.store().count_by_status().await.unwrap();
    assert_eq!(counts, vec![(TaskStatus::Completed, 5)]);
}

async fn limits_are_enforced(b: Backend) {
    let db = TestDb::new(b).await;
    let limits = Limits {
        max_commands_per_task: 3,
        max_payload_bytes: 2_000,
        ..Limits::default()
    };
    let mut h = Harness::on(db, limits, |_, tools| {
        tools.register(BigOutput);
    })
    .await;
    let step = json!({"tool": "test.echo", "input": {}});
    let (id, row) = h
        .run(
            "saga",
            json!({"stages": [[step.clone()], [step.clone()], [step.clone()], [step.clone()]]}),
        )
        .await;
    assert_eq!(row.status, TaskStatus::FailedTerminal);
    let state = TaskState::fold(&h.engine.history(&id).await.unwrap());
    assert!(state.error.unwrap().contains("more than 3 commands"));
    // A tool output over the payload limit fails the step, never truncated.
    let (id, row) = h
        .run(
            "saga",
            json!({"stages": [[{"tool": "test.big", "input": {"bytes": 5_000}}]]}),
        )
        .await;
    assert_eq!(row.status, TaskStatus::FailedTerminal);
    let state = TaskState::fold(&h.engine.history(&id).await.unwrap());
    assert!(
        state.error.as_deref().unwrap().contains("exceeds"),
        "{:?}",
        state.error
    );
}

/// A history's byte budget: an outside append that would pass it is
/// refused naming the limit, and a decision that would pass it blocks the
/// task naming the limit, writing nothing of it.
async fn history_byte_budget_is_enforced(b: Backend) {
    let db = TestDb::new(b).await;
    let limits = Limits {
        max_history_bytes: 16 * 1024,
        ..Limits::default()
    };
    let mut h = Harness::on(db, limits, |_, tools| {
        tools.register(BigOutput);
    })
    .await;
    h.start_worker();
    let waiting = h
        .engine
        .submit(
            "saga",
            json!({"stages": [[{"wait_signal": "go"}]]}),
            Default::default(),
        )
        .await
        .unwrap()
        .task_id;
    until(&h, &waiting, |_, history| {
        history
            .iter()
            .any(|e| matches!(e.payload, EventPayload::SignalWaitStarted { .. }))
    })
    .await;
    let before = h.engine.history(&waiting).await.unwrap().len();
    let err = h
        .engine
        .signal(&waiting, "note", json!("x".repeat(20_000)), "agent:test")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("max_history_bytes") && err.contains("16384"),
        "{err}"
    );
    let reason = "r".repeat(900);
    for _ in 0..20 {
        if let Err(e) = h
            .engine
            .signal(&waiting, "note", json!(reason), "agent:test")
            .await
        {
            assert!(e.to_string().contains("max_history_bytes"), "{e}");
            break;
        }
    }
    let after = h.engine.history(&waiting).await.unwrap();
    assert!(
        after.len() > before && after.len() < before + 20,
        "{} events",
        after.len()
    );

    // Outputs that fit one by one but not together: blocked, naming the limit.
    let step = json!({"tool": "test.big", "input": {"bytes": 5_000}});
    let id = h
        .engine
        .submit(
            "saga",
            json!({"stages": [[step.clone()], [step.clone()], [step.clone()], [step]]}),
            Default::default(),
        )
        .await
        .unwrap()
        .task_id;
    let row = until(&h, &id, |row, _| row.blocked_reason.is_some()).await;
    let reason = row.blocked_reason.unwrap();
    assert!(reason.contains("max_history_bytes"), "{reason}");
    let history = h.engine.history(&id).await.unwrap();
    let bytes: usize = history
        .iter()
        .map(|e| serde_json::to_vec(&e.payload.to_parts().1).unwrap().len())
        .sum();
    assert!(bytes <= 16 * 1024 + 1_000, "{bytes} bytes stored");
    h.assert_replays(&id).await;
}

/// Waits (30 s at most) until `pred` holds for the task's row and history.
async fn until(
    h: &Harness,
    id: &str,
    pred: impl Fn(&mandate_engine::store::TaskRow, &[mandate_engine::Event]) -> bool,
) -> mandate_engine::store::TaskRow {
    let mut updates = h.engine.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let row = h.engine.task(id).await.unwrap();
        let history = h.engine.history(id).await.unwrap();
        if pred(&row, &history) {
            return row;
        }
        tokio::select! {
            _ = updates.recv() => {}
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = tokio::time::sleep_until(deadline) => panic!("task {id} never got there: {row:?}"),
        }
    }
}

/// Returns a string of `bytes` bytes.
struct BigOutput;

impl mandate_activities::Tool for BigOutput {
    fn name(&self) -> &str {
        "test.big"
    }
    fn kind(&self) -> mandate_activities::ToolKind {
        mandate_activities::ToolKind::Read
    }
    fn call<'a>(
        &'a self,
        _ctx: mandate_activities::ToolContext,
        input: serde_json::Value,
    ) -> futures::future::BoxFuture<'a, mandate_activities::ToolResult> {
        let n = input["bytes"].as_u64().unwrap_or(0) as usize;
        Box::pin(async move { Ok(json!("b".repeat(n))) })
    }
}

/// A write of the test's own, run inside the writer's transactions: it
/// inserts `key` into a table of its own (false if the key is there already,
/// which is its fence), or fails when `fail` is set. With `direct`, it has a
/// direct SQLite form, and its sqlx form refuses to run on SQLite.
#[derive(Debug)]
struct Probe {
    key: String,
    fail: bool,
    direct: bool,
}

macro_rules! probe_body {
    ($probe:ident, $conn:ident) => {{
        if $probe.fail {
            sqlx::query("INSERT INTO no_such_table VALUES (1)")
                .execute(&mut *$conn)
                .await
                .map_err(mandate_engine::store::Error::db("the failing probe"))?;
        }
        sqlx::query("CREATE TABLE IF NOT EXISTS extra_probe (k TEXT PRIMARY KEY)")
            .execute(&mut *$conn)
            .await
            .map_err(mandate_engine::store::Error::db("probe table"))?;
        let done = sqlx::query("INSERT INTO extra_probe (k) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(&$probe.key)
            .execute(&mut *$conn)
            .await
            .map_err(mandate_engine::store::Error::db("probe insert"))?;
        Ok(done.rows_affected() == 1)
    }};
}

impl mandate_engine::store::ExtraWrite for Probe {
    fn on_sqlite<'a>(
        &'a self,
        conn: &'a mut sqlx::SqliteConnection,
    ) -> futures::future::BoxFuture<'a, Result<bool, mandate_engine::store::Error>> {
        Box::pin(async move {
            if self.direct {
                return Err(mandate_engine::store::Error::Corrupt(format!(
                    "probe {}: the sqlx form ran although a direct form exists",
                    self.key
                )));
            }
            probe_body!(self, conn)
        })
    }
    fn on_sqlite_direct(
        &self,
        conn: &rusqlite::Connection,
    ) -> Option<Result<bool, mandate_engine::store::Error>> {
        if !self.direct {
            return None;
        }
        let lite = |during| move |source| mandate_engine::store::Error::Sqlite { during, source };
        Some((|| {
            if self.fail {
                conn.execute("INSERT INTO no_such_table VALUES (1)", [])
                    .map_err(lite("the failing probe"))?;
            }
            conn.execute(
                "CREATE TABLE IF NOT EXISTS extra_probe (k TEXT PRIMARY KEY)",
                [],
            )
            .map_err(lite("probe table"))?;
            let n = conn
                .prepare_cached("INSERT INTO extra_probe (k) VALUES (?1) ON CONFLICT DO NOTHING")
                .and_then(|mut s| s.execute([&self.key]))
                .map_err(lite("probe insert"))?;
            Ok(n == 1)
        })())
    }
    fn on_postgres<'a>(
        &'a self,
        conn: &'a mut sqlx::PgConnection,
    ) -> futures::future::BoxFuture<'a, Result<bool, mandate_engine::store::Error>> {
        Box::pin(async move { probe_body!(self, conn) })
    }
}

/// Extra writes (the evidence log's, say) run in the writer's batches among
/// the tasks' appends: each one's fence answers for it alone, and one that
/// fails fails neither the appends nor the other writes batched with it.
/// On SQLite a write with a direct form runs in that form (its sqlx form
/// would fail), mixed in the same batches with writes that have none.
async fn extra_writes_share_the_writers_transactions(b: Backend) {
    use std::sync::Arc;
    let h = Harness::new(b).await;
    let store = h.engine.store();
    let id = h
        .engine
        .submit("saga", json!({"stages": []}), Default::default())
        .await
        .unwrap()
        .task_id;
    let before = store.writer_stats().snapshot();
    let extras = (0..40).map(|i| {
        let probe = Probe {
            // Keys 0..20 twice: exactly one of each pair writes.
            key: format!("k{}", i % 20),
            fail: i == 7 || i == 9,
            direct: i % 3 == 0,
        };
        store.write_extra(Arc::new(probe))
    });
    let appends = join_all((0..20).map(|_| signal_request(&h, &id, 1))).await;
    let (extras, appends) = tokio::join!(
        join_all(extras),
        join_all(appends.into_iter().map(|r| store.append(r)))
    );
    assert!(extras[7].is_err(), "the failing write reports its error");
    assert!(extras[9].is_err(), "so does a failing direct one");
    // k7's and k9's first writes failed, so their second ones win; every
    // other key's first.
    let wrote = extras.iter().filter(|r| matches!(r, Ok(true))).count();
    assert_eq!(wrote, 20, "{extras:?}");
    assert!(matches!(extras[27], Ok(true)), "{extras:?}");
    assert!(matches!(extras[29], Ok(true)), "{extras:?}");
    assert_eq!(
        extras.iter().filter(|r| matches!(r, Ok(false))).count(),
        18,
        "a fence that did not hold wrote nothing: {extras:?}"
    );
    let won = appends
        .iter()
        .filter(|o| matches!(o, Ok(AppendOutcome::Appended)))
        .count();
    assert_eq!(
        won, 1,
        "the appends batched with them are unaffected: {appends:?}"
    );
    let after = store.writer_stats().snapshot();
    assert!(
        after.1 - before.1 >= 60,
        "every write went through the writer ({before:?} → {after:?})"
    );
}

/// A history long enough to be decoded on several threads comes back whole
/// and in order, and a row that does not decode is named by its seq, as
/// when rows are decoded one after another.
async fn long_histories_decode_in_order(b: Backend) {
    let h = Harness::new(b).await;
    let n = mandate_engine::store::PARALLEL_DECODE_FROM * 2 + 5;
    exec_sql(
        &h.db,
        &format!(
            "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {n})
             INSERT INTO events (task_id, seq, gseq, event_type, recorded_at_ms, actor, payload, prev_hash, hash)
             SELECT 'long-task', n, 10000000 + n, 'SignalReceived', 1000 + n, 'user:x',
                    '{{\"name\": \"s\", \"payload\": {{\"i\": ' || n || '}}, \"sender\": \"user:x\"}}', 'p', 'h'
             FROM s"
        ),
    )
    .await;
    let events = h.engine.store().load_history("long-task").await.unwrap();
    assert_eq!(events.len(), n);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, i as i64 + 1);
        assert_eq!(e.payload["payload"]["i"], serde_json::json!(i as i64 + 1));
    }
    let bad = n - 3;
    exec_sql(&h.db, &format!("UPDATE events SET payload = 'not json' WHERE task_id = 'long-task' AND seq IN (3000, {bad})")).await;
    let err = h
        .engine
        .store()
        .load_history("long-task")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("seq 3000") && err.contains("not JSON"),
        "{err}"
    );
}

backend_tests!(
    long_histories_decode_in_order,
    extra_writes_share_the_writers_transactions,
    appends_are_fenced_by_expected_seq,
    concurrent_appends_share_commits,
    leases_exclude_until_they_expire,
    appends_are_fenced_by_the_lease,
    listing_filters_and_pages_newest_first,
    limits_are_enforced,
    history_byte_budget_is_enforced,
);

/// A new SQLite database, and its `-wal` and `-shm` files, are readable by
/// their owner only (they hold every task's input and output and the token
/// hashes); before, they were created 0644, readable by every local user.
/// (PostgreSQL keeps its files itself.)
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_sqlite_database_is_private_to_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    let db = TestDb::new(Backend::Sqlite).await;
    let path = db
        .url
        .strip_prefix("sqlite://")
        .expect("a sqlite URL")
        .to_string();
    assert!(!std::path::Path::new(&path).exists());
    let mut h = Harness::on(db, Limits::default(), |_, _| {}).await;
    let (_, row) = h
        .run(
            "saga",
            json!({"stages": [[{"tool": "test.echo", "input": {}}]]}),
        )
        .await;
    assert_eq!(row.status, TaskStatus::Completed);
    for file in [path.clone(), format!("{path}-wal"), format!("{path}-shm")] {
        let mode = std::fs::metadata(&file)
            .unwrap_or_else(|e| panic!("{file}: {e}"))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file} has mode {:o}", mode & 0o777);
    }
}

/// A write of 64 KiB (sixteen pages) into a scratch table, inside the
/// writer's transactions: enough WAL to see where checkpoints happen.
#[derive(Debug)]
struct Bulk;

impl mandate_engine::store::ExtraWrite for Bulk {
    fn on_sqlite<'a>(
        &'a self,
        conn: &'a mut sqlx::SqliteConnection,
    ) -> futures::future::BoxFuture<'a, Result<bool, mandate_engine::store::Error>> {
        Box::pin(async move {
            sqlx::query("CREATE TABLE IF NOT EXISTS bulk (b BLOB)")
                .execute(&mut *conn)
                .await
                .map_err(mandate_engine::store::Error::db("bulk table"))?;
            sqlx::query("INSERT INTO bulk (b) VALUES (randomblob(65536))")
                .execute(&mut *conn)
                .await
                .map_err(mandate_engine::store::Error::db("bulk insert"))?;
            Ok(true)
        })
    }
    fn on_postgres<'a>(
        &'a self,
        _conn: &'a mut sqlx::PgConnection,
    ) -> futures::future::BoxFuture<'a, Result<bool, mandate_engine::store::Error>> {
        unreachable!("a SQLite-only probe")
    }
}

/// A new SQLite store at `db`, with `config`, and the paths of its database
/// file and WAL.
async fn sqlite_store(
    db: &TestDb,
    config: mandate_engine::store::WriterConfig,
) -> (
    std::sync::Arc<dyn mandate_engine::store::Store>,
    String,
    String,
) {
    let path = db.url.strip_prefix("sqlite://").unwrap().to_string();
    let store = mandate_engine::store::open_with(&db.url, config)
        .await
        .unwrap();
    (store, path.clone(), format!("{path}-wal"))
}

fn file_len(path: &str) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The WAL is copied back into the database file by the checkpoint thread,
/// not by the writer's commits: with the writer's own limit out of reach,
/// 6.4 MB written through the writer still reach the database file, as the
/// thread's checkpoints finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_wal_is_checkpointed_off_the_writer() {
    use mandate_engine::store::Store;
    let db = TestDb::new(Backend::Sqlite).await;
    let path = db.url.strip_prefix("sqlite://").unwrap().to_string();
    let store = mandate_engine::store::sqlite::SqliteStore::open(
        &db.url,
        mandate_engine::store::WriterConfig {
            checkpoint_from_pages: Some(16),
            wal_limit_pages: 1_000_000,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut checkpoints = store
        .wal_checkpoints()
        .expect("a database file has a checkpoint thread");
    let before = file_len(&path);
    for _ in 0..100 {
        store.write_extra(std::sync::Arc::new(Bulk)).await.unwrap();
    }
    // Each write woke the thread; its last checkpoints copy what is left.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while file_len(&path) < before + 100 * 65_536 {
        let finished = tokio::time::timeout_at(deadline, checkpoints.changed()).await;
        assert!(
            matches!(finished, Ok(Ok(()))),
            "the database file is {} bytes 30 s after 6.4 MB were committed (it was {before}), \
             after {} checkpoints: nothing copied the WAL",
            file_len(&path),
            *checkpoints.borrow()
        );
    }
}

/// Should checkpoints fall behind (here the thread is off), the writer's own
/// commit checkpoints once the WAL reaches its limit: 6.4 MB written, and
/// the WAL never holds much more than the limit's 100 pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_wal_stays_within_its_limit() {
    let db = TestDb::new(Backend::Sqlite).await;
    let (store, path, wal) = sqlite_store(
        &db,
        mandate_engine::store::WriterConfig {
            checkpoint_from_pages: None,
            wal_limit_pages: 100,
            ..Default::default()
        },
    )
    .await;
    let before = file_len(&path);
    let mut largest = 0;
    for _ in 0..100 {
        store.write_extra(std::sync::Arc::new(Bulk)).await.unwrap();
        largest = largest.max(file_len(&wal));
    }
    // The limit, one batch of 17 pages past it, and slack for SQLite's own
    // pages; each frame is a 24-byte header and a 4,096-byte page.
    let bound = 32 + 160 * (24 + 4096);
    assert!(
        largest <= bound,
        "the WAL reached {largest} bytes, past the {bound} a 100-page limit allows"
    );
    assert!(
        file_len(&path) >= before + 90 * 65_536,
        "the writer's checkpoints copied the WAL into the database file"
    );
}

/// The SQLite events table of a database written before migration 0010
/// (clustered on (task_id, seq), payloads inline) becomes a table appended
/// in commit order with every row, value and constraint kept: the same rows
/// come back, (task_id, seq) and gseq stay unique, and an event without a
/// gseq keeps none (so `evidence check` still names it `unnumbered`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_events_move_to_an_appended_table_whole() {
    use sqlx::{Connection, Row};
    let db = TestDb::new(Backend::Sqlite).await;
    mandate_tests::migrate_before(&db, "0010").await;
    exec_sql(
        &db,
        "INSERT INTO events (task_id, seq, event_type, recorded_at_ms, actor, payload, prev_hash, hash, gseq) VALUES
            ('t-b', 1, 'TaskCreated', 10, 'agent:a', '{\"b\": 1, \"a\": [1.5, \"é\"]}', 'p1', 'h1', 2),
            ('t-a', 1, 'TaskCreated', 11, 'engine', '{}', 'p2', 'h2', 1),
            ('t-b', 2, 'TimerFired', 12, 'engine', '{\"timer_seq\": 4}', 'h1', 'h3', 3),
            ('t-c', 1, 'SignalReceived', 13, 'user:x', '{\"x\": null}', 'p4', 'h4', NULL)",
    )
    .await;
    let all =
        "SELECT task_id, seq, event_type, recorded_at_ms, actor, payload, prev_hash, hash, gseq
               FROM events ORDER BY task_id, seq";
    type Row9 = (
        String,
        i64,
        String,
        i64,
        String,
        String,
        String,
        String,
        Option<i64>,
    );
    let read = |url: String| async move {
        let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query_as::<_, Row9>(all)
            .fetch_all(&mut c)
            .await
            .unwrap()
    };
    let before = read(db.url.clone()).await;
    assert_eq!(before.len(), 4);

    // Opening the store runs migration 0010.
    let store = mandate_engine::store::open(&db.url).await.unwrap();
    drop(store);
    assert_eq!(read(db.url.clone()).await, before, "every row, as it was");

    let mut c = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
    let schema: String =
        sqlx::query("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'events'")
            .fetch_one(&mut c)
            .await
            .unwrap()
            .get(0);
    assert!(!schema.contains("WITHOUT ROWID"), "{schema}");
    // Stored in gseq order (the unnumbered event first, as NULLs sort).
    let order: Vec<Option<i64>> = sqlx::query_scalar("SELECT gseq FROM events ORDER BY rowid")
        .fetch_all(&mut c)
        .await
        .unwrap();
    assert_eq!(order, [None, Some(1), Some(2), Some(3)]);
    for (what, insert) in [
        (
            "a second (task_id, seq)",
            "INSERT INTO events (task_id, seq, event_type, recorded_at_ms, actor, payload, prev_hash, hash, gseq)
             VALUES ('t-b', 2, 'TimerFired', 14, 'engine', '{}', 'x', 'y', 9)",
        ),
        (
            "a second gseq",
            "INSERT INTO events (task_id, seq, event_type, recorded_at_ms, actor, payload, prev_hash, hash, gseq)
             VALUES ('t-b', 3, 'TimerFired', 14, 'engine', '{}', 'x', 'y', 3)",
        ),
    ] {
        let err = sqlx::query(insert).execute(&mut c).await.unwrap_err();
        assert!(err.to_string().contains("UNIQUE"), "{what}: {err}");
    }
    // The per-task reads take the (task_id, seq) index, not a scan.
    let plan: Vec<String> = sqlx::query(
        "EXPLAIN QUERY PLAN SELECT seq FROM events WHERE task_id = 't-b' AND seq > 0 ORDER BY seq",
    )
    .fetch_all(&mut c)
    .await
    .unwrap()
    .iter()
    .map(|r| r.get::<String, _>("detail"))
    .collect();
    assert!(
        plan.iter().any(|d| d.contains("events_task_seq")),
        "{plan:?}"
    );
}
