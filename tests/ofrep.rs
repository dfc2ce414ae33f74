//! OFREP: an OpenFeature-shaped request set against the real binary, checked against the protocol.

mod support;

use serde_json::json;
use support::*;

#[test]
fn single_flag_evaluation_follows_the_protocol() {
    let server = Server::start(&config(""));
    let eval = |key: &str, body: serde_json::Value| {
        server.post(
            &format!("/ofrep/v1/evaluate/flags/{key}"),
            Some(INGEST),
            &body,
        )
    };

    let r = eval(
        "support-reply",
        json!({"context": {"targetingKey": "agent-1", "team": "support-ops"}}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["key"], "support-reply");
    assert_eq!(
        (r.body["value"].as_str(), r.body["variant"].as_str()),
        (Some("v8"), Some("v8"))
    );
    assert_eq!(r.body["reason"], "SPLIT");
    assert_eq!(
        r.body["metadata"],
        json!({"mode": "full", "segment": "internal", "rollout": "support-reply-v8", "stage": "internal"})
    );
    for v in r.body["metadata"].as_object().expect("object").values() {
        assert!(
            v.is_string() || v.is_boolean() || v.is_number(),
            "metadata values are scalars"
        );
    }
    // The same decision as /v1/assign.
    let a = server.assign("agent-9", json!({"tier": "smb"}));
    let r = eval(
        "support-reply",
        json!({"context": {"targetingKey": "agent-9", "tier": "smb"}}),
    );
    assert_eq!(r.body["variant"], a["version"]);

    let r = eval("summarize", json!({"context": {"targetingKey": "doc-1"}}));
    assert_eq!(
        (r.body["variant"].as_str(), r.body["reason"].as_str()),
        (Some("s1"), Some("STATIC"))
    );

    let r = eval("support-reply", json!({"context": {"team": "support-ops"}}));
    assert_eq!(
        (r.status, r.body["errorCode"].as_str()),
        (400, Some("TARGETING_KEY_MISSING"))
    );
    assert_eq!(r.body["key"], "support-reply");
    let r = server.post_raw(
        "/ofrep/v1/evaluate/flags/support-reply",
        Some(INGEST),
        b"{not json".to_vec(),
    );
    assert_eq!(
        (r.status, r.body["errorCode"].as_str()),
        (400, Some("PARSE_ERROR"))
    );
    // Escaped strings, numbers and booleans are attributes; structured values are ignored.
    let r = server.post_raw(
        "/ofrep/v1/evaluate/flags/support-reply",
        Some(INGEST),
        br#"{"context": {"targetingKey": "agent\u002d1", "team": "support\u002dops", "n": 1.5, "ok": true, "nested": {"a": [1, {"b": null}]}, "list": [1, 2]}}"#.to_vec(),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        (
            r.body["variant"].as_str(),
            r.body["metadata"]["segment"].as_str()
        ),
        (Some("v8"), Some("internal")),
        "{}",
        r.text
    );
    for (body, code) in [
        (json!({"context": ["x"]}), "INVALID_CONTEXT"),
        (json!({"context": "x"}), "INVALID_CONTEXT"),
        (json!({"flags": {}}), "INVALID_CONTEXT"),
        (
            json!({"context": {"targetingKey": ""}}),
            "TARGETING_KEY_MISSING",
        ),
        (
            json!({"context": {"targetingKey": 7}}),
            "TARGETING_KEY_MISSING",
        ),
        (json!([1, 2]), "PARSE_ERROR"),
    ] {
        let r = eval("support-reply", body.clone());
        assert_eq!(
            (r.status, r.body["errorCode"].as_str()),
            (400, Some(code)),
            "{body}: {}",
            r.text
        );
    }
    let r = eval("ghost", json!({"context": {"targetingKey": "a"}}));
    assert_eq!(
        (r.status, r.body["errorCode"].as_str()),
        (404, Some("FLAG_NOT_FOUND"))
    );

    // X-API-Key works as well as Bearer; no token is 401.
    let client = reqwest::blocking::Client::new();
    let resp = client
        .post(format!(
            "{}/ofrep/v1/evaluate/flags/support-reply",
            server.base
        ))
        .header("X-API-Key", INGEST)
        .json(&json!({"context": {"targetingKey": "a"}}))
        .send()
        .expect("send");
    assert_eq!(resp.status().as_u16(), 200);
    let r = server.post(
        "/ofrep/v1/evaluate/flags/support-reply",
        None,
        &json!({"context": {"targetingKey": "a"}}),
    );
    assert_eq!(r.status, 401);
}

#[test]
fn bulk_evaluation_has_an_etag_and_answers_304() {
    let server = Server::start(&config(""));
    let client = reqwest::blocking::Client::new();
    let url = format!("{}/ofrep/v1/evaluate/flags", server.base);
    let ctx = json!({"context": {"targetingKey": "agent-1", "team": "support-ops"}});
    let resp = client
        .post(&url)
        .bearer_auth(INGEST)
        .json(&ctx)
        .send()
        .expect("send");
    assert_eq!(resp.status().as_u16(), 200);
    let etag = resp
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .expect("an ETag")
        .to_string();
    let body: serde_json::Value = resp.json().expect("json");
    let flags = body["flags"].as_array().cloned().unwrap_or_default();
    assert_eq!(flags.len(), 2);
    assert!(
        flags
            .iter()
            .any(|f| f["key"] == "support-reply" && f["variant"] == "v8")
    );

    let if_none_match = |etag: &str| {
        client
            .post(&url)
            .bearer_auth(INGEST)
            .header("If-None-Match", etag)
            .json(&ctx)
            .send()
            .expect("send")
    };
    assert_eq!(if_none_match(&etag).status().as_u16(), 304);

    // A state change changes the evaluations and so the ETag.
    let r = server.post(
        "/v1/rollouts/support-reply-v8/rollback",
        Some(OPERATOR),
        &json!({"reason": "test"}),
    );
    assert_eq!(r.status, 200);
    let resp = if_none_match(&etag);
    assert_eq!(resp.status().as_u16(), 200);
    let body: serde_json::Value = resp.json().expect("json");
    let flag = body["flags"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["key"] == "support-reply").cloned())
        .expect("flag");
    assert_eq!(
        (flag["variant"].as_str(), flag["reason"].as_str()),
        (Some("v7"), Some("TARGETING_MATCH"))
    );

    let resp = client
        .post(&url)
        .bearer_auth(INGEST)
        .json(&json!({"context": {}}))
        .send()
        .expect("send");
    assert_eq!(resp.status().as_u16(), 400);
    let body: serde_json::Value = resp.json().expect("json");
    assert_eq!(body["errorCode"], "TARGETING_KEY_MISSING");
}
