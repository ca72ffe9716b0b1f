//! The admin API and on-call dashboard at `/admin`, mounted only when `admin.token` is set.
//! Scripts send the token as a bearer header; people sign in once on `/admin/login` and get an
//! HttpOnly, SameSite=Strict session cookie. Page actions carry a CSRF token.

mod auth;
mod extract;
mod pages;

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use sqlx::PgPool;

use crate::domain::{Actor, GrantId, JobState};
use crate::ops::jobs::{self, ActionResult};
pub use auth::{AdminAuth, Credential};
use extract::redirect;
pub use extract::{AdminError, Bearer, SignedIn};

pub struct AdminState {
    pub pool: PgPool,
    pub auth: AdminAuth,
}

/// Adds the `/admin` routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/admin")
            .route("", web::get().to(dashboard))
            .route("/", web::get().to(dashboard))
            .route("/login", web::get().to(login_form))
            .route("/login", web::post().to(login))
            .route("/logout", web::post().to(logout))
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
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        ))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(body)
}

#[derive(Deserialize)]
struct Flash {
    done: Option<String>,
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

async fn dashboard(
    who: SignedIn,
    state: web::Data<AdminState>,
    flash: web::Query<Flash>,
) -> Result<HttpResponse, AdminError> {
    let stats = crate::ops::stats::read(&state.pool).await?;
    let mut attention = jobs::list_jobs(&state.pool, Some(JobState::Failed), 50).await?;
    attention.extend(jobs::list_jobs(&state.pool, Some(JobState::Retrying), 50).await?);
    let pools = crate::pool::list_pools(&state.pool).await?;
    let page = pages::dashboard(
        &stats,
        &attention,
        &pools,
        &csrf(&state, &who),
        flash.done.as_deref(),
    );
    Ok(html(StatusCode::OK, page))
}

async fn login_form() -> HttpResponse {
    html(StatusCode::OK, pages::login(None))
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(state: web::Data<AdminState>, form: web::Form<LoginForm>) -> HttpResponse {
    if !state.auth.token_matches(form.token.trim()) {
        tracing::warn!("admin sign-in with a wrong token");
        return html(
            StatusCode::UNAUTHORIZED,
            pages::login(Some("That is not the admin token.")),
        );
    }
    let cookie = state.auth.session_cookie(state.auth.new_session());
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/admin"))
        .cookie(cookie)
        .finish()
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
        check_csrf(&state, &SignedIn(credential), &form.csrf)?;
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
        Ok(grant_id) => jobs::show_job(&state.pool, &grant_id, false).await?,
        Err(_) => None,
    };
    Ok(match detail {
        Some(detail) => html(
            StatusCode::OK,
            pages::job(&detail, &csrf(&state, &who), flash.done.as_deref()),
        ),
        None => html(StatusCode::NOT_FOUND, pages::not_found(&raw)),
    })
}

/// Runs `action` on one job; `Ok` with what happened, or `AdminError` saying why not.
async fn run_action(
    state: &AdminState,
    grant_id: &str,
    action: &str,
) -> Result<String, AdminError> {
    let grant_id = GrantId::parse(grant_id)
        .map_err(|e| AdminError::NotFound(format!("no job for grant {grant_id}: {e}")))?;
    let ids = std::slice::from_ref(&grant_id);
    let results = match action {
        "retry" => jobs::retry_jobs(&state.pool, ids, Actor::Admin).await?,
        "cancel" => jobs::cancel_jobs(&state.pool, ids, Actor::Admin).await?,
        other => return Err(AdminError::BadRequest(format!("unknown action `{other}`"))),
    };
    match &results[0].1 {
        ActionResult::Done => Ok(format!("{grant_id}: {action} done")),
        ActionResult::DoneKeyKept => Ok(format!(
            "{grant_id}: cancelled; its key stays reserved because Dodo may hold it"
        )),
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
    let message = match run_action(&state, &grant_id, &action).await {
        Ok(message) => message,
        Err(e @ AdminError::Database(_)) => return Err(e),
        Err(refused) => refused.to_string(),
    };
    Ok(redirect(&format!(
        "/admin/jobs/{}?done={}",
        url_encode(&grant_id),
        url_encode(&message)
    )))
}

fn url_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn api_stats(_: Bearer, state: web::Data<AdminState>) -> Result<HttpResponse, AdminError> {
    Ok(HttpResponse::Ok().json(crate::ops::stats::read(&state.pool).await?))
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
    Ok(HttpResponse::Ok().json(jobs::list_jobs(&state.pool, job_state, limit).await?))
}

async fn api_job(
    _: Bearer,
    state: web::Data<AdminState>,
    path: web::Path<String>,
) -> Result<HttpResponse, AdminError> {
    let no_such_job = || AdminError::NotFound("no such job".into());
    let grant_id = GrantId::parse(&path).map_err(|_| no_such_job())?;
    let detail = jobs::show_job(&state.pool, &grant_id, false).await?;
    Ok(HttpResponse::Ok().json(detail.ok_or_else(no_such_job)?))
}

async fn api_job_action(
    _: Bearer,
    state: web::Data<AdminState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, AdminError> {
    let (grant_id, action) = path.into_inner();
    let message = run_action(&state, &grant_id, &action).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "result": message })))
}
