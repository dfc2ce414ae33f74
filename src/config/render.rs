//! What `stagegate check` prints: the stages × segments table, the gates with their per-check
//! α, the lane, and notes on checks that do not apply at some stage.

use crate::plan::*;

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
        "server: listen {}  store {}  data_dir {}  tick {}",
        plan.server.listen,
        plan.server.store,
        plan.server.data_dir.display(),
        crate::core::clock::human_duration(plan.server.tick)
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
                crate::core::clock::human_duration(st.min_duration),
                st.min_samples,
                if st.manual_approval { "manual" } else { "auto" }
            );
            let _ = writeln!(out, "{row}");
        }
        for note in relative_notes(r) {
            let _ = writeln!(out, "  note: {note}");
        }
        let _ = writeln!(out, "  gates (alpha per check {:.5}):", r.alpha_per_check());
        for g in &r.gates {
            let checks: Vec<String> = g.checks.iter().map(ToString::to_string).collect();
            let _ = writeln!(
                out,
                "    {:<22} {:<40} on_breach {}{}{}",
                g.name,
                checks.join(", "),
                g.on_breach.name(),
                g.fallback
                    .as_ref()
                    .map(|f| format!(
                        " to {}{}",
                        f.version,
                        if f.read_only { " (read_only)" } else { "" }
                    ))
                    .unwrap_or_default(),
                if g.observe {
                    " (mode observe: never acts)"
                } else {
                    ""
                }
            );
        }
        for src in &r.sourced {
            let _ = writeln!(
                out,
                "  evidence for {} from source {}",
                src.signal.name(),
                src.describe()
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
            crate::core::clock::human_duration(re.cooldown),
            re.healthy_read_only_samples
        );
    }
    out
}

/// What `check` warns about (besides notifiers): stages whose `min_samples` the declared
/// traffic cannot bring within `min_duration`, checks that work but poorly on a source, and
/// queries that cannot tell segments apart.
pub fn check_warnings(plan: &Plan) -> Vec<String> {
    let mut out = Vec::new();
    for r in &plan.rollouts {
        let declared: Vec<f64> = r.segments.iter().filter_map(|s| s.tasks_per_hour).collect();
        if declared.len() == r.segments.len() {
            for st in r
                .stages
                .iter()
                .filter(|st| st.min_samples > 0 && st.min_duration > 0)
            {
                let per_hour: f64 = r
                    .segments
                    .iter()
                    .zip(&st.weights_bps)
                    .map(|(seg, w)| seg.tasks_per_hour.unwrap_or(0.0) * f64::from(*w) / 10_000.0)
                    .sum();
                let hours = st.min_duration as f64 / 3_600_000.0;
                let reached = per_hour * hours;
                if reached < st.min_samples as f64 {
                    let needs = if per_hour > 0.0 {
                        crate::core::clock::human_duration(
                            (st.min_samples as f64 / per_hour * 3_600_000.0).ceil() as u64,
                        )
                    } else {
                        "forever".into()
                    };
                    out.push(format!(
                        "rollout {} stage {}: min_samples {} is not reached in min_duration {} at the declared traffic ({:.0} candidate tasks/h); it will take about {needs}",
                        r.name,
                        st.name,
                        st.min_samples,
                        crate::core::clock::human_duration(st.min_duration),
                        per_hour
                    ));
                }
            }
        }
        for src in &r.sourced {
            let name = src.signal.name();
            if let SourceQuery::Sums {
                sum_squares: None,
                variance: None,
                ..
            } = &src.query
            {
                let (lo, hi) = plan.ranges.range(&src.signal);
                out.push(format!(
                    "rollout {}: `{name}` has neither `sum_squares` nor `variance`: only absolute mean checks apply, with the worst-case variance of its range {lo}..{hi} (wide intervals: add one for sharper verdicts)",
                    r.name
                ));
            }
            if r.segments.len() > 1
                && src
                    .query
                    .selectors()
                    .iter()
                    .any(|(_, q)| !q.contains("{{segment}}") && !q.contains("{{ segment }}"))
            {
                out.push(format!(
                    "rollout {}: a query of `{name}` has no `{{{{segment}}}}`: every segment reads the same series",
                    r.name
                ));
            }
        }
    }
    out
}

/// Stages where some segment sends the baseline no traffic, so the rollout's relative checks
/// do not apply there (absolute checks decide): `check` prints them under the plan and lists
/// them among `--json`'s warnings.
pub fn relative_notes(r: &RolloutPlan) -> Vec<String> {
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
    if relative.is_empty() {
        return Vec::new();
    }
    r.stages
        .iter()
        .filter_map(|st| {
            let full: Vec<&str> = r
                .segments
                .iter()
                .zip(&st.weights_bps)
                .filter(|(_, w)| **w == 10_000)
                .map(|(s, _)| s.name.as_str())
                .collect();
            (!full.is_empty()).then(|| {
                format!(
                    "at stage {} the baseline gets no traffic in {}: relative checks ({}) do not apply there; absolute checks decide (a stage `holdout: PCT` keeps a baseline share)",
                    st.name,
                    full.join(", "),
                    relative.join(", ")
                )
            })
        })
        .collect()
}
