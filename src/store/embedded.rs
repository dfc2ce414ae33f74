//! The embedded store (redb): rollout state, receipts, accepted events and dedupe keys.
//!
//! One file, `stagegate.redb`, in `data_dir`. Every write is a single ACID transaction with
//! immediate durability, so what the API acknowledges survives kill -9: an event batch with its
//! dedupe keys; a decision's new state with its receipt (never one without the other). A group
//! commit writes one record per scope it touches (a *run* of that scope's events, keyed by
//! `(scope, epoch, last event number)`), one dedupe key per event and one dedupe-log record; an
//! epoch change prunes the old epoch's runs.
//!
//! Start-up reads evidence *checkpoints* (aggregates with the event sequence number they cover)
//! plus the tail of events after them, so it stays flat however many events were stored, and
//! raw events covered by a checkpoint are pruned after `server.retention`.
//!
//! A failed write (a full disk) marks the store unhealthy: `/readyz` says so, writes answer 503
//! with what happened, and [`Store::recover`](super::Store::recover) reopens the file once writes succeed again. A
//! damaged file is never written: start-up checks it read-only first, and a file that needs
//! redb's repair is copied aside first and restored byte for byte if the repair fails.
//! redb's file lock refuses a second process on the same directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use redb::{
    Builder, Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable,
    TableDefinition, TableHandle,
};

use super::{
    BatchItem, Change, Health, Store, StoreError, StoredEvent, StoredStates, decode_event,
};
use crate::core::affected::TagRecord;
use crate::core::clock::Millis;
use crate::core::evidence::Checkpoint;
use crate::core::notice::Outbox;
use crate::core::receipt::Receipt;

const STATES: TableDefinition<&str, &[u8]> = TableDefinition::new("states");
const RECEIPTS: TableDefinition<u64, &[u8]> = TableDefinition::new("receipts");
/// `(scope, epoch, last event number)` → a run: the scope's events of one group commit, in
/// order (see [`runs`]). One record per scope per commit, not one per event.
const EVENT_RUNS: TableDefinition<(&str, u64, u64), &[u8]> = TableDefinition::new("event_runs");
/// Event id → when it was first accepted.
const DEDUPE: TableDefinition<&str, u64> = TableDefinition::new("dedupe");
/// Commit time → the ids first accepted then (see [`runs`]): what pruning dedupe keys reads.
const DEDUPE_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("dedupe_log");
/// Before event runs: one record per event (a `StoredEvent`). Moved into runs at open.
const LEGACY_EVENTS: TableDefinition<(&str, u64, u64), &[u8]> = TableDefinition::new("events");
/// Before the dedupe log: one key per event id. Moved into the log at open.
const LEGACY_DEDUPE_BY_TIME: TableDefinition<(u64, &str), ()> =
    TableDefinition::new("dedupe_by_time");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
const CHECKPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("checkpoints");
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
        read_rows(tx, COUNTERS, usize::MAX)?;
        read_rows(tx, RECEIPTS, 100)
    }

    fn create_tables(&self) -> Result<(), StoreError> {
        let tx = self.write()?;
        tx.open_table(STATES).map_err(dberr)?;
        tx.open_table(RECEIPTS).map_err(dberr)?;
        tx.open_table(EVENT_RUNS).map_err(dberr)?;
        tx.open_table(DEDUPE).map_err(dberr)?;
        tx.open_table(DEDUPE_LOG).map_err(dberr)?;
        tx.open_table(COUNTERS).map_err(dberr)?;
        tx.open_table(OUTBOX).map_err(dberr)?;
        tx.open_table(CHECKPOINTS).map_err(dberr)?;
        tx.open_table(SEQ_MARKS).map_err(dberr)?;
        tx.open_table(IDEMPOTENCY).map_err(dberr)?;
        tx.open_table(AFFECTED).map_err(dberr)?;
        migrate_legacy(&tx)?;
        tx.commit().map_err(dberr)
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
        {
            let mut dedupe = tx.open_table(DEDUPE).map_err(dberr)?;
            let mut counters = tx.open_table(COUNTERS).map_err(dberr)?;
            let mut seq = counters
                .get("events")
                .map_err(dberr)?
                .map_or(0, |v| v.value());
            // This commit's runs, by scope and epoch: (last event number, entries).
            let mut runs: HashMap<(&str, u64), (u64, Vec<u8>)> = HashMap::new();
            let mut accepted_ids = Vec::new();
            for items in groups {
                let mut fresh = Vec::with_capacity(items.len());
                for item in *items {
                    let id = item.event_id();
                    let seen = dedupe.insert(id, now).map_err(dberr)?.map(|v| v.value());
                    if let Some(first) = seen {
                        // A duplicate keeps the time it was first accepted (its log entry's).
                        dedupe.insert(id, first).map_err(dberr)?;
                        fresh.push(false);
                        continue;
                    }
                    runs::push(&mut accepted_ids, None, id.as_bytes());
                    if let Some(stored) = &item.stored {
                        seq += 1;
                        let run = runs
                            .entry((stored.scope.as_str(), stored.epoch))
                            .or_default();
                        run.0 = seq;
                        runs::push(&mut run.1, Some(seq), &stored.body);
                    }
                    fresh.push(true);
                }
                results.push(fresh);
            }
            let mut table = tx.open_table(EVENT_RUNS).map_err(dberr)?;
            for ((scope, epoch), (last, entries)) in &runs {
                table
                    .insert((*scope, *epoch, *last), entries.as_slice())
                    .map_err(dberr)?;
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
        Ok((results, last_seq))
    }

    fn commit_inner(
        &self,
        change: &Change<'_>,
        receipt: &mut Receipt,
        outbox: &dyn Fn(&Receipt) -> Vec<Outbox>,
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
            // Older epochs go, but the one an open containment lists as affected.
            let keep = change.protected_epoch();
            let mut events = tx.open_table(EVENT_RUNS).map_err(dberr)?;
            events
                .retain_in(
                    (scope.as_str(), 0u64, 0u64)..(scope.as_str(), epoch, 0u64),
                    |(_, e, _), _| Some(e) == keep,
                )
                .map_err(dberr)?;
        }
        tx.commit().map_err(dberr)?;
        Ok(())
    }

    fn prune_dedupe_inner(&self, cutoff: Millis) -> Result<usize, StoreError> {
        let tx = self.write()?;
        let mut pruned = 0;
        {
            let mut log = tx.open_table(DEDUPE_LOG).map_err(dberr)?;
            let mut dedupe = tx.open_table(DEDUPE).map_err(dberr)?;
            for row in log.range(..cutoff).map_err(dberr)? {
                let (_, ids) = row.map_err(dberr)?;
                for entry in runs::entries(ids.value(), false) {
                    let (_, id) = entry?;
                    let id = std::str::from_utf8(id).map_err(|e| runs::damaged(e.to_string()))?;
                    dedupe.remove(id).map_err(dberr)?;
                    pruned += 1;
                }
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
        let tx = self.read()?;
        let events = tx.open_table(EVENT_RUNS).map_err(dberr)?;
        let mut n = 0;
        let from = after.saturating_add(1);
        // A run is keyed by its last event: the first run holding `from` or later is here.
        for row in events
            .range((scope, epoch, from)..=(scope, epoch, u64::MAX))
            .map_err(dberr)?
        {
            let (_, value) = row.map_err(dberr)?;
            for entry in runs::entries(value.value(), true) {
                let (seq, body) = entry?;
                if seq < from {
                    continue;
                }
                if seq > through {
                    return Ok(n);
                }
                f(StoredEvent {
                    scope: scope.to_string(),
                    epoch,
                    event: decode_event(
                        std::str::from_utf8(body).map_err(|e| runs::damaged(e.to_string()))?,
                    )?,
                });
                n += 1;
            }
        }
        Ok(n)
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

    fn put_checkpoints(&self, checkpoints: &[(String, Checkpoint)]) -> Result<(), StoreError> {
        if checkpoints.is_empty() {
            return Ok(());
        }
        self.writing(|| {
            let tx = self.write()?;
            {
                let mut table = tx.open_table(CHECKPOINTS).map_err(dberr)?;
                for (scope, cp) in checkpoints {
                    table
                        .insert(scope.as_str(), serde_json::to_vec(cp)?.as_slice())
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
                let checkpoints: Vec<(String, Checkpoint)> = {
                    let table = tx.open_table(CHECKPOINTS).map_err(dberr)?;
                    let mut out = Vec::new();
                    for row in table.iter().map_err(dberr)? {
                        let (k, v) = row.map_err(dberr)?;
                        out.push((k.value().to_string(), serde_json::from_slice(v.value())?));
                    }
                    out
                };
                let protected = protected_epochs(&tx)?;
                let mut events = tx.open_table(EVENT_RUNS).map_err(dberr)?;
                for (scope, cp) in &checkpoints {
                    // Whole runs only: a run is gone once its last event is covered.
                    let upto = cp.seq.min(cutoff_seq);
                    let keep = protected.get(scope).copied();
                    let scope = scope.as_str();
                    events
                        .retain_in(
                            (scope, 0u64, 0u64)..=(scope, cp.epoch, upto),
                            |(_, e, _), run| {
                                let kept = Some(e) == keep;
                                if !kept {
                                    pruned += runs::entries(run, true).count();
                                }
                                kept
                            },
                        )
                        .map_err(dberr)?;
                }
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

/// Moves a store written before event runs and the dedupe log into them: each old event
/// becomes a run of one, each old dedupe time key an entry of its time's log record. Runs
/// once, in the transaction that opens the tables; the old tables are then deleted.
fn migrate_legacy(tx: &redb::WriteTransaction) -> Result<(), StoreError> {
    // A write transaction's `open_table` creates what is missing: look before opening.
    let legacy = [LEGACY_EVENTS.name(), LEGACY_DEDUPE_BY_TIME.name()];
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
            let mut runs_table = tx.open_table(EVENT_RUNS).map_err(dberr)?;
            for row in old.iter().map_err(dberr)? {
                let (key, value) = row.map_err(dberr)?;
                let (scope, epoch, seq) = key.value();
                let stored: StoredEvent = serde_json::from_slice(value.value())?;
                let mut run = Vec::new();
                runs::push(&mut run, Some(seq), &serde_json::to_vec(&stored.event)?);
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
                runs::push(ids, None, id.as_bytes());
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
    tracing::info!(
        events = moved_events,
        dedupe_keys = moved_ids,
        "store moved to event runs and the dedupe log"
    );
    Ok(())
}

/// The framing of event runs and dedupe log records: entries back to back, each an optional
/// event number (u64, little-endian), a length (u32, little-endian) and that many bytes.
mod runs {
    use super::StoreError;

    pub(super) fn push(buf: &mut Vec<u8>, seq: Option<u64>, bytes: &[u8]) {
        if let Some(seq) = seq {
            buf.extend_from_slice(&seq.to_le_bytes());
        }
        buf.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        buf.extend_from_slice(bytes);
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
            scope: s.to_string(),
            epoch: 1,
            body: serde_json::to_vec(&event).expect("json"),
        });
        BatchItem { event, stored }
    }

    fn replayed(store: &EmbeddedStore, scope: &str, after: u64, through: u64) -> Vec<String> {
        let mut ids = Vec::new();
        store
            .replay(scope, 1, after, through, &mut |e| {
                ids.push(e.event.event_id)
            })
            .expect("replay");
        ids
    }

    #[test]
    fn a_commit_writes_one_run_per_scope_and_replay_reads_any_slice_of_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        // Two commits, three scopes: runs a and b, then a and c; numbers 1..=5 then 6..=8.
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
        let tx = store.read().expect("read");
        assert_eq!(
            tx.open_table(EVENT_RUNS).expect("runs").len().expect("len"),
            4
        );
        drop(tx);
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
    }

    #[test]
    fn a_new_store_has_no_tables_from_before_event_runs() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        drop(store);
        let store = EmbeddedStore::open(dir.path()).expect("reopen");
        let tx = store.read().expect("read");
        let names: Vec<String> = tx
            .list_tables()
            .expect("tables")
            .map(|t| t.name().to_string())
            .collect();
        assert!(names.contains(&"event_runs".to_string()), "{names:?}");
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
    fn a_store_from_before_event_runs_is_moved_into_them_at_open() {
        let dir = tempfile::tempdir().expect("tmp");
        {
            let db = Database::create(dir.path().join(FILE_NAME)).expect("create");
            let tx = db.begin_write().expect("write");
            {
                let mut events = tx.open_table(LEGACY_EVENTS).expect("events");
                let mut dedupe = tx.open_table(DEDUPE).expect("dedupe");
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
        assert!(
            tx.open_table(LEGACY_EVENTS).is_err(),
            "the old table is gone"
        );
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
    fn a_stored_body_that_is_not_utf8_is_an_error_on_replay() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        let tx = store.write().expect("write");
        {
            let mut table = tx.open_table(EVENT_RUNS).expect("runs");
            let mut run = Vec::new();
            runs::push(&mut run, Some(1), &[0xff, 0xfe]);
            table.insert(("a", 1, 1), run.as_slice()).expect("insert");
        }
        tx.commit().expect("commit");
        let out = store.replay("a", 1, 0, u64::MAX, &mut |_| {});
        assert!(matches!(out, Err(StoreError::Schema(m)) if m.contains("damaged")));
    }

    #[test]
    fn a_truncated_run_is_an_error_not_an_end() {
        let mut run = Vec::new();
        runs::push(&mut run, Some(7), b"{}");
        runs::push(&mut run, Some(8), b"[1]");
        let whole: Vec<_> = runs::entries(&run, true)
            .map(|e| e.map(|(s, _)| s).ok())
            .collect();
        assert_eq!(whole, [Some(7), Some(8)]);
        let cut = &run[..run.len() - 1];
        let out: Vec<_> = runs::entries(cut, true).collect();
        assert!(out[0].is_ok() && out[1].is_err() && out.len() == 2);
    }
}
