//! What keyrelay's outbound calls refuse, against a hostile vendor on a real local port: a
//! redirect is never followed, an answer past the size cap is dropped unread, one slow key
//! source (or one slow grant) delays no other grant, and a call longer than the lease neither
//! loops nor leaves orphans.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, dev::ServerHandle, web};
use keyrelay::configuration::KeySourceSettings;
use keyrelay::dodo::{DodoClient, RateBudget};
use keyrelay::domain::JobState;
use keyrelay::fulfillment::{WorkerContext, ask::fetch_keys, run_batch};
use keyrelay::pool::{NewPool, add_pool};
use keyrelay::sources::Source;
use keyrelay::startup::Role;
use secrecy::SecretString;
use tokio::sync::Notify;

use crate::helpers::{ENT, TestApp, wait_until};

/// Bytes the hostile server offers in an oversized answer.
const HUGE: usize = 50 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

#[derive(Default)]
struct Seen {
    /// Requests by path.
    hits: Mutex<HashMap<String, usize>>,
    /// Bytes of oversized answers the client actually pulled.
    streamed: AtomicUsize,
    /// Grants whose requests are held until `release` is notified.
    held: Mutex<HashSet<String>>,
    release: Notify,
    /// Requests being held right now.
    holding: AtomicUsize,
}

struct Hostile {
    base: String,
    seen: Arc<Seen>,
    handle: ServerHandle,
}

fn huge_stream(
    seen: Arc<Seen>,
) -> impl futures_util::Stream<Item = Result<web::Bytes, std::io::Error>> {
    futures_util::stream::unfold(0usize, move |sent| {
        let seen = seen.clone();
        async move {
            if sent >= HUGE {
                return None;
            }
            seen.streamed.fetch_add(CHUNK, Ordering::SeqCst);
            Some((Ok(web::Bytes::from(vec![b' '; CHUNK])), sent + CHUNK))
        }
    })
}

async fn hostile(
    request: actix_web::HttpRequest,
    body: web::Bytes,
    seen: web::Data<Arc<Seen>>,
    other: web::Data<String>,
) -> HttpResponse {
    let path = request.path().to_string();
    *seen.hits.lock().unwrap().entry(path.clone()).or_default() += 1;
    let grant = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|b| b["grant_id"].as_str().map(str::to_string))
        .unwrap_or_default();
    let key = || {
        HttpResponse::Ok().json(serde_json::json!({
            "key": format!("VND-{}-{:08x}", grant.len(), rand::random::<u32>())
        }))
    };
    match path.as_str() {
        "/redirect/307" | "/redirect/302" => HttpResponse::build(
            actix_web::http::StatusCode::from_u16(path[10..].parse().unwrap()).unwrap(),
        )
        .insert_header(("location", format!("{}/stolen", other.as_str())))
        .finish(),
        "/stolen" => HttpResponse::Ok().json(serde_json::json!({ "key": "STOLEN-KEY-0001-AAAA" })),
        "/huge" => HttpResponse::Ok()
            .content_type("application/json")
            .streaming(huge_stream(seen.get_ref().clone())),
        "/huge-declared" => HttpResponse::Ok()
            .content_type("application/json")
            .no_chunking(HUGE as u64)
            .streaming(huge_stream(seen.get_ref().clone())),
        "/key" => key(),
        // Keys no grant may be given: a terminal escape, a NUL, 5 KB of one character.
        "/bad-key/escape" => {
            HttpResponse::Ok().json(serde_json::json!({ "key": "VND-\u{1b}[2J-0001" }))
        }
        "/bad-key/nul" => HttpResponse::Ok().json(serde_json::json!({ "key": "VND-\u{0}-0002" })),
        "/bad-key/long" => HttpResponse::Ok().json(serde_json::json!({ "key": "K".repeat(5_000) })),
        "/held" => {
            if seen.held.lock().unwrap().contains(&grant) {
                seen.holding.fetch_add(1, Ordering::SeqCst);
                seen.release.notified().await;
                seen.holding.fetch_sub(1, Ordering::SeqCst);
            }
            key()
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            key()
        }
        // Dodo's fulfill route, answering 500 with an endless error body.
        p if p.starts_with("/grants/") => HttpResponse::InternalServerError()
            .content_type("application/json")
            .streaming(huge_stream(seen.get_ref().clone())),
        _ => HttpResponse::NotFound().finish(),
    }
}

impl Hostile {
    /// A hostile server; its redirects point at `other` (another server's base URL).
    fn start(other: &str) -> Hostile {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Seen::default());
        let data = web::Data::new(seen.clone());
        let other = web::Data::new(other.to_string());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(other.clone())
                .default_service(web::to(hostile))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(1)
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Hostile { base, seen, handle }
    }

    fn hits(&self, path: &str) -> usize {
        self.seen
            .hits
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    async fn stop(self) {
        self.seen.release.notify_waiters();
        self.handle.stop(false).await;
    }
}

/// A key source named `name` at `url` on the hostile server.
fn source(url: String, timeout_secs: u64) -> KeySourceSettings {
    KeySourceSettings {
        url,
        secret: SecretString::from("whsec_c2VjcmV0LWZvci10aGUtaG9zdGlsZS12ZW5kb3I="),
        key_pointer: "/key".into(),
        timeout_secs,
        revoke_url: None,
    }
}

/// Adds an `http` pool for `entitlement` whose keys come from key source `endpoint`.
async fn add_http_pool(app: &TestApp, name: &str, entitlement: &str, endpoint: &str) {
    let new = NewPool {
        name: name.into(),
        entitlement_id: entitlement.into(),
        source: Some(Source::Http),
        endpoint: Some(endpoint.into()),
        ..Default::default()
    };
    add_pool(&app.db, &new).await.unwrap();
}

/// Sells one grant of `entitlement` and delivers its webhook.
async fn sell_of(app: &TestApp, entitlement: &str) -> String {
    let grant = app.sandbox.create_grant(entitlement, None);
    let response = app
        .post(&app.sandbox.webhook_for(&grant, "entitlement_grant.created"))
        .await;
    assert_eq!(response.status(), 200);
    grant.id
}

#[tokio::test]
async fn a_key_source_redirect_is_refused_and_never_followed() {
    let elsewhere = Hostile::start("http://127.0.0.1:9");
    let vendor = Hostile::start(&elsewhere.base);
    let sources = [
        ("moved-temp", format!("{}/redirect/307", vendor.base)),
        ("moved-found", format!("{}/redirect/302", vendor.base)),
    ];
    let app = TestApp::spawn_with(Role::Web, |s| {
        for (name, url) in &sources {
            s.key_sources.insert((*name).into(), source(url.clone(), 5));
        }
    })
    .await;
    add_http_pool(&app, "temp", ENT, "moved-temp").await;
    add_http_pool(&app, "found", "ent_found", "moved-found").await;
    let temp = app.sell().await;
    let found = sell_of(&app, "ent_found").await;
    fetch_keys(&app.worker(), 10).await.unwrap();
    for (grant, status) in [(&temp, 307), (&found, 302)] {
        let job = app.job(grant).await;
        assert_eq!(job.state, JobState::Failed, "{status}");
        assert!(job.key_id.is_none(), "{status}: no key was bound");
        let error = job.last_error.unwrap();
        assert!(
            error.contains(&format!("answered {status}"))
                && error.contains("redirect to 127.0.0.1")
                && error.contains("follows no redirects"),
            "{error}"
        );
    }
    assert_eq!(
        vendor.hits("/redirect/307") + vendor.hits("/redirect/302"),
        2
    );
    assert_eq!(
        elsewhere.hits("/stolen"),
        0,
        "the signed request went nowhere else"
    );
    assert_eq!(app.count("SELECT count(*) FROM keys").await, 0);
    app.stop().await;
    vendor.stop().await;
    elsewhere.stop().await;
}

#[tokio::test]
async fn an_oversized_key_answer_fails_the_job_without_being_read() {
    let vendor = Hostile::start("http://127.0.0.1:9");
    let sources = [
        ("chunked", format!("{}/huge", vendor.base)),
        ("declared", format!("{}/huge-declared", vendor.base)),
    ];
    let app = TestApp::spawn_with(Role::Web, |s| {
        for (name, url) in &sources {
            s.key_sources
                .insert((*name).into(), source(url.clone(), 10));
        }
    })
    .await;
    add_http_pool(&app, "chunked", ENT, "chunked").await;
    add_http_pool(&app, "declared", "ent_declared", "declared").await;
    let chunked = app.sell().await;
    let declared = sell_of(&app, "ent_declared").await;
    fetch_keys(&app.worker(), 10).await.unwrap();
    for grant in [&chunked, &declared] {
        let job = app.job(grant).await;
        assert_eq!(job.state, JobState::Failed);
        let error = job.last_error.unwrap();
        assert!(error.contains("larger than 16384 bytes"), "{error}");
    }
    // The client stopped pulling at the cap, far short of the 50 MB on offer (the server may
    // have a few chunks in flight in socket buffers).
    let streamed = vendor.seen.streamed.load(Ordering::SeqCst);
    assert!(streamed < 8 * 1024 * 1024, "read {streamed} bytes");
    app.stop().await;
    vendor.stop().await;
}

#[tokio::test]
async fn a_key_no_grant_may_hold_fails_only_its_job_and_is_never_stored() {
    let vendor = Hostile::start("http://127.0.0.1:9");
    let kinds = ["escape", "nul", "long"];
    let app = TestApp::spawn_with(Role::Web, |s| {
        for kind in kinds {
            let url = format!("{}/bad-key/{kind}", vendor.base);
            s.key_sources.insert(kind.into(), source(url, 10));
        }
    })
    .await;
    let mut bad = Vec::new();
    for kind in kinds {
        let entitlement = format!("ent_bad_{kind}");
        add_http_pool(&app, kind, &entitlement, kind).await;
        bad.push(sell_of(&app, &entitlement).await);
    }
    app.add_pool("pro", ENT, &["PRO-AAAA-BBBB-CCCC-0001"]).await;
    let good = app.sell().await;
    run_batch(&app.worker(), 10).await.unwrap();
    for grant in &bad {
        let job = app.job(grant).await;
        assert_eq!(job.state, JobState::Failed, "{grant}");
        let error = job.last_error.unwrap();
        assert!(error.contains("the key it gave is not valid"), "{error}");
        assert!(
            !error.contains('\u{1b}') && !error.contains('\0') && error.len() < 1_000,
            "the error is printable and short: {error:?}"
        );
    }
    assert_eq!(app.job_state(&good).await, JobState::Delivered);
    assert_eq!(
        app.count("SELECT count(*) FROM keys WHERE pool_id IN (SELECT id FROM pools WHERE source = 'http')")
            .await,
        0,
        "no key was stored for an http pool"
    );
    app.stop().await;
    vendor.stop().await;
}

#[tokio::test]
async fn an_oversized_error_body_from_dodo_is_dropped_and_the_job_retried() {
    let fake_dodo = Hostile::start("http://127.0.0.1:9");
    let app = TestApp::spawn_web().await;
    app.add_pool("pro", ENT, &["PRO-AAAA-BBBB-CCCC-0001"]).await;
    let grant = app.sell().await;
    let s = app.settings();
    let dodo = DodoClient::new(
        &fake_dodo.base,
        SecretString::from("sk_test"),
        Duration::from_secs(5),
        Arc::new(RateBudget::unlimited()),
    )
    .unwrap();
    let ctx = WorkerContext::new(app.db.clone(), dodo, &s.worker)
        .with_sources(s.sources().unwrap())
        .with_vault(s.keys.sealing_vault().unwrap());
    run_batch(&ctx, 10).await.unwrap();
    let job = app.job(&grant).await;
    assert_eq!(job.state, JobState::Retrying);
    assert_eq!(job.last_http_status, Some(500));
    let error = job.last_error.unwrap();
    assert!(error.contains("larger than 16384 bytes"), "{error}");
    let streamed = fake_dodo.seen.streamed.load(Ordering::SeqCst);
    assert!(streamed < 8 * 1024 * 1024, "read {streamed} bytes");
    app.stop().await;
    fake_dodo.stop().await;
}

#[tokio::test]
async fn a_slow_key_source_or_grant_delays_no_other_grant() {
    let vendor = Hostile::start("http://127.0.0.1:9");
    let sources = [
        ("stuck", format!("{}/held", vendor.base)),
        ("quick", format!("{}/held", vendor.base)),
    ];
    let app = TestApp::spawn_with(Role::All, |s| {
        for (name, url) in &sources {
            s.key_sources
                .insert((*name).into(), source(url.clone(), 60));
        }
    })
    .await;
    add_http_pool(&app, "stuck", ENT, "stuck").await;
    add_http_pool(&app, "quick", "ent_quick", "quick").await;
    let grant = app.sandbox.create_grant(ENT, None);
    vendor.seen.held.lock().unwrap().insert(grant.id.clone());
    app.post(&app.sandbox.webhook_for(&grant, "entitlement_grant.created"))
        .await;
    wait_until(
        "the stuck source holds the first grant's call",
        Duration::from_secs(30),
        || async { vendor.seen.holding.load(Ordering::SeqCst) == 1 },
    )
    .await;
    // Another source's grant, and another grant of the stuck source, go through meanwhile.
    let other_source = sell_of(&app, "ent_quick").await;
    let same_source = app.sell().await;
    for grant in [&other_source, &same_source] {
        wait_until(
            "a grant is delivered while another call hangs",
            Duration::from_secs(30),
            || async { app.job_state(grant).await == JobState::Delivered },
        )
        .await;
    }
    assert_eq!(
        vendor.seen.holding.load(Ordering::SeqCst),
        1,
        "still hanging"
    );
    assert_eq!(app.job_state(&grant.id).await, JobState::Running);
    vendor.seen.release.notify_waiters();
    app.wait_for_state(&grant.id, JobState::Delivered).await;
    app.stop().await;
    vendor.stop().await;
}

#[tokio::test]
async fn a_call_longer_than_the_lease_keeps_its_lease_and_is_made_once() {
    let vendor = Hostile::start("http://127.0.0.1:9");
    let url = format!("{}/slow", vendor.base);
    let app = TestApp::spawn_with(Role::Web, |s| {
        s.worker.lease_secs = 1;
        s.key_sources.insert("slow".into(), source(url, 8));
    })
    .await;
    add_http_pool(&app, "slow", ENT, "slow").await;
    let grant = app.sell().await;
    let first_worker = app.worker();
    let first = tokio::spawn(async move { fetch_keys(&first_worker, 10).await.unwrap() });
    wait_until(
        "the slow call is in flight",
        Duration::from_secs(10),
        || async { vendor.hits("/slow") == 1 },
    )
    .await;
    // The lease covers the whole call (up to its 8 s timeout), not the 1 s lease alone.
    let left: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM run_at - now())::float8 FROM jobs WHERE grant_id = $1",
    )
    .bind(&grant)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert!(left > 5.0, "lease left: {left} s");
    // A second worker finds nothing to take over.
    assert_eq!(fetch_keys(&app.worker(), 10).await.unwrap(), 0);
    assert_eq!(first.await.unwrap(), 1);
    let job = app.job(&grant).await;
    assert!(
        job.key_id.is_some(),
        "the key was bound: {:?}",
        job.last_error
    );
    assert_eq!(vendor.hits("/slow"), 1);
    assert_eq!(
        app.count("SELECT count(*) FROM received_keys WHERE orphan")
            .await,
        0
    );
    app.stop().await;
    vendor.stop().await;
}

#[tokio::test]
async fn a_job_whose_workers_keep_dying_mid_call_fails_past_its_attempts() {
    let vendor = Hostile::start("http://127.0.0.1:9");
    let url = format!("{}/key", vendor.base);
    let app = TestApp::spawn_with(Role::Web, |s| {
        s.worker.max_attempts = 3;
        s.key_sources.insert("vendor".into(), source(url, 5));
    })
    .await;
    add_http_pool(&app, "vendor", ENT, "vendor").await;
    let grant = app.sell().await;
    // Three workers took it and died mid-call: attempts used, lease lapsed.
    sqlx::query(
        "UPDATE jobs SET state = 'running', attempts = 3, lease_token = nextval('job_lease_tokens'), \
         run_at = now() - interval '1 second' WHERE grant_id = $1",
    )
    .bind(&grant)
    .execute(&app.db)
    .await
    .unwrap();
    assert_eq!(fetch_keys(&app.worker(), 10).await.unwrap(), 1);
    let job = app.job(&grant).await;
    assert_eq!(job.state, JobState::Failed);
    assert!(job.last_error.unwrap().contains("gave up after 3 attempts"));
    assert_eq!(vendor.hits("/key"), 0, "no fourth call");
    app.stop().await;
    vendor.stop().await;
}
