//! The overview (figures and charts) and the needs-attention page.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde::Deserialize;

use crate::admin::chart::{self, Range, Series};
use crate::admin::figures::Slow;
use crate::admin::{AdminError, AdminState, Flash, SignedIn, csrf, html, pages};
use crate::domain::JobState;
use crate::store::search::{self, JobFilter};
use crate::store::{history, read};

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
    let db = &state.db;
    let owned = state.db.clone();
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
    let owned = state.db.clone();
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
        history::queue_depth(db, from, secs),
        crate::store::stock::count_open_jobs_by_state(db),
        crate::store::stock::oldest_unfinished_age_secs(db),
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
    let broken = crate::store::pools::source_problems(db).await?;
    let mut pools = slow.pools;
    for p in pools.iter_mut() {
        p.source_problem = broken
            .iter()
            .find(|(name, _)| *name == p.name)
            .map(|(_, problem)| problem.clone());
    }
    let charts = draw_charts(range, now, [&delivered, &answers, &hooks], &depth, &stats);
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

/// The overview's four charts: grants delivered, queue depth (ending at what the queue holds
/// now), Dodo's answers, webhooks received.
fn draw_charts(
    range: Range,
    now: chrono::DateTime<chrono::Utc>,
    [delivered, answers, hooks]: [&[history::Point]; 3],
    depth: &[history::Point],
    stats: &crate::ops::stats::QueueStats,
) -> [String; 4] {
    let per = range.per();
    let states: Vec<&str> = history::SAMPLED_STATES.iter().map(|s| s.as_str()).collect();
    // Samples are a minute apart; the line ends at what the queue holds now.
    let mut depth = Series::from_points(depth, range, now, &states);
    for (state, n) in &stats.jobs_by_state {
        depth.set_latest(state.as_str(), *n);
    }
    [
        chart::bars(
            "delivered",
            &format!("Grants delivered {per}"),
            &Series::from_points(delivered, range, now, &["delivered"]),
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
                answers,
                range,
                now,
                &["2xx", "409", "429", "4xx", "5xx", "no_answer"],
            ),
        ),
        chart::bars(
            "webhooks",
            &format!("Webhooks received {per}"),
            &Series::from_points(hooks, range, now, &["received"]),
        ),
    ]
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
        read::count_events_with_problem(&state.db),
        crate::store::asking::count_grants_with_orphan_keys(&state.db),
    )?;
    Ok(in_state(JobState::Failed) + in_state(JobState::WaitingForKeys) + problems + orphans)
}

pub async fn attention(
    who: SignedIn,
    state: web::Data<AdminState>,
    flash: web::Query<Flash>,
) -> Result<HttpResponse, AdminError> {
    let db = &state.db;
    let in_state = |s| JobFilter {
        state: Some(s),
        ..JobFilter::default()
    };
    let failed_filter = in_state(JobState::Failed);
    let waiting_filter = in_state(JobState::WaitingForKeys);
    let (failed, failed_total, waiting, waiting_total, problems, problems_total) = futures_util::try_join!(
        search::find_jobs(db, &failed_filter, None, 100),
        search::count_jobs(db, &failed_filter, &[]),
        search::find_jobs(db, &waiting_filter, None, 100),
        search::count_jobs(db, &waiting_filter, &[]),
        read::events_with_problem(db, 100),
        read::count_events_with_problem(db),
    )?;
    let (orphan_ids, orphans_total) = futures_util::try_join!(
        crate::store::asking::grants_with_orphan_keys(db, 100),
        crate::store::asking::count_grants_with_orphan_keys(db),
    )?;
    let (review_ids, review_total, notices, backlog) = futures_util::try_join!(
        read::revocations_to_review(db, 100),
        read::count_revocations_to_review(db),
        crate::store::outbox::list(db, Some("failed"), 100),
        crate::store::outbox::backlog(db),
    )?;
    let mut orphans = Vec::new();
    for grant_id in orphan_ids {
        if let Some(job) = read::job(db, &grant_id).await? {
            orphans.push(job);
        }
    }
    let mut review = Vec::new();
    for grant_id in review_ids {
        if let Some(job) = read::job(db, &grant_id).await? {
            review.push(job);
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
            notices: &notices,
            notices_total: backlog.failed,
            review: &review,
            review_total,
        },
        &csrf(&state, &who),
        flash.message().as_deref(),
    );
    Ok(html(StatusCode::OK, page))
}
