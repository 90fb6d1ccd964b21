//! Where and how a stored history's hash chain breaks, in words an auditor can act on.
//!
//! [`crate::core::chain::Verifier`] finds the first event that does not verify;
//! this module explains it: an edited event, a deleted one, a duplicate, events
//! moved to other seqs (reordering), a link that points nowhere, or a tail cut
//! off (the task row names a later seq than the history holds).
//!
//! Pure: works on rows already read; no I/O.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::core::chain::{self, GENESIS_HASH, RawEvent, Verifier};

/// What is wrong with a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakKind {
    /// An event's content no longer matches its stored hash: it was edited.
    HashMismatch,
    /// A seq is missing: an event was deleted.
    Gap,
    /// The same seq appears twice (possible in an export, not in a store).
    Duplicate,
    /// Events were moved to other seqs: the event stored at this seq was
    /// recorded under another one.
    Reordered,
    /// An event's `prev_hash` does not name the hash of the event before it, and
    /// no moved event explains it (an event inserted or replaced with a
    /// recomputed hash).
    BrokenLink,
    /// The task row records a later seq than the history holds: the newest
    /// events were deleted.
    Truncated,
    /// The task row exists but its history has no event at all.
    Empty,
    /// A payload cannot be put in canonical form (e.g. a number outside what
    /// RFC 8785 can represent).
    Canonicalization,
}

impl BreakKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HashMismatch => "hash_mismatch",
            Self::Gap => "gap",
            Self::Duplicate => "duplicate",
            Self::Reordered => "reordered",
            Self::BrokenLink => "broken_link",
            Self::Truncated => "truncated",
            Self::Empty => "empty",
            Self::Canonicalization => "canonicalization",
        }
    }
}

impl std::fmt::Display for BreakKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The first place a chain is broken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainBreak {
    /// The first bad seq: the edited, missing or misplaced event.
    pub seq: i64,
    pub kind: BreakKind,
    /// One sentence saying what is wrong, naming the seqs involved.
    pub message: String,
}

/// The verdict on a history's chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ChainVerdict {
    /// Every event verifies from seq 1; `head_hash` is the hash of the last one.
    Ok {
        events: usize,
        head_hash: String,
    },
    Broken(ChainBreak),
}

impl ChainVerdict {
    pub fn is_ok(&self) -> bool {
        matches!(self, Self::Ok { .. })
    }
}

/// Histories at least this long have their hashes recomputed on several
/// threads (each event's hash depends on its own row alone); shorter ones,
/// nearly all, on the caller's.
pub const PARALLEL_FROM: usize = 2_048;

/// Every event's recomputed hash, in order: on up to four threads for a
/// long history, none (left to the verifier) for a short one.
fn recompute_hashes(raw: &[RawEvent]) -> Vec<Result<String, String>> {
    let threads = crate::store::decode_threads();
    if raw.len() < PARALLEL_FROM || threads < 2 {
        return Vec::new();
    }
    let per = raw.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let parts: Vec<_> = raw
            .chunks(per)
            .map(|part| {
                scope.spawn(move || part.iter().map(RawEvent::compute_hash).collect::<Vec<_>>())
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|h| h.join().expect("hashing an event does not panic"))
            .collect()
    })
}

/// Verifies `raw` (the stored rows of one task in seq order) from seq 1.
/// `row_last_seq` is the last seq the task row records, when it could be read
/// consistently with the history: a history that ends before it was cut short.
/// A long history's hashes are recomputed in parallel first
/// ([`PARALLEL_FROM`]); the checks stay in order, so the first bad seq named
/// is the same.
pub fn check_chain(task_id: &str, raw: &[RawEvent], row_last_seq: Option<i64>) -> ChainVerdict {
    let Some(last) = raw.last() else {
        return ChainVerdict::Broken(ChainBreak {
            seq: 1,
            kind: BreakKind::Empty,
            message: "the task row exists but its history holds no event: seq 1 is missing"
                .to_string(),
        });
    };
    let mut verifier = Verifier::new(task_id);
    let mut computed = recompute_hashes(raw).into_iter();
    for (position, event) in raw.iter().enumerate() {
        let hash = computed.next();
        if let Err(error) =
            verifier.push_computed(event, || hash.unwrap_or_else(|| event.compute_hash()))
        {
            return ChainVerdict::Broken(explain(raw, position, &error));
        }
    }
    if let Some(row_seq) = row_last_seq
        && row_seq > last.seq
    {
        let missing = if row_seq == last.seq + 1 {
            format!("seq {row_seq} was")
        } else {
            format!("seqs {} to {row_seq} were", last.seq + 1)
        };
        return ChainVerdict::Broken(ChainBreak {
            seq: last.seq + 1,
            kind: BreakKind::Truncated,
            message: format!(
                "the history ends at seq {} but the task row records seq {row_seq}: {missing} deleted",
                last.seq
            ),
        });
    }
    ChainVerdict::Ok {
        events: raw.len(),
        head_hash: verifier.head().to_string(),
    }
}

/// The first 12 hex digits of a hash, enough to tell hashes apart in a message.
fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// Explains the error the verifier raised at `position` (all before it verified).
fn explain(raw: &[RawEvent], position: usize, error: &chain::Error) -> ChainBreak {
    use chain::Error as E;
    let event = &raw[position];
    // The hash the event at this position must link to.
    let link = if position == 0 {
        GENESIS_HASH
    } else {
        raw[position - 1].hash.as_str()
    };
    let expected_seq = position as i64 + 1;
    match error {
        E::Duplicate { seq, .. } => ChainBreak {
            seq: *seq,
            kind: BreakKind::Duplicate,
            message: format!("seq {seq} appears twice"),
        },
        E::Canonicalization { seq, message, .. } => ChainBreak {
            seq: *seq,
            kind: BreakKind::Canonicalization,
            message: format!("the payload of seq {seq} cannot be put in canonical form: {message}"),
        },
        E::Gap { seq, .. } => match belongs_here(raw, position, link) {
            // The event that belongs at the missing seq sits further on.
            Some(moved) => ChainBreak {
                seq: expected_seq,
                kind: BreakKind::Reordered,
                message: format!(
                    "seq {expected_seq} is missing from its place: the event recorded as seq {expected_seq} is stored as seq {}",
                    raw[moved].seq
                ),
            },
            None => ChainBreak {
                seq: expected_seq,
                kind: BreakKind::Gap,
                message: if expected_seq == 1 {
                    format!(
                        "seq 1 is missing: the history starts at seq {seq} (an event was deleted)"
                    )
                } else {
                    format!(
                        "seq {expected_seq} is missing: after seq {} the next stored event is seq {seq} (an event was deleted)",
                        expected_seq - 1
                    )
                },
            },
        },
        E::BrokenLink { seq, .. } | E::HashMismatch { seq, .. } => {
            let recorded_as = recorded_seq(event, max_candidate(raw));
            let moved_here = belongs_here(raw, position, link);
            let follows = links_to_later(raw, position);
            if recorded_as.is_some() || moved_here.is_some() || follows.is_some() {
                let mut message = format!("events are out of order at seq {seq}:");
                match (recorded_as, follows) {
                    (Some(r), _) => message.push_str(&format!(
                        " the event stored as seq {seq} ({}) was recorded as seq {r}",
                        event.event_type
                    )),
                    (None, Some(f)) => message.push_str(&format!(
                        " the event stored as seq {seq} ({}) follows the event stored as seq {}",
                        event.event_type, raw[f].seq
                    )),
                    (None, None) => message.push_str(&format!(
                        " the event stored as seq {seq} ({}) does not follow seq {}",
                        event.event_type,
                        seq - 1
                    )),
                }
                if let Some(m) = moved_here {
                    message.push_str(&format!(
                        ", and the event recorded as seq {seq} is stored as seq {}",
                        raw[m].seq
                    ));
                }
                return ChainBreak {
                    seq: *seq,
                    kind: BreakKind::Reordered,
                    message,
                };
            }
            if matches!(error, E::HashMismatch { .. }) {
                ChainBreak {
                    seq: *seq,
                    kind: BreakKind::HashMismatch,
                    message: format!(
                        "seq {seq} ({}) no longer matches its stored hash {}…: its type, actor, time or payload was edited after it was recorded",
                        event.event_type,
                        short(&event.hash)
                    ),
                }
            } else {
                let previous = if position == 0 {
                    "the genesis hash (seq 1 has no predecessor)".to_string()
                } else {
                    format!(
                        "the hash of seq {} ({}…)",
                        raw[position - 1].seq,
                        short(link)
                    )
                };
                ChainBreak {
                    seq: *seq,
                    kind: BreakKind::BrokenLink,
                    message: format!(
                        "seq {seq} ({}) links to {}…, not to {previous}: an event was inserted, or one was replaced with a recomputed hash",
                        event.event_type,
                        short(&event.prev_hash)
                    ),
                }
            }
        }
    }
}

/// The largest seq worth trying when looking for where an event was recorded.
fn max_candidate(raw: &[RawEvent]) -> i64 {
    let max_stored = raw.iter().map(|e| e.seq).max().unwrap_or(0);
    max_stored.max(raw.len() as i64) + 1
}

/// A later event that links to `link`, i.e. the one that was recorded at
/// `position` and has been moved further on.
fn belongs_here(raw: &[RawEvent], position: usize, link: &str) -> Option<usize> {
    (position + 1..raw.len()).find(|&j| raw[j].prev_hash == link)
}

/// A later event whose hash the event at `position` links to: the event was
/// moved before its own predecessor.
fn links_to_later(raw: &[RawEvent], position: usize) -> Option<usize> {
    let prev = &raw[position].prev_hash;
    (position + 1..raw.len()).find(|&j| &raw[j].hash == prev)
}

/// The seq under which `event` was recorded, if its stored hash verifies under
/// a seq other than the stored one (it was moved). Tries every seq up to
/// `max_candidate`, hashing only the few bytes that change per candidate.
fn recorded_seq(event: &RawEvent, max_candidate: i64) -> Option<i64> {
    let canonical = chain::canonical_bytes(
        &event.task_id,
        event.seq,
        &event.event_type,
        event.recorded_at_ms,
        &event.actor,
        &event.payload,
    )
    .ok()?;
    let stored: [u8; 32] = hex::decode(&event.hash).ok()?.try_into().ok()?;
    // Canonical JSON sorts the keys: ...,"recorded_at_ms":N,"seq":N,"task_id":"..","type":".."}
    // The last `,"seq":N,"task_id":` is the envelope's (the payload comes before it).
    let key = b",\"seq\":";
    let marker = [
        key.as_slice(),
        event.seq.to_string().as_bytes(),
        b",\"task_id\":",
    ]
    .concat();
    let at = canonical
        .windows(marker.len())
        .rposition(|w| w == marker.as_slice())?;
    let prefix = &canonical[..at + key.len()];
    let suffix = &canonical[at + marker.len() - b",\"task_id\":".len()..];
    let mut base = Sha256::new();
    match hex::decode(&event.prev_hash) {
        Ok(bytes) if bytes.len() == 32 => base.update(&bytes),
        _ => base.update(event.prev_hash.as_bytes()),
    }
    base.update(prefix);
    (1..=max_candidate).filter(|c| *c != event.seq).find(|c| {
        let mut h = base.clone();
        h.update(c.to_string().as_bytes());
        h.update(suffix);
        h.finalize()[..] == stored[..]
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A valid chain of `n` events for task `t`.
    fn chain_of(n: i64) -> Vec<RawEvent> {
        let mut prev = GENESIS_HASH.to_string();
        (1..=n)
            .map(|seq| {
                let mut e = RawEvent {
                    task_id: "t".into(),
                    seq,
                    event_type: "SignalReceived".into(),
                    recorded_at_ms: 1_000 + seq,
                    actor: "user:x".into(),
                    payload: json!({"name": "s", "payload": {"i": seq}, "sender": "user:x"}),
                    prev_hash: prev.clone(),
                    hash: String::new(),
                };
                e.hash = e.compute_hash().unwrap();
                prev = e.hash.clone();
                e
            })
            .collect()
    }

    fn broken(v: ChainVerdict) -> ChainBreak {
        match v {
            ChainVerdict::Broken(b) => b,
            ChainVerdict::Ok { .. } => panic!("the chain verified"),
        }
    }

    #[test]
    fn an_intact_chain_names_its_head() {
        let c = chain_of(4);
        assert_eq!(
            check_chain("t", &c, Some(4)),
            ChainVerdict::Ok {
                events: 4,
                head_hash: c[3].hash.clone()
            }
        );
    }

    /// A history long enough to be hashed on several threads verifies, and
    /// a break anywhere in it, including in a later thread's share, is named
    /// at its seq exactly as the one-thread path names it.
    #[test]
    fn a_long_history_is_checked_in_parallel_with_the_same_verdicts() {
        let n = PARALLEL_FROM as i64 * 2 + 7;
        let c = chain_of(n);
        assert_eq!(
            check_chain("t", &c, Some(n)),
            ChainVerdict::Ok {
                events: n as usize,
                head_hash: c[n as usize - 1].hash.clone()
            }
        );
        for at in [1, PARALLEL_FROM, n as usize - 2] {
            let mut edited = c.clone();
            edited[at].payload = json!({"name": "s", "payload": {"i": -1}, "sender": "user:x"});
            let b = broken(check_chain("t", &edited, None));
            assert_eq!(
                (b.seq, b.kind),
                (at as i64 + 1, BreakKind::HashMismatch),
                "edited at {at}"
            );
            let mut gap = c.clone();
            gap.remove(at);
            let b = broken(check_chain("t", &gap, None));
            assert_eq!(b.seq, at as i64 + 1, "deleted at {at}: {b:?}");
        }
        // Two edits: the first is named.
        let mut two = c.clone();
        two[n as usize - 3].actor = "user:mallory".into();
        two[PARALLEL_FROM + 1].actor = "user:mallory".into();
        assert_eq!(
            broken(check_chain("t", &two, None)).seq,
            PARALLEL_FROM as i64 + 2
        );
    }

    #[test]
    fn an_edited_payload_is_a_hash_mismatch_at_its_seq() {
        let mut c = chain_of(6);
        c[4].payload = json!({"name": "s", "payload": {"i": 99}, "sender": "user:x"});
        let b = broken(check_chain("t", &c, None));
        assert_eq!((b.seq, b.kind), (5, BreakKind::HashMismatch));
        assert!(
            b.message.contains("seq 5 (SignalReceived)"),
            "{}",
            b.message
        );
    }

    #[test]
    fn a_deleted_event_is_a_gap_naming_the_missing_seq() {
        let mut c = chain_of(6);
        c.remove(2);
        let b = broken(check_chain("t", &c, None));
        assert_eq!((b.seq, b.kind), (3, BreakKind::Gap));
        assert!(
            b.message
                .contains("after seq 2 the next stored event is seq 4"),
            "{}",
            b.message
        );
        let mut c = chain_of(3);
        c.remove(0);
        assert_eq!(broken(check_chain("t", &c, None)).seq, 1);
    }

    #[test]
    fn swapped_seqs_are_a_reordering() {
        // Rows 3 and 4 exchange their seq values, as an UPDATE would.
        let mut c = chain_of(6);
        c.swap(2, 3);
        c[2].seq = 3;
        c[3].seq = 4;
        let b = broken(check_chain("t", &c, None));
        assert_eq!((b.seq, b.kind), (3, BreakKind::Reordered), "{}", b.message);
        assert!(
            b.message
                .contains("stored as seq 3 (SignalReceived) was recorded as seq 4"),
            "{}",
            b.message
        );
        assert!(
            b.message
                .contains("the event recorded as seq 3 is stored as seq 4"),
            "{}",
            b.message
        );
    }

    #[test]
    fn an_event_moved_past_the_end_is_a_reordering() {
        let mut c = chain_of(5);
        let mut moved = c.remove(1);
        moved.seq = 40;
        c.push(moved);
        let b = broken(check_chain("t", &c, None));
        assert_eq!((b.seq, b.kind), (2, BreakKind::Reordered), "{}", b.message);
        assert!(b.message.contains("is stored as seq 40"), "{}", b.message);
    }

    #[test]
    fn duplicates_links_and_truncation() {
        let mut c = chain_of(3);
        let dup = c[1].clone();
        c.insert(2, dup);
        assert_eq!(
            broken(check_chain("t", &c, None)).kind,
            BreakKind::Duplicate
        );

        // An event replaced wholesale, with a hash that matches its new content.
        let mut c = chain_of(4);
        c[2].prev_hash = "ab".repeat(32);
        c[2].hash = c[2].compute_hash().unwrap();
        let b = broken(check_chain("t", &c, None));
        assert_eq!((b.seq, b.kind), (3, BreakKind::BrokenLink), "{}", b.message);

        let c = chain_of(4);
        let b = broken(check_chain("t", &c[..2], Some(4)));
        assert_eq!((b.seq, b.kind), (3, BreakKind::Truncated));
        assert!(
            b.message.contains("seqs 3 to 4 were deleted"),
            "{}",
            b.message
        );

        let b = broken(check_chain("t", &[], Some(1)));
        assert_eq!((b.seq, b.kind), (1, BreakKind::Empty));
    }
}
