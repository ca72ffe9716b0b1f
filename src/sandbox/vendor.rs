//! A key vendor's license API, for `http` pools: `POST /vendor/licenses` checks keyrelay's
//! signature, mints a license for the grant and shows its key once, answers the same key for a
//! repeated idempotency key (unless told to ignore them), and injects faults on request.

use std::collections::{HashMap, VecDeque};

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;

use super::Sandbox;

/// A fault the vendor can inject into one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum VendorFault {
    /// Answer this status without minting.
    Status { status: u16 },
    /// 429 with `Retry-After`.
    RateLimited { retry_after_secs: u64 },
    /// Answer after this many milliseconds.
    Slow { ms: u64 },
    /// Mint the license, then never answer: the caller times out without its key, as if it
    /// crashed between the vendor's answer and recording it.
    MintThenHang,
    /// Answer this status with a message that quotes the key of the request (a revocation
    /// notice), as an error naming the license might.
    EchoKey { status: u16 },
}

/// One license the vendor minted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct License {
    pub grant_id: String,
    pub idempotency_key: String,
    pub key: String,
}

#[derive(Debug, Default)]
pub(super) struct VendorState {
    ignore_idempotency: bool,
    by_idempotency: HashMap<String, String>,
    minted: Vec<License>,
    scripted: HashMap<String, VecDeque<VendorFault>>,
    requests: u64,
    /// Notices taken at `/vendor/revocations`, once per idempotency key.
    notices: Vec<VendorNotice>,
    /// Each license's standing: `active`, `suspended` or `revoked`.
    standing: HashMap<String, String>,
}

/// A suspend, reinstate or revoke notice the vendor took.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VendorNotice {
    pub action: String,
    pub grant_id: String,
    pub key: String,
    pub reason: Option<String>,
    #[serde(skip)]
    pub idempotency_key: String,
}

impl Sandbox {
    /// From now on the vendor mints a new license for every request, ignoring idempotency
    /// keys (a broken endpoint).
    pub fn vendor_ignores_idempotency(&self, ignore: bool) {
        self.lock().vendor.ignore_idempotency = ignore;
    }

    /// Queues faults for the next vendor requests for one grant, in order.
    pub fn script_vendor_faults(
        &self,
        grant_id: &str,
        faults: impl IntoIterator<Item = VendorFault>,
    ) {
        self.lock()
            .vendor
            .scripted
            .entry(grant_id.to_string())
            .or_default()
            .extend(faults);
    }

    /// Every license the vendor minted, in order.
    pub fn vendor_licenses(&self) -> Vec<License> {
        self.lock().vendor.minted.clone()
    }

    /// Vendor requests received (signed correctly or not).
    pub fn vendor_requests(&self) -> u64 {
        self.lock().vendor.requests
    }

    /// Queues faults for the next revocation notices about one grant, in order.
    pub fn script_vendor_revocation_faults(
        &self,
        grant_id: &str,
        faults: impl IntoIterator<Item = VendorFault>,
    ) {
        self.script_vendor_faults(&format!("revoke:{grant_id}"), faults);
    }

    /// Drops the faults still queued for revocation notices about one grant (the vendor is
    /// back).
    pub fn clear_vendor_revocation_faults(&self, grant_id: &str) {
        self.lock()
            .vendor
            .scripted
            .remove(&format!("revoke:{grant_id}"));
    }

    /// Every revocation notice the vendor took (each idempotency key once), in order.
    pub fn vendor_notices(&self) -> Vec<VendorNotice> {
        self.lock().vendor.notices.clone()
    }

    /// A license's standing at the vendor: `active`, `suspended` or `revoked`.
    pub fn vendor_standing(&self, key: &str) -> Option<String> {
        let state = self.lock();
        let vendor = &state.vendor;
        let minted = vendor.minted.iter().any(|l| l.key == key);
        vendor
            .standing
            .get(key)
            .cloned()
            .or_else(|| minted.then(|| "active".to_string()))
    }

    /// The next scripted fault for a request for `grant_id`, if any.
    pub(super) fn next_vendor_fault(&self, grant_id: &str) -> Option<VendorFault> {
        self.lock()
            .vendor
            .scripted
            .get_mut(grant_id)
            .and_then(VecDeque::pop_front)
    }

    /// The license key for this request: the one minted before under the same idempotency
    /// key, or a new one.
    pub(super) fn mint(&self, grant_id: &str, idempotency_key: &str) -> String {
        let mut state = self.lock();
        let vendor = &mut state.vendor;
        if !vendor.ignore_idempotency
            && let Some(key) = vendor.by_idempotency.get(idempotency_key)
        {
            return key.clone();
        }
        let key = format!(
            "VND-{:04X}-{:04X}-{:04X}",
            rand::random::<u16>(),
            rand::random::<u16>(),
            rand::random::<u16>()
        );
        vendor
            .by_idempotency
            .insert(idempotency_key.to_string(), key.clone());
        vendor.minted.push(License {
            grant_id: grant_id.to_string(),
            idempotency_key: idempotency_key.to_string(),
            key: key.clone(),
        });
        key
    }

    pub(super) fn count_vendor_request(&self) {
        self.lock().vendor.requests += 1;
    }
}

/// A request header as text (empty when absent or not text).
pub(super) fn header(request: &HttpRequest, name: &str) -> String {
    request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// Whether the request carries a valid Standard Webhooks signature under the sandbox's secret.
pub(super) fn signed(request: &HttpRequest, body: &[u8], sandbox: &Sandbox) -> bool {
    let header = |name: &str| header(request, name);
    let (id, signature) = (header("webhook-id"), header("webhook-signature"));
    header("webhook-timestamp")
        .parse::<i64>()
        .ok()
        .is_some_and(|ts| {
            let expected = super::sign(&sandbox.webhook_key, &id, ts, body);
            signature.split(' ').any(|s| s == expected)
        })
}

/// `POST /vendor/revocations`: keyrelay tells the vendor a license is suspended, reinstated
/// or revoked. Signed like a license request; a repeated idempotency key changes nothing.
pub(super) async fn vendor_revocation(
    request: HttpRequest,
    body: web::Bytes,
    sandbox: web::Data<Sandbox>,
) -> HttpResponse {
    if !signed(&request, &body, &sandbox) {
        return HttpResponse::Unauthorized().json(serde_json::json!({"message": "bad signature"}));
    }
    let idempotency = header(&request, "idempotency-key");
    let Ok(mut notice) = serde_json::from_slice::<VendorNotice>(&body) else {
        return HttpResponse::UnprocessableEntity()
            .json(serde_json::json!({"message": "action, grant_id and key are required"}));
    };
    match sandbox.next_vendor_fault(&format!("revoke:{}", notice.grant_id)) {
        Some(VendorFault::EchoKey { status }) => {
            let status = actix_web::http::StatusCode::from_u16(status)
                .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
            let message = format!(
                "license {} cannot be changed: injected vendor fault",
                notice.key
            );
            return HttpResponse::build(status).json(serde_json::json!({ "message": message }));
        }
        Some(VendorFault::Status { status }) => {
            let status = actix_web::http::StatusCode::from_u16(status)
                .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
            return HttpResponse::build(status)
                .json(serde_json::json!({"message": "injected vendor fault"}));
        }
        Some(VendorFault::RateLimited { retry_after_secs }) => {
            return HttpResponse::TooManyRequests()
                .insert_header(("Retry-After", retry_after_secs.to_string()))
                .finish();
        }
        Some(VendorFault::Slow { ms }) => {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        Some(VendorFault::MintThenHang) => {
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        }
        None => {}
    }
    let standing = match notice.action.as_str() {
        "suspend" => "suspended",
        "reinstate" => "active",
        "revoke" => "revoked",
        _ => {
            return HttpResponse::UnprocessableEntity()
                .json(serde_json::json!({"message": "action is suspend, reinstate or revoke"}));
        }
    };
    notice.idempotency_key = idempotency;
    let mut state = sandbox.lock();
    let vendor = &mut state.vendor;
    let known = !notice.idempotency_key.is_empty()
        && vendor
            .notices
            .iter()
            .any(|n| n.idempotency_key == notice.idempotency_key);
    if !known {
        vendor.standing.insert(notice.key.clone(), standing.into());
        vendor.notices.push(notice);
    }
    HttpResponse::Ok().json(serde_json::json!({"status": standing}))
}
