//! `keyrelay bench soak`: one `keyrelay serve` process (web and workers together, a child of
//! the bench) takes signed webhooks as fast as `--connections` send them for `--seconds`,
//! while its workers fulfil against the sandbox (5 ms per call, in the bench process). Prints
//! the server's resident memory over time, so a leak shows as a rising curve.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use secrecy::ExposeSecret;

use super::{BenchArgs, ENTITLEMENT, ServeChild};
use crate::configuration::Settings;
use crate::harness::start_sandbox;
use crate::pool::{NewPool, add_pool};
use crate::sandbox::{FaultRates, Sandbox};
use crate::sources::Source;

pub async fn run(mut settings: Settings, args: &BenchArgs) -> anyhow::Result<()> {
    let sandbox = start_sandbox(&mut settings)?;
    sandbox.sandbox.set_fault_rates(FaultRates {
        latency_ms: 5,
        ..FaultRates::default()
    });
    let db = crate::db::connect(&settings).await?;
    add_pool(
        &db,
        &NewPool {
            name: "soak".into(),
            entitlement_id: format!("{ENTITLEMENT}_soak"),
            source: Some(Source::Generate),
            template: Some("SOAK-XXXXX-XXXXX-XXXXX-XXXXX".into()),
            ..Default::default()
        },
    )
    .await?;
    let server = start_server(&settings, &sandbox.base_url, args.connections).await?;
    let (base, http) = (server.base.clone(), server.http.clone());
    let url = format!("{base}/webhooks/dodo");
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let tasks = spawn_sellers(
        args.connections,
        &http,
        &sandbox.sandbox,
        &url,
        &stop,
        &sent,
    );
    let delivered = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM jobs WHERE state = 'delivered'")
            .fetch_one(&db)
            .await
            .unwrap_or(-1)
    };
    println!(
        "\nsoak: one `serve --role all`, {} connections, {} s, sandbox at 5 ms",
        args.connections, args.seconds
    );
    println!(
        "  {:>6}  {:>10}  {:>10}  {:>9}",
        "t (s)", "webhooks", "delivered", "RSS MiB"
    );
    let every = Duration::from_secs((args.seconds / 20).clamp(2, 30));
    let started = Instant::now();
    let mut samples: Vec<(u64, u64)> = Vec::new();
    let mut line = |t: f64, webhooks: u64, delivered: i64| {
        let rss = server.status_kib("VmRSS:").unwrap_or(0);
        samples.push((webhooks, rss));
        println!(
            "  {t:>6.0}  {webhooks:>10}  {delivered:>10}  {:>9.1}",
            rss as f64 / 1024.0
        );
    };
    line(0.0, 0, 0);
    while started.elapsed() < Duration::from_secs(args.seconds) {
        tokio::time::sleep(every).await;
        line(
            started.elapsed().as_secs_f64(),
            sent.load(Ordering::Relaxed),
            delivered().await,
        );
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    let total = sent.load(Ordering::Relaxed);
    let drained = Instant::now();
    while delivered().await < total as i64 && drained.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let done = delivered().await;
    line(started.elapsed().as_secs_f64(), total, done);
    server.stop().await;
    sandbox.stop().await;
    db.close().await;
    // Growth per grant between the first loaded sample and the last (warm-up excluded).
    if let (Some(first), Some(last)) = (samples.get(1), samples.last())
        && last.0 > first.0
    {
        let per_grant = (last.1 as f64 - first.1 as f64) * 1024.0 / (last.0 - first.0) as f64;
        println!(
            "  {done} of {total} grants delivered; RSS {:.1} → {:.1} MiB after warm-up ({per_grant:+.1} bytes a grant)",
            first.1 as f64 / 1024.0,
            last.1 as f64 / 1024.0
        );
    }
    Ok(())
}

/// `keyrelay serve --role all` as its own process, against the sandbox at `dodo_url`.
async fn start_server(
    settings: &Settings,
    dodo_url: &str,
    connections: usize,
) -> anyhow::Result<ServeChild> {
    let secret = |s: &Option<secrecy::SecretString>| {
        s.as_ref()
            .map(|k| k.expose_secret().to_string())
            .unwrap_or_default()
    };
    ServeChild::start(
        settings,
        "all",
        &[
            (
                "DODO_PAYMENTS_WEBHOOK_KEY",
                secret(&settings.webhook.secret),
            ),
            ("DODO_PAYMENTS_API_KEY", secret(&settings.dodo.api_key)),
            ("DODO_PAYMENTS_BASE_URL", dodo_url.to_string()),
            ("KEYRELAY_DODO__RATE_LIMIT", "off".into()),
            ("KEYRELAY_WORKER__CONCURRENCY", "64".into()),
        ],
        connections,
    )
    .await
}

/// `connections` tasks that sell grants and send their webhooks until `stop`, counting the
/// ones keyrelay accepted in `sent`.
fn spawn_sellers(
    connections: usize,
    http: &reqwest::Client,
    sandbox: &Sandbox,
    url: &str,
    stop: &Arc<AtomicBool>,
    sent: &Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..connections)
        .map(|_| {
            let (http, sandbox, url, stop, sent) = (
                http.clone(),
                sandbox.clone(),
                url.to_string(),
                stop.clone(),
                sent.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let grant = sandbox.create_grant(&format!("{ENTITLEMENT}_soak"), None);
                    let hook = sandbox.webhook_for(&grant, "entitlement_grant.created");
                    let ok = http
                        .post(&url)
                        .header("webhook-id", &hook.id)
                        .header("webhook-timestamp", hook.timestamp.to_string())
                        .header("webhook-signature", &hook.signature)
                        .body(hook.body)
                        .send()
                        .await
                        .is_ok_and(|r| r.status() == 200);
                    if ok {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect()
}
