//! The plan document an agent submits (SPEC §5), as JSON or YAML.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use mandate_engine::RetryPolicy;

/// A plan: task-level facts and a DAG of steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanDoc {
    /// `plan` when given.
    #[serde(default)]
    pub workflow: Option<String>,
    /// The agent that made the plan (must be in the catalog).
    pub agent: String,
    #[serde(default)]
    pub on_behalf_of: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    /// What the agent saw: `[{kind, ref, summary}]`, shown to approvers.
    #[serde(default)]
    pub evidence: Vec<Value>,
    /// The environment (context dimension of CRUDLEX), e.g. `prod`.
    #[serde(default)]
    pub environment: Option<String>,
    pub steps: Vec<PlanStep>,
}

/// One step: a tool call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanStep {
    /// An identifier (`[A-Za-z_][A-Za-z0-9_]*`), unique in the plan.
    pub id: String,
    pub tool: String,
    /// Strings may hold `${steps.X.output.path}` references (minijinja expressions).
    #[serde(default = "empty_object")]
    pub input: Value,
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Overrides the catalog's compensation; its input may also use `${input.X}`.
    #[serde(default)]
    pub compensate: Option<PlanCompensation>,
    #[serde(default)]
    pub retry: Option<RetryPolicy>,
    /// Per-attempt timeout.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Overrides the catalog's recovery path.
    #[serde(default)]
    pub recovery_path: Option<String>,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// A step's compensation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanCompensation {
    pub tool: String,
    #[serde(default = "empty_object")]
    pub input: Value,
    #[serde(default)]
    pub retry: Option<RetryPolicy>,
}

/// Parses a plan file's text: YAML (which includes JSON) by the file name,
/// or JSON first and YAML if that fails.
pub fn parse_text(origin: &str, text: &str) -> Result<Value, String> {
    let yaml = origin.ends_with(".yaml") || origin.ends_with(".yml");
    if !yaml && let Ok(v) = serde_json::from_str::<Value>(text) {
        return Ok(v);
    }
    yaml_serde::from_str::<Value>(text)
        .map_err(|e| format!("{origin} is not valid YAML or JSON: {e}"))
}
