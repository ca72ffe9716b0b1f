//! Keys keyrelay makes at claim time, for `generate` and `sign` pools: made by
//! `sources::KeyMaker`, sealed for their rows, and bound to their grants in the claim's
//! transaction, so they are committed before Dodo is called like any reserved key.

use std::collections::HashMap;

use chrono::Utc;
use sqlx::{Postgres, Transaction};

use super::claim::ReservedKey;
use super::sealed::{SealedValue, new_key_ids};
use crate::crypto::Vault;
use crate::domain::{EntitlementId, GrantId, LicenseKey};
use crate::sources::{KeyMaker, Recipe};

/// Keys made for grants of `generate` and `sign` pools, and the grants none could be made for.
#[derive(Default)]
pub(super) struct Made {
    pub(super) keys: Vec<(GrantId, ReservedKey)>,
    pub(super) failed: Vec<(GrantId, String)>,
}

/// Times a key is made for one grant before its pool counts as exhausted. A template with
/// 80 bits never collides; a small one that is nearly used up may need many draws.
const MAKE_TRIES: usize = 32;

/// Makes a key for each grant whose entitlement's pool makes its keys, and binds it to the
/// grant like a reserved key (audited as `make`). A value already in the database is made
/// again; a pool that cannot make one (no signing key, an exhausted template) fails the job
/// with the reason. Grants of `list` pools are left alone.
pub(super) async fn make_keys(
    tx: &mut Transaction<'_, Postgres>,
    wanted: &[(GrantId, EntitlementId)],
    maker: &KeyMaker,
) -> Result<Made, sqlx::Error> {
    let mut made = Made::default();
    if wanted.is_empty() {
        return Ok(made);
    }
    let entitlements: Vec<&EntitlementId> = wanted.iter().map(|(_, e)| e).collect();
    let recipes: HashMap<EntitlementId, Recipe> = sqlx::query_as(
        "SELECT id AS pool_id, name AS pool, entitlement_id, source, template, alphabet, \
                activations_limit, expires_in_days \
         FROM pools WHERE entitlement_id = ANY($1) AND source IN ('generate', 'sign')",
    )
    .bind(&entitlements)
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .map(|r: Recipe| (r.entitlement_id.clone(), r))
    .collect();
    let mut pending: Vec<(&GrantId, &Recipe)> = wanted
        .iter()
        .filter_map(|(grant, ent)| recipes.get(ent).map(|r| (grant, r)))
        .collect();
    let vault = match maker.vault() {
        Ok(vault) => vault,
        Err(why) => {
            made.failed = pending
                .iter()
                .map(|(g, _)| ((*g).clone(), why.clone()))
                .collect();
            return Ok(made);
        }
    };
    let now = Utc::now();
    for _ in 0..MAKE_TRIES {
        if pending.is_empty() {
            break;
        }
        let mut values = Vec::new();
        for (grant, recipe) in pending {
            match maker.make(recipe, grant, now) {
                Ok(value) => values.push((grant, recipe, value)),
                Err(why) => made.failed.push((grant.clone(), why)),
            }
        }
        let bound = bind_made_keys(tx, vault, &values).await?;
        pending = values
            .into_iter()
            .filter(|(grant, _, _)| !bound.iter().any(|(g, _)| g == *grant))
            .map(|(grant, recipe, _)| (grant, recipe))
            .collect();
        made.keys.extend(bound);
    }
    for (grant, recipe) in pending {
        made.failed.push((
            grant.clone(),
            format!(
                "pool `{}` made {MAKE_TRIES} keys that were all already in the database; its template may be exhausted",
                recipe.pool
            ),
        ));
    }
    Ok(made)
}

/// Stores made keys as reserved for their grants and binds them; a value already stored is
/// skipped (its grant is missing from the answer).
async fn bind_made_keys(
    tx: &mut Transaction<'_, Postgres>,
    vault: &Vault,
    values: &[(&GrantId, &Recipe, LicenseKey)],
) -> Result<Vec<(GrantId, ReservedKey)>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Bound {
        grant_id: GrantId,
        #[sqlx(flatten)]
        key: ReservedKey,
    }
    if values.is_empty() {
        return Ok(Vec::new());
    }
    let ids = new_key_ids(tx, values.len()).await?;
    let pools: Vec<i64> = values.iter().map(|(_, r, _)| r.pool_id).collect();
    let grants: Vec<&GrantId> = values.iter().map(|(g, _, _)| *g).collect();
    let sealed: Vec<SealedValue> = values
        .iter()
        .zip(&ids)
        .map(|((_, _, key), id)| SealedValue::new(vault, key, *id))
        .collect();
    let sources: Vec<&str> = values.iter().map(|(_, r, _)| r.source.as_str()).collect();
    let bound: Vec<Bound> = sqlx::query_as(
        r#"
        WITH made AS (
            SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bytea[],
                                 $5::bytea[], $6::text[], $8::text[])
                AS made(pool_id, grant_id, id, value_sealed, value_hash, source, tail)
        ), inserted AS (
            INSERT INTO keys (id, pool_id, value_sealed, value_hash, sealed_with, state,
                              grant_id, batch_id, tail)
            OVERRIDING SYSTEM VALUE
            SELECT id, pool_id, value_sealed, value_hash, $7, 'reserved', grant_id, source, tail
            FROM made
            ON CONFLICT (value_hash) DO NOTHING
            RETURNING id, pool_id, grant_id, value_sealed, batch_id
        ), bound AS (
            UPDATE jobs SET key_id = inserted.id, updated_at = now()
            FROM inserted WHERE jobs.grant_id = inserted.grant_id
        ), audited AS (
            INSERT INTO audit_log (actor, action, pool_id, grant_id, key_id, detail)
            SELECT 'worker', 'make', pool_id, grant_id, id, 'made by the ' || batch_id || ' source'
            FROM inserted
        )
        SELECT inserted.grant_id, inserted.id AS key_id, inserted.value_sealed,
               pools.activations_limit, pools.expires_in_days
        FROM inserted JOIN pools ON pools.id = inserted.pool_id
        "#,
    )
    .bind(&pools)
    .bind(&grants)
    .bind(&ids)
    .bind(sealed.iter().map(|s| &s.sealed).collect::<Vec<_>>())
    .bind(sealed.iter().map(|s| &s.hash).collect::<Vec<_>>())
    .bind(&sources)
    .bind(vault.sealing_key_id())
    .bind(sealed.iter().map(|s| &s.tail).collect::<Vec<_>>())
    .fetch_all(&mut **tx)
    .await?;
    Ok(bound.into_iter().map(|b| (b.grant_id, b.key)).collect())
}

/// Fails claimed jobs for which no key could be made, with the reason (on the job and as its
/// attempt, outcome `no_key`), and says so at error level: a paying customer waits until
/// someone fixes the pool and retries.
pub(super) async fn fail_without_key(
    tx: &mut Transaction<'_, Postgres>,
    failed: &[(GrantId, String)],
) -> Result<(), sqlx::Error> {
    if failed.is_empty() {
        return Ok(());
    }
    let (grants, reasons): (Vec<&GrantId>, Vec<&str>) =
        failed.iter().map(|(g, r)| (g, r.as_str())).unzip();
    sqlx::query(
        r#"
        WITH ended AS (
            UPDATE jobs SET state = 'failed', lease_token = NULL, last_error = failed.reason,
                            finished_at = now(), updated_at = now()
            FROM unnest($1::text[], $2::text[]) AS failed(grant_id, reason)
            WHERE jobs.grant_id = failed.grant_id
            RETURNING jobs.grant_id, failed.reason
        )
        INSERT INTO attempts (grant_id, started_at, duration_ms, outcome, error)
        SELECT grant_id, now(), 0, 'no_key', reason FROM ended
        "#,
    )
    .bind(&grants)
    .bind(&reasons)
    .execute(&mut **tx)
    .await?;
    for (grant_id, reason) in failed {
        tracing::error!(%grant_id, error = %reason, "no key could be made for the grant; job failed");
    }
    Ok(())
}
