//! The MCP gateway with the official Python SDK (`mcp` from PyPI, installed
//! in `.ci/venv` by `.ci/run`) as the client: `tests/tools/mcp_client.py`
//! connects over streamable HTTP to `/mcp` of a `mandate serve` child and
//! over stdio to a `mandate mcp` child it spawns itself (MANDATE_TOKEN, as
//! an MCP client's settings do). It lists the tools, makes an allowed write
//! (it runs once; the history shows it), a denied call (its error names the
//! rule; the tool is never scheduled), a gated call (it waits; this test
//! approves it through the API as alice and bob; the client then gets the
//! result) and `mandate_rollback` (the writes are undone newest first). This
//! test checks the client's view and the engine's side, on each store.
//!
//! Without the venv (or `mcp` in it) the test fails, saying how to install.

#[path = "../../tests/tests/support/gov.rs"]
mod gov;
#[path = "support/serve.rs"]
mod serve;

use std::process::Stdio;
use std::time::Duration;

use mandate_activities::World;
use mandate_engine::EventPayload as E;
use mandate_engine::store::{self, Store};
use mandate_tests::{Backend, TestDb, backend_tests};
use serde_json::{Value, json};
use serve::{BIN, history, python, repo, serve, tasks};
use tokio::io::{AsyncBufReadExt, BufReader};

const AGENT: &str = "agent-deployer-7";

/// Runs the Python client with `args` as `token`'s agent, approving its gated
/// call through the API of `base` when it says it waits; returns its steps.
async fn run_client(
    base: &str,
    store: &dyn Store,
    token: &str,
    approvers: &[String],
    args: &[String],
) -> Vec<Value> {
    let mut child = tokio::process::Command::new(python())
        .arg(repo().join("tests/tools/mcp_client.py"))
        .args(args)
        .env("MANDATE_TOKEN", token)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run the Python MCP client");
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let stderr = child.stderr.take().unwrap();
    let err = tokio::spawn(async move {
        let mut s = String::new();
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            s.push_str(&l);
            s.push('\n');
        }
        s
    });
    let http = reqwest::Client::new();
    let mut steps = Vec::new();
    loop {
        let line = match tokio::time::timeout(Duration::from_secs(90), stdout.next_line()).await {
            Ok(Ok(Some(l))) => l,
            Ok(_) => break,
            Err(_) => panic!("the Python client was silent for 90 s after {steps:?}"),
        };
        let step: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the client printed {line:?}, not JSON: {e}"));
        if step["step"] == "gated_waiting" {
            // "ledger.charge awaits approval TASK:SEQ by 2 of alice, bob (rule …)"
            let message = step["message"].as_str().unwrap_or_default();
            let id = message
                .split("awaits approval ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .unwrap_or_else(|| panic!("no approval id in {message:?}"));
            assert!(
                message.contains("org.payments.large-needs-two"),
                "{message}"
            );
            // Nothing ran yet: the step is not scheduled while it awaits approval.
            let (task, _) = id.split_once(':').unwrap();
            let charges = scheduled(store, task)
                .await
                .into_iter()
                .filter(|t| t == "ledger.charge")
                .count();
            assert_eq!(charges, 1, "only the allowed charge ran before approval");
            for t in approvers {
                let r = http
                    .post(format!("{base}/v1/approvals/{id}"))
                    .bearer_auth(t)
                    .json(&json!({"decision": "approve", "comment": "python test"}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
            }
        }
        steps.push(step);
    }
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the Python client exits")
        .unwrap();
    let err = err.await.unwrap();
    assert!(
        status.success() && steps.last().is_some_and(|s| s["step"] == "done"),
        "the Python client failed ({status}) after {steps:?}:\n{err}"
    );
    steps
}

/// The tools of the steps `task` scheduled, in order.
async fn scheduled(store: &dyn Store, task: &str) -> Vec<String> {
    history(store, task)
        .await
        .into_iter()
        .filter_map(|e| match e.payload {
            E::StepScheduled { tool, .. } => Some(tool),
            _ => None,
        })
        .collect()
}

fn step<'a>(steps: &'a [Value], name: &str) -> &'a Value {
    steps
        .iter()
        .find(|s| s["step"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {steps:?}"))
}

/// The client's view and the engine's side of one walk (`tag`).
async fn check(store: &dyn Store, world: &World, steps: &[Value], tag: &str, before: &[String]) {
    let names = step(steps, "tools")["names"].as_array().unwrap().clone();
    for want in [
        "kv.put",
        "ledger.charge",
        "mandate_status",
        "mandate_rollback",
    ] {
        assert!(names.contains(&json!(want)), "{want} not in {names:?}");
    }
    assert!(!names.contains(&json!("kv.delete")), "{names:?}");
    for ok in ["put", "charge", "gated", "status", "rollback"] {
        assert_eq!(step(steps, ok)["is_error"], false, "{}", step(steps, ok));
    }
    assert_eq!(step(steps, "charge")["structured"]["balance_cents"], 500);
    assert_eq!(step(steps, "gated")["structured"]["balance_cents"], 5500);
    let denied = step(steps, "denied");
    assert_eq!(denied["is_error"], true, "{denied}");
    assert!(
        denied["text"].as_str().unwrap().contains("crudlex.agent"),
        "the denial names its rule: {denied}"
    );
    let rollback = &step(steps, "rollback")["structured"];
    assert_eq!(
        rollback["compensations_in_order"],
        json!(["ledger.refund", "ledger.refund", "kv.delete"]),
        "{rollback}"
    );

    // The engine's side: one session task for this walk.
    let tasks: Vec<_> = tasks(store)
        .await
        .into_iter()
        .filter(|t| t.workflow == "mcp_session" && !before.contains(&t.id))
        .collect();
    assert_eq!(tasks.len(), 1, "one session task per walk: {tasks:?}");
    let task = &tasks[0];
    assert_eq!(task.agent.as_deref(), Some(AGENT));
    let h = history(store, &task.id).await;
    let tools = scheduled(store, &task.id).await;
    assert_eq!(
        tools,
        ["kv.put", "ledger.charge", "ledger.charge"],
        "each allowed call ran once; the denied kv.delete never (its call count is 0)"
    );
    assert!(h.iter().any(|e| matches!(&e.payload,
        E::StepDenied { rule, .. } if rule.contains("crudlex.agent"))));
    let approvers: Vec<&str> = h
        .iter()
        .filter_map(|e| match &e.payload {
            E::ApprovalDecided {
                identity,
                approved: true,
                ..
            } => Some(identity.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(approvers, ["alice", "bob"]);
    let undone: Vec<&str> = h
        .iter()
        .filter_map(|e| match &e.payload {
            E::CompensationCompleted { .. } => Some("completed"),
            _ => None,
        })
        .collect();
    assert_eq!(undone.len(), 3, "three compensations completed");
    let account = format!("py-{tag}");
    let balance = world
        .get("ledger", &account)
        .await
        .unwrap()
        .and_then(|v| v["balance_cents"].as_i64())
        .unwrap_or(0);
    assert_eq!(balance, 0, "the charges were refunded");
    assert_eq!(world.get("kv", &account).await.unwrap(), None);
}

async fn session_ids(store: &dyn Store) -> Vec<String> {
    tasks(store).await.into_iter().map(|t| t.id).collect()
}

async fn python_sdk_client(b: Backend) {
    let db = TestDb::new(b).await;
    let policies = tempfile::tempdir().unwrap();
    gov::write_policies(policies.path());
    let served = serve(&db.url, policies.path(), "py-serve", &[]).await;
    let store = store::open(&db.url).await.unwrap();
    let world = World::connect(&db.url).await.unwrap();
    let (_, token) = mandate_api::create_token(store.as_ref(), "agent", AGENT, 0)
        .await
        .unwrap();
    let mut approvers = Vec::new();
    for who in ["alice", "bob"] {
        let (_, t) = mandate_api::create_token(store.as_ref(), "approver", who, 0)
            .await
            .unwrap();
        approvers.push(t);
    }

    // Streamable HTTP to /mcp of `mandate serve`.
    let before = session_ids(store.as_ref()).await;
    let args = [
        "--tag".into(),
        "http".into(),
        "http".into(),
        format!("{}/mcp", served.base),
    ];
    let steps = run_client(&served.base, store.as_ref(), &token, &approvers, &args).await;
    check(store.as_ref(), &world, &steps, "http", &before).await;

    // Stdio: the client spawns `mandate mcp` on the same database.
    let before = session_ids(store.as_ref()).await;
    let args = [
        "--tag".into(),
        "stdio".into(),
        "stdio".into(),
        BIN.into(),
        "--db".into(),
        db.url.clone(),
        "--policies".into(),
        policies.path().display().to_string(),
        "mcp".into(),
    ];
    let steps = run_client(&served.base, store.as_ref(), &token, &approvers, &args).await;
    check(store.as_ref(), &world, &steps, "stdio", &before).await;
    drop(served);
}

backend_tests!(python_sdk_client);
