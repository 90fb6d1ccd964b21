//! The policy gate: the gateway's recorded decision before every plan step,
//! with the decision, the deciding rules and the policy set's hash in the
//! history; deny rolls back (or escalates past an irreversible step); the
//! hierarchy only restricts; CRUDLEX and autonomy; reload without restart;
//! replay unaffected by later policy changes.

#[path = "support/gov.rs"]
mod gov;

use mandate_activities::Governance;
use mandate_activities::policy::{CheckRequest, InterventionPath, PolicySet};
use mandate_engine::{EventPayload as E, TaskStatus};
use mandate_tests::{Backend, backend_tests};
use serde_json::json;

fn request(agent: &str, tool: &str, input: serde_json::Value, user: Option<&str>) -> CheckRequest {
    CheckRequest {
        step: "s".into(),
        tool: tool.into(),
        input,
        agent: agent.into(),
        on_behalf_of: user.map(str::to_string),
        environment: None,
        now_ms: 0,
    }
}

fn test_set() -> PolicySet {
    let dir = tempfile::tempdir().unwrap();
    gov::write_policies(dir.path());
    PolicySet::load_dir(dir.path()).unwrap()
}

#[test]
fn autonomy_levels_crudlex_and_thresholds_decide() {
    let set = test_set();
    let d = |agent, tool, input, user| set.evaluate(&request(agent, tool, input, user));
    let kv = json!({"key": "k", "value": 1});
    // L0 observe-only: writes are denied by the org rule.
    let r = d("agent-observer", "kv.put", kv.clone(), None);
    assert_eq!(r.decision, InterventionPath::Deny);
    assert!(
        r.decided_by
            .iter()
            .any(|x| x.id == "crudlex.agent" || x.id == "org.autonomy.l0-observe-only"),
        "{r:?}"
    );
    // L1 suggest-only: writes are gated.
    let r = d("agent-assistant", "kv.put", kv.clone(), None);
    assert_eq!(r.decision, InterventionPath::GatedExecute, "{r:?}");
    assert_eq!(r.decided_by[0].id, "org.autonomy.l1-suggest-only");
    // L2: reversible writes run monitored; reads auto.
    assert_eq!(
        d("agent-deployer-7", "kv.put", kv.clone(), None).decision,
        InterventionPath::MonitoredExecute
    );
    assert_eq!(
        d("agent-deployer-7", "test.echo", json!({}), None).decision,
        InterventionPath::AutoExecute
    );
    // Irreversible below L4: gated; at L4: monitored.
    let mail = json!({"to": "a@b", "subject": "x"});
    assert_eq!(
        d("agent-operator", "email.send", mail.clone(), None).decision,
        InterventionPath::GatedExecute
    );
    assert_eq!(
        d("agent-autonomous", "email.send", mail, None).decision,
        InterventionPath::MonitoredExecute
    );
    // CRUDLEX: the agent's NO-DELETE forbids delete; a READONLY user forbids writes.
    let r = d("agent-deployer-7", "kv.delete", json!({"key": "k"}), None);
    assert_eq!(
        (r.decision, r.decided_by[0].id.as_str()),
        (InterventionPath::Deny, "crudlex.agent")
    );
    let r = d("agent-deployer-7", "kv.put", kv, Some("user-viewer"));
    assert_eq!(
        (r.decision, r.decided_by[0].id.as_str()),
        (InterventionPath::Deny, "crudlex.user")
    );
    assert!(r.decided_by[0].message.contains("RL"), "{r:?}");
    // Thresholds: gated with quorum 2 above 1000; forbidden above 1,000,000.
    let r = d(
        "agent-deployer-7",
        "ledger.charge",
        json!({"account": "a", "amount_cents": 5000}),
        None,
    );
    assert_eq!(r.decision, InterventionPath::GatedExecute);
    let a = r.approval.unwrap();
    assert_eq!(a.quorum, 2);
    assert!(
        a.approvers.contains(&"alice".to_string())
            && a.approvers.contains(&"finance-controller".to_string())
    );
    let r = d(
        "agent-deployer-7",
        "ledger.charge",
        json!({"account": "a", "amount_cents": 5_000_000}),
        None,
    );
    assert_eq!(r.decision, InterventionPath::Deny);
    assert_eq!(r.decided_by[0].id, "org.payments.huge-forbidden");
    assert_eq!(
        r.decided_by[0].message,
        "payments above 1000000 are never made by agents"
    );
}

#[test]
fn a_widening_permit_below_org_is_refused_naming_file_and_rule() {
    let dir = tempfile::tempdir().unwrap();
    gov::write_policies(dir.path());
    std::fs::create_dir_all(dir.path().join("team/platform")).unwrap();
    std::fs::write(
        dir.path().join("team/platform/widen.cedar"),
        "@id(\"team.platform.everything\")\npermit(principal, action, resource);\n",
    )
    .unwrap();
    let e = PolicySet::load_dir(dir.path()).unwrap_err().to_string();
    assert!(e.contains("team/platform/widen.cedar"), "{e}");
    assert!(e.contains("team.platform.everything"), "{e}");
    assert!(e.contains("widen"), "{e}");
    // A restriction at team level is fine and applies to the team's agents only.
    std::fs::write(
        dir.path().join("team/platform/widen.cedar"),
        "@id(\"team.platform.no-flags\")\n@message(\"platform may not flip flags\")\nforbid(principal, action == Action::\"flag.set\", resource);\n",
    )
    .unwrap();
    let set = PolicySet::load_dir(dir.path()).unwrap();
    let r = set.evaluate(&request(
        "agent-deployer-7",
        "flag.set",
        json!({"flag": "f", "value": 1}),
        None,
    ));
    assert_eq!(r.decision, InterventionPath::Deny);
    assert_eq!(r.decided_by[0].id, "team.platform.no-flags");
    assert_eq!(r.decided_by[0].level, "team platform");
}

#[test]
fn a_bad_policy_file_is_refused_and_the_old_set_stays() {
    let dir = tempfile::tempdir().unwrap();
    gov::write_policies(dir.path());
    let g = Governance::load_dir(dir.path())
        .unwrap()
        .with_reload_interval(std::time::Duration::ZERO);
    let before = g.current().hash.clone();
    std::fs::write(
        dir.path().join("org/broken.cedar"),
        "permit(principal, action, resource) when {",
    )
    .unwrap();
    let e = g.reload().unwrap_err().to_string();
    assert!(
        e.contains("org/broken.cedar") && e.contains("does not parse as Cedar"),
        "{e}"
    );
    assert_eq!(g.current().hash, before, "the old set stays in force");
    g.reload_if_changed();
    assert_eq!(g.current().hash, before);
    assert!(g.last_reload_error().is_some());
}

async fn decisions_and_rules_are_recorded_in_the_history(b: Backend) {
    let g = gov::harness(b).await;
    let (id, status) = g
        .run(gov::one_step(
            "agent-observer",
            "kv.put",
            json!({"key": "k", "value": 1}),
        ))
        .await;
    assert_eq!(status, TaskStatus::FailedTerminal);
    let decision = g
        .decision_of(&id, "only")
        .await
        .expect("the gateway's decision is recorded");
    assert_eq!(decision["path"], "deny");
    assert_eq!(
        decision["policy_hash"],
        g.governance.current().hash.as_str()
    );
    assert!(decision["decided_by"][0]["id"].is_string(), "{decision}");
    assert!(
        decision["decided_by"][0]["message"].is_string(),
        "{decision}"
    );
    assert!(
        g.scheduled(&id).await.is_empty(),
        "a denied step never runs"
    );
    let history = g.h.engine.history(&id).await.unwrap();
    let failed = history.iter().find_map(|e| match &e.payload {
        E::WorkflowFailed { error } => Some(error.clone()),
        _ => None,
    });
    assert!(failed.unwrap().contains("denied by policy"));
    g.h.assert_replays(&id).await;
}

async fn deny_after_an_irreversible_step_escalates(b: Backend) {
    let g = gov::harness(b).await;
    std::fs::create_dir_all(g.dir.path().join("agent/agent-autonomous")).unwrap();
    std::fs::write(
        g.dir.path().join("agent/agent-autonomous/limits.cedar"),
        "@id(\"agent.autonomous.no-kv\")\n@message(\"this agent may not write keys\")\nforbid(principal, action == Action::\"kv.put\", resource);\n",
    )
    .unwrap();
    let (id, status) = g
        .run(json!({"agent": "agent-autonomous", "steps": [
            {"id": "mail", "tool": "email.send", "input": {"to": "ops@example.com", "subject": "hi"}},
            {"id": "mark", "tool": "kv.put", "input": {"key": "k", "value": 1}, "depends_on": ["mail"]}]}))
        .await;
    assert_eq!(status, TaskStatus::EscalatedToHuman);
    let d = g.decision_of(&id, "mark").await.unwrap();
    assert_eq!(d["decided_by"][0]["id"], "agent.autonomous.no-kv");
    g.h.assert_replays(&id).await;
}

async fn policies_reload_and_replay_keeps_the_recorded_decision(b: Backend) {
    let g = gov::harness(b).await;
    let doc = gov::one_step(
        "agent-deployer-7",
        "flag.set",
        json!({"flag": "f", "value": true}),
    );
    let (first, status) = g.run(doc.clone()).await;
    assert_eq!(status, TaskStatus::Completed);
    let recorded = g.decision_of(&first, "only").await.unwrap();
    assert_eq!(recorded["path"], "monitored_execute");
    // New rule, no restart: the next task is denied by it.
    std::fs::write(
        g.dir.path().join("org/freeze.cedar"),
        "@id(\"org.freeze\")\n@message(\"change freeze\")\nforbid(principal, action == Action::\"flag.set\", resource);\n",
    )
    .unwrap();
    let (second, status) = g.run(doc).await;
    assert_eq!(status, TaskStatus::FailedTerminal);
    let d = g.decision_of(&second, "only").await.unwrap();
    assert_eq!(d["decided_by"][0]["id"], "org.freeze");
    assert_ne!(d["policy_hash"], recorded["policy_hash"]);
    // The first task still replays, with its recorded decision.
    g.h.assert_replays(&first).await;
    assert_eq!(g.decision_of(&first, "only").await.unwrap(), recorded);
}

backend_tests!(
    decisions_and_rules_are_recorded_in_the_history,
    deny_after_an_irreversible_step_escalates,
    policies_reload_and_replay_keeps_the_recorded_decision,
);
