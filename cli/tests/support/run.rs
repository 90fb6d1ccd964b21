//! A finished run of a program (the built `mandate`, python3) and the checks
//! the CLI tests make on it: the exit code, stdout holding only an id, a seq
//! or JSON, a refusal printing nothing on stdout.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::process::Output;
use std::sync::mpsc;

use serde_json::Value;

/// Runs the built `mandate` with `args` on the database at `url` (no colour,
/// no log filter from the environment, no stdin).
pub fn mandate_on(url: &str, args: &[&str]) -> Run {
    std::process::Command::new(env!("CARGO_BIN_EXE_mandate"))
        .args(args)
        .env("MANDATE_DATABASE_URL", url)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .env_remove("MANDATE_SIGNING_KEY")
        .env_remove("MANDATE_SIGNING_KEY_FILE")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run mandate")
        .into()
}

pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Self {
            code: o.status.code(),
            stdout: String::from_utf8(o.stdout).expect("utf-8 stdout"),
            stderr: String::from_utf8(o.stderr).expect("utf-8 stderr"),
        }
    }
}

impl Run {
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "expected exit {code}\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Exit 2 with every one of `parts` in stderr, and nothing on stdout.
    #[track_caller]
    pub fn expect_refused(&self, parts: &[&str]) {
        self.expect_code(2);
        assert_eq!(self.stdout, "", "a refusal printed on stdout");
        for p in parts {
            assert!(
                self.stderr.contains(p),
                "{p:?} not in stderr: {}",
                self.stderr
            );
        }
    }

    #[track_caller]
    pub fn stdout_has(&self, text: &str) -> &Self {
        assert!(
            self.stdout.contains(text),
            "stdout lacks {text:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }

    /// The single line of stdout.
    #[track_caller]
    pub fn line(&self) -> String {
        let line = self
            .stdout
            .strip_suffix('\n')
            .unwrap_or_else(|| panic!("stdout does not end with a newline: {:?}", self.stdout));
        assert!(
            !line.contains('\n'),
            "stdout has more than one line: {:?}",
            self.stdout
        );
        line.to_string()
    }

    /// The single line of stdout, checked to be a task id.
    #[track_caller]
    pub fn task_id(&self) -> String {
        let id = self.line();
        uuid::Uuid::parse_str(&id).unwrap_or_else(|e| panic!("{id:?} is not a task id: {e}"));
        id
    }

    /// The single line of stdout, checked to be a seq.
    #[track_caller]
    pub fn seq(&self) -> i64 {
        let line = self.line();
        line.parse()
            .unwrap_or_else(|e| panic!("{line:?} is not a seq: {e}"))
    }
}

/// The lines of `pipe` (a child's stderr), read on a thread until it closes.
/// The thread keeps reading when the receiver is gone: a full pipe would
/// block the child, a closed one would fail its writes.
pub fn lines(pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    rx
}
