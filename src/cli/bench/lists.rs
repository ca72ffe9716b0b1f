//! `keyrelay bench lists`: the dashboard, the CLI's list and the shop API over a table of
//! finished jobs (1,000,000 by default, spread over a week, with their keys, attempts and
//! events): how long the first page, a search, a filter, the next page and the overview take.

use std::time::{Duration, Instant};

use secrecy::SecretString;

use super::{BenchArgs, ENTITLEMENT};
use crate::configuration::Settings;
use crate::harness::LocalStack;
use crate::startup::Role;

const TOKEN: &str = "bench-admin-token-0123456789abcdefghij";
const API_TOKEN: &str = "bench-shop-token-0123456789abcdefghijk";

pub async fn run(mut settings: Settings, args: &BenchArgs) -> anyhow::Result<()> {
    let n = args.finished as i64;
    println!("\nlists: the dashboard and the shop API with {n} finished jobs (over 7 days)");
    let db = crate::db::connect(&settings).await?;
    let started = Instant::now();
    crate::store::bulk::seed_finished_jobs(&db, n, ENTITLEMENT, "bench").await?;
    println!("  seeded in {:.1} s", started.elapsed().as_secs_f64());
    settings.admin.token = Some(SecretString::from(TOKEN));
    settings.api.token = Some(SecretString::from(API_TOKEN));
    settings.admin.insecure_http = true;
    let stack = LocalStack::start(settings, Role::Web).await?;
    let base = stack
        .webhook_url
        .clone()
        .expect("web role")
        .trim_end_matches("/webhooks/dodo")
        .to_string();
    let http = reqwest::Client::new();
    // A page's "older jobs" link, to time the second page as people reach it.
    let first: String = http
        .get(format!("{base}/admin/jobs"))
        .bearer_auth(TOKEN)
        .send()
        .await?
        .text()
        .await?;
    let next = first
        .split("id=next-page href=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .map(|href| href.replace("&amp;", "&"))
        .unwrap_or_else(|| "/admin/jobs".into());
    let views: [(&str, String, &str); 11] = [
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
        ("overview, last hour", "/admin".into(), TOKEN),
        ("overview, last day", "/admin?range=day".into(), TOKEN),
        ("needs attention", "/admin/attention".into(), TOKEN),
        (
            "shop API: a customer's grants",
            "/api/v1/customers/cus_hist_4242/grants".into(),
            API_TOKEN,
        ),
    ];
    println!("  {:<36} {:>9} {:>9}", "view (5 runs)", "median", "worst");
    for (name, path, token) in views {
        let mut times = Vec::new();
        for _ in 0..5 {
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
        println!(
            "  {name:<36} {:>6.1} ms {:>6.1} ms",
            ms(times[2]),
            ms(times[4])
        );
    }
    stack.stop().await?;
    db.close().await;
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
