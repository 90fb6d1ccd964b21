//! The stress run's tasks, generated from the seed alone: each is a `saga`
//! of 3–10 steps in stages (some stages parallel). Most steps are
//! `stress.put` on a key unique to the task and step, compensated by
//! `stress.undo` (a delete); some are `stress.read`. About one task in five
//! has a planned terminal failure (`test.fault fail_terminal`) and must roll
//! back; injected terminal faults roll back a few more.

use serde_json::{Value, json};

use crate::child::{PUT, READ, UNDO};
use crate::faults::{FaultKind, FaultSet, decide_ppm, fires};

/// The step timeout of a step the fault schedule will time out or hang, and
/// of every other step (one no loaded machine reaches, so that only injected
/// timeouts happen and the schedule stays a function of the seed). Timeouts
/// hit read and write steps alike; a write's timed-out attempt leaves a
/// zombie call behind (see `FaultyTool`).
///
/// 4 s rather than less because a compensation inherits its step's timeout,
/// and an undo waiting for SQLite's write lock on a loaded 2-core machine
/// took over 2 s often enough to escalate ~9% of tasks.
pub const FAULTED_STEP_TIMEOUT_MS: u64 = 4_000;
pub const STEP_TIMEOUT_MS: u64 = 60_000;

/// Whether the fault schedule times out or hangs an attempt of this step
/// (the same decision `FaultyTool` makes).
fn step_will_hang(seed: u64, faults: &FaultSet, key: &str) -> bool {
    let identity = format!("{}/step", key.rsplit_once('/').map_or(key, |(_, k)| k));
    (1..=2).any(|attempt| {
        [FaultKind::ToolHang, FaultKind::ToolTimeout]
            .into_iter()
            .any(|kind| faults.contains(kind) && fires(seed, &identity, attempt, kind))
    })
}

/// Whether this write step gives up after its first attempt, and that
/// attempt times out (half the writes whose first attempt the schedule
/// times out). Its step then fails with an unknown effect and the task rolls
/// back while the attempt's zombie call is still pending: the race between
/// that late call and the compensation's fence, which must leave nothing.
fn write_gives_up_after_a_timeout(seed: u64, faults: &FaultSet, key: &str) -> bool {
    let identity = format!("{}/step", key.rsplit_once('/').map_or(key, |(_, k)| k));
    faults.contains(FaultKind::ToolTimeout)
        && !(faults.contains(FaultKind::ToolTerminal)
            && fires(seed, &identity, 1, FaultKind::ToolTerminal))
        && fires(seed, &identity, 1, FaultKind::ToolTimeout)
        && decide_ppm(seed, &identity, 0, "give-up-after-a-timeout") < 500_000
}

/// One generated task: its saga input and what the checker needs to know.
#[derive(Debug, Clone)]
pub struct PlannedTask {
    pub index: usize,
    pub input: Value,
    /// Keys `stress.put` writes, with the value each writes.
    pub puts: Vec<(String, Value)>,
    pub planned_failure: bool,
}

/// The world key of step `step` of task `index` in run `run`. The part after
/// the `/` is what fault decisions hash, so it does not depend on the run.
pub fn key(run: &str, index: usize, step: usize) -> String {
    format!("{run}/t{index}-{step}")
}

/// Task `index` of a run with `seed`.
pub fn generate(seed: u64, faults: &FaultSet, run: &str, index: usize) -> PlannedTask {
    let id = format!("t{index}");
    let draw = |what: &str, n: u64| decide_ppm(seed, &id, n, what);
    let steps = 3 + (draw("steps", 0) % 8) as usize;
    let planned_failure = draw("planned-failure", 0) < 200_000;
    let fail_at = if planned_failure {
        Some((draw("fail-at", 0) % steps as u64) as usize)
    } else {
        None
    };
    let retry = json!({"max_attempts": 6, "initial_backoff_ms": 20, "max_backoff_ms": 200});
    let undo_retry = json!({"max_attempts": 5, "initial_backoff_ms": 20, "max_backoff_ms": 200});
    let mut puts = Vec::new();
    let mut items = Vec::new();
    for step in 0..steps {
        let k = key(run, index, step);
        let read = Some(step) != fail_at && draw("read", step as u64) < 250_000;
        let timeout_ms = if step_will_hang(seed, faults, &k) {
            FAULTED_STEP_TIMEOUT_MS
        } else {
            STEP_TIMEOUT_MS
        };
        if Some(step) == fail_at {
            items.push(json!({
                "name": format!("planned-failure-{step}"),
                "tool": "test.fault",
                "input": {"mode": "fail_terminal", "message": "planned failure"},
                "retry": {"max_attempts": 1},
            }));
        } else if read {
            items.push(json!({
                "name": format!("read-{step}"),
                "tool": READ,
                "input": {"key": k},
                "retry": retry,
                "timeout_ms": timeout_ms,
            }));
        } else {
            let value = json!({"task": index, "step": step});
            let retry = if write_gives_up_after_a_timeout(seed, faults, &k) {
                json!({"max_attempts": 1})
            } else {
                retry.clone()
            };
            items.push(json!({
                "name": format!("put-{step}"),
                "tool": PUT,
                "input": {"key": k, "value": value},
                "compensate": {"tool": UNDO, "input": {"key": k}, "retry": undo_retry},
                "retry": retry,
                "timeout_ms": timeout_ms,
                "recovery_path": format!("delete kv key {k}"),
            }));
            puts.push((k, value));
        }
    }
    // Stages: one step (60%) or two to three in parallel.
    let mut stages: Vec<Value> = Vec::new();
    let mut rest = items.into_iter().peekable();
    let mut stage_no = 0u64;
    while rest.peek().is_some() {
        let width = if draw("parallel", stage_no) < 600_000 {
            1
        } else {
            2 + (draw("width", stage_no) % 2) as usize
        };
        let stage: Vec<Value> = rest.by_ref().take(width).collect();
        stages.push(Value::Array(stage));
        stage_no += 1;
    }
    PlannedTask {
        index,
        input: json!({ "stages": stages }),
        puts,
        planned_failure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_tasks() {
        for i in 0..200 {
            let a = generate(42, &FaultSet::all(), "r", i);
            let b = generate(42, &FaultSet::all(), "r", i);
            assert_eq!(a.input, b.input);
            let steps: usize = a.input["stages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_array().unwrap().len())
                .sum();
            assert!((3..=10).contains(&steps), "task {i} has {steps} steps");
        }
        let failing = (0..1_000)
            .filter(|i| generate(42, &FaultSet::all(), "r", *i).planned_failure)
            .count();
        assert!((150..250).contains(&failing), "{failing} planned failures");
        assert!(
            (0..50).any(|i| generate(42, &FaultSet::all(), "r", i).input["stages"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s.as_array().unwrap().len() > 1)),
            "some stages are parallel"
        );
    }
}
