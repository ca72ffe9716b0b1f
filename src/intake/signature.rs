//! Standard Webhooks verification on the raw body. Only `verify` makes a `VerifiedWebhook`, so
//! nothing unverified can reach the parser or the database.

use actix_web::http::header::HeaderMap as ActixHeaderMap;
use standardwebhooks::{HEADER_WEBHOOK_ID, HEADER_WEBHOOK_SIGNATURE, HEADER_WEBHOOK_TIMESTAMP};
use standardwebhooks::{Webhook, WebhookError};

/// The webhook secrets in force (several during rotation).
pub struct WebhookVerifier {
    hooks: Vec<Webhook>,
}

/// A request whose signature matched one of our secrets.
#[derive(Debug)]
pub struct VerifiedWebhook {
    id: String,
    body: actix_web::web::Bytes,
}

impl VerifiedWebhook {
    pub fn id(&self) -> &str {
        &self.id
    }
    pub fn body(&self) -> &[u8] {
        &self.body
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("missing or unreadable header {0}")]
    Header(&'static str),
    #[error("webhook-timestamp is more than 5 minutes from now; check the sender's clock")]
    Timestamp,
    #[error("signature does not match any configured webhook secret")]
    Signature,
}

impl WebhookVerifier {
    /// Builds a verifier from decoded secret keys (see `crypto::parse_webhook_secrets`).
    pub fn new(keys: Vec<Vec<u8>>) -> WebhookVerifier {
        WebhookVerifier {
            hooks: keys
                .into_iter()
                .map(|k| Webhook::from_bytes(k).expect("from_bytes cannot fail"))
                .collect(),
        }
    }

    pub fn verify(
        &self,
        headers: &ActixHeaderMap,
        body: actix_web::web::Bytes,
    ) -> Result<VerifiedWebhook, VerifyError> {
        // actix-web speaks `http` 0.2, the crate wants 1.x: copy the three headers across.
        let mut copied = http::HeaderMap::new();
        for name in [
            HEADER_WEBHOOK_ID,
            HEADER_WEBHOOK_TIMESTAMP,
            HEADER_WEBHOOK_SIGNATURE,
        ] {
            for value in headers.get_all(name) {
                let value = http::HeaderValue::from_bytes(value.as_bytes())
                    .map_err(|_| VerifyError::Header(name))?;
                copied.append(name, value);
            }
        }
        let mut last = VerifyError::Signature;
        for hook in &self.hooks {
            match hook.verify(&body, &copied) {
                Ok(()) => {
                    let id = copied
                        .get(HEADER_WEBHOOK_ID)
                        .and_then(|v| v.to_str().ok())
                        .filter(|id| !id.is_empty())
                        .ok_or(VerifyError::Header(HEADER_WEBHOOK_ID))?
                        .to_string();
                    return Ok(VerifiedWebhook { id, body });
                }
                Err(WebhookError::MissingHeader(h) | WebhookError::InvalidHeader(h)) => {
                    return Err(VerifyError::Header(header_name(h)));
                }
                Err(WebhookError::InvalidTimestamp) => {
                    return Err(VerifyError::Header(HEADER_WEBHOOK_TIMESTAMP));
                }
                Err(WebhookError::TimestampTooOldError | WebhookError::FutureTimestampError) => {
                    return Err(VerifyError::Timestamp);
                }
                Err(_) => last = VerifyError::Signature,
            }
        }
        Err(last)
    }
}

fn header_name(short: &str) -> &'static str {
    match short {
        "id" => HEADER_WEBHOOK_ID,
        "timestamp" => HEADER_WEBHOOK_TIMESTAMP,
        _ => HEADER_WEBHOOK_SIGNATURE,
    }
}
