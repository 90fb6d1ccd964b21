//! What the core knows about tools: their kind and recovery path, as data.
//!
//! The core never calls a tool; it only looks tools up to record a step's
//! kind and recovery path. The callable contract (`Tool`, `ToolContext`,
//! `ToolError`, `ToolRegistry`) belongs to `mandate-engine`, which implements
//! [`ToolCatalog`] for its registry.

use serde::{Deserialize, Serialize};

/// How a tool affects the world.
///
/// The engine uses this to decide what needs compensation on rollback and
/// what needs a human when compensation is impossible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolKind {
    /// Observes the world without changing it; safe to repeat.
    Read,
    /// Changes the world in a way another call can undo.
    WriteReversible,
    /// Changes the world in a way nothing can undo (an email that was sent).
    WriteIrreversible,
}

impl ToolKind {
    /// Whether calling the tool changes the world.
    pub fn is_write(self) -> bool {
        !matches!(self, ToolKind::Read)
    }

    /// The stable snake_case name, the same one serde uses.
    pub fn as_str(self) -> &'static str {
        match self {
            ToolKind::Read => "read",
            ToolKind::WriteReversible => "write_reversible",
            ToolKind::WriteIrreversible => "write_irreversible",
        }
    }
}

impl std::fmt::Display for ToolKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tool as the core sees it: data, never a callable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolInfo {
    pub kind: ToolKind,
    pub recovery_path: Option<String>,
}

/// Looks tools up by name. Implemented by the engine's registry.
pub trait ToolCatalog {
    fn tool_info(&self, name: &str) -> Option<ToolInfo>;
}

/// A catalog held as a map, for tests and tools-free replays.
impl ToolCatalog for std::collections::HashMap<String, ToolInfo> {
    fn tool_info(&self, name: &str) -> Option<ToolInfo> {
        self.get(name).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_match_serde() {
        for kind in [
            ToolKind::Read,
            ToolKind::WriteReversible,
            ToolKind::WriteIrreversible,
        ] {
            let json = serde_json::to_value(kind).expect("a ToolKind serializes");
            assert_eq!(json, serde_json::Value::String(kind.as_str().to_owned()));
            assert_eq!(kind.to_string(), kind.as_str());
        }
        assert!(!ToolKind::Read.is_write());
        assert!(ToolKind::WriteReversible.is_write());
        assert!(ToolKind::WriteIrreversible.is_write());
    }
}
