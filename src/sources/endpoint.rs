//! `http` pools: the merchant's system or a vendor issues the key. keyrelay POSTs the grant as
//! JSON, signed with Standard Webhooks headers under the source's secret, with an
//! `Idempotency-Key` derived from the grant (and from how many of its keys Dodo already held),
//! and reads the key at `key_pointer` in the answer. The endpoint must answer the same key for
//! the same idempotency key; keyrelay records every key it is given either way.

use std::collections::HashMap;
use std::time::Duration;

use secrecy::ExposeSecret;
use serde::Serialize;

use crate::configuration::{KeySourceSettings, parse_webhook_secrets};
use crate::domain::{LicenseKey, printable};
use crate::store::endpoint::KeylessJob;

/// What keyrelay sends an endpoint.
#[derive(Debug, Serialize)]
struct KeyRequest<'a> {
    grant_id: &'a str,
    customer_id: &'a str,
    entitlement_id: &'a str,
    payment_id: Option<&'a str>,
    subscription_id: Option<&'a str>,
}

/// Why no key came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointError {
    /// Try again later with the same idempotency key (5xx, 429, timeout, no connection).
    /// `slow_down`: the endpoint asked for it (429), which uses no attempt.
    Retry {
        error: String,
        retry_after: Option<Duration>,
        slow_down: bool,
    },
    /// The endpoint refused (another 4xx) or answered something that is not a key.
    Fail(String),
}

/// The configured key sources and one HTTP client for them.
#[derive(Clone)]
pub struct Endpoints {
    http: reqwest::Client,
    sources: HashMap<String, KeySourceSettings>,
}

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&String> = self.sources.keys().collect();
        f.debug_struct("Endpoints")
            .field("sources", &names)
            .finish()
    }
}

/// The idempotency key for a grant's request: the same for every retry, new after Dodo
/// rejected the key the endpoint gave.
pub fn idempotency_key(grant_id: &str, rejected: i64) -> String {
    format!("keyrelay:{grant_id}:{rejected}")
}

impl Endpoints {
    pub fn new(sources: HashMap<String, KeySourceSettings>) -> Endpoints {
        Endpoints {
            http: crate::outbound::client().build().expect("reqwest client"),
            sources,
        }
    }

    /// How long a call to the named source may take; `None` when it is not configured.
    pub fn timeout(&self, name: &str) -> Option<Duration> {
        self.sources
            .get(name)
            .map(|s| Duration::from_secs(s.timeout_secs))
    }

    /// Asks the job's endpoint for its key: (idempotency key used, key).
    pub async fn request_key(
        &self,
        job: &KeylessJob,
    ) -> (String, Result<LicenseKey, EndpointError>) {
        let idempotency = idempotency_key(job.grant_id.as_str(), job.rejected);
        let result = self.request(job, &idempotency).await;
        (idempotency, result)
    }

    async fn request(
        &self,
        job: &KeylessJob,
        idempotency: &str,
    ) -> Result<LicenseKey, EndpointError> {
        let source = self.sources.get(&job.endpoint).ok_or_else(|| {
            EndpointError::Fail(format!(
                "pool `{}` names key source `{}`, which is not configured; add [key_sources.{}] and restart, then retry the job",
                job.pool, job.endpoint, job.endpoint
            ))
        })?;
        let body = serde_json::to_string(&KeyRequest {
            grant_id: job.grant_id.as_str(),
            customer_id: job.customer_id.as_str(),
            entitlement_id: job.entitlement_id.as_str(),
            payment_id: job.payment_id.as_deref(),
            subscription_id: job.subscription_id.as_deref(),
        })
        .expect("a key request serializes");
        let secret = parse_webhook_secrets(source.secret.expose_secret())
            .map_err(|e| EndpointError::Fail(e.to_string()))?
            .remove(0);
        let timestamp = chrono::Utc::now().timestamp();
        let signature = standardwebhooks::Webhook::from_bytes(secret)
            .and_then(|w| w.sign(idempotency, timestamp, body.as_bytes()))
            .map_err(|e| EndpointError::Fail(format!("cannot sign the request: {e:?}")))?;
        let answer = self
            .http
            .post(&source.url)
            .timeout(Duration::from_secs(source.timeout_secs))
            .header("content-type", "application/json")
            .header("idempotency-key", idempotency)
            .header("webhook-id", idempotency)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|e| no_answer(job, "did not answer", &e))?;
        let status = answer.status().as_u16();
        if let Some(redirect) = crate::outbound::redirect_refused(&answer) {
            return Err(EndpointError::Fail(format!(
                "key source `{}` answered {status}, {redirect}",
                job.endpoint
            )));
        }
        let retry_after = crate::dodo::wait_hint(answer.headers());
        let bytes =
            match crate::outbound::read_capped(answer, crate::outbound::KEY_ANSWER_LIMIT).await {
                Ok(bytes) => bytes,
                Err(e @ crate::outbound::ReadError::TooLarge { .. }) => {
                    return Err(EndpointError::Fail(format!(
                        "key source `{}` answered {status}, but {e}",
                        job.endpoint
                    )));
                }
                Err(e) => {
                    return Err(EndpointError::Retry {
                        error: format!("key source `{}` {e}", job.endpoint),
                        retry_after: None,
                        slow_down: false,
                    });
                }
            };
        match status {
            200..=299 => key_at(&bytes, &source.key_pointer).map_err(|why| {
                EndpointError::Fail(format!(
                    "key source `{}` answered {status} but {why}",
                    job.endpoint
                ))
            }),
            429 | 500..=599 => Err(EndpointError::Retry {
                error: format!(
                    "key source `{}` answered {status}{}",
                    job.endpoint,
                    message(&bytes)
                ),
                retry_after,
                slow_down: status == 429,
            }),
            _ => Err(EndpointError::Fail(format!(
                "key source `{}` answered {status}{}",
                job.endpoint,
                message(&bytes)
            ))),
        }
    }
}

/// A request that got no (whole) answer: retried, naming the server but not the URL.
fn no_answer(job: &KeylessJob, what: &str, e: &reqwest::Error) -> EndpointError {
    EndpointError::Retry {
        error: format!(
            "key source `{}` {what}: {}",
            job.endpoint,
            crate::dodo::describe_error(e)
        ),
        retry_after: None,
        slow_down: false,
    }
}

/// The key at `pointer` in a JSON answer.
fn key_at(body: &[u8], pointer: &str) -> Result<LicenseKey, String> {
    let json: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| "its answer is not JSON".to_string())?;
    let value = json
        .pointer(pointer)
        .and_then(|v| v.as_str())
        .ok_or_else(|| format!("its answer has no key (a string) at {pointer}"))?;
    LicenseKey::parse(value.trim()).map_err(|e| format!("the key it gave is not valid: {e}"))
}

/// The endpoint's message (its `message` or `error` field, else the body), short and printable.
fn message(body: &[u8]) -> String {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let text = json
        .as_ref()
        .and_then(|j| j.get("message").or_else(|| j.get("error")))
        .and_then(|m| m.as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    let text = printable(text.trim(), 300);
    match text.is_empty() {
        true => String::new(),
        false => format!(": {text}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_read_at_the_pointer() {
        let body = br#"{"license": {"key": " VND-1234-ABCD "}}"#;
        assert_eq!(
            key_at(body, "/license/key").unwrap().reveal(),
            "VND-1234-ABCD"
        );
        assert!(key_at(body, "/key").unwrap_err().contains("no key"));
        assert!(key_at(b"<html>", "/key").unwrap_err().contains("not JSON"));
    }

    #[test]
    fn idempotency_keys_follow_the_grant_and_change_after_a_rejection() {
        assert_eq!(idempotency_key("grant_1", 0), idempotency_key("grant_1", 0));
        assert_ne!(idempotency_key("grant_1", 0), idempotency_key("grant_1", 1));
        assert_ne!(idempotency_key("grant_1", 0), idempotency_key("grant_2", 0));
    }
}
