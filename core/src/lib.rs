//! Mandate's pure core (`mandate-core`): events, the task state fold, the
//! hash chain, the workflow replayer, the decider and the governance
//! gateway's contract.
//!
//! Architecture invariant: nothing here does I/O, reads a clock, draws
//! randomness or awaits a runtime, and the crate's dependency list proves it
//! (no tokio, no sqlx). Time is an argument; tools and policies are looked up
//! through traits and never called; replay never performs a side effect.

pub mod approvals;
pub mod chain;
pub mod decide;
pub mod event;
pub mod gateway;
pub mod jcs;
pub mod jcs_ser;
pub mod limits;
pub mod retry;
pub mod routing;
pub mod state;
pub mod tool;
pub mod workflow;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod gateway_tests;

#[cfg(test)]
mod instance_tests;
