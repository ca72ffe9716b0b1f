//! The demo's pools (a list pool with one key Dodo already holds, and one pool each for the
//! generate, sign and http sources) and the faults the sandbox injects.

use crate::configuration::Settings;
use crate::domain::LicenseKey;
use crate::harness::LocalStack;
use crate::pool::{NewPool, add_pool, import_keys, keyfile::ParsedKeys};
use crate::sandbox::{FaultRates, Sandbox};
use crate::sources::Source;

use super::{ENTITLEMENT, GENERATED, SIGNED, VENDOR};

/// Creates the demo's four pools, with enough keys in the list pool for `grants` sales.
pub(super) async fn add_pools(
    stack: &LocalStack,
    settings: &Settings,
    grants: usize,
) -> anyhow::Result<()> {
    let sandbox = &stack.sandbox.sandbox;
    let extra = grants / 5 + 5;
    let keys: Vec<LicenseKey> = (0..grants + extra)
        .map(|i| {
            LicenseKey::parse(&format!(
                "DEMO-{:04X}-{:04X}-{:04}",
                rand::random::<u16>(),
                rand::random::<u16>(),
                i
            ))
        })
        .collect::<Result<_, _>>()?;
    // Dodo already holds the first key: keyrelay must reject it and use the next.
    sandbox.add_existing_key(keys[0].reveal());
    add_pool(
        &stack.db,
        &NewPool {
            name: "demo-pro".into(),
            entitlement_id: ENTITLEMENT.into(),
            low_stock: 5,
            ..Default::default()
        },
    )
    .await?;
    let parsed = ParsedKeys {
        keys,
        ..Default::default()
    };
    let report = import_keys(
        &stack.db,
        &settings.keys.vault()?,
        "demo-pro",
        &parsed,
        false,
        |_| {},
    )
    .await?;
    println!(
        "  pool       demo-pro (list): imported {} keys (one of them already exists at Dodo)",
        report.imported
    );
    for (name, entitlement, source, template) in [
        (
            "demo-gen",
            GENERATED,
            Source::Generate,
            Some("GEN-XXXXX-XXXXX-XXXXX-XXXXX"),
        ),
        ("demo-signed", SIGNED, Source::Sign, None),
        ("demo-vendor", VENDOR, Source::Http, None),
    ] {
        let new = NewPool {
            name: name.into(),
            entitlement_id: entitlement.into(),
            source: Some(source),
            template: template.map(str::to_string),
            endpoint: (source == Source::Http).then(|| crate::harness::SANDBOX_VENDOR.into()),
            ..Default::default()
        };
        add_pool(&stack.db, &new).await?;
    }
    println!("  pool       demo-gen (generate): keys made from GEN-XXXXX-XXXXX-XXXXX-XXXXX");
    println!("  pool       demo-signed (sign): Ed25519-signed keys an app checks offline");
    println!("  pool       demo-vendor (http): keys issued by the sandbox's license vendor");
    println!("             (one sale in ten goes to each of these three)\n");

    Ok(())
}

/// Sets the sandbox's fault rates, and says what they are.
pub(super) fn inject_faults(sandbox: &Sandbox) {
    sandbox.set_fault_rates(FaultRates {
        latency_ms: 15,
        server_error: 0.08,
        apply_then_500: 0.05,
        rate_limited: 0.01,
        retry_after_secs: 1,
    });
    println!("  faults     8% 500, 5% applied-then-500, 1% 429 (Retry-After 1 s), 15 ms latency");
    println!("  webhooks   every 10th is delivered twice, as Dodo's retries do\n");
}
