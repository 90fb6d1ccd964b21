//! Routing through the built binary, on SQLite and PostgreSQL: `mandate
//! demo` tells its story on either store; `mandate tti [--json]` reports,
//! from recorded answers, the same time-to-intervention figures `mandate
//! serve` puts on `/metrics`; and a `mandate serve` killed with SIGKILL in
//! the middle of a delivery loses no notification and, once restarted,
//! sends each again under the same id, which a receiver honouring the
//! idempotency key accepts once.

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

/// `mandate [EXTRA] serve --listen 127.0.0.1:0 [SERVE]` on `url`; its API address.
fn serve_with(
    url: &str,
    extra: &[&str],
    serve: &[&str],
) -> (Child, String, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mandate"))
        .args(extra)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(serve)
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

fn serve(url: &str) -> (Child, String, mpsc::Receiver<String>) {
    serve_with(url, &[], &[])
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

const HOOK_SECRET: &str = "kill-test-hook-secret-0123456789";

/// What the receiver saw: each notification id accepted once, later
/// arrivals of an accepted id counted as duplicates.
#[derive(Default)]
struct Seen {
    accepted: std::collections::BTreeMap<String, Value>,
    duplicates: usize,
    refused: usize,
}

/// A webhook receiver on loopback that checks the HMAC signature, honours
/// the idempotency key, and stalls its first delivery after accepting it
/// (the response never comes: the sender is killed meanwhile).
struct Receiver {
    url: String,
    seen: std::sync::Arc<std::sync::Mutex<Seen>>,
    arrived: std::sync::Arc<tokio::sync::Notify>,
}

async fn receiver() -> Receiver {
    use axum::http::{HeaderMap, StatusCode};
    use std::sync::atomic::{AtomicBool, Ordering};
    let seen: std::sync::Arc<std::sync::Mutex<Seen>> = Default::default();
    let arrived = std::sync::Arc::new(tokio::sync::Notify::new());
    let first = std::sync::Arc::new(AtomicBool::new(true));
    let (s, a) = (seen.clone(), arrived.clone());
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let (s, a, first) = (s.clone(), a.clone(), first.clone());
            async move {
                let h = |n: &str| {
                    headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string()
                };
                let now = chrono::Utc::now().timestamp();
                let ok = mandate_routing::sign::verify_webhook(
                    HOOK_SECRET.as_bytes(),
                    &h("x-mandate-signature"),
                    &body,
                    now,
                    300,
                )
                .is_ok();
                let id = h("x-mandate-notification-id");
                {
                    let mut s = s.lock().unwrap();
                    if !ok || id.is_empty() {
                        s.refused += 1;
                    } else {
                        match s.accepted.entry(id) {
                            std::collections::btree_map::Entry::Occupied(_) => s.duplicates += 1,
                            std::collections::btree_map::Entry::Vacant(v) => {
                                v.insert(serde_json::from_slice(&body).unwrap_or(Value::Null));
                            }
                        }
                    }
                }
                a.notify_waiters();
                if !ok {
                    return StatusCode::UNAUTHORIZED;
                }
                if first.swap(false, Ordering::SeqCst) {
                    // Accepted, but the answer never comes.
                    std::future::pending::<()>().await;
                }
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Receiver { url, seen, arrived }
}

impl Receiver {
    /// Waits until `done` holds of what was seen (each arrival re-checks).
    async fn wait_until(&self, what: &str, done: impl Fn(&Seen) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let arrival = self.arrived.notified();
            {
                let s = self.seen.lock().unwrap();
                if done(&s) {
                    return;
                }
            }
            if tokio::time::timeout_at(deadline, arrival).await.is_err() {
                let s = self.seen.lock().unwrap();
                panic!(
                    "timed out waiting for {what}: accepted {:?}, duplicates {}, refused {}",
                    s.accepted.keys().collect::<Vec<_>>(),
                    s.duplicates,
                    s.refused
                );
            }
        }
    }
}

/// The ids of the notifications the task's history calls for.
async fn expected_ids(url: &str, task: &str) -> std::collections::BTreeSet<String> {
    let store = mandate_engine::store::open(url).await.unwrap();
    let mut ids = std::collections::BTreeSet::new();
    for raw in store.load_history(task).await.unwrap() {
        if raw.event_type != "OwnersNotified" {
            continue;
        }
        let Ok(mandate_engine::EventPayload::OwnersNotified { about_seq, routing }) =
            mandate_engine::EventPayload::from_parts(&raw.event_type, &raw.payload)
        else {
            panic!("unreadable OwnersNotified at seq {}", raw.seq);
        };
        for r in &routing.recipients {
            for c in &r.contacts {
                let key =
                    mandate_engine::core::routing::item_key(task, about_seq, &r.recipient, &c.sink);
                ids.insert(mandate_routing::outbox::notification_id(&key));
            }
        }
    }
    ids
}

/// SIGKILL of `mandate serve` while a delivery is in flight (the receiver
/// accepted it but had not answered): after a restart nothing is lost, the
/// unanswered one is sent again under the same id (the receiver counts it
/// as a duplicate, not a second acceptance), and every notification the
/// history names is accepted exactly once.
async fn a_sigkill_mid_delivery_loses_nothing_and_each_id_is_accepted_once(b: Backend) {
    let db = TestDb::new(b).await;
    let rx = receiver().await;
    let policies = tempfile::tempdir().unwrap();
    let dir = policies.path();
    std::fs::create_dir_all(dir.join("org")).unwrap();
    std::fs::write(
        dir.join("catalog.yaml"),
        mandate_activities::policy::DEFAULT_CATALOG_YAML,
    )
    .unwrap();
    std::fs::write(
        dir.join("org/baseline.cedar"),
        mandate_activities::policy::DEFAULT_ORG_POLICY,
    )
    .unwrap();
    let owners = mandate_routing::config::SHIPPED_OWNERS_YAML
        .replace(
            "{id: log, kind: log}",
            &format!("{{id: hook, kind: webhook, url: '{}', secret: '{HOOK_SECRET}', timeout_ms: 60000}}", rx.url),
        )
        .replace("{sink: log}", "{sink: hook}")
        .replace("group_wait_seconds: 30", "group_wait_seconds: 0");
    std::fs::write(dir.join("owners.yaml"), owners).unwrap();
    let policy_arg = dir.to_str().unwrap().to_string();
    let extra = ["--policies", policy_arg.as_str()];
    let fast = ["--lease-ms", "1000", "--delivery-lease-ms", "1000"];
    let (mut first, _, _l1) = serve_with(&db.url, &extra, &fast);
    let plan = r#"{"agent": "agent-deployer-7", "reason": "two monitored writes", "steps": [
        {"id": "flag", "tool": "flag.set", "input": {"flag": "checkout-v2", "value": true}},
        {"id": "mark", "tool": "kv.put", "depends_on": ["flag"], "input": {"key": "release", "value": "v2"}}]}"#;
    let submitted = run::mandate_on(
        &db.url,
        &["--policies", &policy_arg, "submit", "plan", "--input", plan],
    );
    submitted.expect_code(0);
    let task = submitted.stdout.trim().to_string();
    // The first delivery is accepted and left unanswered: kill the sender now.
    rx.wait_until("the first delivery", |s| !s.accepted.is_empty())
        .await;
    first.kill().expect("SIGKILL mandate serve");
    first.wait().unwrap();
    let (mut second, _, _l2) = serve_with(&db.url, &extra, &fast);
    // Two monitored steps, one owner (team-platform) each: two notifications,
    // and the one in flight at the kill arrives again.
    rx.wait_until("both notifications and the resend", |s| {
        s.accepted.len() == 2 && s.duplicates >= 1
    })
    .await;
    let expected = expected_ids(&db.url, &task).await;
    {
        let s = rx.seen.lock().unwrap();
        let accepted: std::collections::BTreeSet<String> = s.accepted.keys().cloned().collect();
        assert_eq!(
            accepted, expected,
            "every notification the history names, once"
        );
        assert_eq!(s.refused, 0, "every delivery carried a valid signature");
        for body in s.accepted.values() {
            assert_eq!(body["recipient"], "team-platform", "{body}");
        }
    }
    // Stopped gracefully, the server records the batch in flight; then
    // nothing is left to send: the outbox holds them all as sent.
    let pid = second.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let (tx, done) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(second.wait());
    });
    let status = done
        .recv_timeout(STARTUP)
        .expect("mandate serve stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "serve exited with {status}");
    let store = mandate_routing::outbox::Outbox::open(&db.url)
        .await
        .unwrap();
    for id in &expected {
        let row = store.get(id).await.unwrap().expect("in the outbox");
        assert_eq!(row.status, "sent", "{row:?}");
    }
}

backend_tests!(
    a_sigkill_mid_delivery_loses_nothing_and_each_id_is_accepted_once,
    demo_tells_its_story_on_each_store,
    tti_reports_recorded_answers_as_metrics_do,
);
