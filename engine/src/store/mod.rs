//! Storage: one trait, two backends (SQLite, PostgreSQL), and the group-commit
//! writer they share.
//!
//! Every write goes through [`writer`]: appends from many tasks, claims, lease
//! renewals and releases queue up while a transaction commits and the next
//! transaction takes them all (group commit). An append names the seq it
//! expects; a stale writer gets [`AppendOutcome::Conflict`] and nothing of its
//! request is written. A worker's append also names the lease it holds; once
//! another worker has taken the task over it gets [`AppendOutcome::LeaseLost`]. Derived rows (task status, work queue, timers) are
//! written in the same transaction as the events they derive from.
//!
//! Never decides anything: what to append is `core`'s business.

pub mod admin;
pub mod governance;
mod plan;
pub mod postgres;
pub mod sqlite;
mod sqlite_checkpoint;
mod sqlite_writer;
pub(crate) mod writer;

use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::sync::Notify;

use crate::core::chain::{RawEvent, SealedEvent};
use crate::core::decide::Projection;
use crate::core::state::{PendingTimer, TaskStatus};

pub use admin::{GlobalEvent, HaltRow, TokenRow};
pub use writer::{ExtraWrite, WriterConfig, WriterStats};

/// Storage failures (not rejections: a conflict is an [`AppendOutcome`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "database URL {url:?} is not usable: {reason}. Use sqlite://PATH (e.g. sqlite://mandate.db) or postgres://USER@HOST:PORT/DB"
    )]
    BadUrl { url: String, reason: String },
    #[error("cannot connect to {backend} database {url}: {source}")]
    Connect {
        backend: &'static str,
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("migrating the {backend} schema failed: {source}")]
    Migrate {
        backend: &'static str,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    #[error("database error during {during}: {source}")]
    Database {
        during: &'static str,
        #[source]
        source: sqlx::Error,
    },
    /// From the SQLite writer's direct statements (`store::sqlite_writer`).
    #[error("database error during {during}: {source}")]
    Sqlite {
        during: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("the store's writer has stopped (the process is shutting down)")]
    WriterStopped,
}

impl Error {
    /// Wraps a database error with what was being done (for [`ExtraWrite`]s too).
    pub fn db(during: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
        move |source| Error::Database { during, source }
    }
}

/// Which database a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

/// Columns written when a task is created (expected seq 0).
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    pub workflow: String,
    pub workflow_version: u32,
    pub agent: Option<String>,
    pub idempotency_key: Option<String>,
    pub created_at_ms: i64,
    /// Created already held by a local worker that starts it at once (eager
    /// start), instead of waiting for a claim. The worker's lease row must exist.
    pub lease_owner: Option<String>,
}

/// What an append does to the appender's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseUpdate {
    /// Leave the lease as it is, whoever holds it (external appends: a
    /// signal, a cancel, a submission).
    Keep,
    /// A worker that keeps going: appended only if `owner` holds the lease,
    /// else [`AppendOutcome::LeaseLost`] and nothing is written.
    Hold { owner: String },
    /// A worker going idle: appended only if `owner` holds the lease (as
    /// `Hold`), which is then given back to the queue.
    Release { owner: String },
}

impl LeaseUpdate {
    /// The worker that must hold the lease for the append to pass.
    pub fn holder(&self) -> Option<&str> {
        match self {
            LeaseUpdate::Keep => None,
            LeaseUpdate::Hold { owner } | LeaseUpdate::Release { owner } => Some(owner),
        }
    }
}

/// One fenced append: events sealed into the chain plus the rows derived from them.
#[derive(Debug, Clone)]
pub struct AppendRequest {
    pub task_id: String,
    /// The task's current last seq as the appender saw it; 0 creates the task.
    pub expected_seq: i64,
    pub events: Vec<SealedEvent>,
    pub projection: Projection,
    /// `Some` when the pending timers changed (the rows are replaced).
    pub timers: Option<Vec<PendingTimer>>,
    pub create: Option<NewTask>,
    pub lease: LeaseUpdate,
    /// Tell idle workers (here and in other processes) to look for work.
    pub wake: bool,
}

/// How an append ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    Appended,
    /// The fence held: the task's last seq was not the expected one. Nothing written.
    Conflict {
        actual_seq: Option<i64>,
    },
    /// The appending worker no longer holds the task's lease (it stalled
    /// past it and another worker took the task over, or an append whose
    /// commit was reported failed gave it back). Nothing written: the
    /// worker must stop driving the task.
    LeaseLost {
        holder: Option<String>,
    },
    /// A task with this idempotency key exists already. Nothing written.
    DuplicateIdempotencyKey {
        existing_task_id: String,
    },
}

/// The derived row of one task.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRow {
    pub id: String,
    pub workflow: String,
    pub workflow_version: u32,
    pub agent: Option<String>,
    pub idempotency_key: Option<String>,
    pub status: TaskStatus,
    pub last_seq: i64,
    pub last_hash: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub ready_at_ms: Option<i64>,
    pub lease_owner: Option<String>,
    pub lease_expires_at_ms: Option<i64>,
    pub blocked_reason: Option<String>,
}

/// Filters for [`Store::list_tasks`]; newest first.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub status: Option<TaskStatus>,
    pub workflow: Option<String>,
    pub agent: Option<String>,
    /// Only tasks created at or after this time.
    pub since_ms: Option<i64>,
    /// Keyset pagination: only tasks created before this `(created_at_ms, id)`.
    pub before: Option<(i64, String)>,
    pub limit: u32,
}

/// The store contract both backends pass (see `tests/` for the shared suite).
pub trait Store: Send + Sync + 'static {
    fn backend(&self) -> Backend;
    /// Appends through the group-commit writer.
    fn append(&self, request: AppendRequest) -> BoxFuture<'_, Result<AppendOutcome, Error>>;
    /// The whole history of a task in seq order, unverified (empty if unknown).
    fn load_history(&self, task_id: &str) -> BoxFuture<'_, Result<Vec<RawEvent>, Error>>;
    /// At most `limit` events of a task with seq > `after_seq`, in seq order,
    /// unverified: one page of a history, read without the rest.
    fn load_history_page(
        &self,
        task_id: &str,
        after_seq: i64,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<RawEvent>, Error>> {
        let task_id = task_id.to_string();
        Box::pin(async move {
            let mut all = self.load_history(&task_id).await?;
            all.retain(|e| e.seq > after_seq);
            all.truncate(limit as usize);
            Ok(all)
        })
    }
    fn get_task(&self, task_id: &str) -> BoxFuture<'_, Result<Option<TaskRow>, Error>>;
    fn find_by_idempotency_key(&self, key: &str) -> BoxFuture<'_, Result<Option<TaskRow>, Error>>;
    fn list_tasks(&self, filter: TaskFilter) -> BoxFuture<'_, Result<Vec<TaskRow>, Error>>;
    /// Number of tasks per status.
    fn count_by_status(&self) -> BoxFuture<'_, Result<Vec<(TaskStatus, i64)>, Error>>;
    /// The derived timer rows of a task.
    fn timers(&self, task_id: &str) -> BoxFuture<'_, Result<Vec<PendingTimer>, Error>>;
    /// Leases up to `limit` ready tasks whose lease is free or expired.
    fn claim(
        &self,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<String>, Error>>;
    /// Extends every lease `owner` holds; returns `(task_id, last_seq)` of each.
    fn renew(
        &self,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> BoxFuture<'_, Result<Vec<(String, i64)>, Error>>;
    /// Frees a lease if the owner still holds it and nothing was appended since `expected_seq`.
    fn release(
        &self,
        task_id: &str,
        owner: &str,
        expected_seq: i64,
    ) -> BoxFuture<'_, Result<bool, Error>>;
    /// Takes a task out of the queue without appending (its history cannot be
    /// trusted or parsed): the reason is kept in `blocked_reason`.
    fn quarantine(&self, task_id: &str, reason: &str) -> BoxFuture<'_, Result<(), Error>>;
    /// The earliest `ready_at_ms` of a task nobody holds (for an idle worker's sleep).
    fn next_ready_at(&self) -> BoxFuture<'_, Result<Option<i64>, Error>>;
    /// Notified after commits that may have made work available (here, and on
    /// PostgreSQL in other processes too, through LISTEN/NOTIFY).
    fn wakeups(&self) -> Arc<Notify>;
    /// The group-commit writer's counters.
    fn writer_stats(&self) -> Arc<WriterStats>;

    /// Events of all tasks (of `agent`'s tasks only, of one `task` only, if
    /// given) numbered after `after_gseq`, in commit order; at most `limit`
    /// (capped at [`admin::MAX_PAGE`]).
    fn events_after(
        &self,
        after_gseq: i64,
        agent: Option<&str>,
        task: Option<&str>,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<GlobalEvent>, Error>>;
    /// Events of one type numbered in `(after_gseq, upto_gseq]`, in commit
    /// order, at most `limit` (capped at [`admin::MAX_PAGE`]): what a
    /// follower interested in one kind of event reads, without carrying the
    /// others' payloads out of the database.
    fn events_of_type_between(
        &self,
        after_gseq: i64,
        upto_gseq: i64,
        event_type: &str,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<GlobalEvent>, Error>>;
    /// The highest global event number handed out.
    fn event_head(&self) -> BoxFuture<'_, Result<i64, Error>>;
    /// Tasks whose work is due now (the work queue's depth).
    fn queue_depth(&self, now_ms: i64) -> BoxFuture<'_, Result<i64, Error>>;
    /// Stores a token; false if its name is taken (nothing written).
    fn insert_token(&self, token: TokenRow) -> BoxFuture<'_, Result<bool, Error>>;
    /// The token whose secret hashes to `secret_sha256`, revoked or not.
    fn token_by_secret(
        &self,
        secret_sha256: &str,
    ) -> BoxFuture<'_, Result<Option<TokenRow>, Error>>;
    fn list_tokens(&self) -> BoxFuture<'_, Result<Vec<TokenRow>, Error>>;
    /// Revokes the live token named `name`; false if there is none.
    fn revoke_token(&self, name: &str, at_ms: i64) -> BoxFuture<'_, Result<bool, Error>>;
    /// Records a halt.
    fn insert_halt(&self, halt: HaltRow) -> BoxFuture<'_, Result<(), Error>>;
    /// Lifts the active halts of exactly this scope (`None`: the global ones);
    /// returns them as lifted.
    fn lift_halts(
        &self,
        agent: Option<&str>,
        by: &str,
        at_ms: i64,
    ) -> BoxFuture<'_, Result<Vec<HaltRow>, Error>>;
    /// Halts, newest first (only the active ones if `active_only`).
    fn halts(&self, active_only: bool, limit: u32) -> BoxFuture<'_, Result<Vec<HaltRow>, Error>>;
    /// Records a pre-approval grant.
    fn insert_preapproval(
        &self,
        preapproval: crate::core::gateway::Preapproval,
    ) -> BoxFuture<'_, Result<(), Error>>;
    /// Revokes a live pre-approval; `None` if there is none with that id.
    fn revoke_preapproval(
        &self,
        id: &str,
        by: &str,
        at_ms: i64,
    ) -> BoxFuture<'_, Result<Option<crate::core::gateway::Preapproval>, Error>>;
    /// Pre-approvals, newest first: those in force at `live_at_ms` (neither
    /// expired nor revoked), or all.
    fn preapprovals(
        &self,
        live_at_ms: Option<i64>,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<crate::core::gateway::Preapproval>, Error>>;
    /// The evidence log's tables on this database (`engine::evidence`).
    fn evidence_log(&self) -> crate::evidence::Log;
    /// Runs another module's write inside the group-commit writer's next
    /// transaction (see [`ExtraWrite`]); true if its fence held.
    fn write_extra(&self, write: Arc<dyn ExtraWrite>) -> BoxFuture<'_, Result<bool, Error>>;
}

/// Opens the store a URL names: `sqlite://PATH` (created on first use) or `postgres://…`.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, Error> {
    open_with(url, WriterConfig::default()).await
}

/// [`open`] with writer settings.
pub async fn open_with(url: &str, config: WriterConfig) -> Result<Arc<dyn Store>, Error> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::open(url, config).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PgStore::open(url, config).await?))
    } else {
        Err(Error::BadUrl {
            url: url.to_string(),
            reason: "unknown scheme".to_string(),
        })
    }
}

/// Result sets at least this long are decoded on several threads (each
/// row's payload JSON is parsed on its own); shorter ones, nearly all, on
/// the caller's.
pub const PARALLEL_DECODE_FROM: usize = 2_048;

/// Threads a long history's rows (or hashes) are worked on: the machine's
/// parallelism, at most four.
pub(crate) fn decode_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4)
}

/// Decodes `rows` in order with `decode`: on up to four threads for a long
/// history. The first error in row order is the one returned, as when
/// decoding one row after another.
pub(crate) fn decode_rows<R, T, F>(rows: &[R], decode: F) -> Result<Vec<T>, Error>
where
    R: Sync,
    T: Send,
    F: Fn(&R) -> Result<T, Error> + Sync,
{
    let threads = decode_threads();
    if rows.len() < PARALLEL_DECODE_FROM || threads < 2 {
        return rows.iter().map(decode).collect();
    }
    let per = rows.len().div_ceil(threads);
    let decode = &decode;
    std::thread::scope(|scope| {
        let parts: Vec<_> = rows
            .chunks(per)
            .map(|part| {
                scope.spawn(move || part.iter().map(decode).collect::<Result<Vec<T>, Error>>())
            })
            .collect();
        let mut out = Vec::with_capacity(rows.len());
        for part in parts {
            out.extend(part.join().expect("decoding a row does not panic")?);
        }
        Ok(out)
    })
}

/// Rows in each part [`decode_while_reading`] hands to a decoding thread.
const DECODE_CHUNK: usize = 512;

/// Reads rows with `next` (on this thread: a cursor is not `Send`) and
/// decodes them in order with `decode`. A long result's rows are decoded on
/// other threads while the rest are read, in parts of [`DECODE_CHUNK`]; this
/// thread joins the decoding once it has read the last row. Short results
/// (under [`PARALLEL_DECODE_FROM`]), nearly all, are decoded here. The first
/// error in row order is the one returned, as [`decode_rows`] returns it; a
/// read error is returned at once.
pub(crate) fn decode_while_reading<R, T, N, F>(mut next: N, decode: F) -> Result<Vec<T>, Error>
where
    R: Send,
    T: Send,
    N: FnMut() -> Result<Option<R>, Error>,
    F: Fn(R) -> Result<T, Error> + Sync,
{
    let mut head = Vec::new();
    while head.len() < PARALLEL_DECODE_FROM {
        match next()? {
            Some(r) => head.push(r),
            None => return head.into_iter().map(&decode).collect(),
        }
    }
    let helpers = decode_threads() - 1;
    if helpers == 0 {
        while let Some(r) = next()? {
            head.push(r);
        }
        return head.into_iter().map(&decode).collect();
    }
    // Parts go out numbered, and come back numbered, in any order.
    type Part<R> = (usize, Vec<R>);
    type Decoded<T> = (usize, Result<Vec<T>, Error>);
    let (tx, rx) = std::sync::mpsc::channel::<Part<R>>();
    let rx = std::sync::Mutex::new(rx);
    let done: std::sync::Mutex<Vec<Decoded<T>>> = Default::default();
    let work = || {
        loop {
            // The lock is held only to take a part, not to decode it.
            let part = rx.lock().expect("decode queue").recv();
            let Ok((index, rows)) = part else { return };
            let decoded = rows.into_iter().map(&decode).collect();
            done.lock().expect("decoded parts").push((index, decoded));
        }
    };
    std::thread::scope(|scope| {
        for _ in 0..helpers {
            scope.spawn(work);
        }
        let mut parts = 0;
        let mut send = |rows: Vec<R>| {
            // The helpers outlive the sender: a send cannot fail.
            let _ = tx.send((parts, rows));
            parts += 1;
        };
        // The rows read already go out first, then the rest as they come.
        let mut head = head.into_iter();
        let mut part = Vec::with_capacity(DECODE_CHUNK);
        let read = loop {
            let row = match head.next() {
                Some(r) => Ok(Some(r)),
                None => next(),
            };
            match row {
                Ok(Some(r)) => {
                    part.push(r);
                    if part.len() == DECODE_CHUNK {
                        send(std::mem::replace(
                            &mut part,
                            Vec::with_capacity(DECODE_CHUNK),
                        ));
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        if !part.is_empty() {
            send(part);
        }
        drop(tx);
        work();
        read
    })?;
    let mut parts = done.into_inner().expect("decoded parts");
    parts.sort_unstable_by_key(|(index, _)| *index);
    let mut out = Vec::new();
    for (_, decoded) in parts {
        out.extend(decoded?);
    }
    Ok(out)
}

pub(crate) fn status_from_db(s: &str) -> Result<TaskStatus, Error> {
    TaskStatus::parse(s)
        .ok_or_else(|| Error::Corrupt(format!("unknown task status {s:?} in tasks table")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows `0..n` read one by one; decoding row `i` gives `i * 2`, or an
    /// error naming `i` where `bad` says so.
    fn run(n: usize, bad: impl Fn(usize) -> bool + Sync) -> Result<Vec<usize>, Error> {
        let mut rows = 0..n;
        decode_while_reading(
            || Ok(rows.next()),
            |i| {
                if bad(i) {
                    Err(Error::Corrupt(format!("row {i}")))
                } else {
                    Ok(i * 2)
                }
            },
        )
    }

    #[test]
    fn rows_decoded_while_reading_keep_their_order() {
        for n in [
            0,
            1,
            PARALLEL_DECODE_FROM - 1,
            PARALLEL_DECODE_FROM,
            PARALLEL_DECODE_FROM + 1,
            PARALLEL_DECODE_FROM + DECODE_CHUNK * 7 + 3,
        ] {
            let out = run(n, |_| false).unwrap();
            assert_eq!(out, (0..n).map(|i| i * 2).collect::<Vec<_>>(), "{n} rows");
        }
    }

    #[test]
    fn the_first_bad_row_in_row_order_is_the_error() {
        let n = PARALLEL_DECODE_FROM + DECODE_CHUNK * 7;
        // A bad row early in the last part and one late in the first.
        let e = run(n, |i| i == n - DECODE_CHUNK + 1 || i == DECODE_CHUNK - 1).unwrap_err();
        assert_eq!(
            e.to_string(),
            Error::Corrupt(format!("row {}", DECODE_CHUNK - 1)).to_string()
        );
        let e = run(n, |i| i == n - 1).unwrap_err();
        assert_eq!(
            e.to_string(),
            Error::Corrupt(format!("row {}", n - 1)).to_string()
        );
        let e = run(10, |i| i == 3).unwrap_err();
        assert_eq!(e.to_string(), Error::Corrupt("row 3".into()).to_string());
    }

    #[test]
    fn a_read_error_is_returned() {
        for fail_at in [5, PARALLEL_DECODE_FROM + DECODE_CHUNK + 2] {
            let mut read = 0;
            let r = decode_while_reading(
                || {
                    read += 1;
                    if read == fail_at {
                        Err(Error::Corrupt("the cursor broke".into()))
                    } else {
                        Ok(Some(read))
                    }
                },
                Ok,
            );
            assert_eq!(
                r.unwrap_err().to_string(),
                Error::Corrupt("the cursor broke".into()).to_string()
            );
        }
    }
}
