//! `keyrelay sandbox`: the Dodo stand-in on its own, for trying keyrelay by hand.

use base64::Engine;

use crate::dodo::RateLimits;
use crate::sandbox::{RunningSandbox, Sandbox};

pub const DEFAULT_API_KEY: &str = "sk_sandbox_keyrelay";
pub const DEFAULT_WEBHOOK_SECRET: &str = "whsec_c2FuZGJveC13ZWJob29rLXNlY3JldC1rZXlyZWxheQ==";

/// `--rate-limit`: a tier name or `BURST/PER_MIN`.
pub fn parse_rate_limits(raw: &str) -> Result<RateLimits, String> {
    match raw {
        "tier0" => return Ok(RateLimits::TIER0),
        "tier1" => return Ok(RateLimits::TIER1),
        "tier2" => return Ok(RateLimits::TIER2),
        _ => {}
    }
    let numbers = raw
        .split_once('/')
        .and_then(|(b, m)| Some((b.trim().parse::<u32>().ok()?, m.trim().parse::<u32>().ok()?)))
        .filter(|(b, m)| *b >= 1 && b <= m);
    match numbers {
        Some((burst, per_min)) => Ok(RateLimits::new(burst, per_min)),
        None => Err(
            "use tier0, tier1, tier2, or BURST/PER_MIN with 1 <= BURST <= PER_MIN (e.g. 20/80)"
                .into(),
        ),
    }
}

pub async fn run(
    bind: &str,
    api_key: &str,
    webhook_secret: &str,
    rate_limit: Option<RateLimits>,
) -> anyhow::Result<()> {
    let key = crate::configuration::parse_webhook_secrets(webhook_secret)?
        .into_iter()
        .next()
        .expect("at least one secret");
    let listener = std::net::TcpListener::bind(bind)
        .map_err(|e| anyhow::anyhow!("cannot listen on {bind}: {e}"))?;
    let sandbox = Sandbox::new(api_key, &key);
    sandbox.enforce_rate_limits(rate_limit);
    let running = RunningSandbox::start(sandbox, listener)?;
    println!("Dodo sandbox listening on {}", running.base_url);
    if let Some(limits) = rate_limit {
        println!("Rate limits: {limits}; calls over them are answered 429");
    }
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
    println!(
        "Key vendor for http pools: [key_sources.NAME] url = \"{}/vendor/licenses\", secret = the webhook key above, key_pointer = \"/license/key\"",
        running.base_url
    );
    println!("Ctrl-C (or SIGTERM) stops it.");
    super::wait_for_stop_signal().await;
    running.stop().await;
    Ok(())
}
