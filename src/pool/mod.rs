//! Key pools: creating a pool bound to one entitlement, importing keys (all or nothing), and
//! stock figures. Reservation and release live with the queue (`fulfillment::storage`).

pub mod keyfile;

use serde::Serialize;
use sqlx::PgPool;

use crate::audit::{self, Actor, Subject};
use crate::fulfillment::storage::{lock_entitlement_keys, resume_waiting_for_keys};

/// Keys inserted per statement during an import.
const IMPORT_CHUNK: usize = 5_000;

#[derive(Debug, Clone, Default)]
pub struct NewPool {
    pub name: String,
    pub entitlement_id: String,
    pub low_stock: u32,
    pub activations_limit: Option<u32>,
    pub expires_in_days: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("a pool named `{0}` already exists")]
    NameTaken(String),
    #[error(
        "entitlement {0} already has a pool (one pool per entitlement); see `keyrelay pool list`"
    )]
    EntitlementTaken(String),
    #[error("no pool named `{0}`; create it with `keyrelay pool add {0} --entitlement ENT_ID`")]
    NotFound(String),
    #[error("pool name and entitlement id must not be empty")]
    Empty,
    #[error("activations limit and expiry must be at least 1")]
    OutOfRange,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Creates a pool and wakes any jobs that were waiting for one.
pub async fn add_pool(pool: &PgPool, new: &NewPool) -> Result<u64, PoolError> {
    if new.name.trim().is_empty() || new.entitlement_id.trim().is_empty() {
        return Err(PoolError::Empty);
    }
    if new.activations_limit == Some(0) || new.expires_in_days == Some(0) {
        return Err(PoolError::OutOfRange);
    }
    let mut tx = pool.begin().await?;
    lock_entitlement_keys(&mut tx, &new.entitlement_id).await?;
    let inserted = sqlx::query_scalar(
        r#"
        INSERT INTO pools (name, entitlement_id, low_stock, activations_limit, expires_in_days)
        VALUES ($1, $2, $3, $4, $5)
        RETURNING id
        "#,
    )
    .bind(new.name.trim())
    .bind(new.entitlement_id.trim())
    .bind(new.low_stock as i32)
    .bind(new.activations_limit.map(|v| v as i32))
    .bind(new.expires_in_days.map(|v| v as i32))
    .fetch_one(&mut *tx)
    .await;
    if let Err(sqlx::Error::Database(e)) = &inserted {
        match e.constraint() {
            Some("pools_name_key") => return Err(PoolError::NameTaken(new.name.clone())),
            Some("pools_entitlement_id_key") => {
                return Err(PoolError::EntitlementTaken(new.entitlement_id.clone()));
            }
            _ => {}
        }
    }
    let pool_id: i64 = inserted?;
    audit::record(
        &mut *tx,
        Actor::Cli,
        "create_pool",
        Subject {
            pool_id: Some(pool_id),
            detail: Some(&format!("entitlement {}", new.entitlement_id.trim())),
            ..Default::default()
        },
    )
    .await?;
    let resumed = resume_waiting_for_keys(&mut tx, new.entitlement_id.trim()).await?;
    tx.commit().await?;
    Ok(resumed)
}

#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    pub pool: String,
    pub batch_id: String,
    pub imported: u64,
    /// Already in the database (any pool) or repeated in the file.
    pub duplicates: u64,
    pub invalid: u64,
    /// Jobs that were waiting for keys and are queued again.
    pub resumed_jobs: u64,
    pub dry_run: bool,
}

/// Imports `keys` (unique, in file order) into the named pool in one transaction: either every
/// new key is stored or none is. Keys already anywhere in the database are skipped and counted.
/// With `dry_run` the transaction is rolled back, so the counts are exact but nothing changes.
pub async fn import_keys(
    pool: &PgPool,
    name: &str,
    parsed: &keyfile::ParsedKeys,
    dry_run: bool,
    mut progress: impl FnMut(u64),
) -> Result<ImportReport, PoolError> {
    let mut tx = pool.begin().await?;
    let row: Option<(i64, String)> =
        sqlx::query_as("SELECT id, entitlement_id FROM pools WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
    let (pool_id, entitlement_id) = row.ok_or_else(|| PoolError::NotFound(name.to_string()))?;
    lock_entitlement_keys(&mut tx, &entitlement_id).await?;
    let batch_id = format!(
        "imp_{}_{:06x}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S"),
        rand::random::<u32>() & 0xff_ffff
    );
    let mut imported = 0u64;
    for chunk in parsed.keys.chunks(IMPORT_CHUNK) {
        let chunk: Vec<&str> = chunk.iter().map(String::as_str).collect();
        imported += sqlx::query(
            r#"
            INSERT INTO keys (pool_id, value, batch_id)
            SELECT $1, v, $3 FROM unnest($2::text[]) WITH ORDINALITY AS t(v, ord) ORDER BY ord
            ON CONFLICT (value) DO NOTHING
            "#,
        )
        .bind(pool_id)
        .bind(&chunk)
        .bind(&batch_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        progress(chunk.len() as u64);
    }
    let resumed_jobs = if imported > 0 {
        resume_waiting_for_keys(&mut tx, &entitlement_id).await?
    } else {
        0
    };
    audit::record(
        &mut *tx,
        Actor::Cli,
        "import",
        Subject {
            pool_id: Some(pool_id),
            batch_id: Some(&batch_id),
            detail: Some(&format!("{imported} keys imported")),
            ..Default::default()
        },
    )
    .await?;
    // A restock re-arms the low-stock alert.
    sqlx::query(
        "UPDATE pools SET low_stock_alerted = false WHERE id = $1 AND low_stock_alerted          AND (SELECT count(*) FROM keys WHERE pool_id = $1 AND state = 'available') >= low_stock",
    )
    .bind(pool_id)
    .execute(&mut *tx)
    .await?;
    if dry_run {
        tx.rollback().await?;
    } else {
        tx.commit().await?;
    }
    Ok(ImportReport {
        pool: name.to_string(),
        batch_id,
        imported,
        duplicates: (parsed.keys.len() as u64 - imported) + parsed.duplicates_in_file as u64,
        invalid: parsed.invalid.len() as u64,
        resumed_jobs,
        dry_run,
    })
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct PoolStock {
    pub name: String,
    pub entitlement_id: String,
    pub available: i64,
    pub reserved: i64,
    pub delivered: i64,
    pub rejected: i64,
    pub revoked: i64,
    pub low_stock_threshold: i32,
    pub low_stock: bool,
    pub activations_limit: Option<i32>,
    pub expires_in_days: Option<i32>,
}

/// Every pool with its key counts by state.
pub async fn list_pools(pool: &PgPool) -> Result<Vec<PoolStock>, sqlx::Error> {
    sqlx::query_as(
        r#"
        SELECT p.name, p.entitlement_id,
               count(k.id) FILTER (WHERE k.state = 'available') AS available,
               count(k.id) FILTER (WHERE k.state = 'reserved')  AS reserved,
               count(k.id) FILTER (WHERE k.state = 'delivered') AS delivered,
               count(k.id) FILTER (WHERE k.state = 'rejected')  AS rejected,
               count(k.id) FILTER (WHERE k.state = 'revoked')   AS revoked,
               p.low_stock AS low_stock_threshold,
               count(k.id) FILTER (WHERE k.state = 'available') < p.low_stock AS low_stock,
               p.activations_limit, p.expires_in_days
        FROM pools p LEFT JOIN keys k ON k.pool_id = p.id
        GROUP BY p.id ORDER BY p.name
        "#,
    )
    .fetch_all(pool)
    .await
}
