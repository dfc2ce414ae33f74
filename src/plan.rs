//! The validated plan: the types every layer reads — rollouts, stages, segments, gates and
//! their checks, the actions a breach may take, lanes, auth and server settings. The config
//! layer builds a [`Plan`] from YAML; the decision core and the shell only read it. This
//! module holds data and the small rules that belong to it, and imports nothing of ours but
//! the clock's units.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::core::clock::Millis;

/// A validated configuration with every reference resolved.
#[derive(Debug, Clone)]
pub struct Plan {
    pub source: PathBuf,
    /// sha256 of the file's bytes, hex; stamped on every receipt.
    pub hash: String,
    pub server: ServerPlan,
    pub auth: AuthPlan,
    pub notifiers: Vec<NotifierPlan>,
    /// Metrics backends gates may take evidence from instead of pushed events.
    pub sources: Vec<SourcePlan>,
    /// Plausible value ranges per signal; an event outside its signal's range is rejected.
    pub ranges: SignalRanges,
    pub workflows: Vec<WorkflowPlan>,
    pub rollouts: Vec<RolloutPlan>,
}

/// `server.store_cache_bytes` unless set: redb's own default (1 GiB) made RSS grow with every
/// stored event.
pub const DEFAULT_STORE_CACHE_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct ServerPlan {
    pub listen: String,
    pub data_dir: PathBuf,
    pub tick: Millis,
    pub dedupe_window: Millis,
    pub max_body_bytes: usize,
    /// Request body bytes all in-flight requests may hold at once.
    pub max_inflight_body_bytes: usize,
    /// The embedded store's page cache, bytes.
    pub store_cache_bytes: usize,
    /// Open connections at most (lowered further to fit the process's file-descriptor limit).
    pub max_connections: usize,
    /// A request's headers must arrive within this time of the connection (or the previous
    /// response) being ready for them.
    pub header_timeout: Millis,
    /// A kept-alive connection with no request for this long is closed.
    pub idle_timeout: Millis,
    /// How long raw events are kept once evidence checkpoints cover them.
    pub retention: Millis,
    pub store: StorePlan,
}

/// Where durable state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorePlan {
    /// redb in `data_dir`: one process.
    Embedded,
    /// A PostgreSQL database shared by any number of replicas, one of which decides; its
    /// connection URL is read from the environment variable `url_env`.
    Postgres { url_env: String },
}

impl fmt::Display for StorePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorePlan::Embedded => f.write_str("embedded"),
            StorePlan::Postgres { url_env } => write!(f, "postgres (url from ${url_env})"),
        }
    }
}

/// Plausible value ranges per signal. Built-in defaults apply to signals the config does not
/// name; a value outside its range is rejected at ingestion, so one absurd value cannot swamp a
/// statistic.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalRanges {
    overrides: BTreeMap<String, (f64, f64)>,
    /// The ranges of `quality`, `latency_ms` and `cost_usd`, resolved: every event checks
    /// them, without a lookup by name.
    numeric: [(f64, f64); 3],
}

/// How long gates keep watching after promotion unless a rollout says otherwise.
pub const DEFAULT_BAKE: Millis = 24 * 3_600_000;

/// Longest name (rollout, workflow, version, segment, notifier, token) in bytes.
pub const MAX_NAME: usize = 64;

/// Largest magnitude a range bound may have: squares and sums of values stay finite in f64.
pub const MAX_SIGNAL_MAGNITUDE: f64 = 1e12;

impl SignalRanges {
    /// The default range of a signal (rates are booleans and have none).
    pub fn default_for(signal: &Signal) -> (f64, f64) {
        match signal {
            Signal::Quality => (0.0, 1.0),
            // One hour.
            Signal::LatencyMs => (0.0, 3_600_000.0),
            Signal::CostUsd => (0.0, 1_000.0),
            Signal::Fallback | Signal::Review => (0.0, 1.0),
            Signal::Custom(_) => (-1e9, 1e9),
        }
    }

    /// The ranges the config sets (by signal name); the others keep their defaults.
    pub fn new(overrides: BTreeMap<String, (f64, f64)>) -> SignalRanges {
        let resolve = |signal: Signal| {
            overrides
                .get(signal.name())
                .copied()
                .unwrap_or_else(|| SignalRanges::default_for(&signal))
        };
        let numeric = [
            resolve(Signal::Quality),
            resolve(Signal::LatencyMs),
            resolve(Signal::CostUsd),
        ];
        SignalRanges { overrides, numeric }
    }

    pub fn range(&self, signal: &Signal) -> (f64, f64) {
        match signal {
            Signal::Quality => self.numeric[0],
            Signal::LatencyMs => self.numeric[1],
            Signal::CostUsd => self.numeric[2],
            _ => self.named_range(signal.name(), signal),
        }
    }

    fn named_range(&self, name: &str, signal: &Signal) -> (f64, f64) {
        self.overrides
            .get(name)
            .copied()
            .unwrap_or_else(|| SignalRanges::default_for(signal))
    }

    /// Checks one observed value; the error says which range it broke.
    pub fn check(&self, signal: &Signal, value: f64) -> Result<(), String> {
        Self::within(signal.name(), self.range(signal), value)
    }

    /// Checks the `quality`, `latency_ms` and `cost_usd` an event reports, in that order.
    pub fn check_numeric(&self, values: [Option<f64>; 3]) -> Result<(), String> {
        const NUMERIC: [Signal; 3] = [Signal::Quality, Signal::LatencyMs, Signal::CostUsd];
        for ((value, &range), signal) in values.into_iter().zip(&self.numeric).zip(&NUMERIC) {
            if let Some(x) = value {
                Self::within(signal.name(), range, x)?;
            }
        }
        Ok(())
    }

    /// [`SignalRanges::check`] of a custom signal by its name, as an event reports it.
    pub fn check_custom(&self, name: &str, value: f64) -> Result<(), String> {
        const CUSTOM: Signal = Signal::Custom(String::new());
        Self::within(name, self.named_range(name, &CUSTOM), value)
    }

    #[inline]
    fn within(name: &str, (lo, hi): (f64, f64), value: f64) -> Result<(), String> {
        if value.is_finite() && (lo..=hi).contains(&value) {
            Ok(())
        } else {
            Err(Self::outside(name, (lo, hi), value))
        }
    }

    #[cold]
    fn outside(name: &str, (lo, hi): (f64, f64), value: f64) -> String {
        format!(
            "`{name}` {value} is outside its plausible range {lo}..{hi} (set `signals.{name}.range` to change it)"
        )
    }
}

/// Who may call what.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Read,
    Ingest,
    Operator,
    Admin,
}

impl Role {
    pub fn parse(text: &str) -> Option<Role> {
        Some(match text {
            "read" | "viewer" => Role::Read,
            "ingest" => Role::Ingest,
            "operator" => Role::Operator,
            "admin" => Role::Admin,
            _ => return None,
        })
    }

    /// Whether a token of this role may act where `needed` is required.
    /// admin ⊇ operator ⊇ read; ingest ⊇ read; admin ⊇ ingest.
    pub fn allows(self, needed: Role) -> bool {
        match needed {
            Role::Read => true,
            Role::Ingest => matches!(self, Role::Ingest | Role::Admin),
            Role::Operator => matches!(self, Role::Operator | Role::Admin),
            Role::Admin => self == Role::Admin,
        }
    }
}

#[derive(Debug, Clone)]
pub struct TokenPlan {
    pub name: String,
    pub role: Role,
    pub token_env: String,
}

#[derive(Debug, Clone, Default)]
pub struct AuthPlan {
    /// `None` means `auth: { open: true }`: every endpoint is open (development only).
    pub tokens: Option<Vec<TokenPlan>>,
    pub open_assign: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifierKind {
    Webhook,
    Slack,
    /// PagerDuty Events API v2: triggers on automatic containments, resolves on the resume
    /// out of them.
    #[serde(rename = "pagerduty")]
    PagerDuty,
    /// Microsoft Teams (a Workflows or incoming webhook): an Adaptive Card.
    Teams,
}

#[derive(Debug, Clone)]
pub struct NotifierPlan {
    pub name: String,
    pub kind: NotifierKind,
    pub url: Option<String>,
    pub url_env: Option<String>,
    /// PagerDuty's integration key, read from this variable at delivery (never stored).
    pub routing_key_env: Option<String>,
}

/// Where PagerDuty's Events API v2 takes events unless a notifier names another URL.
pub const PAGERDUTY_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// A metrics backend (`sources.NAME`): only Prometheus's HTTP query API so far.
#[derive(Debug, Clone, PartialEq)]
pub struct SourcePlan {
    pub name: String,
    pub url: SourceUrl,
    /// Each query's deadline; a query past it is a source error (its gates inconclusive).
    pub timeout: Millis,
}

/// A source's base URL, written in the config or read from the environment when used.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceUrl {
    Literal(String),
    Env(String),
}

/// Where one signal's evidence comes from when a metrics source, not `/v1/events`, has it
/// (`signals.SIGNAL.source`). Each query is a PromQL instant-vector selector with templates
/// (`{{version}}`, `{{segment}}`, `{{rollout}}`, `{{workflow}}`); stagegate wraps it in
/// `increase(…[since the epoch began])` and sums the series.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalSource {
    pub signal: Signal,
    pub source: String,
    pub query: SourceQuery,
    /// Multiplies the source's values (`1000` turns seconds into `latency_ms`).
    pub unit: f64,
    /// The label value `{{segment}}` stands for, per segment (default: the segment's name).
    pub segment_labels: BTreeMap<String, String>,
    /// The label value `{{version}}` stands for, per version (default: the version's name).
    pub version_labels: BTreeMap<String, String>,
}

/// The shape of a signal's evidence at a source.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceQuery {
    /// A rate: counters of hits (`events`) out of trials (`total`).
    Counts { events: String, total: String },
    /// A quantile: a histogram's `_bucket` counters (`le` label).
    Histogram { buckets: String },
    /// A mean: `_sum` and `_count` counters, with a `sum_squares` counter or a declared
    /// per-task `variance` bound for relative checks.
    Sums {
        sum: String,
        count: String,
        sum_squares: Option<String>,
        variance: Option<f64>,
    },
}

impl SourceQuery {
    /// `(key, selector)` of each query, in a fixed order.
    pub fn selectors(&self) -> Vec<(&'static str, &str)> {
        match self {
            SourceQuery::Counts { events, total } => vec![("events", events), ("total", total)],
            SourceQuery::Histogram { buckets } => vec![("histogram", buckets)],
            SourceQuery::Sums {
                sum,
                count,
                sum_squares,
                ..
            } => {
                let mut v = vec![("sum", sum.as_str()), ("count", count.as_str())];
                if let Some(sq) = sum_squares {
                    v.push(("sum_squares", sq));
                }
                v
            }
        }
    }
}

impl SignalSource {
    /// The policy term: what the evidence means, so a change restarts it.
    pub fn describe(&self) -> String {
        let queries: Vec<String> = self
            .query
            .selectors()
            .iter()
            .map(|(k, q)| format!("{k} {q}"))
            .collect();
        let mut out = format!(
            "{}: {}; unit {}",
            self.source,
            queries.join(", "),
            self.unit
        );
        if let SourceQuery::Sums {
            variance: Some(v), ..
        } = &self.query
        {
            out.push_str(&format!("; variance {v}"));
        }
        for (what, map) in [
            ("segment", &self.segment_labels),
            ("version", &self.version_labels),
        ] {
            if !map.is_empty() {
                let pairs: Vec<String> = map.iter().map(|(k, v)| format!("{k}={v}")).collect();
                out.push_str(&format!("; {what} labels {}", pairs.join(", ")));
            }
        }
        out
    }
}

/// The names a query may use as `{{name}}`.
pub const TEMPLATE_VARS: [&str; 4] = ["version", "segment", "rollout", "workflow"];

/// Longest query template, in bytes.
const MAX_TEMPLATE: usize = 4096;

/// Checks a query template: its `{{…}}` names are known and it tells the versions apart.
pub fn check_template(text: &str) -> Result<(), String> {
    if text.trim().is_empty() || text.len() > MAX_TEMPLATE {
        return Err(format!(
            "expected a PromQL selector of 1 to {MAX_TEMPLATE} bytes, e.g. gateway_requests_total{{model=\"{{{{version}}}}\"}}"
        ));
    }
    let mut rest = text;
    let mut has_version = false;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err("a `{{` without its `}}`".into());
        };
        let name = after[..end].trim();
        if !TEMPLATE_VARS.contains(&name) {
            return Err(format!(
                "unknown template `{{{{{name}}}}}`; expected one of {}",
                TEMPLATE_VARS
                    .iter()
                    .map(|v| format!("{{{{{v}}}}}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        has_version |= name == "version";
        rest = &after[end + 2..];
    }
    if !has_version {
        return Err("the query must tell the baseline and the candidate apart: put `{{version}}` in a label matcher, e.g. {model=\"{{version}}\"}".into());
    }
    Ok(())
}

/// A named population: every listed attribute must hold one of its values.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub name: String,
    pub matches: Vec<(String, Vec<String>)>,
    /// Expected tasks per hour, declared for `check` (never used to decide).
    pub tasks_per_hour: Option<f64>,
}

impl Segment {
    /// Whether attributes (looked up by `get`) fall in this segment.
    pub fn matches<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.matches
            .iter()
            .all(|(key, values)| get(key).is_some_and(|v| values.iter().any(|x| x == v)))
    }
}

#[derive(Debug, Clone)]
pub struct WorkflowPlan {
    pub name: String,
    pub stable: String,
    pub versions: Vec<String>,
    /// Absolute gates on the stable version; a breach switches the workflow to read-only.
    pub guards: Vec<GateSpec>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StagePlan {
    pub name: String,
    /// Candidate share in basis points (0..=10 000), one per rollout segment, in segment order.
    pub weights_bps: Vec<u16>,
    pub min_duration: Millis,
    pub min_samples: u64,
    pub manual_approval: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReenablePlan {
    pub ack: bool,
    pub cooldown: Millis,
    pub healthy_read_only_samples: u64,
    /// Leaving probation needs every affected item of the containment tagged `safe` or `wrong`.
    pub affected_reviewed: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LanePlan {
    pub owner: String,
    pub affected_systems: Vec<String>,
    pub notify: Vec<String>,
    pub repair: String,
    pub reenable: ReenablePlan,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RolloutPlan {
    pub name: String,
    pub workflow: String,
    pub baseline: String,
    pub candidate: String,
    /// In match order: first match wins.
    pub segments: Vec<Segment>,
    pub stages: Vec<StagePlan>,
    pub confidence: f64,
    pub max_narrows: u32,
    /// After promotion, the gates keep watching the new stable version this long (absolute
    /// limits decide: the last stage leaves the baseline no traffic); a breach acts.
    pub bake: Millis,
    pub gates: Vec<GateSpec>,
    pub lane: LanePlan,
    /// The metrics sources of the signals its gates read (the others come from pushed events).
    pub sourced: Vec<SignalSource>,
}

impl RolloutPlan {
    /// Where `signal`'s evidence comes from, when a metrics source has it.
    pub fn source_of(&self, signal: &Signal) -> Option<&SignalSource> {
        self.sourced.iter().find(|s| &s.signal == signal)
    }

    /// Whether the gate named `gate` is observe-only.
    pub fn observes(&self, gate: &str) -> bool {
        self.gates.iter().any(|g| g.name == gate && g.observe)
    }

    /// Samples per arm at which the sequential tests are tuned to be tightest. Fixed for the
    /// life of a rollout (changing it after seeing data would void the guarantee).
    pub fn design_samples(&self) -> f64 {
        let most = self.stages.iter().map(|s| s.min_samples).max().unwrap_or(0);
        most.max(100) as f64
    }

    /// The share of the error budget each single check gets: Bonferroni over every check of
    /// every gate in every segment.
    pub fn alpha_per_check(&self) -> f64 {
        let checks: usize = self.gates.iter().map(|g| g.checks.len()).sum();
        let cells = (checks.max(1) * self.segments.len().max(1)) as f64;
        (1.0 - self.confidence) / cells
    }

    /// The rollout's policy as readable `key → value` terms. Stored with the rollout's state,
    /// so a reload or a restart can say exactly what changed (see [`policy_diff`]).
    pub fn policy_terms(&self) -> BTreeMap<String, String> {
        let mut t = BTreeMap::new();
        t.insert("workflow".into(), self.workflow.clone());
        t.insert("baseline".into(), self.baseline.clone());
        t.insert("candidate".into(), self.candidate.clone());
        let segments: Vec<String> = self
            .segments
            .iter()
            .map(|s| {
                let m: Vec<String> = s
                    .matches
                    .iter()
                    .map(|(k, v)| format!("{k} in [{}]", v.join(", ")))
                    .collect();
                format!("{} ({})", s.name, m.join(", "))
            })
            .collect();
        t.insert("segments".into(), segments.join("; "));
        t.insert("confidence".into(), self.confidence.to_string());
        t.insert("max_narrows".into(), self.max_narrows.to_string());
        t.insert("bake".into(), crate::core::clock::human_duration(self.bake));
        let names: Vec<&str> = self.stages.iter().map(|s| s.name.as_str()).collect();
        t.insert("stages".into(), names.join(", "));
        for stage in &self.stages {
            let key = format!("stages.{}", stage.name);
            let traffic: Vec<String> = self
                .segments
                .iter()
                .zip(&stage.weights_bps)
                .map(|(seg, bps)| format!("{} {}%", seg.name, format_pct(*bps)))
                .collect();
            t.insert(format!("{key}.traffic"), traffic.join(", "));
            t.insert(
                format!("{key}.min_duration"),
                crate::core::clock::human_duration(stage.min_duration),
            );
            t.insert(format!("{key}.min_samples"), stage.min_samples.to_string());
            t.insert(
                format!("{key}.approval"),
                if stage.manual_approval {
                    "manual"
                } else {
                    "auto"
                }
                .into(),
            );
        }
        for gate in &self.gates {
            let checks: Vec<String> = gate.checks.iter().map(ToString::to_string).collect();
            t.insert(
                format!("gates.{}", gate.name),
                format!(
                    "{}; on_breach {}{}{}",
                    checks.join(", "),
                    gate.on_breach.name(),
                    gate.fallback
                        .as_ref()
                        .map(|f| format!(
                            " {}{}",
                            f.version,
                            if f.read_only { " read_only" } else { "" }
                        ))
                        .unwrap_or_default(),
                    if gate.observe { "; mode observe" } else { "" },
                ) + if gate.scope == Scope::Rollout {
                    "; scope rollout"
                } else {
                    ""
                },
            );
        }
        for sourced in &self.sourced {
            t.insert(
                format!("sources.{}", sourced.signal.name()),
                sourced.describe(),
            );
        }
        let lane = &self.lane;
        t.insert("lane.owner".into(), lane.owner.clone());
        t.insert(
            "lane.affected_systems".into(),
            lane.affected_systems.join(", "),
        );
        t.insert("lane.notify".into(), lane.notify.join(", "));
        t.insert("lane.repair".into(), lane.repair.clone());
        t.insert(
            "lane.reenable".into(),
            format!(
                "ack {}, cooldown {}, healthy_read_only_samples {}",
                lane.reenable.ack,
                crate::core::clock::human_duration(lane.reenable.cooldown),
                lane.reenable.healthy_read_only_samples
            ),
        );
        t
    }
}

/// Whether a change to the policy term `key` changes what the evidence means — the arms, the
/// segments, a gate, the confidence, or the stages' traffic — so the current epoch's evidence
/// must be dropped (a signal's metrics source included). Durations, sample minimums, approval, `max_narrows` and lane text keep it.
pub fn term_resets_evidence(key: &str) -> bool {
    matches!(
        key,
        "workflow" | "baseline" | "candidate" | "segments" | "confidence" | "stages"
    ) || key.starts_with("gates.")
        || key.starts_with("sources.")
        || (key.starts_with("stages.") && key.ends_with(".traffic"))
}

/// The readable differences between two sets of policy terms, in key order, as
/// `(key, line)`: `key: old → new`, `key: added (new)`, `key: removed (old)`.
pub fn policy_diff(
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (key, value) in new {
        match old.get(key) {
            None => out.push((key.clone(), format!("{key}: added ({value})"))),
            Some(before) if before != value => {
                out.push((key.clone(), format!("{key}: {before} → {value}")));
            }
            Some(_) => {}
        }
    }
    for (key, value) in old {
        if !new.contains_key(key) {
            out.push((key.clone(), format!("{key}: removed ({value})")));
        }
    }
    out.sort();
    out
}

impl Plan {
    /// The plan with every signal read from events, metrics sources set aside: what the
    /// offline runs (`simulate`, `replay`) decide with, since their tasks carry every value.
    pub fn without_sources(mut self) -> Plan {
        for r in &mut self.rollouts {
            r.sourced.clear();
        }
        self
    }

    pub fn workflow(&self, name: &str) -> Option<&WorkflowPlan> {
        self.workflows.iter().find(|w| w.name == name)
    }

    pub fn rollout(&self, name: &str) -> Option<&RolloutPlan> {
        self.rollouts.iter().find(|r| r.name == name)
    }

    pub fn notifier(&self, name: &str) -> Option<&NotifierPlan> {
        self.notifiers.iter().find(|n| n.name == name)
    }
}

/// A per-task measurement.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Signal {
    Quality,
    LatencyMs,
    CostUsd,
    Fallback,
    Review,
    Custom(String),
}

impl Signal {
    pub fn parse(text: &str) -> Option<Signal> {
        Some(match text {
            "quality" => Signal::Quality,
            "latency_ms" => Signal::LatencyMs,
            "cost_usd" => Signal::CostUsd,
            "fallback" => Signal::Fallback,
            "review" => Signal::Review,
            other => {
                let ok = other.len() <= 64
                    && other.starts_with(|c: char| c.is_ascii_lowercase())
                    && other
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                if !ok {
                    return None;
                }
                Signal::Custom(other.to_string())
            }
        })
    }

    pub fn name(&self) -> &str {
        match self {
            Signal::Quality => "quality",
            Signal::LatencyMs => "latency_ms",
            Signal::CostUsd => "cost_usd",
            Signal::Fallback => "fallback",
            Signal::Review => "review",
            Signal::Custom(name) => name,
        }
    }

    /// Bernoulli signals (counted as rates) rather than numeric ones.
    pub fn is_rate(&self) -> bool {
        matches!(self, Signal::Fallback | Signal::Review)
    }

    /// Whether a larger value is worse. Only quality improves upward.
    pub fn higher_is_worse(&self) -> bool {
        !matches!(self, Signal::Quality)
    }
}

/// The statistic a gate thresholds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stat {
    Mean,
    /// p50 … p99, as a fraction (0.95).
    Quantile(f64),
    Rate,
    RejectRate,
}

impl Stat {
    pub fn parse(text: &str) -> Option<Stat> {
        match text {
            "mean" => Some(Stat::Mean),
            "rate" => Some(Stat::Rate),
            "reject_rate" => Some(Stat::RejectRate),
            _ => {
                let digits = text.strip_prefix('p')?;
                if digits.len() != 2 || !digits.chars().all(|c| c.is_ascii_digit()) {
                    return None;
                }
                let p: u32 = digits.parse().ok()?;
                (1..=99)
                    .contains(&p)
                    .then_some(Stat::Quantile(f64::from(p) / 100.0))
            }
        }
    }

    pub fn name(&self) -> String {
        match self {
            Stat::Mean => "mean".into(),
            Stat::Quantile(p) => format!("p{:02}", (p * 100.0).round() as u32),
            Stat::Rate => "rate".into(),
            Stat::RejectRate => "reject_rate".into(),
        }
    }

    pub fn applies_to(&self, signal: &Signal) -> Result<(), String> {
        let ok = match (self, signal) {
            (Stat::Rate, Signal::Fallback) | (Stat::RejectRate, Signal::Review) => true,
            (Stat::Rate | Stat::RejectRate, _) => false,
            (_, Signal::Fallback | Signal::Review) => false,
            _ => true,
        };
        if ok {
            Ok(())
        } else {
            let expected = match signal {
                Signal::Fallback => "rate",
                Signal::Review => "reject_rate",
                _ => "mean or p50..p99",
            };
            Err(format!(
                "stat `{}` does not apply to signal `{}`; expected {expected}",
                self.name(),
                signal.name()
            ))
        }
    }
}

/// One threshold of a gate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Check {
    Max(f64),
    Min(f64),
    MaxRatio(f64),
    MaxIncrease(f64),
    MaxDrop(f64),
}

impl Check {
    pub fn is_relative(&self) -> bool {
        matches!(
            self,
            Check::MaxRatio(_) | Check::MaxIncrease(_) | Check::MaxDrop(_)
        )
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Check::Max(_) => "max",
            Check::Min(_) => "min",
            Check::MaxRatio(_) => "max_ratio",
            Check::MaxIncrease(_) => "max_increase",
            Check::MaxDrop(_) => "max_drop",
        }
    }

    pub fn threshold(&self) -> f64 {
        match *self {
            Check::Max(v)
            | Check::Min(v)
            | Check::MaxRatio(v)
            | Check::MaxIncrease(v)
            | Check::MaxDrop(v) => v,
        }
    }

    /// The absolute limit this check puts on the candidate, given the baseline's value.
    pub fn limit(&self, baseline: Option<f64>) -> Option<f64> {
        match *self {
            Check::Max(v) | Check::Min(v) => Some(v),
            Check::MaxRatio(r) => baseline.map(|b| b * r),
            Check::MaxIncrease(i) => baseline.map(|b| b + i),
            Check::MaxDrop(d) => baseline.map(|b| b - d),
        }
    }

    /// Whether a breach is the candidate being below the limit.
    pub fn breach_is_below(&self) -> bool {
        matches!(self, Check::Min(_) | Check::MaxDrop(_))
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind(), self.threshold())
    }
}

/// A validated gate.
#[derive(Debug, Clone, PartialEq)]
pub struct GateSpec {
    /// `signal_stat`, e.g. `latency_ms_p95`.
    pub name: String,
    pub signal: Signal,
    pub stat: Stat,
    pub checks: Vec<Check>,
    pub on_breach: Action,
    /// With `on_breach: { fallback: VERSION }`: the version that serves the candidate's share.
    pub fallback: Option<FallbackPlan>,
    /// Whether a `narrow` acts on the breaching segment only (the default) or the whole rollout.
    pub scope: Scope,
    /// `mode: observe`: evaluated, shown, exported and receipted as "would have acted", but
    /// never acts and never holds a stage — how a new gate earns trust before it may act.
    pub observe: bool,
}

/// What the controller (or an operator) does to a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Expand,
    Hold,
    Narrow,
    ReadOnly,
    Rollback,
    Pause,
    Resume,
    Promote,
    /// A config reload changed the rollout's policy.
    Reconfigure,
    /// An observe-only gate failed: it would have acted (recorded, nothing else changes).
    Observe,
    /// The candidate's share is served by another declared version of the workflow.
    Fallback,
}

/// What a gate's `narrow` moves back: the breaching segment, or every segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    #[default]
    Segment,
    Rollout,
}

/// `on_breach: { fallback: VERSION, mode: full | read_only }`: another version of the same
/// workflow (a simpler prompt, a reduced-context path) takes the candidate's share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FallbackPlan {
    pub version: String,
    /// The fallback version may only draft (`mode: read_only`).
    pub read_only: bool,
}

impl Action {
    /// The actions a gate may take on breach.
    pub fn parse_breach(text: &str) -> Option<Action> {
        Some(match text {
            "hold" => Action::Hold,
            "narrow" => Action::Narrow,
            "read_only" => Action::ReadOnly,
            "rollback" => Action::Rollback,
            "pause" => Action::Pause,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Action::Expand => "expand",
            Action::Hold => "hold",
            Action::Narrow => "narrow",
            Action::ReadOnly => "read_only",
            Action::Rollback => "rollback",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Promote => "promote",
            Action::Reconfigure => "reconfigure",
            Action::Observe => "observe",
            Action::Fallback => "fallback",
        }
    }

    /// Which breach action wins when several gates fail at once.
    pub fn severity(self) -> u8 {
        match self {
            Action::Rollback => 6,
            Action::Fallback => 5,
            Action::ReadOnly => 4,
            Action::Narrow => 3,
            Action::Pause => 2,
            _ => 1,
        }
    }
}

/// `1250` bps → `12.5`.
pub fn format_pct(bps: u16) -> String {
    let pct = f64::from(bps) / 100.0;
    if bps % 100 == 0 {
        format!("{}", bps / 100)
    } else {
        format!("{pct}")
    }
}
