//! `mandate replay`, `mandate verify` and the exported chain, run as a user
//! would: the built binary against a database on SQLite and on PostgreSQL,
//! with the tasks made by an in-process engine (the same built-in workflows
//! as the binary) and tampered with by SQL. Checks the exit codes (0 ok,
//! 1 non-determinism, 2 tampered or a usage error, 3 derived rows differ),
//! that each failure names its seq, and that an independent implementation
//! (`tests/tools/verify_chain.py`, Python standard library only) re-verifies
//! an export.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use futures::future::BoxFuture;
use mandate_engine::{
    EventPayload, StepOptions, TaskStatus, Workflow, WorkflowContext, WorkflowError,
};
use mandate_tests::{Backend, Harness, backend_tests, exec_sql};
use serde_json::{Value, json};

#[path = "support/run.rs"]
mod run;
use run::Run;

/// Runs `mandate ARGS` against `url`.
fn mandate(url: &str, args: &[&str]) -> Run {
    run::mandate_on(url, args)
}

/// Runs the independent verifier with `input` on its stdin.
fn verify_chain_py(input: &str) -> Run {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/tools/verify_chain.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs (the CI requires it)");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.as_bytes())
        .expect("write the export");
    child.wait_with_output().expect("verifier finishes").into()
}

/// Runs deploys in-process and stops the worker: a database for the binary.
async fn deploys(b: Backend, completed: usize) -> (Harness, Vec<String>, String) {
    let mut h = Harness::new(b).await;
    let mut ids = Vec::new();
    for i in 0..completed {
        let (id, row) = h
            .run(
                "deploy_with_rollback",
                json!({"service": format!("svc-{i}"), "version": "v2"}),
            )
            .await;
        assert_eq!(row.status, TaskStatus::Completed);
        ids.push(id);
    }
    let (rolled_back, row) = h
        .run(
            "deploy_with_rollback",
            json!({"service": "checkout", "version": "v3-bad", "expect_healthy": false}),
        )
        .await;
    assert_eq!(row.status, TaskStatus::FailedTerminal);
    h.stop_worker().await;
    (h, ids, rolled_back)
}

async fn each_outcome_has_its_exit_code(b: Backend) {
    let (h, ids, rolled_back) = deploys(b, 4).await;
    let url = h.db.url.clone();

    // Untouched: the timeline, every check, exit 0.
    let r = mandate(&url, &["replay", &rolled_back]);
    r.expect_code(0)
        .stdout_has("submitted deploy_with_rollback v1")
        .stdout_has("compensating step 'deploy'")
        .stdout_has("status → failed_terminal")
        .stdout_has("chain        ok: 15 event(s) verify from seq 1")
        .stdout_has("projection   ok")
        .stdout_has("determinism  ok")
        .stdout_has("verdict      OK");
    let doc = mandate(&url, &["replay", &rolled_back, "--json"])
        .expect_code(0)
        .json();
    assert_eq!(doc["schema"], "mandate.replay/v1");
    assert_eq!(doc["verdict"], "ok");
    assert_eq!(doc["exit_code"], 0);
    assert_eq!(doc["status"], "failed_terminal");
    assert_eq!(doc["chain"]["result"], "ok");
    assert_eq!(doc["events"].as_array().unwrap().len(), 15);
    assert_eq!(doc["events"][0]["type"], "TaskSubmitted");
    assert!(doc["timeline"].as_array().unwrap().len() > 15);

    // Edited payload: tampered, the seq named.
    let [edited, deleted, swapped, row_tampered] = [&ids[0], &ids[1], &ids[2], &ids[3]];
    exec_sql(
        &h.db,
        &format!("UPDATE events SET payload = replace(payload, 'v2', 'v9') WHERE task_id = '{edited}' AND seq = 6"),
    )
    .await;
    mandate(&url, &["replay", edited])
        .expect_code(2)
        .stdout_has("chain        BROKEN at seq 6 (hash_mismatch)")
        .stdout_has("verdict      TAMPERED: the hash chain breaks at seq 6")
        .stdout_has(&format!("mandate history {edited} --json --unverified"));
    let doc = mandate(&url, &["replay", edited, "--json"])
        .expect_code(2)
        .json();
    assert_eq!(doc["verdict"], "chain_broken");
    assert_eq!(
        (&doc["chain"]["seq"], &doc["chain"]["kind"]),
        (&json!(6), &json!("hash_mismatch"))
    );
    assert_eq!(doc["determinism"]["reason"], "chain_broken");

    // A deleted middle event, two swapped events.
    exec_sql(
        &h.db,
        &format!("DELETE FROM events WHERE task_id = '{deleted}' AND seq = 4"),
    )
    .await;
    mandate(&url, &["replay", deleted])
        .expect_code(2)
        .stdout_has("BROKEN at seq 4 (gap)");
    for sql in [
        "UPDATE events SET seq = -1 WHERE task_id = '{id}' AND seq = 3",
        "UPDATE events SET seq = 3 WHERE task_id = '{id}' AND seq = 4",
        "UPDATE events SET seq = 4 WHERE task_id = '{id}' AND seq = -1",
    ] {
        exec_sql(&h.db, &sql.replace("{id}", swapped)).await;
    }
    mandate(&url, &["replay", swapped])
        .expect_code(2)
        .stdout_has("BROKEN at seq 3 (reordered)");

    // A tampered derived row: the history verifies, the row does not match it.
    exec_sql(
        &h.db,
        &format!("UPDATE tasks SET status = 'running' WHERE id = '{row_tampered}'"),
    )
    .await;
    mandate(&url, &["replay", row_tampered])
        .expect_code(3)
        .stdout_has("projection   MISMATCH in 1 field(s):")
        .stdout_has("status: stored running, rebuilt completed")
        .stdout_has("determinism  ok");

    // Unknown task: a clear error, and the usage-error code.
    let r = mandate(&url, &["replay", "0190aaaa-0000-7000-8000-000000000000"]);
    r.expect_code(2);
    assert!(
        r.stderr.contains("no task with id 0190aaaa-"),
        "{}",
        r.stderr
    );
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    mandate(&url, &["replay"]).expect_code(2);

    // verify: every task, the worst finding decides, the bad ones listed.
    let r = mandate(&url, &["verify"]);
    r.expect_code(2)
        .stdout_has("verify: checked 5 task(s) (every task) for chain and derived rows")
        .stdout_has("bad tasks (4 shown of 4");
    for id in [edited, deleted, swapped, row_tampered] {
        r.stdout_has(id);
    }
    let doc = mandate(&url, &["verify", "--all", "--json"])
        .expect_code(2)
        .json();
    assert_eq!(
        (
            &doc["checked"],
            &doc["ok"],
            &doc["chain_broken"],
            &doc["projection_mismatch"]
        ),
        (&json!(5), &json!(1), &json!(3), &json!(1))
    );
    mandate(&url, &["verify", &rolled_back])
        .expect_code(0)
        .stdout_has("verdict      OK");
    mandate(&url, &["verify", row_tampered]).expect_code(3);
    mandate(&url, &["verify", "--status", "failed_terminal"])
        .expect_code(0)
        .stdout_has("checked 1 task(s) (every failed_terminal task)");
    mandate(&url, &["verify", "--since", "soon"]).expect_code(2);
    // In flight, by its row: only the task whose row was set to running.
    mandate(&url, &["replay", "--all"])
        .expect_code(3)
        .stdout_has("checked 1 task(s) (every task in flight")
        .stdout_has(row_tampered);
    mandate(&url, &["replay", "--all", "--status", "queued"])
        .expect_code(0)
        .stdout_has("verdict: no task matched (exit 0)");
    mandate(&url, &["replay", "--all", "--every", "--since", "1h"])
        .expect_code(2)
        .stdout_has("checked 5 task(s)");
}

/// Registered under a built-in name, issuing other commands than the built-in
/// does: what a history made by an older binary looks like to this one.
struct NotTheSaga;

impl Workflow for NotTheSaga {
    fn name(&self) -> &str {
        "saga"
    }
    fn run(
        &self,
        ctx: WorkflowContext,
        _input: Value,
    ) -> BoxFuture<'static, Result<Value, WorkflowError>> {
        Box::pin(async move {
            ctx.step(StepOptions::new("test.echo", json!({"n": 1})).name("first"))
                .await?;
            ctx.wait_signal("go", None).await;
            Ok(json!({}))
        })
    }
}

async fn changed_code_is_exit_1_naming_the_seq(b: Backend) {
    let mut h = Harness::with(b, |w, _| {
        w.register(NotTheSaga);
    })
    .await;
    h.start_worker();
    let id = h
        .engine
        .submit(
            "saga",
            json!({"stages": [[{"tool": "test.echo", "input": {"n": 1}}]]}),
            Default::default(),
        )
        .await
        .unwrap()
        .task_id;
    // Wait (on the engine's updates, bounded) until the old code waits for its signal.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let history = h.engine.history(&id).await.unwrap();
        if history
            .iter()
            .any(|e| matches!(e.payload, EventPayload::SignalWaitStarted { .. }))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the task never waited"
        );
        let mut updates = h.engine.subscribe();
        let _ = tokio::time::timeout(Duration::from_millis(100), updates.recv()).await;
    }
    h.stop_worker().await;
    let url = h.db.url.clone();

    // The binary's saga names its step test.echo#1, the history says "first".
    mandate(&url, &["replay", &id])
        .expect_code(1)
        .stdout_has("determinism  NON-DETERMINISM at seq 3: expected step \"first\" (tool test.echo), found step \"test.echo#1\" (tool test.echo)")
        .stdout_has("diverges from the history at seq 3 (exit 1)");
    let doc = mandate(&url, &["replay", &id, "--json"])
        .expect_code(1)
        .json();
    assert_eq!(doc["verdict"], "replay_failed");
    assert_eq!(doc["determinism"]["result"], "non_determinism");
    assert_eq!(doc["determinism"]["seq"], 3);
    // The safe-deploy check: this binary would not replay the task in flight.
    mandate(&url, &["replay", "--all"])
        .expect_code(1)
        .stdout_has("checked 1 task(s) (every task in flight")
        .stdout_has(&id)
        .stdout_has("non-determinism at seq 3");
    mandate(&url, &["replay", "--all", "--status", "running"]).expect_code(1);
    mandate(&url, &["replay", "--all", "--status", "completed"]).expect_code(0);
    // verify checks the record, not the code.
    mandate(&url, &["verify"]).expect_code(0);
}

async fn an_export_verifies_with_an_independent_implementation(b: Backend) {
    let (h, ids, rolled_back) = deploys(b, 1).await;
    let url = h.db.url.clone();
    // Strings and keys that canonical JSON must get exactly right.
    let tricky = json!({
        "unicode": "ünïcødé ✓ 𝄞",
        "controls": "tab\there\nnewline \u{1} \u{7f} \"quoted\" back\\slash",
        "\u{e000}": "private use sorts after the astral key in UTF-16",
        "𝄞": "astral key",
        "nested": [1, -2, 9_007_199_254_740_991_i64, true, false, null, {"b": [], "a": {}}],
        "integral_float": 2.0,
    });
    let queued = h
        .engine
        .submit(
            "saga",
            json!({"stages": [[{"tool": "test.echo", "input": tricky}]]}),
            Default::default(),
        )
        .await
        .unwrap()
        .task_id;
    for id in [&rolled_back, &queued] {
        let export = mandate(&url, &["history", id, "--json"]);
        export.expect_code(0);
        let r = verify_chain_py(&export.stdout);
        r.expect_code(0).stdout_has(&format!("ok {id}:"));
    }

    // A large payload is stored whole but summarised in the timeline.
    let blob = "z".repeat(200_000);
    let big = h
        .engine
        .submit(
            "saga",
            json!({"stages": [[{"tool": "test.echo", "input": {"blob": blob}}]]}),
            Default::default(),
        )
        .await
        .unwrap()
        .task_id;
    let r = mandate(&url, &["replay", &big]);
    r.expect_code(0).stdout_has("verdict      OK");
    let longest = r.stdout.lines().map(|l| l.chars().count()).max().unwrap();
    assert!(longest < 400, "a line of {longest} chars");
    let doc = mandate(&url, &["replay", &big, "--json"]).json();
    assert_eq!(
        doc["events"][0]["payload"]["input"]["stages"][0][0]["input"]["blob"]
            .as_str()
            .map(str::len),
        Some(200_000)
    );

    // Tampered in the database: the unverified export fails, naming the seq.
    let id = &ids[0];
    exec_sql(
        &h.db,
        &format!("UPDATE events SET payload = replace(payload, 'v2', 'v9') WHERE task_id = '{id}' AND seq = 6"),
    )
    .await;
    let export = mandate(&url, &["history", id, "--json", "--unverified"]);
    export.expect_code(0);
    let r = verify_chain_py(&export.stdout);
    r.expect_code(1)
        .stdout_has(&format!("BROKEN task {id} seq 6 "))
        .stdout_has("the event was edited");
    // A deleted event: the missing seq is named.
    exec_sql(
        &h.db,
        &format!("DELETE FROM events WHERE task_id = '{rolled_back}' AND seq = 7"),
    )
    .await;
    let export = mandate(&url, &["history", &rolled_back, "--json", "--unverified"]);
    verify_chain_py(&export.stdout)
        .expect_code(1)
        .stdout_has(&format!("BROKEN task {rolled_back} seq 7: missing"));
    // A float it cannot canonicalize exactly is refused, not guessed.
    let line = json!({"task_id": "t", "seq": 1, "type": "X", "actor": "a", "recorded_at_ms": 1,
                      "payload": {"f": 2.5}, "prev_hash": "0".repeat(64), "hash": "0".repeat(64)});
    verify_chain_py(&format!("{line}\n"))
        .expect_code(3)
        .stdout_has("UNSUPPORTED");
}

backend_tests!(
    each_outcome_has_its_exit_code,
    changed_code_is_exit_1_naming_the_seq,
    an_export_verifies_with_an_independent_implementation,
);
