//! The rule-based router: an ordered rule tree in the spirit of
//! Alertmanager's routes. No learning, no scoring: every recipient comes with
//! the rule that chose it and why.
//!
//! [`route`] is pure and deterministic (the time is an argument), so its
//! [`RoutingDecision`] can be recorded in a task's history and replayed
//! without evaluating again. Routing never delays a step: the gateway records
//! the decision and hands deliveries to the outbox; nothing here waits.

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::limits;
use crate::owners::{OwnerKind, OwnershipMap};

/// The intervention paths the gateway decides.
pub const PATHS: &[&str] = &[
    "auto_execute",
    "monitored_execute",
    "flagged_execute",
    "gated_execute",
    "deny",
];
/// The task outcomes a rule can match.
pub const OUTCOMES: &[&str] = &["step_failed", "compensation_failed", "task_escalated"];
/// CRUDLEX operations.
pub const OPERATIONS: &[&str] = &["create", "read", "update", "delete", "list", "execute"];
/// What a group key may be built from.
pub const GROUP_FIELDS: &[&str] = &["task", "agent", "resource", "tool"];

/// A task outcome that calls for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    StepFailed,
    CompensationFailed,
    TaskEscalated,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::StepFailed => "step_failed",
            Outcome::CompensationFailed => "compensation_failed",
            Outcome::TaskEscalated => "task_escalated",
        }
    }
}

/// What the gateway hands the router for one step (or one task outcome).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingInput {
    pub task_id: String,
    #[serde(default)]
    pub step_seq: Option<i64>,
    pub agent: String,
    #[serde(default)]
    pub on_behalf_of: Option<String>,
    pub tool: String,
    /// CRUDLEX operation: create, read, update, delete, list, execute.
    pub operation: String,
    /// The scope acted on, e.g. `service:checkout`.
    #[serde(default)]
    pub resource: Option<String>,
    /// The intervention path the gateway decided.
    pub path: String,
    #[serde(default)]
    pub outcome: Option<Outcome>,
    pub summary: String,
    #[serde(default)]
    pub risk: Option<String>,
    #[serde(default)]
    pub recovery_path: Option<String>,
    #[serde(default)]
    pub approvers: Vec<String>,
}

/// What a rule matches; an absent field matches anything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Matcher {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operation: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outcome: Vec<String>,
}

impl Matcher {
    fn matches(&self, input: &RoutingInput) -> bool {
        let in_list = |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| x == v);
        in_list(&self.path, &input.path)
            && in_list(&self.operation, &input.operation)
            && self
                .tool
                .as_deref()
                .is_none_or(|p| crate::glob::matches(p, &input.tool))
            && self
                .agent
                .as_deref()
                .is_none_or(|p| crate::glob::matches(p, &input.agent))
            && self.resource.as_deref().is_none_or(|p| {
                input
                    .resource
                    .as_deref()
                    .is_some_and(|r| crate::glob::matches(p, r))
            })
            && (self.outcome.is_empty()
                || input
                    .outcome
                    .is_some_and(|o| self.outcome.iter().any(|x| x == o.as_str())))
    }
}

/// One node of the route tree as written. The root is the catch-all: it
/// matches everything, and applies when none of its rules does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default, rename = "match")]
    pub matcher: Matcher,
    /// Who to notify: `owners` (the map's owners of the resource and tool),
    /// `approvers` (the input's), or an owner id. `None` inherits the parent's.
    #[serde(default)]
    pub notify: Option<Vec<String>>,
    /// Go on to the next sibling after this rule matched.
    #[serde(default, rename = "continue")]
    pub continue_matching: bool,
    #[serde(default)]
    pub group_by: Option<Vec<String>>,
    #[serde(default)]
    pub group_wait_seconds: Option<u64>,
    #[serde(default)]
    pub review_within_hours: Option<u64>,
    /// A playbook (an id under `playbooks:`) this rule starts as the
    /// automated first response. Not inherited.
    #[serde(default)]
    pub playbook: Option<String>,
    #[serde(default)]
    pub rules: Vec<RouteSpec>,
}

/// A validated route tree (settings inherited from parents already applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub id: String,
    pub matcher: Matcher,
    pub notify: Vec<String>,
    pub continue_matching: bool,
    pub group_by: Vec<String>,
    pub group_wait_ms: i64,
    pub review_within_ms: i64,
    pub playbook: Option<String>,
    pub rules: Vec<Rule>,
}

/// The router's configuration: the root of the rule tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterConfig {
    pub root: Rule,
}

impl RouterConfig {
    /// Validates a route tree against the map. `file` names the file in errors.
    pub fn build(
        file: &str,
        spec: RouteSpec,
        map: &OwnershipMap,
        playbooks: &[String],
    ) -> Result<RouterConfig, ConfigError> {
        let mut count = 0usize;
        let inherited = Rule {
            id: "root".into(),
            matcher: Matcher::default(),
            notify: vec!["owners".into()],
            continue_matching: false,
            group_by: vec!["task".into()],
            group_wait_ms: 30_000,
            review_within_ms: 24 * 3_600_000,
            playbook: None,
            rules: vec![],
        };
        let mut spec = spec;
        spec.id.get_or_insert_with(|| "root".into());
        if spec.matcher != Matcher::default() {
            return Err(ConfigError::invalid(
                file,
                "routes (root)".into(),
                "match",
                "the root route is the catch-all and matches everything; put matchers on its rules"
                    .into(),
            ));
        }
        let known = Known { map, playbooks };
        let root = build_rule(
            file,
            spec,
            &inherited,
            &known,
            0,
            &mut count,
            &mut Vec::new(),
        )?;
        Ok(RouterConfig { root })
    }
}

/// What rules may name: owners and playbooks.
struct Known<'a> {
    map: &'a OwnershipMap,
    playbooks: &'a [String],
}

fn build_rule(
    file: &str,
    spec: RouteSpec,
    parent: &Rule,
    known: &Known<'_>,
    depth: usize,
    count: &mut usize,
    ids: &mut Vec<String>,
) -> Result<Rule, ConfigError> {
    *count += 1;
    let id = spec.id.clone().unwrap_or_default();
    let entry = format!("routes rule {id:?}");
    let err =
        |field: &str, message: String| ConfigError::invalid(file, entry.clone(), field, message);
    if *count > limits::MAX_RULES {
        return Err(err(
            "rules",
            format!("more than {} rules in the route tree", limits::MAX_RULES),
        ));
    }
    if depth > limits::MAX_RULE_DEPTH {
        return Err(err(
            "rules",
            format!("rules nested deeper than {} levels", limits::MAX_RULE_DEPTH),
        ));
    }
    let map = known.map;
    crate::owners::check_id(file, &entry, "id", &id)?;
    if ids.contains(&id) {
        return Err(err(
            "id",
            format!(
                "the rule id {id:?} is used twice; rule ids name rules in histories, keep them unique"
            ),
        ));
    }
    ids.push(id.clone());
    let m = &spec.matcher;
    for (field, list, known) in [
        ("match.path", &m.path, PATHS),
        ("match.operation", &m.operation, OPERATIONS),
        ("match.outcome", &m.outcome, OUTCOMES),
    ] {
        if let Some(bad) = list.iter().find(|v| !known.contains(&v.as_str())) {
            return Err(err(
                field,
                format!("{bad:?} is not one of {}", known.join(", ")),
            ));
        }
    }
    let notify = spec.notify.unwrap_or_else(|| parent.notify.clone());
    if notify.len() > limits::MAX_OWNERS_PER_ENTRY {
        return Err(err(
            "notify",
            format!(
                "{} targets exceed the limit of {}",
                notify.len(),
                limits::MAX_OWNERS_PER_ENTRY
            ),
        ));
    }
    for (i, n) in notify.iter().enumerate() {
        if n != "owners" && n != "approvers" && map.kind(n).is_none() {
            return Err(err(
                &format!("notify[{i}]"),
                format!("{n:?} is neither `owners`, `approvers` nor an owner defined in this file"),
            ));
        }
    }
    let group_by = spec.group_by.unwrap_or_else(|| parent.group_by.clone());
    if let Some(bad) = group_by
        .iter()
        .find(|v| !GROUP_FIELDS.contains(&v.as_str()))
    {
        return Err(err(
            "group_by",
            format!("{bad:?} is not one of {}", GROUP_FIELDS.join(", ")),
        ));
    }
    let group_wait_ms = match spec.group_wait_seconds {
        Some(s) if s > limits::MAX_GROUP_WAIT_SECONDS => {
            return Err(err(
                "group_wait_seconds",
                format!(
                    "{s} exceeds the limit of {}",
                    limits::MAX_GROUP_WAIT_SECONDS
                ),
            ));
        }
        Some(s) => s as i64 * 1000,
        None => parent.group_wait_ms,
    };
    let review_within_ms = match spec.review_within_hours {
        Some(h) if h == 0 || h > limits::MAX_REVIEW_HOURS => {
            return Err(err(
                "review_within_hours",
                format!(
                    "must be between 1 and {}, found {h}",
                    limits::MAX_REVIEW_HOURS
                ),
            ));
        }
        Some(h) => h as i64 * 3_600_000,
        None => parent.review_within_ms,
    };
    if let Some(p) = &spec.playbook
        && !known.playbooks.contains(p)
    {
        return Err(err(
            "playbook",
            format!("{p:?} is not a playbook defined under `playbooks:` in this file"),
        ));
    }
    let mut rule = Rule {
        id,
        playbook: spec.playbook,
        matcher: spec.matcher,
        notify,
        continue_matching: spec.continue_matching,
        group_by,
        group_wait_ms,
        review_within_ms,
        rules: vec![],
    };
    for child in spec.rules {
        let child = build_rule(file, child, &rule, known, depth + 1, count, ids)?;
        rule.rules.push(child);
    }
    Ok(rule)
}

/// One person or channel to notify, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    /// The person or channel that receives the notification.
    pub recipient: String,
    /// The owner that led to it (a person, channel, rotation or chain id), or `approver`.
    pub owner: String,
    /// The rule that chose it.
    pub rule: String,
    pub why: String,
    /// How to reach the recipient (sink ids and addresses; never secrets).
    pub contacts: Vec<crate::owners::Contact>,
    /// The escalation chain to follow if nobody acknowledges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation_chain: Option<String>,
}

/// The router's answer for one input; recorded as is in the task's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingDecision {
    /// The rules that matched, in the order they were found (deepest last per branch).
    pub matched_rules: Vec<String>,
    pub recipients: Vec<Recipient>,
    /// Recipients left out past [`limits::MAX_RECIPIENTS`].
    #[serde(default)]
    pub recipients_dropped: usize,
    /// Whether the map named no owner for the resource or tool (ownership coverage).
    pub unowned: bool,
    /// For `flagged_execute`: when the review is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review_due_at_ms: Option<i64>,
    /// Notifications with the same group key (per recipient) are sent as one.
    pub group_key: String,
    pub group_wait_ms: i64,
    /// Playbooks the matched rules start (in match order, each once).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub playbooks: Vec<String>,
}

/// Decides who hears about an input. Pure: same arguments, same answer.
pub fn route(
    map: &OwnershipMap,
    rules: &RouterConfig,
    input: &RoutingInput,
    now_ms: i64,
) -> RoutingDecision {
    let mut matched: Vec<&Rule> = Vec::new();
    collect(&rules.root, input, &mut matched);
    let owners = map.owners_of(input.resource.as_deref(), &input.tool);
    let mut recipients: Vec<Recipient> = Vec::new();
    let mut dropped = 0usize;
    let mut push = |r: Recipient, recipients: &mut Vec<Recipient>| {
        if recipients.iter().any(|x| x.recipient == r.recipient) {
            return;
        }
        if recipients.len() >= limits::MAX_RECIPIENTS {
            dropped += 1;
            return;
        }
        recipients.push(r);
    };
    let mut approvers_done = false;
    for rule in &matched {
        for target in &rule.notify {
            match target.as_str() {
                "owners" => {
                    for o in &owners {
                        for r in expand(map, &o.owner, &rule.id, &o.why, now_ms) {
                            push(r, &mut recipients);
                        }
                    }
                }
                "approvers" => {
                    approvers_done = true;
                    for r in approver_recipients(map, input, &rule.id) {
                        push(r, &mut recipients);
                    }
                }
                id => {
                    let why = format!("named by rule {}", rule.id);
                    for r in expand(map, id, &rule.id, &why, now_ms) {
                        push(r, &mut recipients);
                    }
                }
            }
        }
    }
    // A gated step's approvers always hear of it: the step waits on them.
    if input.path == "gated_execute" && !approvers_done {
        let rule = matched.last().map(|r| r.id.as_str()).unwrap_or("root");
        for r in approver_recipients(map, input, rule) {
            push(r, &mut recipients);
        }
    }
    let deepest = matched.last().copied().unwrap_or(&rules.root);
    let review_due_at_ms = (input.path == "flagged_execute").then(|| {
        now_ms.saturating_add(
            matched
                .iter()
                .map(|r| r.review_within_ms)
                .min()
                .unwrap_or(deepest.review_within_ms),
        )
    });
    RoutingDecision {
        matched_rules: matched.iter().map(|r| r.id.clone()).collect(),
        recipients,
        recipients_dropped: dropped,
        unowned: owners.is_empty(),
        review_due_at_ms,
        group_key: group_key(&deepest.group_by, input),
        group_wait_ms: deepest.group_wait_ms,
        playbooks: matched.iter().filter_map(|r| r.playbook.clone()).fold(
            Vec::new(),
            |mut v, p| {
                if !v.contains(&p) {
                    v.push(p);
                }
                v
            },
        ),
    }
}

/// Alertmanager's walk: the first matching child is followed (and later
/// siblings only if it says `continue`); a node none of whose children
/// match is itself the match.
fn collect<'a>(node: &'a Rule, input: &RoutingInput, out: &mut Vec<&'a Rule>) {
    let mut any = false;
    for child in &node.rules {
        if child.matcher.matches(input) {
            any = true;
            collect(child, input, out);
            if !child.continue_matching {
                break;
            }
        }
    }
    if !any {
        out.push(node);
    }
}

fn approver_recipients(map: &OwnershipMap, input: &RoutingInput, rule: &str) -> Vec<Recipient> {
    input
        .approvers
        .iter()
        .take(limits::MAX_APPROVERS)
        .map(|a| Recipient {
            recipient: a.clone(),
            owner: "approver".into(),
            rule: rule.to_string(),
            why: format!("approver of the gated step (tool {})", input.tool),
            // An approver may be a person or a team channel.
            contacts: map
                .people
                .get(a)
                .or_else(|| map.channels.get(a))
                .map(|p| p.contacts.clone())
                .unwrap_or_default(),
            escalation_chain: None,
        })
        .collect()
}

/// An owner id to the people or channels that receive for it now (a
/// rotation to who is on call at `now_ms`, a chain to its first step).
pub fn expand(
    map: &OwnershipMap,
    owner: &str,
    rule: &str,
    why: &str,
    now_ms: i64,
) -> Vec<Recipient> {
    let make = |recipient: &str, why: String, chain: Option<String>| Recipient {
        recipient: recipient.to_string(),
        owner: owner.to_string(),
        rule: rule.to_string(),
        why,
        contacts: map
            .people
            .get(recipient)
            .or_else(|| map.channels.get(recipient))
            .map(|p| p.contacts.clone())
            .unwrap_or_default(),
        escalation_chain: chain,
    };
    match map.kind(owner) {
        Some(OwnerKind::Person | OwnerKind::Channel) => vec![make(owner, why.to_string(), None)],
        Some(OwnerKind::Rotation) => {
            let on_call = map.rotations[owner].on_call(now_ms);
            vec![make(
                &on_call.person,
                format!(
                    "{why}; on call for rotation {owner} until {}",
                    on_call.until_ms
                ),
                None,
            )]
        }
        Some(OwnerKind::Chain) => {
            let chain = &map.chains[owner];
            let first = &chain.steps[0].notify;
            let why = format!("{why}; first step of escalation chain {owner}");
            expand(map, first, rule, &why, now_ms)
                .into_iter()
                .map(|mut r| {
                    r.owner = owner.to_string();
                    r.escalation_chain = Some(owner.to_string());
                    r
                })
                .collect()
        }
        None => vec![],
    }
}

fn group_key(fields: &[String], input: &RoutingInput) -> String {
    let parts: Vec<String> = fields
        .iter()
        .map(|f| {
            let v = match f.as_str() {
                "task" => input.task_id.as_str(),
                "agent" => input.agent.as_str(),
                "resource" => input.resource.as_deref().unwrap_or("-"),
                _ => input.tool.as_str(),
            };
            format!("{f}={v}")
        })
        .collect();
    parts.join(";")
}
