//! Identities: bearer tokens with a role. A token is `mdt_` and 64 hex digits
//! (32 random bytes); only its SHA-256 is stored, and the lookup compares the
//! hash found in constant time. Verified tokens are cached for
//! [`TOKEN_CACHE_TTL`], so a revocation takes effect within that time.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use mandate_engine::store::{Store, TokenRow};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::state::AppState;

/// How long a verified token is trusted without asking the store again.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(5);
/// The most tokens the cache holds (it is cleared when full).
const TOKEN_CACHE_MAX: usize = 10_000;

/// What a token may do (see docs/http-api.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Agent,
    Approver,
    Operator,
    Auditor,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Agent, Role::Approver, Role::Operator, Role::Auditor];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Approver => "approver",
            Role::Operator => "operator",
            Role::Auditor => "auditor",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The caller, from its token (never from the body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub token_id: String,
    pub name: String,
    pub role: Role,
}

impl Identity {
    /// The actor recorded for what this caller does: `<role>:<name>`.
    pub fn actor(&self) -> String {
        format!("{}:{}", self.role, self.name)
    }

    /// Refuses unless the caller has one of `roles`.
    pub fn require(&self, roles: &[Role], what: &str) -> Result<(), ApiError> {
        if roles.contains(&self.role) {
            return Ok(());
        }
        Err(ApiError::forbidden(format!(
            "a token with role {} may not {what}; this needs {}",
            self.role,
            roles
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(" or ")
        )))
    }

    /// The agent whose tasks alone this caller may see (`Some` for agents).
    pub fn own_agent(&self) -> Option<&str> {
        (self.role == Role::Agent).then_some(self.name.as_str())
    }

    /// Refuses an agent acting on a task that is not its own. A task that is
    /// not the caller's is reported as not found, so ids do not leak.
    pub fn check_owner(&self, task_id: &str, agent: Option<&str>) -> Result<(), ApiError> {
        match self.own_agent() {
            Some(me) if agent != Some(me) => Err(ApiError::not_found(format!(
                "no task with id {task_id} that agent {me} may see"
            ))),
            _ => Ok(()),
        }
    }
}

/// A new token's secret: `mdt_` and 64 hex digits.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("mdt_{}", hex::encode(bytes))
}

/// The stored form of a secret.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Why a token could not be created.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("unknown role {0:?}; use agent, approver, operator or auditor")]
    UnknownRole(String),
    #[error("invalid token name {name:?}: {message}")]
    BadName { name: String, message: String },
    #[error("a token named {0:?} exists already; revoke it or choose another name")]
    NameTaken(String),
    #[error(transparent)]
    Store(#[from] mandate_engine::store::Error),
}

/// Creates a token and returns its secret (shown once; only the hash is kept).
pub async fn create_token(
    store: &dyn Store,
    role: &str,
    name: &str,
    now_ms: i64,
) -> Result<(TokenRow, String), TokenError> {
    let role = Role::parse(role).ok_or_else(|| TokenError::UnknownRole(role.to_string()))?;
    mandate_engine::Limits::default()
        .check_name("token name", name)
        .map_err(|message| TokenError::BadName {
            name: name.to_string(),
            message,
        })?;
    if name.contains(':') {
        return Err(TokenError::BadName {
            name: name.to_string(),
            message: "':' is not allowed (identities are recorded as role:name)".into(),
        });
    }
    let secret = new_secret();
    let row = TokenRow {
        id: format!("tok_{}", uuid::Uuid::now_v7().simple()),
        name: name.to_string(),
        role: role.as_str().to_string(),
        secret_sha256: hash_secret(&secret),
        created_at_ms: now_ms,
        revoked_at_ms: None,
    };
    if !store.insert_token(row.clone()).await? {
        return Err(TokenError::NameTaken(name.to_string()));
    }
    Ok((row, secret))
}

/// Verified tokens by secret hash, with when they were checked.
#[derive(Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<String, (Identity, Instant)>>,
}

impl TokenCache {
    fn get(&self, hash: &str) -> Option<Identity> {
        let entries = self.entries.lock().expect("token cache");
        let (id, at) = entries.get(hash)?;
        (at.elapsed() < TOKEN_CACHE_TTL).then(|| id.clone())
    }

    fn put(&self, hash: String, identity: Identity) {
        let mut entries = self.entries.lock().expect("token cache");
        if entries.len() >= TOKEN_CACHE_MAX {
            entries.clear();
        }
        entries.insert(hash, (identity, Instant::now()));
    }
}

/// Per-token request rates.
pub struct RateLimits {
    limiter: DefaultKeyedRateLimiter<String>,
}

impl RateLimits {
    pub fn new(per_second: u32, burst: u32) -> Self {
        let per_second = NonZeroU32::new(per_second.max(1)).expect("nonzero");
        let burst = NonZeroU32::new(burst.max(1)).expect("nonzero");
        Self {
            limiter: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
        }
    }

    /// `Err(seconds to wait)` when `token_id` is over its rate.
    fn check(&self, token_id: &str) -> Result<(), u64> {
        match self.limiter.check_key(&token_id.to_string()) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(governor::clock::Clock::now(
                    &governor::clock::DefaultClock::default(),
                ));
                Err(wait.as_secs().max(1))
            }
        }
    }

    /// Forgets keys whose state is back to full (bounds memory).
    pub fn shrink(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// Middleware on `/v1`: authenticates the bearer token, applies its rate
/// limit, and puts the [`Identity`] in the request's extensions.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let header = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| {
            ApiError::unauthenticated(
                "missing Authorization header; send `Authorization: Bearer <token>` (make one with `mandate token create`)",
            )
        })?;
    let secret = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            ApiError::unauthenticated("the Authorization header must be `Bearer <token>`")
        })?;
    let hash = hash_secret(secret);
    let identity = identify(&state, &hash).await?;
    if let Err(wait) = state.rate_limits.check(&identity.token_id) {
        return Err(ApiError::rate_limited(wait));
    }
    request.extensions_mut().insert(identity);
    request.extensions_mut().insert(TokenHash(hash));
    Ok(next.run(request).await)
}

/// The identity of the token whose secret hashes to `hash` (the cache, then
/// the store); refused when unknown or revoked. The console's sessions use it
/// too, so a revoked token ends its sessions within [`TOKEN_CACHE_TTL`].
pub(crate) async fn identify(state: &AppState, hash: &str) -> Result<Identity, ApiError> {
    let identity = match state.tokens.get(hash) {
        Some(id) => id,
        None => {
            let row = state
                .engine
                .store()
                .token_by_secret(hash)
                .await
                .map_err(ApiError::store)?;
            let identity = match row {
                Some(t)
                    if t.revoked_at_ms.is_none()
                        && bool::from(t.secret_sha256.as_bytes().ct_eq(hash.as_bytes())) =>
                {
                    let role = Role::parse(&t.role).ok_or_else(|| {
                        ApiError::internal(format!(
                            "token {} has unknown role {:?}",
                            t.name, t.role
                        ))
                    })?;
                    Identity {
                        token_id: t.id,
                        name: t.name,
                        role,
                    }
                }
                Some(t) if t.revoked_at_ms.is_some() => {
                    return Err(ApiError::unauthenticated(format!(
                        "token {:?} was revoked; ask an operator for a new one",
                        t.name
                    )));
                }
                _ => return Err(ApiError::unauthenticated("unknown token")),
            };
            state.tokens.put(hash.to_string(), identity.clone());
            identity
        }
    };
    Ok(identity)
}

/// The SHA-256 of the caller's token (in the request's extensions), for
/// re-checking it later: an event stream ends once its token is revoked.
#[derive(Debug, Clone)]
pub struct TokenHash(pub String);

/// Whether the token is still valid, asking the store (not the cache).
/// `Err` when the store could not answer.
pub async fn still_valid(store: &dyn Store, hash: &TokenHash) -> Result<bool, String> {
    match store.token_by_secret(&hash.0).await {
        Ok(Some(t)) => Ok(t.revoked_at_ms.is_none()),
        Ok(None) => Ok(false),
        Err(e) => Err(e.to_string()),
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Identity {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Identity>()
            .cloned()
            .ok_or_else(|| ApiError::unauthenticated("no identity (route outside /v1?)"))
    }
}
