//! Helpers for the MCP suites (`tests/tests/mcp.rs`, `cli/tests/mcp_stdio.rs`),
//! which drive the gateway with rmcp's client.

use std::time::Duration;

use rmcp::RoleClient;
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::Peer;
use serde_json::Value;

/// The text content of a call's result.
pub fn text(r: &CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A `tools/call` of `tool` with `args` (an object).
pub fn params(tool: &str, args: Value) -> CallToolRequestParams {
    let mut p = CallToolRequestParams::new(tool.to_string());
    p.arguments = args.as_object().cloned();
    p
}

/// Calls `tool`; panics on a protocol error or after 60 s.
pub async fn call(peer: &Peer<RoleClient>, tool: &str, args: Value) -> CallToolResult {
    tokio::time::timeout(Duration::from_secs(60), peer.call_tool(params(tool, args)))
        .await
        .unwrap_or_else(|_| panic!("{tool} did not answer in 60 s"))
        .unwrap_or_else(|e| panic!("{tool}: protocol error {e}"))
}

/// The names `tools/list` gives.
pub async fn tool_names(peer: &Peer<RoleClient>) -> Vec<String> {
    peer.list_all_tools()
        .await
        .expect("tools/list answers")
        .into_iter()
        .map(|t| t.name.to_string())
        .collect()
}
