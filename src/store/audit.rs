//! The audit trail: every import, reservation, delivery, rejection, release, revocation,
//! replay, retry and cancel, with time and actor. Kept when events and jobs are pruned.

use crate::db::Db;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::domain::{Actor, GrantId};

/// What an entry is about; unset parts are NULL.
#[derive(Debug, Clone, Copy, Default)]
pub struct Subject<'a> {
    pub pool_id: Option<i64>,
    pub grant_id: Option<&'a GrantId>,
    pub key_id: Option<i64>,
    pub batch_id: Option<&'a str>,
    pub detail: Option<&'a str>,
}

/// Adds one entry (inside the caller's transaction when given one).
pub async fn record<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    actor: Actor,
    action: &str,
    subject: Subject<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit_log (actor, action, pool_id, grant_id, key_id, batch_id, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(actor.as_str())
    .bind(action)
    .bind(subject.pool_id)
    .bind(subject.grant_id)
    .bind(subject.key_id)
    .bind(subject.batch_id)
    .bind(subject.detail)
    .execute(executor)
    .await?;
    Ok(())
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AuditEntry {
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub grant_id: Option<String>,
    pub key_id: Option<i64>,
    pub batch_id: Option<String>,
    pub detail: Option<String>,
}

const COLUMNS: &str = "audit_log.at, audit_log.actor, audit_log.action, audit_log.grant_id, \
     audit_log.key_id, audit_log.batch_id, audit_log.detail";

/// A grant's entries, oldest first.
pub async fn for_grant(db: &Db, grant_id: &GrantId) -> Result<Vec<AuditEntry>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM audit_log WHERE audit_log.grant_id = $1 ORDER BY audit_log.id"
    ))
    .bind(grant_id)
    .fetch_all(db)
    .await
}

/// A pool's entries (its imports and what happened to its keys), newest first.
pub async fn for_pool(
    db: &Db,
    pool_name: &str,
    limit: i64,
) -> Result<Option<Vec<AuditEntry>>, sqlx::Error> {
    let id: Option<i64> = sqlx::query_scalar("SELECT id FROM pools WHERE name = $1")
        .bind(pool_name)
        .fetch_optional(db)
        .await?;
    let Some(id) = id else { return Ok(None) };
    let entries = sqlx::query_as(&format!(
        r#"
        SELECT {COLUMNS} FROM audit_log
        WHERE audit_log.pool_id = $1
           OR audit_log.key_id IN (SELECT keys.id FROM keys WHERE keys.pool_id = $1)
        ORDER BY audit_log.id DESC LIMIT $2
        "#
    ))
    .bind(id)
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(Some(entries))
}
