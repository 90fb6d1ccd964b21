//! What the console's templates show, as plain values (the templates escape
//! them): a timeline line per event and a plan's DAG laid out for SVG.

use std::collections::{BTreeMap, HashMap};

use mandate_engine::{Event, EventPayload as E};
use serde_json::Value;

/// The longest text shown inline; the whole payload is in the row's viewer.
const MAX_INLINE: usize = 240;
/// The most plan steps drawn.
pub const MAX_DAG_NODES: usize = 200;

/// One event of the timeline.
pub struct Row {
    pub seq: i64,
    pub at: String,
    pub actor: String,
    pub kind: String,
    /// `policy`, `approval`, `step`, `compensation`, `task` or `other`.
    pub class: &'static str,
    pub text: String,
    /// The whole payload, pretty JSON.
    pub detail: String,
}

/// `s` with control characters (terminal escapes, NUL) shown as `\u{1b}`
/// and the like, so what an agent wrote cannot drive a terminal a page is
/// saved to or hide text; newlines and tabs stay.
pub fn printable(s: &str) -> String {
    if !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return s.to_string();
    }
    s.chars()
        .map(|c| match c {
            '\n' | '\t' => c.to_string(),
            c if c.is_control() => c.escape_unicode().to_string(),
            c => c.to_string(),
        })
        .collect()
}

/// Cuts `s` to `max` characters, saying so.
pub fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max).collect();
    out.push('…');
    out
}

fn json(v: &Value) -> String {
    clip(&v.to_string(), MAX_INLINE)
}

pub fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// The timeline of a history (the CLI's wording, shortened).
pub fn rows(history: &[Event]) -> Vec<Row> {
    let mut names: HashMap<i64, String> = HashMap::new();
    history.iter().map(|e| row(e, &mut names)).collect()
}

fn row(event: &Event, names: &mut HashMap<i64, String>) -> Row {
    let name = |names: &HashMap<i64, String>, seq: &i64| {
        names.get(seq).cloned().unwrap_or_else(|| format!("#{seq}"))
    };
    let (class, text) = match &event.payload {
        E::TaskSubmitted {
            workflow,
            input,
            agent,
            on_behalf_of,
            ..
        } => (
            "task",
            format!(
                "submitted {workflow} by {}{}{}, input {}",
                event.actor,
                agent
                    .as_deref()
                    .map(|a| format!(" for agent {a}"))
                    .unwrap_or_default(),
                on_behalf_of
                    .as_deref()
                    .map(|u| format!(" on behalf of {u}"))
                    .unwrap_or_default(),
                json(input)
            ),
        ),
        E::TaskStarted { worker, .. } => ("task", format!("started by worker {worker}")),
        E::PolicyEvaluated {
            name: n,
            tool,
            input,
            principal,
            decision,
            ..
        } => {
            names.insert(event.seq, n.clone());
            let rules: Vec<String> = decision
                .decided_by
                .iter()
                .map(|r| format!("{} “{}”", r.id, r.message))
                .collect();
            (
                "policy",
                format!(
                    "gateway: step '{n}' → {} for {tool} {} as {}{} — {}{}",
                    decision.path,
                    json(input),
                    principal.agent.as_deref().unwrap_or("(operator task)"),
                    principal
                        .on_behalf_of
                        .as_deref()
                        .map(|u| format!(" on behalf of {u}"))
                        .unwrap_or_default(),
                    rules.join("; "),
                    decision
                        .preapproval
                        .as_ref()
                        .map(|p| format!("; pre-approved by {} ({})", p.granted_by, p.id))
                        .unwrap_or_default()
                ),
            )
        }
        E::StepScheduled {
            name: n,
            tool,
            input,
            compensation,
            recovery_path,
            ..
        } => {
            names.insert(event.seq, n.clone());
            let undo = match (compensation, recovery_path) {
                (Some(c), _) => format!(" (compensation: {} {})", c.tool, json(&c.input)),
                (None, Some(r)) => format!(" (no compensation; recovery path: {r})"),
                _ => String::new(),
            };
            (
                "step",
                format!("step '{n}' scheduled: {tool} {}{undo}", json(input)),
            )
        }
        E::StepDenied { rule, reason, .. } => ("policy", format!("step denied ({rule}): {reason}")),
        E::ApprovalRequested {
            subject,
            approvers,
            quorum,
            deadline_at_ms,
            escalation,
            ..
        } => (
            "approval",
            format!(
                "approval of '{subject}' requested from {} (quorum {quorum}, deadline {}{})",
                approvers.join(", "),
                time(*deadline_at_ms),
                escalation
                    .as_deref()
                    .map(|e| format!(", escalates to {e}"))
                    .unwrap_or_default()
            ),
        ),
        E::ApprovalDecided {
            identity,
            approved,
            comment,
            edit,
            via,
            ..
        } => (
            "approval",
            format!(
                "{} by {identity}{}{}{}",
                if *approved { "approved" } else { "rejected" },
                via.as_deref()
                    .map(|v| format!(" (via {v})"))
                    .unwrap_or_default(),
                edit.as_ref()
                    .map(|e| format!(", editing {}", json(e)))
                    .unwrap_or_default(),
                comment
                    .as_deref()
                    .map(|c| format!(": {c}"))
                    .unwrap_or_default()
            ),
        ),
        E::ApprovalEscalated {
            to, deadline_at_ms, ..
        } => (
            "approval",
            format!(
                "approval escalated to {to} (new deadline {})",
                time(*deadline_at_ms)
            ),
        ),
        E::ApprovalEditEvaluated {
            input, decision, ..
        } => (
            "approval",
            format!(
                "the approver's edit {} re-checked: {} ({})",
                json(input),
                decision.path,
                decision.explain()
            ),
        ),
        E::ApprovalResolved {
            request_seq,
            outcome,
            by,
            comment,
        } => (
            "approval",
            format!(
                "approval request {request_seq} {outcome}{}{}",
                if by.is_empty() {
                    String::new()
                } else {
                    format!(" by {}", by.join(", "))
                },
                comment
                    .as_deref()
                    .map(|c| format!(": {c}"))
                    .unwrap_or_default()
            ),
        ),
        E::StepCompleted {
            step_seq,
            attempt,
            output,
            duration_ms,
            ..
        } => (
            "step",
            format!(
                "step '{}' completed (attempt {attempt}, {duration_ms} ms): {}",
                name(names, step_seq),
                json(output)
            ),
        ),
        E::StepAttemptFailed {
            step_seq,
            attempt,
            error,
            next_attempt_at_ms,
            ..
        } => (
            "step",
            format!(
                "step '{}' attempt {attempt} failed: {} — next attempt at {}",
                name(names, step_seq),
                error.message,
                time(*next_attempt_at_ms)
            ),
        ),
        E::StepFailed {
            step_seq,
            attempt,
            error,
            ..
        } => (
            "step",
            format!(
                "step '{}' failed for good (attempt {attempt}): {}",
                name(names, step_seq),
                error.message
            ),
        ),
        E::CompensationStarted {
            step_seq,
            tool,
            input,
            ..
        } => {
            names.insert(event.seq, name(names, step_seq));
            (
                "compensation",
                format!(
                    "compensating step '{}' with {tool} {}",
                    name(names, step_seq),
                    json(input)
                ),
            )
        }
        E::CompensationCompleted {
            compensation_seq, ..
        } => (
            "compensation",
            format!(
                "compensation of '{}' completed",
                name(names, compensation_seq)
            ),
        ),
        E::CompensationAttemptFailed {
            compensation_seq,
            attempt,
            error,
            ..
        } => (
            "compensation",
            format!(
                "compensation of '{}' attempt {attempt} failed: {}",
                name(names, compensation_seq),
                error.message
            ),
        ),
        E::CompensationFailed {
            compensation_seq,
            error,
            ..
        } => (
            "compensation",
            format!(
                "compensation of '{}' failed for good: {}",
                name(names, compensation_seq),
                error.message
            ),
        ),
        E::CompensationSkipped {
            step_seq,
            reason,
            recovery_path,
        } => (
            "compensation",
            format!(
                "step '{}' not undone: {reason}{}",
                name(names, step_seq),
                recovery_path
                    .as_deref()
                    .map(|r| format!("; recovery path: {r}"))
                    .unwrap_or_default()
            ),
        ),
        E::CancelRequested { rollback, reason } => (
            "task",
            format!(
                "cancel requested by {} ({}){}",
                event.actor,
                if *rollback {
                    "with rollback"
                } else {
                    "without rollback"
                },
                reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ),
        ),
        E::TaskPaused { reason } => (
            "task",
            format!(
                "paused by {}{}",
                event.actor,
                reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ),
        ),
        E::TaskResumed {} => ("task", format!("resumed by {}", event.actor)),
        E::RetryRequested {} => ("task", format!("retry requested by {}", event.actor)),
        E::TaskCompleted { output } => ("task", format!("completed: {}", json(output))),
        E::TaskFailed {
            error,
            compensated_steps,
        } => (
            "task",
            format!("failed after {compensated_steps} compensations: {error}"),
        ),
        E::TaskEscalated {
            reason,
            recovery_paths,
            ..
        } => (
            "task",
            format!(
                "escalated to a person: {reason}{}",
                if recovery_paths.is_empty() {
                    String::new()
                } else {
                    format!(" (recovery: {})", recovery_paths.join("; "))
                }
            ),
        ),
        E::TaskCancelled {
            rolled_back,
            compensated_steps,
        } => (
            "task",
            format!(
                "cancelled{}",
                if *rolled_back {
                    format!(", {compensated_steps} steps rolled back")
                } else {
                    String::new()
                }
            ),
        ),
        E::TaskBlocked { reason, .. } => ("task", format!("blocked: {reason}")),
        E::WorkflowFailed { error } => ("task", format!("the workflow failed: {error}")),
        other => {
            let (_, payload) = other.to_parts();
            ("other", json(&payload))
        }
    };
    let (kind, payload) = event.payload.to_parts();
    Row {
        seq: event.seq,
        at: time(event.recorded_at_ms),
        actor: printable(&event.actor),
        kind: kind.to_string(),
        class,
        text: printable(&clip(&text, 2 * MAX_INLINE)),
        detail: serde_json::to_string_pretty(&payload).unwrap_or_default(),
    }
}

/// A step of a plan, placed for drawing.
pub struct Node {
    pub id: String,
    pub tool: String,
    pub state: &'static str,
    pub x: i64,
    pub y: i64,
}

/// An arrow from a step to one that depends on it.
pub struct Edge {
    pub x1: i64,
    pub y1: i64,
    pub x2: i64,
    pub y2: i64,
}

/// A plan drawn as columns by depth.
pub struct Dag {
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    pub width: i64,
    pub height: i64,
}

pub const NODE_W: i64 = 170;
pub const NODE_H: i64 = 44;
const GAP_X: i64 = 50;
const GAP_Y: i64 = 20;

/// The DAG of a plan task (`None` for other workflows), each step with the
/// state its history gives it.
pub fn dag(workflow: &str, input: &Value, history: &[Event]) -> Option<Dag> {
    if workflow != "plan" {
        return None;
    }
    let steps = input.get("steps")?.as_array()?;
    let mut ids = Vec::new();
    let mut deps: HashMap<String, Vec<String>> = HashMap::new();
    let mut tools = HashMap::new();
    for s in steps.iter().take(MAX_DAG_NODES) {
        let id = s.get("id")?.as_str()?.to_string();
        let d = s
            .get("depends_on")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        tools.insert(
            id.clone(),
            s.get("tool")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        );
        deps.insert(id.clone(), d);
        ids.push(id);
    }
    let states = step_states(history);
    // Depth: the longest chain of dependencies (plans are acyclic; a bound
    // on the passes keeps a malformed input from looping).
    let mut depth: HashMap<&str, i64> = ids.iter().map(|i| (i.as_str(), 0)).collect();
    for _ in 0..ids.len() {
        let mut changed = false;
        for id in &ids {
            for d in &deps[id] {
                if let Some(&dd) = depth.get(d.as_str())
                    && depth[id.as_str()] < dd + 1
                {
                    depth.insert(id.as_str(), dd + 1);
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    let mut per_column: BTreeMap<i64, i64> = BTreeMap::new();
    let mut pos: HashMap<&str, (i64, i64)> = HashMap::new();
    let mut nodes = Vec::new();
    for id in &ids {
        let col = depth[id.as_str()];
        let row = per_column.entry(col).or_insert(0);
        let (x, y) = (10 + col * (NODE_W + GAP_X), 10 + *row * (NODE_H + GAP_Y));
        *row += 1;
        pos.insert(id.as_str(), (x, y));
        nodes.push(Node {
            id: printable(id),
            tool: printable(&tools[id]),
            state: states.get(id.as_str()).copied().unwrap_or("pending"),
            x,
            y,
        });
    }
    let mut edges = Vec::new();
    for id in &ids {
        for d in &deps[id] {
            if let (Some(&(x1, y1)), Some(&(x2, y2))) = (pos.get(d.as_str()), pos.get(id.as_str()))
            {
                edges.push(Edge {
                    x1: x1 + NODE_W,
                    y1: y1 + NODE_H / 2,
                    x2,
                    y2: y2 + NODE_H / 2,
                });
            }
        }
    }
    let width = nodes.iter().map(|n| n.x + NODE_W + 10).max().unwrap_or(0);
    let height = nodes.iter().map(|n| n.y + NODE_H + 10).max().unwrap_or(0);
    Some(Dag {
        nodes,
        edges,
        width,
        height,
    })
}

/// Each step's latest state, by the step's name.
fn step_states(history: &[Event]) -> HashMap<String, &'static str> {
    let mut by_seq: HashMap<i64, String> = HashMap::new();
    let mut out = HashMap::new();
    for e in history {
        let (seq_name, state) = match &e.payload {
            E::PolicyEvaluated { name, .. } => {
                by_seq.insert(e.seq, name.clone());
                (Some(name.clone()), "decided")
            }
            E::ApprovalRequested {
                policy_seq: Some(p),
                ..
            } => (by_seq.get(p).cloned(), "awaiting_approval"),
            E::StepDenied { policy_seq, .. } => (by_seq.get(policy_seq).cloned(), "denied"),
            E::StepScheduled { name, .. } => {
                by_seq.insert(e.seq, name.clone());
                (Some(name.clone()), "running")
            }
            E::StepAttemptFailed { step_seq, .. } => (by_seq.get(step_seq).cloned(), "retrying"),
            E::StepCompleted { step_seq, .. } => (by_seq.get(step_seq).cloned(), "completed"),
            E::StepFailed { step_seq, .. } => (by_seq.get(step_seq).cloned(), "failed"),
            E::CompensationStarted { step_seq, .. } => {
                let n = by_seq.get(step_seq).cloned();
                if let Some(n) = &n {
                    by_seq.insert(e.seq, n.clone());
                }
                (n, "compensating")
            }
            E::CompensationCompleted {
                compensation_seq, ..
            } => (by_seq.get(compensation_seq).cloned(), "compensated"),
            E::CompensationFailed {
                compensation_seq, ..
            } => (by_seq.get(compensation_seq).cloned(), "failed"),
            E::CompensationSkipped { step_seq, .. } => {
                (by_seq.get(step_seq).cloned(), "not_undone")
            }
            _ => (None, ""),
        };
        if let Some(n) = seq_name {
            out.insert(n, state);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_not_sent() {
        assert_eq!(printable("a\u{1b}[31mred\u{7}"), "a\\u{1b}[31mred\\u{7}");
        assert_eq!(printable("two\nlines\tok"), "two\nlines\tok");
    }
}
