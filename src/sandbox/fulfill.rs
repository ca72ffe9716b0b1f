//! The sandbox's fulfill endpoint: faults drawn or scripted per grant, then the request checked
//! and applied exactly as Dodo's contract says.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::Rng;
use serde::Deserialize;

use super::{Fault, FulfillRecord, Sandbox, State, now_iso};
use crate::dodo::{Grant, GrantStatus, LicenseKey};

/// The result of a fulfill call, decided under the lock.
pub(super) enum FulfillResult {
    Ok(Box<Grant>),
    Garbage(u16),
    Error(u16, &'static str, String),
    RateLimited(u64),
}

#[derive(Debug, Deserialize)]
struct FulfillBody {
    key: Option<serde_json::Value>,
    #[serde(default)]
    activations_limit: Option<serde_json::Value>,
    #[serde(default)]
    expires_at: Option<serde_json::Value>,
}

impl Sandbox {
    /// Decides the fault for one call: a scripted one for the grant, else one drawn at random.
    pub(super) fn draw_fault(&self, grant_id: &str) -> (Option<Fault>, Duration) {
        let mut state = self.lock();
        let latency = Duration::from_millis(state.rates.latency_ms);
        if let Some(f) = state
            .scripted
            .get_mut(grant_id)
            .and_then(VecDeque::pop_front)
        {
            return (Some(f), latency);
        }
        let r = state.rates;
        let roll: f64 = rand::rng().random();
        let fault = if roll < r.server_error {
            Some(Fault::Status { status: 500 })
        } else if roll < r.server_error + r.apply_then_500 {
            Some(Fault::ApplyThen500)
        } else if roll < r.server_error + r.apply_then_500 + r.rate_limited {
            Some(Fault::RateLimited {
                retry_after_secs: r.retry_after_secs,
            })
        } else {
            None
        };
        (fault, latency)
    }

    pub(super) fn fulfill(
        &self,
        grant_id: &str,
        body: &[u8],
        fault: Option<Fault>,
    ) -> FulfillResult {
        let mut state = self.lock();
        let key = serde_json::from_slice::<FulfillBody>(body)
            .ok()
            .and_then(|b| b.key)
            .and_then(|k| k.as_str().map(str::to_string))
            .unwrap_or_default();
        let result = match fault {
            Some(Fault::EchoKey { status }) => FulfillResult::Error(
                status,
                "UNPROCESSABLE_ENTITY",
                format!("license key {key} is not acceptable"),
            ),
            Some(Fault::Status { status }) => {
                FulfillResult::Error(status, "INTERNAL_SERVER_ERROR", "injected fault".into())
            }
            Some(Fault::RateLimited { retry_after_secs }) => {
                FulfillResult::RateLimited(retry_after_secs)
            }
            Some(Fault::Hang) => unreachable!("hang is handled before the lock"),
            Some(Fault::Garbage { status }) => FulfillResult::Garbage(status),
            Some(Fault::ApplyThen500) | None => {
                match validate_and_apply(&mut state, grant_id, body) {
                    FulfillResult::Ok(_) if fault == Some(Fault::ApplyThen500) => {
                        FulfillResult::Error(
                            500,
                            "INTERNAL_SERVER_ERROR",
                            "injected fault after apply".into(),
                        )
                    }
                    other => other,
                }
            }
        };
        let status = match &result {
            FulfillResult::Ok(_) => 200,
            FulfillResult::Error(s, ..) | FulfillResult::Garbage(s) => *s,
            FulfillResult::RateLimited(_) => 429,
        };
        state.log.push(FulfillRecord {
            grant_id: grant_id.to_string(),
            key,
            received: Instant::now(),
            status,
        });
        result
    }
}

fn validate_and_apply(state: &mut State, grant_id: &str, body: &[u8]) -> FulfillResult {
    let Some(grant) = state.grants.get(grant_id) else {
        return FulfillResult::Error(404, "NOT_FOUND", format!("grant {grant_id} not found"));
    };
    let body: FulfillBody = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => return FulfillResult::Error(400, "INVALID_REQUEST_BODY", e.to_string()),
    };
    let key = match body.key {
        None => {
            return FulfillResult::Error(422, "UNPROCESSABLE_ENTITY", "missing field `key`".into());
        }
        Some(serde_json::Value::String(k)) => k.trim().to_string(),
        Some(_) => {
            return FulfillResult::Error(
                422,
                "UNPROCESSABLE_ENTITY",
                "`key` must be a string".into(),
            );
        }
    };
    if key.is_empty() {
        return FulfillResult::Error(400, "INVALID_LICENSE_KEY", "key must not be empty".into());
    }
    let activations_limit = match body.activations_limit {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => match v.as_i64() {
            Some(n) if n >= 1 => Some(n),
            _ => {
                return FulfillResult::Error(
                    422,
                    "UNPROCESSABLE_ENTITY",
                    "activations_limit must be an integer >= 1".into(),
                );
            }
        },
    };
    let expires_at = match body.expires_at {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) if chrono::DateTime::parse_from_rfc3339(&s).is_ok() => {
            Some(s)
        }
        Some(_) => {
            return FulfillResult::Error(
                422,
                "UNPROCESSABLE_ENTITY",
                "expires_at must be ISO 8601".into(),
            );
        }
    };
    if grant.integration_type.as_deref() != Some("license_key") {
        return FulfillResult::Error(
            400,
            "INVALID_GRANT_TYPE",
            "grant is not a license-key grant".into(),
        );
    }
    if grant.status != GrantStatus::Pending {
        return FulfillResult::Error(409, "CONFLICT", "grant is not awaiting fulfillment".into());
    }
    if state.keys_in_use.contains_key(&key) {
        return FulfillResult::Error(409, "CONFLICT", "license key already exists".into());
    }
    match apply_key(state, grant_id, &key, activations_limit, expires_at) {
        Some(g) => FulfillResult::Ok(Box::new(g)),
        None => FulfillResult::Error(409, "CONFLICT", "grant is not awaiting fulfillment".into()),
    }
}

pub(super) fn apply_key(
    state: &mut State,
    grant_id: &str,
    key: &str,
    activations_limit: Option<i64>,
    expires_at: Option<String>,
) -> Option<Grant> {
    let grant = state.grants.get_mut(grant_id)?;
    if grant.status != GrantStatus::Pending || state.keys_in_use.contains_key(key) {
        return None;
    }
    let now = now_iso();
    grant.status = GrantStatus::Delivered;
    grant.delivered_at = Some(now.clone());
    grant.updated_at = Some(now);
    grant.license_key = Some(LicenseKey {
        key: key.to_string(),
        activations_used: Some(0),
        activations_limit,
        expires_at,
    });
    let grant = grant.clone();
    state
        .keys_in_use
        .insert(key.to_string(), Some(grant_id.to_string()));
    Some(grant)
}
