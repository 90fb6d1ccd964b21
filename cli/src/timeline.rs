//! The human timeline of a task's history: one line per event, plus a line
//! whenever the derived status changes.
//!
//! ```text
//! 12:00:00.001  +0 ms        #1  agent:deployer  submitted deploy_with_rollback v1 by agent:deployer, input {service: checkout, version: v2}
//!                                                status → queued
//! 12:00:00.013  +12 ms       #2  worker:w-1      started by worker w-1
//! ```
//!
//! Times are UTC. Pure: the lines depend on the events alone (no clock, no
//! I/O), so `mandate history`, `mandate demo` and `mandate replay` print the
//! same thing for the same history. Payloads are summarised to a bounded
//! length; a timeline line never carries a whole payload.

use mandate_engine::core::event::RecordedError;
use mandate_engine::{Event, EventPayload, TaskState, TaskStatus};

use crate::summary::{self, MAX_JSON_CHARS, MAX_TEXT_CHARS};

/// Actors longer than this are cut in the actor column.
const MAX_ACTOR_WIDTH: usize = 24;
/// Width of the `+delta` column.
const DELTA_WIDTH: usize = 11;
/// Inputs in a "scheduled" line share it with the compensation's input.
const MAX_STEP_INPUT_CHARS: usize = 80;

/// Renders a history (in seq order) as timeline lines.
pub fn render(events: &[Event]) -> Vec<String> {
    let actor_width = events
        .iter()
        .map(|e| e.actor.chars().count())
        .max()
        .unwrap_or(0)
        .min(MAX_ACTOR_WIDTH);
    let seq_width = events
        .iter()
        .map(|e| e.seq.to_string().len())
        .max()
        .unwrap_or(1);
    // "HH:MM:SS.mmm" + 2 + delta + 2 + "#seq" + 2 + actor + 2
    let indent = 12 + 2 + DELTA_WIDTH + 2 + (1 + seq_width) + 2 + actor_width + 2;

    let mut lines = Vec::with_capacity(events.len() * 2);
    let mut state = TaskState::default();
    let mut status: Option<TaskStatus> = None;
    let mut previous_ms: Option<i64> = None;
    for event in events {
        let ms = event.recorded_at_ms;
        if let Some(prev) = previous_ms
            && summary::day(prev) != summary::day(ms)
        {
            lines.push(format!("── {} (UTC) ──", summary::day(ms)));
        }
        let delta = format!("+{}", summary::duration(ms - previous_ms.unwrap_or(ms)));
        let delta = delta.replace("+-", "-");
        lines.push(format!(
            "{}  {:<dw$}  #{:<sw$}  {:<aw$}  {}",
            summary::clock(ms),
            delta,
            event.seq,
            summary::text(&event.actor, actor_width),
            summary::escape(&describe(&state, event)),
            dw = DELTA_WIDTH,
            sw = seq_width,
            aw = actor_width,
        ));
        state.apply(&event.task_id, event.seq, ms, &event.payload);
        let now = state.status();
        if status != Some(now) {
            lines.push(format!("{:indent$}status → {now}", ""));
            status = Some(now);
        }
        previous_ms = Some(ms);
    }
    lines
}

/// `'name'` of the step scheduled at `step_seq`, as known before `event` applies.
fn step_name(state: &TaskState, step_seq: i64) -> String {
    match state.steps.get(&step_seq) {
        Some(s) => format!("'{}'", summary::text(&s.name, 60)),
        None => format!("#{step_seq}"),
    }
}

/// The step a compensation undoes.
fn compensated_step(state: &TaskState, compensation_seq: i64) -> String {
    match state.compensations.get(&compensation_seq) {
        Some(c) => step_name(state, c.step_seq),
        None => format!("#{compensation_seq}"),
    }
}

fn json(v: &serde_json::Value) -> String {
    summary::json(v, MAX_JSON_CHARS)
}

fn text(s: &str) -> String {
    summary::text(s, MAX_TEXT_CHARS)
}

fn error(e: &RecordedError) -> String {
    let kind = if e.retryable { "" } else { " (not retryable)" };
    format!("{}{kind}", text(&e.message))
}

/// What one event means, in words, given the state before it.
/// A `policy.check` output as one line: the path, each deciding rule with
/// its message, and the policy set's hash (bounded like any other line).
fn policy_decision(output: &serde_json::Value) -> Option<String> {
    let decision = output.get("decision")?.as_str()?;
    let rules = output.get("decided_by")?.as_array()?;
    let hash = output
        .get("policy_hash")
        .and_then(|h| h.as_str())
        .unwrap_or("");
    let rules: Vec<String> = rules
        .iter()
        .map(|r| {
            format!(
                "{} \"{}\"",
                r.get("id").and_then(|v| v.as_str()).unwrap_or("?"),
                r.get("message").and_then(|v| v.as_str()).unwrap_or("")
            )
        })
        .collect();
    Some(summary::text(
        &format!(
            "{decision} by {} [policy set {}]",
            rules.join("; "),
            &hash[..hash.len().min(12)]
        ),
        MAX_TEXT_CHARS,
    ))
}

fn describe(state: &TaskState, event: &Event) -> String {
    use EventPayload as E;
    match &event.payload {
        E::TaskSubmitted {
            workflow,
            workflow_version,
            input,
            agent: _,
            on_behalf_of,
            idempotency_key,
        } => {
            let mut s = format!(
                "submitted {workflow} v{workflow_version} by {}",
                summary::text(&event.actor, 60)
            );
            if let Some(user) = on_behalf_of {
                s.push_str(&format!(" on behalf of {}", summary::text(user, 60)));
            }
            s.push_str(&format!(", input {}", json(input)));
            if let Some(key) = idempotency_key {
                s.push_str(&format!(" (idempotency key {})", summary::text(key, 60)));
            }
            s
        }
        E::TaskStarted { worker, .. } => format!("started by worker {}", summary::text(worker, 60)),
        E::StepScheduled {
            name,
            tool,
            kind,
            input,
            compensation,
            recovery_path,
            ..
        } => {
            let mut s = format!(
                "step '{}' scheduled: {tool} {}",
                summary::text(name, 60),
                summary::json(input, MAX_STEP_INPUT_CHARS)
            );
            match compensation {
                Some(c) => s.push_str(&format!(
                    " (compensation: {} {})",
                    c.tool,
                    summary::json(&c.input, MAX_STEP_INPUT_CHARS)
                )),
                None if kind.is_write() => {
                    s.push_str(&format!(" ({kind}, no compensation"));
                    if let Some(path) = recovery_path {
                        s.push_str(&format!("; recovery path: {}", summary::text(path, 100)));
                    }
                    s.push(')');
                }
                None => {}
            }
            s
        }
        E::PolicyEvaluated {
            name,
            tool,
            input,
            principal,
            decision,
            ..
        } => {
            let rules: Vec<String> = decision
                .decided_by
                .iter()
                .map(|r| {
                    format!(
                        "{} \"{}\"",
                        summary::text(&r.id, 80),
                        summary::text(&r.message, 160)
                    )
                })
                .collect();
            let mut s = format!(
                "step '{}' decided by the gateway: {} for {} {} as {}{} — {} [policy set {}]",
                summary::text(name, 60),
                decision.path,
                tool,
                summary::json(input, MAX_STEP_INPUT_CHARS),
                summary::text(principal.agent.as_deref().unwrap_or("(operator task)"), 60),
                principal
                    .on_behalf_of
                    .as_deref()
                    .map(|u| format!(" on behalf of {}", summary::text(u, 60)))
                    .unwrap_or_default(),
                rules.join("; "),
                &decision.policy_hash[..decision.policy_hash.len().min(12)]
            );
            if let Some(p) = &decision.preapproval {
                s.push_str(&format!(
                    "; pre-approved by {} ({})",
                    summary::text(&p.granted_by, 60),
                    summary::text(&p.id, 40)
                ));
            }
            s
        }
        E::StepDenied { rule, reason, .. } => format!(
            "step denied ({}): {}",
            summary::text(rule, 80),
            summary::text(reason, MAX_TEXT_CHARS)
        ),
        E::ApprovalRequested {
            subject,
            approvers,
            quorum,
            deadline_at_ms,
            escalation,
            supersedes,
            ..
        } => format!(
            "approval of '{}' requested from {} (quorum {quorum}, deadline {}{}){}",
            summary::text(subject, 60),
            summary::text(&approvers.join(", "), 200),
            deadline_at_ms,
            escalation
                .as_deref()
                .map(|e| format!(", escalates to {}", summary::text(e, 60)))
                .unwrap_or_default(),
            supersedes
                .map(|s| format!(", replacing the request at seq {s}"))
                .unwrap_or_default()
        ),
        E::ApprovalDecided {
            identity,
            approved,
            comment,
            edit,
            via,
            ..
        } => format!(
            "{} by {}{}{}{}",
            if *approved { "approved" } else { "rejected" },
            summary::text(identity, 60),
            via.as_deref()
                .map(|v| format!(" (authenticated as {})", summary::text(v, 60)))
                .unwrap_or_default(),
            edit.as_ref()
                .map(|e| format!(", editing {}", summary::json(e, MAX_STEP_INPUT_CHARS)))
                .unwrap_or_default(),
            comment
                .as_deref()
                .map(|c| format!(": {}", summary::text(c, 200)))
                .unwrap_or_default()
        ),
        E::ApprovalEscalated {
            to, deadline_at_ms, ..
        } => format!(
            "approval escalated to {} (new deadline {deadline_at_ms})",
            summary::text(to, 60)
        ),
        E::ApprovalEditEvaluated {
            input, decision, ..
        } => format!(
            "the approver's edit {} re-checked: {} by {}",
            summary::json(input, MAX_STEP_INPUT_CHARS),
            decision.path,
            summary::text(&decision.explain(), 200)
        ),
        E::ApprovalResolved {
            request_seq,
            outcome,
            by,
            ..
        } => format!(
            "approval request {request_seq} {}{}",
            summary::text(outcome, 40),
            if by.is_empty() {
                String::new()
            } else {
                format!(" by {}", summary::text(&by.join(", "), 200))
            }
        ),
        E::StepCompleted {
            step_seq,
            output,
            duration_ms,
            ..
        } if policy_decision(output).is_some() => format!(
            "step {} decided by policy ({}): {}",
            step_name(state, *step_seq),
            summary::duration(*duration_ms as i64),
            policy_decision(output).unwrap_or_default()
        ),
        E::StepCompleted {
            step_seq,
            attempt,
            output,
            duration_ms,
            ..
        } => format!(
            "step {} completed (attempt {attempt}, {}): {}",
            step_name(state, *step_seq),
            summary::duration(*duration_ms as i64),
            json(output)
        ),
        E::StepAttemptFailed {
            step_seq,
            attempt,
            error: e,
            next_attempt_at_ms,
            ..
        } => format!(
            "step {} attempt {attempt} failed: {}; next attempt at {}",
            step_name(state, *step_seq),
            error(e),
            summary::clock(*next_attempt_at_ms)
        ),
        E::StepAttemptRestarted {
            step_seq,
            attempt,
            reason,
        } => format!(
            "step {} re-run as attempt {attempt}: {}",
            step_name(state, *step_seq),
            text(reason)
        ),
        E::StepFailed {
            step_seq,
            attempt,
            error: e,
            ..
        } => format!(
            "step {} failed for good on attempt {attempt}: {}",
            step_name(state, *step_seq),
            error(e)
        ),
        E::TimerStarted {
            duration_ms,
            fire_at_ms,
            ..
        } => format!(
            "sleeping {} (until {})",
            summary::duration(*duration_ms as i64),
            summary::clock(*fire_at_ms)
        ),
        E::TimerFired { timer_seq } => format!("timer #{timer_seq} fired"),
        E::SignalWaitStarted {
            name,
            approval,
            deadline_at_ms,
            ..
        } => {
            let what = if *approval { "approval" } else { "signal" };
            let mut s = format!("waiting for {what} '{}'", summary::text(name, 60));
            if let Some(d) = deadline_at_ms {
                s.push_str(&format!(
                    " until {} {}",
                    summary::day(*d),
                    summary::clock(*d)
                ));
            }
            s
        }
        E::SignalReceived {
            name,
            payload,
            sender,
        } => {
            let mut s = format!(
                "signal '{}' from {}",
                summary::text(name, 60),
                summary::text(sender, 60)
            );
            let empty = payload.is_null() || payload.as_object().is_some_and(|o| o.is_empty());
            if !empty {
                s.push_str(&format!(": {}", json(payload)));
            }
            s
        }
        E::SignalWaitResolved {
            wait_seq,
            signal_seq,
            timed_out,
        } => {
            let name = state
                .waits
                .get(wait_seq)
                .map(|w| format!("'{}'", summary::text(&w.name, 60)))
                .unwrap_or_else(|| format!("#{wait_seq}"));
            match (signal_seq, timed_out) {
                (_, true) => format!("wait for {name} timed out"),
                (Some(sig), false) => format!("wait for {name} resolved by signal #{sig}"),
                (None, false) => format!("wait for {name} resolved"),
            }
        }
        E::MarkerRecorded { kind, value, .. } => {
            format!("recorded {}: {}", summary::text(kind, 40), json(value))
        }
        E::WorkflowFailed { error } => format!("workflow failed: {}", text(error)),
        E::CancelRequested { rollback, reason } => {
            let how = if *rollback {
                "with rollback"
            } else {
                "without rollback"
            };
            match reason {
                Some(r) => format!("cancel requested ({how}): {}", text(r)),
                None => format!("cancel requested ({how})"),
            }
        }
        E::TaskPaused { reason } => match reason {
            Some(r) => format!("paused: {}", text(r)),
            None => "paused".to_string(),
        },
        E::TaskResumed {} => "resumed".to_string(),
        E::RetryRequested {} => "retry requested: waiting attempts run now".to_string(),
        E::CompensationStarted {
            step_seq,
            tool,
            input,
            ..
        } => format!(
            "compensating step {}: {tool} {}",
            step_name(state, *step_seq),
            json(input)
        ),
        E::CompensationCompleted {
            compensation_seq,
            attempt,
            duration_ms,
            ..
        } => format!(
            "compensation of step {} done (attempt {attempt}, {})",
            compensated_step(state, *compensation_seq),
            summary::duration(*duration_ms as i64)
        ),
        E::CompensationAttemptFailed {
            compensation_seq,
            attempt,
            error: e,
            next_attempt_at_ms,
            ..
        } => format!(
            "compensation of step {} attempt {attempt} failed: {}; next attempt at {}",
            compensated_step(state, *compensation_seq),
            error(e),
            summary::clock(*next_attempt_at_ms)
        ),
        E::CompensationFailed {
            compensation_seq,
            attempt,
            error: e,
            ..
        } => format!(
            "compensation of step {} failed for good on attempt {attempt}: {}",
            compensated_step(state, *compensation_seq),
            error(e)
        ),
        E::CompensationSkipped {
            step_seq,
            reason,
            recovery_path,
        } => {
            let mut s = format!(
                "step {} not compensated: {}",
                step_name(state, *step_seq),
                text(reason)
            );
            if let Some(p) = recovery_path {
                s.push_str(&format!("; recovery path: {}", text(p)));
            }
            s
        }
        E::TaskCompleted { output } => format!("task completed: {}", json(output)),
        E::TaskFailed {
            error,
            compensated_steps,
        } => format!(
            "task failed after compensating {compensated_steps} step(s): {}",
            text(error)
        ),
        E::TaskEscalated {
            reason,
            step_seq,
            recovery_paths,
        } => {
            let mut s = format!("escalated to a human: {}", text(reason));
            if let Some(seq) = step_seq {
                s.push_str(&format!(" (step {})", step_name(state, *seq)));
            }
            if !recovery_paths.is_empty() {
                s.push_str(&format!(
                    "; recovery: {}",
                    summary::text(&recovery_paths.join(" | "), MAX_TEXT_CHARS)
                ));
            }
            s
        }
        E::TaskCancelled {
            rolled_back,
            compensated_steps,
        } => {
            if *rolled_back {
                format!("task cancelled, {compensated_steps} step(s) compensated")
            } else {
                "task cancelled without rollback".to_string()
            }
        }
        E::TaskBlocked {
            reason,
            at_seq,
            expected,
            found,
        } => {
            let mut s = format!("BLOCKED: {}", text(reason));
            if let Some(seq) = at_seq {
                s.push_str(&format!(" (at seq {seq}"));
                if let Some(x) = expected {
                    s.push_str(&format!("; expected {}", summary::text(x, 80)));
                }
                if let Some(x) = found {
                    s.push_str(&format!("; found {}", summary::text(x, 80)));
                }
                s.push(')');
            }
            s
        }
        E::OwnersNotified { about_seq, routing } => {
            let who: Vec<String> = routing
                .recipients
                .iter()
                .map(|r| format!("{} (rule {}: {})", r.recipient, r.rule, r.why))
                .collect();
            let mut s = match routing.escalation_step {
                Some(n) => format!("escalation step {n}, nobody answered #{about_seq}: notified "),
                None => format!("notified about #{about_seq}: "),
            };
            s.push_str(&summary::text(&who.join("; "), MAX_TEXT_CHARS));
            if let Some(due) = routing.review_due_at_ms {
                s.push_str(&format!("; review due {}", summary::clock(due)));
            }
            text(&s)
        }
        E::NotificationResponded {
            notification_id,
            action,
            identity,
            via,
            assign_to,
            comment,
            ..
        } => {
            let mut s =
                format!("{identity} answered notification {notification_id}: {action} (via {via})");
            if let Some(to) = assign_to {
                s.push_str(&format!(" → {to}"));
            }
            if let Some(c) = comment {
                s.push_str(&format!(": {c}"));
            }
            text(&s)
        }
        E::EscalationResolved {
            identity,
            note,
            recovery_done,
            ..
        } => text(&format!(
            "escalation resolved by {identity}{}: {note}",
            if *recovery_done {
                " (recovery done)"
            } else {
                ""
            }
        )),
        E::ActionReported {
            agent,
            tool,
            resource,
            input_digest,
            outcome,
            error,
            occurred_at_ms,
            ..
        } => {
            let mut s = format!(
                "REPORTED AFTER THE FACT (not gated): {agent} ran {tool} on {} at {} ({input_digest}): {outcome}",
                resource.as_deref().unwrap_or("*"),
                summary::clock(*occurred_at_ms)
            );
            if let Some(e) = error {
                s.push_str(&format!(": {e}"));
            }
            text(&s)
        }
        E::PlaybookStarted {
            about_seq,
            playbook,
            workflow,
            playbook_task_id,
            error,
        } => text(&match (playbook_task_id, error) {
            (Some(t), _) => {
                format!("playbook {playbook} ({workflow}) started about #{about_seq}: task {t}")
            }
            (None, e) => format!(
                "playbook {playbook} about #{about_seq} could not start: {}",
                e.as_deref().unwrap_or("unknown")
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mandate_activities::ToolKind;
    use mandate_engine::{Compensation, RetryPolicy};
    use serde_json::json;

    const T0: i64 = 1_748_779_200_000; // 2025-06-01T12:00:00.000Z

    fn ev(seq: i64, at: i64, actor: &str, payload: EventPayload) -> Event {
        Event {
            task_id: "task-1".into(),
            seq,
            recorded_at_ms: T0 + at,
            actor: actor.into(),
            payload,
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    fn failed(message: &str, retryable: bool) -> RecordedError {
        RecordedError {
            message: message.into(),
            retryable,
            effect_unknown: false,
        }
    }

    /// A deploy whose health check fails and whose deploy is rolled back.
    fn rolled_back_deploy() -> Vec<Event> {
        use EventPayload as E;
        vec![
            // 1
            ev(
                1,
                0,
                "agent:x",
                E::TaskSubmitted {
                    workflow: "deploy_with_rollback".into(),
                    workflow_version: 1,
                    input: json!({"service": "checkout", "version": "v3-bad"}),
                    agent: Some("x".into()),
                    on_behalf_of: None,
                    idempotency_key: None,
                },
            ),
            // 2
            ev(
                2,
                5,
                "worker:w-1",
                E::TaskStarted {
                    worker: "w-1".into(),
                    polls: Default::default(),
                },
            ),
            // 3
            ev(
                3,
                6,
                "engine",
                E::StepScheduled {
                    command: 0,
                    name: "deploy".into(),
                    tool: "deploy.set_version".into(),
                    kind: ToolKind::WriteReversible,
                    input: json!({"service": "checkout", "version": "v3-bad"}),
                    retry: RetryPolicy::default(),
                    timeout_ms: 30_000,
                    compensation: Some(Compensation {
                        tool: "deploy.set_version".into(),
                        input: json!({"service": "checkout", "version": "v2"}),
                        retry: RetryPolicy::default(),
                    }),
                    recovery_path: None,
                    policy_seq: None,
                },
            ),
            // 4
            ev(
                4,
                10,
                "worker:w-1",
                E::StepAttemptFailed {
                    step_seq: 3,
                    attempt: 1,
                    error: failed("connection reset", true),
                    started_at_ms: T0 + 7,
                    duration_ms: 3,
                    next_attempt_at_ms: T0 + 210,
                },
            ),
            // 5
            ev(
                5,
                222,
                "worker:w-1",
                E::StepCompleted {
                    step_seq: 3,
                    attempt: 2,
                    output: json!({"service": "checkout", "version": "v3-bad", "previous_version": "v2"}),
                    started_at_ms: T0 + 210,
                    duration_ms: 12,
                },
            ),
            // 6
            ev(
                6,
                1_500,
                "engine",
                E::WorkflowFailed {
                    error: "service checkout version v3-bad is unhealthy".into(),
                },
            ),
            // 7
            ev(
                7,
                1_501,
                "engine",
                E::CompensationStarted {
                    step_seq: 3,
                    tool: "deploy.set_version".into(),
                    input: json!({"service": "checkout", "version": "v2"}),
                    retry: RetryPolicy::default(),
                },
            ),
            // 8
            ev(
                8,
                1_510,
                "worker:w-1",
                E::CompensationCompleted {
                    compensation_seq: 7,
                    attempt: 1,
                    output: json!({}),
                    started_at_ms: T0 + 1_502,
                    duration_ms: 8,
                },
            ),
            // 9
            ev(
                9,
                1_511,
                "engine",
                E::TaskFailed {
                    error: "service checkout version v3-bad is unhealthy".into(),
                    compensated_steps: 1,
                },
            ),
        ]
    }

    #[test]
    fn a_rolled_back_deploy_reads_as_a_story() {
        let lines = render(&rolled_back_deploy());
        let text = lines.join("\n");
        let expect = [
            "12:00:00.000  +0 ms        #1  agent:x     submitted deploy_with_rollback v1 by agent:x, input {service: checkout, version: v3-bad}",
            "step 'deploy' scheduled: deploy.set_version {service: checkout, version: v3-bad} (compensation: deploy.set_version {service: checkout, version: v2})",
            "step 'deploy' attempt 1 failed: connection reset; next attempt at 12:00:00.210",
            "12:00:00.222  +212 ms      #5  worker:w-1  step 'deploy' completed (attempt 2, 12 ms): {previous_version: v2, service: checkout, version: v3-bad}",
            "+1.278 s",
            "workflow failed: service checkout version v3-bad is unhealthy",
            "compensating step 'deploy': deploy.set_version {service: checkout, version: v2}",
            "compensation of step 'deploy' done (attempt 1, 8 ms)",
            "task failed after compensating 1 step(s): service checkout version v3-bad is unhealthy",
        ];
        for e in expect {
            assert!(text.contains(e), "missing {e:?} in\n{text}");
        }
    }

    #[test]
    fn status_changes_get_their_own_lines_in_order() {
        let lines = render(&rolled_back_deploy());
        let statuses: Vec<&str> = lines
            .iter()
            .filter_map(|l| l.trim_start().strip_prefix("status → "))
            .collect();
        assert_eq!(
            statuses,
            [
                "queued",
                "running",
                "executing",
                "failed_retryable",
                "running",
                "compensating",
                "failed_terminal"
            ]
        );
        // A status line is aligned under the description column.
        let first = &lines[0];
        let column = first.find("submitted").unwrap();
        assert_eq!(lines[1].find("status").unwrap(), column);
        assert_eq!(lines.len(), 9 + 7);
    }

    #[test]
    fn who_was_notified_and_who_answered_how() {
        use mandate_engine::core::routing::{NotifiedRecipient, RoutingRecord};
        let routing = RoutingRecord {
            matched_rules: vec!["root".into()],
            recipients: vec![NotifiedRecipient {
                recipient: "team-platform".into(),
                owner: "team-platform".into(),
                rule: "root".into(),
                why: "owns tool kv.put".into(),
                contacts: vec![],
                escalation_chain: None,
            }],
            recipients_dropped: 0,
            unowned: false,
            review_due_at_ms: None,
            group_key: "task=t".into(),
            group_wait_ms: 0,
            path: Some("monitored_execute".into()),
            outcome: None,
            summary: "step".into(),
            recovery_path: None,
            escalation_step: None,
            playbooks: vec!["health-check".into()],
        };
        let mut events = rolled_back_deploy();
        let last = events.last().unwrap().seq;
        events.push(ev(
            last + 1,
            T0 + 5_000,
            "engine",
            EventPayload::OwnersNotified {
                about_seq: 2,
                routing: Box::new(routing),
            },
        ));
        events.push(ev(
            last + 2,
            T0 + 8_000,
            "agent:deployer",
            EventPayload::ActionReported {
                agent: "deployer".into(),
                tool: "shell.exec".into(),
                resource: Some("service:checkout".into()),
                input_digest: format!("sha256:{}", "0".repeat(64)),
                outcome: "failed".into(),
                error: Some("exit 1".into()),
                occurred_at_ms: T0 + 7_000,
                recovery_path: None,
            },
        ));
        events.push(ev(
            last + 3,
            T0 + 8_500,
            "engine",
            EventPayload::PlaybookStarted {
                about_seq: 2,
                playbook: "health-check".into(),
                workflow: "health_check".into(),
                playbook_task_id: Some("task-9".into()),
                error: None,
            },
        ));
        events.push(ev(
            last + 4,
            T0 + 9_000,
            "user:pat",
            EventPayload::NotificationResponded {
                notification_id: "n-1".into(),
                about_seq: Some(2),
                action: "acknowledge".into(),
                identity: "pat".into(),
                via: "link".into(),
                notified_at_ms: Some(T0 + 5_000),
                assign_to: None,
                comment: None,
            },
        ));
        let text = render(&events).join("\n");
        assert!(
            text.contains("notified about #2: team-platform (rule root: owns tool kv.put)"),
            "{text}"
        );
        assert!(
            text.contains("pat answered notification n-1: acknowledge (via link)"),
            "{text}"
        );
        assert!(
            text.contains("playbook health-check (health_check) started about #2: task task-9"),
            "{text}"
        );
        assert!(
            text.contains("REPORTED AFTER THE FACT (not gated): deployer ran shell.exec on service:checkout at "),
            "{text}"
        );
    }

    #[test]
    fn payload_summaries_are_bounded() {
        let mut events = rolled_back_deploy();
        events[0].payload = EventPayload::TaskSubmitted {
            workflow: "saga".into(),
            workflow_version: 1,
            input: json!({"blob": "z".repeat(100_000)}),
            agent: None,
            on_behalf_of: None,
            idempotency_key: None,
        };
        events[1].actor = "worker:a-very-long-worker-name-that-goes-on".into();
        let lines = render(&events);
        assert!(lines[0].chars().count() < 250, "{}", lines[0]);
        assert!(lines[0].contains('…'));
        assert!(lines.iter().all(|l| l.chars().count() < 400));
    }

    #[test]
    fn signals_and_day_changes() {
        use EventPayload as E;
        let events = vec![
            ev(
                1,
                0,
                "user:cli",
                E::TaskSubmitted {
                    workflow: "gated_deploy".into(),
                    workflow_version: 1,
                    input: json!({}),
                    agent: None,
                    on_behalf_of: Some("alice".into()),
                    idempotency_key: Some("k1".into()),
                },
            ),
            ev(
                2,
                86_400_000,
                "user:bob",
                E::SignalReceived {
                    name: "approve".into(),
                    payload: json!({"approved": true}),
                    sender: "user:bob".into(),
                },
            ),
        ];
        let lines = render(&events);
        assert!(lines[0].contains("on behalf of alice"), "{}", lines[0]);
        assert!(lines[0].contains("(idempotency key k1)"), "{}", lines[0]);
        assert_eq!(lines[2], "── 2025-06-02 (UTC) ──");
        assert!(
            lines[3].contains("+1 d 00 h")
                && lines[3].contains("signal 'approve' from user:bob: {approved: true}"),
            "{}",
            lines[3]
        );
        assert!(render(&[]).is_empty());
    }

    #[test]
    fn policy_decisions_show_their_rules_and_messages() {
        use EventPayload as E;
        let output = json!({"decision": "deny", "policy_hash": "abcdef0123456789",
            "decided_by": [{"id": "org.autonomy.l0-observe-only", "message": "an L0 agent only observes", "level": "org"}]});
        let events = vec![
            ev(
                1,
                0,
                "engine",
                E::StepScheduled {
                    command: 0,
                    name: "a.policy".into(),
                    tool: "policy.check".into(),
                    kind: ToolKind::Read,
                    input: json!({}),
                    retry: RetryPolicy::default(),
                    timeout_ms: 1000,
                    compensation: None,
                    recovery_path: None,
                    policy_seq: None,
                },
            ),
            ev(
                2,
                5,
                "worker:w",
                E::StepCompleted {
                    step_seq: 1,
                    attempt: 1,
                    output,
                    started_at_ms: T0,
                    duration_ms: 1,
                },
            ),
        ];
        let text = render(&events).join("\n");
        assert!(text.contains("decided by policy"), "{text}");
        assert!(
            text.contains("deny by org.autonomy.l0-observe-only \"an L0 agent only observes\""),
            "{text}"
        );
        assert!(text.contains("policy set abcdef012345"), "{text}");
    }
}
