//! The outbox under faults: a notice waits out a vendor that is down through a SIGKILL and a
//! restart and is taken once; a thousand revocations under load lose none; hostile receivers
//! (a 5 MB answer, a hang, a redirect to another host) hold up no grant; signed keys that no
//! longer count are on the signed revocation list that `keys verify --revocations` reads.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use futures_util::StreamExt;
use keyrelay::configuration::KeySourceSettings;
use keyrelay::domain::{JobState, KeyState};
use keyrelay::harness::SANDBOX_VENDOR;
use keyrelay::pool::{NewPool, add_pool};
use keyrelay::sandbox::VendorFault;
use keyrelay::sandbox::shop::ShopReceiver;
use keyrelay::sources::{Source, sign};
use keyrelay::startup::Role;
use secrecy::{ExposeSecret, SecretString};

use crate::after_delivery::{add_vendor_pool, notifying, wait_outbox_drained};
use crate::helpers::{ENT, TestApp, as_env, keyrelay_async, spawn_worker, wait_until};

async fn revoke(app: &TestApp, grant_id: &str, reason: &str) {
    let grant = app.sandbox.revoke(grant_id, reason).unwrap();
    let hook = app.sandbox.webhook_for(&grant, "entitlement_grant.revoked");
    assert_eq!(app.post(&hook).await.status(), 200);
}

/// The notice about `grant_id`'s key to the vendor: (state, attempts).
async fn vendor_notice(app: &TestApp, grant_id: &str) -> Option<(String, i32)> {
    sqlx::query_as(
        "SELECT state::text, attempts FROM outbox WHERE grant_id = $1 AND target LIKE 'source:%'",
    )
    .bind(grant_id)
    .fetch_optional(&app.db)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_notice_to_a_vendor_that_is_down_survives_a_sigkill_and_is_taken_once() {
    let app = TestApp::spawn_web().await;
    add_vendor_pool(&app).await;
    let vendor = &app.settings().key_sources[SANDBOX_VENDOR];
    let mut env = app.worker_env(25);
    env.extend([
        (
            "KEYRELAY_KEY_SOURCES__SANDBOX_VENDOR__URL",
            vendor.url.clone(),
        ),
        (
            "KEYRELAY_KEY_SOURCES__SANDBOX_VENDOR__SECRET",
            vendor.secret.expose_secret().to_string(),
        ),
        (
            "KEYRELAY_KEY_SOURCES__SANDBOX_VENDOR__KEY_POINTER",
            vendor.key_pointer.clone(),
        ),
        (
            "KEYRELAY_KEY_SOURCES__SANDBOX_VENDOR__REVOKE_URL",
            vendor.revoke_url.clone().unwrap(),
        ),
    ]);
    let log = Arc::new(Mutex::new(String::new()));
    let mut worker = spawn_worker(&env, log.clone());
    let grant = app.sell().await;
    app.wait_for_state(&grant, JobState::Delivered).await;
    let key = app
        .key_values(&format!("grant_id = '{grant}'"))
        .await
        .remove(0);

    let down = std::iter::repeat_n(VendorFault::Status { status: 503 }, 10_000);
    app.sandbox.script_vendor_revocation_faults(&grant, down);
    revoke(&app, &grant, "refund").await;
    wait_until(
        "the vendor refused twice",
        Duration::from_secs(30),
        || async {
            vendor_notice(&app, &grant)
                .await
                .is_some_and(|(_, tries)| tries >= 2)
        },
    )
    .await;
    worker.start_kill().unwrap();
    worker.wait().await.unwrap();
    let (state, _) = vendor_notice(&app, &grant).await.unwrap();
    assert_eq!(state, "pending", "the notice waits");
    assert!(app.sandbox.vendor_notices().is_empty());
    assert_eq!(app.sandbox.vendor_standing(&key).as_deref(), Some("active"));

    app.sandbox.clear_vendor_revocation_faults(&grant);
    let mut worker = spawn_worker(&env, log.clone());
    wait_outbox_drained(&app).await;
    assert_eq!(vendor_notice(&app, &grant).await.unwrap().0, "sent");
    let taken = app.sandbox.vendor_notices();
    assert_eq!(taken.len(), 1, "taken once: {taken:?}");
    assert_eq!(
        (taken[0].action.as_str(), taken[0].key.as_str()),
        ("revoke", key.as_str())
    );
    assert_eq!(
        app.sandbox.vendor_standing(&key).as_deref(),
        Some("revoked")
    );
    let log = log.lock().unwrap().clone();
    assert!(!log.contains(&key), "the key never reaches the log");
    worker.start_kill().unwrap();
    app.stop().await;
}

#[tokio::test]
async fn a_thousand_revocations_under_load_reach_the_shop_once_each() {
    const N: usize = 1000;
    let shop = ShopReceiver::start().unwrap();
    let app = TestApp::spawn_with(Role::All, notifying(&shop)).await;
    let keys: Vec<String> = (0..N + 200).map(|i| format!("LOAD-{i:06}-KEY")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    app.add_pool("codes", ENT, &keys).await;
    let grants = app.sell_many(N).await;
    app.wait_delivered(N as i64).await;

    // Revoke all while 200 more grants are sold and fulfilled, some revocations twice.
    let selling = async {
        let mut more = Vec::new();
        for _ in 0..200 {
            more.push(app.sell().await);
        }
        more
    };
    let revoking = futures_util::stream::iter(grants.iter().enumerate()).for_each_concurrent(
        16,
        |(i, grant)| {
            let app = &app;
            async move {
                revoke(app, grant, "refund").await;
                if i % 10 == 0 {
                    let again = app.sandbox.grant(grant).unwrap();
                    let hook = app.sandbox.webhook_for(&again, "entitlement_grant.revoked");
                    assert_eq!(app.post(&hook).await.status(), 200);
                }
            }
        },
    );
    let (more, ()) = tokio::join!(selling, revoking);
    app.wait_delivered(more.len() as i64).await;
    wait_outbox_drained(&app).await;

    let revoked: HashSet<String> = shop
        .of_type("license_key.revoked")
        .iter()
        .map(|n| n.data["grant_id"].as_str().unwrap().to_string())
        .collect();
    let expected: HashSet<String> = grants.iter().cloned().collect();
    assert_eq!(revoked, expected, "every revocation reached the shop");
    assert_eq!(shop.of_type("license_key.revoked").len(), N, "once each");
    assert_eq!(shop.of_type("license_key.delivered").len(), N + 200);
    let (requests, forged) = shop.requests();
    assert_eq!(forged, 0, "every notice verifies");
    assert_eq!(requests as usize, 2 * N + 200, "no notice sent twice");
    app.stop().await;
    shop.stop().await;
}

#[derive(Default)]
struct Hits {
    trap: AtomicUsize,
}

/// A vendor and shop endpoint that answers badly: a 5 MB answer, no answer at all, or a
/// redirect to another host (`/trap`, which must never be asked).
async fn hostile(request: actix_web::HttpRequest, hits: web::Data<Arc<Hits>>) -> HttpResponse {
    match request.path() {
        "/licenses" => HttpResponse::Ok().json(serde_json::json!({
            "key": format!("HOS-{:016x}", rand::random::<u64>())
        })),
        "/huge" => {
            let chunks = futures_util::stream::iter(0..80)
                .map(|_| Ok::<_, std::io::Error>(web::Bytes::from(vec![b'x'; 65_536])));
            HttpResponse::InternalServerError().streaming(chunks)
        }
        "/hang" => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            HttpResponse::Ok().finish()
        }
        "/redirect" => {
            let port = request
                .connection_info()
                .host()
                .rsplit(':')
                .next()
                .unwrap_or("80")
                .to_string();
            HttpResponse::TemporaryRedirect()
                .insert_header(("location", format!("http://localhost:{port}/trap")))
                .finish()
        }
        _ => {
            hits.trap.fetch_add(1, Ordering::SeqCst);
            HttpResponse::Ok().finish()
        }
    }
}

#[tokio::test]
async fn hostile_receivers_hold_up_no_grant_and_are_never_followed() {
    let hits = Arc::new(Hits::default());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let data = web::Data::new(hits.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .default_service(web::to(hostile))
    })
    .workers(2)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)
    .unwrap()
    .run();
    let handle = server.handle();
    tokio::spawn(server);

    let secret = SecretString::from("whsec_c2VjcmV0LWZvci1hLWhvc3RpbGUtdmVuZG9y");
    let source = |revoke: &str| KeySourceSettings {
        url: format!("{base}/licenses"),
        secret: secret.clone(),
        key_pointer: "/key".into(),
        timeout_secs: 2,
        revoke_url: Some(format!("{base}{revoke}")),
    };
    let app = TestApp::spawn_with(Role::All, |s| {
        for (name, path) in [
            ("huge", "/huge"),
            ("hang", "/hang"),
            ("redirect", "/redirect"),
        ] {
            s.key_sources.insert(name.into(), source(path));
        }
        s.notify.url = Some(format!("{base}/hang"));
        s.notify.secret = Some(secret.clone());
        s.notify.timeout_secs = 2;
    })
    .await;
    let mut hostile_grants = Vec::new();
    for name in ["huge", "hang", "redirect"] {
        let entitlement = format!("ent_{name}");
        let pool = NewPool {
            name: name.into(),
            entitlement_id: entitlement.clone(),
            source: Some(Source::Http),
            endpoint: Some(name.into()),
            ..Default::default()
        };
        add_pool(&app.db, &pool).await.unwrap();
        for _ in 0..3 {
            let grant = app.sandbox.create_grant(&entitlement, None);
            let hook = app.sandbox.webhook_for(&grant, "entitlement_grant.created");
            assert_eq!(app.post(&hook).await.status(), 200);
            hostile_grants.push(grant.id);
        }
    }
    app.wait_delivered(9).await;
    for grant in &hostile_grants {
        revoke(&app, grant, "refund").await;
    }
    // While every notice above is refused, hangs or is redirected, sales go on.
    let keys: Vec<String> = (0..40).map(|i| format!("CALM-{i:04}-KEY")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    app.add_pool("codes", ENT, &keys).await;
    let started = std::time::Instant::now();
    app.sell_many(40).await;
    // The nine hostile grants were cancelled by their refunds.
    app.wait_delivered(40).await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "40 grants took {:?} beside hostile receivers",
        started.elapsed()
    );
    wait_until("every hostile receiver was tried", Duration::from_secs(30), || async {
        app.count("SELECT count(*) FROM outbox WHERE attempts >= 1 AND target <> 'shop' AND event_type = 'license_key.revoked'")
            .await
            == 9
    })
    .await;
    let errors = |target: &'static str| {
        let app = &app;
        async move {
            let rows: Vec<(String, Option<String>)> = sqlx::query_as(
                "SELECT state::text, last_error FROM outbox WHERE target = $1 AND attempts >= 1",
            )
            .bind(target)
            .fetch_all(&app.db)
            .await
            .unwrap();
            rows
        }
    };
    for (state, error) in errors("source:redirect").await {
        assert_eq!(state, "failed", "a redirect is parked");
        assert!(error.unwrap().contains("follows no redirects"));
    }
    for (state, error) in errors("source:huge").await {
        assert_eq!(state, "pending", "a 500 is tried again");
        assert!(error.unwrap().contains("not read"));
    }
    for (state, _) in errors("source:hang").await {
        assert_eq!(state, "pending", "no answer is tried again");
    }
    assert_eq!(
        hits.trap.load(Ordering::SeqCst),
        0,
        "a redirect is never followed"
    );
    app.stop().await;
    handle.stop(false).await;
}

/// `keyrelay keys verify KEY --public-key PUBLIC --revocations FILE`.
async fn verify_against(key: &str, public: &str, file: &str) -> std::process::Output {
    let args = [
        "keys",
        "verify",
        key,
        "--public-key",
        public,
        "--revocations",
        file,
    ];
    keyrelay_async(&as_env(&[]), &args).await
}

#[tokio::test]
async fn a_revoked_signed_key_is_on_the_signed_list_and_fails_keys_verify() {
    let (private, public) = sign::new_signing_key();
    let app = TestApp::spawn_with(Role::All, |s| s.keys.signing_key = Some(private.clone())).await;
    let pool = NewPool {
        name: "signed".into(),
        entitlement_id: ENT.into(),
        source: Some(Source::Sign),
        ..Default::default()
    };
    add_pool(&app.db, &pool).await.unwrap();
    let grants = app.sell_many(3).await;
    app.wait_delivered(3).await;
    let key_of = |grant: &str| {
        let app = &app;
        let grant = grant.to_string();
        async move {
            app.key_values(&format!("grant_id = '{grant}'"))
                .await
                .remove(0)
        }
    };
    let (refunded, on_hold, kept) = (&grants[0], &grants[1], &grants[2]);
    let fetch = || async {
        let response = app
            .http
            .get(format!("{}/signing-keys/revoked", app.base()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            response.headers()["cache-control"]
                .to_str()
                .unwrap()
                .contains("public")
        );
        response.bytes().await.unwrap()
    };
    let empty = fetch().await;
    revoke(&app, refunded, "refund").await;
    revoke(&app, on_hold, "subscription_on_hold").await;
    assert_eq!(
        app.key_state(&key_of(on_hold).await).await.0,
        KeyState::Suspended
    );
    let served = fetch().await;

    let public_key = sign::PublicKeys::from_base64(&public).unwrap();
    let list = keyrelay::sources::revocations::verify(&served, &public_key).unwrap();
    let before = keyrelay::sources::revocations::verify(&empty, &public_key).unwrap();
    assert!(list.sequence > before.sequence && before.revoked.is_empty());
    let states: Vec<(&str, &str)> = list
        .revoked
        .iter()
        .map(|r| (r.grant_id.as_str(), r.state.as_str()))
        .collect();
    assert_eq!(
        states,
        [
            (refunded.as_str(), "revoked"),
            (on_hold.as_str(), "suspended")
        ]
    );
    let (_, other) = sign::new_signing_key();
    let other_public = sign::PublicKeys::from_base64(&other).unwrap();
    assert!(
        keyrelay::sources::revocations::verify(&served, &other_public).is_err(),
        "the list's signature checks"
    );

    let file =
        std::env::temp_dir().join(format!("keyrelay-revoked-{}.json", rand::random::<u64>()));
    std::fs::write(&file, &served).unwrap();
    let file = file.to_str().unwrap();
    for (grant, valid) in [(refunded, false), (on_hold, false), (kept, true)] {
        let key = key_of(grant).await;
        let out = verify_against(&key, &public, file).await;
        assert_eq!(
            out.status.success(),
            valid,
            "{grant}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if !valid {
            assert!(String::from_utf8_lossy(&out.stderr).contains("since"));
        }
    }
    let mut forged: serde_json::Value = serde_json::from_slice(&served).unwrap();
    forged["signature"] = serde_json::Value::String("A".repeat(86));
    std::fs::write(file, forged.to_string()).unwrap();
    let key = key_of(kept).await;
    let out = verify_against(&key, &public, file).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("signature does not match"));
    std::fs::remove_file(file).unwrap();
    app.stop().await;
}
