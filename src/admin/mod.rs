//! The admin API and on-call dashboard at `/admin`, mounted only when `admin.token` is set.
//! Scripts send the token as a bearer header; people sign in once on `/admin/login` and get an
//! HttpOnly, SameSite=Strict session cookie. Page actions carry a CSRF token.

mod auth;
mod pages;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use sqlx::PgPool;

use crate::audit::Actor;
use crate::domain::JobState;
use crate::jobs::{self, ActionResult};
pub use auth::{AdminAuth, Credential};

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

fn html(status: actix_web::http::StatusCode, body: String) -> HttpResponse {
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

fn redirect(to: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, to))
        .finish()
}

fn api_error(status: actix_web::http::StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({ "error": message }))
}

fn unauthorized() -> HttpResponse {
    api_error(
        actix_web::http::StatusCode::UNAUTHORIZED,
        "send the admin token as `Authorization: Bearer <token>`",
    )
}

fn internal(e: impl std::fmt::Display) -> HttpResponse {
    tracing::error!(error = %e, "admin request failed");
    api_error(
        actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
        "the database is unavailable; try again",
    )
}

/// The session of a signed-in person, or a redirect to the login page.
fn session(state: &AdminState, request: &HttpRequest) -> Result<Credential, HttpResponse> {
    state
        .auth
        .credential(request)
        .ok_or_else(|| redirect("/admin/login"))
}

#[derive(Deserialize)]
struct Flash {
    done: Option<String>,
}

async fn dashboard(
    request: HttpRequest,
    state: web::Data<AdminState>,
    flash: web::Query<Flash>,
) -> HttpResponse {
    let credential = match session(&state, &request) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let data = async {
        let stats = crate::stats::read(&state.pool).await?;
        let mut attention = jobs::list_jobs(&state.pool, Some(JobState::Failed), 50).await?;
        attention.extend(jobs::list_jobs(&state.pool, Some(JobState::Retrying), 50).await?);
        let pools = crate::pool::list_pools(&state.pool).await?;
        Ok::<_, sqlx::Error>((stats, attention, pools))
    };
    match data.await {
        Ok((stats, attention, pools)) => {
            let csrf = csrf(&state, &credential);
            let page = pages::dashboard(&stats, &attention, &pools, &csrf, flash.done.as_deref());
            html(actix_web::http::StatusCode::OK, page)
        }
        Err(e) => internal(e),
    }
}

fn csrf(state: &AdminState, credential: &Credential) -> String {
    match credential {
        Credential::Session(s) => state.auth.csrf_for(s),
        Credential::Bearer => String::new(),
    }
}

async fn login_form() -> HttpResponse {
    html(actix_web::http::StatusCode::OK, pages::login(None))
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(state: web::Data<AdminState>, form: web::Form<LoginForm>) -> HttpResponse {
    if !state.auth.token_matches(form.token.trim()) {
        tracing::warn!("admin sign-in with a wrong token");
        return html(
            actix_web::http::StatusCode::UNAUTHORIZED,
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
) -> HttpResponse {
    if let Some(Credential::Session(s)) = state.auth.credential(&request)
        && !state.auth.csrf_valid(&s, &form.csrf)
    {
        return api_error(
            actix_web::http::StatusCode::FORBIDDEN,
            "missing or wrong CSRF token",
        );
    }
    let mut gone = state.auth.session_cookie(String::new());
    gone.make_removal();
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/admin/login"))
        .cookie(gone)
        .finish()
}

async fn job_page(
    request: HttpRequest,
    state: web::Data<AdminState>,
    path: web::Path<String>,
    flash: web::Query<Flash>,
) -> HttpResponse {
    let credential = match session(&state, &request) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let grant_id = path.into_inner();
    match jobs::show_job(&state.pool, &grant_id, false).await {
        Ok(Some(detail)) => html(
            actix_web::http::StatusCode::OK,
            pages::job(&detail, &csrf(&state, &credential), flash.done.as_deref()),
        ),
        Ok(None) => html(
            actix_web::http::StatusCode::NOT_FOUND,
            pages::not_found(&grant_id),
        ),
        Err(e) => internal(e),
    }
}

async fn run_action(
    state: &AdminState,
    grant_id: &str,
    action: &str,
) -> Result<Result<String, String>, sqlx::Error> {
    let ids = [grant_id.to_string()];
    let results = match action {
        "retry" => jobs::retry_jobs(&state.pool, &ids, Actor::Admin).await?,
        "cancel" => jobs::cancel_jobs(&state.pool, &ids, Actor::Admin).await?,
        other => return Ok(Err(format!("unknown action `{other}`"))),
    };
    Ok(match &results[0].1 {
        ActionResult::Done => Ok(format!("{grant_id}: {action} done")),
        ActionResult::DoneKeyKept => Ok(format!(
            "{grant_id}: cancelled; its key stays reserved because Dodo may hold it"
        )),
        ActionResult::NotFound => Err(format!("no job for grant {grant_id}")),
        ActionResult::WrongState { state } => {
            Err(format!("cannot {action} {grant_id} while it is {state}"))
        }
    })
}

async fn job_action_form(
    request: HttpRequest,
    state: web::Data<AdminState>,
    path: web::Path<(String, String)>,
    form: web::Form<CsrfForm>,
) -> HttpResponse {
    let credential = match session(&state, &request) {
        Ok(c) => c,
        Err(r) => return r,
    };
    if let Credential::Session(s) = &credential
        && !state.auth.csrf_valid(s, &form.csrf)
    {
        return api_error(
            actix_web::http::StatusCode::FORBIDDEN,
            "missing or wrong CSRF token; reload the page",
        );
    }
    let (grant_id, action) = path.into_inner();
    match run_action(&state, &grant_id, &action).await {
        Ok(Ok(message)) | Ok(Err(message)) => {
            let to = format!(
                "/admin/jobs/{}?done={}",
                url_encode(&grant_id),
                url_encode(&message)
            );
            redirect(&to)
        }
        Err(e) => internal(e),
    }
}

fn url_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn bearer_only(state: &AdminState, request: &HttpRequest) -> Result<(), HttpResponse> {
    match state.auth.credential(request) {
        Some(Credential::Bearer) => Ok(()),
        _ => Err(unauthorized()),
    }
}

async fn api_stats(request: HttpRequest, state: web::Data<AdminState>) -> HttpResponse {
    if let Err(r) = bearer_only(&state, &request) {
        return r;
    }
    match crate::stats::read(&state.pool).await {
        Ok(stats) => HttpResponse::Ok().json(stats),
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
struct JobsQuery {
    state: Option<String>,
    limit: Option<i64>,
}

async fn api_jobs(
    request: HttpRequest,
    state: web::Data<AdminState>,
    query: web::Query<JobsQuery>,
) -> HttpResponse {
    if let Err(r) = bearer_only(&state, &request) {
        return r;
    }
    let job_state = match query.state.as_deref().map(JobState::parse) {
        Some(None) => return api_error(actix_web::http::StatusCode::BAD_REQUEST, "unknown state"),
        Some(s) => s,
        None => None,
    };
    match jobs::list_jobs(
        &state.pool,
        job_state,
        query.limit.unwrap_or(50).clamp(1, 1000),
    )
    .await
    {
        Ok(list) => HttpResponse::Ok().json(list),
        Err(e) => internal(e),
    }
}

async fn api_job(
    request: HttpRequest,
    state: web::Data<AdminState>,
    path: web::Path<String>,
) -> HttpResponse {
    if let Err(r) = bearer_only(&state, &request) {
        return r;
    }
    match jobs::show_job(&state.pool, &path, false).await {
        Ok(Some(detail)) => HttpResponse::Ok().json(detail),
        Ok(None) => api_error(actix_web::http::StatusCode::NOT_FOUND, "no such job"),
        Err(e) => internal(e),
    }
}

async fn api_job_action(
    request: HttpRequest,
    state: web::Data<AdminState>,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    if let Err(r) = bearer_only(&state, &request) {
        return r;
    }
    let (grant_id, action) = path.into_inner();
    match run_action(&state, &grant_id, &action).await {
        Ok(Ok(message)) => HttpResponse::Ok().json(serde_json::json!({ "result": message })),
        Ok(Err(message)) => api_error(actix_web::http::StatusCode::CONFLICT, &message),
        Err(e) => internal(e),
    }
}
