//! The pure core: events, the task state fold, the hash chain, the workflow
//! replayer and the decider.
//!
//! Architecture invariant: nothing in `core` does I/O, reads a clock, draws
//! randomness or awaits a runtime. Time is an argument; replay never performs
//! a side effect.

pub mod chain;
pub mod decide;
pub mod event;
pub mod limits;
pub mod retry;
pub mod state;
pub mod workflow;

#[cfg(test)]
mod tests;
