//! A small Dodo API client over reqwest: fulfill a grant, and look grants up by listing them.
//! Every call takes a turn from the rate budget and has a timeout; a 429 pauses the budget.

use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use super::{ErrorBody, Grant, GrantStatus, RateBudget, Turn};
use crate::domain::{CustomerId, EntitlementId, GrantId, LicenseKey, printable};

const PAGE_SIZE: u32 = 100;
/// A 429 without `Retry-After` holds every worker back this long.
const DEFAULT_429_PAUSE: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct DodoClient {
    http: reqwest::Client,
    base_url: reqwest::Url,
    api_key: SecretString,
    budget: Arc<RateBudget>,
    /// How long one call may take.
    timeout: Duration,
}

/// The body of `POST /grants/{id}/license-key`; unset options are omitted.
#[derive(Debug, Clone, Serialize)]
pub struct FulfillRequest {
    #[serde(serialize_with = "reveal_key")]
    pub key: LicenseKey,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activations_limit: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// The key goes to Dodo in full: the one place a request body carries it.
fn reveal_key<S: serde::Serializer>(key: &LicenseKey, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(key.reveal())
}

/// Dodo's HTTP answer to a fulfill request.
#[derive(Debug, Clone)]
pub struct FulfillAnswer {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub message: Option<String>,
}

/// A call that got no HTTP answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("request to Dodo timed out")]
    Timeout,
    #[error("could not reach Dodo: {0}")]
    Connect(String),
    #[error("request to Dodo failed: {0}")]
    Other(String),
    /// Nothing was sent: no turn could be taken from the shared rate budget.
    #[error("not sent: the shared rate budget in the database is unavailable: {0}")]
    NotSent(String),
    #[error("Dodo answered HTTP {status}{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Status {
        status: u16,
        message: Option<String>,
    },
}

impl std::fmt::Debug for DodoClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DodoClient")
            .field("base_url", &self.base_url.as_str())
            .finish_non_exhaustive()
    }
}

impl DodoClient {
    /// A client for the API at `base_url`; an unusable URL is an error now, naming the setting.
    pub fn new(
        base_url: &str,
        api_key: SecretString,
        timeout: Duration,
        budget: Arc<RateBudget>,
    ) -> anyhow::Result<DodoClient> {
        let http = crate::outbound::client()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .pool_max_idle_per_host(256)
            .build()?;
        let base_url = reqwest::Url::parse(base_url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && !u.cannot_be_a_base())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "dodo.base_url (DODO_PAYMENTS_BASE_URL) must be an http(s) URL, not `{base_url}`"
                )
            })?;
        Ok(DodoClient {
            http,
            base_url,
            api_key,
            budget,
            timeout,
        })
    }

    /// How long one call may take before it counts as unanswered.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Takes the next turn to call Dodo from the rate budget, for `fulfill`.
    pub async fn take_turn(&self) -> Result<Turn, CallError> {
        self.budget
            .take_turn()
            .await
            .map_err(|e| CallError::NotSent(e.to_string()))
    }

    /// `POST /grants/{grant_id}/license-key`, sent when `turn` comes. Any HTTP answer is
    /// returned as is; only a missing answer (timeout, connection error) is an error.
    pub async fn fulfill(
        &self,
        turn: Turn,
        grant_id: &GrantId,
        body: &FulfillRequest,
    ) -> Result<FulfillAnswer, CallError> {
        let url = self.url(&["grants", grant_id.as_str(), "license-key"], &[]);
        turn.arrive().await;
        let response = self.send(self.http.post(url).json(body)).await?;
        let status = response.status().as_u16();
        let retry_after = crate::outbound::wait_hint(response.headers());
        let message = if status == 200 {
            None
        } else {
            error_message(response).await
        };
        Ok(FulfillAnswer {
            status,
            retry_after,
            message,
        })
    }

    /// One page of `GET /entitlements/{ent}/grants`.
    pub async fn list_grants(
        &self,
        entitlement_id: &EntitlementId,
        customer_id: Option<&CustomerId>,
        status: Option<&GrantStatus>,
        page_number: u32,
    ) -> Result<Vec<Grant>, CallError> {
        let page = page_number.to_string();
        let size = PAGE_SIZE.to_string();
        let mut query = vec![("page_number", page.as_str()), ("page_size", size.as_str())];
        if let Some(c) = customer_id {
            query.push(("customer_id", c.as_str()));
        }
        if let Some(s) = status {
            query.push(("status", s.as_api_str()));
        }
        let url = self.url(&["entitlements", entitlement_id.as_str(), "grants"], &query);
        self.take_turn().await?.arrive().await;
        let response = self.send(self.http.get(url)).await?;
        let status = response.status().as_u16();
        if status != 200 {
            let message = error_message(response).await;
            return Err(CallError::Status { status, message });
        }
        #[derive(serde::Deserialize)]
        struct Page {
            #[serde(default)]
            items: Vec<Grant>,
        }
        let body = crate::outbound::read_capped(response, crate::outbound::GRANT_PAGE_LIMIT)
            .await
            .map_err(|e| CallError::Other(format!("unreadable grant list: {e}")))?;
        let page: Page = serde_json::from_slice(&body)
            .map_err(|e| CallError::Other(format!("unreadable grant list: {e}")))?;
        Ok(page.items)
    }

    /// Finds one grant: there is no get-by-id, so list the customer's grants of the
    /// entitlement page by page and match the id.
    pub async fn find_grant(
        &self,
        entitlement_id: &EntitlementId,
        customer_id: &CustomerId,
        grant_id: &GrantId,
    ) -> Result<Option<Grant>, CallError> {
        for page in 0.. {
            let items = self
                .list_grants(entitlement_id, Some(customer_id), None, page)
                .await?;
            if items.is_empty() {
                break;
            }
            if let Some(grant) = items.into_iter().find(|g| g.id == grant_id.as_str()) {
                return Ok(Some(grant));
            }
        }
        Ok(None)
    }

    fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> reqwest::Url {
        let mut url = self.base_url.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    /// Sends a request whose turn has come; a 429 (or a budget Dodo says is spent) pauses
    /// every caller.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, CallError> {
        let response = request
            .bearer_auth(self.api_key.expose_secret())
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    CallError::Timeout
                } else if e.is_connect() {
                    CallError::Connect(crate::outbound::describe_error(&e))
                } else {
                    CallError::Other(crate::outbound::describe_error(&e))
                }
            })?;
        let headers = response.headers();
        let exhausted = headers
            .get("x-ratelimit-remaining")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() == "0");
        if response.status() == reqwest::StatusCode::TOO_MANY_REQUESTS || exhausted {
            self.budget
                .pause_for(crate::outbound::wait_hint(headers).unwrap_or(DEFAULT_429_PAUSE))
                .await;
        }
        Ok(response)
    }
}

/// Longest part of an error body kept, in bytes.
const MAX_MESSAGE_LEN: usize = 300;

/// Dodo's error message (or the start of whatever body came instead), printable and short.
async fn error_message(response: reqwest::Response) -> Option<String> {
    if let Some(redirect) = crate::outbound::redirect_refused(&response) {
        return Some(format!("{redirect} (check dodo.base_url)"));
    }
    let bytes =
        match crate::outbound::read_capped(response, crate::outbound::ERROR_BODY_LIMIT).await {
            Ok(bytes) => bytes,
            Err(e) => return Some(e.to_string()),
        };
    let body: ErrorBody = serde_json::from_slice(&bytes).unwrap_or_default();
    let text = body
        .message
        .or(body.code)
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
    let text = printable(text.trim(), MAX_MESSAGE_LEN);
    (!text.is_empty()).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unusable_base_url_fails_when_the_client_is_built() {
        for bad in ["not a url", "ftp://dodo.example", "mailto:ops@example.com"] {
            let err = DodoClient::new(
                bad,
                SecretString::from("sk"),
                Duration::from_secs(1),
                Arc::new(RateBudget::unlimited()),
            )
            .unwrap_err();
            assert!(err.to_string().contains("dodo.base_url"), "{bad}: {err}");
        }
        let ok = DodoClient::new(
            "http://127.0.0.1:9/v1/",
            SecretString::from("sk"),
            Duration::from_secs(1),
            Arc::new(RateBudget::unlimited()),
        )
        .unwrap();
        let grant = GrantId::parse("grant 1/x").unwrap();
        assert_eq!(
            ok.url(&["grants", grant.as_str(), "license-key"], &[])
                .as_str(),
            "http://127.0.0.1:9/v1/grants/grant%201%2Fx/license-key"
        );
    }
}
