//! Approval requests of a plan task, folded from its history alone: which
//! steps wait for people, who may decide, who already did. Used to refuse a
//! bad decision before it is written (`Plan::check_signal`) and to list the
//! inbox (`mandate approvals`). Pure.

use std::collections::{BTreeMap, HashMap};

use mandate_activities::policy::{InterventionPath, PolicyDecision};
use mandate_engine::{Event, EventPayload};
use serde::Serialize;
use serde_json::Value;

/// The signal name that carries decisions for step `step`.
pub fn signal_name(step: &str) -> String {
    format!("approval:{step}")
}

/// The identity in a sender: `approver:alice` → `alice`.
pub fn identity(sender: &str) -> &str {
    for p in ["approver:", "user:", "agent:"] {
        if let Some(rest) = sender.strip_prefix(p) {
            return rest;
        }
    }
    sender
}

/// One recorded decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApprovalDecision {
    pub identity: String,
    pub decision: String,
    pub comment: Option<String>,
    pub at_ms: i64,
    pub edit: Option<Value>,
}

/// A step waiting for approval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PendingApproval {
    pub step: String,
    pub tool: String,
    pub input: Value,
    pub decision: PolicyDecision,
    /// Who may decide: policy approvers and owners, plus an escalation target once escalated.
    pub approvers: Vec<String>,
    pub quorum: u32,
    pub decisions: Vec<ApprovalDecision>,
    pub escalated_to: Option<String>,
    pub deadline_at_ms: Option<i64>,
}

/// The submitter of a task: `(actor, agent)`.
pub fn submitter(history: &[Event]) -> (String, Option<String>, Value) {
    match history.first().map(|e| (&e.actor, &e.payload)) {
        Some((actor, EventPayload::TaskSubmitted { agent, input, .. })) => {
            (actor.clone(), agent.clone(), input.clone())
        }
        _ => (String::new(), None, Value::Null),
    }
}

/// The steps of a plan task that wait for approval now.
pub fn pending(history: &[Event]) -> Vec<PendingApproval> {
    let mut names: HashMap<i64, String> = HashMap::new();
    let mut open: BTreeMap<String, PendingApproval> = BTreeMap::new();
    let mut concluded: Vec<String> = Vec::new();
    for e in history {
        match &e.payload {
            EventPayload::StepScheduled { name, .. } => {
                names.insert(e.seq, name.clone());
                // The step itself being scheduled concludes its approval.
                if open.remove(name).is_some() {
                    concluded.push(name.clone());
                }
            }
            EventPayload::StepCompleted {
                step_seq, output, ..
            } => {
                let Some(name) = names.get(step_seq) else {
                    continue;
                };
                if let Some(step) = name.strip_suffix(".policy") {
                    let Ok(d) = serde_json::from_value::<PolicyDecision>(output.clone()) else {
                        continue;
                    };
                    if d.decision != InterventionPath::GatedExecute || d.preapproval.is_some() {
                        continue;
                    }
                    let req = d.approval.clone();
                    let (tool, input) = history
                        .iter()
                        .find(|x| x.seq == *step_seq)
                        .and_then(|x| match &x.payload {
                            EventPayload::StepScheduled { input, .. } => Some((
                                input["tool"].as_str().unwrap_or_default().to_string(),
                                input["input"].clone(),
                            )),
                            _ => None,
                        })
                        .unwrap_or_default();
                    open.insert(
                        step.to_string(),
                        PendingApproval {
                            step: step.to_string(),
                            tool,
                            input,
                            approvers: req
                                .as_ref()
                                .map(|r| r.approvers.clone())
                                .unwrap_or_default(),
                            quorum: req.as_ref().map(|r| r.quorum).unwrap_or(1).max(1),
                            decision: d,
                            decisions: Vec::new(),
                            escalated_to: None,
                            deadline_at_ms: None,
                        },
                    );
                } else if let Some(step) = name.strip_suffix(".escalate")
                    && let Some(p) = open.get_mut(step)
                {
                    let to = output["to"].as_str().unwrap_or_default().to_string();
                    if !to.is_empty() && !p.approvers.contains(&to) {
                        p.approvers.push(to.clone());
                    }
                    p.escalated_to = Some(to);
                }
            }
            EventPayload::SignalWaitStarted {
                name,
                approval: true,
                deadline_at_ms,
                ..
            } => {
                if let Some(step) = name.strip_prefix("approval:")
                    && let Some(p) = open.get_mut(step)
                {
                    p.deadline_at_ms = *deadline_at_ms;
                }
            }
            EventPayload::SignalReceived {
                name,
                payload,
                sender,
            } => {
                let Some(step) = name.strip_prefix("approval:") else {
                    continue;
                };
                let Some(p) = open.get_mut(step) else {
                    continue;
                };
                let decision = payload["decision"]
                    .as_str()
                    .unwrap_or("approve")
                    .to_string();
                p.decisions.push(ApprovalDecision {
                    identity: identity(sender).to_string(),
                    decision: decision.clone(),
                    comment: payload["comment"].as_str().map(str::to_string),
                    at_ms: e.recorded_at_ms,
                    edit: payload.get("edit").filter(|v| !v.is_null()).cloned(),
                });
                let approvals = p
                    .decisions
                    .iter()
                    .filter(|d| d.decision == "approve")
                    .count();
                if decision == "reject" || approvals as u32 >= p.quorum {
                    open.remove(step);
                    concluded.push(step.to_string());
                }
            }
            EventPayload::WorkflowFailed { .. }
            | EventPayload::CancelRequested { .. }
            | EventPayload::TaskFailed { .. }
            | EventPayload::TaskEscalated { .. }
            | EventPayload::TaskCancelled { .. }
            | EventPayload::TaskCompleted { .. } => open.clear(),
            _ => {}
        }
    }
    open.into_values().collect()
}

/// Decides whether a decision signal may enter the history (see
/// `Plan::check_signal`). `history` is verified; nothing is written on `Err`.
pub fn check_decision(
    history: &[Event],
    name: &str,
    payload: &Value,
    sender: &str,
) -> Result<(), String> {
    let Some(step) = name.strip_prefix("approval:") else {
        return Err(format!(
            "a plan task takes only approval:<step> signals (mandate approve/reject), not {name:?}"
        ));
    };
    let who = identity(sender);
    let (actor, agent, input) = submitter(history);
    let plan_agent = input["agent"].as_str();
    if sender == actor || Some(who) == agent.as_deref() || Some(who) == plan_agent {
        return Err(format!(
            "{who} submitted this task; the submitting agent can never approve its own steps"
        ));
    }
    match payload["decision"].as_str() {
        Some("approve" | "reject") => {}
        _ => {
            return Err("the payload must have decision \"approve\" or \"reject\"".into());
        }
    }
    if let Some(edit) = payload.get("edit")
        && !edit.is_null()
        && !edit.is_object()
    {
        return Err("edit must be a JSON object of input fields to change".into());
    }
    let pending = pending(history);
    let Some(p) = pending.iter().find(|p| p.step == step) else {
        let waiting: Vec<&str> = pending.iter().map(|p| p.step.as_str()).collect();
        return Err(format!(
            "step {step:?} is not awaiting approval ({})",
            if waiting.is_empty() {
                "no step of this task is".to_string()
            } else {
                format!("awaiting: {}", waiting.join(", "))
            }
        ));
    };
    if !p.approvers.iter().any(|a| a == who) {
        return Err(format!(
            "{who} may not decide step {step:?}; allowed approvers: {}",
            p.approvers.join(", ")
        ));
    }
    if p.decisions.iter().any(|d| d.identity == who) {
        return Err(format!(
            "{who} already decided step {step:?}; a quorum of {} needs distinct identities",
            p.quorum
        ));
    }
    Ok(())
}

/// The rollback plan of a task so far: for each completed step (newest
/// first), its compensation or recovery path.
pub fn rollback_plan(history: &[Event]) -> Vec<String> {
    let mut scheduled: HashMap<i64, (String, Option<String>, Option<String>, bool)> =
        HashMap::new();
    let mut out = Vec::new();
    for e in history {
        match &e.payload {
            EventPayload::StepScheduled {
                name,
                kind,
                compensation,
                recovery_path,
                ..
            } => {
                scheduled.insert(
                    e.seq,
                    (
                        name.clone(),
                        compensation
                            .as_ref()
                            .map(|c| format!("{} {}", c.tool, c.input)),
                        recovery_path.clone(),
                        kind.is_write(),
                    ),
                );
            }
            EventPayload::StepCompleted { step_seq, .. } => {
                if let Some((name, comp, recovery, write)) = scheduled.get(step_seq)
                    && (*write || comp.is_some())
                {
                    out.push(match (comp, recovery) {
                        (Some(c), _) => format!("{name}: compensate with {c}"),
                        (None, Some(r)) => format!("{name}: no automatic undo; {r}"),
                        (None, None) => format!("{name}: no automatic undo and no recovery path"),
                    });
                }
            }
            _ => {}
        }
    }
    out.reverse();
    out
}
