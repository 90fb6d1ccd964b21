//! Audits every task of a selection in bounded memory: tasks are listed a page
//! at a time with a keyset cursor (`TaskFilter::before`), a few are audited at
//! once, and only a verdict per task leaves this module (the first
//! [`MAX_LISTED_BAD`] bad ones are kept, the rest only counted).
//!
//! A live database may change under a sweep: a task that changes status
//! between two pages may be seen twice or not at all, and each task is judged
//! on a consistent snapshot of its own rows (see [`super::read_task`]).

use futures::StreamExt;
use serde::Serialize;

use super::{AuditOptions, Error, Verdict, audit_listed};
use crate::core::state::TaskStatus;
use crate::core::workflow::WorkflowRegistry;
use crate::store::{Store, TaskFilter};

/// How many bad tasks a summary lists; the rest are counted.
pub const MAX_LISTED_BAD: usize = 100;

/// Which tasks a sweep looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// Every task.
    All,
    /// Tasks not in a final status (what a new deploy must be able to replay).
    InFlight,
    /// Tasks whose stored status is this one.
    Status(TaskStatus),
}

impl Selection {
    /// The statuses to list, one keyset scan each (`None`: all in one scan).
    fn statuses(self) -> Vec<Option<TaskStatus>> {
        match self {
            Self::All => vec![None],
            Self::InFlight => TaskStatus::ALL
                .into_iter()
                .filter(|s| !s.is_final())
                .map(Some)
                .collect(),
            Self::Status(s) => vec![Some(s)],
        }
    }
}

/// How a sweep runs.
#[derive(Debug, Clone)]
pub struct SweepOptions {
    pub selection: Selection,
    /// Only tasks created at or after this time.
    pub since_ms: Option<i64>,
    pub audit: AuditOptions,
    /// Tasks listed per query.
    pub page_size: u32,
    /// Tasks audited at once.
    pub concurrency: usize,
}

impl Default for SweepOptions {
    fn default() -> Self {
        Self {
            selection: Selection::All,
            since_ms: None,
            audit: AuditOptions::default(),
            page_size: 500,
            concurrency: 8,
        }
    }
}

/// The verdict on one task of a sweep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskVerdict {
    pub task_id: String,
    /// The status in the task's row when it was listed.
    pub stored_status: TaskStatus,
    pub verdict: Verdict,
    /// What is wrong, in one line (`None` when the task is fine).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// What a sweep found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SweepSummary {
    pub checked: u64,
    pub ok: u64,
    pub chain_broken: u64,
    pub projection_mismatch: u64,
    pub replay_failed: u64,
    /// Tasks listed that were gone when audited (never expected: tasks are not deleted).
    pub vanished: u64,
    /// Every bad task.
    pub bad_total: u64,
    /// The first [`MAX_LISTED_BAD`] bad tasks, in the order they were found.
    pub bad: Vec<TaskVerdict>,
}

impl SweepSummary {
    /// The most serious verdict found (`Ok` when none is bad).
    pub fn worst(&self) -> Verdict {
        if self.chain_broken > 0 {
            Verdict::ChainBroken
        } else if self.projection_mismatch > 0 {
            Verdict::ProjectionMismatch
        } else if self.replay_failed > 0 {
            Verdict::ReplayFailed
        } else {
            Verdict::Ok
        }
    }

    fn record(&mut self, v: &TaskVerdict) {
        self.checked += 1;
        match v.verdict {
            Verdict::Ok => self.ok += 1,
            Verdict::ChainBroken => self.chain_broken += 1,
            Verdict::ProjectionMismatch => self.projection_mismatch += 1,
            Verdict::ReplayFailed => self.replay_failed += 1,
        }
        if v.verdict != Verdict::Ok {
            self.bad_total += 1;
            if self.bad.len() < MAX_LISTED_BAD {
                self.bad.push(v.clone());
            }
        }
    }
}

/// How many tasks the selection holds (ignoring `since_ms`): a progress bar's length.
pub async fn count_selected(store: &dyn Store, selection: Selection) -> Result<u64, Error> {
    let wanted = selection.statuses();
    Ok(store
        .count_by_status()
        .await?
        .into_iter()
        .filter(|(s, _)| wanted.contains(&None) || wanted.contains(&Some(*s)))
        .map(|(_, n)| n.max(0) as u64)
        .sum())
}

/// Audits every selected task; `on_task` sees each verdict as it is made (for
/// progress). Store failures stop the sweep; findings never do.
pub async fn sweep(
    store: &dyn Store,
    workflows: &WorkflowRegistry,
    options: &SweepOptions,
    on_task: &mut (dyn FnMut(&TaskVerdict) + Send),
) -> Result<SweepSummary, Error> {
    let mut summary = SweepSummary::default();
    let page_size = options.page_size.clamp(1, 10_000);
    for status in options.selection.statuses() {
        let mut before = None;
        loop {
            let page = store
                .list_tasks(TaskFilter {
                    status,
                    since_ms: options.since_ms,
                    before: before.clone(),
                    limit: page_size,
                    ..TaskFilter::default()
                })
                .await?;
            let Some(last) = page.last() else { break };
            before = Some((last.created_at_ms, last.id.clone()));
            let full = page.len() as u32 >= page_size;
            let verdicts: Vec<Result<Option<TaskVerdict>, Error>> =
                futures::stream::iter(page.into_iter().map(|row| async move {
                    let stored_status = row.status;
                    match audit_listed(store, workflows, row, &options.audit).await {
                        Ok(audit) => Ok(Some(TaskVerdict {
                            problem: audit.problem(),
                            task_id: audit.task_id,
                            stored_status,
                            verdict: audit.verdict,
                        })),
                        Err(Error::TaskNotFound { .. }) => Ok(None),
                        Err(e) => Err(e),
                    }
                }))
                .buffered(options.concurrency.max(1))
                .collect()
                .await;
            for v in verdicts {
                match v? {
                    Some(v) => {
                        summary.record(&v);
                        on_task(&v);
                    }
                    None => summary.vanished += 1,
                }
            }
            if !full {
                break;
            }
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(id: usize, verdict: Verdict) -> TaskVerdict {
        TaskVerdict {
            task_id: format!("t{id}"),
            stored_status: TaskStatus::Running,
            verdict,
            problem: (verdict != Verdict::Ok).then(|| "bad".to_string()),
        }
    }

    #[test]
    fn summaries_count_everything_and_list_a_bounded_few() {
        let mut s = SweepSummary::default();
        for i in 0..250 {
            let v = match i % 5 {
                0 => Verdict::ChainBroken,
                1 => Verdict::ProjectionMismatch,
                2 => Verdict::ReplayFailed,
                _ => Verdict::Ok,
            };
            s.record(&verdict(i, v));
        }
        assert_eq!(
            (
                s.checked,
                s.ok,
                s.chain_broken,
                s.projection_mismatch,
                s.replay_failed
            ),
            (250, 100, 50, 50, 50)
        );
        assert_eq!(s.bad_total, 150);
        assert_eq!(s.bad.len(), MAX_LISTED_BAD);
        assert_eq!(s.bad[0].task_id, "t0");
        assert_eq!(s.worst(), Verdict::ChainBroken);
        assert_eq!(SweepSummary::default().worst(), Verdict::Ok);
    }

    #[test]
    fn in_flight_means_every_status_that_is_not_final() {
        let statuses = Selection::InFlight.statuses();
        assert_eq!(statuses.len(), 7);
        assert!(statuses.iter().all(|s| !s.unwrap().is_final()));
        assert_eq!(Selection::All.statuses(), [None]);
    }
}
