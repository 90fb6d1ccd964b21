//! The follower: a background tokio task that appends the leaf of every
//! event to the log in global order, outside the append transaction, and
//! signs a checkpoint every N leaves or T seconds when it holds a key.
//!
//! It resumes from the stored size (no rebuild on start). Events are read by
//! gseq; gseq order is commit order (migration 0003), so a gap is never
//! transient: it means an event was removed before the log took it, and the
//! follower stops there (logging it) rather than shift every later leaf.
//! Several processes may follow one database: each append is fenced on the
//! stored size, and the loser reloads.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::log::{AppendError, CheckpointRow, Log};
use super::merkle::Frontier;
use super::note::{Checkpoint, SignerKey};
use crate::runtime::Engine;
use crate::store::Error;

/// Leaves appended per transaction at most.
pub const BATCH: u32 = 1_000;

/// How the follower runs.
#[derive(Debug, Clone)]
pub struct FollowerConfig {
    /// Signs checkpoints when set.
    pub key: Option<SignerKey>,
    /// A checkpoint once this many leaves were added since the last one…
    pub every_events: u64,
    /// …or once this long has passed since it and a leaf was added.
    pub every: Duration,
    /// How often to look for new events when there were none.
    pub poll: Duration,
    /// Where each checkpoint is also written: `<size>.checkpoint` and `latest`.
    pub dir: Option<PathBuf>,
}

impl Default for FollowerConfig {
    fn default() -> Self {
        Self {
            key: None,
            every_events: 1_000,
            every: Duration::from_secs(60),
            poll: Duration::from_millis(500),
            dir: None,
        }
    }
}

/// What the follower has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Leaves in the log.
    pub size: u64,
    /// The size of the newest checkpoint this follower knows of.
    pub checkpoint_size: u64,
}

/// A running follower.
pub struct Follower {
    stop: watch::Sender<bool>,
    progress: watch::Receiver<Progress>,
    join: JoinHandle<()>,
}

impl Follower {
    /// Starts following `engine`'s store.
    pub fn spawn(engine: &Engine, config: FollowerConfig) -> Follower {
        let (stop, stop_rx) = watch::channel(false);
        let (tx, progress) = watch::channel(Progress::default());
        let engine = engine.clone();
        let join = tokio::spawn(async move { run(engine, config, stop_rx, tx).await });
        Follower {
            stop,
            progress,
            join,
        }
    }

    /// Changes as the log grows and checkpoints are signed.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }

    /// Waits until `pred` holds of the progress, or `timeout` passes.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&Progress) -> bool,
    ) -> Result<Progress, String> {
        let mut rx = self.progress.clone();
        match tokio::time::timeout(timeout, rx.wait_for(|p| pred(p))).await {
            Ok(Ok(p)) => Ok(*p),
            Ok(Err(_)) => Err("the evidence follower stopped".into()),
            Err(_) => Err(format!(
                "the evidence follower did not get there within {timeout:?} (at {:?})",
                *self.progress.borrow()
            )),
        }
    }

    /// Stops after the current step.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.join.await;
    }
}

struct State {
    log: Log,
    frontier: Frontier,
    last_cp: Option<(u64, i64)>,
    gap_reported: Option<i64>,
}

async fn run(
    engine: Engine,
    config: FollowerConfig,
    mut stop: watch::Receiver<bool>,
    progress: watch::Sender<Progress>,
) {
    let log = engine.store().evidence_log();
    let mut state = None;
    let mut backoff = config.poll;
    loop {
        let step = async {
            let st = match state.as_mut() {
                Some(st) => st,
                None => state.insert(load(&log).await?),
            };
            let more = step(st, &engine, &config).await?;
            progress.send_replace(Progress {
                size: st.frontier.size(),
                checkpoint_size: st.last_cp.map(|(s, _)| s).unwrap_or(0),
            });
            Ok::<bool, Error>(more)
        };
        let wait = match step.await {
            Ok(true) => Duration::ZERO,
            Ok(false) => {
                backoff = config.poll;
                config.poll
            }
            Err(e) => {
                tracing::warn!(error = %e, "evidence log: will retry");
                state = None;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                backoff
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if *stop.borrow() {
            return;
        }
    }
}

async fn load(log: &Log) -> Result<State, Error> {
    Ok(State {
        frontier: log.frontier().await?,
        last_cp: log
            .checkpoint(None)
            .await?
            .map(|c| (c.size, c.issued_at_ms)),
        log: log.clone(),
        gap_reported: None,
    })
}

/// Appends one batch and signs a checkpoint if one is due; true if there may be more.
async fn step(st: &mut State, engine: &Engine, config: &FollowerConfig) -> Result<bool, Error> {
    let size = st.frontier.size();
    let events = st.log.leaves_after(size as i64, BATCH).await?;
    let mut leaves = Vec::with_capacity(events.len());
    for (i, (gseq, leaf)) in events.into_iter().enumerate() {
        let want = size as i64 + 1 + i as i64;
        if gseq != want {
            if st.gap_reported != Some(want) {
                tracing::error!(
                    gseq = want,
                    next = gseq,
                    "evidence log: the event numbered {want} is missing (deleted before it was logged?); \
                     the log stops here until it is back"
                );
                st.gap_reported = Some(want);
            }
            break;
        }
        leaves.push(leaf);
    }
    let full = leaves.len() == BATCH as usize;
    if !leaves.is_empty() {
        match st.log.append(&mut st.frontier, &leaves).await {
            Ok(()) => {}
            Err(AppendError::Moved(_)) => {
                st.frontier = st.log.frontier().await?;
                return Ok(true);
            }
            Err(AppendError::Store(e)) => return Err(e),
        }
    }
    if let Some(key) = &config.key {
        let now = engine.now_ms();
        let size = st.frontier.size();
        let (last_size, last_at) = st.last_cp.unwrap_or((0, i64::MIN / 2));
        let due = size > last_size
            && (size - last_size >= config.every_events
                || now.saturating_sub(last_at) >= config.every.as_millis() as i64);
        if due {
            let cp = Checkpoint {
                origin: key.name().to_string(),
                size,
                root: st.frontier.root(),
                time_ms: Some(now),
            };
            let note = cp.sign(key).map_err(|e| Error::Corrupt(e.to_string()))?;
            if let Some(dir) = &config.dir {
                write_checkpoint(dir, size, &note).await;
            }
            st.log
                .insert_checkpoint(&CheckpointRow {
                    size,
                    root: hex::encode(cp.root),
                    issued_at_ms: now,
                    key_id: key.verifier().id(),
                    note,
                })
                .await?;
            st.last_cp = Some((size, now));
        }
    }
    Ok(full)
}

/// Writes `<size>.checkpoint` and replaces `latest`, each atomically.
async fn write_checkpoint(dir: &std::path::Path, size: u64, note: &str) {
    for name in [format!("{size}.checkpoint"), "latest".to_string()] {
        let tmp = dir.join(format!(".{name}.tmp"));
        let path = dir.join(&name);
        let done = async {
            tokio::fs::write(&tmp, note).await?;
            tokio::fs::rename(&tmp, &path).await
        };
        if let Err(e) = done.await {
            tracing::error!(path = %path.display(), error = %e, "cannot write a checkpoint file");
        }
    }
}
