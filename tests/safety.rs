//! Safety that cannot be switched off by accident: auth, config changes through reload and
//! restart, absurd values, and bad input — each on the real binary with real files.
#![allow(
    clippy::panic,
    clippy::disallowed_methods,
    reason = "tests: panics report failures, deadlines use real time"
)]

mod support;

use std::process::Command;

use serde_json::{Value, json};
use support::{ADMIN, HEALTHY, INGEST, OPERATOR, Server, config, events, internal};

fn check(path: &std::path::Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_stagegate"))
        .args(["check", "--config"])
        .arg(path)
        .output()
        .expect("run check");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn receipts_for(server: &Server, rollout: &str) -> Vec<Value> {
    let r = server.get(
        &format!("/v1/receipts?rollout={rollout}&limit=1000"),
        Some(ADMIN),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["receipts"].as_array().cloned().unwrap_or_default()
}

#[test]
fn a_config_without_auth_is_refused_by_check_serve_and_reload() {
    let (ok, out) = check(std::path::Path::new("/dev/null"));
    assert!(!ok && out.contains("no `auth` section"), "{out}");

    let server = Server::start(&config(""));
    // An emptied file: the reload is refused and nothing opens up or disappears.
    std::fs::write(&server.config_path, "").expect("truncate");
    let r = server.post("/v1/config/reload", Some(ADMIN), &json!({}));
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(r.text.contains("no `auth` section"), "{}", r.text);
    assert_eq!(server.get("/v1/rollouts", None).status, 401);
    assert_eq!(server.status()["state"], "progressing");

    // An explicitly open server starts, warns, and serves without a token.
    let open = config("").replacen("auth:\n  tokens:", "auth:\n  open: true\n  _tokens:", 1);
    let open = open
        .lines()
        .filter(|l| !l.contains("token_env") && !l.contains("_tokens"))
        .collect::<Vec<_>>()
        .join("\n");
    let (ok, out) = {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("open.yaml");
        Server::write_config(&p, dir.path(), &open);
        check(&p)
    };
    assert!(ok && out.contains("auth.open is true"), "{out}");
    let open_server = Server::start(&open);
    assert_eq!(open_server.get("/v1/rollouts", None).status, 200);
    assert!(
        open_server.log().contains("auth.open is true"),
        "{}",
        open_server.log()
    );
}

#[test]
fn removing_a_contained_rollout_needs_force_and_readding_resumes_its_state() {
    let full = config("");
    let server = Server::start(&full);
    server.drive_cost_read_only("ro");
    let contained = server.status();
    assert_eq!(contained["state"], "read_only");

    // Remove the rollout from the file (its workflow stays).
    let without = {
        let start = full.find("rollouts:").expect("rollouts");
        format!("{}rollouts: []\n", &full[..start])
    };
    server.rewrite_config(&without);
    let r = server.post("/v1/config/reload", Some(ADMIN), &json!({}));
    assert_eq!(r.status, 422, "{}", r.text);
    assert_eq!(r.body["error"]["code"], "removes_contained_rollouts");
    assert!(
        r.text.contains("support-reply-v8 (read_only)"),
        "{}",
        r.text
    );
    assert_eq!(server.status()["state"], "read_only", "nothing changed");
    let r = server.post("/v1/config/reload?force=true", Some(OPERATOR), &json!({}));
    assert_eq!(r.status, 403, "force is the admin's");

    let r = server.post("/v1/config/reload?force=true", Some(ADMIN), &json!({}));
    assert_eq!(r.status, 200, "{}", r.text);
    let removal = &r.body["receipts"][0];
    assert_eq!(removal["rollout"], "support-reply-v8");
    assert_eq!(removal["action"], "reconfigure");
    assert!(
        removal["changes"][0]
            .as_str()
            .is_some_and(|c| c.contains("removed from the config while read_only")),
        "{removal}"
    );
    assert_eq!(
        server
            .get("/v1/rollouts/support-reply-v8", Some(ADMIN))
            .status,
        404
    );

    // It stays removed across kill -9, with no further receipts.
    let server = server.crash_and_restart();
    let before = receipts_for(&server, "support-reply-v8").len();
    assert_eq!(
        server
            .get("/v1/rollouts/support-reply-v8", Some(ADMIN))
            .status,
        404
    );

    // Re-added: it resumes read-only, with its re-enable debt, and says so.
    server.rewrite_config(&full);
    let r = server.post("/v1/config/reload", Some(ADMIN), &json!({}));
    assert_eq!(r.status, 200, "{}", r.text);
    let readded = &r.body["receipts"][0];
    assert!(
        readded["changes"][0]
            .as_str()
            .is_some_and(|c| c.contains("re-added") && c.contains("read_only")),
        "{readded}"
    );
    let status = server.status();
    assert_eq!(status["state"], "read_only");
    assert_eq!(
        status["read_only_segments"],
        serde_json::json!(["internal"]),
        "{status}"
    );
    assert_eq!(status["reenable"]["cause"], "read_only", "{status}");
    assert_eq!(receipts_for(&server, "support-reply-v8").len(), before + 1);

    let server = server.crash_and_restart();
    assert_eq!(server.status()["state"], "read_only", "survives kill -9");
    assert_eq!(receipts_for(&server, "support-reply-v8").len(), before + 1);
}

#[test]
fn one_absurd_value_is_rejected_and_cannot_switch_a_gate_off() {
    let server = Server::start(&config(""));
    let mut batch = events("huge", 1, "v8", internal(), HEALTHY);
    batch[0]["cost_usd"] = json!(1e308);
    batch.push(
        json!({"event_id": "nan-ish", "workflow": "support-reply", "version": "v8",
        "attributes": {"team": "support-ops"}, "latency_ms": 1e300}),
    );
    let r = server.post("/v1/events", Some(INGEST), &json!(batch));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["accepted"], 0);
    let rejected = r.body["rejected"].as_array().expect("rejected");
    assert_eq!(rejected.len(), 2);
    assert_eq!(rejected[0]["index"], 0);
    assert!(
        rejected[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("cost_usd") && e.contains("plausible range")),
        "{r:?}",
        r = r.text
    );
    // The candidate then costs 4× the limit: the gate fails and the rollout is contained.
    server.drive_cost_read_only("after");
    assert_eq!(server.status()["state"], "read_only");
}

#[test]
fn a_config_change_through_a_restart_is_a_receipted_reconfigure() {
    let base = config("");
    let server = Server::start(&base);
    server.send_events(&events("e", 150, "v8", internal(), HEALTHY));
    let tasks = |s: &Server| {
        s.status()["segments"][0]["candidate_tasks"]
            .as_u64()
            .unwrap_or(0)
    };
    assert_eq!(tasks(&server), 150);
    let epoch = server.status()["epoch"].clone();

    // A change that keeps the meaning of evidence: min_samples of the current stage.
    server.rewrite_config(&base.replace("min_samples: 200", "min_samples: 250"));
    let server = server.crash_and_restart();
    let receipts = receipts_for(&server, "support-reply-v8");
    let newest = &receipts[0];
    assert_eq!(newest["action"], "reconfigure", "{newest}");
    assert_eq!(
        newest["changes"],
        json!(["stages.internal.min_samples: 200 → 250"]),
        "{newest}"
    );
    assert_eq!(server.status()["epoch"], epoch, "same epoch");
    assert_eq!(tasks(&server), 150, "evidence kept");

    // A change to a gate restarts evidence, also when it happens while stopped.
    server.rewrite_config(
        &base
            .replace("min_samples: 200", "min_samples: 250")
            .replace("min: 0.80", "min: 0.82"),
    );
    let server = server.stop_and_restart();
    let newest = receipts_for(&server, "support-reply-v8")[0].clone();
    assert!(
        newest["changes"][0]
            .as_str()
            .is_some_and(|c| c.starts_with("gates.quality_mean: min 0.8") && c.contains("min 0.82")),
        "{newest}"
    );
    assert_ne!(server.status()["epoch"], epoch);
    assert_eq!(tasks(&server), 0, "evidence restarted");

    // Restarting again with the same file changes nothing and writes nothing.
    let count = receipts_for(&server, "support-reply-v8").len();
    let server = server.crash_and_restart();
    assert_eq!(receipts_for(&server, "support-reply-v8").len(), count);

    // Reload refuses to pretend about settings it cannot apply.
    let moved = std::fs::read_to_string(&server.config_path)
        .expect("config")
        .replace("listen: 127.0.0.1:0", "listen: 127.0.0.1:1");
    std::fs::write(&server.config_path, moved).expect("write");
    let r = server.post("/v1/config/reload", Some(ADMIN), &json!({}));
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.body["needs_restart"][0]
            .as_str()
            .is_some_and(|l| l.starts_with("server.listen") && l.contains("needs a restart")),
        "{}",
        r.text
    );
    assert_eq!(
        server.get("/healthz", None).status,
        200,
        "still on its port"
    );
}

#[test]
fn bad_input_gets_clear_errors_of_one_shape() {
    let server = Server::start(&config(""));
    // A huge reason is refused; receipts stay small.
    let reason = "x".repeat(3 * 1024 * 1024);
    let r = server.post(
        "/v1/rollouts/support-reply-v8/pause",
        Some(OPERATOR),
        &json!({"reason": reason}),
    );
    assert_eq!(r.status, 400, "{}", &r.text[..r.text.len().min(300)]);
    assert!(r.text.contains("at most 2000"), "{}", &r.text[..300]);
    assert_eq!(server.status()["state"], "progressing");
    // Oversized subject and attributes.
    let long = "s".repeat(1000);
    let r = server.post(
        "/v1/assign",
        Some(INGEST),
        &json!({"workflow": "support-reply", "subject": long}),
    );
    assert_eq!(r.status, 400, "{}", r.text);
    let many: serde_json::Map<String, Value> =
        (0..40).map(|i| (format!("k{i}"), json!("v"))).collect();
    let r = server.post(
        "/v1/assign",
        Some(INGEST),
        &json!({"workflow": "support-reply", "subject": "a", "attributes": many}),
    );
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("at most 32"), "{}", r.text);
    // `bearer` in any case.
    let client = reqwest::blocking::Client::new();
    let resp = client
        .get(format!("{}/v1/rollouts", server.base))
        .header("authorization", format!("bEaReR {ADMIN}"))
        .send()
        .expect("send");
    assert_eq!(resp.status(), 200);
    // Router and extractor rejections come in the JSON error shape.
    let resp = client
        .get(format!("{}/v1/receipts?limit=many", server.base))
        .bearer_auth(ADMIN)
        .send()
        .expect("send");
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().expect("json error");
    assert_eq!(body["error"]["code"], "bad_request", "{body}");
    let resp = client
        .get(format!("{}/v1/rollouts/%FF%FE", server.base))
        .bearer_auth(ADMIN)
        .send()
        .expect("send");
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().expect("json error");
    assert!(body["error"]["message"].is_string(), "{body}");
    // Oversized request targets and headers: 414 and 431, in the same shape.
    let resp = client
        .get(format!(
            "{}/v1/rollouts?{}",
            server.base,
            "a".repeat(10_000)
        ))
        .send()
        .expect("send");
    assert_eq!(resp.status(), 414);
    let body: Value = resp.json().expect("json error");
    assert_eq!(body["error"]["code"], "uri_too_long", "{body}");
    let resp = client
        .get(format!("{}/healthz", server.base))
        .header("x-big", "b".repeat(40_000))
        .send()
        .expect("send");
    assert_eq!(resp.status(), 431);
    let body: Value = resp.json().expect("json error");
    assert_eq!(body["error"]["code"], "headers_too_large", "{body}");
    // Too many headers: the API's count (64), in the same shape; past hyper's (100), a 431.
    for (count, json) in [(80, true), (120, false)] {
        let mut request = client.get(format!("{}/healthz", server.base));
        for k in 0..count {
            request = request.header(format!("x-h{k}"), "v");
        }
        let resp = request.send().expect("send");
        assert_eq!(resp.status(), 431, "{count} headers");
        if json {
            let body: Value = resp.json().expect("json error");
            assert_eq!(body["error"]["code"], "headers_too_large", "{body}");
        }
    }
}

#[test]
fn a_kill_9_during_a_reload_still_ends_in_exactly_one_receipted_reconfigure() {
    let base = config("");
    let changed = base.replace("min: 0.80", "min: 0.81");
    for attempt in 0..4 {
        let server = Server::start(&base);
        let epoch = server.status()["epoch"].as_u64().unwrap_or(0);
        server.rewrite_config(&changed);
        // SIGHUP, then kill -9 after a varying delay: before, during or after the reload.
        let pid = server.pid().to_string();
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .expect("hup");
        std::thread::sleep(std::time::Duration::from_millis(attempt * 3));
        let server = server.crash_and_restart();
        let receipts = receipts_for(&server, "support-reply-v8");
        let reconfigures: Vec<&Value> = receipts
            .iter()
            .filter(|r| {
                r["changes"].as_array().is_some_and(|c| {
                    c.iter().any(|l| {
                        l.as_str()
                            .is_some_and(|l| l.starts_with("gates.quality_mean"))
                    })
                })
            })
            .collect();
        assert_eq!(reconfigures.len(), 1, "attempt {attempt}: {receipts:?}");
        assert_eq!(server.status()["epoch"].as_u64(), Some(epoch + 1));
        drop(server);
    }
}

#[test]
fn the_shipped_config_checks_with_warnings_and_its_first_pause_fails_no_notification() {
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/stagegate.yaml"
    ))
    .expect("shipped config");
    let (ok, out) = check(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/stagegate.yaml"
    )));
    assert!(ok, "{out}");
    assert!(
        out.contains("warning: notifier `oncall-hook`: environment variable STAGEGATE_ONCALL_WEBHOOK_URL is unset"),
        "{out}"
    );
    let local = shipped
        .replace("listen: 127.0.0.1:8080", "listen: 127.0.0.1:0")
        .replace("data_dir: ./data", "data_dir: \"{DATA_DIR}\"");
    let server = Server::start(&local);
    assert!(
        server
            .log()
            .contains("STAGEGATE_ONCALL_WEBHOOK_URL is unset"),
        "{}",
        server.log()
    );
    let r = server.post(
        "/v1/rollouts/support-reply-v8/pause",
        Some(OPERATOR),
        &json!({"reason": "first look"}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let metric = |outcome: &str| -> f64 {
        let text = server.get("/metrics", None).text;
        text.lines()
            .filter(|l| {
                l.starts_with("stagegate_notifications_total")
                    && l.contains(&format!("outcome=\"{outcome}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while metric("skipped") < 2.0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(metric("skipped"), 2.0);
    assert_eq!(
        metric("failed"),
        0.0,
        "StagegateNotificationsFailing stays quiet"
    );
}
