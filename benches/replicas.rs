//! Replicas on PostgreSQL against one embedded replica, through the real binary over HTTP:
//! events/s in batches of 500 from 8 clients spread over 3 replicas sharing one PostgreSQL
//! (fsync on) vs all into one replica on the embedded store; and assign requests/s summed over
//! the 3 replicas vs one. Starts its own PostgreSQL (Debian's package). Run with
//! `cargo bench --bench replicas`.
#![allow(
    clippy::disallowed_methods,
    clippy::panic,
    reason = "a benchmark times itself with the wall clock and stops on a broken setup"
)]

#[path = "../tests/support/pg.rs"]
#[allow(
    dead_code,
    reason = "shared with the tests; the benchmark uses part of it"
)]
mod pg;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const BATCH: usize = 500;
const BATCHES_PER_CLIENT: usize = 40;
const CLIENTS: usize = 8;
const ASSIGN_SECONDS: u64 = 3;
const TOKEN: &str = "bench-secret";

fn config(dir: &std::path::Path, postgres: bool) -> std::path::PathBuf {
    let shipped = std::fs::read_to_string("config/stagegate.yaml").expect("shipped config");
    let store = if postgres {
        ", store: { kind: postgres, url_env: STAGEGATE_DATABASE_URL }"
    } else {
        ""
    };
    let text = format!(
        "server: {{ listen: 127.0.0.1:0, data_dir: \"{}\", tick: 1s{store} }}\nauth: {{ tokens: [{{ name: bench, role: admin, token_env: BENCH_TOKEN }}] }}\n{}",
        dir.join("data").display(),
        shipped
            .split_once("\nnotifiers:")
            .map(|(_, rest)| format!("notifiers:{rest}"))
            .expect("the shipped config has notifiers")
    );
    let path = dir.join("stagegate.yaml");
    std::fs::write(&path, text).expect("write config");
    path
}

struct Replica {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(url: Option<&str>, name: &str) -> Replica {
    let dir = tempfile::tempdir().expect("tmp");
    let path = config(dir.path(), url.is_some());
    let mut command = Command::new(env!("CARGO_BIN_EXE_stagegate"));
    command
        .args(["serve", "--config"])
        .arg(&path)
        .env("BENCH_TOKEN", TOKEN)
        .env("STAGEGATE_REPLICA", name)
        .env("STAGEGATE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(url) = url {
        command.env("STAGEGATE_DATABASE_URL", url);
    }
    let mut child = command.spawn().expect("spawn stagegate");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("listening line");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    Replica {
        child,
        base: format!("http://{addr}"),
        _dir: dir,
    }
}

fn body(run: &str, client: usize, batch: usize) -> String {
    let items: Vec<String> = (0..BATCH)
        .map(|i| {
            format!(
                r#"{{"event_id":"{run}-{client}-{batch}-{i}","workflow":"support-reply","version":"v8","attributes":{{"team":"support-ops"}},"quality":0.9,"latency_ms":1200,"cost_usd":0.01,"fallback":false,"review":"approved"}}"#
            )
        })
        .collect();
    format!("[{}]", items.join(","))
}

/// Events/s from [`CLIENTS`] clients, client `c` posting to replica `c % n`.
fn ingest(replicas: &[Replica], run: &str) -> f64 {
    let bodies: Vec<Vec<String>> = (0..CLIENTS)
        .map(|c| (0..BATCHES_PER_CLIENT).map(|b| body(run, c, b)).collect())
        .collect();
    let t = Instant::now();
    std::thread::scope(|s| {
        for (c, batches) in bodies.into_iter().enumerate() {
            let base = replicas[c % replicas.len()].base.clone();
            s.spawn(move || {
                let client = reqwest::blocking::Client::new();
                for b in batches {
                    let r = client
                        .post(format!("{base}/v1/events"))
                        .bearer_auth(TOKEN)
                        .header("content-type", "application/json")
                        .body(b)
                        .send()
                        .expect("post");
                    assert_eq!(r.status().as_u16(), 200);
                }
            });
        }
    });
    (CLIENTS * BATCHES_PER_CLIENT * BATCH) as f64 / t.elapsed().as_secs_f64()
}

/// Assign requests/s from [`CLIENTS`] clients spread over the replicas, summed.
fn assign(replicas: &[Replica]) -> f64 {
    let done = AtomicU64::new(0);
    let until = Instant::now() + Duration::from_secs(ASSIGN_SECONDS);
    std::thread::scope(|s| {
        for c in 0..CLIENTS {
            let base = replicas[c % replicas.len()].base.clone();
            let done = &done;
            s.spawn(move || {
                let client = reqwest::blocking::Client::new();
                let mut i = 0u64;
                while Instant::now() < until {
                    let r = client
                        .post(format!("{base}/v1/assign"))
                        .bearer_auth(TOKEN)
                        .header("content-type", "application/json")
                        .body(format!(
                            r#"{{"workflow":"support-reply","subject":"s-{c}-{i}","attributes":{{"tier":"smb"}}}}"#
                        ))
                        .send()
                        .expect("assign");
                    assert_eq!(r.status().as_u16(), 200);
                    i += 1;
                }
                done.fetch_add(i, Ordering::Relaxed);
            });
        }
    });
    done.load(Ordering::Relaxed) as f64 / ASSIGN_SECONDS as f64
}

fn main() {
    let embedded = [start(None, "embedded")];
    let one_ingest = ingest(&embedded, "e");
    let one_assign = assign(&embedded);
    drop(embedded);

    let server = pg::PgServer::start_durable();
    let url = server.database();
    let replicas: Vec<Replica> = (1..=3)
        .map(|i| start(Some(&url), &format!("r{i}")))
        .collect();
    let three_ingest = ingest(&replicas, "p");
    let three_assign = assign(&replicas);
    let events: i64 = pg::connect(&url)
        .query_one("SELECT count(*) FROM stagegate_dedupe", &[])
        .expect("count")
        .get(0);
    assert_eq!(events as usize, CLIENTS * BATCHES_PER_CLIENT * BATCH);

    println!(
        "ingest, batches of {BATCH}, {CLIENTS} clients, {} events:",
        CLIENTS * BATCHES_PER_CLIENT * BATCH
    );
    println!("  baseline: 1 replica, embedded store     {one_ingest:>10.0} events/s");
    println!(
        "  3 replicas, one PostgreSQL (fsync on)   {three_ingest:>10.0} events/s  ({:.2}x)",
        three_ingest / one_ingest
    );
    println!("assign over HTTP, {CLIENTS} clients, {ASSIGN_SECONDS} s:");
    println!("  baseline: 1 replica                     {one_assign:>10.0} req/s");
    println!(
        "  3 replicas, summed                      {three_assign:>10.0} req/s  ({:.2}x)",
        three_assign / one_assign
    );
}
