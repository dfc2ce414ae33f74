//! Faults: token-less uploads, idle and slowloris connections under a low descriptor limit,
//! a full disk, a damaged store, a long-lived store's start-up, and wall-clock jumps — each
//! against the real binary, with real sockets, file-size limits and files.
#![allow(
    clippy::panic,
    clippy::disallowed_methods,
    reason = "tests: panics report failures, deadlines use real time"
)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{ADMIN, HEALTHY, INGEST, OPERATOR, Server, config, events, internal};

/// Sends only a request's head (no body) and returns the status line the server answers with.
fn head_only(addr: &str, head: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(head.as_bytes()).expect("write head");
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

fn with_server_settings(settings: &str) -> String {
    config("").replacen("tick: 50ms }", &format!("tick: 50ms, {settings} }}"), 1)
}

#[test]
fn a_request_without_a_valid_token_is_refused_before_its_body_is_read() {
    let server = Server::start(&config(""));
    for path in [
        "/v1/events",
        "/v1/assign",
        "/ofrep/v1/evaluate/flags",
        "/v1/rollouts/support-reply-v8/pause",
        "/v1/config/reload",
    ] {
        // A 4 MB body is announced and never sent: the answer must come from the headers.
        let status = head_only(
            server.addr(),
            &format!(
                "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 4000000\r\n\r\n"
            ),
        );
        assert!(status.contains(" 401 "), "{path}: {status:?}");
        let status = head_only(
            server.addr(),
            &format!(
                "POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer wrong\r\ncontent-length: 4000000\r\n\r\n"
            ),
        );
        assert!(status.contains(" 401 "), "{path}: {status:?}");
    }
    // A valid token with the wrong role is refused the same way.
    let status = head_only(
        server.addr(),
        &format!(
            "POST /v1/config/reload HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {INGEST}\r\ncontent-length: 4000000\r\n\r\n"
        ),
    );
    assert!(status.contains(" 403 "), "{status:?}");
}

#[test]
fn in_flight_body_bytes_are_capped() {
    let server = Server::start(&with_server_settings(
        "max_body_bytes: 1048576, max_inflight_body_bytes: 2097152",
    ));
    // Two authorized uploads that hold 1 MiB each (their bodies never finish)...
    let hold = |_: usize| {
        let mut s = TcpStream::connect(server.addr()).expect("connect");
        s.write_all(
            format!(
                "POST /v1/events HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {INGEST}\r\ncontent-length: 1048576\r\n\r\n["
            )
            .as_bytes(),
        )
        .expect("write");
        s
    };
    let held: Vec<TcpStream> = (0..2).map(hold).collect();
    std::thread::sleep(Duration::from_millis(200));
    // ...spend the budget: a third gets 503 at once, and a request with no body still works.
    let status = head_only(
        server.addr(),
        &format!(
            "POST /v1/events HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {INGEST}\r\ncontent-length: 1048576\r\n\r\n"
        ),
    );
    assert!(status.contains(" 503 "), "{status:?}");
    assert_eq!(server.get("/v1/rollouts", Some(ADMIN)).status, 200);
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = server.post("/v1/events", Some(INGEST), &json!([]));
        if r.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "budget never came back: {}",
            r.text
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn idle_and_slowloris_connections_are_closed_and_healthz_answers_under_fd_pressure() {
    let server = Server::start_wrapped(
        &with_server_settings("header_timeout: 1s, idle_timeout: 1s"),
        &["prlimit", "--nofile=256:256", "--"],
    );
    let started = Instant::now();
    // 600 connections that never send anything, and 50 that dribble a header byte at a time.
    let mut idle: Vec<TcpStream> = (0..600)
        .filter_map(|_| TcpStream::connect(server.addr()).ok())
        .collect();
    let mut slow: Vec<TcpStream> = (0..50)
        .filter_map(|_| TcpStream::connect(server.addr()).ok())
        .collect();
    for s in &mut slow {
        let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nx-a: ");
    }
    // /healthz still answers within a few seconds, and /metrics too.
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut answered = false;
    while Instant::now() < deadline {
        for s in &mut slow {
            let _ = s.write_all(b"a");
        }
        if client
            .get(format!("{}/healthz", server.base))
            .send()
            .is_ok_and(|r| r.status() == 200)
        {
            answered = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(answered, "healthz never answered:\n{}", server.log());
    let metrics = client
        .get(format!("{}/metrics", server.base))
        .send()
        .expect("metrics");
    assert_eq!(metrics.status(), 200);
    // Every idle and slow connection was closed by the server (EOF), within the timeouts.
    std::thread::sleep(Duration::from_millis(2500));
    let mut still_open = 0;
    for s in idle.iter_mut().chain(slow.iter_mut()) {
        s.set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        let mut b = [0u8; 512];
        loop {
            match s.read(&mut b) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(_) => {
                    still_open += 1;
                    break;
                }
            }
        }
    }
    assert_eq!(
        still_open,
        0,
        "after {:?} some connections were still open",
        started.elapsed()
    );
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

/// Whether the server has closed `s` (EOF or reset) rather than left it open and silent.
fn closed_by_server(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(20)))
        .expect("timeout");
    let mut b = [0u8; 512];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

#[test]
fn the_header_timeout_runs_from_a_heads_first_byte_and_spares_idle_keep_alive() {
    // A long idle timeout, so only the header timeout can close a connection here.
    let server = Server::start(&with_server_settings(
        "header_timeout: 1s, idle_timeout: 60s",
    ));
    let request = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n";
    // A keep-alive connection that served a request, and one that never sent a byte.
    let mut kept = TcpStream::connect(server.addr()).expect("connect");
    kept.write_all(request).expect("write");
    let mut b = [0u8; 512];
    kept.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    assert!(kept.read(&mut b).expect("answer") > 0);
    let mut silent = TcpStream::connect(server.addr()).expect("connect");
    // A slowloris: a head that never ends, a byte at a time.
    let mut slow = TcpStream::connect(server.addr()).expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nx-a: ")
        .expect("write");
    let started = Instant::now();
    let mut closed_after = None;
    while started.elapsed() < Duration::from_secs(4) {
        std::thread::sleep(Duration::from_millis(100));
        if slow.write_all(b"a").is_err() || closed_by_server(&mut slow) {
            closed_after = Some(started.elapsed());
            break;
        }
    }
    let closed_after = closed_after.unwrap_or_else(|| {
        panic!("a head dribbled for 4 s under a 1 s header timeout was not cut off")
    });
    // One timeout, and at most two watchdog periods (a quarter of it each) and a poll late.
    assert!(
        closed_after >= Duration::from_millis(900) && closed_after < Duration::from_millis(2500),
        "the slow head was cut off after {closed_after:?}"
    );
    // Past the header timeout, the idle connections are still open and still serve.
    std::thread::sleep(Duration::from_millis(1500).saturating_sub(closed_after));
    assert!(
        !closed_by_server(&mut kept),
        "an idle keep-alive connection was closed"
    );
    assert!(
        !closed_by_server(&mut silent),
        "a silent connection was closed"
    );
    for s in [&mut kept, &mut silent] {
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.write_all(request).expect("write");
        let n = s.read(&mut b).expect("answer");
        assert!(
            String::from_utf8_lossy(&b[..n]).starts_with("HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&b[..n])
        );
    }
}

/// Runs stagegate with SIGXFSZ ignored, so a file-size limit makes writes fail with EFBIG
/// (as a full disk makes them fail with ENOSPC) instead of killing the process.
const IGNORE_XFSZ: [&str; 3] = ["sh", "-c", "trap '' XFSZ; exec \"$0\" \"$@\""];

/// Sets the soft file-size limit of `pid` (the hard one stays unlimited, so it can be raised
/// again without CAP_SYS_RESOURCE).
fn prlimit_fsize(pid: u32, limit: &str) {
    let out = Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--fsize={limit}:unlimited"),
        ])
        .output()
        .expect("prlimit");
    assert!(
        out.status.success(),
        "prlimit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_failed_disk_write_is_reported_and_recovered_without_a_restart() {
    let server = Server::start_wrapped(&config(""), &IGNORE_XFSZ);
    let store = server.dir.path().join("data").join("stagegate.redb");
    let size = std::fs::metadata(&store).expect("store").len();
    prlimit_fsize(server.pid(), &size.to_string());
    // Keep writing until the store must grow: the batch is refused, clearly, and not acked.
    let mut acked = 0u64;
    let mut refused = None;
    for batch in 0..200 {
        let r = server.post(
            "/v1/events",
            Some(INGEST),
            &json!(events(
                &format!("b{batch}-"),
                200,
                "v7",
                internal(),
                HEALTHY
            )),
        );
        if r.status == 200 {
            acked += r.body["accepted"].as_u64().unwrap_or(0);
        } else {
            refused = Some(r);
            break;
        }
    }
    let refused = refused.expect("the file-size limit was never hit");
    assert_eq!(refused.status, 503, "{}", refused.text);
    assert_eq!(refused.body["error"]["code"], "store_unavailable");
    assert!(
        refused.text.contains("recovers by itself") && refused.text.contains("free space"),
        "{}",
        refused.text
    );
    let ready = server.get("/readyz", None);
    assert_eq!(ready.status, 503, "{}", ready.text);
    let pause = server.post(
        "/v1/rollouts/support-reply-v8/pause",
        Some(OPERATOR),
        &json!({"reason": "disk"}),
    );
    assert_eq!(pause.status, 503, "{}", pause.text);
    assert!(
        server
            .get("/metrics", None)
            .text
            .contains("stagegate_store_healthy 0"),
        "metric says unhealthy"
    );

    // Space comes back: readiness, ingestion and operator actions return by themselves.
    prlimit_fsize(server.pid(), "unlimited");
    let deadline = Instant::now() + Duration::from_secs(15);
    while server.get("/readyz", None).status != 200 {
        assert!(
            Instant::now() < deadline,
            "never recovered:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = server.post(
        "/v1/events",
        Some(INGEST),
        &json!(events("after", 10, "v7", internal(), HEALTHY)),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    acked += 10;
    let pause = server.post(
        "/v1/rollouts/support-reply-v8/pause",
        Some(OPERATOR),
        &json!({"reason": "disk"}),
    );
    assert_eq!(pause.status, 200, "{}", pause.text);

    // Nothing acknowledged was lost, nothing refused was counted.
    let server = server.crash_and_restart();
    let baseline = server.status()["segments"][0]["baseline_tasks"]
        .as_u64()
        .unwrap_or(0);
    assert_eq!(baseline, acked);
}

#[test]
fn a_damaged_store_is_refused_unchanged_and_without_a_backtrace() {
    // A store with real content, stopped cleanly...
    let server = Server::start(&config(""));
    server.send_events(&events("d", 300, "v8", internal(), HEALTHY));
    let server = server.stop_and_restart();
    let store = server.dir.path().join("data").join("stagegate.redb");
    let config_path = server.config_path.clone();
    let dir = server.dir.path().to_path_buf();
    let mut server = server;
    Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .expect("kill");
    assert_eq!(server.wait_exit(), Some(0));
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_stagegate"))
            .args(["serve", "--config"])
            .arg(&config_path)
            .env("STAGEGATE_ADMIN_TOKEN", ADMIN)
            .output()
            .expect("run")
    };
    // ...with every page after the header overwritten.
    let mut bytes = std::fs::read(&store).expect("read");
    for b in bytes.iter_mut().skip(4096) {
        *b = 0xA5;
    }
    std::fs::write(&store, &bytes).expect("corrupt");
    let out = run();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&store.display().to_string()) && stderr.contains("left untouched"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&store).expect("read"), bytes, "byte for byte");
    assert!(
        !dir.join("data")
            .join("stagegate.redb.before-repair")
            .exists(),
        "no copy left behind"
    );

    // A zero-length file is not silently a new store.
    std::fs::write(&store, b"").expect("truncate");
    let out = run();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("empty (0 bytes)"), "{stderr}");
    assert_eq!(std::fs::metadata(&store).expect("meta").len(), 0);
}

#[test]
fn a_signal_sent_the_moment_it_says_listening_is_handled_not_fatal() {
    // A supervisor may reload (SIGHUP) or stop (SIGTERM) a server as soon as it reports
    // listening. Its handlers are in place before that line: the reload leaves it serving, the
    // stop is the orderly one (exit 0), never the signal's default action, which ends the
    // process. Sent with no delay, several times, as the race only shows on some starts.
    let signal = |server: &Server, signal: rustix::process::Signal| {
        let pid = rustix::process::Pid::from_raw(i32::try_from(server.pid()).expect("pid"))
            .expect("a running server's pid");
        rustix::process::kill_process(pid, signal).expect("signal");
    };
    for attempt in 0..6 {
        let mut server = Server::start(&config(""));
        signal(&server, rustix::process::Signal::HUP);
        assert_eq!(
            server.get("/healthz", None).status,
            200,
            "attempt {attempt}: a SIGHUP at start-up ended the server:\n{}",
            server.log()
        );
        signal(&server, rustix::process::Signal::TERM);
        assert_eq!(server.wait_exit(), Some(0), "attempt {attempt}");
        let mut server = Server::start(&config(""));
        signal(&server, rustix::process::Signal::TERM);
        assert_eq!(
            server.wait_exit(),
            Some(0),
            "attempt {attempt}: a SIGTERM at start-up was not an orderly stop:\n{}",
            server.log()
        );
    }
}

fn metric(server: &Server, name: &str) -> f64 {
    server
        .get("/metrics", None)
        .text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1.0)
}

#[test]
fn start_up_reads_checkpoints_and_covered_raw_events_are_pruned() {
    let server = Server::start(&with_server_settings("retention: 1s"));
    server.send_events(&events("c", 150, "v8", internal(), HEALTHY));
    server.send_events(&events("c", 150, "v7", internal(), HEALTHY));
    assert!(metric(&server, "stagegate_store_bytes") > 0.0);
    // Wait until the retention pass has pruned the (checkpointed) raw events.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !server.log().contains("store pruned") {
        assert!(Instant::now() < deadline, "never pruned:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = server.status()["segments"].clone();
    let server = server.crash_and_restart();
    assert_eq!(
        server.status()["segments"],
        before,
        "evidence survives pruning"
    );
    let log = server.log();
    let opened = log
        .lines()
        .rfind(|l| l.contains("store opened"))
        .unwrap_or_default()
        .to_string();
    assert!(
        opened.contains("restored=1") && opened.contains("replayed=0"),
        "start-up read the checkpoint, not the events: {opened}"
    );
    // Duplicates are still recognised (dedupe keys outlive raw events).
    let r = server.post(
        "/v1/events",
        Some(INGEST),
        &json!(events("c", 5, "v8", internal(), HEALTHY)),
    );
    assert_eq!(r.body["duplicates"], 5, "{}", r.text);
}

/// libfaketime's preload library (Debian package faketime / libfaketime).
fn libfaketime() -> std::path::PathBuf {
    std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|d| d.path().join("faketime").join("libfaketime.so.1"))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("libfaketime is missing: ./scripts/test installs it (Debian package faketime)")
        })
}

#[test]
fn a_wall_clock_jump_satisfies_no_cooldown_and_prunes_no_dedupe_key() {
    let dir = tempfile::tempdir().expect("tmp");
    let offset = dir.path().join("offset");
    std::fs::write(&offset, "+0s\n").expect("offset");
    let env = [
        format!("LD_PRELOAD={}", libfaketime().display()),
        format!("FAKETIME_TIMESTAMP_FILE={}", offset.display()),
        "FAKETIME_NO_CACHE=1".to_string(),
        "FAKETIME_DONT_FAKE_MONOTONIC=1".to_string(),
    ];
    // The only missing re-enable proof is the 30-minute cooldown; dedupe keys live 24 s.
    let text = with_server_settings("dedupe_window: 24s").replace(
        "cooldown: 1s, healthy_read_only_samples: 20",
        "cooldown: 30m, healthy_read_only_samples: 0",
    );
    let mut wrapper = vec!["env"];
    wrapper.extend(env.iter().map(String::as_str));
    let server = Server::start_wrapped(&text, &wrapper);
    server.drive_cost_read_only("jump");
    let dup = events("dedupe", 1, "v7", internal(), HEALTHY);
    assert_eq!(server.send_events(&dup)["accepted"], 1);

    // The wall clock jumps two days ahead, as the server's process sees it.
    std::fs::write(&offset, "+2d\n").expect("jump");
    let seen = Command::new("env")
        .args(&env)
        .args(["date", "+%s"])
        .output()
        .expect("date");
    let faked: u64 = String::from_utf8_lossy(&seen.stdout)
        .trim()
        .parse()
        .expect("seconds");
    let real = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs();
    assert!(
        faked > real + 86_400,
        "faketime is in force: {faked} vs {real}"
    );
    // Long enough for a dedupe pruning pass (every second at this window).
    std::thread::sleep(Duration::from_millis(2500));

    let r = server.post(
        "/v1/rollouts/support-reply-v8/resume",
        Some(OPERATOR),
        &json!({"reason": "jumped", "ack": true}),
    );
    assert_eq!(r.status, 422, "the cooldown is not over: {}", r.text);
    assert!(r.text.contains("cooldown"), "{}", r.text);
    let r: Value = server.send_events(&dup);
    assert_eq!(r["duplicates"], 1, "the dedupe key is still known: {r}");
}
