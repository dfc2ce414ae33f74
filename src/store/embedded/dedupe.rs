//! The embedded store's dedupe index: every accepted event id, until retention forgets it; and
//! the dedupe log's encoding of a commit's ids, which is what retention reads to forget them.
//!
//! Ids are kept in *groups*: the ids that share all but their last two bytes are one redb entry,
//! keyed by those bytes, whose value is the sorted set of last-two-byte pairs seen. A group
//! commit of ordered ids (a counter, a time-prefixed id) therefore updates one entry per hundred
//! decimal ids (per 256 hexadecimal ones) instead of one per event — per-entry B-tree inserts
//! were the largest part of the store's cost per event. Random ids (UUIDv4) make groups of one,
//! an entry per id as before, with a two-byte value. A group never holds more than 65 536
//! members (128 KiB), whatever the ids.
//!
//! Stores written before kept groups of ids differing in the last byte only (`GROUPS_ONE_BYTE`),
//! and before that an entry per id (`LEGACY_IDS`); [`migrate`] moves either into groups at open.
//!
//! The dedupe log keeps, per commit time, the ids accepted then (see `append_dedupe_log`). A
//! commit's ids go in as one *run*, front-coded in group order ([`accept`] writes it): each id
//! as the length of the prefix it shares with the one before and the rest, so ordered ids take
//! four or five bytes each instead of their length plus four. [`logged_ids`] reads a record
//! back, runs and ids as stores wrote them before (a length and the bytes) alike.

use redb::{ReadableTable, Table, TableDefinition, TableHandle, WriteTransaction};

use super::{dberr, varint};
use crate::store::StoreError;

/// Group key (an id without its last two bytes) → the sorted pairs of last bytes of its
/// accepted ids, two bytes each.
pub(super) const GROUPS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("dedupe_pairs");

/// Before pairs: group key (an id without its last byte) → the sorted last bytes of its ids.
/// Moved into [`GROUPS`] at open.
const GROUPS_ONE_BYTE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("dedupe_groups");

/// Before groups: one entry per id, with the time it was first accepted (which nothing read).
/// Moved into groups at open.
pub(super) const LEGACY_IDS: TableDefinition<&str, u64> = TableDefinition::new("dedupe");

/// The group of ids shorter than two bytes. No other group contains the byte 0xFF (it never
/// occurs in UTF-8), so it cannot collide; its members say the id's length, then its byte.
const SHORT_ID_GROUP: &[u8] = &[0xFF];

/// A member: the last two bytes of an id (see [`split`]).
type Member = [u8; 2];

/// An id's group key and its member.
fn split(id: &[u8]) -> (&[u8], Member) {
    match *id {
        [] => (SHORT_ID_GROUP, [0, 0]),
        [only] => (SHORT_ID_GROUP, [1, only]),
        [ref group @ .., a, b] => (group, [a, b]),
    }
}

/// The id of `group`'s `member` (the inverse of [`split`]), appended to `out`.
fn join(out: &mut Vec<u8>, group: &[u8], member: Member) {
    if group == SHORT_ID_GROUP {
        if member[0] == 1 {
            out.push(member[1]);
        }
    } else {
        out.extend_from_slice(group);
        out.extend_from_slice(&member);
    }
}

/// A group's stored value as its members, into `out` (a trailing odd byte, which no store
/// writes, is ignored).
fn members(value: &[u8], out: &mut Vec<Member>) {
    out.clear();
    out.extend(value.chunks_exact(2).map(|pair| [pair[0], pair[1]]));
}

/// Ids in group order (ties in their given order), each with its position.
fn by_group<'a>(ids: impl Iterator<Item = &'a [u8]>) -> Vec<(&'a [u8], Member, usize)> {
    let mut order: Vec<_> = ids
        .enumerate()
        .map(|(i, id)| {
            let (group, member) = split(id);
            (group, member, i)
        })
        .collect();
    // Stable, and ids mostly arrive in order: a merge of a few sorted runs.
    order.sort_by(|a, b| a.0.cmp(b.0));
    order
}

/// Adds `ids`; for each, whether it was new. An id given twice is new only the first time.
/// The new ones are appended to `log` as one run of the dedupe log (nothing if none is new).
pub(super) fn accept(
    table: &mut Table<'_, &'static [u8], &'static [u8]>,
    ids: &[&str],
    log: &mut Vec<u8>,
) -> Result<Vec<bool>, StoreError> {
    let mut fresh = vec![false; ids.len()];
    let mut run = LogRun::start(log);
    let order = by_group(ids.iter().map(|id| id.as_bytes()));
    let mut incoming: Vec<(Member, usize)> = Vec::new();
    let mut merged: Vec<u8> = Vec::new();
    let mut stored: Vec<Member> = Vec::new();
    for group_run in order.chunk_by(|a, b| a.0 == b.0) {
        let group = group_run[0].0;
        incoming.clear();
        incoming.extend(group_run.iter().map(|&(_, member, i)| (member, i)));
        // By member, and the first given of equal ones first.
        incoming.sort_unstable();
        merged.clear();
        let mut added = false;
        match table.get(group).map_err(dberr)? {
            Some(value) => members(value.value(), &mut stored),
            None => stored.clear(),
        }
        {
            let mut existing = &stored[..];
            merged.reserve(2 * (existing.len() + incoming.len()));
            let mut last: Option<Member> = None;
            for &(member, i) in &incoming {
                if last == Some(member) {
                    continue;
                }
                last = Some(member);
                let below = existing.partition_point(|m| *m < member);
                merged.extend(existing[..below].iter().flatten());
                existing = &existing[below..];
                if existing.first() == Some(&member) {
                    continue;
                }
                merged.extend_from_slice(&member);
                fresh[i] = true;
                added = true;
                run.push(group, member);
            }
            merged.extend(existing.iter().flatten());
        }
        if added {
            table.insert(group, merged.as_slice()).map_err(dberr)?;
        }
    }
    run.finish();
    Ok(fresh)
}

/// Removes `ids` (those absent are ignored); a group left empty is removed.
pub(super) fn forget<'a>(
    table: &mut Table<'_, &'static [u8], &'static [u8]>,
    ids: impl Iterator<Item = &'a [u8]>,
) -> Result<(), StoreError> {
    let order = by_group(ids);
    let mut gone: Vec<Member> = Vec::new();
    for run in order.chunk_by(|a, b| a.0 == b.0) {
        let group = run[0].0;
        let Some(value) = table.get(group).map_err(dberr)?.map(|v| v.value().to_vec()) else {
            continue;
        };
        gone.clear();
        gone.extend(run.iter().map(|&(_, member, _)| member));
        gone.sort_unstable();
        let mut before = Vec::new();
        members(&value, &mut before);
        let kept: Vec<u8> = before
            .iter()
            .filter(|m| gone.binary_search(m).is_err())
            .flatten()
            .copied()
            .collect();
        if kept.is_empty() {
            table.remove(group).map_err(dberr)?;
        } else if kept.len() != 2 * before.len() {
            table.insert(group, kept.as_slice()).map_err(dberr)?;
        }
    }
    Ok(())
}

/// Marks a run of front-coded ids in a dedupe-log record. An id as stores wrote it before
/// starts with its length, a `u32` that never takes this value (a record is far smaller).
const RUN_MARK: [u8; 4] = u32::MAX.to_le_bytes();

/// A run being appended to a dedupe-log record: [`RUN_MARK`], the run's length in bytes
/// (`u32`, little-endian), then each id as the length of the prefix it shares with the id
/// before it in the run and the length of the rest (LEB128 each), then the rest.
struct LogRun<'a> {
    out: &'a mut Vec<u8>,
    /// Where the run's length goes.
    at: usize,
    /// The run's last id.
    last: Vec<u8>,
    id: Vec<u8>,
}

impl<'a> LogRun<'a> {
    fn start(out: &'a mut Vec<u8>) -> LogRun<'a> {
        let at = out.len() + RUN_MARK.len();
        out.extend_from_slice(&RUN_MARK);
        out.extend_from_slice(&0u32.to_le_bytes());
        LogRun {
            out,
            at,
            last: Vec::new(),
            id: Vec::new(),
        }
    }

    fn push(&mut self, group: &[u8], member: Member) {
        self.id.clear();
        join(&mut self.id, group, member);
        let shared = self
            .last
            .iter()
            .zip(&self.id)
            .take_while(|(a, b)| a == b)
            .count();
        varint::put(self.out, shared);
        varint::put(self.out, self.id.len() - shared);
        self.out.extend_from_slice(&self.id[shared..]);
        std::mem::swap(&mut self.last, &mut self.id);
    }

    /// Writes the run's length; a run with no ids is taken out again.
    fn finish(self) {
        let start = self.at - RUN_MARK.len();
        let len = self.out.len() - self.at - 4;
        if len == 0 {
            self.out.truncate(start);
        } else {
            // A commit's ids are far fewer than 4 GiB.
            let len = u32::try_from(len).unwrap_or(u32::MAX);
            self.out[self.at..self.at + 4].copy_from_slice(&len.to_le_bytes());
        }
    }
}

/// The ids of one dedupe-log record, in the order written.
#[derive(Debug, Default, PartialEq)]
pub(super) struct LoggedIds {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl LoggedIds {
    pub(super) fn len(&self) -> usize {
        self.ends.len()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(&self.ends).map(|(a, &b)| &self.bytes[a..b])
    }

    fn push(&mut self, id: &[u8]) {
        self.bytes.extend_from_slice(id);
        self.ends.push(self.bytes.len());
    }
}

fn damaged(detail: &str) -> StoreError {
    StoreError::Schema(format!("a dedupe-log record is damaged: {detail}"))
}

/// Reads a dedupe-log record: front-coded runs and ids written one by one, in any order. A
/// truncated record is an error, never a silent end.
pub(super) fn logged_ids(mut record: &[u8]) -> Result<LoggedIds, StoreError> {
    let mut out = LoggedIds::default();
    while !record.is_empty() {
        let head: [u8; 4] = take(&mut record, 4, "header")?
            .try_into()
            .map_err(|_| damaged("a header"))?;
        if head != RUN_MARK {
            out.push(take(&mut record, u32::from_le_bytes(head) as usize, "id")?);
            continue;
        }
        let len: [u8; 4] = take(&mut record, 4, "run length")?
            .try_into()
            .map_err(|_| damaged("a run length"))?;
        let mut run = take(&mut record, u32::from_le_bytes(len) as usize, "run")?;
        let mut last: Vec<u8> = Vec::new();
        while !run.is_empty() {
            let shared = read_len(&mut run)?;
            let rest = read_len(&mut run)?;
            if shared > last.len() {
                return Err(damaged("an id sharing more than the one before it has"));
            }
            last.truncate(shared);
            last.extend_from_slice(take(&mut run, rest, "id in a run")?);
            out.push(&last);
        }
    }
    Ok(out)
}

/// The next `n` bytes of `buf`, which moves past them.
fn take<'a>(buf: &mut &'a [u8], n: usize, what: &str) -> Result<&'a [u8], StoreError> {
    let (head, rest) = buf
        .split_at_checked(n)
        .ok_or_else(|| damaged(&format!("a truncated {what}")))?;
    *buf = rest;
    Ok(head)
}

fn read_len(buf: &mut &[u8]) -> Result<usize, StoreError> {
    varint::get(buf).ok_or_else(|| damaged("a truncated or overlong length"))
}

/// Ids moved per step of [`migrate`]: bounds its memory on a store of millions.
const MIGRATE_STEP: usize = 65_536;

/// Moves an older store's dedupe index into groups of pairs, once, in the transaction that
/// opens the tables: its entries per id, or its groups differing in the last byte only. The
/// old table is then deleted. Returns how many ids moved.
pub(super) fn migrate(tx: &WriteTransaction) -> Result<usize, StoreError> {
    // A write transaction's `open_table` creates what is missing: look before opening.
    let present: Vec<String> = tx
        .list_tables()
        .map_err(dberr)?
        .map(|t| t.name().to_string())
        .collect();
    let mut moved = 0;
    if present.iter().any(|t| t == LEGACY_IDS.name()) {
        let old = tx.open_table(LEGACY_IDS).map_err(dberr)?;
        moved += move_ids(
            tx,
            old.iter()
                .map_err(dberr)?
                .map(|row| row.map(|(id, _)| id.value().as_bytes().to_vec())),
        )?;
        drop(old);
        tx.delete_table(LEGACY_IDS).map_err(dberr)?;
    }
    if present.iter().any(|t| t == GROUPS_ONE_BYTE.name()) {
        let old = tx.open_table(GROUPS_ONE_BYTE).map_err(dberr)?;
        let ids = old.iter().map_err(dberr)?.flat_map(|row| {
            let (group, last): (Vec<u8>, Vec<u8>) = match row {
                Ok((g, m)) => (g.value().to_vec(), m.value().to_vec()),
                Err(e) => return vec![Err(e)],
            };
            last.into_iter()
                .map(|byte| {
                    Ok(if group == SHORT_ID_GROUP {
                        Vec::new()
                    } else {
                        let mut id = group.clone();
                        id.push(byte);
                        id
                    })
                })
                .collect()
        });
        moved += move_ids(tx, ids)?;
        drop(old);
        tx.delete_table(GROUPS_ONE_BYTE).map_err(dberr)?;
    }
    Ok(moved)
}

/// Accepts `ids` into [`GROUPS`], [`MIGRATE_STEP`] at a time; returns how many.
fn move_ids(
    tx: &WriteTransaction,
    ids: impl Iterator<Item = Result<Vec<u8>, redb::StorageError>>,
) -> Result<usize, StoreError> {
    let mut groups = tx.open_table(GROUPS).map_err(dberr)?;
    let mut moved = 0;
    let mut step: Vec<String> = Vec::with_capacity(MIGRATE_STEP);
    let mut ids = ids.peekable();
    while ids.peek().is_some() {
        step.clear();
        for id in ids.by_ref().take(MIGRATE_STEP) {
            // Every stored id came in as a JSON string: UTF-8.
            let id = String::from_utf8(id.map_err(dberr)?)
                .map_err(|_| StoreError::Schema("a stored dedupe id is not UTF-8".into()))?;
            step.push(id);
        }
        let refs: Vec<&str> = step.iter().map(String::as_str).collect();
        accept(&mut groups, &refs, &mut Vec::new())?;
        moved += step.len();
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;
    use redb::backends::InMemoryBackend;
    use redb::{Database, ReadableTableMetadata};

    use super::*;

    fn database() -> Database {
        Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .expect("in-memory database")
    }

    fn entries(db: &Database) -> u64 {
        let tx = db.begin_write().expect("write");
        let n = tx.open_table(GROUPS).expect("groups").len().expect("len");
        tx.abort().expect("abort");
        n
    }

    /// Accepts `ids` in a transaction of their own: whether each was new, and the log run.
    fn accept_all(db: &Database, ids: &[String]) -> (Vec<bool>, Vec<u8>) {
        let tx = db.begin_write().expect("write");
        let mut log = Vec::new();
        let fresh = {
            let mut table = tx.open_table(GROUPS).expect("groups");
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            accept(&mut table, &refs, &mut log).expect("accept")
        };
        tx.commit().expect("commit");
        (fresh, log)
    }

    #[test]
    fn ordered_ids_share_an_entry_per_hundred_and_log_a_few_bytes_each() {
        let db = database();
        let ids: Vec<String> = (0..10_000).map(|k| format!("ev-{k:05}")).collect();
        let (fresh, log) = accept_all(&db, &ids);
        assert!(fresh.iter().all(|&n| n));
        // `ev-00000`..`ev-00099` share `ev-000`, and so on: a hundred groups.
        assert_eq!(entries(&db), 100);
        // Front-coded: a shared prefix and a two-byte rest, against `4 + 8` bytes each.
        assert!(log.len() < 5 * ids.len(), "{} bytes", log.len());
        let logged = logged_ids(&log).expect("log");
        assert!(logged.iter().eq(ids.iter().map(|id| id.as_bytes())));
        let (again, log) = accept_all(&db, &ids);
        assert!(again.iter().all(|&n| !n));
        assert!(log.is_empty(), "a run with no new id is not written");
    }

    #[test]
    fn a_record_reads_ids_written_one_by_one_and_runs_alike() {
        let db = database();
        let mut record = Vec::new();
        // As stores wrote ids before runs: a `u32` length, then the bytes.
        for id in ["old-1", ""] {
            record.extend_from_slice(&(id.len() as u32).to_le_bytes());
            record.extend_from_slice(id.as_bytes());
        }
        let (_, run) = accept_all(&db, &["b".to_string(), "a-2".into(), "a-1".into()]);
        record.extend_from_slice(&run);
        record.extend_from_slice(&3u32.to_le_bytes());
        record.extend_from_slice(b"old");
        let logged = logged_ids(&record).expect("record");
        let ids: Vec<&[u8]> = logged.iter().collect();
        // The run is in group order: `a-1`, `a-2`, then `b` (the group of short ids).
        assert_eq!(
            ids,
            [&b"old-1"[..], b"", b"a-1", b"a-2", b"b", b"old"],
            "{logged:?}"
        );
        assert_eq!(logged.len(), 6);
    }

    #[test]
    fn a_damaged_record_is_an_error_not_a_shorter_list() {
        let db = database();
        let (_, run) = accept_all(&db, &["abc".to_string(), "abd".into()]);
        for cut in 1..run.len() {
            assert!(logged_ids(&run[..cut]).is_err(), "cut at {cut}");
        }
        // A run whose first id claims a prefix shared with nothing.
        let mut bad = RUN_MARK.to_vec();
        bad.extend_from_slice(&2u32.to_le_bytes());
        bad.extend_from_slice(&[3, 0]);
        assert!(logged_ids(&bad).is_err());
        // A length that never ends.
        let mut endless = RUN_MARK.to_vec();
        endless.extend_from_slice(&12u32.to_le_bytes());
        endless.extend_from_slice(&[0xFF; 12]);
        assert!(logged_ids(&endless).is_err());
    }

    #[test]
    fn one_byte_groups_move_into_pairs_at_open() {
        let db = database();
        let ids: Vec<String> = (0..300)
            .map(|k| format!("id-{k}"))
            .chain([String::new(), "\u{0}".into(), "x".into()])
            .collect();
        let tx = db.begin_write().expect("write");
        {
            // The one-byte layout: an id without its last byte → its last bytes, sorted; the
            // empty id in the group `[0xFF]` as the member 0.
            let mut old = tx.open_table(GROUPS_ONE_BYTE).expect("old");
            let mut groups: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = Default::default();
            for id in &ids {
                let (group, last) = match id.as_bytes().split_last() {
                    Some((&last, group)) => (group.to_vec(), last),
                    None => (vec![0xFF], 0),
                };
                groups.entry(group).or_default().push(last);
            }
            for (group, mut last) in groups {
                last.sort_unstable();
                old.insert(group.as_slice(), last.as_slice())
                    .expect("insert");
            }
        }
        assert_eq!(migrate(&tx).expect("migrate"), ids.len());
        assert!(
            !tx.list_tables()
                .expect("tables")
                .any(|t| t.name() == GROUPS_ONE_BYTE.name())
        );
        tx.commit().expect("commit");
        let (fresh, _) = accept_all(&db, &ids);
        assert!(fresh.iter().all(|&n| !n), "{fresh:?}");
        let (fresh, _) = accept_all(&db, &["id-300".to_string(), "y".into()]);
        assert_eq!(fresh, [true, true]);
    }

    /// Ids from a small alphabet, so batches repeat ids and share groups: last bytes that
    /// differ, multi-byte characters split between group and member, the empty id, the ids
    /// of one byte (which short ids' members spell out) and of two.
    fn id() -> impl Strategy<Value = String> {
        prop_oneof![
            "[ab]{0,4}",
            "[ab]{0,2}[é\u{ff}\u{1F600}]",
            Just(String::new()),
            Just("\u{0}".to_string()),
            Just("\u{1}".to_string()),
            Just("\u{1}\u{0}".to_string()),
            Just("\u{ff}".to_string()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Accepting and forgetting batches answers as a set of ids does, and each accepting
        /// batch's log run reads back as exactly its new ids.
        #[test]
        fn groups_answer_as_a_set_of_ids(
            steps in prop::collection::vec((any::<bool>(), prop::collection::vec(id(), 0..12)), 1..12)
        ) {
            let db = database();
            let mut model: HashSet<String> = HashSet::new();
            for (forgetting, batch) in steps {
                let tx = db.begin_write().expect("write");
                {
                    let mut table = tx.open_table(GROUPS).expect("groups");
                    if forgetting {
                        forget(&mut table, batch.iter().map(|id| id.as_bytes())).expect("forget");
                        for id in &batch {
                            model.remove(id);
                        }
                    } else {
                        let refs: Vec<&str> = batch.iter().map(String::as_str).collect();
                        let mut log = Vec::new();
                        let fresh = accept(&mut table, &refs, &mut log).expect("accept");
                        let expected: Vec<bool> =
                            batch.iter().map(|id| model.insert(id.clone())).collect();
                        prop_assert_eq!(&fresh, &expected, "accepting {:?}", batch);
                        let mut logged: Vec<Vec<u8>> = logged_ids(&log)
                            .expect("log")
                            .iter()
                            .map(<[u8]>::to_vec)
                            .collect();
                        let mut new: Vec<Vec<u8>> = batch
                            .iter()
                            .zip(&fresh)
                            .filter(|(_, n)| **n)
                            .map(|(id, _)| id.as_bytes().to_vec())
                            .collect();
                        logged.sort();
                        new.sort();
                        prop_assert_eq!(logged, new);
                    }
                }
                tx.commit().expect("commit");
            }
            // No empty group is left behind, and every known id is still refused.
            let tx = db.begin_write().expect("write");
            {
                let mut table = tx.open_table(GROUPS).expect("groups");
                for row in table.iter().expect("iter") {
                    let (_, members) = row.expect("row");
                    prop_assert!(!members.value().is_empty());
                }
                let known: Vec<&str> = model.iter().map(String::as_str).collect();
                let fresh = accept(&mut table, &known, &mut Vec::new()).expect("accept");
                prop_assert!(fresh.iter().all(|&n| !n), "{:?}", known);
            }
            tx.abort().expect("abort");
        }
    }
}
