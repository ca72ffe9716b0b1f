//! The `[dodo]` section: which Dodo to call, with which key, and the rate budget every
//! keyrelay process on the database shares.

use anyhow::bail;
use secrecy::SecretString;
use serde::Deserialize;

use crate::dodo::RateLimits;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DodoEnvironment {
    TestMode,
    LiveMode,
}

impl<'de> Deserialize<'de> for DodoEnvironment {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        match raw.as_str() {
            "test_mode" => Ok(DodoEnvironment::TestMode),
            "live_mode" => Ok(DodoEnvironment::LiveMode),
            other => Err(serde::de::Error::custom(format!(
                "`{}` is not an environment; use test_mode or live_mode",
                other.escape_debug()
            ))),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DodoSettings {
    pub api_key: Option<SecretString>,
    pub environment: DodoEnvironment,
    pub base_url: Option<String>,
    /// Dodo's API limits for this API key, one budget for every process on the database.
    pub rate_limit: RateLimitTier,
    /// With `rate_limit = "custom"`: calls allowed in any second.
    pub burst_per_sec: Option<u32>,
    /// With `rate_limit = "custom"`: calls allowed in any minute.
    pub requests_per_min: Option<u32>,
    pub timeout_secs: u64,
}

/// Dodo's published rate-limit tiers, explicit numbers, or none (sandboxes, benchmarks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitTier {
    Tier0,
    Tier1,
    Tier2,
    Custom,
    Off,
}

impl<'de> Deserialize<'de> for RateLimitTier {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        match raw.trim().to_ascii_lowercase().as_str() {
            "tier0" => Ok(RateLimitTier::Tier0),
            "tier1" => Ok(RateLimitTier::Tier1),
            "tier2" => Ok(RateLimitTier::Tier2),
            "custom" => Ok(RateLimitTier::Custom),
            "off" => Ok(RateLimitTier::Off),
            _ => Err(serde::de::Error::custom(format!(
                "`{}` is not a rate limit; use tier0, tier1, tier2, custom or off",
                raw.escape_debug()
            ))),
        }
    }
}

/// Largest custom limits: the budget keeps a minute of turns in the database.
const MAX_BURST_PER_SEC: u32 = 10_000;
const MAX_REQUESTS_PER_MIN: u32 = 100_000;

impl DodoSettings {
    /// The limits every process shares; None when `rate_limit = "off"`. Call on validated
    /// settings.
    pub fn rate_limits(&self) -> Option<RateLimits> {
        match self.rate_limit {
            RateLimitTier::Tier0 => Some(RateLimits::TIER0),
            RateLimitTier::Tier1 => Some(RateLimits::TIER1),
            RateLimitTier::Tier2 => Some(RateLimits::TIER2),
            RateLimitTier::Custom => Some(RateLimits::new(
                self.burst_per_sec.unwrap_or(1),
                self.requests_per_min.unwrap_or(1),
            )),
            RateLimitTier::Off => None,
        }
    }

    /// The rate budget in words, for the start-up log.
    pub fn rate_budget_description(&self) -> String {
        let name = format!("{:?}", self.rate_limit).to_lowercase();
        match self.rate_limits() {
            Some(limits) => format!("{name}: {limits}, shared by every process on the database"),
            None => "off: no limit on calls to Dodo".into(),
        }
    }

    pub(super) fn validate_rate_limit(&self) -> anyhow::Result<()> {
        let numbers = (self.burst_per_sec, self.requests_per_min);
        if self.rate_limit != RateLimitTier::Custom {
            if numbers != (None, None) {
                bail!(
                    "dodo.burst_per_sec and dodo.requests_per_min apply only with dodo.rate_limit = \"custom\"; remove them or set the rate limit to custom"
                );
            }
            return Ok(());
        }
        let (Some(burst), Some(per_min)) = numbers else {
            bail!(
                "dodo.rate_limit = \"custom\" needs both dodo.burst_per_sec and dodo.requests_per_min (env KEYRELAY_DODO__BURST_PER_SEC, KEYRELAY_DODO__REQUESTS_PER_MIN)"
            );
        };
        if !(1..=MAX_BURST_PER_SEC).contains(&burst) {
            bail!("dodo.burst_per_sec must be between 1 and {MAX_BURST_PER_SEC}, not {burst}");
        }
        if !(1..=MAX_REQUESTS_PER_MIN).contains(&per_min) {
            bail!(
                "dodo.requests_per_min must be between 1 and {MAX_REQUESTS_PER_MIN}, not {per_min}"
            );
        }
        if burst > per_min {
            bail!(
                "dodo.burst_per_sec ({burst}) cannot be more than dodo.requests_per_min ({per_min})"
            );
        }
        Ok(())
    }
}
