//! Mandate's HTTP API (SPEC §10; docs/http-api.md): a versioned JSON API under
//! `/v1` for orchestrators, approvers, operators and auditors, its OpenAPI
//! document (`/openapi.json`, docs page at `/docs`), a live event stream
//! (SSE), Prometheus metrics and health checks.
//!
//! Every route is registered through utoipa-axum's `routes!`, so a route
//! cannot exist without being in the OpenAPI document. Handlers only
//! translate: authorisation and shapes here, decisions in the engine.

pub mod actions;
pub mod approvals;
pub mod auth;
pub mod checkpoints;
pub mod console;
pub mod error;
pub mod events;
mod hygiene;
pub mod metrics;
pub mod notifications;
mod openapi;
pub mod ops;
mod query;
mod server;
pub mod state;
pub mod tasks;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderName, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_scalar::{Scalar, Servable};

pub use auth::{Identity, Role, create_token};
pub use error::ApiError;
pub use state::{ApiConfig, AppState, RoutingApi};

/// The default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7700";
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

#[derive(OpenApi)]
#[openapi(
    info(title = "Mandate", description = "Durable execution for AI-agent tasks: submit workflows and plans, decide approvals, halt, follow events. See docs/http-api.md."),
    modifiers(&BearerAuth),
    components(schemas(tasks::Since, tasks::EpochMs, tasks::Rfc3339)),
    tags((name = "tasks"), (name = "approvals"), (name = "identity"), (name = "halt"), (name = "plans"), (name = "events"), (name = "evidence"), (name = "health"), (name = "notifications"))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The routes and the OpenAPI document they make.
fn api(state: &AppState) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let auth = || middleware::from_fn_with_state(state.clone(), auth::authenticate);
    let requests = OpenApiRouter::new()
        .routes(routes!(tasks::submit, tasks::list_tasks))
        .routes(routes!(tasks::get_task))
        .routes(routes!(tasks::history))
        .routes(routes!(tasks::signal))
        .routes(routes!(tasks::cancel))
        .routes(routes!(tasks::pause))
        .routes(routes!(tasks::resume))
        .routes(routes!(tasks::retry))
        .routes(routes!(approvals::inbox))
        .routes(routes!(approvals::decide))
        .routes(routes!(approvals::grant, approvals::list))
        .routes(routes!(approvals::revoke))
        .routes(routes!(ops::halt, ops::lift, ops::halts))
        .routes(routes!(ops::dry_run))
        .routes(routes!(ops::whoami))
        .routes(routes!(checkpoints::latest))
        .routes(routes!(checkpoints::receipts))
        .routes(routes!(notifications::respond))
        .routes(routes!(notifications::resolve))
        .routes(routes!(actions::report))
        .route_layer(auth())
        .layer(middleware::from_fn_with_state(state.clone(), time_limit));
    // The stream has no request timeout.
    let stream = OpenApiRouter::new()
        .routes(routes!(events::events))
        .route_layer(auth());
    let public = OpenApiRouter::new()
        .routes(routes!(metrics::metrics))
        .routes(routes!(metrics::healthz))
        .routes(routes!(metrics::readyz))
        // Authenticated by their own signatures (link, Slack).
        .routes(routes!(notifications::link))
        .routes(routes!(notifications::slack));
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(requests)
        .merge(stream)
        .merge(public)
        .split_for_parts()
}

/// The OpenAPI document (what `/openapi.json` serves).
pub fn openapi(state: &AppState) -> utoipa::openapi::OpenApi {
    api(state).1
}

/// The whole application.
pub fn router(state: AppState) -> Router {
    let (routes, doc) = api(&state);
    let strict = Arc::new(openapi::strict(
        serde_json::to_value(&doc).expect("the OpenAPI document is JSON"),
    ));
    routes
        .nest_service("/mcp", mcp(&state))
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let d = strict.clone();
                async move { axum::Json(d.as_ref().clone()) }
            }),
        )
        .merge(Scalar::with_url("/docs", doc))
        .merge(console::routes())
        .fallback(|| async {
            ApiError::not_found("no such route; GET /openapi.json lists them")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method; GET /openapi.json lists them",
            )
        })
        .layer(DefaultBodyLimit::max(error::MAX_BODY_BYTES))
        .layer(middleware::from_fn(hygiene::refuse_nul_in_path_and_query))
        .layer(middleware::from_fn(request_id_in_errors))
        .layer(middleware::from_fn(metrics::track))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::internal("the server hit a bug handling this request; it is logged with the request id")
                .into_response()
        }))
        .layer(SetSensitiveRequestHeadersLayer::new([header::AUTHORIZATION]))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<Body>| {
            let id = req
                .headers()
                .get(REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            tracing::info_span!("http", method = %req.method(), uri = %redacted_uri(req.uri()), request_id = %id)
        }))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .with_state(state)
}

/// `/mcp`: the MCP gateway (crate `mandate-mcp`) over streamable HTTP,
/// behind the bearer-token authentication; a session acts as the agent
/// whose token opened it.
fn mcp(state: &AppState) -> axum::routing::Router {
    let gateway = mandate_mcp::Gateway::new(
        state.engine.clone(),
        state.governance.clone(),
        Default::default(),
    );
    let service = mandate_mcp::http::service(
        gateway,
        Arc::new(|parts| match parts.extensions.get::<Identity>() {
            Some(i) if i.role == Role::Agent => Ok(i.name.clone()),
            Some(i) => Err(format!(
                "an MCP session acts as an agent; this token's role is {}",
                i.role
            )),
            None => Err("no identity: send `Authorization: Bearer <agent token>`".into()),
        }),
    );
    axum::routing::Router::new()
        .fallback_service(service)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
}

/// Puts the request id into JSON error bodies.
async fn request_id_in_errors(request: Request, next: Next) -> Response {
    let id = request
        .extensions()
        .get::<RequestId>()
        .and_then(|r| r.header_value().to_str().ok())
        .map(str::to_string);
    let response = next.run(request).await;
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(response.status().is_client_error() || response.status().is_server_error()) || !is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024).await else {
        return (parts.status, "error body too large").into_response();
    };
    let mut v: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(_) => return Response::from_parts(parts, Body::from(bytes)),
    };
    if let Some(obj) = v.as_object_mut() {
        if parts.status == StatusCode::INTERNAL_SERVER_ERROR
            && obj.get("code").and_then(serde_json::Value::as_str) == Some("internal")
        {
            // What went wrong is logged with the request id; the client gets
            // the id, never a database's or a library's own text.
            obj.insert(
                "message".into(),
                format!(
                    "internal error, request id {}; the details are in the server's log",
                    id.as_deref().unwrap_or("-")
                )
                .into(),
            );
        }
        obj.insert("request_id".into(), id.into());
    }
    let out = serde_json::to_vec(&v).unwrap_or_else(|_| bytes.to_vec());
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(out))
}

/// Serves `router(state)` on `listener` until `shutdown` resolves; open
/// requests finish first. Connections are bounded and timed out as
/// `state.config` says (header, idle, count).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Install the metrics recorder before the first request records anything.
    let _ = metrics::handle();
    let closing = state.closing.clone();
    let limits = server::ConnLimits {
        header_timeout: state.config.header_timeout,
        idle_timeout: state.config.idle_timeout,
        max_connections: state.config.max_connections,
    };
    server::run(listener, router(state), limits, async move {
        shutdown.await;
        // End the event streams, or the shutdown would wait on them.
        let _ = closing.send(true);
    })
    .await
}

/// Answers 503 `timeout` (a JSON error) when a request takes longer than
/// `config.request_timeout`.
async fn time_limit(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let limit = state.config.request_timeout;
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!(
                "the request took longer than the server allows ({} ms); what it did may or may not have been recorded: read before retrying",
                limit.as_millis()
            ),
        )
        .with_details(serde_json::json!({"limit_ms": limit.as_millis() as u64}))
        .into_response(),
    }
}

/// The request URI as logged: query values are replaced by `*` (a token or
/// other secret passed in a query string never reaches the log).
pub fn redacted_uri(uri: &axum::http::Uri) -> String {
    let path = uri.path();
    match uri.query() {
        None => path.to_string(),
        Some(q) => {
            let names: Vec<String> = q
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, _)) => format!("{k}=*"),
                    // A bare word may itself be a secret.
                    None => "*".to_string(),
                })
                .collect();
            format!("{path}?{}", names.join("&"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redacted_uri;

    #[test]
    fn query_values_never_reach_the_log() {
        let uri: axum::http::Uri = "/v1/events?access_token=mdt_0123abcd&task=t1&flag"
            .parse()
            .unwrap();
        let shown = redacted_uri(&uri);
        assert_eq!(shown, "/v1/events?access_token=*&task=*&*");
        assert!(!shown.contains("mdt_"));
        assert_eq!(redacted_uri(&"/v1/tasks".parse().unwrap()), "/v1/tasks");
    }
}
