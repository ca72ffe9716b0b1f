//! Metrics that move as jobs run, and low-stock alerts that fire once per restock.

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use keyrelay::fulfillment::run_batch;
use keyrelay::pool::{NewPool, add_pool};

use crate::helpers::{ENT, TestApp, wait_until};

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn scrape(app: &TestApp, url: &str) -> String {
    let response = app.http.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

#[tokio::test]
async fn metrics_expose_the_listed_series_and_move_as_jobs_run() {
    let app = TestApp::spawn().await;
    app.add_pool("pro", ENT, &["MET-1", "MET-2", "MET-3"]).await;
    let url = app.url.replace("/webhooks/dodo", "/metrics");
    let before = scrape(&app, &url).await;
    assert_eq!(
        metric(&before, "keyrelay_jobs{state=\"delivered\"}"),
        Some(0.0)
    );
    assert_eq!(
        metric(&before, "keyrelay_keys_available{pool=\"pro\"}"),
        Some(3.0)
    );
    for _ in 0..2 {
        app.sell().await;
    }
    wait_until(
        "both grants are delivered",
        Duration::from_secs(10),
        || async {
            app.count("SELECT count(*) FROM jobs WHERE state = 'delivered'")
                .await
                == 2
        },
    )
    .await;
    let after = scrape(&app, &url).await;
    assert_eq!(
        metric(&after, "keyrelay_jobs{state=\"delivered\"}"),
        Some(2.0)
    );
    assert_eq!(
        metric(&after, "keyrelay_keys_available{pool=\"pro\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&after, "keyrelay_oldest_queued_job_age_seconds"),
        Some(0.0)
    );
    assert!(
        metric(&after, "keyrelay_table_dead_tuples{table=\"jobs\"}").is_some(),
        "{after}"
    );
    let counter = |text: &str, series: &str| metric(text, series).unwrap_or(0.0);
    let queued = "keyrelay_webhooks_total{type=\"entitlement_grant.created\",outcome=\"queued\"}";
    assert!(
        counter(&after, queued) >= counter(&before, queued) + 2.0,
        "{after}"
    );
    let ok_calls = "keyrelay_fulfill_calls_total{status=\"2xx\"}";
    assert!(counter(&after, ok_calls) >= counter(&before, ok_calls) + 2.0);
    for series in [
        "keyrelay_pickup_latency_seconds",
        "keyrelay_fulfill_duration_seconds",
        "keyrelay_jobs_finished_total",
    ] {
        assert!(after.contains(series), "{series} missing");
    }
    // Histograms have buckets, so Prometheus can add up every process's.
    assert!(
        after.contains("keyrelay_fulfill_duration_seconds_bucket{le=\"0.005\"}"),
        "{after}"
    );
    app.stop().await;
}

/// Every `keyrelay_…` name in `text`.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("keyrelay_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[tokio::test]
async fn the_alert_rules_and_grafana_dashboard_use_only_series_keyrelay_exports() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let rules = std::fs::read_to_string(root.join("prometheus/keyrelay-rules.yml")).unwrap();
    let dashboard = std::fs::read_to_string(root.join("grafana/keyrelay-dashboard.json")).unwrap();
    let parsed: serde_json::Value =
        serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let exprs: Vec<&str> = parsed["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap())
        .map(|t| t["expr"].as_str().unwrap())
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");

    let app = TestApp::spawn().await;
    app.add_pool("pro", ENT, &["DEP-1", "DEP-2"]).await;
    sqlx::query("UPDATE pools SET low_stock = 5")
        .execute(&app.db)
        .await
        .unwrap();
    app.sell().await;
    wait_until(
        "the grant is delivered",
        Duration::from_secs(10),
        || async {
            app.count("SELECT count(*) FROM jobs WHERE state = 'delivered'")
                .await
                == 1
        },
    )
    .await;
    let forged = app.http.post(&app.url).body("{}").send().await.unwrap();
    assert!(forged.status().is_client_error());
    let exported = scrape(&app, &app.url.replace("/webhooks/dodo", "/metrics")).await;
    app.stop().await;

    // Counters of rare events appear at their first event; those must at least be counted
    // somewhere in the code.
    let counted_in_code: String = ["src/ops/alerts.rs", "src/ops/reconcile.rs"]
        .iter()
        .map(|f| {
            std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(f))
                .unwrap()
        })
        .collect();
    let used = metric_names(&rules)
        .into_iter()
        .chain(exprs.iter().flat_map(|e| metric_names(e)));
    for name in used {
        let family = name.trim_end_matches("_bucket");
        let rare = counted_in_code.contains(&format!("counter!(\"{family}\""));
        assert!(
            exported.contains(&format!("\n{family}")) || rare,
            "{name} is used by deploy/ but keyrelay does not export it"
        );
    }
}

/// A local receiver for alert POSTs.
async fn alert_receiver() -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let data = web::Data::from(received.clone());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let server = HttpServer::new(move || {
        App::new().app_data(data.clone()).route(
            "/hook",
            web::post().to(
                |body: web::Json<serde_json::Value>,
                 seen: web::Data<Mutex<Vec<serde_json::Value>>>| async move {
                    seen.lock().unwrap().push(body.into_inner());
                    HttpResponse::Ok().finish()
                },
            ),
        )
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    (url, received)
}

#[tokio::test]
async fn low_stock_alerts_fire_once_per_restock() {
    let app = TestApp::spawn_web().await;
    let (url, received) = alert_receiver().await;
    let ctx = app.worker().with_alert_webhook(Some(url));
    add_pool(
        &app.db,
        &NewPool {
            name: "pro".into(),
            entitlement_id: ENT.into(),
            low_stock: 3,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    app.import("pro", &["LOW-1", "LOW-2", "LOW-3", "LOW-4", "LOW-5"])
        .await;
    for _ in 0..3 {
        app.sell().await;
    }
    run_batch(&ctx, 10).await.unwrap();
    // 2 available < 3: one alert.
    wait_until("the alert is received", Duration::from_secs(10), || async {
        received.lock().unwrap().len() == 1
    })
    .await;
    let alert = received.lock().unwrap()[0].clone();
    assert_eq!(alert["pool"], "pro");
    assert_eq!(alert["available"], 2);
    assert!(
        alert["text"]
            .as_str()
            .unwrap()
            .contains("keyrelay pool import pro")
    );
    // Still low, but already alerted for this restock.
    app.sell().await;
    run_batch(&ctx, 10).await.unwrap();
    assert!(
        ctx.alerter
            .check_low_stock(&app.db, &[ENT.to_string()], false)
            .await
            .unwrap()
            .is_empty()
    );
    // A restock re-arms it; going low again alerts again.
    app.import("pro", &["LOW-6", "LOW-7", "LOW-8"]).await;
    assert!(
        ctx.alerter
            .check_low_stock(&app.db, &[ENT.to_string()], false)
            .await
            .unwrap()
            .is_empty(),
        "4 available is not low"
    );
    for _ in 0..2 {
        app.sell().await;
    }
    run_batch(&ctx, 10).await.unwrap();
    wait_until(
        "the second alert is received",
        Duration::from_secs(10),
        || async { received.lock().unwrap().len() == 2 },
    )
    .await;
    assert_eq!(received.lock().unwrap()[1]["available"], 2);
    app.stop().await;
}
