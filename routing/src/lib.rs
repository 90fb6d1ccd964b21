//! Mandate's routing: who should know about an agent's action, and getting
//! it to them.
//!
//! - [`owners`]: the ownership map (people, channels, on-call rotations,
//!   escalation chains; resources and tools → owners), from `owners.yaml`.
//! - [`router`]: the rule tree and [`router::route`], pure and deterministic,
//!   whose [`router::RoutingDecision`] is recorded in a task's history.
//! - [`outbox`] and [`worker`]: notifications as durable deliveries, with
//!   leases, retries and backoff, each carrying its id as an idempotency key.
//! - [`sinks`]: webhook, Slack, PagerDuty, email, log. [`sign`]: the HMAC
//!   signatures (webhook, Slack request verification). [`links`]: signed,
//!   expiring, single-use response links.
//! - [`chain`]: escalation timing; [`tti`]: time-to-intervention figures.
//! - [`wire`]: the engine's side: the router `decide` asks, the follower
//!   that enqueues deliveries from recorded `OwnersNotified` events, the
//!   escalation ticker, and answers (API, signed links, Slack callbacks).
//!
//! Routing never delays a step: nothing here is called on the engine's
//! decide path except the pure `route`, and deliveries run on their own
//! tokio task.

pub mod chain;
pub mod config;
pub mod glob;
pub mod limits;
pub mod links;
pub mod outbox;
mod outbox_sqlite;
pub mod owners;
mod page;
pub mod router;
pub mod sign;
pub mod sinks;
pub mod tti;
pub mod wire;
pub mod worker;

pub use config::{ConfigCell, ConfigError, RoutingConfig};
pub use owners::OwnershipMap;
pub use router::{Outcome, Recipient, RouterConfig, RoutingDecision, RoutingInput, route};
