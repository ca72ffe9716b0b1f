//! `http` pools: the merchant's system or a vendor issues the key. keyrelay POSTs the grant as
//! JSON, signed with Standard Webhooks headers under the source's secret, with an
//! `Idempotency-Key` derived from the grant (and from how many of its keys Dodo already held),
//! and reads the key at `key_pointer` in the answer. The endpoint must answer the same key for
//! the same idempotency key; keyrelay records every key it is given either way.

use std::collections::HashMap;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::{GrantFacts, KeySource, PoolRecipe, SourceError, Yield};
use crate::crypto::parse_webhook_secrets;
use crate::domain::{LicenseKey, printable};

/// How long an endpoint may take to accept a connection when its health is checked.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// An endpoint of the merchant's or a vendor's that issues a key for a grant
/// (`[key_sources.NAME]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySourceSettings {
    pub url: String,
    /// `whsec_…`: keyrelay signs its requests with it (Standard Webhooks headers).
    pub secret: SecretString,
    /// JSON pointer to the key in the endpoint's answer.
    #[serde(default = "default_key_pointer")]
    pub key_pointer: String,
    #[serde(default = "default_key_source_timeout")]
    pub timeout_secs: u64,
    /// Where keyrelay tells the vendor that a key it issued is suspended, reinstated or
    /// revoked (signed with `secret`, like the key requests).
    #[serde(default)]
    pub revoke_url: Option<String>,
}

fn default_key_pointer() -> String {
    "/key".into()
}

fn default_key_source_timeout() -> u64 {
    10
}

impl KeySourceSettings {
    /// Checks the `[key_sources.NAME]` section; the error names the setting.
    pub fn validate(&self, name: &str) -> Result<(), String> {
        let url = url::Url::parse(&self.url).ok();
        if !url.is_some_and(|u| matches!(u.scheme(), "http" | "https")) {
            return Err(format!(
                "key_sources.{name}.url is not a valid http(s) URL (not shown: it may hold a credential)"
            ));
        }
        if let Some(url) = &self.revoke_url
            && !url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
        {
            return Err(format!(
                "key_sources.{name}.revoke_url is not a valid http(s) URL (not shown: it may hold a credential)"
            ));
        }
        if parse_webhook_secrets(self.secret.expose_secret()).is_err() {
            return Err(format!(
                "key_sources.{name}.secret is not whsec_ followed by base64"
            ));
        }
        if !(self.key_pointer.is_empty() || self.key_pointer.starts_with('/')) {
            return Err(format!(
                "key_sources.{name}.key_pointer must be a JSON pointer such as /key or /license/key"
            ));
        }
        if !(1..=300).contains(&self.timeout_secs) {
            return Err(format!(
                "key_sources.{name}.timeout_secs must be between 1 and 300"
            ));
        }
        Ok(())
    }
}

/// How to configure the key source `name`, for messages about one that is missing.
pub fn how_to_add_key_source(name: &str) -> String {
    format!(
        "add a [key_sources.{name}] section (url, secret) to keyrelay.toml, or KEYRELAY_KEY_SOURCES__{}__URL and __SECRET to the environment",
        name.to_uppercase()
    )
}

/// What keyrelay sends an endpoint.
#[derive(Debug, Serialize)]
struct KeyRequest<'a> {
    grant_id: &'a str,
    customer_id: &'a str,
    entitlement_id: &'a str,
    payment_id: Option<&'a str>,
    subscription_id: Option<&'a str>,
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

impl Default for Endpoints {
    fn default() -> Endpoints {
        Endpoints::new(HashMap::new())
    }
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
}

/// The source of an `http` pool: its endpoint, asked for each grant's key.
pub struct Endpoint<'a> {
    pub endpoints: &'a Endpoints,
    pub pool: &'a PoolRecipe,
}

impl KeySource for Endpoint<'_> {
    async fn key_for(&self, grant: &GrantFacts<'_>) -> Result<Yield, SourceError> {
        let idempotency = idempotency_key(grant.grant_id.as_str(), grant.rejected);
        self.request(grant, &idempotency).await.map(Yield::Key)
    }

    async fn problem(&self) -> Option<String> {
        let name = self.name();
        match self.endpoints.sources.get(name) {
            None => Some(format!(
                "its key source `{name}` is not configured in the workers; {}, restart, then `keyrelay jobs retry --all-failed`",
                how_to_add_key_source(name)
            )),
            Some(source) => unreachable(name, &source.url).await,
        }
    }
}

impl Endpoint<'_> {
    /// The name of the pool's key source.
    fn name(&self) -> &str {
        self.pool.endpoint.as_deref().unwrap_or_default()
    }

    async fn request(
        &self,
        grant: &GrantFacts<'_>,
        idempotency: &str,
    ) -> Result<LicenseKey, SourceError> {
        let name = self.name();
        let source = self.endpoints.sources.get(name).ok_or_else(|| {
            SourceError::Fail(format!(
                "pool `{}` names key source `{name}`, which is not configured; add [key_sources.{name}] and restart, then retry the job",
                self.pool.pool
            ))
        })?;
        let body = serde_json::to_string(&KeyRequest {
            grant_id: grant.grant_id.as_str(),
            customer_id: grant.customer_id.as_str(),
            entitlement_id: grant.entitlement_id.as_str(),
            payment_id: grant.payment_id,
            subscription_id: grant.subscription_id,
        })
        .expect("a key request serializes");
        let secret = parse_webhook_secrets(source.secret.expose_secret())
            .map_err(|e| SourceError::Fail(e.to_string()))?
            .remove(0);
        let request = crate::outbound::signed_post(
            &self.endpoints.http,
            &source.url,
            &secret,
            idempotency,
            body,
        )
        .map_err(SourceError::Fail)?;
        let answer = request
            .timeout(Duration::from_secs(source.timeout_secs))
            .send()
            .await
            .map_err(|e| no_answer(name, "did not answer", &e))?;
        let status = answer.status().as_u16();
        if let Some(redirect) = crate::outbound::redirect_refused(&answer) {
            return Err(SourceError::Fail(format!(
                "key source `{}` answered {status}, {redirect}",
                name
            )));
        }
        let retry_after = crate::outbound::wait_hint(answer.headers());
        let bytes =
            match crate::outbound::read_capped(answer, crate::outbound::KEY_ANSWER_LIMIT).await {
                Ok(bytes) => bytes,
                Err(e @ crate::outbound::ReadError::TooLarge { .. }) => {
                    return Err(SourceError::Fail(format!(
                        "key source `{}` answered {status}, but {e}",
                        name
                    )));
                }
                Err(e) => {
                    return Err(SourceError::Retry {
                        error: format!("key source `{}` {e}", name),
                        retry_after: None,
                        slow_down: false,
                    });
                }
            };
        match status {
            200..=299 => key_at(&bytes, &source.key_pointer).map_err(|why| {
                SourceError::Fail(format!("key source `{}` answered {status} but {why}", name))
            }),
            429 | 500..=599 => Err(SourceError::Retry {
                error: format!("key source `{}` answered {status}{}", name, message(&bytes)),
                retry_after,
                slow_down: status == 429,
            }),
            _ => Err(SourceError::Fail(format!(
                "key source `{}` answered {status}{}",
                name,
                message(&bytes)
            ))),
        }
    }
}

/// Whether the key source's server accepts a connection (the URL itself is not shown: it
/// may hold a credential).
async fn unreachable(name: &str, url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    let host = parsed
        .host_str()?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = parsed.port_or_known_default()?;
    let connect = tokio::net::TcpStream::connect((host.as_str(), port));
    let why = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(_)) => return None,
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
    };
    Some(format!(
        "its key source `{name}` is unreachable at {host}:{port} ({why}); its grants retry until it answers"
    ))
}

/// A request that got no (whole) answer: retried, naming the server but not the URL.
fn no_answer(name: &str, what: &str, e: &reqwest::Error) -> SourceError {
    SourceError::Retry {
        error: format!(
            "key source `{}` {what}: {}",
            name,
            crate::outbound::describe_error(e)
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
