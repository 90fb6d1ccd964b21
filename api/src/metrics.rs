//! `/metrics` (Prometheus text), `/healthz`, `/readyz`.
//!
//! Counters and histograms are recorded where things happen (HTTP requests
//! here, time-to-intervention in `approvals`); gauges of stored state (tasks
//! by status, queue depth, approvals pending) are read from the store at
//! scrape time, so they are true for every process sharing the database.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use mandate_engine::TaskStatus;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::error::ApiError;
use crate::state::AppState;

/// The process's recorder (installed once, on first use).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let buckets = [
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0,
        ];
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
            .expect("buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may be installed already (a test harness): then
        // this handle renders what this module's own recorder saw, which is
        // nothing global; the scrape gauges below still work.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Records every request's count and latency by route and status.
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("mandate_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("mandate_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Prometheus text.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let store = state.engine.store();
    let counts = store.count_by_status().await.map_err(ApiError::store)?;
    for status in TaskStatus::ALL {
        let n = counts
            .iter()
            .find(|(s, _)| *s == status)
            .map(|(_, n)| *n)
            .unwrap_or(0);
        metrics::gauge!("mandate_tasks", "status" => status.as_str()).set(n as f64);
        if status == TaskStatus::NeedsApproval {
            metrics::gauge!("mandate_approvals_pending").set(n as f64);
        }
    }
    let depth = store
        .queue_depth(state.engine.now_ms())
        .await
        .map_err(ApiError::store)?;
    metrics::gauge!("mandate_queue_depth").set(depth as f64);
    metrics::gauge!("mandate_halts_active").set(state.engine.active_halts().len() as f64);
    // This process's group-commit writer (a counter: it only grows).
    let (batches, ops, busy_us) = store.writer_stats().snapshot();
    metrics::gauge!("mandate_store_transactions_total").set(batches as f64);
    metrics::gauge!("mandate_store_operations_total").set(ops as f64);
    metrics::gauge!("mandate_store_busy_seconds_total").set(busy_us as f64 / 1e6);
    let mut body = handle().render();
    body.push_str(&crate::notifications::intervention_metrics(&state.engine).await?);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response())
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "ok")))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the store answers.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, description = "ready"), (status = 503, body = crate::error::ErrorBody)))]
pub async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    state.engine.store().event_head().await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("the store does not answer: {e}"),
        )
    })?;
    Ok("ready")
}
