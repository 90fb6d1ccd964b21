//! Sinks: where notifications go, each a real protocol. Generic webhook
//! (signed JSON), Slack-compatible incoming webhook, PagerDuty Events API v2,
//! email over SMTP, and the log. URLs and secrets live here, in the
//! configuration, and never in a history: a recorded decision names sinks by
//! id only.
//!
//! Every request carries the notification id as its idempotency key
//! (`Idempotency-Key` header, PagerDuty `dedup_key`, email `Message-ID`), so a
//! receiver that honours it sees each notification once however often a
//! delivery is retried.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::ConfigError;
use crate::limits;

/// A sink as written in `owners.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSpec {
    pub id: String,
    /// webhook, slack, pagerduty, email, log.
    pub kind: String,
    #[serde(default)]
    pub url: Option<String>,
    /// The webhook's HMAC secret.
    #[serde(default)]
    pub secret: Option<String>,
    /// The PagerDuty integration's routing key.
    #[serde(default)]
    pub routing_key: Option<String>,
    /// SMTP server (plain SMTP; a relay on the host or the local network).
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// A validated sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    Webhook {
        url: String,
        secret: String,
    },
    Slack {
        url: String,
    },
    PagerDuty {
        url: String,
        routing_key: String,
    },
    Email {
        host: String,
        port: u16,
        from: String,
    },
    Log,
}

/// The validated sinks, by id.
#[derive(Debug, Clone, Default)]
pub struct SinkSet {
    pub sinks: BTreeMap<String, (Sink, Duration)>,
}

fn check_url(file: &str, entry: &str, url: Option<&String>) -> Result<String, ConfigError> {
    let url = url.ok_or_else(|| {
        ConfigError::invalid(
            file,
            entry.to_string(),
            "url",
            "this kind of sink needs a url".into(),
        )
    })?;
    let parsed = reqwest::Url::parse(url).map_err(|e| {
        ConfigError::invalid(
            file,
            entry.to_string(),
            "url",
            format!("{url:?} is not a URL: {e}"),
        )
    })?;
    if parsed.scheme() != "http" {
        return Err(ConfigError::invalid(
            file,
            entry.to_string(),
            "url",
            format!(
                "scheme {:?} is not supported by this build (plain http only: point it at a local relay, or build with TLS)",
                parsed.scheme()
            ),
        ));
    }
    Ok(url.clone())
}

impl SinkSet {
    pub fn build(file: &str, specs: Vec<SinkSpec>) -> Result<SinkSet, ConfigError> {
        if specs.len() > limits::MAX_SINKS {
            return Err(ConfigError::invalid(
                file,
                "sinks".into(),
                "sinks",
                format!(
                    "{} sinks exceed the limit of {}",
                    specs.len(),
                    limits::MAX_SINKS
                ),
            ));
        }
        let mut set = SinkSet::default();
        for (i, s) in specs.into_iter().enumerate() {
            let entry = format!("sinks[{i}] ({})", s.id);
            crate::owners::check_id(file, &entry, "id", &s.id)?;
            let need = |v: Option<String>, field: &str, what: &str| {
                v.filter(|x| !x.trim().is_empty()).ok_or_else(|| {
                    ConfigError::invalid(
                        file,
                        entry.clone(),
                        field,
                        format!("a {} sink needs {what}", s.kind),
                    )
                })
            };
            let sink = match s.kind.as_str() {
                "webhook" => {
                    let url = check_url(file, &entry, s.url.as_ref())?;
                    let secret = need(s.secret.clone(), "secret", "an HMAC secret")?;
                    if secret.len() < 16 {
                        return Err(ConfigError::invalid(
                            file,
                            entry,
                            "secret",
                            "the secret must be at least 16 bytes".into(),
                        ));
                    }
                    Sink::Webhook { url, secret }
                }
                "slack" => Sink::Slack {
                    url: check_url(file, &entry, s.url.as_ref())?,
                },
                "pagerduty" => Sink::PagerDuty {
                    url: check_url(file, &entry, s.url.as_ref())?,
                    routing_key: need(
                        s.routing_key.clone(),
                        "routing_key",
                        "the integration's routing_key",
                    )?,
                },
                "email" => {
                    let from = need(s.from.clone(), "from", "a from address")?;
                    if from.parse::<lettre::message::Mailbox>().is_err() {
                        return Err(ConfigError::invalid(
                            file,
                            entry,
                            "from",
                            format!("{from:?} is not an email address"),
                        ));
                    }
                    Sink::Email {
                        host: need(s.host.clone(), "host", "an SMTP host")?,
                        port: s.port.unwrap_or(25),
                        from,
                    }
                }
                "log" => Sink::Log,
                other => {
                    return Err(ConfigError::invalid(
                        file,
                        entry,
                        "kind",
                        format!(
                            "{other:?} is not a sink kind; use webhook, slack, pagerduty, email or log"
                        ),
                    ));
                }
            };
            let timeout = Duration::from_millis(s.timeout_ms.unwrap_or(10_000).clamp(100, 60_000));
            if set.sinks.insert(s.id.clone(), (sink, timeout)).is_some() {
                return Err(ConfigError::invalid(
                    file,
                    entry,
                    "id",
                    format!("the sink id {:?} is used twice", s.id),
                ));
            }
        }
        Ok(set)
    }

    pub fn ids(&self) -> Vec<&str> {
        self.sinks.keys().map(String::as_str).collect()
    }
}

/// A response option carried by a notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseOption {
    pub action: String,
    pub label: String,
    pub url: String,
}

/// What a notification says. Stored in the outbox as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Message {
    pub title: String,
    pub what_happened: String,
    pub task_id: String,
    #[serde(default)]
    pub step_seq: Option<i64>,
    pub agent: String,
    #[serde(default)]
    pub on_behalf_of: Option<String>,
    pub path: String,
    #[serde(default)]
    pub blast_radius: Option<String>,
    #[serde(default)]
    pub evidence: Vec<String>,
    #[serde(default)]
    pub rollback_plan: Option<String>,
    pub rule: String,
    pub why: String,
    #[serde(default)]
    pub review_due_at_ms: Option<i64>,
    #[serde(default)]
    pub responses: Vec<ResponseOption>,
    /// PagerDuty event action: trigger (default), acknowledge, resolve.
    #[serde(default)]
    pub event_action: Option<String>,
    /// Further items grouped into this notification (a burst becomes one).
    #[serde(default)]
    pub grouped: Vec<String>,
    /// Playbooks routing started as the first response, with their tasks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub playbooks: Vec<PlaybookLink>,
}

/// A playbook started about what a notification says: its task and where
/// to follow it, or why it could not start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaybookLink {
    pub playbook: String,
    #[serde(default)]
    pub task_id: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
}

impl PlaybookLink {
    /// One line: `health-check: task … (url)` or `health-check: not started: …`.
    pub fn line(&self) -> String {
        match (&self.task_id, &self.url, &self.error) {
            (Some(t), Some(u), _) => format!("{}: task {t} ({u})", self.playbook),
            (Some(t), None, _) => format!("{}: task {t}", self.playbook),
            (None, _, e) => format!(
                "{}: not started: {}",
                self.playbook,
                e.as_deref().unwrap_or("unknown")
            ),
        }
    }
}

/// One delivery to make.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub notification_id: String,
    pub sink: String,
    pub to: Option<String>,
    pub recipient: String,
    pub message: Message,
}

/// A delivery that did not go through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DeliveryError {
    pub retryable: bool,
    pub message: String,
}

fn fail(retryable: bool, message: String) -> DeliveryError {
    DeliveryError { retryable, message }
}

/// The generic webhook's JSON body.
pub fn webhook_body(d: &Delivery) -> Value {
    json!({"notification_id": d.notification_id, "recipient": d.recipient, "message": d.message})
}

/// A Slack incoming-webhook payload (Block Kit): what happened, the agent and
/// on whose behalf, blast radius, evidence, rollback plan, and one button per
/// response option carrying its one-click link.
pub fn slack_payload(d: &Delivery) -> Value {
    let m = &d.message;
    let mut fields = vec![
        json!({"type": "mrkdwn", "text": format!("*Agent*\n{}", m.agent)}),
        json!({"type": "mrkdwn", "text": format!("*On behalf of*\n{}", m.on_behalf_of.as_deref().unwrap_or("-"))}),
        json!({"type": "mrkdwn", "text": format!("*Path*\n{}", m.path)}),
        json!({"type": "mrkdwn", "text": format!("*Blast radius*\n{}", m.blast_radius.as_deref().unwrap_or("-"))}),
    ];
    fields.truncate(10);
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": truncate(&m.title, 150)}}),
        json!({"type": "section", "text": {"type": "mrkdwn", "text": truncate(&m.what_happened, 3000)}}),
        json!({"type": "section", "fields": fields}),
    ];
    if !m.grouped.is_empty() {
        let more: Vec<String> = m.grouped.iter().map(|g| format!("• {g}")).collect();
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": truncate(&format!("*And {} more in this group*\n{}", m.grouped.len(), more.join("\n")), 3000)}}));
    }
    if !m.playbooks.is_empty() {
        let lines: Vec<String> = m
            .playbooks
            .iter()
            .map(|p| format!("• {}", p.line()))
            .collect();
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": truncate(&format!("*Playbooks started*\n{}", lines.join("\n")), 3000)}}));
    }
    if !m.evidence.is_empty() {
        let ev: Vec<String> = m.evidence.iter().map(|e| format!("• {e}")).collect();
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": truncate(&format!("*Evidence*\n{}", ev.join("\n")), 3000)}}));
    }
    blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("*Rollback plan*\n{}", m.rollback_plan.as_deref().unwrap_or("none recorded"))}}));
    blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!("task {} · rule {} · {} · notification {}", m.task_id, m.rule, m.why, d.notification_id)}]}));
    if !m.responses.is_empty() {
        let buttons: Vec<Value> = m
            .responses
            .iter()
            .take(25)
            .map(|r| json!({"type": "button", "text": {"type": "plain_text", "text": r.label}, "action_id": r.action, "value": d.notification_id, "url": r.url}))
            .collect();
        blocks.push(json!({"type": "actions", "block_id": format!("mandate:{}", d.notification_id), "elements": buttons}));
    }
    let mut payload = json!({"text": truncate(&m.title, 3000), "blocks": blocks});
    if let Some(to) = &d.to {
        payload["channel"] = json!(to);
    }
    payload
}

/// A PagerDuty Events API v2 event; `dedup_key` is the notification id.
pub fn pagerduty_payload(routing_key: &str, d: &Delivery) -> Value {
    let m = &d.message;
    let action = m.event_action.as_deref().unwrap_or("trigger");
    let mut event =
        json!({"routing_key": routing_key, "event_action": action, "dedup_key": d.notification_id});
    if action == "trigger" {
        event["payload"] = json!({
            "summary": truncate(&m.title, 1024),
            "source": format!("mandate agent {}", m.agent),
            "severity": if m.path == "gated_execute" || m.path == "deny" { "error" } else { "warning" },
            "component": m.task_id,
            "custom_details": {"what_happened": m.what_happened, "grouped": m.grouped, "playbooks": m.playbooks, "on_behalf_of": m.on_behalf_of, "blast_radius": m.blast_radius,
                               "evidence": m.evidence, "rollback_plan": m.rollback_plan, "rule": m.rule, "why": m.why},
        });
        event["links"] = Value::Array(
            m.responses
                .iter()
                .map(|r| json!({"href": r.url, "text": r.label}))
                .collect(),
        );
    }
    event
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Sends deliveries. Holds one HTTP client (connection reuse).
#[derive(Clone)]
pub struct Sender {
    http: reqwest::Client,
}

impl Default for Sender {
    fn default() -> Self {
        Sender::new()
    }
}

impl Sender {
    pub fn new() -> Sender {
        Sender {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("HTTP client"),
        }
    }

    /// Makes one delivery attempt. `now_s` signs webhooks.
    pub async fn deliver(
        &self,
        sinks: &SinkSet,
        d: &Delivery,
        now_s: i64,
    ) -> Result<(), DeliveryError> {
        let Some((sink, timeout)) = sinks.sinks.get(&d.sink) else {
            return Err(fail(
                false,
                format!(
                    "sink {:?} is not configured (was it removed on reload?)",
                    d.sink
                ),
            ));
        };
        match sink {
            Sink::Webhook { url, secret } => {
                let body = serde_json::to_vec(&webhook_body(d)).expect("JSON");
                let sig = crate::sign::webhook_signature(secret.as_bytes(), now_s, &body);
                self.post(url, body, *timeout, d, Some(sig)).await
            }
            Sink::Slack { url } => {
                self.post(
                    url,
                    serde_json::to_vec(&slack_payload(d)).expect("JSON"),
                    *timeout,
                    d,
                    None,
                )
                .await
            }
            Sink::PagerDuty { url, routing_key } => {
                self.post(
                    url,
                    serde_json::to_vec(&pagerduty_payload(routing_key, d)).expect("JSON"),
                    *timeout,
                    d,
                    None,
                )
                .await
            }
            Sink::Email { host, port, from } => send_email(host, *port, from, d, *timeout).await,
            Sink::Log => {
                tracing::info!(notification = %d.notification_id, recipient = %d.recipient, title = %d.message.title, "notification");
                Ok(())
            }
        }
    }

    async fn post(
        &self,
        url: &str,
        body: Vec<u8>,
        timeout: Duration,
        d: &Delivery,
        signature: Option<String>,
    ) -> Result<(), DeliveryError> {
        let mut req = self
            .http
            .post(url)
            .timeout(timeout)
            .header("content-type", "application/json")
            .header("idempotency-key", &d.notification_id)
            .header("x-mandate-notification-id", &d.notification_id)
            .body(body);
        if let Some(sig) = signature {
            req = req.header("x-mandate-signature", sig);
        }
        match req.send().await {
            Ok(resp) if resp.status().is_success() => Ok(()),
            Ok(resp) => {
                let s = resp.status();
                // 408 and 429 and 5xx may pass later; other 4xx will not.
                let retryable = s.is_server_error() || s.as_u16() == 408 || s.as_u16() == 429;
                Err(fail(retryable, format!("sink {} answered {s}", d.sink)))
            }
            Err(e) => Err(fail(true, format!("sink {}: {e}", d.sink))),
        }
    }
}

async fn send_email(
    host: &str,
    port: u16,
    from: &str,
    d: &Delivery,
    timeout: Duration,
) -> Result<(), DeliveryError> {
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message as Mail, Tokio1Executor};
    let to = d.to.as_deref().ok_or_else(|| {
        fail(
            false,
            format!(
                "email sink {}: the contact route has no `to` address",
                d.sink
            ),
        )
    })?;
    let m = &d.message;
    let mut text = format!(
        "{}\n\nAgent: {}\nOn behalf of: {}\nPath: {}\nBlast radius: {}\nRollback plan: {}\nWhy you: {} (rule {})\n",
        m.what_happened,
        m.agent,
        m.on_behalf_of.as_deref().unwrap_or("-"),
        m.path,
        m.blast_radius.as_deref().unwrap_or("-"),
        m.rollback_plan.as_deref().unwrap_or("none recorded"),
        m.why,
        m.rule
    );
    if !m.grouped.is_empty() {
        text.push_str(&format!("\nAnd {} more in this group:\n", m.grouped.len()));
        for g in &m.grouped {
            text.push_str(&format!("- {g}\n"));
        }
    }
    for p in &m.playbooks {
        text.push_str(&format!("Playbook {}\n", p.line()));
    }
    for r in &m.responses {
        text.push_str(&format!("{}: {}\n", r.label, r.url));
    }
    let mail = Mail::builder()
        .from(
            from.parse()
                .map_err(|e| fail(false, format!("email sink {}: from: {e}", d.sink)))?,
        )
        .to(to
            .parse()
            .map_err(|e| fail(false, format!("email sink {}: to {to:?}: {e}", d.sink)))?)
        .subject(truncate(&m.title, 200))
        .message_id(Some(format!("<{}@mandate>", d.notification_id)))
        .body(text)
        .map_err(|e| fail(false, format!("email sink {}: {e}", d.sink)))?;
    let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
        .port(port)
        .timeout(Some(timeout))
        .build();
    transport
        .send(mail)
        .await
        .map(|_| ())
        .map_err(|e| fail(!e.is_permanent(), format!("email sink {}: {e}", d.sink)))
}
