//! Whether each pool can get keys in this worker process: a `sign` pool needs
//! `keys.signing_key`, an `http` pool needs its `[key_sources.NAME]` configured and answering
//! at its address. Workers check at start (and say so in the log) and then every minute, and
//! record what they found on the pool, where `pool list`, the dashboard and
//! `keyrelay_pool_source_broken` read it.

use std::collections::HashMap;
use std::time::Duration;

use crate::db::Db;
use tokio_util::sync::CancellationToken;

use crate::configuration::Settings;
use crate::sources::Source;
use crate::store::pools::{self, PoolSource};

/// How often workers look again.
const INTERVAL: Duration = Duration::from_secs(60);
/// How long an endpoint may take to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// What this process can make keys with.
#[derive(Debug, Clone, Default)]
pub struct SourceCheck {
    signing: bool,
    /// Key source name → its URL.
    endpoints: HashMap<String, String>,
}

impl SourceCheck {
    pub fn from_settings(settings: &Settings) -> SourceCheck {
        SourceCheck {
            signing: settings.keys.signing_key.is_some(),
            endpoints: settings
                .key_sources
                .iter()
                .map(|(name, s)| (name.clone(), s.url.clone()))
                .collect(),
        }
    }

    /// Why `pool` cannot get keys here, or None.
    pub async fn problem(&self, pool: &PoolSource) -> Option<String> {
        match pool.source {
            Source::List | Source::Generate => None,
            Source::Sign if self.signing => None,
            Source::Sign => Some(
                "signs its keys, but keys.signing_key (KEYRELAY_SIGNING_KEY) is not set in the workers; set it, restart, then `keyrelay jobs retry --all-failed`".into(),
            ),
            Source::Http => {
                let name = pool.endpoint.as_deref().unwrap_or_default();
                match self.endpoints.get(name) {
                    None => Some(format!(
                        "its key source `{name}` is not configured in the workers; {}, restart, then `keyrelay jobs retry --all-failed`",
                        crate::configuration::how_to_add_key_source(name)
                    )),
                    Some(url) => unreachable(name, url).await,
                }
            }
        }
    }

    /// Checks every pool, records the findings, and returns them: (pool, problem).
    pub async fn check_pools(&self, db: &Db) -> Result<Vec<(String, Option<String>)>, sqlx::Error> {
        let sources = pools::pool_sources(db).await?;
        let checks = sources
            .iter()
            .map(|p| async move { (p.name.clone(), self.problem(p).await) });
        let found = futures_util::future::join_all(checks).await;
        pools::record_source_problems(db, &found).await?;
        Ok(found)
    }
}

/// Whether the key source's server accepts a connection (the URL itself is not shown: it
/// may hold a credential).
async fn unreachable(name: &str, url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    let host = parsed
        .host_str()?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = parsed.port_or_known_default()?;
    let connect = tokio::net::TcpStream::connect((host.as_str(), port));
    let why = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(_)) => return None,
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
    };
    Some(format!(
        "its key source `{name}` is unreachable at {host}:{port} ({why}); its grants retry until it answers"
    ))
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
