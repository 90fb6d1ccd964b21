//! Errors as JSON `{code, message, details, request_id}` with stable codes
//! (docs/http-api.md lists them), and the JSON body extractor that names the
//! field a bad body got wrong.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mandate_engine::runtime::Error as EngineError;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// The body of every error response.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Stable, machine-readable: `invalid_field`, `forbidden`, `conflict`, …
    pub code: String,
    /// What was wrong and what to do, for a person.
    pub message: String,
    /// Specifics, e.g. `{"field": "input.steps[2].tool"}`.
    #[schema(value_type = Object)]
    #[serde(default)]
    pub details: Value,
    /// The request's id (also in the `x-request-id` header and the logs).
    #[serde(default)]
    pub request_id: Option<String>,
}

/// An error a handler returns; rendered by `IntoResponse` (the request id is
/// added by the `request_id_in_errors` middleware). Boxed: errors are rare
/// and results stay small.
#[derive(Debug)]
pub struct ApiError(Box<ErrorParts>);

/// What an [`ApiError`] holds.
#[derive(Debug)]
pub struct ErrorParts {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Value,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self(Box::new(ErrorParts {
            status,
            code,
            message: message.into(),
            details: json!({}),
            retry_after: None,
        }))
    }
    pub fn with_details(mut self, details: Value) -> Self {
        self.0.details = details;
        self
    }
    pub fn parts(&self) -> &ErrorParts {
        &self.0
    }
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_field", message)
            .with_details(json!({"field": field}))
    }
    pub fn query(field: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_query", message)
            .with_details(json!({"field": field}))
    }
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    pub fn rate_limited(retry_after_s: u64) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("this token is over its request rate; retry after {retry_after_s} s"),
        )
        .retry_after(retry_after_s)
    }
    /// Adds a `Retry-After` header (seconds).
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.0.retry_after = Some(seconds);
        self
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
    /// A store failure: logged (with the request id, from the span); the
    /// client gets only "internal error, request id X".
    pub fn store(e: mandate_engine::store::Error) -> Self {
        tracing::error!(error = %e, "store failure");
        Self::internal("internal error")
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let message = e.to_string();
        match e {
            EngineError::UnknownWorkflow { name, known } => {
                Self::new(StatusCode::BAD_REQUEST, "unknown_workflow", message)
                    .with_details(json!({"field": "workflow", "workflow": name, "known": known}))
            }
            EngineError::InvalidInput { field, .. } => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_input", message)
                    .with_details(json!({"field": field}))
            }
            EngineError::TaskNotFound { task_id } => {
                Self::not_found(message).with_details(json!({"task_id": task_id}))
            }
            EngineError::TaskFinal {
                task_id, status, ..
            } => Self::conflict(message)
                .with_details(json!({"task_id": task_id, "status": status.as_str()})),
            EngineError::Rejected { task_id, .. } => {
                Self::conflict(message).with_details(json!({"task_id": task_id}))
            }
            EngineError::Contention { task_id, .. } => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "contention", message)
                    .with_details(json!({"task_id": task_id}))
            }
            EngineError::Timeout { task_id, .. } => {
                Self::new(StatusCode::GATEWAY_TIMEOUT, "timeout", message)
                    .with_details(json!({"task_id": task_id}))
            }
            EngineError::Corrupt { task_id, .. } | EngineError::Unparseable { task_id, .. } => {
                tracing::error!(%task_id, error = %message, "corrupt history");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "history_corrupt",
                    message,
                )
                .with_details(json!({"task_id": task_id}))
            }
            EngineError::ApprovalRefused(r) => {
                use mandate_engine::core::gateway::ApprovalRefusal as R;
                match &r {
                    R::NoSuchRequest { task_id, .. } => Self::not_found(message)
                        .with_details(crate::approvals::refusal_details(task_id)),
                    R::NotAllowed { task_id, .. } => Self::forbidden(message)
                        .with_details(crate::approvals::refusal_details(task_id)),
                    R::Closed { task_id, .. } | R::PastDeadline { task_id, .. } => {
                        Self::conflict(message)
                            .with_details(crate::approvals::refusal_details(task_id))
                    }
                }
            }
            EngineError::Forbidden { .. } => {
                let field = message
                    .strip_prefix("field ")
                    .and_then(|m| m.split(':').next())
                    .map(str::to_string);
                let e = Self::forbidden(message);
                match field {
                    Some(f) => e.with_details(json!({"field": f})),
                    None => e,
                }
            }
            EngineError::NotFound { .. } => Self::not_found(message),
            EngineError::Store(e) => Self::store(e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let this = *self.0;
        let body = ErrorBody {
            code: this.code.to_string(),
            message: this.message,
            details: this.details,
            request_id: None,
        };
        let mut response = (this.status, Json(body)).into_response();
        if let Some(s) = this.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        response
    }
}

/// Most bytes a request body may have.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// A JSON body whose errors name the field: unknown fields, wrong types and
/// missing fields are 400 `invalid_field` with `details.field`; bad syntax is
/// 400 `malformed_json`; a body over [`MAX_BODY_BYTES`] is 413.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| {
                let ct = ct.split(';').next().unwrap_or("").trim();
                ct.eq_ignore_ascii_case("application/json")
            });
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| body_error(e.status(), e.body_text()))?;
        if bytes.is_empty() {
            // An empty body reads as `{}` (optional bodies, e.g. pause).
            return parse(b"{}").map(ApiJson);
        }
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            ));
        }
        parse(&bytes).map(ApiJson)
    }
}

fn body_error(status: StatusCode, text: String) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            status,
            "payload_too_large",
            format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
        )
        .with_details(json!({"limit_bytes": MAX_BODY_BYTES}))
    } else {
        ApiError::new(StatusCode::BAD_REQUEST, "malformed_body", text)
    }
}

/// Parses JSON naming the path of the first error; refuses NUL characters
/// and integers beyond ±(2^53 − 1) anywhere in it (see `hygiene::check_json`).
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|inner| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the body is not valid JSON: {inner}"),
        )
        .with_details(json!({"line": inner.line(), "column": inner.column()}))
    })?;
    if !value.is_object() {
        return Err(ApiError::field(
            "",
            "the body must be a JSON object (or empty, where nothing is required)",
        ));
    }
    crate::hygiene::check_json(&value)?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let mut field = if path == "." { String::new() } else { path };
        // serde names a missing field only in its message: name it in the details too.
        let text = inner.to_string();
        if let Some(missing) = text
            .strip_prefix("missing field `")
            .and_then(|r| r.split('`').next())
        {
            field = if field.is_empty() {
                missing.to_string()
            } else {
                format!("{field}.{missing}")
            };
        }
        ApiError::field(
            &field,
            if field.is_empty() {
                format!("the body is wrong: {inner}")
            } else {
                format!("field {field}: {inner}")
            },
        )
    })
}
