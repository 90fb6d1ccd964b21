//! Tools for Mandate: the named operations a task's steps call, and the
//! registry the engine looks them up in.
//!
//! This crate implements the engine's tool contract ([`Tool`], [`ToolKind`],
//! [`ToolContext`], [`ToolError`], [`ToolRegistry`], owned by
//! `mandate-engine`), and ships a set of demo tools ([`demo`]) whose side effects are real,
//! observable and undoable because they live in the engine's own database
//! ([`World`]).
//!
//! It never decides anything about a task: retries, timeouts, compensation
//! order and approval belong to the engine. A tool only reports what happened
//! and whether trying again could help ([`ToolError::retryable`]).

pub mod catalog;
pub mod demo;
pub mod http;
pub mod policy;
pub mod world;

pub use demo::register_demo_tools;
/// The tool contract is the engine's; re-exported for tool authors.
pub use mandate_engine::tool::{Tool, ToolContext, ToolError, ToolKind, ToolRegistry, ToolResult};
pub use policy::Governance;
pub use policy::tools::register_governance_tools;
pub use world::World;
