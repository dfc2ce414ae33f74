//! The raw model: exactly the YAML's shape, with `deny_unknown_fields` and `Spanned` values so
//! every later problem still points at its line and column.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) server: RawServer,
    #[serde(default)]
    pub(super) auth: Option<Spanned<RawAuth>>,
    #[serde(default)]
    pub(super) notifiers: Vec<Spanned<RawNotifier>>,
    #[serde(default)]
    pub(super) sources: BTreeMap<String, Spanned<RawSource>>,
    #[serde(default)]
    pub(super) signals: BTreeMap<String, Spanned<RawSignal>>,
    #[serde(default)]
    pub(super) segments: BTreeMap<String, Spanned<RawSegment>>,
    #[serde(default)]
    pub(super) workflows: BTreeMap<String, Spanned<RawWorkflow>>,
    #[serde(default)]
    pub(super) rollouts: Vec<Spanned<RawRollout>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) listen: Option<Spanned<String>>,
    pub(super) data_dir: Option<String>,
    pub(super) tick: Option<Spanned<String>>,
    pub(super) dedupe_window: Option<Spanned<String>>,
    pub(super) max_body_bytes: Option<Spanned<u64>>,
    pub(super) max_inflight_body_bytes: Option<Spanned<u64>>,
    pub(super) max_connections: Option<Spanned<u64>>,
    pub(super) header_timeout: Option<Spanned<String>>,
    pub(super) idle_timeout: Option<Spanned<String>>,
    pub(super) retention: Option<Spanned<String>>,
    pub(super) store: Option<Spanned<RawStore>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    pub(super) kind: Spanned<String>,
    pub(super) url_env: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    #[serde(default)]
    pub(super) tokens: Vec<Spanned<RawToken>>,
    #[serde(default)]
    pub(super) open_assign: bool,
    #[serde(default)]
    pub(super) open: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSignal {
    pub(super) range: Option<Spanned<[f64; 2]>>,
    /// A metrics source's name: this signal's evidence comes from its queries.
    pub(super) source: Option<Spanned<String>>,
    pub(super) events: Option<Spanned<String>>,
    pub(super) total: Option<Spanned<String>>,
    pub(super) histogram: Option<Spanned<String>>,
    pub(super) sum: Option<Spanned<String>>,
    pub(super) count: Option<Spanned<String>>,
    pub(super) sum_squares: Option<Spanned<String>>,
    pub(super) variance: Option<Spanned<f64>>,
    pub(super) unit: Option<Spanned<f64>>,
    #[serde(default)]
    pub(super) segment_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) version_labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    pub(super) kind: Spanned<String>,
    pub(super) url: Option<Spanned<String>>,
    pub(super) url_env: Option<Spanned<String>>,
    pub(super) timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawToken {
    pub(super) name: String,
    pub(super) role: Spanned<String>,
    pub(super) token_env: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotifier {
    pub(super) name: String,
    pub(super) kind: Spanned<String>,
    pub(super) url: Option<String>,
    pub(super) url_env: Option<String>,
    pub(super) routing_key_env: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSegment {
    #[serde(default, rename = "match")]
    pub(super) matches: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWorkflow {
    pub(super) stable: Spanned<String>,
    pub(super) versions: Vec<String>,
    #[serde(default)]
    pub(super) guards: Vec<Spanned<RawGate>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRollout {
    pub(super) name: String,
    pub(super) workflow: Spanned<String>,
    pub(super) baseline: Spanned<String>,
    pub(super) candidate: Spanned<String>,
    pub(super) segments: Vec<Spanned<String>>,
    pub(super) stages: Vec<Spanned<RawStage>>,
    pub(super) confidence: Option<Spanned<f64>>,
    pub(super) max_narrows: Option<u32>,
    pub(super) bake: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) gates: Vec<Spanned<RawGate>>,
    pub(super) lane: Spanned<RawLane>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStage {
    pub(super) name: String,
    pub(super) traffic: BTreeMap<String, Spanned<f64>>,
    pub(super) min_duration: Option<Spanned<String>>,
    pub(super) min_samples: Option<u64>,
    pub(super) approval: Option<Spanned<String>>,
    /// Baseline share (percent) kept in every segment this stage would give 100 %.
    pub(super) holdout: Option<Spanned<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGate {
    pub(super) signal: Spanned<String>,
    pub(super) stat: Spanned<String>,
    pub(super) min: Option<f64>,
    pub(super) max: Option<f64>,
    pub(super) max_ratio: Option<Spanned<f64>>,
    pub(super) max_increase: Option<f64>,
    pub(super) max_drop: Option<f64>,
    pub(super) on_breach: Option<Spanned<RawBreach>>,
    pub(super) mode: Option<Spanned<String>>,
    pub(super) scope: Option<Spanned<String>>,
}

/// `on_breach`: an action's name, or `{ fallback: VERSION, mode: full | read_only }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawBreach {
    Name(String),
    Fallback(RawFallback),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFallback {
    pub(super) fallback: String,
    pub(super) mode: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLane {
    pub(super) owner: String,
    #[serde(default)]
    pub(super) affected_systems: Vec<String>,
    #[serde(default)]
    pub(super) notify: Vec<Spanned<String>>,
    pub(super) repair: String,
    #[serde(default)]
    pub(super) reenable: RawReenable,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReenable {
    #[serde(default)]
    pub(super) ack: bool,
    pub(super) cooldown: Option<Spanned<String>>,
    pub(super) healthy_read_only_samples: Option<u64>,
    #[serde(default)]
    pub(super) affected_reviewed: bool,
}
