//! The reconciler: lists Pending grants of every pooled entitlement at Dodo and queues any that
//! keyrelay has never seen (a webhook lost beyond Dodo's retries). It runs in `serve` every
//! `reconciler.interval_secs` and on `keyrelay reconcile`; a Postgres advisory lock lets only one
//! process act at a time. The maintenance pass also prunes old events and finished jobs.

use std::time::Duration;

use crate::db::Db;
use serde::Serialize;

pub use crate::store::prune::Pruned;
use tokio_util::sync::CancellationToken;

use crate::dodo::{DodoClient, GrantStatus};
use crate::domain::{CustomerId, GrantId, PaymentId, Serve};
use crate::intake::event::GrantFacts;
use crate::store::{self, enqueue, pools};

/// The lock held while reconciling: a session advisory lock with this key, or (behind a
/// transaction pooler without a direct connection) a lease row of this name.
const RECONCILE_LOCK: (i64, &str) = (0x6b72_7265_636f_6e31, "reconciler");
/// A reconciler that died holding the lease row stops blocking others after this long.
const RECONCILE_LEASE: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ReconcileReport {
    pub entitlements: usize,
    pub pending_seen: usize,
    pub enqueued: usize,
}

/// Reconciles once. `Ok(None)`: another process holds the lock.
pub async fn reconcile(
    db: &Db,
    dodo: &DodoClient,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<ReconcileReport>> {
    let Some(lock) =
        crate::db::HeldLock::try_take(db, RECONCILE_LOCK.0, RECONCILE_LOCK.1, RECONCILE_LEASE)
            .await?
    else {
        return Ok(None);
    };
    let result = reconcile_locked(db, dodo, shutdown).await;
    lock.release().await;
    result.map(Some)
}

async fn reconcile_locked(
    db: &Db,
    dodo: &DodoClient,
    shutdown: &CancellationToken,
) -> anyhow::Result<ReconcileReport> {
    let entitlements = pools::pooled_entitlements(db).await?;
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
            let pending: Vec<(GrantId, CustomerId, Option<PaymentId>)> = items
                .iter()
                .filter_map(|g| match GrantFacts::from_grant(g) {
                    Ok(facts) => Some(facts),
                    Err(e) => {
                        let shown: String = g.id.chars().take(64).collect();
                        tracing::warn!(grant_id = %shown.escape_debug(), error = %e, "skipping a grant Dodo listed");
                        None
                    }
                })
                .filter(|g| g.is_pending_without_key() && g.serve != Serve::No)
                .map(|g| (g.id, g.customer_id, g.payment_id))
                .collect();
            report.pending_seen += pending.len();
            let enqueued = enqueue::enqueue_grants(
                db,
                entitlement,
                &pending,
                "reconciler",
                "found by polling Dodo",
            )
            .await?;
            if !enqueued.is_empty() {
                tracing::warn!(entitlement = %entitlement, grants = ?enqueued, "queued grants whose webhook never arrived");
                store::notify_jobs_ready(db).await?;
                report.enqueued += enqueued.len();
            }
        }
    }
    metrics::counter!("keyrelay_reconciled_grants_total").increment(report.enqueued as u64);
    Ok(report)
}

/// Reconciles and prunes every `interval` until shutdown.
pub async fn run_maintenance(
    db: Db,
    dodo: DodoClient,
    interval: Duration,
    retention: Duration,
    shutdown: CancellationToken,
) {
    loop {
        match reconcile(&db, &dodo, &shutdown).await {
            Ok(Some(report)) => {
                tracing::info!(
                    "reconciled with Dodo: {} entitlement(s) checked, {} pending grant(s) seen, {} queued that keyrelay had never seen",
                    report.entitlements,
                    report.pending_seen,
                    report.enqueued
                );
                match prune(&db, retention).await {
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

/// Deletes events and finished jobs older than `older_than`, in small batches; keys, pools and
/// the audit trail are kept.
pub async fn prune(db: &Db, older_than: Duration) -> Result<Pruned, sqlx::Error> {
    let age = chrono::TimeDelta::from_std(older_than).unwrap_or(chrono::TimeDelta::MAX);
    let cutoff = chrono::Utc::now()
        .checked_sub_signed(age)
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
    // The dashboard charts a day; samples are kept a week.
    store::history::prune_samples(db, chrono::Utc::now() - chrono::TimeDelta::days(7)).await?;
    store::prune::prune(db, cutoff).await
}
