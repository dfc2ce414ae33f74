//! Crash safety, the store lock, corrupt stores, config reload and shutdown — on the real binary.

mod support;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

/// Stages that never expand during a test, so evidence is never reset by a new epoch.
fn slow_config() -> String {
    config(", min_duration: 1h")
}

/// A batch the writer sent, and whether the server acknowledged it.
type Attempt = (Vec<Value>, bool);

fn internal_candidate_tasks(server: &Server) -> u64 {
    let s = server.status();
    s["segments"][0]["candidate_tasks"].as_u64().unwrap_or(0)
}

#[test]
fn kill_9_during_ingestion_loses_no_acknowledged_event_and_counts_none_twice() {
    let mut server = Server::start(&slow_config());
    let mut attempted: Vec<Vec<Value>> = Vec::new();
    let mut acknowledged = 0u64;
    let mut seed = 0x5eed_u64;
    for round in 0..4 {
        // A writer posts batches until the process dies under it.
        let base = server.base.clone();
        let sent: Arc<Mutex<Vec<Attempt>>> = Arc::new(Mutex::new(Vec::new()));
        let sent_in = Arc::clone(&sent);
        let writer = std::thread::spawn(move || {
            let client = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("client");
            for batch in 0.. {
                let evs = events(&format!("k{round}-{batch}"), 200, "v8", internal(), HEALTHY);
                let resp = client
                    .post(format!("{base}/v1/events"))
                    .bearer_auth(INGEST)
                    .json(&evs)
                    .send();
                let acked = matches!(&resp, Ok(r) if r.status().as_u16() == 200);
                sent_in.lock().expect("lock").push((evs, acked));
                if !acked {
                    return;
                }
            }
        });
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(150 + (seed >> 33) % 400));
        server = server.crash_and_restart();
        writer.join().expect("writer");
        for (batch, acked) in sent.lock().expect("lock").drain(..) {
            if acked {
                acknowledged += batch.len() as u64;
            }
            attempted.push(batch);
        }
        // Every acknowledged event is still counted after the crash.
        assert!(
            internal_candidate_tasks(&server) >= acknowledged,
            "round {round}: lost acknowledged events"
        );
    }
    assert!(
        acknowledged >= 1000,
        "the writer barely ran ({acknowledged} acknowledged)"
    );
    // Retrying everything that was attempted counts each event exactly once.
    let total: u64 = attempted.iter().map(|b| b.len() as u64).sum();
    let mut accepted = 0;
    let mut duplicates = 0;
    for batch in &attempted {
        let r = server.post("/v1/events", Some(INGEST), &Value::Array(batch.clone()));
        assert_eq!(r.status, 200, "{}", r.text);
        accepted += r.body["accepted"].as_u64().unwrap_or(0);
        duplicates += r.body["duplicates"].as_u64().unwrap_or(0);
    }
    assert_eq!(accepted + duplicates, total);
    assert!(
        duplicates >= acknowledged,
        "every acknowledged event is a duplicate on retry"
    );
    assert_eq!(
        internal_candidate_tasks(&server),
        total,
        "each event counted exactly once"
    );
}

#[test]
fn state_and_receipts_are_identical_across_kill_9() {
    let server = Server::start(&config(""));
    server.drive_cost_read_only("s");
    let r = server.post(
        "/v1/rollouts/support-reply-v8/pause",
        Some(OPERATOR),
        &json!({"reason": "look closer"}),
    );
    assert_eq!(r.status, 200);
    let before_status = server.status();
    let before_receipts = server.receipts();
    let server = server.crash_and_restart();
    let after_status = server.status();
    for key in [
        "state",
        "stage",
        "weights",
        "read_only",
        "narrows",
        "epoch",
        "stage_started",
    ] {
        assert_eq!(
            before_status[key], after_status[key],
            "{key} changed across the crash"
        );
    }
    for key in ["since", "cause"] {
        assert_eq!(
            before_status["reenable"][key], after_status["reenable"][key],
            "reenable.{key} changed"
        );
    }
    assert_eq!(before_receipts, server.receipts());
    let a = server.assign("agent", internal());
    assert_eq!(
        a["mode"], "read_only",
        "the read-only fallback is still in force after restart"
    );
}

#[test]
fn a_second_process_on_the_same_data_dir_is_refused() {
    let server = Server::start(&config(""));
    let (code, stderr) = server.run_second();
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("another stagegate process") && stderr.contains("stagegate.redb"),
        "{stderr}"
    );
    assert_eq!(
        server.get("/healthz", None).status,
        200,
        "the first process is unharmed"
    );
}

#[test]
fn a_corrupt_store_stops_start_up_and_is_left_untouched() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("stagegate.yaml");
    Server::write_config(&path, dir.path(), &config(""));
    let store = dir.path().join("data").join("stagegate.redb");
    std::fs::create_dir_all(store.parent().expect("parent")).expect("mkdir");
    let garbage = b"this is not a redb file, it is a grocery list".repeat(200);
    std::fs::write(&store, &garbage).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_stagegate"))
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&store.display().to_string()) && stderr.contains("left untouched"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(&store).expect("read"),
        garbage,
        "never silently replaced"
    );
}

#[test]
fn reload_validates_first_and_receipts_a_policy_change() {
    let server = Server::start(&slow_config());
    server.send_events(&events("rl", 300, "v8", internal(), HEALTHY));
    let hash = |s: &Server| {
        s.get("/readyz", None).body["config_hash"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let original = hash(&server);

    // An invalid file changes nothing and says why.
    let good = std::fs::read_to_string(&server.config_path).expect("read");
    std::fs::write(
        &server.config_path,
        good.replace("max_narrows: 2", "max_narrows: lots"),
    )
    .expect("write");
    let r = server.post("/v1/config/reload", Some(ADMIN), &json!({}));
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (422, Some("invalid_config")),
        "{}",
        r.text
    );
    assert!(
        r.body["error"]["details"][0]
            .as_str()
            .is_some_and(|d| d.contains("max_narrows")),
        "{}",
        r.text
    );
    assert_eq!(hash(&server), original);
    assert_eq!(internal_candidate_tasks(&server), 300);

    // A change outside the rollout keeps its statistics.
    std::fs::write(
        &server.config_path,
        good.replace(
            "url: \"http://127.0.0.1:9/hook\"",
            "url: \"http://127.0.0.1:10/hook\"",
        ),
    )
    .expect("write");
    let r = server.post("/v1/config/reload", Some(ADMIN), &json!({}));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["receipts"].as_array().map(Vec::len), Some(0));
    assert_eq!(
        internal_candidate_tasks(&server),
        300,
        "statistics of an unchanged rollout are kept"
    );
    let second = hash(&server);
    assert_ne!(second, original);

    // Changing a gate writes a receipt carrying both hashes.
    std::fs::write(&server.config_path, good.replace("min: 0.80", "min: 0.85")).expect("write");
    let r = server.post("/v1/config/reload", Some(ADMIN), &json!({}));
    assert_eq!(r.status, 200, "{}", r.text);
    let receipt = &r.body["receipts"][0];
    assert_eq!(receipt["action"], "reconfigure");
    assert_eq!(receipt["previous_config_hash"], second.as_str());
    assert_eq!(receipt["config_hash"], hash(&server).as_str());
    assert_eq!(receipt["actor"]["name"], "platform");
}

#[test]
fn sighup_reloads_and_sigterm_exits_cleanly() {
    let mut server = Server::start(&config(""));
    let before = server.get("/readyz", None).body["config_hash"].clone();
    let text = std::fs::read_to_string(&server.config_path).expect("read");
    std::fs::write(
        &server.config_path,
        text.replace("max_narrows: 2", "max_narrows: 3"),
    )
    .expect("write");
    let pid = server.pid().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let mut changed = false;
    for _ in 0..200 {
        if server.get("/readyz", None).body["config_hash"] != before {
            changed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(changed, "SIGHUP did not reload");
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let status = server.wait_exit();
    assert_eq!(
        status,
        Some(0),
        "graceful shutdown exits 0\n{}",
        server.log()
    );
}

#[test]
fn a_guard_breach_switches_a_stable_workflow_to_read_only() {
    let text = config("").replace(
        "summarize: { stable: s1, versions: [s1] }",
        "summarize: { stable: s1, versions: [s1], guards: [ { signal: quality, stat: mean, min: 0.7 } ] }",
    );
    let server = Server::start(&text);
    let assign = |s: &Server| {
        s.post(
            "/v1/assign",
            Some(INGEST),
            &json!({"workflow": "summarize", "subject": "doc-1"}),
        )
        .body
    };
    assert_eq!(assign(&server)["mode"], "full");
    let bad: Vec<Value> = (0..300)
        .map(|i| json!({"event_id": format!("g-{i}"), "workflow": "summarize", "version": "s1", "quality": 0.4 + f64::from(i % 10) / 100.0}))
        .collect();
    server.send_events(&bad);
    let mut read_only = false;
    for _ in 0..400 {
        if assign(&server)["mode"] == "read_only" {
            read_only = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(read_only, "guard did not trip");
    let w = server.get("/v1/workflows", Some(READER)).body;
    assert_eq!(w["guarded_workflows"][0]["mode"], "read_only");
    let r = server.get("/v1/receipts?rollout=summarize", Some(READER));
    assert_eq!(r.body["receipts"][0]["action"], "read_only");
    let r = server.post(
        "/v1/workflows/summarize/resume",
        Some(OPERATOR),
        &json!({"reason": "model fixed"}),
    );
    assert_eq!(r.status, 422, "{}", r.text);
    let r = server.post(
        "/v1/workflows/summarize/resume",
        Some(OPERATOR),
        &json!({"reason": "model fixed", "ack": true}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(assign(&server)["mode"], "full");
}

#[test]
fn dedupe_keys_are_pruned_after_their_window() {
    let server =
        Server::start(&slow_config().replace("tick: 50ms", "tick: 50ms, dedupe_window: 1s"));
    let batch = events("dw", 10, "v8", internal(), HEALTHY);
    assert_eq!(server.send_events(&batch)["accepted"], 10);
    assert_eq!(
        server.send_events(&batch)["duplicates"],
        10,
        "inside the window a retry is a duplicate"
    );
    let mut forgotten = false;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(100));
        let r = server.post(
            "/v1/events",
            Some(INGEST),
            &Value::Array(batch[..1].to_vec()),
        );
        if r.body["accepted"] == 1 {
            forgotten = true;
            break;
        }
    }
    assert!(forgotten, "the dedupe key outlived its 1s window");
}

#[test]
fn a_restart_with_fewer_stages_resumes_at_the_last_one() {
    let server = Server::start(&config(""));
    let r = server.post(
        "/v1/rollouts/support-reply-v8/promote",
        Some(ADMIN),
        &json!({"reason": "to the end", "full": true}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let text = std::fs::read_to_string(&server.config_path).expect("read");
    let cut: String = text
        .lines()
        .filter(|l| !l.contains("name: full,") && !l.contains("name: half,"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&server.config_path, cut).expect("write");
    let server = server.crash_and_restart();
    let s = server.status();
    assert_eq!(s["stage"], "smb-5", "{s}");
    assert_eq!(server.assign("x", internal())["version"], "v8");
}

#[test]
fn a_restart_replays_only_events_no_checkpoint_covers_for_every_scope() {
    // Two scopes: the rollout, and a guard on `summarize`.
    let text = slow_config().replace(
        "summarize: { stable: s1, versions: [s1] }",
        "summarize: { stable: s1, versions: [s1], guards: [ { signal: quality, stat: mean, min: 0.7 } ] }",
    );
    let server = Server::start(&text);
    // The guard's evidence (its `since` is the start time until its state first changes).
    let guarded = |s: &Server| {
        let mut g = s.get("/v1/workflows", Some(READER)).body["guarded_workflows"][0].clone();
        g["since"] = Value::Null;
        g
    };
    let healthy: Vec<Value> = (0..120)
        .map(|i| json!({"event_id": format!("g-{i}"), "workflow": "summarize", "version": "s1", "quality": 0.9}))
        .collect();
    server.send_events(&healthy);
    server.send_events(&events("a", 300, "v8", internal(), HEALTHY));
    let (rollout, guard) = (server.status()["segments"].clone(), guarded(&server));
    // A clean stop checkpoints every scope: nothing is replayed.
    let server = server.stop_and_restart();
    let opened = |s: &Server| {
        s.log()
            .lines()
            .rfind(|l| l.contains("store opened"))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        opened(&server).contains("restored=2") && opened(&server).contains("replayed=0"),
        "{}",
        opened(&server)
    );
    assert_eq!(server.status()["segments"], rollout);
    assert_eq!(guarded(&server), guard);
    // New events for the rollout only; kill -9 whenever. The guard's evidence comes from its
    // checkpoint alone, the rollout's from its checkpoint and at most the new events.
    server.send_events(&events("b", 100, "v8", internal(), HEALTHY));
    let rollout = server.status()["segments"].clone();
    let server = server.crash_and_restart();
    let line = opened(&server);
    let replayed: u64 = line
        .split("replayed=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no replayed count: {line}"));
    assert!(replayed <= 100, "{line}");
    assert_eq!(server.status()["segments"], rollout);
    assert_eq!(guarded(&server), guard);
    assert_eq!(internal_candidate_tasks(&server), 400);
}

/// The recorder applies a rollout's events a few at a time (`Engine::defer_routed`); an
/// acknowledged event is still in the status read right after its answer, and in the
/// checkpoint a clean stop writes — with no tick in between to apply them (the tick is an hour).
#[test]
fn acknowledged_events_are_in_the_status_at_once_and_in_the_checkpoint_a_stop_writes() {
    let server = Server::start(&config("").replace("tick: 50ms", "tick: 1h"));
    let answer = server.send_events(&events("now", 5, "v8", internal(), HEALTHY));
    assert_eq!(answer["accepted"], 5, "{answer}");
    assert_eq!(server.status()["candidate_samples"], 5);
    // Seven in all: fewer than a rollout's evidence holds back (`DEFERRED_TASKS`).
    let answer = server.send_events(&events("then", 2, "v8", internal(), HEALTHY));
    assert_eq!(answer["accepted"], 2, "{answer}");
    let server = server.stop_and_restart();
    assert_eq!(server.status()["candidate_samples"], 7, "{}", server.log());
}
