//! The SQLite store: the embedded default. WAL, `synchronous=FULL`; one writer
//! connection owned by the group-commit writer (SQLite has one writer anyway, so
//! every write — appends, claims, renewals — goes through it and never waits on
//! SQLite's busy handler), and a small pool for reads. The writer's
//! batches run on a thread of their own with direct, cached statements
//! (`store::sqlite_writer`).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, QueryBuilder, Row, Sqlite, SqlitePool};
use tokio::sync::Notify;

use super::writer::Writer;
use super::{
    AppendOutcome, AppendRequest, Backend, Error, Store, TaskFilter, TaskRow, WriterConfig,
    status_from_db,
};
use crate::core::chain::RawEvent;
use crate::core::state::{PendingTimer, TaskStatus};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

pub struct SqliteStore {
    pool: SqlitePool,
    writer: Writer,
    wake: Arc<Notify>,
    checkpoints: Option<tokio::sync::watch::Receiver<u64>>,
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

/// A database with no file (and no WAL).
fn in_memory(path: &std::path::Path) -> bool {
    path.as_os_str().is_empty() || path.as_os_str() == ":memory:"
}

/// Creates a missing database file readable by its owner only (0600): it
/// holds every task's input and output and the token hashes. SQLite gives
/// its `-wal` and `-shm` companions the mode of the database file. An
/// existing file keeps its mode.
fn create_private(url: &str, opts: &SqliteConnectOptions) -> Result<(), Error> {
    let path = opts.get_filename();
    if in_memory(path) {
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

/// A database from before migration 0010 holding at least this many events
/// is told about the table's rebuild before it starts.
pub const ANNOUNCE_REBUILD_FROM_EVENTS: i64 = 100_000;

/// Warns, before migrating, when migration 0010 is about to rebuild the
/// events table of a large database (once; about 13 s per million events
/// on a 2-core machine, the database locked meanwhile), so that an operator
/// who opened it does not take the wait for a hang. Reads only
/// `_sqlx_migrations` and the event counter; says nothing for a new
/// database or one already migrated.
async fn announce_events_rebuild(pool: &SqlitePool, url: &str) {
    let Ok(applied) = sqlx::query_scalar::<_, i64>("SELECT version FROM _sqlx_migrations")
        .fetch_all(pool)
        .await
    else {
        return;
    };
    if applied.is_empty() || applied.contains(&10) {
        return;
    }
    let events = sqlx::query_scalar::<_, i64>("SELECT head FROM event_log WHERE id = 1")
        .fetch_optional(pool)
        .await
        .ok()
        .flatten()
        .unwrap_or(0);
    if events >= ANNOUNCE_REBUILD_FROM_EVENTS {
        tracing::warn!(
            "{url}: migration 0010 rebuilds the events table of this database ({events} events) \
             as a table appended in commit order: once, about 13 s per million events, \
             with the database locked until it finishes"
        );
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
        announce_events_rebuild(&pool, url).await;
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
        let path = opts.get_filename();
        let wal = super::sqlite_checkpoint::WalPolicy::start(
            (!in_memory(path)).then(|| path.to_path_buf()),
            config.checkpoint_from_pages,
            config.wal_limit_pages,
        )?;
        let checkpoints = wal.checkpoints();
        let exec = super::sqlite_writer::SqliteExecutor::start(conn, wal).await?;
        let writer = Writer::spawn(exec, config, wake.clone());
        Ok(Self {
            pool,
            writer,
            wake,
            checkpoints,
        })
    }

    /// A task's events after `after_seq` in seq order (at most `limit`), read
    /// with direct SQLite calls on a pooled connection off the async threads:
    /// through sqlx each row would cross its connection thread's channel.
    async fn read_events(
        &self,
        task_id: String,
        after_seq: i64,
        limit: Option<u32>,
        during: &'static str,
    ) -> Result<Vec<RawEvent>, Error> {
        let mut conn = self.pool.acquire().await.map_err(Error::db(during))?;
        let (conn, events) = tokio::task::spawn_blocking(move || {
            let events = super::sqlite_writer::with_direct(&mut conn, |c| {
                read_event_rows(c, &task_id, after_seq, limit, during)
            });
            (conn, events)
        })
        .await
        .map_err(|e| Error::Corrupt(format!("reading a history failed: {e}")))?;
        drop(conn);
        events
    }

    /// How many WAL checkpoints the checkpoint thread has finished, changing
    /// as each finishes (`None` for a database in memory, or with
    /// `WriterConfig::checkpoint_from_pages` unset).
    pub fn wal_checkpoints(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.checkpoints.clone()
    }

    /// The read pool (for tools that keep their state in the same database).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
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

/// One events row as stored, before its payload is parsed.
struct StoredEvent {
    seq: i64,
    event_type: String,
    recorded_at_ms: i64,
    actor: String,
    payload: String,
    prev_hash: String,
    hash: String,
}

fn read_event_rows(
    c: &rusqlite::Connection,
    task_id: &str,
    after_seq: i64,
    limit: Option<u32>,
    during: &'static str,
) -> Result<Vec<RawEvent>, Error> {
    use super::sqlite_writer::lite;
    let mut stmt = c
        .prepare(
            "SELECT seq, event_type, recorded_at_ms, actor, payload, prev_hash, hash
             FROM events WHERE task_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )
        .map_err(lite(during))?;
    // LIMIT -1: no limit.
    let limit = limit.map_or(-1, i64::from);
    let mut rows = stmt
        .query(rusqlite::params![task_id, after_seq, limit])
        .map_err(lite(during))?;
    let get_err = |e: rusqlite::Error| Error::Corrupt(format!("events row of task {task_id}: {e}"));
    let next = || -> Result<Option<StoredEvent>, Error> {
        let Some(r) = rows.next().map_err(lite(during))? else {
            return Ok(None);
        };
        Ok(Some(StoredEvent {
            seq: r.get(0).map_err(get_err)?,
            event_type: r.get(1).map_err(get_err)?,
            recorded_at_ms: r.get(2).map_err(get_err)?,
            actor: r.get(3).map_err(get_err)?,
            payload: r.get(4).map_err(get_err)?,
            prev_hash: r.get(5).map_err(get_err)?,
            hash: r.get(6).map_err(get_err)?,
        }))
    };
    super::decode_while_reading(next, |r: StoredEvent| {
        Ok(RawEvent {
            task_id: task_id.to_string(),
            payload: serde_json::from_str(&r.payload).map_err(|e| {
                Error::Corrupt(format!(
                    "task {task_id} event seq {}: payload is not JSON: {e}",
                    r.seq
                ))
            })?,
            seq: r.seq,
            event_type: r.event_type,
            recorded_at_ms: r.recorded_at_ms,
            actor: r.actor,
            prev_hash: r.prev_hash,
            hash: r.hash,
        })
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
        Box::pin(self.read_events(task_id.to_string(), 0, None, "load history"))
    }

    fn load_history_page(
        &self,
        task_id: &str,
        after_seq: i64,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<RawEvent>, Error>> {
        Box::pin(self.read_events(
            task_id.to_string(),
            after_seq,
            Some(limit),
            "load a history page",
        ))
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
