//! What the HTTP API keeps besides tasks: the global event order (the live
//! stream), bearer tokens, and halts (the kill switch). The SQL is the same on
//! both backends (`$N` parameters work on SQLite too), so one macro writes
//! both implementations; none of it goes through the group-commit writer
//! because none of it is history.

/// One event with its place in the global order, and the task's owner.
#[derive(Debug, Clone, PartialEq)]
pub struct GlobalEvent {
    pub gseq: i64,
    pub agent: Option<String>,
    pub workflow: String,
    pub event: crate::core::chain::RawEvent,
}

/// A bearer token as stored: only the SHA-256 of its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    pub id: String,
    pub name: String,
    pub role: String,
    pub secret_sha256: String,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

/// A halt: `agent` None stops everything. Never deleted; lifting fills `lifted_*`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HaltRow {
    pub id: String,
    pub agent: Option<String>,
    pub reason: Option<String>,
    pub created_by: String,
    pub created_at_ms: i64,
    pub lifted_by: Option<String>,
    pub lifted_at_ms: Option<i64>,
}

impl HaltRow {
    /// Whether this halt stops work of a task owned by `agent`.
    pub fn covers(&self, agent: Option<&str>) -> bool {
        self.lifted_at_ms.is_none() && (self.agent.is_none() || self.agent.as_deref() == agent)
    }
}

/// The most rows one call returns, whatever the caller asks.
pub const MAX_PAGE: u32 = 1_000;

/// Writes the admin part of `impl Store for $store` (the type has a `pool`).
/// The columns [`global_event`] reads, and the join that gives them: the
/// start of every read of the global event stream.
macro_rules! global_event_from {
    () => {
        "SELECT e.gseq, e.task_id, e.seq, e.event_type, e.recorded_at_ms, e.actor, e.payload,
                e.prev_hash, e.hash, t.agent, t.workflow
         FROM events e JOIN tasks t ON t.id = e.task_id"
    };
}
pub(crate) use global_event_from;

macro_rules! admin_methods {
    () => {
        fn events_after(
            &self,
            after_gseq: i64,
            agent: Option<&str>,
            task: Option<&str>,
            limit: u32,
        ) -> BoxFuture<'_, Result<Vec<super::GlobalEvent>, Error>> {
            let agent = agent.map(str::to_string);
            let task = task.map(str::to_string);
            Box::pin(async move {
                let limit = limit.min(super::admin::MAX_PAGE) as i64;
                // One task's events come through its primary key, not a scan
                // of the global order.
                let rows = match task {
                    Some(task) => sqlx::query(
                        concat!($crate::store::admin::global_event_from!(), "
                         WHERE e.task_id = $4 AND e.gseq > $1 AND ($2 IS NULL OR t.agent = $2)
                         ORDER BY e.gseq LIMIT $3"),
                    )
                    .bind(after_gseq)
                    .bind(agent)
                    .bind(limit)
                    .bind(task)
                    .fetch_all(&self.pool)
                    .await,
                    None => sqlx::query(
                        concat!($crate::store::admin::global_event_from!(), "
                         WHERE e.gseq > $1 AND ($2 IS NULL OR t.agent = $2)
                         ORDER BY e.gseq LIMIT $3"),
                    )
                    .bind(after_gseq)
                    .bind(agent)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await,
                }
                .map_err(Error::db("read the event stream"))?;
                rows.iter().map(super::admin::global_event).collect()
            })
        }

        fn events_of_type_between(
            &self,
            after_gseq: i64,
            upto_gseq: i64,
            event_type: &str,
            limit: u32,
        ) -> BoxFuture<'_, Result<Vec<super::GlobalEvent>, Error>> {
            let event_type = event_type.to_string();
            Box::pin(async move {
                let limit = limit.min(super::admin::MAX_PAGE) as i64;
                let rows = sqlx::query(
                    concat!($crate::store::admin::global_event_from!(), "
                     WHERE e.gseq > $1 AND e.gseq <= $2 AND e.event_type = $3
                     ORDER BY e.gseq LIMIT $4"),
                )
                .bind(after_gseq)
                .bind(upto_gseq)
                .bind(event_type)
                .bind(limit)
                .fetch_all(&self.pool)
                .await
                .map_err(Error::db("read the event stream"))?;
                rows.iter().map(super::admin::global_event).collect()
            })
        }

        fn event_head(&self) -> BoxFuture<'_, Result<i64, Error>> {
            Box::pin(async move {
                sqlx::query_scalar("SELECT head FROM event_log WHERE id = 1")
                    .fetch_one(&self.pool)
                    .await
                    .map_err(Error::db("read the event stream head"))
            })
        }

        fn queue_depth(&self, now_ms: i64) -> BoxFuture<'_, Result<i64, Error>> {
            Box::pin(async move {
                sqlx::query_scalar(
                    "SELECT COUNT(*) FROM tasks WHERE ready_at_ms IS NOT NULL AND ready_at_ms <= $1",
                )
                .bind(now_ms)
                .fetch_one(&self.pool)
                .await
                .map_err(Error::db("queue depth"))
            })
        }

        fn insert_token(&self, token: super::TokenRow) -> BoxFuture<'_, Result<bool, Error>> {
            Box::pin(async move {
                let done = sqlx::query(
                    "INSERT INTO api_tokens (id, name, role, secret_sha256, created_at_ms, revoked_at_ms)
                     VALUES ($1, $2, $3, $4, $5, NULL) ON CONFLICT (name) DO NOTHING",
                )
                .bind(&token.id)
                .bind(&token.name)
                .bind(&token.role)
                .bind(&token.secret_sha256)
                .bind(token.created_at_ms)
                .execute(&self.pool)
                .await
                .map_err(Error::db("create token"))?;
                Ok(done.rows_affected() == 1)
            })
        }

        fn token_by_secret(&self, secret_sha256: &str) -> BoxFuture<'_, Result<Option<super::TokenRow>, Error>> {
            let h = secret_sha256.to_string();
            Box::pin(async move {
                let rows = sqlx::query(
                    "SELECT id, name, role, secret_sha256, created_at_ms, revoked_at_ms
                     FROM api_tokens WHERE secret_sha256 = $1",
                )
                .bind(h)
                .fetch_all(&self.pool)
                .await
                .map_err(Error::db("look up token"))?;
                rows.iter().map(super::admin::token_from_row).next().transpose()
            })
        }

        fn list_tokens(&self) -> BoxFuture<'_, Result<Vec<super::TokenRow>, Error>> {
            Box::pin(async move {
                let rows = sqlx::query(
                    "SELECT id, name, role, secret_sha256, created_at_ms, revoked_at_ms
                     FROM api_tokens ORDER BY created_at_ms, name LIMIT 10000",
                )
                .fetch_all(&self.pool)
                .await
                .map_err(Error::db("list tokens"))?;
                rows.iter().map(super::admin::token_from_row).collect()
            })
        }

        fn revoke_token(&self, name: &str, at_ms: i64) -> BoxFuture<'_, Result<bool, Error>> {
            let name = name.to_string();
            Box::pin(async move {
                let done = sqlx::query(
                    "UPDATE api_tokens SET revoked_at_ms = $1 WHERE name = $2 AND revoked_at_ms IS NULL",
                )
                .bind(at_ms)
                .bind(name)
                .execute(&self.pool)
                .await
                .map_err(Error::db("revoke token"))?;
                Ok(done.rows_affected() == 1)
            })
        }

        fn insert_halt(&self, halt: super::HaltRow) -> BoxFuture<'_, Result<(), Error>> {
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO halts (id, agent, reason, created_by, created_at_ms) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&halt.id)
                .bind(&halt.agent)
                .bind(&halt.reason)
                .bind(&halt.created_by)
                .bind(halt.created_at_ms)
                .execute(&self.pool)
                .await
                .map_err(Error::db("record halt"))?;
                Ok(())
            })
        }

        fn lift_halts(
            &self,
            agent: Option<&str>,
            by: &str,
            at_ms: i64,
        ) -> BoxFuture<'_, Result<Vec<super::HaltRow>, Error>> {
            let agent = agent.map(str::to_string);
            let by = by.to_string();
            Box::pin(async move {
                let rows = sqlx::query(
                    "UPDATE halts SET lifted_by = $1, lifted_at_ms = $2
                     WHERE lifted_at_ms IS NULL AND (agent = $3 OR ($3 IS NULL AND agent IS NULL))
                     RETURNING id, agent, reason, created_by, created_at_ms, lifted_by, lifted_at_ms",
                )
                .bind(by)
                .bind(at_ms)
                .bind(agent)
                .fetch_all(&self.pool)
                .await
                .map_err(Error::db("lift halt"))?;
                rows.iter().map(super::admin::halt_from_row).collect()
            })
        }

        fn halts(&self, active_only: bool, limit: u32) -> BoxFuture<'_, Result<Vec<super::HaltRow>, Error>> {
            Box::pin(async move {
                let rows = sqlx::query(
                    "SELECT id, agent, reason, created_by, created_at_ms, lifted_by, lifted_at_ms
                     FROM halts WHERE (lifted_at_ms IS NULL OR NOT $1)
                     ORDER BY created_at_ms DESC, id DESC LIMIT $2",
                )
                .bind(active_only)
                .bind(limit.min(super::admin::MAX_PAGE) as i64)
                .fetch_all(&self.pool)
                .await
                .map_err(Error::db("list halts"))?;
                rows.iter().map(super::admin::halt_from_row).collect()
            })
        }
    };
}
pub(crate) use admin_methods;

/// Reads an event with its global number and its task's agent and workflow
/// (columns as selected by `admin_methods`).
pub(crate) fn global_event<R>(r: &R) -> Result<GlobalEvent, super::Error>
where
    R: sqlx::Row,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    String: for<'d> sqlx::Decode<'d, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'d> sqlx::Decode<'d, R::Database> + sqlx::Type<R::Database>,
    i64: for<'d> sqlx::Decode<'d, R::Database> + sqlx::Type<R::Database>,
{
    let bad = |e: sqlx::Error| super::Error::Corrupt(format!("events row: {e}"));
    let task_id: String = r.try_get("task_id").map_err(bad)?;
    Ok(GlobalEvent {
        gseq: r.try_get("gseq").map_err(bad)?,
        agent: r.try_get("agent").map_err(bad)?,
        workflow: r.try_get("workflow").map_err(bad)?,
        event: super::sqlite::event_from_row(&task_id, r)?,
    })
}

/// Reads a token row (columns as selected by `admin_methods`).
pub(crate) fn token_from_row<R>(r: &R) -> Result<TokenRow, super::Error>
where
    R: sqlx::Row,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    String: for<'d> sqlx::Decode<'d, R::Database> + sqlx::Type<R::Database>,
    i64: for<'d> sqlx::Decode<'d, R::Database> + sqlx::Type<R::Database>,
{
    let e = |e: sqlx::Error| super::Error::Corrupt(format!("api_tokens row: {e}"));
    Ok(TokenRow {
        id: r.try_get("id").map_err(e)?,
        name: r.try_get("name").map_err(e)?,
        role: r.try_get("role").map_err(e)?,
        secret_sha256: r.try_get("secret_sha256").map_err(e)?,
        created_at_ms: r.try_get("created_at_ms").map_err(e)?,
        revoked_at_ms: r.try_get("revoked_at_ms").map_err(e)?,
    })
}

/// Reads a halt row (columns as selected by `admin_methods`).
pub(crate) fn halt_from_row<R>(r: &R) -> Result<HaltRow, super::Error>
where
    R: sqlx::Row,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    String: for<'d> sqlx::Decode<'d, R::Database> + sqlx::Type<R::Database>,
    i64: for<'d> sqlx::Decode<'d, R::Database> + sqlx::Type<R::Database>,
{
    let e = |e: sqlx::Error| super::Error::Corrupt(format!("halts row: {e}"));
    Ok(HaltRow {
        id: r.try_get("id").map_err(e)?,
        agent: r.try_get("agent").map_err(e)?,
        reason: r.try_get("reason").map_err(e)?,
        created_by: r.try_get("created_by").map_err(e)?,
        created_at_ms: r.try_get("created_at_ms").map_err(e)?,
        lifted_by: r.try_get("lifted_by").map_err(e)?,
        lifted_at_ms: r.try_get("lifted_at_ms").map_err(e)?,
    })
}
