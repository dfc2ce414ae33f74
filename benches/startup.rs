//! Start-up after a long life: stores holding N events (written through the real ingest path,
//! checkpointed as a running server does), then the real binary's time to `listening` and its
//! peak RSS, against an empty store measured in the same run. Start-up reads checkpoints plus
//! the tail of events after them, so both ratios should stay near 1 however large N is.
//!
//! `cargo bench --bench startup`; `STAGEGATE_BENCH_EVENTS=100000,1000000,10000000` sets the sizes.
#![allow(
    clippy::disallowed_methods,
    reason = "a benchmark times itself with the wall clock"
)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use stagegate::core::clock::SystemClock;
use stagegate::plan::Plan;
use stagegate::serve::controller::Shared;
use stagegate::store::EmbeddedStore;

const BATCH: usize = 1_000;
const CLIENTS: usize = 8;

fn config(dir: &Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string("config/stagegate.yaml")
        .expect("shipped config")
        .replace("listen: 127.0.0.1:8080", "listen: 127.0.0.1:0")
        .replace(
            "data_dir: ./data",
            &format!("data_dir: \"{}\"", dir.join("data").display()),
        );
    let path = dir.join("stagegate.yaml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// Fills the store in `dir` with `n` events (baseline and candidate, internal segment), then
/// writes the evidence checkpoints a running server would have written.
fn fill(dir: &Path, config: &Path, n: usize) {
    let plan = Plan::load(config).expect("config");
    let store = EmbeddedStore::open(&dir.join("data")).expect("store");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (shared, _inputs) = Shared::start_with(
            plan,
            config.to_path_buf(),
            Arc::new(SystemClock),
            Arc::new(store),
            false,
        )
        .expect("start");
        let batches = n.div_ceil(BATCH);
        let mut tasks = Vec::new();
        for c in 0..CLIENTS {
            let shared = Arc::clone(&shared);
            tasks.push(tokio::spawn(async move {
                for b in (c..batches).step_by(CLIENTS) {
                    let items: Vec<String> = (0..BATCH.min(n - b * BATCH))
                        .map(|i| {
                            let version = if i % 2 == 0 { "v7" } else { "v8" };
                            format!(
                                r#"{{"event_id":"e-{b}-{i}","workflow":"support-reply","version":"{version}","attributes":{{"team":"support-ops"}},"quality":0.9,"latency_ms":1200,"cost_usd":0.01,"fallback":false,"review":"approved"}}"#
                            )
                        })
                        .collect();
                    let body = format!("[{}]", items.join(","));
                    shared.ingest(&body.into_bytes().into()).await.expect("ingest");
                }
            }));
        }
        for t in tasks {
            t.await.expect("client");
        }
        let checkpoints = shared.engine().take_checkpoints();
        shared.store.put_checkpoints(&checkpoints, None).expect("checkpoint");
    });
}

/// Starts the binary on `config`; returns (ms to `listening`, peak RSS in MiB). It is then
/// stopped with SIGTERM, or SIGKILL when `crash` (so the next start is an unclean one).
fn start(config: &Path, crash: bool) -> (f64, f64) {
    let t = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_stagegate"))
        .args(["serve", "--config"])
        .arg(config)
        .env("STAGEGATE_ADMIN_TOKEN", "bench")
        .env("STAGEGATE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("read");
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    assert!(line.starts_with("listening"), "{line}");
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let hwm_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    if crash {
        let _ = child.kill();
    } else {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
    }
    let _ = child.wait();
    (ms, hwm_kb / 1024.0)
}

/// Median of three clean starts, and a start after kill -9.
fn measure(config: &Path) -> ((f64, f64), (f64, f64)) {
    let mut runs: Vec<(f64, f64)> = (0..3).map(|_| start(config, false)).collect();
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let _ = start(config, true);
    let after_crash = start(config, false);
    (runs[1], after_crash)
}

fn main() {
    let sizes: Vec<usize> = std::env::var("STAGEGATE_BENCH_EVENTS")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![100_000, 1_000_000]);
    let empty_dir = tempfile::tempdir().expect("tmp");
    let empty_config = config(empty_dir.path());
    let ((base_ms, base_mb), (base_crash_ms, _)) = measure(&empty_config);
    println!(
        "start-up: time to `listening` and peak RSS (median of 3 clean starts), and time after kill -9"
    );
    println!(
        "{:>12} {:>9} {:>7} {:>9} {:>7} {:>12} {:>7} {:>10}",
        "events", "ms", "ratio", "RSS MiB", "ratio", "after -9 ms", "ratio", "store MiB"
    );
    println!(
        "{:>12} {base_ms:>9.1} {:>7} {base_mb:>9.1} {:>7} {base_crash_ms:>12.1} {:>7} {:>10}",
        "0 (baseline)", "1.00x", "1.00x", "1.00x", "-"
    );
    for n in sizes {
        let dir = tempfile::tempdir().expect("tmp");
        let config = config(dir.path());
        let filled = Instant::now();
        fill(dir.path(), &config, n);
        let fill_s = filled.elapsed().as_secs_f64();
        let store_mb = std::fs::metadata(dir.path().join("data").join("stagegate.redb"))
            .map_or(0.0, |m| m.len() as f64 / 1024.0 / 1024.0);
        let ((ms, mb), (crash_ms, _)) = measure(&config);
        println!(
            "{n:>12} {ms:>9.1} {:>6.2}x {mb:>9.1} {:>6.2}x {crash_ms:>12.1} {:>6.2}x {store_mb:>10.1}   (filled in {fill_s:.1} s)",
            ms / base_ms,
            mb / base_mb,
            crash_ms / base_crash_ms
        );
    }
}
