//! Planning one group-commit batch in memory: which appends pass their fence, and
//! the rows the accepted ones write. Shared by both backends so that fencing
//! means the same thing on SQLite and PostgreSQL.

use std::collections::HashMap;

use crate::core::chain::SealedEvent;
use crate::core::state::PendingTimer;

use super::writer::QueuedAppend;
use super::{AppendOutcome, LeaseUpdate, NewTask};

/// The final derived row of one task after the batch, borrowed from the
/// batch's requests (a plan copies no event or row: the writer binds the
/// requests' own data).
#[derive(Debug, Clone)]
pub(crate) struct TaskUpsert<'a> {
    pub id: &'a str,
    pub create: Option<&'a NewTask>,
    pub status: &'static str,
    pub last_seq: i64,
    pub last_hash: &'a str,
    pub updated_at_ms: i64,
    pub ready_at_ms: Option<i64>,
    /// `Some(owner)`: free the lease if `owner` holds it.
    pub release_owner: Option<&'a str>,
    pub blocked_reason: Option<&'a str>,
}

#[derive(Debug, Default)]
pub(crate) struct BatchPlan<'a> {
    pub outcomes: Vec<AppendOutcome>,
    /// Each event with its payload's stored text.
    pub events: Vec<(&'a SealedEvent, &'a str)>,
    pub tasks: Vec<TaskUpsert<'a>>,
    /// Tasks whose timer rows are replaced, with the new rows.
    pub timers: Vec<(&'a str, &'a [PendingTimer])>,
    pub wake: bool,
}

/// A task's row as the fence reads it: its last seq and its lease owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Current {
    pub last_seq: i64,
    pub lease_owner: Option<String>,
}

/// Decides each append's fate in order. `current` holds the stored last seq
/// and lease owner of every task the batch names (absent: no such task);
/// `existing_keys` the idempotency keys already taken.
pub(crate) fn plan<'a>(
    requests: &[&'a QueuedAppend],
    mut current: HashMap<String, Current>,
    existing_keys: &HashMap<String, String>,
) -> BatchPlan<'a> {
    let mut out = BatchPlan::default();
    let mut index_of_task: HashMap<&'a str, usize> = HashMap::new();
    let mut timers_of_task: HashMap<&'a str, usize> = HashMap::new();
    let mut keys_in_batch: HashMap<&'a str, &'a str> = HashMap::new();
    for &queued in requests {
        let req = &queued.req;
        let row = current.get(&req.task_id);
        // The lease fence first: a worker appends only while it holds the
        // task, and one that lost it is told so (not merely to reload).
        if let (Some(holder), Some(row)) = (req.lease.holder(), row)
            && row.lease_owner.as_deref() != Some(holder)
        {
            out.outcomes.push(AppendOutcome::LeaseLost {
                holder: row.lease_owner.clone(),
            });
            continue;
        }
        let actual = row.map(|r| r.last_seq);
        let fence_ok = match (req.expected_seq, actual) {
            (0, None) => req.create.is_some(),
            (expected, Some(actual)) => expected == actual && expected > 0,
            _ => false,
        };
        if !fence_ok {
            out.outcomes
                .push(AppendOutcome::Conflict { actual_seq: actual });
            continue;
        }
        if let Some(key) = req.create.as_ref().and_then(|c| c.idempotency_key.as_ref()) {
            if let Some(existing) = existing_keys
                .get(key)
                .map(String::as_str)
                .or_else(|| keys_in_batch.get(key.as_str()).copied())
            {
                out.outcomes.push(AppendOutcome::DuplicateIdempotencyKey {
                    existing_task_id: existing.to_string(),
                });
                continue;
            }
            keys_in_batch.insert(key, &req.task_id);
        }
        let Some(last) = req.events.last() else {
            // An append of nothing changes nothing but still passes its fence.
            out.outcomes.push(AppendOutcome::Appended);
            continue;
        };
        let release_owner = match &req.lease {
            LeaseUpdate::Keep | LeaseUpdate::Hold { .. } => None,
            LeaseUpdate::Release { owner } => Some(owner.as_str()),
        };
        let lease_owner = match (release_owner, current.get(&req.task_id)) {
            (Some(_), _) => None,
            (None, Some(r)) => r.lease_owner.clone(),
            (None, None) => req.create.as_ref().and_then(|c| c.lease_owner.clone()),
        };
        current.insert(
            req.task_id.clone(),
            Current {
                last_seq: last.seq,
                lease_owner,
            },
        );
        out.events
            .extend(req.events.iter().map(|e| (e, e.payload.as_str())));
        let row = TaskUpsert {
            id: &req.task_id,
            create: req.create.as_ref(),
            status: req.projection.status.as_str(),
            last_seq: last.seq,
            last_hash: &last.hash,
            updated_at_ms: last.recorded_at_ms,
            ready_at_ms: req.projection.ready_at_ms,
            release_owner,
            blocked_reason: req.projection.blocked_reason.as_deref(),
        };
        match index_of_task.get(req.task_id.as_str()) {
            Some(&i) => {
                let prev = &mut out.tasks[i];
                let create = prev.create.take();
                let release_owner = row.release_owner.or(prev.release_owner.take());
                *prev = TaskUpsert {
                    create,
                    release_owner,
                    ..row
                };
            }
            None => {
                index_of_task.insert(&req.task_id, out.tasks.len());
                out.tasks.push(row);
            }
        }
        if let Some(t) = &req.timers {
            match timers_of_task.get(req.task_id.as_str()) {
                Some(&i) => out.timers[i].1 = t,
                None => {
                    timers_of_task.insert(&req.task_id, out.timers.len());
                    out.timers.push((&req.task_id, t));
                }
            }
        }
        out.wake |= req.wake;
        out.outcomes.push(AppendOutcome::Appended);
    }
    out
}
