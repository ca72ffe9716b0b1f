//! `keyrelay bench lists`: what a growing history costs. For each `--finished` count (finished
//! jobs spread over a week, with their keys, attempts and events) on its own database: the
//! Prometheus scrape, the first overview after start and later ones, the dashboard's pages and
//! searches, the shop API, then draining a backlog (0 ms sandbox) and webhook intake. One
//! table, a column per count, so the curve is visible.

use std::time::{Duration, Instant};

use secrecy::SecretString;

use super::{BenchArgs, ENTITLEMENT, with_scratch};
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

pub async fn run(settings: &Settings, args: &BenchArgs) -> anyhow::Result<()> {
    let mut rows: Vec<Row> = Vec::new();
    for &n in &args.finished {
        println!("\nlists: {n} finished jobs (over 7 days)");
        let column = with_scratch(settings, |s| measure(s, args, n)).await?;
        for (name, unit, value) in column {
            match rows.iter_mut().find(|r| r.name == name) {
                Some(row) => row.values.push(value),
                None => rows.push(Row {
                    name,
                    unit,
                    values: vec![value],
                }),
            }
        }
    }
    print!("\n  {:<38}", "finished jobs in the table");
    for n in &args.finished {
        print!(" {n:>12}");
    }
    println!();
    for row in rows {
        print!("  {:<38}", format!("{} ({})", row.name, row.unit));
        for value in row.values {
            print!(" {value:>12.1}");
        }
        println!();
    }
    println!(
        "  (ms: the median of 5 runs, except the first overview, which is one; intake and drain: per second)"
    );
    Ok(())
}

/// Seeds `n` finished jobs and measures every row on them.
async fn measure(
    settings: Settings,
    args: &BenchArgs,
    n: u64,
) -> anyhow::Result<Vec<(String, &'static str, f64)>> {
    let db = crate::db::connect(&settings).await?;
    let started = Instant::now();
    crate::store::bulk::seed_finished_jobs(&db, n as i64, ENTITLEMENT, "bench").await?;
    crate::store::prune::vacuum_analyze(&db).await?;
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
    column.push(("overview, first after start".to_string(), "ms", first));
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
        column.push((name.to_string(), "ms", median));
    }
    stack.stop().await?;
    let drained = super::drain_rate(settings.clone(), args, 0, false).await?;
    println!("  drain, 0 ms                          {drained:>6.0} jobs/s");
    column.push(("drain, 0 ms sandbox".to_string(), "jobs/s", drained));
    let stored = super::intake::measure(settings, args, false).await?;
    println!("  intake                               {stored:>6.0} webhooks/s");
    column.push(("intake".to_string(), "webhooks/s", stored));
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
