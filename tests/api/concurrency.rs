//! The promise (one key per grant, no key twice, nothing lost) under concurrency and faults:
//! several worker pools on one database fulfil 1,000 grants through injected 5xx and "apply
//! then 500" faults, duplicate webhooks and workers that die mid-flight. No grant is delivered twice and no key is used twice.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures_util::StreamExt;
use keyrelay::fulfillment::run_job;
use keyrelay::sandbox::FaultRates;
use keyrelay::startup::{Application, Role};
use keyrelay::store::claim_batch;
use secrecy::ExposeSecret;

use crate::helpers::{ENT, TestApp, wait_until};

const GRANTS: usize = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_workers_under_faults_deliver_every_grant_exactly_once() {
    let app = TestApp::spawn_with(Role::Web, |s| {
        s.worker.lease_secs = 2;
        s.worker.concurrency = 16;
    })
    .await;
    let keys: Vec<String> = (0..GRANTS + 200).map(|i| format!("CONC-{i:06}")).collect();
    app.add_pool(
        "pro",
        ENT,
        &keys.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    app.sandbox.set_fault_rates(FaultRates {
        server_error: 0.1,
        apply_then_500: 0.1,
        ..Default::default()
    });
    // Dodo already holds a few of our values: those keys must be rejected, never reused.
    for k in keys.iter().step_by(97) {
        app.sandbox.add_existing_key(k);
    }

    let mut workers = Vec::new();
    for _ in 0..3 {
        let worker = Application::build(app.settings(), Role::Worker)
            .await
            .unwrap();
        workers.push((
            worker.shutdown_token(),
            tokio::spawn(worker.run_until_stopped()),
        ));
    }

    let app_ref = &app;
    let sales = futures_util::stream::iter(0..GRANTS)
        .map(|i| async move {
            let app = app_ref;
            let grant = app.sandbox.create_grant(ENT, None);
            let hook = app.sandbox.webhook_for(&grant, "entitlement_grant.created");
            assert_eq!(app.post(&hook).await.status(), 200);
            if i % 5 == 0 {
                assert_eq!(app.post(&hook).await.status(), 200);
            }
            grant.id
        })
        .buffer_unordered(32);
    let sold: Vec<String> = sales.collect().await;

    // Crashes: one worker claims jobs and dies; another dies after Dodo applied its keys.
    let lease = Duration::from_secs(2);
    let died_after_claim = claim_batch(
        &app.db,
        20,
        lease,
        &Default::default(),
        None,
        &Default::default(),
    )
    .await
    .unwrap();
    let died_after_apply = claim_batch(
        &app.db,
        10,
        lease,
        &Default::default(),
        None,
        &Default::default(),
    )
    .await
    .unwrap();
    let ctx = app.worker();
    for job in died_after_apply {
        let _lost = run_job(&ctx, job).await;
    }
    drop(died_after_claim);

    wait_until(
        "every grant is delivered",
        Duration::from_secs(180),
        || async {
            app.count("SELECT count(*) FROM jobs WHERE state = 'delivered'")
                .await
                == GRANTS as i64
        },
    )
    .await;
    for (token, handle) in workers {
        token.cancel();
        handle.await.unwrap().unwrap();
    }

    // Late, repeated and reordered lifecycle webhooks change nothing already decided.
    let late = futures_util::stream::iter(sold.iter().chain(sold.iter()).rev())
        .map(|grant_id| async move {
            let grant = app_ref.sandbox.grant(grant_id).unwrap();
            let hook = app_ref
                .sandbox
                .webhook_for(&grant, "entitlement_grant.delivered");
            assert_eq!(app_ref.post(&hook).await.status(), 200);
        })
        .buffer_unordered(32);
    late.collect::<Vec<_>>().await;
    assert_eq!(
        app.count("SELECT count(*) FROM jobs WHERE state = 'delivered'")
            .await,
        GRANTS as i64
    );
    assert_eq!(
        app.count("SELECT count(*) FROM keys WHERE state = 'delivered'")
            .await,
        GRANTS as i64
    );

    // Dodo's side: every grant holds exactly one key, and no key is on two grants.
    let mut holder: HashMap<String, String> = HashMap::new();
    for grant_id in &sold {
        let grant = app.sandbox.grant(grant_id).unwrap();
        let key = grant.key_value().expect("delivered at Dodo").to_string();
        assert!(
            holder.insert(key.clone(), grant_id.clone()).is_none(),
            "key {key} on two grants"
        );
    }
    // Every value keyrelay ever sent went to one grant only.
    let mut sent_to: HashMap<String, HashSet<String>> = HashMap::new();
    for r in app.sandbox.fulfill_log() {
        sent_to.entry(r.key).or_default().insert(r.grant_id);
    }
    assert!(
        sent_to.values().all(|grants| grants.len() == 1),
        "a key value was sent for two grants"
    );
    // keyrelay's side agrees with Dodo's, grant by grant.
    let delivered = "SELECT j.key_id FROM jobs j JOIN keys k ON k.id = j.key_id \
                     WHERE j.state = 'delivered' AND k.state = 'delivered'";
    let grants: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT grant_id FROM jobs WHERE key_id IN ({delivered}) ORDER BY key_id"
    ))
    .fetch_all(&app.db)
    .await
    .unwrap();
    let values = app.key_values(&format!("id IN ({delivered})")).await;
    let ours: Vec<(String, String)> = grants.into_iter().zip(values).collect();
    assert_eq!(ours.len(), GRANTS);
    for (grant_id, value) in ours {
        assert_eq!(holder.get(&value), Some(&grant_id));
    }
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, GRANTS as i64);
    let rejected = app
        .count("SELECT count(*) FROM keys WHERE state = 'rejected'")
        .await;
    assert!(rejected > 0, "pre-existing values were met and rejected");
    assert!(
        app.sandbox.fulfill_log().iter().any(|r| r.status == 500),
        "faults were injected"
    );

    // Keys, the API key and the webhook secret never reach the logs.
    let logs = crate::helpers::captured_logs();
    assert!(
        logs.contains("delivered") && logs.contains("will retry"),
        "logs were captured"
    );
    let settings = app.settings();
    let api_key = settings
        .dodo
        .api_key
        .as_ref()
        .unwrap()
        .expose_secret()
        .to_string();
    let secret = settings
        .webhook
        .secret
        .as_ref()
        .unwrap()
        .expose_secret()
        .to_string();
    let secret_body = secret.trim_start_matches("whsec_").to_string();
    for needle in [api_key.as_str(), secret_body.as_str()]
        .into_iter()
        .chain(keys.iter().map(String::as_str))
    {
        assert!(!logs.contains(needle), "{needle} reached the logs");
    }
    app.stop().await;
}
