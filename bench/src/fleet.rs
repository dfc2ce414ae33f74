//! The fleet every scale benchmark uses: a config of N rollouts × 3 segments × 4 gates, one
//! workflow each, and the events that give every arm of every segment evidence. Shared by the
//! A/B driver (`stagegate-bench`) and `benches/tick.rs` (which `include!`s this file), so both
//! measure the same shape.

use std::fmt::Write as _;

/// Tokens the fleet's config reads from these environment variables.
pub const ADMIN_TOKEN_ENV: &str = "BENCH_ADMIN_TOKEN";
pub const INGEST_TOKEN_ENV: &str = "BENCH_INGEST_TOKEN";

/// A config of `rollouts` rollouts (`r0`… on workflows `w0`…, baseline `a`, candidate `b`),
/// each in its first stage with traffic in all three segments, `min_samples` high enough that
/// no rollout expands while it is measured. `server` is the `server:` mapping's body.
pub fn config(rollouts: usize, server: &str) -> String {
    let mut out = format!(
        "server: {{ {server} }}\nauth:\n  tokens:\n    - {{ name: admin, role: admin, token_env: {ADMIN_TOKEN_ENV} }}\n    - {{ name: apps, role: ingest, token_env: {INGEST_TOKEN_ENV} }}\nsegments:\n  internal: {{ match: {{ team: [ops] }} }}\n  enterprise: {{ match: {{ tier: [enterprise] }} }}\n  everyone: {{}}\nworkflows:\n"
    );
    for i in 0..rollouts {
        let _ = writeln!(out, "  w{i}: {{ stable: a, versions: [a, b] }}");
    }
    out.push_str("rollouts:\n");
    for i in 0..rollouts {
        let _ = write!(
            out,
            r#"  - name: r{i}
    workflow: w{i}
    baseline: a
    candidate: b
    segments: [internal, enterprise, everyone]
    stages:
      - {{ name: s1, traffic: {{ internal: 50, enterprise: 10, everyone: 5 }}, min_samples: 100000 }}
      - {{ name: s2, traffic: {{ internal: 100, enterprise: 100, everyone: 100 }}, approval: manual }}
    gates:
      - {{ signal: quality,    stat: mean, min: 0.80, max_drop: 0.03, on_breach: rollback }}
      - {{ signal: latency_ms, stat: p95,  max: 4000, max_ratio: 1.25, on_breach: narrow }}
      - {{ signal: cost_usd,   stat: mean, max: 0.05, max_ratio: 1.5, on_breach: read_only }}
      - {{ signal: fallback,   stat: rate, max: 0.05, max_increase: 0.02, on_breach: narrow }}
    lane: {{ owner: o, repair: r }}
"#
        );
    }
    out
}

/// The attributes that put a task in segment `segment` (0 internal, 1 enterprise, 2 everyone).
pub fn segment_attributes(segment: usize) -> &'static str {
    match segment {
        0 => r#"{"team":"ops"}"#,
        1 => r#"{"tier":"enterprise"}"#,
        _ => r#"{"tier":"smb"}"#,
    }
}

/// Healthy task event number `k` of rollout `rollout`'s `segment` on `version` (`a` or `b`), as
/// JSON: quality around 0.9, latency around 1.1 s, cheap, a 2.5 % fallback rate.
pub fn event(id: &str, rollout: usize, segment: usize, version: &str, k: u64) -> String {
    format!(
        r#"{{"event_id":"{id}","workflow":"w{rollout}","version":"{version}","subject":"s{k}","attributes":{},"quality":{},"latency_ms":{},"cost_usd":0.01,"fallback":{}}}"#,
        segment_attributes(segment),
        0.85 + (k % 10) as f64 / 100.0,
        900.0 + (k % 60) as f64 * 7.0,
        k % 40 == 0,
    )
}
