//! The `keyrelay` binary as operators use it: exit codes, error messages, masked keys.

use keyrelay::fulfillment::run_batch;

use crate::helpers::{ENT, TestApp, keyrelay, keyrelay_async};

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).to_string()
}

#[test]
fn usage_errors_exit_2_and_bad_settings_name_the_key() {
    let o = keyrelay(&[], &["pool", "frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
    let o = keyrelay(
        &[("DODO_PAYMENTS_ENVIRONMENT", "staging")],
        &["pool", "list"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("environment"),
        "{}",
        text(&o.stderr)
    );
    let o = keyrelay(&[("KEYRELAY_WORKER__CONCURENCY", "3")], &["pool", "list"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("concurency"),
        "{}",
        text(&o.stderr)
    );
    let o = keyrelay(
        &[("DATABASE_URL", "postgres://postgres@127.0.0.1:1/keyrelay")],
        &["pool", "list"],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains("cannot connect to the database") && err.lines().count() == 1,
        "{err}"
    );
    let o = keyrelay(
        &[("DATABASE_URL", "postgres://postgres@127.0.0.1:1/keyrelay")],
        &["serve", "--role", "web"],
    );
    assert!(
        text(&o.stderr).contains("DODO_PAYMENTS_WEBHOOK_KEY"),
        "{}",
        text(&o.stderr)
    );
    // Key values are stored only encrypted: serve will not start without the key, and says
    // how to make one.
    let o = keyrelay(
        &[
            ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/keyrelay"),
            ("DODO_PAYMENTS_WEBHOOK_KEY", "whsec_c2VjcmV0MQ=="),
        ],
        &["serve", "--role", "web"],
    );
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err.contains("KEYRELAY_ENCRYPTION_KEY") && err.contains("keyrelay keys new-encryption-key"),
        "{err}"
    );
}

#[tokio::test]
async fn operators_import_list_and_inspect_with_keys_masked() {
    let app = TestApp::spawn_web().await;
    let env = app.cli_env();
    let env = crate::helpers::as_env(&env);
    let o = keyrelay_async(
        &env,
        &[
            "pool",
            "add",
            "pro",
            "--entitlement",
            ENT,
            "--low-stock",
            "5",
            "--activations-limit",
            "3",
        ],
    )
    .await;
    assert!(o.status.success(), "{}", text(&o.stderr));
    let file = std::env::temp_dir().join(format!("keys-{}.csv", std::process::id()));
    std::fs::write(
        &file,
        "serial,key\n1,PRO-AAAA-BBBB-0001\n2,PRO-AAAA-BBBB-0002\n3,PRO-AAAA-BBBB-0001\n4,\n",
    )
    .unwrap();
    let o = keyrelay_async(&env, &["pool", "import", "pro", file.to_str().unwrap()]).await;
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(
        text(&o.stdout).trim(),
        "imported 2, duplicates 1, invalid 1"
    );
    assert!(
        text(&o.stderr).contains(":5: skipped: empty key"),
        "{}",
        text(&o.stderr)
    );
    std::fs::remove_file(&file).ok();

    let o = keyrelay_async(&env, &["pool", "list", "--json"]).await;
    let pools: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(pools[0]["available"], 2);
    assert_eq!(pools[0]["low_stock"], true);

    let grant = app.sell().await;
    run_batch(&app.worker(), 10).await.unwrap();
    let log = app.sandbox.fulfill_log();
    assert_eq!(log[0].key, "PRO-AAAA-BBBB-0001");

    let o = keyrelay_async(&env, &["jobs", "show", &grant]).await;
    let out = text(&o.stdout);
    assert!(
        out.contains("PRO-****-****-0001") && !out.contains("PRO-AAAA-BBBB-0001"),
        "{out}"
    );
    let o = keyrelay_async(&env, &["jobs", "show", &grant, "--show-key"]).await;
    assert!(text(&o.stdout).contains("PRO-AAAA-BBBB-0001"));
    let o = keyrelay_async(&env, &["jobs", "list", "--json"]).await;
    let jobs: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(jobs[0]["grant_id"], grant.as_str());
    assert_eq!(jobs[0]["state"], "delivered");
    for field in [
        "attempts",
        "entitlement_id",
        "customer_id",
        "last_error",
        "last_http_status",
    ] {
        assert!(jobs[0].get(field).is_some(), "{field}");
    }
    let o = keyrelay_async(&env, &["pool", "history", "pro"]).await;
    let history = text(&o.stdout);
    assert!(
        history.contains("import") && history.contains("imp_") && history.contains("deliver"),
        "{history}"
    );
    let o = keyrelay_async(&env, &["jobs", "show", &grant]).await;
    assert!(
        text(&o.stdout).contains("worker  reserve"),
        "jobs show lists the audit trail"
    );

    // Replaying every failed job asks first; a script without --yes changes nothing.
    sqlx::query("UPDATE jobs SET state = 'failed', finished_at = now() WHERE grant_id = $1")
        .bind(&grant)
        .execute(&app.db)
        .await
        .unwrap();
    let o = keyrelay_async(&env, &["jobs", "retry", "--all-failed", "--dry-run"]).await;
    assert_eq!(
        text(&o.stdout).lines().next(),
        Some(format!("would retry {grant}").as_str())
    );
    let o = keyrelay_async(&env, &["jobs", "retry", "--all-failed"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("--yes"), "{}", text(&o.stderr));
    assert_eq!(
        app.job_state(&grant).await,
        keyrelay::domain::JobState::Failed
    );
    let o = keyrelay_async(&env, &["jobs", "retry", "--all-failed", "--yes"]).await;
    assert!(text(&o.stdout).contains("queued again"));
    sqlx::query("UPDATE jobs SET state = 'delivered', finished_at = now() WHERE grant_id = $1")
        .bind(&grant)
        .execute(&app.db)
        .await
        .unwrap();

    let o = keyrelay_async(&env, &["events", "list", "--json"]).await;
    let events: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let webhook_id = events[0]["webhook_id"].as_str().unwrap().to_string();
    let o = keyrelay_async(&env, &["events", "replay", &webhook_id]).await;
    assert!(
        text(&o.stdout).contains("already decided"),
        "{}",
        text(&o.stdout)
    );

    let o = keyrelay_async(&env, &["jobs", "cancel", &grant]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("not possible while the job is delivered"));
    app.stop().await;
}
