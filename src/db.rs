//! The one Postgres pool: connecting, creating the database if missing, migrations, and what
//! concerns the connection rather than keyrelay's tables (a liveness ping, session locks).

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

use crate::configuration::Settings;

/// How long one connection attempt may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One connection attempt, given up after `CONNECT_TIMEOUT` (as `PoolTimedOut`).
async fn connect_once(options: &PgConnectOptions) -> Result<sqlx::PgConnection, sqlx::Error> {
    tokio::time::timeout(CONNECT_TIMEOUT, options.connect())
        .await
        .unwrap_or(Err(sqlx::Error::PoolTimedOut))
}

/// Whether Postgres answered that the database does not exist (yet).
fn is_missing_database(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("3D000"))
}

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

fn connect_options(settings: &Settings) -> anyhow::Result<PgConnectOptions> {
    Ok(
        PgConnectOptions::from_str(settings.database.url.expose_secret())
            .context("database.url (DATABASE_URL) is not a valid Postgres URL")?
            .application_name("keyrelay")
            .log_statements(tracing::log::LevelFilter::Trace),
    )
}

/// A pool that connects on first use, so a server can start (and answer 503) while the
/// database is down.
pub fn lazy_pool(settings: &Settings) -> anyhow::Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(settings.database.max_connections)
        .acquire_timeout(Duration::from_secs(3))
        .connect_lazy_with(connect_options(settings)?))
}

/// Connects now, failing with a message that says where, what happened and what to do.
pub async fn connect(settings: &Settings) -> anyhow::Result<PgPool> {
    let options = connect_options(settings)?;
    let probe = connect_once(&options)
        .await
        .map_err(|e| anyhow::anyhow!(explain(&e, &options)))?;
    let _ = probe.close().await;
    lazy_pool(settings)
}

/// Why a connection failed, in one line naming the server (never the password).
pub fn explain(e: &sqlx::Error, options: &PgConnectOptions) -> String {
    let server = format!("{}:{}", options.get_host(), options.get_port());
    let database = options.get_database().unwrap_or("postgres");
    let io_kind = match e {
        sqlx::Error::Io(io) => Some(io.kind()),
        _ => None,
    };
    match (e, io_kind) {
        (_, Some(std::io::ErrorKind::ConnectionRefused)) => format!(
            "cannot connect to the database at {server}: connection refused; is Postgres running there?"
        ),
        (e, _) if is_missing_database(e) => format!(
            "cannot connect to the database at {server}: database `{database}` does not exist; run `keyrelay migrate` to create it"
        ),
        (sqlx::Error::Database(db), _) => format!(
            "cannot connect to the database at {server}: {}",
            db.message()
        ),
        (sqlx::Error::PoolTimedOut, _) => format!(
            "cannot connect to the database at {server}: no answer within {} s",
            CONNECT_TIMEOUT.as_secs()
        ),
        (other, _) => format!("cannot connect to the database at {server}: {other}"),
    }
}

/// Creates the database named in `database.url` if it does not exist.
pub async fn create_database_if_missing(settings: &Settings) -> anyhow::Result<()> {
    let options = connect_options(settings)?;
    let name = options
        .get_database()
        .context("database.url names no database")?
        .to_string();
    let mut admin = connect_once(&options.database("postgres"))
        .await
        .with_context(|| {
            format!(
                "cannot connect to the Postgres server at {}; is it running?",
                settings.database_url_redacted()
            )
        })?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        match sqlx::query(&sql).execute(&mut admin).await {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // Another process created it first.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => {
                return Err(e).with_context(|| format!("cannot create database {name}"));
            }
        }
    }
    Ok(())
}

/// Creates the database if needed and applies every pending migration.
pub async fn migrate(settings: &Settings) -> anyhow::Result<PgPool> {
    create_database_if_missing(settings).await?;
    let pool = connect(settings).await?;
    MIGRATOR
        .run(&pool)
        .await
        .context("applying database migrations failed")?;
    Ok(pool)
}

/// Points `settings` at a new, empty database `<prefix>_<time>_<random>` on the same server,
/// migrated; for the demo and the benchmark. Drop it with `drop_database`.
pub async fn create_scratch_database(
    settings: &mut Settings,
    prefix: &str,
) -> anyhow::Result<PgPool> {
    let mut url = url::Url::parse(settings.database.url.expose_secret())?;
    let name = format!(
        "{prefix}_{}_{:06x}",
        chrono::Utc::now().format("%Y%m%d%H%M%S"),
        rand::random::<u32>() & 0xff_ffff
    );
    url.set_path(&format!("/{name}"));
    settings.database.url = url.to_string().into();
    migrate(settings).await
}

/// Drops the database `settings` points at (closing other sessions first).
pub async fn drop_database(settings: &Settings) -> anyhow::Result<()> {
    let options = connect_options(settings)?;
    let name = options
        .get_database()
        .context("database.url names no database")?
        .to_string();
    let mut admin = options.database("postgres").connect().await?;
    sqlx::query(&format!(
        "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
        name.replace('"', "\"\"")
    ))
    .execute(&mut admin)
    .await?;
    Ok(())
}

/// Whether the database answers a trivial query.
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query_scalar::<_, i32>("SELECT 1")
        .fetch_one(pool)
        .await
        .map(drop)
}

/// A Postgres session advisory lock, held on one pooled connection until released.
pub struct SessionLock {
    conn: sqlx::pool::PoolConnection<sqlx::Postgres>,
    key: i64,
}

impl SessionLock {
    /// Takes the lock if no other session holds it.
    pub async fn try_take(pool: &PgPool, key: i64) -> Result<Option<SessionLock>, sqlx::Error> {
        let mut conn = pool.acquire().await?;
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut *conn)
            .await?;
        Ok(taken.then_some(SessionLock { conn, key }))
    }

    /// Releases the lock (a lost connection releases it too).
    pub async fn release(mut self) {
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(self.key)
            .execute(&mut *self.conn)
            .await;
    }
}

/// Waits until the database server answers, retrying with backoff and logging each wait, so a
/// `serve` started during an outage comes up when Postgres does instead of crash-looping.
/// Returns early with an error if `stop` resolves first, or at once for a problem waiting
/// cannot fix (a wrong password, a refused role).
pub async fn wait_until_reachable(
    settings: &Settings,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let options = connect_options(settings)?;
    let backoff = crate::backoff::RetryPolicy {
        base: Duration::from_secs(1),
        max: Duration::from_secs(30),
    };
    let mut stop = std::pin::pin!(stop);
    for attempt in 1.. {
        let error = match connect_once(&options).await {
            Ok(connection) => {
                let _ = connection.close().await;
                return Ok(());
            }
            // The server answers; `migrate` creates the database.
            Err(e) if is_missing_database(&e) => return Ok(()),
            Err(e) => e,
        };
        if !is_transient(&error) {
            anyhow::bail!(explain(&error, &options));
        }
        let wait = backoff.ceiling(attempt);
        tracing::warn!(
            "{}; retrying in {} s",
            explain(&error, &options),
            wait.as_secs()
        );
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = &mut stop => anyhow::bail!("stopped while waiting for the database"),
        }
    }
    unreachable!("the loop only ends by returning")
}

/// Whether waiting may fix `e`: the server is down, starting, or unreachable for now.
fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => true,
        // 57P03: the database system is starting up; 53300: too many connections.
        sqlx::Error::Database(db) => matches!(db.code().as_deref(), Some("57P03" | "53300")),
        _ => false,
    }
}
