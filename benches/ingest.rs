//! Durable ingestion throughput: batches of 500 events through the real ingest path
//! (`Shared::ingest`: validation, routing, group commit, evidence) from 8 concurrent clients,
//! on the shipped config (one rollout) and on the 1 000-rollout fleet of `scripts/bench`
//! (events spread over every rollout, segment and arm), with fsync-on-commit on and off; and the
//! shipped config again with random ids (as UUIDv4s are: each lands in its own dedupe page). The
//! bare baseline, measured in the same run, is parsing the same bodies into typed events.
//! Run with `cargo bench --bench ingest`.
#![allow(
    clippy::disallowed_methods,
    reason = "a benchmark times itself with the wall clock"
)]

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use stagegate::core::clock::SystemClock;
use stagegate::core::event::{parse_event, split_batch};
use stagegate::plan::Plan;
use stagegate::serve::controller::Shared;
use stagegate::store::EmbeddedStore;

/// The same fleet as the A/B benchmark (`scripts/bench`).
#[path = "../bench/src/fleet.rs"]
#[allow(dead_code, reason = "the HTTP driver's helpers are not used here")]
mod fleet;

const BATCH: usize = 500;
const BATCHES_PER_CLIENT: usize = 100;
const CLIENTS: usize = 8;
const FLEET: usize = 1000;

/// Which config the events go to, and how their ids look.
#[derive(Clone, Copy)]
enum Shape {
    Shipped,
    /// The shipped config with random 128-bit hex ids (as UUIDv4s are), not ordered ones.
    ShippedRandomIds,
    Fleet,
}

/// SplitMix64: a well-spread 64-bit value for `x`.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn plan(shape: Shape, dir: &Path) -> Plan {
    let mut plan = match shape {
        Shape::Shipped | Shape::ShippedRandomIds => {
            Plan::load(Path::new("config/stagegate.yaml")).expect("shipped config")
        }
        Shape::Fleet => Plan::parse(Path::new("fleet.yaml"), &fleet::config(FLEET, "tick: 1h"))
            .expect("generated config"),
    };
    plan.server.data_dir = dir.to_path_buf();
    plan
}

fn body(shape: Shape, tag: &str, client: usize, batch: usize) -> Vec<u8> {
    let items: Vec<String> = (0..BATCH)
        .map(|i| {
            let k = (client * BATCHES_PER_CLIENT + batch) * BATCH + i;
            let id = match shape {
                Shape::ShippedRandomIds => {
                    let seed = splitmix(tag.as_bytes()[0].into()) ^ k as u64;
                    format!("{:016x}{:016x}", splitmix(seed), splitmix(!seed))
                }
                _ => format!("{tag}-{client}-{batch}-{i}"),
            };
            match shape {
                Shape::Shipped | Shape::ShippedRandomIds => format!(
                    r#"{{"event_id":"{id}","workflow":"support-reply","version":"v8","attributes":{{"team":"support-ops"}},"quality":0.9,"latency_ms":1200,"cost_usd":0.01,"fallback":false,"review":"approved"}}"#
                ),
                Shape::Fleet => {
                    let version = if k % 2 == 0 { "a" } else { "b" };
                    fleet::event(&id, (k / 2) % FLEET, (k / 7) % 3, version, k as u64)
                }
            }
        })
        .collect();
    format!("[{}]", items.join(",")).into_bytes()
}

fn bodies(shape: Shape, tag: &str) -> Vec<Vec<Vec<u8>>> {
    (0..CLIENTS)
        .map(|c| {
            (0..BATCHES_PER_CLIENT)
                .map(|b| body(shape, tag, c, b))
                .collect()
        })
        .collect()
}

/// Events per second through `Shared::ingest`.
fn run(shape: Shape, durable: bool) -> f64 {
    let dir = tempfile::tempdir().expect("tmp");
    let mut store = EmbeddedStore::open(dir.path()).expect("store");
    store.set_durable(durable);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (shared, _inputs) = Shared::start_with(
            plan(shape, dir.path()),
            "bench.yaml".into(),
            Arc::new(SystemClock),
            Arc::new(store),
            false,
        )
        .expect("start");
        let bodies = bodies(shape, if durable { "d" } else { "n" });
        let t = Instant::now();
        let mut tasks = Vec::new();
        for batches in bodies {
            let shared = Arc::clone(&shared);
            tasks.push(tokio::spawn(async move {
                for b in batches {
                    let out = shared.ingest(&b).await.expect("ingest");
                    assert_eq!(out.accepted as usize, BATCH);
                }
            }));
        }
        for t in tasks {
            t.await.expect("client");
        }
        (CLIENTS * BATCHES_PER_CLIENT * BATCH) as f64 / t.elapsed().as_secs_f64()
    })
}

/// Events per second parsed into typed events (one thread per client, as the server's workers).
fn parse_only(shape: Shape) -> f64 {
    let bodies = bodies(shape, "p");
    let t = Instant::now();
    std::thread::scope(|s| {
        for batches in &bodies {
            s.spawn(move || {
                for b in batches {
                    let items = split_batch(b).expect("batch");
                    let n = items
                        .into_iter()
                        .filter_map(|i| i.and_then(parse_event).ok())
                        .count();
                    assert_eq!(n, BATCH);
                }
            });
        }
    });
    (CLIENTS * BATCHES_PER_CLIENT * BATCH) as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    println!(
        "ingest, batches of {BATCH}, {CLIENTS} concurrent clients, {} events per run",
        CLIENTS * BATCHES_PER_CLIENT * BATCH
    );
    for (shape, name) in [
        (Shape::Shipped, "shipped config"),
        (Shape::ShippedRandomIds, "random ids    "),
        (Shape::Fleet, "1000 rollouts "),
    ] {
        let bare = parse_only(shape);
        let off = run(shape, false);
        let on = run(shape, true);
        println!(
            "{name}: parse only {bare:>9.0}/s | no fsync {off:>9.0}/s ({:.3}x) | fsync {on:>9.0}/s ({:.3}x of parse, {:.2}x of no fsync)",
            off / bare,
            on / bare,
            on / off
        );
    }
}
