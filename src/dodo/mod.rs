//! Dodo Payments: lenient wire types for grants and webhook envelopes, and a small API client.
//! Every documented variant parses: `status` in any case, `metadata: null`, no
//! `integration_type`, `license_key` with or without `id`, unknown fields ignored.

mod budget;
mod client;

pub use budget::{RateBudget, RateLimits, Turn, take_turn_at};
pub use client::{CallError, DodoClient, FulfillAnswer, FulfillRequest};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A grant's status at Dodo, compared case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantStatus {
    Pending,
    Delivered,
    Failed,
    Revoked,
    Other(String),
}

impl GrantStatus {
    pub fn parse(raw: &str) -> GrantStatus {
        match raw.to_ascii_lowercase().as_str() {
            "pending" => GrantStatus::Pending,
            "delivered" => GrantStatus::Delivered,
            "failed" => GrantStatus::Failed,
            "revoked" => GrantStatus::Revoked,
            _ => GrantStatus::Other(raw.to_string()),
        }
    }

    /// The capitalised form the API reference uses (and list filters expect).
    pub fn as_api_str(&self) -> &str {
        match self {
            GrantStatus::Pending => "Pending",
            GrantStatus::Delivered => "Delivered",
            GrantStatus::Failed => "Failed",
            GrantStatus::Revoked => "Revoked",
            GrantStatus::Other(s) => s,
        }
    }
}

impl<'de> Deserialize<'de> for GrantStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(GrantStatus::parse(&String::deserialize(d)?))
    }
}

impl Serialize for GrantStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_api_str())
    }
}

/// The license key of a delivered grant (`id` and `status` appear in some SDKs only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LicenseKey {
    pub key: String,
    #[serde(default)]
    pub activations_used: Option<i64>,
    #[serde(default)]
    pub activations_limit: Option<i64>,
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// An entitlement grant, as in `entitlement_grant.*` webhooks and API responses.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Grant {
    pub id: String,
    #[serde(default)]
    pub business_id: Option<String>,
    #[serde(default)]
    pub brand_id: Option<String>,
    pub customer_id: String,
    pub entitlement_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integration_type: Option<String>,
    pub status: GrantStatus,
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub updated_at: Option<String>,
    #[serde(default)]
    pub delivered_at: Option<String>,
    #[serde(default)]
    pub revoked_at: Option<String>,
    #[serde(default)]
    pub revocation_reason: Option<String>,
    #[serde(default)]
    pub error_code: Option<String>,
    #[serde(default)]
    pub error_message: Option<String>,
    #[serde(default)]
    pub license_key: Option<LicenseKey>,
    #[serde(default)]
    pub payment_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_id: Option<String>,
}

impl Grant {
    /// `Some(true)` for license-key grants, `Some(false)` for other integrations, `None` when
    /// the payload does not say (older payloads).
    pub fn is_license_key(&self) -> Option<bool> {
        self.integration_type
            .as_deref()
            .map(|t| t.eq_ignore_ascii_case("license_key"))
    }

    /// The key Dodo holds for this grant, if any.
    pub fn key_value(&self) -> Option<&str> {
        self.license_key.as_ref().map(|k| k.key.as_str())
    }
}

/// A webhook envelope: `{business_id, type, timestamp, data}`.
#[derive(Debug, Clone, Deserialize)]
pub struct Envelope {
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(default)]
    pub business_id: Option<String>,
    #[serde(default)]
    pub timestamp: Option<String>,
    #[serde(default)]
    pub data: serde_json::Value,
}

/// Dodo's error body `{"code", "message"}`; either may be missing.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ErrorBody {
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_compared_case_insensitively() {
        assert_eq!(GrantStatus::parse("pending"), GrantStatus::Pending);
        assert_eq!(GrantStatus::parse("Pending"), GrantStatus::Pending);
        assert_eq!(GrantStatus::parse("REVOKED"), GrantStatus::Revoked);
        assert_eq!(
            GrantStatus::parse("SubscriptionPaused"),
            GrantStatus::Other("SubscriptionPaused".into())
        );
    }

    #[test]
    fn grants_without_optional_fields_parse() {
        let g: Grant = serde_json::from_str(
            r#"{"id":"g","customer_id":"c","entitlement_id":"e","status":"pending","metadata":null,"extra":1}"#,
        )
        .unwrap();
        assert_eq!(g.is_license_key(), None);
        assert_eq!(g.key_value(), None);
        let g: Grant = serde_json::from_str(
            r#"{"id":"g","customer_id":"c","entitlement_id":"e","status":"Delivered","integration_type":"license_key",
                "license_key":{"id":"lk_1","status":"active","key":"K-1","activations_used":0}}"#,
        )
        .unwrap();
        assert_eq!(g.is_license_key(), Some(true));
        assert_eq!(g.key_value(), Some("K-1"));
    }
}
