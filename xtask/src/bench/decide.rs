//! `cargo xtask bench` (part `decide`): what one policy decision costs, at 10, 1 000 and
//! 10 000 rules.
//!
//! xtask itself runs in the debug profile, so the timing is done by the release build of
//! `enforcer/examples/decide_bench.rs` (`--json`), on `enforcer::policy::synthetic` policies:
//! each `Policy::decide` call is timed alone over 200 passes of 1 000 varied requests, the
//! clock's own cost subtracted. It runs pinned to the CPU the HTTP part gives the agent.

use std::{path::Path, time::Duration};

use anyhow::Context as _;
use serde_json::Value;

/// The goal: p99 of one decision at 10 000 rules, in nanoseconds.
const GOAL_RULES: u64 = 10_000;
const GOAL_P99_NS: f64 = 1_000.0;

/// Far beyond the few seconds the example takes; only a hung one reaches it.
const LIMIT: Duration = Duration::from_secs(600);

pub fn run(root: &Path, cpu: usize) -> anyhow::Result<Value> {
    let bin = root.join("target/release/examples/decide_bench");
    let mut report = super::run_example_report(&bin, "decide_bench", &["--json"], cpu, LIMIT)?;
    let policies = report["policies"]
        .as_array()
        .context("decide_bench report without `policies`")?
        .clone();
    let num = |p: &Value, field: &str| -> anyhow::Result<f64> {
        p[field]
            .as_f64()
            .with_context(|| format!("decide_bench: no number `{field}` in {p}"))
    };

    println!(
        "\npolicy decision time: Policy::decide, release build, synthetic policies \
         (enforcer::policy::synthetic), pinned to CPU {cpu}; each call timed alone, {} ns of \
         clock overhead subtracted",
        report["clock_overhead_ns"]
    );
    println!(
        "{:>7}  {:>10}  {:>7}  {:>8}  {:>8}  {:>8}  {:>8}  {:>9}  {:>9}",
        "rules", "compile", "allowed", "mean", "p50", "p99", "p99.9", "max", "samples"
    );
    let mut goal = None;
    for p in &policies {
        let rules = num(p, "rules")? as u64;
        let p99 = num(p, "p99_ns")?;
        println!(
            "{rules:>7}  {:>7.1} ms  {:>6.0}%  {:>5.0} ns  {:>5.0} ns  {:>5.0} ns  {:>5.0} ns  \
             {:>6.0} ns  {:>9}",
            num(p, "compile_ms")?,
            100.0 * num(p, "allowed")? / num(p, "requests")?,
            num(p, "mean_ns")?,
            num(p, "p50_ns")?,
            p99,
            num(p, "p999_ns")?,
            num(p, "max_ns")?,
            num(p, "samples")?,
        );
        if rules == GOAL_RULES {
            goal = Some(p99);
        }
    }
    let p99 = goal.with_context(|| format!("decide_bench did not time {GOAL_RULES} rules"))?;
    let met = p99 < GOAL_P99_NS;
    println!(
        "    goal p99 < {GOAL_P99_NS:.0} ns at {GOAL_RULES} rules: p99 {p99:.0} ns, {}",
        if met { "met" } else { "NOT met" }
    );
    report["goal"] = serde_json::json!({
        "rules": GOAL_RULES,
        "p99_ns_below": GOAL_P99_NS,
        "p99_ns": p99,
        "met": met,
    });
    report["cpu"] = cpu.into();
    Ok(report)
}
