//! `Db`: the one handle keyrelay reaches Postgres through, on a direct connection or through a
//! transaction pooler.
//!
//! Behind a transaction pooler (PgBouncer in transaction mode, Supavisor, Neon's pooled host,
//! RDS Proxy) a client holds a server connection only while a transaction is open; between
//! transactions its next message may reach another server. sqlx sends every statement as
//! Parse+Describe+Sync, then Bind+Execute+Sync, and names its prepared statements
//! `sqlx_s_N` per client connection (even with the statement cache off, in sqlx 0.8). Through
//! such a pooler that fails with "prepared statement already exists", and without names it
//! can be worse: the Bind reaches another client's statement and runs it with our arguments.
//! So on a pooler every statement runs inside an explicit transaction (the server stays ours
//! from Parse to Bind), the cache is off, and each transaction starts with
//! `DEALLOCATE ALL` (what an earlier client left on that server cannot clash with our names).
//!
//! It also keeps what keyrelay needs for failover: every new connection must land on a server
//! that accepts writes; once a read-only answer is seen, older connections are dropped rather
//! than reused; with several hosts, a connection error or a read-only server makes it choose
//! again, in the URL's order.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt, TryStreamExt};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgQueryResult, PgRow};
use sqlx::{ConnectOptions, Connection, Either, Execute, Executor, PgPool, Postgres, Row};
use tokio::sync::Notify;

use super::url::DatabaseUrl;

/// What a transaction on a pooler starts with.
const POOLED_BEGIN: &str = "BEGIN; DEALLOCATE ALL";
/// How long a host may take to answer when keyrelay chooses among several.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone)]
pub struct Db {
    pool: PgPool,
    pooled: bool,
    /// Where `LISTEN` and session locks go: the direct pool, the same pool when there is no
    /// pooler, none on a pooler without a direct URL.
    session: Option<PgPool>,
    health: Arc<Health>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("pooled", &self.pooled)
            .field("session", &self.session.is_some())
            .finish_non_exhaustive()
    }
}

/// How a pool's connections are to be made.
pub struct PoolSpec<'a> {
    pub url: &'a DatabaseUrl,
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    pub application_name: &'a str,
}

impl Db {
    /// A pool that connects on first use; `pooled`: `spec.url` is a transaction pooler.
    pub fn open(spec: PoolSpec<'_>, pooled: bool) -> Db {
        let (pool, health) = open_pool(spec);
        Db {
            session: (!pooled).then(|| pool.clone()),
            pool,
            pooled,
            health,
        }
    }

    /// The same, with `direct` for what a pooler cannot carry.
    pub fn with_session(mut self, direct: PgPool) -> Db {
        self.session = Some(direct);
        self
    }

    /// Whether `database.url` is a transaction pooler.
    pub fn is_pooled(&self) -> bool {
        self.pooled
    }

    /// The pool for `LISTEN` and session advisory locks; `None` on a pooler without a
    /// direct URL (wake-ups then come from polling, and locks are lease rows).
    pub fn session(&self) -> Option<&PgPool> {
        self.session.as_ref()
    }

    /// Begins a transaction (on a pooler, one that clears what an earlier client prepared).
    pub async fn begin(&self) -> Result<sqlx::Transaction<'static, Postgres>, sqlx::Error> {
        let begun = match self.pooled {
            true => self.pool.begin_with(POOLED_BEGIN).await,
            false => self.pool.begin().await,
        };
        begun.inspect_err(|e| self.observe(e))
    }

    /// Runs `sql` as one simple query outside any transaction (for `VACUUM`, which cannot run
    /// inside one). Safe on a pooler: a simple query is a single message, prepared nowhere.
    pub async fn execute_outside_transaction(&self, sql: &str) -> Result<(), sqlx::Error> {
        sqlx::raw_sql(sql)
            .execute(&self.pool)
            .await
            .map(drop)
            .inspect_err(|e| self.observe(e))
    }

    /// Closes every connection (the session pool's too).
    pub async fn close(&self) {
        self.pool.close().await;
        if let Some(session) = &self.session {
            session.close().await;
        }
    }

    pub fn is_closed(&self) -> bool {
        self.pool.is_closed()
    }

    /// Takes note of an error from this database: a read-only answer retires the open
    /// connections, and a connection error makes a several-host URL choose again.
    pub fn observe(&self, e: &sqlx::Error) {
        self.health.observe(e);
    }

    /// Whether the server accepts writes now: `Ok(false)` on a standby or a primary being
    /// demoted (and the open connections are retired).
    pub async fn accepts_writes(&self) -> Result<bool, sqlx::Error> {
        let read_only: String =
            sqlx::query_scalar("SELECT current_setting('transaction_read_only')")
                .fetch_one(self)
                .await?;
        if read_only == "on" {
            self.health.saw_read_only();
        }
        Ok(read_only != "on")
    }

    /// Makes new connections go to host `index` of the URL (one found to accept writes).
    pub fn prefer_host(&self, index: usize) {
        self.health.use_host(&self.pool, index);
    }

    /// The host the pool connects to now, `host:port`.
    pub fn current_host(&self) -> String {
        self.health.current_host()
    }
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
    fn observe(&self, e: &sqlx::Error) {
        if super::is_read_only(e) {
            self.saw_read_only();
        } else if super::is_transient(e) {
            self.choose_again.notify_one();
        }
    }

    fn saw_read_only(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.read_only_seen_ms.store(now.max(1), Ordering::Relaxed);
        self.choose_again.notify_one();
    }

    /// Whether a connection `age` old was opened before the last read-only answer.
    fn is_stale(&self, age: Duration) -> bool {
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
    fn use_host(&self, pool: &PgPool, index: usize) -> bool {
        let changed =
            index < self.hosts.len() && self.current.swap(index, Ordering::Relaxed) != index;
        if changed {
            pool.set_connect_options(self.hosts[index].clone());
        }
        changed
    }

    fn current_host(&self) -> String {
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

impl<'c> Executor<'c> for &'c Db {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<PgQueryResult, PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        if !self.pooled {
            return self
                .pool
                .fetch_many(query)
                .inspect_err(move |e| self.observe(e))
                .boxed();
        }
        futures_util::stream::once(async move {
            let mut tx = self.begin().await?;
            let steps: Vec<_> = (&mut *tx).fetch_many(query).try_collect().await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(steps)
        })
        .map_ok(|steps| futures_util::stream::iter(steps.into_iter().map(Ok)))
        .try_flatten()
        .inspect_err(move |e| self.observe(e))
        .boxed()
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        async move {
            let row = match self.pooled {
                false => self.pool.fetch_optional(query).await,
                true => {
                    async {
                        let mut tx = self.begin().await?;
                        let row = (&mut *tx).fetch_optional(query).await?;
                        tx.commit().await?;
                        Ok(row)
                    }
                    .await
                }
            };
            row.inspect_err(|e| self.observe(e))
        }
        .boxed()
    }

    fn prepare_with<'e, 'q: 'e>(
        self,
        sql: &'q str,
        parameters: &'e [sqlx::postgres::PgTypeInfo],
    ) -> BoxFuture<'e, Result<sqlx::postgres::PgStatement<'q>, sqlx::Error>>
    where
        'c: 'e,
    {
        self.pool.prepare_with(sql, parameters)
    }

    fn describe<'e, 'q: 'e>(
        self,
        sql: &'q str,
    ) -> BoxFuture<'e, Result<sqlx::Describe<Postgres>, sqlx::Error>>
    where
        'c: 'e,
    {
        self.pool.describe(sql)
    }
}
