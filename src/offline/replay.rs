//! `replay`: recorded task events, with their timestamps, through the real decision core.
//!
//! Events are ordered by `ts`, fed to the same [`Engine`] the server runs, and the rollout is
//! assessed at every `server.tick` boundary between them, on a virtual clock: what the policy
//! would have decided, when, and on what evidence. No I/O: the caller parses the file.

use std::sync::Arc;

use crate::core::clock::Millis;
use crate::core::engine::Engine;
use crate::core::event::TaskEvent;
use crate::core::receipt::Receipt;
use crate::plan::Plan;

/// Why recorded events cannot be replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("event {index} (`{event_id}`) has no `ts`: replay needs each event's time")]
    NoTimestamp { index: usize, event_id: String },
    #[error("no events to replay")]
    Empty,
}

/// What the policy would have done.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Replay {
    pub events: usize,
    /// Events the config does not know (workflow, version, range), skipped with the reason.
    pub skipped: Vec<(usize, String)>,
    /// The decisions, as receipts (ids unassigned), in order.
    pub decisions: Vec<Receipt>,
}

impl Replay {
    pub fn render(&self) -> String {
        let mut out = String::new();
        for r in &self.decisions {
            let trigger = r
                .trigger
                .as_ref()
                .map(|t| format!(" [{} in {}]", t.gate, t.segment))
                .unwrap_or_default();
            out.push_str(&format!(
                "{}  {:<16} {:<11} {} -> {}{trigger}: {}\n",
                r.at,
                r.rollout,
                r.action.name(),
                r.before.stage.as_deref().unwrap_or("-"),
                r.after.stage.as_deref().unwrap_or("-"),
                r.reason
            ));
        }
        out.push_str(&format!(
            "\n{} events replayed, {} skipped, {} decisions\n",
            self.events,
            self.skipped.len(),
            self.decisions.len()
        ));
        out
    }
}

/// Replays `events` (in any order) through `plan`.
pub fn replay(plan: Plan, mut events: Vec<TaskEvent>) -> Result<Replay, ReplayError> {
    for (index, e) in events.iter().enumerate() {
        if e.ts.is_none() {
            return Err(ReplayError::NoTimestamp {
                index,
                event_id: e.event_id.to_string(),
            });
        }
    }
    events.sort_by_key(|e| e.ts.unwrap_or(0));
    let start: Millis = events
        .first()
        .and_then(|e| e.ts)
        .ok_or(ReplayError::Empty)?;
    let tick = plan.server.tick.max(1);
    let plan = Arc::new(plan.without_sources());
    let mut engine = Engine::new(plan.clone(), Default::default(), Default::default(), start);
    let mut out = Replay {
        events: 0,
        skipped: Vec::new(),
        decisions: Vec::new(),
    };
    let mut next_tick = start + tick;
    let assess_all = |engine: &mut Engine, now: Millis, out: &mut Replay| {
        for i in 0..engine.rollouts.len() {
            if let Some(d) = engine.assess(i, now).decision {
                out.decisions.push(engine.receipt(i, &d, now));
                engine.apply(i, &d);
            }
        }
    };
    for (index, e) in events.iter().enumerate() {
        let ts = e.ts.unwrap_or(start);
        while ts >= next_tick {
            assess_all(&mut engine, next_tick, &mut out);
            next_tick += tick;
        }
        match engine.route(e) {
            Ok(route) => {
                engine.record(&route, e);
                out.events += 1;
            }
            Err(why) => out.skipped.push((index, why)),
        }
    }
    assess_all(&mut engine, next_tick, &mut out);
    Ok(out)
}
