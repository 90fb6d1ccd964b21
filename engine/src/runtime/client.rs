//! What callers outside a task do to it: submit, signal, cancel, pause, resume,
//! read. Each is a fenced append decided from the task's verified history,
//! retried on conflict, and refused (writing nothing) when it makes no sense.

use std::time::Duration;

use serde_json::Value;

use super::history::{over_budget, payload_len, sealed_len};
use super::{Engine, Handoff};
use crate::core::chain;
use crate::core::decide::projection;
use crate::core::event::{self, Event, EventPayload, NewEvent};
use crate::core::state::{TaskState, TaskStatus};
use crate::store::{self, AppendOutcome, AppendRequest, LeaseUpdate, NewTask, TaskRow};

/// Refusals (bad input, wrong state) and failures of the client API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown workflow {name:?}; this binary has: {}", known.join(", "))]
    UnknownWorkflow { name: String, known: Vec<String> },
    #[error("invalid {field}: {message}")]
    InvalidInput { field: String, message: String },
    #[error("no task with id {task_id}; `mandate list` shows the known tasks")]
    TaskNotFound { task_id: String },
    #[error("task {task_id} is {status}, which is final: nothing can {action} it any more")]
    TaskFinal {
        task_id: String,
        status: TaskStatus,
        action: &'static str,
    },
    #[error("task {task_id}: {message}")]
    Rejected { task_id: String, message: String },
    #[error(
        "the history of task {task_id} is corrupt: {source}. It is halted; run `mandate replay {task_id}` for details"
    )]
    Corrupt {
        task_id: String,
        #[source]
        source: chain::Error,
    },
    #[error("task {task_id}: stored event does not parse: {message}")]
    Unparseable { task_id: String, message: String },
    #[error("task {task_id} kept changing while appending {what}; try again")]
    Contention { task_id: String, what: &'static str },
    #[error("timed out after {waited:?} waiting for task {task_id} (now {status})")]
    Timeout {
        task_id: String,
        status: TaskStatus,
        waited: Duration,
    },
    #[error("{0}")]
    ApprovalRefused(crate::core::gateway::ApprovalRefusal),
    #[error("{message}")]
    Forbidden { message: String },
    #[error("{what}")]
    NotFound { what: String },
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// Who submits, for whom, and how to make a retry safe.
#[derive(Debug, Clone, Default)]
pub struct SubmitOptions {
    pub agent: Option<String>,
    pub on_behalf_of: Option<String>,
    /// A retry with the same key returns the task the first call created.
    pub idempotency_key: Option<String>,
    /// Recorded as the submission's actor (default `agent:<agent>` or `user:cli`).
    pub actor: Option<String>,
}

/// A submission's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    pub task_id: String,
    /// True when the idempotency key named a task that existed already.
    pub existing: bool,
}

const APPEND_RETRIES: usize = 20;

impl Engine {
    /// Creates a task. Validates everything first; on refusal nothing is written.
    pub async fn submit(
        &self,
        workflow: &str,
        input: Value,
        options: SubmitOptions,
    ) -> Result<Submitted, Error> {
        let s = &self.shared;
        let wf = s
            .workflows
            .get(workflow)
            .ok_or_else(|| Error::UnknownWorkflow {
                name: workflow.to_string(),
                known: s.workflows.names(),
            })?;
        s.limits
            .check_payload(&input)
            .map_err(|message| Error::InvalidInput {
                field: "input".into(),
                message,
            })?;
        wf.validate_input(&input)
            .map_err(|message| Error::InvalidInput {
                field: "input".into(),
                message,
            })?;
        for (field, v) in [
            ("agent", &options.agent),
            ("on_behalf_of", &options.on_behalf_of),
            ("idempotency_key", &options.idempotency_key),
        ] {
            if let Some(v) = v {
                s.limits
                    .check_name(field, v)
                    .map_err(|message| Error::InvalidInput {
                        field: field.into(),
                        message,
                    })?;
            }
        }
        // Identity is bound here: the principal is the caller's (an agent
        // token's name, or what an operator named), never the input's.
        for field in ["agent", "on_behalf_of"] {
            let given = input.get(field).filter(|v| !v.is_null());
            let bound = if field == "agent" {
                &options.agent
            } else {
                &options.on_behalf_of
            };
            if let Some(v) = given
                && v.as_str() != bound.as_deref()
            {
                return Err(Error::Forbidden {
                    message: format!(
                        "field input.{field}: {v} does not match the submission's {field} ({}); the {field} is bound from the caller's identity, so leave it out of the input or make it equal",
                        bound.as_deref().unwrap_or("none")
                    ),
                });
            }
        }
        s.gateway
            .admit(&crate::core::gateway::Principal {
                agent: options.agent.clone(),
                on_behalf_of: options.on_behalf_of.clone(),
            })
            .map_err(|message| Error::Forbidden { message })?;
        if let Some(key) = &options.idempotency_key
            && let Some(row) = s.store.find_by_idempotency_key(key).await?
        {
            return Ok(Submitted {
                task_id: row.id,
                existing: true,
            });
        }
        let now = s.clock.now_ms();
        let task_id = uuid::Uuid::now_v7().to_string();
        let actor = options
            .actor
            .clone()
            .unwrap_or_else(|| match &options.agent {
                Some(a) => format!("agent:{a}"),
                None => "user:cli".to_string(),
            });
        let new = vec![NewEvent {
            actor,
            payload: EventPayload::TaskSubmitted {
                workflow: workflow.to_string(),
                workflow_version: wf.version(),
                input,
                agent: options.agent.clone(),
                on_behalf_of: options.on_behalf_of.clone(),
                idempotency_key: options.idempotency_key.clone(),
            },
        }];
        let local = s.local_worker_with_room();
        let (history, raws): (Vec<Event>, Vec<_>) = event::seal_owned(&task_id, 0, "", now, new)
            .into_iter()
            .unzip();
        let state = TaskState::fold(&history);
        let bytes = sealed_len(&raws);
        let request = AppendRequest {
            task_id: task_id.clone(),
            expected_seq: 0,
            events: raws,
            projection: projection(&state, now),
            timers: None,
            create: Some(NewTask {
                workflow: workflow.to_string(),
                workflow_version: wf.version(),
                agent: options.agent.clone(),
                idempotency_key: options.idempotency_key.clone(),
                created_at_ms: now,
                lease_owner: local.as_ref().map(|w| w.worker.id.clone()),
            }),
            lease: LeaseUpdate::Keep,
            wake: local.is_none(),
        };
        match s.store.append(request).await {
            Ok(AppendOutcome::Appended) => {
                s.publish(&task_id, 1, TaskStatus::Queued);
                // If the worker stopped meanwhile, the lease expires and any
                // worker claims the task then.
                if let Some(w) = local {
                    w.handed_over(task_id.clone(), Handoff { history, bytes });
                }
                Ok(Submitted {
                    task_id,
                    existing: false,
                })
            }
            Ok(AppendOutcome::DuplicateIdempotencyKey { existing_task_id }) => Ok(Submitted {
                task_id: existing_task_id,
                existing: true,
            }),
            // A submission holds no lease, so only a conflict can refuse it.
            Ok(AppendOutcome::Conflict { .. } | AppendOutcome::LeaseLost { .. }) => {
                Err(Error::Contention {
                    task_id,
                    what: "the submission",
                })
            }
            Err(e) => {
                // Another process may have won a race on the idempotency key.
                if let Some(key) = &options.idempotency_key
                    && let Ok(Some(row)) = s.store.find_by_idempotency_key(key).await
                {
                    return Ok(Submitted {
                        task_id: row.id,
                        existing: true,
                    });
                }
                Err(e.into())
            }
        }
    }

    /// Delivers a signal; it waits in the history until the workflow takes it.
    pub async fn signal(
        &self,
        task_id: &str,
        name: &str,
        payload: Value,
        sender: &str,
    ) -> Result<i64, Error> {
        let s = &self.shared;
        s.limits
            .check_name("signal name", name)
            .map_err(|message| Error::InvalidInput {
                field: "name".into(),
                message,
            })?;
        s.limits
            .check_payload(&payload)
            .map_err(|message| Error::InvalidInput {
                field: "payload".into(),
                message,
            })?;
        let actor = sender.to_string();
        self.append_external_with_history(task_id, "signal", |history, state| {
            if state
                .waits
                .values()
                .any(|w| w.approval && !w.resolved && w.name == name)
            {
                return Err(Error::Rejected {
                    task_id: task_id.to_string(),
                    message: format!(
                        "signal {name:?} would decide an approval; approvals are decided only through `mandate approve` / POST /v1/approvals with an authenticated identity"
                    ),
                });
            }
            if let Some(wf) = s.workflows.get(&state.workflow) {
                wf.check_signal(history, name, &payload, sender)
                    .map_err(|message| Error::Rejected {
                        task_id: task_id.to_string(),
                        message: format!("signal {name:?} from {sender} refused: {message}"),
                    })?;
            }
            Ok(vec![NewEvent {
                actor: actor.clone(),
                payload: EventPayload::SignalReceived {
                    name: name.to_string(),
                    payload: payload.clone(),
                    sender: sender.to_string(),
                },
            }])
        })
        .await
    }

    /// Asks a task to stop; with `rollback`, its completed steps are compensated first.
    pub async fn cancel(
        &self,
        task_id: &str,
        rollback: bool,
        by: &str,
        reason: Option<String>,
    ) -> Result<i64, Error> {
        self.append_external(task_id, "cancel", |state| {
            if state.cancel_requested.is_some() {
                return Err(Error::Rejected {
                    task_id: task_id.to_string(),
                    message: "a cancellation was already requested".into(),
                });
            }
            Ok(vec![NewEvent {
                actor: by.to_string(),
                payload: EventPayload::CancelRequested {
                    rollback,
                    reason: reason.clone(),
                },
            }])
        })
        .await
    }

    /// Pauses a task: running attempts finish, no new one starts until resumed.
    pub async fn pause(
        &self,
        task_id: &str,
        by: &str,
        reason: Option<String>,
    ) -> Result<i64, Error> {
        self.append_external(task_id, "pause", |state| {
            if state.paused {
                return Err(Error::Rejected {
                    task_id: task_id.to_string(),
                    message: "the task is already paused".into(),
                });
            }
            Ok(vec![NewEvent {
                actor: by.to_string(),
                payload: EventPayload::TaskPaused {
                    reason: reason.clone(),
                },
            }])
        })
        .await
    }

    /// Runs now the attempts a task is holding back for their retry backoff
    /// (a task in `failed_retryable`). Attempt limits are unchanged.
    pub async fn retry(&self, task_id: &str, by: &str) -> Result<i64, Error> {
        self.append_external(task_id, "retry", |state| {
            if state.status() != TaskStatus::FailedRetryable {
                return Err(Error::Rejected {
                    task_id: task_id.to_string(),
                    message: format!(
                        "only a task waiting for its next attempt (failed_retryable) can be retried; this one is {}",
                        state.status()
                    ),
                });
            }
            Ok(vec![NewEvent {
                actor: by.to_string(),
                payload: EventPayload::RetryRequested {},
            }])
        })
        .await
    }

    /// Resumes a paused task where it was.
    pub async fn resume(&self, task_id: &str, by: &str) -> Result<i64, Error> {
        self.append_external(task_id, "resume", |state| {
            if !state.paused {
                return Err(Error::Rejected {
                    task_id: task_id.to_string(),
                    message: "the task is not paused".into(),
                });
            }
            Ok(vec![NewEvent {
                actor: by.to_string(),
                payload: EventPayload::TaskResumed {},
            }])
        })
        .await
    }

    /// Appends events decided by `make` from the current state; retries on conflict.
    pub(crate) async fn append_external(
        &self,
        task_id: &str,
        action: &'static str,
        make: impl Fn(&TaskState) -> Result<Vec<NewEvent>, Error>,
    ) -> Result<i64, Error> {
        self.append_external_with_history(task_id, action, |_, state| make(state))
            .await
    }

    /// Like [`Self::append_external`], also on a final task: for records
    /// that change nothing the engine does (a person's answer to a
    /// notification, the resolution of an escalation).
    pub(crate) async fn append_record(
        &self,
        task_id: &str,
        action: &'static str,
        make: impl Fn(&TaskState) -> Result<Vec<NewEvent>, Error>,
    ) -> Result<i64, Error> {
        self.append_events(task_id, action, true, |_, state| make(state))
            .await
    }

    /// Like [`Self::append_external`], with the verified history at hand too.
    async fn append_external_with_history(
        &self,
        task_id: &str,
        action: &'static str,
        make: impl Fn(&[Event], &TaskState) -> Result<Vec<NewEvent>, Error>,
    ) -> Result<i64, Error> {
        self.append_events(task_id, action, false, make).await
    }

    pub(crate) async fn append_events(
        &self,
        task_id: &str,
        action: &'static str,
        final_ok: bool,
        make: impl Fn(&[Event], &TaskState) -> Result<Vec<NewEvent>, Error>,
    ) -> Result<i64, Error> {
        let s = &self.shared;
        for _ in 0..APPEND_RETRIES {
            let (history, bytes) = load_verified_sized(s.store.as_ref(), task_id).await?;
            let state = TaskState::fold(&history);
            if state.is_final() && !final_ok {
                return Err(Error::TaskFinal {
                    task_id: task_id.to_string(),
                    status: state.status(),
                    action,
                });
            }
            let new = make(&history, &state)?;
            if state.last_seq as usize + new.len() > s.limits.max_history_events {
                return Err(Error::Rejected {
                    task_id: task_id.to_string(),
                    message: format!(
                        "its history holds {} events, the limit is {}: nothing more can be appended",
                        state.last_seq, s.limits.max_history_events
                    ),
                });
            }
            let added = new.iter().map(|e| payload_len(&e.payload)).sum();
            if let Some(why) = over_budget(bytes, added, s.limits.max_history_bytes) {
                return Err(Error::Rejected {
                    task_id: task_id.to_string(),
                    message: format!("{why}; nothing was appended"),
                });
            }
            let now = s.clock.now_ms();
            let sealed = event::seal_owned(task_id, state.last_seq, &state.last_hash, now, new);
            let mut after = state.clone();
            for (e, _) in &sealed {
                after.apply(task_id, e.seq, e.recorded_at_ms, &e.payload);
            }
            let mut proj = projection(&after, now);
            // An outside event always needs a worker's decision.
            // (A blocked task stays out of the queue until its cause is fixed.)
            if !after.is_final() && !after.paused && after.blocked.is_none() {
                proj.ready_at_ms = Some(now);
            }
            let timers_after = after.pending_timers();
            let timers = (timers_after != state.pending_timers()).then_some(timers_after);
            let last_seq = sealed.last().map(|(e, _)| e.seq).unwrap_or(state.last_seq);
            let status = proj.status;
            let request = AppendRequest {
                task_id: task_id.to_string(),
                expected_seq: state.last_seq,
                events: sealed.into_iter().map(|(_, raw)| raw).collect(),
                projection: proj,
                timers,
                create: None,
                lease: LeaseUpdate::Keep,
                wake: true,
            };
            match s.store.append(request).await? {
                AppendOutcome::Appended => {
                    s.publish(task_id, last_seq, status);
                    s.poke(task_id);
                    return Ok(last_seq);
                }
                AppendOutcome::Conflict { .. } => continue,
                // External appends hold no lease (`Keep`): never lost.
                AppendOutcome::LeaseLost { .. } | AppendOutcome::DuplicateIdempotencyKey { .. } => {
                    return Err(Error::Contention {
                        task_id: task_id.to_string(),
                        what: action,
                    });
                }
            }
        }
        Err(Error::Contention {
            task_id: task_id.to_string(),
            what: action,
        })
    }

    /// The task's derived row.
    pub async fn task(&self, task_id: &str) -> Result<TaskRow, Error> {
        self.shared
            .store
            .get_task(task_id)
            .await?
            .ok_or_else(|| Error::TaskNotFound {
                task_id: task_id.to_string(),
            })
    }

    /// The task's history, chain verified from seq 1.
    pub async fn history(&self, task_id: &str) -> Result<Vec<Event>, Error> {
        load_verified(self.shared.store.as_ref(), task_id).await
    }

    /// Waits until the task reaches a final status (or `timeout` passes).
    pub async fn wait_until_final(
        &self,
        task_id: &str,
        timeout: Duration,
    ) -> Result<TaskRow, Error> {
        let mut updates = self.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let row = self.task(task_id).await?;
            if row.status.is_final() {
                return Ok(row);
            }
            // Updates from this process arrive at once; other processes' through
            // the bounded poll.
            let wait = async {
                loop {
                    match updates.recv().await {
                        Ok(u) if u.task_id == task_id => return,
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
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(Error::Timeout { task_id: task_id.to_string(), status: row.status, waited: timeout });
                }
            }
        }
    }
}

/// Loads a history, verifies its chain, and parses it. Unknown task → `TaskNotFound`.
pub(crate) async fn load_verified(
    store: &dyn store::Store,
    task_id: &str,
) -> Result<Vec<Event>, Error> {
    Ok(load_verified_sized(store, task_id).await?.0)
}

/// [`load_verified`], with the bytes the history takes from its budget.
pub(crate) async fn load_verified_sized(
    store: &dyn store::Store,
    task_id: &str,
) -> Result<(Vec<Event>, u64), Error> {
    let raw = store.load_history(task_id).await?;
    if raw.is_empty() {
        return Err(Error::TaskNotFound {
            task_id: task_id.to_string(),
        });
    }
    chain::verify(task_id, &raw).map_err(|source| Error::Corrupt {
        task_id: task_id.to_string(),
        source,
    })?;
    let events = raw
        .iter()
        .map(|r| {
            event::parse(r).map_err(|message| Error::Unparseable {
                task_id: task_id.to_string(),
                message,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok((events, super::history::raw_len(&raw)))
}
