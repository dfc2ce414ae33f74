//! The embedded store's dedupe index: every accepted event id, until retention forgets it.
//!
//! Ids are kept in *groups*: the ids that share all but their last byte are one redb entry,
//! keyed by those bytes, whose value is the set of last bytes seen (sorted, at most 256). A
//! group commit of ordered ids (a counter, a time-prefixed id) therefore updates one entry per
//! ten or more events instead of one per event — per-entry B-tree inserts were the largest
//! part of the store's cost per event. Random ids (UUIDv4) make groups of one, an entry per id
//! as before, with a one-byte value. A group never holds more than 256 members, whatever the
//! ids, so no entry grows past a small value.
//!
//! When each id was first accepted is kept by the dedupe log (see `append_dedupe_log`), which
//! is what retention reads to forget ids.

use redb::{ReadableTable, Table, TableDefinition, TableHandle, WriteTransaction};

use super::dberr;
use crate::store::StoreError;

/// Group key (an id without its last byte) → the sorted last bytes of its accepted ids.
pub(super) const GROUPS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("dedupe_groups");

/// Before groups: one entry per id, with the time it was first accepted (which nothing read).
/// Moved into groups at open.
pub(super) const LEGACY_IDS: TableDefinition<&str, u64> = TableDefinition::new("dedupe");

/// The group of the empty id. No id's other groups contain the byte 0xFF (it never occurs in
/// UTF-8), so it cannot collide.
const EMPTY_ID_GROUP: &[u8] = &[0xFF];

/// An id's group key and its member (last) byte.
fn split(id: &[u8]) -> (&[u8], u8) {
    match id.split_last() {
        Some((&last, group)) => (group, last),
        None => (EMPTY_ID_GROUP, 0),
    }
}

/// Ids in group order (ties in their given order), each with its position.
fn by_group<'a>(ids: impl Iterator<Item = &'a [u8]>) -> Vec<(&'a [u8], u8, usize)> {
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
pub(super) fn accept(
    table: &mut Table<'_, &'static [u8], &'static [u8]>,
    ids: &[&str],
) -> Result<Vec<bool>, StoreError> {
    let mut fresh = vec![false; ids.len()];
    let order = by_group(ids.iter().map(|id| id.as_bytes()));
    for run in order.chunk_by(|a, b| a.0 == b.0) {
        let group = run[0].0;
        let mut members = table
            .get(group)
            .map_err(dberr)?
            .map(|v| v.value().to_vec())
            .unwrap_or_default();
        let before = members.len();
        for &(_, member, i) in run {
            if let Err(at) = members.binary_search(&member) {
                members.insert(at, member);
                fresh[i] = true;
            }
        }
        if members.len() != before {
            table.insert(group, members.as_slice()).map_err(dberr)?;
        }
    }
    Ok(fresh)
}

/// Removes `ids` (those absent are ignored); a group left empty is removed.
pub(super) fn forget<'a>(
    table: &mut Table<'_, &'static [u8], &'static [u8]>,
    ids: impl Iterator<Item = &'a [u8]>,
) -> Result<(), StoreError> {
    let order = by_group(ids);
    for run in order.chunk_by(|a, b| a.0 == b.0) {
        let group = run[0].0;
        let Some(mut members) = table.get(group).map_err(dberr)?.map(|v| v.value().to_vec()) else {
            continue;
        };
        let before = members.len();
        members.retain(|m| !run.iter().any(|&(_, gone, _)| gone == *m));
        if members.is_empty() {
            table.remove(group).map_err(dberr)?;
        } else if members.len() != before {
            table.insert(group, members.as_slice()).map_err(dberr)?;
        }
    }
    Ok(())
}

/// Ids moved per step of [`migrate`]: bounds its memory on a store of millions.
const MIGRATE_STEP: usize = 65_536;

/// Moves a store's per-id dedupe entries into groups, once, in the transaction that opens the
/// tables; the old table is then deleted. Returns how many ids moved.
pub(super) fn migrate(tx: &WriteTransaction) -> Result<usize, StoreError> {
    // A write transaction's `open_table` creates what is missing: look before opening.
    let present = tx
        .list_tables()
        .map_err(dberr)?
        .any(|t| t.name() == LEGACY_IDS.name());
    if !present {
        return Ok(0);
    }
    let old = tx.open_table(LEGACY_IDS).map_err(dberr)?;
    let mut groups = tx.open_table(GROUPS).map_err(dberr)?;
    let mut moved = 0;
    let mut step: Vec<String> = Vec::with_capacity(MIGRATE_STEP);
    let mut rows = old.iter().map_err(dberr)?;
    loop {
        let row = rows.next().transpose().map_err(dberr)?;
        if let Some((id, _)) = &row {
            step.push(id.value().to_string());
        }
        if step.len() == MIGRATE_STEP || (row.is_none() && !step.is_empty()) {
            let ids: Vec<&str> = step.iter().map(String::as_str).collect();
            accept(&mut groups, &ids)?;
            moved += step.len();
            step.clear();
        }
        if row.is_none() {
            break;
        }
    }
    drop(rows);
    drop(old);
    tx.delete_table(LEGACY_IDS).map_err(dberr)?;
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

    #[test]
    fn ordered_ids_share_an_entry_per_ten() {
        let db = database();
        let ids: Vec<String> = (0..1000).map(|k| format!("ev-{k}")).collect();
        let tx = db.begin_write().expect("write");
        {
            let mut table = tx.open_table(GROUPS).expect("groups");
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            assert!(
                accept(&mut table, &refs)
                    .expect("accept")
                    .iter()
                    .all(|&n| n)
            );
            assert!(
                accept(&mut table, &refs)
                    .expect("again")
                    .iter()
                    .all(|&n| !n)
            );
        }
        tx.commit().expect("commit");
        // `ev-0`..`ev-9` share `ev-`; `ev-10`..`ev-99` nine groups; `ev-100`..`ev-999` ninety.
        assert_eq!(entries(&db), 100);
    }

    /// Ids from a small alphabet, so batches repeat ids and share groups: last bytes that
    /// differ, multi-byte characters split between group and member, the empty id and the id
    /// of one zero byte (which an empty id's member would be).
    fn id() -> impl Strategy<Value = String> {
        prop_oneof![
            "[ab]{0,3}",
            "[ab]{0,2}[é\u{ff}\u{1F600}]",
            Just(String::new()),
            Just("\u{0}".to_string()),
            Just("\u{ff}".to_string()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Accepting and forgetting batches answers as a set of ids does.
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
                        let fresh = accept(&mut table, &refs).expect("accept");
                        let expected: Vec<bool> =
                            batch.iter().map(|id| model.insert(id.clone())).collect();
                        prop_assert_eq!(fresh, expected, "accepting {:?}", batch);
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
                let fresh = accept(&mut table, &known).expect("accept");
                prop_assert!(fresh.iter().all(|&n| !n), "{:?}", known);
            }
            tx.abort().expect("abort");
        }
    }
}
