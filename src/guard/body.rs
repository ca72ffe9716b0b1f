//! The body deadline and size cap for every route, and the headers every answer carries.
//! `/webhooks/dodo` reads its own body under the same rules (and counts what it refuses in
//! its own metrics), so it is only given the headers here.

use std::time::Duration;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpResponse, web};
use futures_util::StreamExt;

/// How long a request body may take to arrive, and how large it may be.
#[derive(Debug, Clone, Copy)]
pub struct BodyPolicy {
    pub timeout: Duration,
    pub max_bytes: usize,
}

/// The route that applies these limits itself.
const SELF_READING: &str = "/webhooks/dodo";

enum Refused {
    TooLarge,
    Late,
    Broken,
}

impl Refused {
    fn answer(&self, policy: &BodyPolicy) -> HttpResponse {
        let (mut response, error) = match self {
            Refused::TooLarge => (
                HttpResponse::PayloadTooLarge(),
                format!("the request body is larger than {} bytes", policy.max_bytes),
            ),
            Refused::Late => (
                HttpResponse::RequestTimeout(),
                format!(
                    "the request body did not arrive within {} s",
                    policy.timeout.as_secs()
                ),
            ),
            Refused::Broken => (
                HttpResponse::BadRequest(),
                "the request body could not be read".to_string(),
            ),
        };
        // The rest of the body is not worth waiting for.
        response.force_close();
        response.json(serde_json::json!({ "error": error }))
    }
}

/// Whether the request says a body follows.
fn has_body(request: &ServiceRequest) -> Result<bool, ()> {
    let headers = request.headers();
    if let Some(length) = headers.get(header::CONTENT_LENGTH) {
        let length: u64 = length
            .to_str()
            .ok()
            .and_then(|l| l.trim().parse().ok())
            .ok_or(())?;
        return Ok(length > 0);
    }
    Ok(headers.contains_key(header::TRANSFER_ENCODING))
}

fn declared_length(request: &ServiceRequest) -> Option<u64> {
    request
        .headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

async fn read_whole(payload: &mut Payload, max: usize) -> Result<web::Bytes, Refused> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| Refused::Broken)?;
        if body.len() + chunk.len() > max {
            return Err(Refused::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Reads a request's body in full within the deadline (408) and under the cap (413) before
/// the handler runs, then hands it the bytes; sets the common answer headers.
pub async fn guard_request(
    mut request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let policy = request
        .app_data::<web::Data<BodyPolicy>>()
        .map(|p| *p.get_ref())
        .unwrap_or(BodyPolicy {
            timeout: Duration::from_secs(10),
            max_bytes: crate::intake::MAX_BODY_BYTES,
        });
    if request.path() != SELF_READING {
        let refused = match has_body(&request) {
            Err(()) => Some(Refused::Broken),
            Ok(false) => None,
            Ok(true) if declared_length(&request).is_some_and(|n| n > policy.max_bytes as u64) => {
                Some(Refused::TooLarge)
            }
            Ok(true) => {
                let mut payload = request.take_payload();
                match tokio::time::timeout(
                    policy.timeout,
                    read_whole(&mut payload, policy.max_bytes),
                )
                .await
                {
                    Ok(Ok(bytes)) => {
                        request.set_payload(Payload::from(bytes));
                        None
                    }
                    Ok(Err(refused)) => Some(refused),
                    Err(_) => Some(Refused::Late),
                }
            }
        };
        if let Some(refused) = refused {
            let answer = with_headers(request.path(), refused.answer(&policy));
            tracing::warn!(
                path = %crate::domain::printable(request.path(), 100),
                status = answer.status().as_u16(),
                "request body refused"
            );
            return Ok(request.into_response(answer).map_into_right_body());
        }
    }
    let path = request.path().to_string();
    let mut response = next.call(request).await?;
    set_headers(&path, response.headers_mut());
    Ok(response.map_into_left_body())
}

fn with_headers(path: &str, mut response: HttpResponse) -> HttpResponse {
    set_headers(path, response.headers_mut());
    response
}

/// `nosniff` on every answer; the admin and shop APIs' answers are never cached.
fn set_headers(path: &str, headers: &mut header::HeaderMap) {
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if path.starts_with("/admin/api/") || path.starts_with("/api/") {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}
