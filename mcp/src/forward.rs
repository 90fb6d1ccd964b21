//! A session that forwards to another MCP server: `mandate mcp --server`
//! serves stdio and forwards each request to `/mcp` of a `mandate serve`,
//! where the gateway governs it.

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ListToolsResult, PaginatedRequestParams,
    ServerCapabilities, ServerConfig,
};
use rmcp::service::{Peer, RequestContext};
use rmcp::{ErrorData as McpError, RoleClient, RoleServer, ServerHandler};

/// Forwards `tools/list` and `tools/call` to `upstream`.
pub struct Forward {
    pub upstream: Peer<RoleClient>,
}

fn upstream_error(e: rmcp::ServiceError) -> McpError {
    McpError::internal_error(format!("the Mandate server did not answer: {e}"), None)
}

impl ServerHandler for Forward {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let tools = self
            .upstream
            .list_all_tools()
            .await
            .map_err(upstream_error)?;
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        self.upstream
            .call_tool(request)
            .await
            .map(Into::into)
            .map_err(upstream_error)
    }
}
