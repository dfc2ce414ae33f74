//! The `stagegate` binary: argument parsing and the process edge (`anyhow` lives here only).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::signal::unix::{Signal, SignalKind, signal};

use stagegate::config::render_plan;
use stagegate::plan::Plan;
use stagegate::serve::controller::{Input, Shared, run_controller, run_pruner, run_ticker};

mod cli;

#[derive(Parser)]
#[command(
    name = "stagegate",
    version,
    about = "Staged-rollout canary controller for AI workflow versions"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    #[command(flatten)]
    connection: cli::Connection,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the controller and its HTTP API.
    Serve {
        #[arg(long, default_value = Plan::DEFAULT_PATH)]
        config: PathBuf,
        /// Start even if the config removes rollouts still in containment (receipted; their
        /// state is kept and returns if they are added again).
        #[arg(long)]
        force: bool,
    },
    /// Validate a config file and print the plan.
    Check {
        #[arg(long)]
        config: PathBuf,
        /// Also run every metrics-source query once against the live source, for every
        /// segment and both arms, and print what each returned (fails if any did not answer).
        #[arg(long)]
        probe: bool,
        /// With --probe: the window the queries count over.
        #[arg(long, default_value = "1h", requires = "probe")]
        window: String,
    },
    #[command(flatten)]
    Client(cli::ClientCmd),
    /// Print the config file's JSON Schema (for editors: see docs/configuration.md).
    Schema,
    /// Print a shell completion script (`stagegate completions bash > /etc/bash_completion.d/stagegate`).
    Completions { shell: clap_complete::Shell },
    /// Run the real decision code against synthetic traffic on a virtual clock.
    Simulate {
        #[arg(long)]
        config: PathBuf,
        /// One scenario (required unless --suite is given).
        #[arg(long, required_unless_present = "suite")]
        scenario: Option<PathBuf>,
        /// Every `*.yaml` scenario in this folder (but `config*.yaml`), each under both
        /// policies on the same seeds: a Markdown table (or JSON with --json).
        #[arg(long, conflicts_with = "scenario")]
        suite: Option<PathBuf>,
        /// Overrides the scenario's seed (the first seed with --runs).
        #[arg(long)]
        seed: Option<u64>,
        /// Runs this many seeds and prints a summary: shares rolled back / read-only /
        /// narrowed / promoted, and quantiles of exposed tasks and of times to contain and promote.
        #[arg(long, default_value_t = 1)]
        runs: u64,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
        /// `sequential` (stagegate's always-valid verdicts) or `threshold` (a Flagger-style
        /// comparator on the same traffic: point estimates over each tick against the limits).
        #[arg(long, value_enum, default_value_t = PolicyArg::Sequential)]
        policy: PolicyArg,
        /// With `--policy threshold`: failed checks before it acts (Flagger's `threshold`).
        #[arg(long, default_value_t = 5)]
        failed_checks: u32,
    },
    /// Run recorded events (NDJSON, each with `ts`) through the policy and print what it would
    /// have decided, when, and on what evidence.
    Replay {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        events: PathBuf,
        /// JSON (the decisions as receipts) instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PolicyArg {
    Sequential,
    Threshold,
}

/// mimalloc instead of glibc's malloc: the ingest path allocates and frees a handful of small
/// objects per event across threads (parsed on a request worker, freed by the recorder).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Serve { config, force } => serve(&config, force),
        Cmd::Check {
            config,
            probe,
            window,
        } => check(
            &config,
            cli.connection.json,
            probe.then_some(window.as_str()),
        ),
        Cmd::Simulate {
            config,
            scenario,
            suite,
            seed,
            runs,
            json,
            policy,
            failed_checks,
        } => {
            let policy = match policy {
                PolicyArg::Sequential => stagegate::offline::simulate::Policy::Sequential,
                PolicyArg::Threshold => {
                    stagegate::offline::simulate::Policy::Threshold { failed_checks }
                }
            };
            match (scenario, suite) {
                (_, Some(dir)) => simulate_suite(&config, &dir, seed, runs, json, failed_checks),
                (Some(scenario), None) => simulate(&config, &scenario, seed, runs, json, policy),
                (None, None) => Err(anyhow::anyhow!("--scenario or --suite is required")),
            }
        }
        Cmd::Replay {
            config,
            events,
            json,
        } => replay(&config, &events, json),
        Cmd::Client(cmd) => cli::run(&cli.connection, cmd).map(emit),
        Cmd::Schema => serde_json::to_string_pretty(&stagegate::config::config_schema())
            .map(|text| emit(text + "\n"))
            .map_err(Into::into),
        Cmd::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "stagegate",
                &mut script,
            );
            emit(String::from_utf8_lossy(&script).into_owned());
            Ok(())
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `check`: the plan (text or JSON), and with `--probe` what every source query returns, in
/// one output.
fn check(path: &Path, json: bool, probe_window: Option<&str>) -> anyhow::Result<()> {
    let probed = |window| probe(path, window);
    if json {
        let mut out = check_json(path)?;
        if let Some(window) = probe_window {
            let (rows, _, failed) = probed(window)?;
            let total = rows.len();
            out["probe"] = serde_json::Value::Array(rows);
            emit(serde_json::to_string_pretty(&out)? + "\n");
            anyhow::ensure!(
                failed == 0,
                "{failed} of {total} probes got no usable answer"
            );
        } else {
            emit(serde_json::to_string_pretty(&out)? + "\n");
        }
        return Ok(());
    }
    check_text(path)?;
    if let Some(window) = probe_window {
        let (rows, text, failed) = probed(window)?;
        emit(text);
        anyhow::ensure!(
            failed == 0,
            "{failed} of {} probes got no usable answer",
            rows.len()
        );
    }
    Ok(())
}

fn check_text(path: &Path) -> anyhow::Result<()> {
    let plan = Plan::load(path)?;
    for warning in stagegate::serve::notify::preflight(&plan)
        .into_iter()
        .chain(stagegate::config::check_warnings(&plan))
    {
        eprintln!("warning: {warning}");
    }
    if plan.auth.tokens.is_none() {
        eprintln!("warning: auth.open is true: every endpoint answers without a token");
    }
    emit(render_plan(&plan));
    emit(
        format!(
            "\nok: {} workflow(s), {} rollout(s)",
            plan.workflows.len(),
            plan.rollouts.len()
        ) + "\n",
    );
    Ok(())
}

/// `check --json`: `{ok, config_hash, warnings, workflows, rollouts}`, or `{ok: false,
/// problems: [{file, line, column, key, message}]}` and a failing exit, for editors and CI.
fn check_json(path: &Path) -> anyhow::Result<serde_json::Value> {
    use serde_json::json;
    let plan = match Plan::load(path) {
        Ok(plan) => plan,
        Err(e) => {
            let problems: Vec<serde_json::Value> = match &e {
                stagegate::config::ConfigError::Invalid(problems) => problems
                    .iter()
                    .map(|p| json!({"file": p.file, "line": p.line, "column": p.column, "key": p.key, "message": p.message}))
                    .collect(),
                other => vec![json!({"file": path.display().to_string(), "message": other.to_string()})],
            };
            emit(serde_json::to_string_pretty(&json!({"ok": false, "problems": problems}))? + "\n");
            anyhow::bail!("{} problem(s) in {}", problems.len(), path.display());
        }
    };
    let mut warnings = stagegate::serve::notify::preflight(&plan);
    warnings.extend(stagegate::config::check_warnings(&plan));
    for r in &plan.rollouts {
        warnings.extend(
            stagegate::config::relative_notes(r)
                .into_iter()
                .map(|n| format!("rollout {}: {n}", r.name)),
        );
    }
    if plan.auth.tokens.is_none() {
        warnings.push("auth.open is true: every endpoint answers without a token".into());
    }
    let rollouts: Vec<serde_json::Value> = plan
        .rollouts
        .iter()
        .map(|r| {
            let stages: Vec<serde_json::Value> = r
                .stages
                .iter()
                .map(|st| {
                    let traffic: serde_json::Map<String, serde_json::Value> = r
                        .segments
                        .iter()
                        .zip(&st.weights_bps)
                        .map(|(seg, bps)| (seg.name.clone(), json!(f64::from(*bps) / 100.0)))
                        .collect();
                    json!({
                        "name": st.name,
                        "traffic_percent": traffic,
                        "min_duration": stagegate::core::clock::human_duration(st.min_duration),
                        "min_samples": st.min_samples,
                        "approval": if st.manual_approval { "manual" } else { "auto" },
                    })
                })
                .collect();
            let gates: Vec<serde_json::Value> = r
                .gates
                .iter()
                .map(|g| {
                    json!({
                        "name": g.name,
                        "signal": g.signal.name(),
                        "stat": g.stat.name(),
                        "checks": g.checks.iter().map(ToString::to_string).collect::<Vec<_>>(),
                        "on_breach": g.on_breach.name(),
                    })
                })
                .collect();
            json!({
                "name": r.name,
                "workflow": r.workflow,
                "baseline": r.baseline,
                "candidate": r.candidate,
                "confidence": r.confidence,
                "segments": r.segments.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
                "stages": stages,
                "gates": gates,
                "owner": r.lane.owner,
            })
        })
        .collect();
    let out = json!({
        "ok": true,
        "config": path.display().to_string(),
        "config_hash": plan.hash,
        "store": plan.server.store.to_string(),
        "warnings": warnings,
        "workflows": plan.workflows.iter().map(|w| w.name.clone()).collect::<Vec<_>>(),
        "rollouts": rollouts,
    });
    Ok(out)
}

/// `check --probe`: every source query once, per rollout, signal, segment and arm; the rows
/// (JSON), the text, and how many got no usable answer.
fn probe(path: &Path, window: &str) -> anyhow::Result<(Vec<serde_json::Value>, String, usize)> {
    use stagegate::core::clock::Clock;
    use stagegate::core::source::{Reading, probe_jobs, reading};
    let plan = Plan::load(path)?;
    let window = stagegate::core::clock::parse_duration(window)
        .map_err(|e| anyhow::anyhow!("--window: {e}"))?;
    anyhow::ensure!(window >= 1_000, "--window must be at least 1s");
    let now = stagegate::core::clock::SystemClock.now();
    let jobs: Vec<_> = plan
        .rollouts
        .iter()
        .flat_map(|r| probe_jobs(r, window / 1000, now))
        .collect();
    if jobs.is_empty() {
        return Ok((
            Vec::new(),
            "probe: no signal comes from a metrics source\n".into(),
            0,
        ));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = stagegate::serve::prometheus::client();
    let answers = runtime.block_on(stagegate::serve::prometheus::run_jobs(&client, &plan, jobs));
    let mut failed = 0;
    let mut rows = Vec::new();
    let mut text = format!(
        "\nprobe over the last {}:\n",
        stagegate::core::clock::human_duration(window)
    );
    for answer in &answers {
        let job = &answer.job;
        let unit = plan
            .rollout(&job.rollout)
            .and_then(|r| r.source_of(&job.signal))
            .map_or(1.0, |s| s.unit);
        let arm = match job.arm {
            stagegate::core::evidence::Arm::Baseline => "baseline",
            stagegate::core::evidence::Arm::Candidate => "candidate",
        };
        let outcome = reading(answer, unit);
        let summary = match &outcome {
            Ok(Reading::Counts { hits, total }) => format!(
                "events {hits:.0} of total {total:.0} (rate {:.4})",
                if *total > 0.0 { hits / total } else { 0.0 }
            ),
            Ok(Reading::Buckets(pairs)) => {
                match stagegate::core::buckets::Buckets::from_pairs(pairs.clone(), 0.0) {
                    Ok(b) => format!(
                        "{} tasks in {} buckets (p50 ≈ {}, p95 ≈ {})",
                        b.n(),
                        b.bounds.len(),
                        b.quantile(0.5).map_or("-".into(), |v| format!("{v:.1}")),
                        b.quantile(0.95).map_or("-".into(), |v| format!("{v:.1}"))
                    ),
                    Err(e) => {
                        failed += 1;
                        format!("error: {e}")
                    }
                }
            }
            Ok(Reading::Sums { count, sum, .. }) => format!(
                "count {count:.0}, mean {:.4}",
                if *count > 0.0 { sum / count } else { 0.0 }
            ),
            Err(f) => {
                failed += 1;
                format!("error ({}): {}", f.kind.name(), f.message)
            }
        };
        text.push_str(&format!(
            "  {} {} {} {arm} ({}): {summary}\n",
            job.rollout,
            job.signal.name(),
            job.segment_name,
            job.version
        ));
        if outcome.is_err() {
            for q in &job.queries {
                text.push_str(&format!("      {}: {}\n", q.key, q.promql));
            }
        }
        rows.push(serde_json::json!({
            "rollout": job.rollout,
            "signal": job.signal.name(),
            "segment": job.segment_name,
            "arm": arm,
            "version": job.version,
            "source": job.source,
            "queries": job.queries.iter().map(|q| serde_json::json!({"key": q.key, "promql": q.promql})).collect::<Vec<_>>(),
            "ok": outcome.is_ok(),
            "result": summary,
        }));
    }
    Ok((rows, text, failed))
}

fn simulate(
    config: &Path,
    scenario: &Path,
    seed: Option<u64>,
    runs: u64,
    json: bool,
    policy: stagegate::offline::simulate::Policy,
) -> anyhow::Result<()> {
    let plan = Plan::load(config)?;
    let text = std::fs::read_to_string(scenario)
        .with_context(|| format!("reading {}", scenario.display()))?;
    let mut scenario = stagegate::offline::simulate::Scenario::parse(&text)?;
    if let Some(seed) = seed {
        scenario.seed = seed;
    }
    anyhow::ensure!(runs >= 1, "--runs must be at least 1");
    // A fixed virtual epoch: runs are reproducible.
    let start = 1_800_000_000_000;
    if runs == 1 {
        let report = stagegate::offline::simulate::run(plan, &scenario, policy, start)?;
        if json {
            emit(serde_json::to_string_pretty(&report)? + "\n");
        } else {
            emit(report.render());
        }
        return Ok(());
    }
    let (_, summary) =
        stagegate::offline::simulate::run_many(&plan, &scenario, policy, start, runs)?;
    if json {
        emit(serde_json::to_string_pretty(&summary)? + "\n");
    } else {
        emit(summary.render());
    }
    Ok(())
}

fn simulate_suite(
    config: &Path,
    dir: &Path,
    seed: Option<u64>,
    runs: u64,
    json: bool,
    failed_checks: u32,
) -> anyhow::Result<()> {
    let plan = Plan::load(config)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "yaml")
                && p.file_name()
                    .is_some_and(|n| !n.to_string_lossy().starts_with("config"))
        })
        .collect();
    files.sort();
    anyhow::ensure!(!files.is_empty(), "no scenarios in {}", dir.display());
    let mut scenarios = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let mut scenario = stagegate::offline::simulate::Scenario::parse(&text)
            .with_context(|| path.display().to_string())?;
        if let Some(seed) = seed {
            scenario.seed = seed;
        }
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        scenarios.push((name, scenario));
    }
    anyhow::ensure!(runs >= 1, "--runs must be at least 1");
    let start = 1_800_000_000_000;
    let rows =
        stagegate::offline::simulate::run_suite(&plan, &scenarios, failed_checks, start, runs)?;
    if json {
        emit(serde_json::to_string_pretty(&rows)? + "\n");
    } else {
        emit(stagegate::offline::simulate::render_suite(
            &rows,
            failed_checks,
        ));
    }
    Ok(())
}

fn replay(config: &Path, events: &Path, json: bool) -> anyhow::Result<()> {
    let plan = Plan::load(config)?;
    let text = std::fs::read(events).with_context(|| format!("reading {}", events.display()))?;
    let mut parsed = Vec::new();
    for (i, item) in stagegate::core::event::parse_batch(&text)
        .map_err(anyhow::Error::msg)?
        .into_iter()
        .enumerate()
    {
        let (event, _) =
            item.map_err(|e| anyhow::anyhow!("{}: event {i}: {e}", events.display()))?;
        parsed.push(event);
    }
    let out = stagegate::offline::replay::replay(plan, parsed)?;
    if json {
        emit(serde_json::to_string_pretty(&out)? + "\n");
    } else {
        emit(out.render());
    }
    Ok(())
}

fn serve(path: &Path, force: bool) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STAGEGATE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let plan = Plan::load(path)?;
    if plan.auth.tokens.is_none() {
        tracing::warn!(
            "auth.open is true: every endpoint, including reload and rollback, answers without a token; never expose this server"
        );
    }
    for warning in stagegate::serve::notify::preflight(&plan) {
        tracing::warn!("{warning}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let listen = plan.server.listen.clone();
        // Opening a store may block on its database: off the async threads.
        let config_path = path.to_path_buf();
        let (shared, inputs) =
            tokio::task::spawn_blocking(move || Shared::start(plan, config_path, force))
                .await
                .context("starting the store")??;
        shared.start_replication()?;
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let addr = listener.local_addr()?;
        let controller = tokio::spawn(run_controller(shared.clone(), inputs));
        tokio::spawn(run_ticker(shared.clone()));
        tokio::spawn(run_pruner(shared.clone()));
        tokio::spawn(stagegate::serve::prometheus::run_sources(shared.clone()));
        tokio::spawn(stagegate::serve::notify::run_notifier(shared.clone()));
        let signals = Signals::register()?;
        tokio::spawn(reload_on_sighup(shared.clone(), signals.hangup));
        tracing::info!(%addr, "listening");
        println!("listening on {addr}");
        let server = &shared.plan.load().server;
        let limits = stagegate::serve::listener::Limits {
            max_connections: server.max_connections,
            header_timeout: std::time::Duration::from_millis(server.header_timeout),
            idle_timeout: std::time::Duration::from_millis(server.idle_timeout),
        };
        stagegate::serve::listener::serve(
            listener,
            stagegate::serve::api::Api::new(shared.clone()),
            limits,
            shutdown_signal(signals.terminate, signals.interrupt),
            std::time::Duration::from_secs(10),
        )
        .await;
        shared
            .ready
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let _ = shared.inputs.send(Input::Shutdown).await;
        let _ = controller.await;
        tracing::info!("stopped");
        Ok(())
    })
}

/// The signals a running server acts on, registered before it says it is listening: a
/// signal that arrives any time after the `listening` line is handled, never left to its
/// default action, which ends the process (a SIGHUP sent to reload it the moment it started
/// would kill it; a SIGTERM would skip the orderly stop).
struct Signals {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
}

impl Signals {
    fn register() -> anyhow::Result<Signals> {
        let register =
            |kind: SignalKind, name: &str| signal(kind).with_context(|| format!("handling {name}"));
        Ok(Signals {
            terminate: register(SignalKind::terminate(), "SIGTERM")?,
            interrupt: register(SignalKind::interrupt(), "SIGINT")?,
            hangup: register(SignalKind::hangup(), "SIGHUP")?,
        })
    }
}

/// Resolves on SIGTERM or SIGINT: the server stops accepting and drains.
async fn shutdown_signal(mut terminate: Signal, mut interrupt: Signal) {
    tokio::select! {
        _ = terminate.recv() => {},
        _ = interrupt.recv() => {},
    }
}

/// Each SIGHUP reloads the config, as `POST /v1/reload` does (its receipt's actor: `sighup`).
async fn reload_on_sighup(shared: Arc<Shared>, mut hangup: Signal) {
    while hangup.recv().await.is_some() {
        let _ = shared
            .inputs
            .send(Input::Reload {
                actor: "sighup".into(),
                force: false,
                reply: None,
            })
            .await;
    }
}

/// Writes to stdout. A reader that went away (`stagegate check … | head`) ends the output
/// quietly with success, as other command-line tools do, instead of a panic.
fn emit(text: String) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing the output: {e}");
        std::process::exit(1);
    }
}
