//! The task state: a pure fold over a history (`evolve`), and the status derived from it.
//!
//! Nothing here reads a clock or does I/O: times come from the events themselves
//! or are passed in.

use std::collections::{BTreeMap, BTreeSet};

use crate::tool::ToolKind;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::event::{Compensation, EventPayload, RecordedError};
use super::gateway::GatewayDecision;
use super::retry::RetryPolicy;

/// The statuses of SPEC §3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Queued,
    Running,
    NeedsApproval,
    Executing,
    FailedRetryable,
    Compensating,
    Completed,
    FailedTerminal,
    EscalatedToHuman,
    Cancelled,
    Paused,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 11] = [
        Self::Queued,
        Self::Running,
        Self::NeedsApproval,
        Self::Executing,
        Self::FailedRetryable,
        Self::Compensating,
        Self::Completed,
        Self::FailedTerminal,
        Self::EscalatedToHuman,
        Self::Cancelled,
        Self::Paused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::NeedsApproval => "needs_approval",
            Self::Executing => "executing",
            Self::FailedRetryable => "failed_retryable",
            Self::Compensating => "compensating",
            Self::Completed => "completed",
            Self::FailedTerminal => "failed_terminal",
            Self::EscalatedToHuman => "escalated_to_human",
            Self::Cancelled => "cancelled",
            Self::Paused => "paused",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Final for the engine: nothing more runs.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::FailedTerminal | Self::EscalatedToHuman | Self::Cancelled
        )
    }
}

impl std::fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a step or compensation ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Completed { output: Value, at_seq: i64 },
    Failed { error: RecordedError, at_seq: i64 },
}

/// A scheduled step and what became of it.
#[derive(Debug, Clone, PartialEq)]
pub struct StepState {
    pub seq: i64,
    pub command: u32,
    pub name: String,
    pub tool: String,
    pub kind: ToolKind,
    pub input: Value,
    pub retry: RetryPolicy,
    pub timeout_ms: u64,
    pub compensation: Option<Compensation>,
    pub recovery_path: Option<String>,
    pub failed_attempts: u32,
    /// Set while waiting for the next attempt after a retryable failure.
    pub next_attempt_at_ms: Option<i64>,
    pub outcome: Option<Outcome>,
    /// Some failed attempt may have had its effect (see `RecordedError::effect_unknown`).
    pub effect_unknown: bool,
    /// Attempts re-run after a takeover (`StepAttemptRestarted`); each counts.
    pub restarts: u32,
    /// The last restarted attempt: an earlier holder's attempt may still apply.
    pub restarted_attempt: Option<u32>,
}

impl StepState {
    /// Whether a rollback must undo this step: it completed, or it failed but
    /// an attempt may have had its effect.
    pub fn needs_undo(&self) -> bool {
        match &self.outcome {
            Some(Outcome::Completed { .. }) => true,
            Some(Outcome::Failed { .. }) => self.effect_unknown,
            None => false,
        }
    }

    /// The seq of the event that resolved the step.
    pub fn resolved_at_seq(&self) -> Option<i64> {
        match &self.outcome {
            Some(Outcome::Completed { at_seq, .. }) | Some(Outcome::Failed { at_seq, .. }) => {
                Some(*at_seq)
            }
            None => None,
        }
    }

    pub fn is_resolved(&self) -> bool {
        self.outcome.is_some()
    }
    pub fn next_attempt(&self) -> u32 {
        self.failed_attempts + self.restarts + 1
    }
}

/// A compensation that was started and what became of it.
#[derive(Debug, Clone, PartialEq)]
pub struct CompensationState {
    pub seq: i64,
    pub step_seq: i64,
    pub tool: String,
    pub input: Value,
    pub retry: RetryPolicy,
    pub failed_attempts: u32,
    pub next_attempt_at_ms: Option<i64>,
    pub outcome: Option<Outcome>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TimerState {
    pub seq: i64,
    pub fire_at_ms: i64,
    pub fired: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WaitState {
    pub seq: i64,
    pub name: String,
    pub approval: bool,
    pub deadline_at_ms: Option<i64>,
    pub resolved: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SignalState {
    pub seq: i64,
    pub name: String,
    pub payload: Value,
    pub sender: String,
    pub consumed: bool,
}

/// A step the gateway decided (`PolicyEvaluated`), keyed by that event's seq.
#[derive(Debug, Clone, PartialEq)]
pub struct GateState {
    pub seq: i64,
    pub command: u32,
    pub name: String,
    pub tool: String,
    pub kind: ToolKind,
    /// The input the workflow asked for.
    pub input: Value,
    pub retry: RetryPolicy,
    pub timeout_ms: u64,
    pub compensation: Option<Compensation>,
    pub recovery_path: Option<String>,
    pub decision: GatewayDecision,
    /// The `StepScheduled` that followed, once the step may run.
    pub step_seq: Option<i64>,
    /// Why the step will not run (`StepDenied`).
    pub denied: Option<String>,
}

impl GateState {
    /// Whether the gate is closed: scheduled or denied.
    pub fn is_resolved(&self) -> bool {
        self.step_seq.is_some() || self.denied.is_some()
    }
}

/// One approver's recorded decision.
#[derive(Debug, Clone, PartialEq)]
pub struct ApprovalDecisionState {
    pub seq: i64,
    pub identity: String,
    pub approved: bool,
    pub comment: Option<String>,
    pub edit: Option<Value>,
    pub recorded_at_ms: i64,
}

/// An approval request (`ApprovalRequested`), keyed by its seq.
#[derive(Debug, Clone, PartialEq)]
pub struct ApprovalState {
    pub seq: i64,
    /// The workflow's own approval wait (a command).
    pub command: Option<u32>,
    /// A gated step's decision.
    pub policy_seq: Option<i64>,
    pub subject: String,
    pub input: Option<Value>,
    pub approvers: Vec<String>,
    pub quorum: u32,
    pub timeout_ms: u64,
    pub requested_at_ms: i64,
    /// Absolute; moved only by a recorded escalation.
    pub deadline_at_ms: i64,
    pub escalation: Option<String>,
    pub escalated_to: Option<String>,
    pub decisions: Vec<ApprovalDecisionState>,
    pub edit_evaluated: Option<(Value, GatewayDecision)>,
    /// The rules the request was made under.
    pub decided_by: Vec<super::gateway::RuleRef>,
    /// Set when resolved: `approved`, `rejected`, `timed_out`, `edit_denied`, `superseded`.
    pub outcome: Option<String>,
}

impl ApprovalState {
    /// Distinct identities that approved, in order.
    pub fn approved_by(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for d in self.decisions.iter().filter(|d| d.approved) {
            if !out.contains(&d.identity) {
                out.push(d.identity.clone());
            }
        }
        out
    }

    pub fn is_open(&self) -> bool {
        self.outcome.is_none()
    }

    /// The input the approvers decide on (`base`: the request's, else the
    /// gate's `gate_input`) and that input with every recorded edit merged in
    /// order, then `extra` (an edit not recorded yet, to preview).
    pub fn edited_input(&self, gate_input: &Value, extra: Option<&Value>) -> (Value, Value) {
        let base = self.input.clone().unwrap_or_else(|| gate_input.clone());
        let mut input = base.clone();
        for e in self
            .decisions
            .iter()
            .filter_map(|d| d.edit.as_ref())
            .chain(extra)
        {
            input = super::gateway::merge_edit(&input, e);
        }
        (base, input)
    }
}

/// Why the saga is rolling back.
#[derive(Debug, Clone, PartialEq)]
pub enum RollbackCause {
    WorkflowFailed(String),
    Cancelled,
}

/// Everything the engine knows about a task, rebuilt from its history alone.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TaskState {
    pub task_id: String,
    pub workflow: String,
    pub workflow_version: u32,
    pub input: Value,
    pub agent: Option<String>,
    pub on_behalf_of: Option<String>,
    pub idempotency_key: Option<String>,
    pub submitted_at_ms: i64,
    pub updated_at_ms: i64,
    pub last_seq: i64,
    pub last_hash: String,
    pub started: bool,
    pub commands: u32,
    pub steps: BTreeMap<i64, StepState>,
    /// Seqs of the steps not resolved yet (an index into `steps`, so that a
    /// decision looks at the open steps without walking every step).
    open_steps: BTreeSet<i64>,
    /// Seqs of completed steps, in the order they completed.
    pub completion_order: Vec<i64>,
    pub timers: BTreeMap<i64, TimerState>,
    pub waits: BTreeMap<i64, WaitState>,
    pub signals: BTreeMap<i64, SignalState>,
    pub compensations: BTreeMap<i64, CompensationState>,
    /// Steps decided by the gateway, by `PolicyEvaluated` seq.
    pub gates: BTreeMap<i64, GateState>,
    /// Approval requests, by `ApprovalRequested` seq.
    pub approvals: BTreeMap<i64, ApprovalState>,
    /// Steps whose rollback was handled (compensation started or skipped).
    pub rollback_handled: BTreeMap<i64, bool>,
    /// Steps skipped during rollback because they cannot be undone automatically.
    pub skipped: Vec<(i64, Option<String>)>,
    pub rollback: Option<RollbackCause>,
    pub cancel_requested: Option<bool>,
    pub paused: bool,
    pub final_status: Option<TaskStatus>,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub blocked: Option<String>,
    /// An `escalated_to_human` task a person closed (`EscalationResolved`).
    pub escalation_resolved: bool,
}

impl TaskState {
    /// Folds a whole history.
    pub fn fold<'a>(events: impl IntoIterator<Item = &'a super::event::Event>) -> Self {
        let mut state = Self::default();
        for e in events {
            state.apply(&e.task_id, e.seq, e.recorded_at_ms, &e.payload);
            state.last_hash = e.hash.clone();
        }
        state
    }

    /// `evolve`: applies one event. Events are trusted to be well-formed (they were
    /// decided by this module's counterpart); references to unknown seqs are ignored.
    pub fn apply(&mut self, task_id: &str, seq: i64, recorded_at_ms: i64, payload: &EventPayload) {
        self.last_seq = seq;
        self.updated_at_ms = recorded_at_ms;
        use EventPayload as E;
        match payload {
            E::TaskSubmitted {
                workflow,
                workflow_version,
                input,
                agent,
                on_behalf_of,
                idempotency_key,
            } => {
                self.task_id = task_id.to_string();
                self.workflow = workflow.clone();
                self.workflow_version = *workflow_version;
                self.input = input.clone();
                self.agent = agent.clone();
                self.on_behalf_of = on_behalf_of.clone();
                self.idempotency_key = idempotency_key.clone();
                self.submitted_at_ms = recorded_at_ms;
            }
            E::TaskStarted { .. } => self.started = true,
            E::StepScheduled {
                command,
                name,
                tool,
                kind,
                input,
                retry,
                timeout_ms,
                compensation,
                recovery_path,
                policy_seq,
            } => {
                self.commands = self.commands.max(command + 1);
                if let Some(g) = policy_seq.and_then(|p| self.gates.get_mut(&p)) {
                    g.step_seq = Some(seq);
                }
                self.open_steps.insert(seq);
                self.steps.insert(
                    seq,
                    StepState {
                        seq,
                        command: *command,
                        name: name.clone(),
                        tool: tool.clone(),
                        kind: *kind,
                        input: input.clone(),
                        retry: retry.clone(),
                        timeout_ms: *timeout_ms,
                        compensation: compensation.clone(),
                        recovery_path: recovery_path.clone(),
                        failed_attempts: 0,
                        next_attempt_at_ms: None,
                        outcome: None,
                        effect_unknown: false,
                        restarts: 0,
                        restarted_attempt: None,
                    },
                );
            }
            E::PolicyEvaluated {
                command,
                name,
                tool,
                kind,
                input,
                retry,
                timeout_ms,
                compensation,
                recovery_path,
                decision,
                ..
            } => {
                self.commands = self.commands.max(command + 1);
                self.gates.insert(
                    seq,
                    GateState {
                        seq,
                        command: *command,
                        name: name.clone(),
                        tool: tool.clone(),
                        kind: *kind,
                        input: input.clone(),
                        retry: retry.clone(),
                        timeout_ms: *timeout_ms,
                        compensation: compensation.clone(),
                        recovery_path: recovery_path.clone(),
                        decision: (**decision).clone(),
                        step_seq: None,
                        denied: None,
                    },
                );
            }
            E::StepDenied {
                policy_seq, reason, ..
            } => {
                if let Some(g) = self.gates.get_mut(policy_seq) {
                    g.denied = Some(reason.clone());
                }
            }
            E::ApprovalRequested {
                command,
                policy_seq,
                subject,
                input,
                approvers,
                quorum,
                timeout_ms,
                deadline_at_ms,
                escalation,
                decided_by,
                ..
            } => {
                if let Some(c) = command {
                    self.commands = self.commands.max(c + 1);
                }
                self.approvals.insert(
                    seq,
                    ApprovalState {
                        seq,
                        command: *command,
                        policy_seq: *policy_seq,
                        subject: subject.clone(),
                        input: input.clone(),
                        approvers: approvers.clone(),
                        quorum: *quorum,
                        timeout_ms: *timeout_ms,
                        requested_at_ms: recorded_at_ms,
                        deadline_at_ms: *deadline_at_ms,
                        escalation: escalation.clone(),
                        escalated_to: None,
                        decisions: Vec::new(),
                        edit_evaluated: None,
                        decided_by: decided_by.clone(),
                        outcome: None,
                    },
                );
            }
            E::ApprovalDecided {
                request_seq,
                identity,
                approved,
                comment,
                edit,
                ..
            } => {
                if let Some(a) = self.approvals.get_mut(request_seq) {
                    a.decisions.push(ApprovalDecisionState {
                        seq,
                        identity: identity.clone(),
                        approved: *approved,
                        comment: comment.clone(),
                        edit: edit.clone(),
                        recorded_at_ms,
                    });
                }
            }
            E::ApprovalEscalated {
                request_seq,
                to,
                deadline_at_ms,
            } => {
                if let Some(a) = self.approvals.get_mut(request_seq) {
                    a.escalated_to = Some(to.clone());
                    a.deadline_at_ms = *deadline_at_ms;
                }
            }
            E::ApprovalEditEvaluated {
                request_seq,
                input,
                decision,
            } => {
                if let Some(a) = self.approvals.get_mut(request_seq) {
                    a.edit_evaluated = Some((input.clone(), (**decision).clone()));
                }
            }
            E::ApprovalResolved {
                request_seq,
                outcome,
                ..
            } => {
                if let Some(a) = self.approvals.get_mut(request_seq) {
                    a.outcome = Some(outcome.clone());
                }
            }
            E::StepCompleted {
                step_seq, output, ..
            } => {
                if let Some(s) = self.steps.get_mut(step_seq) {
                    self.open_steps.remove(step_seq);
                    s.next_attempt_at_ms = None;
                    s.outcome = Some(Outcome::Completed {
                        output: output.clone(),
                        at_seq: seq,
                    });
                    self.completion_order.push(*step_seq);
                }
            }
            E::StepAttemptFailed {
                step_seq,
                next_attempt_at_ms,
                error,
                ..
            } => {
                if let Some(s) = self.steps.get_mut(step_seq) {
                    s.effect_unknown |= error.effect_unknown;
                    s.failed_attempts += 1;
                    s.next_attempt_at_ms = Some(*next_attempt_at_ms);
                }
            }
            E::StepAttemptRestarted {
                step_seq, attempt, ..
            } => {
                if let Some(s) = self.steps.get_mut(step_seq) {
                    s.restarts += 1;
                    s.restarted_attempt = Some(*attempt);
                }
            }
            E::StepFailed {
                step_seq, error, ..
            } => {
                if let Some(s) = self.steps.get_mut(step_seq) {
                    self.open_steps.remove(step_seq);
                    s.effect_unknown |= error.effect_unknown;
                    s.failed_attempts += 1;
                    s.next_attempt_at_ms = None;
                    s.outcome = Some(Outcome::Failed {
                        error: error.clone(),
                        at_seq: seq,
                    });
                }
            }
            E::TimerStarted {
                command,
                fire_at_ms,
                ..
            } => {
                self.commands = self.commands.max(command + 1);
                self.timers.insert(
                    seq,
                    TimerState {
                        seq,
                        fire_at_ms: *fire_at_ms,
                        fired: false,
                    },
                );
            }
            E::TimerFired { timer_seq } => {
                if let Some(t) = self.timers.get_mut(timer_seq) {
                    t.fired = true;
                }
            }
            E::SignalWaitStarted {
                command,
                name,
                approval,
                deadline_at_ms,
            } => {
                self.commands = self.commands.max(command + 1);
                self.waits.insert(
                    seq,
                    WaitState {
                        seq,
                        name: name.clone(),
                        approval: *approval,
                        deadline_at_ms: *deadline_at_ms,
                        resolved: false,
                    },
                );
            }
            E::SignalReceived {
                name,
                payload,
                sender,
            } => {
                self.signals.insert(
                    seq,
                    SignalState {
                        seq,
                        name: name.clone(),
                        payload: payload.clone(),
                        sender: sender.clone(),
                        consumed: false,
                    },
                );
            }
            E::SignalWaitResolved {
                wait_seq,
                signal_seq,
                ..
            } => {
                if let Some(w) = self.waits.get_mut(wait_seq) {
                    w.resolved = true;
                }
                if let Some(s) = signal_seq.and_then(|s| self.signals.get_mut(&s)) {
                    s.consumed = true;
                }
            }
            E::MarkerRecorded { command, .. } => {
                self.commands = self.commands.max(command + 1);
            }
            E::WorkflowFailed { error } => {
                self.error = Some(error.clone());
                self.rollback = Some(RollbackCause::WorkflowFailed(error.clone()));
            }
            E::CancelRequested { rollback, .. } => {
                self.cancel_requested = Some(*rollback);
                if *rollback && self.rollback.is_none() {
                    self.rollback = Some(RollbackCause::Cancelled);
                }
            }
            E::TaskPaused { .. } => self.paused = true,
            E::TaskResumed {} => self.paused = false,
            E::RetryRequested {} => {
                // Backoffs end now; attempt counts and limits are unchanged.
                for s in self.steps.values_mut() {
                    if s.next_attempt_at_ms.is_some() {
                        s.next_attempt_at_ms = Some(recorded_at_ms);
                    }
                }
                for c in self.compensations.values_mut() {
                    if c.next_attempt_at_ms.is_some() {
                        c.next_attempt_at_ms = Some(recorded_at_ms);
                    }
                }
            }
            E::CompensationStarted {
                step_seq,
                tool,
                input,
                retry,
            } => {
                self.rollback_handled.insert(*step_seq, true);
                self.compensations.insert(
                    seq,
                    CompensationState {
                        seq,
                        step_seq: *step_seq,
                        tool: tool.clone(),
                        input: input.clone(),
                        retry: retry.clone(),
                        failed_attempts: 0,
                        next_attempt_at_ms: None,
                        outcome: None,
                    },
                );
            }
            E::CompensationCompleted {
                compensation_seq,
                output,
                ..
            } => {
                if let Some(c) = self.compensations.get_mut(compensation_seq) {
                    c.next_attempt_at_ms = None;
                    c.outcome = Some(Outcome::Completed {
                        output: output.clone(),
                        at_seq: seq,
                    });
                }
            }
            E::CompensationAttemptFailed {
                compensation_seq,
                next_attempt_at_ms,
                ..
            } => {
                if let Some(c) = self.compensations.get_mut(compensation_seq) {
                    c.failed_attempts += 1;
                    c.next_attempt_at_ms = Some(*next_attempt_at_ms);
                }
            }
            E::CompensationFailed {
                compensation_seq,
                error,
                ..
            } => {
                if let Some(c) = self.compensations.get_mut(compensation_seq) {
                    c.failed_attempts += 1;
                    c.next_attempt_at_ms = None;
                    c.outcome = Some(Outcome::Failed {
                        error: error.clone(),
                        at_seq: seq,
                    });
                }
            }
            E::CompensationSkipped {
                step_seq,
                recovery_path,
                ..
            } => {
                self.rollback_handled.insert(*step_seq, false);
                self.skipped.push((*step_seq, recovery_path.clone()));
            }
            E::TaskCompleted { output } => {
                self.output = Some(output.clone());
                self.final_status = Some(TaskStatus::Completed);
            }
            E::TaskFailed { error, .. } => {
                self.error = Some(error.clone());
                self.final_status = Some(TaskStatus::FailedTerminal);
            }
            E::TaskEscalated { reason, .. } => {
                self.error = Some(reason.clone());
                self.final_status = Some(TaskStatus::EscalatedToHuman);
            }
            E::TaskCancelled { .. } => self.final_status = Some(TaskStatus::Cancelled),
            E::TaskBlocked { reason, .. } => self.blocked = Some(reason.clone()),
            // Routing and people's answers are records; a response that
            // acts (pause, cancel, approve) appends its own event too.
            // A reported action happened outside the engine: nothing to run.
            // A playbook runs as a task of its own.
            E::OwnersNotified { .. }
            | E::NotificationResponded { .. }
            | E::ActionReported { .. }
            | E::PlaybookStarted { .. } => {}
            E::EscalationResolved { .. } => self.escalation_resolved = true,
        }
    }

    /// The status derived from the state (SPEC §3).
    pub fn status(&self) -> TaskStatus {
        if let Some(s) = self.final_status {
            return s;
        }
        if self.paused {
            return TaskStatus::Paused;
        }
        if self.rollback.is_some() {
            return TaskStatus::Compensating;
        }
        if !self.started {
            return TaskStatus::Queued;
        }
        if self.waits.values().any(|w| w.approval && !w.resolved)
            || self.approvals.values().any(ApprovalState::is_open)
        {
            return TaskStatus::NeedsApproval;
        }
        let open = || self.open_steps();
        if open().any(|s| s.next_attempt_at_ms.is_some()) {
            return TaskStatus::FailedRetryable;
        }
        if open().any(|s| s.kind.is_write()) {
            return TaskStatus::Executing;
        }
        TaskStatus::Running
    }

    pub fn is_final(&self) -> bool {
        self.final_status.is_some()
    }

    /// Steps that have not resolved (in flight or waiting for a retry).
    pub fn open_steps(&self) -> impl Iterator<Item = &StepState> {
        self.open_steps.iter().filter_map(|seq| self.steps.get(seq))
    }

    /// The compensation currently running or waiting for a retry, if any.
    pub fn open_compensation(&self) -> Option<&CompensationState> {
        self.compensations.values().find(|c| c.outcome.is_none())
    }

    /// Timers the engine must honour: `(seq, fire_at_ms, kind)` of every pending
    /// durable timer, retry backoff and signal deadline.
    pub fn pending_timers(&self) -> Vec<PendingTimer> {
        if self.is_final() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for t in self.timers.values().filter(|t| !t.fired) {
            out.push(PendingTimer {
                seq: t.seq,
                fire_at_ms: t.fire_at_ms,
                kind: TimerKind::Sleep,
            });
        }
        for w in self.waits.values().filter(|w| !w.resolved) {
            if let Some(d) = w.deadline_at_ms {
                out.push(PendingTimer {
                    seq: w.seq,
                    fire_at_ms: d,
                    kind: TimerKind::SignalDeadline,
                });
            }
        }
        for a in self.approvals.values().filter(|a| a.is_open()) {
            out.push(PendingTimer {
                seq: a.seq,
                fire_at_ms: a.deadline_at_ms,
                kind: TimerKind::SignalDeadline,
            });
        }
        for s in self.open_steps() {
            if let Some(at) = s.next_attempt_at_ms {
                out.push(PendingTimer {
                    seq: s.seq,
                    fire_at_ms: at,
                    kind: TimerKind::Retry,
                });
            }
        }
        for c in self.compensations.values().filter(|c| c.outcome.is_none()) {
            if let Some(at) = c.next_attempt_at_ms {
                out.push(PendingTimer {
                    seq: c.seq,
                    fire_at_ms: at,
                    kind: TimerKind::Retry,
                });
            }
        }
        out.sort_by_key(|t| (t.fire_at_ms, t.seq));
        out
    }
}

/// What a pending timer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimerKind {
    Sleep,
    SignalDeadline,
    Retry,
}

impl TimerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sleep => "sleep",
            Self::SignalDeadline => "signal_deadline",
            Self::Retry => "retry",
        }
    }
}

/// One row of the derived `timers` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingTimer {
    pub seq: i64,
    pub fire_at_ms: i64,
    pub kind: TimerKind,
}
