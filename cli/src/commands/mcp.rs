//! `mandate mcp`: the MCP gateway on stdio (the transport MCP clients start
//! a server with). The agent is the one `MANDATE_TOKEN` names (an agent
//! token); without `--server` it opens the database and runs a worker in
//! this process, with `--server` it forwards to that server's `/mcp`.
//! Stdout carries the protocol alone; messages go to stderr.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use mandate_engine::WorkerConfig;
use mandate_mcp::{Caller, Gateway, GatewayConfig};
use rmcp::ServiceExt;
use rmcp::model::{ClientCapabilities, ClientConfig, Implementation, ProtocolVersion};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;

use crate::app::{self, Database, refused};

#[derive(Debug, Args)]
pub struct McpArgs {
    /// The user the agent acts for (checked against the catalog's users and the agent's
    /// on_behalf_of list); an MCP client may also name one in initialize's
    /// `_meta` ("mandate/on_behalf_of")
    #[arg(long, env = "MANDATE_ON_BEHALF_OF", value_name = "USER")]
    pub on_behalf_of: Option<String>,
    /// The session's task completes after this long without a call (1000 to 86400000)
    #[arg(long, default_value_t = 1_800_000, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(1_000..=86_400_000))]
    pub idle_timeout_ms: u64,
}

pub async fn run(
    db: &Database,
    server: Option<&str>,
    token: Option<&str>,
    args: McpArgs,
) -> anyhow::Result<ExitCode> {
    let token = token.ok_or_else(|| {
        refused("mandate mcp needs an agent token: set MANDATE_TOKEN (make one with `mandate token create --role agent --name AGENT`)")
    })?;
    if let Some(url) = server {
        return forward(url, token, args).await;
    }
    let store = mandate_engine::store::open(&db.url).await?;
    let row = store
        .token_by_secret(&mandate_api::auth::hash_secret(token))
        .await?
        .filter(|t| t.revoked_at_ms.is_none())
        .ok_or_else(|| {
            refused("MANDATE_TOKEN is not a valid token of this database (unknown or revoked)")
        })?;
    if row.role != "agent" {
        return Err(refused(format!(
            "MANDATE_TOKEN belongs to {} {:?}; an MCP session acts as an agent: use an agent token",
            row.role, row.name
        )));
    }
    let (engine, _world) = app::open_engine(db).await?;
    let gateway = Gateway::new(
        engine.clone(),
        app::governance()?,
        GatewayConfig {
            idle_timeout: Duration::from_millis(args.idle_timeout_ms),
            ..Default::default()
        },
    );
    let caller = Caller {
        agent: row.name.clone(),
        on_behalf_of: args.on_behalf_of,
    };
    engine
        .gateway()
        .admit(&mandate_engine::core::gateway::Principal {
            agent: Some(caller.agent.clone()),
            on_behalf_of: caller.on_behalf_of.clone(),
        })
        .map_err(refused)?;
    let worker = engine.start_worker(WorkerConfig::default());
    eprintln!(
        "mandate mcp: serving agent {} on stdio over {}",
        caller.agent,
        db.shown()
    );
    let served = gateway
        .session(caller, "stdio")
        .serve(rmcp::transport::stdio())
        .await
        .context("the MCP client did not initialize")?;
    let _ = served.waiting().await;
    worker.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// Serves stdio, forwarding every request to `url`/mcp with the token.
async fn forward(url: &str, token: &str, args: McpArgs) -> anyhow::Result<ExitCode> {
    let endpoint = format!("{}/mcp", url.trim_end_matches('/'));
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(endpoint.clone())
            .auth_header(token.to_string()),
    );
    let mut info = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("mandate-mcp-stdio", env!("CARGO_PKG_VERSION")),
    )
    .with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE);
    if let Some(user) = args.on_behalf_of {
        let mut meta = rmcp::model::RequestMetaObject::default();
        meta.0
            .0
            .insert(mandate_mcp::ON_BEHALF_OF_META.into(), user.into());
        info.meta = Some(meta);
    }
    let upstream = info
        .serve(transport)
        .await
        .map_err(|e| refused(format!("cannot open an MCP session at {endpoint}: {e}")))?;
    eprintln!("mandate mcp: forwarding stdio to {endpoint}");
    let served = mandate_mcp::forward::Forward {
        upstream: upstream.peer().clone(),
    }
    .serve(rmcp::transport::stdio())
    .await
    .context("the MCP client did not initialize")?;
    let _ = served.waiting().await;
    let _ = upstream.cancel().await;
    Ok(ExitCode::SUCCESS)
}
