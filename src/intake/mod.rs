//! Webhook intake: `POST /webhooks/dodo`. Verify the raw body, parse leniently, record the
//! event and what it asks for (`record`), wake the workers, and answer 2xx only after the commit.

pub mod event;
pub mod payload_keys;
pub mod record;
pub mod signature;

use std::sync::Arc;
use std::time::Duration;

use crate::db::Db;
use actix_web::{HttpRequest, HttpResponse, ResponseError, http::StatusCode, web};
use futures_util::StreamExt;

use crate::crypto::Vault;
use crate::signal::JobSignal;
use event::{IncomingEvent, ParseError};
use record::Recording;
use signature::{VerifyError, WebhookVerifier};

/// Bodies above this are refused with 413.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

pub struct IntakeState {
    pub db: Db,
    pub verifier: WebhookVerifier,
    pub signal: JobSignal,
    /// How long a request body may take to arrive in full.
    pub body_timeout: Duration,
    /// Seals the license keys that delivered events carry.
    pub vault: Arc<Vault>,
    /// Who is owed notices of what lifecycle events change.
    pub to: crate::store::Recipients,
}

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("the request body did not arrive within {0} s")]
    BodyTimeout(u64),
    #[error("the request body is larger than {MAX_BODY_BYTES} bytes")]
    BodyTooLarge,
    #[error("the request body could not be read: {0}")]
    BodyUnreadable(String),
    #[error(transparent)]
    Unverified(#[from] VerifyError),
    #[error(transparent)]
    Unparsable(#[from] ParseError),
    #[error("the database is unavailable; the event was not stored, please retry")]
    DatabaseUnavailable(#[source] sqlx::Error),
}

impl ResponseError for IntakeError {
    fn status_code(&self) -> StatusCode {
        match self {
            IntakeError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            IntakeError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            IntakeError::BodyUnreadable(_) => StatusCode::BAD_REQUEST,
            IntakeError::Unverified(_) => StatusCode::UNAUTHORIZED,
            IntakeError::Unparsable(ParseError::Unprocessable(_)) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            IntakeError::Unparsable(_) => StatusCode::BAD_REQUEST,
            IntakeError::DatabaseUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if matches!(
            self,
            IntakeError::BodyTimeout(_) | IntakeError::BodyTooLarge
        ) {
            // The rest of the body is not worth waiting for.
            response.force_close();
        }
        response.json(serde_json::json!({ "error": self.to_string() }))
    }
}

/// The event types keyrelay acts on keep their own metrics label; all others share `other`,
/// so a sender cannot grow the label set.
fn type_label(event_type: &str) -> &'static str {
    const KNOWN: [&str; 4] = [
        event::CREATED,
        crate::lifecycle::DELIVERED,
        crate::lifecycle::FAILED,
        crate::lifecycle::REVOKED,
    ];
    KNOWN
        .into_iter()
        .find(|known| *known == event_type)
        .unwrap_or("other")
}

fn count(event_type: &'static str, outcome: &'static str) {
    metrics::counter!("keyrelay_webhooks_total", "type" => event_type, "outcome" => outcome)
        .increment(1);
}

/// Reads the whole body within `timeout`, refusing more than `MAX_BODY_BYTES`.
async fn read_body(
    mut payload: web::Payload,
    timeout: Duration,
) -> Result<web::Bytes, IntakeError> {
    let read = async {
        let mut body = web::BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| IntakeError::BodyUnreadable(e.to_string()))?;
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(IntakeError::BodyTooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| IntakeError::BodyTimeout(timeout.as_secs()))?
}

/// The declared body length, if the request says.
fn declared_length(request: &HttpRequest) -> Option<u64> {
    request
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// How long storing a webhook may take before the answer is 503: Dodo retries, and during an
/// outage or a failover the sender hears so within a second instead of waiting on a pool.
const STORE_DEADLINE: Duration = Duration::from_millis(800);

/// `store`, or a timeout as an outage. Nothing answers 2xx unless the commit happened: a store
/// cut short rolls back, or (if its commit landed) is found a duplicate on Dodo's retry.
async fn within_deadline<T>(
    store: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    tokio::time::timeout(STORE_DEADLINE, store)
        .await
        .unwrap_or(Err(sqlx::Error::PoolTimedOut))
}

pub async fn receive_webhook(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<IntakeState>,
) -> Result<HttpResponse, IntakeError> {
    if declared_length(&request).is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        count("unknown", "invalid");
        return Err(IntakeError::BodyTooLarge);
    }
    let body = read_body(payload, state.body_timeout)
        .await
        .inspect_err(|e| {
            tracing::warn!(error = %e, "webhook body refused");
            count("unknown", "invalid");
        })?;
    let webhook = state
        .verifier
        .verify(request.headers(), body)
        .inspect_err(|e| {
            tracing::warn!(error = %e, "rejected webhook");
            count("unknown", "unverified");
        })?;
    let event = match IncomingEvent::parse(&webhook) {
        Ok(event) => event,
        Err(e) => return Err(refuse(&state, e).await),
    };
    let label = type_label(&event.event_type);
    let stored = within_deadline(record::record(
        &state.db,
        &state.vault,
        &event,
        Recording::Received,
        &state.to,
    ))
    .await
    .map_err(|e| {
        state.db.observe(&e);
            tracing::error!(webhook_id = event.webhook_id, error = %e, "could not store webhook; answering 503 so Dodo retries");
            count(label, "unavailable");
            IntakeError::DatabaseUnavailable(e)
        })?;
    if stored.job_created {
        state.signal.job_ready();
    }
    let outcome = if !stored.new_event {
        "duplicate"
    } else if stored.job_created {
        "queued"
    } else {
        "stored"
    };
    count(label, outcome);
    tracing::debug!(
        webhook_id = event.webhook_id,
        event_type = %event.event_type,
        grant_id = event.grant.as_ref().map(|g| g.id.as_str()),
        outcome,
        "webhook accepted"
    );
    Ok(HttpResponse::Ok().json(serde_json::json!({ "outcome": outcome })))
}

/// A verified webhook keyrelay cannot process: kept with its reason when it is JSON (so
/// operators see it), logged, and answered 4xx — or 503 if it could not even be kept.
async fn refuse(state: &IntakeState, e: ParseError) -> IntakeError {
    count("unknown", "invalid");
    let ParseError::Unprocessable(unprocessable) = &e else {
        tracing::warn!(error = %e, "unparsable webhook");
        return e.into();
    };
    tracing::warn!(webhook_id = %unprocessable.webhook_id, reason = %unprocessable.reason, "verified webhook cannot be processed; kept for operators");
    let (payload, key_sealed_with) = payload_keys::seal(
        &unprocessable.payload,
        &state.vault,
        &unprocessable.webhook_id,
    );
    let row = crate::store::enqueue::NewEvent {
        webhook_id: &unprocessable.webhook_id,
        event_type: &unprocessable.event_type,
        grant_id: None,
        payload: &payload,
        key_sealed_with,
    };
    let kept = crate::store::enqueue::insert_event(&state.db, row, Some(&unprocessable.reason));
    match within_deadline(kept).await {
        Ok(_) => e.into(),
        Err(db) => {
            tracing::error!(error = %db, "could not keep an unprocessable webhook; answering 503");
            IntakeError::DatabaseUnavailable(db)
        }
    }
}
