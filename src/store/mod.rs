//! Durable state: rollout states, receipts, events, dedupe keys, evidence checkpoints and the
//! notification outbox. `embedded` is the default backend (redb in `data_dir`).

mod embedded;

pub use embedded::*;
