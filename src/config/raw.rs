//! The raw model: exactly the YAML's shape, with `deny_unknown_fields` and `Spanned` values so
//! every later problem still points at its line and column.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    /// Where and how the server runs.
    #[serde(default)]
    pub(super) server: RawServer,
    /// Bearer tokens by role, read from the environment. Required unless `open: true`.
    #[serde(default)]
    #[schemars(with = "Option<RawAuth>")]
    pub(super) auth: Option<Spanned<RawAuth>>,
    /// Where a lane's notices go: webhook, slack, teams or pagerduty.
    #[serde(default)]
    #[schemars(with = "Vec<RawNotifier>")]
    pub(super) notifiers: Vec<Spanned<RawNotifier>>,
    /// Metrics backends gates may read evidence from (`kind: prometheus`).
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, RawSource>")]
    pub(super) sources: BTreeMap<String, Spanned<RawSource>>,
    /// Per signal: a plausible `range`, or a metrics `source` and its queries.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, RawSignal>")]
    pub(super) signals: BTreeMap<String, Spanned<RawSignal>>,
    /// Named populations a rollout stages traffic over; first match wins.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, RawSegment>")]
    pub(super) segments: BTreeMap<String, Spanned<RawSegment>>,
    /// Each workflow's stable version and its declared versions.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, RawWorkflow>")]
    pub(super) workflows: BTreeMap<String, Spanned<RawWorkflow>>,
    /// One rollout per workflow: arms, segments, stages, gates and lane.
    #[serde(default)]
    #[schemars(with = "Vec<RawRollout>")]
    pub(super) rollouts: Vec<Spanned<RawRollout>>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    /// host:port the HTTP API listens on. Default 127.0.0.1:8080.
    #[schemars(with = "Option<String>")]
    pub(super) listen: Option<Spanned<String>>,
    /// Directory of the embedded store (created if missing). Default ./data.
    pub(super) data_dir: Option<String>,
    /// How often every rollout is evaluated (and sources queried). Default 5s.
    #[schemars(with = "Option<String>")]
    pub(super) tick: Option<Spanned<String>>,
    /// How long event ids are remembered for idempotent ingestion. Default 24h.
    #[schemars(with = "Option<String>")]
    pub(super) dedupe_window: Option<Spanned<String>>,
    /// Largest request body, bytes (at least 1024). Default 4194304.
    #[schemars(with = "Option<u64>")]
    pub(super) max_body_bytes: Option<Spanned<u64>>,
    /// Request-body bytes all in-flight requests may hold at once. Default 64 MiB.
    #[schemars(with = "Option<u64>")]
    pub(super) max_inflight_body_bytes: Option<Spanned<u64>>,
    /// The embedded store's page cache, bytes (at least 1 MiB): what the store may hold in
    /// memory, whatever the number of stored events. Default 64 MiB.
    #[schemars(with = "Option<u64>")]
    pub(super) store_cache_bytes: Option<Spanned<u64>>,
    /// Open connections at most (at least 16; lowered to fit the descriptor limit). Default 4096.
    #[schemars(with = "Option<u64>")]
    pub(super) max_connections: Option<Spanned<u64>>,
    /// A request's headers must arrive within this (at least 100ms). Default 10s.
    #[schemars(with = "Option<String>")]
    pub(super) header_timeout: Option<Spanned<String>>,
    /// A kept-alive connection idle this long is closed (at least 100ms). Default 60s.
    #[schemars(with = "Option<String>")]
    pub(super) idle_timeout: Option<Spanned<String>>,
    /// How long raw events are kept once checkpoints cover them (at least 1s). Default 7d.
    #[schemars(with = "Option<String>")]
    pub(super) retention: Option<Spanned<String>>,
    /// Where durable state lives: `{kind: embedded}` (default) or `{kind: postgres, url_env: VAR}`.
    #[schemars(with = "Option<RawStore>")]
    pub(super) store: Option<Spanned<RawStore>>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    /// `embedded` (redb in data_dir, one process) or `postgres` (shared by replicas).
    #[schemars(with = "String")]
    pub(super) kind: Spanned<String>,
    /// With kind postgres: the environment variable holding the connection URL.
    #[schemars(with = "Option<String>")]
    pub(super) url_env: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    /// Each token: a name, a role and the environment variable holding its secret.
    #[serde(default)]
    #[schemars(with = "Vec<RawToken>")]
    pub(super) tokens: Vec<Spanned<RawToken>>,
    /// `/v1/assign` and OFREP answer without a token. Default false.
    #[serde(default)]
    pub(super) open_assign: bool,
    /// Every endpoint answers without a token (a config without tokens must say so). Default false.
    #[serde(default)]
    pub(super) open: bool,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSignal {
    /// [low, high]: values outside are rejected at ingestion (quality: narrower than 0..1 only; rates have none).
    #[schemars(with = "Option<[f64; 2]>")]
    pub(super) range: Option<Spanned<[f64; 2]>>,
    /// A metrics source's name: this signal's evidence comes from its queries.
    #[schemars(with = "Option<String>")]
    pub(super) source: Option<Spanned<String>>,
    /// Rate signals: PromQL selector of the counter of hits (fallbacks, rejects).
    #[schemars(with = "Option<String>")]
    pub(super) events: Option<Spanned<String>>,
    /// Rate signals: PromQL selector of the counter of tasks.
    #[schemars(with = "Option<String>")]
    pub(super) total: Option<Spanned<String>>,
    /// Quantile gates: PromQL selector of a histogram's `_bucket` counters.
    #[schemars(with = "Option<String>")]
    pub(super) histogram: Option<Spanned<String>>,
    /// Mean gates: PromQL selector of the counter of summed values.
    #[schemars(with = "Option<String>")]
    pub(super) sum: Option<Spanned<String>>,
    /// Mean gates: PromQL selector of the counter of tasks.
    #[schemars(with = "Option<String>")]
    pub(super) count: Option<Spanned<String>>,
    /// Mean gates: PromQL selector of a counter of squared values (enables relative checks).
    #[schemars(with = "Option<String>")]
    pub(super) sum_squares: Option<Spanned<String>>,
    /// Mean gates: an upper bound on one task's variance, in the signal's unit squared (enables relative checks).
    #[schemars(with = "Option<f64>")]
    pub(super) variance: Option<Spanned<f64>>,
    /// Multiplies the source's values and `le` bounds into the signal's unit (1000: seconds to ms). Default 1.
    #[schemars(with = "Option<f64>")]
    pub(super) unit: Option<Spanned<f64>>,
    /// The label value `{{segment}}` stands for, per segment. Default: the segment's name.
    #[serde(default)]
    pub(super) segment_labels: BTreeMap<String, String>,
    /// The label value `{{version}}` stands for, per version. Default: the version's name.
    #[serde(default)]
    pub(super) version_labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    /// `prometheus`.
    #[schemars(with = "String")]
    pub(super) kind: Spanned<String>,
    /// Base URL, e.g. http://127.0.0.1:9090 (exactly one of url and url_env).
    #[schemars(with = "Option<String>")]
    pub(super) url: Option<Spanned<String>>,
    /// The environment variable holding the base URL.
    #[schemars(with = "Option<String>")]
    pub(super) url_env: Option<Spanned<String>>,
    /// Each query's deadline (100ms to 60s). Default 5s.
    #[schemars(with = "Option<String>")]
    pub(super) timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawToken {
    /// Who the token is, in receipts (`actor`).
    pub(super) name: String,
    /// admin, operator, ingest, or viewer (alias read).
    #[schemars(with = "String")]
    pub(super) role: Spanned<String>,
    /// The environment variable holding the secret; an unset one disables the token.
    pub(super) token_env: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotifier {
    /// Referenced from a lane's `notify`.
    pub(super) name: String,
    /// webhook, slack, teams or pagerduty.
    #[schemars(with = "String")]
    pub(super) kind: Spanned<String>,
    /// Where to post (exactly one of url and url_env; pagerduty defaults to Events API v2).
    pub(super) url: Option<String>,
    /// The environment variable holding the URL; unset: notices are skipped, with a warning.
    pub(super) url_env: Option<String>,
    /// PagerDuty only: the environment variable holding the integration key.
    pub(super) routing_key_env: Option<String>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSegment {
    /// Attribute → accepted values; every attribute must match. Empty: matches every task.
    #[serde(default, rename = "match")]
    pub(super) matches: BTreeMap<String, Vec<String>>,
    /// Expected tasks per hour in this segment, for `check`'s warning about unreachable `min_samples`.
    pub(super) tasks_per_hour: Option<f64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWorkflow {
    /// The version every task gets outside a rollout.
    #[schemars(with = "String")]
    pub(super) stable: Spanned<String>,
    /// Every version tasks may report.
    pub(super) versions: Vec<String>,
    /// Gates on a workflow without a rollout: a breach switches it to read-only.
    #[serde(default)]
    #[schemars(with = "Vec<RawGate>")]
    pub(super) guards: Vec<Spanned<RawGate>>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRollout {
    /// The rollout's name (1 to 64 of letters, digits, - _ .).
    pub(super) name: String,
    /// A workflow under `workflows:`.
    #[schemars(with = "String")]
    pub(super) workflow: Spanned<String>,
    /// The version compared against.
    #[schemars(with = "String")]
    pub(super) baseline: Spanned<String>,
    /// The new version.
    #[schemars(with = "String")]
    pub(super) candidate: Spanned<String>,
    /// Segments in match order.
    #[schemars(with = "Vec<String>")]
    pub(super) segments: Vec<Spanned<String>>,
    /// The ladder: traffic per segment only grows from stage to stage.
    #[schemars(with = "Vec<RawStage>")]
    pub(super) stages: Vec<Spanned<RawStage>>,
    /// How sure a verdict must be before it acts, over all checks and segments (0.5 to 1, exclusive). Default 0.95.
    #[schemars(with = "Option<f64>")]
    pub(super) confidence: Option<Spanned<f64>>,
    /// A further breach after this many narrows becomes a rollback. Default 2.
    pub(super) max_narrows: Option<u32>,
    /// After promotion, the gates keep watching this long. Default 24h.
    #[schemars(with = "Option<String>")]
    pub(super) bake: Option<Spanned<String>>,
    /// Thresholds on signals; each gate is named SIGNAL_STAT.
    #[serde(default)]
    #[schemars(with = "Vec<RawGate>")]
    pub(super) gates: Vec<Spanned<RawGate>>,
    /// Who owns a containment, who hears of it, and what re-enabling needs.
    #[schemars(with = "RawLane")]
    pub(super) lane: Spanned<RawLane>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStage {
    /// The stage's name.
    pub(super) name: String,
    /// Candidate share per segment, percent (0 to 100).
    #[schemars(with = "BTreeMap<String, f64>")]
    pub(super) traffic: BTreeMap<String, Spanned<f64>>,
    /// The stage lasts at least this long. Default 0s.
    #[schemars(with = "Option<String>")]
    pub(super) min_duration: Option<Spanned<String>>,
    /// Candidate tasks needed before expanding. Default 0.
    pub(super) min_samples: Option<u64>,
    /// `manual`: entering this stage needs `promote`. Default auto.
    #[schemars(with = "Option<String>")]
    pub(super) approval: Option<Spanned<String>>,
    /// Baseline share (percent) kept in every segment this stage would give 100 %.
    #[schemars(with = "Option<f64>")]
    pub(super) holdout: Option<Spanned<f64>>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGate {
    /// quality, latency_ms, cost_usd, fallback, review, or a custom snake_case name.
    #[schemars(with = "String")]
    pub(super) signal: Spanned<String>,
    /// mean, p50..p99, rate (fallback) or reject_rate (review).
    #[schemars(with = "String")]
    pub(super) stat: Spanned<String>,
    /// The statistic must stay at least this.
    pub(super) min: Option<f64>,
    /// The statistic must stay at most this.
    pub(super) max: Option<f64>,
    /// Candidate at most this multiple of the baseline.
    #[schemars(with = "Option<f64>")]
    pub(super) max_ratio: Option<Spanned<f64>>,
    /// Candidate at most this much above the baseline.
    pub(super) max_increase: Option<f64>,
    /// Candidate at most this much below the baseline.
    pub(super) max_drop: Option<f64>,
    /// What a breach does (required on rollout gates; guards always read_only): hold, narrow, read_only, rollback, pause, or {fallback: VERSION, mode: full|read_only}.
    #[schemars(with = "Option<RawBreach>")]
    pub(super) on_breach: Option<Spanned<RawBreach>>,
    /// `observe`: evaluated and receipted as "would have acted", never acts. Default enforce.
    #[schemars(with = "Option<String>")]
    pub(super) mode: Option<Spanned<String>>,
    /// `segment` (act on the breaching segment) or `rollout`. Default segment.
    #[schemars(with = "Option<String>")]
    pub(super) scope: Option<Spanned<String>>,
}

/// `on_breach`: an action's name, or `{ fallback: VERSION, mode: full | read_only }`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub(super) enum RawBreach {
    Name(String),
    Fallback(RawFallback),
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFallback {
    /// A declared version of the same workflow that serves the candidate's share.
    pub(super) fallback: String,
    /// full or read_only. Default full.
    pub(super) mode: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLane {
    /// Who answers for a containment.
    pub(super) owner: String,
    /// Systems a bad candidate may have written to.
    #[serde(default)]
    pub(super) affected_systems: Vec<String>,
    /// Notifier names.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub(super) notify: Vec<Spanned<String>>,
    /// How to repair what the candidate did.
    pub(super) repair: String,
    /// What a resume out of containment needs.
    #[serde(default)]
    pub(super) reenable: RawReenable,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReenable {
    /// The resume must pass --ack (an acknowledgement).
    #[serde(default)]
    pub(super) ack: bool,
    /// How long after the containment a resume may begin. Default 0s.
    #[schemars(with = "Option<String>")]
    pub(super) cooldown: Option<Spanned<String>>,
    /// Healthy read-only candidate tasks in probation before progressing. Default 0.
    pub(super) healthy_read_only_samples: Option<u64>,
    /// Every affected item must be tagged safe or wrong before progressing.
    #[serde(default)]
    pub(super) affected_reviewed: bool,
}
