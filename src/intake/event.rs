//! What a verified webhook says: its type, and the grant it carries with its ids checked. Only
//! `IncomingEvent::parse` (or `from_parts`, for replay) makes one.

use std::borrow::Cow;

use chrono::{DateTime, Utc};

use super::signature::VerifiedWebhook;
use crate::crypto::Vault;
use crate::dodo::{Envelope, Grant, GrantStatus};
use crate::domain::{
    CustomerId, EntitlementId, GrantId, IdError, PaymentId, Serve, SubscriptionId, printable,
};
use crate::lifecycle::GrantEvent;
use crate::store::enqueue::NewJob;

pub const CREATED: &str = "entitlement_grant.created";

/// Longest webhook-id and event type accepted, in bytes.
pub const MAX_WEBHOOK_ID_LEN: usize = 255;
pub const MAX_EVENT_TYPE_LEN: usize = 128;

/// A verified, parsed webhook ready to be recorded.
#[derive(Debug)]
pub struct IncomingEvent<'a> {
    pub webhook_id: &'a str,
    pub event_type: String,
    /// The body as received (valid JSON), with any NUL character in its strings replaced by
    /// U+FFFD, since Postgres cannot store NUL.
    pub payload: Cow<'a, str>,
    pub grant: Option<GrantFacts>,
    /// The envelope's event time.
    pub timestamp: Option<DateTime<Utc>>,
}

/// A grant as Dodo describes it, with its ids checked.
#[derive(Clone)]
pub struct GrantFacts {
    pub id: GrantId,
    pub customer_id: CustomerId,
    pub entitlement_id: EntitlementId,
    /// The grant's payment; a payment id keyrelay cannot store is dropped, not refused: the
    /// grant is served all the same, only not found by that id.
    pub payment_id: Option<PaymentId>,
    /// The grant's subscription, dropped like the payment id when it cannot be stored.
    pub subscription_id: Option<SubscriptionId>,
    pub created_at: Option<DateTime<Utc>>,
    pub status: GrantStatus,
    pub serve: Serve,
    pub updated_at: Option<DateTime<Utc>>,
    /// The key Dodo holds for the grant, if any; compared, never shown.
    dodo_key: Option<String>,
    failure: Option<String>,
    revocation_reason: Option<String>,
}

impl std::fmt::Debug for GrantFacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantFacts")
            .field("id", &self.id)
            .field("status", &self.status)
            .field("has_key", &self.has_key())
            .finish_non_exhaustive()
    }
}

impl GrantFacts {
    /// Checks a grant's ids; an id that is empty, too long or not printable is refused.
    pub fn from_grant(grant: &Grant) -> Result<GrantFacts, IdError> {
        Ok(GrantFacts {
            id: GrantId::parse(&grant.id)?,
            customer_id: CustomerId::parse(&grant.customer_id)?,
            entitlement_id: EntitlementId::parse(&grant.entitlement_id)?,
            payment_id: grant
                .payment_id
                .as_deref()
                .and_then(|p| PaymentId::parse(p).ok()),
            subscription_id: grant
                .subscription_id
                .as_deref()
                .and_then(|s| SubscriptionId::parse(s).ok()),
            created_at: parse_time(grant.created_at.as_deref()),
            status: grant.status.clone(),
            serve: ownership(grant),
            updated_at: parse_time(grant.updated_at.as_deref()),
            dodo_key: grant.key_value().map(str::to_string),
            failure: grant.error_message.clone().or(grant.error_code.clone()),
            revocation_reason: grant.revocation_reason.clone(),
        })
    }

    pub fn has_key(&self) -> bool {
        self.dodo_key.is_some()
    }

    /// Whether Dodo holds, for this grant, the key whose look-up hash is `our_hash`.
    pub fn carries(&self, vault: &Vault, our_hash: &[u8]) -> bool {
        self.dodo_key
            .as_deref()
            .is_some_and(|theirs| vault.hashes(theirs).iter().any(|h| h == our_hash))
    }

    /// Dodo's reason for a failed or revoked grant.
    pub fn reason(&self, event: GrantEvent) -> Option<String> {
        match event {
            GrantEvent::Failed => self.failure.clone(),
            GrantEvent::Revoked => self.revocation_reason.clone(),
            GrantEvent::Delivered => None,
        }
    }

    /// The job this grant would get.
    pub fn as_new_job(&self) -> NewJob<'_> {
        NewJob {
            grant_id: &self.id,
            entitlement_id: &self.entitlement_id,
            customer_id: &self.customer_id,
            payment_id: self.payment_id.as_ref(),
            subscription_id: self.subscription_id.as_ref(),
            grant_created_at: self.created_at,
            grant_updated_at: self.updated_at,
            serve: self.serve,
        }
    }

    /// Still waiting for a key at Dodo.
    pub fn is_pending_without_key(&self) -> bool {
        self.status == GrantStatus::Pending && !self.has_key()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("webhook-id {0}")]
    BadWebhookId(&'static str),
    #[error("body is not a JSON webhook envelope: {0}")]
    NotAnEnvelope(String),
    /// Valid JSON that keyrelay cannot process; kept for operators with its reason.
    #[error(transparent)]
    Unprocessable(#[from] Unprocessable),
}

/// A verified JSON webhook keyrelay cannot act on, with what to store so operators see it.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct Unprocessable {
    pub webhook_id: String,
    /// The event type, with control characters replaced and cut to a storable length.
    pub event_type: String,
    pub payload: String,
    pub reason: String,
}

impl<'a> IncomingEvent<'a> {
    pub fn parse(webhook: &'a VerifiedWebhook) -> Result<IncomingEvent<'a>, ParseError> {
        Self::from_parts(webhook.id(), webhook.body())
    }

    /// Parses a stored or received body (used by replay too).
    pub fn from_parts(
        webhook_id: &'a str,
        body: &'a [u8],
    ) -> Result<IncomingEvent<'a>, ParseError> {
        if webhook_id.len() > MAX_WEBHOOK_ID_LEN {
            return Err(ParseError::BadWebhookId("is longer than 255 bytes"));
        }
        if webhook_id.chars().any(char::is_control) {
            return Err(ParseError::BadWebhookId("contains a control character"));
        }
        let payload =
            std::str::from_utf8(body).map_err(|_| ParseError::NotAnEnvelope("not UTF-8".into()))?;
        let envelope: Envelope =
            serde_json::from_str(payload).map_err(|e| ParseError::NotAnEnvelope(e.to_string()))?;
        let payload = storable(payload);
        let unprocessable = |reason: String| Unprocessable {
            webhook_id: webhook_id.to_string(),
            event_type: printable(&envelope.event_type, MAX_EVENT_TYPE_LEN),
            payload: payload.to_string(),
            reason: printable(&reason, 1_000),
        };
        if envelope.event_type.len() > MAX_EVENT_TYPE_LEN
            || envelope.event_type.chars().any(char::is_control)
        {
            let reason = "the event type is too long or contains control characters".into();
            return Err(unprocessable(reason).into());
        }
        let grant = if envelope.event_type.starts_with("entitlement_grant.") {
            let not_a_grant = |reason: String| {
                unprocessable(format!(
                    "`{}` data is not a grant: {reason}",
                    envelope.event_type
                ))
            };
            let grant = serde_json::from_value::<Grant>(envelope.data)
                .map_err(|e| not_a_grant(e.to_string()))?;
            Some(GrantFacts::from_grant(&grant).map_err(|e| not_a_grant(e.to_string()))?)
        } else {
            None
        };
        Ok(IncomingEvent {
            webhook_id,
            payload,
            grant,
            timestamp: parse_time(envelope.timestamp.as_deref()),
            event_type: envelope.event_type,
        })
    }

    /// The job this event asks for: a `created`, still pending license-key grant with no key.
    pub fn new_job(&self) -> Option<NewJob<'_>> {
        let grant = self.grant.as_ref()?;
        let wanted = self.event_type == CREATED
            && grant.is_pending_without_key()
            && grant.serve != Serve::No;
        wanted.then(|| grant.as_new_job())
    }
}

/// Whether keyrelay serves a grant, by its integration type alone: license-key grants yes,
/// other integrations no, and grants that do not say (older payloads) when a pool serves
/// their entitlement.
pub fn ownership(grant: &Grant) -> Serve {
    match grant.is_license_key() {
        Some(true) => Serve::Yes,
        Some(false) => Serve::No,
        None => Serve::IfPooled,
    }
}

/// An ISO 8601 time from a payload, if it parses.
pub fn parse_time(raw: Option<&str>) -> Option<DateTime<Utc>> {
    raw.and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// The payload as Postgres can store it: NUL characters in strings become U+FFFD. Everything
/// else is kept byte for byte.
fn storable(payload: &str) -> Cow<'_, str> {
    if !payload.contains("\\u0000") {
        return Cow::Borrowed(payload);
    }
    fn clean(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::String(s) => *s = s.replace('\0', "\u{FFFD}"),
            serde_json::Value::Array(items) => items.iter_mut().for_each(clean),
            serde_json::Value::Object(fields) => {
                let taken = std::mem::take(fields);
                for (key, mut item) in taken {
                    clean(&mut item);
                    fields.insert(key.replace('\0', "\u{FFFD}"), item);
                }
            }
            _ => {}
        }
    }
    match serde_json::from_str::<serde_json::Value>(payload) {
        Ok(mut value) => {
            clean(&mut value);
            Cow::Owned(value.to_string())
        }
        Err(_) => Cow::Borrowed(payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_characters_become_replacement_characters_and_nothing_else_changes() {
        let raw = r#"{"a":"x\u0000y","b\u0000":[1,"\u0000"],"c":"\\u0000"}"#;
        let clean: serde_json::Value = serde_json::from_str(&storable(raw)).unwrap();
        assert_eq!(
            clean,
            serde_json::json!({"a": "x\u{FFFD}y", "b\u{FFFD}": [1, "\u{FFFD}"], "c": "\\u0000"})
        );
        let untouched = r#"{"a":"plain"}"#;
        assert!(matches!(storable(untouched), Cow::Borrowed(s) if s == untouched));
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// JSON values of the kinds hostile payloads use: control characters, NUL, long strings.
    fn value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<i64>().prop_map(serde_json::Value::from),
            "\\PC{0,12}".prop_map(serde_json::Value::from),
            "[\\x00-\\x1f]{0,6}".prop_map(serde_json::Value::from),
            (1usize..4_000).prop_map(|n| serde_json::Value::from("x".repeat(n))),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                proptest::collection::btree_map("\\PC{0,6}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn envelope() -> impl Strategy<Value = serde_json::Value> {
        let event_type = prop_oneof![
            Just("entitlement_grant.created".to_string()),
            Just("entitlement_grant.delivered".to_string()),
            Just("entitlement_grant.revoked".to_string()),
            "\\PC{0,20}",
        ];
        let grant = (value(), value(), value(), value(), value()).prop_map(
            |(id, customer, entitlement, status, metadata)| {
                serde_json::json!({
                    "id": id, "customer_id": customer, "entitlement_id": entitlement,
                    "status": status, "metadata": metadata, "integration_type": "license_key"
                })
            },
        );
        (event_type, prop_oneof![grant, value()]).prop_map(
            |(t, data)| serde_json::json!({ "business_id": "bus", "type": t, "data": data }),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn any_body_parses_or_is_refused_without_panicking(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = IncomingEvent::from_parts("msg_1", &body);
        }

        #[test]
        fn a_parsed_event_is_storable_and_its_grant_ids_are_bounded(envelope in envelope()) {
            let body = envelope.to_string();
            match IncomingEvent::from_parts("msg_1", body.as_bytes()) {
                Ok(event) => {
                    prop_assert!(!event.payload.contains("\\u0000"));
                    prop_assert!(serde_json::from_str::<serde_json::Value>(&event.payload).is_ok());
                    prop_assert!(event.event_type.len() <= MAX_EVENT_TYPE_LEN);
                    prop_assert!(!event.event_type.chars().any(char::is_control));
                    if let Some(grant) = &event.grant {
                        for id in [grant.id.as_str(), grant.customer_id.as_str(), grant.entitlement_id.as_str()] {
                            prop_assert!(!id.is_empty() && id.len() <= crate::domain::MAX_ID_LEN);
                            prop_assert!(!id.chars().any(char::is_control));
                        }
                    }
                }
                Err(ParseError::Unprocessable(kept)) => {
                    prop_assert!(!kept.payload.contains("\\u0000"));
                    prop_assert!(!kept.event_type.chars().any(char::is_control));
                    prop_assert!(!kept.reason.chars().any(char::is_control));
                }
                Err(other) => prop_assert!(false, "valid JSON refused as {other}"),
            }
        }
    }
}
