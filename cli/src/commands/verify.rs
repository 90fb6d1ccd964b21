//! `mandate verify`: the hash chain and the derived rows of every task (or of
//! one), straight from the database. Also the sweep shared with
//! `mandate replay --all`: tasks are streamed a page at a time (bounded
//! memory), a progress bar goes to stderr when it is a terminal, and stdout
//! gets the summary and the first bad tasks.
//!
//! Exit codes (see `docs/replay.md`): 0 all good, 2 a chain is broken,
//! 3 a derived row differs from its history, 1 a task does not replay with
//! this binary; the most serious finding decides.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mandate_engine::TaskStatus;
use mandate_engine::audit::{
    self, AuditOptions, ChainVerdict, ProjectionVerdict, Selection, SweepOptions, SweepSummary,
    TaskAudit, Verdict,
};
use serde::Serialize;

use crate::app::{self, Database, refused};
use crate::args::VerifyArgs;
use crate::summary;

/// The longest problem text in the list of bad tasks.
const MAX_PROBLEM_CHARS: usize = 160;

pub async fn run(db: &Database, args: VerifyArgs) -> anyhow::Result<ExitCode> {
    if let (Some(checkpoint), Some(key)) = (&args.checkpoint, &args.public_key) {
        return verify_checkpoint(db, checkpoint, key, args.json).await;
    }
    if let Some(id) = args.id {
        return verify_one(db, &id, args.json).await;
    }
    let request = SweepRequest {
        command: "verify",
        selection: match parse_status(args.status.as_deref())? {
            Some(s) => Selection::Status(s),
            None => Selection::All,
        },
        since: parse_since(args.since.as_deref())?,
        check_determinism: false,
        json: args.json,
    };
    run_sweep(db, request).await
}

/// `mandate verify ID`: chain and derived rows of one task.
async fn verify_one(db: &Database, task_id: &str, json: bool) -> anyhow::Result<ExitCode> {
    db.require_existing()?;
    let store = mandate_engine::store::open(&db.url).await?;
    let options = AuditOptions {
        check_determinism: false,
    };
    let audit = audit::audit_task(
        store.as_ref(),
        &mandate_workflows::registry(),
        task_id,
        &options,
    )
    .await?;
    let code = exit_code(audit.verdict);
    let mut out = std::io::stdout().lock();
    if json {
        #[derive(Serialize)]
        struct Doc<'a> {
            task_id: &'a str,
            verdict: Verdict,
            exit_code: u8,
            problem: Option<String>,
            chain: &'a ChainVerdict,
            projection: &'a ProjectionVerdict,
        }
        let doc = Doc {
            task_id,
            verdict: audit.verdict,
            exit_code: code,
            problem: audit.problem(),
            chain: &audit.chain,
            projection: &audit.projection,
        };
        writeln!(out, "{}", serde_json::to_string(&doc)?)?;
    } else {
        for line in check_lines(&audit) {
            writeln!(out, "{line}")?;
        }
        let verdict = match audit.problem() {
            None => format!(
                "verdict      OK: the history of {task_id} is intact and its derived rows match (exit 0)"
            ),
            Some(p) => format!(
                "verdict      {}: {} (exit {code})",
                audit.verdict.as_str().to_uppercase(),
                summary::text(&p, 300)
            ),
        };
        writeln!(out, "{verdict}")?;
    }
    out.flush()?;
    Ok(ExitCode::from(code))
}

/// `mandate verify --checkpoint FILE --public-key K`: the database against a
/// signed checkpoint (engine::evidence::verify). Exit 0 intact, 2 the
/// checkpoint is refused or something changed.
async fn verify_checkpoint(
    db: &Database,
    checkpoint: &std::path::Path,
    key: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let key = crate::commands::keys::public_key_arg(key)?;
    let note = crate::commands::keys::read_small(checkpoint)?;
    let mut out = std::io::stdout().lock();
    let cp = match mandate_engine::evidence::Checkpoint::open(&note, &key) {
        Ok(cp) => cp,
        Err(e) => {
            let problem = format!("checkpoint {} refused: {e}", checkpoint.display());
            if json {
                let doc = serde_json::json!({"ok": false, "exit_code": app::EXIT_TAMPERED, "refused": problem});
                writeln!(out, "{doc}")?;
            } else {
                writeln!(out, "verdict      REFUSED: {problem} (exit 2)")?;
            }
            return Ok(ExitCode::from(app::EXIT_TAMPERED));
        }
    };
    db.require_existing()?;
    let store = mandate_engine::store::open(&db.url).await?;
    let report = mandate_engine::evidence::verify(&store.evidence_log(), &cp).await?;
    let code = if report.ok() {
        app::EXIT_OK
    } else {
        app::EXIT_TAMPERED
    };
    if json {
        let mut doc = serde_json::to_value(&report)?;
        doc["ok"] = report.ok().into();
        doc["exit_code"] = code.into();
        writeln!(out, "{doc}")?;
    } else {
        writeln!(
            out,
            "checkpoint   {} size {} signed by {} (signature ok)",
            cp.origin,
            cp.size,
            key.id()
        )?;
        writeln!(
            out,
            "consistency  {}",
            if report.consistent {
                format!(
                    "ok: the log ({} leaves) extends the checkpoint",
                    report.log_size
                )
            } else {
                format!("NOT PROVEN: the log holds {} leaves", report.log_size)
            }
        )?;
        writeln!(
            out,
            "events       {} checked in global order ({} after the checkpoint)",
            report.events_checked, report.events_after_checkpoint
        )?;
        for f in &report.findings {
            writeln!(out, "  {:<16} {}", f.kind, summary::text(&f.message, 300))?;
        }
        if report.more_findings > 0 {
            writeln!(out, "  … and {} more", report.more_findings)?;
        }
        match report.first_bad_gseq {
            _ if report.ok() => writeln!(
                out,
                "verdict      OK: every event the checkpoint signed is intact and in place (exit 0)"
            )?,
            Some(g) => writeln!(out, "verdict      TAMPERED: first bad gseq {g} (exit 2)")?,
            None => writeln!(out, "verdict      TAMPERED (exit 2)")?,
        }
    }
    out.flush()?;
    Ok(ExitCode::from(code))
}

/// The exit code of a verdict.
pub fn exit_code(verdict: Verdict) -> u8 {
    match verdict {
        Verdict::Ok => app::EXIT_OK,
        Verdict::ReplayFailed => app::EXIT_NON_DETERMINISM,
        Verdict::ChainBroken => app::EXIT_TAMPERED,
        Verdict::ProjectionMismatch => app::EXIT_PROJECTION_MISMATCH,
    }
}

/// The `chain` and `projection` lines of a report (shared with `mandate replay`).
pub fn check_lines(audit: &TaskAudit) -> Vec<String> {
    let mut lines = Vec::new();
    lines.push(match &audit.chain {
        ChainVerdict::Ok { events, head_hash } => format!(
            "chain        ok: {events} event(s) verify from seq 1 (head {}…)",
            head_hash.get(..12).unwrap_or(head_hash)
        ),
        ChainVerdict::Broken(b) => format!(
            "chain        BROKEN at seq {} ({}): {}",
            b.seq,
            b.kind,
            summary::text(&b.message, 300)
        ),
    });
    match &audit.projection {
        ProjectionVerdict::Ok if !audit.chain.is_ok() => lines.push(
            "projection   ok: the stored task row and timers match the stored events (which the chain does not vouch for)".into(),
        ),
        ProjectionVerdict::Ok => {
            lines.push("projection   ok: the stored task row and timers match the history".into())
        }
        ProjectionVerdict::NotChecked { message } => lines.push(format!(
            "projection   not checked: {}",
            summary::text(message, 300)
        )),
        ProjectionVerdict::Mismatch { diffs } => {
            let rebuilt_from = if audit.chain.is_ok() {
                ""
            } else {
                " (rebuilt from the stored events, which the chain does not vouch for)"
            };
            lines.push(format!(
                "projection   MISMATCH in {} field(s){rebuilt_from}:",
                diffs.len()
            ));
            for d in diffs {
                let mut line = format!(
                    "               {}: stored {}, rebuilt {}",
                    summary::text(&d.field, 40),
                    summary::json(&d.stored, 80),
                    summary::json(&d.rebuilt, 80)
                );
                if let Some(note) = &d.note {
                    line.push_str(&format!(" ({note})"));
                }
                lines.push(line);
            }
        }
    }
    lines
}

/// Parses `--status`.
pub fn parse_status(status: Option<&str>) -> anyhow::Result<Option<TaskStatus>> {
    status
        .map(|s| {
            TaskStatus::parse(s).ok_or_else(|| {
                let valid: Vec<&str> = TaskStatus::ALL.iter().map(|s| s.as_str()).collect();
                refused(format!(
                    "unknown status {s:?} for --status; use one of: {}",
                    valid.join(", ")
                ))
            })
        })
        .transpose()
}

/// Parses `--since` into the earliest creation time, in ms since the epoch.
pub fn parse_since(since: Option<&str>) -> anyhow::Result<Option<i64>> {
    let Some(text) = since else {
        return Ok(None);
    };
    let span = parse_duration(text).map_err(|e| {
        refused(format!(
            "--since {text:?}: {e}; write a number and a unit, e.g. 30m, 2h, 7d or 1h30m"
        ))
    })?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    Ok(Some(now.saturating_sub(span.as_millis() as i64)))
}

/// `30m`, `2h`, `7d`, `1h30m`, `90s`, `2w` → a duration.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit_s: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            'w' => 604_800,
            other => return Err(format!("unknown unit {other:?} (use s, m, h, d or w)")),
        };
        if number.is_empty() {
            return Err(format!("unit {c:?} has no number before it"));
        }
        let n: u64 = number.parse().map_err(|_| "number too large".to_string())?;
        number.clear();
        total = n
            .checked_mul(unit_s)
            .and_then(|s| total.checked_add(s))
            .ok_or("duration too long")?;
    }
    if !number.is_empty() {
        return Err(format!("{number} has no unit"));
    }
    // Ten years is more than any history is kept; beyond is a typo.
    if total > 10 * 366 * 86_400 {
        return Err("longer than ten years".into());
    }
    Ok(Duration::from_secs(total))
}

/// What a sweep command asked for.
pub struct SweepRequest {
    /// `verify` or `replay --all`, for messages.
    pub command: &'static str,
    pub selection: Selection,
    pub since: Option<i64>,
    pub check_determinism: bool,
    pub json: bool,
}

fn describe_selection(selection: Selection) -> String {
    match selection {
        Selection::All => "every task".to_string(),
        Selection::InFlight => {
            "every task in flight (not completed, failed_terminal, escalated_to_human or cancelled)"
                .to_string()
        }
        Selection::Status(s) => format!("every {s} task"),
    }
}

fn progress_bar(total: Option<u64>) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
    };
    let template = if total.is_some() {
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} tasks, eta {eta} {msg}"
    } else {
        "{spinner} [{elapsed_precise}] {pos} tasks {msg}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Runs a sweep and reports it; shared by `verify` and `replay --all`.
pub async fn run_sweep(db: &Database, request: SweepRequest) -> anyhow::Result<ExitCode> {
    db.require_existing()?;
    let store = mandate_engine::store::open(&db.url).await?;
    let workflows = mandate_workflows::registry();
    let options = SweepOptions {
        selection: request.selection,
        since_ms: request.since,
        audit: AuditOptions {
            check_determinism: request.check_determinism,
        },
        ..SweepOptions::default()
    };
    // The count ignores --since, so with it the bar has no length.
    let total = match request.since {
        None => Some(audit::count_selected(store.as_ref(), request.selection).await?),
        Some(_) => None,
    };
    let bar = progress_bar(total);
    let started = Instant::now();
    let mut bad = 0u64;
    let summary = audit::sweep(store.as_ref(), &workflows, &options, &mut |v| {
        bar.inc(1);
        if v.verdict != Verdict::Ok {
            bad += 1;
            bar.set_message(format!("{bad} bad"));
        }
    })
    .await;
    bar.finish_and_clear();
    let summary = summary?;
    let code = exit_code(summary.worst());
    let elapsed = started.elapsed();
    let mut out = std::io::stdout().lock();
    if request.json {
        #[derive(Serialize)]
        struct Doc<'a> {
            command: &'static str,
            selection: String,
            since_ms: Option<i64>,
            determinism_checked: bool,
            exit_code: u8,
            verdict: Verdict,
            elapsed_ms: u128,
            #[serde(flatten)]
            summary: &'a SweepSummary,
        }
        let doc = Doc {
            command: request.command,
            selection: match request.selection {
                Selection::All => "all".into(),
                Selection::InFlight => "in_flight".into(),
                Selection::Status(s) => s.as_str().into(),
            },
            since_ms: request.since,
            determinism_checked: request.check_determinism,
            exit_code: code,
            verdict: summary.worst(),
            elapsed_ms: elapsed.as_millis(),
            summary: &summary,
        };
        writeln!(out, "{}", serde_json::to_string(&doc)?)?;
    } else {
        for line in summary_lines(&request, &summary, elapsed, code) {
            writeln!(out, "{line}")?;
        }
    }
    out.flush()?;
    Ok(ExitCode::from(code))
}

/// The human summary of a sweep.
fn summary_lines(
    request: &SweepRequest,
    s: &SweepSummary,
    elapsed: Duration,
    code: u8,
) -> Vec<String> {
    let what = if request.check_determinism {
        "chain, derived rows and replay with this binary's workflow code"
    } else {
        "chain and derived rows"
    };
    let since = if request.since.is_some() {
        ", submitted within --since"
    } else {
        ""
    };
    let mut lines = vec![format!(
        "{}: checked {} task(s) ({}{since}) for {what} in {}",
        request.command,
        s.checked,
        describe_selection(request.selection),
        summary::duration(elapsed.as_millis() as i64)
    )];
    lines.push(format!("  ok                   {:>8}", s.ok));
    lines.push(format!("  chain broken         {:>8}", s.chain_broken));
    lines.push(format!(
        "  projection mismatch  {:>8}",
        s.projection_mismatch
    ));
    if request.check_determinism {
        lines.push(format!("  replay failed        {:>8}", s.replay_failed));
    }
    if s.vanished > 0 {
        lines.push(format!("  vanished while read  {:>8}", s.vanished));
    }
    if !s.bad.is_empty() {
        lines.push(format!(
            "bad tasks ({} shown of {}; `mandate replay ID` explains one):",
            s.bad.len(),
            s.bad_total
        ));
        for v in &s.bad {
            lines.push(format!(
                "  {}  {:<18}  {:<19}  {}",
                v.task_id,
                v.stored_status.as_str(),
                v.verdict.as_str(),
                summary::text(v.problem.as_deref().unwrap_or(""), MAX_PROBLEM_CHARS)
            ));
        }
    }
    lines.push(match s.worst() {
        Verdict::Ok if s.checked == 0 => "verdict: no task matched (exit 0)".to_string(),
        Verdict::Ok => format!("verdict: all {} task(s) hold (exit 0)", s.checked),
        Verdict::ChainBroken => format!(
            "verdict: {} task(s) have a broken hash chain: their histories were tampered with (exit {code})",
            s.chain_broken
        ),
        Verdict::ProjectionMismatch => format!(
            "verdict: {} task(s) have derived rows that differ from their histories (exit {code})",
            s.projection_mismatch
        ),
        Verdict::ReplayFailed => format!(
            "verdict: {} task(s) do not replay with this binary's workflow code; deploying it would block them (exit {code})",
            s.replay_failed
        ),
    });
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1_800)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7_200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration(" 90s "), Ok(Duration::from_secs(90)));
        assert!(parse_duration("30").unwrap_err().contains("no unit"));
        assert!(parse_duration("3y").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
        assert!(parse_duration("5000w").is_err());
    }

    #[test]
    fn since_and_status_refusals_are_usage_errors() {
        let e = parse_since(Some("soon")).unwrap_err();
        assert_eq!(app::exit_code(&e), app::EXIT_REFUSED);
        let e = parse_status(Some("done")).unwrap_err();
        assert!(e.to_string().contains("completed"), "{e}");
        assert_eq!(
            parse_status(Some("running")).unwrap(),
            Some(TaskStatus::Running)
        );
        assert!(parse_since(Some("1d")).unwrap().unwrap() > 0);
    }

    #[test]
    fn a_summary_lists_bad_tasks_and_the_worst_verdict() {
        let s = SweepSummary {
            checked: 3,
            ok: 1,
            chain_broken: 1,
            replay_failed: 1,
            bad_total: 2,
            bad: vec![audit::TaskVerdict {
                task_id: "t1".into(),
                stored_status: TaskStatus::Running,
                verdict: Verdict::ChainBroken,
                problem: Some("x".repeat(1_000)),
            }],
            ..SweepSummary::default()
        };
        let request = SweepRequest {
            command: "replay --all",
            selection: Selection::InFlight,
            since: None,
            check_determinism: true,
            json: false,
        };
        let lines = summary_lines(&request, &s, Duration::from_millis(1_500), 2);
        let text = lines.join("\n");
        assert!(
            text.contains("checked 3 task(s) (every task in flight"),
            "{text}"
        );
        assert!(text.contains("  replay failed               1"), "{text}");
        assert!(text.contains("bad tasks (1 shown of 2"), "{text}");
        assert!(lines.iter().all(|l| l.chars().count() < 260), "{text}");
        assert!(
            lines.last().unwrap().contains("broken hash chain"),
            "{text}"
        );
    }
}
