//! The process around the queue: intake while the database is down, and graceful shutdown.

use std::time::Duration;

use keyrelay::sandbox::FaultRates;

use crate::helpers::{ENT, TestApp, wait_until};

#[tokio::test]
async fn intake_answers_503_while_the_database_is_down_and_acknowledges_only_what_it_stored() {
    let app = TestApp::spawn_web().await;
    let ready = format!("{}/readyz", app.url.trim_end_matches("/webhooks/dodo"));
    assert_eq!(app.http.get(&ready).send().await.unwrap().status(), 200);
    let grant = app.sandbox.create_grant(ENT, None);
    let hook = app.sandbox.webhook_for(&grant, "entitlement_grant.created");

    crate::helpers::set_database_reachable(&app, false).await;
    let r = app.post(&hook).await;
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("database is unavailable"));
    assert_eq!(app.http.get(&ready).send().await.unwrap().status(), 503);

    crate::helpers::set_database_reachable(&app, true).await;
    assert_eq!(
        app.count("SELECT count(*) FROM events").await,
        0,
        "nothing was stored while down"
    );
    // Dodo retries the same message; now it is stored and acknowledged.
    assert_eq!(app.post(&hook).await.status(), 200);
    assert_eq!(app.count("SELECT count(*) FROM events").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, 1);
    assert_eq!(app.http.get(&ready).send().await.unwrap().status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_work() {
    let app = TestApp::spawn().await;
    app.add_pool("pro", ENT, &["PRO-S-1", "PRO-S-2", "PRO-S-3", "PRO-S-4"])
        .await;
    app.sandbox.set_fault_rates(FaultRates {
        latency_ms: 700,
        ..Default::default()
    });
    let mut grants = Vec::new();
    for _ in 0..4 {
        grants.push(app.sell().await);
    }
    wait_until(
        "all four calls are in flight",
        Duration::from_secs(10),
        || async {
            app.count("SELECT count(*) FROM jobs WHERE state = 'running'")
                .await
                == 4
        },
    )
    .await;
    assert!(
        app.sandbox.fulfill_log().is_empty(),
        "no call has been answered yet"
    );

    let settings = app.settings().clone();
    let TestApp { stack, .. } = app;
    stack.stop().await.expect("keyrelay stops cleanly");

    let db = keyrelay::db::connect(&settings).await.unwrap();
    let delivered: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'delivered'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(
        delivered, 4,
        "in-flight calls finished and their outcomes were recorded"
    );
    db.close().await;
    keyrelay::db::drop_database(&settings).await.unwrap();
}
