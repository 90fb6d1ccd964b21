//! The invariants a stress run must keep, checked per task from the database
//! alone: the task's row, its verified history, a replay of it, and the
//! world's `kv` namespace.

use std::collections::{HashMap, HashSet};

use mandate_engine::core::workflow::check_history;
use mandate_engine::{Engine, EventPayload, TaskState, TaskStatus};
use serde_json::Value;

use crate::scenario::PlannedTask;

/// Every invariant, in report order. A violation of any fails the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Invariant {
    Lost,
    CompletedTwice,
    CompensationOutOfOrder,
    CompensationMissing,
    CompensationForIncompleteStep,
    BrokenChain,
    NonDeterministicReplay,
    RowDiffersFromHistory,
    SideEffectLeftBehind,
    EffectMissing,
    UnexpectedOutcome,
    EscalationUnexplained,
}

impl Invariant {
    pub const ALL: [Invariant; 12] = [
        Invariant::Lost,
        Invariant::CompletedTwice,
        Invariant::CompensationOutOfOrder,
        Invariant::CompensationMissing,
        Invariant::CompensationForIncompleteStep,
        Invariant::BrokenChain,
        Invariant::NonDeterministicReplay,
        Invariant::RowDiffersFromHistory,
        Invariant::SideEffectLeftBehind,
        Invariant::EffectMissing,
        Invariant::UnexpectedOutcome,
        Invariant::EscalationUnexplained,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Invariant::Lost => "lost",
            Invariant::CompletedTwice => "steps_completed_twice",
            Invariant::CompensationOutOfOrder => "compensations_out_of_order",
            Invariant::CompensationMissing => "compensations_missing",
            Invariant::CompensationForIncompleteStep => "compensations_for_incomplete_steps",
            Invariant::BrokenChain => "broken_chains",
            Invariant::NonDeterministicReplay => "non_deterministic_replays",
            Invariant::RowDiffersFromHistory => "rows_differing_from_history",
            Invariant::SideEffectLeftBehind => "side_effects_left_by_rolled_back_tasks",
            Invariant::EffectMissing => "effects_missing_for_completed_tasks",
            Invariant::UnexpectedOutcome => "planned_failures_that_completed",
            Invariant::EscalationUnexplained => "escalations_not_naming_uncompensated_steps",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Invariant::Lost => "lost (not final)",
            Invariant::CompletedTwice => "steps recorded completed twice",
            Invariant::CompensationOutOfOrder => "compensations out of order",
            Invariant::CompensationMissing => "compensations missing for completed steps",
            Invariant::CompensationForIncompleteStep => {
                "compensations for steps that never completed"
            }
            Invariant::BrokenChain => "broken chains",
            Invariant::NonDeterministicReplay => "non-deterministic replays",
            Invariant::RowDiffersFromHistory => "task rows differing from their history",
            Invariant::SideEffectLeftBehind => "side effects left by rolled-back tasks",
            Invariant::EffectMissing => "effects missing for completed tasks",
            Invariant::UnexpectedOutcome => "planned failures that completed",
            Invariant::EscalationUnexplained => "escalations not naming uncompensated steps",
        }
    }
}

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    RolledBack,
    Escalated,
    Other,
    NotFinal,
}

/// The verdict on one task.
#[derive(Debug)]
pub struct TaskVerdict {
    pub task_id: String,
    pub outcome: Outcome,
    pub violations: Vec<(Invariant, String)>,
    /// Submit → final, from the task row.
    pub latency_ms: Option<i64>,
    pub final_at_ms: Option<i64>,
    /// Keys an escalated task left for a person (reported, not a violation).
    pub left_for_a_person: usize,
}

/// Checks one task. `kv` is the world's `kv` namespace.
pub async fn check_task(
    engine: &Engine,
    planned: &PlannedTask,
    task_id: &str,
    kv: &HashMap<String, Value>,
) -> TaskVerdict {
    let mut v = TaskVerdict {
        task_id: task_id.to_string(),
        outcome: Outcome::NotFinal,
        violations: Vec::new(),
        latency_ms: None,
        final_at_ms: None,
        left_for_a_person: 0,
    };
    let row = match engine.task(task_id).await {
        Ok(row) => row,
        Err(e) => {
            v.violations
                .push((Invariant::Lost, format!("task row unreadable: {e}")));
            return v;
        }
    };
    v.outcome = match row.status {
        TaskStatus::Completed => Outcome::Completed,
        TaskStatus::FailedTerminal => Outcome::RolledBack,
        TaskStatus::EscalatedToHuman => Outcome::Escalated,
        s if s.is_final() => Outcome::Other,
        _ => Outcome::NotFinal,
    };
    if v.outcome == Outcome::NotFinal {
        let why = row
            .blocked_reason
            .clone()
            .map(|r| format!(", blocked: {r}"))
            .unwrap_or_default();
        v.violations.push((
            Invariant::Lost,
            format!("still {} at seq {}{why}", row.status, row.last_seq),
        ));
    } else {
        v.latency_ms = Some(row.updated_at_ms - row.created_at_ms);
        v.final_at_ms = Some(row.updated_at_ms);
    }
    if v.outcome == Outcome::Other {
        v.violations.push((
            Invariant::UnexpectedOutcome,
            format!("ended {} (nothing cancels stress tasks)", row.status),
        ));
    }
    if v.outcome == Outcome::Completed && planned.planned_failure {
        v.violations.push((
            Invariant::UnexpectedOutcome,
            "completed despite a planned terminal failure".into(),
        ));
    }

    let history = match engine.history(task_id).await {
        Ok(h) => h,
        Err(e) => {
            v.violations.push((Invariant::BrokenChain, e.to_string()));
            return v;
        }
    };
    let state = TaskState::fold(&history);
    match engine.workflows().get(&state.workflow) {
        Some(wf) => {
            if let Err(e) = check_history(wf.as_ref(), &history) {
                v.violations
                    .push((Invariant::NonDeterministicReplay, e.to_string()));
            }
        }
        None => v.violations.push((
            Invariant::NonDeterministicReplay,
            format!("workflow {:?} is not registered", state.workflow),
        )),
    }
    if row.status != state.status() || row.last_seq != state.last_seq {
        v.violations.push((
            Invariant::RowDiffersFromHistory,
            format!(
                "row says {} at seq {}, history folds to {} at seq {}",
                row.status,
                row.last_seq,
                state.status(),
                state.last_seq
            ),
        ));
    }

    // Walk the history: steps, completions, compensations.
    let mut step_key: HashMap<i64, Option<String>> = HashMap::new();
    let mut compensable: HashSet<i64> = HashSet::new();
    let mut completed_at: HashMap<i64, usize> = HashMap::new(); // step seq → completion index
    let mut completions: HashMap<i64, usize> = HashMap::new();
    let mut comp_of_start: HashMap<i64, i64> = HashMap::new(); // CompensationStarted seq → step seq
    let mut comp_started: Vec<(i64, i64)> = Vec::new(); // (start seq, step seq)
    let mut comp_resolved_at: HashMap<i64, i64> = HashMap::new(); // start seq → resolving seq
    let mut comp_completed_steps: HashSet<i64> = HashSet::new();
    let mut comp_completions: HashMap<i64, usize> = HashMap::new();
    let mut recovery_paths: Vec<String> = Vec::new();
    // Steps with an attempt the engine cut off (timeout) or that panicked:
    // whatever ends them, their effect may have happened.
    let mut effect_unknown: HashSet<i64> = HashSet::new();
    for e in &history {
        match &e.payload {
            EventPayload::StepScheduled {
                input,
                compensation,
                ..
            } => {
                step_key.insert(
                    e.seq,
                    input.get("key").and_then(Value::as_str).map(str::to_string),
                );
                if compensation.is_some() {
                    compensable.insert(e.seq);
                }
            }
            EventPayload::StepCompleted { step_seq, .. } => {
                *completions.entry(*step_seq).or_default() += 1;
                let n = completed_at.len();
                completed_at.entry(*step_seq).or_insert(n);
            }
            EventPayload::StepAttemptFailed {
                step_seq, error, ..
            } if error.effect_unknown => {
                effect_unknown.insert(*step_seq);
            }
            // A step that failed after an attempt the engine cut off (timeout),
            // on its last attempt or an earlier one (then abandoned by the
            // rollback while waiting for a retry), may have had its effect: a
            // rollback must undo it like a completed step, in the order it
            // resolved.
            EventPayload::StepFailed {
                step_seq, error, ..
            } if error.effect_unknown || effect_unknown.contains(step_seq) => {
                let n = completed_at.len();
                completed_at.entry(*step_seq).or_insert(n);
            }
            EventPayload::CompensationStarted { step_seq, .. } => {
                comp_of_start.insert(e.seq, *step_seq);
                comp_started.push((e.seq, *step_seq));
                if !completed_at.contains_key(step_seq) {
                    v.violations.push((
                        Invariant::CompensationForIncompleteStep,
                        format!("compensation at seq {} for step seq {step_seq}, which had not completed", e.seq),
                    ));
                }
            }
            EventPayload::CompensationCompleted {
                compensation_seq, ..
            } => {
                *comp_completions.entry(*compensation_seq).or_default() += 1;
                comp_resolved_at.entry(*compensation_seq).or_insert(e.seq);
                if let Some(step) = comp_of_start.get(compensation_seq) {
                    comp_completed_steps.insert(*step);
                }
            }
            EventPayload::CompensationFailed {
                compensation_seq, ..
            } => {
                comp_resolved_at.entry(*compensation_seq).or_insert(e.seq);
            }
            EventPayload::TaskEscalated {
                recovery_paths: r, ..
            } => recovery_paths.extend(r.iter().cloned()),
            _ => {}
        }
    }
    for (seq, n) in &completions {
        if *n > 1 {
            v.violations.push((
                Invariant::CompletedTwice,
                format!("step seq {seq} completed {n} times"),
            ));
        }
    }
    for (seq, n) in &comp_completions {
        if *n > 1 {
            v.violations.push((
                Invariant::CompletedTwice,
                format!("compensation seq {seq} completed {n} times"),
            ));
        }
    }
    // Newest completion first, one at a time.
    for pair in comp_started.windows(2) {
        let ((prev_start, prev_step), (next_start, next_step)) = (pair[0], pair[1]);
        let (a, b) = (completed_at.get(&prev_step), completed_at.get(&next_step));
        if let (Some(a), Some(b)) = (a, b)
            && a <= b
        {
            v.violations.push((
                Invariant::CompensationOutOfOrder,
                format!(
                    "step seq {next_step} (completed later) compensated after step seq {prev_step}"
                ),
            ));
        }
        if comp_resolved_at
            .get(&prev_start)
            .is_none_or(|r| *r > next_start)
        {
            v.violations.push((
                Invariant::CompensationOutOfOrder,
                format!("compensation at seq {next_start} started before the one at seq {prev_start} ended"),
            ));
        }
    }
    if v.outcome == Outcome::Completed && !comp_started.is_empty() {
        v.violations.push((
            Invariant::CompensationForIncompleteStep,
            "a completed task ran compensations".into(),
        ));
    }
    let uncompensated: Vec<i64> = completed_at
        .keys()
        .filter(|s| compensable.contains(s) && !comp_completed_steps.contains(s))
        .copied()
        .collect();
    match v.outcome {
        Outcome::RolledBack => {
            for s in &uncompensated {
                v.violations.push((
                    Invariant::CompensationMissing,
                    format!("step seq {s} completed and was never compensated"),
                ));
            }
        }
        Outcome::Escalated => {
            for s in &uncompensated {
                let key = step_key.get(s).cloned().flatten().unwrap_or_default();
                let named = recovery_paths.iter().any(|p| {
                    p.contains(&format!("(seq {s})")) || (!key.is_empty() && p.contains(&key))
                });
                if !named {
                    v.violations.push((
                        Invariant::EscalationUnexplained,
                        format!("uncompensated step seq {s} ({key}) is not in the recovery paths"),
                    ));
                }
            }
        }
        _ => {}
    }

    // The world: a completed task's writes are there; a rolled-back task's
    // are gone; an escalated task's are gone except those left for a person.
    let completed_keys: HashMap<&str, i64> = step_key
        .iter()
        .filter(|(seq, _)| completed_at.contains_key(seq))
        .filter_map(|(seq, k)| k.as_deref().map(|k| (k, *seq)))
        .filter(|(_, seq)| compensable.contains(seq))
        .collect();
    for (key, value) in &planned.puts {
        let present = kv.get(key);
        match v.outcome {
            Outcome::Completed => {
                if present != Some(value) {
                    v.violations.push((
                        Invariant::EffectMissing,
                        format!("kv {key} is {present:?}, expected {value}"),
                    ));
                }
            }
            Outcome::RolledBack => {
                if present.is_some() {
                    v.violations.push((
                        Invariant::SideEffectLeftBehind,
                        format!("kv {key} is still set after the rollback"),
                    ));
                }
            }
            Outcome::Escalated => {
                let left_for_a_person = completed_keys
                    .get(key.as_str())
                    .is_some_and(|seq| uncompensated.contains(seq));
                if left_for_a_person {
                    v.left_for_a_person += 1;
                } else if present.is_some() {
                    v.violations.push((
                        Invariant::SideEffectLeftBehind,
                        format!(
                            "kv {key} is set though its step was compensated or never completed"
                        ),
                    ));
                }
            }
            Outcome::Other | Outcome::NotFinal => {}
        }
    }
    v
}
