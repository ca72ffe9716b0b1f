//! Outbound HTTP: every client keyrelay builds follows no redirects, and every answer is read
//! with a size cap. A redirect would re-send a signed request (and a grant's key) to a host
//! nobody configured; an unbounded body lets one answer grow the process without limit.

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
        .map_err(|e| ReadError::Broken(crate::dodo::describe_error(&e)))?
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
