//! Routing through the built binary, on SQLite and PostgreSQL: `mandate
//! demo` tells its story on either store, and `mandate tti [--json]`
//! reports, from recorded answers, the same time-to-intervention figures
//! `mandate serve` puts on `/metrics`.

use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use mandate_tests::{Backend, TestDb, backend_tests};
use serde_json::Value;
use sqlx::Row;

#[path = "support/run.rs"]
mod run;

const STARTUP: Duration = Duration::from_secs(30);

/// The demo on a named database (kept), which later checks read.
fn demo(db: &TestDb) -> run::Run {
    let r = run::mandate_on(&db.url, &["demo"]);
    r.expect_code(0);
    r
}

async fn demo_tells_its_story_on_each_store(b: Backend) {
    let db = TestDb::new(b).await;
    let r = demo(&db);
    for expected in [
        "for team-platform (signature ok): agent-deployer-7: monitored_execute: step \"flag\" (flag.set)",
        "approve as user-bob",
        "a second click on the same link is refused: 409 Conflict",
        "rolled back to v2",
    ] {
        assert!(
            r.stdout.contains(expected),
            "missing {expected:?} in\n{}",
            r.stdout
        );
    }
    assert_eq!(r.stdout.matches("  intact: ").count(), 3, "{}", r.stdout);
}

/// The notifications the demo delivered: (id, recipient).
async fn notifications(db: &TestDb) -> Vec<(String, String)> {
    let sql =
        "SELECT id, recipient FROM notifications WHERE status = 'sent' ORDER BY created_at_ms, id";
    let rows: Vec<(String, String)> = match db.backend {
        Backend::Sqlite => {
            let mut c = <sqlx::SqliteConnection as sqlx::Connection>::connect(&db.url)
                .await
                .unwrap();
            sqlx::query(sql)
                .fetch_all(&mut c)
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect()
        }
        Backend::Postgres => {
            let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url)
                .await
                .unwrap();
            sqlx::query(sql)
                .fetch_all(&mut c)
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect()
        }
    };
    rows
}

/// `mandate serve` on `url` on a loopback port; its API address.
fn serve(url: &str) -> (Child, String, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mandate"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("MANDATE_DATABASE_URL", url)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mandate serve");
    let lines = run::lines(child.stderr.take().unwrap());
    let first = lines.recv_timeout(STARTUP).expect("serve printed nothing");
    let base = first
        .strip_prefix("mandate API listening on ")
        .and_then(|r| r.split(' ').next())
        .unwrap_or_else(|| panic!("unexpected first line from serve: {first}"))
        .to_string();
    (child, base, lines)
}

/// `mandate tti --json` and `/metrics` agree on figures from recorded
/// answers: a one-click approval (the demo) and acknowledgements through
/// `mandate ack`, each measured from the delivery it answers.
async fn tti_reports_recorded_answers_as_metrics_do(b: Backend) {
    let db = TestDb::new(b).await;
    demo(&db);
    // Two more answers, through the CLI, by the recipients.
    let sent = notifications(&db).await;
    let mut acked = 0;
    for (id, recipient) in sent.iter().filter(|(_, r)| r == "team-platform").take(2) {
        let r = run::mandate_on(&db.url, &["ack", id, "--as", recipient]);
        r.expect_code(0);
        acked += 1;
    }
    assert_eq!(acked, 2, "{sent:?}");
    let json = run::mandate_on(&db.url, &["tti", "--json"]);
    json.expect_code(0);
    let f: Value = serde_json::from_str(&json.stdout).unwrap();
    let tti = f["tti"].as_array().unwrap();
    let by = |action: &str| {
        tti.iter()
            .find(|t| t["action"] == action)
            .unwrap_or_else(|| panic!("no {action} in {f}"))
            .clone()
    };
    let (approve, ack) = (by("approve"), by("acknowledge"));
    assert_eq!(
        (approve["count"].as_u64(), ack["count"].as_u64()),
        (Some(1), Some(2)),
        "{f}"
    );
    for t in [&approve, &ack] {
        let (p50, p95) = (t["p50_ms"].as_i64().unwrap(), t["p95_ms"].as_i64().unwrap());
        assert!(0 <= p50 && p50 <= p95, "{t}");
    }
    // The table says the same.
    let text = run::mandate_on(&db.url, &["tti"]);
    text.expect_code(0);
    assert!(
        text.stdout.contains("approve           n=1 ")
            && text.stdout.contains("acknowledge       n=2 "),
        "{}",
        text.stdout
    );
    // And /metrics, served from the same history.
    let (mut child, base, _lines) = serve(&db.url);
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    for t in [&approve, &ack] {
        for (q, field) in [("0.5", "p50_ms"), ("0.95", "p95_ms")] {
            let line = format!(
                "mandate_tti_seconds{{action=\"{}\",quantile=\"{q}\"}} {}",
                t["action"].as_str().unwrap(),
                t[field].as_i64().unwrap() as f64 / 1000.0
            );
            assert!(
                metrics.contains(&line),
                "{line} not in /metrics:\n{metrics}"
            );
        }
    }
}

backend_tests!(
    demo_tells_its_story_on_each_store,
    tti_reports_recorded_answers_as_metrics_do,
);
