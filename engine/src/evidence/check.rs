//! What a third party checks: a task's inclusion proofs against a
//! checkpoint, and a whole database against a signed checkpoint.
//!
//! [`verify`] trusts only the checkpoint (whose signature the caller has
//! checked with the log's public key). The stored tree is used to prove it
//! extends the checkpoint (a consistency proof) and to name what changed;
//! then every event is read in global order, its chain hash recomputed from
//! its content, and its leaf compared with the logged one, while the root of
//! the events' own leaves is folded and compared with the checkpoint's. So
//! an insider who recomputed a task's chain and its row, or removed a task,
//! or rewrote the log's own tables, is caught; the first bad gseq is named
//! whenever the log's tables still hold the original leaf there.

use std::collections::HashMap;

use serde::Serialize;

use super::log::{LeafRow, Log, LoggedEvent};
use super::merkle::{self, Frontier, Hash};
use super::note::Checkpoint;
use crate::store::Error;

/// The most findings a report lists (the rest are counted).
pub const MAX_FINDINGS: usize = 100;
/// Events read per page.
const PAGE: u32 = 1_000;

/// One problem, at the first global sequence number it concerns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// `edited`, `changed`, `moved`, `deleted`, `task_deleted`,
    /// `task_row_deleted`, `unnumbered`, `log_truncated`, `log_rewritten`,
    /// `inconsistent`.
    pub kind: &'static str,
    pub gseq: Option<i64>,
    pub task_id: Option<String>,
    pub seq: Option<i64>,
    pub message: String,
}

/// The outcome of [`verify`].
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub origin: String,
    pub checkpoint_size: u64,
    pub checkpoint_root: String,
    /// Leaves the log holds now.
    pub log_size: u64,
    /// Whether the stored tree proved to extend the checkpoint.
    pub consistent: bool,
    /// Events read (global order).
    pub events_checked: u64,
    /// Events numbered past the checkpoint (checked against the unsigned log only).
    pub events_after_checkpoint: u64,
    pub first_bad_gseq: Option<i64>,
    pub findings: Vec<Finding>,
    /// Findings beyond [`MAX_FINDINGS`].
    pub more_findings: u64,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.findings.is_empty()
    }

    fn add(&mut self, f: Finding) {
        if let Some(g) = f.gseq {
            self.first_bad_gseq = Some(self.first_bad_gseq.map_or(g, |b| b.min(g)));
        }
        if self.findings.len() < MAX_FINDINGS {
            self.findings.push(f);
        } else {
            self.more_findings += 1;
        }
    }
}

fn finding(
    kind: &'static str,
    gseq: Option<i64>,
    leaf: Option<&LeafRow>,
    message: String,
) -> Finding {
    Finding {
        kind,
        gseq,
        task_id: leaf.map(|l| l.task_id.clone()),
        seq: leaf.map(|l| l.seq),
        message,
    }
}

/// Verifies the database behind `log` against a checkpoint whose signature
/// the caller has checked.
pub async fn verify(log: &Log, cp: &Checkpoint) -> Result<Report, Error> {
    let log_size = log.size().await?;
    let mut report = Report {
        origin: cp.origin.clone(),
        checkpoint_size: cp.size,
        checkpoint_root: hex::encode(cp.root),
        log_size,
        consistent: false,
        events_checked: 0,
        events_after_checkpoint: 0,
        first_bad_gseq: None,
        findings: Vec::new(),
        more_findings: 0,
    };

    // 1. The stored tree extends the checkpoint.
    if log_size < cp.size {
        report.add(finding(
            "log_truncated",
            Some(log_size as i64 + 1),
            None,
            format!(
                "the log holds {log_size} leaves, fewer than the {} the checkpoint signed: leaves from gseq {} on were removed",
                cp.size,
                log_size + 1
            ),
        ));
    } else if cp.size > 0 {
        let consistent = async {
            let proof = log.prove_consistency(cp.size, log_size).await?;
            let root = log.root(log_size).await?;
            Ok::<_, Error>(merkle::verify_consistency(
                cp.size, &cp.root, log_size, &root, &proof,
            ))
        }
        .await;
        match consistent {
            Ok(Ok(())) => report.consistent = true,
            Ok(Err(e)) => report.add(finding(
                "inconsistent",
                None,
                None,
                format!("the stored log is not an extension of the checkpoint ({e}): its tables were rewritten"),
            )),
            Err(e) => report.add(finding(
                "inconsistent",
                None,
                None,
                format!("the stored log cannot prove it extends the checkpoint: {e}"),
            )),
        }
    }

    // 2. Every event, in global order, against its logged leaf; fold the
    //    events' own tree up to the checkpoint's size.
    let mut ours = Frontier::default();
    let mut folding = true;
    let mut at: i64 = 1;
    let signed = cp.size as i64;
    let end = signed.max(log_size as i64);
    loop {
        let events = log.events_after(at - 1, PAGE).await?;
        let last = events.last().map_or(at - 1, |e| e.gseq);
        let leaves = leaves_between(log, at, last.min(log_size as i64)).await?;
        for e in &events {
            while at < e.gseq {
                missing(&mut report, at, leaves.get(&at));
                folding &= at > signed;
                at += 1;
            }
            check_event(&mut report, e, leaves.get(&e.gseq));
            if e.gseq > signed {
                report.events_after_checkpoint += 1;
            } else if folding {
                match merkle_leaf(&e.event.hash) {
                    Some(h) => drop(ours.push(h)),
                    None => folding = false,
                }
            }
            at = e.gseq + 1;
        }
        if events.len() == PAGE as usize {
            continue;
        }
        // The newest events are gone: name each, until the findings are full.
        folding &= at > signed;
        while at <= end && report.findings.len() < MAX_FINDINGS {
            let to = (at + PAGE as i64 - 1).min(end);
            let leaves = leaves_between(log, at, to.min(log_size as i64)).await?;
            for g in at..=to {
                missing(&mut report, g, leaves.get(&g));
            }
            at = to + 1;
        }
        report.more_findings += (end - at + 1).max(0) as u64;
        break;
    }

    // 3. The events' own root at the checkpoint's size.
    if report.first_bad_gseq.is_none()
        && folding
        && ours.size() == cp.size
        && ours.root() != cp.root
    {
        report.add(finding(
            "log_rewritten",
            None,
            None,
            format!(
                "the events' tree at size {} has root {}, the checkpoint signed {}: events were changed and the log's tables rewritten to match, so the first bad gseq cannot be named from this database",
                cp.size,
                hex::encode(ours.root()),
                hex::encode(cp.root)
            ),
        ));
    }
    for (task_id, seq) in log.unnumbered_events(MAX_FINDINGS as u32).await? {
        report.add(Finding {
            kind: "unnumbered",
            gseq: None,
            task_id: Some(task_id.clone()),
            seq: Some(seq),
            message: format!(
                "task {task_id} seq {seq} has no global number: it was inserted around the engine"
            ),
        });
    }
    deleted_tasks(log, &mut report).await?;
    report.findings.sort_by_key(|f| (f.gseq.is_none(), f.gseq));
    Ok(report)
}

fn merkle_leaf(event_hash: &str) -> Option<Hash> {
    super::log::parse_hash(event_hash).map(|b| merkle::leaf_hash(&b))
}

fn missing(report: &mut Report, g: i64, leaf: Option<&LeafRow>) {
    let what = match leaf {
        Some(l) => format!("task {} seq {}", l.task_id, l.seq),
        None => "an event the log had not taken yet".to_string(),
    };
    report.add(finding(
        "deleted",
        Some(g),
        leaf,
        format!("gseq {g} ({what}) is missing from the events table: it was deleted"),
    ));
}

/// Leaf rows for gseqs `[from, to]`, by gseq.
async fn leaves_between(log: &Log, from: i64, to: i64) -> Result<HashMap<i64, LeafRow>, Error> {
    let mut out = HashMap::new();
    let mut at = from;
    while at <= to {
        let page = log
            .leaves((at - 1) as u64, ((to - at + 1) as u32).min(PAGE))
            .await?;
        let Some(last) = page.last() else { break };
        at = last.index as i64 + 2;
        out.extend(
            page.into_iter()
                .filter(|l| (l.index as i64) < to)
                .map(|l| (l.index as i64 + 1, l)),
        );
    }
    Ok(out)
}

/// One event: its content against its hash, its row, its leaf.
fn check_event(report: &mut Report, e: &LoggedEvent, leaf: Option<&LeafRow>) {
    let (g, task, seq) = (e.gseq, &e.event.task_id, e.event.seq);
    report.events_checked += 1;
    let here = |kind, message| Finding {
        kind,
        gseq: Some(g),
        task_id: Some(task.clone()),
        seq: Some(seq),
        message,
    };
    if !matches!(e.event.compute_hash(), Ok(h) if h == e.event.hash) {
        report.add(here(
            "edited",
            format!("gseq {g} (task {task} seq {seq}): the event's content does not match its hash: it was edited"),
        ));
    }
    if !e.task_row {
        report.add(here(
            "task_row_deleted",
            format!("gseq {g}: task {task} has events but no task row"),
        ));
    }
    match leaf {
        Some(l) if l.event_hash == e.event.hash => {}
        Some(l) if l.task_id != *task || l.seq != seq => report.add(finding(
            "moved",
            Some(g),
            Some(l),
            format!(
                "gseq {g}: the log holds task {} seq {} here, the database now task {task} seq {seq}: events were swapped, moved or inserted",
                l.task_id, l.seq
            ),
        )),
        Some(l) => report.add(here(
            "changed",
            format!(
                "gseq {g} (task {task} seq {seq}): the event's hash is {}, the log recorded {}: the event was changed and its chain recomputed",
                super::short(&e.event.hash, 12),
                super::short(&l.event_hash, 12)
            ),
        )),
        None => {}
    }
}

/// Turns `deleted` findings whose task has no events left into `task_deleted`.
async fn deleted_tasks(log: &Log, report: &mut Report) -> Result<(), Error> {
    let mut tasks: Vec<String> = report
        .findings
        .iter()
        .filter(|f| f.kind == "deleted")
        .filter_map(|f| f.task_id.clone())
        .collect();
    tasks.sort();
    tasks.dedup();
    for task in tasks {
        if log.task_leaves(&task).await?.is_empty() {
            let first = report
                .findings
                .iter()
                .filter(|f| f.task_id.as_deref() == Some(&task))
                .filter_map(|f| f.gseq)
                .min();
            report.add(Finding {
                kind: "task_deleted",
                gseq: first,
                task_id: Some(task.clone()),
                seq: None,
                message: format!("task {task} was deleted: none of its logged events is left"),
            });
        }
    }
    Ok(())
}

/// One event's inclusion proof.
#[derive(Debug, Clone, Serialize)]
pub struct EventProof {
    pub seq: i64,
    pub gseq: i64,
    pub leaf_index: u64,
    pub event_hash: String,
    /// Hex hashes, from the leaf up; empty when the checkpoint does not cover it.
    pub proof: Vec<String>,
    /// Whether the checkpoint covers this event.
    pub covered: bool,
    /// Whether the proof verified against the checkpoint's root here.
    pub verified: bool,
}

/// A task's inclusion proofs against one tree head.
#[derive(Debug, Clone, Serialize)]
pub struct TaskProofs {
    pub task_id: String,
    pub tree_size: u64,
    pub root: String,
    pub events: Vec<EventProof>,
}

/// Inclusion proofs of a task's events in the tree of `size` leaves whose
/// root is `root` (a checkpoint's), each verified here with `ct-merkle`.
pub async fn task_proofs(
    log: &Log,
    task_id: &str,
    size: u64,
    root: &Hash,
) -> Result<TaskProofs, Error> {
    let leaves = log.task_leaves(task_id).await?;
    let covered: Vec<u64> = leaves
        .iter()
        .map(|l| l.index)
        .filter(|&i| i < size)
        .collect();
    let mut proofs = log.prove_inclusions(&covered, size).await?.into_iter();
    let mut events = Vec::new();
    for l in leaves {
        let covered = l.index < size;
        let proof = if covered {
            proofs.next().unwrap_or_default()
        } else {
            Vec::new()
        };
        let verified = covered
            && super::log::parse_hash(&l.event_hash).is_some_and(|leaf| {
                merkle::verify_inclusion(&leaf, l.index, size, root, &proof).is_ok()
            });
        events.push(EventProof {
            seq: l.seq,
            gseq: l.index as i64 + 1,
            leaf_index: l.index,
            event_hash: l.event_hash,
            proof: proof.iter().map(hex::encode).collect(),
            covered,
            verified,
        });
    }
    Ok(TaskProofs {
        task_id: task_id.to_string(),
        tree_size: size,
        root: hex::encode(root),
        events,
    })
}
