//! Every row of the README's table of Dodo's answers, asserted on the job, the key and the sandbox's state.
//! The queue is driven step by step with `run_batch`; no worker runs in the background.

use keyrelay::domain::{JobState, KeyState};
use keyrelay::fulfillment::run_batch;
use keyrelay::sandbox::Fault;
use keyrelay::startup::Role;

use crate::helpers::{ENT, TestApp};

const K1: &str = "PRO-AAAA-BBBB-0001";
const K2: &str = "PRO-AAAA-BBBB-0002";

async fn app_with_keys() -> TestApp {
    let app = TestApp::spawn_web().await;
    app.add_pool("pro", ENT, &[K1, K2]).await;
    app
}

async fn step(app: &TestApp) -> usize {
    run_batch(&app.worker(), 10).await.unwrap().len()
}

#[tokio::test]
async fn ok_200_delivers_the_job_and_the_key() {
    let app = app_with_keys().await;
    let grant = app.sell().await;
    assert_eq!(step(&app).await, 1);
    let job = app.job(&grant).await;
    assert_eq!((job.state, job.attempts), (JobState::Delivered, 1));
    assert_eq!(
        app.key_state(K1).await,
        (KeyState::Delivered, Some(grant.clone()))
    );
    assert_eq!(app.sandbox.grant(&grant).unwrap().key_value(), Some(K1));
    app.stop().await;
}

#[tokio::test]
async fn conflict_after_an_unacknowledged_success_is_delivered_with_the_same_key() {
    let app = app_with_keys().await;
    let grant = app.sell().await;
    app.sandbox.script_faults(&grant, [Fault::ApplyThen500]);
    step(&app).await;
    let job = app.job(&grant).await;
    assert_eq!(
        (job.state, job.last_http_status),
        (JobState::Retrying, Some(500))
    );
    assert_eq!(
        app.key_state(K1).await.0,
        KeyState::Reserved,
        "the key stays bound while unsure"
    );
    app.make_due(&grant).await;
    step(&app).await;
    assert_eq!(app.job_state(&grant).await, JobState::Delivered);
    assert_eq!(
        app.key_state(K1).await,
        (KeyState::Delivered, Some(grant.clone()))
    );
    let sent: Vec<String> = app.keys_sent_to_dodo();
    assert_eq!(
        sent,
        vec![K1, K1],
        "the retry sent the same key, never a second one"
    );
    assert_eq!(app.key_state(K2).await.0, KeyState::Available);
    app.stop().await;
}

#[tokio::test]
async fn conflict_when_fulfilled_elsewhere_releases_our_key() {
    let app = app_with_keys().await;
    let grant = app.sell().await;
    app.sandbox.fulfill_elsewhere(&grant, "OTHER-SYSTEM-KEY");
    step(&app).await;
    let job = app.job(&grant).await;
    assert_eq!(job.state, JobState::Delivered);
    assert!(job.last_error.unwrap().contains("elsewhere"));
    assert_eq!(job.key_id, None);
    assert_eq!(app.key_state(K1).await, (KeyState::Available, None));
    assert_eq!(
        app.sandbox.grant(&grant).unwrap().key_value(),
        Some("OTHER-SYSTEM-KEY")
    );
    app.stop().await;
}

#[tokio::test]
async fn conflict_on_a_revoked_grant_cancels_and_releases_or_revokes_the_key() {
    let app = app_with_keys().await;
    // Revoked before we fulfilled: our key was never used.
    let early = app.sell().await;
    app.sandbox.revoke(&early, "refund");
    step(&app).await;
    assert_eq!(app.job_state(&early).await, JobState::Cancelled);
    assert_eq!(app.key_state(K1).await, (KeyState::Available, None));
    // Delivered with our key (answer lost), then revoked: our key is revoked for good.
    let late = app.sell().await;
    app.sandbox.script_faults(&late, [Fault::ApplyThen500]);
    step(&app).await;
    app.sandbox.revoke(&late, "refund");
    app.make_due(&late).await;
    step(&app).await;
    assert_eq!(app.job_state(&late).await, JobState::Cancelled);
    assert_eq!(
        app.key_state(K1).await,
        (KeyState::Revoked, Some(late.clone()))
    );
    app.stop().await;
}

#[tokio::test]
async fn conflict_on_a_pending_grant_rejects_the_key_and_sends_the_next_at_once() {
    let app = app_with_keys().await;
    app.sandbox.add_existing_key(K1);
    let grant = app.sell().await;
    assert_eq!(step(&app).await, 1);
    let job = app.job(&grant).await;
    assert_eq!(
        (job.state, job.attempts),
        (JobState::Delivered, 1),
        "a rejected key costs no attempt"
    );
    assert_eq!(app.key_state(K1).await.0, KeyState::Rejected);
    assert_eq!(
        app.key_state(K2).await,
        (KeyState::Delivered, Some(grant.clone()))
    );
    assert_eq!(app.sandbox.grant(&grant).unwrap().key_value(), Some(K2));
    // A rejected key is never offered again.
    let next = app.sell().await;
    step(&app).await;
    assert_eq!(app.job_state(&next).await, JobState::WaitingForKeys);
    app.stop().await;
}

#[tokio::test]
async fn conflict_with_a_failed_lookup_retries_later_with_the_same_key() {
    let app = app_with_keys().await;
    let grant = app.sell().await;
    app.sandbox.script_faults(&grant, [Fault::ApplyThen500]);
    step(&app).await;
    app.sandbox.set_lookup_failures(true);
    app.make_due(&grant).await;
    step(&app).await;
    let job = app.job(&grant).await;
    assert_eq!(job.state, JobState::Retrying);
    assert!(job.last_error.unwrap().contains("look-up failed"));
    assert_eq!(
        app.key_state(K1).await,
        (KeyState::Reserved, Some(grant.clone()))
    );
    app.sandbox.set_lookup_failures(false);
    app.make_due(&grant).await;
    step(&app).await;
    assert_eq!(app.job_state(&grant).await, JobState::Delivered);
    assert_eq!(app.key_state(K1).await.0, KeyState::Delivered);
    app.stop().await;
}

#[tokio::test]
async fn permanent_answers_fail_the_job_and_free_the_key() {
    let app = app_with_keys().await;
    for status in [400u16, 422] {
        let grant = app.sell().await;
        app.sandbox
            .script_faults(&grant, [Fault::Status { status }]);
        step(&app).await;
        let job = app.job(&grant).await;
        assert_eq!(
            (job.state, job.last_http_status),
            (JobState::Failed, Some(i32::from(status)))
        );
        assert_eq!(job.key_id, None);
        assert_eq!(
            app.key_state(K1).await,
            (KeyState::Available, None),
            "after {status}"
        );
    }
    // A grant Dodo does not know: a real 404 from the sandbox.
    let unknown = app.sandbox.webhook_for(
        &serde_json::from_value(serde_json::json!({"id":"grant_unknown","customer_id":"c","entitlement_id":ENT,"status":"Pending","integration_type":"license_key"})).unwrap(),
        "entitlement_grant.created",
    );
    assert_eq!(app.post(&unknown).await.status(), 200);
    step(&app).await;
    let job = app.job("grant_unknown").await;
    assert_eq!(
        (job.state, job.last_http_status),
        (JobState::Failed, Some(404))
    );
    assert_eq!(app.key_state(K1).await.0, KeyState::Available);
    app.stop().await;
}

#[tokio::test]
async fn a_wrong_api_key_is_retried_not_failed() {
    let app = TestApp::spawn_with(Role::Web, |_| {}).await;
    app.add_pool("pro", ENT, &[K1]).await;
    let grant = app.sell().await;
    let mut settings = app.settings().clone();
    settings.dodo.api_key = Some("sk_wrong".to_string().into());
    let ctx = keyrelay::fulfillment::WorkerContext::new(
        app.db.clone(),
        keyrelay::startup::dodo_client(&settings, &app.db).unwrap(),
        &settings.worker,
    )
    .with_sources(settings.sources().unwrap())
    .with_vault(settings.keys.sealing_vault().unwrap());
    run_batch(&ctx, 10).await.unwrap();
    let job = app.job(&grant).await;
    assert_eq!(
        (job.state, job.last_http_status),
        (JobState::Retrying, Some(401))
    );
    assert!(job.last_error.unwrap().contains("DODO_PAYMENTS_API_KEY"));
    assert_eq!(app.key_state(K1).await.0, KeyState::Reserved);
    app.stop().await;
}

#[tokio::test]
async fn rate_limits_and_server_errors_retry_with_the_same_key() {
    let app = TestApp::spawn_with(Role::Web, |s| s.worker.backoff_max_ms = 60_000).await;
    app.add_pool("pro", ENT, &[K1, K2]).await;
    let grant = app.sell().await;
    app.sandbox.script_faults(
        &grant,
        [
            Fault::RateLimited {
                retry_after_secs: 7,
            },
            Fault::Status { status: 503 },
            Fault::Hang,
        ],
    );
    step(&app).await;
    let job = app.job(&grant).await;
    assert_eq!(
        (job.state, job.last_http_status),
        (JobState::Retrying, Some(429))
    );
    let wait = (job.run_at - chrono::Utc::now()).num_milliseconds();
    assert!(
        wait > 6_000 && wait <= 7_000,
        "Retry-After is honoured within the backoff cap: {wait} ms"
    );
    app.make_due(&grant).await;
    step(&app).await;
    assert_eq!(app.job(&grant).await.last_http_status, Some(503));
    app.make_due(&grant).await;
    step(&app).await; // the sandbox never answers: the client times out
    let job = app.job(&grant).await;
    assert_eq!(
        (job.state, job.last_http_status),
        (JobState::Retrying, None)
    );
    assert!(job.last_error.unwrap().contains("timed out"));
    app.make_due(&grant).await;
    step(&app).await;
    let job = app.job(&grant).await;
    // Four calls, three attempts: the 429 gave its attempt back.
    assert_eq!((job.state, job.attempts), (JobState::Delivered, 3));
    let keys: Vec<String> = app.keys_sent_to_dodo();
    assert!(keys.iter().all(|k| k == K1), "{keys:?}");
    let attempts = app.count("SELECT count(*) FROM attempts").await;
    assert_eq!(attempts, 4, "every attempt is recorded");
    app.stop().await;
}

#[tokio::test]
async fn giving_up_after_max_attempts_keeps_the_key_reserved() {
    let app = TestApp::spawn_with(Role::Web, |s| s.worker.max_attempts = 2).await;
    app.add_pool("pro", ENT, &[K1, K2]).await;
    let grant = app.sell().await;
    app.sandbox.script_faults(
        &grant,
        [Fault::Status { status: 500 }, Fault::Status { status: 502 }],
    );
    step(&app).await;
    app.make_due(&grant).await;
    step(&app).await;
    let job = app.job(&grant).await;
    assert_eq!((job.state, job.attempts), (JobState::Failed, 2));
    assert!(job.last_error.unwrap().contains("gave up after 2 attempts"));
    assert_eq!(
        app.key_state(K1).await,
        (KeyState::Reserved, Some(grant.clone()))
    );
    // A human retries it: fresh budget, same key, delivered.
    keyrelay::ops::jobs::retry_jobs(
        &app.db,
        &[crate::helpers::grant_id(&grant)],
        keyrelay::domain::Actor::Cli,
    )
    .await
    .unwrap();
    step(&app).await;
    assert_eq!(app.job_state(&grant).await, JobState::Delivered);
    assert_eq!(app.key_state(K1).await.0, KeyState::Delivered);
    app.stop().await;
}
