//! Old histories keep replaying: `tests/fixtures/release-0.1.0.db` was
//! written by release 0.1.0, before the governance gateway (plans with
//! `policy.check` steps and signal approvals, a signal-approved
//! `gated_deploy`, a saga with a signal approval, a `preapproval` task, a
//! plan still waiting for approval). This binary opens it (migrating the
//! schema), and `mandate verify` and `mandate replay` of every task exit 0.
//! On PostgreSQL the same histories, copied row by row into a fresh
//! database, must hold as well.
//!
//! `tests/fixtures/before-poll-points.db` was written by the release before
//! tasks recorded their poll points (commit ffaf61f): its histories replay
//! with batch polls (see `tests/fixtures/README.md` for what it holds).

use std::path::PathBuf;

use mandate_tests::{Backend, TestDb};
use serde_json::Value;
use sqlx::Row;

#[path = "support/run.rs"]
mod run;
use run::Run;

/// Runs `mandate ARGS` against `url`.
fn mandate(url: &str, args: &[&str]) -> Run {
    run::mandate_on(url, args)
}

const RELEASE_0_1_0: &str = "release-0.1.0.db";
/// Written by the release before tasks recorded their poll points
/// (`TaskStarted.polls`): every history in it replays with batch polls.
const BATCH_POLLS: &str = "before-poll-points.db";
const BATCH_POLLS_TASKS: usize = 8;

fn fixture_copy(name: &str) -> (tempfile::TempDir, String) {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("release.db");
    std::fs::copy(&fixture, &path).expect("copy the fixture");
    let url = format!("sqlite://{}", path.display());
    (dir, url)
}

/// Every task holds: `verify` exits 0, and so does `replay` of each task.
fn assert_all_hold(url: &str, tasks: usize) {
    let verify = mandate(url, &["verify", "--json"]);
    verify.expect_code(0);
    let list = mandate(url, &["list", "--json", "--limit", "100"]);
    list.expect_code(0);
    let ids: Vec<String> = list
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .flat_map(|v| match v {
            Value::Array(a) => a,
            other => vec![other],
        })
        .filter_map(|t| t["id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(ids.len(), tasks, "the fixture's tasks: {}", list.stdout);
    for id in &ids {
        let r = mandate(url, &["replay", id]);
        assert_eq!(
            r.code,
            Some(0),
            "replay of {id} from {url}\n{}\n{}",
            r.stdout,
            r.stderr
        );
    }
}

#[test]
fn a_database_written_by_release_0_1_0_still_replays_and_verifies_on_sqlite() {
    let (_dir, url) = fixture_copy(RELEASE_0_1_0);
    assert_all_hold(&url, 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_histories_hold_on_postgresql() {
    let (_dir, sqlite_url) = fixture_copy(RELEASE_0_1_0);
    let pg = copy_to_postgres(&sqlite_url).await;
    assert_all_hold(&pg.url, 11);
}

#[test]
fn a_database_written_before_poll_points_still_replays_and_verifies_on_sqlite() {
    let (_dir, url) = fixture_copy(BATCH_POLLS);
    assert_all_hold(&url, BATCH_POLLS_TASKS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_histories_written_before_poll_points_hold_on_postgresql() {
    let (_dir, sqlite_url) = fixture_copy(BATCH_POLLS);
    let pg = copy_to_postgres(&sqlite_url).await;
    assert_all_hold(&pg.url, BATCH_POLLS_TASKS);
}

/// A fresh PostgreSQL database holding the fixture's histories, task rows
/// and timers, copied row by row (the schema migrated by this binary).
async fn copy_to_postgres(sqlite_url: &str) -> TestDb {
    // Migrate the copy and create the PostgreSQL schema with this binary.
    mandate(sqlite_url, &["verify"]).expect_code(0);
    let pg = TestDb::new(Backend::Postgres).await;
    mandate(&pg.url, &["list"]).expect_code(0);
    let mut src = <sqlx::SqliteConnection as sqlx::Connection>::connect(sqlite_url)
        .await
        .unwrap();
    let mut dst = <sqlx::PgConnection as sqlx::Connection>::connect(&pg.url)
        .await
        .unwrap();
    let events = sqlx::query(
        "SELECT task_id, seq, event_type, recorded_at_ms, actor, payload, prev_hash, hash, gseq FROM events ORDER BY gseq",
    )
    .fetch_all(&mut src)
    .await
    .unwrap();
    for e in &events {
        sqlx::query(
            "INSERT INTO events (task_id, seq, event_type, recorded_at_ms, actor, payload, prev_hash, hash, gseq)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(e.get::<String, _>(0))
        .bind(e.get::<i64, _>(1))
        .bind(e.get::<String, _>(2))
        .bind(e.get::<i64, _>(3))
        .bind(e.get::<String, _>(4))
        .bind(e.get::<String, _>(5))
        .bind(e.get::<String, _>(6))
        .bind(e.get::<String, _>(7))
        .bind(e.get::<i64, _>(8))
        .execute(&mut dst)
        .await
        .unwrap();
    }
    let tasks = sqlx::query(
        "SELECT id, workflow, workflow_version, agent, idempotency_key, status, last_seq, last_hash,
                created_at_ms, updated_at_ms, blocked_reason, ready_at_ms FROM tasks",
    )
    .fetch_all(&mut src)
    .await
    .unwrap();
    for t in &tasks {
        sqlx::query(
            "INSERT INTO tasks (id, workflow, workflow_version, agent, idempotency_key, status, last_seq, last_hash,
                                created_at_ms, updated_at_ms, blocked_reason, ready_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(t.get::<String, _>(0))
        .bind(t.get::<String, _>(1))
        .bind(t.get::<i64, _>(2))
        .bind(t.get::<Option<String>, _>(3))
        .bind(t.get::<Option<String>, _>(4))
        .bind(t.get::<String, _>(5))
        .bind(t.get::<i64, _>(6))
        .bind(t.get::<String, _>(7))
        .bind(t.get::<i64, _>(8))
        .bind(t.get::<i64, _>(9))
        .bind(t.get::<Option<String>, _>(10))
        .bind(t.get::<Option<i64>, _>(11))
        .execute(&mut dst)
        .await
        .unwrap();
    }
    let timers = sqlx::query("SELECT task_id, seq, fire_at_ms, kind FROM timers")
        .fetch_all(&mut src)
        .await
        .unwrap();
    for t in &timers {
        sqlx::query("INSERT INTO timers (task_id, seq, fire_at_ms, kind) VALUES ($1, $2, $3, $4)")
            .bind(t.get::<String, _>(0))
            .bind(t.get::<i64, _>(1))
            .bind(t.get::<i64, _>(2))
            .bind(t.get::<String, _>(3))
            .execute(&mut dst)
            .await
            .unwrap();
    }
    sqlx::query("UPDATE event_log SET head = (SELECT COALESCE(MAX(gseq), 0) FROM events)")
        .execute(&mut dst)
        .await
        .unwrap();
    pg
}

/// Opening a large database from before migration 0010 says, before the
/// events table is rebuilt, that it is being rebuilt and for how long; a
/// small one, or one already migrated, opens without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_database_is_told_of_the_events_rebuild() {
    let db = TestDb::new(Backend::Sqlite).await;
    mandate_tests::migrate_before(&db, "0010").await;
    let quiet = mandate(&db.url, &["list", "--json"]);
    quiet.expect_code(0);
    assert!(!quiet.stderr.contains("0010"), "{}", quiet.stderr);

    let db = TestDb::new(Backend::Sqlite).await;
    mandate_tests::migrate_before(&db, "0010").await;
    // The announcement reads the event counter, not the rows.
    mandate_tests::exec_sql(
        &db,
        &format!(
            "UPDATE event_log SET head = {} WHERE id = 1",
            mandate_engine::store::sqlite::ANNOUNCE_REBUILD_FROM_EVENTS
        ),
    )
    .await;
    let told = mandate(&db.url, &["list", "--json"]);
    told.expect_code(0);
    assert!(
        told.stderr
            .contains("migration 0010 rebuilds the events table")
            && told.stderr.contains("100000 events"),
        "{}",
        told.stderr
    );
    let again = mandate(&db.url, &["list", "--json"]);
    assert!(!again.stderr.contains("0010"), "{}", again.stderr);
}
