//! The demo world against real databases: every test runs on SQLite and on
//! PostgreSQL.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::TestDb;
use mandate_activities::{ToolContext, ToolError, World, world};
use serde_json::{Value, json};

on_both_backends!(
    a_missing_resource_reads_as_none,
    apply_writes_the_resource_and_records_the_effect,
    list_returns_a_namespace_sorted_by_key,
    a_duplicate_delivery_returns_the_recorded_output_without_reapplying,
    a_rejection_writes_nothing_and_passes_the_tool_error_through,
    returning_none_deletes_the_resource,
    concurrent_duplicates_apply_once,
    concurrent_duplicates_on_different_resources_still_apply_once,
    concurrent_applies_on_one_resource_are_serialized,
    ensure_schema_is_idempotent_and_a_second_world_sees_the_same_data,
    oversized_keys_are_refused_before_touching_the_database,
    a_compensation_fences_its_step_so_a_late_apply_is_refused,
    a_compensation_after_the_effect_undoes_it_and_fences_nothing,
    a_refused_undo_still_fences_its_step,
    a_late_apply_racing_its_compensation_on_one_resource_leaves_nothing,
    a_late_apply_racing_its_compensation_on_another_resource_is_ordered_by_the_key,
);

async fn a_missing_resource_reads_as_none(db: &TestDb) {
    assert_eq!(db.world.get("kv", "nothing").await.unwrap(), None);
    assert!(db.world.list("kv").await.unwrap().is_empty());
    assert_eq!(db.world.effect_count().await.unwrap(), 0);
}

async fn apply_writes_the_resource_and_records_the_effect(db: &TestDb) {
    let output = db
        .world
        .apply("t1:1", "kv.put", "kv", "a", |current| {
            assert_eq!(current, None);
            Ok((Some(json!({"n": 1})), json!({"wrote": 1})))
        })
        .await
        .unwrap();
    assert_eq!(output, json!({"wrote": 1}));
    assert_eq!(
        db.world.get("kv", "a").await.unwrap(),
        Some(json!({"n": 1}))
    );
    assert_eq!(db.world.effect_count().await.unwrap(), 1);

    // A second, different call sees the first one's value.
    db.world
        .apply("t1:2", "kv.put", "kv", "a", |current| {
            assert_eq!(current, Some(json!({"n": 1})));
            Ok((Some(json!({"n": 2})), json!(null)))
        })
        .await
        .unwrap();
    assert_eq!(
        db.world.get("kv", "a").await.unwrap(),
        Some(json!({"n": 2}))
    );
    assert_eq!(db.world.effect_count().await.unwrap(), 2);
}

async fn list_returns_a_namespace_sorted_by_key(db: &TestDb) {
    for (seq, key) in ["b", "a", "C", "c"].into_iter().enumerate() {
        db.world
            .apply(&format!("t:{seq}"), "kv.put", "kv", key, |_| {
                Ok((Some(json!(key)), json!({})))
            })
            .await
            .unwrap();
    }
    db.world
        .apply("t:other", "flag.set", "flag", "zzz", |_| {
            Ok((Some(json!(true)), json!({})))
        })
        .await
        .unwrap();
    let listed = db.world.list("kv").await.unwrap();
    let keys: Vec<&str> = listed.iter().map(|(key, _)| key.as_str()).collect();
    // Byte order on both backends, whatever PostgreSQL's collation is.
    assert_eq!(keys, vec!["C", "a", "b", "c"]);
    assert_eq!(listed[1].1, json!("a"));
}

async fn a_duplicate_delivery_returns_the_recorded_output_without_reapplying(db: &TestDb) {
    let first = db
        .world
        .apply("t:7", "ledger.charge", "ledger", "acct", |_| {
            Ok((
                Some(json!({"balance_cents": 100})),
                json!({"balance_cents": 100}),
            ))
        })
        .await
        .unwrap();
    let second = db
        .world
        .apply(
            "t:7",
            "ledger.charge",
            "ledger",
            "acct",
            |_| -> Result<_, ToolError> {
                panic!("a duplicate delivery must not run the effect again")
            },
        )
        .await
        .unwrap();
    assert_eq!(first, second);
    assert_eq!(db.world.effect_count().await.unwrap(), 1);
    assert_eq!(
        db.world.get("ledger", "acct").await.unwrap(),
        Some(json!({"balance_cents": 100}))
    );
}

async fn a_rejection_writes_nothing_and_passes_the_tool_error_through(db: &TestDb) {
    db.world
        .apply("t:1", "kv.put", "kv", "k", |_| {
            Ok((Some(json!("before")), json!({})))
        })
        .await
        .unwrap();
    let refusal = ToolError::non_retryable("kv.put: no thanks");
    let error = db
        .world
        .apply("t:2", "kv.put", "kv", "k", |_| Err(refusal.clone()))
        .await
        .unwrap_err();
    match error {
        world::Error::Rejected(passed) => assert_eq!(passed, refusal),
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(
        db.world.get("kv", "k").await.unwrap(),
        Some(json!("before"))
    );
    assert_eq!(db.world.effect_count().await.unwrap(), 1);

    // Nothing was recorded for the refused key, so a later delivery of it
    // runs the effect for real.
    db.world
        .apply("t:2", "kv.put", "kv", "k", |_| {
            Ok((Some(json!("after")), json!({})))
        })
        .await
        .unwrap();
    assert_eq!(db.world.get("kv", "k").await.unwrap(), Some(json!("after")));
    assert_eq!(db.world.effect_count().await.unwrap(), 2);
}

async fn returning_none_deletes_the_resource(db: &TestDb) {
    db.world
        .apply("t:1", "kv.put", "kv", "k", |_| {
            Ok((Some(json!(1)), json!({})))
        })
        .await
        .unwrap();
    db.world
        .apply("t:2", "kv.delete", "kv", "k", |current| {
            assert_eq!(current, Some(json!(1)));
            Ok((None, json!({"previous": current})))
        })
        .await
        .unwrap();
    assert_eq!(db.world.get("kv", "k").await.unwrap(), None);
    // Deleting what is already gone is fine, and still recorded.
    db.world
        .apply("t:3", "kv.delete", "kv", "k", |_| Ok((None, json!({}))))
        .await
        .unwrap();
    assert_eq!(db.world.effect_count().await.unwrap(), 3);
}

async fn concurrent_duplicates_apply_once(db: &TestDb) {
    let runs = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for delivery in 0..8 {
        let world = db.world.clone();
        let runs = runs.clone();
        handles.push(tokio::spawn(async move {
            world
                .apply("t:dup", "kv.put", "kv", "dup", move |_| {
                    runs.fetch_add(1, Ordering::SeqCst);
                    Ok((Some(json!(delivery)), json!({"delivery": delivery})))
                })
                .await
        }));
    }
    let mut outputs = Vec::new();
    for handle in handles {
        outputs.push(handle.await.unwrap().unwrap());
    }
    assert!(
        outputs.windows(2).all(|pair| pair[0] == pair[1]),
        "{outputs:?}"
    );
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the effect ran more than once"
    );
    assert_eq!(db.world.effect_count().await.unwrap(), 1);
    let stored = db.world.get("kv", "dup").await.unwrap().unwrap();
    assert_eq!(json!({"delivery": stored}), outputs[0]);
}

async fn concurrent_duplicates_on_different_resources_still_apply_once(db: &TestDb) {
    // A caller reusing one idempotency key on several resources is a bug,
    // but the world must still change only once.
    let mut handles = Vec::new();
    for delivery in 0..8 {
        let world = db.world.clone();
        handles.push(tokio::spawn(async move {
            world
                .apply(
                    "t:reused",
                    "kv.put",
                    "kv",
                    &format!("r{delivery}"),
                    move |_| Ok((Some(json!(delivery)), json!({"delivery": delivery}))),
                )
                .await
        }));
    }
    let mut outputs = Vec::new();
    for handle in handles {
        outputs.push(handle.await.unwrap().unwrap());
    }
    assert!(
        outputs.windows(2).all(|pair| pair[0] == pair[1]),
        "{outputs:?}"
    );
    assert_eq!(db.world.effect_count().await.unwrap(), 1);
    let listed = db.world.list("kv").await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(json!({"delivery": listed[0].1}), outputs[0]);
}

async fn concurrent_applies_on_one_resource_are_serialized(db: &TestDb) {
    // Read-modify-write increments from many tasks: a lost update shows up
    // as a final count below the number of increments.
    let increments = 24;
    let mut handles = Vec::new();
    for n in 0..increments {
        let world = db.world.clone();
        handles.push(tokio::spawn(async move {
            world
                .apply(&format!("t:{n}"), "counter", "kv", "counter", |current| {
                    let count = current.as_ref().and_then(Value::as_i64).unwrap_or(0) + 1;
                    Ok((Some(json!(count)), json!(count)))
                })
                .await
        }));
    }
    let mut seen = Vec::new();
    for handle in handles {
        seen.push(handle.await.unwrap().unwrap().as_i64().unwrap());
    }
    seen.sort_unstable();
    assert_eq!(seen, (1..=increments).collect::<Vec<i64>>());
    assert_eq!(
        db.world.get("kv", "counter").await.unwrap(),
        Some(json!(increments))
    );
}

async fn ensure_schema_is_idempotent_and_a_second_world_sees_the_same_data(db: &TestDb) {
    db.world.ensure_schema().await.unwrap();
    db.world
        .apply("t:1", "flag.set", "flag", "f", |_| {
            Ok((Some(json!("on")), json!({})))
        })
        .await
        .unwrap();
    let again = World::connect(&db.url).await.unwrap();
    again.ensure_schema().await.unwrap();
    assert_eq!(again.get("flag", "f").await.unwrap(), Some(json!("on")));
    assert_eq!(again.effect_count().await.unwrap(), 1);
}

async fn oversized_keys_are_refused_before_touching_the_database(db: &TestDb) {
    let long = "k".repeat(world::MAX_KEY_BYTES + 1);
    let error = db
        .world
        .apply("t:1", "kv.put", "kv", &long, |_| {
            Ok((Some(json!(1)), json!({})))
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&error, world::Error::TooLarge { what, .. } if what == "key"),
        "{error:?}"
    );
    let huge = "x".repeat(world::MAX_VALUE_BYTES + 1);
    let error = db
        .world
        .apply("t:2", "kv.put", "kv", "k", move |_| {
            Ok((Some(json!(huge)), json!({})))
        })
        .await
        .unwrap_err();
    assert!(matches!(error, world::Error::TooLarge { .. }), "{error:?}");
    assert_eq!(db.world.effect_count().await.unwrap(), 0);
    assert_eq!(db.world.get("kv", "k").await.unwrap(), None);
}

#[tokio::test]
async fn an_unreachable_database_is_a_connect_error_naming_the_url() {
    let dir = tempfile::tempdir().unwrap();
    // A directory that does not exist cannot hold the database file.
    let url = format!("sqlite://{}/missing/dir/world.db", dir.path().display());
    let error = World::connect(&url).await.unwrap_err();
    assert!(
        matches!(&error, world::Error::Connect { url: shown, .. } if *shown == url),
        "{error:?}"
    );
    assert!(error.to_string().contains(&url), "{error}");
}

/// The step scheduled at seq 3 of task `task`, and its compensation at seq 9.
fn step_and_undo(task: &str) -> (ToolContext, ToolContext) {
    (
        ToolContext::new(task, 3, 1),
        ToolContext::compensation(task, 9, 1, 3),
    )
}

async fn put(world: &World, ctx: &ToolContext, key: &str) -> Result<Value, world::Error> {
    world
        .apply_call(ctx, "kv.put", "kv", key, |_| {
            Ok((Some(json!("v")), json!("put")))
        })
        .await
}

async fn delete(world: &World, ctx: &ToolContext, key: &str) -> Result<Value, world::Error> {
    world
        .apply_call(ctx, "kv.delete", "kv", key, |current| {
            Ok((None, json!({ "deleted": current })))
        })
        .await
}

async fn a_compensation_fences_its_step_so_a_late_apply_is_refused(db: &TestDb) {
    let (step, undo) = step_and_undo("t");
    // The step's attempt was cut off before it applied; the rollback runs.
    assert_eq!(
        delete(&db.world, &undo, "k").await.unwrap(),
        json!({"deleted": null})
    );
    assert_eq!(db.world.fence_count().await.unwrap(), 1);
    // The late attempt arrives: refused, nothing written.
    let error = put(&db.world, &step, "k").await.unwrap_err();
    assert!(
        matches!(&error, world::Error::Fenced { idempotency_key, fenced_by }
            if idempotency_key == "t:3" && fenced_by == "t:9"),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("fenced by compensation t:9"),
        "{error}"
    );
    assert_eq!(db.world.get("kv", "k").await.unwrap(), None);
    // Only the compensation is an effect; the fence is not counted as one.
    assert_eq!(db.world.effect_count().await.unwrap(), 1);
    // A duplicate delivery of the compensation changes nothing.
    assert_eq!(
        delete(&db.world, &undo, "k").await.unwrap(),
        json!({"deleted": null})
    );
    assert_eq!(db.world.fence_count().await.unwrap(), 1);
    assert_eq!(db.world.effect_count().await.unwrap(), 1);
}

async fn a_compensation_after_the_effect_undoes_it_and_fences_nothing(db: &TestDb) {
    let (step, undo) = step_and_undo("t");
    assert_eq!(put(&db.world, &step, "k").await.unwrap(), json!("put"));
    assert_eq!(
        delete(&db.world, &undo, "k").await.unwrap(),
        json!({"deleted": "v"})
    );
    assert_eq!(db.world.get("kv", "k").await.unwrap(), None);
    // The key already held the step's effect, so no tombstone was needed;
    // a late duplicate of the step returns its recorded output and applies
    // nothing again.
    assert_eq!(db.world.fence_count().await.unwrap(), 0);
    assert_eq!(put(&db.world, &step, "k").await.unwrap(), json!("put"));
    assert_eq!(db.world.get("kv", "k").await.unwrap(), None);
    assert_eq!(db.world.effect_count().await.unwrap(), 2);
}

async fn a_refused_undo_still_fences_its_step(db: &TestDb) {
    let (step, undo) = step_and_undo("t");
    let error = db
        .world
        .apply_call(&undo, "ledger.refund", "kv", "k", |_| {
            Err(ToolError::non_retryable("refund refused"))
        })
        .await
        .unwrap_err();
    assert!(matches!(&error, world::Error::Rejected(e) if e.message == "refund refused"));
    assert_eq!(db.world.effect_count().await.unwrap(), 0);
    assert_eq!(db.world.fence_count().await.unwrap(), 1);
    let error = put(&db.world, &step, "k").await.unwrap_err();
    assert!(matches!(error, world::Error::Fenced { .. }), "{error:?}");
    assert_eq!(db.world.get("kv", "k").await.unwrap(), None);
}

async fn a_late_apply_racing_its_compensation_on_one_resource_leaves_nothing(db: &TestDb) {
    // Whichever commits first, the key is gone afterwards: either the undo
    // saw the effect and deleted it, or the fence refused the effect.
    let rounds = 24;
    let mut handles = Vec::new();
    for n in 0..rounds {
        let world = db.world.clone();
        handles.push(tokio::spawn(async move {
            let (step, undo) = step_and_undo(&format!("t{n}"));
            let key = format!("k{n}");
            let (late, undone) =
                futures::join!(put(&world, &step, &key), delete(&world, &undo, &key));
            undone.unwrap();
            (late, world.get("kv", &key).await.unwrap())
        }));
    }
    let (mut applied, mut fenced) = (0, 0);
    for handle in handles {
        let (late, left) = handle.await.unwrap();
        assert_eq!(left, None, "the late effect was left behind");
        match late {
            Ok(_) => applied += 1,
            Err(world::Error::Fenced { .. }) => fenced += 1,
            Err(other) => panic!("unexpected error: {other:?}"),
        }
    }
    assert_eq!(applied + fenced, rounds);
    assert_eq!(db.world.fence_count().await.unwrap(), fenced as i64);
}

async fn a_late_apply_racing_its_compensation_on_another_resource_is_ordered_by_the_key(
    db: &TestDb,
) {
    // Here the undo cannot see the step's resource (no shared resource
    // lock), so only the shared idempotency key orders the two: exactly one
    // of the effect and the fence is recorded under the step's key, and the
    // step's resource holds a value only if its effect won.
    let rounds = 24;
    let mut handles = Vec::new();
    for n in 0..rounds {
        let world = db.world.clone();
        handles.push(tokio::spawn(async move {
            let (step, undo) = step_and_undo(&format!("t{n}"));
            let (a, b) = (format!("a{n}"), format!("b{n}"));
            let (late, undone) = futures::join!(put(&world, &step, &a), delete(&world, &undo, &b));
            undone.unwrap();
            (late, world.get("kv", &format!("a{n}")).await.unwrap())
        }));
    }
    let mut fenced = 0;
    for handle in handles {
        match handle.await.unwrap() {
            (Ok(_), Some(_)) => {}
            (Err(world::Error::Fenced { .. }), None) => fenced += 1,
            (late, left) => panic!("inconsistent: late apply {late:?}, resource {left:?}"),
        }
    }
    assert_eq!(db.world.fence_count().await.unwrap(), fenced);
    assert_eq!(
        db.world.effect_count().await.unwrap(),
        2 * rounds as i64 - fenced
    );
}
