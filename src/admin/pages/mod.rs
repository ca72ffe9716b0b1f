//! The dashboard's HTML: one small server-rendered page per view, no scripts. `overview` has
//! the charts and pools, `lists` the job search, bulk actions, needs-attention and events.

mod lists;
mod outbox;
mod overview;

pub use lists::{Attention, BulkConfirm, JobsPage, attention, bulk_confirm, events, jobs};
pub use outbox::{OutboxLists, outbox};
pub use overview::{Overview, overview};

use crate::domain::JobState;
use crate::ops::jobs::JobDetail;

pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

pub fn path_segment(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#f5f6f8}\
header{background:#1d2330;color:#fff;padding:10px 24px;display:flex;justify-content:space-between;align-items:center}\
header a{color:#fff;text-decoration:none;font-weight:600}main{padding:16px 24px;max-width:1200px}\
h2{font-size:16px;margin:24px 0 8px}table{border-collapse:collapse;width:100%;background:#fff}\
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid #e3e6ea;vertical-align:top}th{background:#eceef2;font-weight:600}\
.cards{display:flex;gap:10px;flex-wrap:wrap}.card{background:#fff;border:1px solid #e3e6ea;border-radius:6px;padding:8px 14px;min-width:90px}\
.card b{display:block;font-size:20px}.failed{color:#b42318}.low{color:#b42318;font-weight:600}.ok{color:#067647}\
.flash{background:#e8f1ff;border:1px solid #b3cdf5;padding:8px 12px;border-radius:6px}\
button{cursor:pointer;padding:3px 10px;border:1px solid #98a2b3;border-radius:4px;background:#fff}\
form.inline{display:inline}.muted{color:#667085}input{padding:6px;width:320px}\
nav a{color:#cfd4dc;margin-left:18px;text-decoration:none}nav a:hover{color:#fff}\
.charts{display:flex;flex-wrap:wrap;gap:12px}.chart{background:#fff;border:1px solid #e3e6ea;border-radius:6px;margin:0;padding:8px 10px}\
.chart figcaption{font-weight:600;margin-bottom:4px}.chart text{font-size:10px;fill:#667085}\
.legend{display:flex;gap:12px;flex-wrap:wrap;font-size:12px;color:#475467}.legend i{display:inline-block;width:10px;height:10px;margin-right:4px;border-radius:2px}\
form.filters{display:flex;gap:8px;flex-wrap:wrap;align-items:end;background:#fff;border:1px solid #e3e6ea;border-radius:6px;padding:10px}\
form.filters label{display:flex;flex-direction:column;font-size:12px;color:#475467}form.filters input,form.filters select{width:auto;padding:5px}\
.confirm{background:#fffaeb;border:1px solid #fedf89;border-radius:6px;padding:12px 16px}.error{color:#b42318;font-weight:600}\
a.card{color:inherit;text-decoration:none}a.card:hover{border-color:#98a2b3}.pager{margin:10px 0}.range a{margin-right:8px}.range b{margin-right:8px}";

pub fn layout(title: &str, body: &str, csrf: Option<&str>) -> String {
    let logout = csrf
        .filter(|c| !c.is_empty())
        .map(|c| {
            format!(
                "<form class=inline method=post action=\"/admin/logout\"><input type=hidden name=csrf value=\"{}\"><button>Sign out</button></form>",
                esc(c)
            )
        })
        .unwrap_or_default();
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>{} · keyrelay</title>\
         <meta name=viewport content=\"width=device-width\"><style>{STYLE}</style></head>\
         <body><header><div><a href=\"/admin\">keyrelay on-call</a><nav style=\"display:inline\">\
         <a href=\"/admin\">Overview</a><a href=\"/admin/jobs\">Jobs</a>\
         <a href=\"/admin/attention\">Needs attention</a><a href=\"/admin/events\">Events</a><a href=\"/admin/outbox\">Outbox</a></nav></div>{logout}</header>\
         <main>{body}</main></body></html>",
        esc(title)
    )
}

pub fn login(error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=failed>{}</p>", esc(e)))
        .unwrap_or_default();
    layout(
        "Sign in",
        &format!(
            "<h2>Sign in</h2>{error}<form method=post action=\"/admin/login\">\
             <p><label>Admin token<br><input type=password name=token id=token autocomplete=current-password autofocus></label></p>\
             <p><button id=sign-in>Sign in</button></p></form>\
             <p class=muted>The token is the server's <code>KEYRELAY_ADMIN_TOKEN</code>.</p>"
        ),
        None,
    )
}

pub fn action_button(grant_id: &str, action: &str, label: &str, csrf: &str) -> String {
    format!(
        "<form class=inline method=post action=\"/admin/jobs/{}/{action}\"><input type=hidden name=csrf value=\"{}\">\
         <button id=\"{action}-{}\">{label}</button></form>",
        path_segment(grant_id),
        esc(csrf),
        esc(grant_id)
    )
}

pub fn flash(done: Option<&str>) -> String {
    done.map(|d| format!("<p class=flash id=flash>{}</p>", esc(d)))
        .unwrap_or_default()
}

pub fn job(detail: &JobDetail, csrf: &str, done: Option<&str>) -> String {
    let j = &detail.job;
    let attempts: String = detail
        .attempt_history
        .iter()
        .map(|a| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} ms</td><td>{}</td><td>{}</td></tr>",
                a.started_at.format("%Y-%m-%d %H:%M:%S%.3f"),
                a.http_status.map_or("-".into(), |s| s.to_string()),
                esc(&a.outcome),
                a.duration_ms,
                esc(a.key.as_deref().unwrap_or("-")),
                esc(a.error.as_deref().unwrap_or("-"))
            )
        })
        .collect();
    let audit: String = detail
        .audit
        .iter()
        .map(|e| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                e.at.format("%Y-%m-%d %H:%M:%S%.3f"),
                esc(&e.actor),
                esc(&e.action),
                esc(e.detail.as_deref().unwrap_or("-"))
            )
        })
        .collect();
    let mut actions = String::new();
    if matches!(j.state, JobState::Failed | JobState::Cancelled) {
        actions.push_str(&action_button(j.grant_id.as_str(), "retry", "Retry", csrf));
    }
    if !matches!(
        j.state,
        JobState::Delivered | JobState::Cancelled | JobState::Running
    ) {
        actions.push(' ');
        actions.push_str(&action_button(
            j.grant_id.as_str(),
            "cancel",
            "Cancel",
            csrf,
        ));
    }
    let body = format!(
        "{}<h2>Grant {}</h2><table>\
         <tr><th>State</th><td id=job-state>{}</td></tr><tr><th>Attempts</th><td>{}</td></tr>\
         <tr><th>Entitlement</th><td>{}</td></tr><tr><th>Customer</th><td>{}</td></tr><tr><th>Payment</th><td>{}</td></tr>\
         <tr><th>Key</th><td>{}</td></tr><tr><th>Last error</th><td>{}</td></tr></table>\
         <p>{actions}</p><h2>Attempts</h2><table><tr><th>Time</th><th>HTTP</th><th>Outcome</th><th>Duration</th><th>Key</th><th>Error</th></tr>{attempts}</table>\
         <h2>Audit trail</h2><table><tr><th>Time</th><th>Actor</th><th>Action</th><th>Detail</th></tr>{audit}</table>",
        flash(done),
        esc(j.grant_id.as_str()),
        j.state,
        j.attempts,
        esc(j.entitlement_id.as_str()),
        esc(j.customer_id.as_str()),
        esc(j.payment_id.as_deref().unwrap_or("-")),
        // `show_job` masked it already.
        esc(detail.key.as_deref().unwrap_or("-")),
        esc(j.last_error.as_deref().unwrap_or("-")),
    );
    layout(&format!("Grant {}", j.grant_id), &body, Some(csrf))
}

pub fn not_found(grant_id: &str) -> String {
    layout(
        "Not found",
        &format!(
            "<h2>No job for grant {}</h2><p><a href=\"/admin\">Back to the dashboard</a></p>",
            esc(grant_id)
        ),
        None,
    )
}
