//! The demo's last act: a customer is refunded after delivery. The refund reaches the vendor
//! that issued the key, the shop (a receiver that checks every notice's signature), and, for
//! a signed key, the signed revocation list an offline app checks.

use std::time::Duration;

use crate::dodo::Grant;
use crate::harness::LocalStack;
use crate::sandbox::shop::ShopReceiver;

use super::{SIGNED, VENDOR};

/// Refunds one grant of the vendor's pool and one of the signed pool, waits until every
/// notice is delivered, and says what reached whom; whether all of it did.
pub(super) async fn refund(
    stack: &LocalStack,
    shop: &ShopReceiver,
    public_key: Option<&str>,
) -> anyhow::Result<bool> {
    let sandbox = &stack.sandbox.sandbox;
    let url = stack.webhook_url.clone().expect("role all serves webhooks");
    let first = |entitlement: &str| -> Option<Grant> {
        sandbox
            .grants()
            .into_iter()
            .find(|g| g.entitlement_id == entitlement && g.license_key.is_some())
    };
    let (Some(vendor), Some(signed)) = (first(VENDOR), first(SIGNED)) else {
        println!("  refund                      (too few grants sold to show one)");
        return Ok(true);
    };
    for grant in [&vendor, &signed] {
        let revoked = sandbox
            .revoke(&grant.id, "refund")
            .expect("a sandbox grant");
        let hook = sandbox.webhook_for(&revoked, "entitlement_grant.revoked");
        let status = sandbox.send_webhook(&url, &hook).await?;
        anyhow::ensure!(status == 200, "keyrelay answered {status} to a refund");
    }
    let drained = wait_for_outbox(stack).await?;
    let vendor_key = vendor.key_value().unwrap_or_default();
    let at_vendor = sandbox.vendor_standing(vendor_key).as_deref() == Some("revoked");
    let told: Vec<String> = shop
        .of_type("license_key.revoked")
        .iter()
        .filter_map(|n| n.data["grant_id"].as_str().map(str::to_string))
        .collect();
    let shop_told = [&vendor, &signed].iter().all(|g| told.contains(&g.id));
    let (requests, forged) = shop.requests();
    let listed = on_revocation_list(&url, public_key, &signed).await?;
    let mark = |yes: bool| if yes { "yes" } else { "NO" };
    println!(
        "\n  refund after delivery       grants {} (vendor pool) and {} (signed pool) refunded at Dodo",
        vendor.id, signed.id
    );
    println!(
        "    the vendor revoked its license             {}",
        mark(at_vendor)
    );
    println!(
        "    the shop heard license_key.revoked         {} ({} notices in all, {} failed its signature check)",
        mark(shop_told),
        shop.notices().len(),
        forged
    );
    println!(
        "    the signed key is on the revocation list   {}{}",
        mark(listed.is_some()),
        listed.map_or(String::new(), |seq| format!(
            " (list #{seq}, signature checked; `keys verify --revocations` refuses the key)"
        ))
    );
    let ok = drained && at_vendor && shop_told && forged == 0 && listed.is_some();
    if !ok {
        println!(
            "    ({requests} requests reached the shop; see `keyrelay outbox list` with --keep-database)"
        );
    }
    Ok(ok)
}

/// Waits (at most 30 s) until no notice is pending; false if some still are.
async fn wait_for_outbox(stack: &LocalStack) -> anyhow::Result<bool> {
    for _ in 0..300 {
        if crate::store::outbox::backlog(&stack.db).await?.pending == 0 {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(false)
}

/// The list's sequence number if the signed list keyrelay serves checks out under the
/// demo's public key and names `grant`.
async fn on_revocation_list(
    webhook_url: &str,
    public_key: Option<&str>,
    grant: &Grant,
) -> anyhow::Result<Option<i64>> {
    let Some(public_key) = public_key else {
        return Ok(None);
    };
    let public = crate::sources::sign::PublicKeys::from_base64(public_key)?;
    let list_url = webhook_url.replace("/webhooks/dodo", "/signing-keys/revoked");
    let served = reqwest::get(&list_url).await?.bytes().await?;
    let Ok(list) = crate::sources::revocations::verify(&served, &public) else {
        return Ok(None);
    };
    let key = grant.key_value().unwrap_or_default();
    let payload = crate::sources::sign::verify(key, &public, None, chrono::Utc::now()).ok();
    let named = payload.is_some_and(|p| list.find(&p.grant_id).is_some());
    Ok(named.then_some(list.sequence))
}
