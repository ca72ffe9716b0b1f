//! keyrelay through a real PgBouncer in transaction mode (what Supabase's and Neon's pooled
//! URLs, Heroku's PgBouncer and RDS Proxy give people): with a direct URL beside it for
//! `LISTEN` and session locks, and without one.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keyrelay::configuration::Pooler;
use keyrelay::startup::Role;
use secrecy::ExposeSecret;
use sqlx::postgres::PgPoolOptions;

use crate::helpers::{
    ENT, TestApp, base_settings, captured_logs, keyrelay_async, spawn_worker, wait_until,
};
use crate::servers::PgBouncer;

/// Server connections PgBouncer may open to the test database.
const POOL_SIZE: u32 = 4;
/// How often workers look for jobs when nothing wakes them.
const POLL_MS: u64 = 1_000;

fn database_name(url: &str) -> String {
    url::Url::parse(url)
        .unwrap()
        .path()
        .trim_start_matches('/')
        .to_string()
}

#[tokio::test]
async fn sqlx_names_its_statements_even_uncached_so_keyrelay_runs_each_in_a_transaction() {
    let Some(bouncer) = PgBouncer::start(1).await else {
        return;
    };
    let mut settings = base_settings();
    keyrelay::db::create_scratch_database(&mut settings.database, "keyrelay_test")
        .await
        .unwrap()
        .close()
        .await;
    let pooled_url = bouncer.url(&database_name(settings.database.url.expose_secret()));
    let plain = |cache: usize| {
        let options: sqlx::postgres::PgConnectOptions = pooled_url.parse().unwrap();
        PgPoolOptions::new().max_connections(2).connect_lazy_with(
            options
                .statement_cache_capacity(cache)
                .extra_float_digits(None),
        )
    };
    // Two client connections share PgBouncer's one server connection; each names its first
    // statement `sqlx_s_1`, and with the cache off sqlx still names it and never closes it.
    for cache in [100, 0] {
        let pool = plain(cache);
        let mut first = pool.acquire().await.unwrap();
        let mut second = pool.acquire().await.unwrap();
        // What the last round left on the server (a simple query: nothing is prepared).
        sqlx::raw_sql("DEALLOCATE ALL")
            .execute(&mut *first)
            .await
            .unwrap();
        let one: i32 = sqlx::query_scalar("SELECT $1::int4")
            .bind(1)
            .fetch_one(&mut *first)
            .await
            .unwrap();
        assert_eq!(one, 1);
        let clash = sqlx::query_scalar::<_, i32>("SELECT $1::int4")
            .bind(2)
            .fetch_one(&mut *second)
            .await
            .expect_err("a second client's sqlx_s_1 reaches the same server");
        assert!(
            clash
                .to_string()
                .contains("prepared statement \"sqlx_s_1\" already exists"),
            "statement cache {cache}: {clash}"
        );
        drop((first, second));
        pool.close().await;
    }
    // keyrelay's handle: many clients, one server connection, every answer right.
    let mut pooled = settings.clone();
    pooled.database.url = pooled_url.clone().into();
    pooled.database.pooler = Pooler::Transaction;
    pooled.database.max_connections = 8;
    let db = keyrelay::db::lazy_pool(&pooled).unwrap();
    let answers = futures_util::future::join_all((0..200).map(|n: i32| {
        let db = db.clone();
        async move {
            sqlx::query_scalar::<_, i32>("SELECT $1::int4 * 2")
                .bind(n)
                .fetch_one(&db)
                .await
        }
    }))
    .await;
    for (n, answer) in answers.into_iter().enumerate() {
        assert_eq!(answer.unwrap(), n as i32 * 2);
    }
    db.close().await;
    keyrelay::db::drop_database(&settings).await.unwrap();
}

#[tokio::test]
async fn the_whole_flow_runs_through_pgbouncer_with_a_direct_url_for_listen_and_locks() {
    if let Some(run) = PooledRun::start(true).await {
        let latencies = run.pickup_latencies(8).await;
        // LISTEN on the direct connection wakes the other process at once.
        let median = latencies[latencies.len() / 2];
        assert!(
            median < Duration::from_millis(POLL_MS / 3),
            "pickup with LISTEN: {latencies:?}"
        );
        run.sell_import_and_reconcile().await;
    }
}

#[tokio::test]
async fn the_whole_flow_runs_through_pgbouncer_alone_waking_workers_by_polling() {
    if let Some(run) = PooledRun::start(false).await {
        let latencies = run.pickup_latencies(8).await;
        let slowest = *latencies.last().unwrap();
        assert!(
            slowest < Duration::from_millis(POLL_MS + 750),
            "pickup by polling is bounded by the poll interval: {latencies:?}"
        );
        run.sell_import_and_reconcile().await;
    }
}

/// A web process (this one) and two worker processes, all through PgBouncer.
struct PooledRun {
    app: TestApp,
    bouncer: PgBouncer,
    workers: Vec<tokio::process::Child>,
    worker_logs: Arc<Mutex<String>>,
    env: Vec<(&'static str, String)>,
}

impl PooledRun {
    async fn start(direct: bool) -> Option<PooledRun> {
        let bouncer = PgBouncer::start(POOL_SIZE).await?;
        let app = TestApp::spawn_with(Role::Web, |s| {
            let direct_url = s.database.url.expose_secret().to_string();
            s.database.url = bouncer.url(&database_name(&direct_url)).into();
            match direct {
                true => s.database.direct_url = Some(direct_url.into()),
                false => s.database.pooler = Pooler::Transaction,
            }
        })
        .await;
        assert!(app.db.is_pooled());
        assert_eq!(app.db.session().is_some(), direct);
        let env = app.worker_env(POLL_MS);
        let worker_logs = Arc::new(Mutex::new(String::new()));
        let workers = vec![
            spawn_worker(&env, worker_logs.clone()),
            spawn_worker(&env, worker_logs.clone()),
        ];
        let said = worker_logs.clone();
        wait_until(
            "both workers say which database mode runs",
            Duration::from_secs(30),
            || {
                let said = said.clone();
                async move { said.lock().unwrap().matches("transaction pooler").count() == 2 }
            },
        )
        .await;
        Some(PooledRun {
            app,
            bouncer,
            workers,
            worker_logs,
            env,
        })
    }

    /// Sells `count` grants one at a time; for each, how long from keyrelay answering its
    /// webhook to a worker process calling Dodo for it. Sorted.
    async fn pickup_latencies(&self, count: usize) -> Vec<Duration> {
        self.app.add_pool("warm", "ent_warm", &[]).await;
        let keys: Vec<String> = (0..count).map(|n| format!("WARM-{n:04}")).collect();
        self.app
            .import("warm", &keys.iter().map(String::as_str).collect::<Vec<_>>())
            .await;
        let mut latencies = Vec::new();
        for _ in 0..count {
            let grant = self.app.sandbox.create_grant("ent_warm", None);
            let hook = self
                .app
                .sandbox
                .webhook_for(&grant, "entitlement_grant.created");
            let response = self.app.post(&hook).await;
            let answered = Instant::now();
            assert_eq!(response.status(), 200);
            wait_until("a worker calls Dodo", Duration::from_secs(10), || async {
                self.called(&grant.id).is_some()
            })
            .await;
            latencies.push(
                self.called(&grant.id)
                    .unwrap()
                    .saturating_duration_since(answered),
            );
        }
        latencies.sort();
        latencies
    }

    fn called(&self, grant_id: &str) -> Option<Instant> {
        let log = self.app.sandbox.fulfill_log();
        log.iter()
            .find(|r| r.grant_id == grant_id)
            .map(|r| r.received)
    }

    /// 150 grants sold 8 at a time (every tenth webhook twice) to a pool that starts with too
    /// few keys and gets more from `keyrelay pool import` halfway; 5 more grants whose
    /// webhooks never arrive, for the reconciler. Every grant ends delivered once.
    async fn sell_import_and_reconcile(self) {
        let app = &self.app;
        let first_keys: Vec<String> = (0..40).map(|n| format!("PRO-A-{n:04}")).collect();
        app.add_pool(
            "pro",
            ENT,
            &first_keys.iter().map(String::as_str).collect::<Vec<_>>(),
        )
        .await;
        let servers = Arc::new(Mutex::new(Vec::new()));
        let sampling = tokio::spawn(sample_server_connections(
            self.bouncer.port,
            database_name(app.settings().database.url.expose_secret()),
            servers.clone(),
        ));
        let lost: Vec<String> = (0..5)
            .map(|_| app.sandbox.create_grant(ENT, None).id)
            .collect();
        let key_file =
            std::env::temp_dir().join(format!("keyrelay_pooler_{:08x}.txt", rand::random::<u32>()));
        std::fs::write(
            &key_file,
            (0..150)
                .map(|n| format!("PRO-B-{n:04}\n"))
                .collect::<String>(),
        )
        .unwrap();
        let mut sold = Vec::new();
        for round in 0..(150 / 8 + 1) {
            if round == 10 {
                let env: Vec<(&str, &str)> =
                    self.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let out =
                    keyrelay_async(&env, &["pool", "import", "pro", key_file.to_str().unwrap()])
                        .await;
                assert!(
                    out.status.success(),
                    "pool import through the pooler: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                assert!(String::from_utf8_lossy(&out.stdout).contains("imported 150"));
            }
            let batch = (0..8).take(150 - sold.len().min(150)).map(|n| {
                let grant = app.sandbox.create_grant(ENT, None);
                let hook = app.sandbox.webhook_for(&grant, "entitlement_grant.created");
                let twice = (sold.len() + n) % 10 == 0;
                async move {
                    for _ in 0..if twice { 2 } else { 1 } {
                        assert_eq!(app.post(&hook).await.status(), 200);
                    }
                    grant.id
                }
            });
            sold.extend(futures_util::future::join_all(batch).await);
        }
        let _ = std::fs::remove_file(&key_file);
        let total = sold.len() + lost.len();
        assert_eq!(sold.len(), 150);
        wait_until(
            "every grant sold, and every lost one, is delivered",
            Duration::from_secs(90),
            || async {
                app.count(&format!(
                    "SELECT count(*) FROM jobs WHERE state = 'delivered' AND entitlement_id = '{ENT}'"
                ))
                .await
                    == total as i64
            },
        )
        .await;
        sampling.abort();
        // Exactly once: every grant holds one key at Dodo, no key twice, one 200 each.
        let mut keys = HashSet::new();
        for grant in sold.iter().chain(&lost) {
            let key = app
                .sandbox
                .grant(grant)
                .unwrap()
                .key_value()
                .map(str::to_string);
            let key = key.unwrap_or_else(|| panic!("grant {grant} has no key at Dodo"));
            assert!(keys.insert(key), "a key went to two grants");
        }
        let mut accepted: HashMap<String, usize> = HashMap::new();
        for call in app.sandbox.fulfill_log().iter().filter(|c| c.status == 200) {
            *accepted.entry(call.grant_id.clone()).or_default() += 1;
        }
        assert!(
            accepted.values().all(|&n| n == 1),
            "a grant was fulfilled twice"
        );
        assert_eq!(
            app.count("SELECT count(*) FROM jobs WHERE state <> 'delivered'")
                .await,
            0
        );
        let servers = servers.lock().unwrap().clone();
        let most = servers.iter().copied().max().unwrap_or(0);
        assert!(
            (1..=POOL_SIZE as usize).contains(&most),
            "server connections through PgBouncer, sampled: {servers:?}"
        );
        let worker_logs = self.worker_logs.lock().unwrap().clone();
        for log in [captured_logs(), worker_logs.clone()] {
            assert!(!log.contains("prepared statement"), "{log}");
            assert!(!log.contains("panicked"), "{log}");
        }
        assert!(
            worker_logs.contains("queued grants whose webhook never arrived"),
            "the reconciler ran in a worker process"
        );
        let PooledRun {
            app, mut workers, ..
        } = self;
        for worker in &mut workers {
            assert!(worker.try_wait().unwrap().is_none(), "a worker exited");
            worker.start_kill().unwrap();
        }
        app.stop().await;
    }
}

/// Every 100 ms, how many server connections PgBouncer holds to `database` (its admin
/// console's `SHOW SERVERS`).
async fn sample_server_connections(port: u16, database: String, into: Arc<Mutex<Vec<usize>>>) {
    loop {
        let out = tokio::process::Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
            .args(["-d", "pgbouncer", "-AtF", "|", "-c", "SHOW SERVERS"])
            .output()
            .await;
        if let Ok(out) = out {
            let servers = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|line| line.split('|').nth(2) == Some(database.as_str()))
                .count();
            into.lock().unwrap().push(servers);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn two_migrations_at_once_through_pgbouncer_alone_create_and_migrate_the_database_once() {
    let Some(bouncer) = PgBouncer::start(2).await else {
        return;
    };
    let name = format!(
        "keyrelay_test_{}_{:06x}",
        chrono::Utc::now().format("%Y%m%d%H%M%S"),
        rand::random::<u32>() & 0xff_ffff
    );
    let url = bouncer.url(&name);
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("KEYRELAY_DATABASE__POOLER", "transaction"),
    ];
    let (first, second) = tokio::join!(
        keyrelay_async(&env, &["migrate"]),
        keyrelay_async(&env, &["migrate"])
    );
    for out in [&first, &second] {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut settings = base_settings();
    settings.database.url = url.into();
    settings.database.pooler = Pooler::Transaction;
    let db = keyrelay::db::connect(&settings).await.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(applied as usize, keyrelay::db::MIGRATOR.iter().count());
    // No session lock was left behind on a server connection. pg_locks shows the whole
    // cluster, where other tests' databases hold locks of their own.
    let held: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(held, 0);
    db.close().await;
    keyrelay::db::drop_database(&settings).await.unwrap();
}
