//! The small sections of the settings: `[http]`, `[webhook]`, `[worker]`, `[admin]`, `[api]`,
//! `[keys]`, `[alerts]`, `[log]`, `[reconciler]`, `[retention]`. `[database]` lives beside
//! the code that connects (`db::DatabaseSettings`), `[key_sources.NAME]` beside the source
//! that uses it (`sources::KeySourceSettings`), `[dodo]` in `dodo.rs`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use secrecy::SecretString;
use serde::Deserialize;

use crate::crypto::Vault;
use crate::sources::sign::SigningKeys;

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

/// Key material for pools whose keys keyrelay makes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySettings {
    /// Space-separated base64 Ed25519 private keys for `sign` pools (`keyrelay keys
    /// new-signing-key`); the first signs, all are published.
    pub signing_key: Option<SecretString>,
    /// Space-separated base64 32-byte keys; the first seals key values, all open them.
    pub encryption_keys: Option<SecretString>,
}

impl KeySettings {
    /// The encryption keys; an error that says how to make one when none is configured.
    pub fn vault(&self) -> anyhow::Result<Vault> {
        match &self.encryption_keys {
            Some(keys) => Vault::from_config(keys),
            None => bail!(
                "keys.encryption_keys (KEYRELAY_ENCRYPTION_KEY) is not set: keyrelay stores key values only encrypted; {}",
                crate::crypto::MAKE_ONE
            ),
        }
    }

    /// The vault new keys are sealed with, when encryption keys are configured.
    pub fn sealing_vault(&self) -> anyhow::Result<Option<Arc<Vault>>> {
        match &self.encryption_keys {
            Some(_) => Ok(Some(Arc::new(self.vault()?))),
            None => Ok(None),
        }
    }

    /// The keys `sign` pools sign with, when configured.
    pub fn signing_key(&self) -> anyhow::Result<Option<SigningKeys>> {
        self.signing_key
            .as_ref()
            .map(SigningKeys::parse)
            .transpose()
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSettings {
    pub webhook_url: Option<String>,
}

/// `[notify]`: the shop's own endpoint, told of what happens to keys and grants.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySettings {
    pub url: Option<String>,
    /// `whsec_…`: keyrelay signs its notices with it (Standard Webhooks).
    pub secret: Option<SecretString>,
    /// Send the whole key instead of its masked form.
    #[serde(default)]
    pub include_key: bool,
    /// How long a notice is retried (5xx, 429, no answer) before it is parked for a human.
    #[serde(default = "default_give_up_after_hours")]
    pub give_up_after_hours: u64,
    /// How long the shop may take to answer one notice.
    #[serde(default = "default_notify_timeout")]
    pub timeout_secs: u64,
}

impl Default for NotifySettings {
    fn default() -> NotifySettings {
        NotifySettings {
            url: None,
            secret: None,
            include_key: false,
            give_up_after_hours: default_give_up_after_hours(),
            timeout_secs: default_notify_timeout(),
        }
    }
}

fn default_give_up_after_hours() -> u64 {
    72
}

fn default_notify_timeout() -> u64 {
    10
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
