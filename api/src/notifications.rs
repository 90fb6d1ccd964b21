//! Answers to notifications (routing, issue 15): `POST
//! /v1/notifications/{id}/respond` as the token's identity, the signed
//! one-click links (`GET /v1/links/{token}`: the link is the credential,
//! bound to its recipient, single use), Slack's interactivity callback
//! (`POST /v1/slack/interactions`, verified with the app's signing secret
//! before anything is read), and the resolution of escalated tasks (`POST
//! /v1/tasks/{id}/resolve`). Every answer is recorded in the task's history
//! with the identity that gave it.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use mandate_routing::links::LinkError;
use mandate_routing::wire::{Answer, Answered, RespondError};
use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;

use crate::auth::{Identity, Role};
use crate::error::{ApiError, ApiJson};
use crate::state::AppState;

/// An answer to a notification.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RespondBody {
    /// acknowledge, pause_task, pause_agent, cancel_rollback,
    /// trigger_recovery, assign, approve, reject, mark_reviewed, helpful,
    /// not_helpful.
    pub action: String,
    /// With `assign`: the owner to hand it to.
    pub assign_to: Option<String>,
    #[schema(max_length = 4000)]
    pub comment: Option<String>,
}

/// What an answer recorded: `notification_id`, `task_id`, `action`,
/// `identity` (the token's name, the link's recipient, the Slack user's
/// person), `seq` (of the recorded `NotificationResponded`),
/// `escalations_stopped`, and `items`: one per item of a grouped
/// notification (`task_id`, `about_seq`, `seq`, `error` when that item's
/// action was refused), the first being the one above.
type Responded = Answered;

/// The 200 body of an answer (see [`Responded`]).
const RESPONDED: &str = "what the answer recorded: notification_id, task_id, action, identity, seq (of NotificationResponded), escalations_stopped, and items (per item of a grouped notification: task_id, about_seq, seq, error)";

fn refused(e: RespondError) -> ApiError {
    let message = e.to_string();
    match e {
        RespondError::NotFound(_) => ApiError::not_found(message),
        RespondError::NotYours { .. } => ApiError::forbidden(message),
        RespondError::Link(LinkError::AlreadyUsed) => ApiError::conflict(message),
        RespondError::Link(LinkError::Expired { .. }) => {
            ApiError::new(StatusCode::GONE, "link_expired", message)
        }
        RespondError::Link(_) => ApiError::forbidden(message),
        RespondError::Refused(_) => ApiError::unauthenticated(message),
        RespondError::Engine(e) => e.into(),
        RespondError::Outbox(e) => {
            tracing::error!(error = %e, "outbox failure");
            ApiError::internal("internal error")
        }
    }
}

fn routing(state: &AppState) -> Result<&crate::state::RoutingApi, ApiError> {
    state.routing.as_deref().ok_or_else(|| {
        // Not served here (a 4xx: the client asked this server for something
        // it does not offer; nothing is wrong with the server).
        ApiError::new(
            StatusCode::NOT_FOUND,
            "routing_off",
            "routing is not running in this server (mandate serve runs it)",
        )
    })
}

/// Answer a notification as the token's identity (its recipient; an
/// operator may answer any).
#[utoipa::path(post, path = "/v1/notifications/{id}/respond", tag = "notifications",
    params(("id" = String, Path, description = "The notification id (in every delivery)")),
    request_body = RespondBody,
    responses((status = 200, description = RESPONDED, body = Object), (status = 400, body = crate::error::ErrorBody),
              (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody),
              (status = 409, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn respond(
    State(state): State<AppState>,
    identity: Identity,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RespondBody>,
) -> Result<Json<Responded>, ApiError> {
    identity.require(&[Role::Approver, Role::Operator], "answer notifications")?;
    let r = routing(&state)?;
    let answered = r
        .responder
        .respond(
            &id,
            &identity.name,
            &format!("token:{}", identity.token_id),
            identity.role == Role::Operator,
            Answer {
                action: body.action,
                assign_to: body.assign_to,
                comment: body.comment,
            },
        )
        .await
        .map_err(refused)?;
    Ok(Json(answered))
}

/// Follow a one-click link: checks its signature, expiry, recipient and
/// single use, then answers as its recipient.
#[utoipa::path(get, path = "/v1/links/{token}", tag = "notifications",
    params(("token" = String, Path, description = "The signed link token")),
    responses((status = 200, description = RESPONDED, body = Object), (status = 403, body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody), (status = 409, description = "used before", body = crate::error::ErrorBody),
              (status = 410, description = "expired", body = crate::error::ErrorBody)))]
pub async fn link(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> Result<Json<Responded>, ApiError> {
    if token.len() > 2_048 {
        return Err(ApiError::forbidden(
            "the link token is longer than any link Mandate makes",
        ));
    }
    let r = routing(&state)?;
    let answered = r
        .responder
        .follow_link(&token, None)
        .await
        .map_err(refused)?;
    Ok(Json(answered))
}

/// Slack's interactivity callback (a button of a Mandate message).
#[utoipa::path(post, path = "/v1/slack/interactions", tag = "notifications",
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "payload=<JSON>"),
    responses((status = 200, description = RESPONDED, body = Object), (status = 401, description = "bad Slack signature", body = crate::error::ErrorBody),
              (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub async fn slack(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Responded>, ApiError> {
    let r = routing(&state)?;
    let Some(secret) = r.slack_signing_secret.as_deref() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "slack_off",
            "no Slack signing secret is configured (MANDATE_SLACK_SIGNING_SECRET)",
        ));
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let answered = r
        .responder
        .slack(
            secret,
            &header("x-slack-request-timestamp"),
            &header("x-slack-signature"),
            &body,
        )
        .await
        .map_err(refused)?;
    Ok(Json(answered))
}

/// What a person did about an escalated task.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveBody {
    #[schema(max_length = 4000)]
    pub note: String,
    #[serde(default)]
    pub recovery_done: bool,
}

/// Close an `escalated_to_human` task, as the token's identity.
#[utoipa::path(post, path = "/v1/tasks/{id}/resolve", tag = "tasks",
    params(("id" = String, Path, description = "Task id")),
    request_body = ResolveBody,
    responses((status = 200, description = "the recorded resolution: task_id, seq, resolved_by", body = Object), (status = 400, body = crate::error::ErrorBody),
              (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody),
              (status = 409, description = "not escalated, or resolved already", body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn resolve(
    State(state): State<AppState>,
    identity: Identity,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ResolveBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    identity.require(&[Role::Approver, Role::Operator], "resolve escalations")?;
    let seq = state
        .engine
        .resolve_escalation(
            &id,
            &identity.name,
            &format!("token:{}", identity.token_id),
            &body.note,
            body.recovery_done,
        )
        .await?;
    Ok(Json(
        json!({"task_id": id, "seq": seq, "resolved_by": identity.name}),
    ))
}

/// Events of the newest history a scrape reads for the intervention figures.
pub const METRICS_SCAN_EVENTS: i64 = 100_000;

/// The seeds' intervention figures in Prometheus text, from the newest
/// [`METRICS_SCAN_EVENTS`] recorded events (what `mandate tti` prints):
/// TTI P50/P95 per action (seconds) with its target, ownership coverage,
/// recovery-path coverage, relevance.
pub async fn intervention_metrics(engine: &mandate_engine::Engine) -> Result<String, ApiError> {
    use std::fmt::Write;
    let f = mandate_routing::wire::figures(engine, None, METRICS_SCAN_EVENTS)
        .await
        .map_err(ApiError::store)?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP mandate_tti_seconds Time to intervention: notification delivered to first answer, by action and quantile (recorded answers)."
    );
    let _ = writeln!(out, "# TYPE mandate_tti_seconds gauge");
    for t in &f.tti {
        for (q, ms) in [("0.5", t.p50_ms), ("0.95", t.p95_ms)] {
            let _ = writeln!(
                out,
                "mandate_tti_seconds{{action=\"{}\",quantile=\"{q}\"}} {}",
                t.action,
                ms as f64 / 1000.0
            );
        }
        if let Some(target) = t.target_p95_ms {
            let _ = writeln!(
                out,
                "mandate_tti_target_p95_seconds{{action=\"{}\"}} {}",
                t.action,
                target as f64 / 1000.0
            );
        }
        let _ = writeln!(
            out,
            "mandate_tti_answers{{action=\"{}\"}} {}",
            t.action, t.count
        );
    }
    for (name, help, v) in [
        (
            "mandate_ownership_coverage_ratio",
            "Routed steps whose owners were found (target > 0.9).",
            f.ownership_coverage,
        ),
        (
            "mandate_recovery_path_coverage_ratio",
            "Write steps with a compensation or recovery path (target > 0.8).",
            f.recovery_path_coverage,
        ),
        (
            "mandate_notification_relevance_ratio",
            "Notifications rated helpful among those rated (target > 0.7).",
            f.relevance,
        ),
    ] {
        if let Some(v) = v {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
    }
    Ok(out)
}

/// A tool's scope field in the catalog in force: routing names resources
/// `<field>:<value>` (`service:checkout`).
pub fn scope_field(
    governance: &std::sync::Arc<mandate_activities::Governance>,
) -> mandate_routing::wire::ScopeField {
    let g = governance.clone();
    std::sync::Arc::new(move |tool: &str| {
        g.current().catalog.tool(tool).and_then(|t| t.scope.clone())
    })
}
