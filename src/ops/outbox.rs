//! The deliverer: sends what the outbox holds (`store::outbox`) to the shop's `notify.url` and
//! to key sources' `revoke_url`, each notice signed with Standard Webhooks headers (the
//! notice's id as `webhook-id` and `Idempotency-Key`, the same on every try). A 2xx is done; a
//! 5xx, a 429 or no answer is tried again with backoff until `notify.give_up_after_hours`; a
//! 4xx or a redirect is parked with its message for a human (`keyrelay outbox retry`). Each
//! notice has its own timeout and a capped read, so a hostile receiver holds up only itself.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

use crate::backoff::RetryPolicy;
use crate::configuration::Settings;
use crate::crypto::{Vault, parse_webhook_secrets};
use crate::db::Db;
use crate::domain::{LicenseKey, printable};
use crate::outbound::{
    ReadError, describe_error, read_capped, redirect_refused, signed_post, wait_hint,
};
use crate::store::outbox::{self, Delivery, Notice};

/// Notices sent at once by one deliverer.
const BATCH: i64 = 32;
/// How much longer than its receiver's timeout a claimed notice is kept from other deliverers.
const LEASE_MARGIN_SECS: f64 = 10.0;
/// The most of a receiver's answer that is read (enough for an error message).
const ANSWER_LIMIT: usize = 16 * 1024;

/// Where one kind of notice goes and how it is signed.
#[derive(Clone)]
struct Receiver {
    url: String,
    secret: Vec<u8>,
    timeout: Duration,
}

/// Sends the outbox's notices.
#[derive(Clone)]
pub struct Deliverer {
    db: Db,
    vault: Option<Arc<Vault>>,
    http: reqwest::Client,
    shop: Option<Receiver>,
    vendors: HashMap<String, Receiver>,
    include_key: bool,
    give_up_after: TimeDelta,
    retry: RetryPolicy,
    poll: Duration,
}

impl Deliverer {
    /// The deliverer for `settings`, or `None` when nobody is owed notices.
    pub fn from_settings(
        db: Db,
        vault: Option<Arc<Vault>>,
        settings: &Settings,
    ) -> anyhow::Result<Option<Deliverer>> {
        let receiver = |url: &str, secret: &str, timeout: u64| -> anyhow::Result<Receiver> {
            Ok(Receiver {
                url: url.to_string(),
                secret: parse_webhook_secrets(secret)?.remove(0),
                timeout: Duration::from_secs(timeout),
            })
        };
        let notify = &settings.notify;
        let shop = match (&notify.url, &notify.secret) {
            (Some(url), Some(secret)) => {
                Some(receiver(url, secret.expose_secret(), notify.timeout_secs)?)
            }
            _ => None,
        };
        let mut vendors = HashMap::new();
        for (name, source) in &settings.key_sources {
            if let Some(url) = &source.revoke_url {
                let secret = source.secret.expose_secret();
                vendors.insert(name.clone(), receiver(url, secret, source.timeout_secs)?);
            }
        }
        if shop.is_none() && vendors.is_empty() {
            return Ok(None);
        }
        Ok(Some(Deliverer {
            db,
            vault,
            http: crate::outbound::client().build()?,
            shop,
            vendors,
            include_key: notify.include_key,
            give_up_after: TimeDelta::hours(notify.give_up_after_hours as i64),
            // The first tries come as fast as a fulfil call's; later ones an hour apart.
            retry: RetryPolicy {
                base: Duration::from_millis(settings.worker.backoff_base_ms),
                max: Duration::from_secs(3600),
            },
            poll: settings
                .worker
                .poll_interval()
                .min(Duration::from_millis(500)),
        }))
    }

    /// Sends due notices until `shutdown`, each on its own (at most `BATCH` at once), so a
    /// receiver that hangs holds up only its own notices. A database error waits a round.
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let slots = Arc::new(tokio::sync::Semaphore::new(BATCH as usize));
        loop {
            let free = slots.available_permits() as i64;
            let claimed = match free {
                0 => 0,
                _ => match outbox::claim_due(&this.db, free, this.lease_secs()).await {
                    Ok(due) => {
                        let claimed = due.len() as i64;
                        for notice in due {
                            let slot = Arc::clone(&slots).acquire_owned().await;
                            let this = Arc::clone(&this);
                            tokio::spawn(async move {
                                let _slot = slot;
                                if let Err(e) = this.deliver_one(&notice).await {
                                    tracing::warn!(notice = notice.id, error = %e, "cannot record a notice's delivery; it is sent again when its lease ends");
                                }
                            });
                        }
                        claimed
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the outbox; trying again");
                        0
                    }
                },
            };
            if claimed > 0 && claimed == free {
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(this.poll) => {}
            }
        }
    }

    /// A claimed notice is kept from other deliverers for longer than any receiver may take.
    fn lease_secs(&self) -> f64 {
        let longest = self.vendors.values().chain(&self.shop).map(|r| r.timeout);
        longest.max().unwrap_or_default().as_secs_f64() + LEASE_MARGIN_SECS
    }

    /// Sends one notice and records how it went.
    async fn deliver_one(&self, notice: &Notice) -> Result<(), sqlx::Error> {
        let delivery = self.deliver(notice).await;
        outbox::record_delivery(&self.db, notice.id, &delivery).await?;
        let outcome = match &delivery {
            Delivery::Sent { .. } => "sent",
            Delivery::Later { .. } => "retry",
            Delivery::Park { .. } => "parked",
        };
        metrics::counter!("keyrelay_notices_total", "outcome" => outcome).increment(1);
        match &delivery {
            Delivery::Park { error, .. } => {
                tracing::error!(notice = notice.id, target = %notice.target, event_type = %notice.event_type, %error, "notice parked; fix the receiver, then `keyrelay outbox retry {}`", notice.id)
            }
            Delivery::Later { error, .. } => {
                tracing::warn!(notice = notice.id, target = %notice.target, %error, "notice not delivered; trying again later")
            }
            Delivery::Sent { .. } => {}
        }
        Ok(())
    }

    async fn deliver(&self, notice: &Notice) -> Delivery {
        let receiver = match notice.vendor() {
            Some(name) => self.vendors.get(name),
            None => self.shop.as_ref(),
        };
        let Some(receiver) = receiver else {
            return self.later(notice, None, None, format!(
                "{} is not configured in this process (notify.url, or key_sources.NAME.revoke_url); it waits until a process that has it sends it",
                notice.target
            ));
        };
        let (body, key) = match self.body(notice) {
            Ok(made) => made,
            Err(why) => {
                return Delivery::Park {
                    status: None,
                    error: why,
                };
            }
        };
        let id = format!("keyrelay_notice_{}", notice.id);
        let request = match signed_post(&self.http, &receiver.url, &receiver.secret, &id, body) {
            Ok(request) => request,
            Err(error) => {
                return Delivery::Park {
                    status: None,
                    error,
                };
            }
        };
        let answer = request.timeout(receiver.timeout).send().await;
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) => {
                let error = format!("{} did not answer: {}", notice.target, describe_error(&e));
                return self.later(notice, None, None, error);
            }
        };
        let status = answer.status().as_u16();
        if let Some(redirect) = redirect_refused(&answer) {
            let error = format!("{} answered {status}, {redirect}", notice.target);
            return Delivery::Park {
                status: Some(status.into()),
                error,
            };
        }
        let wait = wait_hint(answer.headers());
        let text = match read_capped(answer, ANSWER_LIMIT).await {
            Ok(bytes) => {
                // A receiver that quotes the key back (an error naming it) does not get it
                // into the outbox or the log.
                let mut text = String::from_utf8_lossy(&bytes).into_owned();
                if let Some(key) = &key {
                    text = text.replace(key.reveal(), &key.masked());
                }
                printable(text.trim(), 300)
            }
            Err(ReadError::TooLarge { limit }) => {
                format!("(an answer over {limit} bytes, not read)")
            }
            Err(e) => e.to_string(),
        };
        judge(status, &text, &notice.target)
            .unwrap_or_else(|error| self.later(notice, Some(status.into()), wait, error))
    }

    /// Try again after the backoff, or park the notice once it has been owed too long.
    fn later(
        &self,
        notice: &Notice,
        status: Option<i32>,
        wait: Option<Duration>,
        error: String,
    ) -> Delivery {
        let now = Utc::now();
        if now - notice.owed_since > self.give_up_after {
            let hours = self.give_up_after.num_hours();
            return Delivery::Park {
                status,
                error: format!("{error}; gave up after trying for {hours} h"),
            };
        }
        let attempt = notice.attempts.max(1) as u32;
        let delay = self.retry.delay(attempt, wait, &mut rand::rng());
        let at = now + TimeDelta::from_std(delay).unwrap_or(TimeDelta::hours(1));
        Delivery::Later { at, status, error }
    }

    /// The notice's JSON body, with the key opened when it carries one (returned too, to keep
    /// it out of what the receiver answers).
    fn body(&self, notice: &Notice) -> Result<(String, Option<LicenseKey>), String> {
        let key = match (&notice.key_sealed, notice.key_id) {
            (Some(sealed), Some(key_id)) => {
                let vault = self
                    .vault
                    .as_deref()
                    .ok_or_else(crate::crypto::no_encryption_key)?;
                Some(crate::store::sealed::open_key(vault, key_id, sealed)?)
            }
            _ => None,
        };
        let mut data = notice.data.clone();
        let body = match notice.vendor() {
            Some(_) => {
                let action = match notice.event_type.as_str() {
                    "license_key.suspended" => "suspend",
                    "license_key.reinstated" => "reinstate",
                    _ => "revoke",
                };
                serde_json::json!({
                    "action": action,
                    "grant_id": data.get("grant_id"),
                    "customer_id": data.get("customer_id"),
                    "entitlement_id": data.get("entitlement_id"),
                    "key": key.as_ref().map(|k| k.reveal()),
                    "reason": data.get("reason"),
                })
            }
            None => {
                if let Some(key) = &key {
                    data["key"] = match self.include_key {
                        true => key.reveal().into(),
                        false => key.masked().into(),
                    };
                }
                serde_json::json!({
                    "type": notice.event_type,
                    "timestamp": notice.created_at.to_rfc3339(),
                    "data": data,
                })
            }
        };
        Ok((body.to_string(), key))
    }
}

/// What a receiver's answer means: `Ok` for sent or parked, `Err(message)` to try again.
pub fn judge(status: u16, text: &str, target: &str) -> Result<Delivery, String> {
    let said = match text.is_empty() {
        true => String::new(),
        false => format!(": {text}"),
    };
    match status {
        200..=299 => Ok(Delivery::Sent {
            status: status.into(),
        }),
        429 | 500..=599 | 408 => Err(format!("{target} answered {status}{said}")),
        _ => Ok(Delivery::Park {
            status: Some(status.into()),
            error: format!("{target} answered {status}{said}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_sends_server_trouble_retries_and_refusals_park() {
        assert_eq!(judge(204, "", "shop"), Ok(Delivery::Sent { status: 204 }));
        for status in [429, 500, 502, 503, 408] {
            assert!(judge(status, "busy", "shop").is_err(), "{status}");
        }
        for status in [400, 401, 404, 410, 422] {
            let Ok(Delivery::Park { status: s, error }) = judge(status, "no such key", "shop")
            else {
                panic!("{status} should park")
            };
            assert_eq!(s, Some(i32::from(status)));
            assert!(error.contains("no such key"), "{error}");
        }
    }
}
