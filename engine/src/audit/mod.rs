//! Audit: what `mandate replay` and `mandate verify` establish about a task,
//! straight from the database, with no server running.
//!
//! For one task ([`audit_task`]):
//! 1. the hash chain is verified from seq 1, and a break is explained (an
//!    edited, deleted, duplicated or moved event, a cut-off tail) with the
//!    first bad seq ([`check_chain`]);
//! 2. the task's state is rebuilt by folding its events and compared, field by
//!    field, with the stored derived rows ([`compare_projection`]);
//! 3. the workflow code of this binary is re-run against the history with no
//!    side effect, and the first divergence is reported as non-determinism
//!    ([`crate::core::workflow::check_history`]).
//!
//! [`sweep`] does the same for every task of a selection, page by page, in
//! bounded memory.
//!
//! Reads only: an audit never appends, never quarantines, never runs a tool,
//! and never prints. Exit codes and rendering belong to the CLI.

mod chain;
mod projection;
mod sweep;

use serde::Serialize;
use serde::ser::SerializeSeq;
use serde_json::Value;

use crate::core::chain::RawEvent;
use crate::core::event::{self, Event};
use crate::core::state::{PendingTimer, TaskState, TaskStatus};
use crate::core::workflow::{WorkflowRegistry, check_folded_history};
use crate::store::{self, Store, TaskRow};

pub use chain::{BreakKind, ChainBreak, ChainVerdict, check_chain};
pub use projection::{FieldDiff, ProjectionVerdict, compare as compare_projection};
pub use sweep::{
    MAX_LISTED_BAD, Selection, SweepOptions, SweepSummary, TaskVerdict, count_selected, sweep,
};

/// How often a task is re-read when it changes while being read.
const SNAPSHOT_ATTEMPTS: usize = 5;

/// Failures of an audit (a broken chain is not one: it is a finding, in the report).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no task with id {task_id}: the database holds neither events nor a row for it; `mandate list` shows the known tasks"
    )]
    TaskNotFound { task_id: String },
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// What an audit checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditOptions {
    /// Re-run the workflow code against the history (`mandate replay`); off for
    /// `mandate verify`, which checks the chain and the derived rows only.
    pub check_determinism: bool,
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            check_determinism: true,
        }
    }
}

/// Why the workflow code was not re-run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NotCheckedReason {
    /// [`AuditOptions::check_determinism`] was off.
    NotRequested,
    /// An untrusted history is not replayed.
    ChainBroken,
    /// An event does not parse into a type this binary knows.
    Unparseable,
    /// This binary has no workflow of the task's name.
    WorkflowNotRegistered,
}

/// The verdict on re-running the workflow code against the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum DeterminismVerdict {
    /// The code issues exactly the recorded commands (and, where the history
    /// says the workflow returned, returns the same result).
    Ok,
    /// The first divergence: at `seq` the history recorded `expected`, the code
    /// of this binary issued `found`.
    NonDeterminism {
        seq: i64,
        expected: String,
        found: String,
    },
    NotChecked {
        reason: NotCheckedReason,
        message: String,
    },
}

/// The overall verdict. When several problems exist the most serious one
/// names the task: chain broken > projection mismatch > replay failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Ok,
    /// This binary cannot replay the history: non-determinism, a workflow it
    /// does not have, or an event it cannot parse.
    ReplayFailed,
    /// The stored derived rows differ from the state rebuilt from the history.
    ProjectionMismatch,
    /// The hash chain does not verify: the history was tampered with.
    ChainBroken,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::ReplayFailed => "replay_failed",
            Self::ProjectionMismatch => "projection_mismatch",
            Self::ChainBroken => "chain_broken",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything an audit found about one task. Serializes to the `--json`
/// document of `mandate replay` (documented in `docs/replay.md`).
#[derive(Debug, Clone, Serialize)]
pub struct TaskAudit {
    pub task_id: String,
    pub verdict: Verdict,
    pub workflow: Option<String>,
    pub workflow_version: Option<u32>,
    /// The status folded from the history (`None` when it cannot be folded).
    pub status: Option<TaskStatus>,
    /// The status in the `tasks` row (`None` when the row is missing).
    pub stored_status: Option<TaskStatus>,
    /// Stored events, whether or not they verify.
    pub event_count: usize,
    pub chain: ChainVerdict,
    pub projection: ProjectionVerdict,
    pub determinism: DeterminismVerdict,
    /// The events that parse, in stored order (all of them unless one does not
    /// parse). Payloads are whole.
    #[serde(serialize_with = "serialize_events")]
    pub events: Vec<Event>,
}

impl TaskAudit {
    /// One line saying what is wrong, or `None` when everything holds.
    pub fn problem(&self) -> Option<String> {
        match self.verdict {
            Verdict::Ok => None,
            Verdict::ChainBroken => match &self.chain {
                ChainVerdict::Broken(b) => Some(format!(
                    "hash chain broken at seq {} ({}): {}",
                    b.seq, b.kind, b.message
                )),
                ChainVerdict::Ok { .. } => None,
            },
            Verdict::ProjectionMismatch => match &self.projection {
                ProjectionVerdict::Mismatch { diffs } => {
                    let shown: Vec<String> = diffs
                        .iter()
                        .take(3)
                        .map(|d| {
                            format!("{} (stored {}, rebuilt {})", d.field, d.stored, d.rebuilt)
                        })
                        .collect();
                    let more = match diffs.len().saturating_sub(3) {
                        0 => String::new(),
                        n => format!(" and {n} more"),
                    };
                    Some(format!(
                        "derived rows differ from the history: {}{more}",
                        shown.join(", ")
                    ))
                }
                _ => None,
            },
            Verdict::ReplayFailed => match &self.determinism {
                DeterminismVerdict::NonDeterminism {
                    seq,
                    expected,
                    found,
                } => Some(format!(
                    "non-determinism at seq {seq}: the history recorded {expected}, this binary's workflow code issued {found}"
                )),
                DeterminismVerdict::NotChecked { message, .. } => Some(message.clone()),
                DeterminismVerdict::Ok => None,
            },
        }
    }
}

fn serialize_events<S: serde::Serializer>(events: &[Event], s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct EventDoc<'a> {
        seq: i64,
        #[serde(rename = "type")]
        event_type: &'static str,
        actor: &'a str,
        recorded_at_ms: i64,
        hash: &'a str,
        prev_hash: &'a str,
        payload: Value,
    }
    let mut seq = s.serialize_seq(Some(events.len()))?;
    for e in events {
        let (event_type, payload) = e.payload.to_parts();
        seq.serialize_element(&EventDoc {
            seq: e.seq,
            event_type,
            actor: &e.actor,
            recorded_at_ms: e.recorded_at_ms,
            hash: &e.hash,
            prev_hash: &e.prev_hash,
            payload,
        })?;
    }
    seq.end()
}

/// A task's stored rows, read together.
#[derive(Debug, Clone, Default)]
pub struct StoredTask {
    /// The `tasks` row; `None` when missing.
    pub row: Option<TaskRow>,
    /// The `events` rows in seq order, unverified.
    pub events: Vec<RawEvent>,
    /// The `timers` rows.
    pub timers: Vec<PendingTimer>,
    /// Whether the row, events and timers are one consistent snapshot (nothing
    /// was appended while they were read). When false, only the chain is judged.
    pub consistent: bool,
}

/// Reads a task's rows as one snapshot: the row is read before and after the
/// events and timers, and everything is read again if an append came between.
pub async fn read_task(store: &dyn Store, task_id: &str) -> Result<StoredTask, Error> {
    read_task_from(store, task_id, None).await
}

/// [`read_task`], given the row as it was read just before (by a listing), which
/// saves one query per task in a sweep; a stale row only costs a re-read.
async fn read_task_from(
    store: &dyn Store,
    task_id: &str,
    mut listed: Option<TaskRow>,
) -> Result<StoredTask, Error> {
    let key = |r: &Option<TaskRow>| {
        r.as_ref()
            .map(|r| (r.last_seq, r.last_hash.clone(), r.blocked_reason.clone()))
    };
    let mut last = StoredTask::default();
    for _ in 0..SNAPSHOT_ATTEMPTS {
        let before = match listed.take() {
            Some(row) => Some(row),
            None => store.get_task(task_id).await?,
        };
        let events = store.load_history(task_id).await?;
        let timers = store.timers(task_id).await?;
        let row = store.get_task(task_id).await?;
        if before.is_none() && row.is_none() && events.is_empty() {
            return Err(Error::TaskNotFound {
                task_id: task_id.to_string(),
            });
        }
        let consistent = key(&before) == key(&row);
        last = StoredTask {
            row,
            events,
            timers,
            consistent,
        };
        if consistent {
            break;
        }
    }
    Ok(last)
}

/// Audits one task: reads it ([`read_task`]) and judges it ([`audit_stored`]).
pub async fn audit_task(
    store: &dyn Store,
    workflows: &WorkflowRegistry,
    task_id: &str,
    options: &AuditOptions,
) -> Result<TaskAudit, Error> {
    let stored = read_task(store, task_id).await?;
    Ok(audit_stored(task_id, &stored, workflows, options))
}

/// Audits a task a listing returned (see [`read_task_from`]).
async fn audit_listed(
    store: &dyn Store,
    workflows: &WorkflowRegistry,
    row: TaskRow,
    options: &AuditOptions,
) -> Result<TaskAudit, Error> {
    let task_id = row.id.clone();
    let stored = read_task_from(store, &task_id, Some(row)).await?;
    Ok(audit_stored(&task_id, &stored, workflows, options))
}

/// Judges a task's stored rows: chain, projection, determinism. Pure.
pub fn audit_stored(
    task_id: &str,
    stored: &StoredTask,
    workflows: &WorkflowRegistry,
    options: &AuditOptions,
) -> TaskAudit {
    let row = stored.row.as_ref();
    let anchor = if stored.consistent {
        row.map(|r| r.last_seq)
    } else {
        None
    };
    // Parse what parses, even on a broken chain: the timeline still shows it.
    let parse_and_fold = || {
        let mut events = Vec::with_capacity(stored.events.len());
        let mut unparseable = None;
        for raw in &stored.events {
            match event::parse(raw) {
                Ok(e) => events.push(e),
                Err(message) => {
                    unparseable = Some(message);
                    break;
                }
            }
        }
        let state = (unparseable.is_none() && !events.is_empty()).then(|| TaskState::fold(&events));
        (events, unparseable, state)
    };
    // A long history's chain is checked on another thread while this one
    // parses and folds it (the two only read the rows); a short one's,
    // nearly all, here, where a thread would cost more than it saves.
    let (chain, (events, unparseable, state)) = if stored.events.len() >= chain::PARALLEL_FROM {
        std::thread::scope(|scope| {
            let chain = scope.spawn(|| check_chain(task_id, &stored.events, anchor));
            let parsed = parse_and_fold();
            (
                chain.join().expect("checking a chain does not panic"),
                parsed,
            )
        })
    } else {
        (
            check_chain(task_id, &stored.events, anchor),
            parse_and_fold(),
        )
    };

    let projection = match (&state, &unparseable) {
        _ if !stored.consistent => ProjectionVerdict::NotChecked {
            message: format!(
                "task {task_id} kept changing while it was read ({SNAPSHOT_ATTEMPTS} tries); run the audit again"
            ),
        },
        (Some(state), _) => {
            let diffs = compare_projection(row, &stored.timers, state);
            if diffs.is_empty() {
                ProjectionVerdict::Ok
            } else {
                ProjectionVerdict::Mismatch { diffs }
            }
        }
        (None, Some(message)) => ProjectionVerdict::NotChecked {
            message: format!("the history cannot be folded: {message}"),
        },
        (None, None) => ProjectionVerdict::NotChecked {
            message: "the history holds no event to rebuild the task from".to_string(),
        },
    };

    let determinism = if !options.check_determinism {
        DeterminismVerdict::NotChecked {
            reason: NotCheckedReason::NotRequested,
            message: "the workflow code was not re-run (not requested)".to_string(),
        }
    } else if !chain.is_ok() {
        DeterminismVerdict::NotChecked {
            reason: NotCheckedReason::ChainBroken,
            message: "the workflow code was not re-run: the chain is broken, and an untrusted history is not replayed".to_string(),
        }
    } else if let Some(message) = &unparseable {
        DeterminismVerdict::NotChecked {
            reason: NotCheckedReason::Unparseable,
            message: format!("this binary cannot read the history: {message}"),
        }
    } else {
        let state = state
            .as_ref()
            .expect("a verified, parsed history is not empty");
        match workflows.get(&state.workflow) {
            None => DeterminismVerdict::NotChecked {
                reason: NotCheckedReason::WorkflowNotRegistered,
                message: format!(
                    "workflow {:?} is not registered in this binary (it has: {}), so this binary cannot replay or advance the task",
                    state.workflow,
                    workflows.names().join(", ")
                ),
            },
            Some(wf) => match check_folded_history(wf.as_ref(), &events, state) {
                Ok(()) => DeterminismVerdict::Ok,
                Err(nd) => DeterminismVerdict::NonDeterminism {
                    seq: nd.seq,
                    expected: nd.expected,
                    found: nd.found,
                },
            },
        }
    };

    let verdict = if !chain.is_ok() {
        Verdict::ChainBroken
    } else if matches!(projection, ProjectionVerdict::Mismatch { .. }) {
        Verdict::ProjectionMismatch
    } else {
        match &determinism {
            DeterminismVerdict::NonDeterminism { .. }
            | DeterminismVerdict::NotChecked {
                reason: NotCheckedReason::Unparseable | NotCheckedReason::WorkflowNotRegistered,
                ..
            } => Verdict::ReplayFailed,
            _ => Verdict::Ok,
        }
    };

    TaskAudit {
        task_id: task_id.to_string(),
        verdict,
        workflow: state
            .as_ref()
            .map(|s| s.workflow.clone())
            .or_else(|| row.map(|r| r.workflow.clone())),
        workflow_version: state
            .as_ref()
            .map(|s| s.workflow_version)
            .or_else(|| row.map(|r| r.workflow_version)),
        status: state.as_ref().map(TaskState::status),
        stored_status: row.map(|r| r.status),
        event_count: stored.events.len(),
        chain,
        projection,
        determinism,
        events,
    }
}

#[cfg(test)]
mod tests;
