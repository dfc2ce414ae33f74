//! The API's edges: auth roles, every bad-input class, error shapes, config checks.

mod support;

use serde_json::{Value, json};
use support::*;

fn error_code(r: &Reply) -> &str {
    r.body["error"]["code"].as_str().unwrap_or("")
}

#[test]
fn roles_are_enforced_with_401_and_403() {
    let server = Server::start(&config(""));
    let pause = "/v1/rollouts/support-reply-v8/pause";
    let body = json!({"reason": "x"});
    let r = server.post(pause, None, &body);
    assert_eq!((r.status, error_code(&r)), (401, "unauthorized"));
    let r = server.post(pause, Some("not-a-token"), &body);
    assert_eq!(r.status, 401);
    let r = server.post(pause, Some(INGEST), &body);
    assert_eq!((r.status, error_code(&r)), (403, "forbidden"));
    let r = server.post(
        "/v1/rollouts/support-reply-v8/promote",
        Some(OPERATOR),
        &body,
    );
    assert_eq!(r.status, 403, "promote is admin-only");
    let r = server.post("/v1/events", Some(READER), &json!([]));
    assert_eq!(r.status, 403, "reading does not allow ingesting");
    let r = server.post(
        "/v1/assign",
        None,
        &json!({"workflow": "support-reply", "subject": "a"}),
    );
    assert_eq!(
        r.status, 401,
        "assign needs an ingest token unless auth.open_assign"
    );
    let r = server.get("/v1/rollouts", None);
    assert_eq!(r.status, 401);
    let r = server.get("/v1/rollouts", Some(READER));
    assert_eq!(r.status, 200);
    let r = server.post("/v1/config/reload", Some(OPERATOR), &json!({}));
    assert_eq!(r.status, 403);
    // Open endpoints.
    assert_eq!(server.get("/metrics", None).status, 200);
    assert_eq!(server.get("/healthz", None).status, 200);
    assert_eq!(server.get("/readyz", None).status, 200);
    // An operator pause works and names the token in the receipt.
    let r = server.post(pause, Some(OPERATOR), &body);
    assert_eq!(r.status, 200, "{}", r.text);
}

/// Every authenticated endpoint, by the roles it admits: a missing token is 401 and a token of
/// any other role 403, before the body or the path's names are looked at.
#[test]
fn every_endpoint_admits_exactly_the_roles_it_names() {
    let server = Server::start(&config(""));
    let ingest = &[INGEST, ADMIN][..];
    let read = &[READER, INGEST, OPERATOR, ADMIN][..];
    let operate = &[OPERATOR, ADMIN][..];
    let admin = &[ADMIN][..];
    let endpoints: &[(&str, &str, &[&str])] = &[
        ("POST", "/v1/assign", ingest),
        ("POST", "/ofrep/v1/evaluate/flags", ingest),
        ("POST", "/ofrep/v1/evaluate/flags/support-reply", ingest),
        ("POST", "/v1/events", ingest),
        ("GET", "/v1/rollouts", read),
        ("GET", "/v1/rollouts/nope", read),
        ("GET", "/v1/workflows", read),
        ("GET", "/v1/receipts", read),
        ("GET", "/v1/receipts/nope", read),
        ("POST", "/v1/rollouts/nope/pause", operate),
        ("POST", "/v1/rollouts/nope/resume", operate),
        ("POST", "/v1/rollouts/nope/rollback", operate),
        ("GET", "/v1/rollouts/nope/affected", operate),
        ("POST", "/v1/rollouts/nope/affected/e1", operate),
        ("POST", "/v1/workflows/nope/resume", operate),
        ("POST", "/v1/rollouts/nope/promote", admin),
        ("POST", "/v1/config/reload", admin),
    ];
    let body = json!({"reason": "x"});
    for &(method, path, allowed) in endpoints {
        for token in [
            None,
            Some(READER),
            Some(INGEST),
            Some(OPERATOR),
            Some(ADMIN),
        ] {
            let r = match method {
                "GET" => server.get(path, token),
                _ => server.post(path, token, &body),
            };
            let expected = match token {
                None => Some(401),
                Some(t) if !allowed.contains(&t) => Some(403),
                Some(_) => None,
            };
            match expected {
                Some(status) => assert_eq!(
                    r.status, status,
                    "{method} {path} with {token:?}: {}",
                    r.text
                ),
                None => assert!(
                    r.status != 401 && r.status != 403,
                    "{method} {path} refused {token:?}: {}",
                    r.text
                ),
            }
        }
    }
}

#[test]
fn a_malformed_event_is_rejected_alone() {
    let server = Server::start(&config(""));
    let good = |id: &str| json!({"event_id": id, "workflow": "support-reply", "version": "v8", "attributes": {"team": "revops"}, "quality": 0.9});
    let batch = json!([
        good("ok-1"),
        {"event_id": "bad-q", "workflow": "support-reply", "version": "v8", "quality": 1.7},
        {"event_id": "bad-wf", "workflow": "nope", "version": "v8"},
        {"event_id": "bad-ver", "workflow": "support-reply", "version": "v99"},
        {"workflow": "support-reply", "version": "v8"},
        {"event_id": "bad-lat", "workflow": "support-reply", "version": "v8", "latency_ms": -3},
        {"event_id": "bad-type", "workflow": "support-reply", "version": "v8", "cost_usd": "cheap"},
        "not an object",
        good("ok-2"),
        good("ok-1"),
    ]);
    let r = server.post("/v1/events", Some(INGEST), &batch);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["accepted"], 2);
    assert_eq!(
        r.body["duplicates"], 1,
        "a repeated id within a batch is a duplicate"
    );
    let rejected = r.body["rejected"].as_array().cloned().unwrap_or_default();
    let indexes: Vec<u64> = rejected
        .iter()
        .filter_map(|x| x["index"].as_u64())
        .collect();
    assert_eq!(indexes, [1, 2, 3, 4, 5, 6, 7]);
    let errors: Vec<String> = rejected
        .iter()
        .map(|x| x["error"].as_str().unwrap_or("").to_string())
        .collect();
    for (i, needle) in [
        (0, "quality"),
        (1, "unknown workflow"),
        (2, "unknown version"),
        (3, "event_id"),
        (4, "latency_ms"),
        (5, "cost_usd"),
    ] {
        assert!(
            errors[i].contains(needle),
            "{} should mention {needle}",
            errors[i]
        );
    }
    let s = server.status();
    let internal = s["segments"]
        .as_array()
        .and_then(|a| a.first().cloned())
        .unwrap_or(Value::Null);
    assert_eq!(internal["candidate_tasks"], 2);

    let metrics = server.get("/metrics", None).text;
    assert!(
        metrics
            .contains(r#"stagegate_events_total{outcome="accepted",workflow="support-reply"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics
            .contains(r#"stagegate_events_total{outcome="duplicate",workflow="support-reply"} 1"#)
    );
    assert!(
        metrics.contains(r#"stagegate_events_total{outcome="rejected",workflow="_unknown"} 6"#),
        "unknown names never become labels; items that do not parse name no workflow: {metrics}"
    );
    assert!(
        metrics
            .contains(r#"stagegate_events_total{outcome="rejected",workflow="support-reply"} 1"#),
        "a known workflow's unknown version counts under the workflow"
    );
}

#[test]
fn the_store_cache_is_configurable_and_has_a_floor() {
    let (_, _, err) =
        check_output(&config("").replace("tick: 50ms", "tick: 50ms, store_cache_bytes: 1000"));
    assert!(
        err.contains("server.store_cache_bytes: must be at least 1048576 (1 MiB)"),
        "{err}"
    );
    let server =
        Server::start(&config("").replace("tick: 50ms", "tick: 50ms, store_cache_bytes: 2097152"));
    server.send_events(&events("cache", 50, "v8", internal(), HEALTHY));
    server.wait_for("the events", |s| s["candidate_samples"] == 50);
}

#[test]
fn ndjson_batches_and_body_limits() {
    let server =
        Server::start(&config("").replace("tick: 50ms", "tick: 50ms, max_body_bytes: 4096"));
    let ndjson = "{\"event_id\":\"n1\",\"workflow\":\"support-reply\",\"version\":\"v7\"}\nnot json\n{\"event_id\":\"n2\",\"workflow\":\"support-reply\",\"version\":\"v7\"}\n";
    let r = server.post_raw("/v1/events", Some(INGEST), ndjson.as_bytes().to_vec());
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["accepted"], 2);
    assert_eq!(r.body["rejected"][0]["index"], 1);

    let big = vec![b' '; 10_000];
    let r = server.post_raw("/v1/events", Some(INGEST), big);
    assert_eq!((r.status, error_code(&r)), (413, "payload_too_large"));

    let r = server.post_raw("/v1/events", Some(INGEST), b"[{\"event_id\": ".to_vec());
    assert_eq!((r.status, error_code(&r)), (400, "bad_request"));
    assert!(
        r.body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
}

#[test]
fn assignment_shapes_and_errors() {
    let server = Server::start(&config(""));
    let a = server.assign("agent-7", json!({"team": "support-ops"}));
    assert_eq!(a["workflow"], "support-reply");
    assert_eq!(a["version"], "v8");
    assert_eq!(a["mode"], "full");
    assert_eq!(a["segment"], "internal");
    assert_eq!(a["stage"], "internal");
    assert!(a["reason"].as_str().is_some_and(|r| !r.is_empty()));
    let a = server.assign("agent-7", json!({"tier": "smb"}));
    assert_eq!(
        (a["version"].as_str(), a["segment"].as_str()),
        (Some("v7"), Some("everyone"))
    );

    let r = server.post(
        "/v1/assign",
        Some(INGEST),
        &json!({"workflow": "summarize", "subject": "x"}),
    );
    assert_eq!(
        (r.body["version"].as_str(), r.body["rollout"].as_str()),
        (Some("s1"), None)
    );
    let r = server.post(
        "/v1/assign",
        Some(INGEST),
        &json!({"workflow": "ghost", "subject": "x"}),
    );
    assert_eq!((r.status, error_code(&r)), (404, "not_found"));
    let r = server.post("/v1/assign", Some(INGEST), &json!({"subject": "x"}));
    assert_eq!((r.status, error_code(&r)), (400, "bad_request"));
    let r = server.post_raw("/v1/assign", Some(INGEST), b"{oops".to_vec());
    assert_eq!(r.status, 400);
    let metrics = server.get("/metrics", None).text;
    assert!(
        metrics.contains(
            r#"stagegate_assignments_total{mode="full",version="v8",workflow="support-reply"}"#
        ),
        "{metrics}"
    );
}

#[test]
fn unknown_things_are_404_and_conflicts_are_409() {
    let server = Server::start(&config(""));
    let r = server.get("/v1/rollouts/ghost", Some(READER));
    assert_eq!((r.status, error_code(&r)), (404, "not_found"));
    let r = server.post(
        "/v1/rollouts/ghost/pause",
        Some(OPERATOR),
        &json!({"reason": "x"}),
    );
    assert_eq!(r.status, 404);
    let r = server.get("/v1/receipts/r-0000000999", Some(READER));
    assert_eq!(r.status, 404);
    let r = server.get("/v1/nope", None);
    assert_eq!((r.status, error_code(&r)), (404, "not_found"));
    let r = server.post(
        "/v1/rollouts/support-reply-v8/resume",
        Some(OPERATOR),
        &json!({"reason": "x"}),
    );
    assert_eq!((r.status, error_code(&r)), (409, "conflict"));
    let r = server.post(
        "/v1/rollouts/support-reply-v8/pause",
        Some(OPERATOR),
        &json!({}),
    );
    assert_eq!(r.status, 400, "a reason is required: {}", r.text);
    let r = server.post(
        "/v1/rollouts/support-reply-v8/pause",
        Some(OPERATOR),
        &json!({"reason": "x", "bogus": 1}),
    );
    assert_eq!(r.status, 400);
    let r = server.get("/v1/receipts?since=yesterday", Some(READER));
    assert_eq!(r.status, 400);
}

#[test]
fn check_reports_every_problem_with_location_and_exits_nonzero() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("bad.yaml");
    let text = config("")
        .replace(
            "traffic: { internal: 100 }, min_samples: 200",
            "traffic: { internal: 140 }, min_duration: 5 parsecs",
        )
        .replace("stat: p95", "stat: p950")
        .replace("notify: [hook]", "notify: [pager]");
    std::fs::write(&path, text).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stagegate"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "stages[0].traffic.internal: 140 is not a percentage",
        "stages[0].min_duration",
        "gates[1].stat: unknown stat `p950`",
        "lane.notify[0]: unknown notifier `pager`",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in {err}");
    }
    assert!(err.contains(&format!("{}:", path.display())), "{err}");

    std::fs::write(
        &path,
        "server:\n  listen: 127.0.0.1:0\nrollouts:\n  - name: r\n    wat: 1\n",
    )
    .expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stagegate"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(":5:5: rollouts[0].wat: unknown field `wat`"),
        "{err}"
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stagegate"))
        .args(["check", "--config", "config/stagegate.yaml"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(
        plan.contains("smb-5") && plan.contains("latency_ms_p95"),
        "{plan}"
    );
}

fn check_output(text: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, text).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stagegate"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Issue 13: errors as good as a compiler's — the line with a caret, the nearest name, plain
/// words, the right line for a missing field, per-signal ranges; warnings that do not fail.
#[test]
fn check_errors_show_the_line_suggest_the_name_and_warn_about_unreachable_samples() {
    let text = config("")
        .replace("workflow: support-reply\n", "workflow: suport-reply\n")
        .replace("on_breach: rollback }", "on_breach: rollbak }")
        .replace("max: 0.05, max_ratio: 1.5", "max: 5000, max_ratio: 1.5");
    let (ok, _, err) = check_output(&text);
    assert!(!ok);
    for needle in [
        "rollouts[0].workflow: unknown workflow `suport-reply`; did you mean `support-reply`?",
        "    workflow: suport-reply\n",
        "unknown action `rollbak`; did you mean `rollback`?",
        "threshold 5000 lies outside `cost_usd`'s plausible range 0..1000",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in\n{err}");
    }
    // The caret sits under the value.
    let lines: Vec<&str> = err.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.ends_with("workflow: suport-reply"))
        .expect("snippet line");
    let bar = lines[at].find("| ").expect("bar") + 2;
    let value = lines[at][bar..].find("suport").expect("value") + bar;
    assert_eq!(lines[at + 1].find('^'), Some(value), "{err}");

    // No jargon; a missing field is reported on its mapping's first line, not where it ends.
    let (_, _, err) = check_output(&config("").replace("max_body_bytes", "x").replace(
        "server: { listen: 127.0.0.1:0,",
        "server: { max_body_bytes: lots, listen: 127.0.0.1:0,",
    ));
    assert!(
        err.contains("server.max_body_bytes: expected a whole number"),
        "{err}"
    );
    assert!(!err.contains("u64"), "{err}");
    let (_, _, err) = check_output(&config("").replace("    candidate: v8\n", ""));
    let rollout_line = config("")
        .lines()
        .position(|l| l.contains("- name: support-reply-v8"))
        .expect("line")
        + 1;
    assert!(
        err.contains(&format!(
            ":{rollout_line}:5: rollouts[0]: missing `candidate`"
        )),
        "{err}"
    );

    // Warnings do not fail the check: min_samples the declared traffic cannot bring in time.
    let text = config("")
        .replace("everyone:   {}", "everyone:   { tasks_per_hour: 100 }")
        .replace(
            "internal:   { match: { team: [support-ops, revops] } }",
            "internal:   { match: { team: [support-ops, revops] }, tasks_per_hour: 50 }",
        )
        .replace(
            "enterprise: { match: { tier: [enterprise] } }",
            "enterprise: { match: { tier: [enterprise] }, tasks_per_hour: 20 }",
        )
        .replace(
            "traffic: { internal: 100 }, min_samples: 200",
            "traffic: { internal: 100 }, min_duration: 2h, min_samples: 200",
        );
    let (ok, _, err) = check_output(&text);
    assert!(ok, "{err}");
    assert!(
        err.contains("warning: rollout support-reply-v8 stage internal: min_samples 200 is not reached in min_duration 2h at the declared traffic (50 candidate tasks/h); it will take about 4h"),
        "{err}"
    );
}

#[test]
fn metrics_carry_every_spec_metric_from_the_start() {
    let server = Server::start(&config(""));
    let text = server.get("/metrics", None).text;
    for name in [
        "stagegate_rollout_info",
        "stagegate_rollout_state",
        "stagegate_rollout_stage_index",
        "stagegate_rollout_weight_percent",
        "stagegate_rollout_inconclusive_gates",
        "stagegate_events_total",
        "stagegate_notifications_total",
        "stagegate_leader",
    ] {
        assert!(
            text.contains(&format!("\n{name}{{")),
            "{name} missing:\n{text}"
        );
    }
    // One state series per rollout: the current one.
    let states: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("stagegate_rollout_state{"))
        .collect();
    assert_eq!(
        states,
        [r#"stagegate_rollout_state{rollout="support-reply-v8",state="progressing"} 1"#]
    );
    // Rare series appear with their first event, not before.
    for name in [
        "stagegate_decisions_total{",
        "stagegate_automatic_rollbacks_total{",
        "stagegate_rollout_contained{",
        r#"outcome="duplicate""#,
        r#"mode="read_only""#,
    ] {
        assert!(!text.contains(name), "{name} before any:\n{text}");
    }
    // Each check's limit, for dashboards to draw: the test config's latency gate, with the
    // other per-gate series at /metrics/gates.
    let gates = server.get("/metrics/gates", None).text;
    for series in [
        r#"stagegate_gate_limit{check="max",gate="latency_ms_p95",rollout="support-reply-v8"} 4000"#,
        r#"stagegate_gate_limit{check="max_ratio",gate="latency_ms_p95",rollout="support-reply-v8"} 1.25"#,
        r#"stagegate_gate_limit{check="max_drop",gate="quality_mean",rollout="support-reply-v8"} 0.03"#,
    ] {
        assert!(gates.contains(series), "{series} missing:\n{gates}");
    }
    assert!(
        text.contains(r#"stagegate_leader{replica="local"} 1"#),
        "{text}"
    );
    assert!(!text.contains("stagegate_gate_limit"), "{text}");
    // Verdict and signal series appear once a stage exposes the candidate and events arrive.
    server.send_events(&events("m", 10, "v8", internal(), HEALTHY));
    server.wait_for("a tick", |s| s["candidate_samples"] == 10);
    std::thread::sleep(std::time::Duration::from_millis(150));
    server.assign("agent-1", internal());
    let text = server.get("/metrics", None).text;
    let gates = server.get("/metrics/gates", None).text;
    for name in [
        "stagegate_gate_verdict",
        "stagegate_signal_value",
        "stagegate_signal_samples",
    ] {
        assert!(
            gates.contains(&format!("\n{name}{{")),
            "{name} missing:\n{gates}"
        );
    }
    assert!(text.contains("\nstagegate_assignments_total{"), "{text}");
    assert!(gates.contains(r#"stagegate_gate_verdict{gate="quality_mean",rollout="support-reply-v8",segment="internal"} 0"#), "{gates}");
    assert!(gates.contains(r#"stagegate_signal_samples{rollout="support-reply-v8",segment="internal",signal="quality_mean",version="v8"} 10"#), "{gates}");
    // The inconclusive quality gate (and the others) are counted on /metrics.
    let inconclusive = text
        .lines()
        .find_map(|l| {
            l.strip_prefix(r#"stagegate_rollout_inconclusive_gates{rollout="support-reply-v8"} "#)
        })
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(0);
    assert!(inconclusive >= 1, "{text}");
    assert!(
        !text.contains("m-v8-") && !gates.contains("m-v8-"),
        "no event ids in labels"
    );
}

#[test]
fn a_retried_operator_action_with_the_same_idempotency_key_returns_the_first_result() {
    let server = Server::start(&config(""));
    let pause = |server: &Server, key: &str| {
        server.post_with(
            "/v1/rollouts/support-reply-v8/pause",
            Some(OPERATOR),
            &[("Idempotency-Key", key)],
            br#"{"reason": "incident 7"}"#.to_vec(),
        )
    };
    let first = pause(&server, "op-7f3a");
    assert_eq!(first.status, 200, "{}", first.text);
    let receipts = server.receipts().len();
    // The retry (a lost response, a double click) returns the first receipt and writes nothing.
    let again = pause(&server, "op-7f3a");
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.body["id"], first.body["id"]);
    assert_eq!(server.receipts().len(), receipts);
    // Without the key, the same request is a new action: already paused.
    let r = server.post(
        "/v1/rollouts/support-reply-v8/pause",
        Some(OPERATOR),
        &json!({"reason": "incident 7"}),
    );
    assert_eq!(r.status, 409, "{}", r.text);
    // The key is durable: after kill -9 the retry still answers with the first receipt.
    let server = server.crash_and_restart();
    let again = pause(&server, "op-7f3a");
    assert_eq!(again.body["id"], first.body["id"], "{}", again.text);
    // The same key for another action is a mistake, said so, and changes nothing.
    let r = server.post_with(
        "/v1/rollouts/support-reply-v8/resume",
        Some(OPERATOR),
        &[("Idempotency-Key", "op-7f3a")],
        br#"{"reason": "over"}"#.to_vec(),
    );
    assert_eq!(r.status, 422, "{}", r.text);
    assert_eq!(r.body["error"]["code"], "idempotency_key_reused");
    assert_eq!(server.status()["state"], "paused");
    // A malformed key is refused before anything happens.
    let r = pause(&server, &"k".repeat(300));
    assert_eq!(r.status, 400, "{}", r.text);
}

/// Metrics are updated incrementally (issue 14): a rollout's series follow its shape — after a
/// rollback the stage series names `none`, the old stage's is gone, and no verdict series
/// remain for segments that no longer see the candidate.
#[test]
fn metric_series_follow_a_rollouts_stage_and_exposure() {
    let server = Server::start(&config(""));
    server.send_events(&events("m", 150, "v8", internal(), HEALTHY));
    server.wait_for("samples", |s| s["candidate_samples"] == 150);
    // Both scrape targets, as Prometheus would see them.
    let scrape = || server.get("/metrics", None).text + &server.get("/metrics/gates", None).text;
    let wait_metrics = |what: &str, pred: &dyn Fn(&str) -> bool| -> String {
        for _ in 0..200 {
            let text = scrape();
            if pred(&text) {
                return text;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        panic!("{what}: {}", scrape());
    };
    wait_metrics("stage internal and verdicts", &|t| {
        t.contains(r#"stagegate_rollout_stage{rollout="support-reply-v8",stage="internal"} 1"#)
            && t.contains(r#"stagegate_gate_verdict{gate="quality_mean",rollout="support-reply-v8",segment="internal"}"#)
    });
    server.drive_quality_rollback("m2");
    let text = wait_metrics("stage none after the rollback", &|t| {
        t.contains(r#"stagegate_rollout_stage{rollout="support-reply-v8",stage="none"} 1"#)
    });
    assert!(!text.contains(r#"stage="internal"} 1"#), "{text}");
    assert!(
        !text.contains("stagegate_gate_verdict{"),
        "no segment sees the candidate:\n{text}"
    );
    assert!(
        text.contains(
            r#"stagegate_rollout_state{rollout="support-reply-v8",state="rolled_back"} 1"#
        ),
        "{text}"
    );
}

/// Assignments are tallied per plan and moved into `stagegate_assignments_total` at each scrape
/// and when a reload replaces the plan: an assignment counted between the last scrape and a
/// reload still reaches the series, and OFREP evaluations count as assignments.
#[test]
fn every_assignment_is_counted_across_scrapes_and_reloads() {
    let server = Server::start(&config(""));
    let counted = |server: &Server| -> u64 {
        let text = server.get("/metrics", None).text;
        text.lines()
            .filter(|l| {
                l.starts_with("stagegate_assignments_total{")
                    && l.contains(r#"workflow="support-reply""#)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    assert_eq!(counted(&server), 0);
    for i in 0..3 {
        server.assign(&format!("a{i}"), internal());
    }
    assert_eq!(counted(&server), 3);
    for i in 0..4 {
        server.assign(&format!("b{i}"), smb());
    }
    let r = server.post(
        "/ofrep/v1/evaluate/flags/support-reply",
        Some(INGEST),
        &json!({"context": {"targetingKey": "c", "team": "support-ops"}}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    // A new plan: the five assignments not yet scraped belong to the one it replaces.
    server.rewrite_config(&config("").replace(
        "  summarize: { stable: s1, versions: [s1] }",
        "  summarize: { stable: s1, versions: [s1] }\n  triage: { stable: t1, versions: [t1] }",
    ));
    let r = server.post("/v1/config/reload", Some(ADMIN), &json!({}));
    assert_eq!(r.status, 200, "{}", r.text);
    for i in 0..2 {
        server.assign(&format!("d{i}"), enterprise());
    }
    assert_eq!(counted(&server), 10);
}
