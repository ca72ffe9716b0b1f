//! The first page: jobs by state, the charts, what needs attention, and each pool's stock with
//! its forecast.

use super::{esc, flash, layout, path_segment};
use crate::admin::chart::Range;
use crate::domain::JobState;
use crate::ops::stats::QueueStats;
use crate::pool::PoolStock;

/// What the overview shows.
pub struct Overview<'a> {
    pub stats: &'a QueueStats,
    pub pools: &'a [PoolStock],
    /// The charts, drawn.
    pub charts: &'a [String],
    pub range: Range,
    pub needs_attention: i64,
    /// When the history totals were read.
    pub totals_at: chrono::DateTime<chrono::Utc>,
}

pub fn overview(o: &Overview<'_>, csrf: &str, done: Option<&str>) -> String {
    let Overview {
        stats,
        pools,
        charts,
        range,
        needs_attention,
        totals_at,
    } = *o;
    let cards: String = stats
        .jobs_by_state
        .iter()
        .map(|(state, n)| {
            let class = if *state == JobState::Failed && *n > 0 {
                " class=failed"
            } else {
                ""
            };
            format!(
                "<a class=card id=\"count-{state}\" href=\"/admin/jobs?state={state}\"><span>{state}</span><b{class}>{n}</b></a>"
            )
        })
        .collect();
    let attention = if needs_attention > 0 {
        format!(
            "<p class=failed id=needs-attention><a href=\"/admin/attention\">{needs_attention} item(s) need a human</a>: failed jobs, grants waiting for keys, set-aside events.</p>"
        )
    } else {
        "<p class=ok id=needs-attention>Nothing needs a human.</p>".into()
    };
    let range_links: String = [Range::Hour, Range::Day]
        .iter()
        .map(|r| match *r == range {
            true => format!("<b>last {}</b>", r.as_str()),
            false => format!("<a href=\"/admin?range={0}\">last {0}</a>", r.as_str()),
        })
        .collect();
    let pool_rows: String = pools.iter().map(pool_row).collect();
    let body = format!(
        "{}<h2>Jobs by state</h2><div class=cards>{cards}\
         <div class=card id=oldest-unfinished><span>oldest without a key</span><b>{:.0} s</b></div></div>\
         {attention}\
         <h2>Activity</h2><p class=range id=range>{range_links} <span class=muted>(bars are {})</span></p>\
         <div class=charts>{}</div>\
         <h2>Pools</h2><table id=pools><tr><th>Pool</th><th>Entitlement</th><th>Source</th><th>Available</th>\
         <th>Reserved</th><th>Delivered</th><th>Sold last day</th><th>Sold last week</th><th>Runs out</th><th>Stock</th></tr>{pool_rows}</table>\
         <p class=muted id=totals-at>Delivered and cancelled totals, pools and the day's charts as of {} UTC (refreshed in the background every 30 s); \
         everything else is current.</p>",
        flash(done),
        stats.oldest_unfinished_age_secs,
        range.per(),
        charts.concat(),
        totals_at.format("%H:%M:%S"),
    );
    layout("Overview", &body, Some(csrf))
}

fn pool_row(p: &PoolStock) -> String {
    let stock = if let Some(problem) = &p.source_problem {
        format!(
            "<span class=low id=\"broken-{}\">BROKEN: {}</span>",
            esc(&p.name),
            esc(problem)
        )
    } else if p.source.makes_keys() {
        "<span class=ok>unlimited</span>".to_string()
    } else if p.low_stock {
        format!(
            "<span class=low>LOW (below {})</span>",
            p.low_stock_threshold
        )
    } else {
        "<span class=ok>ok</span>".into()
    };
    let soon =
        p.runs_out_in_days.is_some_and(|d| d < 7.0) || (!p.source.makes_keys() && p.available == 0);
    format!(
        "<tr id=\"pool-{}\"><td><a href=\"/admin/jobs?pool={}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
         <td>{}</td><td>{}</td><td class=\"{}\" id=\"forecast-{}\">{}</td><td>{stock}</td></tr>",
        esc(&p.name),
        path_segment(&p.name),
        esc(&p.name),
        esc(&p.entitlement_id),
        p.source,
        if p.source.makes_keys() {
            "-".into()
        } else {
            p.available.to_string()
        },
        p.reserved,
        p.delivered,
        p.sold_last_day,
        p.sold_last_week,
        if soon { "low" } else { "" },
        esc(&p.name),
        esc(&p.forecast()),
    )
}
