//! The packaging in `deploy/`, checked structurally (no Kubernetes, Docker or systemd runs on
//! this machine): the manifests reference each other consistently, the shipped configs pass
//! `stagegate check`, probes and ports match what the server serves.
#![allow(clippy::panic, reason = "test assertions")]

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::Value;

fn manifests() -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir("deploy/kubernetes").expect("deploy/kubernetes") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read");
        let doc: Value =
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for key in ["apiVersion", "kind"] {
            assert!(doc[key].is_string(), "{}: no {key}", path.display());
        }
        assert!(doc["metadata"]["name"].is_string(), "{}", path.display());
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        assert!(out.insert(kind, doc).is_none(), "one manifest per kind");
    }
    out
}

fn check(config: &str) {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("stagegate.yaml");
    std::fs::write(&path, config).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_stagegate"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run check");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_kubernetes_manifests_fit_together_and_carry_a_valid_config() {
    let m = manifests();
    for kind in [
        "ConfigMap",
        "Deployment",
        "Service",
        "PersistentVolumeClaim",
        "ServiceMonitor",
        "PrometheusRule",
    ] {
        assert!(m.contains_key(kind), "no {kind} manifest");
    }
    let config = m["ConfigMap"]["data"]["stagegate.yaml"]
        .as_str()
        .expect("the config in the ConfigMap");
    check(config);
    let plan: Value = serde_saphyr::from_str(config).expect("yaml");
    let port: u64 = plan["server"]["listen"]
        .as_str()
        .and_then(|l| l.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .expect("listen port");

    let pod = &m["Deployment"]["spec"]["template"];
    assert_eq!(
        m["Deployment"]["spec"]["selector"]["matchLabels"],
        pod["metadata"]["labels"]
    );
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["ports"][0]["containerPort"], port);
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    let args: Vec<&str> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let config_path = args
        .iter()
        .position(|a| *a == "--config")
        .and_then(|i| args.get(i + 1))
        .expect("--config PATH");
    let mounts = container["volumeMounts"].as_array().expect("mounts");
    let mounted = |name: &str| {
        mounts
            .iter()
            .find(|v| v["name"] == name)
            .and_then(|v| v["mountPath"].as_str())
            .unwrap_or_else(|| panic!("no {name} mount"))
            .to_string()
    };
    assert!(config_path.starts_with(&mounted("config")), "{config_path}");
    assert_eq!(
        plan["server"]["data_dir"].as_str(),
        Some(mounted("data").as_str())
    );
    let volumes = pod["spec"]["volumes"].as_array().expect("volumes");
    let volume = |name: &str| volumes.iter().find(|v| v["name"] == name).expect("volume");
    assert_eq!(
        volume("config")["configMap"]["name"],
        m["ConfigMap"]["metadata"]["name"]
    );
    assert_eq!(
        volume("data")["persistentVolumeClaim"]["claimName"],
        m["PersistentVolumeClaim"]["metadata"]["name"]
    );

    let service = &m["Service"]["spec"];
    assert_eq!(service["selector"], pod["metadata"]["labels"]);
    assert_eq!(service["ports"][0]["targetPort"], "http");
    let monitor = &m["ServiceMonitor"]["spec"];
    assert_eq!(
        monitor["selector"]["matchLabels"],
        m["Service"]["metadata"]["labels"]
    );
    assert_eq!(monitor["endpoints"][0]["port"], "http");
    assert_eq!(monitor["endpoints"][0]["path"], "/metrics");

    // The PrometheusRule carries exactly the rules `promtool` tests in config/alerts.yaml.
    let rules: Value =
        serde_saphyr::from_str(&std::fs::read_to_string("config/alerts.yaml").expect("alerts"))
            .expect("yaml");
    assert_eq!(m["PrometheusRule"]["spec"]["groups"], rules["groups"]);
}

#[test]
fn the_image_the_compose_file_and_the_systemd_unit_agree_with_the_binary() {
    let docker = std::fs::read_to_string("deploy/Dockerfile").expect("Dockerfile");
    for line in [
        "USER stagegate",
        "VOLUME /data",
        "EXPOSE 8080",
        "http://127.0.0.1:8080/healthz",
        "COPY config/stagegate.yaml /etc/stagegate/stagegate.yaml",
        r#"CMD ["serve", "--config", "/etc/stagegate/stagegate.yaml"]"#,
    ] {
        assert!(docker.contains(line), "Dockerfile lacks {line:?}");
    }
    assert!(
        docker.contains("FROM rust:") && docker.contains("AS build"),
        "multi-stage"
    );

    let compose: Value =
        serde_saphyr::from_str(&std::fs::read_to_string("deploy/compose.yaml").expect("compose"))
            .expect("compose is YAML");
    let services = compose["services"].as_object().expect("services");
    let names: Vec<&str> = services
        .values()
        .filter_map(|s| s["environment"]["STAGEGATE_REPLICA"].as_str())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(
        names.windows(2).all(|w| w[0] != w[1]),
        "distinct replica names"
    );
    check(&std::fs::read_to_string("deploy/replica.yaml").expect("replica config"));

    let unit = std::fs::read_to_string("deploy/stagegate.service").expect("unit");
    for line in [
        "ExecStart=/usr/local/bin/stagegate serve --config /etc/stagegate/stagegate.yaml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "KillSignal=SIGTERM",
        "StateDirectory=stagegate",
    ] {
        assert!(unit.contains(line), "the unit lacks {line:?}");
    }
}
