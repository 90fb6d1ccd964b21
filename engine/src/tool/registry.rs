//! [`ToolRegistry`]: the tools the engine can call, by name.
//!
//! The registry only stores and hands out tools. It must never call one:
//! when and how often a tool runs is the engine's decision.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Tool, ToolCatalog, ToolInfo};

/// Tools by name.
///
/// Cloning is cheap: the tools themselves are shared behind [`Arc`].
#[derive(Clone, Default)]
pub struct ToolRegistry {
    tools: HashMap<String, Arc<dyn Tool>>,
}

impl ToolRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `tool` under its [`Tool::name`].
    ///
    /// A later registration with the same name replaces the earlier one (and
    /// logs a warning), so a test or a deployment can override a built-in
    /// tool by registering its own after the defaults.
    pub fn register(&mut self, tool: impl Tool) -> &mut Self {
        self.register_arc(Arc::new(tool))
    }

    /// Adds an already shared tool under its [`Tool::name`]; replaces any
    /// earlier tool of the same name, like [`ToolRegistry::register`].
    pub fn register_arc(&mut self, tool: Arc<dyn Tool>) -> &mut Self {
        let name = tool.name().to_owned();
        if self.tools.insert(name.clone(), tool).is_some() {
            tracing::warn!(tool = %name, "a tool registered twice: the later registration replaces the earlier one");
        }
        self
    }

    /// The tool registered under `name`, if any.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Tool>> {
        self.tools.get(name).cloned()
    }

    /// The names of all registered tools, sorted so output is stable.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.tools.keys().cloned().collect();
        names.sort();
        names
    }

    /// How many tools are registered.
    pub fn len(&self) -> usize {
        self.tools.len()
    }

    /// Whether no tool is registered.
    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }
}

impl ToolCatalog for ToolRegistry {
    fn tool_info(&self, name: &str) -> Option<ToolInfo> {
        self.tools.get(name).map(|t| ToolInfo {
            kind: t.kind(),
            recovery_path: t.recovery_path().map(str::to_string),
        })
    }
}

impl std::fmt::Debug for ToolRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolRegistry")
            .field("tools", &self.names())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tool::{ToolContext, ToolKind, ToolResult};
    use futures::FutureExt;
    use futures::future::BoxFuture;
    use serde_json::json;

    /// A tool that answers with a fixed label, so a test can tell two
    /// registrations of the same name apart.
    struct Labelled {
        name: &'static str,
        label: &'static str,
    }

    impl Tool for Labelled {
        fn name(&self) -> &str {
            self.name
        }
        fn kind(&self) -> ToolKind {
            ToolKind::Read
        }
        fn call<'a>(
            &'a self,
            _ctx: ToolContext,
            _input: serde_json::Value,
        ) -> BoxFuture<'a, ToolResult> {
            async move { Ok(json!(self.label)) }.boxed()
        }
    }

    #[test]
    fn empty_registry_has_no_tools() {
        let registry = ToolRegistry::new();
        assert!(registry.is_empty());
        assert_eq!(registry.len(), 0);
        assert!(registry.get("anything").is_none());
        assert!(registry.names().is_empty());
    }

    #[test]
    fn names_are_sorted_and_lookup_works() {
        let mut registry = ToolRegistry::new();
        registry
            .register(Labelled {
                name: "b.tool",
                label: "b",
            })
            .register(Labelled {
                name: "a.tool",
                label: "a",
            })
            .register_arc(Arc::new(Labelled {
                name: "c.tool",
                label: "c",
            }));
        assert_eq!(registry.names(), vec!["a.tool", "b.tool", "c.tool"]);
        assert_eq!(registry.len(), 3);
        assert!(!registry.is_empty());
        let tool = registry.get("b.tool").expect("b.tool was registered");
        assert_eq!(tool.name(), "b.tool");
        assert!(registry.get("d.tool").is_none());
    }

    #[tokio::test]
    async fn a_later_registration_replaces_the_earlier_one() {
        let mut registry = ToolRegistry::new();
        registry.register(Labelled {
            name: "x",
            label: "first",
        });
        registry.register(Labelled {
            name: "x",
            label: "second",
        });
        assert_eq!(registry.len(), 1);
        let tool = registry.get("x").expect("x was registered");
        let output = tool.call(ToolContext::new("t", 1, 1), json!({})).await;
        assert_eq!(output, Ok(json!("second")));
    }

    #[test]
    fn clones_share_tools_but_not_the_map() {
        let mut registry = ToolRegistry::new();
        registry.register(Labelled {
            name: "x",
            label: "x",
        });
        let mut copy = registry.clone();
        copy.register(Labelled {
            name: "y",
            label: "y",
        });
        assert_eq!(registry.names(), vec!["x"]);
        assert_eq!(copy.names(), vec!["x", "y"]);
        assert!(Arc::ptr_eq(
            &registry.get("x").unwrap(),
            &copy.get("x").unwrap()
        ));
    }
}
