//! `mandate-stress policy-bench`: what the policy gate costs per plan step.
//!
//! Measures [`PolicySet::evaluate`] (the work `policy.check` does for every
//! step: catalog lookups, the schema check, CRUDLEX, building the Cedar
//! request and entities, Cedar's authorizer, path and approval rules) for a
//! read, a monitored write and a gated payment, against the shipped baseline
//! and against the baseline plus N extra org rules; then the engine's
//! gateway path (`Gateway::evaluate` on the shipped governance, rows
//! labelled `gateway`). Measures only.

use std::time::{Duration, Instant};

use mandate_activities::policy::{
    CheckRequest, DEFAULT_CATALOG_YAML, DEFAULT_ORG_POLICY, PolicySet,
};
use serde_json::json;

#[derive(clap::Args, Debug)]
pub struct PolicyBenchArgs {
    /// Evaluations per case
    #[arg(long, default_value_t = 20_000)]
    pub iterations: u32,
    /// Extra org rules to add, comma-separated (0 = the shipped baseline alone)
    #[arg(long, default_value = "0,100,1000", value_delimiter = ',')]
    pub extra_rules: Vec<usize>,
}

fn set_with(extra: usize) -> anyhow::Result<PolicySet> {
    let mut extra_text = String::new();
    for i in 0..extra {
        // Rules that never match a benchmarked request: the cost of scanning them.
        extra_text.push_str(&format!(
            "@id(\"bench.rule.{i}\")\nforbid(principal, action == Action::\"bench.tool.{i}\", resource) when {{ context.amount > {i} }};\n"
        ));
    }
    let mut files = vec![(
        "org/baseline.cedar".to_string(),
        DEFAULT_ORG_POLICY.to_string(),
    )];
    if extra > 0 {
        files.push(("org/bench.cedar".to_string(), extra_text));
    }
    let payments = "@id(\"bench.payments.gate\")\n@role(\"gate\")\n@path(\"gated_execute\")\n@approvers(\"alice, bob\")\n@quorum(\"2\")\npermit(principal, action == Action::\"ledger.charge\", resource) when { context.amount > 1000 };\n";
    files.push(("org/payments.cedar".to_string(), payments.to_string()));
    PolicySet::from_sources(("catalog.yaml", DEFAULT_CATALOG_YAML), &files)
        .map_err(|e| anyhow::anyhow!("{e}"))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub fn run(args: PolicyBenchArgs) -> anyhow::Result<()> {
    let cases = [
        (
            "read (auto_execute)",
            "deploy.snapshot",
            json!({"service": "checkout"}),
        ),
        (
            "reversible write (monitored)",
            "kv.put",
            json!({"key": "k", "value": 1}),
        ),
        (
            "payment (gated, quorum 2)",
            "ledger.charge",
            json!({"account": "acme", "amount_cents": 500000}),
        ),
    ];
    println!(
        "policy evaluation per step ({} iterations per case)",
        args.iterations
    );
    println!(
        "{:<8} {:<30} {:>10} {:>10} {:>10}",
        "rules", "case", "mean", "p50", "p99"
    );
    for &extra in &args.extra_rules {
        let set = set_with(extra)?;
        for (label, tool, input) in &cases {
            let request = CheckRequest {
                step: "s".into(),
                tool: tool.to_string(),
                input: input.clone(),
                agent: "agent-deployer-7".into(),
                on_behalf_of: Some("user-alice".into()),
                environment: None,
                now_ms: 1_700_000_000_000,
            };
            for _ in 0..args.iterations.min(1_000) {
                std::hint::black_box(set.evaluate(&request));
            }
            let mut samples = Vec::with_capacity(args.iterations as usize);
            let start = Instant::now();
            for _ in 0..args.iterations {
                let t = Instant::now();
                std::hint::black_box(set.evaluate(&request));
                samples.push(t.elapsed());
            }
            let total = start.elapsed();
            samples.sort();
            println!(
                "{:<8} {:<30} {:>10.1?} {:>10.1?} {:>10.1?}",
                set.rules.len(),
                label,
                total / args.iterations.max(1),
                percentile(&samples, 0.5),
                percentile(&samples, 0.99)
            );
        }
    }
    // The engine's path: `Gateway::evaluate` on the shipped governance, as
    // `decide` calls it for every step (evaluation plus the recorded
    // decision's conversion).
    use mandate_engine::core::gateway::{Gateway, GatewayRequest, Principal};
    let governance = mandate_activities::Governance::shipped();
    let principal = Principal {
        agent: Some("agent-deployer-7".into()),
        on_behalf_of: Some("user-alice".into()),
    };
    for (label, tool, input) in &cases {
        let request = GatewayRequest {
            task_id: "t",
            workflow: "plan",
            principal: &principal,
            step: "s",
            tool,
            kind: None,
            input,
            now_ms: 1_700_000_000_000,
        };
        for _ in 0..args.iterations.min(1_000) {
            std::hint::black_box(governance.evaluate(&request));
        }
        let mut samples = Vec::with_capacity(args.iterations as usize);
        let start = Instant::now();
        for _ in 0..args.iterations {
            let t = Instant::now();
            std::hint::black_box(governance.evaluate(&request));
            samples.push(t.elapsed());
        }
        let total = start.elapsed();
        samples.sort();
        println!(
            "{:<8} {:<30} {:>10.1?} {:>10.1?} {:>10.1?}",
            "gateway",
            label,
            total / args.iterations.max(1),
            percentile(&samples, 0.5),
            percentile(&samples, 0.99)
        );
    }
    Ok(())
}
