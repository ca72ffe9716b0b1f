//! keyrelay and the sandbox running together in this process, on local ports: what the demo,
//! the benchmark and the tests start.

use crate::db::Db;
use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::configuration::{Settings, parse_webhook_secrets};
use crate::sandbox::{RunningSandbox, Sandbox};
use crate::startup::{Application, Role};

pub struct LocalStack {
    /// Settings that point at this stack's database and sandbox.
    pub settings: Settings,
    pub db: Db,
    pub sandbox: RunningSandbox,
    /// `POST` webhooks here (web roles).
    pub webhook_url: Option<String>,
    shutdown: CancellationToken,
    app: JoinHandle<anyhow::Result<()>>,
}

/// The key source name of the sandbox's vendor (`pool add … --source http --endpoint`).
/// (An underscore, not a hyphen, so its settings can be shell variables:
/// `KEYRELAY_KEY_SOURCES__SANDBOX_VENDOR__URL`.)
pub const SANDBOX_VENDOR: &str = "sandbox_vendor";

/// Points `settings` at a fresh sandbox on a free local port and returns it running.
/// The sandbox gets a random API key; it signs webhooks with the configured secret, if any.
pub fn start_sandbox(settings: &mut Settings) -> anyhow::Result<RunningSandbox> {
    let api_key = format!("sk_sbx_{:016x}", rand::random::<u64>());
    // A configured secret is kept (the sandbox signs with the first one); else a random one.
    let webhook_key = match &settings.webhook.secret {
        Some(secret) => parse_webhook_secrets(secret.expose_secret())?.remove(0),
        None => {
            let key: [u8; 24] = rand::random();
            settings.webhook.secret = Some(SecretString::from(format!(
                "whsec_{}",
                base64::engine::general_purpose::STANDARD.encode(key)
            )));
            key.to_vec()
        }
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let sandbox = RunningSandbox::start(Sandbox::new(&api_key, &webhook_key), listener)?;
    settings.dodo.base_url = Some(sandbox.base_url.clone());
    settings.dodo.api_key = Some(SecretString::from(api_key));
    // The sandbox's key vendor, for `http` pools.
    settings.key_sources.insert(
        SANDBOX_VENDOR.into(),
        crate::configuration::KeySourceSettings {
            url: format!("{}/vendor/licenses", sandbox.base_url),
            secret: settings.webhook.secret.clone().expect("set above"),
            key_pointer: "/license/key".into(),
            timeout_secs: 2,
            revoke_url: Some(format!("{}/vendor/revocations", sandbox.base_url)),
        },
    );
    Ok(sandbox)
}

impl LocalStack {
    /// Starts a sandbox and keyrelay (`role`) on the already migrated database in `settings`.
    pub async fn start(mut settings: Settings, role: Role) -> anyhow::Result<LocalStack> {
        let sandbox = start_sandbox(&mut settings)?;
        settings.http.bind = "127.0.0.1:0".into();
        settings.database.migrate_on_start = false;
        let app = Application::build(&settings, role).await?;
        let webhook_url = app
            .port()
            .map(|p| format!("http://127.0.0.1:{p}/webhooks/dodo"));
        let db = app.db().clone();
        let shutdown = app.shutdown_token();
        let app = tokio::spawn(app.run_until_stopped());
        Ok(LocalStack {
            settings,
            db,
            sandbox,
            webhook_url,
            shutdown,
            app,
        })
    }

    /// Stops keyrelay gracefully, then the sandbox.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.app.await??;
        self.sandbox.stop().await;
        Ok(())
    }
}
