//! `keyrelay pool add|import|list`.

use std::io::Read;
use std::path::PathBuf;

use crate::db::Db;
use anyhow::Context;
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};

use super::output::{json, or_dash, shown, table, wrapped};
use crate::configuration::Settings;
use crate::crypto::Vault;
use crate::pool::{self, NewPool, keyfile};
use crate::sources::Source;

#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Create a key pool bound to one Dodo entitlement.
    Add {
        /// Letters, digits, `-`, `_` and `.`; at most 64.
        #[arg(value_parser = parse_pool_name)]
        name: String,
        /// The Dodo entitlement whose grants this pool serves (one pool per entitlement).
        #[arg(long = "entitlement", value_name = "ENT_ID", value_parser = parse_entitlement)]
        entitlement_id: String,
        /// Warn when fewer than N keys are available.
        #[arg(long, default_value_t = 0, value_name = "N",
              value_parser = clap::value_parser!(u32).range(0..=i64::from(i32::MAX)))]
        low_stock: u32,
        /// Sent with every key from this pool (else the entitlement's setting).
        #[arg(long, value_name = "N",
              value_parser = clap::value_parser!(u32).range(1..=i64::from(i32::MAX)))]
        activations_limit: Option<u32>,
        /// Keys expire N days after delivery (else the entitlement's setting); at most 36500.
        #[arg(long, value_name = "N",
              value_parser = clap::value_parser!(u32).range(1..=i64::from(pool::MAX_EXPIRY_DAYS)))]
        expires_in_days: Option<u32>,
        /// Where keys come from: imported (list), made from --template (generate), or
        /// Ed25519-signed for offline checks (sign; needs KEYRELAY_SIGNING_KEY), or issued by
        /// an endpoint (http; needs --endpoint).
        #[arg(long, value_enum, default_value = "list")]
        source: Source,
        /// For --source generate: each X becomes one random character, the rest is kept.
        #[arg(long, value_name = "T")]
        template: Option<String>,
        /// For --source generate: the characters an X is drawn from (default Crockford
        /// base32, without look-alikes).
        #[arg(long, value_name = "CHARS")]
        alphabet: Option<String>,
        /// Accept a template with less than 80 bits of randomness (guessable keys).
        #[arg(long)]
        allow_weak_template: bool,
        /// For --source http: the [key_sources.NAME] in keyrelay.toml that issues the keys.
        #[arg(long, value_name = "NAME")]
        endpoint: Option<String>,
        /// For list pools whose keys really have spaces inside (else an imported line with
        /// spaces inside is refused as no key).
        #[arg(long)]
        keys_with_spaces: bool,
    },
    /// Load keys: one per line, or a CSV with a `key` column. `-` or no FILE reads stdin.
    Import {
        /// The pool to load keys into.
        name: String,
        /// One key per line, or a CSV with a `key` column; `-` or nothing reads standard input.
        file: Option<PathBuf>,
        /// Count what would be imported without storing anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// The pool's audit trail: imports and what happened to its keys, newest first.
    History {
        /// The pool's name.
        name: String,
        /// How many entries to show.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Stock per pool, sales over the last day and week, and when the stock runs out at that
    /// rate.
    List {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn parse_pool_name(raw: &str) -> Result<String, String> {
    pool::check_pool_name(raw).map(str::to_string)
}

fn parse_entitlement(raw: &str) -> Result<String, String> {
    crate::domain::EntitlementId::parse(raw)
        .map(|e| e.to_string())
        .map_err(|e| format!("{e}; copy the entitlement id from Dodo's dashboard"))
}

pub async fn run(db: &Db, settings: &Settings, command: PoolCommand) -> anyhow::Result<()> {
    match command {
        PoolCommand::Add {
            name,
            entitlement_id,
            low_stock,
            activations_limit,
            expires_in_days,
            source,
            template,
            alphabet,
            allow_weak_template,
            endpoint,
            keys_with_spaces,
        } => {
            let new = NewPool {
                name,
                entitlement_id,
                low_stock,
                activations_limit,
                expires_in_days,
                source: Some(source),
                template,
                alphabet,
                allow_weak_template,
                endpoint,
                keys_with_spaces,
            };
            add(db, settings, new).await
        }
        PoolCommand::Import {
            name,
            file,
            dry_run,
        } => import(db, &settings.keys.vault()?, &name, file, dry_run).await,
        PoolCommand::History { name, limit, json } => history(db, &name, limit, json).await,
        PoolCommand::List { json } => list(db, json).await,
    }
}

/// `pool add`: creates the pool (its key source checked first) and says what comes next.
async fn add(db: &Db, settings: &Settings, new: NewPool) -> anyhow::Result<()> {
    let source = new.source.unwrap_or(Source::List);
    if let Some(name) = new.endpoint.as_deref()
        && !settings.key_sources.contains_key(name)
    {
        anyhow::bail!(
            "no key source named `{name}`: {}",
            crate::configuration::how_to_add_key_source(name)
        );
    }
    let resumed = pool::add_pool(db, &new).await?;
    let next = match source {
        Source::List => format!("load keys with `keyrelay pool import {} FILE`", new.name),
        Source::Generate => "keys are made from its template as grants arrive".into(),
        Source::Sign => "keys are signed as grants arrive; workers need KEYRELAY_SIGNING_KEY (`keyrelay keys new-signing-key` makes one)".into(),
        Source::Http => "keys are asked of the endpoint as grants arrive".into(),
    };
    println!(
        "created {source} pool `{}` for entitlement {}; {next}",
        new.name, new.entitlement_id
    );
    if resumed > 0 {
        println!("{resumed} job(s) waiting for this entitlement are queued again");
    }
    Ok(())
}

/// `pool history`: the pool's audit trail, newest first.
async fn history(db: &Db, name: &str, limit: i64, as_json: bool) -> anyhow::Result<()> {
    let Some(entries) = crate::store::audit::for_pool(db, name, limit).await? else {
        anyhow::bail!("no pool named `{name}`; see `keyrelay pool list`");
    };
    if as_json {
        return json(&entries);
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.at.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
                e.actor.clone(),
                e.action.clone(),
                or_dash(e.grant_id.as_deref()),
                or_dash(e.key_id),
                or_dash(e.batch_id.as_deref()),
                or_dash(e.detail.as_deref()),
            ]
        })
        .collect();
    table(
        &[
            "time", "actor", "action", "grant", "key id", "batch", "detail",
        ],
        &rows,
    );
    if entries.len() as i64 == limit {
        println!("showing the newest {limit}; pass a larger --limit to see more");
    }
    Ok(())
}

/// `pool list`: every pool, its stock, sales and forecast, and what is broken.
async fn list(db: &Db, as_json: bool) -> anyhow::Result<()> {
    let pools = pool::list_pools(db).await?;
    if as_json {
        return json(&pools);
    }
    if pools.is_empty() {
        println!("no pools yet; create one with `keyrelay pool add NAME --entitlement ENT_ID`");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = pools
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.entitlement_id.clone(),
                p.source.to_string(),
                match (p.source.makes_keys(), &p.source_problem) {
                    (true, Some(_)) => "none".into(),
                    (true, None) => "unlimited".into(),
                    (false, _) => p.available.to_string(),
                },
                p.reserved.to_string(),
                p.delivered.to_string(),
                p.rejected.to_string(),
                p.suspended.to_string(),
                p.revoked.to_string(),
                if p.source_problem.is_some() {
                    "BROKEN".into()
                } else if p.low_stock {
                    format!("LOW (< {})", p.low_stock_threshold)
                } else {
                    "ok".into()
                },
                format!("{} / {}", p.sold_last_day, p.sold_last_week),
                p.forecast(),
                or_dash(p.activations_limit),
                or_dash(p.expires_in_days),
            ]
        })
        .collect();
    table(
        &[
            "name",
            "entitlement",
            "source",
            "available",
            "reserved",
            "delivered",
            "rejected",
            "suspended",
            "revoked",
            "stock",
            "sold day/week",
            "runs out",
            "activations",
            "expiry_days",
        ],
        &rows,
    );
    for p in pools.iter().filter(|p| p.source_problem.is_some()) {
        println!(
            "\nBROKEN: pool `{}` cannot get keys: {}\n        (found by a worker at {})",
            shown(&p.name),
            wrapped(p.source_problem.as_deref().unwrap_or_default(), 100, 8),
            or_dash(
                p.source_checked_at
                    .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC"))
            )
        );
    }
    Ok(())
}

async fn import(
    db: &Db,
    vault: &Vault,
    name: &str,
    file: Option<PathBuf>,
    dry_run: bool,
) -> anyhow::Result<()> {
    let Some(spaces_inside) = crate::store::pools::keys_with_spaces(db, name).await? else {
        anyhow::bail!("no pool named `{name}`; see `keyrelay pool list`");
    };
    let bytes = match file.as_deref() {
        None => read_stdin()?,
        Some(p) if p.as_os_str() == "-" => read_stdin()?,
        Some(p) => {
            std::fs::read(p).with_context(|| format!("cannot read key file {}", p.display()))?
        }
    };
    let source = match file.as_deref() {
        Some(p) if p.as_os_str() != "-" => p.display().to_string(),
        _ => "stdin".to_string(),
    };
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{source} is not UTF-8 text (byte {}); export the keys as plain text or CSV",
            e.utf8_error().valid_up_to()
        )
    })?;
    let parsed = keyfile::parse_keys(&text, keyfile::KeyRules { spaces_inside });
    for (line, reason) in parsed.invalid.iter().take(20) {
        eprintln!("{source}:{line}: skipped: {reason}");
    }
    if parsed.invalid.len() > 20 {
        eprintln!("... and {} more invalid lines", parsed.invalid.len() - 20);
    }
    if parsed.keys.is_empty() && parsed.duplicates_in_file == 0 {
        match parsed.invalid.len() {
            0 => anyhow::bail!(
                "{source} holds no keys (it is empty, or only blank lines and # comments); nothing imported"
            ),
            n => anyhow::bail!(
                "none of the {n} key lines in {source} is a valid key (see above); nothing imported"
            ),
        }
    }
    let bar = ProgressBar::new(parsed.keys.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} keys {per_sec}")
            .expect("valid template"),
    );
    if parsed.keys.len() < 20_000 {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let report = pool::import_keys(db, vault, name, &parsed, dry_run, |n| bar.inc(n)).await?;
    bar.finish_and_clear();
    println!(
        "{}imported {}, duplicates {}, invalid {}",
        if dry_run { "dry run: would have " } else { "" },
        report.imported,
        report.duplicates,
        report.invalid
    );
    if !dry_run {
        eprintln!("import batch {}", report.batch_id);
        if report.resumed_jobs > 0 {
            eprintln!(
                "{} job(s) waiting for keys are queued again",
                report.resumed_jobs
            );
        }
    }
    Ok(())
}

fn read_stdin() -> anyhow::Result<Vec<u8>> {
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        eprintln!(
            "reading keys from the terminal: paste them, one per line, then press Ctrl-D (or pass a FILE)"
        );
    }
    let mut buf = Vec::new();
    std::io::stdin()
        .read_to_end(&mut buf)
        .context("cannot read keys from stdin")?;
    Ok(buf)
}
