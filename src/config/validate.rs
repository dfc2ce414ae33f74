//! Validation: the raw model into a [`Plan`], resolving references and parsing durations,
//! percentages, stats and thresholds; every problem is collected, located, and reported at once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_saphyr::Spanned;
use sha2::{Digest, Sha256};

use super::Problem;
use super::raw::*;
use crate::core::clock::{Millis, parse_duration};
use crate::plan::*;

/// "unknown WHAT `name`", with the nearest of `known` suggested when it is close enough to be
/// a typo, else `hint`.
fn unknown<'a>(what: &str, name: &str, known: impl Iterator<Item = &'a str>, hint: &str) -> String {
    let known: Vec<&str> = known.collect();
    match super::suggest(name, &known) {
        Some(best) => format!("unknown {what} `{name}`; did you mean `{best}`?"),
        None => format!("unknown {what} `{name}`; {hint}"),
    }
}

/// Collects every semantic problem while building the plan.
pub(super) struct Validator {
    pub(super) file: String,
    pub(super) problems: Vec<Problem>,
    /// The signals' plausible ranges, once read: limits outside them are refused.
    pub(super) ranges: Option<SignalRanges>,
}

impl Validator {
    fn report<T>(&mut self, at: &Spanned<T>, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.clone(),
            line: at.referenced.line(),
            column: at.referenced.column(),
            key: key.into(),
            message: message.into(),
            snippet: None,
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

    pub(super) fn plan(&mut self, path: &Path, text: &str, raw: RawConfig) -> Plan {
        let hash = Sha256::digest(text.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let server = self.server(&raw.server);
        let auth = self.auth(raw.auth);
        let notifiers = self.notifiers(&raw.notifiers);
        let ranges = self.signal_ranges(&raw.signals);
        self.ranges = Some(ranges.clone());
        let sources = self.sources(&raw.sources);
        let versions: BTreeSet<&str> = raw
            .workflows
            .values()
            .flat_map(|w| w.value.versions.iter().map(String::as_str))
            .collect();
        let signal_sources = self.signal_sources(&raw.signals, &sources, &raw.segments, &versions);
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
                        tasks_per_hour: seg.value.tasks_per_hour,
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
            if let Some(rate) = seg.value.tasks_per_hour {
                if !(rate.is_finite() && rate > 0.0) {
                    self.report(
                        seg,
                        format!("segments.{name}.tasks_per_hour"),
                        format!(
                            "{rate} is not a rate; expected a positive number of tasks per hour"
                        ),
                    );
                }
            }
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
            if let Some(mut plan) = self.rollout(&key, rollout, &segments, &workflows, &notifiers) {
                plan.sourced = self.sourced(&key, rollout, &plan.gates, &signal_sources);
                rollouts.push(plan);
            }
        }
        for (name, w) in &raw.workflows {
            for (i, g) in w.value.guards.iter().enumerate() {
                if signal_sources.contains_key(&g.value.signal.value) {
                    self.report(
                        &g.value.signal,
                        format!("workflows.{name}.guards[{i}].signal"),
                        format!("`{}` comes from a metrics source; a guard reads pushed events only (a source's queries are per rollout arm)", g.value.signal.value),
                    );
                }
            }
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
            sources,
            ranges,
            workflows,
            rollouts,
        }
    }

    /// `sources:` — each a Prometheus with a URL (or the variable holding one) and a timeout.
    fn sources(&mut self, raw: &BTreeMap<String, Spanned<RawSource>>) -> Vec<SourcePlan> {
        let mut out = Vec::new();
        for (name, spec) in raw {
            let key = format!("sources.{name}");
            self.name(spec, &key, name);
            let r = &spec.value;
            if r.kind.value != "prometheus" {
                self.report(
                    &r.kind,
                    format!("{key}.kind"),
                    format!(
                        "unknown source kind `{}`; expected `prometheus`",
                        r.kind.value
                    ),
                );
                continue;
            }
            let url = match (&r.url, &r.url_env) {
                (Some(u), None) => {
                    if !(u.value.starts_with("http://") || u.value.starts_with("https://")) {
                        self.report(
                            u,
                            format!("{key}.url"),
                            "expected an http:// or https:// URL, e.g. http://127.0.0.1:9090",
                        );
                        continue;
                    }
                    SourceUrl::Literal(u.value.trim_end_matches('/').to_string())
                }
                (None, Some(e)) if is_env_name(&e.value) => SourceUrl::Env(e.value.clone()),
                (None, Some(e)) => {
                    self.report(
                        e,
                        format!("{key}.url_env"),
                        "expected an environment variable name such as PROMETHEUS_URL",
                    );
                    continue;
                }
                _ => {
                    self.report(spec, key.clone(), "set exactly one of `url` and `url_env`");
                    continue;
                }
            };
            let timeout = self.duration(&r.timeout, &format!("{key}.timeout"), 5_000);
            if let Some(t) = r
                .timeout
                .as_ref()
                .filter(|_| !(100..=60_000).contains(&timeout))
            {
                self.report(t, format!("{key}.timeout"), "expected 100ms to 60s");
                continue;
            }
            out.push(SourcePlan {
                name: name.clone(),
                url,
                timeout,
            });
        }
        out
    }

    /// `signals.NAME.source` and its queries: one shape that fits the signal, known templates,
    /// label maps over declared segments and versions.
    fn signal_sources(
        &mut self,
        raw: &BTreeMap<String, Spanned<RawSignal>>,
        sources: &[SourcePlan],
        segments: &BTreeMap<String, Spanned<RawSegment>>,
        versions: &BTreeSet<&str>,
    ) -> BTreeMap<String, SignalSource> {
        let mut out = BTreeMap::new();
        for (name, spec) in raw {
            let key = format!("signals.{name}");
            let r = &spec.value;
            let queries = [
                ("events", &r.events),
                ("total", &r.total),
                ("histogram", &r.histogram),
                ("sum", &r.sum),
                ("count", &r.count),
                ("sum_squares", &r.sum_squares),
            ];
            let Some(source) = &r.source else {
                for (field, q) in &queries {
                    if let Some(q) = q {
                        self.report(
                            q,
                            format!("{key}.{field}"),
                            "a query needs `source`: the metrics source it runs against",
                        );
                    }
                }
                continue;
            };
            let Some(signal) = Signal::parse(name) else {
                continue; // reported with the ranges
            };
            if !sources.iter().any(|s| s.name == source.value) {
                let names: Vec<&str> = sources.iter().map(|s| s.name.as_str()).collect();
                self.report(
                    source,
                    format!("{key}.source"),
                    format!(
                        "unknown source `{}`{}",
                        source.value,
                        super::suggest(&source.value, &names)
                            .map(|s| format!("; did you mean `{s}`?"))
                            .unwrap_or_else(|| "; declare it under `sources:`".into())
                    ),
                );
                continue;
            }
            let mut ok = true;
            for (field, q) in &queries {
                if let Some(q) = q {
                    if let Err(e) = check_template(&q.value) {
                        self.report(q, format!("{key}.{field}"), e);
                        ok = false;
                    }
                }
            }
            let text = |q: &Option<Spanned<String>>| q.as_ref().map(|q| q.value.clone());
            let query = match ((&r.events, &r.total), &r.histogram, (&r.sum, &r.count)) {
                ((Some(events), Some(total)), None, (None, None)) if r.sum_squares.is_none() => {
                    SourceQuery::Counts {
                        events: events.value.clone(),
                        total: total.value.clone(),
                    }
                }
                ((None, None), Some(h), (None, None)) if r.sum_squares.is_none() => {
                    SourceQuery::Histogram {
                        buckets: h.value.clone(),
                    }
                }
                ((None, None), None, (Some(sum), Some(count))) => SourceQuery::Sums {
                    sum: sum.value.clone(),
                    count: count.value.clone(),
                    sum_squares: text(&r.sum_squares),
                    variance: r.variance.as_ref().map(|v| v.value),
                },
                _ => {
                    self.report(spec, key.clone(), "give one shape of query: `events` and `total` (a rate), `histogram` (quantiles), or `sum` and `count` (a mean, with `sum_squares` or `variance` for relative checks)");
                    continue;
                }
            };
            let shape_fits = match &query {
                SourceQuery::Counts { .. } => signal.is_rate(),
                _ => !signal.is_rate(),
            };
            if !shape_fits {
                let expected = if signal.is_rate() {
                    "`events` and `total` (a rate signal counts hits out of tasks)"
                } else {
                    "`histogram`, or `sum` and `count` (`events`/`total` feed the rate signals fallback and review)"
                };
                self.report(spec, key.clone(), format!("`{name}` takes {expected}"));
                continue;
            }
            if let Some(v) = &r.variance {
                if !matches!(query, SourceQuery::Sums { .. }) {
                    self.report(
                        v,
                        format!("{key}.variance"),
                        "only a `sum`/`count` signal has a variance bound",
                    );
                    ok = false;
                } else if !(v.value.is_finite() && v.value > 0.0) {
                    self.report(v, format!("{key}.variance"), "expected a positive number: an upper bound on one task's variance, in the signal's unit squared");
                    ok = false;
                }
            }
            let unit = match &r.unit {
                None => 1.0,
                Some(u) if u.value.is_finite() && u.value > 0.0 && u.value <= 1e9 => u.value,
                Some(u) => {
                    self.report(
                        u,
                        format!("{key}.unit"),
                        "expected a positive factor such as 1000 (seconds → milliseconds)",
                    );
                    ok = false;
                    1.0
                }
            };
            for seg in r.segment_labels.keys() {
                if !segments.contains_key(seg) {
                    self.report(
                        spec,
                        format!("{key}.segment_labels.{seg}"),
                        format!("unknown segment `{seg}`; declare it under `segments:`"),
                    );
                    ok = false;
                }
            }
            for version in r.version_labels.keys() {
                if !versions.contains(version.as_str()) {
                    self.report(
                        spec,
                        format!("{key}.version_labels.{version}"),
                        format!("unknown version `{version}`; no workflow declares it"),
                    );
                    ok = false;
                }
            }
            if ok {
                out.insert(
                    name.clone(),
                    SignalSource {
                        signal,
                        source: source.value.clone(),
                        query,
                        unit,
                        segment_labels: r.segment_labels.clone(),
                        version_labels: r.version_labels.clone(),
                    },
                );
            }
        }
        out
    }

    /// The sources of the signals a rollout's gates read, where the gates' stats fit them.
    fn sourced(
        &mut self,
        key: &str,
        raw: &Spanned<RawRollout>,
        gates: &[GateSpec],
        signal_sources: &BTreeMap<String, SignalSource>,
    ) -> Vec<SignalSource> {
        let mut out: Vec<SignalSource> = Vec::new();
        for (i, gate) in gates.iter().enumerate() {
            let Some(src) = signal_sources.get(gate.signal.name()) else {
                continue;
            };
            let at = &raw.value.gates[i];
            let gkey = format!("{key}.gates[{i}]");
            match &src.query {
                SourceQuery::Histogram { .. } if !matches!(gate.stat, Stat::Quantile(_)) => {
                    self.report(&at.value.stat, format!("{gkey}.stat"), format!("`{}` comes from a histogram: gate a quantile (p50..p99), or give `sum` and `count` for a mean", gate.signal.name()));
                    continue;
                }
                SourceQuery::Sums {
                    sum_squares,
                    variance,
                    ..
                } => {
                    if gate.stat != Stat::Mean {
                        self.report(&at.value.stat, format!("{gkey}.stat"), format!("`{}` comes from `sum` and `count`: only its mean can be gated (a quantile needs `histogram`)", gate.signal.name()));
                        continue;
                    }
                    if sum_squares.is_none()
                        && variance.is_none()
                        && gate.checks.iter().any(Check::is_relative)
                    {
                        self.report(at, gkey.clone(), format!("a relative check on `{}` needs its spread: add `sum_squares` (a counter of squared values) or `variance` (an upper bound per task) to `signals.{}`; without either only `min`/`max` apply", gate.signal.name(), gate.signal.name()));
                        continue;
                    }
                }
                _ => {}
            }
            if !out.iter().any(|s| s.signal == src.signal) {
                out.push(src.clone());
            }
        }
        out
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
        SignalRanges::new(overrides)
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
        let store_cache_bytes = match &raw.store_cache_bytes {
            Some(b) if b.value < 1024 * 1024 => {
                self.report(
                    b,
                    "server.store_cache_bytes",
                    "must be at least 1048576 (1 MiB)",
                );
                1024 * 1024
            }
            Some(b) => usize::try_from(b.value).unwrap_or(usize::MAX),
            None => crate::plan::DEFAULT_STORE_CACHE_BYTES,
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
        let store = self.store(raw.store.as_ref());
        ServerPlan {
            store,
            listen,
            data_dir,
            tick: tick.max(1),
            dedupe_window,
            max_body_bytes,
            max_inflight_body_bytes,
            store_cache_bytes,
            max_connections,
            header_timeout: header_timeout.max(100),
            idle_timeout: idle_timeout.max(100),
            retention: retention.max(1_000),
        }
    }

    fn store(&mut self, raw: Option<&Spanned<RawStore>>) -> StorePlan {
        let Some(raw) = raw else {
            return StorePlan::Embedded;
        };
        let url_env = raw.value.url_env.as_ref();
        match raw.value.kind.value.as_str() {
            "embedded" => {
                if let Some(u) = url_env {
                    self.report(
                        u,
                        "server.store.url_env",
                        "only a `kind: postgres` store has a url_env",
                    );
                }
                StorePlan::Embedded
            }
            "postgres" => match url_env {
                Some(u) if is_env_name(&u.value) => StorePlan::Postgres {
                    url_env: u.value.clone(),
                },
                Some(u) => {
                    self.report(
                        u,
                        "server.store.url_env",
                        "expected an environment variable name such as STAGEGATE_DATABASE_URL",
                    );
                    StorePlan::Embedded
                }
                None => {
                    self.report(raw, "server.store.url_env", "a postgres store needs `url_env`: the environment variable holding its connection URL (postgres://user@host:5432/db), e.g. `url_env: STAGEGATE_DATABASE_URL`");
                    StorePlan::Embedded
                }
            },
            other => {
                self.report(
                    &raw.value.kind,
                    "server.store.kind",
                    format!(
                        "unknown store kind `{other}`: expected `embedded` (default) or `postgres`"
                    ),
                );
                StorePlan::Embedded
            }
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
                snippet: None,
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
                "pagerduty" => NotifierKind::PagerDuty,
                "teams" => NotifierKind::Teams,
                other => {
                    self.report(
                        &n.value.kind,
                        format!("{key}.kind"),
                        format!(
                            "unknown kind `{other}`; expected webhook, slack, pagerduty or teams"
                        ),
                    );
                    continue;
                }
            };
            let (mut url, url_env) = (n.value.url.clone(), n.value.url_env.clone());
            match kind {
                NotifierKind::PagerDuty => {
                    if url.is_some() && url_env.is_some() {
                        self.report(n, key.clone(), "set at most one of `url` and `url_env` (the default is PagerDuty's Events API v2)");
                    }
                    if url.is_none() && url_env.is_none() {
                        url = Some(PAGERDUTY_EVENTS_URL.to_string());
                    }
                    match &n.value.routing_key_env {
                        Some(var) if is_env_name(var) => {}
                        Some(_) => self.report(n, format!("{key}.routing_key_env"), "expected an environment variable name"),
                        None => self.report(n, format!("{key}.routing_key_env"), "a pagerduty notifier needs `routing_key_env`: the variable holding the service's integration key"),
                    }
                }
                _ => {
                    if url.is_some() == url_env.is_some() {
                        self.report(n, key.clone(), "set exactly one of `url` and `url_env`");
                    }
                    if n.value.routing_key_env.is_some() {
                        self.report(
                            n,
                            format!("{key}.routing_key_env"),
                            "only a pagerduty notifier has a routing key",
                        );
                    }
                }
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
                url,
                url_env,
                routing_key_env: n.value.routing_key_env.clone(),
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
        self.arms(key, r, workflows);
        let rollout_segments = self.rollout_segments(key, r, segments);
        if r.segments.is_empty() {
            self.report(raw, format!("{key}.segments"), "list at least one segment");
        }
        if r.stages.is_empty() {
            self.report(raw, format!("{key}.stages"), "list at least one stage");
        }
        let stages = self.stages(key, r);
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
        let versions = workflows
            .iter()
            .find(|w| w.name == r.workflow.value)
            .map(|w| w.versions.clone())
            .unwrap_or_default();
        for (i, g) in gates.iter().enumerate() {
            let Some(f) = &g.fallback else { continue };
            let problem = if f.version == r.candidate.value {
                Some("the fallback must be another version than the candidate".to_string())
            } else if !versions.contains(&f.version) {
                Some(format!(
                    "unknown fallback version `{}` of workflow `{}`; expected one of {versions:?}",
                    f.version, r.workflow.value
                ))
            } else {
                None
            };
            if let Some(message) = problem {
                self.report(
                    &r.gates[i],
                    format!("{key}.gates[{i}].on_breach.fallback"),
                    message,
                );
            }
        }
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
        let lane = self.lane(key, &r.lane.value, notifiers);
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
            lane,
            sourced: Vec::new(),
        })
    }

    /// The arms: a declared workflow, and a baseline and candidate among its versions.
    fn arms(&mut self, key: &str, r: &RawRollout, workflows: &[WorkflowPlan]) {
        let workflow = workflows.iter().find(|w| w.name == r.workflow.value);
        match workflow {
            None => self.report(
                &r.workflow,
                format!("{key}.workflow"),
                unknown(
                    "workflow",
                    &r.workflow.value,
                    workflows.iter().map(|w| w.name.as_str()),
                    "declare it under `workflows:`",
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
    }

    /// The rollout's segments, resolved, each once.
    fn rollout_segments(
        &mut self,
        key: &str,
        r: &RawRollout,
        segments: &BTreeMap<String, Segment>,
    ) -> Vec<Segment> {
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
                    unknown(
                        "segment",
                        &s.value,
                        segments.keys().map(String::as_str),
                        "declare it under `segments:`",
                    ),
                ),
            }
        }
        rollout_segments
    }

    /// The stages: traffic per segment (percentages, holdout, only growing), approval, names.
    fn stages(&mut self, key: &str, r: &RawRollout) -> Vec<StagePlan> {
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
                            snippet: None,
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
        stages
    }

    /// The lane: its notifiers exist; the re-enable rule's durations parse.
    fn lane(&mut self, key: &str, lane: &RawLane, notifiers: &[NotifierPlan]) -> LanePlan {
        for (i, n) in lane.notify.iter().enumerate() {
            if !notifiers.iter().any(|x| x.name == n.value) {
                self.report(
                    n,
                    format!("{key}.lane.notify[{i}]"),
                    unknown(
                        "notifier",
                        &n.value,
                        notifiers.iter().map(|x| x.name.as_str()),
                        "declare it under `notifiers:`",
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
            affected_reviewed: lane.reenable.affected_reviewed,
        };
        LanePlan {
            owner: lane.owner.clone(),
            affected_systems: lane.affected_systems.clone(),
            notify: lane.notify.iter().map(|n| n.value.clone()).collect(),
            repair: lane.repair.clone(),
            reenable,
        }
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
                if let (false, Some(ranges)) = (bounded, &self.ranges) {
                    let (lo, hi) = ranges.range(&signal);
                    if v.is_finite() && !(lo..=hi).contains(&v) {
                        self.report(
                            raw,
                            key,
                            format!(
                                "threshold {v} lies outside `{}`'s plausible range {lo}..{hi}: it could never decide (set `signals.{}.range` if values beyond it are real)",
                                signal.name(),
                                signal.name()
                            ),
                        );
                    }
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
            // On a 0..1 statistic a change of 1 or more can never happen: such a check could
            // never be breached, which would switch it off without a word.
            if bounded && matches!(check, Check::MaxIncrease(_) | Check::MaxDrop(_)) && value >= 1.0
            {
                self.report(
                    raw,
                    key,
                    format!(
                        "{} {value} can never be breached: {} moves between 0 and 1; expected a change below 1, e.g. 0.03",
                        check.kind(),
                        stat.name()
                    ),
                );
            }
            if let (false, Some(ranges), Check::MaxIncrease(_) | Check::MaxDrop(_)) =
                (bounded, &self.ranges, check)
            {
                let (lo, hi) = ranges.range(&signal);
                if value >= hi - lo {
                    self.report(
                        raw,
                        key,
                        format!(
                            "{} {value} can never be breached: `{}` moves within {lo}..{hi}",
                            check.kind(),
                            signal.name()
                        ),
                    );
                }
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
        const EXPECTED: &str =
            "expected hold, narrow, read_only, rollback, pause or { fallback: VERSION }";
        let mut fallback = None;
        let on_breach = match (&g.on_breach, guard) {
            (None, true) => Action::ReadOnly,
            (None, false) => {
                self.report(
                    raw,
                    format!("{key}.on_breach"),
                    format!("missing; {EXPECTED}"),
                );
                Action::Hold
            }
            (Some(a), _) => match &a.value {
                RawBreach::Name(name) => match Action::parse_breach(name) {
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
                        self.report(
                            a,
                            format!("{key}.on_breach"),
                            unknown(
                                "action",
                                name,
                                ["hold", "narrow", "read_only", "rollback", "pause"].into_iter(),
                                EXPECTED,
                            ),
                        );
                        Action::Hold
                    }
                },
                RawBreach::Fallback(_) if guard => {
                    self.report(
                        a,
                        format!("{key}.on_breach"),
                        "a guard's breach always switches the workflow to read_only",
                    );
                    Action::ReadOnly
                }
                RawBreach::Fallback(f) => {
                    let read_only = match f.mode.as_deref() {
                        None | Some("full") => false,
                        Some("read_only") => true,
                        Some(other) => {
                            self.report(
                                a,
                                format!("{key}.on_breach.mode"),
                                format!("unknown mode `{other}`; expected full or read_only"),
                            );
                            false
                        }
                    };
                    fallback = Some(FallbackPlan {
                        version: f.fallback.clone(),
                        read_only,
                    });
                    Action::Fallback
                }
            },
        };
        let observe = match &g.mode {
            None => false,
            Some(m) if m.value == "enforce" => false,
            Some(m) if m.value == "observe" && !guard => true,
            Some(m) => {
                self.report(
                    m,
                    format!("{key}.mode"),
                    if guard {
                        format!("`{}`: a guard always enforces", m.value)
                    } else {
                        format!(
                            "unknown gate mode `{}`; expected enforce or observe",
                            m.value
                        )
                    },
                );
                false
            }
        };
        let scope = match &g.scope {
            None => Scope::Segment,
            Some(s) if s.value == "segment" => Scope::Segment,
            Some(s) if s.value == "rollout" => Scope::Rollout,
            Some(s) => {
                self.report(
                    s,
                    format!("{key}.scope"),
                    format!("unknown scope `{}`; expected segment or rollout", s.value),
                );
                Scope::Segment
            }
        };
        Some(GateSpec {
            observe,
            fallback,
            scope,
            name: format!("{}_{}", signal.name(), stat.name()),
            signal,
            stat,
            checks,
            on_breach,
        })
    }
}

/// An environment variable name: letters, digits and `_`, not starting with a digit.
fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}
