//! Pools and key imports. Both take the entitlement's key lock exclusively and resume the jobs
//! waiting for keys in the same transaction, so no job is parked just as its keys arrive.

use crate::db::Db;
use std::collections::HashSet;

use sqlx::{Postgres, Transaction};

use super::audit::{self, Subject};
use super::sealed::{NewKey, claim_values, new_key_ids};
use super::{KEY_LOCK_CLASS, notify_jobs_ready, stock};
use crate::domain::{Actor, EntitlementId, JobState};
use crate::jobs::JobEvent;
use crate::sources::{PoolRecipe, Source};

#[derive(Debug, Clone)]
pub struct NewPoolRow<'a> {
    pub name: &'a str,
    pub entitlement_id: &'a EntitlementId,
    pub low_stock: i32,
    pub activations_limit: Option<i32>,
    pub expires_in_days: Option<i32>,
    pub source: Source,
    pub template: Option<&'a str>,
    pub alphabet: Option<&'a str>,
    pub endpoint: Option<&'a str>,
    pub keys_with_spaces: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CreatePoolError {
    #[error("a pool named `{0}` already exists")]
    NameTaken(String),
    #[error(
        "entitlement {0} already has a pool (one pool per entitlement); see `keyrelay pool list`"
    )]
    EntitlementTaken(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Creates a pool (audited) and queues the jobs that were waiting for one; returns how many.
pub async fn create_pool(db: &Db, new: &NewPoolRow<'_>) -> Result<u64, CreatePoolError> {
    let mut tx = db.begin().await?;
    lock_entitlement_keys(&mut tx, new.entitlement_id).await?;
    let inserted = sqlx::query_scalar(
        r#"
        INSERT INTO pools (name, entitlement_id, low_stock, activations_limit, expires_in_days,
                           source, template, alphabet, endpoint, keys_with_spaces)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
        RETURNING id
        "#,
    )
    .bind(new.name)
    .bind(new.entitlement_id)
    .bind(new.low_stock)
    .bind(new.activations_limit)
    .bind(new.expires_in_days)
    .bind(new.source)
    .bind(new.template)
    .bind(new.alphabet)
    .bind(new.endpoint)
    .bind(new.keys_with_spaces)
    .fetch_one(&mut *tx)
    .await;
    if let Err(sqlx::Error::Database(e)) = &inserted {
        match e.constraint() {
            Some("pools_name_key") => return Err(CreatePoolError::NameTaken(new.name.into())),
            Some("pools_entitlement_id_key") => {
                return Err(CreatePoolError::EntitlementTaken(
                    new.entitlement_id.to_string(),
                ));
            }
            _ => {}
        }
    }
    let pool_id: i64 = inserted?;
    let subject = Subject {
        pool_id: Some(pool_id),
        detail: Some(&format!(
            "entitlement {}, source {}",
            new.entitlement_id, new.source
        )),
        ..Default::default()
    };
    audit::record(&mut *tx, Actor::Cli, "create_pool", subject).await?;
    let resumed = resume_waiting_for_keys(&mut tx, new.entitlement_id).await?;
    tx.commit().await?;
    Ok(resumed)
}

/// An import's transaction: the pool is locked for keys until `finish`.
pub struct Import<'c> {
    tx: Transaction<'c, Postgres>,
    source: Source,
    pool_id: i64,
    entitlement_id: EntitlementId,
    batch_id: String,
    imported: u64,
}

/// What an import stored.
#[derive(Debug, Clone, Copy)]
pub struct Imported {
    pub imported: u64,
    /// Jobs that were waiting for keys and are queued again.
    pub resumed_jobs: u64,
}

impl Import<'_> {
    /// Starts importing into the named pool; `None` if there is no such pool.
    pub async fn begin(db: &Db, name: &str) -> Result<Option<Import<'static>>, sqlx::Error> {
        let mut tx = db.begin().await?;
        let row: Option<(i64, EntitlementId, Source)> =
            sqlx::query_as("SELECT id, entitlement_id, source FROM pools WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((pool_id, entitlement_id, source)) = row else {
            return Ok(None);
        };
        lock_entitlement_keys(&mut tx, &entitlement_id).await?;
        let batch_id = format!(
            "imp_{}_{:06x}",
            chrono::Utc::now().format("%Y%m%dT%H%M%S"),
            rand::random::<u32>() & 0xff_ffff
        );
        Ok(Some(Import {
            tx,
            source,
            pool_id,
            entitlement_id,
            batch_id,
            imported: 0,
        }))
    }

    /// Where the pool's keys come from: only `list` pools take imports.
    pub fn source(&self) -> Source {
        self.source
    }

    /// The id every key of this import and its audit entry carry.
    pub fn batch_id(&self) -> &str {
        &self.batch_id
    }

    /// Takes ids for `count` keys of this import, ascending: the order they are handed out.
    pub async fn take_ids(&mut self, count: usize) -> Result<Vec<i64>, sqlx::Error> {
        new_key_ids(&mut self.tx, count).await
    }

    /// Adds sealed keys (ids from `take_ids`, in file order), skipping values already anywhere
    /// in the database under any configured encryption key; returns how many were new.
    /// Nothing is visible to others until `finish`.
    pub async fn add(&mut self, keys: &[NewKey], sealed_with: i32) -> Result<u64, sqlx::Error> {
        // Under one key the unique constraint finds every value already stored; during a
        // rotation a value may be stored under an older key's hash, so look those up.
        let older: Vec<&Vec<u8>> = keys.iter().flat_map(|k| &k.older_hashes).collect();
        let stored: HashSet<Vec<u8>> = match older.is_empty() {
            true => HashSet::new(),
            false => {
                sqlx::query_scalar("SELECT value_hash FROM key_values WHERE value_hash = ANY($1)")
                    .bind(&older)
                    .fetch_all(&mut *self.tx)
                    .await?
                    .into_iter()
                    .collect()
            }
        };
        let new: Vec<&NewKey> = keys
            .iter()
            .filter(|k| !k.older_hashes.iter().any(|h| stored.contains(h)))
            .collect();
        let added = sqlx::query(&format!(
            r#"
            WITH file AS (
                SELECT * FROM unnest($2::bigint[], $3::bytea[], $4::bytea[], $7::text[])
                    AS file(id, value_sealed, value_hash, tail)
            ), claimed AS ({claimed})
            INSERT INTO keys (id, pool_id, value_sealed, sealed_with, batch_id)
            OVERRIDING SYSTEM VALUE
            SELECT file.id, $1, file.value_sealed, $5, $6
            FROM file JOIN claimed ON claimed.key_id = file.id
            "#,
            claimed = claim_values("file"),
        ))
        .bind(self.pool_id)
        .bind(new.iter().map(|k| k.id).collect::<Vec<_>>())
        .bind(new.iter().map(|k| &k.value.sealed).collect::<Vec<_>>())
        .bind(new.iter().map(|k| &k.value.hash).collect::<Vec<_>>())
        .bind(sealed_with)
        .bind(&self.batch_id)
        .bind(new.iter().map(|k| &k.value.tail).collect::<Vec<_>>())
        .execute(&mut *self.tx)
        .await?
        .rows_affected();
        self.imported += added;
        Ok(added)
    }

    /// Audits the import, resumes waiting jobs, re-arms the low-stock alert if the pool is
    /// restocked, and commits — or, with `dry_run`, rolls everything back.
    pub async fn finish(mut self, dry_run: bool) -> Result<Imported, sqlx::Error> {
        let resumed_jobs = if self.imported > 0 {
            resume_waiting_for_keys(&mut self.tx, &self.entitlement_id).await?
        } else {
            0
        };
        let subject = Subject {
            pool_id: Some(self.pool_id),
            batch_id: Some(&self.batch_id),
            detail: Some(&format!("{} keys imported", self.imported)),
            ..Default::default()
        };
        audit::record(&mut *self.tx, Actor::Cli, "import", subject).await?;
        stock::rearm_low_stock_alert(&mut self.tx, self.pool_id).await?;
        if dry_run {
            self.tx.rollback().await?;
        } else {
            self.tx.commit().await?;
        }
        Ok(Imported {
            imported: self.imported,
            resumed_jobs,
        })
    }
}

/// Puts jobs waiting for keys of `entitlement_id` back in the queue and wakes workers on
/// commit. The caller holds the entitlement's key lock exclusively (`lock_entitlement_keys`).
pub async fn resume_waiting_for_keys(
    tx: &mut Transaction<'_, Postgres>,
    entitlement_id: &EntitlementId,
) -> Result<u64, sqlx::Error> {
    let resumed = sqlx::query(
        r#"
        UPDATE jobs SET state = $2, run_at = now(), updated_at = now(), last_error = NULL
        WHERE state = 'waiting_for_keys' AND entitlement_id = $1
        "#,
    )
    .bind(entitlement_id)
    .bind(super::moved(
        JobState::WaitingForKeys,
        JobEvent::KeysArrived,
    ))
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if resumed > 0 {
        notify_jobs_ready(&mut **tx).await?;
    }
    Ok(resumed)
}

/// Takes the entitlement's key lock exclusively until the transaction ends.
pub async fn lock_entitlement_keys(
    tx: &mut Transaction<'_, Postgres>,
    entitlement_id: &EntitlementId,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(KEY_LOCK_CLASS)
        .bind(entitlement_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The entitlements that have a pool, by pool name.
pub async fn pooled_entitlements(db: &Db) -> Result<Vec<EntitlementId>, sqlx::Error> {
    sqlx::query_scalar("SELECT entitlement_id FROM pools ORDER BY name")
        .fetch_all(db)
        .await
}

/// Every pool as its source needs it, by name.
pub async fn recipes(db: &Db) -> Result<Vec<PoolRecipe>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id AS pool_id, name AS pool, entitlement_id, source, template, alphabet, \
                activations_limit, expires_in_days, endpoint \
         FROM pools ORDER BY name",
    )
    .fetch_all(db)
    .await
}

/// Records what a worker found of each pool's source (`None`: usable) and when.
pub async fn record_source_problems(
    db: &Db,
    found: &[(String, Option<String>)],
) -> Result<(), sqlx::Error> {
    let (names, problems): (Vec<&str>, Vec<Option<&str>>) = found
        .iter()
        .map(|(n, p)| (n.as_str(), p.as_deref()))
        .unzip();
    sqlx::query(
        "UPDATE pools SET source_problem = found.problem, source_checked_at = now() \
         FROM unnest($1::text[], $2::text[]) AS found(name, problem) WHERE pools.name = found.name",
    )
    .bind(&names)
    .bind(&problems)
    .execute(db)
    .await?;
    Ok(())
}

/// Pools whose source a worker found unusable: (name, problem), by name.
pub async fn source_problems(db: &Db) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT name, source_problem FROM pools WHERE source_problem IS NOT NULL ORDER BY name",
    )
    .fetch_all(db)
    .await
}

/// Every pool's name and whether a worker found its source unusable, by name.
pub async fn source_status(db: &Db) -> Result<Vec<(String, bool)>, sqlx::Error> {
    sqlx::query_as("SELECT name, source_problem IS NOT NULL FROM pools ORDER BY name")
        .fetch_all(db)
        .await
}

/// Whether the named pool takes keys with spaces inside; None when there is no such pool.
pub async fn keys_with_spaces(db: &Db, name: &str) -> Result<Option<bool>, sqlx::Error> {
    sqlx::query_scalar("SELECT keys_with_spaces FROM pools WHERE name = $1")
        .bind(name)
        .fetch_optional(db)
        .await
}
