//! The gateway in `decide`: every step is decided and recorded before it is
//! scheduled; denials, approvals (identity, quorum, absolute deadline,
//! edits), pre-approvals. Given events / when input / then events.

use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::decide::{AttemptOutcome, DecideInput, Target, actions, decide};
use super::event::{Event, EventPayload, NewEvent, seal};
use super::gateway::{ApprovalRefusal, InterventionPath, Preapproval, check_approval_decision};
use super::limits::Limits;
use super::state::{TaskState, TaskStatus};
use super::tests::TestPolicy;
use super::tool::{ToolInfo, ToolKind};
use super::workflow::{StepOptions, Workflow, WorkflowContext, WorkflowError, check_history};

/// Calls `tool` once with the task's input, then returns its output.
struct OneCall(&'static str);

impl Workflow for OneCall {
    fn name(&self) -> &str {
        "one"
    }
    fn run(
        &self,
        ctx: WorkflowContext,
        input: Value,
    ) -> BoxFuture<'static, Result<Value, WorkflowError>> {
        let tool = self.0;
        Box::pin(async move {
            let out = ctx.step(StepOptions::new(tool, input).name("pay")).await?;
            Ok(out)
        })
    }
}

/// A task's history being written, decision by decision.
struct Sim {
    events: Vec<Event>,
    workflow: OneCall,
    preapprovals: Vec<Preapproval>,
}

impl Sim {
    fn new(tool: &'static str, input: Value) -> Sim {
        let mut sim = Sim {
            events: Vec::new(),
            workflow: OneCall(tool),
            preapprovals: Vec::new(),
        };
        sim.append(
            "agent:agent-x",
            1_000,
            EventPayload::TaskSubmitted {
                workflow: "one".into(),
                workflow_version: 1,
                input,
                agent: Some("agent-x".into()),
                on_behalf_of: Some("user-u".into()),
                idempotency_key: None,
            },
        );
        sim
    }

    fn append(&mut self, actor: &str, at_ms: i64, payload: EventPayload) {
        let (last_seq, last_hash) = self
            .events
            .last()
            .map(|e| (e.seq, e.hash.clone()))
            .unwrap_or((0, String::new()));
        let sealed = seal(
            "t1",
            last_seq,
            &last_hash,
            at_ms,
            &[NewEvent {
                actor: actor.into(),
                payload,
            }],
        );
        self.events.extend(sealed.into_iter().map(|(e, _)| e));
    }

    /// Decides at `now_ms` and appends what was decided; returns it.
    fn step(&mut self, now_ms: i64, outcomes: &[AttemptOutcome]) -> Vec<EventPayload> {
        let tools: std::collections::HashMap<String, ToolInfo> = ["send", "forbidden", "read"]
            .into_iter()
            .map(|t| {
                (
                    t.to_string(),
                    ToolInfo {
                        kind: ToolKind::WriteIrreversible,
                        recovery_path: None,
                    },
                )
            })
            .collect();
        let limits = Limits::default();
        let d = decide(
            &DecideInput {
                history: &self.events,
                now_ms,
                outcomes,
                workflow: Some(&self.workflow),
                tools: &tools,
                gateway: &TestPolicy,
                preapprovals: &self.preapprovals,
                worker: "w",
                limits: &limits,
                halt: None,
                inherited: &Default::default(),
            },
            self.state(),
        );
        let out: Vec<EventPayload> = d.events.iter().map(|e| e.payload.clone()).collect();
        for e in d.events {
            self.append(&e.actor, now_ms, e.payload);
        }
        out
    }

    fn state(&self) -> TaskState {
        TaskState::fold(&self.events)
    }

    fn decide_approval(
        &mut self,
        request_seq: i64,
        who: &str,
        approved: bool,
        edit: Option<Value>,
    ) {
        self.append(
            &format!("approver:{who}"),
            self.events.last().unwrap().recorded_at_ms,
            EventPayload::ApprovalDecided {
                request_seq,
                identity: who.into(),
                approved,
                comment: Some(format!("{who} says {approved}")),
                edit,
                via: None,
            },
        );
    }

    fn types(&self) -> Vec<&'static str> {
        self.events.iter().map(|e| e.payload.type_name()).collect()
    }

    fn replays(&self) {
        check_history(&self.workflow, &self.events).expect("the history replays");
    }
}

fn done(seq: i64, output: Value) -> AttemptOutcome {
    AttemptOutcome {
        target: Target::Step(seq),
        attempt: 1,
        result: Ok(output),
        started_at_ms: 0,
        duration_ms: 1,
    }
}

#[test]
fn a_denied_step_is_recorded_denied_and_never_scheduled() {
    let mut sim = Sim::new("forbidden", json!({}));
    sim.step(2_000, &[]);
    assert_eq!(
        sim.types(),
        [
            "TaskSubmitted",   // 1
            "TaskStarted",     // 2
            "PolicyEvaluated", // 3
            "StepDenied",      // 4
            "WorkflowFailed",  // 5
            "TaskFailed",      // 6
        ]
    );
    let state = sim.state();
    assert!(state.steps.is_empty(), "nothing was scheduled");
    assert!(state.error.unwrap().contains("test.forbidden"));
    sim.replays();
}

#[test]
fn a_gated_step_runs_only_after_a_named_approver_decides() {
    let mut sim = Sim::new("send", json!({"amount": 5}));
    sim.step(2_000, &[]);
    assert_eq!(
        sim.types()[2..],
        ["PolicyEvaluated", "ApprovalRequested"] // 3, 4
    );
    let state = sim.state();
    assert_eq!(state.status(), TaskStatus::NeedsApproval);
    assert!(
        actions(&state, 2_000).is_empty(),
        "nothing runs before the approval"
    );
    assert_eq!(state.approvals[&4].deadline_at_ms, 3_000);
    // Who may decide: only identities the request names, never the agent or
    // the user the task acts for.
    for (who, expect) in [
        ("agent-x", "agent"),
        ("user-u", "behalf"),
        ("mallory", "names boss, deputy"),
    ] {
        let e = check_approval_decision(&state, 4, who, 2_100).unwrap_err();
        assert!(
            matches!(e, ApprovalRefusal::NotAllowed { .. }),
            "{who}: {e}"
        );
        assert!(e.to_string().contains(expect), "{who}: {e}");
    }
    check_approval_decision(&state, 4, "boss", 2_100).unwrap();
    sim.decide_approval(4, "boss", true, None); // 5
    sim.step(2_200, &[]);
    let state = sim.state();
    assert!(matches!(
        check_approval_decision(&state, 4, "deputy", 2_300),
        Err(ApprovalRefusal::Closed { .. })
    ));
    assert_eq!(actions(&state, 2_200)[0].target, Target::Step(7));
    sim.step(2_300, &[done(7, json!("sent"))]);
    assert_eq!(
        sim.types()[2..],
        [
            "PolicyEvaluated",   // 3: the decision
            "ApprovalRequested", // 4
            "ApprovalDecided",   // 5: boss, with identity
            "ApprovalResolved",  // 6
            "StepScheduled",     // 7
            "StepCompleted",     // 8
            "TaskCompleted",     // 9
        ]
    );
    assert_eq!(sim.events[4].actor, "approver:boss");
    sim.replays();
}

#[test]
fn a_rejection_denies_the_step_and_the_task_rolls_back() {
    let mut sim = Sim::new("send", json!({"amount": 5}));
    sim.step(2_000, &[]);
    sim.decide_approval(4, "deputy", false, None);
    sim.step(2_100, &[]);
    let state = sim.state();
    assert_eq!(state.status(), TaskStatus::FailedTerminal);
    assert!(state.error.unwrap().contains("rejected by deputy"));
    assert!(state.steps.is_empty());
    sim.replays();
}

#[test]
fn a_quorum_counts_distinct_people_and_its_deadline_is_absolute() {
    let mut sim = Sim::new("send", json!({"amount": 500})); // quorum 2
    sim.step(2_000, &[]);
    sim.decide_approval(4, "boss", true, None);
    sim.step(2_500, &[]);
    let state = sim.state();
    assert_eq!(state.status(), TaskStatus::NeedsApproval);
    assert!(matches!(
        check_approval_decision(&state, 4, "boss", 2_600),
        Err(ApprovalRefusal::NotAllowed { why, .. }) if why.contains("already decided")
    ));
    // One approval does not move the deadline: it is 1 000 ms after the
    // request, not after the last decision.
    assert_eq!(state.approvals[&4].deadline_at_ms, 3_000);
    assert_eq!(
        super::decide::projection(&state, 2_500).ready_at_ms,
        Some(3_000)
    );
    sim.step(2_999, &[]);
    assert_eq!(sim.state().status(), TaskStatus::NeedsApproval);
    assert!(matches!(
        check_approval_decision(&sim.state(), 4, "deputy", 3_000),
        Err(ApprovalRefusal::PastDeadline { .. })
    ));
    sim.step(3_000, &[]);
    let state = sim.state();
    assert_eq!(state.status(), TaskStatus::FailedTerminal);
    assert!(state.error.unwrap().contains("no approval within 1000 ms"));
    sim.replays();
}

#[test]
fn an_edit_needing_more_restarts_the_approval_under_the_stricter_requirement() {
    let mut sim = Sim::new("send", json!({"amount": 5})); // quorum 1
    sim.step(2_000, &[]);
    sim.decide_approval(4, "boss", true, Some(json!({"amount": 500}))); // now quorum 2
    sim.step(2_100, &[]);
    let state = sim.state();
    assert_eq!(
        state.status(),
        TaskStatus::NeedsApproval,
        "{:?}",
        sim.types()
    );
    assert!(
        state.steps.is_empty(),
        "the one approval given does not run it"
    );
    let restarted = state
        .approvals
        .values()
        .find(|a| a.is_open())
        .unwrap()
        .clone();
    assert_eq!(
        (restarted.quorum, restarted.input.clone()),
        (2, Some(json!({"amount": 500})))
    );
    assert_eq!(state.approvals[&4].outcome.as_deref(), Some("superseded"));
    sim.decide_approval(restarted.seq, "boss", true, None);
    sim.decide_approval(restarted.seq, "deputy", true, None);
    sim.step(2_200, &[]);
    let state = sim.state();
    let step = state
        .steps
        .values()
        .next()
        .expect("scheduled after the quorum");
    assert_eq!(step.input, json!({"amount": 500}));
    sim.replays();
}

#[test]
fn an_edit_the_policy_denies_is_refused() {
    let mut sim = Sim::new("send", json!({"amount": 5}));
    sim.step(2_000, &[]);
    sim.decide_approval(4, "boss", true, Some(json!({"deny": true})));
    sim.step(2_100, &[]);
    let state = sim.state();
    assert!(state.steps.is_empty());
    assert_eq!(state.status(), TaskStatus::FailedTerminal);
    assert!(state.error.unwrap().contains("edit"));
    sim.replays();
}

#[test]
fn a_preapproval_covers_a_gate_and_the_decision_names_it() {
    let mut sim = Sim::new("send", json!({"amount": 5}));
    sim.preapprovals.push(Preapproval {
        id: "pa-1".into(),
        tool: "send".into(),
        agent: "agent-x".into(),
        scope: None,
        granted_by: "boss".into(),
        granted_at_ms: 1_500,
        expires_at_ms: 10_000,
        reason: None,
        revoked_by: None,
        revoked_at_ms: None,
    });
    sim.step(2_000, &[]);
    let EventPayload::PolicyEvaluated { decision, .. } = &sim.events[2].payload else {
        panic!()
    };
    assert_eq!(decision.path, InterventionPath::GatedExecute);
    assert_eq!(decision.preapproval.as_ref().unwrap().id, "pa-1");
    assert_eq!(sim.types()[3], "StepScheduled");
    sim.replays();
}

#[test]
fn an_expired_or_revoked_preapproval_covers_nothing() {
    for (expires, revoked) in [(1_900, None), (10_000, Some(1_800))] {
        let mut sim = Sim::new("send", json!({"amount": 5}));
        sim.preapprovals.push(Preapproval {
            id: "pa-1".into(),
            tool: "send".into(),
            agent: "agent-x".into(),
            scope: None,
            granted_by: "boss".into(),
            granted_at_ms: 1_500,
            expires_at_ms: expires,
            reason: None,
            revoked_by: revoked.map(|_| "boss".to_string()),
            revoked_at_ms: revoked,
        });
        sim.step(2_000, &[]);
        assert_eq!(sim.types()[3], "ApprovalRequested");
    }
}
