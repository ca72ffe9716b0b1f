//! What a newcomer met following the README, put right: junk lines are not keys, an empty
//! import imports nothing and says so, a filter naming a missing pool says so, a list that
//! stops at its limit says how to see more, and `jobs show` prints the whole error, the payment
//! and every attempt — also one that never reached Dodo.

use keyrelay::fulfillment::run_batch;
use keyrelay::pool::{NewPool, add_pool};
use keyrelay::sources::Source;

use crate::helpers::{ENT, TestApp, as_env, keyrelay_async};

fn out(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Writes `text` to a scratch file and returns its path.
fn key_file(text: &str) -> String {
    let path =
        std::env::temp_dir().join(format!("keyrelay-keys-{:016x}.txt", rand::random::<u64>()));
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn junk_is_not_imported_as_keys_and_an_empty_import_records_nothing() {
    let app = TestApp::spawn_web().await;
    let env = app.cli_env();
    let env = as_env(&env);
    let add = keyrelay_async(&env, &["pool", "add", "pro", "--entitlement", ENT]).await;
    assert!(add.status.success(), "{}", out(&add));
    let junk = key_file("bad line with spaces\nPRO-AAAA-0001\n");
    let import = keyrelay_async(&env, &["pool", "import", "pro", &junk]).await;
    assert!(import.status.success(), "{}", out(&import));
    let text = out(&import);
    assert!(
        text.contains("imported 1, duplicates 0, invalid 1"),
        "{text}"
    );
    assert!(text.contains(":1: skipped: has spaces inside"), "{text}");

    let batches = || app.count("SELECT count(*) FROM audit_log WHERE action = 'import'");
    let before = batches().await;
    for (text, says) in [
        ("", "holds no keys"),
        ("# only a note\n\n", "holds no keys"),
        ("a b\nc d\n", "none of the 2 key lines"),
    ] {
        let file = key_file(text);
        let empty = keyrelay_async(&env, &["pool", "import", "pro", &file]).await;
        assert!(!empty.status.success(), "{text:?}: {}", out(&empty));
        assert!(
            out(&empty).contains(says) && out(&empty).contains("nothing imported"),
            "{}",
            out(&empty)
        );
        std::fs::remove_file(file).unwrap();
    }
    assert_eq!(batches().await, before, "no batch was recorded");

    // A pool whose keys do have spaces says so when it is made.
    let spaced = keyrelay_async(
        &env,
        &[
            "pool",
            "add",
            "cards",
            "--entitlement",
            "ent_cards",
            "--keys-with-spaces",
        ],
    )
    .await;
    assert!(spaced.status.success(), "{}", out(&spaced));
    let import = keyrelay_async(&env, &["pool", "import", "cards", &junk]).await;
    assert!(
        out(&import).contains("imported 1, duplicates 1, invalid 0"),
        "{}",
        out(&import)
    );
    std::fs::remove_file(junk).unwrap();
    app.stop().await;
}

#[tokio::test]
async fn lists_name_a_missing_pool_and_say_how_to_see_more() {
    let app = TestApp::spawn_web().await;
    app.add_pool("pro", ENT, &[]).await;
    app.sell_many(2).await;
    let env = app.cli_env();
    let env = as_env(&env);
    let missing = keyrelay_async(&env, &["jobs", "list", "--pool", "nosuch"]).await;
    assert!(!missing.status.success());
    assert!(
        out(&missing).contains("there is no pool named `nosuch`"),
        "{}",
        out(&missing)
    );
    let some = keyrelay_async(&env, &["jobs", "list", "--pool", "pro", "--limit", "1"]).await;
    assert!(
        out(&some).contains("the next page: keyrelay jobs list ... --after"),
        "{}",
        out(&some)
    );
    let events = keyrelay_async(&env, &["events", "list", "--limit", "1"]).await;
    assert!(
        out(&events).contains("pass a larger --limit"),
        "{}",
        out(&events)
    );
    let all = keyrelay_async(&env, &["events", "list"]).await;
    assert!(
        !out(&all).contains("pass a larger --limit"),
        "{}",
        out(&all)
    );
    app.stop().await;
}

#[tokio::test]
async fn jobs_show_prints_the_whole_error_the_payment_and_an_attempt_that_never_reached_dodo() {
    let app =
        TestApp::spawn_with(keyrelay::startup::Role::Web, |s| s.keys.signing_key = None).await;
    add_pool(
        &app.db,
        &NewPool {
            name: "signed".into(),
            entitlement_id: ENT.into(),
            source: Some(Source::Sign),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let grant = app.sell().await;
    run_batch(&app.worker(), 10).await.unwrap();
    let job = app.job(&grant).await;
    let error = job.last_error.unwrap();
    assert!(
        error.len() > 150 && error.ends_with("jobs retry --all-failed`"),
        "{error}"
    );
    let env = app.cli_env();
    let shown = keyrelay_async(&as_env(&env), &["jobs", "show", &grant]).await;
    let text = out(&shown);
    let words = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        words(&text).contains(&words(&error)),
        "the whole error: {text}"
    );
    assert!(text.contains("payment      pay_sbx"), "{text}");
    let attempt = text
        .lines()
        .find(|l| l.contains("no_key"))
        .expect("the attempt is listed");
    assert!(attempt.contains("keys.signing_key"), "{attempt}");
    app.stop().await;
}
