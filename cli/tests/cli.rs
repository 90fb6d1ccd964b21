//! Runs the built `mandate` binary against temporary SQLite databases and
//! checks what a script relies on: exit codes, stdout carrying only ids and
//! JSON, refusals writing nothing. Waiting is always on an event (a line from
//! the server, a process exit) with a timeout, never a sleep.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

#[path = "support/run.rs"]
mod run;
use run::Run;

const BIN: &str = env!("CARGO_BIN_EXE_mandate");
const STARTUP: Duration = Duration::from_secs(60);
const SHUTDOWN: Duration = Duration::from_secs(60);

const ECHO_SAGA: &str = r#"{"stages":[[{"tool":"test.echo","input":{"x":1}}]]}"#;

/// A temporary directory with a database URL inside it.
struct Env {
    dir: tempfile::TempDir,
    url: String,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        Self { dir, url }
    }

    fn db_file(&self) -> std::path::PathBuf {
        self.dir.path().join("t.db")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("MANDATE_DATABASE_URL", &self.url)
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Run {
        Run::from(self.command(args).output().expect("run mandate"))
    }
}

/// `mandate serve` as a child process; killed if the test ends without `stop`.
struct Server {
    child: Option<Child>,
    stderr: mpsc::Receiver<String>,
}

impl Server {
    fn start(env: &Env) -> Self {
        let mut child = env
            .command(&[
                "serve",
                "--worker-id",
                "test-worker",
                "--listen",
                "127.0.0.1:0",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mandate serve");
        let rx = run::lines(child.stderr.take().expect("piped stderr"));
        let server = Self {
            child: Some(child),
            stderr: rx,
        };
        let api = server
            .stderr
            .recv_timeout(STARTUP)
            .expect("mandate serve printed nothing");
        assert!(
            api.starts_with("mandate API listening on http://127.0.0.1:"),
            "unexpected first line from serve: {api}"
        );
        let line = server
            .stderr
            .recv_timeout(STARTUP)
            .expect("mandate serve printed no second line");
        assert!(
            line.starts_with("mandate serving ") && line.contains("as worker test-worker"),
            "unexpected first line from serve: {line}"
        );
        server
    }

    /// SIGTERM, then waits for the exit; returns the status and the rest of stderr.
    fn stop(mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("server running");
        let pid = child.id().to_string();
        let kill = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(kill.success(), "kill -TERM {pid} failed");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        let status = match rx.recv_timeout(SHUTDOWN) {
            Ok(status) => status.expect("wait for serve"),
            Err(_) => {
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
                panic!("mandate serve did not stop within {SHUTDOWN:?} of SIGTERM");
            }
        };
        let rest: Vec<String> = self.stderr.try_iter().collect();
        (status, rest.join("\n"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

#[test]
fn bad_input_is_refused_with_exit_2_and_writes_nothing() {
    let env = Env::new();

    let bad = env.run(&["submit", "saga", "--input", r#"{"stages": [oops]}"#]);
    bad.expect_code(2);
    assert_eq!(bad.stdout, "");
    assert!(bad.stderr.contains("not valid JSON"), "{}", bad.stderr);
    assert!(bad.stderr.contains("line 1, column 13"), "{}", bad.stderr);
    assert!(
        !env.db_file().exists(),
        "a refused submit created the database"
    );

    let unknown = env.run(&["submit", "no_such_workflow", "--input", "{}"]);
    unknown.expect_code(2);
    assert!(
        unknown.stderr.contains("no_such_workflow")
            && unknown.stderr.contains("deploy_with_rollback")
            && unknown.stderr.contains("saga"),
        "{}",
        unknown.stderr
    );

    let missing = env.run(&["submit", "saga", "--input", "@missing.json"]);
    missing.expect_code(2);
    assert!(
        missing.stderr.contains("missing.json"),
        "{}",
        missing.stderr
    );

    let big_file = env.dir.path().join("big.json");
    std::fs::write(
        &big_file,
        format!("{{\"blob\": \"{}\"}}", "x".repeat(300 * 1024)),
    )
    .unwrap();
    let big = env.run(&[
        "submit",
        "saga",
        "--input",
        &format!("@{}", big_file.display()),
    ]);
    big.expect_code(2);
    assert!(big.stderr.contains("limit"), "{}", big.stderr);

    let bad_url = env.run(&[
        "--db",
        "mysql://nowhere/db",
        "submit",
        "saga",
        "--input",
        ECHO_SAGA,
    ]);
    bad_url.expect_code(2);
    assert!(
        bad_url.stderr.contains("mysql://nowhere/db"),
        "{}",
        bad_url.stderr
    );
    assert!(!env.db_file().exists());

    let no_db = env.run(&["list"]);
    no_db.expect_code(2);
    assert!(
        no_db.stderr.contains("no Mandate database"),
        "{}",
        no_db.stderr
    );
    assert!(
        !env.db_file().exists(),
        "a read-only command created the database"
    );

    // With a database in place, a refused submit still adds nothing.
    let good = env.run(&["submit", "saga", "--input", ECHO_SAGA]);
    good.expect_code(0);
    let id = good.task_id();
    env.run(&["submit", "saga", "--input", "{\"stages\": "])
        .expect_code(2);
    let list = env.run(&["list", "--json"]);
    list.expect_code(0);
    let tasks = list.json();
    let ids: Vec<&str> = tasks
        .as_array()
        .expect("array")
        .iter()
        .map(|t| t["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, [id.as_str()]);
    assert_eq!(tasks[0]["status"], "queued");

    let status = env.run(&["list", "--status", "bogus"]);
    status.expect_code(2);
    assert!(
        status.stderr.contains("failed_terminal"),
        "{}",
        status.stderr
    );

    let unknown_task = env.run(&["status", "01900000-0000-7000-8000-000000000000"]);
    unknown_task.expect_code(2);
    assert!(
        unknown_task.stderr.contains("no task with id"),
        "{}",
        unknown_task.stderr
    );
}

#[test]
fn a_submitted_task_runs_and_reads_back() {
    let env = Env::new();
    let server = Server::start(&env);

    let submitted = env.run(&[
        "submit",
        "saga",
        "--input",
        ECHO_SAGA,
        "--agent",
        "agent-operator",
        "--wait",
        "--timeout-secs",
        "60",
    ]);
    submitted.expect_code(0);
    let id = submitted.task_id();
    assert!(
        submitted.stderr.contains("completed"),
        "{}",
        submitted.stderr
    );

    // list --json
    let list = env.run(&["list", "--json"]).json();
    let task = list
        .as_array()
        .expect("array")
        .iter()
        .find(|t| t["id"] == id.as_str())
        .unwrap_or_else(|| panic!("{id} not in {list}"));
    assert_eq!(task["workflow"], "saga");
    assert_eq!(task["status"], "completed");
    assert_eq!(task["agent"], "agent-operator");
    for key in ["created_at", "updated_at", "last_seq"] {
        assert!(!task[key].is_null(), "{key} missing in {task}");
    }

    // history --json: one event per line, chained.
    let history = env.run(&["history", &id, "--json"]);
    history.expect_code(0);
    let events: Vec<Value> = history
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(events.len() >= 4, "{}", history.stdout);
    let mut prev_hash = "0".repeat(64);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["task_id"], id.as_str());
        assert_eq!(e["seq"], i as i64 + 1);
        assert_eq!(e["prev_hash"], prev_hash.as_str(), "chain broken at {e}");
        let hash = e["hash"].as_str().expect("hash");
        assert_eq!(hash.len(), 64);
        prev_hash = hash.to_string();
        let at = e["recorded_at"].as_str().expect("recorded_at");
        assert!(at.len() == 24 && at.ends_with('Z'), "recorded_at {at}");
        assert!(e["recorded_at_ms"].is_i64());
        assert!(e["type"].is_string() && e["payload"].is_object(), "{e}");
        assert!(e["actor"].is_string());
    }
    assert_eq!(events[0]["type"], "TaskSubmitted");
    assert_eq!(events[0]["payload"]["workflow"], "saga");
    assert_eq!(events.last().unwrap()["type"], "TaskCompleted");

    let raw = env.run(&["history", &id, "--json", "--unverified"]);
    raw.expect_code(0);
    assert_eq!(
        raw.stdout, history.stdout,
        "stored rows and parsed events disagree"
    );

    let text = env.run(&["history", &id]);
    text.expect_code(0);
    assert!(
        text.stdout
            .contains("submitted saga v2 by agent:agent-operator"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains("status → completed"),
        "{}",
        text.stdout
    );

    let status = env.run(&["status", &id, "--json"]);
    status.expect_code(0);
    let status = status.json();
    assert_eq!(status["status"], "completed");
    assert_eq!(status["steps"][0]["state"], "completed");
    assert_eq!(
        status["output"],
        serde_json::json!({"stages": [[{"x": 1}]]})
    );

    // A finished task refuses signals and cancellation, and nothing is appended.
    let signal = env.run(&["signal", &id, "approve"]);
    signal.expect_code(2);
    assert_eq!(signal.stdout, "");
    assert!(signal.stderr.contains("final"), "{}", signal.stderr);
    env.run(&["cancel", &id, "--rollback"]).expect_code(2);
    let after = env.run(&["history", &id, "--json"]);
    assert_eq!(after.stdout, history.stdout);

    // A task that fails: --wait exits 1, stdout still only the id.
    let failing = env.run(&[
        "submit",
        "saga",
        "--input",
        r#"{"stages":[[{"tool":"test.fault","input":{"mode":"fail_terminal"}}]]}"#,
        "--wait",
    ]);
    failing.expect_code(1);
    let failed_id = failing.task_id();
    assert!(
        failing
            .stderr
            .contains(&format!("task {failed_id} ended failed_terminal")),
        "{}",
        failing.stderr
    );

    let (exit, rest) = server.stop();
    assert!(exit.success(), "serve exited with {exit}; stderr: {rest}");
    assert!(rest.contains("stopped"), "{rest}");
}

#[test]
fn demo_tells_the_story_routes_approves_rolls_back_and_replays_without_leaving_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("demo")
        .env_remove("MANDATE_DATABASE_URL")
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("run mandate demo");
    let run = Run::from(out);
    run.expect_code(0);
    for expected in [
        "checkout before the deploys: v0 (never deployed)",
        "→ completed in",
        "→ failed_terminal in",
        "checkout is now at v2",
        "step 'deploy' scheduled: deploy.set_version {service: checkout, version: v3-bad} (compensation: deploy.set_version {service: checkout, version: v2})",
        "compensating step 'deploy'",
        "compensation of step 'deploy' done",
        "status → failed_terminal",
        "rolled back to v2",
        // The routing story: the owner hears of the monitored step, the
        // named approver approves through his one-click link, once.
        "for team-platform (signature ok): agent-deployer-7: monitored_execute: step \"flag\" (flag.set)",
        "for finance-controller (signature ok): agent-deployer-7: gated_execute: step \"bill\"",
        "for user-bob (signature ok): agent-deployer-7: gated_execute: step \"bill\"",
        "user-bob clicks \"Approve\" in his notification (GET /v1/links/…, signed for him, single use): approve as user-bob",
        "a second click on the same link is refused: 409 Conflict",
        "approved by user-bob (authenticated as link)",
        "user-bob answered notification",
        "notified about #4: team-platform (rule root: owns tool flag.set",
        "plan: owner notified of the monitored step; the gated step approved by user-bob through a one-click link",
        "replay (what `mandate replay <task>` checks), from the database:",
        "the web console on ./mandate.db: open http://127.0.0.1:7700/",
    ] {
        assert!(
            run.stdout.contains(expected),
            "missing {expected:?} in\n{}",
            run.stdout
        );
    }
    let summary: Vec<&str> = run
        .stdout
        .lines()
        .skip_while(|l| *l != "summary:")
        .skip(1)
        .take(2)
        .collect();
    assert!(summary[0].contains("  completed  "), "{summary:?}");
    assert!(summary[1].contains("  failed_terminal  "), "{summary:?}");
    let intact = run
        .stdout
        .lines()
        .filter(|l| l.contains("  intact: ") && l.contains("hash chain verified"))
        .count();
    assert_eq!(intact, 3, "every history replays intact:\n{}", run.stdout);
    assert_eq!(
        files_in(dir.path()),
        Vec::<String>::new(),
        "the demo left files in the cwd"
    );
}

#[test]
fn submit_reads_a_yaml_input_file_by_its_name() {
    let env = Env::new();
    let plan = "# a plan, as an agent writes it\nagent: agent-deployer-7\nreason: from YAML\nsteps:\n  - id: echo\n    tool: test.echo\n    input: {x: 1, tags: [a, b]}\n";
    for name in ["plan.yaml", "plan.yml"] {
        std::fs::write(env.dir.path().join(name), plan).unwrap();
    }
    let submitted = env.run(&["submit", "plan", "--input", "@plan.yaml"]);
    submitted.expect_code(0);
    let id = submitted.task_id();
    let status = env.run(&["status", &id, "--json"]);
    status.expect_code(0);
    assert_eq!(
        status.json()["input"],
        serde_json::json!({"agent": "agent-deployer-7", "reason": "from YAML",
            "steps": [{"id": "echo", "tool": "test.echo", "input": {"x": 1, "tags": ["a", "b"]}}]})
    );
    // Without --agent, a plan's task is the plan's agent's, as with `plan submit`.
    assert_eq!(status.json()["agent"], "agent-deployer-7");
    let explicit = env.run(&[
        "submit",
        "plan",
        "--input",
        "@plan.yml",
        "--agent",
        "agent-other",
    ]);
    // The plan's agent must be the submission's: another is refused.
    explicit.expect_code(2);
    assert!(
        explicit.stderr.contains("input.agent"),
        "{}",
        explicit.stderr
    );

    // A broken YAML file is refused naming the file; nothing is added.
    std::fs::write(env.dir.path().join("bad.yaml"), "steps: [unclosed\n").unwrap();
    let bad = env.run(&["submit", "plan", "--input", "@bad.yaml"]);
    bad.expect_code(2);
    assert_eq!(bad.stdout, "");
    assert!(
        bad.stderr
            .contains("--input file bad.yaml is not valid YAML"),
        "{}",
        bad.stderr
    );
    // The same text under another name is JSON, as before.
    std::fs::write(env.dir.path().join("plan.txt"), plan).unwrap();
    let not_json = env.run(&["submit", "plan", "--input", "@plan.txt"]);
    not_json.expect_code(2);
    assert!(
        not_json.stderr.contains("not valid JSON"),
        "{}",
        not_json.stderr
    );
    assert_eq!(
        env.run(&["list", "--json"])
            .json()
            .as_array()
            .unwrap()
            .len(),
        1,
        "only the plan whose agent matched was created"
    );
}
