//! Tools for Mandate: the named operations a task's steps call, and the
//! registry the engine looks them up in.
//!
//! This crate defines what a tool *is* ([`Tool`], [`ToolKind`],
//! [`ToolContext`], [`ToolError`]), keeps tools by name ([`ToolRegistry`]),
//! and ships a set of demo tools ([`demo`]) whose side effects are real,
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
mod registry;
mod tool;
pub mod world;

pub use demo::register_demo_tools;
pub use policy::Governance;
pub use policy::tools::register_governance_tools;
pub use registry::ToolRegistry;
pub use tool::{Tool, ToolContext, ToolError, ToolKind, ToolResult};
pub use world::World;
