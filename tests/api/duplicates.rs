//! Redelivered and repeated webhooks make one job and one successful fulfill call.

use std::time::Duration;

use crate::helpers::{ENT, TestApp, wait_until};

#[tokio::test]
async fn the_same_webhook_ten_times_at_once_makes_one_job_and_one_delivery() {
    let app = TestApp::spawn().await;
    app.add_pool("pro", ENT, &["PRO-0001", "PRO-0002", "PRO-0003"])
        .await;
    let grant = app.sandbox.create_grant(ENT, None);
    let hook = app.sandbox.webhook_for(&grant, "entitlement_grant.created");
    let answers = futures_util::future::join_all((0..10).map(|_| app.post(&hook))).await;
    assert!(answers.iter().all(|r| r.status() == 200));
    wait_until(
        "the grant is delivered",
        Duration::from_secs(10),
        || async { app.job_state(&grant.id).await == keyrelay::domain::JobState::Delivered },
    )
    .await;
    assert_eq!(app.count("SELECT count(*) FROM events").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, 1);
    let calls: Vec<_> = app
        .sandbox
        .fulfill_log()
        .into_iter()
        .filter(|r| r.grant_id == grant.id)
        .collect();
    assert_eq!(calls.len(), 1, "one fulfill call");
    assert_eq!(calls[0].status, 200);
    assert_eq!(
        app.sandbox.grant(&grant.id).unwrap().key_value(),
        Some("PRO-0001")
    );
    app.stop().await;
}

#[tokio::test]
async fn two_webhook_ids_for_one_grant_make_one_job() {
    let app = TestApp::spawn().await;
    app.add_pool("pro", ENT, &["PRO-0001", "PRO-0002"]).await;
    let grant = app.sandbox.create_grant(ENT, None);
    let first = app.sandbox.webhook_for(&grant, "entitlement_grant.created");
    let second = app.sandbox.webhook_for(&grant, "entitlement_grant.created");
    assert_ne!(first.id, second.id);
    let (a, b) = tokio::join!(app.post(&first), app.post(&second));
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    wait_until(
        "the grant is delivered",
        Duration::from_secs(10),
        || async { app.job_state(&grant.id).await == keyrelay::domain::JobState::Delivered },
    )
    .await;
    assert_eq!(app.count("SELECT count(*) FROM events").await, 2);
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, 1);
    assert_eq!(app.sandbox.fulfill_log().len(), 1);
    // A late redelivery after delivery changes nothing.
    assert_eq!(app.post(&first).await.status(), 200);
    assert_eq!(
        app.job_state(&grant.id).await,
        keyrelay::domain::JobState::Delivered
    );
    assert_eq!(
        app.count("SELECT count(*) FROM keys WHERE state = 'available'")
            .await,
        1
    );
    app.stop().await;
}
