//! The governance gateway's contract: what the engine asks before any step of
//! any workflow is scheduled, and the answer it records.
//!
//! `decide` calls [`Gateway::evaluate`] for every step command a workflow
//! issues — built in, plan, or user-written; a workflow cannot opt out — and
//! records the answer as a `PolicyEvaluated` event before anything else is
//! scheduled for the step. Replay uses the recorded decision and never
//! evaluates again, so a policy change never changes a replay.
//!
//! The implementation (Cedar over the catalog) lives in `mandate-activities`;
//! this module holds the types and the pure rules that do not depend on a
//! policy language: which pre-approval covers a gated step, and who may
//! decide an approval ([`check_approval_decision`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::tool::ToolKind;

/// An intervention path, from least to most restrictive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InterventionPath {
    AutoExecute,
    MonitoredExecute,
    FlaggedExecute,
    GatedExecute,
    Deny,
}

impl InterventionPath {
    pub const ALL: [InterventionPath; 5] = [
        InterventionPath::AutoExecute,
        InterventionPath::MonitoredExecute,
        InterventionPath::FlaggedExecute,
        InterventionPath::GatedExecute,
        InterventionPath::Deny,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InterventionPath::AutoExecute => "auto_execute",
            InterventionPath::MonitoredExecute => "monitored_execute",
            InterventionPath::FlaggedExecute => "flagged_execute",
            InterventionPath::GatedExecute => "gated_execute",
            InterventionPath::Deny => "deny",
        }
    }

    pub fn parse(s: &str) -> Option<InterventionPath> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

impl std::fmt::Display for InterventionPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a task acts as: the agent bound from its token at submission, and the
/// user it acts for (checked against the catalog at submission). Recorded in
/// `TaskSubmitted`; never taken from a workflow's input.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Principal {
    #[serde(default)]
    pub agent: Option<String>,
    #[serde(default)]
    pub on_behalf_of: Option<String>,
}

/// A rule that decided, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRef {
    pub id: String,
    pub message: String,
    /// `org`, `team X`, `agent X`, or `builtin` for catalog and identity checks.
    pub level: String,
    #[serde(default)]
    pub file: Option<String>,
}

/// Who must approve, how many, and within how long.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRequirement {
    /// Identities allowed to approve (policy approvers and tool owners).
    pub approvers: Vec<String>,
    pub quorum: u32,
    pub timeout_ms: u64,
    /// The secondary approver the request escalates to on timeout.
    #[serde(default)]
    pub escalation: Option<String>,
}

impl ApprovalRequirement {
    /// Whether `self` asks for more than `other`: a larger quorum, or
    /// approvers `other` did not name.
    pub fn stricter_than(&self, other: &ApprovalRequirement) -> bool {
        self.quorum > other.quorum || self.approvers.iter().any(|a| !other.approvers.contains(a))
    }
}

/// A pre-approval that covered a gated step, as recorded in its decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreapprovalUse {
    pub id: String,
    pub granted_by: String,
    pub expires_at_ms: i64,
}

/// A batch pre-approval: "tool X for agent Y (scope S) until T", granted by an
/// authenticated owner of the tool through its own API. Stored apart from any
/// history; a decision that uses one records it ([`PreapprovalUse`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preapproval {
    pub id: String,
    pub tool: String,
    pub agent: String,
    /// `None` or `*`: any scope.
    #[serde(default)]
    pub scope: Option<String>,
    pub granted_by: String,
    pub granted_at_ms: i64,
    pub expires_at_ms: i64,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub revoked_by: Option<String>,
    #[serde(default)]
    pub revoked_at_ms: Option<i64>,
}

impl Preapproval {
    /// Whether it is in force at `now_ms`.
    pub fn active_at(&self, now_ms: i64) -> bool {
        self.granted_at_ms <= now_ms
            && now_ms < self.expires_at_ms
            && self.revoked_at_ms.is_none_or(|r| now_ms < r)
    }

    /// Whether it covers `tool` for `agent` in `scope` at `now_ms`.
    pub fn covers(&self, tool: &str, agent: &str, scope: Option<&str>, now_ms: i64) -> bool {
        self.active_at(now_ms)
            && self.tool == tool
            && self.agent == agent
            && match self.scope.as_deref() {
                None | Some("*") => true,
                Some(s) => scope == Some(s),
            }
    }
}

/// What is being decided: one step of one task.
#[derive(Debug, Clone, Copy)]
pub struct GatewayRequest<'a> {
    pub task_id: &'a str,
    pub workflow: &'a str,
    pub principal: &'a Principal,
    /// The step's name in its workflow.
    pub step: &'a str,
    pub tool: &'a str,
    /// `None` when the tool is not registered in this binary.
    pub kind: Option<ToolKind>,
    pub input: &'a Value,
    pub now_ms: i64,
}

/// The gateway's answer for one step, recorded in `PolicyEvaluated`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayDecision {
    pub path: InterventionPath,
    /// The rules that decided, with their explanation.
    pub decided_by: Vec<RuleRef>,
    /// The hash of the policy set (catalog and rules) that decided.
    pub policy_hash: String,
    /// For `gated_execute`: who must approve.
    #[serde(default)]
    pub approval: Option<ApprovalRequirement>,
    /// The CRUDLEX operation of the tool (`create`, `read`, …).
    #[serde(default)]
    pub operation: Option<String>,
    /// The resource the step touches (the tool's scope field), `*` if none.
    #[serde(default)]
    pub scope: Option<String>,
    /// The tool's owners (who routing will tell).
    #[serde(default)]
    pub owners: Vec<String>,
    /// `low`, `medium` or `high`.
    #[serde(default)]
    pub risk: Option<String>,
    #[serde(default)]
    pub data_classes: Vec<String>,
    /// The effective CRUDLEX letters (user ∩ agent ∩ environment).
    #[serde(default)]
    pub crudlex: Option<String>,
    #[serde(default)]
    pub autonomy: Option<String>,
    #[serde(default)]
    pub recovery_path: Option<String>,
    /// The pre-approval that satisfied a gate, if one did.
    #[serde(default)]
    pub preapproval: Option<PreapprovalUse>,
}

impl GatewayDecision {
    /// `id: message; id: message`.
    pub fn explain(&self) -> String {
        self.decided_by
            .iter()
            .map(|r| format!("{}: {}", r.id, r.message))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The first deciding rule's id (what an error names).
    pub fn rule(&self) -> &str {
        self.decided_by
            .first()
            .map(|r| r.id.as_str())
            .unwrap_or("(no rule)")
    }
}

/// What a workflow's own approval wait (`WorkflowContext::wait_approval`)
/// asks of its approvers.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowApproval {
    pub requirement: ApprovalRequirement,
    pub decided_by: Vec<RuleRef>,
    pub policy_hash: String,
}

/// The governance interface the engine asks. Implementations must be pure
/// apart from reading the policy set in force (no I/O per call): `decide`
/// calls them while deciding.
pub trait Gateway: Send + Sync {
    /// Decides one step. Never fails: a request that cannot be judged is
    /// denied with the reason.
    fn evaluate(&self, request: &GatewayRequest<'_>) -> GatewayDecision;

    /// Who decides an approval a workflow asks for itself (`subject` is its
    /// name in the workflow).
    fn workflow_approval(
        &self,
        principal: &Principal,
        workflow: &str,
        subject: &str,
    ) -> WorkflowApproval;

    /// Checks a submission's principal: the agent is known and the user it
    /// acts for is one the catalog lets it act for. The message names the
    /// field (`agent`, `on_behalf_of`) and what to do.
    fn admit(&self, principal: &Principal) -> Result<(), String>;

    /// Whether `identity` may grant (or revoke) a pre-approval of `tool` for
    /// `agent`: it must own the tool. The message says why not.
    fn may_preapprove(&self, identity: &str, tool: &str, agent: &str) -> Result<(), String>;

    /// Who hears about an event `decide` records (see [`crate::routing`]).
    /// A gateway without routing notifies nobody.
    fn route(
        &self,
        _request: &crate::routing::RoutingRequest<'_>,
    ) -> Option<crate::routing::RoutingRecord> {
        None
    }
}

/// Why an approval decision was refused (nothing is recorded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalRefusal {
    #[error("task {task_id} has no approval request at seq {request_seq}")]
    NoSuchRequest { task_id: String, request_seq: i64 },
    #[error("the approval request at seq {request_seq} of task {task_id} is already {state}")]
    Closed {
        task_id: String,
        request_seq: i64,
        state: String,
    },
    #[error(
        "{identity} may not decide the approval request at seq {request_seq} of task {task_id}: {why}"
    )]
    NotAllowed {
        task_id: String,
        request_seq: i64,
        identity: String,
        why: String,
    },
    #[error(
        "the approval request at seq {request_seq} of task {task_id} passed its deadline at {deadline_at_ms} ms"
    )]
    PastDeadline {
        task_id: String,
        request_seq: i64,
        deadline_at_ms: i64,
    },
}

/// The identity an approval was decided by, as recorded in the actor field.
pub fn approver_actor(identity: &str) -> String {
    format!("approver:{identity}")
}

/// Checks that `identity` may decide the approval request at `request_seq`
/// of `state` at `now_ms`: the request is open and before its deadline; the
/// identity is named by it (or is its recorded escalation target); it is
/// neither the submitting agent nor the user the task acts for; it has not
/// decided this request already (a quorum counts distinct identities).
pub fn check_approval_decision(
    state: &crate::state::TaskState,
    request_seq: i64,
    identity: &str,
    now_ms: i64,
) -> Result<(), ApprovalRefusal> {
    let task_id = state.task_id.clone();
    let Some(request) = state.approvals.get(&request_seq) else {
        return Err(ApprovalRefusal::NoSuchRequest {
            task_id,
            request_seq,
        });
    };
    if let Some(outcome) = &request.outcome {
        return Err(ApprovalRefusal::Closed {
            task_id,
            request_seq,
            state: outcome.clone(),
        });
    }
    if state.is_final() {
        return Err(ApprovalRefusal::Closed {
            task_id,
            request_seq,
            state: format!("moot: the task is {}", state.status()),
        });
    }
    let not_allowed = |why: String| ApprovalRefusal::NotAllowed {
        task_id: state.task_id.clone(),
        request_seq,
        identity: identity.to_string(),
        why,
    };
    if state.agent.as_deref() == Some(identity) {
        return Err(not_allowed(
            "it is the agent that submitted the task; an agent never approves its own step".into(),
        ));
    }
    if state.on_behalf_of.as_deref() == Some(identity) {
        return Err(not_allowed(
            "the task acts on its behalf; the requester never approves its own request".into(),
        ));
    }
    let named = request.approvers.iter().any(|a| a == identity)
        || (request.escalated_to.as_deref() == Some(identity));
    if !named {
        let mut allowed = request.approvers.clone();
        allowed.extend(request.escalated_to.iter().cloned());
        return Err(not_allowed(format!(
            "the request names {} as approvers",
            if allowed.is_empty() {
                "nobody".to_string()
            } else {
                allowed.join(", ")
            }
        )));
    }
    if request.decisions.iter().any(|d| d.identity == identity) {
        return Err(not_allowed(
            "it has already decided this request (a quorum counts distinct people)".into(),
        ));
    }
    if now_ms >= request.deadline_at_ms {
        return Err(ApprovalRefusal::PastDeadline {
            task_id,
            request_seq,
            deadline_at_ms: request.deadline_at_ms,
        });
    }
    Ok(())
}

/// What an approver's edit leads to once the gateway re-checked the edited
/// input (`decide` acts on it; the console previews it).
#[derive(Debug, Clone, PartialEq)]
pub enum EditVerdict {
    /// Policy denies the edited step: the request closes `edit_denied`.
    Denied,
    /// The edited step needs approvers the request did not ask: a new
    /// request with this requirement replaces it (`superseded`).
    Superseded(ApprovalRequirement),
    /// The step runs with the edited input.
    Proceeds,
}

/// The verdict on an edit whose re-check decided `d`, for a request that
/// asked `current`.
pub fn edit_verdict(d: &GatewayDecision, current: &ApprovalRequirement) -> EditVerdict {
    match (&d.path, &d.approval) {
        (InterventionPath::Deny, _) => EditVerdict::Denied,
        (InterventionPath::GatedExecute, Some(req))
            if d.preapproval.is_none() && req.stricter_than(current) =>
        {
            EditVerdict::Superseded(req.clone())
        }
        _ => EditVerdict::Proceeds,
    }
}

/// Records in a gated decision the first live pre-approval that covers
/// `tool` for the principal's agent.
pub fn apply_preapproval(
    decision: &mut GatewayDecision,
    preapprovals: &[Preapproval],
    principal: &Principal,
    tool: &str,
    now_ms: i64,
) {
    if decision.path == InterventionPath::GatedExecute
        && let Some(agent) = &principal.agent
        && let Some(p) = preapprovals
            .iter()
            .find(|p| p.covers(tool, agent, decision.scope.as_deref(), now_ms))
    {
        decision.preapproval = Some(PreapprovalUse {
            id: p.id.clone(),
            granted_by: p.granted_by.clone(),
            expires_at_ms: p.expires_at_ms,
        });
    }
}

/// Shallow merge: an approver's edit replaces the fields it names.
pub fn merge_edit(input: &Value, edit: &Value) -> Value {
    let mut out = input.clone();
    if let (Some(o), Some(e)) = (out.as_object_mut(), edit.as_object()) {
        for (k, v) in e {
            o.insert(k.clone(), v.clone());
        }
    }
    out
}
