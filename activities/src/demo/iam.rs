//! IAM tools for the IAM policy auditor (the seeds' reference agent):
//! enumerate policies, validate them, propose a replacement as a dry run,
//! apply it, and restore the version before it.
//!
//! Policies live in the world's `iam_policy` namespace, keyed by name, as
//! `{"default_version": N, "versions": [{"version": N, "document": {…}}]}`
//! (AWS IAM's managed-policy model: a change adds a version and makes it the
//! default; older versions are kept, up to [`MAX_KEPT_VERSIONS`]). Putting a
//! policy back is setting its default version back, so the undo of a change
//! needs only the version the change was made against — known before the
//! change runs, which is when the plan fixes its compensation. Migration
//! `0004_demo_iam.sql` seeds a few policies.
//!
//! These tools must never create or delete a policy: the seeded set is the
//! whole estate, which is what lets a re-run seed never bring anything back.

use futures::FutureExt;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::input::Input;
use super::names::{
    IAM_LIST_POLICIES, IAM_PROPOSE_POLICY, IAM_PUT_POLICY, IAM_RESTORE_POLICY, IAM_VALIDATE_POLICY,
};
use super::namespaces::IAM_POLICY;
use super::world_failure;
use crate::world::World;
use mandate_engine::tool::{Tool, ToolContext, ToolError, ToolKind, ToolResult};

/// Most versions kept per policy; the oldest go first, but never the default
/// nor the one it replaced (the one a rollback goes back to).
pub const MAX_KEPT_VERSIONS: usize = 10;

/// Most policies one `iam.validate_policy` call checks.
pub const MAX_POLICIES_PER_CALL: usize = 1_000;

/// One stored version of a policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PolicyVersion {
    version: i64,
    document: Value,
}

/// A policy as stored in the world.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StoredPolicy {
    default_version: i64,
    versions: Vec<PolicyVersion>,
}

impl StoredPolicy {
    /// Reads a stored policy; `None` (no such policy) is refused, as these
    /// tools only change policies that exist.
    fn read(tool: &str, name: &str, resource: Option<Value>) -> Result<StoredPolicy, ToolError> {
        let Some(value) = resource else {
            return Err(ToolError::non_retryable(format!(
                "{tool}: there is no IAM policy {name:?}; list them with {IAM_LIST_POLICIES}"
            )));
        };
        let policy: StoredPolicy = serde_json::from_value(value.clone()).map_err(|e| {
            ToolError::non_retryable(format!(
                "{tool}: resource {IAM_POLICY}/{name} holds {value}, which is not a stored policy ({e}); fix or delete it"
            ))
        })?;
        policy.document(tool, name, policy.default_version)?;
        Ok(policy)
    }

    fn document(&self, tool: &str, name: &str, version: i64) -> Result<&Value, ToolError> {
        self.versions
            .iter()
            .find(|v| v.version == version)
            .map(|v| &v.document)
            .ok_or_else(|| {
                ToolError::non_retryable(format!(
                    "{tool}: policy {name:?} keeps no version {version} (kept: {}); restore it by hand from the audit log",
                    self.versions
                        .iter()
                        .map(|v| v.version.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
    }

    fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("a stored policy serializes")
    }
}

/// What is wrong with one statement of a policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The statement's `Sid`, or `#N` (1-based) when it has none.
    pub statement: String,
    pub problem: String,
}

/// Audits one policy document: every `Allow` statement that grants all
/// actions (`"*"`), all actions of a service (`"s3:*"`), or everything but a
/// list (`NotAction`), and anything malformed. Pure.
pub fn audit_document(document: &Value) -> Vec<Finding> {
    let malformed = |statement: &str, problem: String| Finding {
        statement: statement.to_string(),
        problem: format!("malformed: {problem}"),
    };
    let statements: Vec<&Value> = match document.get("Statement") {
        Some(Value::Array(list)) => list.iter().collect(),
        Some(single @ Value::Object(_)) => vec![single],
        _ => {
            return vec![malformed(
                "-",
                "the document needs a Statement (an object or a list of them)".into(),
            )];
        }
    };
    let mut findings = Vec::new();
    for (i, statement) in statements.iter().enumerate() {
        let label = statement
            .get("Sid")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("#{}", i + 1));
        match statement.get("Effect").and_then(Value::as_str) {
            Some("Allow") => {}
            Some("Deny") => continue,
            _ => {
                findings.push(malformed(&label, "Effect must be Allow or Deny".into()));
                continue;
            }
        }
        if statement.get("NotAction").is_some() {
            findings.push(Finding {
                statement: label.clone(),
                problem: "Allow with NotAction grants every action but the listed ones".into(),
            });
        }
        let actions: Vec<&Value> = match statement.get("Action") {
            Some(Value::Array(list)) => list.iter().collect(),
            Some(one) => vec![one],
            None => Vec::new(),
        };
        for action in actions {
            match action.as_str() {
                Some("*") => findings.push(Finding {
                    statement: label.clone(),
                    problem: "Action \"*\" allows every action".into(),
                }),
                Some(a) if a.ends_with(":*") => findings.push(Finding {
                    statement: label.clone(),
                    problem: format!(
                        "Action {a:?} allows every {} action",
                        a.trim_end_matches(":*")
                    ),
                }),
                Some(_) => {}
                None => findings.push(malformed(
                    &label,
                    format!("Action must be a string or a list of strings, got {action}"),
                )),
            }
        }
    }
    findings
}

fn findings_json(policy: &str, findings: &[Finding]) -> Vec<Value> {
    findings
        .iter()
        .map(|f| json!({"policy": policy, "statement": f.statement, "problem": f.problem}))
        .collect()
}

fn describe(findings: &[Finding]) -> String {
    findings
        .iter()
        .map(|f| format!("statement {}: {}", f.statement, f.problem))
        .collect::<Vec<_>>()
        .join("; ")
}

/// `iam.list_policies` (read): input `{prefix?}` → `{policies: {name:
/// {version, document}}, count}`, each policy's default version.
#[derive(Debug, Clone)]
pub struct IamListPolicies {
    world: World,
}

impl IamListPolicies {
    /// A lister reading from `world`.
    pub fn new(world: World) -> Self {
        IamListPolicies { world }
    }
}

impl Tool for IamListPolicies {
    fn name(&self) -> &str {
        IAM_LIST_POLICIES
    }

    fn kind(&self) -> ToolKind {
        ToolKind::Read
    }

    fn call<'a>(&'a self, _ctx: ToolContext, input: Value) -> BoxFuture<'a, ToolResult> {
        async move {
            let input = Input::new(IAM_LIST_POLICIES, &input)?;
            let prefix = input.optional_string("prefix")?.unwrap_or("");
            let rows = self
                .world
                .list(IAM_POLICY)
                .await
                .map_err(|error| world_failure(IAM_LIST_POLICIES, error))?;
            let mut policies = Map::new();
            for (name, value) in rows {
                if !name.starts_with(prefix) {
                    continue;
                }
                let p = StoredPolicy::read(IAM_LIST_POLICIES, &name, Some(value))?;
                let document = p.document(IAM_LIST_POLICIES, &name, p.default_version)?;
                policies.insert(
                    name,
                    json!({"version": p.default_version, "document": document}),
                );
            }
            Ok(json!({"count": policies.len(), "policies": policies}))
        }
        .boxed()
    }
}

/// `iam.validate_policy` (read): input `{policies: {name: {document, …}}}`
/// (the shape `iam.list_policies` returns) → `{checked, findings: [{policy,
/// statement, problem}], flagged: [name], clean}`. Reports; never fails on
/// a finding.
#[derive(Debug, Clone, Copy, Default)]
pub struct IamValidatePolicy;

impl Tool for IamValidatePolicy {
    fn name(&self) -> &str {
        IAM_VALIDATE_POLICY
    }

    fn kind(&self) -> ToolKind {
        ToolKind::Read
    }

    fn call<'a>(&'a self, _ctx: ToolContext, input: Value) -> BoxFuture<'a, ToolResult> {
        let result = (|| {
            let input = Input::new(IAM_VALIDATE_POLICY, &input)?;
            let Value::Object(policies) = input.value("policies")? else {
                return Err(ToolError::non_retryable(format!(
                    "{IAM_VALIDATE_POLICY}: input field `policies` must be an object of name → {{document}}"
                )));
            };
            if policies.len() > MAX_POLICIES_PER_CALL {
                return Err(ToolError::non_retryable(format!(
                    "{IAM_VALIDATE_POLICY}: {} policies, more than {MAX_POLICIES_PER_CALL} per call",
                    policies.len()
                )));
            }
            let mut findings = Vec::new();
            let mut flagged = Vec::new();
            for (name, policy) in policies {
                let found = audit_document(&policy["document"]);
                if !found.is_empty() {
                    flagged.push(name.clone());
                }
                findings.extend(findings_json(name, &found));
            }
            Ok(json!({
                "checked": policies.len(),
                "clean": flagged.is_empty(),
                "findings": findings,
                "flagged": flagged,
            }))
        })();
        futures::future::ready(result).boxed()
    }
}

/// `iam.propose_policy` (read): the dry run of a change. Input `{policy,
/// document, base_version?}` → `{policy, base_version, current_document,
/// proposed_document, findings_before, findings_after}`. Refused when the
/// proposal is itself over-broad or malformed, or when the policy is no
/// longer at `base_version` (it changed since it was enumerated).
#[derive(Debug, Clone)]
pub struct IamProposePolicy {
    world: World,
}

impl IamProposePolicy {
    /// A proposer reading from `world`.
    pub fn new(world: World) -> Self {
        IamProposePolicy { world }
    }
}

impl Tool for IamProposePolicy {
    fn name(&self) -> &str {
        IAM_PROPOSE_POLICY
    }

    fn kind(&self) -> ToolKind {
        ToolKind::Read
    }

    fn call<'a>(&'a self, _ctx: ToolContext, input: Value) -> BoxFuture<'a, ToolResult> {
        async move {
            let input = Input::new(IAM_PROPOSE_POLICY, &input)?;
            let name = input.string("policy")?;
            let proposed = input.value("document")?;
            let base = input.optional_positive_i64("base_version")?;
            let resource = self
                .world
                .get(IAM_POLICY, name)
                .await
                .map_err(|error| world_failure(IAM_PROPOSE_POLICY, error))?;
            let p = StoredPolicy::read(IAM_PROPOSE_POLICY, name, resource)?;
            if let Some(base) = base
                && base != p.default_version
            {
                return Err(stale(IAM_PROPOSE_POLICY, name, p.default_version, base));
            }
            let current = p.document(IAM_PROPOSE_POLICY, name, p.default_version)?;
            let after = audit_document(proposed);
            if !after.is_empty() {
                return Err(ToolError::non_retryable(format!(
                    "{IAM_PROPOSE_POLICY}: the proposal for {name} is itself unsafe: {}",
                    describe(&after)
                )));
            }
            Ok(json!({
                "policy": name,
                "base_version": p.default_version,
                "current_document": current,
                "proposed_document": proposed,
                "findings_before": findings_json(name, &audit_document(current)),
                "findings_after": [],
            }))
        }
        .boxed()
    }
}

fn stale(tool: &str, name: &str, current: i64, expected: i64) -> ToolError {
    ToolError::non_retryable(format!(
        "{tool}: policy {name} is at version {current}, not {expected}: it changed since it was read; audit it again"
    ))
}

/// `iam.put_policy` (reversible write): input `{policy, document,
/// expected_version}` → `{policy, previous_version, version,
/// previous_document, document}`. Adds a version and makes it the default,
/// only if the default is still `expected_version`. Undo it with
/// `iam.restore_policy {policy, version: expected_version}`.
#[derive(Debug, Clone)]
pub struct IamPutPolicy {
    world: World,
}

impl IamPutPolicy {
    /// A policy writer writing to `world`.
    pub fn new(world: World) -> Self {
        IamPutPolicy { world }
    }
}

impl Tool for IamPutPolicy {
    fn name(&self) -> &str {
        IAM_PUT_POLICY
    }

    fn kind(&self) -> ToolKind {
        ToolKind::WriteReversible
    }

    fn recovery_path(&self) -> Option<&str> {
        Some(
            "IAM policy change → set the default version back (iam.restore_policy); every version is kept",
        )
    }

    fn call<'a>(&'a self, ctx: ToolContext, input: Value) -> BoxFuture<'a, ToolResult> {
        async move {
            let input = Input::new(IAM_PUT_POLICY, &input)?;
            let name = input.string("policy")?.to_owned();
            let document = input.value("document")?.clone();
            let expected = input.positive_i64("expected_version")?;
            self.world
                .apply_call(&ctx, IAM_PUT_POLICY, IAM_POLICY, &name, |current| {
                    let mut p = StoredPolicy::read(IAM_PUT_POLICY, &name, current)?;
                    if p.default_version != expected {
                        return Err(stale(IAM_PUT_POLICY, &name, p.default_version, expected));
                    }
                    let previous_document = p.document(IAM_PUT_POLICY, &name, expected)?.clone();
                    let version = p.versions.iter().map(|v| v.version).max().unwrap_or(0) + 1;
                    p.versions.push(PolicyVersion {
                        version,
                        document: document.clone(),
                    });
                    p.default_version = version;
                    while p.versions.len() > MAX_KEPT_VERSIONS {
                        let Some(oldest) = p
                            .versions
                            .iter()
                            .position(|v| v.version != version && v.version != expected)
                        else {
                            break;
                        };
                        p.versions.remove(oldest);
                    }
                    let output = json!({
                        "policy": name,
                        "previous_version": expected,
                        "version": version,
                        "previous_document": previous_document,
                        "document": document,
                    });
                    Ok((Some(p.to_value()), output))
                })
                .await
                .map_err(|error| world_failure(IAM_PUT_POLICY, error))
        }
        .boxed()
    }
}

/// `iam.restore_policy` (reversible write): input `{policy, version}` →
/// `{policy, previous_version, version, document}`; makes a kept version
/// the default again. Restoring the version already in force changes
/// nothing, so it is a safe undo even of a change that never happened.
#[derive(Debug, Clone)]
pub struct IamRestorePolicy {
    world: World,
}

impl IamRestorePolicy {
    /// A restorer writing to `world`.
    pub fn new(world: World) -> Self {
        IamRestorePolicy { world }
    }
}

impl Tool for IamRestorePolicy {
    fn name(&self) -> &str {
        IAM_RESTORE_POLICY
    }

    fn kind(&self) -> ToolKind {
        ToolKind::WriteReversible
    }

    fn recovery_path(&self) -> Option<&str> {
        Some(
            "IAM policy restore → set the default version back to the one it replaced (iam.restore_policy)",
        )
    }

    fn call<'a>(&'a self, ctx: ToolContext, input: Value) -> BoxFuture<'a, ToolResult> {
        async move {
            let input = Input::new(IAM_RESTORE_POLICY, &input)?;
            let name = input.string("policy")?.to_owned();
            let version = input.positive_i64("version")?;
            self.world
                .apply_call(&ctx, IAM_RESTORE_POLICY, IAM_POLICY, &name, |current| {
                    let mut p = StoredPolicy::read(IAM_RESTORE_POLICY, &name, current)?;
                    let document = p.document(IAM_RESTORE_POLICY, &name, version)?.clone();
                    let output = json!({
                        "policy": name,
                        "previous_version": p.default_version,
                        "version": version,
                        "document": document,
                    });
                    p.default_version = version;
                    Ok((Some(p.to_value()), output))
                })
                .await
                .map_err(|error| world_failure(IAM_RESTORE_POLICY, error))
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audit_flags_over_broad_allows_and_malformed_statements() {
        let problems = |doc: Value| -> Vec<String> {
            audit_document(&doc)
                .into_iter()
                .map(|f| format!("{}: {}", f.statement, f.problem))
                .collect()
        };
        assert_eq!(
            problems(json!({"Statement": [
                {"Sid": "All", "Effect": "Allow", "Action": "*", "Resource": "*"},
                {"Effect": "Allow", "Action": ["s3:GetObject", "s3:*"], "Resource": "*"},
                {"Effect": "Deny", "Action": "*", "Resource": "*"},
                {"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"},
                {"Effect": "Allow", "Action": ["iam:Get*", "iam:List*"], "Resource": "*"},
                {"Effect": "Maybe", "Action": "x:y"},
                {"Effect": "Allow", "Action": 7}]})),
            [
                "All: Action \"*\" allows every action",
                "#2: Action \"s3:*\" allows every s3 action",
                "#4: Allow with NotAction grants every action but the listed ones",
                "#6: malformed: Effect must be Allow or Deny",
                "#7: malformed: Action must be a string or a list of strings, got 7",
            ]
        );
        assert_eq!(
            problems(json!({"Statement": {"Effect": "Allow", "Action": "s3:GetObject"}})),
            Vec::<String>::new()
        );
        assert_eq!(problems(json!("nope")).len(), 1);
    }
}
