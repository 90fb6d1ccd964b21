//! `mandate demo`: the first thing a newcomer runs. Two deploys of the
//! service `checkout`, with a worker in this process: one completes, the
//! other fails its health check and the engine rolls the deploy back using
//! the compensation it recorded before the deploy ran. Prints the service's
//! version before and after each, both timelines, and a summary.
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
use mandate_engine::{Engine, SubmitOptions, TaskState, TaskStatus, WorkerConfig};
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
        "Mandate demo: two deploys of service {SERVICE} as durable sagas ({WORKFLOW})."
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

    let (engine, world) = app::open_engine(&db).await?;
    let worker = engine.start_worker(WorkerConfig {
        id: format!("demo-{}", std::process::id()),
        ..WorkerConfig::default()
    });
    writeln!(out, "worker:   {} (in this process)\n", worker.id())?;
    writeln!(
        out,
        "{SERVICE} before: {}",
        describe_version(&version_of(&world).await?)
    )?;

    let mut runs = Vec::new();
    let mut failure = None;
    for (i, deploy) in DEPLOYS.iter().enumerate() {
        writeln!(
            out,
            "\n[{}/{}] deploy {SERVICE} {} ({})",
            i + 1,
            DEPLOYS.len(),
            deploy.version,
            deploy.why
        )?;
        match run_one(&engine, &world, deploy).await {
            Ok(ran) => {
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
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    worker.shutdown().await;
    let failure = match failure {
        Some(e) => return Err(e.context("the demo could not finish")),
        None => runs.iter().find(|r| r.status != r.deploy.expected),
    };

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
    writeln!(out, "\nsummary:")?;
    for ran in &runs {
        writeln!(out, "  {}", summary_line(ran))?;
    }
    writeln!(
        out,
        "\nNext: `mandate serve` runs a worker on ./mandate.db; `mandate submit {WORKFLOW} --input '{{\"service\":\"{SERVICE}\",\"version\":\"v4\"}}'` submits to it."
    )?;
    out.flush()?;

    if let Some(ran) = failure {
        return Err(anyhow::anyhow!(
            "demo: task {} ended {}, but {} was expected; see its timeline above",
            ran.task_id,
            ran.status,
            ran.deploy.expected
        ));
    }
    drop(temp_dir);
    Ok(ExitCode::SUCCESS)
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
