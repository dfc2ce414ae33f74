//! The route table: where an event of each known workflow and version goes, resolved once per
//! plan. Routing an event is then one hash lookup plus a match against segments every rollout
//! shares, instead of a walk through its workflow's versions, its rollout's names and its
//! rollout's own copy of each segment — at a thousand rollouts each of those was a cache miss
//! on the ingest path.

use std::hash::Hasher;
use std::sync::Arc;

use hashbrown::HashTable;
use rustc_hash::{FxHashMap, FxHasher};
use smallvec::SmallVec;

use crate::core::evidence::Arm;
use crate::plan::{Plan, Segment};

/// Between a workflow's and a version's name in a key. Config names never contain it, so a key
/// matches only the workflow and version it was built from.
const SEPARATOR: u8 = 0;

/// What an event of a known workflow and version feeds.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// A rollout's arm. `segments` are positions in [`RouteTable`]'s shared segments, in the
    /// rollout's match order (the first that matches is the event's segment).
    Rollout {
        rollout: usize,
        arm: Arm,
        segments: SmallVec<[u32; 4]>,
    },
    /// A guarded workflow's stable version.
    Guard { guard: usize },
    /// Valid, but nothing watches it.
    Untracked,
}

#[derive(Debug, Default)]
pub struct RouteTable {
    /// One entry per workflow and version, hashed by [`key_hash`]: a lookup hashes the
    /// event's two names and compares them in place, building no key.
    targets: HashTable<Entry>,
    /// Every distinct segment the plan's rollouts match on (shared with assignment's routing).
    segments: Arc<[Segment]>,
    /// Each rollout's segments, as positions in `segments`, by the rollout's position.
    rollout_segments: Vec<SmallVec<[u32; 4]>>,
}

impl RouteTable {
    /// `workflows` lists each workflow's position in the plan with the rollout and the guard
    /// that watch it, as the engine resolved them.
    pub fn build(
        plan: &Plan,
        workflows: impl Iterator<Item = (usize, Option<usize>, Option<usize>)>,
    ) -> RouteTable {
        let mut table = RouteTable::default();
        let mut segments = Vec::new();
        let mut by_name: FxHashMap<&str, Vec<u32>> = FxHashMap::default();
        for (w, rollout, guard) in workflows {
            let Some(workflow) = plan.workflows.get(w) else {
                continue;
            };
            let segments_of: SmallVec<[u32; 4]> = rollout
                .and_then(|r| plan.rollouts.get(r))
                .map(|r| {
                    r.segments
                        .iter()
                        .map(|s| intern(&mut segments, &mut by_name, s))
                        .collect()
                })
                .unwrap_or_default();
            if let Some(r) = rollout.filter(|&r| r < plan.rollouts.len()) {
                if table.rollout_segments.len() <= r {
                    table.rollout_segments.resize(r + 1, SmallVec::new());
                }
                table.rollout_segments[r] = segments_of.clone();
            }
            for version in &workflow.versions {
                let target = match rollout.and_then(|r| Some((r, plan.rollouts.get(r)?))) {
                    Some((rollout, r)) => {
                        let arm = if *version == r.candidate {
                            Some(Arm::Candidate)
                        } else if *version == r.baseline {
                            Some(Arm::Baseline)
                        } else {
                            None
                        };
                        match arm {
                            Some(arm) => Target::Rollout {
                                rollout,
                                arm,
                                segments: segments_of.clone(),
                            },
                            None => Target::Untracked,
                        }
                    }
                    None => match guard {
                        Some(guard) if *version == workflow.stable => Target::Guard { guard },
                        _ => Target::Untracked,
                    },
                };
                let (name, version) = (workflow.name.as_str(), version.as_str());
                let hash = key_hash(name, version);
                if table.targets.find(hash, |e| e.is(name, version)).is_none() {
                    let key = [name.as_bytes(), &[SEPARATOR], version.as_bytes()].concat();
                    let entry = Entry {
                        key: key.into(),
                        workflow: w,
                        target,
                    };
                    table.targets.insert_unique(hash, entry, |e| e.hash());
                }
            }
        }
        table.segments = segments.into();
        table
    }

    /// The workflow's position and the target of an event naming `workflow` and `version`;
    /// `None` when the plan has no such pair.
    pub fn get(&self, workflow: &str, version: &str) -> Option<(usize, &Target)> {
        self.targets
            .find(key_hash(workflow, version), |e| e.is(workflow, version))
            .map(|e| (e.workflow, &e.target))
    }

    /// The first of `segments` (positions from a [`Target::Rollout`]) whose match the
    /// attributes (looked up by `get`) satisfy, as a position in that list.
    pub fn segment<'a>(
        &self,
        segments: &[u32],
        get: impl Fn(&str) -> Option<&'a str>,
    ) -> Option<usize> {
        segments.iter().position(|&s| {
            self.segments
                .get(s as usize)
                .is_some_and(|s| s.matches(&get))
        })
    }

    /// How many distinct segments the plan's rollouts share.
    pub fn shared_segments(&self) -> usize {
        self.segments.len()
    }

    /// The distinct segments the plan's rollouts match on; positions in it name them.
    pub fn segments(&self) -> &Arc<[Segment]> {
        &self.segments
    }

    /// Rollout `rollout`'s segments (its position in the plan), as positions in
    /// [`RouteTable::segments`], in its match order.
    pub fn rollout_segments(&self, rollout: usize) -> &[u32] {
        self.rollout_segments
            .get(rollout)
            .map_or(&[][..], |s| s.as_slice())
    }
}

/// The position of `segment` among `segments`, adding it if it is new.
fn intern<'p>(
    segments: &mut Vec<Segment>,
    by_name: &mut FxHashMap<&'p str, Vec<u32>>,
    segment: &'p Segment,
) -> u32 {
    let same = by_name.entry(&segment.name).or_default();
    if let Some(&at) = same.iter().find(|&&at| segments[at as usize] == *segment) {
        return at;
    }
    let at = segments.len() as u32;
    segments.push(segment.clone());
    same.push(at);
    at
}

#[derive(Debug)]
struct Entry {
    /// `workflow SEPARATOR version`: the names in one allocation, one cache line to compare.
    key: Box<[u8]>,
    workflow: usize,
    target: Target,
}

impl Entry {
    fn is(&self, workflow: &str, version: &str) -> bool {
        let (w, v) = (workflow.as_bytes(), version.as_bytes());
        self.key.len() == w.len() + 1 + v.len()
            && self.key[w.len()] == SEPARATOR
            && self.key[..w.len()] == *w
            && self.key[w.len() + 1..] == *v
    }

    fn hash(&self) -> u64 {
        let cut = self
            .key
            .iter()
            .position(|&b| b == SEPARATOR)
            .unwrap_or(self.key.len());
        let rest = self.key.get(cut + 1..).unwrap_or_default();
        hash_parts(&self.key[..cut], rest)
    }
}

/// The hash of a workflow and version pair. Keyed by the config's names only, so a fast
/// unkeyed hash is safe (an event's names can only miss).
fn key_hash(workflow: &str, version: &str) -> u64 {
    hash_parts(workflow.as_bytes(), version.as_bytes())
}

fn hash_parts(workflow: &[u8], version: &[u8]) -> u64 {
    let mut h = FxHasher::default();
    h.write(workflow);
    h.write_u8(SEPARATOR);
    h.write(version);
    h.finish()
}
