//! Core tests: given events / when input / then events, as plain data. No
//! store, no runtime: `decide` and `replay` are pure.

use futures::future::BoxFuture;
use std::collections::HashMap;

use crate::gateway::{
    ApprovalRequirement, Gateway, GatewayDecision, GatewayRequest, InterventionPath, Principal,
    RuleRef, WorkflowApproval,
};
use crate::tool::{ToolInfo, ToolKind};
use serde_json::{Value, json};

use super::decide::{AttemptOutcome, DecideInput, Target, actions, decide, projection};
use super::event::{Event, EventPayload, NewEvent, RecordedError, seal};
use super::limits::Limits;
use super::retry::RetryPolicy;
use super::state::{TaskState, TaskStatus};
use super::workflow::{StepOptions, Workflow, WorkflowContext, WorkflowError, check_history};

fn tools() -> HashMap<String, ToolInfo> {
    [
        ("read", ToolKind::Read),
        ("write", ToolKind::WriteReversible),
        ("undo", ToolKind::WriteReversible),
        ("send", ToolKind::WriteIrreversible),
    ]
    .into_iter()
    .map(|(name, kind)| {
        (
            name.to_string(),
            ToolInfo {
                kind,
                recovery_path: None,
            },
        )
    })
    .collect()
}

/// The policy of these tests: `send` needs `boss`'s approval, `forbidden` is
/// denied, everything else is monitored.
pub(crate) struct TestPolicy;

impl Gateway for TestPolicy {
    fn evaluate(&self, r: &GatewayRequest<'_>) -> GatewayDecision {
        let (path, id) = match r.tool {
            _ if r.input["deny"] == json!(true) => (InterventionPath::Deny, "test.deny-input"),
            "send" => (InterventionPath::GatedExecute, "test.send-gated"),
            "forbidden" => (InterventionPath::Deny, "test.forbidden"),
            _ => (InterventionPath::MonitoredExecute, "test.monitored"),
        };
        GatewayDecision {
            path,
            decided_by: vec![RuleRef {
                id: id.into(),
                message: format!("{} is {}", r.tool, path),
                level: "org".into(),
                file: None,
            }],
            policy_hash: "0123456789abcdef".into(),
            approval: (path == InterventionPath::GatedExecute).then(|| ApprovalRequirement {
                approvers: vec!["boss".into(), "deputy".into()],
                quorum: if r.input["amount"].as_i64().unwrap_or(0) > 100 {
                    2
                } else {
                    1
                },
                timeout_ms: 1_000,
                escalation: None,
            }),
            operation: None,
            scope: None,
            owners: vec![],
            risk: None,
            data_classes: vec![],
            crudlex: None,
            autonomy: None,
            recovery_path: None,
            preapproval: None,
        }
    }
    fn workflow_approval(&self, _: &Principal, _: &str, _: &str) -> WorkflowApproval {
        WorkflowApproval {
            requirement: ApprovalRequirement {
                approvers: vec!["boss".into()],
                quorum: 1,
                timeout_ms: 1_000,
                escalation: None,
            },
            decided_by: vec![],
            policy_hash: "0123456789abcdef".into(),
        }
    }
    fn admit(&self, _: &Principal) -> Result<(), String> {
        Ok(())
    }
    fn may_preapprove(&self, identity: &str, _: &str, _: &str) -> Result<(), String> {
        (identity == "boss")
            .then_some(())
            .ok_or_else(|| "only boss".into())
    }
}

/// Two sequential steps; the first is compensated by `undo`.
struct TwoSteps;

impl Workflow for TwoSteps {
    fn name(&self) -> &str {
        "two"
    }
    fn run(
        &self,
        ctx: WorkflowContext,
        _: Value,
    ) -> BoxFuture<'static, Result<Value, WorkflowError>> {
        Box::pin(async move {
            let a = ctx
                .step(
                    StepOptions::new("write", json!({"n": 1}))
                        .name("a")
                        .compensate("undo", json!({"n": 1}))
                        .retry(RetryPolicy {
                            max_attempts: 2,
                            initial_backoff_ms: 100,
                            ..RetryPolicy::default()
                        }),
                )
                .await?;
            let b = ctx
                .step(StepOptions::new("read", json!({"n": 2})).name("b"))
                .await?;
            Ok(json!([a, b]))
        })
    }
}

/// A history, sealed at time 1000 + seq.
fn history(events: Vec<EventPayload>) -> Vec<Event> {
    let mut out: Vec<Event> = Vec::new();
    for p in events {
        let (last_seq, last_hash) = out
            .last()
            .map(|e| (e.seq, e.hash.clone()))
            .unwrap_or((0, String::new()));
        let sealed = seal(
            "t1",
            last_seq,
            &last_hash,
            1000 + last_seq + 1,
            &[NewEvent::engine(p)],
        );
        out.extend(sealed.into_iter().map(|(e, _)| e));
    }
    out
}

/// A `TaskStarted` as workers wrote it before `PollPoints` (batch polls).
fn started() -> EventPayload {
    EventPayload::TaskStarted {
        worker: "w".into(),
        polls: Default::default(),
    }
}

fn submitted() -> EventPayload {
    EventPayload::TaskSubmitted {
        workflow: "two".into(),
        workflow_version: 1,
        input: json!({}),
        agent: None,
        on_behalf_of: None,
        idempotency_key: None,
    }
}

fn step_a_scheduled() -> EventPayload {
    EventPayload::StepScheduled {
        command: 0,
        name: "a".into(),
        tool: "write".into(),
        kind: ToolKind::WriteReversible,
        input: json!({"n": 1}),
        retry: RetryPolicy {
            max_attempts: 2,
            initial_backoff_ms: 100,
            ..RetryPolicy::default()
        },
        timeout_ms: 60_000,
        compensation: Some(super::event::Compensation {
            tool: "undo".into(),
            input: json!({"n": 1}),
            retry: RetryPolicy::compensation_default(),
        }),
        recovery_path: None,
        policy_seq: None,
    }
}

fn when(
    given: &[Event],
    now_ms: i64,
    outcomes: &[AttemptOutcome],
) -> (Vec<EventPayload>, TaskState) {
    when_inherited(given, now_ms, outcomes, &Default::default())
}

/// `when`, by a worker that took the task over with `inherited` attempts.
fn when_inherited(
    given: &[Event],
    now_ms: i64,
    outcomes: &[AttemptOutcome],
    inherited: &std::collections::HashMap<i64, u32>,
) -> (Vec<EventPayload>, TaskState) {
    let tools = tools();
    let limits = Limits::default();
    let d = decide(
        &DecideInput {
            history: given,
            now_ms,
            outcomes,
            workflow: Some(&TwoSteps),
            tools: &tools,
            gateway: &TestPolicy,
            preapprovals: &[],
            worker: "w",
            limits: &limits,
            halt: None,
            inherited,
        },
        TaskState::fold(given),
    );
    (d.events.into_iter().map(|e| e.payload).collect(), d.state)
}

fn ok(target: Target, attempt: u32, output: Value) -> AttemptOutcome {
    AttemptOutcome {
        target,
        attempt,
        result: Ok(output),
        started_at_ms: 0,
        duration_ms: 1,
    }
}

fn err(target: Target, attempt: u32, retryable: bool) -> AttemptOutcome {
    AttemptOutcome {
        target,
        attempt,
        result: Err(RecordedError {
            message: "boom".into(),
            retryable,
            effect_unknown: false,
        }),
        started_at_ms: 0,
        duration_ms: 1,
    }
}

#[test]
fn a_new_task_starts_and_schedules_its_first_step_with_its_compensation() {
    let given = history(vec![submitted()]); // 1
    let (then, state) = when(&given, 5_000, &[]);
    assert_eq!(then.len(), 3, "{then:?}");
    // A new task's replays poll after each result (its TaskStarted says so).
    assert_eq!(
        then[0],
        EventPayload::TaskStarted {
            worker: "w".into(),
            polls: crate::event::PollPoints::EachResult
        }
    );
    // 3: the gateway's decision comes before anything is scheduled.
    assert!(
        matches!(&then[1], EventPayload::PolicyEvaluated { command: 0, name, decision, .. }
        if name == "a" && decision.path == InterventionPath::MonitoredExecute)
    );
    let EventPayload::StepScheduled { policy_seq, .. } = &then[2] else {
        panic!("{then:?}")
    };
    assert_eq!(*policy_seq, Some(3));
    let mut expected = step_a_scheduled();
    if let EventPayload::StepScheduled { policy_seq, .. } = &mut expected {
        *policy_seq = Some(3);
    }
    assert_eq!(then[2], expected);
    assert_eq!(state.status(), TaskStatus::Executing);
    let acts = actions(&state, 5_000);
    assert_eq!(acts.len(), 1);
    assert_eq!((acts[0].target, acts[0].attempt), (Target::Step(4), 1));
    assert_eq!(acts[0].compensates_step_seq, None);
}

#[test]
fn a_completion_records_once_and_the_next_step_follows_in_the_same_decision() {
    let given = history(vec![
        submitted(),        // 1
        started(),          // 2
        step_a_scheduled(), // 3
    ]);
    let (then, _) = when(
        &given,
        5_000,
        &[
            ok(Target::Step(3), 1, json!("A")),
            ok(Target::Step(3), 1, json!("dup")),
        ],
    );
    assert_eq!(then.len(), 3, "{then:?}");
    assert!(
        matches!(&then[0], EventPayload::StepCompleted { step_seq: 3, output, .. } if *output == json!("A"))
    );
    assert!(matches!(&then[1], EventPayload::PolicyEvaluated { name, .. } if name == "b"));
    assert!(
        matches!(&then[2], EventPayload::StepScheduled { name, policy_seq: Some(5), .. } if name == "b")
    );
}

#[test]
fn a_stale_attempt_is_fenced() {
    let given = history(vec![submitted(), started(), step_a_scheduled()]);
    let (then, _) = when(&given, 5_000, &[ok(Target::Step(3), 2, json!("late"))]);
    assert!(then.is_empty(), "attempt 2 was never started: {then:?}");
}

#[test]
fn a_retryable_failure_waits_with_backoff_then_fails_for_good() {
    let mut given = history(vec![submitted(), started(), step_a_scheduled()]);
    let (then, state) = when(&given, 5_000, &[err(Target::Step(3), 1, true)]);
    assert!(matches!(
        then[0],
        EventPayload::StepAttemptFailed {
            attempt: 1,
            next_attempt_at_ms: 5_100,
            ..
        }
    ));
    assert_eq!(state.status(), TaskStatus::FailedRetryable);
    assert!(actions(&state, 5_050).is_empty(), "not before the backoff");
    assert_eq!(actions(&state, 5_100)[0].attempt, 2);
    assert_eq!(projection(&state, 5_000).ready_at_ms, Some(5_100));
    given = history(vec![
        submitted(),
        started(),
        step_a_scheduled(),
        then[0].clone(),
    ]);
    let (then, state) = when(&given, 5_200, &[err(Target::Step(3), 2, true)]);
    assert!(
        matches!(then[0], EventPayload::StepFailed { attempt: 2, .. }),
        "max_attempts is 2: {then:?}"
    );
    assert!(
        matches!(&then[1], EventPayload::WorkflowFailed { error } if error.contains("failed after 2 attempt(s)"))
    );
    // Nothing completed, so nothing to compensate: the task fails at once.
    assert!(matches!(
        then[2],
        EventPayload::TaskFailed {
            compensated_steps: 0,
            ..
        }
    ));
    assert_eq!(state.status(), TaskStatus::FailedTerminal);
}

#[test]
fn a_failure_after_a_completed_write_compensates_it() {
    let given = history(vec![
        submitted(),        // 1
        started(),          // 2
        step_a_scheduled(), // 3
        EventPayload::StepCompleted {
            step_seq: 3,
            attempt: 1,
            output: json!("A"),
            started_at_ms: 0,
            duration_ms: 1,
        }, // 4
        EventPayload::StepScheduled {
            command: 1,
            name: "b".into(),
            tool: "read".into(),
            kind: ToolKind::Read,
            input: json!({"n": 2}),
            retry: RetryPolicy::default(),
            timeout_ms: 60_000,
            compensation: None,
            recovery_path: None,
            policy_seq: None,
        }, // 5
    ]);
    let (then, state) = when(&given, 5_000, &[err(Target::Step(5), 1, false)]);
    assert!(matches!(
        then[0],
        EventPayload::StepFailed { step_seq: 5, .. }
    ));
    assert!(matches!(then[1], EventPayload::WorkflowFailed { .. }));
    assert!(
        matches!(&then[2], EventPayload::CompensationStarted { step_seq: 3, tool, .. } if tool == "undo")
    );
    assert_eq!(state.status(), TaskStatus::Compensating);
    let acts = actions(&state, 5_000);
    assert_eq!(
        (acts[0].target, acts[0].tool.as_str()),
        (Target::Compensation(8), "undo")
    );
    // The compensation names the step it undoes, so its tool can fence it.
    assert_eq!(acts[0].compensates_step_seq, Some(3));
    // The compensation completes: the task has failed, fully compensated.
    let mut more = given.clone();
    for p in then {
        let (s, h) = (more.last().unwrap().seq, more.last().unwrap().hash.clone());
        more.extend(
            seal("t1", s, &h, 5_000, &[NewEvent::engine(p)])
                .into_iter()
                .map(|(e, _)| e),
        );
    }
    let (then, state) = when(
        &more,
        5_100,
        &[ok(Target::Compensation(8), 1, json!("undone"))],
    );
    assert!(matches!(
        then[0],
        EventPayload::CompensationCompleted {
            compensation_seq: 8,
            ..
        }
    ));
    assert!(matches!(
        then[1],
        EventPayload::TaskFailed {
            compensated_steps: 1,
            ..
        }
    ));
    assert_eq!(state.status(), TaskStatus::FailedTerminal);
    check_history(&TwoSteps, &more).unwrap();
}

/// A rollback abandons a step waiting for its retry. While the backoff
/// lasts no attempt can be out, so nothing is undone; once it is over, the
/// next attempt may be running and may apply its effect, so the step is
/// abandoned with its effect unknown and compensated (its compensation
/// fences the attempt if it lands later).
#[test]
fn a_rollback_compensates_a_step_whose_retry_may_have_started() {
    let given = history(vec![
        submitted(),        // 1
        started(),          // 2
        step_a_scheduled(), // 3
        EventPayload::StepAttemptFailed {
            step_seq: 3,
            attempt: 1,
            error: RecordedError {
                message: "busy".into(),
                retryable: true,
                effect_unknown: false,
            },
            started_at_ms: 1_000,
            duration_ms: 1,
            next_attempt_at_ms: 5_100,
        }, // 4
        EventPayload::CancelRequested {
            rollback: true,
            reason: None,
        }, // 5
    ]);

    // Inside the backoff: abandoned, nothing to undo.
    let (then, state) = when(&given, 5_050, &[]);
    assert!(
        matches!(&then[0], EventPayload::StepFailed { step_seq: 3, error, .. } if !error.effect_unknown),
        "{then:?}"
    );
    assert!(matches!(
        then.last(),
        Some(EventPayload::TaskCancelled {
            rolled_back: true,
            compensated_steps: 0
        })
    ));
    assert!(state.is_final());

    // After it: attempt 2 may be applying right now.
    let (then, state) = when(&given, 5_100, &[]);
    assert!(
        matches!(&then[0], EventPayload::StepFailed { step_seq: 3, error, .. }
            if error.effect_unknown && error.message.contains("may have started")),
        "{then:?}"
    );
    assert!(
        matches!(&then[1], EventPayload::CompensationStarted { step_seq: 3, tool, .. } if tool == "undo"),
        "{then:?}"
    );
    let acts = actions(&state, 5_100);
    assert_eq!(acts.len(), 1, "only the compensation runs: {acts:?}");
    assert_eq!(acts[0].compensates_step_seq, Some(3));
}

/// A worker that took the task over repeats the attempt an earlier holder
/// may still be running. If its own attempt fails, the twin may yet apply:
/// the step's effect is unknown and the rollback compensates it. The same
/// failure by the task's only holder is known to have applied nothing.
#[test]
fn a_failed_attempt_after_a_takeover_has_an_unknown_effect() {
    let given = history(vec![
        submitted(),        // 1
        started(),          // 2
        step_a_scheduled(), // 3
    ]);
    let failed = [err(Target::Step(3), 1, false)];

    let (then, state) = when(&given, 5_000, &failed);
    assert!(matches!(&then[0], EventPayload::StepFailed { error, .. } if !error.effect_unknown));
    assert!(state.is_final(), "nothing to undo: {then:?}");

    let inherited = [(3, 1)].into_iter().collect();
    let (then, state) = when_inherited(&given, 5_000, &failed, &inherited);
    assert!(
        matches!(&then[0], EventPayload::StepFailed { error, .. }
            if error.effect_unknown && error.message.contains("took the task over")),
        "{then:?}"
    );
    assert!(matches!(
        &then[2],
        EventPayload::CompensationStarted { step_seq: 3, .. }
    ));
    assert_eq!(actions(&state, 5_000)[0].compensates_step_seq, Some(3));

    // Only the inherited attempt has a twin: a later one is this worker's own.
    let inherited = [(3, 2)].into_iter().collect();
    let (then, _) = when_inherited(&given, 5_000, &failed, &inherited);
    assert!(matches!(&then[0], EventPayload::StepFailed { error, .. } if !error.effect_unknown));
}

#[test]
fn cancel_without_rollback_ends_at_once_and_runs_nothing() {
    let given = history(vec![
        submitted(),
        started(),
        step_a_scheduled(),
        EventPayload::CancelRequested {
            rollback: false,
            reason: None,
        },
    ]);
    let (then, state) = when(&given, 5_000, &[]);
    assert_eq!(
        then,
        vec![EventPayload::TaskCancelled {
            rolled_back: false,
            compensated_steps: 0
        }]
    );
    assert!(actions(&state, 5_000).is_empty());
    assert_eq!(projection(&state, 5_000).ready_at_ms, None);
}

#[test]
fn replay_reports_a_changed_command_with_its_seq() {
    struct Changed;
    impl Workflow for Changed {
        fn name(&self) -> &str {
            "two"
        }
        fn run(
            &self,
            ctx: WorkflowContext,
            _: Value,
        ) -> BoxFuture<'static, Result<Value, WorkflowError>> {
            Box::pin(async move {
                ctx.step(StepOptions::new("send", json!({})).name("a"))
                    .await?;
                Ok(json!(null))
            })
        }
    }
    let given = history(vec![submitted(), started(), step_a_scheduled()]);
    let nd = check_history(&Changed, &given).unwrap_err();
    assert_eq!(nd.seq, 3);
    assert_eq!(nd.expected, "step \"a\" (tool write)");
    assert_eq!(nd.found, "step \"a\" (tool send)");
}

#[test]
fn limits_refuse_oversized_payloads_and_odd_names() {
    let l = Limits {
        max_payload_bytes: 10,
        ..Limits::default()
    };
    assert!(
        l.check_payload(&json!("0123456789abcdef"))
            .unwrap_err()
            .contains("exceeds the limit of 10 bytes")
    );
    assert!(l.check_name("agent", "has space").is_err());
    assert!(l.check_name("agent", "").is_err());
    assert!(l.check_name("agent", "agent-7:eu/1").is_ok());
    // Integers past 2^53 - 1 would hash like their rounded neighbours: refused.
    let big = Limits::default();
    assert!(
        big.check_payload(&json!({"n": 9_007_199_254_740_993u64}))
            .unwrap_err()
            .contains("send it as a string")
    );
    assert!(
        big.check_payload(&json!({"n": [-9_007_199_254_740_993i64]}))
            .is_err()
    );
    assert!(
        big.check_payload(&json!({"n": 9_007_199_254_740_991u64}))
            .is_ok()
    );
}

/// `due` names what must run (target, attempt) without building it, and
/// `action` builds one: together exactly `actions`, which the driver relies
/// on when it builds only the attempts not already running.
#[test]
fn due_lists_what_actions_builds_and_action_builds_each() {
    use super::decide::{Due, action, due};
    let mut step_b = step_a_scheduled();
    if let EventPayload::StepScheduled {
        command,
        name,
        input,
        timeout_ms,
        ..
    } = &mut step_b
    {
        *command = 1;
        *name = "b".into();
        *input = json!({"n": 2});
        *timeout_ms = 5_000;
    }
    let mut events = vec![submitted(), started(), step_a_scheduled(), step_b]; // 1..4
    let state = TaskState::fold(&history(events.clone()));
    let listed: Vec<Due> = due(&state, 5_000).collect();
    assert_eq!(
        listed,
        vec![
            Due {
                target: Target::Step(3),
                attempt: 1
            },
            Due {
                target: Target::Step(4),
                attempt: 1
            },
        ]
    );
    let built: Vec<_> = listed.iter().filter_map(|d| action(&state, *d)).collect();
    assert_eq!(built, actions(&state, 5_000));
    assert_eq!(built[1].input, json!({"n": 2}));
    assert_eq!(built[1].timeout_ms, 5_000);
    assert_eq!(built[1].compensates_step_seq, None);

    // Paused: nothing is due, though both steps are open.
    let mut paused = events.clone();
    paused.push(EventPayload::TaskPaused { reason: None });
    assert_eq!(due(&TaskState::fold(&history(paused)), 5_000).count(), 0);

    // Step b fails for good, its effect unknown, and its compensation runs:
    // due after the open step, with the timeout of the step it undoes.
    events.push(EventPayload::StepFailed {
        step_seq: 4,
        attempt: 1,
        error: RecordedError {
            message: "boom".into(),
            retryable: false,
            effect_unknown: true,
        },
        started_at_ms: 0,
        duration_ms: 1,
    }); // 5
    events.push(EventPayload::CompensationStarted {
        step_seq: 4,
        tool: "undo".into(),
        input: json!({"n": 1}),
        retry: RetryPolicy::compensation_default(),
    }); // 6
    let state = TaskState::fold(&history(events));
    let listed: Vec<Due> = due(&state, 5_000).collect();
    assert!(
        listed.contains(&Due {
            target: Target::Compensation(6),
            attempt: 1
        }),
        "{listed:?}"
    );
    let undo = action(
        &state,
        Due {
            target: Target::Compensation(6),
            attempt: 1,
        },
    )
    .expect("the compensation exists");
    assert_eq!(undo.tool, "undo");
    assert_eq!(undo.timeout_ms, 5_000, "step b's, not the default");
    assert_eq!(undo.compensates_step_seq, Some(4));
    assert_eq!(
        listed
            .iter()
            .filter_map(|d| action(&state, *d))
            .collect::<Vec<_>>(),
        actions(&state, 5_000)
    );
    assert!(
        action(
            &state,
            Due {
                target: Target::Step(99),
                attempt: 1
            }
        )
        .is_none()
    );
}
