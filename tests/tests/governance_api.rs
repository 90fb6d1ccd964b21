//! Issue 10's cases as a user meets them, over the HTTP API on SQLite and
//! PostgreSQL: an agent token cannot run ungoverned writes through another
//! workflow, cannot name another agent inside a plan's input, cannot grant
//! itself a pre-approval, cannot approve its own step through a signal or
//! the approvals route, and a requester that is not a catalog user is
//! refused at the door. Approvals and pre-approvals are decided as the
//! token's identity.

#[path = "support/api_server.rs"]
mod api_server;
#[path = "support/gov.rs"]
mod gov;

use api_server::{AGENT, start};
use mandate_tests::{Backend, backend_tests};
use reqwest::{Method, StatusCode};
use serde_json::json;

/// Case 1: a saga from an L0 observer's token runs no write.
async fn an_observer_token_runs_no_write_through_a_saga(b: Backend) {
    let api = start(b).await;
    let observer = api.token("agent", "agent-observer").await;
    let (s, t) = api
        .post("/v1/tasks", &observer, json!({"workflow": "saga", "input": {"stages": [[
            {"name": "charge", "tool": "ledger.charge", "input": {"account": "acme", "amount_cents": 900_000_000}},
            {"name": "mail", "tool": "email.send", "input": {"to": "all@example.com", "subject": "hi"}}]]}}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    let id = t["id"].as_str().unwrap().to_string();
    let done = api.wait_status(&id, &observer, &["failed_terminal"]).await;
    assert_eq!(done["agent"], "agent-observer");
    let (_, h) = api.get(&format!("/v1/tasks/{id}/history"), &observer).await;
    let text = h.to_string();
    assert!(
        text.contains("PolicyEvaluated") && text.contains("StepDenied"),
        "{text}"
    );
    assert!(text.contains("\"path\":\"deny\""), "{text}");
    assert!(
        !text.contains("\"StepScheduled\""),
        "nothing was scheduled: {text}"
    );
    assert_eq!(api.g.h.world.get("ledger", "acme").await.unwrap(), None);
}

/// Case 2: the plan's input cannot name another agent than the token's.
async fn a_plan_input_cannot_name_another_agent(b: Backend) {
    let api = start(b).await;
    let assistant = api.token("agent", "agent-assistant").await;
    let before = api.task_count().await;
    let plan = gov::one_step(
        "agent-autonomous",
        "ledger.charge",
        json!({"account": "acme", "amount_cents": 5}),
    );
    let (s, e) = api
        .post(
            "/v1/tasks",
            &assistant,
            json!({"workflow": "plan", "input": plan}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{e}");
    assert_eq!(e["details"]["field"], "input.agent", "{e}");
    // The plan form says the same.
    let (s, e) = api
        .post("/v1/tasks", &assistant, json!({"plan": plan}))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{e}");
    assert_eq!(api.task_count().await, before, "nothing was written");
}

/// Cases 3 and 4: an agent grants itself nothing and approves nothing.
async fn an_agent_neither_preapproves_nor_approves_its_own_step(b: Backend) {
    let api = start(b).await;
    let agent = api.token("agent", AGENT).await;
    let (s, e) = api
        .post("/v1/tasks", &agent, json!({"workflow": "preapproval", "input": {"tool": "email.send", "agent": AGENT, "duration_ms": 3_600_000, "granted_by": "team-comms"}}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    let (s, e) = api
        .post(
            "/v1/preapprovals",
            &agent,
            json!({"tool": "email.send", "agent": AGENT, "duration_ms": 60_000}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{e}");
    // An approver that does not own the tool may not pre-approve it either.
    let mallory = api.token("approver", "mallory").await;
    let (s, e) = api
        .post(
            "/v1/preapprovals",
            &mallory,
            json!({"tool": "email.send", "agent": AGENT, "duration_ms": 60_000}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("does not own email.send"),
        "{e}"
    );
    // gated_deploy: the submitting agent's signal cannot approve it.
    let (s, t) = api
        .post(
            "/v1/tasks",
            &agent,
            json!({"workflow": "gated_deploy", "input": {"service": "web", "version": "v2"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    let id = t["id"].as_str().unwrap().to_string();
    api.wait_status(&id, &agent, &["needs_approval"]).await;
    let (s, e) = api
        .post(
            &format!("/v1/tasks/{id}/signals/approve"),
            &agent,
            json!({"payload": {"approved": true}}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    let (s, _) = api
        .post(
            &format!("/v1/approvals/{id}:deploy"),
            &agent,
            json!({"decision": "approve"}),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "an agent token may not decide approvals"
    );
    // A named approver may: its inbox shows the request, and the decision is its own.
    let oncall = api.token("approver", "ops-oncall").await;
    let (s, inbox) = api.get("/v1/approvals", &oncall).await;
    assert_eq!(s, StatusCode::OK);
    let entry = inbox["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["task_id"] == id.as_str())
        .unwrap_or_else(|| panic!("{inbox}"))
        .clone();
    let (s, d) = api
        .post(
            &format!("/v1/approvals/{}", entry["id"].as_str().unwrap()),
            &oncall,
            json!({"decision": "approve", "comment": "change window open"}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{d}");
    let done = api.wait_status(&id, &agent, &["completed"]).await;
    assert_eq!(done["status"], "completed");
    let (_, h) = api.get(&format!("/v1/tasks/{id}/history"), &oncall).await;
    assert!(h.to_string().contains("approver:ops-oncall"), "{h}");
    // Pre-approvals through their own API, by an owner of the tool.
    let comms = api.token("approver", "team-comms").await;
    let (s, p) = api
        .post("/v1/preapprovals", &comms, json!({"tool": "email.send", "agent": AGENT, "duration_ms": 60_000, "reason": "newsletter"}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    assert_eq!(p["granted_by"], "team-comms");
    let (s, list) = api.get("/v1/preapprovals", &comms).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["preapprovals"].as_array().unwrap().len(), 1);
    let pid = p["id"].as_str().unwrap();
    let r = api
        .req(Method::DELETE, &format!("/v1/preapprovals/{pid}"), &comms)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (_, list) = api.get("/v1/preapprovals", &comms).await;
    assert!(list["preapprovals"].as_array().unwrap().is_empty());
}

/// Case 6: `on_behalf_of` must be a catalog user.
async fn a_requester_outside_the_catalog_is_refused(b: Backend) {
    let api = start(b).await;
    let agent = api.token("agent", AGENT).await;
    let mut plan = gov::one_step(
        AGENT,
        "ledger.charge",
        json!({"account": "acme", "amount_cents": 5}),
    );
    plan["on_behalf_of"] = json!("cfo");
    let (s, e) = api.post("/v1/tasks", &agent, json!({"plan": plan})).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{e}");
    assert_eq!(e["details"]["field"], "on_behalf_of", "{e}");
}

backend_tests!(
    an_observer_token_runs_no_write_through_a_saga,
    a_plan_input_cannot_name_another_agent,
    an_agent_neither_preapproves_nor_approves_its_own_step,
    a_requester_outside_the_catalog_is_refused,
);
