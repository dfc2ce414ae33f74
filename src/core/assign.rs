//! Assignment: which version, in which mode, a task of a workflow runs.
//!
//! The controller publishes an immutable [`Routing`] snapshot after every state change; the
//! request path only reads it (see `server::Shared::routing`), so assignment takes no lock and
//! allocates nothing beyond the response. Bucketing is murmur3-32 over `"{salt}:{subject}"`
//! (seed 0, as Unleash does) modulo 10 000 basis points: a subject is on the candidate iff its
//! bucket is below the segment's weight, so raising a weight never moves anyone off it.

use std::io::Read;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::core::event::Mode;
use crate::core::rollout::Phase;
use crate::plan::Segment;

/// Buckets per 100 %: weights are in basis points.
pub const BUCKETS: u32 = 10_000;

/// The subject's bucket (0..10 000) under `salt`.
pub fn bucket(salt: &str, subject: &str) -> u16 {
    // The key is joined on the stack when it fits (the common case), else read as a chain:
    // either way no heap allocation. Reading from memory cannot fail.
    let mut buf = [0u8; 256];
    let len = salt.len() + 1 + subject.len();
    let hash = if len <= buf.len() {
        buf[..salt.len()].copy_from_slice(salt.as_bytes());
        buf[salt.len()] = b':';
        buf[salt.len() + 1..len].copy_from_slice(subject.as_bytes());
        murmur3::murmur3_32(&mut &buf[..len], 0)
    } else {
        let mut input = salt.as_bytes().chain(&b":"[..]).chain(subject.as_bytes());
        murmur3::murmur3_32(&mut input, 0)
    };
    (hash.unwrap_or(0) % BUCKETS) as u16
}

/// The routing view of one rollout.
#[derive(Debug, Clone)]
pub struct RolloutRoute {
    pub name: String,
    /// Fixed per rollout so that restarts and weight changes stay sticky.
    pub salt: String,
    pub baseline: usize,
    pub candidate: usize,
    pub segments: Vec<Segment>,
    pub weights_bps: Vec<u16>,
    pub stage: Option<String>,
    pub phase: Phase,
    pub candidate_mode: Mode,
    /// In fallback: the version that serves the candidate's share.
    pub fallback: Option<usize>,
    /// Per segment: the candidate runs read-only there (a segment-scoped read-only fallback).
    pub read_only_segments: Vec<bool>,
}

/// The routing view of one workflow.
#[derive(Debug, Clone)]
pub struct WorkflowRoute {
    pub name: String,
    pub versions: Vec<String>,
    pub stable: usize,
    /// A guard tripped: the stable version runs read-only.
    pub stable_mode: Mode,
    pub rollout: Option<RolloutRoute>,
}

/// Everything assignment needs, immutable once published. Each workflow's route is shared
/// between snapshots, so publishing one rollout's change copies pointers, not the fleet.
#[derive(Debug, Clone, Default)]
pub struct Routing {
    pub workflows: Vec<Arc<WorkflowRoute>>,
    /// Workflow name → position. Keyed by the config's names only, so a fast unkeyed hash is
    /// safe: a request's name can only miss, never make the table degrade.
    index: Arc<FxHashMap<String, usize>>,
}

/// Why a task got its version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No rollout: the stable version.
    Stable,
    /// A rollout, but no segment matched the attributes.
    NoSegment,
    /// The subject's bucket fell inside the candidate's share.
    Split,
    /// The subject's bucket fell outside the candidate's share.
    Baseline,
    /// The rollout is rolled back: baseline for everyone.
    RolledBack,
    /// No subject was given, so no bucket: the baseline.
    NoSubject,
    /// The candidate's share, served by a gate's fallback version.
    Fallback,
}

impl Reason {
    pub fn text(self) -> &'static str {
        match self {
            Reason::Stable => "no active rollout: stable version",
            Reason::NoSegment => "no segment matched: baseline",
            Reason::Split => "in the candidate's share of the segment",
            Reason::Baseline => "outside the candidate's share of the segment",
            Reason::RolledBack => "rollout rolled back: baseline",
            Reason::NoSubject => "no subject to bucket: baseline",
            Reason::Fallback => "fallback",
        }
    }
}

/// One assignment; borrows names from the snapshot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Assignment<'a> {
    pub workflow: &'a str,
    pub workflow_index: usize,
    pub version: &'a str,
    pub version_index: usize,
    pub mode: Mode,
    pub segment: Option<&'a str>,
    pub rollout: Option<&'a str>,
    pub stage: Option<&'a str>,
    pub reason: Reason,
}

impl Routing {
    pub fn new(workflows: Vec<Arc<WorkflowRoute>>) -> Routing {
        let index = Arc::new(
            workflows
                .iter()
                .enumerate()
                .map(|(i, w)| (w.name.clone(), i))
                .collect(),
        );
        Routing { workflows, index }
    }

    /// This routing with workflow `i`'s route replaced (the same workflow, in a new state).
    pub fn with_workflow(&self, i: usize, route: WorkflowRoute) -> Routing {
        let mut next = self.clone();
        if let Some(slot) = next.workflows.get_mut(i) {
            *slot = Arc::new(route);
        }
        next
    }

    pub fn workflow(&self, name: &str) -> Option<&WorkflowRoute> {
        self.index.get(name).map(|&i| &*self.workflows[i])
    }

    /// Assigns a task. `attribute` looks up the task's attributes by key.
    pub fn assign<'a, 'b>(
        &'a self,
        workflow: &str,
        subject: Option<&str>,
        attribute: impl Fn(&str) -> Option<&'b str>,
    ) -> Option<Assignment<'a>> {
        let workflow_index = *self.index.get(workflow)?;
        let w = &self.workflows[workflow_index];
        let pick = |version: usize, mode: Mode, segment, reason| Assignment {
            workflow: &w.name,
            workflow_index,
            version: &w.versions[version],
            version_index: version,
            mode,
            segment,
            rollout: w.rollout.as_ref().map(|r| r.name.as_str()),
            stage: w.rollout.as_ref().and_then(|r| r.stage.as_deref()),
            reason,
        };
        let Some(r) = &w.rollout else {
            return Some(pick(w.stable, w.stable_mode, None, Reason::Stable));
        };
        let Some(seg) = r.segments.iter().position(|s| s.matches(&attribute)) else {
            return Some(pick(r.baseline, Mode::Full, None, Reason::NoSegment));
        };
        let segment = Some(r.segments[seg].name.as_str());
        if r.phase == Phase::RolledBack {
            return Some(pick(r.baseline, Mode::Full, segment, Reason::RolledBack));
        }
        let Some(subject) = subject else {
            return Some(pick(r.baseline, Mode::Full, segment, Reason::NoSubject));
        };
        if bucket(&r.salt, subject) < r.weights_bps[seg] {
            let mode = if r.read_only_segments.get(seg).copied().unwrap_or(false) {
                Mode::ReadOnly
            } else {
                r.candidate_mode
            };
            Some(match r.fallback {
                Some(version) => pick(version, mode, segment, Reason::Fallback),
                None => pick(r.candidate, mode, segment, Reason::Split),
            })
        } else {
            Some(pick(r.baseline, Mode::Full, segment, Reason::Baseline))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_matches_plain_murmur3_of_the_joined_key() {
        for (salt, subject) in [
            ("support-reply-v8", "ticket-4411"),
            ("a", ""),
            ("rollout", "ünïcode-subject-123"),
        ] {
            let joined = format!("{salt}:{subject}");
            let expected =
                murmur3::murmur3_32(&mut joined.as_bytes(), 0).expect("in memory") % BUCKETS;
            assert_eq!(u32::from(bucket(salt, subject)), expected);
        }
    }

    #[test]
    fn buckets_are_roughly_uniform() {
        let below: usize = (0..10_000)
            .filter(|i| bucket("salt", &format!("user-{i}")) < 500)
            .count();
        assert!(
            (400..600).contains(&below),
            "{below} of 10 000 in a 5 % slice"
        );
    }
}
