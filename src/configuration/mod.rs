//! Settings: built-in defaults < optional TOML file < `KEYRELAY_<SECTION>__<KEY>` < conventional
//! names (`DATABASE_URL`, `DODO_PAYMENTS_*`, `KEYRELAY_ADMIN_TOKEN`, `KEYRELAY_API_TOKEN`). Every key and its default is
//! listed here; unknown keys are an error that names the key.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

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
    /// HTTP key sources by name (`[key_sources.NAME]`), for `--source http` pools.
    #[serde(default)]
    pub key_sources: HashMap<String, KeySourceSettings>,
    pub log: LogSettings,
    pub reconciler: ReconcilerSettings,
    pub retention: RetentionSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcilerSettings {
    /// Seconds between reconciliations in `serve` (worker roles); 0 turns it off.
    pub interval_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// Events and finished jobs older than this are pruned.
    pub days: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Where keyrelay's statements go: the server, or a transaction pooler in front of it.
    pub url: SecretString,
    /// A direct connection to the same database, for what a transaction pooler cannot carry
    /// (migrations, `LISTEN`, session locks). Setting it makes `url` a pooler.
    #[serde(default)]
    pub direct_url: Option<SecretString>,
    /// `transaction`: `url` is a transaction pooler (implied by `direct_url`).
    pub pooler: Pooler,
    pub migrate_on_start: bool,
    pub max_connections: u32,
}

/// What sits in front of Postgres at `database.url`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooler {
    /// Nothing, or a pooler in session mode: every session feature works.
    None,
    /// A pooler in transaction mode (PgBouncer, Supavisor, Neon's pooled host, RDS Proxy).
    Transaction,
}

impl Pooler {
    /// The setting's value, as `database.pooler` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Pooler::None => "none",
            Pooler::Transaction => "transaction",
        }
    }
}

impl<'de> Deserialize<'de> for Pooler {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        match raw.trim().to_ascii_lowercase().as_str() {
            "" => Ok(Pooler::None),
            value if value == Pooler::None.as_str() => Ok(Pooler::None),
            value if value == Pooler::Transaction.as_str() => Ok(Pooler::Transaction),
            other => Err(serde::de::Error::custom(format!(
                "database.pooler must be `none` (Postgres itself, or a pooler in session mode) or `transaction` (a transaction pooler without database.direct_url), not `{}`",
                other.escape_debug()
            ))),
        }
    }
}

impl DatabaseSettings {
    /// Whether `url` is to be treated as a transaction pooler.
    pub fn pooled(&self) -> bool {
        self.pooler == Pooler::Transaction || self.direct_url.is_some()
    }

    /// `url`, parsed (hosts in order), with what a pooler refuses left out when it is one.
    pub fn target(&self) -> anyhow::Result<crate::db::url::DatabaseUrl> {
        let url = crate::db::url::parse(self.url.expose_secret(), "database.url (DATABASE_URL)")
            .map_err(anyhow::Error::msg)?;
        Ok(match self.pooled() {
            true => url.for_transaction_pooler(),
            false => url,
        })
    }

    /// `direct_url`, parsed, if set.
    pub fn direct_target(&self) -> anyhow::Result<Option<crate::db::url::DatabaseUrl>> {
        self.direct_url
            .as_ref()
            .map(|url| {
                crate::db::url::parse(
                    url.expose_secret(),
                    "database.direct_url (DATABASE_DIRECT_URL)",
                )
                .map_err(anyhow::Error::msg)
            })
            .transpose()
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    pub secret: Option<SecretString>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub bind: String,
    /// A request body not received in full within this many seconds is answered 408.
    pub body_timeout_secs: u64,
    /// Reverse proxies (addresses or networks) whose `X-Forwarded-For` names the client;
    /// a list in TOML, space- or comma-separated in the environment. None by default.
    #[serde(default, deserialize_with = "list_or_words")]
    pub trusted_proxies: Vec<String>,
    /// Serve `/metrics` on this address instead of `http.bind` (any role).
    #[serde(default)]
    pub metrics_bind: Option<String>,
}

impl HttpSettings {
    /// The trusted proxies, parsed (checked at start).
    pub fn trusted_proxies(&self) -> anyhow::Result<crate::guard::TrustedProxies> {
        crate::guard::TrustedProxies::parse(self.trusted_proxies.iter().map(String::as_str))
            .map_err(anyhow::Error::msg)
    }
}

/// A list setting given as a TOML list, or as one string of space- or comma-separated words
/// (as an environment variable can only be).
fn list_or_words<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Words(String),
        List(Vec<String>),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::Words(words) => words
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect(),
        Raw::List(list) => list,
    })
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    pub concurrency: u32,
    pub max_attempts: u32,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    pub lease_secs: u64,
    pub poll_interval_ms: u64,
    pub shutdown_grace_secs: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    pub token: Option<SecretString>,
    /// The dashboard is served over plain http (a laptop, a private network): the session
    /// cookie is then not marked `Secure`, or browsers would not send it back.
    #[serde(default)]
    pub insecure_http: bool,
}

/// The shop's read-only API (`/api/v1`), on only when a token is set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    pub token: Option<SecretString>,
}

/// An endpoint of the merchant's or a vendor's that issues a key for a grant.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySourceSettings {
    pub url: String,
    /// `whsec_…`: keyrelay signs its requests with it (Standard Webhooks headers).
    pub secret: SecretString,
    /// JSON pointer to the key in the endpoint's answer.
    #[serde(default = "default_key_pointer")]
    pub key_pointer: String,
    #[serde(default = "default_key_source_timeout")]
    pub timeout_secs: u64,
}

/// How to configure the key source `name`, for messages about one that is missing.
pub fn how_to_add_key_source(name: &str) -> String {
    format!(
        "add a [key_sources.{name}] section (url, secret) to keyrelay.toml, or KEYRELAY_KEY_SOURCES__{}__URL and __SECRET to the environment",
        name.to_uppercase()
    )
}

fn default_key_pointer() -> String {
    "/key".into()
}

fn default_key_source_timeout() -> u64 {
    10
}

/// Key material for pools whose keys keyrelay makes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySettings {
    /// Base64 Ed25519 private key for `sign` pools (`keyrelay keys new-signing-key`).
    pub signing_key: Option<SecretString>,
    /// Space-separated base64 32-byte keys; the first seals key values, all open them.
    pub encryption_keys: Option<SecretString>,
}

impl KeySettings {
    /// The encryption keys; an error that says how to make one when none is configured.
    pub fn vault(&self) -> anyhow::Result<crate::crypto::Vault> {
        match &self.encryption_keys {
            Some(keys) => crate::crypto::Vault::from_config(keys),
            None => bail!(
                "keys.encryption_keys (KEYRELAY_ENCRYPTION_KEY) is not set: keyrelay stores key values only encrypted; {}",
                crate::crypto::MAKE_ONE
            ),
        }
    }

    /// The key maker for workers: signs with `signing_key` when set, seals with `vault`.
    pub fn key_maker_with(
        &self,
        vault: Option<std::sync::Arc<crate::crypto::Vault>>,
    ) -> anyhow::Result<crate::sources::KeyMaker> {
        let signing = self
            .signing_key
            .as_ref()
            .map(crate::sources::sign::parse_signing_key)
            .transpose()?;
        Ok(crate::sources::KeyMaker::new(signing, vault))
    }

    /// The key maker for workers, sealing with the configured encryption keys (if any).
    pub fn key_maker(&self) -> anyhow::Result<crate::sources::KeyMaker> {
        let vault = match &self.encryption_keys {
            Some(_) => Some(std::sync::Arc::new(self.vault()?)),
            None => None,
        };
        self.key_maker_with(vault)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSettings {
    pub webhook_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
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

    fn validate(&self) -> anyhow::Result<()> {
        self.database.target()?;
        self.database.direct_target()?;
        if let Some(url) = &self.dodo.base_url {
            let parsed = url::Url::parse(url)
                .context("dodo.base_url (DODO_PAYMENTS_BASE_URL) is not a valid URL")?;
            if !matches!(parsed.scheme(), "http" | "https") {
                bail!(
                    "dodo.base_url (DODO_PAYMENTS_BASE_URL) must be an http(s) URL, not {}",
                    redact_url(url)
                );
            }
        }
        if let Some(secret) = &self.webhook.secret {
            parse_webhook_secrets(secret.expose_secret())?;
        }
        if let Some(url) = &self.alerts.webhook_url {
            let parsed = url::Url::parse(url).ok();
            if !parsed.is_some_and(|u| matches!(u.scheme(), "http" | "https")) {
                bail!(
                    "alerts.webhook_url is not a valid http(s) URL (not shown: a webhook URL is a credential)"
                );
            }
        }
        if matches!(&self.admin.token, Some(t) if t.expose_secret().trim().chars().count() < MIN_ADMIN_TOKEN_LEN)
        {
            bail!(
                "admin.token (KEYRELAY_ADMIN_TOKEN) is shorter than {MIN_ADMIN_TOKEN_LEN} characters; make one with `openssl rand -hex 32`, or unset it to turn the dashboard off"
            );
        }
        if let Some(api) = &self.api.token {
            let api = api.expose_secret().trim();
            if api.chars().count() < MIN_ADMIN_TOKEN_LEN {
                bail!(
                    "api.token (KEYRELAY_API_TOKEN) is shorter than {MIN_ADMIN_TOKEN_LEN} characters; make one with `openssl rand -hex 32`, or unset it to turn the shop API off"
                );
            }
            if self
                .admin
                .token
                .as_ref()
                .is_some_and(|a| a.expose_secret().trim() == api)
            {
                bail!(
                    "api.token (KEYRELAY_API_TOKEN) is the same as admin.token (KEYRELAY_ADMIN_TOKEN); the shop's read-only token must not open the dashboard, so make another with `openssl rand -hex 32`"
                );
            }
        }
        self.dodo.validate_rate_limit()?;
        for (name, source) in &self.key_sources {
            let url = url::Url::parse(&source.url).ok();
            if !url.is_some_and(|u| matches!(u.scheme(), "http" | "https")) {
                bail!(
                    "key_sources.{name}.url is not a valid http(s) URL (not shown: it may hold a credential)"
                );
            }
            if parse_webhook_secrets(source.secret.expose_secret()).is_err() {
                bail!("key_sources.{name}.secret is not whsec_ followed by base64");
            }
            if !(source.key_pointer.is_empty() || source.key_pointer.starts_with('/')) {
                bail!(
                    "key_sources.{name}.key_pointer must be a JSON pointer such as /key or /license/key"
                );
            }
            if !(1..=300).contains(&source.timeout_secs) {
                bail!("key_sources.{name}.timeout_secs must be between 1 and 300");
            }
        }
        self.keys.key_maker()?;
        if self.keys.encryption_keys.is_some() {
            self.keys.vault()?;
        }
        if self.worker.concurrency == 0 {
            bail!("worker.concurrency must be at least 1");
        }
        if self.worker.max_attempts == 0 {
            bail!("worker.max_attempts must be at least 1");
        }
        if self.worker.backoff_base_ms == 0
            || self.worker.backoff_max_ms < self.worker.backoff_base_ms
        {
            bail!("worker.backoff_base_ms must be at least 1 and at most worker.backoff_max_ms");
        }
        self.http.trusted_proxies()?;
        if let Some(bind) = &self.http.metrics_bind
            && bind == &self.http.bind
        {
            bail!(
                "http.metrics_bind is the same address as http.bind; give /metrics its own address (such as 127.0.0.1:9090), or unset it to serve /metrics on http.bind"
            );
        }
        if self.http.body_timeout_secs == 0 {
            bail!("http.body_timeout_secs must be at least 1");
        }
        if self.worker.lease_secs == 0 {
            bail!("worker.lease_secs must be at least 1");
        }
        if self.retention.days < 2 {
            bail!("retention.days must be at least 2 (Dodo retries webhooks for about 28 hours)");
        }
        if self.database.max_connections < 2 {
            bail!("database.max_connections must be at least 2");
        }
        Ok(())
    }

    /// The Dodo API base URL: `dodo.base_url` if set, else the environment's.
    pub fn dodo_base_url(&self) -> String {
        match (&self.dodo.base_url, self.dodo.environment) {
            (Some(url), _) => url.trim_end_matches('/').to_string(),
            (None, DodoEnvironment::TestMode) => "https://test.dodopayments.com".into(),
            (None, DodoEnvironment::LiveMode) => "https://live.dodopayments.com".into(),
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

impl WorkerSettings {
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_secs)
    }
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
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

/// Splits `webhook.secret` into the keys it holds (space-separated, for rotation), checking
/// each is non-empty base64 after an optional `whsec_` prefix.
pub fn parse_webhook_secrets(raw: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let secrets: Vec<&str> = raw.split_whitespace().collect();
    if secrets.is_empty() {
        bail!(
            "webhook.secret (DODO_PAYMENTS_WEBHOOK_KEY) is empty; copy the whsec_... secret from Dodo's webhook settings"
        );
    }
    secrets
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let body = s.strip_prefix("whsec_").unwrap_or(s);
            let key = base64::engine::general_purpose::STANDARD
                .decode(body)
                .ok()
                .filter(|k| !k.is_empty());
            key.ok_or_else(|| {
                anyhow::anyhow!(
                    "webhook.secret (DODO_PAYMENTS_WEBHOOK_KEY): secret #{} is not whsec_ followed by base64",
                    i + 1
                )
            })
        })
        .collect()
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

mod dodo;
#[cfg(test)]
mod tests;

pub use dodo::{DodoEnvironment, DodoSettings, RateLimitTier};
