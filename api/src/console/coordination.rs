//! The coordination page: who was told what and whether they answered —
//! notifications and their state, time to intervention against the seeds'
//! targets (a server-rendered SVG chart), the open escalation chains by age,
//! and ownership and recovery-path coverage. The figures are routing's own
//! (`mandate_routing::wire::figures`, what `mandate tti` and `/metrics`
//! report); the notifications and chains are routing's outbox tables.

use std::collections::{HashMap, HashSet};

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use mandate_engine::EventPayload;
use mandate_routing::outbox::{EscalationState, NotificationState};
use mandate_routing::tti::{TtiStats, target_p95_ms};

use super::ConsoleError;
use super::pages::Me;
use super::session::Viewer;
use super::view::{self, printable};
use crate::auth::Role;
use crate::state::AppState;

/// Notifications listed (the newest).
pub const NOTIFICATIONS_SHOWN: i64 = 100;
/// Open escalation chains listed (the oldest).
pub const ESCALATIONS_SHOWN: i64 = 100;
/// The actions the seeds set a time-to-intervention target for, charted
/// even before anyone answered.
const TARGET_ACTIONS: [&str; 5] = [
    "pause_task",
    "pause_agent",
    "ask",
    "trigger_recovery",
    "assign",
];
/// The seeds' coverage targets.
const OWNERSHIP_TARGET: f64 = 0.9;
const RECOVERY_TARGET: f64 = 0.8;
const RELEVANCE_TARGET: f64 = 0.7;

/// `850 ms`, `12.3 s`, `4 min 05 s`, `2 h 03 min`.
pub fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    match ms {
        0..=999 => format!("{ms} ms"),
        1_000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{} min {:02} s", ms / 60_000, (ms / 1000) % 60),
        _ => format!("{} h {:02} min", ms / 3_600_000, (ms / 60_000) % 60),
    }
}

/// One bar pair of the chart (P50 and P95 against the target).
pub struct TtiBar {
    pub action: String,
    pub count: usize,
    pub p50: String,
    pub p95: String,
    pub target: String,
    /// `meets`, `misses`, `no-target` or `no-data`.
    pub verdict: &'static str,
    pub y: u32,
    pub p50_w: u32,
    pub p95_w: u32,
    /// The target's x (0 when there is none).
    pub target_x: u32,
}

/// The chart's geometry.
pub const CHART_LEFT: u32 = 150;
pub const CHART_PLOT: u32 = 380;
pub const CHART_ROW: u32 = 46;

/// The chart's rows: every action with a target, then any other answered.
pub fn tti_bars(stats: &[TtiStats]) -> Vec<TtiBar> {
    let by: HashMap<&str, &TtiStats> = stats.iter().map(|s| (s.action.as_str(), s)).collect();
    let mut actions: Vec<&str> = TARGET_ACTIONS.to_vec();
    actions.extend(
        stats
            .iter()
            .map(|s| s.action.as_str())
            .filter(|a| !TARGET_ACTIONS.contains(a)),
    );
    actions
        .into_iter()
        .enumerate()
        .map(|(i, action)| {
            let target = target_p95_ms(action);
            let s = by.get(action);
            let (p50, p95) = s.map(|s| (s.p50_ms, s.p95_ms)).unwrap_or((0, 0));
            // Each row is scaled to its own target (or its P95), so a
            // 10 s target and a 2 min one read alike: the target sits at 80%.
            let full = (target.unwrap_or(p95).max(p95).max(1)) as f64 * 1.25;
            let x = |ms: i64| ((ms as f64 / full) * CHART_PLOT as f64).round() as u32;
            TtiBar {
                action: action.to_string(),
                count: s.map(|s| s.count).unwrap_or(0),
                p50: s.map(|_| duration(p50)).unwrap_or_default(),
                p95: s.map(|_| duration(p95)).unwrap_or_default(),
                target: target.map(duration).unwrap_or_default(),
                verdict: match (s, target) {
                    (None, _) => "no-data",
                    (Some(_), None) => "no-target",
                    (Some(_), Some(t)) if p95 < t => "meets",
                    (Some(_), Some(_)) => "misses",
                },
                y: 10 + i as u32 * CHART_ROW,
                p50_w: x(p50),
                p95_w: x(p95),
                target_x: target.map(|t| CHART_LEFT + x(t)).unwrap_or(0),
            }
        })
        .collect()
}

/// A coverage figure against its target.
pub struct Coverage {
    pub name: &'static str,
    pub value: String,
    pub of: String,
    pub target: String,
    pub meets: Option<bool>,
}

fn coverage(name: &'static str, v: Option<f64>, of: String, target: f64) -> Coverage {
    Coverage {
        name,
        value: v
            .map(|v| format!("{:.1}%", v * 100.0))
            .unwrap_or_else(|| "—".into()),
        of,
        target: format!("> {:.0}%", target * 100.0),
        meets: v.map(|v| v > target),
    }
}

/// A person's answer to a notification, from the task's history.
struct Answer {
    action: String,
    identity: String,
    at_ms: i64,
}

/// A notification as listed.
pub struct NoteLine {
    pub id: String,
    pub task_id: String,
    pub recipient: String,
    pub sink: String,
    pub title: String,
    /// `acknowledged`, `overdue`, `escalated`, `sent`, `pending` or `failed`.
    pub state: &'static str,
    pub delivery: String,
    pub created: String,
    pub answer: String,
    pub chain: String,
}

fn state_of(n: &NotificationState, answered: bool, now_ms: i64) -> &'static str {
    let acked = answered || n.chain.as_ref().is_some_and(|c| c.acked_at_ms.is_some());
    let overdue = match &n.chain {
        Some(c) => c.overdue(now_ms),
        None => n.message.review_due_at_ms.is_some_and(|t| t <= now_ms),
    };
    match n.status.as_str() {
        _ if acked => "acknowledged",
        _ if overdue => "overdue",
        _ if n.chain.as_ref().is_some_and(|c| c.fired_steps > 1) => "escalated",
        "sent" => "sent",
        "failed" => "failed",
        _ => "pending",
    }
}

/// An open escalation chain, by age.
pub struct EscLine {
    pub task_id: String,
    pub notification_id: String,
    pub chain: String,
    pub age: String,
    pub started: String,
    pub fired_steps: i64,
    pub next: String,
    pub overdue: bool,
}

fn esc_line(e: &EscalationState, now_ms: i64) -> EscLine {
    EscLine {
        task_id: e.task_id.clone(),
        notification_id: e.notification_id.clone(),
        chain: e.chain.clone(),
        age: duration(now_ms - e.started_at_ms),
        started: view::time(e.started_at_ms),
        fired_steps: e.fired_steps,
        next: e
            .next_due_at_ms
            .map(view::time)
            .unwrap_or_else(|| "every step fired".into()),
        overdue: e.overdue(now_ms),
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "console/coordination.html")]
pub struct CoordinationPage {
    pub me: Me,
    /// Routing runs in this server (else only the figures from history).
    pub routing: bool,
    pub bars: Vec<TtiBar>,
    pub chart_left: u32,
    pub chart_width: u32,
    pub chart_height: u32,
    pub coverage: Vec<Coverage>,
    pub events_scanned: u64,
    pub truncated: bool,
    pub states: Vec<(&'static str, usize)>,
    pub delivery: Vec<(String, i64)>,
    pub chains: Vec<(&'static str, i64)>,
    pub notes: Vec<NoteLine>,
    pub escalations: Vec<EscLine>,
}

/// The answers recorded in these tasks' histories, by notification id.
async fn answers(
    state: &AppState,
    tasks: HashSet<&str>,
) -> Result<HashMap<String, Answer>, ConsoleError> {
    let mut out = HashMap::new();
    for t in tasks {
        let history = state
            .engine
            .store()
            .load_history(t)
            .await
            .map_err(crate::error::ApiError::store)?;
        for raw in history
            .iter()
            .filter(|r| r.event_type == "NotificationResponded")
        {
            if let Ok(EventPayload::NotificationResponded {
                notification_id,
                action,
                identity,
                ..
            }) = EventPayload::from_parts(&raw.event_type, &raw.payload)
            {
                out.entry(notification_id).or_insert(Answer {
                    action,
                    identity,
                    at_ms: raw.recorded_at_ms,
                });
            }
        }
    }
    Ok(out)
}

/// `/coordination`.
pub async fn coordination(
    State(state): State<AppState>,
    viewer: Viewer,
) -> Result<CoordinationPage, ConsoleError> {
    viewer.identity.require(
        &[Role::Approver, Role::Operator, Role::Auditor],
        "read the coordination page",
    )?;
    let now = state.engine.now_ms();
    let f = mandate_routing::wire::figures(
        &state.engine,
        None,
        crate::notifications::METRICS_SCAN_EVENTS,
    )
    .await
    .map_err(crate::error::ApiError::store)?;
    let bars = tti_bars(&f.tti);
    let coverage = vec![
        coverage(
            "Ownership coverage",
            f.ownership_coverage,
            format!("{} routed steps", f.steps_routed),
            OWNERSHIP_TARGET,
        ),
        coverage(
            "Recovery-path coverage",
            f.recovery_path_coverage,
            format!("{} write steps", f.write_steps),
            RECOVERY_TARGET,
        ),
        coverage(
            "Notification relevance",
            f.relevance,
            format!("{} rated", f.rated),
            RELEVANCE_TARGET,
        ),
    ];
    let outbox_err = |e: mandate_routing::outbox::Error| {
        tracing::error!(error = %e, "console: reading the outbox");
        ConsoleError::internal(
            "could not read the notifications; the details are in the server's log",
        )
    };
    let (mut notes, mut escalations, mut delivery, mut chains) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut states: Vec<(&'static str, usize)> = [
        "acknowledged",
        "overdue",
        "escalated",
        "sent",
        "pending",
        "failed",
    ]
    .into_iter()
    .map(|s| (s, 0))
    .collect();
    if let Some(r) = &state.routing {
        let outbox = &r.responder.outbox;
        let recent = outbox
            .recent_notifications(NOTIFICATIONS_SHOWN)
            .await
            .map_err(outbox_err)?;
        let answered = answers(&state, recent.iter().map(|n| n.task_id.as_str()).collect()).await?;
        for n in &recent {
            let a = answered.get(&n.id);
            let s = state_of(n, a.is_some(), now);
            if let Some(c) = states.iter_mut().find(|(name, _)| *name == s) {
                c.1 += 1;
            }
            notes.push(NoteLine {
                id: n.id.clone(),
                task_id: n.task_id.clone(),
                recipient: n.recipient.clone(),
                sink: n.sink.clone(),
                title: printable(&view::clip(&n.message.what_happened, 200)),
                state: s,
                delivery: match (&n.status[..], &n.last_error) {
                    ("sent", _) => {
                        format!("sent {}", n.sent_at_ms.map(view::time).unwrap_or_default())
                    }
                    (st, Some(e)) => format!("{st} (attempt {}: {})", n.attempt, printable(e)),
                    (st, None) => st.to_string(),
                },
                created: view::time(n.created_at_ms),
                answer: match (a, &n.chain) {
                    (Some(a), _) => format!(
                        "{} by {} after {}",
                        a.action,
                        a.identity,
                        duration(a.at_ms - n.sent_at_ms.unwrap_or(n.created_at_ms))
                    ),
                    (None, Some(c)) if c.acked_at_ms.is_some() => {
                        format!("answered by {}", c.acked_by.as_deref().unwrap_or("someone"))
                    }
                    _ => String::new(),
                },
                chain: n
                    .chain
                    .as_ref()
                    .map(|c| format!("{} (step {})", c.chain, c.fired_steps))
                    .unwrap_or_default(),
            });
        }
        escalations = outbox
            .open_escalations(ESCALATIONS_SHOWN)
            .await
            .map_err(outbox_err)?
            .iter()
            .map(|e| esc_line(e, now))
            .collect();
        let counts = outbox.coordination_counts(now).await.map_err(outbox_err)?;
        delivery = counts.by_status;
        chains = vec![
            ("open", counts.chains_open),
            ("escalated", counts.chains_escalated),
            ("overdue", counts.chains_overdue),
            ("acknowledged", counts.chains_acknowledged),
        ];
    }
    Ok(CoordinationPage {
        me: Me::from(&viewer),
        routing: state.routing.is_some(),
        chart_left: CHART_LEFT,
        chart_width: CHART_LEFT + CHART_PLOT + 220,
        chart_height: 20 + bars.len() as u32 * CHART_ROW,
        bars,
        coverage,
        events_scanned: f.events_scanned,
        truncated: f.truncated,
        states,
        delivery,
        chains,
        notes,
        escalations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(action: &str, p50: i64, p95: i64) -> TtiStats {
        TtiStats {
            action: action.into(),
            count: 3,
            p50_ms: p50,
            p95_ms: p95,
            target_p95_ms: target_p95_ms(action),
            meets_target: target_p95_ms(action).map(|t| p95 < t),
            invalid: 0,
        }
    }

    #[test]
    fn the_chart_has_every_target_and_says_which_are_met() {
        let bars = tti_bars(&[
            stats("pause_task", 2_000, 8_000),
            stats("assign", 60_000, 150_000),
            stats("acknowledge", 1_000, 1_500),
        ]);
        let names: Vec<&str> = bars.iter().map(|b| b.action.as_str()).collect();
        assert_eq!(
            names,
            [
                "pause_task",
                "pause_agent",
                "ask",
                "trigger_recovery",
                "assign",
                "acknowledge"
            ]
        );
        let v: Vec<&str> = bars.iter().map(|b| b.verdict).collect();
        assert_eq!(
            v,
            [
                "meets",
                "no-data",
                "no-data",
                "no-data",
                "misses",
                "no-target"
            ]
        );
        // The target sits at 80% of the plot; a P95 under it draws shorter.
        let pause = &bars[0];
        assert_eq!(pause.target_x, CHART_LEFT + CHART_PLOT * 4 / 5);
        assert!(pause.p95_w < pause.target_x - CHART_LEFT && pause.p50_w < pause.p95_w);
        let assign = &bars[4];
        assert_eq!(
            assign.p95_w,
            CHART_PLOT * 4 / 5,
            "scaled to a P95 past the target"
        );
        assert!(assign.target_x - CHART_LEFT < assign.p95_w);
        assert_eq!(pause.p95, "8.0 s");
        assert_eq!(assign.target, "2 min 00 s");
    }

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(duration(850), "850 ms");
        assert_eq!(duration(12_340), "12.3 s");
        assert_eq!(duration(245_000), "4 min 05 s");
        assert_eq!(duration(7_380_000), "2 h 03 min");
        assert_eq!(duration(-5), "0 ms");
    }
}
