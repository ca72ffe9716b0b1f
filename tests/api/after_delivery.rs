//! After delivery: each of Dodo's revocation reasons revokes or suspends the key as the table
//! says, in any order of events; every change reaches the key's vendor and the shop through
//! the outbox, signed and exactly once; signed keys land on the signed revocation list.

use std::time::Duration;

use keyrelay::configuration::Settings;
use keyrelay::domain::{JobState, KeyState, LicenseKey};
use keyrelay::harness::SANDBOX_VENDOR;
use keyrelay::pool::{NewPool, add_pool};
use keyrelay::sandbox::shop::ShopReceiver;
use keyrelay::sources::Source;
use keyrelay::startup::Role;
use secrecy::SecretString;

use crate::helpers::{ENT, TestApp, wait_until};

/// Settings that send notices to `shop`.
pub fn notifying(shop: &ShopReceiver) -> impl FnOnce(&mut Settings) + '_ {
    move |s| {
        s.notify.url = Some(shop.url.clone());
        s.notify.secret = Some(SecretString::from(shop.secret.clone()));
    }
}

/// Adds the `http` pool of `ENT`, whose keys the sandbox's vendor mints.
pub async fn add_vendor_pool(app: &TestApp) {
    let pool = NewPool {
        name: "vendor".into(),
        entitlement_id: ENT.into(),
        source: Some(Source::Http),
        endpoint: Some(SANDBOX_VENDOR.into()),
        ..Default::default()
    };
    add_pool(&app.db, &pool).await.unwrap();
}

/// The state of the key bound to `grant_id`'s job (or to the grant, once unbound).
async fn key_of(app: &TestApp, grant_id: &str) -> KeyState {
    sqlx::query_scalar("SELECT state FROM keys WHERE grant_id = $1")
        .bind(grant_id)
        .fetch_one(&app.db)
        .await
        .expect("the grant has a key")
}

/// The key value bound to `grant_id`.
async fn key_value(app: &TestApp, grant_id: &str) -> String {
    app.key_values(&format!("grant_id = '{grant_id}'"))
        .await
        .pop()
        .expect("the grant has a key")
}

/// Waits until no notice is pending.
pub async fn wait_outbox_drained(app: &TestApp) {
    wait_until("the outbox is drained", Duration::from_secs(60), || async {
        app.count("SELECT count(*) FROM outbox WHERE state = 'pending'")
            .await
            == 0
    })
    .await;
}

/// Sends the sandbox's current view of the grant as `event_type`, and asserts 200.
async fn tell(app: &TestApp, grant_id: &str, event_type: &str) {
    let grant = app.sandbox.grant(grant_id).unwrap();
    let response = app.post(&app.sandbox.webhook_for(&grant, event_type)).await;
    assert_eq!(response.status(), 200, "{event_type} for {grant_id}");
}

/// Adds the vendor's pool and sells one grant of it; returns the grant, delivered, and its key.
async fn delivered_vendor_grant(app: &TestApp) -> (String, String) {
    add_vendor_pool(app).await;
    let grant = app.sell().await;
    app.wait_for_state(&grant, JobState::Delivered).await;
    let key = key_value(app, &grant).await;
    (grant, key)
}

const REVOKED: &str = "entitlement_grant.revoked";
const DELIVERED: &str = "entitlement_grant.delivered";

#[tokio::test]
async fn a_refund_reaches_the_vendor_and_the_shop_once_each() {
    let shop = ShopReceiver::start().unwrap();
    let app = TestApp::spawn_with(Role::All, notifying(&shop)).await;
    let (grant, key) = delivered_vendor_grant(&app).await;
    assert_eq!(app.sandbox.vendor_standing(&key).as_deref(), Some("active"));

    app.sandbox.revoke(&grant, "refund");
    tell(&app, &grant, REVOKED).await;
    // A redelivery of the same webhook, and a replay of the stored one, change nothing more.
    tell(&app, &grant, REVOKED).await;
    let stored: String = sqlx::query_scalar(
        "SELECT webhook_id FROM events WHERE grant_id = $1 AND event_type = $2 LIMIT 1",
    )
    .bind(&grant)
    .bind(REVOKED)
    .fetch_one(&app.db)
    .await
    .unwrap();
    let to = app.settings().recipients();
    let replayed = keyrelay::ops::events::replay(
        &app.db,
        &app.vault(),
        &stored,
        keyrelay::domain::Actor::Cli,
        &to,
    )
    .await
    .unwrap();
    assert_eq!(replayed, keyrelay::ops::events::ReplayOutcome::Unchanged);
    assert_eq!(key_of(&app, &grant).await, KeyState::Revoked);
    assert_eq!(app.job_state(&grant).await, JobState::Cancelled);
    wait_outbox_drained(&app).await;

    assert_eq!(
        app.sandbox.vendor_standing(&key).as_deref(),
        Some("revoked")
    );
    let told = app.sandbox.vendor_notices();
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(
        (told[0].action.as_str(), told[0].key.as_str()),
        ("revoke", key.as_str())
    );
    assert_eq!(told[0].reason.as_deref(), Some("refund"));
    assert!(!told[0].idempotency_key.is_empty());

    let delivered = shop.of_type("license_key.delivered");
    let revoked = shop.of_type("license_key.revoked");
    assert_eq!(
        (delivered.len(), revoked.len()),
        (1, 1),
        "{:?}",
        shop.notices()
    );
    assert_eq!(revoked[0].data["grant_id"], grant.as_str());
    assert_eq!(revoked[0].data["reason"], "refund");
    assert_eq!(
        revoked[0].data["customer_id"],
        app.sandbox.grant(&grant).unwrap().customer_id
    );
    let shown = revoked[0].data["key"].as_str().unwrap();
    assert!(
        shown != key && shown.ends_with(&key[key.len() - 4..]),
        "the shop sees the key masked: {shown}"
    );
    let (requests, forged) = shop.requests();
    assert_eq!(
        (requests, forged),
        (2, 0),
        "each notice sent once, each verified"
    );
    app.stop().await;
    shop.stop().await;
}

/// One grant per reason and per order of the events that follow it; every grant ends as the
/// reason says, whatever the order.
#[tokio::test]
async fn every_reason_in_every_order_ends_as_the_table_says() {
    let shop = ShopReceiver::start().unwrap();
    let app = TestApp::spawn_with(Role::All, |s| {
        notifying(&shop)(s);
        s.admin.token = Some(ADMIN.to_string().into());
    })
    .await;
    add_vendor_pool(&app).await;
    let final_reasons = [
        "refund",
        "manual",
        "subscription_cancelled",
        "subscription_expired",
        "plan_changed",
        "platform_external",
        "SubscriptionPaused",
    ];
    // (reason, order of [delivered, revoked] webhooks) for the revoking reasons and both
    // suspending ones; the revocation is older or newer than the delivered event as Dodo's
    // `updated_at` says, not as the webhooks arrive.
    let mut cases = Vec::new();
    for reason in final_reasons
        .iter()
        .chain(&["subscription_on_hold", "license_key_disabled"])
    {
        for revoked_first in [false, true] {
            cases.push((*reason, revoked_first));
        }
    }
    let mut grants = Vec::new();
    for _ in &cases {
        grants.push(app.sell().await);
    }
    app.wait_delivered(grants.len() as i64).await;
    for ((reason, revoked_first), grant) in cases.iter().zip(&grants) {
        let delivered = app.sandbox.grant(grant).unwrap();
        let delivered = app.sandbox.webhook_for(&delivered, DELIVERED);
        app.sandbox.revoke(grant, reason);
        let revoked = app
            .sandbox
            .webhook_for(&app.sandbox.grant(grant).unwrap(), REVOKED);
        let order = match revoked_first {
            true => [&revoked, &delivered],
            false => [&delivered, &revoked],
        };
        for hook in order {
            assert_eq!(app.post(hook).await.status(), 200);
        }
    }
    for ((reason, revoked_first), grant) in cases.iter().zip(&grants) {
        let expected = match *reason {
            "subscription_on_hold" | "license_key_disabled" => {
                (JobState::Delivered, KeyState::Suspended)
            }
            _ => (JobState::Cancelled, KeyState::Revoked),
        };
        let got = (app.job_state(grant).await, key_of(&app, grant).await);
        assert_eq!(got, expected, "{reason}, revoked first: {revoked_first}");
    }
    wait_outbox_drained(&app).await;
    let revoked = shop.of_type("license_key.revoked").len();
    let suspended = shop.of_type("license_key.suspended").len();
    assert_eq!((revoked, suspended), (14, 4));
    let unknown = app
        .count("SELECT count(*) FROM jobs WHERE last_error LIKE '%SubscriptionPaused%review it%'")
        .await;
    assert_eq!(
        unknown, 2,
        "an unknown reason is kept verbatim and asks for review"
    );
    let attention = app.page("/admin/attention", Some(ADMIN)).await;
    assert!(
        attention.contains("<span id=\"review-total\">2</span>")
            && attention.contains("SubscriptionPaused"),
        "revocations for a reason keyrelay does not know are shown for review"
    );
    app.stop().await;
    shop.stop().await;
}

#[tokio::test]
async fn a_disabled_key_is_reinstated_when_dodo_enables_it_again() {
    let shop = ShopReceiver::start().unwrap();
    let app = TestApp::spawn_with(Role::All, notifying(&shop)).await;
    let (grant, key) = delivered_vendor_grant(&app).await;
    app.sandbox.revoke(&grant, "license_key_disabled");
    tell(&app, &grant, REVOKED).await;
    assert_eq!(key_of(&app, &grant).await, KeyState::Suspended);
    let env = app.cli_env();
    let shown =
        crate::helpers::keyrelay_async(&crate::helpers::as_env(&env), &["jobs", "show", &grant])
            .await;
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("(suspended)"), "{shown}");
    wait_outbox_drained(&app).await;
    assert_eq!(
        app.sandbox.vendor_standing(&key).as_deref(),
        Some("suspended")
    );

    // Dodo's delivered event for the re-enabled grant, and a late copy of the revocation.
    let revoked_again = app
        .sandbox
        .webhook_for(&app.sandbox.grant(&grant).unwrap(), REVOKED);
    app.sandbox.reenable(&grant).expect("re-enabled");
    tell(&app, &grant, DELIVERED).await;
    assert_eq!(app.post(&revoked_again).await.status(), 200);
    assert_eq!(key_of(&app, &grant).await, KeyState::Delivered);
    assert_eq!(app.job_state(&grant).await, JobState::Delivered);
    wait_outbox_drained(&app).await;
    assert_eq!(app.sandbox.vendor_standing(&key).as_deref(), Some("active"));
    let actions: Vec<String> = app
        .sandbox
        .vendor_notices()
        .into_iter()
        .map(|n| n.action)
        .collect();
    assert_eq!(actions, ["suspend", "reinstate"]);
    let types: Vec<String> = shop.notices().into_iter().map(|n| n.event_type).collect();
    assert_eq!(
        types,
        [
            "license_key.delivered",
            "license_key.suspended",
            "license_key.reinstated"
        ]
    );
    app.stop().await;
    shop.stop().await;
}

#[tokio::test]
async fn a_regrant_after_on_hold_revokes_the_suspended_key_and_delivers_a_new_one() {
    let shop = ShopReceiver::start().unwrap();
    let app = TestApp::spawn_with(Role::All, notifying(&shop)).await;
    add_vendor_pool(&app).await;
    let first = app.sandbox.subscribe(ENT);
    tell(&app, &first.id, "entitlement_grant.created").await;
    app.wait_for_state(&first.id, JobState::Delivered).await;
    let old_key = key_value(&app, &first.id).await;
    app.sandbox.revoke(&first.id, "subscription_on_hold");
    tell(&app, &first.id, REVOKED).await;
    assert_eq!(key_of(&app, &first.id).await, KeyState::Suspended);

    let second = app.sandbox.regrant(&first.id).expect("a re-grant");
    assert_eq!(second.subscription_id, first.subscription_id);
    tell(&app, &second.id, "entitlement_grant.created").await;
    app.wait_for_state(&second.id, JobState::Delivered).await;
    assert_eq!(key_of(&app, &first.id).await, KeyState::Revoked);
    assert_eq!(app.job_state(&first.id).await, JobState::Cancelled);
    assert_eq!(key_of(&app, &second.id).await, KeyState::Delivered);
    wait_outbox_drained(&app).await;
    assert_eq!(
        app.sandbox.vendor_standing(&old_key).as_deref(),
        Some("revoked")
    );
    let revoked = shop.of_type("license_key.revoked");
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].data["grant_id"], first.id.as_str());
    assert_eq!(shop.of_type("license_key.delivered").len(), 2);
    app.stop().await;
    shop.stop().await;
}

#[tokio::test]
async fn a_vendor_refusal_is_parked_with_its_message_and_sent_again_from_the_cli() {
    let app = TestApp::spawn().await;
    let (grant, key) = delivered_vendor_grant(&app).await;
    app.sandbox.script_vendor_revocation_faults(
        &grant,
        [keyrelay::sandbox::VendorFault::EchoKey { status: 422 }],
    );
    app.sandbox.revoke(&grant, "refund");
    tell(&app, &grant, REVOKED).await;
    wait_until("the notice is parked", Duration::from_secs(30), || async {
        app.count("SELECT count(*) FROM outbox WHERE state = 'failed'")
            .await
            == 1
    })
    .await;
    let env = app.cli_env();
    let env = crate::helpers::as_env(&env);
    let listed =
        crate::helpers::keyrelay_async(&env, &["outbox", "list", "--state", "failed"]).await;
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success() && text.contains("source:sandbox_vendor"),
        "{text}"
    );
    let id: i64 = app
        .count("SELECT id FROM outbox WHERE state = 'failed'")
        .await;
    let shown = crate::helpers::keyrelay_async(&env, &["outbox", "show", &id.to_string()]).await;
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        text.contains("422") && text.contains("injected vendor fault"),
        "{text}{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    assert!(!text.contains(&key), "the key is never printed: {text}");
    let stored: String = sqlx::query_scalar("SELECT last_error FROM outbox WHERE id = $1")
        .bind(id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(
        !stored.contains(&key) && stored.contains(&LicenseKey::parse(&key).unwrap().masked()),
        "the vendor's answer is kept with the key it quoted masked: {stored}"
    );
    assert!(!crate::helpers::captured_logs().contains(&key));
    let job = crate::helpers::keyrelay_async(&env, &["jobs", "show", &grant]).await;
    let job = String::from_utf8_lossy(&job.stdout);
    assert!(
        job.contains("(revoked)") && job.contains("license_key.revoked") && job.contains("422"),
        "jobs show has the key's state and the notice with the vendor's answer: {job}"
    );
    assert_eq!(app.sandbox.vendor_standing(&key).as_deref(), Some("active"));

    let retried = crate::helpers::keyrelay_async(&env, &["outbox", "retry", &id.to_string()]).await;
    assert!(
        retried.status.success(),
        "{}",
        String::from_utf8_lossy(&retried.stderr)
    );
    wait_outbox_drained(&app).await;
    assert_eq!(
        app.sandbox.vendor_standing(&key).as_deref(),
        Some("revoked")
    );
    assert_eq!(
        app.count("SELECT count(*) FROM outbox WHERE state = 'sent'")
            .await,
        1
    );
    let again = crate::helpers::keyrelay_async(&env, &["outbox", "retry", &id.to_string()]).await;
    assert!(!again.status.success(), "a sent notice is not sent again");
    assert_eq!(app.sandbox.vendor_notices().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn the_shop_hears_of_failed_grants_and_low_stock_once() {
    let shop = ShopReceiver::start().unwrap();
    let app = TestApp::spawn_with(Role::All, notifying(&shop)).await;
    let pool = NewPool {
        name: "pro".into(),
        entitlement_id: ENT.into(),
        low_stock: 3,
        ..Default::default()
    };
    add_pool(&app.db, &pool).await.unwrap();
    app.import("pro", &["LOW-1", "LOW-2", "LOW-3", "LOW-4"])
        .await;
    // Dodo refuses one grant for good (404): its job fails.
    let doomed = app.sandbox.create_grant(ENT, None);
    app.sandbox.script_faults(
        &doomed.id,
        [keyrelay::sandbox::Fault::Status { status: 404 }],
    );
    tell_new(&app, &doomed.id).await;
    app.wait_for_state(&doomed.id, JobState::Failed).await;
    let sold = app.sell_many(2).await;
    for grant in &sold {
        app.wait_for_state(grant, JobState::Delivered).await;
    }
    wait_outbox_drained(&app).await;
    let failed = shop.of_type("grant.failed");
    assert_eq!(failed.len(), 1, "{:?}", shop.notices());
    assert_eq!(failed[0].data["grant_id"], doomed.id.as_str());
    assert!(failed[0].data["error"].as_str().unwrap().contains("404"));
    // Dodo fails a grant that waits for keys: one notice, however often the event comes, and
    // none when a newer failure finds the job already failed.
    let waiting = app.sandbox.create_grant("ent_without_keys", None);
    add_pool(
        &app.db,
        &NewPool {
            name: "empty".into(),
            entitlement_id: "ent_without_keys".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    tell_new(&app, &waiting.id).await;
    app.wait_for_state(&waiting.id, JobState::WaitingForKeys)
        .await;
    for minute in [1, 1, 2] {
        let mut failed = waiting.clone();
        failed.status = keyrelay::dodo::GrantStatus::Failed;
        failed.error_message = Some("the entitlement was removed".into());
        failed.updated_at = Some(format!("2030-01-01T00:0{minute}:00Z"));
        let hook = app.sandbox.webhook_for(&failed, "entitlement_grant.failed");
        assert_eq!(app.post(&hook).await.status(), 200);
    }
    assert_eq!(app.job_state(&waiting.id).await, JobState::Failed);
    wait_outbox_drained(&app).await;
    let failed_at_dodo: Vec<_> = shop
        .of_type("grant.failed")
        .into_iter()
        .filter(|n| n.data["grant_id"] == waiting.id.as_str())
        .collect();
    assert_eq!(failed_at_dodo.len(), 1, "{:?}", shop.notices());
    assert!(
        failed_at_dodo[0].data["error"]
            .as_str()
            .unwrap()
            .contains("the entitlement was removed")
    );
    let low = shop.of_type("pool.low_stock");
    assert_eq!(low.len(), 1, "one alert per restock");
    assert_eq!(low[0].data["pool"], "pro");
    assert_eq!(low[0].data["threshold"], 3);
    app.stop().await;
    shop.stop().await;
}

async fn tell_new(app: &TestApp, grant_id: &str) {
    tell(app, grant_id, "entitlement_grant.created").await;
}

const ADMIN: &str = "admin-token-for-the-outbox-tests-0123456789";

#[tokio::test]
async fn the_dashboard_shows_a_parked_notice_and_sends_it_again() {
    let app = TestApp::spawn_with(Role::All, |s| {
        s.admin.token = Some(ADMIN.to_string().into())
    })
    .await;
    add_vendor_pool(&app).await;
    let grant = app.sell().await;
    app.wait_for_state(&grant, JobState::Delivered).await;
    app.sandbox.script_vendor_revocation_faults(
        &grant,
        [keyrelay::sandbox::VendorFault::Status { status: 410 }],
    );
    app.sandbox.revoke(&grant, "manual");
    tell(&app, &grant, REVOKED).await;
    wait_until("the notice is parked", Duration::from_secs(30), || async {
        app.count("SELECT count(*) FROM outbox WHERE state = 'failed'")
            .await
            == 1
    })
    .await;
    let (session, _) = app.sign_in(ADMIN).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = client
        .get(format!("{}/admin/outbox", app.base()))
        .header("cookie", &session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("source:sandbox_vendor") && page.contains("410"),
        "{page}"
    );
    let attention = app.page("/admin/attention", Some(ADMIN)).await;
    assert!(
        attention.contains("<span id=\"notices-total\">1</span>") && attention.contains("410"),
        "a refused notice needs attention: {attention}"
    );
    let id = app
        .count("SELECT id FROM outbox WHERE state = 'failed'")
        .await;
    let csrf = page
        .split("name=csrf value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_string();
    let forged = client
        .post(format!("{}/admin/outbox/{id}/retry", app.base()))
        .header("cookie", &session)
        .form(&[("csrf", "forged")])
        .send()
        .await
        .unwrap();
    assert_ne!(forged.status(), 303, "a forged form changes nothing");
    assert_eq!(
        app.count("SELECT count(*) FROM outbox WHERE state = 'failed'")
            .await,
        1
    );
    let sent = client
        .post(format!("{}/admin/outbox/{id}/retry", app.base()))
        .header("cookie", &session)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 303);
    wait_outbox_drained(&app).await;
    assert_eq!(
        app.count("SELECT count(*) FROM outbox WHERE state = 'sent'")
            .await,
        1
    );
    assert_eq!(app.sandbox.vendor_notices().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn the_reconciler_reinstates_a_key_whose_re_enable_webhook_was_lost() {
    let app = TestApp::spawn().await;
    let (grant, key) = delivered_vendor_grant(&app).await;
    app.sandbox.revoke(&grant, "license_key_disabled");
    tell(&app, &grant, REVOKED).await;
    assert_eq!(key_of(&app, &grant).await, KeyState::Suspended);
    app.sandbox.reenable(&grant).expect("re-enabled");
    // Dodo's delivered webhook for the re-enable never arrives; the reconciler asks.
    let dodo = keyrelay::startup::dodo_client(app.settings(), &app.db).unwrap();
    let settling = keyrelay::ops::reconcile::Settling {
        vault: std::sync::Arc::new(app.vault()),
        to: app.settings().recipients(),
    };
    let never = tokio_util::sync::CancellationToken::new();
    let report = keyrelay::ops::reconcile::reconcile(&app.db, &dodo, Some(&settling), &never)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((report.suspended_checked, report.suspended_changed), (1, 1));
    assert_eq!(key_of(&app, &grant).await, KeyState::Delivered);
    let again = keyrelay::ops::reconcile::reconcile(&app.db, &dodo, Some(&settling), &never)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.suspended_checked, 0, "nothing is suspended any more");
    wait_outbox_drained(&app).await;
    assert_eq!(app.sandbox.vendor_standing(&key).as_deref(), Some("active"));
    let actions: Vec<String> = app
        .sandbox
        .vendor_notices()
        .into_iter()
        .map(|n| n.action)
        .collect();
    assert_eq!(actions, ["suspend", "reinstate"]);
    app.stop().await;
}

/// The standalone sandbox's controls, over HTTP: revoke with a reason, re-enable, re-grant,
/// each sending its webhook to keyrelay.
#[tokio::test]
async fn the_sandbox_controls_revoke_re_enable_and_re_grant_over_http() {
    let app = TestApp::spawn().await;
    let (grant, _) = delivered_vendor_grant(&app).await;
    let base = app.stack.sandbox.base_url.clone();
    let control = |path: String, body: serde_json::Value| {
        let http = app.http.clone();
        async move {
            let r = http.post(path).json(&body).send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    let hook = serde_json::json!({ "reason": "license_key_disabled", "webhook_url": app.url });
    let (status, answer) = control(format!("{base}/sandbox/grants/{grant}/revoke"), hook).await;
    assert_eq!(
        (status, answer["webhook_status"].as_u64()),
        (200, Some(200))
    );
    assert_eq!(key_of(&app, &grant).await, KeyState::Suspended);
    let (status, _) = control(
        format!("{base}/sandbox/grants/{grant}/regrant"),
        serde_json::json!({}),
    )
    .await;
    assert_eq!(status, 409, "only an on-hold grant is granted again");
    let url = serde_json::json!({ "webhook_url": app.url });
    let (status, answer) = control(
        format!("{base}/sandbox/grants/{grant}/reenable"),
        url.clone(),
    )
    .await;
    assert_eq!(
        (status, answer["grant"]["status"].as_str()),
        (200, Some("Delivered"))
    );
    assert_eq!(key_of(&app, &grant).await, KeyState::Delivered);

    let sell =
        serde_json::json!({ "entitlement_id": ENT, "subscription": true, "webhook_url": app.url });
    let (_, sold) = control(format!("{base}/sandbox/sell"), sell).await;
    let held = sold[0]["grant_id"].as_str().unwrap().to_string();
    app.wait_for_state(&held, JobState::Delivered).await;
    let on_hold = serde_json::json!({ "reason": "subscription_on_hold", "webhook_url": app.url });
    control(format!("{base}/sandbox/grants/{held}/revoke"), on_hold).await;
    let (status, answer) = control(format!("{base}/sandbox/grants/{held}/regrant"), url).await;
    assert_eq!(status, 200);
    let new = answer["grant"]["id"].as_str().unwrap().to_string();
    app.wait_for_state(&new, JobState::Delivered).await;
    assert_eq!(key_of(&app, &held).await, KeyState::Revoked);
    app.stop().await;
}

#[tokio::test]
async fn the_shop_gets_the_whole_key_only_when_it_asks_for_it() {
    let shop = ShopReceiver::start().unwrap();
    let app = TestApp::spawn_with(Role::All, |s| {
        notifying(&shop)(s);
        s.notify.include_key = true;
    })
    .await;
    app.add_pool("pro", ENT, &["WHOLE-KEY-0001"]).await;
    let grant = app.sell().await;
    app.wait_for_state(&grant, JobState::Delivered).await;
    wait_outbox_drained(&app).await;
    let delivered = shop.of_type("license_key.delivered");
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].data["key"], "WHOLE-KEY-0001");
    assert_eq!(delivered[0].data["pool"], "pro");
    app.stop().await;
    shop.stop().await;
}

/// A vendor that refused `suspend` for a while hears it before the `reinstate` that undoes it,
/// and ends with the license active.
#[tokio::test]
async fn notices_about_one_key_reach_the_vendor_in_order() {
    let app = TestApp::spawn().await;
    let (grant, key) = delivered_vendor_grant(&app).await;
    let busy = std::iter::repeat_n(keyrelay::sandbox::VendorFault::Status { status: 503 }, 5);
    app.sandbox.script_vendor_revocation_faults(&grant, busy);
    app.sandbox.revoke(&grant, "license_key_disabled");
    tell(&app, &grant, REVOKED).await;
    app.sandbox.reenable(&grant).expect("re-enabled");
    tell(&app, &grant, DELIVERED).await;
    assert_eq!(key_of(&app, &grant).await, KeyState::Delivered);
    wait_outbox_drained(&app).await;
    let actions: Vec<String> = app
        .sandbox
        .vendor_notices()
        .into_iter()
        .map(|n| n.action)
        .collect();
    assert_eq!(actions, ["suspend", "reinstate"]);
    assert_eq!(app.sandbox.vendor_standing(&key).as_deref(), Some("active"));
    app.stop().await;
}
