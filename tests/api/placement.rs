//! A job's updates stay on the page it was sold into. A history written in bulk (a restore,
//! `VACUUM FULL`, the bench's seed) fills every page but for less than a row, and a queued job
//! is smaller than a finished one, so each sale takes one such gap: a page of its own, out of
//! the history. Its claim, reservation and delivery each write a new version of it; with no
//! room left on that page, each went to yet another gap, so every grant read and wrote (and,
//! after a checkpoint, logged whole) four pages of history instead of one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::helpers::{ENT, TestApp, spawn_worker, wait_until};

/// Writes `n` finished jobs in one statement, as a bulk load does, each with `padding` bytes
/// of error text.
async fn history(app: &TestApp, n: i64, padding: i32) {
    sqlx::query(
        "INSERT INTO jobs (grant_id, entitlement_id, customer_id, state, attempts, finished_at, \
                           last_error, source) \
         SELECT 'grant_old_' || lpad(i::text, 6, '0'), $1, 'cus_old', 'failed', 1, now(), \
                repeat('x', $3), 'restore' \
         FROM generate_series(1, $2) i",
    )
    .bind(ENT)
    .bind(n)
    .bind(padding)
    .execute(&app.db)
    .await
    .unwrap();
    sqlx::query("VACUUM ANALYZE jobs")
        .execute(&app.db)
        .await
        .unwrap();
}

/// The heap page of each job in `state`.
async fn pages(app: &TestApp, state: &str) -> HashMap<String, i64> {
    let rows: Vec<(String, f64)> = sqlx::query_as(
        "SELECT grant_id, (ctid::text::point)[0] FROM jobs WHERE state = $1::job_state",
    )
    .bind(state)
    .fetch_all(&app.db)
    .await
    .unwrap();
    rows.into_iter().map(|(g, p)| (g, p as i64)).collect()
}

#[tokio::test]
async fn a_jobs_updates_stay_on_the_page_it_was_sold_into() {
    let app = TestApp::spawn_web().await;
    // Finished jobs of 432 bytes: 18 fill a page (436 bytes each with its line pointer) but
    // for 320 bytes, room for one queued job on every page of the history.
    history(&app, 1, 300).await;
    let measured: i32 = sqlx::query_scalar("SELECT pg_column_size(jobs.*) FROM jobs")
        .fetch_one(&app.db)
        .await
        .unwrap();
    sqlx::query("DELETE FROM jobs")
        .execute(&app.db)
        .await
        .unwrap();
    history(&app, 18 * 400, 300 + 432 - measured).await;
    let sold = 200;
    let keys: Vec<String> = (0..sold).map(|i| format!("PRO-PAGE-{i:05}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    app.add_pool("pro", ENT, &keys).await;
    for _ in 0..sold {
        let grant = app.sandbox.create_grant(ENT, None);
        let hook = app.sandbox.webhook_for(&grant, "entitlement_grant.created");
        assert_eq!(app.post(&hook).await.status(), 200);
    }
    let sold_into = pages(&app, "queued").await;
    assert_eq!(sold_into.len(), sold);
    let log = Arc::new(Mutex::new(String::new()));
    let mut worker = spawn_worker(&app.worker_env(50), log.clone());
    wait_until(
        "every grant is delivered",
        Duration::from_secs(60),
        || async { pages(&app, "delivered").await.len() == sold },
    )
    .await;
    worker.kill().await.unwrap();
    let delivered = pages(&app, "delivered").await;
    let stayed = sold_into
        .iter()
        .filter(|(grant, page)| delivered.get(*grant) == Some(page))
        .count();
    assert!(
        stayed * 10 >= sold * 9,
        "{stayed} of {sold} grants were delivered on the page they were sold into"
    );
    app.stop().await;
}
