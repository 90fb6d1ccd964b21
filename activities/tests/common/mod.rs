//! Test databases for the world and demo-tool tests: a fresh SQLite file or
//! a fresh PostgreSQL database per test, dropped when the test ends.
//!
//! PostgreSQL is never skipped: if it is unreachable the test panics and
//! says how to point it at a server (`MANDATE_TEST_PG_URL`).

// Each test binary includes this module and uses a different part of it.
#![allow(dead_code)]

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use mandate_activities::World;
use sqlx::Connection;

/// The PostgreSQL server tests create their databases on.
const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432";

/// A fresh world on its own database, removed on drop.
pub struct TestDb {
    /// The world under test.
    pub world: World,
    /// The URL `world` was connected with, for tests that connect again.
    pub url: String,
    /// Keeps the database alive until the test ends; declared last so the
    /// world's pool is dropped first.
    _cleanup: Cleanup,
}

enum Cleanup {
    Sqlite(tempfile::TempDir),
    Postgres { admin_url: String, database: String },
}

impl TestDb {
    /// A world on a new SQLite file in a temporary directory.
    pub async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("creating a temporary directory for SQLite");
        let url = format!("sqlite://{}", dir.path().join("world.db").display());
        let world = World::connect(&url)
            .await
            .unwrap_or_else(|error| panic!("connecting the world to {url}: {error}"));
        TestDb {
            world,
            url,
            _cleanup: Cleanup::Sqlite(dir),
        }
    }

    /// A world on a new PostgreSQL database named `mandate_act_<hex>`.
    pub async fn postgres() -> TestDb {
        let base = std::env::var("MANDATE_TEST_PG_URL")
            .unwrap_or_else(|_| DEFAULT_PG_URL.to_owned())
            .trim_end_matches('/')
            .to_owned();
        let admin_url = format!("{base}/postgres");
        let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap_or_else(|error| {
            panic!(
                "PostgreSQL is unreachable at {admin_url}: {error}. These tests need a PostgreSQL \
                 server; start one or set MANDATE_TEST_PG_URL (e.g. postgres://user:pw@host:5432)"
            )
        });
        let database = format!("mandate_act_{}", random_hex());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|error| panic!("creating test database {database}: {error}"));
        admin
            .close()
            .await
            .unwrap_or_else(|error| panic!("closing the admin connection: {error}"));
        let url = format!("{base}/{database}");
        let world = World::connect(&url)
            .await
            .unwrap_or_else(|error| panic!("connecting the world to {url}: {error}"));
        TestDb {
            world,
            url,
            _cleanup: Cleanup::Postgres {
                admin_url,
                database,
            },
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Cleanup::Postgres {
            admin_url,
            database,
        } = self
        else {
            // The TempDir removes the SQLite file on its own drop.
            return;
        };
        let admin_url = admin_url.clone();
        let database = database.clone();
        // Drop cannot await, and we may be inside the test's runtime, so the
        // cleanup runs on its own thread with its own runtime. It is
        // best-effort: a leftover database is clutter, not a wrong result.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut admin = sqlx::PgConnection::connect(&admin_url).await?;
                // FORCE ends the world pool's connections, which may still be open.
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {database} WITH (FORCE)"
                )))
                .execute(&mut admin)
                .await?;
                admin.close().await?;
                Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
            })
        });
        match cleanup.join() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("warning: could not drop a test database: {error}"),
            Err(_) => eprintln!("warning: the test database cleanup thread panicked"),
        }
    }
}

/// 16 hex digits, different for every call in every process: `RandomState`
/// is seeded randomly per process, and the counter separates calls.
fn random_hex() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    format!("{:016x}", hasher.finish())
}

/// Instantiates each listed `async fn name(db: &TestDb)` once on SQLite and
/// once on PostgreSQL, as `sqlite::name` and `postgres::name`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let db = $crate::common::TestDb::sqlite().await;
                    super::$name(&db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let db = $crate::common::TestDb::postgres().await;
                    super::$name(&db).await;
                }
            )*
        }
    };
}
