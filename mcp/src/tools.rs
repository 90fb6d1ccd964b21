//! What `tools/list` offers an agent: the catalog's tools it may call, and
//! Mandate's own (`mandate_status`, `mandate_rollback`, `mandate_submit_plan`).
//!
//! A catalog tool is listed unless the policy in force denies it to this
//! agent whatever its input: it is evaluated once with a representative
//! input, every required field an unresolved placeholder (`${field}`, which
//! the input schema accepts as any type), for the agent and the user it acts
//! for. A rule that looks at the input (an amount, a scope) sees the
//! placeholder, not a value, so such a tool stays listed and its calls are
//! decided one by one; a deny that does not depend on the input (CRUDLEX,
//! an autonomy forbid, no grant at all) hides it. Tools not registered in
//! this process are not listed either.

use std::sync::Arc;

use mandate_activities::Governance;
use mandate_activities::policy::CheckRequest;
use mandate_engine::ToolRegistry;
use mandate_engine::core::gateway::InterventionPath;
use rmcp::model::{JsonObject, Tool};
use serde_json::{Value, json};

pub const STATUS: &str = "mandate_status";
pub const ROLLBACK: &str = "mandate_rollback";
pub const SUBMIT_PLAN: &str = "mandate_submit_plan";

fn object(v: Value) -> Arc<JsonObject> {
    Arc::new(v.as_object().cloned().unwrap_or_default())
}

/// The representative input of a schema: each required field a placeholder.
fn representative(schema: Option<&Value>) -> Value {
    let required = schema
        .and_then(|s| s.get("required"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    Value::Object(
        required
            .iter()
            .filter_map(Value::as_str)
            .map(|f| (f.to_string(), Value::String(format!("${{{f}}}"))))
            .collect(),
    )
}

/// The catalog tools `agent` (acting for `on_behalf_of`) may call, as MCP tools.
pub fn catalog_tools(
    governance: &Governance,
    registry: &ToolRegistry,
    agent: &str,
    on_behalf_of: Option<&str>,
) -> Vec<Tool> {
    let set = governance.current();
    set.catalog
        .tools
        .iter()
        .filter(|t| registry.get(&t.name).is_some())
        .filter(|t| {
            let d = set.evaluate_unresolved(&CheckRequest {
                step: t.name.clone(),
                tool: t.name.clone(),
                input: representative(t.input_schema.as_ref()),
                agent: agent.to_string(),
                on_behalf_of: on_behalf_of.map(str::to_string),
                environment: None,
                now_ms: 0,
            });
            d.decision != InterventionPath::Deny
        })
        .map(|t| {
            let description = t.description.clone().unwrap_or_else(|| {
                format!(
                    "{} ({}, {}); owners: {}. Governed by Mandate: policy-checked, recorded, undoable.",
                    t.name,
                    t.kind.as_str(),
                    t.operation.as_str(),
                    if t.owners.is_empty() {
                        "none".to_string()
                    } else {
                        t.owners.join(", ")
                    }
                )
            });
            Tool::new(
                t.name.clone(),
                description,
                object(
                    t.input_schema
                        .clone()
                        .unwrap_or_else(|| json!({"type": "object"})),
                ),
            )
        })
        .collect()
}

/// Mandate's own tools.
pub fn own_tools() -> Vec<Tool> {
    vec![
        Tool::new(
            STATUS,
            "This session's calls: each one's policy decision, state (completed, denied, awaiting approval, undone) and result. With task: those of another MCP session task of this agent (e.g. one a restart of the server interrupted).",
            object(
                json!({"type": "object", "properties": {"task": {"type": "string", "maxLength": 128}}}),
            ),
        ),
        Tool::new(
            ROLLBACK,
            "Undo this session's completed calls, newest first, through the compensations recorded with them; later calls open a new session.",
            object(
                json!({"type": "object", "properties": {"reason": {"type": "string", "maxLength": 512}}}),
            ),
        ),
        Tool::new(
            SUBMIT_PLAN,
            "Submit a whole plan (a DAG of tool calls, see docs/plans.md): it is dry-run first (each step's policy decision); with submit=true and no denied step it is submitted as its own task.",
            object(json!({
                "type": "object",
                "required": ["plan"],
                "properties": {
                    "plan": {"type": "object"},
                    "submit": {"type": "boolean"}
                }
            })),
        ),
    ]
}
