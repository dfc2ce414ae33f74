//! The decision core without a server: `simulate` (synthetic traffic) and `replay` (recorded
//! events), both on a virtual clock.

pub mod replay;
pub mod simulate;
