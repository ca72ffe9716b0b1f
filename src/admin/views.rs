//! The dashboard's pages beyond a single job: the overview with charts, the job search with
//! bulk actions, needs attention, and events with replay.

use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde::Deserialize;

use super::chart::{self, Range, Series};
use super::extract::redirect;
use super::figures::Slow;
use super::{AdminError, AdminState, Flash, SignedIn, check_csrf, csrf, html, pages, url_encode};
use crate::domain::{Actor, JobState};
use crate::ops::jobs::{self, BulkAction};
use crate::store::search::{self, Cursor, JobFilter, decode_position, encode_position, parse_when};
use crate::store::{history, read};

/// Jobs per page.
const PAGE: i64 = 50;

#[derive(Deserialize)]
pub struct RangeQuery {
    range: Option<String>,
}

pub async fn overview(
    who: SignedIn,
    state: web::Data<AdminState>,
    flash: web::Query<Flash>,
    query: web::Query<RangeQuery>,
) -> Result<HttpResponse, AdminError> {
    let range = Range::parse(query.range.as_deref());
    let now = chrono::Utc::now();
    let from = range.start(now);
    let secs = range.bucket_secs();
    let pool = &state.pool;
    let owned = state.pool.clone();
    let slow = state
        .figures
        .slow
        .get(move || async move {
            let (stats, pools) = futures_util::try_join!(
                crate::ops::stats::read(&owned),
                crate::pool::list_pools(&owned),
            )?;
            Ok::<_, sqlx::Error>(Slow {
                stats,
                pools,
                read_at: chrono::Utc::now(),
            })
        })
        .await?;
    let owned = state.pool.clone();
    let charts_from_rows = move || async move {
        futures_util::try_join!(
            history::delivered(&owned, from, secs),
            history::dodo_answers(&owned, from, secs),
            history::webhooks(&owned, from, secs),
        )
        .map(|(d, a, w)| [d, a, w])
    };
    let ([delivered, answers, hooks], depth, open, oldest) = futures_util::try_join!(
        async {
            match range {
                Range::Hour => charts_from_rows().await,
                Range::Day => state.figures.day.get(charts_from_rows).await,
            }
        },
        history::queue_depth(pool, from, secs),
        crate::store::stock::count_open_jobs_by_state(pool),
        crate::store::stock::oldest_unfinished_age_secs(pool),
    )?;
    // What needs a human is always current; history totals may be up to 30 s old.
    let mut stats = slow.stats.clone();
    for (state, n) in stats.jobs_by_state.iter_mut() {
        if history::SAMPLED_STATES.contains(state) {
            *n = open.iter().find(|(s, _)| s == state).map_or(0, |(_, n)| *n);
        }
    }
    stats.oldest_unfinished_age_secs = oldest;
    // A pool that cannot get keys needs a human: read fresh, like the open jobs.
    let broken = crate::store::pools::source_problems(pool).await?;
    let mut pools = slow.pools;
    for p in pools.iter_mut() {
        p.source_problem = broken
            .iter()
            .find(|(name, _)| *name == p.name)
            .map(|(_, problem)| problem.clone());
    }
    let per = range.per();
    let states: Vec<&str> = history::SAMPLED_STATES.iter().map(|s| s.as_str()).collect();
    // Samples are a minute apart; the line ends at what the queue holds now.
    let mut depth = Series::from_points(&depth, range, now, &states);
    for (state, n) in &stats.jobs_by_state {
        depth.set_latest(state.as_str(), *n);
    }
    let charts = [
        chart::bars(
            "delivered",
            &format!("Grants delivered {per}"),
            &Series::from_points(&delivered, range, now, &["delivered"]),
        ),
        chart::lines(
            "queue",
            "Queue depth by state (sampled each minute)",
            &depth,
        ),
        chart::bars(
            "dodo",
            &format!("Dodo's answers by status {per}"),
            &Series::from_points(
                &answers,
                range,
                now,
                &["2xx", "409", "429", "4xx", "5xx", "no_answer"],
            ),
        ),
        chart::bars(
            "webhooks",
            &format!("Webhooks received {per}"),
            &Series::from_points(&hooks, range, now, &["received"]),
        ),
    ];
    let needs_attention = needs_attention(&state, &stats).await?;
    let page = pages::overview(
        &pages::Overview {
            stats: &stats,
            pools: &pools,
            charts: &charts,
            range,
            needs_attention,
            totals_at: slow.read_at,
        },
        &csrf(&state, &who),
        flash.message().as_deref(),
    );
    Ok(html(StatusCode::OK, page))
}

/// Failed jobs, grants waiting for keys, set-aside events and orphaned vendor keys.
async fn needs_attention(
    state: &AdminState,
    stats: &crate::ops::stats::QueueStats,
) -> Result<i64, sqlx::Error> {
    let in_state = |s: JobState| {
        stats
            .jobs_by_state
            .iter()
            .find(|(state, _)| *state == s)
            .map_or(0, |(_, n)| *n)
    };
    let (problems, orphans) = futures_util::try_join!(
        read::count_events_with_problem(&state.pool),
        crate::store::asking::count_grants_with_orphan_keys(&state.pool),
    )?;
    Ok(in_state(JobState::Failed) + in_state(JobState::WaitingForKeys) + problems + orphans)
}

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
    let pools: Vec<String> = crate::pool::pool_names(&state.pool).await?;
    let (filter, error) = match query.filter.parse() {
        Ok(f) => (Some(f), None),
        Err(e) => (None, Some(e)),
    };
    let after = query.after.as_deref().and_then(Cursor::decode);
    let found = match &filter {
        Some(f) => search::find_jobs(&state.pool, f, after.as_ref(), PAGE).await?,
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
    let count = jobs::bulk_count(&state.pool, action, &filter).await?;
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
    match jobs::bulk(&state.pool, action, &filter, confirmed, Actor::Admin).await? {
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

pub async fn attention(
    who: SignedIn,
    state: web::Data<AdminState>,
    flash: web::Query<Flash>,
) -> Result<HttpResponse, AdminError> {
    let pool = &state.pool;
    let in_state = |s| JobFilter {
        state: Some(s),
        ..JobFilter::default()
    };
    let failed_filter = in_state(JobState::Failed);
    let waiting_filter = in_state(JobState::WaitingForKeys);
    let (failed, failed_total, waiting, waiting_total, problems, problems_total) = futures_util::try_join!(
        search::find_jobs(pool, &failed_filter, None, 100),
        search::count_jobs(pool, &failed_filter, &[]),
        search::find_jobs(pool, &waiting_filter, None, 100),
        search::count_jobs(pool, &waiting_filter, &[]),
        read::events_with_problem(pool, 100),
        read::count_events_with_problem(pool),
    )?;
    let (orphan_ids, orphans_total) = futures_util::try_join!(
        crate::store::asking::grants_with_orphan_keys(pool, 100),
        crate::store::asking::count_grants_with_orphan_keys(pool),
    )?;
    let mut orphans = Vec::new();
    for grant_id in orphan_ids {
        if let Some(job) = read::job(pool, &grant_id).await? {
            orphans.push(job);
        }
    }
    let page = pages::attention(
        &pages::Attention {
            failed: &failed,
            failed_total,
            waiting: &waiting,
            waiting_total,
            problems: &problems,
            problems_total,
            orphans: &orphans,
            orphans_total,
        },
        &csrf(&state, &who),
        flash.message().as_deref(),
    );
    Ok(html(StatusCode::OK, page))
}

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
    let events = read::events_before(&state.pool, before, PAGE).await?;
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
    csrf: String,
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
        &state.pool,
        &state.vault,
        &webhook_id,
        Actor::Admin,
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
