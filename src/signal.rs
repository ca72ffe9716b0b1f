//! "A job is ready": an in-process wake-up for this process's workers, plus a Postgres
//! NOTIFY for workers in other processes. NOTIFYs are sent outside the intake transaction and
//! coalesced, so a burst of webhooks costs a few notifications, not one per commit.

use std::sync::Arc;
use std::time::Duration;

use crate::db::Db;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::store::{JOBS_CHANNEL, notify_jobs_ready};

#[derive(Clone, Default)]
pub struct JobSignal {
    local: Arc<Notify>,
    outbound: Arc<Notify>,
}

impl JobSignal {
    pub fn new() -> JobSignal {
        JobSignal::default()
    }

    /// A job was committed here: wake local workers and tell other processes.
    pub fn job_ready(&self) {
        self.local.notify_one();
        self.outbound.notify_one();
    }

    /// Wake this process's workers only (a notification came from elsewhere).
    pub fn wake_local(&self) {
        self.local.notify_one();
    }

    /// Resolves at the next wake-up (at once if one came while nobody waited).
    pub async fn woken(&self) {
        self.local.notified().await;
    }

    /// Sends one NOTIFY per burst of `job_ready` calls until shutdown.
    pub fn spawn_notifier(
        &self,
        db: Db,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let outbound = self.outbound.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = outbound.notified() => {}
                    _ = shutdown.cancelled() => return,
                }
                if let Err(e) = notify_jobs_ready(&db).await {
                    tracing::debug!(error = %e, "NOTIFY failed; other processes will find the job by polling");
                }
            }
        })
    }

    /// Listens for other processes' notifications and wakes local workers, reconnecting after
    /// errors (polling covers the gap). Behind a transaction pooler without a direct
    /// connection there is no session to listen on: workers poll.
    pub fn spawn_listener(
        &self,
        db: Db,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let signal = self.clone();
        let Some(pool) = db.session().cloned() else {
            return tokio::spawn(async {});
        };
        tokio::spawn(async move {
            while !shutdown.is_cancelled() {
                let mut listener = match PgListener::connect_with(&pool).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::debug!(error = %e, "LISTEN connection failed; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                            _ = shutdown.cancelled() => return,
                        }
                    }
                };
                if let Err(e) = listener.listen(JOBS_CHANNEL).await {
                    tracing::debug!(error = %e, "LISTEN failed; retrying");
                    continue;
                }
                // After (re)connecting, a notification may have been missed.
                signal.wake_local();
                loop {
                    tokio::select! {
                        message = listener.try_recv() => match message {
                            Ok(Some(_)) => signal.wake_local(),
                            Ok(None) => { signal.wake_local(); }
                            Err(e) => {
                                tracing::debug!(error = %e, "LISTEN connection lost; reconnecting");
                                break;
                            }
                        },
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
        })
    }
}
