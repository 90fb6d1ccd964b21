//! The ownership map: who owns which resource and tool, and how to reach them.
//!
//! Configuration, never inferred. Owners are people, team channels, on-call
//! rotations and escalation chains, one namespace of ids. Resources are
//! matched by exact name or glob (`service:checkout`, `iam:*`), tools by name
//! or glob. This module only answers questions; it never sends anything.

use std::collections::BTreeMap;

use chrono::{Datelike, Duration, LocalResult, NaiveTime, TimeZone, Timelike, Weekday};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::limits;

/// How to reach a person or channel: a sink (by id) and, for sinks that need
/// one, an address on it (an email address, a Slack channel).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contact {
    pub sink: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// A person or a team channel: something with contact routes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reachable {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub contacts: Vec<Contact>,
}

/// One handoff of a weekly rotation, as written: `at: "mon 09:00"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandoffSpec {
    pub at: String,
    pub person: String,
}

/// A weekly on-call rotation as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotationSpec {
    pub id: String,
    /// An IANA time zone, e.g. `America/New_York`.
    pub time_zone: String,
    pub handoffs: Vec<HandoffSpec>,
}

/// One step of an escalation chain: notify an owner, then wait for an acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainStep {
    pub notify: String,
    pub wait_minutes: u32,
}

/// An escalation chain: its steps in order, gone through at most `repeat` times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationChain {
    pub id: String,
    pub steps: Vec<ChainStep>,
    #[serde(default = "one")]
    pub repeat: u32,
}

fn one() -> u32 {
    1
}

/// One entry of the map: a resource pattern or a tool pattern, and its owners.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnershipEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    pub owners: Vec<String>,
}

/// A rotation ready to answer "who is on call at t".
#[derive(Debug, Clone, PartialEq)]
pub struct Rotation {
    pub id: String,
    pub time_zone: Tz,
    /// (weekday, minute of the day, person), in week order.
    pub handoffs: Vec<(Weekday, u32, String)>,
}

/// Who holds a rotation at an instant, since when and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnCall {
    pub person: String,
    pub since_ms: i64,
    pub until_ms: i64,
}

impl Rotation {
    /// The person on call at `at_ms`. Handoffs are local wall-clock times in
    /// the rotation's zone: one that falls in a spring-forward gap happens at
    /// the first instant after the gap, one that occurs twice on a fall-back
    /// day happens at its first occurrence.
    pub fn on_call(&self, at_ms: i64) -> OnCall {
        let tz = self.time_zone;
        let local = tz
            .timestamp_millis_opt(at_ms)
            .earliest()
            .unwrap_or_else(|| {
                // Unreachable for valid millis; fall back to UTC's view.
                tz.from_utc_datetime(&chrono::DateTime::UNIX_EPOCH.naive_utc())
            });
        let monday =
            local.date_naive() - Duration::days(local.weekday().num_days_from_monday() as i64);
        let mut instants: Vec<(i64, &str)> = Vec::with_capacity(self.handoffs.len() * 3);
        for week in -1i64..=1 {
            let week_start = monday + Duration::weeks(week);
            for (day, minute, person) in &self.handoffs {
                let date = week_start + Duration::days(day.num_days_from_monday() as i64);
                let time =
                    NaiveTime::from_hms_opt(minute / 60, minute % 60, 0).expect("validated minute");
                instants.push((resolve_local(tz, date.and_time(time)), person));
            }
        }
        instants.sort_by_key(|(t, _)| *t);
        let current = instants.iter().rposition(|(t, _)| *t <= at_ms).unwrap_or(0);
        let until_ms = instants
            .get(current + 1)
            .map(|(t, _)| *t)
            .unwrap_or(i64::MAX);
        OnCall {
            person: instants[current].1.to_string(),
            since_ms: instants[current].0,
            until_ms,
        }
    }
}

/// A local wall-clock time to an instant: the earliest occurrence, or the end
/// of the gap when the time does not exist.
fn resolve_local(tz: Tz, naive: chrono::NaiveDateTime) -> i64 {
    match tz.from_local_datetime(&naive) {
        LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => t.timestamp_millis(),
        LocalResult::None => {
            // Walk forward a minute at a time to the first time that exists
            // (real gaps are at most a few hours).
            let start = naive.with_second(0).unwrap_or(naive);
            for k in 1..=24 * 60 {
                if let Some(t) = tz
                    .from_local_datetime(&(start + Duration::minutes(k)))
                    .earliest()
                {
                    return t.timestamp_millis();
                }
            }
            tz.from_utc_datetime(&naive).timestamp_millis()
        }
    }
}

/// What an owner id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerKind {
    Person,
    Channel,
    Rotation,
    Chain,
}

/// The loaded, validated map.
#[derive(Debug, Clone, Default)]
pub struct OwnershipMap {
    pub people: BTreeMap<String, Reachable>,
    pub channels: BTreeMap<String, Reachable>,
    pub rotations: BTreeMap<String, Rotation>,
    pub chains: BTreeMap<String, EscalationChain>,
    pub entries: Vec<OwnershipEntry>,
}

/// An owner the map names for a resource or tool, and the entry that says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerMatch {
    pub owner: String,
    pub why: String,
}

impl OwnershipMap {
    /// What an id names, if anything.
    pub fn kind(&self, id: &str) -> Option<OwnerKind> {
        if self.people.contains_key(id) {
            Some(OwnerKind::Person)
        } else if self.channels.contains_key(id) {
            Some(OwnerKind::Channel)
        } else if self.rotations.contains_key(id) {
            Some(OwnerKind::Rotation)
        } else if self.chains.contains_key(id) {
            Some(OwnerKind::Chain)
        } else {
            None
        }
    }

    /// The owners of a resource and a tool, in map order, without repeats:
    /// every entry whose resource pattern matches `resource` or whose tool
    /// pattern matches `tool`.
    pub fn owners_of(&self, resource: Option<&str>, tool: &str) -> Vec<OwnerMatch> {
        let mut out: Vec<OwnerMatch> = Vec::new();
        for (i, entry) in self.entries.iter().enumerate() {
            let why = match (&entry.resource, resource, &entry.tool) {
                (Some(p), Some(r), _) if crate::glob::matches(p, r) => {
                    format!(
                        "owns resource {r} (ownership entry {}: resource {p})",
                        i + 1
                    )
                }
                (_, _, Some(p)) if crate::glob::matches(p, tool) => {
                    format!("owns tool {tool} (ownership entry {}: tool {p})", i + 1)
                }
                _ => continue,
            };
            for owner in &entry.owners {
                if !out.iter().any(|m| &m.owner == owner) {
                    out.push(OwnerMatch {
                        owner: owner.clone(),
                        why: why.clone(),
                    });
                }
            }
        }
        out
    }

    /// Builds and validates a map. `file` names the file in errors.
    pub fn build(
        file: &str,
        people: Vec<Reachable>,
        channels: Vec<Reachable>,
        rotations: Vec<RotationSpec>,
        chains: Vec<EscalationChain>,
        entries: Vec<OwnershipEntry>,
        sink_ids: &[&str],
    ) -> Result<OwnershipMap, ConfigError> {
        let err = |entry: String, field: &str, message: String| {
            ConfigError::invalid(file, entry, field, message)
        };
        let total = people.len() + channels.len() + rotations.len() + chains.len();
        if total > limits::MAX_OWNERS {
            return Err(err(
                "owners".into(),
                "people",
                format!(
                    "{total} owners (people, channels, rotations, chains) exceed the limit of {}",
                    limits::MAX_OWNERS
                ),
            ));
        }
        if entries.len() > limits::MAX_OWNERSHIP_ENTRIES {
            return Err(err(
                "ownership".into(),
                "ownership",
                format!(
                    "{} entries exceed the limit of {}",
                    entries.len(),
                    limits::MAX_OWNERSHIP_ENTRIES
                ),
            ));
        }
        let mut map = OwnershipMap::default();
        let mut seen = std::collections::BTreeSet::new();
        let mut claim = |section: &str, i: usize, id: &str| -> Result<(), ConfigError> {
            check_id(file, &format!("{section}[{i}]"), "id", id)?;
            if !seen.insert(id.to_string()) {
                return Err(err(
                    format!("{section}[{i}] ({id})"),
                    "id",
                    format!(
                        "the id {id:?} is used twice; owner ids (people, channels, rotations, chains) share one namespace"
                    ),
                ));
            }
            Ok(())
        };
        for (section, list) in [("people", &people), ("channels", &channels)] {
            for (i, r) in list.iter().enumerate() {
                claim(section, i, &r.id)?;
                let entry = format!("{section}[{i}] ({})", r.id);
                if r.contacts.len() > limits::MAX_CONTACTS {
                    return Err(err(
                        entry,
                        "contacts",
                        format!(
                            "{} contact routes exceed the limit of {}",
                            r.contacts.len(),
                            limits::MAX_CONTACTS
                        ),
                    ));
                }
                for (j, c) in r.contacts.iter().enumerate() {
                    if !sink_ids.contains(&c.sink.as_str()) {
                        return Err(err(
                            entry,
                            &format!("contacts[{j}].sink"),
                            format!(
                                "no sink named {:?}; define it under `sinks` (known: {})",
                                c.sink,
                                sink_ids.join(", ")
                            ),
                        ));
                    }
                }
            }
        }
        for (i, r) in rotations.iter().enumerate() {
            claim("rotations", i, &r.id)?;
        }
        for (i, c) in chains.iter().enumerate() {
            claim("chains", i, &c.id)?;
        }
        map.people = people.into_iter().map(|p| (p.id.clone(), p)).collect();
        map.channels = channels.into_iter().map(|p| (p.id.clone(), p)).collect();
        for (i, r) in rotations.into_iter().enumerate() {
            let entry = format!("rotations[{i}] ({})", r.id);
            let tz: Tz = r.time_zone.parse().map_err(|_| {
                err(
                    entry.clone(),
                    "time_zone",
                    format!(
                        "{:?} is not an IANA time zone; write e.g. America/New_York or UTC",
                        r.time_zone
                    ),
                )
            })?;
            if r.handoffs.is_empty() || r.handoffs.len() > limits::MAX_HANDOFFS {
                return Err(err(
                    entry,
                    "handoffs",
                    format!(
                        "a rotation needs between 1 and {} handoffs, found {}",
                        limits::MAX_HANDOFFS,
                        r.handoffs.len()
                    ),
                ));
            }
            let mut handoffs = Vec::new();
            for (j, h) in r.handoffs.iter().enumerate() {
                let (day, minute) = parse_handoff(&h.at).ok_or_else(|| err(entry.clone(), &format!("handoffs[{j}].at"), format!(
                    "{:?} is not a weekly time; write a day and a 24-hour time, e.g. \"mon 09:00\"", h.at)))?;
                if !map.people.contains_key(&h.person) {
                    return Err(err(
                        entry,
                        &format!("handoffs[{j}].person"),
                        format!("{:?} is not a person under `people`", h.person),
                    ));
                }
                handoffs.push((day, minute, h.person.clone()));
            }
            handoffs.sort_by_key(|(d, m, _)| (d.num_days_from_monday(), *m));
            if handoffs
                .windows(2)
                .any(|w| (w[0].0, w[0].1) == (w[1].0, w[1].1))
            {
                return Err(err(
                    entry,
                    "handoffs",
                    "two handoffs at the same time; keep one".into(),
                ));
            }
            map.rotations.insert(
                r.id.clone(),
                Rotation {
                    id: r.id,
                    time_zone: tz,
                    handoffs,
                },
            );
        }
        for (i, c) in chains.into_iter().enumerate() {
            let entry = format!("chains[{i}] ({})", c.id);
            if c.steps.is_empty() || c.steps.len() > limits::MAX_CHAIN_STEPS {
                return Err(err(
                    entry,
                    "steps",
                    format!(
                        "a chain needs between 1 and {} steps, found {}",
                        limits::MAX_CHAIN_STEPS,
                        c.steps.len()
                    ),
                ));
            }
            if c.repeat == 0 || c.repeat > limits::MAX_CHAIN_REPEATS {
                return Err(err(
                    entry,
                    "repeat",
                    format!(
                        "repeat must be between 1 and {}, found {}",
                        limits::MAX_CHAIN_REPEATS,
                        c.repeat
                    ),
                ));
            }
            for (j, s) in c.steps.iter().enumerate() {
                match map.kind(&s.notify) {
                    Some(OwnerKind::Person | OwnerKind::Channel | OwnerKind::Rotation) => {}
                    _ => {
                        return Err(err(
                            entry,
                            &format!("steps[{j}].notify"),
                            format!(
                                "{:?} is not a person, channel or rotation (a chain step cannot name a chain)",
                                s.notify
                            ),
                        ));
                    }
                }
                if s.wait_minutes == 0 || s.wait_minutes > limits::MAX_CHAIN_WAIT_MINUTES {
                    return Err(err(
                        entry,
                        &format!("steps[{j}].wait_minutes"),
                        format!(
                            "must be between 1 and {} minutes, found {}",
                            limits::MAX_CHAIN_WAIT_MINUTES,
                            s.wait_minutes
                        ),
                    ));
                }
            }
            map.chains.insert(c.id.clone(), c);
        }
        for (i, e) in entries.iter().enumerate() {
            let entry = format!("ownership[{i}]");
            if e.resource.is_none() == e.tool.is_none() {
                return Err(err(entry, "resource", "give exactly one of `resource` (a scope such as service:checkout or iam:*) or `tool`".into()));
            }
            if e.owners.is_empty() || e.owners.len() > limits::MAX_OWNERS_PER_ENTRY {
                return Err(err(
                    entry,
                    "owners",
                    format!(
                        "an entry needs between 1 and {} owners, found {}",
                        limits::MAX_OWNERS_PER_ENTRY,
                        e.owners.len()
                    ),
                ));
            }
            for (j, o) in e.owners.iter().enumerate() {
                if map.kind(o).is_none() {
                    return Err(err(
                        entry,
                        &format!("owners[{j}]"),
                        format!(
                            "{o:?} is not a person, channel, rotation or chain defined in this file"
                        ),
                    ));
                }
            }
        }
        map.entries = entries;
        Ok(map)
    }
}

/// Ids are short names: letters, digits, `-`, `_`, `.`, `@`.
pub(crate) fn check_id(file: &str, entry: &str, field: &str, id: &str) -> Result<(), ConfigError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            file,
            entry.to_string(),
            field,
            format!("{id:?} is not a valid id: use 1 to 128 letters, digits, '-', '_', '.' or '@'"),
        ))
    }
}

/// `"mon 09:00"` → (Monday, 540).
fn parse_handoff(at: &str) -> Option<(Weekday, u32)> {
    let (day, time) = at.trim().split_once(' ')?;
    let day: Weekday = day.parse().ok()?;
    let (h, m) = time.trim().split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some((day, h * 60 + m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handoff_times_parse() {
        assert_eq!(parse_handoff("mon 09:00"), Some((Weekday::Mon, 540)));
        assert_eq!(parse_handoff("Sunday 23:59"), Some((Weekday::Sun, 1439)));
        assert_eq!(parse_handoff("mon 24:00"), None);
        assert_eq!(parse_handoff("09:00"), None);
    }
}
