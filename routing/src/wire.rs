//! Routing wired into the engine.
//!
//! - [`EngineRouter`]: the `core::routing::Router` `decide` asks (pure: it
//!   reads the configuration in force and routes; the answer is recorded).
//! - [`Follower`]: reads the global event feed from its durable cursor and
//!   enqueues one delivery per recipient and contact of every recorded
//!   `OwnersNotified` (item key `task:seq:recipient:sink`, so a re-read
//!   enqueues nothing twice and a crash loses nothing), starts escalation
//!   chains, and fires their next steps when nobody answered in time.
//! - [`Responder`]: a person's answer (API token, signed link, verified
//!   Slack callback) → `Engine::respond_to_notification`, and the chains it
//!   stops.
//!
//! Routing never delays a step: the engine only calls the pure router;
//! everything here runs on its own tokio task.

use std::sync::Arc;
use std::time::Duration;

use mandate_engine::Engine;
use mandate_engine::core::event::EventPayload;
use mandate_engine::core::routing::{
    ContactRef, NotifiedRecipient, RoutedOutcome, Router, RoutingRecord, RoutingRequest, item_key,
};
use mandate_engine::runtime::NotificationResponse;
use tokio::sync::{Notify, watch};

use crate::config::ConfigCell;
use crate::links::{self, LinkClaim, LinkError};
use crate::outbox::{self, Escalation, NewNotification, Outbox};
use crate::router::{Outcome, RoutingInput};
use crate::sinks::{Message, PlaybookLink, ResponseOption};
use crate::worker::Clock;

/// A tool's scope field (`service` for `deploy.set_version`), from the
/// catalog in force: the resource routed on is `<field>:<value>`
/// (`service:checkout`), as the ownership map names resources.
pub type ScopeField = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// The resource a step touches, as the map names it.
fn resource_of(tool: &str, scope: Option<&str>, field: Option<&ScopeField>) -> Option<String> {
    let value = scope.filter(|s| *s != "*")?;
    Some(match field.and_then(|f| f(tool)) {
        Some(f) => format!("{f}:{value}"),
        None => value.to_string(),
    })
}

/// The router `decide` asks, over the configuration in force.
pub struct EngineRouter {
    pub config: Arc<ConfigCell>,
    pub scope_field: Option<ScopeField>,
}

impl Router for EngineRouter {
    fn route(&self, r: &RoutingRequest<'_>) -> Option<RoutingRecord> {
        let config = self.config.get();
        let d = r.decision;
        let path = d
            .map(|d| d.path.as_str().to_string())
            .unwrap_or_else(|| "monitored_execute".into());
        let gated_open = d.is_some_and(|d| d.preapproval.is_none());
        let input = RoutingInput {
            task_id: r.task_id.to_string(),
            step_seq: r.step_seq,
            agent: r
                .principal
                .agent
                .clone()
                .unwrap_or_else(|| "operator".into()),
            on_behalf_of: r.principal.on_behalf_of.clone(),
            tool: r.tool.to_string(),
            operation: d
                .and_then(|d| d.operation.clone())
                .unwrap_or_else(|| "execute".into()),
            resource: r.resource.map(str::to_string).or_else(|| {
                resource_of(
                    r.tool,
                    d.and_then(|d| d.scope.as_deref()),
                    self.scope_field.as_ref(),
                )
            }),
            path: path.clone(),
            outcome: r.outcome.map(|o| match o {
                RoutedOutcome::StepFailed => Outcome::StepFailed,
                RoutedOutcome::CompensationFailed => Outcome::CompensationFailed,
                RoutedOutcome::TaskEscalated => Outcome::TaskEscalated,
            }),
            summary: r.summary.to_string(),
            risk: d.and_then(|d| d.risk.clone()),
            recovery_path: r.recovery_path.map(str::to_string),
            approvers: match d.and_then(|d| d.approval.as_ref()) {
                Some(a) if gated_open && r.outcome.is_none() => a.approvers.clone(),
                _ => vec![],
            },
        };
        let decision = crate::router::route(&config.map, &config.router, &input, r.now_ms);
        Some(RoutingRecord {
            matched_rules: decision.matched_rules,
            recipients: decision.recipients.into_iter().map(notified).collect(),
            recipients_dropped: decision.recipients_dropped,
            unowned: decision.unowned,
            review_due_at_ms: decision.review_due_at_ms,
            group_key: decision.group_key,
            group_wait_ms: decision.group_wait_ms,
            path: r.outcome.is_none().then_some(path),
            outcome: r.outcome,
            summary: r.summary.to_string(),
            recovery_path: r.recovery_path.map(str::to_string),
            escalation_step: None,
            playbooks: decision.playbooks,
        })
    }
}

/// A router recipient as recorded in the history.
fn notified(x: crate::router::Recipient) -> NotifiedRecipient {
    NotifiedRecipient {
        recipient: x.recipient,
        owner: x.owner,
        rule: x.rule,
        why: x.why,
        contacts: x
            .contacts
            .into_iter()
            .map(|c| ContactRef {
                sink: c.sink,
                to: c.to,
            })
            .collect(),
        escalation_chain: x.escalation_chain,
    }
}

/// How response links are made: the key they are signed with, the address
/// they point at (`{base_url}/v1/links/{token}`), and how long they work.
#[derive(Clone)]
pub struct LinkSettings {
    pub secret: Vec<u8>,
    pub base_url: String,
    pub ttl_ms: i64,
}

/// The actions offered in a notification, by what it is about.
fn offered(record: &RoutingRecord, is_approver: bool) -> Vec<&'static str> {
    let mut a = vec!["acknowledge"];
    if is_approver {
        a.extend(["approve", "reject"]);
    }
    match record.outcome {
        Some(_) => a.extend(["trigger_recovery", "assign"]),
        None => {
            a.extend(["pause_task", "pause_agent", "cancel_rollback"]);
            // A step (or a reported action) with a known way back offers it.
            if record.recovery_path.is_some() {
                a.push("trigger_recovery");
            }
            a.push("assign");
        }
    }
    if record.review_due_at_ms.is_some() {
        a.push("mark_reviewed");
    }
    a.extend(["helpful", "not_helpful"]);
    a
}

fn label(action: &str) -> String {
    let mut s = action.replace('_', " ");
    if let Some(first) = s.get_mut(0..1) {
        first.make_ascii_uppercase();
    }
    s
}

/// The feed's consumer name in `routing_cursor`.
const CURSOR: &str = "routing-follower";
/// Events read per look at the feed.
const PAGE: u32 = 500;
/// How long the follower lets appends accumulate after one wakes it.
const FOLLOW_BATCH_WAIT: Duration = Duration::from_millis(25);

/// Reads the history feed and turns recorded routing into deliveries.
pub struct Follower {
    stop: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
}

/// What a follower works with.
#[derive(Clone)]
pub struct FollowerParts {
    pub engine: Engine,
    pub outbox: Arc<Outbox>,
    pub config: Arc<ConfigCell>,
    pub links: LinkSettings,
    pub clock: Clock,
    /// Pokes the delivery worker after an enqueue.
    pub wake: Arc<Notify>,
    /// The longest idle wait between looks at the feed and the chains.
    pub poll_interval: Duration,
}

impl Follower {
    pub fn spawn(parts: FollowerParts) -> Follower {
        let (stop, mut stopped) = watch::channel(false);
        let handle = tokio::spawn(async move {
            let mut updates = parts.engine.subscribe();
            loop {
                if *stopped.borrow() {
                    return;
                }
                let busy = match parts.step().await {
                    Ok(busy) => busy,
                    Err(e) => {
                        tracing::warn!(error = %e, "routing follower: retrying");
                        false
                    }
                };
                if busy {
                    continue;
                }
                tokio::select! {
                    _ = updates.recv() => {
                        // Batch: let a burst of appends land, then read them
                        // in one pass instead of one pass per append.
                        tokio::time::sleep(FOLLOW_BATCH_WAIT).await;
                        updates = updates.resubscribe();
                    }
                    _ = tokio::time::sleep(parts.poll_interval) => {}
                    _ = stopped.changed() => {}
                }
            }
        });
        Follower { stop, handle }
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.handle.await;
    }
}

impl FollowerParts {
    /// One pass: a page of the feed, then the due chain steps. True if there
    /// may be more to do at once.
    pub async fn step(&self) -> Result<bool, String> {
        let cursor = self
            .outbox
            .cursor(CURSOR)
            .await
            .map_err(|e| e.to_string())?;
        // Only the routing decisions are read (not every event's payload),
        // up to the head seen now: every event at or below it has committed.
        let store = self.engine.store();
        let head = store.event_head().await.map_err(|e| e.to_string())?;
        let page = if head > cursor {
            store
                .events_of_type_between(cursor, head, "OwnersNotified", PAGE)
                .await
                .map_err(|e| e.to_string())?
        } else {
            Vec::new()
        };
        let full = page.len() as u32 == PAGE;
        // How far this pass has looked: all of it, unless the page was full.
        let seen = match page.last() {
            Some(last) if full => last.gseq,
            _ => head,
        };
        let mut items = Vec::new();
        for g in &page {
            let raw = &g.event;
            let Ok(EventPayload::OwnersNotified { about_seq, routing }) =
                EventPayload::from_parts(&raw.event_type, &raw.payload)
            else {
                tracing::warn!(task = %raw.task_id, seq = raw.seq, "routing follower: unreadable OwnersNotified; skipped");
                continue;
            };
            let agent = g.agent.clone().unwrap_or_else(|| "operator".into());
            let playbooks = self
                .start_playbooks(&raw.task_id, about_seq, &routing)
                .await?;
            for r in &routing.recipients {
                self.notify(
                    &raw.task_id,
                    about_seq,
                    &agent,
                    &routing,
                    r,
                    raw.recorded_at_ms,
                    &playbooks,
                    &mut items,
                );
            }
        }
        // The page's notifications, the chains they start and the cursor
        // move in one transaction: a crash keeps all of it or none.
        let mut enqueued = false;
        if seen > cursor {
            let done = self
                .outbox
                .enqueue_many(&items, (self.clock)(), Some((CURSOR, seen)))
                .await
                .map_err(|e| e.to_string())?;
            enqueued = done.iter().any(|d| !d.duplicate);
        }
        if enqueued {
            self.wake.notify_one();
        }
        // A chain step recorded now is enqueued on the next pass.
        let recorded = self.tick_chains().await?;
        Ok(full || recorded)
    }

    /// Starts the playbooks a routing names (each once per routed event: the
    /// submission's idempotency key is derived from task, event and
    /// playbook, so a re-read after a crash finds the same task) and
    /// records each start, or why it failed, as `PlaybookStarted` in the
    /// routed task's history. Returns links to put in the notifications.
    async fn start_playbooks(
        &self,
        task_id: &str,
        about_seq: i64,
        routing: &RoutingRecord,
    ) -> Result<Vec<PlaybookLink>, String> {
        if routing.escalation_step.is_some() || routing.playbooks.is_empty() {
            return Ok(vec![]);
        }
        let config = self.config.get();
        let mut links = Vec::new();
        for id in &routing.playbooks {
            let Some(p) = config.playbooks.get(id) else {
                // Removed by a reload since the decision: say so.
                let e = format!("playbook {id:?} is no longer in the routing configuration");
                self.engine
                    .record_playbook_started(task_id, about_seq, id, "", Err(e.clone()))
                    .await
                    .map_err(|e| e.to_string())?;
                links.push(PlaybookLink {
                    playbook: id.clone(),
                    task_id: None,
                    url: None,
                    error: Some(e),
                });
                continue;
            };
            let key = format!(
                "playbook:{}",
                &crate::sign::hmac_hex(
                    b"mandate-playbook",
                    &[task_id.as_bytes(), &about_seq.to_be_bytes(), id.as_bytes()]
                )[..40]
            );
            let agent = (p.workflow == "plan")
                .then(|| p.input.get("agent").and_then(|a| a.as_str()))
                .flatten()
                .map(str::to_string);
            let on_behalf_of = (p.workflow == "plan")
                .then(|| p.input.get("on_behalf_of").and_then(|a| a.as_str()))
                .flatten()
                .map(str::to_string);
            let started = match self
                .engine
                .submit(
                    &p.workflow,
                    p.input.clone(),
                    mandate_engine::SubmitOptions {
                        agent,
                        on_behalf_of,
                        idempotency_key: Some(key),
                        actor: Some(format!("routing:playbook:{id}")),
                    },
                )
                .await
            {
                Ok(s) => Ok(s.task_id),
                // A refusal is the configuration's fault: recorded, not retried.
                Err(
                    e @ (mandate_engine::runtime::Error::UnknownWorkflow { .. }
                    | mandate_engine::runtime::Error::InvalidInput { .. }
                    | mandate_engine::runtime::Error::Forbidden { .. }
                    | mandate_engine::runtime::Error::Rejected { .. }),
                ) => Err(e.to_string()),
                Err(e) => return Err(format!("start playbook {id}: {e}")),
            };
            self.engine
                .record_playbook_started(task_id, about_seq, id, &p.workflow, started.clone())
                .await
                .map_err(|e| e.to_string())?;
            links.push(match started {
                Ok(t) => PlaybookLink {
                    playbook: id.clone(),
                    url: Some(format!(
                        "{}/v1/tasks/{t}",
                        self.links.base_url.trim_end_matches('/')
                    )),
                    task_id: Some(t),
                    error: None,
                },
                Err(e) => PlaybookLink {
                    playbook: id.clone(),
                    task_id: None,
                    url: None,
                    error: Some(e),
                },
            });
        }
        Ok(links)
    }

    /// Enqueues one recipient's deliveries (one per contact). An escalation
    /// step's item keys end in `:esc<N>`, so they differ from the first's.
    #[allow(clippy::too_many_arguments)]
    fn notify(
        &self,
        task_id: &str,
        about_seq: i64,
        agent: &str,
        routing: &RoutingRecord,
        r: &NotifiedRecipient,
        at_ms: i64,
        playbooks: &[PlaybookLink],
        items: &mut Vec<(NewNotification, Option<Escalation>)>,
    ) {
        let step = routing.escalation_step;
        for c in &r.contacts {
            let mut key = item_key(task_id, about_seq, &r.recipient, &c.sink);
            if let Some(n) = step {
                key.push_str(&format!(":esc{n}"));
            }
            let id = outbox::notification_id(&key);
            let responses = offered(routing, r.owner == "approver")
                .into_iter()
                .filter_map(|action| {
                    let token = links::mint(
                        &self.links.secret,
                        &LinkClaim {
                            notification_id: id.clone(),
                            recipient: r.recipient.clone(),
                            action: action.to_string(),
                            expires_at_ms: at_ms + self.links.ttl_ms,
                        },
                    )
                    .ok()?;
                    Some(ResponseOption {
                        action: action.to_string(),
                        label: label(action),
                        url: format!(
                            "{}/v1/links/{token}",
                            self.links.base_url.trim_end_matches('/')
                        ),
                    })
                })
                .collect();
            let title = match (&routing.outcome, &routing.path) {
                (Some(o), _) => format!("{agent}: {}", serde_plain(o)),
                (None, Some(p)) => format!("{agent}: {p}"),
                (None, None) => format!("{agent}: notification"),
            };
            let message = Message {
                title,
                what_happened: routing.summary.clone(),
                task_id: task_id.to_string(),
                step_seq: Some(about_seq),
                agent: agent.to_string(),
                on_behalf_of: None,
                path: routing.path.clone().unwrap_or_else(|| "escalation".into()),
                blast_radius: None,
                evidence: vec![format!("task {task_id}, event #{about_seq}")],
                rollback_plan: routing.recovery_path.clone(),
                rule: r.rule.clone(),
                why: r.why.clone(),
                review_due_at_ms: routing.review_due_at_ms,
                responses,
                event_action: None,
                grouped: vec![],
                playbooks: playbooks.to_vec(),
            };
            // The id is derived from the item key, so links can name it
            // before it is enqueued. With a group wait, items of one group
            // for one recipient and sink fold into the first one's
            // notification (its id and links) until the wait ends: a burst
            // becomes one notification. Without one (and for escalation
            // steps) each item is its own, sent at once.
            let (group_key, send_at_ms) = match (step, routing.group_wait_ms) {
                (None, wait) if wait > 0 => (
                    format!("{}|to={}|sink={}", routing.group_key, r.recipient, c.sink),
                    at_ms.saturating_add(wait),
                ),
                _ => (key.clone(), at_ms),
            };
            let escalation = match (step, &r.escalation_chain) {
                (None, Some(chain)) => self.config.get().map.chains.get(chain).map(|spec| {
                    let first_wait = spec.steps[0].wait_minutes as i64 * 60_000;
                    Escalation {
                        // Filled in with the id the notification gets.
                        notification_id: String::new(),
                        task_id: task_id.to_string(),
                        about_seq,
                        chain: chain.clone(),
                        started_at_ms: at_ms,
                        fired_steps: 1,
                        next_due_at_ms: Some(at_ms + first_wait),
                    }
                }),
                _ => None,
            };
            items.push((
                NewNotification {
                    item_key: key.clone(),
                    group_key,
                    task_id: task_id.to_string(),
                    recipient: r.recipient.clone(),
                    sink: c.sink.clone(),
                    address: c.to.clone(),
                    message,
                    send_at_ms,
                },
                escalation,
            ));
        }
    }

    /// Fires the chain steps that came due with nobody answering.
    async fn tick_chains(&self) -> Result<bool, String> {
        let now = (self.clock)();
        let due = self
            .outbox
            .due_escalations(now, 100)
            .await
            .map_err(|e| e.to_string())?;
        let config = self.config.get();
        let mut any = false;
        for e in due {
            let Some(chain) = config.map.chains.get(&e.chain) else {
                self.outbox
                    .advance_escalation(&e.notification_id, e.fired_steps, e.fired_steps, None)
                    .await
                    .map_err(|e| e.to_string())?;
                continue;
            };
            let status = crate::chain::status(chain, e.started_at_ms, &[], now);
            let n = chain.steps.len() as i64;
            let (fired, next, notify) = match status {
                crate::chain::ChainStatus::Active {
                    pass,
                    step,
                    notify,
                    next_due_at_ms,
                    fired_at_ms,
                } => (
                    pass as i64 * n + step as i64 + 1,
                    next_due_at_ms.or(Some(
                        fired_at_ms + chain.steps[step].wait_minutes as i64 * 60_000,
                    )),
                    Some(notify),
                ),
                _ => (e.fired_steps, None, None),
            };
            let next = if fired == e.fired_steps && notify.is_some() {
                next.filter(|t| *t > e.next_due_at_ms.unwrap_or(0))
            } else {
                next
            };
            if let Some(target) = notify.filter(|_| fired > e.fired_steps) {
                // Recorded in the history first (deliveries follow from it),
                // then the chain moves on: a crash in between records nothing
                // twice (the step is looked for) and loses nothing.
                let history = self
                    .engine
                    .history(&e.task_id)
                    .await
                    .map_err(|e| e.to_string())?;
                let routed = |step: Option<i64>| {
                    history.iter().find_map(|ev| match &ev.payload {
                        EventPayload::OwnersNotified { about_seq, routing }
                            if *about_seq == e.about_seq && routing.escalation_step == step =>
                        {
                            Some(routing.clone())
                        }
                        _ => None,
                    })
                };
                if let Some(first) = routed(None)
                    && routed(Some(fired)).is_none()
                {
                    let why = format!(
                        "step {fired} of escalation chain {}: nobody answered in time",
                        e.chain
                    );
                    let recipients =
                        crate::router::expand(&config.map, &target, "escalation", &why, now)
                            .into_iter()
                            .map(|r| NotifiedRecipient {
                                owner: e.chain.clone(),
                                escalation_chain: None,
                                ..notified(r)
                            })
                            .collect();
                    let record = RoutingRecord {
                        matched_rules: vec![format!("escalation:{}", e.chain)],
                        recipients,
                        recipients_dropped: 0,
                        unowned: false,
                        review_due_at_ms: None,
                        group_wait_ms: 0,
                        escalation_step: Some(fired),
                        // Started once, with the first notification.
                        playbooks: vec![],
                        ..*first
                    };
                    self.engine
                        .record_escalation_step(&e.task_id, e.about_seq, record)
                        .await
                        .map_err(|e| e.to_string())?;
                    any = true;
                }
            }
            self.outbox
                .advance_escalation(&e.notification_id, e.fired_steps, fired, next)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(any)
    }
}

fn serde_plain(o: &RoutedOutcome) -> &'static str {
    match o {
        RoutedOutcome::StepFailed => "step failed",
        RoutedOutcome::CompensationFailed => "compensation failed",
        RoutedOutcome::TaskEscalated => "task escalated to a human",
    }
}

/// Why an answer was refused.
#[derive(Debug, thiserror::Error)]
pub enum RespondError {
    #[error("no notification {0}")]
    NotFound(String),
    #[error(
        "notification {id} was sent to {recipient}, not to {identity}; only its recipient can answer it"
    )]
    NotYours {
        id: String,
        recipient: String,
        identity: String,
    },
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Outbox(#[from] outbox::Error),
    #[error(transparent)]
    Engine(#[from] mandate_engine::runtime::Error),
    #[error("{0}")]
    Refused(String),
}

/// An answer as given.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    pub action: String,
    pub assign_to: Option<String>,
    pub comment: Option<String>,
}

/// Records people's answers.
#[derive(Clone)]
pub struct Responder {
    pub engine: Engine,
    pub outbox: Arc<Outbox>,
    pub links: LinkSettings,
    pub config: Arc<ConfigCell>,
    pub clock: Clock,
}

/// What an answer recorded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Answered {
    pub notification_id: String,
    pub task_id: String,
    pub action: String,
    pub identity: String,
    pub seq: i64,
    pub escalations_stopped: u64,
    /// What the answer did for each item of the notification (one unless it
    /// grouped several events), in order; the first is the one above.
    pub items: Vec<ItemAnswered>,
}

/// The answer's effect on one item of a (grouped) notification.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ItemAnswered {
    pub task_id: String,
    pub about_seq: Option<i64>,
    /// The seq of the recorded `NotificationResponded`.
    pub seq: Option<i64>,
    /// Why this item's action was refused (e.g. its task ended meanwhile);
    /// the other items were still answered.
    pub error: Option<String>,
}

impl Responder {
    /// An answer from `identity` (authenticated by the caller, `via` says
    /// how). Only the notification's recipient may answer it, except an
    /// operator (`any_recipient`).
    pub async fn respond(
        &self,
        id: &str,
        identity: &str,
        via: &str,
        any_recipient: bool,
        answer: Answer,
    ) -> Result<Answered, RespondError> {
        let n = self
            .outbox
            .locate(id)
            .await?
            .ok_or_else(|| RespondError::NotFound(id.to_string()))?;
        if !any_recipient && n.recipient != identity {
            return Err(RespondError::NotYours {
                id: id.to_string(),
                recipient: n.recipient,
                identity: identity.to_string(),
            });
        }
        // Every item the notification holds is answered: a grouped
        // notification (a burst of events) is one message, and one click
        // answers all it said. The action is taken once per task (once per
        // agent for `pause_agent`, once per item for approvals); every item
        // records the answer. The first item's refusal is the answer's (and
        // nothing is recorded); a later item's is reported in `items`.
        let mut targets: Vec<(String, Option<i64>)> = n
            .abouts()
            .into_iter()
            .map(|(task, seq)| (task, Some(seq)))
            .collect();
        if targets.is_empty() {
            targets.push((n.task_id.clone(), None));
        }
        let mut acted_tasks = std::collections::HashSet::new();
        let mut acted_agents = std::collections::HashSet::new();
        let mut items: Vec<ItemAnswered> = Vec::with_capacity(targets.len());
        let mut stopped = 0;
        for (i, (task_id, about_seq)) in targets.into_iter().enumerate() {
            let record_only = match answer.action.as_str() {
                "approve" | "reject" => false,
                "pause_agent" => {
                    let agent = match self.engine.task(&task_id).await {
                        Ok(t) => t.agent,
                        Err(e) if i == 0 => return Err(e.into()),
                        Err(_) => None,
                    };
                    !acted_agents.insert(agent)
                }
                _ => !acted_tasks.insert(task_id.clone()),
            };
            let recorded = self
                .engine
                .respond_to_notification(
                    &task_id,
                    NotificationResponse {
                        notification_id: id.to_string(),
                        about_seq,
                        action: answer.action.clone(),
                        identity: identity.to_string(),
                        via: via.to_string(),
                        notified_at_ms: n.sent_at_ms.or(Some(n.created_at_ms)),
                        assign_to: answer.assign_to.clone(),
                        comment: answer.comment.clone(),
                        record_only,
                    },
                )
                .await;
            match recorded {
                Ok(seq) => {
                    // Any answer means someone is on it: the chains stop.
                    if let Some(s) = about_seq {
                        stopped += self
                            .outbox
                            .stop_escalations(&task_id, s, identity, (self.clock)())
                            .await?;
                    }
                    items.push(ItemAnswered {
                        task_id,
                        about_seq,
                        seq: Some(seq),
                        error: None,
                    });
                }
                Err(e) if i == 0 => return Err(e.into()),
                Err(e) => items.push(ItemAnswered {
                    task_id,
                    about_seq,
                    seq: None,
                    error: Some(e.to_string()),
                }),
            }
        }
        let first = &items[0];
        Ok(Answered {
            notification_id: id.to_string(),
            task_id: first.task_id.clone(),
            action: answer.action,
            identity: identity.to_string(),
            seq: first.seq.unwrap_or_default(),
            escalations_stopped: stopped,
            items,
        })
    }

    /// A one-click link: checks signature, expiry and the recipient it is
    /// bound to (`presented`: the identity of the caller's token, if any;
    /// else the link acts as its own recipient), uses it up, then answers
    /// as that recipient. A refused link records nothing.
    pub async fn follow_link(
        &self,
        token: &str,
        presented: Option<&str>,
    ) -> Result<Answered, RespondError> {
        let now = (self.clock)();
        let bound = links::bound_recipient(token)?;
        let claim = links::verify(&self.links.secret, token, presented.unwrap_or(&bound), now)?;
        let n = self
            .outbox
            .locate(&claim.notification_id)
            .await?
            .ok_or_else(|| RespondError::NotFound(claim.notification_id.clone()))?;
        if n.recipient != claim.recipient {
            return Err(LinkError::WrongRecipient {
                bound_to: n.recipient,
                presented: claim.recipient,
            }
            .into());
        }
        self.outbox
            .consume_link(token, &claim, now)
            .await
            .map_err(|e| match e {
                outbox::Error::Link(l) => RespondError::Link(l),
                e => e.into(),
            })?;
        self.respond(
            &claim.notification_id,
            &claim.recipient,
            "link",
            false,
            Answer {
                action: claim.action.clone(),
                ..Answer::default()
            },
        )
        .await
    }

    /// A Slack interactivity callback (`application/x-www-form-urlencoded`
    /// with a `payload` JSON field), verified with the app's signing secret
    /// before anything is read. The clicking Slack user must be a person of
    /// the map whose Slack contact is `@<username>` or their user id, and
    /// the notification's recipient.
    pub async fn slack(
        &self,
        signing_secret: &[u8],
        timestamp: &str,
        signature: &str,
        body: &[u8],
    ) -> Result<Answered, RespondError> {
        crate::sign::verify_slack(
            signing_secret,
            timestamp,
            signature,
            body,
            (self.clock)() / 1000,
        )
        .map_err(|e| RespondError::Refused(format!("Slack signature refused: {e}")))?;
        let payload = form_field(body, "payload")
            .ok_or_else(|| RespondError::Refused("the callback has no `payload` field".into()))?;
        let v: serde_json::Value = serde_json::from_str(&payload)
            .map_err(|e| RespondError::Refused(format!("the payload is not JSON: {e}")))?;
        let action = &v["actions"][0];
        let (Some(action_id), Some(id)) = (action["action_id"].as_str(), action["value"].as_str())
        else {
            return Err(RespondError::Refused(
                "the payload has no actions[0].action_id and value".into(),
            ));
        };
        let user_id = v["user"]["id"].as_str().unwrap_or("");
        let username = v["user"]["username"].as_str().unwrap_or("");
        let config = self.config.get();
        let person = config.map.people.iter().find_map(|(pid, p)| {
            p.contacts
                .iter()
                .any(|c| {
                    config
                        .sinks
                        .sinks
                        .get(&c.sink)
                        .is_some_and(|(s, _)| matches!(s, crate::sinks::Sink::Slack { .. }))
                        && c.to.as_deref().is_some_and(|to| {
                            (!username.is_empty() && to == format!("@{username}"))
                                || (!user_id.is_empty() && to == user_id)
                        })
                })
                .then(|| pid.clone())
        });
        let Some(identity) = person else {
            return Err(RespondError::Refused(format!(
                "Slack user {username:?} ({user_id}) is not a person of the ownership map"
            )));
        };
        self.respond(
            id,
            &identity,
            "slack",
            false,
            Answer {
                action: action_id.to_string(),
                ..Answer::default()
            },
        )
        .await
    }
}

/// One field of an `application/x-www-form-urlencoded` body.
fn form_field(body: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    text.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(
                    std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or(""),
                    16,
                ) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Encodes a form value (for tests and relays).
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Adds to a plan's dry-run report (`mandate plan check`, `POST
/// /v1/plans/dry-run`) who each step would notify and by which rule:
/// `notify: [{recipient, owner, rule, why}]`, `routing_rules`, `unowned`.
pub fn route_dry_run(
    report: &mut serde_json::Value,
    config: &crate::RoutingConfig,
    scope_field: Option<&ScopeField>,
    now_ms: i64,
) {
    let agent = report["agent"].as_str().unwrap_or("operator").to_string();
    let on_behalf_of = report["on_behalf_of"].as_str().map(str::to_string);
    let Some(steps) = report["steps"].as_array_mut() else {
        return;
    };
    for s in steps {
        let text = |v: &serde_json::Value| v.as_str().map(str::to_string);
        let tool = text(&s["tool"]).unwrap_or_default();
        let input = RoutingInput {
            resource: resource_of(&tool, s["scope"].as_str(), scope_field),
            task_id: "(dry run)".into(),
            step_seq: None,
            agent: agent.clone(),
            on_behalf_of: on_behalf_of.clone(),
            tool,
            operation: text(&s["operation"]).unwrap_or_else(|| "execute".into()),
            path: text(&s["decision"]).unwrap_or_else(|| "monitored_execute".into()),
            outcome: None,
            summary: String::new(),
            risk: text(&s["risk"]),
            recovery_path: None,
            approvers: s["approval"]["approvers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect(),
        };
        let d = crate::router::route(&config.map, &config.router, &input, now_ms);
        s["notify"] = serde_json::json!(d
            .recipients
            .iter()
            .map(|r| serde_json::json!({"recipient": r.recipient, "owner": r.owner, "rule": r.rule, "why": r.why}))
            .collect::<Vec<_>>());
        s["routing_rules"] = serde_json::json!(d.matched_rules);
        s["unowned"] = serde_json::json!(d.unowned);
    }
}

/// Most events one figures scan reads (the newest are read).
pub const MAX_FIGURES_SCAN: i64 = 1_000_000;

/// The seeds' figures, from recorded history: time to intervention per
/// action, ownership coverage, recovery-path coverage, relevance.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Figures {
    pub tti: Vec<crate::tti::TtiStats>,
    /// Routed steps whose map named at least one owner / routed steps.
    pub ownership_coverage: Option<f64>,
    pub steps_routed: u64,
    /// Write steps with a compensation or a recovery path / write steps.
    pub recovery_path_coverage: Option<f64>,
    pub write_steps: u64,
    /// `helpful` / (`helpful` + `not_helpful`).
    pub relevance: Option<f64>,
    pub rated: u64,
    pub events_scanned: u64,
    /// The scan stopped at [`MAX_FIGURES_SCAN`] events (older ones not read).
    pub truncated: bool,
}

/// Reads the newest `max_events` (at most [`MAX_FIGURES_SCAN`]) of the feed
/// recorded at or after `since_ms`.
pub async fn figures(
    engine: &Engine,
    since_ms: Option<i64>,
    max_events: i64,
) -> Result<Figures, mandate_engine::store::Error> {
    use std::collections::HashMap;
    let store = engine.store();
    let max = max_events.clamp(1, MAX_FIGURES_SCAN);
    let head = store.event_head().await?;
    let mut cursor = (head - max).max(0);
    let mut f = Figures {
        truncated: cursor > 0,
        ..Figures::default()
    };
    // Per notification: its first answer.
    let mut first: HashMap<String, crate::tti::ResponseRecord> = HashMap::new();
    let mut rated: std::collections::HashSet<String> = std::collections::HashSet::new();
    let (mut owned, mut recoverable, mut helpful) = (0u64, 0u64, 0u64);
    loop {
        let page = store.events_after(cursor, None, None, 1_000).await?;
        let Some(last) = page.last() else { break };
        cursor = last.gseq;
        for g in &page {
            let raw = &g.event;
            f.events_scanned += 1;
            if since_ms.is_some_and(|s| raw.recorded_at_ms < s) {
                continue;
            }
            let Ok(p) = EventPayload::from_parts(&raw.event_type, &raw.payload) else {
                continue;
            };
            match p {
                EventPayload::OwnersNotified { routing, .. } if routing.path.is_some() => {
                    f.steps_routed += 1;
                    owned += u64::from(!routing.unowned);
                }
                EventPayload::PolicyEvaluated {
                    kind,
                    compensation,
                    recovery_path,
                    decision,
                    ..
                } if kind.is_write() => {
                    f.write_steps += 1;
                    recoverable += u64::from(
                        compensation.is_some()
                            || recovery_path.is_some()
                            || decision.recovery_path.is_some(),
                    );
                }
                EventPayload::NotificationResponded {
                    notification_id,
                    action,
                    notified_at_ms,
                    ..
                } => {
                    if action == "helpful" || action == "not_helpful" {
                        // Once per notification: a grouped one records the
                        // rating on each of its items.
                        if rated.insert(notification_id) {
                            f.rated += 1;
                            helpful += u64::from(action == "helpful");
                        }
                        continue;
                    }
                    let Some(at) = notified_at_ms else { continue };
                    first
                        .entry(notification_id)
                        .or_insert(crate::tti::ResponseRecord {
                            action,
                            notified_at_ms: at,
                            first_response_at_ms: Some(raw.recorded_at_ms),
                        });
                }
                _ => {}
            }
        }
        if page.len() < 1_000 {
            break;
        }
    }
    let ratio = |n: u64, d: u64| (d > 0).then(|| n as f64 / d as f64);
    f.ownership_coverage = ratio(owned, f.steps_routed);
    f.recovery_path_coverage = ratio(recoverable, f.write_steps);
    f.relevance = ratio(helpful, f.rated);
    let records: Vec<_> = first.into_values().collect();
    f.tti = crate::tti::tti(&records);
    Ok(f)
}
