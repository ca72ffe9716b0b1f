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

/// Fills the tables with `n` finished jobs over the last 7 days: one in 1,000 failed, one in
/// 5,000 cancelled, the rest delivered with a key, one attempt and one event each.
async fn seed(pool: &crate::db::Db, n: i64) -> anyhow::Result<()> {
    let statements = [
        // Keys: sealed and hashed stand-ins (never opened), with a searchable tail.
        "INSERT INTO keys (pool_id, value_sealed, value_hash, sealed_with, state, grant_id, batch_id, tail) \
         SELECT (SELECT id FROM pools WHERE name = 'bench'), decode(md5('s' || i), 'hex'), \
                decode(md5('h' || i), 'hex'), 1, 'delivered', 'grant_hist_' || i, 'bench_history', \
                lpad(to_hex(i % 65536), 4, '0') \
         FROM generate_series(1, $1) i WHERE i % 1000 <> 0 AND i % 5000 <> 0",
        "INSERT INTO jobs (grant_id, entitlement_id, customer_id, payment_id, state, attempts, \
                           created_at, updated_at, finished_at, source, last_error, last_http_status) \
         SELECT 'grant_hist_' || i, $2, 'cus_hist_' || (i % 250000), 'pay_hist_' || i, \
                CASE WHEN i % 5000 = 0 THEN 'cancelled' WHEN i % 1000 = 0 THEN 'failed' ELSE 'delivered' END::job_state, \
                1, t, t, t, 'bench_history', \
                CASE WHEN i % 1000 = 0 THEN 'Dodo answered 422' END, CASE WHEN i % 1000 = 0 THEN 422 ELSE 200 END \
         FROM generate_series(1, $1) i, LATERAL (SELECT now() - make_interval(secs => i * 604800.0 / $1) AS t) at",
        "UPDATE jobs SET key_id = keys.id FROM keys WHERE keys.grant_id = jobs.grant_id",
        "INSERT INTO attempts (grant_id, started_at, duration_ms, http_status, outcome) \
         SELECT grant_id, created_at, 40, last_http_status, \
                CASE WHEN state = 'delivered' THEN 'delivered' ELSE 'permanent_error' END FROM jobs",
        "INSERT INTO events (webhook_id, event_type, grant_id, received_at, payload) \
         SELECT 'msg_' || grant_id, 'entitlement_grant.created', grant_id, created_at, \
                jsonb_build_object('type', 'entitlement_grant.created', 'data', jsonb_build_object('id', grant_id)) \
         FROM jobs",
    ];
    for sql in statements {
        let mut query = sqlx::query(sql);
        if sql.contains("$1") {
            query = query.bind(n);
        }
        if sql.contains("$2") {
            query = query.bind(ENTITLEMENT);
        }
        query.execute(pool).await?;
    }
    crate::store::prune::vacuum_analyze(pool).await?;
    for table in ["attempts", "events"] {
        pool.execute_outside_transaction(&format!("VACUUM ANALYZE {table}"))
            .await?;
    }
    Ok(())
}

pub async fn run(mut settings: Settings, args: &BenchArgs) -> anyhow::Result<()> {
    let n = args.finished as i64;
    println!("\nlists: the dashboard and the shop API with {n} finished jobs (over 7 days)");
    let pool = crate::db::connect(&settings).await?;
    let started = Instant::now();
    seed(&pool, n).await?;
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
    pool.close().await;
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
