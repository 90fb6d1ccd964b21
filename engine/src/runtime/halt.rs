//! The kill switch. A halt (global, or for one agent) is a row in `halts`,
//! never deleted. Drivers consult the active halts before each decision: a
//! task under a halt records a pause whose actor is `halt:<id>` (running
//! attempts finish; no new step starts). Lifting the halt resumes exactly the
//! tasks such a pause holds and no other halt still covers.
//!
//! Each process keeps the active halts in memory: refreshed at once when it
//! halts or lifts, and from the store every second by its worker (so another
//! process's halt takes effect here within about a second).

use std::sync::Arc;
use std::time::Duration;

use super::{Engine, Error, Shared};
use crate::core::decide::{HaltNotice, halt_actor};
use crate::core::event::EventPayload;
use crate::core::state::TaskStatus;
use crate::store::{HaltRow, TaskFilter, TaskRow};

/// How often a worker rereads the active halts.
pub const HALT_REFRESH: Duration = Duration::from_secs(1);

/// What lifting did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifted {
    pub halts: Vec<HaltRow>,
    /// Tasks resumed because no halt holds them any more.
    pub resumed: Vec<String>,
}

impl Shared {
    /// The halt covering a task of `agent`, if any (global halts first).
    pub(crate) fn halt_for(&self, agent: Option<&str>) -> Option<HaltNotice> {
        let halts = self.halts.read().expect("halts lock");
        halts
            .iter()
            .filter(|h| h.covers(agent))
            .min_by_key(|h| h.agent.is_some())
            .map(|h| HaltNotice {
                id: h.id.clone(),
                reason: h.reason.clone(),
            })
    }

    /// Rereads the active halts; pokes every local driver if they changed.
    pub(crate) async fn refresh_halts(&self) -> Result<(), Error> {
        let active = self
            .store
            .halts(true, crate::store::admin::MAX_PAGE)
            .await?;
        let changed = {
            let mut halts = self.halts.write().expect("halts lock");
            let changed = *halts != active;
            *halts = active;
            changed
        };
        if changed {
            for a in self.active.lock().expect("active map").values() {
                a.poke.notify_one();
            }
        }
        Ok(())
    }
}

impl Engine {
    /// Halts all work (`agent` None) or one agent's: recorded with who and why.
    pub async fn halt(
        &self,
        agent: Option<&str>,
        by: &str,
        reason: Option<String>,
    ) -> Result<HaltRow, Error> {
        let s = &self.shared;
        if let Some(a) = agent {
            s.limits
                .check_name("agent", a)
                .map_err(|message| Error::InvalidInput {
                    field: "agent".into(),
                    message,
                })?;
        }
        if reason.as_ref().is_some_and(|r| r.chars().count() > 1_000) {
            return Err(Error::InvalidInput {
                field: "reason".into(),
                message: "longer than 1000 characters".into(),
            });
        }
        let halt = HaltRow {
            id: format!("h_{}", uuid::Uuid::now_v7().simple()),
            agent: agent.map(str::to_string),
            reason,
            created_by: by.to_string(),
            created_at_ms: s.clock.now_ms(),
            lifted_by: None,
            lifted_at_ms: None,
        };
        s.store.insert_halt(halt.clone()).await?;
        s.refresh_halts().await?;
        Ok(halt)
    }

    /// Lifts the active halts of exactly this scope, then resumes the tasks
    /// their pauses hold (unless another active halt still covers them).
    pub async fn lift_halt(&self, agent: Option<&str>, by: &str) -> Result<Lifted, Error> {
        let s = &self.shared;
        let halts = s.store.lift_halts(agent, by, s.clock.now_ms()).await?;
        s.refresh_halts().await?;
        let mut resumed = Vec::new();
        if halts.is_empty() {
            return Ok(Lifted { halts, resumed });
        }
        let actors: Vec<String> = halts.iter().map(|h| halt_actor(&h.id)).collect();
        let mut before = None;
        loop {
            let page = s
                .store
                .list_tasks(TaskFilter {
                    status: Some(TaskStatus::Paused),
                    agent: agent.map(str::to_string),
                    before: before.clone(),
                    limit: 500,
                    ..Default::default()
                })
                .await?;
            let Some(last) = page.last() else { break };
            before = Some((last.created_at_ms, last.id.clone()));
            for row in &page {
                if s.halt_for(row.agent.as_deref()).is_some() {
                    continue;
                }
                let history = self.history(&row.id).await?;
                if !held_by(&history).is_some_and(|a| actors.iter().any(|x| x == a)) {
                    continue;
                }
                match self.resume(&row.id, by).await {
                    Ok(_) => resumed.push(row.id.clone()),
                    // Resumed or finished meanwhile: nothing to do.
                    Err(Error::Rejected { .. } | Error::TaskFinal { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(Lifted { halts, resumed })
    }

    /// What halts paused and still hold: for each paused task (newest
    /// first, at most `scan` read; `truncated` when more are paused) whose
    /// latest pause was recorded by one of `halts`, that halt's id and the
    /// task. Reads only; the kill-switch page lists them.
    pub async fn paused_by_halts(
        &self,
        halts: &[HaltRow],
        scan: u32,
    ) -> Result<(Vec<(String, TaskRow)>, bool), Error> {
        if halts.is_empty() {
            return Ok((Vec::new(), false));
        }
        // Only one agent's halts: only that agent's tasks can be held.
        let agent = match halts.iter().map(|h| h.agent.as_deref()).collect::<Vec<_>>()[..] {
            [Some(a), ref rest @ ..] if rest.iter().all(|r| *r == Some(a)) => Some(a.to_string()),
            _ => None,
        };
        let mut rows = self
            .shared
            .store
            .list_tasks(TaskFilter {
                status: Some(TaskStatus::Paused),
                agent,
                limit: scan.saturating_add(1),
                ..Default::default()
            })
            .await?;
        let truncated = rows.len() > scan as usize;
        rows.truncate(scan as usize);
        let mut out = Vec::new();
        for row in rows {
            let history = self.history(&row.id).await?;
            let Some(actor) = held_by(&history) else {
                continue;
            };
            if let Some(h) = halts.iter().find(|h| halt_actor(&h.id) == actor) {
                out.push((h.id.clone(), row));
            }
        }
        Ok((out, truncated))
    }

    /// The halts in force (as this process last read them from the store).
    pub fn active_halts(&self) -> Vec<HaltRow> {
        self.shared.halts.read().expect("halts lock").clone()
    }

    /// Rereads the halts in force from the store.
    pub async fn refresh_halts(&self) -> Result<Vec<HaltRow>, Error> {
        self.shared.refresh_halts().await?;
        Ok(self.active_halts())
    }
}

/// Who holds a task paused: the actor of its latest pause, unless a resume
/// came after it.
fn held_by(history: &[crate::core::event::Event]) -> Option<&str> {
    history
        .iter()
        .rev()
        .find(|e| {
            matches!(
                e.payload,
                EventPayload::TaskPaused { .. } | EventPayload::TaskResumed { .. }
            )
        })
        .filter(|e| matches!(e.payload, EventPayload::TaskPaused { .. }))
        .map(|e| e.actor.as_str())
}

/// A worker's loop that keeps the halts fresh.
pub(crate) async fn watch_halts(shared: Arc<Shared>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        if let Err(e) = shared.refresh_halts().await {
            tracing::warn!(error = %e, "reading halts failed");
        }
        if let Err(e) = shared.refresh_preapprovals().await {
            tracing::warn!(error = %e, "reading pre-approvals failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(HALT_REFRESH) => {}
            _ = super::worker::stopped(&mut stop) => return,
        }
    }
}
