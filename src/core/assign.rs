//! Assignment: which version, in which mode, a task of a workflow runs.
//!
//! The controller publishes an immutable [`Routing`] snapshot after every state change; the
//! request path only reads it (`serve::controller::Snapshot::routing`), so assignment takes no
//! lock and allocates nothing beyond the response. Each workflow's route is packed into one
//! value with its names in one string, and rollouts match on segments they share by position:
//! at a thousand workflows every separate allocation read per request was a cache miss.
//! Bucketing is murmur3-32 over `"{salt}:{subject}"` (seed 0, as Unleash does) modulo 10 000
//! basis points: a subject is on the candidate iff its bucket is below the segment's weight, so
//! raising a weight never moves anyone off it.

use std::hash::Hasher;
use std::io::Read;
use std::sync::Arc;

use hashbrown::HashTable;
use rustc_hash::FxHasher;
use smallvec::SmallVec;

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

/// Where a name lies in a route's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: u32,
    len: u32,
}

/// The rollout part of a [`WorkflowRoute`], as the engine describes it.
#[derive(Debug, Clone)]
pub struct RolloutParts<'a> {
    /// The rollout's name, also its bucketing salt (fixed per rollout, so restarts and weight
    /// changes stay sticky).
    pub name: &'a str,
    pub stage: Option<&'a str>,
    pub baseline: usize,
    pub candidate: usize,
    /// Positions in the routing's shared segments, in match order (the first that matches is
    /// the task's segment).
    pub segments: SmallVec<[u32; 4]>,
    /// The candidate's share per segment, in basis points.
    pub weights_bps: SmallVec<[u16; 4]>,
    pub phase: Phase,
    pub candidate_mode: Mode,
    /// In fallback: the version that serves the candidate's share.
    pub fallback: Option<usize>,
    /// Per segment: the candidate runs read-only there (a segment-scoped read-only fallback).
    pub read_only_segments: SmallVec<[bool; 4]>,
}

/// The routing view of one rollout: [`RolloutParts`] with its names kept in the workflow
/// route's text.
#[derive(Debug, Clone)]
struct RolloutRoute {
    name: Span,
    stage: Option<Span>,
    baseline: usize,
    candidate: usize,
    segments: SmallVec<[u32; 4]>,
    weights_bps: SmallVec<[u16; 4]>,
    read_only_segments: SmallVec<[bool; 4]>,
    phase: Phase,
    candidate_mode: Mode,
    fallback: Option<usize>,
}

/// The routing view of one workflow, packed for the request path: its names in one string and
/// the rest inline, so answering reads this value and its text and nothing else of the
/// workflow's. At a thousand workflows each separately allocated name or list was a cache miss
/// per assignment.
#[derive(Debug, Clone)]
pub struct WorkflowRoute {
    /// The workflow's name, each version's, then the rollout's and its stage's.
    text: Box<str>,
    name: Span,
    versions: SmallVec<[Span; 4]>,
    stable: usize,
    /// A guard tripped: the stable version runs read-only.
    stable_mode: Mode,
    rollout: Option<RolloutRoute>,
}

/// Appends `name` to `text`, saying where it went.
fn push(text: &mut String, name: &str) -> Span {
    let start = u32::try_from(text.len()).unwrap_or(u32::MAX);
    text.push_str(name);
    Span {
        start,
        len: u32::try_from(name.len()).unwrap_or(0),
    }
}

impl WorkflowRoute {
    /// The route of workflow `name` with `versions`, of which `stable` serves when no rollout
    /// runs (in `stable_mode`), and `rollout`, the rollout running on it if any.
    pub fn new<S: AsRef<str>>(
        name: &str,
        versions: &[S],
        stable: usize,
        stable_mode: Mode,
        rollout: Option<RolloutParts<'_>>,
    ) -> WorkflowRoute {
        let mut text = String::new();
        let name = push(&mut text, name);
        let versions = versions
            .iter()
            .map(|v| push(&mut text, v.as_ref()))
            .collect();
        let rollout = rollout.map(|r| RolloutRoute {
            name: push(&mut text, r.name),
            stage: r.stage.map(|s| push(&mut text, s)),
            baseline: r.baseline,
            candidate: r.candidate,
            segments: r.segments,
            weights_bps: r.weights_bps,
            read_only_segments: r.read_only_segments,
            phase: r.phase,
            candidate_mode: r.candidate_mode,
            fallback: r.fallback,
        });
        WorkflowRoute {
            text: text.into_boxed_str(),
            name,
            versions,
            stable,
            stable_mode,
            rollout,
        }
    }

    fn text(&self, span: Span) -> &str {
        let start = span.start as usize;
        self.text
            .get(start..start + span.len as usize)
            .unwrap_or_default()
    }

    pub fn name(&self) -> &str {
        self.text(self.name)
    }

    /// The workflow's versions, in the plan's order (a version's position is its index).
    pub fn versions(&self) -> impl ExactSizeIterator<Item = &str> {
        self.versions.iter().map(|&v| self.text(v))
    }
}

/// Everything assignment needs, immutable once published. Each workflow's route is shared
/// between snapshots, so publishing one rollout's change copies pointers, not the fleet.
#[derive(Debug, Clone, Default)]
pub struct Routing {
    workflows: Vec<Arc<WorkflowRoute>>,
    /// Workflow name → position, hashed by [`name_hash`] and compared against the route's own
    /// name. Keyed by the config's names only, so a fast unkeyed hash is safe: a request's name
    /// can only miss, never make the table degrade.
    index: Arc<HashTable<u32>>,
    /// Every distinct segment the rollouts match on, shared by all of them: a handful of
    /// values every assignment reads, so they stay in cache.
    segments: Arc<[Segment]>,
}

fn name_hash(name: &str) -> u64 {
    let mut h = FxHasher::default();
    h.write(name.as_bytes());
    h.finish()
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
    /// The routing of `workflows` (by position in the plan), whose rollouts name `segments` by
    /// position.
    pub fn new(workflows: Vec<Arc<WorkflowRoute>>, segments: Arc<[Segment]>) -> Routing {
        let mut index = HashTable::with_capacity(workflows.len());
        for (i, w) in workflows.iter().enumerate() {
            let name = w.name();
            let hash = name_hash(name);
            if index
                .find(hash, |&j: &u32| workflows[j as usize].name() == name)
                .is_none()
            {
                index.insert_unique(hash, i as u32, |&j| name_hash(workflows[j as usize].name()));
            }
        }
        Routing {
            workflows,
            index: Arc::new(index),
            segments,
        }
    }

    /// This routing with workflow `i`'s route replaced (the same workflow, in a new state).
    pub fn with_workflow(&self, i: usize, route: WorkflowRoute) -> Routing {
        let mut next = self.clone();
        if let Some(slot) = next.workflows.get_mut(i) {
            *slot = Arc::new(route);
        }
        next
    }

    /// Every workflow's route, by position in the plan.
    pub fn workflows(&self) -> impl ExactSizeIterator<Item = &WorkflowRoute> {
        self.workflows.iter().map(|w| &**w)
    }

    /// Workflow `name`'s position and route.
    fn find(&self, name: &str) -> Option<(usize, &WorkflowRoute)> {
        let &i = self.index.find(name_hash(name), |&i| {
            self.workflows[i as usize].name() == name
        })?;
        Some((i as usize, &*self.workflows[i as usize]))
    }

    /// Assigns a task. `attribute` looks up the task's attributes by key.
    pub fn assign<'a, 'b>(
        &'a self,
        workflow: &str,
        subject: Option<&str>,
        attribute: impl Fn(&str) -> Option<&'b str>,
    ) -> Option<Assignment<'a>> {
        let (workflow_index, w) = self.find(workflow)?;
        let pick = |version: usize, mode: Mode, segment, reason| Assignment {
            workflow: w.name(),
            workflow_index,
            version: w.versions.get(version).map_or("", |&v| w.text(v)),
            version_index: version,
            mode,
            segment,
            rollout: w.rollout.as_ref().map(|r| w.text(r.name)),
            stage: w.rollout.as_ref().and_then(|r| r.stage).map(|s| w.text(s)),
            reason,
        };
        let Some(r) = &w.rollout else {
            return Some(pick(w.stable, w.stable_mode, None, Reason::Stable));
        };
        let matched = r.segments.iter().enumerate().find_map(|(at, &s)| {
            let s = self.segments.get(s as usize)?;
            s.matches(&attribute).then_some((at, s))
        });
        let Some((seg, shared)) = matched else {
            return Some(pick(r.baseline, Mode::Full, None, Reason::NoSegment));
        };
        let segment = Some(shared.name.as_str());
        if r.phase == Phase::RolledBack {
            return Some(pick(r.baseline, Mode::Full, segment, Reason::RolledBack));
        }
        let Some(subject) = subject else {
            return Some(pick(r.baseline, Mode::Full, segment, Reason::NoSubject));
        };
        let weight = r.weights_bps.get(seg).copied().unwrap_or(0);
        if bucket(w.text(r.name), subject) < weight {
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

    fn segment(name: &str, key: &str, values: &[&str]) -> Segment {
        Segment {
            name: name.into(),
            matches: if key.is_empty() {
                Vec::new()
            } else {
                vec![(key.into(), values.iter().map(|v| v.to_string()).collect())]
            },
            tasks_per_hour: None,
        }
    }

    #[test]
    fn a_packed_route_answers_with_the_names_it_was_given() {
        let segments: Arc<[Segment]> = vec![
            segment("everyone", "", &[]),
            segment("intérnal", "team", &["ops", "ünï"]),
        ]
        .into();
        let rollout = RolloutParts {
            name: "résumé-v2",
            stage: Some("half"),
            baseline: 0,
            candidate: 2,
            // Internal first, then everyone: match order is the rollout's, not the table's.
            segments: [1, 0].into_iter().collect(),
            weights_bps: [10_000, 0].into_iter().collect(),
            phase: Phase::Progressing,
            candidate_mode: Mode::Full,
            fallback: None,
            read_only_segments: [false, false].into_iter().collect(),
        };
        let routing = Routing::new(
            vec![
                Arc::new(WorkflowRoute::new(
                    "résumé",
                    &["v1", "v1.5", "v2"],
                    0,
                    Mode::Full,
                    Some(rollout),
                )),
                Arc::new(WorkflowRoute::new(
                    "plain",
                    &["only"],
                    0,
                    Mode::ReadOnly,
                    None,
                )),
            ],
            segments,
        );
        let names: Vec<(&str, Vec<&str>)> = routing
            .workflows()
            .map(|w| (w.name(), w.versions().collect()))
            .collect();
        assert_eq!(
            names,
            [
                ("résumé", vec!["v1", "v1.5", "v2"]),
                ("plain", vec!["only"])
            ]
        );
        let a = routing
            .assign("résumé", Some("s"), |k| (k == "team").then_some("ünï"))
            .expect("known");
        assert_eq!(
            (
                a.version,
                a.version_index,
                a.segment,
                a.rollout,
                a.stage,
                a.reason
            ),
            (
                "v2",
                2,
                Some("intérnal"),
                Some("résumé-v2"),
                Some("half"),
                Reason::Split
            )
        );
        assert_eq!(a.workflow_index, 0);
        let a = routing
            .assign("résumé", Some("s"), |_| None)
            .expect("known");
        assert_eq!((a.version, a.segment), ("v1", Some("everyone")));
        let a = routing.assign("plain", None, |_| None).expect("known");
        assert_eq!(
            (a.version, a.mode, a.workflow_index, a.rollout),
            ("only", Mode::ReadOnly, 1, None)
        );
        assert!(routing.assign("résum", Some("s"), |_| None).is_none());
        assert!(routing.assign("", Some("s"), |_| None).is_none());
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
