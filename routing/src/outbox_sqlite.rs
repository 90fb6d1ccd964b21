//! The outbox's hot writes on SQLite in their direct form: run by the
//! engine's writer thread on its own connection, inside its group-commit
//! transaction ([`ExtraWrite::on_sqlite_direct`]), with cached prepared
//! statements. Through sqlx each statement would cross to sqlx's worker
//! thread and back while the database's one write lock is held, and every
//! task's appends wait behind that lock.
//!
//! The statements are the ones the sqlx form runs (the same texts where the
//! sqlx form has one row per statement; `$N` becomes `?N`), and the
//! behaviour is the same: the tests run both forms on the same outbox.
//!
//! [`ExtraWrite::on_sqlite_direct`]: mandate_engine::store::ExtraWrite::on_sqlite_direct

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use mandate_engine::store::Error;
use rusqlite::{Connection, OptionalExtension, params};

use crate::limits;
use crate::outbox::{
    Claimed, Enqueued, FAILED_ATTEMPT_SQL, FAILED_SQL, Finished, OPEN_COUNT_SQL, after_failure,
    claim_sql, to_store,
};
use crate::page::{self, PAGE_ROWS_PER_STATEMENT, PageGroup};

fn lite(during: &'static str) -> impl FnOnce(rusqlite::Error) -> Error {
    move |source| Error::Sqlite { during, source }
}

/// A statement text of the shared form (`$N` parameters) as SQLite's
/// numbered parameters (`?N`), which bind by position as rusqlite expects;
/// converted once per process.
fn numbered(sql: &'static str) -> String {
    sql.replace('$', "?")
}

static CLAIM: LazyLock<String> = LazyLock::new(|| numbered(claim_sql!("")));
static FAILED: LazyLock<String> = LazyLock::new(|| numbered(FAILED_SQL));
static FAILED_ATTEMPT: LazyLock<String> = LazyLock::new(|| numbered(FAILED_ATTEMPT_SQL));

/// Claims up to `limit` due notifications for `worker` (see the sqlx form).
pub(crate) fn claim(
    c: &Connection,
    worker: &str,
    now_ms: i64,
    lease_ms: i64,
    limit: i64,
) -> Result<Vec<Claimed>, Error> {
    let mut claimed = Vec::new();
    {
        let mut stmt = c
            .prepare_cached(&CLAIM)
            .map_err(lite("claim due notifications"))?;
        let mut rows = stmt
            .query(params![
                worker,
                now_ms + lease_ms,
                now_ms,
                limit.clamp(1, 1000)
            ])
            .map_err(lite("claim due notifications"))?;
        while let Some(r) = rows.next().map_err(lite("claim due notifications"))? {
            claimed.push((
                r.get::<_, String>(0)
                    .map_err(lite("read a claimed notification"))?,
                r.get::<_, i64>(1)
                    .map_err(lite("read a claimed notification"))?,
                r.get::<_, String>(2)
                    .map_err(lite("read a claimed notification"))?,
                r.get::<_, String>(3)
                    .map_err(lite("read a claimed notification"))?,
                r.get::<_, Option<String>>(4)
                    .map_err(lite("read a claimed notification"))?,
            ));
        }
    }
    let mut body = c
        .prepare_cached("SELECT body FROM notification_bodies WHERE id = ?1")
        .map_err(lite("read the claimed notifications' bodies"))?;
    claimed
        .into_iter()
        .map(|(id, attempt, recipient, sink, address)| {
            let text: Option<String> = body
                .query_row([&id], |r| r.get(0))
                .optional()
                .map_err(lite("read the claimed notifications' bodies"))?;
            let text =
                text.ok_or_else(|| Error::Corrupt(format!("notification {id} has no body")))?;
            let message = serde_json::from_str(&text)
                .map_err(|e| Error::Corrupt(format!("notification {id}: {e}")))?;
            Ok(Claimed {
                id,
                attempt,
                recipient,
                sink,
                address,
                message,
            })
        })
        .collect()
}

/// Records attempts' outcomes, each fenced on its lease (see the sqlx form):
/// true for each whose lease still held (and was recorded).
pub(crate) fn finish(c: &Connection, done: &[Finished]) -> Result<Vec<bool>, Error> {
    let mut out = vec![false; done.len()];
    for (i, f) in done.iter().enumerate() {
        let recorded = match &f.outcome {
            Ok(()) => {
                let n = c
                    .prepare_cached(
                        "UPDATE notifications SET status = 'sent', next_attempt_at_ms = NULL, last_error = NULL,
                            sent_at_ms = ?4, lease_owner = NULL, lease_expires_at_ms = NULL
                         WHERE id = ?1 AND lease_owner = ?2 AND attempt = ?3",
                    )
                    .and_then(|mut s| s.execute(params![f.id, f.worker, f.attempt, f.now_ms]))
                    .map_err(lite("record the deliveries"))?;
                if n > 0 {
                    c.prepare_cached(
                        "INSERT INTO notification_attempts (notification_id, attempt, worker, finished_at_ms, outcome, error)
                         VALUES (?1, ?2, ?3, ?4, 'sent', NULL) ON CONFLICT (notification_id, attempt) DO NOTHING",
                    )
                    .and_then(|mut s| s.execute(params![f.id, f.attempt, f.worker, f.now_ms]))
                    .map_err(lite("record the attempts"))?;
                }
                n > 0
            }
            Err(e) => {
                let (status, next) = after_failure(e, f.attempt, f.now_ms);
                let n = c
                    .prepare_cached(&FAILED)
                    .and_then(|mut s| {
                        s.execute(params![f.id, f.worker, f.attempt, status, next, e.message])
                    })
                    .map_err(lite("record the delivery"))?;
                if n > 0 {
                    c.prepare_cached(&FAILED_ATTEMPT)
                        .and_then(|mut s| {
                            s.execute(params![f.id, f.attempt, f.worker, f.now_ms, e.message])
                        })
                        .map_err(lite("record the attempt"))?;
                }
                n > 0
            }
        };
        out[i] = recorded;
    }
    Ok(out)
}

/// Enqueues a follower's page (see the sqlx form): each chunk read, grouped
/// by [`page::group_chunk`] and written a row per statement execution, then
/// the chains the page starts and the feed cursor.
pub(crate) fn page(
    c: &Connection,
    items: &[page::Item],
    bodies: &[String],
    now_ms: i64,
    cursor: Option<(&str, i64)>,
) -> Result<Vec<Enqueued>, Error> {
    let mut out = Vec::with_capacity(items.len());
    let mut open_now = None;
    for (chunk, bodies) in items
        .chunks(PAGE_ROWS_PER_STATEMENT)
        .zip(bodies.chunks(PAGE_ROWS_PER_STATEMENT))
    {
        out.extend(chunk_of_page(c, chunk, bodies, now_ms, &mut open_now)?);
    }
    let mut chain = c
        .prepare_cached(
            "INSERT INTO routing_escalations (notification_id, task_id, about_seq, chain, started_at_ms, fired_steps, next_due_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (notification_id) DO NOTHING",
        )
        .map_err(lite("start escalations"))?;
    for (id, e) in page::chains(items, &out) {
        chain
            .execute(params![
                id,
                e.task_id,
                e.about_seq,
                e.chain,
                e.started_at_ms,
                e.fired_steps,
                e.next_due_at_ms
            ])
            .map_err(lite("start escalations"))?;
    }
    if let Some((name, gseq)) = cursor {
        c.prepare_cached(
            "INSERT INTO routing_cursor (name, gseq) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET gseq = excluded.gseq",
        )
        .and_then(|mut s| s.execute(params![name, gseq]))
        .map_err(lite("move the routing cursor"))?;
    }
    Ok(out)
}

/// One chunk of a page: the same reads and writes as the sqlx form's
/// chunk, a row at a time.
fn chunk_of_page(
    c: &Connection,
    items: &[page::Item],
    bodies: &[String],
    now_ms: i64,
    open_now: &mut Option<i64>,
) -> Result<Vec<Enqueued>, Error> {
    let keys = page::ChunkKeys::of(items);
    let mut inserted = HashSet::new();
    {
        let mut insert = c
            .prepare_cached(
                "INSERT INTO notification_items (item_key, notification_id, added_at_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (item_key) DO NOTHING",
            )
            .map_err(lite("record the notification items"))?;
        for &i in &keys.firsts {
            let key = items[i].0.item_key.as_str();
            if insert
                .execute(params![key, keys.fresh_ids[i], now_ms])
                .map_err(lite("record the notification items"))?
                > 0
            {
                inserted.insert(key.to_string());
            }
        }
    }
    let (fresh, known) = keys.split(items, &inserted);
    // Keys enqueued before: the notification each went into.
    let mut known_ids = HashMap::new();
    if !known.is_empty() {
        let mut read = c
            .prepare_cached("SELECT notification_id FROM notification_items WHERE item_key = ?1")
            .map_err(lite("read the notification items"))?;
        for &i in &known {
            let key = &items[i].0.item_key;
            if let Some(id) = read
                .query_row([key], |r| r.get::<_, String>(0))
                .optional()
                .map_err(lite("read the notification items"))?
            {
                known_ids.insert(key.clone(), id);
            }
        }
    }
    // The open notifications of the new items' groups.
    let mut open = Vec::new();
    let group_keys = page::group_keys(items, &fresh);
    if !group_keys.is_empty() {
        let mut read = c
            .prepare_cached(
                "SELECT n.id, b.body, n.item_count FROM notifications n JOIN notification_bodies b ON b.id = n.id
                 WHERE n.status = 'pending' AND n.attempt = 0 AND n.lease_owner IS NULL AND n.group_key = ?1",
            )
            .map_err(lite("find the open groups"))?;
        for key in group_keys {
            let mut rows = read.query([key]).map_err(lite("find the open groups"))?;
            while let Some(r) = rows.next().map_err(lite("find the open groups"))? {
                let group = PageGroup::open(
                    r.get(0).map_err(lite("find the open groups"))?,
                    r.get(1).map_err(lite("find the open groups"))?,
                    r.get(2).map_err(lite("find the open groups"))?,
                )
                .map_err(to_store)?;
                open.push((key.to_string(), group));
            }
        }
    }
    let plan =
        page::group_chunk(items, bodies, &keys, &fresh, &known_ids, open).map_err(to_store)?;
    if plan.opened > 0 {
        // Read once per page, then kept up to date here.
        let before = match *open_now {
            Some(n) => n,
            None => c
                .prepare_cached(OPEN_COUNT_SQL)
                .and_then(|mut s| s.query_row([], |r| r.get(0)))
                .map_err(lite("count open notifications"))?,
        };
        *open_now = Some(plan.check_open(before).map_err(to_store)?);
    }
    // Groups that were open before: grown, or closed when full (before any
    // new row of the same group is inserted).
    let mut group = c
        .prepare_cached("UPDATE notifications SET item_count = ?2, status = ?3 WHERE id = ?1")
        .map_err(lite("group the notifications"))?;
    let mut body = c
        .prepare_cached("UPDATE notification_bodies SET body = ?2 WHERE id = ?1")
        .map_err(lite("group the notifications' bodies"))?;
    for g in plan.grown_or_closed() {
        group
            .execute(params![g.id, g.count, g.status()])
            .map_err(lite("group the notifications"))?;
        if g.grown {
            body.execute(params![g.id, g.body])
                .map_err(lite("group the notifications' bodies"))?;
        }
    }
    let mut insert = c
        .prepare_cached(
            "INSERT INTO notifications (id, group_key, task_id, recipient, sink, address, item_count, status,
                attempt, max_attempts, created_at_ms, next_attempt_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, ?9, ?10, ?11)",
        )
        .map_err(lite("insert the notifications"))?;
    let mut insert_body = c
        .prepare_cached("INSERT INTO notification_bodies (id, body) VALUES (?1, ?2)")
        .map_err(lite("insert the notifications' bodies"))?;
    for g in plan.opening() {
        let n = &items[g.first.expect("a new group")].0;
        insert
            .execute(params![
                g.id,
                n.group_key,
                n.task_id,
                n.recipient,
                n.sink,
                n.address,
                g.count,
                g.status(),
                limits::MAX_ATTEMPTS as i64,
                now_ms,
                n.send_at_ms
            ])
            .map_err(lite("insert the notifications"))?;
        insert_body
            .execute(params![g.id, g.body])
            .map_err(lite("insert the notifications' bodies"))?;
    }
    // Items that joined a group other than their own id's.
    if !plan.regrouped.is_empty() {
        let mut regroup = c
            .prepare_cached(
                "UPDATE notification_items SET notification_id = ?2 WHERE item_key = ?1",
            )
            .map_err(lite("record the grouped items"))?;
        for &(i, g) in &plan.regrouped {
            regroup
                .execute(params![items[i].0.item_key, plan.groups[g].id])
                .map_err(lite("record the grouped items"))?;
        }
    }
    Ok(plan.done)
}
