//! The embedded store (redb): rollout state, receipts, accepted events and dedupe keys.
//!
//! One file, `stagegate.redb`, in `data_dir`. Every write is a single ACID transaction with
//! immediate durability, so what the API acknowledges survives kill -9: an event batch with its
//! dedupe keys; a decision's new state with its receipt (never one without the other). Events
//! are keyed by `(scope, epoch, seq)` so a restart replays only the current epoch and an epoch
//! change prunes the old one. redb's file lock refuses a second process on the same directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::clock::Millis;
use crate::engine::GuardState;
use crate::event::TaskEvent;
use crate::notify::Outbox;
use crate::receipt::Receipt;
use crate::rollout::RolloutState;

const STATES: TableDefinition<&str, &[u8]> = TableDefinition::new("states");
const RECEIPTS: TableDefinition<u64, &[u8]> = TableDefinition::new("receipts");
const EVENTS: TableDefinition<(&str, u64, u64), &[u8]> = TableDefinition::new("events");
const DEDUPE: TableDefinition<&str, u64> = TableDefinition::new("dedupe");
const DEDUPE_BY_TIME: TableDefinition<(u64, &str), ()> = TableDefinition::new("dedupe_by_time");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");

/// The file name inside `data_dir`.
pub const FILE_NAME: &str = "stagegate.redb";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: another stagegate process has this data_dir open (the store is locked)")]
    Locked { path: PathBuf },
    #[error(
        "{path}: the store cannot be opened ({detail}); it was left untouched — restore it from a backup or move it aside"
    )]
    Unreadable { path: PathBuf, detail: String },
    #[error("store: {0}")]
    Db(#[from] redb::Error),
    #[error("store: a record does not decode: {0}")]
    Codec(#[from] serde_json::Error),
}

fn dberr<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Db(e.into())
}

/// An accepted event as stored for replay.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredEvent {
    pub scope: String,
    pub epoch: u64,
    pub event: TaskEvent,
}

/// One item of an ingest batch: its dedupe key and, if some scope watches it, the event.
pub struct BatchItem {
    pub event_id: String,
    pub stored: Option<StoredEvent>,
}

/// What start-up reads back.
#[derive(Debug, Default)]
pub struct Loaded {
    pub rollouts: HashMap<String, RolloutState>,
    pub guards: HashMap<String, GuardState>,
    pub events: Vec<StoredEvent>,
}

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
    fn key_and_scope(&self) -> (String, String, u64) {
        match self {
            Change::Rollout { name, state } => {
                (format!("rollout:{name}"), name.to_string(), state.epoch)
            }
            Change::Guard { workflow, state } => (
                format!("guard:{workflow}"),
                format!("workflow:{workflow}"),
                state.epoch,
            ),
        }
    }

    fn bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        match self {
            Change::Rollout { state, .. } => serde_json::to_vec(state),
            Change::Guard { state, .. } => serde_json::to_vec(state),
        }
    }
}

pub struct Store {
    db: Database,
    path: PathBuf,
    durability: Durability,
}

impl Store {
    /// Opens (or creates) the store in `dir`. Refuses a directory another process holds, and a
    /// file that is not a readable store — it is never replaced.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.join(FILE_NAME);
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Unreadable {
            path: dir.to_path_buf(),
            detail: e.to_string(),
        })?;
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked { path: path.clone() },
            other => StoreError::Unreadable {
                path: path.clone(),
                detail: other.to_string(),
            },
        })?;
        let store = Store {
            db,
            path,
            durability: Durability::Immediate,
        };
        let tx = store.db.begin_write().map_err(dberr)?;
        tx.open_table(STATES).map_err(dberr)?;
        tx.open_table(RECEIPTS).map_err(dberr)?;
        tx.open_table(EVENTS).map_err(dberr)?;
        tx.open_table(DEDUPE).map_err(dberr)?;
        tx.open_table(DEDUPE_BY_TIME).map_err(dberr)?;
        tx.open_table(COUNTERS).map_err(dberr)?;
        tx.open_table(OUTBOX).map_err(dberr)?;
        tx.commit().map_err(|e| StoreError::Unreadable {
            path: store.path.clone(),
            detail: e.to_string(),
        })?;
        Ok(store)
    }

    /// Turns fsync-on-commit off: only for benchmarks that measure what durability costs.
    pub fn set_durable(&mut self, durable: bool) {
        self.durability = if durable {
            Durability::Immediate
        } else {
            Durability::None
        };
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&self) -> Result<redb::WriteTransaction, StoreError> {
        let mut tx = self.db.begin_write().map_err(dberr)?;
        tx.set_durability(self.durability)
            .map_err(|e| StoreError::Unreadable {
                path: self.path.clone(),
                detail: e.to_string(),
            })?;
        Ok(tx)
    }

    /// Reads back everything start-up needs.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let tx = self.db.begin_read().map_err(dberr)?;
        let mut loaded = Loaded::default();
        let states = tx.open_table(STATES).map_err(dberr)?;
        for row in states.iter().map_err(dberr)? {
            let (key, value) = row.map_err(dberr)?;
            if let Some(name) = key.value().strip_prefix("rollout:") {
                loaded
                    .rollouts
                    .insert(name.to_string(), serde_json::from_slice(value.value())?);
            } else if let Some(name) = key.value().strip_prefix("guard:") {
                loaded
                    .guards
                    .insert(name.to_string(), serde_json::from_slice(value.value())?);
            }
        }
        let events = tx.open_table(EVENTS).map_err(dberr)?;
        for row in events.iter().map_err(dberr)? {
            let (_, value) = row.map_err(dberr)?;
            loaded.events.push(serde_json::from_slice(value.value())?);
        }
        Ok(loaded)
    }

    /// Writes a batch in one transaction: new events with their dedupe keys. Returns, per
    /// item, whether it was new (`false`: a duplicate, of an earlier batch or of this one).
    pub fn ingest(&self, items: &[BatchItem], now: Millis) -> Result<Vec<bool>, StoreError> {
        let mut out = self.ingest_groups(&[items], now)?;
        Ok(out.pop().unwrap_or_default())
    }

    /// Group commit: several batches in one transaction (one fsync), results per batch.
    pub fn ingest_groups(
        &self,
        groups: &[&[BatchItem]],
        now: Millis,
    ) -> Result<Vec<Vec<bool>>, StoreError> {
        let tx = self.write()?;
        let mut results = Vec::with_capacity(groups.len());
        {
            let mut dedupe = tx.open_table(DEDUPE).map_err(dberr)?;
            let mut by_time = tx.open_table(DEDUPE_BY_TIME).map_err(dberr)?;
            let mut events = tx.open_table(EVENTS).map_err(dberr)?;
            let mut counters = tx.open_table(COUNTERS).map_err(dberr)?;
            let mut seq = counters
                .get("events")
                .map_err(dberr)?
                .map_or(0, |v| v.value());
            for items in groups {
                let mut fresh = Vec::with_capacity(items.len());
                for item in *items {
                    if dedupe.get(item.event_id.as_str()).map_err(dberr)?.is_some() {
                        fresh.push(false);
                        continue;
                    }
                    dedupe.insert(item.event_id.as_str(), now).map_err(dberr)?;
                    by_time
                        .insert((now, item.event_id.as_str()), ())
                        .map_err(dberr)?;
                    if let Some(stored) = &item.stored {
                        seq += 1;
                        let bytes = serde_json::to_vec(stored)?;
                        events
                            .insert((stored.scope.as_str(), stored.epoch, seq), bytes.as_slice())
                            .map_err(dberr)?;
                    }
                    fresh.push(true);
                }
                results.push(fresh);
            }
            counters.insert("events", seq).map_err(dberr)?;
        }
        tx.commit().map_err(dberr)?;
        Ok(results)
    }

    /// Persists a state change and its receipt atomically, assigning the receipt's id, with the
    /// notifications `outbox` makes from it; drops the scope's events from epochs before the new
    /// one.
    pub fn commit(
        &self,
        change: &Change<'_>,
        receipt: &mut Receipt,
        outbox: impl Fn(&Receipt) -> Vec<Outbox>,
    ) -> Result<(), StoreError> {
        let (key, scope, epoch) = change.key_and_scope();
        let tx = self.write()?;
        {
            let mut counters = tx.open_table(COUNTERS).map_err(dberr)?;
            let seq = counters
                .get("receipts")
                .map_err(dberr)?
                .map_or(0, |v| v.value())
                + 1;
            counters.insert("receipts", seq).map_err(dberr)?;
            receipt.id = Receipt::id_for(seq);
            let mut receipts = tx.open_table(RECEIPTS).map_err(dberr)?;
            receipts
                .insert(seq, serde_json::to_vec(receipt)?.as_slice())
                .map_err(dberr)?;
            let mut pending = tx.open_table(OUTBOX).map_err(dberr)?;
            let mut next = counters
                .get("outbox")
                .map_err(dberr)?
                .map_or(0, |v| v.value());
            for item in outbox(receipt) {
                next += 1;
                pending
                    .insert(next, serde_json::to_vec(&item)?.as_slice())
                    .map_err(dberr)?;
            }
            counters.insert("outbox", next).map_err(dberr)?;
            let mut states = tx.open_table(STATES).map_err(dberr)?;
            states
                .insert(key.as_str(), change.bytes()?.as_slice())
                .map_err(dberr)?;
            let mut events = tx.open_table(EVENTS).map_err(dberr)?;
            events
                .retain_in(
                    (scope.as_str(), 0u64, 0u64)..(scope.as_str(), epoch, 0u64),
                    |_, _| false,
                )
                .map_err(dberr)?;
        }
        tx.commit().map_err(dberr)?;
        Ok(())
    }

    /// Persists a state without a decision (a rollout seen for the first time).
    pub fn put_state(&self, change: &Change<'_>) -> Result<(), StoreError> {
        let (key, _, _) = change.key_and_scope();
        let tx = self.write()?;
        tx.open_table(STATES)
            .map_err(dberr)?
            .insert(key.as_str(), change.bytes()?.as_slice())
            .map_err(dberr)?;
        tx.commit().map_err(dberr)?;
        Ok(())
    }

    /// Receipts, newest first, optionally for one rollout (or workflow) and since a time.
    pub fn receipts(
        &self,
        scope: Option<&str>,
        since: Option<Millis>,
        limit: usize,
    ) -> Result<Vec<Receipt>, StoreError> {
        let tx = self.db.begin_read().map_err(dberr)?;
        let table = tx.open_table(RECEIPTS).map_err(dberr)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(dberr)?.rev() {
            if out.len() >= limit {
                break;
            }
            let (_, value) = row.map_err(dberr)?;
            let receipt: Receipt = serde_json::from_slice(value.value())?;
            if since.is_some_and(|s| receipt.at_ms < s) {
                break;
            }
            if scope.is_none_or(|s| {
                receipt.rollout == s || (receipt.rollout.is_empty() && receipt.workflow == s)
            }) {
                out.push(receipt);
            }
        }
        Ok(out)
    }

    pub fn receipt(&self, id: &str) -> Result<Option<Receipt>, StoreError> {
        let Some(seq) = id.strip_prefix("r-").and_then(|s| s.parse::<u64>().ok()) else {
            return Ok(None);
        };
        let tx = self.db.begin_read().map_err(dberr)?;
        let table = tx.open_table(RECEIPTS).map_err(dberr)?;
        let found = table.get(seq).map_err(dberr)?;
        Ok(match found {
            Some(v) => Some(serde_json::from_slice(v.value())?),
            None => None,
        })
    }

    /// Up to `limit` outbox items due at `now`, with their keys.
    pub fn due_notifications(
        &self,
        now: Millis,
        limit: usize,
    ) -> Result<Vec<(u64, Outbox)>, StoreError> {
        let tx = self.db.begin_read().map_err(dberr)?;
        let table = tx.open_table(OUTBOX).map_err(dberr)?;
        let mut due = Vec::new();
        for row in table.iter().map_err(dberr)? {
            let (key, value) = row.map_err(dberr)?;
            let item: Outbox = serde_json::from_slice(value.value())?;
            if item.next_at <= now {
                due.push((key.value(), item));
                if due.len() >= limit {
                    break;
                }
            }
        }
        Ok(due)
    }

    /// Removes a delivered (or abandoned) notification.
    pub fn notification_done(&self, key: u64) -> Result<(), StoreError> {
        let tx = self.write()?;
        tx.open_table(OUTBOX)
            .map_err(dberr)?
            .remove(key)
            .map_err(dberr)?;
        tx.commit().map_err(dberr)?;
        Ok(())
    }

    /// Stores a notification's next attempt.
    pub fn notification_retry(&self, key: u64, item: &Outbox) -> Result<(), StoreError> {
        let tx = self.write()?;
        tx.open_table(OUTBOX)
            .map_err(dberr)?
            .insert(key, serde_json::to_vec(item)?.as_slice())
            .map_err(dberr)?;
        tx.commit().map_err(dberr)?;
        Ok(())
    }

    /// Forgets dedupe keys accepted before `cutoff`; returns how many.
    pub fn prune_dedupe(&self, cutoff: Millis) -> Result<usize, StoreError> {
        let tx = self.write()?;
        let mut pruned = 0;
        {
            let mut by_time = tx.open_table(DEDUPE_BY_TIME).map_err(dberr)?;
            let mut dedupe = tx.open_table(DEDUPE).map_err(dberr)?;
            let mut old = Vec::new();
            for row in by_time.range((0u64, "")..(cutoff, "")).map_err(dberr)? {
                let (key, _) = row.map_err(dberr)?;
                old.push(key.value().1.to_string());
            }
            for id in &old {
                dedupe.remove(id.as_str()).map_err(dberr)?;
                pruned += 1;
            }
            by_time
                .retain_in((0u64, "")..(cutoff, ""), |_, _| false)
                .map_err(dberr)?;
        }
        tx.commit().map_err(dberr)?;
        Ok(pruned)
    }
}
