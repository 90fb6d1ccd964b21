//! `mandate-stress mcp-bench`: what the MCP gateway adds to one allowed tool
//! call, against calling the upstream MCP server directly.
//!
//! The upstream is this binary's hidden `mcp-upstream` subcommand, a minimal
//! rmcp server on stdio with one write tool (`put`, which keeps the value
//! under the call's idempotency key). Direct: rmcp's client spawns it and
//! calls `put` one call at a time. Through the gateway: the catalog imports
//! it (`mcp_servers`, prefix `bench.`) and rmcp's client calls `bench.put` on
//! a gateway session (the handler `mandate mcp` serves on stdio, over an
//! in-process byte stream) as `agent-deployer-7`, so each call is a step of
//! the session's task on the store: the policy decision, the recorded
//! compensation, the worker's forward to the upstream, the result recorded
//! and read back. Sessions hold at most `mandate_workflows::mcp::MAX_CALLS`
//! calls; the bench opens a new one when one is full. Measures only.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mandate_activities::{Governance, World};
use mandate_engine::{Engine, ToolRegistry, WorkerConfig};
use mandate_mcp::{Caller, Gateway, GatewayConfig};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, JsonObject,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{Peer, RequestContext};
use rmcp::transport::TokioChildProcess;
use rmcp::{ErrorData as McpError, RoleClient, RoleServer, ServerHandler, ServiceExt};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::freshdb::FreshDb;
use crate::stats::percentile;

#[derive(clap::Args, Debug)]
pub struct McpBenchArgs {
    /// `sqlite`, or a PostgreSQL URL whose server gets a fresh database
    #[arg(long, default_value = "sqlite")]
    pub db: String,
    /// Measured calls per path (after 20 warm-up calls)
    #[arg(long, default_value_t = 1_000)]
    pub calls: usize,
}

/// The upstream: one write tool.
#[derive(Default)]
struct Upstream {
    values: Mutex<std::collections::HashMap<String, Value>>,
}

impl ServerHandler for Upstream {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let schema: JsonObject = json!({"type": "object"}).as_object().unwrap().clone();
        Ok(ListToolsResult::with_all_items(vec![Tool::new(
            "put",
            "keeps a value under the call's idempotency key",
            Arc::new(schema),
        )]))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let key = ctx
            .meta
            .0
            .get(mandate_mcp::upstream::IDEMPOTENCY_KEY_META)
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let value = Value::Object(request.arguments.unwrap_or_default());
        let mut values = self.values.lock().await;
        let stored = values.entry(key.clone()).or_insert(value).clone();
        let out = json!({"key": key, "stored": stored});
        let mut r = CallToolResult::success(vec![ContentBlock::text(out.to_string())]);
        r.structured_content = Some(out);
        Ok(r.into())
    }
}

/// `mandate-stress mcp-upstream`: serves [`Upstream`] on stdio.
pub async fn serve_upstream() -> anyhow::Result<()> {
    let running = Upstream::default().serve(rmcp::transport::stdio()).await?;
    let _ = running.waiting().await;
    Ok(())
}

fn put(tool: &str, i: usize) -> CallToolRequestParams {
    let mut p = CallToolRequestParams::new(tool.to_string());
    p.arguments = json!({"key": format!("k{i}"), "value": i})
        .as_object()
        .cloned();
    p
}

async fn timed(peer: &Peer<RoleClient>, tool: &str, i: usize) -> anyhow::Result<f64> {
    let t = Instant::now();
    let r = peer.call_tool(put(tool, i)).await?;
    let elapsed = t.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(
        r.is_error != Some(true),
        "{tool} failed: {:?}",
        r.content.first().and_then(|c| c.as_text()).map(|t| &t.text)
    );
    Ok(elapsed)
}

fn report(label: &str, lat: &mut [f64]) -> (f64, f64) {
    lat.sort_by(|a, b| a.total_cmp(b));
    let (p50, p99) = (percentile(lat, 50.0), percentile(lat, 99.0));
    let mean = lat.iter().sum::<f64>() / lat.len().max(1) as f64;
    println!(
        "{label:<28} {:>7} calls  mean {mean:>7.2} ms  p50 {p50:>7.2} ms  p99 {p99:>7.2} ms  max {:>7.2} ms",
        lat.len(),
        lat.last().copied().unwrap_or_default()
    );
    (p50, p99)
}

pub async fn run(args: McpBenchArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    const WARMUP: usize = 20;

    // Direct: the client spawns the upstream and calls it.
    let mut cmd = tokio::process::Command::new(&exe);
    cmd.arg("mcp-upstream");
    let direct = ().serve(TokioChildProcess::new(cmd)?).await?;
    let mut lat = Vec::with_capacity(args.calls);
    for i in 0..WARMUP + args.calls {
        let ms = timed(direct.peer(), "put", i).await?;
        if i >= WARMUP {
            lat.push(ms);
        }
    }
    direct.cancel().await?;
    let direct = report("direct (rmcp, stdio)", &mut lat);

    // Through the gateway.
    let db = FreshDb::create(&args.db).await?;
    let policies = tempfile::tempdir()?;
    std::fs::create_dir_all(policies.path().join("org"))?;
    std::fs::write(
        policies.path().join("org/baseline.cedar"),
        mandate_activities::policy::DEFAULT_ORG_POLICY,
    )?;
    std::fs::write(
        policies.path().join("catalog.yaml"),
        format!(
            "{}\nmcp_servers:\n  - name: bench\n    prefix: bench.\n    command: [{:?}, mcp-upstream]\n    tools:\n      - {{name: put, kind: write_reversible, operation: update, owners: [team-platform], recovery: db_write}}\n",
            mandate_activities::policy::DEFAULT_CATALOG_YAML,
            exe.display().to_string()
        ),
    )?;
    let governance = Arc::new(
        Governance::load_dir(policies.path()).map_err(|e| anyhow::anyhow!("policies: {e}"))?,
    );
    let store = mandate_engine::store::open(&db.url).await?;
    let world = World::connect(&db.url).await?;
    let mut tools = ToolRegistry::new();
    mandate_activities::register_demo_tools(&mut tools, world);
    let upstreams = mandate_mcp::upstream::register(&mut tools, &governance);
    let engine = Engine::new(
        store,
        mandate_workflows::registry_with(governance.clone()),
        tools,
        governance.clone(),
    );
    let worker = engine.start_worker(WorkerConfig::default());
    let gateway = Gateway::new(engine.clone(), governance, GatewayConfig::default());
    let mut lat = Vec::with_capacity(args.calls);
    let mut i = 0;
    while i < WARMUP + args.calls {
        // One session: the handler `mandate mcp` serves, over a byte stream.
        let handler = gateway.session(
            Caller {
                agent: "agent-deployer-7".into(),
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
        let client = ().serve(client_io).await?;
        for _ in 0..mandate_workflows::mcp::MAX_CALLS {
            if i >= WARMUP + args.calls {
                break;
            }
            let ms = timed(client.peer(), "bench.put", i).await?;
            if i >= WARMUP {
                lat.push(ms);
            }
            i += 1;
        }
        client.cancel().await?;
    }
    let through = report("through the gateway", &mut lat);
    println!(
        "gateway overhead per allowed call on {}: p50 +{:.2} ms, p99 +{:.2} ms",
        if db.url.starts_with("sqlite") {
            "SQLite"
        } else {
            "PostgreSQL"
        },
        through.0 - direct.0,
        through.1 - direct.1
    );
    tokio::time::timeout(Duration::from_secs(10), worker.shutdown())
        .await
        .ok();
    upstreams.close().await;
    db.drop_now().await;
    Ok(())
}
