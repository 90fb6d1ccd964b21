//! The outbox and the sinks against real receivers on 127.0.0.1, on both stores.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use mandate_routing::links::{self, LinkClaim, LinkError};
use mandate_routing::outbox::{self, NewNotification, Outbox};
use mandate_routing::sinks::{Delivery, Message, ResponseOption, Sender};
use mandate_routing::worker::{DeliveryWorker, WorkerConfig};
use mandate_routing::{ConfigCell, RoutingConfig, sign};
use mandate_tests::{Backend, TestDb, backend_tests, exec_sql};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const SECRET: &str = "receiver-secret-0123456789";

#[derive(Clone, Debug)]
struct Received {
    path: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

/// An HTTP receiver on loopback that records every request and answers `status`.
async fn receiver(status: StatusCode) -> (String, Arc<Mutex<Vec<Received>>>) {
    let got: Arc<Mutex<Vec<Received>>> = Arc::default();
    let g = got.clone();
    let app = axum::Router::new().fallback(
        move |uri: axum::http::Uri, headers: HeaderMap, body: Bytes| {
            let g = g.clone();
            async move {
                g.lock().unwrap().push(Received {
                    path: uri.path().to_string(),
                    headers,
                    body: body.to_vec(),
                });
                status
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), got)
}

fn config(base: &str) -> String {
    format!(
        "version: 1
sinks:
  - {{id: hook, kind: webhook, url: '{base}/hook', secret: '{SECRET}'}}
  - {{id: slack, kind: slack, url: '{base}/slack'}}
  - {{id: pd, kind: pagerduty, url: '{base}/v2/enqueue', routing_key: 'R0UT1NGKEY'}}
people: [{{id: alice, contacts: [{{sink: hook}}]}}]
"
    )
}

fn message(what: &str) -> Message {
    Message {
        title: "agent-deployer-7 deployed checkout v2".into(),
        what_happened: what.into(),
        task_id: "task-1".into(),
        step_seq: Some(4),
        agent: "agent-deployer-7".into(),
        on_behalf_of: Some("user-alice".into()),
        path: "monitored_execute".into(),
        blast_radius: Some("service:checkout (all regions)".into()),
        evidence: vec!["health check: 3/3 healthy".into()],
        rollback_plan: Some("deploy.set_version back to v1".into()),
        rule: "root".into(),
        why: "owns resource service:checkout".into(),
        responses: vec![ResponseOption {
            action: "pause_task".into(),
            label: "Pause task".into(),
            url: "http://127.0.0.1/r/abc".into(),
        }],
        ..Message::default()
    }
}

fn new(item: &str, what: &str, send_at_ms: i64) -> NewNotification {
    NewNotification {
        item_key: item.into(),
        group_key: "task=task-1;recipient=alice;sink=hook".into(),
        task_id: "task-1".into(),
        recipient: "alice".into(),
        sink: "hook".into(),
        address: None,
        message: message(what),
        send_at_ms,
    }
}

async fn wait_until<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    tokio::time::timeout(Duration::from_secs(20), async {
        while !f().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

/// The outbox on `db`; with `writer`, its pages, claims and outcomes run inside the
/// engine writer's transactions (on SQLite in their direct form, on the
/// writer's own connection), as `mandate serve` runs them.
async fn open_outbox(db: &TestDb, writer: bool) -> Outbox {
    let outbox = Outbox::open(&db.url).await.unwrap();
    if !writer {
        return outbox;
    }
    let store = mandate_engine::store::open(&db.url).await.unwrap();
    outbox.with_writer(store)
}

async fn one_id_delivered_once_per_key_across_a_crash(b: Backend) {
    delivered_once_per_key_across_a_crash(b, false).await
}

async fn one_id_delivered_once_per_key_across_a_crash_through_the_writer(b: Backend) {
    delivered_once_per_key_across_a_crash(b, true).await
}

async fn delivered_once_per_key_across_a_crash(b: Backend, writer: bool) {
    let db = TestDb::new(b).await;
    let outbox = Arc::new(open_outbox(&db, writer).await);
    let (base, got) = receiver(StatusCode::OK).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("owners.yaml"), config(&base)).unwrap();
    let cell = Arc::new(ConfigCell::open(dir.path()).unwrap());
    let t0 = 1_700_000_000_000;
    // A burst of three steps for one recipient becomes one notification.
    let first = outbox
        .enqueue(&new("task-1:4:alice:hook", "step 4", t0 + 30_000), t0)
        .await
        .unwrap();
    let second = outbox
        .enqueue(&new("task-1:5:alice:hook", "step 5", t0 + 30_000), t0 + 1)
        .await
        .unwrap();
    let third = outbox
        .enqueue(&new("task-1:6:alice:hook", "step 6", t0 + 30_000), t0 + 2)
        .await
        .unwrap();
    assert!(!first.grouped && second.grouped && third.grouped);
    assert_eq!(
        (second.id.clone(), third.id.clone()),
        (first.id.clone(), first.id.clone())
    );
    let again = outbox
        .enqueue(&new("task-1:5:alice:hook", "step 5", t0 + 30_000), t0 + 3)
        .await
        .unwrap();
    assert!(again.duplicate && again.id == first.id);
    assert_eq!(outbox.get(&first.id).await.unwrap().unwrap().item_count, 3);
    // Not due before its group wait.
    assert!(
        outbox
            .claim("w-dead", t0 + 29_999, 10_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // A worker claims it, sends it, and dies before recording the outcome.
    let claimed = outbox
        .claim("w-dead", t0 + 30_000, 10_000, 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].message.grouped, vec!["step 5", "step 6"]);
    assert!(
        outbox
            .claim("w-other", t0 + 30_001, 10_000, 10)
            .await
            .unwrap()
            .is_empty(),
        "leased: nobody else takes it"
    );
    let c = &claimed[0];
    let d = Delivery {
        notification_id: c.id.clone(),
        sink: c.sink.clone(),
        to: None,
        recipient: c.recipient.clone(),
        message: c.message.clone(),
    };
    Sender::new()
        .deliver(&cell.get().sinks, &d, (t0 + 30_000) / 1000)
        .await
        .unwrap();
    // After the lease expires a new worker delivers it again, with the same id.
    let later = t0 + 45_000;
    let worker = DeliveryWorker::spawn(
        outbox.clone(),
        cell.clone(),
        WorkerConfig {
            id: "w-new".into(),
            ..WorkerConfig::default()
        },
        Arc::new(move || later),
    );
    let (o, id) = (outbox.clone(), first.id.clone());
    wait_until("the notification to be recorded sent", || {
        let (o, id) = (o.clone(), id.clone());
        async move { o.get(&id).await.unwrap().unwrap().status == "sent" }
    })
    .await;
    worker.shutdown().await;
    let row = outbox.get(&first.id).await.unwrap().unwrap();
    assert_eq!((row.attempt, row.sent_at_ms), (2, Some(later)));
    // The dead worker's late report is refused by the lease fence.
    assert!(
        !outbox
            .finish(&first.id, "w-dead", 1, later, &Ok(()))
            .await
            .unwrap()
    );
    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "sent twice over the crash");
    let keys: std::collections::BTreeSet<String> = got
        .iter()
        .map(|r| r.headers["idempotency-key"].to_str().unwrap().to_string())
        .collect();
    assert_eq!(
        keys,
        [first.id.clone()].into(),
        "one id: a receiver honouring the key acts once"
    );
    for r in &got {
        assert_eq!(r.path, "/hook");
        let sig = r.headers["x-mandate-signature"].to_str().unwrap();
        sign::verify_webhook(SECRET.as_bytes(), sig, &r.body, later / 1000, 300)
            .expect("signature verifies");
        assert!(
            sign::verify_webhook(
                b"wrong-secret-wrong-secret",
                sig,
                &r.body,
                later / 1000,
                300
            )
            .is_err()
        );
    }
}

async fn failed_deliveries_back_off_then_give_up(b: Backend) {
    back_off_then_give_up(b, false).await
}

async fn failed_deliveries_back_off_then_give_up_through_the_writer(b: Backend) {
    back_off_then_give_up(b, true).await
}

async fn back_off_then_give_up(b: Backend, writer: bool) {
    let db = TestDb::new(b).await;
    let outbox = open_outbox(&db, writer).await;
    let t0 = 1_000_000;
    let id = outbox.enqueue(&new("k1", "x", t0), t0).await.unwrap().id;
    let err = mandate_routing::sinks::DeliveryError {
        retryable: true,
        message: "503".into(),
    };
    let mut now = t0;
    for attempt in 1..=mandate_routing::limits::MAX_ATTEMPTS as i64 {
        let c = outbox.claim("w", now, 1_000, 10).await.unwrap();
        assert_eq!(c.len(), 1, "attempt {attempt} due at {now}");
        assert_eq!(c[0].attempt, attempt);
        assert!(
            outbox
                .finish(&id, "w", attempt, now, &Err(err.clone()))
                .await
                .unwrap()
        );
        let row = outbox.get(&id).await.unwrap().unwrap();
        if attempt < mandate_routing::limits::MAX_ATTEMPTS as i64 {
            assert_eq!(
                row.next_attempt_at_ms,
                Some(now + outbox::backoff_ms(attempt))
            );
            assert!(
                outbox
                    .claim("w", now + outbox::backoff_ms(attempt) - 1, 1_000, 10)
                    .await
                    .unwrap()
                    .is_empty()
            );
            now += outbox::backoff_ms(attempt);
        } else {
            assert_eq!(
                (row.status.as_str(), row.next_attempt_at_ms),
                ("failed", None)
            );
        }
    }
    // A permanent refusal (4xx) gives up at once.
    let id2 = outbox
        .enqueue(
            &NewNotification {
                group_key: "g2".into(),
                ..new("k2", "y", t0)
            },
            t0,
        )
        .await
        .unwrap()
        .id;
    outbox.claim("w", t0, 1_000, 10).await.unwrap();
    let perm = mandate_routing::sinks::DeliveryError {
        retryable: false,
        message: "400".into(),
    };
    outbox.finish(&id2, "w", 1, t0, &Err(perm)).await.unwrap();
    assert_eq!(outbox.get(&id2).await.unwrap().unwrap().status, "failed");
    // Bodies are bounded.
    let mut huge = new("k3", "z", t0);
    huge.message.evidence = vec!["e".repeat(mandate_routing::limits::MAX_PAYLOAD_BYTES)];
    assert!(matches!(
        outbox.enqueue(&huge, t0).await,
        Err(outbox::Error::TooLarge { .. })
    ));
}

async fn a_link_works_once(b: Backend) {
    let db = TestDb::new(b).await;
    let outbox = Arc::new(Outbox::open(&db.url).await.unwrap());
    let key = b"link-secret-0123";
    let claim = LinkClaim {
        notification_id: "n1".into(),
        recipient: "alice".into(),
        action: "acknowledge".into(),
        expires_at_ms: 5_000,
    };
    let token = links::mint(key, &claim).unwrap();
    let verified = links::verify(key, &token, "alice", 1_000).unwrap();
    // Two concurrent uses: exactly one wins.
    let (a, b2) = tokio::join!(
        outbox.consume_link(&token, &verified, 1_000),
        outbox.consume_link(&token, &verified, 1_000)
    );
    assert_eq!([a.is_ok(), b2.is_ok()].iter().filter(|x| **x).count(), 1);
    assert!(matches!(
        outbox.consume_link(&token, &verified, 1_001).await,
        Err(outbox::Error::Link(LinkError::AlreadyUsed))
    ));
    // Another action's link for the same notification is a different link.
    let other = links::mint(
        key,
        &LinkClaim {
            action: "pause_task".into(),
            ..claim
        },
    )
    .unwrap();
    outbox
        .consume_link(
            &other,
            &links::verify(key, &other, "alice", 1_000).unwrap(),
            1_000,
        )
        .await
        .unwrap();
}

/// A follower's page is enqueued in one transaction with its cursor (and
/// the chains it starts): an item refused refuses the page, writing
/// nothing, so the page is read again; a good page writes it all.
async fn a_page_enqueues_with_its_cursor_or_not_at_all(b: Backend) {
    page_with_its_cursor_or_not_at_all(b, false).await
}

async fn a_page_enqueues_with_its_cursor_or_not_at_all_through_the_writer(b: Backend) {
    page_with_its_cursor_or_not_at_all(b, true).await
}

async fn page_with_its_cursor_or_not_at_all(b: Backend, writer: bool) {
    let db = TestDb::new(b).await;
    let outbox = open_outbox(&db, writer).await;
    let t0 = 1_700_000_000_000;
    let mut huge = new("task-2:9:alice:hook", "huge", t0);
    huge.message.what_happened = "x".repeat(mandate_routing::limits::MAX_PAYLOAD_BYTES + 1);
    huge.group_key = "g-huge".into();
    let mut ok = new("task-2:8:alice:hook", "ok", t0);
    ok.group_key = "g-ok".into();
    let chain = outbox::Escalation {
        notification_id: String::new(),
        task_id: "task-2".into(),
        about_seq: 8,
        chain: "c".into(),
        started_at_ms: t0,
        fired_steps: 1,
        next_due_at_ms: Some(t0 + 60_000),
    };
    let refused = outbox
        .enqueue_many(
            &[(ok.clone(), Some(chain.clone())), (huge, None)],
            t0,
            Some(("test-cursor", 42)),
        )
        .await;
    assert!(
        matches!(refused, Err(outbox::Error::TooLarge { .. })),
        "{refused:?}"
    );
    assert_eq!(outbox.cursor("test-cursor").await.unwrap(), 0);
    assert_eq!(
        outbox
            .item_notification("task-2:8:alice:hook")
            .await
            .unwrap(),
        None
    );
    assert!(
        outbox
            .due_escalations(t0 + 60_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let done = outbox
        .enqueue_many(&[(ok, Some(chain))], t0, Some(("test-cursor", 42)))
        .await
        .unwrap();
    assert_eq!(outbox.cursor("test-cursor").await.unwrap(), 42);
    let due = outbox.due_escalations(t0 + 60_000, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(
        due[0].notification_id, done[0].id,
        "the chain names the id the item got"
    );
}

/// A page's items are written a chunk at a time, yet each still groups as
/// if enqueued one by one: a group takes at most `MAX_GROUP_ITEMS`, then
/// closes and the next item opens another; a key seen before (earlier in
/// the page or in an earlier page) is a duplicate; a chain starts once per
/// notification. The outbox refuses a page past `MAX_OUTBOX_OPEN` open
/// notifications, writing nothing.
async fn a_page_groups_in_bulk_up_to_its_limits(b: Backend) {
    page_groups_in_bulk(b, false).await
}

/// The same through the engine's writer: on SQLite the page's direct form,
/// on the writer's own connection.
async fn a_page_groups_in_bulk_up_to_its_limits_through_the_writer(b: Backend) {
    page_groups_in_bulk(b, true).await
}

async fn page_groups_in_bulk(b: Backend, writer: bool) {
    use mandate_routing::limits::{MAX_GROUP_ITEMS, MAX_OUTBOX_OPEN};
    let db = TestDb::new(b).await;
    let outbox = open_outbox(&db, writer).await;
    let t0 = 1_700_000_000_000;
    let per = MAX_GROUP_ITEMS as usize;
    let chain = |seq: i64| outbox::Escalation {
        notification_id: String::new(),
        task_id: "task-1".into(),
        about_seq: seq,
        chain: "c".into(),
        started_at_ms: t0,
        fired_steps: 1,
        next_due_at_ms: Some(t0 + 60_000),
    };
    // 2½ groups' worth in one page (more than one chunk), a repeat of the
    // sixth item, and an item of another group in between.
    let mut page: Vec<(NewNotification, Option<outbox::Escalation>)> = (0..per * 5 / 2)
        .map(|i| {
            (
                new(
                    &format!("task-1:{i}:alice:hook"),
                    &format!("step {i}"),
                    t0 + 30_000,
                ),
                Some(chain(i as i64)),
            )
        })
        .collect();
    let mut other = new("task-9:1:alice:hook", "other", t0 + 30_000);
    other.group_key = "another group".into();
    page.insert(150, (other, None));
    page.push((
        new("task-1:5:alice:hook", "step 5 again", t0 + 30_000),
        None,
    ));
    let done = outbox
        .enqueue_many(&page, t0, Some(("test-cursor", 7)))
        .await
        .unwrap();
    assert_eq!(done.len(), page.len());
    let of = |i: usize| if i < 150 { &done[i] } else { &done[i + 1] };
    let ids = [of(0).id.clone(), of(per).id.clone(), of(2 * per).id.clone()];
    assert!(
        ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2],
        "{ids:?}"
    );
    for i in 0..per * 5 / 2 {
        let d = of(i);
        assert_eq!(d.id, ids[i / per], "item {i}");
        assert_eq!((d.grouped, d.duplicate), (i % per != 0, false), "item {i}");
        assert_eq!(
            outbox
                .item_notification(&format!("task-1:{i}:alice:hook"))
                .await
                .unwrap()
                .as_deref(),
            Some(ids[i / per].as_str()),
            "item {i}"
        );
    }
    assert!(!done[150].grouped && !done[150].duplicate && !ids.contains(&done[150].id));
    let last = done.last().unwrap();
    assert!(
        last.duplicate && !last.grouped && last.id == ids[0],
        "{last:?}"
    );
    for (id, count, status) in [
        (&ids[0], per, "pending_full"),
        (&ids[1], per, "pending_full"),
        (&ids[2], per / 2, "pending"),
    ] {
        let row = outbox.get(id).await.unwrap().unwrap();
        assert_eq!(
            (row.item_count, row.status.as_str()),
            (count as i64, status),
            "{id}"
        );
        let body: Message = serde_json::from_str(&row.body).unwrap();
        assert_eq!(body.grouped.len(), count - 1, "{id}");
    }
    assert_eq!(outbox.cursor("test-cursor").await.unwrap(), 7);
    let chains = outbox.due_escalations(t0 + 60_000, 1000).await.unwrap();
    let mut named: Vec<&str> = chains.iter().map(|c| c.notification_id.as_str()).collect();
    named.sort_unstable();
    let mut want: Vec<&str> = ids.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(named, want, "one chain per notification, naming its id");
    // A later page: new items join the open group; an old key is a duplicate.
    let more = outbox
        .enqueue_many(
            &[
                (new("task-1:900:alice:hook", "step 900", t0 + 30_000), None),
                (
                    new("task-1:3:alice:hook", "step 3 again", t0 + 30_000),
                    None,
                ),
            ],
            t0 + 5,
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        more[0],
        outbox::Enqueued {
            id: ids[2].clone(),
            grouped: true,
            duplicate: false
        }
    );
    assert_eq!(
        more[1],
        outbox::Enqueued {
            id: ids[0].clone(),
            grouped: false,
            duplicate: true
        }
    );
    assert_eq!(
        outbox.get(&ids[2]).await.unwrap().unwrap().item_count,
        per as i64 / 2 + 1
    );

    // Fill the outbox to its limit of open notifications.
    let open_now = 4; // the three groups and the other one
    exec_sql(
        &db,
        &format!(
            "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {})
             INSERT INTO notifications (id, group_key, task_id, recipient, sink, address, item_count, status,
                 attempt, max_attempts, created_at_ms, next_attempt_at_ms)
             SELECT 'fill-' || n, 'fill-' || n, 'task-0', 'bob', 'hook', NULL, 1, 'pending', 0, 8, {t0}, {t0}
             FROM s",
            MAX_OUTBOX_OPEN - open_now - 1
        ),
    )
    .await;
    exec_sql(
        &db,
        "INSERT INTO notification_bodies (id, body) SELECT id, '{}' FROM notifications WHERE id LIKE 'fill-%'",
    )
    .await;
    // One more fits; the page after it is refused whole.
    let one = outbox
        .enqueue(
            &with_group(new("task-2:1:alice:hook", "fits", t0), "g-2"),
            t0,
        )
        .await
        .unwrap();
    assert!(!one.grouped && !one.duplicate);
    let refused = outbox
        .enqueue_many(
            &[(
                with_group(new("task-3:1:alice:hook", "full", t0), "g-3"),
                None,
            )],
            t0,
            Some(("test-cursor", 8)),
        )
        .await;
    assert!(
        matches!(refused, Err(outbox::Error::Full { open, limit }) if open == MAX_OUTBOX_OPEN && limit == MAX_OUTBOX_OPEN),
        "{refused:?}"
    );
    let refused = outbox
        .enqueue(
            &with_group(new("task-3:1:alice:hook", "full", t0), "g-3"),
            t0,
        )
        .await;
    assert!(
        matches!(refused, Err(outbox::Error::Full { .. })),
        "{refused:?}"
    );
    assert_eq!(
        outbox
            .item_notification("task-3:1:alice:hook")
            .await
            .unwrap(),
        None
    );
    assert_eq!(outbox.cursor("test-cursor").await.unwrap(), 7);
    // An item of an open group still joins it: grouping opens nothing.
    let joined = outbox
        .enqueue(&new("task-1:901:alice:hook", "step 901", t0), t0)
        .await
        .unwrap();
    assert_eq!(
        joined,
        outbox::Enqueued {
            id: ids[2].clone(),
            grouped: true,
            duplicate: false
        }
    );
}

fn with_group(mut n: NewNotification, group: &str) -> NewNotification {
    n.group_key = group.into();
    n
}

/// An outbox written before bodies had a table of their own (migration
/// 0009) keeps every notification's body: the migration moves them, and
/// the notification is read and delivered as before.
async fn bodies_move_to_their_own_table(b: Backend) {
    let db = TestDb::new(b).await;
    mandate_tests::migrate_before(&db, "0009").await;
    let body = serde_json::to_string(&message("written by the previous release")).unwrap();
    exec_sql(
        &db,
        &format!(
            "INSERT INTO notifications (id, group_key, task_id, recipient, sink, address, body, item_count, status,
                 attempt, max_attempts, created_at_ms, next_attempt_at_ms)
             VALUES ('old-1', 'g-old', 'task-1', 'alice', 'hook', NULL, '{}', 1, 'pending', 0, 8, 1, 1)",
            body.replace('\'', "''")
        ),
    )
    .await;
    let outbox = Outbox::open(&db.url).await.unwrap();
    let row = outbox.get("old-1").await.unwrap().unwrap();
    assert_eq!(row.body, body);
    let claimed = outbox.claim("w", 2, 1_000, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        claimed[0].message.what_happened,
        "written by the previous release"
    );
}

backend_tests!(
    bodies_move_to_their_own_table,
    a_page_groups_in_bulk_up_to_its_limits,
    a_page_groups_in_bulk_up_to_its_limits_through_the_writer,
    a_page_enqueues_with_its_cursor_or_not_at_all,
    a_page_enqueues_with_its_cursor_or_not_at_all_through_the_writer,
    one_id_delivered_once_per_key_across_a_crash,
    one_id_delivered_once_per_key_across_a_crash_through_the_writer,
    failed_deliveries_back_off_then_give_up,
    failed_deliveries_back_off_then_give_up_through_the_writer,
    a_link_works_once
);

#[tokio::test]
async fn slack_and_pagerduty_payloads_reach_their_receivers() {
    let (base, got) = receiver(StatusCode::ACCEPTED).await;
    let cfg = RoutingConfig::from_yaml("owners.yaml", &config(&base)).unwrap();
    let sender = Sender::new();
    let d = Delivery {
        notification_id: "n-7".into(),
        sink: "slack".into(),
        to: Some("#platform".into()),
        recipient: "team-platform".into(),
        message: message("deployed v2"),
    };
    sender.deliver(&cfg.sinks, &d, 0).await.unwrap();
    sender
        .deliver(
            &cfg.sinks,
            &Delivery {
                sink: "pd".into(),
                ..d.clone()
            },
            0,
        )
        .await
        .unwrap();
    let got = got.lock().unwrap().clone();
    let slack: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(got[0].path, "/slack");
    assert_eq!(slack["channel"], "#platform");
    let text = slack.to_string();
    for needle in [
        "agent-deployer-7",
        "user-alice",
        "service:checkout (all regions)",
        "health check: 3/3 healthy",
        "deploy.set_version back to v1",
    ] {
        assert!(
            text.contains(needle),
            "slack payload lacks {needle}: {text}"
        );
    }
    let actions = slack["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "actions")
        .unwrap();
    assert_eq!(actions["elements"][0]["url"], "http://127.0.0.1/r/abc");
    let pd: serde_json::Value = serde_json::from_slice(&got[1].body).unwrap();
    assert_eq!(got[1].path, "/v2/enqueue");
    assert_eq!(
        (
            pd["routing_key"].as_str(),
            pd["event_action"].as_str(),
            pd["dedup_key"].as_str()
        ),
        (Some("R0UT1NGKEY"), Some("trigger"), Some("n-7"))
    );
    assert_eq!(pd["payload"]["severity"], "warning");
    assert_eq!(pd["links"][0]["href"], "http://127.0.0.1/r/abc");
    // A receiver's 4xx is permanent, 5xx retryable.
    let (bad, _) = receiver(StatusCode::BAD_REQUEST).await;
    let cfg = RoutingConfig::from_yaml("owners.yaml", &config(&bad)).unwrap();
    assert!(
        !sender
            .deliver(&cfg.sinks, &d, 0)
            .await
            .unwrap_err()
            .retryable
    );
    let (down, _) = receiver(StatusCode::SERVICE_UNAVAILABLE).await;
    let cfg = RoutingConfig::from_yaml("owners.yaml", &config(&down)).unwrap();
    assert!(
        sender
            .deliver(&cfg.sinks, &d, 0)
            .await
            .unwrap_err()
            .retryable
    );
}

/// A minimal SMTP server on loopback: accepts one message per connection and
/// hands back its DATA.
async fn smtp_server() -> (u16, tokio::sync::mpsc::Receiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let (r, mut w) = sock.into_split();
                let mut lines = BufReader::new(r).lines();
                w.write_all(b"220 127.0.0.1 test SMTP\r\n").await.unwrap();
                let mut data: Option<String> = None;
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(d) = data.as_mut() {
                        if line == "." {
                            tx.send(std::mem::take(d)).await.unwrap();
                            data = None;
                            w.write_all(b"250 queued\r\n").await.unwrap();
                        } else {
                            d.push_str(&line);
                            d.push('\n');
                        }
                        continue;
                    }
                    let verb = line
                        .split_whitespace()
                        .next()
                        .unwrap_or("")
                        .to_ascii_uppercase();
                    let reply: &[u8] = match verb.as_str() {
                        "EHLO" | "HELO" => b"250 127.0.0.1\r\n",
                        "DATA" => {
                            data = Some(String::new());
                            b"354 go ahead\r\n"
                        }
                        "QUIT" => {
                            w.write_all(b"221 bye\r\n").await.unwrap();
                            return;
                        }
                        _ => b"250 ok\r\n",
                    };
                    w.write_all(reply).await.unwrap();
                }
            });
        }
    });
    (port, rx)
}

#[tokio::test]
async fn email_goes_over_smtp_with_the_id_as_message_id() {
    let (port, mut rx) = smtp_server().await;
    let yaml = format!(
        "version: 1\nsinks: [{{id: mail, kind: email, host: 127.0.0.1, port: {port}, from: 'Mandate <mandate@example.com>'}}]\n"
    );
    let cfg = RoutingConfig::from_yaml("owners.yaml", &yaml).unwrap();
    let d = Delivery {
        notification_id: "n-9".into(),
        sink: "mail".into(),
        to: Some("alice@example.com".into()),
        recipient: "alice".into(),
        message: message("deployed v2"),
    };
    Sender::new().deliver(&cfg.sinks, &d, 0).await.unwrap();
    let mail = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(mail.contains("Message-ID: <n-9@mandate>"), "{mail}");
    assert!(mail.contains("To: alice@example.com"), "{mail}");
    assert!(mail.contains("http://127.0.0.1/r/abc"), "{mail}");
    // An email contact without an address is refused, not retried.
    let e = Sender::new()
        .deliver(&cfg.sinks, &Delivery { to: None, ..d }, 0)
        .await
        .unwrap_err();
    assert!(!e.retryable);
}
