//! What a scrape and the dashboard watch (the oldest queued grant, the oldest without a key,
//! the revocations to review) is read from its own few rows, not found by walking the finished
//! history, whatever the planner's statistics last saw: a healthy shop's queue is usually empty
//! right after a burst that was analyzed while it was queued, and refunded grants pile up.

use keyrelay::startup::Role;
use keyrelay::store::read::{self, TO_REVIEW};
use keyrelay::store::stock::{OLDEST_QUEUED_AGE, OLDEST_UNFINISHED_AGE};

use crate::helpers::{ENT, TestApp, plan_nodes};

/// Rows a statement looked at and threw away: every plan node's "Rows Removed by Filter".
async fn rows_thrown_away(app: &TestApp, sql: &str) -> i64 {
    let plan: serde_json::Value =
        sqlx::query_scalar(&format!("EXPLAIN (ANALYZE, FORMAT JSON) {sql}"))
            .fetch_one(&app.db)
            .await
            .unwrap();
    plan_nodes(&plan[0]["Plan"])
        .into_iter()
        .map(|n| n["Rows Removed by Filter"].as_i64().unwrap_or(0))
        .sum()
}

async fn age(app: &TestApp, sql: &str) -> f64 {
    sqlx::query_scalar(sql).fetch_one(&app.db).await.unwrap()
}

#[tokio::test]
async fn what_is_watched_is_read_without_walking_the_history() {
    let app = TestApp::spawn_with(Role::Web, |_| {}).await;
    app.add_pool("history", ENT, &[]).await;
    keyrelay::store::bulk::seed_finished_jobs(&app.db, 30_000, ENT, "history")
        .await
        .unwrap();
    // A burst is queued, and the statistics are taken while it waits.
    let burst = "INSERT INTO jobs (grant_id, entitlement_id, customer_id, created_at) \
                 SELECT 'grant_burst_' || i, $1, 'cus_burst', now() - i * interval '1 second' \
                 FROM generate_series(1, 3000) i";
    sqlx::query(burst).bind(ENT).execute(&app.db).await.unwrap();
    sqlx::query("ANALYZE jobs").execute(&app.db).await.unwrap();
    // Then it is refunded, all of it, two for reasons keyrelay does not know; nothing is in
    // flight.
    sqlx::query(
        "UPDATE jobs SET state = 'cancelled', finished_at = now(), \
                         last_error = 'revoked at Dodo (refund)' \
         WHERE grant_id LIKE 'grant_burst_%'",
    )
    .execute(&app.db)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE jobs SET last_error = $1, updated_at = now() - (grant_id = 'grant_burst_7')::int * interval '1 minute' \
         WHERE grant_id IN ('grant_burst_7', 'grant_burst_9')",
    )
    .bind(format!(
        "revoked at Dodo (chargeback_pending): {}",
        keyrelay::lifecycle::REVIEW_NOTE
    ))
    .execute(&app.db)
    .await
    .unwrap();
    for sql in [OLDEST_QUEUED_AGE, OLDEST_UNFINISHED_AGE] {
        assert_eq!(age(&app, sql).await, 0.0, "nothing in flight: {sql}");
        let thrown = rows_thrown_away(&app, sql).await;
        assert!(
            thrown < 100,
            "{thrown} finished jobs were read to find none in flight: {sql}"
        );
    }
    let to_review: Vec<String> = read::revocations_to_review(&app.db, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|g| g.to_string())
        .collect();
    assert_eq!(to_review, ["grant_burst_9", "grant_burst_7"]);
    assert_eq!(read::count_revocations_to_review(&app.db).await.unwrap(), 2);
    for sql in [
        format!("SELECT grant_id FROM jobs WHERE {TO_REVIEW} ORDER BY updated_at DESC LIMIT 100"),
        format!("SELECT count(*) FROM jobs WHERE {TO_REVIEW}"),
    ] {
        let thrown = rows_thrown_away(&app, &sql).await;
        assert!(
            thrown < 100,
            "{thrown} refunded grants were read to find two to review: {sql}"
        );
    }
    // One grant queued an hour ago, one waiting for keys for two.
    sqlx::query(
        "INSERT INTO jobs (grant_id, entitlement_id, customer_id, state, created_at) VALUES \
         ('grant_late_1', $1, 'cus_late', 'queued', now() - interval '1 hour'), \
         ('grant_late_2', $1, 'cus_late', 'waiting_for_keys', now() - interval '2 hours')",
    )
    .bind(ENT)
    .execute(&app.db)
    .await
    .unwrap();
    let queued = age(&app, OLDEST_QUEUED_AGE).await;
    assert!((3600.0..3660.0).contains(&queued), "{queued}");
    let unfinished = age(&app, OLDEST_UNFINISHED_AGE).await;
    assert!((7200.0..7260.0).contains(&unfinished), "{unfinished}");
    app.stop().await;
}
