//! [`World`]: where the demo tools keep their side effects, in the engine's
//! own database (SQLite or PostgreSQL).
//!
//! Two tables make up the world: `demo_resources` holds the current value of
//! each resource (a deployed version, a flag, a balance, a key) and
//! `demo_effects` records every applied side effect by idempotency key.
//! [`World::apply`] changes a resource and records the effect in one
//! transaction, so a duplicate delivery of the same call returns the first
//! call's output and never changes the world twice.
//!
//! A compensation ([`World::apply_call`] with [`ToolContext::compensates`]
//! set) also *fences* the key of the step it undoes, in the same
//! transaction: it inserts a tombstone row under that key in `demo_effects`
//! (`tool` = [`FENCE_TOOL`], output `{"fenced_by": <compensation's key>,
//! "compensating_tool": …}`), doing nothing if the key already has a row. An
//! apply whose key is fenced is refused ([`Error::Fenced`]) and writes
//! nothing. Because the effect and the tombstone share the table's primary
//! key, the database orders a late ("zombie") attempt of the step and its
//! compensation on both backends: if the effect committed first, the
//! compensation sees it and undoes it; if the fence committed first, the
//! effect can never apply. A tombstone is not an effect: [`World::effect_count`]
//! does not count it.
//!
//! This module must never touch the engine's own tables, and must never
//! write a resource without recording its effect in the same transaction.

use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

use mandate_engine::tool::{ToolContext, ToolError};

/// The DDL for the demo tables and the demo seed data. They are the
/// migration files themselves, so the engine's migrations and
/// [`World::ensure_schema`] can never disagree.
const SQLITE_SCHEMA: [&str; 2] = [
    include_str!("../../migrations/sqlite/0002_demo_world.sql"),
    include_str!("../../migrations/sqlite/0004_demo_iam.sql"),
];
const POSTGRES_SCHEMA: [&str; 2] = [
    include_str!("../../migrations/postgres/0002_demo_world.sql"),
    include_str!("../../migrations/postgres/0004_demo_iam.sql"),
];

/// Advisory lock held while PostgreSQL runs the DDL: two processes running
/// `CREATE TABLE IF NOT EXISTS` at once can otherwise both try to create the
/// table and one fails on a catalog unique constraint. ("mandate" + 1.)
const POSTGRES_SCHEMA_LOCK: i64 = 0x6d61_6e64_6174_6501;

/// How long a SQLite connection waits for another writer before failing.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest namespace, key or idempotency key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// Largest resource value or effect output accepted, in bytes of JSON.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// The `tool` of a fence row in `demo_effects`: a tombstone a compensation
/// left under the key of the step it undid. Not a tool name any tool can
/// have (tool names never contain `<`), so it cannot be mistaken for an
/// effect.
pub const FENCE_TOOL: &str = "<fence>";
/// Most resources [`World::list`] returns; more is an error, not a truncation,
/// so a checker never silently misses a leaked resource.
pub const MAX_LIST_ROWS: usize = 100_000;

/// What went wrong in the demo world, and where.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL is neither `sqlite:` nor `postgres:`/`postgresql:`.
    #[error(
        "demo world: unsupported database URL `{url}`: expected sqlite://PATH or postgres://USER@HOST/DB"
    )]
    UnsupportedUrl {
        /// The URL, with any password masked.
        url: String,
    },
    /// Could not open the database.
    #[error(
        "demo world: could not connect to {url}: {source}; check that the database is reachable"
    )]
    Connect {
        /// The URL, with any password masked.
        url: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// A statement failed; `action` says which and on what.
    #[error("demo world: {action} failed: {source}")]
    Database {
        /// What was being done, e.g. "reading resource service/api".
        action: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// A stored value is not valid JSON: the demo tables were edited by hand.
    #[error(
        "demo world: {what} does not hold valid JSON ({detail}); inspect the demo_resources and demo_effects tables"
    )]
    Corrupt {
        /// Which row, e.g. "resource service/api".
        what: String,
        /// The parser's complaint.
        detail: String,
    },
    /// An argument or a value exceeds one of this module's limits.
    #[error("demo world: {what} is {actual} bytes or rows, over the limit of {limit}")]
    TooLarge {
        /// What was too large.
        what: String,
        /// Its size.
        actual: usize,
        /// The limit it broke.
        limit: usize,
    },
    /// The call's idempotency key was fenced by the compensation of its
    /// step: the step is being (or was) rolled back, and this is a late
    /// attempt of it. Nothing was written, and retrying cannot help.
    #[error(
        "demo world: the effect under idempotency key {idempotency_key} was not applied: \
         the key was fenced by compensation {fenced_by}, which rolled this step back; \
         this is a late attempt the engine had already given up on"
    )]
    Fenced {
        /// The refused call's idempotency key (the step's).
        idempotency_key: String,
        /// The idempotency key of the compensation that fenced it.
        fenced_by: String,
    },
    /// The effect's function refused to apply (bad input, insufficient
    /// balance). Nothing was written (a compensation still fences its step). This is a normal outcome, kept apart
    /// from database failures so the caller can pass it on unchanged.
    #[error(transparent)]
    Rejected(ToolError),
}

/// Where demo tools keep their side effects: the engine's own database
/// (SQLite or PostgreSQL).
///
/// Cloning is cheap; clones share the pool.
#[derive(Clone)]
pub struct World {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let backend = match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        };
        f.debug_struct("World").field("backend", &backend).finish()
    }
}

impl World {
    /// Connect to the same database URL the engine uses (`sqlite://path` or
    /// `postgres://...`) and create the demo tables if they are missing, so
    /// the world works standalone too.
    ///
    /// SQLite is opened with WAL, `synchronous=FULL`, a 10 s busy timeout and
    /// `create_if_missing`, the same durability the engine asks for.
    pub async fn connect(url: &str) -> Result<World, Error> {
        let shown = redact_password(url);
        let world = if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(|source| Error::Connect {
                    url: shown.clone(),
                    source,
                })?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(SQLITE_BUSY_TIMEOUT);
            let pool = SqlitePoolOptions::new()
                .connect_with(options)
                .await
                .map_err(|source| Error::Connect {
                    url: shown.clone(),
                    source,
                })?;
            World::from_sqlite(pool)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let pool =
                PgPoolOptions::new()
                    .connect(url)
                    .await
                    .map_err(|source| Error::Connect {
                        url: shown.clone(),
                        source,
                    })?;
            World::from_postgres(pool)
        } else {
            return Err(Error::UnsupportedUrl { url: shown });
        };
        world.ensure_schema().await?;
        Ok(world)
    }

    /// Wraps a pool the caller already configured. Call
    /// [`World::ensure_schema`] before use unless the engine's migrations ran.
    ///
    /// The pool's connections should have a busy timeout: writes take the
    /// database write lock up front (`BEGIN IMMEDIATE`) and wait for it.
    pub fn from_sqlite(pool: SqlitePool) -> World {
        World {
            backend: Backend::Sqlite(pool),
        }
    }

    /// Wraps a PostgreSQL pool. Call [`World::ensure_schema`] before use
    /// unless the engine's migrations ran.
    pub fn from_postgres(pool: PgPool) -> World {
        World {
            backend: Backend::Postgres(pool),
        }
    }

    /// Creates the demo tables if they do not exist and seeds the demo IAM
    /// policies if they are missing. Safe to call any number of times, from
    /// several processes at once.
    pub async fn ensure_schema(&self) -> Result<(), Error> {
        let action = "creating the demo tables";
        match &self.backend {
            Backend::Sqlite(pool) => {
                for file in SQLITE_SCHEMA {
                    sqlx::raw_sql(file)
                        .execute(pool)
                        .await
                        .map_err(db(action))?;
                }
            }
            Backend::Postgres(pool) => {
                let mut tx = pool.begin().await.map_err(db(action))?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(POSTGRES_SCHEMA_LOCK)
                    .execute(&mut *tx)
                    .await
                    .map_err(db(action))?;
                for file in POSTGRES_SCHEMA {
                    sqlx::raw_sql(file)
                        .execute(&mut *tx)
                        .await
                        .map_err(db(action))?;
                }
                tx.commit().await.map_err(db(action))?;
            }
        }
        Ok(())
    }

    /// Current value of a resource (namespace e.g. "service", "flag",
    /// "ledger", "kv"), or `None` if it does not exist.
    pub async fn get(&self, namespace: &str, key: &str) -> Result<Option<Value>, Error> {
        check_key("namespace", namespace)?;
        check_key("key", key)?;
        let action = || format!("reading resource {namespace}/{key}");
        let text: Option<String> = match &self.backend {
            Backend::Sqlite(pool) => {
                sqlx::query_scalar(
                    "SELECT value FROM demo_resources WHERE namespace = ?1 AND key = ?2",
                )
                .bind(namespace)
                .bind(key)
                .fetch_optional(pool)
                .await
            }
            Backend::Postgres(pool) => {
                sqlx::query_scalar(
                    "SELECT value FROM demo_resources WHERE namespace = $1 AND key = $2",
                )
                .bind(namespace)
                .bind(key)
                .fetch_optional(pool)
                .await
            }
        }
        .map_err(db(action()))?;
        text.map(|text| parse_json(|| format!("resource {namespace}/{key}"), &text))
            .transpose()
    }

    /// All resources of a namespace, sorted by key (byte order, the same on
    /// both backends whatever the database collation).
    pub async fn list(&self, namespace: &str) -> Result<Vec<(String, Value)>, Error> {
        check_key("namespace", namespace)?;
        let action = || format!("listing resources in namespace {namespace}");
        // One row past the limit tells "exactly at the limit" from "over it".
        let fetch_limit = (MAX_LIST_ROWS + 1) as i64;
        let rows: Vec<(String, String)> = match &self.backend {
            Backend::Sqlite(pool) => {
                sqlx::query_as(
                    "SELECT key, value FROM demo_resources WHERE namespace = ?1 LIMIT ?2",
                )
                .bind(namespace)
                .bind(fetch_limit)
                .fetch_all(pool)
                .await
            }
            Backend::Postgres(pool) => {
                sqlx::query_as(
                    "SELECT key, value FROM demo_resources WHERE namespace = $1 LIMIT $2",
                )
                .bind(namespace)
                .bind(fetch_limit)
                .fetch_all(pool)
                .await
            }
        }
        .map_err(db(action()))?;
        if rows.len() > MAX_LIST_ROWS {
            return Err(Error::TooLarge {
                what: format!("namespace {namespace}"),
                actual: rows.len(),
                limit: MAX_LIST_ROWS,
            });
        }
        let mut resources = rows
            .into_iter()
            .map(|(key, text)| {
                let value = parse_json(|| format!("resource {namespace}/{key}"), &text)?;
                Ok((key, value))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        resources.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(resources)
    }

    /// Apply one side effect exactly once per idempotency key.
    ///
    /// In one transaction: if `idempotency_key` was already applied, return
    /// the recorded output unchanged (a duplicate delivery, `f` is not
    /// called); otherwise call `f(current_value)`, which returns the new value
    /// (`None` deletes the resource) and the output, then write the resource
    /// and record `(idempotency_key, tool, output)`. Returns the output.
    ///
    /// If `f` returns a [`ToolError`], nothing is written and the error comes
    /// back as [`Error::Rejected`]. Concurrent applies on one resource are
    /// serialized; two concurrent applies of the same key return the same
    /// output and change the world once. If the key was fenced by a
    /// compensation, nothing is written and the result is [`Error::Fenced`].
    ///
    /// This call compensates nothing; a tool should use
    /// [`World::apply_call`], which also fences when the call is a
    /// compensation.
    pub async fn apply<F>(
        &self,
        idempotency_key: &str,
        tool: &str,
        namespace: &str,
        key: &str,
        f: F,
    ) -> Result<Value, Error>
    where
        F: FnOnce(Option<Value>) -> Result<(Option<Value>, Value), ToolError> + Send,
    {
        self.apply_fenced(idempotency_key, None, tool, namespace, key, f)
            .await
    }

    /// [`World::apply`] for a tool call: the idempotency key is the
    /// context's, and when the call is a compensation
    /// ([`ToolContext::compensates`]) the same transaction fences the key
    /// of the step it undoes, so a late attempt of that step is refused
    /// with [`Error::Fenced`] instead of applying after the rollback.
    ///
    /// The fence is written first, before `f` reads the current value: on
    /// PostgreSQL, if the step's effect is being committed at that moment,
    /// the fence waits for it, and `f` then sees (and undoes) its result.
    /// A compensation whose `f` refuses ([`Error::Rejected`]) still commits
    /// its fence: the step is being rolled back either way, and a late
    /// attempt must not apply behind a person's back.
    pub async fn apply_call<F>(
        &self,
        ctx: &ToolContext,
        tool: &str,
        namespace: &str,
        key: &str,
        f: F,
    ) -> Result<Value, Error>
    where
        F: FnOnce(Option<Value>) -> Result<(Option<Value>, Value), ToolError> + Send,
    {
        self.apply_fenced(
            &ctx.idempotency_key,
            ctx.compensates.as_deref(),
            tool,
            namespace,
            key,
            f,
        )
        .await
    }

    async fn apply_fenced<F>(
        &self,
        idempotency_key: &str,
        compensates: Option<&str>,
        tool: &str,
        namespace: &str,
        key: &str,
        f: F,
    ) -> Result<Value, Error>
    where
        F: FnOnce(Option<Value>) -> Result<(Option<Value>, Value), ToolError> + Send,
    {
        check_key("idempotency key", idempotency_key)?;
        if let Some(step_key) = compensates {
            check_key("compensated idempotency key", step_key)?;
        }
        check_key("tool name", tool)?;
        check_key("namespace", namespace)?;
        check_key("key", key)?;
        let target = Target {
            idempotency_key,
            compensates,
            tool,
            namespace,
            key,
        };
        match &self.backend {
            Backend::Sqlite(pool) => apply_sqlite(pool, &target, f).await,
            Backend::Postgres(pool) => apply_postgres(pool, &target, f).await,
        }
    }

    /// How many effects were applied (rows in `demo_effects`, fences not
    /// counted); for tests and the stress checker.
    pub async fn effect_count(&self) -> Result<i64, Error> {
        self.count_effect_rows(false).await
    }

    /// How many step keys compensations fenced (tombstone rows in
    /// `demo_effects`); for tests and the stress checker.
    pub async fn fence_count(&self) -> Result<i64, Error> {
        self.count_effect_rows(true).await
    }

    async fn count_effect_rows(&self, fences: bool) -> Result<i64, Error> {
        let (action, sql) = if fences {
            (
                "counting fenced keys",
                "SELECT COUNT(*) FROM demo_effects WHERE tool = '<fence>'",
            )
        } else {
            (
                "counting applied effects",
                "SELECT COUNT(*) FROM demo_effects WHERE tool <> '<fence>'",
            )
        };
        match &self.backend {
            Backend::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
            Backend::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
        }
        .map_err(db(action))
    }
}

/// The arguments of one [`World::apply`], bundled so both backends take the
/// same shape and every error can say where it happened.
struct Target<'a> {
    idempotency_key: &'a str,
    /// For a compensation, the key of the step it undoes (to fence).
    compensates: Option<&'a str>,
    tool: &'a str,
    namespace: &'a str,
    key: &'a str,
}

impl Target<'_> {
    fn describe(&self, step: &str) -> String {
        format!(
            "{step} for {} (idempotency key {}) on resource {}/{}",
            self.tool, self.idempotency_key, self.namespace, self.key
        )
    }

    fn effect_row(&self) -> String {
        format!("demo_effects row {}", self.idempotency_key)
    }

    /// What an earlier row under this call's key means: a fence refuses
    /// the call, an effect is a duplicate delivery returning its output.
    fn recorded(&self, tool: &str, output: &str) -> Result<Value, Error> {
        if tool == FENCE_TOOL {
            let fence = parse_json(|| self.effect_row(), output)?;
            let fenced_by = fence["fenced_by"].as_str().unwrap_or("?").to_owned();
            tracing::info!(
                idempotency_key = self.idempotency_key,
                tool = self.tool,
                fenced_by = %fenced_by,
                "a late attempt was refused: its step was fenced by a compensation"
            );
            return Err(Error::Fenced {
                idempotency_key: self.idempotency_key.to_owned(),
                fenced_by,
            });
        }
        tracing::debug!(
            idempotency_key = self.idempotency_key,
            tool = self.tool,
            "duplicate delivery: returning the recorded output"
        );
        parse_json(|| self.effect_row(), output)
    }

    /// The output column of this compensation's fence row.
    fn fence_output(&self) -> String {
        serde_json::json!({
            "fenced_by": self.idempotency_key,
            "compensating_tool": self.tool,
        })
        .to_string()
    }
}

/// What [`World::apply`] writes once `f` has agreed: the new resource value
/// (`None` deletes it) and the output, both already serialized.
struct Change {
    new_value: Option<String>,
    output_text: String,
    output: Value,
}

/// Runs the effect's function on the current value and checks the result
/// against the limits. Pure: both backends share it, and it runs inside the
/// transaction so the current value cannot change underneath it.
fn decide<F>(target: &Target<'_>, current: Option<String>, f: F) -> Result<Change, Error>
where
    F: FnOnce(Option<Value>) -> Result<(Option<Value>, Value), ToolError>,
{
    let current = current
        .map(|text| {
            parse_json(
                || format!("resource {}/{}", target.namespace, target.key),
                &text,
            )
        })
        .transpose()?;
    let (new_value, output) = f(current).map_err(Error::Rejected)?;
    let new_value = new_value.map(|value| value.to_string());
    if let Some(text) = &new_value {
        check_size(
            || format!("new value of resource {}/{}", target.namespace, target.key),
            text,
        )?;
    }
    let output_text = output.to_string();
    check_size(|| format!("output of {}", target.tool), &output_text)?;
    Ok(Change {
        new_value,
        output_text,
        output,
    })
}

async fn apply_sqlite<F>(pool: &SqlitePool, target: &Target<'_>, f: F) -> Result<Value, Error>
where
    F: FnOnce(Option<Value>) -> Result<(Option<Value>, Value), ToolError> + Send,
{
    // BEGIN IMMEDIATE takes the write lock before the first read. With a
    // plain BEGIN two writers could both read, then both try to upgrade to a
    // write lock and one fails with SQLITE_BUSY regardless of busy_timeout.
    // It also orders a step's late attempt and its compensation's fence: the
    // database has one writer at a time.
    let mut tx = pool
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(db(target.describe("starting the transaction")))?;

    let recorded: Option<(String, String)> =
        sqlx::query_as("SELECT tool, output FROM demo_effects WHERE idempotency_key = ?1")
            .bind(target.idempotency_key)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db(target.describe("looking up the recorded effect")))?;
    if let Some((tool, output)) = recorded {
        tx.rollback()
            .await
            .map_err(db(target.describe("ending the read-only transaction")))?;
        return target.recorded(&tool, &output);
    }

    let now = now_ms();
    if let Some(step_key) = target.compensates {
        // The fence: a tombstone under the step's key. If the step's effect
        // is already recorded there, nothing is inserted and `f` below sees
        // (and undoes) that effect.
        sqlx::query(
            "INSERT INTO demo_effects (idempotency_key, tool, output, applied_at_ms) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (idempotency_key) DO NOTHING",
        )
        .bind(step_key)
        .bind(FENCE_TOOL)
        .bind(target.fence_output())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db(target.describe("fencing the compensated step")))?;
    }

    let current: Option<String> =
        sqlx::query_scalar("SELECT value FROM demo_resources WHERE namespace = ?1 AND key = ?2")
            .bind(target.namespace)
            .bind(target.key)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db(target.describe("reading the current value")))?;

    let change = match decide(target, current, f) {
        Ok(change) => change,
        Err(error) if target.compensates.is_some() => {
            // A refused undo keeps its fence (see `World::apply_call`).
            tx.commit()
                .await
                .map_err(db(target.describe("committing the fence of a refused undo")))?;
            return Err(error);
        }
        Err(error) => {
            // Roll back explicitly so the write lock is released now rather
            // than whenever the pool next touches this connection.
            if let Err(rollback) = tx.rollback().await {
                tracing::warn!(error = %rollback, "{}", target.describe("rolling back a refused effect"));
            }
            return Err(error);
        }
    };

    match &change.new_value {
        Some(text) => sqlx::query(
            "INSERT INTO demo_resources (namespace, key, value, updated_at_ms) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, updated_at_ms = excluded.updated_at_ms",
        )
        .bind(target.namespace)
        .bind(target.key)
        .bind(text)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db(target.describe("writing the new value")))?,
        None => sqlx::query("DELETE FROM demo_resources WHERE namespace = ?1 AND key = ?2")
            .bind(target.namespace)
            .bind(target.key)
            .execute(&mut *tx)
            .await
            .map_err(db(target.describe("deleting the resource")))?,
    };
    sqlx::query(
        "INSERT INTO demo_effects (idempotency_key, tool, output, applied_at_ms) VALUES (?1, ?2, ?3, ?4)",
    )
    .bind(target.idempotency_key)
    .bind(target.tool)
    .bind(&change.output_text)
    .bind(now)
    .execute(&mut *tx)
    .await
    .map_err(db(target.describe("recording the effect")))?;
    tx.commit()
        .await
        .map_err(db(target.describe("committing the effect")))?;
    Ok(change.output)
}

async fn apply_postgres<F>(pool: &PgPool, target: &Target<'_>, f: F) -> Result<Value, Error>
where
    F: FnOnce(Option<Value>) -> Result<(Option<Value>, Value), ToolError> + Send,
{
    let mut tx = pool
        .begin()
        .await
        .map_err(db(target.describe("starting the transaction")))?;

    // Serialize applies on one resource. `SELECT ... FOR UPDATE` cannot do
    // this when the resource does not exist yet (there is no row to lock), so
    // take a transaction-scoped advisory lock on the resource's name instead.
    // A hash collision only makes two unrelated resources wait for each
    // other; each transaction holds one such lock, so it cannot deadlock.
    // (A fence insert may also wait, on a step's uncommitted effect row; that
    // transaction holds no lock the fence's holds, so no cycle forms.)
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2))")
        .bind(target.namespace)
        .bind(target.key)
        .execute(&mut *tx)
        .await
        .map_err(db(target.describe("locking the resource")))?;

    // Read after taking the lock: under READ COMMITTED each statement sees
    // what committed before it started, so an effect applied by whoever held
    // the lock before us is visible here.
    let recorded: Option<(String, String)> =
        sqlx::query_as("SELECT tool, output FROM demo_effects WHERE idempotency_key = $1")
            .bind(target.idempotency_key)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db(target.describe("looking up the recorded effect")))?;
    if let Some((tool, output)) = recorded {
        tx.rollback()
            .await
            .map_err(db(target.describe("ending the read-only transaction")))?;
        return target.recorded(&tool, &output);
    }

    let now = now_ms();
    if let Some(step_key) = target.compensates {
        // The fence, before reading the current value: if a late attempt of
        // the step is committing its effect row right now, this insert waits
        // for it (the primary key), and the read below, a new statement,
        // sees the effect it committed, which `f` then undoes. If the fence
        // goes in first, the attempt's own insert waits for us and then
        // conflicts, and it rolls back.
        sqlx::query(
            "INSERT INTO demo_effects (idempotency_key, tool, output, applied_at_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (idempotency_key) DO NOTHING",
        )
        .bind(step_key)
        .bind(FENCE_TOOL)
        .bind(target.fence_output())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db(target.describe("fencing the compensated step")))?;
    }

    let current: Option<String> =
        sqlx::query_scalar("SELECT value FROM demo_resources WHERE namespace = $1 AND key = $2")
            .bind(target.namespace)
            .bind(target.key)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db(target.describe("reading the current value")))?;

    let change = match decide(target, current, f) {
        Ok(change) => change,
        Err(error) if target.compensates.is_some() => {
            // A refused undo keeps its fence (see `World::apply_call`).
            tx.commit()
                .await
                .map_err(db(target.describe("committing the fence of a refused undo")))?;
            return Err(error);
        }
        Err(error) => {
            if let Err(rollback) = tx.rollback().await {
                tracing::warn!(error = %rollback, "{}", target.describe("rolling back a refused effect"));
            }
            return Err(error);
        }
    };

    match &change.new_value {
        Some(text) => sqlx::query(
            "INSERT INTO demo_resources (namespace, key, value, updated_at_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, updated_at_ms = excluded.updated_at_ms",
        )
        .bind(target.namespace)
        .bind(target.key)
        .bind(text)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db(target.describe("writing the new value")))?,
        None => sqlx::query("DELETE FROM demo_resources WHERE namespace = $1 AND key = $2")
            .bind(target.namespace)
            .bind(target.key)
            .execute(&mut *tx)
            .await
            .map_err(db(target.describe("deleting the resource")))?,
    };

    // The resource lock already makes same-key applies on one resource
    // safe. ON CONFLICT covers a caller that reuses an idempotency key on a
    // different resource, and a compensation fencing this key meanwhile:
    // the insert waits for the other transaction, and if it committed, ours
    // must not take effect (a duplicate, or a late attempt fenced off).
    let inserted: Option<String> = sqlx::query_scalar(
        "INSERT INTO demo_effects (idempotency_key, tool, output, applied_at_ms) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (idempotency_key) DO NOTHING RETURNING idempotency_key",
    )
    .bind(target.idempotency_key)
    .bind(target.tool)
    .bind(&change.output_text)
    .bind(now)
    .fetch_optional(&mut *tx)
    .await
    .map_err(db(target.describe("recording the effect")))?;
    if inserted.is_none() {
        tx.rollback()
            .await
            .map_err(db(target.describe("undoing a duplicate effect")))?;
        let recorded: Option<(String, String)> =
            sqlx::query_as("SELECT tool, output FROM demo_effects WHERE idempotency_key = $1")
                .bind(target.idempotency_key)
                .fetch_optional(pool)
                .await
                .map_err(db(
                    target.describe("reading the concurrently recorded effect")
                ))?;
        return match recorded {
            Some((tool, output)) => target.recorded(&tool, &output),
            // This crate never deletes effect rows, so one that conflicted and
            // then vanished was removed by hand.
            None => Err(Error::Corrupt {
                what: target.effect_row(),
                detail: "the row conflicted with this effect and then disappeared".to_owned(),
            }),
        };
    }
    tx.commit()
        .await
        .map_err(db(target.describe("committing the effect")))?;
    Ok(change.output)
}

/// Builds the `map_err` adapter that names what was being done.
fn db(action: impl Into<String>) -> impl FnOnce(sqlx::Error) -> Error {
    let action = action.into();
    move |source| Error::Database { action, source }
}

fn parse_json(what: impl FnOnce() -> String, text: &str) -> Result<Value, Error> {
    serde_json::from_str(text).map_err(|error| Error::Corrupt {
        what: what(),
        detail: error.to_string(),
    })
}

fn check_key(what: &str, value: &str) -> Result<(), Error> {
    if value.len() > MAX_KEY_BYTES {
        return Err(Error::TooLarge {
            what: what.to_owned(),
            actual: value.len(),
            limit: MAX_KEY_BYTES,
        });
    }
    Ok(())
}

fn check_size(what: impl FnOnce() -> String, text: &str) -> Result<(), Error> {
    if text.len() > MAX_VALUE_BYTES {
        return Err(Error::TooLarge {
            what: what(),
            actual: text.len(),
            limit: MAX_VALUE_BYTES,
        });
    }
    Ok(())
}

/// Wall-clock time for the `*_at_ms` columns. They are for humans reading
/// the tables; nothing decides anything by them.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
        // A clock before 1970 is a misconfigured host; 0 keeps the row valid.
        .unwrap_or(0)
}

/// Masks the password in a database URL so errors can show where they tried
/// to connect without leaking a secret.
fn redact_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    match userinfo.find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &userinfo[..colon],
            &rest[at..]
        ),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked_in_urls() {
        assert_eq!(
            redact_password("postgres://u:secret@host:5432/db"),
            "postgres://u:***@host:5432/db"
        );
        assert_eq!(
            redact_password("postgres://u@host/db"),
            "postgres://u@host/db"
        );
        assert_eq!(redact_password("sqlite:///tmp/x.db"), "sqlite:///tmp/x.db");
        assert_eq!(redact_password("sqlite::memory:"), "sqlite::memory:");
    }

    #[tokio::test]
    async fn an_unknown_url_scheme_is_refused() {
        let error = World::connect("mysql://u:pw@h/db").await.unwrap_err();
        assert!(
            matches!(&error, Error::UnsupportedUrl { url } if url == "mysql://u:***@h/db"),
            "{error:?}"
        );
    }
}
