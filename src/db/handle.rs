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
//! Which server its connections land on, across failovers, is `hosts`'.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt, TryStreamExt};
use sqlx::postgres::{PgQueryResult, PgRow};
use sqlx::{Either, Execute, Executor, PgPool, Postgres};

use super::hosts::{Health, PoolSpec, open_pool};

/// What a transaction on a pooler starts with.
const POOLED_BEGIN: &str = "BEGIN; DEALLOCATE ALL";

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
