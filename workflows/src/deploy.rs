//! Deploy workflows: the reference saga.

use std::time::Duration;

use futures::future::BoxFuture;
use mandate_engine::{RetryPolicy, StepOptions, Workflow, WorkflowContext, WorkflowError};
use serde_json::{Value, json};

use crate::str_field;

/// `deploy_with_rollback` — input `{service, version, expect_healthy?}`.
///
/// 1. `deploy.snapshot` records the running version;
/// 2. `deploy.set_version` deploys, with its compensation (set the snapshot's
///    version back) persisted before it runs;
/// 3. `deploy.health_check`; if it fails the workflow fails and the engine
///    compensates in reverse: the deploy is rolled back.
pub struct DeployWithRollback;

pub(crate) async fn deploy(
    ctx: &WorkflowContext,
    input: &Value,
    workflow: &str,
) -> Result<Value, WorkflowError> {
    let service = str_field(input, workflow, "service")?.to_string();
    let version = str_field(input, workflow, "version")?.to_string();
    let expect_healthy = input
        .get("expect_healthy")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let snapshot = ctx
        .step(StepOptions::new("deploy.snapshot", json!({"service": service})).name("snapshot"))
        .await?;
    let previous = snapshot
        .get("version")
        .and_then(Value::as_str)
        .ok_or_else(|| WorkflowError::new("deploy.snapshot returned no version"))?
        .to_string();
    ctx.step(
        StepOptions::new(
            "deploy.set_version",
            json!({"service": service, "version": version}),
        )
        .name("deploy")
        .compensate(
            "deploy.set_version",
            json!({"service": service, "version": previous}),
        )
        .retry(RetryPolicy {
            max_attempts: 3,
            initial_backoff_ms: 100,
            ..RetryPolicy::default()
        }),
    )
    .await?;
    ctx.step(
        StepOptions::new(
            "deploy.health_check",
            json!({"service": service, "expect_healthy": expect_healthy}),
        )
        .name("health_check")
        .timeout(Duration::from_secs(30)),
    )
    .await?;
    Ok(json!({"service": service, "version": version, "previous_version": previous}))
}

/// The fields [`deploy`] reads, checked at submission so a task that could
/// only fail on its first line is never written: `service` and `version`
/// non-empty strings, `expect_healthy` a boolean when given. Other fields
/// are kept in the history and not read.
fn validate_deploy_input(input: &Value) -> Result<(), String> {
    let Some(fields) = input.as_object() else {
        return Err(format!(
            "the input must be a JSON object like {{\"service\": \"checkout\", \"version\": \"v4\"}}, not {}",
            kind(input)
        ));
    };
    for field in ["service", "version"] {
        match fields.get(field) {
            Some(Value::String(v)) if !v.trim().is_empty() => {}
            Some(Value::String(_)) => {
                return Err(format!("field {field}: must not be empty"));
            }
            Some(other) => {
                return Err(format!(
                    "field {field}: must be a string, not {}",
                    kind(other)
                ));
            }
            None => {
                return Err(format!(
                    "field {field}: missing; give the {field} to deploy (e.g. {{\"service\": \"checkout\", \"version\": \"v4\"}})"
                ));
            }
        }
    }
    match fields.get("expect_healthy") {
        None | Some(Value::Null) | Some(Value::Bool(_)) => Ok(()),
        Some(other) => Err(format!(
            "field expect_healthy: must be true or false, not {}",
            kind(other)
        )),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl Workflow for DeployWithRollback {
    fn name(&self) -> &str {
        "deploy_with_rollback"
    }

    fn validate_input(&self, input: &Value) -> Result<(), String> {
        validate_deploy_input(input)
    }

    fn run(
        &self,
        ctx: WorkflowContext,
        input: Value,
    ) -> BoxFuture<'static, Result<Value, WorkflowError>> {
        Box::pin(async move { deploy(&ctx, &input, "deploy_with_rollback").await })
    }
}

/// `gated_deploy` — input `{service, version, expect_healthy?, approval_timeout_ms?}`.
///
/// Asks for an engine approval named `deploy` (status `needs_approval`),
/// decided by the approvers the gateway names (the catalog's default
/// approvers) through `mandate approve` / `POST /v1/approvals`; on approval
/// deploys as [`DeployWithRollback`], on rejection or timeout fails without
/// touching anything. Version 1 (release 0.1) waited for a signal named
/// `approve`; its histories replay through the same code path.
pub struct GatedDeploy;

impl Workflow for GatedDeploy {
    fn name(&self) -> &str {
        "gated_deploy"
    }

    fn version(&self) -> u32 {
        2
    }

    fn run(
        &self,
        ctx: WorkflowContext,
        input: Value,
    ) -> BoxFuture<'static, Result<Value, WorkflowError>> {
        Box::pin(async move {
            let timeout_ms = input
                .get("approval_timeout_ms")
                .and_then(Value::as_u64)
                .unwrap_or(3_600_000);
            let timeout = Some(Duration::from_millis(timeout_ms));
            let approved_by = if ctx.workflow_version() < 2 {
                let Some(signal) = ctx.wait_approval_signal_v1("approve", timeout).await else {
                    return Err(WorkflowError::new(format!(
                        "no approval within {timeout_ms} ms; nothing was deployed"
                    )));
                };
                if signal.payload.get("approved").and_then(Value::as_bool) != Some(true) {
                    return Err(WorkflowError::new(format!(
                        "rejected by {}: {}",
                        signal.sender,
                        signal
                            .payload
                            .get("comment")
                            .and_then(Value::as_str)
                            .unwrap_or("no comment")
                    )));
                }
                Value::from(signal.sender)
            } else {
                let a = ctx.wait_approval("deploy", timeout).await;
                if !a.approved() {
                    return Err(WorkflowError::new(match a.outcome.as_str() {
                        "timed_out" => {
                            format!("no approval within {timeout_ms} ms; nothing was deployed")
                        }
                        other => format!(
                            "{other} by {}: {}; nothing was deployed",
                            a.by.join(", "),
                            a.comment.as_deref().unwrap_or("no comment")
                        ),
                    }));
                }
                Value::from(
                    a.by.iter()
                        .map(|b| format!("approver:{b}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                )
            };
            let mut out = deploy(&ctx, &input, "gated_deploy").await?;
            out["approved_by"] = approved_by;
            Ok(out)
        })
    }

    /// A signal never decides an approval, not even a version-1 task's.
    fn check_signal(
        &self,
        _history: &[mandate_engine::Event],
        name: &str,
        _payload: &Value,
        _sender: &str,
    ) -> Result<(), String> {
        if name == "approve" {
            return Err("approvals are decided only through `mandate approve` / POST /v1/approvals with an authenticated identity".into());
        }
        Ok(())
    }

    fn validate_input(&self, input: &Value) -> Result<(), String> {
        validate_deploy_input(input)?;
        match input.get("approval_timeout_ms") {
            None | Some(Value::Null) => Ok(()),
            Some(v) => match v.as_u64() {
                Some(t) if (1..=mandate_engine::Limits::default().max_timer_ms).contains(&t) => {
                    Ok(())
                }
                _ => Err(format!(
                    "field approval_timeout_ms: {v} is out of range; give 1 to {} ms",
                    mandate_engine::Limits::default().max_timer_ms
                )),
            },
        }
    }
}
