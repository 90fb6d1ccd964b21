//! Workflow scenarios, each on SQLite and PostgreSQL, each checked live and
//! replayed from its stored history.

use std::time::Duration;

use mandate_engine::runtime::Error as EngineError;
use mandate_engine::{EventPayload, TaskStatus};
use mandate_tests::{Backend, Harness, backend_tests, types};
use serde_json::{Value, json};

async fn service_version(h: &Harness, service: &str) -> Option<String> {
    h.world
        .get("service", service)
        .await
        .expect("world")
        .and_then(|v| v.get("version").and_then(Value::as_str).map(str::to_string))
}

async fn deploy_completes(b: Backend) {
    let mut h = Harness::new(b).await;
    let (id, row) = h
        .run(
            "deploy_with_rollback",
            json!({"service": "checkout", "version": "v2"}),
        )
        .await;
    assert_eq!(row.status, TaskStatus::Completed);
    assert_eq!(service_version(&h, "checkout").await.as_deref(), Some("v2"));
    let history = h.engine.history(&id).await.unwrap();
    assert_eq!(
        types(&history),
        [
            "TaskSubmitted",
            "TaskStarted",
            "PolicyEvaluated",
            "StepScheduled",
            "StepCompleted",
            "PolicyEvaluated",
            "StepScheduled",
            "StepCompleted",
            "PolicyEvaluated",
            "StepScheduled",
            "StepCompleted",
            "TaskCompleted"
        ]
    );
    // The compensation was persisted with the step, before it ran.
    let EventPayload::StepScheduled { compensation, .. } = &history[6].payload else {
        panic!("seq 7 is {:?}", history[6].payload)
    };
    assert_eq!(
        compensation.as_ref().unwrap().input,
        json!({"service": "checkout", "version": "v0"})
    );
    h.assert_replays(&id).await;
}

async fn failed_health_check_rolls_back(b: Backend) {
    let mut h = Harness::new(b).await;
    let (_, first) = h
        .run(
            "deploy_with_rollback",
            json!({"service": "checkout", "version": "v2"}),
        )
        .await;
    assert_eq!(first.status, TaskStatus::Completed);
    let (id, row) = h
        .run(
            "deploy_with_rollback",
            json!({"service": "checkout", "version": "v3-bad"}),
        )
        .await;
    assert_eq!(row.status, TaskStatus::FailedTerminal);
    // The side effect was undone: the service runs the version it ran before.
    assert_eq!(service_version(&h, "checkout").await.as_deref(), Some("v2"));
    let history = h.engine.history(&id).await.unwrap();
    let t = types(&history);
    assert!(
        t.ends_with(&[
            "StepFailed",
            "WorkflowFailed",
            "CompensationStarted",
            "CompensationCompleted",
            "TaskFailed"
        ]),
        "{t:?}"
    );
    let EventPayload::TaskFailed {
        compensated_steps,
        error,
    } = &history.last().unwrap().payload
    else {
        unreachable!()
    };
    assert_eq!(*compensated_steps, 1);
    assert!(error.contains("unhealthy"), "{error}");
    h.assert_replays(&id).await;
}

fn fault(mode: &str) -> Value {
    json!({"tool": "test.fault", "input": {"mode": mode}})
}

async fn retries_then_succeeds(b: Backend) {
    let mut h = Harness::new(b).await;
    let (id, row) = h
        .run(
            "saga",
            json!({"stages": [[{"tool": "test.fault", "input": {"mode": "fail_times", "times": 2},
                                "retry": {"max_attempts": 3, "initial_backoff_ms": 10}}]]}),
        )
        .await;
    assert_eq!(row.status, TaskStatus::Completed);
    let history = h.engine.history(&id).await.unwrap();
    let failures: Vec<(u32, i64)> = history
        .iter()
        .filter_map(|e| match &e.payload {
            EventPayload::StepAttemptFailed {
                attempt,
                next_attempt_at_ms,
                ..
            } => Some((*attempt, *next_attempt_at_ms - e.recorded_at_ms)),
            _ => None,
        })
        .collect();
    // Exponential backoff: 10 ms, then 20 ms.
    assert_eq!(failures, vec![(1, 10), (2, 20)]);
    assert!(matches!(
        history.iter().rev().nth(1).unwrap().payload,
        EventPayload::StepCompleted { attempt: 3, .. }
    ));
    h.assert_replays(&id).await;
}

async fn non_retryable_error_fails_at_once(b: Backend) {
    let mut h = Harness::new(b).await;
    let (id, row) = h
        .run("saga", json!({"stages": [[{"tool": "test.fault", "input": {"mode": "fail_terminal"}, "retry": {"max_attempts": 5}}]]}))
        .await;
    assert_eq!(row.status, TaskStatus::FailedTerminal);
    let history = h.engine.history(&id).await.unwrap();
    assert!(!types(&history).contains(&"StepAttemptFailed"));
    assert!(
        history
            .iter()
            .any(|e| matches!(e.payload, EventPayload::StepFailed { attempt: 1, .. }))
    );
    h.assert_replays(&id).await;
}

async fn attempts_are_bounded_and_time_out(b: Backend) {
    let mut h = Harness::new(b).await;
    let (id, row) = h
        .run(
            "saga",
            json!({"stages": [[{"tool": "test.fault", "input": {"mode": "hang"}, "timeout_ms": 100,
                                "retry": {"max_attempts": 2, "initial_backoff_ms": 10}}]]}),
        )
        .await;
    assert_eq!(row.status, TaskStatus::FailedTerminal);
    let history = h.engine.history(&id).await.unwrap();
    let messages: Vec<String> = history
        .iter()
        .filter_map(|e| match &e.payload {
            EventPayload::StepAttemptFailed { error, .. }
            | EventPayload::StepFailed { error, .. } => Some(error.message.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(
        messages
            .iter()
            .all(|m| m.contains("timed out after 100 ms")),
        "{messages:?}"
    );
    h.assert_replays(&id).await;
}

async fn failed_compensation_escalates(b: Backend) {
    let mut h = Harness::new(b).await;
    let (id, row) = h
        .run(
            "saga",
            json!({"stages": [
                [{"tool": "kv.put", "input": {"key": "k0", "value": 0}, "compensate": {"tool": "kv.delete", "input": {"key": "k0"}}}],
                [{"tool": "kv.put", "input": {"key": "k1", "value": 1},
                  "compensate": {"tool": "test.fault", "input": {"mode": "fail"}, "retry": {"max_attempts": 2, "initial_backoff_ms": 10}},
                  "recovery_path": "delete key k1 by hand"}],
                [fault("fail_terminal")]
            ]}),
        )
        .await;
    assert_eq!(row.status, TaskStatus::EscalatedToHuman);
    let history = h.engine.history(&id).await.unwrap();
    let EventPayload::TaskEscalated {
        recovery_paths,
        reason,
        ..
    } = &history.last().unwrap().payload
    else {
        panic!("{:?}", history.last())
    };
    assert_eq!(recovery_paths[0], "delete key k1 by hand");
    // The older step was not undone after the failure, and it is named.
    assert_eq!(recovery_paths.len(), 2, "{recovery_paths:?}");
    assert!(
        recovery_paths[1].contains("kv.delete") && recovery_paths[1].contains("k0"),
        "{recovery_paths:?}"
    );
    assert!(h.world.get("kv", "k0").await.unwrap().is_some());
    assert!(
        reason.contains("compensation") && reason.contains("1 older step"),
        "{reason}"
    );
    let t = types(&history);
    assert!(
        t.contains(&"CompensationAttemptFailed") && t.contains(&"CompensationFailed"),
        "{t:?}"
    );
    h.assert_replays(&id).await;
}

async fn parallel_steps_compensate_in_reverse_completion_order(b: Backend) {
    let mut h = Harness::new(b).await;
    let put = |k: &str| json!({"tool": "kv.put", "input": {"key": k, "value": k}, "compensate": {"tool": "kv.delete", "input": {"key": k}}});
    let (id, row) = h
        .run("saga", json!({"stages": [[put("a"), put("b"), put("c")], [put("d")], [fault("fail_terminal")]]}))
        .await;
    assert_eq!(row.status, TaskStatus::FailedTerminal);
    for k in ["a", "b", "c", "d"] {
        assert_eq!(
            h.world.get("kv", k).await.unwrap(),
            None,
            "key {k} was left behind"
        );
    }
    let history = h.engine.history(&id).await.unwrap();
    let completed: Vec<i64> = history
        .iter()
        .filter_map(|e| match e.payload {
            EventPayload::StepCompleted { step_seq, .. } => Some(step_seq),
            _ => None,
        })
        .collect();
    let compensated: Vec<i64> = history
        .iter()
        .filter_map(|e| match e.payload {
            EventPayload::CompensationStarted { step_seq, .. } => Some(step_seq),
            _ => None,
        })
        .collect();
    assert_eq!(completed.len(), 4);
    assert_eq!(compensated, completed.into_iter().rev().collect::<Vec<_>>());
    h.assert_replays(&id).await;
}

async fn irreversible_step_escalates_after_rollback(b: Backend) {
    let mut h = Harness::new(b).await;
    let (id, row) = h
        .run(
            "saga",
            json!({"stages": [
                [{"tool": "kv.put", "input": {"key": "x", "value": 1}, "compensate": {"tool": "kv.delete", "input": {"key": "x"}}}],
                [{"tool": "email.send", "input": {"to": "a@example.com", "subject": "hi"}}],
                [fault("fail_terminal")]
            ]}),
        )
        .await;
    assert_eq!(row.status, TaskStatus::EscalatedToHuman);
    // The reversible step was still undone.
    assert_eq!(h.world.get("kv", "x").await.unwrap(), None);
    let history = h.engine.history(&id).await.unwrap();
    assert!(types(&history).contains(&"CompensationSkipped"));
    let EventPayload::TaskEscalated { recovery_paths, .. } = &history.last().unwrap().payload
    else {
        unreachable!()
    };
    assert!(
        recovery_paths
            .iter()
            .any(|r| r.contains("correction email")),
        "{recovery_paths:?}"
    );
    h.assert_replays(&id).await;
}

async fn durable_sleep_fires(b: Backend) {
    let mut h = Harness::new(b).await;
    let (id, row) = h
        .run("saga", json!({"stages": [[{"sleep_ms": 300}], [{"tool": "test.echo", "input": {"after": "sleep"}}]]}))
        .await;
    assert_eq!(row.status, TaskStatus::Completed);
    let history = h.engine.history(&id).await.unwrap();
    let started = history
        .iter()
        .find(|e| matches!(e.payload, EventPayload::TimerStarted { .. }))
        .unwrap();
    let fired = history
        .iter()
        .find(|e| matches!(e.payload, EventPayload::TimerFired { .. }))
        .unwrap();
    assert!(fired.recorded_at_ms - started.recorded_at_ms >= 300);
    h.assert_replays(&id).await;
}

async fn approval_signal_lets_the_deploy_run(b: Backend) {
    let mut h = Harness::new(b).await;
    h.start_worker();
    let id = h
        .engine
        .submit(
            "gated_deploy",
            json!({"service": "billing", "version": "v5"}),
            Default::default(),
        )
        .await
        .unwrap()
        .task_id;
    h.wait_for(&id, |s| s == TaskStatus::NeedsApproval).await;
    assert_eq!(
        service_version(&h, "billing").await,
        None,
        "nothing runs before approval"
    );
    // A signal cannot approve; the named approver's decision can.
    let e = h
        .engine
        .signal(&id, "approve", json!({"approved": true}), "approver:carol")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("approvals are decided only"), "{e}");
    h.engine
        .decide_approval(
            &id,
            mandate_engine::runtime::ApprovalTarget::Only,
            "carol",
            mandate_engine::runtime::ApprovalDecision {
                approved: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let row = h
        .engine
        .wait_until_final(&id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(row.status, TaskStatus::Completed);
    assert_eq!(service_version(&h, "billing").await.as_deref(), Some("v5"));
    let history = h.engine.history(&id).await.unwrap();
    let decided = history
        .iter()
        .find(|e| matches!(e.payload, EventPayload::ApprovalDecided { .. }))
        .unwrap();
    assert_eq!(decided.actor, "approver:carol");
    h.assert_replays(&id).await;
}

async fn signal_wait_times_out(b: Backend) {
    let mut h = Harness::new(b).await;
    let (id, row) = h
        .run(
            "gated_deploy",
            json!({"service": "billing", "version": "v5", "approval_timeout_ms": 200}),
        )
        .await;
    assert_eq!(row.status, TaskStatus::FailedTerminal);
    let history = h.engine.history(&id).await.unwrap();
    assert!(history.iter().any(|e| matches!(
        &e.payload,
        EventPayload::ApprovalResolved { outcome, .. } if outcome == "timed_out"
    )));
    assert_eq!(service_version(&h, "billing").await, None);
    h.assert_replays(&id).await;
}

async fn waiting_saga(h: &mut Harness) -> String {
    h.start_worker();
    let id = h
        .engine
        .submit(
            "saga",
            json!({"stages": [
                [{"tool": "kv.put", "input": {"key": "held", "value": true}, "compensate": {"tool": "kv.delete", "input": {"key": "held"}}}],
                [{"wait_signal": "go"}]
            ]}),
            Default::default(),
        )
        .await
        .unwrap()
        .task_id;
    // Wait until the wait is recorded (the put completed before it).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let history = h.engine.history(&id).await.unwrap();
        if history
            .iter()
            .any(|e| matches!(e.payload, EventPayload::SignalWaitStarted { .. }))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the saga never started waiting"
        );
        let mut updates = h.engine.subscribe();
        let _ = tokio::time::timeout(Duration::from_millis(100), updates.recv()).await;
    }
    id
}

async fn cancel_with_rollback_compensates(b: Backend) {
    let mut h = Harness::new(b).await;
    let id = waiting_saga(&mut h).await;
    assert!(h.world.get("kv", "held").await.unwrap().is_some());
    h.engine
        .cancel(&id, true, "user:ops", Some("wrong target".into()))
        .await
        .unwrap();
    let row = h
        .engine
        .wait_until_final(&id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(row.status, TaskStatus::Cancelled);
    assert_eq!(h.world.get("kv", "held").await.unwrap(), None);
    let history = h.engine.history(&id).await.unwrap();
    assert!(matches!(
        history.last().unwrap().payload,
        EventPayload::TaskCancelled {
            rolled_back: true,
            compensated_steps: 1
        }
    ));
}

async fn cancel_without_rollback_leaves_effects(b: Backend) {
    let mut h = Harness::new(b).await;
    let id = waiting_saga(&mut h).await;
    h.engine.cancel(&id, false, "user:ops", None).await.unwrap();
    let row = h
        .engine
        .wait_until_final(&id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(row.status, TaskStatus::Cancelled);
    assert!(h.world.get("kv", "held").await.unwrap().is_some());
}

async fn finished_tasks_refuse_signals_and_cancels(b: Backend) {
    let mut h = Harness::new(b).await;
    let (id, row) = h
        .run(
            "saga",
            json!({"stages": [[{"tool": "test.echo", "input": {}}]]}),
        )
        .await;
    assert_eq!(row.status, TaskStatus::Completed);
    let err = h
        .engine
        .signal(&id, "go", json!({}), "user:x")
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::TaskFinal { .. }), "{err}");
    assert!(err.to_string().contains("completed"), "{err}");
    let err = h
        .engine
        .cancel(&id, true, "user:x", None)
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::TaskFinal { .. }), "{err}");
    assert_eq!(
        h.engine.task(&id).await.unwrap().last_seq,
        row.last_seq,
        "nothing was appended"
    );
    let err = h
        .engine
        .signal(
            "0198f0b8-0000-7000-8000-000000000000",
            "go",
            json!({}),
            "user:x",
        )
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::TaskNotFound { .. }), "{err}");
}

async fn bad_submissions_write_nothing(b: Backend) {
    let h = Harness::new(b).await;
    let err = h
        .engine
        .submit("no_such_workflow", json!({}), Default::default())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("unknown workflow \"no_such_workflow\""),
        "{err}"
    );
    assert!(
        err.to_string().contains("deploy_with_rollback"),
        "lists the known ones: {err}"
    );
    let huge = json!({"blob": "x".repeat(300 * 1024)});
    let err = h
        .engine
        .submit("saga", huge, Default::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, EngineError::InvalidInput { ref field, .. } if field == "input"),
        "{err}"
    );
    assert!(err.to_string().contains("exceeds the limit"), "{err}");
    let err = h
        .engine
        .submit(
            "saga",
            json!({"stages": []}),
            mandate_engine::SubmitOptions {
                agent: Some("bad agent name!".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("agent"), "{err}");
    let all = h
        .engine
        .store()
        .list_tasks(Default::default())
        .await
        .unwrap();
    assert!(all.is_empty(), "refused submissions wrote {all:?}");
}

async fn idempotent_submission_returns_the_same_task(b: Backend) {
    let h = Harness::new(b).await;
    let opts = || mandate_engine::SubmitOptions {
        idempotency_key: Some("req-42".into()),
        ..Default::default()
    };
    let a = h
        .engine
        .submit("saga", json!({"stages": []}), opts())
        .await
        .unwrap();
    let b2 = h
        .engine
        .submit("saga", json!({"stages": []}), opts())
        .await
        .unwrap();
    assert!(!a.existing && b2.existing);
    assert_eq!(a.task_id, b2.task_id);
    assert_eq!(
        h.engine
            .store()
            .list_tasks(Default::default())
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn pause_holds_and_resume_continues(b: Backend) {
    let mut h = Harness::new(b).await;
    h.start_worker();
    let id = h
        .engine
        .submit("saga", json!({"stages": [[{"sleep_ms": 200}], [{"tool": "kv.put", "input": {"key": "after", "value": 1}}]]}), Default::default())
        .await
        .unwrap()
        .task_id;
    h.engine
        .pause(&id, "user:ops", Some("investigating".into()))
        .await
        .unwrap();
    h.wait_for(&id, |s| s == TaskStatus::Paused).await;
    // Past the sleep, still paused: the step after it has not run.
    let mut updates = h.engine.subscribe();
    let _ = tokio::time::timeout(Duration::from_millis(400), async {
        while updates.recv().await.is_ok() {}
    })
    .await;
    assert_eq!(h.engine.task(&id).await.unwrap().status, TaskStatus::Paused);
    assert_eq!(h.world.get("kv", "after").await.unwrap(), None);
    h.engine.resume(&id, "user:ops").await.unwrap();
    let row = h
        .engine
        .wait_until_final(&id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(row.status, TaskStatus::Completed);
    assert!(h.world.get("kv", "after").await.unwrap().is_some());
    h.assert_replays(&id).await;
}

async fn pause_lets_running_attempts_finish(b: Backend) {
    let mut h = Harness::new(b).await;
    h.start_worker();
    let id = h
        .engine
        .submit(
            "saga",
            json!({"stages": [[{"tool": "test.fault", "input": {"mode": "sleep", "sleep_ms": 400}}], [{"tool": "kv.put", "input": {"key": "next", "value": 1}}]]}),
            Default::default(),
        )
        .await
        .unwrap()
        .task_id;
    h.wait_for(&id, |s| s == TaskStatus::Running).await;
    h.engine.pause(&id, "user:ops", None).await.unwrap();
    // The running attempt's result is recorded while paused; nothing new starts.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let history = h.engine.history(&id).await.unwrap();
        if history
            .iter()
            .any(|e| matches!(e.payload, EventPayload::StepCompleted { .. }))
        {
            assert!(!history.iter().any(|e| matches!(&e.payload, EventPayload::StepScheduled { tool, .. } if tool == "kv.put")));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the running attempt never finished"
        );
        let mut u = h.engine.subscribe();
        let _ = tokio::time::timeout(Duration::from_millis(100), u.recv()).await;
    }
    assert_eq!(h.engine.task(&id).await.unwrap().status, TaskStatus::Paused);
    h.engine.resume(&id, "user:ops").await.unwrap();
    let row = h
        .engine
        .wait_until_final(&id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(row.status, TaskStatus::Completed);
    let attempts = h
        .engine
        .history(&id)
        .await
        .unwrap()
        .iter()
        .filter(|e| matches!(e.payload, EventPayload::StepCompleted { attempt: 1, .. }))
        .count();
    assert_eq!(attempts, 2, "each step ran once");
    h.assert_replays(&id).await;
}

async fn workflows_can_refuse_signals(b: Backend) {
    use futures::future::BoxFuture;
    use mandate_engine::{Workflow, WorkflowContext, WorkflowError};
    /// Waits for a signal "approve" (a workflow's own rule about its signals;
    /// real approvals are engine requests): only approvers may send it, never
    /// the submitting agent.
    struct Guarded;
    impl Workflow for Guarded {
        fn name(&self) -> &str {
            "guarded"
        }
        fn run(
            &self,
            ctx: WorkflowContext,
            _input: Value,
        ) -> BoxFuture<'static, Result<Value, WorkflowError>> {
            Box::pin(async move {
                let s = ctx.wait_signal("approve", None).await.expect("no timeout");
                Ok(json!({"by": s.sender}))
            })
        }
        fn check_signal(
            &self,
            history: &[mandate_engine::Event],
            _name: &str,
            _payload: &Value,
            sender: &str,
        ) -> Result<(), String> {
            let submitter = &history[0].actor;
            if sender == submitter {
                return Err("the submitting agent can never approve its own task".into());
            }
            if !sender.starts_with("approver:") {
                return Err(format!("{sender} is not an approver"));
            }
            Ok(())
        }
    }
    let mut h = Harness::with(b, |w, _| {
        w.register(Guarded);
    })
    .await;
    h.start_worker();
    let opts = mandate_engine::SubmitOptions {
        agent: Some("bot".into()),
        ..Default::default()
    };
    let id = h
        .engine
        .submit("guarded", json!({}), opts)
        .await
        .unwrap()
        .task_id;
    h.wait_for(&id, |s| s == TaskStatus::Running).await;
    let before = h.engine.task(&id).await.unwrap().last_seq;
    for who in ["agent:bot", "user:mallory"] {
        let err = h
            .engine
            .signal(&id, "approve", json!({}), who)
            .await
            .unwrap_err();
        assert!(matches!(err, EngineError::Rejected { .. }), "{err}");
        assert!(err.to_string().contains(who), "{err}");
    }
    assert_eq!(
        h.engine.task(&id).await.unwrap().last_seq,
        before,
        "refusals wrote nothing"
    );
    h.engine
        .signal(&id, "approve", json!({}), "approver:carol")
        .await
        .unwrap();
    let row = h
        .engine
        .wait_until_final(&id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(row.status, TaskStatus::Completed);
}

async fn timed_out_write_is_compensated_too(b: Backend) {
    use mandate_activities::{Tool, ToolContext, ToolKind, ToolResult, World};
    /// Writes its key, then takes far longer than the step's timeout: the
    /// effect happened although the attempt timed out.
    struct SlowPut(World);
    impl Tool for SlowPut {
        fn name(&self) -> &str {
            "slow.put"
        }
        fn kind(&self) -> ToolKind {
            ToolKind::WriteReversible
        }
        fn call<'a>(
            &'a self,
            ctx: ToolContext,
            input: Value,
        ) -> futures::future::BoxFuture<'a, ToolResult> {
            Box::pin(async move {
                let key = input["key"].as_str().unwrap_or("k").to_string();
                self.0
                    .apply(&ctx.idempotency_key, "slow.put", "kv", &key, |_| {
                        Ok((Some(json!(true)), json!({})))
                    })
                    .await
                    .map_err(|e| mandate_activities::ToolError::retryable(e.to_string()))?;
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok(json!({}))
            })
        }
    }
    let db = mandate_tests::TestDb::new(b).await;
    let world = mandate_activities::World::connect(&db.url).await.unwrap();
    let mut h = Harness::on(db, Default::default(), move |_, tools| {
        tools.register(SlowPut(world));
    })
    .await;
    let (id, row) = h
        .run(
            "saga",
            json!({"stages": [[{"tool": "slow.put", "input": {"key": "slow"}, "timeout_ms": 200,
                                "retry": {"max_attempts": 2, "initial_backoff_ms": 10},
                                "compensate": {"tool": "kv.delete", "input": {"key": "slow"}}}]]}),
        )
        .await;
    assert_eq!(row.status, TaskStatus::FailedTerminal);
    assert_eq!(
        h.world.get("kv", "slow").await.unwrap(),
        None,
        "the timed-out write was left behind"
    );
    let history = h.engine.history(&id).await.unwrap();
    assert!(history.iter().any(
        |e| matches!(&e.payload, EventPayload::StepFailed { error, .. } if error.effect_unknown)
    ));
    assert!(types(&history).contains(&"CompensationCompleted"));
    h.assert_replays(&id).await;
}

async fn deterministic_now_and_ids_replay(b: Backend) {
    use futures::future::BoxFuture;
    use mandate_engine::{StepOptions, Workflow, WorkflowContext, WorkflowError};
    struct Stamps;
    impl Workflow for Stamps {
        fn name(&self) -> &str {
            "stamps"
        }
        fn run(
            &self,
            ctx: WorkflowContext,
            _input: Value,
        ) -> BoxFuture<'static, Result<Value, WorkflowError>> {
            Box::pin(async move {
                let t = ctx.now();
                let id = ctx.new_id();
                let out = ctx
                    .step(StepOptions::new(
                        "test.echo",
                        json!({"t": t, "id": id.to_string()}),
                    ))
                    .await?;
                Ok(out)
            })
        }
    }
    let mut h = Harness::with(b, |w, _| {
        w.register(Stamps);
    })
    .await;
    let (id, row) = h.run("stamps", json!({})).await;
    assert_eq!(row.status, TaskStatus::Completed);
    let history = h.engine.history(&id).await.unwrap();
    assert!(types(&history).contains(&"MarkerRecorded"));
    h.assert_replays(&id).await;
}

backend_tests!(
    deploy_completes,
    failed_health_check_rolls_back,
    retries_then_succeeds,
    non_retryable_error_fails_at_once,
    attempts_are_bounded_and_time_out,
    failed_compensation_escalates,
    parallel_steps_compensate_in_reverse_completion_order,
    irreversible_step_escalates_after_rollback,
    durable_sleep_fires,
    approval_signal_lets_the_deploy_run,
    signal_wait_times_out,
    cancel_with_rollback_compensates,
    cancel_without_rollback_leaves_effects,
    finished_tasks_refuse_signals_and_cancels,
    bad_submissions_write_nothing,
    idempotent_submission_returns_the_same_task,
    pause_holds_and_resume_continues,
    pause_lets_running_attempts_finish,
    workflows_can_refuse_signals,
    timed_out_write_is_compensated_too,
    deterministic_now_and_ids_replay,
);
