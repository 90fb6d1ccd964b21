//! Seeded fault injection: which faults a run enables, the pure decision of
//! whether one fires, and the wrappers that inject them — [`FaultyStore`]
//! around the engine's store and [`FaultyTool`] around the demo tools.
//!
//! A decision is a pure function of (seed, a stable identity, an attempt or
//! try number, the fault kind): no clock, no shared random state. The same
//! seed therefore injects the same faults into the same calls, in any process
//! and after any restart. Identities are chosen to be stable across runs: a
//! tool call is named by its input's `key` (unique per task and step), a store
//! append by the task's idempotency key (`stress-<index>`) and the seq it
//! expects. Only *which* appends exist depends on timing (how parallel steps
//! interleave), so the store schedule is reproducible per history shape.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use mandate_activities::{Tool, ToolContext, ToolError, ToolKind, ToolResult};
use mandate_engine::core::chain::RawEvent;
use mandate_engine::core::state::{PendingTimer, TaskStatus};
use mandate_engine::store::{
    AppendOutcome, AppendRequest, Backend, Error, GlobalEvent, HaltRow, Store, TaskFilter, TaskRow,
    TokenRow, WriterStats,
};
use serde_json::{Value, json};
use tokio::sync::Notify;

/// Every kind of fault the stress run can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// A tool attempt fails with a retryable error before doing anything.
    ToolRetryable,
    /// A tool attempt fails with a non-retryable error: the task rolls back.
    ToolTerminal,
    /// A tool attempt sleeps past its step timeout (the engine times it out).
    /// On a write step the attempt also leaves a *zombie*: a detached call
    /// of the real tool, with the attempt's context, that applies at a
    /// seeded moment before or after the engine gave up on it (possibly
    /// after the step's compensation ran, which must then fence it off).
    ToolTimeout,
    /// A tool attempt never returns (the engine times it out).
    ToolHang,
    /// A tool call is delivered twice at once with the same context.
    Duplicate,
    /// A store append fails before anything is committed.
    StoreBeforeCommit,
    /// A store append commits, then reports an error (an ambiguous commit).
    StoreAfterCommit,
    /// A compensation attempt fails (retryable; rarely for good → escalation).
    CompensationFailure,
    /// The engine process is SIGKILLed and restarted.
    Kill,
    /// A second engine process is SIGSTOPped past its lease, then resumed.
    LeaseExpiry,
}

impl FaultKind {
    pub const ALL: [FaultKind; 10] = [
        FaultKind::ToolRetryable,
        FaultKind::ToolTerminal,
        FaultKind::ToolTimeout,
        FaultKind::ToolHang,
        FaultKind::Duplicate,
        FaultKind::StoreBeforeCommit,
        FaultKind::StoreAfterCommit,
        FaultKind::CompensationFailure,
        FaultKind::Kill,
        FaultKind::LeaseExpiry,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::ToolRetryable => "tool-retryable",
            FaultKind::ToolTerminal => "tool-terminal",
            FaultKind::ToolTimeout => "tool-timeout",
            FaultKind::ToolHang => "tool-hang",
            FaultKind::Duplicate => "duplicate",
            FaultKind::StoreBeforeCommit => "store-before-commit",
            FaultKind::StoreAfterCommit => "store-after-commit",
            FaultKind::CompensationFailure => "compensation-failure",
            FaultKind::Kill => "kill",
            FaultKind::LeaseExpiry => "lease-expiry",
        }
    }

    /// Chance, in parts per million, that the fault fires at one decision point.
    fn rate_ppm(self) -> u64 {
        match self {
            FaultKind::ToolRetryable => 60_000,
            FaultKind::ToolTerminal => 8_000,
            FaultKind::ToolTimeout => 10_000,
            FaultKind::ToolHang => 5_000,
            FaultKind::Duplicate => 50_000,
            FaultKind::StoreBeforeCommit => 20_000,
            FaultKind::StoreAfterCommit => 20_000,
            FaultKind::CompensationFailure => 100_000,
            FaultKind::Kill | FaultKind::LeaseExpiry => 0,
        }
    }

    fn parse(s: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// The set of enabled faults, parsed from `--faults` (comma separated; `all`, `none`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultSet(Vec<FaultKind>);

impl FaultSet {
    pub fn all() -> FaultSet {
        FaultSet(FaultKind::ALL.to_vec())
    }

    pub fn contains(&self, kind: FaultKind) -> bool {
        self.0.contains(&kind)
    }

    /// The list in `--faults` syntax.
    pub fn to_arg(&self) -> String {
        if self.0.is_empty() {
            return "none".into();
        }
        self.0
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl std::str::FromStr for FaultSet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "all" => return Ok(FaultSet::all()),
            "none" | "" => return Ok(FaultSet(Vec::new())),
            _ => {}
        }
        let mut kinds = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let kind = FaultKind::parse(part).ok_or_else(|| {
                format!(
                    "unknown fault {part:?}; known: all, none, {}",
                    FaultKind::ALL.map(|k| k.as_str()).join(", ")
                )
            })?;
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        kinds.sort();
        Ok(FaultSet(kinds))
    }
}

/// A 64-bit FNV-1a hash finished with splitmix64: stable across builds and
/// platforms (std's hashers are not), and good enough to spread decisions.
fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.iter().chain(std::iter::once(&0xff)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Whether `kind` fires for `identity` at `attempt` under `seed`.
pub fn fires(seed: u64, identity: &str, attempt: u64, kind: FaultKind) -> bool {
    decide_ppm(seed, identity, attempt, kind.as_str()) < kind.rate_ppm()
}

/// A uniform number in 0..1,000,000 derived from the inputs alone.
pub fn decide_ppm(seed: u64, identity: &str, attempt: u64, what: &str) -> u64 {
    stable_hash(&[
        &seed.to_le_bytes(),
        identity.as_bytes(),
        &attempt.to_le_bytes(),
        what.as_bytes(),
    ]) % 1_000_000
}

/// Counts of injected faults in one process, printed for the parent to add
/// up; also what became of the zombie attempts (`late-*`, [`LateOutcome`]).
#[derive(Default)]
pub struct FaultCounters {
    counts: Mutex<HashMap<&'static str, u64>>,
    /// Zombie calls spawned and not finished yet.
    late_pending: AtomicU64,
}

impl FaultCounters {
    pub fn add(&self, kind: FaultKind) {
        self.add_named(kind.as_str());
    }

    fn add_named(&self, name: &'static str) {
        *self
            .counts
            .lock()
            .expect("fault counters")
            .entry(name)
            .or_default() += 1;
    }

    /// Waits (at most `limit`) until every zombie call has finished, so
    /// their effects are in the world before the checker reads it.
    pub async fn wait_for_late_calls(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.late_pending.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn snapshot(&self) -> Value {
        let counts = self.counts.lock().expect("fault counters");
        let mut m = serde_json::Map::new();
        for (k, v) in counts.iter() {
            m.insert(k.to_string(), json!(v));
        }
        Value::Object(m)
    }
}

/// What a zombie attempt's late call came to, as counted in the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LateOutcome {
    /// Refused: the step's compensation had fenced its key.
    Fenced,
    /// Went through: it applied, or found its effect already recorded.
    WentThrough,
    /// Failed otherwise (a database error).
    Failed,
}

impl LateOutcome {
    /// The counter's name, prefixed `late-` so the report lists it apart.
    pub fn as_str(self) -> &'static str {
        match self {
            LateOutcome::Fenced => "late-fenced",
            LateOutcome::WentThrough => "late-went-through",
            LateOutcome::Failed => "late-failed",
        }
    }
}

/// The longest a zombie waits, from its attempt's start, before calling the
/// real tool: three times the faulted step timeout, so a third land while
/// the attempt is still running and the rest after the engine gave up on it,
/// many after the step's rollback.
pub const LATE_APPLY_MAX_DELAY_MS: u64 = 3 * crate::scenario::FAULTED_STEP_TIMEOUT_MS;

/// The shared fault configuration of one engine process.
pub struct Faults {
    pub seed: u64,
    pub enabled: FaultSet,
    pub counters: FaultCounters,
}

impl Faults {
    fn fire(&self, identity: &str, attempt: u64, kind: FaultKind) -> bool {
        let on = self.enabled.contains(kind) && fires(self.seed, identity, attempt, kind);
        if on {
            self.counters.add(kind);
        }
        on
    }
}

/// Wraps a store; appends fail before or after commit as the seed decides.
///
/// Only appends are faulted: they are where an ambiguous commit matters (the
/// engine must reload and never record a step twice). A task is named by its
/// idempotency key (read once per task and cached), an append by the seq it
/// expects and how often this process has tried that fence before, so a
/// fault never repeats forever.
pub struct FaultyStore {
    inner: Arc<dyn Store>,
    faults: Arc<Faults>,
    labels: Mutex<HashMap<String, String>>,
    tries: Mutex<HashMap<(String, i64), u64>>,
    appends: AtomicU64,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn Store>, faults: Arc<Faults>) -> FaultyStore {
        FaultyStore {
            inner,
            faults,
            labels: Mutex::new(HashMap::new()),
            tries: Mutex::new(HashMap::new()),
            appends: AtomicU64::new(0),
        }
    }

    async fn label(&self, task_id: &str) -> Result<String, Error> {
        if let Some(l) = self.labels.lock().expect("labels").get(task_id) {
            return Ok(l.clone());
        }
        let label = self
            .inner
            .get_task(task_id)
            .await?
            .and_then(|row| row.idempotency_key)
            // Without the run prefix (`<run>/t<index>`): stable across runs.
            .map(|k| k.rsplit_once('/').map_or(k.clone(), |(_, t)| t.to_string()))
            .unwrap_or_else(|| task_id.to_string());
        self.labels
            .lock()
            .expect("labels")
            .insert(task_id.to_string(), label.clone());
        Ok(label)
    }

    async fn faulty_append(&self, request: AppendRequest) -> Result<AppendOutcome, Error> {
        self.appends.fetch_add(1, Ordering::Relaxed);
        if request.create.is_some() {
            return self.inner.append(request).await;
        }
        let label = self.label(&request.task_id).await?;
        let identity = format!("{label}@{}", request.expected_seq);
        let attempt = {
            let mut tries = self.tries.lock().expect("tries");
            let n = tries
                .entry((request.task_id.clone(), request.expected_seq))
                .or_default();
            *n += 1;
            *n
        };
        // Faults on the first two tries of a fence only: a third try always
        // reaches the database, so every task can make progress.
        if attempt <= 2
            && self
                .faults
                .fire(&identity, attempt, FaultKind::StoreBeforeCommit)
        {
            return Err(injected("before commit"));
        }
        let outcome = self.inner.append(request).await?;
        if attempt <= 2
            && outcome == AppendOutcome::Appended
            && self
                .faults
                .fire(&identity, attempt, FaultKind::StoreAfterCommit)
        {
            return Err(injected("after commit (the append was committed)"));
        }
        Ok(outcome)
    }
}

fn injected(when: &str) -> Error {
    Error::Database {
        during: if when.starts_with("before") {
            "append (injected fault before commit)"
        } else {
            "append (injected fault after commit)"
        },
        source: sqlx::Error::Protocol(format!("mandate-stress injected a store error {when}")),
    }
}

impl Store for FaultyStore {
    fn backend(&self) -> Backend {
        self.inner.backend()
    }
    fn append(&self, request: AppendRequest) -> BoxFuture<'_, Result<AppendOutcome, Error>> {
        self.faulty_append(request).boxed()
    }
    fn load_history(&self, task_id: &str) -> BoxFuture<'_, Result<Vec<RawEvent>, Error>> {
        self.inner.load_history(task_id)
    }
    fn get_task(&self, task_id: &str) -> BoxFuture<'_, Result<Option<TaskRow>, Error>> {
        self.inner.get_task(task_id)
    }
    fn find_by_idempotency_key(&self, key: &str) -> BoxFuture<'_, Result<Option<TaskRow>, Error>> {
        self.inner.find_by_idempotency_key(key)
    }
    fn list_tasks(&self, filter: TaskFilter) -> BoxFuture<'_, Result<Vec<TaskRow>, Error>> {
        self.inner.list_tasks(filter)
    }
    fn count_by_status(&self) -> BoxFuture<'_, Result<Vec<(TaskStatus, i64)>, Error>> {
        self.inner.count_by_status()
    }
    fn timers(&self, task_id: &str) -> BoxFuture<'_, Result<Vec<PendingTimer>, Error>> {
        self.inner.timers(task_id)
    }
    fn claim(
        &self,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<String>, Error>> {
        self.inner.claim(owner, now_ms, lease_ms, limit)
    }
    fn renew(
        &self,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> BoxFuture<'_, Result<Vec<(String, i64)>, Error>> {
        self.inner.renew(owner, now_ms, lease_ms)
    }
    fn release(
        &self,
        task_id: &str,
        owner: &str,
        expected_seq: i64,
    ) -> BoxFuture<'_, Result<bool, Error>> {
        self.inner.release(task_id, owner, expected_seq)
    }
    fn quarantine(&self, task_id: &str, reason: &str) -> BoxFuture<'_, Result<(), Error>> {
        self.inner.quarantine(task_id, reason)
    }
    fn next_ready_at(&self) -> BoxFuture<'_, Result<Option<i64>, Error>> {
        self.inner.next_ready_at()
    }
    fn wakeups(&self) -> Arc<Notify> {
        self.inner.wakeups()
    }
    fn writer_stats(&self) -> Arc<WriterStats> {
        self.inner.writer_stats()
    }
    // The API's tables are not under test here: passed through unchanged.
    fn events_after(
        &self,
        after_gseq: i64,
        agent: Option<&str>,
        task: Option<&str>,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<GlobalEvent>, Error>> {
        self.inner.events_after(after_gseq, agent, task, limit)
    }
    fn events_of_type_between(
        &self,
        after_gseq: i64,
        upto_gseq: i64,
        event_type: &str,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<GlobalEvent>, Error>> {
        self.inner
            .events_of_type_between(after_gseq, upto_gseq, event_type, limit)
    }
    fn event_head(&self) -> BoxFuture<'_, Result<i64, Error>> {
        self.inner.event_head()
    }
    fn queue_depth(&self, now_ms: i64) -> BoxFuture<'_, Result<i64, Error>> {
        self.inner.queue_depth(now_ms)
    }
    fn insert_token(&self, token: TokenRow) -> BoxFuture<'_, Result<bool, Error>> {
        self.inner.insert_token(token)
    }
    fn token_by_secret(
        &self,
        secret_sha256: &str,
    ) -> BoxFuture<'_, Result<Option<TokenRow>, Error>> {
        self.inner.token_by_secret(secret_sha256)
    }
    fn list_tokens(&self) -> BoxFuture<'_, Result<Vec<TokenRow>, Error>> {
        self.inner.list_tokens()
    }
    fn revoke_token(&self, name: &str, at_ms: i64) -> BoxFuture<'_, Result<bool, Error>> {
        self.inner.revoke_token(name, at_ms)
    }
    fn insert_halt(&self, halt: HaltRow) -> BoxFuture<'_, Result<(), Error>> {
        self.inner.insert_halt(halt)
    }
    fn lift_halts(
        &self,
        agent: Option<&str>,
        by: &str,
        at_ms: i64,
    ) -> BoxFuture<'_, Result<Vec<HaltRow>, Error>> {
        self.inner.lift_halts(agent, by, at_ms)
    }
    fn halts(&self, active_only: bool, limit: u32) -> BoxFuture<'_, Result<Vec<HaltRow>, Error>> {
        self.inner.halts(active_only, limit)
    }
    fn insert_preapproval(
        &self,
        p: mandate_engine::core::gateway::Preapproval,
    ) -> BoxFuture<'_, Result<(), Error>> {
        self.inner.insert_preapproval(p)
    }
    fn revoke_preapproval(
        &self,
        id: &str,
        by: &str,
        at_ms: i64,
    ) -> BoxFuture<'_, Result<Option<mandate_engine::core::gateway::Preapproval>, Error>> {
        self.inner.revoke_preapproval(id, by, at_ms)
    }
    fn preapprovals(
        &self,
        live_at_ms: Option<i64>,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<mandate_engine::core::gateway::Preapproval>, Error>> {
        self.inner.preapprovals(live_at_ms, limit)
    }

    fn evidence_log(&self) -> mandate_engine::evidence::Log {
        self.inner.evidence_log()
    }

    fn write_extra(
        &self,
        write: Arc<dyn mandate_engine::store::ExtraWrite>,
    ) -> BoxFuture<'_, Result<bool, Error>> {
        self.inner.write_extra(write)
    }
}

/// The role a wrapped tool plays in the stress saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A forward step: retryable / terminal failures, timeouts, hangs, duplicates.
    Step,
    /// A compensation: retryable failures, rarely for good; duplicates.
    Compensation,
}

/// How long a timeout fault sleeps, beyond any step timeout the stress saga uses.
pub const TIMEOUT_FAULT_SLEEP: Duration =
    Duration::from_millis(crate::scenario::FAULTED_STEP_TIMEOUT_MS + 500);

/// Wraps a tool under a new name and injects faults as the seed decides.
///
/// Every fault that fails an attempt fires *before* the inner tool runs, so a
/// failed attempt never leaves an effect (a tool that fails after changing the
/// world would be lying to the engine). Faults fire only on early attempts
/// (1–3), so a retryable fault alone never exhausts a step's retries.
pub struct FaultyTool {
    name: String,
    inner: Arc<dyn Tool>,
    role: Role,
    faults: Arc<Faults>,
}

impl FaultyTool {
    pub fn new(name: &str, inner: Arc<dyn Tool>, role: Role, faults: Arc<Faults>) -> FaultyTool {
        FaultyTool {
            name: name.to_string(),
            inner,
            role,
            faults,
        }
    }

    async fn run(&self, ctx: ToolContext, input: Value) -> ToolResult {
        // The key without its run prefix (`<run>/t<task>-<step>`), so the
        // same seed gives the same schedule in every run.
        let key = input.get("key").and_then(Value::as_str).unwrap_or("?");
        let identity = format!(
            "{}/{}",
            key.rsplit_once('/').map_or(key, |(_, k)| k),
            match self.role {
                Role::Step => "step",
                Role::Compensation => "undo",
            }
        );
        let attempt = u64::from(ctx.attempt);
        let f = &self.faults;
        match self.role {
            Role::Step => {
                if attempt == 1 && f.fire(&identity, attempt, FaultKind::ToolTerminal) {
                    return Err(ToolError::non_retryable(format!(
                        "{}: injected terminal failure",
                        self.name
                    )));
                }
                // A hang applies nothing: the engine drops the attempt.
                if attempt <= 2 && f.fire(&identity, attempt, FaultKind::ToolHang) {
                    futures::future::pending::<()>().await;
                }
                if attempt <= 2 && f.fire(&identity, attempt, FaultKind::ToolTimeout) {
                    // A write's timed-out attempt is a zombie: the real call
                    // still happens, at a seeded moment, possibly after the
                    // step was rolled back. Its compensation's fence must
                    // refuse it, or the checker finds the key left behind.
                    if self.inner.kind().is_write() {
                        self.spawn_late_call(&identity, ctx.clone(), input.clone());
                        // Never answer: only the engine's timeout may end
                        // this attempt. An answer (after a freeze, a sleep
                        // can beat the timeout) would report a failure whose
                        // effect the zombie may apply: a lying tool.
                        futures::future::pending::<()>().await;
                    }
                    tokio::time::sleep(TIMEOUT_FAULT_SLEEP).await;
                }
                if attempt <= 3 && f.fire(&identity, attempt, FaultKind::ToolRetryable) {
                    return Err(ToolError::retryable(format!(
                        "{}: injected retryable failure (attempt {attempt})",
                        self.name
                    )));
                }
            }
            Role::Compensation => {
                // Rarely for good: one compensation in ~200 escalates its task.
                if attempt == 1
                    && f.enabled.contains(FaultKind::CompensationFailure)
                    && decide_ppm(f.seed, &identity, 0, "compensation-failure-for-good") < 5_000
                {
                    f.counters.add(FaultKind::CompensationFailure);
                    return Err(ToolError::non_retryable(format!(
                        "{}: injected compensation failure for good",
                        self.name
                    )));
                }
                if attempt <= 3 && f.fire(&identity, attempt, FaultKind::CompensationFailure) {
                    return Err(ToolError::retryable(format!(
                        "{}: injected compensation failure (attempt {attempt})",
                        self.name
                    )));
                }
            }
        }
        if f.fire(&identity, attempt, FaultKind::Duplicate) {
            // Two deliveries at once, same context: the world must change once
            // and both must see the same output.
            let (a, b) = futures::join!(
                self.inner.call(ctx.clone(), input.clone()),
                self.inner.call(ctx, input)
            );
            return match (a, b) {
                (Ok(a), Ok(b)) if a != b => Err(ToolError::non_retryable(format!(
                    "{}: DUPLICATE DELIVERY DIVERGED: {a} vs {b}",
                    self.name
                ))),
                (Ok(a), _) => Ok(a),
                (_, b) => b,
            };
        }
        self.inner.call(ctx, input).await
    }
}

impl FaultyTool {
    /// Runs the inner tool with `ctx` on a detached tokio task, after a
    /// delay drawn from the seed: the call outlives the attempt that made
    /// it, as a remote service keeps working after its caller gave up.
    fn spawn_late_call(&self, identity: &str, ctx: ToolContext, input: Value) {
        let delay_ms = decide_ppm(
            self.faults.seed,
            identity,
            u64::from(ctx.attempt),
            "late-apply-delay",
        ) % LATE_APPLY_MAX_DELAY_MS;
        let (inner, faults) = (self.inner.clone(), self.faults.clone());
        faults.counters.late_pending.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            let outcome = match inner.call(ctx, input).await {
                Ok(_) => LateOutcome::WentThrough,
                Err(e) if e.message.contains("fenced by compensation") => LateOutcome::Fenced,
                Err(_) => LateOutcome::Failed,
            };
            faults.counters.add_named(outcome.as_str());
            faults.counters.late_pending.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

impl Tool for FaultyTool {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> ToolKind {
        self.inner.kind()
    }
    fn call<'a>(&'a self, ctx: ToolContext, input: Value) -> BoxFuture<'a, ToolResult> {
        self.run(ctx, input).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_are_pure_and_near_their_rate() {
        let a: Vec<bool> = (0..10_000)
            .map(|i| fires(7, &format!("k{i}"), 1, FaultKind::ToolRetryable))
            .collect();
        let b: Vec<bool> = (0..10_000)
            .map(|i| fires(7, &format!("k{i}"), 1, FaultKind::ToolRetryable))
            .collect();
        assert_eq!(a, b);
        let n = a.iter().filter(|x| **x).count();
        assert!((400..800).contains(&n), "6% of 10,000 expected, got {n}");
        let c: Vec<bool> = (0..10_000)
            .map(|i| fires(8, &format!("k{i}"), 1, FaultKind::ToolRetryable))
            .collect();
        assert_ne!(a, c, "another seed gives another schedule");
    }

    #[test]
    fn fault_lists_parse() {
        assert_eq!("all".parse::<FaultSet>().unwrap(), FaultSet::all());
        assert_eq!("none".parse::<FaultSet>().unwrap().to_arg(), "none");
        let s: FaultSet = "kill, duplicate".parse().unwrap();
        assert!(s.contains(FaultKind::Kill) && !s.contains(FaultKind::ToolHang));
        assert_eq!(s.to_arg(), "duplicate,kill");
        assert!("bogus".parse::<FaultSet>().is_err());
    }
}
