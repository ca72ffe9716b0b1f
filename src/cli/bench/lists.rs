//! `keyrelay bench lists`: what a growing history costs. For each `--finished` count (finished
//! jobs spread over a week, with their keys, attempts and events) on its own database: the
//! Prometheus scrape, the first overview after start and later ones, the dashboard's pages and
//! searches, the shop API; then `--rounds` runs each of draining a backlog (0 ms sandbox) and
//! of webhook intake, taken in turn across the databases (each round starting at the next one)
//! so a slow spell of the machine falls on every count alike. One table, a column per count,
//! so the curve is visible.

use std::time::{Duration, Instant};

use secrecy::SecretString;

use super::{BenchArgs, ENTITLEMENT};
use crate::configuration::Settings;
use crate::harness::LocalStack;
use crate::startup::Role;

const TOKEN: &str = "bench-admin-token-0123456789abcdefghij";
const API_TOKEN: &str = "bench-shop-token-0123456789abcdefghijk";

/// One row of the table: what was measured and, per count, its figure.
struct Row {
    name: String,
    unit: &'static str,
    values: Vec<f64>,
}

/// The table, filled a figure at a time.
#[derive(Default)]
struct Table(Vec<Row>);

impl Table {
    fn push(&mut self, name: &str, unit: &'static str, value: f64) {
        match self.0.iter_mut().find(|r| r.name == name) {
            Some(row) => row.values.push(value),
            None => self.0.push(Row {
                name: name.to_string(),
                unit,
                values: vec![value],
            }),
        }
    }
}

pub async fn run(settings: &Settings, args: &BenchArgs) -> anyhow::Result<()> {
    let mut databases = Vec::new();
    let result = run_on(settings, args, &mut databases).await;
    for database in &databases {
        let name = crate::db::database_name(&database.database)?;
        if args.keep_databases {
            println!("  kept database {name}");
        } else if let Err(e) = crate::db::drop_database(database).await {
            eprintln!("could not drop the bench database {name}: {e:#}");
        }
    }
    result
}

async fn run_on(
    settings: &Settings,
    args: &BenchArgs,
    databases: &mut Vec<Settings>,
) -> anyhow::Result<()> {
    anyhow::ensure!(args.rounds > 0, "--rounds must be at least 1");
    let mut table = Table::default();
    for &n in &args.finished {
        println!("\nlists: {n} finished jobs (over 7 days)");
        let database = super::scratch(settings).await?;
        databases.push(database.clone());
        for (name, value) in measure(database, n).await? {
            table.push(name, "ms", value);
        }
    }
    // Every drain before any intake: the jobs intake queues have no keys, and a drain waits
    // for every queued job.
    in_rounds(
        args,
        databases,
        &mut table,
        "drain, 0 ms sandbox",
        "jobs/s",
        |s| super::drain::drain_rate(s, args, 0, false),
    )
    .await?;
    in_rounds(args, databases, &mut table, "intake", "webhooks/s", |s| {
        super::intake::measure(s, args, false)
    })
    .await?;
    print!("\n  {:<44}", "finished jobs in the table");
    for n in &args.finished {
        print!(" {n:>12}");
    }
    println!();
    for row in table.0 {
        print!("  {:<44}", format!("{} ({})", row.name, row.unit));
        for value in row.values {
            print!(" {value:>12.1}");
        }
        println!();
    }
    println!(
        "  (ms: the median of 5 runs, except the first overview, which is one; \
         drain and intake: the median of {} rounds)",
        args.rounds
    );
    Ok(())
}

/// `args.rounds` runs of `run` on each database, a round across all of them at a time; puts
/// each database's median rate in the table, and the median as a share of the first.
async fn in_rounds<F, Fut>(
    args: &BenchArgs,
    databases: &[Settings],
    table: &mut Table,
    what: &str,
    unit: &'static str,
    run: F,
) -> anyhow::Result<()>
where
    F: Fn(Settings) -> Fut,
    Fut: Future<Output = anyhow::Result<f64>>,
{
    let mut runs = vec![Vec::new(); databases.len()];
    for round in 1..=args.rounds {
        println!("\n{what}, round {round}");
        // Each round starts at the next database, so none is always run after the others.
        for k in 0..databases.len() {
            let i = (k + round - 1) % databases.len();
            let rate = run(databases[i].clone()).await?;
            println!(
                "  {:>12} finished jobs  {rate:>6.0} {unit}",
                args.finished[i]
            );
            runs[i].push(rate);
        }
    }
    let medians: Vec<f64> = runs.into_iter().map(median).collect();
    for &m in &medians {
        table.push(what, unit, m);
    }
    for &m in &medians {
        table.push(
            &format!("{what}, of the first column"),
            "%",
            m / medians[0] * 100.0,
        );
    }
    Ok(())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Seeds `n` finished jobs and measures every row on them.
async fn measure(settings: Settings, n: u64) -> anyhow::Result<Vec<(&'static str, f64)>> {
    let db = crate::db::connect(&settings).await?;
    let started = Instant::now();
    crate::store::bulk::seed_finished_jobs(&db, n as i64, ENTITLEMENT, "bench").await?;
    println!("  seeded in {:.1} s", started.elapsed().as_secs_f64());
    db.close().await;
    let mut web = settings.clone();
    web.admin.token = Some(SecretString::from(TOKEN));
    web.api.token = Some(SecretString::from(API_TOKEN));
    web.admin.insecure_http = true;
    web.reconciler.interval_secs = 0;
    let stack = LocalStack::start(web, Role::Web).await?;
    let base = stack
        .webhook_url
        .clone()
        .expect("web role")
        .trim_end_matches("/webhooks/dodo")
        .to_string();
    let http = reqwest::Client::new();
    let mut column = Vec::new();
    // The first overview after start waits for the totals the later ones share.
    let first = time(&http, &base, "/admin", TOKEN, 1).await?;
    column.push(("overview, first after start", first));
    // A page's "older jobs" link, to time the second page as people reach it.
    let page = http
        .get(format!("{base}/admin/jobs"))
        .bearer_auth(TOKEN)
        .send()
        .await?
        .text()
        .await?;
    let next = page
        .split("id=next-page href=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .map(|href| href.replace("&amp;", "&"))
        .unwrap_or_else(|| "/admin/jobs".into());
    let views: [(&str, String, &str); 12] = [
        ("/metrics scrape", "/metrics".into(), TOKEN),
        ("overview, later (last hour)", "/admin".into(), TOKEN),
        (
            "overview, later (last day)",
            "/admin?range=day".into(),
            TOKEN,
        ),
        ("jobs, first page", "/admin/jobs".into(), TOKEN),
        ("jobs, second page", next, TOKEN),
        (
            "search: a customer id",
            "/admin/jobs?q=cus_hist_4242".into(),
            TOKEN,
        ),
        (
            "search: a payment id",
            "/admin/jobs?q=pay_hist_777777".into(),
            TOKEN,
        ),
        ("search: a key's last 4", "/admin/jobs?q=0a1b".into(), TOKEN),
        ("filter: failed", "/admin/jobs?state=failed".into(), TOKEN),
        (
            "filter: cancelled, pool, last 6 h",
            "/admin/jobs?state=cancelled&pool=bench&since=6h".into(),
            TOKEN,
        ),
        ("needs attention", "/admin/attention".into(), TOKEN),
        (
            "shop API: a customer's grants",
            "/api/v1/customers/cus_hist_4242/grants".into(),
            API_TOKEN,
        ),
    ];
    for (name, path, token) in views {
        let median = time(&http, &base, &path, token, 5).await?;
        println!("  {name:<36} {median:>6.1} ms");
        column.push((name, median));
    }
    stack.stop().await?;
    Ok(column)
}

/// The median of `runs` GETs of `path`, in ms (the one time when `runs` is 1).
async fn time(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    token: &str,
    runs: usize,
) -> anyhow::Result<f64> {
    let mut times = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let response = http
            .get(format!("{base}{path}"))
            .bearer_auth(token)
            .send()
            .await?;
        let status = response.status();
        response.bytes().await?;
        anyhow::ensure!(status.is_success(), "{path} answered {status}");
        times.push(t.elapsed());
    }
    times.sort();
    Ok(ms(times[runs / 2]))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
