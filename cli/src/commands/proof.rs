//! `mandate proof TASK [--checkpoint FILE] [--public-key K] [--json]`: the
//! inclusion proof of each of a task's events in the evidence log, against a
//! checkpoint (a file, or the newest one the log signed). `--json` prints
//! what `tests/tools/verify_chain.py --proof` checks offline with the public
//! key alone (format: docs/hash-chain.md).
//!
//! Exit codes: 0 every covered event's proof verifies, 2 one does not (or
//! the checkpoint's signature does not), 1 another failure.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use mandate_engine::evidence::{self, Checkpoint, note::Note};
use serde_json::json;

use crate::app::{self, Database, refused};
use crate::commands::keys::{public_key_arg, read_small};

#[derive(Debug, Args)]
pub struct ProofArgs {
    /// The task
    pub id: String,
    /// A checkpoint file (signed note) [default: the newest checkpoint in the database]
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,
    /// Check the checkpoint's signature with this public key (NAME+HASH+KEY, or a file)
    #[arg(long, value_name = "FILE|KEY")]
    pub public_key: Option<String>,
    /// Print one JSON document
    #[arg(long)]
    pub json: bool,
}

pub async fn run(db: &Database, args: ProofArgs) -> anyhow::Result<ExitCode> {
    let given = match &args.checkpoint {
        Some(path) => Some(read_small(path)?),
        None => None,
    };
    let key = args.public_key.as_deref().map(public_key_arg).transpose()?;
    db.require_existing()?;
    let store = mandate_engine::store::open(&db.url).await?;
    if store.get_task(&args.id).await?.is_none() {
        return Err(refused(format!("no task with id {}", args.id)));
    }
    let log = store.evidence_log();
    let note = match given {
        Some(n) => n,
        None => {
            log.checkpoint(None)
                .await?
                .ok_or_else(|| {
                    refused(
                        "no checkpoint has been signed yet: run `mandate serve --signing-key FILE`, or pass --checkpoint FILE",
                    )
                })?
                .note
        }
    };
    let cp = match &key {
        Some(k) => match Checkpoint::open(&note, k) {
            Ok(cp) => cp,
            Err(e) => {
                eprintln!("checkpoint refused: {e}");
                return Ok(ExitCode::from(app::EXIT_TAMPERED));
            }
        },
        None => {
            eprintln!(
                "note: the checkpoint's signature is not checked here (pass --public-key to check it)"
            );
            Note::parse(&note)
                .and_then(|n| Checkpoint::parse_text(&n.text))
                .map_err(|e| refused(format!("checkpoint: {e}")))?
        }
    };
    let proofs = evidence::task_proofs(&log, &args.id, cp.size, &cp.root).await?;
    let bad = proofs
        .events
        .iter()
        .filter(|e| e.covered && !e.verified)
        .count();
    let mut out = std::io::stdout().lock();
    if args.json {
        let doc = json!({
            "task_id": proofs.task_id,
            "checkpoint": note,
            "origin": cp.origin,
            "tree_size": cp.size,
            "root": proofs.root,
            "events": proofs.events,
        });
        writeln!(out, "{doc}")?;
    } else {
        writeln!(
            out,
            "checkpoint   {} size {} root {}…{}",
            cp.origin,
            cp.size,
            &proofs.root[..16],
            if key.is_some() {
                " (signature verified)"
            } else {
                ""
            }
        )?;
        for e in &proofs.events {
            let state = match (e.covered, e.verified) {
                (false, _) => "not covered by this checkpoint yet".to_string(),
                (true, true) => format!("included ({} proof hashes)", e.proof.len()),
                (true, false) => {
                    "PROOF FAILS: this event is not the one the checkpoint signed".to_string()
                }
            };
            writeln!(
                out,
                "seq {:>4}  gseq {:>8}  hash {}…  {state}",
                e.seq,
                e.gseq,
                &e.event_hash[..e.event_hash.len().min(16)]
            )?;
        }
    }
    out.flush()?;
    Ok(ExitCode::from(if bad > 0 {
        app::EXIT_TAMPERED
    } else {
        app::EXIT_OK
    }))
}
