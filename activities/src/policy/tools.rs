//! Tool names release 0.1's `plan` workflow called (`policy.check`,
//! `approval.escalate`), kept so version-1 code still names them when its
//! histories replay, and the registration of the catalog's remote tools.
//!
//! Governance no longer runs as tools: the engine's gateway decides every
//! step before it is scheduled, and pre-approvals are granted through their
//! own API by an authenticated owner — no task or tool can create one.

use std::sync::Arc;

use mandate_engine::tool::ToolRegistry;

use super::Governance;
use crate::world::World;

pub const POLICY_CHECK: &str = "policy.check";
pub const APPROVAL_ESCALATE: &str = "approval.escalate";

/// Registers the catalog's remote HTTP tools.
pub fn register_governance_tools(
    registry: &mut ToolRegistry,
    governance: Arc<Governance>,
    _world: World,
) {
    let set = governance.current();
    for entry in set.catalog.tools.iter() {
        if let Some(endpoint) = &entry.endpoint {
            registry.register(crate::http::HttpTool::new(
                entry.name.clone(),
                entry.kind,
                set.catalog.recovery_path(entry),
                endpoint.clone(),
            ));
        }
    }
}
