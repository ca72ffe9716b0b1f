//! The database: connecting (directly, or through a transaction pooler with a direct URL
//! beside it), creating the database if missing, migrations, and what concerns the connection
//! rather than keyrelay's tables (a liveness ping, locks held across transactions, which
//! errors are an outage rather than a failure).

mod handle;
mod hosts;
mod locks;
mod settings;
pub mod url;

use std::ops::Not;
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

pub use handle::Db;
pub use locks::HeldLock;
pub use settings::{DatabaseSettings, Pooler};

use hosts::PoolSpec;

/// How long one connection attempt may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a statement waits for a free connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// Connections the direct pool keeps beside a pooler (`LISTEN`, locks, migrations).
const DIRECT_CONNECTIONS: u32 = 3;

/// One connection attempt, given up after `CONNECT_TIMEOUT` (as `PoolTimedOut`).
async fn connect_once(options: &PgConnectOptions) -> Result<sqlx::PgConnection, sqlx::Error> {
    tokio::time::timeout(CONNECT_TIMEOUT, options.connect())
        .await
        .unwrap_or(Err(sqlx::Error::PoolTimedOut))
}

/// Whether Postgres answered that the database does not exist (yet). PgBouncer passes the
/// server's message on under its own code (`08P01`), so the message counts there.
fn is_missing_database(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    match db.code().as_deref() {
        Some("3D000") => true,
        Some("08P01") => {
            db.message().starts_with("database") && db.message().ends_with("does not exist")
        }
        _ => false,
    }
}

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Where migrations, `CREATE DATABASE` and the reachability checks go: the direct URL if set,
/// else `database.url`; the first host of either.
fn admin_options(database: &DatabaseSettings) -> anyhow::Result<PgConnectOptions> {
    let url = match database.direct_target()? {
        Some(direct) => direct,
        None => database.target()?,
    };
    Ok(url.hosts[0].clone().application_name("keyrelay"))
}

/// `admin_options`, and the name of the database it names.
fn admin_database(database: &DatabaseSettings) -> anyhow::Result<(PgConnectOptions, String)> {
    let options = admin_options(database)?;
    let name = options
        .get_database()
        .context("database.url names no database")?
        .to_string();
    Ok((options, name))
}

/// The name of the database `database.url` points at.
pub fn database_name(database: &DatabaseSettings) -> anyhow::Result<String> {
    admin_database(database).map(|(_, name)| name)
}

/// A pool that connects on first use, so a server can start (and answer 503) while the
/// database is down.
pub fn lazy_pool(settings: &(impl AsRef<DatabaseSettings> + ?Sized)) -> anyhow::Result<Db> {
    let database = settings.as_ref();
    let db = Db::open(
        PoolSpec {
            url: &database.target()?,
            max_connections: database.max_connections,
            acquire_timeout: ACQUIRE_TIMEOUT,
            application_name: "keyrelay",
        },
        database.pooled(),
    );
    Ok(match database.direct_target()? {
        Some(direct) => {
            let (session, _) = hosts::open_pool(PoolSpec {
                url: &direct,
                max_connections: DIRECT_CONNECTIONS,
                acquire_timeout: ACQUIRE_TIMEOUT,
                application_name: "keyrelay-direct",
            });
            db.with_session(session)
        }
        None => db,
    })
}

/// Connects now, failing with a message that says where, what happened and what to do.
pub async fn connect(settings: &(impl AsRef<DatabaseSettings> + ?Sized)) -> anyhow::Result<Db> {
    let target = settings.as_ref().target()?;
    let first = match hosts::first_writable(&target.hosts).await {
        Ok(first) => first,
        Err(why) => {
            let options = &target.hosts[0];
            anyhow::bail!(match target.hosts.len() == 1 {
                true => match connect_once(options).await {
                    Err(e) => explain(&e, options),
                    Ok(_) => format!(
                        "cannot use the database at {}: {}",
                        target.shown,
                        why.join("; ")
                    ),
                },
                false => format!(
                    "no host of database.url accepts writes: {}; check DATABASE_URL's hosts",
                    why.join("; ")
                ),
            });
        }
    };
    let db = lazy_pool(settings)?;
    db.prefer_host(first);
    Ok(db)
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

/// Creates the database named in the URL if it does not exist.
pub async fn create_database_if_missing(
    settings: &(impl AsRef<DatabaseSettings> + ?Sized),
) -> anyhow::Result<()> {
    let (options, name) = admin_database(settings.as_ref())?;
    // The server's `postgres` database is asked first, so a missing database is never
    // connected to: PgBouncer refuses a database for a while after a login to it failed.
    let mut admin = match connect_once(&options.clone().database("postgres")).await {
        Ok(admin) => admin,
        // No access to `postgres` (usual on managed servers): the database must exist.
        Err(_) => {
            return match connect_once(&options).await {
                Ok(conn) => {
                    let _ = conn.close().await;
                    Ok(())
                }
                Err(e) if is_missing_database(&e) => anyhow::bail!(
                    "{}; create database {name} yourself, or point keyrelay at a database that exists",
                    explain(&e, &options)
                ),
                Err(e) => anyhow::bail!(explain(&e, &options)),
            };
        }
    };
    // Simple queries: no prepared statement, so they are safe through a pooler too.
    let exists = sqlx::raw_sql(&format!(
        "SELECT 1 FROM pg_database WHERE datname = '{}'",
        name.replace('\'', "''")
    ))
    .fetch_all(&mut admin)
    .await
    .with_context(|| format!("cannot check whether database {name} exists"))?
    .is_empty()
    .not();
    if exists {
        let _ = admin.close().await;
        return Ok(());
    }
    let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
    match sqlx::raw_sql(&sql).execute(&mut admin).await {
        Ok(_) => tracing::info!(database = %name, "created database"),
        // Another process created it first (`23505` when both got past the check at once).
        Err(sqlx::Error::Database(e)) if matches!(e.code().as_deref(), Some("42P04" | "23505")) => {
        }
        Err(e) => return Err(e).with_context(|| format!("cannot create database {name}")),
    }
    let _ = admin.close().await;
    Ok(())
}

/// Key of the transaction lock that serialises migrations on a pooler without a direct URL.
const MIGRATE_LOCK: i64 = 0x6b72_6d69_6772_6174;

/// Creates the database if needed and applies every pending migration: on the direct
/// connection when there is one; else, on a pooler, inside one transaction that holds a
/// transaction-scoped lock (sqlx's migrator takes a session lock, which a pooler would leak).
pub async fn migrate(settings: &(impl AsRef<DatabaseSettings> + ?Sized)) -> anyhow::Result<Db> {
    create_database_if_missing(settings).await?;
    let db = connect(settings).await?;
    let applied = match db.session() {
        Some(session) => MIGRATOR.run(session).await,
        None => {
            let mut migrator = sqlx::migrate!("./migrations");
            migrator.set_locking(false);
            let mut tx = db.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(MIGRATE_LOCK)
                .execute(&mut *tx)
                .await?;
            match migrator.run(&mut *tx).await {
                Ok(()) => tx.commit().await.map_err(Into::into),
                Err(e) => Err(e),
            }
        }
    };
    applied.context("applying database migrations failed")?;
    Ok(db)
}

/// Points `settings` at a new, empty database `<prefix>_<time>_<random>` on the same server
/// (the direct URL too), migrated; for the demo and the benchmark. Drop it with
/// `drop_database`.
pub async fn create_scratch_database(
    database: &mut DatabaseSettings,
    prefix: &str,
) -> anyhow::Result<Db> {
    let name = format!(
        "{prefix}_{}_{:06x}",
        chrono::Utc::now().format("%Y%m%d%H%M%S"),
        rand::random::<u32>() & 0xff_ffff
    );
    database.url = url::with_database(database.url.expose_secret(), &name).into();
    if let Some(direct) = &database.direct_url {
        database.direct_url = Some(url::with_database(direct.expose_secret(), &name).into());
    }
    migrate(database).await
}

/// Drops the database `settings` points at (closing other sessions first).
pub async fn drop_database(
    settings: &(impl AsRef<DatabaseSettings> + ?Sized),
) -> anyhow::Result<()> {
    let (options, name) = admin_database(settings.as_ref())?;
    let mut admin = connect_once(&options.database("postgres")).await?;
    sqlx::raw_sql(&format!(
        "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
        name.replace('"', "\"\"")
    ))
    .execute(&mut admin)
    .await?;
    let _ = admin.close().await;
    Ok(())
}

/// Waits until a server of `database.url` answers and accepts writes, retrying with backoff
/// and logging each wait, so a `serve` started during an outage (or a failover) comes up when
/// Postgres does instead of crash-looping. Returns early with an error if `stop` resolves
/// first, or at once for a problem waiting cannot fix (a wrong password, a refused role).
pub async fn wait_until_reachable(
    settings: &(impl AsRef<DatabaseSettings> + ?Sized),
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let target = settings.as_ref().target()?;
    let options = admin_options(settings.as_ref())?;
    let backoff = crate::backoff::RetryPolicy {
        base: Duration::from_secs(1),
        max: Duration::from_secs(30),
    };
    let mut stop = std::pin::pin!(stop);
    for attempt in 1.. {
        let why = match hosts::first_writable(&target.hosts).await {
            Ok(_) => return Ok(()),
            Err(why) => why.join("; "),
        };
        let why = match connect_once(&options).await {
            // The server answers; `migrate` creates the database.
            Err(e) if is_missing_database(&e) => return Ok(()),
            Err(e) if !is_transient(&e) => anyhow::bail!(explain(&e, &options)),
            Err(e) if target.hosts.len() == 1 => explain(&e, &options),
            _ => format!("cannot use the database at {}: {why}", target.shown),
        };
        let wait = backoff.ceiling(attempt);
        tracing::warn!("{why}; retrying in {} s", wait.as_secs());
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = &mut stop => anyhow::bail!("stopped while waiting for the database"),
        }
    }
    unreachable!("the loop only ends by returning")
}

/// Whether `e` is an outage rather than a failure, so waiting and trying again may fix it:
/// the server is unreachable, shutting down or starting (class 08, `57P01`-`57P03`), it is
/// read-only (`25006`: a standby, or a primary being demoted), too busy (`53300`), or the
/// transaction lost a race it can simply run again (`40001`, `40P01`).
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08")
                || matches!(
                    code.as_ref(),
                    "57P01" | "57P02" | "57P03" | "25006" | "53300" | "40001" | "40P01"
                )
        }),
        _ => false,
    }
}

/// Whether the server refused a write because it is read-only (`25006`).
pub fn is_read_only(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("25006"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database_error(code: &str) -> sqlx::Error {
        #[derive(Debug)]
        struct Coded(String);
        impl std::fmt::Display for Coded {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "error {}", self.0)
            }
        }
        impl std::error::Error for Coded {}
        impl sqlx::error::DatabaseError for Coded {
            fn message(&self) -> &str {
                "database error"
            }
            fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
                Some(self.0.as_str().into())
            }
            fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
                self
            }
            fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
                self
            }
            fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
                self
            }
            fn kind(&self) -> sqlx::error::ErrorKind {
                sqlx::error::ErrorKind::Other
            }
        }
        sqlx::Error::Database(Box::new(Coded(code.into())))
    }

    #[test]
    fn an_outage_or_a_failover_is_transient_and_a_mistake_is_not() {
        for code in [
            "08006", "08001", "57P01", "57P02", "57P03", "25006", "40001", "40P01",
        ] {
            assert!(is_transient(&database_error(code)), "{code}");
        }
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(is_transient(&sqlx::Error::Io(
            std::io::ErrorKind::ConnectionReset.into()
        )));
        for code in ["23505", "42P01", "22P02", "28P01"] {
            assert!(!is_transient(&database_error(code)), "{code}");
        }
        assert!(is_read_only(&database_error("25006")));
        assert!(!is_read_only(&database_error("57P01")));
    }
}
