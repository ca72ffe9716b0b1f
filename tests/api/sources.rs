//! Pools whose keys keyrelay makes: `generate` (from a template) and `sign` (Ed25519). Each
//! grant gets one key, bound and audited before Dodo is called, unique in the database; a
//! value Dodo already holds is rejected and a new one made; signed keys verify with an
//! independent implementation that follows only the README.

use std::collections::HashSet;
use std::time::Duration;

use keyrelay::domain::JobState;
use keyrelay::pool::{NewPool, add_pool};
use keyrelay::sources::Source;

use crate::helpers::{ENT, TestApp, keyrelay, wait_until};

fn made_pool(name: &str, entitlement: &str, source: Source, template: Option<&str>) -> NewPool {
    NewPool {
        name: name.into(),
        entitlement_id: entitlement.into(),
        source: Some(source),
        template: template.map(str::to_string),
        ..Default::default()
    }
}

async fn wait_until_finished(app: &TestApp, count: i64) {
    wait_until("every job is finished", Duration::from_secs(30), || async {
        app.count("SELECT count(*) FROM jobs WHERE state IN ('delivered', 'failed')")
            .await
            == count
    })
    .await;
}

/// (grant, key value) of every delivered job.
async fn delivered_keys(app: &TestApp) -> Vec<(String, String)> {
    let grants: Vec<String> = sqlx::query_scalar(
        "SELECT jobs.grant_id FROM jobs JOIN keys ON keys.id = jobs.key_id \
         WHERE jobs.state = 'delivered' ORDER BY keys.id",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    let values = app
        .key_values("id IN (SELECT key_id FROM jobs WHERE state = 'delivered')")
        .await;
    grants.into_iter().zip(values).collect()
}

/// Sells a grant of another entitlement, served by a list pool with one key: the grant that
/// must keep flowing beside a broken one.
async fn sell_from_a_list_pool(app: &TestApp) -> String {
    let other = NewPool {
        name: "other".into(),
        entitlement_id: "ent_other".into(),
        ..Default::default()
    };
    add_pool(&app.db, &other).await.unwrap();
    app.import("other", &["OTHER-KEY-0001"]).await;
    let grant = app.sandbox.create_grant("ent_other", None);
    let hook = app.sandbox.webhook_for(&grant, "entitlement_grant.created");
    assert_eq!(app.post(&hook).await.status(), 200);
    grant.id
}

#[tokio::test]
async fn generated_keys_follow_the_template_one_per_grant_and_audited() {
    let app = TestApp::spawn().await;
    let template = "PRO-XXXXX-XXXXX-XXXXX-XXXXX";
    add_pool(
        &app.db,
        &made_pool("gen", ENT, Source::Generate, Some(template)),
    )
    .await
    .unwrap();
    let mut grants = HashSet::new();
    for _ in 0..40 {
        grants.insert(app.sell().await);
    }
    wait_until_finished(&app, 40).await;
    let delivered = delivered_keys(&app).await;
    assert_eq!(delivered.len(), 40);
    let values: HashSet<&str> = delivered.iter().map(|(_, k)| k.as_str()).collect();
    assert_eq!(values.len(), 40, "a key went to two grants");
    for (grant, value) in &delivered {
        assert!(grants.contains(grant));
        assert_eq!(value.len(), template.len());
        assert!(value.starts_with("PRO-"));
        let made: String = value.chars().filter(|c| *c != '-').skip(3).collect();
        assert!(
            made.chars()
                .all(|c| keyrelay::sources::generate::CROCKFORD.contains(c)),
            "{value}"
        );
        let at_dodo = app.sandbox.grant(grant).unwrap();
        assert_eq!(at_dodo.key_value(), Some(value.as_str()));
    }
    assert_eq!(
        app.count("SELECT count(DISTINCT grant_id) FROM audit_log WHERE action = 'make'")
            .await,
        40
    );
    assert_eq!(app.sandbox.fulfill_log().len(), 40, "one call per grant");
    app.stop().await;
}

#[tokio::test]
async fn a_generated_key_dodo_already_holds_is_rejected_and_a_new_one_made() {
    // Each pool can make two values and Dodo already holds one of them, so about half of
    // the grants first draw the taken value: it must be rejected and the other one sent.
    const POOLS: usize = 20;
    let app = TestApp::spawn_web().await;
    for i in 0..POOLS {
        let mut new = made_pool(
            &format!("dup{i}"),
            &format!("ent_dup_{i}"),
            Source::Generate,
            Some(&format!("DUP{i}-X")),
        );
        new.alphabet = Some("AB".into());
        new.allow_weak_template = true;
        add_pool(&app.db, &new).await.unwrap();
        app.sandbox.add_existing_key(&format!("DUP{i}-A"));
        let grant = app.sandbox.create_grant(&format!("ent_dup_{i}"), None);
        let hook = app.sandbox.webhook_for(&grant, "entitlement_grant.created");
        assert_eq!(app.post(&hook).await.status(), 200);
    }
    while !keyrelay::fulfillment::run_batch(&app.worker(), 50)
        .await
        .unwrap()
        .is_empty()
    {}
    let delivered = delivered_keys(&app).await;
    assert_eq!(delivered.len(), POOLS, "every grant delivered");
    for (_, value) in &delivered {
        assert!(value.ends_with("-B"), "{value} was already at Dodo");
    }
    let rejected = app.key_values("state = 'rejected'").await;
    assert!(!rejected.is_empty(), "no grant drew the taken value");
    assert!(rejected.iter().all(|v| v.ends_with("-A")));
    app.stop().await;
}

#[tokio::test]
async fn a_template_with_no_value_left_fails_its_job_and_others_flow() {
    let app = TestApp::spawn_web().await;
    let mut new = made_pool("one", ENT, Source::Generate, Some("ONLY-X"));
    new.alphabet = Some("A1".into());
    new.allow_weak_template = true;
    add_pool(&app.db, &new).await.unwrap();
    app.sandbox.add_existing_key("ONLY-A");
    app.sandbox.add_existing_key("ONLY-1");
    let stuck = app.sell().await;
    let other = sell_from_a_list_pool(&app).await;
    for _ in 0..5 {
        keyrelay::fulfillment::run_batch(&app.worker(), 10)
            .await
            .unwrap();
    }
    let job = app.job(&stuck).await;
    assert_eq!(job.state, JobState::Failed);
    let error = job.last_error.unwrap();
    assert!(
        error.contains("pool `one`") && error.contains("template"),
        "{error}"
    );
    assert_eq!(app.job_state(&other).await, JobState::Delivered);
    app.stop().await;
}

#[tokio::test]
async fn a_sign_pool_without_a_signing_key_fails_its_jobs_with_the_reason_and_others_flow() {
    let app = TestApp::spawn().await;
    add_pool(&app.db, &made_pool("signed", ENT, Source::Sign, None))
        .await
        .unwrap();
    let signed = app.sell().await;
    let other = sell_from_a_list_pool(&app).await;
    wait_until_finished(&app, 2).await;
    let job = app.job(&signed).await;
    assert_eq!(job.state, JobState::Failed);
    assert!(job.last_error.unwrap().contains("KEYRELAY_SIGNING_KEY"));
    assert_eq!(app.job_state(&other).await, JobState::Delivered);
    app.stop().await;
}

#[tokio::test]
async fn the_cli_refuses_weak_templates_and_imports_into_made_pools() {
    let app = TestApp::spawn_web().await;
    let env = app.cli_env();
    let env = crate::helpers::as_env(&env);
    let weak = keyrelay(
        &env,
        &[
            "pool",
            "add",
            "weak",
            "--entitlement",
            ENT,
            "--source",
            "generate",
            "--template",
            "K-XXXX",
        ],
    );
    assert!(!weak.status.success());
    let message = String::from_utf8_lossy(&weak.stderr);
    assert!(
        message.contains("20 bits") && message.contains("--allow-weak-template"),
        "{message}"
    );

    let made = keyrelay(
        &env,
        &[
            "pool",
            "add",
            "gen",
            "--entitlement",
            ENT,
            "--source",
            "generate",
            "--template",
            "K-XXXXXXXXXXXXXXXXXXXX",
        ],
    );
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let listed = keyrelay(&env, &["pool", "list"]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains("generate") && listed.contains("unlimited"),
        "{listed}"
    );

    let file = std::env::temp_dir().join(format!("keys-{}.txt", rand::random::<u64>()));
    std::fs::write(&file, "SOME-KEY-0001\n").unwrap();
    let import = keyrelay(&env, &["pool", "import", "gen", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    assert!(!import.status.success());
    assert!(String::from_utf8_lossy(&import.stderr).contains("makes its own keys"));
    app.stop().await;
}
