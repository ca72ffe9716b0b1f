//! The job list: search and filters a page at a time, and bulk retry or cancel of what a
//! filter matches, confirmed first.

use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde::Deserialize;

use crate::admin::extract::redirect;
use crate::admin::{
    AdminError, AdminState, Flash, SignedIn, check_csrf, csrf, html, pages, url_encode,
};
use crate::domain::{Actor, JobState};
use crate::ops::jobs::{self, BulkAction};
use crate::store::search::{self, Cursor, JobFilter, parse_when};

use super::PAGE;

/// The job filter as it arrives in a query string or form.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct FilterQuery {
    q: Option<String>,
    state: Option<String>,
    pool: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

impl FilterQuery {
    fn value(v: &Option<String>) -> String {
        v.as_deref().map(str::trim).unwrap_or_default().to_string()
    }

    fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("q", Self::value(&self.q)),
            ("state", Self::value(&self.state)),
            ("pool", Self::value(&self.pool)),
            ("since", Self::value(&self.since)),
            ("until", Self::value(&self.until)),
        ]
    }

    /// `q=...&state=...` with only the fields that are set.
    fn query_string(&self) -> String {
        self.fields()
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(n, v)| format!("{n}={}", url_encode(&v)))
            .collect::<Vec<_>>()
            .join("&")
    }

    /// The filter, or what is wrong with it in words.
    fn parse(&self) -> Result<JobFilter, String> {
        // Nothing keyrelay stores is longer or holds control or direction-changing characters
        // (Postgres cannot even take a NUL): such a filter is a typo or a probe, answered 400,
        // never a database error.
        for (name, value) in self.fields() {
            if value.len() > crate::domain::MAX_ID_LEN
                || value.chars().any(crate::domain::unsafe_in_id)
            {
                return Err(format!(
                    "the {name} field is longer than {} bytes or holds control or direction-changing characters",
                    crate::domain::MAX_ID_LEN
                ));
            }
        }
        let set = |v: &Option<String>| Some(Self::value(v)).filter(|v| !v.is_empty());
        let state = match set(&self.state) {
            Some(s) => Some(JobState::parse(&s).ok_or_else(|| format!("unknown state `{s}`"))?),
            None => None,
        };
        let when = |v: &Option<String>, name: &str| {
            set(v)
                .map(|t| parse_when(&t).map_err(|e| format!("{name}: {e}")))
                .transpose()
        };
        Ok(JobFilter {
            search: set(&self.q),
            state,
            pool: set(&self.pool),
            since: when(&self.since, "created from")?,
            until: when(&self.until, "created before")?,
            ..JobFilter::default()
        })
    }
}

#[derive(Deserialize)]
pub struct JobsQuery {
    #[serde(flatten)]
    filter: FilterQuery,
    after: Option<String>,
    #[serde(flatten)]
    flash: Flash,
}

pub async fn jobs_page(
    who: SignedIn,
    state: web::Data<AdminState>,
    query: web::Query<JobsQuery>,
) -> Result<HttpResponse, AdminError> {
    let started = Instant::now();
    let fields = query.filter.fields();
    let query_string = query.filter.query_string();
    let pools: Vec<String> = crate::pool::pool_names(&state.db).await?;
    let (filter, error) = match query.filter.parse() {
        Ok(f) => (Some(f), None),
        Err(e) => (None, Some(e)),
    };
    let after = query.after.as_deref().and_then(Cursor::decode);
    let found = match &filter {
        Some(f) => search::find_jobs(&state.db, f, after.as_ref(), PAGE).await?,
        None => Vec::new(),
    };
    let next = (found.len() as i64 == PAGE)
        .then(|| found.last())
        .flatten()
        .map(|last| {
            let sep = if query_string.is_empty() { "" } else { "&" };
            format!(
                "/admin/jobs?{query_string}{sep}after={}",
                url_encode(&Cursor::after(last).encode())
            )
        });
    let describe = filter
        .as_ref()
        .map_or_else(|| "nothing".into(), JobFilter::describe);
    let page = pages::JobsPage {
        fields: &fields,
        query: &query_string,
        describe: &describe,
        pools: &pools,
        jobs: &found,
        next,
        error: error.as_deref(),
        elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
    };
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    Ok(html(
        status,
        pages::jobs(&page, &csrf(&state, &who), query.flash.message().as_deref()),
    ))
}

fn bulk_action(action: &str) -> Result<BulkAction, AdminError> {
    BulkAction::parse(action).ok_or_else(|| {
        AdminError::BadRequest(format!(
            "unknown bulk action `{action}`; use retry or cancel"
        ))
    })
}

#[derive(Deserialize)]
pub struct BulkQuery {
    action: String,
    #[serde(flatten)]
    filter: FilterQuery,
    #[serde(flatten)]
    flash: Flash,
}

/// The confirmation page: what the action would change, and how many.
pub async fn bulk_confirm(
    who: SignedIn,
    state: web::Data<AdminState>,
    query: web::Query<BulkQuery>,
) -> Result<HttpResponse, AdminError> {
    let action = bulk_action(&query.action)?;
    let filter = query.filter.parse().map_err(AdminError::BadRequest)?;
    let count = jobs::bulk_count(&state.db, action, &filter).await?;
    let fields = query.filter.fields();
    let page = pages::bulk_confirm(
        &pages::BulkConfirm {
            action: action.as_str(),
            describe: &filter.describe(),
            count,
            max: jobs::BULK_MAX,
            fields: &fields,
            query: &query.filter.query_string(),
            applies_to: action.applies_to(),
        },
        &csrf(&state, &who),
        query.flash.message().as_deref(),
    );
    Ok(html(StatusCode::OK, page))
}

#[derive(Deserialize)]
pub struct BulkForm {
    action: String,
    #[serde(default)]
    csrf: String,
    /// How many jobs the confirmation said match (text: flattened forms arrive as strings).
    #[serde(default)]
    expected: String,
    #[serde(flatten)]
    filter: FilterQuery,
}

/// Runs a confirmed bulk action on the jobs that match now (a job that changed state since the
/// confirmation is skipped), audits it, and goes back to the list.
pub async fn bulk_run(
    who: SignedIn,
    state: web::Data<AdminState>,
    form: web::Form<BulkForm>,
) -> Result<HttpResponse, AdminError> {
    check_csrf(&state, &who, &form.csrf)?;
    let action = bulk_action(&form.action)?;
    let filter = form.filter.parse().map_err(AdminError::BadRequest)?;
    // A count, as the confirmation page wrote it: never negative.
    let confirmed: i64 = form.expected.trim().parse::<u32>().map(i64::from).map_err(|_| {
        AdminError::BadRequest(
            "the form does not say how many jobs were confirmed (expected); open the confirmation page again".into(),
        )
    })?;
    let query = form.filter.query_string();
    let sep = if query.is_empty() { "" } else { "&" };
    match jobs::bulk(&state.db, action, &filter, confirmed, Actor::Admin).await? {
        jobs::BulkRun::Changed(done) => Ok(redirect(&format!(
            "/admin/jobs?{query}{sep}done=bulk_{}&n={done}",
            action.as_str()
        ))),
        jobs::BulkRun::MoreThanConfirmed { matching, .. } => Ok(redirect(&format!(
            "/admin/jobs/bulk?action={}&{query}{sep}done=bulk_grew&n={matching}",
            action.as_str()
        ))),
    }
}
