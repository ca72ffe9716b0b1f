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
            .fetch_one(&app.db)
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
    .fetch_one(&app.db)
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

/// The value of one series in the Prometheus text, 0 when absent.
fn series(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn unknown_event_types_share_one_metrics_label() {
    let app = TestApp::spawn_web().await;
    let metrics_url = app.url.replace("/webhooks/dodo", "/metrics");
    let scrape = || async {
        app.http
            .get(&metrics_url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let other = "keyrelay_webhooks_total{type=\"other\",outcome=\"stored\"}";
    let before = series(&scrape().await, other);
    for i in 0..3 {
        let body = serde_json::json!({"business_id": "b", "type": format!("custom.event_{i}"), "data": {}});
        let r = post_signed(&app, &format!("msg_custom_{i}"), body.to_string()).await;
        assert_eq!(r.status(), 200);
    }
    let metrics = scrape().await;
    assert!(!metrics.contains("custom.event_"), "{metrics}");
    // Other tests in this process count too, so compare the change.
    assert!(series(&metrics, other) - before >= 3.0, "{metrics}");
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
    crate::helpers::set_database_reachable(&app, false).await;
    let started = Instant::now();
    let r = app.http.get(&ready).send().await.unwrap();
    let took = started.elapsed();
    assert_eq!(r.status(), 503);
    assert!(took < Duration::from_millis(250), "took {took:?}");
    crate::helpers::set_database_reachable(&app, true).await;
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
    let job = claim_batch(
        &app.db,
        1,
        Duration::from_secs(30),
        &Default::default(),
        None,
        &Default::default(),
    )
    .await
    .unwrap()
    .remove(0);
    let outcome = keyrelay::fulfillment::run::guarded(&app.worker(), &job, async {
        panic!("arithmetic went wrong")
    })
    .await
    .expect("a panic still records an outcome");
    complete_batch(&app.db, &[outcome], &Default::default())
        .await
        .unwrap();
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

#[tokio::test]
async fn an_unreachable_alert_webhook_is_logged_by_host_never_by_its_secret_path() {
    use keyrelay::pool::{NewPool, add_pool};
    let app = TestApp::spawn_web().await;
    add_pool(
        &app.db,
        &NewPool {
            name: "alerting".into(),
            entitlement_id: ENT.into(),
            low_stock: 5,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    app.import("alerting", &["ALERT-1"]).await;
    app.sell().await;
    let secret_url = "http://127.0.0.1:1/services/T000/B000/XSECRETPATHX";
    let ctx = app.worker().with_alert_webhook(Some(secret_url.into()));
    run_batch(&ctx, 10).await.unwrap();
    crate::helpers::wait_until(
        "the alert delivery failed once",
        Duration::from_secs(10),
        || async {
            crate::helpers::captured_logs().contains("low-stock alert webhook unreachable")
        },
    )
    .await;
    let logs = crate::helpers::captured_logs();
    assert!(
        !logs.contains("XSECRETPATHX"),
        "the alert URL reached the logs"
    );
    assert!(logs.contains("127.0.0.1:1"), "the host tried is named");
    app.stop().await;
}

#[tokio::test]
async fn a_grant_parked_without_keys_is_logged_once_with_its_pool() {
    let app = TestApp::spawn_web().await;
    app.add_pool("parked-pool", ENT, &[]).await;
    let grant = app.sell().await;
    run_batch(&app.worker(), 10).await.unwrap();
    run_batch(&app.worker(), 10).await.unwrap();
    assert_eq!(app.job_state(&grant).await, JobState::WaitingForKeys);
    let logs = crate::helpers::captured_logs();
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains(&grant) && l.contains("waits for keys"))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("WARN") && lines[0].contains("parked-pool"),
        "{}",
        lines[0]
    );
    app.stop().await;
}

/// A hostile value for a payload field.
fn hostile_value(rng: &mut impl rand::Rng) -> serde_json::Value {
    match rng.random_range(0..9) {
        0 => serde_json::Value::Null,
        1 => serde_json::json!(rng.random::<i64>()),
        2 => "x".repeat(rng.random_range(200..6_000)).into(),
        3 => "a\u{0}b".into(),
        4 => "\u{1b}[2J\u{7}".into(),
        5 => serde_json::json!({"nested": ["\u{0}", {"deep": "\u{202e}"}]}),
        6 => "".into(),
        7 => serde_json::json!([1, 2, 3]),
        _ => "Pending".into(),
    }
}

#[tokio::test]
async fn random_hostile_payloads_get_2xx_only_when_stored_and_nothing_half_stored() {
    use rand::{Rng, SeedableRng};
    let app = TestApp::spawn_web().await;
    app.add_pool("pro", ENT, &[]).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x6b72);
    let fields = [
        "/type",
        "/data/id",
        "/data/customer_id",
        "/data/entitlement_id",
        "/data/status",
        "/data/metadata",
        "/data/integration_type",
        "/data/license_key",
        "/data",
        "/timestamp",
    ];
    for case in 0..60 {
        let (_, mut body) = created_body(&app);
        for _ in 0..rng.random_range(1..3) {
            let field = fields[rng.random_range(0..fields.len())];
            if let Some(slot) = body.pointer_mut(field) {
                *slot = hostile_value(&mut rng);
            }
        }
        let id = format!("msg_rand_{case}");
        let r = post_signed(&app, &id, body.to_string()).await;
        let status = r.status().as_u16();
        let stored: Option<Option<String>> =
            sqlx::query_scalar("SELECT problem FROM events WHERE webhook_id = $1")
                .bind(&id)
                .fetch_optional(&app.db)
                .await
                .unwrap();
        match status {
            200 => assert_eq!(
                stored,
                Some(None),
                "case {case}: 200 but not stored: {body}"
            ),
            422 => assert!(matches!(stored, Some(Some(_))), "case {case}: 422 not kept"),
            400 => assert_eq!(stored, None, "case {case}"),
            other => panic!("case {case}: answered {other} to {body}"),
        }
    }
    assert_eq!(
        app.count("SELECT count(*) FROM jobs WHERE NOT EXISTS (SELECT 1 FROM events WHERE events.webhook_id = jobs.webhook_id)")
            .await,
        0,
        "a job without its event"
    );
    let keys: Vec<String> = (0..80).map(|i| format!("RAND-KEY-{i:03}")).collect();
    app.import("pro", &keys.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    let grant = app.sell().await;
    for _ in 0..20 {
        if run_batch(&app.worker(), 100).await.unwrap().is_empty() {
            break;
        }
    }
    assert_eq!(
        app.job_state(&grant).await,
        JobState::Delivered,
        "the line still moves"
    );
    app.stop().await;
}

#[tokio::test]
async fn rate_limited_attempts_do_not_use_up_the_attempt_budget() {
    use keyrelay::sandbox::Fault;
    let app = TestApp::spawn_with(Role::Web, |s| s.worker.max_attempts = 2).await;
    app.add_pool("pro", ENT, &["LIMIT-1"]).await;
    let grant = app.sell().await;
    app.sandbox.script_faults(
        &grant,
        (0..4).map(|_| Fault::RateLimited {
            retry_after_secs: 0,
        }),
    );
    for _ in 0..6 {
        run_batch(&app.worker(), 10).await.unwrap();
        if app.job_state(&grant).await != JobState::Retrying {
            break;
        }
        app.make_due(&grant).await;
    }
    let job = app.job(&grant).await;
    assert_eq!(job.state, JobState::Delivered, "{:?}", job.last_error);
    assert_eq!(
        job.attempts, 1,
        "four 429s and one success count as one attempt"
    );
    app.stop().await;
}
