//! Binding a key to a grant, in one place for every source. A source yields for each grant
//! (`sources::KeySource`): "take one from stock" (`list`), or a new key (made by `generate`
//! and `sign`, issued by an `http` endpoint). This module reserves the stock key or stores the
//! new one sealed, binds it to the grant on both rows, and audits it, in the caller's
//! transaction, so the key is committed before Dodo is called.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};

use super::sealed::{SealedValue, claim_values, new_key_ids};
use crate::crypto::Vault;
use crate::domain::{CustomerId, EntitlementId, GrantId, LicenseKey};
use crate::sources::{GrantFacts, KeySource, PoolRecipe, Source, SourceError, Sources, Yield};

/// Times a key is made for one grant before its pool counts as exhausted. A template with
/// 80 bits never collides; a small one that is nearly used up may need many draws.
const MAKE_TRIES: usize = 32;

/// The key bound to a job (sealed, as stored), with the pool's fulfillment options.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ReservedKey {
    pub key_id: i64,
    pub value_sealed: Vec<u8>,
    pub activations_limit: Option<i32>,
    pub expires_in_days: Option<i32>,
}

impl ReservedKey {
    /// The key's value; an error that says why it cannot be read.
    pub fn open(&self, vault: &Vault) -> Result<LicenseKey, String> {
        super::sealed::open_key(vault, self.key_id, &self.value_sealed)
    }
}

/// A grant that needs a key.
#[derive(Debug, Clone)]
pub(super) struct Keyless {
    pub grant_id: GrantId,
    pub entitlement_id: EntitlementId,
    pub customer_id: CustomerId,
}

/// A grant whose pool's source is asked for its key in the claim, with the pool.
type Asked<'a> = (&'a Keyless, &'a PoolRecipe);

/// What became of grants that needed a key.
#[derive(Default)]
pub(super) struct Supplied {
    /// Bound to their keys.
    pub keys: Vec<(GrantId, ReservedKey)>,
    /// Their pool has no available key, or no pool serves them.
    pub no_key: Vec<GrantId>,
    /// Their pool could not make a key, with the reason.
    pub failed: Vec<(GrantId, String)>,
    /// Their source is asked outside any transaction (`http`).
    pub asked: Vec<GrantId>,
}

/// The recipes of the pools serving `entitlements`.
async fn recipes(
    tx: &mut Transaction<'_, Postgres>,
    entitlements: &[&EntitlementId],
) -> Result<HashMap<EntitlementId, PoolRecipe>, sqlx::Error> {
    let found: Vec<PoolRecipe> = sqlx::query_as(
        "SELECT id AS pool_id, name AS pool, entitlement_id, source, template, alphabet, \
                activations_limit, expires_in_days, endpoint \
         FROM pools WHERE entitlement_id = ANY($1)",
    )
    .bind(entitlements)
    .fetch_all(&mut **tx)
    .await?;
    Ok(found
        .into_iter()
        .map(|r| (r.entitlement_id.clone(), r))
        .collect())
}

/// Gets a key for each grant from its pool's source and binds it. A made value that is
/// already in the database is made again (up to `MAKE_TRIES`); a source that cannot make one
/// fails the grant with the reason. Sources that are asked over the network are not asked
/// here: their grants come back in `asked`. The caller holds the entitlements' shared key
/// lock, so the reservation sees every committed import.
pub(super) async fn supply_keys(
    tx: &mut Transaction<'_, Postgres>,
    wanted: &[Keyless],
    sources: &Sources,
    vault: Option<&Vault>,
) -> Result<Supplied, sqlx::Error> {
    let mut supplied = Supplied::default();
    if wanted.is_empty() {
        return Ok(supplied);
    }
    let entitlements: Vec<&EntitlementId> = wanted.iter().map(|w| &w.entitlement_id).collect();
    let recipes = recipes(tx, &entitlements).await?;
    let mut pending: Vec<Asked> = Vec::new();
    for grant in wanted {
        match recipes.get(&grant.entitlement_id) {
            None => supplied.no_key.push(grant.grant_id.clone()),
            Some(recipe) if recipe.source.asks() => supplied.asked.push(grant.grant_id.clone()),
            Some(recipe) => pending.push((grant, recipe)),
        }
    }
    let now = Utc::now();
    for _ in 0..MAKE_TRIES {
        if pending.is_empty() {
            break;
        }
        let (stock, made) = ask_sources(&pending, sources, now, &mut supplied.failed).await;
        let reserved = reserve_from_stock(tx, &stock).await?;
        supplied.no_key.extend(
            stock
                .iter()
                .filter(|(g, _)| !reserved.iter().any(|(r, _)| *r == g.grant_id))
                .map(|(g, _)| g.grant_id.clone()),
        );
        supplied.keys.extend(reserved);
        let Some(vault) = vault else {
            let why = crate::crypto::no_encryption_key();
            supplied
                .failed
                .extend(made.iter().map(|(_, m)| (m.grant_id.clone(), why.clone())));
            pending = Vec::new();
            break;
        };
        let new: Vec<&NewBinding> = made.iter().map(|(_, m)| m).collect();
        let bound = bind_new_keys(tx, vault, &new).await?;
        // A value already stored is made again; the others are done.
        pending = made
            .into_iter()
            .filter(|(_, m)| !bound.iter().any(|(g, _)| g == m.grant_id))
            .map(|(asked, _)| asked)
            .collect();
        supplied.keys.extend(bound);
    }
    for (grant, recipe) in pending {
        supplied.failed.push((
            grant.grant_id.clone(),
            format!(
                "pool `{}` made {MAKE_TRIES} keys that were all already in the database; its template may be exhausted",
                recipe.pool
            ),
        ));
    }
    Ok(supplied)
}

/// What each pending grant's source yields: the grants to serve from stock, and the new keys
/// to bind; a source that yields nothing adds the grant to `failed` with the reason.
async fn ask_sources<'a>(
    pending: &[Asked<'a>],
    sources: &Sources,
    now: DateTime<Utc>,
    failed: &mut Vec<(GrantId, String)>,
) -> (Vec<Asked<'a>>, Vec<(Asked<'a>, NewBinding<'a>)>) {
    let mut stock = Vec::new();
    let mut made = Vec::new();
    for &(grant, recipe) in pending {
        let facts = GrantFacts {
            grant_id: &grant.grant_id,
            customer_id: &grant.customer_id,
            entitlement_id: &grant.entitlement_id,
            payment_id: None,
            subscription_id: None,
            rejected: 0,
            now,
        };
        match sources.of(recipe).key_for(&facts).await {
            Ok(Yield::Stock) => stock.push((grant, recipe)),
            Ok(Yield::Key(key)) => made.push((
                (grant, recipe),
                NewBinding::made(&grant.grant_id, recipe, key),
            )),
            Err(SourceError::Fail(why) | SourceError::Retry { error: why, .. }) => {
                failed.push((grant.grant_id.clone(), why))
            }
        }
    }
    (stock, made)
}

/// A new key to store for a grant, and where it came from.
pub(super) struct NewBinding<'a> {
    pub grant_id: &'a GrantId,
    pub pool_id: i64,
    pub key: LicenseKey,
    /// `keys.batch_id`: the source that made it, or `http:<key source>`.
    pub batch: String,
    /// The audit action: `make` or `receive`.
    pub action: &'static str,
    pub detail: String,
}

impl<'a> NewBinding<'a> {
    /// A key a source yielded for `grant_id`, labelled by where it came from.
    pub fn made(grant_id: &'a GrantId, recipe: &PoolRecipe, key: LicenseKey) -> NewBinding<'a> {
        let (batch, action, detail) = match recipe.source {
            Source::Http => {
                let endpoint = recipe.endpoint.as_deref().unwrap_or_default();
                (
                    format!("http:{endpoint}"),
                    "receive",
                    format!("issued by the endpoint of pool {}", recipe.pool),
                )
            }
            source => (
                source.as_str().to_string(),
                "make",
                format!("made by the {source} source"),
            ),
        };
        NewBinding {
            grant_id,
            pool_id: recipe.pool_id,
            key,
            batch,
            action,
            detail,
        }
    }
}

/// Stores new keys as reserved for their grants and binds them, audited; a value already
/// stored is skipped (its grant is missing from the answer).
pub(super) async fn bind_new_keys(
    tx: &mut Transaction<'_, Postgres>,
    vault: &Vault,
    new: &[&NewBinding<'_>],
) -> Result<Vec<(GrantId, ReservedKey)>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Bound {
        grant_id: GrantId,
        #[sqlx(flatten)]
        key: ReservedKey,
    }
    if new.is_empty() {
        return Ok(Vec::new());
    }
    let ids = new_key_ids(tx, new.len()).await?;
    let sealed: Vec<SealedValue> = new
        .iter()
        .zip(&ids)
        .map(|(n, id)| SealedValue::new(vault, &n.key, *id))
        .collect();
    let bound: Vec<Bound> = sqlx::query_as(&format!(
        r#"
        WITH made AS (
            SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bytea[],
                                 $5::bytea[], $6::text[], $8::text[], $9::text[], $10::text[])
                AS made(pool_id, grant_id, id, value_sealed, value_hash, batch_id, tail,
                        action, detail)
        ), claimed AS ({claimed}
        ), inserted AS (
            INSERT INTO keys (id, pool_id, value_sealed, sealed_with, state, grant_id, batch_id)
            OVERRIDING SYSTEM VALUE
            SELECT made.id, made.pool_id, made.value_sealed, $7, 'reserved', made.grant_id,
                   made.batch_id
            FROM made JOIN claimed ON claimed.key_id = made.id
            RETURNING id, pool_id, grant_id, value_sealed
        ), bound AS (
            UPDATE jobs SET key_id = inserted.id, updated_at = now()
            FROM inserted WHERE jobs.grant_id = inserted.grant_id
        ), audited AS (
            INSERT INTO audit_log (actor, action, pool_id, grant_id, key_id, detail)
            SELECT 'worker', made.action, inserted.pool_id, inserted.grant_id, inserted.id,
                   made.detail
            FROM inserted JOIN made ON made.id = inserted.id
        )
        SELECT inserted.grant_id, inserted.id AS key_id, inserted.value_sealed,
               pools.activations_limit, pools.expires_in_days
        FROM inserted JOIN pools ON pools.id = inserted.pool_id
        "#,
        claimed = claim_values("made"),
    ))
    .bind(new.iter().map(|n| n.pool_id).collect::<Vec<_>>())
    .bind(new.iter().map(|n| n.grant_id).collect::<Vec<_>>())
    .bind(&ids)
    .bind(sealed.iter().map(|s| &s.sealed).collect::<Vec<_>>())
    .bind(sealed.iter().map(|s| &s.hash).collect::<Vec<_>>())
    .bind(new.iter().map(|n| n.batch.as_str()).collect::<Vec<_>>())
    .bind(vault.sealing_key_id())
    .bind(sealed.iter().map(|s| &s.tail).collect::<Vec<_>>())
    .bind(new.iter().map(|n| n.action).collect::<Vec<_>>())
    .bind(new.iter().map(|n| n.detail.as_str()).collect::<Vec<_>>())
    .fetch_all(&mut **tx)
    .await?;
    Ok(bound.into_iter().map(|b| (b.grant_id, b.key)).collect())
}

/// Reserves one available key per grant from its pool, oldest import first, skipping keys
/// another transaction holds. Binds each key to its grant on both rows, audited. Grants
/// missing from the answer found no key.
async fn reserve_from_stock(
    tx: &mut Transaction<'_, Postgres>,
    wanted: &[Asked<'_>],
) -> Result<Vec<(GrantId, ReservedKey)>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Reserved {
        grant_id: GrantId,
        #[sqlx(flatten)]
        key: ReservedKey,
    }
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let (grants, pools): (Vec<&GrantId>, Vec<i64>) =
        wanted.iter().map(|(g, r)| (&g.grant_id, r.pool_id)).unzip();
    let reserved: Vec<Reserved> = sqlx::query_as(
        r#"
        WITH need AS (
            SELECT wanted.grant_id, wanted.pool_id,
                   row_number() OVER (PARTITION BY wanted.pool_id ORDER BY wanted.grant_id) AS rank
            FROM unnest($1::text[], $2::bigint[]) AS wanted(grant_id, pool_id)
        ), need_per_pool AS (
            SELECT pool_id, count(*) AS wanted FROM need GROUP BY pool_id
        ), picked AS (
            SELECT free.id, need_per_pool.pool_id,
                   row_number() OVER (PARTITION BY need_per_pool.pool_id ORDER BY free.id) AS rank
            FROM need_per_pool
            CROSS JOIN LATERAL (
                SELECT keys.id FROM keys
                WHERE keys.pool_id = need_per_pool.pool_id AND keys.state = 'available'
                ORDER BY keys.id
                LIMIT need_per_pool.wanted
                FOR UPDATE SKIP LOCKED
            ) free
        ), pairs AS (
            SELECT need.grant_id, picked.id AS key_id
            FROM need JOIN picked USING (pool_id, rank)
        ), reserved AS (
            UPDATE keys SET state = 'reserved', grant_id = pairs.grant_id, updated_at = now()
            FROM pairs WHERE keys.id = pairs.key_id
        ), bound AS (
            UPDATE jobs SET key_id = pairs.key_id, updated_at = now()
            FROM pairs WHERE jobs.grant_id = pairs.grant_id
        ), audited AS (
            INSERT INTO audit_log (actor, action, grant_id, key_id)
            SELECT 'worker', 'reserve', grant_id, key_id FROM pairs
        )
        SELECT pairs.grant_id, keys.id AS key_id, keys.value_sealed, pools.activations_limit,
               pools.expires_in_days
        FROM pairs JOIN keys ON keys.id = pairs.key_id JOIN pools ON pools.id = keys.pool_id
        "#,
    )
    .bind(&grants)
    .bind(&pools)
    .fetch_all(&mut **tx)
    .await?;
    Ok(reserved.into_iter().map(|r| (r.grant_id, r.key)).collect())
}
