//! `mandate replay ID`: what happened to a task, proven, straight from the
//! database (no server needed). Verifies the hash chain from seq 1, rebuilds
//! the task's state from its events and compares it with the stored derived
//! rows, re-runs this binary's workflow code against the history (no side
//! effects), and prints the timeline with a one-line verdict. `--json` prints
//! the same as one JSON document (`docs/replay.md`).
//!
//! `mandate replay --all`: the safe-deploy check, the same over every task in
//! flight (or a selection), streamed; see [`super::verify`].

use std::io::Write;
use std::process::ExitCode;

use mandate_engine::audit::{
    self, AuditOptions, ChainVerdict, DeterminismVerdict, NotCheckedReason, ProjectionVerdict,
    Selection, TaskAudit, Verdict,
};
use serde::Serialize;

use super::verify::{self, SweepRequest};
use crate::app::{Database, refused};
use crate::args::ReplayArgs;
use crate::{style, summary, timeline};

/// Names the `--json` document's shape; bumped if a field changes meaning.
pub const JSON_SCHEMA: &str = "mandate.replay/v1";

pub async fn run(db: &Database, args: ReplayArgs) -> anyhow::Result<ExitCode> {
    if args.all {
        let status = verify::parse_status(args.status.as_deref())?;
        let request = SweepRequest {
            command: "replay --all",
            selection: match (status, args.every) {
                (Some(s), _) => Selection::Status(s),
                (None, true) => Selection::All,
                (None, false) => Selection::InFlight,
            },
            since: verify::parse_since(args.since.as_deref())?,
            check_determinism: true,
            json: args.json,
        };
        return verify::run_sweep(db, request).await;
    }
    let Some(task_id) = args.id else {
        return Err(refused(
            "name a task (`mandate replay ID`) or pass --all to replay every task in flight",
        ));
    };
    db.require_existing()?;
    let store = mandate_engine::store::open(&db.url).await?;
    let audit = audit::audit_task(
        store.as_ref(),
        &mandate_workflows::registry(),
        &task_id,
        &AuditOptions::default(),
    )
    .await?;
    let code = verify::exit_code(audit.verdict);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.json {
        #[derive(Serialize)]
        struct Doc<'a> {
            schema: &'static str,
            exit_code: u8,
            summary: String,
            #[serde(flatten)]
            audit: &'a TaskAudit,
            timeline: Vec<String>,
        }
        let doc = Doc {
            schema: JSON_SCHEMA,
            exit_code: code,
            summary: verdict_line(&audit, code),
            audit: &audit,
            timeline: timeline::render(&audit.events),
        };
        writeln!(out, "{}", serde_json::to_string(&doc)?)?;
    } else {
        let colored = style::stdout_colored();
        for line in report(&audit, code) {
            let line = summary::escape(&line).into_owned();
            let line = if code != 0 && line.starts_with("verdict") {
                style::red(&line, colored)
            } else {
                line
            };
            writeln!(out, "{line}")?;
        }
    }
    out.flush()?;
    Ok(ExitCode::from(code))
}

/// The human report: header, timeline, one line per check, the verdict.
pub fn report(audit: &TaskAudit, code: u8) -> Vec<String> {
    let first_ms = audit.events.first().map(|e| e.recorded_at_ms);
    let mut lines = vec![format!(
        "task {} ({} v{}), {} event(s); times UTC{}",
        audit.task_id,
        audit.workflow.as_deref().unwrap_or("unknown workflow"),
        audit
            .workflow_version
            .map(|v| v.to_string())
            .unwrap_or_else(|| "?".into()),
        audit.event_count,
        first_ms
            .map(|ms| format!(", from {}", summary::day(ms)))
            .unwrap_or_default()
    )];
    if audit.events.len() < audit.event_count {
        lines.push(format!(
            "  (only the first {} event(s) parse; the timeline stops there)",
            audit.events.len()
        ));
    }
    lines.extend(
        timeline::render(&audit.events)
            .into_iter()
            .map(|l| format!("  {l}")),
    );
    lines.push(String::new());
    lines.extend(verify::check_lines(audit));
    lines.push(determinism_line(audit));
    lines.push(verdict_line(audit, code));
    if let Some(next) = next_step(audit) {
        lines.push(format!("next         {next}"));
    }
    lines
}

/// What to do about a finding, in one line.
fn next_step(audit: &TaskAudit) -> Option<String> {
    let id = &audit.task_id;
    match audit.verdict {
        Verdict::Ok => None,
        Verdict::ChainBroken => Some(format!(
            "the engine halts a task whose chain is broken and never repairs it; keep the evidence with `mandate history {id} --json --unverified > {id}.jsonl` (docs/hash-chain.md: how to check it independently)"
        )),
        Verdict::ProjectionMismatch => Some(
            "the history verifies and is the ground truth: the derived rows above were changed outside the engine (or by a bug); trust the timeline, not `mandate status`, for this task".to_string(),
        ),
        Verdict::ReplayFailed => Some(match &audit.determinism {
            DeterminismVerdict::NonDeterminism { seq, .. } => format!(
                "a worker running this binary would block the task at seq {seq}: deploy the code that recorded the history (v{}), or change the code so it issues the recorded commands",
                audit.workflow_version.unwrap_or(0)
            ),
            DeterminismVerdict::NotChecked {
                reason: NotCheckedReason::WorkflowNotRegistered,
                ..
            } => format!(
                "deploy a binary that registers workflow {:?} before this task can advance",
                audit.workflow.as_deref().unwrap_or("?")
            ),
            _ => "the history was written by a binary that knows more event types than this one: replay it with that binary".to_string(),
        }),
    }
}

fn determinism_line(audit: &TaskAudit) -> String {
    let workflow = audit.workflow.as_deref().unwrap_or("?");
    match &audit.determinism {
        DeterminismVerdict::Ok => format!(
            "determinism  ok: this binary's {workflow} code issues the recorded commands (replayed without side effects)"
        ),
        DeterminismVerdict::NonDeterminism {
            seq,
            expected,
            found,
        } => format!(
            "determinism  NON-DETERMINISM at seq {seq}: expected {}, found {}",
            summary::text(expected, 120),
            summary::text(found, 120)
        ),
        DeterminismVerdict::NotChecked { message, .. } => {
            format!("determinism  not checked: {}", summary::text(message, 300))
        }
    }
}

/// The one-line verdict; the most serious finding names it (chain > projection > replay).
pub fn verdict_line(audit: &TaskAudit, code: u8) -> String {
    let status = audit
        .status
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|| "unknown".into());
    let body = match audit.verdict {
        Verdict::Ok => format!(
            "OK: history intact, derived rows match, {} replays; task {status}",
            audit.workflow.as_deref().unwrap_or("the workflow")
        ),
        Verdict::ChainBroken => match &audit.chain {
            ChainVerdict::Broken(b) => format!(
                "TAMPERED: the hash chain breaks at seq {} ({}); this history cannot be trusted",
                b.seq, b.kind
            ),
            ChainVerdict::Ok { .. } => "TAMPERED".to_string(),
        },
        Verdict::ProjectionMismatch => match &audit.projection {
            ProjectionVerdict::Mismatch { diffs } => {
                let fields: Vec<&str> = diffs.iter().take(5).map(|d| d.field.as_str()).collect();
                let more = if diffs.len() > 5 { ", …" } else { "" };
                format!(
                    "MISMATCH: the history verifies, but the stored derived rows differ in {} field(s) ({}{more})",
                    diffs.len(),
                    fields.join(", ")
                )
            }
            _ => "MISMATCH".to_string(),
        },
        Verdict::ReplayFailed => match &audit.determinism {
            DeterminismVerdict::NonDeterminism { seq, .. } => format!(
                "NON-DETERMINISTIC: this binary's {} code diverges from the history at seq {seq}",
                audit.workflow.as_deref().unwrap_or("workflow")
            ),
            DeterminismVerdict::NotChecked {
                reason: NotCheckedReason::WorkflowNotRegistered,
                ..
            } => format!(
                "CANNOT REPLAY: workflow {:?} is not in this binary",
                audit.workflow.as_deref().unwrap_or("?")
            ),
            _ => "CANNOT REPLAY: this binary cannot read the history".to_string(),
        },
    };
    format!("verdict      {body} (exit {code})")
}

#[cfg(test)]
mod tests {
    use super::*;
    use mandate_engine::audit::{BreakKind, ChainBreak, FieldDiff};
    use serde_json::json;

    fn audit(verdict: Verdict) -> TaskAudit {
        TaskAudit {
            task_id: "t-1".into(),
            verdict,
            workflow: Some("deploy_with_rollback".into()),
            workflow_version: Some(1),
            status: Some(mandate_engine::TaskStatus::FailedTerminal),
            stored_status: Some(mandate_engine::TaskStatus::FailedTerminal),
            event_count: 0,
            chain: ChainVerdict::Ok {
                events: 0,
                head_hash: "ab".repeat(32),
            },
            projection: ProjectionVerdict::Ok,
            determinism: DeterminismVerdict::Ok,
            events: Vec::new(),
        }
    }

    #[test]
    fn verdict_lines_say_what_holds_and_what_does_not() {
        let ok = audit(Verdict::Ok);
        assert_eq!(
            verdict_line(&ok, 0),
            "verdict      OK: history intact, derived rows match, deploy_with_rollback replays; task failed_terminal (exit 0)"
        );
        let mut broken = audit(Verdict::ChainBroken);
        broken.chain = ChainVerdict::Broken(ChainBreak {
            seq: 5,
            kind: BreakKind::HashMismatch,
            message: "edited".into(),
        });
        assert!(verdict_line(&broken, 2).contains("breaks at seq 5 (hash_mismatch)"));
        let mut mismatch = audit(Verdict::ProjectionMismatch);
        mismatch.projection = ProjectionVerdict::Mismatch {
            diffs: vec![FieldDiff {
                field: "status".into(),
                stored: json!("completed"),
                rebuilt: json!("failed_terminal"),
                note: None,
            }],
        };
        assert!(verdict_line(&mismatch, 3).contains("differ in 1 field(s) (status)"));
        let text = report(&mismatch, 3).join("\n");
        assert!(
            text.contains("status: stored completed, rebuilt failed_terminal"),
            "{text}"
        );
        let mut nd = audit(Verdict::ReplayFailed);
        nd.determinism = DeterminismVerdict::NonDeterminism {
            seq: 4,
            expected: "step \"a\" (tool x)".into(),
            found: "step \"b\" (tool y)".into(),
        };
        let report = report(&nd, 1).join("\n");
        assert!(
            report.contains(
                "NON-DETERMINISM at seq 4: expected step \"a\" (tool x), found step \"b\" (tool y)"
            ),
            "{report}"
        );
        assert!(
            report.contains("diverges from the history at seq 4 (exit 1)"),
            "{report}"
        );
    }
}
