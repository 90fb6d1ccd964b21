//! `mandate-stress worker` (hidden): the engine process of a stress run.
//!
//! The parent starts it, SIGKILLs it, SIGSTOPs it and starts it again; it
//! holds no state of its own beyond the database. Its store is a
//! [`FaultyStore`] and its tools are [`FaultyTool`]s, both seeded by the
//! parent's seed, so every incarnation injects the same faults into the same
//! calls. It prints its fault counters on stdout every half second (the
//! parent adds them up) and exits when its stdin closes (the parent is gone).

use std::sync::Arc;
use std::time::Duration;

use mandate_activities::{ToolRegistry, World};
use mandate_engine::{Engine, Limits, WorkerConfig};
use tokio::io::AsyncReadExt;

use crate::faults::{
    FaultCounters, FaultSet, Faults, FaultyStore, FaultyTool, LATE_APPLY_MAX_DELAY_MS, Role,
};

/// The stress saga's tool names, each a faulty wrapper around a demo tool.
pub const PUT: &str = "stress.put";
pub const UNDO: &str = "stress.undo";
pub const READ: &str = "stress.read";

#[derive(clap::Args, Debug, Clone)]
pub struct WorkerArgs {
    /// The database URL (the same the parent uses).
    #[arg(long)]
    pub db: String,
    #[arg(long)]
    pub seed: u64,
    /// Faults to inject (comma separated).
    #[arg(long, default_value = "all")]
    pub faults: FaultSet,
    /// This incarnation's lease owner id.
    #[arg(long)]
    pub worker_id: String,
    #[arg(long, default_value_t = 2_000)]
    pub lease_ms: i64,
}

/// Registers the stress tools over the demo tools of `world`.
pub fn register_stress_tools(tools: &mut ToolRegistry, world: World, faults: Arc<Faults>) {
    mandate_activities::register_demo_tools(tools, world);
    let inner = |name: &str| {
        tools
            .get(name)
            .unwrap_or_else(|| panic!("demo tool {name} is registered"))
    };
    let (put, delete, echo) = (inner("kv.put"), inner("kv.delete"), inner("test.echo"));
    tools.register(FaultyTool::new(PUT, put, Role::Step, faults.clone()));
    tools.register(FaultyTool::new(
        UNDO,
        delete,
        Role::Compensation,
        faults.clone(),
    ));
    tools.register(FaultyTool::new(READ, echo, Role::Step, faults));
}

pub async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let faults = Arc::new(Faults {
        seed: args.seed,
        enabled: args.faults.clone(),
        counters: FaultCounters::default(),
    });
    let inner = mandate_engine::store::open(&args.db).await?;
    let store = Arc::new(FaultyStore::new(inner, faults.clone()));
    let world = World::connect(&args.db).await?;
    let mut tools = ToolRegistry::new();
    register_stress_tools(&mut tools, world, faults.clone());
    let engine = Engine::with_options(
        store,
        mandate_workflows::registry(),
        tools,
        Arc::new(mandate_activities::Governance::shipped()),
        Limits::default(),
        Arc::new(mandate_engine::runtime::SystemClock),
    );
    let worker = engine.start_worker(WorkerConfig {
        id: args.worker_id.clone(),
        lease_ms: args.lease_ms,
        poll_interval: Duration::from_millis(100),
        eager_start: false,
        ..WorkerConfig::default()
    });
    let counters = faults.clone();
    let report = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            println!("faults {}", counters.counters.snapshot());
        }
    });
    // Runs until the parent closes our stdin (or kills us).
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
    report.abort();
    worker.shutdown().await;
    // Let zombie calls land (or be fenced off) before the parent checks.
    faults
        .counters
        .wait_for_late_calls(Duration::from_millis(LATE_APPLY_MAX_DELAY_MS + 1_000))
        .await;
    println!("faults {}", faults.counters.snapshot());
    Ok(())
}
