//! `audit_stored` on canned histories, as plain data: no store, no runtime.

use crate::core::tool::ToolKind;
use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::*;
use crate::core::decide::projection;
use crate::core::event::{EventPayload, NewEvent, seal};
use crate::core::retry::RetryPolicy;
use crate::core::workflow::{StepOptions, Workflow, WorkflowContext, WorkflowError};

/// One echo step, then returns its output.
struct Echo {
    tool: &'static str,
}

impl Workflow for Echo {
    fn name(&self) -> &str {
        "echo"
    }
    fn run(
        &self,
        ctx: WorkflowContext,
        input: Value,
    ) -> BoxFuture<'static, Result<Value, WorkflowError>> {
        let tool = self.tool;
        Box::pin(async move {
            let out = ctx.step(StepOptions::new(tool, input).name("echo")).await?;
            Ok(out)
        })
    }
}

fn registry(tool: &'static str) -> WorkflowRegistry {
    let mut r = WorkflowRegistry::new();
    r.register(Echo { tool });
    r
}

/// A completed `echo` task and the rows a faithful store holds for it.
fn completed() -> StoredTask {
    completed_then_signalled(0)
}

/// [`completed`], with `signals` signals recorded after it completed: a
/// history as long as wanted.
fn completed_then_signalled(signals: usize) -> StoredTask {
    use EventPayload as E;
    let mut new = vec![
        // 1
        NewEvent {
            actor: "agent:a".into(),
            payload: E::TaskSubmitted {
                workflow: "echo".into(),
                workflow_version: 1,
                input: json!({"x": 1}),
                agent: Some("a".into()),
                on_behalf_of: None,
                idempotency_key: None,
            },
        },
        // 2
        NewEvent {
            actor: "worker:w".into(),
            payload: E::TaskStarted {
                worker: "w".into(),
                polls: Default::default(),
            },
        },
        // 3
        NewEvent::engine(E::StepScheduled {
            command: 0,
            name: "echo".into(),
            tool: "test.echo".into(),
            kind: ToolKind::Read,
            input: json!({"x": 1}),
            retry: RetryPolicy::default(),
            timeout_ms: 1_000,
            compensation: None,
            recovery_path: None,
            policy_seq: None,
        }),
        // 4
        NewEvent {
            actor: "worker:w".into(),
            payload: E::StepCompleted {
                step_seq: 3,
                attempt: 1,
                output: json!({"x": 1}),
                started_at_ms: 1_000,
                duration_ms: 1,
            },
        },
        // 5
        NewEvent::engine(E::TaskCompleted {
            output: json!({"x": 1}),
        }),
    ];
    new.extend((0..signals).map(|i| NewEvent {
        actor: "user:u".into(),
        payload: E::SignalReceived {
            name: "late".into(),
            payload: json!({"i": i}),
            sender: "user:u".into(),
        },
    }));
    let sealed = seal("t", 0, "", 1_000, &new);
    let state = TaskState::fold(sealed.iter().map(|(e, _)| e));
    let p = projection(&state, 1_000);
    let row = TaskRow {
        id: "t".into(),
        workflow: "echo".into(),
        workflow_version: 1,
        agent: Some("a".into()),
        idempotency_key: None,
        status: p.status,
        last_seq: state.last_seq,
        last_hash: state.last_hash.clone(),
        created_at_ms: 1_000,
        updated_at_ms: 1_000,
        ready_at_ms: p.ready_at_ms,
        lease_owner: None,
        lease_expires_at_ms: None,
        blocked_reason: None,
    };
    StoredTask {
        row: Some(row),
        events: sealed.iter().map(|(_, s)| s.to_raw().unwrap()).collect(),
        timers: p.timers,
        consistent: true,
    }
}

fn audit(stored: &StoredTask, tool: &'static str) -> TaskAudit {
    audit_stored("t", stored, &registry(tool), &AuditOptions::default())
}

#[test]
fn an_untouched_task_holds_on_every_count() {
    let a = audit(&completed(), "test.echo");
    assert_eq!(a.verdict, Verdict::Ok, "{:?}", a.problem());
    assert!(a.chain.is_ok());
    assert_eq!(a.projection, ProjectionVerdict::Ok);
    assert_eq!(a.determinism, DeterminismVerdict::Ok);
    assert_eq!(a.status, Some(TaskStatus::Completed));
    assert_eq!((a.event_count, a.events.len()), (5, 5));
    assert_eq!(a.problem(), None);
}

#[test]
fn a_broken_chain_outranks_a_projection_mismatch_and_is_not_replayed() {
    let mut s = completed();
    s.events[2].payload["input"] = json!({"x": 2});
    s.row.as_mut().unwrap().status = TaskStatus::Running;
    let a = audit(&s, "test.echo");
    assert_eq!(a.verdict, Verdict::ChainBroken);
    let ChainVerdict::Broken(b) = &a.chain else {
        unreachable!()
    };
    assert_eq!((b.seq, b.kind), (3, BreakKind::HashMismatch));
    // Still reported, for whoever investigates.
    assert!(matches!(a.projection, ProjectionVerdict::Mismatch { .. }));
    assert!(matches!(
        a.determinism,
        DeterminismVerdict::NotChecked {
            reason: NotCheckedReason::ChainBroken,
            ..
        }
    ));
    assert!(
        a.problem()
            .unwrap()
            .starts_with("hash chain broken at seq 3 (hash_mismatch)")
    );
}

/// A history long enough that its chain is checked on another thread
/// while it is parsed and folded gets the verdicts a short one gets.
#[test]
fn a_long_history_is_judged_as_a_short_one() {
    let n = chain::PARALLEL_FROM + 100;
    let s = completed_then_signalled(n);
    let a = audit(&s, "test.echo");
    assert_eq!(a.verdict, Verdict::Ok, "{:?}", a.problem());
    assert_eq!((a.event_count, a.events.len()), (n + 5, n + 5));
    assert_eq!(a.determinism, DeterminismVerdict::Ok);

    let mut s = completed_then_signalled(n);
    let late = s.events.len() - 7;
    s.events[late].payload["payload"] = json!({"i": -1});
    let a = audit(&s, "test.echo");
    assert_eq!(a.verdict, Verdict::ChainBroken);
    let ChainVerdict::Broken(b) = &a.chain else {
        unreachable!()
    };
    assert_eq!((b.seq, b.kind), (late as i64 + 1, BreakKind::HashMismatch));
    assert!(matches!(
        a.determinism,
        DeterminismVerdict::NotChecked {
            reason: NotCheckedReason::ChainBroken,
            ..
        }
    ));

    let changed = audit_stored(
        "t",
        &completed_then_signalled(n),
        &registry("test.other"),
        &AuditOptions::default(),
    );
    assert!(
        matches!(
            changed.determinism,
            DeterminismVerdict::NonDeterminism { seq: 3, .. }
        ),
        "{:?}",
        changed.determinism
    );
}

#[test]
fn a_tampered_row_is_a_projection_mismatch_naming_the_field() {
    let mut s = completed();
    s.row.as_mut().unwrap().status = TaskStatus::Running;
    let a = audit(&s, "test.echo");
    assert_eq!(a.verdict, Verdict::ProjectionMismatch);
    assert_eq!(
        a.problem().unwrap(),
        r#"derived rows differ from the history: status (stored "running", rebuilt "completed")"#
    );
}

#[test]
fn changed_code_is_non_determinism_at_the_recorded_command() {
    let a = audit(&completed(), "test.other");
    assert_eq!(a.verdict, Verdict::ReplayFailed);
    let DeterminismVerdict::NonDeterminism {
        seq,
        expected,
        found,
    } = &a.determinism
    else {
        panic!("{:?}", a.determinism)
    };
    assert_eq!(*seq, 3);
    assert!(expected.contains("tool test.echo"), "{expected}");
    assert!(found.contains("tool test.other"), "{found}");
}

#[test]
fn a_workflow_this_binary_lacks_cannot_be_replayed() {
    let a = audit_stored(
        "t",
        &completed(),
        &WorkflowRegistry::new(),
        &AuditOptions::default(),
    );
    assert_eq!(a.verdict, Verdict::ReplayFailed);
    assert!(a.problem().unwrap().contains("\"echo\" is not registered"));
    // Without the determinism check the same task is fine.
    let a = audit_stored(
        "t",
        &completed(),
        &WorkflowRegistry::new(),
        &AuditOptions {
            check_determinism: false,
        },
    );
    assert_eq!(a.verdict, Verdict::Ok);
}

#[test]
fn an_event_this_binary_cannot_parse_stops_the_fold() {
    let mut s = completed();
    // A re-hashed chain whose seq 4 is of an unknown type.
    s.events[3].event_type = "StepTeleported".into();
    let mut prev = crate::core::chain::GENESIS_HASH.to_string();
    for e in &mut s.events {
        e.prev_hash = prev.clone();
        e.hash = e.compute_hash().unwrap();
        prev = e.hash.clone();
    }
    s.row.as_mut().unwrap().last_hash = prev;
    let a = audit(&s, "test.echo");
    assert!(a.chain.is_ok());
    assert_eq!(a.verdict, Verdict::ReplayFailed);
    assert_eq!(a.events.len(), 3);
    assert!(matches!(a.projection, ProjectionVerdict::NotChecked { .. }));
    assert!(
        a.problem().unwrap().contains("StepTeleported"),
        "{:?}",
        a.problem()
    );
}

#[test]
fn a_row_ahead_of_its_history_is_a_truncation_only_on_a_consistent_read() {
    let mut s = completed();
    s.events.truncate(3);
    let a = audit(&s, "test.echo");
    let ChainVerdict::Broken(b) = &a.chain else {
        panic!("{:?}", a.chain)
    };
    assert_eq!((b.seq, b.kind), (4, BreakKind::Truncated));
    s.consistent = false;
    let a = audit(&s, "test.echo");
    assert!(a.chain.is_ok());
    assert!(matches!(a.projection, ProjectionVerdict::NotChecked { .. }));
}

#[test]
fn the_report_serializes_with_whole_events() {
    let a = audit(&completed(), "test.echo");
    let doc = serde_json::to_value(&a).unwrap();
    assert_eq!(doc["verdict"], "ok");
    assert_eq!(doc["chain"]["result"], "ok");
    assert_eq!(doc["projection"]["result"], "ok");
    assert_eq!(doc["determinism"]["result"], "ok");
    assert_eq!(doc["status"], "completed");
    assert_eq!(doc["events"][2]["type"], "StepScheduled");
    assert_eq!(doc["events"][2]["payload"]["input"], json!({"x": 1}));
    assert_eq!(
        doc["events"][0]["prev_hash"],
        crate::core::chain::GENESIS_HASH
    );
}
