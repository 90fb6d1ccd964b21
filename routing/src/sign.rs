//! HMAC-SHA256 signatures, compared in constant time. One place for the
//! webhook signature, Slack's request signature and response links.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// HMAC-SHA256 of the parts, concatenated, as lowercase hex.
pub fn hmac_hex(secret: &[u8], parts: &[&[u8]]) -> String {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes a key of any length");
    for p in parts {
        mac.update(p);
    }
    hex::encode(mac.finalize().into_bytes())
}

/// Whether `given` (hex) is the HMAC of the parts, in constant time.
pub fn verify_hex(secret: &[u8], parts: &[&[u8]], given: &str) -> bool {
    let expected = hmac_hex(secret, parts);
    expected.len() == given.len() && bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

/// Why a signed request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature header is missing or malformed: {0}")]
    Malformed(String),
    #[error(
        "the timestamp {timestamp} is {age_s} s from now, outside the {window_s} s replay window"
    )]
    Stale {
        timestamp: i64,
        age_s: i64,
        window_s: i64,
    },
    #[error("the signature does not match the body")]
    Mismatch,
}

/// The webhook signature header: `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "t.body")>`.
pub fn webhook_signature(secret: &[u8], unix_s: i64, body: &[u8]) -> String {
    let t = unix_s.to_string();
    format!("t={t},v1={}", hmac_hex(secret, &[t.as_bytes(), b".", body]))
}

/// Checks an `X-Mandate-Signature` header: the signature and the replay window.
pub fn verify_webhook(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now_s: i64,
    window_s: i64,
) -> Result<(), SignatureError> {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1 = Some(v),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return Err(SignatureError::Malformed(
            "expected t=<unix seconds>,v1=<hex>".into(),
        ));
    };
    check_window(t, now_s, window_s)?;
    if verify_hex(secret, &[t.to_string().as_bytes(), b".", body], v1) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// Slack's replay window for interactivity callbacks.
pub const SLACK_WINDOW_S: i64 = 5 * 60;

/// Verifies a Slack request (interactivity callbacks, slash commands):
/// `X-Slack-Signature: v0=<hex HMAC-SHA256(signing secret, "v0:{timestamp}:{body}")>`
/// and `X-Slack-Request-Timestamp` within five minutes of now.
pub fn verify_slack(
    signing_secret: &[u8],
    timestamp: &str,
    signature: &str,
    body: &[u8],
    now_s: i64,
) -> Result<(), SignatureError> {
    let t: i64 = timestamp.trim().parse().map_err(|_| {
        SignatureError::Malformed(format!(
            "X-Slack-Request-Timestamp {timestamp:?} is not a number"
        ))
    })?;
    let Some(hex_sig) = signature.strip_prefix("v0=") else {
        return Err(SignatureError::Malformed(
            "X-Slack-Signature must start with v0=".into(),
        ));
    };
    check_window(t, now_s, SLACK_WINDOW_S)?;
    if verify_hex(
        signing_secret,
        &[b"v0:", t.to_string().as_bytes(), b":", body],
        hex_sig,
    ) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// Signs a request the way Slack does (for tests and for relays).
pub fn slack_signature(signing_secret: &[u8], unix_s: i64, body: &[u8]) -> String {
    format!(
        "v0={}",
        hmac_hex(
            signing_secret,
            &[b"v0:", unix_s.to_string().as_bytes(), b":", body]
        )
    )
}

fn check_window(t: i64, now_s: i64, window_s: i64) -> Result<(), SignatureError> {
    let age = now_s.saturating_sub(t);
    if age.abs() > window_s {
        return Err(SignatureError::Stale {
            timestamp: t,
            age_s: age,
            window_s,
        });
    }
    Ok(())
}
