//! `stagegate-bench`: stagegate against a bare axum server doing the same JSON work, on a fleet
//! of N rollouts, driven by wrk over interleaved rounds; prints every ratio with its spread.
//!
//! Run through `scripts/bench` (it builds release, installs wrk and raises the descriptor
//! limit). Servers are pinned to CPU 0 and wrk to CPU 1 when there are two or more.
//!
//! Usage: `stagegate-bench [--rollouts N] [--rounds N] [--seconds S] [--tick-only]
//! [--assign-only] [--memory EVENTS] [--instructions]`. `--assign-only` starts each server once,
//! warms both with an uncounted run, then measures closed-loop assignment in `--rounds` short
//! pairs, alternating which goes first: on a host whose speed drifts by the second, many short
//! pairs pin the ratio down better than a few long ones. `--memory` ingests that many events (batches of 500 from
//! 8 clients), then prints the resident memory, the store's size, and both again after a restart
//! on that store. `--instructions` runs each server under valgrind's callgrind and prints the
//! user-space instructions each spends per request of each load (for events, a fixed number of
//! batches, every one answered inside the count), and their ratio: a measure of
//! the work itself that a noisy host's speed does not move (kernel time, cache misses and waits
//! are not in it, so it complements the timed ratios rather than replacing them).

#![allow(
    clippy::disallowed_methods,
    reason = "a benchmark times itself with the wall clock"
)]

mod fleet;

use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const ADMIN_TOKEN: &str = "bench-admin";
const INGEST_TOKEN: &str = "bench-ingest";
/// Seconds a started stagegate runs before it is measured.
const WARM_UP_SECONDS: u64 = 3;
/// Restarts on the rounds' store whose first operator action is timed.
const RESTARTS: usize = 5;
/// Untimed operator actions before the timed ones: the first requests after a pause are slow
/// on this kind of host whatever the server (see [`after_idle`]).
const WARM_UP_ACTIONS: usize = 6;
/// How long a server sits idle before [`after_idle`] times one request.
const IDLE_SECONDS: u64 = 3;
/// Requests [`after_idle`] times, each after its own idle gap.
const IDLE_ROUNDS: usize = 3;

struct Options {
    rollouts: usize,
    rounds: usize,
    seconds: u64,
    /// Only the tick's effect on assignment latency (more rounds in the same time).
    tick_only: bool,
    /// Only assignment throughput and CPU per request: both servers up once, many short pairs.
    assign_only: bool,
    /// Only memory: ingest this many events, restart, and print RSS both times.
    memory: Option<u64>,
    /// Only instructions per request, under callgrind.
    instructions: bool,
}

fn options() -> Result<Options> {
    let mut o = Options {
        rollouts: 1000,
        rounds: 5,
        seconds: 8,
        tick_only: false,
        assign_only: false,
        memory: None,
        instructions: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--tick-only" {
            o.tick_only = true;
            continue;
        }
        if flag == "--assign-only" {
            o.assign_only = true;
            continue;
        }
        if flag == "--instructions" {
            o.instructions = true;
            continue;
        }
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--rollouts" => o.rollouts = value.parse()?,
            "--rounds" => o.rounds = value.parse()?,
            "--seconds" => o.seconds = value.parse()?,
            "--memory" => o.memory = Some(value.parse()?),
            _ => bail!("unknown option {flag}; see the file's header"),
        }
    }
    Ok(o)
}

/// A server process pinned to the server CPU; killed when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Server {
    fn start(program: &Path, args: &[&str], log: &Path) -> Result<Server> {
        let mut cmd = pinned(0, program);
        cmd.args(args)
            .env(fleet::ADMIN_TOKEN_ENV, ADMIN_TOKEN)
            .env(fleet::INGEST_TOKEN_ENV, INGEST_TOKEN)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log)?);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let stdout = child.stdout.take().context("server stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let Some(addr) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            bail!(
                "{} did not start: {}",
                program.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        };
        Ok(Server {
            addr: addr.to_string(),
            child,
        })
    }

    /// SIGTERM and a wait (stagegate checkpoints its evidence on the way out, so the next start
    /// restores it instead of replaying every event); SIGKILL after 20 s. Returns how long it
    /// took to exit, or `None` if it had to be killed.
    fn stop(&mut self) -> Option<Duration> {
        if let Ok(Some(_)) = self.child.try_wait() {
            return Some(Duration::ZERO);
        }
        let t = Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..2000 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return Some(t.elapsed());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU seconds the process has used (user + system).
    /// Waits until the server has used under 50 ms of CPU in a second, at most two minutes.
    fn wait_idle(&self) {
        let mut cpu = self.cpu_seconds();
        for _ in 0..120 {
            std::thread::sleep(Duration::from_secs(1));
            let now = self.cpu_seconds();
            if now - cpu < 0.05 {
                return;
            }
            cpu = now;
        }
    }

    fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace()
            .collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // Fields 14 and 15 of stat (utime, stime), counted after the command's `)`.
        (ticks(11) + ticks(12)) / 100.0
    }

    fn rss_mib(&self) -> f64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// `program` pinned to `cpu` with taskset when there are two CPUs or more.
fn pinned(cpu: usize, program: &Path) -> Command {
    if cpus() >= 2 && which("taskset") {
        let mut c = Command::new("taskset");
        c.arg("-c").arg(cpu.to_string()).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn which(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What one wrk run measured, and the server's CPU over it.
#[derive(Debug, Clone, Copy)]
struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    cpu_us_per_request: f64,
}

/// The Lua that makes each request; `{R}` is the fleet size. `delay_ms` paces each connection
/// (a fixed offered rate of connections × 1000 / delay per second), 0 for a closed loop.
fn script(kind: &str, rollouts: usize, delay_ms: u64) -> String {
    let request = match kind {
        "assign" => format!(
            r#"  local body = string.format('{{"workflow":"w%d","subject":"user-%d","attributes":{{"tier":"enterprise"}}}}', n % {rollouts}, n)
  return wrk.format(nil, "/v1/assign", nil, body)"#
        ),
        "ofrep" => format!(
            r#"  local body = string.format('{{"context":{{"targetingKey":"user-%d","tier":"enterprise"}}}}', n)
  return wrk.format(nil, string.format("/ofrep/v1/evaluate/flags/w%d", n % {rollouts}), nil, body)"#
        ),
        _ => format!(
            r#"  local parts = {{}}
  for i = 1, 500 do
    local k = n * 500 + i
    parts[i] = string.format('{{"event_id":"%s-%d","workflow":"w%d","version":"%s","subject":"s%d","attributes":{{"tier":"enterprise"}},"quality":0.9,"latency_ms":%d,"cost_usd":0.01,"fallback":false}}', prefix, k, k % {rollouts}, (k % 2 == 0) and "a" or "b", k, 900 + k % 60)
  end
  return wrk.format(nil, "/v1/events", nil, "[" .. table.concat(parts, ",") .. "]")"#
        ),
    };
    let delay = if delay_ms > 0 {
        format!("delay = function() return {delay_ms} end\n")
    } else {
        String::new()
    };
    format!(
        r#"local n = 0
local prefix = string.gsub(tostring({{}}), "table: ", "") .. tostring(os.time())
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {INGEST_TOKEN}"
request = function()
  n = n + 1
{request}
end
{delay}done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), e.connect + e.read + e.write + e.status + e.timeout))
end
"#
    )
}

fn wrk(
    server: &Server,
    dir: &Path,
    kind: &str,
    rollouts: usize,
    connections: usize,
    delay_ms: u64,
    seconds: u64,
) -> Result<Run> {
    let path = dir.join(format!("{kind}.lua"));
    std::fs::write(&path, script(kind, rollouts, delay_ms))?;
    let cpu_before = server.cpu_seconds();
    let out = pinned(1, Path::new("wrk"))
        .args(["-t2", &format!("-c{connections}"), &format!("-d{seconds}s")])
        .arg("--timeout")
        .arg("10s")
        .arg("-s")
        .arg(&path)
        .arg(format!("http://{}", server.addr))
        .output()
        .context("running wrk (scripts/bench installs it)")?;
    let cpu = server.cpu_seconds() - cpu_before;
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(line) = text.lines().find_map(|l| l.strip_prefix("RESULT ")) else {
        bail!(
            "wrk printed no result: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let f: Vec<f64> = line
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    let [requests, duration_us, p50, p99, errors] = f[..] else {
        bail!("unexpected wrk result line: {line}");
    };
    Ok(Run {
        rps: requests / (duration_us / 1e6),
        p50_ms: p50 / 1000.0,
        p99_ms: p99 / 1000.0,
        errors: errors as u64,
        cpu_us_per_request: cpu * 1e6 / requests.max(1.0),
    })
}

/// Median and spread of a ratio over rounds.
fn spread(values: &[f64]) -> String {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let median = v.get(v.len() / 2).copied().unwrap_or(f64::NAN);
    format!(
        "{median:.2} (range {:.2}–{:.2})",
        v.first().copied().unwrap_or(f64::NAN),
        v.last().copied().unwrap_or(f64::NAN)
    )
}

/// "median ms (max max)" of some timings.
fn median_max(ms: &[f64]) -> String {
    format!(
        "{:.1} ms (max {:.1})",
        median(ms.iter().copied()),
        ms.iter().copied().fold(0.0, f64::max)
    )
}

fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Replaces the store folder `to` with a copy of `from` (no server may have it open). Every
/// round starts from the preloaded store. A store that kept the rounds' events grew by about
/// five million events a round, and past a few GB the kernel's copy into the page cache
/// (`copy_folio_from_iter_atomic`) took 29 % of the server's samples, against 4.5 % in the
/// first seconds, most likely the page cache growing into memory this VM had not touched —
/// so later rounds measured the host, and a faster ingest, which grew the store sooner,
/// slowed sooner.
fn copy_store(from: &Path, to: &Path) -> Result<()> {
    if to.exists() {
        std::fs::remove_dir_all(to)?;
    }
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))
            .with_context(|| format!("copying {}", entry.path().display()))?;
    }
    Ok(())
}

/// Feeds every arm of every segment of every rollout `per_arm` healthy events.
fn preload(addr: &str, rollouts: usize, per_arm: u64) -> Result<u64> {
    let mut bodies = Vec::new();
    let mut batch = Vec::with_capacity(500);
    let mut n = 0u64;
    for r in 0..rollouts {
        for segment in 0..3 {
            for version in ["a", "b"] {
                for k in 0..per_arm {
                    n += 1;
                    batch.push(fleet::event(&format!("pre-{n}"), r, segment, version, k));
                    if batch.len() == 500 {
                        bodies.push(format!("[{}]", batch.join(",")));
                        batch.clear();
                    }
                }
            }
        }
    }
    if !batch.is_empty() {
        bodies.push(format!("[{}]", batch.join(",")));
    }
    post_events(addr, bodies, 4)?;
    Ok(n)
}

/// Posts `bodies` to `/v1/events` from `clients` threads at once, each body after the
/// previous one's answer; every one must be accepted.
fn post_events(addr: &str, bodies: Vec<String>, clients: usize) -> Result<()> {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    let chunks: Vec<Vec<String>> = bodies
        .chunks(bodies.len().div_ceil(clients).max(1))
        .map(<[String]>::to_vec)
        .collect();
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                let client = client.clone();
                s.spawn(move || -> Result<()> {
                    for body in chunk {
                        let response = client
                            .post(format!("http://{addr}/v1/events"))
                            .bearer_auth(INGEST_TOKEN)
                            .header("content-type", "application/json")
                            .body(body)
                            .send()?;
                        if !response.status().is_success() {
                            bail!("events refused: {}", response.text()?);
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("events thread panicked"))??;
        }
        Ok(())
    })
}

/// A client whose own first request (its connection, its runtime's first task) is spent on a
/// probe, so that a timed request measures the server.
fn warmed_client(addr: &str) -> Result<reqwest::blocking::Client> {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    client
        .get(format!("http://{addr}/healthz"))
        .send()?
        .error_for_status()?;
    Ok(client)
}

/// Milliseconds an operator's `verb` (pause, resume) of rollout `r{rollout}` takes to answer.
fn action_ms(
    client: &reqwest::blocking::Client,
    addr: &str,
    rollout: usize,
    verb: &str,
) -> Result<f64> {
    let t = Instant::now();
    let response = client
        .post(format!("http://{addr}/v1/rollouts/r{rollout}/{verb}"))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body(r#"{"reason":"bench"}"#)
        .send()?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    if !response.status().is_success() {
        bail!("{verb} r{rollout} refused: {}", response.text()?);
    }
    Ok(ms)
}

/// Milliseconds one assignment (to workflow `w{n}`) takes to answer, on stagegate or the bare
/// server alike.
fn assign_ms(client: &reqwest::blocking::Client, addr: &str, n: usize) -> Result<f64> {
    let t = Instant::now();
    let response = client
        .post(format!("http://{addr}/v1/assign"))
        .bearer_auth(INGEST_TOKEN)
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"workflow":"w{n}","subject":"idle-{n}","attributes":{{"tier":"enterprise"}}}}"#
        ))
        .send()?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    if !response.status().is_success() {
        bail!("assign w{n} refused: {}", response.text()?);
    }
    Ok(ms)
}

/// `request` timed [`IDLE_ROUNDS`] times, each after the server sat idle for
/// [`IDLE_SECONDS`]. On this VM the first requests after such a pause take milliseconds
/// more, the bare server's as much as stagegate's (the same instructions run slower: likely a
/// vCPU woken from halt and caches a neighbour used meanwhile), so an action's time is only
/// compared with the bare server's after the same pause.
fn after_idle(mut request: impl FnMut(usize) -> Result<f64>) -> Result<Vec<f64>> {
    (0..IDLE_ROUNDS)
        .map(|k| {
            std::thread::sleep(Duration::from_secs(IDLE_SECONDS));
            request(k)
        })
        .collect()
}

/// One scrape target's size, series and median time to answer.
struct Scrape {
    path: &'static str,
    bytes: usize,
    series: usize,
    ms: f64,
}

/// Milliseconds of `count` operator actions (pause then resume of rollouts spread over the
/// fleet), each timed alone, the first being the server's first since it started; and each
/// scrape target's size and time.
fn operator_actions(addr: &str, rollouts: usize, count: usize) -> Result<(Vec<f64>, Vec<Scrape>)> {
    let client = warmed_client(addr)?;
    for k in 0..WARM_UP_ACTIONS {
        action_ms(&client, addr, rollouts - 1, ["pause", "resume"][k % 2])?;
    }
    let mut times = Vec::new();
    for k in 0..count {
        let r = (k * 7919) % rollouts;
        for verb in ["pause", "resume"] {
            times.push(action_ms(&client, addr, r, verb)?);
        }
    }
    let mut scrapes = Vec::new();
    for path in ["/metrics", "/metrics/gates"] {
        let mut render = Vec::new();
        let mut size = 0;
        let mut series = 0;
        for _ in 0..5 {
            let t = Instant::now();
            let text = client.get(format!("http://{addr}{path}")).send()?.text()?;
            render.push(t.elapsed().as_secs_f64() * 1000.0);
            size = text.len();
            series = text.lines().filter(|l| !l.starts_with('#')).count();
        }
        scrapes.push(Scrape {
            path,
            bytes: size,
            series,
            ms: median(render),
        });
    }
    Ok((times, scrapes))
}

fn main() -> Result<()> {
    let o = options()?;
    let bin: PathBuf = std::env::current_exe()?
        .parent()
        .context("binary folder")?
        .to_path_buf();
    let stagegate = bin.join("stagegate");
    let baseline = bin.join("baseline");
    if !which("wrk") {
        bail!("wrk is not installed: run scripts/bench, which installs it");
    }
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let config = |tick: &str| {
        fleet::config(
            o.rollouts,
            &format!(
                "listen: 127.0.0.1:0, data_dir: \"{}\", tick: {tick}",
                data.display()
            ),
        )
    };
    let ticking = dir.path().join("tick.yaml");
    let still = dir.path().join("still.yaml");
    std::fs::write(&ticking, config("1s"))?;
    std::fs::write(&still, config("1h"))?;
    let log = dir.path().join("server.log");
    // Started, and returned once it answers.
    let answering = |cfg: &Path| -> Result<Server> {
        let s = Server::start(
            &stagegate,
            &["serve", "--config", &cfg.display().to_string()],
            &log,
        )?;
        let client = reqwest::blocking::Client::new();
        for _ in 0..200 {
            if client
                .get(format!("http://{}/healthz", s.addr))
                .send()
                .is_ok()
            {
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("stagegate did not answer /healthz");
    };
    let serve = |cfg: &Path| -> Result<Server> {
        let s = answering(cfg)?;
        // A few ticks of the 1 s config before measuring: steady state, not start-up.
        std::thread::sleep(Duration::from_secs(WARM_UP_SECONDS));
        Ok(s)
    };
    let bare_log = dir.path().join("bare.log");
    let bare = || {
        Server::start(
            &baseline,
            &["127.0.0.1:0", &o.rollouts.to_string()],
            &bare_log,
        )
    };
    // One wrk load of `kind` over `connections`, each pausing `delay_ms` between requests.
    let run = |server: &Server, kind: &str, connections: usize, delay_ms: u64| {
        wrk(
            server,
            dir.path(),
            kind,
            o.rollouts,
            connections,
            delay_ms,
            o.seconds,
        )
    };

    println!(
        "stagegate-bench: {} rollouts × 3 segments × 4 gates, {} rounds of {} s, {} CPUs (servers on CPU 0, wrk on CPU 1)",
        o.rollouts,
        o.rounds,
        o.seconds,
        cpus()
    );
    let t = Instant::now();
    let n = {
        let s = serve(&still)?;
        preload(&s.addr, o.rollouts, 60)?
    };
    println!(
        "preloaded {n} events (every arm of every segment) in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // Each round starts from this store (see [`copy_store`]).
    let preloaded = dir.path().join("data.preloaded");
    copy_store(&data, &preloaded)?;

    if o.instructions {
        return instructions(&o, dir.path(), &stagegate, &still, &baseline);
    }
    if let Some(events) = o.memory {
        return memory(&serve, &still, &data, events, &|s: &Server| {
            run(s, "events", 8, 0).map(|r| r.rps * 500.0 * o.seconds as f64)
        });
    }
    let mut ratios: Vec<(&str, Vec<f64>)> = Vec::new();
    let mut push = |name: &'static str, v: f64| match ratios.iter_mut().find(|(n, _)| *n == name) {
        Some((_, values)) => values.push(v),
        None => ratios.push((name, vec![v])),
    };
    if o.tick_only {
        let mut ratios = Vec::new();
        for round in 1..=o.rounds {
            let b = bare()?;
            let rate = run(&b, "assign", 32, 0)?.rps / 2.0;
            drop(b);
            let connections = ((rate / 100.0).round() as usize).clamp(8, 2000);
            let mut p99 = [0.0; 2];
            for (slot, cfg) in [&still, &ticking].into_iter().enumerate() {
                let s = serve(cfg)?;
                let run = run(&s, "assign", connections, 10)?;
                p99[slot] = run.p99_ms;
            }
            println!(
                "round {round}: {rate:.0} req/s offered: p99 {:.2} ms without a tick, {:.2} ms ticking every 1 s",
                p99[0], p99[1]
            );
            ratios.push(p99[1] / p99[0]);
        }
        println!(
            "| assign p99 at half load, ticking every 1 s / no tick | {} |",
            spread(&ratios)
        );
        return Ok(());
    }
    if o.assign_only {
        let b = bare()?;
        let s = serve(&still)?;
        run(&b, "assign", 32, 0)?;
        run(&s, "assign", 32, 0)?;
        let (mut throughput, mut cpu) = (Vec::new(), Vec::new());
        for round in 1..=o.rounds {
            let (bare, ours) = if round % 2 == 1 {
                let bare = run(&b, "assign", 32, 0)?;
                (bare, run(&s, "assign", 32, 0)?)
            } else {
                let ours = run(&s, "assign", 32, 0)?;
                (run(&b, "assign", 32, 0)?, ours)
            };
            println!(
                "round {round}: assign {:.0} vs {:.0} req/s; CPU {:.2} vs {:.2} µs per request; errors {}",
                ours.rps,
                bare.rps,
                ours.cpu_us_per_request,
                bare.cpu_us_per_request,
                bare.errors + ours.errors
            );
            throughput.push(ours.rps / bare.rps);
            cpu.push(ours.cpu_us_per_request / bare.cpu_us_per_request);
        }
        println!();
        println!("| measurement | median (range over {} pairs) |", o.rounds);
        println!("|---|---|");
        println!(
            "| assign throughput (c32), stagegate / bare | {} |",
            spread(&throughput)
        );
        println!(
            "| assign CPU per request, stagegate / bare | {} |",
            spread(&cpu)
        );
        return Ok(());
    }
    let mut lines = Vec::new();
    let mut rss = Vec::new();
    for round in 1..=o.rounds {
        // Both servers up at once (the idle one costs nothing), each load run on one and then
        // at once on the other, alternating which goes first: this host's speed drifts by the
        // minute, and a pair measured back to back drifts least.
        let b = bare()?;
        copy_store(&preloaded, &data)?;
        let s = serve(&still)?;
        let pair = |connections: usize, kind: &str, delay_ms: u64| -> Result<(Run, Run)> {
            if round % 2 == 1 {
                let bare = run(&b, kind, connections, delay_ms)?;
                Ok((bare, run(&s, kind, connections, delay_ms)?))
            } else {
                let ours = run(&s, kind, connections, delay_ms)?;
                Ok((run(&b, kind, connections, delay_ms)?, ours))
            }
        };
        // Closed loop: the most each serves.
        let (b_assign, s_assign) = pair(32, "assign", 0)?;
        let (b_ofrep, s_ofrep) = pair(32, "ofrep", 0)?;
        let (b_events, s_events) = pair(8, "events", 0)?;
        // Half the baseline's most, offered at a fixed rate: 10 ms between a connection's
        // requests. Stagegate's run comes last, just before the ticking one it is compared with.
        let rate = b_assign.rps / 2.0;
        let connections = ((rate / 100.0).round() as usize).clamp(8, 2000);
        let b_fixed = run(&b, "assign", connections, 10)?;
        let s_fixed = run(&s, "assign", connections, 10)?;
        drop(b);
        drop(s);
        let s = serve(&ticking)?;
        let t_fixed = run(&s, "assign", connections, 10)?;
        rss.push(s.rss_mib());
        drop(s);
        push(
            "assign throughput (c32), stagegate / bare",
            s_assign.rps / b_assign.rps,
        );
        push(
            "assign CPU per request, stagegate / bare",
            s_assign.cpu_us_per_request / b_assign.cpu_us_per_request,
        );
        push(
            "assign p99 at half load, stagegate / bare",
            s_fixed.p99_ms / b_fixed.p99_ms,
        );
        push(
            "assign p99 at half load, ticking every 1 s / no tick",
            t_fixed.p99_ms / s_fixed.p99_ms,
        );
        push(
            "OFREP throughput (c32), stagegate / bare",
            s_ofrep.rps / b_ofrep.rps,
        );
        push(
            "events/s (batches of 500, 8 clients), durable / bare parse-only",
            s_events.rps / b_events.rps,
        );
        lines.push(format!(
            "round {round}: assign {:.0} vs {:.0} req/s; half load {:.0} req/s ({connections} conns): p99 bare {:.2} ms, stagegate {:.2} ms, ticking {:.2} ms (p50 {:.2}/{:.2}/{:.2}); OFREP {:.0} vs {:.0} req/s; events {:.0} vs {:.0} /s; errors {}",
            s_assign.rps,
            b_assign.rps,
            rate,
            b_fixed.p99_ms,
            s_fixed.p99_ms,
            t_fixed.p99_ms,
            b_fixed.p50_ms,
            s_fixed.p50_ms,
            t_fixed.p50_ms,
            s_ofrep.rps,
            b_ofrep.rps,
            s_events.rps * 500.0,
            b_events.rps * 500.0,
            [b_assign, b_ofrep, b_events, b_fixed, s_assign, s_ofrep, s_fixed, s_events, t_fixed]
                .iter()
                .map(|r| r.errors)
                .sum::<u64>()
        ));
        println!("{}", lines.last().map_or("", String::as_str));
        let _ = std::io::stdout().flush();
    }
    // Restarts on the store the rounds left (a checkpoint per rollout), each acted on as soon
    // as it answers: nothing start-up does in the background may hold an operator's command.
    // Several, since a server that has just started runs cold, like one after a pause (see
    // [`after_idle`]), and that cost swings by milliseconds on this kind of host.
    let mut at_start = Vec::with_capacity(RESTARTS);
    for k in 0..RESTARTS {
        let s = answering(&still)?;
        let client = warmed_client(&s.addr)?;
        at_start.push(action_ms(&client, &s.addr, k, "pause")?);
        action_ms(&client, &s.addr, k, "resume")?;
    }
    let s = serve(&still)?;
    let (actions, scrapes) = operator_actions(&s.addr, o.rollouts, 10)?;
    let client = warmed_client(&s.addr)?;
    let idle_action = after_idle(|k| action_ms(&client, &s.addr, k, "pause"))?;
    let idle_assign = after_idle(|k| assign_ms(&client, &s.addr, k))?;
    drop(s);
    let b = bare()?;
    let client = reqwest::blocking::Client::new();
    assign_ms(&client, &b.addr, 0)?;
    let bare_idle_assign = after_idle(|k| assign_ms(&client, &b.addr, k))?;
    drop(b);
    println!();
    println!("| measurement | median (range over {} rounds) |", o.rounds);
    println!("|---|---|");
    for (name, values) in &ratios {
        println!("| {name} | {} |", spread(values));
    }
    println!(
        "| operator action (pause or resume) at {} rollouts | {} after {WARM_UP_ACTIONS} untimed; the first on a restarted server, the moment it answers: {} over {RESTARTS} restarts |",
        o.rollouts,
        median_max(&actions),
        median_max(&at_start),
    );
    println!(
        "| the first request after {IDLE_SECONDS} s idle ({IDLE_ROUNDS} times) | stagegate: operator action {}, assign {}; bare server: assign {} |",
        median_max(&idle_action),
        median_max(&idle_assign),
        median_max(&bare_idle_assign),
    );
    for scrape in &scrapes {
        println!(
            "| {} at {} rollouts | {:.0} KiB, {} series, in {:.1} ms |",
            scrape.path,
            o.rollouts,
            scrape.bytes as f64 / 1024.0,
            scrape.series,
            scrape.ms
        );
    }
    println!(
        "| stagegate RSS after a ticking round | {:.0} MiB |",
        median(rss)
    );
    Ok(())
}

/// `--instructions`: the bare server and stagegate (on `config`, its store preloaded) each run
/// under callgrind, counting only while a load runs; every load runs on both, with the same
/// connections and length. Prints instructions per request (per event for `events`) and the
/// ratio.
fn instructions(
    o: &Options,
    dir: &Path,
    stagegate: &Path,
    config: &Path,
    baseline: &Path,
) -> Result<()> {
    if !which("valgrind") || !which("callgrind_control") {
        bail!("valgrind is not installed: run scripts/bench, which installs it");
    }
    let kinds = ["assign", "ofrep", "events"];
    let mut per_request = [[0.0; 3]; 2];
    for (slot, (program, args)) in [
        (
            baseline,
            vec!["127.0.0.1:0".to_string(), o.rollouts.to_string()],
        ),
        (
            stagegate,
            vec![
                "serve".into(),
                "--config".into(),
                config.display().to_string(),
            ],
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let out = dir.join(format!("callgrind.{slot}"));
        let mut valgrind_args = vec![
            "--tool=callgrind".to_string(),
            "--instr-atstart=no".into(),
            format!("--callgrind-out-file={}.%p", out.display()),
            program.display().to_string(),
        ];
        valgrind_args.extend(args);
        let args: Vec<&str> = valgrind_args.iter().map(String::as_str).collect();
        let server = Server::start(Path::new("valgrind"), &args, &dir.join("callgrind.log"))?;
        let pid = server.pid().to_string();
        // Start-up work (restoring evidence, the first tick: slow under valgrind) is not a
        // request's: wait until the server is idle.
        server.wait_idle();
        let control = |flag: &str| -> Result<()> {
            let ok = Command::new("callgrind_control")
                .args([flag, &pid])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?
                .success();
            if !ok {
                bail!("callgrind_control {flag} {pid} failed");
            }
            Ok(())
        };
        for (k, kind) in kinds.iter().enumerate() {
            // A short run first, uncounted: connections open, caches and pages warm; then
            // whatever it left in flight (a batch's commit and evidence) finishes uncounted.
            wrk(&server, dir, kind, o.rollouts, 8, 0, 2)?;
            server.wait_idle();
            control("--instr=on")?;
            let units = if *kind == "events" {
                // A known number of batches, every one answered inside the count: wrk would
                // stop with up to 8 batches of 500 in flight, their work counted and their
                // events not, which moved the figure by a quarter between runs.
                let batches = 8 * o.seconds.max(2) as usize;
                let bodies = (0..batches)
                    .map(|b| {
                        let events: Vec<String> = (0..500)
                            .map(|i| {
                                let k = (b * 500 + i) as u64;
                                let rollout = (b * 500 + i) % o.rollouts;
                                let version = if k % 2 == 0 { "a" } else { "b" };
                                fleet::event(
                                    &format!("count-{k}"),
                                    rollout,
                                    (k / 7 % 3) as usize,
                                    version,
                                    k,
                                )
                            })
                            .collect();
                        format!("[{}]", events.join(","))
                    })
                    .collect();
                post_events(&server.addr, bodies, 8)?;
                (batches * 500) as f64
            } else {
                let run = wrk(&server, dir, kind, o.rollouts, 8, 0, o.seconds)?;
                run.rps * o.seconds as f64
            };
            control("--instr=off")?;
            control("--dump")?;
            // callgrind numbers its dumps from 1.
            let dump = dir.join(format!("callgrind.{slot}.{pid}.{}", k + 1));
            per_request[slot][k] = dump_total(&dump)? / units;
        }
    }
    println!();
    println!(
        "| user-space instructions per request (callgrind, 8 connections) | bare | stagegate | stagegate / bare |"
    );
    println!("|---|---|---|---|");
    for (k, kind) in kinds.iter().enumerate() {
        let [bare, ours] = [per_request[0][k], per_request[1][k]];
        let unit = if *kind == "events" {
            "per event"
        } else {
            "per request"
        };
        println!(
            "| {kind} ({unit}) | {bare:.0} | {ours:.0} | {:.3} |",
            ours / bare
        );
    }
    Ok(())
}

/// The instruction total of a callgrind dump.
fn dump_total(dump: &Path) -> Result<f64> {
    let text = std::fs::read_to_string(dump)
        .with_context(|| format!("reading callgrind's dump {}", dump.display()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("totals:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .context("a callgrind dump without totals")
}

/// `--memory`: ingests at least `events` events through wrk rounds (`round` returns how many one
/// accepted), then prints RSS and the store's size, restarts on the same store and prints them
/// again with the start-up time.
fn memory(
    serve: &dyn Fn(&Path) -> Result<Server>,
    config: &Path,
    data: &Path,
    events: u64,
    round: &dyn Fn(&Server) -> Result<f64>,
) -> Result<()> {
    let store_mib = || {
        std::fs::metadata(data.join("stagegate.redb")).map_or(0.0, |m| m.len() as f64 / 1048576.0)
    };
    let s = serve(config)?;
    let t = Instant::now();
    let mut sent = 0.0;
    while sent < events as f64 {
        sent += round(&s)?;
        println!(
            "{:.1} M events in {:.0} s: RSS {:.0} MiB, store {:.0} MiB",
            sent / 1e6,
            t.elapsed().as_secs_f64(),
            s.rss_mib(),
            store_mib()
        );
        let _ = std::io::stdout().flush();
    }
    let before = s.rss_mib();
    let mut s = s;
    let stopped = s.stop();
    let t = Instant::now();
    let s = serve(config)?;
    // `serve` waits a fixed warm-up after the first answer; report start-up without it.
    let startup = t.elapsed().as_secs_f64() - WARM_UP_SECONDS as f64;
    println!();
    println!("| measurement | value |");
    println!("|---|---|");
    println!("| events ingested | {:.1} M |", sent / 1e6);
    println!("| RSS after ingesting | {before:.0} MiB |");
    println!("| store on disk | {:.0} MiB |", store_mib());
    match stopped {
        Some(d) => println!("| shutdown (SIGTERM to exit) | {:.2} s |", d.as_secs_f64()),
        None => println!("| shutdown | did not exit within 20 s: killed |"),
    }
    println!("| start-up on that store (to the first answer) | {startup:.1} s |");
    println!("| RSS after the restart | {:.0} MiB |", s.rss_mib());
    Ok(())
}
