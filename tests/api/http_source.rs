//! `http` pools: the sandbox's key vendor issues each grant's key. Faults are retried with the
//! same idempotency key, a key Dodo already holds leads to a new idempotency key, an endpoint
//! that ignores idempotency keys never puts two keys at Dodo for one grant, and the license it
//! issued that no grant uses is flagged.

use std::collections::HashSet;
use std::time::Duration;

use keyrelay::domain::JobState;
use keyrelay::fulfillment::{ask::fetch_keys, run_batch};
use keyrelay::harness::SANDBOX_VENDOR;
use keyrelay::pool::{NewPool, add_pool};
use keyrelay::sandbox::VendorFault;
use keyrelay::sources::Source;

use crate::helpers::{ENT, TestApp, as_env, keyrelay_async, wait_until};

async fn add_vendor_pool(app: &TestApp) {
    let new = NewPool {
        name: "vendor".into(),
        entitlement_id: ENT.into(),
        source: Some(Source::Http),
        endpoint: Some(SANDBOX_VENDOR.into()),
        ..Default::default()
    };
    add_pool(&app.db, &new).await.unwrap();
}

/// Runs the queue step by step until `grant` is finished, skipping backoff waits.
async fn drive(app: &TestApp, grant: &str) -> JobState {
    for _ in 0..12 {
        run_batch(&app.worker(), 10).await.unwrap();
        let state = app.job_state(grant).await;
        if matches!(state, JobState::Delivered | JobState::Failed) {
            return state;
        }
        app.make_due(grant).await;
    }
    app.job_state(grant).await
}

#[tokio::test]
async fn keys_from_the_endpoint_are_delivered_one_per_grant_and_audited() {
    let app = TestApp::spawn().await;
    add_vendor_pool(&app).await;
    let grants = app.sell_many(10).await;
    app.wait_delivered(10).await;
    let licenses = app.sandbox.vendor_licenses();
    assert_eq!(licenses.len(), 10, "one license per grant");
    let mut at_dodo = HashSet::new();
    for grant in &grants {
        let key = app
            .sandbox
            .grant(grant)
            .unwrap()
            .key_value()
            .unwrap()
            .to_string();
        let license = licenses.iter().find(|l| &l.grant_id == grant).unwrap();
        assert_eq!(
            license.key, key,
            "Dodo holds the vendor's key for the grant"
        );
        at_dodo.insert(key);
    }
    assert_eq!(at_dodo.len(), 10);
    assert_eq!(
        app.count("SELECT count(*) FROM audit_log WHERE action = 'receive'")
            .await,
        10
    );
    assert_eq!(
        app.count("SELECT count(*) FROM received_keys WHERE bound AND NOT orphan")
            .await,
        10
    );
    app.stop().await;
}

#[tokio::test]
async fn endpoint_faults_are_retried_with_the_same_idempotency_key() {
    let app = TestApp::spawn_web().await;
    add_vendor_pool(&app).await;
    let grant = app.sell().await;
    app.sandbox.script_vendor_faults(
        &grant,
        [
            VendorFault::Status { status: 503 },
            VendorFault::RateLimited {
                retry_after_secs: 1,
            },
            VendorFault::MintThenHang,
        ],
    );
    assert_eq!(drive(&app, &grant).await, JobState::Delivered);
    // The license minted before the timeout is the one answered on the retry.
    let licenses = app.sandbox.vendor_licenses();
    assert_eq!(licenses.len(), 1);
    assert_eq!(licenses[0].idempotency_key, format!("keyrelay:{grant}:0"));
    assert_eq!(
        app.sandbox.grant(&grant).unwrap().key_value(),
        Some(licenses[0].key.as_str())
    );
    assert_eq!(app.sandbox.vendor_requests(), 4);
    // 503 and the timeout used attempts, the 429 did not, and so did the call to Dodo.
    assert_eq!(app.job(&grant).await.attempts, 3);
    app.stop().await;
}

#[tokio::test]
async fn a_key_dodo_already_holds_is_rejected_and_the_endpoint_asked_anew() {
    let app = TestApp::spawn_web().await;
    add_vendor_pool(&app).await;
    let grant = app.sell().await;
    fetch_keys(&app.worker(), 10).await.unwrap();
    let first = app.sandbox.vendor_licenses()[0].key.clone();
    // Someone already used the vendor's first key at Dodo.
    app.sandbox.add_existing_key(&first);
    assert_eq!(drive(&app, &grant).await, JobState::Delivered);
    let licenses = app.sandbox.vendor_licenses();
    let idempotency: Vec<&str> = licenses
        .iter()
        .map(|l| l.idempotency_key.as_str())
        .collect();
    assert_eq!(
        idempotency,
        [format!("keyrelay:{grant}:0"), format!("keyrelay:{grant}:1")]
    );
    assert_eq!(
        app.key_state(&first).await.0,
        keyrelay::domain::KeyState::Rejected
    );
    assert_eq!(
        app.sandbox.grant(&grant).unwrap().key_value(),
        Some(licenses[1].key.as_str())
    );
    app.stop().await;
}

#[tokio::test]
async fn a_refusal_fails_the_job_with_the_endpoints_message() {
    let app = TestApp::spawn_web().await;
    add_vendor_pool(&app).await;
    let grant = app.sell().await;
    app.sandbox
        .script_vendor_faults(&grant, [VendorFault::Status { status: 422 }]);
    assert_eq!(drive(&app, &grant).await, JobState::Failed);
    let error = app.job(&grant).await.last_error.unwrap();
    assert!(
        error.contains("answered 422") && error.contains("injected vendor fault"),
        "{error}"
    );
    assert!(app.sandbox.fulfill_log().is_empty(), "nothing went to Dodo");
    app.stop().await;
}

#[tokio::test]
async fn a_crash_between_the_vendors_answer_and_recording_puts_one_key_at_dodo() {
    let app = TestApp::spawn_web().await;
    add_vendor_pool(&app).await;
    app.sandbox.vendor_ignores_idempotency(true);
    let grant = app.sell().await;
    // The vendor mints a license, and keyrelay never learns of it.
    app.sandbox
        .script_vendor_faults(&grant, [VendorFault::MintThenHang]);
    assert_eq!(drive(&app, &grant).await, JobState::Delivered);
    let licenses = app.sandbox.vendor_licenses();
    assert_eq!(
        licenses.len(),
        2,
        "the broken vendor minted again on the retry"
    );
    let at_dodo = app
        .sandbox
        .grant(&grant)
        .unwrap()
        .key_value()
        .unwrap()
        .to_string();
    assert_eq!(
        at_dodo, licenses[1].key,
        "only the key keyrelay recorded reached Dodo"
    );
    let sent: HashSet<String> = app.keys_sent_to_dodo().into_iter().collect();
    assert_eq!(sent.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn an_endpoint_that_ignores_idempotency_keys_has_its_second_license_flagged() {
    let app = TestApp::spawn_web().await;
    add_vendor_pool(&app).await;
    app.sandbox.vendor_ignores_idempotency(true);
    let grant = app.sell().await;
    // The first request is slow, and its worker is taken for dead: the lease is made to run
    // out (a live worker keeps it for the whole call), and another worker asks again.
    app.sandbox
        .script_vendor_faults(&grant, [VendorFault::Slow { ms: 1_500 }]);
    let slow = app.worker();
    let first = tokio::spawn(async move { fetch_keys(&slow, 10).await.unwrap() });
    wait_until(
        "the first request reached the vendor",
        Duration::from_secs(10),
        || async { app.sandbox.vendor_requests() == 1 },
    )
    .await;
    sqlx::query("UPDATE jobs SET run_at = now() - interval '1 second' WHERE state = 'running'")
        .execute(&app.db)
        .await
        .unwrap();
    assert_eq!(fetch_keys(&app.worker(), 10).await.unwrap(), 1);
    assert_eq!(first.await.unwrap(), 1);
    assert_eq!(drive(&app, &grant).await, JobState::Delivered);

    let licenses = app.sandbox.vendor_licenses();
    assert_eq!(licenses.len(), 2);
    let at_dodo = app
        .sandbox
        .grant(&grant)
        .unwrap()
        .key_value()
        .unwrap()
        .to_string();
    let orphan = licenses.iter().find(|l| l.key != at_dodo).unwrap();
    let sent: HashSet<String> = app.keys_sent_to_dodo().into_iter().collect();
    assert_eq!(
        sent,
        HashSet::from([at_dodo.clone()]),
        "one key went to Dodo"
    );
    // Operators see the orphan, masked, in `jobs show` and its JSON.
    let env = app.cli_env();
    let shown = keyrelay_async(&as_env(&env), &["jobs", "show", &grant, "--json"]).await;
    let detail: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    let received = detail["received_keys"].as_array().unwrap();
    assert_eq!(received.len(), 2);
    let flagged: Vec<&serde_json::Value> =
        received.iter().filter(|r| r["orphan"] == true).collect();
    assert_eq!(flagged.len(), 1);
    let masked = flagged[0]["masked"].as_str().unwrap();
    assert!(masked.ends_with(&orphan.key[orphan.key.len() - 4..]) && !masked.contains(&orphan.key));
    let text = keyrelay_async(&as_env(&env), &["jobs", "show", &grant]).await;
    assert!(String::from_utf8_lossy(&text.stdout).contains("ORPHAN: revoke it at the vendor"));
    app.stop().await;
}
