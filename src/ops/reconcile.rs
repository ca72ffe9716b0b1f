//! The reconciler: lists Pending grants of every pooled entitlement at Dodo and queues any that
//! keyrelay has never seen (a webhook lost beyond Dodo's retries). It runs in `serve` every
//! `reconciler.interval_secs` and on `keyrelay reconcile`; a Postgres advisory lock lets only one
//! process act at a time. It also asks Dodo about grants whose key is suspended, and applies
//! what it shows (delivered again: the key is reinstated; revoked for good: revoked), so a
//! re-enable whose webhook was lost is not missed. The maintenance pass also prunes.

use std::sync::Arc;

use std::time::Duration;

use crate::db::Db;
use serde::Serialize;

pub use crate::store::prune::Pruned;
use tokio_util::sync::CancellationToken;

use crate::crypto::Vault;
use crate::dodo::{DodoClient, GrantStatus};
use crate::domain::{CustomerId, GrantId, PaymentId, Serve};
use crate::intake::event::GrantFacts;
use crate::intake::record;
use crate::store::{self, Recipients, enqueue, pools, read};

/// The lock held while reconciling: a session advisory lock with this key, or (behind a
/// transaction pooler without a direct connection) a lease row of this name.
const RECONCILE_LOCK: (i64, &str) = (0x6b72_7265_636f_6e31, "reconciler");
/// A reconciler that died holding the lease row stops blocking others after this long.
const RECONCILE_LEASE: Duration = Duration::from_secs(600);

/// Suspended grants asked about per pass (each costs at least one call from the budget).
const SUSPENDED_PER_PASS: i64 = 100;

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ReconcileReport {
    pub entitlements: usize,
    pub pending_seen: usize,
    pub enqueued: usize,
    /// Suspended grants asked about, and how many of them changed.
    pub suspended_checked: usize,
    pub suspended_changed: usize,
}

/// What settling suspended keys needs: the vault (to compare the key Dodo holds with ours)
/// and who is owed notices of what changes.
#[derive(Clone)]
pub struct Settling {
    pub vault: Arc<Vault>,
    pub to: Recipients,
}

/// Reconciles once. `Ok(None)`: another process holds the lock.
/// Without `settling`, suspended grants are not asked about.
pub async fn reconcile(
    db: &Db,
    dodo: &DodoClient,
    settling: Option<&Settling>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<ReconcileReport>> {
    let Some(lock) =
        crate::db::HeldLock::try_take(db, RECONCILE_LOCK.0, RECONCILE_LOCK.1, RECONCILE_LEASE)
            .await?
    else {
        return Ok(None);
    };
    let mut result = reconcile_locked(db, dodo, shutdown).await;
    if let (Ok(report), Some(settling)) = (&mut result, settling) {
        let checked = check_suspended(db, dodo, settling, shutdown).await;
        (report.suspended_checked, report.suspended_changed) = checked?;
    }
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

/// Asks Dodo about grants whose key is suspended and applies what it shows; (asked, changed).
async fn check_suspended(
    db: &Db,
    dodo: &DodoClient,
    settling: &Settling,
    shutdown: &CancellationToken,
) -> anyhow::Result<(usize, usize)> {
    let suspended = read::suspended_grants(db, SUSPENDED_PER_PASS).await?;
    let mut changed = 0;
    for (grant_id, customer_id, entitlement_id) in &suspended {
        if shutdown.is_cancelled() {
            break;
        }
        let found = dodo
            .find_grant(entitlement_id, customer_id, grant_id)
            .await
            .map_err(|e| anyhow::anyhow!("looking up suspended grant {grant_id}: {e}"))?;
        let Some(facts) = found.as_ref().and_then(|g| GrantFacts::from_grant(g).ok()) else {
            continue;
        };
        if record::apply_observed(db, &settling.vault, &facts, &settling.to).await? {
            tracing::info!(%grant_id, status = ?facts.status, "a suspended grant changed at Dodo");
            changed += 1;
        }
    }
    Ok((suspended.len(), changed))
}

/// Reconciles and prunes every `interval` until shutdown.
pub async fn run_maintenance(
    db: Db,
    dodo: DodoClient,
    settling: Settling,
    interval: Duration,
    retention: Duration,
    shutdown: CancellationToken,
) {
    loop {
        match reconcile(&db, &dodo, Some(&settling), &shutdown).await {
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
