//! Gates on Prometheus data (issue 11): a real Prometheus scrapes a small gateway exporter
//! this test runs (two workflows, each with a baseline and a candidate model, counters and
//! histograms the test controls); stagegate reads the evidence from Prometheus alone (plus
//! pushed quality events for one gate: the mixed case). A candidate whose exported error rate
//! is 3× its baseline's is rolled back; a healthy one expands, through a counter reset;
//! stopping Prometheus makes its gates inconclusive and fires the source alert on a second
//! Prometheus that watches stagegate. `check --probe` runs every query once.
#![allow(
    clippy::panic,
    clippy::disallowed_methods,
    reason = "test: failures report with the servers' state; deadlines use real time"
)]

mod support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::prom::{Prometheus, e2e_available};
use support::*;

/// Histogram bounds of `gateway_request_seconds`, in seconds.
const BOUNDS: [f64; 8] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Default, Clone)]
struct Series {
    requests: u64,
    fallbacks: u64,
    buckets: [u64; BOUNDS.len()],
    seconds: f64,
    cost: f64,
}

/// The exporter's state: counters per (model, tier), and each model's fallback probability.
#[derive(Default)]
struct Gateway {
    series: BTreeMap<(String, String), Series>,
    fallback_p: BTreeMap<String, f64>,
    rng: u64,
}

impl Gateway {
    fn uniform(&mut self) -> f64 {
        self.rng = self
            .rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.rng >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// `n` requests of every model in every tier.
    fn serve(&mut self, n: u64) {
        let models: Vec<(String, f64)> = self
            .fallback_p
            .iter()
            .map(|(m, p)| (m.clone(), *p))
            .collect();
        for (model, p) in models {
            for tier in ["internal", "public"] {
                for _ in 0..n {
                    let fell_back = self.uniform() < p;
                    // Log-normal latency around 300 ms (p95 ≈ 0.7 s); cost about a cent.
                    let z = (-2.0 * self.uniform().ln()).sqrt()
                        * (2.0 * std::f64::consts::PI * self.uniform()).cos();
                    let seconds = 0.3 * (0.5 * z).exp();
                    let cost = 0.005 + 0.01 * self.uniform();
                    let s = self
                        .series
                        .entry((model.clone(), tier.to_string()))
                        .or_default();
                    s.requests += 1;
                    s.fallbacks += u64::from(fell_back);
                    for (i, le) in BOUNDS.iter().enumerate() {
                        if seconds <= *le {
                            s.buckets[i] += 1;
                        }
                    }
                    s.seconds += seconds;
                    s.cost += cost;
                }
            }
        }
    }

    /// Prometheus's text exposition of every series.
    fn exposition(&self) -> String {
        let mut out = String::new();
        out.push_str("# TYPE gateway_requests_total counter\n# TYPE gateway_fallbacks_total counter\n# TYPE gateway_request_seconds histogram\n# TYPE gateway_cost_usd_sum counter\n# TYPE gateway_cost_usd_count counter\n");
        for ((model, tier), s) in &self.series {
            let l = format!("model=\"{model}\",tier=\"{tier}\"");
            let _ = writeln!(out, "gateway_requests_total{{{l}}} {}", s.requests);
            let _ = writeln!(out, "gateway_fallbacks_total{{{l}}} {}", s.fallbacks);
            for (i, le) in BOUNDS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "gateway_request_seconds_bucket{{{l},le=\"{le}\"}} {}",
                    s.buckets[i]
                );
            }
            let _ = writeln!(
                out,
                "gateway_request_seconds_bucket{{{l},le=\"+Inf\"}} {}",
                s.requests
            );
            let _ = writeln!(out, "gateway_request_seconds_sum{{{l}}} {}", s.seconds);
            let _ = writeln!(out, "gateway_request_seconds_count{{{l}}} {}", s.requests);
            let _ = writeln!(out, "gateway_cost_usd_sum{{{l}}} {}", s.cost);
            let _ = writeln!(out, "gateway_cost_usd_count{{{l}}} {}", s.requests);
        }
        out
    }
}

/// The exporter: `/metrics` on a loopback port, and a thread adding traffic every 50 ms.
struct Exporter {
    port: u16,
    gateway: Arc<Mutex<Gateway>>,
    stop: Arc<AtomicBool>,
}

impl Exporter {
    fn start(fallback_p: &[(&str, f64)]) -> Exporter {
        let gateway = Arc::new(Mutex::new(Gateway {
            fallback_p: fallback_p
                .iter()
                .map(|(m, p)| (m.to_string(), *p))
                .collect(),
            rng: 42,
            ..Gateway::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let g = Arc::clone(&gateway);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                let body = g.lock().expect("lock").exposition();
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        let (g, s) = (Arc::clone(&gateway), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                g.lock().expect("lock").serve(20);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Exporter {
            port,
            gateway,
            stop,
        }
    }

    /// The gateway restarts: every counter starts again from zero.
    fn reset_counters(&self) {
        self.gateway.lock().expect("lock").series.clear();
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn source_config(prometheus: &str) -> String {
    let labels = "segment_labels: { everyone: public }\n    version_labels: { s2: summarizer-2 }";
    format!(
        r#"
server: {{ listen: 127.0.0.1:0, data_dir: "{{DATA_DIR}}", tick: 200ms }}
auth:
  tokens:
    - {{ name: platform, role: admin,    token_env: STAGEGATE_ADMIN_TOKEN }}
    - {{ name: apps,     role: ingest,   token_env: STAGEGATE_INGEST_TOKEN }}
    - {{ name: viewer,   role: read,     token_env: STAGEGATE_READ_TOKEN }}
sources:
  gateway: {{ kind: prometheus, url: "{prometheus}", timeout: 2s }}
signals:
  fallback:
    source: gateway
    events: 'gateway_fallbacks_total{{model="{{{{version}}}}",tier="{{{{segment}}}}"}}'
    total: 'gateway_requests_total{{model="{{{{version}}}}",tier="{{{{segment}}}}"}}'
    {labels}
  latency_ms:
    source: gateway
    histogram: 'gateway_request_seconds_bucket{{model="{{{{version}}}}",tier="{{{{segment}}}}"}}'
    unit: 1000
    {labels}
  cost_usd:
    source: gateway
    sum: 'gateway_cost_usd_sum{{model="{{{{version}}}}",tier="{{{{segment}}}}"}}'
    count: 'gateway_cost_usd_count{{model="{{{{version}}}}",tier="{{{{segment}}}}"}}'
    variance: 0.0001
    {labels}
segments:
  internal: {{ match: {{ tier: [internal] }} }}
  everyone: {{}}
workflows:
  reply:     {{ stable: r1, versions: [r1, r2] }}
  summarize: {{ stable: s1, versions: [s1, s2] }}
rollouts:
  - name: reply-r2
    workflow: reply
    baseline: r1
    candidate: r2
    segments: [internal, everyone]
    stages:
      - {{ name: internal, traffic: {{ internal: 50 }}, min_samples: 100 }}
      - {{ name: wide, traffic: {{ internal: 50, everyone: 50 }}, approval: manual }}
    gates:
      - {{ signal: fallback, stat: rate, max: 0.04, max_increase: 0.02, on_breach: rollback }}
    lane: {{ owner: reply-team, repair: "re-send the affected replies", reenable: {{ ack: true }} }}
  - name: summarize-s2
    workflow: summarize
    baseline: s1
    candidate: s2
    segments: [internal, everyone]
    stages:
      - {{ name: internal, traffic: {{ internal: 50 }}, min_duration: 3s, min_samples: 2000 }}
      - {{ name: wide, traffic: {{ internal: 50, everyone: 50 }}, min_samples: 2000 }}
      - {{ name: full, traffic: {{ internal: 100, everyone: 100 }}, approval: manual }}
    gates:
      - {{ signal: fallback,   stat: rate, max: 0.05, max_increase: 0.03, on_breach: narrow }}
      - {{ signal: latency_ms, stat: p95,  max: 2000, on_breach: narrow }}
      - {{ signal: cost_usd,   stat: mean, max: 0.05, on_breach: read_only }}
      - {{ signal: quality,    stat: mean, min: 0.7, on_breach: rollback }}
    lane: {{ owner: summaries, repair: "regenerate the summaries", reenable: {{ ack: true }} }}
"#
    )
}

fn status(server: &Server, rollout: &str) -> Value {
    let r = server.get(&format!("/v1/rollouts/{rollout}"), Some(READER));
    assert_eq!(r.status, 200, "{}", r.text);
    r.body
}

/// Polls a rollout's status until `pred` holds (60 s at most).
fn wait_status(server: &Server, rollout: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(server, rollout);
        if pred(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last status:\n{}\nserver log:\n{}",
            serde_json::to_string_pretty(&s).unwrap_or_default(),
            server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Quality events for the summarize rollout (the one signal the gateway does not know).
fn quality_events(tag: &str, version: &str, n: u64) -> Vec<Value> {
    events(tag, n, version, json!({"tier": "internal"}), HEALTHY)
        .into_iter()
        .map(|mut e| {
            e["workflow"] = json!("summarize");
            for field in ["latency_ms", "cost_usd", "fallback", "review"] {
                if let Some(o) = e.as_object_mut() {
                    o.remove(field);
                }
            }
            e
        })
        .collect()
}

fn verdicts(s: &Value) -> Vec<Value> {
    s["gates"].as_array().cloned().unwrap_or_default()
}

#[test]
fn gates_decide_on_prometheus_data_and_a_silent_source_is_never_a_pass() {
    if !e2e_available(&["prometheus"]) {
        return;
    }
    let exporter = Exporter::start(&[
        ("r1", 0.02),
        ("r2", 0.06),
        ("s1", 0.02),
        ("summarizer-2", 0.02),
    ]);
    let work = tempfile::tempdir().expect("temp dir");
    let source = Prometheus::start(
        work.path(),
        "source",
        &format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: gateway\n    static_configs:\n      - targets: [\"127.0.0.1:{}\"]\n",
            exporter.port
        ),
    );
    source.wait_scraped("gateway_requests_total");

    // `check --probe` runs every query once: both arms of both segments of both rollouts.
    let config_path = work.path().join("probe.yaml");
    std::fs::write(
        &config_path,
        source_config(&source.url())
            .replace("{DATA_DIR}", &work.path().join("d").display().to_string()),
    )
    .expect("write");
    let probe = std::process::Command::new(env!("CARGO_BIN_EXE_stagegate"))
        .args(["check", "--probe", "--window", "5m", "--config"])
        .arg(&config_path)
        .output()
        .expect("run check --probe");
    let out = String::from_utf8_lossy(&probe.stdout);
    assert!(
        probe.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    assert!(
        out.contains("summarize-s2 fallback everyone candidate (s2): events"),
        "{out}"
    );
    assert!(
        out.contains("summarize-s2 latency_ms internal baseline (s1):"),
        "{out}"
    );
    assert_eq!(out.matches(" buckets (p50").count(), 4, "{out}");
    let probe = std::process::Command::new(env!("CARGO_BIN_EXE_stagegate"))
        .args(["check", "--json", "--probe", "--window", "5m", "--config"])
        .arg(&config_path)
        .output()
        .expect("run check --json --probe");
    let doc: Value = serde_json::from_slice(&probe.stdout).expect("one JSON document");
    assert_eq!(doc["ok"], true, "{doc}");
    let rows = doc["probe"].as_array().expect("probe rows");
    assert_eq!(rows.len(), 16, "{doc}");
    assert!(rows.iter().all(|r| r["ok"] == true), "{doc}");

    let server = Server::start(&source_config(&source.url()));
    let target = server.addr().to_string();
    let rules = std::fs::canonicalize("config/alerts.yaml").expect("rules path");
    let monitor = Prometheus::start(
        work.path(),
        "monitor",
        &format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [\"{}\"]\nscrape_configs:\n  - job_name: stagegate\n    static_configs:\n      - targets: [\"{target}\"]\n",
            rules.display()
        ),
    );
    server.send_events(
        &[
            quality_events("q", "s1", 300),
            quality_events("q", "s2", 300),
        ]
        .concat(),
    );

    // 3× the baseline's error rate, seen only in Prometheus: rolled back on that gate.
    let bad = wait_status(&server, "reply-r2", "the rollback of reply-r2", |s| {
        s["state"] == "rolled_back"
    });
    let receipts = server.get("/v1/receipts?rollout=reply-r2", Some(READER));
    let rollback = receipts.body["receipts"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["action"] == "rollback").cloned())
        .unwrap_or_else(|| panic!("no rollback receipt: {}", receipts.text));
    assert_eq!(rollback["trigger"]["gate"], "fallback_rate", "{rollback}");
    assert_eq!(rollback["actor"]["kind"], "controller", "{rollback}");
    println!("reply-r2 rolled back: {}", bad["state"]);

    // The healthy candidate's evidence keeps growing through a gateway restart (counters
    // reset to zero; `increase` carries on) and it expands to its second stage.
    let mut last_n = 0;
    let mut reset = false;
    let started = Instant::now();
    let expanded = loop {
        let s = status(&server, "summarize-s2");
        if s["stage"] == "wide" {
            break s;
        }
        for v in verdicts(&s).iter().filter(|v| v["gate"] == "fallback_rate") {
            let n = v["candidate"]["samples"].as_u64().unwrap_or(0);
            if v["segment"] == "internal" {
                assert!(
                    n >= last_n,
                    "candidate samples went back from {last_n} to {n}"
                );
                last_n = n;
            }
        }
        if !reset && last_n > 500 {
            exporter.reset_counters();
            reset = true;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "summarize-s2 never expanded; status:\n{}\nlog:\n{}",
            serde_json::to_string_pretty(&s).unwrap_or_default(),
            server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(reset, "the counters were never reset before the expansion");
    println!(
        "summarize-s2 expanded after {:.1} s (counters reset once at {last_n} candidate samples)",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(expanded["state"], "progressing", "{expanded}");
    let receipts = server.get("/v1/receipts?rollout=summarize-s2", Some(READER));
    let expand = receipts.body["receipts"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["action"] == "expand").cloned())
        .unwrap_or_else(|| panic!("no expand receipt: {}", receipts.text));
    let gates: Vec<&str> = expand["evidence"]
        .as_array()
        .map(|v| v.iter().filter_map(|v| v["gate"].as_str()).collect())
        .unwrap_or_default();
    for gate in [
        "fallback_rate",
        "latency_ms_p95",
        "cost_usd_mean",
        "quality_mean",
    ] {
        assert!(gates.contains(&gate), "{gate} missing from {gates:?}");
    }
    assert!(
        expand["evidence"]
            .as_array()
            .is_some_and(|v| v.iter().all(|v| v["verdict"] == "pass")),
        "{expand}"
    );

    // The source goes away: its gates turn inconclusive with the reason, never pass.
    drop(source);
    let held = wait_status(
        &server,
        "summarize-s2",
        "gates inconclusive for the stopped source",
        |s| {
            let sourced: Vec<Value> = verdicts(s)
                .into_iter()
                .filter(|v| v["gate"] != "quality_mean")
                .collect();
            !sourced.is_empty()
                && sourced.iter().all(|v| {
                    v["verdict"] == "inconclusive"
                        && v["source_error"]
                            .as_str()
                            .is_some_and(|e| e.contains("cannot reach"))
                })
        },
    );
    assert_eq!(held["stage"], "wide", "{held}");
    let metrics = server.get("/metrics", None).text;
    let errors: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("stagegate_source_errors_total{") && l.contains("reason=\"unreachable\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(errors > 0.0, "{metrics}");

    // … and the monitoring Prometheus fires the source alert.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let alerts =
            monitor.query("ALERTS{alertname=\"StagegateSourceFailing\",alertstate=\"firing\"}");
        if alerts["data"]["result"][0]["metric"]["source"] == "gateway" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the source alert never fired: {}\nalerts: {}",
            alerts,
            monitor.api("/api/v1/alerts")
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // Still held: nothing decided on a silent source.
    let s = status(&server, "summarize-s2");
    assert_eq!(s["stage"], "wide", "{s}");
    assert_eq!(s["state"], "progressing", "{s}");
}
