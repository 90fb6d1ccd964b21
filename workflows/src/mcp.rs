//! `mcp_session`: the task that stands for one MCP session (crate
//! `mandate-mcp`). Its steps come from the agent's MCP tool calls: the
//! workflow waits for the next [`CALL_SIGNAL`], issues it as a step (the
//! engine's gateway decides it first: denied, gated or allowed), and waits
//! for its result before taking the next call. An `end` signal or
//! [`SessionInput::idle_timeout_ms`] without a call completes the task; a
//! rollback (cancel with rollback) undoes the completed calls newest first
//! through the compensations recorded with them.
//!
//! Calls come from outside, so [`McpSession::check_signal`] admits only
//! the task's own agent (`agent:<agent>`, the identity the MCP gateway
//! authenticated), at most [`MAX_CALLS`] calls per session, and bounded
//! payloads.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use mandate_activities::Governance;
use mandate_engine::{
    Compensation, Event, EventPayload, RetryPolicy, StepOptions, Workflow, WorkflowContext,
    WorkflowError,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::plan::refs;

/// The workflow's registered name.
pub const WORKFLOW: &str = "mcp_session";
/// The signal carrying a call (`{"op": "call", ...}`) or the end (`{"op": "end"}`).
pub const CALL_SIGNAL: &str = "mcp.call";
/// Most calls one session may make (each is a few commands and about ten
/// events; the engine's history limit must hold them all).
pub const MAX_CALLS: usize = 200;
/// Largest call signal payload (the call's arguments and its ids).
pub const MAX_CALL_BYTES: usize = 64 * 1024;
/// Most bytes of a call id.
pub const MAX_CALL_ID_BYTES: usize = 64;
/// The idle timeout when the session names none: 30 minutes.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 30 * 60_000;
/// The longest idle timeout a session may ask for: one day.
pub const MAX_IDLE_TIMEOUT_MS: u64 = 86_400_000;

/// The session task's input.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionInput {
    /// How long the session waits for a call before it completes.
    #[serde(default)]
    pub idle_timeout_ms: Option<u64>,
    /// Who opened it (`stdio`, `http`), for people reading the history.
    #[serde(default)]
    pub transport: Option<String>,
    /// The session this one continues (after a rollback).
    #[serde(default)]
    pub continues: Option<String>,
}

/// One call, as the signal carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Call {
    pub call_id: String,
    pub tool: String,
    #[serde(default)]
    pub arguments: Value,
}

/// The step name a call gets: `<tool>#<call id>`.
pub fn step_name(tool: &str, call_id: &str) -> String {
    format!("{tool}#{call_id}")
}

/// The `mcp_session` workflow.
pub struct McpSession {
    governance: Arc<Governance>,
}

impl McpSession {
    pub fn new(governance: Arc<Governance>) -> Self {
        Self { governance }
    }
}

fn parse_input(input: &Value) -> Result<SessionInput, String> {
    let parsed: SessionInput = serde_json::from_value(input.clone()).map_err(|e| {
        format!("{WORKFLOW} input: {e}; expected {{idle_timeout_ms?, transport?, continues?}}")
    })?;
    if let Some(t) = parsed.idle_timeout_ms
        && !(1_000..=MAX_IDLE_TIMEOUT_MS).contains(&t)
    {
        return Err(format!(
            "{WORKFLOW} input field idle_timeout_ms: {t} is outside 1000..={MAX_IDLE_TIMEOUT_MS} ms"
        ));
    }
    Ok(parsed)
}

fn parse_call(payload: &Value) -> Result<Call, String> {
    let call: Call = serde_json::from_value(payload.clone()).map_err(|e| {
        format!(
            "payload: {e}; a call is {{\"op\": \"call\", \"call_id\", \"tool\", \"arguments\"}}"
        )
    })?;
    if call.call_id.is_empty()
        || call.call_id.len() > MAX_CALL_ID_BYTES
        || !call
            .call_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "payload field call_id: {:?} must be 1 to {MAX_CALL_ID_BYTES} ASCII letters, digits, '-' or '_'",
            call.call_id
        ));
    }
    if !(call.arguments.is_object() || call.arguments.is_null()) {
        return Err("payload field arguments: must be a JSON object".into());
    }
    Ok(call)
}

/// What the catalog says about a tool at the time of the call, recorded
/// once so a replay never reads the catalog again.
fn catalog_entry(governance: &Governance, tool: &str) -> Value {
    let set = governance.current();
    match set.catalog.tool(tool) {
        Some(t) => json!({
            "compensation": t.compensation.as_ref().map(|c| serde_json::to_value(c).unwrap_or(Value::Null)),
            "recovery_path": set.catalog.recovery_path(t),
        }),
        None => json!({"compensation": null, "recovery_path": null}),
    }
}

/// The compensation of a call from the recorded catalog mapping, its input
/// template resolved against the call's arguments (`${input.X}`).
fn compensation(entry: &Value, arguments: &Value) -> Result<Option<Compensation>, String> {
    let Some(c) = entry.get("compensation").filter(|c| !c.is_null()) else {
        return Ok(None);
    };
    let template = c.get("input").cloned().unwrap_or(json!({}));
    let input = refs::resolve(
        &template,
        &json!({"input": arguments, "steps": {}}),
        "compensation.input",
    )?;
    Ok(Some(Compensation {
        tool: c["tool"].as_str().unwrap_or_default().to_string(),
        input,
        retry: RetryPolicy::compensation_default(),
    }))
}

async fn run_session(
    ctx: WorkflowContext,
    input: Value,
    governance: Arc<Governance>,
) -> Result<Value, WorkflowError> {
    let input = parse_input(&input).map_err(WorkflowError::new)?;
    let idle = Duration::from_millis(input.idle_timeout_ms.unwrap_or(DEFAULT_IDLE_TIMEOUT_MS));
    let (mut calls, mut failed) = (0u64, 0u64);
    loop {
        let Some(signal) = ctx.wait_signal(CALL_SIGNAL, Some(idle)).await else {
            return Ok(json!({"ended": "idle", "calls": calls, "failed": failed}));
        };
        if signal.payload["op"] == "end" {
            return Ok(json!({"ended": "end", "calls": calls, "failed": failed}));
        }
        // `check_signal` refused malformed calls before they were recorded.
        let Ok(call) = parse_call(&signal.payload) else {
            continue;
        };
        calls += 1;
        let entry = ctx.record("catalog.tool", catalog_entry(&governance, &call.tool));
        let arguments = if call.arguments.is_null() {
            json!({})
        } else {
            call.arguments.clone()
        };
        let mut options = StepOptions::new(call.tool.clone(), arguments.clone())
            .name(step_name(&call.tool, &call.call_id));
        match compensation(&entry, &arguments) {
            Ok(c) => options.compensation = c,
            Err(e) => {
                // Recorded through the marker; nothing runs without its undo.
                failed += 1;
                let _ = ctx.record("call.refused", json!({"call_id": call.call_id, "error": e}));
                continue;
            }
        }
        if let Some(r) = entry["recovery_path"].as_str() {
            options = options.recovery(r);
        }
        // A denied, rejected or failed call is the caller's answer, not the
        // session's end: the session goes on.
        if ctx.step(options).await.is_err() {
            failed += 1;
        }
    }
}

impl Workflow for McpSession {
    fn name(&self) -> &str {
        WORKFLOW
    }

    fn run(
        &self,
        ctx: WorkflowContext,
        input: Value,
    ) -> BoxFuture<'static, Result<Value, WorkflowError>> {
        Box::pin(run_session(ctx, input, self.governance.clone()))
    }

    fn validate_input(&self, input: &Value) -> Result<(), String> {
        parse_input(input).map(|_| ())
    }

    /// Only the session's own agent appends calls: the MCP gateway signals
    /// as the agent its token authenticated (`agent:<agent>`).
    fn check_signal(
        &self,
        history: &[Event],
        name: &str,
        payload: &Value,
        sender: &str,
    ) -> Result<(), String> {
        if name != CALL_SIGNAL {
            return Err(format!(
                "an MCP session takes only {CALL_SIGNAL:?} signals, sent by its MCP gateway"
            ));
        }
        let agent = history.first().and_then(|e| match &e.payload {
            EventPayload::TaskSubmitted { agent, .. } => agent.clone(),
            _ => None,
        });
        let Some(agent) = agent else {
            return Err(
                "this MCP session has no agent; only an agent's session takes calls".into(),
            );
        };
        if sender != format!("agent:{agent}") {
            return Err(format!(
                "only agent {agent} (through the MCP gateway, authenticated by its token) may add calls to its session"
            ));
        }
        let size = serde_json::to_vec(payload)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > MAX_CALL_BYTES {
            return Err(format!(
                "the call is {size} bytes; a call may be at most {MAX_CALL_BYTES} bytes"
            ));
        }
        match payload["op"].as_str() {
            Some("end") => return Ok(()),
            Some("call") => {}
            _ => return Err("payload field op: must be \"call\" or \"end\"".into()),
        }
        let call = parse_call(payload)?;
        let mut calls = 0;
        for e in history {
            if let EventPayload::SignalReceived { name, payload, .. } = &e.payload
                && name == CALL_SIGNAL
                && payload["op"] == "call"
            {
                calls += 1;
                if payload["call_id"] == call.call_id.as_str() {
                    return Err(format!(
                        "payload field call_id: {:?} was used already in this session; each call needs a new id",
                        call.call_id
                    ));
                }
            }
        }
        if calls >= MAX_CALLS {
            return Err(format!(
                "this session made {calls} calls, the most one session may make ({MAX_CALLS}); end it and open a new session"
            ));
        }
        Ok(())
    }
}
