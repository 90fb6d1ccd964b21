//! What governance keeps besides histories: batch pre-approvals. One SQL text
//! for both backends (`$N` parameters work on SQLite too), like `admin`.

use crate::core::gateway::Preapproval;

/// The most pre-approvals one read returns (and the most a process keeps in
/// force at once: grants past it are refused at the door).
pub const MAX_PREAPPROVALS: u32 = 10_000;

macro_rules! governance_methods {
    () => {
        fn insert_preapproval(
            &self,
            p: crate::core::gateway::Preapproval,
        ) -> BoxFuture<'_, Result<(), Error>> {
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO preapprovals (id, tool, agent, scope, granted_by, granted_at_ms, expires_at_ms, reason)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(&p.id)
                .bind(&p.tool)
                .bind(&p.agent)
                .bind(&p.scope)
                .bind(&p.granted_by)
                .bind(p.granted_at_ms)
                .bind(p.expires_at_ms)
                .bind(&p.reason)
                .execute(&self.pool)
                .await
                .map_err(Error::db("record pre-approval"))?;
                Ok(())
            })
        }

        fn revoke_preapproval(
            &self,
            id: &str,
            by: &str,
            at_ms: i64,
        ) -> BoxFuture<'_, Result<Option<crate::core::gateway::Preapproval>, Error>> {
            let id = id.to_string();
            let by = by.to_string();
            Box::pin(async move {
                let row = sqlx::query(
                    "UPDATE preapprovals SET revoked_by = $1, revoked_at_ms = $2
                     WHERE id = $3 AND revoked_at_ms IS NULL
                     RETURNING id, tool, agent, scope, granted_by, granted_at_ms, expires_at_ms, reason, revoked_by, revoked_at_ms",
                )
                .bind(by)
                .bind(at_ms)
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(Error::db("revoke pre-approval"))?;
                row.as_ref().map(super::governance::preapproval_from_row).transpose()
            })
        }

        fn preapprovals(
            &self,
            live_at_ms: Option<i64>,
            limit: u32,
        ) -> BoxFuture<'_, Result<Vec<crate::core::gateway::Preapproval>, Error>> {
            Box::pin(async move {
                let rows = sqlx::query(
                    "SELECT id, tool, agent, scope, granted_by, granted_at_ms, expires_at_ms, reason, revoked_by, revoked_at_ms
                     FROM preapprovals
                     WHERE $1 IS NULL OR (revoked_at_ms IS NULL AND expires_at_ms > $1)
                     ORDER BY granted_at_ms DESC, id DESC LIMIT $2",
                )
                .bind(live_at_ms)
                .bind(limit.min(super::governance::MAX_PREAPPROVALS) as i64)
                .fetch_all(&self.pool)
                .await
                .map_err(Error::db("list pre-approvals"))?;
                rows.iter().map(super::governance::preapproval_from_row).collect()
            })
        }
    };
}
pub(crate) use governance_methods;

/// Reads a pre-approval row (columns as selected by `governance_methods`).
pub(crate) fn preapproval_from_row<R>(r: &R) -> Result<Preapproval, super::Error>
where
    R: sqlx::Row,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    String: for<'d> sqlx::Decode<'d, R::Database> + sqlx::Type<R::Database>,
    i64: for<'d> sqlx::Decode<'d, R::Database> + sqlx::Type<R::Database>,
{
    let e = |e: sqlx::Error| super::Error::Corrupt(format!("preapprovals row: {e}"));
    Ok(Preapproval {
        id: r.try_get("id").map_err(e)?,
        tool: r.try_get("tool").map_err(e)?,
        agent: r.try_get("agent").map_err(e)?,
        scope: r.try_get("scope").map_err(e)?,
        granted_by: r.try_get("granted_by").map_err(e)?,
        granted_at_ms: r.try_get("granted_at_ms").map_err(e)?,
        expires_at_ms: r.try_get("expires_at_ms").map_err(e)?,
        reason: r.try_get("reason").map_err(e)?,
        revoked_by: r.try_get("revoked_by").map_err(e)?,
        revoked_at_ms: r.try_get("revoked_at_ms").map_err(e)?,
    })
}
