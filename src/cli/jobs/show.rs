//! `keyrelay jobs show`: one job, its key (masked unless asked), every attempt, the keys an
//! endpoint answered for it, the notices its changes owed, and its audit trail.

use anyhow::bail;

use crate::cli::output::{json, or_dash, shown, table, wrapped};
use crate::configuration::Settings;
use crate::db::Db;
use crate::domain::{GrantId, JobState};
use crate::ops::jobs::{self, JobDetail};

/// `jobs show`: one job, its key, attempts, keys from an endpoint and audit trail.
pub(super) async fn show(
    db: &Db,
    settings: &Settings,
    grant_id: GrantId,
    as_json: bool,
    show_key: bool,
) -> anyhow::Result<()> {
    // Keys show masked with the encryption key, `(sealed)` without; in full only with it.
    let vault = match show_key {
        true => Some(settings.keys.vault()?),
        false => settings.keys.vault().ok(),
    };
    let Some(detail) = jobs::show_job(db, vault.as_ref(), &grant_id, show_key).await? else {
        bail!("no job for grant {grant_id}; see `keyrelay jobs list`");
    };
    if as_json {
        return json(&detail);
    }
    print_detail(&detail);
    Ok(())
}

/// The job as text: its fields, attempts, keys an endpoint answered, and audit trail.
fn print_detail(detail: &JobDetail) {
    let j = &detail.job;
    println!("grant        {}", shown(j.grant_id.as_str()));
    println!("state        {}", j.state);
    println!("entitlement  {}", shown(j.entitlement_id.as_str()));
    println!("customer     {}", shown(j.customer_id.as_str()));
    println!("payment      {}", shown(&or_dash(j.payment_id.as_deref())));
    println!("source       {}", shown(&j.source));
    println!("attempts     {}", j.attempts);
    println!(
        "key          {} ({})",
        or_dash(detail.key.as_deref()),
        or_dash(detail.key_state.map(|s| format!("{s:?}").to_lowercase()))
    );
    println!("created      {}", j.created_at);
    println!("updated      {}", j.updated_at);
    if matches!(j.state, JobState::Retrying) {
        println!("next attempt {}", j.run_at);
    }
    println!(
        "last error   {}",
        wrapped(&or_dash(j.last_error.as_deref()), 100, 13)
    );
    println!();
    let rows: Vec<Vec<String>> = detail
        .attempt_history
        .iter()
        .map(|a| {
            vec![
                a.started_at.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
                or_dash(a.http_status),
                a.outcome.clone(),
                format!("{} ms", a.duration_ms),
                or_dash(a.key.as_deref()),
                or_dash(a.error.as_deref()),
            ]
        })
        .collect();
    table(
        &["time", "http", "outcome", "duration", "key", "error"],
        &rows,
    );
    if !detail.received_keys.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = detail
            .received_keys
            .iter()
            .map(|r| {
                vec![
                    r.received_at.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
                    r.masked.clone(),
                    shown(&r.idempotency_key),
                    match (r.bound, r.orphan) {
                        (true, _) => "bound to this grant".into(),
                        (false, true) => "ORPHAN: revoke it at the vendor".into(),
                        _ => "-".into(),
                    },
                ]
            })
            .collect();
        table(
            &["received", "key from endpoint", "idempotency key", "status"],
            &rows,
        );
    }
    if !detail.notices.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = detail
            .notices
            .iter()
            .map(|n| {
                vec![
                    n.id.to_string(),
                    shown(&n.target),
                    n.event_type.clone(),
                    n.state.clone(),
                    n.attempts.to_string(),
                    or_dash(n.last_error.as_deref().map(shown)),
                ]
            })
            .collect();
        table(
            &["notice", "to", "event", "state", "tries", "last answer"],
            &rows,
        );
    }
    if !detail.audit.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = detail
            .audit
            .iter()
            .map(|e| {
                vec![
                    e.at.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
                    e.actor.clone(),
                    e.action.clone(),
                    or_dash(e.key_id),
                    or_dash(e.detail.as_deref()),
                ]
            })
            .collect();
        table(&["time", "actor", "action", "key id", "detail"], &rows);
    }
}
