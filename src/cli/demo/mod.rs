//! `keyrelay demo`: the whole flow on this machine with no Dodo account. A throwaway database,
//! keyrelay and the sandbox in one process, a pool of generated keys, grants sold with faults
//! injected, progress while they are fulfilled, a summary checked against the sandbox, and a
//! refund after delivery that reaches the vendor, the shop and the signed revocation list.

mod refund;
mod sale;
mod setup;
mod summary;
mod verifiers;

use std::time::{Duration, Instant};

use crate::configuration::{RateLimitTier, Settings};
use crate::harness::LocalStack;
use crate::startup::Role;

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
         KEYRELAY_KEY_SOURCES__{vendor}__KEY_POINTER=/license/key\n\
         KEYRELAY_KEY_SOURCES__{vendor}__REVOKE_URL={sandbox}/vendor/revocations\n",
        super::sandbox::DEFAULT_API_KEY,
        super::sandbox::DEFAULT_WEBHOOK_SECRET,
        crate::harness::SANDBOX_VENDOR.to_uppercase(),
        crate::harness::SANDBOX_VENDOR.to_uppercase(),
        super::sandbox::DEFAULT_WEBHOOK_SECRET,
        vendor = crate::harness::SANDBOX_VENDOR.to_uppercase(),
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
    // The shop's backend, told of every key's delivery and revocation.
    let shop = crate::sandbox::shop::ShopReceiver::start()?;
    let mut settings = settings.clone();
    settings.notify.url = Some(shop.url.clone());
    settings.notify.secret = Some(secrecy::SecretString::from(shop.secret.clone()));
    let settings = &settings;
    let stack = LocalStack::start(settings.clone(), Role::All).await?;
    let sandbox = &stack.sandbox.sandbox;
    let url = stack.webhook_url.clone().expect("role all serves webhooks");
    println!("  keyrelay   {url}");
    println!("  sandbox    {}", stack.sandbox.base_url);
    setup::add_pools(&stack, settings, options.grants).await?;
    setup::inject_faults(sandbox);
    let started = Instant::now();
    let sold = sale::sell(sandbox, &url, options.grants).await?;
    let counts = sale::wait_until_settled(&stack.db, options.grants).await?;
    let elapsed = started.elapsed();
    let ok = summary::report(&stack, options, &sold, &counts, elapsed).await?;
    let refunded = refund::refund(&stack, &shop, options.public_key.as_deref()).await?;
    stack.stop().await?;
    shop.stop().await;
    Ok(ok && refunded)
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
