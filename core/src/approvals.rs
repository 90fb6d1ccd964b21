//! The approval inbox, folded from a task's state alone: each open request
//! with what an approver needs to decide it (summary, risk, blast radius,
//! evidence, the rollback plan, the deciding rules). Pure.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::gateway::{InterventionPath, RuleRef};
use crate::state::TaskState;

/// One recorded decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboxDecision {
    pub identity: String,
    /// `approve` or `reject`.
    pub decision: String,
    pub comment: Option<String>,
    pub at_ms: i64,
    pub edit: Option<Value>,
}

/// One open approval request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboxEntry {
    /// `<task_id>:<request seq>`: what `POST /v1/approvals/{id}` takes.
    pub id: String,
    pub task_id: String,
    /// The seq of its `ApprovalRequested` event.
    pub request_seq: i64,
    /// `step` (a gated step) or `workflow` (the workflow's own approval).
    pub kind: String,
    /// The step's name, or the approval's name in the workflow.
    pub step: String,
    pub tool: Option<String>,
    /// The input the approvers decide on.
    pub input: Option<Value>,
    pub agent: Option<String>,
    pub on_behalf_of: Option<String>,
    /// `<agent> wants <tool> <input> (<reason>)`.
    pub summary: String,
    /// `low`, `medium` or `high`.
    pub risk: String,
    pub decision: InterventionPath,
    /// The rules that decided, with their explanation.
    pub rules: Vec<RuleRef>,
    pub policy_hash: Option<String>,
    /// The owners affected (blast radius).
    pub owners: Vec<String>,
    /// What the agent gave as evidence when it submitted the task.
    pub evidence: Value,
    /// How to undo: this step first, then every completed step, newest first.
    pub rollback_plan: Vec<String>,
    pub approvers: Vec<String>,
    pub quorum: u32,
    pub decisions: Vec<InboxDecision>,
    pub escalated_to: Option<String>,
    pub requested_at_ms: i64,
    pub deadline_at_ms: i64,
}

/// Splits an approval id: `<task_id>:<request seq>` or `<task_id>:<step>`.
pub fn parse_approval_id(id: &str) -> Option<(&str, &str)> {
    let (task_id, rest) = id.rsplit_once(':')?;
    (!task_id.is_empty() && !rest.is_empty()).then_some((task_id, rest))
}

/// The rollback plan of the task so far: for each completed step (newest
/// first), its compensation or recovery path.
pub fn rollback_plan(state: &TaskState) -> Vec<String> {
    let mut out = Vec::new();
    for seq in state.completion_order.iter().rev() {
        let Some(s) = state.steps.get(seq) else {
            continue;
        };
        if !(s.kind.is_write() || s.compensation.is_some()) {
            continue;
        }
        out.push(match (&s.compensation, &s.recovery_path) {
            (Some(c), _) => format!("{}: compensate with {} {}", s.name, c.tool, c.input),
            (None, Some(r)) => format!("{}: no automatic undo; {r}", s.name),
            (None, None) => format!("{}: no automatic undo and no recovery path", s.name),
        });
    }
    out
}

/// The open requests of a task; with `identity`, only those it may decide and
/// has not decided yet.
pub fn inbox_entries(state: &TaskState, identity: Option<&str>) -> Vec<InboxEntry> {
    let done = rollback_plan(state);
    let reason = state.input["reason"]
        .as_str()
        .unwrap_or("no reason given")
        .to_string();
    let mut out = Vec::new();
    for a in state.approvals.values().filter(|a| a.is_open()) {
        if let Some(who) = identity {
            let named =
                a.approvers.iter().any(|x| x == who) || a.escalated_to.as_deref() == Some(who);
            if !named || a.decisions.iter().any(|d| d.identity == who) {
                continue;
            }
        }
        let gate = a.policy_seq.and_then(|p| state.gates.get(&p));
        let agent = state.agent.clone().unwrap_or_else(|| "(no agent)".into());
        let (summary, risk, path, rules, hash, owners, own) = match gate {
            Some(g) => {
                let input = a.input.clone().unwrap_or_else(|| g.input.clone());
                // As it will be registered: with the edits recorded so far.
                let mut edited = input.clone();
                for e in a.decisions.iter().filter_map(|d| d.edit.as_ref()) {
                    edited = crate::gateway::merge_edit(&edited, e);
                }
                let compensation = g
                    .compensation
                    .clone()
                    .map(|c| crate::decide::edited_compensation(c, &g.input, &edited));
                let own = match (&compensation, &g.recovery_path) {
                    (Some(c), _) => format!("{}: compensate with {} {}", g.name, c.tool, c.input),
                    (None, Some(r)) => format!("{}: no automatic undo; {r}", g.name),
                    (None, None) if g.kind.is_write() => {
                        format!("{}: no automatic undo and no recovery path", g.name)
                    }
                    (None, None) => format!("{}: a read; nothing to undo", g.name),
                };
                (
                    format!("{agent} wants {} {input} ({reason})", g.tool),
                    g.decision.risk.clone().unwrap_or_else(|| "high".into()),
                    g.decision.path,
                    if a.decided_by.is_empty() {
                        g.decision.decided_by.clone()
                    } else {
                        a.decided_by.clone()
                    },
                    Some(g.decision.policy_hash.clone()),
                    g.decision.owners.clone(),
                    Some(own),
                )
            }
            None => (
                format!(
                    "{agent} asks for approval {:?} in workflow {} ({reason})",
                    a.subject, state.workflow
                ),
                "high".to_string(),
                InterventionPath::GatedExecute,
                a.decided_by.clone(),
                None,
                Vec::new(),
                None,
            ),
        };
        let mut rollback: Vec<String> = own.into_iter().collect();
        rollback.extend(done.iter().cloned());
        out.push(InboxEntry {
            id: format!("{}:{}", state.task_id, a.seq),
            task_id: state.task_id.clone(),
            request_seq: a.seq,
            kind: if gate.is_some() { "step" } else { "workflow" }.into(),
            step: a.subject.clone(),
            tool: gate.map(|g| g.tool.clone()),
            input: a.input.clone(),
            agent: state.agent.clone(),
            on_behalf_of: state.on_behalf_of.clone(),
            summary,
            risk,
            decision: path,
            rules,
            policy_hash: hash,
            owners,
            evidence: state.input["evidence"].clone(),
            rollback_plan: rollback,
            approvers: a.approvers.clone(),
            quorum: a.quorum,
            decisions: a
                .decisions
                .iter()
                .map(|d| InboxDecision {
                    identity: d.identity.clone(),
                    decision: if d.approved { "approve" } else { "reject" }.into(),
                    comment: d.comment.clone(),
                    at_ms: d.recorded_at_ms,
                    edit: d.edit.clone(),
                })
                .collect(),
            escalated_to: a.escalated_to.clone(),
            requested_at_ms: a.requested_at_ms,
            deadline_at_ms: a.deadline_at_ms,
        });
    }
    out
}
