//! A history's size and its reading one page at a time.
//!
//! Each task's history has a byte budget (`Limits::max_history_bytes`, the
//! JSON of its event payloads): a driver's decision that would pass it
//! blocks the task instead, and an outside append (a signal, a cancel
//! reason) that would pass it is refused. Reads can go a page at a time, each
//! page verified against the hash of the event before it, so a reader never
//! needs the whole history in memory at once.

use std::io::Write;

use serde_json::Value;

use super::Engine;
use super::client::Error;
use crate::core::chain::{RawEvent, SealedEvent, Verifier};
use crate::core::event::{self, Event, EventPayload};

/// Most events in one page of a history.
pub const MAX_HISTORY_PAGE: u32 = 1_000;
/// A page stops once its payloads pass this many bytes (it always holds at
/// least one event).
pub const MAX_HISTORY_PAGE_BYTES: u64 = 1024 * 1024;

/// Bytes of `v` as compact JSON, counted without building the text.
pub fn json_len(v: &Value) -> u64 {
    struct Count(u64);
    impl Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

/// What an event adds to its history's byte budget.
pub fn payload_len(payload: &EventPayload) -> u64 {
    json_len(&payload.to_parts().1)
}

/// The bytes stored events take from the budget.
pub fn raw_len(events: &[RawEvent]) -> u64 {
    events.iter().map(|e| json_len(&e.payload)).sum()
}

/// The bytes sealed events will take from the budget: their payloads'
/// stored text, the same count as [`raw_len`] once they are read back.
pub fn sealed_len(events: &[SealedEvent]) -> u64 {
    events.iter().map(|e| e.payload.len() as u64).sum()
}

/// Why the budget refuses `added` more bytes after `have`, if it does.
pub fn over_budget(have: u64, added: u64, limit: usize) -> Option<String> {
    (have + added > limit as u64).then(|| {
        format!(
            "the history would exceed its budget of {limit} bytes (max_history_bytes): it holds {have} bytes and this adds {added}"
        )
    })
}

/// One page of a verified history.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryPage {
    pub events: Vec<Event>,
    /// Where the next page starts (`after_seq`), or `None` after the last.
    pub next_after_seq: Option<i64>,
}

impl Engine {
    /// At most `limit` events (1 to [`MAX_HISTORY_PAGE`], and about
    /// [`MAX_HISTORY_PAGE_BYTES`]) after seq `after_seq`, each verified
    /// against the hash of the one before it (the first against the stored
    /// event at `after_seq`). A reader that follows `next_after_seq` from 0
    /// has verified the whole chain.
    pub async fn history_page(
        &self,
        task_id: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<HistoryPage, Error> {
        if !(1..=MAX_HISTORY_PAGE).contains(&limit) {
            return Err(Error::InvalidInput {
                field: "limit".into(),
                message: format!("must be 1 to {MAX_HISTORY_PAGE}, got {limit}"),
            });
        }
        if after_seq < 0 {
            return Err(Error::InvalidInput {
                field: "after_seq".into(),
                message: format!("must be 0 or a seq of the history, got {after_seq}"),
            });
        }
        // The anchor (the event at after_seq), the page, and one more to
        // know whether another page follows.
        let from = (after_seq - 1).max(0);
        let extra = if after_seq > 0 { 2 } else { 1 };
        let mut raw = self
            .shared
            .store
            .load_history_page(task_id, from, limit + extra)
            .await?;
        let corrupt = |source| Error::Corrupt {
            task_id: task_id.to_string(),
            source,
        };
        let mut verifier = if after_seq == 0 {
            Verifier::new(task_id)
        } else {
            match raw.first() {
                Some(anchor) if anchor.seq == after_seq => {
                    let anchor = raw.remove(0);
                    let mut check = Verifier::after(task_id, after_seq - 1, &anchor.prev_hash);
                    check.push(&anchor).map_err(corrupt)?;
                    check
                }
                _ => {
                    let row = self.task(task_id).await?;
                    return Err(Error::InvalidInput {
                        field: "after_seq".into(),
                        message: format!(
                            "{after_seq} is past the end of the history of task {task_id} (last seq {})",
                            row.last_seq
                        ),
                    });
                }
            }
        };
        if raw.is_empty() && after_seq == 0 {
            return Err(Error::TaskNotFound {
                task_id: task_id.to_string(),
            });
        }
        let mut events = Vec::new();
        let mut bytes = 0;
        let mut next_after_seq = None;
        for (i, r) in raw.iter().enumerate() {
            if i as u32 == limit || (i > 0 && bytes >= MAX_HISTORY_PAGE_BYTES) {
                next_after_seq = events.last().map(|e: &Event| e.seq);
                break;
            }
            verifier.push(r).map_err(corrupt)?;
            bytes += json_len(&r.payload);
            events.push(event::parse(r).map_err(|message| Error::Unparseable {
                task_id: task_id.to_string(),
                message,
            })?);
        }
        Ok(HistoryPage {
            events,
            next_after_seq,
        })
    }
}
