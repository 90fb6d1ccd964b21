//! The kill switch (`/v1/halt`) and the plan dry run.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use mandate_engine::store::HaltRow;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::auth::{Identity, Role};
use crate::error::{ApiError, ApiJson};
use crate::query::ApiQuery;
use crate::state::AppState;

/// Who a token is.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    /// The identity: recorded as `<role>:<name>` (an approver's decisions as
    /// `approver:<name>`).
    pub name: String,
    /// agent, approver, operator or auditor.
    pub role: String,
}

/// The caller's identity, from its token.
#[utoipa::path(get, path = "/v1/whoami", tag = "identity",
    responses((status = 200, body = WhoAmI), (status = 401, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn whoami(identity: Identity) -> Json<WhoAmI> {
    Json(WhoAmI {
        name: identity.name,
        role: identity.role.as_str().to_string(),
    })
}

/// A halt as recorded.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Halt {
    pub id: String,
    /// The agent halted; null: everything.
    pub agent: Option<String>,
    pub reason: Option<String>,
    pub created_by: String,
    pub created_at_ms: i64,
    pub lifted_by: Option<String>,
    pub lifted_at_ms: Option<i64>,
}

impl From<HaltRow> for Halt {
    fn from(h: HaltRow) -> Self {
        Self {
            id: h.id,
            agent: h.agent,
            reason: h.reason,
            created_by: h.created_by,
            created_at_ms: h.created_at_ms,
            lifted_by: h.lifted_by,
            lifted_at_ms: h.lifted_at_ms,
        }
    }
}

/// What to halt.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HaltBody {
    /// Halt only this agent's tasks; absent: all tasks.
    #[schema(pattern = "^[A-Za-z0-9_.:/-]{1,128}$")]
    pub agent: Option<String>,
    #[schema(max_length = 1000)]
    pub reason: Option<String>,
}

/// Halt all work, or one agent's: running attempts finish, no new step
/// starts until the halt is lifted. Recorded with who and why.
#[utoipa::path(post, path = "/v1/halt", tag = "halt",
    request_body(content = HaltBody, description = "Optional: no body halts everything"),
    responses((status = 201, body = Halt), (status = 403, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn halt(
    State(state): State<AppState>,
    identity: Identity,
    ApiJson(body): ApiJson<HaltBody>,
) -> Result<(StatusCode, Json<Halt>), ApiError> {
    identity.require(&[Role::Operator], "halt work")?;
    let h = state
        .engine
        .halt(body.agent.as_deref(), &identity.actor(), body.reason)
        .await?;
    tracing::warn!(halt = %h.id, agent = ?h.agent, by = %h.created_by, "halt");
    Ok((StatusCode::CREATED, Json(h.into())))
}

/// Which halt to lift.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LiftQuery {
    /// Lift this agent's halt; absent: the global halt.
    pub agent: Option<String>,
}

/// What lifting did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LiftResult {
    pub lifted: Vec<Halt>,
    /// Tasks resumed because no halt holds them any more.
    pub resumed: Vec<String>,
}

/// Lift the halt of this scope and resume the tasks it paused.
#[utoipa::path(delete, path = "/v1/halt", tag = "halt", params(LiftQuery),
    responses((status = 200, body = LiftResult), (status = 404, description = "no active halt of this scope", body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn lift(
    State(state): State<AppState>,
    identity: Identity,
    ApiQuery(q): ApiQuery<LiftQuery>,
) -> Result<Json<LiftResult>, ApiError> {
    identity.require(&[Role::Operator], "lift halts")?;
    let lifted = state
        .engine
        .lift_halt(q.agent.as_deref(), &identity.actor())
        .await?;
    if lifted.halts.is_empty() {
        return Err(ApiError::not_found(match q.agent {
            Some(a) => format!("no active halt for agent {a}"),
            None => "no active global halt (an agent's halt is lifted with ?agent=NAME)".into(),
        }));
    }
    tracing::warn!(by = %identity.actor(), resumed = lifted.resumed.len(), "halt lifted");
    Ok(Json(LiftResult {
        lifted: lifted.halts.into_iter().map(Halt::from).collect(),
        resumed: lifted.resumed,
    }))
}

/// The halts in force.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Halts {
    pub halts: Vec<Halt>,
}

/// The active halts.
#[utoipa::path(get, path = "/v1/halt", tag = "halt",
    responses((status = 200, body = Halts)), security(("bearer" = [])))]
pub async fn halts(
    State(state): State<AppState>,
    identity: Identity,
) -> Result<Json<Halts>, ApiError> {
    identity.require(&[Role::Operator, Role::Auditor], "read halts")?;
    let halts = state.engine.refresh_halts().await?;
    Ok(Json(Halts {
        halts: halts.into_iter().map(Halt::from).collect(),
    }))
}

/// Dry-run a plan: per step the decision, the rules behind it, the owners and
/// the rollback. Runs nothing.
#[utoipa::path(post, path = "/v1/plans/dry-run", tag = "plans",
    request_body(content = Object, description = "A plan document (SPEC §5)"),
    responses((status = 200, description = "The dry-run report", body = Object),
              (status = 400, description = "invalid_plan, naming the step and field", body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn dry_run(
    State(state): State<AppState>,
    identity: Identity,
    ApiJson(plan): ApiJson<Value>,
) -> Result<Json<Value>, ApiError> {
    identity.require(
        &[Role::Agent, Role::Approver, Role::Operator],
        "dry-run plans",
    )?;
    state
        .engine
        .limits()
        .check_payload(&plan)
        .map_err(|m| ApiError::field("plan", m))?;
    let now = state.engine.now_ms();
    mandate_workflows::plan::dry_run(&plan, &state.governance, now)
        .map(|mut report| {
            if let Some(r) = &state.routing {
                let g = state.governance.clone();
                let field: mandate_routing::wire::ScopeField =
                    std::sync::Arc::new(move |tool: &str| {
                        g.current().catalog.tool(tool).and_then(|t| t.scope.clone())
                    });
                mandate_routing::wire::route_dry_run(
                    &mut report,
                    &r.responder.config.get(),
                    Some(&field),
                    now,
                );
            }
            Json(report)
        })
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_plan",
                format!("plan refused: {e}"),
            )
        })
}
