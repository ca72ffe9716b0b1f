//! Outbound HTTP: every client keyrelay builds follows no redirects, and every answer is read
//! with a size cap. A redirect would re-send a signed request (and a grant's key) to a host
//! nobody configured; an unbounded body lets one answer grow the process without limit.

use std::time::Duration;

use bytes::Bytes;

/// Largest answer a key source may give: a key and a little JSON around it.
pub const KEY_ANSWER_LIMIT: usize = 16 * 1024;
/// Largest error body read from Dodo (only its message is kept).
pub const ERROR_BODY_LIMIT: usize = 16 * 1024;
/// Largest page of grants read from Dodo (100 grants of a few hundred bytes each).
pub const GRANT_PAGE_LIMIT: usize = 1024 * 1024;

/// A client builder with keyrelay's user agent that never follows redirects.
pub fn client() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("keyrelay/", env!("CARGO_PKG_VERSION")))
}

/// A JSON POST of `body` to `url`, signed as a Standard Webhooks message `id` under `secret`
/// (the `webhook-*` headers), with `id` as its `Idempotency-Key` too: what keyrelay sends to
/// key sources and to the shop. Fails only if the message cannot be signed.
pub fn signed_post(
    http: &reqwest::Client,
    url: &str,
    secret: &[u8],
    id: &str,
    body: String,
) -> Result<reqwest::RequestBuilder, String> {
    let timestamp = chrono::Utc::now().timestamp();
    let signature = standardwebhooks::Webhook::from_bytes(secret.to_vec())
        .and_then(|w| w.sign(id, timestamp, body.as_bytes()))
        .map_err(|e| format!("cannot sign the request: {e:?}"))?;
    Ok(http
        .post(url)
        .header("content-type", "application/json")
        .header("idempotency-key", id)
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body))
}

/// Why an answer's body was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("its answer is larger than {limit} bytes (keyrelay reads at most that)")]
    TooLarge { limit: usize },
    #[error("it broke off its answer: {0}")]
    Broken(String),
}

/// The body of `response`, or an error as soon as it passes `limit` bytes: a declared length
/// over the limit is refused before anything is read, and a body without one is read chunk by
/// chunk and dropped at the first chunk past the limit.
pub async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Bytes, ReadError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(ReadError::TooLarge { limit });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| ReadError::Broken(describe_error(&e)))?
    {
        if body.len() + chunk.len() > limit {
            return Err(ReadError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(body))
}

/// For a 3xx answer, what to tell the operator: where it pointed (host only; the rest of a
/// URL may carry a credential) and that it was not followed.
pub fn redirect_refused(response: &reqwest::Response) -> Option<String> {
    if !response.status().is_redirection() {
        return None;
    }
    let target = response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|l| l.to_str().ok())
        .and_then(|l| response.url().join(l).ok())
        .and_then(|u| u.host_str().map(str::to_string));
    Some(match target {
        Some(host) => format!(
            "a redirect to {}; keyrelay follows no redirects, so set the configured URL to the address that answers",
            crate::domain::printable(&host, 100)
        ),
        None => "a redirect; keyrelay follows no redirects, so set the configured URL to the address that answers".into(),
    })
}

/// An HTTP error in one line that names the server tried (`scheme://host:port`) but never the
/// rest of the URL, which may carry a credential (a Slack webhook path, a user:password).
pub fn describe_error(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        let server = format!(
            "{}://{}:{}",
            url.scheme(),
            url.host_str().unwrap_or("?"),
            url.port_or_known_default().unwrap_or(0)
        );
        text = text.replace(url.as_str(), &server);
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

/// How long a server asks callers to wait: `Retry-After`, else `X-RateLimit-Reset`.
pub fn wait_hint(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    parse_retry_after(headers).or_else(|| parse_rate_limit_reset(headers))
}

/// `X-RateLimit-Reset`: seconds until the window resets, or the Unix time it resets at.
pub fn parse_rate_limit_reset(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let raw: f64 = headers
        .get("x-ratelimit-reset")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if !raw.is_finite() || raw < 0.0 {
        return None;
    }
    // Anything past 2001-09-09 is a Unix time, not a number of seconds to wait.
    if raw > 1e9 {
        let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
        return Some(Duration::from_secs_f64((raw - now).clamp(0.0, 3600.0)));
    }
    Some(Duration::from_secs_f64(raw.min(3600.0)))
}

/// `Retry-After` as seconds or an HTTP date.
pub fn parse_retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let raw = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = raw.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(raw).ok()?;
    let delta = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn rate_limit_reset_is_honoured_when_retry_after_is_absent() {
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-reset", HeaderValue::from_static("12"));
        assert_eq!(wait_hint(&h), Some(Duration::from_secs(12)));
        let soon = chrono::Utc::now().timestamp() + 30;
        h.insert(
            "x-ratelimit-reset",
            HeaderValue::from_str(&soon.to_string()).unwrap(),
        );
        let wait = wait_hint(&h).unwrap();
        assert!(
            wait > Duration::from_secs(25) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        h.insert(RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(
            wait_hint(&h),
            Some(Duration::from_secs(2)),
            "Retry-After wins"
        );
    }

    #[test]
    fn retry_after_accepts_seconds_and_dates() {
        assert_eq!(
            parse_retry_after(&headers("7")),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            parse_retry_after(&headers("0.5")),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            parse_retry_after(&headers("Wed, 21 Oct 2015 07:28:00 GMT")),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after(&headers("soon")), None);
        assert_eq!(parse_retry_after(&HeaderMap::new()), None);
    }
}
