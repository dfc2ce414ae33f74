//! stagegate: a staged-rollout canary controller for AI workflow versions.
//!
//! The folders are the layers (ARCHITECTURE.md has the codemap):
//! - [`plan`] — the validated plan types every layer reads; imports nothing of ours but the
//!   clock's units.
//! - [`config`] — YAML into a [`plan::Plan`]: the raw model, validation, what `check` prints.
//! - [`core`] — the pure decision core: events, evidence, statistics, gate verdicts, the
//!   rollout state machine, assignment, receipts and the engine. No I/O, no clock reads.
//! - [`store`] — durable state: the embedded store.
//! - [`serve`] — the async shell: HTTP API, OFREP, metrics, notifications, and the controller
//!   loop that turns decisions into commits, snapshots and metrics.
//! - [`offline`] — `simulate` and `replay`: the same core on a virtual clock.

pub mod config;
pub mod core;
pub mod offline;
pub mod plan;
pub mod serve;
pub mod store;
