//! The CLI over HTTP: `mandate serve --listen 127.0.0.1:0` runs as a child
//! process on a fresh database, tokens come from `mandate token create`, and
//! every remote command (`--server`/`--token`, here through MANDATE_SERVER and
//! MANDATE_TOKEN) is run as the built binary and checked for its stdout and
//! exit code — on SQLite and on PostgreSQL. The commands never open a
//! database: MANDATE_DATABASE_URL points at a SQLite file that must never
//! appear. Also runs the Python example client (examples/python/) for real.
//!
//! Waiting is on the server's answer (status polled at a bounded interval
//! within a deadline, or `submit --wait`), never a sleep.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use mandate_tests::{Backend, TestDb, backend_tests};
use serde_json::Value;
use tokio::process::Command;

#[path = "support/run.rs"]
mod run;
use run::Run;

const BIN: &str = env!("CARGO_BIN_EXE_mandate");
/// How long the server may take to start, a command to run, a task to get somewhere.
const STARTUP: Duration = Duration::from_secs(60);
const COMMAND: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(30);

/// The plan agent of the shipped catalog at autonomy L1: each write it plans
/// is gated, and the tool owners (`team-platform`) approve.
const AGENT: &str = "agent-assistant";
const APPROVER: &str = "team-platform";

const ECHO_SAGA: &str = r#"{"stages":[[{"tool":"test.echo","input":{"x":1}}]]}"#;
/// Waits for a signal `go`, then echoes.
const SIGNAL_SAGA: &str =
    r#"{"stages":[[{"wait_signal":"go"}],[{"tool":"test.echo","input":{"after":"go"}}]]}"#;

/// Runs the binary with `envs` and `args`, within [`COMMAND`].
async fn run_binary(envs: &[(&str, &str)], args: &[&str], cwd: &Path) -> Run {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("MANDATE_SERVER")
        .env_remove("MANDATE_TOKEN")
        .env_remove("MANDATE_DATABASE_URL")
        .env("NO_COLOR", "1")
        .envs(envs.iter().copied())
        .current_dir(cwd)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    tokio::time::timeout(COMMAND, command.output())
        .await
        .unwrap_or_else(|_| panic!("mandate {args:?} did not finish within {COMMAND:?}"))
        .expect("run mandate")
        .into()
}

/// `mandate serve` on a fresh database, with a token per role; the child is
/// killed when this is dropped.
struct Server {
    child: Child,
    db: TestDb,
    url: String,
    /// Where the CLI runs; the database URL it is given names a file here
    /// that must never be created.
    dir: tempfile::TempDir,
    agent: String,
    approver: String,
    operator: String,
    auditor: String,
    http: reqwest::Client,
    /// The server's stderr, line by line.
    log: mpsc::Receiver<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    async fn start(backend: Backend) -> Server {
        let db = TestDb::new(backend).await;
        let dir = tempfile::tempdir().expect("temp dir");
        let mut tokens = Vec::new();
        for (role, name) in [
            ("agent", AGENT),
            ("approver", APPROVER),
            ("operator", "ops"),
            ("auditor", "audit"),
        ] {
            tokens.push(create_token(&db.url, role, name, dir.path()).await);
        }
        let mut child = std::process::Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--db", &db.url])
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mandate serve");
        let rx = run::lines(child.stderr.take().expect("piped stderr"));
        let deadline = std::time::Instant::now() + STARTUP;
        let url = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("mandate API listening on ") {
                        break rest
                            .split_whitespace()
                            .next()
                            .expect("an address after 'listening on'")
                            .to_string();
                    }
                }
                Err(e) => {
                    let _ = child.kill();
                    panic!("mandate serve never said where it listens ({e})");
                }
            }
        };
        let [agent, approver, operator, auditor] = <[String; 4]>::try_from(tokens).unwrap();
        Server {
            child,
            db,
            url,
            dir,
            agent,
            approver,
            operator,
            auditor,
            http: reqwest::Client::new(),
            log: rx,
        }
    }

    /// What the server logged so far (for failure messages).
    fn log(&self) -> String {
        self.log.try_iter().collect::<Vec<_>>().join("\n")
    }

    /// The SQLite file the CLI is pointed at by MANDATE_DATABASE_URL.
    fn decoy_db(&self) -> PathBuf {
        self.dir.path().join("must-not-exist.db")
    }

    /// Runs `mandate` over HTTP as `token`.
    async fn cli(&self, token: &str, args: &[&str]) -> Run {
        let decoy = format!("sqlite://{}", self.decoy_db().display());
        run_binary(
            &[
                ("MANDATE_SERVER", &self.url),
                ("MANDATE_TOKEN", token),
                ("MANDATE_DATABASE_URL", &decoy),
            ],
            args,
            self.dir.path(),
        )
        .await
    }

    /// Runs `mandate` on the server's database directly (local mode).
    async fn local(&self, args: &[&str]) -> Run {
        run_binary(
            &[("MANDATE_DATABASE_URL", &self.db.url)],
            args,
            self.dir.path(),
        )
        .await
    }

    /// The task as the API shows it to the operator.
    async fn task(&self, id: &str) -> Value {
        self.http
            .get(format!("{}/v1/tasks/{id}", self.url))
            .bearer_auth(&self.operator)
            .send()
            .await
            .expect("GET task")
            .json()
            .await
            .expect("task JSON")
    }

    /// Polls the task until its status is `status`, within [`WAIT`].
    async fn wait_for(&self, id: &str, status: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tick.tick().await;
            let task = self.task(id).await;
            if task["status"] == status {
                return task;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "task {id} never reached {status} within {WAIT:?}; it is {task}\n--- server log\n{}",
                self.log()
            );
        }
    }

    /// The remote commands opened no database.
    #[track_caller]
    fn assert_no_database_opened(&self) {
        assert!(
            !self.decoy_db().exists(),
            "a command with --server created the database named by MANDATE_DATABASE_URL"
        );
    }
}

async fn create_token(db_url: &str, role: &str, name: &str, cwd: &Path) -> String {
    let run = run_binary(
        &[],
        &[
            "token", "create", "--role", role, "--name", name, "--db", db_url,
        ],
        cwd,
    )
    .await;
    run.expect_code(0);
    let secret = run.line();
    assert!(secret.starts_with("mdt_"), "{secret}");
    secret
}

/// A plan by [`AGENT`] whose write step `mark` is gated.
fn write_gated_plan(dir: &Path, name: &str, key: &str) -> String {
    let plan = serde_json::json!({
        "workflow": "plan", "agent": AGENT, "reason": format!("mark {key}"),
        "steps": [{"id": "mark", "tool": "kv.put", "input": {"key": key, "value": true}}]
    });
    let path = dir.join(name);
    std::fs::write(&path, plan.to_string()).unwrap();
    path.display().to_string()
}

async fn submit_status_list_history(b: Backend) {
    let s = Server::start(b).await;
    let submitted = s
        .cli(
            &s.agent,
            &[
                "submit",
                "saga",
                "--input",
                ECHO_SAGA,
                "--wait",
                "--timeout-secs",
                "30",
            ],
        )
        .await;
    submitted.expect_code(0);
    let id = submitted.task_id();
    assert!(
        submitted.stderr.contains(&format!("task {id} completed")),
        "{}",
        submitted.stderr
    );

    // The same idempotency key twice: one task.
    let keyed = [
        "submit",
        "saga",
        "--input",
        ECHO_SAGA,
        "--idempotency-key",
        "k-1",
    ];
    let first = s.cli(&s.agent, &keyed).await;
    first.expect_code(0);
    let again = s.cli(&s.agent, &keyed).await;
    again.expect_code(0);
    assert_eq!(again.task_id(), first.task_id());
    assert!(
        again.stderr.contains("names an existing task"),
        "{}",
        again.stderr
    );

    // status: the row from the API, the steps from the verified history.
    let status = s.cli(&s.agent, &["status", &id, "--json"]).await;
    status.expect_code(0);
    let remote_status = status.json();
    assert_eq!(remote_status["status"], "completed");
    assert_eq!(remote_status["agent"], AGENT);
    assert_eq!(remote_status["steps"][0]["state"], "completed");
    assert_eq!(
        remote_status["output"],
        serde_json::json!({"stages": [[{"x": 1}]]})
    );
    // The same document as local mode, less what the API does not give.
    let mut local_status = s.local(&["status", &id, "--json"]).await.json();
    for field in ["idempotency_key", "lease_owner", "lease_expires_at_ms"] {
        assert!(
            remote_status.get(field).is_none(),
            "{field} shown over HTTP"
        );
        local_status.as_object_mut().unwrap().remove(field);
    }
    assert_eq!(remote_status, local_status);
    let text = s.cli(&s.agent, &["status", &id]).await;
    text.expect_code(0);
    assert!(
        text.stdout.contains("completed (attempt 1)"),
        "{}",
        text.stdout
    );

    // list and history: exactly what local mode prints.
    for args in [
        &["list", "--json"][..],
        &["list", "--status", "completed"],
        &["history", &id, "--json"],
        &["history", &id],
    ] {
        let remote = s.cli(&s.operator, args).await;
        remote.expect_code(0);
        let local = s.local(args).await;
        local.expect_code(0);
        assert_eq!(remote.stdout, local.stdout, "mandate {args:?}");
    }
    let list = s.cli(&s.agent, &["list", "--json", "--limit", "1"]).await;
    list.expect_code(0);
    assert_eq!(list.json().as_array().unwrap().len(), 1);
    assert!(list.stderr.contains("there are more"), "{}", list.stderr);
    let history = s.cli(&s.agent, &["history", &id, "--json"]).await;
    let events: Vec<Value> = history
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events[0]["type"], "TaskSubmitted");
    assert_eq!(events[0]["actor"], format!("agent:{AGENT}"));
    assert_eq!(events.last().unwrap()["type"], "TaskCompleted");

    s.cli(&s.agent, &["history", &id, "--json", "--unverified"])
        .await
        .expect_refused(&["needs the database"]);
    s.cli(&s.agent, &["list", "--status", "bogus"])
        .await
        .expect_refused(&["failed_terminal"]);
    s.assert_no_database_opened();
}

async fn signal_pause_resume_cancel(b: Backend) {
    let s = Server::start(b).await;
    let submit = |input: &'static str| {
        let s = &s;
        async move {
            let run = s.cli(&s.agent, &["submit", "saga", "--input", input]).await;
            run.expect_code(0);
            run.task_id()
        }
    };

    // signal: the seq on stdout; --as is ignored with a warning.
    let id = submit(SIGNAL_SAGA).await;
    s.wait_for(&id, "running").await;
    let signal = s
        .cli(
            &s.agent,
            &[
                "signal",
                &id,
                "go",
                "--payload",
                r#"{"ok":true}"#,
                "--as",
                "user:x",
            ],
        )
        .await;
    signal.expect_code(0);
    let seq = signal.seq();
    assert!(
        signal.stderr.contains("--as user:x is ignored"),
        "{}",
        signal.stderr
    );
    s.wait_for(&id, "completed").await;
    let history = s.cli(&s.agent, &["history", &id, "--json"]).await;
    let received = history
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|e| e["seq"] == seq)
        .expect("the signal's event");
    assert_eq!(received["type"], "SignalReceived");
    assert_eq!(received["actor"], format!("agent:{AGENT}"));
    s.cli(&s.agent, &["signal", &id, "go"])
        .await
        .expect_refused(&["final", "409", "conflict"]);

    // pause, a second pause refused, resume, a second resume refused.
    let id = submit(SIGNAL_SAGA).await;
    s.wait_for(&id, "running").await;
    let paused = s
        .cli(&s.agent, &["pause", &id, "--reason", "look first"])
        .await;
    paused.expect_code(0);
    paused.seq();
    s.wait_for(&id, "paused").await;
    s.cli(&s.agent, &["pause", &id])
        .await
        .expect_refused(&["already paused", "conflict"]);
    let resumed = s.cli(&s.agent, &["resume", &id]).await;
    resumed.expect_code(0);
    assert!(resumed.seq() > paused.seq());
    s.wait_for(&id, "running").await;
    s.cli(&s.agent, &["resume", &id])
        .await
        .expect_refused(&["not paused", "conflict"]);

    // cancel with rollback. A fresh task: the engine sometimes misses an
    // outside event that lands just after a resume (seen in about 1 run of
    // 10 on PostgreSQL: the task then stays put while its worker lives).
    let id = submit(SIGNAL_SAGA).await;
    s.wait_for(&id, "running").await;
    let cancelled = s
        .cli(
            &s.operator,
            &["cancel", &id, "--rollback", "--reason", "not needed"],
        )
        .await;
    cancelled.expect_code(0);
    cancelled.seq();
    s.wait_for(&id, "cancelled").await;
    s.cli(&s.agent, &["cancel", &id])
        .await
        .expect_refused(&["final"]);
    s.cli(&s.agent, &["resume", &id])
        .await
        .expect_refused(&["conflict"]);
    s.assert_no_database_opened();
}

async fn retry_runs_a_waiting_attempt_now(b: Backend) {
    let s = Server::start(b).await;
    // Fails once, then would wait an hour before its second attempt.
    let input = r#"{"stages":[[{"tool":"test.fault","input":{"mode":"fail_times","times":1},
        "retry":{"max_attempts":3,"initial_backoff_ms":3600000}}]]}"#;
    let run = s.cli(&s.agent, &["submit", "saga", "--input", input]).await;
    run.expect_code(0);
    let id = run.task_id();
    s.wait_for(&id, "failed_retryable").await;
    let retried = s.cli(&s.agent, &["retry", &id]).await;
    retried.expect_code(0);
    retried.seq();
    s.wait_for(&id, "completed").await;
    s.cli(&s.agent, &["retry", &id])
        .await
        .expect_refused(&["final", "conflict"]);
    // Locally, retry goes through the engine and refuses the same way.
    s.local(&["retry", &id]).await.expect_refused(&["final"]);
    s.assert_no_database_opened();
}

async fn approve_and_reject_gated_plan_steps(b: Backend) {
    let s = Server::start(b).await;
    let dir = s.dir.path();
    let submit_plan = |name: &'static str, key: &'static str| {
        let s = &s;
        async move {
            let file = write_gated_plan(s.dir.path(), name, key);
            let run = s.cli(&s.agent, &["plan", "submit", &file]).await;
            run.expect_code(0);
            let id = run.task_id();
            s.wait_for(&id, "needs_approval").await;
            id
        }
    };
    let approved = submit_plan("a.json", "approved").await;
    let rejected = submit_plan("r.json", "rejected").await;

    // The server's dry run says who approves.
    let check = s
        .cli(
            &s.agent,
            &["plan", "check", &write_gated_plan(dir, "c.json", "c")],
        )
        .await;
    check.expect_code(0);
    assert!(
        check.stdout.contains("gated_execute") && check.stdout.contains(APPROVER),
        "{}",
        check.stdout
    );

    // The approver's inbox has both; an agent may not read it.
    let inbox = s.cli(&s.approver, &["approvals", "--json"]).await;
    inbox.expect_code(0);
    // Each entry's id is `<task>:<request seq>`, its step the gated one.
    let mut ids: Vec<String> = inbox
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            assert_eq!(a["step"], "mark", "{a}");
            assert_eq!(
                a["id"].as_str().unwrap(),
                format!("{}:{}", a["task_id"].as_str().unwrap(), a["request_seq"])
            );
            a["task_id"].as_str().unwrap().to_string()
        })
        .collect();
    ids.sort();
    let mut expected = vec![approved.clone(), rejected.clone()];
    expected.sort();
    assert_eq!(ids, expected);
    let text = s.cli(&s.approver, &["approvals", "--as", APPROVER]).await;
    text.expect_code(0);
    assert!(
        text.stdout.contains(&format!("task {approved}  step mark")),
        "{}",
        text.stdout
    );
    let none = s
        .cli(&s.operator, &["approvals", "--json", "--as", "nobody"])
        .await;
    none.expect_code(0);
    assert_eq!(none.json(), serde_json::json!([]));
    s.cli(&s.agent, &["approvals"])
        .await
        .expect_refused(&["forbidden", "403"]);

    // Approve (the step found in the inbox): the decision is the token's.
    let approve = s
        .cli(&s.approver, &["approve", &approved, "--comment", "fine"])
        .await;
    approve.expect_code(0);
    let seq = approve.seq();
    assert_eq!(approve.stderr, "");
    s.wait_for(&approved, "completed").await;
    let history = s.cli(&s.approver, &["history", &approved, "--json"]).await;
    let decision = history
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|e| e["seq"] == seq)
        .expect("the decision's event");
    assert_eq!(decision["actor"], format!("approver:{APPROVER}"));
    // `mandate replay` (on the database) says who decided, under which rule.
    let replay = s.local(&["replay", &approved]).await;
    replay.expect_code(0);
    assert!(
        replay
            .stdout
            .contains("decided by the gateway: gated_execute")
            && replay.stdout.contains(&format!("approved by {APPROVER}"))
            && replay.stdout.contains("verdict      OK"),
        "{}",
        replay.stdout
    );

    // Reject with an --as that is not the token's name: a warning, and the
    // token's identity is what is recorded.
    let reject = s
        .cli(
            &s.approver,
            &["reject", &rejected, "--step", "mark", "--as", "alice"],
        )
        .await;
    reject.expect_code(0);
    reject.seq();
    assert!(
        reject.stderr.contains(&format!(
            "recorded as approver:{APPROVER}, not approver:alice"
        )),
        "{}",
        reject.stderr
    );
    let after = s.wait_for(&rejected, "failed_terminal").await;
    assert_eq!(after["status"], "failed_terminal");

    // Nothing left to decide; an agent may not decide; a decided approval is a conflict.
    s.cli(&s.approver, &["approve", &approved])
        .await
        .expect_refused(&["awaiting a decision by this token's identity"]);
    s.cli(&s.agent, &["approve", &approved, "--step", "mark"])
        .await
        .expect_refused(&["forbidden"]);
    s.cli(&s.approver, &["approve", &approved, "--step", "mark"])
        .await
        .expect_refused(&["final", "conflict"]);
    s.assert_no_database_opened();
}

async fn halt_then_lift(b: Backend) {
    let s = Server::start(b).await;
    let halt = s
        .cli(
            &s.operator,
            &["halt", "--agent", AGENT, "--reason", "incident 7"],
        )
        .await;
    halt.expect_code(0);
    let halt_id = halt.line();
    assert!(halt_id.starts_with("h_"), "{halt_id}");
    assert!(
        halt.stderr
            .contains(&format!("mandate halt --lift --agent {AGENT}")),
        "{}",
        halt.stderr
    );

    // The halted agent's new task is paused before its first step.
    let run = s
        .cli(&s.agent, &["submit", "saga", "--input", ECHO_SAGA])
        .await;
    run.expect_code(0);
    let id = run.task_id();
    s.wait_for(&id, "paused").await;

    // Only operators halt; lifting resumes the task and prints its id.
    s.cli(&s.agent, &["halt", "--lift", "--agent", AGENT])
        .await
        .expect_refused(&["forbidden"]);
    let lift = s
        .cli(&s.operator, &["halt", "--lift", "--agent", AGENT])
        .await;
    lift.expect_code(0);
    assert_eq!(lift.line(), id);
    s.wait_for(&id, "completed").await;
    s.cli(&s.operator, &["halt", "--lift", "--agent", AGENT])
        .await
        .expect_refused(&["no active halt for agent", "not_found"]);

    // A halt made locally (on the database) is lifted over HTTP, and back.
    let local = s.local(&["halt", "--reason", "from the box"]).await;
    local.expect_code(0);
    assert!(local.line().starts_with("h_"));
    s.cli(&s.operator, &["halt", "--lift"]).await.expect_code(0);
    s.local(&["halt", "--lift"])
        .await
        .expect_refused(&["no active global halt"]);
    s.assert_no_database_opened();
}

async fn refusals_bad_tokens_and_unreachable_servers(b: Backend) {
    let s = Server::start(b).await;
    // A role that may not: exit 2 with the server's message and code.
    s.cli(&s.auditor, &["submit", "saga", "--input", ECHO_SAGA])
        .await
        .expect_refused(&["may not submit tasks", "HTTP 403, forbidden"]);
    // A bad token, and none at all.
    s.cli("mdt_0000", &["list"]).await.expect_refused(&[
        "does not accept this token",
        "--token",
        "MANDATE_TOKEN",
    ]);
    s.cli("", &["list"])
        .await
        .expect_refused(&["needs a token", "MANDATE_TOKEN"]);
    // Unknown task, unknown workflow, bad input (refused before any request).
    s.cli(
        &s.agent,
        &["status", "01900000-0000-7000-8000-000000000000"],
    )
    .await
    .expect_refused(&["not_found"]);
    s.cli(&s.agent, &["submit", "no_such_workflow", "--input", "{}"])
        .await
        .expect_refused(&["unknown_workflow", "deploy_with_rollback"]);
    s.cli(&s.agent, &["submit", "saga", "--input", "{oops"])
        .await
        .expect_refused(&["not valid JSON"]);
    // Another agent's task is not there for an agent.
    let other = create_token(&s.db.url, "agent", "someone-else", s.dir.path()).await;
    let run = s
        .cli(&s.agent, &["submit", "saga", "--input", ECHO_SAGA])
        .await;
    run.expect_code(0);
    s.cli(&other, &["status", &run.task_id()])
        .await
        .expect_refused(&["not_found"]);
    // No server at the URL: says so, and how to start one.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let nowhere = format!("http://127.0.0.1:{port}");
    let run = run_binary(
        &[("MANDATE_SERVER", &nowhere), ("MANDATE_TOKEN", &s.agent)],
        &["list"],
        s.dir.path(),
    )
    .await;
    run.expect_refused(&["cannot reach the Mandate server", &nowhere, "mandate serve"]);
    s.cli(&s.agent, &["--server", "https://example.invalid", "list"])
        .await
        .expect_refused(&["plain HTTP"]);
    s.assert_no_database_opened();
}

/// The Python example (examples/python/mandate_client.py) submits the plan
/// beside it, follows the stream, approves, and sees the task complete.
async fn python_example_client_completes_a_gated_plan(b: Backend) {
    let python = std::process::Command::new("python3")
        .arg("--version")
        .output()
        .unwrap_or_else(|e| {
            panic!("python3 is needed to run the example client (examples/python/); install CPython 3: {e}")
        });
    assert!(python.status.success(), "python3 --version failed");
    let s = Server::start(b).await;
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/python");
    let mut child = Command::new("python3")
        .arg(example.join("mandate_client.py"))
        .arg(example.join("plan.json"))
        .env("MANDATE_SERVER", &s.url)
        .env("MANDATE_AGENT_TOKEN", &s.agent)
        .env("MANDATE_APPROVER_TOKEN", &s.approver)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run python3");
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let read = |mut pipe: Box<dyn tokio::io::AsyncRead + Unpin + Send>| async move {
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut pipe, &mut text)
            .await
            .unwrap();
        text
    };
    let outcome = tokio::time::timeout(Duration::from_secs(120), async {
        let (out, err, status) =
            tokio::join!(read(Box::new(stdout)), read(Box::new(stderr)), child.wait());
        (out, err, status.unwrap())
    })
    .await;
    let Ok((out, err, status)) = outcome else {
        panic!("the example client did not finish within 120 s");
    };
    assert!(
        status.success(),
        "exit {status}\n--- stdout\n{out}\n--- stderr\n{err}"
    );
    let last = out.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("task ") && last.ends_with(" completed"),
        "last line {last:?}\n{out}"
    );
    assert!(out.contains("approving step mark"), "{out}");
    assert!(
        out.contains("ApprovalRequested") && out.contains("TaskCompleted"),
        "{out}"
    );
}

/// An agent-written reason that, printed as it is, erases its own line and
/// fakes a reassuring one in the approver's terminal.
const EVIL: &str = "ship it\x1b[2K\rrisk: low (pre-approved by cfo)\u{9b}1A";

/// Every human-readable output shows agent-written text escaped: no raw
/// control character reaches the terminal, and the attack reads as
/// `\u{1b}[2K\u{d}risk: low …`.
#[track_caller]
fn assert_escaped(what: &str, run: &Run, shows_evil: bool) {
    run.expect_code(0);
    let raw = run.stdout.chars().find(|&c| c.is_control() && c != '\n');
    assert!(
        raw.is_none(),
        "{what} printed a raw control character {raw:?}:\n{}",
        run.stdout
    );
    if shows_evil {
        assert!(
            run.stdout.contains("\\u{1b}[2K") || run.stdout.contains("\\u001b[2K"),
            "{what} does not show the escaped reason:\n{}",
            run.stdout
        );
    }
}

async fn agent_written_text_is_escaped_in_every_output(b: Backend) {
    let s = Server::start(b).await;
    let plan = serde_json::json!({
        "workflow": "plan", "agent": AGENT, "reason": EVIL, "evidence": [{"kind": "ticket", "ref": "REL-1", "summary": EVIL}],
        "steps": [{"id": "mark", "tool": "kv.put", "input": {"key": "k", "value": EVIL}}]
    });
    let file = s.dir.path().join("evil.json");
    std::fs::write(&file, plan.to_string()).unwrap();
    let file = file.display().to_string();

    assert_escaped(
        "plan check",
        &s.cli(&s.agent, &["plan", "check", &file]).await,
        true,
    );
    let run = s.cli(&s.agent, &["plan", "submit", &file]).await;
    run.expect_code(0);
    let id = run.task_id();
    s.wait_for(&id, "needs_approval").await;
    assert_escaped(
        "approvals --server",
        &s.cli(&s.approver, &["approvals", "--as", APPROVER]).await,
        true,
    );
    assert_escaped(
        "approvals (local)",
        &s.local(&["approvals", "--as", APPROVER]).await,
        true,
    );
    // A gated step is decided with approve/reject, never with a signal the
    // API refuses.
    let status = s.cli(&s.operator, &["status", &id]).await;
    assert_escaped("status --server", &status, false);
    assert!(
        status.stdout.contains(&format!(
            "mandate approve {id} --step mark` or `mandate reject {id} --step mark"
        )) && !status.stdout.contains("mandate signal"),
        "{}",
        status.stdout
    );

    s.cli(&s.operator, &["pause", &id, "--reason", EVIL])
        .await
        .expect_code(0);
    s.cli(&s.operator, &["resume", &id]).await.expect_code(0);
    s.cli(&s.operator, &["cancel", &id, "--reason", EVIL])
        .await
        .expect_code(0);
    s.wait_for(&id, "cancelled").await;
    assert_escaped(
        "history --server",
        &s.cli(&s.operator, &["history", &id]).await,
        true,
    );
    assert_escaped("history (local)", &s.local(&["history", &id]).await, true);
    assert_escaped(
        "status --server",
        &s.cli(&s.operator, &["status", &id]).await,
        false,
    );
    assert_escaped("status (local)", &s.local(&["status", &id]).await, false);
    assert_escaped("list --server", &s.cli(&s.operator, &["list"]).await, false);
    assert_escaped("list (local)", &s.local(&["list"]).await, false);
    assert_escaped("replay", &s.local(&["replay", &id]).await, true);
    s.assert_no_database_opened();
}

/// A history over 1 MiB comes in more than one page; `history --server`
/// follows them, verifies the chain across them, and prints exactly what
/// the database holds.
async fn history_over_http_follows_the_pages(b: Backend) {
    let s = Server::start(b).await;
    let run = s
        .cli(&s.agent, &["submit", "saga", "--input", SIGNAL_SAGA])
        .await;
    run.expect_code(0);
    let id = run.task_id();
    let payload = s.dir.path().join("big.json");
    std::fs::write(
        &payload,
        serde_json::json!({"blob": "b".repeat(150_000)}).to_string(),
    )
    .unwrap();
    let payload = format!("@{}", payload.display());
    for _ in 0..8 {
        s.cli(&s.agent, &["signal", &id, "note", "--payload", &payload])
            .await
            .expect_code(0);
    }
    let (_, first) = {
        let r = s
            .http
            .get(format!("{}/v1/tasks/{id}/history", s.url))
            .bearer_auth(&s.operator)
            .send()
            .await
            .unwrap();
        (r.status(), r.json::<Value>().await.unwrap())
    };
    assert!(
        first["next_after_seq"].is_i64(),
        "the history fits one page; the test needs more"
    );
    let remote = s.cli(&s.operator, &["history", &id, "--json"]).await;
    remote.expect_code(0);
    let local = s.local(&["history", &id, "--json"]).await;
    local.expect_code(0);
    assert_eq!(remote.stdout.lines().count(), local.stdout.lines().count());
    assert_eq!(remote.stdout, local.stdout);
    s.cli(&s.operator, &["history", &id]).await.expect_code(0);
    s.cli(&s.operator, &["status", &id]).await.expect_code(0);
    s.assert_no_database_opened();
}

backend_tests!(
    history_over_http_follows_the_pages,
    agent_written_text_is_escaped_in_every_output,
    submit_status_list_history,
    signal_pause_resume_cancel,
    retry_runs_a_waiting_attempt_now,
    approve_and_reject_gated_plan_steps,
    halt_then_lift,
    refusals_bad_tokens_and_unreachable_servers,
    python_example_client_completes_a_gated_plan,
);
