//! What a session's history says about one call (read, never decided here):
//! the gateway's decision, an approval it waits for, the recorded result.

use mandate_engine::EventPayload as E;
use mandate_engine::{Event, core::gateway::RuleRef};
use serde_json::{Value, json};

/// Where a call stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Not decided yet, or scheduled and running.
    Running,
    /// Gated: people must approve first.
    AwaitingApproval {
        rule: String,
        approvers: Vec<String>,
        quorum: u32,
        request_seq: i64,
    },
    /// Completed: the recorded output.
    Completed(Value),
    /// Nothing ran: denied by policy, or its approval was rejected, timed
    /// out or withdrawn.
    Denied {
        rule: String,
        reason: String,
        /// The gate's rule when people decided.
        gate: Option<String>,
        by: Vec<String>,
    },
    /// It ran and failed for good.
    Failed(String),
    /// The session ended before the call was decided.
    SessionEnded(String),
}

fn rule_ids(rules: &[RuleRef]) -> String {
    rules
        .iter()
        .map(|r| r.id.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The outcome of the call whose step is named `name`.
pub fn outcome(history: &[Event], name: &str, call_id: &str) -> Outcome {
    let mut policy: Option<(i64, String)> = None;
    let mut step: Option<i64> = None;
    let mut approval: Option<Outcome> = None;
    let mut decided_by: Vec<String> = Vec::new();
    let mut ended: Option<String> = None;
    for e in history {
        match &e.payload {
            E::PolicyEvaluated {
                name: n, decision, ..
            } if n == name => policy = Some((e.seq, rule_ids(&decision.decided_by))),
            E::MarkerRecorded { kind, value, .. }
                if kind == "call.refused" && value["call_id"] == call_id =>
            {
                return Outcome::Failed(value["error"].as_str().unwrap_or_default().to_string());
            }
            E::ApprovalRequested {
                policy_seq: Some(p),
                approvers,
                quorum,
                decided_by: rules,
                ..
            } if policy.as_ref().is_some_and(|(s, _)| s == p) => {
                approval = Some(Outcome::AwaitingApproval {
                    rule: rule_ids(rules),
                    approvers: approvers.clone(),
                    quorum: *quorum,
                    request_seq: e.seq,
                });
            }
            E::ApprovalResolved {
                request_seq, by, ..
            } if matches!(&approval, Some(Outcome::AwaitingApproval { request_seq: r, .. }) if r == request_seq) =>
            {
                decided_by = by.clone();
            }
            E::StepDenied {
                policy_seq,
                rule,
                reason,
            } if policy.as_ref().is_some_and(|(s, _)| s == policy_seq) => {
                let gate = match &approval {
                    Some(Outcome::AwaitingApproval { rule, .. }) => Some(rule.clone()),
                    _ => None,
                };
                return Outcome::Denied {
                    rule: rule.clone(),
                    reason: reason.clone(),
                    gate,
                    by: decided_by,
                };
            }
            E::StepScheduled {
                policy_seq: Some(p),
                ..
            } if policy.as_ref().is_some_and(|(s, _)| s == p) => step = Some(e.seq),
            E::StepCompleted {
                step_seq, output, ..
            } if Some(*step_seq) == step => return Outcome::Completed(output.clone()),
            E::StepFailed {
                step_seq, error, ..
            } if Some(*step_seq) == step => return Outcome::Failed(error.message.clone()),
            E::TaskCompleted { .. } => ended = Some("completed".into()),
            E::TaskCancelled { .. } => ended = Some("cancelled".into()),
            E::TaskFailed { error, .. } => ended = Some(format!("failed: {error}")),
            E::TaskEscalated { reason, .. } => ended = Some(format!("escalated: {reason}")),
            E::TaskBlocked { reason, .. } => ended = Some(format!("blocked: {reason}")),
            _ => {}
        }
    }
    if let Some(how) = ended {
        return Outcome::SessionEnded(how);
    }
    if step.is_some() {
        return Outcome::Running;
    }
    approval.unwrap_or(Outcome::Running)
}

/// Every call of a session, in order: name, tool, decision, state, output.
pub fn calls(history: &[Event]) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    let mut by_policy = std::collections::BTreeMap::new();
    let mut by_step = std::collections::BTreeMap::new();
    for e in history {
        match &e.payload {
            E::PolicyEvaluated {
                name,
                tool,
                input,
                decision,
                ..
            } => {
                by_policy.insert(e.seq, out.len());
                out.push(json!({
                    "step": name, "tool": tool, "input": input,
                    "decision": decision.path.as_str(),
                    "rules": decision.decided_by.iter().map(|r| &r.id).collect::<Vec<_>>(),
                    "state": "deciding",
                }));
            }
            E::ApprovalRequested {
                policy_seq: Some(p),
                approvers,
                ..
            } => {
                if let Some(&i) = by_policy.get(p) {
                    out[i]["state"] = "awaiting_approval".into();
                    out[i]["approvers"] = json!(approvers);
                }
            }
            E::StepDenied {
                policy_seq,
                rule,
                reason,
            } => {
                if let Some(&i) = by_policy.get(policy_seq) {
                    out[i]["state"] = "denied".into();
                    out[i]["denied_by"] = json!({"rule": rule, "reason": reason});
                }
            }
            E::StepScheduled {
                policy_seq: Some(p),
                ..
            } => {
                if let Some(&i) = by_policy.get(p) {
                    by_step.insert(e.seq, i);
                    out[i]["state"] = "running".into();
                }
            }
            E::StepCompleted {
                step_seq, output, ..
            } => {
                if let Some(&i) = by_step.get(step_seq) {
                    out[i]["state"] = "completed".into();
                    out[i]["output"] = output.clone();
                }
            }
            E::StepFailed {
                step_seq, error, ..
            } => {
                if let Some(&i) = by_step.get(step_seq) {
                    out[i]["state"] = "failed".into();
                    out[i]["error"] = error.message.clone().into();
                }
            }
            E::CompensationStarted { step_seq, .. } => {
                if let Some(&i) = by_step.get(step_seq) {
                    out[i]["state"] = "undoing".into();
                }
            }
            _ => {}
        }
    }
    // A compensation's completion names its own seq; map it back.
    let mut comp = std::collections::BTreeMap::new();
    for e in history {
        match &e.payload {
            E::CompensationStarted { step_seq, .. } => {
                comp.insert(e.seq, *step_seq);
            }
            E::CompensationCompleted {
                compensation_seq, ..
            } => {
                if let Some(i) = comp.get(compensation_seq).and_then(|s| by_step.get(s)) {
                    out[*i]["state"] = "undone".into();
                }
            }
            E::CompensationFailed {
                compensation_seq,
                error,
                ..
            } => {
                if let Some(i) = comp.get(compensation_seq).and_then(|s| by_step.get(s)) {
                    out[*i]["state"] = "undo_failed".into();
                    out[*i]["error"] = error.message.clone().into();
                }
            }
            _ => {}
        }
    }
    out
}
