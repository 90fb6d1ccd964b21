//! The CLI over HTTP (`--server URL --token T`): a small typed client of the
//! API in docs/http-api.md, so commands act through a running `mandate serve`
//! instead of opening the database.
//!
//! Errors follow the CLI's exit codes (`app::exit_code`): what the user can
//! fix is a refusal (exit 2) — HTTP 400, 401, 403, 404, 409, 413 and 415, an
//! unreachable server, a bad URL — printed with the server's `message` and
//! `code`; everything else (5xx, 429, a transport error mid-request) is a
//! failure (exit 1). Histories are re-verified here, on the client: the
//! client trusts the hash chain, not the server's word for it. This module
//! never touches a database.

use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use mandate_engine::core::chain::{self, RawEvent};
use mandate_engine::core::event;
use mandate_engine::store::TaskRow;
use mandate_engine::{Event, TaskStatus, runtime};
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, RequestBuilder, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::app::refused;

/// How long a request (not the event stream) may take; the server's own
/// request timeout is 30 s.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of one response body read into memory.
const MAX_RESPONSE_BYTES: usize = 64 << 20;
/// Most bytes of one Server-Sent Event (the server bounds payloads far below).
const MAX_SSE_EVENT_BYTES: usize = 8 << 20;
/// Consecutive reconnections of an event stream that delivered nothing
/// before `wait_until_final` gives up.
const MAX_IDLE_RECONNECTS: u32 = 20;

// The API's own response types: one definition for the server and this client.
use mandate_api::approvals::Inbox;
pub use mandate_api::error::ErrorBody;
pub use mandate_api::ops::Halt;
use mandate_api::ops::LiftResult as Lifted;
pub use mandate_api::tasks::Task;
use mandate_api::tasks::{Accepted, History, TaskPage};

/// What the local commands need from an API [`Task`].
pub trait TaskExt {
    /// The task's status, refusing one this binary does not know.
    fn status(&self) -> anyhow::Result<TaskStatus>;
    /// The row the local commands render. The API does not give the lease,
    /// the ready time or the idempotency key: they are `None` here, and the
    /// commands leave them out of what they print.
    fn into_row(self) -> anyhow::Result<TaskRow>;
}

impl TaskExt for Task {
    fn status(&self) -> anyhow::Result<TaskStatus> {
        TaskStatus::parse(&self.status).ok_or_else(|| {
            anyhow::anyhow!(
                "the server reported task {} in status {:?}, which this mandate binary does not know; upgrade it",
                self.id,
                self.status
            )
        })
    }

    fn into_row(self) -> anyhow::Result<TaskRow> {
        let status = TaskExt::status(&self)?;
        Ok(TaskRow {
            id: self.id,
            workflow: self.workflow,
            workflow_version: self.workflow_version,
            agent: self.agent,
            idempotency_key: None,
            status,
            last_seq: self.last_seq,
            last_hash: self.last_hash,
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
            ready_at_ms: None,
            lease_owner: None,
            lease_expires_at_ms: None,
            blocked_reason: self.blocked_reason,
        })
    }
}

#[derive(Debug, Clone)]
pub struct Remote {
    base: Url,
    token: String,
    client: reqwest::Client,
}

impl Remote {
    /// Checks the URL and the token (both refused before any request when
    /// unusable). A URL without a scheme gets `http://`.
    pub fn connect(server: &str, token: Option<&str>) -> anyhow::Result<Remote> {
        let base = parse_server_url(server)?;
        let token = match token.map(str::trim) {
            Some(t) if !t.is_empty() => t.to_string(),
            _ => {
                return Err(refused(format!(
                    "--server {} needs a token: pass --token T or set MANDATE_TOKEN \
                     (`mandate token create --role ROLE --name NAME` on the server's database prints one)",
                    base.as_str().trim_end_matches('/')
                )));
            }
        };
        if HeaderValue::from_str(&format!("Bearer {token}")).is_err() {
            return Err(refused(
                "the token holds characters a header cannot carry; paste it exactly as `mandate token create` printed it",
            ));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("mandate-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Remote {
            base,
            token,
            client,
        })
    }

    /// The server's URL, for messages.
    pub fn shown(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    /// `base` + the path segments (each percent-encoded) + the query.
    fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        {
            let mut path = url
                .path_segments_mut()
                .expect("http URLs always have a path");
            path.pop_if_empty();
            path.extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    fn request(&self, method: Method, url: Url) -> RequestBuilder {
        self.client.request(method, url).bearer_auth(&self.token)
    }

    /// Sends a request and returns the response when its status is a success.
    async fn send(&self, request: RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let response = request.send().await.map_err(|e| self.transport_error(e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = response.bytes().await.unwrap_or_default();
        Err(self.http_error(status, &body, retry_after.as_deref()))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&Value>,
        headers: HeaderMap,
    ) -> anyhow::Result<(StatusCode, T)> {
        let url = self.url(segments, query);
        let mut request = self
            .request(method.clone(), url.clone())
            .headers(headers)
            .timeout(REQUEST_TIMEOUT);
        if let Some(b) = body {
            request = request.json(b);
        }
        let response = self.send(request).await?;
        let status = response.status();
        let bytes = read_bounded(response)
            .await
            .map_err(|e| self.transport_error(e))?;
        let value = serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{method} {url} answered {status} with a body this mandate binary does not understand: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            )
        })?;
        Ok((status, value))
    }

    async fn get<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> anyhow::Result<T> {
        let (_, v) = self
            .call(Method::GET, segments, query, None, HeaderMap::new())
            .await?;
        Ok(v)
    }

    async fn post<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        body: &Value,
    ) -> anyhow::Result<T> {
        let (_, v) = self
            .call(Method::POST, segments, &[], Some(body), HeaderMap::new())
            .await?;
        Ok(v)
    }

    /// Any `GET` whose answer is JSON.
    pub async fn get_json(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> anyhow::Result<Value> {
        self.get(segments, query).await
    }

    /// Any `POST` whose answer is JSON.
    pub async fn post_json(&self, segments: &[&str], body: &Value) -> anyhow::Result<Value> {
        self.post(segments, body).await
    }

    /// Any `DELETE` whose answer is JSON.
    pub async fn delete_json(&self, segments: &[&str]) -> anyhow::Result<Value> {
        let (_, v) = self
            .call(Method::DELETE, segments, &[], None, HeaderMap::new())
            .await?;
        Ok(v)
    }

    /// `POST /v1/tasks`: a workflow and its input, or (`workflow` None) a
    /// plan. The task's `existing` is true when the key named an earlier task.
    pub async fn submit(
        &self,
        workflow: Option<&str>,
        input: Value,
        agent: Option<&str>,
        on_behalf_of: Option<&str>,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<Task> {
        let mut body = serde_json::Map::new();
        match workflow {
            Some(w) => {
                body.insert("workflow".into(), w.into());
                body.insert("input".into(), input);
                if let Some(a) = agent {
                    body.insert("agent".into(), a.into());
                }
                if let Some(u) = on_behalf_of {
                    body.insert("on_behalf_of".into(), u.into());
                }
            }
            None => {
                body.insert("plan".into(), input);
            }
        }
        let mut headers = HeaderMap::new();
        if let Some(k) = idempotency_key {
            headers.insert(
                "idempotency-key",
                HeaderValue::from_str(k)
                    .map_err(|_| refused("--idempotency-key must be visible ASCII"))?,
            );
        }
        let (_, task) = self
            .call(
                Method::POST,
                &["v1", "tasks"],
                &[],
                Some(&Value::Object(body)),
                headers,
            )
            .await?;
        Ok(task)
    }

    pub async fn task(&self, id: &str) -> anyhow::Result<Task> {
        self.get(&["v1", "tasks", id], &[]).await
    }

    /// Up to `limit` tasks, newest first, following the API's cursor.
    pub async fn list_tasks(
        &self,
        status: Option<&str>,
        workflow: Option<&str>,
        agent: Option<&str>,
        limit: usize,
    ) -> anyhow::Result<Vec<Task>> {
        /// The API's largest page.
        const PAGE: usize = 500;
        let mut tasks = Vec::new();
        let mut cursor: Option<String> = None;
        while tasks.len() < limit {
            let page_size = (limit - tasks.len()).min(PAGE).to_string();
            let mut query = vec![("limit", page_size.as_str())];
            for (k, v) in [("status", status), ("workflow", workflow), ("agent", agent)] {
                if let Some(v) = v {
                    query.push((k, v));
                }
            }
            if let Some(c) = &cursor {
                query.push(("cursor", c));
            }
            let page: TaskPage = self.get(&["v1", "tasks"], &query).await?;
            tasks.extend(page.tasks);
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        tasks.truncate(limit);
        Ok(tasks)
    }

    /// The task's history, page after page, its hash chain verified here
    /// as well across the pages: a broken chain is the same error as when
    /// the database is read directly.
    pub async fn history(&self, id: &str) -> anyhow::Result<Vec<Event>> {
        let mut verifier = chain::Verifier::new(id);
        let mut events = Vec::new();
        let mut after_seq = 0;
        loop {
            let after = after_seq.to_string();
            let page: History = self
                .get(&["v1", "tasks", id, "history"], &[("after_seq", &after)])
                .await?;
            let next = page.next_after_seq;
            if page.events.is_empty() && after_seq == 0 {
                return Err(runtime::Error::TaskNotFound {
                    task_id: id.to_string(),
                }
                .into());
            }
            events.extend(verified_events(&mut verifier, page)?);
            match next {
                // A server that does not move forward would loop forever.
                Some(n) if n > after_seq => after_seq = n,
                Some(n) => anyhow::bail!(
                    "the server's history of task {id} did not advance past seq {n}; refusing to loop"
                ),
                None => return Ok(events),
            }
        }
    }

    pub async fn signal(&self, id: &str, name: &str, payload: Value) -> anyhow::Result<i64> {
        let a: Accepted = self
            .post(
                &["v1", "tasks", id, "signals", name],
                &serde_json::json!({ "payload": payload }),
            )
            .await?;
        Ok(a.seq)
    }

    /// `cancel`, `pause`, `resume` or `retry` with its body.
    pub async fn control(&self, id: &str, action: &str, body: Value) -> anyhow::Result<i64> {
        let a: Accepted = self.post(&["v1", "tasks", id, action], &body).await?;
        Ok(a.seq)
    }

    /// The caller's approval inbox (an approver's own; everyone's for
    /// operators and auditors).
    pub async fn approvals(&self) -> anyhow::Result<Vec<Value>> {
        let inbox: Inbox = self.get(&["v1", "approvals"], &[]).await?;
        let approvals = inbox
            .approvals
            .into_iter()
            .map(serde_json::to_value)
            .collect::<Result<Vec<_>, _>>()?;
        if inbox.truncated {
            eprintln!(
                "the server read only the newest {} tasks waiting for decisions; there are more",
                mandate_api::approvals::INBOX_SCAN_LIMIT
            );
        }
        Ok(approvals)
    }

    /// Decides approval `<task_id>:<step or request seq>` as the token's identity.
    pub async fn decide(
        &self,
        task_id: &str,
        step: &str,
        decision: &str,
        comment: Option<&str>,
        edit: Option<Value>,
    ) -> anyhow::Result<i64> {
        let mut body = serde_json::json!({ "decision": decision, "comment": comment });
        if let Some(e) = edit {
            body["decision"] = "edit".into();
            body["edit"] = e;
        }
        let id = format!("{task_id}:{step}");
        let a: Accepted = self.post(&["v1", "approvals", &id], &body).await?;
        Ok(a.seq)
    }

    pub async fn halt(&self, agent: Option<&str>, reason: Option<&str>) -> anyhow::Result<Halt> {
        self.post(
            &["v1", "halt"],
            &serde_json::json!({ "agent": agent, "reason": reason }),
        )
        .await
    }

    pub async fn lift_halt(&self, agent: Option<&str>) -> anyhow::Result<Lifted> {
        let query: Vec<(&str, &str)> = agent.map(|a| ("agent", a)).into_iter().collect();
        let (_, lifted) = self
            .call(
                Method::DELETE,
                &["v1", "halt"],
                &query,
                None,
                HeaderMap::new(),
            )
            .await?;
        Ok(lifted)
    }

    /// The server's dry run of a plan (its policies, not this machine's).
    pub async fn dry_run(&self, plan: &Value) -> anyhow::Result<Value> {
        self.post(&["v1", "plans", "dry-run"], plan).await
    }

    /// Waits until the task is final, following the event stream (resumed
    /// with `Last-Event-ID` when it drops); `Ok(Err(task))` when `timeout`
    /// passed first, with the task as last read.
    pub async fn wait_until_final(
        &self,
        id: &str,
        timeout: Duration,
    ) -> anyhow::Result<Result<Task, Task>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last_event_id: Option<String> = None;
        let mut idle_reconnects = 0;
        loop {
            // The stream opens before the task is read, so nothing that
            // happens in between is missed.
            let mut stream = self.events(id, last_event_id.as_deref()).await?;
            let mut task = self.task(id).await?;
            if task.status()?.is_final() {
                return Ok(Ok(task));
            }
            let mut delivered = false;
            loop {
                let next = tokio::time::timeout_at(deadline, stream.next_event()).await;
                let Ok(next) = next else {
                    return Ok(Err(task));
                };
                let Some(message) = next? else { break };
                delivered = true;
                if message.id.is_some() {
                    last_event_id = message.id;
                }
                // Only a task-level event (TaskCompleted, TaskFailed,
                // TaskCancelled, TaskPaused, …) can change whether it is final.
                if message.event.starts_with("Task") {
                    task = self.task(id).await?;
                    if task.status()?.is_final() {
                        return Ok(Ok(task));
                    }
                }
            }
            idle_reconnects = if delivered { 0 } else { idle_reconnects + 1 };
            if idle_reconnects > MAX_IDLE_RECONNECTS {
                anyhow::bail!(
                    "the event stream of {} keeps closing without sending anything; follow task {id} with `mandate status {id}`",
                    self.shown()
                );
            }
        }
    }

    /// `GET /v1/events?task=ID`, from the present or after `last_event_id`.
    async fn events(&self, task: &str, last_event_id: Option<&str>) -> anyhow::Result<SseStream> {
        let mut request = self
            .request(Method::GET, self.url(&["v1", "events"], &[("task", task)]))
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = self.send(request).await?;
        Ok(SseStream {
            body: Box::pin(
                response
                    .bytes_stream()
                    .map(|chunk| chunk.map(|b| b.to_vec())),
            ),
            buffer: Vec::new(),
        })
    }

    fn transport_error(&self, e: reqwest::Error) -> anyhow::Error {
        let root = root_cause(&e);
        if e.is_connect() {
            refused(format!(
                "cannot reach the Mandate server at {}: {root}. Is `mandate serve --listen ADDR` running there? \
                 Check --server / MANDATE_SERVER",
                self.shown()
            ))
        } else if e.is_timeout() {
            anyhow::anyhow!(
                "the Mandate server at {} did not answer within {} s ({root}); the request may or may not have taken effect",
                self.shown(),
                REQUEST_TIMEOUT.as_secs()
            )
        } else {
            anyhow::anyhow!(
                "the request to {} failed: {root}; it may or may not have taken effect",
                self.shown()
            )
        }
    }

    /// The error an HTTP error response stands for (see the module doc).
    fn http_error(
        &self,
        status: StatusCode,
        body: &[u8],
        retry_after: Option<&str>,
    ) -> anyhow::Error {
        let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
        let (code, message, request_id) = match parsed {
            Some(b) => (b.code, b.message, b.request_id),
            None => (
                String::new(),
                String::from_utf8_lossy(&body[..body.len().min(500)])
                    .trim()
                    .to_string(),
                None,
            ),
        };
        let what = if code.is_empty() {
            format!("HTTP {}", status.as_u16())
        } else {
            format!("HTTP {}, {code}", status.as_u16())
        };
        match status {
            StatusCode::UNAUTHORIZED => refused(format!(
                "the server at {} does not accept this token ({message}; {what}). Pass a valid token with --token \
                 or MANDATE_TOKEN; `mandate token create --role ROLE --name NAME` on the server's database makes one",
                self.shown()
            )),
            StatusCode::TOO_MANY_REQUESTS => anyhow::anyhow!(
                "{message} ({what}); retry after {} s",
                retry_after.unwrap_or("1")
            ),
            _ if code == "history_corrupt" => refused(format!(
                "{message} ({what}). `mandate history ID --json --unverified` on the server's database exports the stored rows"
            )),
            s if s.is_client_error() => refused(format!("{message} ({what})")),
            _ => anyhow::anyhow!(
                "the server at {} failed: {message} ({what}{}); its log has the details",
                self.shown(),
                request_id
                    .map(|r| format!(", request id {r}"))
                    .unwrap_or_default()
            ),
        }
    }
}

/// `http://host:port[/prefix]`; a URL without a scheme gets `http://`.
fn parse_server_url(server: &str) -> anyhow::Result<Url> {
    let text = server.trim();
    let with_scheme = if text.contains("://") {
        text.to_string()
    } else {
        format!("http://{text}")
    };
    let url = Url::parse(&with_scheme).map_err(|e| {
        refused(format!(
            "--server {server:?} is not a URL ({e}); pass e.g. --server http://127.0.0.1:7700"
        ))
    })?;
    match url.scheme() {
        "http" => {}
        "https" => {
            return Err(refused(format!(
                "--server {server}: this mandate binary speaks plain HTTP only (no TLS stack); \
                 use http:// on a trusted network, or a TLS-terminating proxy on this machine"
            )));
        }
        other => {
            return Err(refused(format!(
                "--server {server}: scheme {other:?} is not http; pass e.g. --server http://127.0.0.1:7700"
            )));
        }
    }
    if url.host_str().is_none_or(str::is_empty) || url.query().is_some() || url.fragment().is_some()
    {
        return Err(refused(format!(
            "--server {server}: give the server's address only, e.g. --server http://127.0.0.1:7700"
        )));
    }
    Ok(url)
}

/// The innermost cause's text ("Connection refused (os error 111)").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

async fn read_bounded(response: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = response.bytes_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.next().await {
        bytes.extend_from_slice(&chunk?);
        if bytes.len() > MAX_RESPONSE_BYTES {
            // A response this large is not one this API sends; stop reading.
            break;
        }
    }
    Ok(bytes)
}

/// Rebuilds the events of a history the API returned, verifying the chain.
/// A page's events, checked by `verifier` (fed every page in order).
fn verified_events(verifier: &mut chain::Verifier, history: History) -> anyhow::Result<Vec<Event>> {
    let task_id = history.task_id;
    let raw: Vec<RawEvent> = history
        .events
        .into_iter()
        .map(|e| RawEvent {
            task_id: task_id.clone(),
            seq: e.seq,
            event_type: e.event_type,
            recorded_at_ms: e.recorded_at_ms,
            actor: e.actor,
            payload: e.payload,
            prev_hash: e.prev_hash,
            hash: e.hash,
        })
        .collect();
    for r in &raw {
        verifier.push(r).map_err(|source| runtime::Error::Corrupt {
            task_id: task_id.clone(),
            source,
        })?;
    }
    raw.iter()
        .map(|r| {
            event::parse(r).map_err(|message| {
                runtime::Error::Unparseable {
                    task_id: task_id.clone(),
                    message,
                }
                .into()
            })
        })
        .collect()
}

/// One Server-Sent Event.
#[derive(Debug, Default, PartialEq, Eq)]
struct SseMessage {
    id: Option<String>,
    event: String,
    data: String,
}

type ByteStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<Vec<u8>, reqwest::Error>> + Send>>;

/// A `text/event-stream` body, one event at a time.
struct SseStream {
    body: ByteStream,
    buffer: Vec<u8>,
}

impl SseStream {
    /// The next event; `None` when the server closed the stream.
    async fn next_event(&mut self) -> anyhow::Result<Option<SseMessage>> {
        let mut message = SseMessage::default();
        let mut has_fields = false;
        loop {
            while let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                let line = line.trim_end_matches(['\n', '\r']);
                if line.is_empty() {
                    if has_fields {
                        return Ok(Some(message));
                    }
                    continue;
                }
                if line.starts_with(':') {
                    continue; // a comment: the server's keep-alive
                }
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                has_fields = true;
                match field {
                    "id" => message.id = Some(value.to_string()),
                    "event" => message.event = value.to_string(),
                    "data" => {
                        if !message.data.is_empty() {
                            message.data.push('\n');
                        }
                        message.data.push_str(value);
                    }
                    _ => {}
                }
            }
            if self.buffer.len() > MAX_SSE_EVENT_BYTES {
                anyhow::bail!(
                    "the event stream sent a line longer than {MAX_SSE_EVENT_BYTES} bytes"
                );
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buffer.extend_from_slice(&chunk),
                // A dropped connection ends this stream; the caller resumes
                // with Last-Event-ID.
                Some(Err(_)) | None => return Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::{EXIT_FAILURE, EXIT_REFUSED, exit_code};

    fn remote() -> Remote {
        Remote::connect("127.0.0.1:7700", Some("mdt_x")).unwrap()
    }

    #[test]
    fn server_urls() {
        assert_eq!(
            parse_server_url("127.0.0.1:7700").unwrap().as_str(),
            "http://127.0.0.1:7700/"
        );
        assert_eq!(
            parse_server_url("http://h:1/mandate/").unwrap().as_str(),
            "http://h:1/mandate/"
        );
        for bad in ["https://h", "ftp://h", "http://h/?x=1", "http://"] {
            let e = parse_server_url(bad).unwrap_err();
            assert_eq!(exit_code(&e), EXIT_REFUSED, "{bad}: {e}");
        }
        let e = Remote::connect("http://h", None).unwrap_err();
        assert!(e.to_string().contains("MANDATE_TOKEN"), "{e}");
    }

    #[test]
    fn paths_are_encoded_and_prefixes_kept() {
        let r = Remote::connect("http://h:1/base/", Some("t")).unwrap();
        assert_eq!(
            r.url(
                &["v1", "tasks", "a/b c", "signals", "x?"],
                &[("task", "t&1")]
            )
            .as_str(),
            "http://h:1/base/v1/tasks/a%2Fb%20c/signals/x%3F?task=t%261"
        );
        assert_eq!(
            remote().url(&["v1", "approvals", "t:step"], &[]).as_str(),
            "http://127.0.0.1:7700/v1/approvals/t:step"
        );
    }

    #[test]
    fn http_errors_get_the_cli_exit_codes() {
        let r = remote();
        let body = |code: &str| {
            format!(
                r#"{{"code":"{code}","message":"it went wrong","details":{{}},"request_id":"rq-1"}}"#
            )
        };
        for (status, code) in [
            (400, "invalid_field"),
            (403, "forbidden"),
            (404, "not_found"),
            (409, "conflict"),
            (413, "payload_too_large"),
        ] {
            let e = r.http_error(
                StatusCode::from_u16(status).unwrap(),
                body(code).as_bytes(),
                None,
            );
            assert_eq!(exit_code(&e), EXIT_REFUSED, "{status}");
            let text = e.to_string();
            assert!(
                text.contains("it went wrong") && text.contains(code),
                "{text}"
            );
        }
        let e = r.http_error(
            StatusCode::UNAUTHORIZED,
            body("unauthenticated").as_bytes(),
            None,
        );
        assert_eq!(exit_code(&e), EXIT_REFUSED);
        assert!(e.to_string().contains("--token"), "{e}");
        let e = r.http_error(
            StatusCode::TOO_MANY_REQUESTS,
            body("rate_limited").as_bytes(),
            Some("3"),
        );
        assert_eq!(exit_code(&e), EXIT_FAILURE);
        assert!(e.to_string().contains("retry after 3 s"), "{e}");
        let e = r.http_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            body("internal").as_bytes(),
            None,
        );
        assert_eq!(exit_code(&e), EXIT_FAILURE);
        assert!(e.to_string().contains("rq-1"), "{e}");
        let e = r.http_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            body("history_corrupt").as_bytes(),
            None,
        );
        assert_eq!(exit_code(&e), EXIT_REFUSED);
        let e = r.http_error(StatusCode::BAD_GATEWAY, b"proxy says no", None);
        assert_eq!(exit_code(&e), EXIT_FAILURE);
        assert!(e.to_string().contains("proxy says no"), "{e}");
    }

    #[tokio::test]
    async fn server_sent_events_parse_across_chunks() {
        let chunks: Vec<Result<Vec<u8>, reqwest::Error>> = [
            ": keep-alive\n\nid: 7\nevent: TaskStarted\nda",
            "ta: {\"a\":1}\r\n\r\nid: 8\nevent: TaskCompleted\ndata: x\ndata: y\n\n",
        ]
        .into_iter()
        .map(|s| Ok(s.as_bytes().to_vec()))
        .collect();
        let mut stream = SseStream {
            body: Box::pin(futures::stream::iter(chunks)),
            buffer: Vec::new(),
        };
        let first = stream.next_event().await.unwrap().unwrap();
        assert_eq!(
            first,
            SseMessage {
                id: Some("7".into()),
                event: "TaskStarted".into(),
                data: "{\"a\":1}".into()
            }
        );
        let second = stream.next_event().await.unwrap().unwrap();
        assert_eq!(second.data, "x\ny");
        assert_eq!(second.id.as_deref(), Some("8"));
        assert_eq!(stream.next_event().await.unwrap(), None);
    }
}
