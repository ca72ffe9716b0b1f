//! Lists: the job search with its filters and bulk actions, the confirmation a bulk action
//! needs, everything that needs a human, and the stored events with replay.

use super::{action_button, esc, flash, layout, path_segment};
use crate::domain::JobState;
use crate::ops::events::EventSummary;
use crate::ops::jobs::JobSummary;

/// The job search as the page shows it.
pub struct JobsPage<'a> {
    /// The filter's fields as typed, to show them again: (name, value).
    pub fields: &'a [(&'static str, String)],
    /// The filter's query string (`q=...&state=...`), for links that keep it.
    pub query: &'a str,
    pub describe: &'a str,
    pub pools: &'a [String],
    pub jobs: &'a [JobSummary],
    /// The next page's link, when there is one.
    pub next: Option<String>,
    pub error: Option<&'a str>,
    pub elapsed_ms: f64,
}

fn field<'a>(fields: &'a [(&'static str, String)], name: &str) -> &'a str {
    fields
        .iter()
        .find(|(n, _)| *n == name)
        .map_or("", |(_, v)| v.as_str())
}

fn filter_form(page: &JobsPage<'_>) -> String {
    let value = |name| esc(field(page.fields, name));
    let state = field(page.fields, "state");
    let states: String = std::iter::once(("", "any state"))
        .chain(JobState::ALL.iter().map(|s| (s.as_str(), s.as_str())))
        .map(|(v, label)| {
            let selected = if v == state { " selected" } else { "" };
            format!("<option value=\"{v}\"{selected}>{label}</option>")
        })
        .collect();
    let pool = field(page.fields, "pool");
    let pools: String = std::iter::once(String::new())
        .chain(page.pools.iter().cloned())
        .map(|p| {
            let selected = if p == pool { " selected" } else { "" };
            let label = if p.is_empty() {
                "any pool".into()
            } else {
                esc(&p)
            };
            format!("<option value=\"{}\"{selected}>{label}</option>", esc(&p))
        })
        .collect();
    format!(
        "<form class=filters method=get action=\"/admin/jobs\" id=filters>\
         <label>Search<input name=q id=q value=\"{}\" placeholder=\"grant, customer or payment id, or a key's last 4\" size=40></label>\
         <label>State<select name=state id=state>{states}</select></label>\
         <label>Pool<select name=pool id=pool>{pools}</select></label>\
         <label>Created from (UTC)<input name=since id=since value=\"{}\" placeholder=\"2026-11-27T10:00 or 6h\"></label>\
         <label>Created before (UTC)<input name=until id=until value=\"{}\" placeholder=\"2026-11-27T12:00 or 1h\"></label>\
         <button id=search>Search</button> <a href=\"/admin/jobs\">clear</a></form>",
        value("q"),
        value("since"),
        value("until"),
    )
}

pub fn job_rows(jobs: &[JobSummary], csrf: &str) -> String {
    jobs.iter()
        .map(|j| {
            let mut actions = String::new();
            if matches!(j.state, JobState::Failed | JobState::Cancelled) {
                actions.push_str(&action_button(j.grant_id.as_str(), "retry", "Retry", csrf));
                actions.push(' ');
            }
            if matches!(
                j.state,
                JobState::Queued | JobState::Retrying | JobState::WaitingForKeys | JobState::Failed
            ) {
                actions.push_str(&action_button(j.grant_id.as_str(), "cancel", "Cancel", csrf));
            }
            format!(
                "<tr id=\"job-{}\"><td><a href=\"/admin/jobs/{}\">{}</a></td><td class={}>{}</td><td>{}</td><td>{}</td><td>{}</td>\
                 <td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(j.grant_id.as_str()),
                path_segment(j.grant_id.as_str()),
                esc(j.grant_id.as_str()),
                if j.state == JobState::Failed { "failed" } else { "muted" },
                j.state,
                esc(j.customer_id.as_str()),
                esc(j.payment_id.as_deref().unwrap_or("-")),
                j.created_at.format("%Y-%m-%d %H:%M:%S"),
                j.attempts,
                j.last_http_status.map_or("-".into(), |s| s.to_string()),
                esc(j.last_error.as_deref().unwrap_or("-")),
                actions
            )
        })
        .collect()
}

fn jobs_table(jobs: &[JobSummary], csrf: &str) -> String {
    format!(
        "<table id=jobs><tr><th>Grant</th><th>State</th><th>Customer</th><th>Payment</th><th>Created (UTC)</th>\
         <th>Attempts</th><th>HTTP</th><th>Last error</th><th></th></tr>{}</table>",
        job_rows(jobs, csrf)
    )
}

pub fn jobs(page: &JobsPage<'_>, csrf: &str, done: Option<&str>) -> String {
    let error = page
        .error
        .map(|e| format!("<p class=error id=filter-error>{}</p>", esc(e)))
        .unwrap_or_default();
    let results = if page.jobs.is_empty() {
        format!("<p id=no-jobs>No jobs match {}.</p>", esc(page.describe))
    } else {
        jobs_table(page.jobs, csrf)
    };
    let bulk = format!(
        "<p id=bulk>Everything matching this filter: \
         <a id=bulk-retry href=\"/admin/jobs/bulk?action=retry&amp;{q}\">Retry…</a> · \
         <a id=bulk-cancel href=\"/admin/jobs/bulk?action=cancel&amp;{q}\">Cancel…</a> \
         <span class=muted>(you see the count and confirm first)</span></p>",
        q = esc(page.query)
    );
    let next = page
        .next
        .as_ref()
        .map(|n| format!("<a id=next-page href=\"{}\">Older jobs →</a>", esc(n)))
        .unwrap_or_default();
    let body = format!(
        "{}<h2>Jobs</h2>{}{error}<p class=muted>Showing {} ({} job(s) on this page, newest first; {:.1} ms)</p>{bulk}{results}<p class=pager>{next}</p>",
        flash(done),
        filter_form(page),
        esc(page.describe),
        page.jobs.len(),
        page.elapsed_ms,
    );
    layout("Jobs", &body, Some(csrf))
}

/// A bulk action waiting for confirmation.
pub struct BulkConfirm<'a> {
    pub action: &'a str,
    pub describe: &'a str,
    /// Jobs it would change (in a state the action applies to).
    pub count: i64,
    /// Of those, how many one run does at most.
    pub max: i64,
    pub fields: &'a [(&'static str, String)],
    pub query: &'a str,
    pub applies_to: &'a str,
}

pub fn bulk_confirm(b: &BulkConfirm<'_>, csrf: &str, done: Option<&str>) -> String {
    let hidden: String = b
        .fields
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(n, v)| format!("<input type=hidden name={n} value=\"{}\">", esc(v)))
        .collect();
    let body = if b.count == 0 {
        format!(
            "<h2>Nothing to {}</h2><p id=bulk-count>No {} jobs match {}.</p><p><a href=\"/admin/jobs?{}\">Back</a></p>",
            b.action,
            b.applies_to,
            esc(b.describe),
            esc(b.query)
        )
    } else {
        let capped = if b.count > b.max {
            format!(
                " This run does the oldest {}; run it again for the rest.",
                b.max
            )
        } else {
            String::new()
        };
        format!(
            "<div class=confirm id=confirm><h2>{} {} jobs?</h2>\
             <p id=bulk-count>{} {} jobs match {}.{capped}</p>\
             <p>Each one is recorded in its audit trail, and the bulk action itself as one entry (actor admin, action bulk_retry or bulk_cancel) in the audit log.</p>\
             <form method=post action=\"/admin/jobs/bulk\"><input type=hidden name=csrf value=\"{}\">\
             <input type=hidden name=action value=\"{}\"><input type=hidden name=expected value=\"{}\">{hidden}\
             <button id=confirm-bulk>Yes, {} {} jobs</button> <a href=\"/admin/jobs?{}\">No, go back</a></form></div>",
            capitalised(b.action),
            b.count.min(b.max),
            b.count,
            b.applies_to,
            esc(b.describe),
            esc(csrf),
            b.action,
            b.count,
            b.action,
            b.count.min(b.max),
            esc(b.query),
        )
    };
    layout("Confirm", &format!("{}{body}", flash(done)), Some(csrf))
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

fn event_rows(events: &[EventSummary], csrf: &str) -> String {
    events
        .iter()
        .map(|e| {
            let id = esc(&e.webhook_id);
            format!(
                "<tr id=\"event-{id}\"><td>{}</td><td>{id}</td><td>{}</td><td>{}</td><td class=failed>{}</td>\
                 <td><form class=inline method=post action=\"/admin/events/{}/replay\"><input type=hidden name=csrf value=\"{}\">\
                 <button id=\"replay-{id}\">Replay</button></form></td></tr>",
                e.received_at.format("%Y-%m-%d %H:%M:%S"),
                esc(&e.event_type),
                e.grant_id
                    .as_deref()
                    .map(|g| format!("<a href=\"/admin/jobs/{}\">{}</a>", path_segment(g), esc(g)))
                    .unwrap_or_else(|| "-".into()),
                esc(e.problem.as_deref().unwrap_or("")),
                path_segment(&e.webhook_id),
                esc(csrf),
            )
        })
        .collect()
}

fn events_table(events: &[EventSummary], csrf: &str, id: &str) -> String {
    format!(
        "<table id={id}><tr><th>Received (UTC)</th><th>Webhook id</th><th>Type</th><th>Grant</th><th>Problem</th><th></th></tr>{}</table>",
        event_rows(events, csrf)
    )
}

pub fn events(
    events: &[EventSummary],
    next: Option<String>,
    csrf: &str,
    done: Option<&str>,
) -> String {
    let next = next
        .map(|n| {
            format!(
                "<p class=pager><a id=next-page href=\"{}\">Older events →</a></p>",
                esc(&n)
            )
        })
        .unwrap_or_default();
    let body = format!(
        "{}<h2>Events</h2><p class=muted>Every verified webhook keyrelay stored, newest first. Replaying runs intake again on \
         the stored event; it is idempotent: a grant that has a job is not touched.</p>{}{next}",
        flash(done),
        if events.is_empty() {
            "<p>No events stored.</p>".into()
        } else {
            events_table(events, csrf, "events")
        },
    );
    layout("Events", &body, Some(csrf))
}

/// Everything that needs a human: the oldest of each kind, and how many there are.
pub struct Attention<'a> {
    pub failed: &'a [JobSummary],
    pub failed_total: i64,
    pub waiting: &'a [JobSummary],
    pub waiting_total: i64,
    /// Events set aside with a problem.
    pub problems: &'a [EventSummary],
    pub problems_total: i64,
    /// Jobs whose grant has a vendor key nobody uses.
    pub orphans: &'a [JobSummary],
    pub orphans_total: i64,
    /// Notices a vendor or the shop refused.
    pub notices: &'a [crate::store::outbox::Notice],
    pub notices_total: i64,
    /// Grants revoked for a reason keyrelay does not know.
    pub review: &'a [JobSummary],
    pub review_total: i64,
}

/// Everything that needs a human, in one place.
pub fn attention(a: &Attention<'_>, csrf: &str, done: Option<&str>) -> String {
    let Attention {
        failed,
        failed_total,
        waiting,
        waiting_total,
        problems,
        problems_total,
        orphans,
        orphans_total,
        notices,
        notices_total,
        review,
        review_total,
    } = *a;
    let section = |title: &str,
                   id: &str,
                   total: i64,
                   shown: usize,
                   empty: &str,
                   table: String,
                   more: String| {
        if total == 0 {
            format!("<h2>{title}</h2><p class=ok id=\"{id}-none\">{empty}</p>")
        } else {
            let of = if total as usize > shown {
                format!(" (the newest {shown} shown)")
            } else {
                String::new()
            };
            format!("<h2>{title}: <span id=\"{id}-total\">{total}</span>{of}</h2>{more}{table}")
        }
    };
    let failed_html = section(
        "Failed jobs",
        "failed",
        failed_total,
        failed.len(),
        "No failed jobs.",
        format!("<div id=failed>{}</div>", jobs_table(failed, csrf)),
        "<p><a id=retry-all-failed href=\"/admin/jobs/bulk?action=retry&amp;state=failed\">Retry all failed…</a> \
         <span class=muted>Fix the cause first: the last error says what Dodo answered.</span></p>"
            .into(),
    );
    let waiting_html = section(
        "Waiting for keys",
        "waiting",
        waiting_total,
        waiting.len(),
        "No grant is waiting for keys.",
        format!("<div id=waiting>{}</div>", jobs_table(waiting, csrf)),
        "<p class=muted>These grants have no pool for their entitlement, or its pool is empty. Import keys \
         (<code>keyrelay pool import NAME FILE</code>) or add a pool; they are fulfilled as soon as keys arrive.</p>"
            .into(),
    );
    let problems_html = section(
        "Set-aside events",
        "problems",
        problems_total,
        problems.len(),
        "No event was set aside.",
        events_table(problems, csrf, "set-aside"),
        "<p class=muted>Verified webhooks keyrelay could not process, with the reason. Fix the cause (a pool, a \
         setting), then replay.</p>"
            .into(),
    );
    let orphans_html = section(
        "Keys to revoke at the vendor",
        "orphans",
        orphans_total,
        orphans.len(),
        "No orphaned vendor keys.",
        format!("<div id=orphans>{}</div>", jobs_table(orphans, csrf)),
        "<p class=muted>A key source issued a key that no grant uses (see the job's page); revoke it at the vendor.</p>".into(),
    );
    let notices_html = section(
        "Notices refused",
        "notices",
        notices_total,
        notices.len(),
        "No notice to a vendor or the shop was refused.",
        format!("<div id=notices>{}</div>", super::outbox::table(notices, Some(csrf))),
        "<p class=muted>A key vendor's revoke_url or the shop's notify.url refused these (the answer is shown): a \
         refund may not have reached them. Fix the receiver, then send again (see <a href=\"/admin/outbox\">Outbox</a>).</p>"
            .into(),
    );
    let review_html = section(
        "Revocations to review",
        "review",
        review_total,
        review.len(),
        "No revocation with a reason keyrelay does not know.",
        format!("<div id=review>{}</div>", jobs_table(review, csrf)),
        "<p class=muted>Dodo revoked these grants for a reason keyrelay does not know (shown verbatim in the last \
         error). Their keys were revoked to be safe; check whether that was right.</p>"
            .into(),
    );
    let body = format!(
        "{}<h2>Needs attention</h2>{failed_html}{waiting_html}{notices_html}{review_html}{problems_html}{orphans_html}",
        flash(done)
    );
    layout("Needs attention", &body, Some(csrf))
}
