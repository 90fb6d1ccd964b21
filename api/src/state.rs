//! What every handler shares.

use std::sync::Arc;

use mandate_activities::Governance;
use mandate_engine::Engine;

use crate::auth::{RateLimits, TokenCache};

/// Settings of the API server.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Requests per second each token may make (sustained).
    pub rate_per_second: u32,
    /// Requests a token may make at once above its rate.
    pub rate_burst: u32,
    /// How long a request (not the event stream) may take.
    pub request_timeout: std::time::Duration,
    /// Most event streams open at once; more are refused with 503.
    pub max_streams: usize,
    /// Most event streams one token may hold open; more are refused with 429.
    pub max_streams_per_token: usize,
    /// Most submissions (`POST /v1/tasks`) being handled at once; more are
    /// refused with 503 and `Retry-After` instead of queueing without bound.
    pub max_inflight_submissions: usize,
    /// How long a client has to send a request's headers, counted from the
    /// connection's start or the end of the previous response (so it also
    /// closes kept-alive connections that send nothing).
    pub header_timeout: std::time::Duration,
    /// A connection on which no byte moves either way for this long is closed
    /// (event streams send a keep-alive every 15 s).
    pub idle_timeout: std::time::Duration,
    /// Most connections open at once; more are answered 503 and closed.
    pub max_connections: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            rate_per_second: 50,
            rate_burst: 100,
            request_timeout: std::time::Duration::from_secs(30),
            max_streams: 256,
            max_streams_per_token: 8,
            max_inflight_submissions: 256,
            header_timeout: std::time::Duration::from_secs(10),
            idle_timeout: std::time::Duration::from_secs(60),
            max_connections: 1024,
        }
    }
}

/// Shared by every handler; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    pub governance: Arc<Governance>,
    pub config: Arc<ApiConfig>,
    pub(crate) tokens: Arc<TokenCache>,
    pub(crate) rate_limits: Arc<RateLimits>,
    /// Open event streams (at most `config.max_streams`).
    pub(crate) streams: Arc<tokio::sync::Semaphore>,
    /// Open event streams per token id (each at most `config.max_streams_per_token`).
    pub(crate) streams_per_token: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    /// Submissions being handled (at most `config.max_inflight_submissions`).
    submissions: Arc<tokio::sync::Semaphore>,
    /// Set when the server begins to shut down: event streams end, so the
    /// graceful shutdown does not wait on them forever.
    pub(crate) closing: tokio::sync::watch::Sender<bool>,
    /// Routing's answers (notifications, links, Slack), when it runs here.
    pub routing: Option<Arc<RoutingApi>>,
}

/// What the notification routes need (see `notifications`).
pub struct RoutingApi {
    pub responder: mandate_routing::wire::Responder,
    /// Slack's signing secret for the interactivity callback.
    pub slack_signing_secret: Option<Vec<u8>>,
}

impl AppState {
    pub fn new(engine: Engine, governance: Arc<Governance>, config: ApiConfig) -> Self {
        Self {
            engine,
            governance,
            rate_limits: Arc::new(RateLimits::new(config.rate_per_second, config.rate_burst)),
            streams: Arc::new(tokio::sync::Semaphore::new(config.max_streams)),
            streams_per_token: Default::default(),
            submissions: Arc::new(tokio::sync::Semaphore::new(config.max_inflight_submissions)),
            config: Arc::new(config),
            tokens: Arc::new(TokenCache::default()),
            closing: tokio::sync::watch::Sender::new(false),
            routing: None,
        }
    }

    /// Serves answers to notifications with `routing`.
    pub fn with_routing(mut self, routing: RoutingApi) -> Self {
        self.routing = Some(Arc::new(routing));
        self
    }
}

impl AppState {
    /// The places for submissions in flight: a submission takes one while it
    /// is handled. Public so a monitor (or a test) can see or hold them.
    pub fn submission_slots(&self) -> &Arc<tokio::sync::Semaphore> {
        &self.submissions
    }
}
