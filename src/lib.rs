//! stagegate: a staged-rollout canary controller for AI workflow versions.
//!
//! The decision core (`config`, `assign`, `stats`, `evidence`, `gate`, `rollout`, `engine`,
//! `receipt`, `event`) is pure: no I/O, time passed in. The shell (`server`, `api`, `store`,
//! `metrics`) wraps it. See ARCHITECTURE.md for the codemap.

pub mod api;
pub mod assign;
pub mod clock;
pub mod config;
pub mod engine;
pub mod event;
pub mod evidence;
pub mod gate;
pub mod http_server;
pub mod metrics;
pub mod notify;
pub mod ofrep;
pub mod receipt;
pub mod replay;
pub mod rollout;
pub mod server;
pub mod simulate;
pub mod stats;
pub mod store;
pub mod threshold;
