//! The outbox page.

use super::{esc, flash, layout};
use crate::store::outbox::{Backlog, Notice};

/// The notices the outbox page shows.
pub struct OutboxLists<'a> {
    pub parked: &'a [Notice],
    pub pending: &'a [Notice],
    pub sent: &'a [Notice],
    pub backlog: Backlog,
}

pub(super) fn table(notices: &[Notice], csrf: Option<&str>) -> String {
    let rows: String = notices
        .iter()
        .map(|n| {
            let retry = csrf
                .map(|c| {
                    format!(
                        "<form class=inline method=post action=\"/admin/outbox/{}/retry\"><input type=hidden name=csrf value=\"{}\"><button>Send again</button></form>",
                        n.id,
                        esc(c)
                    )
                })
                .unwrap_or_default();
            let grant = n
                .grant_id
                .as_deref()
                .map(|g| format!("<a href=\"/admin/jobs/{}\">{}</a>", esc(g), esc(g)))
                .unwrap_or_else(|| "—".into());
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{grant}</td><td>{}</td><td>{}</td><td>{}</td><td>{retry}</td></tr>",
                n.id,
                esc(&n.target),
                esc(&n.event_type),
                n.attempts,
                n.created_at.format("%Y-%m-%d %H:%M:%S"),
                esc(n.last_error.as_deref().unwrap_or("")),
            )
        })
        .collect();
    format!(
        "<table><tr><th>#</th><th>To</th><th>Event</th><th>Grant</th><th>Tries</th><th>Created</th><th>Last answer</th><th></th></tr>{rows}</table>"
    )
}

/// Parked notices (with "send again"), those still being tried, and the last ones sent.
pub fn outbox(lists: &OutboxLists<'_>, csrf: &str, done: Option<&str>) -> String {
    let b = lists.backlog;
    let section = |title: &str, id: &str, notices: &[Notice], empty: &str, retry: bool| {
        let body = match notices.is_empty() {
            true => format!("<p class=muted>{empty}</p>"),
            false => table(notices, retry.then_some(csrf)),
        };
        format!("<h3 id={id}>{title}</h3>{body}")
    };
    let body = format!(
        "{}<h2>Outbox</h2><p class=muted>What keyrelay owes key vendors (<code>source:NAME</code>, a key source's \
         revoke_url) and the shop (<code>notify.url</code>). Each notice is sent once, signed, with the same \
         webhook-id and Idempotency-Key on every try. {} pending (oldest owed {:.0} s), {} parked.</p>{}{}{}",
        flash(done),
        b.pending,
        b.oldest_pending_secs,
        b.failed,
        section(
            "Parked: refused, needs a human",
            "parked",
            lists.parked,
            "Nothing parked.",
            true
        ),
        section(
            "Being tried",
            "pending",
            lists.pending,
            "Nothing waiting.",
            false
        ),
        section(
            "Sent lately",
            "sent",
            lists.sent,
            "Nothing sent yet.",
            false
        ),
    );
    layout("Outbox", &body, Some(csrf))
}
