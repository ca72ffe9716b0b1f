//! Where keys come from. A `list` pool hands out imported keys; `generate` and `sign` pools
//! make a key for each grant when its job is claimed; `http` pools ask an endpoint
//! (`endpoint`). Every source ends in the same place: the
//! store binds the key to the grant, unique in the database and audited, and commits before
//! Dodo is called, so a retry sends the same key.

pub mod endpoint;
pub mod generate;
pub mod sign;

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use ed25519_dalek::SigningKey;

use crate::crypto::Vault;
use crate::domain::{EntitlementId, GrantId, LicenseKey};

/// How a pool gets its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum Source {
    /// Keys imported with `pool import`.
    List,
    /// Random keys from `--template`.
    Generate,
    /// Ed25519-signed keys an app can verify offline.
    Sign,
    /// Keys issued by an endpoint (`[key_sources.NAME]`).
    Http,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::List => "list",
            Source::Generate => "generate",
            Source::Sign => "sign",
            Source::Http => "http",
        }
    }

    /// Whether keyrelay makes this pool's keys (it never runs out of stock).
    pub fn makes_keys(self) -> bool {
        self != Source::List
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the claim knows about a pool that makes its keys.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Recipe {
    pub pool_id: i64,
    pub pool: String,
    pub entitlement_id: EntitlementId,
    pub source: Source,
    pub template: Option<String>,
    pub alphabet: Option<String>,
    pub activations_limit: Option<i32>,
    pub expires_in_days: Option<i32>,
}

/// Makes keys for `generate` and `sign` pools, and seals them for storage.
#[derive(Clone, Default)]
pub struct KeyMaker {
    signing: Option<SigningKey>,
    vault: Option<Arc<Vault>>,
}

impl fmt::Debug for KeyMaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyMaker")
            .field("signing", &self.signing.as_ref().map(|_| "[set]"))
            .finish()
    }
}

impl KeyMaker {
    pub fn new(signing: Option<SigningKey>, vault: Option<Arc<Vault>>) -> KeyMaker {
        KeyMaker { signing, vault }
    }

    /// The encryption keys new keys are sealed with.
    pub fn vault(&self) -> Result<&Vault, String> {
        self.vault.as_deref().ok_or_else(|| {
            format!(
                "keys.encryption_keys (KEYRELAY_ENCRYPTION_KEY) is not set; {}",
                crate::crypto::MAKE_ONE
            )
        })
    }

    /// A new key for `grant_id` from the pool's recipe, or why none can be made.
    pub fn make(
        &self,
        recipe: &Recipe,
        grant_id: &GrantId,
        now: DateTime<Utc>,
    ) -> Result<LicenseKey, String> {
        match recipe.source {
            Source::List | Source::Http => Err(format!(
                "pool `{}` gets its keys from outside keyrelay ({})",
                recipe.pool, recipe.source
            )),
            Source::Generate => {
                let pattern = recipe.template.as_deref().unwrap_or_default();
                generate::Template::parse(pattern, recipe.alphabet.as_deref(), true)
                    .map_err(|e| format!("pool `{}`: {e}", recipe.pool))?
                    .make()
            }
            Source::Sign => {
                let signing = self.signing.as_ref().ok_or_else(|| {
                    format!(
                        "pool `{}` signs its keys, but keys.signing_key (KEYRELAY_SIGNING_KEY) is not set; make one with `keyrelay keys new-signing-key`, set it, restart, then `keyrelay jobs retry --all-failed`",
                        recipe.pool
                    )
                })?;
                let facts = sign::KeyFacts {
                    grant_id: grant_id.as_str(),
                    entitlement_id: recipe.entitlement_id.as_str(),
                    issued_at: now,
                    expires_at: recipe
                        .expires_in_days
                        .and_then(|d| TimeDelta::try_days(d.into()))
                        .and_then(|d| now.checked_add_signed(d)),
                    activations_limit: recipe.activations_limit.and_then(|n| u32::try_from(n).ok()),
                };
                sign::make(signing, &facts)
            }
        }
    }
}
