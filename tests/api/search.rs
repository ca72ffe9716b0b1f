//! Finding grants (by grant, customer and payment id, and by a key's last characters), paging
//! through them, bulk actions from the dashboard, and the pool forecast — in the CLI, the admin
//! API and the dashboard's pages.

use std::collections::HashSet;
use std::time::Duration;

use keyrelay::domain::JobState;
use keyrelay::sandbox::Fault;
use keyrelay::startup::Role;
use keyrelay::store::search::{Cursor, JobFilter, find_jobs};

use crate::helpers::{ENT, TestApp, as_env, keyrelay_async, wait_until};

const TOKEN: &str = "admin-token-for-search-tests-0123456789";

fn json_of(output: &std::process::Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("one JSON document")
}

fn grants_in(list: &serde_json::Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|j| j["grant_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn grants_are_found_by_grant_customer_and_payment_id_and_by_a_keys_last_characters() {
    let app = TestApp::spawn().await;
    app.add_pool(
        "pro",
        ENT,
        &[
            "SRCH-AAAA-BBBB-1111",
            "SRCH-CCCC-DDDD-2222",
            "SRCH-EEEE-FFFF-3333",
        ],
    )
    .await;
    let grants = app.sell_many(3).await;
    app.wait_delivered(3).await;
    let env = app.cli_env();
    let env = as_env(&env);
    let search = async |term: &str| {
        grants_in(&json_of(
            &keyrelay_async(&env, &["jobs", "list", "--search", term, "--json"]).await,
        ))
    };

    let job = app.sandbox.grant(&grants[1]).unwrap();
    let payment = job.payment_id.clone().unwrap();
    assert_eq!(search(&grants[1]).await, [grants[1].clone()]);
    assert_eq!(search(&job.customer_id).await, [grants[1].clone()]);
    assert_eq!(search(&payment).await, [grants[1].clone()]);
    // The key the second grant got, by what its masked form shows (any case).
    let sold = app.sandbox.grant(&grants[1]).unwrap();
    let key = sold.key_value().unwrap().to_string();
    let tail = &key[key.len() - 4..];
    assert_eq!(search(tail).await, [grants[1].clone()]);
    assert_eq!(search(&key.to_lowercase()).await, [grants[1].clone()]);
    assert!(search("nothing-like-this").await.is_empty());

    // Typed filters, and the JSON carries the payment id.
    let by_customer = json_of(
        &keyrelay_async(
            &env,
            &["jobs", "list", "--customer", &job.customer_id, "--json"],
        )
        .await,
    );
    assert_eq!(by_customer[0]["payment_id"], payment.as_str());
    let by_payment =
        json_of(&keyrelay_async(&env, &["jobs", "list", "--payment", &payment, "--json"]).await);
    assert_eq!(grants_in(&by_payment), [grants[1].clone()]);
    let in_pool = json_of(
        &keyrelay_async(
            &env,
            &[
                "jobs",
                "list",
                "--pool",
                "pro",
                "--state",
                "delivered",
                "--since",
                "1h",
                "--json",
            ],
        )
        .await,
    );
    assert_eq!(in_pool.as_array().unwrap().len(), 3);
    let future = json_of(
        &keyrelay_async(
            &env,
            &["jobs", "list", "--since", "2999-01-01T00:00:00Z", "--json"],
        )
        .await,
    );
    assert!(future.as_array().unwrap().is_empty());
    let bad = keyrelay_async(&env, &["jobs", "list", "--since", "yesterday"]).await;
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("an age like 30m"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    app.stop().await;
}

#[tokio::test]
async fn pages_cover_every_job_once_newest_first_even_with_equal_creation_times() {
    let app = TestApp::spawn_web().await;
    // 130 jobs, many created in the same instant (one statement), as a burst of webhooks can be.
    sqlx::query(
        "INSERT INTO jobs (grant_id, entitlement_id, customer_id, state, finished_at, created_at) \
         SELECT 'grant_page_' || i, $1, 'cus_pages', 'delivered', now(), \
                now() - make_interval(secs => i / 10) FROM generate_series(1, 130) i",
    )
    .bind(ENT)
    .execute(&app.db)
    .await
    .unwrap();
    let filter = JobFilter {
        customer: Some("cus_pages".into()),
        ..JobFilter::default()
    };
    let mut seen = Vec::new();
    let mut after: Option<Cursor> = None;
    loop {
        let page = find_jobs(&app.db, &filter, after.as_ref(), 50)
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 50);
        after = page.last().map(Cursor::after);
        seen.extend(page);
    }
    assert_eq!(seen.len(), 130);
    let unique: HashSet<_> = seen.iter().map(|j| j.grant_id.to_string()).collect();
    assert_eq!(unique.len(), 130, "no job shows twice");
    assert!(
        seen.windows(2).all(|w| w[0].created_at >= w[1].created_at),
        "newest first"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_bulk_retry_changes_only_what_the_filter_matches_and_is_audited() {
    let app = TestApp::spawn_with(Role::All, |s| {
        s.admin.token = Some(TOKEN.to_string().into())
    })
    .await;
    app.add_pool(
        "pro",
        ENT,
        &[
            "BULK-0001-AAAA-0001",
            "BULK-0002-AAAA-0002",
            "BULK-0003-AAAA-0003",
        ],
    )
    .await;
    // Two grants Dodo refuses for one customer, one for another.
    let mut failed = Vec::new();
    for customer in ["cus_bulk_a", "cus_bulk_a", "cus_bulk_b"] {
        let grant = app.sandbox.create_grant(ENT, Some(customer));
        app.sandbox
            .script_faults(&grant.id, [Fault::Status { status: 422 }]);
        let hook = app.sandbox.webhook_for(&grant, "entitlement_grant.created");
        assert_eq!(app.post(&hook).await.status(), 200);
        failed.push(grant.id);
    }
    wait_until("three jobs fail", Duration::from_secs(10), || async {
        app.count("SELECT count(*) FROM jobs WHERE state = 'failed'")
            .await
            == 3
    })
    .await;
    let base = app.url.trim_end_matches("/webhooks/dodo").to_string();

    // The confirmation counts what would change, and changes nothing.
    let confirm = app
        .http
        .get(format!(
            "{base}/admin/jobs/bulk?action=retry&q=cus_bulk_a&state=failed"
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(confirm.status(), 200);
    let page = confirm.text().await.unwrap();
    assert!(page.contains("2 failed or cancelled jobs match"), "{page}");
    assert_eq!(
        app.count("SELECT count(*) FROM jobs WHERE state = 'failed'")
            .await,
        3
    );

    let run = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{base}/admin/jobs/bulk"))
        .bearer_auth(TOKEN)
        .form(&[
            ("action", "retry"),
            ("q", "cus_bulk_a"),
            ("state", "failed"),
            ("expected", "2"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(run.status(), 303);
    assert!(
        run.headers()["location"]
            .to_str()
            .unwrap()
            .contains("done=bulk_retry&n=2"),
        "{:?}",
        run.headers()
    );
    let landing = app
        .http
        .get(format!(
            "{base}{}",
            run.headers()["location"].to_str().unwrap()
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(landing.status(), 200);
    assert!(
        landing
            .text()
            .await
            .unwrap()
            .contains("bulk retry done: 2 job(s)")
    );
    wait_until(
        "customer a's grants are delivered",
        Duration::from_secs(10),
        || async {
            app.job_state(&failed[0]).await == JobState::Delivered
                && app.job_state(&failed[1]).await == JobState::Delivered
        },
    )
    .await;
    assert_eq!(
        app.job_state(&failed[2]).await,
        JobState::Failed,
        "outside the filter"
    );
    let audit: Vec<(String, String)> =
        sqlx::query_as("SELECT actor, detail FROM audit_log WHERE action = 'bulk_retry'")
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].0, "admin");
    assert!(audit[0].1.starts_with("2 jobs matching"), "{}", audit[0].1);
    assert_eq!(
        app.count("SELECT count(*) FROM audit_log WHERE action = 'retry' AND actor = 'admin'")
            .await,
        2,
        "each job's own trail records it too"
    );
    // The same from the CLI: count first, ask, then act.
    let env = app.cli_env();
    let env = as_env(&env);
    let bulk = async |args: &[&str]| {
        let out = keyrelay_async(&env, args).await;
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, text) = bulk(&["jobs", "bulk", "cancel", "--state", "failed", "--dry-run"]).await;
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(
            "1 queued, retrying, waiting or failed job(s) match state failed; nothing changed"
        ),
        "{text}"
    );
    let (code, text) = bulk(&["jobs", "bulk", "cancel", "--state", "failed"]).await;
    assert_eq!(code, Some(1), "no terminal to ask: nothing changes: {text}");
    assert_eq!(app.job_state(&failed[2]).await, JobState::Failed);
    let (code, text) = bulk(&["jobs", "bulk", "cancel", "--state", "failed", "--yes"]).await;
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("cancel: 1 job(s) changed"), "{text}");
    assert_eq!(app.job_state(&failed[2]).await, JobState::Cancelled);
    assert_eq!(
        app.count("SELECT count(*) FROM audit_log WHERE action = 'bulk_cancel' AND actor = 'cli'")
            .await,
        1
    );

    // An unknown action or state is refused with the reason.
    let bad = app
        .http
        .get(format!("{base}/admin/jobs/bulk?action=delete"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let list = app
        .http
        .get(format!("{base}/admin/jobs?state=bogus"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), 400);
    assert!(list.text().await.unwrap().contains("unknown state `bogus`"));
    app.stop().await;
}

#[tokio::test]
async fn the_pool_forecast_divides_stock_by_the_recent_sales_rate() {
    let app = TestApp::spawn().await;
    let keys: Vec<String> = (0..10).map(|i| format!("FCST-AAAA-BBBB-{i:04}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    app.add_pool("pro", ENT, &keys).await;
    let env = app.cli_env();
    let env = as_env(&env);
    let before = json_of(&keyrelay_async(&env, &["pool", "list", "--json"]).await);
    assert_eq!(before[0]["sold_last_day"], 0);
    assert!(before[0]["runs_out_in_days"].is_null());

    app.sell_many(2).await;
    app.wait_delivered(2).await;
    let after = json_of(&keyrelay_async(&env, &["pool", "list", "--json"]).await);
    assert_eq!(after[0]["available"], 8);
    assert_eq!(after[0]["sold_last_day"], 2);
    assert_eq!(after[0]["sold_last_week"], 2);
    // 2 a day (faster than 2 a week): 8 keys last 4 days.
    assert_eq!(after[0]["runs_out_in_days"].as_f64(), Some(4.0));
    let table = keyrelay_async(&env, &["pool", "list"]).await;
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("in about 4 days"), "{text}");
    app.stop().await;
}

#[tokio::test]
async fn a_hostile_filter_is_refused_with_its_reason_and_the_dashboard_keeps_working() {
    let app = TestApp::spawn_with(Role::Web, |s| {
        s.admin.token = Some(TOKEN.to_string().into())
    })
    .await;
    let base = app.url.trim_end_matches("/webhooks/dodo").to_string();
    let long = "x".repeat(5000);
    for query in [
        "q=%00".to_string(),
        "pool=pro%00".to_string(),
        "q=%1b%5b2J".to_string(),
        format!("q={long}"),
        "since=%00".to_string(),
    ] {
        let r = app
            .http
            .get(format!("{base}/admin/jobs?{query}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{}", &query[..query.len().min(40)]);
        let bulk = app
            .http
            .get(format!("{base}/admin/jobs/bulk?action=retry&{query}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(bulk.status(), 400);
    }
    let events = app
        .http
        .get(format!("{base}/admin/events?before=1.%00"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    let fine = app
        .http
        .get(format!("{base}/admin/jobs?q=cus_1"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(fine.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn a_payment_id_keyrelay_cannot_store_is_dropped_and_the_grant_fulfilled() {
    let app = TestApp::spawn().await;
    app.add_pool("pro", ENT, &["PAYX-AAAA-BBBB-0001", "PAYX-AAAA-BBBB-0002"])
        .await;
    let mut grants = Vec::new();
    for payment in ["p".repeat(5000), "pay_\u{0}nul".to_string()] {
        let mut grant = app.sandbox.create_grant(ENT, None);
        grant.payment_id = Some(payment);
        let hook = app.sandbox.webhook_for(&grant, "entitlement_grant.created");
        assert_eq!(app.post(&hook).await.status(), 200);
        grants.push(grant.id);
    }
    app.wait_delivered(2).await;
    assert_eq!(
        app.count("SELECT count(*) FROM jobs WHERE payment_id IS NULL")
            .await,
        2
    );
    app.stop().await;
}

#[tokio::test]
async fn a_bulk_run_never_changes_more_jobs_than_were_confirmed() {
    let app = TestApp::spawn_with(Role::Web, |s| {
        s.admin.token = Some(TOKEN.to_string().into())
    })
    .await;
    let sell_for = |customer: &'static str| {
        let app = &app;
        async move {
            let grant = app.sandbox.create_grant(ENT, Some(customer));
            let hook = app.sandbox.webhook_for(&grant, "entitlement_grant.created");
            assert_eq!(app.post(&hook).await.status(), 200);
        }
    };
    sell_for("cus_grows").await;
    let page = app
        .page("/admin/jobs/bulk?action=cancel&q=cus_grows", Some(TOKEN))
        .await;
    assert!(page.contains("Cancel 1 jobs?"), "{page}");
    // Six more sales match the same filter before the person clicks yes.
    for _ in 0..6 {
        sell_for("cus_grows").await;
    }
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let run_bulk = |form: &[(&str, &str)]| {
        client
            .post(format!("{}/admin/jobs/bulk", app.base()))
            .bearer_auth(TOKEN)
            .form(form)
            .send()
    };
    let run = run_bulk(&[("action", "cancel"), ("q", "cus_grows"), ("expected", "1")])
        .await
        .unwrap();
    assert_eq!(run.status(), 303);
    let location = run.headers()["location"].to_str().unwrap().to_string();
    assert!(location.contains("done=bulk_grew&n=7"), "{location}");
    assert_eq!(
        app.count("SELECT count(*) FROM jobs WHERE state = 'cancelled'")
            .await,
        0,
        "nothing was cancelled"
    );
    let again = app.page(&location, Some(TOKEN)).await;
    assert!(
        again.contains("nothing changed: 7 jobs match now") && again.contains("Cancel 7 jobs?"),
        "{again}"
    );
    // A form that does not say what was confirmed, or says nonsense, changes nothing either.
    for expected in [None, Some("-5"), Some("99999999999999999999")] {
        let mut form = vec![("action", "cancel"), ("q", "cus_grows")];
        form.extend(expected.map(|e| ("expected", e)));
        let blind = run_bulk(&form).await.unwrap();
        assert_eq!(blind.status(), 400, "{expected:?}");
    }
    let run = run_bulk(&[("action", "cancel"), ("q", "cus_grows"), ("expected", "7")])
        .await
        .unwrap();
    assert!(
        run.headers()["location"]
            .to_str()
            .unwrap()
            .contains("done=bulk_cancel&n=7")
    );
    app.stop().await;
}
