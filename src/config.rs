//! The configuration file: a raw serde model of the YAML and its validation into a [`Plan`].
//!
//! Two phases, as ripgrep does it: serde (with `deny_unknown_fields`) turns text into the raw
//! model and reports the first structural problem (syntax, unknown key, wrong type) with its key
//! path; validation then resolves references, parses durations, percentages and stats, and
//! reports *every* semantic problem at once. Each problem names file, line, column and key path.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_saphyr::Spanned;
use sha2::{Digest, Sha256};

use crate::clock::{Millis, parse_duration};
use crate::gate::{Check, GateSpec, Signal, Stat};
use crate::rollout::Action;

/// One thing wrong with a config file, located.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub file: String,
    pub line: u64,
    pub column: u64,
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.line, self.column, self.key, self.message
        )
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Unreadable {
        file: String,
        source: std::io::Error,
    },
    #[error("{}", render_problems(.0))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// Every problem, for API responses (`details`).
    pub fn problems(&self) -> Vec<String> {
        match self {
            ConfigError::Unreadable { .. } => vec![self.to_string()],
            ConfigError::Invalid(problems) => problems.iter().map(ToString::to_string).collect(),
        }
    }
}

fn render_problems(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
    format!("{} problem(s):\n{}", problems.len(), lines.join("\n"))
}

// ---------------------------------------------------------------------------------------------
// Raw model: exactly the YAML's shape.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    auth: Option<Spanned<RawAuth>>,
    #[serde(default)]
    notifiers: Vec<Spanned<RawNotifier>>,
    #[serde(default)]
    signals: BTreeMap<String, Spanned<RawSignal>>,
    #[serde(default)]
    segments: BTreeMap<String, Spanned<RawSegment>>,
    #[serde(default)]
    workflows: BTreeMap<String, Spanned<RawWorkflow>>,
    #[serde(default)]
    rollouts: Vec<Spanned<RawRollout>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<Spanned<String>>,
    data_dir: Option<String>,
    tick: Option<Spanned<String>>,
    dedupe_window: Option<Spanned<String>>,
    max_body_bytes: Option<Spanned<u64>>,
    max_inflight_body_bytes: Option<Spanned<u64>>,
    max_connections: Option<Spanned<u64>>,
    header_timeout: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    retention: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    #[serde(default)]
    tokens: Vec<Spanned<RawToken>>,
    #[serde(default)]
    open_assign: bool,
    #[serde(default)]
    open: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSignal {
    range: Option<Spanned<[f64; 2]>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: String,
    role: Spanned<String>,
    token_env: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotifier {
    name: String,
    kind: Spanned<String>,
    url: Option<String>,
    url_env: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSegment {
    #[serde(default, rename = "match")]
    matches: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkflow {
    stable: Spanned<String>,
    versions: Vec<String>,
    #[serde(default)]
    guards: Vec<Spanned<RawGate>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRollout {
    name: String,
    workflow: Spanned<String>,
    baseline: Spanned<String>,
    candidate: Spanned<String>,
    segments: Vec<Spanned<String>>,
    stages: Vec<Spanned<RawStage>>,
    confidence: Option<Spanned<f64>>,
    max_narrows: Option<u32>,
    bake: Option<Spanned<String>>,
    #[serde(default)]
    gates: Vec<Spanned<RawGate>>,
    lane: Spanned<RawLane>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStage {
    name: String,
    traffic: BTreeMap<String, Spanned<f64>>,
    min_duration: Option<Spanned<String>>,
    min_samples: Option<u64>,
    approval: Option<Spanned<String>>,
    /// Baseline share (percent) kept in every segment this stage would give 100 %.
    holdout: Option<Spanned<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGate {
    signal: Spanned<String>,
    stat: Spanned<String>,
    min: Option<f64>,
    max: Option<f64>,
    max_ratio: Option<Spanned<f64>>,
    max_increase: Option<f64>,
    max_drop: Option<f64>,
    on_breach: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLane {
    owner: String,
    #[serde(default)]
    affected_systems: Vec<String>,
    #[serde(default)]
    notify: Vec<Spanned<String>>,
    repair: String,
    #[serde(default)]
    reenable: RawReenable,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReenable {
    #[serde(default)]
    ack: bool,
    cooldown: Option<Spanned<String>>,
    healthy_read_only_samples: Option<u64>,
}

// ---------------------------------------------------------------------------------------------
// The validated plan: what the rest of the program uses.

/// A validated configuration with every reference resolved.
#[derive(Debug, Clone)]
pub struct Plan {
    pub source: PathBuf,
    /// sha256 of the file's bytes, hex; stamped on every receipt.
    pub hash: String,
    pub server: ServerPlan,
    pub auth: AuthPlan,
    pub notifiers: Vec<NotifierPlan>,
    /// Plausible value ranges per signal; an event outside its signal's range is rejected.
    pub ranges: SignalRanges,
    pub workflows: Vec<WorkflowPlan>,
    pub rollouts: Vec<RolloutPlan>,
}

#[derive(Debug, Clone)]
pub struct ServerPlan {
    pub listen: String,
    pub data_dir: PathBuf,
    pub tick: Millis,
    pub dedupe_window: Millis,
    pub max_body_bytes: usize,
    /// Request body bytes all in-flight requests may hold at once.
    pub max_inflight_body_bytes: usize,
    /// Open connections at most (lowered further to fit the process's file-descriptor limit).
    pub max_connections: usize,
    /// A request's headers must arrive within this time of the connection (or the previous
    /// response) being ready for them.
    pub header_timeout: Millis,
    /// A kept-alive connection with no request for this long is closed.
    pub idle_timeout: Millis,
    /// How long raw events are kept once evidence checkpoints cover them.
    pub retention: Millis,
}

/// Plausible value ranges per signal. Built-in defaults apply to signals the config does not
/// name; a value outside its range is rejected at ingestion, so one absurd value cannot swamp a
/// statistic.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalRanges {
    pub overrides: BTreeMap<String, (f64, f64)>,
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

    pub fn range(&self, signal: &Signal) -> (f64, f64) {
        self.overrides
            .get(signal.name())
            .copied()
            .unwrap_or_else(|| SignalRanges::default_for(signal))
    }

    /// Checks one observed value; the error says which range it broke.
    pub fn check(&self, signal: &Signal, value: f64) -> Result<(), String> {
        let (lo, hi) = self.range(signal);
        if value.is_finite() && (lo..=hi).contains(&value) {
            Ok(())
        } else {
            Err(format!(
                "`{}` {value} is outside its plausible range {lo}..{hi} (set `signals.{}.range` to change it)",
                signal.name(),
                signal.name()
            ))
        }
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
    fn parse(text: &str) -> Option<Role> {
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
}

#[derive(Debug, Clone)]
pub struct NotifierPlan {
    pub name: String,
    pub kind: NotifierKind,
    pub url: Option<String>,
    pub url_env: Option<String>,
}

/// A named population: every listed attribute must hold one of its values.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub name: String,
    pub matches: Vec<(String, Vec<String>)>,
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
}

impl RolloutPlan {
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
        t.insert("bake".into(), crate::clock::human_duration(self.bake));
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
                crate::clock::human_duration(stage.min_duration),
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
                format!("{}; on_breach {}", checks.join(", "), gate.on_breach.name()),
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
                crate::clock::human_duration(lane.reenable.cooldown),
                lane.reenable.healthy_read_only_samples
            ),
        );
        t
    }
}

/// Whether a change to the policy term `key` changes what the evidence means — the arms, the
/// segments, a gate, the confidence, or the stages' traffic — so the current epoch's evidence
/// must be dropped. Durations, sample minimums, approval, `max_narrows` and lane text keep it.
pub fn term_resets_evidence(key: &str) -> bool {
    matches!(
        key,
        "workflow" | "baseline" | "candidate" | "segments" | "confidence" | "stages"
    ) || key.starts_with("gates.")
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
    pub fn workflow(&self, name: &str) -> Option<&WorkflowPlan> {
        self.workflows.iter().find(|w| w.name == name)
    }

    pub fn rollout(&self, name: &str) -> Option<&RolloutPlan> {
        self.rollouts.iter().find(|r| r.name == name)
    }

    pub fn notifier(&self, name: &str) -> Option<&NotifierPlan> {
        self.notifiers.iter().find(|n| n.name == name)
    }

    /// The default config path `stagegate serve` uses.
    pub const DEFAULT_PATH: &'static str = "config/stagegate.yaml";

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Plan, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Unreadable {
            file: path.display().to_string(),
            source,
        })?;
        Plan::parse(path, &text)
    }

    /// Validates config text; `path` names it in errors and resolves a relative `data_dir`.
    pub fn parse(path: &Path, text: &str) -> Result<Plan, ConfigError> {
        let file = path.display().to_string();
        // An unknown key stops serde; blank that entry out of a copy (spaces keep every other
        // line and column true) and parse again, so all unknown keys are reported at once.
        let mut masked = text.to_string();
        let mut problems = Vec::new();
        let raw = loop {
            match parse_raw(&file, &masked) {
                Ok(raw) => break Some(raw),
                Err(problem) => {
                    let unknown = problem.message.starts_with("unknown field");
                    let blanked = unknown
                        && problems.len() < 100
                        && blank_entry(&mut masked, problem.line, problem.column);
                    problems.push(problem);
                    if !blanked {
                        break None;
                    }
                }
            }
        };
        let Some(raw) = raw else {
            return Err(ConfigError::Invalid(problems));
        };
        let mut v = Validator { file, problems };
        let plan = v.plan(path, text, raw);
        if v.problems.is_empty() {
            Ok(plan)
        } else {
            v.problems.sort_by_key(|p| (p.line, p.column));
            Err(ConfigError::Invalid(v.problems))
        }
    }
}

/// Deserializes the raw model; the first structural problem comes back located, with its key path.
fn parse_raw(file: &str, text: &str) -> Result<RawConfig, Problem> {
    let mut key_path = None;
    let raw: Result<RawConfig, serde_saphyr::Error> =
        serde_saphyr::with_deserializer_from_str(text, |de| {
            serde_path_to_error::deserialize(de).map_err(|e| {
                key_path = Some(e.path().to_string());
                e.into_inner()
            })
        });
    raw.map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        let key = key_path
            .map(|k| k.replace(".value", ""))
            .filter(|k| !k.is_empty() && k != ".")
            .unwrap_or_else(|| "(document)".into());
        let message = e.without_snippet().to_string();
        let message = message
            .rsplit_once(" at line ")
            .map(|(m, _)| m.to_string())
            .unwrap_or(message);
        Problem {
            file: file.to_string(),
            line,
            column,
            key,
            message,
        }
    })
}

/// Replaces the mapping entry whose key starts at `line`:`column` (1-based) with spaces: in a
/// flow mapping up to its `,` or closing brace, in a block mapping the key's line and the more
/// indented lines under it. Returns false when the position is not understood.
fn blank_entry(text: &mut String, line: u64, column: u64) -> bool {
    let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
    let Some(row) = (line as usize).checked_sub(1).filter(|r| *r < lines.len()) else {
        return false;
    };
    let chars: Vec<char> = lines[row].chars().collect();
    let Some(col) = (column as usize)
        .checked_sub(1)
        .filter(|c| *c < chars.len())
    else {
        return false;
    };
    let before = chars[..col]
        .iter()
        .rev()
        .find(|c| !c.is_whitespace())
        .copied();
    let mut out = chars.clone();
    match before {
        Some('{') | Some(',') => {
            // Flow: blank to the next `,` or `}` at depth 0, outside quotes.
            let (mut depth, mut quote) = (0i32, None::<char>);
            let mut end = chars.len();
            for (i, &c) in chars.iter().enumerate().skip(col) {
                match (quote, c) {
                    (Some(q), c) if c == q => quote = None,
                    (Some(_), _) => {}
                    (None, '"' | '\'') => quote = Some(c),
                    (None, '{' | '[') => depth += 1,
                    (None, '}' | ']') if depth == 0 => {
                        end = i;
                        break;
                    }
                    (None, '}' | ']') => depth -= 1,
                    (None, ',') if depth == 0 => {
                        end = i + 1;
                        break;
                    }
                    _ => {}
                }
            }
            for c in &mut out[col..end] {
                *c = ' ';
            }
            lines[row] = out.into_iter().collect();
        }
        None | Some('-') => {
            for c in &mut out[col..] {
                *c = ' ';
            }
            lines[row] = out.into_iter().collect();
            for next in lines.iter_mut().skip(row + 1) {
                let indent = next.chars().take_while(|c| *c == ' ').count();
                if next.trim().is_empty() || indent > col {
                    *next = " ".repeat(next.chars().count());
                } else {
                    break;
                }
            }
        }
        _ => return false,
    }
    *text = lines.join("\n");
    true
}

/// Collects every semantic problem while building the plan.
struct Validator {
    file: String,
    problems: Vec<Problem>,
}

impl Validator {
    fn report<T>(&mut self, at: &Spanned<T>, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.clone(),
            line: at.referenced.line(),
            column: at.referenced.column(),
            key: key.into(),
            message: message.into(),
        });
    }

    /// Names become metric label values and receipt fields: 1 to 64 characters of letters,
    /// digits, `-`, `_` and `.`.
    fn name<T>(&mut self, at: &Spanned<T>, key: &str, name: &str) {
        let ok = (1..=MAX_NAME).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            self.report(
                at,
                key.to_string(),
                format!(
                    "`{}` is not a valid name: use 1 to {MAX_NAME} letters, digits, `-`, `_` or `.`",
                    name.chars().take(80).collect::<String>()
                ),
            );
        }
    }

    fn duration(&mut self, raw: &Option<Spanned<String>>, key: &str, default: Millis) -> Millis {
        match raw {
            None => default,
            Some(text) => parse_duration(&text.value).unwrap_or_else(|e| {
                self.report(text, key, e);
                default
            }),
        }
    }

    fn plan(&mut self, path: &Path, text: &str, raw: RawConfig) -> Plan {
        let hash = Sha256::digest(text.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let server = self.server(&raw.server);
        let auth = self.auth(raw.auth);
        let notifiers = self.notifiers(&raw.notifiers);
        let ranges = self.signal_ranges(&raw.signals);
        let segments: BTreeMap<String, Segment> = raw
            .segments
            .iter()
            .map(|(name, seg)| {
                let matches = seg
                    .value
                    .matches
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                (
                    name.clone(),
                    Segment {
                        name: name.clone(),
                        matches,
                    },
                )
            })
            .collect();
        let workflows = self.workflows(&raw.workflows);
        let mut rollouts = Vec::new();
        let mut seen_workflows = BTreeSet::new();
        let mut seen_names = BTreeSet::new();
        for (name, seg) in &raw.segments {
            self.name(seg, &format!("segments.{name}"), name);
        }
        for (i, rollout) in raw.rollouts.iter().enumerate() {
            let key = format!("rollouts[{i}]");
            self.name(rollout, &format!("{key}.name"), &rollout.value.name);
            if !seen_names.insert(rollout.value.name.clone()) {
                self.report(
                    rollout,
                    format!("{key}.name"),
                    format!("duplicate rollout name `{}`", rollout.value.name),
                );
            }
            if !seen_workflows.insert(rollout.value.workflow.value.clone()) {
                self.report(
                    &rollout.value.workflow,
                    format!("{key}.workflow"),
                    "another rollout already targets this workflow; one rollout per workflow at a time",
                );
            }
            if let Some(plan) = self.rollout(&key, rollout, &segments, &workflows, &notifiers) {
                rollouts.push(plan);
            }
        }
        for (name, w) in &raw.workflows {
            if !w.value.guards.is_empty() && rollouts.iter().any(|r| &r.workflow == name) {
                self.report(
                    w,
                    format!("workflows.{name}.guards"),
                    "a workflow under a rollout is watched by the rollout's gates (and its `bake` after promotion); guards here would never apply — move these limits into the rollout's gates",
                );
            }
        }
        Plan {
            source: path.to_path_buf(),
            hash,
            server,
            auth,
            notifiers,
            ranges,
            workflows,
            rollouts,
        }
    }

    fn signal_ranges(&mut self, raw: &BTreeMap<String, Spanned<RawSignal>>) -> SignalRanges {
        let mut overrides = BTreeMap::new();
        for (name, spec) in raw {
            let key = format!("signals.{name}");
            let Some(signal) = Signal::parse(name) else {
                self.report(
                    spec,
                    key,
                    "not a signal name (snake_case, at most 64 characters)",
                );
                continue;
            };
            let Some(range) = &spec.value.range else {
                continue;
            };
            let [lo, hi] = range.value;
            let bounded = |x: f64| x.is_finite() && x.abs() <= MAX_SIGNAL_MAGNITUDE;
            if !(bounded(lo) && bounded(hi)) || lo >= hi {
                self.report(
                    range,
                    format!("{key}.range"),
                    format!(
                        "expected [low, high] with low < high, both within ±{MAX_SIGNAL_MAGNITUDE:e}"
                    ),
                );
                continue;
            }
            if signal.is_rate() {
                self.report(
                    range,
                    format!("{key}.range"),
                    "a rate signal is a boolean; it has no range",
                );
                continue;
            }
            let (dlo, dhi) = SignalRanges::default_for(&signal);
            if signal == Signal::Quality && (lo < dlo || hi > dhi) {
                self.report(
                    range,
                    format!("{key}.range"),
                    "quality is a score in 0..1; its range may only be narrowed",
                );
                continue;
            }
            overrides.insert(name.clone(), (lo, hi));
        }
        SignalRanges { overrides }
    }

    fn server(&mut self, raw: &RawServer) -> ServerPlan {
        let listen = match &raw.listen {
            Some(l) => {
                if l.value.parse::<std::net::SocketAddr>().is_err() {
                    self.report(
                        l,
                        "server.listen",
                        "expected host:port, e.g. 127.0.0.1:8080",
                    );
                }
                l.value.clone()
            }
            None => "127.0.0.1:8080".into(),
        };
        // Relative to the working directory, as the shipped `./data` reads.
        let data_dir = PathBuf::from(raw.data_dir.clone().unwrap_or_else(|| "./data".into()));
        let tick = self.duration(&raw.tick, "server.tick", 5_000);
        if tick == 0 {
            if let Some(t) = &raw.tick {
                self.report(t, "server.tick", "must be longer than 0");
            }
        }
        let dedupe_window =
            self.duration(&raw.dedupe_window, "server.dedupe_window", 24 * 3_600_000);
        let max_body_bytes = match &raw.max_body_bytes {
            Some(b) if b.value < 1024 => {
                self.report(b, "server.max_body_bytes", "must be at least 1024");
                1024
            }
            Some(b) => b.value as usize,
            None => 4 * 1024 * 1024,
        };
        let max_inflight_body_bytes = match &raw.max_inflight_body_bytes {
            Some(b) if (b.value as usize) < max_body_bytes => {
                self.report(
                    b,
                    "server.max_inflight_body_bytes",
                    format!("must be at least server.max_body_bytes ({max_body_bytes})"),
                );
                max_body_bytes
            }
            Some(b) => b.value as usize,
            None => (64 * 1024 * 1024).max(max_body_bytes),
        };
        let max_connections = match &raw.max_connections {
            Some(c) if c.value < 16 => {
                self.report(c, "server.max_connections", "must be at least 16");
                16
            }
            Some(c) => c.value as usize,
            None => 4096,
        };
        let header_timeout = self.duration(&raw.header_timeout, "server.header_timeout", 10_000);
        let idle_timeout = self.duration(&raw.idle_timeout, "server.idle_timeout", 60_000);
        for (value, raw, key) in [
            (header_timeout, &raw.header_timeout, "server.header_timeout"),
            (idle_timeout, &raw.idle_timeout, "server.idle_timeout"),
        ] {
            if let Some(r) = raw.as_ref().filter(|_| value < 100) {
                self.report(r, key, "must be at least 100ms");
            }
        }
        let retention = self.duration(&raw.retention, "server.retention", 7 * 24 * 3_600_000);
        if let Some(r) = raw.retention.as_ref().filter(|_| retention < 1_000) {
            self.report(r, "server.retention", "must be at least 1s");
        }
        ServerPlan {
            listen,
            data_dir,
            tick: tick.max(1),
            dedupe_window,
            max_body_bytes,
            max_inflight_body_bytes,
            max_connections,
            header_timeout: header_timeout.max(100),
            idle_timeout: idle_timeout.max(100),
            retention: retention.max(1_000),
        }
    }

    fn auth(&mut self, raw: Option<Spanned<RawAuth>>) -> AuthPlan {
        let Some(spanned) = raw else {
            self.problems.push(Problem {
                file: self.file.clone(),
                line: 1,
                column: 1,
                key: "auth".into(),
                message: "no `auth` section: add one with at least one admin token \
                          (`auth: { tokens: [{ name: platform, role: admin, token_env: STAGEGATE_ADMIN_TOKEN }] }`), \
                          or say `auth: { open: true }` for an unauthenticated development server"
                    .into(),
            });
            return AuthPlan::default();
        };
        let raw = &spanned.value;
        if raw.open {
            if !raw.tokens.is_empty() {
                self.report(
                    &spanned,
                    "auth.open",
                    "`open: true` serves every endpoint without a token; remove it or the tokens",
                );
            }
            return AuthPlan {
                tokens: None,
                open_assign: true,
            };
        }
        let mut tokens = Vec::new();
        for (i, t) in raw.tokens.iter().enumerate() {
            self.name(t, &format!("auth.tokens[{i}].name"), &t.value.name);
            match Role::parse(&t.value.role.value) {
                Some(role) => tokens.push(TokenPlan {
                    name: t.value.name.clone(),
                    role,
                    token_env: t.value.token_env.clone(),
                }),
                None => self.report(
                    &t.value.role,
                    format!("auth.tokens[{i}].role"),
                    format!(
                        "unknown role `{}`; expected admin, operator, ingest or viewer (alias read)",
                        t.value.role.value
                    ),
                ),
            }
        }
        if !tokens.iter().any(|t| t.role == Role::Admin) {
            self.report(
                &spanned,
                "auth.tokens",
                "at least one token must have role admin (or say `auth: { open: true }` for an \
                 unauthenticated development server)",
            );
        }
        AuthPlan {
            tokens: Some(tokens),
            open_assign: raw.open_assign,
        }
    }

    fn notifiers(&mut self, raw: &[Spanned<RawNotifier>]) -> Vec<NotifierPlan> {
        let mut out: Vec<NotifierPlan> = Vec::new();
        for (i, n) in raw.iter().enumerate() {
            let key = format!("notifiers[{i}]");
            self.name(n, &format!("{key}.name"), &n.value.name);
            let kind = match n.value.kind.value.as_str() {
                "webhook" => NotifierKind::Webhook,
                "slack" => NotifierKind::Slack,
                other => {
                    self.report(
                        &n.value.kind,
                        format!("{key}.kind"),
                        format!("unknown kind `{other}`; expected webhook or slack"),
                    );
                    continue;
                }
            };
            if n.value.url.is_some() == n.value.url_env.is_some() {
                self.report(n, key.clone(), "set exactly one of `url` and `url_env`");
            }
            if out.iter().any(|o| o.name == n.value.name) {
                self.report(
                    n,
                    format!("{key}.name"),
                    format!("duplicate notifier `{}`", n.value.name),
                );
            }
            out.push(NotifierPlan {
                name: n.value.name.clone(),
                kind,
                url: n.value.url.clone(),
                url_env: n.value.url_env.clone(),
            });
        }
        out
    }

    fn workflows(&mut self, raw: &BTreeMap<String, Spanned<RawWorkflow>>) -> Vec<WorkflowPlan> {
        let mut out = Vec::new();
        for (name, w) in raw {
            let key = format!("workflows.{name}");
            self.name(w, &key, name);
            for (i, version) in w.value.versions.iter().enumerate() {
                self.name(w, &format!("{key}.versions[{i}]"), version);
            }
            if w.value.versions.is_empty() {
                self.report(w, format!("{key}.versions"), "list at least one version");
            }
            if !w.value.versions.contains(&w.value.stable.value) {
                self.report(
                    &w.value.stable,
                    format!("{key}.stable"),
                    format!(
                        "unknown version `{}`; expected one of {:?}",
                        w.value.stable.value, w.value.versions
                    ),
                );
            }
            let guards = w
                .value
                .guards
                .iter()
                .enumerate()
                .filter_map(|(i, g)| self.gate(&format!("{key}.guards[{i}]"), g, true))
                .collect();
            out.push(WorkflowPlan {
                name: name.clone(),
                stable: w.value.stable.value.clone(),
                versions: w.value.versions.clone(),
                guards,
            });
        }
        out
    }

    fn rollout(
        &mut self,
        key: &str,
        raw: &Spanned<RawRollout>,
        segments: &BTreeMap<String, Segment>,
        workflows: &[WorkflowPlan],
        notifiers: &[NotifierPlan],
    ) -> Option<RolloutPlan> {
        let r = &raw.value;
        let workflow = workflows.iter().find(|w| w.name == r.workflow.value);
        match workflow {
            None => self.report(
                &r.workflow,
                format!("{key}.workflow"),
                format!(
                    "unknown workflow `{}`; declare it under `workflows:`",
                    r.workflow.value
                ),
            ),
            Some(w) => {
                for (field, version) in [("baseline", &r.baseline), ("candidate", &r.candidate)] {
                    if !w.versions.contains(&version.value) {
                        self.report(
                            version,
                            format!("{key}.{field}"),
                            format!(
                                "unknown version `{}` of workflow `{}`; expected one of {:?}",
                                version.value, w.name, w.versions
                            ),
                        );
                    }
                }
            }
        }
        if r.baseline.value == r.candidate.value {
            self.report(
                &r.candidate,
                format!("{key}.candidate"),
                "candidate must differ from baseline",
            );
        }
        let mut rollout_segments = Vec::new();
        for (i, s) in r.segments.iter().enumerate() {
            match segments.get(&s.value) {
                Some(seg) if rollout_segments.contains(seg) => self.report(
                    s,
                    format!("{key}.segments[{i}]"),
                    format!("segment `{}` listed twice", s.value),
                ),
                Some(seg) => rollout_segments.push(seg.clone()),
                None => self.report(
                    s,
                    format!("{key}.segments[{i}]"),
                    format!(
                        "unknown segment `{}`; declare it under `segments:`",
                        s.value
                    ),
                ),
            }
        }
        if r.segments.is_empty() {
            self.report(raw, format!("{key}.segments"), "list at least one segment");
        }
        if r.stages.is_empty() {
            self.report(raw, format!("{key}.stages"), "list at least one stage");
        }
        let mut stages: Vec<StagePlan> = Vec::new();
        for (i, stage) in r.stages.iter().enumerate() {
            let skey = format!("{key}.stages[{i}]");
            let mut weights = vec![0u16; r.segments.len()];
            for (segment, pct) in &stage.value.traffic {
                let tkey = format!("{skey}.traffic.{segment}");
                let Some(idx) = r.segments.iter().position(|s| &s.value == segment) else {
                    self.report(
                        pct,
                        tkey,
                        format!("segment `{segment}` is not in this rollout's `segments`"),
                    );
                    continue;
                };
                if !(0.0..=100.0).contains(&pct.value) || !pct.value.is_finite() {
                    self.report(
                        pct,
                        tkey,
                        format!("{} is not a percentage; expected 0 to 100", pct.value),
                    );
                    continue;
                }
                weights[idx] = (pct.value * 100.0).round() as u16;
            }
            if let Some(h) = &stage.value.holdout {
                if !(h.value > 0.0 && h.value < 100.0) {
                    self.report(
                        h,
                        format!("{skey}.holdout"),
                        format!(
                            "{} is not a holdout share; expected more than 0 and less than 100",
                            h.value
                        ),
                    );
                } else {
                    let kept = 10_000 - (h.value * 100.0).round() as u16;
                    for w in weights.iter_mut().filter(|w| **w == 10_000) {
                        *w = kept;
                    }
                }
            }
            if let Some(prev) = stages.last() {
                for (idx, (before, now)) in prev.weights_bps.iter().zip(&weights).enumerate() {
                    if now < before {
                        let name = &r.segments[idx].value;
                        let at = stage
                            .value
                            .traffic
                            .get(name)
                            .map(|p| (p.referenced.line(), p.referenced.column()));
                        let (line, column) =
                            at.unwrap_or((stage.referenced.line(), stage.referenced.column()));
                        self.problems.push(Problem {
                            file: self.file.clone(),
                            line,
                            column,
                            key: format!("{skey}.traffic.{name}"),
                            message: format!(
                                "traffic may only grow from stage to stage: {} % here after {} % in `{}`",
                                f64::from(*now) / 100.0,
                                f64::from(*before) / 100.0,
                                prev.name
                            ),
                        });
                    }
                }
            }
            let manual_approval = match &stage.value.approval {
                None => false,
                Some(a) if a.value == "manual" => true,
                Some(a) if a.value == "auto" => false,
                Some(a) => {
                    self.report(
                        a,
                        format!("{skey}.approval"),
                        format!("unknown approval `{}`; expected manual or auto", a.value),
                    );
                    false
                }
            };
            if stages.iter().any(|s| s.name == stage.value.name) {
                self.report(
                    stage,
                    format!("{skey}.name"),
                    format!("duplicate stage name `{}`", stage.value.name),
                );
            }
            stages.push(StagePlan {
                name: stage.value.name.clone(),
                weights_bps: weights,
                min_duration: self.duration(
                    &stage.value.min_duration,
                    &format!("{skey}.min_duration"),
                    0,
                ),
                min_samples: stage.value.min_samples.unwrap_or(0),
                manual_approval,
            });
        }
        let confidence = match &r.confidence {
            None => 0.95,
            Some(c) if c.value > 0.5 && c.value < 1.0 => c.value,
            Some(c) => {
                self.report(
                    c,
                    format!("{key}.confidence"),
                    format!(
                        "{} is out of range; expected a number between 0.5 and 1 (exclusive)",
                        c.value
                    ),
                );
                0.95
            }
        };
        let gates: Vec<GateSpec> = r
            .gates
            .iter()
            .enumerate()
            .filter_map(|(i, g)| self.gate(&format!("{key}.gates[{i}]"), g, false))
            .collect();
        let mut names = BTreeSet::new();
        for (i, g) in gates.iter().enumerate() {
            if !names.insert(g.name.clone()) {
                self.report(
                    &r.gates[i],
                    format!("{key}.gates[{i}]"),
                    format!("duplicate gate `{}`", g.name),
                );
            }
        }
        let lane = &r.lane.value;
        for (i, n) in lane.notify.iter().enumerate() {
            if !notifiers.iter().any(|x| x.name == n.value) {
                self.report(
                    n,
                    format!("{key}.lane.notify[{i}]"),
                    format!(
                        "unknown notifier `{}`; declare it under `notifiers:`",
                        n.value
                    ),
                );
            }
        }
        let reenable = ReenablePlan {
            ack: lane.reenable.ack,
            cooldown: self.duration(
                &lane.reenable.cooldown,
                &format!("{key}.lane.reenable.cooldown"),
                0,
            ),
            healthy_read_only_samples: lane.reenable.healthy_read_only_samples.unwrap_or(0),
        };
        Some(RolloutPlan {
            name: r.name.clone(),
            workflow: r.workflow.value.clone(),
            baseline: r.baseline.value.clone(),
            candidate: r.candidate.value.clone(),
            segments: rollout_segments,
            stages,
            confidence,
            max_narrows: r.max_narrows.unwrap_or(2),
            bake: self.duration(&r.bake, &format!("{key}.bake"), DEFAULT_BAKE),
            gates,
            lane: LanePlan {
                owner: lane.owner.clone(),
                affected_systems: lane.affected_systems.clone(),
                notify: lane.notify.iter().map(|n| n.value.clone()).collect(),
                repair: lane.repair.clone(),
                reenable,
            },
        })
    }

    fn gate(&mut self, key: &str, raw: &Spanned<RawGate>, guard: bool) -> Option<GateSpec> {
        let g = &raw.value;
        let signal = Signal::parse(&g.signal.value);
        let Some(signal) = signal else {
            self.report(&g.signal, format!("{key}.signal"), format!("`{}` is not a signal name; expected quality, latency_ms, cost_usd, fallback, review or a custom name in snake_case", g.signal.value));
            return None;
        };
        let Some(stat) = Stat::parse(&g.stat.value) else {
            self.report(
                &g.stat,
                format!("{key}.stat"),
                format!(
                    "unknown stat `{}`; expected mean, p50..p99, rate or reject_rate",
                    g.stat.value
                ),
            );
            return None;
        };
        if let Err(e) = stat.applies_to(&signal) {
            self.report(&g.stat, format!("{key}.stat"), e);
            return None;
        }
        let mut checks = Vec::new();
        let bounded = matches!(stat, Stat::Rate | Stat::RejectRate)
            || signal == Signal::Quality && stat == Stat::Mean;
        for (value, make) in [(g.max, Check::Max as fn(f64) -> Check), (g.min, Check::Min)] {
            if let Some(v) = value {
                if !v.is_finite() || (bounded && !(0.0..=1.0).contains(&v)) {
                    self.report(
                        raw,
                        key,
                        format!(
                            "threshold {v} is out of range for {}; expected 0 to 1",
                            stat.name()
                        ),
                    );
                }
                checks.push(make(v));
            }
        }
        let relative = [
            g.max_ratio
                .as_ref()
                .map(|r| (r.value, Check::MaxRatio(r.value))),
            g.max_increase.map(|v| (v, Check::MaxIncrease(v))),
            g.max_drop.map(|v| (v, Check::MaxDrop(v))),
        ];
        for (value, check) in relative.into_iter().flatten() {
            if guard {
                self.report(
                    raw,
                    key,
                    "guards compare against no baseline: use only `min` and `max`",
                );
                break;
            }
            if !value.is_finite() || value < 0.0 {
                self.report(
                    raw,
                    key,
                    format!("relative threshold {value} must be a non-negative number"),
                );
            }
            checks.push(check);
        }
        if let Some(r) = &g.max_ratio {
            if r.value <= 0.0 {
                self.report(
                    r,
                    format!("{key}.max_ratio"),
                    "must be greater than 0 (1.25 allows 25 % worse)",
                );
            }
        }
        if checks.is_empty() {
            self.report(
                raw,
                key,
                "declare at least one threshold: min, max, max_ratio, max_increase or max_drop",
            );
        }
        let on_breach = match (&g.on_breach, guard) {
            (None, true) => Action::ReadOnly,
            (None, false) => {
                self.report(
                    raw,
                    format!("{key}.on_breach"),
                    "missing; expected hold, narrow, read_only, rollback or pause",
                );
                Action::Hold
            }
            (Some(a), _) => match Action::parse_breach(&a.value) {
                Some(action) if guard && action != Action::ReadOnly => {
                    self.report(
                        a,
                        format!("{key}.on_breach"),
                        "a guard's breach always switches the workflow to read_only",
                    );
                    action
                }
                Some(action) => action,
                None => {
                    self.report(a, format!("{key}.on_breach"), format!("unknown action `{}`; expected hold, narrow, read_only, rollback or pause", a.value));
                    Action::Hold
                }
            },
        };
        Some(GateSpec {
            name: format!("{}_{}", signal.name(), stat.name()),
            signal,
            stat,
            checks,
            on_breach,
        })
    }
}

/// Renders the plan as `check` prints it: a stages × segments table, then the gates and lane.
pub fn render_plan(plan: &Plan) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "config {} (sha256 {})",
        plan.source.display(),
        &plan.hash[..12]
    );
    let _ = writeln!(
        out,
        "server: listen {}  data_dir {}  tick {}",
        plan.server.listen,
        plan.server.data_dir.display(),
        crate::clock::human_duration(plan.server.tick)
    );
    for w in &plan.workflows {
        let _ = writeln!(
            out,
            "workflow {}: stable {}  versions {}  guards {}",
            w.name,
            w.stable,
            w.versions.join(", "),
            w.guards.len()
        );
    }
    for r in &plan.rollouts {
        let _ = writeln!(
            out,
            "\nrollout {} ({}: {} -> {}), confidence {}, max_narrows {}",
            r.name, r.workflow, r.baseline, r.candidate, r.confidence, r.max_narrows
        );
        let mut header = format!("  {:<12}", "stage");
        for s in &r.segments {
            let _ = write!(header, " {:>11}", s.name);
        }
        let _ = write!(
            header,
            "  {:>12} {:>11}  approval",
            "min_duration", "min_samples"
        );
        let _ = writeln!(out, "{header}");
        for st in &r.stages {
            let mut row = format!("  {:<12}", st.name);
            for w in &st.weights_bps {
                let _ = write!(row, " {:>10}%", format_pct(*w));
            }
            let _ = write!(
                row,
                "  {:>12} {:>11}  {}",
                crate::clock::human_duration(st.min_duration),
                st.min_samples,
                if st.manual_approval { "manual" } else { "auto" }
            );
            let _ = writeln!(out, "{row}");
        }
        let relative: Vec<String> = r
            .gates
            .iter()
            .flat_map(|g| {
                g.checks
                    .iter()
                    .filter(|c| c.is_relative())
                    .map(move |c| format!("{} {}", g.name, c))
            })
            .collect();
        if !relative.is_empty() {
            for st in &r.stages {
                let full: Vec<&str> = r
                    .segments
                    .iter()
                    .zip(&st.weights_bps)
                    .filter(|(_, w)| **w == 10_000)
                    .map(|(s, _)| s.name.as_str())
                    .collect();
                if !full.is_empty() {
                    let _ = writeln!(
                        out,
                        "  note: at stage {} the baseline gets no traffic in {}: relative checks ({}) do not apply there; absolute checks decide (a stage `holdout: PCT` keeps a baseline share)",
                        st.name,
                        full.join(", "),
                        relative.join(", ")
                    );
                }
            }
        }
        let _ = writeln!(out, "  gates (alpha per check {:.5}):", r.alpha_per_check());
        for g in &r.gates {
            let checks: Vec<String> = g.checks.iter().map(ToString::to_string).collect();
            let _ = writeln!(
                out,
                "    {:<22} {:<40} on_breach {}",
                g.name,
                checks.join(", "),
                g.on_breach.name()
            );
        }
        let re = &r.lane.reenable;
        let _ = writeln!(
            out,
            "  lane: owner {}  notify [{}]  affected [{}]",
            r.lane.owner,
            r.lane.notify.join(", "),
            r.lane.affected_systems.join(", ")
        );
        let _ = writeln!(out, "        repair: {}", r.lane.repair);
        let _ = writeln!(
            out,
            "        re-enable: ack {}  cooldown {}  healthy read-only samples {}",
            re.ack,
            crate::clock::human_duration(re.cooldown),
            re.healthy_read_only_samples
        );
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `text`; one with no `auth` section gets `auth: { open: true }` appended (after
    /// every line, so reported positions stay true).
    fn parse(text: &str) -> Result<Plan, Vec<String>> {
        let text = if text.contains("auth:") {
            text.to_string()
        } else {
            format!("{text}\nauth: {{ open: true }}\n")
        };
        Plan::parse(Path::new("t.yaml"), &text).map_err(|e| e.problems())
    }

    #[test]
    fn a_config_without_admin_auth_is_invalid_unless_it_says_open() {
        let check = |text: &str| Plan::parse(Path::new("t.yaml"), text).map_err(|e| e.problems());
        let errs = check("").unwrap_err();
        assert!(errs[0].contains("no `auth` section"), "{errs:?}");
        let errs =
            check("auth: { tokens: [{ name: a, role: ingest, token_env: X }] }\n").unwrap_err();
        assert!(
            errs[0].contains("at least one token must have role admin"),
            "{errs:?}"
        );
        let errs =
            check("auth: { open: true, tokens: [{ name: a, role: admin, token_env: X }] }\n")
                .unwrap_err();
        assert!(errs[0].contains("auth.open"), "{errs:?}");
        let open = check("auth: { open: true }\n").expect("explicitly open");
        assert!(open.auth.tokens.is_none());
        let closed = check("auth: { tokens: [{ name: a, role: viewer, token_env: X }, { name: b, role: admin, token_env: Y }] }\n")
            .expect("admin present; viewer is read's alias");
        assert_eq!(closed.auth.tokens.map(|t| t[0].role), Some(Role::Read));
    }

    #[test]
    fn guards_on_a_workflow_under_a_rollout_are_refused_with_the_reason() {
        let text = include_str!("../config/stagegate.yaml").replace(
            "    stable: v7\n",
            "    stable: v7\n    guards: [{ signal: quality, stat: mean, min: 0.5 }]\n",
        );
        let errs = parse(&text).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].contains("workflows.support-reply.guards") && errs[0].contains("never apply"),
            "{errs:?}"
        );
    }

    #[test]
    fn a_holdout_keeps_a_baseline_share_where_a_stage_gives_all() {
        let text = include_str!("../config/stagegate.yaml").replace(
            "{ name: internal,  traffic: { internal: 100 },",
            "{ name: internal,  traffic: { internal: 100 }, holdout: 10,",
        );
        let plan = parse(&text).expect("valid");
        assert_eq!(plan.rollouts[0].stages[0].weights_bps, vec![9_000, 0, 0]);
        let rendered = render_plan(&plan);
        assert!(
            !rendered.contains("note: at stage internal the baseline gets no traffic"),
            "{rendered}"
        );
        assert!(
            rendered.contains(
                "note: at stage full the baseline gets no traffic in internal, enterprise, everyone"
            ),
            "{rendered}"
        );
        let errs = parse(&text.replace("holdout: 10,", "holdout: 100,")).unwrap_err();
        assert!(errs[0].contains("holdout"), "{errs:?}");
    }

    #[test]
    fn names_are_short_label_safe_words() {
        let long = "r".repeat(65);
        let errs = parse(&format!(
            "segments: {{ \"a b\": {{}} }}\nworkflows: {{ w: {{ stable: v1, versions: [v1, \"{long}\"] }} }}\n"
        ))
        .unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs.iter().any(|e| e.contains("segments.a b")), "{errs:?}");
        assert!(errs.iter().any(|e| e.contains("versions[1]")), "{errs:?}");
    }

    #[test]
    fn signal_ranges_are_validated_and_applied() {
        let errs = parse(
            "signals:\n  cost_usd: { range: [5, 1] }\n  quality: { range: [0, 2] }\n  fallback: { range: [0, 1] }\n  latency_ms: { range: [0, 1e300] }\n",
        )
        .unwrap_err();
        assert_eq!(errs.len(), 4, "{errs:?}");
        let plan = parse("signals:\n  cost_usd: { range: [0, 5] }\n").expect("valid");
        assert!(plan.ranges.check(&Signal::CostUsd, 4.0).is_ok());
        let err = plan.ranges.check(&Signal::CostUsd, 6.0).unwrap_err();
        assert!(err.contains("0..5"), "{err}");
        assert!(plan.ranges.check(&Signal::LatencyMs, 1e308).is_err());
        assert!(
            plan.ranges
                .check(&Signal::Custom("x".into()), f64::NAN)
                .is_err()
        );
    }

    #[test]
    fn policy_diff_names_each_change_and_which_reset_evidence() {
        let text = include_str!("../config/stagegate.yaml");
        let before = parse(text).expect("valid").rollouts[0].policy_terms();
        let edited = text
            .replace("min_duration: 10m", "min_duration: 20m")
            .replace("min: 0.80", "min: 0.85");
        let after = parse(&edited).expect("valid").rollouts[0].policy_terms();
        let diff = policy_diff(&before, &after);
        let lines: Vec<&str> = diff.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(diff.len(), 2, "{lines:?}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("gates.quality_mean: min 0.8") && l.contains("→ min 0.85")),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"stages.internal.min_duration: 10m → 20m"),
            "{lines:?}"
        );
        assert!(term_resets_evidence("gates.quality_mean"));
        assert!(!term_resets_evidence("stages.internal.min_duration"));
        assert!(!term_resets_evidence("lane.repair"));
        assert!(term_resets_evidence("stages.internal.traffic"));
    }

    #[test]
    fn shipped_config_is_valid() {
        let text = include_str!("../config/stagegate.yaml");
        let plan = parse(text).expect("shipped config validates");
        assert_eq!(plan.rollouts.len(), 1);
        let r = &plan.rollouts[0];
        assert_eq!(r.stages[1].weights_bps, vec![10_000, 0, 500]);
        assert!(r.stages[3].manual_approval);
        assert_eq!(r.gates[1].name, "latency_ms_p95");
    }

    #[test]
    fn unknown_key_names_line_column_and_path() {
        let errs = parse("server:\n  listen: 127.0.0.1:1\n  bogus: 1\n").unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].starts_with("t.yaml:3:3: server.bogus: unknown field `bogus`"),
            "{errs:?}"
        );
    }

    #[test]
    fn semantic_problems_are_reported_together() {
        let text = r#"
segments:
  everyone: {}
workflows:
  w: { stable: v1, versions: [v1, v2] }
rollouts:
  - name: r
    workflow: w
    baseline: v1
    candidate: v3
    segments: [everyone, nobody]
    stages:
      - { name: s1, traffic: { everyone: 150 }, min_duration: 10 }
    gates:
      - { signal: quality, stat: p1000, max: 1, on_breach: rollback }
      - { signal: latency_ms, stat: p95, max: 10, on_breach: explode }
    lane: { owner: o, repair: r, notify: [ghost] }
"#;
        let errs = parse(text).unwrap_err();
        let joined = errs.join("\n");
        for needle in [
            "rollouts[0].candidate: unknown version `v3`",
            "rollouts[0].segments[1]: unknown segment `nobody`",
            "rollouts[0].stages[0].traffic.everyone: 150 is not a percentage",
            "rollouts[0].stages[0].min_duration: `10` has no unit",
            "rollouts[0].gates[0].stat: unknown stat `p1000`",
            "rollouts[0].gates[1].on_breach: unknown action `explode`",
            "rollouts[0].lane.notify[0]: unknown notifier `ghost`",
        ] {
            assert!(joined.contains(needle), "missing {needle:?} in:\n{joined}");
        }
        assert!(errs.iter().all(|e| e.starts_with("t.yaml:")), "{joined}");
        assert!(
            joined.contains("t.yaml:10:16: rollouts[0].candidate"),
            "{joined}"
        );
    }

    #[test]
    fn every_unknown_key_is_reported_with_the_semantic_problems() {
        let text = "server:\n  listen: 127.0.0.1:1\n  bogus: 1\n  tick: 5parsecs\nsegments:\n  all: { match: {}, wat: [1, {x: 2}], }\nworkflows:\n  w:\n    stable: v1\n    versions: [v1]\n    extra:\n      deep: 1\n";
        let errs = parse(text).unwrap_err();
        let joined = errs.join("\n");
        assert!(
            joined.contains("t.yaml:3:3: server.bogus: unknown field `bogus`"),
            "{joined}"
        );
        assert!(
            joined.contains("t.yaml:6:21: segments.all.wat: unknown field `wat`"),
            "{joined}"
        );
        assert!(
            joined.contains("t.yaml:11:5: workflows.w.extra: unknown field `extra`"),
            "{joined}"
        );
        assert!(
            joined.contains("t.yaml:4:9: server.tick: `5parsecs`"),
            "{joined}"
        );
        assert_eq!(errs.len(), 4, "{joined}");
    }

    #[test]
    fn shrinking_traffic_is_refused() {
        let text = r#"
segments: { everyone: {} }
workflows: { w: { stable: v1, versions: [v1, v2] } }
rollouts:
  - name: r
    workflow: w
    baseline: v1
    candidate: v2
    segments: [everyone]
    stages:
      - { name: a, traffic: { everyone: 50 } }
      - { name: b, traffic: { everyone: 10 } }
    lane: { owner: o, repair: r }
"#;
        let errs = parse(text).unwrap_err();
        assert!(errs[0].contains("traffic may only grow"), "{errs:?}");
    }
}
