//! The admin surface under a careless operator and a hostile visitor: sign-in guessing is
//! throttled, signing out ends the session for good, the cookie is Secure, and no page says
//! what a URL tells it to.

use keyrelay::startup::Role;

use crate::helpers::TestApp;

const TOKEN: &str = "admin-token-for-hardening-tests-0123456789";

async fn admin_app(plain_http: bool) -> TestApp {
    TestApp::spawn_with(Role::Web, |s| {
        s.admin.token = Some(TOKEN.to_string().into());
        s.admin.insecure_http = plain_http;
    })
    .await
}

fn base(app: &TestApp) -> String {
    app.url.trim_end_matches("/webhooks/dodo").to_string()
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Signs in and returns the `name=value` of the session cookie and the whole Set-Cookie.
async fn sign_in(app: &TestApp) -> (String, String) {
    let r = no_redirects()
        .post(format!("{}/admin/login", base(app)))
        .form(&[("token", TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    (cookie.split(';').next().unwrap().to_string(), cookie)
}

#[tokio::test]
async fn guessing_the_token_is_throttled_and_logged() {
    let app = admin_app(true).await;
    let client = no_redirects();
    let mut statuses = Vec::new();
    for i in 0..30 {
        let r = client
            .post(format!("{}/admin/login", base(&app)))
            .form(&[("token", format!("wrong-guess-{i}"))])
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert!(statuses[..5].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(statuses[20..].iter().all(|s| *s == 429), "{statuses:?}");
    let logs = crate::helpers::captured_logs();
    assert!(
        logs.contains("admin sign-in with a wrong token") && logs.contains("127.0.0.1"),
        "wrong attempts are logged with the peer"
    );
    app.stop().await;
}

#[tokio::test]
async fn signing_out_ends_the_session_on_the_server() {
    let app = admin_app(true).await;
    let (session, _) = sign_in(&app).await;
    let client = no_redirects();
    let page = client
        .get(format!("{}/admin", base(&app)))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    let csrf = html
        .split("name=csrf value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_string();
    let out = client
        .post(format!("{}/admin/logout", base(&app)))
        .header("cookie", &session)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    // The browser forgot the cookie; someone who copied it keeps nothing.
    let again = client
        .get(format!("{}/admin", base(&app)))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(
        again.status(),
        303,
        "a signed-out session still opens the dashboard"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_session_cookie_is_secure_unless_told_the_site_is_plain_http() {
    let app = admin_app(false).await;
    let (_, cookie) = sign_in(&app).await;
    assert!(cookie.contains("Secure"), "{cookie}");
    app.stop().await;
    let app = admin_app(true).await;
    let (_, cookie) = sign_in(&app).await;
    assert!(!cookie.contains("Secure"), "{cookie}");
    app.stop().await;
}

#[tokio::test]
async fn no_page_says_what_a_url_tells_it_to() {
    let app = admin_app(true).await;
    let (session, _) = sign_in(&app).await;
    let client = no_redirects();
    for path in [
        "/admin?done=Your+account+is+locked.+Call+%2B1-555-0100",
        "/admin/jobs/grant_x?done=Your+account+is+locked.+Call+%2B1-555-0100",
    ] {
        let html = client
            .get(format!("{}{path}", base(&app)))
            .header("cookie", &session)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!html.contains("account is locked"), "{path}: {html}");
    }
    app.stop().await;
}
