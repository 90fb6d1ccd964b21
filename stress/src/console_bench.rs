//! `mandate-stress console-bench`: the web console's two heavy pages, served
//! over loopback by this process on a fresh database (no worker: the tasks
//! stay where they are while they are read).
//!
//! 1. a task page (`GET /tasks/{id}`) whose history has `--events` events
//!    (pause/resume pairs after the submission): the history read and
//!    verified, folded, the timeline rendered;
//! 2. the inbox (`GET /`, counts per status and the first page; rows in a
//!    creation-time window, as the since/until filter asks) with
//!    `--tasks` tasks, and keyset paging: `--pages` pages followed through
//!    their `next` links, and a status filter.
//!
//! Reports p50/p99 of each over `--reads` sequential requests. Measures
//! only; asserts nothing (a benchmark, not a test).

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use futures::StreamExt;
use mandate_activities::{ToolRegistry, World};
use mandate_api::{ApiConfig, AppState};
use mandate_engine::{Engine, SubmitOptions};
use serde_json::json;

use crate::freshdb::FreshDb;
use crate::stats::percentile;

#[derive(clap::Args, Debug)]
pub struct ConsoleBenchArgs {
    /// `sqlite`, or a PostgreSQL URL whose server gets a fresh database
    #[arg(long, default_value = "sqlite")]
    pub db: String,
    /// Tasks in the inbox
    #[arg(long, default_value_t = 100_000)]
    pub tasks: usize,
    /// Events in the task page's history
    #[arg(long, default_value_t = 1_000)]
    pub events: usize,
    /// Inbox pages followed through their next links
    #[arg(long, default_value_t = 100)]
    pub pages: usize,
    /// Requests timed per page kind
    #[arg(long, default_value_t = 50)]
    pub reads: usize,
    /// Print one JSON object
    #[arg(long)]
    pub json: bool,
}

/// p50 and p99 in ms of `n` sequential GETs of `url`.
async fn time_gets(
    http: &reqwest::Client,
    cookie: &str,
    urls: &[String],
) -> anyhow::Result<(f64, f64, usize)> {
    let mut lat = Vec::with_capacity(urls.len());
    let mut bytes = 0;
    for url in urls {
        let t0 = Instant::now();
        let r = http.get(url).header("cookie", cookie).send().await?;
        anyhow::ensure!(r.status().is_success(), "{url} answered {}", r.status());
        bytes = r.bytes().await?.len();
        lat.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    Ok((percentile(&lat, 50.0), percentile(&lat, 99.0), bytes))
}

/// The `next` link of an inbox page.
fn next_link(page: &str) -> Option<String> {
    let at = page.find("id=\"next-page\"")?;
    let start = page[..at].rfind("href=\"")? + 6;
    let end = start + page[start..].find('"')?;
    Some(page[start..end].replace("&amp;", "&"))
}

pub async fn run(args: ConsoleBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.tasks > 0 && args.events > 1 && args.reads > 0,
        "--tasks, --reads must be positive and --events above 1"
    );
    let db = FreshDb::create(&args.db).await?;
    let store = mandate_engine::store::open(&db.url).await?;
    let world = World::connect(&db.url).await?;
    let mut tools = ToolRegistry::new();
    mandate_activities::register_demo_tools(&mut tools, world);
    let governance = Arc::new(mandate_activities::Governance::shipped());
    let engine = Engine::new(
        store,
        mandate_workflows::registry(),
        tools,
        governance.clone(),
    );
    let input =
        |i: usize| json!({"service": format!("svc-{}", i % 97), "version": format!("1.{i}")});

    eprintln!("submitting {} tasks ({})", args.tasks, args.db);
    let t0 = Instant::now();
    let submitted: Vec<String> = futures::stream::iter(0..args.tasks)
        .map(|i| {
            let engine = engine.clone();
            async move {
                engine
                    .submit("deploy_with_rollback", input(i), SubmitOptions::default())
                    .await
                    .map(|s| s.task_id)
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    eprintln!("  {:.1} s", t0.elapsed().as_secs_f64());

    let long = submitted[0].clone();
    eprintln!("recording {} events on task {long}", args.events);
    for i in 1..args.events {
        if i % 2 == 1 {
            engine
                .pause(
                    &long,
                    "operator:bench",
                    Some(format!("<b>pause {i}</b> \u{1b}[1m")),
                )
                .await?;
        } else {
            engine.resume(&long, "operator:bench").await?;
        }
    }
    let events = engine.history(&long).await?.len();

    let state = AppState::new(
        engine.clone(),
        governance,
        ApiConfig {
            rate_per_second: 1_000_000,
            rate_burst: 1_000_000,
            ..Default::default()
        },
    );
    let (_, token) =
        mandate_api::create_token(engine.store().as_ref(), "operator", "bench", 0).await?;
    let (base, stop, server) = crate::http_bench::serve_in_process(state).await?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let r = http
        .post(format!("{base}/signin"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={token}"))
        .send()
        .await?;
    let cookie = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .context("sign-in set no cookie")?
        .to_string();

    let n = args.reads;
    let task_page = time_gets(&http, &cookie, &vec![format!("{base}/tasks/{long}"); n]).await?;
    let inbox = time_gets(&http, &cookie, &vec![format!("{base}/"); n]).await?;
    let filtered = time_gets(
        &http,
        &cookie,
        &vec![format!("{base}/inbox/rows?status=queued&workflow=deploy_with_rollback"); n],
    )
    .await?;
    // A time window in the middle of the submissions (what the inbox's
    // since/until filter asks: a range of the created index).
    let (a, b) = (
        engine.task(&submitted[args.tasks / 4]).await?.created_at_ms,
        engine
            .task(&submitted[args.tasks * 3 / 4])
            .await?
            .created_at_ms,
    );
    let enc = |ms: i64| {
        mandate_api::console::format_time(ms)
            .replace(' ', "+")
            .replace(':', "%3A")
    };
    let window = time_gets(
        &http,
        &cookie,
        &vec![
            format!(
                "{base}/inbox/rows?since={}&until={}",
                enc(a.min(b)),
                enc(a.max(b))
            );
            n
        ],
    )
    .await?;
    // Follow the next links: each page is one keyset query past the last.
    let mut url = format!("{base}/");
    let mut page_lat = Vec::new();
    for _ in 0..args.pages {
        let t0 = Instant::now();
        let page = http
            .get(&url)
            .header("cookie", &cookie)
            .send()
            .await?
            .text()
            .await?;
        page_lat.push(t0.elapsed().as_secs_f64() * 1e3);
        match next_link(&page) {
            Some(next) => url = format!("{base}{next}"),
            None => break,
        }
    }
    let pages_followed = page_lat.len();
    page_lat.sort_by(|a, b| a.total_cmp(b));

    let _ = stop.send(());
    let _ = server.await;
    drop(engine);
    db.drop_now().await;

    let report = json!({
        "db": if args.db.starts_with("postgres") { "postgres" } else { "sqlite" },
        "tasks": args.tasks, "task_page_events": events, "reads": n,
        "task_page_p50_ms": task_page.0, "task_page_p99_ms": task_page.1, "task_page_bytes": task_page.2,
        "inbox_p50_ms": inbox.0, "inbox_p99_ms": inbox.1,
        "inbox_filtered_rows_p50_ms": filtered.0, "inbox_filtered_rows_p99_ms": filtered.1, "inbox_filtered_rows_bytes": filtered.2,
        "inbox_time_window_rows_p50_ms": window.0, "inbox_time_window_rows_p99_ms": window.1,
        "inbox_pages_followed": pages_followed,
        "inbox_next_page_p50_ms": percentile(&page_lat, 50.0),
        "inbox_next_page_p99_ms": percentile(&page_lat, 99.0),
    });
    if args.json {
        println!("{report}");
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}
