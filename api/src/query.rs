//! A query-string extractor whose errors are this API's JSON errors.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Like `axum::extract::Query`, refusing unknown or malformed parameters with
/// 400 `invalid_query`.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let q = parts.uri.query().unwrap_or("");
        serde_urlencoded_compat(q).map(ApiQuery)
    }
}

fn serde_urlencoded_compat<T: DeserializeOwned>(q: &str) -> Result<T, ApiError> {
    axum::extract::Query::<T>::try_from_uri(
        &format!("/?{q}")
            .parse()
            .map_err(|_| ApiError::query("", "the query string is not valid"))?,
    )
    .map(|axum::extract::Query(t)| t)
    .map_err(|e| {
        let text = e.body_text();
        // serde's messages name the parameter: "unknown field `x`", "invalid digit".
        let field = text
            .split('`')
            .nth(1)
            .filter(|_| text.contains("unknown field") || text.contains("missing field"))
            .unwrap_or("")
            .to_string();
        ApiError::query(&field, format!("bad query string: {text}"))
    })
}
