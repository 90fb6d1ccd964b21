//! One-click response links: signed (HMAC-SHA256 over notification id,
//! recipient, action and expiry), expiring, bound to their recipient, and
//! single-use (consumed in the database by [`crate::outbox::Outbox::consume_link`]).
//!
//! Token: `v1.<hex notification id>.<hex recipient>.<action>.<expires_at_ms>.<hex signature>`.

use serde::{Deserialize, Serialize};

use crate::sign;

/// What a link can do: the answers the engine records.
pub const ACTIONS: &[&str] = mandate_engine::runtime::RESPONSE_ACTIONS;

/// A link's content, once verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkClaim {
    pub notification_id: String,
    pub recipient: String,
    pub action: String,
    pub expires_at_ms: i64,
}

/// Why a link was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("the link is malformed: {0}")]
    Malformed(String),
    #[error("the link's signature does not match (tampered, or signed with another key)")]
    BadSignature,
    #[error("the link expired at {expires_at_ms} (now {now_ms}); ask for a fresh notification")]
    Expired { expires_at_ms: i64, now_ms: i64 },
    #[error("the link was sent to {bound_to}, not to {presented}; it works only for its recipient")]
    WrongRecipient { bound_to: String, presented: String },
    #[error("the link was already used; each link works once")]
    AlreadyUsed,
    #[error("unknown action {0:?}")]
    UnknownAction(String),
}

fn signed_parts(nid: &str, recipient: &str, action: &str, exp: i64) -> String {
    format!("v1\n{nid}\n{recipient}\n{action}\n{exp}")
}

/// Mints a link token.
pub fn mint(secret: &[u8], claim: &LinkClaim) -> Result<String, LinkError> {
    if !ACTIONS.contains(&claim.action.as_str()) {
        return Err(LinkError::UnknownAction(claim.action.clone()));
    }
    let sig = sign::hmac_hex(
        secret,
        &[signed_parts(
            &claim.notification_id,
            &claim.recipient,
            &claim.action,
            claim.expires_at_ms,
        )
        .as_bytes()],
    );
    Ok(format!(
        "v1.{}.{}.{}.{}.{sig}",
        hex::encode(&claim.notification_id),
        hex::encode(&claim.recipient),
        claim.action,
        claim.expires_at_ms
    ))
}

/// Checks a token's signature, expiry and recipient (the identity presenting
/// it). Does not consume it: see `Outbox::consume_link`.
pub fn verify(
    secret: &[u8],
    token: &str,
    presented_recipient: &str,
    now_ms: i64,
) -> Result<LinkClaim, LinkError> {
    let parts: Vec<&str> = token.split('.').collect();
    let [v, nid, rcp, action, exp, sig] = parts.as_slice() else {
        return Err(LinkError::Malformed(
            "expected six dot-separated parts".into(),
        ));
    };
    if *v != "v1" {
        return Err(LinkError::Malformed(format!("unknown version {v:?}")));
    }
    let text = |h: &str| hex::decode(h).ok().and_then(|b| String::from_utf8(b).ok());
    let (Some(nid), Some(rcp), Ok(exp)) = (text(nid), text(rcp), exp.parse::<i64>()) else {
        return Err(LinkError::Malformed(
            "a part is not encoded as expected".into(),
        ));
    };
    if !sign::verify_hex(
        secret,
        &[signed_parts(&nid, &rcp, action, exp).as_bytes()],
        sig,
    ) {
        return Err(LinkError::BadSignature);
    }
    if !ACTIONS.contains(action) {
        return Err(LinkError::UnknownAction(action.to_string()));
    }
    if now_ms >= exp {
        return Err(LinkError::Expired {
            expires_at_ms: exp,
            now_ms,
        });
    }
    if rcp != presented_recipient {
        return Err(LinkError::WrongRecipient {
            bound_to: rcp,
            presented: presented_recipient.to_string(),
        });
    }
    Ok(LinkClaim {
        notification_id: nid,
        recipient: rcp,
        action: action.to_string(),
        expires_at_ms: exp,
    })
}

/// The recipient a token names (unverified: use [`verify`] before trusting it).
pub fn bound_recipient(token: &str) -> Result<String, LinkError> {
    let part = token
        .split('.')
        .nth(2)
        .ok_or_else(|| LinkError::Malformed("expected six dot-separated parts".into()))?;
    hex::decode(part)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| LinkError::Malformed("the recipient is not encoded as expected".into()))
}

/// The key a used link is recorded under (a digest of the token).
pub fn use_key(token: &str) -> String {
    sign::hmac_hex(b"mandate-link-use", &[token.as_bytes()])
}
