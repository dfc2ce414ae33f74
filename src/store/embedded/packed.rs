//! The embedded store's binary form of an event in the event log, and how a stored body is read
//! back whatever form it has.
//!
//! The event log held each item's JSON text as the application sent it; at about 195 bytes for
//! a typical event, most of the bytes the store wrote per event (and the kernel copied into the
//! page cache, and `fdatasync` waited for). A packed event holds the same validated event in
//! about half that: a tag byte, which no JSON text starts with, a byte of flags saying which
//! optional fields are present (and the two booleans' values), the names with LEB128 lengths,
//! and the numbers as their little-endian bytes, so each reads back bit for bit. Ingest refuses
//! unknown fields, so the event holds everything the text said; only its spelling (spacing,
//! key order, how a number was written) is not kept, and no reader used it.
//!
//! [`decode`] reads a body in either form: packed, or text as earlier stores wrote it.

use compact_str::CompactString;

use super::varint;
use crate::core::event::{EventAttributes, Mode, Review, TaskEvent};
use crate::store::{StoreError, decode_event};

/// The first byte of a packed event. JSON text starts with `{` (or space before it).
const TAG: u8 = 0x01;

const SUBJECT: u8 = 1;
const TS: u8 = 1 << 1;
const QUALITY: u8 = 1 << 2;
const LATENCY: u8 = 1 << 3;
const COST: u8 = 1 << 4;
const FALLBACK: u8 = 1 << 5;
const REVIEW: u8 = 1 << 6;
const READ_ONLY: u8 = 1 << 7;

/// Values of the booleans whose presence the first flags byte records.
const FALLBACK_TRUE: u8 = 1;
const REVIEW_REJECTED: u8 = 1 << 1;

/// Appends `event`, packed, to `out`.
pub(super) fn pack(event: &TaskEvent, out: &mut Vec<u8>) {
    let mut flags = 0;
    let mut values = 0;
    let mut set = |present: bool, bit: u8| {
        if present {
            flags |= bit;
        }
    };
    set(event.subject.is_some(), SUBJECT);
    set(event.ts.is_some(), TS);
    set(event.quality.is_some(), QUALITY);
    set(event.latency_ms.is_some(), LATENCY);
    set(event.cost_usd.is_some(), COST);
    set(event.fallback.is_some(), FALLBACK);
    set(event.review.is_some(), REVIEW);
    set(event.mode == Mode::ReadOnly, READ_ONLY);
    if event.fallback == Some(true) {
        values |= FALLBACK_TRUE;
    }
    if event.review == Some(Review::Rejected) {
        values |= REVIEW_REJECTED;
    }
    out.extend_from_slice(&[TAG, flags, values]);
    text(out, &event.event_id);
    text(out, &event.workflow);
    text(out, &event.version);
    if let Some(subject) = &event.subject {
        text(out, subject);
    }
    varint::put(out, event.attributes.len());
    for (key, value) in event.attributes.iter() {
        text(out, key);
        text(out, value);
    }
    if let Some(ts) = event.ts {
        out.extend_from_slice(&ts.to_le_bytes());
    }
    for number in [event.quality, event.latency_ms, event.cost_usd]
        .into_iter()
        .flatten()
    {
        out.extend_from_slice(&number.to_le_bytes());
    }
    varint::put(out, event.signals.len());
    for (name, value) in &event.signals {
        text(out, name);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

/// A stored event body back into the event: packed, or the text earlier stores wrote (see
/// [`decode_event`]).
pub(super) fn decode(body: &[u8]) -> Result<TaskEvent, StoreError> {
    if body.first() == Some(&TAG) {
        return unpack(&body[1..]);
    }
    decode_event(std::str::from_utf8(body).map_err(|e| damaged(&e.to_string()))?)
}

fn unpack(mut buf: &[u8]) -> Result<TaskEvent, StoreError> {
    let buf = &mut buf;
    let [flags, values] = take::<2>(buf)?;
    let event_id = read_text(buf)?;
    let workflow = read_text(buf)?;
    let version = read_text(buf)?;
    let subject = (flags & SUBJECT != 0).then(|| read_text(buf)).transpose()?;
    let mut attributes = EventAttributes::default();
    for _ in 0..read_len(buf)? {
        let key = read_text(buf)?;
        attributes.insert(key, read_text(buf)?);
    }
    let ts = (flags & TS != 0)
        .then(|| take::<8>(buf).map(u64::from_le_bytes))
        .transpose()?;
    let mut number = |bit: u8| {
        (flags & bit != 0)
            .then(|| take::<8>(buf).map(f64::from_le_bytes))
            .transpose()
    };
    let quality = number(QUALITY)?;
    let latency_ms = number(LATENCY)?;
    let cost_usd = number(COST)?;
    let mut signals = std::collections::BTreeMap::new();
    for _ in 0..read_len(buf)? {
        let name = read_text(buf)?.to_string();
        signals.insert(name, f64::from_le_bytes(take::<8>(buf)?));
    }
    if !buf.is_empty() {
        return Err(damaged("bytes after the event"));
    }
    Ok(TaskEvent {
        event_id,
        workflow,
        version,
        subject,
        attributes,
        mode: mode(flags & READ_ONLY != 0),
        ts,
        quality,
        latency_ms,
        cost_usd,
        fallback: (flags & FALLBACK != 0).then_some(values & FALLBACK_TRUE != 0),
        review: (flags & REVIEW != 0).then(|| review(values & REVIEW_REJECTED != 0)),
        signals,
    })
}

fn mode(read_only: bool) -> Mode {
    if read_only {
        Mode::ReadOnly
    } else {
        Mode::Full
    }
}

fn review(rejected: bool) -> Review {
    if rejected {
        Review::Rejected
    } else {
        Review::Approved
    }
}

fn damaged(detail: &str) -> StoreError {
    StoreError::Schema(format!("a stored event is damaged: {detail}"))
}

fn text(out: &mut Vec<u8>, s: &str) {
    varint::put(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

fn take<const N: usize>(buf: &mut &[u8]) -> Result<[u8; N], StoreError> {
    let (head, rest) = buf
        .split_first_chunk::<N>()
        .ok_or_else(|| damaged("a truncated event"))?;
    *buf = rest;
    Ok(*head)
}

fn read_len(buf: &mut &[u8]) -> Result<usize, StoreError> {
    varint::get(buf).ok_or_else(|| damaged("a truncated or overlong length"))
}

fn read_text(buf: &mut &[u8]) -> Result<CompactString, StoreError> {
    let len = read_len(buf)?;
    let (bytes, rest) = buf
        .split_at_checked(len)
        .ok_or_else(|| damaged("a truncated name"))?;
    *buf = rest;
    let text = std::str::from_utf8(bytes).map_err(|e| damaged(&e.to_string()))?;
    Ok(CompactString::from(text))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn name() -> impl Strategy<Value = String> {
        prop_oneof!["[a-z0-9_-]{0,30}", "\\PC{0,40}"]
    }

    fn number() -> impl Strategy<Value = f64> {
        prop_oneof![
            Just(0.0),
            Just(-0.0),
            Just(f64::MIN_POSITIVE / 2.0),
            Just(f64::MAX),
            -1e6..1e6f64,
        ]
    }

    fn event() -> impl Strategy<Value = TaskEvent> {
        (
            (name(), name(), name(), proptest::option::of(name())),
            prop::collection::btree_map(name(), name(), 0..4),
            (
                any::<bool>(),
                proptest::option::of(any::<u64>()),
                proptest::option::of(number()),
                proptest::option::of(number()),
                proptest::option::of(number()),
            ),
            (
                proptest::option::of(any::<bool>()),
                proptest::option::of(any::<bool>()),
                prop::collection::btree_map(name(), number(), 0..3),
            ),
        )
            .prop_map(
                |(
                    (event_id, workflow, version, subject),
                    attributes,
                    (read_only, ts, quality, latency_ms, cost_usd),
                    (fallback, rejected, signals),
                )| {
                    let mut attrs = EventAttributes::default();
                    for (k, v) in attributes {
                        attrs.insert(k.into(), v.into());
                    }
                    TaskEvent {
                        event_id: event_id.into(),
                        workflow: workflow.into(),
                        version: version.into(),
                        subject: subject.map(Into::into),
                        attributes: attrs,
                        mode: mode(read_only),
                        ts,
                        quality,
                        latency_ms,
                        cost_usd,
                        fallback,
                        review: rejected.map(review),
                        signals,
                    }
                },
            )
    }

    /// The numbers, bit for bit (`-0.0 == 0.0` would hide a lost sign).
    fn bits(e: &TaskEvent) -> Vec<Option<u64>> {
        [e.quality, e.latency_ms, e.cost_usd]
            .into_iter()
            .map(|n| n.map(f64::to_bits))
            .chain(e.signals.values().map(|v| Some(v.to_bits())))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Whatever the event, packing and decoding gives it back exactly; any shorter or
        /// longer body is an error, never another event.
        #[test]
        fn a_packed_event_reads_back_exactly(event in event()) {
            let mut body = Vec::new();
            pack(&event, &mut body);
            let back = decode(&body).expect("decode");
            prop_assert_eq!(&back, &event);
            prop_assert_eq!(bits(&back), bits(&event));
            for cut in 1..body.len() {
                prop_assert!(decode(&body[..cut]).is_err(), "cut at {}", cut);
            }
            body.push(0);
            prop_assert!(decode(&body).is_err());
        }
    }

    #[test]
    fn a_typical_event_packs_into_half_its_text() {
        let text = r#"{"event_id":"0x55d0c8a01764790000-250001","workflow":"w345","version":"a","subject":"s250001","attributes":{"tier":"enterprise"},"quality":0.9,"latency_ms":945,"cost_usd":0.01,"fallback":false}"#;
        let event = crate::core::event::parse_event(text).expect("event");
        let mut body = Vec::new();
        pack(&event, &mut body);
        assert!(
            body.len() * 2 < text.len(),
            "{} of {}",
            body.len(),
            text.len()
        );
        assert_eq!(decode(&body).expect("packed"), event);
        // Text as earlier stores wrote it still reads; a body that is neither is an error.
        assert_eq!(decode(text.as_bytes()).expect("text"), event);
        assert!(decode(&[0xFF, 0xFE]).is_err());
        assert!(decode(b"{\"event_id\":").is_err());
    }
}
