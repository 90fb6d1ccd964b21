//! Proxied upstream MCP servers: the catalog imports the tools of two small
//! MCP servers (`tests/tools/mcp_upstream.py`, the official Python SDK's
//! FastMCP), one Mandate starts on stdio and one this test starts on
//! streamable HTTP, under the prefixes `notes.` and `remote.`. Through the
//! gateway of a `mandate serve` child (rmcp's client on `/mcp`), their tools
//! are listed with the prefix (the delete the policy always denies is not),
//! an allowed write reaches its server once with the step's idempotency key
//! in `_meta` and is recorded, a denied call never reaches it, and
//! `mandate_rollback` runs the catalog's compensation on it, fencing the
//! undone step's key. On SQLite and PostgreSQL.

#[path = "../../tests/tests/support/gov.rs"]
mod gov;
#[path = "support/serve.rs"]
mod serve;
#[path = "support/upstream.rs"]
mod upstream;

use mandate_engine::EventPayload as E;
use mandate_engine::store;
use mandate_tests::mcp::{self, text};
use mandate_tests::{Backend, TestDb, backend_tests};
use serde_json::{Value, json};
use serve::{history, serve, tasks};
use upstream::{client, http_upstream, upstream_log, write_upstream_policies};

const AGENT: &str = "agent-deployer-7";

async fn upstream_tools_are_governed(b: Backend) {
    let db = TestDb::new(b).await;
    let dir = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let stdio_log = logs.path().join("stdio.jsonl");
    let http_log = logs.path().join("http.jsonl");
    let (_http_upstream, url, _events) = http_upstream(&http_log).await;
    write_upstream_policies(dir.path(), &stdio_log, &url);
    let served = serve(&db.url, dir.path(), "upstream", &[]).await;
    let store = store::open(&db.url).await.unwrap();
    let (_, token) = mandate_api::create_token(store.as_ref(), "agent", AGENT, 0)
        .await
        .unwrap();
    let client = client(&served.base, &token).await;
    let call = |tool: String, args: Value| {
        let peer = client.peer().clone();
        async move { mcp::call(&peer, &tool, args).await }
    };

    // Listed with their prefix; the delete NO-DELETE always denies is not.
    let tools = mcp::tool_names(client.peer()).await;
    for p in ["notes.", "remote."] {
        for t in ["notes_put", "notes_get", "notes_slow_put"] {
            assert!(
                tools.contains(&format!("{p}{t}")),
                "{p}{t} not in {tools:?}"
            );
        }
        for t in ["notes_wipe", "notes_delete"] {
            assert!(!tools.contains(&format!("{p}{t}")), "{p}{t} listed");
        }
    }
    assert!(!tools.iter().any(|t| t.starts_with("notes_")), "{tools:?}");

    for (p, log) in [("notes.", &stdio_log), ("remote.", &http_log)] {
        // An allowed write runs once, upstream, and is recorded.
        let put = call(
            format!("{p}notes_put"),
            json!({"key": "a", "value": format!("{p}1")}),
        )
        .await;
        assert_ne!(put.is_error, Some(true), "{}", text(&put));
        assert_eq!(
            put.structured_content.as_ref().unwrap()["value"],
            format!("{p}1")
        );
        let get = call(format!("{p}notes_get"), json!({"key": "a"})).await;
        assert_eq!(
            get.structured_content.as_ref().unwrap()["value"],
            format!("{p}1"),
            "{}",
            text(&get)
        );
        // A denied call names its rule and never reaches the server.
        let wipe = call(format!("{p}notes_wipe"), json!({})).await;
        assert_eq!(wipe.is_error, Some(true));
        assert!(text(&wipe).contains("crudlex.agent"), "{}", text(&wipe));
        let entries = upstream_log(log);
        assert!(
            !entries.iter().any(|e| e["tool"] == "notes_wipe"),
            "the denied call reached the upstream: {entries:?}"
        );
        let puts: Vec<&Value> = entries
            .iter()
            .filter(|e| e["tool"] == "notes_put")
            .collect();
        assert_eq!(puts.len(), 2, "one start, one applied: {entries:?}");
        assert_eq!(puts[1]["event"], "applied");
    }

    // The engine's side: one session task, each put scheduled once with the
    // catalog's compensation, its key the one the upstream saw.
    let tasks: Vec<_> = tasks(store.as_ref()).await;
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    let task = tasks[0].id.clone();
    let h = history(store.as_ref(), &task).await;
    for (p, log) in [("notes.", &stdio_log), ("remote.", &http_log)] {
        let scheduled: Vec<i64> = h
            .iter()
            .filter(|e| matches!(&e.payload,
                E::StepScheduled { tool, compensation: Some(c), .. }
                    if *tool == format!("{p}notes_put") && c.tool == format!("{p}notes_delete") && c.input == json!({"key": "a"})))
            .map(|e| e.seq)
            .collect();
        assert_eq!(scheduled.len(), 1, "{p}notes_put scheduled once");
        let key = format!("{task}:{}", scheduled[0]);
        let seen: Vec<Value> = upstream_log(log)
            .into_iter()
            .filter(|e| e["tool"] == "notes_put")
            .collect();
        assert_eq!(seen[0]["key"], key, "the step's idempotency key in _meta");
    }
    for tool in ["notes.notes_wipe", "remote.notes_wipe"] {
        assert!(h.iter().any(|e| matches!(&e.payload,
            E::PolicyEvaluated { tool: t, .. } if t == tool)));
        assert!(!h.iter().any(|e| matches!(&e.payload,
            E::StepScheduled { tool: t, .. } if t == tool)));
    }

    // Rollback: the compensations run upstream, newest first, each fencing
    // the key of the step it undoes.
    let rollback = call("mandate_rollback".into(), json!({})).await;
    assert_ne!(rollback.is_error, Some(true), "{}", text(&rollback));
    assert_eq!(
        rollback.structured_content.as_ref().unwrap()["compensations_in_order"],
        json!(["remote.notes_delete", "notes.notes_delete"])
    );
    for log in [&stdio_log, &http_log] {
        let entries = upstream_log(log);
        let put_key = entries.iter().find(|e| e["tool"] == "notes_put").unwrap()["key"].clone();
        let delete = entries
            .iter()
            .find(|e| e["tool"] == "notes_delete" && e["event"] == "start")
            .unwrap_or_else(|| panic!("no compensation upstream: {entries:?}"));
        assert_eq!(delete["compensates"], put_key, "{delete}");
        assert_eq!(delete["args"], json!({"key": "a"}));
    }
    for p in ["notes.", "remote."] {
        let get = call(format!("{p}notes_get"), json!({"key": "a"})).await;
        assert_eq!(
            get.structured_content.as_ref().unwrap()["value"],
            Value::Null,
            "undone: {}",
            text(&get)
        );
    }
    client.cancel().await.unwrap();
    drop(served);
}

backend_tests!(upstream_tools_are_governed);
