//! The admin API and on-call dashboard at `/admin`, mounted only when `admin.token` is set.
//! Scripts send the token as a bearer header; people sign in once on `/admin/login` and get an
//! HttpOnly, SameSite=Strict session cookie. Page actions carry a CSRF token.

mod auth;
mod chart;
mod extract;
mod figures;
mod pages;
mod views;

use crate::db::Db;
use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;

use crate::domain::{Actor, GrantId, JobState};
use crate::ops::jobs::{self, ActionResult};
pub use auth::{AdminAuth, Credential};
use extract::redirect;
pub use extract::{AdminError, Bearer, SignedIn};

pub struct AdminState {
    pub db: Db,
    pub auth: AdminAuth,
    /// Wrong tokens (sign-in form and bearer) by client address.
    pub wrong_tokens: crate::guard::TokenThrottle,
    pub clients: crate::guard::ClientAddress,
    /// Opens keys to show them masked.
    pub vault: std::sync::Arc<crate::crypto::Vault>,
    /// The overview's slow figures, shared by every viewer.
    pub figures: figures::Figures,
    /// Who is owed notices of what a replay changes.
    pub to: crate::store::Recipients,
}

/// Adds the `/admin` routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/admin")
            .route("", web::get().to(views::overview))
            .route("/", web::get().to(views::overview))
            .route("/login", web::get().to(login_form))
            .route("/login", web::post().to(login))
            .route("/logout", web::post().to(logout))
            .route("/jobs", web::get().to(views::jobs_page))
            .route("/jobs/bulk", web::get().to(views::bulk_confirm))
            .route("/jobs/bulk", web::post().to(views::bulk_run))
            .route("/attention", web::get().to(views::attention))
            .route("/events", web::get().to(views::events_page))
            .route(
                "/events/{webhook_id}/replay",
                web::post().to(views::replay_event),
            )
            .route("/outbox", web::get().to(views::outbox_page))
            .route("/outbox/{id}/retry", web::post().to(views::retry_notice))
            .route("/jobs/{grant_id}", web::get().to(job_page))
            .route("/jobs/{grant_id}/{action}", web::post().to(job_action_form))
            .route("/api/stats", web::get().to(api_stats))
            .route("/api/jobs", web::get().to(api_jobs))
            .route("/api/jobs/{grant_id}", web::get().to(api_job))
            .route(
                "/api/jobs/{grant_id}/{action}",
                web::post().to(api_job_action),
            ),
    );
}

fn html(status: StatusCode, body: String) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(body)
}

/// `?done=` on a page names one of a few fixed messages (with `n`, a number, for bulk
/// actions); anything else shows nothing, so no link can make the dashboard say what its
/// author wants.
#[derive(Deserialize)]
struct Flash {
    done: Option<String>,
    /// Text, not a number: query strings with flattened fields arrive as strings.
    n: Option<String>,
}

impl Flash {
    fn message(&self) -> Option<String> {
        let n: u64 = self.n.as_deref().and_then(|n| n.parse().ok()).unwrap_or(0);
        Some(match self.done.as_deref()? {
            "bulk_retry" => return Some(format!("bulk retry done: {n} job(s) queued again")),
            "bulk_cancel" => return Some(format!("bulk cancel done: {n} job(s) cancelled")),
            "bulk_grew" => {
                return Some(format!(
                    "nothing changed: {n} jobs match now, more than you confirmed; check the count below and confirm again"
                ));
            }
            "replayed" => "replay done: the event ran through intake again",
            "event_not_found" => "there is no such event",
            "replay_failed" => "the event could not be replayed; the log says why",
            "retried" => "retry done: the job is queued again",
            "cancelled" => "cancel done: the job is cancelled and its key released",
            "cancelled_key_kept" => {
                "cancel done: the job is cancelled; its key stays reserved because Dodo may hold it"
            }
            "wrong_state" => "that is not possible in the job's current state",
            "notice_retried" => "the notice is queued to be sent again",
            "notice_not_failed" => "that notice is not parked; nothing changed",
            "not_found" => "there is no such job",
            "unknown_action" => "unknown action",
            _ => return None,
        }
        .to_string())
    }
}

/// What an admin action did.
enum Done {
    Retried,
    Cancelled,
    CancelledKeyKept,
}

impl Done {
    fn code(&self) -> &'static str {
        match self {
            Done::Retried => "retried",
            Done::Cancelled => "cancelled",
            Done::CancelledKeyKept => "cancelled_key_kept",
        }
    }
}

/// The CSRF token a signed-in person's forms carry (none for bearer requests).
fn csrf(state: &AdminState, SignedIn(credential): &SignedIn) -> String {
    match credential {
        Credential::Session(s) => state.auth.csrf_for(s),
        Credential::Bearer => String::new(),
    }
}

/// Refuses a form whose CSRF token does not belong to the signed-in session.
fn check_csrf(
    state: &AdminState,
    SignedIn(credential): &SignedIn,
    token: &str,
) -> Result<(), AdminError> {
    match credential {
        Credential::Session(s) if !state.auth.csrf_valid(s, token) => Err(AdminError::Csrf),
        _ => Ok(()),
    }
}

async fn login_form() -> HttpResponse {
    html(StatusCode::OK, pages::login(None))
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(
    request: HttpRequest,
    state: web::Data<AdminState>,
    form: web::Form<LoginForm>,
) -> Result<HttpResponse, AdminError> {
    let peer = state.clients.of(&request);
    if let Some(wait) = state.wrong_tokens.locked_out(peer) {
        tracing::warn!(%peer, "admin sign-in refused: too many wrong tokens from this address");
        return Err(AdminError::TooManyAttempts(wait.as_secs().max(1)));
    }
    if !state.auth.token_matches(form.token.trim()) {
        if state.wrong_tokens.failed(peer) {
            tracing::warn!(%peer, "too many wrong tokens from this address: refused for a minute");
        }
        tracing::warn!(%peer, "admin sign-in with a wrong token");
        return Ok(html(
            StatusCode::UNAUTHORIZED,
            pages::login(Some("That is not the admin token.")),
        ));
    }
    tracing::info!(%peer, "admin signed in");
    let cookie = state.auth.session_cookie(state.auth.new_session());
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/admin"))
        .cookie(cookie)
        .finish())
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    request: HttpRequest,
    state: web::Data<AdminState>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, AdminError> {
    if let Some(credential) = state.auth.credential(&request) {
        check_csrf(&state, &SignedIn(credential.clone()), &form.csrf)?;
        // The cookie is removed below; recording the sign-out ends copies of it too.
        if let Credential::Session(session) = &credential
            && let Some((mac, expires)) = state.auth.session_identity(session)
        {
            crate::store::admin::sign_out(&state.db, &mac, expires).await?;
        }
    }
    let mut gone = state.auth.session_cookie(String::new());
    gone.make_removal();
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/admin/login"))
        .cookie(gone)
        .finish())
}

async fn job_page(
    who: SignedIn,
    state: web::Data<AdminState>,
    path: web::Path<String>,
    flash: web::Query<Flash>,
) -> Result<HttpResponse, AdminError> {
    let raw = path.into_inner();
    let detail = match GrantId::parse(&raw) {
        Ok(grant_id) => jobs::show_job(&state.db, Some(&state.vault), &grant_id, false).await?,
        Err(_) => None,
    };
    Ok(match detail {
        Some(detail) => html(
            StatusCode::OK,
            pages::job(&detail, &csrf(&state, &who), flash.message().as_deref()),
        ),
        None => html(StatusCode::NOT_FOUND, pages::not_found(&raw)),
    })
}

/// Runs `action` on one job; `Ok` with what happened, or `AdminError` saying why not.
async fn run_action(state: &AdminState, grant_id: &str, action: &str) -> Result<Done, AdminError> {
    let grant_id = GrantId::parse(grant_id)
        .map_err(|e| AdminError::NotFound(format!("no job for grant {grant_id}: {e}")))?;
    let ids = std::slice::from_ref(&grant_id);
    let results = match action {
        "retry" => jobs::retry_jobs(&state.db, ids, Actor::Admin).await?,
        "cancel" => jobs::cancel_jobs(&state.db, ids, Actor::Admin).await?,
        other => return Err(AdminError::BadRequest(format!("unknown action `{other}`"))),
    };
    match &results[0].1 {
        ActionResult::Done if action == "retry" => Ok(Done::Retried),
        ActionResult::Done => Ok(Done::Cancelled),
        ActionResult::DoneKeyKept => Ok(Done::CancelledKeyKept),
        ActionResult::NotFound => Err(AdminError::NotFound(format!("no job for grant {grant_id}"))),
        ActionResult::WrongState { state } => Err(AdminError::Conflict(format!(
            "cannot {action} {grant_id} while it is {state}"
        ))),
    }
}

async fn job_action_form(
    who: SignedIn,
    state: web::Data<AdminState>,
    path: web::Path<(String, String)>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, AdminError> {
    check_csrf(&state, &who, &form.csrf)?;
    let (grant_id, action) = path.into_inner();
    let code = match run_action(&state, &grant_id, &action).await {
        Ok(done) => done.code(),
        Err(e @ AdminError::Database(_)) => return Err(e),
        Err(AdminError::NotFound(_)) => "not_found",
        Err(AdminError::BadRequest(_)) => "unknown_action",
        Err(_) => "wrong_state",
    };
    Ok(redirect(&format!(
        "/admin/jobs/{}?done={code}",
        url_encode(&grant_id)
    )))
}

fn url_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn api_stats(_: Bearer, state: web::Data<AdminState>) -> Result<HttpResponse, AdminError> {
    Ok(HttpResponse::Ok().json(crate::ops::stats::read(&state.db).await?))
}

#[derive(Deserialize)]
struct JobsQuery {
    state: Option<String>,
    limit: Option<i64>,
}

async fn api_jobs(
    _: Bearer,
    state: web::Data<AdminState>,
    query: web::Query<JobsQuery>,
) -> Result<HttpResponse, AdminError> {
    let job_state = match query.state.as_deref() {
        Some(raw) => Some(
            JobState::parse(raw).ok_or_else(|| AdminError::BadRequest("unknown state".into()))?,
        ),
        None => None,
    };
    let limit = query.limit.unwrap_or(50).clamp(1, 1000);
    let filter = crate::store::search::JobFilter {
        state: job_state,
        ..Default::default()
    };
    Ok(HttpResponse::Ok()
        .json(crate::store::search::find_jobs(&state.db, &filter, None, limit).await?))
}

async fn api_job(
    _: Bearer,
    state: web::Data<AdminState>,
    path: web::Path<String>,
) -> Result<HttpResponse, AdminError> {
    let no_such_job = || AdminError::NotFound("no such job".into());
    let grant_id = GrantId::parse(&path).map_err(|_| no_such_job())?;
    let detail = jobs::show_job(&state.db, Some(&state.vault), &grant_id, false).await?;
    Ok(HttpResponse::Ok().json(detail.ok_or_else(no_such_job)?))
}

async fn api_job_action(
    _: Bearer,
    state: web::Data<AdminState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, AdminError> {
    let (grant_id, action) = path.into_inner();
    let done = run_action(&state, &grant_id, &action).await?;
    let message = Flash {
        done: Some(done.code().into()),
        n: None,
    }
    .message()
    .unwrap_or_default();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "result": message, "done": done.code() })))
}
