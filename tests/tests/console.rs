//! The web console in a real browser: Debian's headless Chromium driven
//! through chromedriver (started on a free loopback port) with fantoccini,
//! against the API server over a governed engine, on both stores. One
//! browser session per store runs the whole story: an approver signs in,
//! sees the pending approval with its rollback plan, approves, and watches
//! the task complete live; an auditor sees the task without action buttons
//! and a hand-made POST with the auditor's cookie is refused; a form without
//! the CSRF token is refused and records nothing; an approver checks an
//! edit (the gateway's decision shown, nothing recorded) and submits it; the
//! coordination page charts time to intervention; an operator halts an
//! agent, sees the task the halt paused, and lifts the halt; a tool's owner
//! grants and revokes a pre-approval; a plan reason with `<script>` and
//! terminal escapes renders as text. Over plain HTTP: the coordination
//! page's notification states, the edit check's verdicts and refusals, the
//! inbox's time filter across keyset pages.
//!
//! With `MANDATE_CONSOLE_SCREENSHOTS=DIR` the test saves the inbox, the task
//! page, the approval panel, an edit check and the coordination page there
//! (docs/console/ holds them).

#[path = "support/api_server.rs"]
mod api_server;
#[path = "support/gov.rs"]
mod gov;

use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use mandate_engine::TaskStatus;
use mandate_tests::{Backend, backend_tests};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use api_server::AGENT;

const WAIT: Duration = Duration::from_secs(30);
/// What the agent wrote, hostile: markup and terminal escapes.
const HOSTILE: &str = "pay <script>window.pwned=1</script><img src=x onerror=\"window.pwned=2\"> \u{1b}[31mRED\u{1b}[0m";

/// A single-approver rule for the console's payments (written into the
/// harness's policy directory, which reloads at once).
const CONSOLE_RULE: &str = r#"
@id("org.payments.console-review")
@message("console payments need alice")
@role("gate")
@path("gated_execute")
@approvers("alice")
permit(principal, action == Action::"ledger.charge", resource == Scope::"console");
"#;

fn plan(reason: &str) -> Value {
    json!({"agent": AGENT, "reason": reason,
        "evidence": [{"kind": "invoice", "ref": "inv-7"}],
        "steps": [
            {"id": "mark", "tool": "kv.put", "input": {"key": "paying", "value": true}},
            {"id": "pay", "tool": "ledger.charge", "input": {"account": "console", "amount_cents": 500},
             "depends_on": ["mark"]}]})
}

/// chromedriver on a free loopback port, ended when dropped.
struct Driver {
    child: tokio::process::Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Starts chromedriver and waits for it to say it listens. `None` (with a
/// note) when it is not installed, unless CI=true, where that fails.
async fn chromedriver() -> Option<Driver> {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let spawned = tokio::process::Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "chromedriver is not installed ({e}): `apt-get install -y chromium chromium-driver` (.ci/run does)"
            );
            eprintln!("SKIPPING the browser test: chromedriver not installed ({e})");
            return None;
        }
    };
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("started successfully") {
                return;
            }
        }
        panic!("chromedriver exited before it listened");
    })
    .await
    .expect("chromedriver did not start within 30 s");
    // Keep reading its output so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Some(Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    })
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                        "--window-size=1400,1000", "--no-first-run", "--no-default-browser-check"]}),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

async fn css(c: &Client, sel: &str) -> fantoccini::elements::Element {
    match c.wait().at_most(WAIT).for_element(Locator::Css(sel)).await {
        Ok(e) => e,
        Err(e) => panic!(
            "no {sel} on the page at {}: {e}\n{}",
            c.current_url()
                .await
                .map(|u| u.to_string())
                .unwrap_or_default(),
            c.source().await.unwrap_or_default()
        ),
    }
}

/// The text of `sel` once `expected` holds of it, looked up again while the
/// page changes under it (a click's navigation may not have happened yet, so
/// the old page can still answer the first lookup).
async fn text_when(c: &Client, sel: &str, expected: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let seen = match css(c, sel).await.text().await {
            Ok(t) if expected(&t) => return t,
            Ok(t) => t,
            Err(e) => e.to_string(),
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "{sel} never became what was expected; last: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn sign_in(c: &Client, base: &str, token: &str) {
    c.goto(&format!("{base}/signin")).await.unwrap();
    css(c, "#token").await.send_keys(token).await.unwrap();
    css(c, "#signin button").await.click().await.unwrap();
    css(c, "#status-filters").await;
}

async fn sign_out(c: &Client) {
    css(c, "header form button").await.click().await.unwrap();
    css(c, "#signin").await;
}

/// The session cookie and CSRF token of the signed-in browser.
async fn session_of(c: &Client) -> (String, String) {
    let cookie = c.get_named_cookie("mandate_session").await.unwrap();
    let csrf = css(c, "header input[name=csrf]")
        .await
        .attr("value")
        .await
        .unwrap()
        .unwrap();
    (format!("mandate_session={}", cookie.value()), csrf)
}

/// Only htmx (and its SSE extension) is on the page, and the agent's
/// script never ran.
async fn only_htmx_ran(c: &Client) {
    let scripts = c
        .execute(
            "return [document.scripts.length, window.pwned === undefined]",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        scripts,
        json!([2, true]),
        "only htmx and its SSE extension run; the agent's script never did"
    );
}

async fn shot(c: &Client, name: &str) {
    if let Ok(dir) = std::env::var("MANDATE_CONSOLE_SCREENSHOTS") {
        std::fs::create_dir_all(&dir).unwrap();
        let png = c.screenshot().await.unwrap();
        std::fs::write(std::path::Path::new(&dir).join(name), png).unwrap();
    }
}

/// POSTs a form by hand (as a script would) with a session cookie.
async fn post_form(
    api: &api_server::Api,
    path: &str,
    cookie: &str,
    fields: &[(&str, &str)],
) -> (StatusCode, String) {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect();
    let r = api
        .http
        .post(format!("{}{path}", api.base))
        .header("cookie", cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.join("&"))
        .send()
        .await
        .unwrap();
    (r.status(), r.text().await.unwrap())
}

async fn last_seq(api: &api_server::Api, id: &str) -> i64 {
    api.g.h.engine.task(id).await.unwrap().last_seq
}

async fn the_console_in_a_browser(b: Backend) {
    let Some(driver) = chromedriver().await else {
        return;
    };
    let api = api_with_routing(b).await;
    std::fs::write(api.g.dir.path().join("org/console.cedar"), CONSOLE_RULE).unwrap();
    let alice = api.token("approver", "alice").await;
    let auditor = api.token("auditor", "audra").await;
    let operator = api.token("operator", "opal").await;
    let owner = api.token("approver", "finance-controller").await;
    let engine = &api.g.h.engine;
    let base = api.base.clone();

    let id = api.g.submit(plan(HOSTILE)).await.unwrap();
    let other = api.g.submit(plan("a second payment")).await.unwrap();
    for t in [&id, &other] {
        api.g
            .h
            .wait_for(t, |s| s == TaskStatus::NeedsApproval)
            .await;
    }
    let c = browser(&driver).await;

    // Signing in with a wrong token is refused, without a session.
    c.goto(&format!("{base}/signin")).await.unwrap();
    css(&c, "#token")
        .await
        .send_keys("mdt_not-a-token")
        .await
        .unwrap();
    css(&c, "#signin button").await.click().await.unwrap();
    text_when(&c, "#signin-error", |t| t.contains("unknown token")).await;

    // The approver signs in; the inbox lists the task and counts it.
    sign_in(&c, &base, &alice).await;
    let filters = css(&c, "#status-filters").await.text().await.unwrap();
    assert!(filters.contains("needs approval 2"), "{filters}");
    css(&c, &format!("a[href='/tasks/{id}']")).await;
    shot(&c, "inbox.png").await;

    // The approval panel: summary, rule, owners, rollback plan; the agent's
    // markup and escapes shown as text.
    c.goto(&format!("{base}/approvals")).await.unwrap();
    let card = css(&c, &format!("article[id^='approval-{id}:']")).await;
    let text = card.text().await.unwrap();
    assert!(text.contains("<script>window.pwned=1</script>"), "{text}");
    assert!(
        text.contains("\\u{1b}[31mRED"),
        "terminal escapes shown: {text}"
    );
    assert!(
        text.contains("org.payments.console-review")
            && text.contains("console payments need alice"),
        "{text}"
    );
    assert!(
        text.contains(
            r#"pay: compensate with ledger.refund {"account":"console","amount_cents":500}"#
        ) && text.contains(r#"mark: compensate with kv.delete {"key":"paying"}"#),
        "the rollback plan: {text}"
    );
    only_htmx_ran(&c).await;
    shot(&c, "approvals.png").await;

    // Nothing may start while the task is paused, so the task page is
    // certainly open before the task completes: then it must change live.
    engine.pause(&id, "operator:test", None).await.unwrap();
    c.goto(&format!("{base}/tasks/{id}")).await.unwrap();
    let approve = format!("article[id^='approval-{id}:'] button.approve");
    css(&c, &approve).await.click().await.unwrap();
    // The click's POST may still be on its way: wait for its event, woken
    // by the engine's updates.
    let mut updates = engine.subscribe();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !engine.history(&id).await.unwrap().iter().any(|e| {
        matches!(&e.payload,
        mandate_engine::EventPayload::ApprovalDecided { identity, approved: true, via: Some(v), .. }
            if identity == "alice" && v.starts_with("console:"))
    }) {
        tokio::select! {
            _ = updates.recv() => {}
            _ = tokio::time::sleep_until(deadline) => panic!("alice's approval was never recorded"),
        }
    }
    text_when(&c, "#task-status", |s| s != "completed").await;
    c.execute("window.stillThisPage = true", vec![])
        .await
        .unwrap();
    engine.resume(&id, "operator:test").await.unwrap();
    c.wait()
        .at_most(WAIT)
        .for_element(Locator::XPath(
            "//span[@id='task-status' and text()='completed']",
        ))
        .await
        .expect("the task page shows the completion without a reload");
    let same = c
        .execute("return window.stillThisPage === true", vec![])
        .await
        .unwrap();
    assert_eq!(same, json!(true), "updated in place (htmx), not reloaded");
    assert!(
        css(&c, "#chain")
            .await
            .text()
            .await
            .unwrap()
            .contains("hash chain verified")
    );
    css(&c, "#dag g.node.completed[data-step='pay']").await;
    css(&c, "#replay-link").await.click().await.unwrap();
    text_when(&c, "#replay-verdict", |v| v.contains("Verdict: ok")).await;
    shot(&c, "task.png").await;

    // A form without the CSRF token (or with another) is refused and records nothing.
    let (cookie, csrf) = session_of(&c).await;
    let before = last_seq(&api, &other).await;
    let stale = "0".repeat(64);
    for body in [
        vec![("decision", "approve")],
        vec![("decision", "approve"), ("csrf", stale.as_str())],
    ] {
        let (status, text) =
            post_form(&api, &format!("/approvals/{other}:pay"), &cookie, &body).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(text.contains("CSRF"), "{text}");
    }
    assert_eq!(last_seq(&api, &other).await, before, "nothing recorded");
    // With the token it is accepted (the same request, so the refusal was the token's).
    let (status, text) = post_form(
        &api,
        &format!("/approvals/{other}:pay"),
        &cookie,
        &[
            ("decision", "reject"),
            ("comment", "not this one"),
            ("csrf", &csrf),
        ],
    )
    .await;
    assert!(
        status.is_success() || status.is_redirection(),
        "{status} {text}"
    );
    assert!(last_seq(&api, &other).await > before);

    // An edit is checked before it is submitted: the gateway's decision for
    // the edited input is shown and nothing is recorded until the approver
    // submits it.
    let edited = api.g.submit(plan("an edited payment")).await.unwrap();
    api.g
        .h
        .wait_for(&edited, |s| s == TaskStatus::NeedsApproval)
        .await;
    c.goto(&format!("{base}/tasks/{edited}")).await.unwrap();
    css(
        &c,
        &format!("article[id^='approval-{edited}:'] form.edit input[name=edit]"),
    )
    .await
    .send_keys(r#"{"amount_cents": 400}"#)
    .await
    .unwrap();
    let before = last_seq(&api, &edited).await;
    css(
        &c,
        &format!("article[id^='approval-{edited}:'] button.check-edit"),
    )
    .await
    .click()
    .await
    .unwrap();
    text_when(&c, "#edit-verdict", |v| {
        v.contains("runs with the edited input")
    })
    .await;
    assert_eq!(
        css(&c, "#edit-path").await.text().await.unwrap(),
        "gated_execute"
    );
    assert!(
        css(&c, "#edit-input")
            .await
            .text()
            .await
            .unwrap()
            .contains(r#""amount_cents": 400"#)
    );
    assert_eq!(
        last_seq(&api, &edited).await,
        before,
        "a check records nothing"
    );
    shot(&c, "edit-check.png").await;
    css(&c, "#submit-edit button").await.click().await.unwrap();
    api.g
        .h
        .wait_for(&edited, |s| s == TaskStatus::Completed)
        .await;
    let charged = engine.history(&edited).await.unwrap().iter().any(|e| {
        matches!(&e.payload, mandate_engine::EventPayload::StepScheduled { tool, input, .. }
            if tool == "ledger.charge" && input["amount_cents"] == 400)
    });
    assert!(charged, "the edited amount was charged");
    sign_out(&c).await;
    // The signed-out session is gone on the server too.
    let (status, _) = post_form(
        &api,
        &format!("/tasks/{id}/pause"),
        &cookie,
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // The auditor sees the task and no action; a hand-made POST is refused.
    let live = api.g.submit(plan("a third payment")).await.unwrap();
    api.g
        .h
        .wait_for(&live, |s| s == TaskStatus::NeedsApproval)
        .await;
    sign_in(&c, &base, &auditor).await;
    c.goto(&format!("{base}/tasks/{live}")).await.unwrap();
    css(&c, &format!("article[id^='approval-{live}:']")).await;
    let forms = c.find_all(Locator::Css("main form")).await.unwrap();
    assert!(forms.is_empty(), "an auditor sees no action buttons");
    let (cookie, csrf) = session_of(&c).await;
    let before = last_seq(&api, &live).await;
    for (path, field) in [
        (format!("/tasks/{live}/cancel"), ("rollback", "yes")),
        (format!("/approvals/{live}:pay"), ("decision", "approve")),
        ("/halt".to_string(), ("confirm", "yes")),
    ] {
        let (status, text) = post_form(&api, &path, &cookie, &[("csrf", &csrf), field]).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert!(text.contains("role auditor"), "{path}: {text}");
    }
    assert_eq!(last_seq(&api, &live).await, before, "nothing recorded");
    assert!(engine.active_halts().is_empty());

    // The coordination page draws time to intervention against the targets.
    let coord = api.g.submit(plan("coordination")).await.unwrap();
    api.g
        .h
        .wait_for(&coord, |s| s == TaskStatus::NeedsApproval)
        .await;
    let notes = seed_notifications(&api, &coord).await;
    c.goto(&format!("{base}/coordination")).await.unwrap();
    css(
        &c,
        "#tti-chart g.tti.meets[data-action='pause_task'] rect.p95",
    )
    .await;
    css(&c, &format!("tr.note.overdue[data-id='{}']", notes[2])).await;
    only_htmx_ran(&c).await;
    shot(&c, "coordination.png").await;
    sign_out(&c).await;

    // The tool's owner grants a pre-approval, sees it listed, and revokes it.
    sign_in(&c, &base, &owner).await;
    c.goto(&format!("{base}/approvals")).await.unwrap();
    for (field, value) in [
        ("tool", "ledger.charge"),
        ("agent", AGENT),
        ("reason", "<i>month end</i>"),
    ] {
        css(&c, &format!("#grant input[name={field}]"))
            .await
            .send_keys(value)
            .await
            .unwrap();
    }
    css(&c, "#grant button").await.click().await.unwrap();
    text_when(&c, "#preapprovals tbody tr", |listed| {
        listed.contains("ledger.charge")
            && listed.contains("finance-controller")
            && listed.contains("<i>month end</i>")
    })
    .await;
    assert_eq!(engine.preapprovals(true).await.unwrap().len(), 1);
    css(&c, "#preapprovals tbody tr button")
        .await
        .click()
        .await
        .unwrap();
    css(&c, "#preapprovals td.empty").await;
    assert!(engine.preapprovals(true).await.unwrap().is_empty());
    sign_out(&c).await;

    // The operator halts the agent (after confirming) and lifts the halt.
    engine.pause(&live, "operator:test", None).await.unwrap();
    sign_in(&c, &base, &operator).await;
    c.goto(&format!("{base}/governance")).await.unwrap();
    css(&c, "#halt-form input[name=agent]")
        .await
        .send_keys(AGENT)
        .await
        .unwrap();
    css(&c, "#halt-form input[name=reason]")
        .await
        .send_keys("console drill")
        .await
        .unwrap();
    css(&c, "#halt-form button").await.click().await.unwrap();
    let confirm = format!("Halt agent {AGENT}?");
    text_when(&c, "main h1", |h1| h1 == confirm).await;
    assert!(
        engine.active_halts().is_empty(),
        "nothing before the confirmation"
    );
    css(&c, "#confirm button").await.click().await.unwrap();
    text_when(&c, "tr.halt", |row| {
        row.contains(AGENT) && row.contains("operator:opal") && row.contains("console drill")
    })
    .await;
    assert_eq!(engine.refresh_halts().await.unwrap().len(), 1);
    // The page shows what the halt paused: a task of the agent submitted now
    // is paused by it before its first step, listed and linked.
    let held = api
        .g
        .submit(json!({"agent": AGENT, "reason": "held by the halt",
            "steps": [{"id": "mark", "tool": "kv.put", "input": {"key": "held", "value": 1}}]}))
        .await
        .unwrap();
    api.g.h.wait_for(&held, |s| s == TaskStatus::Paused).await;
    c.goto(&format!("{base}/governance")).await.unwrap();
    css(&c, &format!("tr.halt a.paused-task[href='/tasks/{held}']")).await;
    let listed = css(&c, "tr.halt td.paused").await.text().await.unwrap();
    assert!(
        !listed.contains(&live),
        "a task an operator paused is not the halt's: {listed}"
    );
    css(&c, "tr.halt button").await.click().await.unwrap();
    css(&c, &format!("#confirm-tasks a[href='/tasks/{held}']")).await;
    css(&c, "#confirm button").await.click().await.unwrap();
    css(&c, "#no-halts").await;
    assert!(engine.refresh_halts().await.unwrap().is_empty());
    api.g
        .h
        .wait_for(&held, |s| s == TaskStatus::Completed)
        .await;

    // Every page carries the security headers.
    let r = api.http.get(format!("{base}/signin")).send().await.unwrap();
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'self'")
            && csp.contains("frame-ancestors 'none'")
            && !csp.contains("unsafe-inline")
    );
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert_eq!(r.headers()["referrer-policy"], "same-origin");

    c.close().await.unwrap();
}

/// Signs in over plain HTTP: the session cookie and the page's CSRF token.
async fn http_session(api: &api_server::Api, token: &str) -> (String, String) {
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{}/signin", api.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={token}"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_redirection(), "{}", r.status());
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let (_, page) = get_page(api, "/", &cookie).await;
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a CSRF token on the page")
        .to_string();
    (cookie, csrf)
}

async fn get_page(api: &api_server::Api, path: &str, cookie: &str) -> (StatusCode, String) {
    let r = api
        .http
        .get(format!("{}{path}", api.base))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    (r.status(), r.text().await.unwrap())
}

/// The API over a governed engine with routing's outbox in the same database.
async fn api_with_routing(b: Backend) -> api_server::Api {
    use mandate_routing::wire::{LinkSettings, Responder};
    let g = gov::harness(b).await;
    let outbox = std::sync::Arc::new(
        mandate_routing::outbox::Outbox::open(&g.h.db.url)
            .await
            .unwrap(),
    );
    let state = mandate_api::AppState::new(
        g.h.engine.clone(),
        g.governance.clone(),
        mandate_api::ApiConfig {
            rate_per_second: 100_000,
            rate_burst: 100_000,
            ..Default::default()
        },
    )
    .with_routing(mandate_api::state::RoutingApi {
        responder: Responder {
            engine: g.h.engine.clone(),
            outbox,
            links: LinkSettings {
                secret: b"console-link-secret-0123456789".to_vec(),
                base_url: "http://mandate.test".into(),
                ttl_ms: 3_600_000,
            },
            config: std::sync::Arc::new(mandate_routing::ConfigCell::shipped()),
            clock: mandate_routing::worker::system_clock(),
        },
        slack_signing_secret: None,
    });
    api_server::start_state(g, state).await
}

/// Four notifications about task `id` in routing's outbox, as the follower
/// and the delivery worker leave them: pat's delivered, its chain stopped by
/// pat's answer (pausing the task); quinn's delivered, its chain past the
/// first step; rui's delivered, its next step overdue (the oldest chain);
/// sam's (hostile text) still queued. Returns their ids in that order.
async fn seed_notifications(api: &api_server::Api, id: &str) -> Vec<String> {
    use mandate_routing::outbox::{Escalation, NewNotification};
    use mandate_routing::sinks::Message;
    let id = id.to_string();
    let r = api.state.routing.as_ref().unwrap().clone();
    let outbox = &r.responder.outbox;
    let now = api.g.h.engine.now_ms();
    let mut ids = Vec::new();
    for (i, (recipient, about)) in [
        ("pat", "the ledger was charged"),
        ("quinn", "a step failed"),
        ("rui", "a compensation failed"),
        ("sam", "pay <script>window.pwned=1</script>"),
    ]
    .into_iter()
    .enumerate()
    {
        let key = format!("{id}:{}:{recipient}:hook", 10 + i);
        let e = outbox
            .enqueue(
                &NewNotification {
                    item_key: key.clone(),
                    group_key: key,
                    task_id: id.clone(),
                    recipient: recipient.into(),
                    sink: "hook".into(),
                    address: None,
                    message: Message {
                        title: format!("{AGENT}: monitored"),
                        what_happened: about.into(),
                        task_id: id.clone(),
                        agent: AGENT.into(),
                        path: "monitored_execute".into(),
                        rule: "r".into(),
                        why: "owner".into(),
                        ..Default::default()
                    },
                    // The last stays queued (not yet due).
                    send_at_ms: if i == 3 { now + 3_600_000 } else { now },
                },
                now,
            )
            .await
            .unwrap();
        ids.push(e.id);
    }
    let claimed = outbox.claim("w", now, 60_000, 10).await.unwrap();
    assert_eq!(claimed.len(), 3);
    for c in &claimed {
        assert!(
            outbox
                .finish(&c.id, "w", c.attempt, now, &Ok(()))
                .await
                .unwrap()
        );
    }
    // Chains: pat's (answered below), quinn's past its first step, rui's
    // next step overdue (the oldest).
    for (i, started, fired, due) in [
        (0, now - 60_000, 1, now + 240_000),
        (1, now - 400_000, 2, now + 200_000),
        (2, now - 900_000, 2, now - 300_000),
    ] {
        outbox
            .start_escalation(&Escalation {
                notification_id: ids[i].clone(),
                task_id: id.clone(),
                about_seq: 10 + i as i64,
                chain: "platform-chain".into(),
                started_at_ms: started,
                fired_steps: fired,
                next_due_at_ms: Some(due),
            })
            .await
            .unwrap();
    }
    // pat answers (pausing the task): recorded with the identity, the chain stops.
    let answered = r
        .responder
        .respond(
            &ids[0],
            "pat",
            "token:test",
            false,
            mandate_routing::wire::Answer {
                action: "pause_task".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(answered.escalations_stopped, 1);
    ids
}

/// The coordination page over routing's real tables: each notification's
/// state (acknowledged, escalated, overdue, pending), the time to
/// intervention charted against the seeds' targets, the open escalation
/// chains oldest first, and coverage; what the agent wrote is escaped; an
/// auditor reads it without any button and an agent is refused.
async fn the_coordination_page(b: Backend) {
    let api = api_with_routing(b).await;
    std::fs::write(api.g.dir.path().join("org/console.cedar"), CONSOLE_RULE).unwrap();
    let auditor = api.token("auditor", "audra").await;
    let agent = api.token("agent", AGENT).await;
    let id = api.g.submit(plan("coordination")).await.unwrap();
    api.g
        .h
        .wait_for(&id, |s| s == TaskStatus::NeedsApproval)
        .await;
    let ids = seed_notifications(&api, &id).await;

    let (cookie, _) = http_session(&api, &auditor).await;
    let (status, page) = get_page(&api, "/coordination", &cookie).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    for (n, state) in [
        (0, "acknowledged"),
        (1, "escalated"),
        (2, "overdue"),
        (3, "pending"),
    ] {
        assert!(
            page.contains(&format!(
                "<tr class=\"note {state}\" data-id=\"{}\">",
                ids[n]
            )),
            "notification {n} should be {state}: {page}"
        );
    }
    assert!(page.contains("pause_task by pat after"), "{page}");
    // The chart: pause_task answered within its target, the others not yet.
    assert!(page.contains("<svg id=\"tti-chart\""), "{page}");
    assert!(
        page.contains("<g class=\"tti meets\" data-action=\"pause_task\">"),
        "{page}"
    );
    assert!(
        page.contains("<g class=\"tti no-data\" data-action=\"assign\">"),
        "{page}"
    );
    assert!(page.contains("target 2 min 00 s"), "{page}");
    // Open chains, oldest first; the answered one is not open.
    let esc = page.split("id=\"escalations\"").nth(1).unwrap();
    let (rui, quinn) = (
        esc.find(&format!("data-notification=\"{}\"", ids[2]))
            .expect("rui's chain"),
        esc.find(&format!("data-notification=\"{}\"", ids[1]))
            .expect("quinn's chain"),
    );
    assert!(rui < quinn, "oldest first");
    assert!(
        !esc.split("id=\"notifications\"")
            .next()
            .unwrap()
            .contains(&ids[0])
    );
    assert!(
        page.contains("open <span class=\"count\">2</span>"),
        "{page}"
    );
    assert!(
        page.contains("overdue <span class=\"count\">1</span>"),
        "{page}"
    );
    assert!(
        page.contains("acknowledged <span class=\"count\">1</span>"),
        "{page}"
    );
    assert!(page.contains("Recovery-path coverage"), "{page}");
    // Escaped, and no buttons for an auditor.
    assert!(
        page.contains("pay &#60;script&#62;") || page.contains("pay &lt;script&gt;"),
        "{page}"
    );
    assert!(!page.contains("<script>window"), "{page}");
    let main = page.split("<main>").nth(1).unwrap();
    assert!(!main.contains("<form"), "an auditor sees no action");

    // An agent may not read it.
    let (agent_cookie, _) = http_session(&api, &agent).await;
    let (status, page) = get_page(&api, "/coordination", &agent_cookie).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{page}");
}

/// The approval panel's edit check over HTTP: the preview shows the
/// gateway's decision for the edited input (proceeds, superseded by a
/// stricter request, denied) and records nothing; it is refused without the
/// CSRF token, to an auditor and to an approver the request does not name;
/// the submitted edit is recorded with the same decision the preview showed.
async fn the_edit_is_checked_before_it_is_submitted(b: Backend) {
    let api = api_server::start(b).await;
    std::fs::write(api.g.dir.path().join("org/console.cedar"), CONSOLE_RULE).unwrap();
    let alice = api.token("approver", "alice").await;
    let auditor = api.token("auditor", "audra").await;
    let bob = api.token("approver", "bob").await;
    let engine = &api.g.h.engine;
    let id = api.g.submit(plan("edit me")).await.unwrap();
    api.g
        .h
        .wait_for(&id, |s| s == TaskStatus::NeedsApproval)
        .await;
    let (entries, _) = engine.approval_inbox(Some(&id), None).await.unwrap();
    let preview = format!("/approvals/{}/preview", entries[0].id);
    let before = last_seq(&api, &id).await;

    let (cookie, csrf) = http_session(&api, &alice).await;
    for (edit, verdict, says) in [
        (
            r#"{"amount_cents": 400}"#,
            "proceeds",
            "runs with the edited input",
        ),
        (
            r#"{"amount_cents": 5000}"#,
            "superseded",
            "a new request goes to alice, bob, finance-controller (quorum 2)",
        ),
        (
            r#"{"amount_cents": 2000000}"#,
            "denied",
            "org.payments.huge-forbidden",
        ),
    ] {
        let (status, page) =
            post_form(&api, &preview, &cookie, &[("csrf", &csrf), ("edit", edit)]).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert!(
            page.contains(&format!("data-verdict=\"{verdict}\"")) && page.contains(says),
            "{edit} should be {verdict}: {page}"
        );
    }
    // Refused: no CSRF token, an auditor, an approver the request does not name.
    let (status, _) = post_form(
        &api,
        &preview,
        &cookie,
        &[("edit", r#"{"amount_cents": 400}"#)],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    for token in [&auditor, &bob] {
        let (cookie, csrf) = http_session(&api, token).await;
        let (status, page) = post_form(
            &api,
            &preview,
            &cookie,
            &[("csrf", &csrf), ("edit", r#"{"amount_cents": 400}"#)],
        )
        .await;
        assert!(status.is_client_error(), "{status} {page}");
    }
    assert_eq!(last_seq(&api, &id).await, before, "checks record nothing");

    // Submitted: the recorded re-check is the one the preview showed.
    let mut updates = engine.subscribe();
    let (status, page) = post_form(
        &api,
        &format!("/approvals/{}", entries[0].id),
        &cookie,
        &[
            ("csrf", &csrf),
            ("decision", "edit"),
            ("edit", r#"{"amount_cents": 5000}"#),
        ],
    )
    .await;
    assert!(status.is_success(), "{status} {page}");
    // The worker re-checks it when it decides the task next: wait for that.
    let deadline = tokio::time::Instant::now() + WAIT;
    let recorded = loop {
        let found = engine
            .history(&id)
            .await
            .unwrap()
            .into_iter()
            .find_map(|e| match e.payload {
                mandate_engine::EventPayload::ApprovalEditEvaluated { decision, .. } => {
                    Some(decision)
                }
                _ => None,
            });
        if let Some(d) = found {
            break d;
        }
        assert!(
            tokio::time::timeout_at(deadline, updates.recv())
                .await
                .is_ok(),
            "the edit was never re-checked"
        );
    };
    let approval = recorded.approval.clone().unwrap();
    assert_eq!(
        (
            recorded.path.to_string(),
            approval.approvers.join(", "),
            approval.quorum
        ),
        (
            "gated_execute".into(),
            "alice, bob, finance-controller".into(),
            2
        )
    );
}

use mandate_api::console::format_time as console_time;

/// The task ids an inbox page lists, in order.
fn listed(page: &str) -> Vec<String> {
    page.split("<td><a href=\"/tasks/")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap().to_string())
        .collect()
}

/// The inbox's time filter: tasks created in [since, until] only, newest
/// first, paged by keyset with the filter kept on the next page's link (and
/// on the live poll); a time it cannot read is refused, naming the field.
async fn the_inbox_filters_by_time(b: Backend) {
    let api = api_server::start(b).await;
    let operator = api.token("operator", "opal").await;
    let engine = &api.g.h.engine;
    let kv = |n: usize| {
        json!({"agent": AGENT, "reason": format!("task {n}"),
            "steps": [{"id": "mark", "tool": "kv.put", "input": {"key": format!("k{n}"), "value": n}}]})
    };
    // Each group starts on a later millisecond than the one before, so the
    // window's edges fall between groups.
    let next_ms = |after: i64| async move {
        while engine.now_ms() <= after {
            tokio::task::yield_now().await;
        }
    };
    let created = |id: String| async move { engine.task(&id).await.unwrap().created_at_ms };
    let early = api.g.submit(kv(0)).await.unwrap();
    next_ms(created(early.clone()).await).await;
    let n_inside = mandate_api::console::PAGE_SIZE as usize + 3;
    let mut inside = Vec::new();
    for n in 1..=n_inside {
        inside.push(api.g.submit(kv(n)).await.unwrap());
    }
    let (first, last) = (
        created(inside[0].clone()).await,
        created(inside[n_inside - 1].clone()).await,
    );
    next_ms(last).await;
    let late = api.g.submit(kv(99)).await.unwrap();

    let (cookie, _) = http_session(&api, &operator).await;
    let enc = |ms: i64| console_time(ms).replace(' ', "+").replace(':', "%3A");
    let q = format!("since={}&until={}", enc(first), enc(last));
    let (status, page) = get_page(&api, &format!("/?{q}"), &cookie).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let page1 = listed(&page);
    assert_eq!(page1.len(), mandate_api::console::PAGE_SIZE as usize);
    assert!(
        page.contains(&format!("hx-get=\"/inbox/rows?{}", q.replace('&', "&#38;")))
            || page.contains(&format!("hx-get=\"/inbox/rows?{}", q.replace('&', "&amp;"))),
        "the live poll keeps the filter: {page}"
    );
    let next = page
        .split("id=\"next-page\"")
        .next()
        .and_then(|p| p.rsplit("<a href=\"").next())
        .map(|h| {
            h.split('"')
                .next()
                .unwrap()
                .replace("&#38;", "&")
                .replace("&amp;", "&")
        })
        .expect("a next page");
    assert!(
        next.contains("since=") && next.contains("until=") && next.contains("cursor="),
        "{next}"
    );
    let (status, page) = get_page(&api, &next, &cookie).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let page2 = listed(&page);
    let mut all: Vec<String> = page1.into_iter().chain(page2).collect();
    assert!(
        !all.contains(&early) && !all.contains(&late),
        "outside the window"
    );
    all.sort();
    let mut want = inside.clone();
    want.sort();
    assert_eq!(all, want, "every task of the window, once");
    // The live rows honour it too.
    let (_, rows) = get_page(&api, &format!("/inbox/rows?{q}"), &cookie).await;
    assert!(!listed(&rows).contains(&late) && listed(&rows).contains(&inside[n_inside - 1]));
    // As a browser's datetime field writes it, to the minute: nothing of
    // ours was created before yesterday ended; all of it since the minute
    // the first began.
    let minute = |ms: i64| console_time(ms)[..16].replace(' ', "T").replace(':', "%3A");
    let (_, page) = get_page(
        &api,
        &format!("/?until={}", minute(first - 86_400_000)),
        &cookie,
    )
    .await;
    assert!(listed(&page).is_empty(), "{page}");
    let (_, page) = get_page(&api, &format!("/?since={}", minute(first)), &cookie).await;
    assert!(listed(&page).contains(&late), "{page}");
    let (status, page) = get_page(&api, "/?since=last%20tuesday", &cookie).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        page.contains("since: &#34;last tuesday&#34; is not a time")
            || page.contains("since: &quot;last tuesday&quot; is not a time"),
        "{page}"
    );
}

/// Reads a server-sent stream until its text contains `want` (30 s).
async fn read_until(r: &mut reqwest::Response, want: &str) -> String {
    let mut seen = String::new();
    tokio::time::timeout(WAIT, async {
        while !seen.contains(want) {
            match r.chunk().await.unwrap() {
                Some(c) => seen.push_str(&String::from_utf8_lossy(&c)),
                None => panic!("the stream ended before {want:?}; it sent {seen:?}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {want:?} within 30 s; the stream sent {seen:?}"));
    seen
}

/// The task page's live stream: an `update` as soon as the task is past the
/// seq the page showed, and on each append after; the token's stream quota
/// holds (a stream over it is refused, and its place comes back when a
/// page goes away); signing out ends the stream.
async fn the_task_stream_tells_the_page_to_update(b: Backend) {
    let api = api_server::start_with(
        b,
        mandate_api::ApiConfig {
            rate_per_second: 100_000,
            rate_burst: 100_000,
            max_streams_per_token: 2,
            ..Default::default()
        },
    )
    .await;
    std::fs::write(api.g.dir.path().join("org/console.cedar"), CONSOLE_RULE).unwrap();
    let operator = api.token("operator", "opal").await;
    let engine = &api.g.h.engine;
    let id = api.g.submit(plan("streamed")).await.unwrap();
    api.g
        .h
        .wait_for(&id, |s| s == TaskStatus::NeedsApproval)
        .await;
    let (cookie, csrf) = http_session(&api, &operator).await;
    let open = |after: i64| {
        api.http
            .get(format!("{}/tasks/{id}/stream?after={after}", api.base))
            .header("cookie", &cookie)
            .send()
    };
    // Behind: told at once.
    let seq = last_seq(&api, &id).await;
    let mut behind = open(seq - 1).await.unwrap();
    assert_eq!(behind.status(), StatusCode::OK);
    assert_eq!(behind.headers()["content-type"], "text/event-stream");
    read_until(&mut behind, &format!("event: update\ndata: {seq}\n")).await;
    // Up to date: told on the next append.
    let mut current = open(seq).await.unwrap();
    assert_eq!(current.status(), StatusCode::OK);
    engine.pause(&id, "operator:test", None).await.unwrap();
    let paused = last_seq(&api, &id).await;
    read_until(&mut current, &format!("event: update\ndata: {paused}\n")).await;
    // The token's quota: a third stream is refused while two are open.
    let third = open(paused).await.unwrap();
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    drop(behind);
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut again = loop {
        let r = open(paused).await.unwrap();
        if r.status() == StatusCode::OK {
            break r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the closed stream's place never came back"
        );
        tokio::task::yield_now().await;
    };
    // Signing out ends the open streams.
    let (status, _) = post_form(&api, "/signout", &cookie, &[("csrf", &csrf)]).await;
    assert!(status.is_success() || status.is_redirection());
    for r in [&mut current, &mut again] {
        let ended =
            tokio::time::timeout(WAIT, async { while r.chunk().await.unwrap().is_some() {} }).await;
        assert!(ended.is_ok(), "the stream outlived the session");
    }
}

backend_tests!(
    the_console_in_a_browser,
    the_task_stream_tells_the_page_to_update,
    the_coordination_page,
    the_edit_is_checked_before_it_is_submitted,
    the_inbox_filters_by_time
);
