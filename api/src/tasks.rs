//! `/v1/tasks`: submit (with `Idempotency-Key`), read, list, history, and the
//! operator's controls (signal, cancel, pause, resume, retry).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use mandate_engine::store::{TaskFilter, TaskRow};
use mandate_engine::{SubmitOptions, TaskStatus};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::auth::{Identity, Role};
use crate::error::{ApiError, ApiJson};
use crate::query::ApiQuery;
use crate::state::AppState;

/// A task as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Task {
    pub id: String,
    pub workflow: String,
    pub workflow_version: u32,
    /// queued, running, needs_approval, executing, failed_retryable,
    /// compensating, paused, completed, failed_terminal, escalated_to_human, cancelled
    pub status: String,
    pub agent: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub last_seq: i64,
    pub last_hash: String,
    /// Why the engine took the task out of its queue (corrupt history, changed code).
    pub blocked_reason: Option<String>,
    /// On submission: true when the `Idempotency-Key` named a task that existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub existing: Option<bool>,
}

impl From<TaskRow> for Task {
    fn from(r: TaskRow) -> Self {
        Self {
            id: r.id,
            workflow: r.workflow,
            workflow_version: r.workflow_version,
            status: r.status.as_str().to_string(),
            agent: r.agent,
            created_at_ms: r.created_at_ms,
            updated_at_ms: r.updated_at_ms,
            last_seq: r.last_seq,
            last_hash: r.last_hash,
            blocked_reason: r.blocked_reason,
            existing: None,
        }
    }
}

/// A submission: a workflow with its input, or a plan.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitBody {
    /// A registered workflow (e.g. `deploy_with_rollback`); not with `plan`.
    pub workflow: Option<String>,
    /// The workflow's input.
    #[schema(value_type = Object)]
    pub input: Option<Value>,
    /// A plan document (SPEC §5); not with `workflow`.
    #[schema(value_type = Object)]
    pub plan: Option<Value>,
    /// The agent the task belongs to. An agent token may only name itself
    /// (the default); operators may name any agent.
    pub agent: Option<String>,
    /// The person the agent acts for.
    pub on_behalf_of: Option<String>,
}

/// A workflow submission (the documented shape of [`SubmitBody`]).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitWorkflow {
    /// A registered workflow (e.g. `deploy_with_rollback`).
    #[schema(pattern = "^[A-Za-z0-9_.:/-]{1,128}$")]
    pub workflow: String,
    /// The workflow's input (the workflow checks it: 400 naming the field).
    #[schema(value_type = Object)]
    pub input: Value,
    /// The agent the task belongs to (agents may only name themselves).
    #[schema(pattern = "^[A-Za-z0-9_.:/-]{1,128}$")]
    pub agent: Option<String>,
    /// The person the agent acts for.
    #[schema(pattern = "^[A-Za-z0-9_.:/-]{1,128}$")]
    pub on_behalf_of: Option<String>,
}

/// A plan submission (the documented shape of [`SubmitBody`]).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitPlan {
    /// A plan document (SPEC §5); agent and on_behalf_of go inside it.
    #[schema(value_type = Object)]
    pub plan: Value,
}

/// What `POST /v1/tasks` takes: a workflow with its input, or a plan.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum SubmitRequest {
    Workflow(SubmitWorkflow),
    Plan(SubmitPlan),
}

/// Where a control action landed.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    pub task_id: String,
    /// The seq of the recorded event.
    pub seq: i64,
}

const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Create a task.
#[utoipa::path(post, path = "/v1/tasks", tag = "tasks",
    request_body = SubmitRequest,
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[A-Za-z0-9_.:/-]{1,128}$",
            description = "A retry with the same key and body (per caller) returns the same task; another body with it is 409")),
    responses((status = 201, body = Task), (status = 200, description = "The key was used before with the same body: the same task", body = Task),
              (status = 400, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody),
              (status = 409, description = "the Idempotency-Key was used before with a different body", body = crate::error::ErrorBody),
              (status = 503, description = "overloaded: too many submissions in flight (Retry-After)", body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn submit(
    State(state): State<AppState>,
    identity: Identity,
    headers: HeaderMap,
    ApiJson(body): ApiJson<SubmitBody>,
) -> Result<Response, ApiError> {
    identity.require(&[Role::Agent, Role::Operator], "submit tasks")?;
    // The global admission limit: past it, refuse now rather than queue.
    let _slot = state.submission_slots().clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            format!(
                "the server is handling as many submissions as it allows ({}, --max-inflight-submissions); retry after 1 s",
                state.config.max_inflight_submissions
            ),
        )
        .with_details(json!({"limit": state.config.max_inflight_submissions}))
        .retry_after(1)
    })?;
    let key = match headers.get(IDEMPOTENCY_KEY) {
        Some(v) => {
            let k = v.to_str().map_err(|_| {
                ApiError::field(
                    "Idempotency-Key",
                    "the Idempotency-Key header must be ASCII",
                )
            })?;
            state
                .engine
                .limits()
                .check_name("Idempotency-Key", k)
                .map_err(|m| ApiError::field("Idempotency-Key", m))?;
            // Keys are per caller: another caller's key never names this task.
            Some(format!("{}/{k}", identity.name))
        }
        None => None,
    };
    let raw_key = headers
        .get(IDEMPOTENCY_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (workflow, input, agent, on_behalf_of) = match (body.workflow, body.input, body.plan) {
        (Some(w), Some(input), None) => (w, input, body.agent, body.on_behalf_of),
        (None, None, Some(mut plan)) => {
            let Some(doc) = plan.as_object_mut() else {
                return Err(ApiError::field("plan", "the plan must be a JSON object"));
            };
            if body.agent.is_some() || body.on_behalf_of.is_some() {
                return Err(ApiError::field(
                    "agent",
                    "with a plan, put agent and on_behalf_of inside the plan",
                ));
            }
            if identity.role == Role::Agent && !doc.contains_key("agent") {
                doc.insert("agent".into(), Value::String(identity.name.clone()));
            }
            let agent = doc.get("agent").and_then(Value::as_str).map(str::to_string);
            let on_behalf_of = doc
                .get("on_behalf_of")
                .and_then(Value::as_str)
                .map(str::to_string);
            ("plan".to_string(), plan, agent, on_behalf_of)
        }
        (Some(_), None, None) => {
            return Err(ApiError::field("input", "a workflow needs its input"));
        }
        (None, Some(_), None) => {
            return Err(ApiError::field(
                "workflow",
                "input given without a workflow",
            ));
        }
        (None, None, None) => {
            return Err(ApiError::field(
                "workflow",
                "send {\"workflow\": NAME, \"input\": {...}} or {\"plan\": {...}}",
            ));
        }
        _ => {
            return Err(ApiError::field(
                "plan",
                "send either a workflow with its input or a plan, not both",
            ));
        }
    };
    let agent = match (identity.role, agent) {
        (Role::Agent, Some(a)) if a != identity.name => {
            return Err(ApiError::forbidden(format!(
                "agent {} may not submit tasks as agent {a}",
                identity.name
            ))
            .with_details(json!({"field": "agent"})));
        }
        (Role::Agent, _) => Some(identity.name.clone()),
        (_, a) => a,
    };
    let asked =
        json!({"workflow": workflow, "input": input, "agent": agent, "on_behalf_of": on_behalf_of});
    let submitted = state
        .engine
        .submit(
            &workflow,
            input,
            SubmitOptions {
                agent,
                on_behalf_of,
                idempotency_key: key.clone(),
                actor: Some(identity.actor()),
            },
        )
        .await
        .map_err(|e| match e {
            mandate_engine::runtime::Error::InvalidInput { field, message }
                if workflow == "plan" =>
            {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_plan",
                    format!("plan refused: {message}"),
                )
                .with_details(
                    json!({"field": if field == "input" { "plan".to_string() } else { field }}),
                )
            }
            e => e.into(),
        })?;
    let row = state.engine.task(&submitted.task_id).await?;
    if submitted.existing {
        let first = first_submission(&state, &row.id).await?;
        if first != asked {
            let key = raw_key.unwrap_or_default();
            return Err(ApiError::conflict(format!(
                "Idempotency-Key {key:?} was used before for a different request (task {}); send the same body to get that task, or use a new key",
                row.id
            ))
            .with_details(json!({"field": "Idempotency-Key", "idempotency_key": key, "task_id": row.id})));
        }
    }
    let status = if submitted.existing {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let mut task = Task::from(row);
    task.existing = Some(submitted.existing);
    Ok((status, Json(task)).into_response())
}

/// What created a task: its recorded workflow, input, agent and
/// on_behalf_of, shaped like the `asked` value `submit` compares it with.
async fn first_submission(state: &AppState, task_id: &str) -> Result<Value, ApiError> {
    let history = state
        .engine
        .store()
        .load_history(task_id)
        .await
        .map_err(ApiError::store)?;
    let p = history
        .first()
        .filter(|e| e.event_type == "TaskSubmitted")
        .map(|e| &e.payload)
        .ok_or_else(|| ApiError::internal(format!("task {task_id} has no TaskSubmitted event")))?;
    let field = |k: &str| p.get(k).cloned().unwrap_or(Value::Null);
    Ok(
        json!({"workflow": field("workflow"), "input": field("input"),
        "agent": field("agent"), "on_behalf_of": field("on_behalf_of")}),
    )
}

/// A task the caller may see, or 404.
pub(crate) async fn visible_task(
    state: &AppState,
    identity: &Identity,
    task_id: &str,
) -> Result<TaskRow, ApiError> {
    let row = state
        .engine
        .store()
        .get_task(task_id)
        .await
        .map_err(ApiError::store)?
        .ok_or_else(|| {
            ApiError::not_found(format!("no task with id {task_id}"))
                .with_details(json!({"task_id": task_id}))
        })?;
    identity.check_owner(task_id, row.agent.as_deref())?;
    Ok(row)
}

/// One task.
#[utoipa::path(get, path = "/v1/tasks/{id}", tag = "tasks",
    params(("id" = String, Path, description = "Task id")),
    responses((status = 200, body = Task), (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_task(
    State(state): State<AppState>,
    identity: Identity,
    Path(id): Path<String>,
) -> Result<Json<Task>, ApiError> {
    Ok(Json(visible_task(&state, &identity, &id).await?.into()))
}

/// Filters of the task list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only tasks in this status (the document lists the statuses).
    pub status: Option<String>,
    /// Only this agent's tasks (agents always see only their own).
    pub agent: Option<String>,
    pub workflow: Option<String>,
    /// Only tasks created at or after: ms since the epoch, or RFC 3339.
    #[param(value_type = Option<Since>)]
    pub since: Option<String>,
    /// From a previous page's `next_cursor`.
    #[param(pattern = "^-?[0-9]{1,15}\\.[^\\u0000]+$")]
    pub cursor: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

/// A time: ms since the epoch, or RFC 3339.
#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(untagged)]
pub enum Since {
    Ms(EpochMs),
    Rfc3339(Rfc3339),
}

/// Milliseconds since the epoch.
#[derive(ToSchema)]
#[schema(pattern = "^-?[0-9]{1,15}$")]
pub struct EpochMs(#[allow(dead_code)] String);

/// An RFC 3339 time (2026-11-22T10:00:00Z).
#[derive(ToSchema)]
#[schema(format = DateTime)]
pub struct Rfc3339(#[allow(dead_code)] String);

/// A page of tasks, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TaskPage {
    pub tasks: Vec<Task>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// List tasks, newest first.
#[utoipa::path(get, path = "/v1/tasks", tag = "tasks", params(ListQuery),
    responses((status = 200, body = TaskPage), (status = 400, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_tasks(
    State(state): State<AppState>,
    identity: Identity,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<TaskPage>, ApiError> {
    let status = match &q.status {
        Some(s) => Some(TaskStatus::parse(s).ok_or_else(|| {
            ApiError::query(
                "status",
                format!(
                    "unknown status {s:?}; one of: {}",
                    TaskStatus::ALL.map(|s| s.as_str()).join(", ")
                ),
            )
        })?),
        None => None,
    };
    let agent = match (identity.own_agent(), q.agent) {
        (Some(me), Some(a)) if a != me => {
            return Err(ApiError::forbidden(format!(
                "agent {me} may list only its own tasks"
            )));
        }
        (Some(me), _) => Some(me.to_string()),
        (None, a) => a,
    };
    let since_ms = q.since.as_deref().map(parse_time).transpose()?;
    let before = q.cursor.as_deref().map(parse_cursor).transpose()?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::query("limit", "limit must be 1 to 500"));
    }
    // One more than asked tells whether a next page exists.
    let mut rows = state
        .engine
        .store()
        .list_tasks(TaskFilter {
            status,
            workflow: q.workflow,
            agent,
            since_ms,
            before,
            limit: limit + 1,
        })
        .await
        .map_err(ApiError::store)?;
    let next_cursor = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|r| format!("{}.{}", r.created_at_ms, r.id))
    } else {
        None
    };
    Ok(Json(TaskPage {
        tasks: rows.into_iter().map(Task::from).collect(),
        next_cursor,
    }))
}

/// `-?[0-9]{1,15}`: ms since the epoch as the API documents them.
fn parse_ms(s: &str) -> Option<i64> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_time(s: &str) -> Result<i64, ApiError> {
    if let Some(ms) = parse_ms(s) {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|e| {
            ApiError::query(
                "since",
                format!("since must be ms since the epoch or RFC 3339 (2026-11-22T10:00:00Z): {e}"),
            )
        })
}

fn parse_cursor(s: &str) -> Result<(i64, String), ApiError> {
    let bad = || ApiError::query("cursor", "not a cursor this API returned (next_cursor)");
    let (ms, id) = s.split_once('.').ok_or_else(bad)?;
    let ms = parse_ms(ms).ok_or_else(bad)?;
    if id.is_empty() {
        return Err(bad());
    }
    Ok((ms, id.to_string()))
}

/// One event of a history.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HistoryEvent {
    pub seq: i64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub recorded_at_ms: i64,
    pub actor: String,
    #[schema(value_type = Object)]
    pub payload: Value,
    pub prev_hash: String,
    pub hash: String,
}

/// One page of a verified history.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct History {
    pub task_id: String,
    pub events: Vec<HistoryEvent>,
    /// Pass as `after_seq` for the next page; null on the last page.
    #[serde(default)]
    pub next_after_seq: Option<i64>,
}

/// Which page of a history.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Events after this seq (default 0: from the start); a previous page's `next_after_seq`.
    pub after_seq: Option<i64>,
    /// Page size, 1 to 1000 (default 1000); a page also stops after about 1 MiB of payloads.
    pub limit: Option<u32>,
}

/// A task's history, one page at a time, its hash chain verified (each page
/// against the event before it; a client following the pages from the
/// start has the whole chain).
#[utoipa::path(get, path = "/v1/tasks/{id}/history", tag = "tasks",
    params(("id" = String, Path, description = "Task id"), HistoryQuery),
    responses((status = 200, body = History), (status = 400, body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody),
              (status = 500, description = "history_corrupt: the chain does not verify", body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn history(
    State(state): State<AppState>,
    identity: Identity,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Json<History>, ApiError> {
    visible_task(&state, &identity, &id).await?;
    let page = state
        .engine
        .history_page(
            &id,
            q.after_seq.unwrap_or(0),
            q.limit.unwrap_or(mandate_engine::runtime::MAX_HISTORY_PAGE),
        )
        .await?;
    Ok(Json(History {
        task_id: id,
        events: page
            .events
            .into_iter()
            .map(|e| {
                let (event_type, payload) = e.payload.to_parts();
                HistoryEvent {
                    seq: e.seq,
                    event_type: event_type.to_string(),
                    recorded_at_ms: e.recorded_at_ms,
                    actor: e.actor,
                    payload,
                    prev_hash: e.prev_hash,
                    hash: e.hash,
                }
            })
            .collect(),
        next_after_seq: page.next_after_seq,
    }))
}

/// A signal's payload.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalBody {
    #[serde(default)]
    #[schema(value_type = Object)]
    pub payload: Value,
}

/// Send a signal to a task.
#[utoipa::path(post, path = "/v1/tasks/{id}/signals/{name}", tag = "tasks",
    params(("id" = String, Path, description = "Task id"),
           ("name" = String, Path, pattern = "^[A-Za-z0-9_.:/-]{1,128}$", description = "Signal name")),
    request_body = SignalBody,
    responses((status = 202, body = Accepted), (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn signal(
    State(state): State<AppState>,
    identity: Identity,
    Path((id, name)): Path<(String, String)>,
    ApiJson(body): ApiJson<SignalBody>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    identity.require(&[Role::Agent, Role::Operator], "send signals")?;
    if name.starts_with("approval:") {
        return Err(ApiError::forbidden(
            "approval decisions go through POST /v1/approvals/{id}, as an approver",
        ));
    }
    visible_task(&state, &identity, &id).await?;
    let seq = state
        .engine
        .signal(&id, &name, body.payload, &identity.actor())
        .await?;
    Ok(accepted(id, seq))
}

fn accepted(task_id: String, seq: i64) -> (StatusCode, Json<Accepted>) {
    (StatusCode::ACCEPTED, Json(Accepted { task_id, seq }))
}

/// How to cancel.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    /// Compensate the completed steps first.
    #[serde(default)]
    pub rollback: bool,
    #[schema(max_length = 1000)]
    pub reason: Option<String>,
}

/// Why to pause.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PauseBody {
    #[schema(max_length = 1000)]
    pub reason: Option<String>,
}

fn check_reason(reason: &Option<String>) -> Result<(), ApiError> {
    if reason.as_ref().is_some_and(|r| r.chars().count() > 1_000) {
        return Err(ApiError::field(
            "reason",
            "reason is longer than 1000 characters",
        ));
    }
    Ok(())
}

/// Cancel a task, with or without rollback.
#[utoipa::path(post, path = "/v1/tasks/{id}/cancel", tag = "tasks",
    params(("id" = String, Path, description = "Task id")), request_body = CancelBody,
    responses((status = 202, body = Accepted), (status = 409, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn cancel(
    State(state): State<AppState>,
    identity: Identity,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<CancelBody>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    identity.require(&[Role::Agent, Role::Operator], "cancel tasks")?;
    check_reason(&body.reason)?;
    visible_task(&state, &identity, &id).await?;
    let seq = state
        .engine
        .cancel(&id, body.rollback, &identity.actor(), body.reason)
        .await?;
    Ok(accepted(id, seq))
}

/// Pause a task: attempts in flight finish, nothing new starts.
#[utoipa::path(post, path = "/v1/tasks/{id}/pause", tag = "tasks",
    params(("id" = String, Path, description = "Task id")), request_body = PauseBody,
    responses((status = 202, body = Accepted), (status = 409, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn pause(
    State(state): State<AppState>,
    identity: Identity,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PauseBody>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    identity.require(&[Role::Agent, Role::Operator], "pause tasks")?;
    check_reason(&body.reason)?;
    visible_task(&state, &identity, &id).await?;
    let seq = state
        .engine
        .pause(&id, &identity.actor(), body.reason)
        .await?;
    Ok(accepted(id, seq))
}

/// Resume a paused task.
#[utoipa::path(post, path = "/v1/tasks/{id}/resume", tag = "tasks",
    params(("id" = String, Path, description = "Task id")),
    responses((status = 202, body = Accepted), (status = 409, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn resume(
    State(state): State<AppState>,
    identity: Identity,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    identity.require(&[Role::Agent, Role::Operator], "resume tasks")?;
    visible_task(&state, &identity, &id).await?;
    let seq = state.engine.resume(&id, &identity.actor()).await?;
    Ok(accepted(id, seq))
}

/// Run now the attempts a `failed_retryable` task holds back for backoff.
#[utoipa::path(post, path = "/v1/tasks/{id}/retry", tag = "tasks",
    params(("id" = String, Path, description = "Task id")),
    responses((status = 202, body = Accepted), (status = 409, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn retry(
    State(state): State<AppState>,
    identity: Identity,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    identity.require(&[Role::Agent, Role::Operator], "retry tasks")?;
    visible_task(&state, &identity, &id).await?;
    let seq = state.engine.retry(&id, &identity.actor()).await?;
    Ok(accepted(id, seq))
}
