//! `/v1/approvals`: the caller's inbox, and decisions. An approver's identity
//! is its token's name, recorded as `approver:<name>`; the plan workflow
//! checks it (named approver, not the submitting agent, distinct for quorum).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use mandate_engine::store::TaskFilter;
use mandate_engine::{EventPayload, TaskStatus};
use mandate_workflows::plan::approvals;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::auth::{Identity, Role};
use crate::error::{ApiError, ApiJson};
use crate::query::ApiQuery;
use crate::state::AppState;

/// Most tasks in `needs_approval` one inbox request reads.
pub const INBOX_SCAN_LIMIT: u32 = 500;

/// The inbox.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Inbox {
    /// Each step waiting for a decision: summary, risk, owners, evidence,
    /// rollback plan, approvers, quorum, decisions so far.
    #[schema(value_type = Vec<Object>)]
    pub approvals: Vec<Value>,
    /// True when more than [`INBOX_SCAN_LIMIT`] tasks wait for decisions and
    /// only the newest were read: filter with `?task=`.
    #[serde(default)]
    pub truncated: bool,
}

/// Which approvals to list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct InboxQuery {
    /// Only this task's pending approvals.
    pub task: Option<String>,
}

/// Pending approvals: an approver's own (those it may decide and has not);
/// operators and auditors see all.
#[utoipa::path(get, path = "/v1/approvals", tag = "approvals", params(InboxQuery),
    responses((status = 200, body = Inbox), (status = 403, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn inbox(
    State(state): State<AppState>,
    identity: Identity,
    ApiQuery(q): ApiQuery<InboxQuery>,
) -> Result<Json<Inbox>, ApiError> {
    identity.require(
        &[Role::Approver, Role::Operator, Role::Auditor],
        "read the approval inbox",
    )?;
    let (rows, truncated) = match &q.task {
        Some(task) => {
            let row = crate::tasks::visible_task(&state, &identity, task).await?;
            (
                if row.status == TaskStatus::NeedsApproval {
                    vec![row]
                } else {
                    vec![]
                },
                false,
            )
        }
        None => {
            let mut rows = state
                .engine
                .store()
                .list_tasks(TaskFilter {
                    status: Some(TaskStatus::NeedsApproval),
                    limit: INBOX_SCAN_LIMIT + 1,
                    ..Default::default()
                })
                .await
                .map_err(ApiError::store)?;
            let truncated = rows.len() > INBOX_SCAN_LIMIT as usize;
            rows.truncate(INBOX_SCAN_LIMIT as usize);
            (rows, truncated)
        }
    };
    let who = (identity.role == Role::Approver).then_some(identity.name.as_str());
    let mut out = Vec::new();
    for row in rows {
        let history = state.engine.history(&row.id).await?;
        for e in approvals::inbox_entries(&row.id, &history, who) {
            out.push(serde_json::to_value(e).map_err(|e| ApiError::internal(e.to_string()))?);
        }
    }
    Ok(Json(Inbox {
        approvals: out,
        truncated,
    }))
}

/// A decision.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody {
    /// `approve`, `reject`, or `edit` (approve with changed input fields,
    /// re-checked by policy).
    #[schema(pattern = "^(approve|reject|edit)$")]
    pub decision: String,
    #[schema(max_length = 1000)]
    pub comment: Option<String>,
    /// With `edit`: the input fields to change.
    #[schema(value_type = Option<Object>)]
    pub edit: Option<Value>,
}

/// A recorded decision.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Decided {
    pub task_id: String,
    pub step: String,
    pub seq: i64,
}

/// Decide an approval, as the token's identity.
#[utoipa::path(post, path = "/v1/approvals/{id}", tag = "approvals",
    params(("id" = String, Path, description = "Approval id: <task id>:<step>")),
    request_body = DecisionBody,
    responses((status = 202, body = Decided), (status = 403, body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody), (status = 409, description = "the approval is not pending", body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn decide(
    State(state): State<AppState>,
    identity: Identity,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<DecisionBody>,
) -> Result<(StatusCode, Json<Decided>), ApiError> {
    identity.require(&[Role::Approver], "decide approvals")?;
    let (task_id, step) = approvals::parse_approval_id(&id).ok_or_else(|| {
        ApiError::not_found(format!(
            "{id:?} is not an approval id (<task id>:<step>, as GET /v1/approvals lists them)"
        ))
    })?;
    let decision = match (body.decision.as_str(), &body.edit) {
        ("approve", None) | ("reject", None) => body.decision.clone(),
        ("edit", Some(e)) if e.is_object() => "approve".to_string(),
        ("edit", _) => {
            return Err(ApiError::field(
                "edit",
                "decision edit needs an edit object with the input fields to change",
            ));
        }
        ("approve" | "reject", Some(_)) => {
            return Err(ApiError::field("edit", "edit goes with decision \"edit\""));
        }
        (other, _) => {
            return Err(ApiError::field(
                "decision",
                format!("unknown decision {other:?}; use approve, reject or edit"),
            ));
        }
    };
    if body
        .comment
        .as_ref()
        .is_some_and(|c| c.chars().count() > 1_000)
    {
        return Err(ApiError::field(
            "comment",
            "comment is longer than 1000 characters",
        ));
    }
    let history = match state.engine.history(task_id).await {
        Err(mandate_engine::runtime::Error::TaskNotFound { .. }) => {
            return Err(ApiError::not_found(format!(
                "no approval {id}: no task {task_id}"
            )));
        }
        r => r?,
    };
    let pending = approvals::pending(&history);
    let Some(p) = pending.iter().find(|p| p.step == step) else {
        return Err(ApiError::conflict(format!(
            "step {step} of task {task_id} is not awaiting a decision (decided, timed out, or never gated)"
        ))
        .with_details(json!({"task_id": task_id, "step": step})));
    };
    let requested_at = history.iter().rev().find_map(|e| match &e.payload {
        EventPayload::SignalWaitStarted { name, .. } if *name == approvals::signal_name(step) => {
            Some(e.recorded_at_ms)
        }
        _ => None,
    });
    let tool = p.tool.clone();
    let mut payload = json!({"decision": decision, "comment": body.comment});
    if let Some(e) = body.edit {
        payload["edit"] = e;
    }
    let sender = format!("approver:{}", identity.name);
    let seq = state
        .engine
        .signal(task_id, &approvals::signal_name(step), payload, &sender)
        .await
        .map_err(|e| match e {
            // The step is pending, so a refusal is about who decides.
            mandate_engine::runtime::Error::Rejected { task_id, message } => {
                ApiError::forbidden(message).with_details(json!({"task_id": task_id, "step": step}))
            }
            e => e.into(),
        })?;
    if let Some(at) = requested_at {
        let secs = (state.engine.now_ms() - at).max(0) as f64 / 1000.0;
        metrics::histogram!("mandate_time_to_intervention_seconds", "tool" => tool, "decision" => decision)
            .record(secs);
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(Decided {
            task_id: task_id.to_string(),
            step: step.to_string(),
            seq,
        }),
    ))
}
