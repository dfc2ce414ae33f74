//! The async shell around the decision core: the HTTP listener, the API and OFREP handlers,
//! Prometheus metrics, notification delivery, and the controller loop — the one place where
//! decisions are persisted, applied, published and observed.

pub mod affected;
pub mod api;
pub mod controller;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod notify;
pub mod ofrep;
