//! What a verified webhook says: its type, the grant it carries, and whether it asks for a
//! fulfillment job.

use crate::dodo::{Envelope, Grant, GrantStatus};

use super::signature::VerifiedWebhook;

/// A verified, parsed webhook ready to be stored.
#[derive(Debug)]
pub struct IncomingEvent<'a> {
    pub webhook_id: &'a str,
    pub event_type: String,
    /// The body as received (valid JSON).
    pub payload: &'a str,
    pub grant: Option<Grant>,
    /// The envelope's event time.
    pub timestamp: Option<String>,
}

/// Whether a `created` grant should get a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobDecision {
    /// A pending license-key grant with no key.
    Enqueue,
    /// No `integration_type` in the payload: enqueue only if a pool serves the entitlement.
    EnqueueIfPooled,
    Skip,
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
        let grant = if envelope.event_type.starts_with("entitlement_grant.") {
            let grant = serde_json::from_value::<Grant>(envelope.data).map_err(|e| {
                ParseError::NotAGrant {
                    event_type: envelope.event_type.clone(),
                    reason: e.to_string(),
                }
            })?;
            Some(grant)
        } else {
            None
        };
        Ok(IncomingEvent {
            webhook_id,
            event_type: envelope.event_type,
            payload,
            grant,
            timestamp: envelope.timestamp,
        })
    }

    pub fn job_decision(&self) -> JobDecision {
        let Some(grant) = &self.grant else {
            return JobDecision::Skip;
        };
        if self.event_type != "entitlement_grant.created"
            || grant.status != GrantStatus::Pending
            || grant.license_key.is_some()
        {
            return JobDecision::Skip;
        }
        ownership(grant)
    }
}

/// Whether keyrelay serves a grant, by its integration type alone: license-key grants yes,
/// other integrations no, and grants that do not say (older payloads) when a pool serves
/// their entitlement.
pub fn ownership(grant: &Grant) -> JobDecision {
    match grant.is_license_key() {
        Some(true) => JobDecision::Enqueue,
        Some(false) => JobDecision::Skip,
        None => JobDecision::EnqueueIfPooled,
    }
}
