//! `saga`: a workflow whose steps come from its input. Stages run one after
//! the other; the steps of a stage run in parallel (all of them finish before
//! the stage's result counts). A failed step fails the workflow after its
//! stage, and the engine compensates every completed step in reverse order.

use std::time::Duration;

use futures::future::{BoxFuture, join_all};
use mandate_engine::{
    Compensation, RetryPolicy, StepOptions, Workflow, WorkflowContext, WorkflowError,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The input of `saga`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SagaInput {
    pub stages: Vec<Vec<SagaItem>>,
}

/// One item of a stage.
// serde_json's `preserve_order` (on for the workspace through cedar-policy)
// makes a step larger than the other items; a saga holds few, unboxed is fine.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SagaItem {
    Step(SagaStep),
    Sleep {
        sleep_ms: u64,
    },
    WaitSignal {
        wait_signal: String,
        #[serde(default)]
        timeout_ms: Option<u64>,
        /// Show `needs_approval` while waiting.
        #[serde(default)]
        approval: bool,
    },
}

/// A tool call with its optional compensation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SagaStep {
    #[serde(default)]
    pub name: Option<String>,
    pub tool: String,
    #[serde(default)]
    pub input: Value,
    #[serde(default)]
    pub compensate: Option<SagaCompensation>,
    #[serde(default)]
    pub retry: Option<RetryPolicy>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub recovery_path: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SagaCompensation {
    pub tool: String,
    #[serde(default)]
    pub input: Value,
    #[serde(default)]
    pub retry: Option<RetryPolicy>,
}

pub struct Saga;

impl SagaStep {
    fn options(&self, index: usize) -> StepOptions {
        let mut o = StepOptions::new(self.tool.clone(), self.input.clone()).name(
            self.name
                .clone()
                .unwrap_or_else(|| format!("{}#{index}", self.tool)),
        );
        if let Some(r) = &self.retry {
            o = o.retry(r.clone());
        }
        if let Some(t) = self.timeout_ms {
            o = o.timeout(Duration::from_millis(t));
        }
        if let Some(c) = &self.compensate {
            o.compensation = Some(Compensation {
                tool: c.tool.clone(),
                input: c.input.clone(),
                retry: c
                    .retry
                    .clone()
                    .unwrap_or_else(RetryPolicy::compensation_default),
            });
        }
        if let Some(r) = &self.recovery_path {
            o = o.recovery(r.clone());
        }
        o
    }
}

/// Checks one item against its own shape and the engine's bounds; the
/// message names the field.
fn validate_item(item: &Value) -> Result<(), String> {
    let limits = mandate_engine::Limits::default();
    let Some(obj) = item.as_object() else {
        return Err(
            "must be an object: a step {tool, …}, a sleep {sleep_ms} or a wait {wait_signal, …}"
                .into(),
        );
    };
    let timer = |field: &str, v: Option<u64>| -> Result<(), String> {
        match v {
            Some(ms) if ms > limits.max_timer_ms => Err(format!(
                "field {field}: {ms} ms exceeds the limit of {} ms (366 days)",
                limits.max_timer_ms
            )),
            _ => Ok(()),
        }
    };
    let retry = |field: &str, r: &Option<RetryPolicy>| -> Result<(), String> {
        match r {
            Some(r) => r.validate().map_err(|e| format!("field {field}: {e}")),
            None => Ok(()),
        }
    };
    if obj.contains_key("tool") {
        let step: SagaStep =
            serde_json::from_value(item.clone()).map_err(|e| format!("step: {e}"))?;
        retry("retry", &step.retry)?;
        if let Some(t) = step.timeout_ms
            && (t == 0 || t > mandate_engine::core::workflow::MAX_STEP_TIMEOUT_MS)
        {
            return Err(format!(
                "field timeout_ms: {t} is out of range; give 1 to {} ms",
                mandate_engine::core::workflow::MAX_STEP_TIMEOUT_MS
            ));
        }
        if let Some(c) = &step.compensate {
            retry("compensate.retry", &c.retry)?;
        }
        Ok(())
    } else if obj.contains_key("sleep_ms") {
        match serde_json::from_value::<SagaItem>(item.clone()) {
            Ok(SagaItem::Sleep { sleep_ms }) => timer("sleep_ms", Some(sleep_ms)),
            _ => Err("a sleep is {\"sleep_ms\": <ms>} and nothing else; sleep_ms must be a whole number of ms".into()),
        }
    } else if obj.contains_key("wait_signal") {
        match serde_json::from_value::<SagaItem>(item.clone()) {
            Ok(SagaItem::WaitSignal { timeout_ms, .. }) => timer("timeout_ms", timeout_ms),
            _ => Err(
                "a wait is {\"wait_signal\": <name>, \"timeout_ms\"?: <ms>, \"approval\"?: <bool>}"
                    .into(),
            ),
        }
    } else {
        Err(format!(
            "unknown item with fields {}; an item is a step {{tool, …}}, a sleep {{sleep_ms}} or a wait {{wait_signal, …}}",
            obj.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
    }
}

impl Workflow for Saga {
    fn name(&self) -> &str {
        "saga"
    }

    /// Version 2: approval items are engine approval requests (version 1
    /// waited for a signal; its histories replay through the same code).
    fn version(&self) -> u32 {
        2
    }

    /// A signal never decides an approval item, not even a version-1 task's
    /// (whose approval waits were signal waits).
    fn check_signal(
        &self,
        history: &[mandate_engine::Event],
        name: &str,
        _payload: &Value,
        _sender: &str,
    ) -> Result<(), String> {
        let input = match history.first().map(|e| &e.payload) {
            Some(mandate_engine::EventPayload::TaskSubmitted { input, .. }) => input,
            _ => return Ok(()),
        };
        let is_approval = serde_json::from_value::<SagaInput>(input.clone())
            .map(|i| {
                i.stages.iter().flatten().any(|item| {
                    matches!(item, SagaItem::WaitSignal { wait_signal, approval: true, .. } if wait_signal == name)
                })
            })
            .unwrap_or(false);
        if is_approval {
            return Err(format!(
                "{name:?} is an approval: approvals are decided only through `mandate approve` / POST /v1/approvals with an authenticated identity"
            ));
        }
        Ok(())
    }

    fn validate_input(&self, input: &Value) -> Result<(), String> {
        let Some(stages) = input.get("stages").and_then(Value::as_array) else {
            return Err(
                "field stages: required, an array of stages (each an array of items)".into(),
            );
        };
        if let Some(extra) = input
            .as_object()
            .and_then(|o| o.keys().find(|k| *k != "stages"))
        {
            return Err(format!(
                "field {extra}: unknown; the saga input has only stages"
            ));
        }
        for (i, stage) in stages.iter().enumerate() {
            let Some(items) = stage.as_array() else {
                return Err(format!("stages[{i}]: must be an array of items"));
            };
            for (j, item) in items.iter().enumerate() {
                validate_item(item).map_err(|e| format!("stages[{i}][{j}]: {e}"))?;
            }
        }
        serde_json::from_value::<SagaInput>(input.clone())
            .map(|_| ())
            .map_err(|e| format!("saga input: {e}"))
    }

    fn run(
        &self,
        ctx: WorkflowContext,
        input: Value,
    ) -> BoxFuture<'static, Result<Value, WorkflowError>> {
        Box::pin(async move {
            let input: SagaInput = serde_json::from_value(input)
                .map_err(|e| WorkflowError::new(format!("saga: invalid input: {e}")))?;
            let mut outputs = Vec::new();
            let mut index = 0usize;
            for (stage_no, stage) in input.stages.iter().enumerate() {
                let mut futures: Vec<BoxFuture<'static, Result<Value, String>>> = Vec::new();
                for item in stage {
                    index += 1;
                    match item {
                        SagaItem::Step(step) => {
                            let f = ctx.step(step.options(index));
                            futures
                                .push(Box::pin(async move { f.await.map_err(|e| e.to_string()) }));
                        }
                        SagaItem::Sleep { sleep_ms } => {
                            let f = ctx.sleep(Duration::from_millis(*sleep_ms));
                            futures.push(Box::pin(async move {
                                f.await;
                                Ok(Value::Null)
                            }));
                        }
                        SagaItem::WaitSignal {
                            wait_signal,
                            timeout_ms,
                            approval,
                        } => {
                            let timeout = timeout_ms.map(Duration::from_millis);
                            let name = wait_signal.clone();
                            if *approval && ctx.workflow_version() >= 2 {
                                let f = ctx.wait_approval(&name, timeout);
                                futures.push(Box::pin(async move {
                                    let a = f.await;
                                    if a.approved() {
                                        Ok(json!({"approval": name, "outcome": a.outcome, "by": a.by, "comment": a.comment}))
                                    } else {
                                        Err(format!(
                                            "approval {name:?} {}{}",
                                            a.outcome,
                                            if a.by.is_empty() { String::new() } else { format!(" by {}", a.by.join(", ")) }
                                        ))
                                    }
                                }));
                                continue;
                            }
                            let f = if *approval {
                                futures::future::Either::Left(
                                    ctx.wait_approval_signal_v1(&name, timeout),
                                )
                            } else {
                                futures::future::Either::Right(ctx.wait_signal(&name, timeout))
                            };
                            futures.push(Box::pin(async move {
                                match f.await {
                                    Some(s) => Ok(json!({"signal": s.name, "payload": s.payload, "sender": s.sender})),
                                    None => Err(format!("no signal {name:?} before the timeout")),
                                }
                            }));
                        }
                    }
                }
                let results = join_all(futures).await;
                let mut stage_out = Vec::new();
                for r in results {
                    match r {
                        Ok(v) => stage_out.push(v),
                        Err(e) => return Err(WorkflowError::new(format!("stage {stage_no}: {e}"))),
                    }
                }
                outputs.push(Value::Array(stage_out));
            }
            Ok(json!({"stages": outputs}))
        })
    }
}
