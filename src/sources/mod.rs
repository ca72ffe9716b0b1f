//! Where keys come from, behind one interface. Every pool has a source, and every source
//! yields a key for a grant through `KeySource::key_for`: `list` says "take an imported key
//! from stock", `generate` and `sign` make one now, `http` asks the merchant's or a vendor's
//! endpoint (a network call, so it is only ever asked outside a transaction). Sources know
//! nothing of the database: the store binds whatever they yield (`store::bind`), unique in
//! the database and audited, and commits before Dodo is called, so a retry sends the same key.

pub mod generate;
pub mod http;
pub mod revocations;
pub mod sign;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use crate::domain::{CustomerId, EntitlementId, GrantId, LicenseKey};
pub use http::{Endpoints, KeySourceSettings, how_to_add_key_source};

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

    /// Whether keyrelay makes or asks for this pool's keys (it never runs out of stock).
    pub fn makes_keys(self) -> bool {
        self != Source::List
    }

    /// Whether getting a key means a network call, made outside any transaction.
    pub fn asks(self) -> bool {
        self == Source::Http
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A pool, as much as its source needs to yield a key.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PoolRecipe {
    pub pool_id: i64,
    pub pool: String,
    pub entitlement_id: EntitlementId,
    pub source: Source,
    pub template: Option<String>,
    pub alphabet: Option<String>,
    pub activations_limit: Option<i32>,
    pub expires_in_days: Option<i32>,
    /// The `[key_sources.NAME]` of an `http` pool.
    pub endpoint: Option<String>,
}

/// What a source knows of the grant it yields a key for.
#[derive(Debug, Clone, Copy)]
pub struct GrantFacts<'a> {
    pub grant_id: &'a GrantId,
    pub customer_id: &'a CustomerId,
    pub entitlement_id: &'a EntitlementId,
    pub payment_id: Option<&'a str>,
    pub subscription_id: Option<&'a str>,
    /// Keys of this grant Dodo already held: an endpoint is asked anew for each.
    pub rejected: i64,
    pub now: DateTime<Utc>,
}

/// What a source yields for a grant.
#[derive(Debug)]
pub enum Yield {
    /// Take the oldest available imported key of the pool (`list`).
    Stock,
    /// This new key: made now (`generate`, `sign`) or issued by an endpoint (`http`).
    Key(LicenseKey),
}

/// Why a source yielded no key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceError {
    /// Try again later, asking the same way (5xx, 429, timeout, no connection).
    /// `slow_down`: the source asked for it (429), which uses no attempt.
    Retry {
        error: String,
        retry_after: Option<Duration>,
        slow_down: bool,
    },
    /// No key can come of asking again until someone changes something; the reason says what.
    Fail(String),
}

/// One interface for every kind of source.
pub trait KeySource {
    /// A key for the grant: taken from stock, made now, or asked for.
    fn key_for(
        &self,
        grant: &GrantFacts<'_>,
    ) -> impl Future<Output = Result<Yield, SourceError>> + Send;

    /// Why this source cannot yield keys in this process (a setting is missing, its server
    /// does not answer), if it cannot; what workers record on the pool.
    fn problem(&self) -> impl Future<Output = Option<String>> + Send;
}

/// The sources this process can use: a signing key for `sign` pools, and the configured
/// endpoints for `http` pools.
#[derive(Clone, Default)]
pub struct Sources {
    signing: Option<sign::SigningKeys>,
    endpoints: Endpoints,
}

impl fmt::Debug for Sources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sources")
            .field("signing", &self.signing.as_ref().map(|_| "[set]"))
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

impl Sources {
    pub fn new(
        signing: Option<sign::SigningKeys>,
        endpoints: HashMap<String, KeySourceSettings>,
    ) -> Sources {
        Sources {
            signing,
            endpoints: Endpoints::new(endpoints),
        }
    }

    /// The source of `pool`.
    pub fn of<'a>(&'a self, pool: &'a PoolRecipe) -> PoolSource<'a> {
        match pool.source {
            Source::List => PoolSource::List,
            Source::Generate => PoolSource::Generate(generate::FromTemplate { pool }),
            Source::Sign => PoolSource::Sign(sign::KeySigner {
                signing: self.signing.as_ref(),
                pool,
            }),
            Source::Http => PoolSource::Http(http::Endpoint {
                endpoints: &self.endpoints,
                pool,
            }),
        }
    }

    /// How long a call to the named endpoint may take; `None` when it is not configured.
    pub fn endpoint_timeout(&self, name: &str) -> Option<Duration> {
        self.endpoints.timeout(name)
    }
}

/// A pool's source, ready to yield keys.
pub enum PoolSource<'a> {
    List,
    Generate(generate::FromTemplate<'a>),
    Sign(sign::KeySigner<'a>),
    Http(http::Endpoint<'a>),
}

impl KeySource for PoolSource<'_> {
    async fn key_for(&self, grant: &GrantFacts<'_>) -> Result<Yield, SourceError> {
        match self {
            PoolSource::List => Ok(Yield::Stock),
            PoolSource::Generate(source) => source.key_for(grant).await,
            PoolSource::Sign(source) => source.key_for(grant).await,
            PoolSource::Http(source) => source.key_for(grant).await,
        }
    }

    async fn problem(&self) -> Option<String> {
        match self {
            PoolSource::List => None,
            PoolSource::Generate(source) => source.problem().await,
            PoolSource::Sign(source) => source.problem().await,
            PoolSource::Http(source) => source.problem().await,
        }
    }
}

impl PoolRecipe {
    /// When a key made now for this pool expires, if it does.
    pub fn expires_at(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.expires_in_days
            .and_then(|d| TimeDelta::try_days(d.into()))
            .and_then(|d| now.checked_add_signed(d))
    }
}
