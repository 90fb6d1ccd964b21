//! The evidence log against an insider with SQL access, on both stores: a
//! checkpoint signed before the attack catches what the per-task chain
//! cannot (a chain recomputed with its task row, a deleted task, truncated
//! or swapped events), naming the first bad global sequence number.

use std::time::Duration;

use mandate_engine::TaskStatus;
use mandate_engine::core::chain::{GENESIS_HASH, RawEvent};
use mandate_engine::evidence::{
    self, Checkpoint, Follower, FollowerConfig, Log, NoteError, Report, SignerKey, VerifierKey,
};
use mandate_tests::{Backend, Harness, backend_tests, exec_sql};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

/// Three completed deploys, logged and covered by a signed checkpoint.
struct Signed {
    h: Harness,
    tasks: Vec<String>,
    key: SignerKey,
    note: String,
    log: Log,
}

impl Signed {
    async fn new(b: Backend) -> Signed {
        let mut h = Harness::new(b).await;
        let mut tasks = Vec::new();
        for v in ["v1", "v2", "v3"] {
            let (id, row) = h
                .run(
                    "deploy_with_rollback",
                    json!({"service": "api", "version": v}),
                )
                .await;
            assert_eq!(row.status, TaskStatus::Completed);
            tasks.push(id);
        }
        h.stop_worker().await;
        let key = SignerKey::from_seed("test.example/mandate", [7; 32]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (note, log) = sign_all(&h, &key, Some(dir.path().to_path_buf())).await;
        assert_eq!(
            std::fs::read_to_string(dir.path().join("latest")).unwrap(),
            note,
            "the checkpoint is written to the operator's directory too"
        );
        Signed {
            h,
            tasks,
            key,
            note,
            log,
        }
    }

    /// The global number of a task's event.
    async fn gseq(&self, task: &str, seq: i64) -> i64 {
        let leaves = self.log.task_leaves(task).await.unwrap();
        leaves.iter().find(|l| l.seq == seq).unwrap().index as i64 + 1
    }

    async fn verify(&self) -> Report {
        let cp = Checkpoint::open(&self.note, &self.key.verifier()).unwrap();
        evidence::verify(&self.log, &cp).await.unwrap()
    }

    async fn history(&self, task: &str) -> Vec<RawEvent> {
        self.h.engine.store().load_history(task).await.unwrap()
    }

    /// As an insider would: edits an event, recomputes the task's chain from
    /// there and sets the task row's last hash, so the chain verifies again.
    async fn rewrite(&self, task: &str, seq: i64, edit: impl FnOnce(&mut RawEvent)) {
        let mut history = self.history(task).await;
        edit(&mut history[(seq - 1) as usize]);
        let mut prev = GENESIS_HASH.to_string();
        for e in history.iter_mut() {
            e.prev_hash = prev.clone();
            e.hash = e.compute_hash().unwrap();
            prev = e.hash.clone();
            let payload = serde_json::to_string(&e.payload)
                .unwrap()
                .replace('\'', "''");
            exec_sql(
                &self.h.db,
                &format!(
                    "UPDATE events SET payload = '{payload}', actor = '{}', prev_hash = '{}', hash = '{}'
                     WHERE task_id = '{task}' AND seq = {}",
                    e.actor, e.prev_hash, e.hash, e.seq
                ),
            )
            .await;
        }
        exec_sql(
            &self.h.db,
            &format!("UPDATE tasks SET last_hash = '{prev}' WHERE id = '{task}'"),
        )
        .await;
        // The per-task chain alone no longer sees anything.
        self.h
            .engine
            .history(task)
            .await
            .expect("the recomputed chain verifies");
    }
}

/// Follows the store until every event is logged and a checkpoint covers
/// them all; returns the signed note.
async fn sign_all(h: &Harness, key: &SignerKey, dir: Option<std::path::PathBuf>) -> (String, Log) {
    let head = h.engine.store().event_head().await.unwrap() as u64;
    let follower = Follower::spawn(
        &h.engine,
        FollowerConfig {
            key: Some(key.clone()),
            every_events: 1,
            poll: Duration::from_millis(20),
            dir,
            ..FollowerConfig::default()
        },
    );
    follower
        .wait_for(WAIT, |p| p.size >= head && p.checkpoint_size >= head)
        .await
        .unwrap();
    follower.shutdown().await;
    let log = h.engine.store().evidence_log();
    let row = log.checkpoint(None).await.unwrap().expect("a checkpoint");
    assert_eq!(row.size, head);
    (row.note, log)
}

fn assert_first_bad(report: &Report, gseq: i64, kind: &str, task: &str) {
    assert!(!report.ok(), "tampering went unnoticed: {report:?}");
    assert_eq!(report.first_bad_gseq, Some(gseq), "{report:#?}");
    let first = &report.findings[0];
    assert_eq!(first.gseq, Some(gseq), "{report:#?}");
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.kind == kind && f.task_id.as_deref() == Some(task)),
        "no {kind} finding naming task {task}: {report:#?}"
    );
}

async fn intact_database_verifies(b: Backend) {
    let s = Signed::new(b).await;
    let report = s.verify().await;
    assert!(report.ok(), "{report:#?}");
    assert!(report.consistent);
    assert_eq!(report.events_checked, report.checkpoint_size);
    // A task's inclusion proofs verify against the checkpoint's root.
    let cp = Checkpoint::open(&s.note, &s.key.verifier()).unwrap();
    let proofs = evidence::task_proofs(&s.log, &s.tasks[1], cp.size, &cp.root)
        .await
        .unwrap();
    assert!(!proofs.events.is_empty());
    assert!(
        proofs.events.iter().all(|e| e.covered && e.verified),
        "{proofs:#?}"
    );
}

async fn edited_payload_with_recomputed_chain_is_found(b: Backend) {
    let s = Signed::new(b).await;
    let task = s.tasks[1].clone();
    // The first event after the submission that names the version deployed.
    let seq = s
        .history(&task)
        .await
        .iter()
        .find(|e| e.seq > 1 && e.payload.to_string().contains("\"v2\""))
        .expect("an event naming v2")
        .seq;
    let want = s.gseq(&task, seq).await;
    s.rewrite(&task, seq, |e| {
        e.payload =
            serde_json::from_str(&e.payload.to_string().replace("\"v2\"", "\"v9\"")).unwrap();
    })
    .await;
    assert_first_bad(&s.verify().await, want, "changed", &task);
}

async fn changed_actor_with_recomputed_chain_is_found(b: Backend) {
    let s = Signed::new(b).await;
    let task = s.tasks[0].clone();
    let want = s.gseq(&task, 2).await;
    s.rewrite(&task, 2, |e| e.actor = "approver:mallory".to_string())
        .await;
    assert_first_bad(&s.verify().await, want, "changed", &task);
}

async fn deleted_task_is_found(b: Backend) {
    let s = Signed::new(b).await;
    let task = s.tasks[1].clone();
    let want = s.gseq(&task, 1).await;
    exec_sql(
        &s.h.db,
        &format!("DELETE FROM events WHERE task_id = '{task}'"),
    )
    .await;
    exec_sql(&s.h.db, &format!("DELETE FROM tasks WHERE id = '{task}'")).await;
    let report = s.verify().await;
    assert_first_bad(&report, want, "task_deleted", &task);
    assert_eq!(report.findings[0].kind, "deleted");
    assert_eq!(report.findings[0].seq, Some(1));
}

async fn truncated_newest_events_are_found(b: Backend) {
    let s = Signed::new(b).await;
    let task = s.tasks[2].clone();
    let last = s.history(&task).await.len() as i64;
    let want = s.gseq(&task, last - 1).await;
    exec_sql(
        &s.h.db,
        &format!(
            "DELETE FROM events WHERE task_id = '{task}' AND seq >= {}",
            last - 1
        ),
    )
    .await;
    let kept = s.history(&task).await.last().unwrap().hash.clone();
    exec_sql(
        &s.h.db,
        &format!(
            "UPDATE tasks SET last_seq = {}, last_hash = '{kept}' WHERE id = '{task}'",
            last - 2
        ),
    )
    .await;
    assert_first_bad(&s.verify().await, want, "deleted", &task);

    // Truncating the log's own tables as well does not hide it.
    exec_sql(
        &s.h.db,
        &format!("DELETE FROM evidence_leaves WHERE idx >= {}", want - 1),
    )
    .await;
    exec_sql(
        &s.h.db,
        &format!("UPDATE evidence_log SET size = {}", want - 1),
    )
    .await;
    let report = s.verify().await;
    assert_eq!(report.first_bad_gseq, Some(want), "{report:#?}");
    assert!(report.findings.iter().any(|f| f.kind == "log_truncated"));
}

async fn swapped_events_of_two_tasks_are_found(b: Backend) {
    let s = Signed::new(b).await;
    let (a, c) = (s.tasks[0].clone(), s.tasks[2].clone());
    let (ga, gc) = (s.gseq(&a, 3).await, s.gseq(&c, 3).await);
    for sql in [
        format!("UPDATE events SET gseq = -1 WHERE gseq = {ga}"),
        format!("UPDATE events SET gseq = {ga} WHERE gseq = {gc}"),
        format!("UPDATE events SET gseq = {gc} WHERE gseq = -1"),
    ] {
        exec_sql(&s.h.db, &sql).await;
    }
    let report = s.verify().await;
    assert_first_bad(&report, ga.min(gc), "moved", &a);
}

async fn another_keys_checkpoint_is_refused(b: Backend) {
    let s = Signed::new(b).await;
    let other = SignerKey::from_seed("test.example/mandate", [8; 32]).unwrap();
    assert!(matches!(
        Checkpoint::open(&s.note, &other.verifier()),
        Err(NoteError::UnknownKey { .. })
    ));
    // A checkpoint the other key signed over the same tree is refused by ours.
    let cp = Checkpoint::open(&s.note, &s.key.verifier()).unwrap();
    let forged = cp.sign(&other).unwrap();
    let ours = VerifierKey::parse(&s.key.verifier().to_string()).unwrap();
    assert!(Checkpoint::open(&forged, &ours).is_err());
}

/// A follower restarted later resumes from the stored size, and the new
/// checkpoint is consistent with the old one.
async fn follower_resumes_and_checkpoints_stay_consistent(b: Backend) {
    let mut s = Signed::new(b).await;
    let old = Checkpoint::open(&s.note, &s.key.verifier()).unwrap();
    let (id, _) =
        s.h.run(
            "deploy_with_rollback",
            json!({"service": "api", "version": "v4"}),
        )
        .await;
    s.h.stop_worker().await;
    let (note, log) = sign_all(&s.h, &s.key, None).await;
    let new = Checkpoint::open(&note, &s.key.verifier()).unwrap();
    assert!(new.size > old.size);
    let proof = log.prove_consistency(old.size, new.size).await.unwrap();
    evidence::merkle::verify_consistency(old.size, &old.root, new.size, &new.root, &proof).unwrap();
    // The stored root equals one folded from the events afresh.
    let mut fresh = evidence::merkle::Frontier::default();
    for e in log.events_after(0, 5_000).await.unwrap() {
        let bytes = hex_bytes(&e.event.hash);
        fresh.push(evidence::merkle::leaf_hash(&bytes));
    }
    assert_eq!(fresh.root(), new.root);
    // Each leaf row names its event (on PostgreSQL they are written by COPY).
    let leaves = log.leaves(0, 5_000).await.unwrap();
    let events = log.events_after(0, 5_000).await.unwrap();
    assert_eq!(leaves.len() as u64, new.size);
    for (leaf, e) in leaves.iter().zip(&events) {
        assert_eq!(leaf.index as i64 + 1, e.gseq);
        assert_eq!(
            (&leaf.task_id, leaf.seq, &leaf.event_hash),
            (&e.event.task_id, e.event.seq, &e.event.hash)
        );
    }
    let proofs = evidence::task_proofs(&log, &id, new.size, &new.root)
        .await
        .unwrap();
    assert!(proofs.events.iter().all(|e| e.verified));
    // Only nodes from level STORED_LEVEL up are written (one row per 16
    // leaves and above); the lower ones the proofs above used were folded
    // from the leaf rows. (An UPDATE's row count is the rows it matched.)
    let low = format!(
        "UPDATE evidence_nodes SET hash = hash WHERE level < {}",
        evidence::log::STORED_LEVEL
    );
    assert_eq!(
        exec_sql(&s.h.db, &low).await,
        0,
        "nodes below the stored level were written"
    );
    let stored = exec_sql(&s.h.db, "UPDATE evidence_nodes SET hash = hash").await;
    assert!(
        stored >= 1 && stored <= new.size / 8 + 1,
        "{stored} node rows for {} leaves",
        new.size
    );
}

/// A leaf row keeps whatever its task id holds: tabs, backslashes, line
/// breaks and non-ASCII text survive the bulk write (PostgreSQL's COPY text
/// format escapes them).
async fn leaf_rows_keep_any_task_id(b: Backend) {
    let h = Harness::new(b).await;
    let log = h.engine.store().evidence_log();
    let mut frontier = log.frontier().await.unwrap();
    let rows: Vec<evidence::log::LeafRow> = [
        "tab\there",
        "back\\slash\\n",
        "line\nbreak\r\n",
        "ünïcødé ✓ 'q' \"q\"",
    ]
    .iter()
    .enumerate()
    .map(|(i, id)| evidence::log::LeafRow {
        index: i as u64,
        task_id: id.to_string(),
        seq: i as i64 + 1,
        event_hash: format!("{:064x}", i + 1),
    })
    .collect();
    log.append(&mut frontier, &rows).await.unwrap();
    assert_eq!(log.leaves(0, 10).await.unwrap(), rows);
    assert_eq!(log.size().await.unwrap(), rows.len() as u64);
}

/// `GET /v1/checkpoints/latest` serves the signed note to auditors and
/// operators; `GET /v1/tasks/{id}/receipts` gives each event's hash, leaf
/// index and inclusion proof against it, which verify offline.
async fn api_serves_checkpoints_and_receipts(b: Backend) {
    let s = Signed::new(b).await;
    let state = mandate_api::AppState::new(
        s.h.engine.clone(),
        std::sync::Arc::new(mandate_activities::Governance::shipped()),
        mandate_api::ApiConfig::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(mandate_api::serve(listener, state, async {
        let _ = stopped.await;
    }));
    let store = s.h.engine.store().as_ref();
    let auditor = mandate_api::create_token(store, "auditor", "audit", 0)
        .await
        .unwrap()
        .1;
    let agent = mandate_api::create_token(store, "agent", "bot", 0)
        .await
        .unwrap()
        .1;
    let http = reqwest::Client::new();
    let get = |path: &str, token: &str| http.get(format!("{base}{path}")).bearer_auth(token).send();

    let r = get("/v1/checkpoints/latest", &auditor).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), s.note);
    assert_eq!(
        get("/v1/checkpoints/latest", &agent)
            .await
            .unwrap()
            .status(),
        403
    );

    let task = &s.tasks[2];
    let r = get(&format!("/v1/tasks/{task}/receipts"), &auditor)
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let doc: serde_json::Value = r.json().await.unwrap();
    assert_eq!(doc["checkpoint"], s.note.as_str());
    let cp = Checkpoint::open(&s.note, &s.key.verifier()).unwrap();
    let receipts = doc["receipts"].as_array().unwrap();
    assert_eq!(receipts.len(), s.history(task).await.len());
    for r in receipts {
        assert_eq!(r["covered"], true);
        let proof: Vec<[u8; 32]> = r["proof"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| hex_bytes(h.as_str().unwrap()).try_into().unwrap())
            .collect();
        let leaf = hex_bytes(r["event_hash"].as_str().unwrap());
        let index = r["leaf_index"].as_u64().unwrap();
        assert_eq!(r["gseq"].as_u64().unwrap(), index + 1);
        evidence::merkle::verify_inclusion(&leaf, index, cp.size, &cp.root, &proof).unwrap();
    }
}

fn hex_bytes(h: &str) -> Vec<u8> {
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
        .collect()
}

backend_tests!(
    intact_database_verifies,
    edited_payload_with_recomputed_chain_is_found,
    changed_actor_with_recomputed_chain_is_found,
    deleted_task_is_found,
    truncated_newest_events_are_found,
    swapped_events_of_two_tasks_are_found,
    another_keys_checkpoint_is_refused,
    follower_resumes_and_checkpoints_stay_consistent,
    leaf_rows_keep_any_task_id,
    api_serves_checkpoints_and_receipts,
);
