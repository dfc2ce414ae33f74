//! `stagegate simulate`: the real decision core on a virtual clock and synthetic traffic.
//!
//! A scenario names traffic sources (attributes and tasks per minute), how the baseline and
//! the candidate behave, and incidents that change the candidate's behaviour at a given time.
//! Every task is assigned through the real routing snapshot and reported as an event into the
//! real engine; every tick the real `assess` decides. The report is the decision timeline and the
//! blast radius: tasks a bad candidate served in full mode before the controller contained it.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;

use serde::Deserialize;

use crate::core::clock::{Millis, human_duration, parse_duration};
use crate::core::engine::Engine;
use crate::core::event::{Mode, Review, TaskEvent};
use crate::core::rollout::{Command, Phase};
use crate::core::stats::Rng;
use crate::core::threshold::ThresholdPolicy;
use crate::plan::Action;
use crate::plan::Plan;
use crate::plan::{GateSpec, Signal, Stat};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// The rollout to watch; defaults to the config's first.
    pub rollout: Option<String>,
    /// Virtual time to run, e.g. `6h`.
    pub duration: String,
    /// How often the controller evaluates; defaults to the config's `server.tick`.
    pub tick: Option<String>,
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// An operator promotes whenever the rollout waits for manual approval.
    #[serde(default)]
    pub approve_manual: bool,
    pub traffic: Vec<Source>,
    pub baseline: Behaviour,
    pub candidate: Behaviour,
    #[serde(default)]
    pub incidents: Vec<Incident>,
    /// Share of tasks that get a reviewer's verdict (approved or rejected); default 0.5.
    #[serde(default)]
    pub reviewed: Option<f64>,
}

fn default_seed() -> u64 {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub name: String,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    pub per_minute: f64,
    /// How the baseline behaves for this source's tasks, over the scenario's `baseline`.
    #[serde(default)]
    pub baseline: Behaviour,
    /// How the candidate behaves for this source's tasks, over the scenario's `candidate`.
    #[serde(default)]
    pub candidate: Behaviour,
}

/// How a version behaves; absent fields keep their previous value.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Behaviour {
    pub quality: Option<f64>,
    pub latency_ms: Option<f64>,
    pub cost_usd: Option<f64>,
    pub fallback_rate: Option<f64>,
    pub reject_rate: Option<f64>,
}

impl Behaviour {
    /// The true value of `stat` of `signal` for tasks with this behaviour, as [`synthesize`]
    /// draws them (`None`: the behaviour does not produce the signal).
    fn truth(&self, signal: &Signal, stat: Stat) -> Option<f64> {
        // Latency is lognormal with σ = 0.25 around `latency_ms`; cost uniform on ±20 %.
        const LATENCY_SIGMA: f64 = 0.25;
        match (signal, stat) {
            (Signal::Quality, Stat::Mean) => self.quality,
            (Signal::LatencyMs, Stat::Mean) => self
                .latency_ms
                .map(|l| l * (LATENCY_SIGMA * LATENCY_SIGMA / 2.0).exp()),
            (Signal::LatencyMs, Stat::Quantile(q)) => self
                .latency_ms
                .map(|l| l * (LATENCY_SIGMA * normal_quantile(q)).exp()),
            (Signal::CostUsd, Stat::Mean) => self.cost_usd,
            (Signal::CostUsd, Stat::Quantile(q)) => self.cost_usd.map(|c| c * (0.8 + 0.4 * q)),
            (Signal::Fallback, _) => self.fallback_rate,
            (Signal::Review, _) => self.reject_rate,
            _ => None,
        }
    }

    /// Whether tasks with this behaviour breach any of `gates` against `baseline`'s: the
    /// candidate is truly worse than the policy allows, so each task it serves in full mode
    /// counts as exposure.
    fn breaches(&self, gates: &[GateSpec], baseline: &Behaviour) -> bool {
        gates.iter().filter(|g| !g.observe).any(|g| {
            let Some(c) = self.truth(&g.signal, g.stat) else {
                return false;
            };
            let b = baseline.truth(&g.signal, g.stat);
            g.checks.iter().any(|check| {
                check.limit(b).is_some_and(|limit| {
                    if check.breach_is_below() {
                        c < limit - 1e-12
                    } else {
                        c > limit + 1e-12
                    }
                })
            })
        })
    }

    fn overlay(&self, over: &Behaviour) -> Behaviour {
        Behaviour {
            quality: over.quality.or(self.quality),
            latency_ms: over.latency_ms.or(self.latency_ms),
            cost_usd: over.cost_usd.or(self.cost_usd),
            fallback_rate: over.fallback_rate.or(self.fallback_rate),
            reject_rate: over.reject_rate.or(self.reject_rate),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Incident {
    /// When it starts, from the beginning of the run (`2h`).
    pub at: String,
    /// Only tasks from this traffic source are affected; all when absent.
    pub source: Option<String>,
    /// The candidate's new behaviour (a regression, or a recovery).
    #[serde(default)]
    pub candidate: Behaviour,
    /// The baseline's new behaviour: drift that both arms may share.
    #[serde(default)]
    pub baseline: Behaviour,
}

/// Which decision policy a simulation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// stagegate's own: always-valid sequential verdicts.
    Sequential,
    /// A Flagger-style comparator: point estimates over each tick's interval against the
    /// limits, acting after this many failed checks.
    Threshold { failed_checks: u32 },
}

/// Why a scenario cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("scenario: {0}")]
    Parse(String),
    #[error("scenario: {0}")]
    Invalid(String),
}

impl Scenario {
    pub fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        serde_saphyr::from_str(text).map_err(|e| ScenarioError::Parse(e.to_string()))
    }
}

/// The standard normal quantile (Acklam's rational approximation, |error| < 1.2e-9).
fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let tail = |q: f64| {
        let t = (-2.0 * q.ln()).sqrt();
        (((((C[0] * t + C[1]) * t + C[2]) * t + C[3]) * t + C[4]) * t + C[5])
            / ((((D[0] * t + D[1]) * t + D[2]) * t + D[3]) * t + 1.0)
    };
    if p < 0.02425 {
        tail(p)
    } else if p > 1.0 - 0.02425 {
        -tail(1.0 - p)
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// The outcome of a simulation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub seed: u64,
    pub timeline: Vec<String>,
    pub final_phase: Phase,
    pub final_stage: Option<String>,
    pub tasks: u64,
    pub candidate_tasks: u64,
    /// Tasks the candidate served in full mode before containment while it was truly worse
    /// than a gate allows (its behaviour against the same source's baseline).
    pub blast_radius: u64,
    /// From the first such task to containment.
    pub contained_after: Option<Millis>,
    /// Every action the controller (or the simulated operator) took, in order.
    pub actions: Vec<Action>,
    /// Virtual time from the start until the rollout was promoted, if it was.
    pub promoted_after: Option<Millis>,
    /// The controller acted on a breach (narrow, read-only, rollback, pause) before the
    /// candidate had served a single task while truly worse than a gate allows.
    pub false_alarm: bool,
}

/// What many seeds of one scenario did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub runs: usize,
    /// Share of runs where the controller acted on a breach before the candidate was worse.
    pub false_alarms: f64,
    /// Share of runs with at least one automatic action of each kind.
    pub rolled_back: f64,
    pub read_only: f64,
    pub narrowed: f64,
    pub promoted: f64,
    /// Tasks the candidate served while worse than a gate allows, before containment: p50
    /// and p90 over the runs.
    pub exposed_p50: u64,
    pub exposed_p90: u64,
    /// Time from the first bad task to containment, over the runs that contained it.
    pub contain_p50: Option<String>,
    pub contain_p90: Option<String>,
    /// Time from the start to promotion, over the runs that promoted.
    pub promote_p50: Option<String>,
    pub promote_p90: Option<String>,
}

fn quantile<T: Copy + Ord>(mut xs: Vec<T>, q: f64) -> Option<T> {
    xs.sort_unstable();
    let i = ((xs.len() as f64 - 1.0) * q).round() as usize;
    xs.get(i).copied()
}

impl Summary {
    pub fn of(reports: &[Report]) -> Summary {
        let n = reports.len().max(1) as f64;
        let share =
            |a: Action| reports.iter().filter(|r| r.actions.contains(&a)).count() as f64 / n;
        let exposed: Vec<u64> = reports.iter().map(|r| r.blast_radius).collect();
        let contain: Vec<Millis> = reports.iter().filter_map(|r| r.contained_after).collect();
        let promote: Vec<Millis> = reports.iter().filter_map(|r| r.promoted_after).collect();
        Summary {
            runs: reports.len(),
            false_alarms: reports.iter().filter(|r| r.false_alarm).count() as f64 / n,
            rolled_back: share(Action::Rollback),
            read_only: share(Action::ReadOnly),
            narrowed: share(Action::Narrow),
            promoted: reports
                .iter()
                .filter(|r| r.promoted_after.is_some())
                .count() as f64
                / n,
            exposed_p50: quantile(exposed.clone(), 0.5).unwrap_or(0),
            exposed_p90: quantile(exposed, 0.9).unwrap_or(0),
            contain_p50: quantile(contain.clone(), 0.5).map(human_duration),
            contain_p90: quantile(contain, 0.9).map(human_duration),
            promote_p50: quantile(promote.clone(), 0.5).map(human_duration),
            promote_p90: quantile(promote, 0.9).map(human_duration),
        }
    }

    pub fn render(&self) -> String {
        let pct = |x: f64| format!("{:.1}%", x * 100.0);
        let or_dash = |x: &Option<String>| x.clone().unwrap_or_else(|| "-".into());
        format!(
            "{} runs: rolled back {}, read-only {}, narrowed {}, promoted {}; false alarms {}\n\
             exposed tasks (served by a bad candidate before containment): p50 {}, p90 {}\n\
             time to contain: p50 {}, p90 {}\n\
             time to promote: p50 {}, p90 {}\n",
            self.runs,
            pct(self.rolled_back),
            pct(self.read_only),
            pct(self.narrowed),
            pct(self.promoted),
            pct(self.false_alarms),
            self.exposed_p50,
            self.exposed_p90,
            or_dash(&self.contain_p50),
            or_dash(&self.contain_p90),
            or_dash(&self.promote_p50),
            or_dash(&self.promote_p90),
        )
    }
}

/// Runs `runs` seeds of a scenario, from `seed` on, and summarises them (one thread per
/// available core; each run is independent and deterministic).
pub fn run_many(
    plan: &Plan,
    scenario: &Scenario,
    policy: Policy,
    start: Millis,
    runs: u64,
) -> Result<(Vec<Report>, Summary), ScenarioError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let results: Vec<Result<Report, ScenarioError>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    (t..runs)
                        .step_by(threads as usize)
                        .map(|i| {
                            let mut sc = scenario.clone();
                            sc.seed = scenario.seed.wrapping_add(i);
                            (i, run(plan.clone(), &sc, policy, start))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<(u64, Result<Report, ScenarioError>)> = workers
            .into_iter()
            .flat_map(|w| {
                w.join().unwrap_or_else(|_| {
                    vec![(
                        u64::MAX,
                        Err(ScenarioError::Invalid(
                            "a simulation thread panicked".into(),
                        )),
                    )]
                })
            })
            .collect();
        all.sort_by_key(|(i, _)| *i);
        all.into_iter().map(|(_, r)| r).collect()
    });
    let reports = results.into_iter().collect::<Result<Vec<_>, _>>()?;
    let summary = Summary::of(&reports);
    Ok((reports, summary))
}

/// One scenario of a suite under both policies, on the same seeds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SuiteRow {
    pub scenario: String,
    pub sequential: Summary,
    pub threshold: Summary,
}

/// Runs every scenario `runs` times under the sequential and the threshold policy.
pub fn run_suite(
    plan: &Plan,
    scenarios: &[(String, Scenario)],
    failed_checks: u32,
    start: Millis,
    runs: u64,
) -> Result<Vec<SuiteRow>, ScenarioError> {
    scenarios
        .iter()
        .map(|(name, sc)| {
            let (_, sequential) = run_many(plan, sc, Policy::Sequential, start, runs)?;
            let (_, threshold) =
                run_many(plan, sc, Policy::Threshold { failed_checks }, start, runs)?;
            Ok(SuiteRow {
                scenario: name.clone(),
                sequential,
                threshold,
            })
        })
        .collect()
}

/// The suite as a Markdown table: each scenario's sequential and threshold rows side by side.
pub fn render_suite(rows: &[SuiteRow], failed_checks: u32) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| scenario | policy | false alarms | rolled back / read-only / narrowed | promoted | exposed p50 / p90 | contained p50 / p90 | promoted p50 |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    let pct = |x: f64| format!("{:.1} %", x * 100.0);
    let dash = |x: &Option<String>| x.clone().unwrap_or_else(|| "-".into());
    for row in rows {
        for (policy, s) in [
            ("sequential".to_string(), &row.sequential),
            (format!("threshold ({failed_checks})"), &row.threshold),
        ] {
            let _ = writeln!(
                out,
                "| {} | {policy} | {} | {} / {} / {} | {} | {} / {} | {} / {} | {} |",
                row.scenario,
                pct(s.false_alarms),
                pct(s.rolled_back),
                pct(s.read_only),
                pct(s.narrowed),
                pct(s.promoted),
                s.exposed_p50,
                s.exposed_p90,
                dash(&s.contain_p50),
                dash(&s.contain_p90),
                dash(&s.promote_p50),
            );
        }
    }
    let runs = rows.first().map_or(0, |r| r.sequential.runs);
    let _ = writeln!(
        out,
        "\n{runs} seeds per scenario and policy. false alarms: runs where the controller acted on a breach before the candidate served a single task while worse than a gate allows; exposed: tasks it served in full mode while worse, before containment."
    );
    out
}

impl Report {
    pub fn render(&self) -> String {
        let mut out = String::new();
        for line in &self.timeline {
            let _ = writeln!(out, "{line}");
        }
        let _ = writeln!(
            out,
            "\nfinal: {} at stage {}; {} tasks, {} on the candidate",
            self.final_phase.name(),
            self.final_stage.as_deref().unwrap_or("-"),
            self.tasks,
            self.candidate_tasks
        );
        match self.contained_after {
            Some(ms) => {
                let _ = writeln!(
                    out,
                    "blast radius: {} tasks served by the bad candidate in full mode before containment ({} after the first bad task)",
                    self.blast_radius,
                    human_duration(ms)
                );
            }
            None if self.blast_radius == 0 => {
                let _ = writeln!(
                    out,
                    "blast radius: 0 tasks (the candidate never served a task while worse than a gate allows)"
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "blast radius: {} tasks served by the bad candidate in full mode (not contained)",
                    self.blast_radius
                );
            }
        }
        out
    }
}

/// Runs a scenario against a plan, starting the virtual clock at `start`.
pub fn run(
    plan: Plan,
    scenario: &Scenario,
    policy: Policy,
    start: Millis,
) -> Result<Report, ScenarioError> {
    let duration = parse_duration(&scenario.duration).map_err(ScenarioError::Invalid)?;
    let tick = match &scenario.tick {
        Some(t) => parse_duration(t).map_err(ScenarioError::Invalid)?,
        None => plan.server.tick,
    }
    .max(1);
    let mut incidents = Vec::new();
    for i in &scenario.incidents {
        let at = parse_duration(&i.at).map_err(ScenarioError::Invalid)?;
        if i.source
            .as_ref()
            .is_some_and(|s| !scenario.traffic.iter().any(|t| &t.name == s))
        {
            return Err(ScenarioError::Invalid(format!(
                "incident names unknown traffic source {:?}",
                i.source
            )));
        }
        incidents.push((at, i));
    }
    let plan = Arc::new(plan.without_sources());
    let rollout_name = scenario
        .rollout
        .clone()
        .or_else(|| plan.rollouts.first().map(|r| r.name.clone()));
    let mut engine = Engine::new(plan.clone(), Default::default(), Default::default(), start);
    let rollout = rollout_name
        .as_deref()
        .and_then(|n| engine.rollout_index(n))
        .ok_or_else(|| ScenarioError::Invalid("no such rollout in the config".into()))?;
    let gates = &plan.rollouts[rollout].gates;
    let (workflow, baseline_v, candidate_v) = {
        let r = &plan.rollouts[rollout];
        (r.workflow.clone(), r.baseline.clone(), r.candidate.clone())
    };
    let mut rng = Rng::new(scenario.seed);
    let mut report = Report {
        seed: scenario.seed,
        actions: Vec::new(),
        promoted_after: None,
        false_alarm: false,
        timeline: Vec::new(),
        final_phase: Phase::Progressing,
        final_stage: None,
        tasks: 0,
        candidate_tasks: 0,
        blast_radius: 0,
        contained_after: None,
    };
    let mut threshold = match policy {
        Policy::Sequential => None,
        Policy::Threshold { failed_checks } => Some(ThresholdPolicy::new(failed_checks)),
    };
    let mut first_bad: Option<Millis> = None;
    let mut contained = false;
    let mut routing = engine.routing();
    let mut seq: u64 = 0;
    let mut debt: Vec<f64> = vec![0.0; scenario.traffic.len()];
    let mut now = start;
    let end = start + duration;
    let say = |report: &mut Report, at: Millis, text: String| {
        report
            .timeline
            .push(format!("{:>8}  {text}", human_duration(at - start)));
    };
    say(
        &mut report,
        start,
        format!(
            "start: {} at stage {}",
            engine.rollouts[rollout].state.phase.name(),
            engine.rollouts[rollout]
                .state
                .stage_name(&plan.rollouts[rollout])
                .unwrap_or("-")
        ),
    );
    while now < end {
        let step = tick.min(end - now);
        let elapsed = now - start;
        for (s, source) in scenario.traffic.iter().enumerate() {
            debt[s] += source.per_minute * step as f64 / 60_000.0;
            while debt[s] >= 1.0 {
                debt[s] -= 1.0;
                seq += 1;
                let subject = format!("{}-{}", source.name, (rng.uniform() * 1e9) as u64);
                let Some(a) = routing.assign(&workflow, Some(&subject), |k| {
                    source.attributes.get(k).map(String::as_str)
                }) else {
                    continue;
                };
                let on_candidate = a.version == candidate_v;
                let mut base = scenario.baseline.overlay(&source.baseline);
                let mut cand = scenario.candidate.overlay(&source.candidate);
                for (at, incident) in &incidents {
                    if elapsed >= *at && incident.source.as_ref().is_none_or(|n| n == &source.name)
                    {
                        base = base.overlay(&incident.baseline);
                        cand = cand.overlay(&incident.candidate);
                    }
                }
                let mode = a.mode;
                report.tasks += 1;
                if on_candidate {
                    report.candidate_tasks += 1;
                    if mode == Mode::Full && !contained && cand.breaches(gates, &base) {
                        report.blast_radius += 1;
                        first_bad.get_or_insert(now);
                    }
                }
                let behaviour = if on_candidate { &cand } else { &base };
                let event = synthesize(
                    &mut rng,
                    scenario.reviewed.unwrap_or(0.5),
                    seq,
                    &workflow,
                    if on_candidate {
                        &candidate_v
                    } else {
                        &baseline_v
                    },
                    &source.attributes,
                    mode,
                    behaviour,
                );
                if let Ok(route) = engine.route(&event) {
                    engine.record(&route, &event);
                }
            }
        }
        now += step;
        let assessment = match threshold.as_mut() {
            None => engine.assess(rollout, now),
            Some(t) => {
                let rt = &engine.rollouts[rollout];
                t.assess(&plan.rollouts[rollout], &rt.state, &rt.evidence, now)
            }
        };
        let decision = match assessment.decision {
            Some(d) => Some(d),
            None if scenario.approve_manual
                && assessment
                    .waiting
                    .as_deref()
                    .is_some_and(|w| w.contains("awaiting an operator")) =>
            {
                engine
                    .operate(
                        rollout,
                        "simulated-operator",
                        &Command::Promote {
                            reason: "approved".into(),
                            full: false,
                        },
                        0,
                        now,
                    )
                    .ok()
            }
            None => None,
        };
        if let Some(d) = decision {
            let r = &plan.rollouts[rollout];
            let detail = d
                .trigger
                .as_ref()
                .map(|t| format!(" [{} in {}]", t.gate, t.segment))
                .unwrap_or_default();
            say(
                &mut report,
                now,
                format!(
                    "{:<11} {} -> {}{}: {}",
                    d.action.name(),
                    d.before.stage_name(r).unwrap_or("-"),
                    d.after.stage_name(r).unwrap_or("-"),
                    detail,
                    d.reason
                ),
            );
            report.actions.push(d.action);
            if d.after.phase == Phase::Promoted && report.promoted_after.is_none() {
                report.promoted_after = Some(now - start);
            }
            let breach_action = matches!(
                d.action,
                Action::Narrow | Action::ReadOnly | Action::Rollback | Action::Pause
            );
            if breach_action && d.trigger.is_some() && first_bad.is_none() {
                report.false_alarm = true;
            }
            let containing = matches!(d.action, Action::Rollback | Action::ReadOnly)
                || (d.action == Action::Narrow && d.after.stage.is_none());
            // Containment counts once bad tasks were actually served (not a false alarm before).
            if let (true, false, Some(first)) = (containing, contained, first_bad) {
                contained = true;
                report.contained_after = Some(now - first);
            }
            engine.apply(rollout, &d);
            routing = engine.routing();
        }
        // Nothing changes any more: rolled back (no simulated operator resumes), or promoted
        // and past the bake.
        let state = &engine.rollouts[rollout].state;
        let settled = match state.phase {
            Phase::RolledBack => true,
            Phase::Promoted => {
                now >= state
                    .stage_started
                    .saturating_add(plan.rollouts[rollout].bake)
            }
            Phase::Narrowed => state.stage.is_none(),
            _ => false,
        };
        if settled {
            break;
        }
    }
    let state = &engine.rollouts[rollout].state;
    report.final_phase = state.phase;
    report.final_stage = state
        .stage_name(&plan.rollouts[rollout])
        .map(str::to_string);
    say(&mut report, now, format!("end: {}", state.phase.name()));
    Ok(report)
}

#[allow(
    clippy::too_many_arguments,
    reason = "one synthetic task's every input"
)]
fn synthesize(
    rng: &mut Rng,
    reviewed: f64,
    seq: u64,
    workflow: &str,
    version: &str,
    attributes: &BTreeMap<String, String>,
    mode: Mode,
    b: &Behaviour,
) -> TaskEvent {
    let review = (rng.uniform() < reviewed).then(|| {
        if rng.uniform() < b.reject_rate.unwrap_or(0.0) {
            Review::Rejected
        } else {
            Review::Approved
        }
    });
    TaskEvent {
        event_id: compact_str::format_compact!("sim-{seq}"),
        workflow: workflow.into(),
        version: version.into(),
        subject: None,
        attributes: attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        mode,
        ts: None,
        quality: b.quality.map(|q| (q + 0.05 * rng.normal()).clamp(0.0, 1.0)),
        latency_ms: b.latency_ms.map(|l| l * (0.25 * rng.normal()).exp()),
        cost_usd: b.cost_usd.map(|c| c * (0.8 + 0.4 * rng.uniform())),
        fallback: b.fallback_rate.map(|f| rng.uniform() < f),
        review,
        signals: BTreeMap::new(),
    }
}
