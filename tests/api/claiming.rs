//! Workers ask for work whenever they have room, so what they run to find it must not read
//! the whole backlog for nothing, whatever the planner's statistics last saw.

use keyrelay::store::asking::claim_keyless_statement;
use secrecy::ExposeSecret;

use crate::helpers::{ENT, TestApp, plan_nodes};

/// `claim_keyless_statement()` explained as it ran.
async fn explain_ask(app: &TestApp) -> serde_json::Value {
    let mut tx = app.db.begin().await.unwrap();
    sqlx::query(&format!("PREPARE ask AS {}", claim_keyless_statement()))
        .execute(&mut *tx)
        .await
        .unwrap();
    let plan: serde_json::Value =
        sqlx::query_scalar("EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE ask(64, 30)")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    tx.rollback().await.unwrap();
    plan
}

/// Rows every scan of `jobs` in the plan returned, over all its loops.
fn jobs_read(plan: &serde_json::Value) -> i64 {
    plan_nodes(plan)
        .into_iter()
        .filter(|n| n["Relation Name"] == "jobs")
        .map(|n| n["Actual Rows"].as_i64().unwrap_or(0) * n["Actual Loops"].as_i64().unwrap_or(0))
        .sum()
}

#[tokio::test]
async fn looking_for_jobs_to_ask_a_vendor_for_reads_none_where_no_pool_asks_one() {
    let app = TestApp::spawn_web().await;
    // History the statistics saw, taken (as autovacuum does) while nothing was due.
    sqlx::query(
        "INSERT INTO jobs (grant_id, entitlement_id, customer_id, state, finished_at) \
         SELECT 'grant_done_' || i, $1, 'cus_done', 'delivered', now() \
         FROM generate_series(1, 20000) i",
    )
    .bind(ENT)
    .execute(&app.db)
    .await
    .unwrap();
    sqlx::query("ANALYZE jobs").execute(&app.db).await.unwrap();
    // Then a burst of sales for a pool whose keys are listed, not asked for.
    app.queue_jobs("burst", ENT, 3_000).await;
    let asked: i64 = sqlx::query_scalar("SELECT count(*) FROM pools WHERE source = 'http'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(asked, 0, "no pool asks a vendor for its keys");
    let plan = explain_ask(&app).await;
    let read = jobs_read(&plan[0]["Plan"]);
    assert_eq!(
        read, 0,
        "with no pool to ask, looking for jobs to ask for read {read} jobs: {plan}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_grant_asked_for_counts_its_rejected_keys_without_reading_every_key() {
    let app = TestApp::spawn_web().await;
    app.add_pool("history", ENT, &[]).await;
    keyrelay::store::bulk::seed_finished_jobs(&app.db, 20_000, ENT, "history")
        .await
        .unwrap();
    let vendor = "ent_vendor_pro";
    keyrelay::pool::add_pool(
        &app.db,
        &keyrelay::pool::NewPool {
            name: "vendor".into(),
            entitlement_id: vendor.into(),
            source: Some(keyrelay::sources::Source::Http),
            endpoint: Some(keyrelay::harness::SANDBOX_VENDOR.into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    app.queue_jobs("vendor", vendor, 5).await;
    let plan = explain_ask(&app).await;
    let claimed = plan[0]["Plan"]["Actual Rows"].as_i64().unwrap();
    assert_eq!(claimed, 5, "{plan}");
    let scans: Vec<&str> = plan_nodes(&plan[0]["Plan"])
        .into_iter()
        .filter(|n| n["Relation Name"] == "keys")
        .filter_map(|n| n["Node Type"].as_str())
        .collect();
    assert!(
        !scans.contains(&"Seq Scan"),
        "each grant claimed read every key to count its rejected ones: {scans:?}"
    );
    assert!(
        plan[0].get("JIT").is_none(),
        "a claim of five jobs was compiled: {plan}"
    );
    app.stop().await;
}

#[tokio::test]
async fn keyrelays_sessions_never_compile_a_statement_however_costly_it_looks() {
    use sqlx::{Connection, Executor};
    let app = TestApp::spawn_web().await;
    let url = app.settings().database.url.expose_secret().to_string();
    let mut session = sqlx::PgConnection::connect(&url).await.unwrap();
    // Whatever a statement's estimated cost, as a guess at millions of rows makes it.
    session.execute("SET jit_above_cost = 0").await.unwrap();
    let plan: serde_json::Value = sqlx::query_scalar(
        "EXPLAIN (ANALYZE, FORMAT JSON) SELECT count(*) FROM jobs WHERE state = 'queued'",
    )
    .fetch_one(&mut session)
    .await
    .unwrap();
    session.close().await.unwrap();
    assert!(
        plan[0].get("JIT").is_none(),
        "a count of queued jobs was compiled before it ran: {plan}"
    );
    app.stop().await;
}
