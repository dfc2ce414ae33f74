//! Several replicas on one PostgreSQL store: who decides, and how the others keep up.
//!
//! Two threads per replica, each on a database session of its own:
//! - the **election** ([`run_election`]) tries the leader lock every tick while it does not
//!   hold it; taking it bumps the fencing term and sends [`Wake::Promote`]. While it leads it
//!   checks the lock's session every tick; a dead session (a killed backend, a lost network)
//!   fences this replica's decision writes at once and sends [`Wake::Demote`].
//! - the **listener** ([`run_listener`]) waits on LISTEN: a decision wakes followers to
//!   refresh their routing from the database ([`Wake::Refresh`]), a forwarded command wakes
//!   the leader ([`Wake::Commands`]); a periodic refresh (and poll) covers a lost notification.
//!
//! The controller loop turns each [`Wake`] into the work: it alone changes state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::core::clock::Clock;
use crate::core::receipt::Receipt;
use crate::core::rollout::Command;
use crate::store::PostgresStore;
use crate::store::postgres::{CHANGES, COMMANDS};

/// How often a follower rebuilds its routing from the database even without a notification.
pub const FULL_REFRESH_MS: u64 = 10_000;
/// How often the leader looks for forwarded commands even without a notification.
pub const COMMAND_POLL_MS: u64 = 1_000;
/// How long a replica waits for the leader to answer a forwarded command.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// A forwarded command older than this when the leader first sees it is refused, not applied:
/// its sender has given up waiting.
pub const COMMAND_EXPIRY_MS: u64 = 30_000;

/// What the replica threads ask the controller loop to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// This replica holds the lock under `term`: take over the decisions.
    Promote(u64),
    /// It lost the lock: stop deciding, follow.
    Demote,
    /// Another replica decided: reload routing and states from the database.
    Refresh,
    /// A replica forwarded operator commands: apply them (leader only).
    Commands,
}

/// This replica's role, shared by the threads, the controller loop and the handlers.
pub struct Replica {
    pub name: String,
    pub store: Arc<PostgresStore>,
    clock: Arc<dyn Clock>,
    /// Set by the controller loop once a take-over completed; cleared on demotion.
    leading: AtomicBool,
    /// Asks the election thread to give the lock up (a take-over failed).
    resign: AtomicBool,
    /// A [`Wake::Refresh`] is queued and not yet handled (coalesces notifications).
    refresh_queued: AtomicBool,
    commands_queued: AtomicBool,
    stopped: AtomicBool,
    /// While following: the digest of each checkpoint whose evidence the engine holds as read
    /// (a follower records none of its own). Empty while leading and after a take-over.
    held: Mutex<HashMap<String, String>>,
}

/// An operator action written for the leader by the replica that was asked.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Forwarded {
    Rollout {
        rollout: String,
        actor: String,
        command: Command,
        idempotency_key: Option<String>,
    },
    ResumeWorkflow {
        workflow: String,
        actor: String,
        reason: String,
        ack: bool,
    },
}

/// The leader's answer to a forwarded command.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Receipt(Box<Receipt>),
    Error(ForwardedError),
}

/// An error as the leader's HTTP layer would have answered it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardedError {
    pub status: u16,
    pub code: String,
    pub message: String,
    #[serde(default)]
    pub details: Vec<String>,
}

/// Why a forwarded command got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error(
        "no leader answered within {}s; the action may still be applied — check the receipts, and repeat it with the same Idempotency-Key to be sure it is applied once",
        FORWARD_TIMEOUT.as_secs()
    )]
    Timeout,
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("the leader's answer does not decode: {0}")]
    Codec(#[from] serde_json::Error),
}

impl Replica {
    pub fn new(name: String, store: Arc<PostgresStore>, clock: Arc<dyn Clock>) -> Replica {
        Replica {
            name,
            store,
            clock,
            leading: AtomicBool::new(false),
            resign: AtomicBool::new(false),
            refresh_queued: AtomicBool::new(false),
            commands_queued: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            held: Mutex::new(HashMap::new()),
        }
    }

    /// The digests of the checkpoints the engine holds as read (see [`Replica::hold`]).
    pub fn held(&self) -> HashMap<String, String> {
        self.held.lock().map(|h| h.clone()).unwrap_or_default()
    }

    /// Records which checkpoints the engine now holds as read; an empty map once the engine's
    /// evidence is its own (a take-over), so the next refresh reads every checkpoint.
    pub fn hold(&self, digests: HashMap<String, String>) {
        if let Ok(mut held) = self.held.lock() {
            *held = digests;
        }
    }

    /// Whether this replica decides now.
    pub fn is_leader(&self) -> bool {
        self.leading.load(Ordering::SeqCst)
    }

    pub fn set_leading(&self, leading: bool) {
        self.leading.store(leading, Ordering::SeqCst);
    }

    /// Gives the lock up (the election thread releases it within a tick).
    pub fn resign(&self) {
        self.store.set_term(0);
        self.set_leading(false);
        self.resign.store(true, Ordering::SeqCst);
    }

    /// Stops both threads (shutdown); closing their sessions releases the lock.
    pub fn stop(&self) {
        self.store.set_term(0);
        self.set_leading(false);
        self.stopped.store(true, Ordering::SeqCst);
    }

    /// Marks a queued refresh as being handled, so the next notification queues another.
    pub fn refresh_taken(&self) {
        self.refresh_queued.store(false, Ordering::SeqCst);
    }

    pub fn commands_taken(&self) {
        self.commands_queued.store(false, Ordering::SeqCst);
    }

    fn queue(&self, wakes: &mpsc::Sender<Wake>, wake: Wake) {
        let flag = match wake {
            Wake::Refresh => &self.refresh_queued,
            Wake::Commands => &self.commands_queued,
            Wake::Promote(_) | Wake::Demote => {
                let _ = wakes.blocking_send(wake);
                return;
            }
        };
        if !flag.swap(true, Ordering::SeqCst) && wakes.try_send(wake).is_err() {
            flag.store(false, Ordering::SeqCst);
        }
    }

    /// Writes `command` for the leader and waits for its answer. Blocking.
    pub fn forward(&self, command: &Forwarded) -> Result<Answer, ForwardError> {
        let id = self
            .store
            .submit_command(&serde_json::to_string(command)?)?;
        let deadline = self.clock.now() + FORWARD_TIMEOUT.as_millis() as u64;
        let mut pause = Duration::from_millis(2);
        loop {
            if let Some(result) = self.store.command_result(id)? {
                return Ok(serde_json::from_str(&result)?);
            }
            if self.clock.now() >= deadline {
                return Err(ForwardError::Timeout);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(25));
        }
    }
}

/// The election thread: see the module docs. `tick` is read on every round.
pub fn run_election(
    replica: &Arc<Replica>,
    wakes: &mpsc::Sender<Wake>,
    tick: &dyn Fn() -> Duration,
) {
    let mut lease = replica.store.lease();
    let mut holding = false;
    while !replica.stopped.load(Ordering::SeqCst) {
        if holding {
            let resigned = replica.resign.swap(false, Ordering::SeqCst);
            if resigned || !lease.holds() {
                replica.store.set_term(0);
                replica.set_leading(false);
                lease.release();
                holding = false;
                tracing::warn!(replica = %replica.name, "lost the leader lock; following");
                replica.queue(wakes, Wake::Demote);
            }
        } else {
            match lease.try_acquire(replica.clock.now()) {
                Ok(Some(term)) => {
                    replica.store.set_term(term);
                    holding = true;
                    tracing::info!(replica = %replica.name, term, "took the leader lock");
                    replica.queue(wakes, Wake::Promote(term));
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "leader lock not tried"),
            }
        }
        std::thread::sleep(tick());
    }
    lease.release();
}

/// The listener thread: see the module docs.
pub fn run_listener(replica: &Arc<Replica>, wakes: &mpsc::Sender<Wake>) {
    let mut listener = replica.store.listener();
    let now = || replica.clock.now();
    let (mut last_refresh, mut last_poll) = (now(), now());
    while !replica.stopped.load(Ordering::SeqCst) {
        let channels = match listener.wait(Duration::from_millis(500)) {
            Ok(channels) => channels,
            Err(e) => {
                tracing::debug!(error = %e, "change listener lost its session; reconnecting");
                std::thread::sleep(Duration::from_millis(500));
                Vec::new()
            }
        };
        // The role is read after the wait: it may have changed during it.
        if replica.is_leader() {
            if channels.iter().any(|c| c == COMMANDS) || now() - last_poll >= COMMAND_POLL_MS {
                last_poll = now();
                replica.queue(wakes, Wake::Commands);
            }
        } else if channels.iter().any(|c| c == CHANGES) || now() - last_refresh >= FULL_REFRESH_MS {
            last_refresh = now();
            replica.queue(wakes, Wake::Refresh);
        }
    }
}
