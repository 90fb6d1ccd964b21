//! The policy gate: Cedar policies over the tool catalog, composed down the
//! hierarchy organisation → team → agent, evaluated before every plan step.
//!
//! A policy directory holds `catalog.yaml` and Cedar files: `org/*.cedar`
//! (or `*.cedar` at the top), `team/<team>/*.cedar` and
//! `agent/<agent>/*.cedar`. An agent is judged by the org rules, its team's
//! and its own. Annotations carry what Cedar alone does not: `@id`,
//! `@message` (the human explanation), `@path` (the intervention path a
//! satisfied permit implies), `@role("gate")` (a permit that only sets a
//! path and never grants access), and for gated rules `@approvers("a, b")`,
//! `@quorum("2")`, `@timeout_ms("60000")`, `@escalation("cfo")`.
//!
//! Decisions: a satisfied `forbid` denies (forbid wins); otherwise at least
//! one satisfied org-level grant must permit, or the step is denied; the
//! path is the strictest over every satisfied permit (`monitored_execute`
//! by default). So a lower level can only restrict: its permits must be
//! gates, and a plain (widening) permit there is refused when the set loads,
//! naming the file and the rule. CRUDLEX presets are intersected over user,
//! agent and environment before Cedar runs; the agent's autonomy level is a
//! policy input (`context.autonomy`).
//!
//! The set in force is swapped atomically when the files change (checked at
//! most every `reload_interval`); a set that fails to load is refused with
//! its error and the old one stays in force. This module never touches a
//! task's history: the `policy.check` tool's recorded output is what the
//! history keeps, so replay never re-evaluates a policy.

mod eval;
mod gateway;
mod load;
pub mod tools;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::catalog::Catalog;

pub use eval::{ApprovalRequirement, CheckRequest, PolicyDecision, RuleRef};
pub use load::{Level, PolicySet, Rule};

/// The shipped default catalog and org policy (`activities/catalog/`).
pub const DEFAULT_CATALOG_YAML: &str = include_str!("../../catalog/catalog.yaml");
pub const DEFAULT_ORG_POLICY: &str = include_str!("../../catalog/org/baseline.cedar");

/// A policy set that could not be loaded: names the file and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Error(pub String);

/// The intervention paths are the engine's (`mandate_core::gateway`).
pub use mandate_engine::core::gateway::InterventionPath;

/// What governs steps: the catalog and the Cedar policies in force, reloaded
/// from a directory when its files change.
pub struct Governance {
    dir: Option<PathBuf>,
    current: RwLock<Arc<PolicySet>>,
    reload: Mutex<ReloadState>,
    reload_interval: Duration,
}

struct ReloadState {
    last_check: Option<Instant>,
    fingerprint: Vec<(PathBuf, u64, i128)>,
    last_error: Option<String>,
}

impl std::fmt::Debug for Governance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Governance")
            .field("dir", &self.dir)
            .field("policy_hash", &self.current().hash)
            .finish()
    }
}

impl Governance {
    /// The shipped default catalog and org policy; never reloads.
    pub fn shipped() -> Governance {
        let set = PolicySet::from_sources(
            ("catalog.yaml", DEFAULT_CATALOG_YAML),
            &[(
                "org/baseline.cedar".to_string(),
                DEFAULT_ORG_POLICY.to_string(),
            )],
        )
        .expect("the shipped catalog and policy load");
        Self::with_set(None, set, Vec::new())
    }

    /// Loads a policy directory; its files are watched for changes.
    pub fn load_dir(dir: impl AsRef<Path>) -> Result<Governance, Error> {
        let dir = dir.as_ref().to_path_buf();
        let fingerprint = load::fingerprint(&dir)?;
        let set = PolicySet::load_dir(&dir)?;
        Ok(Self::with_set(Some(dir), set, fingerprint))
    }

    fn with_set(
        dir: Option<PathBuf>,
        set: PolicySet,
        fingerprint: Vec<(PathBuf, u64, i128)>,
    ) -> Governance {
        Governance {
            dir,
            current: RwLock::new(Arc::new(set)),
            reload: Mutex::new(ReloadState {
                last_check: Some(Instant::now()),
                fingerprint,
                last_error: None,
            }),
            reload_interval: Duration::from_secs(1),
        }
    }

    /// How often the files are checked for changes (default one second; zero
    /// checks on every evaluation).
    pub fn with_reload_interval(mut self, interval: Duration) -> Governance {
        self.reload_interval = interval;
        self
    }

    /// The directory the policies come from, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The set in force.
    pub fn current(&self) -> Arc<PolicySet> {
        self.current.read().expect("policy lock").clone()
    }

    /// The last reload error (the set that was refused), if the latest change failed.
    pub fn last_reload_error(&self) -> Option<String> {
        self.reload.lock().expect("reload lock").last_error.clone()
    }

    /// Reloads now. A set that fails to load is refused with its error, and
    /// the set in force stays.
    pub fn reload(&self) -> Result<String, Error> {
        let Some(dir) = &self.dir else {
            return Ok(self.current().hash.clone());
        };
        let mut state = self.reload.lock().expect("reload lock");
        state.last_check = Some(Instant::now());
        state.fingerprint = load::fingerprint(dir).unwrap_or_default();
        match PolicySet::load_dir(dir) {
            Ok(set) => {
                let hash = set.hash.clone();
                *self.current.write().expect("policy lock") = Arc::new(set);
                state.last_error = None;
                tracing::info!(policy_hash = %hash, dir = %dir.display(), "policies reloaded");
                Ok(hash)
            }
            Err(e) => {
                tracing::error!(error = %e, "policy reload refused; the previous set stays in force");
                state.last_error = Some(e.0.clone());
                Err(e)
            }
        }
    }

    /// Reloads if the files changed since the last check (at most every
    /// `reload_interval`).
    pub fn reload_if_changed(&self) {
        let Some(dir) = &self.dir else { return };
        {
            let mut state = self.reload.lock().expect("reload lock");
            if state
                .last_check
                .is_some_and(|t| t.elapsed() < self.reload_interval)
            {
                return;
            }
            state.last_check = Some(Instant::now());
            match load::fingerprint(dir) {
                Ok(f) if f == state.fingerprint => return,
                Ok(_) => {}
                Err(e) => {
                    state.last_error = Some(e.0);
                    return;
                }
            }
        }
        let _ = self.reload();
    }

    /// Evaluates one step against the set in force (reloading first if due).
    pub fn check(&self, request: &CheckRequest) -> PolicyDecision {
        self.reload_if_changed();
        self.current().evaluate(request)
    }
}

/// A small convenience for callers holding a catalog: its tool entry as JSON.
pub fn tool_summary(catalog: &Catalog, tool: &str) -> Value {
    match catalog.tool(tool) {
        Some(t) => serde_json::json!({
            "kind": t.kind,
            "operation": t.operation,
            "owners": t.owners,
            "compensation": t.compensation,
            "recovery_path": catalog.recovery_path(t),
        }),
        None => Value::Null,
    }
}
