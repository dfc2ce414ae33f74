//! Property tests over hostile input, a bounded number of cases each: the config parser, the
//! event parser and the gate statistics never panic, and a statistic that cannot be computed is
//! never a `pass` nor a silent `inconclusive`.
#![allow(clippy::panic, reason = "tests: panics report failures")]

use std::path::Path;

use proptest::prelude::*;
use serde_json::Value;

use stagegate::core::event::{parse_batch, parse_event};
use stagegate::core::evidence::{Accum, Moments};
use stagegate::core::gate::{GateInput, Verdict, evaluate};
use stagegate::plan::Action;
use stagegate::plan::Plan;
use stagegate::plan::{Check, GateSpec, Signal, Stat};

const SHIPPED: &str = include_str!("../config/stagegate.yaml");

fn config_cases() -> u32 {
    256
}

/// Arbitrary JSON, a few levels deep, with extreme numbers.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        prop_oneof![
            any::<f64>(),
            Just(f64::MAX),
            Just(f64::MIN_POSITIVE),
            Just(1e308),
            Just(-1e308)
        ]
        .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "[a-z_]{0,12}".prop_map(Value::String),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 32, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("event_id".to_string()),
                    Just("workflow".to_string()),
                    Just("version".to_string()),
                    Just("attributes".to_string()),
                    Just("signals".to_string()),
                    Just("quality".to_string()),
                    Just("cost_usd".to_string()),
                    Just("latency_ms".to_string()),
                    Just("ts".to_string()),
                    "[a-z]{1,8}"
                ],
                inner,
                0..8
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(config_cases()))]

    /// Random edits of the shipped config: deletions, insertions, truncations.
    #[test]
    fn the_config_parser_never_panics_on_edits(
        cut in 0usize..SHIPPED.len(),
        len in 0usize..200,
        insert in ".{0,30}",
        truncate in any::<bool>(),
    ) {
        let mut text: String = SHIPPED.chars().take(cut).collect();
        if !truncate {
            text.push_str(&insert);
            text.extend(SHIPPED.chars().skip(cut + len));
        }
        let _ = Plan::parse(Path::new("fuzz.yaml"), &text);
    }

    #[test]
    fn the_config_parser_never_panics_on_noise(text in "(?s).{0,400}") {
        let _ = Plan::parse(Path::new("fuzz.yaml"), &text);
    }

    #[test]
    fn the_event_parser_never_panics(item in json()) {
        let _ = parse_event(&item.to_string());
    }

    #[test]
    fn batch_parsing_never_panics(body in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse_batch(&body);
    }

    /// A JSON array parsed in one pass gives what splitting it into items first and then
    /// parsing each gives: the same events with the same texts, the same errors, and the body
    /// refused exactly when it is not a JSON array — whatever the spacing, items and damage.
    #[test]
    fn an_array_parses_in_one_pass_as_split_then_parsed(
        items in prop::collection::vec(
            prop_oneof![
                3 => (0u32..1000, any::<bool>()).prop_map(|(i, q)| serde_json::json!({
                    "event_id": format!("e{i}"), "workflow": "w", "version": "v",
                    "attributes": {"tier": "a\"b"}, "quality": if q { 0.5 } else { 1.5 },
                })),
                1 => json(),
            ],
            0..6,
        ),
        spaces in prop::collection::vec(prop::sample::select(vec!["", " ", "\n", "\t ", "\r\n"]), 8),
        damage in prop::option::of((
            any::<prop::sample::Index>(),
            any::<bool>(),
            any::<bool>(),
            prop::sample::select(vec!["", ",", "]", "}", "x", "\"", "[", ",]", "1"]),
        )),
    ) {
        let mut body = format!("{}[", spaces[0]);
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                body.push_str(spaces[i % 8]);
                body.push(',');
            }
            body.push_str(spaces[(i + 3) % 8]);
            body.push_str(&item.to_string());
        }
        body.push_str(spaces[5]);
        body.push(']');
        body.push_str(spaces[7]);
        if let Some((at, at_end, replace, with)) = damage {
            // Anywhere, or in the last few bytes (the tail after `]` is where a walker stops).
            let mut cut = if at_end {
                body.len() - at.index(body.len().min(4))
            } else {
                at.index(body.len() + 1)
            };
            while !body.is_char_boundary(cut) {
                cut -= 1;
            }
            if replace && cut < body.len() {
                body.remove(cut);
            }
            body.insert_str(cut, with);
        }
        if !body.trim_start().starts_with('[') {
            return Ok(()); // damage at the front made NDJSON of it: not what this compares
        }
        let reference: Result<Vec<Result<_, String>>, String> =
            serde_json::from_str::<Vec<&serde_json::value::RawValue>>(body.trim_start())
                .map_err(|e| format!("body is not a JSON array: {e}"))
                .map(|raw| {
                    raw.iter()
                        .map(|r| parse_event(r.get()).map(|e| (e, r.get())))
                        .collect()
                });
        let got = parse_batch(body.as_bytes());
        prop_assert_eq!(got, reference, "{}", body);
    }

    /// Any finite values, however extreme, through every check kind of a mean and a quantile
    /// gate: no panic, no NaN in a report, and a statistic that cannot be computed fails.
    #[test]
    fn extreme_values_never_disable_a_gate(
        candidate in prop::collection::vec(
            prop_oneof![
                4 => 0.0f64..10.0,
                1 => prop::num::f64::NORMAL,
                1 => Just(f64::MAX),
                1 => Just(-f64::MAX),
            ],
            100..260,
        ),
        baseline in prop::collection::vec(0.0f64..10.0, 100..200),
    ) {
        let fill = |values: &[f64], hist: bool| {
            let mut m = if hist { Moments::with_histogram() } else { Moments::default() };
            for &x in values {
                m.push(x);
            }
            Accum::Numeric(m)
        };
        for stat in [Stat::Mean, Stat::Quantile(0.95)] {
            let hist = matches!(stat, Stat::Quantile(_));
            let (c, b) = (fill(&candidate, hist), fill(&baseline, hist));
            let gate = GateSpec {
                name: "cost_usd_x".into(),
                signal: Signal::CostUsd,
                stat,
                checks: vec![
                    Check::Max(1.0),
                    Check::Min(0.5),
                    Check::MaxRatio(1.5),
                    Check::MaxIncrease(0.2),
                    Check::MaxDrop(0.2),
                ],
                on_breach: Action::Rollback,
                observe: false,
                fallback: None,
                scope: stagegate::plan::Scope::Segment,
            };
            let input = GateInput { candidate: &c, baseline: Some(&b), alpha: 0.01, design_samples: 200.0 };
            let v = evaluate(&gate, "all", &input);
            for report in &v.checks {
                for bound in [report.margin_lower, report.margin_upper, report.limit].into_iter().flatten() {
                    prop_assert!(!bound.is_nan(), "{report:?}");
                }
            }
            if !c.is_finite() {
                prop_assert_eq!(v.verdict, Verdict::Fail, "{:?}", v);
            }
            if v.verdict == Verdict::Pass {
                prop_assert!(c.is_finite() && b.is_finite());
            }
        }
    }
}
