//! Test support: runs the real `stagegate` binary on an ephemeral loopback port.
#![allow(dead_code, reason = "each test binary uses a different subset")]
#![allow(
    clippy::panic,
    clippy::disallowed_methods,
    reason = "test harness: panics report failures, deadlines use real time"
)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub mod pg;
pub mod prom;

pub const ADMIN: &str = "admin-secret";
pub const OPERATOR: &str = "operator-secret";
pub const INGEST: &str = "ingest-secret";
pub const READER: &str = "read-secret";

/// The rollout most tests use: the shipped example with short stages.
pub fn config(extra_stage_opts: &str) -> String {
    format!(
        r#"
server: {{ listen: 127.0.0.1:0, data_dir: "{{DATA_DIR}}", tick: 50ms }}
auth:
  tokens:
    - {{ name: platform, role: admin,    token_env: STAGEGATE_ADMIN_TOKEN }}
    - {{ name: oncall,   role: operator, token_env: STAGEGATE_OPERATOR_TOKEN }}
    - {{ name: apps,     role: ingest,   token_env: STAGEGATE_INGEST_TOKEN }}
    - {{ name: viewer,   role: read,     token_env: STAGEGATE_READ_TOKEN }}
notifiers:
  - {{ name: hook, kind: webhook, url: "http://127.0.0.1:9/hook" }}
segments:
  internal:   {{ match: {{ team: [support-ops, revops] }} }}
  enterprise: {{ match: {{ tier: [enterprise] }} }}
  everyone:   {{}}
workflows:
  support-reply: {{ stable: v7, versions: [v7, v8] }}
  summarize: {{ stable: s1, versions: [s1] }}
rollouts:
  - name: support-reply-v8
    workflow: support-reply
    baseline: v7
    candidate: v8
    segments: [internal, enterprise, everyone]
    stages:
      - {{ name: internal, traffic: {{ internal: 100 }}, min_samples: 200 {extra_stage_opts} }}
      - {{ name: smb-5,    traffic: {{ internal: 100, everyone: 5 }}, min_samples: 300 {extra_stage_opts} }}
      - {{ name: half,     traffic: {{ internal: 100, enterprise: 10, everyone: 50 }}, min_samples: 500 {extra_stage_opts} }}
      - {{ name: full,     traffic: {{ internal: 100, enterprise: 100, everyone: 100 }}, approval: manual }}
    confidence: 0.95
    max_narrows: 2
    gates:
      - {{ signal: quality,    stat: mean,        min: 0.80, max_drop: 0.03,     on_breach: rollback }}
      - {{ signal: latency_ms, stat: p95,         max: 4000, max_ratio: 1.25,    on_breach: narrow }}
      - {{ signal: cost_usd,   stat: mean,        max: 0.05, max_ratio: 1.5,     on_breach: read_only }}
      - {{ signal: fallback,   stat: rate,        max: 0.05, max_increase: 0.02, on_breach: narrow }}
      - {{ signal: review,     stat: reject_rate, max: 0.10, max_increase: 0.02, on_breach: rollback }}
    lane:
      owner: revenue-ops-lead
      affected_systems: [crm, email-drafts]
      notify: [hook]
      repair: "restore prior CRM values from the workflow receipts"
      reenable: {{ ack: true, cooldown: 1s, healthy_read_only_samples: 20 }}
"#
    )
}

pub struct Server {
    child: Option<Child>,
    /// A command the binary runs under (`prlimit …`, `faketime …`), kept across restarts.
    wrapper: Vec<String>,
    pub base: String,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    client: reqwest::blocking::Client,
}

/// A response: status and JSON body (`Value::Null` when not JSON).
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub text: String,
    pub headers: Vec<(String, String)>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Server {
    pub fn start(config: &str) -> Server {
        Self::start_wrapped(config, &[])
    }

    /// Starts the binary as the last arguments of `wrapper` (e.g. `["prlimit", "--nofile=256", "--"]`).
    pub fn start_wrapped(config: &str, wrapper: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("stagegate.yaml");
        Self::write_config(&config_path, dir.path(), config);
        let wrapper = wrapper.iter().map(ToString::to_string).collect();
        Self::launch(dir, config_path, wrapper)
    }

    pub fn write_config(path: &Path, dir: &Path, config: &str) {
        let data = dir.join("data");
        std::fs::write(
            path,
            config.replace("{DATA_DIR}", &data.display().to_string()),
        )
        .expect("write config");
    }

    fn spawn(config_path: &Path, dir: &Path, wrapper: &[String]) -> std::io::Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("server.log"))?;
        let mut command = match wrapper.split_first() {
            None => Command::new(env!("CARGO_BIN_EXE_stagegate")),
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(env!("CARGO_BIN_EXE_stagegate"));
                c
            }
        };
        command
            .args(["serve", "--config"])
            .arg(config_path)
            .env("STAGEGATE_ADMIN_TOKEN", ADMIN)
            .env("STAGEGATE_OPERATOR_TOKEN", OPERATOR)
            .env("STAGEGATE_INGEST_TOKEN", INGEST)
            .env("STAGEGATE_READ_TOKEN", READER)
            .env("STAGEGATE_LOG", "info")
            .env("TEST_SLACK_URL", Self::slack_url(config_path))
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
    }

    /// Slack notifiers in test configs post to the webhook receiver's `/slack` path.
    fn slack_url(config_path: &Path) -> String {
        let text = std::fs::read_to_string(config_path).unwrap_or_default();
        let port = text
            .split("url: \"http://127.0.0.1:")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .unwrap_or("9");
        format!("http://127.0.0.1:{port}/slack")
    }

    fn launch(dir: tempfile::TempDir, config_path: PathBuf, wrapper: Vec<String>) -> Server {
        let mut child = Self::spawn(&config_path, dir.path(), &wrapper).expect("spawn stagegate");
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let log =
                    std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
                panic!("stagegate did not start:\n{log}");
            }
        };
        let addr = line
            .strip_prefix("listening on ")
            .expect("listening line")
            .trim()
            .to_string();
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        Server {
            child: Some(child),
            wrapper,
            base: format!("http://{addr}"),
            dir,
            config_path,
            client,
        }
    }

    /// Runs a second process on the same data dir and returns its exit status and stderr.
    pub fn run_second(&self) -> (Option<i32>, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_stagegate"))
            .args(["serve", "--config"])
            .arg(&self.config_path)
            .output()
            .expect("run");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// kill -9, then start again on the same data dir and config.
    pub fn crash_and_restart(mut self) -> Server {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
        let config_path = self.config_path.clone();
        Self::launch(dir, config_path, std::mem::take(&mut self.wrapper))
    }

    /// SIGTERM, wait for a clean exit, then start again on the same data dir and config.
    pub fn stop_and_restart(mut self) -> Server {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        assert_eq!(self.wait_exit(), Some(0), "clean exit:\n{}", self.log());
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
        let config_path = self.config_path.clone();
        Self::launch(dir, config_path, std::mem::take(&mut self.wrapper))
    }

    /// Rewrites the config file in place (the data dir stays).
    pub fn rewrite_config(&self, config: &str) {
        Self::write_config(&self.config_path, self.dir.path(), config);
    }

    /// The address (`127.0.0.1:port`) the server listens on.
    pub fn addr(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    /// Waits up to 20 s for the process to exit by itself; returns its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let child = self.child.as_mut()?;
        for _ in 0..1000 {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn reply(resp: reqwest::blocking::Response) -> Reply {
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let text = resp.text().unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            body,
            text,
            headers,
        }
    }

    pub fn get(&self, path: &str, token: Option<&str>) -> Reply {
        let mut req = self.client.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        Self::reply(req.send().expect("request"))
    }

    /// A GET with extra headers (`Accept`, …).
    pub fn client_get_with(
        &self,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut req = self.client.get(format!("{}{path}", self.base));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        Self::reply(req.send().expect("request"))
    }

    pub fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Reply {
        self.post_raw(path, token, serde_json::to_vec(body).expect("json"))
    }

    pub fn post_raw(&self, path: &str, token: Option<&str>, body: Vec<u8>) -> Reply {
        self.post_with(path, token, &[], body)
    }

    /// A POST with extra headers (`Idempotency-Key`, …).
    pub fn post_with(
        &self,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Reply {
        let mut req = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        Self::reply(req.send().expect("request"))
    }

    pub fn status(&self) -> Value {
        let r = self.get("/v1/rollouts/support-reply-v8", Some(READER));
        assert_eq!(r.status, 200, "{}", r.text);
        r.body
    }

    /// Polls the rollout's status until `pred` holds; panics with the last status at the deadline.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.status();
            if pred(&s) {
                return s;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; last status:\n{}",
                    serde_json::to_string_pretty(&s).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn send_events(&self, events: &[Value]) -> Value {
        let mut total = json!({"accepted": 0, "duplicates": 0, "rejected": []});
        for chunk in events.chunks(2000) {
            let r = self.post("/v1/events", Some(INGEST), &Value::Array(chunk.to_vec()));
            assert_eq!(r.status, 200, "{}", r.text);
            total["accepted"] = json!(
                total["accepted"].as_u64().unwrap_or(0) + r.body["accepted"].as_u64().unwrap_or(0)
            );
            total["duplicates"] = json!(
                total["duplicates"].as_u64().unwrap_or(0)
                    + r.body["duplicates"].as_u64().unwrap_or(0)
            );
        }
        total
    }

    /// Reports 400 low-quality candidate tasks from the internal team and waits for the
    /// controller's automatic rollback.
    pub fn drive_quality_rollback(&self, tag: &str) {
        self.send_events(&events(
            tag,
            400,
            "v8",
            internal(),
            Profile {
                quality: 0.5,
                ..HEALTHY
            },
        ));
        self.wait_for("an automatic rollback", |s| s["state"] == "rolled_back");
    }

    /// Reports 300 pricey candidate tasks from the internal team and waits for the controller's
    /// read-only fallback (the cost gate's `on_breach`).
    pub fn drive_cost_read_only(&self, tag: &str) {
        self.send_events(&events(
            tag,
            300,
            "v8",
            internal(),
            Profile {
                cost_usd: 0.2,
                ..HEALTHY
            },
        ));
        self.wait_for("the read-only fallback", |s| s["state"] == "read_only");
    }

    pub fn assign(&self, subject: &str, attributes: Value) -> Value {
        let r = self.post(
            "/v1/assign",
            Some(INGEST),
            &json!({"workflow": "support-reply", "subject": subject, "attributes": attributes}),
        );
        assert_eq!(r.status, 200, "{}", r.text);
        r.body
    }

    pub fn receipts(&self) -> Vec<Value> {
        let r = self.get("/v1/receipts?rollout=support-reply-v8", Some(READER));
        assert_eq!(r.status, 200, "{}", r.text);
        r.body["receipts"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// How the tasks of one synthetic stream behave.
#[derive(Clone, Copy)]
pub struct Profile {
    pub quality: f64,
    pub latency_ms: f64,
    pub cost_usd: f64,
    /// One task in `fallback_every` falls back (0: never).
    pub fallback_every: u64,
    /// One reviewed task in `reject_every` is rejected (0: never).
    pub reject_every: u64,
}

pub const HEALTHY: Profile = Profile {
    quality: 0.9,
    latency_ms: 1000.0,
    cost_usd: 0.01,
    fallback_every: 200,
    reject_every: 100,
};

/// `n` events of `version` in a segment (by attributes), deterministic, with unique ids.
pub fn events(tag: &str, n: u64, version: &str, attributes: Value, p: Profile) -> Vec<Value> {
    let mut state: u64 = tag.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let mut uniform = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 11) as f64) / ((1u64 << 53) as f64)
    };
    (0..n)
        .map(|i| {
            let q = (p.quality + (uniform() - 0.5) * 0.1).clamp(0.0, 1.0);
            let l = p.latency_ms * (0.8 + 0.4 * uniform());
            let c = p.cost_usd * (0.8 + 0.4 * uniform());
            json!({
                "event_id": format!("{tag}-{version}-{i}"),
                "workflow": "support-reply",
                "version": version,
                "subject": format!("{tag}-subject-{i}"),
                "attributes": attributes,
                "quality": q,
                "latency_ms": l,
                "cost_usd": c,
                "fallback": p.fallback_every > 0 && i % p.fallback_every == 0,
                "review": if p.reject_every > 0 && i % p.reject_every == 0 { "rejected" } else { "approved" },
            })
        })
        .collect()
}

pub fn internal() -> Value {
    json!({"team": "support-ops"})
}

pub fn smb() -> Value {
    json!({"tier": "smb"})
}

pub fn enterprise() -> Value {
    json!({"tier": "enterprise"})
}

/// A request a [`Receiver`] got.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A loopback HTTP receiver for webhooks: answers 500 to the first `fail_first` requests, then 200.
pub struct Receiver {
    pub port: u16,
    pub got: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
}

impl Receiver {
    pub fn start(fail_first: usize) -> Receiver {
        Self::start_on(0, fail_first)
    }

    pub fn start_on(port: u16, fail_first: usize) -> Receiver {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind receiver");
        let port = listener.local_addr().expect("addr").port();
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&got);
        std::thread::spawn(move || {
            let mut seen = 0usize;
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head, body) = loop {
                    let n = stream.read(&mut chunk).unwrap_or(0);
                    if n == 0 {
                        break (String::new(), Vec::new());
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        let mut body = buf[end + 4..].to_vec();
                        while body.len() < len {
                            let n = stream.read(&mut chunk).unwrap_or(0);
                            if n == 0 {
                                break;
                            }
                            body.extend_from_slice(&chunk[..n]);
                        }
                        break (head, body);
                    }
                };
                if head.is_empty() {
                    // A probe (stagegate's start-up reachability check) that sent nothing.
                    continue;
                }
                let mut lines = head.lines();
                let path = lines
                    .next()
                    .and_then(|l| l.split_whitespace().nth(1))
                    .unwrap_or("")
                    .to_string();
                let headers = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .collect();
                seen += 1;
                let status = if seen <= fail_first {
                    "500 Internal Server Error"
                } else {
                    "200 OK"
                };
                let _ = stream.write_all(
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .as_bytes(),
                );
                if seen > fail_first {
                    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    sink.lock().expect("lock").push(Received {
                        path,
                        headers,
                        body,
                    });
                }
            }
        });
        Receiver { port, got }
    }

    /// Waits until `n` requests were accepted (answered 200).
    pub fn wait_for(&self, n: usize) -> Vec<Received> {
        for _ in 0..1000 {
            let got = self.got.lock().expect("lock").clone();
            if got.len() >= n {
                return got;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "receiver got {} of {n} requests",
            self.got.lock().expect("lock").len()
        );
    }
}

/// Waits until the lane's cooldown no longer blocks a resume.
pub fn wait_for_cooldown(server: &Server) {
    server.wait_for("the cooldown's end", |s| {
        s["reenable"]["missing"]
            .as_array()
            .is_some_and(|m| m.iter().all(|m| !m.to_string().contains("cooldown")))
    });
}

/// Resumes the rollout as an operator; returns the response.
pub fn resume(server: &Server, ack: bool) -> Reply {
    server.post(
        "/v1/rollouts/support-reply-v8/resume",
        Some(OPERATOR),
        &json!({"reason": "fixed the prompt", "ack": ack}),
    )
}

/// Healthy candidate tasks reported in read-only mode.
pub fn healthy_read_only(tag: &str, n: u64) -> Vec<Value> {
    let mut healthy: Vec<Value> = events(tag, n, "v8", internal(), HEALTHY);
    for e in &mut healthy {
        e["mode"] = json!("read_only");
        e["fallback"] = json!(false);
        e["review"] = json!("approved");
    }
    healthy
}

/// A loopback port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The test config with the lane notifying a webhook and a Slack hook on `port`.
pub fn config_notifying(port: u16) -> String {
    config("")
        .replace(
            "  - { name: hook, kind: webhook, url: \"http://127.0.0.1:9/hook\" }",
            &format!("  - {{ name: hook, kind: webhook, url: \"http://127.0.0.1:{port}/hook\" }}\n  - {{ name: chat, kind: slack, url_env: TEST_SLACK_URL }}"),
        )
        .replace("notify: [hook]", "notify: [hook, chat]")
}
