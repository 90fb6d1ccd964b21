//! Governance in the shell: the gateway every decision consults, the
//! pre-approvals in force (kept in memory, refreshed from the store), and the
//! engine calls through which people decide approvals and grant
//! pre-approvals — each with an authenticated identity, never through a
//! signal.
//!
//! Each process keeps the live pre-approvals in memory: refreshed at once
//! when it grants or revokes, and from the store every second by its worker
//! (so another process's grant or revocation takes effect here within about
//! a second).

use std::sync::Arc;

use serde_json::Value;

use super::{Engine, Error, Shared};
use crate::core::approvals::{InboxEntry, inbox_entries};
use crate::core::event::{EventPayload, NewEvent};
use crate::core::gateway::{
    ApprovalRequirement, EditVerdict, GatewayDecision, GatewayRequest, Preapproval, Principal,
    apply_preapproval, approver_actor, check_approval_decision, edit_verdict,
};
use crate::core::state::{TaskState, TaskStatus};
use crate::store::TaskFilter;
use crate::store::governance::MAX_PREAPPROVALS;

/// Longest pre-approval: 30 days.
pub const MAX_PREAPPROVAL_MS: i64 = 30 * 86_400_000;
/// Longest approval comment, in characters.
pub const MAX_COMMENT_CHARS: usize = 1_000;
/// Most tasks waiting for approval one inbox read looks at.
pub const INBOX_SCAN_LIMIT: u32 = 500;

/// Which approval request of a task a decision is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApprovalTarget {
    /// The `ApprovalRequested` event at this seq.
    Seq(i64),
    /// The open request for this step (or the workflow's approval of this name).
    Subject(String),
    /// The only open request of the task.
    Only,
}

impl ApprovalTarget {
    /// `123` → `Seq`, anything else → `Subject`.
    pub fn parse(s: &str) -> ApprovalTarget {
        match s.parse::<i64>() {
            Ok(seq) => ApprovalTarget::Seq(seq),
            Err(_) => ApprovalTarget::Subject(s.to_string()),
        }
    }
}

/// A person's decision, as given.
#[derive(Debug, Clone, Default)]
pub struct ApprovalDecision {
    pub approved: bool,
    pub comment: Option<String>,
    /// Input fields to change (approve only; re-checked by the gateway).
    pub edit: Option<Value>,
    /// How the identity was authenticated (`token:<id>`, `cli:<os user>`).
    pub via: Option<String>,
}

/// What was recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRecorded {
    pub request_seq: i64,
    pub subject: String,
    /// The seq of the `ApprovalDecided` event.
    pub seq: i64,
    /// When the request was made (for time to intervention).
    pub requested_at_ms: i64,
    pub tool: Option<String>,
}

/// What an approver's edit would do, re-checked by the gateway now and
/// recorded nowhere (the console shows it before the edit is submitted).
/// The decision applies when the request reaches its quorum, as `decide`
/// re-checks it then.
#[derive(Debug, Clone)]
pub struct EditPreview {
    pub request_seq: i64,
    pub subject: String,
    pub tool: String,
    /// The input the approvers were asked about.
    pub base: Value,
    /// That input with every recorded edit and then this one merged in.
    pub input: Value,
    /// Whether the edit changes the input at all.
    pub changed: bool,
    /// The gateway's decision for `input` (path, rules, approvers).
    pub decision: GatewayDecision,
    pub verdict: EditVerdict,
}

/// A pre-approval to grant.
#[derive(Debug, Clone)]
pub struct PreapprovalGrant {
    pub tool: String,
    pub agent: String,
    pub scope: Option<String>,
    pub duration_ms: i64,
    pub reason: Option<String>,
}

impl Shared {
    /// The pre-approvals in force, as last read.
    pub(crate) fn live_preapprovals(&self) -> Arc<Vec<Preapproval>> {
        self.preapprovals.read().expect("preapprovals lock").clone()
    }

    /// Rereads the live pre-approvals; pokes local drivers if they changed
    /// (a task waiting for approval may now be covered).
    pub(crate) async fn refresh_preapprovals(&self) -> Result<(), Error> {
        let now = self.clock.now_ms();
        let live = self.store.preapprovals(Some(now), MAX_PREAPPROVALS).await?;
        let changed = {
            let mut current = self.preapprovals.write().expect("preapprovals lock");
            let changed = **current != live;
            *current = Arc::new(live);
            changed
        };
        if changed {
            for a in self.active.lock().expect("active map").values() {
                a.poke.notify_one();
            }
        }
        Ok(())
    }
}

impl Engine {
    /// Records one person's decision on an approval request. `identity` must
    /// be authenticated by the caller (an API token's name, or the CLI's
    /// `--as` on a database it can write); the core checks that the request
    /// names it, that it is neither the submitting agent nor the user the
    /// task acts for, that it has not decided already, and that the deadline
    /// has not passed. A refusal writes nothing.
    pub async fn decide_approval(
        &self,
        task_id: &str,
        target: ApprovalTarget,
        identity: &str,
        decision: ApprovalDecision,
    ) -> Result<ApprovalRecorded, Error> {
        let s = &self.shared;
        let invalid = |field: &str, message: String| Error::InvalidInput {
            field: field.into(),
            message,
        };
        s.limits
            .check_name("identity", identity)
            .map_err(|m| invalid("identity", m))?;
        if let Some(c) = &decision.comment
            && c.chars().count() > MAX_COMMENT_CHARS
        {
            return Err(invalid(
                "comment",
                format!("longer than {MAX_COMMENT_CHARS} characters; shorten it"),
            ));
        }
        if let Some(e) = &decision.edit {
            if !decision.approved {
                return Err(invalid(
                    "edit",
                    "an edit goes with an approval, not a rejection".into(),
                ));
            }
            if e.as_object().is_none_or(|o| o.is_empty()) {
                return Err(invalid(
                    "edit",
                    "must be a non-empty JSON object of the input fields to change".into(),
                ));
            }
            s.limits.check_payload(e).map_err(|m| invalid("edit", m))?;
        }
        // What the append found (its seq is filled in after).
        let found: std::sync::Mutex<Option<ApprovalRecorded>> = std::sync::Mutex::new(None);
        let seq = self
            .append_external(task_id, "decide an approval of", |state| {
                let request_seq = find_request(state, &target)?;
                check_approval_decision(state, request_seq, identity, s.clock.now_ms())
                    .map_err(Error::ApprovalRefused)?;
                let a = &state.approvals[&request_seq];
                if decision.edit.is_some() && a.policy_seq.is_none() {
                    return Err(Error::InvalidInput {
                        field: "edit".into(),
                        message: format!(
                            "approval {:?} is the workflow's own, not a step's: there is no input to edit",
                            a.subject
                        ),
                    });
                }
                let tool = a
                    .policy_seq
                    .and_then(|p| state.gates.get(&p))
                    .map(|g| g.tool.clone());
                *found.lock().expect("found lock") = Some(ApprovalRecorded {
                    request_seq,
                    subject: a.subject.clone(),
                    seq: 0,
                    requested_at_ms: a.requested_at_ms,
                    tool,
                });
                Ok(vec![NewEvent {
                    actor: approver_actor(identity),
                    payload: EventPayload::ApprovalDecided {
                        request_seq,
                        identity: identity.to_string(),
                        approved: decision.approved,
                        comment: decision.comment.clone(),
                        edit: decision.edit.clone(),
                        via: decision.via.clone(),
                    },
                }])
            })
            .await?;
        let mut recorded = found
            .lock()
            .expect("found lock")
            .take()
            .expect("an append found its request");
        recorded.seq = seq;
        Ok(recorded)
    }

    /// Withdraws one open approval request of `task_id` on behalf of the
    /// task's own agent (an MCP client that cancelled the call waiting for
    /// it): nobody needs to decide it any more. Recorded as the request's
    /// `ApprovalResolved` with outcome `withdrawn` (as a rollback withdraws
    /// its open requests), `by` the agent's actor, `comment` the reason;
    /// a step's request also denies the step (`StepDenied`, rule
    /// `approval.withdrawn`), so it never runs. Refused, writing nothing,
    /// when `agent` is not the task's agent or the request is not open.
    /// Returns the seq of the last event appended.
    pub async fn withdraw_approval(
        &self,
        task_id: &str,
        request_seq: i64,
        agent: &str,
        reason: Option<String>,
    ) -> Result<i64, Error> {
        let invalid = |field: &str, message: String| Error::InvalidInput {
            field: field.into(),
            message,
        };
        if let Some(r) = &reason
            && r.chars().count() > MAX_COMMENT_CHARS
        {
            return Err(invalid(
                "reason",
                format!("longer than {MAX_COMMENT_CHARS} characters; shorten it"),
            ));
        }
        let actor = format!("agent:{agent}");
        self.append_external(task_id, "withdraw an approval request of", |state| {
                if state.agent.as_deref() != Some(agent) {
                    return Err(Error::Rejected {
                        task_id: task_id.to_string(),
                        message: format!(
                            "only the task's agent ({}) may withdraw its approval requests, not {agent}",
                            state.agent.as_deref().unwrap_or("none")
                        ),
                    });
                }
                let request_seq = find_request(state, &ApprovalTarget::Seq(request_seq))?;
                let a = &state.approvals[&request_seq];
                if let Some(outcome) = &a.outcome {
                    return Err(Error::Rejected {
                        task_id: task_id.to_string(),
                        message: format!(
                            "approval request {request_seq} ({}) is closed already ({outcome}); there is nothing to withdraw",
                            a.subject
                        ),
                    });
                }
                let mut events = vec![NewEvent {
                    actor: actor.clone(),
                    payload: EventPayload::ApprovalResolved {
                        request_seq,
                        outcome: "withdrawn".into(),
                        by: vec![actor.clone()],
                        comment: reason.clone(),
                    },
                }];
                if let Some(g) = a.policy_seq.and_then(|p| state.gates.get(&p)) {
                    events.push(NewEvent {
                        actor: actor.clone(),
                        payload: EventPayload::StepDenied {
                            policy_seq: g.seq,
                            rule: "approval.withdrawn".into(),
                            reason: format!(
                                "step {:?} ({}): its approval request was withdrawn by {actor}{}; the step was not run",
                                g.name,
                                g.tool,
                                reason
                                    .as_ref()
                                    .map(|r| format!(": {r}"))
                                    .unwrap_or_default()
                            ),
                        },
                    });
                }
                Ok(events)
            })
            .await
    }

    /// Re-checks an approver's edit as `decide` will when the request is
    /// approved, and records nothing: the same merge of edits, the same
    /// gateway and pre-approvals, the same verdict (denied, superseded by a
    /// stricter request, or proceeds). Refused as a decision would be when
    /// `identity` may not decide the request.
    pub async fn preview_approval_edit(
        &self,
        task_id: &str,
        target: ApprovalTarget,
        identity: &str,
        edit: &Value,
    ) -> Result<EditPreview, Error> {
        let s = &self.shared;
        let invalid = |message: String| Error::InvalidInput {
            field: "edit".into(),
            message,
        };
        if edit.as_object().is_none_or(|o| o.is_empty()) {
            return Err(invalid(
                "must be a non-empty JSON object of the input fields to change".into(),
            ));
        }
        s.limits.check_payload(edit).map_err(invalid)?;
        let now = s.clock.now_ms();
        let history = self.history(task_id).await?;
        let state = TaskState::fold(&history);
        let request_seq = find_request(&state, &target)?;
        check_approval_decision(&state, request_seq, identity, now)
            .map_err(Error::ApprovalRefused)?;
        let a = &state.approvals[&request_seq];
        let Some(g) = a.policy_seq.and_then(|p| state.gates.get(&p)) else {
            return Err(invalid(format!(
                "approval {:?} is the workflow's own, not a step's: there is no input to edit",
                a.subject
            )));
        };
        let (base, input) = a.edited_input(&g.input, Some(edit));
        s.limits
            .check_payload(&input)
            .map_err(|m| invalid(format!("the edited input: {m}")))?;
        let principal = Principal {
            agent: state.agent.clone(),
            on_behalf_of: state.on_behalf_of.clone(),
        };
        let mut decision = s.gateway.evaluate(&GatewayRequest {
            task_id,
            workflow: &state.workflow,
            principal: &principal,
            step: &g.name,
            tool: &g.tool,
            kind: Some(g.kind),
            input: &input,
            now_ms: now,
        });
        apply_preapproval(
            &mut decision,
            &s.live_preapprovals(),
            &principal,
            &g.tool,
            now,
        );
        let verdict = edit_verdict(
            &decision,
            &ApprovalRequirement {
                approvers: a.approvers.clone(),
                quorum: a.quorum,
                timeout_ms: a.timeout_ms,
                escalation: a.escalation.clone(),
            },
        );
        Ok(EditPreview {
            request_seq,
            subject: a.subject.clone(),
            tool: g.tool.clone(),
            changed: input != base,
            base,
            input,
            decision,
            verdict,
        })
    }

    /// The open approval requests: of one task, or of every task waiting for
    /// approval (the newest [`INBOX_SCAN_LIMIT`]; `truncated` says when more
    /// wait). With `identity`, only those it may decide and has not.
    pub async fn approval_inbox(
        &self,
        task_id: Option<&str>,
        identity: Option<&str>,
    ) -> Result<(Vec<InboxEntry>, bool), Error> {
        let (ids, truncated) = match task_id {
            Some(t) => (vec![t.to_string()], false),
            None => {
                let mut rows = self
                    .shared
                    .store
                    .list_tasks(TaskFilter {
                        status: Some(TaskStatus::NeedsApproval),
                        limit: INBOX_SCAN_LIMIT + 1,
                        ..Default::default()
                    })
                    .await?;
                let truncated = rows.len() > INBOX_SCAN_LIMIT as usize;
                rows.truncate(INBOX_SCAN_LIMIT as usize);
                (rows.into_iter().map(|r| r.id).collect(), truncated)
            }
        };
        let mut out = Vec::new();
        for id in ids {
            let history = self.history(&id).await?;
            let state = TaskState::fold(&history);
            out.extend(inbox_entries(&state, identity));
        }
        Ok((out, truncated))
    }

    /// Grants a pre-approval as `granted_by`, which the gateway must accept
    /// as an owner of the tool. Recorded with grantor, scope and expiry; no
    /// workflow or tool can create one.
    pub async fn grant_preapproval(
        &self,
        grant: PreapprovalGrant,
        granted_by: &str,
    ) -> Result<Preapproval, Error> {
        let s = &self.shared;
        let invalid = |field: &str, message: String| Error::InvalidInput {
            field: field.into(),
            message,
        };
        for (field, v) in [
            ("tool", Some(&grant.tool)),
            ("agent", Some(&grant.agent)),
            ("scope", grant.scope.as_ref()),
            ("granted_by", Some(&granted_by.to_string())),
        ] {
            if let Some(v) = v {
                s.limits
                    .check_name(field, v)
                    .map_err(|m| invalid(field, m))?;
            }
        }
        if grant
            .reason
            .as_ref()
            .is_some_and(|r| r.chars().count() > MAX_COMMENT_CHARS)
        {
            return Err(invalid(
                "reason",
                format!("longer than {MAX_COMMENT_CHARS} characters"),
            ));
        }
        if !(1..=MAX_PREAPPROVAL_MS).contains(&grant.duration_ms) {
            return Err(invalid(
                "duration_ms",
                format!(
                    "{} is out of range: a pre-approval lasts 1 ms to {MAX_PREAPPROVAL_MS} ms (30 days)",
                    grant.duration_ms
                ),
            ));
        }
        s.gateway
            .may_preapprove(granted_by, &grant.tool, &grant.agent)
            .map_err(|message| Error::Forbidden { message })?;
        let live = s
            .store
            .preapprovals(Some(s.clock.now_ms()), MAX_PREAPPROVALS)
            .await?;
        if live.len() >= MAX_PREAPPROVALS as usize {
            return Err(Error::Rejected {
                task_id: String::new(),
                message: format!(
                    "{MAX_PREAPPROVALS} pre-approvals are in force, the limit; revoke some first"
                ),
            });
        }
        let now = s.clock.now_ms();
        let p = Preapproval {
            id: uuid::Uuid::now_v7().to_string(),
            tool: grant.tool,
            agent: grant.agent,
            scope: grant.scope,
            granted_by: granted_by.to_string(),
            granted_at_ms: now,
            expires_at_ms: now + grant.duration_ms,
            reason: grant.reason,
            revoked_by: None,
            revoked_at_ms: None,
        };
        s.store.insert_preapproval(p.clone()).await?;
        s.refresh_preapprovals().await?;
        Ok(p)
    }

    /// Revokes a live pre-approval, as an owner of its tool.
    pub async fn revoke_preapproval(&self, id: &str, by: &str) -> Result<Preapproval, Error> {
        let s = &self.shared;
        let all = s.store.preapprovals(None, MAX_PREAPPROVALS).await?;
        let Some(p) = all.into_iter().find(|p| p.id == id) else {
            return Err(Error::NotFound {
                what: format!(
                    "no pre-approval with id {id}; `mandate preapproval list` shows them"
                ),
            });
        };
        s.gateway
            .may_preapprove(by, &p.tool, &p.agent)
            .map_err(|message| Error::Forbidden { message })?;
        let revoked = s
            .store
            .revoke_preapproval(id, by, s.clock.now_ms())
            .await?
            .ok_or_else(|| Error::Rejected {
                task_id: String::new(),
                message: format!("pre-approval {id} was already revoked"),
            })?;
        s.refresh_preapprovals().await?;
        Ok(revoked)
    }

    /// Pre-approvals, newest first: the live ones, or all.
    pub async fn preapprovals(&self, live_only: bool) -> Result<Vec<Preapproval>, Error> {
        let s = &self.shared;
        let at = live_only.then(|| s.clock.now_ms());
        Ok(s.store.preapprovals(at, MAX_PREAPPROVALS).await?)
    }

    /// Rereads the live pre-approvals from the store now.
    pub async fn refresh_preapprovals(&self) -> Result<(), Error> {
        self.shared.refresh_preapprovals().await
    }
}

fn find_request(state: &TaskState, target: &ApprovalTarget) -> Result<i64, Error> {
    let open: Vec<&crate::core::state::ApprovalState> =
        state.approvals.values().filter(|a| a.is_open()).collect();
    let none = |what: String| Error::Rejected {
        task_id: state.task_id.clone(),
        message: what,
    };
    match target {
        ApprovalTarget::Seq(seq) => {
            if state.approvals.contains_key(seq) {
                Ok(*seq)
            } else {
                Err(Error::ApprovalRefused(
                    crate::core::gateway::ApprovalRefusal::NoSuchRequest {
                        task_id: state.task_id.clone(),
                        request_seq: *seq,
                    },
                ))
            }
        }
        ApprovalTarget::Subject(subject) => open
            .iter()
            .find(|a| &a.subject == subject)
            .map(|a| a.seq)
            .ok_or_else(|| {
                none(format!(
                    "step {subject:?} is not awaiting a decision (decided, timed out, or never gated); open requests: {}",
                    describe(&open)
                ))
            }),
        ApprovalTarget::Only => match open.as_slice() {
            [one] => Ok(one.seq),
            [] => Err(none("nothing in this task is awaiting a decision".into())),
            many => Err(none(format!(
                "{} requests are open ({}); name one with --step",
                many.len(),
                describe(many)
            ))),
        },
    }
}

fn describe(open: &[&crate::core::state::ApprovalState]) -> String {
    if open.is_empty() {
        return "none".into();
    }
    open.iter()
        .map(|a| format!("{} (seq {})", a.subject, a.seq))
        .collect::<Vec<_>>()
        .join(", ")
}
