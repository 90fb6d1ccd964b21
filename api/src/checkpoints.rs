//! Evidence for witnesses and the people a task concerns
//! (docs/hash-chain.md, "The evidence log"): the newest signed checkpoint,
//! and a task's receipts — each event's hash, its leaf index and, once a
//! checkpoint covers it, that checkpoint and the inclusion proof — which the
//! holder can verify offline with the log's public key.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use mandate_engine::evidence::{self, Checkpoint, note::Note};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::{Identity, Role};
use crate::error::ApiError;
use crate::state::AppState;
use crate::tasks::visible_task;

/// The newest signed checkpoint, as C2SP signed-note text.
#[utoipa::path(get, path = "/v1/checkpoints/latest", tag = "evidence",
    responses((status = 200, description = "The checkpoint note (text/plain)", body = String),
              (status = 404, description = "no checkpoint signed yet", body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn latest(
    State(state): State<AppState>,
    identity: Identity,
) -> Result<Response, ApiError> {
    identity.require(&[Role::Auditor, Role::Operator], "read checkpoints")?;
    let row = state
        .engine
        .store()
        .evidence_log()
        .checkpoint(None)
        .await
        .map_err(ApiError::store)?
        .ok_or_else(|| {
            ApiError::not_found(
                "no checkpoint has been signed yet: run `mandate serve --signing-key FILE`",
            )
        })?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        row.note,
    )
        .into_response())
}

/// One event's receipt.
#[derive(Debug, Serialize, ToSchema)]
pub struct Receipt {
    pub seq: i64,
    /// The event's global number; its leaf index is `gseq - 1`.
    pub gseq: i64,
    pub leaf_index: u64,
    /// The event's chain hash (hex), the leaf's bytes.
    pub event_hash: String,
    /// Whether the checkpoint below covers this event.
    pub covered: bool,
    /// Inclusion proof against the checkpoint (hex hashes, leaf up); empty
    /// until a checkpoint covers the event.
    pub proof: Vec<String>,
}

/// A task's receipts.
#[derive(Debug, Serialize, ToSchema)]
pub struct Receipts {
    pub task_id: String,
    /// The newest checkpoint (signed-note text), if one was signed.
    pub checkpoint: Option<String>,
    pub tree_size: u64,
    pub receipts: Vec<Receipt>,
}

/// Receipts for a task's events: hash, leaf index, and the newest
/// checkpoint with an inclusion proof once it covers them.
#[utoipa::path(get, path = "/v1/tasks/{id}/receipts", tag = "evidence",
    params(("id" = String, Path, description = "Task id")),
    responses((status = 200, body = Receipts), (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn receipts(
    State(state): State<AppState>,
    identity: Identity,
    Path(id): Path<String>,
) -> Result<Json<Receipts>, ApiError> {
    visible_task(&state, &identity, &id).await?;
    let log = state.engine.store().evidence_log();
    let row = log.checkpoint(None).await.map_err(ApiError::store)?;
    let cp = match &row {
        Some(r) => Some(
            Note::parse(&r.note)
                .and_then(|n| Checkpoint::parse_text(&n.text))
                .map_err(|e| {
                    ApiError::internal(format!("the stored checkpoint does not parse: {e}"))
                })?,
        ),
        None => None,
    };
    let (size, root) = cp.as_ref().map_or((0, [0; 32]), |c| (c.size, c.root));
    let proofs = evidence::task_proofs(&log, &id, size, &root)
        .await
        .map_err(ApiError::store)?;
    Ok(Json(Receipts {
        task_id: id,
        checkpoint: row.map(|r| r.note),
        tree_size: size,
        receipts: proofs
            .events
            .into_iter()
            .map(|e| Receipt {
                seq: e.seq,
                gseq: e.gseq,
                leaf_index: e.leaf_index,
                event_hash: e.event_hash,
                covered: e.covered,
                proof: e.proof,
            })
            .collect(),
    }))
}
