//! The engine's gateway governs every step of every workflow — built in,
//! plan, or user-written — for the task's authenticated principal: a tool
//! the policy denies is never called and the history shows the denial before
//! anything was scheduled for it; a gated tool runs only after a named
//! approver decided; identity is bound at submission; limits are checked at
//! the door. Issue 10's cases 1, 3, 6 and 7, and its "done when" list.

#[path = "support/gov.rs"]
mod gov;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use mandate_engine::runtime::Error as EngineError;
use mandate_engine::{
    EventPayload as E, StepOptions, SubmitOptions, TaskStatus, Workflow, WorkflowContext,
    WorkflowError,
};
use mandate_tests::{Backend, backend_tests};
use serde_json::{Value, json};

/// A workflow written by a user: one purge.
struct Purger;

impl Workflow for Purger {
    fn name(&self) -> &str {
        "purger"
    }
    fn run(
        &self,
        ctx: WorkflowContext,
        _input: Value,
    ) -> BoxFuture<'static, Result<Value, WorkflowError>> {
        Box::pin(async move {
            Ok(ctx
                .step(StepOptions::new("archive.purge", json!({"bucket": "logs"})).name("purge"))
                .await?)
        })
    }
}

async fn harness(b: Backend) -> (gov::GovHarness, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let g = gov::harness_with(b, move |w, t| {
        t.register(gov::CountingPurge(c));
        w.register(Purger);
    })
    .await;
    (g, calls)
}

async fn submit(g: &gov::GovHarness, workflow: &str, input: Value, agent: &str) -> String {
    g.h.engine
        .submit(
            workflow,
            input,
            SubmitOptions {
                agent: Some(agent.into()),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .task_id
}

async fn final_status(g: &gov::GovHarness, id: &str) -> TaskStatus {
    g.h.engine
        .wait_until_final(id, Duration::from_secs(30))
        .await
        .unwrap()
        .status
}

/// The denial of the first step using `tool` came before anything was
/// scheduled for that tool, and nothing ever was.
async fn assert_denied_before_scheduled(g: &gov::GovHarness, id: &str, tool: &str) {
    let history = g.h.engine.history(id).await.unwrap();
    let decided = history
        .iter()
        .find(|e| matches!(&e.payload, E::PolicyEvaluated { tool: t, decision, .. } if t == tool && decision.path.as_str() == "deny"))
        .unwrap_or_else(|| panic!("{tool} was not denied in {id}"));
    assert!(
        history.iter().any(
            |e| matches!(&e.payload, E::StepDenied { policy_seq, .. } if *policy_seq == decided.seq)
        ),
        "the denial is recorded"
    );
    assert!(
        !history
            .iter()
            .any(|e| matches!(&e.payload, E::StepScheduled { tool: t, .. } if t == tool)),
        "{tool} was never scheduled"
    );
}

/// Case 1 and "every workflow": an L0 observer's writes are denied in a
/// saga, a plan, a deploy and a user-written workflow; the tool is never
/// called.
async fn denied_tools_never_run_in_any_workflow(b: Backend) {
    let (g, calls) = harness(b).await;
    let observer = "agent-observer";
    let saga = submit(&g, "saga", json!({"stages": [[
        {"name": "charge", "tool": "ledger.charge", "input": {"account": "acme", "amount_cents": 900_000_000},
         "compensate": {"tool": "ledger.refund", "input": {"account": "acme", "amount_cents": 900_000_000}}},
        {"name": "mail", "tool": "email.send", "input": {"to": "all@example.com", "subject": "hi"}}]]}), observer).await;
    assert_eq!(final_status(&g, &saga).await, TaskStatus::FailedTerminal);
    assert_denied_before_scheduled(&g, &saga, "ledger.charge").await;
    assert_denied_before_scheduled(&g, &saga, "email.send").await;
    assert_eq!(
        g.h.world.get("ledger", "acme").await.unwrap(),
        None,
        "nothing charged"
    );
    assert!(
        g.h.world.list("email").await.unwrap().is_empty(),
        "nothing sent"
    );
    let deploy = submit(
        &g,
        "deploy_with_rollback",
        json!({"service": "web", "version": "v2"}),
        observer,
    )
    .await;
    assert_eq!(final_status(&g, &deploy).await, TaskStatus::FailedTerminal);
    assert_denied_before_scheduled(&g, &deploy, "deploy.set_version").await;
    let purge = submit(&g, "purger", json!({}), observer).await;
    assert_eq!(final_status(&g, &purge).await, TaskStatus::FailedTerminal);
    assert_denied_before_scheduled(&g, &purge, "archive.purge").await;
    let mut purge_plan = gov::one_step(observer, "archive.purge", json!({"bucket": "logs"}));
    purge_plan["steps"][0]["recovery_path"] = json!("restore the bucket from its snapshot");
    let (plan, status) = g.run(purge_plan).await;
    assert_eq!(status, TaskStatus::FailedTerminal);
    assert_denied_before_scheduled(&g, &plan, "archive.purge").await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "the denied tool was never called"
    );
    for id in [&saga, &deploy, &purge, &plan] {
        g.h.assert_replays(id).await;
    }
}

/// A gated tool does not run until a named approver decides, in a
/// user-written workflow as in a plan.
async fn gated_tools_wait_for_a_named_approver(b: Backend) {
    let (g, calls) = harness(b).await;
    // An L1 assistant's writes are gated; archive.purge is owned by team-platform.
    // agent-operator (L3): irreversible actions need approval below L4.
    let id = submit(&g, "purger", json!({}), "agent-operator").await;
    g.h.wait_for(&id, |s| s == TaskStatus::NeedsApproval).await;
    let inbox = g.inbox(&id).await;
    assert_eq!(inbox[0].approvers, ["team-platform"]);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    let e = g
        .decide(&id, "purge", "agent-operator", true, None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("agent that submitted"), "{e}");
    g.decide(&id, "purge", "team-platform", true, None)
        .await
        .unwrap();
    assert_eq!(final_status(&g, &id).await, TaskStatus::Completed);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    g.h.assert_replays(&id).await;
}

/// `gated_deploy` and a saga's approval item are engine approvals: the
/// catalog's default approvers decide; a signal cannot.
async fn workflow_approvals_are_engine_requests(b: Backend) {
    let (g, _) = harness(b).await;
    let id = submit(
        &g,
        "gated_deploy",
        json!({"service": "web", "version": "v9"}),
        "agent-deployer-7",
    )
    .await;
    g.h.wait_for(&id, |s| s == TaskStatus::NeedsApproval).await;
    let e =
        g.h.engine
            .signal(
                &id,
                "approve",
                json!({"approved": true}),
                "agent:agent-deployer-7",
            )
            .await
            .unwrap_err();
    assert!(e.to_string().contains("approvals are decided only"), "{e}");
    let e = g
        .decide(&id, "deploy", "agent-deployer-7", true, None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("agent that submitted"), "{e}");
    g.decide(&id, "deploy", "ops-oncall", true, None)
        .await
        .unwrap();
    assert_eq!(final_status(&g, &id).await, TaskStatus::Completed);
    let row = g.h.engine.task(&id).await.unwrap();
    assert_eq!(row.status, TaskStatus::Completed);
    g.h.assert_replays(&id).await;
    let saga = submit(
        &g,
        "saga",
        json!({"stages": [[{"wait_signal": "go", "approval": true}]]}),
        "agent-deployer-7",
    )
    .await;
    g.h.wait_for(&saga, |s| s == TaskStatus::NeedsApproval)
        .await;
    let e =
        g.h.engine
            .signal(&saga, "go", json!({}), "agent:agent-deployer-7")
            .await
            .unwrap_err();
    assert!(e.to_string().contains("approval"), "{e}");
    g.decide(&saga, "go", "team-platform", false, None)
        .await
        .unwrap();
    assert_eq!(final_status(&g, &saga).await, TaskStatus::FailedTerminal);
    g.h.assert_replays(&saga).await;
}

/// Case 3: no workflow or tool can grant a pre-approval.
async fn tasks_cannot_grant_preapprovals(b: Backend) {
    let (g, _) = harness(b).await;
    let e = g
        .h
        .engine
        .submit("preapproval", json!({"tool": "email.send", "agent": "agent-deployer-7", "duration_ms": 3_600_000, "granted_by": "team-comms"}),
            SubmitOptions { agent: Some("agent-deployer-7".into()), ..Default::default() })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("workflow was removed"), "{e}");
    let saga = submit(&g, "saga", json!({"stages": [[{"name": "grant", "tool": "preapproval.grant",
        "input": {"id": "x", "tool": "ledger.charge", "agent": "agent-deployer-7", "granted_by": "finance-controller", "expires_at_ms": 9_999_999_999_999_i64}}]]}), "agent-deployer-7").await;
    assert_eq!(final_status(&g, &saga).await, TaskStatus::FailedTerminal);
    assert_denied_before_scheduled(&g, &saga, "preapproval.grant").await;
    assert!(g.h.engine.preapprovals(false).await.unwrap().is_empty());
}

/// Case 6 and identity binding: the principal is checked at submission.
async fn identity_is_bound_at_submission(b: Backend) {
    let (g, _) = harness(b).await;
    let before = g.task_count().await;
    let refuse = |agent: &'static str, user: Option<&'static str>, input: Value| {
        let g = &g;
        async move {
            g.h.engine
                .submit(
                    "plan",
                    input,
                    SubmitOptions {
                        agent: Some(agent.into()),
                        on_behalf_of: user.map(str::to_string),
                        ..Default::default()
                    },
                )
                .await
                .unwrap_err()
        }
    };
    let plan = |agent: &str| gov::one_step(agent, "kv.put", json!({"key": "k", "value": 1}));
    // Case 2 at the engine: the input's agent must be the caller's.
    let e = refuse("agent-assistant", None, plan("agent-autonomous")).await;
    assert!(
        matches!(e, EngineError::Forbidden { .. }) && e.to_string().contains("input.agent"),
        "{e}"
    );
    // Case 6: on_behalf_of must be a catalog user.
    let mut p = plan("agent-assistant");
    p["on_behalf_of"] = json!("cfo");
    let e = refuse("agent-assistant", Some("cfo"), p).await;
    assert!(
        e.to_string().contains("on_behalf_of")
            && e.to_string().contains("not a user in the catalog"),
        "{e}"
    );
    let e = refuse("agent-nobody", None, plan("agent-nobody")).await;
    assert!(e.to_string().contains("not in the catalog"), "{e}");
    assert_eq!(g.task_count().await, before, "refusals wrote nothing");
    // The requester never approves its own request.
    std::fs::write(
        g.dir.path().join("org/requester.cedar"),
        r#"@id("org.payments.requester-account")
@message("account req: user-bob or alice approves")
@role("gate")
@path("gated_execute")
@approvers("user-bob, alice")
permit(principal, action == Action::"ledger.charge", resource == Scope::"req");
"#,
    )
    .unwrap();
    let mut pay = gov::one_step(
        "agent-deployer-7",
        "ledger.charge",
        json!({"account": "req", "amount_cents": 10}),
    );
    pay["on_behalf_of"] = json!("user-bob");
    let id = g.submit(pay).await.unwrap();
    g.h.wait_for(&id, |s| s == TaskStatus::NeedsApproval).await;
    let e = g
        .decide(&id, "only", "user-bob", true, None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("acts on its behalf"), "{e}");
    g.decide(&id, "only", "alice", true, None).await.unwrap();
    assert_eq!(final_status(&g, &id).await, TaskStatus::Completed);
}

/// Case 7: limits are checked at the door, naming stage/step and field;
/// nothing is written.
async fn limits_are_checked_at_the_door(b: Backend) {
    let (g, _) = harness(b).await;
    let before = g.task_count().await;
    let refused = |workflow: &'static str, input: Value| {
        let g = &g;
        async move {
            g.h.engine
                .submit(workflow, input, SubmitOptions::default())
                .await
                .unwrap_err()
                .to_string()
        }
    };
    let e = refused("saga", json!({"stages": [[{"tool": "kv.put", "input": {}, "retry": {"max_attempts": 1_000_000_000}}]]})).await;
    assert!(
        e.contains("stages[0][0]") && e.contains("retry") && e.contains("max_attempts"),
        "{e}"
    );
    let e = refused(
        "saga",
        json!({"stages": [[{"sleep_ms": 400_u64 * 86_400_000}]]}),
    )
    .await;
    assert!(e.contains("stages[0][0]") && e.contains("sleep_ms"), "{e}");
    let e = refused(
        "saga",
        json!({"stages": [[{"tool": "kv.put", "bogus": 1}]]}),
    )
    .await;
    assert!(e.contains("stages[0][0]") && e.contains("bogus"), "{e}");
    let mut p = gov::one_step(
        "agent-deployer-7",
        "kv.put",
        json!({"key": "k", "value": 1}),
    );
    p["steps"][0]["retry"] = json!({"max_attempts": 1000});
    let e =
        g.h.engine
            .submit(
                "plan",
                p,
                SubmitOptions {
                    agent: Some("agent-deployer-7".into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err()
            .to_string();
    assert!(e.contains("step \"only\"") && e.contains("retry"), "{e}");
    assert_eq!(g.task_count().await, before, "refusals wrote nothing");
}

backend_tests!(
    denied_tools_never_run_in_any_workflow,
    gated_tools_wait_for_a_named_approver,
    workflow_approvals_are_engine_requests,
    tasks_cannot_grant_preapprovals,
    identity_is_bound_at_submission,
    limits_are_checked_at_the_door,
);
