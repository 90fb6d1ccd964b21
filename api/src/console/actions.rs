//! The console's actions (POST forms). Each takes an [`Act`] (signed in,
//! same origin, the session's CSRF token), checks the role as the API does,
//! calls the engine as the signed-in identity, and redirects to the page to
//! look at (303), or shows why it was refused.

use std::sync::Arc;

use askama::Template;
use askama_web::WebTemplate;
use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Redirect, Response};
use mandate_engine::core::approvals::parse_approval_id;
use mandate_engine::core::gateway::EditVerdict;
use mandate_engine::runtime::{ApprovalDecision, ApprovalTarget, PreapprovalGrant};
use serde_json::Value;

use super::ConsoleError;
use super::pages::{Me, SigninPage};
use super::session::{self, Act, Sessions};
use super::view::printable;
use crate::auth::{Role, hash_secret, identify};
use crate::state::AppState;

/// The longest reason or comment a form may carry.
const MAX_TEXT: usize = 1000;

fn bad(message: impl Into<String>) -> ConsoleError {
    ConsoleError::new(StatusCode::BAD_REQUEST, message)
}

fn text(act: &Act, name: &str) -> Result<Option<String>, ConsoleError> {
    match act.field(name) {
        Some(t) if t.chars().count() > MAX_TEXT => Err(bad(format!(
            "{name} is longer than {MAX_TEXT} characters; shorten it"
        ))),
        t => Ok(t),
    }
}

/// Sign in with an API token: opens a session (the token is not kept, only its hash).
pub async fn signin(
    State(state): State<AppState>,
    Extension(sessions): Extension<Arc<Sessions>>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    session::check_origin(&headers)?;
    let token = form_urlencoded::parse(&body)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let hash = hash_secret(&token);
    match identify(&state, &hash).await {
        Ok(_) => {
            let id = sessions.open(hash);
            Ok((
                [(
                    header::SET_COOKIE,
                    session::cookie(Some(&id), &uri, &headers),
                )],
                Redirect::to("/"),
            )
                .into_response())
        }
        Err(e) if e.parts().status == StatusCode::UNAUTHORIZED => Ok((
            StatusCode::UNAUTHORIZED,
            SigninPage {
                message: Some(format!(
                    "{}; paste a token `mandate token create` made",
                    e.parts().message
                )),
            },
        )
            .into_response()),
        Err(e) => Err(e.into()),
    }
}

/// Sign out: the session ends on the server and the cookie is cleared.
pub async fn signout(
    Extension(sessions): Extension<Arc<Sessions>>,
    headers: HeaderMap,
    uri: Uri,
    act: Act,
) -> Response {
    sessions.close(&act.viewer.session);
    (
        [(header::SET_COOKIE, session::cookie(None, &uri, &headers))],
        Redirect::to("/signin"),
    )
        .into_response()
}

/// Pause, resume, cancel (with or without rollback) or retry a task.
pub async fn task_action(
    State(state): State<AppState>,
    Path((id, action)): Path<(String, String)>,
    act: Act,
) -> Result<Redirect, ConsoleError> {
    let who = &act.viewer.identity;
    who.require(&[Role::Agent, Role::Operator], &format!("{action} tasks"))?;
    crate::tasks::visible_task(&state, who, &id).await?;
    let reason = text(&act, "reason")?;
    let e = &state.engine;
    match action.as_str() {
        "pause" => e.pause(&id, &who.actor(), reason).await?,
        "resume" => e.resume(&id, &who.actor()).await?,
        "retry" => e.retry(&id, &who.actor()).await?,
        "cancel" => {
            let rollback = act.field("rollback").as_deref() == Some("yes");
            e.cancel(&id, rollback, &who.actor(), reason).await?
        }
        other => {
            return Err(ConsoleError::new(
                StatusCode::NOT_FOUND,
                format!("no action {other:?}; use pause, resume, cancel or retry"),
            ));
        }
    };
    Ok(Redirect::to(&format!("/tasks/{id}")))
}

/// The form's `edit`: a JSON object of the input fields to change.
fn parse_edit(act: &Act) -> Result<Option<Value>, ConsoleError> {
    let Some(e) = act.field("edit") else {
        return Ok(None);
    };
    let v: Value = serde_json::from_str(&e).map_err(|err| {
        bad(format!(
            "the edit must be a JSON object of input fields: {err}"
        ))
    })?;
    if !v.is_object() {
        return Err(bad(
            "the edit must be a JSON object of input fields, e.g. {\"amount_cents\": 4000}",
        ));
    }
    Ok(Some(v))
}

/// An approval id's task and request, or why it is not one.
fn approval_id(id: &str) -> Result<(&str, &str), ConsoleError> {
    parse_approval_id(id).ok_or_else(|| {
        bad(format!(
            "{id:?} is not an approval id (<task id>:<request seq>)"
        ))
    })
}

#[derive(Template, WebTemplate)]
#[template(path = "console/edit_preview.html")]
pub struct EditPreviewPage {
    me: Me,
    id: String,
    task_id: String,
    subject: String,
    tool: String,
    /// The edit as typed (sent again with the decision).
    edit: String,
    base: String,
    input: String,
    changed: bool,
    path: String,
    rules: Vec<(String, String)>,
    approvers: Option<(String, u32)>,
    preapproval: Option<String>,
    /// `proceeds`, `superseded` or `denied`.
    verdict: &'static str,
    consequence: String,
    back: String,
}

/// Re-checks an approver's edit and shows what it would do — the gateway's
/// decision for the edited input and its consequence — before it is
/// submitted. Records nothing.
pub async fn preview_edit(
    State(state): State<AppState>,
    Path(id): Path<String>,
    act: Act,
) -> Result<EditPreviewPage, ConsoleError> {
    let who = &act.viewer.identity;
    who.require(&[Role::Approver], "decide approvals")?;
    let (task_id, which) = approval_id(&id)?;
    let edit = parse_edit(&act)?.ok_or_else(|| bad("an edit needs the input fields to change"))?;
    crate::tasks::visible_task(&state, who, task_id).await?;
    let p = state
        .engine
        .preview_approval_edit(task_id, ApprovalTarget::parse(which), &who.name, &edit)
        .await?;
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default();
    let d = &p.decision;
    let (verdict, consequence) = match &p.verdict {
        EditVerdict::Denied => (
            "denied",
            format!(
                "Policy denies the edited step: approving with this edit closes the request and the step does not run ({}).",
                d.explain()
            ),
        ),
        EditVerdict::Superseded(req) => (
            "superseded",
            format!(
                "The edited step needs more approval: once this request has its quorum, a new request goes to {} (quorum {}) and the step waits for it.",
                req.approvers.join(", "),
                req.quorum
            ),
        ),
        EditVerdict::Proceeds => (
            "proceeds",
            "The step runs with the edited input once this request has its quorum.".to_string(),
        ),
    };
    Ok(EditPreviewPage {
        me: Me::from(&act.viewer),
        id: id.clone(),
        task_id: task_id.to_string(),
        subject: printable(&p.subject),
        tool: p.tool.clone(),
        edit: serde_json::to_string(&edit).unwrap_or_default(),
        base: pretty(&p.base),
        input: pretty(&p.input),
        changed: p.changed,
        path: d.path.to_string(),
        rules: d
            .decided_by
            .iter()
            .map(|r| (r.id.clone(), printable(&r.message)))
            .collect(),
        approvers: d
            .approval
            .as_ref()
            .map(|a| (a.approvers.join(", "), a.quorum)),
        preapproval: d
            .preapproval
            .as_ref()
            .map(|u| format!("{} (granted by {})", u.id, u.granted_by)),
        verdict,
        consequence,
        back: act.field("back").unwrap_or_default(),
    })
}

/// Approve, reject (with feedback) or edit (approve with changed input) as
/// the signed-in approver.
pub async fn decide(
    State(state): State<AppState>,
    Path(id): Path<String>,
    act: Act,
) -> Result<Redirect, ConsoleError> {
    let who = &act.viewer.identity;
    who.require(&[Role::Approver], "decide approvals")?;
    let (task_id, which) = approval_id(&id)?;
    let edit = parse_edit(&act)?;
    let approved = match (act.field("decision").as_deref(), &edit) {
        (Some("approve"), None) => true,
        (Some("reject"), None) => false,
        (Some("edit"), Some(_)) => true,
        (Some("edit"), None) => return Err(bad("an edit needs the input fields to change")),
        (Some("approve" | "reject"), Some(_)) => {
            return Err(bad("leave the edit empty to approve or reject as asked"));
        }
        _ => return Err(bad("decision must be approve, reject or edit")),
    };
    crate::tasks::visible_task(&state, who, task_id).await?;
    state
        .engine
        .decide_approval(
            task_id,
            ApprovalTarget::parse(which),
            &who.name,
            ApprovalDecision {
                approved,
                comment: text(&act, "comment")?,
                edit,
                via: Some(format!("console:{}", who.token_id)),
            },
        )
        .await?;
    let back = match act.field("back").as_deref() {
        Some("approvals") => "/approvals".to_string(),
        _ => format!("/tasks/{task_id}"),
    };
    Ok(Redirect::to(&back))
}

/// Grant a pre-approval as the signed-in identity (which must own the tool).
pub async fn grant(State(state): State<AppState>, act: Act) -> Result<Redirect, ConsoleError> {
    let who = &act.viewer.identity;
    who.require(&[Role::Approver, Role::Operator], "grant pre-approvals")?;
    let minutes: i64 = act
        .field("minutes")
        .ok_or_else(|| bad("minutes: how long the pre-approval lasts"))?
        .parse()
        .map_err(|_| bad("minutes must be a whole number"))?;
    state
        .engine
        .grant_preapproval(
            PreapprovalGrant {
                tool: act
                    .field("tool")
                    .ok_or_else(|| bad("tool: the catalog tool"))?,
                agent: act
                    .field("agent")
                    .ok_or_else(|| bad("agent: the catalog agent"))?,
                scope: act.field("scope"),
                duration_ms: minutes.saturating_mul(60_000),
                reason: text(&act, "reason")?,
            },
            &who.name,
        )
        .await?;
    Ok(Redirect::to("/approvals"))
}

/// Revoke a pre-approval.
pub async fn revoke(
    State(state): State<AppState>,
    Path(id): Path<String>,
    act: Act,
) -> Result<Redirect, ConsoleError> {
    let who = &act.viewer.identity;
    who.require(&[Role::Approver, Role::Operator], "revoke pre-approvals")?;
    state.engine.revoke_preapproval(&id, &who.name).await?;
    Ok(Redirect::to("/approvals"))
}

#[derive(Template, WebTemplate)]
#[template(path = "console/dry_run.html")]
pub struct DryRunPage {
    me: Me,
    plan: String,
    report: Result<String, String>,
}

/// A plan's dry run: per step the decision, rules, owners and rollback.
pub async fn dry_run(State(state): State<AppState>, act: Act) -> Result<DryRunPage, ConsoleError> {
    act.viewer.identity.require(
        &[Role::Agent, Role::Approver, Role::Operator],
        "dry-run plans",
    )?;
    let plan = act.field("plan").unwrap_or_default();
    let report = serde_json::from_str::<Value>(&plan)
        .map_err(|e| format!("the plan is not JSON: {e}"))
        .and_then(|p| {
            state
                .engine
                .limits()
                .check_payload(&p)
                .and_then(|()| {
                    mandate_workflows::plan::dry_run(&p, &state.governance, state.engine.now_ms())
                })
                .map_err(|e| format!("plan refused: {e}"))
        })
        .map(|r| serde_json::to_string_pretty(&r).unwrap_or_default());
    Ok(DryRunPage {
        me: Me::from(&act.viewer),
        plan,
        report,
    })
}

#[derive(Template, WebTemplate)]
#[template(path = "console/confirm.html")]
pub struct ConfirmPage {
    me: Me,
    title: String,
    text: String,
    action: &'static str,
    fields: Vec<(&'static str, String)>,
    /// Tasks the action concerns (listed, linked).
    tasks: Vec<String>,
}

/// The halt's scope as people read it.
fn scope(agent: &Option<String>) -> String {
    match agent {
        Some(a) => format!("agent {a}"),
        None => "every agent and task".into(),
    }
}

/// Halt everything or one agent, after a confirmation step.
pub async fn halt(State(state): State<AppState>, act: Act) -> Result<Response, ConsoleError> {
    let who = &act.viewer.identity;
    who.require(&[Role::Operator], "halt work")?;
    let agent = act.field("agent");
    let reason = text(&act, "reason")?;
    if act.field("confirm").as_deref() != Some("yes") {
        return Ok(ConfirmPage {
            me: Me::from(&act.viewer),
            title: format!("Halt {}?", scope(&agent)),
            text: format!(
                "Running attempts finish; no new step of {} starts until the halt is lifted. Recorded as {}.",
                scope(&agent),
                who.actor()
            ),
            action: "/halt",
            fields: [("agent", agent), ("reason", reason)]
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k, v)))
                .collect(),
            tasks: Vec::new(),
        }
        .into_response());
    }
    let h = state
        .engine
        .halt(agent.as_deref(), &who.actor(), reason)
        .await?;
    tracing::warn!(halt = %h.id, agent = ?h.agent, by = %h.created_by, "halt (console)");
    Ok(Redirect::to("/governance").into_response())
}

/// Lift a halt, after a confirmation step.
pub async fn lift(State(state): State<AppState>, act: Act) -> Result<Response, ConsoleError> {
    let who = &act.viewer.identity;
    who.require(&[Role::Operator], "lift halts")?;
    let agent = act.field("agent");
    if act.field("confirm").as_deref() != Some("yes") {
        let (lines, _) = super::pages::halt_lines(&state).await?;
        let mine: Vec<_> = lines
            .into_iter()
            .filter(|h| h.agent == agent.clone().unwrap_or_default())
            .collect();
        let held: usize = mine.iter().map(|h| h.paused.len() + h.paused_more).sum();
        let tasks: Vec<String> = mine
            .into_iter()
            .flat_map(|h| h.paused.into_iter().map(|(id, _)| id))
            .collect();
        return Ok(ConfirmPage {
            me: Me::from(&act.viewer),
            title: format!("Lift the halt of {}?", scope(&agent)),
            text: match held {
                0 => "It holds no paused task now; new work may start again.".into(),
                n => format!("The {n} tasks it paused resume where they were:"),
            },
            action: "/halt/lift",
            fields: agent.into_iter().map(|a| ("agent", a)).collect(),
            tasks,
        }
        .into_response());
    }
    let lifted = state
        .engine
        .lift_halt(agent.as_deref(), &who.actor())
        .await?;
    if lifted.halts.is_empty() {
        return Err(ConsoleError::new(
            StatusCode::NOT_FOUND,
            format!("no active halt of {}", scope(&agent)),
        ));
    }
    tracing::warn!(by = %who.actor(), resumed = lifted.resumed.len(), "halt lifted (console)");
    Ok(Redirect::to("/governance").into_response())
}
