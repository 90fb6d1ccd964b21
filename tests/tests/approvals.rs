//! Approvals as engine objects: a gated step waits for the people its
//! decision names; decisions are recorded only through the engine's
//! approval call with an identity (never a signal); the submitting agent
//! and strangers are refused; a quorum counts distinct identities; a
//! rejection, a timeout or an edit the policy denies stops the step and
//! rolls the task back; an edit that needs more restarts the approval;
//! escalation; pre-approvals granted by an owner through their own API.

#[path = "support/gov.rs"]
mod gov;

use std::time::Duration;

use mandate_engine::core::gateway::ApprovalRefusal;
use mandate_engine::runtime::{Error as EngineError, PreapprovalGrant};
use mandate_engine::{EventPayload as E, SubmitOptions, TaskStatus};
use mandate_tests::{Backend, backend_tests, types};
use serde_json::{Value, json};

const AGENT: &str = "agent-deployer-7";

/// kv.put (monitored) then a charge of `amount` on `account` (gated by rule).
fn payment_plan(account: &str, amount: i64) -> Value {
    json!({"agent": AGENT, "reason": "pay the supplier", "evidence": [{"kind": "invoice", "ref": "inv-1"}],
        "steps": [
            {"id": "mark", "tool": "kv.put", "input": {"key": "paying", "value": true}},
            {"id": "pay", "tool": "ledger.charge", "input": {"account": account, "amount_cents": amount},
             "depends_on": ["mark"]}]})
}

async fn wait_final(g: &gov::GovHarness, id: &str) -> TaskStatus {
    g.h.engine
        .wait_until_final(id, Duration::from_secs(30))
        .await
        .unwrap()
        .status
}

async fn needs_approval(g: &gov::GovHarness, id: &str) {
    g.h.wait_for(id, |s| s == TaskStatus::NeedsApproval).await;
}

/// The types of the events about step `pay` and its approval, in order.
async fn pay_story(g: &gov::GovHarness, id: &str) -> Vec<&'static str> {
    let history = g.h.engine.history(id).await.unwrap();
    let start = history
        .iter()
        .position(|e| matches!(&e.payload, E::PolicyEvaluated { name, .. } if name == "pay"))
        .expect("pay was decided");
    types(&history[start..])
        .into_iter()
        .filter(|t| t.starts_with("Approval") || t.starts_with("Step") || *t == "PolicyEvaluated")
        .collect()
}

async fn quorum_needs_two_distinct_allowed_identities(b: Backend) {
    let g = gov::harness(b).await;
    let id = g.submit(payment_plan("acme", 5000)).await.unwrap();
    needs_approval(&g, &id).await;
    let before = g.h.engine.task(&id).await.unwrap().last_seq;
    for (who, expected) in [
        ("mallory", "the request names"),
        (AGENT, "agent that submitted the task"),
    ] {
        let e = g.decide(&id, "pay", who, true, None).await.unwrap_err();
        assert!(
            matches!(
                e,
                EngineError::ApprovalRefused(ApprovalRefusal::NotAllowed { .. })
            ) && e.to_string().contains(expected),
            "{who}: {e}"
        );
    }
    let e = g
        .decide(&id, "mark", "alice", true, None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not awaiting a decision"), "{e}");
    // A signal can never decide an approval.
    let e =
        g.h.engine
            .signal(
                &id,
                "approval:pay",
                json!({"decision": "approve"}),
                "approver:alice",
            )
            .await
            .unwrap_err();
    assert!(e.to_string().contains("never by a signal"), "{e}");
    assert_eq!(
        g.h.engine.task(&id).await.unwrap().last_seq,
        before,
        "refusals wrote nothing"
    );
    g.decide(&id, "pay", "alice", true, None).await.unwrap();
    let e = g.decide(&id, "pay", "alice", true, None).await.unwrap_err();
    assert!(e.to_string().contains("already decided"), "{e}");
    assert_eq!(
        g.h.engine.task(&id).await.unwrap().status,
        TaskStatus::NeedsApproval
    );
    g.decide(&id, "pay", "bob", true, None).await.unwrap();
    assert_eq!(wait_final(&g, &id).await, TaskStatus::Completed);
    // decision → request → each approver's decision → resolved → scheduled → completed.
    assert_eq!(
        pay_story(&g, &id).await,
        [
            "PolicyEvaluated",
            "ApprovalRequested",
            "ApprovalDecided",
            "ApprovalDecided",
            "ApprovalResolved",
            "StepScheduled",
            "StepCompleted"
        ]
    );
    let history = g.h.engine.history(&id).await.unwrap();
    let deciders: Vec<&str> = history
        .iter()
        .filter(|e| matches!(e.payload, E::ApprovalDecided { .. }))
        .map(|e| e.actor.as_str())
        .collect();
    assert_eq!(deciders, ["approver:alice", "approver:bob"]);
    g.h.assert_replays(&id).await;
}

async fn a_rejection_rolls_back(b: Backend) {
    let g = gov::harness(b).await;
    let id = g.submit(payment_plan("acme", 5000)).await.unwrap();
    needs_approval(&g, &id).await;
    g.decide(&id, "pay", "bob", false, None).await.unwrap();
    assert_eq!(wait_final(&g, &id).await, TaskStatus::FailedTerminal);
    assert_eq!(
        g.h.world.get("kv", "paying").await.unwrap(),
        None,
        "mark compensated"
    );
    assert!(!g.scheduled(&id).await.contains(&"pay".to_string()));
    let row = g.h.engine.task(&id).await.unwrap();
    let history = g.h.engine.history(&id).await.unwrap();
    assert!(history.iter().any(|e| matches!(&e.payload,
        E::StepDenied { rule, reason, .. } if rule == "approval.rejected" && reason.contains("rejected by bob"))), "{row:?}");
    g.h.assert_replays(&id).await;
}

async fn an_edit_is_rechecked_against_policy(b: Backend) {
    let g = gov::harness(b).await;
    // Edited within bounds: runs with the edited input, re-checked.
    let id = g.submit(payment_plan("acme", 5000)).await.unwrap();
    needs_approval(&g, &id).await;
    g.decide(
        &id,
        "pay",
        "alice",
        true,
        Some(json!({"amount_cents": 4000})),
    )
    .await
    .unwrap();
    g.decide(&id, "pay", "bob", true, None).await.unwrap();
    assert_eq!(wait_final(&g, &id).await, TaskStatus::Completed);
    assert_eq!(g.output_of(&id, "pay").await.unwrap()["amount_cents"], 4000);
    assert!(pay_story(&g, &id).await.contains(&"ApprovalEditEvaluated"));
    g.h.assert_replays(&id).await;
    // Edited past a forbid: refused by the re-check, rolled back.
    let id = g.submit(payment_plan("acme", 5000)).await.unwrap();
    needs_approval(&g, &id).await;
    g.decide(
        &id,
        "pay",
        "alice",
        true,
        Some(json!({"amount_cents": 9_000_000})),
    )
    .await
    .unwrap();
    g.decide(&id, "pay", "bob", true, None).await.unwrap();
    assert_eq!(wait_final(&g, &id).await, TaskStatus::FailedTerminal);
    assert!(!g.scheduled(&id).await.contains(&"pay".to_string()));
    g.h.assert_replays(&id).await;
}

/// Issue 10, case 5: an edit whose re-check needs a larger quorum restarts
/// the approval under it; the one approval given does not run the step.
async fn an_edit_needing_more_restarts_the_approval(b: Backend) {
    let g = gov::harness(b).await;
    std::fs::write(
        g.dir.path().join("org/review.cedar"),
        r#"@id("org.payments.review-account")
@message("account review: one finance approver")
@role("gate")
@path("gated_execute")
@approvers("alice")
permit(principal, action == Action::"ledger.charge", resource == Scope::"review");
"#,
    )
    .unwrap();
    let id = g.submit(payment_plan("review", 500)).await.unwrap();
    needs_approval(&g, &id).await;
    assert_eq!(g.inbox(&id).await[0].quorum, 1);
    g.decide(
        &id,
        "pay",
        "alice",
        true,
        Some(json!({"amount_cents": 50_000})),
    )
    .await
    .unwrap();
    // The edit now needs two (rule org.payments.large-needs-two): a new request.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let restarted = loop {
        // Subscribed before reading, so the append that restarts it wakes us.
        let mut updates = g.h.engine.subscribe();
        let inbox = g.inbox(&id).await;
        if let Some(e) = inbox.into_iter().find(|e| e.quorum == 2) {
            break e;
        }
        assert!(
            tokio::time::timeout_at(deadline, updates.recv())
                .await
                .is_ok(),
            "no restarted request"
        );
    };
    assert_eq!(restarted.input.clone().unwrap()["amount_cents"], 50_000);
    assert!(
        restarted
            .rules
            .iter()
            .any(|r| r.id == "org.payments.large-needs-two")
    );
    assert!(!g.scheduled(&id).await.contains(&"pay".to_string()));
    assert_eq!(
        g.h.engine.task(&id).await.unwrap().status,
        TaskStatus::NeedsApproval
    );
    g.decide(&id, "pay", "alice", true, None).await.unwrap();
    g.decide(&id, "pay", "bob", true, None).await.unwrap();
    assert_eq!(wait_final(&g, &id).await, TaskStatus::Completed);
    assert_eq!(
        g.output_of(&id, "pay").await.unwrap()["amount_cents"],
        50_000
    );
    g.h.assert_replays(&id).await;
}

async fn a_timeout_aborts_and_compensates(b: Backend) {
    let g = gov::harness(b).await;
    let id = g.submit(payment_plan("slow", 500)).await.unwrap();
    assert_eq!(wait_final(&g, &id).await, TaskStatus::FailedTerminal);
    assert!(
        !g.scheduled(&id).await.contains(&"pay".to_string()),
        "the step was aborted"
    );
    assert_eq!(
        g.h.world.get("kv", "paying").await.unwrap(),
        None,
        "mark compensated"
    );
    let history = g.h.engine.history(&id).await.unwrap();
    assert!(history.iter().any(
        |e| matches!(&e.payload, E::ApprovalResolved { outcome, .. } if outcome == "timed_out")
    ));
    g.h.assert_replays(&id).await;
}

async fn an_escalation_is_recorded_and_the_secondary_may_approve(b: Backend) {
    let g = gov::harness(b).await;
    let id = g.submit(payment_plan("esc", 500)).await.unwrap();
    needs_approval(&g, &id).await;
    // carol may decide only after the escalation.
    let e = g.decide(&id, "pay", "carol", true, None).await.unwrap_err();
    assert!(e.to_string().contains("may not decide"), "{e}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let inbox = g.inbox(&id).await;
        if inbox
            .first()
            .is_some_and(|e| e.escalated_to.as_deref() == Some("carol"))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no escalation recorded"
        );
        let mut updates = g.h.engine.subscribe();
        let _ = tokio::time::timeout(Duration::from_millis(200), updates.recv()).await;
    }
    g.decide(&id, "pay", "carol", true, None).await.unwrap();
    assert_eq!(wait_final(&g, &id).await, TaskStatus::Completed);
    let history = g.h.engine.history(&id).await.unwrap();
    assert!(
        history
            .iter()
            .any(|e| matches!(&e.payload, E::ApprovalEscalated { to, .. } if to == "carol"))
    );
    g.h.assert_replays(&id).await;
}

async fn a_preapproval_is_granted_by_an_owner_and_lets_gated_steps_run(b: Backend) {
    let g = gov::harness(b).await;
    let grant = |by: &str, scope: Option<&str>| {
        let g = &g;
        let by = by.to_string();
        let scope = scope.map(str::to_string);
        async move {
            g.h.engine
                .grant_preapproval(
                    PreapprovalGrant {
                        tool: "ledger.charge".into(),
                        agent: AGENT.into(),
                        scope,
                        duration_ms: 3_600_000,
                        reason: Some("month-end run".into()),
                    },
                    &by,
                )
                .await
        }
    };
    // Only an owner of the tool may pre-approve it, and no task can.
    let e = grant("mallory", None).await.unwrap_err();
    assert!(e.to_string().contains("does not own ledger.charge"), "{e}");
    let e = g
        .h
        .engine
        .submit("preapproval", json!({"tool": "ledger.charge", "agent": AGENT, "duration_ms": 60000, "granted_by": "finance-controller"}), SubmitOptions::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("workflow was removed"), "{e}");
    let p = grant("finance-controller", Some("acme")).await.unwrap();
    let (id, status) = g.run(payment_plan("acme", 5000)).await;
    assert_eq!(status, TaskStatus::Completed);
    let history = g.h.engine.history(&id).await.unwrap();
    let used = history
        .iter()
        .find_map(|e| match &e.payload {
            E::PolicyEvaluated { name, decision, .. } if name == "pay" => Some(decision.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(used.path.as_str(), "gated_execute");
    let pre = used
        .preapproval
        .expect("the decision names the pre-approval");
    assert_eq!(
        (pre.id.as_str(), pre.granted_by.as_str()),
        (p.id.as_str(), "finance-controller")
    );
    g.h.assert_replays(&id).await;
    // Another scope is not covered; a revoked grant covers nothing.
    let other = g.submit(payment_plan("other", 5000)).await.unwrap();
    needs_approval(&g, &other).await;
    g.h.engine
        .revoke_preapproval(&p.id, "finance-controller")
        .await
        .unwrap();
    let again = g.submit(payment_plan("acme", 5000)).await.unwrap();
    needs_approval(&g, &again).await;
    let listed = g.h.engine.preapprovals(false).await.unwrap();
    assert_eq!(listed[0].revoked_by.as_deref(), Some("finance-controller"));
    assert!(g.h.engine.preapprovals(true).await.unwrap().is_empty());
}

/// The inbox's rollback plan shows each compensation with its input rendered
/// as it will be registered: catalog mappings (`${input.…}`) and a plan's
/// own `compensate` (`${steps.X.output…}`) resolved, an approver's edit
/// applied; never the catalog's template text.
async fn the_inbox_shows_compensations_as_they_will_run(b: Backend) {
    let g = gov::harness(b).await;
    // Catalog compensation: ledger.refund {account: ${input.account}, …}.
    let catalog = g.submit(payment_plan("acme", 5000)).await.unwrap();
    // A plan's own compensation, reading an earlier step's output.
    let own = g
        .submit(json!({"agent": AGENT, "reason": "pay the supplier",
            "steps": [
                {"id": "lookup", "tool": "deploy.snapshot", "input": {"service": "acme-refunds"}},
                {"id": "pay", "tool": "ledger.charge", "input": {"account": "acme", "amount_cents": 5000},
                 "depends_on": ["lookup"],
                 "compensate": {"tool": "ledger.refund",
                    "input": {"account": "${steps.lookup.output.service}", "amount_cents": "${input.amount_cents}"}}}]}))
        .await
        .unwrap();
    needs_approval(&g, &catalog).await;
    let entries = g.inbox(&catalog).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(
        entries[0].id,
        format!("{catalog}:{}", entries[0].request_seq)
    );
    assert_eq!(
        entries[0].rollback_plan,
        vec![
            r#"pay: compensate with ledger.refund {"account":"acme","amount_cents":5000}"#,
            r#"mark: compensate with kv.delete {"key":"paying"}"#,
        ]
    );
    needs_approval(&g, &own).await;
    let entries = g.inbox(&own).await;
    assert_eq!(
        entries[0].rollback_plan[0],
        r#"pay: compensate with ledger.refund {"account":"acme-refunds","amount_cents":5000}"#
    );
    // The first of two approvers edits the amount: the refund follows it,
    // and is exactly the compensation the step registers once it runs.
    g.decide(
        &catalog,
        "pay",
        "alice",
        true,
        Some(json!({"amount_cents": 4000})),
    )
    .await
    .unwrap();
    let shown = g.inbox(&catalog).await[0].rollback_plan[0].clone();
    assert_eq!(
        shown,
        r#"pay: compensate with ledger.refund {"account":"acme","amount_cents":4000}"#
    );
    g.decide(&catalog, "pay", "bob", true, None).await.unwrap();
    assert_eq!(wait_final(&g, &catalog).await, TaskStatus::Completed);
    let registered =
        g.h.engine
            .history(&catalog)
            .await
            .unwrap()
            .into_iter()
            .find_map(|e| match e.payload {
                E::StepScheduled {
                    name, compensation, ..
                } if name == "pay" => compensation,
                _ => None,
            })
            .expect("pay registered a compensation");
    assert_eq!(
        shown,
        format!(
            "pay: compensate with {} {}",
            registered.tool, registered.input
        )
    );
}

backend_tests!(
    quorum_needs_two_distinct_allowed_identities,
    a_rejection_rolls_back,
    an_edit_is_rechecked_against_policy,
    an_edit_needing_more_restarts_the_approval,
    a_timeout_aborts_and_compensates,
    an_escalation_is_recorded_and_the_secondary_may_approve,
    a_preapproval_is_granted_by_an_owner_and_lets_gated_steps_run,
    the_inbox_shows_compensations_as_they_will_run,
);
