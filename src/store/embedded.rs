//! The embedded store (redb): rollout state, receipts, accepted events and dedupe keys.
//!
//! One file, `stagegate.redb`, in `data_dir`. Every write is a single ACID transaction with
//! immediate durability, so what the API acknowledges survives kill -9: an event batch with its
//! dedupe keys; a decision's new state with its receipt (never one without the other). A group
//! commit appends its events to the *event log*, each packed (see [`packed`]), grouped by scope
//! and epoch, in records of at most 64 KiB each keyed by the last event number it holds (see
//! [`records`]), plus its ids in the dedupe index (grouped: ordered ids share an entry per
//! hundred or more, see [`dedupe`]) and one dedupe-log record (the commit's new ids,
//! front-coded): a few pages at the end of each B-tree, however many rollouts the commit
//! touches.
//!
//! Start-up reads evidence *checkpoints* (aggregates with the event sequence number they cover)
//! plus the tail of the log after them, in one pass for every scope, so it stays flat however
//! many events were stored; raw events covered by a checkpoint (and older epochs' events) are
//! pruned after `server.retention`.
//!
//! A failed write (a full disk) marks the store unhealthy: `/readyz` says so, writes answer 503
//! with what happened, and [`Store::recover`](super::Store::recover) reopens the file once writes succeed again. A
//! damaged file is never written: start-up checks it read-only first, and a file that needs
//! redb's repair is copied aside first and restored byte for byte if the repair fails.
//! redb's file lock refuses a second process on the same directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, RwLock};

use redb::{
    Builder, Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, TableDefinition, TableHandle,
};
use rustc_hash::FxHashMap;

use super::{BatchItem, Change, Health, Store, StoreError, StoredEvent, StoredStates};
use crate::core::affected::TagRecord;
use crate::core::clock::Millis;
use crate::core::evidence::Checkpoint;
use crate::core::notice::Outbox;
use crate::core::receipt::Receipt;

mod dedupe;
mod packed;
mod varint;

const STATES: TableDefinition<&str, &[u8]> = TableDefinition::new("states");
const RECEIPTS: TableDefinition<u64, &[u8]> = TableDefinition::new("receipts");
/// The event log: the last event number a record holds → a group commit's events, grouped by
/// scope and epoch (see [`records`]). A commit writes a record per 64 KiB of its events
/// ([`records::pieces`]), not one per event or per scope.
const EVENT_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("event_log");
/// `(scope, epoch)` → the epoch's first event number: where replaying an epoch starts.
const EPOCH_FIRST: TableDefinition<(&str, u64), u64> = TableDefinition::new("epoch_first");
/// Before the event log: one run per scope per commit, keyed `(scope, epoch, last event
/// number)`. Moved into the log at open.
const LEGACY_EVENT_RUNS: TableDefinition<(&str, u64, u64), &[u8]> =
    TableDefinition::new("event_runs");
/// Commit time → the ids first accepted then (see [`runs`]): what pruning dedupe keys reads.
const DEDUPE_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("dedupe_log");
/// Before event runs: one record per event (a `StoredEvent`). Moved into the log at open.
const LEGACY_EVENTS: TableDefinition<(&str, u64, u64), &[u8]> = TableDefinition::new("events");
/// Before the dedupe log: one key per event id. Moved into the log at open.
const LEGACY_DEDUPE_BY_TIME: TableDefinition<(u64, &str), ()> =
    TableDefinition::new("dedupe_by_time");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
const CHECKPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("checkpoints");
/// Scope → the epoch and the last event number of its checkpoint: what pruning reads, without
/// decoding the evidence beside it (at a thousand rollouts, 200 MB of it).
const CHECKPOINT_COVERS: TableDefinition<&str, (u64, u64)> =
    TableDefinition::new("checkpoint_covers");
/// `rollout \n Idempotency-Key` → the receipt an operator action with that key wrote.
const IDEMPOTENCY: TableDefinition<&str, u64> = TableDefinition::new("idempotency");
/// `rollout \n receipt \n event id` → the owner's tag on an affected item.
const AFFECTED: TableDefinition<&str, &[u8]> = TableDefinition::new("affected");
/// Commit time → the last event sequence number committed by then (for retention).
const SEQ_MARKS: TableDefinition<u64, u64> = TableDefinition::new("seq_marks");

/// redb's page cache unless `server.store_cache_bytes` says otherwise.
const DEFAULT_CACHE_BYTES: usize = crate::plan::DEFAULT_STORE_CACHE_BYTES;

/// The file name inside `data_dir`.
pub const FILE_NAME: &str = "stagegate.redb";

/// The counter holding the event number every scope's checkpoint covers.
const CHECKPOINTS_COVER: &str = "checkpoints_cover";

/// One scope's events within a group commit, while the commit's log records are built.
struct Block<'a> {
    scope: &'a str,
    epoch: u64,
    first: u64,
}

fn dberr<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Db(e.into())
}

/// The embedded store: one redb file in `data_dir`.
pub struct EmbeddedStore {
    /// `None` only while [`Store::recover`](super::Store::recover) reopens the file.
    db: RwLock<Option<Database>>,
    path: PathBuf,
    durability: Durability,
    health: Health,
    /// redb's page cache, bytes: the bound on what the store holds in memory.
    cache_bytes: usize,
    /// Epochs whose start `epoch_first` is known to hold, so a commit looks up only new ones.
    started: Mutex<StartedEpochs>,
}

/// A cache of `epoch_first`'s keys. Filled after a commit that wrote or read them; emptied
/// (and its generation moved) inside any transaction that removes them and on recovery, so a
/// commit that raced such a change adds nothing stale.
#[derive(Default)]
struct StartedEpochs {
    generation: u64,
    /// Scope → its epochs known to be started.
    known: FxHashMap<String, Vec<u64>>,
}

impl StartedEpochs {
    fn contains(&self, scope: &str, epoch: u64) -> bool {
        self.known.get(scope).is_some_and(|e| e.contains(&epoch))
    }
}

impl EmbeddedStore {
    fn started(&self) -> MutexGuard<'_, StartedEpochs> {
        self.started.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets every known epoch start (their table changed under the cache).
    fn forget_started(&self) {
        let mut started = self.started();
        started.generation += 1;
        started.known.clear();
    }
}

/// Whether a redb error means the file system refused a write (the store must be reopened).
fn is_io(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Db(
            redb::Error::Io(_)
                | redb::Error::PreviousIo
                | redb::Error::DatabaseClosed
                | redb::Error::TransactionPoisoned
                | redb::Error::Backend(_)
        ) | StoreError::Unavailable { .. }
    )
}

/// Runs `f` with panics caught and the panic message kept off stderr: redb reports some
/// damaged pages by panicking, and a damaged file must end in a clear error, not a backtrace.
fn quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    out.map_err(|p| {
        p.downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "redb panicked on a damaged page".into())
    })
}

fn builder(cache_bytes: usize) -> Builder {
    let mut b = Builder::new();
    b.set_cache_size(cache_bytes);
    b
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`. Refuses a directory another process holds, an
    /// empty file, and a file that is not a readable store — none is ever replaced or written.
    pub fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
        Self::open_with_cache(dir, DEFAULT_CACHE_BYTES)
    }

    /// [`EmbeddedStore::open`] with a page cache of `cache_bytes`.
    pub fn open_with_cache(dir: &Path, cache_bytes: usize) -> Result<EmbeddedStore, StoreError> {
        let path = dir.join(FILE_NAME);
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Unreadable {
            path: dir.to_path_buf(),
            detail: e.to_string(),
        })?;
        let db = Self::open_checked(&path, cache_bytes)?;
        let store = EmbeddedStore {
            db: RwLock::new(Some(db)),
            path,
            durability: Durability::Immediate,
            health: Health::default(),
            cache_bytes,
            started: Mutex::default(),
        };
        store.create_tables().map_err(|e| StoreError::Unreadable {
            path: store.path.clone(),
            detail: e.to_string(),
        })?;
        Ok(store)
    }

    /// Opens `path` read-write only once it is known to be sound: an existing file is opened
    /// read-only first; one that needs redb's repair (an unclean stop, or damage) is copied
    /// aside, repaired, checked, and — if any of that fails — restored byte for byte.
    fn open_checked(path: &Path, cache_bytes: usize) -> Result<Database, StoreError> {
        let unreadable = |detail: String| StoreError::Unreadable {
            path: path.to_path_buf(),
            detail,
        };
        let open_error = |e: redb::DatabaseError| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked {
                path: path.to_path_buf(),
            },
            other => unreadable(other.to_string()),
        };
        let existing = match std::fs::metadata(path) {
            Ok(m) => Some(m.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(unreadable(e.to_string())),
        };
        match existing {
            None => return builder(cache_bytes).create(path).map_err(open_error),
            Some(0) => {
                return Err(StoreError::Empty {
                    path: path.to_path_buf(),
                });
            }
            Some(_) => {}
        }
        let probe = quietly(|| {
            builder(cache_bytes)
                .open_read_only(path)
                .map_err(open_error)
                .and_then(|ro| Self::verify(&ro.begin_read().map_err(dberr)?))
        })
        .map_err(unreadable)?;
        match probe {
            Ok(()) => return builder(cache_bytes).open(path).map_err(open_error),
            Err(StoreError::Unreadable { detail, .. })
                if detail.contains(&redb::DatabaseError::RepairAborted.to_string()) => {}
            Err(other) => return Err(other),
        }
        // Not shut down cleanly (kill -9), or damaged: repair a file whose original is kept.
        let backup = path.with_extension("redb.before-repair");
        std::fs::copy(path, &backup).map_err(|e| {
            unreadable(format!(
                "needs repair, but it could not be copied aside first: {e}"
            ))
        })?;
        let repaired = quietly(|| {
            let db = builder(cache_bytes).open(path).map_err(open_error)?;
            Self::verify(&db.begin_read().map_err(dberr)?)?;
            Ok::<_, StoreError>(db)
        })
        .map_err(unreadable)
        .and_then(|r| r);
        match repaired {
            Ok(db) => {
                let _ = std::fs::remove_file(&backup);
                tracing::info!(store = %path.display(), "store repaired after an unclean stop");
                Ok(db)
            }
            Err(StoreError::Locked { path }) => {
                let _ = std::fs::remove_file(&backup);
                Err(StoreError::Locked { path })
            }
            Err(e) => {
                std::fs::rename(&backup, path).map_err(|r| {
                    unreadable(format!(
                        "{e}; restoring the original from {} failed: {r}",
                        backup.display()
                    ))
                })?;
                Err(unreadable(match e {
                    StoreError::Unreadable { detail, .. } => detail,
                    other => other.to_string(),
                }))
            }
        }
    }

    /// Reads every table's records that start-up relies on (states, checkpoints, counters,
    /// the newest receipts), so a damaged page shows up before anything is written.
    fn verify(tx: &ReadTransaction) -> Result<(), StoreError> {
        read_rows(tx, STATES, usize::MAX)?;
        read_rows(tx, CHECKPOINTS, usize::MAX)?;
        read_rows(tx, CHECKPOINT_COVERS, usize::MAX)?;
        read_rows(tx, COUNTERS, usize::MAX)?;
        read_rows(tx, RECEIPTS, 100)
    }

    fn create_tables(&self) -> Result<(), StoreError> {
        let tx = self.write()?;
        tx.open_table(STATES).map_err(dberr)?;
        tx.open_table(RECEIPTS).map_err(dberr)?;
        tx.open_table(EVENT_LOG).map_err(dberr)?;
        tx.open_table(EPOCH_FIRST).map_err(dberr)?;
        tx.open_table(dedupe::GROUPS).map_err(dberr)?;
        tx.open_table(DEDUPE_LOG).map_err(dberr)?;
        tx.open_table(COUNTERS).map_err(dberr)?;
        tx.open_table(OUTBOX).map_err(dberr)?;
        tx.open_table(CHECKPOINTS).map_err(dberr)?;
        tx.open_table(SEQ_MARKS).map_err(dberr)?;
        tx.open_table(IDEMPOTENCY).map_err(dberr)?;
        tx.open_table(AFFECTED).map_err(dberr)?;
        migrate_legacy(&tx)?;
        fill_checkpoint_covers(&tx)?;
        let moved = dedupe::migrate(&tx)?;
        tx.commit().map_err(dberr)?;
        if moved > 0 {
            tracing::info!(dedupe_keys = moved, "store's dedupe keys moved into groups");
        }
        Ok(())
    }

    fn unavailable(&self, detail: String) -> StoreError {
        StoreError::Unavailable {
            dir: self.path.parent().unwrap_or(&self.path).to_path_buf(),
            detail,
        }
    }

    /// Runs a write; an I/O failure marks the store unhealthy and says what to do.
    fn writing<T>(&self, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
        if !self.is_healthy() {
            return Err(self.unavailable(self.failure().unwrap_or_default()));
        }
        match f() {
            Err(e) if is_io(&e) => {
                let detail = match &e {
                    StoreError::Unavailable { detail, .. } => detail.clone(),
                    other => other.to_string(),
                };
                self.health.fail(&detail);
                tracing::error!(store = %self.path.display(), error = %detail, "the store cannot commit; not ready until a write succeeds again");
                Err(self.unavailable(detail))
            }
            other => other,
        }
    }

    /// Runs `f` on the open database handle (none while [`Store::recover`](super::Store::recover) reopens it).
    fn with_db<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let slot = self
            .db
            .read()
            .map_err(|_| self.unavailable("the store handle is poisoned".into()))?;
        let db = slot
            .as_ref()
            .ok_or_else(|| self.unavailable("the store is being reopened".into()))?;
        f(db)
    }

    fn read(&self) -> Result<ReadTransaction, StoreError> {
        self.with_db(|db| db.begin_read().map_err(dberr))
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
        let mut tx = self.with_db(|db| db.begin_write().map_err(dberr))?;
        tx.set_durability(self.durability)
            .map_err(|e| StoreError::Unreadable {
                path: self.path.clone(),
                detail: e.to_string(),
            })?;
        Ok(tx)
    }

    fn ingest_groups_inner(
        &self,
        groups: &[&[BatchItem]],
        now: Millis,
    ) -> Result<(Vec<Vec<bool>>, u64), StoreError> {
        let tx = self.write()?;
        let last_seq;
        let mut results = Vec::with_capacity(groups.len());
        // Epoch starts this commit wrote or found, under the cache generation it read.
        let mut newly_started: Option<(u64, Vec<(String, u64)>)> = None;
        {
            let ids: Vec<&str> = groups
                .iter()
                .flat_map(|items| items.iter().map(BatchItem::event_id))
                .collect();
            // The new ids, as the commit's run of the dedupe log.
            let mut accepted_ids = Vec::new();
            let mut is_new = dedupe::accept(
                &mut tx.open_table(dedupe::GROUPS).map_err(dberr)?,
                &ids,
                &mut accepted_ids,
            )?
            .into_iter();
            let mut counters = tx.open_table(COUNTERS).map_err(dberr)?;
            let mut seq = counters
                .get("events")
                .map_err(dberr)?
                .map_or(0, |v| v.value());
            // This commit's events, grouped by scope and epoch, in order of first appearance.
            let mut blocks: Vec<Block<'_>> = Vec::new();
            let mut block_of: FxHashMap<(&str, u64), usize> = FxHashMap::default();
            // Each accepted event's block, number and where it lies in `packed_events`, in order
            // of acceptance.
            let mut logged: Vec<(usize, u64, std::ops::Range<usize>)> = Vec::new();
            let mut packed_events: Vec<u8> = Vec::new();
            for items in groups {
                let mut fresh = Vec::with_capacity(items.len());
                for (item, new) in items.iter().zip(&mut is_new) {
                    if !new {
                        fresh.push(false);
                        continue;
                    }
                    if let Some(stored) = &item.stored {
                        seq += 1;
                        let key = (&*stored.scope, stored.epoch);
                        let at = *block_of.entry(key).or_insert_with(|| {
                            blocks.push(Block {
                                scope: key.0,
                                epoch: key.1,
                                first: seq,
                            });
                            blocks.len() - 1
                        });
                        let start = packed_events.len();
                        packed::pack(&item.event, &mut packed_events);
                        logged.push((at, seq, start..packed_events.len()));
                    }
                    fresh.push(true);
                }
                results.push(fresh);
            }
            if !blocks.is_empty() {
                let mut firsts = tx.open_table(EPOCH_FIRST).map_err(dberr)?;
                let (generation, unknown): (u64, Vec<&Block<'_>>) = {
                    let started = self.started();
                    let unknown = blocks
                        .iter()
                        .filter(|b| !started.contains(b.scope, b.epoch))
                        .collect();
                    (started.generation, unknown)
                };
                for block in &unknown {
                    if firsts
                        .get((block.scope, block.epoch))
                        .map_err(dberr)?
                        .is_none()
                    {
                        firsts
                            .insert((block.scope, block.epoch), block.first)
                            .map_err(dberr)?;
                    }
                }
                newly_started = Some((
                    generation,
                    unknown
                        .iter()
                        .map(|b| (b.scope.to_string(), b.epoch))
                        .collect(),
                ));
                let mut log = tx.open_table(EVENT_LOG).map_err(dberr)?;
                // Grouped by block, each block's events in order (the sort is stable).
                logged.sort_by_key(|&(block, _, _)| block);
                let pieces = records::pieces(
                    logged.iter().map(|(block, seq, at)| {
                        let block = &blocks[*block];
                        (block.scope, block.epoch, *seq, &packed_events[at.clone()])
                    }),
                    records::PIECE_BYTES,
                );
                for (last, piece) in pieces {
                    log.insert(last, piece.as_slice()).map_err(dberr)?;
                }
            }
            if !accepted_ids.is_empty() {
                append_dedupe_log(&tx, now, &accepted_ids)?;
            }
            counters.insert("events", seq).map_err(dberr)?;
            advance_clock(&mut counters, now)?;
            tx.open_table(SEQ_MARKS)
                .map_err(dberr)?
                .insert(now, seq)
                .map_err(dberr)?;
            last_seq = seq;
        }
        tx.commit().map_err(dberr)?;
        let mut started = self.started();
        if let Some((generation, newly)) = newly_started
            && started.generation == generation
        {
            for (scope, epoch) in newly {
                let epochs = started.known.entry(scope).or_default();
                if !epochs.contains(&epoch) {
                    epochs.push(epoch);
                }
            }
        }
        Ok((results, last_seq))
    }

    fn commit_inner(
        &self,
        change: &Change<'_>,
        receipt: &mut Receipt,
        outbox: &dyn Fn(&Receipt) -> Vec<Outbox>,
    ) -> Result<(), StoreError> {
        let (key, _, _) = change.key_and_scope();
        let tx = self.write()?;
        {
            let mut counters = tx.open_table(COUNTERS).map_err(dberr)?;
            let seq = counters
                .get("receipts")
                .map_err(dberr)?
                .map_or(0, |v| v.value())
                + 1;
            counters.insert("receipts", seq).map_err(dberr)?;
            advance_clock(&mut counters, receipt.at_ms)?;
            receipt.id = Receipt::id_for(seq);
            let mut receipts = tx.open_table(RECEIPTS).map_err(dberr)?;
            receipts
                .insert(seq, serde_json::to_vec(receipt)?.as_slice())
                .map_err(dberr)?;
            if let Some(k) = &receipt.idempotency_key {
                let mut keys = tx.open_table(IDEMPOTENCY).map_err(dberr)?;
                keys.insert(idempotency_key(&receipt.rollout, k).as_str(), seq)
                    .map_err(dberr)?;
            }
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
            // Older epochs' events stay in the log until retention prunes them (see
            // `prune_events`); replay reads only the current epoch, or the protected one.
        }
        tx.commit().map_err(dberr)?;
        Ok(())
    }

    fn prune_dedupe_inner(&self, cutoff: Millis) -> Result<usize, StoreError> {
        let tx = self.write()?;
        let mut pruned = 0;
        {
            let mut log = tx.open_table(DEDUPE_LOG).map_err(dberr)?;
            let mut groups = tx.open_table(dedupe::GROUPS).map_err(dberr)?;
            // A record at a time: one commit's ids, whose groups it updates together.
            for row in log.range(..cutoff).map_err(dberr)? {
                let (_, ids) = row.map_err(dberr)?;
                let ids = dedupe::logged_ids(ids.value())?;
                dedupe::forget(&mut groups, ids.iter())?;
                pruned += ids.len();
            }
            log.retain_in(..cutoff, |_, _| false).map_err(dberr)?;
        }
        tx.commit().map_err(dberr)?;
        Ok(pruned)
    }
}

impl Store for EmbeddedStore {
    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn is_healthy(&self) -> bool {
        self.health.is_healthy()
    }

    fn failure(&self) -> Option<String> {
        self.health.failure()
    }

    fn recover(&self, now: Millis) -> bool {
        if self.is_healthy() {
            return true;
        }
        let Ok(mut slot) = self.db.write() else {
            return false;
        };
        // The old handle must go first: it holds the file lock.
        drop(slot.take());
        self.forget_started();
        let reopened = quietly(|| builder(self.cache_bytes).open(&self.path))
            .ok()
            .and_then(|r| {
                r.map_err(|e| tracing::warn!(error = %e, "store reopen failed"))
                    .ok()
            });
        *slot = reopened;
        drop(slot);
        let probe = (|| {
            let tx = self.write()?;
            tx.open_table(COUNTERS)
                .map_err(dberr)?
                .insert("probe", now)
                .map_err(dberr)?;
            tx.commit().map_err(dberr)
        })();
        match probe {
            Ok(()) => {
                self.health.recovered();
                tracing::info!(store = %self.path.display(), "the store commits again; ready");
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "store still cannot commit");
                false
            }
        }
    }

    fn states(&self) -> Result<StoredStates, StoreError> {
        let tx = self.read()?;
        let mut rollouts = HashMap::new();
        let mut guards = HashMap::new();
        let states = tx.open_table(STATES).map_err(dberr)?;
        for row in states.iter().map_err(dberr)? {
            let (key, value) = row.map_err(dberr)?;
            if let Some(name) = key.value().strip_prefix("rollout:") {
                rollouts.insert(name.to_string(), serde_json::from_slice(value.value())?);
            } else if let Some(name) = key.value().strip_prefix("guard:") {
                guards.insert(name.to_string(), serde_json::from_slice(value.value())?);
            }
        }
        Ok((rollouts, guards))
    }

    fn checkpoint(&self, scope: &str) -> Result<Option<Checkpoint>, StoreError> {
        let tx = self.read()?;
        let table = tx.open_table(CHECKPOINTS).map_err(dberr)?;
        decode(table.get(scope).map_err(dberr)?)
    }

    fn replay(
        &self,
        scope: &str,
        epoch: u64,
        after: u64,
        through: u64,
        f: &mut dyn FnMut(StoredEvent),
    ) -> Result<usize, StoreError> {
        self.replay_scopes(&[(scope.to_string(), epoch, after)], through, f)
    }

    fn replay_scopes(
        &self,
        scopes: &[(String, u64, u64)],
        through: u64,
        f: &mut dyn FnMut(StoredEvent),
    ) -> Result<usize, StoreError> {
        let tx = self.read()?;
        // Each scope's epoch from its first event after `after`: one pass from the earliest.
        let firsts = tx.open_table(EPOCH_FIRST).map_err(dberr)?;
        let mut wanted: HashMap<&str, (u64, u64)> = HashMap::new();
        let mut start = u64::MAX;
        for (scope, epoch, after) in scopes {
            let Some(first) = firsts.get((scope.as_str(), *epoch)).map_err(dberr)? else {
                continue; // nothing stored in this epoch
            };
            let from = first.value().max(after.saturating_add(1));
            if from <= through {
                start = start.min(from);
                wanted.insert(scope.as_str(), (*epoch, from));
            }
        }
        if wanted.is_empty() {
            return Ok(0);
        }
        let log = tx.open_table(EVENT_LOG).map_err(dberr)?;
        let mut n = 0;
        // A record is keyed by its last event: the first record holding `start` or later.
        for row in log.range(start..).map_err(dberr)? {
            let (_, record) = row.map_err(dberr)?;
            for block in records::blocks(record.value()) {
                let (scope, epoch, entries) = block?;
                let Some(&(want_epoch, from)) = wanted.get(scope) else {
                    continue;
                };
                if epoch != want_epoch {
                    continue;
                }
                for entry in records::entries(entries, true) {
                    let (seq, body) = entry?;
                    if seq < from || seq > through {
                        continue;
                    }
                    f(StoredEvent {
                        scope: scope.to_string(),
                        epoch,
                        event: packed::decode(body)?,
                    });
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    fn checkpoints_cover(&self) -> Result<u64, StoreError> {
        let tx = self.read()?;
        let counters = tx.open_table(COUNTERS).map_err(dberr)?;
        Ok(counters
            .get(CHECKPOINTS_COVER)
            .map_err(dberr)?
            .map_or(0, |v| v.value()))
    }

    fn last_seq(&self) -> Result<u64, StoreError> {
        let tx = self.read()?;
        let counters = tx.open_table(COUNTERS).map_err(dberr)?;
        Ok(counters
            .get("events")
            .map_err(dberr)?
            .map_or(0, |v| v.value()))
    }

    fn clock_high_water(&self) -> Result<Millis, StoreError> {
        let tx = self.read()?;
        let counters = tx.open_table(COUNTERS).map_err(dberr)?;
        Ok(counters
            .get("clock")
            .map_err(dberr)?
            .map_or(0, |v| v.value()))
    }

    fn put_checkpoints(
        &self,
        checkpoints: &[(String, Checkpoint)],
        covers: Option<u64>,
    ) -> Result<(), StoreError> {
        if checkpoints.is_empty() && covers.is_none() {
            return Ok(());
        }
        // Encoded before the write transaction: at a thousand rollouts a tick's checkpoints
        // are tens of megabytes of JSON, and ingest's group commits wait for the transaction.
        let encoded = checkpoints
            .iter()
            .map(|(scope, cp)| Ok((scope.as_str(), (cp.epoch, cp.seq), serde_json::to_vec(cp)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.writing(|| {
            let tx = self.write()?;
            {
                let mut table = tx.open_table(CHECKPOINTS).map_err(dberr)?;
                let mut cover_table = tx.open_table(CHECKPOINT_COVERS).map_err(dberr)?;
                for (scope, cover, json) in &encoded {
                    table.insert(*scope, json.as_slice()).map_err(dberr)?;
                    cover_table.insert(*scope, *cover).map_err(dberr)?;
                }
                if let Some(seq) = covers {
                    tx.open_table(COUNTERS)
                        .map_err(dberr)?
                        .insert(CHECKPOINTS_COVER, seq)
                        .map_err(dberr)?;
                }
            }
            tx.commit().map_err(dberr)
        })
    }

    fn prune_events(&self, cutoff: Millis) -> Result<usize, StoreError> {
        self.writing(|| {
            let tx = self.write()?;
            let mut pruned = 0;
            {
                let mut marks = tx.open_table(SEQ_MARKS).map_err(dberr)?;
                let cutoff_seq = match marks.range(..=cutoff).map_err(dberr)?.next_back() {
                    Some(row) => row.map_err(dberr)?.1.value(),
                    None => 0,
                };
                let checkpoints: Vec<(String, (u64, u64))> = {
                    let table = tx.open_table(CHECKPOINT_COVERS).map_err(dberr)?;
                    let mut out = Vec::new();
                    for row in table.iter().map_err(dberr)? {
                        let (k, v) = row.map_err(dberr)?;
                        out.push((k.value().to_string(), v.value()));
                    }
                    out
                };
                let protected = protected_epochs(&tx)?;
                let covers: HashMap<&str, (u64, u64)> = checkpoints
                    .iter()
                    .map(|(scope, cover)| (scope.as_str(), *cover))
                    .collect();
                // An event goes once its scope's checkpoint covers it (or a later epoch began),
                // unless an open containment keeps its epoch for the affected list.
                let covered = |scope: &str, epoch: u64, seq: u64| {
                    covers.get(scope).is_some_and(|&(cp_epoch, cp_seq)| {
                        (epoch < cp_epoch || (epoch == cp_epoch && seq <= cp_seq))
                            && protected.get(scope) != Some(&epoch)
                    })
                };
                let mut log = tx.open_table(EVENT_LOG).map_err(dberr)?;
                let mut gone = Vec::new();
                let mut rewritten = Vec::new();
                for row in log.range(..=cutoff_seq).map_err(dberr)? {
                    let (key, record) = row.map_err(dberr)?;
                    let (kept, dropped) = records::without(record.value(), &covered)?;
                    pruned += dropped;
                    match kept {
                        _ if dropped == 0 => {}
                        None => gone.push(key.value()),
                        Some(kept) => rewritten.push((key.value(), kept)),
                    }
                }
                for key in gone {
                    log.remove(key).map_err(dberr)?;
                }
                for (key, kept) in rewritten {
                    log.insert(key, kept.as_slice()).map_err(dberr)?;
                }
                // An epoch's start is forgotten once a later epoch's checkpoint exists.
                self.forget_started();
                tx.open_table(EPOCH_FIRST)
                    .map_err(dberr)?
                    .retain(|(scope, epoch), _| {
                        covers.get(scope).is_none_or(|&(cp_epoch, _)| {
                            epoch >= cp_epoch || protected.get(scope) == Some(&epoch)
                        })
                    })
                    .map_err(dberr)?;
                // Keep the newest mark at or before the cutoff: it still locates the cutoff.
                if cutoff > 0 {
                    marks
                        .retain_in(..cutoff.saturating_sub(1), |_, _| false)
                        .map_err(dberr)?;
                }
            }
            tx.commit().map_err(dberr)?;
            Ok(pruned)
        })
    }

    fn size_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    fn ingest(&self, items: &[BatchItem], now: Millis) -> Result<Vec<bool>, StoreError> {
        let (mut out, _) = self.ingest_groups(&[items], now)?;
        Ok(out.pop().unwrap_or_default())
    }

    fn ingest_groups(
        &self,
        groups: &[&[BatchItem]],
        now: Millis,
    ) -> Result<(Vec<Vec<bool>>, u64), StoreError> {
        self.writing(|| self.ingest_groups_inner(groups, now))
    }

    fn commit(
        &self,
        change: &Change<'_>,
        receipt: &mut Receipt,
        outbox: &dyn Fn(&Receipt) -> Vec<Outbox>,
    ) -> Result<(), StoreError> {
        self.writing(|| self.commit_inner(change, receipt, &outbox))
    }

    fn receipts(
        &self,
        scope: Option<&str>,
        since: Option<Millis>,
        limit: usize,
    ) -> Result<Vec<Receipt>, StoreError> {
        let tx = self.read()?;
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

    fn receipt(&self, id: &str) -> Result<Option<Receipt>, StoreError> {
        let Some(seq) = id.strip_prefix("r-").and_then(|s| s.parse::<u64>().ok()) else {
            return Ok(None);
        };
        let tx = self.read()?;
        let table = tx.open_table(RECEIPTS).map_err(dberr)?;
        decode(table.get(seq).map_err(dberr)?)
    }

    fn receipt_by_key(&self, rollout: &str, key: &str) -> Result<Option<Receipt>, StoreError> {
        let tx = self.read()?;
        let keys = tx.open_table(IDEMPOTENCY).map_err(dberr)?;
        let Some(seq) = keys
            .get(idempotency_key(rollout, key).as_str())
            .map_err(dberr)?
            .map(|v| v.value())
        else {
            return Ok(None);
        };
        let table = tx.open_table(RECEIPTS).map_err(dberr)?;
        decode(table.get(seq).map_err(dberr)?)
    }

    fn affected_tags(
        &self,
        rollout: &str,
        receipt: &str,
    ) -> Result<HashMap<String, TagRecord>, StoreError> {
        let prefix = format!("{rollout}\n{receipt}\n");
        let tx = self.read()?;
        let table = tx.open_table(AFFECTED).map_err(dberr)?;
        let mut out = HashMap::new();
        for row in table.range(prefix.as_str()..).map_err(dberr)? {
            let (k, v) = row.map_err(dberr)?;
            let Some(event_id) = k.value().strip_prefix(prefix.as_str()) else {
                break;
            };
            out.insert(event_id.to_string(), serde_json::from_slice(v.value())?);
        }
        Ok(out)
    }

    fn put_affected_tag(
        &self,
        rollout: &str,
        receipt: &str,
        event_id: &str,
        tag: &TagRecord,
    ) -> Result<(), StoreError> {
        self.writing(|| {
            let tx = self.write()?;
            {
                let mut table = tx.open_table(AFFECTED).map_err(dberr)?;
                table
                    .insert(
                        format!("{rollout}\n{receipt}\n{event_id}").as_str(),
                        serde_json::to_vec(tag)?.as_slice(),
                    )
                    .map_err(dberr)?;
            }
            tx.commit().map_err(dberr)
        })
    }

    fn due_notifications(
        &self,
        now: Millis,
        limit: usize,
    ) -> Result<Vec<(u64, Outbox)>, StoreError> {
        let tx = self.read()?;
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

    fn notification_done(&self, key: u64) -> Result<(), StoreError> {
        self.writing(|| {
            let tx = self.write()?;
            tx.open_table(OUTBOX)
                .map_err(dberr)?
                .remove(key)
                .map_err(dberr)?;
            tx.commit().map_err(dberr)
        })
    }

    fn notification_retry(&self, key: u64, item: &Outbox) -> Result<(), StoreError> {
        self.writing(|| {
            let tx = self.write()?;
            tx.open_table(OUTBOX)
                .map_err(dberr)?
                .insert(key, serde_json::to_vec(item)?.as_slice())
                .map_err(dberr)?;
            tx.commit().map_err(dberr)
        })
    }

    fn prune_dedupe(&self, cutoff: Millis) -> Result<usize, StoreError> {
        self.writing(|| self.prune_dedupe_inner(cutoff))
    }
}

/// Moves the stored clock high-water mark forward (never back).
fn advance_clock(
    counters: &mut redb::Table<'_, &'static str, u64>,
    now: Millis,
) -> Result<(), StoreError> {
    let seen = counters
        .get("clock")
        .map_err(dberr)?
        .map_or(0, |v| v.value());
    if now > seen {
        counters.insert("clock", now).map_err(dberr)?;
    }
    Ok(())
}

/// Appends ids accepted at `now` to the dedupe log (a commit in the same millisecond as the
/// last one extends its record).
fn append_dedupe_log(
    tx: &redb::WriteTransaction,
    now: Millis,
    ids: &[u8],
) -> Result<(), StoreError> {
    let mut log = tx.open_table(DEDUPE_LOG).map_err(dberr)?;
    let mut record = log
        .get(now)
        .map_err(dberr)?
        .map(|v| v.value().to_vec())
        .unwrap_or_default();
    record.extend_from_slice(ids);
    log.insert(now, record.as_slice()).map_err(dberr)?;
    Ok(())
}

/// What a stored checkpoint covers, read without its evidence (serde skips the rest).
#[derive(serde::Deserialize)]
struct Cover {
    epoch: u64,
    seq: u64,
}

/// Gives every checkpoint its row in [`CHECKPOINT_COVERS`]: a store written before that table
/// existed gets them once, at open; afterwards the two tables are written together, so
/// their lengths match and nothing is read.
fn fill_checkpoint_covers(tx: &redb::WriteTransaction) -> Result<(), StoreError> {
    let checkpoints = tx.open_table(CHECKPOINTS).map_err(dberr)?;
    let mut covers = tx.open_table(CHECKPOINT_COVERS).map_err(dberr)?;
    if covers.len().map_err(dberr)? == checkpoints.len().map_err(dberr)? {
        return Ok(());
    }
    for row in checkpoints.iter().map_err(dberr)? {
        let (scope, value) = row.map_err(dberr)?;
        if covers.get(scope.value()).map_err(dberr)?.is_none() {
            let cover: Cover = serde_json::from_slice(value.value())?;
            covers
                .insert(scope.value(), (cover.epoch, cover.seq))
                .map_err(dberr)?;
        }
    }
    Ok(())
}

/// Moves a store written before event runs and the dedupe log into them: each old event
/// becomes a run of one, each old dedupe time key an entry of its time's log record; then
/// [`migrate_runs`] moves the runs into the event log. Runs once, in the transaction that opens
/// the tables; the old tables are then deleted.
fn migrate_legacy(tx: &redb::WriteTransaction) -> Result<(), StoreError> {
    // A write transaction's `open_table` creates what is missing: look before opening.
    let legacy = [
        LEGACY_EVENTS.name(),
        LEGACY_DEDUPE_BY_TIME.name(),
        LEGACY_EVENT_RUNS.name(),
    ];
    let present = tx
        .list_tables()
        .map_err(dberr)?
        .any(|t| legacy.contains(&t.name()));
    if !present {
        return Ok(());
    }
    // Streamed, table to table: a large old store is never held in memory at once.
    let mut moved_events = 0usize;
    let mut moved_ids = 0usize;
    match tx.open_table(LEGACY_EVENTS) {
        Ok(old) => {
            let mut runs_table = tx.open_table(LEGACY_EVENT_RUNS).map_err(dberr)?;
            for row in old.iter().map_err(dberr)? {
                let (key, value) = row.map_err(dberr)?;
                let (scope, epoch, seq) = key.value();
                let stored: StoredEvent = serde_json::from_slice(value.value())?;
                let mut run = Vec::new();
                records::push(&mut run, Some(seq), &serde_json::to_vec(&stored.event)?);
                runs_table
                    .insert((scope, epoch, seq), run.as_slice())
                    .map_err(dberr)?;
                moved_events += 1;
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(dberr(e)),
    }
    match tx.open_table(LEGACY_DEDUPE_BY_TIME) {
        Ok(old) => {
            // Rows come in time order: one log record per time.
            let mut log = tx.open_table(DEDUPE_LOG).map_err(dberr)?;
            let mut pending: Option<(u64, Vec<u8>)> = None;
            for row in old.iter().map_err(dberr)? {
                let (key, _) = row.map_err(dberr)?;
                let (at, id) = key.value();
                if pending.as_ref().is_some_and(|(t, _)| *t != at) {
                    if let Some((t, ids)) = pending.take() {
                        log.insert(t, ids.as_slice()).map_err(dberr)?;
                    }
                }
                let (_, ids) = pending.get_or_insert_with(|| (at, Vec::new()));
                records::push(ids, None, id.as_bytes());
                moved_ids += 1;
            }
            if let Some((t, ids)) = pending {
                log.insert(t, ids.as_slice()).map_err(dberr)?;
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(dberr(e)),
    }
    tx.delete_table(LEGACY_EVENTS).map_err(dberr)?;
    tx.delete_table(LEGACY_DEDUPE_BY_TIME).map_err(dberr)?;
    if moved_events + moved_ids > 0 {
        tracing::info!(
            events = moved_events,
            dedupe_keys = moved_ids,
            "store moved to event runs and the dedupe log"
        );
    }
    migrate_runs(tx)
}

/// Moves event runs (one record per scope per commit) into the event log: each run becomes a
/// record of one block, keyed by its last event number (unique, so no two collide), and each
/// epoch's first run gives the epoch's start. Runs of different scopes may interleave in event
/// numbers; replay filters every record by number, so that only costs order across scopes,
/// which evidence does not depend on.
fn migrate_runs(tx: &redb::WriteTransaction) -> Result<(), StoreError> {
    let old = match tx.open_table(LEGACY_EVENT_RUNS) {
        Ok(old) => old,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(dberr(e)),
    };
    let mut log = tx.open_table(EVENT_LOG).map_err(dberr)?;
    let mut firsts = tx.open_table(EPOCH_FIRST).map_err(dberr)?;
    let mut moved = 0usize;
    for row in old.iter().map_err(dberr)? {
        let (key, run) = row.map_err(dberr)?;
        let (scope, epoch, last) = key.value();
        let mut first = None;
        for entry in records::entries(run.value(), true) {
            let (seq, _) = entry?;
            first.get_or_insert(seq);
            moved += 1;
        }
        let Some(first) = first else { continue };
        let mut record = Vec::with_capacity(run.value().len() + scope.len() + 14);
        records::push_block(&mut record, scope, epoch, run.value());
        log.insert(last, record.as_slice()).map_err(dberr)?;
        // Runs come in (scope, epoch, number) order: an epoch's first run comes first.
        if firsts.get((scope, epoch)).map_err(dberr)?.is_none() {
            firsts.insert((scope, epoch), first).map_err(dberr)?;
        }
    }
    drop(old);
    tx.delete_table(LEGACY_EVENT_RUNS).map_err(dberr)?;
    tracing::info!(events = moved, "store moved to the event log");
    Ok(())
}

/// The framing of event-log records. Entries sit back to back, each an optional event number
/// (u64, little-endian), a length (u32, little-endian) and that many bytes (a dedupe-log record
/// written before front-coded runs is entries of ids; `dedupe::logged_ids` reads both). An
/// event-log record is *blocks* back to back, one per
/// scope and epoch the commit touched: the scope's length (u16) and name, the epoch (u64), the
/// entries' length (u32), then the numbered entries of that scope's event bodies, in order.
mod records {
    use super::StoreError;

    pub(super) fn push(buf: &mut Vec<u8>, seq: Option<u64>, bytes: &[u8]) {
        if let Some(seq) = seq {
            buf.extend_from_slice(&seq.to_le_bytes());
        }
        buf.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        buf.extend_from_slice(bytes);
    }

    pub(super) fn push_block(buf: &mut Vec<u8>, scope: &str, epoch: u64, entries: &[u8]) {
        // Scope names are rollout and workflow names (the config caps them far below 64 KiB).
        let name = &scope.as_bytes()[..scope.len().min(u16::MAX as usize)];
        buf.extend_from_slice(&(name.len() as u16).to_le_bytes());
        buf.extend_from_slice(name);
        buf.extend_from_slice(&epoch.to_le_bytes());
        buf.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        buf.extend_from_slice(entries);
    }

    /// The most bytes an event-log record holds, unless one event alone is larger. redb gives
    /// a record this large a page of its own, sized up to the next power of two, and writes
    /// the whole page: a commit's 520 KiB as one record took a 1 MiB page. Pieces that fill
    /// 64 KiB pages (less redb's 16-byte leaf header) leave only the last piece's page part
    /// empty.
    pub(super) const PIECE_BYTES: usize = 64 * 1024 - 64;

    /// A commit's events, `(scope, epoch, number, text)` with each scope and epoch's events
    /// together, as event-log records of at most `limit` bytes each (unless one event alone is
    /// larger), every one keyed by the highest event number it holds. A block that does not fit
    /// is cut between entries and goes on under the same header in the next piece. Readers need
    /// nothing new: a record holds whole blocks of whole entries, and is keyed by its last event,
    /// as a commit's single record was.
    pub(super) fn pieces<'a>(
        events: impl Iterator<Item = (&'a str, u64, u64, &'a [u8])> + Clone,
        limit: usize,
    ) -> Vec<(u64, Vec<u8>)> {
        // What the commit's entries need, headers aside: each piece is sized once, not grown.
        let mut left: usize = events.clone().map(|e| 12 + e.3.len()).sum();
        let fresh = |left: usize| Vec::with_capacity(limit.min(left.saturating_add(1024)));
        let mut out = Vec::new();
        let mut piece = fresh(left);
        let mut last = 0;
        // The open block: its scope and epoch, and where its entries' length goes.
        let mut open: Option<(&str, u64, usize)> = None;
        let close = |piece: &mut Vec<u8>, open: Option<(&str, u64, usize)>| {
            if let Some((_, _, at)) = open {
                let len = (piece.len() - at - 4) as u32;
                piece[at..at + 4].copy_from_slice(&len.to_le_bytes());
            }
        };
        for (scope, epoch, seq, body) in events {
            let same = open.is_some_and(|(s, e, _)| s == scope && e == epoch);
            let header = if same { 0 } else { 2 + scope.len() + 12 };
            if !piece.is_empty() && piece.len() + header + 12 + body.len() > limit {
                close(&mut piece, open.take());
                out.push((last, std::mem::replace(&mut piece, fresh(left))));
                last = 0;
            }
            // A new block, or the same one going on in a new piece.
            if !same || open.is_none() {
                close(&mut piece, open.take());
                push_block(&mut piece, scope, epoch, &[]);
                open = Some((scope, epoch, piece.len() - 4));
            }
            push(&mut piece, Some(seq), body);
            last = last.max(seq);
            left -= 12 + body.len();
        }
        close(&mut piece, open);
        if !piece.is_empty() {
            out.push((last, piece));
        }
        out
    }

    /// Splits `n` bytes off the front of `buf`, or says the record is truncated.
    fn take<'a>(buf: &mut &'a [u8], n: usize, what: &str) -> Result<&'a [u8], StoreError> {
        let (head, rest) = buf
            .split_at_checked(n)
            .ok_or_else(|| damaged(format!("a truncated {what}")))?;
        *buf = rest;
        Ok(head)
    }

    /// The blocks of an event-log record: `(scope, epoch, entries)`, in order.
    pub(super) fn blocks(
        mut buf: &[u8],
    ) -> impl Iterator<Item = Result<(&str, u64, &[u8]), StoreError>> {
        std::iter::from_fn(move || {
            if buf.is_empty() {
                return None;
            }
            let block = (|| {
                let len = u16::from_le_bytes(
                    take(&mut buf, 2, "block header")?
                        .try_into()
                        .unwrap_or_default(),
                );
                let scope = std::str::from_utf8(take(&mut buf, len.into(), "scope name")?)
                    .map_err(|e| damaged(e.to_string()))?;
                let head = take(&mut buf, 12, "block header")?;
                let (epoch, len) = head.split_at(8);
                let epoch = u64::from_le_bytes(epoch.try_into().unwrap_or_default());
                let len = u32::from_le_bytes(len.try_into().unwrap_or_default());
                let entries = take(&mut buf, len as usize, "block")?;
                Ok((scope, epoch, entries))
            })();
            if block.is_err() {
                buf = &[];
            }
            Some(block)
        })
    }

    /// An event-log record without the entries `covered` says go: the rest (`None` if
    /// nothing is left) and how many went.
    pub(super) fn without(
        record: &[u8],
        covered: &dyn Fn(&str, u64, u64) -> bool,
    ) -> Result<(Option<Vec<u8>>, usize), StoreError> {
        let mut kept = Vec::new();
        let mut dropped = 0;
        for block in blocks(record) {
            let (scope, epoch, entries) = block?;
            let mut rest = Vec::new();
            for entry in self::entries(entries, true) {
                let (seq, body) = entry?;
                if covered(scope, epoch, seq) {
                    dropped += 1;
                } else {
                    push(&mut rest, Some(seq), body);
                }
            }
            if !rest.is_empty() {
                push_block(&mut kept, scope, epoch, &rest);
            }
        }
        Ok(((!kept.is_empty()).then_some(kept), dropped))
    }

    pub(super) fn damaged(detail: String) -> StoreError {
        StoreError::Schema(format!("a stored event record is damaged: {detail}"))
    }

    /// The entries of `buf` (with event numbers if `numbered`; 0 otherwise), in order; a
    /// truncated entry is an error, never a silent end.
    pub(super) fn entries(
        mut buf: &[u8],
        numbered: bool,
    ) -> impl Iterator<Item = Result<(u64, &[u8]), StoreError>> {
        std::iter::from_fn(move || {
            if buf.is_empty() {
                return None;
            }
            let head = if numbered { 12 } else { 4 };
            let Some((header, rest)) = buf.split_at_checked(head) else {
                buf = &[];
                return Some(Err(damaged("a truncated entry header".into())));
            };
            let (seq, len) = if numbered {
                let (s, l) = header.split_at(8);
                (
                    u64::from_le_bytes(s.try_into().unwrap_or_default()),
                    u32::from_le_bytes(l.try_into().unwrap_or_default()),
                )
            } else {
                (0, u32::from_le_bytes(header.try_into().unwrap_or_default()))
            };
            let Some((bytes, rest)) = rest.split_at_checked(len as usize) else {
                buf = &[];
                return Some(Err(damaged("a truncated entry".into())));
            };
            buf = rest;
            Some(Ok((seq, bytes)))
        })
    }
}

/// Decodes a JSON record, if there is one.
fn decode<T: serde::de::DeserializeOwned>(
    found: Option<redb::AccessGuard<'_, &[u8]>>,
) -> Result<Option<T>, StoreError> {
    Ok(found
        .map(|v| serde_json::from_slice(v.value()))
        .transpose()?)
}

/// Reads a table's newest `newest` rows (a missing table has none), so that a damaged page
/// shows up as an error here rather than later.
fn read_rows<K: redb::Key + 'static, V: redb::Value + 'static>(
    tx: &ReadTransaction,
    table: TableDefinition<K, V>,
    newest: usize,
) -> Result<(), StoreError> {
    let t = match tx.open_table(table) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(dberr(e)),
    };
    for row in t.iter().map_err(dberr)?.rev().take(newest) {
        row.map_err(dberr)?;
    }
    Ok(())
}

/// The idempotency table's key: keys are scoped by rollout.
fn idempotency_key(rollout: &str, key: &str) -> String {
    format!("{rollout}\n{key}")
}

/// Per rollout scope, the epoch an open containment keeps for its affected list.
fn protected_epochs(tx: &redb::WriteTransaction) -> Result<HashMap<String, u64>, StoreError> {
    let states = tx.open_table(STATES).map_err(dberr)?;
    let mut out = HashMap::new();
    for row in states.iter().map_err(dberr)? {
        let (k, v) = row.map_err(dberr)?;
        let Some(name) = k.value().strip_prefix("rollout:").map(str::to_string) else {
            continue;
        };
        let state: crate::core::rollout::RolloutState = serde_json::from_slice(v.value())?;
        if let Some(epoch) = state.reenable.and_then(|d| d.exposure_epoch) {
            out.insert(name, epoch);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::event::{TaskEvent, parse_event};
    use crate::store::StoredBody;
    use redb::ReadableTableMetadata;

    fn event(id: &str) -> TaskEvent {
        parse_event(&format!(
            r#"{{"event_id":"{id}","workflow":"w","version":"v","quality":0.5}}"#
        ))
        .expect("event")
    }

    fn item(id: &str, scope: Option<&str>) -> BatchItem {
        let event = event(id);
        let stored = scope.map(|s| StoredBody {
            scope: s.into(),
            epoch: 1,
            body: serde_json::to_vec(&event).expect("json").into(),
        });
        BatchItem { event, stored }
    }

    fn replayed(store: &EmbeddedStore, scope: &str, after: u64, through: u64) -> Vec<String> {
        let mut ids = Vec::new();
        store
            .replay(scope, 1, after, through, &mut |e| {
                ids.push(e.event.event_id.to_string())
            })
            .expect("replay");
        ids
    }

    fn table_names(store: &EmbeddedStore) -> Vec<String> {
        let tx = store.read().expect("read");
        tx.list_tables()
            .expect("tables")
            .map(|t| t.name().to_string())
            .collect()
    }

    fn log_records(store: &EmbeddedStore) -> u64 {
        let tx = store.read().expect("read");
        tx.open_table(EVENT_LOG).expect("log").len().expect("len")
    }

    fn checkpoint(epoch: u64, seq: u64) -> Checkpoint {
        Checkpoint {
            epoch,
            seq,
            healthy_read_only: 0,
            evidence: crate::core::evidence::Evidence::new(Vec::new(), 1, 100.0),
        }
    }

    #[test]
    fn a_commit_appends_one_log_record_and_replay_reads_any_slice_of_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        // Two commits, three scopes: a and b, then a and c; numbers 1..=5 then 6..=8.
        let first = [
            item("a1", Some("a")),
            item("b1", Some("b")),
            item("a2", Some("a")),
            item("u1", None),
            item("a3", Some("a")),
            item("b2", Some("b")),
        ];
        let (fresh, last) = store.ingest_groups(&[&first], 10).expect("ingest");
        assert_eq!((fresh[0].iter().filter(|f| **f).count(), last), (6, 5));
        let second = [
            item("a4", Some("a")),
            item("a1", Some("a")), // a duplicate of the first commit
            item("c1", Some("c")),
            item("a5", Some("a")),
            item("a5", Some("a")), // a duplicate inside this commit
        ];
        let (fresh, last) = store
            .ingest_groups(&[&second[..2], &second[2..]], 11)
            .expect("ingest");
        assert_eq!(fresh, vec![vec![true, false], vec![true, true, false]]);
        assert_eq!(last, 8);
        assert_eq!(log_records(&store), 2, "one record per commit");
        assert_eq!(
            replayed(&store, "a", 0, u64::MAX),
            ["a1", "a2", "a3", "a4", "a5"]
        );
        // Slices that start and end inside runs: a1=1, a2=3, a3=4, a4=6, a5=8.
        assert_eq!(replayed(&store, "a", 1, 6), ["a2", "a3", "a4"]);
        assert_eq!(replayed(&store, "a", 3, 3), Vec::<String>::new());
        assert_eq!(replayed(&store, "a", 4, 7), ["a4"]);
        assert_eq!(replayed(&store, "b", 0, 4), ["b1"]);
        assert_eq!(replayed(&store, "c", 0, u64::MAX), ["c1"]);
        assert_eq!(replayed(&store, "d", 0, u64::MAX), Vec::<String>::new());
        // Every scope in one pass, each from its own point; scopes interleave, each in order.
        let mut got: Vec<(String, String)> = Vec::new();
        let wanted = [("a".into(), 1, 3), ("b".into(), 1, 0), ("c".into(), 1, 7)];
        let n = store
            .replay_scopes(&wanted, 7, &mut |e| {
                got.push((e.scope, e.event.event_id.to_string()))
            })
            .expect("replay");
        assert_eq!(n, 4);
        let of = |scope: &str| -> Vec<&str> {
            got.iter()
                .filter(|(s, _)| s == scope)
                .map(|(_, id)| id.as_str())
                .collect()
        };
        assert_eq!(
            (of("a"), of("b"), of("c")),
            (vec!["a3", "a4"], vec!["b1", "b2"], vec![])
        );
    }

    #[test]
    fn pieces_cut_between_entries_and_are_keyed_by_their_last_event() {
        // Three blocks whose numbers interleave, as a commit's do.
        let mut events = Vec::new();
        for (scope, seqs) in [("a", [1, 4, 5]), ("bb", [2, 6, 9]), ("c", [3, 7, 8])] {
            for seq in seqs {
                events.push((scope, 7u64, seq, format!("body-{seq}").into_bytes()));
            }
        }
        let input = || events.iter().map(|(s, e, n, b)| (*s, *e, *n, b.as_slice()));
        let read = |pieces: &[(u64, Vec<u8>)]| -> Vec<(String, u64, u64)> {
            let mut out = Vec::new();
            for (_, piece) in pieces {
                for block in records::blocks(piece) {
                    let (scope, epoch, entries) = block.expect("block");
                    for entry in records::entries(entries, true) {
                        let (seq, body) = entry.expect("entry");
                        assert_eq!(body, format!("body-{seq}").as_bytes());
                        out.push((scope.to_string(), epoch, seq));
                    }
                }
            }
            out
        };
        let whole = records::pieces(input(), usize::MAX);
        assert_eq!(whole.len(), 1);
        let expected = read(&whole);
        let sent: Vec<_> = input().map(|(s, e, n, _)| (s.to_string(), e, n)).collect();
        assert_eq!(expected, sent);
        for limit in 1..=200 {
            let pieces = records::pieces(input(), limit);
            assert_eq!(read(&pieces), expected, "limit {limit}");
            for (key, piece) in &pieces {
                let seqs: Vec<u64> = read(std::slice::from_ref(&(*key, piece.clone())))
                    .iter()
                    .map(|e| e.2)
                    .collect();
                assert_eq!(seqs.iter().max(), Some(key), "limit {limit}");
                // Over the limit only when one entry alone is.
                assert!(
                    piece.len() <= limit || seqs.len() == 1,
                    "limit {limit}: {} bytes, {} events",
                    piece.len(),
                    seqs.len()
                );
            }
        }
    }

    #[test]
    fn a_large_commit_is_logged_in_pieces_that_fill_their_pages() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        // About 700 KB of events over 40 scopes in one commit: as one record it would take a
        // page rounded up to the next power of two (1 MiB), most of it written empty.
        let scopes: Vec<String> = (0..40).map(|s| format!("rollout-{s}")).collect();
        let items: Vec<BatchItem> = (0..3000)
            .map(|i| {
                let mut event = event(&format!("evt-{i:06}"));
                event.subject = Some("x".repeat(200).into());
                let body = serde_json::to_vec(&event).expect("json").into();
                BatchItem {
                    event,
                    stored: Some(StoredBody {
                        scope: scopes[i % 40].as_str().into(),
                        epoch: 1,
                        body,
                    }),
                }
            })
            .collect();
        let (fresh, last) = store.ingest_groups(&[&items], 10).expect("ingest");
        assert!(fresh[0].iter().all(|f| *f));
        assert_eq!(last, 3000);
        let (stored, fragmented) = {
            let tx = store.read().expect("read");
            let stats = tx
                .open_table(EVENT_LOG)
                .expect("log")
                .stats()
                .expect("stats");
            (stats.stored_bytes(), stats.fragmented_bytes())
        };
        assert!(stored > 700_000, "{stored}");
        assert!(
            fragmented * 20 < stored,
            "{fragmented} bytes of the log's pages are empty, of {stored} stored"
        );
        assert!(log_records(&store) > 1, "a record per piece");
        // Every event replays once, in order, whichever piece it landed in.
        for (s, scope) in scopes.iter().enumerate() {
            let ids = replayed(&store, scope, 0, u64::MAX);
            let want: Vec<String> = (0..3000)
                .filter(|i| i % 40 == s)
                .map(|i| format!("evt-{i:06}"))
                .collect();
            assert_eq!(ids, want, "{scope}");
        }
        // A slice starting mid-commit reads only what follows.
        assert_eq!(replayed(&store, "rollout-7", 2900, u64::MAX).len(), 2);
    }

    #[test]
    fn pruning_drops_covered_events_and_keeps_the_rest_of_a_record() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        let epoch2 = |id: &str, scope: &str| {
            let mut i = item(id, Some(scope));
            if let Some(s) = i.stored.as_mut() {
                s.epoch = 2;
            }
            i
        };
        // 1..=4 at time 10; 5..=6 at time 20.
        store
            .ingest(
                &[
                    item("a1", Some("a")),
                    item("b1", Some("b")),
                    item("a2", Some("a")),
                    epoch2("a3", "a"),
                ],
                10,
            )
            .expect("ingest");
        store
            .ingest(&[epoch2("a4", "a"), item("b2", Some("b"))], 20)
            .expect("ingest");
        // a's epoch 2 checkpoint covers event 4; b has none.
        store
            .put_checkpoints(&[("a".into(), checkpoint(2, 4))], Some(6))
            .expect("checkpoint");
        assert_eq!(store.checkpoints_cover().expect("cover"), 6);
        // Only the first commit is older than the cutoff: a's three events go, b1 stays.
        assert_eq!(store.prune_events(15).expect("prune"), 3);
        assert_eq!(log_records(&store), 2);
        assert_eq!(replayed(&store, "b", 0, u64::MAX), ["b1", "b2"]);
        let mut a2 = Vec::new();
        store
            .replay("a", 2, 0, u64::MAX, &mut |e| a2.push(e.event.event_id))
            .expect("replay");
        assert_eq!(a2, ["a4"], "epoch 2 from its first event still stored");
        // Epoch 1's start is forgotten: a later epoch's checkpoint exists.
        let tx = store.read().expect("read");
        let firsts = tx.open_table(EPOCH_FIRST).expect("firsts");
        assert!(firsts.get(("a", 1)).expect("get").is_none());
        assert_eq!(
            firsts.get(("a", 2)).expect("get").map(|v| v.value()),
            Some(4)
        );
        drop(firsts);
        drop(tx);
        // Nothing more is covered: a second pass changes nothing.
        assert_eq!(store.prune_events(15).expect("prune"), 0);
        store
            .put_checkpoints(&[("b".into(), checkpoint(1, 6))], None)
            .expect("checkpoint");
        // b's two go; a4 (event 5) is after a's checkpoint and stays.
        assert_eq!(store.prune_events(25).expect("prune"), 2);
        assert_eq!(log_records(&store), 1);
        assert_eq!(replayed(&store, "b", 0, u64::MAX), Vec::<String>::new());
        // A late event of the forgotten epoch starts it again: the commits' cache of started
        // epochs was emptied by the pruning, so it records the start rather than trust it.
        store.ingest(&[item("a5", Some("a"))], 30).expect("ingest");
        let tx = store.read().expect("read");
        let firsts = tx.open_table(EPOCH_FIRST).expect("firsts");
        assert_eq!(
            firsts.get(("a", 1)).expect("get").map(|v| v.value()),
            Some(7)
        );
        drop(firsts);
        drop(tx);
        let mut a1 = Vec::new();
        store
            .replay("a", 1, 0, u64::MAX, &mut |e| a1.push(e.event.event_id))
            .expect("replay");
        assert_eq!(a1, ["a5"]);
    }

    /// Replaces scope `a`'s stored checkpoint with one whose evidence no build can read:
    /// pruning must not need it (at a thousand rollouts, decoding every checkpoint's evidence
    /// took a write transaction's worth of time and 200 MB at each pruning pass).
    fn spoil_evidence(store: &EmbeddedStore, scope: &str, epoch: u64, seq: u64) {
        let tx = store.write().expect("write");
        tx.open_table(CHECKPOINTS)
            .expect("checkpoints")
            .insert(
                scope,
                format!(r#"{{"epoch":{epoch},"seq":{seq},"evidence":"unreadable"}}"#).as_bytes(),
            )
            .expect("insert");
        tx.commit().expect("commit");
    }

    /// Two commits of scope `a` (events 1–2 at time 10, 3–4 at time 20) and a checkpoint
    /// covering the first.
    fn store_with_a_checkpoint(dir: &Path) -> EmbeddedStore {
        let store = EmbeddedStore::open(dir).expect("open");
        let ids = [["a1", "a2"], ["a3", "a4"]];
        for (at, pair) in [10, 20].into_iter().zip(ids) {
            let items = pair.map(|id| item(id, Some("a")));
            store.ingest(&items, at).expect("ingest");
        }
        store
            .put_checkpoints(&[("a".into(), checkpoint(1, 2))], Some(2))
            .expect("checkpoint");
        store
    }

    /// With `a`'s evidence unreadable, retention still drops the two events its checkpoint
    /// covers and keeps the two after it.
    fn prunes_by_the_cover_alone(store: &EmbeddedStore) {
        spoil_evidence(store, "a", 1, 2);
        assert_eq!(store.prune_events(30).expect("prune"), 2);
        assert_eq!(replayed(store, "a", 0, u64::MAX), ["a3", "a4"]);
    }

    #[test]
    fn pruning_reads_each_checkpoints_cover_not_its_evidence() {
        let dir = tempfile::tempdir().expect("tmp");
        prunes_by_the_cover_alone(&store_with_a_checkpoint(dir.path()));
    }

    #[test]
    fn a_store_from_before_checkpoint_covers_gets_them_at_open() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = store_with_a_checkpoint(dir.path());
        let tx = store.write().expect("write");
        tx.delete_table(CHECKPOINT_COVERS).expect("delete");
        tx.commit().expect("commit");
        drop(store);
        // The cover now comes from the table filled at open, not from the evidence.
        prunes_by_the_cover_alone(&EmbeddedStore::open(dir.path()).expect("reopen"));
    }

    #[test]
    fn a_new_store_has_no_tables_from_before_event_runs() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        drop(store);
        let store = EmbeddedStore::open(dir.path()).expect("reopen");
        let names = table_names(&store);
        assert!(names.contains(&"event_log".to_string()), "{names:?}");
        assert!(names.contains(&"dedupe_pairs".to_string()), "{names:?}");
        assert!(!names.contains(&"dedupe_groups".to_string()), "{names:?}");
        assert!(!names.contains(&"dedupe".to_string()), "{names:?}");
        assert!(!names.contains(&"event_runs".to_string()), "{names:?}");
        assert!(!names.contains(&"events".to_string()), "{names:?}");
        assert!(!names.contains(&"dedupe_by_time".to_string()), "{names:?}");
    }

    #[test]
    fn dedupe_keys_are_forgotten_by_first_acceptance_time() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        store
            .ingest(&[item("x", None), item("y", None)], 10)
            .expect("ingest");
        store.ingest(&[item("z", None)], 10).expect("ingest"); // the same millisecond
        // A repeat later does not refresh "x": it is still forgotten with its first time.
        assert_eq!(
            store.ingest(&[item("x", None)], 20).expect("ingest"),
            [false]
        );
        store.ingest(&[item("w", None)], 30).expect("ingest");
        assert_eq!(store.prune_dedupe(20).expect("prune"), 3);
        assert_eq!(
            store
                .ingest(&[item("x", None), item("w", None)], 40)
                .expect("ingest"),
            [true, false]
        );
    }

    #[test]
    fn per_id_dedupe_keys_are_moved_into_groups_at_open() {
        let dir = tempfile::tempdir().expect("tmp");
        // More ids than one step of the move, as the store before groups kept them: one entry
        // per id, and the dedupe log by acceptance time.
        let ids: Vec<String> = (0..70_000).map(|k| format!("id-{k}")).collect();
        {
            let db = Database::create(dir.path().join(FILE_NAME)).expect("create");
            let tx = db.begin_write().expect("write");
            {
                let mut keys = tx.open_table(dedupe::LEGACY_IDS).expect("dedupe");
                for id in &ids {
                    keys.insert(id.as_str(), 5).expect("insert");
                }
            }
            let mut log = Vec::new();
            for id in &ids[..10] {
                records::push(&mut log, None, id.as_bytes());
            }
            append_dedupe_log(&tx, 5, &log).expect("log");
            tx.commit().expect("commit");
        }
        let store = EmbeddedStore::open(dir.path()).expect("open");
        let names = table_names(&store);
        assert!(!names.contains(&"dedupe".to_string()), "{names:?}");
        // 701 groups (`id-100`..`id-199` share `id-1`, and so on), not 70 000 entries.
        let tx = store.read().expect("read");
        let groups = tx.open_table(dedupe::GROUPS).expect("groups");
        assert_eq!(groups.len().expect("len"), 701);
        drop((groups, tx));
        for id in [&ids[0], &ids[65_535], &ids[65_536], &ids[69_999]] {
            assert_eq!(
                store.ingest(&[item(id, None)], 10).expect("ingest"),
                [false],
                "{id}"
            );
        }
        // The log still forgets them: the ten it lists, and only those.
        assert_eq!(store.prune_dedupe(6).expect("prune"), 10);
        assert_eq!(
            store
                .ingest(&[item(&ids[9], None), item(&ids[10], None)], 20)
                .expect("ingest"),
            [true, false]
        );
    }

    #[test]
    fn a_store_from_before_event_runs_is_moved_into_them_at_open() {
        let dir = tempfile::tempdir().expect("tmp");
        {
            let db = Database::create(dir.path().join(FILE_NAME)).expect("create");
            let tx = db.begin_write().expect("write");
            {
                let mut events = tx.open_table(LEGACY_EVENTS).expect("events");
                let mut dedupe = tx.open_table(dedupe::LEGACY_IDS).expect("dedupe");
                let mut by_time = tx.open_table(LEGACY_DEDUPE_BY_TIME).expect("by time");
                for (seq, id) in [(1u64, "old1"), (2, "old2"), (3, "old3")] {
                    let stored = StoredEvent {
                        scope: "a".into(),
                        epoch: 1,
                        event: event(id),
                    };
                    let bytes = serde_json::to_vec(&stored).expect("json");
                    events
                        .insert(("a", 1, seq), bytes.as_slice())
                        .expect("insert");
                    dedupe.insert(id, 5 * seq).expect("insert");
                    by_time.insert((5 * seq, id), ()).expect("insert");
                }
                let mut counters = tx.open_table(COUNTERS).expect("counters");
                counters.insert("events", 3).expect("insert");
            }
            tx.commit().expect("commit");
        }
        let store = EmbeddedStore::open(dir.path()).expect("open");
        assert_eq!(replayed(&store, "a", 1, u64::MAX), ["old2", "old3"]);
        let tx = store.read().expect("read");
        for old in [LEGACY_EVENTS.name(), LEGACY_EVENT_RUNS.name()] {
            assert!(
                !tx.list_tables().expect("tables").any(|t| t.name() == old),
                "{old} is gone"
            );
        }
        drop(tx);
        // The old dedupe keys still refuse repeats, and are forgotten by their old times.
        assert_eq!(
            store
                .ingest(&[item("old1", Some("a"))], 20)
                .expect("ingest"),
            [false]
        );
        assert_eq!(store.prune_dedupe(11).expect("prune"), 2);
        let (fresh, last) = store
            .ingest_groups(&[&[item("old1", Some("a")), item("old3", Some("a"))]], 30)
            .expect("ingest");
        assert_eq!((fresh, last), (vec![vec![true, false]], 4));
        assert_eq!(
            replayed(&store, "a", 0, u64::MAX),
            ["old1", "old2", "old3", "old1"]
        );
    }

    #[test]
    fn a_store_of_event_runs_is_moved_into_the_log_at_open() {
        let dir = tempfile::tempdir().expect("tmp");
        {
            let db = Database::create(dir.path().join(FILE_NAME)).expect("create");
            let tx = db.begin_write().expect("write");
            {
                // Runs of two scopes interleaved in event numbers, and an older epoch of a.
                let mut runs_table = tx.open_table(LEGACY_EVENT_RUNS).expect("runs");
                type Run<'a> = (&'a str, u64, &'a [(u64, &'a str)]);
                let runs: [Run<'_>; 4] = [
                    ("a", 1, &[(1, "a1")]),
                    ("a", 2, &[(2, "a2"), (4, "a3")]),
                    ("a", 2, &[(6, "a4")]),
                    ("b", 1, &[(3, "b1"), (5, "b2")]),
                ];
                for (scope, epoch, entries) in runs {
                    let mut run = Vec::new();
                    for (seq, id) in entries {
                        let body = serde_json::to_vec(&event(id)).expect("json");
                        records::push(&mut run, Some(*seq), &body);
                    }
                    let last = entries.last().map_or(0, |(s, _)| *s);
                    runs_table
                        .insert((scope, epoch, last), run.as_slice())
                        .expect("insert");
                }
                let mut counters = tx.open_table(COUNTERS).expect("counters");
                counters.insert("events", 6).expect("insert");
            }
            tx.commit().expect("commit");
        }
        let store = EmbeddedStore::open(dir.path()).expect("open");
        assert_eq!(log_records(&store), 4);
        let mut a2 = Vec::new();
        store
            .replay("a", 2, 2, u64::MAX, &mut |e| a2.push(e.event.event_id))
            .expect("replay");
        assert_eq!(a2, ["a3", "a4"]);
        assert_eq!(replayed(&store, "b", 0, 4), ["b1"]);
        assert_eq!(replayed(&store, "a", 0, u64::MAX), ["a1"]);
        // New commits continue the numbering after the moved runs.
        let (_, last) = store
            .ingest_groups(&[&[item("b3", Some("b"))]], 30)
            .expect("ingest");
        assert_eq!(last, 7);
        assert_eq!(replayed(&store, "b", 0, u64::MAX), ["b1", "b2", "b3"]);
        drop(store);
        let store = EmbeddedStore::open(dir.path()).expect("reopen");
        assert_eq!(log_records(&store), 5, "moved once");
    }

    #[test]
    fn a_stored_body_that_is_not_utf8_is_an_error_on_replay() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        let tx = store.write().expect("write");
        {
            let mut entries = Vec::new();
            records::push(&mut entries, Some(1), &[0xff, 0xfe]);
            let mut record = Vec::new();
            records::push_block(&mut record, "a", 1, &entries);
            let mut table = tx.open_table(EVENT_LOG).expect("log");
            table.insert(1, record.as_slice()).expect("insert");
            let mut firsts = tx.open_table(EPOCH_FIRST).expect("firsts");
            firsts.insert(("a", 1), 1).expect("insert");
        }
        tx.commit().expect("commit");
        let out = store.replay("a", 1, 0, u64::MAX, &mut |_| {});
        assert!(matches!(out, Err(StoreError::Schema(m)) if m.contains("damaged")));
    }

    #[test]
    fn a_truncated_entry_or_block_is_an_error_not_an_end() {
        let mut run = Vec::new();
        records::push(&mut run, Some(7), b"{}");
        records::push(&mut run, Some(8), b"[1]");
        let whole: Vec<_> = records::entries(&run, true)
            .map(|e| e.map(|(s, _)| s).ok())
            .collect();
        assert_eq!(whole, [Some(7), Some(8)]);
        let cut = &run[..run.len() - 1];
        let out: Vec<_> = records::entries(cut, true).collect();
        assert!(out[0].is_ok() && out[1].is_err() && out.len() == 2);
        // The same for a log record's blocks.
        let mut record = Vec::new();
        records::push_block(&mut record, "a", 1, &run);
        records::push_block(&mut record, "bb", 2, &run);
        let blocks: Vec<_> = records::blocks(&record)
            .map(|b| b.map(|(s, e, _)| (s.to_string(), e)).ok())
            .collect();
        assert_eq!(blocks, [Some(("a".into(), 1)), Some(("bb".into(), 2))]);
        for cut in [1, 5, record.len() - 1] {
            let out: Vec<_> = records::blocks(&record[..cut]).collect();
            assert!(out.last().is_some_and(Result::is_err), "cut at {cut}");
        }
    }
}
