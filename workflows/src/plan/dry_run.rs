//! The dry run of a plan (`mandate plan check`, `POST /v1/plans/dry-run`):
//! validate it whole as a submission would, then evaluate each step against
//! the policies in force. Runs nothing. References to earlier outputs are
//! unresolved in a dry run, so rules on such fields see the reference text,
//! and the input schema lets a reference stand for any type.

use mandate_activities::Governance;
use mandate_activities::policy::CheckRequest;
use serde_json::{Value, json};

use super::{PlanLimits, refs, validate_plan};

/// One entry per step, in run order: decision, deciding rules, owners, kind,
/// risk, approval rules and rollback. `Err` is the submission's refusal text.
pub fn dry_run(plan: &Value, governance: &Governance, now_ms: i64) -> Result<Value, String> {
    let (doc, structure) = validate_plan(plan, governance, &PlanLimits::default())?;
    let set = governance.current();
    let mut steps = Vec::new();
    for &i in &structure.order {
        let s = &doc.steps[i];
        let d = set.evaluate_unresolved(&CheckRequest {
            step: s.id.clone(),
            tool: s.tool.clone(),
            input: s.input.clone(),
            agent: doc.agent.clone(),
            on_behalf_of: doc.on_behalf_of.clone(),
            environment: doc.environment.clone(),
            now_ms,
        });
        // The compensation as the step would register it, with what only
        // earlier steps' outputs will tell named as such.
        let known = json!({"steps": {}, "input": s.input});
        let rollback = match (&s.compensate, &d.compensation) {
            (Some(c), _) => {
                json!({"compensation": {"tool": c.tool, "input": refs::render_known(&c.input, &known)}})
            }
            (None, Some(c)) => {
                json!({"compensation": {"tool": c["tool"], "input": refs::render_known(&c["input"], &known)}})
            }
            (None, None) => match s.recovery_path.clone().or(d.recovery_path.clone()) {
                Some(r) => json!({"recovery_path": r}),
                None => json!(null),
            },
        };
        steps.push(json!({
            "step": s.id,
            "tool": s.tool,
            "depends_on": structure.deps[i].iter().map(|d| doc.steps[*d].id.clone()).collect::<Vec<_>>(),
            "decision": d.decision,
            "rules": d.decided_by,
            "owners": d.owners,
            "scope": d.scope,
            "operation": d.operation,
            "kind": d.kind,
            "risk": d.risk,
            "approval": d.approval,
            "rollback": rollback,
        }));
    }
    Ok(json!({
        "agent": doc.agent,
        "on_behalf_of": doc.on_behalf_of,
        "reason": doc.reason,
        "policy_hash": set.hash,
        "steps": steps,
    }))
}
