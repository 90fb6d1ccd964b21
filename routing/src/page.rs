//! How a follower's page of notifications is grouped, apart from the
//! statements that read and write it: both forms of a page's write (through
//! sqlx on either backend, and the SQLite writer's direct form) read the
//! same three things per chunk, hand them to [`group_chunk`], and write the
//! [`ChunkPlan`] it returns. The grouping rules live here once.

use std::collections::{HashMap, HashSet};

use crate::limits;
use crate::outbox::{Enqueued, Error, Escalation, NewNotification, notification_id};
use crate::sinks::Message;

/// Items per chunk of a page (the sqlx form's notifications insert binds 13
/// each).
pub(crate) const PAGE_ROWS_PER_STATEMENT: usize = 200;

/// One page item: the notification, and the escalation chain it starts.
pub(crate) type Item = (NewNotification, Option<Escalation>);

/// A notification a chunk adds items to or opens.
pub(crate) struct PageGroup {
    pub(crate) id: String,
    pub(crate) message: Message,
    pub(crate) body: String,
    pub(crate) count: i64,
    /// The item that opened it in this chunk; `None`: it was open before.
    pub(crate) first: Option<usize>,
    pub(crate) changed: bool,
    /// Items were added to it (its body changed).
    pub(crate) grown: bool,
    /// Closed to new items (the next item of its group opens another).
    pub(crate) full: bool,
}

impl PageGroup {
    pub(crate) fn status(&self) -> &'static str {
        if self.full { "pending_full" } else { "pending" }
    }

    /// A group that was open before the chunk, as read from its row.
    pub(crate) fn open(id: String, body: String, count: i64) -> Result<Self, Error> {
        let message: Message = serde_json::from_str(&body)
            .map_err(|e| Error::Corrupt(format!("notification {id}: {e}")))?;
        Ok(PageGroup {
            id,
            message,
            body,
            count,
            first: None,
            changed: false,
            grown: false,
            full: false,
        })
    }
}

/// A chunk's keys: each item's would-be notification id, and the first
/// item of each distinct key (the only ones inserted; a later one is a
/// duplicate).
pub(crate) struct ChunkKeys<'a> {
    pub(crate) fresh_ids: Vec<String>,
    pub(crate) first_of: HashMap<&'a str, usize>,
    pub(crate) firsts: Vec<usize>,
}

impl<'a> ChunkKeys<'a> {
    pub(crate) fn of(items: &'a [Item]) -> Self {
        let fresh_ids = items
            .iter()
            .map(|(n, _)| notification_id(&n.item_key))
            .collect();
        let mut first_of: HashMap<&str, usize> = HashMap::new();
        let firsts = (0..items.len())
            .filter(|&i| *first_of.entry(items[i].0.item_key.as_str()).or_insert(i) == i)
            .collect();
        ChunkKeys {
            fresh_ids,
            first_of,
            firsts,
        }
    }

    /// Splits the first items into those whose key the items insert just
    /// recorded (`inserted`) and those recorded before.
    pub(crate) fn split(
        &self,
        items: &[Item],
        inserted: &HashSet<String>,
    ) -> (Vec<usize>, Vec<usize>) {
        self.firsts
            .iter()
            .partition(|&&i| inserted.contains(&items[i].0.item_key))
    }
}

/// The group keys whose open notification the fresh items may join.
pub(crate) fn group_keys<'b>(items: &'b [Item], fresh: &[usize]) -> HashSet<&'b str> {
    fresh
        .iter()
        .map(|&i| items[i].0.group_key.as_str())
        .collect()
}

/// What a chunk writes, and what each of its items got.
pub(crate) struct ChunkPlan {
    pub(crate) groups: Vec<PageGroup>,
    /// Items that joined a group other than their own id's: `(item, group)`.
    pub(crate) regrouped: Vec<(usize, usize)>,
    /// Notifications the chunk opens.
    pub(crate) opened: i64,
    pub(crate) done: Vec<Enqueued>,
}

impl ChunkPlan {
    /// Groups open before that changed (grown, or closed when full).
    pub(crate) fn grown_or_closed(&self) -> impl Iterator<Item = &PageGroup> {
        self.groups
            .iter()
            .filter(|g| g.first.is_none() && g.changed)
    }

    /// Notifications the chunk opens.
    pub(crate) fn opening(&self) -> impl Iterator<Item = &PageGroup> {
        self.groups.iter().filter(|g| g.first.is_some())
    }

    /// Refuses the chunk if the notifications it opens would take the
    /// outbox past its limit; `before`: how many were open before it.
    /// The count after it.
    pub(crate) fn check_open(&self, before: i64) -> Result<i64, Error> {
        if before + self.opened > limits::MAX_OUTBOX_OPEN {
            // What the count was when the first notification past the
            // limit would have opened.
            return Err(Error::Full {
                open: before.max(limits::MAX_OUTBOX_OPEN),
                limit: limits::MAX_OUTBOX_OPEN,
            });
        }
        Ok(before + self.opened)
    }
}

/// Groups a chunk as if its items were enqueued one by one: each fresh item
/// joins its group's open notification (`open`: those the chunk's reads
/// found) while it has room, or opens one; a key seen before, in this chunk
/// (`keys`) or earlier (`known_ids`: the notification it went into), is a
/// duplicate and changes nothing. `bodies`: each item's message as
/// serialized and checked.
pub(crate) fn group_chunk(
    items: &[Item],
    bodies: &[String],
    keys: &ChunkKeys<'_>,
    fresh: &[usize],
    known_ids: &HashMap<String, String>,
    open: Vec<(String, PageGroup)>,
) -> Result<ChunkPlan, Error> {
    let mut groups: Vec<PageGroup> = Vec::with_capacity(open.len());
    let mut by_key: HashMap<String, usize> = HashMap::with_capacity(open.len());
    for (key, group) in open {
        by_key.insert(key, groups.len());
        groups.push(group);
    }
    let mut done: Vec<Option<Enqueued>> = vec![None; items.len()];
    let mut moved: Vec<(usize, usize)> = Vec::new();
    let mut opened = 0;
    for &i in fresh {
        let n = &items[i].0;
        if let Some(&g) = by_key.get(&n.group_key) {
            let group = &mut groups[g];
            group.message.grouped.push(n.message.what_happened.clone());
            let merged = serde_json::to_string(&group.message).expect("JSON");
            if group.count < limits::MAX_GROUP_ITEMS && merged.len() <= limits::MAX_PAYLOAD_BYTES {
                group.body = merged;
                group.count += 1;
                group.changed = true;
                group.grown = true;
                moved.push((i, g));
                done[i] = Some(Enqueued {
                    id: group.id.clone(),
                    grouped: true,
                    duplicate: false,
                });
                continue;
            }
            // The group is full: close it to new items (it keeps its send
            // time) so this item opens the next one.
            group.message.grouped.pop();
            group.full = true;
            group.changed = true;
            by_key.remove(&n.group_key);
        }
        opened += 1;
        by_key.insert(n.group_key.clone(), groups.len());
        groups.push(PageGroup {
            id: keys.fresh_ids[i].clone(),
            message: n.message.clone(),
            body: bodies[i].clone(),
            count: 1,
            first: Some(i),
            changed: true,
            grown: true,
            full: false,
        });
        done[i] = Some(Enqueued {
            id: keys.fresh_ids[i].clone(),
            grouped: false,
            duplicate: false,
        });
    }
    let regrouped = moved
        .into_iter()
        .filter(|&(i, g)| groups[g].id != keys.fresh_ids[i])
        .collect();
    // Duplicates: the notification the key went into.
    for i in 0..items.len() {
        if done[i].is_some() {
            continue;
        }
        let key = items[i].0.item_key.as_str();
        let first = keys.first_of[key];
        let id = match (first != i, &done[first]) {
            (true, Some(d)) => d.id.clone(),
            _ => known_ids.get(key).cloned().ok_or_else(|| {
                Error::Corrupt(format!("notification item {key} vanished while enqueueing"))
            })?,
        };
        done[i] = Some(Enqueued {
            id,
            grouped: false,
            duplicate: true,
        });
    }
    Ok(ChunkPlan {
        groups,
        regrouped,
        opened,
        done: done
            .into_iter()
            .map(|d| d.expect("every item answered"))
            .collect(),
    })
}

/// The chains a page starts: one per notification (its first item's), with
/// the id the item got (`out`, one per item).
pub(crate) fn chains<'a>(items: &'a [Item], out: &'a [Enqueued]) -> Vec<(&'a str, &'a Escalation)> {
    let mut seen = HashSet::new();
    items
        .iter()
        .zip(out)
        .filter_map(|((_, e), d)| e.as_ref().map(|e| (d.id.as_str(), e)))
        .filter(|(id, _)| seen.insert(*id))
        .collect()
}
