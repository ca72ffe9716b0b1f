//! The reconciler: lists Pending grants of every pooled entitlement at Dodo and queues any that
//! keyrelay has never seen (a webhook lost beyond Dodo's retries). It runs in `serve` every
//! `reconciler.interval_secs` and on `keyrelay reconcile`; a Postgres advisory lock lets only one
//! process act at a time. The maintenance pass also prunes old events and finished jobs.

use std::time::Duration;

use serde::Serialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::dodo::{DodoClient, GrantStatus};
use crate::fulfillment::storage::notify_jobs_ready;
use crate::intake::event::{JobDecision, ownership};

/// Session advisory lock held while reconciling.
const RECONCILE_LOCK: i64 = 0x6b72_7265_636f_6e31;

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ReconcileReport {
    pub entitlements: usize,
    pub pending_seen: usize,
    pub enqueued: usize,
}

/// Reconciles once. `Ok(None)`: another process holds the lock.
pub async fn reconcile(
    pool: &PgPool,
    dodo: &DodoClient,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<ReconcileReport>> {
    let mut conn = pool.acquire().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(RECONCILE_LOCK)
        .fetch_one(&mut *conn)
        .await?;
    if !locked {
        return Ok(None);
    }
    let result = reconcile_locked(pool, dodo, shutdown).await;
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(RECONCILE_LOCK)
        .execute(&mut *conn)
        .await;
    result.map(Some)
}

async fn reconcile_locked(
    pool: &PgPool,
    dodo: &DodoClient,
    shutdown: &CancellationToken,
) -> anyhow::Result<ReconcileReport> {
    let entitlements: Vec<String> =
        sqlx::query_scalar("SELECT entitlement_id FROM pools ORDER BY name")
            .fetch_all(pool)
            .await?;
    let mut report = ReconcileReport {
        entitlements: entitlements.len(),
        ..Default::default()
    };
    for entitlement in &entitlements {
        for page in 0.. {
            if shutdown.is_cancelled() {
                return Ok(report);
            }
            let items = dodo
                .list_grants(entitlement, None, Some(&GrantStatus::Pending), page)
                .await
                .map_err(|e| anyhow::anyhow!("listing pending grants of {entitlement}: {e}"))?;
            if items.is_empty() {
                break;
            }
            // The list endpoint ignores integration filters: keep pending license-key grants.
            let pending: Vec<_> = items
                .iter()
                .filter(|g| g.status == GrantStatus::Pending && g.license_key.is_none())
                .filter(|g| ownership(g) != JobDecision::Skip)
                .collect();
            report.pending_seen += pending.len();
            let ids: Vec<&str> = pending.iter().map(|g| g.id.as_str()).collect();
            let customers: Vec<&str> = pending.iter().map(|g| g.customer_id.as_str()).collect();
            let enqueued: Vec<String> = sqlx::query_scalar(
                r#"
                WITH new AS (
                    INSERT INTO jobs (grant_id, entitlement_id, customer_id, source)
                    SELECT g, $3, c, 'reconciler' FROM unnest($1::text[], $2::text[]) AS t(g, c)
                    ON CONFLICT (grant_id) DO NOTHING
                    RETURNING grant_id
                ), audited AS (
                    INSERT INTO audit_log (actor, action, grant_id, detail)
                    SELECT 'worker', 'enqueue', grant_id, 'found by polling Dodo' FROM new
                )
                SELECT grant_id FROM new
                "#,
            )
            .bind(&ids)
            .bind(&customers)
            .bind(entitlement)
            .fetch_all(pool)
            .await?;
            if !enqueued.is_empty() {
                tracing::warn!(entitlement = %entitlement, grants = ?enqueued, "queued grants whose webhook never arrived");
                notify_jobs_ready(pool).await?;
                report.enqueued += enqueued.len();
            }
        }
    }
    metrics::counter!("keyrelay_reconciled_grants_total").increment(report.enqueued as u64);
    Ok(report)
}

/// Reconciles and prunes every `interval` until shutdown.
pub async fn run_maintenance(
    pool: PgPool,
    dodo: DodoClient,
    interval: Duration,
    retention: Duration,
    shutdown: CancellationToken,
) {
    loop {
        match reconcile(&pool, &dodo, &shutdown).await {
            Ok(Some(report)) => {
                tracing::info!(?report, "reconciled with Dodo");
                match crate::events::prune(&pool, retention).await {
                    Ok(p) if p.events + p.jobs > 0 => {
                        tracing::info!(events = p.events, jobs = p.jobs, "pruned old rows")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "pruning failed; will try again"),
                }
            }
            Ok(None) => tracing::debug!("another process is reconciling"),
            Err(e) => tracing::warn!(error = %e, "reconciling failed; will try again"),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
