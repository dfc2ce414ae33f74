//! Several replicas on one real PostgreSQL: one decider, dedupe across replicas, forwarded
//! operator actions, failover after kill -9, fencing of a leader whose session was killed,
//! consistency of assignments, a database outage, and schema versioning.
#![allow(
    clippy::panic,
    clippy::disallowed_methods,
    reason = "test assertions; deadlines and measured delays use real time"
)]

mod support;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::pg;
use support::*;

const TICK_MS: u64 = 100;

/// The usual test rollout on a shared PostgreSQL store, ticking every 100 ms.
fn pg_config(base: &str) -> String {
    base.replace(
        "tick: 50ms }",
        &format!(
            "tick: {TICK_MS}ms, store: {{ kind: postgres, url_env: STAGEGATE_DATABASE_URL }} }}"
        ),
    )
}

/// A rollout that stays at its first stage whatever the evidence says, but rolls back.
fn steady(base: &str) -> String {
    base.replace("min_samples: 200", "min_samples: 1000000")
}

fn replica(config: &str, url: &str, name: &str) -> Server {
    Server::start_wrapped(
        config,
        &[
            "env",
            &format!("STAGEGATE_DATABASE_URL={url}"),
            &format!("STAGEGATE_REPLICA={name}"),
        ],
    )
}

fn role(s: &Server) -> Option<String> {
    let r = s.get("/readyz", None);
    r.body["role"].as_str().map(String::from)
}

/// Waits until exactly one of `replicas` leads; returns its index.
fn wait_leader(replicas: &[&Server]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let roles: Vec<Option<String>> = replicas.iter().map(|s| role(s)).collect();
        let leaders: Vec<usize> = (0..roles.len())
            .filter(|i| roles[*i].as_deref() == Some("leader"))
            .collect();
        if leaders.len() == 1 {
            return leaders[0];
        }
        assert!(Instant::now() < deadline, "no single leader: {roles:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn internal_tasks(status: &Value) -> u64 {
    status["segments"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["segment"] == "internal")
        .map(|s| {
            s["baseline_tasks"].as_u64().unwrap_or(0) + s["candidate_tasks"].as_u64().unwrap_or(0)
        })
        .sum()
}

fn term_of(url: &str) -> i64 {
    pg::connect(url)
        .query_one("SELECT term FROM stagegate_leader WHERE id = 1", &[])
        .expect("term")
        .get(0)
}

#[test]
fn replicas_share_one_database_dedupe_events_and_forward_actions_to_the_one_decider() {
    let url = pg::shared().database();
    let config = pg_config(&steady(&config("")));
    let servers = [
        replica(&config, &url, "r1"),
        replica(&config, &url, "r2"),
        replica(&config, &url, "r3"),
    ];
    let all: Vec<&Server> = servers.iter().collect();
    let leader = wait_leader(&all);
    let (a, b) = ((leader + 1) % 3, (leader + 2) % 3);
    let leader_name = format!("r{}", leader + 1);

    // The same batch through two replicas counts once.
    let batch = events("dup", 100, "v8", internal(), HEALTHY);
    let first = servers[a].send_events(&batch);
    let second = servers[b].send_events(&batch);
    assert_eq!(first["accepted"], 100, "{first}");
    assert_eq!(second["accepted"], 0, "{second}");
    assert_eq!(second["duplicates"], 100, "{second}");
    servers[leader].wait_for("the leader to count both replicas' events once", |s| {
        internal_tasks(s) == 100
    });
    // A follower's status is read from the database: the leader's last checkpoint.
    for s in [a, b] {
        servers[s].wait_for("a follower to see the leader's evidence", |s| {
            internal_tasks(s) == 100
        });
    }
    let reads = |s: &Server, name: &str| -> u64 {
        let text = s.get("/metrics", Some(READER)).text;
        let series = format!("stagegate_follower_checkpoint_reads_total{{replica=\"{name}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series}in\n{text}"))
    };
    let follower_names = [format!("r{}", a + 1), format!("r{}", b + 1)];
    let reads_before = [
        reads(&servers[a], &follower_names[0]),
        reads(&servers[b], &follower_names[1]),
    ];

    // An operator action sent to a follower is decided by the leader.
    let pause = |s: &Server, key: &str| {
        s.post_with(
            "/v1/rollouts/support-reply-v8/pause",
            Some(OPERATOR),
            &[("Idempotency-Key", key)],
            json!({"reason": "forwarded pause"})
                .to_string()
                .into_bytes(),
        )
    };
    let r = pause(&servers[a], "pause-1");
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.body["decider"]["replica"],
        leader_name.as_str(),
        "{}",
        r.text
    );
    assert_eq!(r.body["action"], "pause");
    // The same key through the other follower returns the first receipt, and writes nothing.
    let again = pause(&servers[b], "pause-1");
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.body["id"], r.body["id"]);
    // A refusal comes back as the leader gave it.
    let refused = pause(&servers[b], "pause-2");
    assert_eq!(refused.status, 409, "{}", refused.text);
    assert_eq!(
        refused.body["error"]["code"], "conflict",
        "{}",
        refused.text
    );
    // Every replica shows the decision, and the receipts come from the database.
    for s in &servers {
        s.wait_for("the pause everywhere", |st| st["state"] == "paused");
        let receipts = s.receipts();
        assert_eq!(
            receipts.iter().filter(|r| r["action"] == "pause").count(),
            1,
            "{receipts:?}"
        );
    }
    // The followers refreshed to show it, and read no checkpoint again: none changed (a
    // thousand rollouts' checkpoints are some 20 MB of JSON to read and decode per refresh).
    for (i, s) in [a, b].into_iter().enumerate() {
        assert_eq!(
            reads(&servers[s], &follower_names[i]),
            reads_before[i],
            "checkpoints read again by {}",
            follower_names[i]
        );
        // What they hold was carried into the refreshed engine, not lost.
        servers[s].wait_for("a follower to keep the leader's evidence", |s| {
            internal_tasks(s) == 100
        });
    }
    let metrics = |s: &Server| s.get("/metrics", Some(READER)).text;
    assert!(
        metrics(&servers[leader])
            .contains(&format!("stagegate_leader{{replica=\"{leader_name}\"}} 1")),
        "{}",
        metrics(&servers[leader])
    );
    assert!(
        metrics(&servers[a]).contains(&format!("stagegate_leader{{replica=\"r{}\"}} 0", a + 1))
    );
}

/// Versions of `subjects` (smb tier) on one replica, in order.
fn versions(s: &Server, subjects: &[String]) -> Vec<String> {
    subjects
        .iter()
        .map(|subject| {
            s.assign(subject, smb())["version"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

#[test]
fn every_replica_hands_out_the_same_versions_and_a_rollback_reaches_them_within_a_tick() {
    let url = pg::shared().database();
    let config = pg_config(&config(""));
    let servers = [
        replica(&config, &url, "c1"),
        replica(&config, &url, "c2"),
        replica(&config, &url, "c3"),
    ];
    let all: Vec<&Server> = servers.iter().collect();
    let leader = wait_leader(&all);
    let follower = (leader + 1) % 3;
    // Stage 2 sends 5% of everyone to the candidate.
    let r = servers[follower].post(
        "/v1/rollouts/support-reply-v8/promote",
        Some(ADMIN),
        &json!({"reason": "open smb-5"}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    for s in &servers {
        s.wait_for("stage smb-5 everywhere", |st| st["stage"] == "smb-5");
    }
    let subjects: Vec<String> = (0..10_000).map(|i| format!("subject-{i}")).collect();
    let seen: Vec<Vec<String>> = servers.iter().map(|s| versions(s, &subjects)).collect();
    let candidates: Vec<String> = subjects
        .iter()
        .zip(&seen[0])
        .filter(|(_, v)| *v == "v8")
        .map(|(s, _)| s.clone())
        .collect();
    println!(
        "10000 subjects: {} on the candidate; replicas agree: {}",
        candidates.len(),
        seen.iter().all(|v| *v == seen[0])
    );
    assert!(
        (300..700).contains(&candidates.len()),
        "{}",
        candidates.len()
    );
    assert!(seen.iter().all(|v| *v == seen[0]), "replicas disagree");

    // Roll back through a follower, while a probe per replica asks for one candidate subject
    // in a loop: a replica's routing changes as one snapshot, so the first answer with the
    // baseline is the moment that replica stopped handing the candidate out.
    // Wall-clock milliseconds: the receipt's `at_ms` is the leader's (same host) wall-anchored clock.
    let wall = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    };
    let probe = candidates[0].clone();
    let started = Instant::now();
    let (switched, sent_at, r) = std::thread::scope(|scope| {
        let probes: Vec<_> = servers
            .iter()
            .map(|s| {
                let probe = probe.clone();
                scope.spawn(move || {
                    loop {
                        if s.assign(&probe, smb())["version"] == "v7" {
                            return wall();
                        }
                        // Paced, not spinning: three probes spinning on two cores starve the
                        // replicas they measure (every switch came 430-860 ms late here).
                        std::thread::sleep(Duration::from_millis(1));
                        assert!(
                            started.elapsed() < Duration::from_secs(10),
                            "the rollback never arrived"
                        );
                    }
                })
            })
            .collect();
        let sent_at = wall();
        let r = servers[follower].post(
            "/v1/rollouts/support-reply-v8/rollback",
            Some(OPERATOR),
            &json!({"reason": "consistency drill"}),
        );
        assert_eq!(r.status, 200, "{}", r.text);
        let switched: Vec<i64> = probes
            .into_iter()
            .map(|p| p.join().expect("probe"))
            .collect();
        (switched, sent_at, r)
    });
    let decided = pg::connect(&url)
        .query_one(
            "SELECT count(*) FROM stagegate_receipts WHERE body LIKE '%consistency drill%'",
            &[],
        )
        .expect("receipt")
        .get::<_, i64>(0);
    assert_eq!(decided, 1);
    // The decision's time is stamped before its commit, so this over-counts, never under.
    let decided_at = r.body["at_ms"].as_i64().expect("at_ms");
    let delays: Vec<i64> = switched.iter().map(|t| t - decided_at).collect();
    println!(
        "rollback sent to a follower, decided by the leader {} ms later; the candidate stopped on each replica {delays:?} ms after the decision (tick {TICK_MS} ms)",
        decided_at - sent_at
    );
    // After the decision, every replica routes by it within one tick plus the notification's
    // delay (slack for a loaded 2-core machine).
    let bound = TICK_MS as i64 + 300;
    for d in &delays {
        assert!(
            *d <= bound,
            "a replica served the candidate {d} ms after the rollback was decided (bound {bound} ms)"
        );
    }
    let after: Vec<Vec<String>> = servers.iter().map(|s| versions(s, &subjects)).collect();
    assert!(after.iter().flatten().all(|v| v == "v7"));
}

/// Posts batches of healthy internal events with ids `{tag}-{n}` to the replicas in turn
/// until `stop`; a batch a dead replica refuses goes to the next. Returns the acknowledged ids.
fn ingest_until(
    bases: Arc<Vec<String>>,
    dead: Arc<Mutex<HashSet<usize>>>,
    tag: String,
    start: usize,
    batches: usize,
) -> Vec<Value> {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let mut acked = Vec::new();
    let mut target = start;
    for b in 0..batches {
        let version = if b % 2 == 0 { "v7" } else { "v8" };
        let batch = events(&format!("{tag}-{b}"), 50, version, internal(), HEALTHY);
        loop {
            let i = target % bases.len();
            target += 1;
            if dead.lock().expect("lock").contains(&i) {
                continue;
            }
            let sent = client
                .post(format!("{}/v1/events", bases[i]))
                .bearer_auth(INGEST)
                .json(&batch)
                .send();
            if let Ok(resp) = sent {
                if resp.status().as_u16() == 200 {
                    let body: Value = resp.json().expect("json");
                    let n = body["accepted"].as_u64().unwrap_or(0)
                        + body["duplicates"].as_u64().unwrap_or(0);
                    assert_eq!(n, 50, "{body}");
                    acked.extend(batch.iter().cloned());
                    break;
                }
            }
        }
    }
    acked
}

#[test]
fn killing_the_leader_under_ingestion_loses_nothing_and_another_replica_decides_the_same() {
    let receiver = Receiver::start(0);
    let url = pg::shared().database();
    let base = steady(&config_notifying(receiver.port));
    let config = pg_config(&base);
    let mut servers: Vec<Option<Server>> = (1..=3)
        .map(|i| Some(replica(&config, &url, &format!("f{i}"))))
        .collect();
    let leader = {
        let all: Vec<&Server> = servers.iter().flatten().collect();
        wait_leader(&all)
    };
    let bases = Arc::new(
        servers
            .iter()
            .flatten()
            .map(|s| s.base.clone())
            .collect::<Vec<_>>(),
    );
    let dead = Arc::new(Mutex::new(HashSet::new()));
    let writers: Vec<_> = (0..3)
        .map(|k| {
            let (bases, dead) = (bases.clone(), dead.clone());
            std::thread::spawn(move || ingest_until(bases, dead, format!("w{k}"), k, 30))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(400));
    // kill -9 the leader mid-ingestion.
    dead.lock().expect("lock").insert(leader);
    let killed_at = Instant::now();
    drop(servers[leader].take());
    let survivors: Vec<&Server> = servers.iter().flatten().collect();
    let new_leader = wait_leader(&survivors);
    let takeover = killed_at.elapsed();
    println!("kill -9 of the leader: another replica leads after {takeover:?} (tick {TICK_MS} ms)");
    // Two ticks plus the lock's release, which a dead process's closed socket makes prompt.
    assert!(
        takeover < Duration::from_millis(2 * TICK_MS + 1_000),
        "{takeover:?}"
    );
    let acked: Vec<Value> = writers
        .into_iter()
        .flat_map(|w| w.join().expect("writer"))
        .collect();
    let distinct: HashSet<&str> = acked
        .iter()
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    assert_eq!(
        distinct.len(),
        acked.len(),
        "every acknowledged batch is new"
    );
    println!("{} events acknowledged across the kill", distinct.len());
    let lead = survivors[new_leader];
    lead.wait_for("every acknowledged event counted exactly once", |s| {
        internal_tasks(s) == distinct.len() as u64
    });
    // The new leader started from the last checkpoint, not from all history.
    let log = lead.log();
    let opened = log
        .lines()
        .rfind(|l| l.contains("store opened"))
        .unwrap_or_default();
    println!("the new leader's take-over: {opened}");
    assert!(opened.contains("restored=1"), "{opened}");
    // Evidence beyond it: a bad candidate, rolled back by the new leader.
    let bad = events(
        "bad",
        400,
        "v8",
        internal(),
        Profile {
            quality: 0.5,
            ..HEALTHY
        },
    );
    let follower = survivors[(new_leader + 1) % 2];
    follower.send_events(&bad);
    let status = lead.wait_for("the rollback", |s| s["state"] == "rolled_back");
    assert_eq!(internal_tasks(&status), 0, "a new epoch after the rollback");

    // No receipt lost or duplicated: one chain of states, each id once, one rollback.
    let mut receipts = lead.receipts();
    receipts.reverse();
    let ids: HashSet<&str> = receipts.iter().filter_map(|r| r["id"].as_str()).collect();
    assert_eq!(ids.len(), receipts.len());
    for pair in receipts.windows(2) {
        assert_eq!(
            pair[0]["after"]["epoch"], pair[1]["before"]["epoch"],
            "{pair:?}"
        );
        assert_eq!(
            pair[0]["after"]["state"], pair[1]["before"]["state"],
            "{pair:?}"
        );
    }
    let rollbacks: Vec<&Value> = receipts
        .iter()
        .filter(|r| r["action"] == "rollback")
        .collect();
    assert_eq!(rollbacks.len(), 1, "{receipts:?}");
    let rollback = rollbacks[0];
    // Its notification arrives (at least once) keyed by the receipt id.
    let id = rollback["id"].as_str().expect("id");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = receiver.wait_for(1);
        if got.iter().any(|g| g.header("idempotency-key") == Some(id)) {
            break;
        }
        assert!(Instant::now() < deadline, "no notification for {id}");
        std::thread::sleep(Duration::from_millis(20));
    }

    // One embedded replica fed the same events decides the same.
    let single = Server::start(&base);
    single.send_events(&acked);
    single.wait_for("the single replica's count", |s| {
        internal_tasks(s) == distinct.len() as u64
    });
    single.send_events(&bad);
    single.wait_for("the single replica's rollback", |s| {
        s["state"] == "rolled_back"
    });
    let alone = single
        .receipts()
        .into_iter()
        .find(|r| r["action"] == "rollback")
        .expect("a rollback receipt");
    for key in ["action", "after", "trigger"] {
        let (a, b) = (&rollback[key], &alone[key]);
        let strip = |v: &Value| {
            let mut v = v.clone();
            if let Some(o) = v.as_object_mut() {
                o.remove("since");
                o.remove("stage_started");
            }
            v
        };
        assert_eq!(strip(a)["gate"], strip(b)["gate"], "{key}: {a} vs {b}");
        assert_eq!(strip(a)["state"], strip(b)["state"], "{key}: {a} vs {b}");
        assert_eq!(
            strip(a)["segment"],
            strip(b)["segment"],
            "{key}: {a} vs {b}"
        );
    }
}

#[test]
fn a_leader_whose_session_is_killed_stops_deciding_before_the_next_term_decides() {
    let url = pg::shared().database();
    let config = pg_config(&steady(&config("")));
    let servers = [replica(&config, &url, "k1"), replica(&config, &url, "k2")];
    let all: Vec<&Server> = servers.iter().collect();
    let leader = wait_leader(&all);
    let old_term = term_of(&url);
    let r = servers[leader].post(
        "/v1/rollouts/support-reply-v8/pause",
        Some(OPERATOR),
        &json!({"reason": "under the first term"}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["decider"]["term"], old_term);

    // Kill the leader's lock session; its process lives on.
    let killed: bool = pg::connect(&url)
        .query_one(
            "SELECT bool_or(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
            &[&format!("stagegate-lease:k{}", leader + 1)],
        )
        .expect("terminate")
        .get(0);
    assert!(killed);
    let deadline = Instant::now() + Duration::from_secs(20);
    while term_of(&url) <= old_term {
        assert!(Instant::now() < deadline, "no new term");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The replica holding the new term leads; the other (which may be the old leader, a
    // tick late to notice its lost session — its writes were fenced meanwhile) follows.
    let new_term = term_of(&url);
    assert!(new_term > old_term);
    let holder: String = pg::connect(&url)
        .query_one("SELECT holder FROM stagegate_leader WHERE id = 1", &[])
        .expect("holder")
        .get(0);
    let new_leader = usize::from(holder == "k2");
    let deadline = Instant::now() + Duration::from_secs(20);
    while role(&servers[new_leader]).as_deref() != Some("leader")
        || role(&servers[1 - new_leader]).as_deref() != Some("follower")
    {
        assert!(Instant::now() < deadline, "roles never settled");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Both processes live; the one not leading says so.
    for s in &servers {
        assert_eq!(s.get("/healthz", None).status, 200);
    }
    assert_eq!(role(&servers[1 - new_leader]).as_deref(), Some("follower"));
    let r = servers[1 - new_leader].post(
        "/v1/rollouts/support-reply-v8/rollback",
        Some(OPERATOR),
        &json!({"reason": "under the new term"}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["decider"]["term"], new_term);
    // In commit order, no receipt of the old term follows one of the new term.
    let rows = pg::connect(&url)
        .query("SELECT term FROM stagegate_receipts ORDER BY seq", &[])
        .expect("receipts");
    let terms: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    println!("receipt terms in commit order: {terms:?}");
    assert!(terms.windows(2).all(|w| w[0] <= w[1]), "{terms:?}");
}

#[test]
fn a_stale_term_cannot_commit_once_another_replica_took_the_lock() {
    use stagegate::store::PostgresStore;
    let url = pg::shared().database();
    let a = PostgresStore::open(&url, "stale").expect("open a");
    let b = PostgresStore::open(&url, "fresh").expect("open b");
    let mut lease_a = a.lease();
    let term_a = lease_a.try_acquire(1).expect("try").expect("a leads");
    a.set_term(term_a);
    let mut lease_b = b.lease();
    assert_eq!(
        lease_b.try_acquire(2).expect("try"),
        None,
        "the lock is held"
    );
    let id = b.submit_command("{}").expect("submit");
    // a's lock session dies; a does not know yet and still holds its term.
    pg::connect(&url)
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'stagegate-lease:stale'",
            &[],
        )
        .expect("terminate");
    let deadline = Instant::now() + Duration::from_secs(10);
    let term_b = loop {
        if let Some(t) = lease_b.try_acquire(4).expect("try") {
            break t;
        }
        assert!(Instant::now() < deadline, "b never got the lock");
        std::thread::sleep(Duration::from_millis(10));
    };
    b.set_term(term_b);
    assert!(term_b > term_a);
    let stale = a.finish_command(id, "\"stale\"");
    assert!(
        matches!(stale, Err(stagegate::store::StoreError::Fenced { .. })),
        "{stale:?}"
    );
    let message = stale.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("no longer decides"), "{message}");
    b.finish_command(id, "\"fresh\"")
        .expect("the new term commits");
    assert_eq!(
        b.command_result(id).expect("read").as_deref(),
        Some("\"fresh\"")
    );
    assert!(!lease_a.holds());
}

#[test]
fn with_the_database_down_assignments_still_answer_and_everything_resumes_after() {
    let server = pg::PgServer::start();
    let url = server.database();
    let config = pg_config(&steady(&config("")));
    let servers = [replica(&config, &url, "d1"), replica(&config, &url, "d2")];
    let all: Vec<&Server> = servers.iter().collect();
    wait_leader(&all);
    let subjects: Vec<String> = (0..200).map(|i| format!("s-{i}")).collect();
    let internal_versions = |s: &Server| -> Vec<String> {
        subjects
            .iter()
            .map(|subject| {
                s.assign(subject, internal())["version"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    };
    let before: Vec<Vec<String>> = servers.iter().map(internal_versions).collect();

    server.stop();
    for (s, seen) in servers.iter().zip(&before) {
        // Stale is safe: assignments change only on decisions, and none can be made.
        assert_eq!(&internal_versions(s), seen);
        let r = s.post(
            "/v1/events",
            Some(INGEST),
            &Value::Array(events("down", 5, "v8", internal(), HEALTHY)),
        );
        assert_eq!(r.status, 503, "{}", r.text);
        assert!(r.text.contains("cannot be reached"), "{}", r.text);
        assert!(
            r.text.contains("nothing in this request was acknowledged"),
            "{}",
            r.text
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ready = s.get("/readyz", None);
            if ready.status == 503 {
                assert!(
                    ready.text.contains("assignments are still served"),
                    "{}",
                    ready.text
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "readyz never reported it: {}",
                ready.text
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let pause = s.post(
            "/v1/rollouts/support-reply-v8/pause",
            Some(OPERATOR),
            &json!({"reason": "while down"}),
        );
        assert_eq!(pause.status, 503, "no decision while down: {}", pause.text);
    }

    server.resume();
    for s in &servers {
        let deadline = Instant::now() + Duration::from_secs(20);
        while s.get("/readyz", None).status != 200 {
            assert!(Instant::now() < deadline, "never ready again:\n{}", s.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let leader = wait_leader(&all);
    let r = servers[1 - leader].send_events(&events("up", 50, "v8", internal(), HEALTHY));
    assert_eq!(r["accepted"], 50);
    servers[leader].wait_for("the events after the outage", |s| internal_tasks(s) == 50);
    let pause = servers[1 - leader].post(
        "/v1/rollouts/support-reply-v8/pause",
        Some(OPERATOR),
        &json!({"reason": "after the outage"}),
    );
    assert_eq!(pause.status, 200, "{}", pause.text);
}

#[test]
fn a_database_migrated_by_a_newer_release_is_refused_and_left_alone() {
    let url = pg::shared().database();
    let config = pg_config(&config(""));
    let first = replica(&config, &url, "m1");
    drop(first);
    let mut db = pg::connect(&url);
    db.execute(
        "INSERT INTO stagegate_schema_history (version, name, applied_on, checksum) VALUES (99, 'future', 'now', '0')",
        &[],
    )
    .expect("a future migration");
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("stagegate.yaml");
    Server::write_config(&path, dir.path(), &config);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stagegate"))
        .args(["serve", "--config"])
        .arg(&path)
        .env("STAGEGATE_DATABASE_URL", &url)
        .env("STAGEGATE_ADMIN_TOKEN", ADMIN)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("schema is at version 99, newer than this stagegate's 1"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let versions: Vec<i32> = db
        .query(
            "SELECT version FROM stagegate_schema_history ORDER BY version",
            &[],
        )
        .expect("history")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, vec![1, 99], "nothing was changed");
    let unset = std::process::Command::new(env!("CARGO_BIN_EXE_stagegate"))
        .args(["serve", "--config"])
        .arg(&path)
        .env_remove("STAGEGATE_DATABASE_URL")
        .env("STAGEGATE_ADMIN_TOKEN", ADMIN)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&unset.stderr);
    assert_ne!(unset.status.code(), Some(0));
    assert!(stderr.contains("STAGEGATE_DATABASE_URL"), "{stderr}");
}

#[test]
fn the_store_section_is_validated_and_the_deploy_config_checks() {
    let run = |text: &str| {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("stagegate.yaml");
        std::fs::write(&path, text).expect("write");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_stagegate"))
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .expect("run");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let base = config("");
    for (store, expected) in [
        (
            "{ kind: postgres }",
            "server.store.url_env: a postgres store needs `url_env`",
        ),
        (
            "{ kind: postgres, url_env: \"not a name\" }",
            "expected an environment variable name",
        ),
        (
            "{ kind: mysql }",
            "unknown store kind `mysql`: expected `embedded` (default) or `postgres`",
        ),
        (
            "{ kind: embedded, url_env: X }",
            "only a `kind: postgres` store has a url_env",
        ),
    ] {
        let (ok, err) =
            run(&base.replace("tick: 50ms }", &format!("tick: 50ms, store: {store} }}")));
        assert!(!ok, "{store} was accepted");
        assert!(err.contains(expected), "{store}: {err}");
    }
    let (ok, err) = run(&pg_config(&base));
    assert!(ok, "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stagegate"))
        .args(["check", "--config", "deploy/replica.yaml"])
        .output()
        .expect("run");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        shown.contains("store postgres (url from $STAGEGATE_DATABASE_URL)"),
        "{shown}"
    );
}
