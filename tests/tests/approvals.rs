//! Approvals of gated plan steps: identities, the submitting agent, quorum of
//! distinct identities, rejection, edits re-checked by policy, timeout with
//! rollback, escalation, and batch pre-approval.

#[path = "support/gov.rs"]
mod gov;

use std::time::Duration;

use mandate_engine::runtime::Error as EngineError;
use mandate_engine::{EventPayload as E, SubmitOptions, TaskStatus};
use mandate_tests::{Backend, backend_tests};
use mandate_workflows::plan::approvals;
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

async fn approve(
    g: &gov::GovHarness,
    id: &str,
    who: &str,
    payload: Value,
) -> Result<i64, EngineError> {
    g.h.engine
        .signal(id, "approval:pay", payload, &format!("approver:{who}"))
        .await
}

async fn wait_final(g: &gov::GovHarness, id: &str) -> TaskStatus {
    g.h.engine
        .wait_until_final(id, Duration::from_secs(30))
        .await
        .unwrap()
        .status
}

async fn quorum_needs_two_distinct_allowed_identities(b: Backend) {
    let g = gov::harness(b).await;
    let id = g.submit(payment_plan("acme", 5000)).await.unwrap();
    g.h.wait_for(&id, |s| s == TaskStatus::NeedsApproval).await;
    let before = g.h.engine.task(&id).await.unwrap().last_seq;
    let ok = json!({"decision": "approve", "comment": "looks right"});
    for (who, expected) in [
        ("mallory", "may not decide step \"pay\""),
        (AGENT, "submitting agent can never approve"),
    ] {
        let e = approve(&g, &id, who, ok.clone()).await.unwrap_err();
        assert!(
            matches!(e, EngineError::Rejected { .. }) && e.to_string().contains(expected),
            "{who}: {e}"
        );
    }
    let e =
        g.h.engine
            .signal(&id, "approval:mark", ok.clone(), "approver:alice")
            .await
            .unwrap_err();
    assert!(e.to_string().contains("not awaiting approval"), "{e}");
    assert_eq!(
        g.h.engine.task(&id).await.unwrap().last_seq,
        before,
        "refusals wrote nothing"
    );
    approve(&g, &id, "alice", ok.clone()).await.unwrap();
    let e = approve(&g, &id, "alice", ok.clone()).await.unwrap_err();
    assert!(e.to_string().contains("distinct identities"), "{e}");
    assert_eq!(
        g.h.engine.task(&id).await.unwrap().status,
        TaskStatus::NeedsApproval
    );
    approve(&g, &id, "bob", json!({"decision": "approve"}))
        .await
        .unwrap();
    assert_eq!(wait_final(&g, &id).await, TaskStatus::Completed);
    // Each decision is in the history with identity, time and comment.
    let history = g.h.engine.history(&id).await.unwrap();
    let decisions: Vec<(String, String)> = history
        .iter()
        .filter_map(|e| match &e.payload {
            E::SignalReceived {
                sender, payload, ..
            } => Some((sender.clone(), payload["decision"].to_string())),
            _ => None,
        })
        .collect();
    assert_eq!(decisions.len(), 2);
    assert_eq!(decisions[0].0, "approver:alice");
    g.h.assert_replays(&id).await;
}

async fn a_rejection_rolls_back(b: Backend) {
    let g = gov::harness(b).await;
    let id = g.submit(payment_plan("acme", 5000)).await.unwrap();
    g.h.wait_for(&id, |s| s == TaskStatus::NeedsApproval).await;
    approve(
        &g,
        &id,
        "bob",
        json!({"decision": "reject", "comment": "wrong supplier"}),
    )
    .await
    .unwrap();
    assert_eq!(wait_final(&g, &id).await, TaskStatus::FailedTerminal);
    assert_eq!(
        g.h.world.get("kv", "paying").await.unwrap(),
        None,
        "mark compensated"
    );
    assert!(!g.scheduled(&id).await.contains(&"pay".to_string()));
    g.h.assert_replays(&id).await;
}

async fn an_edit_is_rechecked_against_policy(b: Backend) {
    let g = gov::harness(b).await;
    // Edited within bounds: runs with the edited input.
    let id = g.submit(payment_plan("acme", 5000)).await.unwrap();
    g.h.wait_for(&id, |s| s == TaskStatus::NeedsApproval).await;
    approve(
        &g,
        &id,
        "alice",
        json!({"decision": "approve", "edit": {"amount_cents": 4000}}),
    )
    .await
    .unwrap();
    approve(&g, &id, "bob", json!({"decision": "approve"}))
        .await
        .unwrap();
    assert_eq!(wait_final(&g, &id).await, TaskStatus::Completed);
    assert_eq!(g.output_of(&id, "pay").await.unwrap()["amount_cents"], 4000);
    assert!(
        g.output_of(&id, "pay.policy.edit").await.is_some(),
        "the edit was re-checked"
    );
    // Edited past a forbid: refused by the re-check, rolled back.
    let id = g.submit(payment_plan("acme", 5000)).await.unwrap();
    g.h.wait_for(&id, |s| s == TaskStatus::NeedsApproval).await;
    approve(
        &g,
        &id,
        "alice",
        json!({"decision": "approve", "edit": {"amount_cents": 9_000_000}}),
    )
    .await
    .unwrap();
    approve(&g, &id, "bob", json!({"decision": "approve"}))
        .await
        .unwrap();
    assert_eq!(wait_final(&g, &id).await, TaskStatus::FailedTerminal);
    assert!(!g.scheduled(&id).await.contains(&"pay".to_string()));
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
    assert!(history.iter().any(|e| matches!(
        &e.payload,
        E::SignalWaitResolved {
            timed_out: true,
            ..
        }
    )));
    g.h.assert_replays(&id).await;
}

async fn an_escalation_is_recorded_and_the_secondary_may_approve(b: Backend) {
    let g = gov::harness(b).await;
    let id = g.submit(payment_plan("esc", 500)).await.unwrap();
    g.h.wait_for(&id, |s| s == TaskStatus::NeedsApproval).await;
    // carol may decide only after the escalation.
    let e = approve(&g, &id, "carol", json!({"decision": "approve"}))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("may not decide"), "{e}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if g.output_of(&id, "pay.escalate").await.is_some() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no escalation recorded"
        );
        let mut updates = g.h.engine.subscribe();
        let _ = tokio::time::timeout(Duration::from_millis(200), updates.recv()).await;
    }
    assert_eq!(
        g.output_of(&id, "pay.escalate").await.unwrap()["to"],
        "carol"
    );
    approve(
        &g,
        &id,
        "carol",
        json!({"decision": "approve", "comment": "on call"}),
    )
    .await
    .unwrap();
    assert_eq!(wait_final(&g, &id).await, TaskStatus::Completed);
    g.h.assert_replays(&id).await;
}

async fn a_preapproval_is_recorded_and_lets_gated_steps_run(b: Backend) {
    let g = gov::harness(b).await;
    // Only an owner of the tool may pre-approve it.
    let e = g
        .h
        .engine
        .submit("preapproval", json!({"tool": "ledger.charge", "agent": AGENT, "duration_ms": 60000, "granted_by": "mallory"}), SubmitOptions::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("does not own ledger.charge"), "{e}");
    let grant = g
        .h
        .engine
        .submit(
            "preapproval",
            json!({"tool": "ledger.charge", "agent": AGENT, "scope": "acme", "duration_ms": 3_600_000, "granted_by": "finance-controller"}),
            SubmitOptions { actor: Some("approver:finance-controller".into()), ..Default::default() },
        )
        .await
        .unwrap()
        .task_id;
    assert_eq!(wait_final(&g, &grant).await, TaskStatus::Completed);
    let (id, status) = g.run(payment_plan("acme", 5000)).await;
    assert_eq!(status, TaskStatus::Completed);
    let d = g.output_of(&id, "pay.policy").await.unwrap();
    assert_eq!(d["decision"], "gated_execute");
    assert_eq!(d["preapproval"]["task_id"], grant.as_str());
    assert_eq!(d["preapproval"]["granted_by"], "finance-controller");
    g.h.assert_replays(&id).await;
    g.h.assert_replays(&grant).await;
}

/// The inbox's rollback plan shows each compensation with its input rendered
/// as the plan will register it: catalog mappings (`${input.…}`) and a
/// plan's own `compensate` (`${steps.X.output…}`) resolved, an approver's
/// edit applied; never the catalog's template text.
async fn the_inbox_shows_compensations_as_they_will_run(b: Backend) {
    let g = gov::harness(b).await;
    // Catalog compensation: ledger.refund {account: ${input.account}, …}.
    let catalog = g.submit(payment_plan("acme", 5000)).await.unwrap();
    // A plan's own compensation, reading an earlier step's output.
    let own = g
        .submit(json!({"agent": AGENT, "reason": "pay the supplier",
            "steps": [
                {"id": "lookup", "tool": "test.echo", "input": {"refund_to": "acme-refunds"}},
                {"id": "pay", "tool": "ledger.charge", "input": {"account": "acme", "amount_cents": 5000},
                 "depends_on": ["lookup"],
                 "compensate": {"tool": "ledger.refund",
                    "input": {"account": "${steps.lookup.output.refund_to}", "amount_cents": "${input.amount_cents}"}}}]}))
        .await
        .unwrap();
    let inbox = |id: String| {
        let g = &g;
        async move {
            g.h.wait_for(&id, |s| s == TaskStatus::NeedsApproval).await;
            let history = g.h.engine.history(&id).await.unwrap();
            approvals::inbox_entries(&id, &history, None)
        }
    };
    let entries = inbox(catalog.clone()).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].id, format!("{catalog}:pay"));
    assert_eq!(
        entries[0].rollback_plan,
        vec![
            r#"pay: compensate with ledger.refund {"account":"acme","amount_cents":5000}"#,
            r#"mark: compensate with kv.delete {"key":"paying"}"#,
        ]
    );
    let entries = inbox(own.clone()).await;
    assert_eq!(
        entries[0].rollback_plan,
        vec![
            r#"pay: compensate with ledger.refund {"account":"acme-refunds","amount_cents":5000}"#
        ]
    );
    // The first of two approvers edits the amount: the refund follows it,
    // and is exactly the compensation the step registers once it runs.
    approve(
        &g,
        &catalog,
        "alice",
        json!({"decision": "approve", "edit": {"amount_cents": 4000}}),
    )
    .await
    .unwrap();
    let entries = inbox(catalog.clone()).await;
    let shown = &entries[0].rollback_plan[0];
    assert_eq!(
        shown,
        r#"pay: compensate with ledger.refund {"account":"acme","amount_cents":4000}"#
    );
    approve(&g, &catalog, "bob", json!({"decision": "approve"}))
        .await
        .unwrap();
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
        &format!(
            "pay: compensate with {} {}",
            registered.tool, registered.input
        )
    );
}

backend_tests!(
    quorum_needs_two_distinct_allowed_identities,
    a_rejection_rolls_back,
    an_edit_is_rechecked_against_policy,
    a_timeout_aborts_and_compensates,
    an_escalation_is_recorded_and_the_secondary_may_approve,
    a_preapproval_is_recorded_and_lets_gated_steps_run,
    the_inbox_shows_compensations_as_they_will_run,
);
