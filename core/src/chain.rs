//! The hash chain over a task's history (SPEC §4.3).
//!
//! `hash(e) = SHA-256(bytes(prev_hash) ‖ canonical(e))` where `canonical(e)` is the
//! RFC 8785 canonical JSON of `{"actor","payload","recorded_at_ms","seq","task_id","type"}`
//! and `prev_hash` of seq 1 is 32 zero bytes. Hashes are stored as lowercase hex.
//! The algorithm is documented for third parties in `docs/hash-chain.md`; changing
//! it breaks every stored history.
//!
//! Pure: no I/O.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::jcs;

/// The `prev_hash` of the first event of every history.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What is wrong with a history's chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error(
        "task {task_id}: event seq {seq}: expected seq {expected} (a gap, a deleted or a reordered event)"
    )]
    Gap {
        task_id: String,
        seq: i64,
        expected: i64,
    },
    #[error("task {task_id}: event seq {seq} appears twice")]
    Duplicate { task_id: String, seq: i64 },
    #[error("task {task_id}: event seq {seq}: prev_hash {found} does not link to the hash of seq {} ({expected})", seq - 1)]
    BrokenLink {
        task_id: String,
        seq: i64,
        expected: String,
        found: String,
    },
    #[error(
        "task {task_id}: event seq {seq}: stored hash {stored} does not match its content (recomputed {computed}): the event was edited"
    )]
    HashMismatch {
        task_id: String,
        seq: i64,
        stored: String,
        computed: String,
    },
    #[error("task {task_id}: event seq {seq}: payload cannot be canonicalized: {message}")]
    Canonicalization {
        task_id: String,
        seq: i64,
        message: String,
    },
}

impl Error {
    /// The first bad seq this error names.
    pub fn seq(&self) -> i64 {
        match self {
            Self::Gap { seq, .. }
            | Self::Duplicate { seq, .. }
            | Self::BrokenLink { seq, .. }
            | Self::HashMismatch { seq, .. }
            | Self::Canonicalization { seq, .. } => *seq,
        }
    }

    /// A short machine-readable kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Gap { .. } => "gap",
            Self::Duplicate { .. } => "duplicate",
            Self::BrokenLink { .. } => "broken_link",
            Self::HashMismatch { .. } => "hash_mismatch",
            Self::Canonicalization { .. } => "canonicalization",
        }
    }
}

/// The canonical bytes of one event (RFC 8785): the document
/// `{"actor", "payload", "recorded_at_ms", "seq", "task_id", "type"}`,
/// written in that (sorted) order straight from the borrowed parts.
pub fn canonical_bytes(
    task_id: &str,
    seq: i64,
    event_type: &str,
    recorded_at_ms: i64,
    actor: &str,
    payload: &Value,
) -> Result<Vec<u8>, String> {
    canonical_document(task_id, seq, event_type, recorded_at_ms, actor, |out| {
        jcs::write_value(out, payload)
    })
}

/// [`canonical_bytes`] with the payload's canonical bytes written by
/// `payload` (already canonical: sealing writes them from the typed
/// payload, without a `Value`).
pub fn canonical_document(
    task_id: &str,
    seq: i64,
    event_type: &str,
    recorded_at_ms: i64,
    actor: &str,
    payload: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(192);
    out.extend_from_slice(b"{\"actor\":");
    jcs::write_str(&mut out, actor);
    out.extend_from_slice(b",\"payload\":");
    payload(&mut out)?;
    out.extend_from_slice(b",\"recorded_at_ms\":");
    jcs::write_int(&mut out, recorded_at_ms)?;
    out.extend_from_slice(b",\"seq\":");
    jcs::write_int(&mut out, seq)?;
    out.extend_from_slice(b",\"task_id\":");
    jcs::write_str(&mut out, task_id);
    out.extend_from_slice(b",\"type\":");
    jcs::write_str(&mut out, event_type);
    out.push(b'}');
    Ok(out)
}

/// `SHA-256(bytes(prev_hash) ‖ canonical)`, as lowercase hex.
pub fn link_hash(prev_hash: &str, canonical: &[u8]) -> String {
    let mut hasher = Sha256::new();
    // A malformed stored prev_hash still hashes deterministically (its UTF-8 bytes),
    // so that verification reports the broken link rather than panicking.
    match hex::decode(prev_hash) {
        Ok(bytes) if bytes.len() == 32 => hasher.update(&bytes),
        _ => hasher.update(prev_hash.as_bytes()),
    }
    hasher.update(canonical);
    hex::encode(hasher.finalize())
}

/// One stored event as raw parts, the form verification works on (independent of
/// whether the payload still parses into a known event type).
#[derive(Debug, Clone, PartialEq)]
pub struct RawEvent {
    pub task_id: String,
    pub seq: i64,
    pub event_type: String,
    pub recorded_at_ms: i64,
    pub actor: String,
    pub payload: Value,
    pub prev_hash: String,
    pub hash: String,
}

impl RawEvent {
    /// Recomputes this event's hash from its content and stored `prev_hash`.
    pub fn compute_hash(&self) -> Result<String, String> {
        let bytes = canonical_bytes(
            &self.task_id,
            self.seq,
            &self.event_type,
            self.recorded_at_ms,
            &self.actor,
            &self.payload,
        )?;
        Ok(link_hash(&self.prev_hash, &bytes))
    }
}

/// One event sealed for appending: its envelope, its links, and its payload
/// as the JSON text to store (compact, not canonical: the canonical form
/// writes integers beyond 2^53 through a double, and the stored text must
/// keep them exact). What [`crate::event::seal`] makes and the store
/// writes, without a `Value` in between.
#[derive(Debug, Clone, PartialEq)]
pub struct SealedEvent {
    pub task_id: String,
    pub seq: i64,
    pub event_type: String,
    pub recorded_at_ms: i64,
    pub actor: String,
    /// Compact JSON text.
    pub payload: String,
    pub prev_hash: String,
    pub hash: String,
}

impl SealedEvent {
    /// The event as it reads back from a store: its payload text parsed.
    pub fn to_raw(&self) -> Result<RawEvent, serde_json::Error> {
        Ok(RawEvent {
            task_id: self.task_id.clone(),
            seq: self.seq,
            event_type: self.event_type.clone(),
            recorded_at_ms: self.recorded_at_ms,
            actor: self.actor.clone(),
            payload: serde_json::from_str(&self.payload)?,
            prev_hash: self.prev_hash.clone(),
            hash: self.hash.clone(),
        })
    }
}

/// Incremental verifier: feed events in stored order; the first error names the bad seq.
#[derive(Debug, Clone)]
pub struct Verifier {
    task_id: String,
    expected_seq: i64,
    prev_hash: String,
}

impl Verifier {
    pub fn new(task_id: &str) -> Self {
        Self {
            task_id: task_id.to_string(),
            expected_seq: 1,
            prev_hash: GENESIS_HASH.to_string(),
        }
    }

    /// A verifier that continues after the event at `seq` whose hash is
    /// `hash` (checked by whoever verified up to it): for reading a history
    /// one page at a time.
    pub fn after(task_id: &str, seq: i64, hash: &str) -> Self {
        Self {
            task_id: task_id.to_string(),
            expected_seq: seq + 1,
            prev_hash: hash.to_string(),
        }
    }

    /// Checks the next event.
    pub fn push(&mut self, event: &RawEvent) -> Result<(), Error> {
        self.push_computed(event, || event.compute_hash())
    }

    /// Checks the next event given its recomputed hash
    /// ([`RawEvent::compute_hash`], which depends on the event alone, so a
    /// caller may compute many at once, in parallel, and feed them here in
    /// order). The checks and their order are [`Verifier::push`]'s.
    pub fn push_computed(
        &mut self,
        event: &RawEvent,
        computed: impl FnOnce() -> Result<String, String>,
    ) -> Result<(), Error> {
        let task_id = self.task_id.clone();
        if event.seq == self.expected_seq - 1 && self.expected_seq > 1 {
            return Err(Error::Duplicate {
                task_id,
                seq: event.seq,
            });
        }
        if event.seq != self.expected_seq {
            return Err(Error::Gap {
                task_id,
                seq: event.seq,
                expected: self.expected_seq,
            });
        }
        if event.prev_hash != self.prev_hash {
            return Err(Error::BrokenLink {
                task_id,
                seq: event.seq,
                expected: self.prev_hash.clone(),
                found: event.prev_hash.clone(),
            });
        }
        let computed = computed().map_err(|message| Error::Canonicalization {
            task_id: task_id.clone(),
            seq: event.seq,
            message,
        })?;
        if computed != event.hash {
            return Err(Error::HashMismatch {
                task_id,
                seq: event.seq,
                stored: event.hash.clone(),
                computed,
            });
        }
        self.expected_seq += 1;
        self.prev_hash = event.hash.clone();
        Ok(())
    }

    /// The hash of the last verified event.
    pub fn head(&self) -> &str {
        &self.prev_hash
    }
}

/// Verifies a whole history in order.
pub fn verify(task_id: &str, events: &[RawEvent]) -> Result<(), Error> {
    let mut v = Verifier::new(task_id);
    events.iter().try_for_each(|e| v.push(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chain(n: i64) -> Vec<RawEvent> {
        let mut prev = GENESIS_HASH.to_string();
        (1..=n)
            .map(|seq| {
                let mut e = RawEvent {
                    task_id: "t".into(),
                    seq,
                    event_type: "TimerFired".into(),
                    recorded_at_ms: 1000 + seq,
                    actor: "engine".into(),
                    payload: json!({"timer_seq": seq}),
                    prev_hash: prev.clone(),
                    hash: String::new(),
                };
                e.hash = e.compute_hash().unwrap();
                prev = e.hash.clone();
                e
            })
            .collect()
    }

    #[test]
    fn intact_chain_verifies() {
        assert_eq!(verify("t", &chain(5)), Ok(()));
    }

    #[test]
    fn edited_payload_names_its_seq() {
        let mut c = chain(5);
        c[2].payload = json!({"timer_seq": 99});
        let err = verify("t", &c).unwrap_err();
        assert_eq!((err.kind(), err.seq()), ("hash_mismatch", 3));
    }

    #[test]
    fn deleted_and_swapped_events_are_found() {
        let mut c = chain(5);
        c.remove(2);
        let err = verify("t", &c).unwrap_err();
        assert_eq!((err.kind(), err.seq()), ("gap", 4));
        let mut c = chain(5);
        c.swap(1, 2);
        let err = verify("t", &c).unwrap_err();
        assert_eq!(err.seq(), 3);
        let mut c = chain(3);
        let dup = c[1].clone();
        c.insert(2, dup);
        assert_eq!(verify("t", &c).unwrap_err().kind(), "duplicate");
    }

    #[test]
    fn key_order_does_not_matter() {
        let a = canonical_bytes("t", 1, "X", 1, "e", &json!({"b": 1, "a": [1, 2]})).unwrap();
        let b = canonical_bytes("t", 1, "X", 1, "e", &json!({"a": [1, 2], "b": 1})).unwrap();
        assert_eq!(a, b);
    }

    /// The bytes every stored hash was computed over: the wrapper document
    /// through serde_json_canonicalizer, as releases up to 0.1 wrote them.
    #[test]
    fn canonical_bytes_are_those_of_the_wrapper_document() {
        for (actor, payload, at, seq) in [
            (
                "worker-1",
                json!({"b": 1, "a": [1, 2.5, -0.0, 1e21]}),
                1_764_000_000_000i64,
                1i64,
            ),
            (
                "op\"é😀\n",
                json!({"\u{e000}": null, "😀": {"z": "\u{1f}", "y": true}}),
                0,
                9_007_199_254_740_993,
            ),
            ("", json!("plain"), -5, 0),
        ] {
            let old = serde_json_canonicalizer::to_vec(&json!({
                "actor": actor,
                "payload": payload,
                "recorded_at_ms": at,
                "seq": seq,
                "task_id": "task-ü",
                "type": "StepCompleted",
            }))
            .unwrap();
            let new = canonical_bytes("task-ü", seq, "StepCompleted", at, actor, &payload).unwrap();
            assert_eq!(
                String::from_utf8(new).unwrap(),
                String::from_utf8(old).unwrap()
            );
        }
    }
}
