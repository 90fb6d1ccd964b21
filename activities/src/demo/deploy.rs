//! Deploy tools: read, change and health-check a service's deployed version,
//! kept in the world's `service` namespace as `{"version": "..."}`.
//!
//! A "bad" version (one whose name contains `bad`) is how a demo makes a
//! deploy fail its health check; these tools must never decide anything
//! else from a version's name.

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::input::Input;
use super::names::{DEPLOY_HEALTH_CHECK, DEPLOY_SET_VERSION, DEPLOY_SNAPSHOT};
use super::namespaces::SERVICE;
use super::world_failure;
use crate::world::World;
use mandate_engine::tool::{Tool, ToolContext, ToolError, ToolKind, ToolResult};

/// The version a service has before its first deploy.
pub const INITIAL_VERSION: &str = "v0";

/// The version recorded in a service resource, or [`INITIAL_VERSION`] when
/// the service was never deployed.
fn version_of(tool: &str, service: &str, resource: Option<&Value>) -> Result<String, ToolError> {
    match resource {
        None => Ok(INITIAL_VERSION.to_owned()),
        Some(value) => value
            .get("version")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| {
                ToolError::non_retryable(format!(
                    "{tool}: resource service/{service} holds {value}, which has no string `version`; fix or delete it"
                ))
            }),
    }
}

/// `deploy.snapshot` (read): input `{service}` → `{service, version}`, the
/// current version ("v0" if never deployed). Workflows call it before a
/// deploy so the rollback knows what to go back to.
#[derive(Debug, Clone)]
pub struct DeploySnapshot {
    world: World,
}

impl DeploySnapshot {
    /// A snapshot tool reading from `world`.
    pub fn new(world: World) -> Self {
        DeploySnapshot { world }
    }
}

impl Tool for DeploySnapshot {
    fn name(&self) -> &str {
        DEPLOY_SNAPSHOT
    }

    fn kind(&self) -> ToolKind {
        ToolKind::Read
    }

    fn call<'a>(&'a self, _ctx: ToolContext, input: Value) -> BoxFuture<'a, ToolResult> {
        async move {
            let input = Input::new(DEPLOY_SNAPSHOT, &input)?;
            let service = input.string("service")?;
            let resource = self
                .world
                .get(SERVICE, service)
                .await
                .map_err(|error| world_failure(DEPLOY_SNAPSHOT, error))?;
            let version = version_of(DEPLOY_SNAPSHOT, service, resource.as_ref())?;
            Ok(json!({ "service": service, "version": version }))
        }
        .boxed()
    }
}

/// `deploy.set_version` (reversible write): input `{service, version}` →
/// `{service, previous_version, version}`.
///
/// It is its own compensation: calling it again with `previous_version`
/// puts the service back.
#[derive(Debug, Clone)]
pub struct DeploySetVersion {
    world: World,
}

impl DeploySetVersion {
    /// A deploy tool writing to `world`.
    pub fn new(world: World) -> Self {
        DeploySetVersion { world }
    }
}

impl Tool for DeploySetVersion {
    fn name(&self) -> &str {
        DEPLOY_SET_VERSION
    }

    fn kind(&self) -> ToolKind {
        ToolKind::WriteReversible
    }

    fn recovery_path(&self) -> Option<&str> {
        Some("deploy → traffic rollback to the previous version; migrations may be irreversible")
    }

    fn call<'a>(&'a self, ctx: ToolContext, input: Value) -> BoxFuture<'a, ToolResult> {
        async move {
            let input = Input::new(DEPLOY_SET_VERSION, &input)?;
            let service = input.string("service")?.to_owned();
            let version = input.string("version")?.to_owned();
            self.world
                .apply_call(&ctx, DEPLOY_SET_VERSION, SERVICE, &service, |current| {
                    let previous = version_of(DEPLOY_SET_VERSION, &service, current.as_ref())?;
                    let output = json!({
                        "service": service,
                        "previous_version": previous,
                        "version": version,
                    });
                    Ok((Some(json!({ "version": version })), output))
                })
                .await
                .map_err(|error| world_failure(DEPLOY_SET_VERSION, error))
        }
        .boxed()
    }
}

/// `deploy.health_check` (read): input `{service, expect_healthy?}` →
/// `{service, version, healthy: true}`.
///
/// Fails non-retryably with "service S version V is unhealthy" when the
/// current version's name contains `bad` or `expect_healthy` is false; a
/// health check that failed this way will not pass by being asked again.
#[derive(Debug, Clone)]
pub struct DeployHealthCheck {
    world: World,
}

impl DeployHealthCheck {
    /// A health check reading from `world`.
    pub fn new(world: World) -> Self {
        DeployHealthCheck { world }
    }
}

impl Tool for DeployHealthCheck {
    fn name(&self) -> &str {
        DEPLOY_HEALTH_CHECK
    }

    fn kind(&self) -> ToolKind {
        ToolKind::Read
    }

    fn call<'a>(&'a self, _ctx: ToolContext, input: Value) -> BoxFuture<'a, ToolResult> {
        async move {
            let input = Input::new(DEPLOY_HEALTH_CHECK, &input)?;
            let service = input.string("service")?;
            let expect_healthy = input.optional_bool("expect_healthy")?.unwrap_or(true);
            let resource = self
                .world
                .get(SERVICE, service)
                .await
                .map_err(|error| world_failure(DEPLOY_HEALTH_CHECK, error))?;
            let version = version_of(DEPLOY_HEALTH_CHECK, service, resource.as_ref())?;
            if version.contains("bad") || !expect_healthy {
                return Err(ToolError::non_retryable(format!(
                    "service {service} version {version} is unhealthy"
                )));
            }
            Ok(json!({ "service": service, "version": version, "healthy": true }))
        }
        .boxed()
    }
}
