//! Governance for the plan, policy and approval suites: the shipped catalog
//! plus a few test tools, the shipped org baseline plus payment rules, in a
//! temporary policy directory that tests may rewrite (reload is immediate).

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mandate_activities::policy::{DEFAULT_CATALOG_YAML, DEFAULT_ORG_POLICY};
use mandate_activities::{Governance, World};
use mandate_engine::store::TaskFilter;
use mandate_engine::{Limits, SubmitOptions, TaskStatus};
use mandate_tests::{Backend, Harness, TestDb};
use serde_json::{Value, json};

/// Test tools appended to the shipped catalog.
pub const EXTRA_TOOLS: &str = r#"
  - name: archive.purge
    kind: write_irreversible
    operation: delete
    owners: [team-platform]
"#;

/// Payment rules of the reference plan, plus two accounts with short
/// approval timeouts (one escalating).
pub const PAYMENT_RULES: &str = r#"
@id("org.payments.large-needs-two")
@message("a payment above 1000 needs two finance approvers")
@role("gate")
@path("gated_execute")
@approvers("alice, bob")
@quorum("2")
permit(principal, action == Action::"ledger.charge", resource)
when { context.amount > 1000 };

@id("org.payments.huge-forbidden")
@message("payments above 1000000 are never made by agents")
forbid(principal, action == Action::"ledger.charge", resource)
when { context.amount > 1000000 };

@id("org.payments.slow-account")
@message("account slow: approval times out fast")
@role("gate")
@path("gated_execute")
@approvers("alice")
@timeout_ms("400")
permit(principal, action == Action::"ledger.charge", resource == Scope::"slow");

@id("org.payments.escalating-account")
@message("account esc: escalates to carol")
@role("gate")
@path("gated_execute")
@approvers("alice")
@timeout_ms("400")
@escalation("carol")
permit(principal, action == Action::"ledger.charge", resource == Scope::"esc");
"#;

/// Writes the test policy directory into `dir`.
pub fn write_policies(dir: &Path) {
    std::fs::create_dir_all(dir.join("org")).unwrap();
    // Test agents (any the API suites name) beside the shipped ones.
    let mut agents = String::from(
        "agents:\n  - {id: agent-other, team: platform, autonomy: L3, crudlex: FULL}\n",
    );
    for i in 0..10 {
        agents.push_str(&format!(
            "  - {{id: agent-{i}, team: platform, autonomy: L3, crudlex: FULL}}\n"
        ));
    }
    let catalog = DEFAULT_CATALOG_YAML.replacen("agents:\n", &agents, 1);
    std::fs::write(dir.join("catalog.yaml"), format!("{catalog}{EXTRA_TOOLS}")).unwrap();
    std::fs::write(dir.join("org/baseline.cedar"), DEFAULT_ORG_POLICY).unwrap();
    std::fs::write(dir.join("org/payments.cedar"), PAYMENT_RULES).unwrap();
}

/// A harness whose `plan` and `preapproval` workflows and governance tools use
/// the test policy directory (returned, to be rewritten by tests).
pub struct GovHarness {
    pub h: Harness,
    pub governance: Arc<Governance>,
    pub dir: tempfile::TempDir,
}

pub async fn harness(b: Backend) -> GovHarness {
    harness_with(b, |_, _| {}).await
}

/// [`harness`] whose registries `customize` may extend (test tools and
/// workflows), still governed by the test policies.
pub async fn harness_with(
    b: Backend,
    customize: impl FnOnce(&mut mandate_engine::WorkflowRegistry, &mut mandate_engine::ToolRegistry)
    + Send
    + 'static,
) -> GovHarness {
    let dir = tempfile::tempdir().unwrap();
    write_policies(dir.path());
    harness_in(b, dir, customize).await
}

/// A harness governed by a copy of the policy directory `policies` (its
/// `catalog.yaml` and `org/*.cedar`), e.g. `workflows/examples/policies`.
pub async fn harness_with_policies(b: Backend, policies: &Path) -> GovHarness {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        policies.join("catalog.yaml"),
        dir.path().join("catalog.yaml"),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("org")).unwrap();
    for file in std::fs::read_dir(policies.join("org")).unwrap() {
        let file = file.unwrap().path();
        std::fs::copy(
            &file,
            dir.path().join("org").join(file.file_name().unwrap()),
        )
        .unwrap();
    }
    harness_in(b, dir, |_, _| {}).await
}

async fn harness_in(
    b: Backend,
    dir: tempfile::TempDir,
    customize: impl FnOnce(&mut mandate_engine::WorkflowRegistry, &mut mandate_engine::ToolRegistry),
) -> GovHarness {
    let governance = Arc::new(
        Governance::load_dir(dir.path())
            .expect("the test policies load")
            .with_reload_interval(Duration::ZERO),
    );
    let db = TestDb::new(b).await;
    let world = World::connect(&db.url).await.unwrap();
    let g = governance.clone();
    let gateway: Arc<dyn mandate_engine::core::gateway::Gateway> = governance.clone();
    let mut h = Harness::governed(db, Limits::default(), gateway, move |w, t| {
        mandate_workflows::register_governed(w, g.clone());
        mandate_activities::register_governance_tools(t, g, world);
        customize(w, t);
    })
    .await;
    h.start_worker();
    GovHarness { h, governance, dir }
}

impl GovHarness {
    pub async fn submit(&self, plan: Value) -> Result<String, mandate_engine::runtime::Error> {
        let agent = plan["agent"].as_str().map(str::to_string);
        let on_behalf_of = plan["on_behalf_of"].as_str().map(str::to_string);
        self.h
            .engine
            .submit(
                "plan",
                plan,
                SubmitOptions {
                    agent,
                    on_behalf_of,
                    ..Default::default()
                },
            )
            .await
            .map(|s| s.task_id)
    }

    pub async fn run(&self, plan: Value) -> (String, TaskStatus) {
        let id = self.submit(plan).await.expect("submit");
        let row = self
            .h
            .engine
            .wait_until_final(&id, Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("task {id} did not finish: {e}"));
        (id, row.status)
    }

    pub async fn task_count(&self) -> usize {
        self.h
            .engine
            .store()
            .list_tasks(TaskFilter {
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap()
            .len()
    }

    /// The recorded output of the step named `name`.
    pub async fn output_of(&self, id: &str, name: &str) -> Option<Value> {
        use mandate_engine::EventPayload as E;
        let history = self.h.engine.history(id).await.unwrap();
        let seq = history.iter().find_map(|e| match &e.payload {
            E::StepScheduled { name: n, .. } if n == name => Some(e.seq),
            _ => None,
        })?;
        history.iter().find_map(|e| match &e.payload {
            E::StepCompleted {
                step_seq, output, ..
            } if *step_seq == seq => Some(output.clone()),
            _ => None,
        })
    }

    /// Decides the open approval request of step `step` as `who`.
    pub async fn decide(
        &self,
        id: &str,
        step: &str,
        who: &str,
        approved: bool,
        edit: Option<Value>,
    ) -> Result<mandate_engine::runtime::ApprovalRecorded, mandate_engine::runtime::Error> {
        self.h
            .engine
            .decide_approval(
                id,
                mandate_engine::runtime::ApprovalTarget::Subject(step.to_string()),
                who,
                mandate_engine::runtime::ApprovalDecision {
                    approved,
                    comment: Some(format!("{who} decided")),
                    edit,
                    via: Some("test".into()),
                },
            )
            .await
    }

    /// The open approval requests of a task (the inbox entries).
    pub async fn inbox(&self, id: &str) -> Vec<mandate_engine::core::approvals::InboxEntry> {
        self.h
            .engine
            .approval_inbox(Some(id), None)
            .await
            .unwrap()
            .0
    }

    /// The gateway's recorded decision for the step named `name` (the first,
    /// as JSON: `path`, `decided_by`, `policy_hash`, …).
    pub async fn decision_of(&self, id: &str, name: &str) -> Option<Value> {
        use mandate_engine::EventPayload as E;
        let history = self.h.engine.history(id).await.unwrap();
        history.iter().find_map(|e| match &e.payload {
            E::PolicyEvaluated {
                name: n, decision, ..
            } if n == name => Some(serde_json::to_value(decision).unwrap()),
            _ => None,
        })
    }

    /// The names of scheduled steps, in order.
    pub async fn scheduled(&self, id: &str) -> Vec<String> {
        use mandate_engine::EventPayload as E;
        self.h
            .engine
            .history(id)
            .await
            .unwrap()
            .iter()
            .filter_map(|e| match &e.payload {
                E::StepScheduled { name, .. } => Some(name.clone()),
                _ => None,
            })
            .collect()
    }
}

/// `archive.purge` (in the test catalog: an irreversible delete owned by
/// team-platform), counting its calls.
pub struct CountingPurge(pub Arc<std::sync::atomic::AtomicUsize>);

impl mandate_engine::Tool for CountingPurge {
    fn name(&self) -> &str {
        "archive.purge"
    }
    fn kind(&self) -> mandate_engine::ToolKind {
        mandate_engine::ToolKind::WriteIrreversible
    }
    fn call<'a>(
        &'a self,
        _ctx: mandate_engine::ToolContext,
        input: Value,
    ) -> futures::future::BoxFuture<'a, mandate_engine::ToolResult> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move { Ok(json!({"purged": input})) })
    }
}

/// A one-step plan.
pub fn one_step(agent: &str, tool: &str, input: Value) -> Value {
    json!({"agent": agent, "reason": "test", "steps": [{"id": "only", "tool": tool, "input": input}]})
}
