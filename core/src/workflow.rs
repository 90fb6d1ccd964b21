//! The workflow programming model and the replayer that advances it.
//!
//! A workflow is deterministic Rust code that asks for things only through its
//! [`WorkflowContext`]: tool calls (`step`), durable `sleep`, signal waits, the
//! time (`now`) and ids. The engine never keeps a workflow in memory: to advance
//! a task it runs the code from the start against the task's history
//! ([`replay`]). Each command the code issues is matched, in order, with the
//! command events the history recorded; results become visible to the code in
//! the same batches in which they were appended, so the code sees the world as
//! it did when it first ran. A command that does not match is a
//! [`NonDeterminism`] naming the seq, the expected and the found command.
//!
//! A worker's driver need not run the code from the start for every
//! decision: a [`WorkflowInstance`] keeps the code's future and the
//! replayer between decisions and is fed only the events appended since,
//! polled at exactly the points a replay from the start would poll it
//! (see [`WorkflowInstance::feed`]); where it cannot be sure of that, it
//! says so and the caller replays from the start.
//!
//! Rules for workflow authors (documented in ARCHITECTURE.md): no clocks, no
//! randomness, no I/O, no threads, no `select!`/racing between commands (use
//! `join`/`join_all`; a signal wait's timeout is decided by the engine).
//!
//! Pure: polling uses no runtime, replay performs no side effect.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::event::{Compensation, EventPayload, PollPoints, RecordedError};
use super::retry::RetryPolicy;

/// Default per-attempt timeout of a step.
pub const DEFAULT_STEP_TIMEOUT_MS: u64 = 60_000;
/// Longest per-attempt timeout a step may ask for (one day).
pub const MAX_STEP_TIMEOUT_MS: u64 = 86_400_000;

/// A workflow: deterministic code the engine replays.
pub trait Workflow: Send + Sync + 'static {
    /// The registered name (`mandate submit <name>`).
    fn name(&self) -> &str;
    /// Bump when a change alters the commands the code issues.
    fn version(&self) -> u32 {
        1
    }
    /// Runs the workflow. The future must be driven only by the context.
    /// It is `Send` so that a worker's driver can keep it between decisions.
    fn run(&self, ctx: WorkflowContext, input: Value) -> BoxFuture<'static, WorkflowResult>;

    /// Checks an input at submission, before anything is written. The message
    /// must name what is wrong and where (e.g. the step and field).
    fn validate_input(&self, _input: &Value) -> Result<(), String> {
        Ok(())
    }

    /// Decides whether a signal may enter a task's history (e.g. only allowed
    /// approvers, never the submitting agent). Runs before the append; a
    /// refusal writes nothing. `history` is the task's verified history.
    fn check_signal(
        &self,
        _history: &[super::event::Event],
        _name: &str,
        _payload: &Value,
        _sender: &str,
    ) -> Result<(), String> {
        Ok(())
    }
}

/// What a workflow returns.
pub type WorkflowResult = Result<Value, WorkflowError>;

/// Why a workflow gave up: the saga rolls back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct WorkflowError {
    pub message: String,
}

impl WorkflowError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

impl From<StepError> for WorkflowError {
    fn from(e: StepError) -> Self {
        Self::new(e.to_string())
    }
}

/// A step that failed for good, as the workflow sees it. With `attempts`
/// 0 the step never ran (the gateway denied it, or its approval was
/// rejected or timed out) and the message says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepError {
    pub step: String,
    pub tool: String,
    pub attempts: u32,
    pub message: String,
    pub retryable: bool,
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.attempts == 0 {
            return write!(f, "{}", self.message);
        }
        write!(
            f,
            "step {} ({}) failed after {} attempt(s): {}",
            self.step, self.tool, self.attempts, self.message
        )
    }
}

impl std::error::Error for StepError {}

/// A signal delivered to a waiting workflow.
#[derive(Debug, Clone, PartialEq)]
pub struct Signal {
    pub name: String,
    pub payload: Value,
    pub sender: String,
}

/// What a step asks for. Build with [`StepOptions::new`].
#[derive(Debug, Clone, PartialEq)]
pub struct StepOptions {
    pub name: String,
    pub tool: String,
    pub input: Value,
    pub retry: Option<RetryPolicy>,
    pub timeout_ms: Option<u64>,
    pub compensation: Option<Compensation>,
    pub recovery_path: Option<String>,
}

impl StepOptions {
    /// A call of `tool` with `input`; the step's name defaults to the tool's.
    pub fn new(tool: impl Into<String>, input: Value) -> Self {
        let tool = tool.into();
        Self {
            name: tool.clone(),
            tool,
            input,
            retry: None,
            timeout_ms: None,
            compensation: None,
            recovery_path: None,
        }
    }
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = Some(retry);
        self
    }
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout_ms = Some(timeout.as_millis() as u64);
        self
    }
    /// The call that undoes this step; persisted before the step runs.
    pub fn compensate(mut self, tool: impl Into<String>, input: Value) -> Self {
        self.compensation = Some(Compensation {
            tool: tool.into(),
            input,
            retry: RetryPolicy::compensation_default(),
        });
        self
    }
    /// What a person should do if the step cannot be undone automatically.
    pub fn recovery(mut self, text: impl Into<String>) -> Self {
        self.recovery_path = Some(text.into());
        self
    }
}

/// A command the code issued that the history does not hold yet.
// serde_json's `preserve_order` (which cedar-policy turns on for the whole
// workspace) makes `Value` maps larger; commands are short-lived, so the
// size difference costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum NewCommand {
    Step {
        command: u32,
        options: StepOptions,
    },
    Timer {
        command: u32,
        duration_ms: u64,
    },
    SignalWait {
        command: u32,
        name: String,
        approval: bool,
        timeout_ms: Option<u64>,
    },
    Marker {
        command: u32,
        kind: String,
        value: Value,
    },
    /// The workflow's own approval wait: an engine approval request.
    Approval {
        command: u32,
        subject: String,
        timeout_ms: Option<u64>,
    },
}

/// How a workflow's approval wait ended, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalResult {
    /// `approved`, `rejected` or `timed_out`.
    pub outcome: String,
    /// Who decided (each identity authenticated and named by the request).
    pub by: Vec<String>,
    pub comment: Option<String>,
}

impl ApprovalResult {
    pub fn approved(&self) -> bool {
        self.outcome == "approved"
    }
}

/// The code issued a command that does not match the recorded history.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "non-determinism in task {task_id} at seq {seq}: history recorded {expected}, the workflow code issued {found}"
)]
pub struct NonDeterminism {
    pub task_id: String,
    pub seq: i64,
    pub expected: String,
    pub found: String,
}

/// What one replay found.
#[derive(Debug)]
pub struct ReplayResult {
    /// `None` while the workflow is still waiting; its result once it returned.
    pub finished: Option<Result<Value, WorkflowError>>,
    pub new_commands: Vec<NewCommand>,
    pub nondeterminism: Option<NonDeterminism>,
    /// Commands the code issued in all (recorded and new).
    pub commands_issued: u32,
}

#[derive(Debug, Clone)]
enum Resolution {
    Step(Result<Value, StepError>),
    Timer,
    Signal(Option<Signal>),
    Approval(ApprovalResult),
}

struct HistoryCommand {
    seq: i64,
    payload: EventPayload,
}

struct Replayer {
    task_id: String,
    workflow_version: u32,
    now_ms: i64,
    /// The recorded commands known so far, in order.
    history: Vec<HistoryCommand>,
    index_of_seq: HashMap<i64, u32>,
    resolutions: HashMap<u32, Resolution>,
    wakers: HashMap<u32, Waker>,
    /// Wakers woken by results so far (an instance's poll is "woken" when
    /// this moved since the poll before).
    wakes: u64,
    next_command: u32,
    /// Commands issued past the recorded ones (indices `history.len()..`), oldest first.
    new_commands: VecDeque<NewCommand>,
    nondeterminism: Option<NonDeterminism>,
    ids_issued: u64,
    signals: HashMap<i64, Signal>,
    step_attempts: HashMap<i64, u32>,
}

fn describe_recorded(p: &EventPayload) -> String {
    match p {
        EventPayload::StepScheduled { name, tool, .. } => format!("step {name:?} (tool {tool})"),
        EventPayload::TimerStarted { duration_ms, .. } => format!("sleep {duration_ms} ms"),
        EventPayload::SignalWaitStarted { name, approval, .. } => {
            format!(
                "wait for {} {name:?}",
                if *approval { "approval" } else { "signal" }
            )
        }
        EventPayload::MarkerRecorded { kind, .. } => format!("marker {kind:?}"),
        EventPayload::PolicyEvaluated { name, tool, .. } => format!("step {name:?} (tool {tool})"),
        EventPayload::ApprovalRequested { subject, .. } => format!("approval {subject:?}"),
        other => other.type_name().to_string(),
    }
}

impl NewCommand {
    /// A short human description, as used in non-determinism reports.
    pub fn describe(&self) -> String {
        match self {
            Self::Step { options, .. } => {
                format!("step {:?} (tool {})", options.name, options.tool)
            }
            Self::Timer { duration_ms, .. } => format!("sleep {duration_ms} ms"),
            Self::SignalWait { name, approval, .. } => {
                format!(
                    "wait for {} {name:?}",
                    if *approval { "approval" } else { "signal" }
                )
            }
            Self::Marker { kind, .. } => format!("marker {kind:?}"),
            Self::Approval { subject, .. } => format!("approval {subject:?}"),
        }
    }

    /// Whether a recorded command event is the same command.
    fn matches(&self, recorded: &EventPayload) -> bool {
        match (self, recorded) {
            (
                Self::Step { options, .. },
                EventPayload::StepScheduled {
                    name, tool, input, ..
                },
            ) => &options.name == name && &options.tool == tool && &options.input == input,
            (
                Self::Step { options, .. },
                EventPayload::PolicyEvaluated {
                    name, tool, input, ..
                },
            ) => &options.name == name && &options.tool == tool && &options.input == input,
            (
                Self::Approval { subject, .. },
                EventPayload::ApprovalRequested {
                    subject: recorded, ..
                },
            ) => subject == recorded,
            (
                Self::Timer { duration_ms, .. },
                EventPayload::TimerStarted {
                    duration_ms: recorded,
                    ..
                },
            ) => duration_ms == recorded,
            (
                Self::SignalWait { name, approval, .. },
                EventPayload::SignalWaitStarted {
                    name: n,
                    approval: a,
                    ..
                },
            ) => name == n && approval == a,
            (Self::Marker { kind, .. }, EventPayload::MarkerRecorded { kind: k, .. }) => kind == k,
            _ => false,
        }
    }
}

impl Replayer {
    /// Issues a command: matches it against the history or records it as new.
    /// Returns its index and, for markers, the value.
    fn issue(&mut self, command: NewCommand) -> (u32, Option<Value>) {
        let index = self.next_command;
        self.next_command += 1;
        if self.nondeterminism.is_some() {
            return (index, None);
        }
        match self.history.get(index as usize) {
            Some(recorded) => {
                if !command.matches(&recorded.payload) {
                    self.nondeterminism = Some(NonDeterminism {
                        task_id: self.task_id.clone(),
                        seq: recorded.seq,
                        expected: describe_recorded(&recorded.payload),
                        found: command.describe(),
                    });
                    return (index, None);
                }
                match &recorded.payload {
                    EventPayload::MarkerRecorded { value, .. } => (index, Some(value.clone())),
                    _ => (index, None),
                }
            }
            None => {
                let value = match &command {
                    NewCommand::Marker { value, .. } => Some(value.clone()),
                    _ => None,
                };
                self.new_commands.push_back(command);
                (index, value)
            }
        }
    }

    fn resolve(&mut self, command_seq: i64, resolution: Resolution) {
        if let Some(&index) = self.index_of_seq.get(&command_seq) {
            self.resolutions.insert(index, resolution);
            if let Some(w) = self.wakers.remove(&index) {
                self.wakes += 1;
                w.wake();
            }
        }
    }

    /// Adds a recorded command. One the code issued already (a new command
    /// of an earlier poll, now recorded) is checked against the record as
    /// `issue` would have checked it; `Err` when a marker's recorded value
    /// differs from the one the code was given (only a replay from the
    /// start gives the code the recorded value).
    fn record_command(&mut self, seq: i64, payload: &EventPayload) -> Result<(), Unusable> {
        let index = self.history.len() as u32;
        if index < self.next_command
            && self.nondeterminism.is_none()
            && let Some(issued) = self.new_commands.pop_front()
        {
            if !issued.matches(payload) {
                self.nondeterminism = Some(NonDeterminism {
                    task_id: self.task_id.clone(),
                    seq,
                    expected: describe_recorded(payload),
                    found: issued.describe(),
                });
            } else if let (
                NewCommand::Marker { value, .. },
                EventPayload::MarkerRecorded {
                    value: recorded, ..
                },
            ) = (&issued, payload)
                && value != recorded
            {
                return Err(Unusable);
            }
        }
        self.index_of_seq.insert(seq, index);
        self.history.push(HistoryCommand {
            seq,
            payload: payload.clone(),
        });
        Ok(())
    }

    fn step_name(&self, step_seq: i64) -> (String, String) {
        self.index_of_seq
            .get(&step_seq)
            .and_then(|i| self.history.get(*i as usize))
            .map(|h| match &h.payload {
                EventPayload::StepScheduled { name, tool, .. }
                | EventPayload::PolicyEvaluated { name, tool, .. } => (name.clone(), tool.clone()),
                _ => (String::new(), String::new()),
            })
            .unwrap_or_default()
    }

    /// Makes one non-command event visible to the code.
    fn apply(&mut self, seq: i64, payload: &EventPayload) {
        match payload {
            // A governed step: its results name this seq; the command is the
            // decision's.
            EventPayload::StepScheduled {
                policy_seq: Some(p),
                ..
            } => {
                if let Some(&index) = self.index_of_seq.get(p) {
                    self.index_of_seq.insert(seq, index);
                }
            }
            EventPayload::StepDenied {
                policy_seq, reason, ..
            } => {
                let (step, tool) = self.step_name(*policy_seq);
                self.resolve(
                    *policy_seq,
                    Resolution::Step(Err(StepError {
                        step,
                        tool,
                        attempts: 0,
                        message: reason.clone(),
                        retryable: false,
                    })),
                );
            }
            EventPayload::ApprovalResolved {
                request_seq,
                outcome,
                by,
                comment,
            } => self.resolve(
                *request_seq,
                Resolution::Approval(ApprovalResult {
                    outcome: outcome.clone(),
                    by: by.clone(),
                    comment: comment.clone(),
                }),
            ),
            EventPayload::StepCompleted {
                step_seq, output, ..
            } => self.resolve(*step_seq, Resolution::Step(Ok(output.clone()))),
            EventPayload::StepAttemptFailed { step_seq, .. } => {
                *self.step_attempts.entry(*step_seq).or_default() += 1;
            }
            EventPayload::StepFailed {
                step_seq,
                error,
                attempt,
                ..
            } => {
                let (step, tool) = self.step_name(*step_seq);
                let RecordedError {
                    message, retryable, ..
                } = error.clone();
                self.resolve(
                    *step_seq,
                    Resolution::Step(Err(StepError {
                        step,
                        tool,
                        attempts: *attempt,
                        message,
                        retryable,
                    })),
                );
            }
            EventPayload::TimerFired { timer_seq } => self.resolve(*timer_seq, Resolution::Timer),
            EventPayload::SignalReceived {
                name,
                payload,
                sender,
            } => {
                self.signals.insert(
                    seq,
                    Signal {
                        name: name.clone(),
                        payload: payload.clone(),
                        sender: sender.clone(),
                    },
                );
            }
            EventPayload::SignalWaitResolved {
                wait_seq,
                signal_seq,
                ..
            } => {
                let signal = signal_seq.and_then(|s| self.signals.get(&s).cloned());
                self.resolve(*wait_seq, Resolution::Signal(signal));
            }
            _ => {}
        }
    }
}

/// The handle workflow code uses for everything outside itself. Cheap to clone.
#[derive(Clone)]
pub struct WorkflowContext {
    inner: Arc<Mutex<Replayer>>,
}

/// The replayer, locked for a moment. Nothing panics while holding it, and
/// a replayer is never shared between threads at once (the code runs inside
/// one poll), so a poisoned lock only means an earlier poll panicked.
fn lock(inner: &Mutex<Replayer>) -> MutexGuard<'_, Replayer> {
    inner.lock().unwrap_or_else(|e| e.into_inner())
}

/// A command's result, resolved by the history.
struct CommandFuture {
    inner: Arc<Mutex<Replayer>>,
    index: u32,
}

impl Future for CommandFuture {
    type Output = Resolution;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Resolution> {
        let mut r = lock(&self.inner);
        match r.resolutions.get(&self.index) {
            Some(res) => Poll::Ready(res.clone()),
            None => {
                r.wakers.insert(self.index, cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl WorkflowContext {
    /// The task this code runs for.
    pub fn task_id(&self) -> String {
        lock(&self.inner).task_id.clone()
    }

    fn command(&self, command: NewCommand) -> (CommandFuture, Option<Value>) {
        let (index, value) = lock(&self.inner).issue(command);
        (
            CommandFuture {
                inner: self.inner.clone(),
                index,
            },
            value,
        )
    }

    /// Calls a tool durably: scheduled (with its compensation) in the history,
    /// retried per its policy, its result recorded once. Issued when called.
    pub fn step(
        &self,
        options: StepOptions,
    ) -> impl Future<Output = Result<Value, StepError>> + use<> {
        let command = lock(&self.inner).next_command;
        let (fut, _) = self.command(NewCommand::Step { command, options });
        async move {
            match fut.await {
                Resolution::Step(r) => r,
                other => unreachable!("a step resolved as {other:?}"),
            }
        }
    }

    /// Sleeps durably: survives restarts; fires once.
    pub fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + use<> {
        let command = lock(&self.inner).next_command;
        let (fut, _) = self.command(NewCommand::Timer {
            command,
            duration_ms: duration.as_millis() as u64,
        });
        async move {
            fut.await;
        }
    }

    /// Waits for the next signal named `name`; `None` when `timeout` passes first.
    pub fn wait_signal(
        &self,
        name: &str,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Option<Signal>> + use<> {
        self.wait(name, false, timeout)
    }

    /// Asks people to decide: an engine approval request. The gateway names
    /// the approvers, quorum and deadline (`timeout`, if given, shortens it);
    /// the task shows `needs_approval` meanwhile. Decisions come only through
    /// the engine's approval call with an authenticated identity, never a
    /// signal.
    pub fn wait_approval(
        &self,
        subject: &str,
        timeout: Option<Duration>,
    ) -> impl Future<Output = ApprovalResult> + use<> {
        let command = lock(&self.inner).next_command;
        let (fut, _) = self.command(NewCommand::Approval {
            command,
            subject: subject.to_string(),
            timeout_ms: timeout.map(|t| t.as_millis() as u64),
        });
        async move {
            match fut.await {
                Resolution::Approval(a) => a,
                other => unreachable!("an approval resolved as {other:?}"),
            }
        }
    }

    /// The approval wait of release 0.1: a signal wait shown as
    /// `needs_approval`. Kept only so that workflow versions written then
    /// still replay their histories; new code uses [`Self::wait_approval`].
    /// The engine no longer lets a signal resolve such a wait.
    pub fn wait_approval_signal_v1(
        &self,
        name: &str,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Option<Signal>> + use<> {
        self.wait(name, true, timeout)
    }

    /// The version of the workflow recorded when the task was submitted, so
    /// that code can keep the path older histories were written by.
    pub fn workflow_version(&self) -> u32 {
        lock(&self.inner).workflow_version
    }

    fn wait(
        &self,
        name: &str,
        approval: bool,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Option<Signal>> + use<> {
        let command = lock(&self.inner).next_command;
        let (fut, _) = self.command(NewCommand::SignalWait {
            command,
            name: name.to_string(),
            approval,
            timeout_ms: timeout.map(|t| t.as_millis() as u64),
        });
        async move {
            match fut.await {
                Resolution::Signal(s) => s,
                other => unreachable!("a signal wait resolved as {other:?}"),
            }
        }
    }

    /// The time, in ms since the Unix epoch, recorded on first run and replayed after.
    pub fn now(&self) -> i64 {
        let (command, now_ms) = {
            let r = lock(&self.inner);
            (r.next_command, r.now_ms)
        };
        let (_, value) = self.command(NewCommand::Marker {
            command,
            kind: "now".to_string(),
            value: Value::from(now_ms),
        });
        value.and_then(|v| v.as_i64()).unwrap_or(now_ms)
    }

    /// Records a value read from outside the history (e.g. configuration in
    /// force when the task first ran): the first run records `value`; every
    /// replay returns the recorded value, whatever `value` is by then.
    pub fn record(&self, kind: &str, value: Value) -> Value {
        let command = lock(&self.inner).next_command;
        let (_, recorded) = self.command(NewCommand::Marker {
            command,
            kind: kind.to_string(),
            value: value.clone(),
        });
        recorded.unwrap_or(value)
    }

    /// A UUID derived from the task id and a counter: the same on every replay.
    pub fn new_id(&self) -> uuid::Uuid {
        let mut r = lock(&self.inner);
        r.ids_issued += 1;
        let digest = Sha256::new()
            .chain_update(r.task_id.as_bytes())
            .chain_update(r.ids_issued.to_be_bytes())
            .finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        uuid::Uuid::new_v8(bytes)
    }
}

struct FlagWaker(AtomicBool);

impl Wake for FlagWaker {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Polls until the future stops making progress.
fn poll_until_stalled(
    fut: &mut BoxFuture<'static, WorkflowResult>,
    flag: &Arc<FlagWaker>,
    waker: &Waker,
) -> Option<WorkflowResult> {
    let mut cx = Context::from_waker(waker);
    // Combinators such as FuturesUnordered yield after a budget and wake
    // themselves; keep polling while someone woke us, within a bound.
    for _ in 0..10_000 {
        flag.0.store(false, Ordering::SeqCst);
        if let Poll::Ready(r) = fut.as_mut().poll(&mut cx) {
            return Some(r);
        }
        if !flag.0.load(Ordering::SeqCst) {
            return None;
        }
    }
    None
}

/// An instance kept between decisions can no longer be fed: replay from
/// the start instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unusable;

/// The version a history was written by: its `TaskSubmitted`'s, else the code's.
fn recorded_version(workflow: &dyn Workflow, first: Option<&EventPayload>) -> u32 {
    match first {
        Some(EventPayload::TaskSubmitted {
            workflow_version, ..
        }) => *workflow_version,
        _ => workflow.version(),
    }
}

/// A workflow's code running against a history that grows: created
/// once, then fed the events in order, a batch at a time, each batch only
/// once. After every batch it answers what a replay from the start over
/// all the events fed so far would answer ([`replay`] is one batch fed to a
/// new instance), at the cost of the new events only.
///
/// Where the code is polled is the history's `TaskStarted`'s choice
/// ([`PollPoints`]). With `EachResult` (every task started by this
/// release) a replay polls after each non-command event that woke the
/// code, and an instance does exactly that: it is never unusable for where
/// it polled. With `Batch` (older histories), a replay from the start
/// polls the code after each run of non-command
/// events (results made visible together), before the commands recorded
/// next. An instance polls at those points too, and also at the end of
/// every batch (to learn the next commands), where the history may later
/// go on with more non-command events, merging into the same run. That
/// extra poll cannot be told apart when nothing had woken the code since
/// its previous poll and the poll issued nothing: the code's futures then
/// only look again at unresolved commands. Otherwise, if the next batch
/// starts with a non-command event, the instance is [`Unusable`] (e.g. one
/// step of two running in parallel completed: the code was woken and now
/// waits for the other). So is one whose new marker (a `now`, a `record`)
/// was recorded with a value other than the one the code was given.
///
/// `Send`, so that a worker's driver can hold it across awaits. It keeps
/// the code's future and the recorded commands: memory in proportion to the
/// commands, like the history the driver holds.
pub struct WorkflowInstance {
    inner: Arc<Mutex<Replayer>>,
    fut: Option<BoxFuture<'static, WorkflowResult>>,
    flag: Arc<FlagWaker>,
    waker: Waker,
    finished: Option<WorkflowResult>,
    /// The seq of the last event fed (0 before any).
    fed_seq: i64,
    /// An unpolled run of non-command events is open (the start counts as one).
    need_poll: bool,
    /// The last batch ended with a poll that the history may not make again.
    ended_with_sensitive_poll: bool,
    /// The history's `TaskStarted` chose [`PollPoints::EachResult`]: from
    /// there on the code is polled after each event that woke it, never at
    /// the end of a batch.
    each_result: bool,
    /// The last poll was woken by a result (or was the first) or issued commands.
    last_poll_sensitive: bool,
    polled: bool,
    wakes_at_last_poll: u64,
    /// The seq and hash of the last event fed, once every event fed is
    /// known to be persisted ([`Self::confirm`]).
    confirmed: Option<(i64, String)>,
    /// Events fed that were not persisted when fed (a decision's own), to
    /// be found in the history, the same, before the instance is used again.
    unconfirmed: Vec<(i64, EventPayload)>,
    /// Nondeterminism found or the workflow returned: nothing further to feed.
    done: bool,
}

impl std::fmt::Debug for WorkflowInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkflowInstance")
            .field("fed_seq", &self.fed_seq)
            .field("confirmed", &self.confirmed)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl WorkflowInstance {
    /// Starts `workflow` for a task. `first` is the history's first event
    /// (its `TaskSubmitted` names the version the code must follow).
    pub fn new(
        workflow: &dyn Workflow,
        task_id: &str,
        input: &Value,
        first: Option<&EventPayload>,
    ) -> Self {
        let inner = Arc::new(Mutex::new(Replayer {
            task_id: task_id.to_string(),
            workflow_version: recorded_version(workflow, first),
            now_ms: 0,
            history: Vec::new(),
            index_of_seq: HashMap::new(),
            resolutions: HashMap::new(),
            wakers: HashMap::new(),
            wakes: 0,
            next_command: 0,
            new_commands: VecDeque::new(),
            nondeterminism: None,
            ids_issued: 0,
            signals: HashMap::new(),
            step_attempts: HashMap::new(),
        }));
        let ctx = WorkflowContext {
            inner: inner.clone(),
        };
        let fut = workflow.run(ctx, input.clone());
        let flag = Arc::new(FlagWaker(AtomicBool::new(false)));
        let waker = Waker::from(flag.clone());
        Self {
            inner,
            fut: Some(fut),
            flag,
            waker,
            finished: None,
            fed_seq: 0,
            need_poll: true,
            ended_with_sensitive_poll: false,
            each_result: false,
            last_poll_sensitive: false,
            polled: false,
            wakes_at_last_poll: 0,
            confirmed: None,
            unconfirmed: Vec::new(),
            done: false,
        }
    }

    /// The seq of the last event fed.
    pub fn fed_seq(&self) -> i64 {
        self.fed_seq
    }

    /// Checks the events fed against `history` (the persisted history, e.g.
    /// just after an append): once every event fed that was not persisted
    /// when fed is in it, the same, the instance is confirmed at the last
    /// event fed (whose hash covers every event before it). One that is
    /// missing leaves the instance unconfirmed (not appended yet); one that
    /// differs (someone else's event took its seq) makes it unusable for good.
    pub fn confirm(&mut self, history: &[super::event::Event]) {
        for (seq, payload) in &self.unconfirmed {
            match event_at(history, *seq) {
                Some(e) if &e.payload == payload => {}
                Some(_) => {
                    self.done = true;
                    return;
                }
                None => return,
            }
        }
        self.unconfirmed.clear();
        self.confirmed = event_at(history, self.fed_seq).map(|e| (e.seq, e.hash.clone()));
    }

    /// Whether the events fed are exactly the first events of `history`:
    /// confirmed after the last one was fed, and `history` holds the same
    /// event there (so, by the hash chain, the same events before it).
    pub fn usable_with(&self, history: &[super::event::Event]) -> bool {
        !self.done
            && self.unconfirmed.is_empty()
            && self.confirmed.as_ref().is_some_and(|(seq, hash)| {
                *seq == self.fed_seq && event_at(history, *seq).is_some_and(|e| &e.hash == hash)
            })
    }

    fn poll(&mut self) {
        let Some(fut) = self.fut.as_mut() else {
            return;
        };
        let (wakes, issued_before) = {
            let r = lock(&self.inner);
            (r.wakes, r.next_command)
        };
        let woken = !self.polled || wakes != self.wakes_at_last_poll;
        let finished = poll_until_stalled(fut, &self.flag, &self.waker);
        self.polled = true;
        let r = lock(&self.inner);
        self.wakes_at_last_poll = r.wakes;
        self.last_poll_sensitive = woken || r.next_command != issued_before;
        if r.nondeterminism.is_some() {
            self.done = true;
        }
        drop(r);
        if finished.is_some() {
            self.finished = finished;
            self.fut = None;
            self.done = true;
        }
    }

    /// Feeds the events that follow the last one fed (seq and payload, in
    /// order; the seqs must go on from [`Self::fed_seq`]); those after
    /// `persisted_through` are not persisted yet, and [`Self::confirm`]
    /// looks for them later. `now_ms` is what new markers record. Answers
    /// as a replay from the start over every event fed so far would, or
    /// [`Unusable`] (then drop the instance and replay from the start).
    pub fn feed(
        &mut self,
        events: &[(i64, &EventPayload)],
        persisted_through: i64,
        now_ms: i64,
    ) -> Result<ReplayResult, Unusable> {
        if let Some((seq, _)) = events.first()
            && *seq != self.fed_seq + 1
            && self.fed_seq != 0
        {
            return Err(Unusable);
        }
        if self.done && self.fed_seq != 0 {
            return Err(Unusable);
        }
        if !events.is_empty() {
            self.confirmed = None;
        }
        self.unconfirmed.extend(
            events
                .iter()
                .filter(|(seq, _)| *seq > persisted_through)
                .map(|(seq, p)| (*seq, (*p).clone())),
        );
        // A batch that goes on with the run the last batch ended with:
        // the end-of-batch poll may have been one the history never makes.
        if self.ended_with_sensitive_poll
            && !self.done
            && events.first().is_some_and(|(_, p)| !p.is_command())
        {
            return Err(Unusable);
        }
        {
            let mut r = lock(&self.inner);
            r.now_ms = now_ms;
            // The batch's commands are known before the code runs, so that
            // it is matched against them (and given their recorded marker
            // values) as it issues them.
            for (seq, p) in events {
                if p.is_command() {
                    r.record_command(*seq, p)?;
                }
            }
            if r.nondeterminism.is_some() {
                self.done = true;
            }
        }
        for (seq, payload) in events {
            self.fed_seq = *seq;
            if self.done {
                continue;
            }
            if payload.is_command() {
                if self.need_poll {
                    self.need_poll = false;
                    self.poll();
                }
            } else {
                let woken = {
                    let mut r = lock(&self.inner);
                    r.apply(*seq, payload);
                    r.wakes != self.wakes_at_last_poll
                };
                if let EventPayload::TaskStarted {
                    polls: PollPoints::EachResult,
                    ..
                } = payload
                {
                    self.each_result = true;
                }
                if self.each_result {
                    // Polled here, on this event alone, as every replay
                    // of this history polls (the first poll: at TaskStarted).
                    self.need_poll = false;
                    if woken || !self.polled {
                        self.poll();
                    }
                } else {
                    self.need_poll = true;
                }
            }
        }
        if self.need_poll && !self.done {
            // The end of the batch, inside a run of non-command events (or
            // a new instance fed nothing): poll to learn the next commands.
            self.need_poll = false;
            self.poll();
            self.ended_with_sensitive_poll = self.last_poll_sensitive;
        } else if !events.is_empty() {
            self.ended_with_sensitive_poll = false;
        }
        Ok(self.result())
    }

    /// What a replay from the start would answer now.
    fn result(&mut self) -> ReplayResult {
        let mut r = lock(&self.inner);
        if r.nondeterminism.is_none() && (r.next_command as usize) < r.history.len() {
            let recorded = &r.history[r.next_command as usize];
            let nd = NonDeterminism {
                task_id: r.task_id.clone(),
                seq: recorded.seq,
                expected: describe_recorded(&recorded.payload),
                found: if self.finished.is_some() {
                    "no further command (the workflow returned)".to_string()
                } else {
                    "no further command (the workflow is waiting)".to_string()
                },
            };
            r.nondeterminism = Some(nd);
            self.done = true;
        }
        let nd = r.nondeterminism.clone();
        ReplayResult {
            finished: if nd.is_some() {
                None
            } else {
                self.finished.clone()
            },
            new_commands: if nd.is_some() {
                Vec::new()
            } else {
                r.new_commands.iter().cloned().collect()
            },
            nondeterminism: nd,
            commands_issued: r.next_command,
        }
    }
}

/// The event of `history` with this seq (histories number from 1 without gaps).
fn event_at(history: &[super::event::Event], seq: i64) -> Option<&super::event::Event> {
    let i = usize::try_from(seq).ok()?.checked_sub(1)?;
    history.get(i).filter(|e| e.seq == seq).or_else(|| {
        history
            .binary_search_by_key(&seq, |e| e.seq)
            .ok()
            .map(|i| &history[i])
    })
}

/// Runs `workflow` against a history (`events`: seq and payload, in order, which
/// may end with events decided but not yet appended). `now_ms` is what new
/// markers record. Never performs a side effect.
pub fn replay(
    workflow: &dyn Workflow,
    task_id: &str,
    input: &Value,
    events: &[(i64, &EventPayload)],
    now_ms: i64,
) -> ReplayResult {
    let mut instance = WorkflowInstance::new(workflow, task_id, input, events.first().map(|e| e.1));
    instance
        .feed(events, i64::MAX, now_ms)
        .expect("a new instance fed one batch is always usable")
}

/// Workflows by name.
#[derive(Clone, Default)]
pub struct WorkflowRegistry {
    workflows: HashMap<String, Arc<dyn Workflow>>,
}

impl WorkflowRegistry {
    pub fn new() -> Self {
        Self::default()
    }
    /// Registers a workflow; a later registration under the same name replaces the earlier.
    pub fn register(&mut self, workflow: impl Workflow) -> &mut Self {
        self.workflows
            .insert(workflow.name().to_string(), Arc::new(workflow));
        self
    }
    pub fn get(&self, name: &str) -> Option<Arc<dyn Workflow>> {
        self.workflows.get(name).cloned()
    }
    /// Sorted names.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.workflows.keys().cloned().collect();
        v.sort();
        v
    }
}

/// Re-runs `workflow` against a complete stored history with no side effects and
/// checks that the code issues exactly the recorded commands and, where the
/// history says the workflow returned, returns the same result.
pub fn check_history(
    workflow: &dyn Workflow,
    history: &[super::event::Event],
) -> Result<(), NonDeterminism> {
    if history.is_empty() {
        return Ok(());
    }
    check_folded_history(workflow, history, &super::state::TaskState::fold(history))
}

/// [`check_history`] for a caller that has folded `history` into `state`
/// already (an audit does), so it is not folded twice.
pub fn check_folded_history(
    workflow: &dyn Workflow,
    history: &[super::event::Event],
    state: &super::state::TaskState,
) -> Result<(), NonDeterminism> {
    let Some(first) = history.first() else {
        return Ok(());
    };
    let recorded_end = history.iter().find_map(|e| match &e.payload {
        EventPayload::TaskCompleted { output } => Some((e.seq, Ok(output.clone()))),
        EventPayload::WorkflowFailed { error } => Some((e.seq, Err(error.clone()))),
        _ => None,
    });
    // The code never saw what was recorded after it returned (results of
    // attempts still running when it failed, the rollback): with batch
    // polls those results would join the run it last saw.
    let end_seq = recorded_end.as_ref().map_or(i64::MAX, |(seq, _)| *seq);
    let events: Vec<(i64, &EventPayload)> = history
        .iter()
        .take_while(|e| e.seq <= end_seq)
        .map(|e| (e.seq, &e.payload))
        .collect();
    let r = replay(
        workflow,
        &first.task_id,
        &state.input,
        &events,
        state.updated_at_ms,
    );
    if let Some(nd) = r.nondeterminism {
        return Err(nd);
    }
    let Some((seq, recorded)) = recorded_end else {
        return Ok(());
    };
    let mismatch = |found: String| NonDeterminism {
        task_id: first.task_id.clone(),
        seq,
        expected: match &recorded {
            Ok(v) => format!("the workflow returned {v}"),
            Err(e) => format!("the workflow failed: {e}"),
        },
        found,
    };
    if let Some(c) = r.new_commands.first() {
        return Err(mismatch(format!("a further command: {}", c.describe())));
    }
    match (&recorded, r.finished) {
        (Ok(a), Some(Ok(b))) if *a == b => Ok(()),
        (Err(a), Some(Err(b))) if *a == b.message => Ok(()),
        // Limits turn an over-large output into a failure; the code itself succeeded.
        (Err(a), Some(Ok(_))) if a.contains("payload limit") || a.contains("commands") => Ok(()),
        (_, Some(Ok(v))) => Err(mismatch(format!("the workflow returned {v}"))),
        (_, Some(Err(e))) => Err(mismatch(format!("the workflow failed: {}", e.message))),
        (_, None) => Err(mismatch("the workflow still waiting".to_string())),
    }
}
