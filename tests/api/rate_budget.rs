//! One rate budget for every process: turns handed out by the database keep all calls inside
//! Dodo's burst and sustained limits, a 429 pauses every process, a job waiting for its turn
//! keeps its lease, and three worker processes draining a backlog against a sandbox that
//! enforces the limits see no 429 and finish close to the time the limits allow.

use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use keyrelay::configuration::RateLimitTier;
use keyrelay::db::Db;
use keyrelay::dodo::{RateBudget, RateLimits, take_turn_at};
use keyrelay::domain::JobState;
use keyrelay::fulfillment::run_batch;

use crate::helpers::{ENT, TestApp, keyrelay_command, wait_until};

/// Fails if any second holds more than the burst, or any minute more than the sustained limit.
fn assert_inside(limits: RateLimits, times: &mut [DateTime<Utc>]) {
    times.sort();
    let check = |n: usize, span: chrono::TimeDelta| {
        for (i, pair) in times.windows(n + 1).enumerate() {
            assert!(
                pair[n] - pair[0] >= span,
                "calls {i}..={} fall within {span} at {limits}",
                i + n
            );
        }
    };
    check(limits.burst_per_sec as usize, chrono::TimeDelta::seconds(1));
    check(
        limits.requests_per_min as usize,
        chrono::TimeDelta::seconds(60),
    );
}

/// `count` turns taken by `tasks` concurrent callers on their own connections, all asking at
/// `asked_at`.
async fn concurrent_turns(
    db: &Db,
    limits: RateLimits,
    tasks: usize,
    count: usize,
    asked_at: DateTime<Utc>,
) -> Vec<DateTime<Utc>> {
    let callers = (0..tasks).map(|_| {
        let db = db.clone();
        tokio::spawn(async move {
            let mut times = Vec::new();
            for _ in 0..count / tasks {
                times.push(take_turn_at(&db, limits, asked_at).await.unwrap());
            }
            times
        })
    });
    futures_util::future::join_all(callers)
        .await
        .into_iter()
        .flat_map(Result::unwrap)
        .collect()
}

#[tokio::test]
async fn concurrent_callers_share_one_schedule_inside_both_limits() {
    let app = TestApp::spawn_web().await;
    let limits = RateLimits::TIER0;
    let start = Utc::now();
    let mut times = concurrent_turns(&app.db, limits, 4, 1_000, start).await;
    assert_eq!(times.len(), 1_000);
    assert_inside(limits, &mut times);
    // Close to the least time 1,000 calls can take at 40/s and 240/min.
    let span = (times[999] - times[0]).to_std().unwrap();
    let fastest = limits.fastest(1_000);
    assert!(
        span <= fastest.mul_f64(1.05),
        "1,000 turns span {span:?}; the limits allow {fastest:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn turns_asked_over_time_stay_inside_the_limits_and_never_come_early() {
    let app = TestApp::spawn_web().await;
    let limits = RateLimits::new(10, 50);
    // Postgres keeps microseconds.
    let mut asked = Utc::now().trunc_subsecs(6);
    let mut times = Vec::new();
    for i in 0..400u32 {
        // Quiet spells and bursts, on average faster than the sustained limit allows.
        asked += chrono::TimeDelta::milliseconds(match i % 40 {
            0 => 20_000,
            _ => i64::from(rand::random::<u32>() % 300),
        });
        let at = take_turn_at(&app.db, limits, asked).await.unwrap();
        assert!(at >= asked, "turn {i} came before it was asked for");
        times.push(at);
    }
    assert_inside(limits, &mut times);
    app.stop().await;
}

#[tokio::test]
async fn a_429_in_one_process_pauses_the_others() {
    let app = TestApp::spawn_web().await;
    let one = RateBudget::shared(app.db.clone(), RateLimits::TIER0);
    let other = RateBudget::shared(app.db.clone(), RateLimits::TIER0);
    assert!(other.take_turn().await.unwrap().wait() < Duration::from_secs(1));
    one.pause_for(Duration::from_secs(30)).await;
    let wait = other.take_turn().await.unwrap().wait();
    assert!(wait > Duration::from_secs(29), "waited only {wait:?}");
    app.stop().await;
}

#[tokio::test]
async fn a_job_waiting_for_its_turn_keeps_its_lease() {
    let app = TestApp::spawn_with(keyrelay::startup::Role::Web, |s| {
        s.dodo.rate_limit = RateLimitTier::Tier0;
        s.worker.lease_secs = 2;
    })
    .await;
    app.add_pool("pro", ENT, &["KEY-WAITING-0001"]).await;
    let grant = app.sell().await;
    // Dodo asked every process to hold back for longer than a lease lasts.
    RateBudget::shared(app.db.clone(), RateLimits::TIER0)
        .pause_for(Duration::from_secs(4))
        .await;
    let first = app.worker();
    let waiting = tokio::spawn(async move { run_batch(&first, 10).await.unwrap() });
    app.wait_for_state(&grant, JobState::Running).await;
    // A second worker keeps polling while the first one waits for its turn.
    let second = app.worker();
    let mut claimed_by_second = 0;
    while !waiting.is_finished() {
        claimed_by_second += run_batch(&second, 10).await.unwrap().len();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(waiting.await.unwrap().len(), 1);
    assert_eq!(claimed_by_second, 0, "the job was claimed twice");
    let job = app.job(&grant).await;
    assert_eq!((job.state, job.attempts), (JobState::Delivered, 1));
    assert_eq!(app.sandbox.fulfill_log().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn three_worker_processes_drain_a_backlog_inside_the_budget() {
    const GRANTS: usize = 100;
    let limits = RateLimits::new(20, 80);
    let app = TestApp::spawn_web().await;
    app.sandbox.enforce_rate_limits(Some(limits));
    let keys: Vec<String> = (0..GRANTS).map(|i| format!("KEY-BUDGET-{i:04}")).collect();
    app.add_pool(
        "pro",
        ENT,
        &keys.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    for _ in 0..GRANTS {
        app.sell().await;
    }
    let s = app.settings();
    let database_url = secrecy::ExposeSecret::expose_secret(&s.database.url).to_string();
    let api_key =
        secrecy::ExposeSecret::expose_secret(s.dodo.api_key.as_ref().unwrap()).to_string();
    let encryption_key =
        secrecy::ExposeSecret::expose_secret(s.keys.encryption_keys.as_ref().unwrap()).to_string();
    let env = [
        ("DATABASE_URL", database_url.as_str()),
        ("KEYRELAY_ENCRYPTION_KEY", encryption_key.as_str()),
        (
            "DODO_PAYMENTS_BASE_URL",
            s.dodo.base_url.as_deref().unwrap(),
        ),
        ("DODO_PAYMENTS_API_KEY", api_key.as_str()),
        ("KEYRELAY_DODO__RATE_LIMIT", "custom"),
        ("KEYRELAY_DODO__BURST_PER_SEC", "20"),
        ("KEYRELAY_DODO__REQUESTS_PER_MIN", "80"),
        ("KEYRELAY_DATABASE__MIGRATE_ON_START", "false"),
        ("KEYRELAY_RECONCILER__INTERVAL_SECS", "0"),
        ("KEYRELAY_WORKER__POLL_INTERVAL_MS", "100"),
        ("KEYRELAY_LOG__FORMAT", "json"),
    ];
    let log_path =
        std::env::temp_dir().join(format!("keyrelay-budget-{}.log", rand::random::<u64>()));
    let workers: Vec<tokio::process::Child> = (0..3)
        .map(|i| {
            let log = match i {
                0 => std::fs::File::create(&log_path).unwrap().into(),
                _ => std::process::Stdio::null(),
            };
            tokio::process::Command::from(keyrelay_command(&env, &["serve", "--role", "worker"]))
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .expect("start a worker process")
        })
        .collect();
    wait_until(
        "the backlog is delivered",
        Duration::from_secs(150),
        || async {
            app.count("SELECT count(*) FROM jobs WHERE state = 'delivered'")
                .await
                == GRANTS as i64
        },
    )
    .await;
    drop(workers);
    let log = std::fs::read_to_string(&log_path).unwrap();
    let _ = std::fs::remove_file(&log_path);
    assert!(
        log.contains("custom: 20/s burst, 80/min sustained, shared by every process"),
        "serve logs its rate budget at start: {log}"
    );

    assert_eq!(app.sandbox.calls_over_limit(), 0, "Dodo answered 429");
    let calls = app.sandbox.admitted_calls();
    assert_eq!(calls.len(), GRANTS, "one call per grant");
    let span = *calls.last().unwrap() - calls[0];
    let fastest = limits.fastest(GRANTS);
    eprintln!(
        "rate budget: {GRANTS} grants, 3 processes, {limits}: {:.1} s (the limits allow {:.1} s), 0 answered 429",
        span.as_secs_f64(),
        fastest.as_secs_f64()
    );
    assert!(
        span <= fastest.mul_f64(1.05) + Duration::from_secs(1),
        "took {span:?}; the limits allow {fastest:?}"
    );
    app.stop().await;
}
