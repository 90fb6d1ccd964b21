//! [`Node`](super::node::Node) issues the same commands as the
//! `futures::Shared` that plans used before: histories recorded with one
//! replay with the other, for random DAGs (listed out of topological
//! order, with references), random orders and groupings of results (some
//! failing), under both poll modes.

use std::sync::Arc;

use futures::future::{BoxFuture, Shared};
use mandate_activities::{Governance, ToolRegistry};
use mandate_engine::core::decide::{self, AttemptOutcome, DecideInput};
use mandate_engine::core::event::{Event, NewEvent, PollPoints, RecordedError, seal};
use mandate_engine::core::workflow::{Workflow, check_history};
use mandate_engine::{EventPayload, Limits, TaskState, WorkflowContext, WorkflowError};
use serde_json::{Value, json};

use super::node::Node;
use super::{StepResult, run_plan_with};

/// `plan` at version 2, its steps shared through `Node` or through `Shared`.
struct PlanWith {
    governance: Arc<Governance>,
    shared: bool,
}

impl Workflow for PlanWith {
    fn name(&self) -> &str {
        "plan"
    }
    fn version(&self) -> u32 {
        2
    }
    fn run(
        &self,
        ctx: WorkflowContext,
        input: Value,
    ) -> BoxFuture<'static, Result<Value, WorkflowError>> {
        let g = self.governance.clone();
        if self.shared {
            Box::pin(run_plan_with::<Shared<BoxFuture<'static, StepResult>>>(
                ctx, input, g,
            ))
        } else {
            Box::pin(run_plan_with::<Node>(ctx, input, g))
        }
    }
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// A plan of `n` steps: each depends on a few steps of lower rank, which
/// may come later in the document; some inputs reference a dependency.
fn random_plan(rng: &mut Rng, n: usize) -> Value {
    let mut rank: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        rank.swap(i, rng.below(i + 1));
    }
    let steps: Vec<Value> = (0..n)
        .map(|i| {
            let deps: Vec<usize> = (0..n)
                .filter(|&j| rank[j] < rank[i] && rng.below(4) == 0)
                .collect();
            let mut input = json!({"i": i});
            if let Some(&d) = deps.first()
                && rng.below(2) == 0
            {
                input["from"] = json!(format!("${{steps.s{d}.output.i}}"));
            }
            json!({
                "id": format!("s{i}"),
                "tool": "test.echo",
                "input": input,
                "depends_on": deps.iter().map(|d| format!("s{d}")).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({"agent": "agent-bench", "steps": steps})
}

/// Runs the plan with `live` (its instance kept between decisions) to the
/// end; answers the history.
fn drive(live: &dyn Workflow, plan: &Value, polls: PollPoints, rng: &mut Rng) -> Vec<Event> {
    let tools = ToolRegistry::new();
    let limits = Limits::default();
    let gateway = Governance::shipped();
    let mut now = 1_700_000_000_000i64;
    let mut first = vec![NewEvent::engine(EventPayload::TaskSubmitted {
        workflow: "plan".into(),
        workflow_version: 2,
        input: plan.clone(),
        agent: None,
        on_behalf_of: Some("user-test".into()),
        idempotency_key: None,
    })];
    if polls == PollPoints::Batch {
        first.push(NewEvent::engine(EventPayload::TaskStarted {
            worker: "w".into(),
            polls,
        }));
    }
    let mut history: Vec<Event> = seal("t", 0, "", now, &first)
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    let mut state = TaskState::fold(&history);
    let mut instance = None;
    let mut outcomes: Vec<AttemptOutcome> = Vec::new();
    let inherited = Default::default();
    for _ in 0..1_000 {
        now += 1;
        let mut d = decide::decide_with(
            &DecideInput {
                history: &history,
                now_ms: now,
                outcomes: &outcomes,
                workflow: Some(live),
                tools: &tools,
                gateway: &gateway,
                preapprovals: &[],
                worker: "w",
                limits: &limits,
                halt: None,
                inherited: &inherited,
            },
            std::mem::take(&mut state),
            instance.take(),
        );
        assert!(d.state.blocked.is_none(), "blocked: {:?}", d.state.blocked);
        let last = history.last().expect("submitted");
        let sealed = seal("t", last.seq, &last.hash, now, &d.events);
        history.extend(sealed.into_iter().map(|(e, _)| e));
        instance = d.instance.take().map(|mut i| {
            i.confirm(&history);
            i
        });
        state = d.state;
        state.last_hash = history.last().map(|e| e.hash.clone()).unwrap_or_default();
        if state.is_final() {
            return history;
        }
        let mut open = decide::actions(&state, now);
        assert!(
            !open.is_empty(),
            "the plan stalled at seq {}",
            state.last_seq
        );
        let take = 1 + rng.below(3);
        outcomes = Vec::new();
        while !open.is_empty() && outcomes.len() < take {
            let a = open.swap_remove(rng.below(open.len()));
            outcomes.push(AttemptOutcome {
                target: a.target,
                attempt: a.attempt,
                result: if rng.below(25) == 0 {
                    Err(RecordedError {
                        message: "no".into(),
                        retryable: false,
                        effect_unknown: false,
                    })
                } else {
                    Ok(a.input.clone())
                },
                started_at_ms: now,
                duration_ms: 1,
            });
        }
    }
    panic!("the plan did not end in 1,000 decisions");
}

#[test]
fn node_and_shared_issue_the_same_commands() {
    let governance = Arc::new(Governance::shipped());
    let node = PlanWith {
        governance: governance.clone(),
        shared: false,
    };
    let shared = PlanWith {
        governance,
        shared: true,
    };
    let mut steps_run = 0;
    for seed in 1..=30u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let n = 4 + rng.below(12);
        let plan = random_plan(&mut rng, n);
        for polls in [PollPoints::EachResult, PollPoints::Batch] {
            for (live, other) in [(&node, &shared), (&shared, &node)] {
                let history = drive(live, &plan, polls, &mut rng);
                steps_run += history
                    .iter()
                    .filter(|e| matches!(e.payload, EventPayload::StepScheduled { .. }))
                    .count();
                for wf in [live, other] {
                    assert_eq!(
                        check_history(wf, &history),
                        Ok(()),
                        "seed {seed}, {polls:?}: recorded with shared={}, replayed with shared={}",
                        live.shared,
                        wf.shared
                    );
                }
            }
        }
    }
    assert!(steps_run > 500, "the plans ran steps: {steps_run}");
}
