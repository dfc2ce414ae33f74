//! Notifications from the real binary to a loopback webhook receiver.

mod support;

use serde_json::json;
use support::*;

#[test]
fn a_rollback_is_notified_with_retries_and_an_idempotency_key() {
    let receiver = Receiver::start(1); // the first delivery gets a 500
    let server = Server::start(&config_notifying(receiver.port));
    server.drive_quality_rollback("n");
    let got = receiver.wait_for(2);
    let receipt = &server.receipts()[0];
    let id = receipt["id"].as_str().expect("id");

    let hook = got
        .iter()
        .find(|r| r.path == "/hook")
        .expect("webhook delivered");
    assert_eq!(hook.header("idempotency-key"), Some(id));
    let b = &hook.body;
    assert_eq!(
        (b["receipt_id"].as_str(), b["action"].as_str()),
        (Some(id), Some("rollback"))
    );
    assert_eq!(b["rollout"], "support-reply-v8");
    assert_eq!(
        b["trigger"],
        json!({"gate": "quality_mean", "segment": "internal"})
    );
    assert_eq!(b["owner"], "revenue-ops-lead");
    assert!(b["repair"].as_str().is_some_and(|r| r.contains("CRM")));
    let summary = b["evidence_summary"][0].as_str().unwrap_or("");
    assert!(
        summary.starts_with("quality_mean@internal fail: candidate 0.49")
            && summary.contains("(n=400)"),
        "{summary}"
    );

    let slack = got
        .iter()
        .find(|r| r.path == "/slack")
        .expect("slack delivered");
    let text = slack.body["text"].as_str().unwrap_or("");
    assert!(
        text.contains("support-reply-v8 rollback") && text.contains("revenue-ops-lead"),
        "{text}"
    );

    // One of the two deliveries drew the 500 and was retried; both were sent in the end.
    let count = |text: &str, notifier: &str, outcome: &str| {
        let prefix = format!(
            "stagegate_notifications_total{{notifier=\"{notifier}\",outcome=\"{outcome}\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let mut settled = String::new();
    for _ in 0..100 {
        settled = server.get("/metrics", None).text;
        if count(&settled, "hook", "sent") == 1 && count(&settled, "chat", "sent") == 1 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        (
            count(&settled, "hook", "sent"),
            count(&settled, "chat", "sent")
        ),
        (1, 1),
        "{settled}"
    );
    assert_eq!(
        count(&settled, "hook", "retried") + count(&settled, "chat", "retried"),
        1,
        "{settled}"
    );
    assert_eq!(
        count(&settled, "hook", "failed") + count(&settled, "chat", "failed"),
        0
    );
}

#[test]
fn pending_notifications_survive_kill_9() {
    let port = free_port();
    let server = Server::start(&config_notifying(port)); // nobody listens yet
    let r = server.post(
        "/v1/rollouts/support-reply-v8/pause",
        Some(OPERATOR),
        &json!({"reason": "freeze"}),
    );
    assert_eq!(r.status, 200);
    let id = r.body["id"].as_str().expect("id").to_string();
    std::thread::sleep(std::time::Duration::from_millis(300)); // at least one failed attempt
    let server = server.crash_and_restart();
    let receiver = Receiver::start_on(port, 0);
    let got = receiver.wait_for(2);
    assert!(
        got.iter()
            .all(|r| r.header("idempotency-key") == Some(id.as_str())),
        "{got:?}"
    );
    assert_eq!(
        got.iter()
            .find(|r| r.path == "/hook")
            .map(|r| r.body["action"].clone()),
        Some(json!("pause"))
    );
    drop(server);
}

#[test]
fn a_notifier_whose_url_variable_is_unset_is_skipped_not_failed() {
    let receiver = Receiver::start(0);
    let text = config_notifying(receiver.port).replace(
        "url_env: TEST_SLACK_URL",
        "url_env: STAGEGATE_TEST_UNSET_URL",
    );
    let server = Server::start(&text);
    let r = server.post(
        "/v1/rollouts/support-reply-v8/pause",
        Some(OPERATOR),
        &json!({"reason": "freeze"}),
    );
    assert_eq!(r.status, 200);
    receiver.wait_for(1);
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = server.get("/metrics", None).text;
        if metrics.contains(r#"stagegate_notifications_total{notifier="chat",outcome="skipped"} 1"#)
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        metrics.contains(r#"stagegate_notifications_total{notifier="chat",outcome="skipped"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"stagegate_notifications_total{notifier="chat",outcome="failed"} 0"#),
        "an unconfigured notifier is not a failing one: {metrics}"
    );
    assert!(
        server.log().contains("STAGEGATE_TEST_UNSET_URL is unset"),
        "warned at start: {}",
        server.log()
    );
    assert!(
        metrics.contains(r#"stagegate_notifications_total{notifier="chat",outcome="retried"} 0"#),
        "{metrics}"
    );
}

#[test]
fn pagerduty_is_triggered_by_an_automatic_containment_and_resolved_by_the_resume_and_teams_gets_a_card()
 {
    let receiver = Receiver::start(0);
    let port = receiver.port;
    let config = config("")
        .replace(
            "  - { name: hook, kind: webhook, url: \"http://127.0.0.1:9/hook\" }",
            &format!(
                "  - {{ name: pd, kind: pagerduty, url: \"http://127.0.0.1:{port}/pd\", routing_key_env: TEST_PD_KEY }}\n  - {{ name: teams, kind: teams, url: \"http://127.0.0.1:{port}/teams\" }}"
            ),
        )
        .replace("notify: [hook]", "notify: [pd, teams]");
    let server = Server::start_wrapped(&config, &["env", "TEST_PD_KEY=pd-integration-key"]);
    server.drive_cost_read_only("pd");
    let got = receiver.wait_for(2);
    let receipts = server.receipts();
    let contained = receipts
        .iter()
        .find(|r| r["action"] == "read_only")
        .expect("a read-only receipt");

    let trigger = got
        .iter()
        .find(|r| r.path == "/pd")
        .expect("pagerduty event");
    let e = &trigger.body;
    assert_eq!(
        e["routing_key"], "pd-integration-key",
        "read from the environment: {e}"
    );
    assert_eq!(e["event_action"], "trigger");
    assert_eq!(e["dedup_key"], "stagegate/support-reply-v8");
    assert_eq!(e["payload"]["severity"], "error");
    assert_eq!(e["payload"]["source"], "stagegate/support-reply");
    assert!(
        e["payload"]["summary"]
            .as_str()
            .is_some_and(|s| s.contains("support-reply-v8 read_only")),
        "{e}"
    );
    assert_eq!(
        e["payload"]["custom_details"]["receipt_id"],
        contained["id"]
    );
    assert_eq!(trigger.header("idempotency-key"), contained["id"].as_str());
    // The key is a secret: the stored outbox row never had it.
    let store = std::fs::read(server.dir.path().join("data/stagegate.redb")).unwrap_or_default();
    assert!(
        !String::from_utf8_lossy(&store).contains("pd-integration-key"),
        "the routing key was stored"
    );

    let card = got.iter().find(|r| r.path == "/teams").expect("teams card");
    let content = &card.body["attachments"][0];
    assert_eq!(
        content["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    assert_eq!(content["content"]["type"], "AdaptiveCard");
    let text = content["content"]["body"].to_string();
    assert!(
        text.contains("support-reply-v8 read_only") && text.contains("revenue-ops-lead"),
        "{text}"
    );

    // Out of containment through probation: only the last resume resolves the incident.
    wait_for_cooldown(&server);
    assert_eq!(resume(&server, true).status, 200);
    server.send_events(&healthy_read_only("pd-ro", 20));
    let r = resume(&server, true);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["after"]["state"], "progressing");
    let got = receiver.wait_for(3);
    let pd: Vec<_> = got.iter().filter(|g| g.path == "/pd").collect();
    assert_eq!(
        pd.len(),
        2,
        "a trigger and a resolve, nothing for the probation step"
    );
    let resolve = &pd[1].body;
    assert_eq!(resolve["event_action"], "resolve");
    assert_eq!(resolve["dedup_key"], "stagegate/support-reply-v8");
    assert_eq!(pd[1].header("idempotency-key"), r.body["id"].as_str());
}
