//! Persisted events: the facts a task's history is made of.
//!
//! Every variant here is a compatibility boundary: once an event has been written
//! to a history, its meaning must never change. Add variants; never repurpose one.
//! Names are facts in the past tense.

use crate::gateway::{GatewayDecision, Principal, RuleRef};
use crate::routing::RoutingRecord;
use crate::tool::ToolKind;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::retry::RetryPolicy;

/// A step's undo: the tool call that reverses it, with its input resolved when
/// the step is scheduled (before the step runs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Compensation {
    pub tool: String,
    pub input: Value,
    #[serde(default = "RetryPolicy::compensation_default")]
    pub retry: RetryPolicy,
}

/// Why an attempt failed, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedError {
    pub message: String,
    pub retryable: bool,
    /// The attempt may have had its effect anyway: the engine cut it off (a
    /// timeout) or the tool panicked. A tool that returns an error has, by
    /// contract, applied nothing. Omitted when false, so older histories hash
    /// the same.
    #[serde(default, skip_serializing_if = "is_false")]
    pub effect_unknown: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Where a replay polls a workflow's code (the points at which the code
/// sees results), fixed for a task by its `TaskStarted`. See
/// ARCHITECTURE.md, "The replay model".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PollPoints {
    /// After each run of non-command events, before the commands recorded
    /// next: results recorded together become visible together. Histories
    /// written before `EachResult` (release 0.1 and until this field).
    #[default]
    Batch,
    /// After each non-command event that woke the code: every result is
    /// seen on its own, whatever decision recorded it, so a worker's kept
    /// instance never polls where a replay would not.
    EachResult,
}

impl PollPoints {
    pub fn is_batch(&self) -> bool {
        *self == PollPoints::Batch
    }
}

/// The payload of one event. Serialized adjacently tagged: `{"type": .., "payload": {..}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "payload")]
pub enum EventPayload {
    /// The task was created. Always seq 1.
    TaskSubmitted {
        workflow: String,
        workflow_version: u32,
        input: Value,
        #[serde(default)]
        agent: Option<String>,
        #[serde(default)]
        on_behalf_of: Option<String>,
        #[serde(default)]
        idempotency_key: Option<String>,
    },
    /// A worker picked the task up for the first time (`queued → running`).
    TaskStarted {
        worker: String,
        /// Where a replay polls the workflow's code (absent in histories
        /// written before it existed: [`PollPoints::Batch`]).
        #[serde(default, skip_serializing_if = "PollPoints::is_batch")]
        polls: PollPoints,
    },
    /// The workflow asked for a tool call. Its compensation is persisted here,
    /// before the step runs. The idempotency key of every attempt is `task_id:seq`
    /// with the seq of this event.
    StepScheduled {
        command: u32,
        name: String,
        tool: String,
        kind: ToolKind,
        input: Value,
        retry: RetryPolicy,
        timeout_ms: u64,
        #[serde(default)]
        compensation: Option<Compensation>,
        #[serde(default)]
        recovery_path: Option<String>,
        /// The `PolicyEvaluated` event this step was decided by. Then that
        /// event is the step's command event and this one is not; absent in
        /// histories written before the gateway (release 0.1), where this
        /// event is the command.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        policy_seq: Option<i64>,
    },
    /// The gateway decided a step the workflow asked for, before anything was
    /// scheduled for it. This is the step's command event (matched on replay
    /// by name, tool and the input the workflow asked for); it carries the
    /// whole request so the engine can schedule the step later (after an
    /// approval) from the history alone.
    PolicyEvaluated {
        command: u32,
        name: String,
        tool: String,
        kind: ToolKind,
        input: Value,
        retry: RetryPolicy,
        timeout_ms: u64,
        #[serde(default)]
        compensation: Option<Compensation>,
        #[serde(default)]
        recovery_path: Option<String>,
        principal: Principal,
        /// Boxed: the largest payload, kept off every other event's size.
        decision: Box<GatewayDecision>,
    },
    /// The step decided at `policy_seq` will not run: the gateway denied it,
    /// its approval was rejected or timed out, or an approver's edit was
    /// denied. The workflow sees a non-retryable step error.
    StepDenied {
        policy_seq: i64,
        rule: String,
        reason: String,
    },
    /// A person must decide. Either a gated step (`policy_seq`) or the
    /// workflow's own approval wait (`command`: then this is a command event).
    /// The deadline is absolute.
    ApprovalRequested {
        #[serde(default)]
        command: Option<u32>,
        #[serde(default)]
        policy_seq: Option<i64>,
        /// The step's name, or the name the workflow gave its approval.
        subject: String,
        /// For a gated step: the input the approvers decide on.
        #[serde(default)]
        input: Option<Value>,
        approvers: Vec<String>,
        quorum: u32,
        timeout_ms: u64,
        deadline_at_ms: i64,
        #[serde(default)]
        escalation: Option<String>,
        #[serde(default)]
        decided_by: Vec<RuleRef>,
        /// A request this one replaces (an approver's edit needed more).
        #[serde(default)]
        supersedes: Option<i64>,
    },
    /// One approver's decision, appended only through the engine's approval
    /// call with an authenticated identity (the event's actor is
    /// `approver:<identity>`).
    ApprovalDecided {
        request_seq: i64,
        identity: String,
        approved: bool,
        #[serde(default)]
        comment: Option<String>,
        /// Input fields the approver changed (re-checked by the gateway).
        #[serde(default)]
        edit: Option<Value>,
        /// How the identity was authenticated (`token:<id>`, `cli:<os user>`).
        #[serde(default)]
        via: Option<String>,
    },
    /// The request passed its deadline and went to its escalation target,
    /// with a new deadline.
    ApprovalEscalated {
        request_seq: i64,
        to: String,
        deadline_at_ms: i64,
    },
    /// An approver's edit of a gated step's input, re-checked by the gateway.
    ApprovalEditEvaluated {
        request_seq: i64,
        input: Value,
        decision: Box<GatewayDecision>,
    },
    /// The request is closed: `approved`, `rejected`, `timed_out`,
    /// `edit_denied`, `superseded` or `withdrawn` (by a rollback, `by`
    /// empty; or by the task's agent, `by` its actor, through
    /// `Engine::withdraw_approval`).
    ApprovalResolved {
        request_seq: i64,
        outcome: String,
        #[serde(default)]
        by: Vec<String>,
        #[serde(default)]
        comment: Option<String>,
    },
    StepCompleted {
        step_seq: i64,
        attempt: u32,
        output: Value,
        started_at_ms: i64,
        duration_ms: u64,
    },
    /// An attempt failed and another one is due at `next_attempt_at_ms`.
    StepAttemptFailed {
        step_seq: i64,
        attempt: u32,
        error: RecordedError,
        started_at_ms: i64,
        duration_ms: u64,
        next_attempt_at_ms: i64,
    },
    /// The step failed for good (non-retryable error or attempts exhausted).
    StepFailed {
        step_seq: i64,
        attempt: u32,
        error: RecordedError,
        started_at_ms: i64,
        duration_ms: u64,
    },
    /// A durable sleep began.
    TimerStarted {
        command: u32,
        duration_ms: u64,
        fire_at_ms: i64,
    },
    TimerFired {
        timer_seq: i64,
    },
    /// The workflow began waiting for a named signal (an approval when `approval`).
    SignalWaitStarted {
        command: u32,
        name: String,
        #[serde(default)]
        approval: bool,
        #[serde(default)]
        deadline_at_ms: Option<i64>,
    },
    /// A signal arrived from outside. Signals are buffered until a wait consumes them.
    SignalReceived {
        name: String,
        payload: Value,
        sender: String,
    },
    /// A wait ended: with the signal at `signal_seq`, or by its deadline.
    SignalWaitResolved {
        wait_seq: i64,
        #[serde(default)]
        signal_seq: Option<i64>,
        timed_out: bool,
    },
    /// A value the workflow read from the outside world (`now()`), recorded so
    /// replay returns the same value.
    MarkerRecorded {
        command: u32,
        kind: String,
        value: Value,
    },
    /// The workflow code returned an error: the saga rolls back.
    WorkflowFailed {
        error: String,
    },
    /// An operator asked to stop the task.
    CancelRequested {
        rollback: bool,
        #[serde(default)]
        reason: Option<String>,
    },
    TaskPaused {
        #[serde(default)]
        reason: Option<String>,
    },
    TaskResumed {},
    /// An operator asked for the next attempts waiting on a retry backoff to
    /// run now.
    RetryRequested {},
    /// Rollback of the completed step at `step_seq` began.
    CompensationStarted {
        step_seq: i64,
        tool: String,
        input: Value,
        retry: RetryPolicy,
    },
    CompensationCompleted {
        compensation_seq: i64,
        attempt: u32,
        output: Value,
        started_at_ms: i64,
        duration_ms: u64,
    },
    CompensationAttemptFailed {
        compensation_seq: i64,
        attempt: u32,
        error: RecordedError,
        started_at_ms: i64,
        duration_ms: u64,
        next_attempt_at_ms: i64,
    },
    CompensationFailed {
        compensation_seq: i64,
        attempt: u32,
        error: RecordedError,
        started_at_ms: i64,
        duration_ms: u64,
    },
    /// A completed step that cannot be undone automatically was left for a person.
    CompensationSkipped {
        step_seq: i64,
        reason: String,
        #[serde(default)]
        recovery_path: Option<String>,
    },
    TaskCompleted {
        output: Value,
    },
    /// Every compensation ran; the task is over (`failed_terminal`).
    TaskFailed {
        error: String,
        compensated_steps: u32,
    },
    /// A person must act: a compensation failed for good, or a step could not be undone.
    TaskEscalated {
        reason: String,
        #[serde(default)]
        step_seq: Option<i64>,
        #[serde(default)]
        recovery_paths: Vec<String>,
    },
    TaskCancelled {
        rolled_back: bool,
        compensated_steps: u32,
    },
    /// The engine stopped advancing the task (non-determinism, limits). Nothing
    /// more runs until the cause is fixed.
    TaskBlocked {
        reason: String,
        #[serde(default)]
        at_seq: Option<i64>,
        #[serde(default)]
        expected: Option<String>,
        #[serde(default)]
        found: Option<String>,
    },
    /// A worker that took the task over re-runs a step attempt an earlier
    /// holder was running (or about to start), as a new attempt: the earlier
    /// one may still apply, so the tool is told the true attempt number and
    /// can tell a re-run from a first call.
    StepAttemptRestarted {
        step_seq: i64,
        /// The attempt this worker runs now (one past the earlier one).
        attempt: u32,
        reason: String,
    },
    /// Routing: who was told about the event at `about_seq` (a
    /// `PolicyEvaluated`, `StepFailed`, `CompensationFailed`,
    /// `TaskEscalated` or `ActionReported`), by which rule and why. Recorded
    /// with that event; deliveries are enqueued from it.
    OwnersNotified {
        about_seq: i64,
        routing: Box<RoutingRecord>,
    },
    /// A person answered a notification, with the identity of their token
    /// or signed link (the event's actor is `user:<identity>`).
    NotificationResponded {
        notification_id: String,
        #[serde(default)]
        about_seq: Option<i64>,
        /// `acknowledge`, `pause_task`, `pause_agent`, `cancel_rollback`,
        /// `trigger_recovery`, `assign`, `approve`, `reject`,
        /// `mark_reviewed`, `helpful`, `not_helpful`.
        action: String,
        identity: String,
        /// How the identity was established (`token:<name>`, `link`, `slack`).
        via: String,
        /// When the notification was delivered (for time to intervention).
        #[serde(default)]
        notified_at_ms: Option<i64>,
        /// For `assign`: the new owner.
        #[serde(default)]
        assign_to: Option<String>,
        #[serde(default)]
        comment: Option<String>,
    },
    /// A person closed an escalated task by saying what they did.
    EscalationResolved {
        identity: String,
        via: String,
        note: String,
        #[serde(default)]
        recovery_done: bool,
    },
    /// An agent reports a tool call it ran itself, outside Mandate (`POST
    /// /v1/actions`): an observed step, recorded after the fact and never
    /// gated. The event's actor is `agent:<agent>`, the reporting token's
    /// identity. Routed to owners like a monitored step (an
    /// `OwnersNotified` about it follows in the same append).
    ActionReported {
        /// The reporting agent (its token's identity, never a body field).
        agent: String,
        tool: String,
        /// The resource acted on, as the ownership map names it (`service:checkout`).
        #[serde(default)]
        resource: Option<String>,
        /// `sha256:<hex>` of the input the agent sent the tool.
        input_digest: String,
        /// `succeeded` or `failed`.
        outcome: String,
        /// What went wrong, for a failed action.
        #[serde(default)]
        error: Option<String>,
        /// When the agent ran the tool (its clock, epoch ms).
        occurred_at_ms: i64,
        /// How to undo it, if the agent knows.
        #[serde(default)]
        recovery_path: Option<String>,
    },
    /// Routing started a playbook (a registered workflow or plan) as the
    /// automated first response to the event at `about_seq`, as a rule of
    /// the `OwnersNotified` about it said; or could not, and why.
    PlaybookStarted {
        about_seq: i64,
        /// The playbook's id in the routing configuration.
        playbook: String,
        workflow: String,
        /// The task that runs it; none when it could not be started.
        #[serde(default)]
        playbook_task_id: Option<String>,
        #[serde(default)]
        error: Option<String>,
    },
}

impl EventPayload {
    /// The `type` string stored beside the payload.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::TaskSubmitted { .. } => "TaskSubmitted",
            Self::TaskStarted { .. } => "TaskStarted",
            Self::StepScheduled { .. } => "StepScheduled",
            Self::PolicyEvaluated { .. } => "PolicyEvaluated",
            Self::StepDenied { .. } => "StepDenied",
            Self::ApprovalRequested { .. } => "ApprovalRequested",
            Self::ApprovalDecided { .. } => "ApprovalDecided",
            Self::ApprovalEscalated { .. } => "ApprovalEscalated",
            Self::ApprovalEditEvaluated { .. } => "ApprovalEditEvaluated",
            Self::ApprovalResolved { .. } => "ApprovalResolved",
            Self::StepCompleted { .. } => "StepCompleted",
            Self::StepAttemptFailed { .. } => "StepAttemptFailed",
            Self::StepFailed { .. } => "StepFailed",
            Self::TimerStarted { .. } => "TimerStarted",
            Self::TimerFired { .. } => "TimerFired",
            Self::SignalWaitStarted { .. } => "SignalWaitStarted",
            Self::SignalReceived { .. } => "SignalReceived",
            Self::SignalWaitResolved { .. } => "SignalWaitResolved",
            Self::MarkerRecorded { .. } => "MarkerRecorded",
            Self::WorkflowFailed { .. } => "WorkflowFailed",
            Self::CancelRequested { .. } => "CancelRequested",
            Self::TaskPaused { .. } => "TaskPaused",
            Self::TaskResumed { .. } => "TaskResumed",
            Self::RetryRequested { .. } => "RetryRequested",
            Self::CompensationStarted { .. } => "CompensationStarted",
            Self::CompensationCompleted { .. } => "CompensationCompleted",
            Self::CompensationAttemptFailed { .. } => "CompensationAttemptFailed",
            Self::CompensationFailed { .. } => "CompensationFailed",
            Self::CompensationSkipped { .. } => "CompensationSkipped",
            Self::TaskCompleted { .. } => "TaskCompleted",
            Self::TaskFailed { .. } => "TaskFailed",
            Self::TaskEscalated { .. } => "TaskEscalated",
            Self::TaskCancelled { .. } => "TaskCancelled",
            Self::TaskBlocked { .. } => "TaskBlocked",
            Self::StepAttemptRestarted { .. } => "StepAttemptRestarted",
            Self::OwnersNotified { .. } => "OwnersNotified",
            Self::NotificationResponded { .. } => "NotificationResponded",
            Self::EscalationResolved { .. } => "EscalationResolved",
            Self::ActionReported { .. } => "ActionReported",
            Self::PlaybookStarted { .. } => "PlaybookStarted",
        }
    }

    /// Whether this event records a workflow command (matched in order on
    /// replay). A governed step's command is its `PolicyEvaluated`; its
    /// `StepScheduled` (which names that decision) is not a command.
    pub fn is_command(&self) -> bool {
        matches!(
            self,
            Self::StepScheduled {
                policy_seq: None,
                ..
            } | Self::PolicyEvaluated { .. }
                | Self::ApprovalRequested {
                    command: Some(_),
                    ..
                }
                | Self::TimerStarted { .. }
                | Self::SignalWaitStarted { .. }
                | Self::MarkerRecorded { .. }
        )
    }

    /// Splits into the stored `(type, payload)` pair.
    pub fn to_parts(&self) -> (&'static str, Value) {
        let mut value = serde_json::to_value(self).expect("event payloads always serialize");
        let payload = value
            .get_mut("payload")
            .map(Value::take)
            .unwrap_or_else(|| Value::Object(Default::default()));
        (self.type_name(), payload)
    }

    /// The payload part of [`to_parts`](Self::to_parts) in its two written
    /// forms, without building the `Value`: its RFC 8785 canonical bytes
    /// and its compact JSON text. Each is cut from the serialization of
    /// the whole adjacently tagged payload (`{"payload":…,"type":…}`
    /// canonically, `{"type":…,"payload":…}` compactly; a variant without
    /// fields has no `payload` and stands for `{}`).
    pub fn payload_forms(&self) -> Result<(Vec<u8>, String), String> {
        let mut tag = Vec::with_capacity(self.type_name().len() + 2);
        crate::jcs::write_str(&mut tag, self.type_name());
        let tag = String::from_utf8(tag).map_err(|e| e.to_string())?;

        let whole = crate::jcs_ser::to_vec(self)?;
        let only_tag = format!("{{\"type\":{tag}}}");
        let canonical = if whole == only_tag.as_bytes() {
            b"{}".to_vec()
        } else {
            let suffix = format!(",\"type\":{tag}}}");
            whole
                .strip_prefix(b"{\"payload\":".as_slice())
                .and_then(|rest| rest.strip_suffix(suffix.as_bytes()))
                .ok_or_else(|| {
                    format!(
                        "{} does not serialize as {{\"payload\", \"type\"}}",
                        self.type_name()
                    )
                })?
                .to_vec()
        };

        let whole = serde_json::to_string(self).map_err(|e| e.to_string())?;
        let text = if whole == only_tag {
            "{}".to_string()
        } else {
            let prefix = format!("{{\"type\":{tag},\"payload\":");
            whole
                .strip_prefix(prefix.as_str())
                .and_then(|rest| rest.strip_suffix('}'))
                .ok_or_else(|| {
                    format!(
                        "{} does not serialize as {{\"type\", \"payload\"}}",
                        self.type_name()
                    )
                })?
                .to_string()
        };
        Ok((canonical, text))
    }

    /// Rebuilds a payload from its stored `(type, payload)` pair.
    ///
    /// Reads the borrowed payload in place: the adjacently tagged form
    /// `{"type": …, "payload": …}` is presented as a two-entry map over
    /// the parts, so no copy of the payload is built first.
    pub fn from_parts(event_type: &str, payload: &Value) -> Result<Self, serde_json::Error> {
        use serde::Deserialize;
        use serde::de::value::MapDeserializer;
        let tag = Value::String(event_type.to_string());
        let entries = [("type", &tag), ("payload", payload)];
        let map: MapDeserializer<'_, _, serde_json::Error> =
            MapDeserializer::new(entries.into_iter());
        EventPayload::deserialize(map)
    }
}

/// One event of a history, as stored: the envelope, the payload, and its links in the chain.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub task_id: String,
    pub seq: i64,
    pub recorded_at_ms: i64,
    /// Who caused it: `engine`, `worker:<id>`, `agent:<name>`, `user:<name>`, `approver:<name>`.
    pub actor: String,
    pub payload: EventPayload,
    pub prev_hash: String,
    pub hash: String,
}

/// An event decided but not yet sealed into the chain.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub actor: String,
    pub payload: EventPayload,
}

impl NewEvent {
    pub fn engine(payload: EventPayload) -> Self {
        Self {
            actor: "engine".to_string(),
            payload,
        }
    }
}

/// Seals decided events into the chain after `(last_seq, last_hash)`.
///
/// Each payload is serialized twice, straight from its typed form: once
/// canonically for the hash (`jcs_ser`) and once compactly for the text
/// stored (`serde_json`), neither through a `Value`.
pub fn seal(
    task_id: &str,
    last_seq: i64,
    last_hash: &str,
    recorded_at_ms: i64,
    events: &[NewEvent],
) -> Vec<(Event, super::chain::SealedEvent)> {
    seal_owned(
        task_id,
        last_seq,
        last_hash,
        recorded_at_ms,
        events.to_vec(),
    )
}

/// [`seal`], taking the events: their payloads move into the events
/// returned instead of being copied (what a driver appending a decision
/// needs, once per event it records).
pub fn seal_owned(
    task_id: &str,
    last_seq: i64,
    last_hash: &str,
    recorded_at_ms: i64,
    events: Vec<NewEvent>,
) -> Vec<(Event, super::chain::SealedEvent)> {
    let mut prev = if last_seq == 0 {
        super::chain::GENESIS_HASH.to_string()
    } else {
        last_hash.to_string()
    };
    events
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let event_type = e.payload.type_name();
            let seq = last_seq + 1 + i as i64;
            // Payloads were checked against the limits (which include
            // canonicalization) before they were decided.
            let (canonical, text) = e
                .payload
                .payload_forms()
                .expect("decided payloads are canonicalizable");
            let bytes = super::chain::canonical_document(
                task_id,
                seq,
                event_type,
                recorded_at_ms,
                &e.actor,
                |out| {
                    out.extend_from_slice(&canonical);
                    Ok(())
                },
            )
            .expect("decided payloads are canonicalizable");
            let hash = super::chain::link_hash(&prev, &bytes);
            let prev_hash = std::mem::replace(&mut prev, hash.clone());
            let event = Event {
                task_id: task_id.to_string(),
                seq,
                recorded_at_ms,
                actor: e.actor.clone(),
                payload: e.payload,
                prev_hash: prev_hash.clone(),
                hash: hash.clone(),
            };
            let sealed = super::chain::SealedEvent {
                task_id: task_id.to_string(),
                seq,
                event_type: event_type.to_string(),
                recorded_at_ms,
                actor: e.actor,
                payload: text,
                prev_hash,
                hash,
            };
            (event, sealed)
        })
        .collect()
}

/// Parses a verified raw event into a typed one.
pub fn parse(raw: &super::chain::RawEvent) -> Result<Event, String> {
    let payload = EventPayload::from_parts(&raw.event_type, &raw.payload).map_err(|e| {
        format!(
            "task {} event seq {}: {} payload does not parse: {e}",
            raw.task_id, raw.seq, raw.event_type
        )
    })?;
    Ok(Event {
        task_id: raw.task_id.clone(),
        seq: raw.seq,
        recorded_at_ms: raw.recorded_at_ms,
        actor: raw.actor.clone(),
        payload,
        prev_hash: raw.prev_hash.clone(),
        hash: raw.hash.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip() {
        let p = EventPayload::TimerFired { timer_seq: 4 };
        let (t, v) = p.to_parts();
        assert_eq!(t, "TimerFired");
        assert_eq!(v, serde_json::json!({"timer_seq": 4}));
        assert_eq!(EventPayload::from_parts(t, &v).unwrap(), p);
        let r = EventPayload::TaskResumed {};
        let (t, v) = r.to_parts();
        assert_eq!(EventPayload::from_parts(t, &v).unwrap(), r);
    }
}
