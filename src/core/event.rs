//! Task events: what an application reports after running a workflow version, and their
//! validation. Each item of a batch is checked alone so a malformed one never sinks the rest.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use compact_str::CompactString;
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::core::clock::{Millis, parse_rfc3339};
use crate::plan::Signal;

/// How a version was allowed to act for a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Full,
    ReadOnly,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::ReadOnly => "read_only",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Review {
    Approved,
    Rejected,
}

/// A validated task event. Its names are [`CompactString`]s: those of up to 24 bytes (a
/// workflow, a version, most subjects and attributes) live inline, so parsing a batch does not
/// allocate, and dropping it does not free, a string per field of every event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEvent {
    pub event_id: CompactString,
    pub workflow: CompactString,
    pub version: CompactString,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<CompactString>,
    #[serde(default, skip_serializing_if = "EventAttributes::is_empty")]
    pub attributes: EventAttributes,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<Review>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub signals: BTreeMap<String, f64>,
}

impl TaskEvent {
    /// The numeric observation of `signal` in this event, if it was reported. Rates observe
    /// 1.0 for a hit (a fallback, a rejected review) and 0.0 otherwise.
    pub fn observation(&self, signal: &Signal) -> Option<f64> {
        match signal {
            Signal::Quality => self.quality,
            Signal::LatencyMs => self.latency_ms,
            Signal::CostUsd => self.cost_usd,
            Signal::Fallback => self.fallback.map(|f| if f { 1.0 } else { 0.0 }),
            Signal::Review => self
                .review
                .map(|r| if r == Review::Rejected { 1.0 } else { 0.0 }),
            Signal::Custom(name) => self.signals.get(name).copied(),
        }
    }

    /// Looks up an attribute for segment matching.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key)
    }
}

/// An event's attributes: each key once, in key order, a key sent twice keeping its last
/// value — as a map, and written as one. It is a sorted vector because an event carries a
/// few: a `BTreeMap`'s first insert allocates a node for eleven pairs, which every event paid
/// to allocate, fill and walk again to drop.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EventAttributes(Vec<(CompactString, CompactString)>);

impl EventAttributes {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.position(key).ok().map(|i| self.0[i].1.as_str())
    }

    /// Sets `key` to `value`, replacing what it had.
    pub fn insert(&mut self, key: CompactString, value: CompactString) {
        match self.position(&key) {
            Ok(i) => self.0[i].1 = value,
            Err(i) => self.0.insert(i, (key, value)),
        }
    }

    pub fn remove(&mut self, key: &str) {
        if let Ok(i) = self.position(key) {
            self.0.remove(i);
        }
    }

    /// The pairs, in key order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn position(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }
}

impl<K: Into<CompactString>, V: Into<CompactString>> FromIterator<(K, V)> for EventAttributes {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        let mut out = EventAttributes::default();
        for (key, value) in pairs {
            out.insert(key.into(), value.into());
        }
        out
    }
}

impl Serialize for EventAttributes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for EventAttributes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(BTreeMap::<String, String>::deserialize(d)?
            .into_iter()
            .collect())
    }
}

/// The wire shape, permissive so that every field's problem can be named.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireEvent {
    event_id: Option<CompactString>,
    workflow: Option<CompactString>,
    version: Option<CompactString>,
    subject: Option<CompactString>,
    #[serde(default)]
    attributes: WireAttributes,
    mode: Option<Mode>,
    ts: Option<String>,
    quality: Option<f64>,
    latency_ms: Option<f64>,
    cost_usd: Option<f64>,
    fallback: Option<bool>,
    review: Option<Review>,
    #[serde(default)]
    signals: BTreeMap<String, f64>,
}

/// `attributes` as sent, parsed straight into the map an event keeps: a key sent twice keeps
/// its last value, as a map does; keys whose last value is not a string, number or boolean are
/// set aside to be refused.
#[derive(Default)]
struct WireAttributes {
    map: EventAttributes,
    refused: BTreeSet<String>,
}

impl<'de> Deserialize<'de> for WireAttributes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = WireAttributes;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut out = WireAttributes::default();
                while let Some(key) = map.next_key::<CompactString>()? {
                    let value = match map.next_value::<Scalar<'de>>()? {
                        Scalar::Text(s) => CompactString::from(s),
                        Scalar::Written(s) => CompactString::from(s),
                        Scalar::Other => {
                            out.map.remove(&key);
                            out.refused.insert(key.into());
                            continue;
                        }
                    };
                    out.refused.remove(key.as_str());
                    out.map.insert(key, value);
                }
                Ok(out)
            }
        }
        d.deserialize_map(V)
    }
}

/// Longest accepted `event_id`, in bytes.
pub const MAX_EVENT_ID: usize = 200;
/// Longest accepted `subject` (the assignment key), in bytes.
pub const MAX_SUBJECT: usize = 256;
/// Most attributes on one request or event.
pub const MAX_ATTRIBUTES: usize = 32;
/// Longest attribute key, in bytes.
pub const MAX_ATTRIBUTE_KEY: usize = 64;
/// Longest attribute value, in bytes.
pub const MAX_ATTRIBUTE_VALUE: usize = 256;

/// Checks a subject and attributes against the size caps (assign, OFREP and events share them).
pub fn check_identity<'a>(
    subject: Option<&str>,
    attributes: impl ExactSizeIterator<Item = (&'a str, &'a str)>,
) -> Result<(), String> {
    if subject.is_some_and(|s| s.len() > MAX_SUBJECT) {
        return Err(format!("`subject` is longer than {MAX_SUBJECT} bytes"));
    }
    if attributes.len() > MAX_ATTRIBUTES {
        return Err(format!(
            "{} attributes; at most {MAX_ATTRIBUTES} are accepted",
            attributes.len()
        ));
    }
    for (key, value) in attributes {
        if key.is_empty() || key.len() > MAX_ATTRIBUTE_KEY {
            return Err(format!(
                "attribute keys must be 1 to {MAX_ATTRIBUTE_KEY} bytes"
            ));
        }
        if value.len() > MAX_ATTRIBUTE_VALUE {
            return Err(format!(
                "attribute `{key}` is longer than {MAX_ATTRIBUTE_VALUE} bytes"
            ));
        }
    }
    Ok(())
}

/// Checks one JSON item's shape and ranges (not whether the workflow exists: the engine does),
/// parsing its text straight into the typed event.
pub fn parse_event(item: &str) -> Result<TaskEvent, String> {
    // The plain parse first; only an item that fails it is parsed again to name the field.
    let w: WireEvent = serde_json::from_str(item).map_err(|e| wire_error(item, &e))?;
    validate(w)
}

/// The typed event of a parsed item, once its fields are checked.
fn validate(w: WireEvent) -> Result<TaskEvent, String> {
    let event_id = w.event_id.ok_or("missing `event_id`")?;
    if event_id.is_empty() || event_id.len() > MAX_EVENT_ID {
        return Err(format!("`event_id` must be 1 to {MAX_EVENT_ID} bytes"));
    }
    let workflow = w.workflow.ok_or("missing `workflow`")?;
    let version = w.version.ok_or("missing `version`")?;
    if let Some(q) = w.quality {
        if !(0.0..=1.0).contains(&q) {
            return Err(format!("`quality` {q} is out of range 0..1"));
        }
    }
    for (name, value) in [("latency_ms", w.latency_ms), ("cost_usd", w.cost_usd)] {
        if let Some(v) = value {
            if !v.is_finite() || v < 0.0 {
                return Err(format!("`{name}` {v} must be a number ≥ 0"));
            }
        }
    }
    for (name, value) in &w.signals {
        if Signal::parse(name).is_none_or(|s| !matches!(s, Signal::Custom(_))) {
            return Err(format!(
                "custom signal `{name}` must be a snake_case name that is not a built-in signal"
            ));
        }
        if !value.is_finite() {
            return Err(format!("custom signal `{name}` must be a finite number"));
        }
    }
    let ts = match w.ts {
        None => None,
        Some(text) => Some(
            parse_rfc3339(&text).ok_or_else(|| format!("`ts` {text:?} is not an RFC 3339 time"))?,
        ),
    };
    if let Some(key) = w.attributes.refused.first() {
        return Err(format!(
            "attribute `{key}` must be a string, number or boolean"
        ));
    }
    let attributes = w.attributes.map;
    check_identity(w.subject.as_deref(), attributes.iter())?;
    if workflow.len() > MAX_ATTRIBUTE_KEY || version.len() > MAX_ATTRIBUTE_KEY {
        return Err(format!(
            "`workflow` and `version` are at most {MAX_ATTRIBUTE_KEY} bytes"
        ));
    }
    if w.signals.len() > MAX_ATTRIBUTES {
        return Err(format!(
            "{} custom signals; at most {MAX_ATTRIBUTES} are accepted",
            w.signals.len()
        ));
    }
    Ok(TaskEvent {
        event_id,
        workflow,
        version,
        subject: w.subject,
        attributes,
        mode: w.mode.unwrap_or_default(),
        ts,
        quality: w.quality,
        latency_ms: w.latency_ms,
        cost_usd: w.cost_usd,
        fallback: w.fallback,
        review: w.review,
        signals: w.signals,
    })
}

/// What is wrong with an item that does not parse as an event, naming the field at fault
/// (`attributes.tier`: …) by parsing it again with the path tracked.
fn wire_error(item: &str, plain: &serde_json::Error) -> String {
    let mut de = serde_json::Deserializer::from_str(item);
    let tracked = serde_path_to_error::deserialize::<_, WireEvent>(&mut de)
        .err()
        .map(|e| {
            let path = e.path().to_string();
            if path == "." {
                e.inner().to_string()
            } else {
                format!("`{path}`: {}", e.inner())
            }
        });
    tracked.unwrap_or_else(|| plain.to_string())
}

/// One item of a batch: the typed event with its text as sent (borrowed from the body), or
/// what is wrong with it.
pub type ParsedItem<'a> = Result<(TaskEvent, &'a str), String>;

/// Parses a request body into its items: a JSON array, or NDJSON (one value per line). Each item
/// is parsed once, from the body straight into the typed event, noting where its text ends (no
/// JSON tree, no separate pass to split the batch). An item that is JSON but not a valid event
/// is rejected alone; so is a line that is not JSON, while the other lines still parse. An array
/// that is not JSON rejects the body.
pub fn parse_batch(body: &[u8]) -> Result<Vec<ParsedItem<'_>>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "body is not UTF-8".to_string())?;
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        return parse_array(trimmed).ok_or_else(|| {
            let e = serde_json::from_str::<Vec<&RawValue>>(trimmed)
                .err()
                .map_or_else(|| "malformed".to_string(), |e| e.to_string());
            format!("body is not a JSON array: {e}")
        });
    }
    Ok(text
        .lines()
        .map(|line| line.trim_matches(is_json_space))
        .filter(|line| !line.is_empty())
        .map(|line| match parse_event(line) {
            Ok(event) => Ok((event, line)),
            Err(error) => match serde_json::from_str::<&RawValue>(line) {
                Err(e) => Err(format!("line is not JSON: {e}")),
                Ok(_) => Err(error),
            },
        })
        .collect())
}

/// The JSON length of a typical event, which sizes a batch's vector of items up front.
const EXPECTED_ITEM_BYTES: usize = 128;

fn is_json_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// The items of a JSON array (`text` starts with `[`), each parsed where it lies; `None` if the
/// array is not JSON.
fn parse_array(text: &str) -> Option<Vec<ParsedItem<'_>>> {
    let skip_space = |at: usize| text.len() - text[at..].trim_start_matches(is_json_space).len();
    // Room for the items a body this long usually holds (an event is rarely under 128 bytes of
    // JSON), so a batch is not moved item by item each time the vector doubles.
    let mut items = Vec::with_capacity((text.len() / EXPECTED_ITEM_BYTES + 1).min(4096));
    let mut at = skip_space(1);
    if text[at..].starts_with(']') {
        return text[at + 1..]
            .trim_matches(is_json_space)
            .is_empty()
            .then_some(items);
    }
    loop {
        let rest = &text[at..];
        let mut typed = serde_json::Deserializer::from_str(rest).into_iter::<WireEvent>();
        let (item, len) = match typed.next() {
            Some(Ok(wire)) => {
                let len = typed.byte_offset();
                (validate(wire).map(|event| (event, &rest[..len])), len)
            }
            // Not an event: where the value ends, if it is JSON at all, and what is wrong.
            Some(Err(plain)) => {
                let mut raw = serde_json::Deserializer::from_str(rest).into_iter::<&RawValue>();
                let Some(Ok(_)) = raw.next() else {
                    return None;
                };
                let len = raw.byte_offset();
                (Err(wire_error(&rest[..len], &plain)), len)
            }
            None => return None,
        };
        items.push(item);
        at = skip_space(at + len);
        match text.as_bytes().get(at) {
            Some(b',') => at = skip_space(at + 1),
            Some(b']') => {
                return text[at + 1..]
                    .trim_matches(is_json_space)
                    .is_empty()
                    .then_some(items);
            }
            _ => return None,
        }
    }
}

/// An attribute's value as a request writes it: a string (borrowed from the body when it has
/// no escapes), a number or boolean written as text, or something else (an object, an array,
/// null), which events refuse and OFREP ignores.
pub enum Scalar<'a> {
    Text(Cow<'a, str>),
    /// A number or boolean, as JSON writes it (OFREP never takes it for a targeting key).
    Written(String),
    Other,
}

impl<'de: 'a, 'a> Deserialize<'de> for Scalar<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Scalar<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Scalar::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Scalar::Text(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Scalar::Text(Cow::Owned(v)))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Scalar::Written(v.to_string()))
            }
            // Numbers as serde_json writes them, as before.
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Scalar::Written(serde_json::Number::from(v).to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Scalar::Written(serde_json::Number::from(v).to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
                Ok(serde_json::Number::from_f64(v)
                    .map_or(Scalar::Other, |n| Scalar::Written(n.to_string())))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Other)
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
            fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Self::Value, S::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_either_side_of_the_inline_capacity_parse_and_round_trip() {
        // 24 bytes fit inside a `CompactString`; 25 and an escaped 40 go to the heap.
        for name in [
            "x".repeat(24),
            "y".repeat(25),
            format!("é\\\"{}", "z".repeat(36)),
        ] {
            let text = json!({
                "event_id": name, "workflow": name, "version": name, "subject": name,
                "attributes": {name.as_str(): name}
            })
            .to_string();
            let e = parse_event(&text).expect("valid");
            for field in [&e.event_id, &e.workflow, &e.version] {
                assert_eq!(field.as_str(), name);
            }
            assert_eq!(e.subject.as_deref(), Some(name.as_str()));
            assert_eq!(e.attribute(&name), Some(name.as_str()));
            let again: TaskEvent =
                serde_json::from_str(&serde_json::to_string(&e).expect("json")).expect("back");
            assert_eq!(again, e);
        }
    }

    #[test]
    fn minimal_event_parses() {
        let e =
            parse_event(&json!({"event_id": "a", "workflow": "w", "version": "v1"}).to_string())
                .expect("valid");
        assert_eq!(e.mode, Mode::Full);
        assert_eq!(e.observation(&Signal::Quality), None);
    }

    #[test]
    fn each_bad_field_is_named() {
        for (item, needle) in [
            (json!({"workflow": "w", "version": "v"}), "event_id"),
            (
                json!({"event_id": "a", "workflow": "w", "version": "v", "quality": 1.5}),
                "quality",
            ),
            (
                json!({"event_id": "a", "workflow": "w", "version": "v", "latency_ms": -1}),
                "latency_ms",
            ),
            (
                json!({"event_id": "a", "workflow": "w", "version": "v", "review": "maybe"}),
                "review",
            ),
            (
                json!({"event_id": "a", "workflow": "w", "version": "v", "ts": "yesterday"}),
                "ts",
            ),
            (
                json!({"event_id": "a", "workflow": "w", "version": "v", "nope": 1}),
                "nope",
            ),
            (
                json!({"event_id": "a", "workflow": "w", "version": "v", "quality": "high"}),
                "invalid type",
            ),
        ] {
            let err = parse_event(&item.to_string()).unwrap_err();
            assert!(err.contains(needle), "{err} should mention {needle}");
        }
    }

    #[test]
    fn attributes_keep_the_last_value_and_refuse_what_is_not_a_scalar() {
        let parse = |attributes: &str| {
            parse_event(&format!(
                r#"{{"event_id":"a","workflow":"w","version":"v","attributes":{attributes}}}"#
            ))
        };
        let e = parse(r#"{"tier":"a","tier":"b","n":3,"on":true}"#).expect("valid");
        assert_eq!(e.attribute("tier"), Some("b"));
        assert_eq!(e.attribute("n"), Some("3"));
        assert_eq!(e.attribute("on"), Some("true"));
        // A refused value that a later one replaces is no longer refused, and the reverse.
        assert_eq!(
            parse(r#"{"x":{},"x":"ok"}"#).expect("valid").attribute("x"),
            Some("ok")
        );
        let err = parse(r#"{"x":"ok","x":[1]}"#).unwrap_err();
        assert!(err.contains("attribute `x`"), "{err}");
        // Of several refused keys, the first in key order is named.
        let err = parse(r#"{"b":[],"a":null}"#).unwrap_err();
        assert!(err.contains("attribute `a`"), "{err}");
    }

    #[test]
    fn attributes_are_a_map_in_key_order_on_the_wire_and_in_memory() {
        let mut a: EventAttributes = [("tier", "x"), ("region", "eu"), ("tier", "pro")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(a.len(), 2);
        assert_eq!(a.get("tier"), Some("pro"));
        assert_eq!(a.get("team"), None);
        a.insert("app".into(), "1".into());
        assert_eq!(
            a.iter().collect::<Vec<_>>(),
            [("app", "1"), ("region", "eu"), ("tier", "pro")]
        );
        let json = serde_json::to_string(&a).expect("json");
        assert_eq!(json, r#"{"app":"1","region":"eu","tier":"pro"}"#);
        assert_eq!(
            serde_json::from_str::<EventAttributes>(&json).expect("back"),
            a
        );
        let repeated: EventAttributes =
            serde_json::from_str(r#"{"k":"1","a":"2","k":"3"}"#).expect("map");
        assert_eq!(
            repeated.iter().collect::<Vec<_>>(),
            [("a", "2"), ("k", "3")]
        );
        a.remove("region");
        a.remove("nothing");
        assert_eq!(
            a.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            ["app", "tier"]
        );
    }

    #[test]
    fn an_array_is_refused_whole_exactly_when_it_is_not_json() {
        let e = r#"{"event_id":"a","workflow":"w","version":"v"}"#;
        for (body, items) in [
            ("[]".to_string(), Some(0)),
            (" [ \n] \r\n".to_string(), Some(0)),
            (format!("[{e}]"), Some(1)),
            (format!("[ {e} ,\n{e}\t]"), Some(2)),
            (format!("[{e},1,\"x\",null,[],{{}}]"), Some(6)),
            (format!("[{e}x{e}]"), None),
            (format!("[{e} {e}]"), None),
            (format!("[{e}1]"), None),
            (format!("[{e},]"), None),
            (format!("[,{e}]"), None),
            (format!("[{e}]x"), None),
            (format!("[{e}],"), None),
            (format!("[{e}"), None),
            (format!("[{e},"), None),
            ("[".to_string(), None),
            ("[1 2]".to_string(), None),
        ] {
            let got = parse_batch(body.as_bytes());
            match items {
                Some(n) => assert_eq!(got.map(|i| i.len()), Ok(n), "{body}"),
                None => assert!(
                    got.as_ref()
                        .is_err_and(|e| e.starts_with("body is not a JSON array: ")),
                    "{body}: {got:?}"
                ),
            }
        }
        // Items that are JSON but not events are rejected alone, naming what is wrong.
        let body = format!("[{e},1,{{\"event_id\":7}}]");
        let items = parse_batch(body.as_bytes()).expect("array");
        assert!(matches!(&items[0], Ok((_, text)) if *text == e));
        assert!(
            matches!(&items[1], Err(m) if m.contains("invalid type")),
            "{items:?}"
        );
        assert!(
            matches!(&items[2], Err(m) if m.contains("event_id")),
            "{items:?}"
        );
    }

    #[test]
    fn ndjson_keeps_good_lines() {
        let good = r#"{"event_id":"a","workflow":"w","version":"v"}"#;
        let body = format!("{good}\nnot json\n\n  {good}\r\n{{\"b\":2}}\n");
        let items = parse_batch(body.as_bytes()).expect("lines");
        assert_eq!(items.len(), 4);
        assert!(matches!(&items[0], Ok((_, text)) if *text == good));
        assert!(matches!(&items[1], Err(e) if e.starts_with("line is not JSON")));
        assert!(
            matches!(&items[2], Ok((_, text)) if *text == good),
            "{:?}",
            items[2]
        );
        assert!(
            matches!(&items[3], Err(e) if e.contains("`b`")),
            "{:?}",
            items[3]
        );
    }
}
