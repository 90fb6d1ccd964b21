//! Upstream MCP servers: the tools the catalog imports from them
//! (`mcp_servers`, see `mandate_activities::catalog::McpServerEntry`) are
//! registered as tools of the engine, so a call of one is a step like any
//! other (decided by the gateway, its compensation recorded before it runs,
//! its result recorded) and only then forwarded, with rmcp's client, to the
//! server that offers it.
//!
//! Each call carries, in its `_meta`, the step's idempotency key
//! (`mandate/idempotency_key`, the same for every attempt and every
//! redelivery of one step) and, for a compensation, the key of the step it
//! undoes (`mandate/compensates`): an upstream write uses them to apply its
//! effect at most once and to fence a late attempt of an undone step, as
//! the engine's tool contract asks (`mandate_engine::tool::Tool`).
//!
//! A server is connected on its first call (a stdio server is started then)
//! and reconnected when its connection closed; a call that cannot reach it
//! fails retryably, an error the tool itself returns does not.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use mandate_activities::Governance;
use mandate_activities::catalog::McpServerEntry;
use mandate_engine::ToolRegistry;
use mandate_engine::tool::{Tool, ToolContext, ToolError, ToolKind, ToolResult};
use rmcp::model::{CallToolRequestParams, CallToolResult, RequestMetaObject};
use rmcp::service::{Peer, RunningService};
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{RoleClient, ServiceExt};
use serde_json::{Value, json};
use tokio::sync::Mutex;

/// The `_meta` key carrying the step's idempotency key.
pub const IDEMPOTENCY_KEY_META: &str = "mandate/idempotency_key";
/// The `_meta` key carrying, for a compensation, the key of the step it undoes.
pub const COMPENSATES_META: &str = "mandate/compensates";

/// The connection to one upstream server, opened on first use.
pub struct Connection {
    server: McpServerEntry,
    client: Mutex<Option<RunningService<RoleClient, ()>>>,
}

impl Connection {
    pub fn new(server: McpServerEntry) -> Self {
        Self {
            server,
            client: Mutex::new(None),
        }
    }

    /// The server's peer, connecting (or reconnecting) when needed.
    pub async fn peer(&self) -> Result<Peer<RoleClient>, String> {
        let mut client = self.client.lock().await;
        if let Some(c) = client.as_ref()
            && !c.is_closed()
        {
            return Ok(c.peer().clone());
        }
        let name = &self.server.name;
        let running = match (&self.server.command, &self.server.url) {
            (Some(command), _) => {
                let mut cmd = tokio::process::Command::new(&command[0]);
                cmd.args(&command[1..]).kill_on_drop(true);
                let transport = TokioChildProcess::builder(cmd)
                    .stderr(std::process::Stdio::inherit())
                    .spawn()
                    .map(|(t, _)| t)
                    .map_err(|e| format!("cannot start MCP server {name} ({}): {e}", command[0]))?;
                ().serve(transport).await
            }
            (None, Some(url)) => {
                ().serve(StreamableHttpClientTransport::from_uri(url.as_str()))
                    .await
            }
            (None, None) => return Err(format!("MCP server {name} has no command or url")),
        }
        .map_err(|e| format!("cannot open an MCP session with server {name}: {e}"))?;
        let peer = running.peer().clone();
        *client = Some(running);
        Ok(peer)
    }

    /// Closes the session (a stdio server exits).
    pub async fn close(&self) {
        if let Some(c) = self.client.lock().await.take() {
            let _ = c.cancel().await;
        }
    }
}

/// An imported tool: `name` in the catalog, `tool` on the server.
pub struct UpstreamTool {
    name: String,
    tool: String,
    kind: ToolKind,
    recovery_path: Option<String>,
    timeout: Duration,
    connection: Arc<Connection>,
}

/// What a call's result becomes in the history: its structured content,
/// else its text parsed as JSON, else `{"text": …}`.
fn output(r: CallToolResult) -> Value {
    if let Some(v) = r.structured_content {
        return v;
    }
    let text: Vec<String> = r
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect();
    let text = text.join("\n");
    serde_json::from_str::<Value>(&text)
        .ok()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({ "text": text }))
}

impl UpstreamTool {
    async fn forward(&self, ctx: &ToolContext, input: Value) -> ToolResult {
        let server = &self.connection.server.name;
        let arguments = match input {
            Value::Object(m) => m,
            Value::Null => Default::default(),
            other => {
                return Err(ToolError::non_retryable(format!(
                    "{}: the input must be an object, got {other}",
                    self.name
                )));
            }
        };
        let mut params = CallToolRequestParams::new(self.tool.clone());
        params.arguments = Some(arguments);
        let mut meta = RequestMetaObject::default();
        meta.0.0.insert(
            IDEMPOTENCY_KEY_META.into(),
            ctx.idempotency_key.clone().into(),
        );
        if let Some(c) = &ctx.compensates {
            meta.0.0.insert(COMPENSATES_META.into(), c.clone().into());
        }
        params.meta = Some(meta);
        let peer = self
            .connection
            .peer()
            .await
            .map_err(|e| ToolError::retryable(format!("{}: {e}", self.name)))?;
        let r = peer.call_tool(params).await.map_err(|e| {
            ToolError::retryable(format!(
                "{}: MCP server {server} did not answer: {e}",
                self.name
            ))
        })?;
        if r.is_error == Some(true) {
            let text: Vec<String> = r
                .content
                .iter()
                .filter_map(|c| c.as_text().map(|t| t.text.clone()))
                .collect();
            return Err(ToolError::non_retryable(format!(
                "{}: MCP server {server} returned an error: {}",
                self.name,
                text.join("\n")
            )));
        }
        Ok(output(r))
    }
}

impl Tool for UpstreamTool {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> ToolKind {
        self.kind
    }

    fn recovery_path(&self) -> Option<&str> {
        self.recovery_path.as_deref()
    }

    fn call<'a>(&'a self, ctx: ToolContext, input: Value) -> BoxFuture<'a, ToolResult> {
        async move {
            match tokio::time::timeout(self.timeout, self.forward(&ctx, input)).await {
                Ok(r) => r,
                Err(_) => Err(ToolError::retryable(format!(
                    "{}: MCP server {} did not answer within {} ms",
                    self.name,
                    self.connection.server.name,
                    self.timeout.as_millis()
                ))),
            }
        }
        .boxed()
    }
}

/// The connections of a process, one per upstream server of the catalog.
#[derive(Clone, Default)]
pub struct Upstreams {
    pub connections: BTreeMap<String, Arc<Connection>>,
}

impl Upstreams {
    /// Closes every session (stdio servers exit).
    pub async fn close(&self) {
        for c in self.connections.values() {
            c.close().await;
        }
    }
}

/// Registers the catalog's imported MCP tools in `registry`; nothing is
/// connected until a call needs it.
pub fn register(registry: &mut ToolRegistry, governance: &Governance) -> Upstreams {
    let set = governance.current();
    let catalog = &set.catalog;
    let mut upstreams = Upstreams::default();
    for server in &catalog.mcp_servers {
        upstreams.connections.insert(
            server.name.clone(),
            Arc::new(Connection::new(server.clone())),
        );
    }
    for entry in &catalog.tools {
        let Some(up) = &entry.upstream else { continue };
        let Some(connection) = upstreams.connections.get(&up.server) else {
            continue;
        };
        registry.register(UpstreamTool {
            name: entry.name.clone(),
            tool: up.tool.clone(),
            kind: entry.kind,
            recovery_path: catalog.recovery_path(entry),
            timeout: Duration::from_millis(connection.server.timeout_ms.max(1)),
            connection: connection.clone(),
        });
    }
    upstreams
}
