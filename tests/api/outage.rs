//! `serve` started while Postgres is down waits for it, says so in plain text, and comes up
//! when it answers — no crash loop.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::wait_until;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Forwards every connection on `listener` to the test Postgres server.
async fn forward_to_postgres(listener: tokio::net::TcpListener) {
    let server = std::env::var("KEYRELAY_TEST_DATABASE_URL")
        .ok()
        .and_then(|u| url::Url::parse(&u).ok())
        .map(|u| {
            format!(
                "{}:{}",
                u.host_str().unwrap_or("127.0.0.1"),
                u.port().unwrap_or(5432)
            )
        })
        .unwrap_or_else(|| "127.0.0.1:5432".into());
    while let Ok((mut client, _)) = listener.accept().await {
        let server = server.clone();
        tokio::spawn(async move {
            if let Ok(mut upstream) = tokio::net::TcpStream::connect(&server).await {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            }
        });
    }
}

#[tokio::test]
async fn serve_started_while_postgres_is_down_waits_and_comes_up_with_it() {
    let (db_port, http_port) = (free_port(), free_port());
    let name = format!(
        "keyrelay_test_{}_{:06x}",
        chrono::Utc::now().format("%Y%m%d%H%M%S"),
        rand::random::<u32>() & 0xff_ffff
    );
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_keyrelay"))
        .current_dir(std::env::temp_dir())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:{db_port}/{name}"),
        )
        .env("DODO_PAYMENTS_WEBHOOK_KEY", "whsec_c2VjcmV0MQ==")
        .env(
            "KEYRELAY_ENCRYPTION_KEY",
            secrecy::ExposeSecret::expose_secret(&keyrelay::crypto::new_encryption_key()),
        )
        .env("KEYRELAY_HTTP__BIND", format!("127.0.0.1:{http_port}"))
        .args(["serve", "--role", "web"])
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let sink = log.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    let said = |what: &'static str| {
        let log = log.clone();
        move || {
            let found = log.lock().unwrap().contains(what);
            async move { found }
        }
    };
    wait_until(
        "serve says it waits for the database",
        Duration::from_secs(15),
        said("connection refused; is Postgres running there?; retrying in"),
    )
    .await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "serve exited instead of waiting"
    );

    // Postgres comes back on that port.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", db_port))
        .await
        .unwrap();
    tokio::spawn(forward_to_postgres(listener));
    let http = reqwest::Client::new();
    let ready = format!("http://127.0.0.1:{http_port}/readyz");
    wait_until("serve is ready", Duration::from_secs(45), || {
        let request = http.get(&ready).send();
        async move { request.await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    let text = log.lock().unwrap().clone();
    assert!(text.contains("keyrelay starting"), "{text}");
    assert!(!text.contains('\u{1b}'), "colour codes in a pipe: {text:?}");

    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("serve stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let mut settings = crate::helpers::base_settings();
    let mut url =
        url::Url::parse(secrecy::ExposeSecret::expose_secret(&settings.database.url)).unwrap();
    url.set_path(&format!("/{name}"));
    settings.database.url = url.to_string().into();
    keyrelay::db::drop_database(&settings).await.unwrap();
}

#[tokio::test]
async fn readiness_answers_503_within_250_ms_when_the_database_hangs() {
    // A "database" that accepts connections and never says a word: a hung server or a
    // firewall dropping packets, where no connection is refused fast.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = hole.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = hole.accept().await {
            held.push(socket);
        }
    });
    let mut settings = crate::helpers::base_settings();
    settings.database.url = format!("postgres://postgres@127.0.0.1:{port}/keyrelay").into();
    let stack = keyrelay::harness::LocalStack::start(settings, keyrelay::startup::Role::Web)
        .await
        .unwrap();
    let ready = stack
        .webhook_url
        .clone()
        .unwrap()
        .replace("/webhooks/dodo", "/readyz");
    let http = reqwest::Client::new();
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let answer = http.get(&ready).send().await.unwrap();
        let took = started.elapsed();
        assert_eq!(answer.status(), 503);
        assert!(took < Duration::from_millis(250), "took {took:?}");
    }
    stack.stop().await.unwrap();
}
