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

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use mandate_engine::EventPayload as E;
use mandate_engine::store::{self, Store, TaskFilter};
use mandate_tests::mcp::{self, text};
use mandate_tests::{Backend, TestDb, backend_tests};
use rmcp::ServiceExt;
use rmcp::model::{ClientCapabilities, ClientConfig, Implementation, ProtocolVersion};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};
use serve::{history, python, repo, serve};
use tokio::io::{AsyncBufReadExt, BufReader};

const AGENT: &str = "agent-deployer-7";

/// The imported tools of one server (`prefix` names the compensation).
fn tools_yaml(prefix: &str) -> String {
    format!(
        r#"    tools:
      - name: notes_put
        kind: write_reversible
        operation: update
        scope: key
        owners: [team-platform]
        input_schema: {{type: object, required: [key, value], properties: {{key: {{type: string}}, value: {{type: string}}}}}}
        compensation: {{tool: {prefix}notes_delete, input: {{key: "${{input.key}}"}}}}
      - {{name: notes_slow_put, kind: write_reversible, operation: update, owners: [team-platform],
         compensation: {{tool: {prefix}notes_delete, input: {{key: "${{input.key}}"}}}}}}
      - {{name: notes_delete, kind: write_reversible, operation: delete, owners: [team-platform], recovery: db_write}}
      - {{name: notes_get, kind: read, operation: read, owners: [team-platform]}}
      - {{name: notes_wipe, kind: write_irreversible, operation: delete, owners: [team-platform], recovery: db_write}}
"#
    )
}

/// The test policies plus the two upstream servers.
pub fn write_upstream_policies(dir: &Path, stdio_log: &Path, http_url: &str) {
    gov::write_policies(dir);
    let py = python();
    let script = repo().join("tests/tools/mcp_upstream.py");
    let catalog = dir.join("catalog.yaml");
    let mut text = std::fs::read_to_string(&catalog).unwrap();
    text.push_str(&format!(
        "mcp_servers:\n  - name: notes-stdio\n    prefix: notes.\n    command: [{:?}, {:?}, --log, {:?}, stdio]\n{}",
        py.display().to_string(),
        script.display().to_string(),
        stdio_log.display().to_string(),
        tools_yaml("notes.")
    ));
    text.push_str(&format!(
        "  - name: notes-http\n    prefix: remote.\n    url: {http_url}\n{}",
        tools_yaml("remote.")
    ));
    std::fs::write(&catalog, text).unwrap();
}

/// The HTTP upstream, started by the test: its child and its `/mcp` URL.
pub async fn http_upstream(log: &Path) -> (tokio::process::Child, String) {
    let mut child = tokio::process::Command::new(python())
        .arg(repo().join("tests/tools/mcp_upstream.py"))
        .arg("--log")
        .arg(log)
        .arg("http")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the HTTP upstream");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the HTTP upstream prints its port within 30 s")
        .unwrap()
        .expect("the HTTP upstream prints its port");
    let port = serde_json::from_str::<Value>(&first).unwrap()["port"]
        .as_u64()
        .unwrap();
    (child, format!("http://127.0.0.1:{port}/mcp"))
}

/// The upstream's log: one JSON object per line.
pub fn upstream_log(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// rmcp's client on `/mcp` of `base` as the agent `token` names.
pub async fn client(
    base: &str,
    token: &str,
) -> rmcp::service::RunningService<rmcp::RoleClient, ClientConfig> {
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(format!("{base}/mcp"))
            .auth_header(token.to_string()),
    );
    ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("upstream-tests", "1"),
    )
    .with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE)
    .serve(transport)
    .await
    .expect("the MCP client connects to /mcp")
}

async fn upstream_tools_are_governed(b: Backend) {
    let db = TestDb::new(b).await;
    let dir = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let stdio_log = logs.path().join("stdio.jsonl");
    let http_log = logs.path().join("http.jsonl");
    let (_http_upstream, url) = http_upstream(&http_log).await;
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
    let tasks: Vec<_> = store
        .list_tasks(TaskFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
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
