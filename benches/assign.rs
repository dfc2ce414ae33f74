//! Assignment path benchmark: `Routing::assign` against the bare bucket hash of the same subject
//! (`assign::bucket`, the irreducible work), measured in the same run. Run with `cargo bench --bench assign`.
#![allow(
    clippy::disallowed_methods,
    reason = "a benchmark times itself with the wall clock"
)]

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use stagegate::core::engine::Engine;
use stagegate::plan::Plan;

fn main() {
    let plan = Plan::load(Path::new("config/stagegate.yaml")).expect("shipped config");
    let engine = Engine::new(
        std::sync::Arc::new(plan),
        Default::default(),
        Default::default(),
        0,
    );
    let routing = engine.routing();
    let subjects: Vec<String> = (0..100_000).map(|i| format!("ticket-{i}")).collect();
    let attrs = [("tier", "smb")];
    let lookup = |k: &str| attrs.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
    let rounds = 20;

    // Baseline: only the hash every assignment must compute.
    let t = Instant::now();
    for _ in 0..rounds {
        for s in &subjects {
            black_box(stagegate::core::assign::bucket("support-reply-v8", s));
        }
    }
    let bare = t.elapsed().as_nanos() as f64 / (rounds * subjects.len()) as f64;

    let t = Instant::now();
    for _ in 0..rounds {
        for s in &subjects {
            black_box(routing.assign("support-reply", Some(s), lookup));
        }
    }
    let full = t.elapsed().as_nanos() as f64 / (rounds * subjects.len()) as f64;
    println!("bare bucket hash        : {bare:8.1} ns/op");
    println!(
        "Routing::assign         : {full:8.1} ns/op  ({:.2}x the bare hash)",
        full / bare
    );
}
