//! The PostgreSQL store: the production store and the way to scale out. Any
//! number of processes share one database: they claim work with leases
//! (`FOR UPDATE SKIP LOCKED`), fence appends by locking the task rows of a batch
//! in id order, and wake each other with LISTEN/NOTIFY (`mandate_wake`).
//! Durability is the server's (`synchronous_commit=on` by default).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{PgPool, Postgres, QueryBuilder, Row};
use tokio::sync::Notify;

use super::plan::{BatchPlan, Current, plan};
use super::sqlite::{
    TASK_SELECT_COLUMNS, event_from_row, push_task_filter, task_from_row, timer_from_parts,
};
use super::writer::{BatchExecutor, BatchResult, WriteOp, WriteResult, Writer};
use super::{
    AppendOutcome, AppendRequest, Backend, Error, Store, TaskFilter, TaskRow, WriterConfig,
    status_from_db,
};
use crate::core::chain::RawEvent;
use crate::core::state::{PendingTimer, TaskStatus};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// The channel other processes are woken on.
pub const WAKE_CHANNEL: &str = "mandate_wake";

pub struct PgStore {
    pool: PgPool,
    writer: Writer,
    wake: Arc<Notify>,
}

impl PgStore {
    /// Connects and migrates. Fails loudly (naming the URL) when unreachable.
    pub async fn open(url: &str, config: WriterConfig) -> Result<Self, Error> {
        let opts: PgConnectOptions = url.parse().map_err(|e: sqlx::Error| Error::BadUrl {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await
            .map_err(|source| Error::Connect {
                backend: "postgres",
                url: url.to_string(),
                source,
            })?;
        // Concurrent first starts race on creating the migrations table; a
        // session-level advisory lock inside the migrator serializes them.
        MIGRATOR.run(&pool).await.map_err(|source| Error::Migrate {
            backend: "postgres",
            source,
        })?;
        let conn = pool.acquire().await.map_err(|source| Error::Connect {
            backend: "postgres",
            url: url.to_string(),
            source,
        })?;
        let wake = Arc::new(Notify::new());
        spawn_listener(pool.clone(), wake.clone());
        let writer = Writer::spawn(PgExecutor { conn }, config, wake.clone());
        Ok(Self { pool, writer, wake })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Forwards NOTIFY `mandate_wake` from any process to this process's waiters.
/// Reconnects with a bounded backoff; workers fall back to polling meanwhile.
fn spawn_listener(pool: PgPool, wake: Arc<Notify>) {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            match PgListener::connect_with(&pool).await {
                Ok(mut listener) => {
                    if listener.listen(WAKE_CHANNEL).await.is_ok() {
                        backoff = Duration::from_millis(100);
                        while listener.recv().await.is_ok() {
                            wake.notify_waiters();
                            wake.notify_one();
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "LISTEN connection failed; retrying"),
            }
            if pool.is_closed() {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    });
}

struct PgExecutor {
    conn: PoolConnection<Postgres>,
}

impl BatchExecutor for PgExecutor {
    fn execute(&mut self, ops: Vec<WriteOp>) -> BoxFuture<'_, (Vec<WriteOp>, BatchResult)> {
        Box::pin(async move {
            let result = self.transaction(&ops).await;
            (ops, result)
        })
    }
}

impl PgExecutor {
    async fn transaction(&mut self, ops: &[WriteOp]) -> BatchResult {
        let conn = &mut *self.conn;
        sqlx::query("BEGIN")
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
    }
}

async fn run_batch(
    conn: &mut sqlx::PgConnection,
    ops: &[WriteOp],
) -> Result<(Vec<WriteResult>, bool), Error> {
    let appends = super::writer::appends(ops);
    let mut plan_out = BatchPlan::default();
    if !appends.is_empty() {
        let mut ids: Vec<String> = appends.iter().map(|r| r.req.task_id.clone()).collect();
        ids.sort_unstable();
        ids.dedup();
        // Lock the batch's task rows in a fixed order: the fence, and no deadlocks
        // between processes appending to the same tasks.
        let rows = sqlx::query(
            "SELECT id, last_seq, lease_owner FROM tasks WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        )
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await
        .map_err(Error::db("fence check"))?;
        let current: HashMap<String, Current> = rows
            .iter()
            .map(|r| {
                let current = Current {
                    last_seq: r.get(1),
                    lease_owner: r.get(2),
                };
                (r.get(0), current)
            })
            .collect();
        let keys: Vec<String> = appends
            .iter()
            .filter_map(|r| r.req.create.as_ref()?.idempotency_key.clone())
            .collect();
        let mut existing_keys = HashMap::new();
        if !keys.is_empty() {
            let rows = sqlx::query(
                "SELECT idempotency_key, id FROM tasks WHERE idempotency_key = ANY($1)",
            )
            .bind(&keys)
            .fetch_all(&mut *conn)
            .await
            .map_err(Error::db("idempotency check"))?;
            existing_keys = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        }
        plan_out = plan(&appends, current, &existing_keys);
        write_plan(conn, &plan_out).await?;
        if plan_out.wake {
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(WAKE_CHANNEL)
                .execute(&mut *conn)
                .await
                .map_err(Error::db("notify"))?;
        }
    }
    let mut outcomes = plan_out.outcomes.into_iter();
    let mut results = Vec::with_capacity(ops.len());
    let mut released = false;
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
                    "UPDATE tasks SET lease_owner = $1
                     WHERE id IN (SELECT id FROM tasks
                                  WHERE ready_at_ms IS NOT NULL AND lease_owner IS NULL AND ready_at_ms <= $2
                                  ORDER BY ready_at_ms LIMIT $3
                                  FOR UPDATE SKIP LOCKED)
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
                        "UPDATE tasks SET lease_owner = $1
                         WHERE id IN (SELECT t.id FROM workers w JOIN tasks t ON t.lease_owner = w.id
                                      WHERE w.lease_expires_at_ms < $2 AND w.id <> $1
                                        AND t.ready_at_ms IS NOT NULL AND t.ready_at_ms <= $2
                                      LIMIT $3
                                  FOR UPDATE OF t SKIP LOCKED)
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
                    "DELETE FROM workers WHERE lease_expires_at_ms < $1
                     AND NOT EXISTS (SELECT 1 FROM tasks WHERE tasks.lease_owner = workers.id)",
                )
                .bind(now_ms - 86_400_000)
                .execute(&mut *conn)
                .await
                .map_err(Error::db("forget dead workers"))?;
                let rows = sqlx::query("SELECT id, last_seq FROM tasks WHERE lease_owner = $1")
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
                     WHERE id = $1 AND lease_owner = $2 AND last_seq = $3",
                )
                .bind(task_id)
                .bind(owner)
                .bind(expected_seq)
                .execute(&mut *conn)
                .await
                .map_err(Error::db("lease release"))?;
                released |= done.rows_affected() == 1;
                WriteResult::Release(done.rows_affected() == 1)
            }
            WriteOp::Quarantine { task_id, reason } => {
                sqlx::query(
                    "UPDATE tasks SET ready_at_ms = NULL, lease_owner = NULL, blocked_reason = $1
                     WHERE id = $2",
                )
                .bind(reason)
                .bind(task_id)
                .execute(&mut *conn)
                .await
                .map_err(Error::db("quarantine"))?;
                WriteResult::Quarantine
            }
            WriteOp::Extra(write) => WriteResult::Extra(write.on_postgres(&mut *conn).await?),
        };
        results.push(r);
    }
    if released && !plan_out.wake {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(WAKE_CHANNEL)
            .execute(&mut *conn)
            .await
            .map_err(Error::db("notify"))?;
    }
    Ok((results, plan_out.wake))
}

async fn write_plan(conn: &mut sqlx::PgConnection, p: &BatchPlan<'_>) -> Result<(), Error> {
    if !p.events.is_empty() {
        let e = &p.events;
        // The global order: the row lock on `event_log` is held until commit,
        // so commit order and gseq order agree across processes. Taken after
        // the task rows' locks, always, so lock order cannot deadlock.
        let head: i64 =
            sqlx::query_scalar("UPDATE event_log SET head = head + $1 WHERE id = 1 RETURNING head")
                .bind(e.len() as i64)
                .fetch_one(&mut *conn)
                .await
                .map_err(Error::db("take global event numbers"))?;
        let first = head - e.len() as i64 + 1;
        sqlx::query(
            "INSERT INTO events (task_id, seq, event_type, recorded_at_ms, actor, payload, prev_hash, hash, gseq)
             SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::text[], $8::text[], $9::bigint[])",
        )
        .bind(e.iter().map(|(e, _)| e.task_id.as_str()).collect::<Vec<_>>())
        .bind(e.iter().map(|(e, _)| e.seq).collect::<Vec<_>>())
        .bind(e.iter().map(|(e, _)| e.event_type.as_str()).collect::<Vec<_>>())
        .bind(e.iter().map(|(e, _)| e.recorded_at_ms).collect::<Vec<_>>())
        .bind(e.iter().map(|(e, _)| e.actor.as_str()).collect::<Vec<_>>())
        .bind(e.iter().map(|&(_, payload)| payload).collect::<Vec<_>>())
        .bind(e.iter().map(|(e, _)| e.prev_hash.as_str()).collect::<Vec<_>>())
        .bind(e.iter().map(|(e, _)| e.hash.as_str()).collect::<Vec<_>>())
        .bind((first..=head).collect::<Vec<i64>>())
        .execute(&mut *conn)
        .await
        .map_err(Error::db("insert events"))?;
    }
    if !p.tasks.is_empty() {
        let t = &p.tasks;
        sqlx::query(
            "INSERT INTO tasks (id, workflow, workflow_version, agent, idempotency_key, status, last_seq, last_hash,
                                created_at_ms, updated_at_ms, ready_at_ms, lease_owner, blocked_reason)
             SELECT u.id, u.workflow, u.workflow_version, u.agent, u.idempotency_key, u.status, u.last_seq, u.last_hash,
                    u.created_at_ms, u.updated_at_ms, u.ready_at_ms, u.lease_owner, u.blocked_reason
             FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::text[],
                         $9::bigint[], $10::bigint[], $11::bigint[], $12::text[], $13::text[])
                  AS u(id, workflow, workflow_version, agent, idempotency_key, status, last_seq, last_hash,
                       created_at_ms, updated_at_ms, ready_at_ms, lease_owner, blocked_reason)
             ON CONFLICT (id) DO UPDATE SET
                status = excluded.status, last_seq = excluded.last_seq, last_hash = excluded.last_hash,
                updated_at_ms = excluded.updated_at_ms, ready_at_ms = excluded.ready_at_ms,
                blocked_reason = excluded.blocked_reason,
                lease_owner = CASE WHEN excluded.lease_owner IS NOT NULL AND tasks.lease_owner = excluded.lease_owner
                                   THEN NULL ELSE tasks.lease_owner END",
        )
        .bind(t.iter().map(|t| t.id).collect::<Vec<_>>())
        .bind(t.iter().map(|t| t.create.map(|c| c.workflow.as_str()).unwrap_or_default()).collect::<Vec<_>>())
        .bind(t.iter().map(|t| t.create.map(|c| c.workflow_version as i64).unwrap_or_default()).collect::<Vec<_>>())
        .bind(t.iter().map(|t| t.create.and_then(|c| c.agent.as_deref())).collect::<Vec<_>>())
        .bind(t.iter().map(|t| t.create.and_then(|c| c.idempotency_key.as_deref())).collect::<Vec<_>>())
        .bind(t.iter().map(|t| t.status).collect::<Vec<_>>())
        .bind(t.iter().map(|t| t.last_seq).collect::<Vec<_>>())
        .bind(t.iter().map(|t| t.last_hash).collect::<Vec<_>>())
        .bind(t.iter().map(|t| t.create.map(|c| c.created_at_ms).unwrap_or(t.updated_at_ms)).collect::<Vec<_>>())
        .bind(t.iter().map(|t| t.updated_at_ms).collect::<Vec<_>>())
        .bind(t.iter().map(|t| t.ready_at_ms).collect::<Vec<_>>())
        .bind(
            t.iter()
                .map(|t| match t.create {
                    Some(c) => c.lease_owner.as_deref(),
                    None => t.release_owner,
                })
                .collect::<Vec<_>>(),
        )
        .bind(t.iter().map(|t| t.blocked_reason).collect::<Vec<_>>())

        .execute(&mut *conn)
        .await
        .map_err(Error::db("upsert task rows"))?;
    }
    if !p.timers.is_empty() {
        let ids: Vec<&str> = p.timers.iter().map(|(id, _)| *id).collect();
        sqlx::query("DELETE FROM timers WHERE task_id = ANY($1)")
            .bind(&ids)
            .execute(&mut *conn)
            .await
            .map_err(Error::db("replace timers"))?;
        let rows: Vec<(&str, &PendingTimer)> = p
            .timers
            .iter()
            .flat_map(|(id, ts)| ts.iter().map(move |t| (*id, t)))
            .collect();
        if !rows.is_empty() {
            sqlx::query(
                "INSERT INTO timers (task_id, seq, fire_at_ms, kind)
                 SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::text[])",
            )
            .bind(rows.iter().map(|(id, _)| *id).collect::<Vec<_>>())
            .bind(rows.iter().map(|(_, t)| t.seq).collect::<Vec<_>>())
            .bind(rows.iter().map(|(_, t)| t.fire_at_ms).collect::<Vec<_>>())
            .bind(
                rows.iter()
                    .map(|(_, t)| t.kind.as_str().to_string())
                    .collect::<Vec<_>>(),
            )
            .execute(&mut *conn)
            .await
            .map_err(Error::db("insert timers"))?;
        }
    }
    Ok(())
}

impl Store for PgStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    fn append(&self, request: AppendRequest) -> BoxFuture<'_, Result<AppendOutcome, Error>> {
        Box::pin(self.writer.append(request))
    }

    fn load_history(&self, task_id: &str) -> BoxFuture<'_, Result<Vec<RawEvent>, Error>> {
        let task_id = task_id.to_string();
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT seq, event_type, recorded_at_ms, actor, payload, prev_hash, hash
                 FROM events WHERE task_id = $1 ORDER BY seq",
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
                 FROM events WHERE task_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
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
            let mut qb = QueryBuilder::<Postgres>::new("SELECT ");
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
            let mut qb = QueryBuilder::<Postgres>::new("SELECT ");
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
            let mut qb = QueryBuilder::<Postgres>::new("SELECT ");
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
            let rows = sqlx::query("SELECT seq, fire_at_ms, kind FROM timers WHERE task_id = $1 ORDER BY fire_at_ms, seq")
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
        crate::evidence::Log::from_postgres(self.pool.clone()).with_writer(self.writer.clone())
    }

    fn write_extra(&self, write: Arc<dyn super::ExtraWrite>) -> BoxFuture<'_, Result<bool, Error>> {
        Box::pin(async move { self.writer.extra(write).await })
    }
}

/// Extends (or first records) a worker's lease.
async fn heartbeat(
    conn: &mut sqlx::PgConnection,
    owner: &str,
    expires_at_ms: i64,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO workers (id, lease_expires_at_ms) VALUES ($1, $2)
         ON CONFLICT (id) DO UPDATE SET lease_expires_at_ms = excluded.lease_expires_at_ms",
    )
    .bind(owner)
    .bind(expires_at_ms)
    .execute(&mut *conn)
    .await
    .map_err(Error::db("worker heartbeat"))?;
    Ok(())
}
