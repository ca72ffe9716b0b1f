//! Key values at rest: a dump of the database holds none of them, a sealed value moved to
//! another row does not open (and its job fails without sending anything), rotation beside a
//! running keyrelay loses nothing, and a database from before encryption is sealed by
//! `migrate`.

use keyrelay::crypto::{Vault, new_encryption_key};
use keyrelay::domain::{JobState, LicenseKey};
use keyrelay::fulfillment::run_batch;
use keyrelay::pool::{import_keys, keyfile::ParsedKeys};
use keyrelay::startup::Role;
use secrecy::{ExposeSecret, SecretString};

use crate::helpers::{DEMO_LIMIT, ENT, TestApp, as_env, keyrelay_async, keyrelay_async_within};

fn parsed(keys: &[String]) -> ParsedKeys {
    ParsedKeys {
        keys: keys.iter().map(|k| LicenseKey::parse(k).unwrap()).collect(),
        ..Default::default()
    }
}

fn keys(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}-{i:05}-ZQ")).collect()
}

/// The whole database as `pg_dump` writes it.
fn dump(app: &TestApp) -> String {
    let out = std::process::Command::new("pg_dump")
        .arg(app.settings().database.url.expose_secret())
        .output()
        .expect("pg_dump runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn a_dump_of_the_database_holds_no_key_value() {
    let app = TestApp::spawn().await;
    app.add_pool("pro", ENT, &[]).await;
    let values = keys("DUMP", 30);
    app.import(
        "pro",
        &values.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    let grants = app.sell_many(10).await;
    app.wait_delivered(10).await;
    // Dodo's delivered events carry the key: they are stored too.
    for grant in &grants {
        let delivered = app.sandbox.grant(grant).unwrap();
        let hook = app
            .sandbox
            .webhook_for(&delivered, "entitlement_grant.delivered");
        assert_eq!(app.post(&hook).await.status(), 200);
    }
    assert_eq!(
        app.count("SELECT count(*) FROM events WHERE key_sealed_with IS NOT NULL")
            .await,
        10
    );
    let dumped = dump(&app);
    assert!(
        dumped.contains("COPY public.keys"),
        "the dump holds the keys table"
    );
    for value in &values {
        let tail = &value[5..];
        assert!(!dumped.contains(tail), "{value} is readable in the dump");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_sealed_value_moved_to_another_row_fails_its_job_and_nothing_is_sent() {
    let app = TestApp::spawn_web().await;
    app.add_pool("pro", ENT, &["MOVE-AAAA-0001", "MOVE-AAAA-0002"])
        .await;
    // Someone with write access to the database copies key 1's sealed value onto key 2.
    sqlx::query(
        "UPDATE keys SET value_sealed = (SELECT value_sealed FROM keys ORDER BY id LIMIT 1) \
         WHERE id = (SELECT max(id) FROM keys)",
    )
    .execute(&app.db)
    .await
    .unwrap();
    let first = app.sell().await;
    let second = app.sell().await;
    run_batch(&app.worker(), 10).await.unwrap();
    let states = (app.job_state(&first).await, app.job(&second).await);
    assert_eq!(states.0, JobState::Delivered);
    assert_eq!(states.1.state, JobState::Failed);
    let error = states.1.last_error.unwrap();
    assert!(
        error.contains("cannot be read") && error.contains("nothing was sent"),
        "{error}"
    );
    let sent: Vec<String> = app
        .sandbox
        .fulfill_log()
        .into_iter()
        .map(|r| r.grant_id)
        .collect();
    assert_eq!(sent, vec![first], "only the readable key went to Dodo");
    app.stop().await;
}

#[tokio::test]
async fn rotation_beside_a_running_keyrelay_loses_nothing() {
    let (old, new) = (new_encryption_key(), new_encryption_key());
    let both = SecretString::from(format!("{} {}", new.expose_secret(), old.expose_secret()));
    let app = TestApp::spawn_with(Role::All, |s| s.keys.encryption_keys = Some(both.clone())).await;
    app.add_pool("pro", ENT, &[]).await;
    // Keys imported before the rotation began: sealed under the old key only.
    let before = Vault::from_config(&old).unwrap();
    let values = keys("ROT", 3_000);
    import_keys(&app.db, &before, "pro", &parsed(&values), false, |_| {})
        .await
        .unwrap();
    let rotating = Vault::from_config(&both).unwrap();
    let selling = async {
        let mut grants = Vec::new();
        for _ in 0..60 {
            grants.push(app.sell().await);
        }
        grants
    };
    let (grants, rotated) = tokio::join!(
        selling,
        keyrelay::ops::sealing::rotate(&app.db, &rotating, |_| {})
    );
    let rotated = rotated.unwrap();
    assert!(rotated.unreadable.is_empty());
    assert!(rotated.keys >= 2_900, "resealed {}", rotated.keys);
    app.wait_delivered(60).await;
    // Nothing is left under the old key: the new key alone opens every value.
    let (left, _) = keyrelay::store::sealed::count_to_reseal(&app.db, &rotating)
        .await
        .unwrap();
    assert_eq!(left, 0);
    let only_new = Vault::from_config(&new).unwrap();
    let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as("SELECT id, value_sealed FROM keys")
        .fetch_all(&app.db)
        .await
        .unwrap();
    let mut opened: Vec<String> = rows
        .iter()
        .map(|(id, s)| only_new.open(s, keyrelay::crypto::Row::Key(*id)).unwrap())
        .collect();
    opened.sort();
    assert_eq!(opened, values, "every key is still there, once");
    let delivered_at_dodo: std::collections::HashSet<String> = grants
        .iter()
        .map(|g| {
            app.sandbox
                .grant(g)
                .unwrap()
                .key_value()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(delivered_at_dodo.len(), 60);
    app.stop().await;
}

#[tokio::test]
async fn migrate_seals_a_database_from_before_encryption() {
    let app = TestApp::spawn_web().await;
    app.add_pool("pro", ENT, &[]).await;
    // Rows as an earlier keyrelay wrote them: plaintext values and a delivered event's key.
    sqlx::query(
        "INSERT INTO keys (pool_id, value, batch_id) \
         SELECT pools.id, v, 'imp_old' FROM pools, unnest(ARRAY['OLD-KEY-0001', 'OLD-KEY-0002']) v",
    )
    .execute(&app.db)
    .await
    .unwrap();
    sqlx::query(
        r#"INSERT INTO events (webhook_id, event_type, grant_id, payload)
           VALUES ('msg_old', 'entitlement_grant.delivered', 'grant_old',
                   '{"data": {"id": "grant_old", "license_key": {"key": "OLD-KEY-9999"}}}')"#,
    )
    .execute(&app.db)
    .await
    .unwrap();
    let env = app.cli_env();
    let without_key = [env[0].clone()];
    let refused = keyrelay_async(&as_env(&without_key), &["migrate"]).await;
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains("2 key values and 1 events") && message.contains("new-encryption-key"),
        "{message}"
    );
    let migrated = keyrelay_async(&as_env(&env), &["migrate"]).await;
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    assert!(String::from_utf8_lossy(&migrated.stdout).contains("sealed 3 rows"));
    assert!(!dump(&app).contains("OLD-KEY"));
    // The sealed keys serve grants like any other.
    let grant = app.sell().await;
    run_batch(&app.worker(), 10).await.unwrap();
    assert_eq!(app.job_state(&grant).await, JobState::Delivered);
    let sent = app.sandbox.grant(&grant).unwrap();
    assert_eq!(sent.key_value(), Some("OLD-KEY-0001"));
    let shown = keyrelay_async(&as_env(&env), &["events", "show", "msg_old", "--show-key"]).await;
    assert!(String::from_utf8_lossy(&shown.stdout).contains("OLD-KEY-9999"));
    app.stop().await;
}

#[tokio::test]
async fn keys_rotate_reseals_under_the_first_key_and_can_run_again() {
    let (old, new) = (new_encryption_key(), new_encryption_key());
    let app = TestApp::spawn_with(Role::Web, |s| s.keys.encryption_keys = Some(old.clone())).await;
    app.add_pool("pro", ENT, &["ROTATE-CLI-0001", "ROTATE-CLI-0002"])
        .await;
    let both = format!("{} {}", new.expose_secret(), old.expose_secret());
    let database = app.cli_env()[0].1.clone();
    let env = [
        ("DATABASE_URL", database.as_str()),
        ("KEYRELAY_ENCRYPTION_KEY", both.as_str()),
    ];
    let first = keyrelay_async(&env, &["keys", "rotate"]).await;
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(String::from_utf8_lossy(&first.stdout).contains("resealed 2 keys"));
    let again = keyrelay_async(&env, &["keys", "rotate"]).await;
    assert!(String::from_utf8_lossy(&again.stdout).contains("resealed 0 keys"));
    // The new key alone opens every value now.
    let only_new = Vault::from_config(&new).unwrap();
    let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as("SELECT id, value_sealed FROM keys ORDER BY id")
        .fetch_all(&app.db)
        .await
        .unwrap();
    let opened: Vec<String> = rows
        .iter()
        .map(|(id, s)| only_new.open(s, keyrelay::crypto::Row::Key(*id)).unwrap())
        .collect();
    assert_eq!(opened, ["ROTATE-CLI-0001", "ROTATE-CLI-0002"]);
    let made = keyrelay_async(&[], &["keys", "new-encryption-key"]).await;
    let printed = String::from_utf8_lossy(&made.stdout).trim().to_string();
    assert!(Vault::from_config(&SecretString::from(printed)).is_ok());
    app.stop().await;
}

#[tokio::test]
async fn a_dodo_message_that_quotes_the_key_is_stored_masked() {
    let app = TestApp::spawn_web().await;
    app.add_pool("pro", ENT, &["ECHO-AAAA-BBBB-4242"]).await;
    let grant = app.sell().await;
    app.sandbox
        .script_faults(&grant, [keyrelay::sandbox::Fault::EchoKey { status: 422 }]);
    run_batch(&app.worker(), 10).await.unwrap();
    let job = app.job(&grant).await;
    assert_eq!(job.state, JobState::Failed);
    let error = job.last_error.unwrap();
    assert!(error.contains("ECHO-****-****-4242"), "{error}");
    let attempt_errors: Vec<Option<String>> = sqlx::query_scalar("SELECT error FROM attempts")
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert_eq!(attempt_errors.len(), 1);
    assert!(
        !dump(&app).contains("AAAA-BBBB"),
        "the key is readable in the database"
    );
    app.stop().await;
}

#[tokio::test]
async fn after_the_demo_a_dump_holds_none_of_its_keys() {
    let server = crate::helpers::base_settings();
    let url = server.database.url.expose_secret().to_string();
    let key = new_encryption_key();
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("KEYRELAY_ENCRYPTION_KEY", key.expose_secret()),
    ];
    let demo = keyrelay_async_within(
        &env,
        &["demo", "--grants", "40", "--keep-database"],
        DEMO_LIMIT,
    )
    .await;
    let out = String::from_utf8_lossy(&demo.stdout).into_owned();
    assert!(
        demo.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&demo.stderr)
    );
    let kept = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("kept database "))
        .expect("the demo names the kept database")
        .to_string();
    let dumped = std::process::Command::new("pg_dump")
        .arg(&kept)
        .output()
        .expect("pg_dump runs");
    let dumped = String::from_utf8_lossy(&dumped.stdout).into_owned();
    let mut settings = server.clone();
    settings.database.url = kept.clone().into();
    keyrelay::db::drop_database(&settings).await.unwrap();
    let env_file = std::env::temp_dir().join(format!("{}.env", kept.rsplit('/').next().unwrap()));
    let written = std::fs::read_to_string(&env_file).expect("the demo writes the kept settings");
    std::fs::remove_file(&env_file).unwrap();
    assert!(
        written.starts_with(&format!("DATABASE_URL={kept}\n")),
        "{written}"
    );
    assert!(
        !written.contains("KEYRELAY_ENCRYPTION_KEY") && !written.contains(key.expose_secret()),
        "the operator's own key is not copied: {written}"
    );
    assert!(
        dumped.contains("COPY public.keys"),
        "the dump holds the keys table"
    );
    // The demo's list keys, generated keys and vendor keys all have a recognisable shape
    // (the generate pool's template, `GEN-XXXXX-…`, is not a key).
    for shape in ["DEMO-", "GEN-", "VND-"] {
        let found = dumped.match_indices(shape).find(|(i, _)| {
            let next: String = dumped[i + shape.len()..].chars().take(4).collect();
            next.len() == 4 && next.chars().all(|c| c.is_ascii_alphanumeric()) && next != "XXXX"
        });
        assert!(
            found.is_none(),
            "a {shape}… key is readable in the dump: {found:?}"
        );
    }
}

#[tokio::test]
async fn a_kept_demo_database_opens_with_the_file_the_demo_writes_and_no_key_is_printed() {
    let server = crate::helpers::base_settings();
    let url = server.database.url.expose_secret().to_string();
    let demo = keyrelay_async_within(
        &[("DATABASE_URL", url.as_str())],
        &["demo", "--grants", "20", "--keep-database"],
        DEMO_LIMIT,
    )
    .await;
    let out = String::from_utf8_lossy(&demo.stdout).into_owned();
    assert!(demo.status.success(), "{out}");
    let file = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("set -a; . ./"))
        .and_then(|l| l.strip_suffix("; set +a"))
        .expect("the demo says how to load the kept settings")
        .to_string();
    let path = std::env::temp_dir().join(&file);
    let written = std::fs::read_to_string(&path).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "only its owner can read it");
    }
    std::fs::remove_file(&path).unwrap();
    let settings: Vec<(String, String)> = written
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let key = &settings
        .iter()
        .find(|(k, _)| k == "KEYRELAY_ENCRYPTION_KEY")
        .expect("the run's encryption key is in the file")
        .1;
    assert!(!out.contains(key.as_str()), "the key is not printed");
    let env: Vec<(&str, &str)> = settings
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let listed = keyrelay_async(&env, &["jobs", "list", "--state", "delivered", "--json"]).await;
    let jobs: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    // The demo ends by refunding two of its grants: their jobs are cancelled.
    assert_eq!(jobs.as_array().unwrap().len(), 18);
    let refunded = keyrelay_async(&env, &["jobs", "list", "--state", "cancelled", "--json"]).await;
    let refunded: serde_json::Value = serde_json::from_slice(&refunded.stdout).unwrap();
    assert_eq!(refunded.as_array().unwrap().len(), 2);
    let grant = jobs[0]["grant_id"].as_str().unwrap();
    let shown = keyrelay_async(&env, &["jobs", "show", grant, "--json"]).await;
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert!(
        shown["key"].as_str().unwrap().contains("****"),
        "the kept keys open, masked: {shown}"
    );
    // The file carries what every pool needs: with `keyrelay sandbox` on its default address,
    // a worker finds each pool able to get keys.
    let served =
        keyrelay::configuration::Settings::load_from(None, &settings.iter().cloned().collect())
            .expect("the kept settings load as they are");
    let listener = std::net::TcpListener::bind("127.0.0.1:8090")
        .expect("port 8090 (where the kept settings expect `keyrelay sandbox`) is free");
    let secret = keyrelay::configuration::parse_webhook_secrets(
        keyrelay::cli::sandbox::DEFAULT_WEBHOOK_SECRET,
    )
    .unwrap()
    .remove(0);
    let sandbox = keyrelay::sandbox::RunningSandbox::start(
        keyrelay::sandbox::Sandbox::new(keyrelay::cli::sandbox::DEFAULT_API_KEY, &secret),
        listener,
    )
    .unwrap();
    let kept_pool = keyrelay::db::connect(&served).await.unwrap();
    let found = keyrelay::ops::source_health::SourceCheck::from_settings(&served)
        .check_pools(&kept_pool)
        .await
        .unwrap();
    assert_eq!(found.len(), 4, "{found:?}");
    assert!(
        found.iter().all(|(_, problem)| problem.is_none()),
        "{found:?}"
    );
    kept_pool.close().await;
    sandbox.stop().await;
    let mut kept = server.clone();
    kept.database.url = settings[0].1.clone().into();
    keyrelay::db::drop_database(&kept).await.unwrap();
}
