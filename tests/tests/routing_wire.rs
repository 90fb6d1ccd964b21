//! Routing wired into the engine (issue 15), on both stores, with real
//! receivers on loopback: a monitored step notifies exactly the owners the
//! map names (each notification verified by its HMAC and counted once per
//! id) and is not delayed by a receiver that hangs; an escalation chain
//! reaches its next step on an injected clock and a signed link's
//! acknowledgement stops it; links refuse a second use, another recipient
//! and expiry; a gated step's approver gets a Slack payload and a correctly
//! signed Slack callback approves as that approver, a wrongly signed one
//! records nothing.

#[path = "support/gov.rs"]
mod gov;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use futures::FutureExt;
use futures::future::BoxFuture;
use mandate_activities::{Governance, World};
use mandate_engine::core::gateway::Gateway;
use mandate_engine::core::routing::Routed;
use mandate_engine::{
    EventPayload as E, Limits, StepOptions, SubmitOptions, TaskStatus, Tool, ToolContext, ToolKind,
    ToolResult, Workflow, WorkflowContext, WorkflowError,
};
use mandate_routing::links::LinkError;
use mandate_routing::outbox::Outbox;
use mandate_routing::wire::{
    EngineRouter, FollowerParts, LinkSettings, RespondError, Responder, percent_encode,
};
use mandate_routing::worker::{Clock, DeliveryWorker, WorkerConfig};
use mandate_routing::{ConfigCell, RoutingConfig, sign};
use mandate_tests::{Backend, Harness, TestDb, backend_tests};
use serde_json::{Value, json};
use tokio::sync::watch;

const AGENT: &str = "agent-deployer-7";
const HOOK_SECRET: &str = "receiver-secret-0123456789";
const SLACK_SIGNING_SECRET: &[u8] = b"slack-signing-secret-0123";
const LINK_SECRET: &[u8] = b"link-secret-0123456789abcdef";

/// One approver for account `one`, so a small charge there is gated on alice.
const ONE_APPROVER_RULE: &str = r#"
@id("test.routing.one-approver")
@message("account one: alice approves")
@role("gate")
@path("gated_execute")
@approvers("alice")
permit(principal, action == Action::"ledger.charge", resource == Scope::"one");
"#;

fn owners_yaml(base: &str) -> String {
    format!(
        "version: 1
sinks:
  - {{id: hook, kind: webhook, url: '{base}/hook', secret: '{HOOK_SECRET}'}}
  - {{id: slack, kind: slack, url: '{base}/slack'}}
people:
  - {{id: alice, contacts: [{{sink: slack, to: '@alice'}}]}}
  - {{id: pat, contacts: [{{sink: hook}}]}}
  - {{id: quinn, contacts: [{{sink: hook}}]}}
channels:
  - {{id: team-platform, contacts: [{{sink: hook}}]}}
chains:
  - {{id: platform-chain, repeat: 2, steps: [{{notify: pat, wait_minutes: 5}}, {{notify: quinn, wait_minutes: 5}}]}}
ownership:
  - {{tool: 'kv.*', owners: [team-platform, platform-chain]}}
  - {{tool: 'archive.*', owners: [team-platform]}}
routes:
  notify: [owners]
  group_wait_seconds: 0
  rules:
    - {{id: quiet-reads, match: {{path: [auto_execute]}}, notify: []}}
    - {{id: gated-approvers, match: {{path: [gated_execute]}}, notify: [approvers]}}
    - {{id: bursts, match: {{agent: 'agent-operator'}}, group_by: [agent], group_wait_seconds: 60}}
    - {{id: probe-restarts, match: {{tool: 'probe.restart'}}, notify: [team-platform], playbook: health-check}}
    - {{id: probe-broken, match: {{tool: 'probe.broken'}}, notify: [], playbook: broken}}
playbooks:
  - {{id: health-check, workflow: health_check, input: {{service: checkout}}}}
  - {{id: broken, workflow: no_such_workflow}}
"
    )
}

#[derive(Clone, Debug)]
struct Received {
    path: String,
    id: String,
    body: Value,
}

/// A receiver on loopback: webhook requests must carry a valid HMAC
/// signature (checked at the injected time); requests wait while `hold` is
/// true (a slow receiver).
struct Receiver {
    base: String,
    got: Arc<Mutex<Vec<Received>>>,
    /// Notified on every delivery received.
    arrived: Arc<tokio::sync::Notify>,
    hold: watch::Sender<bool>,
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn receiver(now: Clock) -> Receiver {
    let got: Arc<Mutex<Vec<Received>>> = Arc::default();
    let (hold, held) = watch::channel(false);
    let g = got.clone();
    let arrived = Arc::new(tokio::sync::Notify::new());
    let a = arrived.clone();
    let app = axum::Router::new().fallback(
        move |uri: axum::http::Uri, headers: HeaderMap, body: Bytes| {
            let (g, a, mut held, now) = (g.clone(), a.clone(), held.clone(), now.clone());
            async move {
                let _ = held.wait_for(|h| !*h).await;
                let path = uri.path().to_string();
                if path == "/hook" {
                    let sig = headers
                        .get("x-mandate-signature")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    let now_s = now() / 1000;
                    if sign::verify_webhook(HOOK_SECRET.as_bytes(), sig, &body, now_s, 300).is_err()
                    {
                        return StatusCode::UNAUTHORIZED;
                    }
                }
                let id = headers
                    .get("x-mandate-notification-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                g.lock().unwrap().push(Received { path, id, body });
                a.notify_waiters();
                StatusCode::OK
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Receiver {
        base: format!("http://{addr}"),
        got,
        arrived,
        hold,
    }
}

impl Receiver {
    /// Deliveries by notification id (a receiver honouring the idempotency key).
    fn by_id(&self) -> BTreeMap<String, Received> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|r| (r.id.clone(), r.clone()))
            .collect()
    }

    /// Waits until `n` distinct notifications arrived.
    async fn wait_for(&self, n: usize) -> BTreeMap<String, Received> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            // Registered before reading, so an arrival in between still wakes us.
            let arrival = self.arrived.notified();
            let m = self.by_id();
            if m.len() >= n {
                return m;
            }
            if tokio::time::timeout_at(deadline, arrival).await.is_err() {
                panic!("expected {n} notifications, got {:?}", self.by_id());
            }
        }
    }
}

struct World2 {
    h: Harness,
    governance: Arc<Governance>,
    receiver: Receiver,
    /// Added to the wall clock on the routing side (deliveries, chains, links).
    offset: Arc<AtomicI64>,
    parts: FollowerParts,
    responder: Responder,
    delivery: Option<DeliveryWorker>,
    _dir: tempfile::TempDir,
}

async fn setup(b: Backend) -> World2 {
    setup_with(b, |_, _| {}).await
}

async fn setup_with(
    b: Backend,
    extra: impl FnOnce(&mut mandate_engine::WorkflowRegistry, &mut mandate_engine::ToolRegistry)
    + Send
    + 'static,
) -> World2 {
    // The routing side's clock: the wall clock plus an offset the tests move.
    let offset = Arc::new(AtomicI64::new(0));
    let o = offset.clone();
    let clock: Clock = Arc::new(move || wall_ms() + o.load(Ordering::SeqCst));
    let now = clock.clone();
    let receiver = receiver(now).await;
    let dir = tempfile::tempdir().unwrap();
    gov::write_policies(dir.path());
    std::fs::write(dir.path().join("org/routing.cedar"), ONE_APPROVER_RULE).unwrap();
    let governance = Arc::new(Governance::load_dir(dir.path()).expect("policies load"));
    let config = Arc::new(ConfigCell::fixed(
        RoutingConfig::from_yaml("owners.yaml", &owners_yaml(&receiver.base)).unwrap(),
    ));
    let gateway: Arc<dyn Gateway> = Arc::new(Routed {
        gateway: governance.clone(),
        router: Arc::new(EngineRouter {
            config: config.clone(),
            scope_field: None,
        }),
    });
    let db = TestDb::new(b).await;
    let world = World::connect(&db.url).await.unwrap();
    let g = governance.clone();
    let mut h = Harness::governed(db, Limits::default(), gateway, move |w, t| {
        mandate_workflows::register_governed(w, g.clone());
        mandate_activities::register_governance_tools(t, g, world);
        extra(w, t);
    })
    .await;
    h.start_worker();
    let outbox = Arc::new(
        Outbox::open(&h.db.url)
            .await
            .unwrap()
            .with_writer(h.engine.store().clone()),
    );
    let delivery = DeliveryWorker::spawn(
        outbox.clone(),
        config.clone(),
        WorkerConfig {
            poll_interval: Duration::from_millis(20),
            ..WorkerConfig::default()
        },
        clock.clone(),
    );
    let links = LinkSettings {
        secret: LINK_SECRET.to_vec(),
        base_url: "http://mandate.test".into(),
        ttl_ms: 3_600_000,
    };
    let parts = FollowerParts {
        engine: h.engine.clone(),
        outbox: outbox.clone(),
        config: config.clone(),
        links: links.clone(),
        clock: clock.clone(),
        wake: delivery.wake.clone(),
        poll_interval: Duration::from_millis(50),
    };
    let responder = Responder {
        engine: h.engine.clone(),
        outbox,
        links,
        config,
        clock,
    };
    World2 {
        h,
        governance,
        receiver,
        offset,
        parts,
        responder,
        delivery: Some(delivery),
        _dir: dir,
    }
}

impl World2 {
    async fn submit(&self, plan: Value) -> String {
        self.h
            .engine
            .submit(
                "plan",
                plan,
                SubmitOptions {
                    agent: Some(AGENT.into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap()
            .task_id
    }

    /// Runs the follower until it has read the whole feed.
    async fn follow(&self) {
        while self.parts.step().await.unwrap() {}
    }

    fn advance_minutes(&self, m: i64) {
        self.offset.fetch_add(m * 60_000, Ordering::SeqCst);
    }

    async fn shutdown(mut self) {
        if let Some(d) = self.delivery.take() {
            d.shutdown().await;
        }
    }
}

fn link_token(r: &Received, action: &str) -> String {
    let url = r.body["message"]["responses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["action"] == action)
        .unwrap_or_else(|| panic!("no {action} link in {}", r.body))["url"]
        .as_str()
        .unwrap()
        .to_string();
    url.rsplit('/').next().unwrap().to_string()
}

async fn monitored_step_notifies_its_owners_and_a_link_stops_the_chain(b: Backend) {
    let w = setup(b).await;
    // The receiver hangs: the step must run anyway.
    w.receiver.hold.send_replace(true);
    let id = w
        .submit(json!({"agent": AGENT, "reason": "mark it", "steps": [
            {"id": "mark", "tool": "kv.put", "input": {"key": "paying", "value": true}}]}))
        .await;
    let row =
        w.h.engine
            .wait_until_final(&id, Duration::from_secs(30))
            .await
            .unwrap();
    assert_eq!(row.status, TaskStatus::Completed);
    let history = w.h.engine.history(&id).await.unwrap();
    let policy_seq = history
        .iter()
        .find(|e| matches!(&e.payload, E::PolicyEvaluated { name, .. } if name == "mark"))
        .unwrap()
        .seq;
    // Scheduled right after its decision: routing is recorded after, never before.
    assert!(matches!(
        &history[policy_seq as usize].payload,
        E::StepScheduled { policy_seq: Some(p), .. } if *p == policy_seq
    ));
    let routed: Vec<_> = history
        .iter()
        .filter_map(|e| match &e.payload {
            E::OwnersNotified { about_seq, routing } => Some((*about_seq, routing.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(routed.len(), 1, "{routed:?}");
    let (about, routing) = &routed[0];
    assert_eq!(*about, policy_seq);
    let recipients: Vec<&str> = routing
        .recipients
        .iter()
        .map(|r| r.recipient.as_str())
        .collect();
    assert_eq!(recipients, ["team-platform", "pat"]);
    assert_eq!(routing.path.as_deref(), Some("monitored_execute"));

    // Enqueued from the history; following again enqueues nothing twice.
    w.follow().await;
    w.follow().await;
    w.parts
        .outbox
        .set_cursor("routing-follower", 0)
        .await
        .unwrap();
    w.follow().await;
    w.receiver.hold.send_replace(false);
    let got = w.receiver.wait_for(2).await;
    let mut to: Vec<&str> = got
        .values()
        .map(|r| r.body["recipient"].as_str().unwrap())
        .collect();
    to.sort();
    assert_eq!(to, ["pat", "team-platform"]);

    // Nobody answers: after the first step's wait the chain notifies quinn.
    w.advance_minutes(6);
    w.follow().await;
    let got = w.receiver.wait_for(3).await;
    assert!(
        got.values().any(|r| r.body["recipient"] == "quinn"),
        "{got:?}"
    );
    // The step is in the history: who, by which chain, and which step.
    let history = w.h.engine.history(&id).await.unwrap();
    let step: Vec<_> = history
        .iter()
        .filter_map(|e| match &e.payload {
            E::OwnersNotified { about_seq, routing } if routing.escalation_step.is_some() => {
                Some((
                    *about_seq,
                    routing.escalation_step,
                    routing.recipients[0].recipient.clone(),
                    routing.matched_rules.clone(),
                ))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        step,
        [(
            policy_seq,
            Some(2),
            "quinn".to_string(),
            vec!["escalation:platform-chain".to_string()]
        )]
    );

    // pat acknowledges through the signed link: the chain stops.
    let pat = got
        .values()
        .find(|r| r.body["recipient"] == "pat")
        .unwrap()
        .clone();
    let ack = link_token(&pat, "acknowledge");
    // Bound to pat: quinn cannot use it.
    let e = w
        .responder
        .follow_link(&ack, Some("quinn"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, RespondError::Link(LinkError::WrongRecipient { .. })),
        "{e}"
    );
    let answered = w.responder.follow_link(&ack, None).await.unwrap();
    assert_eq!(answered.identity, "pat");
    assert_eq!(answered.escalations_stopped, 1);
    let e = w.responder.follow_link(&ack, None).await.unwrap_err();
    assert!(e.to_string().contains("already used"), "{e}");
    w.advance_minutes(30);
    assert!(
        w.parts
            .outbox
            .due_escalations(i64::MAX, 10)
            .await
            .unwrap()
            .is_empty(),
        "the chain goes on after the acknowledgement"
    );
    // Expired: another of pat's links, two hours on.
    w.advance_minutes(120);
    let e = w
        .responder
        .follow_link(&link_token(&pat, "helpful"), None)
        .await
        .unwrap_err();
    assert!(
        matches!(e, RespondError::Link(LinkError::Expired { .. })),
        "{e}"
    );
    let history = w.h.engine.history(&id).await.unwrap();
    let answers: Vec<_> = history
        .iter()
        .filter_map(|e| match &e.payload {
            E::NotificationResponded {
                action,
                identity,
                via,
                about_seq,
                ..
            } => Some((
                action.as_str(),
                identity.as_str(),
                via.as_str(),
                *about_seq,
                e.actor.as_str(),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        answers,
        [("acknowledge", "pat", "link", Some(policy_seq), "user:pat")]
    );
    w.h.assert_replays(&id).await;
    w.shutdown().await;
}

async fn gated_step_approver_gets_slack_and_a_signed_callback_approves(b: Backend) {
    let w = setup(b).await;
    let id = w
        .submit(json!({"agent": AGENT, "reason": "pay", "steps": [
            {"id": "pay", "tool": "ledger.charge", "input": {"account": "one", "amount_cents": 500}}]}))
        .await;
    w.h.wait_for(&id, |s| s == TaskStatus::NeedsApproval).await;
    w.follow().await;
    let got = w.receiver.wait_for(1).await;
    let (nid, slack) = got.iter().next().unwrap();
    assert_eq!(slack.path, "/slack");
    assert_eq!(slack.body["channel"], "@alice");
    let buttons = slack.body["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "actions")
        .unwrap()["elements"]
        .as_array()
        .unwrap()
        .clone();
    let approve = buttons
        .iter()
        .find(|b| b["action_id"] == "approve")
        .unwrap();
    assert_eq!(approve["value"], nid.as_str());

    let payload = json!({"type": "block_actions", "user": {"id": "U1", "username": "alice"},
        "actions": [{"action_id": "approve", "value": nid}]});
    let body = format!("payload={}", percent_encode(&payload.to_string()));
    let ts = ((w.parts.clock)() / 1000).to_string();
    let before = w.h.engine.task(&id).await.unwrap().last_seq;
    let wrong = sign::slack_signature(b"not-the-secret", ts.parse().unwrap(), body.as_bytes());
    let e = w
        .responder
        .slack(SLACK_SIGNING_SECRET, &ts, &wrong, body.as_bytes())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("signature"), "{e}");
    assert_eq!(w.h.engine.task(&id).await.unwrap().last_seq, before);

    let right = sign::slack_signature(SLACK_SIGNING_SECRET, ts.parse().unwrap(), body.as_bytes());
    let answered = w
        .responder
        .slack(SLACK_SIGNING_SECRET, &ts, &right, body.as_bytes())
        .await
        .unwrap();
    assert_eq!(answered.identity, "alice");
    let row =
        w.h.engine
            .wait_until_final(&id, Duration::from_secs(30))
            .await
            .unwrap();
    assert_eq!(row.status, TaskStatus::Completed);
    let history = w.h.engine.history(&id).await.unwrap();
    assert!(history.iter().any(|e| matches!(&e.payload,
        E::ApprovalDecided { identity, approved: true, via: Some(v), .. } if identity == "alice" && v == "slack")));
    assert!(history.iter().any(|e| matches!(&e.payload,
        E::NotificationResponded { identity, action, via, .. } if identity == "alice" && action == "approve" && via == "slack")));
    w.h.assert_replays(&id).await;
    w.shutdown().await;
}

/// The API on loopback over this world's engine, with routing's answers.
async fn serve_api(w: &World2) -> (String, tokio::sync::oneshot::Sender<()>) {
    let state = mandate_api::AppState::new(
        w.h.engine.clone(),
        w.governance.clone(),
        mandate_api::ApiConfig {
            rate_per_second: 100_000,
            rate_burst: 100_000,
            ..Default::default()
        },
    )
    .with_routing(mandate_api::RoutingApi {
        responder: w.responder.clone(),
        slack_signing_secret: Some(SLACK_SIGNING_SECRET.to_vec()),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(mandate_api::serve(listener, state, async {
        let _ = stopped.await;
    }));
    (base, stop)
}

/// A new API token's secret.
async fn token(w: &World2, role: &str, name: &str) -> String {
    mandate_api::create_token(w.h.engine.store().as_ref(), role, name, 0)
        .await
        .unwrap()
        .1
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = http.request(method, url);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn answers_through_the_api_are_recorded_with_identity_and_measured(b: Backend) {
    let w = setup(b).await;
    let (base, _stop) = serve_api(&w).await;
    let http = reqwest::Client::new();
    let token = |role: &'static str, name: &'static str| token(&w, role, name);
    let (pat, quinn, operator) = (
        token("approver", "pat").await,
        token("approver", "quinn").await,
        token("operator", "ops").await,
    );
    let id = w
        .submit(json!({"agent": AGENT, "reason": "mark it", "steps": [
            {"id": "mark", "tool": "kv.put", "input": {"key": "k", "value": 1}}]}))
        .await;
    w.h.engine
        .wait_until_final(&id, Duration::from_secs(30))
        .await
        .unwrap();
    w.follow().await;
    let got = w.receiver.wait_for(2).await;
    let (pat_nid, pat_msg) = got
        .iter()
        .find(|(_, r)| r.body["recipient"] == "pat")
        .unwrap();
    let respond = format!("{base}/v1/notifications/{pat_nid}/respond");
    let post = reqwest::Method::POST;
    // Only the recipient (or an operator) answers; the identity is the token's.
    let (status, e) = call(
        &http,
        post.clone(),
        respond.clone(),
        Some(&quinn),
        Some(json!({"action": "acknowledge"})),
    )
    .await;
    assert_eq!(status, 403, "{e}");
    let (status, e) = call(
        &http,
        post.clone(),
        respond.clone(),
        Some(&pat),
        Some(json!({"action": "dance"})),
    )
    .await;
    assert_eq!(status, 400, "{e}");
    let (status, ok) = call(
        &http,
        post.clone(),
        respond.clone(),
        Some(&pat),
        Some(json!({"action": "helpful"})),
    )
    .await;
    assert_eq!(
        (status, ok["identity"].as_str()),
        (200, Some("pat")),
        "{ok}"
    );
    // The one-click link: once, then refused.
    let link = format!("{base}/v1/links/{}", link_token(pat_msg, "acknowledge"));
    let (status, ok) = call(&http, reqwest::Method::GET, link.clone(), None, None).await;
    assert_eq!(
        (status, ok["action"].as_str()),
        (200, Some("acknowledge")),
        "{ok}"
    );
    let (status, e) = call(&http, reqwest::Method::GET, link, None, None).await;
    assert_eq!(status, 409, "{e}");
    // A wrongly signed Slack callback records nothing.
    let before = w.h.engine.task(&id).await.unwrap().last_seq;
    let resp = http
        .post(format!("{base}/v1/slack/interactions"))
        .header("x-slack-request-timestamp", ((w.parts.clock)() / 1000).to_string())
        .header("x-slack-signature", "v0=00")
        .body(format!("payload={}", percent_encode(&json!({"actions": [{"action_id": "acknowledge", "value": pat_nid}], "user": {"username": "pat"}}).to_string())))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(w.h.engine.task(&id).await.unwrap().last_seq, before);
    // Resolving is for escalated tasks only.
    let (status, e) = call(
        &http,
        post,
        format!("{base}/v1/tasks/{id}/resolve"),
        Some(&operator),
        Some(json!({"note": "nothing to do"})),
    )
    .await;
    assert_eq!(status, 409, "{e}");

    // The dry run shows who would be notified, and by which rule.
    let (status, report) = call(
        &http,
        reqwest::Method::POST,
        format!("{base}/v1/plans/dry-run"),
        Some(&operator),
        Some(json!({"agent": AGENT, "reason": "check", "steps": [
            {"id": "mark", "tool": "kv.put", "input": {"key": "k", "value": 2}}]})),
    )
    .await;
    assert_eq!(status, 200, "{report}");
    let notify: Vec<(&str, &str)> = report["steps"][0]["notify"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["recipient"].as_str().unwrap(),
                n["rule"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        notify,
        [("team-platform", "root"), ("pat", "root")],
        "{report}"
    );

    // The figures `mandate tti` prints and /metrics serves, from the history.
    let f = mandate_routing::wire::figures(&w.h.engine, None, 1_000)
        .await
        .unwrap();
    let ack = f
        .tti
        .iter()
        .find(|t| t.action == "acknowledge")
        .expect("acknowledge measured");
    assert_eq!(ack.count, 1);
    assert!(ack.p50_ms <= ack.p95_ms);
    assert_eq!(f.relevance, Some(1.0));
    assert_eq!(f.ownership_coverage, Some(1.0));
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = format!(
        "mandate_tti_seconds{{action=\"acknowledge\",quantile=\"0.95\"}} {}",
        ack.p95_ms as f64 / 1000.0
    );
    assert!(metrics.contains(&line), "{line} not in /metrics");
    assert!(
        metrics.contains("mandate_notification_relevance_ratio 1"),
        "{metrics}"
    );
    let history = w.h.engine.history(&id).await.unwrap();
    let answers: Vec<(&str, &str)> = history
        .iter()
        .filter_map(|e| match &e.payload {
            E::NotificationResponded { action, via, .. } => Some((action.as_str(), via.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(answers.len(), 2);
    assert_eq!(answers[1], ("acknowledge", "link"));
    assert!(
        answers[0].0 == "helpful" && answers[0].1.starts_with("token:"),
        "{answers:?}"
    );
    w.shutdown().await;
}

/// `archive.purge` (irreversible in the test catalog): does nothing.
struct Purge;

impl Tool for Purge {
    fn name(&self) -> &str {
        "archive.purge"
    }
    fn kind(&self) -> ToolKind {
        ToolKind::WriteIrreversible
    }
    fn call<'a>(&'a self, _ctx: ToolContext, input: Value) -> BoxFuture<'a, ToolResult> {
        async move { Ok(json!({"purged": input})) }.boxed()
    }
}

/// Purges, then fails: the purge cannot be undone, so the task escalates.
struct PurgeThenFail;

impl Workflow for PurgeThenFail {
    fn name(&self) -> &str {
        "purge_then_fail"
    }
    fn run(
        &self,
        ctx: WorkflowContext,
        _input: Value,
    ) -> BoxFuture<'static, Result<Value, WorkflowError>> {
        Box::pin(async move {
            ctx.step(StepOptions::new("archive.purge", json!({"bucket": "logs"})).name("purge"))
                .await?;
            Err(WorkflowError::new("the next stage broke"))
        })
    }
}

async fn an_escalated_task_notifies_its_owners_and_is_resolved_by_a_person(b: Backend) {
    let w = setup_with(b, |wf, t| {
        t.register(Purge);
        wf.register(PurgeThenFail);
    })
    .await;
    let id =
        w.h.engine
            .submit("purge_then_fail", json!({}), SubmitOptions::default())
            .await
            .unwrap()
            .task_id;
    let row =
        w.h.engine
            .wait_until_final(&id, Duration::from_secs(30))
            .await
            .unwrap();
    assert_eq!(row.status, TaskStatus::EscalatedToHuman);
    let history = w.h.engine.history(&id).await.unwrap();
    let escalated = history
        .iter()
        .find(|e| matches!(e.payload, E::TaskEscalated { .. }))
        .unwrap()
        .seq;
    let routing = history
        .iter()
        .find_map(|e| match &e.payload {
            E::OwnersNotified { about_seq, routing } if *about_seq == escalated => Some(routing),
            _ => None,
        })
        .expect("the escalation was routed");
    assert_eq!(
        routing.outcome,
        Some(mandate_engine::core::routing::RoutedOutcome::TaskEscalated)
    );
    assert_eq!(routing.recipients[0].recipient, "team-platform");
    w.follow().await;
    let got = w.receiver.wait_for(2).await;
    assert!(
        got.values().any(|r| r.body["message"]["title"]
            .as_str()
            .unwrap()
            .contains("escalated")),
        "{got:?}"
    );

    let e =
        w.h.engine
            .resolve_escalation(&id, "dan", "cli:test", " ", false)
            .await
            .unwrap_err();
    assert!(e.to_string().contains("note"), "{e}");
    w.h.engine
        .resolve_escalation(&id, "dan", "cli:test", "restored the bucket", true)
        .await
        .unwrap();
    let e =
        w.h.engine
            .resolve_escalation(&id, "dan", "cli:test", "again", true)
            .await
            .unwrap_err();
    assert!(e.to_string().contains("resolved already"), "{e}");
    let history = w.h.engine.history(&id).await.unwrap();
    assert!(history.iter().any(|e| e.actor == "user:dan"
        && matches!(&e.payload, E::EscalationResolved { recovery_done: true, note, .. } if note == "restored the bucket")));
    w.h.assert_replays(&id).await;
    w.shutdown().await;
}

/// `POST /v1/actions`: an agent reports a tool call it ran itself. It lands
/// in the agent's session task as an observed step that says it was
/// reported after the fact, is routed to the owners the map names like a
/// monitored step (deliveries verified by the receiver), and its
/// notification offers the same interventions; bad input, other roles,
/// other agents' tasks and final tasks are refused, recording nothing.
async fn an_agent_reports_an_action_it_ran_itself(b: Backend) {
    let w = setup(b).await;
    let (base, _stop) = serve_api(&w).await;
    let http = reqwest::Client::new();
    let token = |role: &'static str, name: &'static str| token(&w, role, name);
    let (agent, other, operator) = (
        token("agent", AGENT).await,
        token("agent", "agent-other").await,
        token("operator", "ops").await,
    );
    let url = format!("{base}/v1/actions");
    let post = reqwest::Method::POST;
    let digest = format!("sha256:{}", "ab".repeat(32));
    let report = json!({"tool": "kv.put", "resource": "service:checkout", "input_digest": digest,
        "outcome": "failed", "error": "exit 1", "occurred_at_ms": wall_ms() - 1_000,
        "recovery_path": "kv.delete paying"});
    let (status, ok) = call(
        &http,
        post.clone(),
        url.clone(),
        Some(&agent),
        Some(report.clone()),
    )
    .await;
    assert_eq!(status, 201, "{ok}");
    assert_eq!(ok["reported_after_the_fact"], true);
    let task = ok["task_id"].as_str().unwrap().to_string();
    let seq = ok["seq"].as_i64().unwrap();
    let notified: Vec<&str> = ok["notified"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["recipient"].as_str().unwrap())
        .collect();
    assert_eq!(notified, ["team-platform", "pat"], "{ok}");
    let row = w.h.engine.task(&task).await.unwrap();
    assert_eq!(
        (row.workflow.as_str(), row.agent.as_deref()),
        ("mcp_session", Some(AGENT))
    );
    // Recorded as an observed step by the agent, with the routing about it.
    let history = w.h.engine.history(&task).await.unwrap();
    let reported = history.iter().find(|e| e.seq == seq).unwrap();
    assert_eq!(reported.actor, format!("agent:{AGENT}"));
    match &reported.payload {
        E::ActionReported {
            agent,
            tool,
            resource,
            outcome,
            ..
        } => assert_eq!(
            (
                agent.as_str(),
                tool.as_str(),
                resource.as_deref(),
                outcome.as_str()
            ),
            (AGENT, "kv.put", Some("service:checkout"), "failed")
        ),
        p => panic!("expected ActionReported, got {p:?}"),
    }
    let routing = history
        .iter()
        .find_map(|e| match &e.payload {
            E::OwnersNotified { about_seq, routing } if *about_seq == seq => Some(routing),
            _ => None,
        })
        .expect("routed like a monitored step");
    assert_eq!(routing.path.as_deref(), Some("monitored_execute"));
    assert!(
        routing
            .summary
            .contains("reported after the fact (not gated)"),
        "{}",
        routing.summary
    );
    // The owners' receivers get it, with the interventions of a monitored step.
    w.follow().await;
    let got = w.receiver.wait_for(2).await;
    let (_, pat_msg) = got
        .iter()
        .find(|(_, r)| r.body["recipient"] == "pat")
        .unwrap();
    assert!(
        pat_msg.body["message"]["what_happened"]
            .as_str()
            .unwrap()
            .contains("reported after the fact"),
        "{}",
        pat_msg.body
    );
    for action in ["pause_task", "pause_agent", "trigger_recovery"] {
        link_token(pat_msg, action);
    }
    // A second report finds the same session task.
    let (status, again) = call(
        &http,
        post.clone(),
        url.clone(),
        Some(&agent),
        Some(report.clone()),
    )
    .await;
    assert_eq!(
        (status, again["task_id"].as_str()),
        (201, Some(task.as_str())),
        "{again}"
    );
    // Pausing the agent through the one-click link works as for any step.
    let link = format!("{base}/v1/links/{}", link_token(pat_msg, "pause_task"));
    let (status, ok) = call(&http, reqwest::Method::GET, link, None, None).await;
    assert_eq!(
        (status, ok["action"].as_str()),
        (200, Some("pause_task")),
        "{ok}"
    );
    assert_eq!(
        w.h.engine.task(&task).await.unwrap().status,
        TaskStatus::Paused
    );

    // Refusals record nothing.
    let before = w.h.engine.task(&task).await.unwrap().last_seq;
    let with = |k: &str, v: Value| {
        let mut r = report.clone();
        r[k] = v;
        r
    };
    for (body, field) in [
        (with("input_digest", json!("md5:abc")), "input_digest"),
        (with("outcome", json!("maybe")), "outcome"),
        (with("tool", json!("kv put")), "tool"),
        (
            with("occurred_at_ms", json!(wall_ms() + 3_600_000)),
            "occurred_at_ms",
        ),
        (with("error", json!("x".repeat(2_001))), "error"),
        (with("agent", json!("agent-other")), "agent"),
        (
            {
                let mut r = report.clone();
                r.as_object_mut().unwrap().remove("tool");
                r
            },
            "tool",
        ),
    ] {
        let (status, e) = call(&http, post.clone(), url.clone(), Some(&agent), Some(body)).await;
        assert_eq!(
            (status, e["details"]["field"].as_str()),
            (400, Some(field)),
            "{e}"
        );
    }
    let (status, e) = call(
        &http,
        post.clone(),
        url.clone(),
        Some(&operator),
        Some(report.clone()),
    )
    .await;
    assert_eq!(status, 403, "{e}");
    let (status, e) = call(
        &http,
        post.clone(),
        url.clone(),
        Some(&other),
        Some(with("task_id", json!(task))),
    )
    .await;
    assert_eq!(
        status, 404,
        "another agent's task does not exist for it: {e}"
    );
    assert_eq!(w.h.engine.task(&task).await.unwrap().last_seq, before);
    // A final task takes no more reports.
    let done = w
        .submit(json!({"agent": AGENT, "reason": "read", "steps": [
            {"id": "put", "tool": "kv.put", "input": {"key": "k2", "value": 1}}]}))
        .await;
    w.h.engine
        .wait_until_final(&done, Duration::from_secs(30))
        .await
        .unwrap();
    let (status, e) = call(
        &http,
        post,
        url,
        Some(&agent),
        Some(with("task_id", json!(done))),
    )
    .await;
    assert_eq!(status, 409, "{e}");
    w.shutdown().await;
}

/// Grouping: a burst of one agent's actions within the rule's group wait
/// becomes one notification per recipient (and sink), listing the rest;
/// nothing is sent before the wait ends (on the injected clock).
async fn a_burst_of_an_agents_actions_is_one_notification_per_recipient(b: Backend) {
    let w = setup(b).await;
    let (base, _stop) = serve_api(&w).await;
    let http = reqwest::Client::new();
    let agent = token(&w, "agent", "agent-operator").await;
    let (mut about, mut task) = (Vec::new(), String::new());
    for i in 0..5 {
        let (status, ok) = call(
            &http,
            reqwest::Method::POST,
            format!("{base}/v1/actions"),
            Some(&agent),
            Some(json!({"tool": "kv.put", "resource": format!("db:shard{i}"),
                "input_digest": format!("sha256:{}", "0".repeat(64)), "outcome": "succeeded",
                "occurred_at_ms": wall_ms()})),
        )
        .await;
        assert_eq!(status, 201, "{ok}");
        about.push(ok["seq"].as_i64().unwrap());
        task = ok["task_id"].as_str().unwrap().to_string();
    }
    w.follow().await;
    // Ten items (five actions, two owners each) wait in two notifications.
    let outbox = &w.parts.outbox;
    let mut ids = std::collections::BTreeSet::new();
    for seq in &about {
        for recipient in ["team-platform", "pat"] {
            let key = mandate_engine::core::routing::item_key(&task, *seq, recipient, "hook");
            let id = outbox
                .item_notification(&key)
                .await
                .unwrap()
                .expect("enqueued");
            ids.insert(id);
        }
    }
    assert_eq!(ids.len(), 2, "one notification per recipient: {ids:?}");
    for id in &ids {
        let row = outbox.get(id).await.unwrap().unwrap();
        assert_eq!((row.status.as_str(), row.sent_at_ms), ("pending", None));
    }
    assert!(w.receiver.by_id().is_empty());
    // The wait ends: each recipient gets one notification naming the rest.
    w.advance_minutes(1);
    let got = w.receiver.wait_for(2).await;
    assert_eq!(
        got.keys()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        ids
    );
    for r in got.values() {
        let grouped = r.body["message"]["grouped"].as_array().unwrap();
        assert_eq!(grouped.len(), 4, "{}", r.body);
    }
    assert_eq!(w.receiver.got.lock().unwrap().len(), 2);
    // One answer covers every item of the group: the task is paused once,
    // and each of the five actions records who answered.
    let (pat_id, _) = got
        .iter()
        .find(|(_, r)| r.body["recipient"] == "pat")
        .unwrap();
    let pat = token(&w, "approver", "pat").await;
    let (status, answered) = call(
        &http,
        reqwest::Method::POST,
        format!("{base}/v1/notifications/{pat_id}/respond"),
        Some(&pat),
        Some(json!({"action": "pause_task"})),
    )
    .await;
    assert_eq!(status, 200, "{answered}");
    let items = answered["items"].as_array().unwrap();
    let answered_about: Vec<i64> = items
        .iter()
        .map(|i| {
            assert!(i["error"].is_null(), "{answered}");
            i["about_seq"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(answered_about, about, "{answered}");
    let history = w.h.engine.history(&task).await.unwrap();
    let mut responded: Vec<i64> = history
        .iter()
        .filter_map(|e| match &e.payload {
            E::NotificationResponded {
                about_seq,
                identity,
                action,
                ..
            } if identity == "pat" && action == "pause_task" => *about_seq,
            _ => None,
        })
        .collect();
    responded.sort();
    assert_eq!(responded, about, "every item records the answer");
    let paused = history
        .iter()
        .filter(|e| matches!(e.payload, E::TaskPaused { .. }))
        .count();
    assert_eq!(paused, 1, "the task is paused once");
    // Rated once per notification, not once per item.
    let (status, rated) = call(
        &http,
        reqwest::Method::POST,
        format!("{base}/v1/notifications/{pat_id}/respond"),
        Some(&pat),
        Some(json!({"action": "not_helpful"})),
    )
    .await;
    assert_eq!(status, 200, "{rated}");
    let f = mandate_routing::wire::figures(&w.h.engine, None, 10_000)
        .await
        .unwrap();
    assert_eq!((f.rated, f.relevance), (1, Some(0.0)));
    w.shutdown().await;
}

/// The playbook a route starts: a registered workflow that reports health.
struct HealthCheck;

impl Workflow for HealthCheck {
    fn name(&self) -> &str {
        "health_check"
    }
    fn run(
        &self,
        _ctx: WorkflowContext,
        input: Value,
    ) -> BoxFuture<'static, Result<Value, WorkflowError>> {
        Box::pin(async move { Ok(json!({"healthy": true, "checked": input})) })
    }
}

/// A route's playbook starts once per routed event as the automated first
/// response: recorded in the routed task's history (`PlaybookStarted`, with
/// its task), linked from the notification, not started again when the
/// follower re-reads the feed (a crash), and a playbook that cannot start
/// is recorded with why.
async fn a_route_starts_its_playbook_and_the_notification_links_it(b: Backend) {
    let w = setup_with(b, |wf, _| {
        wf.register(HealthCheck);
    })
    .await;
    let (base, _stop) = serve_api(&w).await;
    let http = reqwest::Client::new();
    let agent = token(&w, "agent", AGENT).await;
    let report = |tool: &str| {
        json!({"tool": tool, "resource": "service:checkout", "input_digest": format!("sha256:{}", "2".repeat(64)),
            "outcome": "failed", "error": "crash loop", "occurred_at_ms": wall_ms()})
    };
    let url = format!("{base}/v1/actions");
    let (status, ok) = call(
        &http,
        reqwest::Method::POST,
        url.clone(),
        Some(&agent),
        Some(report("probe.restart")),
    )
    .await;
    assert_eq!(status, 201, "{ok}");
    let (task, seq) = (
        ok["task_id"].as_str().unwrap().to_string(),
        ok["seq"].as_i64().unwrap(),
    );
    let (status, broken) = call(
        &http,
        reqwest::Method::POST,
        url,
        Some(&agent),
        Some(report("probe.broken")),
    )
    .await;
    assert_eq!(status, 201, "{broken}");
    w.follow().await;
    let started =
        |history: &[mandate_engine::Event]| -> Vec<(i64, String, Option<String>, Option<String>)> {
            history
                .iter()
                .filter_map(|e| match &e.payload {
                    E::PlaybookStarted {
                        about_seq,
                        playbook,
                        playbook_task_id,
                        error,
                        ..
                    } => Some((
                        *about_seq,
                        playbook.clone(),
                        playbook_task_id.clone(),
                        error.clone(),
                    )),
                    _ => None,
                })
                .collect()
        };
    let history = w.h.engine.history(&task).await.unwrap();
    let s = started(&history);
    assert_eq!(s.len(), 2, "{s:?}");
    assert_eq!((s[0].0, s[0].1.as_str()), (seq, "health-check"));
    let playbook_task = s[0].2.clone().expect("started");
    assert_eq!(s[1].1, "broken");
    assert!(
        s[1].2.is_none() && s[1].3.as_deref().unwrap().contains("no_such_workflow"),
        "{s:?}"
    );
    let row =
        w.h.engine
            .wait_until_final(&playbook_task, Duration::from_secs(30))
            .await
            .unwrap();
    assert_eq!(
        (row.workflow.as_str(), row.status),
        ("health_check", TaskStatus::Completed)
    );
    // The owner's notification links the playbook's task.
    let got = w.receiver.wait_for(1).await;
    let msg = &got.values().next().unwrap().body["message"];
    assert_eq!(
        msg["playbooks"][0]["task_id"],
        json!(playbook_task),
        "{msg}"
    );
    assert!(
        msg["playbooks"][0]["url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/v1/tasks/{playbook_task}")),
        "{msg}"
    );
    // A re-read of the whole feed (as after a crash) starts nothing again.
    w.parts
        .outbox
        .set_cursor("routing-follower", 0)
        .await
        .unwrap();
    w.follow().await;
    assert_eq!(started(&w.h.engine.history(&task).await.unwrap()), s);
    let runs =
        w.h.engine
            .store()
            .list_tasks(mandate_engine::store::TaskFilter {
                workflow: Some("health_check".into()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
    assert_eq!(runs.len(), 1);
    w.shutdown().await;
}

/// Reports that arrive together, before the agent has a session task, all
/// land in one session: the session's idempotency key names the agent and
/// the session before it, so the racing submissions get the same task.
async fn concurrent_first_reports_start_one_session(b: Backend) {
    let w = setup(b).await;
    let (base, _stop) = serve_api(&w).await;
    let http = reqwest::Client::new();
    let agent = token(&w, "agent", AGENT).await;
    let url = format!("{base}/v1/actions");
    let report = json!({"tool": "kv.put", "resource": "service:checkout",
        "input_digest": format!("sha256:{}", "cd".repeat(32)),
        "outcome": "succeeded", "occurred_at_ms": wall_ms() - 1_000});
    let answers = futures::future::join_all((0..12).map(|_| {
        call(
            &http,
            reqwest::Method::POST,
            url.clone(),
            Some(&agent),
            Some(report.clone()),
        )
    }))
    .await;
    let mut tasks = std::collections::BTreeSet::new();
    for (status, body) in &answers {
        assert_eq!(*status, 201, "{body}");
        tasks.insert(body["task_id"].as_str().unwrap().to_string());
    }
    assert_eq!(tasks.len(), 1, "one session for every report: {tasks:?}");
    let sessions =
        w.h.engine
            .store()
            .list_tasks(mandate_engine::store::TaskFilter {
                workflow: Some("mcp_session".into()),
                agent: Some(AGENT.into()),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
    assert_eq!(
        sessions.len(),
        1,
        "session tasks started: {}",
        sessions.len()
    );
    let task = tasks.into_iter().next().unwrap();
    let reported =
        w.h.engine
            .history(&task)
            .await
            .unwrap()
            .iter()
            .filter(|e| matches!(e.payload, E::ActionReported { .. }))
            .count();
    assert_eq!(reported, 12, "every report recorded once");
}

backend_tests!(
    a_route_starts_its_playbook_and_the_notification_links_it,
    a_burst_of_an_agents_actions_is_one_notification_per_recipient,
    an_agent_reports_an_action_it_ran_itself,
    concurrent_first_reports_start_one_session,
    an_escalated_task_notifies_its_owners_and_is_resolved_by_a_person,
    monitored_step_notifies_its_owners_and_a_link_stops_the_chain,
    gated_step_approver_gets_slack_and_a_signed_callback_approves,
    answers_through_the_api_are_recorded_with_identity_and_measured,
);
