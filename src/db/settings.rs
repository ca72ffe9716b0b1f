//! `[database]`: where keyrelay's statements go, and what sits in front of Postgres there.

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

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
    pub fn target(&self) -> anyhow::Result<super::url::DatabaseUrl> {
        let url = super::url::parse(self.url.expose_secret(), "database.url (DATABASE_URL)")
            .map_err(anyhow::Error::msg)?;
        Ok(match self.pooled() {
            true => url.for_transaction_pooler(),
            false => url,
        })
    }

    /// `direct_url`, parsed, if set.
    pub fn direct_target(&self) -> anyhow::Result<Option<super::url::DatabaseUrl>> {
        self.direct_url
            .as_ref()
            .map(|url| {
                super::url::parse(
                    url.expose_secret(),
                    "database.direct_url (DATABASE_DIRECT_URL)",
                )
                .map_err(anyhow::Error::msg)
            })
            .transpose()
    }
}

impl AsRef<DatabaseSettings> for DatabaseSettings {
    fn as_ref(&self) -> &DatabaseSettings {
        self
    }
}
