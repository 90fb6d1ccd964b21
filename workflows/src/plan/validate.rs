//! Whole-plan validation at submission. Two parts:
//!
//! - [`structure`] needs nothing but the document (ids, edges, references,
//!   cycles, limits) and is also what the workflow runs by: it must never
//!   depend on the catalog or policies, which change after a task ran.
//! - [`check_catalog`] checks the plan against the catalog in force at
//!   submission: unknown tools and agents, schemas, compensation/recovery.
//!
//! Every error names the step and the field.

use std::collections::{BTreeSet, HashMap};

use mandate_activities::catalog::{Catalog, validate_schema};
use petgraph::algo::{has_path_connecting, tarjan_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};
use serde_json::Value;

use super::document::{PlanDoc, PlanStep};
use super::refs;

/// Bounds on a plan (SPEC §4.9).
#[derive(Debug, Clone)]
pub struct PlanLimits {
    pub max_steps: usize,
    pub max_edges: usize,
    pub max_step_input_bytes: usize,
    pub max_id_bytes: usize,
    pub max_references_per_step: usize,
}

impl Default for PlanLimits {
    fn default() -> Self {
        Self {
            max_steps: 2_000,
            max_edges: 20_000,
            max_step_input_bytes: 64 * 1024,
            max_id_bytes: 64,
            max_references_per_step: 100,
        }
    }
}

/// The DAG of a plan: for each step (by index), the steps it waits for
/// (explicit `depends_on` and those its references imply), and an order.
#[derive(Debug, Clone)]
pub struct Structure {
    pub deps: Vec<Vec<usize>>,
    pub order: Vec<usize>,
    pub edges: usize,
}

/// Parses the document, naming the step of a bad field.
pub fn parse(input: &Value) -> Result<PlanDoc, String> {
    let obj = input
        .as_object()
        .ok_or("a plan must be an object with agent and steps")?;
    if let Some(steps) = obj.get("steps").and_then(Value::as_array) {
        for (i, s) in steps.iter().enumerate() {
            let label = s
                .get("id")
                .and_then(Value::as_str)
                .map(|id| format!("step {id:?}"))
                .unwrap_or_else(|| format!("step #{}", i + 1));
            serde_json::from_value::<PlanStep>(s.clone()).map_err(|e| format!("{label}: {e}"))?;
        }
    }
    let doc: PlanDoc = serde_json::from_value(input.clone()).map_err(|e| format!("plan: {e}"))?;
    if let Some(w) = &doc.workflow
        && w != "plan"
    {
        return Err(format!("field workflow: must be \"plan\", got {w:?}"));
    }
    Ok(doc)
}

fn is_identifier(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The step a variable path names: `steps.X.output…` → `X`.
fn referenced_step(var: &str, allow_input: bool) -> Result<Option<&str>, String> {
    let mut parts = var.split('.');
    match parts.next() {
        Some("steps") => {}
        Some("input") if allow_input => return Ok(None),
        Some(other) => {
            return Err(format!(
                "reference to {other:?}: only steps.<id>.output…{} may be referenced",
                if allow_input { " and input.…" } else { "" }
            ));
        }
        None => return Err("empty reference".into()),
    }
    let Some(step) = parts.next() else {
        return Err("a reference must name a step: steps.<id>.output…".into());
    };
    match parts.next() {
        Some("output") | None => Ok(Some(step)),
        Some(other) => Err(format!(
            "reference to steps.{step}.{other}: a step offers only .output"
        )),
    }
}

/// The catalog-free checks, and the DAG the workflow runs by.
pub fn structure(doc: &PlanDoc, limits: &PlanLimits) -> Result<Structure, String> {
    if doc.steps.is_empty() {
        return Err("field steps: a plan needs at least one step".into());
    }
    if doc.steps.len() > limits.max_steps {
        return Err(format!(
            "field steps: {} steps, more than the limit of {}",
            doc.steps.len(),
            limits.max_steps
        ));
    }
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, s) in doc.steps.iter().enumerate() {
        if s.id.len() > limits.max_id_bytes || !is_identifier(&s.id) {
            return Err(format!(
                "step {:?}: field id: must be an identifier (letters, digits, _; not starting with a digit) of at most {} bytes",
                s.id, limits.max_id_bytes
            ));
        }
        if index.insert(&s.id, i).is_some() {
            return Err(format!("step {:?}: field id: used by two steps", s.id));
        }
        let bytes = serde_json::to_vec(&s.input).map(|b| b.len()).unwrap_or(0);
        if bytes > limits.max_step_input_bytes {
            return Err(format!(
                "step {:?}: field input: {bytes} bytes, more than the limit of {}",
                s.id, limits.max_step_input_bytes
            ));
        }
    }
    let mut graph: DiGraph<usize, ()> = DiGraph::new();
    let nodes: Vec<NodeIndex> = (0..doc.steps.len()).map(|i| graph.add_node(i)).collect();
    let mut deps: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); doc.steps.len()];
    for (i, s) in doc.steps.iter().enumerate() {
        for d in &s.depends_on {
            let Some(&j) = index.get(d.as_str()) else {
                return Err(format!(
                    "step {:?}: field depends_on: no step {d:?} in the plan",
                    s.id
                ));
            };
            if j == i {
                return Err(format!(
                    "step {:?}: field depends_on: a step cannot depend on itself",
                    s.id
                ));
            }
            if deps[i].insert(j) {
                graph.add_edge(nodes[j], nodes[i], ());
            }
        }
    }
    // Cycles through depends_on, naming every step in one.
    for scc in tarjan_scc(&graph) {
        if scc.len() > 1 {
            let mut ids: Vec<&str> = scc
                .iter()
                .map(|n| doc.steps[graph[*n]].id.as_str())
                .collect();
            ids.sort();
            // Walk the cycle from its first id for a readable path.
            let members: BTreeSet<usize> = scc.iter().map(|n| graph[*n]).collect();
            let start = index[ids[0]];
            let mut path = vec![doc.steps[start].id.clone()];
            let mut at = start;
            for _ in 0..members.len() {
                let next = (0..doc.steps.len())
                    .find(|k| members.contains(k) && deps[*k].contains(&at))
                    .unwrap_or(start);
                path.push(doc.steps[next].id.clone());
                if next == start {
                    break;
                }
                at = next;
            }
            return Err(format!(
                "step {:?}: field depends_on: steps {} form a cycle ({})",
                ids[0],
                ids.iter()
                    .map(|s| format!("{s:?}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                path.join(" → ")
            ));
        }
    }
    // References: each must name an ancestor, or a step that can become one.
    for (i, s) in doc.steps.iter().enumerate() {
        let mut found = Vec::new();
        refs::collect(&s.input, "input", &mut found)
            .map_err(|e| format!("step {:?}: {e}", s.id))?;
        let input_refs = found.len();
        if let Some(c) = &s.compensate {
            refs::collect(&c.input, "compensate.input", &mut found)
                .map_err(|e| format!("step {:?}: {e}", s.id))?;
        }
        if found.len() > limits.max_references_per_step {
            return Err(format!(
                "step {:?}: more than {} references",
                s.id, limits.max_references_per_step
            ));
        }
        for (n, (field, expr)) in found.iter().enumerate() {
            let at = |m: String| format!("step {:?}: field {field}: {m}", s.id);
            let vars = refs::variables(expr).map_err(at)?;
            for var in vars {
                let Some(target) = referenced_step(&var, n >= input_refs).map_err(at)? else {
                    continue;
                };
                let Some(&j) = index.get(target) else {
                    return Err(at(format!(
                        "reference to steps.{target}: no such step in the plan"
                    )));
                };
                if j == i {
                    return Err(at(format!(
                        "reference to steps.{target}: a step cannot read its own output"
                    )));
                }
                if deps[i].contains(&j) {
                    continue;
                }
                if has_path_connecting(&graph, nodes[i], nodes[j], None) {
                    return Err(at(format!(
                        "reference to steps.{target} which is not an ancestor ({target} runs after {})",
                        s.id
                    )));
                }
                deps[i].insert(j);
                graph.add_edge(nodes[j], nodes[i], ());
            }
        }
    }
    let edges = graph.edge_count();
    if edges > limits.max_edges {
        return Err(format!(
            "field steps: {edges} dependencies, more than the limit of {}",
            limits.max_edges
        ));
    }
    let order = toposort(&graph, None)
        .map_err(|c| {
            format!(
                "step {:?}: field depends_on: part of a cycle",
                doc.steps[graph[c.node_id()]].id
            )
        })?
        .into_iter()
        .map(|n| graph[n])
        .collect();
    Ok(Structure {
        deps: deps.into_iter().map(|d| d.into_iter().collect()).collect(),
        order,
        edges,
    })
}

/// Checks the plan against the catalog: agent, tools, compensation or
/// recovery for writes, input schemas.
pub fn check_catalog(doc: &PlanDoc, catalog: &Catalog) -> Result<(), String> {
    if catalog.agent(&doc.agent).is_none() {
        return Err(format!(
            "field agent: agent {:?} is not in the catalog (known: {})",
            doc.agent,
            catalog
                .agents
                .iter()
                .map(|a| a.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let known = || {
        let names = catalog.tool_names();
        let shown: Vec<String> = names.iter().take(30).cloned().collect();
        format!(
            "{}{}",
            shown.join(", "),
            if names.len() > 30 { ", …" } else { "" }
        )
    };
    for s in &doc.steps {
        let at = |field: &str, m: String| format!("step {:?}: field {field}: {m}", s.id);
        let Some(tool) = catalog.tool(&s.tool) else {
            return Err(at(
                "tool",
                format!("unknown tool {:?} (the catalog has: {})", s.tool, known()),
            ));
        };
        if let Some(c) = &s.compensate
            && catalog.tool(&c.tool).is_none()
        {
            return Err(at(
                "compensate.tool",
                format!("unknown tool {:?} (the catalog has: {})", c.tool, known()),
            ));
        }
        if tool.kind.is_write()
            && s.compensate.is_none()
            && tool.compensation.is_none()
            && s.recovery_path.is_none()
            && catalog.recovery_path(tool).is_none()
        {
            return Err(at(
                "compensate",
                format!(
                    "tool {} is {} and has neither a compensation nor a recovery path; add compensate: {{tool, input}} or recovery_path",
                    s.tool, tool.kind
                ),
            ));
        }
        if let Some(schema) = &tool.input_schema {
            validate_schema(schema, &s.input, "input", &refs::is_pending)
                .map_err(|e| format!("step {:?}: field {e}", s.id))?;
        }
        if let Some(r) = &s.retry {
            r.validate().map_err(|e| at("retry", e))?;
        }
        if let Some(r) = s.compensate.as_ref().and_then(|c| c.retry.as_ref()) {
            r.validate().map_err(|e| at("compensate.retry", e))?;
        }
        if let Some(t) = s.timeout_ms
            && (t == 0 || t > mandate_engine::core::workflow::MAX_STEP_TIMEOUT_MS)
        {
            return Err(at(
                "timeout_ms",
                format!(
                    "must be between 1 and {} ms, got {t}",
                    mandate_engine::core::workflow::MAX_STEP_TIMEOUT_MS
                ),
            ));
        }
    }
    Ok(())
}
