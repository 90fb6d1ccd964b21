//! The SQLite store: the embedded default. WAL, `synchronous=FULL`; one writer
//! connection owned by the group-commit writer (SQLite has one writer anyway, so
//! every write — appends, claims, renewals — goes through it and never waits on
//! SQLite's busy handler), and a small pool for reads.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, QueryBuilder, Row, Sqlite, SqlitePool};
use tokio::sync::Notify;

use super::plan::{BatchPlan, Current, plan};
use super::writer::{BatchExecutor, WriteOp, WriteResult, Writer};
use super::{
    AppendOutcome, AppendRequest, Backend, Error, Store, TaskFilter, TaskRow, WriterConfig,
    status_from_db,
};
use crate::core::chain::RawEvent;
use crate::core::state::{PendingTimer, TaskStatus};

/// Rows per multi-row statement (well under SQLite's 32,766 bound parameters).
const ROWS_PER_STATEMENT: usize = 500;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

pub struct SqliteStore {
    pool: SqlitePool,
    writer: Writer,
    wake: Arc<Notify>,
}

fn options(url: &str) -> Result<SqliteConnectOptions, Error> {
    Ok(SqliteConnectOptions::from_str(url)
        .map_err(|e| Error::BadUrl {
            url: url.to_string(),
            reason: e.to_string(),
        })?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(false))
}

/// Creates a missing database file readable by its owner only (0600): it
/// holds every task's input and output and the token hashes. SQLite gives
/// its `-wal` and `-shm` companions the mode of the database file. An
/// existing file keeps its mode.
fn create_private(url: &str, opts: &SqliteConnectOptions) -> Result<(), Error> {
    let path = opts.get_filename();
    if path.as_os_str().is_empty() || path.as_os_str() == ":memory:" {
        return Ok(());
    }
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
    match open.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::BadUrl {
            url: url.to_string(),
            reason: format!("cannot create the database file {}: {e}", path.display()),
        }),
    }
}

impl SqliteStore {
    /// Opens (creating if missing, mode 0600) and migrates the database at `url`.
    pub async fn open(url: &str, config: WriterConfig) -> Result<Self, Error> {
        let opts = options(url)?;
        create_private(url, &opts)?;
        let connect_err = |source| Error::Connect {
            backend: "sqlite",
            url: url.to_string(),
            source,
        };
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts.clone())
            .await
            .map_err(connect_err)?;
        MIGRATOR.run(&pool).await.map_err(|source| Error::Migrate {
            backend: "sqlite",
            source,
        })?;
        let conn = SqliteConnection::connect_with(&opts)
            .await
            .map_err(|source| Error::Connect {
                backend: "sqlite",
                url: url.to_string(),
                source,
            })?;
        let wake = Arc::new(Notify::new());
        let writer = Writer::spawn(SqliteExecutor { conn }, config, wake.clone());
        Ok(Self { pool, writer, wake })
    }

    /// The read pool (for tools that keep their state in the same database).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

struct SqliteExecutor {
    conn: SqliteConnection,
}

impl BatchExecutor for SqliteExecutor {
    fn execute<'a>(
        &'a mut self,
        ops: &'a [WriteOp],
    ) -> BoxFuture<'a, Result<(Vec<WriteResult>, bool), Error>> {
        Box::pin(async move {
            let conn = &mut self.conn;
            sqlx::query("BEGIN IMMEDIATE")
                .execute(&mut *conn)
                .await
                .map_err(Error::db("begin"))?;
            match run_batch(conn, ops).await {
                Ok(r) => match sqlx::query("COMMIT").execute(&mut *conn).await {
                    Ok(_) => Ok(r),
                    Err(e) => {
                        let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                        Err(Error::db("commit")(e))
                    }
                },
                Err(e) => {
                    let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                    Err(e)
                }
            }
        })
    }
}

async fn run_batch(
    conn: &mut SqliteConnection,
    ops: &[WriteOp],
) -> Result<(Vec<WriteResult>, bool), Error> {
    let appends: Vec<&AppendRequest> = ops
        .iter()
        .filter_map(|op| match op {
            WriteOp::Append(r) => Some(r.as_ref()),
            _ => None,
        })
        .collect();
    let mut plan_out = BatchPlan::default();
    if !appends.is_empty() {
        let mut ids: Vec<&str> = appends.iter().map(|r| r.task_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut current = HashMap::new();
        for chunk in ids.chunks(ROWS_PER_STATEMENT) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "SELECT id, last_seq, lease_owner FROM tasks WHERE id IN (",
            );
            let mut sep = qb.separated(", ");
            for id in chunk {
                sep.push_bind(*id);
            }
            qb.push(")");
            for row in qb
                .build()
                .fetch_all(&mut *conn)
                .await
                .map_err(Error::db("fence check"))?
            {
                current.insert(
                    row.get::<String, _>(0),
                    Current {
                        last_seq: row.get(1),
                        lease_owner: row.get(2),
                    },
                );
            }
        }
        let keys: Vec<&str> = appends
            .iter()
            .filter_map(|r| r.create.as_ref()?.idempotency_key.as_deref())
            .collect();
        let mut existing_keys = HashMap::new();
        for chunk in keys.chunks(ROWS_PER_STATEMENT) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "SELECT idempotency_key, id FROM tasks WHERE idempotency_key IN (",
            );
            let mut sep = qb.separated(", ");
            for k in chunk {
                sep.push_bind(*k);
            }
            qb.push(")");
            for row in qb
                .build()
                .fetch_all(&mut *conn)
                .await
                .map_err(Error::db("idempotency check"))?
            {
                existing_keys.insert(row.get::<String, _>(0), row.get::<String, _>(1));
            }
        }
        plan_out = plan(&appends, current, &existing_keys);
        write_plan(conn, &plan_out).await?;
    }
    let mut outcomes = plan_out.outcomes.into_iter();
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        let r = match op {
            WriteOp::Append(_) => WriteResult::Append(
                outcomes
                    .next()
                    .unwrap_or(AppendOutcome::Conflict { actual_seq: None }),
            ),
            WriteOp::Claim {
                owner,
                now_ms,
                lease_ms,
                limit,
            } => {
                heartbeat(conn, owner, now_ms + lease_ms).await?;
                // Free ready tasks first (an index holds only those), then the
                // ready tasks of workers whose lease expired (crashed or stalled).
                let mut ids: Vec<String> = sqlx::query(
                    "UPDATE tasks SET lease_owner = ?1
                     WHERE id IN (SELECT id FROM tasks
                                  WHERE ready_at_ms IS NOT NULL AND lease_owner IS NULL AND ready_at_ms <= ?2
                                  ORDER BY ready_at_ms LIMIT ?3)
                     RETURNING id",
                )
                .bind(owner)
                .bind(now_ms)
                .bind(*limit as i64)
                .fetch_all(&mut *conn)
                .await
                .map_err(Error::db("claim"))?
                .iter()
                .map(|r| r.get(0))
                .collect();
                if (ids.len() as u32) < *limit {
                    let rest = *limit as i64 - ids.len() as i64;
                    let orphans = sqlx::query(
                        "UPDATE tasks SET lease_owner = ?1
                         WHERE id IN (SELECT t.id FROM workers w JOIN tasks t ON t.lease_owner = w.id
                                      WHERE w.lease_expires_at_ms < ?2 AND w.id <> ?1
                                        AND t.ready_at_ms IS NOT NULL AND t.ready_at_ms <= ?2
                                      LIMIT ?3)
                         RETURNING id",
                    )
                    .bind(owner)
                    .bind(now_ms)
                    .bind(rest)
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(Error::db("claim expired leases"))?;
                    ids.extend(orphans.iter().map(|r| r.get::<String, _>(0)));
                }
                WriteResult::Claim(ids)
            }
            WriteOp::Renew {
                owner,
                now_ms,
                lease_ms,
            } => {
                // One row per worker: renewal costs the same for 1 or 100,000 tasks.
                heartbeat(conn, owner, now_ms + lease_ms).await?;
                // Bounded growth: forget workers long dead that hold nothing.
                sqlx::query(
                    "DELETE FROM workers WHERE lease_expires_at_ms < ?1
                     AND NOT EXISTS (SELECT 1 FROM tasks WHERE tasks.lease_owner = workers.id)",
                )
                .bind(now_ms - 86_400_000)
                .execute(&mut *conn)
                .await
                .map_err(Error::db("forget dead workers"))?;
                let rows = sqlx::query("SELECT id, last_seq FROM tasks WHERE lease_owner = ?1")
                    .bind(owner)
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(Error::db("lease renewal"))?;
                WriteResult::Renew(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
            }
            WriteOp::Release {
                task_id,
                owner,
                expected_seq,
            } => {
                let done = sqlx::query(
                    "UPDATE tasks SET lease_owner = NULL
                     WHERE id = ?1 AND lease_owner = ?2 AND last_seq = ?3",
                )
                .bind(task_id)
                .bind(owner)
                .bind(expected_seq)
                .execute(&mut *conn)
                .await
                .map_err(Error::db("lease release"))?;
                WriteResult::Release(done.rows_affected() == 1)
            }
            WriteOp::Quarantine { task_id, reason } => {
                sqlx::query(
                    "UPDATE tasks SET ready_at_ms = NULL, lease_owner = NULL, blocked_reason = ?1
                     WHERE id = ?2",
                )
                .bind(reason)
                .bind(task_id)
                .execute(&mut *conn)
                .await
                .map_err(Error::db("quarantine"))?;
                WriteResult::Quarantine
            }
            WriteOp::Extra(write) => WriteResult::Extra(write.on_sqlite(&mut *conn).await?),
        };
        results.push(r);
    }
    Ok((results, plan_out.wake))
}

async fn write_plan(conn: &mut SqliteConnection, p: &BatchPlan<'_>) -> Result<(), Error> {
    let mut gseq = if p.events.is_empty() {
        0
    } else {
        // The global order: numbers taken inside this transaction, so commit
        // order and gseq order agree.
        let head: i64 =
            sqlx::query_scalar("UPDATE event_log SET head = head + ?1 WHERE id = 1 RETURNING head")
                .bind(p.events.len() as i64)
                .fetch_one(&mut *conn)
                .await
                .map_err(Error::db("take global event numbers"))?;
        head - p.events.len() as i64
    };
    for chunk in p.events.chunks(ROWS_PER_STATEMENT) {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO events (task_id, seq, event_type, recorded_at_ms, actor, payload, prev_hash, hash, gseq) ",
        );
        qb.push_values(chunk, |mut b, e| {
            gseq += 1;
            b.push_bind(e.task_id.as_str())
                .push_bind(e.seq)
                .push_bind(e.event_type.as_str())
                .push_bind(e.recorded_at_ms)
                .push_bind(e.actor.as_str())
                .push_bind(e.payload.to_string())
                .push_bind(e.prev_hash.as_str())
                .push_bind(e.hash.as_str())
                .push_bind(gseq);
        });
        qb.build()
            .execute(&mut *conn)
            .await
            .map_err(Error::db("insert events"))?;
    }
    for chunk in p.tasks.chunks(ROWS_PER_STATEMENT) {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO tasks (id, workflow, workflow_version, agent, idempotency_key, status, last_seq, last_hash,
                                created_at_ms, updated_at_ms, ready_at_ms, lease_owner, blocked_reason) ",
        );
        qb.push_values(chunk, |mut b, t| {
            let c = t.create;
            b.push_bind(t.id)
                .push_bind(c.map(|c| c.workflow.as_str()).unwrap_or_default())
                .push_bind(c.map(|c| c.workflow_version as i64).unwrap_or_default())
                .push_bind(c.and_then(|c| c.agent.as_deref()))
                .push_bind(c.and_then(|c| c.idempotency_key.as_deref()))
                .push_bind(t.status)
                .push_bind(t.last_seq)
                .push_bind(t.last_hash)
                .push_bind(c.map(|c| c.created_at_ms).unwrap_or(t.updated_at_ms))
                .push_bind(t.updated_at_ms)
                .push_bind(t.ready_at_ms)
                // A created task may start leased (eager start); on update the
                // column carries the releasing owner (see the ON CONFLICT clause).
                .push_bind(match c {
                    Some(c) => c.lease_owner.as_deref(),
                    None => t.release_owner,
                })
                .push_bind(t.blocked_reason);
        });
        qb.push(
            " ON CONFLICT (id) DO UPDATE SET
                status = excluded.status, last_seq = excluded.last_seq, last_hash = excluded.last_hash,
                updated_at_ms = excluded.updated_at_ms, ready_at_ms = excluded.ready_at_ms,
                blocked_reason = excluded.blocked_reason,
                lease_owner = CASE WHEN excluded.lease_owner IS NOT NULL AND tasks.lease_owner = excluded.lease_owner
                                   THEN NULL ELSE tasks.lease_owner END",
        );
        qb.build()
            .execute(&mut *conn)
            .await
            .map_err(Error::db("upsert task rows"))?;
    }
    if !p.timers.is_empty() {
        for chunk in p.timers.chunks(ROWS_PER_STATEMENT) {
            let mut qb = QueryBuilder::<Sqlite>::new("DELETE FROM timers WHERE task_id IN (");
            let mut sep = qb.separated(", ");
            for (id, _) in chunk {
                sep.push_bind(*id);
            }
            qb.push(")");
            qb.build()
                .execute(&mut *conn)
                .await
                .map_err(Error::db("replace timers"))?;
        }
        let rows: Vec<(&str, &PendingTimer)> = p
            .timers
            .iter()
            .flat_map(|(id, ts)| ts.iter().map(move |t| (*id, t)))
            .collect();
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut qb =
                QueryBuilder::<Sqlite>::new("INSERT INTO timers (task_id, seq, fire_at_ms, kind) ");
            qb.push_values(chunk, |mut b, (id, t)| {
                b.push_bind(*id)
                    .push_bind(t.seq)
                    .push_bind(t.fire_at_ms)
                    .push_bind(t.kind.as_str());
            });
            qb.build()
                .execute(&mut *conn)
                .await
                .map_err(Error::db("insert timers"))?;
        }
    }
    Ok(())
}

pub(crate) const TASK_SELECT_COLUMNS: &str = "id, workflow, workflow_version, agent, idempotency_key, status, last_seq, last_hash, created_at_ms, updated_at_ms, ready_at_ms, lease_owner, (SELECT w.lease_expires_at_ms FROM workers w WHERE w.id = tasks.lease_owner) AS lease_expires_at_ms, blocked_reason";

pub(crate) fn task_from_row<R>(r: &R) -> Result<TaskRow, Error>
where
    R: Row,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    String: for<'d> sqlx::Decode<'d, R::Database> + sqlx::Type<R::Database>,
    i64: for<'d> sqlx::Decode<'d, R::Database> + sqlx::Type<R::Database>,
{
    let get_err = |e: sqlx::Error| Error::Corrupt(format!("tasks row: {e}"));
    Ok(TaskRow {
        id: r.try_get("id").map_err(get_err)?,
        workflow: r.try_get("workflow").map_err(get_err)?,
        workflow_version: r.try_get::<i64, _>("workflow_version").map_err(get_err)? as u32,
        agent: r.try_get("agent").map_err(get_err)?,
        idempotency_key: r.try_get("idempotency_key").map_err(get_err)?,
        status: status_from_db(&r.try_get::<String, _>("status").map_err(get_err)?)?,
        last_seq: r.try_get("last_seq").map_err(get_err)?,
        last_hash: r.try_get("last_hash").map_err(get_err)?,
        created_at_ms: r.try_get("created_at_ms").map_err(get_err)?,
        updated_at_ms: r.try_get("updated_at_ms").map_err(get_err)?,
        ready_at_ms: r.try_get("ready_at_ms").map_err(get_err)?,
        lease_owner: r.try_get("lease_owner").map_err(get_err)?,
        lease_expires_at_ms: r.try_get("lease_expires_at_ms").map_err(get_err)?,
        blocked_reason: r.try_get("blocked_reason").map_err(get_err)?,
    })
}

pub(crate) fn event_from_row<R>(task_id: &str, r: &R) -> Result<RawEvent, Error>
where
    R: Row,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    String: for<'d> sqlx::Decode<'d, R::Database> + sqlx::Type<R::Database>,
    i64: for<'d> sqlx::Decode<'d, R::Database> + sqlx::Type<R::Database>,
{
    let get_err = |e: sqlx::Error| Error::Corrupt(format!("events row of task {task_id}: {e}"));
    let seq: i64 = r.try_get("seq").map_err(get_err)?;
    let payload: String = r.try_get("payload").map_err(get_err)?;
    Ok(RawEvent {
        task_id: task_id.to_string(),
        seq,
        event_type: r.try_get("event_type").map_err(get_err)?,
        recorded_at_ms: r.try_get("recorded_at_ms").map_err(get_err)?,
        actor: r.try_get("actor").map_err(get_err)?,
        payload: serde_json::from_str(&payload).map_err(|e| {
            Error::Corrupt(format!(
                "task {task_id} event seq {seq}: payload is not JSON: {e}"
            ))
        })?,
        prev_hash: r.try_get("prev_hash").map_err(get_err)?,
        hash: r.try_get("hash").map_err(get_err)?,
    })
}

impl Store for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    fn append(&self, request: AppendRequest) -> BoxFuture<'_, Result<AppendOutcome, Error>> {
        Box::pin(self.writer.append(request))
    }

    fn load_history(&self, task_id: &str) -> BoxFuture<'_, Result<Vec<RawEvent>, Error>> {
        let task_id = task_id.to_string();
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT seq, event_type, recorded_at_ms, actor, payload, prev_hash, hash
                 FROM events WHERE task_id = ?1 ORDER BY seq",
            )
            .bind(&task_id)
            .fetch_all(&self.pool)
            .await
            .map_err(Error::db("load history"))?;
            super::decode_rows(&rows, |r| event_from_row(&task_id, r))
        })
    }

    fn load_history_page(
        &self,
        task_id: &str,
        after_seq: i64,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<RawEvent>, Error>> {
        let task_id = task_id.to_string();
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT seq, event_type, recorded_at_ms, actor, payload, prev_hash, hash
                 FROM events WHERE task_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )
            .bind(&task_id)
            .bind(after_seq)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(Error::db("load a history page"))?;
            rows.iter().map(|r| event_from_row(&task_id, r)).collect()
        })
    }

    fn get_task(&self, task_id: &str) -> BoxFuture<'_, Result<Option<TaskRow>, Error>> {
        let task_id = task_id.to_string();
        Box::pin(async move {
            let mut qb = QueryBuilder::<Sqlite>::new("SELECT ");
            qb.push(TASK_SELECT_COLUMNS)
                .push(" FROM tasks WHERE id = ")
                .push_bind(&task_id);
            let row = qb
                .build()
                .fetch_optional(&self.pool)
                .await
                .map_err(Error::db("get task"))?;
            row.as_ref().map(task_from_row).transpose()
        })
    }

    fn find_by_idempotency_key(&self, key: &str) -> BoxFuture<'_, Result<Option<TaskRow>, Error>> {
        let key = key.to_string();
        Box::pin(async move {
            let mut qb = QueryBuilder::<Sqlite>::new("SELECT ");
            qb.push(TASK_SELECT_COLUMNS)
                .push(" FROM tasks WHERE idempotency_key = ")
                .push_bind(&key);
            let row = qb
                .build()
                .fetch_optional(&self.pool)
                .await
                .map_err(Error::db("find task by idempotency key"))?;
            row.as_ref().map(task_from_row).transpose()
        })
    }

    fn list_tasks(&self, filter: TaskFilter) -> BoxFuture<'_, Result<Vec<TaskRow>, Error>> {
        Box::pin(async move {
            let mut qb = QueryBuilder::<Sqlite>::new("SELECT ");
            qb.push(TASK_SELECT_COLUMNS).push(" FROM tasks WHERE 1 = 1");
            push_task_filter(&mut qb, &filter);
            let rows = qb
                .build()
                .fetch_all(&self.pool)
                .await
                .map_err(Error::db("list tasks"))?;
            rows.iter().map(task_from_row).collect()
        })
    }

    fn count_by_status(&self) -> BoxFuture<'_, Result<Vec<(TaskStatus, i64)>, Error>> {
        Box::pin(async move {
            let rows =
                sqlx::query("SELECT status, COUNT(*) FROM tasks GROUP BY status ORDER BY status")
                    .fetch_all(&self.pool)
                    .await
                    .map_err(Error::db("count tasks"))?;
            rows.iter()
                .map(|r| Ok((status_from_db(&r.get::<String, _>(0))?, r.get(1))))
                .collect()
        })
    }

    fn timers(&self, task_id: &str) -> BoxFuture<'_, Result<Vec<PendingTimer>, Error>> {
        let task_id = task_id.to_string();
        Box::pin(async move {
            let rows = sqlx::query("SELECT seq, fire_at_ms, kind FROM timers WHERE task_id = ?1 ORDER BY fire_at_ms, seq")
                .bind(&task_id)
                .fetch_all(&self.pool)
                .await
                .map_err(Error::db("load timers"))?;
            rows.iter()
                .map(|r| timer_from_parts(r.get(0), r.get(1), &r.get::<String, _>(2)))
                .collect()
        })
    }

    fn claim(
        &self,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<String>, Error>> {
        let owner = owner.to_string();
        Box::pin(async move { self.writer.claim(&owner, now_ms, lease_ms, limit).await })
    }

    fn renew(
        &self,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> BoxFuture<'_, Result<Vec<(String, i64)>, Error>> {
        let owner = owner.to_string();
        Box::pin(async move { self.writer.renew(&owner, now_ms, lease_ms).await })
    }

    fn release(
        &self,
        task_id: &str,
        owner: &str,
        expected_seq: i64,
    ) -> BoxFuture<'_, Result<bool, Error>> {
        let (task_id, owner) = (task_id.to_string(), owner.to_string());
        Box::pin(async move { self.writer.release(&task_id, &owner, expected_seq).await })
    }

    fn quarantine(&self, task_id: &str, reason: &str) -> BoxFuture<'_, Result<(), Error>> {
        let (task_id, reason) = (task_id.to_string(), reason.to_string());
        Box::pin(async move { self.writer.quarantine(&task_id, &reason).await })
    }

    fn next_ready_at(&self) -> BoxFuture<'_, Result<Option<i64>, Error>> {
        Box::pin(async move {
            let row = sqlx::query("SELECT MIN(ready_at_ms) FROM tasks WHERE ready_at_ms IS NOT NULL AND lease_owner IS NULL")
                .fetch_one(&self.pool)
                .await
                .map_err(Error::db("next ready time"))?;
            Ok(row.get::<Option<i64>, _>(0))
        })
    }

    fn wakeups(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    fn writer_stats(&self) -> Arc<super::WriterStats> {
        self.writer.stats.clone()
    }

    super::admin::admin_methods!();
    super::governance::governance_methods!();

    fn evidence_log(&self) -> crate::evidence::Log {
        crate::evidence::Log::from_sqlite(self.pool.clone()).with_writer(self.writer.clone())
    }

    fn write_extra(&self, write: Arc<dyn super::ExtraWrite>) -> BoxFuture<'_, Result<bool, Error>> {
        Box::pin(async move { self.writer.extra(write).await })
    }
}

pub(crate) fn timer_from_parts(
    seq: i64,
    fire_at_ms: i64,
    kind: &str,
) -> Result<PendingTimer, Error> {
    use crate::core::state::TimerKind;
    let kind = match kind {
        "sleep" => TimerKind::Sleep,
        "signal_deadline" => TimerKind::SignalDeadline,
        "retry" => TimerKind::Retry,
        other => return Err(Error::Corrupt(format!("unknown timer kind {other:?}"))),
    };
    Ok(PendingTimer {
        seq,
        fire_at_ms,
        kind,
    })
}

pub(crate) fn push_task_filter<DB: sqlx::Database>(qb: &mut QueryBuilder<DB>, f: &TaskFilter)
where
    for<'t> String: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> i64: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    if let Some(s) = f.status {
        qb.push(" AND status = ").push_bind(s.as_str().to_string());
    }
    if let Some(w) = &f.workflow {
        qb.push(" AND workflow = ").push_bind(w.clone());
    }
    if let Some(a) = &f.agent {
        qb.push(" AND agent = ").push_bind(a.clone());
    }
    if let Some(since) = f.since_ms {
        qb.push(" AND created_at_ms >= ").push_bind(since);
    }
    if let Some((created, id)) = &f.before {
        // A row value compares (created_at_ms, id) in one index range; the
        // OR form made SQLite sort every remaining row for each page.
        qb.push(" AND (created_at_ms, id) < (")
            .push_bind(*created)
            .push(", ")
            .push_bind(id.clone())
            .push(")");
    }
    let limit = if f.limit == 0 {
        100
    } else {
        f.limit.min(10_000)
    };
    qb.push(" ORDER BY created_at_ms DESC, id DESC LIMIT ")
        .push_bind(limit as i64);
}

/// Extends (or first records) a worker's lease.
async fn heartbeat(
    conn: &mut sqlx::SqliteConnection,
    owner: &str,
    expires_at_ms: i64,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO workers (id, lease_expires_at_ms) VALUES (?1, ?2)
         ON CONFLICT (id) DO UPDATE SET lease_expires_at_ms = excluded.lease_expires_at_ms",
    )
    .bind(owner)
    .bind(expires_at_ms)
    .execute(&mut *conn)
    .await
    .map_err(Error::db("worker heartbeat"))?;
    Ok(())
}
