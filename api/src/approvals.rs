//! `/v1/approvals`: the caller's inbox and decisions, and `/v1/preapprovals`.
//! Approvals are engine objects: a decision is recorded through
//! `Engine::decide_approval` with the token's identity (never a body field,
//! never a signal); the engine checks that the request names it, that it is
//! neither the submitting agent nor the user the task acts for, and that it
//! has not decided already.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use mandate_engine::core::approvals::{InboxEntry, parse_approval_id};
use mandate_engine::core::gateway::Preapproval;
use mandate_engine::runtime::{ApprovalDecision, ApprovalTarget, PreapprovalGrant};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::auth::{Identity, Role};
use crate::error::{ApiError, ApiJson};
use crate::query::ApiQuery;
use crate::state::AppState;

pub use mandate_engine::runtime::INBOX_SCAN_LIMIT;

/// The inbox.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Inbox {
    /// Each open approval request: summary, risk, owners (blast radius),
    /// evidence, rollback plan, the deciding rules, approvers, quorum,
    /// decisions so far, deadline.
    #[schema(value_type = Vec<Object>)]
    pub approvals: Vec<InboxEntry>,
    /// True when more than `INBOX_SCAN_LIMIT` tasks wait for decisions and
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
    responses((status = 200, body = Inbox), (status = 403, body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody)),
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
    if let Some(task) = &q.task {
        crate::tasks::visible_task(&state, &identity, task).await?;
    }
    let who = (identity.role == Role::Approver).then_some(identity.name.as_str());
    let (approvals, truncated) = state.engine.approval_inbox(q.task.as_deref(), who).await?;
    Ok(Json(Inbox {
        approvals,
        truncated,
    }))
}

/// A decision.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody {
    /// `approve`, `reject`, or `edit` (approve with changed input fields,
    /// re-checked by policy: a denial rejects the step, a stricter
    /// requirement restarts the approval).
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
    /// The step (or the workflow's approval name) decided.
    pub step: String,
    /// The seq of the approval request.
    pub request_seq: i64,
    /// The seq of the recorded decision.
    pub seq: i64,
}

/// Decide an approval, as the token's identity.
#[utoipa::path(post, path = "/v1/approvals/{id}", tag = "approvals",
    params(("id" = String, Path, description = "Approval id: <task id>:<request seq> (as GET /v1/approvals lists it) or <task id>:<step>")),
    request_body = DecisionBody,
    responses((status = 202, body = Decided), (status = 400, body = crate::error::ErrorBody),
              (status = 403, description = "the identity may not decide this request", body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody),
              (status = 409, description = "the approval is not pending", body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn decide(
    State(state): State<AppState>,
    identity: Identity,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<DecisionBody>,
) -> Result<(StatusCode, Json<Decided>), ApiError> {
    identity.require(&[Role::Approver], "decide approvals")?;
    let (task_id, which) = parse_approval_id(&id).ok_or_else(|| {
        ApiError::not_found(format!(
            "{id:?} is not an approval id (<task id>:<request seq>, as GET /v1/approvals lists them)"
        ))
    })?;
    let approved = match (body.decision.as_str(), &body.edit) {
        ("approve", None) => true,
        ("reject", None) => false,
        ("edit", Some(e)) if e.is_object() => true,
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
    crate::tasks::visible_task(&state, &identity, task_id).await?;
    let recorded = state
        .engine
        .decide_approval(
            task_id,
            ApprovalTarget::parse(which),
            &identity.name,
            ApprovalDecision {
                approved,
                comment: body.comment,
                edit: body.edit,
                via: Some(format!("token:{}", identity.token_id)),
            },
        )
        .await?;
    let secs = (state.engine.now_ms() - recorded.requested_at_ms).max(0) as f64 / 1000.0;
    metrics::histogram!("mandate_time_to_intervention_seconds",
        "tool" => recorded.tool.clone().unwrap_or_else(|| "(workflow)".into()),
        "decision" => if approved { "approve" } else { "reject" })
    .record(secs);
    Ok((
        StatusCode::ACCEPTED,
        Json(Decided {
            task_id: task_id.to_string(),
            step: recorded.subject,
            request_seq: recorded.request_seq,
            seq: recorded.seq,
        }),
    ))
}

/// A pre-approval grant.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantBody {
    /// The catalog tool pre-approved.
    pub tool: String,
    /// The catalog agent it is pre-approved for.
    pub agent: String,
    /// The resource scope (`*` or absent: any).
    pub scope: Option<String>,
    /// How long it lasts, 1 ms to 30 days.
    pub duration_ms: i64,
    pub reason: Option<String>,
}

/// A pre-approval, as stored.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PreapprovalView {
    pub id: String,
    pub tool: String,
    pub agent: String,
    pub scope: Option<String>,
    pub granted_by: String,
    pub granted_at_ms: i64,
    pub expires_at_ms: i64,
    pub reason: Option<String>,
    pub revoked_by: Option<String>,
    pub revoked_at_ms: Option<i64>,
}

impl From<Preapproval> for PreapprovalView {
    fn from(p: Preapproval) -> Self {
        PreapprovalView {
            id: p.id,
            tool: p.tool,
            agent: p.agent,
            scope: p.scope,
            granted_by: p.granted_by,
            granted_at_ms: p.granted_at_ms,
            expires_at_ms: p.expires_at_ms,
            reason: p.reason,
            revoked_by: p.revoked_by,
            revoked_at_ms: p.revoked_at_ms,
        }
    }
}

/// The pre-approvals.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Preapprovals {
    pub preapprovals: Vec<PreapprovalView>,
}

/// Which pre-approvals to list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PreapprovalQuery {
    /// Also expired and revoked ones (default: only those in force).
    pub all: Option<bool>,
}

/// Grant a pre-approval ("tool X for agent Y, scope S, for N ms") as the
/// token's identity, which must own the tool in the catalog.
#[utoipa::path(post, path = "/v1/preapprovals", tag = "approvals", request_body = GrantBody,
    responses((status = 201, body = PreapprovalView), (status = 400, body = crate::error::ErrorBody),
              (status = 403, description = "the identity does not own the tool", body = crate::error::ErrorBody),
              (status = 409, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn grant(
    State(state): State<AppState>,
    identity: Identity,
    ApiJson(body): ApiJson<GrantBody>,
) -> Result<(StatusCode, Json<PreapprovalView>), ApiError> {
    identity.require(&[Role::Approver, Role::Operator], "grant pre-approvals")?;
    let p = state
        .engine
        .grant_preapproval(
            PreapprovalGrant {
                tool: body.tool,
                agent: body.agent,
                scope: body.scope,
                duration_ms: body.duration_ms,
                reason: body.reason,
            },
            &identity.name,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(p.into())))
}

/// List pre-approvals, newest first.
#[utoipa::path(get, path = "/v1/preapprovals", tag = "approvals", params(PreapprovalQuery),
    responses((status = 200, body = Preapprovals), (status = 403, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    identity: Identity,
    ApiQuery(q): ApiQuery<PreapprovalQuery>,
) -> Result<Json<Preapprovals>, ApiError> {
    identity.require(
        &[Role::Approver, Role::Operator, Role::Auditor],
        "list pre-approvals",
    )?;
    let list = state.engine.preapprovals(!q.all.unwrap_or(false)).await?;
    Ok(Json(Preapprovals {
        preapprovals: list.into_iter().map(Into::into).collect(),
    }))
}

/// Revoke a pre-approval, as an owner of its tool.
#[utoipa::path(delete, path = "/v1/preapprovals/{id}", tag = "approvals",
    params(("id" = String, Path, description = "Pre-approval id")),
    responses((status = 200, body = PreapprovalView), (status = 403, body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn revoke(
    State(state): State<AppState>,
    identity: Identity,
    Path(id): Path<String>,
) -> Result<Json<PreapprovalView>, ApiError> {
    identity.require(&[Role::Approver, Role::Operator], "revoke pre-approvals")?;
    let p = state.engine.revoke_preapproval(&id, &identity.name).await?;
    Ok(Json(p.into()))
}

/// The details of an approval refusal, for clients.
pub(crate) fn refusal_details(task_id: &str) -> Value {
    json!({"task_id": task_id})
}
