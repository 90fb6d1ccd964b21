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
