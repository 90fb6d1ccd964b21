//! The `plan` workflow: whole-plan validation at submission (every refusal
//! names the step and writes nothing), references between steps, concurrent
//! branches, and rollback of every completed step of every branch.

#[path = "support/gov.rs"]
mod gov;

use mandate_engine::core::approvals::InboxEntry;
use mandate_engine::{EventPayload as E, TaskStatus};
use mandate_tests::{Backend, backend_tests};
use serde_json::{Value, json};

const AGENT: &str = "agent-deployer-7"; // L2, NO-DELETE: reversible writes run monitored

fn plan(steps: Value) -> Value {
    json!({"agent": AGENT, "on_behalf_of": "user-alice", "reason": "test", "steps": steps})
}

async fn invalid_plans_are_refused_naming_the_step_and_write_nothing(b: Backend) {
    let g = gov::harness(b).await;
    let too_many: Vec<Value> = (0..2_001)
        .map(|i| json!({"id": format!("s{i}"), "tool": "test.echo"}))
        .collect();
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "unknown tool",
            plan(json!([{"id": "a", "tool": "nope.nothing"}])),
            "step \"a\": field tool: unknown tool \"nope.nothing\"",
        ),
        (
            "cycle",
            plan(json!([
                {"id": "a", "tool": "test.echo", "depends_on": ["c"]},
                {"id": "b", "tool": "test.echo", "depends_on": ["a"]},
                {"id": "c", "tool": "test.echo", "depends_on": ["b"]},
                {"id": "d", "tool": "test.echo"}])),
            "steps \"a\", \"b\", \"c\" form a cycle",
        ),
        (
            "dangling depends_on",
            plan(json!([{"id": "a", "tool": "test.echo", "depends_on": ["ghost"]}])),
            "step \"a\": field depends_on: no step \"ghost\" in the plan",
        ),
        (
            "reference to a step that is not an ancestor",
            plan(json!([
                {"id": "rollback", "tool": "deploy.set_version",
                 "input": {"service": "checkout", "version": "${steps.throttle.output.version}"}},
                {"id": "throttle", "tool": "deploy.snapshot", "input": {"service": "checkout"},
                 "depends_on": ["rollback"]}])),
            "step \"rollback\": field input.version: reference to steps.throttle which is not an ancestor",
        ),
        (
            "reference to an unknown step",
            plan(
                json!([{"id": "a", "tool": "test.echo", "input": {"x": "${steps.ghost.output.v}"}}]),
            ),
            "step \"a\": field input.x: reference to steps.ghost: no such step",
        ),
        (
            "write step with neither compensation nor recovery path",
            plan(json!([{"id": "purge", "tool": "archive.purge", "input": {}}])),
            "step \"purge\": field compensate: tool archive.purge is write_irreversible and has neither a compensation nor a recovery path",
        ),
        (
            "input failing the tool's schema",
            plan(json!([{"id": "pay", "tool": "ledger.charge",
                         "input": {"account": "acme", "amount_cents": "ten"}}])),
            "step \"pay\": field input.amount_cents: expected integer, got string",
        ),
        (
            "missing required input",
            plan(json!([{"id": "pay", "tool": "ledger.charge", "input": {"account": "acme"}}])),
            "step \"pay\": field input.amount_cents: required",
        ),
        (
            "too many steps",
            plan(Value::Array(too_many)),
            "field steps: 2001 steps, more than the limit of 2000",
        ),
        (
            "step input over the per-step limit",
            plan(
                json!([{"id": "big", "tool": "test.echo", "input": {"x": "y".repeat(70 * 1024)}}]),
            ),
            "step \"big\": field input: ",
        ),
        (
            "unknown agent",
            json!({"agent": "agent-nobody", "steps": [{"id": "a", "tool": "test.echo"}]}),
            "field agent: agent \"agent-nobody\" is not in the catalog",
        ),
        (
            "unknown field",
            plan(json!([{"id": "a", "tool": "test.echo", "dependz": ["x"]}])),
            "step \"a\": unknown field `dependz`",
        ),
    ];
    for (what, doc, expected) in cases {
        let err = g.submit(doc).await.expect_err(what);
        assert!(
            matches!(err, mandate_engine::runtime::Error::InvalidInput { .. }),
            "{what}: {err}"
        );
        assert!(err.to_string().contains(expected), "{what}: got {err}");
    }
    assert_eq!(g.task_count().await, 0, "no task row after refusals");
    let events = mandate_tests::exec_sql(&g.h.db, "DELETE FROM events").await;
    assert_eq!(events, 0, "no event after refusals");
}

async fn references_resolve_from_recorded_outputs(b: Backend) {
    let g = gov::harness(b).await;
    let (id, status) = g
        .run(plan(json!([
            {"id": "snapshot", "tool": "deploy.snapshot", "input": {"service": "checkout"}},
            {"id": "echo", "tool": "test.echo",
             "input": {"was": "${steps.snapshot.output.version}", "text": "svc ${steps.snapshot.output.service}!"}}])))
        .await;
    assert_eq!(status, TaskStatus::Completed);
    let out = g.output_of(&id, "echo").await.unwrap();
    assert_eq!(out, json!({"was": "v0", "text": "svc checkout!"}));
    // The reference implied the edge: echo ran after snapshot.
    assert_eq!(g.scheduled(&id).await, ["snapshot", "echo"]);
    g.h.assert_replays(&id).await;
}

async fn branches_run_concurrently_and_a_failure_compensates_every_branch(b: Backend) {
    let g = gov::harness(b).await;
    let sleepy = |key: &str| json!({"key": key, "mode": "sleep", "sleep_ms": 500});
    let (id, status) = g
        .run(plan(json!([
            {"id": "a1", "tool": "test.fault_write", "input": sleepy("a1")},
            {"id": "a2", "tool": "test.fault_write", "input": {"key": "a2", "mode": "ok"}, "depends_on": ["a1"]},
            {"id": "b1", "tool": "test.fault_write", "input": sleepy("b1")},
            {"id": "c1", "tool": "test.fault_write", "input": sleepy("c1")},
            {"id": "c2", "tool": "test.fault", "input": {"mode": "fail_terminal", "message": "boom"},
             "depends_on": ["c1"]}])))
        .await;
    assert_eq!(status, TaskStatus::FailedTerminal);
    let history = g.h.engine.history(&id).await.unwrap();
    let mut names = std::collections::HashMap::new();
    let mut intervals = std::collections::HashMap::new();
    let mut completed_writes = Vec::new();
    let mut compensated = Vec::new();
    for e in &history {
        match &e.payload {
            E::StepScheduled { name, .. } => {
                names.insert(e.seq, name.clone());
            }
            E::StepCompleted {
                step_seq,
                started_at_ms,
                duration_ms,
                ..
            } => {
                let name = names[step_seq].clone();
                if ["a1", "a2", "b1", "c1"].contains(&name.as_str()) {
                    intervals.insert(
                        name.clone(),
                        (*started_at_ms, *started_at_ms + *duration_ms as i64),
                    );
                    completed_writes.push(name);
                }
            }
            E::CompensationStarted { step_seq, .. } => compensated.push(names[step_seq].clone()),
            _ => {}
        }
    }
    let roots = ["a1", "b1", "c1"].map(|n| intervals[n]);
    let latest_start = roots.iter().map(|i| i.0).max().unwrap();
    let earliest_end = roots.iter().map(|i| i.1).min().unwrap();
    assert!(
        latest_start < earliest_end,
        "the three branches overlapped: {roots:?}"
    );
    let mut expected = completed_writes.clone();
    expected.reverse();
    assert_eq!(
        compensated, expected,
        "every completed step, newest completion first"
    );
    assert!(compensated.len() >= 3, "{compensated:?}");
    for key in ["a1", "a2", "b1", "c1"] {
        assert_eq!(
            g.h.world.get("kv", key).await.unwrap(),
            None,
            "{key} undone"
        );
    }
    g.h.assert_replays(&id).await;
}

/// A plan at the step limit: a chain of 1,000 steps beside 1,000 in
/// parallel, whose results come back in as many decisions. It completes,
/// every step once, and its history replays. (With a replay from the start
/// for each parallel result, the decide cost grew with the square of the
/// plan and such a plan did not finish in 300 s of a debug build.)
async fn a_plan_at_the_step_limit_runs_to_completion(b: Backend) {
    let g = gov::harness(b).await;
    let limit = mandate_workflows::plan::PlanLimits::default().max_steps;
    let chain = limit / 2;
    let steps: Vec<Value> = (0..limit)
        .map(|i| {
            if i < chain {
                let mut s = json!({"id": format!("c{i}"), "tool": "test.echo", "input": {"i": i}});
                if i > 0 {
                    s["depends_on"] = json!([format!("c{}", i - 1)]);
                }
                s
            } else {
                json!({"id": format!("p{i}"), "tool": "test.echo", "input": {"i": i}})
            }
        })
        .collect();
    let id = g.submit(plan(Value::Array(steps))).await.expect("submit");
    // A bound on a hang, not a speed claim.
    let row =
        g.h.engine
            .wait_until_final(&id, std::time::Duration::from_secs(900))
            .await
            .unwrap_or_else(|e| panic!("task {id} did not finish: {e}"));
    assert_eq!(row.status, TaskStatus::Completed);
    let history = g.h.engine.history(&id).await.unwrap();
    let completed = history
        .iter()
        .filter(|e| matches!(e.payload, E::StepCompleted { .. }))
        .count();
    assert_eq!(completed, limit, "every step completed once");
    g.h.assert_replays(&id).await;
}

/// The reference plans validate against their policies and decide as documented.
#[test]
fn reference_plans_validate_and_decide_as_documented() {
    use mandate_activities::Governance;
    use mandate_activities::policy::{CheckRequest, InterventionPath as P};
    use mandate_workflows::plan::{PlanLimits, parse_text, validate_plan};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../workflows/examples");
    let g = Governance::load_dir(root.join("policies")).expect("example policies load");
    let decide = |file: &str| -> Vec<(String, P, Option<u32>, Option<String>)> {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let doc = parse_text(file, &text).unwrap();
        let (plan, _) = validate_plan(&doc, &g, &PlanLimits::default())
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        plan.steps
            .iter()
            .map(|s| {
                // As the dry run does: a reference stands for any type.
                let d = g.current().evaluate_unresolved(&CheckRequest {
                    step: s.id.clone(),
                    tool: s.tool.clone(),
                    input: s.input.clone(),
                    agent: plan.agent.clone(),
                    on_behalf_of: plan.on_behalf_of.clone(),
                    environment: plan.environment.clone(),
                    now_ms: 0,
                });
                let a = d.approval.clone();
                (
                    s.id.clone(),
                    d.decision,
                    a.as_ref().map(|a| a.quorum),
                    a.and_then(|a| a.escalation),
                )
            })
            .collect()
    };
    assert_eq!(
        decide("incident_mitigation.yaml"),
        [
            ("snapshot".into(), P::AutoExecute, None, None),
            (
                "rollback".into(),
                P::GatedExecute,
                Some(1),
                Some("incident-commander".into())
            ),
            ("throttle".into(), P::MonitoredExecute, None, None),
        ]
    );
    assert_eq!(
        decide("payment_above_threshold.yaml"),
        [
            ("reserve".into(), P::MonitoredExecute, None, None),
            ("pay".into(), P::GatedExecute, Some(2), None),
        ]
    );
    assert_eq!(
        decide("iam_policy_auditor.yaml"),
        [
            ("enumerate".into(), P::AutoExecute, None, None),
            ("validate".into(), P::AutoExecute, None, None),
            ("propose_ci_deployer".into(), P::AutoExecute, None, None),
            ("propose_data_export".into(), P::AutoExecute, None, None),
            ("apply_ci_deployer".into(), P::GatedExecute, Some(1), None),
            ("apply_data_export".into(), P::GatedExecute, Some(1), None),
        ]
    );
    // Every example is one of the above, and its policies ship the default catalog.
    let mut examples: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .collect();
    examples.sort();
    assert_eq!(
        examples,
        [
            "iam_policy_auditor.yaml",
            "incident_mitigation.yaml",
            "payment_above_threshold.yaml"
        ],
        "a new example needs its decisions checked here"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("policies/catalog.yaml")).unwrap(),
        mandate_activities::policy::DEFAULT_CATALOG_YAML,
        "the examples' catalog is the shipped one"
    );
}

fn iam_example() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../workflows/examples/iam_policy_auditor.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    mandate_workflows::plan::parse_text("iam_policy_auditor.yaml", &text).unwrap()
}

async fn iam_harness(b: Backend) -> gov::GovHarness {
    let policies =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../workflows/examples/policies");
    gov::harness_with_policies(b, &policies).await
}

/// `(default version, its document)` of an IAM policy in the world.
async fn iam_policy(g: &gov::GovHarness, name: &str) -> (i64, Value) {
    let stored = g.h.world.get("iam_policy", name).await.unwrap().unwrap();
    let version = stored["default_version"].as_i64().unwrap();
    let document = stored["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == version)
        .unwrap()["document"]
        .clone();
    (version, document)
}

/// Waits until step `step` of task `id` awaits approval; returns its inbox entry.
async fn awaiting(g: &gov::GovHarness, id: &str, step: &str) -> InboxEntry {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut updates = g.h.engine.subscribe();
        if let Some(e) = g.inbox(id).await.into_iter().find(|e| e.step == step) {
            return e;
        }
        let status = g.h.engine.task(id).await.unwrap().status;
        assert!(
            !status.is_final() && tokio::time::Instant::now() < deadline,
            "step {step} of {id} never awaited approval (task {status})"
        );
        let _ = tokio::time::timeout(std::time::Duration::from_millis(200), updates.recv()).await;
    }
}

async fn approve_as_security(g: &gov::GovHarness, id: &str, step: &str) {
    g.decide(id, step, "security-oncall", true, None)
        .await
        .unwrap();
}

/// Approves the example's two applies as a security engineer, each once it
/// waits; returns their inbox entries as they were and the final status.
async fn approve_both_applies(
    g: &gov::GovHarness,
    id: &str,
) -> (InboxEntry, InboxEntry, TaskStatus) {
    let first = awaiting(g, id, "apply_ci_deployer").await;
    approve_as_security(g, id, "apply_ci_deployer").await;
    let second = awaiting(g, id, "apply_data_export").await;
    approve_as_security(g, id, "apply_data_export").await;
    let row =
        g.h.engine
            .wait_until_final(id, std::time::Duration::from_secs(30))
            .await
            .unwrap();
    (first, second, row.status)
}

/// The IAM policy auditor dry-runs: every step's decision, and the rollback
/// of each apply with what only the proposal will tell named as such.
#[test]
fn the_iam_policy_auditor_dry_runs() {
    use mandate_activities::Governance;
    let policies =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../workflows/examples/policies");
    let g = Governance::load_dir(policies).unwrap();
    let report = mandate_workflows::plan::dry_run(&iam_example(), &g, 0).unwrap();
    let steps = report["steps"].as_array().unwrap();
    let apply = steps
        .iter()
        .find(|s| s["step"] == "apply_ci_deployer")
        .unwrap();
    assert_eq!(apply["decision"], "gated_execute");
    assert_eq!(apply["rules"][0]["id"], "org.iam.change-gated");
    assert_eq!(
        apply["rollback"]["compensation"],
        json!({"tool": "iam.restore_policy",
               "input": {"policy": "ci-deployer", "version": "<from output of step propose_ci_deployer>"}})
    );
    assert!(steps.iter().all(|s| s["decision"] != "deny"), "{report:#}");
}

/// Enumerate → validate → propose → apply (each apply approved): the two
/// wildcard policies are replaced, the others untouched.
async fn the_iam_policy_auditor_runs_to_completion_when_approved(b: Backend) {
    let g = iam_harness(b).await;
    let before_auditor = iam_policy(&g, "read-only-auditor").await;
    let id = g.submit(iam_example()).await.unwrap();
    let (first, _, status) = approve_both_applies(&g, &id).await;
    assert_eq!(
        first.rollback_plan,
        [
            r#"apply_ci_deployer: compensate with iam.restore_policy {"policy":"ci-deployer","version":1}"#
        ]
    );
    assert_eq!(status, TaskStatus::Completed);
    let audit = g.output_of(&id, "validate").await.unwrap();
    assert_eq!(
        audit["flagged"],
        json!(["break-glass-admin", "ci-deployer", "data-export"])
    );
    for (policy, step) in [
        ("ci-deployer", "propose_ci_deployer"),
        ("data-export", "propose_data_export"),
    ] {
        let proposal = g.output_of(&id, step).await.unwrap();
        assert_eq!(
            iam_policy(&g, policy).await,
            (2, proposal["proposed_document"].clone()),
            "{policy} replaced"
        );
    }
    assert_eq!(iam_policy(&g, "read-only-auditor").await, before_auditor);
    g.h.assert_replays(&id).await;
}

/// A failure in the apply stage (here a policy denial of a third change)
/// rolls every applied change back, newest first, and the world's IAM
/// documents are what they were.
async fn a_denied_iam_change_rolls_back_the_applied_ones_in_reverse(b: Backend) {
    let g = iam_harness(b).await;
    let mut plan = iam_example();
    plan["steps"].as_array_mut().unwrap().push(json!({
        "id": "apply_break_glass", "tool": "iam.put_policy", "depends_on": ["apply_data_export"],
        "input": {"policy": "break-glass-admin", "expected_version": 1,
                  "document": {"Statement": [{"Effect": "Allow", "Action": "iam:Get*", "Resource": "*"}]}}}));
    let mut before = Vec::new();
    for name in ["ci-deployer", "data-export", "break-glass-admin"] {
        before.push(iam_policy(&g, name).await);
    }
    let id = g.submit(plan).await.unwrap();
    let (_, second, status) = approve_both_applies(&g, &id).await;
    assert_eq!(
        second.rollback_plan,
        [
            r#"apply_data_export: compensate with iam.restore_policy {"policy":"data-export","version":1}"#,
            r#"apply_ci_deployer: compensate with iam.restore_policy {"policy":"ci-deployer","version":1}"#,
        ]
    );
    assert_eq!(status, TaskStatus::FailedTerminal);
    let history = g.h.engine.history(&id).await.unwrap();
    let denial = history
        .iter()
        .find_map(|e| match &e.payload {
            E::PolicyEvaluated { name, decision, .. } if name == "apply_break_glass" => {
                Some(decision.clone())
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(denial.path.as_str(), "deny");
    assert_eq!(denial.decided_by[0].id, "org.iam.break-glass-frozen");
    assert!(
        !g.scheduled(&id)
            .await
            .contains(&"apply_break_glass".to_string())
    );
    let mut names = std::collections::HashMap::new();
    let mut compensated = Vec::new();
    for e in &history {
        match &e.payload {
            E::StepScheduled { name, .. } => {
                names.insert(e.seq, name.clone());
            }
            E::CompensationStarted { step_seq, .. } => compensated.push(names[step_seq].clone()),
            _ => {}
        }
    }
    assert_eq!(compensated, ["apply_data_export", "apply_ci_deployer"]);
    for (name, was) in ["ci-deployer", "data-export", "break-glass-admin"]
        .into_iter()
        .zip(before)
    {
        assert_eq!(iam_policy(&g, name).await.1, was.1, "{name} restored");
    }
    g.h.assert_replays(&id).await;
}

backend_tests!(
    invalid_plans_are_refused_naming_the_step_and_write_nothing,
    references_resolve_from_recorded_outputs,
    branches_run_concurrently_and_a_failure_compensates_every_branch,
    a_plan_at_the_step_limit_runs_to_completion,
    the_iam_policy_auditor_runs_to_completion_when_approved,
    a_denied_iam_change_rolls_back_the_applied_ones_in_reverse,
);
