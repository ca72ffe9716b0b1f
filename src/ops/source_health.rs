//! Whether each pool can get keys in this worker process, as its source says
//! (`KeySource::problem`): a `sign` pool needs `keys.signing_key`, an `http` pool needs its
//! `[key_sources.NAME]` configured and answering at its address. Workers check at start (and say so in the log) and then every minute, and
//! record what they found on the pool, where `pool list`, the dashboard and
//! `keyrelay_pool_source_broken` read it.

use std::collections::HashMap;
use std::time::Duration;

use crate::db::Db;
use tokio_util::sync::CancellationToken;

use crate::configuration::Settings;
use crate::sources::{KeySource, Sources};
use crate::store::pools;

/// How often workers look again.
const INTERVAL: Duration = Duration::from_secs(60);

/// What this process can get keys with: its sources.
#[derive(Debug, Clone, Default)]
pub struct SourceCheck {
    sources: Sources,
}

impl SourceCheck {
    pub fn new(sources: Sources) -> SourceCheck {
        SourceCheck { sources }
    }

    pub fn from_settings(settings: &Settings) -> SourceCheck {
        // Settings are checked when they load, so the signing key parses.
        SourceCheck::new(settings.sources().unwrap_or_default())
    }

    /// Checks every pool, records the findings, and returns them: (pool, problem).
    pub async fn check_pools(&self, db: &Db) -> Result<Vec<(String, Option<String>)>, sqlx::Error> {
        let recipes = pools::recipes(db).await?;
        let checks = recipes
            .iter()
            .map(|p| async move { (p.pool.clone(), self.sources.of(p).problem().await) });
        let found = futures_util::future::join_all(checks).await;
        pools::record_source_problems(db, &found).await?;
        Ok(found)
    }
}

/// Logs each pool that cannot get keys; `before` is what was logged last time, so a problem
/// is logged when it appears or changes and once more when it is gone.
fn report(found: &[(String, Option<String>)], before: &mut HashMap<String, String>) {
    for (name, problem) in found {
        match (problem, before.get(name)) {
            (Some(p), Some(old)) if p == old => {}
            (Some(p), _) => {
                tracing::error!(pool = %name, problem = %p, "pool cannot get keys in this process; its grants fail or wait until this is fixed");
                before.insert(name.clone(), p.clone());
            }
            (None, Some(_)) => {
                tracing::info!(pool = %name, "pool's key source is usable again");
                before.remove(name);
            }
            (None, None) => {}
        }
    }
}

/// Checks once now (what `serve` says at start), then every minute until `shutdown`.
pub async fn watch(db: Db, check: SourceCheck, shutdown: CancellationToken) {
    let mut logged = HashMap::new();
    loop {
        match check.check_pools(&db).await {
            Ok(found) => report(&found, &mut logged),
            Err(e) => {
                tracing::warn!(error = %e, "checking the pools' key sources failed; will try again")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(INTERVAL) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
