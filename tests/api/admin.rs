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
    wait_until("the job fails", Duration::from_secs(10), || async {
        app.job_state(&grant.id).await == JobState::Failed
    })
    .await;
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
    wait_until(
        "the retried job is delivered",
        Duration::from_secs(10),
        || async { app.job_state(&grant.id).await == JobState::Delivered },
    )
    .await;
    let actors: Vec<String> =
        sqlx::query_scalar("SELECT actor FROM audit_log WHERE grant_id = $1 AND action = 'retry'")
            .bind(&grant.id)
            .fetch_all(&app.pool)
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

#[tokio::test]
async fn an_on_call_engineer_retries_a_failed_job_from_the_dashboard() {
    let Some((_driver, webdriver)) = chromedriver().await else {
        return;
    };
    let app = admin_app().await;
    app.add_pool("pro", ENT, &["WEB-AAAA-BBBB-0001", "WEB-AAAA-BBBB-0002"])
        .await;
    let grant = failed_grant(&app).await;

    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", "--window-size=1280,900"]
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
    browser
        .find(Locator::Id("sign-in"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let row = browser
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Id(&format!("job-{}", grant.id)))
        .await
        .unwrap();
    let text = row.text().await.unwrap();
    assert!(text.contains("failed") && text.contains("422"), "{text}");
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    std::fs::write(
        shots.join("admin-dashboard.png"),
        browser.screenshot().await.unwrap(),
    )
    .unwrap();

    browser
        .find(Locator::Id(&format!("retry-{}", grant.id)))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let flash = browser
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Id("flash"))
        .await
        .unwrap();
    assert!(flash.text().await.unwrap().contains("retry done"));
    wait_until("the job is delivered", Duration::from_secs(10), || async {
        app.job_state(&grant.id).await == JobState::Delivered
    })
    .await;
    browser
        .goto(&format!("{base}/admin/jobs/{}", grant.id))
        .await
        .unwrap();
    let state = browser
        .find(Locator::Id("job-state"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(state, "delivered");
    let page = browser.source().await.unwrap();
    assert!(
        page.contains("WEB-****-****-0001") && !page.contains("WEB-AAAA-BBBB-0001"),
        "keys are masked on the page"
    );
    std::fs::write(
        shots.join("admin-job-delivered.png"),
        browser.screenshot().await.unwrap(),
    )
    .unwrap();
    eprintln!("screenshots in {}", shots.display());
    browser.close().await.unwrap();
    app.stop().await;
}
