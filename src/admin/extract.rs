//! What admin handlers take and give: the credential extractors (a signed-in person or a script
//! with the bearer token) and the one error type every handler returns.

use std::future::{Ready, ready};

use futures_util::future::LocalBoxFuture;

use actix_web::dev::Payload;
use actix_web::http::{StatusCode, header};
use actix_web::{FromRequest, HttpRequest, HttpResponse, ResponseError, web};

use super::AdminState;
use super::auth::Credential;

/// A person signed in with a session cookie, or a script with the bearer token. Pages take it;
/// without it the browser is sent to the sign-in page.
pub struct SignedIn(pub Credential);

/// A script with the bearer token. The JSON API takes it; sessions do not count.
pub struct Bearer;

fn credential(request: &HttpRequest) -> Option<Credential> {
    request
        .app_data::<web::Data<AdminState>>()
        .and_then(|state| state.auth.credential(request))
}

impl FromRequest for SignedIn {
    type Error = AdminError;
    type Future = LocalBoxFuture<'static, Result<SignedIn, AdminError>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = request.app_data::<web::Data<AdminState>>().cloned();
        let credential = credential(request);
        Box::pin(async move {
            let (Some(state), Some(credential)) = (state, credential) else {
                return Err(AdminError::SignInRequired);
            };
            if let Credential::Session(session) = &credential {
                let (mac, _) = state
                    .auth
                    .session_identity(session)
                    .ok_or(AdminError::SignInRequired)?;
                if crate::store::admin::is_signed_out(&state.pool, &mac).await? {
                    return Err(AdminError::SignInRequired);
                }
            }
            Ok(SignedIn(credential))
        })
    }
}

impl FromRequest for Bearer {
    type Error = AdminError;
    type Future = Ready<Result<Bearer, AdminError>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(match credential(request) {
            Some(Credential::Bearer) => Ok(Bearer),
            _ => Err(AdminError::Unauthorized),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("sign in at /admin/login")]
    SignInRequired,
    #[error("send the admin token as `Authorization: Bearer <token>`")]
    Unauthorized,
    #[error("missing or wrong CSRF token; reload the page")]
    Csrf,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("too many wrong tokens from this address; try again in {0} s")]
    TooManyAttempts(u64),
    #[error("the database is unavailable; try again")]
    Database(#[from] sqlx::Error),
}

impl ResponseError for AdminError {
    fn status_code(&self) -> StatusCode {
        match self {
            AdminError::SignInRequired => StatusCode::SEE_OTHER,
            AdminError::Unauthorized => StatusCode::UNAUTHORIZED,
            AdminError::Csrf => StatusCode::FORBIDDEN,
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::NotFound(_) => StatusCode::NOT_FOUND,
            AdminError::Conflict(_) => StatusCode::CONFLICT,
            AdminError::TooManyAttempts(_) => StatusCode::TOO_MANY_REQUESTS,
            AdminError::Database(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            AdminError::SignInRequired => redirect("/admin/login"),
            AdminError::Database(e) => {
                tracing::error!(error = %e, "admin request failed");
                json_error(self)
            }
            _ => json_error(self),
        }
    }
}

fn json_error(e: &AdminError) -> HttpResponse {
    HttpResponse::build(e.status_code()).json(serde_json::json!({ "error": e.to_string() }))
}

pub fn redirect(to: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, to))
        .finish()
}
