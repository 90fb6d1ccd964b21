//! Live task pages over Server-Sent Events: `GET /tasks/{id}/stream?after=N`
//! sends one `update` event whenever the task's history has grown past seq
//! `N` (then past the seq it last reported). The page's live part listens
//! with htmx's SSE extension and fetches its fragment on `update`; the
//! fragment it swaps in connects again after its own seq, and a final task's
//! fragment does not connect at all. The stream reads the task's row from
//! the store, woken by this process's appends and, for other processes',
//! by a poll every [`crate::events::POLL`]. Each stream counts against the
//! same limits as `/v1/events` (the server's open streams, the token's
//! quota), and ends when the session or its token does.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::ConsoleError;
use super::session::{Sessions, Viewer};
use crate::auth::TOKEN_CACHE_TTL;
use crate::events::{POLL, StreamQuota};
use crate::state::AppState;

#[derive(serde::Deserialize)]
pub struct After {
    /// The last seq the page shows.
    #[serde(default)]
    after: i64,
}

/// `/tasks/{id}/stream`: an `update` event each time the task moves on.
pub async fn task_stream(
    State(state): State<AppState>,
    Extension(sessions): Extension<Arc<Sessions>>,
    viewer: Viewer,
    Path(id): Path<String>,
    Query(q): Query<After>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ConsoleError> {
    crate::tasks::visible_task(&state, &viewer.identity, &id).await?;
    let quota = StreamQuota::take(&state, &viewer.identity)?;
    let permit = state.streams.clone().try_acquire_owned().map_err(|_| {
        ConsoleError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many open event streams on this server; the page still reloads by hand",
        )
    })?;
    let (tx, rx) = mpsc::channel(4);
    let mut closing = state.closing.subscribe();
    tokio::spawn(async move {
        let _permit = permit;
        let _quota = quota;
        let mut updates = state.engine.subscribe();
        let mut reported = q.after;
        let mut checked = tokio::time::Instant::now();
        loop {
            // A closed session, or a revoked token, ends the stream.
            if checked.elapsed() >= TOKEN_CACHE_TTL {
                checked = tokio::time::Instant::now();
                let Some(hash) = sessions.token_of(&viewer.session) else {
                    return;
                };
                if crate::auth::identify(&state, &hash).await.is_err() {
                    return;
                }
            }
            match state.engine.store().get_task(&id).await {
                Ok(Some(row)) if row.last_seq > reported => {
                    reported = row.last_seq;
                    let event = SseEvent::default()
                        .event("update")
                        .data(reported.to_string());
                    if tx.send(Ok(event)).await.is_err() {
                        return; // the page went away
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "console stream read failed; retrying"),
            }
            // Wait for an append to this task (a lagged receiver may have
            // missed one: look), the poll for other processes', or the end.
            let poll_at = tokio::time::Instant::now() + POLL;
            loop {
                tokio::select! {
                    u = updates.recv() => {
                        let mut mine = !matches!(&u, Ok(u) if u.task_id != id);
                        while let Ok(u) = updates.try_recv() {
                            mine |= u.task_id == id;
                        }
                        if mine {
                            break;
                        }
                    }
                    _ = tokio::time::sleep_until(poll_at) => break,
                    _ = tx.closed() => return,
                    _ = closing.wait_for(|c| *c) => return,
                }
            }
        }
    });
    Ok(Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default()))
}
