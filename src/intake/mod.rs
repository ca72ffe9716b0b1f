//! Webhook intake: `POST /webhooks/dodo`. Verify the raw body, parse leniently, record the
//! event and what it asks for (`record`), wake the workers, and answer 2xx only after the commit.

pub mod event;
pub mod record;
pub mod signature;

use actix_web::{HttpRequest, HttpResponse, ResponseError, http::StatusCode, web};
use sqlx::PgPool;

use crate::signal::JobSignal;
use event::{IncomingEvent, ParseError};
use record::Recording;
use signature::{VerifyError, WebhookVerifier};

/// Bodies above this are refused with 413.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

pub struct IntakeState {
    pub pool: PgPool,
    pub verifier: WebhookVerifier,
    pub signal: JobSignal,
}

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
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
            IntakeError::Unverified(_) => StatusCode::UNAUTHORIZED,
            IntakeError::Unparsable(_) => StatusCode::BAD_REQUEST,
            IntakeError::DatabaseUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code())
            .json(serde_json::json!({ "error": self.to_string() }))
    }
}

pub async fn receive_webhook(
    request: HttpRequest,
    body: web::Bytes,
    state: web::Data<IntakeState>,
) -> Result<HttpResponse, IntakeError> {
    let webhook = state.verifier.verify(request.headers(), body).inspect_err(|e| {
        tracing::warn!(error = %e, "rejected webhook");
        metrics::counter!("keyrelay_webhooks_total", "type" => "unknown", "outcome" => "unverified")
            .increment(1);
    })?;
    let event = IncomingEvent::parse(&webhook).inspect_err(|e| {
        tracing::warn!(webhook_id = webhook.id(), error = %e, "unparsable webhook");
        metrics::counter!("keyrelay_webhooks_total", "type" => "unknown", "outcome" => "invalid")
            .increment(1);
    })?;
    let stored = record::record(&state.pool, &event, Recording::Received)
        .await
        .map_err(|e| {
            tracing::error!(webhook_id = event.webhook_id, error = %e, "could not store webhook; answering 503 so Dodo retries");
            metrics::counter!("keyrelay_webhooks_total", "type" => event.event_type.clone(), "outcome" => "unavailable")
                .increment(1);
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
    metrics::counter!("keyrelay_webhooks_total", "type" => event.event_type.clone(), "outcome" => outcome)
        .increment(1);
    tracing::debug!(
        webhook_id = event.webhook_id,
        event_type = %event.event_type,
        grant_id = event.grant.as_ref().map(|g| g.id.as_str()),
        outcome,
        "webhook accepted"
    );
    Ok(HttpResponse::Ok().json(serde_json::json!({ "outcome": outcome })))
}
