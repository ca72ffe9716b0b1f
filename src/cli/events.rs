//! `keyrelay events list|show|replay` and `keyrelay reconcile`.

use crate::db::Db;
use anyhow::bail;
use clap::Subcommand;
use tokio_util::sync::CancellationToken;

use super::output::{json, or_dash, table};
use crate::configuration::Settings;
use crate::domain::Actor;
use crate::intake::payload_keys;
use crate::ops::events;

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Stored webhooks, newest first.
    List {
        /// Only this type, e.g. entitlement_grant.created.
        #[arg(long = "type", value_name = "TYPE")]
        event_type: Option<String>,
        /// Only the events of this grant.
        #[arg(long = "grant", value_name = "GRANT_ID")]
        grant_id: Option<String>,
        /// How many events to show.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One stored webhook with its payload (license keys in it masked).
    Show {
        /// The event's webhook-id (from `events list`).
        webhook_id: String,
        /// Print license keys in the payload in full.
        #[arg(long)]
        show_key: bool,
    },
    /// Run intake again on a stored webhook; changes nothing already decided.
    Replay {
        /// The events' webhook-ids (from `events list`).
        #[arg(required = true)]
        webhook_ids: Vec<String>,
    },
}

pub async fn run(db: &Db, settings: &Settings, command: EventsCommand) -> anyhow::Result<()> {
    match command {
        EventsCommand::List {
            event_type,
            grant_id,
            limit,
            json: as_json,
        } => {
            let list =
                events::list_events(db, event_type.as_deref(), grant_id.as_deref(), limit).await?;
            if as_json {
                return json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|e| {
                    vec![
                        e.webhook_id.clone(),
                        e.event_type.clone(),
                        or_dash(e.grant_id.as_deref()),
                        e.received_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                        or_dash(e.problem.as_deref()),
                    ]
                })
                .collect();
            table(
                &["webhook id", "type", "grant", "received", "problem"],
                &rows,
            );
            if list.len() as i64 == limit {
                println!("showing the newest {limit}; pass a larger --limit to see more");
            }
        }
        EventsCommand::Show {
            webhook_id,
            show_key,
        } => match events::show_event(db, &webhook_id).await? {
            Some(mut detail) => {
                if show_key {
                    let vault = settings.keys.vault()?;
                    let opened =
                        payload_keys::open(&detail.payload.to_string(), &vault, &webhook_id)
                            .map_err(|e| {
                                anyhow::anyhow!("the license key in this event cannot be read: {e}")
                            })?;
                    detail.payload = serde_json::from_str(&opened)?;
                } else {
                    let vault = settings.keys.vault().ok();
                    payload_keys::mask(&mut detail.payload, vault.as_ref(), &webhook_id);
                }
                json(&detail)?
            }
            None => {
                bail!("no stored event with webhook-id {webhook_id}; see `keyrelay events list`")
            }
        },
        EventsCommand::Replay { webhook_ids } => {
            let vault = settings.keys.vault()?;
            let to = settings.recipients();
            for id in webhook_ids {
                let outcome = events::replay(db, &vault, &id, Actor::Cli, &to).await?;
                println!(
                    "{id}: {}",
                    match outcome {
                        events::ReplayOutcome::Queued => "queued a job for its grant",
                        events::ReplayOutcome::Applied => "applied to its grant's job",
                        events::ReplayOutcome::Unchanged => "nothing to change; already decided",
                    }
                );
            }
        }
    }
    Ok(())
}

pub async fn reconcile(settings: &Settings) -> anyhow::Result<()> {
    let db = crate::db::connect(settings).await?;
    let dodo = crate::startup::dodo_client(settings, &db)?;
    // Without the encryption keys, suspended grants cannot be compared with Dodo's: skip them.
    let settling = settings
        .keys
        .vault()
        .ok()
        .map(|vault| crate::ops::reconcile::Settling {
            vault: std::sync::Arc::new(vault),
            to: settings.recipients(),
        });
    let never = CancellationToken::new();
    match crate::ops::reconcile::reconcile(&db, &dodo, settling.as_ref(), &never).await? {
        Some(r) => println!(
            "checked {} entitlement(s): {} pending grant(s) at Dodo, {} queued that keyrelay had never seen; {} suspended grant(s) asked about, {} changed",
            r.entitlements, r.pending_seen, r.enqueued, r.suspended_checked, r.suspended_changed
        ),
        None => bail!("another keyrelay process is reconciling right now; try again in a minute"),
    }
    Ok(())
}
