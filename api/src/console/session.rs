//! Console sessions: a pasted API token becomes a random session id in an
//! HttpOnly, SameSite=Strict cookie (Secure over TLS). Sessions live in
//! memory, bounded in number ([`MAX_SESSIONS`]) and age ([`SESSION_TTL`]);
//! only the SHA-256 of a session id is kept. Each session has a CSRF token
//! (synchronizer token) that every state-changing form must carry, and every
//! request re-checks the session's API token, so revoking the token ends its
//! sessions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::ConsoleError;
use crate::auth::{Identity, identify};
use crate::state::AppState;

/// The session cookie's name.
pub const COOKIE: &str = "mandate_session";
/// How long a session lasts from sign-in.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// The most sessions held at once; signing in past it drops the oldest.
pub const MAX_SESSIONS: usize = 10_000;
/// The largest form body the console takes.
const MAX_FORM_BYTES: usize = 256 * 1024;

struct Session {
    token_hash: String,
    csrf: String,
    expires_at: Instant,
}

/// The signed-in sessions of one server.
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
    max: usize,
    ttl: Duration,
}

impl Sessions {
    pub fn new(max: usize, ttl: Duration) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            max: max.max(1),
            ttl,
        }
    }

    /// Opens a session for the token whose secret hashes to `token_hash`;
    /// returns the session id (the cookie's value).
    pub fn open(&self, token_hash: String) -> String {
        let id = random_hex();
        let now = Instant::now();
        let mut map = self.map.lock().expect("sessions");
        map.retain(|_, s| s.expires_at > now);
        while map.len() >= self.max {
            let oldest = map
                .iter()
                .min_by_key(|(_, s)| s.expires_at)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => map.remove(&k),
                None => break,
            };
        }
        map.insert(
            key(&id),
            Session {
                token_hash,
                csrf: random_hex(),
                expires_at: now + self.ttl,
            },
        );
        id
    }

    /// The token hash and CSRF token of a live session.
    fn get(&self, id: &str) -> Option<(String, String)> {
        let mut map = self.map.lock().expect("sessions");
        let k = key(id);
        match map.get(&k) {
            Some(s) if s.expires_at > Instant::now() => {
                Some((s.token_hash.clone(), s.csrf.clone()))
            }
            Some(_) => {
                map.remove(&k);
                None
            }
            None => None,
        }
    }

    /// The API token hash of a live session (`None` once it ended).
    pub fn token_of(&self, id: &str) -> Option<String> {
        self.get(id).map(|(token, _)| token)
    }

    pub fn close(&self, id: &str) {
        self.map.lock().expect("sessions").remove(&key(id));
    }

    pub fn len(&self) -> usize {
        self.map.lock().expect("sessions").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn key(id: &str) -> String {
    hex::encode(Sha256::digest(id.as_bytes()))
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The session id in the request's cookies.
pub fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, v)| v.to_string())
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Whether the request came over TLS (directly, or through a proxy that says so).
fn over_tls(parts_uri: &axum::http::Uri, headers: &HeaderMap) -> bool {
    parts_uri.scheme_str() == Some("https")
        || headers
            .get("x-forwarded-proto")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
}

/// The `Set-Cookie` value opening (`Some(id)`) or clearing (`None`) a session.
pub fn cookie(id: Option<&str>, uri: &axum::http::Uri, headers: &HeaderMap) -> String {
    let secure = if over_tls(uri, headers) {
        "; Secure"
    } else {
        ""
    };
    match id {
        Some(id) => format!(
            "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            SESSION_TTL.as_secs()
        ),
        None => format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    }
}

/// Refuses a cross-origin POST: when the browser names an `Origin`, its host
/// must be this server's `Host`.
pub fn check_origin(headers: &HeaderMap) -> Result<(), ConsoleError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, h)| h);
    if host.is_some() && origin_host == host {
        return Ok(());
    }
    Err(ConsoleError::new(
        StatusCode::FORBIDDEN,
        "this form was sent from another site; use the console's own pages",
    ))
}

/// The signed-in person: their identity (from their API token) and their
/// session's CSRF token. Pages that need it redirect to the sign-in page
/// without a session.
#[derive(Clone)]
pub struct Viewer {
    pub identity: Identity,
    pub csrf: String,
    pub session: String,
}

impl Viewer {
    pub fn has(&self, roles: &[crate::auth::Role]) -> bool {
        roles.contains(&self.identity.role)
    }
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = ConsoleError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let sessions = parts
            .extensions
            .get::<Arc<Sessions>>()
            .cloned()
            .ok_or_else(|| ConsoleError::internal("console sessions missing"))?;
        let id = session_id(&parts.headers).ok_or_else(ConsoleError::sign_in)?;
        let (token_hash, csrf) = sessions.get(&id).ok_or_else(ConsoleError::sign_in)?;
        match identify(state, &token_hash).await {
            Ok(identity) => Ok(Viewer {
                identity,
                csrf,
                session: id,
            }),
            Err(e) if e.parts().status == StatusCode::UNAUTHORIZED => {
                sessions.close(&id);
                Err(ConsoleError::sign_in())
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// A state-changing form: the viewer, and the form's fields once its `csrf`
/// field matched the session's token (compared in constant time). Anything
/// else is refused with 403 before the handler runs, so nothing is recorded.
pub struct Act {
    pub viewer: Viewer,
    pub fields: HashMap<String, String>,
}

impl Act {
    /// A field, trimmed; `None` when absent or empty.
    pub fn field(&self, name: &str) -> Option<String> {
        self.fields
            .get(name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    }
}

impl FromRequest<AppState> for Act {
    type Rejection = ConsoleError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = request.into_parts();
        if parts.method != Method::POST {
            return Err(ConsoleError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "console actions are POST forms",
            ));
        }
        check_origin(&parts.headers)?;
        let viewer = match Viewer::from_request_parts(&mut parts, state).await {
            Ok(v) => v,
            Err(_) => {
                return Err(ConsoleError::new(
                    StatusCode::FORBIDDEN,
                    "not signed in (or the session expired): sign in at /signin, then send the form again",
                ));
            }
        };
        let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
            .await
            .map_err(|_| {
                ConsoleError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the form is larger than {MAX_FORM_BYTES} bytes"),
                )
            })?;
        let fields: HashMap<String, String> = form_urlencoded::parse(&bytes).into_owned().collect();
        let sent = fields.get("csrf").map(String::as_str).unwrap_or("");
        if !bool::from(sent.as_bytes().ct_eq(viewer.csrf.as_bytes())) {
            return Err(ConsoleError::new(
                StatusCode::FORBIDDEN,
                "the form's CSRF token is missing or stale; reload the page and send it again",
            ));
        }
        Ok(Act { viewer, fields })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_bounded_in_number_and_age() {
        let s = Sessions::new(3, SESSION_TTL);
        let ids: Vec<String> = (0..5).map(|i| s.open(format!("t{i}"))).collect();
        assert_eq!(s.len(), 3, "the oldest sessions were dropped");
        assert!(s.get(&ids[0]).is_none() && s.get(&ids[1]).is_none());
        assert_eq!(s.get(&ids[4]).unwrap().0, "t4");
        s.close(&ids[4]);
        assert!(s.get(&ids[4]).is_none());

        let short = Sessions::new(10, Duration::ZERO);
        let id = short.open("t".into());
        assert!(short.get(&id).is_none(), "an expired session is refused");
        assert!(short.is_empty());
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_over_tls() {
        let plain: axum::http::Uri = "/signin".parse().unwrap();
        let c = cookie(Some("abc"), &plain, &HeaderMap::new());
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Max-Age="));
        assert!(!c.contains("Secure"));
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        assert!(cookie(Some("abc"), &plain, &h).ends_with("; Secure"));
    }

    #[test]
    fn a_foreign_origin_is_refused() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "127.0.0.1:7700".parse().unwrap());
        assert!(check_origin(&h).is_ok());
        h.insert(header::ORIGIN, "http://127.0.0.1:7700".parse().unwrap());
        assert!(check_origin(&h).is_ok());
        h.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(check_origin(&h).is_err());
    }
}
