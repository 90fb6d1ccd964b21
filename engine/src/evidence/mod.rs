//! Evidence an outsider can check (docs/hash-chain.md, "The evidence log").
//!
//! - [`merkle`]: RFC 6962 arithmetic over stored complete subtrees (pure).
//! - [`note`]: Ed25519 keys, C2SP signed notes and checkpoints, key rotation (pure).
//! - [`log`]: the stored tree (migration 0006) and its checkpoints.
//! - [`follow`]: the background tokio task that appends every event's leaf
//!   in global order and signs checkpoints.
//! - [`check`]: a task's inclusion proofs, and the verification of a whole
//!   database against a signed checkpoint.
//!
//! The leaf of the event numbered `gseq` is at index `gseq − 1`; its bytes
//! are the 32 bytes of the event's chain hash (`events.hash` decoded from
//! hex), hashed as `SHA-256(0x00 ‖ bytes)`. The chain hash covers the task
//! id, the seq and every hashed field, so a leaf names one event exactly.
//! The signing key is never stored in the database.

pub mod check;
pub mod follow;
pub mod log;
pub mod merkle;
pub mod note;

pub use check::{Finding, Report, TaskProofs, task_proofs, verify};
pub use follow::{Follower, FollowerConfig};
pub use log::{CheckpointRow, Log};
pub use merkle::Hash;
pub use note::{Checkpoint, NoteError, SignerKey, VerifierKey};

/// `text` cut to `max` characters, with an ellipsis when cut.
pub(crate) fn short(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}
