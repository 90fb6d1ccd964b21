//! Routing's contract: who hears about a step the gateway decided (or a task
//! outcome that calls for people), as recorded in the task's history.
//!
//! `decide` asks the [`Router`] (through [`crate::gateway::Gateway::route`])
//! about every `PolicyEvaluated`, `StepFailed`, `CompensationFailed` and
//! `TaskEscalated` it records, and records a non-empty answer as an
//! `OwnersNotified` event in the same decision (the engine does the same
//! for an `ActionReported`, in the append that records it). Replay never routes again:
//! the recorded event is the decision. Routing never delays a step: the
//! step is scheduled in the same decision, and deliveries are enqueued from
//! the recorded event by a follower outside the engine (crate
//! `mandate-routing`), idempotently per item key.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::gateway::{Gateway, GatewayDecision, GatewayRequest, Principal};

/// A task outcome that calls for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoutedOutcome {
    StepFailed,
    CompensationFailed,
    TaskEscalated,
}

/// What the router is asked about one event of a task.
#[derive(Debug, Clone, Copy)]
pub struct RoutingRequest<'a> {
    pub task_id: &'a str,
    /// The seq of the event routed (a `PolicyEvaluated`, `StepFailed`, …).
    pub about_seq: i64,
    /// The step's seq, when the event concerns one.
    pub step_seq: Option<i64>,
    pub principal: &'a Principal,
    pub tool: &'a str,
    /// The resource as the ownership map names it, when known without a
    /// gateway decision (an action an agent reported after the fact).
    pub resource: Option<&'a str>,
    /// The gateway's decision for the step, when there is one.
    pub decision: Option<&'a GatewayDecision>,
    pub outcome: Option<RoutedOutcome>,
    /// One line: what happened.
    pub summary: &'a str,
    pub recovery_path: Option<&'a str>,
    pub now_ms: i64,
}

/// How to reach a recipient (a sink id and an address on it; never a secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactRef {
    pub sink: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// One person or channel notified, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifiedRecipient {
    pub recipient: String,
    /// The owner that led to it (person, channel, rotation, chain), or `approver`.
    pub owner: String,
    pub rule: String,
    pub why: String,
    #[serde(default)]
    pub contacts: Vec<ContactRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation_chain: Option<String>,
}

/// The router's answer, recorded in `OwnersNotified`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingRecord {
    pub matched_rules: Vec<String>,
    pub recipients: Vec<NotifiedRecipient>,
    #[serde(default)]
    pub recipients_dropped: usize,
    /// The map named no owner for the resource or tool.
    #[serde(default)]
    pub unowned: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review_due_at_ms: Option<i64>,
    pub group_key: String,
    pub group_wait_ms: i64,
    /// The intervention path routed on (`monitored_execute`, …), if a step's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<RoutedOutcome>,
    pub summary: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_path: Option<String>,
    /// Set when an escalation chain reached its step N (counting the first)
    /// with nobody answering: these recipients are that step's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation_step: Option<i64>,
    /// Playbooks the matched rules start as the automated first response
    /// (ids in the routing configuration); each start is recorded as a
    /// `PlaybookStarted` about the same event.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub playbooks: Vec<String>,
}

impl RoutingRecord {
    /// Whether there is anything to record: someone to tell or a playbook to start.
    pub fn acts(&self) -> bool {
        !self.recipients.is_empty() || !self.playbooks.is_empty()
    }
}

/// The item key of one delivery of a recorded routing: one recipient, one
/// sink, one event. The outbox enqueues each key once.
pub fn item_key(task_id: &str, about_seq: i64, recipient: &str, sink: &str) -> String {
    format!("{task_id}:{about_seq}:{recipient}:{sink}")
}

/// Decides who hears about an event. Pure: the time is an argument.
pub trait Router: Send + Sync {
    /// `None` (or no recipients): nothing is recorded.
    fn route(&self, request: &RoutingRequest<'_>) -> Option<RoutingRecord>;
}

/// A gateway that also routes: governance from `gateway`, routing from `router`.
pub struct Routed {
    pub gateway: Arc<dyn Gateway>,
    pub router: Arc<dyn Router>,
}

impl Gateway for Routed {
    fn evaluate(&self, request: &GatewayRequest<'_>) -> GatewayDecision {
        self.gateway.evaluate(request)
    }
    fn workflow_approval(
        &self,
        principal: &Principal,
        workflow: &str,
        subject: &str,
    ) -> crate::gateway::WorkflowApproval {
        self.gateway.workflow_approval(principal, workflow, subject)
    }
    fn admit(&self, principal: &Principal) -> Result<(), String> {
        self.gateway.admit(principal)
    }
    fn may_preapprove(&self, identity: &str, tool: &str, agent: &str) -> Result<(), String> {
        self.gateway.may_preapprove(identity, tool, agent)
    }
    fn route(&self, request: &RoutingRequest<'_>) -> Option<RoutingRecord> {
        self.router.route(request)
    }
}
