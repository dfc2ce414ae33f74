//! Durable state: rollout states, receipts, accepted events and their dedupe keys, evidence
//! checkpoints and the notification outbox, behind the [`Store`] trait the shell uses. The
//! embedded backend ([`EmbeddedStore`], redb in `data_dir`) is the default; [`PostgresStore`]
//! is shared by several replicas, one of which decides.
//!
//! What every backend promises: an event batch is durable with its dedupe keys before it is
//! acknowledged; a decision's state, its receipt and its outbox rows commit together or not at
//! all; a failed write marks the store unhealthy (`/readyz`) until [`Store::recover`] succeeds.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::core::affected::TagRecord;
use crate::core::clock::Millis;
use crate::core::engine::GuardState;
use crate::core::event::TaskEvent;
use crate::core::evidence::Checkpoint;
use crate::core::notice::Outbox;
use crate::core::receipt::Receipt;
use crate::core::rollout::RolloutState;

mod embedded;
pub mod postgres;

pub use embedded::{EmbeddedStore, FILE_NAME};
pub use postgres::PostgresStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: another stagegate process has this data_dir open (the store is locked)")]
    Locked { path: PathBuf },
    #[error(
        "{path}: the store cannot be opened ({detail}); it was left untouched — restore it from a backup, or move it aside to start with an empty store"
    )]
    Unreadable { path: PathBuf, detail: String },
    #[error(
        "{path}: the store file is empty (0 bytes), so it is not a stagegate store; it was left untouched — restore it from a backup, or remove it to start with an empty store"
    )]
    Empty { path: PathBuf },
    #[error(
        "the store cannot commit ({detail}); nothing in this request was acknowledged or changed. stagegate retries every second and recovers by itself once writes succeed — free space (or fix the file system) under {dir}"
    )]
    Unavailable { dir: PathBuf, detail: String },
    #[error(
        "the database at {location} cannot be reached ({detail}); nothing in this request was acknowledged or changed. Every replica keeps serving assignments from its last snapshot; ingestion and decisions resume by themselves once the database answers"
    )]
    DatabaseUnavailable { location: String, detail: String },
    #[error(
        "this replica no longer decides (its leader term {term} was superseded by term {current}); nothing was written — the current leader decides"
    )]
    Fenced { term: u64, current: u64 },
    #[error("{0}")]
    Schema(String),
    #[error("store: {0}")]
    Db(#[from] redb::Error),
    #[error("store: {0}")]
    Postgres(#[from] ::postgres::Error),
    #[error("store: a record does not decode: {0}")]
    Codec(#[from] serde_json::Error),
}

/// Whether a store's last write succeeded, and why not: what `/readyz` reports. Both backends
/// keep one; only `fail` and `recovered` change it.
#[derive(Debug)]
pub struct Health {
    healthy: std::sync::atomic::AtomicBool,
    last_failure: std::sync::Mutex<String>,
}

impl Default for Health {
    fn default() -> Health {
        Health {
            healthy: std::sync::atomic::AtomicBool::new(true),
            last_failure: std::sync::Mutex::new(String::new()),
        }
    }
}

impl Health {
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Why the store is unhealthy, if it is.
    pub fn failure(&self) -> Option<String> {
        (!self.is_healthy()).then(|| {
            self.last_failure
                .lock()
                .map(|m| m.clone())
                .unwrap_or_default()
        })
    }

    /// Records a failure; returns whether the store was healthy until now.
    pub fn fail(&self, detail: &str) -> bool {
        if let Ok(mut m) = self.last_failure.lock() {
            detail.clone_into(&mut m);
        }
        self.healthy
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    /// Records a success; returns whether the store was unhealthy until now.
    pub fn recovered(&self) -> bool {
        !self
            .healthy
            .swap(true, std::sync::atomic::Ordering::Relaxed)
    }
}

/// An accepted event as stored for replay.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredEvent {
    pub scope: String,
    pub epoch: u64,
    pub event: TaskEvent,
}

/// One item of an ingest batch, validated and routed: the event, and — if some scope watches
/// it — where replay finds it and its stored body.
pub struct BatchItem {
    pub event: TaskEvent,
    pub stored: Option<StoredBody>,
}

impl BatchItem {
    /// The dedupe key.
    pub fn event_id(&self) -> &str {
        &self.event.event_id
    }
}

/// An event as a store keeps it for replay: its scope and epoch, and the item's JSON text as the
/// application sent it (validated; nothing is serialised again), which PostgreSQL stores and
/// [`decode_event`] reads back. The embedded store writes the typed event packed instead, at
/// about half the bytes (`embedded/packed.rs`).
pub struct StoredBody {
    /// Shared with the engine's index (see `Route::scope`).
    pub scope: std::sync::Arc<str>,
    pub epoch: u64,
    /// The item's text as sent: a view into the request's body, shared, not copied.
    pub body: bytes::Bytes,
}

/// A stored event body back into the event: an item's text as sent (what stores write now), or
/// a [`TaskEvent`] as serde writes it (what stores wrote before, `ts` in milliseconds).
pub fn decode_event(text: &str) -> Result<TaskEvent, StoreError> {
    match crate::core::event::parse_event(text) {
        Ok(event) => Ok(event),
        Err(_) => Ok(serde_json::from_str(text)?),
    }
}

/// Every stored state by name: rollouts, and guarded workflows.
pub type StoredStates = (HashMap<String, RolloutState>, HashMap<String, GuardState>);

/// A state change to persist with its receipt.
pub enum Change<'a> {
    Rollout {
        name: &'a str,
        state: &'a RolloutState,
    },
    Guard {
        workflow: &'a str,
        state: &'a GuardState,
    },
}

impl Change<'_> {
    pub(crate) fn key_and_scope(&self) -> (String, String, u64) {
        match self {
            Change::Rollout { name, state } => {
                (format!("rollout:{name}"), name.to_string(), state.epoch)
            }
            Change::Guard { workflow, state } => (
                format!("guard:{workflow}"),
                crate::core::engine::guard_scope(workflow),
                state.epoch,
            ),
        }
    }

    /// The epoch whose raw events an open containment keeps for its affected list.
    pub(crate) fn protected_epoch(&self) -> Option<u64> {
        match self {
            Change::Rollout { state, .. } => state.reenable.as_ref().and_then(|d| d.exposure_epoch),
            Change::Guard { .. } => None,
        }
    }

    pub(crate) fn bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        match self {
            Change::Rollout { state, .. } => serde_json::to_vec(state),
            Change::Guard { state, .. } => serde_json::to_vec(state),
        }
    }
}

/// What the shell needs of a store. Every method is blocking: the shell calls it off the async
/// threads (`spawn_blocking` or the ingest writer thread).
pub trait Store: Send + Sync {
    /// Where the data lives, for logs (a file path, a database).
    fn location(&self) -> String;

    /// Whether the last write succeeded (`/readyz`).
    fn is_healthy(&self) -> bool;

    /// Why the store is unhealthy, if it is.
    fn failure(&self) -> Option<String>;

    /// Reopens an unhealthy store and proves it can commit; returns whether it is healthy.
    fn recover(&self, now: Millis) -> bool;

    /// Every stored rollout and guard state (dormant ones included).
    fn states(&self) -> Result<StoredStates, StoreError>;

    /// The checkpoint of `scope`, if one was written.
    fn checkpoint(&self, scope: &str) -> Result<Option<Checkpoint>, StoreError>;

    /// Calls `f` with every stored event of `scope`'s `epoch` numbered after `after` and up to
    /// `through`, in order; returns how many.
    fn replay(
        &self,
        scope: &str,
        epoch: u64,
        after: u64,
        through: u64,
        f: &mut dyn FnMut(StoredEvent),
    ) -> Result<usize, StoreError>;

    /// [`Store::replay`] for several `(scope, epoch, after)` at once: each scope's events in
    /// order (scopes may interleave). The embedded store reads its log once for all of them.
    fn replay_scopes(
        &self,
        scopes: &[(String, u64, u64)],
        through: u64,
        f: &mut dyn FnMut(StoredEvent),
    ) -> Result<usize, StoreError> {
        let mut n = 0;
        for (scope, epoch, after) in scopes {
            n += self.replay(scope, *epoch, *after, through, f)?;
        }
        Ok(n)
    }

    /// The event number every scope's stored checkpoint covers: each scope's evidence up to it
    /// is in its checkpoint, or the scope had no event in its epoch (0: unknown, as for a
    /// backend that does not keep it). Start-up replays no scope from before it.
    fn checkpoints_cover(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    /// The last event sequence number committed.
    fn last_seq(&self) -> Result<u64, StoreError>;

    /// The latest time any commit was stamped with: a clock anchor that never goes back.
    fn clock_high_water(&self) -> Result<Millis, StoreError>;

    /// Writes evidence checkpoints in one transaction; with `covers`, also that every scope's
    /// checkpoint now covers events up to that number (see [`Store::checkpoints_cover`]; a
    /// backend may ignore it).
    fn put_checkpoints(
        &self,
        checkpoints: &[(String, Checkpoint)],
        covers: Option<u64>,
    ) -> Result<(), StoreError>;

    /// Deletes raw events committed before `cutoff` that a checkpoint covers (events of older
    /// epochs too, but the one an open containment keeps); returns how many.
    fn prune_events(&self, cutoff: Millis) -> Result<usize, StoreError>;

    /// The store file's size on disk, in bytes.
    fn size_bytes(&self) -> u64;

    /// Writes a batch in one transaction: new events with their dedupe keys. Returns, per
    /// item, whether it was new (`false`: a duplicate, of an earlier batch or of this one).
    fn ingest(&self, items: &[BatchItem], now: Millis) -> Result<Vec<bool>, StoreError>;

    /// Group commit: several batches in one transaction (one fsync), results per batch, and
    /// the last event sequence number the commit assigned.
    fn ingest_groups(
        &self,
        groups: &[&[BatchItem]],
        now: Millis,
    ) -> Result<(Vec<Vec<bool>>, u64), StoreError>;

    /// Persists a state change and its receipt atomically, assigning the receipt's id, with the
    /// notifications `outbox` makes from it. The scope's events from epochs before the new one
    /// are no longer replayed; they go at once or with [`Store::prune_events`].
    fn commit(
        &self,
        change: &Change<'_>,
        receipt: &mut Receipt,
        outbox: &dyn Fn(&Receipt) -> Vec<Outbox>,
    ) -> Result<(), StoreError>;

    /// Receipts, newest first, optionally for one rollout (or workflow) and since a time.
    fn receipts(
        &self,
        scope: Option<&str>,
        since: Option<Millis>,
        limit: usize,
    ) -> Result<Vec<Receipt>, StoreError>;

    fn receipt(&self, id: &str) -> Result<Option<Receipt>, StoreError>;

    /// The receipt an operator action on `rollout` with this `Idempotency-Key` wrote, if any.
    fn receipt_by_key(&self, rollout: &str, key: &str) -> Result<Option<Receipt>, StoreError>;

    /// The owner's tags on a containment's affected items, by event id.
    fn affected_tags(
        &self,
        rollout: &str,
        receipt: &str,
    ) -> Result<HashMap<String, TagRecord>, StoreError>;

    /// Tags one affected item (the last tag wins).
    fn put_affected_tag(
        &self,
        rollout: &str,
        receipt: &str,
        event_id: &str,
        tag: &TagRecord,
    ) -> Result<(), StoreError>;

    /// Up to `limit` outbox items due at `now`, with their keys.
    fn due_notifications(
        &self,
        now: Millis,
        limit: usize,
    ) -> Result<Vec<(u64, Outbox)>, StoreError>;

    /// Removes a delivered (or abandoned) notification.
    fn notification_done(&self, key: u64) -> Result<(), StoreError>;

    /// Stores a notification's next attempt.
    fn notification_retry(&self, key: u64, item: &Outbox) -> Result<(), StoreError>;

    /// Forgets dedupe keys accepted before `cutoff`; returns how many.
    fn prune_dedupe(&self, cutoff: Millis) -> Result<usize, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::event::parse_event;

    #[test]
    fn a_stored_body_decodes_as_sent_and_as_stores_wrote_it_before() {
        let sent = r#"{"event_id":"e1","workflow":"w","version":"v","ts":"2026-12-02T10:00:00.123Z",
            "attributes":{"tier":"enterprise","seats":5},"quality":0.9,"fallback":true}"#;
        let event = parse_event(sent).expect("valid");
        assert_eq!(decode_event(sent).expect("as sent"), event);
        // Before: the typed event as serde writes it (`ts` in milliseconds, attributes text).
        let before = serde_json::to_vec(&event).expect("json");
        assert!(String::from_utf8_lossy(&before).contains(r#""ts":"#));
        let before = String::from_utf8(before).expect("utf-8");
        assert_eq!(decode_event(&before).expect("as written before"), event);
        assert!(decode_event("{\"event_id\":").is_err());
    }
}
