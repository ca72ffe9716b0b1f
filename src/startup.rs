//! Building and running keyrelay: the HTTP server (web role), the worker pool (worker role), or
//! both, sharing one database pool and one cancellation token.

use std::net::TcpListener;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::db::Db;
use actix_web::{App, HttpResponse, HttpServer, dev::Server, web};
use anyhow::Context;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

use crate::configuration::{Settings, parse_webhook_secrets};
use crate::dodo::{DodoClient, RateBudget};
use crate::fulfillment::{Worker, WorkerContext};
use crate::intake::{self, IntakeState, signature::WebhookVerifier};
use crate::signal::JobSignal;

/// The periodic reconcile-and-prune pass of worker roles.
struct Maintenance {
    dodo: DodoClient,
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
    /// What this worker process can make keys with (worker roles).
    source_check: Option<crate::ops::source_health::SourceCheck>,
    pool: Db,
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
        let pool = if settings.database.migrate_on_start {
            let pool = crate::db::migrate(settings).await?;
            crate::ops::sealing::seal_plaintext(&pool, Some(&vault)).await?;
            pool
        } else {
            crate::db::lazy_pool(settings)?
        };
        let dodo = match role.worker() {
            true => Some(dodo_client(settings, &pool)?),
            false => None,
        };
        let signal = JobSignal::new();
        let (server, address) = match verifier {
            Some(verifier) => {
                let listener = TcpListener::bind(&settings.http.bind).with_context(|| {
                    format!(
                        "cannot listen on http.bind = {}; is another process using it?",
                        settings.http.bind
                    )
                })?;
                let address = listener.local_addr()?;
                let state = IntakeState {
                    pool: pool.clone(),
                    verifier,
                    signal: signal.clone(),
                    body_timeout: Duration::from_secs(settings.http.body_timeout_secs),
                    vault: Arc::clone(&vault),
                };
                let server = web_server(listener, state, pool.clone(), settings)?;
                (Some(server), Some(address))
            }
            None => (None, None),
        };
        let (metrics_server, metrics_address) = match &settings.http.metrics_bind {
            Some(bind) => {
                let listener = TcpListener::bind(bind).with_context(|| {
                    format!(
                        "cannot listen on http.metrics_bind = {bind}; is another process using it?"
                    )
                })?;
                let address = listener.local_addr()?;
                (Some(metrics_server(listener, pool.clone())?), Some(address))
            }
            None => (None, None),
        };
        let sources = settings.sources()?;
        let maintenance = dodo
            .as_ref()
            .filter(|_| settings.reconciler.interval_secs > 0)
            .map(|dodo| Maintenance {
                dodo: dodo.clone(),
                interval: Duration::from_secs(settings.reconciler.interval_secs),
                retention: Duration::from_secs(u64::from(settings.retention.days) * 86_400),
            });
        let worker = dodo.map(|dodo| {
            let ctx = WorkerContext::new(pool.clone(), dodo, &settings.worker)
                .with_alert_webhook(settings.alerts.webhook_url.clone())
                .with_sources(sources.clone())
                .with_vault(Some(Arc::clone(&vault)));
            Worker::new(ctx, &settings.worker, signal.clone())
        });
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
            worker_concurrency = worker.as_ref().map(|_| settings.worker.concurrency),
            rate_budget = %rate_budget,
            database = %settings.database_url_redacted(),
            "keyrelay starting"
        );
        tracing::info!(
            mode = %settings.database_mode(),
            "database connection"
        );
        Ok(Application {
            port: address.map(|a| a.port()),
            server,
            metrics_port: metrics_address.map(|a| a.port()),
            metrics_server,
            source_check: role
                .worker()
                .then(|| crate::ops::source_health::SourceCheck::from_settings(settings)),
            worker,
            maintenance,
            pool,
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

    pub fn pool(&self) -> &Db {
        &self.pool
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
                    .spawn_notifier(self.pool.clone(), shutdown.clone()),
            );
            tasks.push(serve_until(server, shutdown.clone()));
        }
        tasks.push(tokio::spawn(crate::ops::stats::sample_queue_depth(
            self.pool.clone(),
            shutdown.clone(),
        )));
        if let Some(m) = self.maintenance {
            let pool = self.pool.clone();
            tasks.push(tokio::spawn(crate::ops::reconcile::run_maintenance(
                pool,
                m.dodo,
                m.interval,
                m.retention,
                shutdown.clone(),
            )));
        }
        if let Some(check) = self.source_check {
            tasks.push(tokio::spawn(crate::ops::source_health::watch(
                self.pool.clone(),
                check,
                shutdown.clone(),
            )));
        }
        if let Some(worker) = self.worker {
            tasks.push(
                self.signal
                    .spawn_listener(self.pool.clone(), shutdown.clone()),
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
        if tokio::time::timeout(Duration::from_secs(5), self.pool.close())
            .await
            .is_err()
        {
            tracing::warn!("database connections did not close within 5 s");
        }
        Ok(())
    }
}

/// Runs `server` until `shutdown`, then lets it finish what it is answering.
fn serve_until(server: Server, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    let handle = server.handle();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        handle.stop(true).await;
    });
    tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "HTTP server failed");
        }
    })
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
pub fn dodo_client(settings: &Settings, pool: &Db) -> anyhow::Result<DodoClient> {
    let api_key = settings.dodo.api_key.clone().context(
        "dodo.api_key (DODO_PAYMENTS_API_KEY) is not set; create an API key with write access in Dodo's dashboard",
    )?;
    DodoClient::new(
        &settings.dodo_base_url(),
        api_key,
        Duration::from_secs(settings.dodo.timeout_secs),
        Arc::new(match settings.dodo.rate_limits() {
            Some(limits) => RateBudget::shared(pool.clone(), limits),
            None => RateBudget::unlimited(),
        }),
    )
}

fn web_server(
    listener: TcpListener,
    state: IntakeState,
    pool: Db,
    settings: &Settings,
) -> anyhow::Result<Server> {
    let state = web::Data::new(state);
    let clients = crate::guard::ClientAddress {
        trusted: settings.http.trusted_proxies()?,
    };
    let body_policy = web::Data::new(crate::guard::BodyPolicy {
        timeout: Duration::from_secs(settings.http.body_timeout_secs),
        max_bytes: crate::intake::MAX_BODY_BYTES,
    });
    let metrics_here = settings.http.metrics_bind.is_none();
    let admin = settings.admin.token.clone().map(|token| {
        web::Data::new(crate::admin::AdminState {
            pool: pool.clone(),
            auth: crate::admin::AdminAuth::new(token, !settings.admin.insecure_http),
            wrong_tokens: Default::default(),
            clients: clients.clone(),
            vault: Arc::clone(&state.vault),
            figures: Default::default(),
        })
    });
    let api = settings.api.token.as_ref().map(|token| {
        web::Data::new(crate::api::ApiState {
            pool: pool.clone(),
            // Spaces around a configured token (an `.env` slip) are not part of it.
            token: token.expose_secret().trim().into(),
            vault: Arc::clone(&state.vault),
            wrong_tokens: Default::default(),
            clients: clients.clone(),
        })
    });
    let pool = web::Data::new(pool);
    let metrics = web::Data::new(metrics_handle());
    let server = HttpServer::new(move || {
        App::new()
            .wrap(actix_web::middleware::from_fn(crate::guard::guard_request))
            .app_data(body_policy.clone())
            .app_data(state.clone())
            .app_data(pool.clone())
            .app_data(metrics.clone())
            .route("/webhooks/dodo", web::post().to(intake::receive_webhook))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .configure(|cfg| {
                if metrics_here {
                    cfg.route("/metrics", web::get().to(prometheus));
                }
            })
            .configure(|cfg| {
                if let Some(admin) = &admin {
                    cfg.app_data(admin.clone());
                    crate::admin::configure(cfg);
                }
            })
            .configure(|cfg| {
                if let Some(api) = &api {
                    cfg.app_data(api.clone());
                    crate::api::configure(cfg);
                }
            })
    })
    .disable_signals()
    .shutdown_timeout(settings.worker.shutdown_grace_secs)
    .backlog(1024)
    .listen(listener)?
    .run();
    Ok(server)
}

/// `/metrics` alone, on `http.metrics_bind`.
fn metrics_server(listener: TcpListener, pool: Db) -> anyhow::Result<Server> {
    let pool = web::Data::new(pool);
    let metrics = web::Data::new(metrics_handle());
    let policy = web::Data::new(crate::guard::BodyPolicy {
        timeout: Duration::from_secs(5),
        max_bytes: 0,
    });
    Ok(HttpServer::new(move || {
        App::new()
            .wrap(actix_web::middleware::from_fn(crate::guard::guard_request))
            .app_data(policy.clone())
            .app_data(pool.clone())
            .app_data(metrics.clone())
            .route("/metrics", web::get().to(prometheus))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(5)
    .listen(listener)?
    .run())
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// Readiness answers within this, database or not: probes should not hang on an outage.
const READINESS_TIMEOUT: Duration = Duration::from_millis(200);

async fn readyz(pool: web::Data<Db>) -> HttpResponse {
    let check = pool.accepts_writes();
    let unavailable = |error: String| {
        HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({ "database": "unavailable", "error": error }))
    };
    match tokio::time::timeout(READINESS_TIMEOUT, check).await {
        Ok(Ok(true)) => HttpResponse::Ok().json(serde_json::json!({ "database": "ok" })),
        Ok(Ok(false)) => HttpResponse::ServiceUnavailable().json(serde_json::json!({
            "database": "read-only",
            "error": "the database server does not accept writes (a standby, or a failover in progress)"
        })),
        Ok(Err(e)) => unavailable(e.to_string()),
        Err(_) => unavailable("timed out".into()),
    }
}

/// This process's counters and histograms, then the database's gauges (omitted, with a
/// comment, when the database does not answer in time).
async fn prometheus(handle: web::Data<PrometheusHandle>, pool: web::Data<Db>) -> HttpResponse {
    let mut body = handle.render();
    match tokio::time::timeout(
        Duration::from_secs(5),
        crate::ops::stats::read(pool.get_ref()),
    )
    .await
    {
        Ok(Ok(stats)) => body.push_str(&crate::ops::stats::render(&stats)),
        Ok(Err(e)) => body.push_str(&format!(
            "# database figures unavailable: {}\n",
            e.to_string().replace('\n', " ")
        )),
        Err(_) => body.push_str("# database figures unavailable: timed out\n"),
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(body)
}

/// How often recorded histogram samples are folded into their buckets.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// Folds the histogram samples recorded since the last time into their buckets, every few
/// seconds until shutdown. The recorder keeps every sample until then (`install_recorder`
/// leaves upkeep to its caller), so without this a process that is not scraped holds a few
/// bytes per grant for ever.
async fn drain_histograms(handle: PrometheusHandle, every: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => handle.run_upkeep(),
            _ = shutdown.cancelled() => return,
        }
    }
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Buckets, not client-side quantiles: Prometheus can then add up every process's
            // histogram and the Grafana dashboard shows one p99 for the fleet.
            PrometheusBuilder::new()
                .set_buckets(&[
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ])
                .expect("the bucket list is not empty")
                .install_recorder()
                .expect("no other metrics recorder is installed")
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    }

    /// Records `samples` histogram values into `recorder` on another thread; the RSS growth.
    async fn record(
        recorder: metrics_exporter_prometheus::PrometheusRecorder,
        samples: u64,
    ) -> u64 {
        tokio::task::spawn_blocking(move || {
            let before = rss_kib();
            metrics::with_local_recorder(&recorder, || {
                let histogram = metrics::histogram!("keyrelay_test_seconds");
                for i in 0..samples {
                    histogram.record(i as f64 / 1e6);
                }
            });
            let grown = rss_kib().saturating_sub(before);
            drop(recorder);
            grown
        })
        .await
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recorded_histograms_do_not_pile_up_between_scrapes() {
        if rss_kib() == 0 {
            return; // no /proc here
        }
        const SAMPLES: u64 = 4_000_000; // 32 MB if every sample were kept
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[0.5, 1.0])
            .unwrap()
            .build_recorder();
        let stop = CancellationToken::new();
        let upkeep = tokio::spawn(drain_histograms(
            recorder.handle(),
            Duration::from_millis(5),
            stop.clone(),
        ));
        let with_upkeep = record(recorder, SAMPLES).await;
        stop.cancel();
        upkeep.await.unwrap();
        // What a process that nobody scrapes did before: every sample kept.
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[0.5, 1.0])
            .unwrap()
            .build_recorder();
        let without = record(recorder, SAMPLES).await;
        assert!(
            without > 24 * 1024,
            "the hazard is real: grew {without} KiB without upkeep"
        );
        assert!(
            with_upkeep < 8 * 1024,
            "grew {with_upkeep} KiB with upkeep running"
        );
    }
}
