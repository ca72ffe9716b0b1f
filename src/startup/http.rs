//! What keyrelay serves over HTTP: the webhook, dashboard and shop API server (with
//! `/healthz`, `/readyz` and `/metrics`), or `/metrics` on its own address; and keeping the
//! metrics recorder's memory flat between scrapes.

use std::net::TcpListener;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, dev::Server, web};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

use crate::configuration::Settings;
use crate::db::Db;
use crate::intake::{self, IntakeState};

/// Runs `server` until `shutdown`, then lets it finish what it is answering.
pub(super) fn serve_until(
    server: Server,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
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

pub(super) fn web_server(
    listener: TcpListener,
    state: IntakeState,
    db: Db,
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
            db: db.clone(),
            auth: crate::admin::AdminAuth::new(token, !settings.admin.insecure_http),
            wrong_tokens: Default::default(),
            clients: clients.clone(),
            vault: Arc::clone(&state.vault),
            figures: Default::default(),
            to: state.to.clone(),
        })
    });
    let api = settings.api.token.as_ref().map(|token| {
        web::Data::new(crate::api::ApiState {
            db: db.clone(),
            // Spaces around a configured token (an `.env` slip) are not part of it.
            token: token.expose_secret().trim().into(),
            vault: Arc::clone(&state.vault),
            wrong_tokens: Default::default(),
            clients: clients.clone(),
        })
    });
    let signing = web::Data::new(Signing(settings.keys.signing_key()?));
    let db = web::Data::new(db);
    let metrics = web::Data::new(metrics_handle());
    let server = HttpServer::new(move || {
        App::new()
            .wrap(actix_web::middleware::from_fn(crate::guard::guard_request))
            .app_data(body_policy.clone())
            .app_data(state.clone())
            .app_data(db.clone())
            .app_data(metrics.clone())
            .app_data(signing.clone())
            .route("/webhooks/dodo", web::post().to(intake::receive_webhook))
            .route("/signing-keys/revoked", web::get().to(revoked_signed_keys))
            .route("/.well-known/jwks.json", web::get().to(public_signing_keys))
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

/// The keys `sign` pools sign with, if configured.
struct Signing(Option<crate::sources::sign::SigningKeys>);

const NO_SIGNING_KEY: &str =
    "no signing key is configured (keys.signing_key, KEYRELAY_SIGNING_KEY)";

/// `GET /.well-known/jwks.json`: the public halves of every configured signing key, as a JWK
/// Set. Public: apps fetch it (or ship it) to check signed keys offline.
async fn public_signing_keys(signing: web::Data<Signing>) -> HttpResponse {
    match &signing.0 {
        Some(keys) => HttpResponse::Ok()
            .insert_header(("cache-control", "public, max-age=300"))
            .content_type("application/jwk-set+json")
            .json(keys.published().to_jwks()),
        None => HttpResponse::NotFound().json(serde_json::json!({
            "error": format!("{NO_SIGNING_KEY}, so no keys are signed and none are published")
        })),
    }
}

/// `GET /signing-keys/revoked`: the signed revocation list of `sign` pools. Public: it says
/// only which grants' signed keys no longer count, and apps fetch it without credentials.
async fn revoked_signed_keys(db: web::Data<Db>, signing: web::Data<Signing>) -> HttpResponse {
    let Some(key) = &signing.0 else {
        return HttpResponse::NotFound().json(serde_json::json!({
            "error": format!("{NO_SIGNING_KEY}, so there are no signed keys to revoke")
        }));
    };
    match crate::store::read::signed_revocations(&db).await {
        Ok((sequence, revoked)) => {
            let list = crate::sources::revocations::RevocationList::new(
                sequence,
                revoked,
                chrono::Utc::now(),
            );
            HttpResponse::Ok()
                .insert_header(("cache-control", "public, max-age=60"))
                .json(list.sign(key))
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the revocation list");
            HttpResponse::ServiceUnavailable().json(serde_json::json!({
                "error": "the database did not answer; try again shortly"
            }))
        }
    }
}

/// `/metrics` alone, on `http.metrics_bind`.
pub(super) fn metrics_server(listener: TcpListener, db: Db) -> anyhow::Result<Server> {
    let db = web::Data::new(db);
    let metrics = web::Data::new(metrics_handle());
    let policy = web::Data::new(crate::guard::BodyPolicy {
        timeout: Duration::from_secs(5),
        max_bytes: 0,
    });
    Ok(HttpServer::new(move || {
        App::new()
            .wrap(actix_web::middleware::from_fn(crate::guard::guard_request))
            .app_data(policy.clone())
            .app_data(db.clone())
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
pub(super) const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// Folds the histogram samples recorded since the last time into their buckets, every few
/// seconds until shutdown. The recorder keeps every sample until then (`install_recorder`
/// leaves upkeep to its caller), so without this a process that is not scraped holds a few
/// bytes per grant for ever.
pub(super) async fn drain_histograms(
    handle: PrometheusHandle,
    every: Duration,
    shutdown: CancellationToken,
) {
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
