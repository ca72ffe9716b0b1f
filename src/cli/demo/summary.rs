//! The demo's summary: what keyrelay did, checked against what the sandbox (Dodo's side and
//! the license vendor's) holds.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::dodo::Grant;
use crate::domain::JobState;
use crate::harness::LocalStack;
use crate::sandbox::{FulfillRecord, License};
use crate::store::read;

use super::sale::Sold;
use super::verifiers::Checked;
use super::{DemoOptions, SIGNED, VENDOR, ms};

/// From keyrelay answering each grant's webhook to its first call to Dodo for it, sorted.
fn pickup_latencies(log: &[FulfillRecord], answered: &HashMap<String, Instant>) -> Vec<Duration> {
    let mut first_request: HashMap<&str, Instant> = HashMap::new();
    for r in log {
        first_request
            .entry(r.grant_id.as_str())
            .or_insert(r.received);
    }
    let mut pickup: Vec<Duration> = answered
        .iter()
        .filter_map(|(g, at)| {
            first_request
                .get(g.as_str())
                .map(|f| f.saturating_duration_since(*at))
        })
        .collect();
    pickup.sort();
    pickup
}

/// (grants of the sign pool whose key verifies with `public_key` and names the grant, grants
/// of the sign pool).
fn signed_keys_verified(
    grants: &[Grant],
    public_key: Option<&str>,
) -> anyhow::Result<(usize, usize)> {
    let public_key = public_key
        .map(crate::sources::sign::PublicKeys::from_base64)
        .transpose()?;
    let signed: Vec<&Grant> = grants
        .iter()
        .filter(|g| g.entitlement_id == SIGNED)
        .collect();
    let verified = signed
        .iter()
        .filter(|g| {
            let payload = g
                .key_value()
                .zip(public_key.as_ref())
                .and_then(|(key, pk)| {
                    crate::sources::sign::verify(key, pk, None, chrono::Utc::now()).ok()
                });
            payload.is_some_and(|p| p.grant_id == g.id)
        })
        .count();
    Ok((verified, signed.len()))
}

/// The signed keys checked by the verifiers apps use, against the JWK Set keyrelay serves.
async fn checked_by_apps(
    stack: &LocalStack,
    grants: &[Grant],
) -> anyhow::Result<Vec<(&'static str, Checked)>> {
    let keys: Vec<(String, String)> = grants
        .iter()
        .filter(|g| g.entitlement_id == SIGNED)
        .filter_map(|g| Some((g.id.clone(), g.key_value()?.to_string())))
        .collect();
    let Some(webhook_url) = &stack.webhook_url else {
        return Ok(Vec::new());
    };
    let jwks_url = webhook_url.replace("/webhooks/dodo", "/.well-known/jwks.json");
    let jwks: serde_json::Value = reqwest::get(&jwks_url).await?.json().await?;
    // The verifiers are processes waited for: off the runtime that serves keyrelay.
    Ok(tokio::task::spawn_blocking(move || super::verifiers::check(&keys, &jwks)).await?)
}

/// (grants of the http pool that hold the license the vendor issued for them, grants of the
/// http pool).
fn vendor_keys_matched(grants: &[Grant], licenses: &[License]) -> (usize, usize) {
    let vendor: Vec<&Grant> = grants
        .iter()
        .filter(|g| g.entitlement_id == VENDOR)
        .collect();
    let matched = vendor
        .iter()
        .filter(|g| {
            licenses
                .iter()
                .any(|l| l.grant_id == g.id && g.key_value() == Some(l.key.as_str()))
        })
        .count();
    (matched, vendor.len())
}

/// Prints the summary; whether every grant got exactly one key and no key went to two.
pub(super) async fn report(
    stack: &LocalStack,
    options: &DemoOptions,
    sold: &Sold,
    counts: &HashMap<JobState, i64>,
    elapsed: Duration,
) -> anyhow::Result<bool> {
    let sandbox = &stack.sandbox.sandbox;
    let log = sandbox.fulfill_log();
    let pickup = pickup_latencies(&log, &sold.answered);
    let (retried, ours_match) = read::demo_figures(&stack.db).await?;
    let pools = crate::pool::list_pools(&stack.db).await?;
    let demo_pool = pools
        .iter()
        .find(|p| p.name == "demo-pro")
        .expect("the demo's list pool");
    let faults = log
        .iter()
        .filter(|r| r.status != 200 && r.status != 409)
        .count();
    // Cross-check with Dodo's side: every grant delivered once, no key twice.
    let grants = sandbox.grants();
    let delivered_at_dodo = grants.iter().filter(|g| g.license_key.is_some()).count();
    let distinct_keys: HashSet<&str> = grants.iter().filter_map(|g| g.key_value()).collect();
    let (signed_ok, signed) = signed_keys_verified(&grants, options.public_key.as_deref())?;
    let licenses = sandbox.vendor_licenses();
    let (vendor_ok, vendor_grants) = vendor_keys_matched(&grants, &licenses);
    let by_apps = checked_by_apps(stack, &grants).await?;

    println!("\nSummary ({:.1} s)", elapsed.as_secs_f64());
    println!("  grants sold                 {}", options.grants);
    println!(
        "  webhooks sent               {} (duplicates ignored)",
        sold.webhooks_sent
    );
    println!(
        "  delivered                   {}",
        counts[&JobState::Delivered]
    );
    println!("  needed retries              {retried}");
    println!(
        "  failed                      {}",
        counts[&JobState::Failed]
    );
    println!(
        "  faults injected             {faults} of {} fulfill calls",
        log.len()
    );
    println!(
        "  keys left                   {} available, {} rejected (already at Dodo)",
        demo_pool.available, demo_pool.rejected
    );
    println!(
        "  pickup latency              p50 {}  p90 {}  p99 {}",
        ms(&pickup, 50),
        ms(&pickup, 90),
        ms(&pickup, 99)
    );
    println!(
        "                              from keyrelay answering a grant's webhook to its first call to Dodo for it.\n\
         \x20                             Injected faults lengthen it: each 429 makes every worker wait out Dodo's\n\
         \x20                             1 s Retry-After, and grants sold meanwhile wait too. `keyrelay bench\n\
         \x20                             latency` measures an idle keyrelay with no faults (a few ms)."
    );
    println!(
        "  at Dodo                     {delivered_at_dodo} grants hold a key, {} distinct keys",
        distinct_keys.len()
    );
    println!(
        "  signed keys                 {signed_ok} of {signed} verify with the demo's public key and name their grant"
    );
    for (name, checked) in &by_apps {
        match checked {
            Checked::Ran(valid, of) => {
                println!("    {name:<26}{valid} of {of} valid against /.well-known/jwks.json")
            }
            Checked::NotRun(why) => println!("    {name:<26}not run: {why}"),
        }
    }
    println!(
        "  vendor keys                 {vendor_ok} of {vendor_grants} grants hold the license the vendor issued for them ({} issued)",
        licenses.len()
    );

    let ok = counts[&JobState::Delivered] as usize == options.grants
        && delivered_at_dodo == options.grants
        && distinct_keys.len() == options.grants
        && ours_match as usize == options.grants
        && signed_ok == signed
        && by_apps
            .iter()
            .all(|(_, c)| !matches!(c, Checked::Ran(valid, of) if valid != of))
        && vendor_ok == vendor_grants;
    println!(
        "\n  {}",
        if ok {
            "every grant got exactly one key, and no key went to two grants"
        } else {
            "NOT every grant was delivered exactly once: see `keyrelay jobs list` with --keep-database"
        }
    );
    Ok(ok)
}
