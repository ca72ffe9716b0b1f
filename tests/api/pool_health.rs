//! A pool whose source cannot work in the workers (no signing key, an unknown or unreachable
//! key source) is shown as broken with the reason — in `pool list` and its JSON, the
//! dashboard and a metric — and `serve` says so at start; healthy pools stay ok.

use std::time::Duration;

use keyrelay::configuration::KeySourceSettings;
use keyrelay::harness::LocalStack;
use keyrelay::ops::source_health::SourceCheck;
use keyrelay::pool::{NewPool, add_pool};
use keyrelay::sources::Source;
use keyrelay::startup::Role;
use secrecy::SecretString;

use crate::helpers::{ENT, TestApp, as_env, captured_logs, keyrelay_async, wait_until};

const TOKEN: &str = "admin-token-for-pool-health-tests-0123456";

async fn add(app: &TestApp, name: &str, entitlement: &str, source: Source, endpoint: Option<&str>) {
    add_pool(
        &app.db,
        &NewPool {
            name: name.into(),
            entitlement_id: entitlement.into(),
            source: Some(source),
            endpoint: endpoint.map(str::to_string),
            template: (source == Source::Generate).then(|| "GEN-XXXXX-XXXXX-XXXXX-XXXXX".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn pools_that_cannot_get_keys_are_shown_broken_with_the_reason() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let app = TestApp::spawn_with(Role::Web, |s| {
        s.admin.token = Some(TOKEN.to_string().into());
        s.keys.signing_key = None;
        s.key_sources.insert(
            "gone".into(),
            KeySourceSettings {
                url: format!("http://{closed}/licenses"),
                secret: SecretString::from("whsec_c2VjcmV0LWZvci1hLWdvbmUtdmVuZG9y"),
                key_pointer: "/key".into(),
                timeout_secs: 2,
                revoke_url: None,
            },
        );
    })
    .await;
    app.add_pool("pro", ENT, &["PRO-AAAA-BBBB-CCCC-0001"]).await;
    add(&app, "gen", "ent_gen", Source::Generate, None).await;
    add(&app, "signed", "ent_signed", Source::Sign, None).await;
    add(
        &app,
        "vendor",
        "ent_vendor",
        Source::Http,
        Some(keyrelay::harness::SANDBOX_VENDOR),
    )
    .await;
    add(&app, "unknown", "ent_unknown", Source::Http, Some("nosuch")).await;
    add(&app, "gone", "ent_gone", Source::Http, Some("gone")).await;

    // What a worker process with these settings finds (and records).
    let found = SourceCheck::from_settings(app.settings())
        .check_pools(&app.db)
        .await
        .unwrap();
    let problem = |name: &str| found.iter().find(|(n, _)| n == name).unwrap().1.clone();
    assert_eq!(problem("pro"), None);
    assert_eq!(problem("gen"), None);
    assert_eq!(problem("vendor"), None, "the sandbox's vendor answers");
    assert!(problem("signed").unwrap().contains("KEYRELAY_SIGNING_KEY"));
    assert!(
        problem("unknown")
            .unwrap()
            .contains("`nosuch` is not configured")
    );
    assert!(
        problem("gone")
            .unwrap()
            .contains(&format!("unreachable at 127.0.0.1:{}", closed.port()))
    );

    let env = app.cli_env();
    let listed = keyrelay_async(&as_env(&env), &["pool", "list", "--json"]).await;
    let pools: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    for p in pools.as_array().unwrap() {
        let broken = ["signed", "unknown", "gone"].contains(&p["name"].as_str().unwrap());
        assert_eq!(p["source_problem"].is_string(), broken, "{p}");
    }
    let text = keyrelay_async(&as_env(&env), &["pool", "list"]).await;
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("BROKEN: pool `signed` cannot get keys"),
        "{text}"
    );
    let signed_row = text.lines().find(|l| l.starts_with("signed")).unwrap();
    assert!(
        signed_row.contains("BROKEN") && !signed_row.contains("unlimited"),
        "{signed_row}"
    );

    let metrics = app.page("/metrics", None).await;
    assert!(
        metrics.contains("keyrelay_pool_source_broken{pool=\"signed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("keyrelay_pool_source_broken{pool=\"pro\"} 0"),
        "{metrics}"
    );
    let overview = app.page("/admin", Some(TOKEN)).await;
    assert!(
        overview.contains("id=\"broken-signed\">BROKEN: signs its keys"),
        "{overview}"
    );
    assert!(!overview.contains("id=\"broken-pro\""));

    // A worker started on this database says so at once, and records it.
    sqlx::query("UPDATE pools SET source_problem = NULL, source_checked_at = NULL")
        .execute(&app.db)
        .await
        .unwrap();
    let mut settings = app.settings().clone();
    settings.keys.signing_key = None;
    let worker = LocalStack::start(settings, Role::Worker).await.unwrap();
    wait_until(
        "the worker has checked the pools",
        Duration::from_secs(30),
        || async {
            app.count("SELECT count(*) FROM pools WHERE source_checked_at IS NOT NULL")
                .await
                == 6
        },
    )
    .await;
    // It records its findings, then logs them.
    wait_until(
        "serve says so at start",
        Duration::from_secs(10),
        || async {
            captured_logs().lines().any(|l| {
                l.contains("pool cannot get keys in this process") && l.contains("pool=signed")
            })
        },
    )
    .await;
    worker.stop().await.unwrap();
    app.stop().await;
}
