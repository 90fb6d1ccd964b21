//! Escalation-chain timing as pure functions of an injected time: which step
//! is due, when the next one is, and whether an acknowledgement stopped it.

use crate::owners::EscalationChain;

/// An acknowledgement of the notification the chain escalates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub at_ms: i64,
    pub by: String,
}

/// Where a chain stands at an instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainStatus {
    /// Someone acknowledged: no further step fires.
    Acknowledged { at_ms: i64, by: String },
    /// `step` (index into the chain's steps) of pass `pass` (0-based) is the
    /// current one, fired at `fired_at_ms`; the next fires at `next_due_at_ms`
    /// unless someone acknowledges first (`None`: this is the last step).
    Active {
        pass: u32,
        step: usize,
        notify: String,
        fired_at_ms: i64,
        next_due_at_ms: Option<i64>,
    },
    /// Every step fired and the last wait ran out with no acknowledgement.
    Exhausted { since_ms: i64 },
}

/// The status of `chain`, started at `started_at_ms`, at `now_ms`, given the
/// acknowledgements so far (those after `now_ms` are not seen yet).
pub fn status(
    chain: &EscalationChain,
    started_at_ms: i64,
    acks: &[Ack],
    now_ms: i64,
) -> ChainStatus {
    if let Some(ack) = acks
        .iter()
        .filter(|a| a.at_ms <= now_ms)
        .min_by_key(|a| a.at_ms)
    {
        return ChainStatus::Acknowledged {
            at_ms: ack.at_ms,
            by: ack.by.clone(),
        };
    }
    let mut fired_at = started_at_ms;
    let passes = chain.repeat.max(1);
    let n = chain.steps.len();
    for pass in 0..passes {
        for (i, step) in chain.steps.iter().enumerate() {
            let next = fired_at.saturating_add(step.wait_minutes as i64 * 60_000);
            let last = pass + 1 == passes && i + 1 == n;
            if now_ms < next {
                return ChainStatus::Active {
                    pass,
                    step: i,
                    notify: step.notify.clone(),
                    fired_at_ms: fired_at,
                    next_due_at_ms: (!last).then_some(next),
                };
            }
            if last {
                return ChainStatus::Exhausted { since_ms: next };
            }
            fired_at = next;
        }
    }
    ChainStatus::Exhausted { since_ms: fired_at }
}

/// When the caller should look at the chain again: the next step's time, or
/// the end of the last wait; `None` once acknowledged or exhausted.
pub fn next_wake(
    chain: &EscalationChain,
    started_at_ms: i64,
    acks: &[Ack],
    now_ms: i64,
) -> Option<i64> {
    match status(chain, started_at_ms, acks, now_ms) {
        ChainStatus::Active {
            next_due_at_ms: Some(t),
            ..
        } => Some(t),
        ChainStatus::Active {
            step, fired_at_ms, ..
        } => Some(fired_at_ms + chain.steps[step].wait_minutes as i64 * 60_000),
        _ => None,
    }
}
