//! `keyrelay outbox list|show|retry`: what keyrelay owes a vendor or the shop, and replaying
//! a notice a receiver refused once the receiver is fixed.

use anyhow::bail;
use clap::{Subcommand, ValueEnum};

use super::output::{json, or_dash, shown, table, wrapped};
use crate::db::Db;
use crate::store::outbox;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum NoticeState {
    /// Not yet delivered; the deliverer keeps trying.
    Pending,
    /// Parked for a human: a 4xx, a redirect, or too long without success.
    Failed,
    /// Delivered (answered 2xx).
    Sent,
}

impl NoticeState {
    fn as_str(self) -> &'static str {
        match self {
            NoticeState::Pending => "pending",
            NoticeState::Failed => "failed",
            NoticeState::Sent => "sent",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// Notices to vendors (`source:NAME`) and the shop, newest first.
    List {
        /// Only notices in this state.
        #[arg(long, value_enum)]
        state: Option<NoticeState>,
        /// How many notices to show.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=10_000))]
        limit: i64,
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One notice: what it says (without the key), where it goes, and the last answer.
    Show {
        /// The notice's id (from `outbox list`).
        id: i64,
    },
    /// Send failed notices again, with a fresh run of tries; the receiver sees the same
    /// webhook-id and Idempotency-Key as before.
    Retry {
        /// The notices' ids (from `outbox list --state failed`).
        #[arg(required = true)]
        ids: Vec<i64>,
    },
}

pub async fn run(db: &Db, command: OutboxCommand) -> anyhow::Result<()> {
    match command {
        OutboxCommand::List {
            state,
            limit,
            json: as_json,
        } => {
            let list = outbox::list(db, state.map(NoticeState::as_str), limit).await?;
            if as_json {
                return json(&list);
            }
            if list.is_empty() {
                println!(
                    "no notices{}",
                    state.map_or(String::new(), |s| format!(" {}", s.as_str()))
                );
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|n| {
                    vec![
                        n.id.to_string(),
                        n.state.clone(),
                        shown(&n.target),
                        n.event_type.clone(),
                        or_dash(n.grant_id.as_deref().map(shown)),
                        n.attempts.to_string(),
                        n.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                        or_dash(
                            n.last_error
                                .as_deref()
                                .map(|e| shown(&e.chars().take(60).collect::<String>())),
                        ),
                    ]
                })
                .collect();
            table(
                &[
                    "ID",
                    "STATE",
                    "TARGET",
                    "EVENT",
                    "GRANT",
                    "TRIES",
                    "CREATED",
                    "LAST ERROR",
                ],
                &rows,
            );
        }
        OutboxCommand::Show { id } => {
            let Some(n) = outbox::get(db, id).await? else {
                bail!("no notice {id}; see `keyrelay outbox list`");
            };
            println!("notice       {}", n.id);
            println!("state        {}", n.state);
            println!("target       {}", shown(&n.target));
            println!("event        {}", n.event_type);
            println!("grant        {}", or_dash(n.grant_id.as_deref().map(shown)));
            println!("tries        {}", n.attempts);
            println!("created      {}", n.created_at.to_rfc3339());
            println!("owed since   {}", n.owed_since.to_rfc3339());
            match n.state.as_str() {
                "pending" => println!("next try     {}", n.run_at.to_rfc3339()),
                "sent" => println!(
                    "sent         {}",
                    or_dash(n.sent_at.map(|t| t.to_rfc3339()))
                ),
                _ => {}
            }
            println!("last status  {}", or_dash(n.last_status));
            if let Some(error) = &n.last_error {
                println!("last error   {}", wrapped(error, 90, 13));
            }
            println!("says         {}", shown(&n.data.to_string()));
            if n.key_id.is_some() {
                println!("             (and the key, read when it is sent)");
            }
            if n.state == "failed" {
                println!(
                    "\nonce the receiver is fixed: keyrelay outbox retry {}",
                    n.id
                );
            }
        }
        OutboxCommand::Retry { ids } => {
            let retried = outbox::retry(db, &ids).await?;
            for id in &ids {
                if retried.contains(id) {
                    println!("{id}: queued to send again");
                } else {
                    match outbox::get(db, *id).await? {
                        None => println!("{id}: no such notice"),
                        Some(n) => println!("{id}: left alone; it is {}, not failed", n.state),
                    }
                }
            }
            if retried.len() < ids.len() {
                bail!(
                    "{} of {} notices were not queued",
                    ids.len() - retried.len(),
                    ids.len()
                );
            }
        }
    }
    Ok(())
}
