//! A real PostgreSQL server for the tests: `initdb` into a temp dir, started on a loopback port
//! as an unprivileged user (the `postgres` account when the tests run as root). Its wrapper
//! shell stops it when the test process ends, however it ends: the wrapper waits on a pipe
//! only this process holds open.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The directory holding `initdb`, `postgres` and `pg_ctl`: `STAGEGATE_PG_BIN`, else the one on
/// `PATH`, else the newest Debian install under `/usr/lib/postgresql`.
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("STAGEGATE_PG_BIN") {
        return PathBuf::from(dir);
    }
    if let Ok(out) = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
    {
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && !path.is_empty() {
            let real = std::fs::canonicalize(&path).unwrap_or_else(|_| PathBuf::from(&path));
            return real.parent().expect("initdb has a directory").to_path_buf();
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect(
            "PostgreSQL is installed (Debian's `postgresql` package; ./scripts/test installs it)",
        )
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().expect("an initdb under /usr/lib/postgresql")
}

/// The uid and gid to run the server as: `postgres` when we are root (initdb refuses root).
fn account() -> Option<(u32, u32)> {
    if !rustix::process::getuid().is_root() {
        return None;
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("id");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a postgres account (Debian's package creates it)")
    };
    Some((id("-u"), id("-g")))
}

fn as_account(command: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = account() {
        command.uid(uid).gid(gid);
    }
    command
}

/// A running server.
pub struct PgServer {
    pub port: u16,
    dir: PathBuf,
    /// The wrapper shell and the pipe whose end stops the server.
    running: Mutex<Option<(Child, ChildStdin)>>,
    databases: AtomicU64,
    /// Whether the wrapper removes the directory when it stops the server (the shared
    /// server is never dropped: its wrapper cleans up when the test process ends).
    cleanup: bool,
    fsync: Mutex<bool>,
}

/// One server per test process, shared by its tests (each gets its own database).
pub fn shared() -> &'static PgServer {
    static SERVER: OnceLock<PgServer> = OnceLock::new();
    SERVER.get_or_init(|| PgServer::create(true))
}

impl PgServer {
    /// initdb and start a server of its own (tests that stop it use one).
    pub fn start() -> PgServer {
        PgServer::create(false)
    }

    /// Like [`PgServer::start`], with fsync on (benchmarks measure durable commits).
    pub fn start_durable() -> PgServer {
        let server = PgServer::create(false);
        server.stop();
        *server.fsync.lock().expect("lock") = true;
        server.resume();
        server
    }

    fn create(cleanup: bool) -> PgServer {
        let dir = tempfile::Builder::new()
            .prefix("stagegate-pg")
            .tempdir()
            .expect("temp dir")
            .keep();
        if let Some((uid, gid)) = account() {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown the pg dir");
        }
        let data = dir.join("data");
        let out = as_account(&mut Command::new(bin_dir().join("initdb")))
            .args(["-D"])
            .arg(&data)
            .args(["-U", "stagegate", "-A", "trust", "-E", "UTF8", "--no-sync"])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let server = PgServer {
            port: free_port(),
            dir,
            running: Mutex::new(None),
            databases: AtomicU64::new(0),
            cleanup,
            fsync: Mutex::new(false),
        };
        server.resume();
        server
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub fn resume(&self) {
        let postgres = bin_dir().join("postgres");
        let script = format!(
            "'{}' -D '{}' -p {} -k '{}' -c listen_addresses=127.0.0.1 -c fsync={} \
             -c max_connections=400 -c log_min_messages=fatal >'{}/server.log' 2>&1 & pid=$!; \
             cat >/dev/null; kill -INT $pid 2>/dev/null; wait $pid{}",
            postgres.display(),
            self.data().display(),
            self.port,
            self.dir.display(),
            if *self.fsync.lock().expect("lock") {
                "on"
            } else {
                "off"
            },
            self.dir.display(),
            if self.cleanup {
                format!("; rm -rf '{}'", self.dir.display())
            } else {
                String::new()
            },
        );
        let mut child = as_account(&mut Command::new("sh"))
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postgres");
        let stdin = child.stdin.take().expect("piped stdin");
        *self.running.lock().expect("lock") = Some((child, stdin));
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if postgres::Client::connect(&self.url("postgres"), postgres::NoTls).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(30));
        }
        panic!(
            "postgres did not start:\n{}",
            std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
        );
    }

    /// Stops the server (fast shutdown) and waits until it is gone.
    pub fn stop(&self) {
        if let Some((mut child, mut stdin)) = self.running.lock().expect("lock").take() {
            let _ = stdin.flush();
            drop(stdin);
            let _ = child.wait();
        }
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://stagegate@127.0.0.1:{}/{database}", self.port)
    }

    /// A fresh, empty database; returns its URL.
    pub fn database(&self) -> String {
        let name = format!(
            "t{}_{}",
            std::process::id(),
            self.databases.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = self.client("postgres");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create database");
        self.url(&name)
    }

    pub fn client(&self, database: &str) -> postgres::Client {
        postgres::Client::connect(&self.url(database), postgres::NoTls).expect("connect")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback port nothing listens on (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A client on the database a URL names.
pub fn connect(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls).expect("connect")
}
