//! The pure decision core: what a task's event means as evidence, what the evidence means as
//! verdicts, and what the verdicts mean for a rollout. Nothing here does I/O or reads the
//! clock (time is passed in; `clock` holds the one wall-clock read, which only the shell calls),
//! so `serve`, `simulate` and `replay` run the same code.

pub mod affected;
pub mod assign;
pub mod buckets;
pub mod clock;
pub mod engine;
pub mod event;
pub mod evidence;
pub mod gate;
pub mod notice;
pub mod receipt;
pub mod rollout;
pub mod route_table;
pub mod source;
pub mod stats;
pub mod threshold;
