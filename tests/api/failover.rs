//! A primary failover (RDS Multi-AZ, Patroni, Cloud SQL HA) is an outage, never a failure: a
//! primary with a synchronous standby made for the test, behind a proxy the test moves to the
//! standby while it is still read-only, then the primary crashes and the standby is promoted.
//! And multi-host URLs, libpq style: the first host down or read-only, the next one taken.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keyrelay::startup::Role;
use secrecy::ExposeSecret;

use crate::helpers::{ENT, TestApp, base_settings, spawn_worker, wait_until};
use crate::servers::{Cluster, Proxy, free_port};

/// What a sale's webhook got: its grant once answered 200, and how long each 503 took.
#[derive(Default)]
struct Sales {
    delivered_webhooks: Vec<String>,
    unavailable: Vec<Duration>,
}

/// Sells `count` grants, one every 40 ms, each webhook sent until it is answered 200 (as Dodo
/// retries a 503).
async fn sell(app: &TestApp, count: usize, sales: &Mutex<Sales>) {
    for _ in 0..count {
        let grant = app.sandbox.create_grant(ENT, None);
        let hook = app.sandbox.webhook_for(&grant, "entitlement_grant.created");
        loop {
            let sent = Instant::now();
            let status = app.post(&hook).await.status();
            match status.as_u16() {
                200 => break,
                503 => sales.lock().unwrap().unavailable.push(sent.elapsed()),
                other => panic!("webhook answered {other} during the failover"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sales.lock().unwrap().delivered_webhooks.push(grant.id);
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}

async fn ready(app: &TestApp) -> u16 {
    match app.http.get(format!("{}/readyz", app.base())).send().await {
        Ok(answer) => answer.status().as_u16(),
        Err(_) => 0,
    }
}

#[tokio::test]
async fn a_primary_failover_loses_nothing_fails_nothing_and_stops_no_process() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let proxy = Proxy::start(cluster.primary.port).await;
    let mut server = base_settings();
    server.database.url = proxy.url("postgres").into();
    let app = TestApp::spawn_on(server, Role::All, |_| {}).await;
    let keys: Vec<String> = (0..400).map(|n| format!("PRO-{n:04}")).collect();
    app.add_pool(
        "pro",
        ENT,
        &keys.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    let worker_log = Arc::new(Mutex::new(String::new()));
    let mut worker = spawn_worker(&app.worker_env(200), worker_log.clone());

    let sales = Mutex::new(Sales::default());
    let failover = async {
        wait_until("some grants are sold", Duration::from_secs(30), || async {
            sales.lock().unwrap().delivered_webhooks.len() >= 40
        })
        .await;
        // The endpoint moves to the standby before it is promoted: a read-only window.
        proxy.switch_to(cluster.standby.port);
        let mut readiness_in_window = HashSet::new();
        let window = Instant::now();
        while window.elapsed() < Duration::from_millis(1_500) {
            readiness_in_window.insert(ready(&app).await);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        cluster.primary.crash();
        cluster.standby.promote();
        wait_until(
            "keyrelay is ready on the promoted standby",
            Duration::from_secs(30),
            || async { ready(&app).await == 200 },
        )
        .await;
        readiness_in_window
    };
    let (readiness_in_window, ()) = tokio::join!(failover, sell(&app, 160, &sales));
    assert_eq!(
        readiness_in_window,
        HashSet::from([503]),
        "/readyz while the only server is read-only"
    );

    let sales = sales.into_inner().unwrap();
    let sold = sales.delivered_webhooks;
    assert!(
        !sales.unavailable.is_empty(),
        "some webhooks met the outage and were answered 503"
    );
    let slowest = sales.unavailable.iter().max().unwrap();
    assert!(
        *slowest < Duration::from_secs(1),
        "a webhook during the outage gets its 503 within 1 s, took {slowest:?}"
    );
    wait_until(
        "every grant whose webhook was answered 200 is delivered",
        Duration::from_secs(90),
        || async {
            app.count("SELECT count(*) FROM jobs WHERE state = 'delivered'")
                .await
                == sold.len() as i64
        },
    )
    .await;
    assert_eq!(
        app.count("SELECT count(*) FROM jobs").await,
        sold.len() as i64
    );
    assert_eq!(
        app.count("SELECT count(*) FROM jobs WHERE state = 'failed'")
            .await,
        0
    );
    let mut keys = HashSet::new();
    for grant in &sold {
        let at_dodo = app.sandbox.grant(grant).unwrap();
        let key = at_dodo
            .key_value()
            .unwrap_or_else(|| panic!("{grant} has no key"));
        assert!(keys.insert(key.to_string()), "a key went to two grants");
    }
    let accepted = app
        .sandbox
        .fulfill_log()
        .iter()
        .filter(|c| c.status == 200)
        .count();
    assert_eq!(accepted, sold.len(), "one accepted call per grant");
    assert!(
        worker.try_wait().unwrap().is_none(),
        "the worker process exited"
    );
    worker.start_kill().unwrap();
    app.stop().await;
}

#[tokio::test]
async fn a_multi_host_url_takes_the_first_host_that_accepts_writes_and_follows_a_promotion() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let mut on_cluster = base_settings();
    on_cluster.database.url = cluster.primary.url("postgres").into();
    let db = keyrelay::db::create_scratch_database(&mut on_cluster.database, "keyrelay_test")
        .await
        .unwrap();
    db.close().await;
    let name = url::Url::parse(on_cluster.database.url.expose_secret())
        .unwrap()
        .path()
        .trim_start_matches('/')
        .to_string();
    let (primary, standby, nothing) = (cluster.primary.port, cluster.standby.port, free_port());
    let connect = |hosts: String| {
        let mut settings = on_cluster.clone();
        settings.database.url =
            format!("postgres://postgres@{hosts}/{name}?target_session_attrs=read-write").into();
        async move { keyrelay::db::connect(&settings).await.unwrap() }
    };
    // The first host is down, or a standby: the primary is taken.
    for first in [nothing, standby] {
        let db = connect(format!("127.0.0.1:{first},127.0.0.1:{primary}")).await;
        assert_eq!(write(&db).await.unwrap(), primary);
        db.close().await;
    }
    // Listed primary first: after it crashes and the standby is promoted, writes go there.
    let db = connect(format!("127.0.0.1:{primary},127.0.0.1:{standby}")).await;
    assert_eq!(write(&db).await.unwrap(), primary);
    cluster.primary.crash();
    cluster.standby.promote();
    let written = Arc::new(Mutex::new(None));
    wait_until(
        "a write lands on the promoted standby",
        Duration::from_secs(30),
        || {
            let (db, written) = (db.clone(), written.clone());
            async move {
                *written.lock().unwrap() = write(&db).await.ok();
                written.lock().unwrap().is_some()
            }
        },
    )
    .await;
    assert_eq!(written.lock().unwrap().unwrap(), standby);
    assert!(db.accepts_writes().await.unwrap());
    db.close().await;
}

/// Writes a row; the port of the server that took it.
async fn write(db: &keyrelay::db::Db) -> Result<u16, sqlx::Error> {
    let port: i32 = sqlx::query_scalar(
        "INSERT INTO leases (name, holder, expires_at) \
         VALUES (gen_random_uuid()::text, 1, now()) RETURNING inet_server_port()",
    )
    .fetch_one(db)
    .await?;
    Ok(port as u16)
}
