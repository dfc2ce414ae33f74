//! Durable ingestion throughput: batches of 500 events through the real ingest path
//! (`Shared::ingest`: validation, routing, group commit, evidence), with fsync-on-commit on and
//! off, from 8 concurrent clients. Run with `cargo bench --bench ingest`.
#![allow(
    clippy::disallowed_methods,
    reason = "a benchmark times itself with the wall clock"
)]

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use stagegate::core::clock::SystemClock;
use stagegate::plan::Plan;
use stagegate::serve::controller::Shared;
use stagegate::store::EmbeddedStore;

const BATCH: usize = 500;
const BATCHES_PER_CLIENT: usize = 40;
const CLIENTS: usize = 8;

fn body(client: usize, batch: usize, durable: bool) -> Vec<u8> {
    let items: Vec<String> = (0..BATCH)
        .map(|i| {
            format!(
                r#"{{"event_id":"{durable}-{client}-{batch}-{i}","workflow":"support-reply","version":"v8","attributes":{{"team":"support-ops"}},"quality":0.9,"latency_ms":1200,"cost_usd":0.01,"fallback":false,"review":"approved"}}"#
            )
        })
        .collect();
    format!("[{}]", items.join(",")).into_bytes()
}

fn run(durable: bool) -> f64 {
    let dir = tempfile::tempdir().expect("tmp");
    let mut plan = Plan::load(Path::new("config/stagegate.yaml")).expect("shipped config");
    plan.server.data_dir = dir.path().to_path_buf();
    let mut store = EmbeddedStore::open(dir.path()).expect("store");
    store.set_durable(durable);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (shared, _inputs) = Shared::start_with(
            plan,
            "config/stagegate.yaml".into(),
            Arc::new(SystemClock),
            Arc::new(store),
            false,
        )
        .expect("start");
        let bodies: Vec<Vec<Vec<u8>>> = (0..CLIENTS)
            .map(|c| {
                (0..BATCHES_PER_CLIENT)
                    .map(|b| body(c, b, durable))
                    .collect()
            })
            .collect();
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

fn main() {
    let off = run(false);
    let on = run(true);
    println!(
        "ingest, batches of {BATCH}, {CLIENTS} concurrent clients, {} events per run",
        CLIENTS * BATCHES_PER_CLIENT * BATCH
    );
    println!("durability off (no fsync) : {off:>10.0} events/s");
    println!(
        "durability on  (fsync)    : {on:>10.0} events/s  ({:.2}x of off)",
        on / off
    );
}
