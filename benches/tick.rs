//! The controller's tick at a thousand rollouts (issue 14): a generated config of 1 000
//! rollouts × 3 segments with evidence in every arm; measures, with criterion, `Engine::step`
//! (every verdict and decision) and `Metrics::observe` (every gauge), and as the bare baseline
//! the same rollouts' verdicts alone, in the same run; then prints each against the baseline
//! (medians of the same timed samples criterion analysed), resident memory, routing, recording
//! and the scrape sizes. Run with `cargo bench --bench tick`.
#![allow(
    clippy::disallowed_methods,
    reason = "a benchmark times itself with the wall clock"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;

use stagegate::core::engine::{Engine, Route};
use stagegate::core::evidence::Arm;
use stagegate::plan::Plan;
use stagegate::serve::metrics::Metrics;

const ROLLOUTS: usize = 1000;

/// The same fleet as the A/B benchmark (`scripts/bench`).
#[path = "../bench/src/fleet.rs"]
#[allow(dead_code, reason = "the HTTP driver's helpers are not used here")]
mod fleet;

fn config() -> String {
    fleet::config(ROLLOUTS, "tick: 5s")
}

/// One healthy task (the fleet's event number `k`) in every arm of every segment of every
/// rollout, recorded straight into the engine; returns how many.
fn record_everywhere(engine: &mut Engine, tag: &str, k: u64) -> u64 {
    let mut n = 0;
    for r in 0..ROLLOUTS {
        let epoch = engine.rollouts[r].state.epoch;
        for segment in 0..3 {
            for (arm, version) in [(Arm::Baseline, "a"), (Arm::Candidate, "b")] {
                let id = format!("{tag}-{r}-{segment}-{version}");
                let json = fleet::event(&id, r, segment, version, k);
                let event = stagegate::core::event::parse_event(&json).expect("event");
                engine.record(
                    &Route::Rollout {
                        rollout: r,
                        segment,
                        arm,
                        epoch,
                    },
                    &event,
                );
                n += 1;
            }
        }
    }
    n
}

/// The middle of `values` (0 when empty).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// This process's resident memory.
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    let plan = Plan::parse(std::path::Path::new("tick.yaml"), &config()).expect("generated config");
    let mut engine = Engine::new(Arc::new(plan), Default::default(), Default::default(), 0);
    // 120 tasks per arm per segment: evidence everywhere, past the 100 samples below which a
    // check answers `inconclusive` without computing (so every timed function sees every
    // statistic computed, however many iterations criterion runs), and no decision due.
    let mut n = 0u64;
    for k in 0..120 {
        n += record_everywhere(&mut engine, &format!("e{k}"), k);
    }
    // Routing: which rollout, segment and arm an event belongs to, against parsing it (the
    // work every event needs anyway).
    let raw: Vec<String> = (0..100_000)
        .map(|k| {
            serde_json::json!({"event_id": format!("x{k}"), "workflow": format!("w{}", (k * 7919) % ROLLOUTS),
                "version": if k % 2 == 0 { "a" } else { "b" }, "attributes": {"tier": "enterprise"}, "quality": 0.9})
            .to_string()
        })
        .collect();
    let t = Instant::now();
    let parsed: Vec<_> = raw
        .iter()
        .map(|v| stagegate::core::event::parse_event(v).expect("event"))
        .collect();
    let parse_ns = t.elapsed().as_nanos() as f64 / parsed.len() as f64;
    let t = Instant::now();
    for e in &parsed {
        std::hint::black_box(engine.route(e).expect("routes"));
    }
    let route_ns = t.elapsed().as_nanos() as f64 / parsed.len() as f64;
    let rss_evidence = rss_mib();
    let metrics = Metrics::new();
    metrics.init_series(&engine.plan);
    // Before each timed iteration every arm of every segment gets one more task (untimed): a
    // tick where every rollout's evidence changed. As in the server, recording keeps an arm's
    // quantile buckets current, and every other statistic is computed afresh. Criterion sees
    // the timed part only; each function's samples are kept to print ratios to the baseline.
    let now = 60_000;
    let mut criterion = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .configure_from_args();
    let mut group = criterion.benchmark_group("tick at 1000 rollouts");
    let mut round = 0u64;
    let mut timed =
        |engine: &mut Engine, iters: u64, samples: &mut Vec<f64>, f: &mut dyn FnMut(&Engine)| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                round += 1;
                record_everywhere(engine, &format!("t{round}"), 1000 + round);
                let t = Instant::now();
                f(engine);
                let took = t.elapsed();
                samples.push(took.as_secs_f64() * 1000.0);
                total += took;
            }
            total
        };
    let (mut bare, mut step, mut observe) = (Vec::new(), Vec::new(), Vec::new());
    group.bench_function("verdicts (baseline)", |b| {
        b.iter_custom(|iters| {
            timed(&mut engine, iters, &mut bare, &mut |engine| {
                for (plan, rt) in engine.plan.rollouts.iter().zip(&engine.rollouts) {
                    std::hint::black_box(stagegate::core::rollout::verdicts(
                        plan,
                        &rt.state,
                        &rt.evidence,
                    ));
                }
            })
        });
    });
    let mut verdicts = Vec::new();
    group.bench_function("Engine::step", |b| {
        b.iter_custom(|iters| {
            timed(&mut engine, iters, &mut step, &mut |engine| {
                verdicts = std::hint::black_box(engine.step_with_verdicts(now)).1;
            })
        });
    });
    let t = Instant::now();
    metrics.observe_with(&engine, now, &verdicts);
    let first = t.elapsed().as_secs_f64() * 1000.0;
    let rss_series = rss_mib();
    let checkpoints = engine.take_checkpoints();
    let rss_checkpoints = rss_mib();
    // What a store spends encoding them (JSON, as both backends write them): the embedded
    // store does it before its write transaction, so ingest never waits behind it.
    let t = Instant::now();
    let encoded: usize = checkpoints
        .iter()
        .map(|(_, cp)| serde_json::to_vec(cp).map_or(0, |b| b.len()))
        .sum();
    let encode_ms = t.elapsed().as_secs_f64() * 1000.0;
    let checkpoints_len = checkpoints.len();
    drop(checkpoints);
    group.bench_function("Metrics::observe_with", |b| {
        b.iter_custom(|iters| {
            timed(&mut engine, iters, &mut observe, &mut |engine| {
                metrics.observe_with(engine, now, &verdicts)
            })
        });
    });
    group.finish();
    let (bare, step, observe) = (median(bare), median(step), median(observe));
    let t = Instant::now();
    let text = metrics.render();
    let render = t.elapsed().as_secs_f64() * 1000.0;
    let t = Instant::now();
    let gates = metrics.render_gates();
    let render_gates = t.elapsed().as_secs_f64() * 1000.0;
    println!("tick at {ROLLOUTS} rollouts × 3 segments with evidence ({n} tasks):");
    println!(
        "  resident memory            {rss_evidence:8.0} MiB with the evidence, {rss_series:.0} MiB with every series, {rss_checkpoints:.0} MiB while every rollout's checkpoint is held"
    );
    println!("  (medians of the samples criterion timed)");
    println!("  bare verdicts (baseline)   {bare:8.1} ms");
    println!(
        "  Engine::step (+ verdicts)  {step:8.1} ms  ({:.2}× the baseline)",
        step / bare
    );
    println!(
        "  Metrics::observe_with      {observe:8.1} ms  ({:.2}× the baseline; {first:.1} ms the first time, resolving every series)",
        observe / bare
    );
    println!(
        "  tick (step + observe)      {:8.1} ms  ({:.2}× the baseline)",
        step + observe,
        (step + observe) / bare
    );
    println!(
        "  checkpoints encoded        {encode_ms:8.1} ms  ({:.1} MiB of JSON, {} scopes)",
        encoded as f64 / 1048576.0,
        checkpoints_len
    );
    println!("  /metrics render            {render:8.1} ms");
    println!("  /metrics/gates render      {render_gates:8.1} ms");
    println!(
        "  Engine::route per event    {route_ns:8.0} ns  ({:.2}× parsing it: {parse_ns:.0} ns)",
        route_ns / parse_ns
    );
    for (name, text) in [("/metrics", &text), ("/metrics/gates", &gates)] {
        println!(
            "  {name:<26} {:8.0} KiB, {} series",
            text.len() as f64 / 1024.0,
            text.lines().filter(|l| !l.starts_with('#')).count()
        );
    }
    // Recording: the events of `scripts/bench` (every signal, the enterprise segment), spread
    // over the fleet as they arrive there, against the same events into two rollouts, whose
    // state stays in cache: the difference is what the fleet's cache misses cost.
    let [spread, cached] = [ROLLOUTS, 2].map(|workflows| record_ns(&mut engine, workflows, false));
    println!(
        "  Engine::record per event   {spread:8.0} ns  ({:.2}× the same into 2 rollouts: {cached:.0} ns)",
        spread / cached
    );
    // As the server's recorder does: each rollout's tasks held back and applied together.
    let deferred = record_ns(&mut engine, ROLLOUTS, true);
    println!(
        "  Engine::defer_routed       {deferred:8.0} ns  ({:.2}× Engine::record, every task applied)",
        deferred / spread
    );
}

/// Nanoseconds `Engine::record` (or, `deferred`, `Engine::defer_routed` and then applying
/// what waits) takes per event, the best of several passes over 100 000 events spread
/// round-robin over the first `workflows` workflows.
fn record_ns(engine: &mut Engine, workflows: usize, deferred: bool) -> f64 {
    let events: Vec<_> = (0..100_000usize)
        .map(|k| {
            let json = format!(
                r#"{{"event_id":"rec-{workflows}-{k}","workflow":"w{}","version":"{}","attributes":{{"tier":"enterprise"}},"quality":0.9,"latency_ms":{},"cost_usd":0.01,"fallback":false}}"#,
                k % workflows,
                if k % 2 == 0 { "a" } else { "b" },
                900 + k % 60
            );
            let event = stagegate::core::event::parse_event(&json).expect("event");
            let route = engine.route(&event).expect("routes");
            let scope = route.scope(engine).expect("a rollout's event");
            (event, route, scope)
        })
        .collect();
    (0..5)
        .map(|_| {
            let t = Instant::now();
            for (event, route, (name, epoch)) in &events {
                if deferred {
                    engine.defer_routed(route, engine.generation, (name, *epoch), event);
                } else {
                    engine.record(route, event);
                }
            }
            engine.apply_deferred();
            t.elapsed().as_nanos() as f64 / events.len() as f64
        })
        .fold(f64::INFINITY, f64::min)
}
