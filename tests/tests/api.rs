//! The HTTP API over a real socket, on SQLite and PostgreSQL: every endpoint,
//! every role's refusals, bad input, idempotent resubmission, the halt, the
//! event stream's resumption, 1,000 concurrent submissions, and the OpenAPI
//! document against the routes.

#[path = "support/api_server.rs"]
mod api_server;
#[path = "support/gov.rs"]
mod gov;

use api_server::{AGENT, body, deploy, start, start_with};

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use futures::StreamExt;
use mandate_api::ApiConfig;
use mandate_engine::EventPayload as E;
use mandate_tests::{Backend, backend_tests};
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

fn payment_plan(amount: i64) -> Value {
    json!({"agent": AGENT, "reason": "pay the supplier", "evidence": [{"kind": "invoice", "ref": "inv-1"}],
        "steps": [
            {"id": "mark", "tool": "kv.put", "input": {"key": "paying", "value": true}},
            {"id": "pay", "tool": "ledger.charge", "input": {"account": "acme", "amount_cents": amount},
             "depends_on": ["mark"]}]})
}

async fn submit_read_list_and_resubmit(b: Backend) {
    let api = start(b).await;
    let agent = api.token("agent", AGENT).await;
    let other = api.token("agent", "agent-other").await;

    // Idempotent resubmission: 201, then 200 with the same task.
    let first = api
        .req(Method::POST, "/v1/tasks", &agent)
        .header("Idempotency-Key", "deploy-42")
        .json(&deploy("v2"))
        .send()
        .await
        .unwrap();
    assert!(first.headers().contains_key("x-request-id"));
    let (s, t1) = body(first).await;
    assert_eq!(s, StatusCode::CREATED, "{t1}");
    assert_eq!(t1["agent"], AGENT);
    assert_eq!(t1["existing"], false);
    let (s, t2) = body(
        api.req(Method::POST, "/v1/tasks", &agent)
            .header("Idempotency-Key", "deploy-42")
            .json(&deploy("v2"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{t2}");
    assert_eq!(
        (t2["id"].clone(), t2["existing"].clone()),
        (t1["id"].clone(), json!(true))
    );
    // Keys are per caller: the same key from another agent is another task.
    let (s, t3) = body(
        api.req(Method::POST, "/v1/tasks", &other)
            .header("Idempotency-Key", "deploy-42")
            .json(&deploy("v3"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_ne!(t3["id"], t1["id"]);

    let id = t1["id"].as_str().unwrap().to_string();
    let done = api.wait_status(&id, &agent, &["completed"]).await;
    assert_eq!(done["workflow"], "deploy_with_rollback");

    // History: verified, hash-chained, in seq order.
    let (s, h) = api.get(&format!("/v1/tasks/{id}/history"), &agent).await;
    assert_eq!(s, StatusCode::OK);
    let events = h["events"].as_array().unwrap();
    assert_eq!(events[0]["type"], "TaskSubmitted");
    assert_eq!(events.last().unwrap()["type"], "TaskCompleted");
    for w in events.windows(2) {
        assert_eq!(w[1]["prev_hash"], w[0]["hash"]);
        assert_eq!(
            w[1]["seq"].as_i64().unwrap(),
            w[0]["seq"].as_i64().unwrap() + 1
        );
    }
    assert_eq!(events[0]["actor"], format!("agent:{AGENT}"));

    // Pages, newest first, through the cursor; filters.
    for v in ["v4", "v5", "v6"] {
        assert_eq!(
            api.post("/v1/tasks", &agent, deploy(v)).await.0,
            StatusCode::CREATED
        );
    }
    let mut seen = Vec::new();
    let mut path = "/v1/tasks?limit=2".to_string();
    loop {
        let (s, page) = api.get(&path, &agent).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        let tasks = page["tasks"].as_array().unwrap();
        assert!(tasks.len() <= 2);
        seen.extend(tasks.iter().map(|t| t["id"].as_str().unwrap().to_string()));
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/tasks?limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(
        seen.len(),
        4,
        "the agent's own 4 tasks, each once: {seen:?}"
    );
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 4);
    assert!(!seen.contains(&t3["id"].as_str().unwrap().to_string()));
    let (_, done_page) = api
        .get(
            "/v1/tasks?status=completed&workflow=deploy_with_rollback&since=2020-01-01T00:00:00Z",
            &agent,
        )
        .await;
    assert!(
        done_page["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == t1["id"])
    );
    let (_, none) = api.get("/v1/tasks?since=99999999999999", &agent).await;
    assert_eq!(none["tasks"], json!([]));
}

async fn roles_are_enforced(b: Backend) {
    let api = start(b).await;
    let agent = api.token("agent", AGENT).await;
    let other = api.token("agent", "agent-other").await;
    let approver = api.token("approver", "alice").await;
    let operator = api.token("operator", "ops").await;
    let auditor = api.token("auditor", "audit").await;
    let revoked = api.token("operator", "gone").await;
    assert!(
        api.g
            .h
            .engine
            .store()
            .revoke_token("gone", 1)
            .await
            .unwrap()
    );

    // 401s: none, malformed, unknown, revoked.
    let (s, e) = body(
        api.http
            .get(format!("{}/v1/tasks", api.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, e["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthenticated"))
    );
    assert!(e["request_id"].as_str().is_some_and(|r| !r.is_empty()));
    let (s, _) = body(
        api.http
            .get(format!("{}/v1/tasks", api.base))
            .header("Authorization", "Basic abc")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(
        api.get("/v1/tasks", "mdt_00").await.0,
        StatusCode::UNAUTHORIZED
    );
    let (s, e) = api.get("/v1/tasks", &revoked).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(e["message"].as_str().unwrap().contains("revoked"), "{e}");

    // Each token knows who it is.
    let (s, me) = api.get("/v1/whoami", &approver).await;
    assert_eq!(
        (s, me),
        (StatusCode::OK, json!({"name": "alice", "role": "approver"}))
    );

    // Who may submit.
    for t in [&approver, &auditor] {
        let (s, e) = api.post("/v1/tasks", t, deploy("v1")).await;
        assert_eq!(
            (s, e["code"].as_str()),
            (StatusCode::FORBIDDEN, Some("forbidden")),
            "{e}"
        );
    }
    let (s, e) = api
        .post("/v1/tasks", &agent, json!({"workflow": "deploy_with_rollback", "input": {"service": "web", "version": "v1"}, "agent": "agent-other"}))
        .await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "an agent submits only as itself: {e}"
    );
    let (s, t) = api
        .post("/v1/tasks", &operator, json!({"workflow": "deploy_with_rollback", "input": {"service": "web", "version": "v1"}, "agent": "agent-other"}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "operators may name the agent: {t}");
    assert_eq!(t["agent"], "agent-other");
    let theirs = t["id"].as_str().unwrap().to_string();
    let (_, mine) = api.post("/v1/tasks", &agent, deploy("v1")).await;
    let mine = mine["id"].as_str().unwrap().to_string();

    // An agent sees and acts on its own tasks only; others are not found.
    for path in [
        format!("/v1/tasks/{theirs}"),
        format!("/v1/tasks/{theirs}/history"),
    ] {
        let (s, e) = api.get(&path, &agent).await;
        assert_eq!(
            (s, e["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("not_found")),
            "{path}"
        );
    }
    for action in ["cancel", "pause", "resume", "retry", "signals/go"] {
        let (s, _) = api
            .post(&format!("/v1/tasks/{theirs}/{action}"), &agent, json!({}))
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "agent {action} on another's task");
    }
    assert_eq!(
        api.get("/v1/tasks?agent=agent-other", &agent).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api.get(&format!("/v1/tasks/{mine}"), &other).await.0,
        StatusCode::NOT_FOUND
    );
    // Readers read everything, change nothing.
    for t in [&approver, &auditor, &operator] {
        assert_eq!(
            api.get(&format!("/v1/tasks/{theirs}"), t).await.0,
            StatusCode::OK
        );
        assert_eq!(
            api.get(&format!("/v1/tasks/{mine}/history"), t).await.0,
            StatusCode::OK
        );
    }
    for t in [&approver, &auditor] {
        for action in ["cancel", "pause", "resume", "retry", "signals/go"] {
            let (s, _) = api
                .post(&format!("/v1/tasks/{mine}/{action}"), t, json!({}))
                .await;
            assert_eq!(s, StatusCode::FORBIDDEN, "{action}");
        }
        assert_eq!(
            api.post("/v1/halt", t, json!({})).await.0,
            StatusCode::FORBIDDEN
        );
    }
    assert_eq!(
        api.post("/v1/halt", &agent, json!({})).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(api.get("/v1/halt", &agent).await.0, StatusCode::FORBIDDEN);
    assert_eq!(api.get("/v1/halt", &auditor).await.0, StatusCode::OK);
    assert_eq!(
        api.get("/v1/approvals", &agent).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api.post("/v1/plans/dry-run", &auditor, payment_plan(10))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    for t in [&agent, &operator, &auditor] {
        let (s, _) = api
            .post(
                &format!("/v1/approvals/{mine}:pay"),
                t,
                json!({"decision": "approve"}),
            )
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "only approvers decide");
    }
    // Approval signals go through /v1/approvals only.
    let (s, e) = api
        .post(
            &format!("/v1/tasks/{mine}/signals/approval:pay"),
            &operator,
            json!({"payload": {"decision": "approve"}}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{e}");
    // Nothing the refusals touched was written.
    let h = api.g.h.engine.history(&theirs).await.unwrap();
    assert!(!h.iter().any(|e| matches!(
        e.payload,
        E::CancelRequested { .. } | E::TaskPaused { .. } | E::SignalReceived { .. }
    )));
}

async fn bad_input_is_refused_naming_the_field(b: Backend) {
    let api = start(b).await;
    let agent = api.token("agent", AGENT).await;
    let before = api.task_count().await;
    let raw = |body: &'static str| {
        api.req(Method::POST, "/v1/tasks", &agent)
            .header("content-type", "application/json")
            .body(body)
    };
    let (s, e) = body(raw("{\"workflow\": ").send().await.unwrap()).await;
    assert_eq!(
        (s, e["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("malformed_json")),
        "{e}"
    );
    let (s, e) = body(
        raw(r#"{"workflow": "deploy_with_rollback", "input": {}, "colour": 1}"#)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, e["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_field")),
        "{e}"
    );
    assert!(e["message"].as_str().unwrap().contains("colour"), "{e}");
    let (s, e) = body(
        raw(r#"{"workflow": ["x"], "input": {}}"#)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, e["details"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("workflow")),
        "{e}"
    );
    let (s, e) = api
        .post(
            "/v1/tasks",
            &agent,
            json!({"workflow": "nope", "input": {}}),
        )
        .await;
    assert_eq!(
        (s, e["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("unknown_workflow")),
        "{e}"
    );
    // A deploy input the workflow could only fail on is refused at the
    // door, naming the field.
    for (input, field) in [
        (json!({"service": "web"}), "field version: missing"),
        (
            json!({"service": 7, "version": "v1"}),
            "field service: must be a string",
        ),
        (
            json!({"service": "web", "version": " "}),
            "field version: must not be empty",
        ),
        (
            json!({"service": "web", "version": "v1", "expect_healthy": "yes"}),
            "field expect_healthy",
        ),
        (json!(["web", "v1"]), "must be a JSON object"),
    ] {
        for workflow in ["deploy_with_rollback", "gated_deploy"] {
            let (s, e) = api
                .post(
                    "/v1/tasks",
                    &agent,
                    json!({"workflow": workflow, "input": input}),
                )
                .await;
            assert_eq!(
                (s, e["code"].as_str()),
                (StatusCode::BAD_REQUEST, Some("invalid_input")),
                "{workflow} {input}: {e}"
            );
            assert!(
                e["message"].as_str().unwrap().contains(field),
                "{workflow} {input}: {e}"
            );
        }
    }
    let (s, e) = api
        .post(
            "/v1/tasks",
            &agent,
            json!({"workflow": "deploy_with_rollback", "input": {"service": "web", "version": "v1", "n": 9_007_199_254_740_993_u64}}),
        )
        .await;
    assert_eq!(
        (s, e["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_input")),
        "{e}"
    );
    let (s, e) = api.post("/v1/tasks", &agent, json!({"input": {}})).await;
    assert_eq!(
        (s, e["details"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("workflow")),
        "{e}"
    );
    // An invalid plan names the step.
    let mut plan = payment_plan(10);
    plan["steps"][1]["tool"] = json!("no.such.tool");
    let (s, e) = api.post("/v1/tasks", &agent, json!({"plan": plan})).await;
    assert_eq!(
        (s, e["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_plan")),
        "{e}"
    );
    assert!(
        e["message"].as_str().unwrap().contains("pay"),
        "names the step: {e}"
    );
    let (s, e) = api.post("/v1/plans/dry-run", &agent, plan).await;
    assert_eq!(
        (s, e["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_plan")),
        "{e}"
    );
    // Oversized body, wrong media type, bad header, bad query, unknown route.
    let big = format!(
        "{{\"workflow\": \"x\", \"input\": {{\"pad\": \"{}\"}}}}",
        "a".repeat(1_100_000)
    );
    let (s, e) = body(
        api.req(Method::POST, "/v1/tasks", &agent)
            .header("content-type", "application/json")
            .body(big)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, e["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large")),
        "{e}"
    );
    let (s, e) = body(
        api.req(Method::POST, "/v1/tasks", &agent)
            .header("content-type", "text/plain")
            .body(deploy("v1").to_string())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, e["code"].as_str()),
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Some("unsupported_media_type")
        )
    );
    let (s, e) = body(
        api.req(Method::POST, "/v1/tasks", &agent)
            .header("Idempotency-Key", "has spaces")
            .json(&deploy("v1"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, e["details"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("Idempotency-Key")),
        "{e}"
    );
    for q in [
        "status=sideways",
        "limit=0",
        "cursor=zzz",
        "since=yesterday",
        "colour=red",
    ] {
        let (s, e) = api.get(&format!("/v1/tasks?{q}"), &agent).await;
        assert_eq!(
            (s, e["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_query")),
            "{q}: {e}"
        );
    }
    let (s, e) = api.get("/v1/nothing", &agent).await;
    assert_eq!(
        (s, e["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (s, e) = body(
        api.req(Method::PUT, "/v1/tasks", &agent)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, e["code"].as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed"))
    );
    let (s, _) = api.get("/v1/tasks/no-such-task", &agent).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Nothing was created by any of it.
    assert_eq!(api.task_count().await, before);
}

async fn controls_signal_cancel_pause_resume_retry(b: Backend) {
    let api = start(b).await;
    let agent = api.token("agent", AGENT).await;
    let operator = api.token("operator", "ops").await;

    // A signal reaches a waiting workflow.
    let (_, t) = api
        .post("/v1/tasks", &agent, json!({"workflow": "saga", "input": {"stages": [[{"wait_signal": "go", "timeout_ms": 60000}]]}}))
        .await;
    let gated = t["id"].as_str().unwrap().to_string();
    api.wait_status(&gated, &agent, &["running"]).await;
    let (s, a) = api
        .post(
            &format!("/v1/tasks/{gated}/signals/go"),
            &agent,
            json!({"payload": {"ready": true}}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{a}");
    assert!(a["seq"].as_i64().unwrap() > 1);
    api.wait_status(&gated, &agent, &["completed"]).await;
    let (s, e) = api
        .post(&format!("/v1/tasks/{gated}/cancel"), &agent, json!({}))
        .await;
    assert_eq!(
        (s, e["code"].as_str()),
        (StatusCode::CONFLICT, Some("conflict")),
        "final: {e}"
    );

    // Pause (body optional), resume, cancel with rollback.
    let (_, t) = api
        .post("/v1/tasks", &agent, json!({"workflow": "gated_deploy", "input": {"service": "db", "version": "v2", "timeout_ms": 60000}}))
        .await;
    let id = t["id"].as_str().unwrap().to_string();
    api.wait_status(&id, &agent, &["needs_approval"]).await;
    let (s, _) = body(
        api.req(Method::POST, &format!("/v1/tasks/{id}/pause"), &operator)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    api.wait_status(&id, &agent, &["paused"]).await;
    assert_eq!(
        api.post(&format!("/v1/tasks/{id}/pause"), &agent, json!({}))
            .await
            .0,
        StatusCode::CONFLICT
    );
    assert_eq!(
        api.post(&format!("/v1/tasks/{id}/resume"), &agent, json!({}))
            .await
            .0,
        StatusCode::ACCEPTED
    );
    api.wait_status(&id, &agent, &["needs_approval"]).await;
    let (s, _) = api
        .post(
            &format!("/v1/tasks/{id}/cancel"),
            &operator,
            json!({"rollback": true, "reason": "wrong window"}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    api.wait_status(&id, &agent, &["cancelled"]).await;
    let h = api.g.h.engine.history(&id).await.unwrap();
    assert!(h.iter().any(|e| e.actor == "operator:ops"
        && matches!(e.payload, E::CancelRequested { rollback: true, .. })));

    // Retry: a step waiting out a 10-minute backoff runs now.
    let saga = json!({"workflow": "saga", "input": {"stages": [[{"tool": "test.fault", "input": {"mode": "fail_times", "times": 1},
        "retry": {"max_attempts": 3, "initial_backoff_ms": 600000}}]]}});
    let (_, t) = api.post("/v1/tasks", &agent, saga).await;
    let id = t["id"].as_str().unwrap().to_string();
    api.wait_status(&id, &agent, &["failed_retryable"]).await;
    let (s, r) = api
        .post(&format!("/v1/tasks/{id}/retry"), &agent, json!({}))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{r}");
    api.wait_status(&id, &agent, &["completed"]).await;
    let (s, e) = api
        .post(&format!("/v1/tasks/{id}/retry"), &agent, json!({}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    api.g.h.assert_replays(&id).await;
}

async fn approvals_inbox_and_decisions(b: Backend) {
    let api = start(b).await;
    let agent = api.token("agent", AGENT).await;
    let alice = api.token("approver", "alice").await;
    let bob = api.token("approver", "bob").await;
    let mallory = api.token("approver", "mallory").await;
    let auditor = api.token("auditor", "audit").await;

    let (s, t) = api
        .post("/v1/tasks", &agent, json!({"plan": payment_plan(5000)}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    let id = t["id"].as_str().unwrap().to_string();
    api.wait_status(&id, &agent, &["needs_approval"]).await;

    let (s, inbox) = api.get("/v1/approvals", &alice).await;
    assert_eq!(s, StatusCode::OK);
    let entry = &inbox["approvals"][0];
    let approval = entry["id"].as_str().unwrap().to_string();
    assert_eq!(approval, format!("{id}:{}", entry["request_seq"]));
    assert_eq!(entry["step"], "pay");
    assert_eq!(entry["quorum"], 2);
    assert!(
        entry["rollback_plan"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
    );
    assert_eq!(
        api.get("/v1/approvals", &mallory).await.1["approvals"],
        json!([]),
        "not mallory's"
    );
    assert_eq!(
        api.get("/v1/approvals", &auditor).await.1["approvals"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let (_, one) = api.get(&format!("/v1/approvals?task={id}"), &alice).await;
    assert_eq!(
        (
            one["approvals"][0]["id"].as_str(),
            one["truncated"].as_bool()
        ),
        (Some(approval.as_str()), Some(false))
    );
    assert_eq!(
        api.get("/v1/approvals?task=nope", &alice).await.0,
        StatusCode::NOT_FOUND
    );

    let path = format!("/v1/approvals/{approval}");
    let (s, e) = api
        .post(&path, &mallory, json!({"decision": "approve"}))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "not a named approver: {e}");
    let (s, e) = api.post(&path, &alice, json!({"decision": "maybe"})).await;
    assert_eq!(
        (s, e["details"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("decision"))
    );
    let (s, e) = api.post(&path, &alice, json!({"decision": "edit"})).await;
    assert_eq!(
        (s, e["details"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("edit"))
    );
    let (s, d) = api
        .post(
            &path,
            &alice,
            json!({"decision": "approve", "comment": "invoice checked"}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{d}");
    // Quorum 2 of distinct identities: alice again is refused.
    assert_eq!(
        api.post(&path, &alice, json!({"decision": "approve"}))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api.get("/v1/approvals", &alice).await.1["approvals"],
        json!([]),
        "alice has decided"
    );
    let (s, _) = api.post(&path, &bob, json!({"decision": "approve"})).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    api.wait_status(&id, &agent, &["completed"]).await;
    // A decision on a finished approval is a conflict.
    let (s, e) = api.post(&path, &bob, json!({"decision": "reject"})).await;
    assert_eq!(
        (s, e["code"].as_str()),
        (StatusCode::CONFLICT, Some("conflict")),
        "{e}"
    );
    assert_eq!(
        api.post(
            "/v1/approvals/nonsense",
            &bob,
            json!({"decision": "approve"})
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    // The decisions are recorded with the token's identity and comment.
    let h = api.g.h.engine.history(&id).await.unwrap();
    let decided: Vec<(&str, Value)> = h
        .iter()
        .filter_map(|e| match &e.payload {
            E::ApprovalDecided { comment, .. } => Some((e.actor.as_str(), json!(comment))),
            _ => None,
        })
        .collect();
    assert_eq!(
        decided,
        vec![
            ("approver:alice", json!("invoice checked")),
            ("approver:bob", Value::Null)
        ]
    );
    // Each decision is a time-to-intervention sample.
    let text = api
        .http
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("mandate_time_to_intervention_seconds_count{tool=\"ledger.charge\",decision=\"approve\"}"),
        "{text}"
    );

    // Reject rolls the task back; the dry run explains the gate.
    let (_, t) = api
        .post("/v1/tasks", &agent, json!({"plan": payment_plan(7000)}))
        .await;
    let id2 = t["id"].as_str().unwrap().to_string();
    api.wait_status(&id2, &agent, &["needs_approval"]).await;
    let (s, _) = api
        .post(
            &format!("/v1/approvals/{id2}:pay"),
            &bob,
            json!({"decision": "reject", "comment": "no"}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    api.wait_status(&id2, &agent, &["failed_terminal"]).await;
    let (s, report) = api
        .post("/v1/plans/dry-run", &alice, payment_plan(5000))
        .await;
    assert_eq!(s, StatusCode::OK, "{report}");
    let pay = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "pay")
        .unwrap();
    assert_eq!(pay["decision"], "gated_execute");
    assert!(
        pay["rules"]
            .to_string()
            .contains("org.payments.large-needs-two")
    );
}

async fn halt_stops_new_steps_until_lifted(b: Backend) {
    let api = start(b).await;
    let agent = api.token("agent", AGENT).await;
    let other = api.token("agent", "agent-other").await;
    let operator = api.token("operator", "ops").await;
    let two_stage = || {
        json!({"workflow": "saga", "input": {"stages": [
            [{"tool": "kv.put", "input": {"key": "a", "value": 1}}],
            [{"tool": "kv.put", "input": {"key": "b", "value": 2}}]]}})
    };

    let (s, halt) = api
        .post(
            "/v1/halt",
            &operator,
            json!({"agent": AGENT, "reason": "runaway agent"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{halt}");
    assert_eq!(halt["created_by"], "operator:ops");
    let (_, halts) = api.get("/v1/halt", &operator).await;
    assert_eq!(halts["halts"].as_array().unwrap().len(), 1);

    let (_, t) = api.post("/v1/tasks", &agent, two_stage()).await;
    let held = t["id"].as_str().unwrap().to_string();
    let (_, t) = api.post("/v1/tasks", &other, two_stage()).await;
    let free = t["id"].as_str().unwrap().to_string();
    api.wait_status(&free, &other, &["completed"]).await;
    api.wait_status(&held, &agent, &["paused"]).await;
    let h = api.g.h.engine.history(&held).await.unwrap();
    let halt_id = halt["id"].as_str().unwrap();
    assert!(
        h.iter().any(|e| e.actor == format!("halt:{halt_id}") && matches!(&e.payload, E::TaskPaused { reason: Some(r) } if r.contains("runaway agent"))),
        "the halt is recorded in the task's history"
    );
    assert!(
        !h.iter()
            .any(|e| matches!(e.payload, E::StepScheduled { .. })),
        "no step started"
    );

    // Lifting the global halt (there is none) changes nothing; lifting the agent's resumes.
    assert_eq!(
        body(
            api.req(Method::DELETE, "/v1/halt", &operator)
                .send()
                .await
                .unwrap()
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    let (s, lifted) = body(
        api.req(
            Method::DELETE,
            &format!("/v1/halt?agent={AGENT}"),
            &operator,
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{lifted}");
    assert_eq!(lifted["resumed"], json!([held]));
    assert_eq!(lifted["lifted"][0]["lifted_by"], "operator:ops");
    api.wait_status(&held, &agent, &["completed"]).await;
    api.g.h.assert_replays(&held).await;

    // A global halt stops everyone's next step; a task paused by hand stays paused after the lift.
    let (_, t) = api
        .post("/v1/tasks", &agent, json!({"workflow": "gated_deploy", "input": {"service": "x", "version": "v1", "timeout_ms": 60000}}))
        .await;
    let waiting = t["id"].as_str().unwrap().to_string();
    api.wait_status(&waiting, &agent, &["needs_approval"]).await;
    let (_, t) = api.post("/v1/tasks", &agent, two_stage()).await;
    let manual = t["id"].as_str().unwrap().to_string();
    api.wait_status(&manual, &agent, &["completed"]).await;
    assert_eq!(
        api.post("/v1/halt", &operator, json!({})).await.0,
        StatusCode::CREATED
    );
    let (_, t) = api.post("/v1/tasks", &other, two_stage()).await;
    let late = t["id"].as_str().unwrap().to_string();
    api.wait_status(&late, &other, &["paused"]).await;
    // The waiting task pauses when its approval wakes it, before any new step.
    let oncall = api.token("approver", "ops-oncall").await;
    let (s, d) = api
        .post(
            &format!("/v1/approvals/{waiting}:deploy"),
            &oncall,
            json!({"decision": "approve"}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{d}");
    api.wait_status(&waiting, &agent, &["paused"]).await;
    let (s, lifted) = body(
        api.req(Method::DELETE, "/v1/halt", &operator)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let resumed: BTreeSet<&str> = lifted["resumed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(resumed, BTreeSet::from([late.as_str(), waiting.as_str()]));
    api.wait_status(&late, &other, &["completed"]).await;
    api.wait_status(&waiting, &agent, &["completed"]).await;
    assert_eq!(api.get("/v1/halt", &operator).await.1["halts"], json!([]));
}

/// Reads SSE events from `response` until `n` arrived; returns (id, data).
async fn read_events(response: Response, n: usize) -> Vec<(i64, Value)> {
    let mut out = Vec::new();
    let mut buf = String::new();
    let mut stream = response.bytes_stream();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while out.len() < n {
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} events arrived", out.len()))
            .expect("stream ended")
            .unwrap();
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut id = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = v.parse::<i64>().ok();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            if let Some(id) = id {
                out.push((id, serde_json::from_str(&data).unwrap()));
            }
        }
    }
    out
}

async fn event_stream_resumes_without_loss_or_duplication(b: Backend) {
    let api = start(b).await;
    let agent = api.token("agent", AGENT).await;
    let other = api.token("agent", "agent-other").await;
    let auditor = api.token("auditor", "audit").await;
    let stream = |token: &str, last: Option<i64>| {
        let r = api.req(Method::GET, "/v1/events?from=0", token);
        match last {
            Some(l) => r.header("Last-Event-ID", l.to_string()),
            None => r,
        }
    };

    let mut ids = Vec::new();
    for v in ["v1", "v2", "v3"] {
        let (_, t) = api.post("/v1/tasks", &agent, deploy(v)).await;
        ids.push(t["id"].as_str().unwrap().to_string());
    }
    let (_, t) = api.post("/v1/tasks", &other, deploy("v9")).await;
    let others = t["id"].as_str().unwrap().to_string();
    for id in &ids {
        api.wait_status(id, &agent, &["completed"]).await;
    }
    api.wait_status(&others, &other, &["completed"]).await;
    let total: usize = {
        let mut n = 0;
        for id in ids.iter().chain([&others]) {
            n += api.g.h.engine.history(id).await.unwrap().len();
        }
        n
    };

    // The auditor sees every event; read part, disconnect, resume.
    let first = read_events(stream(&auditor, None).send().await.unwrap(), 5).await;
    let last = first.last().unwrap().0;
    // More events arrive while disconnected.
    let (_, t) = api.post("/v1/tasks", &agent, deploy("v4")).await;
    let late = t["id"].as_str().unwrap().to_string();
    api.wait_status(&late, &agent, &["completed"]).await;
    let late_n = api.g.h.engine.history(&late).await.unwrap().len();
    let rest = read_events(
        stream(&auditor, Some(last)).send().await.unwrap(),
        total + late_n - 5,
    )
    .await;
    let all: Vec<(i64, Value)> = first.into_iter().chain(rest).collect();
    let gseqs: Vec<i64> = all.iter().map(|(g, _)| *g).collect();
    assert_eq!(
        gseqs,
        (1..=(total + late_n) as i64).collect::<Vec<_>>(),
        "every event once, in order"
    );
    let pairs: HashSet<(String, i64)> = all
        .iter()
        .map(|(_, d)| {
            (
                d["task_id"].as_str().unwrap().to_string(),
                d["seq"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(pairs.len(), total + late_n);
    for (g, d) in &all {
        assert_eq!(d["gseq"].as_i64(), Some(*g));
    }

    // An agent's stream holds its own tasks' events only.
    let mine = read_events(
        stream(&agent, None).send().await.unwrap(),
        total + late_n - api.g.h.engine.history(&others).await.unwrap().len(),
    )
    .await;
    assert!(mine.iter().all(|(_, d)| d["agent"] == AGENT));
    // A stream of one task, and bad resume ids.
    let one = api.g.h.engine.history(&ids[0]).await.unwrap().len();
    let only = read_events(
        api.req(
            Method::GET,
            &format!("/v1/events?from=0&task={}", ids[0]),
            &auditor,
        )
        .send()
        .await
        .unwrap(),
        one,
    )
    .await;
    assert!(only.iter().all(|(_, d)| d["task_id"] == ids[0].as_str()));
    let (s, _) = body(
        stream(&auditor, None)
            .header("Last-Event-ID", "yesterday")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = body(
        api.req(Method::GET, &format!("/v1/events?task={others}"), &agent)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "not the agent's task");
}

async fn a_thousand_concurrent_submissions_complete(b: Backend) {
    let api = start(b).await;
    let operator = api.token("operator", "ops").await;
    let agents: Vec<String> = {
        let mut v = Vec::new();
        for i in 0..4 {
            v.push(api.token("agent", &format!("agent-{i}")).await);
        }
        v
    };
    let saga = json!({"workflow": "saga", "input": {"stages": [[{"tool": "test.echo", "input": {"n": 1}}], [{"tool": "test.echo", "input": {"n": 2}}]]}});
    let submissions = futures::stream::iter(0..1000)
        .map(|i| {
            let req = api
                .req(Method::POST, "/v1/tasks", &agents[i % agents.len()])
                .json(&saga);
            async move {
                let (s, t) = body(req.send().await.unwrap()).await;
                assert_eq!(s, StatusCode::CREATED, "{t}");
                t["id"].as_str().unwrap().to_string()
            }
        })
        .buffer_unordered(200)
        .collect::<Vec<String>>()
        .await;
    assert_eq!(submissions.iter().collect::<HashSet<_>>().len(), 1000);
    for id in &submissions {
        let row = api
            .g
            .h
            .engine
            .wait_until_final(id, Duration::from_secs(120))
            .await
            .unwrap();
        assert_eq!(row.status.as_str(), "completed", "{id}");
    }
    let (_, page) = api
        .get("/v1/tasks?status=completed&limit=500", &operator)
        .await;
    assert_eq!(page["tasks"].as_array().unwrap().len(), 500);
}

async fn rate_limits_answer_429(b: Backend) {
    let api = start_with(
        b,
        ApiConfig {
            rate_per_second: 1,
            rate_burst: 3,
            ..Default::default()
        },
    )
    .await;
    let t = api.token("auditor", "audit").await;
    let u = api.token("auditor", "audit2").await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(api.get("/v1/tasks", &t).await.0);
    }
    assert_eq!(&statuses[..3], &[StatusCode::OK; 3]);
    let r = api.req(Method::GET, "/v1/tasks", &t).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().get("retry-after").is_some());
    let (_, e) = body(r).await;
    assert_eq!(e["code"], "rate_limited");
    assert_eq!(
        api.get("/v1/tasks", &u).await.0,
        StatusCode::OK,
        "limits are per token"
    );
}

async fn openapi_lists_every_route_and_metrics_health_answer(b: Backend) {
    let api = start(b).await;
    let operator = api.token("operator", "ops").await;
    let (s, doc) = body(
        api.http
            .get(format!("{}/openapi.json", api.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    let expected = [
        ("post", "/v1/tasks"),
        ("get", "/v1/tasks"),
        ("get", "/v1/tasks/{id}"),
        ("get", "/v1/tasks/{id}/history"),
        ("post", "/v1/tasks/{id}/signals/{name}"),
        ("post", "/v1/tasks/{id}/cancel"),
        ("post", "/v1/tasks/{id}/pause"),
        ("post", "/v1/tasks/{id}/resume"),
        ("post", "/v1/tasks/{id}/retry"),
        ("get", "/v1/approvals"),
        ("post", "/v1/approvals/{id}"),
        ("post", "/v1/preapprovals"),
        ("get", "/v1/preapprovals"),
        ("delete", "/v1/preapprovals/{id}"),
        ("post", "/v1/halt"),
        ("delete", "/v1/halt"),
        ("get", "/v1/halt"),
        ("post", "/v1/plans/dry-run"),
        ("get", "/v1/whoami"),
        ("get", "/v1/events"),
        ("get", "/v1/checkpoints/latest"),
        ("get", "/v1/tasks/{id}/receipts"),
        ("get", "/metrics"),
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("post", "/v1/notifications/{id}/respond"),
        ("get", "/v1/links/{token}"),
        ("post", "/v1/slack/interactions"),
        ("post", "/v1/tasks/{id}/resolve"),
        ("post", "/v1/actions"),
    ];
    for (m, p) in expected {
        assert!(
            paths.get(p).and_then(|o| o.get(m)).is_some(),
            "{m} {p} is not in the OpenAPI document"
        );
    }
    // Every documented operation is a live route (not the 404/405 fallback).
    let mut count = 0;
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            count += 1;
            let mut url = path.replace("{id}", "nope").replace("{name}", "go");
            if url == "/v1/events" {
                // A task that does not exist: answered at once, not streamed.
                url.push_str("?task=nope");
            }
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = api.req(m, &url, &operator);
            let (s, e) = body(r.send().await.unwrap()).await;
            let fallback = s == StatusCode::METHOD_NOT_ALLOWED
                || (s == StatusCode::NOT_FOUND
                    && e["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("no such route")));
            assert!(
                !fallback,
                "{method} {path} is documented but not routed: {s} {e}"
            );
        }
    }
    assert_eq!(
        count,
        expected.len(),
        "the document has exactly the expected operations"
    );
    let (s, _) = body(
        api.http
            .get(format!("{}/docs", api.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);

    assert_eq!(
        api.http
            .get(format!("{}/healthz", api.base))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        api.http
            .get(format!("{}/readyz", api.base))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let (_, t) = api.post("/v1/tasks", &operator, deploy("v1")).await;
    api.wait_status(t["id"].as_str().unwrap(), &operator, &["completed"])
        .await;
    let text = api
        .http
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "mandate_tasks{status=\"completed\"} ",
        "mandate_queue_depth ",
        "mandate_approvals_pending ",
        "mandate_step_attempt_duration_seconds_bucket",
        "mandate_http_requests_total",
    ] {
        assert!(text.contains(needle), "/metrics lacks {needle}:\n{text}");
    }
}

async fn open_streams_are_limited(b: Backend) {
    let api = start_with(
        b,
        ApiConfig {
            rate_per_second: 1_000,
            rate_burst: 1_000,
            max_streams: 2,
            ..Default::default()
        },
    )
    .await;
    let t = api.token("auditor", "audit").await;
    let open = |_: ()| api.req(Method::GET, "/v1/events", &t).send();
    let a = open(()).await.unwrap();
    let b2 = open(()).await.unwrap();
    assert_eq!((a.status(), b2.status()), (StatusCode::OK, StatusCode::OK));
    let (s, e) = body(open(()).await.unwrap()).await;
    assert_eq!(
        (s, e["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable")),
        "{e}"
    );
    // Closing one frees its place (the server notices within its poll).
    drop(a);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut updates = api.g.h.engine.subscribe();
    loop {
        let r = open(()).await.unwrap();
        if r.status() == StatusCode::OK {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a closed stream's place was never freed"
        );
        let _ = tokio::time::timeout(Duration::from_millis(100), updates.recv()).await;
    }
}

/// A history read a page at a time: every event exactly once, in order,
/// the chain verifying across the pages on the client; bad paging refused.
async fn history_pages_return_every_event_once(b: Backend) {
    let api = start(b).await;
    let agent = api.token("agent", AGENT).await;
    let (s, t) = api.post("/v1/tasks", &agent, deploy("v1")).await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    let id = t["id"].as_str().unwrap().to_string();
    api.wait_status(&id, &agent, &["completed"]).await;
    let whole = api.g.h.engine.history(&id).await.unwrap();
    assert!(whole.len() > 7, "{} events", whole.len());

    let mut verifier = mandate_engine::core::chain::Verifier::new(&id);
    let mut seqs = Vec::new();
    let mut after = 0;
    let mut pages = 0;
    loop {
        let (s, page) = api
            .get(
                &format!("/v1/tasks/{id}/history?after_seq={after}&limit=3"),
                &agent,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{page}");
        pages += 1;
        let events = page["events"].as_array().unwrap();
        assert!(!events.is_empty() && events.len() <= 3, "{page}");
        for e in events {
            let raw = mandate_engine::core::chain::RawEvent {
                task_id: id.clone(),
                seq: e["seq"].as_i64().unwrap(),
                event_type: e["type"].as_str().unwrap().to_string(),
                recorded_at_ms: e["recorded_at_ms"].as_i64().unwrap(),
                actor: e["actor"].as_str().unwrap().to_string(),
                payload: e["payload"].clone(),
                prev_hash: e["prev_hash"].as_str().unwrap().to_string(),
                hash: e["hash"].as_str().unwrap().to_string(),
            };
            verifier
                .push(&raw)
                .expect("the chain verifies across pages");
            seqs.push(raw.seq);
        }
        match page["next_after_seq"].as_i64() {
            Some(next) => {
                assert_eq!(Some(next), seqs.last().copied());
                after = next;
            }
            None => break,
        }
    }
    let want: Vec<i64> = (1..=whole.len() as i64).collect();
    assert_eq!(seqs, want, "every event exactly once, in order");
    assert_eq!(pages, whole.len().div_ceil(3));
    assert_eq!(verifier.head(), whole.last().unwrap().hash);

    // Without parameters: one page, the whole (short) history.
    let (_, all) = api.get(&format!("/v1/tasks/{id}/history"), &agent).await;
    assert_eq!(all["events"].as_array().unwrap().len(), whole.len());
    assert_eq!(all["next_after_seq"], Value::Null);

    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("after_seq=-1", "after_seq"),
        ("after_seq=100000", "after_seq"),
        ("page=2", "page"),
    ] {
        let (s, e) = api
            .get(&format!("/v1/tasks/{id}/history?{query}"), &agent)
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{query}: {e}");
        assert!(e.to_string().contains(field), "{query}: {e}");
    }
}

backend_tests!(
    history_pages_return_every_event_once,
    open_streams_are_limited,
    submit_read_list_and_resubmit,
    roles_are_enforced,
    bad_input_is_refused_naming_the_field,
    controls_signal_cancel_pause_resume_retry,
    approvals_inbox_and_decisions,
    halt_stops_new_steps_until_lifted,
    event_stream_resumes_without_loss_or_duplication,
    a_thousand_concurrent_submissions_complete,
    rate_limits_answer_429,
    openapi_lists_every_route_and_metrics_health_answer,
);
