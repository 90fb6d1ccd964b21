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

use std::sync::LazyLock;

use mandate_engine::store::Error;
use rusqlite::{Connection, OptionalExtension, params};

use crate::outbox::{Claimed, FAILED_ATTEMPT_SQL, FAILED_SQL, Finished, after_failure, claim_sql};

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
