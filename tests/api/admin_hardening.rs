//! The admin surface under a careless operator and a hostile visitor: sign-in and bearer-token
//! guessing is throttled per client (behind a trusted proxy too), bodies that never arrive are
//! cut off on every route, every answer carries its safety headers, `/metrics` can live on its
//! own address, signing out ends the session for good, the cookie is Secure, and no page says
//! what a URL tells it to.

use std::time::Duration;

use keyrelay::startup::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{ENT, TestApp, captured_logs};

const API_TOKEN: &str = "shop-api-token-for-hardening-tests-012345";

const TOKEN: &str = "admin-token-for-hardening-tests-0123456789";

async fn admin_app(plain_http: bool) -> TestApp {
    TestApp::spawn_with(Role::Web, |s| {
        s.admin.token = Some(TOKEN.to_string().into());
        s.admin.insecure_http = plain_http;
    })
    .await
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test]
async fn guessing_the_token_is_throttled_and_logged() {
    let app = admin_app(true).await;
    let client = no_redirects();
    let mut statuses = Vec::new();
    for i in 0..30 {
        let r = client
            .post(format!("{}/admin/login", app.base()))
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
    let (session, _) = app.sign_in(TOKEN).await;
    let client = no_redirects();
    let page = client
        .get(format!("{}/admin", app.base()))
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
        .post(format!("{}/admin/logout", app.base()))
        .header("cookie", &session)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    // The browser forgot the cookie; someone who copied it keeps nothing.
    let again = client
        .get(format!("{}/admin", app.base()))
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
    let (_, cookie) = app.sign_in(TOKEN).await;
    assert!(cookie.contains("Secure"), "{cookie}");
    app.stop().await;
    let app = admin_app(true).await;
    let (_, cookie) = app.sign_in(TOKEN).await;
    assert!(!cookie.contains("Secure"), "{cookie}");
    app.stop().await;
}

#[tokio::test]
async fn no_page_says_what_a_url_tells_it_to() {
    let app = admin_app(true).await;
    let (session, _) = app.sign_in(TOKEN).await;
    let client = no_redirects();
    for path in [
        "/admin?done=Your+account+is+locked.+Call+%2B1-555-0100",
        "/admin/jobs/grant_x?done=Your+account+is+locked.+Call+%2B1-555-0100",
    ] {
        let html = client
            .get(format!("{}{path}", app.base()))
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

/// Sends a request whose body never comes and returns what the server answers (at most 15 s).
async fn unsent_body(app: &TestApp, request_line: &str) -> String {
    let address = app.base().trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "{request_line} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "{request_line}: still open after 15 s");
    String::from_utf8_lossy(&answer).to_string()
}

#[tokio::test]
async fn a_body_that_never_arrives_is_cut_off_on_every_route() {
    let app = TestApp::spawn_with(Role::Web, |s| {
        s.admin.token = Some(TOKEN.to_string().into());
        s.api.token = Some(API_TOKEN.to_string().into());
        s.http.body_timeout_secs = 1;
    })
    .await;
    for request in [
        "POST /admin/login",
        "POST /admin/logout",
        "POST /admin/jobs/bulk",
        "GET /api/v1/grants/grant_1",
        "GET /healthz",
        "POST /nowhere",
    ] {
        let answer = unsent_body(&app, request).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{request}: {answer}");
    }
    // Others are served meanwhile and after.
    app.sell().await;
    app.stop().await;
}

#[tokio::test]
async fn wrong_bearer_tokens_are_throttled_per_client_and_logged() {
    let app = TestApp::spawn_with(Role::Web, |s| {
        s.admin.token = Some(TOKEN.to_string().into());
        s.api.token = Some(API_TOKEN.to_string().into());
    })
    .await;
    let client = no_redirects();
    for (path, right) in [
        ("/admin/api/jobs", TOKEN),
        ("/api/v1/grants/grant_1", API_TOKEN),
    ] {
        let mut statuses = Vec::new();
        for i in 0..60 {
            let r = client
                .get(format!("{}{path}", app.base()))
                .bearer_auth(format!("wrong-token-{i}"))
                .send()
                .await
                .unwrap();
            statuses.push(r.status().as_u16());
        }
        assert!(
            statuses[..10].iter().all(|s| *s == 401),
            "{path}: {statuses:?}"
        );
        assert!(
            statuses[10..].iter().all(|s| *s == 429),
            "{path}: {statuses:?}"
        );
        // Locked out means locked out, whatever it sends now.
        let r = client
            .get(format!("{}{path}", app.base()))
            .bearer_auth(right)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 429, "{path}");
        assert!(r.headers().contains_key("retry-after"), "{path}");
    }
    let logs = captured_logs();
    assert!(
        logs.contains("request with a wrong token")
            && logs.contains("surface=\"api\"")
            && logs.contains("too many wrong tokens from this address"),
        "wrong bearer tokens are logged"
    );
    app.stop().await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_one_client_cannot_lock_out_the_others() {
    let app = TestApp::spawn_with(Role::Web, |s| {
        s.admin.token = Some(TOKEN.to_string().into());
        s.http.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await;
    let client = no_redirects();
    let jobs = format!("{}/admin/api/jobs", app.base());
    for i in 0..20 {
        client
            .get(&jobs)
            .bearer_auth(format!("guess-{i}"))
            .header("x-forwarded-for", "203.0.113.66")
            .send()
            .await
            .unwrap();
    }
    let guesser = client
        .get(&jobs)
        .bearer_auth(TOKEN)
        .header("x-forwarded-for", "203.0.113.66")
        .send()
        .await
        .unwrap();
    assert_eq!(guesser.status(), 429);
    // A colleague behind the same proxy, and one who claims the guesser's address further
    // left (where a client, not the proxy, wrote it), still get in.
    for forwarded in ["198.51.100.7", "203.0.113.66, 198.51.100.8"] {
        let r = client
            .get(&jobs)
            .bearer_auth(TOKEN)
            .header("x-forwarded-for", forwarded)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{forwarded}");
    }
    app.stop().await;
}

#[tokio::test]
async fn answers_carry_their_safety_headers_and_bearer_is_any_case() {
    let app = TestApp::spawn_with(Role::Web, |s| {
        s.admin.token = Some(TOKEN.to_string().into());
        s.api.token = Some(API_TOKEN.to_string().into());
    })
    .await;
    let client = no_redirects();
    let get = |path: &str, token: Option<&str>| {
        let mut request = client.get(format!("{}{path}", app.base()));
        if let Some(t) = token {
            request = request.header("authorization", format!("bearer {t}"));
        }
        request.send()
    };
    for (path, token) in [
        ("/healthz", None),
        ("/metrics", None),
        ("/admin/login", None),
        ("/admin/api/jobs", Some(TOKEN)),
        ("/api/v1/grants/grant_none", Some(API_TOKEN)),
    ] {
        let r = get(path, token).await.unwrap();
        assert_ne!(r.status(), 401, "{path}: lower-case bearer is accepted");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff", "{path}");
        if path.contains("/api/") {
            assert_eq!(r.headers()["cache-control"], "no-store", "{path}");
        }
    }
    let webhook = app.post_raw("msg_x", "0", "v1,AAAA", "{}".into()).await;
    assert_eq!(webhook.status(), 401);
    assert_eq!(webhook.headers()["x-content-type-options"], "nosniff");
    let login = get("/admin/login", None).await.unwrap();
    let csp = login.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("base-uri 'none'"), "{csp}");
    app.stop().await;
}

#[tokio::test]
async fn metrics_can_be_served_on_their_own_address() {
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app = TestApp::spawn_with(Role::Web, |s| {
        s.http.metrics_bind = Some(format!("127.0.0.1:{metrics_port}"));
    })
    .await;
    let public = app
        .http
        .get(format!("{}/metrics", app.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), 404, "not on the webhook port");
    let private = app
        .http
        .get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(private.status(), 200);
    assert!(private.text().await.unwrap().contains("keyrelay_jobs"));
    app.stop().await;
}

#[tokio::test]
async fn the_job_page_shows_the_last_four_of_the_key_once_masked() {
    let app = TestApp::spawn_with(Role::All, |s| {
        s.admin.token = Some(TOKEN.to_string().into());
    })
    .await;
    app.add_pool("pro", ENT, &["PRO-AAAA-BBBB-CCCC-1XT2"]).await;
    let grant = app.sell().await;
    app.wait_delivered(1).await;
    let page = app.page(&format!("/admin/jobs/{grant}"), Some(TOKEN)).await;
    assert!(
        page.contains("<tr><th>Key</th><td>PRO-****-****-****-1XT2</td></tr>"),
        "{page}"
    );
    assert!(!page.contains("AAAA"), "the key stays masked");
    app.stop().await;
}
