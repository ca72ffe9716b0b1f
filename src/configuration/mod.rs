//! Settings: built-in defaults < optional TOML file < `KEYRELAY_<SECTION>__<KEY>` < conventional
//! names (`DATABASE_URL`, `DODO_PAYMENTS_*`, `KEYRELAY_ADMIN_TOKEN`, `KEYRELAY_API_TOKEN`). Every key and its default is
//! listed here; unknown keys are an error that names the key.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::bail;
use secrecy::ExposeSecret;
use serde::Deserialize;

pub use crate::crypto::parse_webhook_secrets;
pub use crate::db::{DatabaseSettings, Pooler};
use crate::sources::Sources;
pub use crate::sources::{KeySourceSettings, how_to_add_key_source};
pub use dodo::{DodoEnvironment, DodoSettings, RateLimitTier};
pub use sections::{
    AdminSettings, AlertSettings, ApiSettings, HttpSettings, KeySettings, LogFormat, LogSettings,
    NotifySettings, ReconcilerSettings, RetentionSettings, WebhookSettings, WorkerSettings,
};

mod dodo;
mod sections;
#[cfg(test)]
mod tests;
mod validate;

/// Conventional environment names and the setting each one sets.
const CONVENTIONAL_ENV: &[(&str, &str)] = &[
    ("DATABASE_URL", "database.url"),
    ("DATABASE_DIRECT_URL", "database.direct_url"),
    ("DODO_PAYMENTS_API_KEY", "dodo.api_key"),
    ("DODO_PAYMENTS_ENVIRONMENT", "dodo.environment"),
    ("DODO_PAYMENTS_BASE_URL", "dodo.base_url"),
    ("DODO_PAYMENTS_WEBHOOK_KEY", "webhook.secret"),
    ("KEYRELAY_ADMIN_TOKEN", "admin.token"),
    ("KEYRELAY_API_TOKEN", "api.token"),
    ("KEYRELAY_SIGNING_KEY", "keys.signing_key"),
    ("KEYRELAY_ENCRYPTION_KEY", "keys.encryption_keys"),
    ("KEYRELAY_NOTIFY_URL", "notify.url"),
    ("KEYRELAY_NOTIFY_SECRET", "notify.secret"),
];

/// Shortest admin token accepted: it guards retries and cancels of paid grants.
pub const MIN_ADMIN_TOKEN_LEN: usize = 32;

const DEFAULTS: &[(&str, &str)] = &[
    (
        "database.url",
        "postgres://postgres@127.0.0.1:5432/keyrelay",
    ),
    ("database.migrate_on_start", "true"),
    ("database.max_connections", "16"),
    ("database.pooler", "none"),
    ("dodo.environment", "test_mode"),
    ("dodo.rate_limit", "tier0"),
    ("dodo.timeout_secs", "10"),
    ("http.bind", "127.0.0.1:8080"),
    ("http.body_timeout_secs", "10"),
    ("worker.concurrency", "16"),
    ("worker.max_attempts", "90"),
    ("worker.backoff_base_ms", "1000"),
    ("worker.backoff_max_ms", "600000"),
    ("worker.lease_secs", "60"),
    ("worker.poll_interval_ms", "1000"),
    ("worker.shutdown_grace_secs", "30"),
    ("log.format", "pretty"),
    ("reconciler.interval_secs", "300"),
    ("retention.days", "30"),
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub dodo: DodoSettings,
    #[serde(default)]
    pub webhook: WebhookSettings,
    pub http: HttpSettings,
    pub worker: WorkerSettings,
    #[serde(default)]
    pub admin: AdminSettings,
    #[serde(default)]
    pub api: ApiSettings,
    #[serde(default)]
    pub alerts: AlertSettings,
    #[serde(default)]
    pub keys: KeySettings,
    #[serde(default)]
    pub notify: NotifySettings,
    /// HTTP key sources by name (`[key_sources.NAME]`), for `--source http` pools.
    #[serde(default)]
    pub key_sources: HashMap<String, KeySourceSettings>,
    pub log: LogSettings,
    pub reconciler: ReconcilerSettings,
    pub retention: RetentionSettings,
}

impl Settings {
    /// Loads settings from the process environment and `config_file` (else `./keyrelay.toml`).
    pub fn load(config_file: Option<&Path>) -> anyhow::Result<Settings> {
        let env: HashMap<String, String> = std::env::vars().collect();
        Self::load_from(config_file, &env)
    }

    /// Loads settings from an explicit environment map; used by `load` and by tests.
    pub fn load_from(
        config_file: Option<&Path>,
        env: &HashMap<String, String>,
    ) -> anyhow::Result<Settings> {
        let mut builder = config::Config::builder();
        for (key, value) in DEFAULTS {
            builder = builder.set_default(*key, *value)?;
        }
        let file = match config_file {
            Some(path) if !path.exists() => {
                bail!("config file {} does not exist", path.display())
            }
            Some(path) => Some(path.to_path_buf()),
            None => Some(PathBuf::from("keyrelay.toml")).filter(|p| p.exists()),
        };
        if let Some(path) = &file {
            builder = builder.add_source(config::File::from(path.as_path()));
        }
        for (key, value) in keyrelay_env_overrides(env)? {
            builder = builder.set_override(key, value)?;
        }
        for (name, key) in CONVENTIONAL_ENV {
            // A blank value (as left by copying .env.example) means unset.
            if let Some(value) = env.get(*name).filter(|v| !v.trim().is_empty()) {
                builder = builder.set_override(*key, value.as_str())?;
            }
        }
        let mut settings: Settings = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| {
                let mut text = without_file_lines(&e);
                if text.contains("max_requests_per_sec") {
                    text.push_str(
                        "; dodo.max_requests_per_sec was replaced by dodo.rate_limit (tier0, tier1, tier2, custom or off)",
                    );
                }
                anyhow::anyhow!("invalid configuration: {text}")
            })?;
        settings.blank_urls_are_unset();
        settings.validate()?;
        Ok(settings)
    }

    /// An optional URL set to blank (as `KEY=` in a `.env` file leaves it) means unset.
    fn blank_urls_are_unset(&mut self) {
        for url in [
            &mut self.dodo.base_url,
            &mut self.alerts.webhook_url,
            &mut self.http.metrics_bind,
            &mut self.notify.url,
        ] {
            if url.as_deref().is_some_and(|u| u.trim().is_empty()) {
                *url = None;
            }
        }
        if let Some(url) = &self.database.direct_url
            && url.expose_secret().trim().is_empty()
        {
            self.database.direct_url = None;
        }
    }

    /// The Dodo API base URL: `dodo.base_url` if set, else the environment's.
    pub fn dodo_base_url(&self) -> String {
        match (&self.dodo.base_url, self.dodo.environment) {
            (Some(url), _) => url.trim_end_matches('/').to_string(),
            (None, DodoEnvironment::TestMode) => "https://test.dodopayments.com".into(),
            (None, DodoEnvironment::LiveMode) => "https://live.dodopayments.com".into(),
        }
    }

    /// The sources workers get keys from: the signing key for `sign` pools, the endpoints of
    /// `http` pools.
    pub fn sources(&self) -> anyhow::Result<Sources> {
        Ok(Sources::new(
            self.keys.signing_key()?,
            self.key_sources.clone(),
        ))
    }

    /// Who is owed notices of what keyrelay changes: the shop when `notify.url` is set, and
    /// the key sources that have a `revoke_url`.
    pub fn recipients(&self) -> crate::store::Recipients {
        let mut vendors: Vec<String> = self
            .key_sources
            .iter()
            .filter(|(_, source)| source.revoke_url.is_some())
            .map(|(name, _)| name.clone())
            .collect();
        vendors.sort();
        crate::store::Recipients {
            shop: self.notify.url.is_some(),
            vendors,
        }
    }

    /// How keyrelay reaches Postgres, and why, in one line for the start log.
    pub fn database_mode(&self) -> String {
        let poll = self.worker.poll_interval_ms;
        match (self.database.pooled(), &self.database.direct_url) {
            (false, _) => "direct: database.url reaches Postgres itself; LISTEN wakes workers at once and locks are session advisory locks".into(),
            (true, Some(_)) => "transaction pooler with a direct connection: statements go through database.url without session state; migrations, LISTEN and the reconciler's lock use database.direct_url".into(),
            (true, None) => format!("transaction pooler without a direct connection (database.pooler = transaction, no database.direct_url): no session state; workers find new jobs by polling every {poll} ms; the reconciler's lock is a lease row"),
        }
    }

    /// The database URL with any password replaced, for messages.
    pub fn database_url_redacted(&self) -> String {
        self.database
            .target()
            .map(|url| url.shown)
            .unwrap_or_else(|_| "<invalid url>".into())
    }
}

/// Maps `KEYRELAY_SECTION__KEY=value` to `section.key`; any other `KEYRELAY_` name is an error,
/// so a typo is reported instead of silently ignored.
fn keyrelay_env_overrides(env: &HashMap<String, String>) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("KEYRELAY_") else {
            continue;
        };
        if CONVENTIONAL_ENV.iter().any(|(n, _)| n == name) || name.starts_with("KEYRELAY_TEST_") {
            continue;
        }
        if !rest.contains("__") {
            bail!(
                "unknown environment variable {name}: keyrelay settings are named \
                 KEYRELAY_<SECTION>__<KEY>, e.g. KEYRELAY_WORKER__CONCURRENCY"
            );
        }
        // KEYRELAY_KEY_SOURCES__VENDOR__URL is key_sources.vendor.url.
        out.push((rest.to_lowercase().replace("__", "."), value.clone()));
    }
    Ok(out)
}

/// A `config` error without the lines of the file it quotes: a TOML syntax error shows the
/// offending line, and that line may hold a secret. The position (line, column) and the
/// reason are kept.
fn without_file_lines(e: &config::ConfigError) -> String {
    let text = e.to_string();
    let kept: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.contains('|'))
        .collect();
    kept.join("; ")
}

/// `raw` with any password replaced, for messages and logs.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some("****"));
            }
            url.to_string()
        }
        Err(_) => "<invalid url>".into(),
    }
}

impl AsRef<DatabaseSettings> for Settings {
    fn as_ref(&self) -> &DatabaseSettings {
        &self.database
    }
}
