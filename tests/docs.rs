//! The repository is its own reference: every config key (from `stagegate schema`), every
//! metric the code registers and every HTTP route appears in `docs/`, and the schema accepts
//! the shipped configs' keys.
#![allow(clippy::panic, reason = "test assertions")]

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn schema() -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_stagegate"))
        .arg("schema")
        .output()
        .expect("run stagegate schema");
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).expect("the schema is JSON")
}

/// Every key path of the schema: `NAME` for a map's entries, `[]` for a list's items.
fn key_paths(schema: &Value) -> BTreeSet<String> {
    fn walk(node: &Value, defs: &Value, path: &str, depth: usize, out: &mut BTreeSet<String>) {
        if depth > 12 {
            return;
        }
        if let Some(r) = node["$ref"].as_str() {
            let name = r.rsplit('/').next().unwrap_or_default();
            walk(&defs[name], defs, path, depth + 1, out);
            return;
        }
        for alt in node["anyOf"].as_array().into_iter().flatten() {
            walk(alt, defs, path, depth + 1, out);
        }
        if node["items"].is_object() {
            walk(&node["items"], defs, &format!("{path}[]"), depth + 1, out);
        }
        if let Some(props) = node["properties"].as_object() {
            for (key, value) in props {
                let p = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                out.insert(p.clone());
                walk(value, defs, &p, depth + 1, out);
            }
        }
        if node["additionalProperties"].is_object() && !path.is_empty() {
            walk(
                &node["additionalProperties"],
                defs,
                &format!("{path}.NAME"),
                depth + 1,
                out,
            );
        }
    }
    let mut out = BTreeSet::new();
    walk(schema, &schema["$defs"], "", 0, &mut out);
    out
}

#[test]
fn every_config_key_is_in_the_configuration_reference() {
    let paths = key_paths(&schema());
    assert!(paths.len() > 90, "{}", paths.len());
    let doc = read("docs/configuration.md");
    let missing: Vec<&String> = paths
        .iter()
        .filter(|p| !doc.contains(&format!("`{p}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/configuration.md lacks {missing:#?}"
    );
}

#[test]
fn the_schema_knows_every_key_of_the_shipped_configs() {
    let paths = key_paths(&schema());
    fn keys(v: &Value, path: &str, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, child) in map {
                    // Maps keyed by names the config chooses.
                    let named = ["sources", "signals", "segments", "workflows"].contains(&path)
                        || path.ends_with(".traffic")
                        || path.ends_with(".match")
                        || path.ends_with("_labels");
                    let p = match (path.is_empty(), named) {
                        (true, _) => k.clone(),
                        (false, true) => format!("{path}.NAME"),
                        (false, false) => format!("{path}.{k}"),
                    };
                    if !(path.ends_with(".traffic")
                        || path.ends_with(".match")
                        || path.ends_with("_labels"))
                    {
                        out.push(p.clone());
                    }
                    keys(child, &p, out);
                }
            }
            Value::Array(items) => {
                for item in items {
                    keys(item, &format!("{path}[]"), out);
                }
            }
            _ => {}
        }
    }
    for file in [
        "config/stagegate.yaml",
        "config/examples/litellm-gateway.yaml",
    ] {
        let config: Value = serde_saphyr::from_str(&read(file)).expect("yaml");
        let mut found = Vec::new();
        keys(&config, "", &mut found);
        for key in found.iter().filter(|k| !k.ends_with(".NAME")) {
            assert!(paths.contains(key), "{file}: `{key}` is not in the schema");
        }
    }
}

#[test]
fn every_metric_and_route_is_documented() {
    let metrics_doc = read("docs/metrics.md");
    let code = read("src/serve/metrics.rs");
    let names: BTreeSet<&str> = code
        .split('"')
        .filter(|s| {
            s.starts_with("stagegate_") && s.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        })
        .collect();
    assert!(names.len() >= 20, "{names:?}");
    for name in &names {
        assert!(
            metrics_doc.contains(&format!("`{name}`")),
            "docs/metrics.md lacks {name}"
        );
    }
    let api_doc = read("docs/http-api.md");
    let routes = read("src/serve/api.rs");
    let mut found = 0;
    for piece in routes.split(".route(").skip(1) {
        let Some(path) = piece.split('"').nth(1) else {
            continue;
        };
        found += 1;
        assert!(api_doc.contains(path), "docs/http-api.md lacks {path}");
    }
    assert!(found >= 18, "{found} routes");
}
