//! Demo tools: small, real tools whose side effects live in the [`World`]
//! (the engine's own database), so a demo or a test can watch a deploy, a
//! flag, a charge, a key or an IAM policy change appear and, after a
//! rollback, disappear.
//!
//! Every write goes through [`World::apply_call`] with the call's context,
//! so a duplicate delivery never changes the world twice, and a compensation
//! fences the step it undoes against a late attempt. These tools must
//! never keep state anywhere else (memory, files), or a restarted engine
//! would see a different world than the one it left.

mod deploy;
mod email;
mod flag;
mod iam;
mod input;
mod kv;
mod ledger;
mod testing;

use crate::world::{self, World};
use mandate_engine::tool::ToolError;
use mandate_engine::tool::ToolRegistry;

pub use deploy::{DeployHealthCheck, DeploySetVersion, DeploySnapshot, INITIAL_VERSION};
pub use email::EmailSend;
pub use flag::{FlagRestore, FlagSet};
pub use iam::{
    Finding, IamListPolicies, IamProposePolicy, IamPutPolicy, IamRestorePolicy, IamValidatePolicy,
    MAX_KEPT_VERSIONS, audit_document,
};
pub use kv::{KvDelete, KvPut};
pub use ledger::{LedgerCharge, LedgerRefund};
pub use testing::{MAX_SLEEP_MS, TestEcho, TestFault, TestFaultWrite};

/// The demo tools' names, for workflows and tests that call them.
pub mod names {
    /// [`super::DeploySnapshot`].
    pub const DEPLOY_SNAPSHOT: &str = "deploy.snapshot";
    /// [`super::DeploySetVersion`].
    pub const DEPLOY_SET_VERSION: &str = "deploy.set_version";
    /// [`super::DeployHealthCheck`].
    pub const DEPLOY_HEALTH_CHECK: &str = "deploy.health_check";
    /// [`super::FlagSet`].
    pub const FLAG_SET: &str = "flag.set";
    /// [`super::FlagRestore`].
    pub const FLAG_RESTORE: &str = "flag.restore";
    /// [`super::IamListPolicies`].
    pub const IAM_LIST_POLICIES: &str = "iam.list_policies";
    /// [`super::IamValidatePolicy`].
    pub const IAM_VALIDATE_POLICY: &str = "iam.validate_policy";
    /// [`super::IamProposePolicy`].
    pub const IAM_PROPOSE_POLICY: &str = "iam.propose_policy";
    /// [`super::IamPutPolicy`].
    pub const IAM_PUT_POLICY: &str = "iam.put_policy";
    /// [`super::IamRestorePolicy`].
    pub const IAM_RESTORE_POLICY: &str = "iam.restore_policy";
    /// [`super::LedgerCharge`].
    pub const LEDGER_CHARGE: &str = "ledger.charge";
    /// [`super::LedgerRefund`].
    pub const LEDGER_REFUND: &str = "ledger.refund";
    /// [`super::KvPut`].
    pub const KV_PUT: &str = "kv.put";
    /// [`super::KvDelete`].
    pub const KV_DELETE: &str = "kv.delete";
    /// [`super::EmailSend`].
    pub const EMAIL_SEND: &str = "email.send";
    /// [`super::TestEcho`].
    pub const TEST_ECHO: &str = "test.echo";
    /// [`super::TestFault`].
    pub const TEST_FAULT: &str = "test.fault";
    /// [`super::TestFaultWrite`].
    pub const TEST_FAULT_WRITE: &str = "test.fault_write";
}

/// The namespaces the demo tools keep their resources in.
pub mod namespaces {
    /// Deployed versions, keyed by service: `{"version": "v2"}`.
    pub const SERVICE: &str = "service";
    /// Feature flags, keyed by flag name: any JSON value.
    pub const FLAG: &str = "flag";
    /// Account balances, keyed by account: `{"balance_cents": 1200}`.
    pub const LEDGER: &str = "ledger";
    /// Free-form keys for the stress suite (and `test.fault_write`).
    pub const KV: &str = "kv";
    /// Sent emails, keyed by message id.
    pub const EMAIL: &str = "email";
    /// IAM policies, keyed by name: `{default_version, versions: [{version, document}]}`.
    pub const IAM_POLICY: &str = "iam_policy";
}

/// Registers every demo tool, all sharing `world`.
pub fn register_demo_tools(registry: &mut ToolRegistry, world: World) {
    registry
        .register(DeploySnapshot::new(world.clone()))
        .register(DeploySetVersion::new(world.clone()))
        .register(DeployHealthCheck::new(world.clone()))
        .register(FlagSet::new(world.clone()))
        .register(FlagRestore::new(world.clone()))
        .register(LedgerCharge::new(world.clone()))
        .register(LedgerRefund::new(world.clone()))
        .register(KvPut::new(world.clone()))
        .register(KvDelete::new(world.clone()))
        .register(EmailSend::new(world.clone()))
        .register(IamListPolicies::new(world.clone()))
        .register(IamValidatePolicy)
        .register(IamProposePolicy::new(world.clone()))
        .register(IamPutPolicy::new(world.clone()))
        .register(IamRestorePolicy::new(world.clone()))
        .register(TestEcho)
        .register(TestFault)
        .register(TestFaultWrite::new(world));
}

/// Turns a world failure into what the engine should see.
///
/// A refusal from the effect's own function passes through unchanged. A
/// database failure may be transient (a busy or restarting database), so it
/// is retryable; corruption and limit violations will not fix themselves.
fn world_failure(tool: &str, error: world::Error) -> ToolError {
    match error {
        world::Error::Rejected(refusal) => refusal,
        // A late attempt of a step that was rolled back: never retried.
        world::Error::Fenced { .. } => ToolError::non_retryable(format!("{tool}: {error}")),
        world::Error::Connect { .. } | world::Error::Database { .. } => {
            ToolError::retryable(format!("{tool}: {error}"))
        }
        world::Error::UnsupportedUrl { .. }
        | world::Error::Corrupt { .. }
        | world::Error::TooLarge { .. } => ToolError::non_retryable(format!("{tool}: {error}")),
    }
}
