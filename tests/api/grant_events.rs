//! Grant lifecycle events against every job state and in every order: delivered,
//! failed and revoked settle the job and the key, and a stale event changes nothing.

use keyrelay::dodo::{Grant, GrantStatus, LicenseKey};
use keyrelay::domain::{JobState, KeyState};
use keyrelay::fulfillment::run_batch;
use keyrelay::sandbox::Fault;
use keyrelay::store::claim_batch;

use crate::helpers::{ENT, TestApp};

const K1: &str = "LIFE-AAAA-BBBB-0001";
const K2: &str = "LIFE-AAAA-BBBB-0002";

/// The grant as Dodo would describe it at `minute` past the hour.
fn at(grant: &Grant, status: GrantStatus, key: Option<&str>, minute: u32) -> Grant {
    let mut g = grant.clone();
    g.status = status;
    g.updated_at = Some(format!("2026-11-20T10:{minute:02}:00Z"));
    g.license_key = key.map(|k| LicenseKey {
        key: k.into(),
        activations_used: Some(0),
        activations_limit: None,
        expires_at: None,
    });
    g
}

async fn send(app: &TestApp, grant: &Grant, event_type: &str) {
    let hook = app.sandbox.webhook_for(grant, event_type);
    assert_eq!(app.post(&hook).await.status(), 200, "{event_type}");
}

async fn step(app: &TestApp) {
    run_batch(&app.worker(), 10).await.unwrap();
}

/// A grant sold at minute 0 with its job brought into `state`.
async fn job_in_state(app: &TestApp, state: JobState) -> Grant {
    let grant = app.sandbox.create_grant(ENT, None);
    send(
        app,
        &at(&grant, GrantStatus::Pending, None, 0),
        "entitlement_grant.created",
    )
    .await;
    match state {
        JobState::Queued => {}
        JobState::Running => {
            claim_batch(
                &app.db,
                1,
                std::time::Duration::from_secs(60),
                &Default::default(),
                None,
                &Default::default(),
            )
            .await
            .unwrap();
        }
        JobState::Retrying => {
            app.sandbox
                .script_faults(&grant.id, [Fault::Status { status: 503 }]);
            step(app).await;
        }
        JobState::Failed => {
            app.sandbox
                .script_faults(&grant.id, [Fault::Status { status: 422 }]);
            step(app).await;
        }
        JobState::Delivered => step(app).await,
        other => unreachable!("{other}"),
    }
    assert_eq!(app.job_state(&grant.id).await, state);
    grant
}

#[tokio::test]
async fn delivered_settles_every_unfinished_state() {
    let app = TestApp::spawn_web().await;
    app.add_pool("pro", ENT, &[K1, K2]).await;
    for state in [
        JobState::Queued,
        JobState::Running,
        JobState::Retrying,
        JobState::Failed,
    ] {
        // Delivered elsewhere with a key that is not ours: our reserved key goes back.
        let grant = job_in_state(&app, state).await;
        send(
            &app,
            &at(&grant, GrantStatus::Delivered, Some("ELSEWHERE-1"), 5),
            "entitlement_grant.delivered",
        )
        .await;
        let job = app.job(&grant.id).await;
        assert_eq!(
            (job.state, job.key_id),
            (JobState::Delivered, None),
            "from {state}"
        );
        assert_eq!(
            app.key_state(K1).await,
            (KeyState::Available, None),
            "from {state}"
        );
    }
    for state in [JobState::Running, JobState::Retrying] {
        // Delivered with the key we reserved: the key is delivered too.
        let grant = job_in_state(&app, state).await;
        let ours = app
            .key_values(&format!("grant_id = '{}' AND state = 'reserved'", grant.id))
            .await
            .remove(0);
        send(
            &app,
            &at(&grant, GrantStatus::Delivered, Some(&ours), 5),
            "entitlement_grant.delivered",
        )
        .await;
        assert_eq!(
            app.job_state(&grant.id).await,
            JobState::Delivered,
            "from {state}"
        );
        assert_eq!(
            app.key_state(&ours).await,
            (KeyState::Delivered, Some(grant.id.clone())),
            "from {state}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn revoked_cancels_unfinished_jobs_and_revokes_delivered_keys() {
    let app = TestApp::spawn_web().await;
    app.add_pool("pro", ENT, &[K1, K2]).await;
    for state in [
        JobState::Queued,
        JobState::Running,
        JobState::Retrying,
        JobState::Failed,
    ] {
        let grant = job_in_state(&app, state).await;
        send(
            &app,
            &at(&grant, GrantStatus::Revoked, None, 5),
            "entitlement_grant.revoked",
        )
        .await;
        let job = app.job(&grant.id).await;
        assert_eq!(
            (job.state, job.key_id),
            (JobState::Cancelled, None),
            "from {state}"
        );
        assert_eq!(
            app.key_state(K1).await,
            (KeyState::Available, None),
            "from {state}"
        );
    }
    // Delivered with our key, then revoked: the key is revoked and never offered again.
    let grant = job_in_state(&app, JobState::Delivered).await;
    send(
        &app,
        &at(&grant, GrantStatus::Revoked, Some(K1), 5),
        "entitlement_grant.revoked",
    )
    .await;
    assert_eq!(app.job_state(&grant.id).await, JobState::Cancelled);
    assert_eq!(
        app.key_state(K1).await,
        (KeyState::Revoked, Some(grant.id.clone()))
    );
    let next = job_in_state(&app, JobState::Delivered).await;
    assert_eq!(app.sandbox.grant(&next.id).unwrap().key_value(), Some(K2));
    app.stop().await;
}

#[tokio::test]
async fn failed_fails_unfinished_jobs_only() {
    let app = TestApp::spawn_web().await;
    app.add_pool("pro", ENT, &[K1, K2]).await;
    let retrying = job_in_state(&app, JobState::Retrying).await;
    let mut failed = at(&retrying, GrantStatus::Failed, None, 5);
    failed.error_message = Some("customer email bounced".into());
    send(&app, &failed, "entitlement_grant.failed").await;
    let job = app.job(&retrying.id).await;
    assert_eq!(job.state, JobState::Failed);
    assert!(job.last_error.unwrap().contains("customer email bounced"));
    assert_eq!(
        app.key_state(K1).await.0,
        KeyState::Reserved,
        "the key stays bound until a human decides"
    );
    let delivered = job_in_state(&app, JobState::Delivered).await;
    send(
        &app,
        &at(&delivered, GrantStatus::Failed, None, 5),
        "entitlement_grant.failed",
    )
    .await;
    assert_eq!(app.job_state(&delivered.id).await, JobState::Delivered);
    app.stop().await;
}

fn permutations<T: Clone>(items: &[T]) -> Vec<Vec<T>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut out = Vec::new();
    for i in 0..items.len() {
        let mut rest = items.to_vec();
        let first = rest.remove(i);
        for mut p in permutations(&rest) {
            p.insert(0, first.clone());
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn created_delivered_and_revoked_end_the_same_in_every_order() {
    let app = TestApp::spawn_web().await;
    app.add_pool("pro", ENT, &[K1]).await;
    let orders = permutations(&[
        "entitlement_grant.created",
        "entitlement_grant.delivered",
        "entitlement_grant.revoked",
    ]);
    assert_eq!(orders.len(), 6);
    for order in orders {
        let grant = app.sandbox.create_grant(ENT, None);
        for event_type in order.iter().chain(order.iter()) {
            let state = match *event_type {
                "entitlement_grant.created" => at(&grant, GrantStatus::Pending, None, 0),
                "entitlement_grant.delivered" => {
                    at(&grant, GrantStatus::Delivered, Some("ELSEWHERE-9"), 5)
                }
                _ => at(&grant, GrantStatus::Revoked, Some("ELSEWHERE-9"), 9),
            };
            send(&app, &state, event_type).await;
        }
        assert_eq!(
            app.job_state(&grant.id).await,
            JobState::Cancelled,
            "order {order:?}"
        );
    }
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, 6);
    assert_eq!(app.key_state(K1).await, (KeyState::Available, None));
    step(&app).await;
    assert!(
        app.sandbox.fulfill_log().is_empty(),
        "no settled grant is fulfilled"
    );

    // Our key delivered, then delivered and revoked events in either order, repeated.
    app.import("pro", &[K2]).await;
    for order in [
        ["entitlement_grant.delivered", "entitlement_grant.revoked"],
        ["entitlement_grant.revoked", "entitlement_grant.delivered"],
    ] {
        let grant = job_in_state(&app, JobState::Delivered).await;
        let key = app
            .sandbox
            .grant(&grant.id)
            .unwrap()
            .key_value()
            .unwrap()
            .to_string();
        for event_type in order.iter().chain(order.iter()) {
            let state = if *event_type == "entitlement_grant.delivered" {
                at(&grant, GrantStatus::Delivered, Some(&key), 5)
            } else {
                at(&grant, GrantStatus::Revoked, Some(&key), 9)
            };
            send(&app, &state, event_type).await;
        }
        assert_eq!(
            app.job_state(&grant.id).await,
            JobState::Cancelled,
            "order {order:?}"
        );
        assert_eq!(
            app.key_state(&key).await,
            (KeyState::Revoked, Some(grant.id.clone())),
            "order {order:?}"
        );
    }
    app.stop().await;
}
