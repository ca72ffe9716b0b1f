//! Test harness: each test gets its own migrated database, a sandbox Dodo on a local port and
//! keyrelay itself, configured for fast retries. `KEYRELAY_TEST_DATABASE_URL` names the server
//! (default `postgres://postgres@127.0.0.1:5432/postgres`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Once;
use std::time::Duration;

use keyrelay::configuration::{RateLimitTier, Settings};
use keyrelay::db::Db;
use keyrelay::domain::{GrantId, JobState, KeyState, LicenseKey};
use keyrelay::fulfillment::WorkerContext;
use keyrelay::harness::LocalStack;
use keyrelay::pool::{NewPool, add_pool, import_keys, keyfile::ParsedKeys};
use keyrelay::sandbox::{Sandbox, SignedWebhook};
use keyrelay::startup::{Role, dodo_client};
use secrecy::ExposeSecret;

pub const ENT: &str = "ent_pro_license_manual";

pub fn base_settings() -> Settings {
    let url = std::env::var("KEYRELAY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let env: HashMap<String, String> = [("DATABASE_URL".to_string(), url)].into();
    let mut s = Settings::load_from(None, &env).expect("test settings");
    s.database.max_connections = 4;
    s.worker.backoff_base_ms = 10;
    s.worker.backoff_max_ms = 50;
    s.worker.poll_interval_ms = 25;
    s.worker.lease_secs = 30;
    s.worker.shutdown_grace_secs = 10;
    s.dodo.rate_limit = RateLimitTier::Off;
    // Each test seals its keys under a key of its own.
    s.keys.encryption_keys = Some(keyrelay::crypto::new_encryption_key());
    s.dodo.timeout_secs = 2;
    // Tests that need the reconciler run it themselves, or turn the periodic one on.
    s.reconciler.interval_secs = 0;
    s
}

/// Every log line keyrelay writes during the tests (debug level), to check what reaches logs.
static LOGS: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

struct LogCapture;

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("keyrelay=debug,info")
            .with_writer(|| LogCapture)
            .with_ansi(false)
            .try_init();
    });
}

pub fn captured_logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap()).to_string()
}

/// Drops test databases left behind by earlier runs (older than an hour).
fn sweep_old_databases(settings: &Settings) {
    static SWEEP: Once = Once::new();
    SWEEP.call_once(|| {
        let settings = settings.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let Ok(pool) = keyrelay::db::connect(&settings).await else { return };
                let cutoff = (chrono::Utc::now() - chrono::Duration::hours(1)).format("%Y%m%d%H%M%S").to_string();
                let names: Vec<String> = sqlx::query_scalar(
                    "SELECT datname FROM pg_database WHERE datname LIKE 'keyrelay_test_%' AND split_part(datname, '_', 3) < $1",
                )
                .bind(cutoff)
                .fetch_all(&pool)
                .await
                .unwrap_or_default();
                for name in names {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).execute(&pool).await;
                }
            });
        })
        .join()
        .ok();
    });
}

pub struct TestApp {
    pub stack: LocalStack,
    pub db: Db,
    pub sandbox: Sandbox,
    pub url: String,
    pub http: reqwest::Client,
}

impl TestApp {
    /// keyrelay with the webhook receiver and the worker pool.
    pub async fn spawn() -> TestApp {
        Self::spawn_with(Role::All, |_| {}).await
    }

    /// Only the webhook receiver: tests drive the queue step by step with `run_batch`.
    pub async fn spawn_web() -> TestApp {
        Self::spawn_with(Role::Web, |_| {}).await
    }

    pub async fn spawn_with(role: Role, tweak: impl FnOnce(&mut Settings)) -> TestApp {
        Self::spawn_on(base_settings(), role, tweak).await
    }

    /// keyrelay on a new database of the server `settings` names (after `tweak`).
    pub async fn spawn_on(
        mut settings: Settings,
        role: Role,
        tweak: impl FnOnce(&mut Settings),
    ) -> TestApp {
        capture_logs();
        sweep_old_databases(&base_settings());
        keyrelay::db::create_scratch_database(&mut settings.database, "keyrelay_test")
            .await
            .expect("create test database")
            .close()
            .await;
        tweak(&mut settings);
        let stack = LocalStack::start(settings, role)
            .await
            .expect("start keyrelay");
        TestApp {
            db: stack.db.clone(),
            sandbox: stack.sandbox.sandbox.clone(),
            url: stack.webhook_url.clone().unwrap_or_default(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            stack,
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.stack.settings
    }

    /// A worker context against this app's database and sandbox, for `run_batch`.
    pub fn worker(&self) -> WorkerContext {
        let s = self.settings();
        WorkerContext::new(
            self.db.clone(),
            dodo_client(s, &self.db).unwrap(),
            &s.worker,
        )
        .with_recipients(s.recipients())
        .with_sources(s.sources().unwrap())
        .with_vault(s.keys.sealing_vault().unwrap())
    }

    pub async fn add_pool(&self, name: &str, entitlement: &str, keys: &[&str]) {
        add_pool(
            &self.db,
            &NewPool {
                name: name.into(),
                entitlement_id: entitlement.into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        if !keys.is_empty() {
            self.import(name, keys).await;
        }
    }

    /// Queues `n` jobs of `entitlement` straight into the table, `grant_{name}_1` and on, each
    /// for customer `cus_{name}`: a backlog without webhooks, for tests of what reads it.
    pub async fn queue_jobs(&self, name: &str, entitlement: &str, n: i64) {
        sqlx::query(
            "INSERT INTO jobs (grant_id, entitlement_id, customer_id) \
             SELECT 'grant_' || $1 || '_' || i, $2, 'cus_' || $1 FROM generate_series(1, $3) i",
        )
        .bind(name)
        .bind(entitlement)
        .bind(n)
        .execute(&self.db)
        .await
        .unwrap();
    }

    pub async fn import(&self, name: &str, keys: &[&str]) {
        let parsed = ParsedKeys {
            keys: keys.iter().map(|k| LicenseKey::parse(k).unwrap()).collect(),
            ..Default::default()
        };
        import_keys(&self.db, &self.vault(), name, &parsed, false, |_| {})
            .await
            .unwrap();
    }

    pub async fn post(&self, hook: &SignedWebhook) -> reqwest::Response {
        self.post_raw(
            &hook.id,
            &hook.timestamp.to_string(),
            &hook.signature,
            hook.body.clone(),
        )
        .await
    }

    pub async fn post_raw(&self, id: &str, ts: &str, sig: &str, body: String) -> reqwest::Response {
        self.http
            .post(&self.url)
            .header("webhook-id", id)
            .header("webhook-timestamp", ts)
            .header("webhook-signature", sig)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("keyrelay answers")
    }

    /// Where keyrelay's routes are: the webhook URL without `/webhooks/dodo`.
    pub fn base(&self) -> String {
        self.url.trim_end_matches("/webhooks/dodo").to_string()
    }

    /// The text of `GET {base}{path}`, with `token` as a bearer token if given.
    pub async fn page(&self, path: &str, token: Option<&str>) -> String {
        let mut request = self.http.get(format!("{}{path}", self.base()));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request
            .send()
            .await
            .expect("keyrelay answers")
            .text()
            .await
            .expect("a text answer")
    }

    /// Creates a pending grant in the sandbox and delivers its `created` webhook; asserts 200.
    pub async fn sell(&self) -> String {
        let grant = self.sandbox.create_grant(ENT, None);
        let response = self
            .post(
                &self
                    .sandbox
                    .webhook_for(&grant, "entitlement_grant.created"),
            )
            .await;
        assert_eq!(
            response.status(),
            200,
            "{}",
            response.text().await.unwrap_or_default()
        );
        grant.id
    }

    /// Sells `count` grants (see `sell`).
    pub async fn sell_many(&self, count: usize) -> Vec<String> {
        let mut grants = Vec::with_capacity(count);
        for _ in 0..count {
            grants.push(self.sell().await);
        }
        grants
    }

    /// Waits (at most a minute) until `count` jobs are delivered.
    pub async fn wait_delivered(&self, count: i64) {
        wait_until(
            &format!("{count} jobs are delivered"),
            Duration::from_secs(60),
            || async {
                self.count("SELECT count(*) FROM jobs WHERE state = 'delivered'")
                    .await
                    == count
            },
        )
        .await;
    }

    pub async fn job(&self, grant_id: &str) -> JobRow {
        sqlx::query_as("SELECT state, attempts, key_id, last_error, last_http_status, run_at FROM jobs WHERE grant_id = $1")
            .bind(grant_id)
            .fetch_one(&self.db)
            .await
            .expect("job exists")
    }

    pub async fn job_state(&self, grant_id: &str) -> JobState {
        self.job(grant_id).await.state
    }

    /// Waits (at most 30 s) until the grant's job is in `state`.
    pub async fn wait_for_state(&self, grant_id: &str, state: JobState) {
        wait_until(
            &format!("grant {grant_id} is {state}"),
            Duration::from_secs(30),
            || async { self.job_state(grant_id).await == state },
        )
        .await;
    }

    /// Every key value Dodo's side (the sandbox) was sent, in the order of the calls.
    pub fn keys_sent_to_dodo(&self) -> Vec<String> {
        self.sandbox
            .fulfill_log()
            .into_iter()
            .map(|r| r.key)
            .collect()
    }

    /// Signs in to the dashboard with `token`: the session cookie as `name=value`, and the
    /// whole `Set-Cookie`.
    pub async fn sign_in(&self, token: &str) -> (String, String) {
        let r = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
            .post(format!("{}/admin/login", self.base()))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303, "signing in with the admin token");
        let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
        (cookie.split(';').next().unwrap().to_string(), cookie)
    }

    /// The encryption keys this app's key values are sealed with.
    pub fn vault(&self) -> keyrelay::crypto::Vault {
        self.settings().keys.vault().unwrap()
    }

    /// The environment a `keyrelay` command needs to work on this app's database.
    pub fn cli_env(&self) -> Vec<(&'static str, String)> {
        let keys = self.settings().keys.encryption_keys.as_ref().unwrap();
        vec![
            (
                "DATABASE_URL",
                self.settings().database.url.expose_secret().to_string(),
            ),
            ("KEYRELAY_ENCRYPTION_KEY", keys.expose_secret().to_string()),
        ]
    }

    /// The environment a `keyrelay serve --role worker` process needs to work on this app's
    /// database (through the same pooler, if any) against its sandbox, polling every
    /// `poll_ms` and reconciling every second.
    pub fn worker_env(&self, poll_ms: u64) -> Vec<(&'static str, String)> {
        let settings = self.settings();
        let mut env = self.cli_env();
        match &settings.database.direct_url {
            Some(url) => env.push(("DATABASE_DIRECT_URL", url.expose_secret().to_string())),
            None if self.db.is_pooled() => env.push((
                "KEYRELAY_DATABASE__POOLER",
                settings.database.pooler.as_str().into(),
            )),
            None => {}
        }
        let api_key = settings.dodo.api_key.as_ref().unwrap().expose_secret();
        env.extend([
            ("DODO_PAYMENTS_API_KEY", api_key.to_string()),
            (
                "DODO_PAYMENTS_BASE_URL",
                settings.dodo.base_url.clone().unwrap(),
            ),
            ("KEYRELAY_DODO__RATE_LIMIT", "off".into()),
            ("KEYRELAY_DATABASE__MIGRATE_ON_START", "false".into()),
            ("KEYRELAY_WORKER__POLL_INTERVAL_MS", poll_ms.to_string()),
            ("KEYRELAY_WORKER__BACKOFF_BASE_MS", "10".into()),
            ("KEYRELAY_WORKER__BACKOFF_MAX_MS", "50".into()),
            ("KEYRELAY_RECONCILER__INTERVAL_SECS", "1".into()),
            ("RUST_LOG", "keyrelay=info".into()),
        ]);
        env
    }

    /// The key values of the rows `condition` selects (SQL on `keys`), opened, by id.
    pub async fn key_values(&self, condition: &str) -> Vec<String> {
        let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(&format!(
            "SELECT id, value_sealed FROM keys WHERE {condition} ORDER BY id"
        ))
        .fetch_all(&self.db)
        .await
        .unwrap();
        let vault = self.vault();
        rows.iter()
            .map(|(id, sealed)| vault.open(sealed, keyrelay::crypto::Row::Key(*id)).unwrap())
            .collect()
    }

    pub async fn key_state(&self, value: &str) -> (KeyState, Option<String>) {
        sqlx::query_as(
            "SELECT state, grant_id FROM keys \
             WHERE id = (SELECT key_id FROM key_values WHERE value_hash = $1)",
        )
        .bind(self.vault().hash(value))
        .fetch_one(&self.db)
        .await
        .expect("key exists")
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.db).await.unwrap()
    }

    /// Makes a retrying job due now instead of after its backoff.
    pub async fn make_due(&self, grant_id: &str) {
        sqlx::query("UPDATE jobs SET run_at = now() WHERE grant_id = $1")
            .bind(grant_id)
            .execute(&self.db)
            .await
            .unwrap();
    }

    pub async fn stop(self) {
        let settings = self.stack.settings.clone();
        self.db.close().await;
        self.stack.stop().await.expect("clean shutdown");
        keyrelay::db::drop_database(&settings)
            .await
            .expect("drop test database");
    }
}

#[derive(Debug, sqlx::FromRow)]
pub struct JobRow {
    pub state: JobState,
    pub attempts: i32,
    pub key_id: Option<i64>,
    pub last_error: Option<String>,
    pub last_http_status: Option<i32>,
    pub run_at: chrono::DateTime<chrono::Utc>,
}

/// Lets connections to the app's database in again, or refuses them and ends the open ones
/// (an outage the test controls).
pub async fn set_database_reachable(app: &TestApp, reachable: bool) {
    let settings = app.settings();
    let name = url::Url::parse(settings.database.url.expose_secret())
        .unwrap()
        .path()
        .trim_start_matches('/')
        .to_string();
    let mut admin = base_settings();
    admin.database.max_connections = 2;
    let admin = keyrelay::db::connect(&admin).await.unwrap();
    sqlx::query(&format!(
        "ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS {reachable}"
    ))
    .execute(&admin)
    .await
    .unwrap();
    if !reachable {
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
            .bind(&name)
            .execute(&admin)
            .await
            .unwrap();
    }
    admin.close().await;
}

/// Polls `check` until it returns true, failing the test after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every node of an `EXPLAIN (FORMAT JSON)` plan, depth first.
pub fn plan_nodes(node: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut all = vec![node];
    for below in node["Plans"].as_array().into_iter().flatten() {
        all.extend(plan_nodes(below));
    }
    all
}

/// `TestApp::cli_env` as `keyrelay()` takes it.
pub fn as_env<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// A grant id as keyrelay's functions take it.
pub fn grant_id(raw: &str) -> GrantId {
    GrantId::parse(raw).unwrap()
}

/// The `keyrelay` binary with only `envs` (and PATH), in a scratch working directory.
pub fn keyrelay_command(envs: &[(&str, &str)], args: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_keyrelay"));
    command
        .current_dir(std::env::temp_dir())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(envs.iter().copied())
        .args(args);
    command
}

/// Runs `keyrelay` and waits for it (for tests with no keyrelay of their own running).
pub fn keyrelay(envs: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    keyrelay_command(envs, args).output().expect("run keyrelay")
}

/// `keyrelay` for async tests: the subprocess runs while this test's runtime keeps serving the
/// keyrelay under test (a blocking wait would starve it), and a hang fails after a minute.
pub async fn keyrelay_async(envs: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    keyrelay_async_within(envs, args, Duration::from_secs(60)).await
}

/// What a `keyrelay demo` run is allowed: more than its own waits (two minutes for its grants
/// to settle, half a minute for its notices, and a graceful stop), so a slow run ends with
/// the demo's own report of what did not finish.
pub const DEMO_LIMIT: Duration = Duration::from_secs(240);

/// `keyrelay_async` for a run allowed `limit` (the demo, whose own waits are longer than a
/// minute). A run that hangs is killed, and the failure shows what it had printed by then.
pub async fn keyrelay_async_within(
    envs: &[(&str, &str)],
    args: &[&str],
    limit: Duration,
) -> std::process::Output {
    use tokio::io::AsyncReadExt;
    let mut child = tokio::process::Command::from(keyrelay_command(envs, args))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run keyrelay");
    let read = |pipe: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>| {
        tokio::spawn(async move {
            let mut out = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut out).await;
            }
            out
        })
    };
    let stdout = read(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = read(child.stderr.take().map(|p| Box::new(p) as _));
    let finished = tokio::time::timeout(limit, child.wait()).await;
    if finished.is_err() {
        let _ = child.kill().await;
    }
    let (stdout, stderr) = (stdout.await.unwrap(), stderr.await.unwrap());
    let Ok(status) = finished else {
        panic!(
            "keyrelay {args:?} did not finish within {limit:?}; it had printed:\n{}{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        );
    };
    std::process::Output {
        status: status.expect("wait for keyrelay"),
        stdout,
        stderr,
    }
}

/// Starts `keyrelay serve --role worker` with only `env`; what it writes to stderr goes to
/// `log`. Killed when dropped.
pub fn spawn_worker(
    env: &[(&'static str, String)],
    log: std::sync::Arc<std::sync::Mutex<String>>,
) -> tokio::process::Child {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::from(keyrelay_command(
        &as_env(env),
        &["serve", "--role", "worker"],
    ))
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped())
    .kill_on_drop(true)
    .spawn()
    .expect("start keyrelay serve --role worker");
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let mut log = log.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    child
}
