//! Bulk loading for the benchmark: a week of finished history written in a few set-based
//! statements, so `keyrelay bench lists` can time the dashboard over a million jobs in
//! seconds. The rows are stand-ins (sealed and hashed values that never open) and are only
//! ever written to a scratch database.

use crate::db::Db;

/// Fills the tables with `n` finished jobs of the pool `pool_name` over the last 7 days: one in 1,000 failed, one in
/// 5,000 cancelled, the rest delivered with a key, one attempt and one event each.
pub async fn seed_finished_jobs(
    db: &Db,
    n: i64,
    entitlement_id: &str,
    pool_name: &str,
) -> Result<(), sqlx::Error> {
    // Each statement with the text it takes as $2, if any ($1, where it stands, is `n`).
    let statements = [
        // Keys: sealed and hashed stand-ins (never opened), with a searchable tail.
        (
            "INSERT INTO keys (pool_id, value_sealed, sealed_with, state, grant_id, batch_id) \
         SELECT (SELECT id FROM pools WHERE name = $2), decode(md5('s' || i), 'hex'), 1, \
                'delivered', 'grant_hist_' || i, 'bench_history' \
         FROM generate_series(1, $1) i WHERE i % 1000 <> 0 AND i % 5000 <> 0",
            Some(pool_name),
        ),
        (
            "INSERT INTO key_values (value_hash, key_id, tail) \
         SELECT decode(md5('h' || i), 'hex'), keys.id, lpad(to_hex(i % 65536), 4, '0') \
         FROM keys CROSS JOIN LATERAL (SELECT substr(keys.grant_id, 12)::bigint AS i) n \
         WHERE keys.batch_id = 'bench_history'",
            None,
        ),
        (
            "INSERT INTO jobs (grant_id, entitlement_id, customer_id, payment_id, state, attempts, \
                           created_at, updated_at, finished_at, source, last_error, last_http_status, key_id) \
         SELECT 'grant_hist_' || i, $2, 'cus_hist_' || (i % 250000), 'pay_hist_' || i, \
                CASE WHEN i % 5000 = 0 THEN 'cancelled' WHEN i % 1000 = 0 THEN 'failed' ELSE 'delivered' END::job_state, \
                1, t, t, t, 'bench_history', \
                CASE WHEN i % 1000 = 0 THEN 'Dodo answered 422' END, CASE WHEN i % 1000 = 0 THEN 422 ELSE 200 END, keys.id \
         FROM generate_series(1, $1) i CROSS JOIN LATERAL (SELECT now() - make_interval(secs => i * 604800.0 / $1) AS t) at \
         LEFT JOIN keys ON keys.grant_id = 'grant_hist_' || i",
            Some(entitlement_id),
        ),
        (
            "INSERT INTO attempts (grant_id, started_at, duration_ms, http_status, outcome) \
         SELECT grant_id, created_at, 40, last_http_status, \
                CASE WHEN state = 'delivered' THEN 'delivered' ELSE 'permanent_error' END FROM jobs",
            None,
        ),
        (
            "INSERT INTO events (webhook_id, event_type, grant_id, received_at, payload) \
         SELECT 'msg_' || grant_id, 'entitlement_grant.created', grant_id, created_at, \
                jsonb_build_object('type', 'entitlement_grant.created', 'data', jsonb_build_object('id', grant_id)) \
         FROM jobs",
            None,
        ),
    ];
    for (sql, text) in statements {
        let mut query = sqlx::query(sql);
        if sql.contains("$1") {
            query = query.bind(n);
        }
        if let Some(text) = text {
            query = query.bind(text);
        }
        query.execute(db).await?;
    }
    // Dodo's answers per minute, as the statement that records attempts keeps them.
    sqlx::query(
        "INSERT INTO answer_tallies (minute, series, n) \
         SELECT tally_minute(started_at), answer_class(http_status), count(*) FROM attempts \
         WHERE outcome NOT IN ('internal_error', 'no_key') GROUP BY 1, 2",
    )
    .execute(db)
    .await?;
    // The minutes rolled up before the seed counted no webhooks: rolled up again below.
    sqlx::query("DELETE FROM webhook_minutes")
        .execute(db)
        .await?;
    // Each seeded row appended to a tally: folded now, and the space they took given back,
    // as a keyrelay that had run for weeks (compacting every few seconds) would hold them.
    super::stock::compact_tallies(db).await?;
    for table in ["job_tallies", "key_tallies"] {
        db.execute_outside_transaction(&format!("VACUUM FULL {table}"))
            .await?;
    }
    super::prune::vacuum_analyze(db).await?;
    for table in ["attempts", "events"] {
        db.execute_outside_transaction(&format!("VACUUM ANALYZE {table}"))
            .await?;
    }
    Ok(())
}
