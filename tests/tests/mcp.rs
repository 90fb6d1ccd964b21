//! The MCP gateway (issue 14) with a real MCP client, rmcp's own: over
//! streamable HTTP (`/mcp` on the API, bearer token) and over an in-memory
//! byte stream (the transport `mandate mcp` speaks on stdio; the binary
//! itself is run by `cli/tests/mcp_stdio.rs`). Each call is a durable step
//! of the session's task: an allowed write runs once and the history shows
//! it, a denied one names its rule and never runs, a gated one waits for
//! approvers deciding through the API, and `mandate_rollback` undoes the
//! writes newest first.

#[path = "support/api_server.rs"]
mod api_server;
#[path = "support/gov.rs"]
mod gov;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mandate_api::{ApiConfig, AppState};
use mandate_engine::EventPayload as E;
use mandate_mcp::{Caller, Gateway, GatewayConfig};
use mandate_tests::mcp::{self, params, text};
use mandate_tests::{Backend, backend_tests};
use reqwest::StatusCode;
use rmcp::model::{
    CallToolResult, ClientCapabilities, ClientConfig, Implementation, NumberOrString,
    ProgressNotificationParam, ProgressToken, ProtocolVersion, RequestMetaObject,
};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const AGENT: &str = "agent-deployer-7";

/// A client that speaks a protocol version with sessions and forwards the
/// progress notifications it gets.
struct Client {
    progress: mpsc::UnboundedSender<ProgressNotificationParam>,
}

impl ClientHandler for Client {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("mandate-tests", "1"),
        )
        .with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE)
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _ctx: NotificationContext<RoleClient>,
    ) {
        let _ = self.progress.send(params);
    }
}

type Session = RunningService<RoleClient, Client>;

struct Setup {
    api: api_server::Api,
    purges: Arc<AtomicUsize>,
}

async fn setup(b: Backend) -> Setup {
    let purges = Arc::new(AtomicUsize::new(0));
    let p = purges.clone();
    let g = gov::harness_with(b, move |_, t| {
        t.register(gov::CountingPurge(p));
    })
    .await;
    let state = AppState::new(
        g.h.engine.clone(),
        g.governance.clone(),
        ApiConfig {
            rate_per_second: 100_000,
            rate_burst: 100_000,
            ..Default::default()
        },
    );
    let api = api_server::start_state(g, state).await;
    Setup { api, purges }
}

async fn connect_http(
    s: &Setup,
    token: &str,
) -> (Session, mpsc::UnboundedReceiver<ProgressNotificationParam>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", s.api.base))
            .auth_header(token.to_string()),
    );
    let client = Client { progress: tx }
        .serve(transport)
        .await
        .expect("the MCP client connects over streamable HTTP");
    (client, rx)
}

/// The same session handler `mandate mcp` serves on stdio, over a byte pipe.
async fn connect_stream(
    s: &Setup,
) -> (Session, mpsc::UnboundedReceiver<ProgressNotificationParam>) {
    let gateway = Gateway::new(
        s.api.g.h.engine.clone(),
        s.api.g.governance.clone(),
        GatewayConfig::default(),
    );
    let handler = gateway.session(
        Caller {
            agent: AGENT.into(),
            on_behalf_of: None,
        },
        "stdio",
    );
    let (server_io, client_io) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        if let Ok(running) = handler.serve(server_io).await {
            let _ = running.waiting().await;
        }
    });
    let (tx, rx) = mpsc::unbounded_channel();
    let client = Client { progress: tx }
        .serve(client_io)
        .await
        .expect("the MCP client connects over the byte stream");
    (client, rx)
}

async fn call(client: &Session, tool: &str, args: Value) -> CallToolResult {
    mcp::call(client.peer(), tool, args).await
}

/// The session task of the agent (the only `mcp_session` task).
async fn session_tasks(s: &Setup) -> Vec<String> {
    s.api
        .g
        .h
        .engine
        .store()
        .list_tasks(mandate_engine::store::TaskFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.workflow == "mcp_session")
        .map(|t| t.id)
        .collect()
}

async fn balance(s: &Setup, account: &str) -> i64 {
    s.api
        .g
        .h
        .world
        .get("ledger", account)
        .await
        .unwrap()
        .and_then(|v| v["balance_cents"].as_i64())
        .unwrap_or(0)
}

/// The whole walk: list, allowed write, denied call, gated call approved
/// through the API, rollback newest first.
async fn walk(
    s: &Setup,
    client: &Session,
    mut progress: mpsc::UnboundedReceiver<ProgressNotificationParam>,
) {
    // tools/list: the catalog's tools the agent may call, and Mandate's own.
    let tools = mcp::tool_names(client.peer()).await;
    for want in [
        "kv.put",
        "ledger.charge",
        "email.send",
        "mandate_status",
        "mandate_rollback",
        "mandate_submit_plan",
    ] {
        assert!(
            tools.contains(&want.to_string()),
            "{want} missing from {tools:?}"
        );
    }
    // NO-DELETE: the policy denies deletes to this agent whatever the input.
    for hidden in ["archive.purge", "kv.delete"] {
        assert!(
            !tools.contains(&hidden.to_string()),
            "{hidden} listed: {tools:?}"
        );
    }

    // An allowed write runs once; the history shows it.
    let put = call(client, "kv.put", json!({"key": "mcp-k", "value": "v1"})).await;
    assert_ne!(put.is_error, Some(true), "{}", text(&put));
    assert_eq!(
        s.api.g.h.world.get("kv", "mcp-k").await.unwrap(),
        Some(json!("v1"))
    );
    let charge = call(
        client,
        "ledger.charge",
        json!({"account": "mcp-acct", "amount_cents": 500}),
    )
    .await;
    assert_ne!(charge.is_error, Some(true), "{}", text(&charge));
    assert_eq!(
        charge.structured_content.as_ref().unwrap()["balance_cents"],
        500
    );
    let tasks = session_tasks(s).await;
    assert_eq!(tasks.len(), 1, "one task per session: {tasks:?}");
    let task = tasks[0].clone();
    let history = s.api.g.h.engine.history(&task).await.unwrap();
    let completed: Vec<&str> = history
        .iter()
        .filter_map(|e| match &e.payload {
            E::StepScheduled { tool, .. } => Some(tool.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(completed, ["kv.put", "ledger.charge"]);
    assert!(history.iter().any(|e| matches!(&e.payload,
        E::StepScheduled { tool, compensation: Some(c), .. } if tool == "kv.put" && c.tool == "kv.delete" && c.input == json!({"key": "mcp-k"}))),
        "the catalog's compensation is recorded with the step");

    // A denied call names its rule; nothing runs.
    let purge = call(client, "archive.purge", json!({"bucket": "logs"})).await;
    assert_eq!(purge.is_error, Some(true));
    assert!(text(&purge).contains("crudlex.agent"), "{}", text(&purge));
    assert_eq!(s.purges.load(Ordering::SeqCst), 0);

    // A gated call waits (with progress notifications) until two approvers
    // decide through the API; then the client gets the result.
    let mut p = params(
        "ledger.charge",
        json!({"account": "mcp-acct", "amount_cents": 5000}),
    );
    let mut meta = RequestMetaObject::default();
    meta.set_progress_token(ProgressToken(NumberOrString::Number(7)));
    p.meta = Some(meta);
    let peer = client.peer().clone();
    let gated = tokio::spawn(async move { peer.call_tool(p).await });
    let first = tokio::time::timeout(Duration::from_secs(30), progress.recv())
        .await
        .expect("a progress notification while the call awaits approval")
        .unwrap();
    assert!(
        first
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("org.payments.large-needs-two"),
        "{first:?}"
    );
    assert!(!gated.is_finished());
    let inbox = s.api.g.inbox(&task).await;
    assert_eq!(inbox.len(), 1, "{inbox:?}");
    for who in ["alice", "bob"] {
        let token = s.api.token("approver", who).await;
        let (status, body) = s
            .api
            .post(
                &format!("/v1/approvals/{task}:{}", inbox[0].request_seq),
                &token,
                json!({"decision": "approve", "comment": "ok"}),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    let gated = tokio::time::timeout(Duration::from_secs(30), gated)
        .await
        .expect("the gated call answers after approval")
        .unwrap()
        .unwrap();
    assert_ne!(gated.is_error, Some(true), "{}", text(&gated));
    assert_eq!(
        gated.structured_content.as_ref().unwrap()["balance_cents"],
        5500
    );

    // mandate_status shows every call with its decision.
    let status = call(client, "mandate_status", json!({})).await;
    let calls = status.structured_content.as_ref().unwrap()["calls"]
        .as_array()
        .unwrap()
        .clone();
    let states: Vec<(&str, &str)> = calls
        .iter()
        .map(|c| (c["tool"].as_str().unwrap(), c["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        [
            ("kv.put", "completed"),
            ("ledger.charge", "completed"),
            ("archive.purge", "denied"),
            ("ledger.charge", "completed")
        ]
    );

    // Rollback: the writes are undone, newest first.
    let rollback = call(client, "mandate_rollback", json!({"reason": "test"})).await;
    assert_ne!(rollback.is_error, Some(true), "{}", text(&rollback));
    let out = rollback.structured_content.unwrap();
    assert_eq!(
        out["compensations_in_order"],
        json!(["ledger.refund", "ledger.refund", "kv.delete"])
    );
    assert_eq!(balance(s, "mcp-acct").await, 0);
    assert_eq!(s.api.g.h.world.get("kv", "mcp-k").await.unwrap(), None);
    mandate_tests::assert_replays(&s.api.g.h.engine, &task).await;

    // The next call opens a new session task.
    let again = call(client, "kv.put", json!({"key": "mcp-k2", "value": 2})).await;
    assert_ne!(again.is_error, Some(true), "{}", text(&again));
    assert_eq!(session_tasks(s).await.len(), 2);
}

async fn over_http(b: Backend) {
    let s = setup(b).await;
    let token = s.api.token("agent", AGENT).await;
    let (client, progress) = connect_http(&s, &token).await;
    walk(&s, &client, progress).await;
    client.cancel().await.unwrap();
}

async fn over_byte_stream(b: Backend) {
    let s = setup(b).await;
    let (client, progress) = connect_stream(&s).await;
    walk(&s, &client, progress).await;
    client.cancel().await.unwrap();
}

/// Only an agent token opens a session; a signal from anyone but the
/// session's agent never adds a call.
async fn only_the_agent_adds_calls(b: Backend) {
    let s = setup(b).await;
    let operator = s.api.token("operator", "ops").await;
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", s.api.base))
            .auth_header(operator),
    );
    let (tx, _rx) = mpsc::unbounded_channel();
    assert!(
        Client { progress: tx }.serve(transport).await.is_err(),
        "an operator token must not open an MCP session"
    );
    let token = s.api.token("agent", AGENT).await;
    let (client, _p) = connect_http(&s, &token).await;
    let put = call(&client, "kv.put", json!({"key": "k", "value": 1})).await;
    assert_ne!(put.is_error, Some(true), "{}", text(&put));
    let task = session_tasks(&s).await.remove(0);
    let engine = &s.api.g.h.engine;
    let forged = json!({"op": "call", "call_id": "x1", "tool": "kv.put", "arguments": {"key": "k", "value": 2}});
    for sender in ["operator:ops", "agent:agent-observer", "user:cli"] {
        let e = engine
            .signal(&task, "mcp.call", forged.clone(), sender)
            .await
            .expect_err("a foreign sender is refused");
        assert!(e.to_string().contains("only agent agent-deployer-7"), "{e}");
    }
    // The session's own agent with an oversized call: refused, naming the limit.
    let big = json!({"op": "call", "call_id": "x2", "tool": "kv.put", "arguments": {"key": "k", "value": "x".repeat(70_000)}});
    let e = engine
        .signal(&task, "mcp.call", big, &format!("agent:{AGENT}"))
        .await
        .expect_err("an oversized call is refused");
    assert!(e.to_string().contains("at most 65536 bytes"), "{e}");
    client.cancel().await.unwrap();
}

/// Waits (30 s at most) until the history of `task` has an event `want` accepts.
async fn wait_for_event(s: &Setup, task: &str, want: impl Fn(&E) -> bool) {
    let engine = &s.api.g.h.engine;
    let mut updates = engine.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let h = engine.history(task).await.unwrap();
        if h.iter().any(|e| want(&e.payload)) {
            return;
        }
        let types: Vec<&str> = h.iter().map(|e| e.payload.type_name()).collect();
        match tokio::time::timeout_at(deadline, updates.recv()).await {
            Ok(_) => {}
            Err(_) => panic!("task {task}: the awaited event never came; its events: {types:?}"),
        }
    }
}

/// A client that cancels a call waiting for approval withdraws the request:
/// recorded (`ApprovalResolved` withdrawn by the agent, the step denied by
/// `approval.withdrawn`), gone from the inbox, never run, and no longer
/// decidable; only the task's agent may withdraw, and only an open request.
async fn cancelling_withdraws_the_approval(b: Backend) {
    let s = setup(b).await;
    let token = s.api.token("agent", AGENT).await;
    let (client, mut progress) = connect_http(&s, &token).await;
    let mut p = params(
        "ledger.charge",
        json!({"account": "mcp-cancel", "amount_cents": 5000}),
    );
    let mut meta = RequestMetaObject::default();
    meta.set_progress_token(ProgressToken(NumberOrString::Number(9)));
    p.meta = Some(meta);
    let peer = client.peer().clone();
    let gated = tokio::spawn(async move { peer.call_tool(p).await });
    tokio::time::timeout(Duration::from_secs(30), progress.recv())
        .await
        .expect("a progress notification while the call awaits approval")
        .unwrap();
    let task = session_tasks(&s).await.remove(0);
    let inbox = s.api.g.inbox(&task).await;
    assert_eq!(inbox.len(), 1, "{inbox:?}");
    let seq = inbox[0].request_seq;
    let engine = &s.api.g.h.engine;
    let e = engine
        .withdraw_approval(&task, seq, "agent-other", None)
        .await
        .expect_err("another agent cannot withdraw it");
    assert!(e.to_string().contains("only the task's agent"), "{e}");

    // The client gives up: rmcp sends notifications/cancelled.
    gated.abort();
    let agent_actor = format!("agent:{AGENT}");
    wait_for_event(
        &s,
        &task,
        |e| matches!(e, E::StepDenied { rule, .. } if rule == "approval.withdrawn"),
    )
    .await;
    let h = engine.history(&task).await.unwrap();
    assert!(h.iter().any(|e| matches!(&e.payload,
        E::ApprovalResolved { request_seq, outcome, by, .. }
            if *request_seq == seq && outcome == "withdrawn" && *by == [agent_actor.clone()])));
    assert!(
        !h.iter()
            .any(|e| matches!(&e.payload, E::StepScheduled { .. })),
        "the withdrawn step never ran"
    );
    assert!(s.api.g.inbox(&task).await.is_empty(), "gone from the inbox");
    assert_eq!(balance(&s, "mcp-cancel").await, 0);
    let alice = s.api.token("approver", "alice").await;
    let (status, body) = s
        .api
        .post(
            &format!("/v1/approvals/{task}:{seq}"),
            &alice,
            json!({"decision": "approve"}),
        )
        .await;
    assert!(
        status.is_client_error(),
        "a withdrawn request is not decidable: {status} {body}"
    );
    let e = engine
        .withdraw_approval(&task, seq, AGENT, None)
        .await
        .expect_err("a closed request cannot be withdrawn again");
    assert!(e.to_string().contains("closed already (withdrawn)"), "{e}");

    // The session goes on: the call shows as denied, the next one runs.
    let status = call(&client, "mandate_status", json!({})).await;
    let calls = status.structured_content.unwrap()["calls"].clone();
    assert_eq!(calls[0]["state"], "denied", "{calls}");
    assert_eq!(
        calls[0]["denied_by"]["rule"], "approval.withdrawn",
        "{calls}"
    );
    let put = call(&client, "kv.put", json!({"key": "after", "value": 1})).await;
    assert_ne!(put.is_error, Some(true), "{}", text(&put));
    mandate_tests::assert_replays(engine, &task).await;
    client.cancel().await.unwrap();
}

backend_tests!(
    over_http,
    over_byte_stream,
    only_the_agent_adds_calls,
    cancelling_withdraws_the_approval
);
