//! Every documented payload variant is accepted; only pending license-key grants make jobs.

use keyrelay::sandbox::Sandbox;
use keyrelay::startup::Role;

use crate::helpers::{ENT, TestApp};

fn webhook_key(app: &TestApp) -> Vec<u8> {
    use secrecy::ExposeSecret;
    keyrelay::configuration::parse_webhook_secrets(
        app.settings()
            .webhook
            .secret
            .as_ref()
            .unwrap()
            .expose_secret(),
    )
    .unwrap()
    .remove(0)
}

#[tokio::test]
async fn every_example_payload_is_accepted_and_only_pending_license_grants_queue() {
    let app = TestApp::spawn_with(Role::Web, |_| {}).await;
    let signer = Sandbox::new("unused", &webhook_key(&app));
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/dodo");
    let mut posted = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        if json.get("type").is_none() {
            continue; // API bodies, not webhooks
        }
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let r = app.post(&signer.sign(format!("msg_{name}"), text)).await;
        assert_eq!(r.status(), 200, "{name}: {}", r.text().await.unwrap());
        posted += 1;
    }
    assert_eq!(posted, 7);
    assert_eq!(app.count("SELECT count(*) FROM events").await, 7);
    let mut queued: Vec<String> = sqlx::query_scalar("SELECT grant_id FROM jobs ORDER BY grant_id")
        .fetch_all(&app.db)
        .await
        .unwrap();
    queued.sort();
    // pending.json and the guide's lowercase variant; not auto-delivered, discord, delivered, revoked, payment.
    assert_eq!(queued, vec!["grant_8VbC6JDZxQ2w", "grant_Q1w2E3r4T5y6"]);
    app.stop().await;
}

#[tokio::test]
async fn a_grant_without_integration_type_queues_only_when_its_entitlement_has_a_pool() {
    let app = TestApp::spawn_with(Role::Web, |_| {}).await;
    let signer = Sandbox::new("unused", &webhook_key(&app));
    let body = |grant: &str, ent: &str| {
        serde_json::json!({"type":"entitlement_grant.created","business_id":"b","timestamp":"2026-11-20T09:14:03Z",
            "data":{"id":grant,"customer_id":"c","entitlement_id":ent,"status":"pending","metadata":null}})
        .to_string()
    };
    app.add_pool("pro", ENT, &[]).await;
    assert_eq!(
        app.post(&signer.sign("msg_a".into(), body("grant_pooled", ENT)))
            .await
            .status(),
        200
    );
    assert_eq!(
        app.post(&signer.sign("msg_b".into(), body("grant_unpooled", "ent_other")))
            .await
            .status(),
        200
    );
    let queued: Vec<String> = sqlx::query_scalar("SELECT grant_id FROM jobs")
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert_eq!(queued, vec!["grant_pooled"]);
    app.stop().await;
}
