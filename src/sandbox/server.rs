//! The sandbox's HTTP face: Dodo's routes, plus `/sandbox/*` controls for selling grants and
//! setting faults when it runs on its own (`keyrelay sandbox`).

use std::net::TcpListener;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, dev::ServerHandle, web};
use serde::Deserialize;

use super::fulfill::FulfillResult;
use super::{Fault, FaultRates, Sandbox, VendorFault};
use crate::dodo::GrantStatus;

/// A sandbox serving on a local port.
pub struct RunningSandbox {
    pub sandbox: Sandbox,
    pub base_url: String,
    handle: ServerHandle,
}

impl RunningSandbox {
    /// Serves `sandbox` on `listener` in the background.
    pub fn start(sandbox: Sandbox, listener: TcpListener) -> std::io::Result<RunningSandbox> {
        let base_url = format!("http://{}", listener.local_addr()?);
        let data = web::Data::new(sandbox.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/grants/{grant_id}/license-key", web::post().to(fulfill))
                .route(
                    "/entitlements/{ent}/grants",
                    web::get().to(list_entitlement_grants),
                )
                .route(
                    "/entitlements/{ent}/grants/{grant_id}",
                    web::delete().to(revoke),
                )
                .route(
                    "/customers/{cus}/entitlement-grants",
                    web::get().to(list_customer_grants),
                )
                .route("/vendor/licenses", web::post().to(vendor_license))
                .route(
                    "/vendor/revocations",
                    web::post().to(super::vendor::vendor_revocation),
                )
                .route("/sandbox/sell", web::post().to(sell))
                .route("/sandbox/faults", web::put().to(set_faults))
                .route("/sandbox/grants", web::get().to(all_grants))
                .route(
                    "/sandbox/grants/{id}/revoke",
                    web::post().to(super::controls::revoke),
                )
                .route(
                    "/sandbox/grants/{id}/reenable",
                    web::post().to(super::controls::reenable),
                )
                .route(
                    "/sandbox/grants/{id}/regrant",
                    web::post().to(super::controls::regrant),
                )
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(1)
        .listen(listener)?
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Ok(RunningSandbox {
            sandbox,
            base_url,
            handle,
        })
    }

    /// Stops serving; a request held on purpose (a hang fault) is cut off after a moment.
    pub async fn stop(&self) {
        let moment = std::time::Duration::from_secs(3);
        if tokio::time::timeout(moment, self.handle.stop(true))
            .await
            .is_err()
        {
            let _ = tokio::time::timeout(moment, self.handle.stop(false)).await;
        }
    }
}

fn error(status: u16, code: &str, message: &str) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).expect("valid status"))
        .json(serde_json::json!({ "code": code, "message": message }))
}

/// Checks the API key, then counts the call against the rate limits (when enforced).
fn authorized(sandbox: &Sandbox, request: &HttpRequest) -> Result<(), HttpResponse> {
    let expected = format!("Bearer {}", sandbox.api_key());
    match request.headers().get("authorization") {
        Some(v) if v.as_bytes() == expected.as_bytes() => {}
        _ => return Err(error(401, "UNAUTHORIZED", "invalid API key")),
    }
    sandbox.admit_call().map_err(|over| {
        let reset = over.retry_after_secs.to_string();
        HttpResponse::TooManyRequests()
            .insert_header(("Retry-After", reset.clone()))
            .insert_header(("X-RateLimit-Limit", over.limit.to_string()))
            .insert_header(("X-RateLimit-Remaining", over.remaining.to_string()))
            .insert_header(("X-RateLimit-Reset", reset))
            .json(serde_json::json!({ "code": "TOO_MANY_REQUESTS", "message": "rate limit exceeded" }))
    })
}

async fn latency(sandbox: &Sandbox) {
    let ms = sandbox.lock().rates.latency_ms;
    if ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}

async fn fulfill(
    request: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
    sandbox: web::Data<Sandbox>,
) -> HttpResponse {
    if let Err(r) = authorized(&sandbox, &request) {
        return r;
    }
    let grant_id = path.into_inner();
    let (fault, delay) = sandbox.draw_fault(&grant_id);
    if fault == Some(Fault::Hang) {
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match sandbox.fulfill(&grant_id, &body, fault) {
        FulfillResult::Ok(grant) => HttpResponse::Ok().json(grant),
        FulfillResult::Error(status, code, message) => error(status, code, &message),
        FulfillResult::Garbage(status) => {
            let mut junk = b"\0\x1b[2J\x1b[31mproxy error\x07 ".to_vec();
            junk.extend(std::iter::repeat_n(b'x', 8_000));
            HttpResponse::build(
                actix_web::http::StatusCode::from_u16(status).expect("valid status"),
            )
            .body(junk)
        }
        FulfillResult::RateLimited(secs) => HttpResponse::TooManyRequests()
            .insert_header(("Retry-After", secs.to_string()))
            .json(serde_json::json!({ "code": "TOO_MANY_REQUESTS", "message": "rate limited" })),
    }
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    status: Option<String>,
    customer_id: Option<String>,
    integration_type: Option<String>,
    page_number: Option<usize>,
    page_size: Option<usize>,
}

/// One page of grants that pass `keep` and the query's filters, after auth and latency.
async fn list(
    request: &HttpRequest,
    sandbox: &Sandbox,
    query: &ListQuery,
    keep: impl Fn(&crate::dodo::Grant) -> bool,
) -> HttpResponse {
    if let Err(r) = authorized(sandbox, request) {
        return r;
    }
    latency(sandbox).await;
    if sandbox.lock().fail_lookups {
        return error(500, "INTERNAL_SERVER_ERROR", "injected look-up failure");
    }
    let size = query.page_size.unwrap_or(10);
    if !(1..=100).contains(&size) {
        return error(
            422,
            "UNPROCESSABLE_ENTITY",
            "page_size must be between 1 and 100",
        );
    }
    let status = query.status.as_deref().map(GrantStatus::parse);
    let items: Vec<_> = sandbox
        .grants()
        .into_iter()
        .filter(|g| keep(g))
        .filter(|g| status.as_ref().is_none_or(|s| &g.status == s))
        .filter(|g| {
            query
                .customer_id
                .as_ref()
                .is_none_or(|c| &g.customer_id == c)
        })
        .skip(query.page_number.unwrap_or(0) * size)
        .take(size)
        .collect();
    HttpResponse::Ok().json(serde_json::json!({ "items": items }))
}

async fn list_entitlement_grants(
    request: HttpRequest,
    path: web::Path<String>,
    query: web::Query<ListQuery>,
    sandbox: web::Data<Sandbox>,
) -> HttpResponse {
    let ent = path.into_inner();
    // The current API ignores `integration_type` on this endpoint.
    list(&request, &sandbox, &query, |g| g.entitlement_id == ent).await
}

async fn list_customer_grants(
    request: HttpRequest,
    path: web::Path<String>,
    query: web::Query<ListQuery>,
    sandbox: web::Data<Sandbox>,
) -> HttpResponse {
    let cus = path.into_inner();
    let integration = query.integration_type.clone();
    list(&request, &sandbox, &query, |g| {
        g.customer_id == cus
            && integration
                .as_ref()
                .is_none_or(|i| g.integration_type.as_deref() == Some(i.as_str()))
    })
    .await
}

async fn revoke(
    request: HttpRequest,
    path: web::Path<(String, String)>,
    sandbox: web::Data<Sandbox>,
) -> HttpResponse {
    if let Err(r) = authorized(&sandbox, &request) {
        return r;
    }
    let (ent, grant_id) = path.into_inner();
    match sandbox.grant(&grant_id).filter(|g| g.entitlement_id == ent) {
        Some(_) => HttpResponse::Ok().json(sandbox.revoke(&grant_id, "manual")),
        None => error(404, "NOT_FOUND", "grant not found"),
    }
}

/// `POST /vendor/licenses`: a license for the grant in the signed JSON body.
async fn vendor_license(
    request: HttpRequest,
    body: web::Bytes,
    sandbox: web::Data<Sandbox>,
) -> HttpResponse {
    sandbox.count_vendor_request();
    if !super::vendor::signed(&request, &body, &sandbox) {
        return error(401, "UNAUTHORIZED", "bad signature");
    }
    let idempotency = super::vendor::header(&request, "idempotency-key");
    let grant_id = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|b| b["grant_id"].as_str().map(str::to_string));
    let (Some(grant_id), false) = (grant_id, idempotency.is_empty()) else {
        return error(
            422,
            "UNPROCESSABLE_ENTITY",
            "grant_id and Idempotency-Key are required",
        );
    };
    match sandbox.next_vendor_fault(&grant_id) {
        Some(VendorFault::Status { status } | VendorFault::EchoKey { status }) => {
            return error(status, "VENDOR_ERROR", "injected vendor fault");
        }
        Some(VendorFault::RateLimited { retry_after_secs }) => {
            return HttpResponse::TooManyRequests()
                .insert_header(("Retry-After", retry_after_secs.to_string()))
                .json(serde_json::json!({ "message": "slow down" }));
        }
        Some(VendorFault::Slow { ms }) => {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        Some(VendorFault::MintThenHang) => {
            sandbox.mint(&grant_id, &idempotency);
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        }
        None => {}
    }
    let key = sandbox.mint(&grant_id, &idempotency);
    HttpResponse::Ok().json(serde_json::json!({
        "license": { "id": format!("lic_{}", &key[4..]), "key": key, "status": "active" }
    }))
}

#[derive(Debug, Deserialize)]
struct SellRequest {
    entitlement_id: String,
    #[serde(default = "one")]
    count: usize,
    webhook_url: Option<String>,
    /// Each grant is the first of a new subscription (to play on-hold and re-grant).
    #[serde(default)]
    subscription: bool,
}

fn one() -> usize {
    1
}

async fn sell(body: web::Json<SellRequest>, sandbox: web::Data<Sandbox>) -> HttpResponse {
    let mut sold = Vec::new();
    for _ in 0..body.count.min(10_000) {
        let grant = match body.subscription {
            true => sandbox.subscribe(&body.entitlement_id),
            false => sandbox.create_grant(&body.entitlement_id, None),
        };
        let status = match &body.webhook_url {
            Some(url) => {
                let hook = sandbox.webhook_for(&grant, "entitlement_grant.created");
                sandbox.send_webhook(url, &hook).await.ok()
            }
            None => None,
        };
        sold.push(serde_json::json!({ "grant_id": grant.id, "webhook_status": status }));
    }
    HttpResponse::Ok().json(sold)
}

async fn set_faults(body: web::Json<FaultRates>, sandbox: web::Data<Sandbox>) -> HttpResponse {
    sandbox.set_fault_rates(body.into_inner());
    HttpResponse::NoContent().finish()
}

async fn all_grants(sandbox: web::Data<Sandbox>) -> HttpResponse {
    HttpResponse::Ok().json(sandbox.grants())
}
