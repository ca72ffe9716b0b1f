//! Low-stock alerts: when a pool's available keys drop below its threshold, warn once per
//! restock — in the log, as a metric, and as a JSON POST (with a Slack-compatible `text`) to
//! `alerts.webhook_url` if set. Sending retries a few times in the background and never blocks
//! fulfillment.

use std::time::Duration;

use crate::db::Db;

use crate::backoff::RetryPolicy;

pub use crate::store::stock::LowStock;

/// POST attempts per alert.
const SEND_ATTEMPTS: u32 = 4;

#[derive(Debug, Clone)]
pub struct Alerter {
    http: reqwest::Client,
    webhook_url: Option<String>,
    first_retry: Duration,
}

impl LowStock {
    fn text(&self) -> String {
        format!(
            "keyrelay: pool `{}` ({}) is low on keys: {} available, threshold {}. Import more with `keyrelay pool import {} FILE`.",
            self.pool, self.entitlement_id, self.available, self.threshold, self.pool
        )
    }
}

impl Alerter {
    pub fn new(webhook_url: Option<String>) -> Alerter {
        Alerter {
            http: crate::outbound::client()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("reqwest client"),
            webhook_url,
            first_retry: Duration::from_secs(1),
        }
    }

    /// Checks the pools of `entitlements` and alerts for each that just went low, telling the
    /// shop too (through the outbox) when `shop`. The flag set here is cleared by the next
    /// import that restocks the pool, so each restock alerts once.
    pub async fn check_low_stock(
        &self,
        db: &Db,
        entitlements: &[String],
        shop: bool,
    ) -> Result<Vec<LowStock>, sqlx::Error> {
        let low = crate::store::stock::flag_low_stock(db, entitlements, shop).await?;
        for alert in &low {
            tracing::warn!(pool = %alert.pool, available = alert.available, threshold = alert.threshold, "pool is low on keys");
            metrics::counter!("keyrelay_low_stock_alerts_total", "pool" => alert.pool.clone())
                .increment(1);
            if let Some(url) = self.webhook_url.clone() {
                let (http, alert, first_retry) =
                    (self.http.clone(), alert.clone(), self.first_retry);
                tokio::spawn(async move { send(&http, &url, &alert, first_retry).await });
            }
        }
        Ok(low)
    }
}

async fn send(http: &reqwest::Client, url: &str, alert: &LowStock, first_retry: Duration) {
    let body = serde_json::json!({
        "text": alert.text(),
        "pool": alert.pool,
        "entitlement_id": alert.entitlement_id,
        "available": alert.available,
        "threshold": alert.threshold,
    });
    let backoff = RetryPolicy {
        base: first_retry,
        max: first_retry * 2u32.pow(SEND_ATTEMPTS),
    };
    for attempt in 1..=SEND_ATTEMPTS {
        match http.post(url).json(&body).send().await {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => tracing::warn!(
                status = r.status().as_u16(),
                attempt,
                "low-stock alert webhook refused"
            ),
            Err(e) => {
                let error = crate::outbound::describe_error(&e);
                tracing::warn!(%error, attempt, "low-stock alert webhook unreachable");
            }
        }
        let wait = backoff.delay(attempt, None, &mut rand::rng());
        tokio::time::sleep(wait).await;
    }
    tracing::error!(pool = %alert.pool, "gave up sending the low-stock alert; check alerts.webhook_url");
}
