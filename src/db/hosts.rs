//! Which server a pool's connections land on, for failover: every new connection must land on
//! a server that accepts writes; once a read-only answer is seen, older connections are
//! dropped rather than reused; with several hosts, a connection error or a read-only server
//! makes it choose again, in the URL's order.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor, PgPool, Row};
use tokio::sync::Notify;

use super::url::DatabaseUrl;

/// How long a host may take to answer when keyrelay chooses among several.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// How a pool's connections are to be made.
pub struct PoolSpec<'a> {
    pub url: &'a DatabaseUrl,
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    pub application_name: &'a str,
}

/// A pool for `spec`, with the checks and the host choice described above.
pub fn open_pool(spec: PoolSpec<'_>) -> (PgPool, Arc<Health>) {
    let hosts: Vec<PgConnectOptions> = spec
        .url
        .hosts
        .iter()
        .map(|host| {
            host.clone()
                .application_name(spec.application_name)
                .log_statements(tracing::log::LevelFilter::Trace)
        })
        .collect();
    let health = Arc::new(Health {
        hosts,
        current: AtomicUsize::new(0),
        read_only_seen_ms: AtomicU64::new(0),
        epoch: Instant::now(),
        choose_again: Notify::new(),
    });
    let (on_connect, on_acquire, on_release) = (health.clone(), health.clone(), health.clone());
    let pool = PgPoolOptions::new()
        .max_connections(spec.max_connections)
        .acquire_timeout(spec.acquire_timeout)
        .after_connect(move |conn, _| {
            let health = on_connect.clone();
            Box::pin(async move { health.refuse_read_only(conn).await })
        })
        .before_acquire(move |_, meta| {
            let fresh = !on_acquire.is_stale(meta.age);
            Box::pin(async move { Ok(fresh) })
        })
        .after_release(move |_, meta| {
            let fresh = !on_release.is_stale(meta.age);
            Box::pin(async move { Ok(fresh) })
        })
        .connect_lazy_with(health.hosts[0].clone());
    if health.hosts.len() > 1
        && let Ok(runtime) = tokio::runtime::Handle::try_current()
    {
        // Choose at once: the first host may be down or a standby already.
        health.choose_again.notify_one();
        runtime.spawn(choose_hosts(pool.clone(), health.clone()));
    }
    (pool, health)
}

/// What a pool knows about its servers.
pub struct Health {
    hosts: Vec<PgConnectOptions>,
    current: AtomicUsize,
    /// When a read-only answer was last seen, in ms since `epoch` (0: never).
    read_only_seen_ms: AtomicU64,
    epoch: Instant,
    choose_again: Notify,
}

impl Health {
    pub(super) fn observe(&self, e: &sqlx::Error) {
        if super::is_read_only(e) {
            self.saw_read_only();
        } else if super::is_transient(e) {
            self.choose_again.notify_one();
        }
    }

    pub(super) fn saw_read_only(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.read_only_seen_ms.store(now.max(1), Ordering::Relaxed);
        self.choose_again.notify_one();
    }

    /// Whether a connection `age` old was opened before the last read-only answer.
    pub(super) fn is_stale(&self, age: Duration) -> bool {
        let seen = self.read_only_seen_ms.load(Ordering::Relaxed);
        if seen == 0 {
            return false;
        }
        let opened = self.epoch.elapsed().saturating_sub(age).as_millis() as u64;
        opened <= seen
    }

    /// Refuses a new connection to a server that does not accept writes.
    async fn refuse_read_only(&self, conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
        if read_only(conn).await? {
            self.saw_read_only();
            return Err(sqlx::Error::Configuration(
                "the database server is read-only (a standby, or a primary being demoted); waiting for one that accepts writes".into(),
            ));
        }
        Ok(())
    }

    /// Makes `pool`'s new connections go to host `index`; whether that is a change.
    pub(super) fn use_host(&self, pool: &PgPool, index: usize) -> bool {
        let changed =
            index < self.hosts.len() && self.current.swap(index, Ordering::Relaxed) != index;
        if changed {
            pool.set_connect_options(self.hosts[index].clone());
        }
        changed
    }

    pub(super) fn current_host(&self) -> String {
        let host = &self.hosts[self
            .current
            .load(Ordering::Relaxed)
            .min(self.hosts.len() - 1)];
        format!("{}:{}", host.get_host(), host.get_port())
    }
}

/// `SHOW transaction_read_only` (a simple query: safe on a pooler outside a transaction).
fn read_only(conn: &mut sqlx::PgConnection) -> BoxFuture<'_, Result<bool, sqlx::Error>> {
    Box::pin(async move {
        let row = conn.fetch_one("SHOW transaction_read_only").await?;
        Ok(row.try_get::<String, _>(0)? == "on")
    })
}

/// The first host, in the URL's order, that answers and accepts writes.
pub async fn first_writable(hosts: &[PgConnectOptions]) -> Result<usize, Vec<String>> {
    let mut why = Vec::new();
    for (i, host) in hosts.iter().enumerate() {
        let name = format!("{}:{}", host.get_host(), host.get_port());
        let probe = async {
            let mut conn = host.connect().await?;
            let read_only = read_only(&mut conn).await;
            let _ = conn.close().await;
            read_only
        };
        match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
            Ok(Ok(false)) => return Ok(i),
            Ok(Ok(true)) => why.push(format!("{name} is read-only")),
            Ok(Err(e)) => why.push(format!("{name}: {e}")),
            Err(_) => why.push(format!(
                "{name}: no answer within {} s",
                PROBE_TIMEOUT.as_secs()
            )),
        }
    }
    Err(why)
}

/// For a URL with several hosts: whenever a connection error or a read-only server is seen,
/// find the first host that accepts writes and make new connections go there. Ends when the
/// pool is closed.
async fn choose_hosts(pool: PgPool, health: Arc<Health>) {
    let backoff = crate::backoff::RetryPolicy {
        base: Duration::from_millis(250),
        max: Duration::from_secs(5),
    };
    loop {
        tokio::select! {
            _ = health.choose_again.notified() => {}
            _ = pool.close_event() => return,
        }
        for round in 1.. {
            match first_writable(&health.hosts).await {
                Ok(chosen) => {
                    if health.use_host(&pool, chosen) {
                        tracing::warn!(host = %health.current_host(), "database: new connections go to another host, the first in the URL that accepts writes");
                    }
                    break;
                }
                Err(why) => {
                    tracing::warn!(hosts = %why.join("; "), "database: no host accepts writes yet; trying again");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.ceiling(round)) => {}
                        _ = pool.close_event() => return,
                    }
                }
            }
        }
    }
}
