//! A fresh database for one run, so figures never depend on what an earlier
//! run left behind: a SQLite file in a temporary directory, or a new database
//! on the PostgreSQL server the URL names (dropped at the end).

use anyhow::Context;

pub struct FreshDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pg: Option<(String, String)>,
}

impl FreshDb {
    /// `kind_or_url`: `sqlite`, or a `postgres://…/db` URL whose server is used.
    pub async fn create(kind_or_url: &str) -> anyhow::Result<FreshDb> {
        if kind_or_url == "sqlite" || kind_or_url.starts_with("sqlite:") {
            let dir = tempfile::tempdir()?;
            let url = format!("sqlite://{}", dir.path().join("bench.db").display());
            return Ok(FreshDb {
                url,
                _dir: Some(dir),
                pg: None,
            });
        }
        let base = kind_or_url
            .rsplit_once('/')
            .map(|(b, _)| b.to_string())
            .context("a PostgreSQL URL looks like postgres://USER@HOST:PORT/DB")?;
        let admin_url = format!("{base}/postgres");
        let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url)
            .await
            .with_context(|| format!("PostgreSQL is unreachable at {admin_url}"))?;
        let name = format!("mandate_bench_{}", uuid::Uuid::now_v7().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await?;
        Ok(FreshDb {
            url: format!("{base}/{name}"),
            _dir: None,
            pg: Some((admin_url, name)),
        })
    }

    /// Leaves the database in place (the SQLite file's directory too) and
    /// returns its URL.
    pub fn keep(self) -> String {
        if let Some(dir) = self._dir {
            let _ = dir.keep();
        }
        self.url
    }

    pub async fn drop_now(self) {
        if let Some((admin_url, name)) = &self.pg
            && let Ok(mut admin) =
                <sqlx::PgConnection as sqlx::Connection>::connect(admin_url).await
        {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut admin)
            .await;
        }
    }
}
