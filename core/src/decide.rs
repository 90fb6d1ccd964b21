//! `decide`: given a task's history, the attempt outcomes the shell collected and
//! the time, which events come next. Also `actions` (what must execute now) and
//! `projection` (the derived rows the store writes with the append).
//!
//! Pure: the time is an argument, tools are only looked up (never called), and the
//! workflow is only replayed.

use std::collections::HashMap;

use crate::gateway::{
    ApprovalRequirement, EditVerdict, Gateway, GatewayDecision, GatewayRequest, InterventionPath,
    Preapproval, Principal, apply_preapproval, edit_verdict,
};
use crate::tool::{ToolCatalog, ToolKind};
use serde_json::Value;

use super::event::{Event, EventPayload, NewEvent, PollPoints, RecordedError};
use super::limits::Limits;
use super::state::{Outcome, PendingTimer, RollbackCause, TaskState, TaskStatus};
use super::workflow::{
    DEFAULT_STEP_TIMEOUT_MS, MAX_STEP_TIMEOUT_MS, NewCommand, Workflow, WorkflowInstance,
};

/// A routed event's one-line summary is cut to this many characters.
pub const MAX_ROUTING_SUMMARY_CHARS: usize = 500;

/// What a step or compensation attempt targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// The step scheduled at this seq.
    Step(i64),
    /// The compensation started at this seq.
    Compensation(i64),
}

impl Target {
    pub fn seq(self) -> i64 {
        match self {
            Self::Step(s) | Self::Compensation(s) => s,
        }
    }
}

/// The result of one attempt, as the shell observed it.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptOutcome {
    pub target: Target,
    pub attempt: u32,
    pub result: Result<Value, RecordedError>,
    pub started_at_ms: i64,
    pub duration_ms: u64,
}

/// A tool call the shell must run now.
#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    pub target: Target,
    pub tool: String,
    pub input: Value,
    pub attempt: u32,
    pub timeout_ms: u64,
    /// For a compensation, the seq of the step it undoes: the shell passes
    /// that step's idempotency key to the tool so it can fence it
    /// (`ToolContext::compensates`). `None` for a step.
    pub compensates_step_seq: Option<i64>,
}

/// Everything `decide` needs.
pub struct DecideInput<'a> {
    /// The persisted history the state was folded from.
    pub history: &'a [Event],
    pub now_ms: i64,
    pub outcomes: &'a [AttemptOutcome],
    /// `None` when the workflow is not registered in this binary.
    pub workflow: Option<&'a dyn Workflow>,
    pub tools: &'a dyn ToolCatalog,
    /// The governance every step passes before it is scheduled.
    pub gateway: &'a dyn Gateway,
    /// Pre-approvals in force (granted through their own API); a gated step
    /// they cover is scheduled without waiting, and its decision names the
    /// one used.
    pub preapprovals: &'a [Preapproval],
    pub worker: &'a str,
    pub limits: &'a Limits,
    /// An active halt (kill switch) covering this task: no new step starts.
    pub halt: Option<&'a HaltNotice>,
    /// Step attempts an earlier holder of the task may also have started
    /// (step seq → attempt): the next attempt of each step open when this
    /// worker loaded the task. Its twin may still apply, so if this
    /// worker's attempt fails, or the step is abandoned, the step's effect
    /// is unknown. Empty when nobody held the task before (and in tests).
    pub inherited: &'a HashMap<i64, u32>,
}

/// The halt a task falls under, as `decide` needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaltNotice {
    pub id: String,
    pub reason: Option<String>,
}

/// The actor of the pause a halt records (`halt:<id>`), so lifting the halt
/// can find the tasks it paused.
pub fn halt_actor(halt_id: &str) -> String {
    format!("halt:{halt_id}")
}

/// The events decided, and the state after them.
#[derive(Debug)]
pub struct Decision {
    pub events: Vec<NewEvent>,
    pub state: TaskState,
    /// The workflow's code as it ran for this decision, fed its events
    /// (see [`decide_with`]): keep it for the next decision only once
    /// exactly these events are appended, and then
    /// [`confirm`](WorkflowInstance::confirm) it against the history.
    pub instance: Option<WorkflowInstance>,
}

struct Draft<'a> {
    input: &'a DecideInput<'a>,
    /// The last seq of the persisted history (new events follow it).
    base_seq: i64,
    state: TaskState,
    new: Vec<NewEvent>,
    /// The workflow's code, fed every event up to its `fed_seq` (persisted
    /// ones, then `new`'s).
    instance: Option<WorkflowInstance>,
}

impl Draft<'_> {
    fn push(&mut self, actor: &str, payload: EventPayload) {
        let seq = self.state.last_seq + 1;
        let task_id = self.state.task_id.clone();
        self.state.apply(&task_id, seq, self.input.now_ms, &payload);
        self.new.push(NewEvent {
            actor: actor.to_string(),
            payload,
        });
    }

    fn engine(&mut self, payload: EventPayload) {
        self.push("engine", payload);
    }

    /// Routing: asks the gateway's router about each event of this decision
    /// that people may need to hear of, and records each non-empty answer
    /// as `OwnersNotified` after them, in the same decision (so the step it
    /// concerns is scheduled without waiting, and replay never routes again).
    fn route_new_events(&mut self) {
        use crate::routing::{RoutedOutcome, RoutingRequest};
        let principal = self.principal();
        let mut records = Vec::new();
        for (i, e) in self.new.iter().enumerate() {
            let about_seq = self.base_seq + 1 + i as i64;
            let gate_of = |step_seq: i64| {
                self.state
                    .gates
                    .values()
                    .find(|g| g.step_seq == Some(step_seq))
            };
            let (tool, decision, outcome, step_seq, summary, recovery) = match &e.payload {
                EventPayload::PolicyEvaluated {
                    name,
                    tool,
                    decision,
                    recovery_path,
                    ..
                } => (
                    tool.clone(),
                    Some(&**decision),
                    None,
                    None,
                    format!(
                        "step {name:?} ({tool}) on {}: {}",
                        decision.scope.as_deref().unwrap_or("*"),
                        decision.path
                    ),
                    recovery_path.clone(),
                ),
                EventPayload::StepFailed {
                    step_seq, error, ..
                } => {
                    let Some(step) = self.state.steps.get(step_seq) else {
                        continue;
                    };
                    (
                        step.tool.clone(),
                        gate_of(*step_seq).map(|g| &g.decision),
                        Some(RoutedOutcome::StepFailed),
                        Some(*step_seq),
                        format!(
                            "step {:?} ({}) failed: {}",
                            step.name, step.tool, error.message
                        ),
                        step.recovery_path.clone(),
                    )
                }
                EventPayload::CompensationFailed {
                    compensation_seq,
                    error,
                    ..
                } => {
                    let Some(c) = self.state.compensations.get(compensation_seq) else {
                        continue;
                    };
                    let step = self.state.steps.get(&c.step_seq);
                    (
                        step.map(|s| s.tool.clone())
                            .unwrap_or_else(|| c.tool.clone()),
                        gate_of(c.step_seq).map(|g| &g.decision),
                        Some(RoutedOutcome::CompensationFailed),
                        Some(c.step_seq),
                        format!("compensation {} failed: {}", c.tool, error.message),
                        step.and_then(|s| s.recovery_path.clone()),
                    )
                }
                EventPayload::TaskEscalated {
                    reason,
                    step_seq,
                    recovery_paths,
                } => {
                    let step = step_seq.and_then(|s| self.state.steps.get(&s));
                    (
                        step.map(|s| s.tool.clone()).unwrap_or_default(),
                        step_seq.and_then(gate_of).map(|g| &g.decision),
                        Some(RoutedOutcome::TaskEscalated),
                        *step_seq,
                        format!("task escalated to a human: {reason}"),
                        (!recovery_paths.is_empty()).then(|| recovery_paths.join(" | ")),
                    )
                }
                _ => continue,
            };
            let summary: String = summary.chars().take(MAX_ROUTING_SUMMARY_CHARS).collect();
            let request = RoutingRequest {
                task_id: &self.state.task_id,
                about_seq,
                step_seq,
                principal: &principal,
                tool: &tool,
                resource: None,
                decision,
                outcome,
                summary: &summary,
                recovery_path: recovery.as_deref(),
                now_ms: self.input.now_ms,
            };
            if let Some(record) = self.input.gateway.route(&request)
                && record.acts()
            {
                records.push((about_seq, Box::new(record)));
            }
        }
        for (about_seq, routing) in records {
            self.engine(EventPayload::OwnersNotified { about_seq, routing });
        }
    }

    fn worker_actor(&self) -> String {
        format!("worker:{}", self.input.worker)
    }

    fn record_outcome(&mut self, o: &AttemptOutcome) {
        let now = self.input.now_ms;
        // An output over the limits is refused, never truncated.
        let result = match &o.result {
            Ok(v) => match self.input.limits.check_payload(v) {
                Ok(()) => Ok(v.clone()),
                Err(e) => Err(RecordedError {
                    message: format!("tool output refused: {e}"),
                    retryable: false,
                    // The tool ran and returned: its effect happened.
                    effect_unknown: true,
                }),
            },
            Err(e) => Err(e.clone()),
        };
        let rolling_back = self.state.rollback.is_some();
        let actor = self.worker_actor();
        match o.target {
            Target::Step(step_seq) => {
                let Some(step) = self.state.steps.get(&step_seq) else {
                    return;
                };
                // Fence stale results: only the current attempt of an open step counts,
                // so a step is recorded completed exactly once.
                if step.is_resolved() || o.attempt != step.next_attempt() {
                    return;
                }
                let max_attempts = step.retry.max_attempts;
                let backoff = step.retry.backoff_ms(o.attempt);
                let twin = self.input.inherited.get(&step_seq) == Some(&o.attempt)
                    || step.restarted_attempt == Some(o.attempt);
                let result = match result {
                    Err(mut e) if !e.effect_unknown && twin => {
                        e.effect_unknown = true;
                        e.message.push_str(
                            " (this worker took the task over: an attempt started before may still apply)",
                        );
                        Err(e)
                    }
                    r => r,
                };
                let payload = match result {
                    Ok(output) => EventPayload::StepCompleted {
                        step_seq,
                        attempt: o.attempt,
                        output,
                        started_at_ms: o.started_at_ms,
                        duration_ms: o.duration_ms,
                    },
                    Err(error) if error.retryable && o.attempt < max_attempts && !rolling_back => {
                        EventPayload::StepAttemptFailed {
                            step_seq,
                            attempt: o.attempt,
                            error,
                            started_at_ms: o.started_at_ms,
                            duration_ms: o.duration_ms,
                            next_attempt_at_ms: now + backoff as i64,
                        }
                    }
                    Err(error) => EventPayload::StepFailed {
                        step_seq,
                        attempt: o.attempt,
                        error,
                        started_at_ms: o.started_at_ms,
                        duration_ms: o.duration_ms,
                    },
                };
                self.push(&actor, payload);
            }
            Target::Compensation(compensation_seq) => {
                let Some(c) = self.state.compensations.get(&compensation_seq) else {
                    return;
                };
                if c.outcome.is_some() || o.attempt != c.failed_attempts + 1 {
                    return;
                }
                let max_attempts = c.retry.max_attempts;
                let backoff = c.retry.backoff_ms(o.attempt);
                let payload = match result {
                    Ok(output) => EventPayload::CompensationCompleted {
                        compensation_seq,
                        attempt: o.attempt,
                        output,
                        started_at_ms: o.started_at_ms,
                        duration_ms: o.duration_ms,
                    },
                    Err(error) if error.retryable && o.attempt < max_attempts => {
                        EventPayload::CompensationAttemptFailed {
                            compensation_seq,
                            attempt: o.attempt,
                            error,
                            started_at_ms: o.started_at_ms,
                            duration_ms: o.duration_ms,
                            next_attempt_at_ms: now + backoff as i64,
                        }
                    }
                    Err(error) => EventPayload::CompensationFailed {
                        compensation_seq,
                        attempt: o.attempt,
                        error,
                        started_at_ms: o.started_at_ms,
                        duration_ms: o.duration_ms,
                    },
                };
                self.push(&actor, payload);
            }
        }
    }

    /// Fires due timers and resolves waits. Returns whether anything was decided.
    fn resolve_waits(&mut self) -> bool {
        let now = self.input.now_ms;
        let before = self.new.len();
        let due: Vec<i64> = self
            .state
            .timers
            .values()
            .filter(|t| !t.fired && t.fire_at_ms <= now)
            .map(|t| t.seq)
            .collect();
        for timer_seq in due {
            self.engine(EventPayload::TimerFired { timer_seq });
        }
        let waits: Vec<(i64, String, Option<i64>)> = self
            .state
            .waits
            .values()
            .filter(|w| !w.resolved)
            .map(|w| (w.seq, w.name.clone(), w.deadline_at_ms))
            .collect();
        for (wait_seq, name, deadline) in waits {
            let signal = self
                .state
                .signals
                .values()
                .find(|s| !s.consumed && s.name == name)
                .map(|s| s.seq);
            if let Some(signal_seq) = signal {
                self.engine(EventPayload::SignalWaitResolved {
                    wait_seq,
                    signal_seq: Some(signal_seq),
                    timed_out: false,
                });
            } else if deadline.is_some_and(|d| d <= now) {
                self.engine(EventPayload::SignalWaitResolved {
                    wait_seq,
                    signal_seq: None,
                    timed_out: true,
                });
            }
        }
        self.new.len() > before
    }

    /// Replays the workflow and records what it asks for next.
    fn advance_workflow(&mut self) -> bool {
        let before = self.new.len();
        let Some(wf) = self.input.workflow else {
            self.engine(EventPayload::TaskBlocked {
                reason: format!(
                    "workflow {:?} is not registered in this binary; deploy a binary that has it",
                    self.state.workflow
                ),
                at_seq: None,
                expected: None,
                found: None,
            });
            return true;
        };
        // Feed the kept instance what it has not seen; a new one (or one
        // that cannot go on) replays from the first event.
        let history = self.input.history;
        let events_after = |fed: i64| -> Vec<(i64, &EventPayload)> {
            let from = history.partition_point(|e| e.seq <= fed);
            history[from..]
                .iter()
                .map(|e| (e.seq, &e.payload))
                .chain(
                    self.new
                        .iter()
                        .enumerate()
                        .map(|(i, e)| (self.base_seq + 1 + i as i64, &e.payload))
                        .filter(|(seq, _)| *seq > fed),
                )
                .collect()
        };
        let kept = self.instance.take().and_then(|mut i| {
            let events = events_after(i.fed_seq());
            i.feed(&events, self.base_seq, self.input.now_ms)
                .ok()
                .map(|r| (i, r))
        });
        let (instance, r) = kept.unwrap_or_else(|| {
            let mut i = WorkflowInstance::new(
                wf,
                &self.state.task_id,
                &self.state.input,
                history.first().map(|e| &e.payload),
            );
            let r = i
                .feed(&events_after(0), self.base_seq, self.input.now_ms)
                .expect("a new instance fed one batch is always usable");
            (i, r)
        });
        if r.nondeterminism.is_none() && r.finished.is_none() {
            self.instance = Some(instance);
        }
        if let Some(nd) = r.nondeterminism {
            self.engine(EventPayload::TaskBlocked {
                reason: "non_determinism".to_string(),
                at_seq: Some(nd.seq),
                expected: Some(nd.expected),
                found: Some(nd.found),
            });
            return true;
        }
        let limits = self.input.limits;
        for command in r.new_commands {
            if self.state.commands as usize >= limits.max_commands_per_task {
                let error = format!(
                    "the workflow issued more than {} commands (steps, sleeps, waits); raise the limit or split the task",
                    limits.max_commands_per_task
                );
                self.engine(EventPayload::WorkflowFailed { error });
                return true;
            }
            if let Err(error) = self.schedule(command) {
                self.engine(EventPayload::WorkflowFailed { error });
                return true;
            }
        }
        match r.finished {
            Some(Ok(output)) => {
                let len = serde_json::to_vec(&output)
                    .map(|b| b.len())
                    .unwrap_or(usize::MAX);
                if len > limits.max_payload_bytes {
                    self.engine(EventPayload::WorkflowFailed {
                        error: format!(
                            "workflow output of {len} bytes exceeds the {}-byte payload limit",
                            limits.max_payload_bytes
                        ),
                    });
                } else {
                    self.engine(EventPayload::TaskCompleted { output });
                }
            }
            Some(Err(e)) => self.engine(EventPayload::WorkflowFailed { error: e.message }),
            None => {}
        }
        self.new.len() > before
    }

    fn principal(&self) -> Principal {
        Principal {
            agent: self.state.agent.clone(),
            on_behalf_of: self.state.on_behalf_of.clone(),
        }
    }

    /// Asks the gateway about one step and applies a pre-approval to a gate
    /// it covers.
    fn evaluate(
        &self,
        principal: &Principal,
        step: &str,
        tool: &str,
        kind: Option<ToolKind>,
        input: &Value,
    ) -> GatewayDecision {
        let now = self.input.now_ms;
        let mut decision = self.input.gateway.evaluate(&GatewayRequest {
            task_id: &self.state.task_id,
            workflow: &self.state.workflow,
            principal,
            step,
            tool,
            kind,
            input,
            now_ms: now,
        });
        apply_preapproval(&mut decision, self.input.preapprovals, principal, tool, now);
        decision
    }

    /// After a recorded decision: deny, ask for approval, or schedule.
    fn act_on_decision(&mut self, policy_seq: i64) {
        let gate = self.state.gates[&policy_seq].clone();
        let d = &gate.decision;
        match d.path {
            InterventionPath::Deny => {
                let reason = format!(
                    "step {:?} ({}) denied by policy (set {}): {}",
                    gate.name,
                    gate.tool,
                    &d.policy_hash[..d.policy_hash.len().min(12)],
                    d.explain()
                );
                self.engine(EventPayload::StepDenied {
                    policy_seq,
                    rule: d.rule().to_string(),
                    reason,
                });
            }
            InterventionPath::GatedExecute if d.preapproval.is_none() => {
                let requirement = d.approval.clone().unwrap_or(ApprovalRequirement {
                    approvers: d.owners.clone(),
                    quorum: 1,
                    timeout_ms: 3_600_000,
                    escalation: None,
                });
                let decided_by = d.decided_by.clone();
                self.request_approval(&gate, requirement, gate.input.clone(), decided_by, None);
            }
            _ => self.schedule_gate(&gate, gate.input.clone()),
        }
    }

    fn request_approval(
        &mut self,
        gate: &super::state::GateState,
        requirement: ApprovalRequirement,
        input: Value,
        decided_by: Vec<super::gateway::RuleRef>,
        supersedes: Option<i64>,
    ) {
        if requirement.approvers.is_empty() {
            self.engine(EventPayload::StepDenied {
                policy_seq: gate.seq,
                rule: "approval.no-approvers".into(),
                reason: format!(
                    "step {:?} ({}) needs an approval but the policy names no approver; name approvers or owners for {} in the catalog",
                    gate.name, gate.tool, gate.tool
                ),
            });
            return;
        }
        let timeout_ms = requirement
            .timeout_ms
            .clamp(1, self.input.limits.max_timer_ms);
        self.engine(EventPayload::ApprovalRequested {
            command: None,
            policy_seq: Some(gate.seq),
            subject: gate.name.clone(),
            input: Some(input),
            approvers: requirement.approvers,
            quorum: requirement.quorum.max(1),
            timeout_ms,
            deadline_at_ms: self.input.now_ms + timeout_ms as i64,
            escalation: requirement.escalation,
            decided_by,
            supersedes,
        });
    }

    fn schedule_gate(&mut self, gate: &super::state::GateState, input: Value) {
        let compensation = gate
            .compensation
            .clone()
            .map(|c| edited_compensation(c, &gate.input, &input));
        self.engine(EventPayload::StepScheduled {
            command: gate.command,
            name: gate.name.clone(),
            tool: gate.tool.clone(),
            kind: gate.kind,
            input,
            retry: gate.retry.clone(),
            timeout_ms: gate.timeout_ms,
            compensation,
            recovery_path: gate.recovery_path.clone(),
            policy_seq: Some(gate.seq),
        });
    }

    /// Closes approval requests that are decided or past their deadline.
    /// Returns whether anything was decided.
    fn resolve_approvals(&mut self) -> bool {
        let before = self.new.len();
        let now = self.input.now_ms;
        let open: Vec<i64> = self
            .state
            .approvals
            .values()
            .filter(|a| a.is_open())
            .map(|a| a.seq)
            .collect();
        for seq in open {
            let a = self.state.approvals[&seq].clone();
            let gate = a.policy_seq.and_then(|p| self.state.gates.get(&p).cloned());
            let subject = match &gate {
                Some(g) => format!("step {:?} ({})", g.name, g.tool),
                None => format!("approval {:?}", a.subject),
            };
            if let Some(r) = a.decisions.iter().find(|d| !d.approved) {
                let denied = gate.as_ref().map(|g| {
                    let reason = format!(
                        "{subject} rejected by {}{}",
                        r.identity,
                        r.comment
                            .as_ref()
                            .map(|c| format!(": {c}"))
                            .unwrap_or_default()
                    );
                    (g.seq, "approval.rejected".to_string(), reason)
                });
                self.close_request(
                    seq,
                    "rejected",
                    vec![r.identity.clone()],
                    r.comment.clone(),
                    denied,
                );
                continue;
            }
            let by = a.approved_by();
            let comment = a.decisions.iter().rev().find_map(|d| d.comment.clone());
            if by.len() as u32 >= a.quorum.max(1) {
                let Some(g) = gate else {
                    self.engine(EventPayload::ApprovalResolved {
                        request_seq: seq,
                        outcome: "approved".into(),
                        by,
                        comment,
                    });
                    continue;
                };
                let (base, input) = a.edited_input(&g.input, None);
                if input != base {
                    if let Err(e) = self.input.limits.check_payload(&input) {
                        let reason = format!("the approver's edit of {subject}: {e}");
                        let denied = Some((g.seq, "limits.payload".to_string(), reason));
                        self.close_request(seq, "edit_denied", by, comment, denied);
                        continue;
                    }
                    let principal = self.principal();
                    let d = self.evaluate(&principal, &g.name, &g.tool, Some(g.kind), &input);
                    self.engine(EventPayload::ApprovalEditEvaluated {
                        request_seq: seq,
                        input: input.clone(),
                        decision: Box::new(d.clone()),
                    });
                    let current = ApprovalRequirement {
                        approvers: a.approvers.clone(),
                        quorum: a.quorum,
                        timeout_ms: a.timeout_ms,
                        escalation: a.escalation.clone(),
                    };
                    match edit_verdict(&d, &current) {
                        EditVerdict::Denied => {
                            let reason = format!(
                                "the approver's edit of {subject} was denied by policy: {}",
                                d.explain()
                            );
                            let denied = Some((g.seq, d.rule().to_string(), reason));
                            self.close_request(seq, "edit_denied", by, comment, denied);
                            continue;
                        }
                        EditVerdict::Superseded(req) => {
                            self.engine(EventPayload::ApprovalResolved {
                                request_seq: seq,
                                outcome: "superseded".into(),
                                by,
                                comment,
                            });
                            let decided_by = d.decided_by.clone();
                            self.request_approval(&g, req, input, decided_by, Some(seq));
                            continue;
                        }
                        EditVerdict::Proceeds => {}
                    }
                }
                self.engine(EventPayload::ApprovalResolved {
                    request_seq: seq,
                    outcome: "approved".into(),
                    by,
                    comment,
                });
                self.schedule_gate(&g, input);
                continue;
            }
            if now >= a.deadline_at_ms {
                if let (Some(to), None) = (&a.escalation, &a.escalated_to) {
                    self.engine(EventPayload::ApprovalEscalated {
                        request_seq: seq,
                        to: to.clone(),
                        deadline_at_ms: a.deadline_at_ms + a.timeout_ms as i64,
                    });
                    continue;
                }
                let denied = gate.as_ref().map(|g| {
                    let reason = format!(
                        "{subject}: no approval within {} ms of the request{}; the step was not run",
                        a.timeout_ms,
                        match &a.escalated_to {
                            Some(to) => format!(" and its escalation to {to}"),
                            None => String::new(),
                        }
                    );
                    (g.seq, "approval.timeout".to_string(), reason)
                });
                self.close_request(seq, "timed_out", by, None, denied);
            }
        }
        self.new.len() > before
    }

    /// Closes approval request `seq` with `outcome`; `denied` (the gate's
    /// policy seq, the rule, the reason), when given, also denies the step
    /// the request gated, so it never runs.
    fn close_request(
        &mut self,
        seq: i64,
        outcome: &str,
        by: Vec<String>,
        comment: Option<String>,
        denied: Option<(i64, String, String)>,
    ) {
        self.engine(EventPayload::ApprovalResolved {
            request_seq: seq,
            outcome: outcome.into(),
            by,
            comment,
        });
        if let Some((policy_seq, rule, reason)) = denied {
            self.engine(EventPayload::StepDenied {
                policy_seq,
                rule,
                reason,
            });
        }
    }

    /// A rollback withdraws the approval requests still open: nobody needs
    /// to decide them any more.
    fn withdraw_approvals(&mut self) {
        let open: Vec<i64> = self
            .state
            .approvals
            .values()
            .filter(|a| a.is_open())
            .map(|a| a.seq)
            .collect();
        for seq in open {
            self.engine(EventPayload::ApprovalResolved {
                request_seq: seq,
                outcome: "withdrawn".into(),
                by: Vec::new(),
                comment: Some("the task is rolling back".into()),
            });
        }
    }

    fn schedule(&mut self, command: NewCommand) -> Result<(), String> {
        let now = self.input.now_ms;
        let limits = self.input.limits;
        match command {
            NewCommand::Step { command, options } => {
                let where_ = format!("step {:?}", options.name);
                let retry = options.retry.unwrap_or_default();
                retry.validate().map_err(|e| format!("{where_}: {e}"))?;
                let timeout_ms = options.timeout_ms.unwrap_or(DEFAULT_STEP_TIMEOUT_MS);
                if timeout_ms == 0 || timeout_ms > MAX_STEP_TIMEOUT_MS {
                    return Err(format!(
                        "{where_}: timeout must be between 1 and {MAX_STEP_TIMEOUT_MS} ms, got {timeout_ms}"
                    ));
                }
                for (field, v) in [
                    ("input", Some(&options.input)),
                    (
                        "compensation.input",
                        options.compensation.as_ref().map(|c| &c.input),
                    ),
                ] {
                    if let Some(v) = v {
                        limits
                            .check_payload(v)
                            .map_err(|e| format!("{where_}: {field}: {e}"))?;
                    }
                }
                let info = self.input.tools.tool_info(&options.tool);
                // Unknown tools are decided (the gateway sees no kind) and, if
                // allowed, fail at execution with a clear error, so the
                // workflow sees an ordinary step failure.
                let kind = info.as_ref().map(|t| t.kind).unwrap_or(ToolKind::Read);
                if let Some(c) = &options.compensation
                    && self.input.tools.tool_info(&c.tool).is_none()
                {
                    return Err(format!(
                        "{where_}: compensation tool {:?} is not registered",
                        c.tool
                    ));
                }
                let principal = self.principal();
                let decision = self.evaluate(
                    &principal,
                    &options.name,
                    &options.tool,
                    info.as_ref().map(|t| t.kind),
                    &options.input,
                );
                let recovery_path = options
                    .recovery_path
                    .or(info.and_then(|t| t.recovery_path))
                    .or(decision.recovery_path.clone());
                self.engine(EventPayload::PolicyEvaluated {
                    command,
                    name: options.name,
                    tool: options.tool,
                    kind,
                    input: options.input,
                    retry,
                    timeout_ms,
                    compensation: options.compensation,
                    recovery_path,
                    principal,
                    decision: Box::new(decision),
                });
                let policy_seq = self.state.last_seq;
                self.act_on_decision(policy_seq);
            }
            NewCommand::Approval {
                command,
                subject,
                timeout_ms,
            } => {
                let principal = self.principal();
                let wa = self.input.gateway.workflow_approval(
                    &principal,
                    &self.state.workflow,
                    &subject,
                );
                let timeout_ms = match timeout_ms {
                    Some(t) => t.min(wa.requirement.timeout_ms),
                    None => wa.requirement.timeout_ms,
                };
                if timeout_ms > limits.max_timer_ms {
                    return Err(format!(
                        "approval {subject:?}: timeout exceeds the limit of {} ms",
                        limits.max_timer_ms
                    ));
                }
                self.engine(EventPayload::ApprovalRequested {
                    command: Some(command),
                    policy_seq: None,
                    subject,
                    input: None,
                    approvers: wa.requirement.approvers,
                    quorum: wa.requirement.quorum.max(1),
                    timeout_ms,
                    deadline_at_ms: now + timeout_ms as i64,
                    escalation: wa.requirement.escalation,
                    decided_by: wa.decided_by,
                    supersedes: None,
                });
            }
            NewCommand::Timer {
                command,
                duration_ms,
            } => {
                if duration_ms > limits.max_timer_ms {
                    return Err(format!(
                        "sleep of {duration_ms} ms exceeds the limit of {} ms",
                        limits.max_timer_ms
                    ));
                }
                self.engine(EventPayload::TimerStarted {
                    command,
                    duration_ms,
                    fire_at_ms: now + duration_ms as i64,
                });
            }
            NewCommand::SignalWait {
                command,
                name,
                approval,
                timeout_ms,
            } => {
                if timeout_ms.is_some_and(|t| t > limits.max_timer_ms) {
                    return Err(format!(
                        "wait for {name:?}: timeout exceeds the limit of {} ms",
                        limits.max_timer_ms
                    ));
                }
                self.engine(EventPayload::SignalWaitStarted {
                    command,
                    name,
                    approval,
                    deadline_at_ms: timeout_ms.map(|t| now + t as i64),
                });
            }
            NewCommand::Marker {
                command,
                kind,
                value,
            } => self.engine(EventPayload::MarkerRecorded {
                command,
                kind,
                value,
            }),
        }
        Ok(())
    }

    /// Drives the saga's rollback one compensation at a time, in reverse
    /// completion order. Returns whether anything was decided.
    fn advance_rollback(&mut self) -> bool {
        let before = self.new.len();
        let now = self.input.now_ms;
        self.withdraw_approvals();
        // Steps waiting for a retry are abandoned; steps mid-attempt must resolve
        // first, so that a step that did complete is also compensated.
        //
        // Nothing records that a retry was dispatched: once its backoff is
        // over, the next attempt may be running (and may have applied its
        // effect, or be about to). Such a step is abandoned with its effect
        // unknown, so the rollback compensates it and the compensation's
        // fence refuses the attempt if it lands later. Only a step still
        // inside its backoff surely has no attempt out.
        let waiting: Vec<(i64, u32, bool)> = self
            .state
            .open_steps()
            .filter_map(|s| {
                let at = s.next_attempt_at_ms?;
                let twin = self.input.inherited.get(&s.seq) == Some(&s.next_attempt());
                Some((s.seq, s.next_attempt() - 1, at <= now || twin))
            })
            .collect();
        for (step_seq, attempts, retry_may_be_out) in waiting {
            let message = if retry_may_be_out {
                "abandoned: the task is rolling back; its next attempt may have started, so its effect is unknown"
            } else {
                "abandoned: the task is rolling back"
            };
            self.engine(EventPayload::StepFailed {
                step_seq,
                attempt: attempts,
                error: RecordedError {
                    message: message.to_string(),
                    retryable: false,
                    effect_unknown: retry_may_be_out,
                },
                started_at_ms: now,
                duration_ms: 0,
            });
        }
        if self.state.open_steps().next().is_some() || self.state.open_compensation().is_some() {
            return self.new.len() > before;
        }
        if let Some(failed) = self
            .state
            .compensations
            .values()
            .find(|c| matches!(c.outcome, Some(Outcome::Failed { .. })))
        {
            let step = &self.state.steps[&failed.step_seq];
            let error = match &failed.outcome {
                Some(Outcome::Failed { error, .. }) => error.message.clone(),
                _ => String::new(),
            };
            let mut recovery_paths: Vec<String> = step.recovery_path.iter().cloned().collect();
            recovery_paths.extend(self.state.skipped.iter().filter_map(|(_, r)| r.clone()));
            // Older completed steps are not compensated after a compensation
            // failed (they may depend on each other): name each, so nothing is
            // dropped silently.
            let left: Vec<String> = rollback_order(&self.state)
                .into_iter()
                .filter(|s| {
                    !self.state.rollback_handled.contains_key(&s.seq)
                        && (s.compensation.is_some() || s.kind.is_write())
                })
                .map(|s| match &s.compensation {
                    Some(c) => format!(
                        "step {:?} (seq {}) was not compensated: run {} with {} by hand",
                        s.name, s.seq, c.tool, c.input
                    ),
                    None => format!(
                        "step {:?} (seq {}) was not compensated: {}",
                        s.name,
                        s.seq,
                        s.recovery_path
                            .clone()
                            .unwrap_or_else(|| "no recovery path recorded".into())
                    ),
                })
                .collect();
            recovery_paths.extend(left.iter().cloned());
            let reason = format!(
                "compensation of step {:?} ({}) failed for good: {error}; a person must undo it{}",
                step.name,
                failed.tool,
                if left.is_empty() {
                    String::new()
                } else {
                    format!(" and {} older step(s)", left.len())
                }
            );
            let step_seq = Some(failed.step_seq);
            self.engine(EventPayload::TaskEscalated {
                reason,
                step_seq,
                recovery_paths,
            });
            return true;
        }
        // The next completed step, newest first, that still needs undoing.
        loop {
            let next = rollback_order(&self.state)
                .into_iter()
                .find(|s| {
                    !self.state.rollback_handled.contains_key(&s.seq)
                        && (s.compensation.is_some() || s.kind.is_write())
                })
                .cloned();
            let Some(step) = next else { break };
            match step.compensation {
                Some(c) => {
                    self.engine(EventPayload::CompensationStarted {
                        step_seq: step.seq,
                        tool: c.tool,
                        input: c.input,
                        retry: c.retry,
                    });
                    return true;
                }
                None => {
                    let reason = match step.kind {
                        ToolKind::WriteIrreversible => "the step is irreversible".to_string(),
                        _ => "the step has no compensation".to_string(),
                    };
                    self.engine(EventPayload::CompensationSkipped {
                        step_seq: step.seq,
                        reason,
                        recovery_path: step.recovery_path.clone(),
                    });
                }
            }
        }
        let compensated_steps = self
            .state
            .compensations
            .values()
            .filter(|c| matches!(c.outcome, Some(Outcome::Completed { .. })))
            .count() as u32;
        let payload = if !self.state.skipped.is_empty() {
            let recovery_paths = self
                .state
                .skipped
                .iter()
                .filter_map(|(_, r)| r.clone())
                .collect();
            EventPayload::TaskEscalated {
                reason: format!(
                    "{} completed step(s) cannot be undone automatically; a person must follow the recovery path",
                    self.state.skipped.len()
                ),
                step_seq: self.state.skipped.first().map(|(s, _)| *s),
                recovery_paths,
            }
        } else if self.state.rollback == Some(RollbackCause::Cancelled) {
            EventPayload::TaskCancelled {
                rolled_back: true,
                compensated_steps,
            }
        } else {
            EventPayload::TaskFailed {
                error: self.state.error.clone().unwrap_or_default(),
                compensated_steps,
            }
        };
        self.engine(payload);
        true
    }
}

/// A step's compensation after an approver edited the step's input: each
/// top-level field of the compensation input that has the name of an edited
/// field and held its old value takes the new value (a refund of
/// `amount_cents` follows an edited charge of `amount_cents`). The result is
/// recorded in `StepScheduled`, before the step runs, like any compensation.
pub fn edited_compensation(
    mut c: super::event::Compensation,
    requested: &Value,
    edited: &Value,
) -> super::event::Compensation {
    if requested == edited {
        return c;
    }
    if let (Some(comp), Some(old), Some(new)) = (
        c.input.as_object_mut(),
        requested.as_object(),
        edited.as_object(),
    ) {
        for (field, value) in new {
            if old.get(field) != Some(value)
                && let Some(slot) = comp.get_mut(field)
                && old.get(field) == Some(slot)
            {
                *slot = value.clone();
            }
        }
    }
    c
}

impl Draft<'_> {
    /// Records a restart for each attempt this worker is about to run that an
    /// earlier holder was running or about to start (it was due, not waiting
    /// out a backoff, when this worker loaded the task): the re-run is a new
    /// attempt, so the tool sees its true number.
    fn restart_inherited(&mut self) {
        if self.input.inherited.is_empty()
            || self.state.is_final()
            || self.state.blocked.is_some()
            || self.state.paused
        {
            return;
        }
        let restart: Vec<(i64, u32)> = self
            .state
            .open_steps()
            .filter(|s| {
                s.next_attempt_at_ms.is_none()
                    && self.input.inherited.get(&s.seq) == Some(&s.next_attempt())
            })
            .map(|s| (s.seq, s.next_attempt() + 1))
            .collect();
        let actor = self.worker_actor();
        for (step_seq, attempt) in restart {
            self.push(
                &actor,
                EventPayload::StepAttemptRestarted {
                    step_seq,
                    attempt,
                    reason: format!(
                        "this worker took the task over; attempt {} may have started before",
                        attempt - 1
                    ),
                },
            );
        }
    }
}

/// The steps a rollback must undo, newest first: completed steps by the order
/// they completed, and failed steps whose effect is unknown (a timed-out
/// attempt may have applied it) by when they failed. Compensations are
/// idempotent per key, so undoing a step that had no effect is harmless.
fn rollback_order(state: &TaskState) -> Vec<&super::state::StepState> {
    let mut steps: Vec<&super::state::StepState> =
        state.steps.values().filter(|s| s.needs_undo()).collect();
    steps.sort_by_key(|s| std::cmp::Reverse(s.resolved_at_seq()));
    steps
}

/// Decides the events that follow `input.history` given the outcomes and the
/// time. `state` is the fold of `input.history`; it is taken by value (and
/// returned in the [`Decision`], advanced) so the hot path never copies it.
/// Runs the workflow's code from the first event.
pub fn decide(input: &DecideInput<'_>, state: TaskState) -> Decision {
    decide_with(input, state, None)
}

/// [`decide`], going on with the workflow instance of an earlier decision
/// of the same task (its [`Decision::instance`], confirmed once appended)
/// so that only the events since are fed to the code: the cost of a
/// decision no longer grows with the history. An instance that is not
/// [`usable_with`](WorkflowInstance::usable_with) `input.history`, or that
/// cannot go on, is dropped and the code replayed from the first event:
/// the events decided are the same either way.
pub fn decide_with(
    input: &DecideInput<'_>,
    state: TaskState,
    instance: Option<WorkflowInstance>,
) -> Decision {
    let base_seq = state.last_seq;
    let mut d = Draft {
        input,
        base_seq,
        state,
        new: Vec::new(),
        instance: instance.filter(|i| i.usable_with(input.history)),
    };
    if d.state.is_final() || d.state.blocked.is_some() {
        return Decision {
            events: d.new,
            state: d.state,
            instance: None,
        };
    }
    if !d.state.started {
        let actor = d.worker_actor();
        d.push(
            &actor,
            EventPayload::TaskStarted {
                worker: input.worker.to_string(),
                polls: PollPoints::EachResult,
            },
        );
    }
    for o in input.outcomes {
        d.record_outcome(o);
    }
    // The kill switch: recorded as a pause by the halt, so running attempts
    // finish and nothing new starts until it is lifted.
    if let Some(h) = input.halt
        && !d.state.paused
    {
        d.push(
            &halt_actor(&h.id),
            EventPayload::TaskPaused {
                reason: Some(match &h.reason {
                    Some(r) => format!("halt {}: {r}", h.id),
                    None => format!("halt {}", h.id),
                }),
            },
        );
    }
    // Each pass may resolve something the workflow then reacts to; bounded.
    for _ in 0..1_000 {
        let mut progressed = d.resolve_waits();
        if d.state.is_final() || d.state.blocked.is_some() {
            break;
        }
        if d.state.cancel_requested == Some(false) {
            d.engine(EventPayload::TaskCancelled {
                rolled_back: false,
                compensated_steps: 0,
            });
            break;
        }
        if d.state.paused {
            break;
        }
        if d.state.rollback.is_none() {
            progressed |= d.resolve_approvals();
            progressed |= d.advance_workflow();
        }
        if d.state.rollback.is_some() && !d.state.is_final() && d.state.blocked.is_none() {
            progressed |= d.advance_rollback();
        }
        if !progressed || d.state.is_final() || d.state.blocked.is_some() {
            break;
        }
    }
    d.restart_inherited();
    d.route_new_events();
    if base_seq + d.new.len() as i64 > input.limits.max_history_events as i64 && !d.state.is_final()
    {
        // Refuse to grow past the limit: keep only a block marker (rare, so
        // rebuilding the state by a fold is fine).
        d.state = TaskState::fold(input.history);
        d.new.clear();
        // It was fed events that will not be appended.
        d.instance = None;
        d.engine(EventPayload::TaskBlocked {
            reason: format!(
                "history would exceed {} events; the task needs a person",
                input.limits.max_history_events
            ),
            at_seq: None,
            expected: None,
            found: None,
        });
    }
    let mut instance = d.instance;
    if let Some(i) = instance.as_mut() {
        // Confirmed here when it was fed persisted events only; else once
        // the caller appended this decision.
        i.confirm(input.history);
    }
    Decision {
        events: d.new,
        state: d.state,
        instance,
    }
}

/// An attempt that should be running now, without its input: what a
/// caller that already runs most of them needs to look at (see [`due`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    pub target: Target,
    pub attempt: u32,
}

/// The attempts that should be running now, in [`actions`]' order, without
/// building them: a driver that already runs most of them builds only the
/// new ones ([`action`]), so a decision costs nothing per running attempt
/// beyond this walk.
pub fn due(state: &TaskState, now_ms: i64) -> impl Iterator<Item = Due> + '_ {
    let live = !(state.is_final() || state.paused || state.blocked.is_some());
    let is_due = move |next: Option<i64>| next.is_none_or(|t| t <= now_ms);
    let steps = state
        .open_steps()
        .filter(move |s| live && is_due(s.next_attempt_at_ms))
        .map(|s| Due {
            target: Target::Step(s.seq),
            attempt: s.next_attempt(),
        });
    let compensations = state
        .compensations
        .values()
        .filter(move |c| live && c.outcome.is_none() && is_due(c.next_attempt_at_ms))
        .map(|c| Due {
            target: Target::Compensation(c.seq),
            attempt: c.failed_attempts + 1,
        });
    steps.chain(compensations)
}

/// The action of an attempt [`due`] named: its tool, input and timeout.
/// `None` when `state` has no such step or compensation.
pub fn action(state: &TaskState, due: Due) -> Option<Action> {
    match due.target {
        Target::Step(seq) => state.steps.get(&seq).map(|s| Action {
            target: due.target,
            tool: s.tool.clone(),
            input: s.input.clone(),
            attempt: due.attempt,
            timeout_ms: s.timeout_ms,
            compensates_step_seq: None,
        }),
        Target::Compensation(seq) => state.compensations.get(&seq).map(|c| Action {
            target: due.target,
            tool: c.tool.clone(),
            input: c.input.clone(),
            attempt: due.attempt,
            timeout_ms: state
                .steps
                .get(&c.step_seq)
                .map(|s| s.timeout_ms)
                .unwrap_or(DEFAULT_STEP_TIMEOUT_MS),
            compensates_step_seq: Some(c.step_seq),
        }),
    }
}

/// The attempts that should be running now.
pub fn actions(state: &TaskState, now_ms: i64) -> Vec<Action> {
    due(state, now_ms)
        .filter_map(|d| action(state, d))
        .collect()
}

/// Whether `attempt` is still the current attempt of an open step or
/// compensation of a task that is not final (its result would be recorded).
pub fn attempt_is_current(state: &TaskState, target: Target, attempt: u32) -> bool {
    if state.is_final() || state.blocked.is_some() {
        return false;
    }
    match target {
        Target::Step(seq) => state
            .steps
            .get(&seq)
            .is_some_and(|s| !s.is_resolved() && s.next_attempt() == attempt),
        Target::Compensation(seq) => state
            .compensations
            .get(&seq)
            .is_some_and(|c| c.outcome.is_none() && c.failed_attempts + 1 == attempt),
    }
}

/// The derived rows written in the same transaction as an append.
#[derive(Debug, Clone, PartialEq)]
pub struct Projection {
    pub status: TaskStatus,
    /// When a worker must look at the task next; `None` while it waits only on
    /// the outside world (a signal) or is final.
    pub ready_at_ms: Option<i64>,
    pub timers: Vec<PendingTimer>,
    pub blocked_reason: Option<String>,
}

/// The projection of a settled state (after `decide`).
pub fn projection(state: &TaskState, now_ms: i64) -> Projection {
    let timers = state.pending_timers();
    let ready_at_ms = if state.is_final() || state.blocked.is_some() || state.paused {
        None
    } else if !state.started || !actions(state, now_ms).is_empty() {
        Some(now_ms)
    } else {
        timers.iter().map(|t| t.fire_at_ms).min()
    };
    Projection {
        status: state.status(),
        ready_at_ms,
        timers,
        blocked_reason: state.blocked.clone(),
    }
}

/// The earliest moment after `now_ms` at which time alone changes something.
pub fn next_wake(state: &TaskState, now_ms: i64) -> Option<i64> {
    if state.is_final() || state.blocked.is_some() || state.paused {
        return None;
    }
    state
        .pending_timers()
        .iter()
        .map(|t| t.fire_at_ms)
        .find(|t| *t > now_ms)
}
