//! Events, a page at a time, and replaying one.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde::Deserialize;

use crate::admin::extract::redirect;
use crate::admin::{
    AdminError, AdminState, Flash, SignedIn, check_csrf, csrf, html, pages, url_encode,
};
use crate::domain::Actor;
use crate::store::read;
use crate::store::search::{decode_position, encode_position};

use super::PAGE;

#[derive(Deserialize)]
pub struct EventsQuery {
    before: Option<String>,
    #[serde(flatten)]
    flash: Flash,
}

pub async fn events_page(
    who: SignedIn,
    state: web::Data<AdminState>,
    query: web::Query<EventsQuery>,
) -> Result<HttpResponse, AdminError> {
    let before = query
        .before
        .as_deref()
        .and_then(decode_position)
        .filter(|(_, id)| !id.chars().any(crate::domain::unsafe_in_id))
        .map(|(at, id)| (at, id.to_string()));
    let events = read::events_before(&state.db, before, PAGE).await?;
    let next = (events.len() as i64 == PAGE)
        .then(|| events.last())
        .flatten()
        .map(|e| {
            format!(
                "/admin/events?before={}",
                url_encode(&encode_position(e.received_at, &e.webhook_id))
            )
        });
    Ok(html(
        StatusCode::OK,
        pages::events(
            &events,
            next,
            &csrf(&state, &who),
            query.flash.message().as_deref(),
        ),
    ))
}

#[derive(Deserialize)]
pub struct CsrfOnly {
    #[serde(default)]
    pub(super) csrf: String,
}

pub async fn replay_event(
    who: SignedIn,
    state: web::Data<AdminState>,
    path: web::Path<String>,
    form: web::Form<CsrfOnly>,
) -> Result<HttpResponse, AdminError> {
    check_csrf(&state, &who, &form.csrf)?;
    let webhook_id = path.into_inner();
    let code = match crate::ops::events::replay(
        &state.db,
        &state.vault,
        &webhook_id,
        Actor::Admin,
        &state.to,
    )
    .await
    {
        Ok(outcome) => {
            tracing::info!(webhook_id = %webhook_id.escape_debug(), ?outcome, "event replayed from the dashboard");
            "replayed"
        }
        Err(crate::ops::events::ReplayError::Database(e)) => return Err(e.into()),
        Err(crate::ops::events::ReplayError::NotFound(_)) => "event_not_found",
        Err(e) => {
            tracing::warn!(webhook_id = %webhook_id.escape_debug(), error = %e, "replay from the dashboard failed");
            "replay_failed"
        }
    };
    Ok(redirect(&format!("/admin/events?done={code}")))
}
