//! Evaluating one step: catalog checks, CRUDLEX, then Cedar, then the path
//! and the approval rules of the decision.

use std::collections::BTreeSet;

use std::collections::{HashMap, HashSet};

use cedar_policy::{
    Authorizer, Context, Decision, Effect, Entities, Entity, EntityId, EntityTypeName, EntityUid,
    Request, RestrictedExpression,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::InterventionPath;
use super::load::{Level, PolicySet};
use crate::catalog::{Crudlex, Operation, autonomy_level, validate_schema};
use mandate_engine::tool::ToolKind;

/// What is being decided: one step of one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckRequest {
    /// The plan step's id.
    pub step: String,
    pub tool: String,
    /// The step's resolved input.
    pub input: Value,
    pub agent: String,
    #[serde(default)]
    pub on_behalf_of: Option<String>,
    #[serde(default)]
    pub environment: Option<String>,
    /// The evaluation time (ms since the epoch), for schedule rules.
    #[serde(default)]
    pub now_ms: i64,
}

pub use mandate_engine::core::gateway::{ApprovalRequirement, RuleRef};

/// The decision for one step: the recorded output of `policy.check`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyDecision {
    pub decision: InterventionPath,
    /// The rules that decided, with their explanation.
    pub decided_by: Vec<RuleRef>,
    /// The hash of the policy set (catalog and rules) that decided.
    pub policy_hash: String,
    #[serde(default)]
    pub approval: Option<ApprovalRequirement>,
    #[serde(default)]
    pub owners: Vec<String>,
    #[serde(default)]
    pub kind: Option<ToolKind>,
    #[serde(default)]
    pub operation: Option<Operation>,
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(default)]
    pub data_classes: Vec<String>,
    /// The catalog's compensation (tool and input mapping), if any.
    #[serde(default)]
    pub compensation: Option<Value>,
    #[serde(default)]
    pub recovery_path: Option<String>,
    /// `low`, `medium` or `high`.
    #[serde(default)]
    pub risk: String,
    /// The effective CRUDLEX letters (user ∩ agent ∩ environment).
    #[serde(default)]
    pub crudlex: String,
    #[serde(default)]
    pub autonomy: Option<String>,
    /// A pre-approval that satisfies the gate: `{task_id, granted_by, expires_at_ms}`.
    #[serde(default)]
    pub preapproval: Option<Value>,
}

impl PolicyDecision {
    fn builtin_deny(hash: &str, id: &str, message: String) -> PolicyDecision {
        PolicyDecision {
            decision: InterventionPath::Deny,
            decided_by: vec![RuleRef {
                id: id.to_string(),
                message,
                level: "builtin".into(),
                file: None,
            }],
            policy_hash: hash.to_string(),
            approval: None,
            owners: Vec::new(),
            kind: None,
            operation: None,
            scope: None,
            data_classes: Vec::new(),
            compensation: None,
            recovery_path: None,
            risk: "high".into(),
            crudlex: String::new(),
            autonomy: None,
            preapproval: None,
        }
    }

    /// `id: message; id: message`.
    pub fn explain(&self) -> String {
        self.decided_by
            .iter()
            .map(|r| format!("{}: {}", r.id, r.message))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// A context value as a Cedar expression (strings, integers, booleans and
/// sets of them: what the context holds).
fn restricted(v: &Value) -> Option<RestrictedExpression> {
    match v {
        Value::String(s) => Some(RestrictedExpression::new_string(s.clone())),
        Value::Bool(b) => Some(RestrictedExpression::new_bool(*b)),
        Value::Number(n) => n.as_i64().map(RestrictedExpression::new_long),
        Value::Array(a) => Some(RestrictedExpression::new_set(
            a.iter().filter_map(restricted),
        )),
        _ => None,
    }
}

/// The entity types a decision uses, parsed once.
static ENTITY_TYPES: std::sync::LazyLock<HashMap<&'static str, EntityTypeName>> =
    std::sync::LazyLock::new(|| {
        ["Agent", "Action", "Scope", "Team"]
            .into_iter()
            .map(|t| (t, t.parse().expect("a plain identifier is a type name")))
            .collect()
    });

fn entity_uid(kind: &str, id: &str) -> EntityUid {
    let kind = ENTITY_TYPES
        .get(kind)
        .cloned()
        .unwrap_or_else(|| kind.parse().expect("a plain identifier is a type name"));
    EntityUid::from_type_name_and_id(kind, EntityId::new(id))
}

/// 0 = Monday.
fn weekday(now_ms: i64) -> i64 {
    (now_ms.div_euclid(86_400_000) + 3).rem_euclid(7)
}

impl PolicySet {
    /// Decides one step. Pure apart from reading the set; never fails: a
    /// request that cannot be judged is denied with the reason.
    pub fn evaluate(&self, r: &CheckRequest) -> PolicyDecision {
        self.decide(r, false)
    }

    /// [`Self::evaluate`] for a dry run, where the input may still hold
    /// `${…}` references to outputs not recorded yet: a string holding one
    /// passes the input schema whatever type the field wants (the step's
    /// `policy.check` checks the resolved input when it runs).
    pub fn evaluate_unresolved(&self, r: &CheckRequest) -> PolicyDecision {
        self.decide(r, true)
    }

    fn decide(&self, r: &CheckRequest, unresolved_references: bool) -> PolicyDecision {
        let c = &self.catalog;
        let Some(tool) = c.tool(&r.tool) else {
            return PolicyDecision::builtin_deny(
                &self.hash,
                "catalog.unknown-tool",
                format!("tool {:?} is not in the catalog", r.tool),
            );
        };
        let Some(agent) = c.agent(&r.agent) else {
            return PolicyDecision::builtin_deny(
                &self.hash,
                "catalog.unknown-agent",
                format!("agent {:?} is not in the catalog", r.agent),
            );
        };
        let fill = |mut d: PolicyDecision| {
            d.owners = tool.owners.clone();
            d.kind = Some(tool.kind);
            d.operation = Some(tool.operation);
            d.data_classes = tool.data_classes.clone();
            d.compensation = tool
                .compensation
                .as_ref()
                .map(|c| serde_json::to_value(c).unwrap_or(Value::Null));
            d.recovery_path = c.recovery_path(tool);
            d.autonomy = Some(agent.autonomy.clone());
            d
        };
        if !agent.on_behalf_of.is_empty() {
            let ok = r
                .on_behalf_of
                .as_ref()
                .is_some_and(|u| agent.on_behalf_of.contains(u));
            if !ok {
                return fill(PolicyDecision::builtin_deny(
                    &self.hash,
                    "identity.delegation",
                    format!(
                        "agent {} may act only for {}, not for {}",
                        agent.id,
                        agent.on_behalf_of.join(", "),
                        r.on_behalf_of.as_deref().unwrap_or("nobody")
                    ),
                ));
            }
        }
        if let Some(schema) = &tool.input_schema
            && let Err(e) = validate_schema(schema, &r.input, "input", &|v| {
                unresolved_references && v.as_str().is_some_and(|s| s.contains("${"))
            })
        {
            return fill(PolicyDecision::builtin_deny(
                &self.hash,
                "validation.input-schema",
                format!("{} input refused by its schema: {e}", tool.name),
            ));
        }
        // CRUDLEX: intersect user, agent and environment.
        let irreversible = tool.kind == ToolKind::WriteIrreversible;
        let environment = r
            .environment
            .clone()
            .unwrap_or_else(|| c.defaults.environment.clone());
        let agent_set = Crudlex::parse(&agent.crudlex).unwrap_or(Crudlex::full());
        let user_preset = r
            .on_behalf_of
            .as_ref()
            .and_then(|u| c.user(u))
            .map(|u| u.crudlex.clone())
            .unwrap_or_else(|| c.defaults.user_crudlex.clone());
        let user_set = Crudlex::parse(&user_preset).unwrap_or(Crudlex::full());
        let env_set = c
            .environments
            .get(&environment)
            .and_then(|p| Crudlex::parse(p).ok())
            .unwrap_or(Crudlex::full());
        let effective = agent_set.intersect(user_set).intersect(env_set);
        if !effective.permits(tool.operation, irreversible) {
            let (dimension, who, set) = if !agent_set.permits(tool.operation, irreversible) {
                ("agent", agent.id.clone(), agent_set)
            } else if !user_set.permits(tool.operation, irreversible) {
                (
                    "user",
                    r.on_behalf_of.clone().unwrap_or_else(|| "(no user)".into()),
                    user_set,
                )
            } else {
                ("context", format!("environment {environment}"), env_set)
            };
            let mut d = fill(PolicyDecision::builtin_deny(
                &self.hash,
                &format!("crudlex.{dimension}"),
                format!(
                    "{who} has CRUDLEX {}: {} ({}{}) is not permitted",
                    set.letters_str(),
                    tool.operation.as_str(),
                    tool.name,
                    if irreversible { ", irreversible" } else { "" }
                ),
            ));
            d.crudlex = effective.letters_str();
            return d;
        }

        let autonomy = autonomy_level(&agent.autonomy).unwrap_or(0);
        let scope = tool
            .scope
            .as_ref()
            .and_then(|f| r.input.get(f))
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .unwrap_or_else(|| "*".to_string());
        let amount = ["amount_cents", "amount"]
            .iter()
            .find_map(|k| r.input.get(*k).and_then(Value::as_i64))
            .unwrap_or(0);
        let hour = (r.now_ms.div_euclid(3_600_000)).rem_euclid(24);
        let business_hours = (9..17).contains(&hour) && weekday(r.now_ms) < 5;
        let team = agent.team.clone().unwrap_or_default();
        let context = json!({
            "tool": tool.name,
            "operation": tool.operation.as_str(),
            "kind": tool.kind.as_str(),
            "write": tool.kind.is_write(),
            "irreversible": irreversible,
            "autonomy": autonomy,
            "amount": amount,
            "data_classes": tool.data_classes,
            "on_behalf_of": r.on_behalf_of.clone().unwrap_or_default(),
            "environment": environment,
            "hour_utc": hour,
            "business_hours": business_hours,
            "scope": scope,
            "team": team,
            "step": r.step,
        });
        let deny_internal = |what: String| {
            fill(PolicyDecision::builtin_deny(
                &self.hash,
                "policy.evaluation-error",
                what,
            ))
        };
        // Built directly rather than parsed from JSON: Cedar's JSON entity
        // and context parsers were two thirds of a decision's cost.
        let agent_uid = entity_uid("Agent", &agent.id);
        let team_uid = (!team.is_empty()).then(|| entity_uid("Team", &team));
        let operation_uid = entity_uid("Action", tool.operation.as_str());
        let mut entities = vec![
            match Entity::new(
                agent_uid,
                HashMap::from([
                    (
                        "autonomy".to_string(),
                        RestrictedExpression::new_long(autonomy as i64),
                    ),
                    (
                        "team".to_string(),
                        RestrictedExpression::new_string(team.clone()),
                    ),
                ]),
                team_uid.iter().cloned().collect(),
            ) {
                Ok(e) => e,
                Err(e) => return deny_internal(format!("entities: {e}")),
            },
            Entity::new_no_attrs(
                entity_uid("Action", &tool.name),
                HashSet::from([operation_uid.clone()]),
            ),
            Entity::new_no_attrs(entity_uid("Scope", &scope), HashSet::new()),
        ];
        if let Some(t) = team_uid {
            entities.push(Entity::new_no_attrs(t, HashSet::new()));
        }
        if tool.name != tool.operation.as_str() {
            entities.push(Entity::new_no_attrs(operation_uid, HashSet::new()));
        }
        let entities = match Entities::from_entities(entities, None) {
            Ok(e) => e,
            Err(e) => return deny_internal(format!("entities: {e}")),
        };
        let pairs = context
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| restricted(v).map(|r| (k.clone(), r)));
        let context = match Context::from_pairs(pairs) {
            Ok(c) => c,
            Err(e) => return deny_internal(format!("context: {e}")),
        };
        let request = match Request::new(
            entity_uid("Agent", &agent.id),
            entity_uid("Action", &tool.name),
            entity_uid("Scope", &scope),
            context,
            None,
        ) {
            Ok(r) => r,
            Err(e) => return deny_internal(format!("request: {e}")),
        };
        let set = self.per_agent.get(&agent.id).unwrap_or(&self.org_only);
        let response = Authorizer::new().is_authorized(&request, set, &entities);
        let satisfied: Vec<&super::load::Rule> = response
            .diagnostics()
            .reason()
            .filter_map(|id| self.rules.get(id.to_string().as_str()))
            .collect();
        let errors: Vec<String> = response
            .diagnostics()
            .errors()
            .map(|e| e.to_string())
            .collect();
        if !errors.is_empty() {
            tracing::warn!(?errors, tool = %tool.name, "policy rules erred while evaluating (they count as not satisfied)");
        }
        let rule_ref = |r: &super::load::Rule| RuleRef {
            id: r.id.clone(),
            message: r.message.clone(),
            level: r.level.describe(),
            file: Some(r.file.clone()),
        };
        let mut sorted = satisfied.clone();
        sorted.sort_by(|a, b| a.id.cmp(&b.id));
        let mut d = fill(PolicyDecision::builtin_deny(&self.hash, "", String::new()));
        d.crudlex = effective.letters_str();
        d.scope = Some(scope);
        if response.decision() == Decision::Deny {
            let forbids: Vec<RuleRef> = sorted
                .iter()
                .filter(|r| r.effect == Effect::Forbid)
                .map(|r| rule_ref(r))
                .collect();
            d.decided_by = if forbids.is_empty() {
                vec![RuleRef {
                    id: "policy.default-deny".into(),
                    message: format!(
                        "no rule permits {} by {} (Cedar denies by default)",
                        tool.name, agent.id
                    ),
                    level: "builtin".into(),
                    file: None,
                }]
            } else {
                forbids
            };
            return d;
        }
        if !sorted.iter().any(|r| r.level == Level::Org && !r.gate) {
            d.decided_by = vec![RuleRef {
                id: "policy.no-org-grant".into(),
                message: format!(
                    "no organisation-level rule grants {} to {}; lower levels only restrict",
                    tool.name, agent.id
                ),
                level: "builtin".into(),
                file: None,
            }];
            return d;
        }
        let path = sorted
            .iter()
            .map(|r| r.path)
            .max()
            .unwrap_or(InterventionPath::MonitoredExecute);
        let deciders: Vec<&&super::load::Rule> = sorted.iter().filter(|r| r.path == path).collect();
        d.decision = path;
        d.decided_by = deciders.iter().map(|r| rule_ref(r)).collect();
        d.risk = match (tool.kind, path) {
            (ToolKind::WriteIrreversible, _) | (_, InterventionPath::GatedExecute) => "high",
            (ToolKind::WriteReversible, _) | (_, InterventionPath::FlaggedExecute) => "medium",
            _ => "low",
        }
        .into();
        if path == InterventionPath::GatedExecute {
            let mut approvers: BTreeSet<String> = BTreeSet::new();
            for r in &deciders {
                approvers.extend(r.approvers.iter().cloned());
            }
            approvers.extend(tool.owners.iter().cloned());
            d.approval = Some(ApprovalRequirement {
                approvers: approvers.into_iter().collect(),
                quorum: deciders.iter().filter_map(|r| r.quorum).max().unwrap_or(1),
                timeout_ms: deciders
                    .iter()
                    .filter_map(|r| r.timeout_ms)
                    .min()
                    .unwrap_or(c.defaults.approval_timeout_ms),
                escalation: deciders.iter().find_map(|r| r.escalation.clone()),
            });
        }
        d
    }
}
