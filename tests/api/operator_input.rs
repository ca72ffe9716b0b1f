//! Operator slips get a clear message before anything reaches the database, and no message
//! echoes a secret.

use std::process::Output;

use crate::helpers::{keyrelay, keyrelay_async};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// A database URL nothing answers on.
const NOWHERE: &str = "postgres://postgres@127.0.0.1:1/keyrelay";

#[test]
fn numeric_options_are_range_checked_before_the_database_sees_them() {
    for (option, value) in [
        ("--expires-in-days", "100000000"),
        ("--activations-limit", "3000000000"),
        ("--low-stock", "3000000000"),
        ("--expires-in-days", "0"),
    ] {
        let o = keyrelay(
            &[("DATABASE_URL", NOWHERE)],
            &[
                "pool",
                "add",
                "pro",
                "--entitlement",
                "ent_1",
                option,
                value,
            ],
        );
        assert_eq!(o.status.code(), Some(2), "{option} {value}: {}", stderr(&o));
        assert!(stderr(&o).contains(option), "{}", stderr(&o));
    }
}

#[test]
fn pool_names_and_entitlement_ids_are_checked() {
    for args in [
        ["pool", "add", "pro\u{1b}[2J", "--entitlement", "ent_1"],
        ["pool", "add", "pro", "--entitlement", "ent\tone"],
    ] {
        let o = keyrelay(&[("DATABASE_URL", NOWHERE)], &args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains('\u{1b}'), "{}", stderr(&o));
    }
    let long = "p".repeat(200);
    let o = keyrelay(
        &[("DATABASE_URL", NOWHERE)],
        &["pool", "add", &long, "--entitlement", "ent_1"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn a_config_file_syntax_error_names_the_line_but_never_shows_it() {
    let dir = std::env::temp_dir().join(format!("keyrelay-conf-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("keyrelay.toml");
    std::fs::write(&file, "[dodo]\napi_key = \"sk_live_TOPSECRET123\n").unwrap();
    let o = keyrelay(&[], &["pool", "list", "--config", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(!err.contains("TOPSECRET"), "{err}");
    assert!(
        err.contains("line 2") && err.contains("keyrelay.toml"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn urls_are_never_echoed_with_their_credentials() {
    let cases = [
        ("DATABASE_URL", "postgres://u:hunter2@127.0.0.1:1/keyrelay"),
        ("DATABASE_URL", "postgres://u:hunter2@[not-a-host/keyrelay"),
        ("DODO_PAYMENTS_BASE_URL", "ftp://u:hunter2@dodo.example"),
        (
            "KEYRELAY_ALERTS__WEBHOOK_URL",
            "https//hooks.slack.com/services/T000/B000/hunter2",
        ),
    ];
    for (name, value) in cases {
        let o = keyrelay(&[(name, value)], &["pool", "list"]);
        assert_eq!(o.status.code(), Some(1), "{name}");
        let err = stderr(&o);
        assert!(!err.contains("hunter2"), "{name}: {err}");
    }
}

#[test]
fn a_wrong_environment_name_lists_the_allowed_ones() {
    let o = keyrelay(&[("DODO_PAYMENTS_ENVIRONMENT", "live")], &["pool", "list"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("test_mode") && err.contains("live_mode"),
        "{err}"
    );
}

#[test]
fn a_blank_optional_url_counts_as_unset() {
    for name in ["KEYRELAY_ALERTS__WEBHOOK_URL", "KEYRELAY_DODO__BASE_URL"] {
        let o = keyrelay(&[(name, ""), ("DATABASE_URL", NOWHERE)], &["pool", "list"]);
        let err = stderr(&o);
        assert!(
            err.contains("cannot connect to the database"),
            "{name}: {err}"
        );
    }
}

#[test]
fn a_refused_database_connection_says_so_and_names_the_host() {
    let o = keyrelay(&[("DATABASE_URL", NOWHERE)], &["pool", "list"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("refused") && err.contains("127.0.0.1:1"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[tokio::test]
async fn hostile_values_in_the_database_print_escaped_and_shortened_never_panic() {
    let app = crate::helpers::TestApp::spawn_web().await;
    app.add_pool("pro", crate::helpers::ENT, &["OUT-1"]).await;
    // Rows written before ids were checked: a 100 KB grant id, and one with a terminal escape.
    sqlx::query(
        "INSERT INTO jobs (grant_id, entitlement_id, customer_id) VALUES \
         (repeat('g', 100000), 'ent', 'cus'), (E'grant_\\x1b[2J_clear', 'ent', E'cus\\x1b[31m')",
    )
    .execute(&app.db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO events (webhook_id, event_type, grant_id, payload) VALUES \
         (repeat('w', 100000), E'type\\x1b[2J', repeat('g', 100000), '{}')",
    )
    .execute(&app.db)
    .await
    .unwrap();
    let env = app.cli_env();
    let env = crate::helpers::as_env(&env);
    for args in [
        &["jobs", "list"][..],
        &["events", "list"][..],
        &["pool", "history", "pro"][..],
    ] {
        let o = keyrelay_async(&env, args).await;
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        assert!(
            !out.contains('\u{1b}'),
            "{args:?} printed an escape: {out:?}"
        );
        assert!(
            out.lines().all(|l| l.chars().count() < 1_000),
            "{args:?} printed a line of {} characters",
            out.lines().map(|l| l.chars().count()).max().unwrap_or(0)
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn events_show_masks_key_values_unless_asked() {
    let app = crate::helpers::TestApp::spawn_web().await;
    let grant = app.sandbox.create_grant(crate::helpers::ENT, None);
    app.sandbox
        .fulfill_elsewhere(&grant.id, "SHOW-AAAA-BBBB-7777");
    let delivered = app.sandbox.grant(&grant.id).unwrap();
    let hook = app
        .sandbox
        .webhook_for(&delivered, "entitlement_grant.delivered");
    assert_eq!(app.post(&hook).await.status(), 200);
    let env = app.cli_env();
    let env = crate::helpers::as_env(&env);
    let o = keyrelay_async(&env, &["events", "show", &hook.id]).await;
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !out.contains("SHOW-AAAA-BBBB-7777") && out.contains("SHOW-****-****-7777"),
        "{out}"
    );
    let o = keyrelay_async(&env, &["events", "show", &hook.id, "--show-key"]).await;
    assert!(String::from_utf8_lossy(&o.stdout).contains("SHOW-AAAA-BBBB-7777"));
    app.stop().await;
}
