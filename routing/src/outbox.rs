//! The notifications outbox: durable deliveries in the engine's database
//! (migration 0007). One row is one notification (one recipient, one
//! thing), keyed by its id; a burst for the same group and recipient is
//! folded into the open row until its group wait ends. Deliveries are
//! claimed with leases (`FOR UPDATE SKIP LOCKED` on PostgreSQL), retried
//! with backoff, and every attempt is recorded. The SQL is one text for both
//! backends (`$N` parameters work on SQLite too); only how a transaction
//! begins and how claimed rows are locked differ.
//!
//! None of this is history: it never writes the `events` table.

use std::str::FromStr;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use mandate_engine::store::{ExtraWrite, Store};

use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

use crate::limits;
use crate::links::{LinkClaim, LinkError};
use crate::page::{self, PAGE_ROWS_PER_STATEMENT};
use crate::sinks::{DeliveryError, Message};

static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");
static PG_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// An outbox failure (a refusal or the database).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Db {
        what: &'static str,
        source: sqlx::Error,
    },
    #[error(
        "the outbox holds {open} open notifications, the limit is {limit}; deliveries are failing or slow: check the sinks"
    )]
    Full { open: i64, limit: i64 },
    #[error("the notification body is {bytes} bytes, the limit is {limit}")]
    TooLarge { bytes: usize, limit: usize },
    #[error("cannot open the outbox at {url}: {reason}")]
    Open { url: String, reason: String },
    #[error("corrupt outbox row: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("the engine's writer: {0}")]
    Writer(String),
}

fn db(what: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |source| Error::Db { what, source }
}

/// A notification to enqueue.
#[derive(Debug, Clone)]
pub struct NewNotification {
    /// Identifies the thing notified about for this recipient (e.g.
    /// `task:seq:recipient:sink`); enqueueing the same key twice is a no-op.
    pub item_key: String,
    /// Notifications with the same group key are folded together while the first waits.
    pub group_key: String,
    pub task_id: String,
    pub recipient: String,
    pub sink: String,
    pub address: Option<String>,
    pub message: Message,
    /// When the first attempt may start (created + group wait).
    pub send_at_ms: i64,
}

/// What `enqueue` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    pub id: String,
    /// The item joined an existing notification.
    pub grouped: bool,
    /// The item key was enqueued before; nothing changed.
    pub duplicate: bool,
}

/// A claimed delivery.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: String,
    pub attempt: i64,
    pub recipient: String,
    pub sink: String,
    pub address: Option<String>,
    pub message: Message,
}

/// One attempt's outcome, to record (see `finish_many`).
#[derive(Debug, Clone)]
pub struct Finished {
    pub id: String,
    pub worker: String,
    pub attempt: i64,
    pub now_ms: i64,
    pub outcome: Result<(), DeliveryError>,
}

/// A notification row (for inspection and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationRow {
    pub id: String,
    pub status: String,
    pub attempt: i64,
    pub item_count: i64,
    pub next_attempt_at_ms: Option<i64>,
    pub sent_at_ms: Option<i64>,
    pub last_error: Option<String>,
    pub body: String,
}

/// Delay before attempt `attempt + 1` after `attempt` failed: 1 s doubling, at most 5 min.
pub fn backoff_ms(attempt: i64) -> i64 {
    let exp = attempt.clamp(1, 20) - 1;
    (1_000i64 << exp).min(300_000)
}

/// A notification id derived from its first item's key (stable across retries of enqueue).
pub fn notification_id(item_key: &str) -> String {
    let digest = crate::sign::hmac_hex(b"mandate-notification", &[item_key.as_bytes()]);
    let mut bytes = [0u8; 16];
    hex::decode_to_slice(&digest[..32], &mut bytes).expect("hex");
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .to_string()
}

pub struct SqliteOutbox {
    pool: SqlitePool,
    writer: Option<Arc<dyn Store>>,
}
pub struct PgOutbox {
    pool: PgPool,
    writer: Option<Arc<dyn Store>>,
}

/// The outbox on either backend.
pub enum Outbox {
    Sqlite(SqliteOutbox),
    Postgres(PgOutbox),
}

/// Delivered notifications recorded per statement (4 parameters each for
/// the update, 6 for the attempts: far under both backends' bounds).
const FINISH_ROWS_PER_STATEMENT: usize = 200;

/// A delivery worker's claim: the due notifications nobody holds, leased
/// and counted as an attempt. `$lock`: how the backend locks the rows read.
macro_rules! claim_sql {
    ($lock:literal) => {
        concat!(
            "UPDATE notifications SET status = 'sending', attempt = attempt + 1, lease_owner = $1, lease_expires_at_ms = $2
             WHERE id IN (SELECT id FROM notifications
                          WHERE next_attempt_at_ms <= $3 AND (lease_expires_at_ms IS NULL OR lease_expires_at_ms < $3)
                          ORDER BY next_attempt_at_ms LIMIT $4 ",
            $lock,
            ")
             RETURNING id, attempt, recipient, sink, address"
        )
    };
}
pub(crate) use claim_sql;

/// The notifications open (not yet sent or failed for good), which
/// [`limits::MAX_OUTBOX_OPEN`] bounds.
pub(crate) const OPEN_COUNT_SQL: &str =
    "SELECT COUNT(*) FROM notifications WHERE next_attempt_at_ms IS NOT NULL";

/// A failed attempt's outcome, fenced on the lease: `$4` the status
/// (`pending` again or `failed`), `$5` when to try next, `$6` the error.
pub(crate) const FAILED_SQL: &str =
    "UPDATE notifications SET status = $4, next_attempt_at_ms = $5, last_error = $6,
        lease_owner = NULL, lease_expires_at_ms = NULL
     WHERE id = $1 AND lease_owner = $2 AND attempt = $3";

/// A failed attempt's record.
pub(crate) const FAILED_ATTEMPT_SQL: &str = "INSERT INTO notification_attempts (notification_id, attempt, worker, finished_at_ms, outcome, error)
     VALUES ($1, $2, $3, $4, 'failed', $5) ON CONFLICT (notification_id, attempt) DO NOTHING";

/// After a failed attempt: tried again later (with backoff) while the error
/// is retryable and attempts are left, otherwise failed for good.
pub(crate) fn after_failure(
    e: &DeliveryError,
    attempt: i64,
    now_ms: i64,
) -> (&'static str, Option<i64>) {
    if e.retryable && attempt < limits::MAX_ATTEMPTS as i64 {
        ("pending", Some(now_ms + backoff_ms(attempt)))
    } else {
        ("failed", None)
    }
}

macro_rules! outbox_methods {
    ($ty:ty, $lock:literal, $lock_read:literal, $begin:ident, $begin_arg:expr) => {
        impl $ty {
            async fn begin(&self) -> Result<sqlx::Transaction<'static, <$ty as HasDb>::Db>, Error> {
                outbox_begin!($begin, self, $begin_arg)
            }

            pub async fn enqueue(&self, n: &NewNotification, now_ms: i64) -> Result<Enqueued, Error> {
                let page = [(n.clone(), None)];
                let bodies = check_page(&page)?;
                let mut tx = self.begin().await?;
                let mut done = Self::page_on(&mut tx, &page, &bodies, now_ms, None).await?;
                tx.commit().await.map_err(db("commit"))?;
                Ok(done.remove(0))
            }

            /// Enqueues a follower's page in one transaction: each item (and
            /// the escalation chain it starts, with the id it got), then the
            /// feed cursor, so a crash keeps all of it or none. With the
            /// engine's writer attached, that transaction is the writer's
            /// next group commit (no write transaction of its own).
            pub async fn enqueue_many(&self, items: &[(NewNotification, Option<Escalation>)], now_ms: i64, cursor: Option<(&str, i64)>) -> Result<Vec<Enqueued>, Error> {
                let bodies = check_page(items)?;
                let open_count: i64 = sqlx::query_scalar(OPEN_COUNT_SQL)
                    .fetch_one(&self.pool).await.map_err(db("count open notifications"))?;
                if open_count + items.len() as i64 > limits::MAX_OUTBOX_OPEN {
                    return Err(Error::Full { open: open_count, limit: limits::MAX_OUTBOX_OPEN });
                }
                if let Some(w) = &self.writer {
                    let op = Op::Page { items: items.to_vec(), bodies, now_ms, cursor: cursor.map(|(n, g)| (n.to_string(), g)) };
                    return match through_writer(w, op).await? {
                        Done::Page(v) => Ok(v),
                        other => Err(Error::Writer(format!("answered a page with {other:?}"))),
                    };
                }
                let mut tx = self.begin().await?;
                let out = Self::page_on(&mut tx, items, &bodies, now_ms, cursor).await?;
                tx.commit().await.map_err(db("commit"))?;
                Ok(out)
            }

            /// A page's writes: its items in chunks of a few statements each
            /// (not three per item), the chains they start, the cursor.
            /// `bodies`: each item's message as [`check_page`] serialized and checked it.
            async fn page_on(conn: &mut <<$ty as HasDb>::Db as sqlx::Database>::Connection, items: &[(NewNotification, Option<Escalation>)], bodies: &[String], now_ms: i64, cursor: Option<(&str, i64)>) -> Result<Vec<Enqueued>, Error> {
                let mut out = Vec::with_capacity(items.len());
                // The open count is read once per page and kept up to date here.
                let mut open_now = None;
                for (chunk, bodies) in items.chunks(PAGE_ROWS_PER_STATEMENT).zip(bodies.chunks(PAGE_ROWS_PER_STATEMENT)) {
                    out.extend(Self::chunk_on(&mut *conn, chunk, bodies, now_ms, &mut open_now).await?);
                }
                // The chains, one per notification (the first item's).
                let chains = page::chains(items, &out);
                for chunk in chains.chunks(PAGE_ROWS_PER_STATEMENT) {
                    let mut qb = sqlx::QueryBuilder::<<$ty as HasDb>::Db>::new(
                        "INSERT INTO routing_escalations (notification_id, task_id, about_seq, chain, started_at_ms, fired_steps, next_due_at_ms) ");
                    qb.push_values(chunk, |mut b, (id, e)| {
                        b.push_bind(*id).push_bind(e.task_id.as_str()).push_bind(e.about_seq).push_bind(e.chain.as_str())
                            .push_bind(e.started_at_ms).push_bind(e.fired_steps).push_bind(e.next_due_at_ms);
                    });
                    qb.push(" ON CONFLICT (notification_id) DO NOTHING");
                    qb.build().execute(&mut *conn).await.map_err(db("start escalations"))?;
                }
                if let Some((name, gseq)) = cursor {
                    sqlx::query("INSERT INTO routing_cursor (name, gseq) VALUES ($1, $2)
                                 ON CONFLICT (name) DO UPDATE SET gseq = excluded.gseq")
                        .bind(name).bind(gseq).execute(&mut *conn).await.map_err(db("move the routing cursor"))?;
                }
                Ok(out)
            }

            /// Up to [`PAGE_ROWS_PER_STATEMENT`] items: one insert of the
            /// items (which says which are new), one read of their groups'
            /// open notifications, the grouping in memory, then one write
            /// per kind of change (groups grown or closed, notifications
            /// opened, items moved into a group). A key seen before, in this
            /// chunk or earlier, is a duplicate and changes nothing.
            /// `open_now`: the number of open notifications, once read.
            async fn chunk_on(conn: &mut <<$ty as HasDb>::Db as sqlx::Database>::Connection, items: &[page::Item], bodies: &[String], now_ms: i64, open_now: &mut Option<i64>) -> Result<Vec<Enqueued>, Error> {
                use std::collections::{HashMap, HashSet};
                let keys = page::ChunkKeys::of(items);
                let mut qb = sqlx::QueryBuilder::<<$ty as HasDb>::Db>::new("INSERT INTO notification_items (item_key, notification_id, added_at_ms) ");
                qb.push_values(&keys.firsts, |mut b, &i| {
                    b.push_bind(items[i].0.item_key.as_str()).push_bind(keys.fresh_ids[i].as_str()).push_bind(now_ms);
                });
                qb.push(" ON CONFLICT (item_key) DO NOTHING RETURNING item_key");
                let inserted: HashSet<String> = qb.build_query_scalar::<String>().fetch_all(&mut *conn).await
                    .map_err(db("record the notification items"))?.into_iter().collect();
                let (fresh, known) = keys.split(items, &inserted);
                // Keys enqueued before: the notification each went into.
                let mut known_ids: HashMap<String, String> = HashMap::new();
                if !known.is_empty() {
                    let mut qb = sqlx::QueryBuilder::<<$ty as HasDb>::Db>::new("SELECT item_key, notification_id FROM notification_items WHERE item_key IN (");
                    let mut list = qb.separated(", ");
                    for &i in &known {
                        list.push_bind(items[i].0.item_key.as_str());
                    }
                    qb.push(")");
                    for r in qb.build().fetch_all(&mut *conn).await.map_err(db("read the notification items"))? {
                        let c = |e: sqlx::Error| Error::Corrupt(e.to_string());
                        known_ids.insert(r.try_get("item_key").map_err(c)?, r.try_get("notification_id").map_err(c)?);
                    }
                }
                // The open notifications of the new items' groups.
                let mut open = Vec::new();
                let group_keys = page::group_keys(items, &fresh);
                if !group_keys.is_empty() {
                    let mut qb = sqlx::QueryBuilder::<<$ty as HasDb>::Db>::new(
                        "SELECT n.id, n.group_key, b.body, n.item_count FROM notifications n JOIN notification_bodies b ON b.id = n.id
                         WHERE n.status = 'pending' AND n.attempt = 0 AND n.lease_owner IS NULL AND n.group_key IN (");
                    let mut list = qb.separated(", ");
                    for k in &group_keys {
                        list.push_bind(*k);
                    }
                    qb.push(concat!(") ", $lock_read));
                    for r in qb.build().fetch_all(&mut *conn).await.map_err(db("find the open groups"))? {
                        let c = |e: sqlx::Error| Error::Corrupt(e.to_string());
                        let group = page::PageGroup::open(r.try_get("id").map_err(c)?, r.try_get("body").map_err(c)?, r.try_get("item_count").map_err(c)?)?;
                        open.push((r.try_get("group_key").map_err(c)?, group));
                    }
                }
                let plan = page::group_chunk(items, bodies, &keys, &fresh, &known_ids, open)?;
                if plan.opened > 0 {
                    // Read once per page, then kept up to date here.
                    let before = match *open_now {
                        Some(n) => n,
                        None => sqlx::query_scalar(OPEN_COUNT_SQL).fetch_one(&mut *conn).await.map_err(db("count open notifications"))?,
                    };
                    *open_now = Some(plan.check_open(before)?);
                }
                // Groups that were open before: grown, or closed when full
                // (before any new row of the same group is inserted).
                let old: Vec<&page::PageGroup> = plan.grown_or_closed().collect();
                for chunk in old.chunks(PAGE_ROWS_PER_STATEMENT) {
                    let mut qb = sqlx::QueryBuilder::<<$ty as HasDb>::Db>::new("WITH v (id, n, status) AS (");
                    qb.push_values(chunk, |mut b, g| {
                        b.push_bind(g.id.as_str()).push_bind(g.count).push_bind(g.status());
                    });
                    qb.push(") UPDATE notifications SET item_count = v.n, status = v.status
                             FROM v WHERE notifications.id = v.id");
                    qb.build().execute(&mut *conn).await.map_err(db("group the notifications"))?;
                    let grown: Vec<&&page::PageGroup> = chunk.iter().filter(|g| g.grown).collect();
                    if !grown.is_empty() {
                        let mut qb = sqlx::QueryBuilder::<<$ty as HasDb>::Db>::new("WITH v (id, body) AS (");
                        qb.push_values(grown, |mut b, g| {
                            b.push_bind(g.id.as_str()).push_bind(g.body.as_str());
                        });
                        qb.push(") UPDATE notification_bodies SET body = v.body FROM v WHERE notification_bodies.id = v.id");
                        qb.build().execute(&mut *conn).await.map_err(db("group the notifications' bodies"))?;
                    }
                }
                let new: Vec<&page::PageGroup> = plan.opening().collect();
                for chunk in new.chunks(PAGE_ROWS_PER_STATEMENT) {
                    let mut qb = sqlx::QueryBuilder::<<$ty as HasDb>::Db>::new(
                        "INSERT INTO notifications (id, group_key, task_id, recipient, sink, address, item_count, status,
                            attempt, max_attempts, created_at_ms, next_attempt_at_ms) ");
                    qb.push_values(chunk, |mut b, g| {
                        let n = &items[g.first.expect("a new group")].0;
                        b.push_bind(g.id.as_str()).push_bind(n.group_key.as_str()).push_bind(n.task_id.as_str())
                            .push_bind(n.recipient.as_str()).push_bind(n.sink.as_str()).push_bind(n.address.as_deref())
                            .push_bind(g.count).push_bind(g.status()).push_bind(0i64)
                            .push_bind(limits::MAX_ATTEMPTS as i64).push_bind(now_ms).push_bind(n.send_at_ms);
                    });
                    qb.build().execute(&mut *conn).await.map_err(db("insert the notifications"))?;
                    let mut qb = sqlx::QueryBuilder::<<$ty as HasDb>::Db>::new("INSERT INTO notification_bodies (id, body) ");
                    qb.push_values(chunk, |mut b, g| {
                        b.push_bind(g.id.as_str()).push_bind(g.body.as_str());
                    });
                    qb.build().execute(&mut *conn).await.map_err(db("insert the notifications' bodies"))?;
                }
                // Items that joined a group other than their own id's.
                for chunk in plan.regrouped.chunks(PAGE_ROWS_PER_STATEMENT) {
                    let mut qb = sqlx::QueryBuilder::<<$ty as HasDb>::Db>::new("WITH v (k, nid) AS (");
                    qb.push_values(chunk, |mut b, &(i, g)| {
                        b.push_bind(items[i].0.item_key.as_str()).push_bind(plan.groups[g].id.as_str());
                    });
                    qb.push(") UPDATE notification_items SET notification_id = v.nid
                             FROM v WHERE notification_items.item_key = v.k");
                    qb.build().execute(&mut *conn).await.map_err(db("record the grouped items"))?;
                }
                Ok(plan.done)
            }

            pub async fn claim(&self, worker: &str, now_ms: i64, lease_ms: i64, limit: i64) -> Result<Vec<Claimed>, Error> {
                if let Some(w) = &self.writer {
                    let op = Op::Claim { worker: worker.to_string(), now_ms, lease_ms, limit };
                    return match through_writer(w, op).await? {
                        Done::Claim(v) => Ok(v),
                        other => Err(Error::Writer(format!("answered a claim with {other:?}"))),
                    };
                }
                let mut conn = self.pool.acquire().await.map_err(db("claim due notifications"))?;
                Self::claim_on(&mut conn, worker, now_ms, lease_ms, limit).await
            }

            async fn claim_on(conn: &mut <<$ty as HasDb>::Db as sqlx::Database>::Connection, worker: &str, now_ms: i64, lease_ms: i64, limit: i64) -> Result<Vec<Claimed>, Error> {
                let rows = sqlx::query(claim_sql!($lock))
                    .bind(worker).bind(now_ms + lease_ms).bind(now_ms).bind(limit.clamp(1, 1000))
                    .fetch_all(&mut *conn).await.map_err(db("claim due notifications"))?;
                if rows.is_empty() {
                    return Ok(Vec::new());
                }
                let mut qb = sqlx::QueryBuilder::<<$ty as HasDb>::Db>::new("SELECT id, body FROM notification_bodies WHERE id IN (");
                let mut list = qb.separated(", ");
                for r in &rows {
                    list.push_bind(r.try_get::<String, _>("id").map_err(|e| Error::Corrupt(e.to_string()))?);
                }
                qb.push(")");
                let mut bodies: std::collections::HashMap<String, String> = qb.build_query_as::<(String, String)>()
                    .fetch_all(&mut *conn).await.map_err(db("read the claimed notifications' bodies"))?
                    .into_iter().collect();
                rows.iter()
                    .map(|r| {
                        let c = |e: sqlx::Error| Error::Corrupt(e.to_string());
                        let id: String = r.try_get("id").map_err(c)?;
                        let body = bodies.remove(&id).ok_or_else(|| Error::Corrupt(format!("notification {id} has no body")))?;
                        Ok(Claimed {
                            id,
                            attempt: r.try_get("attempt").map_err(c)?,
                            recipient: r.try_get("recipient").map_err(c)?,
                            sink: r.try_get("sink").map_err(c)?,
                            address: r.try_get("address").map_err(c)?,
                            message: serde_json::from_str(&body).map_err(|e| Error::Corrupt(e.to_string()))?,
                        })
                    })
                    .collect()
            }

            /// Records an attempt's outcome, fenced on the lease: returns false
            /// (and writes nothing) if another worker holds the row now.
            pub async fn finish(&self, id: &str, worker: &str, attempt: i64, now_ms: i64, outcome: &Result<(), DeliveryError>) -> Result<bool, Error> {
                Ok(self.finish_many(&[Finished { id: id.to_string(), worker: worker.to_string(), attempt, now_ms, outcome: outcome.clone() }]).await?[0])
            }

            /// Records a batch of attempts' outcomes in one transaction.
            pub async fn finish_many(&self, done: &[Finished]) -> Result<Vec<bool>, Error> {
                if let Some(w) = &self.writer {
                    return match through_writer(w, Op::Finish(done.to_vec())).await? {
                        Done::Finish(v) => Ok(v),
                        other => Err(Error::Writer(format!("answered outcomes with {other:?}"))),
                    };
                }
                let mut tx = self.begin().await?;
                let out = Self::finish_on(&mut tx, done).await?;
                tx.commit().await.map_err(db("commit"))?;
                Ok(out)
            }

            async fn finish_on(tx: &mut <<$ty as HasDb>::Db as sqlx::Database>::Connection, done: &[Finished]) -> Result<Vec<bool>, Error> {
                let mut out = vec![false; done.len()];
                // Deliveries that succeeded (nearly all): one fenced update and
                // one insert of their attempts per chunk, not two statements each.
                let sent: Vec<usize> = (0..done.len()).filter(|&i| done[i].outcome.is_ok()).collect();
                for chunk in sent.chunks(FINISH_ROWS_PER_STATEMENT) {
                    let mut qb = sqlx::QueryBuilder::<<$ty as HasDb>::Db>::new("WITH v (id, worker, attempt, at) AS (");
                    qb.push_values(chunk, |mut b, &i| {
                        let f = &done[i];
                        b.push_bind(f.id.clone()).push_bind(f.worker.clone()).push_bind(f.attempt).push_bind(f.now_ms);
                    });
                    qb.push(") UPDATE notifications SET status = 'sent', next_attempt_at_ms = NULL, last_error = NULL,
                                sent_at_ms = v.at, lease_owner = NULL, lease_expires_at_ms = NULL
                             FROM v WHERE notifications.id = v.id AND notifications.lease_owner = v.worker
                                 AND notifications.attempt = v.attempt
                             RETURNING notifications.id");
                    let updated: Vec<String> = qb.build_query_scalar().fetch_all(&mut *tx).await.map_err(db("record the deliveries"))?;
                    let updated: std::collections::HashSet<String> = updated.into_iter().collect();
                    let mine: Vec<usize> = chunk.iter().copied().filter(|&i| updated.contains(&done[i].id)).collect();
                    if mine.is_empty() {
                        continue;
                    }
                    let mut qb = sqlx::QueryBuilder::<<$ty as HasDb>::Db>::new(
                        "INSERT INTO notification_attempts (notification_id, attempt, worker, finished_at_ms, outcome, error) ",
                    );
                    qb.push_values(&mine, |mut b, &i| {
                        let f = &done[i];
                        b.push_bind(f.id.clone()).push_bind(f.attempt).push_bind(f.worker.clone()).push_bind(f.now_ms)
                            .push_bind("sent").push_bind(None::<String>);
                    });
                    qb.push(" ON CONFLICT (notification_id, attempt) DO NOTHING");
                    qb.build().execute(&mut *tx).await.map_err(db("record the attempts"))?;
                    for i in mine {
                        out[i] = true;
                    }
                }
                for (i, f) in done.iter().enumerate() {
                    let (id, worker, attempt, now_ms, outcome) = (&f.id, &f.worker, f.attempt, f.now_ms, &f.outcome);
                    let Err(e) = outcome else { continue };
                    let (status, next) = after_failure(e, attempt, now_ms);
                    let n = sqlx::query(FAILED_SQL)
                    .bind(id).bind(worker).bind(attempt).bind(status).bind(next).bind(&e.message)
                    .execute(&mut *tx).await.map_err(db("record the delivery"))?
                    .rows_affected();
                    if n == 0 {
                        continue;
                    }
                    sqlx::query(FAILED_ATTEMPT_SQL)
                    .bind(id).bind(attempt).bind(worker).bind(now_ms).bind(&e.message)
                    .execute(&mut *tx).await.map_err(db("record the attempt"))?;
                    out[i] = true;
                }
                Ok(out)
            }

            pub async fn get(&self, id: &str) -> Result<Option<NotificationRow>, Error> {
                let row = sqlx::query(
                    "SELECT n.id, n.status, n.attempt, n.item_count, n.next_attempt_at_ms, n.sent_at_ms, n.last_error, b.body
                     FROM notifications n JOIN notification_bodies b ON b.id = n.id WHERE n.id = $1",
                )
                .bind(id).fetch_optional(&self.pool).await.map_err(db("read a notification"))?;
                row.map(|r| {
                    let c = |e: sqlx::Error| Error::Corrupt(e.to_string());
                    Ok(NotificationRow {
                        id: r.try_get("id").map_err(c)?,
                        status: r.try_get("status").map_err(c)?,
                        attempt: r.try_get("attempt").map_err(c)?,
                        item_count: r.try_get("item_count").map_err(c)?,
                        next_attempt_at_ms: r.try_get("next_attempt_at_ms").map_err(c)?,
                        sent_at_ms: r.try_get("sent_at_ms").map_err(c)?,
                        last_error: r.try_get("last_error").map_err(c)?,
                        body: r.try_get("body").map_err(c)?,
                    })
                })
                .transpose()
            }

            pub async fn cursor(&self, name: &str) -> Result<i64, Error> {
                let v: Option<i64> = sqlx::query_scalar("SELECT gseq FROM routing_cursor WHERE name = $1")
                    .bind(name).fetch_optional(&self.pool).await.map_err(db("read the routing cursor"))?;
                Ok(v.unwrap_or(0))
            }

            pub async fn set_cursor(&self, name: &str, gseq: i64) -> Result<(), Error> {
                sqlx::query("INSERT INTO routing_cursor (name, gseq) VALUES ($1, $2)
                             ON CONFLICT (name) DO UPDATE SET gseq = excluded.gseq")
                    .bind(name).bind(gseq).execute(&self.pool).await.map_err(db("move the routing cursor"))?;
                Ok(())
            }

            pub async fn locate(&self, id: &str) -> Result<Option<Located>, Error> {
                // Every item (a group holds at most MAX_GROUP_ITEMS), oldest first.
                let rows = sqlx::query(
                    "SELECT n.task_id, n.recipient, n.status, n.sent_at_ms, n.created_at_ms, i.item_key, i.added_at_ms
                     FROM notifications n JOIN notification_items i ON i.notification_id = n.id
                     WHERE n.id = $1 ORDER BY i.added_at_ms LIMIT $2",
                )
                .bind(id).bind(limits::MAX_GROUP_ITEMS + 1)
                .fetch_all(&self.pool).await.map_err(db("find a notification"))?;
                let Some(r) = rows.first() else { return Ok(None) };
                let c = |e: sqlx::Error| Error::Corrupt(e.to_string());
                let mut keyed = rows
                    .iter()
                    .map(|r| Ok((r.try_get::<i64, _>("added_at_ms").map_err(c)?, r.try_get::<String, _>("item_key").map_err(c)?)))
                    .collect::<Result<Vec<_>, Error>>()?;
                // The item the notification was made for first (its id comes
                // from that key), then the rest as they were added, by seq
                // within the same millisecond.
                keyed.sort_by_cached_key(|(at, key)| {
                    (notification_id(key) != id, *at, item_about(key).map(|(_, seq)| seq), key.clone())
                });
                let items: Vec<String> = keyed.into_iter().map(|(_, k)| k).collect();
                Ok(Some(Located {
                    id: id.to_string(),
                    task_id: r.try_get("task_id").map_err(c)?,
                    recipient: r.try_get("recipient").map_err(c)?,
                    status: r.try_get("status").map_err(c)?,
                    sent_at_ms: r.try_get("sent_at_ms").map_err(c)?,
                    created_at_ms: r.try_get("created_at_ms").map_err(c)?,
                    items,
                }))
            }

            /// The notification an item was enqueued into (its own, or its group's).
            pub async fn item_notification(&self, item_key: &str) -> Result<Option<String>, Error> {
                sqlx::query_scalar("SELECT notification_id FROM notification_items WHERE item_key = $1")
                    .bind(item_key).fetch_optional(&self.pool).await.map_err(db("read the notification item"))
            }

            pub async fn start_escalation(&self, e: &Escalation) -> Result<(), Error> {
                sqlx::query(
                    "INSERT INTO routing_escalations (notification_id, task_id, about_seq, chain, started_at_ms, fired_steps, next_due_at_ms)
                     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (notification_id) DO NOTHING",
                )
                .bind(&e.notification_id).bind(&e.task_id).bind(e.about_seq).bind(&e.chain)
                .bind(e.started_at_ms).bind(e.fired_steps).bind(e.next_due_at_ms)
                .execute(&self.pool).await.map_err(db("start an escalation"))?;
                Ok(())
            }

            pub async fn due_escalations(&self, now_ms: i64, limit: i64) -> Result<Vec<Escalation>, Error> {
                let rows = sqlx::query(
                    "SELECT notification_id, task_id, about_seq, chain, started_at_ms, fired_steps, next_due_at_ms
                     FROM routing_escalations WHERE next_due_at_ms <= $1 ORDER BY next_due_at_ms LIMIT $2",
                )
                .bind(now_ms).bind(limit.clamp(1, 1000)).fetch_all(&self.pool).await.map_err(db("find due escalations"))?;
                rows.iter().map(|r| {
                    let c = |e: sqlx::Error| Error::Corrupt(e.to_string());
                    Ok(Escalation {
                        notification_id: r.try_get("notification_id").map_err(c)?,
                        task_id: r.try_get("task_id").map_err(c)?,
                        about_seq: r.try_get("about_seq").map_err(c)?,
                        chain: r.try_get("chain").map_err(c)?,
                        started_at_ms: r.try_get("started_at_ms").map_err(c)?,
                        fired_steps: r.try_get("fired_steps").map_err(c)?,
                        next_due_at_ms: r.try_get("next_due_at_ms").map_err(c)?,
                    })
                }).collect()
            }

            /// Moves a chain on (fenced on the steps fired so far): false if another ticker did.
            pub async fn advance_escalation(&self, id: &str, fired_before: i64, fired_now: i64, next_due_at_ms: Option<i64>) -> Result<bool, Error> {
                let n = sqlx::query(
                    "UPDATE routing_escalations SET fired_steps = $3, next_due_at_ms = $4
                     WHERE notification_id = $1 AND fired_steps = $2 AND acked_at_ms IS NULL",
                )
                .bind(id).bind(fired_before).bind(fired_now).bind(next_due_at_ms)
                .execute(&self.pool).await.map_err(db("advance an escalation"))?
                .rows_affected();
                Ok(n == 1)
            }

            /// Stops every chain of a task's routed event: someone acknowledged.
            pub async fn stop_escalations(&self, task_id: &str, about_seq: i64, by: &str, now_ms: i64) -> Result<u64, Error> {
                let n = sqlx::query(
                    "UPDATE routing_escalations SET acked_at_ms = $3, acked_by = $4, next_due_at_ms = NULL
                     WHERE task_id = $1 AND about_seq = $2 AND acked_at_ms IS NULL",
                )
                .bind(task_id).bind(about_seq).bind(now_ms).bind(by)
                .execute(&self.pool).await.map_err(db("stop escalations"))?
                .rows_affected();
                Ok(n)
            }

            pub async fn consume_link(&self, token: &str, claim: &LinkClaim, now_ms: i64) -> Result<(), Error> {
                let n = sqlx::query(
                    "INSERT INTO notification_link_uses (use_key, notification_id, recipient, action, used_at_ms)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (use_key) DO NOTHING",
                )
                .bind(crate::links::use_key(token)).bind(&claim.notification_id).bind(&claim.recipient).bind(&claim.action).bind(now_ms)
                .execute(&self.pool).await.map_err(db("consume the link"))?
                .rows_affected();
                if n == 1 { Ok(()) } else { Err(LinkError::AlreadyUsed.into()) }
            }
        }
    };
}

/// Each item's body, serialized once here; refuses a page with a body over
/// the limit before anything is written.
fn check_page(items: &[(NewNotification, Option<Escalation>)]) -> Result<Vec<String>, Error> {
    items
        .iter()
        .map(|(n, _)| {
            let body = serde_json::to_string(&n.message).expect("JSON");
            if body.len() > limits::MAX_PAYLOAD_BYTES {
                return Err(Error::TooLarge {
                    bytes: body.len(),
                    limit: limits::MAX_PAYLOAD_BYTES,
                });
            }
            Ok(body)
        })
        .collect()
}

pub(crate) fn to_store(e: Error) -> mandate_engine::store::Error {
    match e {
        Error::Db { what, source } => mandate_engine::store::Error::db(what)(source),
        other => mandate_engine::store::Error::Corrupt(other.to_string()),
    }
}

/// An outbox write the engine's writer runs inside its group-commit
/// transaction (see [`Outbox::with_writer`]).
#[derive(Debug)]
enum Op {
    /// A follower's page: its items (and chains), then the cursor.
    Page {
        items: Vec<(NewNotification, Option<Escalation>)>,
        /// Each item's body, serialized and checked by `check_page`.
        bodies: Vec<String>,
        now_ms: i64,
        cursor: Option<(String, i64)>,
    },
    /// A delivery worker's claim.
    Claim {
        worker: String,
        now_ms: i64,
        lease_ms: i64,
        limit: i64,
    },
    /// A delivery worker's batch of outcomes.
    Finish(Vec<Finished>),
}

#[derive(Debug)]
enum Done {
    Page(Vec<Enqueued>),
    Claim(Vec<Claimed>),
    Finish(Vec<bool>),
}

#[derive(Debug)]
struct OutboxWrite {
    op: Op,
    done: Mutex<Option<Done>>,
}

macro_rules! run_op {
    ($ty:ty, $self:ident, $conn:ident) => {{
        let done = match &$self.op {
            Op::Page {
                items,
                bodies,
                now_ms,
                cursor,
            } => {
                let cursor = cursor.as_ref().map(|(n, g)| (n.as_str(), *g));
                Done::Page(
                    <$ty>::page_on($conn, items, bodies, *now_ms, cursor)
                        .await
                        .map_err(to_store)?,
                )
            }
            Op::Claim {
                worker,
                now_ms,
                lease_ms,
                limit,
            } => Done::Claim(
                <$ty>::claim_on($conn, worker, *now_ms, *lease_ms, *limit)
                    .await
                    .map_err(to_store)?,
            ),
            Op::Finish(f) => Done::Finish(<$ty>::finish_on($conn, f).await.map_err(to_store)?),
        };
        *$self.done.lock().unwrap_or_else(|p| p.into_inner()) = Some(done);
        Ok(true)
    }};
}

impl ExtraWrite for OutboxWrite {
    fn on_sqlite_direct(
        &self,
        conn: &rusqlite::Connection,
    ) -> Option<Result<bool, mandate_engine::store::Error>> {
        let done = match &self.op {
            Op::Page {
                items,
                bodies,
                now_ms,
                cursor,
            } => crate::outbox_sqlite::page(
                conn,
                items,
                bodies,
                *now_ms,
                cursor.as_ref().map(|(n, g)| (n.as_str(), *g)),
            )
            .map(Done::Page),
            Op::Claim {
                worker,
                now_ms,
                lease_ms,
                limit,
            } => crate::outbox_sqlite::claim(conn, worker, *now_ms, *lease_ms, *limit)
                .map(Done::Claim),
            Op::Finish(f) => crate::outbox_sqlite::finish(conn, f).map(Done::Finish),
        };
        Some(done.map(|done| {
            *self.done.lock().unwrap_or_else(|p| p.into_inner()) = Some(done);
            true
        }))
    }

    fn on_sqlite<'a>(
        &'a self,
        conn: &'a mut sqlx::SqliteConnection,
    ) -> BoxFuture<'a, Result<bool, mandate_engine::store::Error>> {
        Box::pin(async move { run_op!(SqliteOutbox, self, conn) })
    }
    fn on_postgres<'a>(
        &'a self,
        conn: &'a mut sqlx::PgConnection,
    ) -> BoxFuture<'a, Result<bool, mandate_engine::store::Error>> {
        Box::pin(async move { run_op!(PgOutbox, self, conn) })
    }
}

/// Runs `op` inside the engine writer's next transaction; what it did.
async fn through_writer(writer: &Arc<dyn Store>, op: Op) -> Result<Done, Error> {
    let write = Arc::new(OutboxWrite {
        op,
        done: Mutex::new(None),
    });
    writer
        .write_extra(write.clone())
        .await
        .map_err(|e| Error::Writer(e.to_string()))?;
    let done = write.done.lock().unwrap_or_else(|p| p.into_inner()).take();
    done.ok_or_else(|| Error::Writer("the writer did not run the outbox's write".into()))
}

trait HasDb {
    type Db: sqlx::Database;
}
impl HasDb for SqliteOutbox {
    type Db = sqlx::Sqlite;
}
impl HasDb for PgOutbox {
    type Db = sqlx::Postgres;
}

macro_rules! outbox_begin {
    (begin_with, $self:ident, $arg:expr) => {
        $self.pool.begin_with($arg).await.map_err(db("begin"))
    };
    (begin, $self:ident, $arg:expr) => {
        $self.pool.begin().await.map_err(db("begin"))
    };
}

// SQLite: one writer at a time, taken at BEGIN so a read-then-write
// transaction cannot fail to upgrade. PostgreSQL: rows are locked as read.
outbox_methods!(SqliteOutbox, "", "", begin_with, "BEGIN IMMEDIATE");
outbox_methods!(
    PgOutbox,
    "FOR UPDATE SKIP LOCKED",
    "FOR UPDATE OF n",
    begin,
    ()
);

macro_rules! dispatch {
    ($self:ident, $o:ident => $e:expr) => {
        match $self {
            Outbox::Sqlite($o) => $e,
            Outbox::Postgres($o) => $e,
        }
    };
}

/// Where a notification came from: its task, recipient, and item keys
/// (`task:seq:recipient:sink` for routed events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub id: String,
    pub task_id: String,
    pub recipient: String,
    pub status: String,
    pub sent_at_ms: Option<i64>,
    pub created_at_ms: i64,
    /// Every item key the notification holds (more than one when grouped):
    /// first the item it was made for, then the rest as they were added.
    pub items: Vec<String>,
}

impl Located {
    /// The seq of the routed event, from an engine item key.
    pub fn about_seq(&self) -> Option<i64> {
        item_about(self.items.first()?).map(|(_, seq)| seq)
    }

    /// The task and seq of every item (engine item keys), in order, each
    /// once.
    pub fn abouts(&self) -> Vec<(String, i64)> {
        let mut out: Vec<(String, i64)> = Vec::new();
        for k in &self.items {
            if let Some((task, seq)) = item_about(k)
                && !out.iter().any(|(t, s)| *t == task && *s == seq)
            {
                out.push((task, seq));
            }
        }
        out
    }
}

/// The task and seq an engine item key (`task:seq:recipient:sink`) is about.
fn item_about(key: &str) -> Option<(String, i64)> {
    let mut parts = key.split(':');
    let task = parts.next()?.to_string();
    let seq = parts.next()?.parse().ok()?;
    Some((task, seq))
}

/// An escalation chain following one notification until someone acknowledges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Escalation {
    pub notification_id: String,
    pub task_id: String,
    pub about_seq: i64,
    pub chain: String,
    pub started_at_ms: i64,
    /// Steps fired so far, counting the first (sent with the notification).
    pub fired_steps: i64,
    pub next_due_at_ms: Option<i64>,
}

impl Outbox {
    pub async fn cursor(&self, name: &str) -> Result<i64, Error> {
        dispatch!(self, o => o.cursor(name).await)
    }
    pub async fn set_cursor(&self, name: &str, gseq: i64) -> Result<(), Error> {
        dispatch!(self, o => o.set_cursor(name, gseq).await)
    }
    /// The notification's task, recipient and item key.
    pub async fn locate(&self, id: &str) -> Result<Option<Located>, Error> {
        dispatch!(self, o => o.locate(id).await)
    }
    /// The notification an item was enqueued into (its own, or its group's).
    pub async fn item_notification(&self, item_key: &str) -> Result<Option<String>, Error> {
        dispatch!(self, o => o.item_notification(item_key).await)
    }
    pub async fn start_escalation(&self, e: &Escalation) -> Result<(), Error> {
        dispatch!(self, o => o.start_escalation(e).await)
    }
    pub async fn due_escalations(&self, now_ms: i64, limit: i64) -> Result<Vec<Escalation>, Error> {
        dispatch!(self, o => o.due_escalations(now_ms, limit).await)
    }
    pub async fn advance_escalation(
        &self,
        id: &str,
        fired_before: i64,
        fired_now: i64,
        next_due_at_ms: Option<i64>,
    ) -> Result<bool, Error> {
        dispatch!(self, o => o.advance_escalation(id, fired_before, fired_now, next_due_at_ms).await)
    }
    pub async fn stop_escalations(
        &self,
        task_id: &str,
        about_seq: i64,
        by: &str,
        now_ms: i64,
    ) -> Result<u64, Error> {
        dispatch!(self, o => o.stop_escalations(task_id, about_seq, by, now_ms).await)
    }

    /// Opens the outbox in the database a URL names (`sqlite://…` or
    /// `postgres://…`) and applies the schema (the engine's migrations).
    pub async fn open(url: &str) -> Result<Outbox, Error> {
        let bad = |reason: String| Error::Open {
            url: url.to_string(),
            reason,
        };
        if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)
                .map_err(|e| bad(e.to_string()))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(std::time::Duration::from_secs(10));
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(opts)
                .await
                .map_err(|e| bad(e.to_string()))?;
            SQLITE_MIGRATOR
                .run(&pool)
                .await
                .map_err(|e| bad(e.to_string()))?;
            Ok(Outbox::Sqlite(SqliteOutbox { pool, writer: None }))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(4)
                .connect(url)
                .await
                .map_err(|e| bad(e.to_string()))?;
            PG_MIGRATOR
                .run(&pool)
                .await
                .map_err(|e| bad(e.to_string()))?;
            Ok(Outbox::Postgres(PgOutbox { pool, writer: None }))
        } else {
            Err(bad("unknown scheme; use sqlite:// or postgres://".into()))
        }
    }

    /// Adds a notification, or folds it into its group's open one.
    pub async fn enqueue(&self, n: &NewNotification, now_ms: i64) -> Result<Enqueued, Error> {
        dispatch!(self, o => o.enqueue(n, now_ms).await)
    }
    /// Takes up to `limit` due deliveries under a lease until `now_ms + lease_ms`.
    pub async fn claim(
        &self,
        worker: &str,
        now_ms: i64,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<Claimed>, Error> {
        dispatch!(self, o => o.claim(worker, now_ms, lease_ms, limit).await)
    }
    /// Records an attempt's outcome (fenced on the lease and attempt).
    pub async fn finish(
        &self,
        id: &str,
        worker: &str,
        attempt: i64,
        now_ms: i64,
        outcome: &Result<(), DeliveryError>,
    ) -> Result<bool, Error> {
        dispatch!(self, o => o.finish(id, worker, attempt, now_ms, outcome).await)
    }
    /// Writes pages and delivery outcomes inside the engine's group-commit
    /// transactions (`Store::write_extra`) instead of transactions of their
    /// own: on SQLite they no longer contend with the engine for the one
    /// write lock, and on both stores they share its commit. `store` must be
    /// the engine's store on this same database.
    pub fn with_writer(self, store: Arc<dyn Store>) -> Outbox {
        match self {
            Outbox::Sqlite(o) => Outbox::Sqlite(SqliteOutbox {
                writer: Some(store),
                ..o
            }),
            Outbox::Postgres(o) => Outbox::Postgres(PgOutbox {
                writer: Some(store),
                ..o
            }),
        }
    }
    /// Enqueues many (with the chains they start) and moves the feed
    /// cursor, in one transaction.
    pub async fn enqueue_many(
        &self,
        items: &[(NewNotification, Option<Escalation>)],
        now_ms: i64,
        cursor: Option<(&str, i64)>,
    ) -> Result<Vec<Enqueued>, Error> {
        dispatch!(self, o => o.enqueue_many(items, now_ms, cursor).await)
    }
    /// Records many attempts' outcomes in one transaction (each fenced).
    pub async fn finish_many(&self, done: &[Finished]) -> Result<Vec<bool>, Error> {
        dispatch!(self, o => o.finish_many(done).await)
    }
    pub async fn get(&self, id: &str) -> Result<Option<NotificationRow>, Error> {
        dispatch!(self, o => o.get(id).await)
    }
    /// Marks a verified link used; a second use is `LinkError::AlreadyUsed`.
    /// Atomic: of two concurrent uses exactly one succeeds.
    pub async fn consume_link(
        &self,
        token: &str,
        claim: &LinkClaim,
        now_ms: i64,
    ) -> Result<(), Error> {
        dispatch!(self, o => o.consume_link(token, claim, now_ms).await)
    }
}

/// A notification as the console's coordination page lists it: its delivery
/// state and, when an escalation chain follows it, where the chain stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationState {
    pub id: String,
    pub task_id: String,
    pub recipient: String,
    pub sink: String,
    /// `pending`, `pending_full`, `sending`, `sent` or `failed`.
    pub status: String,
    pub attempt: i64,
    pub created_at_ms: i64,
    pub sent_at_ms: Option<i64>,
    pub last_error: Option<String>,
    /// The stored message (title, what happened, review due).
    pub message: Message,
    pub chain: Option<EscalationState>,
}

/// An escalation chain's standing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EscalationState {
    pub notification_id: String,
    pub task_id: String,
    pub chain: String,
    pub started_at_ms: i64,
    pub fired_steps: i64,
    pub next_due_at_ms: Option<i64>,
    pub acked_at_ms: Option<i64>,
    pub acked_by: Option<String>,
}

impl EscalationState {
    /// Nobody answered and its next step is due (or every step fired).
    pub fn overdue(&self, now_ms: i64) -> bool {
        self.acked_at_ms.is_none() && self.next_due_at_ms.is_none_or(|t| t <= now_ms)
    }
}

/// How many notifications are in each delivery status, and how the
/// escalation chains stand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoordinationCounts {
    /// `(status, count)`, by status.
    pub by_status: Vec<(String, i64)>,
    pub chains_open: i64,
    pub chains_escalated: i64,
    pub chains_overdue: i64,
    pub chains_acknowledged: i64,
}

/// The most rows one coordination read returns.
pub const MAX_OVERVIEW_ROWS: i64 = 500;

fn corrupt(e: sqlx::Error) -> Error {
    Error::Corrupt(e.to_string())
}

macro_rules! escalation_columns {
    () => {
        "e.notification_id AS e_notification_id, e.task_id AS e_task_id, e.chain AS e_chain,
    e.started_at_ms AS e_started_at_ms, e.fired_steps AS e_fired_steps, e.next_due_at_ms AS e_next_due_at_ms,
    e.acked_at_ms AS e_acked_at_ms, e.acked_by AS e_acked_by"
    };
}

// The coordination page's reads (the console): the newest notifications
// with their chains, the open chains oldest first, and the counts.
macro_rules! overview_methods {
    ($ty:ty) => {
        impl $ty {
            fn escalation_state(r: &<<$ty as HasDb>::Db as sqlx::Database>::Row) -> Result<Option<EscalationState>, Error> {
                let c = |e: sqlx::Error| Error::Corrupt(e.to_string());
                let chain: Option<String> = r.try_get("e_chain").map_err(c)?;
                let Some(chain) = chain else { return Ok(None) };
                Ok(Some(EscalationState {
                    notification_id: r.try_get("e_notification_id").map_err(c)?,
                    task_id: r.try_get("e_task_id").map_err(c)?,
                    chain,
                    started_at_ms: r.try_get("e_started_at_ms").map_err(c)?,
                    fired_steps: r.try_get("e_fired_steps").map_err(c)?,
                    next_due_at_ms: r.try_get("e_next_due_at_ms").map_err(c)?,
                    acked_at_ms: r.try_get("e_acked_at_ms").map_err(c)?,
                    acked_by: r.try_get("e_acked_by").map_err(c)?,
                }))
            }

            pub async fn recent_notifications(&self, limit: i64) -> Result<Vec<NotificationState>, Error> {
                let rows = sqlx::query(concat!(
                    "SELECT n.id, n.task_id, n.recipient, n.sink, n.status, n.attempt, n.created_at_ms, n.sent_at_ms,
                        n.last_error, b.body, ", escalation_columns!(), "
                     FROM notifications n JOIN notification_bodies b ON b.id = n.id
                     LEFT JOIN routing_escalations e ON e.notification_id = n.id
                     ORDER BY n.created_at_ms DESC, n.id DESC LIMIT $1"))
                    .bind(limit.clamp(1, MAX_OVERVIEW_ROWS))
                    .fetch_all(&self.pool).await.map_err(db("list notifications"))?;
                rows.iter()
                    .map(|r| {
                        let c = |e: sqlx::Error| Error::Corrupt(e.to_string());
                        let body: String = r.try_get("body").map_err(c)?;
                        let id: String = r.try_get("id").map_err(c)?;
                        Ok(NotificationState {
                            message: serde_json::from_str(&body)
                                .map_err(|e| Error::Corrupt(format!("notification {id}: {e}")))?,
                            id,
                            task_id: r.try_get("task_id").map_err(c)?,
                            recipient: r.try_get("recipient").map_err(c)?,
                            sink: r.try_get("sink").map_err(c)?,
                            status: r.try_get("status").map_err(c)?,
                            attempt: r.try_get("attempt").map_err(c)?,
                            created_at_ms: r.try_get("created_at_ms").map_err(c)?,
                            sent_at_ms: r.try_get("sent_at_ms").map_err(c)?,
                            last_error: r.try_get("last_error").map_err(c)?,
                            chain: Self::escalation_state(r)?,
                        })
                    })
                    .collect()
            }

            pub async fn open_escalations(&self, limit: i64) -> Result<Vec<EscalationState>, Error> {
                let rows = sqlx::query(concat!(
                    "SELECT ", escalation_columns!(), " FROM routing_escalations e
                     WHERE e.acked_at_ms IS NULL ORDER BY e.started_at_ms, e.notification_id LIMIT $1"))
                    .bind(limit.clamp(1, MAX_OVERVIEW_ROWS))
                    .fetch_all(&self.pool).await.map_err(db("list open escalations"))?;
                rows.iter()
                    .map(|r| Self::escalation_state(r)?.ok_or_else(|| Error::Corrupt("escalation without a chain".into())))
                    .collect()
            }

            pub async fn coordination_counts(&self, now_ms: i64) -> Result<CoordinationCounts, Error> {
                let by_status = sqlx::query(
                    "SELECT status, COUNT(*) AS n FROM notifications GROUP BY status ORDER BY status",
                )
                .fetch_all(&self.pool).await.map_err(db("count notifications"))?
                .iter()
                .map(|r| Ok((r.try_get::<String, _>("status").map_err(corrupt)?, r.try_get::<i64, _>("n").map_err(corrupt)?)))
                .collect::<Result<Vec<_>, Error>>()?;
                let r = sqlx::query(
                    "SELECT
                        CAST(COALESCE(SUM(CASE WHEN acked_at_ms IS NULL THEN 1 ELSE 0 END), 0) AS BIGINT) AS open,
                        CAST(COALESCE(SUM(CASE WHEN acked_at_ms IS NULL AND fired_steps > 1 THEN 1 ELSE 0 END), 0) AS BIGINT) AS escalated,
                        CAST(COALESCE(SUM(CASE WHEN acked_at_ms IS NULL AND (next_due_at_ms IS NULL OR next_due_at_ms <= $1) THEN 1 ELSE 0 END), 0) AS BIGINT) AS overdue,
                        CAST(COALESCE(SUM(CASE WHEN acked_at_ms IS NOT NULL THEN 1 ELSE 0 END), 0) AS BIGINT) AS acked
                     FROM routing_escalations",
                )
                .bind(now_ms)
                .fetch_one(&self.pool).await.map_err(db("count escalations"))?;
                Ok(CoordinationCounts {
                    by_status,
                    chains_open: r.try_get("open").map_err(corrupt)?,
                    chains_escalated: r.try_get("escalated").map_err(corrupt)?,
                    chains_overdue: r.try_get("overdue").map_err(corrupt)?,
                    chains_acknowledged: r.try_get("acked").map_err(corrupt)?,
                })
            }
        }
    };
}

overview_methods!(SqliteOutbox);
overview_methods!(PgOutbox);

impl Outbox {
    /// The newest notifications (at most [`MAX_OVERVIEW_ROWS`]), newest
    /// first, each with its escalation chain if one follows it.
    pub async fn recent_notifications(&self, limit: i64) -> Result<Vec<NotificationState>, Error> {
        dispatch!(self, o => o.recent_notifications(limit).await)
    }
    /// The escalation chains nobody acknowledged yet, oldest first.
    pub async fn open_escalations(&self, limit: i64) -> Result<Vec<EscalationState>, Error> {
        dispatch!(self, o => o.open_escalations(limit).await)
    }
    /// Notifications per delivery status; chains open, escalated past their
    /// first step, overdue (due and unanswered, or every step fired) and
    /// acknowledged.
    pub async fn coordination_counts(&self, now_ms: i64) -> Result<CoordinationCounts, Error> {
        dispatch!(self, o => o.coordination_counts(now_ms).await)
    }
}
