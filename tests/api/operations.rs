//! Replay, pruning and the reconciler.

use std::time::Duration;

use keyrelay::domain::Actor;
use keyrelay::domain::{JobState, KeyState};
use keyrelay::fulfillment::run_batch;
use keyrelay::ops::events::{ReplayOutcome, replay};
use keyrelay::ops::reconcile::{prune, reconcile};
use tokio_util::sync::CancellationToken;

use crate::helpers::{ENT, TestApp};

#[tokio::test]
async fn replay_changes_nothing_already_decided_and_retry_delivers_a_failed_job() {
    let app = TestApp::spawn_web().await;
    app.add_pool("pro", ENT, &["REP-1", "REP-2"]).await;
    let grant = app.sell().await;
    run_batch(&app.worker(), 10).await.unwrap();
    let created: String = sqlx::query_scalar("SELECT webhook_id FROM events WHERE grant_id = $1")
        .bind(&grant)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(
        replay(
            &app.db,
            &app.vault(),
            &created,
            Actor::Cli,
            &Default::default()
        )
        .await
        .unwrap(),
        ReplayOutcome::Unchanged
    );
    let g = app.sandbox.grant(&grant).unwrap();
    let delivered = app.sandbox.webhook_for(&g, "entitlement_grant.delivered");
    assert_eq!(app.post(&delivered).await.status(), 200);
    assert_eq!(
        replay(
            &app.db,
            &app.vault(),
            &delivered.id,
            Actor::Cli,
            &Default::default()
        )
        .await
        .unwrap(),
        ReplayOutcome::Unchanged
    );
    assert_eq!(app.job_state(&grant).await, JobState::Delivered);
    assert_eq!(app.key_state("REP-1").await.0, KeyState::Delivered);
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, 1);
    assert!(
        replay(
            &app.db,
            &app.vault(),
            "msg_unknown",
            Actor::Cli,
            &Default::default()
        )
        .await
        .unwrap_err()
        .to_string()
        .contains("events list")
    );

    // A created event stored while no pool served it is queued by replay once a pool exists.
    let other = app.sandbox.create_grant("ent_later", None);
    let mut body = app.sandbox.webhook_for(&other, "entitlement_grant.created");
    body.body = body
        .body
        .replace(",\"integration_type\":\"license_key\"", "");
    let hook = app.sandbox.sign(body.id.clone(), body.body);
    assert_eq!(app.post(&hook).await.status(), 200);
    assert_eq!(
        app.count("SELECT count(*) FROM jobs").await,
        1,
        "no pool yet: no job"
    );
    app.add_pool("later", "ent_later", &["LATER-1"]).await;
    assert_eq!(
        replay(
            &app.db,
            &app.vault(),
            &hook.id,
            Actor::Cli,
            &Default::default()
        )
        .await
        .unwrap(),
        ReplayOutcome::Queued
    );
    assert_eq!(
        replay(
            &app.db,
            &app.vault(),
            &hook.id,
            Actor::Cli,
            &Default::default()
        )
        .await
        .unwrap(),
        ReplayOutcome::Unchanged
    );
    let audit = app
        .count("SELECT count(*) FROM audit_log WHERE action = 'replay'")
        .await;
    assert_eq!(audit, 4, "every replay is in the audit trail");

    // A failed job, retried by a human, is delivered.
    let failing = app.sell().await;
    app.sandbox
        .script_faults(&failing, [keyrelay::sandbox::Fault::Status { status: 422 }]);
    run_batch(&app.worker(), 10).await.unwrap();
    assert_eq!(app.job_state(&failing).await, JobState::Failed);
    keyrelay::ops::jobs::retry_jobs(&app.db, &[crate::helpers::grant_id(&failing)], Actor::Cli)
        .await
        .unwrap();
    run_batch(&app.worker(), 10).await.unwrap();
    assert_eq!(app.job_state(&failing).await, JobState::Delivered);
    let actions: Vec<String> = sqlx::query_scalar(
        "SELECT actor || ':' || action FROM audit_log WHERE grant_id = $1 ORDER BY id",
    )
    .bind(&failing)
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(
        actions,
        [
            "worker:reserve",
            "worker:release",
            "cli:retry",
            "worker:reserve",
            "worker:deliver"
        ]
    );
    app.stop().await;
}

#[tokio::test]
async fn pruning_removes_only_old_finished_rows_and_keeps_keys() {
    let app = TestApp::spawn_web().await;
    app.add_pool("pro", ENT, &["PRUNE-1", "PRUNE-2", "PRUNE-3"])
        .await;
    let old_done = app.sell().await;
    run_batch(&app.worker(), 10).await.unwrap();
    let old_open = app.sell().await;
    let recent_done = app.sell().await;
    run_batch(&app.worker(), 10).await.unwrap();
    sqlx::query("UPDATE jobs SET state = 'retrying', finished_at = NULL, lease_token = NULL WHERE grant_id = $1")
        .bind(&old_open)
        .execute(&app.db)
        .await
        .unwrap();
    sqlx::query("UPDATE jobs SET finished_at = now() - interval '40 days', created_at = now() - interval '40 days' WHERE grant_id = ANY($1)")
        .bind(vec![old_done.clone(), old_open.clone()])
        .execute(&app.db)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE events SET received_at = now() - interval '40 days' WHERE grant_id = ANY($1)",
    )
    .bind(vec![old_done.clone(), old_open.clone()])
    .execute(&app.db)
    .await
    .unwrap();
    let pruned = prune(&app.db, Duration::from_secs(30 * 86_400))
        .await
        .unwrap();
    assert_eq!((pruned.events, pruned.jobs), (2, 1));
    let left: Vec<String> = sqlx::query_scalar("SELECT grant_id FROM jobs ORDER BY grant_id")
        .fetch_all(&app.db)
        .await
        .unwrap();
    let mut expected = vec![old_open.clone(), recent_done.clone()];
    expected.sort();
    assert_eq!(left, expected);
    assert_eq!(
        app.count("SELECT count(*) FROM keys").await,
        3,
        "keys are kept"
    );
    let kept: Option<String> =
        sqlx::query_scalar("SELECT grant_id FROM keys WHERE state = 'delivered' AND grant_id = $1")
            .bind(&old_done)
            .fetch_optional(&app.db)
            .await
            .unwrap();
    assert_eq!(
        kept.as_deref(),
        Some(old_done.as_str()),
        "a key still names the grant it went to"
    );
    assert!(
        app.count("SELECT count(*) FROM audit_log").await > 0,
        "the audit trail is kept"
    );
    assert_eq!(
        prune(&app.db, Duration::from_secs(30 * 86_400))
            .await
            .unwrap()
            .jobs,
        0
    );
    app.stop().await;
}

#[tokio::test]
async fn a_lost_webhook_is_found_by_the_reconciler_and_queued_once() {
    let app = TestApp::spawn_web().await;
    app.add_pool("pro", ENT, &["REC-1", "REC-2"]).await;
    let known = app.sell().await;
    let lost = app.sandbox.create_grant(ENT, None); // sold, but its webhook never arrives
    let _other_entitlement = app.sandbox.create_grant("ent_not_ours", None);
    let dodo = keyrelay::startup::dodo_client(app.settings(), &app.db).unwrap();
    let never = CancellationToken::new();
    // Two processes reconcile at once: each has its own connections.
    let other_pool = keyrelay::db::connect(app.settings()).await.unwrap();
    let (a, b) = tokio::join!(
        reconcile(&app.db, &dodo, None, &never),
        reconcile(&other_pool, &dodo, None, &never)
    );
    let enqueued: usize = [a.unwrap(), b.unwrap()]
        .iter()
        .flatten()
        .map(|r| r.enqueued)
        .sum();
    assert_eq!(enqueued, 1);
    let again = reconcile(&app.db, &dodo, None, &never)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((again.pending_seen, again.enqueued), (2, 0));
    let source: String = sqlx::query_scalar("SELECT source FROM jobs WHERE grant_id = $1")
        .bind(&lost.id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(source, "reconciler");
    run_batch(&app.worker(), 10).await.unwrap();
    assert_eq!(app.job_state(&lost.id).await, JobState::Delivered);
    assert_eq!(app.job_state(&known).await, JobState::Delivered);
    assert_eq!(app.count("SELECT count(*) FROM jobs").await, 2);
    other_pool.close().await;
    app.stop().await;
}

#[tokio::test]
async fn serve_reconciles_periodically_and_delivers_lost_grants() {
    let app = TestApp::spawn_with(keyrelay::startup::Role::All, |s| {
        s.reconciler.interval_secs = 1
    })
    .await;
    app.add_pool("pro", ENT, &["LOOP-1"]).await;
    let lost = app.sandbox.create_grant(ENT, None);
    crate::helpers::wait_until(
        "the lost grant is delivered",
        Duration::from_secs(15),
        || async {
            app.count(
                "SELECT count(*) FROM jobs WHERE state = 'delivered' AND source = 'reconciler'",
            )
            .await
                == 1
        },
    )
    .await;
    assert_eq!(
        app.sandbox.grant(&lost.id).unwrap().key_value(),
        Some("LOOP-1")
    );
    app.stop().await;
}
