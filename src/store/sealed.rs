//! Key values as the store writes them: sealed for their row and hashed for look-ups
//! (`crypto::Vault`), under row ids taken before the insert so the seal can name the row.

use crate::db::Db;
use sqlx::{Postgres, Transaction};

use crate::crypto::{Row, Vault};
use crate::domain::LicenseKey;

/// A key value ready to store in the row `id`.
pub struct SealedValue {
    pub sealed: Vec<u8>,
    pub hash: Vec<u8>,
    /// `key_values.tail`: what the masked key shows at its end, for search.
    pub tail: String,
}

impl SealedValue {
    pub fn new(vault: &Vault, key: &LicenseKey, id: i64) -> SealedValue {
        SealedValue {
            sealed: vault.seal(key.reveal(), Row::Key(id)),
            hash: vault.hash(key.reveal()),
            tail: key.search_tail(),
        }
    }
}

/// The key stored sealed in the `keys` row `id`; an error that says why it cannot be read.
pub fn open_key(vault: &Vault, id: i64, sealed: &[u8]) -> Result<LicenseKey, String> {
    let value = vault
        .open(sealed, Row::Key(id))
        .map_err(|e| format!("key #{id} cannot be read: {e}"))?;
    LicenseKey::parse(&value).map_err(|e| format!("key #{id} is not a valid key: {e}"))
}

/// A key of an import, sealed for the row it will be stored in.
pub struct NewKey {
    pub id: i64,
    pub value: SealedValue,
    /// Its look-up hashes under the older configured keys (during a rotation).
    pub older_hashes: Vec<Vec<u8>>,
}

impl NewKey {
    pub fn new(vault: &Vault, key: &LicenseKey, id: i64) -> NewKey {
        let mut hashes = vault.hashes(key.reveal());
        let hash = hashes.remove(0);
        NewKey {
            id,
            value: SealedValue {
                sealed: vault.seal(key.reveal(), Row::Key(id)),
                hash,
                tail: key.search_tail(),
            },
            older_hashes: hashes,
        }
    }
}

/// Claims the values of the rows `from` names (columns `value_hash`, `id`, `tail`) in
/// `key_values`, as a statement for a `WITH`: it returns the `key_id` of each value that was
/// new. A key is stored only if its value was claimed, in the same statement, so no value is
/// stored twice.
pub(super) fn claim_values(from: &str) -> String {
    format!(
        "INSERT INTO key_values (value_hash, key_id, tail) \
         SELECT value_hash, id, tail FROM {from} \
         ON CONFLICT (value_hash) DO NOTHING \
         RETURNING key_id"
    )
}

/// Ids one call to the `keys` id sequence reserves (its increment).
const ID_BLOCK: i64 = 1_000;

/// Takes `count` new ids for `keys` rows, in ascending order (the order keys are handed out).
pub async fn new_key_ids(
    tx: &mut Transaction<'_, Postgres>,
    count: usize,
) -> Result<Vec<i64>, sqlx::Error> {
    let blocks = (count as i64 + ID_BLOCK - 1) / ID_BLOCK;
    let mut starts: Vec<i64> = sqlx::query_scalar(
        "SELECT nextval(pg_get_serial_sequence('keys', 'id')) FROM generate_series(1, $1)",
    )
    .bind(blocks)
    .fetch_all(&mut **tx)
    .await?;
    starts.sort_unstable();
    Ok(starts
        .into_iter()
        .flat_map(|start| start..start + ID_BLOCK)
        .take(count)
        .collect())
}

/// Rows an earlier keyrelay stored in plaintext: keys, and events whose payload holds a key.
pub async fn count_plaintext(db: &Db) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT (SELECT count(*) FROM keys WHERE value IS NOT NULL), \
                (SELECT count(*) FROM events WHERE {EVENT_HOLDS_PLAINTEXT_KEY})"
    ))
    .fetch_one(db)
    .await
}

const EVENT_HOLDS_PLAINTEXT_KEY: &str =
    "jsonb_path_exists(payload, 'lax $.**.license_key.key ? (@.type() == \"string\")')";

/// Seals up to `batch` plaintext key values in place (same row, same id) and clears the
/// plaintext; returns how many. Rows other transactions hold are left for the next batch.
pub async fn seal_plaintext_keys(db: &Db, vault: &Vault, batch: i64) -> Result<u64, sqlx::Error> {
    let mut tx = db.begin().await?;
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "SELECT id, value FROM keys WHERE value IS NOT NULL ORDER BY id LIMIT $1 \
         FOR UPDATE SKIP LOCKED",
    )
    .bind(batch)
    .fetch_all(&mut *tx)
    .await?;
    let ids: Vec<i64> = rows.iter().map(|(id, _)| *id).collect();
    let sealed: Vec<(Vec<u8>, Vec<u8>)> = rows
        .iter()
        .map(|(id, value)| (vault.seal(value, Row::Key(*id)), vault.hash(value)))
        .collect();
    let done = rewrite_keys(&mut tx, vault, &ids, &sealed, "value IS NOT NULL").await?;
    tx.commit().await?;
    Ok(done)
}

/// Sets `key_values.tail` on up to `batch` keys stored before keyrelay kept it (opening each);
/// returns how many.
pub async fn fill_key_tails(db: &Db, vault: &Vault, batch: i64) -> Result<u64, sqlx::Error> {
    let mut tx = db.begin().await?;
    let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
        "SELECT keys.id, keys.value_sealed \
         FROM key_values JOIN keys ON keys.id = key_values.key_id \
         WHERE key_values.tail IS NULL \
         ORDER BY key_values.key_id LIMIT $1 FOR UPDATE OF key_values SKIP LOCKED",
    )
    .bind(batch)
    .fetch_all(&mut *tx)
    .await?;
    // A key no configured encryption key opens gets an empty tail: it is not searchable, and
    // `keys rotate` reports it.
    let (ids, tails): (Vec<i64>, Vec<String>) = rows
        .iter()
        .map(|(id, sealed)| {
            let tail =
                open_key(vault, *id, sealed).map_or_else(|_| String::new(), |k| k.search_tail());
            (*id, tail)
        })
        .unzip();
    let done = sqlx::query(
        "UPDATE key_values SET tail = new.tail \
         FROM unnest($1::bigint[], $2::text[]) AS new(id, tail) \
         WHERE key_values.key_id = new.id",
    )
    .bind(&ids)
    .bind(&tails)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(done)
}

/// Writes sealed values over the rows `ids` (still matching `still`), clearing any
/// plaintext, and their look-up hashes (a key sealed from plaintext gets its tail later,
/// from `fill_key_tails`).
async fn rewrite_keys(
    tx: &mut Transaction<'_, Postgres>,
    vault: &Vault,
    ids: &[i64],
    sealed: &[(Vec<u8>, Vec<u8>)],
    still: &str,
) -> Result<u64, sqlx::Error> {
    if ids.is_empty() {
        return Ok(0);
    }
    let (values, hashes): (Vec<&Vec<u8>>, Vec<&Vec<u8>>) =
        sealed.iter().map(|(s, h)| (s, h)).unzip();
    Ok(sqlx::query(&format!(
        "WITH new AS ( \
             SELECT * FROM unnest($1::bigint[], $2::bytea[], $3::bytea[]) AS new(id, sealed, hash) \
         ), rewritten AS ( \
             UPDATE keys SET value = NULL, value_sealed = new.sealed, sealed_with = $4, \
                             updated_at = now() \
             FROM new WHERE keys.id = new.id AND {still} \
             RETURNING keys.id \
         ) \
         INSERT INTO key_values (value_hash, key_id) \
         SELECT new.hash, new.id FROM new JOIN rewritten ON rewritten.id = new.id \
         ON CONFLICT (key_id) DO UPDATE SET value_hash = excluded.value_hash"
    ))
    .bind(ids)
    .bind(values)
    .bind(hashes)
    .bind(vault.sealing_key_id())
    .execute(&mut **tx)
    .await?
    .rows_affected())
}

/// Up to `batch` keys sealed under another key than the vault's first, opened and sealed
/// again under it (`keys rotate`); returns (resealed, unreadable ids). Rows other
/// transactions hold are left for the next batch, and a row fulfilled meanwhile is simply
/// resealed: only the sealed columns change.
pub async fn reseal_keys(
    db: &Db,
    vault: &Vault,
    after_id: i64,
    batch: i64,
) -> Result<(u64, Vec<i64>, Option<i64>), sqlx::Error> {
    let mut tx = db.begin().await?;
    let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
        "SELECT id, value_sealed FROM keys WHERE id > $1 AND sealed_with <> $2 \
         ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED",
    )
    .bind(after_id)
    .bind(vault.sealing_key_id())
    .bind(batch)
    .fetch_all(&mut *tx)
    .await?;
    let last = rows.last().map(|(id, _)| *id);
    let mut ids = Vec::new();
    let mut sealed = Vec::new();
    let mut unreadable = Vec::new();
    for (id, old) in rows {
        match vault.open(&old, Row::Key(id)) {
            Ok(value) => {
                ids.push(id);
                sealed.push((vault.seal(&value, Row::Key(id)), vault.hash(&value)));
            }
            Err(_) => unreadable.push(id),
        }
    }
    let done = rewrite_keys(&mut tx, vault, &ids, &sealed, "TRUE").await?;
    tx.commit().await?;
    Ok((done, unreadable, last))
}

/// Keys sealed under another key than the vault's first.
pub async fn count_to_reseal(db: &Db, vault: &Vault) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM keys WHERE sealed_with <> $1), \
                (SELECT count(*) FROM events WHERE key_sealed_with <> $1)",
    )
    .bind(vault.sealing_key_id())
    .fetch_one(db)
    .await
}

/// Up to `batch` events whose payload holds a key in plaintext (`plaintext`) or sealed under
/// another key than the vault's first: webhook-id and payload, locked until `rewrite_events`.
pub async fn events_to_seal(
    tx: &mut Transaction<'_, Postgres>,
    vault: &Vault,
    plaintext: bool,
    batch: i64,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    let which = match plaintext {
        true => EVENT_HOLDS_PLAINTEXT_KEY.to_string(),
        false => format!("key_sealed_with <> {}", vault.sealing_key_id()),
    };
    sqlx::query_as(&format!(
        "SELECT webhook_id, payload::text FROM events WHERE {which} \
         ORDER BY webhook_id LIMIT $1 FOR UPDATE SKIP LOCKED"
    ))
    .bind(batch)
    .fetch_all(&mut **tx)
    .await
}

/// Stores events' payloads with their keys sealed under the vault's first key.
pub async fn rewrite_events(
    tx: &mut Transaction<'_, Postgres>,
    vault: &Vault,
    rows: &[(String, String)],
) -> Result<(), sqlx::Error> {
    let (ids, payloads): (Vec<&str>, Vec<&str>) =
        rows.iter().map(|(i, p)| (i.as_str(), p.as_str())).unzip();
    sqlx::query(
        "UPDATE events SET payload = new.payload::jsonb, key_sealed_with = $3 \
         FROM unnest($1::text[], $2::text[]) AS new(webhook_id, payload) \
         WHERE events.webhook_id = new.webhook_id",
    )
    .bind(ids)
    .bind(payloads)
    .bind(vault.sealing_key_id())
    .execute(&mut **tx)
    .await?;
    Ok(())
}
