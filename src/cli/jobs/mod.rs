//! `keyrelay jobs list|show|retry|cancel`.

use crate::db::Db;
use anyhow::bail;
use clap::Subcommand;

use super::output::{json, or_dash, shown, table};
use crate::configuration::Settings;
use crate::domain::{Actor, GrantId, JobState};
use crate::ops::jobs::{self, ActionResult, BulkAction};
use crate::store::search::{self, Cursor, JobFilter, parse_when};
use chrono::{DateTime, Utc};

mod show;

use show::show;

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Jobs, newest first, a page at a time; the filters combine.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// How many jobs to show (1 to 1000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=1000))]
        limit: i64,
        /// The next page: the cursor printed under the previous one.
        #[arg(long, value_name = "CURSOR", value_parser = parse_cursor)]
        after: Option<Cursor>,
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One job, its key (masked) and every attempt.
    Show {
        /// The grant's id.
        #[arg(value_parser = parse_grant_id)]
        grant_id: GrantId,
        /// One JSON document instead of text.
        #[arg(long)]
        json: bool,
        /// Print the key in full.
        #[arg(long)]
        show_key: bool,
    },
    /// Replay failed or cancelled jobs with a fresh attempt budget.
    Retry {
        /// The grants whose jobs to replay.
        #[arg(
            required_unless_present = "all_failed",
            conflicts_with = "all_failed",
            value_parser = parse_grant_id
        )]
        grant_ids: Vec<GrantId>,
        /// Every failed job (asks first unless --yes).
        #[arg(long)]
        all_failed: bool,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        /// List what would be replayed and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Retry or cancel every job matching a filter (at most 10,000 a run), after showing the
    /// count and asking; audited as one `bulk_retry`/`bulk_cancel` entry and in each job's trail.
    Bulk {
        /// What to do to the matching jobs.
        #[arg(value_enum)]
        action: BulkAction,
        #[command(flatten)]
        filter: FilterArgs,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        /// Only say how many jobs it would change.
        #[arg(long)]
        dry_run: bool,
    },
    /// Stop trying; a reserved key Dodo cannot have accepted goes back to the pool.
    Cancel {
        /// The grants whose jobs to stop.
        #[arg(required = true, value_parser = parse_grant_id)]
        grant_ids: Vec<GrantId>,
    },
}

/// Which jobs (`jobs list`, `jobs bulk`); every filter given must match.
#[derive(Debug, clap::Args)]
pub struct FilterArgs {
    /// Only jobs in this state: queued, running, retrying, waiting_for_keys, delivered,
    /// failed or cancelled.
    #[arg(long, value_parser = parse_state)]
    state: Option<JobState>,
    /// Only this customer's grants (Dodo's customer id, e.g. cus_123).
    #[arg(long, value_name = "CUSTOMER_ID")]
    customer: Option<String>,
    /// Only the grants of this payment (Dodo's payment id, e.g. pay_123).
    #[arg(long, value_name = "PAYMENT_ID")]
    payment: Option<String>,
    /// A grant, customer or payment id, or the last four characters of a key (what its
    /// masked form shows).
    #[arg(long, value_name = "TEXT")]
    search: Option<String>,
    /// Only the jobs of this pool's entitlement.
    #[arg(long, value_name = "NAME")]
    pool: Option<String>,
    /// Only jobs created since then: an RFC 3339 time, or an age such as 30m, 6h or 2d.
    #[arg(long, value_name = "WHEN", value_parser = parse_when)]
    since: Option<DateTime<Utc>>,
    /// Only jobs created before then (same forms as --since).
    #[arg(long, value_name = "WHEN", value_parser = parse_when)]
    until: Option<DateTime<Utc>>,
}

impl From<FilterArgs> for JobFilter {
    fn from(a: FilterArgs) -> JobFilter {
        JobFilter {
            search: a.search,
            customer: a.customer,
            payment: a.payment,
            state: a.state,
            pool: a.pool,
            since: a.since,
            until: a.until,
        }
    }
}

fn parse_state(s: &str) -> Result<JobState, String> {
    JobState::parse(s).ok_or_else(|| {
        let names: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
        format!("unknown state `{s}`; one of {}", names.join(", "))
    })
}

fn parse_cursor(s: &str) -> Result<Cursor, String> {
    Cursor::decode(s).ok_or_else(|| "not a cursor printed by `keyrelay jobs list`".into())
}

fn parse_grant_id(s: &str) -> Result<GrantId, String> {
    GrantId::parse(s).map_err(|e| e.to_string())
}

pub async fn run(db: &Db, settings: &Settings, command: JobsCommand) -> anyhow::Result<()> {
    match command {
        JobsCommand::List {
            filter,
            limit,
            after,
            json,
        } => list(db, filter, limit, after, json).await,
        JobsCommand::Show {
            grant_id,
            json,
            show_key,
        } => show(db, settings, grant_id, json, show_key).await,
        JobsCommand::Retry {
            grant_ids,
            all_failed,
            yes,
            dry_run,
        } => retry(db, grant_ids, all_failed, yes, dry_run).await,
        JobsCommand::Bulk {
            action,
            filter,
            yes,
            dry_run,
        } => bulk(db, action, filter, yes, dry_run).await,
        JobsCommand::Cancel { grant_ids } => report(
            jobs::cancel_jobs(db, &grant_ids, Actor::Cli).await?,
            "cancelled",
        ),
    }
}

/// `jobs list`: a page of jobs as a table or JSON, and how to see the next.
async fn list(
    db: &Db,
    filter: FilterArgs,
    limit: i64,
    after: Option<Cursor>,
    as_json: bool,
) -> anyhow::Result<()> {
    let filter = JobFilter::from(filter);
    check_pool_exists(db, &filter).await?;
    let list = search::find_jobs(db, &filter, after.as_ref(), limit).await?;
    if as_json {
        return json(&list);
    }
    if list.is_empty() {
        println!("no jobs match {}", shown(&filter.describe()));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|j| {
            vec![
                j.grant_id.to_string(),
                j.state.to_string(),
                j.attempts.to_string(),
                j.entitlement_id.to_string(),
                j.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                or_dash(j.last_http_status),
                or_dash(j.last_error.as_deref().map(|e| truncate(e, 60))),
            ]
        })
        .collect();
    table(
        &[
            "grant",
            "state",
            "attempts",
            "entitlement",
            "created",
            "http",
            "last error",
        ],
        &rows,
    );
    if list.len() as i64 == limit
        && let Some(last) = list.last()
    {
        println!(
            "showing {limit}; the next page: keyrelay jobs list ... --after {} (or a larger --limit, up to 1000)",
            Cursor::after(last).encode()
        );
    }
    Ok(())
}

/// `jobs retry`: the named jobs, or every failed one (asked first), queued again.
async fn retry(
    db: &Db,
    grant_ids: Vec<GrantId>,
    all_failed: bool,
    yes: bool,
    dry_run: bool,
) -> anyhow::Result<()> {
    let ids = if all_failed {
        jobs::failed_grant_ids(db).await?
    } else {
        grant_ids
    };
    if ids.is_empty() {
        println!("no failed jobs");
        return Ok(());
    }
    if dry_run {
        for id in &ids {
            println!("would retry {id}");
        }
        println!("{} job(s) would be queued again", ids.len());
        return Ok(());
    }
    if all_failed && !yes && !confirm(&format!("Queue {} failed job(s) again?", ids.len()))? {
        bail!("nothing retried; pass --yes to skip the question, or --dry-run to list them");
    }
    report(
        jobs::retry_jobs(db, &ids, Actor::Cli).await?,
        "queued again",
    )?;
    Ok(())
}

/// `jobs bulk`: retry or cancel what a filter matches, counted and confirmed first.
async fn bulk(
    db: &Db,
    action: BulkAction,
    filter: FilterArgs,
    yes: bool,
    dry_run: bool,
) -> anyhow::Result<()> {
    let filter = JobFilter::from(filter);
    check_pool_exists(db, &filter).await?;
    let count = jobs::bulk_count(db, action, &filter).await?;
    let described = shown(&filter.describe());
    let what = format!("{count} {} job(s) match {described}", action.applies_to());
    if count == 0 || dry_run {
        println!("{what}; nothing changed");
        return Ok(());
    }
    let capped = count.min(jobs::BULK_MAX);
    if !yes && !confirm(&format!("{what}. {} {capped} of them?", action.as_str()))? {
        bail!("nothing changed; pass --yes to skip the question, or --dry-run to count");
    }
    let done = match jobs::bulk(db, action, &filter, count, Actor::Cli).await? {
        jobs::BulkRun::Changed(done) => done,
        jobs::BulkRun::MoreThanConfirmed {
            matching,
            confirmed,
        } => bail!(
            "nothing changed: {matching} jobs match {described} now, {confirmed} when you said yes; run it again to see them"
        ),
    };
    println!("{}: {done} job(s) changed", action.as_str());
    if count > jobs::BULK_MAX {
        println!("more match than one run changes; run it again for the rest");
    }
    Ok(())
}

/// A filter naming a pool that does not exist is a typo, not "no jobs".
async fn check_pool_exists(db: &Db, filter: &JobFilter) -> anyhow::Result<()> {
    if let Some(name) = &filter.pool
        && !crate::pool::pool_names(db).await?.contains(name)
    {
        bail!(
            "there is no pool named `{}`; `keyrelay pool list` shows the pools",
            shown(name)
        );
    }
    Ok(())
}

fn report(results: Vec<(GrantId, ActionResult)>, done: &str) -> anyhow::Result<()> {
    let mut failures = 0;
    for (grant_id, result) in results {
        match result {
            ActionResult::Done => println!("{grant_id}: {done}"),
            ActionResult::DoneKeyKept => println!(
                "{grant_id}: {done}; its key stays reserved to it because an earlier attempt got no clear answer from Dodo (Dodo may hold it)"
            ),
            ActionResult::NotFound => {
                failures += 1;
                eprintln!("{grant_id}: no such job");
            }
            ActionResult::WrongState { state } => {
                failures += 1;
                eprintln!("{grant_id}: not possible while the job is {state}");
            }
        }
    }
    if failures > 0 {
        bail!("{failures} job(s) could not be changed");
    }
    Ok(())
}

/// Asks on the terminal; without one (a script), the answer is no.
fn confirm(question: &str) -> anyhow::Result<bool> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        return Ok(false);
    }
    print!("{question} [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(max - 1).collect::<String>())
    }
}
