//! `keyrelay sandbox`: the Dodo stand-in on its own, for trying keyrelay by hand.

use base64::Engine;

use crate::sandbox::{RunningSandbox, Sandbox};

pub const DEFAULT_API_KEY: &str = "sk_sandbox_keyrelay";
pub const DEFAULT_WEBHOOK_SECRET: &str = "whsec_c2FuZGJveC13ZWJob29rLXNlY3JldC1rZXlyZWxheQ==";

pub async fn run(bind: &str, api_key: &str, webhook_secret: &str) -> anyhow::Result<()> {
    let key = crate::configuration::parse_webhook_secrets(webhook_secret)?
        .into_iter()
        .next()
        .expect("at least one secret");
    let listener = std::net::TcpListener::bind(bind)
        .map_err(|e| anyhow::anyhow!("cannot listen on {bind}: {e}"))?;
    let running = RunningSandbox::start(Sandbox::new(api_key, &key), listener)?;
    println!("Dodo sandbox listening on {}", running.base_url);
    println!("Point keyrelay at it with:");
    println!("  DODO_PAYMENTS_BASE_URL={}", running.base_url);
    println!("  DODO_PAYMENTS_API_KEY={api_key}");
    println!(
        "  DODO_PAYMENTS_WEBHOOK_KEY=whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(&key)
    );
    println!(
        "Sell grants:  curl -X POST {}/sandbox/sell -H 'content-type: application/json' \\",
        running.base_url
    );
    println!(
        "                -d '{{\"entitlement_id\":\"ent_pro\",\"count\":5,\"webhook_url\":\"http://127.0.0.1:8080/webhooks/dodo\"}}'"
    );
    println!(
        "Inject faults: curl -X PUT {}/sandbox/faults -H 'content-type: application/json' \\",
        running.base_url
    );
    println!(
        "                -d '{{\"server_error\":0.2,\"apply_then_500\":0.1,\"latency_ms\":50}}'"
    );
    println!("Ctrl-C stops it.");
    tokio::signal::ctrl_c().await?;
    running.stop().await;
    Ok(())
}
