//! `keyrelay demo`: the whole flow on this machine with no Dodo account. A throwaway database,
//! keyrelay and the sandbox in one process, a pool of generated keys, grants sold with faults
//! injected, progress while they are fulfilled, and a summary checked against the sandbox.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::bail;
use indicatif::{ProgressBar, ProgressStyle};

use crate::configuration::{RateLimitTier, Settings};
use crate::domain::{JobState, LicenseKey};
use crate::harness::LocalStack;
use crate::pool::{NewPool, add_pool, import_keys, keyfile::ParsedKeys};
use crate::sandbox::FaultRates;
use crate::sources::Source;
use crate::startup::Role;
use crate::store::{read, stock};

const ENTITLEMENT: &str = "ent_demo_pro_license";
const GENERATED: &str = "ent_demo_generated";
const SIGNED: &str = "ent_demo_signed";
const VENDOR: &str = "ent_demo_vendor";

/// Which pool sells grant `i`: one in ten each to the generate, sign and http pools.
fn entitlement_of_sale(i: usize) -> &'static str {
    match i % 10 {
        1 => GENERATED,
        2 => SIGNED,
        3 => VENDOR,
        _ => ENTITLEMENT,
    }
}

pub struct DemoOptions {
    pub grants: usize,
    pub keep_database: bool,
    /// The public half of the demo's signing key.
    pub public_key: Option<String>,
}

pub async fn run(mut settings: Settings, options: DemoOptions) -> anyhow::Result<bool> {
    println!(
        "keyrelay demo: {} grants, sandbox Dodo with injected faults\n",
        options.grants
    );
    crate::db::create_scratch_database(&mut settings.database, "keyrelay_demo").await?;
    println!(
        "  database   {} (throwaway)",
        settings.database_url_redacted()
    );
    settings.worker.backoff_base_ms = 100;
    settings.worker.backoff_max_ms = 2_000;
    settings.worker.poll_interval_ms = 100;
    settings.dodo.rate_limit = RateLimitTier::Off;
    // Keys are sealed under the configured encryption key, else under one made for this run
    // and forgotten with it (the database is thrown away too, unless kept).
    let own_key = settings.keys.encryption_keys.is_none();
    if own_key {
        settings.keys.encryption_keys = Some(crate::crypto::new_encryption_key());
    }
    // The demo signs with a key of its own.
    let (signing_key, public_key) = crate::sources::sign::new_signing_key();
    settings.keys.signing_key = Some(signing_key);
    let options = DemoOptions {
        public_key: Some(public_key),
        ..options
    };
    let result = demo(&settings, &options).await;
    if options.keep_database {
        keep(&settings, own_key)?;
    } else if let Err(e) = crate::db::drop_database(&settings).await {
        eprintln!("could not drop the demo database: {e}");
    }
    result
}

/// Writes the settings that open the kept database to a file only this user can read (the
/// encryption key is a secret: it is not printed), and says how to use it.
fn keep(settings: &Settings, own_key: bool) -> anyhow::Result<()> {
    use secrecy::ExposeSecret;
    let name = settings
        .database
        .url
        .expose_secret()
        .rsplit('/')
        .next()
        .unwrap_or("keyrelay_demo")
        .to_string();
    println!("\n  kept database {}", settings.database_url_redacted());
    let mut env = format!("DATABASE_URL={}\n", settings.database.url.expose_secret());
    if own_key && let Some(key) = &settings.keys.encryption_keys {
        env.push_str(&format!(
            "KEYRELAY_ENCRYPTION_KEY={}\n",
            key.expose_secret()
        ));
    }
    if let Some(key) = &settings.keys.signing_key {
        env.push_str(&format!(
            "# The demo-signed pool signs with this key.\nKEYRELAY_SIGNING_KEY={}\n",
            key.expose_secret()
        ));
    }
    // What `keyrelay serve` needs to serve this database against `keyrelay sandbox` (its
    // defaults), the demo-vendor pool's key source included.
    let sandbox = "http://127.0.0.1:8090";
    env.push_str(&format!(
        "# `keyrelay serve` with these fulfils against `keyrelay sandbox` (run it first).\n\
         DODO_PAYMENTS_BASE_URL={sandbox}\n\
         DODO_PAYMENTS_API_KEY={}\n\
         DODO_PAYMENTS_WEBHOOK_KEY={}\n\
         KEYRELAY_DODO__RATE_LIMIT=off\n\
         KEYRELAY_KEY_SOURCES__{}__URL={sandbox}/vendor/licenses\n\
         KEYRELAY_KEY_SOURCES__{}__SECRET={}\n\
         KEYRELAY_KEY_SOURCES__{}__KEY_POINTER=/license/key\n",
        super::sandbox::DEFAULT_API_KEY,
        super::sandbox::DEFAULT_WEBHOOK_SECRET,
        crate::harness::SANDBOX_VENDOR.to_uppercase(),
        crate::harness::SANDBOX_VENDOR.to_uppercase(),
        super::sandbox::DEFAULT_WEBHOOK_SECRET,
        crate::harness::SANDBOX_VENDOR.to_uppercase(),
    ));
    let file = std::path::PathBuf::from(format!("{name}.env"));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    std::io::Write::write_all(&mut options.open(&file)?, env.as_bytes())
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", file.display()))?;
    println!(
        "  {} holds its DATABASE_URL{}, the demo's signing key and the sandbox's settings (readable only by you); point the CLI at it with:",
        file.display(),
        if own_key {
            ", the encryption key its keys are sealed with"
        } else {
            ""
        }
    );
    println!("    set -a; . ./{}; set +a", file.display());
    println!(
        "    keyrelay jobs list --state delivered      # or pool list, events list, jobs show GRANT"
    );
    println!(
        "    keyrelay sandbox & keyrelay serve         # serve it as it is, against the sandbox"
    );
    println!(
        "  drop it when done: {} (and delete {})",
        drop_command(settings.database.url.expose_secret(), &name),
        file.display()
    );
    Ok(())
}

/// The `psql` command that drops database `name` on the server of `url`, naming its host,
/// port and user (never its password).
fn drop_command(url: &str, name: &str) -> String {
    let Ok(url) = url::Url::parse(url) else {
        return format!("psql -c 'DROP DATABASE \"{name}\"'");
    };
    let mut command = String::from("psql");
    if let Some(host) = url.host_str() {
        command.push_str(&format!(" -h {host}"));
    }
    if let Some(port) = url.port() {
        command.push_str(&format!(" -p {port}"));
    }
    if !url.username().is_empty() {
        command.push_str(&format!(" -U {}", url.username()));
    }
    format!("{command} -d postgres -c 'DROP DATABASE \"{name}\"'")
}

async fn demo(settings: &Settings, options: &DemoOptions) -> anyhow::Result<bool> {
    let stack = LocalStack::start(settings.clone(), Role::All).await?;
    let sandbox = stack.sandbox.sandbox.clone();
    let sandbox = &sandbox;
    let url = stack.webhook_url.clone().expect("role all serves webhooks");
    println!("  keyrelay   {url}");
    println!("  sandbox    {}", stack.sandbox.base_url);

    let extra = options.grants / 5 + 5;
    let keys: Vec<LicenseKey> = (0..options.grants + extra)
        .map(|i| {
            LicenseKey::parse(&format!(
                "DEMO-{:04X}-{:04X}-{:04}",
                rand::random::<u16>(),
                rand::random::<u16>(),
                i
            ))
        })
        .collect::<Result<_, _>>()?;
    // Dodo already holds the first key: keyrelay must reject it and use the next.
    sandbox.add_existing_key(keys[0].reveal());
    add_pool(
        &stack.pool,
        &NewPool {
            name: "demo-pro".into(),
            entitlement_id: ENTITLEMENT.into(),
            low_stock: 5,
            ..Default::default()
        },
    )
    .await?;
    let parsed = ParsedKeys {
        keys,
        ..Default::default()
    };
    let report = import_keys(
        &stack.pool,
        &settings.keys.vault()?,
        "demo-pro",
        &parsed,
        false,
        |_| {},
    )
    .await?;
    println!(
        "  pool       demo-pro (list): imported {} keys (one of them already exists at Dodo)",
        report.imported
    );
    for (name, entitlement, source, template) in [
        (
            "demo-gen",
            GENERATED,
            Source::Generate,
            Some("GEN-XXXXX-XXXXX-XXXXX-XXXXX"),
        ),
        ("demo-signed", SIGNED, Source::Sign, None),
        ("demo-vendor", VENDOR, Source::Http, None),
    ] {
        let new = NewPool {
            name: name.into(),
            entitlement_id: entitlement.into(),
            source: Some(source),
            template: template.map(str::to_string),
            endpoint: (source == Source::Http).then(|| crate::harness::SANDBOX_VENDOR.into()),
            ..Default::default()
        };
        add_pool(&stack.pool, &new).await?;
    }
    println!("  pool       demo-gen (generate): keys made from GEN-XXXXX-XXXXX-XXXXX-XXXXX");
    println!("  pool       demo-signed (sign): Ed25519-signed keys an app checks offline");
    println!("  pool       demo-vendor (http): keys issued by the sandbox's license vendor");
    println!("             (one sale in ten goes to each of these three)\n");

    sandbox.set_fault_rates(FaultRates {
        latency_ms: 15,
        server_error: 0.08,
        apply_then_500: 0.05,
        rate_limited: 0.01,
        retry_after_secs: 1,
    });
    println!("  faults     8% 500, 5% applied-then-500, 1% 429 (Retry-After 1 s), 15 ms latency");
    println!("  webhooks   every 10th is delivered twice, as Dodo's retries do\n");

    let started = Instant::now();
    let mut answered: HashMap<String, Instant> = HashMap::new();
    let mut webhooks_sent = 0;
    let sales = (0..options.grants).map(|i| {
        let url = url.clone();
        async move {
            let grant = sandbox.create_grant(entitlement_of_sale(i), None);
            let hook = sandbox.webhook_for(&grant, "entitlement_grant.created");
            let status = sandbox.send_webhook(&url, &hook).await?;
            let at = Instant::now();
            let mut sent = 1;
            if i % 10 == 0 {
                sandbox.send_webhook(&url, &hook).await?;
                sent += 1;
            }
            anyhow::Ok((grant.id, status, at, sent))
        }
    });
    let mut stream = futures_util::stream::iter(sales).buffer_unordered(16);
    use futures_util::StreamExt;
    while let Some(sale) = stream.next().await {
        let (grant_id, status, at, sent) = sale?;
        if status != 200 {
            bail!("keyrelay answered {status} to a webhook");
        }
        webhooks_sent += sent;
        answered.insert(grant_id, at);
    }
    drop(stream);

    let bar = ProgressBar::new(options.grants as u64);
    bar.set_style(
        ProgressStyle::with_template("  {spinner} [{bar:40}] {pos}/{len} grants settled  {msg}")?
            .progress_chars("=> "),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let counts = loop {
        let counts: HashMap<JobState, i64> = stock::count_jobs_by_state(&stack.pool)
            .await?
            .into_iter()
            .collect();
        let settled =
            counts[&JobState::Delivered] + counts[&JobState::Failed] + counts[&JobState::Cancelled];
        bar.set_position(settled as u64);
        bar.set_message(format!("{} retrying", counts[&JobState::Retrying]));
        if settled as usize >= options.grants || Instant::now() > deadline {
            break counts;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    bar.finish();
    let elapsed = started.elapsed();

    let log = sandbox.fulfill_log();
    let mut first_request: HashMap<&str, Instant> = HashMap::new();
    for r in &log {
        first_request
            .entry(r.grant_id.as_str())
            .or_insert(r.received);
    }
    let mut pickup: Vec<Duration> = answered
        .iter()
        .filter_map(|(g, at)| {
            first_request
                .get(g.as_str())
                .map(|f| f.saturating_duration_since(*at))
        })
        .collect();
    pickup.sort();
    let (retried, ours_match) = read::demo_figures(&stack.pool).await?;
    let pools = crate::pool::list_pools(&stack.pool).await?;
    let demo_pool = pools
        .iter()
        .find(|p| p.name == "demo-pro")
        .expect("the demo's list pool");
    let faults = log
        .iter()
        .filter(|r| r.status != 200 && r.status != 409)
        .count();

    // Cross-check with Dodo's side: every grant delivered once, no key twice.
    let grants = sandbox.grants();
    let delivered_at_dodo = grants.iter().filter(|g| g.license_key.is_some()).count();
    let distinct_keys: HashSet<&str> = grants.iter().filter_map(|g| g.key_value()).collect();
    let public_key = options
        .public_key
        .as_deref()
        .map(crate::sources::sign::parse_public_key)
        .transpose()?;
    let signed: Vec<_> = grants
        .iter()
        .filter(|g| g.entitlement_id == SIGNED)
        .collect();
    let signed_ok = signed
        .iter()
        .filter(|g| {
            let payload = g
                .key_value()
                .zip(public_key.as_ref())
                .and_then(|(key, pk)| crate::sources::sign::verify(key, pk).ok());
            payload.is_some_and(|p| p.grant_id == g.id)
        })
        .count();

    println!("\nSummary ({:.1} s)", elapsed.as_secs_f64());
    println!("  grants sold                 {}", options.grants);
    println!("  webhooks sent               {webhooks_sent} (duplicates ignored)");
    println!(
        "  delivered                   {}",
        counts[&JobState::Delivered]
    );
    println!("  needed retries              {retried}");
    println!(
        "  failed                      {}",
        counts[&JobState::Failed]
    );
    println!(
        "  faults injected             {faults} of {} fulfill calls",
        log.len()
    );
    println!(
        "  keys left                   {} available, {} rejected (already at Dodo)",
        demo_pool.available, demo_pool.rejected
    );
    println!(
        "  pickup latency              p50 {}  p90 {}  p99 {}",
        ms(&pickup, 50),
        ms(&pickup, 90),
        ms(&pickup, 99)
    );
    println!(
        "                              from keyrelay answering a grant's webhook to its first call to Dodo for it.\n\
         \x20                             Injected faults lengthen it: each 429 makes every worker wait out Dodo's\n\
         \x20                             1 s Retry-After, and grants sold meanwhile wait too. `keyrelay bench\n\
         \x20                             latency` measures an idle keyrelay with no faults (a few ms)."
    );
    println!(
        "  at Dodo                     {delivered_at_dodo} grants hold a key, {} distinct keys",
        distinct_keys.len()
    );
    println!(
        "  signed keys                 {signed_ok} of {} verify with the demo's public key and name their grant",
        signed.len()
    );
    let licenses = sandbox.vendor_licenses();
    let vendor_grants = grants.iter().filter(|g| g.entitlement_id == VENDOR).count();
    let vendor_ok = grants
        .iter()
        .filter(|g| g.entitlement_id == VENDOR)
        .filter(|g| {
            licenses
                .iter()
                .any(|l| l.grant_id == g.id && g.key_value() == Some(l.key.as_str()))
        })
        .count();
    println!(
        "  vendor keys                 {vendor_ok} of {vendor_grants} grants hold the license the vendor issued for them ({} issued)",
        licenses.len()
    );

    let ok = counts[&JobState::Delivered] as usize == options.grants
        && delivered_at_dodo == options.grants
        && distinct_keys.len() == options.grants
        && ours_match as usize == options.grants
        && signed_ok == signed.len()
        && vendor_ok == vendor_grants;
    println!(
        "\n  {}",
        if ok {
            "every grant got exactly one key, and no key went to two grants"
        } else {
            "NOT every grant was delivered exactly once: see `keyrelay jobs list` with --keep-database"
        }
    );
    stack.stop().await?;
    Ok(ok)
}

/// The p-th percentile of sorted durations, in milliseconds.
pub fn ms(sorted: &[Duration], p: usize) -> String {
    percentile(sorted, p).map_or("-".into(), |d| {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    })
}

pub fn percentile(sorted: &[Duration], p: usize) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p as f64 / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_cleanup_hint_names_host_port_and_user_but_no_password() {
        assert_eq!(
            super::drop_command(
                "postgres://shop:s3cret@db.internal:5433/keyrelay_demo_1",
                "keyrelay_demo_1"
            ),
            "psql -h db.internal -p 5433 -U shop -d postgres -c 'DROP DATABASE \"keyrelay_demo_1\"'"
        );
    }
}
