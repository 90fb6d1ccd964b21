//! The stored Merkle log: its size, its leaves (which event each is), its
//! complete subtree nodes, and the checkpoints signed over it (migration
//! 0006). Reads and writes its own tables on a pool of its own; the events
//! table is only read. The SQL is the same on both backends (`$N` parameters
//! work on SQLite too), so [`on_pool!`] writes each body once.

use std::collections::HashMap;

use std::sync::Arc;

use futures::future::BoxFuture;
use sqlx::{PgConnection, PgPool, Row, SqliteConnection, SqlitePool};

use super::merkle::{self, Frontier, Hash, NodeId};
use crate::core::chain::RawEvent;
use crate::store::{Error, ExtraWrite};

/// Rows per multi-row insert (4 parameters each; far under both backends' bounds).
const ROWS_PER_STATEMENT: usize = 500;
/// The lowest level of inner node stored: a node below it covers at most
/// 2^(STORED_LEVEL−1) leaves and is folded from them when a proof needs it.
/// Storing every level would write about two rows per event; from level 4
/// up it is about 1⅛ (a leaf row and an eighth of a node row), with a proof
/// reading one run of at most 16 leaves per leaf it proves. Databases written
/// before this hold levels 1–3 too; those rows are simply not read.
pub const STORED_LEVEL: u32 = 4;
/// The most events one read returns.
pub const MAX_PAGE: u32 = 5_000;

#[derive(Clone)]
enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to whichever pool `$db` holds.
macro_rules! on_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            Db::Sqlite($pool) => $body,
            Db::Postgres($pool) => $body,
        }
    };
}

/// One event as the log sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedEvent {
    pub gseq: i64,
    pub event: RawEvent,
    /// Whether the task's row exists.
    pub task_row: bool,
}

/// A leaf as stored: the event it was made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafRow {
    pub index: u64,
    pub task_id: String,
    pub seq: i64,
    /// The event's chain hash (hex), the leaf's bytes.
    pub event_hash: String,
}

/// A checkpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CheckpointRow {
    pub size: u64,
    pub root: String,
    pub issued_at_ms: i64,
    pub key_id: String,
    pub note: String,
}

/// Why an append did not happen.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("another process extended the log first (size is no longer {0}); reload and retry")]
    Moved(u64),
    #[error(transparent)]
    Store(#[from] Error),
}

/// The log's tables on one database.
#[derive(Clone)]
pub struct Log {
    db: Db,
    /// The store's group-commit writer, when the log belongs to a store:
    /// appends then share the engine's transactions instead of competing
    /// with them for the write lock.
    writer: Option<crate::store::writer::Writer>,
}

fn corrupt(what: &str) -> impl Fn(sqlx::Error) -> Error + '_ {
    move |e| Error::Corrupt(format!("{what}: {e}"))
}

/// Decodes a stored hex hash.
pub fn parse_hash(hex_text: &str) -> Option<Hash> {
    hex::decode(hex_text).ok()?.try_into().ok()
}

fn stored_hash(text: &str, what: &str) -> Result<Hash, Error> {
    parse_hash(text)
        .ok_or_else(|| Error::Corrupt(format!("{what}: {text:?} is not a 32-byte hex hash")))
}

/// One append of leaves and the complete nodes they finish, fenced on the
/// stored size.
#[derive(Debug)]
struct LeafAppend {
    old: u64,
    new: u64,
    leaves: Vec<LeafRow>,
    nodes: Vec<(NodeId, Hash)>,
}

/// The append's statements on either backend's connection (`$N`
/// parameters work on both; the multi-row inserts use `?` on SQLite, see
/// [`values_sql`]).
macro_rules! leaf_append_body {
    ($self:ident, $conn:ident, $numbered:expr, $insert_leaves:path) => {{
        let moved = sqlx::query("UPDATE evidence_log SET size = $1 WHERE id = 1 AND size = $2")
            .bind($self.new as i64)
            .bind($self.old as i64)
            .execute(&mut *$conn)
            .await
            .map_err(Error::db("move the evidence log size"))?;
        if moved.rows_affected() != 1 {
            return Ok(false);
        }
        $insert_leaves(&mut *$conn, &$self.leaves).await?;
        for chunk in $self.nodes.chunks(ROWS_PER_STATEMENT) {
            let sql = values_sql(
                "INSERT INTO evidence_nodes (level, idx, hash) VALUES ",
                chunk.len(),
                3,
                $numbered,
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for ((level, idx), h) in chunk {
                q = q.bind(*level as i32).bind(*idx as i64).bind(hex::encode(h));
            }
            q.execute(&mut *$conn)
                .await
                .map_err(Error::db("insert evidence nodes"))?;
        }
        Ok(true)
    }};
}

/// Leaf rows on SQLite: multi-row inserts.
async fn insert_leaves_sqlite(
    conn: &mut SqliteConnection,
    leaves: &[LeafRow],
) -> Result<(), Error> {
    for chunk in leaves.chunks(ROWS_PER_STATEMENT) {
        let sql = values_sql(
            "INSERT INTO evidence_leaves (idx, task_id, seq, hash) VALUES ",
            chunk.len(),
            4,
            false,
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for e in chunk {
            q = q
                .bind(e.index as i64)
                .bind(&e.task_id)
                .bind(e.seq)
                .bind(&e.event_hash);
        }
        q.execute(&mut *conn)
            .await
            .map_err(Error::db("insert evidence leaves"))?;
    }
    Ok(())
}

/// Leaf rows on PostgreSQL: one `COPY … FROM STDIN` (text format), which
/// the server parses and inserts in bulk at a fraction of the cost of
/// multi-row inserts with bound parameters.
async fn insert_leaves_pg(conn: &mut PgConnection, leaves: &[LeafRow]) -> Result<(), Error> {
    if leaves.is_empty() {
        return Ok(());
    }
    let mut data = String::with_capacity(leaves.len() * 128);
    for e in leaves {
        use std::fmt::Write;
        let _ = write!(data, "{}\t", e.index);
        copy_text(&mut data, &e.task_id);
        let _ = write!(data, "\t{}\t", e.seq);
        copy_text(&mut data, &e.event_hash);
        data.push('\n');
    }
    let mut copy = conn
        .copy_in_raw("COPY evidence_leaves (idx, task_id, seq, hash) FROM STDIN")
        .await
        .map_err(Error::db("insert evidence leaves"))?;
    let sent = copy.send(data.into_bytes()).await.map(|_| ());
    if let Err(e) = sent {
        let _ = copy.abort("the leaves could not be sent").await;
        return Err(Error::db("insert evidence leaves")(e));
    }
    copy.finish()
        .await
        .map_err(Error::db("insert evidence leaves"))?;
    Ok(())
}

/// Appends `value` as one field of COPY's text format (backslash escapes).
fn copy_text(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

/// A signed checkpoint's row, written on either backend's connection.
#[derive(Debug)]
struct CheckpointInsert(CheckpointRow);

macro_rules! checkpoint_insert_body {
    ($row:expr, $conn:ident) => {{
        sqlx::query(
            "INSERT INTO evidence_checkpoints (size, root, issued_at_ms, key_id, note)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (size) DO NOTHING",
        )
        .bind($row.size as i64)
        .bind(&$row.root)
        .bind($row.issued_at_ms)
        .bind(&$row.key_id)
        .bind(&$row.note)
        .execute(&mut *$conn)
        .await
        .map_err(Error::db("record a checkpoint"))?;
        Ok(true)
    }};
}

impl CheckpointInsert {
    async fn run<C: CheckpointConn>(&self, conn: &mut C) -> Result<bool, Error> {
        conn.checkpoint_insert(&self.0).await
    }
}

trait CheckpointConn {
    fn checkpoint_insert<'a>(
        &'a mut self,
        row: &'a CheckpointRow,
    ) -> BoxFuture<'a, Result<bool, Error>>;
}

/// The same body on each backend's connection.
macro_rules! checkpoint_conn {
    ($($conn:ty),*) => {$(
        impl CheckpointConn for $conn {
            fn checkpoint_insert<'a>(
                &'a mut self,
                row: &'a CheckpointRow,
            ) -> BoxFuture<'a, Result<bool, Error>> {
                Box::pin(async move {
                    let conn = self;
                    checkpoint_insert_body!(row, conn)
                })
            }
        }
    )*};
}

checkpoint_conn!(SqliteConnection, PgConnection);

impl ExtraWrite for CheckpointInsert {
    fn on_sqlite<'a>(
        &'a self,
        conn: &'a mut SqliteConnection,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        conn.checkpoint_insert(&self.0)
    }
    fn on_postgres<'a>(&'a self, conn: &'a mut PgConnection) -> BoxFuture<'a, Result<bool, Error>> {
        conn.checkpoint_insert(&self.0)
    }
}

impl LeafAppend {
    async fn run<C: LeafConn>(&self, conn: &mut C) -> Result<bool, Error> {
        conn.leaf_append(self).await
    }
}

/// A connection of either backend the append's statements can run on.
trait LeafConn {
    fn leaf_append<'a>(&'a mut self, w: &'a LeafAppend) -> BoxFuture<'a, Result<bool, Error>>;
}

impl LeafConn for SqliteConnection {
    fn leaf_append<'a>(&'a mut self, w: &'a LeafAppend) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            let conn = self;
            leaf_append_body!(w, conn, false, insert_leaves_sqlite)
        })
    }
}

impl LeafConn for PgConnection {
    fn leaf_append<'a>(&'a mut self, w: &'a LeafAppend) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            let conn = self;
            leaf_append_body!(w, conn, true, insert_leaves_pg)
        })
    }
}

impl ExtraWrite for LeafAppend {
    fn on_sqlite<'a>(
        &'a self,
        conn: &'a mut SqliteConnection,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        conn.leaf_append(self)
    }
    fn on_postgres<'a>(&'a self, conn: &'a mut PgConnection) -> BoxFuture<'a, Result<bool, Error>> {
        conn.leaf_append(self)
    }
}

impl Log {
    /// The log on the SQLite database a store reads through `pool`.
    pub fn from_sqlite(pool: SqlitePool) -> Log {
        Log {
            db: Db::Sqlite(pool),
            writer: None,
        }
    }

    /// The log on the PostgreSQL database a store reads through `pool`.
    pub fn from_postgres(pool: PgPool) -> Log {
        Log {
            db: Db::Postgres(pool),
            writer: None,
        }
    }

    /// Appends through `writer` (the store's) rather than a transaction of
    /// the log's own.
    pub(crate) fn with_writer(mut self, writer: crate::store::writer::Writer) -> Log {
        self.writer = Some(writer);
        self
    }

    /// The number of leaves.
    pub async fn size(&self) -> Result<u64, Error> {
        let size: i64 = on_pool!(&self.db, pool => sqlx::query_scalar("SELECT size FROM evidence_log WHERE id = 1")
            .fetch_one(pool)
            .await
            .map_err(Error::db("read the evidence log size"))?);
        Ok(size as u64)
    }

    /// Nodes by id. Leaves (level 0) come from their leaf rows; nodes below
    /// [`STORED_LEVEL`] are folded from the leaves they cover (at most
    /// 2^(STORED_LEVEL−1) each); the rest are stored. A node whose leaves or
    /// row are missing is left out (the caller names it).
    pub async fn nodes(&self, ids: &[NodeId]) -> Result<HashMap<NodeId, Hash>, Error> {
        let mut out = HashMap::new();
        let (low, inner): (Vec<NodeId>, Vec<NodeId>) =
            ids.iter().partition(|(l, _)| *l < STORED_LEVEL);
        // The leaf ranges the low nodes cover, merged, each read in one query.
        let mut spans: Vec<(u64, u64)> = low.iter().map(|&(l, i)| (i << l, (i + 1) << l)).collect();
        spans.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (s, e) in spans {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        let mut leaves: HashMap<u64, Hash> = HashMap::new();
        for (s, e) in merged {
            let mut at = s;
            while at < e {
                let to = e.min(at + MAX_PAGE as u64);
                let rows: Vec<(i64, String)> = on_pool!(&self.db, pool => sqlx::query_as(
                    "SELECT idx, hash FROM evidence_leaves WHERE idx >= $1 AND idx < $2",
                )
                .bind(at as i64)
                .bind(to as i64)
                .fetch_all(pool)
                .await
                .map_err(Error::db("read evidence leaves"))?);
                for (idx, h) in rows {
                    leaves.insert(
                        idx as u64,
                        merkle::leaf_hash(&stored_hash(&h, "evidence leaf")?),
                    );
                }
                at = to;
            }
        }
        for (l, i) in low {
            if let Some(h) = merkle::subtree_hash(l, i, &leaves) {
                out.insert((l, i), h);
            }
        }
        for chunk in inner.chunks(ROWS_PER_STATEMENT) {
            let cond = chunk
                .iter()
                .map(|(l, i)| format!("(level = {l} AND idx = {i})"))
                .collect::<Vec<_>>()
                .join(" OR ");
            let sql = format!("SELECT level, idx, hash FROM evidence_nodes WHERE {cond}");
            let rows: Vec<(i32, i64, String)> = on_pool!(&self.db, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .fetch_all(pool)
                .await
                .map_err(Error::db("read evidence nodes"))?);
            for (level, idx, h) in rows {
                out.insert(
                    (level as u32, idx as u64),
                    stored_hash(&h, "evidence node")?,
                );
            }
        }
        Ok(out)
    }

    async fn ranges(&self, ranges: &[merkle::Range]) -> Result<Vec<Hash>, Error> {
        let nodes = self.nodes(&merkle::nodes_for(ranges)).await?;
        ranges.iter().map(|r| range_hash(*r, &nodes)).collect()
    }

    /// The root of the first `size` leaves.
    pub async fn root(&self, size: u64) -> Result<Hash, Error> {
        if size == 0 {
            return Ok(merkle::empty_root());
        }
        Ok(self.ranges(&[(0, size)]).await?[0])
    }

    /// The inclusion proof of leaf `index` in the tree of `size` leaves.
    pub async fn prove_inclusion(&self, index: u64, size: u64) -> Result<Vec<Hash>, Error> {
        self.ranges(&merkle::inclusion_ranges(index, size)).await
    }

    /// The inclusion proofs of several leaves in the tree of `size` leaves,
    /// from one read of the nodes they need.
    pub async fn prove_inclusions(
        &self,
        indices: &[u64],
        size: u64,
    ) -> Result<Vec<Vec<Hash>>, Error> {
        let paths: Vec<Vec<merkle::Range>> = indices
            .iter()
            .map(|&i| merkle::inclusion_ranges(i, size))
            .collect();
        let all: Vec<merkle::Range> = paths.iter().flatten().copied().collect();
        let nodes = self.nodes(&merkle::nodes_for(&all)).await?;
        paths
            .iter()
            .map(|path| path.iter().map(|r| range_hash(*r, &nodes)).collect())
            .collect()
    }

    /// The consistency proof from the tree of `old` leaves to that of `new`.
    pub async fn prove_consistency(&self, old: u64, new: u64) -> Result<Vec<Hash>, Error> {
        if old == new {
            return Ok(Vec::new());
        }
        self.ranges(&merkle::consistency_ranges(old, new)).await
    }

    /// The frontier of the stored tree (to append after it).
    pub async fn frontier(&self) -> Result<Frontier, Error> {
        let size = self.size().await?;
        let ids = merkle::decompose(0, size);
        let nodes = self.nodes(&ids).await?;
        let parts = ids
            .iter()
            .map(|id| {
                nodes.get(id).copied().ok_or_else(|| {
                    Error::Corrupt(format!(
                        "evidence node (level {}, index {}) is missing",
                        id.0, id.1
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Frontier::from_parts(size, &parts))
    }

    /// Appends the leaves of `events` (gseq `frontier.size() + 1` onwards, in
    /// order) in one transaction, fenced on the stored size; `frontier` moves
    /// only if it commits.
    pub async fn append(
        &self,
        frontier: &mut Frontier,
        events: &[LeafRow],
    ) -> Result<(), AppendError> {
        let old = frontier.size();
        let mut next = frontier.clone();
        let mut nodes = Vec::new();
        for (i, e) in events.iter().enumerate() {
            if e.index != old + i as u64 {
                return Err(Error::Corrupt(format!(
                    "leaf {} given where leaf {} belongs",
                    e.index,
                    old + i as u64
                ))
                .into());
            }
            let leaf = stored_hash(&e.event_hash, "event hash")?;
            nodes.extend(
                next.push(merkle::leaf_hash(&leaf))
                    .into_iter()
                    .filter(|((l, _), _)| *l >= STORED_LEVEL),
            );
        }
        let write = Arc::new(LeafAppend {
            old,
            new: next.size(),
            leaves: events.to_vec(),
            nodes,
        });
        let done = match &self.writer {
            Some(writer) => writer.extra(write).await?,
            None => on_pool!(&self.db, pool => {
                let mut tx = pool.begin().await.map_err(Error::db("begin an evidence append"))?;
                if !write.run(&mut *tx).await? {
                    false
                } else {
                    tx.commit().await.map_err(Error::db("commit an evidence append"))?;
                    true
                }
            }),
        };
        if !done {
            return Err(AppendError::Moved(old));
        }
        *frontier = next;
        Ok(())
    }

    /// Events numbered after `after_gseq`, in global order, at most `limit`
    /// (capped at [`MAX_PAGE`]), whether or not their task's row exists.
    pub async fn events_after(
        &self,
        after_gseq: i64,
        limit: u32,
    ) -> Result<Vec<LoggedEvent>, Error> {
        let limit = limit.min(MAX_PAGE) as i64;
        on_pool!(&self.db, pool => {
            let rows = sqlx::query(
                "SELECT e.gseq, e.task_id, e.seq, e.event_type, e.recorded_at_ms, e.actor, e.payload,
                        e.prev_hash, e.hash, (t.id IS NOT NULL) AS task_row
                 FROM events e LEFT JOIN tasks t ON t.id = e.task_id
                 WHERE e.gseq > $1 ORDER BY e.gseq LIMIT $2",
            )
            .bind(after_gseq)
            .bind(limit)
            .fetch_all(pool)
            .await
            .map_err(Error::db("read events in global order"))?;
            rows.iter()
                .map(|r| {
                    let task_id: String = r.try_get("task_id").map_err(corrupt("events row"))?;
                    Ok(LoggedEvent {
                        gseq: r.try_get("gseq").map_err(corrupt("events row"))?,
                        task_row: r.try_get("task_row").map_err(corrupt("events row"))?,
                        event: crate::store::sqlite::event_from_row(&task_id, r)?,
                    })
                })
                .collect()
        })
    }

    /// The leaves of the events numbered after `after_gseq`, in global order,
    /// at most `limit` (capped at [`MAX_PAGE`]): `(gseq, leaf)`, without
    /// reading payloads (what the follower needs).
    pub async fn leaves_after(
        &self,
        after_gseq: i64,
        limit: u32,
    ) -> Result<Vec<(i64, LeafRow)>, Error> {
        let rows: Vec<(i64, String, i64, String)> = on_pool!(&self.db, pool => sqlx::query_as(
            "SELECT gseq, task_id, seq, hash FROM events WHERE gseq > $1 ORDER BY gseq LIMIT $2",
        )
        .bind(after_gseq)
        .bind(limit.min(MAX_PAGE) as i64)
        .fetch_all(pool)
        .await
        .map_err(Error::db("read events in global order"))?);
        Ok(rows
            .into_iter()
            .map(|(g, task_id, seq, event_hash)| {
                (
                    g,
                    LeafRow {
                        index: (g - 1).max(0) as u64,
                        task_id,
                        seq,
                        event_hash,
                    },
                )
            })
            .collect())
    }

    /// Events that have no global number (written around the writer).
    pub async fn unnumbered_events(&self, limit: u32) -> Result<Vec<(String, i64)>, Error> {
        on_pool!(&self.db, pool => sqlx::query_as(
            "SELECT task_id, seq FROM events WHERE gseq IS NULL ORDER BY task_id, seq LIMIT $1",
        )
        .bind(limit.min(MAX_PAGE) as i64)
        .fetch_all(pool)
        .await
        .map_err(Error::db("look for events without a global number")))
    }

    /// Leaf rows `[start, start + limit)`.
    pub async fn leaves(&self, start: u64, limit: u32) -> Result<Vec<LeafRow>, Error> {
        let rows: Vec<(i64, String, i64, String)> = on_pool!(&self.db, pool => sqlx::query_as(
            "SELECT idx, task_id, seq, hash FROM evidence_leaves WHERE idx >= $1 ORDER BY idx LIMIT $2",
        )
        .bind(start as i64)
        .bind(limit.min(MAX_PAGE) as i64)
        .fetch_all(pool)
        .await
        .map_err(Error::db("read evidence leaves"))?);
        Ok(leaf_rows(rows))
    }

    /// The leaves of one task's events, by seq.
    pub async fn task_leaves(&self, task_id: &str) -> Result<Vec<LeafRow>, Error> {
        let rows: Vec<(i64, String, i64, String)> = on_pool!(&self.db, pool => sqlx::query_as(
            "SELECT e.gseq - 1, e.task_id, e.seq, e.hash FROM events e
             WHERE e.task_id = $1 AND e.gseq IS NOT NULL ORDER BY e.seq",
        )
        .bind(task_id)
        .fetch_all(pool)
        .await
        .map_err(Error::db("read a task's events"))?);
        Ok(leaf_rows(rows))
    }

    /// Records a signed checkpoint (a second one for the same size is
    /// ignored); through the store's writer when the log has one, so it
    /// joins a group commit rather than paying a commit of its own.
    pub async fn insert_checkpoint(&self, row: &CheckpointRow) -> Result<(), Error> {
        let write = Arc::new(CheckpointInsert(row.clone()));
        match &self.writer {
            Some(writer) => {
                writer.extra(write).await?;
            }
            None => {
                on_pool!(&self.db, pool => {
                    let mut conn = pool.acquire().await.map_err(Error::db("record a checkpoint"))?;
                    write.run(&mut *conn).await?;
                });
            }
        }
        Ok(())
    }

    /// The newest checkpoint, or the first one covering leaf `index` (size > index).
    pub async fn checkpoint(&self, covering: Option<u64>) -> Result<Option<CheckpointRow>, Error> {
        let rows: Vec<(i64, String, i64, String, String)> = on_pool!(&self.db, pool => match covering {
            None => sqlx::query_as(
                "SELECT size, root, issued_at_ms, key_id, note FROM evidence_checkpoints ORDER BY size DESC LIMIT 1",
            )
            .fetch_all(pool)
            .await,
            Some(index) => sqlx::query_as(
                "SELECT size, root, issued_at_ms, key_id, note FROM evidence_checkpoints
                 WHERE size > $1 ORDER BY size LIMIT 1",
            )
            .bind(index as i64)
            .fetch_all(pool)
            .await,
        }
        .map_err(Error::db("read checkpoints"))?);
        Ok(rows
            .into_iter()
            .next()
            .map(|(size, root, issued_at_ms, key_id, note)| CheckpointRow {
                size: size as u64,
                root,
                issued_at_ms,
                key_id,
                note,
            }))
    }
}

fn range_hash(range: merkle::Range, nodes: &HashMap<NodeId, Hash>) -> Result<Hash, Error> {
    merkle::range_hash(range, nodes).map_err(|(l, i)| {
        Error::Corrupt(format!("evidence node (level {l}, index {i}) is missing"))
    })
}

fn leaf_rows(rows: Vec<(i64, String, i64, String)>) -> Vec<LeafRow> {
    rows.into_iter()
        .map(|(idx, task_id, seq, event_hash)| LeafRow {
            index: idx as u64,
            task_id,
            seq,
            event_hash,
        })
        .collect()
}

/// `prefix ($1, $2, …), (…)`: `rows` tuples of `cols` parameters, numbered
/// (PostgreSQL) or anonymous `?` (SQLite: sqlx binds each numbered
/// parameter through `sqlite3_bind_parameter_name`, a scan of the
/// statement's parameter names, so a 2,000-parameter insert costs millions
/// of steps; anonymous ones have no names to scan).
fn values_sql(prefix: &str, rows: usize, cols: usize, numbered: bool) -> String {
    let mut sql = String::from(prefix);
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for c in 0..cols {
            if c > 0 {
                sql.push_str(", ");
            }
            if numbered {
                sql.push_str(&format!("${}", r * cols + c + 1));
            } else {
                sql.push('?');
            }
        }
        sql.push(')');
    }
    sql
}
