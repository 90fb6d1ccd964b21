//! The shared test harness: every scenario runs against SQLite and PostgreSQL.
//!
//! - [`TestDb`] gives each test a fresh database: a SQLite file in a temporary
//!   directory, or a new PostgreSQL database on the server named by
//!   `MANDATE_TEST_PG_URL` (default `postgres://postgres@127.0.0.1:5432`),
//!   dropped afterwards. An unreachable PostgreSQL fails the test loudly; it is
//!   never skipped.
//! - [`Harness`] wires an engine with the built-in workflows and demo tools.
//! - [`backend_tests!`] instantiates `async fn name(b: Backend)` for both stores.

pub mod mcp;

use std::sync::Arc;
use std::time::Duration;

use mandate_activities::{ToolRegistry, World};
use mandate_engine::core::gateway::Gateway;
use mandate_engine::core::workflow::check_history;
use mandate_engine::store::TaskRow;
use mandate_engine::{Engine, Limits, TaskStatus, WorkerConfig, WorkerHandle, WorkflowRegistry};
use serde_json::Value;

/// Which store a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The PostgreSQL server tests create their databases on.
pub fn pg_base_url() -> String {
    std::env::var("MANDATE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_string())
}

/// A fresh database for one test.
pub struct TestDb {
    pub url: String,
    pub backend: Backend,
    _dir: Option<tempfile::TempDir>,
    pg_name: Option<String>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("create a temporary directory");
                let url = format!("sqlite://{}", dir.path().join("mandate.db").display());
                TestDb {
                    url,
                    backend,
                    _dir: Some(dir),
                    pg_name: None,
                }
            }
            Backend::Postgres => {
                let base = pg_base_url();
                let admin_url = format!("{base}/postgres");
                let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url)
                    .await
                    .unwrap_or_else(|e| {
                        panic!(
                            "PostgreSQL is unreachable at {admin_url}: {e}. The PostgreSQL tests never skip: \
                             start it (pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start) \
                             or point MANDATE_TEST_PG_URL at a server"
                        )
                    });
                let name = format!("mandate_t_{}", uuid::Uuid::now_v7().simple());
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut admin)
                    .await
                    .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
                TestDb {
                    url: format!("{base}/{name}"),
                    backend,
                    _dir: None,
                    pg_name: Some(name),
                }
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else {
            return;
        };
        let admin_url = format!("{}/postgres", pg_base_url());
        // Drop on a thread of its own: Drop cannot await, and the test's runtime
        // may be shutting down.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async move {
                    if let Ok(mut admin) =
                        <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url).await
                    {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .execute(&mut admin)
                        .await;
                    }
                });
            }
        })
        .join();
    }
}

/// An engine on a fresh database with the built-in workflows and demo tools.
pub struct Harness {
    pub db: TestDb,
    pub engine: Engine,
    pub world: World,
    worker: Option<WorkerHandle>,
}

/// Fast retries and a short lease, so failure paths run quickly in tests.
pub fn test_worker_config() -> WorkerConfig {
    WorkerConfig {
        lease_ms: 2_000,
        poll_interval: Duration::from_millis(100),
        ..WorkerConfig::default()
    }
}

impl Harness {
    pub async fn new(backend: Backend) -> Harness {
        Self::with(backend, |_, _| {}).await
    }

    /// A harness whose registries `customize` may extend or override.
    pub async fn with(
        backend: Backend,
        customize: impl FnOnce(&mut WorkflowRegistry, &mut ToolRegistry),
    ) -> Harness {
        let db = TestDb::new(backend).await;
        Self::on(db, Limits::default(), customize).await
    }

    /// A harness on an existing database.
    pub async fn on(
        db: TestDb,
        limits: Limits,
        customize: impl FnOnce(&mut WorkflowRegistry, &mut ToolRegistry),
    ) -> Harness {
        Self::governed(db, limits, Arc::new(OpenGateway), customize).await
    }

    /// A harness on an existing database whose every step passes `gateway`.
    pub async fn governed(
        db: TestDb,
        limits: Limits,
        gateway: Arc<dyn Gateway>,
        customize: impl FnOnce(&mut WorkflowRegistry, &mut ToolRegistry),
    ) -> Harness {
        let (engine, world) = engine_with(
            &db.url,
            limits,
            Arc::new(mandate_engine::runtime::SystemClock),
            gateway,
            customize,
        )
        .await;
        Harness {
            db,
            engine,
            world,
            worker: None,
        }
    }

    pub fn start_worker(&mut self) {
        if self.worker.is_none() {
            self.worker = Some(self.engine.start_worker(test_worker_config()));
        }
    }

    pub async fn stop_worker(&mut self) {
        if let Some(w) = self.worker.take() {
            w.shutdown().await;
        }
    }

    /// Submits and waits (30 s at most) for a final status.
    pub async fn run(&mut self, workflow: &str, input: Value) -> (String, TaskRow) {
        self.start_worker();
        let id = self
            .engine
            .submit(workflow, input, Default::default())
            .await
            .expect("submit")
            .task_id;
        let row = self
            .engine
            .wait_until_final(&id, Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("task {id} did not finish: {e}"));
        (id, row)
    }

    /// Waits until `pred` holds for the task's status (10 s at most).
    pub async fn wait_for(&self, task_id: &str, pred: impl Fn(TaskStatus) -> bool) -> TaskRow {
        wait_for(&self.engine, task_id, pred, Duration::from_secs(10)).await
    }

    /// The stored history replays with the registered workflow: chain intact,
    /// same commands, same result, and the stored status equals the folded one.
    pub async fn assert_replays(&self, task_id: &str) {
        assert_replays(&self.engine, task_id).await
    }
}

/// The gateway of the durable-core suites, which test storage, replay,
/// retries and recovery rather than policy: it admits any principal and
/// decides every step `monitored_execute` (recorded, like any decision);
/// workflows' own approvals go to `carol`. Governance itself is tested with
/// the real Cedar gateway (`tests/tests/support/gov.rs`). Never shipped.
pub struct OpenGateway;

impl Gateway for OpenGateway {
    fn evaluate(
        &self,
        _request: &mandate_engine::core::gateway::GatewayRequest<'_>,
    ) -> mandate_engine::core::gateway::GatewayDecision {
        use mandate_engine::core::gateway::{GatewayDecision, InterventionPath, RuleRef};
        GatewayDecision {
            path: InterventionPath::MonitoredExecute,
            decided_by: vec![RuleRef {
                id: "test.open".into(),
                message: "the durable-core suites allow every step".into(),
                level: "builtin".into(),
                file: None,
            }],
            policy_hash: "test-open".into(),
            approval: None,
            operation: None,
            scope: None,
            owners: Vec::new(),
            risk: None,
            data_classes: Vec::new(),
            crudlex: None,
            autonomy: None,
            recovery_path: None,
            preapproval: None,
        }
    }

    fn workflow_approval(
        &self,
        _principal: &mandate_engine::core::gateway::Principal,
        _workflow: &str,
        _subject: &str,
    ) -> mandate_engine::core::gateway::WorkflowApproval {
        mandate_engine::core::gateway::WorkflowApproval {
            requirement: mandate_engine::core::gateway::ApprovalRequirement {
                approvers: vec!["carol".into()],
                quorum: 1,
                timeout_ms: 3_600_000,
                escalation: None,
            },
            decided_by: Vec::new(),
            policy_hash: "test-open".into(),
        }
    }

    fn admit(&self, _principal: &mandate_engine::core::gateway::Principal) -> Result<(), String> {
        Ok(())
    }

    fn may_preapprove(&self, identity: &str, _tool: &str, _agent: &str) -> Result<(), String> {
        (identity == "owner")
            .then_some(())
            .ok_or_else(|| format!("{identity} is not the test owner"))
    }
}

/// Builds an engine for `url`.
pub async fn engine_for(
    url: &str,
    limits: Limits,
    customize: impl FnOnce(&mut WorkflowRegistry, &mut ToolRegistry),
) -> (Engine, World) {
    engine_with_clock(
        url,
        limits,
        Arc::new(mandate_engine::runtime::SystemClock),
        customize,
    )
    .await
}

/// Builds an engine for `url` whose time comes from `clock` (e.g. one running
/// ahead, to see another process's lease as expired).
pub async fn engine_with_clock(
    url: &str,
    limits: Limits,
    clock: Arc<dyn mandate_engine::runtime::Clock>,
    customize: impl FnOnce(&mut WorkflowRegistry, &mut ToolRegistry),
) -> (Engine, World) {
    engine_with(url, limits, clock, Arc::new(OpenGateway), customize).await
}

/// Builds an engine for `url` with its clock and gateway.
pub async fn engine_with(
    url: &str,
    limits: Limits,
    clock: Arc<dyn mandate_engine::runtime::Clock>,
    gateway: Arc<dyn Gateway>,
    customize: impl FnOnce(&mut WorkflowRegistry, &mut ToolRegistry),
) -> (Engine, World) {
    let store = mandate_engine::store::open(url).await.expect("open store");
    let world = World::connect(url).await.expect("open world");
    let mut tools = ToolRegistry::new();
    mandate_activities::register_demo_tools(&mut tools, world.clone());
    let mut workflows = mandate_workflows::registry();
    customize(&mut workflows, &mut tools);
    let engine = Engine::with_options(store, workflows, tools, gateway, limits, clock);
    (engine, world)
}

/// Waits until `pred` holds for the task's status, or panics after `timeout`.
pub async fn wait_for(
    engine: &Engine,
    task_id: &str,
    pred: impl Fn(TaskStatus) -> bool,
    timeout: Duration,
) -> TaskRow {
    let mut updates = engine.subscribe();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let row = engine.task(task_id).await.expect("task row");
        if pred(row.status) {
            return row;
        }
        tokio::select! {
            _ = updates.recv() => {}
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = tokio::time::sleep_until(deadline) => panic!("task {task_id} stayed {} for {timeout:?}", row.status),
        }
    }
}

/// See [`Harness::assert_replays`].
pub async fn assert_replays(engine: &Engine, task_id: &str) {
    let history = engine.history(task_id).await.expect("history verifies");
    let state = mandate_engine::TaskState::fold(&history);
    let wf = engine
        .workflows()
        .get(&state.workflow)
        .expect("workflow registered");
    check_history(wf.as_ref(), &history)
        .unwrap_or_else(|e| panic!("replay of {task_id} diverged: {e}"));
    let row = engine.task(task_id).await.expect("task row");
    assert_eq!(
        row.status,
        state.status(),
        "stored status of {task_id} differs from its folded history"
    );
    assert_eq!(row.last_seq, state.last_seq);
    assert_eq!(row.last_hash, state.last_hash);
}

/// The payload types of a history, in order.
pub fn types(history: &[mandate_engine::Event]) -> Vec<&'static str> {
    history.iter().map(|e| e.payload.type_name()).collect()
}

/// Instantiates `async fn name(b: Backend)` tests for SQLite and PostgreSQL.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Backend::Postgres).await
                }
            )*
        }
    };
}

/// Runs one SQL statement directly against a test database (to tamper with it).
pub async fn exec_sql(db: &TestDb, sql: &str) -> u64 {
    match db.backend {
        Backend::Sqlite => {
            let mut c = <sqlx::SqliteConnection as sqlx::Connection>::connect(&db.url)
                .await
                .expect("connect sqlite");
            sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
                .execute(&mut c)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
                .rows_affected()
        }
        Backend::Postgres => {
            let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url)
                .await
                .expect("connect postgres");
            sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
                .execute(&mut c)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
                .rows_affected()
        }
    }
}

/// Applies to `db` only the migrations numbered below `first_left_out`
/// (e.g. `"0010"`): the schema an earlier release left, for a test of what
/// the later migrations do to its rows.
pub async fn migrate_before(db: &TestDb, first_left_out: &str) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../migrations")
        .join(match db.backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        });
    let old = tempfile::tempdir().expect("create a temporary directory");
    for f in std::fs::read_dir(&dir).expect("read the migrations") {
        let f = f.expect("read the migrations");
        let name = f.file_name().into_string().expect("a UTF-8 file name");
        if name.as_str() < first_left_out {
            std::fs::copy(f.path(), old.path().join(&name)).expect("copy a migration");
        }
    }
    let migrator = sqlx::migrate::Migrator::new(old.path())
        .await
        .expect("read the migrations");
    match db.backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&format!("{}?mode=rwc", db.url))
                .await
                .expect("open sqlite");
            migrator.run(&pool).await.expect("migrate");
            pool.close().await;
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&db.url)
                .await
                .expect("connect postgres");
            migrator.run(&pool).await.expect("migrate");
            pool.close().await;
        }
    }
}
