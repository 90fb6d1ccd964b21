//! `test.echo` and `test.fault`: no database, and a paused clock so sleeps
//! and hangs cost no real time.

use std::time::Duration;

use mandate_activities::demo::{MAX_SLEEP_MS, TestEcho, TestFault};
use mandate_activities::{Tool, ToolContext, ToolError};
use serde_json::{Value, json};

async fn fault(attempt: u32, input: Value) -> Result<Value, ToolError> {
    TestFault
        .call(ToolContext::new("task", 3, attempt), input)
        .await
}

#[tokio::test]
async fn echo_returns_its_input() {
    let input = json!({"anything": [1, "two", null]});
    assert_eq!(
        TestEcho
            .call(ToolContext::new("t", 1, 1), input.clone())
            .await,
        Ok(input)
    );
    assert_eq!(
        TestEcho.call(ToolContext::new("t", 1, 1), json!(7)).await,
        Ok(json!(7))
    );
}

#[tokio::test]
async fn ok_returns_the_output_or_an_empty_object() {
    assert_eq!(fault(1, json!({"mode": "ok"})).await, Ok(json!({})));
    assert_eq!(
        fault(1, json!({"mode": "ok", "output": [1]})).await,
        Ok(json!([1]))
    );
}

#[tokio::test]
async fn fail_is_retryable_every_time_and_names_the_attempt() {
    for attempt in 1..=3 {
        let error = fault(attempt, json!({"mode": "fail", "message": "disk on fire"}))
            .await
            .unwrap_err();
        assert!(error.retryable);
        assert!(error.message.contains("disk on fire"), "{}", error.message);
        assert!(
            error.message.contains(&format!("attempt {attempt}")),
            "{}",
            error.message
        );
    }
}

#[tokio::test]
async fn fail_terminal_is_not_retryable() {
    let error = fault(2, json!({"mode": "fail_terminal"}))
        .await
        .unwrap_err();
    assert!(!error.retryable);
    assert!(
        error.message.contains("test.fault") && error.message.contains("attempt 2"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn fail_times_fails_the_first_attempts_then_succeeds() {
    let input = json!({"mode": "fail_times", "times": 2, "output": "done"});
    for attempt in 1..=2 {
        let error = fault(attempt, input.clone()).await.unwrap_err();
        assert!(error.retryable, "{error:?}");
        assert!(
            error.message.contains(&format!("attempt {attempt}")),
            "{}",
            error.message
        );
    }
    assert_eq!(fault(3, input.clone()).await, Ok(json!("done")));
    assert_eq!(fault(4, input).await, Ok(json!("done")));
}

#[tokio::test(start_paused = true)]
async fn sleep_waits_then_succeeds() {
    let started = tokio::time::Instant::now();
    assert_eq!(
        fault(1, json!({"mode": "sleep", "sleep_ms": 5000, "output": 1})).await,
        Ok(json!(1))
    );
    assert!(started.elapsed() >= Duration::from_millis(5000));
}

#[tokio::test(start_paused = true)]
async fn hang_never_returns() {
    let outcome = tokio::time::timeout(
        Duration::from_secs(24 * 60 * 60),
        fault(1, json!({"mode": "hang"})),
    )
    .await;
    assert!(outcome.is_err(), "hang returned {outcome:?}");
}

#[tokio::test]
async fn bad_input_is_a_non_retryable_error_naming_the_field() {
    let cases = [
        (json!({}), "`mode`"),
        (json!({"mode": 1}), "`mode`"),
        (json!({"mode": "explode"}), "`mode`"),
        (json!({"mode": "fail_times"}), "`times`"),
        (json!({"mode": "fail_times", "times": -1}), "`times`"),
        (json!({"mode": "sleep"}), "`sleep_ms`"),
        (
            json!({"mode": "sleep", "sleep_ms": MAX_SLEEP_MS + 1}),
            "`sleep_ms`",
        ),
        (json!({"mode": "fail", "message": false}), "`message`"),
        (json!("ok"), "JSON object"),
    ];
    for (input, field) in cases {
        let error = fault(1, input.clone()).await.unwrap_err();
        assert!(!error.retryable, "{input}: {error:?}");
        assert!(
            error.message.contains("test.fault") && error.message.contains(field),
            "{input}: {}",
            error.message
        );
    }
}
