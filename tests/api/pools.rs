//! Pools: empty pool → waiting_for_keys → import → delivered, with no attempt spent waiting;
//! imports are all-or-nothing and report duplicates and bad lines.

use std::time::Duration;

use keyrelay::domain::JobState;
use keyrelay::pool::{
    import_keys,
    keyfile::{KeyRules, parse_keys},
};

use crate::helpers::{ENT, TestApp, wait_until};

#[tokio::test]
async fn jobs_wait_for_keys_without_spending_attempts_and_resume_on_import() {
    let app = TestApp::spawn().await;
    // No pool at all: a grant that says it is a license key still waits.
    let first = app.sell().await;
    app.wait_for_state(&first, JobState::WaitingForKeys).await;
    app.add_pool("pro", ENT, &[]).await;
    let second = app.sell().await;
    wait_until(
        "both jobs wait for keys",
        Duration::from_secs(10),
        || async {
            app.count("SELECT count(*) FROM jobs WHERE state = 'waiting_for_keys'")
                .await
                == 2
        },
    )
    .await;
    assert_eq!(
        app.count("SELECT coalesce(sum(attempts), 0) FROM jobs")
            .await,
        0,
        "waiting uses no attempt"
    );
    assert!(app.sandbox.fulfill_log().is_empty());

    app.import("pro", &["PRO-W-1", "PRO-W-2"]).await;
    wait_until("both are delivered", Duration::from_secs(10), || async {
        app.count("SELECT count(*) FROM jobs WHERE state = 'delivered'")
            .await
            == 2
    })
    .await;
    for grant in [&first, &second] {
        assert_eq!(app.job(grant).await.attempts, 1);
        assert!(
            app.sandbox
                .grant(grant)
                .unwrap()
                .key_value()
                .unwrap()
                .starts_with("PRO-W-")
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn import_skips_duplicates_anywhere_and_reports_bad_lines() {
    let app = TestApp::spawn_web().await;
    app.add_pool("pro", ENT, &["SHARED-1"]).await;
    app.add_pool("basic", "ent_basic", &[]).await;
    let parsed = parse_keys(
        "# batch\nSHARED-1\nNEW-1\nNEW-1\n\nNEW-2\nBAD\u{1}KEY\n",
        KeyRules::default(),
    );
    let dry = import_keys(&app.db, &app.vault(), "basic", &parsed, true, |_| {})
        .await
        .unwrap();
    assert_eq!((dry.imported, dry.duplicates, dry.invalid), (2, 2, 1));
    assert_eq!(
        app.count("SELECT count(*) FROM keys").await,
        1,
        "a dry run stores nothing"
    );
    let report = import_keys(&app.db, &app.vault(), "basic", &parsed, false, |_| {})
        .await
        .unwrap();
    assert_eq!(
        (report.imported, report.duplicates, report.invalid),
        (2, 2, 1)
    );
    let again = import_keys(&app.db, &app.vault(), "basic", &parsed, false, |_| {})
        .await
        .unwrap();
    assert_eq!((again.imported, again.duplicates), (0, 4));
    // Keys are reserved in import order.
    let order = app
        .key_values("pool_id = (SELECT id FROM pools WHERE name = 'basic')")
        .await;
    assert_eq!(order, vec!["NEW-1", "NEW-2"]);
    app.stop().await;
}

#[tokio::test]
async fn a_failing_import_stores_nothing() {
    let app = TestApp::spawn_web().await;
    app.add_pool("pro", ENT, &[]).await;
    let parsed = parse_keys("GOOD-1\nGOOD-2\n", KeyRules::default());
    // The pool name is wrong: nothing is imported anywhere.
    let err = import_keys(&app.db, &app.vault(), "nope", &parsed, false, |_| {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("keyrelay pool add nope"), "{err}");
    // A database error half-way rolls back the keys already inserted.
    let big = parse_keys(
        &(0..12_000).map(|i| format!("K-{i}\n")).collect::<String>(),
        KeyRules::default(),
    );
    let mut chunks = 0;
    // The 11,001st key (ids count from 1 in a new database) cannot be stored.
    sqlx::query("ALTER TABLE keys ADD CONSTRAINT no_key_11001 CHECK (id <> 11001)")
        .execute(&app.db)
        .await
        .unwrap();
    let failed = import_keys(&app.db, &app.vault(), "pro", &big, false, |_| chunks += 1).await;
    assert!(failed.is_err());
    assert!(
        chunks >= 2,
        "the failure came after earlier chunks were inserted"
    );
    assert_eq!(app.count("SELECT count(*) FROM keys").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_claim_racing_an_import_waits_for_it_instead_of_parking_the_job() {
    use keyrelay::store::{claim_batch, pools::Import};
    let app = TestApp::spawn_web().await;
    app.add_pool("pro", ENT, &[]).await;
    let grant = app.sell().await;
    // An import is half-way: it holds the entitlement's key lock and has inserted a key.
    let mut import = Import::begin(&app.db, "pro").await.unwrap().unwrap();
    let race = keyrelay::domain::LicenseKey::parse("RACE-1").unwrap();
    let vault = app.vault();
    let id = import.take_ids(1).await.unwrap()[0];
    let row = keyrelay::store::sealed::NewKey::new(&vault, &race, id);
    import.add(&[row], vault.sealing_key_id()).await.unwrap();
    // A worker claims meanwhile; it must wait for the import rather than park the job.
    let db = app.db.clone();
    let claim = tokio::spawn(async move {
        claim_batch(
            &db,
            10,
            Duration::from_secs(30),
            &Default::default(),
            None,
            &Default::default(),
        )
        .await
    });
    wait_until(
        "the claim waits on the key lock",
        Duration::from_secs(10),
        || async {
            app.count(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            )
            .await
                == 1
        },
    )
    .await;
    import.finish(false).await.unwrap();
    let claimed = claim.await.unwrap().unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        claimed[0].key.open(&app.vault()).unwrap().reveal(),
        "RACE-1"
    );
    assert_eq!(app.job_state(&grant).await, JobState::Running);
    app.stop().await;
}
