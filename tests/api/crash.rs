//! Workers that die: after claiming (the lease expires), and after Dodo applied the key but
//! before the outcome was recorded. Either way the grant ends delivered once, with the same key.

use std::time::Duration;

use keyrelay::domain::{JobState, KeyState};
use keyrelay::fulfillment::{run_batch, run_job};
use keyrelay::store::{claim_batch, complete_batch};

use crate::helpers::{ENT, TestApp};

#[tokio::test]
async fn a_worker_that_dies_after_claiming_is_replaced_when_its_lease_expires() {
    let app = TestApp::spawn_web().await;
    app.add_pool("pro", ENT, &["PRO-1", "PRO-2"]).await;
    let grant = app.sell().await;
    // The doomed worker claims with an already expired lease, then vanishes.
    let claimed = claim_batch(
        &app.db,
        10,
        Duration::ZERO,
        &Default::default(),
        None,
        &Default::default(),
    )
    .await
    .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(app.job_state(&grant).await, JobState::Running);
    assert_eq!(
        app.key_state("PRO-1").await,
        (KeyState::Reserved, Some(grant.clone()))
    );
    // Another worker takes it over and delivers with the key the first one reserved.
    let done = run_batch(&app.worker(), 10).await.unwrap();
    assert_eq!(done.len(), 1);
    let job = app.job(&grant).await;
    assert_eq!((job.state, job.attempts), (JobState::Delivered, 2));
    assert_eq!(
        app.sandbox.grant(&grant).unwrap().key_value(),
        Some("PRO-1")
    );
    assert_eq!(app.key_state("PRO-2").await.0, KeyState::Available);
    app.stop().await;
}

#[tokio::test]
async fn a_worker_that_dies_after_dodo_applied_the_key_is_settled_by_the_next_one() {
    let app = TestApp::spawn_web().await;
    app.add_pool("pro", ENT, &["PRO-1", "PRO-2"]).await;
    let grant = app.sell().await;
    let ctx = app.worker();
    let mut claimed = claim_batch(
        &app.db,
        10,
        Duration::ZERO,
        &Default::default(),
        None,
        &Default::default(),
    )
    .await
    .unwrap();
    // Dodo applies the key; the worker dies before recording it.
    let lost = run_job(&ctx, claimed.remove(0)).await.expect("an outcome");
    assert_eq!(lost.state, JobState::Delivered);
    assert_eq!(app.job_state(&grant).await, JobState::Running);
    // The next worker gets 409, looks the grant up, and finds our key there.
    run_batch(&ctx, 10).await.unwrap();
    let job = app.job(&grant).await;
    assert_eq!(job.state, JobState::Delivered);
    assert_eq!(
        app.key_state("PRO-1").await,
        (KeyState::Delivered, Some(grant.clone()))
    );
    let log = app.sandbox.fulfill_log();
    assert_eq!(
        log.iter()
            .map(|r| (r.key.as_str(), r.status))
            .collect::<Vec<_>>(),
        vec![("PRO-1", 200), ("PRO-1", 409)]
    );
    // The dead worker's outcome, arriving late, is fenced out by the lease token.
    let applied = complete_batch(&app.db, &[lost], &Default::default())
        .await
        .unwrap();
    assert!(applied.is_empty());
    assert_eq!(
        app.count("SELECT count(*) FROM attempts").await,
        2,
        "the late attempt is still recorded"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_stale_worker_cannot_overwrite_the_outcome_of_the_worker_that_took_over() {
    let app = TestApp::spawn_web().await;
    app.add_pool("pro", ENT, &["PRO-1"]).await;
    let grant = app.sell().await;
    let ctx = app.worker();
    let mut stale = claim_batch(
        &app.db,
        10,
        Duration::ZERO,
        &Default::default(),
        None,
        &Default::default(),
    )
    .await
    .unwrap();
    app.sandbox
        .script_faults(&grant, [keyrelay::sandbox::Fault::Status { status: 500 }]);
    let mut stale_outcome = run_job(&ctx, stale.remove(0)).await.unwrap();
    assert_eq!(stale_outcome.state, JobState::Retrying);
    run_batch(&ctx, 10).await.unwrap();
    assert_eq!(app.job_state(&grant).await, JobState::Delivered);
    stale_outcome.state = JobState::Failed;
    assert!(
        complete_batch(&app.db, &[stale_outcome], &Default::default())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(app.job_state(&grant).await, JobState::Delivered);
    assert_eq!(app.key_state("PRO-1").await.0, KeyState::Delivered);
    app.stop().await;
}
