//! `keyrelay bench intake`: verified, stored webhooks per second against a separate
//! `keyrelay serve --role web` process, whose peak memory is read from /proc.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;

use super::{BenchArgs, ENTITLEMENT, ServeChild};
use crate::cli::demo::ms;
use crate::configuration::Settings;
use crate::sandbox::Sandbox;

fn webhook_body(grant_id: &str, customer: &str) -> String {
    serde_json::json!({
        "business_id": "bus_bench", "type": "entitlement_grant.created", "timestamp": "2026-11-20T09:14:03Z",
        "data": {
            "payload_type": "EntitlementGrant", "id": grant_id, "business_id": "bus_bench",
            "customer_id": customer, "entitlement_id": ENTITLEMENT, "integration_type": "license_key",
            "status": "Pending", "metadata": null, "license_key": null,
            "created_at": "2026-11-20T09:14:03Z", "updated_at": "2026-11-20T09:14:03Z"
        }
    })
    .to_string()
}

/// Drives `keyrelay serve --role web` (a child process) with signed webhooks from
/// `args.connections` connections for `args.seconds`, and reports rate, latency and memory.
pub async fn run(settings: Settings, args: &BenchArgs) -> anyhow::Result<()> {
    measure(settings, args, true).await.map(|_| ())
}

/// The intake run; stored webhooks per second. Prints what it saw when `report` is set.
pub async fn measure(settings: Settings, args: &BenchArgs, report: bool) -> anyhow::Result<f64> {
    let db = crate::db::connect(&settings).await?;
    crate::store::prune::quiesce(&db).await?;
    db.close().await;
    let key: [u8; 24] = rand::random();
    let server = ServeChild::start(
        &settings,
        "web",
        &[(
            "DODO_PAYMENTS_WEBHOOK_KEY",
            format!(
                "whsec_{}",
                base64::engine::general_purpose::STANDARD.encode(key)
            ),
        )],
        args.connections,
    )
    .await?;
    let (base, http) = (server.base.clone(), server.http.clone());
    let signer = Sandbox::new("unused", &key);
    let url = format!("{base}/webhooks/dodo");
    let stop = Arc::new(AtomicBool::new(false));
    let warmup = Duration::from_secs(1);
    let mut tasks = Vec::new();
    for c in 0..args.connections {
        let (http, signer, url, stop) = (http.clone(), signer.clone(), url.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let begin = Instant::now();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let hook = signer.sign(
                    format!("msg_b{c}_{n}"),
                    webhook_body(&format!("grant_b{c}_{n}"), &format!("cus_{c}")),
                );
                let sent = Instant::now();
                let ok = http
                    .post(&url)
                    .header("webhook-id", &hook.id)
                    .header("webhook-timestamp", hook.timestamp.to_string())
                    .header("webhook-signature", &hook.signature)
                    .body(hook.body)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                if sent.duration_since(begin) >= warmup {
                    if ok {
                        latencies.push(sent.elapsed())
                    } else {
                        errors += 1
                    }
                }
            }
            (latencies, errors)
        }));
    }
    tokio::time::sleep(warmup + Duration::from_secs(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        latencies.extend(l);
        errors += e;
    }
    let memory = (server.status_kib("VmHWM:"), server.status_kib("VmRSS:"));
    server.stop().await;
    latencies.sort();
    let rate = latencies.len() as f64 / args.seconds as f64;
    if !report {
        return Ok(rate);
    }
    println!(
        "\nintake: {} connections, {} s",
        args.connections, args.seconds
    );
    println!(
        "  stored webhooks/s   {rate:.0}  ({} ok, {errors} errors)",
        latencies.len()
    );
    println!(
        "  latency             p50 {}  p99 {}",
        ms(&latencies, 50),
        ms(&latencies, 99)
    );
    match memory {
        (Some(peak), Some(rss)) => println!(
            "  server memory       peak RSS {:.1} MiB (now {:.1} MiB)",
            peak as f64 / 1024.0,
            rss as f64 / 1024.0
        ),
        _ => println!("  server memory       unavailable (no /proc)"),
    }
    Ok(rate)
}
