//! What admin handlers take and give: the credential extractors (a signed-in person or a script
//! with the bearer token) and the one error type every handler returns.

use std::future::{Ready, ready};

use futures_util::future::LocalBoxFuture;

use actix_web::dev::Payload;
use actix_web::http::{StatusCode, header};
use actix_web::{FromRequest, HttpRequest, HttpResponse, ResponseError, web};

use super::AdminState;
use super::auth::{Credential, Presented};

/// A person signed in with a session cookie, or a script with the bearer token. Pages take it;
/// without it the browser is sent to the sign-in page.
pub struct SignedIn(pub Credential);

/// A script with the bearer token. The JSON API takes it; sessions do not count.
pub struct Bearer;

/// The request's credential. A client locked out for wrong tokens is refused whatever it
/// sends; a wrong bearer token counts against its address and is logged.
fn credential(request: &HttpRequest) -> Result<Option<Credential>, AdminError> {
    let Some(state) = request.app_data::<web::Data<AdminState>>() else {
        return Ok(None);
    };
    let client = state.clients.of(request);
    if let Some(wait) = state.wrong_tokens.locked_out(client) {
        return Err(AdminError::TooManyAttempts(wait.as_secs().max(1)));
    }
    match state.auth.presented(request) {
        Presented::Valid(credential) => Ok(Some(credential)),
        Presented::Nothing => Ok(None),
        Presented::WrongToken => {
            state
                .wrong_tokens
                .wrong_token(client, "admin", request.path());
            Err(AdminError::Unauthorized)
        }
    }
}

impl FromRequest for SignedIn {
    type Error = AdminError;
    type Future = LocalBoxFuture<'static, Result<SignedIn, AdminError>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = request.app_data::<web::Data<AdminState>>().cloned();
        let credential = credential(request);
        Box::pin(async move {
            let (Some(state), Some(credential)) = (state, credential?) else {
                return Err(AdminError::SignInRequired);
            };
            if let Credential::Session(session) = &credential {
                let (mac, _) = state
                    .auth
                    .session_identity(session)
                    .ok_or(AdminError::SignInRequired)?;
                if crate::store::admin::is_signed_out(&state.db, &mac).await? {
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
            Ok(Some(Credential::Bearer)) => Ok(Bearer),
            Ok(_) => Err(AdminError::Unauthorized),
            Err(e) => Err(e),
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
            AdminError::TooManyAttempts(wait) => {
                let mut response = json_error(self);
                if let Ok(value) = header::HeaderValue::from_str(&wait.to_string()) {
                    response.headers_mut().insert(header::RETRY_AFTER, value);
                }
                response
            }
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
