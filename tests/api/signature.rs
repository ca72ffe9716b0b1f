//! Standard Webhooks verification: only correctly signed, fresh requests are stored.

use keyrelay::sandbox::Sandbox;
use keyrelay::sandbox::sign;
use keyrelay::startup::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{ENT, TestApp};

const OLD: &[u8] = b"old-secret-0123456789abcdef";
const NEW: &[u8] = b"new-secret-0123456789abcdef";

fn whsec(key: &[u8]) -> String {
    use base64::Engine;
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

fn body(grant: &str) -> String {
    serde_json::json!({"business_id":"bus_1","type":"entitlement_grant.created","timestamp":"2026-11-20T09:14:03Z",
        "data":{"id":grant,"customer_id":"cus_1","entitlement_id":ENT,"integration_type":"license_key","status":"Pending","metadata":null,"license_key":null}})
    .to_string()
}

async fn rotated_app() -> TestApp {
    TestApp::spawn_with(Role::Web, |s| {
        s.webhook.secret = Some(format!("{} {}", whsec(OLD), whsec(NEW)).into());
    })
    .await
}

#[tokio::test]
async fn only_valid_fresh_signatures_are_stored() {
    let app = rotated_app().await;
    // Stale and future stamps are a minute outside the 5-minute window, so the cases cannot
    // drift back inside it while a loaded machine runs them.
    let now = chrono::Utc::now().timestamp();
    let b = body("grant_sig_1");
    let good = sign(NEW, "msg_1", now, b.as_bytes());

    let cases: Vec<(&str, String, String, String, u16)> = vec![
        (
            "wrong secret",
            now.to_string(),
            sign(b"not-our-secret", "msg_1", now, b.as_bytes()),
            b.clone(),
            401,
        ),
        (
            "tampered body",
            now.to_string(),
            good.clone(),
            b.replace("cus_1", "cus_2"),
            401,
        ),
        (
            "stale timestamp",
            (now - 360).to_string(),
            sign(NEW, "msg_1", now - 360, b.as_bytes()),
            b.clone(),
            401,
        ),
        (
            "future timestamp",
            (now + 360).to_string(),
            sign(NEW, "msg_1", now + 360, b.as_bytes()),
            b.clone(),
            401,
        ),
        (
            "timestamp not a number",
            "soon".into(),
            good.clone(),
            b.clone(),
            401,
        ),
        (
            "signature for another id",
            now.to_string(),
            sign(NEW, "msg_other", now, b.as_bytes()),
            b.clone(),
            401,
        ),
    ];
    for (what, ts, sig, body, expected) in cases {
        let r = app.post_raw("msg_1", &ts, &sig, body).await;
        assert_eq!(r.status().as_u16(), expected, "{what}");
    }
    for missing in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        let mut req = app.http.post(&app.url).body(b.clone());
        for (name, value) in [
            ("webhook-id", "msg_1".to_string()),
            ("webhook-timestamp", now.to_string()),
            ("webhook-signature", good.clone()),
        ] {
            if name != missing {
                req = req.header(name, value);
            }
        }
        assert_eq!(req.send().await.unwrap().status(), 401, "missing {missing}");
    }
    assert_eq!(
        app.count("SELECT count(*) FROM events").await,
        0,
        "nothing unverified is stored"
    );
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, 0);

    // Both rotated secrets verify, and one good signature among several is enough.
    let r = app
        .post_raw("msg_1", &now.to_string(), &good, b.clone())
        .await;
    assert_eq!(r.status(), 200);
    let b2 = body("grant_sig_2");
    let several = format!(
        "v1,bm90IGl0 {} v2,whatever",
        sign(OLD, "msg_2", now, b2.as_bytes())
    );
    assert_eq!(
        app.post_raw("msg_2", &now.to_string(), &several, b2)
            .await
            .status(),
        200
    );
    assert_eq!(app.count("SELECT count(*) FROM events").await, 2);
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, 2);
    app.stop().await;
}

#[tokio::test]
async fn oversized_and_non_json_bodies_are_refused() {
    let app = rotated_app().await;
    let signer = Sandbox::new("unused", NEW);
    // The size is refused from Content-Length, before any of the body is read.
    let addr = app
        .url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /webhooks/dodo HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        300 * 1024
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 64];
    let n = tcp.read(&mut answer).await.unwrap();
    assert!(
        String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
    let hook = signer.sign("msg_text".into(), "this is not json".into());
    let r = app.post(&hook).await;
    assert_eq!(r.status(), 400);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("not a JSON webhook envelope")
    );
    assert_eq!(app.count("SELECT count(*) FROM events").await, 0);
    // Verified JSON that is not a grant: refused with the reason, and kept for operators.
    let hook = signer.sign(
        "msg_nogrant".into(),
        r#"{"type":"entitlement_grant.created","data":{"id":1}}"#.into(),
    );
    assert_eq!(app.post(&hook).await.status(), 422);
    assert_eq!(
        app.count("SELECT count(*) FROM events WHERE problem LIKE '%not a grant%'")
            .await,
        1
    );
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, 0);
    app.stop().await;
}
