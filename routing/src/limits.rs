//! Bounds on everything in routing that grows. Each is checked where data
//! enters (configuration load, `route`, `Outbox::enqueue`) and has a test.

/// The largest `owners.yaml` read.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;
/// People + channels + rotations + chains.
pub const MAX_OWNERS: usize = 2_000;
/// Entries of the ownership map.
pub const MAX_OWNERSHIP_ENTRIES: usize = 10_000;
/// Owners named by one ownership entry or one rule.
pub const MAX_OWNERS_PER_ENTRY: usize = 20;
/// Contact routes of one person or channel.
pub const MAX_CONTACTS: usize = 8;
/// Rules in the whole route tree (the root included).
pub const MAX_RULES: usize = 500;
/// Nesting depth of the route tree.
pub const MAX_RULE_DEPTH: usize = 8;
/// Handoffs in one weekly rotation.
pub const MAX_HANDOFFS: usize = 168;
/// Steps in one escalation chain.
pub const MAX_CHAIN_STEPS: usize = 10;
/// Passes through one escalation chain.
pub const MAX_CHAIN_REPEATS: u32 = 10;
/// The longest wait of one chain step (a day).
pub const MAX_CHAIN_WAIT_MINUTES: u32 = 24 * 60;
/// Sinks in one configuration.
pub const MAX_SINKS: usize = 100;
/// Recipients of one routing decision; the rest are counted, not notified.
pub const MAX_RECIPIENTS: usize = 50;
/// Approvers taken from one input.
pub const MAX_APPROVERS: usize = 20;
/// Bytes of one notification body (its grouped items included).
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// Items grouped into one notification; later ones open a new notification.
pub const MAX_GROUP_ITEMS: i64 = 100;
/// Notifications not yet sent or given up; `enqueue` refuses past it.
pub const MAX_OUTBOX_OPEN: i64 = 100_000;
/// Delivery attempts of one notification.
pub const MAX_ATTEMPTS: i32 = 8;
/// The longest group wait and review window a rule may ask for.
pub const MAX_GROUP_WAIT_SECONDS: u64 = 3_600;
pub const MAX_REVIEW_HOURS: u64 = 24 * 14;
/// Bytes of one text field of an input (summary, recovery path, …).
pub const MAX_TEXT_BYTES: usize = 4 * 1024;
/// Playbooks in one configuration, and the bytes of one playbook's input.
pub const MAX_PLAYBOOKS: usize = 100;
pub const MAX_PLAYBOOK_INPUT_BYTES: usize = 64 * 1024;
