//! A SIGKILL of `mandate serve` in the middle of an MCP call loses nothing:
//! an MCP client (rmcp's, on `/mcp`) calls a slow upstream tool (the HTTP
//! upstream of `tests/tools/mcp_upstream.py`, imported by the catalog), the
//! upstream says the call started, the server is SIGKILLed, and a new
//! `mandate serve` on the same database takes the session task over: the
//! step completes, a reconnecting client reads its result with
//! `mandate_status {task}`, and the upstream's log shows the write applied
//! once under the step's idempotency key, however often it was delivered.
//! On SQLite and PostgreSQL.

#[path = "../../tests/tests/support/gov.rs"]
mod gov;
#[path = "support/serve.rs"]
mod serve;
#[path = "support/upstream.rs"]
mod upstream;

use std::time::Duration;

use mandate_engine::EventPayload as E;
use mandate_engine::store;
use mandate_tests::mcp::{self, params, text};
use mandate_tests::{Backend, TestDb, backend_tests};
use serde_json::{Value, json};
use serve::{history, serve, tasks};
use tokio::sync::mpsc;
use upstream::{client, http_upstream, upstream_log, write_upstream_policies};

const AGENT: &str = "agent-deployer-7";

/// The next upstream log line that `want` accepts (30 s at most).
async fn wait_event(
    events: &mut mpsc::UnboundedReceiver<Value>,
    want: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(e)) if want(&e) => return e,
            Ok(Some(_)) => {}
            Ok(None) => panic!("the upstream exited"),
            Err(_) => panic!("the upstream logged no awaited event in 30 s"),
        }
    }
}

async fn sigkill_mid_call_completes_once(b: Backend) {
    let db = TestDb::new(b).await;
    let dir = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("http.jsonl");
    let (_upstream, url, mut events) = http_upstream(&log).await;
    write_upstream_policies(dir.path(), &logs.path().join("stdio.jsonl"), &url);
    // A short lease, so that the next process takes the session task over soon.
    let mut first = serve(&db.url, dir.path(), "mcp-first", &["--lease-ms", "1500"]).await;
    let store = store::open(&db.url).await.unwrap();
    let (_, token) = mandate_api::create_token(store.as_ref(), "agent", AGENT, 0)
        .await
        .unwrap();
    let session = client(&first.base, &token).await;
    let peer = session.peer().clone();
    let call = tokio::spawn(async move {
        peer.call_tool(params(
            "remote.notes_slow_put",
            json!({"key": "k", "value": "v", "ms": 2000}),
        ))
        .await
    });
    let started = wait_event(&mut events, |e| {
        e["tool"] == "notes_slow_put" && e["event"] == "start"
    })
    .await;
    let key = started["key"].as_str().unwrap().to_string();
    assert!(!call.is_finished(), "the call is under way");
    first.sigkill().await;
    call.abort();
    drop(session);

    // The session task of the killed process.
    let tasks = tasks(store.as_ref()).await;
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    let task = tasks[0].id.clone();
    assert!(
        key.starts_with(&format!("{task}:")),
        "{key} is a step key of {task}"
    );

    // Another process on the same database; a client reconnects and reads
    // how the call ended (the takeover waits for the lease to expire).
    let second = serve(&db.url, dir.path(), "mcp-second", &[]).await;
    let again = client(&second.base, &token).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let call = loop {
        let status = mcp::call(again.peer(), "mandate_status", json!({"task": task})).await;
        assert_ne!(status.is_error, Some(true), "{}", text(&status));
        let calls = status.structured_content.unwrap()["calls"].clone();
        assert_eq!(calls.as_array().unwrap().len(), 1, "{calls}");
        if calls[0]["state"] == "completed" {
            break calls[0].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the call did not complete after the restart: {calls}\n{}",
            second.log()
        );
        // Another process writes the history: look again on its next event.
        let _ = tokio::time::timeout(Duration::from_millis(200), events.recv()).await;
    };
    assert_eq!(call["tool"], "remote.notes_slow_put");
    assert_eq!(call["output"]["value"], "v", "{call}");

    // The engine's side: one step, completed once, under the key the
    // upstream saw; the upstream applied it once under that key.
    let h = history(store.as_ref(), &task).await;
    let step = h
        .iter()
        .find(|e| matches!(&e.payload, E::StepScheduled { tool, .. } if tool == "remote.notes_slow_put"))
        .unwrap();
    assert_eq!(key, format!("{task}:{}", step.seq));
    let completions = h
        .iter()
        .filter(
            |e| matches!(&e.payload, E::StepCompleted { step_seq, .. } if *step_seq == step.seq),
        )
        .count();
    assert_eq!(completions, 1);
    let entries = upstream_log(&log);
    println!("{b:?}: the upstream saw {entries:?}");
    let applied = entries
        .iter()
        .filter(|e| e["tool"] == "notes_slow_put" && e["event"] == "applied")
        .collect::<Vec<_>>();
    assert_eq!(applied.len(), 1, "applied once: {entries:?}");
    assert_eq!(applied[0]["key"], key.as_str());
    let deliveries: Vec<&Value> = entries
        .iter()
        .filter(|e| e["tool"] == "notes_slow_put" && e["event"] == "start")
        .collect();
    assert!(
        deliveries.len() >= 2,
        "the new process delivered the step again: {entries:?}"
    );
    assert!(
        deliveries.iter().all(|e| e["key"] == key.as_str()),
        "every delivery carried the one key: {entries:?}"
    );
    // Another agent cannot read this session's calls.
    let (_, other) = mandate_api::create_token(store.as_ref(), "agent", "agent-other", 0)
        .await
        .unwrap();
    let stranger = client(&second.base, &other).await;
    let refused = mcp::call(stranger.peer(), "mandate_status", json!({"task": task})).await;
    assert_eq!(refused.is_error, Some(true), "{}", text(&refused));
    assert!(text(&refused).contains("not an MCP session task of agent agent-other"));
    stranger.cancel().await.unwrap();
    again.cancel().await.unwrap();
}

backend_tests!(sigkill_mid_call_completes_once);
