//! The demo tools through the [`Tool`] interface, as the engine calls them.
//! Tools that touch the world run on SQLite and on PostgreSQL.

mod common;

use common::TestDb;
use mandate_activities::demo::names;
use mandate_activities::{ToolContext, ToolError, ToolKind, ToolRegistry, register_demo_tools};
use serde_json::{Value, json};

on_both_backends!(
    every_demo_tool_is_registered_with_its_kind_and_recovery_path,
    deploy_snapshot_set_version_and_health_check,
    deploy_rejects_bad_input,
    flag_set_and_restore,
    flag_rejects_bad_input,
    ledger_charge_and_refund,
    ledger_rejects_bad_input_and_overdrawn_refunds,
    kv_put_and_delete,
    kv_rejects_bad_input,
    email_send_records_the_message,
    email_rejects_bad_input,
    duplicate_deliveries_of_every_write_tool_apply_once,
    iam_list_validate_propose_put_and_restore,
    fault_write_writes_only_on_success,
    a_compensating_tool_fences_its_step_against_a_late_attempt,
);

fn registry(db: &TestDb) -> ToolRegistry {
    let mut registry = ToolRegistry::new();
    register_demo_tools(&mut registry, db.world.clone());
    registry
}

/// Calls `tool` as task "task" at `seq`, first attempt.
async fn call(
    registry: &ToolRegistry,
    tool: &str,
    seq: i64,
    input: Value,
) -> Result<Value, ToolError> {
    call_attempt(registry, tool, seq, 1, input).await
}

async fn call_attempt(
    registry: &ToolRegistry,
    tool: &str,
    seq: i64,
    attempt: u32,
    input: Value,
) -> Result<Value, ToolError> {
    let tool = registry
        .get(tool)
        .unwrap_or_else(|| panic!("{tool} is not registered"));
    tool.call(ToolContext::new("task", seq, attempt), input)
        .await
}

/// Asserts a non-retryable error whose message contains every fragment.
fn assert_bad_input(result: Result<Value, ToolError>, fragments: &[&str]) {
    let error = result.expect_err("bad input must fail");
    assert!(
        !error.retryable,
        "bad input must not be retryable: {error:?}"
    );
    for fragment in fragments {
        assert!(
            error.message.contains(fragment),
            "{:?} does not mention {fragment:?}",
            error.message
        );
    }
}

async fn every_demo_tool_is_registered_with_its_kind_and_recovery_path(db: &TestDb) {
    let registry = registry(db);
    let expected = [
        (names::DEPLOY_HEALTH_CHECK, ToolKind::Read),
        (names::DEPLOY_SET_VERSION, ToolKind::WriteReversible),
        (names::DEPLOY_SNAPSHOT, ToolKind::Read),
        (names::EMAIL_SEND, ToolKind::WriteIrreversible),
        (names::FLAG_RESTORE, ToolKind::WriteReversible),
        (names::FLAG_SET, ToolKind::WriteReversible),
        (names::IAM_LIST_POLICIES, ToolKind::Read),
        (names::IAM_PROPOSE_POLICY, ToolKind::Read),
        (names::IAM_PUT_POLICY, ToolKind::WriteReversible),
        (names::IAM_RESTORE_POLICY, ToolKind::WriteReversible),
        (names::IAM_VALIDATE_POLICY, ToolKind::Read),
        (names::KV_DELETE, ToolKind::WriteReversible),
        (names::KV_PUT, ToolKind::WriteReversible),
        (names::LEDGER_CHARGE, ToolKind::WriteReversible),
        (names::LEDGER_REFUND, ToolKind::WriteReversible),
        (names::TEST_ECHO, ToolKind::Read),
        (names::TEST_FAULT, ToolKind::Read),
        (names::TEST_FAULT_WRITE, ToolKind::WriteReversible),
    ];
    assert_eq!(
        registry.names(),
        expected
            .iter()
            .map(|(name, _)| name.to_string())
            .collect::<Vec<_>>()
    );
    for (name, kind) in expected {
        let tool = registry.get(name).unwrap();
        assert_eq!(tool.name(), name);
        assert_eq!(tool.kind(), kind, "{name}");
    }
    let recovery = |name: &str| {
        registry
            .get(name)
            .unwrap()
            .recovery_path()
            .map(str::to_owned)
    };
    assert_eq!(
        recovery(names::DEPLOY_SET_VERSION).as_deref(),
        Some("deploy → traffic rollback to the previous version; migrations may be irreversible")
    );
    assert_eq!(
        recovery(names::LEDGER_CHARGE).as_deref(),
        Some("payment → refund via the ledger, 90-day window, fees not refunded")
    );
    assert_eq!(
        recovery(names::EMAIL_SEND).as_deref(),
        Some("email → send a correction email")
    );
}

async fn deploy_snapshot_set_version_and_health_check(db: &TestDb) {
    let registry = registry(db);
    let api = json!({"service": "api"});
    assert_eq!(
        call(&registry, names::DEPLOY_SNAPSHOT, 1, api.clone()).await,
        Ok(json!({"service": "api", "version": "v0"}))
    );
    assert_eq!(
        call(
            &registry,
            names::DEPLOY_SET_VERSION,
            2,
            json!({"service": "api", "version": "v1"})
        )
        .await,
        Ok(json!({"service": "api", "previous_version": "v0", "version": "v1"}))
    );
    assert_eq!(
        call(&registry, names::DEPLOY_SNAPSHOT, 3, api.clone()).await,
        Ok(json!({"service": "api", "version": "v1"}))
    );
    assert_eq!(
        call(&registry, names::DEPLOY_HEALTH_CHECK, 4, api.clone()).await,
        Ok(json!({"service": "api", "version": "v1", "healthy": true}))
    );
    assert_eq!(
        call(
            &registry,
            names::DEPLOY_HEALTH_CHECK,
            5,
            json!({"service": "api", "expect_healthy": false})
        )
        .await,
        Err(ToolError::non_retryable(
            "service api version v1 is unhealthy"
        ))
    );

    // A bad version fails its health check, and set_version is its own
    // compensation.
    let deployed = call(
        &registry,
        names::DEPLOY_SET_VERSION,
        6,
        json!({"service": "api", "version": "v2-bad"}),
    )
    .await
    .unwrap();
    assert_eq!(
        call(&registry, names::DEPLOY_HEALTH_CHECK, 7, api.clone()).await,
        Err(ToolError::non_retryable(
            "service api version v2-bad is unhealthy"
        ))
    );
    let rollback = json!({"service": "api", "version": deployed["previous_version"]});
    assert_eq!(
        call(&registry, names::DEPLOY_SET_VERSION, 8, rollback).await,
        Ok(json!({"service": "api", "previous_version": "v2-bad", "version": "v1"}))
    );
    assert_eq!(
        db.world.get("service", "api").await.unwrap(),
        Some(json!({"version": "v1"}))
    );
}

async fn deploy_rejects_bad_input(db: &TestDb) {
    let registry = registry(db);
    assert_bad_input(
        call(&registry, names::DEPLOY_SNAPSHOT, 1, json!({})).await,
        &["deploy.snapshot", "`service`", "missing"],
    );
    assert_bad_input(
        call(
            &registry,
            names::DEPLOY_SET_VERSION,
            2,
            json!({"service": "api", "version": 3}),
        )
        .await,
        &["deploy.set_version", "`version`", "string"],
    );
    assert_bad_input(
        call(
            &registry,
            names::DEPLOY_SET_VERSION,
            3,
            json!({"service": "", "version": "v1"}),
        )
        .await,
        &["deploy.set_version", "`service`", "empty"],
    );
    assert_bad_input(
        call(
            &registry,
            names::DEPLOY_HEALTH_CHECK,
            4,
            json!({"service": "api", "expect_healthy": "no"}),
        )
        .await,
        &["deploy.health_check", "`expect_healthy`", "boolean"],
    );
    assert_bad_input(
        call(&registry, names::DEPLOY_HEALTH_CHECK, 5, json!(["api"])).await,
        &["deploy.health_check", "JSON object"],
    );
    assert_eq!(db.world.effect_count().await.unwrap(), 0);
}

async fn flag_set_and_restore(db: &TestDb) {
    let registry = registry(db);
    assert_eq!(
        call(
            &registry,
            names::FLAG_SET,
            1,
            json!({"flag": "beta", "value": {"pct": 10}})
        )
        .await,
        Ok(json!({"flag": "beta", "previous": null, "value": {"pct": 10}}))
    );
    assert_eq!(
        call(
            &registry,
            names::FLAG_SET,
            2,
            json!({"flag": "beta", "value": true})
        )
        .await,
        Ok(json!({"flag": "beta", "previous": {"pct": 10}, "value": true}))
    );
    assert_eq!(
        db.world.get("flag", "beta").await.unwrap(),
        Some(json!(true))
    );
    assert_eq!(
        call(
            &registry,
            names::FLAG_RESTORE,
            3,
            json!({"flag": "beta", "value": {"pct": 10}})
        )
        .await,
        Ok(json!({"flag": "beta", "value": {"pct": 10}}))
    );
    assert_eq!(
        db.world.get("flag", "beta").await.unwrap(),
        Some(json!({"pct": 10}))
    );
    // Restoring null (the `previous` of a first set) deletes the flag.
    assert_eq!(
        call(
            &registry,
            names::FLAG_RESTORE,
            4,
            json!({"flag": "beta", "value": null})
        )
        .await,
        Ok(json!({"flag": "beta", "value": null}))
    );
    assert_eq!(db.world.get("flag", "beta").await.unwrap(), None);
}

async fn flag_rejects_bad_input(db: &TestDb) {
    let registry = registry(db);
    assert_bad_input(
        call(&registry, names::FLAG_SET, 1, json!({"flag": "beta"})).await,
        &["flag.set", "`value`", "missing"],
    );
    assert_bad_input(
        call(
            &registry,
            names::FLAG_RESTORE,
            2,
            json!({"flag": 1, "value": 1}),
        )
        .await,
        &["flag.restore", "`flag`", "string"],
    );
    assert_eq!(db.world.effect_count().await.unwrap(), 0);
}

async fn ledger_charge_and_refund(db: &TestDb) {
    let registry = registry(db);
    assert_eq!(
        call(
            &registry,
            names::LEDGER_CHARGE,
            1,
            json!({"account": "acme", "amount_cents": 1500})
        )
        .await,
        Ok(json!({"account": "acme", "amount_cents": 1500, "balance_cents": 1500}))
    );
    assert_eq!(
        call(
            &registry,
            names::LEDGER_CHARGE,
            2,
            json!({"account": "acme", "amount_cents": 500})
        )
        .await,
        Ok(json!({"account": "acme", "amount_cents": 500, "balance_cents": 2000}))
    );
    assert_eq!(
        call(
            &registry,
            names::LEDGER_REFUND,
            3,
            json!({"account": "acme", "amount_cents": 500})
        )
        .await,
        Ok(json!({"account": "acme", "amount_cents": 500, "balance_cents": 1500}))
    );
    assert_eq!(
        db.world.get("ledger", "acme").await.unwrap(),
        Some(json!({"balance_cents": 1500}))
    );
    // Refunding everything leaves no trace of the account.
    call(
        &registry,
        names::LEDGER_REFUND,
        4,
        json!({"account": "acme", "amount_cents": 1500}),
    )
    .await
    .unwrap();
    assert_eq!(db.world.get("ledger", "acme").await.unwrap(), None);
}

async fn ledger_rejects_bad_input_and_overdrawn_refunds(db: &TestDb) {
    let registry = registry(db);
    for (seq, amount) in [json!(0), json!(-5), json!("10"), json!(1.5)]
        .into_iter()
        .enumerate()
    {
        assert_bad_input(
            call(
                &registry,
                names::LEDGER_CHARGE,
                seq as i64,
                json!({"account": "acme", "amount_cents": amount}),
            )
            .await,
            &["ledger.charge", "`amount_cents`", "greater than 0"],
        );
    }
    assert_bad_input(
        call(
            &registry,
            names::LEDGER_REFUND,
            10,
            json!({"amount_cents": 5}),
        )
        .await,
        &["ledger.refund", "`account`", "missing"],
    );
    call(
        &registry,
        names::LEDGER_CHARGE,
        11,
        json!({"account": "acme", "amount_cents": 100}),
    )
    .await
    .unwrap();
    assert_bad_input(
        call(
            &registry,
            names::LEDGER_REFUND,
            12,
            json!({"account": "acme", "amount_cents": 101}),
        )
        .await,
        &["ledger.refund", "acme", "balance is only 100 cents"],
    );
    assert_eq!(
        db.world.get("ledger", "acme").await.unwrap(),
        Some(json!({"balance_cents": 100}))
    );
    assert_eq!(db.world.effect_count().await.unwrap(), 1);
}

async fn kv_put_and_delete(db: &TestDb) {
    let registry = registry(db);
    assert_eq!(
        call(
            &registry,
            names::KV_PUT,
            1,
            json!({"key": "k", "value": [1, 2]})
        )
        .await,
        Ok(json!({"key": "k", "previous": null, "value": [1, 2]}))
    );
    assert_eq!(
        call(
            &registry,
            names::KV_PUT,
            2,
            json!({"key": "k", "value": "x"})
        )
        .await,
        Ok(json!({"key": "k", "previous": [1, 2], "value": "x"}))
    );
    assert_eq!(
        call(&registry, names::KV_DELETE, 3, json!({"key": "k"})).await,
        Ok(json!({"key": "k", "previous": "x"}))
    );
    assert_eq!(db.world.get("kv", "k").await.unwrap(), None);
    // Deleting an absent key succeeds, so a repeated compensation is harmless.
    assert_eq!(
        call(&registry, names::KV_DELETE, 4, json!({"key": "k"})).await,
        Ok(json!({"key": "k", "previous": null}))
    );
    // Putting null means "absent" too.
    call(&registry, names::KV_PUT, 5, json!({"key": "n", "value": 1}))
        .await
        .unwrap();
    call(
        &registry,
        names::KV_PUT,
        6,
        json!({"key": "n", "value": null}),
    )
    .await
    .unwrap();
    assert!(db.world.list("kv").await.unwrap().is_empty());
}

async fn kv_rejects_bad_input(db: &TestDb) {
    let registry = registry(db);
    assert_bad_input(
        call(&registry, names::KV_PUT, 1, json!({"key": "k"})).await,
        &["kv.put", "`value`", "missing"],
    );
    assert_bad_input(
        call(&registry, names::KV_DELETE, 2, json!({"key": null})).await,
        &["kv.delete", "`key`", "string"],
    );
    assert_eq!(db.world.effect_count().await.unwrap(), 0);
}

async fn email_send_records_the_message(db: &TestDb) {
    let registry = registry(db);
    let sent = call(
        &registry,
        names::EMAIL_SEND,
        9,
        json!({"to": "ops@example.com", "subject": "deployed"}),
    )
    .await
    .unwrap();
    assert_eq!(sent, json!({"message_id": "msg-task:9"}));
    assert_eq!(
        db.world.get("email", "msg-task:9").await.unwrap(),
        Some(json!({
            "message_id": "msg-task:9",
            "to": "ops@example.com",
            "subject": "deployed",
            "task_id": "task",
        }))
    );
}

async fn email_rejects_bad_input(db: &TestDb) {
    let registry = registry(db);
    assert_bad_input(
        call(
            &registry,
            names::EMAIL_SEND,
            1,
            json!({"to": "ops@example.com"}),
        )
        .await,
        &["email.send", "`subject`", "missing"],
    );
    assert_bad_input(
        call(
            &registry,
            names::EMAIL_SEND,
            2,
            json!({"to": "nobody", "subject": "s"}),
        )
        .await,
        &["email.send", "`to`", "email address"],
    );
    assert!(db.world.list("email").await.unwrap().is_empty());
}

async fn duplicate_deliveries_of_every_write_tool_apply_once(db: &TestDb) {
    let registry = registry(db);
    let calls = [
        (
            names::DEPLOY_SET_VERSION,
            json!({"service": "api", "version": "v9"}),
        ),
        (names::FLAG_SET, json!({"flag": "f", "value": 1})),
        (names::FLAG_RESTORE, json!({"flag": "g", "value": 2})),
        (
            names::LEDGER_CHARGE,
            json!({"account": "a", "amount_cents": 10}),
        ),
        (
            names::LEDGER_REFUND,
            json!({"account": "a", "amount_cents": 4}),
        ),
        (names::KV_PUT, json!({"key": "k", "value": 1})),
        (names::KV_DELETE, json!({"key": "k"})),
        (names::EMAIL_SEND, json!({"to": "a@b.c", "subject": "s"})),
        (
            names::IAM_PUT_POLICY,
            json!({"policy": "data-export", "expected_version": 1, "document": {"Statement": []}}),
        ),
        (
            names::IAM_RESTORE_POLICY,
            json!({"policy": "data-export", "version": 1}),
        ),
        (
            names::TEST_FAULT_WRITE,
            json!({"mode": "ok", "key": "w", "output": {"w": 1}}),
        ),
    ];
    for (index, (tool, input)) in calls.iter().enumerate() {
        let seq = index as i64 + 1;
        let first = call_attempt(&registry, tool, seq, 1, input.clone())
            .await
            .unwrap();
        let before = db.world.effect_count().await.unwrap();
        // A redelivery (a later attempt of the same scheduled call) must not
        // apply again, and must report what the first delivery did.
        let again = call_attempt(&registry, tool, seq, 2, input.clone())
            .await
            .unwrap();
        assert_eq!(first, again, "{tool}");
        assert_eq!(
            db.world.effect_count().await.unwrap(),
            before,
            "{tool} applied twice"
        );
        assert_eq!(before, seq, "{tool} did not record exactly one effect");
    }
    assert_eq!(
        db.world.get("ledger", "a").await.unwrap(),
        Some(json!({"balance_cents": 6}))
    );
    assert_eq!(db.world.get("kv", "k").await.unwrap(), None);
    assert_eq!(db.world.list("email").await.unwrap().len(), 1);
    assert_eq!(
        db.world
            .get("iam_policy", "data-export")
            .await
            .unwrap()
            .unwrap()["default_version"],
        1
    );
}

/// The seeded IAM estate: enumerate, validate, propose (a dry run that
/// refuses unsafe or stale proposals), put, and restore.
async fn iam_list_validate_propose_put_and_restore(db: &TestDb) {
    let registry = registry(db);
    let listed = call(&registry, names::IAM_LIST_POLICIES, 1, json!({}))
        .await
        .unwrap();
    assert_eq!(listed["count"], 4);
    let original = listed["policies"]["ci-deployer"].clone();
    assert_eq!(original["version"], 1);
    assert_eq!(original["document"]["Statement"][0]["Action"], "*");
    let audit = call(
        &registry,
        names::IAM_VALIDATE_POLICY,
        2,
        json!({"policies": listed["policies"]}),
    )
    .await
    .unwrap();
    assert_eq!(
        audit["flagged"],
        json!(["break-glass-admin", "ci-deployer", "data-export"])
    );
    assert_eq!(audit["clean"], false);
    let tight =
        json!({"Statement": [{"Effect": "Allow", "Action": "ecs:UpdateService", "Resource": "*"}]});
    let proposal = call(
        &registry,
        names::IAM_PROPOSE_POLICY,
        3,
        json!({"policy": "ci-deployer", "document": tight, "base_version": 1}),
    )
    .await
    .unwrap();
    assert_eq!(proposal["base_version"], 1);
    assert_eq!(proposal["current_document"], original["document"]);
    assert_eq!(
        proposal["findings_before"][0]["problem"],
        "Action \"*\" allows every action"
    );
    assert_bad_input(
        call(
            &registry,
            names::IAM_PROPOSE_POLICY,
            4,
            json!({"policy": "ci-deployer", "document": {"Statement": {"Effect": "Allow", "Action": "s3:*"}}}),
        )
        .await,
        &["proposal for ci-deployer is itself unsafe", "s3:*"],
    );
    let put = call(
        &registry,
        names::IAM_PUT_POLICY,
        5,
        json!({"policy": "ci-deployer", "document": tight, "expected_version": 1}),
    )
    .await
    .unwrap();
    assert_eq!(put["previous_version"], 1);
    assert_eq!(put["version"], 2);
    assert_eq!(put["previous_document"], original["document"]);
    // Stale: the policy is at version 2 now.
    for (seq, tool, input) in [
        (
            6,
            names::IAM_PUT_POLICY,
            json!({"policy": "ci-deployer", "document": tight, "expected_version": 1}),
        ),
        (
            7,
            names::IAM_PROPOSE_POLICY,
            json!({"policy": "ci-deployer", "document": tight, "base_version": 1}),
        ),
    ] {
        assert_bad_input(
            call(&registry, tool, seq, input).await,
            &["ci-deployer is at version 2, not 1"],
        );
    }
    let restored = call(
        &registry,
        names::IAM_RESTORE_POLICY,
        8,
        json!({"policy": "ci-deployer", "version": 1}),
    )
    .await
    .unwrap();
    assert_eq!(restored["previous_version"], 2);
    assert_eq!(restored["document"], original["document"]);
    let listed = call(
        &registry,
        names::IAM_LIST_POLICIES,
        9,
        json!({"prefix": "ci-"}),
    )
    .await
    .unwrap();
    assert_eq!(listed["policies"], json!({"ci-deployer": original}));
    // Restoring the version in force changes nothing: a safe undo of a put
    // that never happened.
    let again = call(
        &registry,
        names::IAM_RESTORE_POLICY,
        10,
        json!({"policy": "ci-deployer", "version": 1}),
    )
    .await
    .unwrap();
    assert_eq!(again["previous_version"], 1);
    assert_bad_input(
        call(
            &registry,
            names::IAM_RESTORE_POLICY,
            11,
            json!({"policy": "ci-deployer", "version": 9}),
        )
        .await,
        &["keeps no version 9"],
    );
    assert_bad_input(
        call(
            &registry,
            names::IAM_PUT_POLICY,
            12,
            json!({"policy": "ghost", "document": {}, "expected_version": 1}),
        )
        .await,
        &["no IAM policy \"ghost\""],
    );
    assert_bad_input(
        call(
            &registry,
            names::IAM_PUT_POLICY,
            13,
            json!({"policy": "ci-deployer", "document": {}}),
        )
        .await,
        &["`expected_version` is missing"],
    );
}

async fn fault_write_writes_only_on_success(db: &TestDb) {
    let registry = registry(db);
    let error = call(
        &registry,
        names::TEST_FAULT_WRITE,
        1,
        json!({"mode": "fail", "key": "w"}),
    )
    .await
    .unwrap_err();
    assert!(error.retryable);
    let error = call(
        &registry,
        names::TEST_FAULT_WRITE,
        2,
        json!({"mode": "ok", "key": 5}),
    )
    .await
    .unwrap_err();
    assert!(
        !error.retryable && error.message.contains("`key`"),
        "{error:?}"
    );
    assert_eq!(db.world.effect_count().await.unwrap(), 0);

    let flaky = json!({"mode": "fail_times", "times": 1, "key": "w", "output": {"ok": true}});
    assert!(
        call_attempt(&registry, names::TEST_FAULT_WRITE, 3, 1, flaky.clone())
            .await
            .is_err()
    );
    assert_eq!(db.world.get("kv", "w").await.unwrap(), None);
    assert_eq!(
        call_attempt(&registry, names::TEST_FAULT_WRITE, 3, 2, flaky).await,
        Ok(json!({"ok": true}))
    );
    assert_eq!(
        db.world.get("kv", "w").await.unwrap(),
        Some(json!({"ok": true}))
    );

    // Without a key it writes nothing.
    assert_eq!(
        call(&registry, names::TEST_FAULT_WRITE, 4, json!({"mode": "ok"})).await,
        Ok(json!({}))
    );
    assert_eq!(db.world.effect_count().await.unwrap(), 1);
}

async fn a_compensating_tool_fences_its_step_against_a_late_attempt(db: &TestDb) {
    let registry = registry(db);
    let tool = |name: &str| registry.get(name).expect("registered");
    // Step 5 writes `late`; its attempt was given up on before it applied,
    // and its compensation (seq 8) runs first.
    let undo = tool(names::KV_DELETE)
        .call(
            ToolContext::compensation("task", 8, 1, 5),
            json!({"key": "late"}),
        )
        .await;
    assert_eq!(undo, Ok(json!({"key": "late", "previous": null})));
    let late = tool(names::TEST_FAULT_WRITE)
        .call(
            ToolContext::new("task", 5, 1),
            json!({"mode": "ok", "key": "late", "output": {"v": 1}}),
        )
        .await
        .expect_err("a fenced step must not apply");
    assert!(!late.retryable, "{late:?}");
    assert!(
        late.message.starts_with("test.fault_write: ")
            && late.message.contains("fenced by compensation task:8"),
        "{late:?}"
    );
    assert_eq!(db.world.get("kv", "late").await.unwrap(), None);
    // The same holds across tools: a deploy rolled back by its own tool.
    tool(names::DEPLOY_SET_VERSION)
        .call(
            ToolContext::compensation("task", 12, 1, 10),
            json!({"service": "api", "version": "v0"}),
        )
        .await
        .unwrap();
    let late = tool(names::DEPLOY_SET_VERSION)
        .call(
            ToolContext::new("task", 10, 2),
            json!({"service": "api", "version": "v9"}),
        )
        .await
        .expect_err("a fenced deploy must not apply");
    assert!(
        late.message.contains("fenced by compensation task:12"),
        "{late:?}"
    );
    assert_eq!(
        db.world.get("service", "api").await.unwrap(),
        Some(json!({"version": "v0"}))
    );
}
