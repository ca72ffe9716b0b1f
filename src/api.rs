//! The shop's read-only API (`/api/v1`): what a customer's account page needs to say "your
//! key is on its way" or show the masked key. Mounted only when `api.token` is set; it takes
//! that token as a bearer header, and neither token opens the other's routes. Keys are only
//! ever returned masked. `docs/openapi.json` describes every route and answer.

use crate::db::Db;
use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::crypto::Vault;
use crate::domain::{CustomerId, GrantId, JobState, KeyState};
use crate::store::read::{self, ShopGrant};
use crate::store::sealed::open_key;
use crate::store::search::{Cursor, encode_position};

pub struct ApiState {
    pub db: Db,
    pub token: SecretString,
    pub vault: std::sync::Arc<Vault>,
    /// Wrong tokens by client address.
    pub wrong_tokens: crate::guard::TokenThrottle,
    pub clients: crate::guard::ClientAddress,
}

/// Adds the `/api/v1` routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/api/v1")
            .route("/grants/{grant_id}", web::get().to(grant))
            .route(
                "/customers/{customer_id}/grants",
                web::get().to(customer_grants),
            )
            .default_service(web::to(|| async {
                ApiError::NotFound("no such route".into()).error_response()
            })),
    );
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("send the shop API token as `Authorization: Bearer <token>`")]
    Unauthorized,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("too many wrong tokens from this address; try again in {0} s")]
    TooManyAttempts(u64),
    #[error("the database is unavailable; try again")]
    Database(#[from] sqlx::Error),
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::TooManyAttempts(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Database(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Database(e) = self {
            tracing::error!(error = %e, "shop API request failed");
        }
        let mut response = HttpResponse::build(self.status_code());
        response.insert_header((header::CACHE_CONTROL, "no-store"));
        match self {
            ApiError::Unauthorized => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            ApiError::TooManyAttempts(wait) => {
                response.insert_header((header::RETRY_AFTER, wait.to_string()));
            }
            _ => {}
        }
        response.json(serde_json::json!({ "error": self.to_string() }))
    }
}

/// Checks the bearer token, in constant time. A client locked out for wrong tokens is refused
/// whatever it sends; a wrong token counts against its address and is logged.
fn authorize(request: &HttpRequest, state: &ApiState) -> Result<(), ApiError> {
    let client = state.clients.of(request);
    if let Some(wait) = state.wrong_tokens.locked_out(client) {
        return Err(ApiError::TooManyAttempts(wait.as_secs().max(1)));
    }
    match crate::guard::bearer_token(request) {
        Some(token) if crate::crypto::token_matches(token, &state.token) => Ok(()),
        _ if !crate::guard::has_authorization(request) => Err(ApiError::Unauthorized),
        _ => {
            state
                .wrong_tokens
                .wrong_token(client, "api", request.path());
            Err(ApiError::Unauthorized)
        }
    }
}

/// Where a grant is, in the words a customer's page needs.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Paid; keyrelay is getting the key to Dodo (queued, running, retrying, waiting for keys).
    OnItsWay,
    /// Dodo has the key and emails it to the customer.
    Delivered,
    /// keyrelay gave up and an operator has been asked to fix it; the key is still owed.
    Delayed,
    /// The key was delivered but does not count for now (the subscription is on hold, or the
    /// key was disabled); it may return.
    Suspended,
    /// The grant was cancelled or revoked; no key is coming, or the key no longer counts.
    Cancelled,
}

impl Status {
    fn of(state: JobState, key: Option<KeyState>) -> Status {
        if key == Some(KeyState::Suspended) {
            return Status::Suspended;
        }
        match state {
            JobState::Delivered => Status::Delivered,
            JobState::Failed => Status::Delayed,
            JobState::Cancelled => Status::Cancelled,
            JobState::Queued
            | JobState::Running
            | JobState::Retrying
            | JobState::WaitingForKeys => Status::OnItsWay,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct GrantView {
    pub grant_id: GrantId,
    pub customer_id: CustomerId,
    pub entitlement_id: crate::domain::EntitlementId,
    pub payment_id: Option<String>,
    pub status: Status,
    /// keyrelay's own state of the job (see the states in the README).
    pub state: JobState,
    /// The delivered key, masked (e.g. `PRO-****-****-DDDD`); null until it is delivered.
    pub masked_key: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

impl GrantView {
    fn new(row: ShopGrant, vault: &Vault) -> GrantView {
        let masked_key = row
            .key_id
            .zip(row.key_sealed.as_deref())
            .and_then(|(id, sealed)| match open_key(vault, id, sealed) {
                Ok(key) => Some(key.masked()),
                Err(e) => {
                    tracing::warn!(key_id = id, error = %e, "a delivered key cannot be read for the shop API");
                    None
                }
            });
        GrantView {
            status: Status::of(row.state, row.key_state),
            delivered_at: (row.state == JobState::Delivered)
                .then_some(row.finished_at)
                .flatten(),
            grant_id: row.grant_id,
            customer_id: row.customer_id,
            entitlement_id: row.entitlement_id,
            payment_id: row.payment_id,
            state: row.state,
            masked_key,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

fn json<T: Serialize>(value: &T) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(value)
}

async fn grant(
    request: HttpRequest,
    state: web::Data<ApiState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    authorize(&request, &state)?;
    let grant_id = GrantId::parse(&path).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let row = read::shop_grant(&state.db, &grant_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("keyrelay has no grant {grant_id}")))?;
    Ok(json(&GrantView::new(row, &state.vault)))
}

#[derive(Deserialize)]
struct PageQuery {
    limit: Option<String>,
    after: Option<String>,
}

#[derive(Serialize)]
struct GrantList {
    customer_id: CustomerId,
    grants: Vec<GrantView>,
    /// Pass as `after` for the next page; null on the last page.
    next: Option<String>,
}

async fn customer_grants(
    request: HttpRequest,
    state: web::Data<ApiState>,
    path: web::Path<String>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    authorize(&request, &state)?;
    let customer_id = CustomerId::parse(&path).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let limit = match query.limit.as_deref() {
        None => 20,
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| ApiError::BadRequest("limit must be a number from 1 to 100".into()))?,
    };
    let after = match query.after.as_deref() {
        None => None,
        Some(raw) => Some(Cursor::decode(raw).ok_or_else(|| {
            ApiError::BadRequest("after must be a `next` value from an earlier page".into())
        })?),
    };
    let rows = read::customer_grants(
        &state.db,
        &customer_id,
        after.as_ref().map(|c| (c.created_at, &c.grant_id)),
        limit,
    )
    .await?;
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last())
        .flatten()
        .map(|last| encode_position(last.created_at, last.grant_id.as_str()));
    let grants = rows
        .into_iter()
        .map(|row| GrantView::new(row, &state.vault))
        .collect();
    Ok(json(&GrantList {
        customer_id,
        grants,
        next,
    }))
}
