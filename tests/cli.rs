//! The CLI client run as a process against a real server.

mod support;

use std::process::Command;

use support::*;

fn cli(server: &Server, token: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_stagegate"))
        .args(args)
        .args(["--server", &server.base])
        .env("STAGEGATE_TOKEN", token)
        .output()
        .expect("run cli");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn status_shows_tables_with_verdicts_and_sample_counts() {
    let server = Server::start(&config(""));
    server.send_events(&events("cli", 30, "v8", internal(), HEALTHY));
    server.wait_for("samples", |s| s["candidate_samples"] == 30);

    let (ok, out, err) = cli(&server, READER, &["status"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("ROLLOUT"), "{out}");
    assert!(
        out.contains("support-reply-v8")
            && out.contains("progressing")
            && out.contains("internal=100% enterprise=0% everyone=0%")
            && out.contains("30/200"),
        "{out}"
    );

    let (ok, out, err) = cli(&server, READER, &["status", "support-reply-v8"]);
    assert!(ok, "{err}");
    assert!(out.contains("GATE") && out.contains("VERDICT"), "{out}");
    assert!(
        out.contains("quality_mean") && out.contains("inconclusive") && out.contains("(n=30)"),
        "{out}"
    );
    assert!(out.contains("needs 100 samples per arm, has 30"), "{out}");

    let (ok, out, _) = cli(&server, READER, &["status", "support-reply-v8", "--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).expect("--json prints JSON");
    assert_eq!(v["candidate_samples"], 30);
}

#[test]
fn operator_verbs_act_and_refusals_exit_nonzero_with_the_servers_message() {
    let server = Server::start(&config(""));
    let (ok, out, err) = cli(
        &server,
        OPERATOR,
        &["pause", "support-reply-v8", "--reason", "incident 42"],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("pause") && out.contains("operator:oncall") && out.contains("incident 42"),
        "{out}"
    );

    let (ok, _, err) = cli(
        &server,
        OPERATOR,
        &["pause", "support-reply-v8", "--reason", "again"],
    );
    assert!(!ok);
    assert!(
        err.contains("409") && err.contains("already paused"),
        "{err}"
    );

    let (ok, _, err) = cli(
        &server,
        OPERATOR,
        &["promote", "support-reply-v8", "--reason", "x"],
    );
    assert!(!ok);
    assert!(err.contains("403"), "{err}");

    let (ok, _, err) = cli(
        &server,
        OPERATOR,
        &["resume", "support-reply-v8", "--reason", "over"],
    );
    assert!(ok, "{err}");
    let (ok, _, err) = cli(
        &server,
        ADMIN,
        &["promote", "support-reply-v8", "--reason", "ship", "--full"],
    );
    assert!(ok, "{err}");
    let (ok, _, err) = cli(
        &server,
        OPERATOR,
        &["rollback", "support-reply-v8", "--reason", "bad drafts"],
    );
    assert!(ok, "{err}");

    // Contained automatically? Then resume names what is missing.
    let (ok, out, err) = cli(
        &server,
        READER,
        &["receipts", "--rollout", "support-reply-v8"],
    );
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("ID"), "{out}");
    assert_eq!(
        lines.len(),
        6,
        "pause, resume, promote, rollback, and the rollout's creation:\n{out}"
    );
    assert!(lines[5].contains("added to the config"), "{out}");
    assert!(
        lines[1].contains("rollback") && lines[1].contains("bad drafts"),
        "{out}"
    );

    let id = lines[1].split_whitespace().next().expect("id");
    let (ok, out, _) = cli(&server, READER, &["receipts", id]);
    assert!(ok && out.contains("owner   revenue-ops-lead"), "{out}");

    let (ok, _, err) = cli(&server, "", &["status"]);
    assert!(!ok && err.contains("401"), "{err}");
}

#[test]
fn resume_refusal_lists_the_missing_proof() {
    let server = Server::start(&config(""));
    server.drive_cost_read_only("cp");
    let (ok, _, err) = cli(
        &server,
        OPERATOR,
        &["resume", "support-reply-v8", "--reason", "fixed"],
    );
    assert!(!ok);
    assert!(
        err.contains("422") && err.contains("- ack") && err.contains("- cooldown"),
        "{err}"
    );
    let (ok, out, _) = cli(&server, READER, &["status", "support-reply-v8"]);
    assert!(ok && out.contains("re-enable after read_only"), "{out}");
    assert!(
        out.contains("cooldown                 ends 20")
            && out.contains("healthy read-only tasks  0/"),
        "{out}"
    );
}

#[test]
fn affected_lists_a_containments_tasks_and_tags_one() {
    let server = Server::start(&config(""));
    server.drive_quality_rollback("ca");
    let (ok, out, err) = cli(
        &server,
        OPERATOR,
        &["affected", "support-reply-v8", "--csv"],
    );
    assert!(ok, "{err}");
    assert!(out.starts_with("event_id,subject,segment"), "{out}");
    assert_eq!(
        out.lines().count(),
        401,
        "a header and the 400 exposed tasks"
    );
    let (ok, ndjson, _) = cli(&server, OPERATOR, &["affected", "support-reply-v8"]);
    let first: serde_json::Value =
        serde_json::from_str(ndjson.lines().next().unwrap_or("")).expect("NDJSON");
    assert!(ok);
    let id = first["event_id"].as_str().unwrap_or("");
    let (ok, out, err) = cli(
        &server,
        OPERATOR,
        &[
            "affected",
            "support-reply-v8",
            "--tag",
            id,
            "--as",
            "safe",
            "--note",
            "CRM checked",
        ],
    );
    assert!(
        ok && out.contains("tagged safe (CRM checked)"),
        "{out}{err}"
    );
    let (ok, _, err) = cli(&server, OPERATOR, &["affected", "no-such-rollout"]);
    assert!(!ok && err.contains("404"), "{err}");
}

#[test]
fn receipts_for_an_unknown_rollout_is_an_error_not_an_empty_table() {
    let server = Server::start(&config(""));
    let (ok, _, err) = cli(
        &server,
        READER,
        &["receipts", "--rollout", "support-reply-v9"],
    );
    assert!(
        !ok && err.contains("404") && err.contains("support-reply-v9"),
        "{err}"
    );
    let (ok, out, err) = cli(
        &server,
        READER,
        &["receipts", "--rollout", "support-reply-v8"],
    );
    assert!(ok, "{out}{err}");
}

#[test]
fn assign_events_send_reload_and_completions_are_verbs() {
    let server = Server::start(&config(""));
    let (ok, out, err) = cli(
        &server,
        INGEST,
        &[
            "assign",
            "support-reply",
            "agent-1",
            "--attr",
            "team=support-ops",
        ],
    );
    assert!(
        ok && out.contains("v8 (full) segment internal"),
        "{out}{err}"
    );
    let (ok, _, err) = cli(
        &server,
        INGEST,
        &["assign", "support-reply", "a", "--attr", "oops"],
    );
    assert!(!ok && err.contains("KEY=VALUE"), "{err}");

    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("events.ndjson");
    std::fs::write(
        &file,
        "{\"event_id\":\"c1\",\"workflow\":\"support-reply\",\"version\":\"v8\",\"quality\":0.9}\n\
         {\"event_id\":\"c2\",\"workflow\":\"nope\",\"version\":\"v8\"}\n",
    )
    .expect("write");
    let path = file.to_str().expect("utf-8 path");
    let (ok, out, err) = cli(&server, INGEST, &["events", "send", path]);
    assert!(
        ok && out.starts_with("accepted 1, duplicates 0, rejected 1"),
        "{out}{err}"
    );
    assert!(out.contains("item 1: unknown workflow"), "{out}");

    let (ok, out, err) = cli(&server, ADMIN, &["reload"]);
    assert!(ok && out.starts_with("config reloaded"), "{out}{err}");
    let (ok, _, err) = cli(&server, OPERATOR, &["reload"]);
    assert!(!ok && err.contains("403"), "{err}");

    for shell in ["bash", "zsh", "fish"] {
        let (ok, out, err) = cli(&server, "", &["completions", shell]);
        assert!(
            ok && out.contains("stagegate") && out.contains("affected"),
            "{shell}: {err}"
        );
    }
}

#[test]
fn status_watch_redraws_when_the_rollout_changes() {
    use std::io::{BufRead, BufReader};
    let server = Server::start(&config(""));
    let mut child = Command::new(env!("CARGO_BIN_EXE_stagegate"))
        .args([
            "status",
            "support-reply-v8",
            "--watch",
            "--interval",
            "50ms",
        ])
        .args(["--server", &server.base])
        .env("STAGEGATE_TOKEN", READER)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run status --watch");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    let wait_for = |needle: &str, seen: &mut Vec<String>| loop {
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no {needle:?} in:\n{}", seen.join("\n")));
        let found = line.contains(needle);
        seen.push(line);
        if found {
            return;
        }
    };
    wait_for("progressing", &mut seen);
    let frames_before = seen.iter().filter(|l| l.starts_with("--- ")).count();
    assert_eq!(
        frames_before,
        1,
        "one frame while nothing changes:\n{}",
        seen.join("\n")
    );
    let r = server.post(
        "/v1/rollouts/support-reply-v8/pause",
        Some(OPERATOR),
        &serde_json::json!({"reason": "watch me"}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    wait_for("paused", &mut seen);
    assert!(
        seen.iter().filter(|l| l.starts_with("--- ")).count() >= 2,
        "a new frame after the change:\n{}",
        seen.join("\n")
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn check_json_gives_the_plan_or_every_located_problem() {
    let out = Command::new(env!("CARGO_BIN_EXE_stagegate"))
        .args(["check", "--config", "config/stagegate.yaml", "--json"])
        .output()
        .expect("run");
    assert!(out.status.success());
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(plan["ok"], true);
    assert_eq!(plan["rollouts"][0]["stages"][1]["name"], "smb-5");
    assert_eq!(
        plan["rollouts"][0]["stages"][1]["traffic_percent"]["everyone"],
        5.0
    );
    assert_eq!(plan["rollouts"][0]["gates"][0]["on_breach"], "rollback");
    let dir = tempfile::tempdir().expect("dir");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "auth: { open: true }\nrollouts: [{ name: x, wat: 1 }]\n",
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_stagegate"))
        .args(["check", "--config"])
        .arg(&bad)
        .arg("--json")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["ok"], false);
    let first = &report["problems"][0];
    assert_eq!(first["line"], 2, "{report}");
    assert_eq!(first["key"], "rollouts[0].wat", "{report}");
}
