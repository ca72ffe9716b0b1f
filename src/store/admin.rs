//! Admin sessions signed out on the server, so a copied cookie dies with the sign-out.

use crate::db::Db;
use chrono::{DateTime, Utc};

/// Records that the session with this MAC was signed out (and forgets sessions that have
/// expired anyway).
pub async fn sign_out(
    db: &Db,
    session_mac: &str,
    expires_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        r#"
        WITH expired AS (DELETE FROM admin_signed_out WHERE expires_at < now())
        INSERT INTO admin_signed_out (session_mac, expires_at) VALUES ($1, $2)
        ON CONFLICT (session_mac) DO NOTHING
        "#,
    )
    .bind(session_mac)
    .bind(expires_at)
    .execute(db)
    .await?;
    Ok(())
}

/// Whether the session with this MAC was signed out.
pub async fn is_signed_out(db: &Db, session_mac: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM admin_signed_out WHERE session_mac = $1)")
        .bind(session_mac)
        .fetch_one(db)
        .await
}
