//! `saga`: a workflow whose steps come from its input. Stages run one after
//! the other; the steps of a stage run in parallel (all of them finish before
//! the stage's result counts). A failed step fails the workflow after its
//! stage, and the engine compensates every completed step in reverse order.

use std::time::Duration;

use futures::future::{LocalBoxFuture, join_all};
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

impl Workflow for Saga {
    fn name(&self) -> &str {
        "saga"
    }

    fn validate_input(&self, input: &Value) -> Result<(), String> {
        serde_json::from_value::<SagaInput>(input.clone())
            .map(|_| ())
            .map_err(|e| format!("saga input: {e}"))
    }

    fn run(
        &self,
        ctx: WorkflowContext,
        input: Value,
    ) -> LocalBoxFuture<'static, Result<Value, WorkflowError>> {
        Box::pin(async move {
            let input: SagaInput = serde_json::from_value(input)
                .map_err(|e| WorkflowError::new(format!("saga: invalid input: {e}")))?;
            let mut outputs = Vec::new();
            let mut index = 0usize;
            for (stage_no, stage) in input.stages.iter().enumerate() {
                let mut futures: Vec<LocalBoxFuture<'static, Result<Value, String>>> = Vec::new();
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
                            let f = if *approval {
                                futures::future::Either::Left(ctx.wait_approval(&name, timeout))
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
