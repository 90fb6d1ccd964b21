//! The MCP gateway (issue 14): an agent's MCP tool calls become governed,
//! recorded, undoable steps.
//!
//! Each MCP session is one `mcp_session` task (`mandate_workflows::mcp`).
//! A `tools/call` is appended to it as a signal from the agent the token
//! authenticated; the workflow issues it as a step, so the engine's gateway
//! decides it (`PolicyEvaluated`; denied, gated or allowed), the catalog's
//! compensation is recorded with it before it runs, and its result is
//! recorded. The gateway reads the answer back from the history
//! ([`outcome`]) and returns it; a gated call waits for its approval
//! (people decide through `POST /v1/approvals`), sending MCP progress
//! notifications meanwhile.
//!
//! Transports: stdio (`mandate mcp`) and streamable HTTP (`/mcp` on
//! `mandate serve`, [`http::service`]).

pub mod forward;
pub mod http;
pub mod outcome;
mod server;
pub mod tools;
pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

use mandate_activities::Governance;
use mandate_engine::Engine;

pub use server::{ON_BEHALF_OF_META, SessionHandler};

/// Who the session acts as: the agent its token names, and the user it acts
/// for (checked by the gateway's `admit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub agent: String,
    pub on_behalf_of: Option<String>,
}

/// Settings of the gateway.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// A session task completes after this long without a call.
    pub idle_timeout: Duration,
    /// How long a `tools/call` waits for its step (approval included)
    /// before answering that it is still pending.
    pub call_timeout: Duration,
    /// How often a waiting call sends a progress notification.
    pub progress_every: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_millis(mandate_workflows::mcp::DEFAULT_IDLE_TIMEOUT_MS),
            call_timeout: Duration::from_secs(3600),
            progress_every: Duration::from_secs(5),
        }
    }
}

/// The engine and governance every session of a process shares.
#[derive(Clone)]
pub struct Gateway {
    pub engine: Engine,
    pub governance: Arc<Governance>,
    pub config: Arc<GatewayConfig>,
}

impl Gateway {
    pub fn new(engine: Engine, governance: Arc<Governance>, config: GatewayConfig) -> Self {
        Self {
            engine,
            governance,
            config: Arc::new(config),
        }
    }

    /// The handler of one session whose caller is known up front (stdio).
    pub fn session(&self, caller: Caller, transport: &'static str) -> SessionHandler {
        SessionHandler::new(self.clone(), server::CallerSource::Fixed(caller), transport)
    }
}
