//! `keyrelay bench`: keyrelay's performance measurements on this machine, each on a throwaway
//! database: webhook intake at N connections (against a separate `serve --role web` process,
//! whose peak memory is read from /proc), draining queued jobs against the sandbox (with and
//! without latency, optionally over a large finished history), and pickup latency.

use std::time::{Duration, Instant};

use anyhow::bail;

mod budget;
mod drain;
mod intake;
mod lists;
mod soak;

use super::demo::ms;
use crate::configuration::Settings;
use crate::domain::{EntitlementId, LicenseKey};
use crate::harness::LocalStack;
use crate::pool::{NewPool, add_pool, import_keys, keyfile::ParsedKeys};
use crate::startup::Role;

const ENTITLEMENT: &str = "ent_bench";

fn entitlement() -> EntitlementId {
    EntitlementId::parse(ENTITLEMENT).expect("a valid entitlement id")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    /// Signed webhooks stored per second by a separate `serve --role web` process.
    Intake,
    /// Jobs fulfilled per second by a worker pool, against the sandbox at 0 and 200 ms.
    Drain,
    /// Webhook answered to fulfill call received, one grant at a time.
    Latency,
    /// The shared rate budget: several workers drain a backlog against Dodo's tier-0 limits.
    Budget,
    /// The scrape, the overview, the dashboard's lists and search, the shop API, intake and
    /// drain, over each `--finished` count of finished jobs, in one table (not part of `all`:
    /// seeding a million jobs takes minutes).
    Lists,
    /// Memory of one `serve --role all` under a steady load of webhooks and fulfillment,
    /// sampled over `--seconds` (not part of `all`).
    Soak,
    /// Every run above, in turn.
    All,
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Which measurement to run.
    #[arg(value_enum, default_value = "all")]
    which: Which,
    /// Concurrent webhook connections (intake).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// How long the intake run (and the soak) lasts.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Jobs to drain.
    #[arg(long, default_value_t = 10_000)]
    jobs: usize,
    /// Worker concurrency while draining.
    #[arg(long, default_value_t = 64)]
    concurrency: u32,
    /// Sandbox latency for the second drain run, in ms.
    #[arg(long, default_value_t = 200)]
    latency_ms: u64,
    /// Finished jobs to put in the table before draining (e.g. 1000000).
    #[arg(long, default_value_t = 0)]
    history: u64,
    /// Webhooks sent one at a time for the pickup latency run.
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// Backlog for the rate-budget run (more than a minute's budget, to show both limits).
    #[arg(long, default_value_t = 300)]
    budget_jobs: usize,
    /// Workers sharing the rate budget, each with its own connections and budget handle.
    #[arg(long, default_value_t = 3)]
    budget_workers: usize,
    /// Finished jobs in the table for the lists run; several, comma-separated, give one
    /// column each (e.g. 0,1000000,5000000).
    #[arg(long, value_delimiter = ',', default_value = "1000000")]
    finished: Vec<u64>,
    /// Drain and intake runs per count in the lists run, taken in turn across the counts so a
    /// machine's slow spell falls on every column; the table shows their medians.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Keeps the lists run's databases (their names are printed) for a closer look.
    #[arg(long)]
    keep_databases: bool,
}

pub async fn run(mut settings: Settings, args: BenchArgs) -> anyhow::Result<()> {
    // Each run's database is thrown away, and so is the key its keys are sealed with.
    settings.keys.encryption_keys = Some(crate::crypto::new_encryption_key());
    println!(
        "keyrelay bench on {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if matches!(args.which, Which::Intake | Which::All) {
        with_scratch(&settings, |s| intake::run(s, &args)).await?;
    }
    if matches!(args.which, Which::Drain | Which::All) {
        with_scratch(&settings, |s| drain::drain(s, &args, 0)).await?;
        with_scratch(&settings, |s| drain::drain(s, &args, args.latency_ms)).await?;
    }
    if matches!(args.which, Which::Latency | Which::All) {
        with_scratch(&settings, |s| latency(s, &args)).await?;
    }
    if matches!(args.which, Which::Budget | Which::All) {
        with_scratch(&settings, |s| budget::run(s, &args)).await?;
    }
    if args.which == Which::Soak {
        with_scratch(&settings, |s| soak::run(s, &args)).await?;
    }
    if args.which == Which::Lists {
        lists::run(&settings, &args).await?;
    }
    Ok(())
}

/// A `keyrelay serve` child process on a free local port, answering.
struct ServeChild {
    child: tokio::process::Child,
    pid: u32,
    base: String,
    http: reqwest::Client,
}

impl ServeChild {
    /// Starts `keyrelay serve --role ROLE` on the database of `settings` with `env` added, and
    /// waits until it answers; `http` keeps up to `connections` connections to it.
    async fn start(
        settings: &Settings,
        role: &str,
        env: &[(&str, String)],
        connections: usize,
    ) -> anyhow::Result<ServeChild> {
        use anyhow::Context;
        use secrecy::ExposeSecret;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let encryption = settings
            .keys
            .encryption_keys
            .as_ref()
            .map(|k| k.expose_secret().to_string())
            .unwrap_or_default();
        let database = &settings.database;
        let mut command = tokio::process::Command::new(std::env::current_exe()?);
        if let Some(direct) = &database.direct_url {
            command.env("DATABASE_DIRECT_URL", direct.expose_secret());
        }
        let child = command
            .args(["serve", "--role", role])
            .env("DATABASE_URL", database.url.expose_secret())
            .env("KEYRELAY_DATABASE__POOLER", database.pooler.as_str())
            .env("KEYRELAY_ENCRYPTION_KEY", encryption)
            .env("KEYRELAY_HTTP__BIND", format!("127.0.0.1:{port}"))
            .env("KEYRELAY_DATABASE__MIGRATE_ON_START", "false")
            .env("RUST_LOG", "error")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start `keyrelay serve --role {role}`"))?;
        let pid = child.id().context("child has no pid")?;
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(connections)
            .build()?;
        let up = Instant::now();
        while http.get(format!("{base}/healthz")).send().await.is_err() {
            if up.elapsed() > Duration::from_secs(15) {
                bail!("keyrelay serve did not start listening");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(ServeChild {
            child,
            pid,
            base,
            http,
        })
    }

    /// A memory figure of the process from `/proc/PID/status` (`VmRSS:`, `VmHWM:`), in KiB;
    /// `None` where there is no /proc.
    fn status_kib(&self, field: &str) -> Option<u64> {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .ok()?
            .lines()
            .find(|l| l.starts_with(field))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    /// Stops it as an operator would (SIGTERM) and waits for it to exit.
    async fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
    }
}

async fn with_scratch<F, Fut, T>(settings: &Settings, f: F) -> anyhow::Result<T>
where
    F: FnOnce(Settings) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let settings = scratch(settings).await?;
    let result = f(settings.clone()).await;
    crate::db::drop_database(&settings).await?;
    result
}

/// A new throwaway database with the bench pool; the settings point at it.
async fn scratch(settings: &Settings) -> anyhow::Result<Settings> {
    let mut settings = settings.clone();
    let db = crate::db::create_scratch_database(&mut settings.database, "keyrelay_bench").await?;
    add_pool(
        &db,
        &NewPool {
            name: "bench".into(),
            entitlement_id: ENTITLEMENT.into(),
            ..Default::default()
        },
    )
    .await?;
    db.close().await;
    Ok(settings)
}

/// Imports `count` generated keys into the bench pool.
async fn import_generated_keys(
    db: &crate::db::Db,
    vault: &crate::crypto::Vault,
    prefix: &str,
    count: usize,
) -> anyhow::Result<()> {
    let keys = (0..count)
        .map(|i| LicenseKey::parse(&format!("{prefix}-{i:08}-{:08x}", rand::random::<u32>())))
        .collect::<Result<_, _>>()?;
    let parsed = ParsedKeys {
        keys,
        ..Default::default()
    };
    import_keys(db, vault, "bench", &parsed, false, |_| {}).await?;
    Ok(())
}

async fn latency(mut settings: Settings, args: &BenchArgs) -> anyhow::Result<()> {
    settings.reconciler.interval_secs = 0;
    let stack = LocalStack::start(settings, Role::All).await?;
    let url = stack.webhook_url.clone().expect("web role");
    let sandbox = stack.sandbox.sandbox.clone();
    import_generated_keys(
        &stack.db,
        &stack.settings.keys.vault()?,
        "LAT",
        args.samples,
    )
    .await?;
    let mut pickups = Vec::new();
    for _ in 0..args.samples {
        let grant = sandbox.create_grant(ENTITLEMENT, None);
        let hook = sandbox.webhook_for(&grant, "entitlement_grant.created");
        sandbox.send_webhook(&url, &hook).await?;
        let answered = Instant::now();
        let deadline = answered + Duration::from_secs(5);
        loop {
            if let Some(r) = sandbox
                .fulfill_log()
                .iter()
                .rev()
                .find(|r| r.grant_id == grant.id)
            {
                pickups.push(r.received.saturating_duration_since(answered));
                break;
            }
            if Instant::now() > deadline {
                bail!("grant {} was not picked up within 5 s", grant.id);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Idle between samples, and within the default rate limit.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pickups.sort();
    println!(
        "\npickup latency: {} webhooks one at a time (webhook answered → fulfill request received)",
        args.samples
    );
    println!(
        "  latency             p50 {}  p99 {}  max {}",
        ms(&pickups, 50),
        ms(&pickups, 99),
        ms(&pickups, 100)
    );
    stack.stop().await
}
