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
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            rate_per_second: 50,
            rate_burst: 100,
            request_timeout: std::time::Duration::from_secs(30),
            max_streams: 256,
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
    /// Set when the server begins to shut down: event streams end, so the
    /// graceful shutdown does not wait on them forever.
    pub(crate) closing: tokio::sync::watch::Sender<bool>,
}

impl AppState {
    pub fn new(engine: Engine, governance: Arc<Governance>, config: ApiConfig) -> Self {
        Self {
            engine,
            governance,
            rate_limits: Arc::new(RateLimits::new(config.rate_per_second, config.rate_burst)),
            streams: Arc::new(tokio::sync::Semaphore::new(config.max_streams)),
            config: Arc::new(config),
            tokens: Arc::new(TokenCache::default()),
            closing: tokio::sync::watch::Sender::new(false),
        }
    }
}
