//! Workers: claim ready tasks with leases, and drive each claimed task with one
//! tokio task (its driver) that loops load → decide → append → dispatch.
//!
//! A driver is the only writer of its task inside this process; across
//! processes the lease and the seq fence keep it that way (a stale driver's
//! append conflicts, and it reloads). A driver holds its task while attempts run
//! or a short timer is due, and otherwise gives it back to the queue.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::tool::ToolContext;
use futures::FutureExt;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;

use super::client::load_verified_sized;
use super::history::{over_budget, sealed_len};
use super::{ActiveTask, Handoff, Shared};
use crate::core::decide::{self, Action, AttemptOutcome, DecideInput, Target};
use crate::core::event::{self, Event, EventPayload, NewEvent, RecordedError};
use crate::core::state::TaskState;
use crate::core::workflow::WorkflowInstance;
use crate::store::{AppendOutcome, AppendRequest, LeaseUpdate};

/// How a worker behaves.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Lease owner id; unique per process.
    pub id: String,
    /// How long a claim holds a task without renewal. After a crash, other
    /// workers take the task over once this has passed.
    pub lease_ms: i64,
    /// Longest sleep of an idle worker between looks at the queue (the fallback
    /// when no wake-up arrives: another SQLite process, a missed NOTIFY).
    pub poll_interval: Duration,
    /// Most tasks driven at once (bounds memory and in-flight attempts).
    /// 1,000 by default: a burst of 100,000 submissions peaks at 130–170 MB
    /// against 260–280 MB with 10,000 drivers, at the same throughput
    /// (README, Performance).
    pub max_active_tasks: usize,
    /// Most tasks taken per claim.
    pub claim_batch: u32,
    /// A driver keeps an idle task while its next timer is at most this far away.
    pub idle_hold: Duration,
    /// Tasks submitted through this process's engine start on this worker at
    /// once, created already leased to it, instead of waiting for a claim.
    pub eager_start: bool,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            id: format!("w-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]),
            lease_ms: 10_000,
            poll_interval: Duration::from_millis(500),
            max_active_tasks: 1_000,
            claim_batch: 256,
            idle_hold: Duration::from_millis(1_000),
            eager_start: true,
        }
    }
}

/// A running worker. Dropping it does not stop it: call [`WorkerHandle::shutdown`].
pub struct WorkerHandle {
    stop: watch::Sender<bool>,
    done: tokio::task::JoinHandle<()>,
    id: String,
}

impl WorkerHandle {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Stops claiming, stops drivers (their attempts are abandoned: at-least-once
    /// delivery runs them again elsewhere), gives leases back, and waits.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.done.await;
    }
}

pub(crate) fn start(shared: Arc<Shared>, config: WorkerConfig) -> WorkerHandle {
    let (stop, stop_rx) = watch::channel(false);
    let id = config.id.clone();
    let done = tokio::spawn(run(shared, config, stop_rx));
    WorkerHandle { stop, done, id }
}

pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

async fn run(shared: Arc<Shared>, config: WorkerConfig, mut stop: watch::Receiver<bool>) {
    let config = Arc::new(config);
    let wake = shared.store.wakeups();
    let mut drivers: JoinSet<String> = JoinSet::new();
    let renewer = tokio::spawn(renew_leases(shared.clone(), config.clone(), stop.clone()));
    let halts = tokio::spawn(super::halt::watch_halts(shared.clone(), stop.clone()));
    let (adopt, mut adopt_rx) = mpsc::unbounded_channel();
    let reserved = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Tasks created for this worker are only safe once its lease row exists
    // (otherwise a crash would leave them held by a worker that never expires).
    let registered = shared
        .store
        .renew(&config.id, shared.clock.now_ms(), config.lease_ms)
        .await
        .is_ok();
    if config.eager_start && registered {
        *shared.local_worker.lock().expect("local worker") = Some(super::LocalWorker {
            id: config.id.clone(),
            max_active_tasks: config.max_active_tasks,
            adopt,
            reserved: reserved.clone(),
        });
    }
    let mut backoff = Duration::from_millis(50);
    loop {
        if *stop.borrow() {
            break;
        }
        while let Some(done) = drivers.try_join_next() {
            if let Err(e) = done {
                tracing::error!(error = %e, "a task driver panicked");
            }
        }
        // The room a claim may fill is reserved before it awaits the store,
        // as a submission reserves its own (`Shared::local_worker_with_room`):
        // otherwise submissions arriving meanwhile would see the same room.
        let (free, limit) = {
            let active = shared.active.lock().expect("active map");
            let taken = active.len().max(drivers.len()) + reserved.load(Ordering::SeqCst);
            let free = config.max_active_tasks.saturating_sub(taken);
            let limit = (free as u32).min(config.claim_batch);
            reserved.fetch_add(limit as usize, Ordering::SeqCst);
            (free, limit)
        };
        let mut claimed_full = false;
        if limit > 0 {
            let now = shared.clock.now_ms();
            let claimed = shared
                .store
                .claim(&config.id, now, config.lease_ms, limit)
                .await;
            if let Ok(ids) = &claimed {
                for task_id in ids {
                    spawn_driver(&shared, &config, &stop, &mut drivers, task_id.clone(), None);
                }
            }
            reserved.fetch_sub(limit as usize, Ordering::SeqCst);
            match claimed {
                Ok(ids) => {
                    backoff = Duration::from_millis(50);
                    claimed_full = ids.len() as u32 == limit;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "claiming work failed; backing off");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stopped(&mut stop) => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
        }
        if claimed_full {
            continue;
        }
        let now = shared.clock.now_ms();
        let mut sleep_for = config.poll_interval;
        if free > 0
            && let Ok(Some(next)) = shared.store.next_ready_at().await
        {
            sleep_for = sleep_for.min(Duration::from_millis((next - now).max(0) as u64));
        }
        tokio::select! {
            _ = wake.notified() => {}
            Some((task_id, handoff)) = adopt_rx.recv() => {
                // Each adopted task's room was reserved by its submission:
                // now that its driver is in `active`, give the reservation back.
                spawn_driver(&shared, &config, &stop, &mut drivers, task_id, Some(handoff));
                reserved.fetch_sub(1, Ordering::SeqCst);
                while let Ok((task_id, handoff)) = adopt_rx.try_recv() {
                    spawn_driver(&shared, &config, &stop, &mut drivers, task_id, Some(handoff));
                    reserved.fetch_sub(1, Ordering::SeqCst);
                }
            }
            _ = tokio::time::sleep(sleep_for) => {}
            Some(done) = drivers.join_next(), if !drivers.is_empty() => {
                if let Err(e) = done { tracing::error!(error = %e, "a task driver panicked"); }
            }
            _ = stopped(&mut stop) => break,
        }
    }
    *shared.local_worker.lock().expect("local worker") = None;
    while drivers.join_next().await.is_some() {}
    renewer.abort();
    halts.abort();
}

/// Starts a driver for a task this worker holds the lease of (claimed, or
/// created leased to it, with the history its submission appended), unless
/// one is running already.
fn spawn_driver(
    shared: &Arc<Shared>,
    config: &Arc<WorkerConfig>,
    stop: &watch::Receiver<bool>,
    drivers: &mut JoinSet<String>,
    task_id: String,
    handoff: Option<Handoff>,
) {
    let poke = Arc::new(Notify::new());
    let last_seq = Arc::new(AtomicI64::new(0));
    let reclaimed = Arc::new(AtomicBool::new(false));
    {
        let mut active = shared.active.lock().expect("active map");
        if let Some(a) = active.get(&task_id) {
            // A driver is still running: it may have released the lease and be
            // on its way out. Tell it to look again before it goes.
            a.reclaimed.store(true, Ordering::SeqCst);
            a.poke.notify_one();
            return;
        }
        active.insert(
            task_id.clone(),
            ActiveTask {
                poke: poke.clone(),
                last_seq: last_seq.clone(),
                reclaimed: reclaimed.clone(),
            },
        );
        shared.peak_active.fetch_max(active.len(), Ordering::SeqCst);
    }
    let driver = Driver {
        shared: shared.clone(),
        config: config.clone(),
        task_id: task_id.clone(),
        poke,
        seen_seq: last_seq,
        reclaimed,
        stop: stop.clone(),
        history_bytes: AtomicU64::new(0),
        handoff,
    };
    drivers.spawn(async move {
        driver.run().await;
        task_id
    });
}

/// Extends this worker's leases every third of the lease, and pokes drivers
/// whose task changed under them (signals from other processes).
async fn renew_leases(
    shared: Arc<Shared>,
    config: Arc<WorkerConfig>,
    mut stop: watch::Receiver<bool>,
) {
    let every = Duration::from_millis((config.lease_ms / 3).max(50) as u64);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopped(&mut stop) => return,
        }
        let now = shared.clock.now_ms();
        match shared.store.renew(&config.id, now, config.lease_ms).await {
            Ok(held) => {
                let active = shared.active.lock().expect("active map");
                for (task_id, last_seq) in held {
                    if let Some(a) = active.get(&task_id)
                        && a.last_seq.load(Ordering::SeqCst) < last_seq
                    {
                        a.poke.notify_one();
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "renewing leases failed"),
        }
    }
}

struct Driver {
    shared: Arc<Shared>,
    config: Arc<WorkerConfig>,
    task_id: String,
    poke: Arc<Notify>,
    seen_seq: Arc<AtomicI64>,
    reclaimed: Arc<AtomicBool>,
    stop: watch::Receiver<bool>,
    /// Bytes the history last loaded or appended takes from its budget.
    history_bytes: AtomicU64,
    /// The history to start from instead of the first load (see [`Handoff`]).
    handoff: Option<Handoff>,
}

enum Loaded {
    Ok(Vec<Event>),
    Gone,
}

impl Driver {
    async fn run(mut self) {
        loop {
            self.drive().await;
            let mut active = self.shared.active.lock().expect("active map");
            // Claimed again meanwhile (under this same lock): drive again
            // rather than leave the claim without a driver.
            if self.reclaimed.swap(false, Ordering::SeqCst) && !*self.stop.borrow() {
                continue;
            }
            active.remove(&self.task_id);
            return;
        }
    }

    async fn load(&self) -> Loaded {
        let mut backoff = Duration::from_millis(20);
        for _ in 0..8 {
            match load_verified_sized(self.shared.store.as_ref(), &self.task_id).await {
                Ok((h, bytes)) => {
                    self.history_bytes.store(bytes, Ordering::SeqCst);
                    return Loaded::Ok(h);
                }
                Err(super::Error::Corrupt { source, .. }) => {
                    tracing::error!(task_id = %self.task_id, error = %source, "history chain is broken; task halted");
                    let _ = self
                        .shared
                        .store
                        .quarantine(&self.task_id, &format!("broken history chain: {source}"))
                        .await;
                    return Loaded::Gone;
                }
                Err(super::Error::Unparseable { message, .. }) => {
                    tracing::error!(task_id = %self.task_id, error = %message, "history does not parse; task halted");
                    let _ = self.shared.store.quarantine(&self.task_id, &message).await;
                    return Loaded::Gone;
                }
                Err(super::Error::TaskNotFound { .. }) => return Loaded::Gone,
                Err(e) => {
                    tracing::warn!(task_id = %self.task_id, error = %e, "loading history failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
            }
        }
        Loaded::Gone
    }

    async fn drive(&mut self) {
        let start = match self.handoff.take() {
            Some(h) => {
                self.history_bytes.store(h.bytes, Ordering::SeqCst);
                Loaded::Ok(h.history)
            }
            None => self.load().await,
        };
        let Loaded::Ok(mut history) = start else {
            return;
        };
        let mut state = TaskState::fold(&history);
        self.seen_seq.store(state.last_seq, Ordering::SeqCst);
        let inherited = inherited_attempts(&state);
        let workflow = self.shared.workflows.get(&state.workflow);
        let (tx, mut rx) = mpsc::unbounded_channel::<AttemptOutcome>();
        let mut running: HashMap<Target, (u32, tokio::task::AbortHandle)> = HashMap::new();
        let mut outcomes: Vec<AttemptOutcome> = Vec::new();
        let mut store_backoff = Duration::from_millis(20);
        let owner = self.config.id.clone();
        // The workflow's code between decisions, fed only the new events:
        // kept while every event it was fed is appended (`decide_with`
        // checks it against the history and replays from the start when not).
        let mut instance: Option<WorkflowInstance> = None;
        loop {
            let now = self.shared.clock.now_ms();
            let before_seq = state.last_seq;
            let before_hash = state.last_hash.clone();
            let before_timers = state.pending_timers();
            let halt = self.shared.halt_for(state.agent.as_deref());
            let preapprovals = self.shared.live_preapprovals();
            let mut decision = decide::decide_with(
                &DecideInput {
                    history: &history,
                    now_ms: now,
                    outcomes: &outcomes,
                    workflow: workflow.as_deref(),
                    tools: &self.shared.tools,
                    gateway: self.shared.gateway.as_ref(),
                    preapprovals: &preapprovals,
                    worker: &owner,
                    limits: &self.shared.limits,
                    halt: halt.as_ref(),
                    inherited: &inherited,
                },
                std::mem::take(&mut state),
                instance.take(),
            );
            // Sealed once: the same canonical payloads give the hashes and
            // the bytes the budget counts.
            // The payloads move into the events kept (`decision.events` is
            // empty after this).
            let seal = |events: Vec<NewEvent>| {
                let (events, raws): (Vec<Event>, Vec<_>) =
                    event::seal_owned(&self.task_id, before_seq, &before_hash, now, events)
                        .into_iter()
                        .unzip();
                let added = sealed_len(&raws);
                (events, raws, added)
            };
            let (mut new_events, mut raws, mut added) = seal(std::mem::take(&mut decision.events));
            if let Some(blocked) = self.over_budget(&history, &decision, added, now) {
                decision = blocked;
                (new_events, raws, added) = seal(std::mem::take(&mut decision.events));
            }
            if !new_events.is_empty() {
                // Fed this decision's events: good only once they are appended.
                let fed = decision.instance.take();
                let after = decision.state;
                // An attempt still current keeps the task held even when no
                // new one may start (a pause or a halt just recorded): its
                // result must be recorded, not hung up on.
                let still_running = running
                    .iter()
                    .any(|(t, (attempt, _))| decide::attempt_is_current(&after, *t, *attempt));
                let idle = decide::due(&after, now).next().is_none() && !still_running;
                let far = decide::next_wake(&after, now)
                    .is_none_or(|t| t - now > self.config.idle_hold.as_millis() as i64);
                let release = after.is_final() || after.blocked.is_some() || (idle && far);
                let timers_after = after.pending_timers();
                let timers = (timers_after != before_timers).then_some(timers_after);
                let projection = decide::projection(&after, now);
                let status = projection.status;
                let request = AppendRequest {
                    task_id: self.task_id.clone(),
                    expected_seq: before_seq,
                    events: raws,
                    projection,
                    timers,
                    create: None,
                    lease: if release {
                        LeaseUpdate::Release {
                            owner: owner.clone(),
                        }
                    } else {
                        LeaseUpdate::Hold {
                            owner: owner.clone(),
                        }
                    },
                    wake: release,
                };
                match self.shared.store.append(request).await {
                    Ok(AppendOutcome::Appended) => {
                        store_backoff = Duration::from_millis(20);
                        self.history_bytes.fetch_add(added, Ordering::SeqCst);
                        history.extend(new_events);
                        instance = fed.map(|mut i| {
                            i.confirm(&history);
                            i
                        });
                        let mut after = after;
                        after.last_hash =
                            history.last().map(|e| e.hash.clone()).unwrap_or_default();
                        state = after;
                        outcomes.clear();
                        self.seen_seq.store(state.last_seq, Ordering::SeqCst);
                        self.shared.publish(&self.task_id, state.last_seq, status);
                        if release {
                            abort_all(&mut running);
                            return;
                        }
                    }
                    Ok(AppendOutcome::Conflict { .. }) => {
                        // Someone else appended (a signal, a cancel, another worker):
                        // rebuild from the store; stale outcomes are fenced by decide.
                        let Loaded::Ok(h) = self.load().await else {
                            abort_all(&mut running);
                            return;
                        };
                        history = h;
                        state = TaskState::fold(&history);
                        self.seen_seq.store(state.last_seq, Ordering::SeqCst);
                        continue;
                    }
                    Ok(AppendOutcome::LeaseLost { holder }) => {
                        // This worker stalled past its lease (or gave the task
                        // back in a commit reported failed) and the task is
                        // someone else's now: stop, writing nothing.
                        tracing::info!(task_id = %self.task_id, holder = ?holder, "lease lost; leaving the task to its holder");
                        abort_all(&mut running);
                        return;
                    }
                    Ok(AppendOutcome::DuplicateIdempotencyKey { .. }) => {
                        unreachable!("drivers never create tasks")
                    }
                    Err(e) => {
                        // Possibly an ambiguous commit: back off and rebuild from the store.
                        tracing::warn!(task_id = %self.task_id, error = %e, "append failed; reloading");
                        tokio::time::sleep(store_backoff).await;
                        store_backoff = (store_backoff * 2).min(Duration::from_secs(5));
                        let Loaded::Ok(h) = self.load().await else {
                            abort_all(&mut running);
                            return;
                        };
                        history = h;
                        state = TaskState::fold(&history);
                        continue;
                    }
                }
            } else {
                state = decision.state;
                instance = decision.instance;
                outcomes.clear();
            }
            if state.is_final() || state.blocked.is_some() {
                abort_all(&mut running);
                let _ = self
                    .shared
                    .store
                    .release(&self.task_id, &owner, state.last_seq)
                    .await;
                return;
            }
            let now = self.shared.clock.now_ms();
            // Attempts no longer wanted (resolved elsewhere, superseded, task
            // final) stop; a pause lets running attempts finish.
            running.retain(|target, (attempt, handle)| {
                let keep = decide::attempt_is_current(&state, *target, *attempt);
                if !keep {
                    handle.abort();
                }
                keep
            });
            // Only the attempts not running yet are built (their inputs
            // copied): a wide stage costs no copies per decision.
            for d in decide::due(&state, now) {
                if running.contains_key(&d.target) {
                    continue;
                }
                if let Some(a) = decide::action(&state, d) {
                    running.insert(d.target, (d.attempt, self.dispatch(a, tx.clone())));
                }
            }
            let wake_at = decide::next_wake(&state, now);
            if running.is_empty() {
                let near =
                    wake_at.is_some_and(|t| t - now <= self.config.idle_hold.as_millis() as i64);
                if !near {
                    match self
                        .shared
                        .store
                        .release(&self.task_id, &owner, state.last_seq)
                        .await
                    {
                        Ok(true) => return,
                        Ok(false)
                            if self
                                .shared
                                .store
                                .get_task(&self.task_id)
                                .await
                                .is_ok_and(|t| {
                                    t.is_none_or(|t| t.lease_owner.as_deref() != Some(&owner))
                                }) =>
                        {
                            // Not ours any more (released by an append whose
                            // commit was reported failed, or taken over): stop.
                            return;
                        }
                        _ => {
                            // Something was appended meanwhile: look again.
                            let Loaded::Ok(h) = self.load().await else {
                                return;
                            };
                            history = h;
                            state = TaskState::fold(&history);
                            continue;
                        }
                    }
                }
            }
            let sleep = wake_at.map(|t| Duration::from_millis((t - now).max(0) as u64));
            let mut stop = self.stop.clone();
            tokio::select! {
                Some(o) = rx.recv() => {
                    running.remove(&o.target);
                    outcomes.push(o);
                    while let Ok(o) = rx.try_recv() {
                        running.remove(&o.target);
                        outcomes.push(o);
                    }
                }
                _ = self.poke.notified() => {
                    let Loaded::Ok(h) = self.load().await else { abort_all(&mut running); return };
                    history = h;
                    state = TaskState::fold(&history);
                    self.seen_seq.store(state.last_seq, Ordering::SeqCst);
                }
                _ = sleep_opt(sleep) => {}
                _ = stopped(&mut stop) => {
                    abort_all(&mut running);
                    let _ = self.shared.store.release(&self.task_id, &owner, state.last_seq).await;
                    return;
                }
            }
        }
    }

    /// A decision whose events (`added` bytes) would take the history past
    /// its byte budget becomes a block naming the limit (a final decision may
    /// pass it, so that the task can end). `None` when it fits.
    fn over_budget(
        &self,
        history: &[Event],
        decision: &decide::Decision,
        added: u64,
        now: i64,
    ) -> Option<decide::Decision> {
        if decision.state.is_final() {
            return None;
        }
        let have = self.history_bytes.load(Ordering::SeqCst);
        let why = over_budget(have, added, self.shared.limits.max_history_bytes)?;
        let mut state = TaskState::fold(history);
        let payload = EventPayload::TaskBlocked {
            reason: format!("{why}; the task needs a person"),
            at_seq: None,
            expected: None,
            found: None,
        };
        let task_id = state.task_id.clone();
        state.apply(&task_id, state.last_seq + 1, now, &payload);
        Some(decide::Decision {
            events: vec![NewEvent {
                actor: "engine".into(),
                payload,
            }],
            state,
            instance: None,
        })
    }

    /// Runs one attempt on its own tokio task; its outcome comes back on `tx`.
    fn dispatch(
        &self,
        action: Action,
        tx: mpsc::UnboundedSender<AttemptOutcome>,
    ) -> tokio::task::AbortHandle {
        let shared = self.shared.clone();
        let task_id = self.task_id.clone();
        let handle = tokio::spawn(async move {
            let mut action = action;
            let started_at_ms = shared.clock.now_ms();
            let t0 = Instant::now();
            let result = match shared.tools.get(&action.tool) {
                None => Err(RecordedError {
                    message: format!(
                        "tool {:?} is not registered in this worker; known tools: {}",
                        action.tool,
                        shared.tools.names().join(", ")
                    ),
                    retryable: false,
                    effect_unknown: false,
                }),
                Some(tool) => {
                    // A compensation names the step it undoes, so the tool can
                    // fence that step's key against a late (timed-out) attempt.
                    let seq = action.target.seq();
                    let ctx = match action.compensates_step_seq {
                        Some(step_seq) => {
                            ToolContext::compensation(task_id, seq, action.attempt, step_seq)
                        }
                        None => ToolContext::new(task_id, seq, action.attempt),
                    };
                    let input = std::mem::take(&mut action.input);
                    let call = AssertUnwindSafe(tool.call(ctx, input)).catch_unwind();
                    match tokio::time::timeout(Duration::from_millis(action.timeout_ms), call).await
                    {
                        Ok(Ok(Ok(v))) => Ok(v),
                        Ok(Ok(Err(e))) => Err(RecordedError {
                            message: e.message,
                            retryable: e.retryable,
                            effect_unknown: false,
                        }),
                        Ok(Err(_panic)) => Err(RecordedError {
                            message: format!("tool {:?} panicked", action.tool),
                            retryable: false,
                            effect_unknown: true,
                        }),
                        Err(_) => Err(RecordedError {
                            message: format!(
                                "attempt {} timed out after {} ms",
                                action.attempt, action.timeout_ms
                            ),
                            retryable: true,
                            effect_unknown: true,
                        }),
                    }
                }
            };
            // Step latency for /metrics (a no-op unless a recorder is installed).
            metrics::histogram!(
                "mandate_step_attempt_duration_seconds",
                "tool" => action.tool.clone(),
                "outcome" => if result.is_ok() { "ok" } else { "error" },
            )
            .record(t0.elapsed().as_secs_f64());
            let _ = tx.send(AttemptOutcome {
                target: action.target,
                attempt: action.attempt,
                result,
                started_at_ms,
                duration_ms: t0.elapsed().as_millis() as u64,
            });
        });
        handle.abort_handle()
    }
}

/// The step attempts an earlier holder of the task may have started and
/// not seen through: the next attempt of every step open at load. A worker
/// that stalled past its lease, crashed, or gave the task back while an
/// attempt was running may still have that call going, under the same
/// idempotency key; a stalled worker that resumes may even start one when
/// its backoff ends (it can start no *new* step: that needs an append, which
/// the lease fence refuses). Cautious for a task given back while waiting
/// out a long backoff, where no attempt was out: its step, if it then fails
/// for good, is compensated though it applied nothing (the fence makes that
/// safe).
fn inherited_attempts(state: &TaskState) -> HashMap<i64, u32> {
    state
        .open_steps()
        .map(|s| (s.seq, s.next_attempt()))
        .collect()
}

fn abort_all(running: &mut HashMap<Target, (u32, tokio::task::AbortHandle)>) {
    for (_, (_, h)) in running.drain() {
        h.abort();
    }
}

async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}
