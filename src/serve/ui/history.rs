//! What the rollout page's charts draw: each gate's candidate and baseline values per segment
//! over the current stage, sampled every tick (the engine keeps only the running statistics).
//! In memory, [`MAX_POINTS`] per line at most (thinned by halves when full); a new epoch starts
//! the lines again.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::core::clock::Millis;
use crate::core::engine::Engine;
use crate::core::evidence::Arm;

/// Points kept per (rollout, gate, segment).
pub const MAX_POINTS: usize = 240;

/// One sample: when, the candidate's value, the baseline's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub at: Millis,
    pub candidate: Option<f64>,
    pub baseline: Option<f64>,
}

#[derive(Default)]
struct Lines {
    epoch: u64,
    /// By `(gate, segment)`.
    points: HashMap<(String, String), Vec<Point>>,
}

/// Every rollout's lines, by rollout name.
#[derive(Default)]
pub struct History {
    rollouts: Mutex<HashMap<String, Lines>>,
}

impl History {
    /// Drops the lines of rollouts the config no longer has.
    pub fn forget_removed(&self, engine: &Engine) {
        if let Ok(mut all) = self.rollouts.lock() {
            all.retain(|name, _| engine.rollout_index(name).is_some());
        }
    }

    /// Samples rollout `index`'s gate values at `now`.
    pub fn record_rollout(&self, engine: &Engine, index: usize, now: Millis) {
        let Ok(mut all) = self.rollouts.lock() else {
            return;
        };
        let (Some(plan), Some(rt)) = (engine.plan.rollouts.get(index), engine.rollouts.get(index))
        else {
            return;
        };
        {
            let lines = match all.get_mut(&plan.name) {
                Some(lines) => lines,
                None => all.entry(plan.name.clone()).or_default(),
            };
            if lines.epoch != rt.state.epoch {
                lines.epoch = rt.state.epoch;
                lines.points.clear();
            }
            for (s, seg) in plan.segments.iter().enumerate() {
                if rt.state.weight_bps(plan, s) == 0 {
                    continue;
                }
                for gate in &plan.gates {
                    let Some(i) = rt.evidence.signal_index(&gate.signal) else {
                        continue;
                    };
                    let value = |arm| {
                        rt.evidence
                            .arm(s, arm)
                            .and_then(|a| a.signals[i].value(gate.stat))
                    };
                    let point = Point {
                        at: now,
                        candidate: value(Arm::Candidate),
                        baseline: value(Arm::Baseline),
                    };
                    let line = lines
                        .points
                        .entry((gate.name.clone(), seg.name.clone()))
                        .or_default();
                    if line.len() >= MAX_POINTS {
                        // Keep every other point: the whole stage stays drawn, more coarsely.
                        let mut keep = false;
                        line.retain(|_| {
                            keep = !keep;
                            keep
                        });
                    }
                    line.push(point);
                }
            }
        }
    }

    /// The line of one gate in one segment of a rollout's current stage.
    pub fn line(&self, rollout: &str, gate: &str, segment: &str) -> Vec<Point> {
        self.rollouts
            .lock()
            .ok()
            .and_then(|all| {
                all.get(rollout)?
                    .points
                    .get(&(gate.to_string(), segment.to_string()))
                    .cloned()
            })
            .unwrap_or_default()
    }
}
