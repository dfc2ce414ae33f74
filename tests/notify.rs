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
