//! People's answers to notifications and the closing of escalations,
//! recorded in the task's history with the identity that gave them.
//!
//! Routing itself (who is told) is decided in `decide` (see
//! `core::routing`); delivering and verifying links is the `routing`
//! crate's. This module only records what a person did, and performs the
//! engine action the answer asks for (pause, cancel and roll back, approve
//! or reject, halt an agent) through the engine's ordinary calls.

use crate::core::event::{EventPayload, NewEvent};
use crate::core::gateway::approver_actor;
use crate::core::routing::RoutingRecord;
use crate::core::state::TaskStatus;

use super::{ApprovalDecision, ApprovalTarget, Engine, Error};

/// What a person can answer to a notification.
pub const RESPONSE_ACTIONS: &[&str] = &[
    "acknowledge",
    "pause_task",
    "pause_agent",
    "cancel_rollback",
    "trigger_recovery",
    "assign",
    "approve",
    "reject",
    "mark_reviewed",
    "helpful",
    "not_helpful",
];

/// The longest note or comment a person may attach.
pub const MAX_NOTE_CHARS: usize = 4_000;

/// A person's answer to one notification. `identity` must be authenticated
/// by the caller (token, signed link, verified Slack callback).
#[derive(Debug, Clone, Default)]
pub struct NotificationResponse {
    pub notification_id: String,
    pub about_seq: Option<i64>,
    pub action: String,
    pub identity: String,
    pub via: String,
    pub notified_at_ms: Option<i64>,
    pub assign_to: Option<String>,
    pub comment: Option<String>,
    /// Record the answer only: its action was taken through another item
    /// of the same grouped notification (the same task, or the same agent
    /// for `pause_agent`).
    pub record_only: bool,
}

impl Engine {
    /// Performs the engine action an answer asks for, then records the
    /// answer (`NotificationResponded`, actor `user:<identity>`). A refused
    /// action (the task is final, the approval is not this person's)
    /// records nothing.
    pub async fn respond_to_notification(
        &self,
        task_id: &str,
        r: NotificationResponse,
    ) -> Result<i64, Error> {
        let s = &self.shared;
        let invalid = |field: &str, message: String| Error::InvalidInput {
            field: field.into(),
            message,
        };
        if !RESPONSE_ACTIONS.contains(&r.action.as_str()) {
            return Err(invalid(
                "action",
                format!(
                    "{:?} is not one of {}",
                    r.action,
                    RESPONSE_ACTIONS.join(", ")
                ),
            ));
        }
        s.limits
            .check_name("identity", &r.identity)
            .map_err(|m| invalid("identity", m))?;
        s.limits
            .check_name("notification_id", &r.notification_id)
            .map_err(|m| invalid("notification_id", m))?;
        if r.comment
            .as_ref()
            .is_some_and(|c| c.chars().count() > MAX_NOTE_CHARS)
        {
            return Err(invalid(
                "comment",
                format!("longer than {MAX_NOTE_CHARS} characters; shorten it"),
            ));
        }
        match (r.action.as_str(), &r.assign_to) {
            ("assign", None) => {
                return Err(invalid(
                    "assign_to",
                    "`assign` needs the owner to assign to".into(),
                ));
            }
            ("assign", Some(to)) => s
                .limits
                .check_name("assign_to", to)
                .map_err(|m| invalid("assign_to", m))?,
            _ => {}
        }
        let actor = format!("user:{}", r.identity);
        let reason = Some(format!(
            "{} answered notification {}",
            r.identity, r.notification_id
        ));
        match r.action.as_str() {
            _ if r.record_only => {}
            "pause_task" => {
                self.pause(task_id, &actor, reason).await?;
            }
            "cancel_rollback" => {
                self.cancel(task_id, true, &actor, reason).await?;
            }
            "pause_agent" => {
                let task = self.task(task_id).await?;
                let Some(agent) = task.agent.as_deref() else {
                    return Err(invalid(
                        "action",
                        "the task has no agent to pause; pause the task instead".into(),
                    ));
                };
                self.halt(Some(agent), &actor, reason).await?;
            }
            "approve" | "reject" => {
                let target = match r.about_seq {
                    Some(policy_seq) => {
                        let history = self.history(task_id).await?;
                        let state = crate::TaskState::fold(&history);
                        match state
                            .approvals
                            .values()
                            .find(|a| a.policy_seq == Some(policy_seq) && a.outcome.is_none())
                        {
                            Some(a) => ApprovalTarget::Seq(a.seq),
                            None => ApprovalTarget::Only,
                        }
                    }
                    None => ApprovalTarget::Only,
                };
                self.decide_approval(
                    task_id,
                    target,
                    &r.identity,
                    ApprovalDecision {
                        approved: r.action == "approve",
                        comment: r.comment.clone(),
                        edit: None,
                        via: Some(r.via.clone()),
                    },
                )
                .await?;
            }
            _ => {}
        }
        let actor = if matches!(r.action.as_str(), "approve" | "reject") {
            approver_actor(&r.identity)
        } else {
            actor
        };
        self.append_record(task_id, "record a response to", |_| {
            Ok(vec![NewEvent {
                actor: actor.clone(),
                payload: EventPayload::NotificationResponded {
                    notification_id: r.notification_id.clone(),
                    about_seq: r.about_seq,
                    action: r.action.clone(),
                    identity: r.identity.clone(),
                    via: r.via.clone(),
                    notified_at_ms: r.notified_at_ms,
                    assign_to: r.assign_to.clone(),
                    comment: r.comment.clone(),
                },
            }])
        })
        .await
    }

    /// Records that an escalation chain reached a further step with nobody
    /// answering the event at `about_seq` (an `OwnersNotified` whose
    /// `escalation_step` is set; deliveries follow from it). Recorded once
    /// per step: a step already in the history is not recorded again.
    pub async fn record_escalation_step(
        &self,
        task_id: &str,
        about_seq: i64,
        routing: RoutingRecord,
    ) -> Result<i64, Error> {
        let step = routing.escalation_step;
        self.append_record(task_id, "record an escalation step of", |_| {
            Ok(vec![NewEvent::engine(EventPayload::OwnersNotified {
                about_seq,
                routing: Box::new(routing.clone()),
            })])
        })
        .await
        .inspect(|_| tracing::debug!(task_id, about_seq, ?step, "escalation step recorded"))
    }

    /// Closes an `escalated_to_human` task: a person says what they did.
    /// Refused for any other status, and when it was closed already.
    pub async fn resolve_escalation(
        &self,
        task_id: &str,
        identity: &str,
        via: &str,
        note: &str,
        recovery_done: bool,
    ) -> Result<i64, Error> {
        let s = &self.shared;
        s.limits
            .check_name("identity", identity)
            .map_err(|message| Error::InvalidInput {
                field: "identity".into(),
                message,
            })?;
        if note.trim().is_empty() || note.chars().count() > MAX_NOTE_CHARS {
            return Err(Error::InvalidInput {
                field: "note".into(),
                message: format!("say what was done, in 1 to {MAX_NOTE_CHARS} characters (--note)"),
            });
        }
        self.append_record(task_id, "resolve the escalation of", |state| {
            if state.status() != TaskStatus::EscalatedToHuman {
                return Err(Error::Rejected {
                    task_id: task_id.to_string(),
                    message: format!(
                        "the task is {}, not escalated_to_human: there is no escalation to resolve",
                        state.status().as_str()
                    ),
                });
            }
            if state.escalation_resolved {
                return Err(Error::Rejected {
                    task_id: task_id.to_string(),
                    message: "its escalation was resolved already".into(),
                });
            }
            Ok(vec![NewEvent {
                actor: format!("user:{identity}"),
                payload: EventPayload::EscalationResolved {
                    identity: identity.to_string(),
                    via: via.to_string(),
                    note: note.to_string(),
                    recovery_done,
                },
            }])
        })
        .await
    }
}

/// What `ActionReported` says may come after the fact: the longest error
/// and recovery-path texts.
pub const MAX_REPORT_TEXT_CHARS: usize = 2_000;
/// How far ahead of the engine's clock a reported time may be (clock skew).
pub const MAX_REPORT_CLOCK_SKEW_MS: i64 = 5 * 60_000;

/// An action an agent ran itself and reports after the fact. `agent` must
/// be authenticated by the caller (the token's identity).
#[derive(Debug, Clone, Default)]
pub struct ReportedAction {
    pub agent: String,
    pub tool: String,
    pub resource: Option<String>,
    pub input_digest: String,
    pub outcome: String,
    pub error: Option<String>,
    pub occurred_at_ms: i64,
    pub recovery_path: Option<String>,
}

/// Where a reported action was recorded, and who was told.
#[derive(Debug, Clone)]
pub struct ActionRecorded {
    /// The seq of the `ActionReported`.
    pub seq: i64,
    /// The routing recorded about it (none: nobody to tell).
    pub routing: Option<RoutingRecord>,
}

/// Checks a reported action; `Err((field, message))` names what is wrong.
fn check_report(
    limits: &crate::core::limits::Limits,
    a: &ReportedAction,
    now_ms: i64,
) -> Result<(), (&'static str, String)> {
    limits
        .check_name("tool", &a.tool)
        .map_err(|m| ("tool", m))?;
    if let Some(r) = &a.resource {
        limits
            .check_name("resource", r)
            .map_err(|m| ("resource", m))?;
    }
    let digest_ok = a.input_digest.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if !digest_ok {
        return Err((
            "input_digest",
            "must be `sha256:` and 64 lowercase hex digits (the SHA-256 of the tool's input)"
                .into(),
        ));
    }
    match (a.outcome.as_str(), &a.error) {
        ("succeeded", None) | ("failed", _) => {}
        ("succeeded", Some(_)) => {
            return Err(("error", "an action that succeeded has no error".into()));
        }
        (o, _) => {
            return Err(("outcome", format!("{o:?} is not one of succeeded, failed")));
        }
    }
    for (field, text) in [("error", &a.error), ("recovery_path", &a.recovery_path)] {
        if let Some(t) = text
            && (t.trim().is_empty() || t.chars().count() > MAX_REPORT_TEXT_CHARS)
        {
            return Err((
                field,
                format!("must be 1 to {MAX_REPORT_TEXT_CHARS} characters"),
            ));
        }
    }
    if a.occurred_at_ms <= 0 || a.occurred_at_ms > now_ms + MAX_REPORT_CLOCK_SKEW_MS {
        return Err((
            "occurred_at_ms",
            format!(
                "{} is not a time this action can have happened (epoch milliseconds, not after now + {} s)",
                a.occurred_at_ms,
                MAX_REPORT_CLOCK_SKEW_MS / 1000
            ),
        ));
    }
    Ok(())
}

impl Engine {
    /// Records an action the task's agent ran itself (`ActionReported`,
    /// actor `agent:<agent>`), and routes it to owners like a monitored
    /// step: the router's answer is recorded as `OwnersNotified` about it in
    /// the same append. Refused, writing nothing, when the input is bad,
    /// the task is not this agent's, or the task is final.
    pub async fn report_action(
        &self,
        task_id: &str,
        a: ReportedAction,
    ) -> Result<ActionRecorded, Error> {
        let s = &self.shared;
        s.limits
            .check_name("agent", &a.agent)
            .map_err(|message| Error::InvalidInput {
                field: "agent".into(),
                message,
            })?;
        check_report(&s.limits, &a, s.clock.now_ms()).map_err(|(field, message)| {
            Error::InvalidInput {
                field: field.into(),
                message,
            }
        })?;
        let routed: std::sync::Mutex<Option<RoutingRecord>> = Default::default();
        let last = self
            .append_external(task_id, "record a reported action in", |state| {
                if state.agent.as_deref() != Some(a.agent.as_str()) {
                    return Err(Error::Forbidden {
                        message: format!(
                            "task {task_id} was not submitted by agent {}; report into your own task (or leave task_id out for your session task)",
                            a.agent
                        ),
                    });
                }
                let about_seq = state.last_seq + 1;
                let at = crate::core::gateway::Principal {
                    agent: state.agent.clone(),
                    on_behalf_of: state.on_behalf_of.clone(),
                };
                let summary: String = format!(
                    "reported after the fact (not gated): agent {} ran {} on {} at {} ms: {}{}",
                    a.agent,
                    a.tool,
                    a.resource.as_deref().unwrap_or("*"),
                    a.occurred_at_ms,
                    a.outcome,
                    a.error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default()
                )
                .chars()
                .take(crate::core::decide::MAX_ROUTING_SUMMARY_CHARS)
                .collect();
                let request = crate::core::routing::RoutingRequest {
                    task_id,
                    about_seq,
                    step_seq: None,
                    principal: &at,
                    tool: &a.tool,
                    resource: a.resource.as_deref(),
                    decision: None,
                    outcome: None,
                    summary: &summary,
                    recovery_path: a.recovery_path.as_deref(),
                    now_ms: s.clock.now_ms(),
                };
                let mut events = vec![NewEvent {
                    actor: format!("agent:{}", a.agent),
                    payload: EventPayload::ActionReported {
                        agent: a.agent.clone(),
                        tool: a.tool.clone(),
                        resource: a.resource.clone(),
                        input_digest: a.input_digest.clone(),
                        outcome: a.outcome.clone(),
                        error: a.error.clone(),
                        occurred_at_ms: a.occurred_at_ms,
                        recovery_path: a.recovery_path.clone(),
                    },
                }];
                let record = s
                    .gateway
                    .route(&request)
                    .filter(RoutingRecord::acts);
                if let Some(r) = &record {
                    events.push(NewEvent::engine(EventPayload::OwnersNotified {
                        about_seq,
                        routing: Box::new(r.clone()),
                    }));
                }
                *routed.lock().expect("not poisoned") = record;
                Ok(events)
            })
            .await?;
        let routing = routed.into_inner().expect("not poisoned");
        let seq = if routing.is_some() { last - 1 } else { last };
        Ok(ActionRecorded { seq, routing })
    }
}

impl Engine {
    /// Records that routing started a playbook (or could not) as the first
    /// response to the event at `about_seq`. Once per event and playbook:
    /// a second call (a follower re-reading after a crash) records nothing
    /// and returns `None`.
    pub async fn record_playbook_started(
        &self,
        task_id: &str,
        about_seq: i64,
        playbook: &str,
        workflow: &str,
        started: Result<String, String>,
    ) -> Result<Option<i64>, Error> {
        let seen = std::sync::atomic::AtomicBool::new(false);
        let r = self
            .append_events(task_id, "record a playbook start in", true, |history, _| {
                let known = history.iter().any(|e| {
                    matches!(&e.payload, EventPayload::PlaybookStarted { about_seq: a, playbook: p, .. }
                        if *a == about_seq && p == playbook)
                });
                if known {
                    seen.store(true, std::sync::atomic::Ordering::Relaxed);
                    return Err(Error::Rejected {
                        task_id: task_id.to_string(),
                        message: "the playbook start is recorded already".into(),
                    });
                }
                let (playbook_task_id, error) = match &started {
                    Ok(t) => (Some(t.clone()), None),
                    Err(e) => (None, Some(e.chars().take(MAX_REPORT_TEXT_CHARS).collect())),
                };
                Ok(vec![NewEvent::engine(EventPayload::PlaybookStarted {
                    about_seq,
                    playbook: playbook.to_string(),
                    workflow: workflow.to_string(),
                    playbook_task_id,
                    error,
                })])
            })
            .await;
        match r {
            Ok(seq) => Ok(Some(seq)),
            Err(_) if seen.load(std::sync::atomic::Ordering::Relaxed) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
