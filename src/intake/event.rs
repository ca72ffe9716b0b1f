//! What a verified webhook says: its type, and the grant it carries with its ids checked. Only
//! `IncomingEvent::parse` (or `from_parts`, for replay) makes one.

use chrono::{DateTime, Utc};

use super::signature::VerifiedWebhook;
use crate::dodo::{Envelope, Grant, GrantStatus};
use crate::domain::{CustomerId, EntitlementId, GrantId, IdError, LicenseKey, Serve};
use crate::lifecycle::GrantEvent;
use crate::store::enqueue::NewJob;

pub const CREATED: &str = "entitlement_grant.created";

/// A verified, parsed webhook ready to be recorded.
#[derive(Debug)]
pub struct IncomingEvent<'a> {
    pub webhook_id: &'a str,
    pub event_type: String,
    /// The body as received (valid JSON).
    pub payload: &'a str,
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

    /// Whether Dodo holds `key` for this grant.
    pub fn carries(&self, key: &LicenseKey) -> bool {
        key.is(self.dodo_key.as_deref())
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
    #[error("body is not a JSON webhook envelope: {0}")]
    NotAnEnvelope(String),
    #[error("`{event_type}` data is not a grant: {reason}")]
    NotAGrant { event_type: String, reason: String },
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
        let payload =
            std::str::from_utf8(body).map_err(|_| ParseError::NotAnEnvelope("not UTF-8".into()))?;
        let envelope: Envelope =
            serde_json::from_str(payload).map_err(|e| ParseError::NotAnEnvelope(e.to_string()))?;
        let not_a_grant = |reason: String| ParseError::NotAGrant {
            event_type: envelope.event_type.clone(),
            reason,
        };
        let grant = if envelope.event_type.starts_with("entitlement_grant.") {
            let grant = serde_json::from_value::<Grant>(envelope.data.clone())
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
