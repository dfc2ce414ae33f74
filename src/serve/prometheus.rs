//! Metrics sources over HTTP: Prometheus's instant-query API (`/api/v1/query`), and the task
//! that asks it, every tick, for what each rollout's epoch needs ([`run_sources`]).
//!
//! The queries and the meaning of their answers are the core's (`core::source`); this module
//! only sends them — at most [`PARALLEL_QUERIES`] at a time, each within its source's
//! `timeout` — and hands one round of answers to the controller loop, which records them like
//! any other evidence. An unreachable source, an error answer or an empty one is a
//! [`SourceFault`]: the gates on that signal stay `inconclusive` and
//! `stagegate_source_errors_total` counts it.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::core::clock::Millis;
use crate::core::source::{FaultKind, Sample, SourceAnswer, SourceFault, SourceJob};
use crate::plan::{Plan, SourcePlan, SourceUrl};
use crate::serve::controller::{Input, Shared};

/// Queries in flight at once, across all sources.
pub const PARALLEL_QUERIES: usize = 8;

/// Prometheus's JSON envelope.
#[derive(Deserialize)]
struct Envelope {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: serde_json::Value,
}

#[derive(Deserialize)]
struct VectorItem {
    #[serde(default)]
    metric: std::collections::BTreeMap<String, String>,
    value: (f64, String),
}

fn fault(kind: FaultKind, message: impl Into<String>) -> SourceFault {
    SourceFault {
        kind,
        message: message.into(),
    }
}

/// A Prometheus number: `+Inf`, `-Inf`, `NaN` or a decimal.
fn number(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        other => other.parse().ok(),
    }
}

/// The base URL of a source: written in the config, or read from its variable now.
pub fn base_url(source: &SourcePlan) -> Result<String, SourceFault> {
    match &source.url {
        SourceUrl::Literal(url) => Ok(url.clone()),
        SourceUrl::Env(var) => match std::env::var(var) {
            Ok(url) if !url.trim().is_empty() => Ok(url.trim().trim_end_matches('/').to_string()),
            _ => Err(fault(
                FaultKind::Unreachable,
                format!("environment variable {var} (the source's URL) is unset"),
            )),
        },
    }
}

/// Runs one instant query at `at` and returns its vector's samples.
pub async fn query(
    client: &reqwest::Client,
    source: &SourcePlan,
    promql: &str,
    at: Millis,
) -> Result<Vec<Sample>, SourceFault> {
    let url = format!("{}/api/v1/query", base_url(source)?);
    let time = format!("{:.3}", at as f64 / 1000.0);
    let response = client
        .get(&url)
        .query(&[("query", promql), ("time", time.as_str())])
        .timeout(Duration::from_millis(source.timeout))
        .send()
        .await
        .map_err(|e| {
            let what = if e.is_timeout() {
                format!("no answer within {} ms", source.timeout)
            } else {
                format!("cannot reach {url}: {}", error_chain(&e))
            };
            fault(FaultKind::Unreachable, what)
        })?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| fault(FaultKind::Unreachable, format!("reading the answer: {e}")))?;
    let envelope: Envelope = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(_) => {
            return Err(fault(
                FaultKind::Unreachable,
                format!("{url} answered HTTP {status} without Prometheus's JSON"),
            ));
        }
    };
    if envelope.status != "success" {
        return Err(fault(
            FaultKind::Query,
            format!(
                "Prometheus refused the query ({}): {}",
                envelope.error_type.as_deref().unwrap_or("error"),
                envelope.error.as_deref().unwrap_or("no reason given")
            ),
        ));
    }
    let Some(data) = envelope.data else {
        return Err(fault(FaultKind::Query, "an answer without data"));
    };
    if data.result_type != "vector" {
        return Err(fault(
            FaultKind::Query,
            format!(
                "expected an instant vector, got a {}: give a plain selector",
                data.result_type
            ),
        ));
    }
    let items: Vec<VectorItem> = serde_json::from_value(data.result)
        .map_err(|e| fault(FaultKind::Query, format!("an unexpected vector: {e}")))?;
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let value = number(&item.value.1).ok_or_else(|| {
            fault(
                FaultKind::Invalid,
                format!("`{}` is not a number", item.value.1),
            )
        })?;
        let le = match item.metric.get("le") {
            Some(text) => Some(number(text).ok_or_else(|| {
                fault(FaultKind::Invalid, format!("le=\"{text}\" is not a number"))
            })?),
            None => None,
        };
        out.push(Sample { le, value });
    }
    Ok(out)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// One query's samples, or why there are none.
type QueryResult = Result<Vec<Sample>, SourceFault>;

/// Runs every job's queries, [`PARALLEL_QUERIES`] at a time; answers keep the jobs' order.
pub async fn run_jobs(
    client: &reqwest::Client,
    plan: &Plan,
    jobs: Vec<SourceJob>,
) -> Vec<SourceAnswer> {
    let limit = Arc::new(tokio::sync::Semaphore::new(PARALLEL_QUERIES));
    let mut tasks = tokio::task::JoinSet::new();
    for (j, job) in jobs.iter().enumerate() {
        let source = plan.sources.iter().find(|s| s.name == job.source).cloned();
        for (q, query_) in job.queries.iter().enumerate() {
            let (client, limit, source) = (client.clone(), Arc::clone(&limit), source.clone());
            let (promql, at) = (query_.promql.clone(), job.at);
            tasks.spawn(async move {
                let _permit = limit.acquire_owned().await;
                let result = match &source {
                    Some(source) => query(&client, source, &promql, at).await,
                    None => Err(fault(
                        FaultKind::Query,
                        "the source is no longer configured",
                    )),
                };
                (j, q, result)
            });
        }
    }
    let mut results: Vec<Vec<Option<QueryResult>>> = jobs
        .iter()
        .map(|job| vec![None; job.queries.len()])
        .collect();
    while let Some(done) = tasks.join_next().await {
        if let Ok((j, q, result)) = done {
            results[j][q] = Some(result);
        }
    }
    jobs.into_iter()
        .zip(results)
        .map(|(job, results)| SourceAnswer {
            job,
            results: results
                .into_iter()
                .map(|r| r.unwrap_or_else(|| Err(fault(FaultKind::Query, "the query task failed"))))
                .collect(),
        })
        .collect()
}

/// An HTTP client for sources (rustls, no proxy surprises: the system's settings apply).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .user_agent(concat!("stagegate/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

/// Every tick, on the deciding replica: the jobs every rollout's current epoch needs, run
/// against their sources, handed to the controller loop as one round.
pub async fn run_sources(shared: Arc<Shared>) {
    let client = client();
    loop {
        let plan = shared.plan.load_full();
        tokio::time::sleep(Duration::from_millis(plan.server.tick)).await;
        if plan.sources.is_empty() || !shared.is_leader() {
            continue;
        }
        let now = shared.clock.now();
        let jobs = shared.engine().source_jobs(now);
        if jobs.is_empty() {
            continue;
        }
        let answers = run_jobs(&client, &plan, jobs).await;
        if shared
            .inputs
            .send(Input::SourceRound(answers))
            .await
            .is_err()
        {
            return;
        }
    }
}
