//! Input hygiene at the door: NUL characters (which PostgreSQL cannot store
//! and SQLite compares oddly) are refused in path ids, query parameters and
//! JSON strings, and JSON integers beyond ±(2^53 − 1) (which would not round-trip
//! through a double) are refused, each with 400 naming where.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::error::ApiError;

/// The largest integer magnitude a JSON body may hold: 2^53 − 1
/// (JavaScript's `Number.MAX_SAFE_INTEGER`; the engine's RFC 8785 hashing
/// refuses more, so the door does too, naming the field).
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// Middleware: refuses a NUL in the path's segments (naming the parameter,
/// e.g. `id`) or in a query parameter (naming it).
pub async fn refuse_nul_in_path_and_query(request: Request, next: Next) -> Response {
    if let Some(name) = nul_in_path(&request) {
        return ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "invalid_path",
            format!("path parameter {name} contains a NUL character (%00); remove it"),
        )
        .with_details(serde_json::json!({"field": name}))
        .into_response();
    }
    if let Some(q) = request.uri().query()
        && let Some((k, _)) =
            form_urlencoded::parse(q.as_bytes()).find(|(k, v)| k.contains('\0') || v.contains('\0'))
    {
        let name = k.replace('\0', "\\0");
        return ApiError::query(
            &name,
            format!("query parameter {name} contains a NUL character (%00); remove it"),
        )
        .into_response();
    }
    next.run(request).await
}

fn nul_in_path(request: &Request) -> Option<String> {
    let path = request.uri().path();
    if !path.contains("%00") {
        return None;
    }
    let template = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let templates: Vec<&str> = template
        .as_deref()
        .map(|t| t.split('/').collect())
        .unwrap_or_default();
    for (i, segment) in path.split('/').enumerate() {
        let decoded = percent_encoding::percent_decode_str(segment).decode_utf8_lossy();
        if decoded.contains('\0') {
            let name = templates
                .get(i)
                .and_then(|t| t.strip_prefix('{').and_then(|t| t.strip_suffix('}')))
                .unwrap_or("path");
            return Some(name.to_string());
        }
    }
    None
}

/// Refuses a NUL in any string or key, and an integer beyond ±(2^53 − 1), naming
/// the path (`input.amount_cents`, `plan.steps[2].id`).
pub fn check_json(v: &Value) -> Result<(), ApiError> {
    let mut path = String::new();
    walk(v, &mut path)
}

fn walk(v: &Value, path: &mut String) -> Result<(), ApiError> {
    match v {
        Value::String(s) if s.contains('\0') => Err(nul(path)),
        Value::Number(n) => {
            let too_big = match (n.as_u64(), n.as_i64(), n.as_f64()) {
                (Some(u), _, _) => u > MAX_SAFE_INTEGER,
                (_, Some(i), _) => i.unsigned_abs() > MAX_SAFE_INTEGER,
                (_, _, Some(f)) => f.fract() == 0.0 && f.abs() > MAX_SAFE_INTEGER as f64,
                _ => false,
            };
            if too_big {
                let at = shown(path);
                return Err(invalid_input(
                    &at,
                    format!(
                        "field {at}: the number {n} is beyond ±(2^53 − 1) ({MAX_SAFE_INTEGER}) and would not be kept exactly; send it as a string"
                    ),
                ));
            }
            Ok(())
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                walk(item, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        Value::Object(map) => {
            for (k, item) in map {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&k.replace('\0', "\\0"));
                if k.contains('\0') {
                    return Err(nul(path));
                }
                walk(item, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// 400 `invalid_input` naming the field (the code the engine uses for a
/// value it cannot keep).
fn invalid_input(field: &str, message: String) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::BAD_REQUEST,
        "invalid_input",
        message,
    )
    .with_details(serde_json::json!({"field": field}))
}

fn shown(path: &str) -> String {
    if path.is_empty() {
        "body".to_string()
    } else {
        path.to_string()
    }
}

fn nul(path: &str) -> ApiError {
    let at = shown(path);
    invalid_input(
        &at,
        format!("field {at} contains a NUL character (\\u0000), which cannot be stored; remove it"),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::check_json;

    fn field(v: serde_json::Value) -> Option<String> {
        check_json(&v).err().map(|e| {
            e.parts().details["field"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
    }

    #[test]
    fn big_integers_and_nul_are_named() {
        assert_eq!(field(json!({"input": {"n": 9007199254740991u64}})), None);
        assert_eq!(field(json!({"input": {"n": -9007199254740991i64}})), None);
        assert_eq!(
            field(json!({"n": 9007199254740992u64})).as_deref(),
            Some("n")
        );
        assert_eq!(
            field(json!({"input": {"n": 1.5e300}})).as_deref(),
            Some("input.n")
        );
        assert_eq!(field(json!({"input": {"n": 0.5}})), None);
        assert_eq!(
            field(json!({"input": {"amount_cents": 18446744073709551615u64}})).as_deref(),
            Some("input.amount_cents")
        );
        assert_eq!(
            field(json!({"plan": {"steps": [{}, {"n": -9007199254740993i64}]}})).as_deref(),
            Some("plan.steps[1].n")
        );
        assert_eq!(
            field(json!({"reason": "a\u{0}b"})).as_deref(),
            Some("reason")
        );
        assert_eq!(
            field(json!({"x": {"k\u{0}": 1}})).as_deref(),
            Some("x.k\\0")
        );
    }
}
