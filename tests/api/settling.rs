//! A burst settles in time proportional to the burst, whatever the planner's statistics last
//! saw: autovacuum usually analyzes `jobs` while nothing runs, and then a whole burst is
//! claimed at once.

use keyrelay::store::settle::apply_outcomes;

use crate::helpers::{ENT, TestApp, plan_nodes};

/// Rows every plan node looked at and threw away, joins included.
fn thrown_away(plan: &serde_json::Value) -> i64 {
    plan_nodes(plan)
        .into_iter()
        .flat_map(|n| ["Rows Removed by Filter", "Rows Removed by Join Filter"].map(|k| &n[k]))
        .map(|rows| rows.as_i64().unwrap_or(0))
        .sum()
}

#[tokio::test]
async fn settling_a_burst_reads_its_own_jobs_after_statistics_that_saw_none_running() {
    let app = TestApp::spawn_web().await;
    app.queue_jobs("burst", ENT, 10_000).await;
    sqlx::query("ANALYZE jobs").execute(&app.db).await.unwrap();
    // The whole burst is claimed; 512 of its jobs come back delivered.
    sqlx::query(
        "UPDATE jobs SET state = 'running', lease_token = substr(grant_id, 13)::bigint, \
                         attempts = 1",
    )
    .execute(&app.db)
    .await
    .unwrap();
    let batch = 1..=512i64;
    let grants: Vec<String> = batch.clone().map(|i| format!("grant_burst_{i}")).collect();
    let tokens: Vec<i64> = batch.clone().collect();
    let n = grants.len();
    let mut tx = app.db.begin().await.unwrap();
    sqlx::query(&format!("PREPARE apply AS {}", apply_outcomes()))
        .execute(&mut *tx)
        .await
        .unwrap();
    let literal = |items: Vec<String>| format!("'{{{}}}'", items.join(","));
    let explain = format!(
        "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE apply({}, {}, {}, {}, {}, {}, {}, false)",
        literal(grants.clone()),
        literal(tokens.iter().map(i64::to_string).collect()),
        literal(vec!["delivered".into(); n]),
        literal(vec!["2026-12-07T00:00:00Z".into(); n]),
        literal(vec!["NULL".into(); n]),
        literal(vec!["200".into(); n]),
        literal(vec!["false".into(); n]),
    );
    let plan: serde_json::Value = sqlx::query_scalar(&explain)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let thrown = thrown_away(&plan[0]["Plan"]);
    assert!(
        thrown < 10_000,
        "settling {n} of 10,000 running jobs threw away {thrown} rows"
    );
    app.stop().await;
}
