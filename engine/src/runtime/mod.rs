//! The shell: the engine's client API (submit, signal, cancel, pause), the
//! workers that advance tasks (claim → load → decide → append → dispatch), and
//! the clock.
//!
//! Nothing in memory is needed to continue a task: a driver's cached history is
//! an optimisation, rebuilt from the store after any conflict or restart.

mod client;
mod governance;
mod halt;
mod history;
mod routing;
mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicI64;

use crate::tool::ToolRegistry;
use tokio::sync::{Notify, broadcast};

use crate::core::gateway::{Gateway, Preapproval};
use crate::core::limits::Limits;
use crate::core::state::TaskStatus;
use crate::core::workflow::WorkflowRegistry;
use crate::store::Store;

pub use client::{Error, SubmitOptions, Submitted};
pub use governance::{
    ApprovalDecision, ApprovalRecorded, ApprovalTarget, EditPreview, INBOX_SCAN_LIMIT,
    MAX_COMMENT_CHARS, MAX_PREAPPROVAL_MS, PreapprovalGrant,
};
pub use halt::{HALT_REFRESH, Lifted};
pub use history::{HistoryPage, MAX_HISTORY_PAGE, MAX_HISTORY_PAGE_BYTES};
pub use routing::{
    ActionRecorded, MAX_NOTE_CHARS, MAX_REPORT_CLOCK_SKEW_MS, MAX_REPORT_TEXT_CHARS,
    NotificationResponse, RESPONSE_ACTIONS, ReportedAction,
};
pub use worker::{WorkerConfig, WorkerHandle};

/// Where time comes from (injected, so tests and replays control it).
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// A change to a task, published after each append this process made.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskUpdate {
    pub task_id: String,
    pub last_seq: i64,
    pub status: TaskStatus,
}

/// A task a local worker is driving: how to poke it, and what it has seen.
pub(crate) struct ActiveTask {
    pub poke: Arc<Notify>,
    pub last_seq: Arc<AtomicI64>,
    /// Set (under the `active` lock) when the worker claimed the task again
    /// while this driver ran, possibly after it released the lease and was
    /// about to exit: the driver must then drive once more instead of leaving
    /// a claimed task with no driver.
    pub reclaimed: Arc<std::sync::atomic::AtomicBool>,
}

pub(crate) struct Shared {
    pub store: Arc<dyn Store>,
    pub workflows: WorkflowRegistry,
    pub tools: ToolRegistry,
    pub limits: Limits,
    pub clock: Arc<dyn Clock>,
    pub active: Mutex<HashMap<String, ActiveTask>>,
    /// The most entries `active` has held at once (see [`Engine::drivers`]).
    pub peak_active: std::sync::atomic::AtomicUsize,
    pub updates: broadcast::Sender<TaskUpdate>,
    /// The worker running in this process, if any: submissions start on it
    /// directly (eager start).
    pub local_worker: Mutex<Option<LocalWorker>>,
    /// The halts in force, as last read (see `halt`).
    pub halts: std::sync::RwLock<Vec<crate::store::HaltRow>>,
    /// The governance every step passes.
    pub gateway: Arc<dyn Gateway>,
    /// The pre-approvals in force, as last read (see `governance`).
    pub preapprovals: std::sync::RwLock<Arc<Vec<Preapproval>>>,
}

/// How to hand a freshly created task to this process's worker.
#[derive(Clone)]
pub(crate) struct LocalWorker {
    pub id: String,
    pub max_active_tasks: usize,
    pub adopt: tokio::sync::mpsc::UnboundedSender<(String, Handoff)>,
    /// Room taken by submissions not yet driven: counted when a submission
    /// finds room, given back when the worker has started its driver (or
    /// the submission ends without handing it over). Without it every
    /// submission in flight saw the same free room, and a burst started far
    /// more drivers than `max_active_tasks`.
    pub reserved: Arc<std::sync::atomic::AtomicUsize>,
}

/// The history a submission just appended, handed to the driver that
/// adopts the task so that it starts without reading it back. Only a
/// start: if anything was appended since, the driver's first append fails
/// its seq fence and the driver reloads from the store.
#[derive(Debug)]
pub(crate) struct Handoff {
    pub history: Vec<crate::core::event::Event>,
    /// The bytes those events take from the history's budget.
    pub bytes: u64,
}

/// Room reserved in the local worker for one submission ([`Shared::local_worker_with_room`]);
/// given back on drop unless [`Adoption::handed_over`] passed it to the worker.
pub(crate) struct Adoption {
    pub worker: LocalWorker,
    armed: bool,
}

impl Adoption {
    /// Hands the task to the worker, which gives the room back once its
    /// driver runs. False (and the room given back) if the worker is gone.
    pub(crate) fn handed_over(mut self, task_id: String, handoff: Handoff) -> bool {
        let sent = self.worker.adopt.send((task_id, handoff)).is_ok();
        self.armed = !sent;
        sent
    }
}

impl Drop for Adoption {
    fn drop(&mut self) {
        if self.armed {
            self.worker
                .reserved
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

impl Shared {
    /// Wakes the local driver of a task, if any (after an outside append).
    pub(crate) fn poke(&self, task_id: &str) {
        if let Some(a) = self
            .active
            .lock()
            .expect("active map poisoned")
            .get(task_id)
        {
            a.poke.notify_one();
        }
    }

    /// The local worker, if it has room for one more task, with that room
    /// reserved (checked and taken under the `active` lock, so concurrent
    /// submissions cannot all take the last free place).
    pub(crate) fn local_worker_with_room(&self) -> Option<Adoption> {
        let w = self.local_worker.lock().expect("local worker").clone()?;
        let active = self.active.lock().expect("active map");
        let reserved = w.reserved.load(std::sync::atomic::Ordering::SeqCst);
        if active.len() + reserved >= w.max_active_tasks {
            return None;
        }
        w.reserved.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        drop(active);
        Some(Adoption {
            worker: w,
            armed: true,
        })
    }

    pub(crate) fn publish(&self, task_id: &str, last_seq: i64, status: TaskStatus) {
        let _ = self.updates.send(TaskUpdate {
            task_id: task_id.to_string(),
            last_seq,
            status,
        });
    }
}

/// The engine: a store, the workflows and tools this binary knows, and limits.
/// Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    pub(crate) shared: Arc<Shared>,
}

impl Engine {
    /// An engine whose every step passes `gateway` (there is no engine
    /// without one).
    pub fn new(
        store: Arc<dyn Store>,
        workflows: WorkflowRegistry,
        tools: ToolRegistry,
        gateway: Arc<dyn Gateway>,
    ) -> Self {
        Self::with_options(
            store,
            workflows,
            tools,
            gateway,
            Limits::default(),
            Arc::new(SystemClock),
        )
    }

    pub fn with_options(
        store: Arc<dyn Store>,
        workflows: WorkflowRegistry,
        tools: ToolRegistry,
        gateway: Arc<dyn Gateway>,
        limits: Limits,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let (updates, _) = broadcast::channel(4096);
        Self {
            shared: Arc::new(Shared {
                store,
                workflows,
                tools,
                limits,
                clock,
                active: Mutex::new(HashMap::new()),
                peak_active: std::sync::atomic::AtomicUsize::new(0),
                updates,
                local_worker: Mutex::new(None),
                halts: std::sync::RwLock::new(Vec::new()),
                gateway,
                preapprovals: std::sync::RwLock::new(Arc::new(Vec::new())),
            }),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.shared.store
    }
    /// Task drivers running in this process now, and the most that ran at
    /// once since it started (bounded by the worker's `max_active_tasks`).
    pub fn drivers(&self) -> (usize, usize) {
        let now = self.shared.active.lock().expect("active map").len();
        (
            now,
            self.shared
                .peak_active
                .load(std::sync::atomic::Ordering::SeqCst),
        )
    }
    pub fn workflows(&self) -> &WorkflowRegistry {
        &self.shared.workflows
    }
    pub fn tools(&self) -> &ToolRegistry {
        &self.shared.tools
    }
    pub fn gateway(&self) -> &Arc<dyn Gateway> {
        &self.shared.gateway
    }
    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }
    pub fn now_ms(&self) -> i64 {
        self.shared.clock.now_ms()
    }

    /// Updates of tasks this process appended to.
    pub fn subscribe(&self) -> broadcast::Receiver<TaskUpdate> {
        self.shared.updates.subscribe()
    }

    /// Starts a worker that claims and advances tasks until stopped.
    pub fn start_worker(&self, config: WorkerConfig) -> WorkerHandle {
        worker::start(self.shared.clone(), config)
    }
}
