//! Real servers the managed-Postgres tests run against: PgBouncer in transaction mode, a
//! primary with a synchronous streaming standby made for the test, and a TCP proxy the test
//! switches between them (what a cloud's failover does to its endpoint).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::helpers::wait_until;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `host:port` of the test Postgres server.
pub fn test_server() -> (String, u16) {
    std::env::var("KEYRELAY_TEST_DATABASE_URL")
        .ok()
        .and_then(|u| url::Url::parse(&u).ok())
        .map(|u| {
            (
                u.host_str().unwrap_or("127.0.0.1").to_string(),
                u.port().unwrap_or(5432),
            )
        })
        .unwrap_or_else(|| ("127.0.0.1".into(), 5432))
}

/// The first of `candidates` that exists; `None` (the test skips, saying `install`) outside
/// CI, a failure under CI.
fn tool(candidates: &[&str], install: &str) -> Option<PathBuf> {
    let found = candidates.iter().map(PathBuf::from).find(|p| p.exists());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{install} is missing; .ci/run installs it"
        );
        eprintln!("skipping: install {install} to run this test");
    }
    found
}

/// Postgres' own programs (initdb, pg_ctl, pg_basebackup), newest version first.
fn postgres_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    let found = versions.pop().map(|p| p.display().to_string());
    tool(
        &found.iter().map(String::as_str).collect::<Vec<_>>(),
        "Postgres' server programs (initdb, pg_ctl)",
    )
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `program args` as the `postgres` user when this test runs as root (Postgres and PgBouncer
/// refuse to run as root).
fn as_postgres(program: &Path) -> Command {
    if running_as_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// A scratch directory the `postgres` user owns.
fn scratch_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "keyrelay_{what}_{}_{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    if running_as_root() {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(status.success(), "chown {}", dir.display());
    }
    dir
}

fn run(mut command: Command, what: &str) {
    let out = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// PgBouncer in transaction mode in front of the test server, on a private port.
pub struct PgBouncer {
    child: std::process::Child,
    pub port: u16,
    dir: PathBuf,
}

impl PgBouncer {
    /// Starts one with `pool_size` server connections per database; `None` when PgBouncer is
    /// not installed (outside CI).
    pub async fn start(pool_size: u32) -> Option<PgBouncer> {
        let binary = tool(
            &["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"],
            "pgbouncer (apt-get install pgbouncer)",
        )?;
        let dir = scratch_dir("pgbouncer");
        let port = free_port();
        let (host, server_port) = test_server();
        std::fs::write(dir.join("users.txt"), "\"postgres\" \"\"\n").unwrap();
        std::fs::write(
            dir.join("pgbouncer.ini"),
            format!(
                "[databases]\n* = host={host} port={server_port}\n\n[pgbouncer]\n\
                 listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = trust\nauth_file = {users}\npool_mode = transaction\n\
                 default_pool_size = {pool_size}\nmax_db_connections = {pool_size}\n\
                 max_client_conn = 500\nserver_login_retry = 1\nadmin_users = postgres\n",
                users = dir.join("users.txt").display(),
            ),
        )
        .unwrap();
        let mut command = Command::new(&binary);
        if running_as_root() {
            command.args(["-u", "postgres"]);
        }
        let child = command
            .arg(dir.join("pgbouncer.ini"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pgbouncer");
        let bouncer = PgBouncer { child, port, dir };
        wait_until("pgbouncer listens", Duration::from_secs(10), || async {
            TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        })
        .await;
        Some(bouncer)
    }

    /// `postgres://` URL of database `name` through this PgBouncer.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One Postgres server of a throwaway cluster, in its own data directory on a private port.
pub struct Server {
    bin: PathBuf,
    pub data: PathBuf,
    pub port: u16,
}

impl Server {
    fn pg_ctl(&self, args: &[&str]) -> Command {
        let mut command = as_postgres(&self.bin.join("pg_ctl"));
        command
            .arg("-D")
            .arg(&self.data)
            .args(["-w", "-t", "60"])
            .args(args)
            .stdout(Stdio::null());
        command
    }

    fn start(&self) {
        let log = self.data.join("server.log");
        run(
            self.pg_ctl(&["-l", log.to_str().unwrap(), "start"]),
            "pg_ctl start",
        );
    }

    /// Stops the server at once, as a crash would (`-m immediate`).
    pub fn crash(&self) {
        run(self.pg_ctl(&["-m", "immediate", "stop"]), "pg_ctl stop");
    }

    /// Makes a standby the primary.
    pub fn promote(&self) {
        run(self.pg_ctl(&["promote"]), "pg_ctl promote");
    }

    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }
}

/// A primary and a streaming standby that the primary waits for on every commit
/// (synchronous replication), so a commit the primary acknowledged survives its crash.
pub struct Cluster {
    pub primary: Server,
    pub standby: Server,
    dir: PathBuf,
}

impl Cluster {
    /// Makes both servers (initdb, `pg_basebackup -R`) and starts them; `None` when Postgres'
    /// server programs are not installed (outside CI).
    pub async fn start() -> Option<Cluster> {
        let bin = postgres_bin()?;
        let dir = scratch_dir("cluster");
        let primary = Server {
            bin: bin.clone(),
            data: dir.join("primary"),
            port: free_port(),
        };
        let mut initdb = as_postgres(&bin.join("initdb"));
        initdb
            .args(["-U", "postgres", "--auth=trust", "-D"])
            .arg(&primary.data)
            .stdout(Stdio::null());
        run(initdb, "initdb");
        let settings = |port: u16| {
            format!(
                "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
                 fsync = off\nmax_connections = 60\nshared_buffers = 32MB\n\
                 synchronous_standby_names = 'standby'\nwal_sender_timeout = 5s\n",
                dir.display()
            )
        };
        append(
            &primary.data.join("postgresql.conf"),
            &settings(primary.port),
        );
        primary.start();
        let standby = Server {
            bin: bin.clone(),
            data: dir.join("standby"),
            port: free_port(),
        };
        let mut backup = as_postgres(&bin.join("pg_basebackup"));
        backup
            .args(["-h", "127.0.0.1", "-U", "postgres", "-R", "-X", "stream"])
            .args(["-p", &primary.port.to_string(), "-D"])
            .arg(&standby.data);
        run(backup, "pg_basebackup");
        // Promoted, it has no standby of its own to wait for.
        append(
            &standby.data.join("postgresql.conf"),
            &format!("{}synchronous_standby_names = ''\n", settings(standby.port)),
        );
        // After what `-R` wrote there, so this one counts: the primary waits for `standby`.
        append(
            &standby.data.join("postgresql.auto.conf"),
            &format!(
                "primary_conninfo = 'host=127.0.0.1 port={} user=postgres application_name=standby'\n",
                primary.port
            ),
        );
        standby.start();
        let cluster = Cluster {
            primary,
            standby,
            dir,
        };
        let primary_url = cluster.primary.url("postgres");
        wait_until(
            "the standby replicates synchronously",
            Duration::from_secs(60),
            || async {
                let Ok(mut conn) =
                    <sqlx::PgConnection as sqlx::Connection>::connect(&primary_url).await
                else {
                    return false;
                };
                sqlx::query_scalar::<_, String>(
                    "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby'",
                )
                .fetch_optional(&mut conn)
                .await
                .ok()
                .flatten()
                .is_some_and(|s| s == "sync")
            },
        )
        .await;
        Some(cluster)
    }
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for server in [&self.standby, &self.primary] {
            let _ = server.pg_ctl(&["-m", "immediate", "stop"]).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP proxy with one address whose target the test moves, cutting every open connection
/// when it does: a cloud's failover endpoint, or HAProxy in front of Patroni.
pub struct Proxy {
    pub port: u16,
    target: Arc<Mutex<u16>>,
    open: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = Arc::new(Mutex::new(target));
        let open: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (to, conns) = (target.clone(), open.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let port = *to.lock().unwrap();
                let conn = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(("127.0.0.1", port)).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                let mut conns = conns.lock().unwrap();
                conns.retain(|c| !c.is_finished());
                conns.push(conn);
            }
        });
        Proxy {
            port,
            target,
            open,
            accept,
        }
    }

    /// New connections go to `port`; open ones are cut.
    pub fn switch_to(&self, port: u16) {
        *self.target.lock().unwrap() = port;
        for conn in self.open.lock().unwrap().drain(..) {
            conn.abort();
        }
    }

    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.switch_to(0);
    }
}
