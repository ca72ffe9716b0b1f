//! A key vendor's license API, for `http` pools: `POST /vendor/licenses` checks keyrelay's
//! signature, mints a license for the grant and shows its key once, answers the same key for a
//! repeated idempotency key (unless told to ignore them), and injects faults on request.

use std::collections::{HashMap, VecDeque};

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
