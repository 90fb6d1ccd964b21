//! The group-commit writer: one tokio task per store that owns the write path.
//!
//! Requests queue on a channel while a transaction commits; the next
//! transaction takes everything queued (up to `max_batch`). With full
//! durability (`synchronous=FULL`, `synchronous_commit=on`) a commit costs an
//! fsync, so sharing it across tasks is what makes throughput possible. If a
//! batch fails as a whole, each request is retried alone so one bad request
//! cannot fail the others.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use futures::future::BoxFuture;
use tokio::sync::{Notify, mpsc, oneshot};

use super::{AppendOutcome, AppendRequest, Error};

/// Counters of one store's writer, for benchmarks and metrics.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Transactions committed (or attempted).
    pub batches: AtomicU64,
    /// Operations they carried (appends, claims, renewals, releases).
    pub ops: AtomicU64,
    /// Time spent inside transactions, in microseconds.
    pub busy_us: AtomicU64,
}

impl WriterStats {
    /// `(batches, ops, busy_us)` at this moment.
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.batches.load(Ordering::Relaxed),
            self.ops.load(Ordering::Relaxed),
            self.busy_us.load(Ordering::Relaxed),
        )
    }
}

/// Settings of the writer.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Most operations one transaction takes.
    pub max_batch: usize,
    /// Bound of the request queue (back-pressure beyond it).
    pub queue_capacity: usize,
    /// SQLite: the WAL size, in pages, from which a commit wakes a thread of
    /// its own to copy the WAL back into the database file (a passive
    /// checkpoint, off the writer's commits); `None` leaves checkpoints to
    /// the limit below.
    pub checkpoint_from_pages: Option<u32>,
    /// SQLite: the WAL size, in pages, from which the writer runs the
    /// checkpoint itself after its commit, should the thread fall behind.
    pub wal_limit_pages: u32,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            max_batch: 1_000,
            queue_capacity: 10_000,
            // SQLite's own default for its automatic checkpoint.
            checkpoint_from_pages: Some(1_000),
            // 40 MB of 4 KiB pages.
            wal_limit_pages: 10_000,
        }
    }
}

/// An append as the writer takes it. Its events' payloads are already the
/// JSON text stored (written when they were sealed, by the appending task),
/// so the one writer thread, which every task's appends wait on, does not
/// write them.
#[derive(Debug, Clone)]
pub(crate) struct QueuedAppend {
    pub(crate) req: AppendRequest,
}

impl QueuedAppend {
    pub(crate) fn new(req: AppendRequest) -> Self {
        QueuedAppend { req }
    }
}

/// One write, as the backend sees it.
#[derive(Debug, Clone)]
pub(crate) enum WriteOp {
    Append(Box<QueuedAppend>),
    Claim {
        owner: String,
        now_ms: i64,
        lease_ms: i64,
        limit: u32,
    },
    Renew {
        owner: String,
        now_ms: i64,
        lease_ms: i64,
    },
    Release {
        task_id: String,
        owner: String,
        expected_seq: i64,
    },
    Quarantine {
        task_id: String,
        reason: String,
    },
    /// Another module's write, run inside the batch's transaction.
    Extra(Arc<dyn ExtraWrite>),
}

/// A write of another module (the evidence log, say) that runs inside the
/// writer's transaction, in queue order with the tasks' appends: it shares
/// their commit (and fsync), and on SQLite it never contends with the writer
/// for the database's one write lock (a second writer waits out SQLite's
/// busy handler, which sleeps). It must be fenced on its own state: `Ok(false)`
/// means its fence did not hold and it wrote nothing; an `Err` fails the
/// batch, whose writes are then retried one by one.
pub trait ExtraWrite: Send + Sync + std::fmt::Debug + 'static {
    fn on_sqlite<'a>(
        &'a self,
        conn: &'a mut sqlx::SqliteConnection,
    ) -> BoxFuture<'a, Result<bool, Error>>;
    fn on_postgres<'a>(
        &'a self,
        conn: &'a mut sqlx::PgConnection,
    ) -> BoxFuture<'a, Result<bool, Error>>;
    /// SQLite, run on the writer's own thread through its direct
    /// connection (rusqlite, cached statements), inside the same
    /// transaction, without handing each statement to sqlx's worker thread
    /// and back while the database's one write lock is held. `None` (the
    /// default) means this write has no such form: it must then have written
    /// nothing, and [`on_sqlite`](Self::on_sqlite) runs instead.
    fn on_sqlite_direct(&self, _conn: &rusqlite::Connection) -> Option<Result<bool, Error>> {
        None
    }
}

/// One write's result.
#[derive(Debug)]
pub(crate) enum WriteResult {
    Append(AppendOutcome),
    Claim(Vec<String>),
    Renew(Vec<(String, i64)>),
    Release(bool),
    Quarantine,
    /// Whether the extra write's fence held (and it wrote).
    Extra(bool),
}

impl WriteResult {
    fn wakes(&self) -> bool {
        matches!(self, WriteResult::Release(true))
    }
}

/// The appends among a batch's ops, in order.
pub(crate) fn appends(ops: &[WriteOp]) -> Vec<&QueuedAppend> {
    ops.iter()
        .filter_map(|op| match op {
            WriteOp::Append(r) => Some(r.as_ref()),
            _ => None,
        })
        .collect()
}

/// A batch's results: one per op and whether other workers should be woken.
pub(crate) type BatchResult = Result<(Vec<WriteResult>, bool), Error>;

/// What a backend implements: run a batch in one transaction.
pub(crate) trait BatchExecutor: Send + 'static {
    /// Runs `ops` in one transaction and hands them back (an executor may
    /// move them to a thread of its own). `Ok` holds one result per op and
    /// whether other workers should be woken; `Err` means nothing of the
    /// batch may be assumed written (or, for an ambiguous commit, that
    /// callers must reload).
    fn execute(&mut self, ops: Vec<WriteOp>) -> BoxFuture<'_, (Vec<WriteOp>, BatchResult)>;
}

type Reply = oneshot::Sender<Result<WriteResult, Error>>;

/// Handle to a running writer.
#[derive(Clone)]
pub(crate) struct Writer {
    tx: mpsc::Sender<(WriteOp, Reply)>,
    pub(crate) stats: Arc<WriterStats>,
}

impl Writer {
    pub(crate) fn spawn(
        mut exec: impl BatchExecutor,
        config: WriterConfig,
        wake: Arc<Notify>,
    ) -> Self {
        let (tx, mut rx) = mpsc::channel::<(WriteOp, Reply)>(config.queue_capacity);
        let stats = Arc::new(WriterStats::default());
        let counters = stats.clone();
        tokio::spawn(async move {
            let mut batch: Vec<(WriteOp, Reply)> = Vec::with_capacity(config.max_batch);
            loop {
                let n = rx.recv_many(&mut batch, config.max_batch).await;
                if n == 0 {
                    break;
                }
                let (ops, replies): (Vec<WriteOp>, Vec<Reply>) = batch.drain(..).unzip();
                let started = Instant::now();
                let (ops, outcome) = exec.execute(ops).await;
                counters.batches.fetch_add(1, Ordering::Relaxed);
                counters.ops.fetch_add(ops.len() as u64, Ordering::Relaxed);
                counters
                    .busy_us
                    .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                match outcome {
                    Ok((results, wake_others)) => {
                        let mut woke = wake_others;
                        for (r, reply) in results.into_iter().zip(replies) {
                            woke |= r.wakes();
                            let _ = reply.send(Ok(r));
                        }
                        if woke {
                            wake.notify_waiters();
                            wake.notify_one();
                        }
                    }
                    Err(e) if ops.len() == 1 => {
                        let _ = replies.into_iter().next().map(|r| r.send(Err(e)));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, batch = ops.len(), "group commit failed; retrying each write alone");
                        for (op, reply) in ops.into_iter().zip(replies) {
                            let r = match exec.execute(vec![op]).await.1 {
                                Ok((mut rs, w)) => {
                                    if w {
                                        wake.notify_waiters();
                                        wake.notify_one();
                                    }
                                    rs.pop().ok_or(Error::WriterStopped)
                                }
                                Err(e) => Err(e),
                            };
                            let _ = reply.send(r);
                        }
                    }
                }
            }
        });
        Self { tx, stats }
    }

    pub(crate) async fn submit(&self, op: WriteOp) -> Result<WriteResult, Error> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((op, reply))
            .await
            .map_err(|_| Error::WriterStopped)?;
        rx.await.map_err(|_| Error::WriterStopped)?
    }

    pub(crate) async fn append(&self, req: AppendRequest) -> Result<AppendOutcome, Error> {
        match self
            .submit(WriteOp::Append(Box::new(QueuedAppend::new(req))))
            .await?
        {
            WriteResult::Append(o) => Ok(o),
            other => Err(Error::Corrupt(format!(
                "writer answered an append with {other:?}"
            ))),
        }
    }

    pub(crate) async fn claim(
        &self,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
        limit: u32,
    ) -> Result<Vec<String>, Error> {
        match self
            .submit(WriteOp::Claim {
                owner: owner.to_string(),
                now_ms,
                lease_ms,
                limit,
            })
            .await?
        {
            WriteResult::Claim(v) => Ok(v),
            other => Err(Error::Corrupt(format!(
                "writer answered a claim with {other:?}"
            ))),
        }
    }

    pub(crate) async fn renew(
        &self,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Vec<(String, i64)>, Error> {
        match self
            .submit(WriteOp::Renew {
                owner: owner.to_string(),
                now_ms,
                lease_ms,
            })
            .await?
        {
            WriteResult::Renew(v) => Ok(v),
            other => Err(Error::Corrupt(format!(
                "writer answered a renewal with {other:?}"
            ))),
        }
    }

    pub(crate) async fn release(
        &self,
        task_id: &str,
        owner: &str,
        expected_seq: i64,
    ) -> Result<bool, Error> {
        match self
            .submit(WriteOp::Release {
                task_id: task_id.to_string(),
                owner: owner.to_string(),
                expected_seq,
            })
            .await?
        {
            WriteResult::Release(v) => Ok(v),
            other => Err(Error::Corrupt(format!(
                "writer answered a release with {other:?}"
            ))),
        }
    }
}

impl Writer {
    pub(crate) async fn extra(&self, write: Arc<dyn ExtraWrite>) -> Result<bool, Error> {
        match self.submit(WriteOp::Extra(write)).await? {
            WriteResult::Extra(done) => Ok(done),
            other => Err(Error::Corrupt(format!(
                "writer answered an extra write with {other:?}"
            ))),
        }
    }

    pub(crate) async fn quarantine(&self, task_id: &str, reason: &str) -> Result<(), Error> {
        match self
            .submit(WriteOp::Quarantine {
                task_id: task_id.to_string(),
                reason: reason.to_string(),
            })
            .await?
        {
            WriteResult::Quarantine => Ok(()),
            other => Err(Error::Corrupt(format!(
                "writer answered a quarantine with {other:?}"
            ))),
        }
    }
}
