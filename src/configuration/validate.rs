//! Checks that run when settings load, one function per concern; each error names the
//! setting and says what to do.

use anyhow::{Context, bail};
use secrecy::ExposeSecret;

use super::{MIN_ADMIN_TOKEN_LEN, Settings, redact_url};
use crate::crypto::parse_webhook_secrets;

impl Settings {
    pub(super) fn validate(&self) -> anyhow::Result<()> {
        self.database.target()?;
        self.database.direct_target()?;
        if self.database.max_connections < 2 {
            bail!("database.max_connections must be at least 2");
        }
        self.validate_urls()?;
        if let Some(secret) = &self.webhook.secret {
            parse_webhook_secrets(secret.expose_secret())?;
        }
        self.validate_tokens()?;
        self.dodo.validate_rate_limit()?;
        for (name, source) in &self.key_sources {
            source.validate(name).map_err(anyhow::Error::msg)?;
        }
        self.keys.signing_key()?;
        if self.keys.encryption_keys.is_some() {
            self.keys.vault()?;
        }
        self.validate_worker()?;
        self.validate_http()?;
        self.validate_notify()?;
        if self.retention.days < 2 {
            bail!("retention.days must be at least 2 (Dodo retries webhooks for about 28 hours)");
        }
        Ok(())
    }

    fn validate_urls(&self) -> anyhow::Result<()> {
        if let Some(url) = &self.dodo.base_url {
            let parsed = url::Url::parse(url)
                .context("dodo.base_url (DODO_PAYMENTS_BASE_URL) is not a valid URL")?;
            if !matches!(parsed.scheme(), "http" | "https") {
                bail!(
                    "dodo.base_url (DODO_PAYMENTS_BASE_URL) must be an http(s) URL, not {}",
                    redact_url(url)
                );
            }
        }
        if let Some(url) = &self.alerts.webhook_url {
            let parsed = url::Url::parse(url).ok();
            if !parsed.is_some_and(|u| matches!(u.scheme(), "http" | "https")) {
                bail!(
                    "alerts.webhook_url is not a valid http(s) URL (not shown: a webhook URL is a credential)"
                );
            }
        }
        Ok(())
    }

    fn validate_notify(&self) -> anyhow::Result<()> {
        let notify = &self.notify;
        let Some(url) = &notify.url else {
            if notify.secret.is_some() {
                bail!(
                    "notify.secret is set but notify.url is not: set KEYRELAY_NOTIFY_URL to the shop's endpoint, or remove the secret"
                );
            }
            return Ok(());
        };
        if !url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https")) {
            bail!(
                "notify.url (KEYRELAY_NOTIFY_URL) is not a valid http(s) URL (not shown: it may hold a credential)"
            );
        }
        let Some(secret) = &notify.secret else {
            bail!(
                "notify.url is set but notify.secret is not: the shop verifies every notice with it; set KEYRELAY_NOTIFY_SECRET to whsec_ followed by 32 random bytes in base64 (`openssl rand -base64 32`), and give the shop the same secret"
            );
        };
        parse_webhook_secrets(secret.expose_secret()).map_err(|_| {
            anyhow::anyhow!(
                "notify.secret (KEYRELAY_NOTIFY_SECRET) is not whsec_ followed by base64"
            )
        })?;
        if notify.give_up_after_hours == 0 {
            bail!("notify.give_up_after_hours must be at least 1");
        }
        if !(1..=300).contains(&notify.timeout_secs) {
            bail!("notify.timeout_secs must be between 1 and 300");
        }
        Ok(())
    }

    fn validate_tokens(&self) -> anyhow::Result<()> {
        if matches!(&self.admin.token, Some(t) if t.expose_secret().trim().chars().count() < MIN_ADMIN_TOKEN_LEN)
        {
            bail!(
                "admin.token (KEYRELAY_ADMIN_TOKEN) is shorter than {MIN_ADMIN_TOKEN_LEN} characters; make one with `openssl rand -hex 32`, or unset it to turn the dashboard off"
            );
        }
        if let Some(api) = &self.api.token {
            let api = api.expose_secret().trim();
            if api.chars().count() < MIN_ADMIN_TOKEN_LEN {
                bail!(
                    "api.token (KEYRELAY_API_TOKEN) is shorter than {MIN_ADMIN_TOKEN_LEN} characters; make one with `openssl rand -hex 32`, or unset it to turn the shop API off"
                );
            }
            if self
                .admin
                .token
                .as_ref()
                .is_some_and(|a| a.expose_secret().trim() == api)
            {
                bail!(
                    "api.token (KEYRELAY_API_TOKEN) is the same as admin.token (KEYRELAY_ADMIN_TOKEN); the shop's read-only token must not open the dashboard, so make another with `openssl rand -hex 32`"
                );
            }
        }
        Ok(())
    }

    fn validate_worker(&self) -> anyhow::Result<()> {
        let worker = &self.worker;
        if worker.concurrency == 0 {
            bail!("worker.concurrency must be at least 1");
        }
        if worker.max_attempts == 0 {
            bail!("worker.max_attempts must be at least 1");
        }
        if worker.backoff_base_ms == 0 || worker.backoff_max_ms < worker.backoff_base_ms {
            bail!("worker.backoff_base_ms must be at least 1 and at most worker.backoff_max_ms");
        }
        if worker.lease_secs == 0 {
            bail!("worker.lease_secs must be at least 1");
        }
        Ok(())
    }

    fn validate_http(&self) -> anyhow::Result<()> {
        self.http.trusted_proxies()?;
        if let Some(bind) = &self.http.metrics_bind
            && bind == &self.http.bind
        {
            bail!(
                "http.metrics_bind is the same address as http.bind; give /metrics its own address (such as 127.0.0.1:9090), or unset it to serve /metrics on http.bind"
            );
        }
        if self.http.body_timeout_secs == 0 {
            bail!("http.body_timeout_secs must be at least 1");
        }
        Ok(())
    }
}
