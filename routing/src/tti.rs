//! Time to intervention: notification sent → first human response, P50/P95
//! per action type, against the seeds' targets. Pure.

use std::collections::BTreeMap;

use serde::Serialize;

/// One notification and its first response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseRecord {
    pub action: String,
    pub notified_at_ms: i64,
    pub first_response_at_ms: Option<i64>,
}

/// The figures for one action type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TtiStats {
    pub action: String,
    /// Responses counted.
    pub count: usize,
    pub p50_ms: i64,
    pub p95_ms: i64,
    /// The seeds' P95 target for this action, if it has one.
    pub target_p95_ms: Option<i64>,
    pub meets_target: Option<bool>,
    /// Records with a response time before the notification (clock skew); not counted.
    pub invalid: usize,
}

/// The seeds' targets (Mandate v5.0 §4.3).
pub fn target_p95_ms(action: &str) -> Option<i64> {
    match action {
        "pause_task" | "pause_agent" => Some(10_000),
        "ask" => Some(30_000),
        "trigger_recovery" => Some(60_000),
        "assign" => Some(120_000),
        _ => None,
    }
}

/// Nearest-rank percentile of sorted values (`p` in 1..=100).
pub fn percentile(sorted: &[i64], p: u32) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p as usize * sorted.len()).div_ceil(100).max(1);
    Some(sorted[rank - 1])
}

/// P50/P95 per action, sorted by action. Records without a response are skipped.
pub fn tti(records: &[ResponseRecord]) -> Vec<TtiStats> {
    let mut by_action: BTreeMap<&str, (Vec<i64>, usize)> = BTreeMap::new();
    for r in records {
        let Some(at) = r.first_response_at_ms else {
            continue;
        };
        let e = by_action.entry(r.action.as_str()).or_default();
        if at < r.notified_at_ms {
            e.1 += 1;
        } else {
            e.0.push(at - r.notified_at_ms);
        }
    }
    by_action
        .into_iter()
        .filter(|(_, (v, _))| !v.is_empty())
        .map(|(action, (mut v, invalid))| {
            v.sort_unstable();
            let p95 = percentile(&v, 95).unwrap_or(0);
            let target = target_p95_ms(action);
            TtiStats {
                action: action.to_string(),
                count: v.len(),
                p50_ms: percentile(&v, 50).unwrap_or(0),
                p95_ms: p95,
                target_p95_ms: target,
                meets_target: target.map(|t| p95 < t),
                invalid,
            }
        })
        .collect()
}
