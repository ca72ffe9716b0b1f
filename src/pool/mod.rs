//! Key pools: creating a pool bound to one entitlement, importing keys (all or nothing), and
//! stock figures. The SQL is the store's (`store::pools`, `store::stock`); binding a key to
//! a grant happens in the queue (`store::bind`), its later moves in `store::settle`.

pub mod keyfile;

use crate::db::Db;
use serde::Serialize;

use crate::crypto::Vault;
use crate::domain::{EntitlementId, IdError};
use crate::sources::Source;
use crate::sources::generate::{Template, TemplateError};
use crate::store::pools::{CreatePoolError, Import, NewPoolRow, create_pool};
use crate::store::sealed::NewKey;

pub use crate::store::stock::{PoolStock, list_pools, pool_names};

/// Longest key expiry a pool may set: a hundred years.
pub const MAX_EXPIRY_DAYS: u32 = 36_500;
/// Longest pool name.
pub const MAX_POOL_NAME_LEN: usize = 64;

/// A pool name: 1 to 64 letters, digits, `-`, `_` or `.`.
pub fn check_pool_name(name: &str) -> Result<&str, String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || name.len() > MAX_POOL_NAME_LEN || !name.chars().all(ok_char) {
        return Err(format!(
            "a pool name is 1 to {MAX_POOL_NAME_LEN} letters, digits, `-`, `_` or `.`"
        ));
    }
    Ok(name)
}

#[derive(Debug, Clone, Default)]
pub struct NewPool {
    pub name: String,
    pub entitlement_id: String,
    pub low_stock: u32,
    pub activations_limit: Option<u32>,
    pub expires_in_days: Option<u32>,
    /// Where keys come from; `list` (imported keys) when None.
    pub source: Option<Source>,
    /// `generate`: the template (`X` = one random character).
    pub template: Option<String>,
    /// `generate`: the characters drawn (Crockford base32 when None).
    pub alphabet: Option<String>,
    /// `generate`: accept a template with less than 80 bits of randomness.
    pub allow_weak_template: bool,
    /// `http`: the name of the `[key_sources.NAME]` that issues the keys.
    pub endpoint: Option<String>,
    /// `list`: its keys may have spaces inside (else such a line is refused on import).
    pub keys_with_spaces: bool,
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
    #[error("{0}")]
    BadName(String),
    #[error("--entitlement: {0}; copy the entitlement id from Dodo's dashboard")]
    BadEntitlement(IdError),
    #[error(
        "the activations limit must be between 1 and {}, the expiry between 1 and {MAX_EXPIRY_DAYS} days, the low-stock threshold at most {}",
        i32::MAX,
        i32::MAX
    )]
    OutOfRange,
    #[error("--template: {0}")]
    BadTemplate(#[from] TemplateError),
    #[error("{0}")]
    BadSource(&'static str),
    #[error("pool `{0}` makes its own keys (source {1}); imports go to list pools")]
    MakesItsKeys(String, Source),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl From<CreatePoolError> for PoolError {
    fn from(e: CreatePoolError) -> PoolError {
        match e {
            CreatePoolError::NameTaken(name) => PoolError::NameTaken(name),
            CreatePoolError::EntitlementTaken(ent) => PoolError::EntitlementTaken(ent),
            CreatePoolError::Database(e) => PoolError::Database(e),
        }
    }
}

/// A setting that must be at least 1 and fit the database column.
fn positive(value: Option<u32>) -> Result<Option<i32>, PoolError> {
    value
        .map(|v| {
            i32::try_from(v)
                .ok()
                .filter(|v| *v >= 1)
                .ok_or(PoolError::OutOfRange)
        })
        .transpose()
}

/// Creates a pool and wakes any jobs that were waiting for one; returns how many.
pub async fn add_pool(db: &Db, new: &NewPool) -> Result<u64, PoolError> {
    let name = new.name.trim();
    if name.is_empty() || new.entitlement_id.trim().is_empty() {
        return Err(PoolError::Empty);
    }
    check_pool_name(name).map_err(PoolError::BadName)?;
    let entitlement_id =
        EntitlementId::parse(new.entitlement_id.trim()).map_err(PoolError::BadEntitlement)?;
    if new
        .expires_in_days
        .is_some_and(|days| days > MAX_EXPIRY_DAYS)
    {
        return Err(PoolError::OutOfRange);
    }
    let source = new.source.unwrap_or(Source::List);
    match source {
        Source::Generate => {
            let template = new.template.as_deref().ok_or(PoolError::BadSource(
                "a generate pool needs --template, e.g. --template 'PRO-XXXXX-XXXXX-XXXXX-XXXXX'",
            ))?;
            Template::parse(template, new.alphabet.as_deref(), new.allow_weak_template)?;
        }
        Source::Http if new.endpoint.is_none() => {
            return Err(PoolError::BadSource(
                "an http pool needs --endpoint NAME, naming a [key_sources.NAME] in keyrelay.toml",
            ));
        }
        _ if new.template.is_some() || new.alphabet.is_some() => {
            return Err(PoolError::BadSource(
                "--template and --alphabet apply only to --source generate",
            ));
        }
        _ => {}
    }
    if source.makes_keys() && new.keys_with_spaces {
        return Err(PoolError::BadSource(
            "--keys-with-spaces applies only to list pools, whose keys are imported",
        ));
    }
    if source.makes_keys() && new.low_stock > 0 {
        return Err(PoolError::BadSource(
            "a pool that makes its keys never runs low; drop --low-stock",
        ));
    }
    let row = NewPoolRow {
        name,
        entitlement_id: &entitlement_id,
        source,
        template: new.template.as_deref(),
        alphabet: new.alphabet.as_deref(),
        endpoint: new.endpoint.as_deref().filter(|_| source == Source::Http),
        low_stock: i32::try_from(new.low_stock).map_err(|_| PoolError::OutOfRange)?,
        activations_limit: positive(new.activations_limit)?,
        expires_in_days: positive(new.expires_in_days)?,
        keys_with_spaces: new.keys_with_spaces,
    };
    Ok(create_pool(db, &row).await?)
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

/// Keys stored per step of an import, and per progress report.
const PROGRESS_STEP: usize = 5_000;

/// Imports `keys` (unique, in file order) into the named pool in one transaction: either every
/// new key is stored or none is. Keys already anywhere in the database are skipped and counted.
/// With `dry_run` the transaction is rolled back, so the counts are exact but nothing changes.
/// Values are stored sealed under `vault`'s first key.
pub async fn import_keys(
    db: &Db,
    vault: &Vault,
    name: &str,
    parsed: &keyfile::ParsedKeys,
    dry_run: bool,
    mut progress: impl FnMut(u64),
) -> Result<ImportReport, PoolError> {
    let mut import = Import::begin(db, name)
        .await?
        .ok_or_else(|| PoolError::NotFound(name.to_string()))?;
    if import.source().makes_keys() {
        return Err(PoolError::MakesItsKeys(name.to_string(), import.source()));
    }
    let batch_id = import.batch_id().to_string();
    let ids = import.take_ids(parsed.keys.len()).await?;
    // Sealing runs on another thread while the database stores the chunk before.
    let (sealed_chunks, mut to_store) = tokio::sync::mpsc::channel::<(Vec<NewKey>, u64)>(2);
    let (keys, sealer) = (parsed.keys.clone(), vault.clone());
    let sealing = tokio::task::spawn_blocking(move || {
        for (chunk, ids) in keys.chunks(PROGRESS_STEP).zip(ids.chunks(PROGRESS_STEP)) {
            let rows = chunk
                .iter()
                .zip(ids)
                .map(|(key, id)| NewKey::new(&sealer, key, *id))
                .collect();
            if sealed_chunks
                .blocking_send((rows, chunk.len() as u64))
                .is_err()
            {
                return;
            }
        }
    });
    while let Some((rows, count)) = to_store.recv().await {
        import.add(&rows, vault.sealing_key_id()).await?;
        progress(count);
    }
    sealing
        .await
        .map_err(|e| PoolError::Database(sqlx::Error::Protocol(e.to_string())))?;
    let done = import.finish(dry_run).await?;
    Ok(ImportReport {
        pool: name.to_string(),
        batch_id,
        imported: done.imported,
        duplicates: (parsed.keys.len() as u64 - done.imported) + parsed.duplicates_in_file as u64,
        invalid: parsed.invalid.len() as u64,
        resumed_jobs: done.resumed_jobs,
        dry_run,
    })
}
