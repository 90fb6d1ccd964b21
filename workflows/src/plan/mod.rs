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
mod node;
#[cfg(test)]
mod node_tests;
pub mod refs;
mod v1;
pub mod validate;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::future::{BoxFuture, FutureExt};
use mandate_activities::Governance;
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

pub(crate) type StepResult = Result<(), String>;

/// Yields once before a command is issued. Replay makes all results that
/// arrived after the workflow's last command visible at once, where the live
/// run may have seen a failure alone; yielding lets every result of a batch
/// be observed (and a failure stop the plan) before any branch issues its
/// next command, so live run and replay issue the same commands.
pub(crate) struct Settle(pub(crate) bool);

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
pub(crate) async fn all_or_first_error(
    mut futures: Vec<Option<BoxFuture<'static, StepResult>>>,
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

pub(crate) struct RunState {
    ctx: WorkflowContext,
    doc: PlanDoc,
    outputs: Mutex<BTreeMap<String, Value>>,
    /// Version 2: the recorded catalog compensations (`catalog_compensations`).
    catalog: Value,
}

impl RunState {
    /// The outputs of the steps completed so far (never held across an await).
    pub(crate) fn outputs(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Value>> {
        self.outputs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(crate) fn steps_context(outputs: &BTreeMap<String, Value>) -> Value {
    Value::Object(
        outputs
            .iter()
            .map(|(k, v)| (k.clone(), json!({"output": v})))
            .collect(),
    )
}

/// The compensation `step` registers when it runs with `input`: the step's
/// own `compensate`, else the catalog's (as recorded when the task first ran), its input
/// template resolved against the recorded outputs of earlier steps and
/// `input` (`${steps.X.output…}`, `${input.…}`). It is fixed before the step
/// runs (it must also undo a step whose effect is unknown), so it never reads
/// the step's own output. The approval inbox shows exactly this.
pub fn resolve_compensation(
    step: &PlanStep,
    catalog_compensation: Option<&Value>,
    outputs: &BTreeMap<String, Value>,
    input: &Value,
) -> Result<Option<Compensation>, String> {
    let (tool, template, retry) = match (&step.compensate, catalog_compensation) {
        (Some(c), _) => (c.tool.clone(), c.input.clone(), c.retry.clone()),
        (None, Some(c)) => (
            c["tool"].as_str().unwrap_or_default().to_string(),
            c.get("input").cloned().unwrap_or(json!({})),
            None,
        ),
        (None, None) => return Ok(None),
    };
    // Only a template with references needs the context (a copy of every
    // output recorded so far).
    let resolved = if refs::has_refs(&template) {
        let context = json!({"steps": steps_context(outputs), "input": input});
        refs::resolve(&template, &context, "compensate.input")
            .map_err(|e| format!("step {:?}: {e}", step.id))?
    } else {
        template
    };
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
    /// The catalog's compensation mapping for a step, as recorded when the
    /// task first ran (`null` when the catalog had none).
    fn catalog_compensation(&self, step: &PlanStep) -> Option<&Value> {
        self.catalog.get(&step.id).filter(|v| !v.is_null())
    }

    /// Runs one step: the engine's gateway decides it (and asks for approval
    /// when gated) before it is scheduled; a denial comes back as the step's
    /// error.
    async fn run_step(&self, index: usize) -> StepResult {
        let step = &self.doc.steps[index];
        let input = if refs::has_refs(&step.input) {
            let steps = steps_context(&self.outputs());
            refs::resolve(&step.input, &json!({"steps": steps}), "input")
                .map_err(|e| format!("step {:?}: {e}", step.id))?
        } else {
            step.input.clone()
        };
        let mut options = StepOptions::new(step.tool.clone(), input.clone()).name(step.id.clone());
        if let Some(r) = &step.retry {
            options = options.retry(r.clone());
        }
        if let Some(t) = step.timeout_ms {
            options = options.timeout(Duration::from_millis(t));
        }
        options.compensation = resolve_compensation(
            step,
            self.catalog_compensation(step),
            &self.outputs(),
            &input,
        )?;
        if let Some(r) = step.recovery_path.clone() {
            options = options.recovery(r);
        }
        Settle(false).await;
        let output = self.ctx.step(options).await.map_err(|e| e.message)?;
        self.outputs().insert(step.id.clone(), output);
        Ok(())
    }
}

/// The catalog's compensation mapping of every step without its own
/// `compensate`, by step id.
fn catalog_compensations(doc: &PlanDoc, governance: &Governance) -> Value {
    let set = governance.current();
    Value::Object(
        doc.steps
            .iter()
            .filter(|s| s.compensate.is_none())
            .map(|s| {
                let mapping = set
                    .catalog
                    .tool(&s.tool)
                    .and_then(|t| t.compensation.as_ref())
                    .map(|c| serde_json::to_value(c).unwrap_or(Value::Null))
                    .unwrap_or(Value::Null);
                (s.id.clone(), mapping)
            })
            .collect(),
    )
}

async fn run_plan(
    ctx: WorkflowContext,
    input: Value,
    governance: Arc<Governance>,
) -> Result<Value, WorkflowError> {
    run_plan_with::<node::Node>(ctx, input, governance).await
}

async fn run_plan_with<N: node::DagNode>(
    ctx: WorkflowContext,
    input: Value,
    governance: Arc<Governance>,
) -> Result<Value, WorkflowError> {
    let doc = validate::parse(&input).map_err(WorkflowError::new)?;
    let structure =
        validate::structure(&doc, &PlanLimits::default()).map_err(WorkflowError::new)?;
    // Recorded once: replay reads the mapping the task first ran with, so a
    // catalog change never changes a replay.
    let catalog = ctx.record(
        "catalog.compensations",
        catalog_compensations(&doc, &governance),
    );
    let state = Arc::new(RunState {
        ctx,
        doc,
        outputs: Mutex::new(BTreeMap::new()),
        catalog,
    });
    run_dag_with::<N>(state, &structure, |state, i| {
        async move { state.run_step(i).await }.boxed()
    })
    .await
}

/// Runs every step once its dependencies completed, in plan order; the first
/// failure fails the plan.
pub(crate) async fn run_dag(
    state: Arc<RunState>,
    structure: &Structure,
    run: impl Fn(Arc<RunState>, usize) -> BoxFuture<'static, StepResult>,
) -> Result<Value, WorkflowError> {
    run_dag_with::<node::Node>(state, structure, run).await
}

/// [`run_dag`] over any shared step future (the tests compare [`node::Node`]
/// with `futures::Shared`, which plans used before).
pub(crate) async fn run_dag_with<N: node::DagNode>(
    state: Arc<RunState>,
    structure: &Structure,
    run: impl Fn(Arc<RunState>, usize) -> BoxFuture<'static, StepResult>,
) -> Result<Value, WorkflowError> {
    let mut done: Vec<Option<N>> = vec![None; state.doc.steps.len()];
    for &i in &structure.order {
        let deps: Vec<N> = structure.deps[i]
            .iter()
            .map(|d| {
                done[*d]
                    .clone()
                    .expect("dependencies come first in topological order")
            })
            .collect();
        let step = run(state.clone(), i);
        let fut: BoxFuture<'static, StepResult> = async move {
            for d in deps {
                d.await?;
            }
            step.await
        }
        .boxed();
        done[i] = Some(N::new(fut));
    }
    // In plan order, so polling (and so the order of issued commands) is fixed.
    let all: Vec<_> = done
        .into_iter()
        .map(|f| Some(f.expect("every step has a future").boxed()))
        .collect();
    all_or_first_error(all).await.map_err(WorkflowError::new)?;
    let outputs = state.outputs().clone();
    Ok(json!({"steps": outputs}))
}

impl Workflow for Plan {
    fn name(&self) -> &str {
        "plan"
    }

    /// Version 2: governed by the engine's gateway (version 1 issued its own
    /// `policy.check` steps; its histories replay through [`v1`]).
    fn version(&self) -> u32 {
        2
    }

    fn run(
        &self,
        ctx: WorkflowContext,
        input: Value,
    ) -> BoxFuture<'static, Result<Value, WorkflowError>> {
        if ctx.workflow_version() < 2 {
            return Box::pin(v1::run_plan(ctx, input));
        }
        Box::pin(run_plan(ctx, input, self.governance.clone()))
    }

    fn validate_input(&self, input: &Value) -> Result<(), String> {
        validate_plan(input, &self.governance, &self.limits).map(|_| ())
    }

    /// A signal never decides an approval: a version-1 task's approval
    /// waits (`approval:<step>`) are refused here, even buffered before the
    /// wait starts.
    fn check_signal(
        &self,
        _history: &[Event],
        name: &str,
        _payload: &Value,
        _sender: &str,
    ) -> Result<(), String> {
        if name.starts_with("approval:") {
            return Err(
                "approvals are decided only through `mandate approve` / POST /v1/approvals with an authenticated identity, never by a signal".into(),
            );
        }
        Ok(())
    }
}

/// `preapproval`: release 0.1's pre-approval workflow, kept only so its
/// histories replay. New submissions are refused: pre-approvals are granted
/// by an authenticated owner of the tool through their own API
/// (`POST /v1/preapprovals`, `mandate preapproval grant`), never by a task.
pub struct Preapproval;

impl Workflow for Preapproval {
    fn name(&self) -> &str {
        "preapproval"
    }

    fn validate_input(&self, _input: &Value) -> Result<(), String> {
        Err("the preapproval workflow was removed: a task may not grant pre-approvals; an owner of the tool grants one with `mandate preapproval grant` or POST /v1/preapprovals".into())
    }

    fn run(
        &self,
        ctx: WorkflowContext,
        input: Value,
    ) -> BoxFuture<'static, Result<Value, WorkflowError>> {
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
                    StepOptions::new("preapproval.grant", grant)
                        .name("grant")
                        .compensate("preapproval.revoke", json!({"id": id})),
                )
                .await?;
            Ok(out)
        })
    }
}
