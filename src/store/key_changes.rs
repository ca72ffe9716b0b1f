//! `change_keys`, the one statement that moves a bound key between states, and `supersede`,
//! which revokes suspended keys once a newer grant of their subscription is delivered. Every
//! change is audited, and writes the notices it owes (`outbox`) in the same statement.

use sqlx::{Postgres, Transaction};

use super::outbox::Recipients;
use crate::domain::{Actor, GrantId, KeyAction};

/// A key bound to `grant_id` moving on; `detail` goes to the audit trail, `reason` (Dodo's
/// revocation reason) to the notices.
#[derive(Debug, Clone, Copy)]
pub struct KeyChange<'a> {
    pub key_id: i64,
    pub grant_id: &'a GrantId,
    pub action: KeyAction,
    pub detail: &'a str,
    pub reason: Option<&'a str>,
}

/// Applies key changes and audits each one. Only a key still bound to the named grant changes,
/// and only from a state the action leaves (a reserved key, never accepted by Dodo, can be
/// released or rejected; a delivered one suspended; a suspended one reinstated), so a change
/// already made is not made, audited or noticed twice. A released or rejected key is also
/// unbound from its job, and a released one from its grant.
pub(super) async fn change_keys(
    tx: &mut Transaction<'_, Postgres>,
    changes: &[KeyChange<'_>],
    actor: Actor,
    to: &Recipients,
) -> Result<(), sqlx::Error> {
    let changes: Vec<&KeyChange> = changes
        .iter()
        .filter(|c| c.action != KeyAction::Keep)
        .collect();
    if changes.is_empty() {
        return Ok(());
    }
    let key_ids: Vec<i64> = changes.iter().map(|c| c.key_id).collect();
    let grant_ids: Vec<&GrantId> = changes.iter().map(|c| c.grant_id).collect();
    let actions: Vec<&str> = changes.iter().map(|c| c.action.as_str()).collect();
    let details: Vec<&str> = changes.iter().map(|c| c.detail).collect();
    let reasons: Vec<Option<&str>> = changes.iter().map(|c| c.reason).collect();
    let sql = format!(
        r#"
        WITH change AS (
            SELECT * FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $6::text[])
                AS change(key_id, grant_id, action, detail, reason)
        ), changed AS (
            UPDATE keys SET state = CASE change.action
                                        WHEN 'deliver'   THEN 'delivered'::key_state
                                        WHEN 'reinstate' THEN 'delivered'::key_state
                                        WHEN 'suspend'   THEN 'suspended'::key_state
                                        WHEN 'release'   THEN 'available'::key_state
                                        WHEN 'reject'    THEN 'rejected'::key_state
                                        ELSE 'revoked'::key_state END,
                            grant_id = CASE WHEN change.action = 'release' THEN NULL
                                            ELSE keys.grant_id END,
                            revocation_seq = CASE
                                WHEN change.action IN ('suspend', 'reinstate', 'revoke')
                                THEN nextval('revocation_list_seq') ELSE keys.revocation_seq END,
                            updated_at = now()
            FROM change
            WHERE keys.id = change.key_id AND keys.grant_id = change.grant_id
              AND CASE change.action
                      WHEN 'suspend'   THEN keys.state IN ('reserved', 'delivered')
                      WHEN 'reinstate' THEN keys.state = 'suspended'
                      WHEN 'revoke'    THEN keys.state IN ('reserved', 'delivered', 'suspended')
                      ELSE keys.state = 'reserved' END
            RETURNING keys.id, keys.pool_id, change.grant_id, change.action, change.detail,
                      change.reason
        ), unbound AS (
            UPDATE jobs SET key_id = NULL, updated_at = now()
            FROM changed
            WHERE jobs.key_id = changed.id AND changed.action IN ('release', 'reject')
        ), noticed AS (
            {NOTICES}
        )
        INSERT INTO audit_log (actor, action, grant_id, key_id, detail)
        SELECT $5, action, grant_id, id, detail FROM changed
        "#,
        NOTICES = super::outbox::KEY_NOTICES,
    );
    sqlx::query(&sql)
        .bind(&key_ids)
        .bind(&grant_ids)
        .bind(&actions)
        .bind(&details)
        .bind(actor.as_str())
        .bind(&reasons)
        .bind(to.shop)
        .bind(&to.vendors)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// For grants just delivered: revokes the suspended key of every older grant of the same
/// subscription and entitlement (Dodo re-granted after `subscription_on_hold`), and cancels its
/// job. Returns how many keys it revoked.
pub async fn supersede(
    tx: &mut Transaction<'_, Postgres>,
    delivered: &[GrantId],
    actor: Actor,
    to: &Recipients,
) -> Result<usize, sqlx::Error> {
    if delivered.is_empty() {
        return Ok(0);
    }
    let superseded: Vec<(GrantId, i64, GrantId)> = sqlx::query_as(
        r#"
        WITH older AS (
            SELECT old.grant_id, old.key_id, new.grant_id AS newer
            FROM jobs new
            JOIN jobs old ON old.subscription_id = new.subscription_id
                         AND old.entitlement_id = new.entitlement_id
                         AND old.grant_id <> new.grant_id
                         AND coalesce(old.grant_created_at, old.created_at)
                             < coalesce(new.grant_created_at, new.created_at)
            JOIN keys ON keys.id = old.key_id AND keys.state = 'suspended'
            WHERE new.grant_id = ANY($1) AND new.subscription_id IS NOT NULL
              AND new.state = 'delivered'
            ORDER BY old.grant_id
            FOR UPDATE OF old
        )
        UPDATE jobs SET state = 'cancelled', finished_at = now(), updated_at = now(),
                        last_error = 'revoked: grant ' || older.newer
                                     || ' of the same subscription was delivered'
        FROM older
        WHERE jobs.grant_id = older.grant_id
        RETURNING jobs.grant_id, older.key_id, older.newer
        "#,
    )
    .bind(delivered)
    .fetch_all(&mut **tx)
    .await?;
    if superseded.is_empty() {
        return Ok(0);
    }
    let details: Vec<String> = superseded
        .iter()
        .map(|(_, _, newer)| format!("grant {newer} of the same subscription was delivered"))
        .collect();
    let changes: Vec<KeyChange> = superseded
        .iter()
        .zip(&details)
        .map(|((grant_id, key_id, _), detail)| KeyChange {
            key_id: *key_id,
            grant_id,
            action: KeyAction::Revoke,
            detail,
            reason: Some("superseded"),
        })
        .collect();
    change_keys(tx, &changes, actor, to).await?;
    Ok(superseded.len())
}
