//! Correctly signed webhooks with hostile content, and hostile connections: none of them stalls
//! fulfillment, none is answered 503 for its content, and what cannot be processed is visible.

use std::time::{Duration, Instant};

use keyrelay::domain::JobState;
use keyrelay::fulfillment::run_batch;
use keyrelay::startup::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{ENT, TestApp};

/// The `created` webhook body of a new sandbox grant, for editing.
fn created_body(app: &TestApp) -> (String, serde_json::Value) {
    let grant = app.sandbox.create_grant(ENT, None);
    let hook = app.sandbox.webhook_for(&grant, "entitlement_grant.created");
    (grant.id, serde_json::from_str(&hook.body).unwrap())
}

async fn post_signed(app: &TestApp, id: &str, body: String) -> reqwest::Response {
    let hook = app.sandbox.sign(id.to_string(), body);
    app.post(&hook).await
}

#[tokio::test]
async fn a_grant_with_an_oversized_id_is_refused_with_its_reason_and_others_flow() {
    let app = TestApp::spawn_web().await;
    app.add_pool("pro", ENT, &["HOST-1", "HOST-2"]).await;
    let (_, mut body) = created_body(&app);
    body["data"]["entitlement_id"] = "e".repeat(5_000).into();
    let r = post_signed(&app, "msg_huge_ent", body.to_string()).await;
    assert_eq!(r.status(), 422);
    let reason = r.text().await.unwrap();
    assert!(reason.contains("entitlement id"), "{reason}");
    // An operator can see it.
    let problem: Option<String> =
        sqlx::query_scalar("SELECT problem FROM events WHERE webhook_id = 'msg_huge_ent'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(problem.unwrap().contains("entitlement id"));
    // The next grant is fulfilled as usual.
    let grant = app.sell().await;
    run_batch(&app.worker(), 10).await.unwrap();
    assert_eq!(app.job_state(&grant).await, JobState::Delivered);
    app.stop().await;
}

#[tokio::test]
async fn a_nul_character_in_metadata_is_stored_and_the_grant_fulfilled() {
    let app = TestApp::spawn_web().await;
    app.add_pool("pro", ENT, &["NUL-1"]).await;
    let (grant, mut body) = created_body(&app);
    body["data"]["metadata"] = serde_json::json!({ "note": "gift\u{0}card" });
    let r = post_signed(&app, "msg_nul", body.to_string()).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let note: String = sqlx::query_scalar(
        "SELECT payload #>> '{data,metadata,note}' FROM events WHERE webhook_id = 'msg_nul'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(note, "gift\u{FFFD}card");
    run_batch(&app.worker(), 10).await.unwrap();
    assert_eq!(app.job_state(&grant).await, JobState::Delivered);
    app.stop().await;
}

#[tokio::test]
async fn an_event_type_or_webhook_id_postgres_cannot_hold_is_refused_not_retried() {
    let app = TestApp::spawn_web().await;
    let (_, mut body) = created_body(&app);
    let long_id: String = (0..1_500)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    let r = post_signed(&app, &long_id, body.to_string()).await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("webhook-id"));
    body["type"] = "entitlement_grant.\u{0}created".into();
    let r = post_signed(&app, "msg_nul_type", body.to_string()).await;
    assert_eq!(r.status(), 422);
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn unknown_event_types_share_one_metrics_label() {
    let app = TestApp::spawn_web().await;
    for i in 0..3 {
        let body = serde_json::json!({"business_id": "b", "type": format!("custom.event_{i}"), "data": {}});
        let r = post_signed(&app, &format!("msg_custom_{i}"), body.to_string()).await;
        assert_eq!(r.status(), 200);
    }
    let metrics = app
        .http
        .get(app.url.replace("/webhooks/dodo", "/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!metrics.contains("custom.event_"), "{metrics}");
    assert!(
        metrics.contains("keyrelay_webhooks_total{type=\"other\",outcome=\"stored\"} 3"),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_body_that_trickles_in_is_cut_off() {
    let app = TestApp::spawn_with(Role::Web, |s| s.http.body_timeout_secs = 1).await;
    let address = app
        .url
        .trim_start_matches("http://")
        .trim_end_matches("/webhooks/dodo")
        .to_string();
    let mut slow = tokio::net::TcpStream::connect(&address).await.unwrap();
    slow.write_all(
        b"POST /webhooks/dodo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    )
    .await
    .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 512];
    // One byte a second; the server must give up long before the body is complete.
    loop {
        tokio::select! {
            n = slow.read(&mut buf) => {
                let n = n.unwrap_or(0);
                if n == 0 { break; }
                answer.extend_from_slice(&buf[..n]);
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                assert!(started.elapsed() < Duration::from_secs(10), "still reading after 10 s");
                if slow.write_all(b" ").await.is_err() { break; }
            }
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // Others are served meanwhile and after.
    app.sell().await;
    app.stop().await;
}

#[tokio::test]
async fn readiness_answers_within_250_ms_while_the_database_is_down() {
    let app = TestApp::spawn_web().await;
    let ready = app.url.replace("/webhooks/dodo", "/readyz");
    crate::lifecycle::set_database_reachable(&app, false).await;
    let started = Instant::now();
    let r = app.http.get(&ready).send().await.unwrap();
    let took = started.elapsed();
    assert_eq!(r.status(), 503);
    assert!(took < Duration::from_millis(250), "took {took:?}");
    crate::lifecycle::set_database_reachable(&app, true).await;
    app.stop().await;
}

#[tokio::test]
async fn a_garbled_answer_from_dodo_fails_that_grant_only_and_is_recorded_readably() {
    let app = TestApp::spawn_web().await;
    app.add_pool("pro", ENT, &["GARB-1", "GARB-2"]).await;
    let garbled = app.sell().await;
    let fine = app.sell().await;
    app.sandbox.script_faults(
        &garbled,
        [keyrelay::sandbox::Fault::Garbage { status: 422 }],
    );
    run_batch(&app.worker(), 10).await.unwrap();
    let job = app.job(&garbled).await;
    assert_eq!(job.state, JobState::Failed);
    let error = job.last_error.unwrap();
    assert!(
        !error.contains('\0') && !error.contains('\u{1b}') && error.len() < 1_000,
        "{error:?}"
    );
    assert_eq!(app.job_state(&fine).await, JobState::Delivered);
    app.stop().await;
}

#[tokio::test]
async fn a_job_whose_run_panics_is_failed_with_its_grant_named_and_others_flow() {
    use keyrelay::store::{claim_batch, complete_batch};
    let app = TestApp::spawn_web().await;
    app.add_pool("pro", ENT, &["PANIC-1", "PANIC-2"]).await;
    let doomed = app.sell().await;
    let job = claim_batch(&app.pool, 1, Duration::from_secs(30))
        .await
        .unwrap()
        .remove(0);
    let outcome =
        keyrelay::fulfillment::run::guarded(&job, async { panic!("arithmetic went wrong") })
            .await
            .expect("a panic still records an outcome");
    complete_batch(&app.pool, &[outcome]).await.unwrap();
    let failed = app.job(&doomed).await;
    assert_eq!(failed.state, JobState::Failed);
    let error = failed.last_error.unwrap();
    assert!(
        error.contains("arithmetic went wrong") && error.contains(&doomed),
        "{error}"
    );
    let next = app.sell().await;
    run_batch(&app.worker(), 10).await.unwrap();
    assert_eq!(app.job_state(&next).await, JobState::Delivered);
    app.stop().await;
}
