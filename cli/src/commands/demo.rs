//! `mandate demo`: the product's story in one command, with no setup.
//!
//! 1. An agent's plan (agent-deployer-7 for user-alice): its monitored
//!    step runs at once and its owner is notified; its gated step waits
//!    until the named approver, user-bob, approves through the one-click
//!    signed link in his notification (a second click is refused).
//! 2. Two deploys of the service `checkout` as durable sagas: one
//!    completes, the other fails its health check and the engine rolls it
//!    back with the compensation it recorded before the deploy ran.
//! 3. Every history is replayed from the database (hash chain, derived
//!    rows, workflow code), then the demo points to the console.
//!
//! Notifications go to a local webhook receiver the demo starts, which
//! checks each delivery's HMAC signature and prints what arrives; the
//! links point at the API the demo serves on a loopback port. The demo's
//! policies (the shipped catalog and baseline, plus a rule that gates
//! billing on user-bob) and its ownership map (the shipped one, with its
//! contacts pointed at the receiver) live in a temporary directory.
//!
//! Without `--db` (or `MANDATE_DATABASE_URL`) it works in a fresh temporary
//! SQLite database, removed at the end, so it never leaves a file behind.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use mandate_activities::World;
use mandate_activities::demo::{INITIAL_VERSION, namespaces};
use mandate_engine::core::state::Outcome;
use mandate_engine::{Engine, SubmitOptions, TaskState, TaskStatus, WorkerConfig, audit};
use serde_json::json;

use crate::app::{self, Database};
use crate::{summary, timeline};

const SERVICE: &str = "checkout";
const WORKFLOW: &str = "deploy_with_rollback";
const WAIT: Duration = Duration::from_secs(30);

/// One deploy the demo runs.
struct Deploy {
    version: &'static str,
    why: &'static str,
    expected: TaskStatus,
}

const DEPLOYS: [Deploy; 2] = [
    Deploy {
        version: "v2",
        why: "a healthy version: the task should complete",
        expected: TaskStatus::Completed,
    },
    Deploy {
        version: "v3-bad",
        why: "its health check fails: the deploy should be rolled back",
        expected: TaskStatus::FailedTerminal,
    },
];

/// What became of one deploy.
struct Ran {
    deploy: &'static Deploy,
    task_id: String,
    status: TaskStatus,
    took_ms: i64,
    before: String,
    after: String,
    state: TaskState,
    timeline: Vec<String>,
}

pub async fn run(db: &Database) -> anyhow::Result<ExitCode> {
    // Kept alive until the end of the demo; dropping it deletes the database.
    let mut temp_dir = None;
    let db = if db.explicit {
        db.clone()
    } else {
        let dir = tempfile::Builder::new()
            .prefix("mandate-demo-")
            .tempdir()
            .context("cannot create a temporary directory for the demo database; pass --db URL")?;
        let url = format!("sqlite://{}", dir.path().join("demo.db").display());
        temp_dir = Some(dir);
        Database {
            url,
            explicit: true,
        }
    };
    let mut out = std::io::stdout();
    writeln!(
        out,
        "Mandate demo: an agent's plan routed to its owners, a gated step approved through a one-click link, and two deploys of service {SERVICE} as durable sagas ({WORKFLOW})."
    )?;
    if temp_dir.is_some() {
        writeln!(
            out,
            "database: {} (temporary, removed when the demo ends; pass --db URL to keep one)",
            db.shown()
        )?;
    } else {
        writeln!(out, "database: {}", db.shown())?;
    }

    let secret = crate::commands::serve::random_secret();
    let receiver = Receiver::start(secret.clone()).await?;
    let policy_dir = tempfile::Builder::new()
        .prefix("mandate-demo-policy-")
        .tempdir()
        .context("cannot create a temporary directory for the demo's policies")?;
    let (governance, routing) = demo_policies(policy_dir.path(), &receiver.url, &secret)?;
    let (engine, world) = app::open_engine_with(&db, governance.clone(), routing.clone()).await?;
    let worker = engine.start_worker(WorkerConfig {
        id: format!("demo-{}", std::process::id()),
        ..WorkerConfig::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen on a loopback port for the demo's API")?;
    let api = format!(
        "http://{}",
        listener.local_addr().context("no local address")?
    );
    let links = mandate_routing::wire::LinkSettings {
        secret: crate::commands::serve::random_secret(),
        base_url: api.clone(),
        ttl_ms: 3_600_000,
    };
    let (follower, delivery, responder) =
        crate::commands::serve::start_routing_with(&db, &engine, routing, links, 30_000).await?;
    let outbox = responder.outbox.clone();
    let state = mandate_api::AppState::new(
        engine.clone(),
        governance.clone(),
        mandate_api::ApiConfig::default(),
    )
    .with_routing(mandate_api::RoutingApi {
        responder,
        slack_signing_secret: None,
    });
    let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let http = tokio::spawn(mandate_api::serve(listener, state, async {
        let _ = api_stopped.await;
    }));
    writeln!(
        out,
        "receiver: {} (a webhook receiver this demo started: it checks each delivery's HMAC signature and prints it)",
        receiver.url
    )?;
    writeln!(
        out,
        "API:      {api} (in this process; one-click links point here)"
    )?;
    writeln!(out, "worker:   {} (in this process)", worker.id())?;

    let story = async {
        let mut arrivals = receiver.arrivals.lock().await;
        let mut seen = Vec::new();
        let planned = run_plan(&engine, &mut out, &mut arrivals, &mut seen).await?;
        writeln!(
            out,
            "\n{SERVICE} before the deploys: {}",
            describe_version(&version_of(&world).await?)
        )?;
        let mut runs = Vec::new();
        for (i, deploy) in DEPLOYS.iter().enumerate() {
            writeln!(
                out,
                "\n[{}/{}] deploy {SERVICE} {} ({})",
                i + 2,
                DEPLOYS.len() + 1,
                deploy.version,
                deploy.why
            )?;
            let ran = run_one(&engine, &world, deploy).await?;
            writeln!(
                out,
                "      task {} → {} in {}; {SERVICE} is now at {}",
                ran.task_id,
                ran.status,
                summary::duration(ran.took_ms),
                ran.after
            )?;
            runs.push(ran);
        }
        // Every owner the histories name hears of it before the demo ends.
        let mut tasks = vec![planned.task_id.clone()];
        tasks.extend(runs.iter().map(|r| r.task_id.clone()));
        writeln!(out, "\nnotifications still on their way:")?;
        await_deliveries(&engine, &outbox, &tasks, &mut arrivals, &mut seen, &mut out).await?;
        anyhow::Ok((planned, runs))
    };
    let result = story.await;
    let _ = stop_api.send(());
    let _ = http.await;
    follower.shutdown().await;
    delivery.shutdown().await;
    worker.shutdown().await;
    let (planned, runs) = result.context("the demo could not finish")?;

    writeln!(
        out,
        "\ntimeline of task {} (agent-deployer-7's plan), times UTC:",
        planned.task_id
    )?;
    for line in &planned.timeline {
        writeln!(out, "  {line}")?;
    }
    for ran in &runs {
        writeln!(
            out,
            "\ntimeline of task {} (deploy {SERVICE} {}), times UTC:",
            ran.task_id, ran.deploy.version
        )?;
        for line in &ran.timeline {
            writeln!(out, "  {line}")?;
        }
    }

    // The proof: every history read back from the database and replayed.
    writeln!(
        out,
        "\nreplay (what `mandate replay <task>` checks), from the database:"
    )?;
    let store = engine.store();
    let registry = mandate_workflows::registry_with(governance);
    let mut intact = true;
    let mut ids = vec![planned.task_id.clone()];
    ids.extend(runs.iter().map(|r| r.task_id.clone()));
    for id in &ids {
        let a = audit::audit_task(
            store.as_ref(),
            &registry,
            id,
            &audit::AuditOptions::default(),
        )
        .await?;
        let ok = a.verdict == audit::Verdict::Ok;
        intact &= ok;
        writeln!(
            out,
            "  {id}  {}: {} events; {}",
            if ok { "intact" } else { "NOT INTACT" },
            a.event_count,
            if ok {
                "hash chain verified, derived rows match, the workflow code replays it exactly"
                    .to_string()
            } else {
                format!("{:?}", a.verdict)
            }
        )?;
    }

    writeln!(out, "\nsummary:")?;
    for ran in &runs {
        writeln!(out, "  {}", summary_line(ran))?;
    }
    writeln!(
        out,
        "  {}  {:<15}  plan: owner notified of the monitored step; the gated step approved by {} through a one-click link",
        planned.task_id,
        planned.status.as_str(),
        APPROVER
    )?;
    writeln!(
        out,
        "\nNext: `mandate serve` runs the worker, the API and the web console on ./mandate.db: open http://127.0.0.1:7700/ (sign in with a token from `mandate token create --role operator --name you`) to see the inbox, tasks and approvals; `mandate submit {WORKFLOW} --input '{{\"service\":\"{SERVICE}\",\"version\":\"v4\"}}'` submits to it."
    )?;
    out.flush()?;

    if let Some(ran) = runs.iter().find(|r| r.status != r.deploy.expected) {
        return Err(anyhow::anyhow!(
            "demo: task {} ended {}, but {} was expected; see its timeline above",
            ran.task_id,
            ran.status,
            ran.deploy.expected
        ));
    }
    if planned.status != TaskStatus::Completed {
        return Err(anyhow::anyhow!(
            "demo: the plan {} ended {}, but completed was expected; see its timeline above",
            planned.task_id,
            planned.status
        ));
    }
    if !intact {
        return Err(anyhow::anyhow!(
            "demo: a history did not replay intact; see above"
        ));
    }
    drop(policy_dir);
    drop(temp_dir);
    Ok(ExitCode::SUCCESS)
}

/// The approver the demo's policy names for billing.
const APPROVER: &str = "user-bob";
/// The demo's own rule: charging a customer waits for user-bob.
const DEMO_POLICY: &str = r#"@id("demo.billing-approval")
@message("charging a customer needs Bob's approval")
@role("gate")
@path("gated_execute")
@approvers("user-bob")
permit(principal, action == Action::"ledger.charge", resource);
"#;

/// Writes the demo's policy directory: the shipped catalog and baseline, a
/// rule gating billing on user-bob, and the shipped ownership map with its
/// contacts pointed at the receiver (notifications sent at once).
fn demo_policies(
    dir: &std::path::Path,
    receiver: &str,
    secret: &[u8],
) -> anyhow::Result<(
    std::sync::Arc<mandate_activities::Governance>,
    std::sync::Arc<mandate_routing::ConfigCell>,
)> {
    use mandate_activities::policy::{DEFAULT_CATALOG_YAML, DEFAULT_ORG_POLICY};
    std::fs::create_dir_all(dir.join("org"))?;
    std::fs::write(dir.join("catalog.yaml"), DEFAULT_CATALOG_YAML)?;
    std::fs::write(dir.join("org/baseline.cedar"), DEFAULT_ORG_POLICY)?;
    std::fs::write(dir.join("org/demo.cedar"), DEMO_POLICY)?;
    let secret = String::from_utf8_lossy(secret).to_string();
    let owners = mandate_routing::config::SHIPPED_OWNERS_YAML
        .replace(
            "{id: log, kind: log}",
            &format!("{{id: receiver, kind: webhook, url: '{receiver}', secret: '{secret}'}}"),
        )
        .replace("{sink: log}", "{sink: receiver}")
        .replace("group_wait_seconds: 30", "group_wait_seconds: 0");
    let routing = mandate_routing::RoutingConfig::from_yaml("demo owners.yaml", &owners)
        .map_err(|e| anyhow::anyhow!("the demo's ownership map: {e}"))?;
    let governance = mandate_activities::Governance::load_dir(dir)
        .map_err(|e| anyhow::anyhow!("the demo's policies: {e}"))?;
    Ok((
        std::sync::Arc::new(governance),
        std::sync::Arc::new(mandate_routing::ConfigCell::fixed(routing)),
    ))
}

/// One delivery the receiver accepted (its signature verified).
#[derive(Debug, Clone)]
struct Arrival {
    id: String,
    recipient: String,
    task_id: String,
    line: String,
    links: Vec<(String, String)>,
}

/// The local webhook receiver: verifies each delivery's HMAC signature
/// (refusing a bad one with 401) and hands it over in arrival order.
struct Receiver {
    url: String,
    arrivals: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Arrival>>,
}

impl Receiver {
    async fn start(secret: Vec<u8>) -> anyhow::Result<Receiver> {
        use axum::http::{HeaderMap, StatusCode};
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let (tx, secret) = (tx.clone(), secret.clone());
                async move {
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string()
                    };
                    let now_s = chrono::Utc::now().timestamp();
                    if mandate_routing::sign::verify_webhook(
                        &secret,
                        &header("x-mandate-signature"),
                        &body,
                        now_s,
                        300,
                    )
                    .is_err()
                    {
                        return StatusCode::UNAUTHORIZED;
                    }
                    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
                        return StatusCode::BAD_REQUEST;
                    };
                    let m = &v["message"];
                    let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
                    let links = m["responses"]
                        .as_array()
                        .map(|a| a.iter().map(|r| (s(&r["action"]), s(&r["url"]))).collect())
                        .unwrap_or_default();
                    let actions: Vec<String> = m["responses"]
                        .as_array()
                        .map(|a| a.iter().map(|r| s(&r["action"])).collect())
                        .unwrap_or_default();
                    let id = header("x-mandate-notification-id");
                    let line = format!(
                        "receiver ← notification {} for {} (signature ok): {}: {} [rule {}; links: {}]",
                        id.get(..8).unwrap_or(&id),
                        s(&v["recipient"]),
                        summary::text(&s(&m["title"]), 60),
                        summary::text(&s(&m["what_happened"]), 110),
                        s(&m["rule"]),
                        actions.join(", ")
                    );
                    let _ = tx.send(Arrival {
                        id,
                        recipient: s(&v["recipient"]),
                        task_id: s(&m["task_id"]),
                        line,
                        links,
                    });
                    StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot listen on a loopback port for the demo's receiver")?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Receiver {
            url,
            arrivals: tokio::sync::Mutex::new(rx),
        })
    }
}

/// Returns the first arrival (received before or now) that satisfies
/// `want`, printing new ones as they come; fails after [`WAIT`].
async fn next_arrival(
    arrivals: &mut tokio::sync::mpsc::UnboundedReceiver<Arrival>,
    out: &mut std::io::Stdout,
    seen: &mut Vec<Arrival>,
    what: &str,
    want: impl Fn(&Arrival) -> bool,
) -> anyhow::Result<Arrival> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(a) = seen.iter().find(|a| want(a)) {
            return Ok(a.clone());
        }
        let a = tokio::time::timeout_at(deadline, arrivals.recv())
            .await
            .map_err(|_| anyhow::anyhow!("no notification {what} arrived within {WAIT:?}"))?
            .ok_or_else(|| anyhow::anyhow!("the receiver stopped"))?;
        record(seen, a, out)?;
    }
}

/// Keeps and prints an arrival the first time its id is seen.
fn record(seen: &mut Vec<Arrival>, a: Arrival, out: &mut std::io::Stdout) -> std::io::Result<()> {
    if !seen.iter().any(|s| s.id == a.id) {
        writeln!(out, "  {}", a.line)?;
        seen.push(a);
    }
    Ok(())
}

/// What became of the agent's plan.
struct Planned {
    task_id: String,
    status: TaskStatus,
    timeline: Vec<String>,
}

/// The agent's plan: a monitored step its owner hears of, then a gated
/// step the named approver approves through his one-click link.
async fn run_plan(
    engine: &Engine,
    out: &mut std::io::Stdout,
    arrivals: &mut tokio::sync::mpsc::UnboundedReceiver<Arrival>,
    seen: &mut Vec<Arrival>,
) -> anyhow::Result<Planned> {
    writeln!(
        out,
        "\n[1/{}] agent-deployer-7, for user-alice, plans: turn on the flag checkout-v2 (monitored: runs at once, its owner is told), then bill account acme 49.00 (gated: waits for {APPROVER})",
        DEPLOYS.len() + 1
    )?;
    let plan = json!({"agent": "agent-deployer-7", "on_behalf_of": "user-alice",
        "reason": "launch checkout v2 and bill acme for the upgrade",
        "steps": [
            {"id": "flag", "tool": "flag.set", "input": {"flag": "checkout-v2", "value": true}},
            {"id": "bill", "tool": "ledger.charge", "depends_on": ["flag"],
             "input": {"account": "acme", "amount_cents": 4900}}]});
    let task_id = engine
        .submit(
            "plan",
            plan,
            SubmitOptions {
                agent: Some("agent-deployer-7".into()),
                on_behalf_of: Some("user-alice".into()),
                ..SubmitOptions::default()
            },
        )
        .await?
        .task_id;
    writeln!(out, "      task {task_id} submitted")?;
    let t = task_id.clone();
    next_arrival(arrivals, out, seen, "to the flag's owner", |a| {
        a.task_id == t && a.recipient == "team-platform"
    })
    .await?;
    let ask = next_arrival(arrivals, out, seen, "to the approver", |a| {
        a.task_id == t && a.recipient == APPROVER && a.links.iter().any(|(k, _)| k == "approve")
    })
    .await?;
    let url = ask
        .links
        .iter()
        .find(|(k, _)| k == "approve")
        .map(|(_, u)| u.clone())
        .unwrap_or_default();
    let http = reqwest::Client::new();
    let click = http.get(&url).send().await?;
    let status = click.status();
    let answer: serde_json::Value = click.json().await.unwrap_or_default();
    if !status.is_success() {
        anyhow::bail!("the approve link answered {status}: {answer}");
    }
    writeln!(
        out,
        "      {APPROVER} clicks \"Approve\" in his notification (GET /v1/links/…, signed for him, single use): {} as {}",
        answer["action"].as_str().unwrap_or("?"),
        answer["identity"].as_str().unwrap_or("?")
    )?;
    let again = http.get(&url).send().await?;
    writeln!(
        out,
        "      a second click on the same link is refused: {}",
        again.status()
    )?;
    let row = engine.wait_until_final(&task_id, WAIT).await?;
    writeln!(
        out,
        "      task {task_id} → {} in {}",
        row.status,
        summary::duration(row.updated_at_ms - row.created_at_ms)
    )?;
    let events = engine.history(&task_id).await?;
    Ok(Planned {
        task_id,
        status: row.status,
        timeline: timeline::render(&events),
    })
}

/// Waits until every delivery the histories of `tasks` call for has
/// reached the receiver, printing each as it arrives.
async fn await_deliveries(
    engine: &Engine,
    outbox: &mandate_routing::outbox::Outbox,
    tasks: &[String],
    arrivals: &mut tokio::sync::mpsc::UnboundedReceiver<Arrival>,
    seen: &mut Vec<Arrival>,
    out: &mut std::io::Stdout,
) -> anyhow::Result<()> {
    use mandate_engine::EventPayload;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut missing = 0usize;
        for t in tasks {
            for e in engine.history(t).await? {
                let EventPayload::OwnersNotified { about_seq, routing } = &e.payload else {
                    continue;
                };
                for r in &routing.recipients {
                    for c in &r.contacts {
                        let key = mandate_engine::core::routing::item_key(
                            t,
                            *about_seq,
                            &r.recipient,
                            &c.sink,
                        );
                        match outbox.item_notification(&key).await? {
                            Some(id) if seen.iter().any(|a| a.id == id) => {}
                            _ => missing += 1,
                        }
                    }
                }
            }
        }
        if missing == 0 {
            return Ok(());
        }
        // Not enqueued or not delivered yet: wait for the next arrival (the
        // follower enqueues on every engine update, the worker sends at once).
        match tokio::time::timeout(Duration::from_millis(500), arrivals.recv()).await {
            Ok(Some(a)) => record(seen, a, out)?,
            Ok(None) => anyhow::bail!("the receiver stopped"),
            Err(_) if tokio::time::Instant::now() >= deadline => {
                anyhow::bail!("{missing} notification(s) did not arrive within {WAIT:?}")
            }
            Err(_) => {}
        }
    }
}

async fn run_one(engine: &Engine, world: &World, deploy: &'static Deploy) -> anyhow::Result<Ran> {
    let before = version_of(world).await?;
    let submitted = engine
        .submit(
            WORKFLOW,
            json!({"service": SERVICE, "version": deploy.version}),
            SubmitOptions {
                agent: Some("agent-deployer-7".into()),
                on_behalf_of: Some("user-alice".into()),
                ..SubmitOptions::default()
            },
        )
        .await?;
    let task_id = submitted.task_id;
    let row = engine.wait_until_final(&task_id, WAIT).await?;
    let events = engine.history(&task_id).await?;
    Ok(Ran {
        deploy,
        status: row.status,
        took_ms: row.updated_at_ms - row.created_at_ms,
        before,
        after: version_of(world).await?,
        state: TaskState::fold(&events),
        timeline: timeline::render(&events),
        task_id,
    })
}

/// The deployed version of the demo service, as the demo tools see it.
async fn version_of(world: &World) -> anyhow::Result<String> {
    let resource = world.get(namespaces::SERVICE, SERVICE).await?;
    Ok(resource
        .as_ref()
        .and_then(|v| v.get("version"))
        .and_then(|v| v.as_str())
        .unwrap_or(INITIAL_VERSION)
        .to_string())
}

fn describe_version(version: &str) -> String {
    if version == INITIAL_VERSION {
        format!("{version} (never deployed)")
    } else {
        version.to_string()
    }
}

fn summary_line(ran: &Ran) -> String {
    let what = match ran.status {
        TaskStatus::Completed => format!(
            "{SERVICE} {} → {}: {}",
            ran.before,
            ran.after,
            summary::json(ran.state.output.as_ref().unwrap_or(&json!(null)), 80)
        ),
        TaskStatus::FailedTerminal => {
            let compensated = ran
                .state
                .compensations
                .values()
                .filter(|c| matches!(c.outcome, Some(Outcome::Completed { .. })))
                .count();
            format!(
                "{SERVICE} {} → {} → rolled back to {} ({compensated} step(s) compensated): {}",
                ran.before,
                ran.deploy.version,
                ran.after,
                summary::text(
                    ran.state.error.as_deref().unwrap_or("no error recorded"),
                    100
                )
            )
        }
        _ => format!(
            "{SERVICE} {} → {}: {}",
            ran.before,
            ran.after,
            summary::text(
                ran.state.error.as_deref().unwrap_or("no error recorded"),
                100
            )
        ),
    };
    format!("{}  {:<15}  {what}", ran.task_id, ran.status.as_str())
}
