//! The decide-cost benchmark: the total CPU that `decide` spends over a
//! task's whole life, for tasks of 100 / 1,000 / 10,000 commands, and how it
//! grows with the length (the slope). Pure: no store, no tools run; `decide`
//! drives the built-in `saga` over N one-step stages, every attempt
//! succeeding at once, the way a worker's driver calls it (one decision per
//! outcome, the history and the workflow instance kept between decisions:
//! `decide_with`, the instance confirmed after each append).
//!
//! Measures only; asserts nothing but that each task completes.

use std::time::Instant;

use mandate_activities::ToolRegistry;
use mandate_engine::core::decide::{self, AttemptOutcome, DecideInput};
use mandate_engine::core::event::{Event, NewEvent, seal};
use mandate_engine::core::workflow::Workflow;
use mandate_engine::{EventPayload, Limits, TaskState};
use serde_json::{Value, json};

use crate::stats::thread_cpu_s;

/// What one task of `commands` commands cost.
#[derive(Debug, Clone)]
pub struct DecideCost {
    pub commands: usize,
    /// Commands the task had issued when the measurement stopped.
    pub commands_done: usize,
    pub decisions: usize,
    pub events: usize,
    /// CPU time (this thread) spent inside `decide`, in seconds.
    pub decide_cpu_s: f64,
    /// Whether the task completed (false: stopped at the CPU budget).
    pub complete: bool,
}

impl DecideCost {
    pub fn us_per_command(&self) -> f64 {
        self.decide_cpu_s * 1e6 / self.commands_done.max(1) as f64
    }
}

/// The shape of the benchmark's task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// N one-step stages, one after the other: each decision sees every
    /// result due (one) at once.
    Chain,
    /// One stage of N steps in parallel, their results coming back one per
    /// decision (tool calls that take different times): the parallel
    /// branches' results are made visible in separate decisions.
    Parallel,
}

fn saga_input(steps: usize, shape: Shape) -> Value {
    let items = (0..steps).map(|i| json!({"tool": "test.echo", "input": {"step": i}}));
    let stages: Vec<Value> = match shape {
        Shape::Chain => items.map(|item| json!([item])).collect(),
        Shape::Parallel => vec![Value::Array(items.collect())],
    };
    json!({ "stages": stages })
}

/// Runs one task of `commands` commands of `shape` through `decide`,
/// stopping early once `budget_s` of decide CPU is spent.
pub fn decide_cost(commands: usize, budget_s: f64, shape: Shape) -> DecideCost {
    let workflows = mandate_workflows::registry();
    let saga = workflows.get("saga").expect("saga is built in");
    let saga: &dyn Workflow = saga.as_ref();
    let tools = ToolRegistry::new();
    let limits = Limits {
        max_history_events: usize::MAX / 2,
        max_commands_per_task: usize::MAX / 2,
        ..Limits::default()
    };
    let governance = mandate_activities::Governance::shipped();
    let task_id = format!("decide-bench-{commands}");
    let mut now = 1_700_000_000_000i64;
    let submitted = [NewEvent {
        actor: "agent:bench".into(),
        payload: EventPayload::TaskSubmitted {
            workflow: "saga".into(),
            workflow_version: saga.version(),
            input: saga_input(commands, shape),
            agent: None,
            on_behalf_of: Some("user-bench".into()),
            idempotency_key: None,
        },
    }];
    let mut history: Vec<Event> = seal(&task_id, 0, "", now, &submitted)
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    let mut state = TaskState::fold(&history);
    let mut outcomes: Vec<AttemptOutcome> = Vec::new();
    let mut cpu = 0.0;
    let mut decisions = 0;
    let inherited = Default::default();
    let mut instance = None;
    while !state.is_final() && cpu < budget_s {
        now += 1;
        let t0 = thread_cpu_s();
        let mut decision = decide::decide_with(
            &DecideInput {
                history: &history,
                now_ms: now,
                outcomes: &outcomes,
                workflow: Some(saga),
                tools: &tools,
                gateway: &governance,
                preapprovals: &[],
                worker: "bench",
                limits: &limits,
                halt: None,
                inherited: &inherited,
            },
            std::mem::take(&mut state),
            instance.take(),
        );
        cpu += thread_cpu_s() - t0;
        decisions += 1;
        assert!(
            !decision.events.is_empty(),
            "the saga stalled at seq {}",
            history.len()
        );
        assert!(
            decision.state.blocked.is_none(),
            "the saga was blocked: {:?}",
            decision.state.blocked
        );
        let last = history.last().expect("submitted");
        let sealed = seal(&task_id, last.seq, &last.hash, now, &decision.events);
        history.extend(sealed.into_iter().map(|(e, _)| e));
        let t0 = thread_cpu_s();
        instance = decision.instance.take().map(|mut i| {
            i.confirm(&history);
            i
        });
        cpu += thread_cpu_s() - t0;
        state = decision.state;
        state.last_hash = history.last().map(|e| e.hash.clone()).unwrap_or_default();
        // Parallel: one result per decision, and only that attempt built
        // (building every open step's action each time is this loop's
        // cost, not decide's: the 10,000-step run took 49.5 s of wall time).
        let results = if shape == Shape::Parallel {
            1
        } else {
            usize::MAX
        };
        outcomes = decide::due(&state, now)
            .take(results)
            .filter_map(|d| decide::action(&state, d))
            .map(|a| AttemptOutcome {
                target: a.target,
                attempt: a.attempt,
                result: Ok(a.input.clone()),
                started_at_ms: now,
                duration_ms: 0,
            })
            .collect();
    }
    DecideCost {
        commands,
        commands_done: state.commands as usize,
        decisions,
        events: history.len(),
        decide_cpu_s: cpu,
        complete: state.is_final(),
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct DecideBenchArgs {
    /// Task lengths (commands).
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    pub commands: Vec<usize>,
    /// `chain` (N one-step stages), `parallel` (one stage of N steps, one
    /// result per decision) or `both`.
    #[arg(long, default_value = "both")]
    pub shape: String,
    /// Most decide CPU seconds one length may take.
    #[arg(long, default_value_t = 60.0)]
    pub budget_s: f64,
}

pub fn run_cli(args: DecideBenchArgs) -> anyhow::Result<()> {
    let shapes: &[Shape] = match args.shape.as_str() {
        "chain" => &[Shape::Chain],
        "parallel" => &[Shape::Parallel],
        "both" => &[Shape::Chain, Shape::Parallel],
        other => anyhow::bail!("--shape {other:?}: expected chain, parallel or both"),
    };
    for &shape in shapes {
        println!("{}:\n", shape.describe());
        run(&args.commands, args.budget_s, shape);
        println!();
    }
    Ok(())
}

impl Shape {
    pub fn describe(self) -> &'static str {
        match self {
            Shape::Chain => {
                "decide cost, a chain (saga of N one-step stages; CPU of this thread inside `decide`)"
            }
            Shape::Parallel => {
                "decide cost, parallel steps (saga of one stage of N steps, one result per decision)"
            }
        }
    }
}

/// Runs `decide_cost` for each length (in this thread) and prints a table
/// with the growth from one length to the next: ×10 in length is ×10 in
/// total CPU when the cost is linear, ×100 when it is quadratic.
pub fn run(lengths: &[usize], budget_s: f64, shape: Shape) -> Vec<DecideCost> {
    let wall = Instant::now();
    let mut out: Vec<DecideCost> = Vec::new();
    println!(
        "| commands | decisions | events | total decide CPU | per command | growth of the total vs the previous length |"
    );
    println!("|---|---|---|---|---|---|");
    for &n in lengths {
        let c = decide_cost(n, budget_s, shape);
        let growth = match out.last() {
            Some(p) if p.complete && c.complete => {
                let k =
                    (c.decide_cpu_s / p.decide_cpu_s).ln() / (n as f64 / p.commands as f64).ln();
                format!(
                    "×{:.1} for ×{:.0} length: exponent {k:.2}",
                    c.decide_cpu_s / p.decide_cpu_s,
                    n as f64 / p.commands as f64
                )
            }
            _ => "—".to_string(),
        };
        println!(
            "| {} | {} | {} | {}{:.3} s | {:.1} µs | {} |",
            n,
            c.decisions,
            c.events,
            if c.complete {
                ""
            } else {
                "stopped at the budget: "
            },
            c.decide_cpu_s,
            c.us_per_command(),
            if c.complete {
                growth
            } else {
                format!("{} of {} commands done", c.commands_done, n)
            },
        );
        out.push(c);
    }
    eprintln!(
        "decide benchmark took {:.1} s of wall time",
        wall.elapsed().as_secs_f64()
    );
    out
}
