//! The outbox: what keyrelay owes a vendor or the shop. Notices are written in the transaction
//! that makes the change they tell of (`KEY_NOTICES` inside `change_keys`, `failure_notices`
//! inside the statements that fail jobs, the low-stock flag), so a change is never made without its notice nor noticed without being
//! made. The deliverer (`ops::outbox`) claims due notices, sends each, and records what the
//! receiver answered.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::db::Db;
use crate::domain::GrantId;

/// Who is owed notices, as this process's settings say: the shop (`notify.url` is set), and
/// the key sources (by name) that have a `revoke_url`.
#[derive(Debug, Clone, Default)]
pub struct Recipients {
    pub shop: bool,
    pub vendors: Vec<String>,
}

/// The target name of the shop's endpoint.
pub const SHOP: &str = "shop";
/// The target name of a key source's `revoke_url` is this prefix and the source's name.
pub const SOURCE_PREFIX: &str = "source:";

/// The notices of the keys `changed` moved (a CTE of `change_keys` with the key's `id`,
/// `pool_id`, `grant_id`, `action` and `reason`), with `$7` true when the shop is owed and
/// `$8` the key sources owed: the shop hears of every delivery, suspension, reinstatement and
/// revocation; a vendor of the last three for the keys it issued.
pub(super) const KEY_NOTICES: &str = r#"
    INSERT INTO outbox (target, event_type, grant_id, key_id, data)
    SELECT target.name,
           'license_key.' || CASE changed.action WHEN 'deliver' THEN 'delivered'
                                                 WHEN 'suspend' THEN 'suspended'
                                                 WHEN 'reinstate' THEN 'reinstated'
                                                 ELSE 'revoked' END,
           changed.grant_id, changed.id,
           jsonb_build_object('grant_id', changed.grant_id, 'customer_id', jobs.customer_id,
                              'entitlement_id', pools.entitlement_id, 'pool', pools.name,
                              'reason', changed.reason)
    FROM changed
    JOIN pools ON pools.id = changed.pool_id
    LEFT JOIN jobs ON jobs.grant_id = changed.grant_id
    CROSS JOIN LATERAL (
        SELECT 'shop' AS name
        WHERE $7 AND changed.action IN ('deliver', 'suspend', 'reinstate', 'revoke')
        UNION ALL
        SELECT 'source:' || pools.endpoint
        WHERE pools.endpoint = ANY($8) AND changed.action IN ('suspend', 'reinstate', 'revoke')
    ) AS target
"#;

/// What a statement that may fail jobs returns of each job it changed, for `failure_notices`.
pub(super) const ENDED: &str = "jobs.grant_id, jobs.customer_id, jobs.entitlement_id, \
     jobs.payment_id, jobs.state, jobs.last_error";

/// A CTE body that tells the shop of the jobs in the CTE `ended` (which returns `ENDED`) that
/// are now failed, when the SQL boolean `shop` holds.
pub(super) fn failure_notices(shop: &str) -> String {
    format!(
        "INSERT INTO outbox (target, event_type, grant_id, data) \
         SELECT 'shop', 'grant.failed', grant_id, \
                jsonb_build_object('grant_id', grant_id, 'customer_id', customer_id, \
                                   'entitlement_id', entitlement_id, 'payment_id', payment_id, \
                                   'error', last_error) \
         FROM ended WHERE ended.state = 'failed' AND {shop}"
    )
}

/// A notice as the deliverer sends it and operators see it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Notice {
    pub id: i64,
    pub target: String,
    pub event_type: String,
    pub grant_id: Option<String>,
    #[serde(skip)]
    pub key_id: Option<i64>,
    pub data: serde_json::Value,
    pub state: String,
    pub attempts: i32,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub owed_since: DateTime<Utc>,
    pub run_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    /// The key's sealed value, when the deliverer claims a notice about a key.
    #[serde(skip)]
    pub key_sealed: Option<Vec<u8>>,
}

impl Notice {
    /// `source:NAME`'s NAME, for a notice to a key source.
    pub fn vendor(&self) -> Option<&str> {
        self.target.strip_prefix(SOURCE_PREFIX)
    }
}

const NOTICE_COLUMNS: &str = "id, target, event_type, grant_id, key_id, data, state::text AS state, \
     attempts, last_status, last_error, created_at, owed_since, run_at, sent_at";

/// Claims up to `limit` due notices, oldest first: each is pushed `lease_secs` ahead (so no
/// other deliverer sends it meanwhile) and its attempt counted. A notice about a key waits
/// while an older one about the same key to the same receiver is not sent (pending or
/// parked), so a vendor never hears `reinstate` before the `suspend` it undoes.
pub async fn claim_due(db: &Db, limit: i64, lease_secs: f64) -> Result<Vec<Notice>, sqlx::Error> {
    sqlx::query_as(&format!(
        r#"
        UPDATE outbox SET run_at = now() + make_interval(secs => $2), attempts = attempts + 1
        WHERE id IN (SELECT id FROM outbox
                     WHERE state = 'pending' AND run_at <= now()
                       AND NOT EXISTS (SELECT 1 FROM outbox older
                                       WHERE older.key_id = outbox.key_id
                                         AND older.target = outbox.target
                                         AND older.id < outbox.id AND older.state <> 'sent')
                     ORDER BY run_at LIMIT $1 FOR UPDATE SKIP LOCKED)
        RETURNING {NOTICE_COLUMNS},
                  (SELECT value_sealed FROM keys WHERE keys.id = outbox.key_id) AS key_sealed
        "#
    ))
    .bind(limit)
    .bind(lease_secs)
    .fetch_all(db)
    .await
}

/// What a receiver's answer means for a notice.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// 2xx: done.
    Sent { status: i32 },
    /// Try again at `at` (5xx, 429, no answer).
    Later {
        at: DateTime<Utc>,
        status: Option<i32>,
        error: String,
    },
    /// Parked for a human (a 4xx, a redirect, or too long without success).
    Park { status: Option<i32>, error: String },
}

/// Records how sending notice `id` went (only while it is still pending).
pub async fn record_delivery(db: &Db, id: i64, delivery: &Delivery) -> Result<(), sqlx::Error> {
    let (state, at, status, error) = match delivery {
        Delivery::Sent { status } => ("sent", None, Some(*status), None),
        Delivery::Later { at, status, error } => ("pending", Some(*at), *status, Some(error)),
        Delivery::Park { status, error } => ("failed", None, *status, Some(error)),
    };
    sqlx::query(
        r#"
        UPDATE outbox SET state = $2::notice_state, run_at = coalesce($3, run_at),
                          last_status = $4, last_error = $5,
                          sent_at = CASE WHEN $2 = 'sent' THEN now() END
        WHERE id = $1 AND state = 'pending'
        "#,
    )
    .bind(id)
    .bind(state)
    .bind(at)
    .bind(status)
    .bind(error)
    .execute(db)
    .await?;
    Ok(())
}

/// Notices, newest first, in `state` if given.
pub async fn list(db: &Db, state: Option<&str>, limit: i64) -> Result<Vec<Notice>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {NOTICE_COLUMNS}, NULL::bytea AS key_sealed FROM outbox WHERE ($1::notice_state IS NULL OR state = $1::notice_state) \
         ORDER BY id DESC LIMIT $2"
    ))
    .bind(state)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// The notices about one grant, oldest first.
pub async fn for_grant(db: &Db, grant_id: &GrantId) -> Result<Vec<Notice>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {NOTICE_COLUMNS}, NULL::bytea AS key_sealed FROM outbox WHERE grant_id = $1 ORDER BY id"
    ))
    .bind(grant_id)
    .fetch_all(db)
    .await
}

pub async fn get(db: &Db, id: i64) -> Result<Option<Notice>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {NOTICE_COLUMNS}, NULL::bytea AS key_sealed FROM outbox WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// Makes failed notices due again now, with a fresh attempt count; returns the ids it changed
/// (a notice already sent, or pending, is left alone).
pub async fn retry(db: &Db, ids: &[i64]) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE outbox SET state = 'pending', run_at = now(), attempts = 0, owed_since = now() \
         WHERE id = ANY($1) AND state = 'failed' RETURNING id",
    )
    .bind(ids)
    .fetch_all(db)
    .await
}

/// Pending and failed notices, and the age of the oldest pending one.
#[derive(Debug, Clone, Copy, Default, Serialize, sqlx::FromRow)]
pub struct Backlog {
    pub pending: i64,
    pub failed: i64,
    pub oldest_pending_secs: f64,
}

pub async fn backlog(db: &Db) -> Result<Backlog, sqlx::Error> {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM outbox WHERE state = 'pending') AS pending, \
                (SELECT count(*) FROM outbox WHERE state = 'failed') AS failed, \
                coalesce((SELECT extract(epoch FROM now() - min(owed_since))::float8 \
                          FROM outbox WHERE state = 'pending'), 0) AS oldest_pending_secs",
    )
    .fetch_one(db)
    .await
}
