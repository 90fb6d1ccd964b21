//! Deploy workflows: the reference saga.

use std::time::Duration;

use futures::future::LocalBoxFuture;
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

impl Workflow for DeployWithRollback {
    fn name(&self) -> &str {
        "deploy_with_rollback"
    }

    fn run(
        &self,
        ctx: WorkflowContext,
        input: Value,
    ) -> LocalBoxFuture<'static, Result<Value, WorkflowError>> {
        Box::pin(async move { deploy(&ctx, &input, "deploy_with_rollback").await })
    }
}

/// `gated_deploy` — input `{service, version, expect_healthy?, approval_timeout_ms?}`.
///
/// Waits (status `needs_approval`) for a signal named `approve` with payload
/// `{"approved": true|false, "comment"?}`; on approval deploys as
/// [`DeployWithRollback`], on rejection or timeout fails without touching anything.
pub struct GatedDeploy;

impl Workflow for GatedDeploy {
    fn name(&self) -> &str {
        "gated_deploy"
    }

    fn run(
        &self,
        ctx: WorkflowContext,
        input: Value,
    ) -> LocalBoxFuture<'static, Result<Value, WorkflowError>> {
        Box::pin(async move {
            let timeout_ms = input
                .get("approval_timeout_ms")
                .and_then(Value::as_u64)
                .unwrap_or(3_600_000);
            let decision = ctx
                .wait_approval("approve", Some(Duration::from_millis(timeout_ms)))
                .await;
            let Some(signal) = decision else {
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
            let mut out = deploy(&ctx, &input, "gated_deploy").await?;
            out["approved_by"] = Value::from(signal.sender);
            Ok(out)
        })
    }
}
