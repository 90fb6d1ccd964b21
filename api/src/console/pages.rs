//! The console's pages (GET): inbox, task, approvals, governance.

use std::collections::HashMap;

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use mandate_engine::audit::{AuditOptions, audit_task};
use mandate_engine::core::approvals::InboxEntry;
use mandate_engine::store::{TaskFilter, TaskRow};
use mandate_engine::{Event, TaskStatus};

use super::ConsoleError;
use super::session::Viewer;
use super::view::{self, Dag, Row, printable};
use crate::auth::Role;
use crate::state::AppState;

/// Tasks per inbox page.
pub const PAGE_SIZE: u32 = 50;
/// The statuses the inbox offers as filters, in this order.
const FILTERS: [TaskStatus; 8] = [
    TaskStatus::NeedsApproval,
    TaskStatus::EscalatedToHuman,
    TaskStatus::Running,
    TaskStatus::FailedRetryable,
    TaskStatus::FailedTerminal,
    TaskStatus::Paused,
    TaskStatus::Completed,
    TaskStatus::Cancelled,
];

/// Who is looking, for the layout.
pub struct Me {
    pub name: String,
    pub role: String,
    pub csrf: String,
    pub can_act: bool,
    pub can_decide: bool,
    pub can_operate: bool,
}

impl From<&Viewer> for Me {
    fn from(v: &Viewer) -> Self {
        Me {
            name: v.identity.name.clone(),
            role: v.identity.role.to_string(),
            csrf: v.csrf.clone(),
            can_act: v.has(&[Role::Agent, Role::Operator]),
            can_decide: v.has(&[Role::Approver]),
            can_operate: v.has(&[Role::Operator]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_time;

    #[test]
    fn inbox_times_read_as_typed_and_until_is_inclusive() {
        let t = |s: &str, until: bool| parse_time("since", s, until).unwrap();
        let minute = t("2026-11-30T12:05", false);
        assert_eq!(minute, t("2026-11-30T12:05:00Z", false));
        assert_eq!(t("2026-11-30T12:05", true), minute + 59_999);
        assert_eq!(t("2026-11-30 12:05:07", true), minute + 7_999);
        assert_eq!(t("2026-11-30 12:05:07.123", true), minute + 7_123);
        assert_eq!(t("2026-11-30 12:05:07.123", false), minute + 7_123);
        assert_eq!(t("2026-11-30", true) - t("2026-11-30", false), 86_399_999);
        let e = parse_time("until", "yesterday", false).unwrap_err();
        assert!(
            e.message.contains("until: \"yesterday\" is not a time"),
            "{e:?}"
        );
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "console/signin.html")]
pub struct SigninPage {
    pub message: Option<String>,
}

pub async fn signin_page() -> SigninPage {
    SigninPage { message: None }
}

/// A task as the inbox lists it.
pub struct TaskLine {
    pub id: String,
    pub workflow: String,
    pub status: String,
    pub agent: String,
    pub created: String,
    pub updated: String,
    pub blocked: Option<String>,
}

impl From<&TaskRow> for TaskLine {
    fn from(r: &TaskRow) -> Self {
        TaskLine {
            id: r.id.clone(),
            workflow: r.workflow.clone(),
            status: r.status.as_str().to_string(),
            agent: r.agent.clone().unwrap_or_default(),
            created: view::time(r.created_at_ms),
            updated: view::time(r.updated_at_ms),
            blocked: r.blocked_reason.as_deref().map(printable),
        }
    }
}

pub struct Tab {
    pub label: String,
    pub href: String,
    /// `None` for an agent: the counts are of every agent's tasks.
    pub count: Option<i64>,
    pub active: bool,
}

#[derive(Template, WebTemplate)]
#[template(path = "console/inbox.html")]
pub struct InboxPage {
    pub me: Me,
    pub tabs: Vec<Tab>,
    pub agent: String,
    pub workflow: String,
    pub status: String,
    pub since: String,
    pub until: String,
    pub rows: InboxRows,
}

/// The inbox's rows alone, for htmx to swap in.
#[derive(Template, WebTemplate)]
#[template(path = "console/inbox_fragment.html")]
pub struct InboxFragment {
    pub rows: InboxRows,
}

pub struct InboxRows {
    pub tasks: Vec<TaskLine>,
    pub next: Option<String>,
    /// Where the first page polls for updates (`None` past the first page).
    pub live: Option<String>,
}

fn query_string(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if !v.is_empty() {
            s.append_pair(k, v);
        }
    }
    s.finish()
}

/// A time typed into the inbox's filter, as UTC milliseconds: a
/// `datetime-local` value (`2026-11-30T12:05`, seconds optional), the
/// console's own format (`2026-11-30 12:05:07.123`), a date alone, or RFC
/// 3339. `until` is inclusive: a time given to the minute (or a date) reaches
/// the end of that minute (day).
pub fn parse_time(field: &str, s: &str, until: bool) -> Result<i64, ConsoleError> {
    use chrono::{NaiveDate, NaiveDateTime};
    let s = s.trim();
    let bad = || {
        ConsoleError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "{field}: {s:?} is not a time; use 2026-11-30T12:05 or 2026-11-30 12:05:07.123 (UTC), or a date"
            ),
        )
    };
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    // (format, what an inclusive end adds to its start: the rest of the
    // minute, or of the second, it names)
    let formats: [(&str, i64); 6] = [
        ("%Y-%m-%dT%H:%M", 59_999),
        ("%Y-%m-%dT%H:%M:%S", 999),
        ("%Y-%m-%dT%H:%M:%S%.f", 0),
        ("%Y-%m-%d %H:%M", 59_999),
        ("%Y-%m-%d %H:%M:%S", 999),
        ("%Y-%m-%d %H:%M:%S%.f", 0),
    ];
    for (f, end) in formats {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
            let ms = t.and_utc().timestamp_millis();
            return Ok(if until { ms + end } else { ms });
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        let ms = d
            .and_hms_opt(0, 0, 0)
            .ok_or_else(bad)?
            .and_utc()
            .timestamp_millis();
        return Ok(if until { ms + 86_399_999 } else { ms });
    }
    Err(bad())
}

/// The inbox's filters as the query string gives them.
struct InboxQuery {
    status: String,
    agent: String,
    workflow: String,
    since: String,
    until: String,
    cursor: String,
}

impl InboxQuery {
    fn from(q: &HashMap<String, String>) -> Self {
        let get = |k: &str| q.get(k).map(|v| v.trim().to_string()).unwrap_or_default();
        InboxQuery {
            status: get("status"),
            agent: get("agent"),
            workflow: get("workflow"),
            since: get("since"),
            until: get("until"),
            cursor: get("cursor"),
        }
    }

    /// The query string of these filters with `status` (and a cursor).
    fn href(&self, status: &str, cursor: &str) -> String {
        query_string(&[
            ("status", status),
            ("agent", &self.agent),
            ("workflow", &self.workflow),
            ("since", &self.since),
            ("until", &self.until),
            ("cursor", cursor),
        ])
    }
}

async fn inbox_rows_for(
    state: &AppState,
    viewer: &Viewer,
    q: &HashMap<String, String>,
) -> Result<InboxRows, ConsoleError> {
    let q = InboxQuery::from(q);
    let status_filter = match q.status.as_str() {
        "" => None,
        s => Some(TaskStatus::parse(s).ok_or_else(|| {
            ConsoleError::new(StatusCode::BAD_REQUEST, format!("unknown status {s:?}"))
        })?),
    };
    let agent_filter = match viewer.identity.own_agent() {
        Some(me) => Some(me.to_string()),
        None => (!q.agent.is_empty()).then(|| q.agent.clone()),
    };
    let since_ms = match q.since.as_str() {
        "" => None,
        s => Some(parse_time("since", s, false)?),
    };
    // `until` is the first page's keyset bound: tasks created at or before
    // it are those before (until + 1 ms, ""), in the same index range.
    let until = match q.until.as_str() {
        "" => None,
        s => Some((
            parse_time("until", s, true)?.saturating_add(1),
            String::new(),
        )),
    };
    let cursor = match q.cursor.split_once('.') {
        Some((ms, id)) if !id.is_empty() => Some((
            ms.parse::<i64>().map_err(|_| {
                ConsoleError::new(StatusCode::BAD_REQUEST, "not a cursor this page made")
            })?,
            id.to_string(),
        )),
        _ if q.cursor.is_empty() => None,
        _ => {
            return Err(ConsoleError::new(
                StatusCode::BAD_REQUEST,
                "not a cursor this page made",
            ));
        }
    };
    let first_page = cursor.is_none();
    let before = match (cursor, until) {
        (Some(c), Some(u)) => Some(c.min(u)),
        (c, u) => c.or(u),
    };
    let mut rows = state
        .engine
        .store()
        .list_tasks(TaskFilter {
            status: status_filter,
            workflow: (!q.workflow.is_empty()).then(|| q.workflow.clone()),
            agent: agent_filter,
            since_ms,
            before,
            limit: PAGE_SIZE + 1,
        })
        .await
        .map_err(crate::error::ApiError::store)?;
    let next = if rows.len() > PAGE_SIZE as usize {
        rows.truncate(PAGE_SIZE as usize);
        rows.last().map(|r| {
            let c = format!("{}.{}", r.created_at_ms, r.id);
            format!("/?{}", q.href(&q.status, &c))
        })
    } else {
        None
    };
    Ok(InboxRows {
        tasks: rows.iter().map(TaskLine::from).collect(),
        next,
        live: first_page.then(|| format!("/inbox/rows?{}", q.href(&q.status, ""))),
    })
}

/// `/`: tasks by status, agent, workflow and creation time, newest first.
pub async fn inbox(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(q): Query<HashMap<String, String>>,
) -> Result<InboxPage, ConsoleError> {
    let rows = inbox_rows_for(&state, &viewer, &q).await?;
    let q = InboxQuery::from(&q);
    let counts: Option<HashMap<TaskStatus, i64>> = match viewer.identity.own_agent() {
        Some(_) => None,
        None => Some(
            state
                .engine
                .store()
                .count_by_status()
                .await
                .map_err(crate::error::ApiError::store)?
                .into_iter()
                .collect(),
        ),
    };
    let tab = |label: &str, s: &str, count: Option<i64>| Tab {
        label: label.to_string(),
        href: format!("/?{}", q.href(s, "")),
        count,
        active: q.status == s,
    };
    let mut tabs = vec![tab("all", "", counts.as_ref().map(|c| c.values().sum()))];
    for s in FILTERS {
        tabs.push(tab(
            &s.as_str().replace('_', " "),
            s.as_str(),
            counts.as_ref().map(|c| c.get(&s).copied().unwrap_or(0)),
        ));
    }
    Ok(InboxPage {
        me: Me::from(&viewer),
        tabs,
        agent: q.agent,
        workflow: q.workflow,
        status: q.status,
        since: q.since,
        until: q.until,
        rows,
    })
}

/// The inbox's rows alone (htmx polls them).
pub async fn inbox_rows(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(q): Query<HashMap<String, String>>,
) -> Result<InboxFragment, ConsoleError> {
    Ok(InboxFragment {
        rows: inbox_rows_for(&state, &viewer, &q).await?,
    })
}

/// An approval request as the panel shows it.
pub struct Card {
    pub id: String,
    pub task_id: String,
    pub step: String,
    pub tool: String,
    pub summary: String,
    pub risk: String,
    pub path: String,
    pub rules: Vec<(String, String)>,
    pub owners: String,
    pub evidence: String,
    pub input: String,
    pub rollback_plan: Vec<String>,
    pub approvers: String,
    pub quorum: u32,
    pub decisions: Vec<String>,
    pub escalated_to: Option<String>,
    pub requested: String,
    pub deadline: String,
}

impl From<InboxEntry> for Card {
    fn from(e: InboxEntry) -> Self {
        Card {
            id: e.id,
            task_id: e.task_id,
            step: printable(&e.step),
            tool: e.tool.unwrap_or_default(),
            summary: printable(&e.summary),
            risk: e.risk,
            path: e.decision.to_string(),
            rules: e
                .rules
                .into_iter()
                .map(|r| (r.id, printable(&r.message)))
                .collect(),
            owners: printable(&e.owners.join(", ")),
            evidence: serde_json::to_string_pretty(&e.evidence).unwrap_or_default(),
            input: e
                .input
                .map(|i| serde_json::to_string_pretty(&i).unwrap_or_default())
                .unwrap_or_default(),
            rollback_plan: e.rollback_plan.iter().map(|r| printable(r)).collect(),
            approvers: e.approvers.join(", "),
            quorum: e.quorum,
            decisions: e
                .decisions
                .iter()
                .map(|d| {
                    serde_json::to_value(d)
                        .map(|v| v.to_string())
                        .unwrap_or_default()
                })
                .collect(),
            escalated_to: e.escalated_to,
            requested: view::time(e.requested_at_ms),
            deadline: view::time(e.deadline_at_ms),
        }
    }
}

/// A task's page data (the page and its live part share it).
pub struct TaskData {
    pub task: TaskLine,
    /// The seq the task's row had when the page read it (the live part
    /// asks to hear of anything after it).
    pub last_seq: i64,
    pub is_final: bool,
    pub paused: bool,
    pub on_behalf_of: String,
    pub chain: Result<String, String>,
    pub rows: Vec<Row>,
    pub dag: Option<Dag>,
    pub input: String,
    pub cards: Vec<Card>,
}

#[derive(Template, WebTemplate)]
#[template(path = "console/task.html")]
pub struct TaskPage {
    pub me: Me,
    pub t: TaskData,
}

#[derive(Template, WebTemplate)]
#[template(path = "console/task_live.html")]
pub struct TaskLive {
    pub t: TaskData,
}

async fn task_data(state: &AppState, viewer: &Viewer, id: &str) -> Result<TaskData, ConsoleError> {
    let row = crate::tasks::visible_task(state, &viewer.identity, id).await?;
    let (chain, history): (Result<String, String>, Vec<Event>) =
        match state.engine.history(id).await {
            Ok(h) => (
                Ok(format!(
                    "hash chain verified: {} events, head {}",
                    h.len(),
                    h.last().map(|e| e.hash.as_str()).unwrap_or("-")
                )),
                h,
            ),
            Err(e) => (
                Err(crate::error::ApiError::from(e).parts().message.clone()),
                Vec::new(),
            ),
        };
    let tstate = mandate_engine::TaskState::fold(&history);
    let (input, on_behalf_of) = match history.first().map(|e| &e.payload) {
        Some(mandate_engine::EventPayload::TaskSubmitted {
            input,
            on_behalf_of,
            ..
        }) => (input.clone(), on_behalf_of.clone().unwrap_or_default()),
        _ => (serde_json::Value::Null, String::new()),
    };
    // A paused task may still wait for an approval: ask whenever it is not over.
    let cards = if !row.status.is_final() && chain.is_ok() {
        let who = (viewer.identity.role == Role::Approver).then_some(viewer.identity.name.as_str());
        state
            .engine
            .approval_inbox(Some(id), who)
            .await?
            .0
            .into_iter()
            .map(Card::from)
            .collect()
    } else {
        Vec::new()
    };
    Ok(TaskData {
        last_seq: row.last_seq,
        is_final: row.status.is_final(),
        paused: tstate.paused,
        task: TaskLine::from(&row),
        on_behalf_of,
        chain,
        dag: view::dag(&row.workflow, &input, &history),
        rows: view::rows(&history),
        input: serde_json::to_string_pretty(&input).unwrap_or_default(),
        cards,
    })
}

/// `/tasks/{id}`: the verified timeline, the DAG, approvals and actions.
pub async fn task(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Result<TaskPage, ConsoleError> {
    Ok(TaskPage {
        me: Me::from(&viewer),
        t: task_data(&state, &viewer, &id).await?,
    })
}

/// The live part of a task page (htmx polls it until the task is final).
pub async fn task_live(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Result<TaskLive, ConsoleError> {
    Ok(TaskLive {
        t: task_data(&state, &viewer, &id).await?,
    })
}

#[derive(Template, WebTemplate)]
#[template(path = "console/replay.html")]
pub struct ReplayPage {
    pub fragment: bool,
    pub task_id: String,
    pub verdict: String,
    pub problem: Option<String>,
    pub events: usize,
    pub chain: String,
    pub projection: String,
    pub determinism: String,
}

/// `replay`'s verdict on a task: chain, stored rows, and the workflow re-run.
pub async fn replay(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<ReplayPage, ConsoleError> {
    crate::tasks::visible_task(&state, &viewer.identity, &id).await?;
    let audit = audit_task(
        state.engine.store().as_ref(),
        state.engine.workflows(),
        &id,
        &AuditOptions::default(),
    )
    .await
    .map_err(|e| ConsoleError::internal(format!("could not read the task to replay it: {e}")))?;
    let show =
        |v: serde_json::Result<serde_json::Value>| v.map(|v| v.to_string()).unwrap_or_default();
    Ok(ReplayPage {
        fragment: headers.contains_key("hx-request"),
        task_id: id,
        verdict: audit.verdict.to_string(),
        problem: audit.problem(),
        events: audit.event_count,
        chain: show(serde_json::to_value(&audit.chain)),
        projection: show(serde_json::to_value(&audit.projection)),
        determinism: show(serde_json::to_value(&audit.determinism)),
    })
}

/// A pre-approval as listed.
pub struct PreLine {
    pub id: String,
    pub tool: String,
    pub agent: String,
    pub scope: String,
    pub granted_by: String,
    pub expires: String,
    pub reason: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "console/approvals.html")]
pub struct ApprovalsPage {
    pub me: Me,
    pub cards: Vec<Card>,
    pub truncated: bool,
    pub preapprovals: Vec<PreLine>,
}

/// `/approvals`: the requests this viewer may decide (all of them for
/// operators and auditors), and the pre-approvals in force.
pub async fn approvals(
    State(state): State<AppState>,
    viewer: Viewer,
) -> Result<Response, ConsoleError> {
    viewer.identity.require(
        &[Role::Approver, Role::Operator, Role::Auditor],
        "read the approval inbox",
    )?;
    let who = (viewer.identity.role == Role::Approver).then_some(viewer.identity.name.as_str());
    let (entries, truncated) = state.engine.approval_inbox(None, who).await?;
    let preapprovals = state
        .engine
        .preapprovals(true)
        .await?
        .into_iter()
        .map(|p| PreLine {
            id: p.id,
            tool: p.tool,
            agent: p.agent,
            scope: p.scope.unwrap_or_else(|| "*".into()),
            granted_by: p.granted_by,
            expires: view::time(p.expires_at_ms),
            reason: printable(&p.reason.unwrap_or_default()),
        })
        .collect();
    Ok(ApprovalsPage {
        me: Me::from(&viewer),
        cards: entries.into_iter().map(Card::from).collect(),
        truncated,
        preapprovals,
    }
    .into_response())
}

pub struct AgentLine {
    pub id: String,
    pub team: String,
    pub autonomy: String,
    pub crudlex: String,
    pub on_behalf_of: String,
}

pub struct ToolLine {
    pub name: String,
    pub kind: String,
    pub operation: String,
    pub owners: String,
    pub undo: String,
    pub description: String,
}

pub struct RuleLine {
    pub level: String,
    pub id: String,
    pub effect: String,
    pub path: String,
    pub message: String,
    pub file: String,
}

pub struct HaltLine {
    pub scope: String,
    pub agent: String,
    pub by: String,
    pub at: String,
    pub reason: String,
    /// The tasks it paused and still holds (the first [`PAUSED_SHOWN`]).
    pub paused: Vec<(String, String)>,
    /// How many more it holds than are listed.
    pub paused_more: usize,
}

/// Paused tasks one kill-switch page reads to find those halts hold.
pub const PAUSED_SCAN: u32 = 500;
/// Tasks listed per halt.
pub const PAUSED_SHOWN: usize = 20;

/// The halts in force, each with the tasks it paused and still holds;
/// `true` when more tasks are paused than were read.
pub async fn halt_lines(state: &AppState) -> Result<(Vec<HaltLine>, bool), ConsoleError> {
    let active = state.engine.refresh_halts().await?;
    let (held, truncated) = state.engine.paused_by_halts(&active, PAUSED_SCAN).await?;
    let lines = active
        .into_iter()
        .map(|h| {
            let mine: Vec<(String, String)> = held
                .iter()
                .filter(|(id, _)| *id == h.id)
                .map(|(_, t)| (t.id.clone(), t.workflow.clone()))
                .collect();
            HaltLine {
                scope: h
                    .agent
                    .as_deref()
                    .map(|a| format!("agent {a}"))
                    .unwrap_or_else(|| "everything".into()),
                agent: h.agent.unwrap_or_default(),
                by: h.created_by,
                at: view::time(h.created_at_ms),
                reason: printable(&h.reason.unwrap_or_default()),
                paused_more: mine.len().saturating_sub(PAUSED_SHOWN),
                paused: mine.into_iter().take(PAUSED_SHOWN).collect(),
            }
        })
        .collect();
    Ok((lines, truncated))
}

#[derive(Template, WebTemplate)]
#[template(path = "console/governance.html")]
pub struct GovernancePage {
    pub me: Me,
    pub policy_hash: String,
    pub agents: Vec<AgentLine>,
    pub tools: Vec<ToolLine>,
    pub rules: Vec<RuleLine>,
    pub halts: Vec<HaltLine>,
    pub paused_truncated: bool,
}

/// `/governance`: agents, tools, rules, halts; the dry run and the kill switch.
pub async fn governance(
    State(state): State<AppState>,
    viewer: Viewer,
) -> Result<GovernancePage, ConsoleError> {
    let set = state.governance.current();
    let agents = set
        .catalog
        .agents
        .iter()
        .map(|a| AgentLine {
            id: a.id.clone(),
            team: a.team.clone().unwrap_or_default(),
            autonomy: a.autonomy.clone(),
            crudlex: a.crudlex.clone(),
            on_behalf_of: a.on_behalf_of.join(", "),
        })
        .collect();
    let tools = set
        .catalog
        .tools
        .iter()
        .map(|t| ToolLine {
            name: t.name.clone(),
            kind: t.kind.to_string(),
            operation: format!("{:?}", t.operation).to_lowercase(),
            owners: t.owners.join(", "),
            undo: match (&t.compensation, set.catalog.recovery_path(t)) {
                (Some(c), _) => format!("compensate: {}", c.tool),
                (None, Some(r)) => format!("recovery: {r}"),
                (None, None) => String::new(),
            },
            description: t.description.clone().unwrap_or_default(),
        })
        .collect();
    let mut rules: Vec<RuleLine> = set
        .rules
        .values()
        .map(|r| RuleLine {
            level: format!("{:?}", r.level).to_lowercase(),
            id: r.id.clone(),
            effect: format!("{:?}", r.effect).to_lowercase(),
            path: r.path.to_string(),
            message: r.message.clone(),
            file: r.file.clone(),
        })
        .collect();
    rules.sort_by(|a, b| (&a.level, &a.id).cmp(&(&b.level, &b.id)));
    let (halts, paused_truncated) = if viewer.has(&[Role::Operator, Role::Auditor]) {
        halt_lines(&state).await?
    } else {
        (Vec::new(), false)
    };
    Ok(GovernancePage {
        me: Me::from(&viewer),
        policy_hash: set.hash.clone(),
        agents,
        tools,
        rules,
        halts,
        paused_truncated,
    })
}
