//! Compares a task's stored derived rows (its `tasks` row and `timers` rows)
//! with the state rebuilt by folding its history, field by field.
//!
//! Only what the history alone determines is compared. The lease columns
//! coordinate workers and carry no history; `ready_at_ms` depends on when a
//! worker last looked, so it is only checked where it is unambiguous: a final,
//! blocked or paused task is never queued, so its `ready_at_ms` must be NULL.
//!
//! Pure: no I/O.

use serde::Serialize;
use serde_json::{Value, json};

use crate::core::state::{PendingTimer, TaskState};
use crate::store::TaskRow;

/// One field whose stored value differs from the value rebuilt from the history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldDiff {
    /// The column (`status`, `last_seq`, …) or `timers[seq N]`, or `tasks row`.
    pub field: String,
    /// What the derived table holds (`null` for a missing row or NULL column).
    pub stored: Value,
    /// What the history says it should hold.
    pub rebuilt: Value,
    /// Why the rebuilt value is what it is, when that is not obvious.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl FieldDiff {
    fn new(field: impl Into<String>, stored: Value, rebuilt: Value) -> Self {
        Self {
            field: field.into(),
            stored,
            rebuilt,
            note: None,
        }
    }
}

/// The verdict on a task's derived rows.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ProjectionVerdict {
    Ok,
    Mismatch {
        diffs: Vec<FieldDiff>,
    },
    /// The rows could not be compared (the events do not parse, or the task
    /// kept changing while it was read).
    NotChecked {
        message: String,
    },
}

/// Compares the stored rows with the folded `state`. `row` is `None` when the
/// task has events but no `tasks` row.
pub fn compare(
    row: Option<&TaskRow>,
    stored_timers: &[PendingTimer],
    state: &TaskState,
) -> Vec<FieldDiff> {
    let mut diffs = Vec::new();
    let Some(row) = row else {
        diffs.push(FieldDiff {
            note: Some("every task with events has a row in the tasks table".to_string()),
            ..FieldDiff::new("tasks row", Value::Null, json!("present"))
        });
        diffs.extend(compare_timers(stored_timers, state));
        return diffs;
    };
    let mut check = |field: &str, stored: Value, rebuilt: Value| {
        if stored != rebuilt {
            diffs.push(FieldDiff::new(field, stored, rebuilt));
        }
    };
    check("status", json!(row.status), json!(state.status()));
    check("last_seq", json!(row.last_seq), json!(state.last_seq));
    check("last_hash", json!(row.last_hash), json!(state.last_hash));
    check("workflow", json!(row.workflow), json!(state.workflow));
    check(
        "workflow_version",
        json!(row.workflow_version),
        json!(state.workflow_version),
    );
    check("agent", json!(row.agent), json!(state.agent));
    check(
        "idempotency_key",
        json!(row.idempotency_key),
        json!(state.idempotency_key),
    );
    check(
        "created_at_ms",
        json!(row.created_at_ms),
        json!(state.submitted_at_ms),
    );
    check(
        "updated_at_ms",
        json!(row.updated_at_ms),
        json!(state.updated_at_ms),
    );
    check(
        "blocked_reason",
        json!(row.blocked_reason),
        json!(state.blocked),
    );
    let never_queued = if state.is_final() {
        Some("a final task is never queued")
    } else if state.blocked.is_some() {
        Some("a blocked task is never queued")
    } else if state.paused {
        Some("a paused task is never queued")
    } else {
        None
    };
    if let (Some(why), Some(ready)) = (never_queued, row.ready_at_ms) {
        diffs.push(FieldDiff {
            note: Some(why.to_string()),
            ..FieldDiff::new("ready_at_ms", json!(ready), Value::Null)
        });
    }
    diffs.extend(compare_timers(stored_timers, state));
    diffs
}

fn timer_json(t: &PendingTimer) -> Value {
    json!({"fire_at_ms": t.fire_at_ms, "kind": t.kind.as_str()})
}

/// One diff per timer seq that is missing, extra or different.
fn compare_timers(stored: &[PendingTimer], state: &TaskState) -> Vec<FieldDiff> {
    let rebuilt = state.pending_timers();
    let mut seqs: Vec<i64> = stored.iter().chain(&rebuilt).map(|t| t.seq).collect();
    seqs.sort_unstable();
    seqs.dedup();
    let find = |ts: &[PendingTimer], seq: i64| {
        ts.iter()
            .find(|t| t.seq == seq)
            .map(timer_json)
            .unwrap_or(Value::Null)
    };
    seqs.into_iter()
        .filter_map(|seq| {
            let (s, r) = (find(stored, seq), find(&rebuilt, seq));
            (s != r).then(|| FieldDiff::new(format!("timers[seq {seq}]"), s, r))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::event::{Event, EventPayload};
    use crate::core::state::{TaskStatus, TimerKind};

    fn ev(seq: i64, at: i64, payload: EventPayload) -> Event {
        Event {
            task_id: "t".into(),
            seq,
            recorded_at_ms: at,
            actor: "engine".into(),
            payload,
            prev_hash: String::new(),
            hash: format!("h{seq}"),
        }
    }

    /// 1 submitted, 2 started, 3 a 5-second sleep began.
    fn sleeping() -> TaskState {
        TaskState::fold(&[
            // 1
            ev(
                1,
                100,
                EventPayload::TaskSubmitted {
                    workflow: "saga".into(),
                    workflow_version: 1,
                    input: json!({}),
                    agent: Some("a".into()),
                    on_behalf_of: None,
                    idempotency_key: None,
                },
            ),
            // 2
            ev(
                2,
                110,
                EventPayload::TaskStarted {
                    worker: "w".into(),
                    polls: Default::default(),
                },
            ),
            // 3
            ev(
                3,
                120,
                EventPayload::TimerStarted {
                    command: 0,
                    duration_ms: 5_000,
                    fire_at_ms: 5_120,
                },
            ),
        ])
    }

    fn row_of(state: &TaskState) -> TaskRow {
        TaskRow {
            id: "t".into(),
            workflow: state.workflow.clone(),
            workflow_version: state.workflow_version,
            agent: state.agent.clone(),
            idempotency_key: state.idempotency_key.clone(),
            status: state.status(),
            last_seq: state.last_seq,
            last_hash: state.last_hash.clone(),
            created_at_ms: state.submitted_at_ms,
            updated_at_ms: state.updated_at_ms,
            ready_at_ms: Some(5_120),
            lease_owner: Some("w".into()),
            lease_expires_at_ms: Some(9_999),
            blocked_reason: state.blocked.clone(),
        }
    }

    fn timer(seq: i64, fire_at_ms: i64) -> PendingTimer {
        PendingTimer {
            seq,
            fire_at_ms,
            kind: TimerKind::Sleep,
        }
    }

    #[test]
    fn a_faithful_projection_has_no_diff() {
        let state = sleeping();
        assert_eq!(
            compare(Some(&row_of(&state)), &[timer(3, 5_120)], &state),
            []
        );
    }

    #[test]
    fn each_tampered_field_is_named_with_both_values() {
        let state = sleeping();
        let mut row = row_of(&state);
        row.status = TaskStatus::Completed;
        row.agent = None;
        row.last_seq = 7;
        let diffs = compare(Some(&row), &[timer(3, 9)], &state);
        let fields: Vec<&str> = diffs.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(fields, ["status", "last_seq", "agent", "timers[seq 3]"]);
        assert_eq!(diffs[0].stored, json!("completed"));
        assert_eq!(diffs[0].rebuilt, json!("running"));
        assert_eq!(diffs[3].stored, json!({"fire_at_ms": 9, "kind": "sleep"}));
        assert_eq!(
            diffs[3].rebuilt,
            json!({"fire_at_ms": 5_120, "kind": "sleep"})
        );
    }

    #[test]
    fn missing_and_extra_timers_and_a_missing_row() {
        let state = sleeping();
        let diffs = compare(Some(&row_of(&state)), &[timer(9, 1)], &state);
        assert_eq!(diffs.len(), 2);
        assert_eq!(
            (diffs[0].field.as_str(), &diffs[0].rebuilt),
            (
                "timers[seq 3]",
                &json!({"fire_at_ms": 5_120, "kind": "sleep"})
            )
        );
        assert_eq!(
            (diffs[1].field.as_str(), &diffs[1].rebuilt),
            ("timers[seq 9]", &Value::Null)
        );
        let diffs = compare(None, &[timer(3, 5_120)], &state);
        assert_eq!(diffs.len(), 1);
        assert_eq!(diffs[0].field, "tasks row");
    }

    #[test]
    fn ready_at_is_checked_only_where_it_is_unambiguous() {
        let mut state = sleeping();
        // Running: any ready_at_ms is plausible.
        let mut row = row_of(&state);
        row.ready_at_ms = Some(1);
        assert_eq!(compare(Some(&row), &[timer(3, 5_120)], &state), []);
        // Blocked: it must be NULL.
        state.apply(
            "t",
            4,
            130,
            &EventPayload::TaskBlocked {
                reason: "non_determinism".into(),
                at_seq: Some(3),
                expected: None,
                found: None,
            },
        );
        state.last_hash = "h4".into();
        let mut row = row_of(&state);
        row.ready_at_ms = Some(130);
        let diffs = compare(Some(&row), &[timer(3, 5_120)], &state);
        assert_eq!(diffs.len(), 1, "{diffs:?}");
        assert_eq!(diffs[0].field, "ready_at_ms");
        assert_eq!(
            diffs[0].note.as_deref(),
            Some("a blocked task is never queued")
        );
    }
}
