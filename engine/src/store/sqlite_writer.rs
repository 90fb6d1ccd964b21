//! The SQLite writer's own thread: it runs each group-commit batch with
//! direct SQLite calls and cached prepared statements, one row per statement
//! execution, without a channel round trip per statement.
//!
//! sqlx runs every statement of a connection on that connection's worker
//! thread and hands it over a channel, and multi-row `VALUES` lists of
//! varying length must be parsed again for each batch. Here the writer's
//! thread borrows the database handle of its sqlx connection
//! ([`SqliteConnection::lock_handle`], which parks sqlx's worker while the
//! lock is held) and runs the batch on it through rusqlite. The handle stays
//! sqlx's: [`ExtraWrite`](super::ExtraWrite)s of other modules still run on
//! the sqlx connection, inside the same transaction (the lock is given back
//! for them, unless they have a direct form of their own), and the
//! connection's pragmas are the ones sqlx set.
//!
//! The tokio writer task hands a batch to this thread over a channel and
//! awaits the answer: one hand-off per batch, and the commit's fsync blocks
//! this thread, never a tokio worker.

use std::collections::HashMap;
use std::sync::mpsc;

use rusqlite::{Connection, OptionalExtension, params};
use sqlx::SqliteConnection;
use tokio::sync::oneshot;

use super::plan::{BatchPlan, Current, plan};
use super::sqlite_checkpoint::WalPolicy;
use super::writer::{BatchExecutor, BatchResult, WriteOp, WriteResult};
use super::{AppendOutcome, Error};

/// Prepared statements the writer keeps: its own dozen and those of other
/// modules' direct writes (the routing outbox's come to about 17), with room.
const STATEMENT_CACHE: usize = 64;

type Job = (Vec<WriteOp>, oneshot::Sender<(Vec<WriteOp>, BatchResult)>);

/// The [`BatchExecutor`] of a SQLite store: a handle to its writer thread.
pub(crate) struct SqliteExecutor {
    jobs: mpsc::Sender<Job>,
}

impl SqliteExecutor {
    /// Starts the writer thread on `conn` (the store's one writing
    /// connection); `wal` says what to do about the WAL after each commit.
    pub(crate) async fn start(mut conn: SqliteConnection, wal: WalPolicy) -> Result<Self, Error> {
        let direct = {
            let mut handle = conn
                .lock_handle()
                .await
                .map_err(Error::db("lock the writer connection"))?;
            // SAFETY: the handle is valid while `conn` is open. The thread
            // below owns both and drops `direct` first (`Thread`'s Drop), and
            // calls through `direct` only while it holds the connection's
            // lock, so sqlx's worker never uses the handle at the same time.
            // `from_handle` does not take ownership: dropping `direct`
            // finalizes its cached statements but never closes the handle.
            // rusqlite and sqlx link the same libsqlite3-sys (Cargo allows
            // one crate that links `sqlite3`).
            let direct = unsafe { Connection::from_handle(handle.as_raw_handle().as_ptr()) }
                .map_err(lite("wrap the writer connection"))?;
            wal.install(&direct);
            direct
        };
        direct.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let runtime = tokio::runtime::Handle::current();
        let (jobs, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("mandate-sqlite-writer".into())
            .spawn(move || {
                let mut thread = Thread {
                    direct: Some(direct),
                    conn,
                    runtime,
                    wal,
                };
                while let Ok((ops, reply)) = rx.recv() {
                    let result = thread.transaction(&ops);
                    let _ = reply.send((ops, result));
                }
            })
            .map_err(|e| Error::Corrupt(format!("cannot start the SQLite writer thread: {e}")))?;
        Ok(Self { jobs })
    }
}

impl BatchExecutor for SqliteExecutor {
    fn execute(
        &mut self,
        ops: Vec<WriteOp>,
    ) -> futures::future::BoxFuture<'_, (Vec<WriteOp>, BatchResult)> {
        Box::pin(async move {
            let (reply, answer) = oneshot::channel();
            if let Err(mpsc::SendError((ops, _))) = self.jobs.send((ops, reply)) {
                return (ops, Err(Error::WriterStopped));
            }
            match answer.await {
                Ok(done) => done,
                // The thread panicked mid-batch: its transaction was never
                // committed, and the ops went with it.
                Err(_) => (Vec::new(), Err(Error::WriterStopped)),
            }
        })
    }
}

/// Runs `f` on a rusqlite view of `conn`'s database handle while sqlx's worker
/// is parked: for reads that would otherwise cross sqlx's channel once per
/// row. Blocking: call it off the async threads (`spawn_blocking`).
pub(crate) fn with_direct<R>(
    conn: &mut SqliteConnection,
    f: impl FnOnce(&Connection) -> Result<R, Error>,
) -> Result<R, Error> {
    let mut lock = futures::executor::block_on(conn.lock_handle())
        .map_err(Error::db("lock a read connection"))?;
    // SAFETY: the handle is valid while `conn` is open, which outlives this
    // call; `lock` parks sqlx's worker until after `direct` is dropped (its
    // statements finalized), and `from_handle` never closes the handle.
    let direct = unsafe { Connection::from_handle(lock.as_raw_handle().as_ptr()) }
        .map_err(lite("wrap a read connection"))?;
    let result = f(&direct);
    drop(direct);
    drop(lock);
    result
}

/// Maps a rusqlite error with what was being done.
pub(crate) fn lite(during: &'static str) -> impl FnOnce(rusqlite::Error) -> Error {
    move |source| Error::Sqlite { during, source }
}

struct Thread {
    /// The sqlx connection's handle, seen through rusqlite; used only while
    /// the connection's lock is held. `None` once dropped.
    direct: Option<Connection>,
    conn: SqliteConnection,
    /// For other modules' writes, which are futures on the sqlx connection.
    runtime: tokio::runtime::Handle,
    wal: WalPolicy,
}

impl Drop for Thread {
    fn drop(&mut self) {
        let Some(direct) = self.direct.take() else {
            return;
        };
        // Finalize the cached statements while the handle is open and sqlx's
        // worker is parked; if the worker is gone the handle may be too, and
        // leaking the statements is the safe choice.
        match futures::executor::block_on(self.conn.lock_handle()) {
            Ok(_lock) => drop(direct),
            Err(_) => std::mem::forget(direct),
        }
    }
}

/// Runs `f` while holding the connection's lock (sqlx's worker parked).
fn locked<R>(conn: &mut SqliteConnection, f: impl FnOnce() -> R) -> Result<R, Error> {
    let _lock = futures::executor::block_on(conn.lock_handle())
        .map_err(Error::db("lock the writer connection"))?;
    Ok(f())
}

fn exec(c: &Connection, sql: &str, during: &'static str) -> Result<(), Error> {
    c.prepare_cached(sql)
        .and_then(|mut s| s.execute([]))
        .map_err(lite(during))?;
    Ok(())
}

impl Thread {
    /// Runs `ops` in one transaction.
    fn transaction(&mut self, ops: &[WriteOp]) -> BatchResult {
        let Thread {
            direct,
            conn,
            runtime,
            wal,
        } = self;
        let direct = direct.as_ref().ok_or(Error::WriterStopped)?;
        let result = run(direct, conn, runtime, ops);
        locked(conn, || {
            let end = match &result {
                Ok(_) => exec(direct, "COMMIT", "commit"),
                Err(_) => Ok(()),
            };
            if result.is_err() || end.is_err() {
                // Also ends a transaction an error left open; without one
                // it fails harmlessly.
                let _ = direct.execute_batch("ROLLBACK");
            } else {
                wal.after_commit(direct);
            }
            end
        })??;
        result
    }
}

/// The batch's statements, from `BEGIN IMMEDIATE` up to the commit. Runs of
/// the engine's own ops, and other modules' writes that have a direct form
/// ([`ExtraWrite::on_sqlite_direct`](super::ExtraWrite::on_sqlite_direct)),
/// share one lock; the other modules' writes without one run on the sqlx
/// connection between them.
fn run(
    direct: &Connection,
    conn: &mut SqliteConnection,
    runtime: &tokio::runtime::Handle,
    ops: &[WriteOp],
) -> BatchResult {
    let mut results = Vec::with_capacity(ops.len());
    let mut outcomes = Vec::new().into_iter();
    let mut wake = false;
    let mut at = 0;
    loop {
        let begin = at == 0;
        // Up to the first op that must run on the sqlx connection.
        let through_sqlx = locked(conn, || -> Result<Option<(usize, _)>, Error> {
            if begin {
                exec(direct, "BEGIN IMMEDIATE", "begin")?;
                let (o, w) = append_all(direct, ops)?;
                outcomes = o.into_iter();
                wake = w;
            }
            for (i, op) in ops.iter().enumerate().skip(at) {
                results.push(match op {
                    WriteOp::Append(_) => WriteResult::Append(
                        outcomes
                            .next()
                            .unwrap_or(AppendOutcome::Conflict { actual_seq: None }),
                    ),
                    WriteOp::Extra(write) => match write.on_sqlite_direct(direct) {
                        Some(done) => WriteResult::Extra(done?),
                        None => return Ok(Some((i, write))),
                    },
                    other => other_op(direct, other)?,
                });
            }
            Ok(None)
        })??;
        let Some((i, write)) = through_sqlx else {
            break;
        };
        results.push(WriteResult::Extra(runtime.block_on(write.on_sqlite(conn))?));
        at = i + 1;
    }
    Ok((results, wake))
}

/// Fences and writes every append of the batch; one outcome per append, in
/// order.
fn append_all(c: &Connection, ops: &[WriteOp]) -> Result<(Vec<AppendOutcome>, bool), Error> {
    let appends = super::writer::appends(ops);
    if appends.is_empty() {
        return Ok((Vec::new(), false));
    }
    let mut current = HashMap::with_capacity(appends.len());
    {
        let mut fence = c
            .prepare_cached("SELECT last_seq, lease_owner FROM tasks WHERE id = ?1")
            .map_err(lite("fence check"))?;
        for r in appends.iter().map(|q| &q.req) {
            if current.contains_key(&r.task_id) {
                continue;
            }
            let row = fence
                .query_row([&r.task_id], |row| {
                    Ok(Current {
                        last_seq: row.get(0)?,
                        lease_owner: row.get(1)?,
                    })
                })
                .optional()
                .map_err(lite("fence check"))?;
            if let Some(row) = row {
                current.insert(r.task_id.clone(), row);
            }
        }
    }
    let mut existing_keys = HashMap::new();
    {
        let mut keys = None;
        for key in appends
            .iter()
            .filter_map(|r| r.req.create.as_ref()?.idempotency_key.as_deref())
        {
            let stmt = match &mut keys {
                Some(s) => s,
                None => keys.insert(
                    c.prepare_cached("SELECT id FROM tasks WHERE idempotency_key = ?1")
                        .map_err(lite("idempotency check"))?,
                ),
            };
            if let Some(id) = stmt
                .query_row([key], |row| row.get::<_, String>(0))
                .optional()
                .map_err(lite("idempotency check"))?
            {
                existing_keys.insert(key.to_string(), id);
            }
        }
    }
    let planned = plan(&appends, current, &existing_keys);
    write_plan(c, &planned)?;
    Ok((planned.outcomes, planned.wake))
}

fn write_plan(c: &Connection, p: &BatchPlan<'_>) -> Result<(), Error> {
    if !p.events.is_empty() {
        // The global order: numbers taken inside this transaction, so commit
        // order and gseq order agree.
        let head: i64 = c
            .prepare_cached("UPDATE event_log SET head = head + ?1 WHERE id = 1 RETURNING head")
            .and_then(|mut s| s.query_row([p.events.len() as i64], |r| r.get(0)))
            .map_err(lite("take global event numbers"))?;
        let mut gseq = head - p.events.len() as i64;
        let mut insert = c
            .prepare_cached(
                "INSERT INTO events (task_id, seq, event_type, recorded_at_ms, actor, payload, prev_hash, hash, gseq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .map_err(lite("insert events"))?;
        for (e, payload) in &p.events {
            gseq += 1;
            insert
                .execute(params![
                    e.task_id,
                    e.seq,
                    e.event_type,
                    e.recorded_at_ms,
                    e.actor,
                    payload,
                    e.prev_hash,
                    e.hash,
                    gseq
                ])
                .map_err(lite("insert events"))?;
        }
    }
    if !p.tasks.is_empty() {
        let mut upsert = c
            .prepare_cached(
                "INSERT INTO tasks (id, workflow, workflow_version, agent, idempotency_key, status, last_seq, last_hash,
                                    created_at_ms, updated_at_ms, ready_at_ms, lease_owner, blocked_reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
                 ON CONFLICT (id) DO UPDATE SET
                    status = excluded.status, last_seq = excluded.last_seq, last_hash = excluded.last_hash,
                    updated_at_ms = excluded.updated_at_ms, ready_at_ms = excluded.ready_at_ms,
                    blocked_reason = excluded.blocked_reason,
                    lease_owner = CASE WHEN excluded.lease_owner IS NOT NULL AND tasks.lease_owner = excluded.lease_owner
                                       THEN NULL ELSE tasks.lease_owner END",
            )
            .map_err(lite("upsert task rows"))?;
        for t in &p.tasks {
            let c = t.create;
            upsert
                .execute(params![
                    t.id,
                    c.map(|c| c.workflow.as_str()).unwrap_or_default(),
                    c.map(|c| c.workflow_version as i64).unwrap_or_default(),
                    c.and_then(|c| c.agent.as_deref()),
                    c.and_then(|c| c.idempotency_key.as_deref()),
                    t.status,
                    t.last_seq,
                    t.last_hash,
                    c.map(|c| c.created_at_ms).unwrap_or(t.updated_at_ms),
                    t.updated_at_ms,
                    t.ready_at_ms,
                    // A created task may start leased (eager start); on update
                    // the column carries the releasing owner (see ON CONFLICT).
                    match c {
                        Some(c) => c.lease_owner.as_deref(),
                        None => t.release_owner,
                    },
                    t.blocked_reason,
                ])
                .map_err(lite("upsert task rows"))?;
        }
    }
    if !p.timers.is_empty() {
        let mut delete = c
            .prepare_cached("DELETE FROM timers WHERE task_id = ?1")
            .map_err(lite("replace timers"))?;
        let mut insert = c
            .prepare_cached(
                "INSERT INTO timers (task_id, seq, fire_at_ms, kind) VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(lite("insert timers"))?;
        for (id, timers) in &p.timers {
            delete.execute([id]).map_err(lite("replace timers"))?;
            for t in timers.iter() {
                insert
                    .execute(params![id, t.seq, t.fire_at_ms, t.kind.as_str()])
                    .map_err(lite("insert timers"))?;
            }
        }
    }
    Ok(())
}

/// A claim, renewal, release or quarantine.
fn other_op(c: &Connection, op: &WriteOp) -> Result<WriteResult, Error> {
    Ok(match op {
        WriteOp::Claim {
            owner,
            now_ms,
            lease_ms,
            limit,
        } => {
            heartbeat(c, owner, now_ms + lease_ms)?;
            // Free ready tasks first (an index holds only those), then the
            // ready tasks of workers whose lease expired (crashed or stalled).
            let mut ids = ids_of(
                c,
                "UPDATE tasks SET lease_owner = ?1
                 WHERE id IN (SELECT id FROM tasks
                              WHERE ready_at_ms IS NOT NULL AND lease_owner IS NULL AND ready_at_ms <= ?2
                              ORDER BY ready_at_ms LIMIT ?3)
                 RETURNING id",
                (owner, now_ms, *limit as i64),
                "claim",
            )?;
            if (ids.len() as u32) < *limit {
                let rest = *limit as i64 - ids.len() as i64;
                ids.extend(ids_of(
                    c,
                    "UPDATE tasks SET lease_owner = ?1
                     WHERE id IN (SELECT t.id FROM workers w JOIN tasks t ON t.lease_owner = w.id
                                  WHERE w.lease_expires_at_ms < ?2 AND w.id <> ?1
                                    AND t.ready_at_ms IS NOT NULL AND t.ready_at_ms <= ?2
                                  LIMIT ?3)
                     RETURNING id",
                    (owner, now_ms, rest),
                    "claim expired leases",
                )?);
            }
            WriteResult::Claim(ids)
        }
        WriteOp::Renew {
            owner,
            now_ms,
            lease_ms,
        } => {
            // One row per worker: renewal costs the same for 1 or 100,000 tasks.
            heartbeat(c, owner, now_ms + lease_ms)?;
            // Bounded growth: forget workers long dead that hold nothing.
            c.prepare_cached(
                "DELETE FROM workers WHERE lease_expires_at_ms < ?1
                 AND NOT EXISTS (SELECT 1 FROM tasks WHERE tasks.lease_owner = workers.id)",
            )
            .and_then(|mut s| s.execute([now_ms - 86_400_000]))
            .map_err(lite("forget dead workers"))?;
            let mut held = c
                .prepare_cached("SELECT id, last_seq FROM tasks WHERE lease_owner = ?1")
                .map_err(lite("lease renewal"))?;
            let rows = held
                .query_map([owner], |r| Ok((r.get(0)?, r.get(1)?)))
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(lite("lease renewal"))?;
            WriteResult::Renew(rows)
        }
        WriteOp::Release {
            task_id,
            owner,
            expected_seq,
        } => {
            let n = c
                .prepare_cached(
                    "UPDATE tasks SET lease_owner = NULL
                     WHERE id = ?1 AND lease_owner = ?2 AND last_seq = ?3",
                )
                .and_then(|mut s| s.execute(params![task_id, owner, expected_seq]))
                .map_err(lite("lease release"))?;
            WriteResult::Release(n == 1)
        }
        WriteOp::Quarantine { task_id, reason } => {
            c.prepare_cached(
                "UPDATE tasks SET ready_at_ms = NULL, lease_owner = NULL, blocked_reason = ?1
                 WHERE id = ?2",
            )
            .and_then(|mut s| s.execute([reason, task_id]))
            .map_err(lite("quarantine"))?;
            WriteResult::Quarantine
        }
        WriteOp::Append(_) | WriteOp::Extra(_) => {
            return Err(Error::Corrupt(
                "the SQLite writer was handed an append or extra write as another op".into(),
            ));
        }
    })
}

/// Runs an `UPDATE … RETURNING id` and collects the ids.
fn ids_of(
    c: &Connection,
    sql: &str,
    args: (&String, &i64, i64),
    during: &'static str,
) -> Result<Vec<String>, Error> {
    let mut stmt = c.prepare_cached(sql).map_err(lite(during))?;
    stmt.query_map(params![args.0, args.1, args.2], |r| r.get(0))
        .and_then(|rows| rows.collect())
        .map_err(lite(during))
}

/// Extends (or first records) a worker's lease.
fn heartbeat(c: &Connection, owner: &str, expires_at_ms: i64) -> Result<(), Error> {
    c.prepare_cached(
        "INSERT INTO workers (id, lease_expires_at_ms) VALUES (?1, ?2)
         ON CONFLICT (id) DO UPDATE SET lease_expires_at_ms = excluded.lease_expires_at_ms",
    )
    .and_then(|mut s| s.execute(params![owner, expires_at_ms]))
    .map_err(lite("worker heartbeat"))?;
    Ok(())
}
