//! A shop's backend as keyrelay's `notify.url` meets it: a tiny receiver that checks every
//! notice with the Standard Webhooks library (as a shop would), keeps each webhook-id once,
//! and can be told to refuse. The demo runs one; the tests assert on what it took.

use std::collections::{HashSet, VecDeque};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, dev::ServerHandle, web};
use base64::Engine;

/// One notice the shop took.
#[derive(Debug, Clone)]
pub struct ShopNotice {
    pub webhook_id: String,
    pub event_type: String,
    pub data: serde_json::Value,
}

#[derive(Default)]
struct Taken {
    notices: Vec<ShopNotice>,
    ids: HashSet<String>,
    /// Every request, a repeated webhook-id included.
    requests: u64,
    /// Requests whose signature did not verify.
    forged: u64,
    /// Statuses to answer the next requests with, instead of taking them.
    refusals: VecDeque<u16>,
}

/// The receiver, serving on a local port until stopped.
pub struct ShopReceiver {
    /// Where keyrelay sends notices (`notify.url`).
    pub url: String,
    /// The `whsec_…` secret both sides hold (`notify.secret`).
    pub secret: String,
    taken: Arc<Mutex<Taken>>,
    handle: ServerHandle,
}

impl ShopReceiver {
    /// Starts a receiver with a fresh secret on a free local port.
    pub fn start() -> std::io::Result<ShopReceiver> {
        let key: [u8; 32] = rand::random();
        let secret = format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(key)
        );
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}/keyrelay/notices", listener.local_addr()?);
        let taken = Arc::new(Mutex::new(Taken::default()));
        let verifier = standardwebhooks::Webhook::new(&secret)
            .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        let state = web::Data::new((Arc::clone(&taken), Arc::new(verifier)));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .route("/keyrelay/notices", web::post().to(take))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(1)
        .listen(listener)?
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Ok(ShopReceiver {
            url,
            secret,
            taken,
            handle,
        })
    }

    fn taken(&self) -> std::sync::MutexGuard<'_, Taken> {
        self.taken.lock().expect("shop receiver state")
    }

    /// Every notice taken, each webhook-id once, in arrival order.
    pub fn notices(&self) -> Vec<ShopNotice> {
        self.taken().notices.clone()
    }

    /// The notices of one type.
    pub fn of_type(&self, event_type: &str) -> Vec<ShopNotice> {
        let taken = self.taken();
        let of = taken.notices.iter().filter(|n| n.event_type == event_type);
        of.cloned().collect()
    }

    /// Requests received, repeats included, and how many did not verify.
    pub fn requests(&self) -> (u64, u64) {
        let taken = self.taken();
        (taken.requests, taken.forged)
    }

    /// Answers the next requests with these statuses (a shop that is down or refuses).
    pub fn refuse_next(&self, statuses: impl IntoIterator<Item = u16>) {
        self.taken().refusals.extend(statuses);
    }

    pub async fn stop(&self) {
        self.handle.stop(true).await;
    }
}

type State = (Arc<Mutex<Taken>>, Arc<standardwebhooks::Webhook>);

async fn take(request: HttpRequest, body: web::Bytes, state: web::Data<State>) -> HttpResponse {
    let (taken, verifier) = state.get_ref();
    let mut headers = http::HeaderMap::new();
    for (name, value) in request.headers() {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_str().as_bytes()),
            http::HeaderValue::from_bytes(value.as_bytes()),
        ) {
            headers.insert(name, value);
        }
    }
    let verified = verifier.verify(&body, &headers).is_ok();
    let mut taken = taken.lock().expect("shop receiver state");
    taken.requests += 1;
    if !verified {
        taken.forged += 1;
        return HttpResponse::Unauthorized().finish();
    }
    if let Some(status) = taken.refusals.pop_front() {
        let status = actix_web::http::StatusCode::from_u16(status)
            .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
        return HttpResponse::build(status)
            .json(serde_json::json!({"message": "refused on purpose"}));
    }
    let webhook_id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let Ok(notice) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return HttpResponse::BadRequest().finish();
    };
    if taken.ids.insert(webhook_id.clone()) {
        taken.notices.push(ShopNotice {
            webhook_id,
            event_type: notice["type"].as_str().unwrap_or_default().to_string(),
            data: notice["data"].clone(),
        });
    }
    HttpResponse::NoContent().finish()
}
