//! The outbox: what keyrelay owes key vendors and the shop, parked notices first, and sending
//! a parked notice again.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde::Deserialize;

use super::events::CsrfOnly;
use crate::admin::extract::redirect;
use crate::admin::{AdminError, AdminState, Flash, SignedIn, check_csrf, csrf, html, pages};
use crate::store::outbox;

use super::PAGE;

#[derive(Deserialize)]
pub struct OutboxQuery {
    #[serde(flatten)]
    flash: Flash,
}

pub async fn outbox_page(
    who: SignedIn,
    state: web::Data<AdminState>,
    query: web::Query<OutboxQuery>,
) -> Result<HttpResponse, AdminError> {
    let parked = outbox::list(&state.db, Some("failed"), PAGE).await?;
    let pending = outbox::list(&state.db, Some("pending"), PAGE).await?;
    let sent = outbox::list(&state.db, Some("sent"), 20).await?;
    let backlog = outbox::backlog(&state.db).await?;
    let lists = pages::OutboxLists {
        parked: &parked,
        pending: &pending,
        sent: &sent,
        backlog,
    };
    Ok(html(
        StatusCode::OK,
        pages::outbox(
            &lists,
            &csrf(&state, &who),
            query.flash.message().as_deref(),
        ),
    ))
}

pub async fn retry_notice(
    who: SignedIn,
    state: web::Data<AdminState>,
    path: web::Path<i64>,
    form: web::Form<CsrfOnly>,
) -> Result<HttpResponse, AdminError> {
    check_csrf(&state, &who, &form.csrf)?;
    let id = path.into_inner();
    let retried = outbox::retry(&state.db, &[id]).await?;
    let code = match retried.is_empty() {
        true => "notice_not_failed",
        false => {
            tracing::info!(notice = id, "notice queued again from the dashboard");
            "notice_retried"
        }
    };
    Ok(redirect(&format!("/admin/outbox?done={code}")))
}
