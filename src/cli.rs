//! The CLI client: `status` (once, or `--watch`), `pause`, `resume`, `promote`, `rollback`,
//! `receipts` and the other verbs over the HTTP API. Readable tables by default, the server's
//! JSON with `--json`; a refusal exits non-zero with the server's message and details.

use std::fmt::Write;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

/// Where the server is and how to talk to it.
#[derive(Args, Debug, Clone)]
pub struct Connection {
    /// The server's base URL.
    #[arg(
        long,
        env = "STAGEGATE_SERVER",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub server: String,
    /// Print the server's JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// The bearer token the client verbs send.
    #[arg(long, env = "STAGEGATE_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum ClientCmd {
    /// Show every rollout, or one in detail with each gate's verdict per segment.
    Status {
        name: Option<String>,
        /// Keep asking, and redraw whenever the answer changes (Ctrl-C ends it).
        #[arg(long)]
        watch: bool,
        /// How often `--watch` asks.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        interval: std::time::Duration,
    },
    /// Freeze a rollout (always allowed to operators).
    Pause {
        name: String,
        #[arg(long)]
        reason: String,
    },
    /// Re-enable a paused, read-only or rolled-back rollout (needs the lane's proof after an
    /// automatic containment).
    Resume {
        name: String,
        #[arg(long)]
        reason: String,
        /// Acknowledge the lane's repair action.
        #[arg(long)]
        ack: bool,
    },
    /// Move to the next stage, or with `--full` to the last.
    Promote {
        name: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        full: bool,
    },
    /// Send every segment back to the baseline.
    Rollback {
        name: String,
        #[arg(long)]
        reason: String,
    },
    /// The tasks a containment's exposure window served in full mode (NDJSON, or `--csv`), or
    /// with `--tag EVENT_ID --as safe|wrong|unclear` tag one.
    Affected {
        name: String,
        /// The containment's receipt id (default: the rollout's latest containment).
        #[arg(long)]
        receipt: Option<String>,
        #[arg(long)]
        csv: bool,
        /// Tag this affected item.
        #[arg(long, value_name = "EVENT_ID", requires = "verdict")]
        tag: Option<String>,
        #[arg(long = "as", value_name = "safe|wrong|unclear")]
        verdict: Option<String>,
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Validate the server's config file again and swap it in (admin).
    Reload {
        /// Remove rollouts still in containment (their state is kept under their names).
        #[arg(long)]
        force: bool,
    },
    /// Which version (and mode) a subject would get now, and why.
    Assign {
        workflow: String,
        subject: String,
        /// A task attribute, `key=value` (repeatable).
        #[arg(long = "attr", value_name = "KEY=VALUE")]
        attributes: Vec<String>,
    },
    /// Report task events from a file (a JSON array or NDJSON).
    Events {
        #[command(subcommand)]
        command: EventsCmd,
    },
    /// Decision receipts, newest first.
    Receipts {
        /// One receipt by id.
        id: Option<String>,
        #[arg(long)]
        rollout: Option<String>,
        /// RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

#[derive(Subcommand, Debug)]
pub enum EventsCmd {
    /// Send a file of events (idempotent by `event_id`).
    Send { file: std::path::PathBuf },
}

struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::blocking::Client,
}

impl Client {
    fn new(conn: &Connection) -> anyhow::Result<Client> {
        let http = reqwest::blocking::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()?;
        let token = conn.token.clone().filter(|t| !t.is_empty());
        Ok(Client {
            base: conn.server.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    fn send(&self, req: reqwest::blocking::RequestBuilder) -> anyhow::Result<Value> {
        let text = self.send_text(req)?;
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// The response body as text; a refusal is an error with the server's message.
    fn send_text(&self, req: reqwest::blocking::RequestBuilder) -> anyhow::Result<String> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req
            .send()
            .with_context(|| format!("cannot reach {}", self.base))?;
        let status = resp.status();
        let text = resp.text().unwrap_or_default();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !status.is_success() {
            let message = body["error"]["message"].as_str().unwrap_or(&text);
            let mut out = format!(
                "{} ({}): {message}",
                status.as_u16(),
                body["error"]["code"].as_str().unwrap_or("error")
            );
            for d in body["error"]["details"].as_array().into_iter().flatten() {
                let _ = write!(out, "\n  - {}", d.as_str().unwrap_or_default());
            }
            bail!(out);
        }
        Ok(text)
    }

    fn get(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
        self.send(self.http.get(format!("{}{path}", self.base)).query(query))
    }

    fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(&body))
    }
}

/// `status --watch`: asks every `interval` and prints the status again whenever it changed —
/// over the previous one on a terminal, below it (after a time line) otherwise. An unreachable
/// server is reported once per outage and retried. Ends on Ctrl-C or a closed pipe.
fn watch(
    client: &Client,
    json: bool,
    name: Option<&str>,
    interval: std::time::Duration,
) -> anyhow::Result<String> {
    use std::io::{IsTerminal, Write as _};
    let terminal = std::io::stdout().is_terminal();
    let path = name.map_or_else(
        || "/v1/rollouts".to_string(),
        |n| format!("/v1/rollouts/{n}"),
    );
    let render: fn(&Value) -> String = if name.is_some() {
        render_rollout
    } else {
        render_rollouts
    };
    let mut last: Option<String> = None;
    loop {
        let shown = match client.get(&path, &[]) {
            Ok(value) if json => serde_json::to_string_pretty(&value)? + "\n",
            Ok(value) => render(&value),
            Err(e) => format!("error: {e:#}\n"),
        };
        if last.as_deref() != Some(shown.as_str()) {
            let stamp = {
                use stagegate::core::clock::Clock as _;
                stagegate::core::clock::rfc3339(stagegate::core::clock::SystemClock.now())
            };
            let frame = if terminal {
                format!("\x1b[2J\x1b[H{stamp}\n{shown}")
            } else {
                format!("--- {stamp}\n{shown}")
            };
            let mut out = std::io::stdout().lock();
            if out
                .write_all(frame.as_bytes())
                .and_then(|()| out.flush())
                .is_err()
            {
                return Ok(String::new());
            }
            last = Some(shown);
        }
        std::thread::sleep(interval);
    }
}

/// Runs one client command; returns what to print.
pub fn run(conn: &Connection, cmd: ClientCmd) -> anyhow::Result<String> {
    let client = Client::new(conn)?;
    let action = |verb: &str, name: &str, body: Value| {
        client.post(&format!("/v1/rollouts/{name}/{verb}"), body)
    };
    let (value, render): (Value, fn(&Value) -> String) = match cmd {
        ClientCmd::Status {
            name,
            watch: true,
            interval,
        } => return watch(&client, conn.json, name.as_deref(), interval),
        ClientCmd::Status { name: None, .. } => (client.get("/v1/rollouts", &[])?, render_rollouts),
        ClientCmd::Status {
            name: Some(name), ..
        } => (
            client.get(&format!("/v1/rollouts/{name}"), &[])?,
            render_rollout,
        ),
        ClientCmd::Pause { name, reason } => (
            action("pause", &name, json!({"reason": reason}))?,
            render_receipt,
        ),
        ClientCmd::Resume { name, reason, ack } => (
            action("resume", &name, json!({"reason": reason, "ack": ack}))?,
            render_receipt,
        ),
        ClientCmd::Promote { name, reason, full } => (
            action("promote", &name, json!({"reason": reason, "full": full}))?,
            render_receipt,
        ),
        ClientCmd::Rollback { name, reason } => (
            action("rollback", &name, json!({"reason": reason}))?,
            render_receipt,
        ),
        ClientCmd::Affected {
            name,
            receipt,
            tag: Some(event_id),
            verdict,
            note,
            ..
        } => (
            client.post(
                &format!("/v1/rollouts/{name}/affected/{event_id}"),
                json!({"tag": verdict, "note": note, "receipt": receipt}),
            )?,
            render_tagged,
        ),
        ClientCmd::Affected {
            name, receipt, csv, ..
        } => {
            let accept = if csv {
                "text/csv"
            } else {
                "application/x-ndjson"
            };
            let q: Vec<(&str, String)> = receipt.map(|r| ("receipt", r)).into_iter().collect();
            return client.send_text(
                client
                    .http
                    .get(format!("{}/v1/rollouts/{name}/affected", client.base))
                    .header("accept", accept)
                    .query(&q),
            );
        }
        ClientCmd::Reload { force } => (
            client.post(
                if force {
                    "/v1/config/reload?force=true"
                } else {
                    "/v1/config/reload"
                },
                json!({}),
            )?,
            render_reload,
        ),
        ClientCmd::Assign {
            workflow,
            subject,
            attributes,
        } => {
            let mut attrs = serde_json::Map::new();
            for a in attributes {
                let Some((k, v)) = a.split_once('=') else {
                    bail!("--attr {a:?}: expected KEY=VALUE");
                };
                attrs.insert(k.to_string(), Value::String(v.to_string()));
            }
            (
                client.post(
                    "/v1/assign",
                    json!({"workflow": workflow, "subject": subject, "attributes": attrs}),
                )?,
                render_assignment,
            )
        }
        ClientCmd::Events {
            command: EventsCmd::Send { file },
        } => {
            let body =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            (
                client.send(
                    client
                        .http
                        .post(format!("{}/v1/events", client.base))
                        .header("content-type", "application/x-ndjson")
                        .body(body),
                )?,
                render_ingested,
            )
        }
        ClientCmd::Receipts { id: Some(id), .. } => (
            client.get(&format!("/v1/receipts/{id}"), &[])?,
            render_receipt,
        ),
        ClientCmd::Receipts {
            id: None,
            rollout,
            since,
            limit,
        } => {
            let mut q = vec![("limit", limit.to_string())];
            q.extend(rollout.map(|r| ("rollout", r)));
            q.extend(since.map(|s| ("since", s)));
            (client.get("/v1/receipts", &q)?, render_receipts)
        }
    };
    if conn.json {
        return Ok(serde_json::to_string_pretty(&value)? + "\n");
    }
    Ok(render(&value))
}

fn render_reload(r: &Value) -> String {
    let mut out = format!(
        "config reloaded; {} receipt(s)\n",
        r["receipts"].as_array().map_or(0, Vec::len)
    );
    for line in r["needs_restart"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "needs a restart: {}", s(line));
    }
    out
}

fn render_assignment(a: &Value) -> String {
    format!(
        "{} {} ({}) segment {} rollout {} stage {}: {}\n",
        s(&a["workflow"]),
        s(&a["version"]),
        s(&a["mode"]),
        s(&a["segment"]),
        s(&a["rollout"]),
        s(&a["stage"]),
        s(&a["reason"])
    )
}

fn render_ingested(r: &Value) -> String {
    let mut out = format!(
        "accepted {}, duplicates {}, rejected {}\n",
        s(&r["accepted"]),
        s(&r["duplicates"]),
        r["rejected"].as_array().map_or(0, Vec::len)
    );
    for rej in r["rejected"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "  item {}: {}", s(&rej["index"]), s(&rej["error"]));
    }
    out
}

fn render_tagged(item: &Value) -> String {
    format!(
        "{} tagged {}{}\n",
        s(&item["event_id"]),
        s(&item["tag"]),
        item["note"]
            .as_str()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default()
    )
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        Value::Number(n) => n.as_f64().map_or_else(
            || n.to_string(),
            |f| {
                if f.fract() == 0.0 {
                    format!("{f:.0}")
                } else {
                    format!("{f:.4}")
                }
            },
        ),
        other => other.to_string(),
    }
}

/// Left-aligned columns sized to their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                let _ = write!(out, "{cell:<w$}  ");
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

fn weights(v: &Value) -> String {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, w)| format!("{k}={}%", s(w)))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

fn render_rollouts(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v["rollouts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            vec![
                s(&r["name"]),
                s(&r["state"]),
                s(&r["stage"]),
                weights(&r["weights"]),
                format!("{}/{}", s(&r["candidate_samples"]), s(&r["min_samples"])),
                s(&r["waiting"]),
            ]
        })
        .collect();
    table(
        &["ROLLOUT", "STATE", "STAGE", "WEIGHTS", "SAMPLES", "WAITING"],
        &rows,
    )
}

fn render_rollout(r: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "rollout   {} ({}: {} -> {})",
        s(&r["name"]),
        s(&r["workflow"]),
        s(&r["baseline"]),
        s(&r["candidate"])
    );
    let _ = writeln!(
        out,
        "state     {}{}",
        s(&r["state"]),
        if r["read_only"] == true {
            " (candidate read-only)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "stage     {} since {} (narrows {}/{})",
        s(&r["stage"]),
        s(&r["stage_started"]),
        s(&r["narrows"]),
        s(&r["max_narrows"])
    );
    let _ = writeln!(out, "weights   {}", weights(&r["weights"]));
    let _ = writeln!(
        out,
        "samples   {} candidate tasks this stage, {} required, min duration {}",
        s(&r["candidate_samples"]),
        s(&r["min_samples"]),
        s(&r["min_duration"])
    );
    if !r["waiting"].is_null() {
        let _ = writeln!(out, "waiting   {}", s(&r["waiting"]));
    }
    for h in r["holding"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "holding   {}@{} {} (n={}): {}",
            s(&h["gate"]),
            s(&h["segment"]),
            s(&h["verdict"]),
            s(&h["candidate_samples"]),
            s(&h["why"])
        );
    }
    if let Some(re) = r["reenable"].as_object() {
        let _ = writeln!(
            out,
            "re-enable after {} at {}; the lane's proof:",
            s(&re["cause"]),
            s(&re["since"])
        );
        if re["ack_required"].as_bool() == Some(true) {
            let _ = writeln!(out, "  ack                      required (resume --ack)");
        }
        let _ = writeln!(
            out,
            "  cooldown                 ends {}",
            s(&re["cooldown_ends"])
        );
        let _ = writeln!(
            out,
            "  healthy read-only tasks  {}/{} (counted in probation)",
            s(&re["healthy_read_only"]),
            s(&re["healthy_read_only_required"])
        );
        let missing: Vec<&Value> = re["missing"].as_array().into_iter().flatten().collect();
        if missing.is_empty() {
            let _ = writeln!(out, "the next resume has its proof");
        } else {
            let _ = writeln!(out, "the next resume still lacks:");
        }
        for m in missing {
            let _ = writeln!(out, "  - {}", s(m));
        }
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = r["gates"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| {
            let checks: Vec<String> = g["checks"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| match c["note"].as_str() {
                    Some(note) => format!("{}: {note}", s(&c["check"])),
                    None => format!("{}: {}", s(&c["check"]), s(&c["verdict"])),
                })
                .collect();
            vec![
                if g["observe"].as_bool() == Some(true) {
                    format!("{} (observe)", s(&g["gate"]))
                } else {
                    s(&g["gate"])
                },
                s(&g["segment"]),
                s(&g["verdict"]),
                format!(
                    "{} (n={})",
                    s(&g["candidate"]["value"]),
                    s(&g["candidate"]["samples"])
                ),
                format!(
                    "{} (n={})",
                    s(&g["baseline"]["value"]),
                    s(&g["baseline"]["samples"])
                ),
                checks.join("; "),
            ]
        })
        .collect();
    if rows.is_empty() {
        out.push_str("no gate is evaluated: no segment sends the candidate traffic\n");
    } else {
        out.push_str(&table(
            &[
                "GATE",
                "SEGMENT",
                "VERDICT",
                "CANDIDATE",
                "BASELINE",
                "CHECKS",
            ],
            &rows,
        ));
    }
    out
}

fn receipt_row(r: &Value) -> Vec<String> {
    let trigger = match r["trigger"].as_object() {
        Some(t) => format!("{}@{}", s(&t["gate"]), s(&t["segment"])),
        None => "-".into(),
    };
    let actor = match r["actor"]["name"].as_str() {
        Some(name) => format!("operator:{name}"),
        None => s(&r["actor"]["kind"]),
    };
    let scope = if r["rollout"].as_str().is_some_and(|x| !x.is_empty()) {
        s(&r["rollout"])
    } else {
        s(&r["workflow"])
    };
    vec![
        s(&r["id"]),
        s(&r["at"]),
        scope,
        s(&r["action"]),
        actor,
        trigger,
        s(&r["reason"]),
    ]
}

const RECEIPT_HEADER: [&str; 7] = [
    "ID", "AT", "ROLLOUT", "ACTION", "ACTOR", "TRIGGER", "REASON",
];

fn render_receipts(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v["receipts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(receipt_row)
        .collect();
    table(&RECEIPT_HEADER, &rows)
}

fn render_receipt(r: &Value) -> String {
    let mut out = table(&RECEIPT_HEADER, &[receipt_row(r)]);
    let _ = writeln!(
        out,
        "\nbefore  {} {} {}",
        s(&r["before"]["state"]),
        s(&r["before"]["stage"]),
        weights(&r["before"]["weights"])
    );
    let _ = writeln!(
        out,
        "after   {} {} {}",
        s(&r["after"]["state"]),
        s(&r["after"]["stage"]),
        weights(&r["after"]["weights"])
    );
    if let Some(owner) = r["lane"]["owner"].as_str().filter(|o| !o.is_empty()) {
        let _ = writeln!(out, "owner   {owner}\nrepair  {}", s(&r["lane"]["repair"]));
    }
    out
}
