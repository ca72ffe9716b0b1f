//! The kept counts (finished jobs and keys that left stock, kept by triggers and compacted
//! beside the writers) equal a full count after a concurrent run with faults, SIGKILLed workers, an import,
//! refunds and pruning.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyrelay::pool::{NewPool, add_pool};
use keyrelay::sandbox::{FaultRates, SignedWebhook};
use keyrelay::sources::Source;
use keyrelay::startup::Role;

use crate::helpers::{ENT, TestApp, spawn_worker, wait_until};

/// Where a kept tally and a full count disagree, one line per group: `kept` and `counted` each
/// select the columns named in `groups` (never NULL) and `n`.
async fn disagreements(
    app: &TestApp,
    what: &str,
    groups: &str,
    kept: &str,
    counted: &str,
) -> Vec<String> {
    sqlx::query_scalar(&format!(
        "WITH kept AS ({kept}), counted AS ({counted}) \
         SELECT format('{what} %s: kept %s, counted %s', ({groups})::text, kept.n, counted.n) \
         FROM kept FULL JOIN counted USING ({groups}) \
         WHERE kept.n IS DISTINCT FROM counted.n"
    ))
    .fetch_all(&app.db)
    .await
    .unwrap()
}

/// (what differs between the tallies and a full count), empty when they agree.
async fn differences(app: &TestApp) -> Vec<String> {
    let jobs = disagreements(
        app,
        "jobs",
        "state, entitlement_id, at",
        "SELECT state, entitlement_id, tally_bucket(finished_in) AS at, \
                sum(n)::int8 AS n FROM job_tallies GROUP BY 1, 2, 3 HAVING sum(n) <> 0",
        "SELECT state, entitlement_id, coalesce(tally_bucket(finished_at), '-infinity') AS at, \
                count(*)::int8 AS n FROM jobs \
         WHERE state IN ('delivered', 'cancelled') GROUP BY 1, 2, 3",
    )
    .await;
    let keys = disagreements(
        app,
        "keys",
        "pool_id, state",
        "SELECT pool_id, state, sum(n)::int8 AS n FROM key_tallies \
         GROUP BY 1, 2 HAVING sum(n) <> 0",
        "SELECT pool_id, state, count(*)::int8 AS n FROM keys \
         WHERE state IN ('delivered', 'rejected', 'suspended', 'revoked') GROUP BY 1, 2",
    )
    .await;
    jobs.into_iter().chain(keys).collect()
}

/// (what differs between Dodo's answers kept per minute and the attempts stored), empty when
/// they agree. Pruning drops attempts but not what the charts showed, so this holds before it.
async fn answer_differences(app: &TestApp) -> Vec<String> {
    disagreements(
        app,
        "answers",
        "minute, series",
        "SELECT minute, series, sum(n)::int8 AS n FROM answer_tallies GROUP BY 1, 2",
        "SELECT tally_minute(started_at) AS minute, answer_class(http_status) AS series, \
                count(*)::int8 AS n FROM attempts \
         WHERE outcome NOT IN ('internal_error', 'no_key') GROUP BY 1, 2",
    )
    .await
}

/// Moves finish times back with `update`, compacts, and checks the tallies still agree with a
/// full count.
async fn age_then_compact(app: &TestApp, update: &str) {
    sqlx::query(update).execute(&app.db).await.unwrap();
    keyrelay::store::stock::compact_tallies(&app.db)
        .await
        .unwrap();
    assert_eq!(differences(app).await, Vec::<String>::new());
}

/// The webhooks chart (minutes rolled up, then the webhooks since, one by one) gives each
/// minute's full count. The webhooks are spread over the last half hour and rolled up, and one
/// more arrives after, so both parts have webhooks to count.
async fn assert_webhooks_chart_counts_every_webhook(app: &TestApp, after: &SignedWebhook) {
    for sql in [
        "UPDATE events SET received_at = received_at \
         - make_interval(mins => abs(hashtext(webhook_id)) % 30)",
        "DELETE FROM webhook_minutes",
        "SELECT roll_up_webhooks(interval '0 seconds')",
    ] {
        sqlx::query(sql).execute(&app.db).await.unwrap();
    }
    let rolled = app
        .count("SELECT count(*) FROM webhook_minutes WHERE n > 0")
        .await;
    assert!(rolled >= 10, "the spread minutes were rolled up: {rolled}");
    assert_eq!(app.post(after).await.status(), 422);
    let from = chrono::Utc::now() - chrono::Duration::hours(2);
    let charted: Vec<(chrono::DateTime<chrono::Utc>, i64)> =
        keyrelay::store::history::webhooks(&app.db, from, 60)
            .await
            .unwrap()
            .into_iter()
            .map(|p| (p.bucket, p.value))
            .collect();
    let counted: Vec<(chrono::DateTime<chrono::Utc>, i64)> = sqlx::query_as(
        "SELECT tally_minute(received_at), count(*) FROM events GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(charted, counted);
}

#[tokio::test]
async fn kept_counts_equal_a_full_count_after_faults_kills_and_pruning() {
    let app = TestApp::spawn_with(Role::Web, |_| {}).await;
    let keys: Vec<String> = (0..100).map(|i| format!("TALLY-KEY-{i:04}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    app.add_pool("listed", ENT, &keys).await;
    let generated = NewPool {
        name: "made".into(),
        entitlement_id: "ent_made".into(),
        source: Some(Source::Generate),
        template: Some("MADE-XXXXXXXXXXXXXXXXXXXX".into()),
        ..Default::default()
    };
    add_pool(&app.db, &generated).await.unwrap();
    app.sandbox.set_fault_rates(FaultRates {
        server_error: 0.1,
        apply_then_500: 0.1,
        rate_limited: 0.05,
        ..Default::default()
    });
    assert_eq!(differences(&app).await, Vec::<String>::new());

    // Two workers take the sales; one is SIGKILLed mid-run and replaced.
    let log = Arc::new(Mutex::new(String::new()));
    let mut env = app.worker_env(20);
    // A killed worker's jobs come back when their leases end.
    env.push(("KEYRELAY_WORKER__LEASE_SECS", "10".into()));
    let mut first = spawn_worker(&env, Arc::clone(&log));
    let mut second = spawn_worker(&env, Arc::clone(&log));
    let mut sold = Vec::new();
    let mut late = None;
    for i in 0..160 {
        // 120 grants for 100 listed keys (20 wait for keys) and 40 whose keys are made.
        let grant = if i % 4 == 3 {
            app.sandbox.create_grant("ent_made", None)
        } else {
            app.sandbox.create_grant(ENT, None)
        };
        let hook = app.sandbox.webhook_for(&grant, "entitlement_grant.created");
        assert_eq!(app.post(&hook).await.status(), 200);
        if i % 10 == 0 {
            assert_eq!(app.post(&hook).await.status(), 200);
        }
        sold.push(grant.id);
        if i == 30 {
            // A signed webhook keyrelay cannot process is stored (and counted) once.
            let mut body: serde_json::Value = serde_json::from_str(&hook.body).unwrap();
            body["data"]["entitlement_id"] = "e".repeat(5_000).into();
            let hostile = app
                .sandbox
                .sign("msg_tally_hostile".into(), body.to_string());
            for _ in 0..2 {
                assert_eq!(app.post(&hostile).await.status(), 422);
            }
            body["data"]["entitlement_id"] = "f".repeat(5_000).into();
            late = Some(app.sandbox.sign("msg_tally_late".into(), body.to_string()));
        }
        if i == 60 {
            first.start_kill().unwrap();
            first.wait().await.unwrap();
            first = spawn_worker(&env, Arc::clone(&log));
        }
    }
    wait_until(
        "every listed key is used",
        Duration::from_secs(90),
        || async {
            app.count("SELECT count(*) FROM jobs WHERE state = 'waiting_for_keys'")
            .await
            == 20
            && app
                .count("SELECT count(*) FROM jobs WHERE state IN ('queued', 'running', 'retrying')")
                .await
                == 0
        },
    )
    .await;
    second.start_kill().unwrap();
    second.wait().await.unwrap();
    assert_eq!(differences(&app).await, Vec::<String>::new());
    assert_eq!(answer_differences(&app).await, Vec::<String>::new());
    assert_webhooks_chart_counts_every_webhook(&app, late.as_ref().unwrap()).await;
    let answers = app
        .count("SELECT count(DISTINCT series) FROM answer_tallies")
        .await;
    assert!(
        answers >= 3,
        "2xx, 5xx and 429 answers were kept: {answers}"
    );

    // More keys arrive, some grants are refunded, the old ones are pruned.
    let more: Vec<String> = (0..40).map(|i| format!("TALLY-MORE-{i:04}")).collect();
    app.import(
        "listed",
        &more.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    app.sandbox.set_fault_rates(FaultRates::default());
    wait_until(
        "the waiting grants are served",
        Duration::from_secs(60),
        || async {
            app.count("SELECT count(*) FROM jobs WHERE state = 'delivered'")
                .await
                == 160
        },
    )
    .await;
    for grant in sold.iter().step_by(7) {
        let revoked = app.sandbox.revoke(grant, "refund").unwrap();
        let hook = app
            .sandbox
            .webhook_for(&revoked, "entitlement_grant.revoked");
        assert_eq!(app.post(&hook).await.status(), 200);
    }
    // A job that finished before finish times were kept is counted all the same.
    sqlx::query(
        "INSERT INTO jobs (grant_id, entitlement_id, customer_id, state, source) \
         VALUES ('grant_tally_untimed', $1, 'cus_tally', 'cancelled', 'test')",
    )
    .bind(ENT)
    .execute(&app.db)
    .await
    .unwrap();
    // The aged jobs' minutes fold into their hours.
    age_then_compact(
        &app,
        "UPDATE jobs SET finished_at = finished_at - interval '40 days' \
         WHERE grant_id IN (SELECT grant_id FROM jobs WHERE state = 'delivered' LIMIT 50)",
    )
    .await;
    assert_eq!(answer_differences(&app).await, Vec::<String>::new());
    let folded = app
        .count("SELECT count(*) FROM job_tallies WHERE finished_in < now() - interval '1 day' AND finished_in <> tally_hour(finished_in)")
        .await;
    assert_eq!(folded, 0, "day-old minutes are kept by the hour");
    // Jobs that finished a minute apart around a day ago: an hour whose first minutes are a
    // day old folds them, and keeps its later minutes as minutes.
    age_then_compact(
        &app,
        "UPDATE jobs SET finished_at = now() - interval '1 day' + (aged.i - 60) * interval '1 minute' \
         FROM (SELECT grant_id, row_number() OVER (ORDER BY grant_id) AS i FROM jobs \
               WHERE state = 'delivered' AND finished_at > now() - interval '1 day' LIMIT 100) aged \
         WHERE jobs.grant_id = aged.grant_id",
    )
    .await;
    let pruned = keyrelay::ops::reconcile::prune(&app.db, Duration::from_secs(30 * 86_400))
        .await
        .unwrap();
    assert!(pruned.jobs >= 50, "{pruned:?}");
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    assert_eq!(differences(&app).await, Vec::<String>::new());
    keyrelay::store::stock::compact_tallies(&app.db)
        .await
        .unwrap();
    assert_eq!(differences(&app).await, Vec::<String>::new());
    let rows = app.count("SELECT count(*) FROM job_tallies").await;
    let groups = app
        .count(
            "SELECT count(*) FROM (SELECT DISTINCT state, entitlement_id, tally_bucket(finished_at) \
             FROM jobs WHERE state IN ('delivered', 'cancelled')) g",
        )
        .await;
    assert_eq!(rows, groups, "compacted to one row per group");
    let rows = app.count("SELECT count(*) FROM answer_tallies").await;
    let groups = app
        .count("SELECT count(*) FROM (SELECT DISTINCT minute, series FROM answer_tallies) g")
        .await;
    assert_eq!(
        rows, groups,
        "Dodo's answers compacted to one row per group"
    );
    let left = app
        .count(
            "SELECT (SELECT count(*) FROM job_tallies WHERE NOT folded) \
                  + (SELECT count(*) FROM answer_tallies WHERE NOT folded)",
        )
        .await;
    assert_eq!(left, 0, "every appended row was folded");
    let logged = log.lock().unwrap().clone();
    assert!(!logged.contains("TALLY-KEY-"), "a key reached the log");
    app.stop().await;
}
