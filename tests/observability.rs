//! Dashboards and alert rules use only metrics stagegate exports; the rollback alert reaches a
//! webhook through real Prometheus and Alertmanager processes on loopback.
#![allow(clippy::panic, reason = "test failures report with the servers' state")]

mod support;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::prom::{Proc, Prometheus, e2e_available, wait_http};
use support::*;

/// The documented metrics dashboards may use (docs/metrics.md).
const SPEC_METRICS: [&str; 17] = [
    "stagegate_rollout_stage",
    "stagegate_rollout_stage_age_seconds",
    "stagegate_source_errors_total",
    "stagegate_gate_limit",
    "stagegate_rollout_info",
    "stagegate_rollout_state",
    "stagegate_rollout_stage_index",
    "stagegate_rollout_weight_percent",
    "stagegate_gate_verdict",
    "stagegate_signal_value",
    "stagegate_signal_samples",
    "stagegate_decisions_total",
    "stagegate_automatic_rollbacks_total",
    "stagegate_rollout_contained",
    "stagegate_assignments_total",
    "stagegate_events_total",
    "stagegate_notifications_total",
];

fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("stagegate_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        let preceded = start > 0
            && (bytes[start - 1].is_ascii_alphanumeric()
                || bytes[start - 1] == b'_'
                || bytes[start - 1] == b'-');
        if !preceded {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

fn dashboard_exprs() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("dashboards").expect("dashboards/") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let json: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("read"))
            .expect("dashboard is JSON");
        assert!(
            json["uid"].is_string() && json["title"].is_string(),
            "{}",
            path.display()
        );
        let panels = json["panels"].as_array().expect("panels");
        assert!(!panels.is_empty());
        for p in panels {
            for t in p["targets"].as_array().into_iter().flatten() {
                out.push((
                    path.display().to_string(),
                    t["expr"].as_str().expect("expr").to_string(),
                ));
            }
        }
        for v in json["templating"]["list"].as_array().into_iter().flatten() {
            if let Some(q) = v["definition"].as_str() {
                out.push((path.display().to_string(), q.to_string()));
            }
        }
    }
    out
}

/// Grafana's dashboard model (schemaVersion 39), checked structurally: the fields Grafana
/// requires, panels on its 24-column grid without overlap, unique ids and refIds, value
/// mappings of a kind it knows, every `$variable` defined, repeats over multi-value variables,
/// and verdicts that show `fail` in red.
#[test]
fn dashboards_follow_grafanas_dashboard_model() {
    for entry in std::fs::read_dir("dashboards").expect("dashboards/") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let name = path.display().to_string();
        let d: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("JSON");
        assert!(d["title"].is_string() && d["uid"].is_string(), "{name}");
        assert!(
            d["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
            "{name}"
        );
        assert!(
            d["time"]["from"].is_string() && d["time"]["to"].is_string(),
            "{name}"
        );
        let vars = d["templating"]["list"].as_array().expect("templating.list");
        let mut defined: BTreeSet<String> = BTreeSet::new();
        for v in vars {
            let var = v["name"].as_str().expect("variable name");
            let kind = v["type"].as_str().expect("variable type");
            assert!(
                ["query", "datasource", "custom", "constant", "interval"].contains(&kind),
                "{name}: {var}"
            );
            if kind == "query" {
                assert!(
                    v["definition"].is_string() && v["datasource"]["uid"].is_string(),
                    "{name}: {var}"
                );
            }
            defined.insert(var.to_string());
        }
        for var in ["job", "instance", "rollout"] {
            assert!(defined.contains(var), "{name}: no ${var} variable");
        }
        let panels = d["panels"].as_array().expect("panels");
        let mut ids = BTreeSet::new();
        let mut cells = BTreeSet::new();
        for p in panels {
            let title = p["title"].as_str().expect("panel title");
            assert!(
                ids.insert(p["id"].as_u64().expect("panel id")),
                "{name}: duplicate id"
            );
            let kind = p["type"].as_str().expect("panel type");
            assert!(
                [
                    "stat",
                    "table",
                    "timeseries",
                    "state-timeline",
                    "text",
                    "row"
                ]
                .contains(&kind),
                "{name}: {kind}"
            );
            let g = &p["gridPos"];
            let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| g[k].as_u64().expect("gridPos"));
            assert!(
                w >= 1 && h >= 1 && x + w <= 24,
                "{name}: {title} off the grid"
            );
            for cx in x..x + w {
                for cy in y..y + h {
                    assert!(
                        cells.insert((cx, cy)),
                        "{name}: {title} overlaps another panel"
                    );
                }
            }
            if let Some(repeat) = p["repeat"].as_str() {
                let v = vars
                    .iter()
                    .find(|v| v["name"] == repeat)
                    .expect("repeat variable");
                assert_eq!(
                    v["multi"], true,
                    "{name}: repeat over a single-value variable"
                );
            }
            if kind == "row" {
                assert!(
                    p["panels"].is_array() && p["collapsed"].is_boolean(),
                    "{name}: {title}"
                );
                continue;
            }
            assert!(p["fieldConfig"]["defaults"].is_object(), "{name}: {title}");
            assert!(p["fieldConfig"]["overrides"].is_array(), "{name}: {title}");
            let mut refs = BTreeSet::new();
            for t in p["targets"].as_array().expect("targets") {
                assert!(
                    refs.insert(t["refId"].as_str().expect("refId").to_string()),
                    "{name}: {title}"
                );
                assert!(
                    t["expr"].is_string() && t["datasource"]["uid"].is_string(),
                    "{name}: {title}"
                );
            }
            for m in p["fieldConfig"]["defaults"]["mappings"]
                .as_array()
                .into_iter()
                .flatten()
            {
                assert!(
                    ["value", "range", "regex", "special"]
                        .contains(&m["type"].as_str().unwrap_or("")),
                    "{name}: {title}"
                );
                assert!(m["options"].is_object(), "{name}: {title}");
            }
            let text = p.to_string();
            for piece in text.split('$').skip(1) {
                let var: String = piece
                    .trim_start_matches('{')
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                assert!(
                    var.starts_with("__") || defined.contains(&var),
                    "{name}: {title} uses undefined ${var}"
                );
            }
            if text.contains("stagegate_gate_verdict") {
                let fail = &p["fieldConfig"]["defaults"]["mappings"][0]["options"]["-1"];
                assert_eq!(fail["text"], "fail", "{name}: {title}");
                assert_eq!(fail["color"], "red", "{name}: {title}");
            }
        }
    }
}

#[test]
fn dashboards_and_rules_use_only_exported_metrics() {
    // A declared source, so its (zero) error series exist, and a guarded workflow, so its
    // read-only gauge does.
    let server = Server::start(
        &config("")
            .replacen(
                "\nsegments:\n",
                "\nsources:\n  gateway: { kind: prometheus, url: \"http://127.0.0.1:9\" }\nsegments:\n",
                1,
            )
            .replacen(
                "summarize: { stable: s1, versions: [s1] }",
                "summarize: { stable: s1, versions: [s1], guards: [ { signal: quality, stat: mean, min: 0.7 } ] }",
                1,
            ),
    );
    server.send_events(&events("o", 20, "v8", internal(), HEALTHY));
    server.wait_for("samples", |s| s["candidate_samples"] == 20);
    server.assign("a", internal());
    std::thread::sleep(Duration::from_millis(150));
    // Both scrape targets, while the candidate is exposed and after an automatic rollback
    // (the series of a decision and a containment appear with the first one).
    let scrape = || server.get("/metrics", None).text + &server.get("/metrics/gates", None).text;
    let mut exported = metric_names(&scrape());
    server.drive_quality_rollback("o2");
    exported.extend(metric_names(&scrape()));

    let exprs = dashboard_exprs();
    assert!(exprs.len() > 20);
    for (file, expr) in &exprs {
        for name in metric_names(expr) {
            assert!(
                SPEC_METRICS.contains(&name.as_str()),
                "{file}: {name} is not a SPEC §5 metric ({expr})"
            );
            assert!(exported.contains(&name), "{file}: {name} is not exported");
        }
    }
    let rules = std::fs::read_to_string("config/alerts.yaml").expect("alerts");
    let used = metric_names(&rules);
    assert!(used.len() >= 8, "{used:?}");
    for name in used {
        assert!(
            exported.contains(&name),
            "config/alerts.yaml uses {name}, which stagegate does not export"
        );
    }
}

#[test]
fn an_automatic_rollback_alert_reaches_a_webhook_through_alertmanager() {
    if !e2e_available(&["prometheus", "prometheus-alertmanager"]) {
        return;
    }
    let receiver = Receiver::start(0);
    let server = Server::start(&config(""));
    let dir = server.dir.path().to_path_buf();
    let am_port = free_port();
    let target = server.base.trim_start_matches("http://").to_string();
    std::fs::write(
        dir.join("alertmanager.yml"),
        format!(
            "route:\n  receiver: hook\n  group_by: [alertname, rollout]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: hook\n    webhook_configs:\n      - url: http://127.0.0.1:{}/alert\n",
            receiver.port
        ),
    )
    .expect("write");
    let log = |name: &str| Stdio::from(std::fs::File::create(dir.join(name)).expect("log"));
    let _am = Proc(
        Command::new("prometheus-alertmanager")
            .arg(format!(
                "--config.file={}",
                dir.join("alertmanager.yml").display()
            ))
            .arg(format!("--storage.path={}", dir.join("am").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{am_port}"))
            .arg("--cluster.listen-address=")
            .stdout(log("am.out"))
            .stderr(log("am.err"))
            .spawn()
            .expect("alertmanager"),
    );
    let rules = std::fs::canonicalize("config/alerts.yaml").expect("rules path");
    let prom = Prometheus::start(
        &dir,
        "prom",
        &format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [\"{}\"]\nalerting:\n  alertmanagers:\n    - static_configs:\n        - targets: [\"127.0.0.1:{am_port}\"]\nscrape_configs:\n  - job_name: stagegate\n    static_configs:\n      - targets: [\"{target}\"]\n  - job_name: stagegate-gates\n    metrics_path: /metrics/gates\n    static_configs:\n      - targets: [\"{target}\"]\n",
            rules.display()
        ),
    );
    wait_http(&format!("http://127.0.0.1:{am_port}/-/ready"));
    // Both jobs scraped (the per-gate series are the second's) before the rollback.
    prom.wait_scraped("stagegate_rollout_info");
    prom.wait_scraped("stagegate_gate_limit");
    // The dashboards draw each gate's limits from stagegate_gate_limit, as Prometheus has it.
    let instant = |query: &str| prom.query(query);
    let limit = instant(
        r#"stagegate_gate_limit{rollout="support-reply-v8", gate="latency_ms_p95", check="max"}"#,
    );
    assert_eq!(limit["data"]["result"][0]["value"][1], "4000", "{limit}");

    server.drive_quality_rollback("e2e");
    // A dashboard's relative-limit line: the baseline's value minus the configured drop.
    let relative = instant(
        r#"stagegate_signal_value{rollout="support-reply-v8", signal="quality_mean", version="v7"} - on(rollout) group_left() stagegate_gate_limit{rollout="support-reply-v8", gate="quality_mean", check="max_drop"}"#,
    );
    assert_eq!(relative["status"], "success", "{relative}");

    let mut alert = None;
    for _ in 0..150 {
        let got = receiver.got.lock().expect("lock").clone();
        alert = got
            .into_iter()
            .flat_map(|r| r.body["alerts"].as_array().cloned().unwrap_or_default())
            .find(|a| a["labels"]["alertname"] == "StagegateAutomaticRollback");
        if alert.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let alert = alert.unwrap_or_else(|| {
        let tail = |name: &str| {
            let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
            text.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
        };
        let api = |path: &str| prom.api(path);
        panic!(
            "no rollback alert reached the webhook\ncontained: {}\nrollbacks: {}\nprometheus alerts: {}\ntargets: {}\nprometheus log:\n{}\nalertmanager log:\n{}",
            api("/api/v1/query?query=stagegate_rollout_contained"),
            api("/api/v1/query?query=stagegate_automatic_rollbacks_total"),
            api("/api/v1/alerts"),
            api("/api/v1/targets"),
            tail("prom.err"),
            tail("am.err")
        )
    });
    assert_eq!(alert["status"], "firing");
    assert_eq!(alert["labels"]["rollout"], "support-reply-v8");
    assert_eq!(alert["labels"]["gate"], "quality_mean");
    assert_eq!(alert["labels"]["severity"], "critical");
}
