//! Keeping key values sealed over time: sealing what an earlier keyrelay stored in plaintext
//! (run by `migrate` and by `serve` at start), and `keys rotate`, which reseals every value
//! under the first configured encryption key. Both work in small batches, each its own
//! transaction that skips rows others hold, so they run beside `serve` and can be stopped and
//! started again at any point.

use crate::db::Db;
use anyhow::bail;

use crate::crypto::{MAKE_ONE, Vault};
use crate::intake::payload_keys;
use crate::store::sealed;

const BATCH: i64 = 1_000;

/// Seals every plaintext key value; the number of rows sealed. Without a vault, an error that
/// says how to make one if there is anything to seal.
pub async fn seal_plaintext(db: &Db, vault: Option<&Vault>) -> anyhow::Result<u64> {
    let (keys, events) = sealed::count_plaintext(db).await?;
    if keys + events == 0 {
        if let Some(vault) = vault {
            fill_key_tails(db, vault).await?;
        }
        return Ok(0);
    }
    let Some(vault) = vault else {
        bail!(
            "the database holds {keys} key values and {events} events with keys in plaintext, from an earlier keyrelay; {MAKE_ONE}, then run `keyrelay migrate` to seal them"
        );
    };
    let mut done = 0;
    loop {
        let sealed_now = sealed::seal_plaintext_keys(db, vault, BATCH).await?;
        done += sealed_now;
        if sealed_now == 0 {
            break;
        }
    }
    done += reseal_events(db, vault, true, |_| {}).await?;
    fill_key_tails(db, vault).await?;
    tracing::info!(
        rows = done,
        "sealed key values an earlier keyrelay stored in plaintext"
    );
    Ok(done)
}

/// Gives keys stored before keyrelay kept their searchable tail one (`key_values.tail`).
async fn fill_key_tails(db: &Db, vault: &Vault) -> anyhow::Result<()> {
    let mut filled = 0;
    loop {
        let now = sealed::fill_key_tails(db, vault, BATCH).await?;
        filled += now;
        if now == 0 {
            break;
        }
    }
    if filled > 0 {
        tracing::info!(
            keys = filled,
            "made stored keys searchable by their last characters"
        );
    }
    Ok(())
}

/// What `keys rotate` did.
#[derive(Debug, Default)]
pub struct Rotated {
    pub keys: u64,
    pub events: u64,
    /// Keys that no configured encryption key opens (left as they are).
    pub unreadable: Vec<i64>,
}

/// Reseals every key value not sealed under the vault's first key; `progress` hears how many
/// rows each batch did.
pub async fn rotate(
    db: &Db,
    vault: &Vault,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<Rotated> {
    let mut rotated = Rotated::default();
    // A pass skips rows a worker holds for a moment; passes go on while they make progress.
    loop {
        let before = rotated.keys;
        let mut after = 0;
        rotated.unreadable.clear();
        loop {
            let (done, unreadable, last) = sealed::reseal_keys(db, vault, after, BATCH).await?;
            rotated.keys += done;
            progress(done);
            rotated.unreadable.extend(unreadable);
            match last {
                Some(last) => after = last,
                None => break,
            }
        }
        let (left, _) = sealed::count_to_reseal(db, vault).await?;
        if left as usize <= rotated.unreadable.len() || rotated.keys == before {
            break;
        }
    }
    rotated.events = reseal_events(db, vault, false, progress).await?;
    Ok(rotated)
}

/// Seals (plaintext) or reseals (under an older key) the keys in stored payloads.
async fn reseal_events(
    db: &Db,
    vault: &Vault,
    plaintext: bool,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<u64> {
    let mut done = 0;
    loop {
        let mut tx = db.begin().await?;
        let rows = sealed::events_to_seal(&mut tx, vault, plaintext, BATCH).await?;
        if rows.is_empty() {
            return Ok(done);
        }
        let mut resealed = Vec::with_capacity(rows.len());
        for (webhook_id, payload) in rows {
            let open = payload_keys::open(&payload, vault, &webhook_id).map_err(|e| {
                anyhow::anyhow!("the key stored in event {webhook_id} cannot be read: {e}")
            })?;
            let (sealed_payload, _) = payload_keys::seal(&open, vault, &webhook_id);
            resealed.push((webhook_id, sealed_payload.into_owned()));
        }
        sealed::rewrite_events(&mut tx, vault, &resealed).await?;
        tx.commit().await?;
        done += resealed.len() as u64;
        progress(resealed.len() as u64);
    }
}
