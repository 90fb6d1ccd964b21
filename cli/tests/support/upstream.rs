//! Upstream MCP servers for the suites (`mcp_upstream.rs`, `mcp_crash.rs`):
//! `tests/tools/mcp_upstream.py` on stdio (in the catalog) and on HTTP
//! (started here), its call log, and rmcp's client on a server's `/mcp`.

#![allow(dead_code)]

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use rmcp::ServiceExt;
use rmcp::model::{ClientCapabilities, ClientConfig, Implementation, ProtocolVersion};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use crate::gov;
use crate::serve::{python, repo};

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
/// Each line it logs (a call starting, a write applied) also arrives on the
/// returned channel.
pub async fn http_upstream(
    log: &Path,
) -> (
    tokio::process::Child,
    String,
    mpsc::UnboundedReceiver<Value>,
) {
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
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send(v);
            }
        }
    });
    (child, format!("http://127.0.0.1:{port}/mcp"), rx)
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
