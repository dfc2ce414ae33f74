//! The async shell around the decision core: shared state, the controller loop, ingestion.
//!
//! Every state change enters through one closed enum, [`Input`], consumed by one loop task
//! ([`run_controller`]): a tick, an operator command, a config reload, shutdown. For each
//! decision the loop persists state and receipt atomically, then applies it to the engine,
//! publishes a new routing snapshot, and updates metrics — in that order. Ingestion runs on
//! request tasks: it routes under a brief engine lock, commits the batch durably, then adds
//! it to evidence.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use bytes::Bytes;
use rustc_hash::FxHashMap;
use tokio::sync::{mpsc, oneshot};

use crate::core::affected::{self, AffectedItem};
use crate::core::assign::Routing;
use crate::core::clock::Clock;
use crate::core::clock::Millis;
use crate::core::engine::{Engine, Pending, StateChange};
use crate::core::event::parse_batch;
use crate::core::evidence::Checkpoint;
use crate::core::gate::GateVerdict;
use crate::core::receipt::Receipt;
use crate::core::rollout::Command;
use crate::plan::{Plan, Role, StorePlan};
use crate::serve::evaluator::Evaluator;
use crate::serve::failure::InputError;
use crate::serve::metrics::{
    AssignmentTally, EventCounters, EventOutcome, Metrics, UNKNOWN_WORKFLOW,
};
use crate::serve::replica::{
    Answer, COMMAND_EXPIRY_MS, Forwarded, ForwardedError, Replica, Wake, run_election, run_listener,
};
use crate::store::{
    BatchItem, Change, EmbeddedStore, PostgresStore, Store, StoreError, StoredBody, StoredEvent,
};

/// What assignment reads: the routing plus pre-resolved counters, swapped as one value.
pub struct Snapshot {
    pub routing: Routing,
    /// The plan's assignment counts (fixed per plan).
    pub assignments: Arc<AssignmentTally>,
    /// `[workflow]` → its event counters (fixed per plan).
    pub events: Arc<Vec<EventCounters>>,
    /// The engine generation (plan) this snapshot was built under.
    generation: u64,
}

impl Snapshot {
    fn build(engine: &Engine, metrics: &Metrics) -> Snapshot {
        let routing = engine.routing();
        let assignments = AssignmentTally::new(
            metrics,
            routing.workflows().map(|w| (w.name(), w.versions())),
        );
        Snapshot {
            events: Arc::new(Snapshot::event_counters(engine, metrics)),
            routing,
            assignments: Arc::new(assignments),
            generation: engine.generation,
        }
    }

    /// Each workflow's event counters, by its position in `engine`'s plan.
    fn event_counters(engine: &Engine, metrics: &Metrics) -> Vec<EventCounters> {
        engine
            .plan
            .workflows
            .iter()
            .map(|w| metrics.event_counters(&w.name))
            .collect()
    }

    /// This snapshot with workflow `w`'s route read again from the engine: what one decision
    /// changes, in time independent of the number of rollouts. A snapshot of an older plan is
    /// built whole instead.
    fn patched(&self, engine: &Engine, metrics: &Metrics, w: usize) -> Snapshot {
        if self.generation != engine.generation || w >= self.routing.workflows().len() {
            return Snapshot::build(engine, metrics);
        }
        Snapshot {
            routing: self.routing.with_workflow(w, engine.workflow_route(w)),
            assignments: Arc::clone(&self.assignments),
            events: Arc::clone(&self.events),
            generation: self.generation,
        }
    }
}

/// The request-body bytes all in-flight requests may hold at once, counted in KiB. A lock-free
/// counter: reserving and releasing are one atomic operation each, and nothing ever waits on
/// it (a request it cannot hold is refused, not queued).
pub struct BodyBudget {
    free_kib: Arc<AtomicUsize>,
}

/// A request's share of the [`BodyBudget`], given back when dropped.
pub struct BodyReservation {
    free_kib: Arc<AtomicUsize>,
    kib: usize,
}

impl Drop for BodyReservation {
    fn drop(&mut self) {
        self.free_kib.fetch_add(self.kib, Ordering::Release);
    }
}

impl BodyBudget {
    fn new(bytes: usize) -> BodyBudget {
        BodyBudget {
            free_kib: Arc::new(AtomicUsize::new((bytes / 1024).max(1))),
        }
    }

    /// Reserves `bytes` until the reservation drops; `None` when the budget cannot hold them.
    pub fn reserve(&self, bytes: usize) -> Option<BodyReservation> {
        let kib = bytes.div_ceil(1024).max(1);
        self.free_kib
            .fetch_update(Ordering::Acquire, Ordering::Relaxed, |free| {
                free.checked_sub(kib)
            })
            .ok()
            .map(|_| BodyReservation {
                free_kib: Arc::clone(&self.free_kib),
                kib,
            })
    }
}

/// A bearer token resolved from the environment.
pub struct Token {
    pub secret: String,
    /// Shared with every request it admits (a `Caller`), so admitting one allocates nothing.
    pub name: Arc<str>,
    pub role: Role,
}

/// Who may call: `None` means no `auth:` section, every endpoint open.
pub struct Tokens {
    pub tokens: Option<Vec<Token>>,
    pub open_assign: bool,
    /// The caller's name where no token is asked for.
    pub anonymous: Arc<str>,
}

impl Tokens {
    fn from_plan(plan: &Plan) -> Tokens {
        let tokens = plan.auth.tokens.as_ref().map(|list| {
            list.iter()
                .filter_map(|t| match std::env::var(&t.token_env) {
                    Ok(secret) if !secret.is_empty() => Some(Token { secret, name: Arc::from(t.name.as_str()), role: t.role }),
                    _ => {
                        tracing::warn!(token = %t.name, env = %t.token_env, "token variable unset: this token is disabled");
                        None
                    }
                })
                .collect()
        });
        Tokens {
            tokens,
            open_assign: plan.auth.open_assign,
            anonymous: Arc::from("anonymous"),
        }
    }
}

/// `part` of `body` as a view that shares `body`'s buffer; a copy if `part` lies elsewhere
/// (the batch splitter only ever borrows from the body, so that is a fallback, not a path).
fn within(body: &Bytes, part: &[u8]) -> Bytes {
    let range = body.as_ptr_range();
    let inside = range.start <= part.as_ptr() && part.as_ptr_range().end <= range.end;
    if inside {
        body.slice_ref(part)
    } else {
        Bytes::copy_from_slice(part)
    }
}

/// State shared by the HTTP handlers and the controller loop.
pub struct Shared {
    /// Read on every assignment without a lock; only the controller loop stores a new one.
    pub snapshot: ArcSwap<Snapshot>,
    /// The decision core. A std mutex held for microseconds (routing, recording, assessing),
    /// never across an `.await`, so readers of the snapshot never wait on it.
    pub engine: Mutex<Engine>,
    pub plan: ArcSwap<Plan>,
    pub tokens: ArcSwap<Tokens>,
    pub store: Arc<dyn Store>,
    /// Ingest batches go to one writer thread that commits whatever is pending together.
    writer: std::sync::mpsc::Sender<IngestJob>,
    pub metrics: Metrics,
    pub clock: Arc<dyn Clock>,
    pub config_path: PathBuf,
    pub inputs: mpsc::Sender<Input>,
    pub ready: AtomicBool,
    /// Caps the request-body bytes held by in-flight requests.
    pub body_budget: BodyBudget,
    /// Wakes the notifier when a decision put something in the outbox.
    pub notify_wake: tokio::sync::Notify,
    /// Set when several replicas share a PostgreSQL store; `None`: this process decides alone.
    pub replica: Option<Arc<Replica>>,
    /// `serve --force`: a take-over may remove contained rollouts the config dropped.
    force: bool,
    /// The operator's window: sessions and chart history.
    pub ui: crate::serve::ui::state::Ui,
    /// The low-priority thread the tick's CPU work (and the `/metrics` rendering) runs on.
    pub evaluator: Evaluator,
    /// The event number the stored checkpoints were last said to cover (see
    /// [`Store::checkpoints_cover`]); a pass that covers nothing new writes nothing.
    checkpoints_cover: std::sync::atomic::AtomicU64,
    /// A tick's assessment is under way (the next `Tick` waits for it rather than queueing
    /// another behind it).
    assessing: AtomicBool,
}

/// Every way a state change can start.
pub enum Input {
    Tick,
    /// A tick's assessment, done on the evaluation thread while commands were served.
    Assessed(Box<Assessment>),
    Command {
        rollout: String,
        actor: String,
        command: Command,
        /// The caller's `Idempotency-Key`: a repeat returns the first receipt.
        idempotency_key: Option<String>,
        reply: oneshot::Sender<Result<Receipt, InputError>>,
    },
    ResumeWorkflow {
        workflow: String,
        actor: String,
        reason: String,
        ack: bool,
        reply: oneshot::Sender<Result<Receipt, InputError>>,
    },
    Reload {
        actor: String,
        /// Remove rollouts still in containment (admin only).
        force: bool,
        reply: Option<oneshot::Sender<Result<Reloaded, InputError>>>,
    },
    /// The replica threads' news: promotion, demotion, a refresh, forwarded commands.
    Wake(Wake),
    /// One round of metrics-source answers (`serve::prometheus::run_sources`).
    SourceRound(Vec<crate::core::source::SourceAnswer>),
    Shutdown,
}

/// What a tick's evaluation found: the decisions due and every rollout's verdicts (with the
/// revision they were computed at), under one engine generation (one config).
pub struct Assessment {
    now: Millis,
    generation: u64,
    due: Vec<Pending>,
    verdicts: Vec<Option<(u64, Vec<GateVerdict>)>>,
}

/// The outcome of one ingest batch.
#[derive(Debug, Default, serde::Serialize)]
pub struct IngestOutcome {
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: Vec<Rejected>,
}

/// Why a whole ingest request failed (single bad items are [`Rejected`] instead).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{0}")]
    Body(String),
    #[error("{0}")]
    Store(String),
}

#[derive(Debug, serde::Serialize)]
pub struct Rejected {
    pub index: usize,
    pub error: String,
}

impl Shared {
    /// Opens the store, rebuilds state from it, and returns the shared state plus the receiving
    /// end of the controller's input channel. Blocking: call it off the async threads.
    ///
    /// A config that differs from the one the stored states were decided under is a
    /// reconfigure like a reload's, receipted before anything is served; `force` allows it to
    /// remove contained rollouts (as `?force=true` does for a reload).
    ///
    /// On a PostgreSQL store the process starts as a follower, serving the stored states; its
    /// election thread makes it the decider if no other replica is.
    pub fn start(
        plan: Plan,
        config_path: PathBuf,
        force: bool,
    ) -> anyhow::Result<(Arc<Shared>, mpsc::Receiver<Input>)> {
        match plan.server.store.clone() {
            StorePlan::Embedded => {
                let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open_with_cache(
                    &plan.server.data_dir,
                    plan.server.store_cache_bytes,
                )?);
                let clock = Arc::new(crate::core::clock::SteadyClock::anchored(
                    store.clock_high_water()?,
                ));
                Shared::start_with(plan, config_path, clock, store, force)
            }
            StorePlan::Postgres { url_env } => {
                let url = std::env::var(&url_env).map_err(|_| {
                    anyhow::anyhow!(
                        "server.store.url_env names `{url_env}`, which is not set: set it to the database URL (postgres://user:password@host:5432/database)"
                    )
                })?;
                let name = replica_name();
                let pg = Arc::new(PostgresStore::open(&url, &name)?);
                let clock: Arc<dyn Clock> = Arc::new(crate::core::clock::SteadyClock::anchored(
                    pg.clock_high_water()?,
                ));
                let store: Arc<dyn Store> = pg.clone();
                let plan = Arc::new(plan);
                let follower =
                    FollowerEngine::read(&pg, plan.clone(), clock.now(), &HashMap::new())?;
                let engine = follower.engine;
                let replica = Arc::new(Replica::new(name, pg, clock.clone()));
                replica.hold(follower.held);
                let (shared, inputs) = Shared::build(
                    plan,
                    config_path,
                    clock,
                    store,
                    engine,
                    Some(replica.clone()),
                    force,
                )?;
                shared
                    .metrics
                    .checkpoint_reads(&replica.name, follower.read);
                Ok((shared, inputs))
            }
        }
    }

    /// Like [`Shared::start`] with an already opened store (benchmarks turn durability off):
    /// this process decides alone.
    pub fn start_with(
        plan: Plan,
        config_path: PathBuf,
        clock: Arc<dyn Clock>,
        store: Arc<dyn Store>,
        force: bool,
    ) -> anyhow::Result<(Arc<Shared>, mpsc::Receiver<Input>)> {
        let plan = Arc::new(plan);
        let engine = take_over(&*store, plan.clone(), force, clock.now())?;
        Shared::build(plan, config_path, clock, store, engine, None, force)
    }

    fn build(
        plan: Arc<Plan>,
        config_path: PathBuf,
        clock: Arc<dyn Clock>,
        store: Arc<dyn Store>,
        engine: Engine,
        replica: Option<Arc<Replica>>,
        force: bool,
    ) -> anyhow::Result<(Arc<Shared>, mpsc::Receiver<Input>)> {
        let now = clock.now();
        let metrics = Metrics::new();
        metrics.init_series(&plan);
        metrics.observe(&engine, now);
        metrics.leader(
            replica.as_ref().map_or("local", |r| r.name.as_str()),
            replica.is_none(),
        );
        let snapshot = Snapshot::build(&engine, &metrics);
        let (tx, rx) = mpsc::channel(64);
        let (writer, jobs) = std::sync::mpsc::channel();
        let body_budget = BodyBudget::new(plan.server.max_inflight_body_bytes);
        let shared = Arc::new(Shared {
            body_budget,
            writer,
            snapshot: ArcSwap::from_pointee(snapshot),
            tokens: ArcSwap::from_pointee(Tokens::from_plan(&plan)),
            plan: ArcSwap::new(plan),
            engine: Mutex::new(engine),
            store,
            metrics,
            clock,
            config_path,
            inputs: tx,
            ready: AtomicBool::new(true),
            notify_wake: tokio::sync::Notify::new(),
            replica,
            force,
            ui: crate::serve::ui::state::Ui::default(),
            evaluator: Evaluator::start()?,
            checkpoints_cover: std::sync::atomic::AtomicU64::new(0),
            assessing: AtomicBool::new(false),
        });
        let (committed_tx, committed) = std::sync::mpsc::sync_channel(2);
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || run_writer(&weak, &jobs, &committed_tx))?;
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("evidence-recorder".into())
            .spawn(move || run_recorder(&weak, &committed))?;
        Ok((shared, rx))
    }

    /// Whether this process decides: always on an embedded store; on a shared one, while it
    /// holds the leader lock and has taken over.
    pub fn is_leader(&self) -> bool {
        self.replica.as_ref().is_none_or(|r| r.is_leader())
    }

    /// Starts the replica threads (election and change listener) and the task that hands
    /// their wake-ups to the controller loop. Nothing on an embedded store.
    pub fn start_replication(self: &Arc<Self>) -> anyhow::Result<()> {
        let Some(replica) = self.replica.clone() else {
            return Ok(());
        };
        let (wakes, mut woken) = mpsc::channel(16);
        let (r, w) = (replica.clone(), wakes.clone());
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("leader-election".into())
            .spawn(move || {
                let tick = move || {
                    let ms = weak.upgrade().map_or(1_000, |s| s.plan.load().server.tick);
                    std::time::Duration::from_millis(ms.clamp(20, 1_000))
                };
                run_election(&r, &w, &tick);
            })?;
        std::thread::Builder::new()
            .name("change-listener".into())
            .spawn(move || run_listener(&replica, &wakes))?;
        let inputs = self.inputs.clone();
        tokio::spawn(async move {
            while let Some(wake) = woken.recv().await {
                if inputs.send(Input::Wake(wake)).await.is_err() {
                    return;
                }
            }
        });
        Ok(())
    }

    /// The engine, its evidence complete: every acknowledged event in it (the recorder's
    /// deferred tasks applied first).
    pub fn engine(&self) -> MutexGuard<'_, Engine> {
        let mut engine = self.engine_as_is();
        if engine.has_deferred() {
            engine.apply_deferred();
        }
        engine
    }

    /// The engine with the recorder's deferred tasks still held back: for routing and
    /// recording, which read no evidence. Applying them at every batch would give back what
    /// deferring them saves.
    fn engine_as_is(&self) -> MutexGuard<'_, Engine> {
        // A panic while holding the lock would poison it; the engine's state is still the last
        // consistent one (mutations are single assignments), so keep serving.
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serving, and the store commits.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && self.store.is_healthy()
    }

    /// Validates, deduplicates and durably stores a batch, then adds it to evidence.
    pub async fn ingest(self: &Arc<Self>, body: &Bytes) -> Result<IngestOutcome, IngestError> {
        let parsed = parse_batch(body).map_err(IngestError::Body)?;
        let mut outcome = IngestOutcome::default();
        let mut unknown_rejects = 0;
        // One pass, in the body's order (so rejections come out sorted): each item routed
        // under the lock and moved once, into the batch the store keeps, with its text as the
        // application wrote it. Each routed item notes its workflow's position, which indexes
        // the event counters of the same plan.
        let mut items = Vec::with_capacity(parsed.len());
        let mut routes = Vec::with_capacity(parsed.len());
        let mut workflows = Vec::with_capacity(parsed.len());
        let generation;
        let counters;
        {
            let engine = self.engine_as_is();
            generation = engine.generation;
            let snapshot = self.snapshot.load();
            counters = if snapshot.generation == generation {
                Arc::clone(&snapshot.events)
            } else {
                Arc::new(Snapshot::event_counters(&engine, &self.metrics))
            };
            for (index, item) in parsed.into_iter().enumerate() {
                let (event, text) = match item {
                    Ok(valid) => valid,
                    Err(error) => {
                        unknown_rejects += 1;
                        outcome.rejected.push(Rejected { index, error });
                        continue;
                    }
                };
                let (workflow, route) = engine.locate(&event);
                match route {
                    Ok(route) => {
                        let stored = route.scope(&engine).map(|(scope, epoch)| StoredBody {
                            scope,
                            epoch,
                            body: within(body, text.as_bytes()),
                        });
                        items.push(BatchItem { event, stored });
                        routes.push(route);
                        // A routed event's workflow is in the plan; `MAX` indexes no counter.
                        workflows.push(workflow.unwrap_or(usize::MAX));
                    }
                    Err(error) => {
                        match workflow.and_then(|w| counters.get(w)) {
                            Some(c) => c.add(EventOutcome::Rejected, 1),
                            None => unknown_rejects += 1,
                        }
                        outcome.rejected.push(Rejected { index, error });
                    }
                }
            }
        }
        self.metrics
            .events(UNKNOWN_WORKFLOW, EventOutcome::Rejected, unknown_rejects);
        if items.is_empty() {
            return Ok(outcome);
        }
        let now = self.clock.now();
        let (reply, done) = oneshot::channel();
        let stopped = || IngestError::Store("the store writer stopped".into());
        self.writer
            .send(IngestJob {
                items,
                routes,
                generation,
                now,
                reply,
            })
            .map_err(|_| stopped())?;
        // The writer has recorded the new events into evidence when it replies.
        let Recorded { fresh, items } = done
            .await
            .map_err(|_| stopped())?
            .map_err(IngestError::Store)?;
        // Freed on this thread, which allocated them (see `Recorded`).
        drop(items);
        // Per workflow, how many were new and how many duplicates.
        let mut tally: FxHashMap<usize, [u64; 2]> = FxHashMap::default();
        for (i, &workflow) in workflows.iter().enumerate() {
            let new = fresh.get(i).copied().unwrap_or(false);
            tally.entry(workflow).or_default()[usize::from(!new)] += 1;
        }
        for (workflow, [accepted, duplicates]) in tally {
            outcome.accepted += accepted;
            outcome.duplicates += duplicates;
            if let Some(c) = counters.get(workflow) {
                c.add(EventOutcome::Accepted, accepted);
                c.add(EventOutcome::Duplicate, duplicates);
            }
        }
        Ok(outcome)
    }

    /// Publishes the routing snapshot and gauges after the engine was replaced or rebuilt.
    fn publish(&self, engine: &Engine) {
        self.metrics.observe(engine, self.clock.now());
        self.snapshot
            .store(Arc::new(Snapshot::build(engine, &self.metrics)));
    }

    /// Publishes what one applied decision changed: its rollout's gauges (or its workflow's
    /// read-only gauge) and its workflow's route. The cost is one rollout's, not the fleet's.
    fn publish_change(&self, engine: &Engine, pending: &Pending) {
        let workflow = match pending {
            Pending::Rollout { index, .. } => {
                let (Some(plan), Some(rt)) = (
                    engine.plan.rollouts.get(*index),
                    engine.rollouts.get(*index),
                ) else {
                    return self.publish(engine);
                };
                let verdicts = crate::core::rollout::verdicts(plan, &rt.state, &rt.evidence);
                self.metrics
                    .observe_rollout(engine, *index, self.clock.now(), &verdicts);
                plan.workflow.as_str()
            }
            Pending::Guard { index, .. } => {
                let Some(guard) = engine.guards.get(*index) else {
                    return self.publish(engine);
                };
                self.metrics.observe_workflow(engine, &guard.workflow);
                guard.workflow.as_str()
            }
        };
        let next = match engine.workflow_position(workflow) {
            Some(w) => self.snapshot.load().patched(engine, &self.metrics, w),
            None => Snapshot::build(engine, &self.metrics),
        };
        self.snapshot.store(Arc::new(next));
    }

    /// Every rollout's verdicts and the decisions due at `now`, taking the engine lock for one
    /// rollout at a time: ingestion and commands interleave with the evaluation instead of
    /// waiting for all of it. Runs on the evaluation thread; a reload meanwhile (another
    /// generation) ends it early, and the controller then drops it.
    fn assess_all(&self, now: Millis) -> Assessment {
        let (count, generation) = {
            let engine = self.engine();
            (engine.rollouts.len(), engine.generation)
        };
        let mut due = Vec::new();
        let mut verdicts = Vec::with_capacity(count);
        for index in 0..count {
            let engine = self.engine();
            if engine.generation != generation || index >= engine.rollouts.len() {
                break;
            }
            let (pending, v) = engine.step_rollout(index, now);
            verdicts.push(Some((engine.rollouts[index].revision, v)));
            drop(engine);
            due.extend(pending);
            yield_to_requests();
        }
        due.extend(self.engine().step_guards(now));
        Assessment {
            now,
            generation,
            due,
            verdicts,
        }
    }

    /// After a tick's decisions: every rollout's gauges (from the tick's verdicts), the UI's
    /// history and the checkpoints of changed evidence, one rollout per lock. Checkpoints are
    /// written [`CHECKPOINT_CHUNK`] at a time, so a tick after heavy ingestion never holds a
    /// copy of the whole fleet's evidence. Runs on the evaluation thread.
    /// A rollout whose verdicts are missing or stale (a decision changed it since) has them
    /// computed here. After a reload (another generation) it stops: the next tick observes.
    fn observe_all(&self, assessed: &Assessment) {
        let now = assessed.now;
        // Every event up to here is in the evidence of a scope now dirty or already
        // checkpointed: once this pass's checkpoints are all written, the store covers it.
        let (count, covers) = {
            let engine = self.engine();
            if engine.generation != assessed.generation {
                return;
            }
            self.metrics.forget_removed(&engine);
            self.ui.history.forget_removed(&engine);
            (engine.rollouts.len(), engine.recorded_seq)
        };
        let mut checkpoints = Vec::new();
        let mut written = true;
        for i in 0..count {
            let mut engine = self.engine();
            if engine.generation != assessed.generation || i >= engine.rollouts.len() {
                written = false;
                break;
            }
            let revision = engine.rollouts[i].revision;
            match assessed
                .verdicts
                .get(i)
                .and_then(Option::as_ref)
                .filter(|(at, _)| *at == revision)
            {
                Some((_, v)) => self.metrics.observe_rollout(&engine, i, now, v),
                None => {
                    let v = crate::core::rollout::verdicts(
                        &engine.plan.rollouts[i],
                        &engine.rollouts[i].state,
                        &engine.rollouts[i].evidence,
                    );
                    self.metrics.observe_rollout(&engine, i, now, &v);
                }
            }
            self.ui.history.record_rollout(&engine, i, now);
            checkpoints.extend(engine.take_checkpoint(i));
            drop(engine);
            if checkpoints.len() >= CHECKPOINT_CHUNK {
                written &= self.put_checkpoints(std::mem::take(&mut checkpoints), None);
            }
            yield_to_requests();
        }
        {
            let mut engine = self.engine();
            self.metrics.observe_workflows(&engine);
            checkpoints.extend(engine.take_guard_checkpoints());
        }
        self.put_checkpoints(checkpoints, written.then_some(covers));
    }

    /// Writes evidence checkpoints (blocking), with what they cover if this ends a complete
    /// pass; on failure their scopes stay dirty, so the next tick writes them again. Returns
    /// whether they were written.
    fn put_checkpoints(&self, checkpoints: Vec<(String, Checkpoint)>, covers: Option<u64>) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let covers = covers.filter(|&seq| seq > self.checkpoints_cover.load(Relaxed));
        if checkpoints.is_empty() && covers.is_none() {
            return true;
        }
        match self.store.put_checkpoints(&checkpoints, covers) {
            Ok(()) => {
                if let Some(seq) = covers {
                    self.checkpoints_cover.fetch_max(seq, Relaxed);
                }
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "evidence checkpoints not written; retried next tick");
                let mut engine = self.engine();
                for (scope, _) in &checkpoints {
                    engine.mark_dirty(scope);
                }
                false
            }
        }
    }

    /// Sends an input to the controller loop and waits for its reply.
    pub async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, InputError>>) -> Input,
    ) -> Result<T, InputError> {
        let (tx, rx) = oneshot::channel();
        self.inputs
            .send(make(tx))
            .await
            .map_err(|_| InputError::ShuttingDown)?;
        rx.await.map_err(|_| InputError::ShuttingDown)?
    }
}

/// This replica's name: `STAGEGATE_REPLICA`, else `host-pid`.
fn replica_name() -> String {
    std::env::var("STAGEGATE_REPLICA")
        .ok()
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| {
            let uname = rustix::system::uname();
            format!(
                "{}-{}",
                uname.nodename().to_string_lossy(),
                std::process::id()
            )
        })
}

/// Records a stored event into evidence if it belongs to its scope's current epoch.
fn record_stored(engine: &mut Engine, stored: &StoredEvent) {
    if let Ok(route) = engine.route(&stored.event) {
        if route
            .scope(engine)
            .is_some_and(|(s, e)| *s == *stored.scope && e == stored.epoch)
        {
            engine.record(&route, &stored.event);
        }
    }
}

/// Becomes the decider: reconciles the stored states with `plan` (each change receipted),
/// then rebuilds evidence from each scope's checkpoint and the events stored after it, up to
/// the store's last event. Blocking.
fn take_over(
    store: &dyn Store,
    plan: Arc<Plan>,
    force: bool,
    now: crate::core::clock::Millis,
) -> anyhow::Result<Engine> {
    let (stored, stored_guards) = store.states()?;
    let reconciled = Engine::reconcile(None, plan.clone(), &stored, &stored_guards, force, now)
        .map_err(|e| anyhow::anyhow!("{e} (start with `serve --force` to remove them)"))?;
    let mut engine = reconciled.engine;
    for (i, decision) in &reconciled.decisions {
        let mut receipt = engine.receipt(*i, decision, now);
        receipt.previous_config_hash = Some("(stored state)".into());
        store.commit(
            &Change::Rollout {
                name: &plan.rollouts[*i].name,
                state: &decision.after,
            },
            &mut receipt,
            &|r: &Receipt| crate::core::notice::outbox_for(&plan, r, now),
        )?;
        engine.apply(*i, decision);
        tracing::info!(receipt = %receipt.id, rollout = %receipt.rollout, reason = %receipt.reason, changes = ?receipt.changes, "reconfigured on taking over");
    }
    for (name, decision) in &reconciled.removed {
        let mut receipt = engine.removal_receipt(name, decision, now);
        store.commit(
            &Change::Rollout {
                name,
                state: &decision.after,
            },
            &mut receipt,
            &|_: &Receipt| Vec::new(),
        )?;
        tracing::warn!(receipt = %receipt.id, rollout = %name, "rollout removed from the config on taking over");
    }
    // Evidence: each scope's checkpoint, then only the events stored after it — and after
    // what every checkpoint covers — up to a watermark read first, so events committed
    // meanwhile are left for the next pull. One pass over the stored events for all scopes.
    let through = store.last_seq()?;
    let covered = store.checkpoints_cover()?;
    let mut restored = 0usize;
    let mut wanted = Vec::new();
    for (scope, epoch) in engine.scopes() {
        let after = match store.checkpoint(&scope)? {
            Some(cp) => {
                let seq = cp.seq;
                if engine.restore(&scope, cp) {
                    restored += 1;
                    seq.max(covered)
                } else {
                    // Of another epoch or shape: this epoch's events rebuild the evidence.
                    0
                }
            }
            None => covered,
        };
        wanted.push((scope, epoch, after));
    }
    let replayed = store.replay_scopes(&wanted, through, &mut |stored| {
        record_stored(&mut engine, &stored);
    })?;
    engine.recorded_seq = through;
    tracing::info!(store = %store.location(), restored, replayed, "store opened");
    Ok(engine)
}

/// A follower's engine, built from the database: the stored states, and each scope's last
/// checkpoint (so its status shows the leader's statistics as of the last tick).
struct FollowerEngine {
    engine: Engine,
    /// Scopes whose checkpoint has the digest the current engine holds: not read again, their
    /// evidence is to be moved over from the current engine ([`FollowerEngine::carry`]).
    carried: Vec<String>,
    /// The digest of each checkpoint the engine holds once carried.
    held: HashMap<String, String>,
    /// How many checkpoints were read.
    read: u64,
}

impl FollowerEngine {
    /// Reads the states, and the checkpoints whose digest differs from `held` (what the
    /// current engine holds as read: a follower records nothing of its own). At a thousand
    /// rollouts reading and decoding every checkpoint is some 20 MB of JSON per refresh, and a
    /// refresh follows every change the leader announces. Blocking.
    fn read(
        store: &PostgresStore,
        plan: Arc<Plan>,
        now: Millis,
        held: &HashMap<String, String>,
    ) -> Result<FollowerEngine, StoreError> {
        let digests = store.checkpoint_digests()?;
        let (stored, stored_guards) = store.states()?;
        let mut engine = Engine::new(plan, stored, stored_guards, now);
        let (mut carried, mut now_held, mut read) = (Vec::new(), HashMap::new(), 0);
        for (scope, _) in engine.scopes() {
            let Some(digest) = digests.get(&scope) else {
                continue;
            };
            if held.get(&scope) == Some(digest) {
                carried.push(scope.clone());
                now_held.insert(scope, digest.clone());
            } else if let Some(cp) = store.checkpoint(&scope)? {
                read += 1;
                // Read after its digest: if it changed in between, the next refresh reads it
                // again.
                if engine.restore(&scope, cp) {
                    now_held.insert(scope, digest.clone());
                }
            }
        }
        Ok(FollowerEngine {
            engine,
            carried,
            held: now_held,
            read,
        })
    }

    /// Moves the carried scopes' evidence from `current` (about to be replaced), where the
    /// checkpoint still fits the new engine's epoch and shape, as [`Engine::restore`] checks.
    fn carry(&mut self, current: &mut Engine) {
        for scope in &self.carried {
            let kept = current
                .take_evidence(scope)
                .is_some_and(|cp| self.engine.restore(scope, cp));
            if !kept {
                self.held.remove(scope);
            }
        }
    }
}

/// A batch waiting for the writer thread.
struct IngestJob {
    items: Vec<BatchItem>,
    /// Where each item's evidence goes, as routed under `generation`.
    routes: Vec<crate::core::engine::Route>,
    generation: u64,
    now: crate::core::clock::Millis,
    reply: oneshot::Sender<Result<Recorded, String>>,
}

/// A batch the recorder is done with: which items were new, and the items themselves, handed
/// back so the request's thread frees them (a free on the thread that allocated is cheaper).
struct Recorded {
    fresh: Vec<bool>,
    items: Vec<BatchItem>,
}

/// Most batches one group commit takes.
const GROUP_COMMIT_MAX: usize = 64;

/// Checkpoints written per store transaction during a tick.
const CHECKPOINT_CHUNK: usize = 64;

/// Between two rollouts' evaluation: a request thread waiting for the CPU runs now, not at the
/// end of the evaluation thread's time slice (a lower priority alone does not preempt it at
/// once). About a microsecond per rollout when nobody waits.
fn yield_to_requests() {
    std::thread::yield_now();
}

/// A group commit the store accepted, on its way to the recorder: its jobs, which items of
/// each were new, and the last event number the commit assigned.
struct Committed {
    group: Vec<IngestJob>,
    results: Vec<Vec<bool>>,
    last_seq: u64,
}

/// The writer thread: takes one batch, then every batch already waiting (up to
/// [`GROUP_COMMIT_MAX`]), and commits them in one transaction — one fsync for all — then hands
/// the commit to the recorder and takes the next group while it records. A failed commit is
/// answered here: nothing in it was acknowledged or recorded.
fn run_writer(
    shared: &std::sync::Weak<Shared>,
    jobs: &std::sync::mpsc::Receiver<IngestJob>,
    committed: &std::sync::mpsc::SyncSender<Committed>,
) {
    while let Ok(first) = jobs.recv() {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut group = vec![first];
        while group.len() < GROUP_COMMIT_MAX {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let now = group.iter().map(|j| j.now).max().unwrap_or(0);
        let batches: Vec<&[BatchItem]> = group.iter().map(|j| j.items.as_slice()).collect();
        match shared.store.ingest_groups(&batches, now) {
            Ok((results, last_seq)) => {
                drop(shared);
                let commit = Committed {
                    group,
                    results,
                    last_seq,
                };
                if committed.send(commit).is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "group commit failed; nothing in it was acknowledged");
                let message = e.to_string();
                for job in group {
                    let _ = job.reply.send(Err(message.clone()));
                }
            }
        }
    }
}

/// The recorder thread: records each commit's new events into evidence, in commit order, and
/// only then acknowledges its batches — so the engine's `recorded_seq` is an exact watermark
/// for checkpoints, and an acknowledged event is in the evidence the next tick reads. It runs
/// while the writer commits the next group (and waits on its fsync). A rollout's events are
/// deferred (`Engine::defer_routed`): applied a few at a time, or by the next
/// [`Shared::engine`], which every reader of evidence takes.
fn run_recorder(
    shared: &std::sync::Weak<Shared>,
    committed: &std::sync::mpsc::Receiver<Committed>,
) {
    while let Ok(Committed {
        group,
        results,
        last_seq,
    }) = committed.recv()
    {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        // On a shared store the leader pulls every replica's events from the database
        // instead (see `pull_events`): recording here too would count them twice.
        if shared.replica.is_none() {
            let mut engine = shared.engine_as_is();
            for (job, fresh) in group.iter().zip(&results) {
                for ((item, route), new) in job.items.iter().zip(&job.routes).zip(fresh) {
                    // Untracked events (no scope) are stored for dedupe only.
                    if let (true, Some(stored)) = (*new, &item.stored) {
                        engine.defer_routed(
                            route,
                            job.generation,
                            (&stored.scope, stored.epoch),
                            &item.event,
                        );
                    }
                }
            }
            engine.recorded_seq = engine.recorded_seq.max(last_seq);
        }
        for (job, fresh) in group.into_iter().zip(results) {
            let _ = job.reply.send(Ok(Recorded {
                fresh,
                items: job.items,
            }));
        }
    }
}

/// Persists a receipt with its state change off the async threads.
async fn persist(
    shared: &Arc<Shared>,
    change: StateChange,
    mut receipt: Receipt,
) -> Result<Receipt, InputError> {
    let s = Arc::clone(shared);
    tokio::task::spawn_blocking(move || {
        let borrowed = match &change {
            StateChange::Rollout(name, state) => Change::Rollout { name, state },
            StateChange::Guard(workflow, state) => Change::Guard { workflow, state },
        };
        let plan = s.plan.load_full();
        let now = s.clock.now();
        s.store
            .commit(&borrowed, &mut receipt, &|r: &Receipt| {
                crate::core::notice::outbox_for(&plan, r, now)
            })
            .map(|()| receipt)
    })
    .await
    .map_err(|_| InputError::ShuttingDown)?
    .map_err(|e| {
        // A newer term exists: this replica lost the lock, whether or not its session knows.
        if let (StoreError::Fenced { .. }, Some(replica)) = (&e, &shared.replica) {
            replica.resign();
        }
        InputError::from(e)
    })
    .inspect(|_| shared.notify_wake.notify_one())
}

/// The one path of every decision, automatic or an operator's, on a rollout or a guard:
/// receipt → persist (state, receipt and outbox in one transaction) → apply → publish → metrics.
async fn commit(
    shared: &Arc<Shared>,
    pending: Pending,
    idempotency_key: Option<String>,
) -> Result<Receipt, InputError> {
    let now = shared.clock.now();
    let (change, mut receipt) = {
        let engine = shared.engine();
        (
            engine.state_change(&pending),
            engine.pending_receipt(&pending, now),
        )
    };
    receipt.idempotency_key = idempotency_key;
    let receipt = persist(shared, change, receipt).await?;
    {
        let mut engine = shared.engine();
        engine.apply_pending(&pending);
        shared.publish_change(&engine, &pending);
    }
    shared.metrics.decision(&receipt);
    tracing::info!(receipt = %receipt.id, rollout = %receipt.rollout, workflow = %receipt.workflow, action = receipt.action.name(), reason = %receipt.reason, "decision");
    Ok(receipt)
}

/// Starts a tick: on a shared store the leader first pulls the events every replica committed
/// since the last one; then every rollout and guard is assessed on the evaluation thread, and
/// the result comes back as [`Input::Assessed`]. The controller serves commands meanwhile, so
/// an operator never waits for an evaluation.
fn start_tick(shared: &Arc<Shared>) {
    if shared.assessing.swap(true, Ordering::AcqRel) {
        return; // the last tick's assessment is still running
    }
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        if let Some(replica) = &shared.replica {
            if let Err(e) = pull_events(&shared, replica).await {
                tracing::warn!(error = %e, "could not read new events; no decision this tick");
                shared.assessing.store(false, Ordering::Release);
                return;
            }
        }
        let now = shared.clock.now();
        // The evaluation runs on its own low-priority thread, one rollout per engine lock: no
        // request worker, no request's lock and no command waits behind it.
        let s = Arc::clone(&shared);
        match shared.evaluator.run(move || s.assess_all(now)).await {
            Some(assessed) => {
                let _ = shared
                    .inputs
                    .send(Input::Assessed(Box::new(assessed)))
                    .await;
            }
            None => {
                tracing::error!("the evaluation thread failed; no decision this tick");
                shared.assessing.store(false, Ordering::Release);
            }
        }
    });
}

/// Ends a tick: commits the decisions still due (a command or a reload since the assessment
/// makes a decision stale; the next tick assesses again), then hands the gauges, the UI's
/// history and the checkpoints to the evaluation thread without waiting for them.
async fn finish_tick(shared: &Arc<Shared>, mut assessed: Assessment) {
    shared.assessing.store(false, Ordering::Release);
    for pending in std::mem::take(&mut assessed.due) {
        let current = {
            let engine = shared.engine();
            engine.generation == assessed.generation && engine.still_due(&pending)
        };
        if !current {
            tracing::debug!(
                "a decision went stale while it was assessed; the next tick assesses again"
            );
            continue;
        }
        if let Pending::Rollout { index, .. } = &pending {
            // A decision changes what the gates look at: observe_all computes its rollout's
            // verdicts again, on the evaluation thread.
            if let Some(slot) = assessed.verdicts.get_mut(*index) {
                *slot = None;
            }
        }
        if let Err(e) = commit(shared, pending, None).await {
            tracing::error!(error = %e, "could not persist a decision; it will be retried next tick");
        }
    }
    let s = Arc::clone(shared);
    shared.evaluator.submit(move || s.observe_all(&assessed));
}

/// The leader's cursor over the shared event table: records, in commit order, every event
/// any replica committed after the engine's watermark.
async fn pull_events(shared: &Arc<Shared>, replica: &Arc<Replica>) -> Result<(), InputError> {
    const PAGE: usize = 20_000;
    loop {
        let after = shared.engine().recorded_seq;
        let store = Arc::clone(&replica.store);
        let page = tokio::task::spawn_blocking(move || store.events_after(after, PAGE))
            .await
            .map_err(|_| InputError::ShuttingDown)??;
        let full = page.len() == PAGE;
        {
            let mut engine = shared.engine();
            for (seq, stored) in &page {
                if *seq > engine.recorded_seq {
                    record_stored(&mut engine, stored);
                    engine.recorded_seq = *seq;
                }
            }
        }
        if !full {
            return Ok(());
        }
    }
}

/// What a reload did.
#[derive(Debug, serde::Serialize)]
pub struct Reloaded {
    pub receipts: Vec<Receipt>,
    /// Settings that changed in the file but only take effect at the next start.
    pub needs_restart: Vec<String>,
}

/// Server settings that a running process cannot change: the running values stay in the plan
/// (so it tells the truth), and each difference is reported as needing a restart.
fn keep_restart_only(running: &Plan, next: &mut Plan) -> Vec<String> {
    let (old, new) = (&running.server, &mut next.server);
    let mut out = Vec::new();
    let mut keep = |key: &str, before: String, after: String| {
        if before != after {
            out.push(format!(
                "server.{key}: {before} → {after} (needs a restart; still {before})"
            ));
        }
    };
    keep("listen", old.listen.clone(), new.listen.clone());
    keep(
        "data_dir",
        old.data_dir.display().to_string(),
        new.data_dir.display().to_string(),
    );
    keep(
        "max_body_bytes",
        old.max_body_bytes.to_string(),
        new.max_body_bytes.to_string(),
    );
    keep(
        "max_inflight_body_bytes",
        old.max_inflight_body_bytes.to_string(),
        new.max_inflight_body_bytes.to_string(),
    );
    keep(
        "store_cache_bytes",
        old.store_cache_bytes.to_string(),
        new.store_cache_bytes.to_string(),
    );
    keep(
        "max_connections",
        old.max_connections.to_string(),
        new.max_connections.to_string(),
    );
    keep(
        "header_timeout",
        crate::core::clock::human_duration(old.header_timeout),
        crate::core::clock::human_duration(new.header_timeout),
    );
    keep(
        "idle_timeout",
        crate::core::clock::human_duration(old.idle_timeout),
        crate::core::clock::human_duration(new.idle_timeout),
    );
    keep("store", old.store.to_string(), new.store.to_string());
    new.store.clone_from(&old.store);
    new.listen.clone_from(&old.listen);
    new.data_dir.clone_from(&old.data_dir);
    new.max_body_bytes = old.max_body_bytes;
    new.max_inflight_body_bytes = old.max_inflight_body_bytes;
    new.max_connections = old.max_connections;
    new.store_cache_bytes = old.store_cache_bytes;
    new.header_timeout = old.header_timeout;
    new.idle_timeout = old.idle_timeout;
    out
}

/// Reloads the config file: validate, reconcile, persist every receipt, then swap the engine.
/// A crash part-way leaves each rollout either on its old policy or on its new one with its
/// receipt; the next start reconciles the rest by the same rules.
async fn reload(shared: &Arc<Shared>, actor: &str, force: bool) -> Result<Reloaded, InputError> {
    let mut plan = Plan::load(&shared.config_path)?;
    let running = shared.plan.load_full();
    let needs_restart = keep_restart_only(&running, &mut plan);
    let now = shared.clock.now();
    let store = Arc::clone(&shared.store);
    let (stored, stored_guards) = tokio::task::spawn_blocking(move || store.states())
        .await
        .map_err(|_| InputError::ShuttingDown)??;
    let plan = Arc::new(plan);
    let reconciled = {
        let engine = shared.engine();
        Engine::reconcile(
            Some(&engine),
            plan.clone(),
            &stored,
            &stored_guards,
            force,
            now,
        )?
    };
    let mut next = reconciled.engine;
    let mut receipts = Vec::new();
    for (i, mut decision) in reconciled.decisions {
        decision.actor = crate::core::rollout::Actor::Operator(actor.to_string());
        let mut receipt = next.receipt(i, &decision, now);
        receipt.previous_config_hash = Some(running.hash.clone());
        let change = StateChange::Rollout(plan.rollouts[i].name.clone(), decision.after.clone());
        receipts.push(persist(shared, change, receipt).await?);
        next.apply(i, &decision);
    }
    for (name, mut decision) in reconciled.removed {
        decision.actor = crate::core::rollout::Actor::Operator(actor.to_string());
        let mut receipt = next.removal_receipt(&name, &decision, now);
        receipt.previous_config_hash = Some(running.hash.clone());
        let change = StateChange::Rollout(name, decision.after.clone());
        receipts.push(persist(shared, change, receipt).await?);
    }
    {
        let mut engine = shared.engine();
        next.carry_evidence(&engine);
        *engine = next;
        shared.plan.store(plan.clone());
        shared.tokens.store(Arc::new(Tokens::from_plan(&plan)));
        shared.metrics.init_series(&plan);
        shared.publish(&engine);
    }
    for receipt in &receipts {
        shared.metrics.decision(receipt);
    }
    for line in &needs_restart {
        tracing::warn!(setting = %line, "config reload: setting needs a restart");
    }
    tracing::info!(config = %plan.hash, reconfigured = receipts.len(), "config reloaded");
    Ok(Reloaded {
        receipts,
        needs_restart,
    })
}

/// A containment's affected list: the containment receipt (`receipt`, or the rollout's latest
/// containment) and every task the candidate served in full mode in its exposure epoch, with
/// the owner's tags. Blocking: reads the store.
pub fn affected_list(
    shared: &Shared,
    rollout: &str,
    receipt: Option<&str>,
) -> Result<(Receipt, Vec<AffectedItem>), InputError> {
    let plan = shared.plan.load_full();
    let rollout_plan = plan
        .rollout(rollout)
        .ok_or_else(|| InputError::UnknownRollout(rollout.to_string()))?;
    let containment = match receipt {
        Some(id) => shared
            .store
            .receipt(id)?
            .filter(|r| r.rollout == rollout && affected::opens_containment(r))
            .ok_or_else(|| {
                InputError::NoContainment(format!(
                    "receipt `{id}` is not a containment of `{rollout}`"
                ))
            })?,
        None => shared
            .store
            .receipts(Some(rollout), None, 1000)?
            .into_iter()
            .find(affected::opens_containment)
            .ok_or_else(|| {
                InputError::NoContainment(format!("`{rollout}` has had no containment"))
            })?,
    };
    let tags = shared.store.affected_tags(rollout, &containment.id)?;
    let mut items = Vec::new();
    shared.store.replay(
        rollout,
        affected::exposure_epoch(&containment),
        0,
        u64::MAX,
        &mut |stored| {
            if affected::is_affected(rollout_plan, &stored.event) {
                let tag = tags.get(stored.event.event_id.as_str());
                items.push(affected::item(rollout_plan, &stored.event, tag));
            }
        },
    )?;
    shared.metrics.affected(rollout, &affected::counts(&items));
    Ok((containment, items))
}

/// Affected items of the rollout's open containment still untagged or unclear (0 when the lane
/// does not ask for a review, or there is no open containment).
async fn unreviewed_affected(shared: &Arc<Shared>, rollout: &str) -> Result<u64, InputError> {
    let needed = {
        let engine = shared.engine();
        engine.rollout_index(rollout).is_some_and(|i| {
            engine.rollout_plan(i).lane.reenable.affected_reviewed
                && engine.rollouts[i].state.phase == crate::core::rollout::Phase::Probation
        })
    };
    if !needed {
        return Ok(0);
    }
    let (s, r) = (Arc::clone(shared), rollout.to_string());
    match tokio::task::spawn_blocking(move || affected_list(&s, &r, None)).await {
        Ok(Ok((_, items))) => Ok(affected::unreviewed(&items)),
        Ok(Err(InputError::NoContainment(_))) => Ok(0),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(InputError::ShuttingDown),
    }
}

/// The receipt an earlier action with this `Idempotency-Key` wrote: the same action returns
/// it unchanged; a different one is refused.
async fn first_result(
    shared: &Arc<Shared>,
    rollout: &str,
    key: String,
    command: &Command,
) -> Result<Option<Receipt>, InputError> {
    let store = Arc::clone(&shared.store);
    let (r, k) = (rollout.to_string(), key.clone());
    let found = tokio::task::spawn_blocking(move || store.receipt_by_key(&r, &k))
        .await
        .map_err(|_| InputError::ShuttingDown)??;
    match found {
        Some(receipt) if receipt.action == command.action() => Ok(Some(receipt)),
        Some(receipt) => Err(InputError::KeyReused {
            key,
            used: receipt.action.name().to_string(),
        }),
        None => Ok(None),
    }
}

/// An operator command on a rollout, on the decider: an earlier result for the same
/// `Idempotency-Key`, else the decision, committed.
async fn operate_rollout(
    shared: &Arc<Shared>,
    rollout: String,
    actor: &str,
    command: Command,
    idempotency_key: Option<String>,
) -> Result<Receipt, InputError> {
    if let Some(key) = idempotency_key.clone() {
        if let Some(receipt) = first_result(shared, &rollout, key, &command).await? {
            return Ok(receipt);
        }
    }
    // Leaving probation may need the affected list reviewed: count what is not.
    let unreviewed = match &command {
        Command::Resume { .. } => unreviewed_affected(shared, &rollout).await?,
        _ => 0,
    };
    let now = shared.clock.now();
    let pending = {
        let engine = shared.engine();
        let i = engine
            .rollout_index(&rollout)
            .ok_or(InputError::UnknownRollout(rollout))?;
        let decision = engine.operate(i, actor, &command, unreviewed, now)?;
        Pending::Rollout { index: i, decision }
    };
    commit(shared, pending, idempotency_key).await
}

/// An operator's resume of a guarded workflow, on the decider.
async fn resume_workflow(
    shared: &Arc<Shared>,
    workflow: String,
    actor: &str,
    reason: &str,
    ack: bool,
) -> Result<Receipt, InputError> {
    let now = shared.clock.now();
    let pending = {
        let engine = shared.engine();
        let i = engine
            .guard_index(&workflow)
            .ok_or(InputError::UnknownWorkflow(workflow))?;
        let decision = engine.resume_guard(i, actor, reason, ack, now)?;
        Pending::Guard { index: i, decision }
    };
    commit(shared, pending, None).await
}

/// The replica to forward through, when this process does not decide.
fn follower(shared: &Shared) -> Option<Arc<Replica>> {
    shared.replica.clone().filter(|r| !r.is_leader())
}

/// Hands a command to the leader through the database and replies with its answer, off the
/// controller loop (which must not wait on another replica).
fn forward(
    replica: Arc<Replica>,
    command: Forwarded,
    reply: oneshot::Sender<Result<Receipt, InputError>>,
) {
    tokio::spawn(async move {
        let answer = tokio::task::spawn_blocking(move || replica.forward(&command)).await;
        let result = match answer {
            Ok(Ok(Answer::Receipt(receipt))) => Ok(*receipt),
            Ok(Ok(Answer::Error(e))) => Err(InputError::Forwarded(e)),
            Ok(Err(crate::serve::replica::ForwardError::Store(e))) => Err(InputError::Store(e)),
            Ok(Err(e)) => Err(InputError::NoLeader(e.to_string())),
            Err(_) => Err(InputError::ShuttingDown),
        };
        let _ = reply.send(result);
    });
}

fn answer(result: Result<Receipt, InputError>) -> Answer {
    match result {
        Ok(receipt) => Answer::Receipt(Box::new(receipt)),
        Err(e) => Answer::Error(e.reply()),
    }
}

/// The leader applies the commands other replicas forwarded, oldest first, and writes each
/// answer. A command its sender gave up on is refused, not applied. One without an
/// `Idempotency-Key` gets `forwarded-ID`, so a leader change mid-command cannot apply it twice.
async fn apply_forwarded(shared: &Arc<Shared>, replica: &Arc<Replica>) {
    loop {
        let store = Arc::clone(&replica.store);
        let Ok(Ok(pending)) = tokio::task::spawn_blocking(move || store.pending_commands(32)).await
        else {
            return;
        };
        if pending.is_empty() {
            return;
        }
        for (id, age, body) in pending {
            if !replica.is_leader() {
                return;
            }
            let outcome = match serde_json::from_str::<Forwarded>(&body) {
                _ if age > COMMAND_EXPIRY_MS => Answer::Error(ForwardedError {
                    status: 504,
                    code: "expired".into(),
                    message: format!(
                        "the command waited {}s for a leader, longer than {}s; not applied — send it again",
                        age / 1000,
                        COMMAND_EXPIRY_MS / 1000
                    ),
                    details: Vec::new(),
                }),
                Ok(Forwarded::Rollout {
                    rollout,
                    actor,
                    command,
                    idempotency_key,
                }) => {
                    let key = idempotency_key.or_else(|| Some(format!("forwarded-{id}")));
                    answer(operate_rollout(shared, rollout, &actor, command, key).await)
                }
                Ok(Forwarded::ResumeWorkflow {
                    workflow,
                    actor,
                    reason,
                    ack,
                }) => answer(resume_workflow(shared, workflow, &actor, &reason, ack).await),
                Err(e) => Answer::Error(ForwardedError {
                    status: 400,
                    code: "bad_request".into(),
                    message: format!("a forwarded command does not decode: {e}"),
                    details: Vec::new(),
                }),
            };
            let Ok(text) = serde_json::to_string(&outcome) else {
                return;
            };
            let store = Arc::clone(&replica.store);
            let written =
                tokio::task::spawn_blocking(move || store.finish_command(id, &text)).await;
            if !matches!(written, Ok(Ok(()))) {
                return;
            }
        }
    }
}

/// Takes the decisions over after winning the lock under `term`.
async fn promote(shared: &Arc<Shared>, replica: &Arc<Replica>, term: u64) {
    let (store, plan) = (Arc::clone(&shared.store), shared.plan.load_full());
    let (force, now) = (shared.force, shared.clock.now());
    let taken = tokio::task::spawn_blocking(move || take_over(&*store, plan, force, now)).await;
    match taken {
        Ok(Ok(mut engine)) if replica.store.term() == term => {
            // The engine's evidence is its own from now on, not the checkpoints as read.
            replica.hold(HashMap::new());
            {
                let mut current = shared.engine();
                engine.generation = current.generation + 1;
                *current = engine;
                shared.publish(&current);
            }
            replica.set_leading(true);
            shared.metrics.leader(&replica.name, true);
            tracing::info!(replica = %replica.name, term, "this replica decides");
            apply_forwarded(shared, replica).await;
            shared.notify_wake.notify_one();
        }
        Ok(Ok(_)) => tracing::warn!(term, "the leader lock was lost while taking over"),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "could not take the decisions over; giving the leader lock up");
            replica.resign();
        }
        Err(_) => {}
    }
}

/// Follows again: the states as the database has them (the last snapshot stays if it cannot
/// be read).
async fn refresh(shared: &Arc<Shared>, replica: &Arc<Replica>) {
    let (plan, now) = (shared.plan.load_full(), shared.clock.now());
    let (pg, held) = (Arc::clone(&replica.store), replica.held());
    let read = move || FollowerEngine::read(&pg, plan, now, &held);
    match tokio::task::spawn_blocking(read).await {
        Ok(Ok(mut follower)) if !replica.is_leader() => {
            let mut current = shared.engine();
            follower.carry(&mut current);
            follower.engine.generation = current.generation + 1;
            *current = follower.engine;
            shared.publish(&current);
            replica.hold(follower.held);
            shared
                .metrics
                .checkpoint_reads(&replica.name, follower.read);
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not refresh from the database; serving the last snapshot");
        }
        Err(_) => {}
    }
}

async fn on_wake(shared: &Arc<Shared>, wake: Wake) {
    let Some(replica) = shared.replica.clone() else {
        return;
    };
    match wake {
        Wake::Promote(term) => promote(shared, &replica, term).await,
        Wake::Demote => {
            replica.set_leading(false);
            shared.metrics.leader(&replica.name, false);
            refresh(shared, &replica).await;
        }
        Wake::Refresh => {
            replica.refresh_taken();
            if !replica.is_leader() {
                refresh(shared, &replica).await;
            }
        }
        Wake::Commands => {
            replica.commands_taken();
            if replica.is_leader() {
                apply_forwarded(shared, &replica).await;
            }
        }
    }
}

/// A follower's reload: the new plan, the states as the database has them; the leader's own
/// reload writes the receipts.
async fn reload_follower(
    shared: &Arc<Shared>,
    replica: &Arc<Replica>,
) -> Result<Reloaded, InputError> {
    let mut plan = Plan::load(&shared.config_path)?;
    let running = shared.plan.load_full();
    let needs_restart = keep_restart_only(&running, &mut plan);
    let plan = Arc::new(plan);
    shared.plan.store(plan.clone());
    shared.tokens.store(Arc::new(Tokens::from_plan(&plan)));
    shared.metrics.init_series(&plan);
    refresh(shared, replica).await;
    tracing::info!(config = %plan.hash, "config reloaded (following: the leader receipts any change)");
    Ok(Reloaded {
        receipts: Vec::new(),
        needs_restart,
    })
}

/// The controller loop: the only place state changes.
pub async fn run_controller(shared: Arc<Shared>, mut inputs: mpsc::Receiver<Input>) {
    while let Some(input) = inputs.recv().await {
        match input {
            Input::Tick if shared.is_leader() => start_tick(&shared),
            Input::Tick => {}
            Input::Assessed(assessed) if shared.is_leader() => {
                finish_tick(&shared, *assessed).await;
            }
            Input::Assessed(_) => shared.assessing.store(false, Ordering::Release),
            Input::Command {
                rollout,
                actor,
                command,
                idempotency_key,
                reply,
            } => match follower(&shared) {
                Some(replica) => forward(
                    replica,
                    Forwarded::Rollout {
                        rollout,
                        actor,
                        command,
                        idempotency_key,
                    },
                    reply,
                ),
                None => {
                    let result =
                        operate_rollout(&shared, rollout, &actor, command, idempotency_key).await;
                    let _ = reply.send(result);
                }
            },
            Input::ResumeWorkflow {
                workflow,
                actor,
                reason,
                ack,
                reply,
            } => match follower(&shared) {
                Some(replica) => forward(
                    replica,
                    Forwarded::ResumeWorkflow {
                        workflow,
                        actor,
                        reason,
                        ack,
                    },
                    reply,
                ),
                None => {
                    let result = resume_workflow(&shared, workflow, &actor, &reason, ack).await;
                    let _ = reply.send(result);
                }
            },
            Input::Reload {
                actor,
                force,
                reply,
            } => {
                let result = match follower(&shared) {
                    Some(replica) => reload_follower(&shared, &replica).await,
                    None => reload(&shared, &actor, force).await,
                };
                if let Err(e) = &result {
                    tracing::warn!(error = %e, "config reload refused; the running config is unchanged");
                }
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
            Input::Wake(wake) => on_wake(&shared, wake).await,
            Input::SourceRound(answers) if shared.is_leader() => source_round(&shared, &answers),
            Input::SourceRound(_) => {}
            Input::Shutdown => {
                if shared.is_leader() {
                    let s = Arc::clone(&shared);
                    let (checkpoints, covers) = {
                        let mut engine = shared.engine();
                        (engine.take_checkpoints(), engine.recorded_seq)
                    };
                    let _ = shared
                        .evaluator
                        .run(move || s.put_checkpoints(checkpoints, Some(covers)))
                        .await;
                }
                if let Some(replica) = &shared.replica {
                    replica.stop();
                }
                break;
            }
        }
    }
}

/// Records a round of source answers as evidence; counts its queries and faults.
fn source_round(shared: &Shared, answers: &[crate::core::source::SourceAnswer]) {
    let faults = shared.engine().absorb_answers(answers);
    let mut queries: Vec<(&str, u64)> = Vec::new();
    for a in answers {
        let n = a.job.queries.len() as u64;
        match queries.iter_mut().find(|(s, _)| *s == a.job.source) {
            Some((_, count)) => *count += n,
            None => queries.push((a.job.source.as_str(), n)),
        }
    }
    for (source, _) in &queries {
        let mine: Vec<_> = faults.iter().filter(|(s, _)| s == source).collect();
        if let Some((_, first)) = mine.first() {
            tracing::warn!(source = %source, answers = mine.len(), reason = first.kind.name(), error = %first.message, "metrics source answers unusable; their gates stay inconclusive");
        }
    }
    let faults: Vec<(String, &str)> = faults
        .iter()
        .map(|(source, f)| (source.clone(), f.kind.name()))
        .collect();
    shared.metrics.source_round(&queries, &faults);
}

/// Sends a tick every `server.tick`.
pub async fn run_ticker(shared: Arc<Shared>) {
    loop {
        let period = shared.plan.load().server.tick;
        tokio::time::sleep(std::time::Duration::from_millis(period)).await;
        if shared.inputs.send(Input::Tick).await.is_err() {
            return;
        }
    }
}

/// Store upkeep: reopens a store whose writes failed (every second while unhealthy), prunes
/// dedupe keys older than `server.dedupe_window` and raw events older than `server.retention`
/// that checkpoints cover, and reports the store's size.
pub async fn run_pruner(shared: Arc<Shared>) {
    let mut last_prune: Option<crate::core::clock::Millis> = None;
    loop {
        let plan = shared.plan.load_full();
        let now = shared.clock.now();
        let s = Arc::clone(&shared);
        let _ = tokio::task::spawn_blocking(move || s.store.recover(now)).await;
        let period =
            (plan.server.dedupe_window.min(plan.server.retention) / 24).clamp(1_000, 3_600_000);
        let due = last_prune.is_none_or(|t| now.saturating_sub(t) >= period);
        if due && shared.store.is_healthy() && shared.is_leader() {
            last_prune = Some(now);
            let dedupe_cutoff = now.saturating_sub(plan.server.dedupe_window);
            let event_cutoff = now.saturating_sub(plan.server.retention);
            let s = Arc::clone(&shared);
            let pruned = tokio::task::spawn_blocking(move || {
                let keys = s.store.prune_dedupe(dedupe_cutoff)?;
                let events = s.store.prune_events(event_cutoff)?;
                Ok::<_, StoreError>((keys, events))
            })
            .await;
            match pruned {
                Ok(Ok((keys, events))) if keys + events > 0 => {
                    tracing::info!(dedupe_keys = keys, events, "store pruned");
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "store pruning failed"),
                _ => {}
            }
        }
        shared
            .metrics
            .store(shared.store.size_bytes(), shared.store.is_healthy());
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_item_of_the_body_is_shared_and_anything_else_copied() {
        let body = Bytes::from_static(
            br#"[{"event_id":"a","workflow":"w","version":"v"},{"event_id":"b","workflow":"w","version":"v"}]"#,
        );
        let items = parse_batch(&body).expect("a JSON array");
        let Some(Ok((_, second))) = items.get(1) else {
            panic!("two items: {items:?}");
        };
        let view = within(&body, second.as_bytes());
        assert_eq!(
            &view[..],
            br#"{"event_id":"b","workflow":"w","version":"v"}"#
        );
        assert_eq!(view.as_ptr(), second.as_ptr(), "a view, not a copy");
        let elsewhere = br#"{"event_id":"c"}"#.to_vec();
        let copied = within(&body, &elsewhere);
        assert_eq!(&copied[..], &elsewhere[..]);
        assert_ne!(copied.as_ptr(), elsewhere.as_ptr());
    }
}
