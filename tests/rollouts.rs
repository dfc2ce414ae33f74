//! Rollout scenarios driven over HTTP against the real binary.

mod support;

use serde_json::{Value, json};
use support::*;

fn stage(s: &Value) -> &str {
    s["stage"].as_str().unwrap_or("")
}

fn state(s: &Value) -> &str {
    s["state"].as_str().unwrap_or("")
}

/// Feeds stage 0 (internal 100 %) healthy candidate traffic until the rollout reaches `smb-5`.
/// The version and mode `subject` gets now, as `version/mode`.
fn assigned(server: &Server, subject: &str, attributes: Value) -> String {
    let a = server.assign(subject, attributes);
    format!(
        "{}/{}",
        a["version"].as_str().unwrap_or(""),
        a["mode"].as_str().unwrap_or("")
    )
}

fn climb_to_smb5(server: &Server, tag: &str) {
    server.send_events(&events(
        &format!("{tag}-int"),
        1000,
        "v8",
        internal(),
        HEALTHY,
    ));
    server.wait_for("stage smb-5", |s| stage(s) == "smb-5");
}

#[test]
fn healthy_candidate_climbs_every_stage_then_waits_for_approval() {
    let server = Server::start(&config(""));
    let s = server.status();
    assert_eq!((state(&s), stage(&s)), ("progressing", "internal"));

    climb_to_smb5(&server, "h");
    // smb-5: internal keeps 100 %, everyone gets 5 %. Both arms report in `everyone`.
    // Relative rate checks with a margin need a few thousand tasks per arm at α/30 per check.
    server.send_events(&events("h-smb-b", 3000, "v7", smb(), HEALTHY));
    server.send_events(&events("h-smb-c", 3000, "v8", smb(), HEALTHY));
    server.send_events(&events("h-smb-i", 1000, "v8", internal(), HEALTHY));
    server.wait_for("stage half", |s| stage(s) == "half");

    server.send_events(&events("h-half-b", 3000, "v7", smb(), HEALTHY));
    server.send_events(&events("h-half-c", 3000, "v8", smb(), HEALTHY));
    server.send_events(&events("h-half-i", 1000, "v8", internal(), HEALTHY));
    server.send_events(&events("h-half-eb", 3000, "v7", enterprise(), HEALTHY));
    server.send_events(&events("h-half-ec", 3000, "v8", enterprise(), HEALTHY));
    let s = server.wait_for("approval wait", |s| {
        s["waiting"]
            .as_str()
            .unwrap_or("")
            .contains("awaiting an operator's promote")
    });
    assert_eq!(
        stage(&s),
        "half",
        "a manual stage is never entered automatically"
    );
    assert!(
        s["gates"]
            .as_array()
            .is_some_and(|g| g.iter().all(|v| v["verdict"] == "pass")),
        "{s}"
    );

    // Every verdict carries its sample counts.
    let g = &s["gates"][0];
    assert!(
        g["candidate"]["samples"].as_u64().unwrap_or(0) >= 1000,
        "{g}"
    );

    let r = server.post(
        "/v1/rollouts/support-reply-v8/promote",
        Some(ADMIN),
        &json!({"reason": "reviewed the dashboards"}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["action"], "promote");
    let s = server.status();
    assert_eq!((state(&s), stage(&s)), ("promoted", "full"));

    let receipts = server.receipts();
    let actions: Vec<&str> = receipts
        .iter()
        .rev()
        .map(|r| r["action"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(actions, ["reconfigure", "expand", "expand", "promote"]);
    let expand = &receipts[2];
    assert_eq!(expand["actor"]["kind"], "controller");
    assert_eq!(expand["before"]["stage"], "internal");
    assert_eq!(expand["after"]["stage"], "smb-5");
    assert_eq!(expand["lane"]["owner"], "revenue-ops-lead");
    assert!(
        expand["config_hash"]
            .as_str()
            .is_some_and(|h| h.len() == 64)
    );
    assert!(expand["evidence"].as_array().is_some_and(|e| !e.is_empty()));
}

#[test]
fn quality_drop_rolls_back_and_everyone_gets_the_baseline() {
    let server = Server::start(&config(""));
    let bad = Profile {
        quality: 0.6,
        ..HEALTHY
    };
    server.send_events(&events("q", 400, "v8", internal(), bad));
    let s = server.wait_for("rollback", |s| state(s) == "rolled_back");
    assert!(s["view"].is_null());
    assert_eq!(s["weights"]["internal"], 0.0);

    let receipt = &server.receipts()[0];
    assert_eq!(receipt["action"], "rollback");
    assert_eq!(receipt["trigger"]["gate"], "quality_mean");
    assert_eq!(receipt["trigger"]["segment"], "internal");
    let evidence = receipt["evidence"].as_array().cloned().unwrap_or_default();
    let failing = evidence
        .iter()
        .find(|v| v["gate"] == "quality_mean")
        .expect("quality verdict in the receipt");
    assert_eq!(failing["verdict"], "fail");
    assert_eq!(failing["candidate"]["samples"], 400);
    assert!(
        receipt["lane"]["repair"]
            .as_str()
            .is_some_and(|r| r.contains("CRM"))
    );

    assert_eq!(assigned(&server, "some-agent", internal()), "v7/full");

    let metrics = server.get("/metrics", None).text;
    assert!(metrics.contains(r#"stagegate_automatic_rollbacks_total{gate="quality_mean",rollout="support-reply-v8"} 1"#), "{metrics}");
    assert!(
        metrics.contains(
            r#"stagegate_rollout_state{rollout="support-reply-v8",state="rolled_back"} 1"#
        )
    );
    assert_eq!(
        metrics
            .lines()
            .filter(|l| l.starts_with("stagegate_rollout_state{"))
            .count(),
        1,
        "one state series: {metrics}"
    );
    // What the automatic-rollback alert reads: the open containment and its gate.
    assert!(
        metrics.contains(r#"stagegate_rollout_contained{action="rollback",gate="quality_mean",rollout="support-reply-v8"} 1"#),
        "{metrics}"
    );
}

/// Climbs to smb-5, then reports slow SMB candidate tasks; returns the narrowed status.
fn narrow_on_smb_latency(server: &Server, tag: &str) -> Value {
    climb_to_smb5(server, tag);
    let slow = Profile {
        latency_ms: 3000.0,
        ..HEALTHY
    };
    server.send_events(&events(&format!("{tag}-b"), 1500, "v7", smb(), HEALTHY));
    server.send_events(&events(&format!("{tag}-c"), 1500, "v8", smb(), slow));
    server.wait_for("narrow", |s| state(s) == "narrowed")
}

#[test]
fn latency_regression_at_stage_two_narrows_to_stage_one() {
    let server = Server::start(&config(""));
    let s = narrow_on_smb_latency(&server, "l");
    // Scope segment (the default): `everyone` goes back to the internal stage's share, the
    // rollout and the other segments keep smb-5.
    assert_eq!(stage(&s), "smb-5");
    assert_eq!(s["narrows"], 1);
    assert_eq!(s["segment_stages"]["everyone"], "internal", "{s}");
    let receipt = &server.receipts()[0];
    assert_eq!(receipt["action"], "narrow");
    assert_eq!(receipt["trigger"]["gate"], "latency_ms_p95");
    assert_eq!(receipt["trigger"]["segment"], "everyone");
    assert_eq!(receipt["after"]["weights"]["everyone"], 0.0);
    assert_eq!(receipt["after"]["weights"]["internal"], 100.0);
}

#[test]
fn a_rollout_scoped_narrow_moves_every_segment_back() {
    let server = Server::start(&config("").replace(
        "max_ratio: 1.25,    on_breach: narrow }",
        "max_ratio: 1.25,    on_breach: narrow, scope: rollout }",
    ));
    let s = narrow_on_smb_latency(&server, "lr");
    assert_eq!(stage(&s), "internal");
    assert!(s["segment_stages"].is_null(), "{s}");
}

#[test]
fn cost_spike_falls_back_to_read_only() {
    let server = Server::start(&config(""));
    let pricey = Profile {
        cost_usd: 0.2,
        ..HEALTHY
    };
    server.send_events(&events("c", 300, "v8", internal(), pricey));
    let s = server.wait_for("read-only", |s| state(s) == "read_only");
    assert_eq!(s["read_only_segments"], json!(["internal"]), "{s}");
    assert_eq!(
        s["weights"]["internal"], 100.0,
        "read-only keeps the candidate's traffic"
    );
    assert_eq!(assigned(&server, "agent-1", internal()), "v8/read_only");
    // Subjects outside every exposed segment are untouched.
    assert_eq!(assigned(&server, "agent-1", smb()), "v7/full");
}

#[test]
fn regression_in_one_segment_is_caught_and_named() {
    let server = Server::start(&config(""));
    climb_to_smb5(&server, "seg");
    server.send_events(&events("seg-i", 1000, "v8", internal(), HEALTHY));
    server.send_events(&events("seg-b", 600, "v7", smb(), HEALTHY));
    server.send_events(&events(
        "seg-c",
        600,
        "v8",
        smb(),
        Profile {
            quality: 0.7,
            ..HEALTHY
        },
    ));
    server.wait_for("rollback", |s| state(s) == "rolled_back");
    let receipt = &server.receipts()[0];
    assert_eq!(receipt["trigger"]["segment"], "everyone");
    let internal_quality = receipt["evidence"]
        .as_array()
        .and_then(|e| {
            e.iter()
                .find(|v| v["gate"] == "quality_mean" && v["segment"] == "internal")
                .cloned()
        })
        .expect("internal verdict recorded");
    assert_eq!(
        internal_quality["verdict"], "pass",
        "the healthy segment is shown passing"
    );
}

#[test]
fn a_handful_of_terrible_events_is_evidence_only_for_bounded_signals() {
    // 25 tasks that all fall back, are rejected and score 0: for bounded signals (rates,
    // quality, and a p95 limit as the share of slow tasks) a test by betting needs no minimum
    // count, and this is overwhelming evidence. A mean of an unbounded signal (cost) still
    // waits for 100 samples per arm.
    let server = Server::start(&config(""));
    let terrible = Profile {
        quality: 0.0,
        latency_ms: 60_000.0,
        cost_usd: 5.0,
        fallback_every: 1,
        reject_every: 1,
    };
    let r = server.send_events(&events("t", 25, "v8", internal(), terrible));
    assert_eq!(r["accepted"], 25);
    let s = server.wait_for("the rollback", |s| state(s) == "rolled_back");
    let receipts = server.receipts();
    let rollback = &receipts[0];
    assert_eq!(rollback["action"], "rollback", "{rollback}");
    let trigger = rollback["trigger"]["gate"].as_str().unwrap_or("");
    assert!(
        ["quality_mean", "review_reject_rate"].contains(&trigger),
        "a bounded gate acted: {trigger}"
    );
    for verdict in rollback["evidence"].as_array().cloned().unwrap_or_default() {
        if verdict["gate"] == "cost_usd_mean" {
            assert_eq!(verdict["verdict"], "inconclusive", "{verdict}");
            assert!(
                verdict["checks"][0]["note"]
                    .as_str()
                    .unwrap_or("")
                    .contains("needs 100")
            );
        }
    }
    assert_eq!(s["candidate_samples"], 0, "a new epoch");
}

#[test]
fn assignment_is_sticky_and_growth_is_monotone() {
    let server = Server::start(&config(""));
    let r = server.post(
        "/v1/rollouts/support-reply-v8/promote",
        Some(ADMIN),
        &json!({"reason": "to smb-5"}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let subjects: Vec<String> = (0..5000).map(|i| format!("customer-{i}")).collect();
    let before: Vec<bool> = subjects
        .iter()
        .map(|s| server.assign(s, smb())["version"] == "v8")
        .collect();
    let again: Vec<bool> = subjects
        .iter()
        .take(500)
        .map(|s| server.assign(s, smb())["version"] == "v8")
        .collect();
    assert_eq!(
        &before[..500],
        &again[..],
        "same subject, same weights, same version"
    );
    let share = before.iter().filter(|b| **b).count();
    assert!((150..350).contains(&share), "{share} of 5000 at 5 %");

    let r = server.post(
        "/v1/rollouts/support-reply-v8/promote",
        Some(ADMIN),
        &json!({"reason": "to half"}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let after: Vec<bool> = subjects
        .iter()
        .map(|s| server.assign(s, smb())["version"] == "v8")
        .collect();
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        assert!(
            !b || *a,
            "subject {i} left the candidate when its weight grew"
        );
    }
    let share = after.iter().filter(|b| **b).count();
    assert!((2300..2700).contains(&share), "{share} of 5000 at 50 %");
    let a = server.assign("customer-1", smb());
    assert_eq!(a["stage"], "half");
    assert_eq!(a["segment"], "everyone");
    assert_eq!(a["rollout"], "support-reply-v8");
}

#[test]
fn resume_after_automatic_containment_goes_through_probation() {
    let server = Server::start(&config(""));
    server.drive_cost_read_only("p");

    // Out of the containment: the acknowledgement and the cooldown.
    let r = resume(&server, false);
    assert_eq!(r.status, 422, "{}", r.text);
    assert_eq!(r.body["error"]["code"], "reenable_proof_missing");
    let details = r.body["error"]["details"].to_string();
    assert!(
        details.contains("ack") && details.contains("cooldown"),
        "{details}"
    );
    let s = server.status();
    assert!(s["reenable"]["cooldown_ends"].is_string(), "{s}");
    assert_eq!(s["reenable"]["healthy_read_only_required"], 20, "{s}");
    wait_for_cooldown(&server);
    let r = resume(&server, true);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["after"]["state"], "probation", "{}", r.text);

    // Probation: the first stage's traffic, in read-only mode, while the proof accumulates.
    let s = server.status();
    assert_eq!((state(&s), stage(&s)), ("probation", "internal"));
    assert_eq!(assigned(&server, "agent-1", internal()), "v8/read_only");
    let r = resume(&server, true);
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(r.text.contains("0 of 20"), "{}", r.text);
    server.send_events(&healthy_read_only("p-ro", 20));
    let r = resume(&server, true);
    assert_eq!(r.status, 200, "{}", r.text);
    let s = server.status();
    assert_eq!(
        (state(&s), stage(&s), s["read_only"].as_bool()),
        ("progressing", "internal", Some(false))
    );
    assert!(s["reenable"].is_null(), "{s}");
    let a = server.assign("agent-1", internal());
    assert_eq!(a["mode"], "full");
    // Each step is a receipt: read-only, probation, progressing (after the start's "added").
    let actions: Vec<String> = server
        .receipts()
        .iter()
        .map(|r| {
            format!(
                "{}:{}",
                r["action"].as_str().unwrap_or(""),
                r["after"]["state"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            "resume:progressing",
            "resume:probation",
            "read_only:read_only",
            "reconfigure:progressing"
        ],
        "{actions:?}"
    );
}

#[test]
fn the_same_miss_in_probation_rolls_back_again() {
    let server = Server::start(&config(""));
    server.drive_cost_read_only("q");
    wait_for_cooldown(&server);
    assert_eq!(resume(&server, true).status, 200);
    // The read-only drafts cost as much as before.
    let mut costly = healthy_read_only("q-ro", 300);
    for e in &mut costly {
        e["cost_usd"] = json!(0.2);
    }
    server.send_events(&costly);
    server.wait_for("a rollback out of probation", |s| state(s) == "rolled_back");
    let last = &server.receipts()[0];
    assert_eq!(last["action"], "rollback", "{last}");
    assert_eq!(last["before"]["state"], "probation", "{last}");
    assert!(
        last["reason"]
            .as_str()
            .unwrap_or("")
            .contains("during probation"),
        "{last}"
    );
}

#[test]
fn pause_is_one_call_and_freezes_the_rollout() {
    let server = Server::start(&config(""));
    let r = server.post(
        "/v1/rollouts/support-reply-v8/pause",
        Some(OPERATOR),
        &json!({"reason": "incident"}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["actor"]["name"], "oncall");
    server.send_events(&events("pz", 1000, "v8", internal(), HEALTHY));
    std::thread::sleep(std::time::Duration::from_millis(300));
    let s = server.status();
    assert_eq!(
        (state(&s), stage(&s)),
        ("paused", "internal"),
        "no expansion while paused"
    );
    let r = server.post(
        "/v1/rollouts/support-reply-v8/pause",
        Some(OPERATOR),
        &json!({"reason": "again"}),
    );
    assert_eq!(r.status, 409);
    let r = server.post(
        "/v1/rollouts/support-reply-v8/resume",
        Some(OPERATOR),
        &json!({"reason": "incident over"}),
    );
    assert_eq!(
        r.status, 200,
        "a plain pause needs no re-enable proof: {}",
        r.text
    );
    server.wait_for("expansion after resume", |s| stage(s) == "smb-5");
}

#[test]
fn operator_rollback_and_state_survive_a_restart() {
    let server = Server::start(&config(""));
    server.send_events(&events("rs", 150, "v8", internal(), HEALTHY));
    let r = server.post(
        "/v1/rollouts/support-reply-v8/rollback",
        Some(OPERATOR),
        &json!({"reason": "customer complaint"}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let id = r.body["id"].as_str().expect("receipt id").to_string();
    let server = server.crash_and_restart();
    let s = server.status();
    assert_eq!(state(&s), "rolled_back");
    let r = server.get(&format!("/v1/receipts/{id}"), Some(READER));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["reason"], "customer complaint");
    // Retried events after the restart are duplicates, not new samples.
    let again = server.send_events(&events("rs", 150, "v8", internal(), HEALTHY));
    assert_eq!(
        (again["accepted"].as_u64(), again["duplicates"].as_u64()),
        (Some(0), Some(150))
    );
}

#[test]
fn a_regression_after_promotion_is_rolled_back_during_the_bake() {
    let server = Server::start(&config(""));
    let r = server.post(
        "/v1/rollouts/support-reply-v8/promote",
        Some(ADMIN),
        &json!({"reason": "ship it", "full": true}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(state(&server.status()), "promoted");
    assert!(
        server.status()["waiting"]
            .as_str()
            .is_some_and(|w| w.contains("baking until")),
        "{}",
        server.status()
    );
    // The new stable version regresses for everyone within the (default 24 h) bake.
    let bad = Profile {
        quality: 0.4,
        ..HEALTHY
    };
    server.send_events(&events("baked", 200, "v8", smb(), bad));
    let s = server.wait_for("the rollback", |s| state(s) == "rolled_back");
    assert_eq!(s["weights"]["everyone"], 0.0);
    let receipt = &server.receipts()[0];
    assert_eq!(receipt["before"]["state"], "promoted", "{receipt}");
    assert_eq!(receipt["trigger"]["gate"], "quality_mean");
    assert_eq!(
        server.assign("after-bake", smb())["version"],
        "v7",
        "everyone is back on the previous version"
    );
}

#[test]
fn status_says_which_gates_hold_the_stage_and_roughly_how_long_for() {
    let server = Server::start(&config(""));
    // 150 healthy internal tasks; the stage's segment has no baseline traffic.
    server.send_events(&events("w", 150, "v8", internal(), HEALTHY));
    let s = server.status();
    let holding = s["holding"].as_array().cloned().unwrap_or_default();
    let gates: Vec<Value> = s["gates"].as_array().cloned().unwrap_or_default();
    let not_passing = gates.iter().filter(|g| g["verdict"] != "pass").count();
    assert_eq!(holding.len(), not_passing, "{s}");
    for h in &holding {
        assert_eq!(h["candidate_samples"], 150, "{h}");
        assert!(h["why"].is_string(), "{h}");
    }
    // The fallback rate (a test by betting) knows how far it is.
    let fallback = holding
        .iter()
        .find(|h| h["gate"] == "fallback_rate")
        .expect("fallback holds");
    assert!(
        fallback["samples_to_decide"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{fallback}"
    );
    assert!(fallback["eta"].is_string(), "{fallback}");
    let metrics = server.get("/metrics/gates", None).text;
    assert!(
        metrics.contains("stagegate_gate_samples_to_decide{"),
        "{metrics}"
    );
}

#[test]
fn an_observe_only_gate_records_that_it_would_have_acted_and_never_acts() {
    let cfg = config("").replace(
        "min: 0.80, max_drop: 0.03,     on_breach: rollback }",
        "min: 0.80, max_drop: 0.03,     on_breach: rollback, mode: observe }",
    );
    assert!(cfg.contains("mode: observe"));
    let server = Server::start(&cfg);
    // Quality far below the limit, everything else healthy: the quality gate fails...
    let bad = Profile {
        quality: 0.6,
        ..HEALTHY
    };
    server.send_events(&events("o", 400, "v8", internal(), bad));
    let receipt = server.wait_for("an observation", |_| {
        server.receipts().iter().any(|r| r["action"] == "observe")
    });
    let _ = receipt;
    let receipts = server.receipts();
    let observed = receipts
        .iter()
        .find(|r| r["action"] == "observe")
        .cloned()
        .unwrap_or_default();
    assert!(
        observed["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("would have acted (rollback)")),
        "{observed}"
    );
    assert_eq!(observed["trigger"]["gate"], "quality_mean", "{observed}");
    assert_eq!(observed["before"]["state"], observed["after"]["state"]);
    // ...but nothing acts, and the rollout still expands on the enforced gates.
    let s = server.wait_for("expansion despite the observe-only failure", |s| {
        stage(s) == "smb-5"
    });
    assert_eq!(state(&s), "progressing");
    // The receipt carries the failing observe-only verdict as evidence.
    let gate = observed["evidence"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|g| g["gate"] == "quality_mean" && g["segment"] == "internal")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (gate["verdict"].as_str(), gate["observe"].as_bool()),
        (Some("fail"), Some(true)),
        "{gate}"
    );
    // Recorded once per gate, segment and epoch: one observation so far, none repeated.
    let count = server
        .receipts()
        .iter()
        .filter(|r| r["action"] == "observe" && r["after"]["epoch"] == observed["after"]["epoch"])
        .count();
    assert_eq!(count, 1);
    assert!(server.receipts().iter().all(|r| r["action"] != "rollback"));
    let metrics = server.get("/metrics", None).text;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("stagegate_decisions_total")
                && l.contains(r#"action="observe""#)
                && l.ends_with(" 1")),
        "the observation is counted"
    );
}

/// The test config with a simpler `v8-lite` that takes over when latency regresses.
fn config_with_fallback() -> String {
    let cfg = config("")
        .replace(
            "support-reply: { stable: v7, versions: [v7, v8] }",
            "support-reply: { stable: v7, versions: [v7, v8, v8-lite] }",
        )
        .replace(
            "max: 4000, max_ratio: 1.25,    on_breach: narrow }",
            "max: 4000, max_ratio: 1.25,    on_breach: { fallback: v8-lite } }",
        );
    assert!(cfg.contains("fallback: v8-lite") && cfg.contains("v8-lite]"));
    cfg
}

#[test]
fn a_fallback_gate_serves_the_candidates_share_with_another_version() {
    let server = Server::start(&config_with_fallback());
    let slow = Profile {
        latency_ms: 9000.0,
        ..HEALTHY
    };
    server.send_events(&events("slow", 200, "v8", internal(), slow));
    let s = server.wait_for("the fallback", |s| state(s) == "fallback");
    assert_eq!(stage(&s), "internal", "the stage and its weights stay");
    // The candidate's share now runs v8-lite, in full mode, with reason `fallback`.
    let a = server.assign("agent-1", internal());
    assert_eq!(
        (
            a["version"].as_str(),
            a["mode"].as_str(),
            a["reason"].as_str()
        ),
        (Some("v8-lite"), Some("full"), Some("fallback")),
        "{a}"
    );
    let r = server.post(
        "/ofrep/v1/evaluate/flags/support-reply",
        Some(INGEST),
        &json!({"context": {"targetingKey": "agent-1", "team": "support-ops"}}),
    );
    assert_eq!(
        (r.body["value"].as_str(), r.body["reason"].as_str()),
        (Some("v8-lite"), Some("FALLBACK")),
        "{}",
        r.text
    );
    // The receipt and the metrics name it.
    let receipt = &server.receipts()[0];
    assert_eq!(receipt["action"], "fallback", "{receipt}");
    assert_eq!(receipt["after"]["fallback"], "v8-lite", "{receipt}");
    assert_eq!(receipt["trigger"]["gate"], "latency_ms_p95", "{receipt}");
    let metrics = server.get("/metrics", None).text;
    assert!(
        metrics
            .contains(r#"stagegate_rollout_state{rollout="support-reply-v8",state="fallback"} 1"#),
        "{}",
        metrics
            .lines()
            .filter(|l| l.starts_with("stagegate_rollout_state"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Re-enabling is the lane's: ack and cooldown, then probation on the candidate itself.
    wait_for_cooldown(&server);
    let r = resume(&server, true);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["after"]["state"], "probation");
    assert_eq!(assigned(&server, "agent-1", internal()), "v8/read_only");
    let after = server.get("/metrics", None).text;
    assert!(
        metrics.contains(r#"stagegate_rollout_contained{action="fallback",gate="latency_ms_p95",rollout="support-reply-v8"} 1"#)
            && !after.contains("stagegate_rollout_contained{"),
        "contained while in fallback, not in probation:\n{after}"
    );
    assert!(
        after.contains(r#"stagegate_assignments_total{mode="read_only",version="v8",workflow="support-reply"} 1"#),
        "the first read-only assignment made its series:\n{after}"
    );
}

#[test]
fn a_fallback_to_an_undeclared_version_or_to_the_candidate_is_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    for (bad, expect) in [
        ("{ fallback: v9 }", "unknown fallback version `v9`"),
        ("{ fallback: v8 }", "another version than the candidate"),
        (
            "{ fallback: v8-lite, mode: drafty }",
            "unknown mode `drafty`",
        ),
    ] {
        let cfg = config_with_fallback().replace("{ fallback: v8-lite }", bad);
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, cfg.replace("{DATA_DIR}", "data")).expect("write");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_stagegate"))
            .args(["check", "--config"])
            .arg(&path)
            .env("STAGEGATE_ADMIN_TOKEN", "t")
            .output()
            .expect("check");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(expect),
            "{bad}: {err}"
        );
        assert!(err.contains("gates[1].on_breach"), "{err}");
    }
}

fn affected(server: &Server, accept: &str) -> support::Reply {
    let r = server.client_get_with(
        "/v1/rollouts/support-reply-v8/affected",
        Some(OPERATOR),
        &[("accept", accept)],
    );
    assert_eq!(r.status, 200, "{}", r.text);
    r
}

fn tag(server: &Server, event_id: &str, tag: &str) -> support::Reply {
    server.post(
        &format!("/v1/rollouts/support-reply-v8/affected/{event_id}"),
        Some(OPERATOR),
        &json!({"tag": tag, "note": "checked the CRM record"}),
    )
}

#[test]
fn the_affected_list_names_every_exposed_task_and_its_review_gates_the_way_back() {
    let cfg = config("").replace(
        "healthy_read_only_samples: 20 }",
        "healthy_read_only_samples: 20, affected_reviewed: true }",
    );
    assert!(cfg.contains("affected_reviewed: true"));
    let server = Server::start(&cfg);
    // Baseline tasks and read-only tasks are not affected; the candidate's full-mode ones are.
    server.send_events(&events("base", 50, "v7", internal(), HEALTHY));
    server.drive_quality_rollback("bad");
    let list = affected(&server, "application/x-ndjson");
    let items: Vec<Value> = list
        .text
        .lines()
        .map(|l| serde_json::from_str(l).expect("NDJSON line"))
        .collect();
    assert_eq!(
        items.len(),
        400,
        "every candidate task of the exposure window"
    );
    assert!(
        items
            .iter()
            .all(|i| i["segment"] == "internal" && i["quality"].is_number())
    );
    let rollback_id = server.receipts()[0]["id"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert_eq!(
        list.header("x-stagegate-receipt"),
        Some(rollback_id.as_str())
    );
    let csv = affected(&server, "text/csv");
    assert!(
        csv.text.starts_with("event_id,subject,segment,ts,quality"),
        "{}",
        csv.text
    );
    assert_eq!(csv.text.lines().count(), 401);
    // Viewers see status, not the affected records.
    let r = server.get("/v1/rollouts/support-reply-v8/affected", Some(READER));
    assert_eq!(r.status, 403, "{}", r.text);

    // Tags: the last one wins; a task outside the list or a bad tag is refused.
    let first = items[0]["event_id"].as_str().unwrap_or("").to_string();
    assert_eq!(tag(&server, &first, "unclear").status, 200);
    let r = tag(&server, &first, "wrong");
    assert_eq!(
        (r.status, r.body["tag"].as_str()),
        (200, Some("wrong")),
        "{}",
        r.text
    );
    assert_eq!(tag(&server, "base-1", "safe").status, 404);
    assert_eq!(tag(&server, &first, "fine").status, 400);

    // Probation, its healthy read-only tasks, and then the review is what is missing.
    wait_for_cooldown(&server);
    assert_eq!(resume(&server, true).status, 200);
    server.send_events(&healthy_read_only("ro", 20));
    let r = resume(&server, true);
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(r.text.contains("affected_reviewed: 399"), "{}", r.text);
    // The list still answers for the rolled-back window while the containment is open.
    for item in &items[1..] {
        let id = item["event_id"].as_str().unwrap_or("");
        assert_eq!(tag(&server, id, "safe").status, 200);
    }
    let metrics = server.get("/metrics", None).text;
    assert!(
        metrics.contains(r#"stagegate_affected_items{rollout="support-reply-v8",tag="safe"} 399"#)
            && metrics
                .contains(r#"stagegate_affected_items{rollout="support-reply-v8",tag="wrong"} 1"#),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("affected_items"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let r = resume(&server, true);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(state(&server.status()), "progressing");
}

#[test]
fn a_segment_scoped_read_only_fallback_leaves_the_other_segments_in_full_mode() {
    let server = Server::start(&config(""));
    climb_to_smb5(&server, "rs");
    let pricey = Profile {
        cost_usd: 0.2,
        ..HEALTHY
    };
    server.send_events(&events("rs-c", 300, "v8", internal(), pricey));
    let s = server.wait_for("read-only in internal", |s| state(s) == "read_only");
    assert_eq!(s["read_only_segments"], json!(["internal"]), "{s}");
    assert_eq!(stage(&s), "smb-5");
    assert_eq!(assigned(&server, "agent-1", internal()), "v8/read_only");
    // An SMB subject in the candidate's 5 % still runs it in full mode.
    let on_candidate = (0..2000)
        .map(|i| server.assign(&format!("smb-{i}"), smb()))
        .find(|a| a["version"] == "v8")
        .expect("some subject in the 5 % share");
    assert_eq!(on_candidate["mode"], "full", "{on_candidate}");
    let receipt = &server.receipts()[0];
    assert!(
        receipt["reason"]
            .as_str()
            .is_some_and(|r| r.contains("segment internal runs read-only")),
        "{receipt}"
    );
}
