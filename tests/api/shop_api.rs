//! The shop's read-only API: its own token, masked keys only, pages, and every answer checked
//! against `docs/openapi.json`.

use keyrelay::startup::Role;

use crate::helpers::{ENT, TestApp};

const API_TOKEN: &str = "shop-api-token-for-tests-0123456789abc";
const ADMIN_TOKEN: &str = "admin-token-for-shop-tests-0123456789";

fn openapi() -> serde_json::Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap())
        .expect("docs/openapi.json is JSON")
}

/// Checks `body` against the schema the OpenAPI document gives for `route` answering `status`.
fn conforms(doc: &serde_json::Value, route: &str, status: u16, body: &serde_json::Value) {
    let answer = &doc["paths"][route]["get"]["responses"][status.to_string()];
    assert!(
        answer.is_object(),
        "{route} answered {status}, which docs/openapi.json does not document"
    );
    // The document itself is the root, so `#/components/...` references resolve.
    let mut schema = doc.clone();
    schema["$ref"] = answer["content"]["application/json"]["schema"]["$ref"].clone();
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(&schema)
        .expect("the response schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{route} {status}: {errors:?}\n{body:#}");
}

struct Shop<'a> {
    app: &'a TestApp,
    base: String,
    doc: serde_json::Value,
}

impl Shop<'_> {
    /// GETs `path` (matching the documented `route`) with `token`, checks the answer against
    /// the document, and returns status and body.
    async fn get(&self, route: &str, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
        let mut request = self.app.http.get(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        assert_eq!(
            response.headers()["cache-control"],
            "no-store",
            "{path}: answers about customers are not cached"
        );
        let text = response.text().await.unwrap();
        let body: serde_json::Value = serde_json::from_str(&text).expect("a JSON answer");
        conforms(&self.doc, route, status, &body);
        (status, body)
    }
}

#[tokio::test]
async fn the_shop_api_is_off_without_its_token() {
    let app = TestApp::spawn_with(Role::Web, |s| {
        s.admin.token = Some(ADMIN_TOKEN.to_string().into())
    })
    .await;
    let base = app.url.trim_end_matches("/webhooks/dodo").to_string();
    let r = app
        .http
        .get(format!("{base}/api/v1/grants/grant_x"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    app.stop().await;
}

#[tokio::test]
async fn the_shop_sees_status_and_masked_keys_with_its_own_token_only() {
    let app = TestApp::spawn_with(Role::All, |s| {
        s.api.token = Some(API_TOKEN.to_string().into());
        s.admin.token = Some(ADMIN_TOKEN.to_string().into());
    })
    .await;
    // One key: the customer's first grant gets it, the second waits for keys.
    app.add_pool("pro", ENT, &["SHOP-AAAA-BBBB-7QX4"]).await;
    let customer = "cus_shop_1";
    let first = app.sandbox.create_grant(ENT, Some(customer));
    let hook = app.sandbox.webhook_for(&first, "entitlement_grant.created");
    assert_eq!(app.post(&hook).await.status(), 200);
    app.wait_delivered(1).await;
    let second = app.sandbox.create_grant(ENT, Some(customer));
    let hook = app
        .sandbox
        .webhook_for(&second, "entitlement_grant.created");
    assert_eq!(app.post(&hook).await.status(), 200);
    crate::helpers::wait_until(
        "the second grant waits for keys",
        std::time::Duration::from_secs(10),
        || async { app.job_state(&second.id).await == keyrelay::domain::JobState::WaitingForKeys },
    )
    .await;
    let shop = Shop {
        app: &app,
        base: app.url.trim_end_matches("/webhooks/dodo").to_string(),
        doc: openapi(),
    };
    let one = "/api/v1/grants/{grant_id}";
    let list = "/api/v1/customers/{customer_id}/grants";

    // The right token only: none, the admin token and a wrong one are all 401.
    let path = format!("/api/v1/grants/{}", first.id);
    for token in [None, Some(ADMIN_TOKEN), Some("nope")] {
        let (status, body) = shop.get(one, &path, token).await;
        assert_eq!(status, 401, "{token:?}: {body}");
    }
    // ...and the shop's token does not open the admin API.
    let admin = app
        .http
        .get(format!("{}/admin/api/stats", shop.base))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 401);

    let (status, grant) = shop.get(one, &path, Some(API_TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(grant["status"], "delivered");
    assert_eq!(grant["masked_key"], "SHOP-****-****-7QX4");
    assert_eq!(
        grant["payment_id"],
        first.payment_id.clone().unwrap().as_str()
    );
    assert!(grant["delivered_at"].is_string());

    let (status, page) = shop
        .get(
            list,
            &format!("/api/v1/customers/{customer}/grants"),
            Some(API_TOKEN),
        )
        .await;
    assert_eq!(status, 200);
    let grants = page["grants"].as_array().unwrap();
    assert_eq!(grants.len(), 2);
    assert_eq!(grants[0]["grant_id"], second.id.as_str(), "newest first");
    assert_eq!(grants[0]["status"], "on_its_way");
    assert_eq!(grants[0]["state"], "waiting_for_keys");
    assert!(grants[0]["masked_key"].is_null());
    assert!(page["next"].is_null());
    assert!(
        !page.to_string().contains("SHOP-AAAA-BBBB-7QX4"),
        "a key is never returned in full"
    );

    // Pages of one.
    let (_, first_page) = shop
        .get(
            list,
            &format!("/api/v1/customers/{customer}/grants?limit=1"),
            Some(API_TOKEN),
        )
        .await;
    let next = first_page["next"]
        .as_str()
        .expect("a next page")
        .to_string();
    let (_, second_page) = shop
        .get(
            list,
            &format!("/api/v1/customers/{customer}/grants?limit=1&after={next}"),
            Some(API_TOKEN),
        )
        .await;
    assert_eq!(second_page["grants"][0]["grant_id"], first.id.as_str());

    // A customer keyrelay does not know has no grants; bad input is a 400 that says why.
    let (status, empty) = shop
        .get(
            list,
            "/api/v1/customers/cus_unknown/grants",
            Some(API_TOKEN),
        )
        .await;
    assert_eq!(
        (status, empty["grants"].as_array().unwrap().len()),
        (200, 0)
    );
    for query in ["limit=0", "limit=lots", "after=garbage"] {
        let (status, body) = shop
            .get(
                list,
                &format!("/api/v1/customers/{customer}/grants?{query}"),
                Some(API_TOKEN),
            )
            .await;
        assert_eq!(status, 400, "{query}: {body}");
    }
    let (status, body) = shop
        .get(one, "/api/v1/grants/grant_nobody", Some(API_TOKEN))
        .await;
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("grant_nobody"));
    app.stop().await;
}

#[tokio::test]
async fn the_shop_sees_a_suspended_key_as_suspended_and_a_refunded_one_as_cancelled() {
    let app = TestApp::spawn_with(Role::All, |s| {
        s.api.token = Some(API_TOKEN.to_string().into())
    })
    .await;
    app.add_pool("pro", ENT, &["SUSP-AAAA-BBBB-1111", "SUSP-AAAA-BBBB-2222"])
        .await;
    let grants = app.sell_many(2).await;
    app.wait_delivered(2).await;
    let shop = Shop {
        app: &app,
        base: app.url.trim_end_matches("/webhooks/dodo").to_string(),
        doc: openapi(),
    };
    for (grant, reason) in grants.iter().zip(["subscription_on_hold", "refund"]) {
        let revoked = app.sandbox.revoke(grant, reason).unwrap();
        let hook = app
            .sandbox
            .webhook_for(&revoked, "entitlement_grant.revoked");
        assert_eq!(app.post(&hook).await.status(), 200);
    }
    let one = "/api/v1/grants/{grant_id}";
    let (_, held) = shop
        .get(
            one,
            &format!("/api/v1/grants/{}", grants[0]),
            Some(API_TOKEN),
        )
        .await;
    assert_eq!(held["status"], "suspended");
    assert!(held["masked_key"].as_str().unwrap().contains("****"));
    let (_, refunded) = shop
        .get(
            one,
            &format!("/api/v1/grants/{}", grants[1]),
            Some(API_TOKEN),
        )
        .await;
    assert_eq!(refunded["status"], "cancelled");
    assert!(refunded["masked_key"].is_null());
    app.stop().await;
}
