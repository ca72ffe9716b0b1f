//! `/sandbox/grants/{id}/…`: what happens to a grant after delivery, when the sandbox runs on
//! its own — a revocation with any of Dodo's reasons, a re-enabled key, a re-grant after a
//! subscription was on hold — each sending its webhook to `webhook_url` when given.

use actix_web::{HttpResponse, web};
use serde::Deserialize;

use super::Sandbox;
use crate::dodo::Grant;

#[derive(Debug, Deserialize)]
pub(super) struct Change {
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    webhook_url: Option<String>,
}

async fn answer(
    sandbox: &Sandbox,
    grant: Option<Grant>,
    event_type: &str,
    url: Option<&str>,
    refused: &str,
) -> HttpResponse {
    let Some(grant) = grant else {
        return HttpResponse::Conflict().json(serde_json::json!({ "message": refused }));
    };
    let status = match url {
        Some(url) => {
            let hook = sandbox.webhook_for(&grant, event_type);
            sandbox.send_webhook(url, &hook).await.ok()
        }
        None => None,
    };
    HttpResponse::Ok().json(serde_json::json!({ "grant": grant, "webhook_status": status }))
}

/// `POST /sandbox/grants/{id}/revoke` with `{"reason": "refund"}` (any of Dodo's reasons).
pub(super) async fn revoke(
    path: web::Path<String>,
    body: web::Json<Change>,
    sandbox: web::Data<Sandbox>,
) -> HttpResponse {
    let reason = body.reason.as_deref().unwrap_or("manual");
    let grant = sandbox.revoke(&path, reason);
    let url = body.webhook_url.as_deref();
    answer(
        &sandbox,
        grant,
        "entitlement_grant.revoked",
        url,
        "no such grant",
    )
    .await
}

/// `POST /sandbox/grants/{id}/reenable`: the key of a `license_key_disabled` grant is enabled
/// again, and the grant delivered again.
pub(super) async fn reenable(
    path: web::Path<String>,
    body: web::Json<Change>,
    sandbox: web::Data<Sandbox>,
) -> HttpResponse {
    let grant = sandbox.reenable(&path);
    let url = body.webhook_url.as_deref();
    let refused = "only a grant revoked with license_key_disabled can be re-enabled";
    answer(&sandbox, grant, "entitlement_grant.delivered", url, refused).await
}

/// `POST /sandbox/grants/{id}/regrant`: the on-hold subscription's payment succeeded; a new
/// pending grant of the same subscription.
pub(super) async fn regrant(
    path: web::Path<String>,
    body: web::Json<Change>,
    sandbox: web::Data<Sandbox>,
) -> HttpResponse {
    let grant = sandbox.regrant(&path);
    let url = body.webhook_url.as_deref();
    let refused = "only a grant revoked with subscription_on_hold is granted again";
    answer(&sandbox, grant, "entitlement_grant.created", url, refused).await
}
