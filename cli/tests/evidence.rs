//! The evidence log as an operator and an auditor use it, with the built
//! binary on SQLite and PostgreSQL: `keys generate`, `serve --signing-key`
//! writing checkpoints to a directory, `proof`, `verify --checkpoint` (exit 0
//! intact, 2 tampered or another key's checkpoint), key rotation, and the
//! independent standard-library verifier checking a checkpoint and a proof
//! with the public key alone.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use mandate_engine::TaskStatus;
use mandate_tests::{Backend, Harness, backend_tests, exec_sql};
use serde_json::json;

#[path = "support/run.rs"]
mod run;
use run::Run;

const BIN: &str = env!("CARGO_BIN_EXE_mandate");

/// Runs `mandate ARGS` against `url`.
fn mandate(url: &str, args: &[&str]) -> Run {
    run::mandate_on(url, args)
}

fn python(args: &[&str]) -> Run {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/tools/verify_chain.py");
    Command::new("python3")
        .arg(&script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("python3 runs (the CI requires it)")
        .into()
}

/// `mandate keys generate` into `out`; the printed public key.
fn generate(url: &str, out: &str) -> String {
    mandate(
        url,
        &[
            "keys",
            "generate",
            "--name",
            "test.example/log",
            "--out",
            out,
        ],
    )
    .expect_code(0)
    .line()
}

/// The size line of a checkpoint file, once it exists.
fn checkpoint_size(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .nth(1)?
        .parse()
        .ok()
}

async fn signed_checkpoint_proofs_and_tampering(b: Backend) {
    let mut h = Harness::new(b).await;
    let mut tasks = Vec::new();
    for v in ["v1", "v2"] {
        let (id, row) = h
            .run(
                "deploy_with_rollback",
                json!({"service": "api", "version": v}),
            )
            .await;
        assert_eq!(row.status, TaskStatus::Completed);
        tasks.push(id);
    }
    h.stop_worker().await;
    let url = h.db.url.clone();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("log.key");
    let key_path = key_file.to_str().unwrap();

    // An operator makes a key: private in a 0600 file, public on stdout.
    let public = generate(&url, key_path);
    assert!(public.starts_with("test.example/log+"), "{public}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    mandate(&url, &["keys", "generate", "--out", key_path]).expect_refused(&["never overwritten"]);
    assert_eq!(
        mandate(&url, &["keys", "public", key_path])
            .expect_code(0)
            .line(),
        public
    );

    // `serve` signs checkpoints into the directory until one covers every event.
    let cps = dir.path().join("checkpoints");
    let mut serve = Command::new(BIN)
        .args([
            "--db",
            &url,
            "serve",
            "--no-http",
            "--signing-key",
            key_path,
        ])
        .args([
            "--checkpoint-every",
            "1",
            "--checkpoint-dir",
            cps.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mandate serve");
    let head = h.engine.store().event_head().await.unwrap() as u64;
    let latest = cps.join("latest");
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let covered = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            tick.tick().await;
            if checkpoint_size(&latest) == Some(head) {
                return;
            }
        }
    })
    .await;
    serve.kill().unwrap();
    serve.wait().unwrap();
    covered.expect("no checkpoint covering every event was written within 60 s");
    let cp = latest.to_str().unwrap();

    mandate(
        &url,
        &["verify", "--checkpoint", cp, "--public-key", &public],
    )
    .expect_code(0)
    .stdout_has("verdict      OK");

    // A proof, checked offline by the independent verifier with the public key alone.
    let proof = mandate(
        &url,
        &[
            "proof",
            &tasks[1],
            "--checkpoint",
            cp,
            "--public-key",
            &public,
            "--json",
        ],
    );
    proof.expect_code(0);
    let doc = proof.json();
    assert!(
        doc["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["verified"] == true)
    );
    let proof_file = dir.path().join("proof.json");
    std::fs::write(&proof_file, &proof.stdout).unwrap();
    let proof_path = proof_file.to_str().unwrap();
    python(&[
        "--public-key",
        &public,
        "--checkpoint",
        cp,
        "--proof",
        proof_path,
    ])
    .expect_code(0)
    .stdout_has("signature ok");
    // A proof for another leaf than it claims fails there.
    let mut forged = doc.clone();
    forged["events"][0]["event_hash"] = doc["events"][1]["event_hash"].clone();
    std::fs::write(&proof_file, forged.to_string()).unwrap();
    python(&[
        "--public-key",
        &public,
        "--checkpoint",
        cp,
        "--proof",
        proof_path,
    ])
    .expect_code(1);

    // Another key's checkpoint is refused, by both verifiers.
    let other_file = dir.path().join("other.key");
    let other = generate(&url, other_file.to_str().unwrap());
    mandate(
        &url,
        &["verify", "--checkpoint", cp, "--public-key", &other],
    )
    .expect_code(2)
    .stdout_has("REFUSED");
    python(&["--public-key", &other, "--checkpoint", cp]).expect_code(1);

    // Rotation: the new key signs a statement naming the old one, and so does the old.
    let statement = mandate(
        &url,
        &[
            "keys",
            "rotate",
            "--old",
            key_path,
            "--new",
            other_file.to_str().unwrap(),
        ],
    );
    statement.expect_code(0);
    let st_file = dir.path().join("rotation.note");
    std::fs::write(&st_file, &statement.stdout).unwrap();
    let st = st_file.to_str().unwrap();
    assert_eq!(
        mandate(
            &url,
            &["keys", "verify-rotation", st, "--public-key", &public]
        )
        .expect_code(0)
        .line(),
        other
    );
    mandate(
        &url,
        &["keys", "verify-rotation", st, "--public-key", &other],
    )
    .expect_code(2);

    // An insider deletes a whole task: named by its first global number.
    let first = doc["events"][0]["gseq"].as_i64().unwrap();
    exec_sql(
        &h.db,
        &format!("DELETE FROM events WHERE task_id = '{}'", tasks[1]),
    )
    .await;
    exec_sql(
        &h.db,
        &format!("DELETE FROM tasks WHERE id = '{}'", tasks[1]),
    )
    .await;
    let report = mandate(
        &url,
        &[
            "verify",
            "--checkpoint",
            cp,
            "--public-key",
            &public,
            "--json",
        ],
    );
    report.expect_code(2);
    let report = report.json();
    assert_eq!(report["first_bad_gseq"], first, "{report}");
    assert!(
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["kind"] == "task_deleted" && f["task_id"] == tasks[1].as_str()),
        "{report}"
    );
}

backend_tests!(signed_checkpoint_proofs_and_tampering);
