//! Time `Policy::decide` on synthetic policies of 10, 1 000 and 10 000 rules:
//!
//! ```sh
//! cargo run --release -p enforcer --example decide_bench
//! ```
//!
//! Each decision is timed alone, and the cost of reading the clock (measured here, about
//! 20 ns with the vDSO) is subtracted, so the percentiles are of `decide` itself. The mean
//! comes from timing whole passes without per-call clocks.

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use enforcer::policy::{Verdict, synthetic};

/// Passes over the 1 000 requests of each policy.
const PASSES: usize = 200;

fn main() {
    let clock = clock_overhead();
    println!("clock overhead subtracted: {clock} ns");
    println!(
        "{:>7} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "rules", "compile", "allowed", "mean", "p50", "p99", "p99.9", "max"
    );
    for n in [10, 1_000, 10_000] {
        let started = Instant::now();
        let s = synthetic(n);
        let compile = started.elapsed();
        let headers: Vec<(&str, &str)> = s
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let requests: Vec<(&str, &str, Option<&str>)> = s
            .requests
            .iter()
            .map(|(m, p, q)| (m.as_str(), p.as_str(), q.as_deref()))
            .collect();
        let decide = |(method, path, query): (&str, &str, Option<&str>)| {
            s.policy
                .decide(&s.caller, s.service, method, path, &headers[..], query)
        };
        let allowed = requests
            .iter()
            .filter(|r| decide(**r).verdict == Verdict::Allow)
            .count();

        // Warm caches and branch predictors, then time whole passes.
        for r in &requests {
            black_box(decide(black_box(*r)));
        }
        let started = Instant::now();
        for _ in 0..PASSES {
            for r in &requests {
                black_box(decide(black_box(*r)));
            }
        }
        let mean = started.elapsed().as_nanos() as f64 / (PASSES * requests.len()) as f64;

        let mut samples = Vec::with_capacity(PASSES * requests.len());
        for _ in 0..PASSES {
            for r in &requests {
                let t = Instant::now();
                black_box(decide(black_box(*r)));
                samples.push(nanos(t.elapsed()).saturating_sub(clock));
            }
        }
        samples.sort_unstable();
        let pct = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize];
        println!(
            "{n:>7} {:>7}ms {:>7}% {:>6.0}ns {:>6}ns {:>6}ns {:>6}ns {:>7}ns",
            compile.as_millis(),
            allowed * 100 / requests.len(),
            mean,
            pct(0.50),
            pct(0.99),
            pct(0.999),
            samples[samples.len() - 1],
        );
    }
}

/// The median cost of two clock reads.
fn clock_overhead() -> u64 {
    let mut samples: Vec<u64> = (0..100_000)
        .map(|_| {
            let t = Instant::now();
            nanos(black_box(t).elapsed())
        })
        .collect();
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
