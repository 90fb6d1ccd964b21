//! One MCP session: the rmcp `ServerHandler` that turns calls into steps of
//! the session's task.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use mandate_engine::SubmitOptions;
use mandate_engine::core::gateway::Principal;
use mandate_workflows::mcp::{CALL_SIGNAL, SessionInput, WORKFLOW, step_name};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    InitializeRequestParams, InitializeResult, ListToolsResult, PaginatedRequestParams,
    ProgressNotificationParam, ProtocolVersion, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::outcome::{Outcome, calls, outcome};
use crate::{Caller, Gateway, tools};

/// The `_meta` key of `initialize` that names the user the agent acts for.
pub const ON_BEHALF_OF_META: &str = "mandate/on_behalf_of";

/// Finds the agent of an HTTP request from its parts (the API's
/// authentication puts the token's identity there): `Err` says why not.
pub type CallerOf = Arc<dyn Fn(&http::request::Parts) -> Result<String, String> + Send + Sync>;

pub(crate) enum CallerSource {
    /// Known up front (stdio: the token in `MANDATE_TOKEN`).
    Fixed(Caller),
    /// From each HTTP request; the first one binds the session's agent.
    PerRequest(CallerOf),
}

struct Session {
    caller: Option<Caller>,
    /// The session task, started on the first call.
    task: Option<String>,
    /// The task a rollback ended (the next session continues it).
    previous: Option<String>,
}

/// The handler of one MCP session.
pub struct SessionHandler {
    gw: Gateway,
    source: CallerSource,
    transport: &'static str,
    session: Mutex<Session>,
}

fn tool_error(message: impl Into<String>) -> CallToolResponse {
    CallToolResult::error(vec![ContentBlock::text(message.into())]).into()
}

fn tool_ok(value: Value) -> CallToolResponse {
    let mut r = CallToolResult::success(vec![ContentBlock::text(value.to_string())]);
    if value.is_object() {
        r.structured_content = Some(value);
    }
    r.into()
}

impl SessionHandler {
    pub(crate) fn new(gw: Gateway, source: CallerSource, transport: &'static str) -> Self {
        let caller = match &source {
            CallerSource::Fixed(c) => Some(c.clone()),
            CallerSource::PerRequest(_) => None,
        };
        Self {
            gw,
            source,
            transport,
            session: Mutex::new(Session {
                caller,
                task: None,
                previous: None,
            }),
        }
    }

    /// The session's caller, checked against this request's identity.
    async fn caller(&self, ctx: &RequestContext<RoleServer>) -> Result<Caller, McpError> {
        let mut s = self.session.lock().await;
        let agent = match &self.source {
            CallerSource::Fixed(c) => c.agent.clone(),
            CallerSource::PerRequest(of) => {
                let parts = ctx
                    .extensions
                    .get::<http::request::Parts>()
                    .ok_or_else(|| McpError::internal_error("no HTTP request parts", None))?;
                of(parts).map_err(|m| McpError::invalid_request(m, None))?
            }
        };
        match &s.caller {
            Some(c) if c.agent == agent => Ok(c.clone()),
            Some(c) => Err(McpError::invalid_request(
                format!(
                    "this MCP session belongs to agent {}; open a new session with {agent}'s token",
                    c.agent
                ),
                None,
            )),
            None => {
                let c = Caller {
                    agent,
                    on_behalf_of: None,
                };
                s.caller = Some(c.clone());
                Ok(c)
            }
        }
    }

    /// The session task, started (or restarted after its end) when needed.
    async fn task(&self, caller: &Caller, fresh: bool) -> Result<String, String> {
        let mut s = self.session.lock().await;
        if let Some(t) = &s.task
            && !fresh
        {
            return Ok(t.clone());
        }
        let input = SessionInput {
            idle_timeout_ms: Some(self.gw.config.idle_timeout.as_millis() as u64),
            transport: Some(self.transport.to_string()),
            continues: s.task.clone().or_else(|| s.previous.clone()),
        };
        let submitted = self
            .gw
            .engine
            .submit(
                WORKFLOW,
                serde_json::to_value(input).expect("session input is JSON"),
                SubmitOptions {
                    agent: Some(caller.agent.clone()),
                    on_behalf_of: caller.on_behalf_of.clone(),
                    idempotency_key: None,
                    actor: Some(format!("agent:{}", caller.agent)),
                },
            )
            .await
            .map_err(|e| format!("cannot open the session's task: {e}"))?;
        s.task = Some(submitted.task_id.clone());
        Ok(submitted.task_id)
    }

    /// Appends the call to the session task (a new task if this one ended).
    async fn append(&self, caller: &Caller, call: &Value) -> Result<String, String> {
        let sender = format!("agent:{}", caller.agent);
        let task = self.task(caller, false).await?;
        match self
            .gw
            .engine
            .signal(&task, CALL_SIGNAL, call.clone(), &sender)
            .await
        {
            Ok(_) => Ok(task),
            Err(mandate_engine::runtime::Error::TaskFinal { .. }) => {
                // The session ended (idle timeout): the call opens the next one.
                let task = self.task(caller, true).await?;
                self.gw
                    .engine
                    .signal(&task, CALL_SIGNAL, call.clone(), &sender)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(task)
            }
            Err(e) => Err(e.to_string()),
        }
    }

    async fn call_catalog_tool(
        &self,
        caller: &Caller,
        request: CallToolRequestParams,
        ctx: &RequestContext<RoleServer>,
    ) -> CallToolResponse {
        let tool = request.name.to_string();
        let call_id = uuid::Uuid::now_v7().simple().to_string();
        let call = json!({
            "op": "call",
            "call_id": call_id,
            "tool": tool,
            "arguments": request.arguments.map(Value::Object).unwrap_or_else(|| json!({})),
        });
        let task = match self.append(caller, &call).await {
            Ok(t) => t,
            Err(e) => return tool_error(format!("{tool}: the call was refused: {e}")),
        };
        let name = step_name(&tool, &call_id);
        let progress = ctx.meta.get_progress_token();
        let mut updates = self.gw.engine.subscribe();
        let deadline = tokio::time::Instant::now() + self.gw.config.call_timeout;
        let mut last_progress: Option<tokio::time::Instant> = None;
        let mut ticks = 0u32;
        loop {
            let history = match self.gw.engine.history(&task).await {
                Ok(h) => h,
                Err(e) => return tool_error(format!("{tool}: cannot read the session: {e}")),
            };
            // The approval request the call waits for, if it does.
            let awaiting = match outcome(&history, &name, &call_id) {
                Outcome::Completed(output) => return tool_ok(output),
                Outcome::Failed(e) => {
                    return tool_error(format!("{tool} failed (step {name} of task {task}): {e}"));
                }
                Outcome::Denied {
                    rule,
                    reason,
                    gate,
                    by,
                } => {
                    let people = match (gate, by.is_empty()) {
                        (Some(g), false) => {
                            format!(" (gated by {g}; decided by {})", by.join(", "))
                        }
                        (Some(g), true) => format!(" (gated by {g}; nobody decided)"),
                        (None, _) => String::new(),
                    };
                    return tool_error(format!(
                        "{tool} was not run: denied by rule {rule}: {reason}{people}"
                    ));
                }
                Outcome::SessionEnded(how) => {
                    return tool_error(format!(
                        "{tool}: the session task {task} ended ({how}) before the call was decided; call again"
                    ));
                }
                Outcome::AwaitingApproval {
                    rule,
                    approvers,
                    quorum,
                    request_seq,
                } => {
                    let due =
                        last_progress.is_none_or(|t| t.elapsed() >= self.gw.config.progress_every);
                    if let (Some(token), true) = (&progress, due) {
                        ticks += 1;
                        last_progress = Some(tokio::time::Instant::now());
                        let _ = ctx
                            .peer
                            .notify_progress(
                                ProgressNotificationParam::new(token.clone(), ticks as f64)
                                    .with_message(format!(
                                        "{tool} awaits approval {task}:{request_seq} by {quorum} of {} (rule {rule})",
                                        approvers.join(", ")
                                    )),
                            )
                            .await;
                    }
                    Some(request_seq)
                }
                Outcome::Running => None,
            };
            let wait = async {
                loop {
                    match updates.recv().await {
                        Ok(u) if u.task_id == task => return,
                        Ok(_) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                            std::future::pending::<()>().await
                        }
                    }
                }
            };
            tokio::select! {
                _ = wait => {}
                // Other processes' appends (a shared database) are seen by polling.
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = ctx.ct.cancelled() => {
                    // Nobody needs to decide a request the client gave up on.
                    let withdrawn = match awaiting {
                        Some(seq) => match self
                            .gw
                            .engine
                            .withdraw_approval(
                                &task,
                                seq,
                                &caller.agent,
                                Some("the MCP client cancelled the call".into()),
                            )
                            .await
                        {
                            Ok(_) => format!("; its approval request {task}:{seq} was withdrawn"),
                            Err(e) => format!("; its approval request {task}:{seq} stays: {e}"),
                        },
                        None => String::new(),
                    };
                    return tool_error(format!("{tool}: cancelled by the client; step {name} of task {task} stays recorded{withdrawn}"));
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return tool_error(format!(
                        "{tool}: still undecided after {} s; `mandate_status` shows step {name} of task {task}",
                        self.gw.config.call_timeout.as_secs()
                    ));
                }
            }
        }
    }

    /// This session's calls, or those of `asked`: another session task of
    /// the same agent (a client reconnecting after its server restarted
    /// learns there how the calls it was waiting for ended).
    async fn status(&self, caller: &Caller, asked: Option<&str>) -> CallToolResponse {
        let task = match asked {
            Some(id) => {
                let mine = self.gw.engine.task(id).await.ok().filter(|r| {
                    r.workflow == WORKFLOW && r.agent.as_deref() == Some(caller.agent.as_str())
                });
                if mine.is_none() {
                    return tool_error(format!(
                        "argument task: {id} is not an MCP session task of agent {}",
                        caller.agent
                    ));
                }
                Some(id.to_string())
            }
            None => self.session.lock().await.task.clone(),
        };
        let Some(task) = task else {
            return tool_ok(json!({"task": null, "calls": []}));
        };
        match self.gw.engine.history(&task).await {
            Ok(h) => {
                let status = self
                    .gw
                    .engine
                    .task(&task)
                    .await
                    .map(|r| r.status.to_string())
                    .unwrap_or_default();
                tool_ok(json!({"task": task, "status": status, "calls": calls(&h)}))
            }
            Err(e) => tool_error(format!("cannot read the session task {task}: {e}")),
        }
    }

    async fn rollback(&self, caller: &Caller, reason: Option<String>) -> CallToolResponse {
        let task = {
            let mut s = self.session.lock().await;
            let t = s.task.take();
            if t.is_some() {
                s.previous = t.clone();
            }
            t
        };
        let Some(task) = task else {
            return tool_ok(
                json!({"undone": [], "message": "nothing to undo: this session made no call"}),
            );
        };
        let by = format!("agent:{}", caller.agent);
        if let Err(e) = self
            .gw
            .engine
            .cancel(
                &task,
                true,
                &by,
                Some(reason.unwrap_or_else(|| "mandate_rollback".into())),
            )
            .await
        {
            return tool_error(format!("cannot roll back task {task}: {e}"));
        }
        let row = match self
            .gw
            .engine
            .wait_until_final(&task, self.gw.config.call_timeout)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                return tool_error(format!("the rollback of task {task} did not finish: {e}"));
            }
        };
        let history = self.gw.engine.history(&task).await.unwrap_or_default();
        let undone: Vec<Value> = calls(&history)
            .into_iter()
            .filter(|c| c["state"] == "undone" || c["state"] == "undo_failed")
            .collect();
        let mut order: Vec<(i64, String)> = Vec::new();
        for e in &history {
            if let mandate_engine::EventPayload::CompensationStarted { tool, .. } = &e.payload {
                order.push((e.seq, tool.clone()));
            }
        }
        tool_ok(json!({
            "task": task,
            "status": row.status.to_string(),
            "undone": undone,
            "compensations_in_order": order.into_iter().map(|(_, t)| t).collect::<Vec<_>>(),
        }))
    }

    async fn submit_plan(&self, caller: &Caller, args: Value) -> CallToolResponse {
        let mut plan = args.get("plan").cloned().unwrap_or(Value::Null);
        let Some(obj) = plan.as_object_mut() else {
            return tool_error("argument plan: must be a plan object (see docs/plans.md)");
        };
        obj.insert("agent".into(), caller.agent.clone().into());
        if let Some(u) = &caller.on_behalf_of {
            obj.entry("on_behalf_of").or_insert(u.clone().into());
        }
        let dry = match mandate_workflows::plan::dry_run(
            &plan,
            &self.gw.governance,
            self.gw.engine.now_ms(),
        ) {
            Ok(d) => d,
            Err(e) => return tool_error(format!("the plan was refused: {e}")),
        };
        if args.get("submit").and_then(Value::as_bool) != Some(true) {
            return tool_ok(json!({"dry_run": dry, "submitted": false}));
        }
        let denied = dry["steps"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["decision"] == "deny"));
        if denied {
            return tool_error(format!(
                "the plan was not submitted: its dry run denies a step: {dry}"
            ));
        }
        let on_behalf_of = plan["on_behalf_of"].as_str().map(str::to_string);
        match self
            .gw
            .engine
            .submit(
                "plan",
                plan,
                SubmitOptions {
                    agent: Some(caller.agent.clone()),
                    on_behalf_of,
                    idempotency_key: None,
                    actor: Some(format!("agent:{}", caller.agent)),
                },
            )
            .await
        {
            Ok(s) => tool_ok(json!({"dry_run": dry, "submitted": true, "task": s.task_id})),
            Err(e) => tool_error(format!("the plan was refused: {e}")),
        }
    }
}

impl ServerHandler for SessionHandler {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("mandate", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Every tool call goes through Mandate: policy-checked, recorded in a hash-chained history, and undoable with mandate_rollback. A gated call waits for a person's approval.",
            )
    }

    /// Sessions: the versions with an `initialize` handshake (one MCP
    /// session is one Mandate task).
    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        Cow::Borrowed(ProtocolVersion::known_up_to(
            &ProtocolVersion::LATEST_WITH_INITIALIZE,
        ))
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, McpError> {
        let mut caller = self.caller(&ctx).await?;
        if let Some(u) = request
            .meta
            .as_ref()
            .and_then(|m| m.0.0.get(ON_BEHALF_OF_META))
            .and_then(Value::as_str)
        {
            caller.on_behalf_of = Some(u.to_string());
        }
        self.gw
            .engine
            .gateway()
            .admit(&Principal {
                agent: Some(caller.agent.clone()),
                on_behalf_of: caller.on_behalf_of.clone(),
            })
            .map_err(|m| McpError::invalid_params(m, None))?;
        self.session.lock().await.caller = Some(caller);
        ctx.peer.set_peer_info(request.clone());
        self.negotiate_initialize(&request)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let caller = self.caller(&ctx).await?;
        let mut list = tools::catalog_tools(
            &self.gw.governance,
            self.gw.engine.tools(),
            &caller.agent,
            caller.on_behalf_of.as_deref(),
        );
        list.extend(tools::own_tools());
        Ok(ListToolsResult::with_all_items(list))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let caller = self.caller(&ctx).await?;
        let args = request
            .arguments
            .clone()
            .map(Value::Object)
            .unwrap_or_else(|| json!({}));
        Ok(match request.name.as_ref() {
            tools::STATUS => self.status(&caller, args["task"].as_str()).await,
            tools::ROLLBACK => {
                let reason = args["reason"]
                    .as_str()
                    .map(|r| r.chars().take(512).collect());
                self.rollback(&caller, reason).await
            }
            tools::SUBMIT_PLAN => self.submit_plan(&caller, args).await,
            _ => self.call_catalog_tool(&caller, request, &ctx).await,
        })
    }
}
