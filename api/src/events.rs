//! `GET /v1/events`: Server-Sent Events of every event the caller may see, in
//! commit order. Each SSE `id` is the event's global sequence number (gseq);
//! a client that reconnects with `Last-Event-ID` gets exactly the events after
//! it: none lost, none twice. The stream reads from the store (never from
//! memory alone), woken by this process's appends and, for other processes'
//! appends, a poll every [`POLL`].

use std::convert::Infallible;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::Stream;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use utoipa::ToSchema;

use crate::auth::{Identity, TOKEN_CACHE_TTL, TokenHash};
use crate::error::ApiError;
use crate::query::ApiQuery;
use crate::state::AppState;

/// How often a stream looks for events appended by other processes.
pub const POLL: Duration = Duration::from_millis(500);
/// Events read from the store per query.
const PAGE: u32 = 500;
/// Events buffered per stream before the reader waits for the client.
const BUFFER: usize = 256;

/// Where to start and what to follow.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only this task's events.
    pub task: Option<String>,
    /// Start after this gseq (0: from the beginning); `Last-Event-ID` wins.
    /// Without either the stream starts at the present.
    pub from: Option<i64>,
}

/// The data of one stream event (its SSE `event` is `type`, its `id` is `gseq`).
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamEvent {
    pub gseq: i64,
    pub task_id: String,
    pub seq: i64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub recorded_at_ms: i64,
    pub actor: String,
    #[schema(value_type = Object)]
    pub payload: Value,
    pub prev_hash: String,
    pub hash: String,
    pub workflow: String,
    pub agent: Option<String>,
}

/// The live event stream.
#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventsQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this gseq")),
    responses((status = 200, description = "text/event-stream of StreamEvent", content_type = "text/event-stream", body = StreamEvent),
              (status = 429, description = "stream_quota: this token has as many streams open as it may", body = crate::error::ErrorBody),
              (status = 503, description = "too many open streams", body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn events(
    State(state): State<AppState>,
    identity: Identity,
    Extension(token): Extension<TokenHash>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let last_event_id = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .filter(|n| *n >= 0)
                .ok_or_else(|| {
                    ApiError::field(
                        "Last-Event-ID",
                        "Last-Event-ID must be an id this stream sent",
                    )
                })?,
        ),
        None => None,
    };
    if let Some(task) = &q.task {
        crate::tasks::visible_task(&state, &identity, task).await?;
    }
    let start = match last_event_id.or(q.from) {
        Some(n) => n,
        None => state
            .engine
            .store()
            .event_head()
            .await
            .map_err(ApiError::store)?,
    };
    let quota = StreamQuota::take(&state, &identity)?;
    let permit = state.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "too many open event streams on this server; retry later",
        )
    })?;
    let (tx, rx) = mpsc::channel(BUFFER);
    let agent = identity.own_agent().map(str::to_string);
    let mut closing = state.closing.subscribe();
    tokio::spawn(async move {
        let _permit = permit;
        let _quota = quota;
        let mut updates = state.engine.subscribe();
        let mut cursor = start;
        let mut checked = tokio::time::Instant::now();
        loop {
            // A revoked token's stream ends within TOKEN_CACHE_TTL.
            if checked.elapsed() >= TOKEN_CACHE_TTL {
                checked = tokio::time::Instant::now();
                match crate::auth::still_valid(state.engine.store().as_ref(), &token).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::info!(token = %identity.name, "token revoked: ending its event stream");
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot re-check a stream's token"),
                }
            }
            let page = match state
                .engine
                .store()
                .events_after(cursor, agent.as_deref(), q.task.as_deref(), PAGE)
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "event stream read failed; retrying");
                    tokio::time::sleep(POLL).await;
                    continue;
                }
            };
            let full = page.len() as u32 == PAGE;
            for g in page {
                cursor = g.gseq;
                let data = StreamEvent {
                    gseq: g.gseq,
                    task_id: g.event.task_id,
                    seq: g.event.seq,
                    event_type: g.event.event_type.clone(),
                    recorded_at_ms: g.event.recorded_at_ms,
                    actor: g.event.actor,
                    payload: g.event.payload,
                    prev_hash: g.event.prev_hash,
                    hash: g.event.hash,
                    workflow: g.workflow,
                    agent: g.agent,
                };
                let event = SseEvent::default()
                    .id(g.gseq.to_string())
                    .event(g.event.event_type)
                    .json_data(&data)
                    .unwrap_or_else(|_| SseEvent::default().comment("unserializable event"));
                if tx.send(Ok(event)).await.is_err() {
                    return; // the client went away
                }
            }
            if full {
                continue;
            }
            tokio::select! {
                _ = updates.recv() => {
                    // Coalesce a burst of appends into one read.
                    while updates.try_recv().is_ok() {}
                }
                _ = tokio::time::sleep(POLL) => {}
                _ = tokio::time::sleep_until(checked + TOKEN_CACHE_TTL) => {}
                _ = tx.closed() => return,
                _ = closing.wait_for(|c| *c) => return,
            }
        }
    });
    Ok(Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default()))
}

/// One token's place among its open streams; given back on drop.
pub(crate) struct StreamQuota {
    counts: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    token_id: String,
}

impl StreamQuota {
    pub(crate) fn take(state: &AppState, identity: &Identity) -> Result<Self, ApiError> {
        let limit = state.config.max_streams_per_token;
        let mut counts = state.streams_per_token.lock().expect("stream quota");
        let n = counts.entry(identity.token_id.clone()).or_insert(0);
        if *n >= limit {
            return Err(ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "stream_quota",
                format!(
                    "token {} has {limit} event streams open, as many as one token may (--max-streams-per-token); close one first",
                    identity.name
                ),
            )
            .with_details(serde_json::json!({"limit": limit, "quota": "max_streams_per_token"}))
            .retry_after(1));
        }
        *n += 1;
        Ok(Self {
            counts: state.streams_per_token.clone(),
            token_id: identity.token_id.clone(),
        })
    }
}

impl Drop for StreamQuota {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().expect("stream quota");
        if let Some(n) = counts.get_mut(&self.token_id) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.token_id);
            }
        }
    }
}
