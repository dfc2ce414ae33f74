//! Durable ingestion throughput: batches of 500 events through the real ingest path
//! (`Shared::ingest`: validation, routing, group commit, evidence) from 8 concurrent clients,
//! on the shipped config (one rollout) and on the 1 000-rollout fleet of `scripts/bench`
//! (events spread over every rollout, segment and arm), with fsync-on-commit on and off; and the
//! shipped config again with random ids (as UUIDv4s are: each lands in its own dedupe page). The
//! bare baseline, measured in the same run, is parsing the same bodies into typed events.
//! Criterion times each (an iteration: 40 000 fresh events from 8 clients; throughput in
//! events), and the ratios to the baseline are printed from the medians of the same samples.
//! Run with `cargo bench --bench ingest`.
#![allow(
    clippy::disallowed_methods,
    reason = "a benchmark times itself with the wall clock"
)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};

use stagegate::core::clock::SystemClock;
use stagegate::core::event::parse_batch;
use stagegate::plan::Plan;
use stagegate::serve::controller::Shared;
use stagegate::store::EmbeddedStore;

/// The allocator the binary ships with (`src/main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The same fleet as the A/B benchmark (`scripts/bench`).
#[path = "../bench/src/fleet.rs"]
#[allow(dead_code, reason = "the HTTP driver's helpers are not used here")]
mod fleet;

const BATCH: usize = 500;
const BATCHES_PER_CLIENT: usize = 10;
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
                    let tag = tag.bytes().fold(0, |h, b| splitmix(h ^ u64::from(b)));
                    let seed = splitmix(tag) ^ k as u64;
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

/// Events per iteration: every client's batches.
const EVENTS: usize = CLIENTS * BATCHES_PER_CLIENT * BATCH;

/// A running ingest path on a store of its own: what each timed iteration goes through.
struct Server {
    rt: tokio::runtime::Runtime,
    shared: Arc<Shared>,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(shape: Shape, durable: bool) -> Server {
        let dir = tempfile::tempdir().expect("tmp");
        let mut store = EmbeddedStore::open(dir.path()).expect("store");
        store.set_durable(durable);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let shared = rt.block_on(async {
            Shared::start_with(
                plan(shape, dir.path()),
                "bench.yaml".into(),
                Arc::new(SystemClock),
                Arc::new(store),
                false,
            )
            .expect("start")
            .0
        });
        Server {
            rt,
            shared,
            _dir: dir,
        }
    }

    /// How long `bodies` take through `Shared::ingest`, every client at once.
    fn ingest(&self, bodies: Vec<Vec<Vec<u8>>>) -> Duration {
        self.rt.block_on(async {
            let t = Instant::now();
            let mut tasks = Vec::new();
            for batches in bodies {
                let shared = Arc::clone(&self.shared);
                tasks.push(tokio::spawn(async move {
                    for b in batches {
                        let out = shared.ingest(&b.into()).await.expect("ingest");
                        assert_eq!(out.accepted as usize, BATCH);
                    }
                }));
            }
            for t in tasks {
                t.await.expect("client");
            }
            t.elapsed()
        })
    }
}

/// How long parsing `bodies` into typed events takes (one thread per client, as the server's
/// workers).
fn parse_only(bodies: &[Vec<Vec<u8>>]) -> Duration {
    let t = Instant::now();
    std::thread::scope(|s| {
        for batches in bodies {
            s.spawn(move || {
                for b in batches {
                    let items = parse_batch(b).expect("batch");
                    let n = items.into_iter().filter(Result::is_ok).count();
                    assert_eq!(n, BATCH);
                }
            });
        }
    });
    t.elapsed()
}

/// The middle of `values` (0 when empty).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// `STAGEGATE_BENCH_PROFILE=W,R`: instead of timing, the fleet's path once — `W` iterations to
/// fill every arm's evidence, then `R` more — for a profiler, e.g. the recorder's cache misses:
/// `valgrind --tool=callgrind --cache-sim=yes --LL=16777216,16,64 --collect-atstart=no
/// --toggle-collect='stagegate::core::engine::Engine::defer_routed'
/// --toggle-collect='stagegate::core::engine::Engine::apply_deferred'` with `R` = 0 and 2, and
/// the difference divided by `2 × EVENTS`.
fn profile(spec: &str) {
    let mut parts = spec.split(',').map(|p| p.trim().parse::<usize>());
    let (Some(Ok(warm)), Some(Ok(rounds)), None) = (parts.next(), parts.next(), parts.next())
    else {
        eprintln!("STAGEGATE_BENCH_PROFILE is W,R (two counts), not {spec:?}");
        std::process::exit(2);
    };
    let server = Server::start(Shape::Fleet, false);
    for round in 0..warm + rounds {
        let took = server.ingest(bodies(Shape::Fleet, &format!("p{round}")));
        let phase = if round < warm { "warm" } else { "measured" };
        println!("{phase} {:.0} events/s", EVENTS as f64 / took.as_secs_f64());
    }
}

fn main() {
    if let Ok(spec) = std::env::var("STAGEGATE_BENCH_PROFILE") {
        profile(&spec);
        return;
    }
    let mut criterion = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut lines = Vec::new();
    let mut fresh = 0u64;
    for (shape, name) in [
        (Shape::Shipped, "shipped config"),
        (Shape::ShippedRandomIds, "random ids    "),
        (Shape::Fleet, "1000 rollouts "),
    ] {
        let mut group = criterion.benchmark_group(format!("ingest {}", name.trim()));
        group.throughput(Throughput::Elements(EVENTS as u64));
        // Events per second of each timed iteration, per function.
        let mut rates: [Vec<f64>; 3] = Default::default();
        let mut next_bodies = || {
            fresh += 1;
            bodies(shape, &format!("i{fresh}"))
        };
        group.bench_function("parse only (baseline)", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let took = parse_only(&next_bodies());
                    rates[0].push(EVENTS as f64 / took.as_secs_f64());
                    total += took;
                }
                total
            });
        });
        for (slot, durable, label) in [(1, false, "no fsync"), (2, true, "fsync")] {
            let server = Server::start(shape, durable);
            group.bench_function(label, |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let took = server.ingest(next_bodies());
                        rates[slot].push(EVENTS as f64 / took.as_secs_f64());
                        total += took;
                    }
                    total
                });
            });
        }
        group.finish();
        let [bare, off, on] = rates.map(median);
        lines.push(format!(
            "{name}: parse only {bare:>9.0}/s | no fsync {off:>9.0}/s ({:.3}x) | fsync {on:>9.0}/s ({:.3}x of parse, {:.2}x of no fsync)",
            off / bare,
            on / bare,
            on / off
        ));
    }
    println!();
    println!(
        "ingest, batches of {BATCH}, {CLIENTS} concurrent clients, {EVENTS} fresh events per iteration (medians of the samples criterion timed)"
    );
    for line in lines {
        println!("{line}");
    }
}
