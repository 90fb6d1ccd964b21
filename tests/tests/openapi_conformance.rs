//! The OpenAPI document is the truth: schemathesis (PyPI) runs every check
//! (`--checks all`) against `/openapi.json` of a real server on SQLite and on
//! PostgreSQL and must report no failure. Every route in the document is
//! tested, so routes added later are covered without touching this file;
//! only the event stream is left out (it never ends; `api.rs` tests it).
//!
//! schemathesis comes from `.ci/venv` (`.ci/run` installs it) or
//! `MANDATE_SCHEMATHESIS`; without it this test fails, saying how to install.

#[path = "support/api_server.rs"]
mod api_server;
#[path = "support/gov.rs"]
mod gov;

use std::path::PathBuf;
use std::time::Duration;

use mandate_tests::{Backend, backend_tests};

/// Test cases per operation and phase; with the fixed seed, a run takes
/// seconds per store.
const MAX_EXAMPLES: &str = "25";
/// The whole run's bound.
const RUN_TIMEOUT: Duration = Duration::from_secs(240);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn schemathesis() -> PathBuf {
    if let Ok(p) = std::env::var("MANDATE_SCHEMATHESIS") {
        return PathBuf::from(p);
    }
    let venv = repo().join(".ci/venv/bin/schemathesis");
    if venv.exists() {
        return venv;
    }
    panic!(
        "schemathesis is not installed at {} (CI={}): install it with \
         `python3 -m venv .ci/venv && .ci/venv/bin/pip install schemathesis` \
         (what .ci/run does), or set MANDATE_SCHEMATHESIS to its path",
        venv.display(),
        std::env::var("CI").unwrap_or_default()
    );
}

async fn schemathesis_finds_no_failure(b: Backend) {
    let bin = schemathesis();
    let api = api_server::start(b).await;
    let operator = api.token("operator", "st-operator").await;
    let approver = api.token("approver", "st-approver").await;
    let report = tempfile::tempdir().unwrap();
    let seed = std::env::var("MANDATE_SCHEMATHESIS_SEED").unwrap_or_else(|_| "1".into());
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.arg("--config-file")
        .arg(repo().join(".ci/schemathesis.toml"))
        .arg("run")
        .arg(format!("{}/openapi.json", api.base))
        .args(["--checks", "all"])
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--exclude-path", "/v1/events"])
        .args(["--request-timeout", "20"])
        .args(["--seed", &seed])
        .args(["--generation-database", "none"])
        .arg("--no-color")
        .arg("--report-dir")
        .arg(report.path())
        .env("MANDATE_ST_OPERATOR", &operator)
        .env("MANDATE_ST_APPROVER", &approver)
        .env("SCHEMATHESIS_TELEMETRY", "false")
        // Its cache (.schemathesis/) goes to the temporary directory.
        .current_dir(report.path())
        .kill_on_drop(true);
    let out = tokio::time::timeout(RUN_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("schemathesis ran longer than {RUN_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "schemathesis found failures on {b:?} (seed {seed}; exit {:?}):\n{stdout}\n{stderr}",
        out.status.code()
    );
    let summary = stdout.lines().rev().take(8).collect::<Vec<_>>();
    assert!(
        stdout.contains(" passed") && !stdout.contains("failed"),
        "unexpected schemathesis summary: {summary:?}"
    );
    println!("schemathesis on {b:?}: {}", summary.join(" | "));
}

backend_tests!(schemathesis_finds_no_failure);
