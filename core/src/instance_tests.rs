//! A workflow instance kept between decisions decides exactly what a replay
//! from the start decides, and is never used on a history it was not fed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::decide::{AttemptOutcome, DecideInput, Decision, actions, decide, decide_with};
use super::event::{Event, EventPayload, NewEvent, PollPoints, RecordedError, seal};
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
    submitted_as("mixed")
}

fn submitted_as(workflow: &str) -> EventPayload {
    EventPayload::TaskSubmitted {
        workflow: workflow.into(),
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
/// both with the kept instance and by a replay from the start. Answers
/// (decisions, starts of the kept instance's code).
fn drive_mixed(polls: PollPoints) -> (usize, usize) {
    let kept_wf = Mixed::default();
    let fresh_wf = Mixed::default();
    let mut history = Vec::new();
    append(&mut history, 1_000, &[NewEvent::engine(submitted())]);
    if polls == PollPoints::Batch {
        // As a worker before PollPoints wrote it.
        append(&mut history, 1_000, &[NewEvent::engine(started(polls))]);
    }
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
    assert!(
        fresh_runs >= decisions,
        "a replay per decision: {fresh_runs}"
    );
    (decisions, kept_wf.runs.load(Ordering::SeqCst))
}

fn started(polls: PollPoints) -> EventPayload {
    EventPayload::TaskStarted {
        worker: "w".into(),
        polls,
    }
}

/// A task started by this release polls after each result: its kept
/// instance goes on through parallel steps completing in separate
/// decisions, started once for the task's whole life.
#[test]
fn a_kept_instance_decides_what_a_replay_from_the_start_decides() {
    let (decisions, kept_runs) = drive_mixed(PollPoints::EachResult);
    assert_eq!(decisions, 7, "decisions");
    assert_eq!(
        kept_runs, 1,
        "the kept instance was started {kept_runs} times over {decisions} decisions"
    );
}

/// A history started before PollPoints (batch polls) still decides the
/// same with a kept instance, which is started again where it cannot go
/// on (after the first of the parallel steps completed).
#[test]
fn a_batch_history_drops_its_instance_where_a_poll_could_differ() {
    let (decisions, kept_runs) = drive_mixed(PollPoints::Batch);
    assert_eq!(decisions, 7, "decisions");
    assert_eq!(
        kept_runs, 2,
        "the kept instance was started {kept_runs} times over {decisions} decisions"
    );
}

/// Branches in parallel that record the order in which they saw their
/// results and then issue a step naming it: code whose commands depend on
/// where it was polled.
struct Fan {
    branches: usize,
    runs: AtomicUsize,
}

impl Fan {
    fn new(branches: usize) -> Self {
        Self {
            branches,
            runs: AtomicUsize::new(0),
        }
    }
}

impl Workflow for Fan {
    fn name(&self) -> &str {
        "fan"
    }
    fn run(&self, ctx: WorkflowContext, _: Value) -> BoxFuture<'static, WorkflowResult> {
        let branches = self.branches;
        self.runs.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let futures = (0..branches).map(|i| {
                let ctx = ctx.clone();
                let seen = seen.clone();
                async move {
                    let out = ctx
                        .step(StepOptions::new("read", json!({"x": i})).name(format!("x{i}")))
                        .await;
                    let order = {
                        let mut seen = seen.lock().unwrap();
                        seen.push(i);
                        seen.clone()
                    };
                    if out.is_ok() && i % 2 == 0 {
                        ctx.step(
                            StepOptions::new("read", json!({"after": i, "seen": order}))
                                .name(format!("y{i}")),
                        )
                        .await?;
                    }
                    out.map(|_| ())
                }
            });
            let results = futures::future::join_all(futures).await;
            let failed = results.iter().filter(|r| r.is_err()).count();
            let order = seen.lock().unwrap().clone();
            ctx.step(
                StepOptions::new("read", json!({"order": order, "failed": failed})).name("end"),
            )
            .await?;
            Ok(json!({"order": order}))
        })
    }
}

/// Random orders and groupings of the results of many parallel steps (some
/// failing), signals appended by others between decisions: in both poll
/// modes, every decision made with the kept instance is the one a replay
/// from the start makes, and the history replays. With each-result polls
/// the instance is never started again.
#[test]
fn parallel_results_in_any_grouping_decide_the_same_with_a_kept_instance() {
    for polls in [PollPoints::EachResult, PollPoints::Batch] {
        for seed in 1..=40u64 {
            let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut next = move |n: usize| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                (rng % n as u64) as usize
            };
            let kept_wf = Fan::new(9);
            let fresh_wf = Fan::new(9);
            let mut history = Vec::new();
            append(
                &mut history,
                1_000,
                &[NewEvent::engine(submitted_as("fan"))],
            );
            if polls == PollPoints::Batch {
                append(&mut history, 1_000, &[NewEvent::engine(started(polls))]);
            }
            let mut instance: Option<WorkflowInstance> = None;
            let mut outcomes: Vec<AttemptOutcome> = Vec::new();
            let mut finished = false;
            for round in 0..200 {
                let now = 2_000 + round;
                let fresh = decide_on(&fresh_wf, &history, now, &outcomes, None);
                let kept = decide_on(&kept_wf, &history, now, &outcomes, Some(instance.take()));
                assert_eq!(
                    kept.events, fresh.events,
                    "{polls:?}, seed {seed}: decision {round} differs"
                );
                append(&mut history, now, &kept.events);
                instance = kept.instance.map(|mut i| {
                    i.confirm(&history);
                    i
                });
                if kept.state.is_final() {
                    finished = true;
                    break;
                }
                if next(5) == 0 {
                    append(&mut history, now, &[signal("noise")]);
                }
                // Some of the open attempts, in a random order, a few failing.
                let mut open = ok_outcomes(&history, now);
                let mut take = Vec::new();
                let n = 1 + next(3);
                while !open.is_empty() && take.len() < n {
                    let mut o = open.swap_remove(next(open.len()));
                    if next(12) == 0 {
                        o.result = Err(RecordedError {
                            message: "no".into(),
                            retryable: false,
                            effect_unknown: false,
                        });
                    }
                    take.push(o);
                }
                outcomes = take;
            }
            assert!(finished, "{polls:?}, seed {seed}: the task ended");
            assert_eq!(
                super::workflow::check_history(&fresh_wf, &history),
                Ok(()),
                "{polls:?}, seed {seed}: the history replays"
            );
            if polls == PollPoints::EachResult {
                assert_eq!(
                    kept_wf.runs.load(Ordering::SeqCst),
                    1,
                    "seed {seed}: the kept instance was never dropped"
                );
            }
        }
    }
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

/// Two branches; the first to be polled issues a second step after its
/// result; the other fails the workflow.
struct FailFast;

impl Workflow for FailFast {
    fn name(&self) -> &str {
        "fail_fast"
    }
    fn run(&self, ctx: WorkflowContext, _: Value) -> BoxFuture<'static, WorkflowResult> {
        Box::pin(async move {
            let later = async {
                ctx.step(StepOptions::new("read", json!({"x": 1})).name("x1"))
                    .await?;
                ctx.step(StepOptions::new("read", json!({"y": 1})).name("y1"))
                    .await
            };
            let failing = ctx.step(StepOptions::new("read", json!({"x": 0})).name("x0"));
            futures::future::try_join(later, failing).await?;
            Ok(json!({}))
        })
    }
}

/// `check_history` replays only what the code saw: a result recorded after
/// the workflow failed (an attempt still running when it did) is not fed
/// to it. With batch polls it would have joined the run of results the
/// code last saw, and the replay would have issued a step the task never
/// issued, calling a sound history non-deterministic.
#[test]
fn results_recorded_after_the_workflow_failed_are_not_replayed() {
    for polls in [PollPoints::Batch, PollPoints::EachResult] {
        let wf = FailFast;
        let mut history = Vec::new();
        append(
            &mut history,
            1_000,
            &[NewEvent::engine(submitted_as("fail_fast"))],
        );
        append(&mut history, 1_000, &[NewEvent::engine(started(polls))]);
        let d = decide_on(&wf, &history, 2_000, &[], None);
        append(&mut history, 2_000, &d.events);
        let open = ok_outcomes(&history, 2_001);
        assert_eq!(open.len(), 2, "x1 and x0 scheduled");
        let name = |o: &AttemptOutcome| match o.target {
            super::decide::Target::Step(seq) => TaskState::fold(&history).steps[&seq].name.clone(),
            _ => unreachable!(),
        };
        let (mut x0, x1) = if name(&open[0]) == "x0" {
            (open[0].clone(), open[1].clone())
        } else {
            (open[1].clone(), open[0].clone())
        };
        assert_eq!((name(&x0).as_str(), name(&x1).as_str()), ("x0", "x1"));
        x0.result = Err(RecordedError {
            message: "no".into(),
            retryable: false,
            effect_unknown: false,
        });
        let d = decide_on(&wf, &history, 2_002, &[x0], None);
        append(&mut history, 2_002, &d.events);
        assert!(
            d.events
                .iter()
                .any(|e| matches!(e.payload, EventPayload::WorkflowFailed { .. })),
            "{polls:?}: the workflow failed on x0 alone"
        );
        // x1 was still running: its result is recorded after the failure.
        let d = decide_on(&wf, &history, 2_003, &[x1], None);
        append(&mut history, 2_003, &d.events);
        assert!(TaskState::fold(&history).is_final());
        assert_eq!(
            super::workflow::check_history(&wf, &history),
            Ok(()),
            "{polls:?}: the history replays"
        );
    }
}
