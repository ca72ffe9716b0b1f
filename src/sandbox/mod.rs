//! A stateful stand-in for the Dodo endpoints keyrelay uses (fulfill, list grants, customer
//! grants, revoke), following Dodo's documented API and webhooks. It sells grants, sends them
//! as signed webhooks, and injects faults on request. Tests, the demo and the benchmark use it.

mod controls;
mod fulfill;
mod limits;
mod server;
pub mod shop;
mod vendor;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use serde::Deserialize;

use crate::dodo::{Grant, GrantStatus};

use fulfill::apply_key;
use limits::CallWindow;
pub use limits::OverLimit;
pub use server::RunningSandbox;
pub use vendor::{License, VendorFault, VendorNotice};

/// A fault the sandbox can inject into a fulfill call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Fault {
    /// Answer this status without applying anything.
    Status { status: u16 },
    /// 429 with `Retry-After: retry_after_secs`.
    RateLimited { retry_after_secs: u64 },
    /// Apply the key, then answer 500 as if the answer were lost.
    ApplyThen500,
    /// Never answer within any sane timeout (the client must time out).
    Hang,
    /// Answer `status` with a body of binary junk, control characters and kilobytes of text,
    /// as a broken proxy might.
    Garbage { status: u16 },
    /// Answer `status` with a message that quotes the key sent, as a validation error might.
    EchoKey { status: u16 },
}

/// Faults drawn at random for every fulfill call without a scripted fault.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct FaultRates {
    /// Delay before every answer (all endpoints).
    pub latency_ms: u64,
    /// Share of fulfill calls answered 500 without applying.
    pub server_error: f64,
    /// Share of fulfill calls applied and then answered 500.
    pub apply_then_500: f64,
    /// Share of fulfill calls answered 429.
    pub rate_limited: f64,
    pub retry_after_secs: u64,
}

/// One fulfill request as the sandbox saw it.
#[derive(Debug, Clone)]
pub struct FulfillRecord {
    pub grant_id: String,
    pub key: String,
    pub received: Instant,
    pub status: u16,
}

#[derive(Default)]
struct State {
    grants: HashMap<String, Grant>,
    order: Vec<String>,
    /// Every key value Dodo holds, with the grant it belongs to (None: preexisting).
    keys_in_use: HashMap<String, Option<String>>,
    rates: FaultRates,
    scripted: HashMap<String, VecDeque<Fault>>,
    log: Vec<FulfillRecord>,
    webhooks_sent: HashSet<String>,
    fail_lookups: bool,
    vendor: vendor::VendorState,
    calls: CallWindow,
    seq: u64,
    /// Random for each sandbox, in every id it hands out: a sandbox started again on the same
    /// database counts from 1 again, and must not sell a grant keyrelay already holds.
    instance: u32,
}

/// The sandbox's state and credentials; cheap to clone (shared state).
#[derive(Clone)]
pub struct Sandbox {
    state: Arc<Mutex<State>>,
    api_key: Arc<str>,
    webhook_key: Arc<[u8]>,
    http: reqwest::Client,
}

/// A signed webhook, ready to send.
#[derive(Debug, Clone)]
pub struct SignedWebhook {
    pub id: String,
    pub timestamp: i64,
    pub signature: String,
    pub body: String,
}

pub const BUSINESS_ID: &str = "bus_sandbox";

impl Sandbox {
    pub fn new(api_key: &str, webhook_key: &[u8]) -> Sandbox {
        Sandbox {
            state: Arc::new(Mutex::new(State {
                instance: rand::random(),
                ..State::default()
            })),
            api_key: api_key.into(),
            webhook_key: webhook_key.into(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(30))
                .pool_max_idle_per_host(256)
                // An idle connection is closed soon: a keyrelay stopping gracefully waits for
                // its open connections, so one the sandbox no longer uses would hold it up.
                .pool_idle_timeout(Duration::from_millis(500))
                .build()
                .expect("reqwest client"),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("sandbox state poisoned")
    }

    pub fn api_key(&self) -> &str {
        &self.api_key
    }

    /// Creates a pending license-key grant for `entitlement_id`.
    pub fn create_grant(&self, entitlement_id: &str, customer_id: Option<&str>) -> Grant {
        let mut state = self.lock();
        state.seq += 1;
        let n = state.seq;
        let now = now_iso();
        let grant = Grant {
            id: format!("grant_sbx{n:08}{:08x}", state.instance),
            business_id: Some(BUSINESS_ID.into()),
            brand_id: Some("brand_sandbox".into()),
            customer_id: customer_id.map_or_else(|| format!("cus_sbx{n:08}"), str::to_string),
            entitlement_id: entitlement_id.to_string(),
            integration_type: Some("license_key".into()),
            status: GrantStatus::Pending,
            metadata: None,
            created_at: Some(now.clone()),
            updated_at: Some(now),
            delivered_at: None,
            revoked_at: None,
            revocation_reason: None,
            error_code: None,
            error_message: None,
            license_key: None,
            payment_id: Some(format!("pay_sbx{n:08}")),
            subscription_id: None,
        };
        state.order.push(grant.id.clone());
        state.grants.insert(grant.id.clone(), grant.clone());
        grant
    }

    pub fn grant(&self, grant_id: &str) -> Option<Grant> {
        self.lock().grants.get(grant_id).cloned()
    }

    pub fn grants(&self) -> Vec<Grant> {
        let state = self.lock();
        state
            .order
            .iter()
            .map(|id| state.grants[id].clone())
            .collect()
    }

    /// The webhook Dodo would send for the grant's current state.
    pub fn webhook_for(&self, grant: &Grant, event_type: &str) -> SignedWebhook {
        let id = {
            let mut state = self.lock();
            state.seq += 1;
            format!("msg_sbx{:010}{:08x}", state.seq, state.instance)
        };
        let mut data = serde_json::to_value(grant).expect("grant serializes");
        data["payload_type"] = "EntitlementGrant".into();
        let body = serde_json::json!({
            "business_id": BUSINESS_ID,
            "type": event_type,
            "timestamp": now_iso(),
            "data": data,
        })
        .to_string();
        self.sign(id, body)
    }

    /// Signs `body` as webhook `id`, timestamped now.
    pub fn sign(&self, id: String, body: String) -> SignedWebhook {
        let timestamp = Utc::now().timestamp();
        let signature = sign(&self.webhook_key, &id, timestamp, body.as_bytes());
        SignedWebhook {
            id,
            timestamp,
            signature,
            body,
        }
    }

    /// POSTs a webhook to `url` and returns the HTTP status.
    pub async fn send_webhook(&self, url: &str, webhook: &SignedWebhook) -> reqwest::Result<u16> {
        let response = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &webhook.id)
            .header("webhook-timestamp", webhook.timestamp.to_string())
            .header("webhook-signature", &webhook.signature)
            .body(webhook.body.clone())
            .send()
            .await?;
        if response.status().is_success() {
            self.lock().webhooks_sent.insert(webhook.id.clone());
        }
        Ok(response.status().as_u16())
    }

    /// Sells a grant: creates it and sends its `entitlement_grant.created` webhook to `url`.
    pub async fn sell(&self, url: &str, entitlement_id: &str) -> reqwest::Result<(Grant, u16)> {
        let grant = self.create_grant(entitlement_id, None);
        let status = self
            .send_webhook(url, &self.webhook_for(&grant, "entitlement_grant.created"))
            .await?;
        Ok((grant, status))
    }

    /// Fulfils a grant directly, as another system of the merchant's would.
    pub fn fulfill_elsewhere(&self, grant_id: &str, key: &str) {
        let mut state = self.lock();
        let _ = apply_key(&mut state, grant_id, key, None, None);
    }

    /// Creates a pending grant of a new subscription (as a subscription's first payment does).
    pub fn subscribe(&self, entitlement_id: &str) -> Grant {
        let mut grant = self.create_grant(entitlement_id, None);
        let subscription = format!("sub_{}", &grant.id["grant_".len()..]);
        grant.subscription_id = Some(subscription);
        self.lock().grants.insert(grant.id.clone(), grant.clone());
        grant
    }

    /// Re-enables a grant revoked with `license_key_disabled`: Dodo reactivates it, delivered
    /// again with the same key. `None` when the grant is not such a grant.
    pub fn reenable(&self, grant_id: &str) -> Option<Grant> {
        let mut state = self.lock();
        let grant = state.grants.get_mut(grant_id)?;
        let disabled = grant.revocation_reason.as_deref() == Some("license_key_disabled");
        if grant.status != GrantStatus::Revoked || !disabled || grant.license_key.is_none() {
            return None;
        }
        grant.status = GrantStatus::Delivered;
        grant.revoked_at = None;
        grant.revocation_reason = None;
        grant.updated_at = Some(now_iso());
        Some(grant.clone())
    }

    /// After `subscription_on_hold`, a successful retry of the payment: a new pending grant of
    /// the same subscription, customer and entitlement. `None` unless the grant is on hold.
    pub fn regrant(&self, grant_id: &str) -> Option<Grant> {
        let old = self.grant(grant_id)?;
        if old.revocation_reason.as_deref() != Some("subscription_on_hold") {
            return None;
        }
        let mut grant = self.create_grant(&old.entitlement_id, Some(&old.customer_id));
        grant.subscription_id = old.subscription_id.clone();
        self.lock().grants.insert(grant.id.clone(), grant.clone());
        Some(grant)
    }

    /// Revokes a grant (idempotent), as `DELETE /entitlements/{ent}/grants/{id}` does.
    pub fn revoke(&self, grant_id: &str, reason: &str) -> Option<Grant> {
        let mut state = self.lock();
        let grant = state.grants.get_mut(grant_id)?;
        if grant.status != GrantStatus::Revoked {
            let now = now_iso();
            grant.status = GrantStatus::Revoked;
            grant.revoked_at = Some(now.clone());
            grant.updated_at = Some(now);
            grant.revocation_reason = Some(reason.into());
        }
        Some(grant.clone())
    }

    /// Makes Dodo already hold `key` (so fulfilling any grant with it answers 409).
    pub fn add_existing_key(&self, key: &str) {
        self.lock().keys_in_use.insert(key.to_string(), None);
    }

    /// While set, the list endpoints answer 500 (a failed 409 look-up).
    pub fn set_lookup_failures(&self, fail: bool) {
        self.lock().fail_lookups = fail;
    }

    pub fn set_fault_rates(&self, rates: FaultRates) {
        self.lock().rates = rates;
    }

    /// Queues faults for the next fulfill calls of one grant, in order.
    pub fn script_faults(&self, grant_id: &str, faults: impl IntoIterator<Item = Fault>) {
        self.lock()
            .scripted
            .entry(grant_id.to_string())
            .or_default()
            .extend(faults);
    }

    /// Every fulfill request received, in arrival order.
    pub fn fulfill_log(&self) -> Vec<FulfillRecord> {
        self.lock().log.clone()
    }

    /// Fulfill requests that applied a key (answered 200, or applied then 500).
    pub fn deliveries(&self) -> usize {
        self.lock()
            .grants
            .values()
            .filter(|g| g.license_key.is_some())
            .count()
    }
}

/// Signs `body` as Dodo does (Standard Webhooks, HMAC-SHA256 under `key`).
pub fn sign(key: &[u8], webhook_id: &str, timestamp: i64, body: &[u8]) -> String {
    standardwebhooks::Webhook::from_bytes(key.to_vec())
        .and_then(|h| h.sign(webhook_id, timestamp, body))
        .expect("webhook bodies are UTF-8 JSON")
}

fn now_iso() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::Sandbox;

    /// Two sandboxes (one started again on the same database, say) count from 1 alike; the
    /// grants and webhooks they hand out must still be new to keyrelay, which ignores a grant
    /// or a webhook id it already holds.
    #[test]
    fn sandboxes_started_again_never_reuse_a_grant_or_webhook_id() {
        let mut grants = HashSet::new();
        let mut webhooks = HashSet::new();
        for _ in 0..2 {
            let sandbox = Sandbox::new("sk", b"key");
            for _ in 0..2_000 {
                let grant = sandbox.create_grant("ent", None);
                let hook = sandbox.webhook_for(&grant, "entitlement_grant.created");
                assert!(webhooks.insert(hook.id), "webhook id reused");
                assert!(grants.insert(grant.id), "grant id reused");
            }
        }
    }
}
