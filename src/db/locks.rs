//! Locks held across transactions (one reconciler at a time): a session advisory lock where a
//! session exists (a direct connection), a lease row behind a transaction pooler without one.

use std::time::Duration;

use super::Db;

/// A lock this process holds until `release` (or, for a lease, until it expires).
pub enum HeldLock {
    Session {
        conn: sqlx::pool::PoolConnection<sqlx::Postgres>,
        key: i64,
    },
    Lease {
        db: Db,
        name: &'static str,
        holder: i64,
    },
}

impl HeldLock {
    /// Takes lock `name` (`key` as an advisory lock) if nobody holds it. A lease lasts `ttl`.
    pub async fn try_take(
        db: &Db,
        key: i64,
        name: &'static str,
        ttl: Duration,
    ) -> Result<Option<HeldLock>, sqlx::Error> {
        if let Some(session) = db.session() {
            let mut conn = session.acquire().await?;
            let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(key)
                .fetch_one(&mut *conn)
                .await?;
            return Ok(taken.then_some(HeldLock::Session { conn, key }));
        }
        let holder: i64 = rand::random();
        let taken = sqlx::query_scalar::<_, i64>(
            r#"
            INSERT INTO leases (name, holder, expires_at)
            VALUES ($1, $2, now() + make_interval(secs => $3))
            ON CONFLICT (name) DO UPDATE
                SET holder = excluded.holder, expires_at = excluded.expires_at
                WHERE leases.expires_at < now()
            RETURNING holder
            "#,
        )
        .bind(name)
        .bind(holder)
        .bind(ttl.as_secs_f64())
        .fetch_optional(db)
        .await?;
        Ok(taken.map(|holder| HeldLock::Lease {
            db: db.clone(),
            name,
            holder,
        }))
    }

    /// Releases the lock (a lost connection releases a session lock too).
    pub async fn release(self) {
        match self {
            HeldLock::Session { mut conn, key } => {
                let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                    .bind(key)
                    .execute(&mut *conn)
                    .await;
            }
            HeldLock::Lease { db, name, holder } => {
                let _ = sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
                    .bind(name)
                    .bind(holder)
                    .execute(&db)
                    .await;
            }
        }
    }
}
