//! The configuration file: a raw serde model of the YAML and its validation into a [`Plan`].
//!
//! Two phases, as ripgrep does it: serde (with `deny_unknown_fields`) turns text into the raw
//! model and reports the first structural problem (syntax, unknown key, wrong type) with its key
//! path; validation then resolves references, parses durations, percentages and stats, and
//! reports *every* semantic problem at once. Each problem names file, line, column and key path.

use std::fmt;
use std::path::Path;

use crate::plan::Plan;

mod locate;
mod raw;
mod render;
mod validate;

pub use render::{check_warnings, relative_notes, render_plan};

use raw::RawConfig;
use validate::Validator;

/// One thing wrong with a config file, located.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub file: String,
    pub line: u64,
    pub column: u64,
    pub key: String,
    pub message: String,
    /// The source line it is on, shown under the message with a caret at the column.
    pub snippet: Option<String>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.line, self.column, self.key, self.message
        )?;
        if let Some(line) = &self.snippet {
            let number = self.line.to_string();
            let pad = " ".repeat(number.len());
            let caret = " ".repeat(
                line.chars()
                    .take(self.column.saturating_sub(1) as usize)
                    .count(),
            );
            write!(f, "\n {number} | {line}\n {pad} | {caret}^")?;
        }
        Ok(())
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

/// The JSON Schema of the config file (draft 2020-12), from the same types serde reads:
/// what `stagegate schema` prints, for editors (yaml-language-server) and CI.
pub fn config_schema() -> serde_json::Value {
    // The raw types' names are internal: `#/$defs/RawRollout` reads `#/$defs/Rollout`.
    let text = serde_json::to_string(&schemars::schema_for!(RawConfig))
        .unwrap_or_default()
        .replace("\"#/$defs/Raw", "\"#/$defs/");
    let mut schema: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    if let Some(defs) = schema.get_mut("$defs").and_then(|d| d.as_object_mut()) {
        let renamed: serde_json::Map<String, serde_json::Value> = std::mem::take(defs)
            .into_iter()
            .map(|(k, v)| (k.strip_prefix("Raw").unwrap_or(&k).to_string(), v))
            .collect();
        *defs = renamed;
    }
    if let Some(map) = schema.as_object_mut() {
        map.insert("title".into(), "stagegate configuration".into());
        map.insert(
            "description".into(),
            "A stagegate config file: server, auth, notifiers, sources, signals, segments, workflows and rollouts. Reference: docs/configuration.md.".into(),
        );
    }
    schema
}

fn render_problems(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
    format!("{} problem(s):\n{}", problems.len(), lines.join("\n"))
}

impl Plan {
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
            return Err(ConfigError::Invalid(with_snippets(problems, text)));
        };
        let mut v = Validator {
            file,
            problems,
            ranges: None,
        };
        let plan = v.plan(path, text, raw);
        if v.problems.is_empty() {
            Ok(plan)
        } else {
            v.problems.sort_by_key(|p| (p.line, p.column));
            v.problems
                .dedup_by(|a, b| a.key == b.key && a.message == b.message);
            Err(ConfigError::Invalid(with_snippets(v.problems, text)))
        }
    }
}

/// Each problem with its source line.
fn with_snippets(mut problems: Vec<Problem>, text: &str) -> Vec<Problem> {
    let lines: Vec<&str> = text.lines().collect();
    for p in &mut problems {
        p.snippet = (p.line as usize)
            .checked_sub(1)
            .and_then(|i| lines.get(i))
            .filter(|l| !l.trim().is_empty() && l.len() <= 400)
            .map(|l| l.to_string());
    }
    problems
}

/// serde's and the YAML parser's words in plain ones: "invalid u64" is "expected a whole number".
fn plain_words(message: &str) -> String {
    let replaced = [
        ("invalid u64", "expected a whole number, 0 or more"),
        ("invalid u32", "expected a whole number, 0 or more"),
        ("invalid i64", "expected a whole number"),
        ("invalid f64", "expected a number"),
        ("invalid bool", "expected true or false"),
        ("expected u64", "expected a whole number, 0 or more"),
        ("expected u32", "expected a whole number, 0 or more"),
        ("expected f64", "expected a number"),
        ("expected a boolean", "expected true or false"),
        (
            "expected a sequence",
            "expected a list ([a, b] or one `- item` per line)",
        ),
        (
            "expected a map",
            "expected a mapping (`key: value` lines or { key: value })",
        ),
        ("expected struct ", "expected a mapping: "),
    ];
    let mut out = message.to_string();
    for (from, to) in replaced {
        out = out.replace(from, to);
    }
    if let Some(field) = out
        .strip_prefix("missing field `")
        .and_then(|m| m.strip_suffix('`'))
    {
        out = format!("missing `{field}`, which is required here");
    }
    out
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
        // `Spanned` values show up as a `.value` step: drop exactly that step (not the
        // `.value` in `.value_env`).
        let key = key_path
            .map(|k| {
                k.split('.')
                    .filter(|step| *step != "value")
                    .collect::<Vec<_>>()
                    .join(".")
            })
            .filter(|k| !k.is_empty() && k != ".")
            .unwrap_or_else(|| "(document)".into());
        let message = e.without_snippet().to_string();
        let message = message
            .rsplit_once(" at line ")
            .map(|(m, _)| m.to_string())
            .unwrap_or(message);
        // A missing field is noticed where its mapping ends: point at the mapping instead.
        let (line, column) = if message.starts_with("missing field") {
            locate::locate(text, &key).unwrap_or((line, column))
        } else {
            (line, column)
        };
        let message = did_you_mean(&message).unwrap_or_else(|| plain_words(&message));
        Problem {
            file: file.to_string(),
            line,
            column,
            key,
            message,
            snippet: None,
        }
    })
}

/// serde's "unknown field `tiemout`, expected one of …" (or variant) with the nearest expected
/// name suggested first, when one is close enough to be a typo.
fn did_you_mean(message: &str) -> Option<String> {
    let (head, expected) = message.split_once(", expected ")?;
    let unknown = head
        .strip_prefix("unknown field `")
        .or_else(|| head.strip_prefix("unknown variant `"))?
        .strip_suffix('`')?;
    let names = expected
        .trim_start_matches("one of ")
        .split([',', ' '])
        .map(|n| n.trim_matches(|c| c == '`' || c == ' '))
        .filter(|n| !n.is_empty() && *n != "or");
    let names: Vec<&str> = names.collect();
    let best = suggest(unknown, &names)?;
    Some(format!(
        "{head} — did you mean `{best}`? (expected {expected})"
    ))
}

/// The name in `names` nearest to `unknown`, when it is close enough to be a typo.
pub(super) fn suggest<'a>(unknown: &str, names: &[&'a str]) -> Option<&'a str> {
    let (best, distance) = names
        .iter()
        .map(|n| (*n, strsim::levenshtein(unknown, n)))
        .min_by_key(|(_, d)| *d)?;
    (distance <= (unknown.len() / 3).max(1)).then_some(best)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::*;

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
        let text = include_str!("../../config/stagegate.yaml").replace(
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
        let text = include_str!("../../config/stagegate.yaml").replace(
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
        // Each signal's range, resolved once, is the one its name sets; an event's custom
        // signal is checked by its name alone, exactly as the signal would be.
        let plan = parse(
            "signals:\n  quality: { range: [0.2, 0.9] }\n  latency_ms: { range: [1, 50] }\n  tokens: { range: [0, 10] }\n",
        )
        .expect("valid");
        assert_eq!(plan.ranges.range(&Signal::Quality), (0.2, 0.9));
        assert_eq!(plan.ranges.range(&Signal::LatencyMs), (1.0, 50.0));
        assert_eq!(plan.ranges.range(&Signal::CostUsd), (0.0, 1_000.0));
        for (name, x) in [
            ("tokens", 5.0),
            ("tokens", 11.0),
            ("other", 1e10),
            ("other", -5.0),
        ] {
            assert_eq!(
                plan.ranges.check_custom(name, x),
                plan.ranges.check(&Signal::Custom(name.into()), x),
                "{name} {x}"
            );
        }
        assert!(plan.ranges.check_custom("tokens", 11.0).is_err());
        let numeric = [Signal::Quality, Signal::LatencyMs, Signal::CostUsd];
        for values in [
            [Some(0.5), Some(10.0), Some(1.0)],
            [None, Some(60.0), None],
            [Some(0.1), Some(10.0), None],
            [None, None, Some(f64::INFINITY)],
            [Some(0.95), Some(60.0), None],
        ] {
            let one_by_one = values
                .iter()
                .zip(&numeric)
                .filter_map(|(x, signal)| x.map(|x| plan.ranges.check(signal, x)))
                .find(Result::is_err)
                .unwrap_or(Ok(()));
            assert_eq!(plan.ranges.check_numeric(values), one_by_one, "{values:?}");
        }
        assert!(plan.ranges.check(&Signal::Quality, 0.95).is_err());
    }

    #[test]
    fn policy_diff_names_each_change_and_which_reset_evidence() {
        let text = include_str!("../../config/stagegate.yaml");
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

    const GATEWAY: &str = include_str!("../../config/examples/litellm-gateway.yaml");

    #[test]
    fn the_gateway_example_takes_three_signals_from_prometheus() {
        let plan = parse(GATEWAY).expect("the example validates");
        assert_eq!(plan.sources.len(), 1);
        assert_eq!(plan.sources[0].url, SourceUrl::Env("PROMETHEUS_URL".into()));
        let r = &plan.rollouts[0];
        let sourced: Vec<&str> = r.sourced.iter().map(|s| s.signal.name()).collect();
        assert_eq!(sourced, ["fallback", "latency_ms", "cost_usd"]);
        assert!(
            r.source_of(&Signal::Quality).is_none(),
            "quality stays pushed"
        );
        assert!(r.policy_terms().contains_key("sources.latency_ms"));
        assert!(term_resets_evidence("sources.latency_ms"));
    }

    #[test]
    fn source_mistakes_are_named_where_they_are() {
        let cases: [(&str, &str, &str); 8] = [
            (
                "source: gateway\n    events",
                "source: gatewy\n    events",
                "unknown source `gatewy`; did you mean `gateway`?",
            ),
            (
                "team=\"{{segment}}\"}'\n    total",
                "team=\"{{segmnt}}\"}'\n    total",
                "unknown template `{{segmnt}}`",
            ),
            (
                "'litellm_requests_metric_total{model=\"{{version}}\",team=\"{{segment}}\"}'\n    version_labels: { v7: support-reply-v7, v8: support-reply-v8 }\n    segment_labels: { internal: support-ops, everyone: default }\n  # Quantiles",
                "'litellm_requests_metric_total{team=\"{{segment}}\"}'\n    version_labels: { v7: support-reply-v7, v8: support-reply-v8 }\n    segment_labels: { internal: support-ops, everyone: default }\n  # Quantiles",
                "put `{{version}}` in a label matcher",
            ),
            (
                "{ signal: latency_ms, stat: p95,",
                "{ signal: latency_ms, stat: mean,",
                "comes from a histogram: gate a quantile",
            ),
            (
                "    variance: 0.0004\n",
                "",
                "a relative check on `cost_usd` needs its spread",
            ),
            (
                "    unit: 1000\n",
                "    unit: -1\n",
                "expected a positive factor",
            ),
            (
                "url_env: PROMETHEUS_URL",
                "url: prometheus:9090",
                "expected an http:// or https:// URL",
            ),
            (
                "segment_labels: { internal: support-ops, everyone: default }\n  # Mean",
                "segment_labels: { internl: support-ops, everyone: default }\n  # Mean",
                "unknown segment `internl`",
            ),
        ];
        for (from, to, expected) in cases {
            assert!(GATEWAY.contains(from), "the example lacks {from:?}");
            let errs = parse(&GATEWAY.replacen(from, to, 1)).expect_err(expected);
            assert!(
                errs.iter().any(|e| e.contains(expected)),
                "{expected:?} not in {errs:#?}"
            );
        }
        // A histogram query for a rate signal, and events/total for a numeric one.
        let swapped = GATEWAY.replacen("  fallback:\n    source", "  review:\n    source", 1);
        let errs =
            parse(&swapped.replacen("  latency_ms:\n    source", "  fallback:\n    source", 1))
                .expect_err("shapes");
        assert!(
            errs.iter()
                .any(|e| e.contains("`fallback` takes `events` and `total`")),
            "{errs:#?}"
        );
    }

    #[test]
    fn shipped_config_is_valid() {
        let text = include_str!("../../config/stagegate.yaml");
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

    #[test]
    fn pagerduty_needs_a_routing_key_variable_and_defaults_its_url() {
        let ok = parse("notifiers: [{ name: pd, kind: pagerduty, routing_key_env: PD_KEY }]\n")
            .expect("valid");
        assert_eq!(ok.notifiers[0].kind, NotifierKind::PagerDuty);
        assert_eq!(ok.notifiers[0].url.as_deref(), Some(PAGERDUTY_EVENTS_URL));
        assert_eq!(ok.notifiers[0].routing_key_env.as_deref(), Some("PD_KEY"));
        let missing = parse("notifiers: [{ name: pd, kind: pagerduty }]\n").unwrap_err();
        assert!(
            missing
                .iter()
                .any(|p| p.contains("notifiers[0].routing_key_env: a pagerduty notifier needs")),
            "{missing:?}"
        );
        let stray = parse(
            "notifiers: [{ name: t, kind: teams, url: \"http://x/\", routing_key_env: K }]\n",
        )
        .unwrap_err();
        assert!(
            stray
                .iter()
                .any(|p| p.contains("only a pagerduty notifier")),
            "{stray:?}"
        );
        let teams_url = parse("notifiers: [{ name: t, kind: teams }]\n").unwrap_err();
        assert!(
            teams_url
                .iter()
                .any(|p| p.contains("exactly one of `url` and `url_env`")),
            "{teams_url:?}"
        );
    }

    #[test]
    fn a_misspelt_key_gets_the_nearest_one_suggested() {
        let problems = parse("server: { tick: 5s, retension: 7d }\n").unwrap_err();
        assert!(
            problems
                .iter()
                .any(|p| p.contains("unknown field `retension` — did you mean `retention`?")),
            "{problems:?}"
        );
        // Nothing near enough: no guess.
        let problems = parse("server: { zzzzzz: 1 }\n").unwrap_err();
        assert!(
            problems.iter().all(|p| !p.contains("did you mean")),
            "{problems:?}"
        );
    }

    #[test]
    fn a_relative_limit_a_bounded_statistic_cannot_reach_is_refused() {
        let config = |gate: &str| {
            format!(
                "segments: {{ everyone: {{}} }}\nworkflows: {{ w: {{ stable: a, versions: [a, b] }} }}\nrollouts:\n  - {{ name: r, workflow: w, baseline: a, candidate: b, segments: [everyone], stages: [{{ name: s, traffic: {{ everyone: 10 }} }}], gates: [{gate}], lane: {{ owner: o, repair: x }} }}\n"
            )
        };
        let problems = parse(&config(
            "{ signal: quality, stat: mean, max_drop: 3, on_breach: rollback }",
        ))
        .unwrap_err();
        assert!(
            problems
                .iter()
                .any(|p| p.contains("max_drop 3 can never be breached")),
            "{problems:?}"
        );
        let problems = parse(&config(
            "{ signal: fallback, stat: rate, max_increase: 1.5, on_breach: rollback }",
        ))
        .unwrap_err();
        assert!(
            problems
                .iter()
                .any(|p| p.contains("max_increase 1.5 can never be breached")),
            "{problems:?}"
        );
        parse(&config(
            "{ signal: quality, stat: mean, max_drop: 0.03, on_breach: rollback }",
        ))
        .expect("a sensible drop is fine");
    }
}
