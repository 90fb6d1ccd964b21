//! A workflow instance kept between decisions decides exactly what a replay
//! from the start decides, and is never used on a history it was not fed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::decide::{AttemptOutcome, DecideInput, Decision, actions, decide, decide_with};
use super::event::{Event, EventPayload, NewEvent, seal};
use super::limits::Limits;
use super::state::TaskState;
use super::tests::TestPolicy;
use super::tool::{ToolInfo, ToolKind};
use super::workflow::{StepOptions, Workflow, WorkflowContext, WorkflowInstance, WorkflowResult};

fn tools() -> HashMap<String, ToolInfo> {
    HashMap::from([(
        "read".to_string(),
        ToolInfo {
            kind: ToolKind::Read,
            recovery_path: None,
        },
    )])
}

/// A step, two in parallel, a signal wait, a marker, an id, three more
/// steps; counts how often its code is started.
#[derive(Default)]
struct Mixed {
    runs: AtomicUsize,
}

impl Workflow for Mixed {
    fn name(&self) -> &str {
        "mixed"
    }
    fn run(&self, ctx: WorkflowContext, _: Value) -> BoxFuture<'static, WorkflowResult> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            let t = ctx.now();
            let a = ctx
                .step(StepOptions::new("read", json!({"a": t})).name("a"))
                .await?;
            let (b, c) = futures::future::join(
                ctx.step(StepOptions::new("read", json!({"b": 1})).name("b")),
                ctx.step(StepOptions::new("read", json!({"c": 1})).name("c")),
            )
            .await;
            let go = ctx.wait_signal("go", None).await;
            let id = ctx.new_id().to_string();
            let mut rest = Vec::new();
            for i in 0..3 {
                rest.push(
                    ctx.step(
                        StepOptions::new("read", json!({"i": i, "id": id})).name(format!("r{i}")),
                    )
                    .await?,
                );
            }
            Ok(json!({"a": a, "b": b?, "c": c?, "go": go.map(|s| s.payload), "rest": rest}))
        })
    }
}

fn submitted() -> EventPayload {
    EventPayload::TaskSubmitted {
        workflow: "mixed".into(),
        workflow_version: 1,
        input: json!({}),
        agent: None,
        on_behalf_of: None,
        idempotency_key: None,
    }
}

fn append(history: &mut Vec<Event>, now: i64, events: &[NewEvent]) {
    let (seq, hash) = history
        .last()
        .map(|e| (e.seq, e.hash.clone()))
        .unwrap_or((0, String::new()));
    history.extend(
        seal("t1", seq, &hash, now, events)
            .into_iter()
            .map(|(e, _)| e),
    );
}

fn signal(name: &str) -> NewEvent {
    NewEvent {
        actor: "user:someone".into(),
        payload: EventPayload::SignalReceived {
            name: name.into(),
            payload: json!({"from": "someone"}),
            sender: "user:someone".into(),
        },
    }
}

fn decide_on(
    wf: &dyn Workflow,
    history: &[Event],
    now: i64,
    outcomes: &[AttemptOutcome],
    instance: Option<Option<WorkflowInstance>>,
) -> Decision {
    let tools = tools();
    let limits = Limits::default();
    let input = DecideInput {
        history,
        now_ms: now,
        outcomes,
        workflow: Some(wf),
        tools: &tools,
        gateway: &TestPolicy,
        preapprovals: &[],
        worker: "w",
        limits: &limits,
        halt: None,
        inherited: &Default::default(),
    };
    match instance {
        Some(i) => decide_with(&input, TaskState::fold(history), i),
        None => decide(&input, TaskState::fold(history)),
    }
}

fn ok_outcomes(history: &[Event], now: i64) -> Vec<AttemptOutcome> {
    actions(&TaskState::fold(history), now)
        .into_iter()
        .map(|a| AttemptOutcome {
            target: a.target,
            attempt: a.attempt,
            result: Ok(a.input.clone()),
            started_at_ms: now,
            duration_ms: 1,
        })
        .collect()
}

/// Drives a task to its end, one outcome per decision (the parallel steps
/// completing in separate decisions, the later one first), a signal
/// appended by someone else between two decisions; every decision made
/// both with the kept instance and by a replay from the start.
#[test]
fn a_kept_instance_decides_what_a_replay_from_the_start_decides() {
    let kept_wf = Mixed::default();
    let fresh_wf = Mixed::default();
    let mut history = Vec::new();
    append(&mut history, 1_000, &[NewEvent::engine(submitted())]);
    let mut instance: Option<WorkflowInstance> = None;
    let mut outcomes: Vec<AttemptOutcome> = Vec::new();
    let mut decisions = 0;
    let mut signalled = false;
    for round in 0..100 {
        let now = 2_000 + round;
        let fresh = decide_on(&fresh_wf, &history, now, &outcomes, None);
        let kept = decide_on(&kept_wf, &history, now, &outcomes, Some(instance.take()));
        assert_eq!(kept.events, fresh.events, "decision {round} differs");
        decisions += 1;
        append(&mut history, now, &kept.events);
        instance = kept.instance.map(|mut i| {
            i.confirm(&history);
            i
        });
        if kept.state.is_final() {
            break;
        }
        // Someone else's signal, once both parallel steps are out.
        let open: Vec<_> = ok_outcomes(&history, now);
        if !signalled && open.len() == 2 {
            append(&mut history, now, &[signal("go")]);
            signalled = true;
        }
        // One outcome at a time, the last first.
        outcomes = open.into_iter().rev().take(1).collect();
    }
    let end = TaskState::fold(&history);
    assert!(end.is_final(), "the task ended: {:?}", end.status());
    assert!(signalled);
    assert_eq!(
        super::workflow::check_history(&fresh_wf, &history),
        Ok(()),
        "the history replays"
    );
    let fresh_runs = fresh_wf.runs.load(Ordering::SeqCst);
    let kept_runs = kept_wf.runs.load(Ordering::SeqCst);
    assert_eq!(decisions, 7, "decisions");
    assert!(
        fresh_runs >= decisions,
        "a replay per decision: {fresh_runs}"
    );
    // Started once, then again only where it could not go on (after the
    // first of the parallel steps completed; the signal arriving).
    assert!(
        kept_runs == 2,
        "the kept instance was started {kept_runs} times over {decisions} decisions"
    );
}

/// A sequential workflow's code is started once for its whole life.
#[test]
fn a_sequential_workflow_runs_its_code_once() {
    let wf = Mixed::default();
    let mut history = Vec::new();
    append(&mut history, 1_000, &[NewEvent::engine(submitted())]);
    append(&mut history, 1_000, &[signal("go")]);
    let mut instance: Option<WorkflowInstance> = None;
    let mut outcomes = Vec::new();
    for round in 0..100 {
        let now = 2_000 + round;
        let d = decide_on(&wf, &history, now, &outcomes, Some(instance.take()));
        append(&mut history, now, &d.events);
        instance = d.instance.map(|mut i| {
            i.confirm(&history);
            i
        });
        if d.state.is_final() {
            break;
        }
        // Both parallel steps' outcomes together: no run is left half seen.
        outcomes = ok_outcomes(&history, now);
    }
    assert!(TaskState::fold(&history).is_final());
    assert_eq!(wf.runs.load(Ordering::SeqCst), 1);
}

/// The driver's append of a decision conflicts: someone else's signal took
/// the seq. The instance that was fed the decision's events must not be
/// used on the history as it is, whether or not the caller (wrongly)
/// confirms it against that history: the next decision is the one a
/// replay from the start makes.
#[test]
fn an_instance_fed_a_decision_that_was_not_appended_is_not_used() {
    let wf = Mixed::default();
    let mut history = Vec::new();
    append(&mut history, 1_000, &[NewEvent::engine(submitted())]);
    let d0 = decide_on(&wf, &history, 2_000, &[], Some(None));
    append(&mut history, 2_000, &d0.events);
    let mut inst = d0.instance.expect("kept");
    inst.confirm(&history);
    assert!(inst.usable_with(&history));
    let outcomes = ok_outcomes(&history, 2_001);
    assert_eq!(outcomes.len(), 1, "step a");

    // Decided with the instance, but never appended.
    let lost = decide_on(&wf, &history, 2_002, &outcomes, Some(Some(inst)));
    assert!(!lost.events.is_empty());
    let stale = lost.instance.expect("fed the lost decision's events");
    // Someone else's append won the seq.
    let mut raced = history.clone();
    append(&mut raced, 2_003, &[signal("go")]);
    assert!(!stale.usable_with(&raced), "unconfirmed");
    let want = decide_on(&wf, &raced, 2_004, &outcomes, None);
    let got = decide_on(&wf, &raced, 2_004, &outcomes, Some(Some(stale)));
    assert_eq!(got.events, want.events);

    // Confirmed against the raced history by mistake: refused for good.
    let lost = decide_on(
        &wf,
        &history,
        2_002,
        &outcomes,
        Some(Some({
            let mut i = decide_on(&wf, &history[..1], 2_000, &[], Some(None))
                .instance
                .expect("kept");
            // Fed the first decision's events: confirm it against them.
            i.confirm(&history);
            assert!(i.usable_with(&history));
            i
        })),
    );
    let mut stale = lost.instance.expect("fed the lost decision's events");
    stale.confirm(&raced);
    assert!(!stale.usable_with(&raced));
    let got = decide_on(&wf, &raced, 2_004, &outcomes, Some(Some(stale)));
    assert_eq!(got.events, want.events);
}
