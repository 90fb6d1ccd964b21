//! Approval requests of a plan task, folded from its history alone: which
//! steps wait for people, who may decide, who already did. Used to refuse a
//! bad decision before it is written (`Plan::check_signal`) and to list the
//! inbox (`mandate approvals`). Pure.

use std::collections::{BTreeMap, HashMap};

use mandate_activities::policy::{InterventionPath, PolicyDecision, RuleRef};
use mandate_engine::{Event, EventPayload};
use serde::Serialize;
use serde_json::Value;

use super::document::PlanDoc;

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

/// One entry of the approval inbox (`mandate approvals`, `GET /v1/approvals`):
/// a step waiting for a decision, with what an approver needs to decide it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InboxEntry {
    /// The approval's stable id, `<task_id>:<step>` (see [`approval_id`]).
    pub id: String,
    pub task_id: String,
    pub step: String,
    /// `<agent> wants <tool> <input> (<reason>)`.
    pub summary: String,
    /// `low`, `medium` or `high`, from the policy decision.
    pub risk: String,
    pub decision: InterventionPath,
    /// The rules that decided, with their explanation.
    pub rules: Vec<RuleRef>,
    /// The owners affected (blast radius).
    pub owners: Vec<String>,
    /// What the agent saw, as it submitted it.
    pub evidence: Value,
    /// How to undo: this step first, then every completed step, newest first.
    pub rollback_plan: Vec<String>,
    pub approvers: Vec<String>,
    pub quorum: u32,
    pub decisions: Vec<ApprovalDecision>,
    pub escalated_to: Option<String>,
    pub deadline_at_ms: Option<i64>,
}

/// The stable id of the approval of `step` in task `task_id`.
pub fn approval_id(task_id: &str, step: &str) -> String {
    format!("{task_id}:{step}")
}

/// Splits an approval id into `(task_id, step)`. Task ids are UUIDs and step
/// ids are identifiers (`[A-Za-z_][A-Za-z0-9_]*`), so neither holds a `:` and
/// the split is unambiguous; splitting at the last `:` keeps it so should
/// task ids ever hold one. `None` when either part is empty.
pub fn parse_approval_id(id: &str) -> Option<(&str, &str)> {
    let (task_id, step) = id.rsplit_once(':')?;
    (!task_id.is_empty() && !step.is_empty()).then_some((task_id, step))
}

/// The inbox entries of one task: each step of it that waits for a decision,
/// or only those `identity` may decide and has not yet decided. Pure: reads
/// the history alone.
pub fn inbox_entries(task_id: &str, history: &[Event], identity: Option<&str>) -> Vec<InboxEntry> {
    let (_actor, agent, input) = submitter(history);
    let doc = super::validate::parse(&input).ok();
    let outputs = doc
        .as_ref()
        .map(|d| recorded_outputs(history, d))
        .unwrap_or_default();
    let done = rollback_plan(history);
    let mut out = Vec::new();
    for p in pending(history) {
        if let Some(who) = identity
            && (!p.approvers.iter().any(|a| a == who)
                || p.decisions.iter().any(|d| d.identity == who))
        {
            continue;
        }
        let mut rollback = vec![own_rollback(&p, doc.as_ref(), &outputs)];
        rollback.extend(done.iter().cloned());
        out.push(InboxEntry {
            id: approval_id(task_id, &p.step),
            task_id: task_id.to_string(),
            summary: format!(
                "{} wants {} {} ({})",
                agent.clone().unwrap_or_default(),
                p.tool,
                p.input,
                input["reason"].as_str().unwrap_or("no reason given")
            ),
            risk: p.decision.risk.clone(),
            decision: p.decision.decision,
            rules: p.decision.decided_by.clone(),
            owners: p.decision.owners.clone(),
            evidence: input["evidence"].clone(),
            rollback_plan: rollback,
            approvers: p.approvers,
            quorum: p.quorum,
            decisions: p.decisions,
            escalated_to: p.escalated_to,
            deadline_at_ms: p.deadline_at_ms,
            step: p.step,
        });
    }
    out
}

/// The recorded outputs of the plan's steps that completed, by step id.
fn recorded_outputs(history: &[Event], doc: &PlanDoc) -> BTreeMap<String, Value> {
    let mut names: HashMap<i64, &str> = HashMap::new();
    let mut out = BTreeMap::new();
    for e in history {
        match &e.payload {
            EventPayload::StepScheduled { name, .. } => {
                if let Some(s) = doc.steps.iter().find(|s| &s.id == name) {
                    names.insert(e.seq, &s.id);
                }
            }
            EventPayload::StepCompleted {
                step_seq, output, ..
            } => {
                if let Some(name) = names.get(step_seq) {
                    out.insert(name.to_string(), output.clone());
                }
            }
            _ => {}
        }
    }
    out
}

/// How the pending step would be undone once it ran: its compensation
/// rendered exactly as the plan will register it (with the input as edited by
/// the approvals recorded so far), else its recovery path.
fn own_rollback(
    p: &PendingApproval,
    doc: Option<&PlanDoc>,
    outputs: &BTreeMap<String, Value>,
) -> String {
    let step = doc.and_then(|d| d.steps.iter().find(|s| s.id == p.step));
    // The workflow runs the input with the last approver's edit merged in.
    let edit = p
        .decisions
        .iter()
        .rev()
        .filter(|d| d.decision == "approve")
        .find_map(|d| d.edit.as_ref());
    let input = match edit {
        Some(e) => super::merge(&p.input, e),
        None => p.input.clone(),
    };
    let recovery = step
        .and_then(|s| s.recovery_path.clone())
        .or_else(|| p.decision.recovery_path.clone());
    let compensation = step.map(|s| super::resolve_compensation(s, &p.decision, outputs, &input));
    match (compensation, recovery) {
        (Some(Ok(Some(c))), _) => format!("{}: compensate with {} {}", p.step, c.tool, c.input),
        (Some(Err(e)), _) => format!(
            "{}: its compensation does not resolve ({e}); the step will fail before it runs",
            p.step
        ),
        (None, _) => format!(
            "{}: the plan of this task does not parse, so its compensation is unknown",
            p.step
        ),
        (Some(Ok(None)), Some(r)) => format!("{}: no automatic undo; {r}", p.step),
        (Some(Ok(None)), None) => {
            format!("{}: no automatic undo and no recovery path", p.step)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approval_ids_round_trip() {
        let task = "0190f3a2-7c1e-7b3a-9e4f-1a2b3c4d5e6f";
        let id = approval_id(task, "pay_2");
        assert_eq!(id, format!("{task}:pay_2"));
        assert_eq!(parse_approval_id(&id), Some((task, "pay_2")));
        for bad in ["", "no-colon", ":pay", "task:"] {
            assert_eq!(parse_approval_id(bad), None, "{bad:?}");
        }
    }
}
