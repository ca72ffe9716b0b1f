//! The admin API and dashboard: off without a token, bearer and session authentication, CSRF,
//! and an on-call engineer retrying a failed job in a real headless Chromium.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{ClientBuilder, Locator};
use keyrelay::domain::JobState;
use keyrelay::sandbox::Fault;
use keyrelay::startup::Role;

use crate::helpers::{ENT, TestApp, wait_until};

const TOKEN: &str = "admin-token-for-tests-0123456789";

async fn admin_app() -> TestApp {
    TestApp::spawn_with(Role::All, |s| {
        s.admin.token = Some(TOKEN.to_string().into())
    })
    .await
}

/// Sells a grant that Dodo refuses with 422, and waits until its job has failed.
async fn failed_grant(app: &TestApp) -> keyrelay::dodo::Grant {
    let grant = app.sandbox.create_grant(ENT, None);
    app.sandbox
        .script_faults(&grant.id, [Fault::Status { status: 422 }]);
    let hook = app.sandbox.webhook_for(&grant, "entitlement_grant.created");
    assert_eq!(app.post(&hook).await.status(), 200);
    app.wait_for_state(&grant.id, JobState::Failed).await;
    grant
}

fn base(app: &TestApp) -> String {
    app.url.trim_end_matches("/webhooks/dodo").to_string()
}

#[tokio::test]
async fn the_admin_api_is_off_without_a_token_and_needs_the_right_one() {
    let off = TestApp::spawn_web().await;
    for path in ["/admin", "/admin/login", "/admin/api/stats"] {
        let r = off
            .http
            .get(format!("{}{path}", base(&off)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    off.stop().await;

    let app = admin_app().await;
    let url = format!("{}/admin/api/stats", base(&app));
    assert_eq!(app.http.get(&url).send().await.unwrap().status(), 401);
    assert_eq!(
        app.http
            .get(&url)
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let stats: serde_json::Value = app
        .http
        .get(&url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(stats["jobs_by_state"].is_array());

    // People sign in; the wrong token is refused, the right one gets a strict, HttpOnly cookie.
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = no_redirects
        .get(format!("{}/admin", base(&app)))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 303);
    let login = format!("{}/admin/login", base(&app));
    let r = no_redirects
        .post(&login)
        .form(&[("token", "nope")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = no_redirects
        .post(&login)
        .form(&[("token", TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_string();

    // A page action without the CSRF token is refused, even with a valid session.
    app.add_pool("pro", ENT, &["ADM-1"]).await;
    let grant = failed_grant(&app).await;
    let retry = format!("{}/admin/jobs/{}/retry", base(&app), grant.id);
    let r = no_redirects
        .post(&retry)
        .header("cookie", &session)
        .form(&[("csrf", "forged")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(app.job_state(&grant.id).await, JobState::Failed);
    // Scripts use the JSON API with the bearer token; a cookie alone does not open it.
    let api_retry = format!("{}/admin/api/jobs/{}/retry", base(&app), grant.id);
    assert_eq!(
        no_redirects
            .post(&api_retry)
            .header("cookie", &session)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        app.http
            .post(&api_retry)
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    app.wait_for_state(&grant.id, JobState::Delivered).await;
    let actors: Vec<String> =
        sqlx::query_scalar("SELECT actor FROM audit_log WHERE grant_id = $1 AND action = 'retry'")
            .bind(&grant.id)
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(actors, ["admin"]);
    app.stop().await;
}

struct Chromedriver(Child);

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts chromedriver on a free port; `None` when it is not installed (outside CI).
async fn chromedriver() -> Option<(Chromedriver, String)> {
    let binary = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(binary) = binary else {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromedriver is missing; .ci/run installs chromium and chromium-driver"
        );
        eprintln!(
            "skipping the browser test: install the Debian packages chromium and chromium-driver"
        );
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(binary)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let url = format!("http://127.0.0.1:{port}");
    let driver = Chromedriver(child);
    let status = format!("{url}/status");
    wait_until("chromedriver answers", Duration::from_secs(20), || async {
        reqwest::get(&status)
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    Some((driver, url))
}

async fn shot(browser: &fantoccini::Client, name: &str) {
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    std::fs::write(shots.join(name), browser.screenshot().await.unwrap()).unwrap();
}

async fn text_of(browser: &fantoccini::Client, id: &str) -> String {
    browser
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("#{id} is on the page: {e}"))
        .text()
        .await
        .unwrap()
}

async fn click(browser: &fantoccini::Client, id: &str) {
    browser
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("#{id} is on the page: {e}"))
        .click()
        .await
        .unwrap();
}

#[tokio::test]
async fn an_on_call_engineer_finds_and_fixes_failed_grants_from_the_dashboard() {
    let Some((_driver, webdriver)) = chromedriver().await else {
        return;
    };
    let app = admin_app().await;
    let keys: Vec<String> = (1..=12).map(|i| format!("WEB-AAAA-BBBB-{i:04}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    app.add_pool("pro", ENT, &keys).await;
    sqlx::query("UPDATE pools SET low_stock = 5")
        .execute(&app.db)
        .await
        .unwrap();
    // Activity for the charts: delivered grants, and two Dodo refuses.
    app.sell_many(6).await;
    app.wait_delivered(6).await;
    let grant = failed_grant(&app).await;
    let second = failed_grant(&app).await;
    keyrelay::store::history::record_queue_sample(&app.db)
        .await
        .unwrap();

    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", "--window-size=1280,1400"]
        }),
    );
    // chromedriver speaks plain HTTP on loopback.
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let browser = ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&webdriver)
        .await
        .expect("a browser session");
    let base = base(&app);

    browser.goto(&format!("{base}/admin")).await.unwrap();
    assert!(
        browser
            .current_url()
            .await
            .unwrap()
            .path()
            .ends_with("/admin/login"),
        "signed-out visitors are sent to the login page"
    );
    browser
        .find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(TOKEN)
        .await
        .unwrap();
    click(&browser, "sign-in").await;

    // The overview: charts with the activity above, and the pool's forecast.
    let delivered_chart = text_of(&browser, "chart-delivered").await;
    assert!(
        delivered_chart.contains("delivered (6)"),
        "{delivered_chart}"
    );
    let dodo_chart = text_of(&browser, "chart-dodo").await;
    assert!(
        dodo_chart.contains("2xx (6)") && dodo_chart.contains("4xx (2)"),
        "{dodo_chart}"
    );
    let queue_chart = text_of(&browser, "chart-queue").await;
    assert!(queue_chart.contains("failed (now 2)"), "{queue_chart}");
    assert!(
        text_of(&browser, "chart-webhooks")
            .await
            .contains("received (8)")
    );
    // 12 keys, 6 sold today: 6 left, one day's worth.
    let forecast = text_of(&browser, "forecast-pro").await;
    assert!(forecast.contains("in about 1 day"), "{forecast}");
    assert!(
        text_of(&browser, "needs-attention")
            .await
            .contains("2 item(s)")
    );
    shot(&browser, "admin-overview.png").await;
    browser
        .goto(&format!("{base}/admin?range=day"))
        .await
        .unwrap();
    assert!(
        text_of(&browser, "chart-delivered")
            .await
            .contains("per 15 minutes")
    );

    // Needs attention lists both failed grants with Dodo's answer.
    browser
        .goto(&format!("{base}/admin/attention"))
        .await
        .unwrap();
    let row = text_of(&browser, &format!("job-{}", grant.id)).await;
    assert!(row.contains("failed") && row.contains("422"), "{row}");
    assert_eq!(text_of(&browser, "failed-total").await, "2");
    shot(&browser, "admin-attention.png").await;

    // Search by the customer's id finds their grant.
    browser.goto(&format!("{base}/admin/jobs")).await.unwrap();
    browser
        .find(Locator::Id("q"))
        .await
        .unwrap()
        .send_keys(&grant.customer_id)
        .await
        .unwrap();
    click(&browser, "search").await;
    // The unfiltered list has a #jobs table too: wait for the search's page.
    wait_until(
        "the search's page loads",
        Duration::from_secs(10),
        || async {
            browser
                .current_url()
                .await
                .is_ok_and(|u| u.query().is_some_and(|q| q.contains("q=cus_")))
        },
    )
    .await;
    let rows = text_of(&browser, "jobs").await;
    assert!(
        rows.contains(&grant.id) && !rows.contains(&second.id),
        "{rows}"
    );
    shot(&browser, "admin-search.png").await;

    // Bulk retry of every failed job: the count, a confirmation, then the work.
    browser
        .goto(&format!("{base}/admin/jobs?state=failed"))
        .await
        .unwrap();
    click(&browser, "bulk-retry").await;
    let count = text_of(&browser, "bulk-count").await;
    assert!(
        count.contains("2 failed or cancelled jobs match"),
        "{count}"
    );
    shot(&browser, "admin-bulk-confirm.png").await;
    assert_eq!(
        app.job_state(&grant.id).await,
        JobState::Failed,
        "nothing runs before the confirmation"
    );
    click(&browser, "confirm-bulk").await;
    assert!(
        text_of(&browser, "flash")
            .await
            .contains("bulk retry done: 2 job(s)")
    );
    wait_until(
        "both jobs are delivered",
        Duration::from_secs(10),
        || async {
            app.job_state(&grant.id).await == JobState::Delivered
                && app.job_state(&second.id).await == JobState::Delivered
        },
    )
    .await;

    browser
        .goto(&format!("{base}/admin/jobs/{}", grant.id))
        .await
        .unwrap();
    assert_eq!(text_of(&browser, "job-state").await, "delivered");
    let page = browser.source().await.unwrap();
    let key = app
        .key_values(&format!("grant_id = '{}'", grant.id))
        .await
        .remove(0);
    assert!(
        page.contains(&keyrelay::domain::mask_key(&key)) && !page.contains(&key),
        "keys are masked on the page"
    );
    shot(&browser, "admin-job-delivered.png").await;

    // Events, with replay.
    browser.goto(&format!("{base}/admin/events")).await.unwrap();
    let webhook_id: String =
        sqlx::query_scalar("SELECT webhook_id FROM events WHERE grant_id = $1")
            .bind(&grant.id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    click(&browser, &format!("replay-{webhook_id}")).await;
    assert!(text_of(&browser, "flash").await.contains("replay done"));
    shot(&browser, "admin-events.png").await;
    eprintln!(
        "screenshots in {}",
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("screenshots")
            .display()
    );
    browser.close().await.unwrap();
    app.stop().await;
}
