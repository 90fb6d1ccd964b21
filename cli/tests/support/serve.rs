//! The built `mandate serve` as a child process on a free loopback port, for
//! the suites that speak to it as clients do (`mcp_python.rs`,
//! `mcp_upstream.rs`), and the Python of `.ci/venv` with the MCP SDK.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const BIN: &str = env!("CARGO_BIN_EXE_mandate");

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The venv's python, which must import `mcp`.
pub fn python() -> PathBuf {
    let py = repo().join(".ci/venv/bin/python");
    let ok = std::process::Command::new(&py)
        .args(["-c", "import mcp"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "the MCP Python SDK is not installed in {} (CI={}): install it with \
         `python3 -m venv .ci/venv && .ci/venv/bin/pip install 'mcp>=1.20,<2'` (what .ci/run does)",
        py.display(),
        std::env::var("CI").unwrap_or_default()
    );
    py
}

/// A running `mandate serve` (killed when dropped).
pub struct Served {
    pub child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Everything it wrote on stderr so far (for failure messages).
    pub stderr: Arc<Mutex<String>>,
}

/// Starts `mandate serve` on the database at `url` with the policies in
/// `policies`, and waits (30 s at most) until its API listens.
pub async fn serve(url: &str, policies: &Path, worker: &str, extra: &[&str]) -> Served {
    let mut child = Command::new(BIN)
        .args(["--db", url, "--policies"])
        .arg(policies)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--worker-id",
            worker,
            "--rate-limit",
            "100000",
            "--rate-burst",
            "100000",
        ])
        .args(extra)
        .env_remove("RUST_LOG")
        .env_remove("MANDATE_SIGNING_KEY")
        .env_remove("MANDATE_SIGNING_KEY_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start mandate serve");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let stderr = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let log = stderr.clone();
    tokio::spawn(async move {
        let mut tx = Some(tx);
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.strip_prefix("mandate API listening on ")
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
            }
            let mut l = log.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    let base = match tokio::time::timeout(Duration::from_secs(30), rx).await {
        Ok(Ok(base)) => base,
        _ => panic!(
            "mandate serve did not listen within 30 s; its stderr:\n{}",
            stderr.lock().unwrap()
        ),
    };
    Served {
        child,
        base,
        stderr,
    }
}

impl Served {
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// SIGKILL: the process ends at once, nothing flushed or given back.
    pub async fn sigkill(&mut self) {
        self.child.start_kill().expect("SIGKILL mandate serve");
        let _ = self.child.wait().await;
    }
}

/// The parsed history of `task`.
pub async fn history(
    store: &dyn mandate_engine::store::Store,
    task: &str,
) -> Vec<mandate_engine::Event> {
    store
        .load_history(task)
        .await
        .unwrap()
        .iter()
        .map(|r| mandate_engine::core::event::parse(r).unwrap())
        .collect()
}

/// The tasks of the database (at most 100).
pub async fn tasks(
    store: &dyn mandate_engine::store::Store,
) -> Vec<mandate_engine::store::TaskRow> {
    store
        .list_tasks(mandate_engine::store::TaskFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
}
