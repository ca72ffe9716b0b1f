//! Building and running keyrelay: the HTTP server (web role), the worker pool (worker role), or
//! both, sharing one database handle (`db::Db`) and one cancellation token.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use crate::db::Db;
use actix_web::dev::Server;
use anyhow::Context;
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

use crate::configuration::{Settings, parse_webhook_secrets};
use crate::dodo::{DodoClient, RateBudget};
use crate::fulfillment::{Worker, WorkerContext};
use crate::intake::{IntakeState, signature::WebhookVerifier};

mod http;

use crate::signal::JobSignal;
pub use http::metrics_handle;
use http::{METRICS_UPKEEP, drain_histograms, metrics_server, serve_until, web_server};

/// The periodic reconcile-and-prune pass of worker roles.
struct Maintenance {
    dodo: DodoClient,
    settling: crate::ops::reconcile::Settling,
    interval: Duration,
    retention: Duration,
}

/// What a `serve` process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// The webhook receiver and the workers.
    All,
    /// Only the webhook receiver, admin dashboard, shop API and metrics.
    Web,
    /// Only the workers (and the reconciler).
    Worker,
}

impl Role {
    fn web(self) -> bool {
        matches!(self, Role::All | Role::Web)
    }
    fn worker(self) -> bool {
        matches!(self, Role::All | Role::Worker)
    }
}

pub struct Application {
    port: Option<u16>,
    server: Option<Server>,
    /// `/metrics` on its own address (`http.metrics_bind`).
    metrics_port: Option<u16>,
    metrics_server: Option<Server>,
    worker: Option<Worker>,
    maintenance: Option<Maintenance>,
    /// Sends the outbox's notices (worker roles, when anyone is owed them).
    deliverer: Option<crate::ops::outbox::Deliverer>,
    /// What this worker process can make keys with (worker roles).
    source_check: Option<crate::ops::source_health::SourceCheck>,
    db: Db,
    signal: JobSignal,
    shutdown: CancellationToken,
    /// How long stopping may take before what is left is abandoned.
    stop_deadline: Duration,
}

impl Application {
    /// Checks that the settings hold what `role` needs (before waiting on anything).
    pub fn check(settings: &Settings, role: Role) -> anyhow::Result<()> {
        webhook_verifier(settings, role)?;
        // Webhooks carry keys and workers send them: both need the encryption keys.
        settings.keys.vault()?;
        if role.worker() {
            dodo_client(settings, &crate::db::lazy_pool(settings)?)?;
        }
        Ok(())
    }

    /// Checks the settings the role needs, migrates (unless disabled), binds the listener.
    pub async fn build(settings: &Settings, role: Role) -> anyhow::Result<Application> {
        // Every setting the role needs is checked before the database is touched.
        Self::check(settings, role)?;
        let verifier = webhook_verifier(settings, role)?;
        let vault = Arc::new(settings.keys.vault()?);
        let db = if settings.database.migrate_on_start {
            let db = crate::db::migrate(settings).await?;
            crate::ops::sealing::seal_plaintext(&db, Some(&vault)).await?;
            db
        } else {
            crate::db::lazy_pool(settings)?
        };
        let dodo = match role.worker() {
            true => Some(dodo_client(settings, &db)?),
            false => None,
        };
        let signal = JobSignal::new();
        let (server, address) = match verifier {
            Some(verifier) => {
                let listener = listen("http.bind", &settings.http.bind)?;
                let address = listener.local_addr()?;
                let state = IntakeState {
                    db: db.clone(),
                    verifier,
                    signal: signal.clone(),
                    body_timeout: Duration::from_secs(settings.http.body_timeout_secs),
                    vault: Arc::clone(&vault),
                    to: settings.recipients(),
                };
                let server = web_server(listener, state, db.clone(), settings)?;
                (Some(server), Some(address))
            }
            None => (None, None),
        };
        let (metrics_server, metrics_address) = match &settings.http.metrics_bind {
            Some(bind) => {
                let listener = listen("http.metrics_bind", bind)?;
                let address = listener.local_addr()?;
                (Some(metrics_server(listener, db.clone())?), Some(address))
            }
            None => (None, None),
        };
        let sources = settings.sources()?;
        let maintenance = dodo
            .as_ref()
            .filter(|_| settings.reconciler.interval_secs > 0)
            .map(|dodo| Maintenance {
                dodo: dodo.clone(),
                settling: crate::ops::reconcile::Settling {
                    vault: Arc::clone(&vault),
                    to: settings.recipients(),
                },
                interval: Duration::from_secs(settings.reconciler.interval_secs),
                retention: Duration::from_secs(u64::from(settings.retention.days) * 86_400),
            });
        let worker = dodo.map(|dodo| {
            let ctx = WorkerContext::new(db.clone(), dodo, &settings.worker)
                .with_recipients(settings.recipients())
                .with_alert_webhook(settings.alerts.webhook_url.clone())
                .with_sources(sources.clone())
                .with_vault(Some(Arc::clone(&vault)));
            Worker::new(ctx, &settings.worker, signal.clone())
        });
        let deliverer = match role.worker() {
            true => crate::ops::outbox::Deliverer::from_settings(
                db.clone(),
                Some(Arc::clone(&vault)),
                settings,
            )?,
            false => None,
        };
        log_start(settings, role, address, metrics_address);
        Ok(Application {
            deliverer,
            port: address.map(|a| a.port()),
            server,
            metrics_port: metrics_address.map(|a| a.port()),
            metrics_server,
            source_check: role
                .worker()
                .then(|| crate::ops::source_health::SourceCheck::new(sources.clone())),
            worker,
            maintenance,
            db,
            signal,
            shutdown: CancellationToken::new(),
            // In-flight jobs get the grace period; the HTTP server's own drain is bounded too.
            stop_deadline: settings.worker.shutdown_grace() + Duration::from_secs(35),
        })
    }

    /// The port the webhook server listens on (web roles only).
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The port `/metrics` is served on when `http.metrics_bind` is set.
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics_port
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Cancel it to stop gracefully (what SIGTERM does).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Runs until the shutdown token is cancelled; then stops taking webhooks and claiming
    /// jobs, lets in-flight work finish, and returns.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let shutdown = self.shutdown.clone();
        let mut tasks = Vec::new();
        if self.server.is_some() || self.metrics_server.is_some() {
            tasks.push(tokio::spawn(drain_histograms(
                metrics_handle(),
                METRICS_UPKEEP,
                shutdown.clone(),
            )));
        }
        for server in self.metrics_server.into_iter() {
            tasks.push(serve_until(server, shutdown.clone()));
        }
        if let Some(server) = self.server {
            tasks.push(
                self.signal
                    .spawn_notifier(self.db.clone(), shutdown.clone()),
            );
            tasks.push(serve_until(server, shutdown.clone()));
        }
        tasks.push(tokio::spawn(crate::ops::stats::sample_queue_depth(
            self.db.clone(),
            shutdown.clone(),
        )));
        tasks.push(tokio::spawn(crate::ops::stats::compact_tallies(
            self.db.clone(),
            shutdown.clone(),
        )));
        if let Some(m) = self.maintenance {
            let db = self.db.clone();
            tasks.push(tokio::spawn(crate::ops::reconcile::run_maintenance(
                db,
                m.dodo,
                m.settling,
                m.interval,
                m.retention,
                shutdown.clone(),
            )));
        }
        if let Some(check) = self.source_check {
            tasks.push(tokio::spawn(crate::ops::source_health::watch(
                self.db.clone(),
                check,
                shutdown.clone(),
            )));
        }
        if let Some(deliverer) = self.deliverer {
            tasks.push(tokio::spawn(deliverer.run(shutdown.clone())));
        }
        if let Some(worker) = self.worker {
            tasks.push(
                self.signal
                    .spawn_listener(self.db.clone(), shutdown.clone()),
            );
            tasks.push(tokio::spawn(worker.run(shutdown.clone())));
        }
        let aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
        let mut stopped = std::pin::pin!(futures_util::future::join_all(tasks));
        tokio::select! {
            _ = &mut stopped => {}
            // From the stop request on, what is left gets a bounded time.
            _ = shutdown.cancelled() => {
                if tokio::time::timeout(self.stop_deadline, &mut stopped).await.is_err() {
                    tracing::warn!(
                        "shutdown did not finish within {:?}; leaving the rest (leases expire and other workers resume)",
                        self.stop_deadline
                    );
                    aborts.iter().for_each(|a| a.abort());
                }
            }
        }
        if tokio::time::timeout(Duration::from_secs(5), self.db.close())
            .await
            .is_err()
        {
            tracing::warn!("database connections did not close within 5 s");
        }
        Ok(())
    }
}

/// Binds `address`, the value of `setting`; an error that names the setting.
fn listen(setting: &str, address: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address).with_context(|| {
        format!("cannot listen on {setting} = {address}; is another process using it?")
    })
}

/// Says in the log what this process runs, where, and how it reaches Postgres.
fn log_start(
    settings: &Settings,
    role: Role,
    address: Option<SocketAddr>,
    metrics_address: Option<SocketAddr>,
) {
    let rate_budget = match role.worker() {
        true => settings.dodo.rate_budget_description(),
        false => "none: this role makes no calls to Dodo".into(),
    };
    tracing::info!(
        role = ?role,
        listen = %address.map_or("none".into(), |a| a.to_string()),
        metrics = %match (metrics_address, address) {
            (Some(m), _) => format!("http://{m}/metrics"),
            (None, Some(a)) => format!("http://{a}/metrics"),
            (None, None) => "none: set http.metrics_bind to serve /metrics from this role".into(),
        },
        dashboard = %match (address, settings.admin.token.is_some()) {
            (Some(a), true) => format!("http://{a}/admin"),
            _ => "off".into(),
        },
        dodo = %crate::configuration::redact_url(&settings.dodo_base_url()),
        worker_concurrency = role.worker().then_some(settings.worker.concurrency),
        rate_budget = %rate_budget,
        database = %settings.database_url_redacted(),
        "keyrelay starting"
    );
    tracing::info!(
        mode = %settings.database_mode(),
        "database connection"
    );
}

/// The webhook verifier for web roles, from the settings.
fn webhook_verifier(settings: &Settings, role: Role) -> anyhow::Result<Option<WebhookVerifier>> {
    Ok(if role.web() {
        let secret = settings.webhook.secret.as_ref().context(
            "webhook.secret (DODO_PAYMENTS_WEBHOOK_KEY) is not set; copy the whsec_... secret from Dodo's webhook settings",
        )?;
        Some(WebhookVerifier::new(parse_webhook_secrets(
            secret.expose_secret(),
        )?))
    } else {
        None
    })
}

/// The Dodo client, drawing its calls from the rate budget shared through `pool`'s database.
pub fn dodo_client(settings: &Settings, db: &Db) -> anyhow::Result<DodoClient> {
    let api_key = settings.dodo.api_key.clone().context(
        "dodo.api_key (DODO_PAYMENTS_API_KEY) is not set; create an API key with write access in Dodo's dashboard",
    )?;
    DodoClient::new(
        &settings.dodo_base_url(),
        api_key,
        Duration::from_secs(settings.dodo.timeout_secs),
        Arc::new(match settings.dodo.rate_limits() {
            Some(limits) => RateBudget::shared(db.clone(), limits),
            None => RateBudget::unlimited(),
        }),
    )
}
