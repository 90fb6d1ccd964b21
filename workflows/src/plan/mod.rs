//! `plan`: runs a DAG of tool calls an agent submitted as data (SPEC §5),
//! each step checked by policy first (SPEC §6) and, when gated, approved by
//! people (SPEC §7).
//!
//! At submission, [`Plan::validate_input`] checks the whole plan against the
//! catalog in force; nothing is written when it is refused. At run time the
//! workflow reads only its input and recorded step outputs: each step runs
//! `policy.check` as a recorded step and acts on its recorded decision, so a
//! replay after the policies changed sees the same decisions. Independent
//! branches run concurrently (one future per step, each awaiting its
//! dependencies); the first failure stops new steps and the engine
//! compensates every completed step in reverse completion order.

pub mod approvals;
pub mod document;
mod dry_run;
pub mod refs;
pub mod validate;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::future::{FutureExt, LocalBoxFuture, Shared};
use mandate_activities::Governance;
use mandate_activities::policy::tools::{
    APPROVAL_ESCALATE, POLICY_CHECK, PREAPPROVAL_GRANT, PREAPPROVAL_REVOKE,
};
use mandate_activities::policy::{InterventionPath, PolicyDecision};
use mandate_engine::{
    Compensation, Event, RetryPolicy, StepOptions, Workflow, WorkflowContext, WorkflowError,
};
use serde_json::{Value, json};

pub use document::{PlanDoc, PlanStep, parse_text};
pub use dry_run::dry_run;
pub use validate::{PlanLimits, Structure};

/// The `plan` workflow. Holds the governance it validates submissions against.
pub struct Plan {
    governance: Arc<Governance>,
    limits: PlanLimits,
}

impl Plan {
    pub fn new(governance: Arc<Governance>) -> Self {
        Self {
            governance,
            limits: PlanLimits::default(),
        }
    }

    pub fn with_limits(mut self, limits: PlanLimits) -> Self {
        self.limits = limits;
        self
    }
}

/// Validates a plan document against `governance` (everything `plan`
/// checks at submission). Returns the parsed plan and its DAG.
pub fn validate_plan(
    input: &Value,
    governance: &Governance,
    limits: &PlanLimits,
) -> Result<(PlanDoc, Structure), String> {
    let doc = validate::parse(input)?;
    let structure = validate::structure(&doc, limits)?;
    let set = governance.current();
    validate::check_catalog(&doc, &set.catalog)?;
    Ok((doc, structure))
}

type StepResult = Result<(), String>;

/// Yields once before a command is issued. Replay makes all results that
/// arrived after the workflow's last command visible at once, where the live
/// run may have seen a failure alone; yielding lets every result of a batch
/// be observed (and a failure stop the plan) before any branch issues its
/// next command, so live run and replay issue the same commands.
struct Settle(bool);

impl Future for Settle {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

/// Runs every future, polling all of them in plan order on each pass, and
/// returns the first error seen in that order. (`try_join_all` switches to an
/// ordered stream past 30 futures, which would hold an error back until the
/// futures before it finish.)
async fn all_or_first_error(
    mut futures: Vec<Option<LocalBoxFuture<'static, StepResult>>>,
) -> StepResult {
    futures::future::poll_fn(move |cx| {
        let mut pending = false;
        for slot in futures.iter_mut() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    Poll::Ready(Ok(())) => *slot = None,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(Ok(()))
        }
    })
    .await
}

struct RunState {
    ctx: WorkflowContext,
    doc: PlanDoc,
    outputs: RefCell<BTreeMap<String, Value>>,
}

fn steps_context(outputs: &BTreeMap<String, Value>) -> Value {
    Value::Object(
        outputs
            .iter()
            .map(|(k, v)| (k.clone(), json!({"output": v})))
            .collect(),
    )
}

/// The compensation `step` registers when it runs with `input`: the step's
/// own `compensate`, else the catalog's from its policy decision, its input
/// template resolved against the recorded outputs of earlier steps and
/// `input` (`${steps.X.output…}`, `${input.…}`). It is fixed before the step
/// runs (it must also undo a step whose effect is unknown), so it never reads
/// the step's own output. The approval inbox shows exactly this.
pub fn resolve_compensation(
    step: &PlanStep,
    decision: &PolicyDecision,
    outputs: &BTreeMap<String, Value>,
    input: &Value,
) -> Result<Option<Compensation>, String> {
    let (tool, template, retry) = match (&step.compensate, &decision.compensation) {
        (Some(c), _) => (c.tool.clone(), c.input.clone(), c.retry.clone()),
        (None, Some(c)) => (
            c["tool"].as_str().unwrap_or_default().to_string(),
            c.get("input").cloned().unwrap_or(json!({})),
            None,
        ),
        (None, None) => return Ok(None),
    };
    let context = json!({"steps": steps_context(outputs), "input": input});
    let resolved = refs::resolve(&template, &context, "compensate.input")
        .map_err(|e| format!("step {:?}: {e}", step.id))?;
    Ok(Some(Compensation {
        tool,
        input: resolved,
        retry: retry.unwrap_or_else(RetryPolicy::compensation_default),
    }))
}

/// Shallow merge: the approver's edit replaces the fields it names.
pub(crate) fn merge(input: &Value, edit: &Value) -> Value {
    let mut out = input.clone();
    if let (Some(o), Some(e)) = (out.as_object_mut(), edit.as_object()) {
        for (k, v) in e {
            o.insert(k.clone(), v.clone());
        }
    }
    out
}

impl RunState {
    async fn policy_check(
        &self,
        name: String,
        step: &PlanStep,
        input: &Value,
    ) -> Result<PolicyDecision, String> {
        Settle(false).await;
        let out = self
            .ctx
            .step(
                StepOptions::new(
                    POLICY_CHECK,
                    json!({
                        "step": step.id,
                        "tool": step.tool,
                        "input": input,
                        "agent": self.doc.agent,
                        "on_behalf_of": self.doc.on_behalf_of,
                        "environment": self.doc.environment,
                    }),
                )
                .name(name),
            )
            .await
            .map_err(|e| e.to_string())?;
        serde_json::from_value(out).map_err(|e| {
            format!(
                "step {:?}: policy.check returned an unreadable decision: {e}",
                step.id
            )
        })
    }

    fn denied(step: &PlanStep, d: &PolicyDecision) -> String {
        format!(
            "step {:?} ({}) denied by policy (set {}): {}",
            step.id,
            step.tool,
            &d.policy_hash[..d.policy_hash.len().min(12)],
            d.explain()
        )
    }

    /// Waits for the approvals a gated step needs; returns the input to run
    /// (edited by an approver, re-checked by policy).
    async fn approve(
        &self,
        step: &PlanStep,
        d: &PolicyDecision,
        input: Value,
    ) -> Result<Value, String> {
        let req = d
            .approval
            .clone()
            .unwrap_or(mandate_activities::policy::ApprovalRequirement {
                approvers: d.owners.clone(),
                quorum: 1,
                timeout_ms: 3_600_000,
                escalation: None,
            });
        let name = approvals::signal_name(&step.id);
        let mut approved: Vec<String> = Vec::new();
        let mut edit: Option<Value> = None;
        let mut escalated = false;
        while (approved.len() as u32) < req.quorum.max(1) {
            Settle(false).await;
            let signal = self
                .ctx
                .wait_approval(&name, Some(Duration::from_millis(req.timeout_ms)))
                .await;
            let Some(signal) = signal else {
                if let (Some(to), false) = (&req.escalation, escalated) {
                    Settle(false).await;
                    self.ctx
                        .step(
                            StepOptions::new(
                                APPROVAL_ESCALATE,
                                json!({"step": step.id, "to": to, "after_ms": req.timeout_ms}),
                            )
                            .name(format!("{}.escalate", step.id)),
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                    escalated = true;
                    continue;
                }
                return Err(format!(
                    "step {:?} ({}): no approval within {} ms{}; the step was not run",
                    step.id,
                    step.tool,
                    req.timeout_ms,
                    if escalated { " after escalation" } else { "" }
                ));
            };
            let who = approvals::identity(&signal.sender).to_string();
            let comment = signal.payload["comment"].as_str().unwrap_or("").to_string();
            if signal.payload["decision"].as_str() == Some("reject") {
                return Err(format!(
                    "step {:?} ({}) rejected by {who}{}",
                    step.id,
                    step.tool,
                    if comment.is_empty() {
                        String::new()
                    } else {
                        format!(": {comment}")
                    }
                ));
            }
            if approved.contains(&who) {
                continue;
            }
            approved.push(who);
            if let Some(e) = signal.payload.get("edit").filter(|e| e.is_object()) {
                edit = Some(e.clone());
            }
        }
        let Some(edit) = edit else { return Ok(input) };
        let edited = merge(&input, &edit);
        let recheck = self
            .policy_check(format!("{}.policy.edit", step.id), step, &edited)
            .await?;
        if recheck.decision == InterventionPath::Deny {
            return Err(format!(
                "the approver's edit of {}",
                Self::denied(step, &recheck)
            ));
        }
        Ok(edited)
    }

    async fn run_step(&self, index: usize) -> StepResult {
        let step = &self.doc.steps[index];
        let steps = steps_context(&self.outputs.borrow());
        let input = refs::resolve(&step.input, &json!({"steps": steps}), "input")
            .map_err(|e| format!("step {:?}: {e}", step.id))?;
        let decision = self
            .policy_check(format!("{}.policy", step.id), step, &input)
            .await?;
        let input = match decision.decision {
            InterventionPath::Deny => return Err(Self::denied(step, &decision)),
            InterventionPath::GatedExecute if decision.preapproval.is_none() => {
                self.approve(step, &decision, input).await?
            }
            _ => input,
        };
        let mut options = StepOptions::new(step.tool.clone(), input.clone()).name(step.id.clone());
        if let Some(r) = &step.retry {
            options = options.retry(r.clone());
        }
        if let Some(t) = step.timeout_ms {
            options = options.timeout(Duration::from_millis(t));
        }
        options.compensation =
            resolve_compensation(step, &decision, &self.outputs.borrow(), &input)?;
        if let Some(r) = step
            .recovery_path
            .clone()
            .or(decision.recovery_path.clone())
        {
            options = options.recovery(r);
        }
        Settle(false).await;
        let output = self.ctx.step(options).await.map_err(|e| e.to_string())?;
        self.outputs.borrow_mut().insert(step.id.clone(), output);
        Ok(())
    }
}

async fn run_plan(ctx: WorkflowContext, input: Value) -> Result<Value, WorkflowError> {
    let doc = validate::parse(&input).map_err(WorkflowError::new)?;
    let structure =
        validate::structure(&doc, &PlanLimits::default()).map_err(WorkflowError::new)?;
    let state = Rc::new(RunState {
        ctx,
        doc,
        outputs: RefCell::new(BTreeMap::new()),
    });
    let mut done: Vec<Option<Shared<LocalBoxFuture<'static, StepResult>>>> =
        vec![None; state.doc.steps.len()];
    for &i in &structure.order {
        let deps: Vec<Shared<LocalBoxFuture<'static, StepResult>>> = structure.deps[i]
            .iter()
            .map(|d| {
                done[*d]
                    .clone()
                    .expect("dependencies come first in topological order")
            })
            .collect();
        let state = state.clone();
        let fut: LocalBoxFuture<'static, StepResult> = async move {
            for d in deps {
                d.await?;
            }
            state.run_step(i).await
        }
        .boxed_local();
        done[i] = Some(fut.shared());
    }
    // In plan order, so polling (and so the order of issued commands) is fixed.
    let all: Vec<_> = done
        .into_iter()
        .map(|f| Some(f.expect("every step has a future").boxed_local()))
        .collect();
    all_or_first_error(all).await.map_err(WorkflowError::new)?;
    let outputs = state.outputs.borrow().clone();
    Ok(json!({"steps": outputs}))
}

impl Workflow for Plan {
    fn name(&self) -> &str {
        "plan"
    }

    fn run(
        &self,
        ctx: WorkflowContext,
        input: Value,
    ) -> LocalBoxFuture<'static, Result<Value, WorkflowError>> {
        Box::pin(run_plan(ctx, input))
    }

    fn validate_input(&self, input: &Value) -> Result<(), String> {
        validate_plan(input, &self.governance, &self.limits).map(|_| ())
    }

    /// Approvals: only allowed identities, never the submitting agent, each
    /// identity once, and only for a step that waits for approval.
    fn check_signal(
        &self,
        history: &[Event],
        name: &str,
        payload: &Value,
        sender: &str,
    ) -> Result<(), String> {
        approvals::check_decision(history, name, payload, sender)
    }
}

/// Longest pre-approval: 30 days.
pub const MAX_PREAPPROVAL_MS: u64 = 30 * 86_400_000;

/// `preapproval`: a batch pre-approval (SPEC §7) as a recorded operation.
/// Input `{tool, agent, scope?, duration_ms, granted_by}`; `granted_by` must
/// own the tool. The grant is written (and undone on rollback) by
/// `preapproval.grant`; `policy.check` honours it until it expires, naming
/// this task in its decision.
pub struct Preapproval {
    governance: Arc<Governance>,
}

impl Preapproval {
    pub fn new(governance: Arc<Governance>) -> Self {
        Self { governance }
    }
}

impl Workflow for Preapproval {
    fn name(&self) -> &str {
        "preapproval"
    }

    fn validate_input(&self, input: &Value) -> Result<(), String> {
        let field = |f: &str| {
            input
                .get(f)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| format!("field {f}: required, a non-empty string"))
        };
        let set = self.governance.current();
        let tool = field("tool")?;
        let entry = set
            .catalog
            .tool(tool)
            .ok_or_else(|| format!("field tool: unknown tool {tool:?}"))?;
        let agent = field("agent")?;
        if set.catalog.agent(agent).is_none() {
            return Err(format!(
                "field agent: agent {agent:?} is not in the catalog"
            ));
        }
        let by = field("granted_by")?;
        if !entry.owners.iter().any(|o| o == by) {
            return Err(format!(
                "field granted_by: {by} does not own {tool} (owners: {}); only an owner may pre-approve it",
                entry.owners.join(", ")
            ));
        }
        match input.get("duration_ms").and_then(Value::as_u64) {
            Some(d) if d > 0 && d <= MAX_PREAPPROVAL_MS => Ok(()),
            _ => Err(format!(
                "field duration_ms: required, 1..={MAX_PREAPPROVAL_MS}"
            )),
        }
    }

    fn run(
        &self,
        ctx: WorkflowContext,
        input: Value,
    ) -> LocalBoxFuture<'static, Result<Value, WorkflowError>> {
        Box::pin(async move {
            let now = ctx.now();
            let id = ctx.task_id();
            let duration = input["duration_ms"].as_u64().unwrap_or(0) as i64;
            let grant = json!({
                "id": id,
                "tool": input["tool"],
                "agent": input["agent"],
                "scope": input.get("scope").cloned().unwrap_or(Value::Null),
                "granted_by": input["granted_by"],
                "expires_at_ms": now + duration,
            });
            let out = ctx
                .step(
                    StepOptions::new(PREAPPROVAL_GRANT, grant)
                        .name("grant")
                        .compensate(PREAPPROVAL_REVOKE, json!({"id": id})),
                )
                .await?;
            Ok(out)
        })
    }
}
