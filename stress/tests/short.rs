//! The stress suite's short mode, run by `cargo test`: 300 seeded tasks with
//! every fault kind enabled (one SIGKILL of the engine process, one freeze
//! past the lease) on SQLite and on PostgreSQL. The binary checks every
//! invariant itself and exits non-zero on a violation; this test also reads
//! its JSON report so a failure names what broke.

use std::process::Command;

use mandate_tests::{Backend, TestDb};
use serde_json::Value;

async fn short_run(backend: Backend, seed: u64) {
    let db = TestDb::new(backend).await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let report_path = dir.path().join("report.json");
    let url = db.url.clone();
    let report_arg = report_path.display().to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_mandate-stress"))
            .args([
                "--db",
                &url,
                "--tasks",
                "300",
                "--seed",
                &seed.to_string(),
                "--faults",
                "all",
                "--kill-every",
                "2s",
                "--kills",
                "1",
                "--lease-ms",
                "1000",
                "--timeout",
                "120s",
                "--json",
                &report_arg,
            ])
            .output()
            .expect("run mandate-stress")
    })
    .await
    .expect("the stress run's thread");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "mandate-stress failed ({}) on {backend:?}, seed {seed}:\n{stdout}\n{stderr}",
        out.status
    );
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(&report_path).expect("the JSON report was written"),
    )
    .expect("the JSON report parses");
    assert_eq!(report["passed"], true, "{stdout}");
    assert_eq!(report["submitted"], 300, "{stdout}");
    assert_eq!(report["lost"], 0, "{stdout}");
    for (name, inv) in report["invariants"].as_object().expect("invariants") {
        assert_eq!(inv["count"], 0, "{name} violated:\n{stdout}");
    }
    let rolled_back =
        report["rolled_back"].as_u64().unwrap() + report["escalated"].as_u64().unwrap();
    assert!(
        rolled_back > 30,
        "too few rollbacks to prove anything ({rolled_back}):\n{stdout}"
    );
    assert_eq!(report["faults_injected"]["kill"], 1, "{stdout}");
    assert_eq!(report["faults_injected"]["lease-expiry"], 1, "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_short_stress_run_keeps_every_invariant() {
    short_run(Backend::Sqlite, 7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_short_stress_run_keeps_every_invariant() {
    short_run(Backend::Postgres, 7).await;
}
