//! `POST /v1/actions` (routing, issue 15): an agent that ran a tool itself,
//! outside Mandate, reports the action. It is recorded as an observed step
//! (`ActionReported`, actor `agent:<token's name>`) in the agent's session
//! task, or in a task it names that it submitted, and routed to owners like
//! a monitored step. Nothing here pretends the action was gated: the
//! history says it was reported after the fact.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use mandate_engine::SubmitOptions;
use mandate_engine::runtime::{Error as EngineError, ReportedAction};
use mandate_engine::store::TaskFilter;
use mandate_workflows::mcp::{SessionInput, WORKFLOW as SESSION_WORKFLOW};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::{Identity, Role};
use crate::error::{ApiError, ApiJson};
use crate::state::AppState;

/// An action the agent ran itself.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportBody {
    /// The tool it ran (a catalog name or any `letters digits _ - . : /` name).
    #[schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9_.:/-]+$")]
    pub tool: String,
    /// The resource acted on, as the ownership map names it (`service:checkout`).
    #[schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9_.:/-]+$")]
    pub resource: Option<String>,
    /// `sha256:` and the 64 lowercase hex digits of the SHA-256 of the tool's input.
    #[schema(pattern = "^sha256:[0-9a-f]{64}$")]
    pub input_digest: String,
    /// `succeeded` or `failed`.
    #[schema(pattern = "^(succeeded|failed)$")]
    pub outcome: String,
    /// For a failed action: what went wrong.
    #[schema(min_length = 1, max_length = 2000)]
    pub error: Option<String>,
    /// When the tool ran, epoch milliseconds (at most 5 minutes after the server's now).
    #[schema(minimum = 1)]
    pub occurred_at_ms: i64,
    /// How to undo it, if known (offered to owners as the recovery path).
    #[schema(min_length = 1, max_length = 2000)]
    pub recovery_path: Option<String>,
    /// The task to record it in: one this agent submitted. Without it, the
    /// agent's open session task (`mcp_session`), started if there is none.
    #[schema(min_length = 1, max_length = 128)]
    pub task_id: Option<String>,
}

/// Who was told about a reported action.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Notified {
    pub recipient: String,
    pub rule: String,
    pub why: String,
}

/// Where a reported action was recorded.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ActionAccepted {
    pub task_id: String,
    /// The seq of the recorded `ActionReported`.
    pub seq: i64,
    /// Always true: the action ran before Mandate heard of it; it was not gated.
    pub reported_after_the_fact: bool,
    /// The owners routed to (deliveries follow); empty when nobody owns it.
    pub notified: Vec<Notified>,
}

/// The agent's session task: its open one, else a new one. Two first
/// reports at once must not start two sessions, so the new session's
/// idempotency key names the agent and the newest session before it: every
/// caller that found no open session after the same one asks for the same
/// task, and the store keeps one.
async fn session(state: &AppState, agent: &str) -> Result<String, ApiError> {
    let rows = state
        .engine
        .store()
        .list_tasks(TaskFilter {
            workflow: Some(SESSION_WORKFLOW.to_string()),
            agent: Some(agent.to_string()),
            limit: 20,
            ..Default::default()
        })
        .await
        .map_err(ApiError::store)?;
    if let Some(open) = rows.iter().find(|r| !r.status.is_final()) {
        return Ok(open.id.clone());
    }
    let after = rows.first().map_or("", |r| r.id.as_str());
    let key = {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(format!("{agent}\n{after}").as_bytes());
        format!("api-session:{}", &hex::encode(digest)[..40])
    };
    let input = SessionInput {
        transport: Some("api".into()),
        ..Default::default()
    };
    let submitted = state
        .engine
        .submit(
            SESSION_WORKFLOW,
            serde_json::to_value(input).expect("session input is JSON"),
            SubmitOptions {
                agent: Some(agent.to_string()),
                actor: Some(format!("agent:{agent}")),
                idempotency_key: Some(key),
                ..Default::default()
            },
        )
        .await?;
    Ok(submitted.task_id)
}

/// Report an action the agent ran itself, after the fact.
#[utoipa::path(post, path = "/v1/actions", tag = "notifications",
    request_body = ReportBody,
    responses((status = 201, body = ActionAccepted),
              (status = 400, description = "a field is wrong (details.field names it)", body = crate::error::ErrorBody),
              (status = 403, description = "not an agent token, or the task is not this agent's", body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody),
              (status = 409, description = "the task is final", body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn report(
    State(state): State<AppState>,
    identity: Identity,
    ApiJson(body): ApiJson<ReportBody>,
) -> Result<Response, ApiError> {
    identity.require(
        &[Role::Agent],
        "report actions (an agent reports what it ran)",
    )?;
    let agent = identity.name.clone();
    let action = ReportedAction {
        agent: agent.clone(),
        tool: body.tool,
        resource: body.resource,
        input_digest: body.input_digest,
        outcome: body.outcome,
        error: body.error,
        occurred_at_ms: body.occurred_at_ms,
        recovery_path: body.recovery_path,
    };
    let (task_id, named) = match body.task_id {
        Some(t) => {
            state
                .engine
                .limits()
                .check_name("task_id", &t)
                .map_err(|m| ApiError::field("task_id", m))?;
            // Another agent's task does not exist for this one (as on reads).
            crate::tasks::visible_task(&state, &identity, &t).await?;
            (t, true)
        }
        None => (session(&state, &agent).await?, false),
    };
    let recorded = match state.engine.report_action(&task_id, action.clone()).await {
        // The session ended (idle timeout) since it was looked up: the next one.
        Err(EngineError::TaskFinal { .. }) if !named => {
            let t = session(&state, &agent).await?;
            let r = state.engine.report_action(&t, action).await?;
            (t, r)
        }
        r => (task_id, r?),
    };
    let (task_id, recorded) = recorded;
    let notified = recorded
        .routing
        .map(|r| {
            r.recipients
                .into_iter()
                .map(|x| Notified {
                    recipient: x.recipient,
                    rule: x.rule,
                    why: x.why,
                })
                .collect()
        })
        .unwrap_or_default();
    let out = ActionAccepted {
        task_id,
        seq: recorded.seq,
        reported_after_the_fact: true,
        notified,
    };
    tracing::debug!(task = %out.task_id, seq = out.seq, "action reported");
    Ok((StatusCode::CREATED, Json(out)).into_response())
}
