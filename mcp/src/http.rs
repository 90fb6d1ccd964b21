//! `/mcp` on `mandate serve`: the streamable HTTP transport. Each request is
//! authenticated by the API (bearer token) before it reaches the service;
//! [`CallerOf`] reads the agent from the request.

use std::sync::Arc;

use rmcp::transport::streamable_http_server::{
    StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
};

use crate::Gateway;
pub use crate::server::CallerOf;
use crate::server::{CallerSource, SessionHandler};

/// The streamable HTTP service: one [`SessionHandler`] per MCP session.
pub fn service(
    gateway: Gateway,
    caller_of: CallerOf,
) -> StreamableHttpService<SessionHandler, LocalSessionManager> {
    // Hosts are not restricted: every request carries a bearer token, which
    // a browser never adds by itself (the DNS-rebinding risk the default
    // loopback-only check guards against).
    let config = StreamableHttpServerConfig::default().disable_allowed_hosts();
    StreamableHttpService::new(
        move || {
            Ok(SessionHandler::new(
                gateway.clone(),
                CallerSource::PerRequest(caller_of.clone()),
                "http",
            ))
        },
        Arc::new(LocalSessionManager::default()),
        config,
    )
}
