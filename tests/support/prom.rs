//! Test support: real Prometheus processes on loopback (Debian's package, which
//! `./scripts/test` installs), each in a temp dir with its own config, killed on drop.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// A child process killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether `binary` is on the PATH.
pub fn have(binary: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {binary}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether the end-to-end tests can run; with `STAGEGATE_E2E` set, a missing binary fails.
pub fn e2e_available(binaries: &[&str]) -> bool {
    let missing: Vec<&&str> = binaries.iter().filter(|b| !have(b)).collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("STAGEGATE_E2E").is_none(),
        "STAGEGATE_E2E is set but {missing:?} are missing"
    );
    eprintln!("skipped: {missing:?} are not installed (./scripts/test installs them)");
    false
}

/// Polls `url` until it answers 2xx (30 s at most).
pub fn wait_http(url: &str) {
    let client = reqwest::blocking::Client::new();
    for _ in 0..300 {
        if client
            .get(url)
            .send()
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{url} never became ready");
}

/// A Prometheus server writing its logs and data under `dir`.
pub struct Prometheus {
    pub port: u16,
    pub proc: Proc,
}

impl Prometheus {
    /// Starts `prometheus` with `config` (YAML) on a free port; waits until it is ready.
    pub fn start(dir: &Path, name: &str, config: &str) -> Prometheus {
        let port = crate::support::free_port();
        let file = dir.join(format!("{name}.yml"));
        std::fs::write(&file, config).expect("write prometheus config");
        let log = |suffix: &str| {
            Stdio::from(std::fs::File::create(dir.join(format!("{name}.{suffix}"))).expect("log"))
        };
        let proc = Proc(
            Command::new("prometheus")
                .arg(format!("--config.file={}", file.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join(format!("{name}-tsdb")).display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(log("out"))
                .stderr(log("err"))
                .spawn()
                .expect("prometheus"),
        );
        wait_http(&format!("http://127.0.0.1:{port}/-/ready"));
        Prometheus { port, proc }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// An instant query's JSON answer (`Null` when it cannot be had).
    pub fn query(&self, promql: &str) -> Value {
        reqwest::blocking::Client::new()
            .get(format!("{}/api/v1/query", self.url()))
            .query(&[("query", promql)])
            .send()
            .and_then(|r| r.json())
            .unwrap_or(Value::Null)
    }

    /// The first result's value of an instant query, as a number.
    pub fn value(&self, promql: &str) -> Option<f64> {
        self.query(promql)["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
    }

    /// A path of the HTTP API as text (for failure messages).
    pub fn api(&self, path: &str) -> String {
        reqwest::blocking::get(format!("{}{path}", self.url()))
            .and_then(|r| r.text())
            .unwrap_or_default()
    }

    /// Waits (up to 30 s) until `metric` has at least two samples: target discovery is
    /// throttled to 5 s, and `increase()` needs two.
    pub fn wait_scraped(&self, metric: &str) {
        for _ in 0..300 {
            if self
                .value(&format!("count_over_time({metric}[1m])"))
                .is_some_and(|n| n >= 2.0)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "prometheus never scraped {metric} twice; targets: {}",
            self.api("/api/v1/targets")
        );
    }
}
