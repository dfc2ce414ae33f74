//! The async shell around the decision core: the HTTP listener, the API and OFREP handlers,
//! Prometheus metrics, notification delivery, the controller loop — the one place where
//! decisions are persisted, applied, published and observed — and, on a shared PostgreSQL
//! store, the replica threads that elect the one decider and keep the others current.

pub mod affected;
pub mod api;
pub mod controller;
pub mod evaluator;
pub mod failure;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod notify;
pub mod ofrep;
pub mod prometheus;
pub mod replica;
pub mod ui;
