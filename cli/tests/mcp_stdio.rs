//! `mandate mcp` on stdio, driven by rmcp's client as an MCP client starts a
//! server: the built binary is spawned with `MANDATE_TOKEN` (an agent
//! token) on a fresh database of each store; an allowed write runs once and
//! is recorded, a denied call names its rule and never runs, and
//! `mandate_rollback` undoes the write.

use mandate_activities::World;
use mandate_engine::EventPayload as E;
use mandate_engine::store::{self, TaskFilter};
use mandate_tests::mcp::{self, text};
use mandate_tests::{Backend, TestDb, backend_tests};
use rmcp::ServiceExt;
use rmcp::model::{ClientCapabilities, ClientConfig, Implementation, ProtocolVersion};
use rmcp::transport::TokioChildProcess;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_mandate");
const AGENT: &str = "agent-deployer-7";

async fn stdio_session(b: Backend) {
    let db = TestDb::new(b).await;
    let store = store::open(&db.url).await.unwrap();
    let (_, token) = mandate_api::create_token(store.as_ref(), "agent", AGENT, 0)
        .await
        .unwrap();
    let mut command = tokio::process::Command::new(BIN);
    command
        .args(["mcp", "--db", &db.url])
        .env_remove("RUST_LOG")
        .env_remove("MANDATE_SERVER")
        .env_remove("MANDATE_POLICY_DIR")
        .env("MANDATE_TOKEN", &token);
    let transport = TokioChildProcess::new(command).expect("spawn mandate mcp");
    let client = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("cli-tests", "1"),
    )
    .with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE)
    .serve(transport)
    .await
    .expect("mandate mcp initializes over stdio");
    let call = |tool: &'static str, args: Value| mcp::call(client.peer(), tool, args);

    let tools = mcp::tool_names(client.peer()).await;
    assert!(tools.contains(&"kv.put".to_string()), "{tools:?}");
    assert!(!tools.contains(&"kv.delete".to_string()), "{tools:?}");

    let put = call("kv.put", json!({"key": "stdio-k", "value": "v"})).await;
    assert_ne!(put.is_error, Some(true), "{}", text(&put));
    let world = World::connect(&db.url).await.unwrap();
    assert_eq!(world.get("kv", "stdio-k").await.unwrap(), Some(json!("v")));

    let denied = call("kv.delete", json!({"key": "stdio-k"})).await;
    assert_eq!(denied.is_error, Some(true));
    assert!(text(&denied).contains("crudlex.agent"), "{}", text(&denied));
    assert_eq!(world.get("kv", "stdio-k").await.unwrap(), Some(json!("v")));

    let tasks = store
        .list_tasks(TaskFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].workflow, "mcp_session");
    assert_eq!(tasks[0].agent.as_deref(), Some(AGENT));
    let engine_history = mandate_engine::core::event::parse;
    let raw = store.load_history(&tasks[0].id).await.unwrap();
    let scheduled: Vec<String> = raw
        .iter()
        .map(|r| engine_history(r).unwrap())
        .filter_map(|e| match e.payload {
            E::StepScheduled { tool, .. } => Some(tool),
            _ => None,
        })
        .collect();
    assert_eq!(scheduled, ["kv.put"], "the put ran once; the delete never");

    let rollback = call("mandate_rollback", json!({})).await;
    assert_ne!(rollback.is_error, Some(true), "{}", text(&rollback));
    assert_eq!(world.get("kv", "stdio-k").await.unwrap(), None);
    client.cancel().await.unwrap();
}

backend_tests!(stdio_session);
