//! Time `Policy::decide` on synthetic policies of 10, 1 000 and 10 000 rules:
//!
//! ```sh
//! cargo run --release -p enforcer --example decide_bench            # a table
//! cargo run --release -p enforcer --example decide_bench -- --json  # one JSON object
//! ```
//!
//! Each decision is timed alone, and the cost of reading the clock (measured here, about
//! 20 ns with the vDSO) is subtracted, so the percentiles are of `decide` itself. The mean
//! comes from timing whole passes without per-call clocks. `--json` prints the same numbers as
//! one JSON object on stdout (`cargo xtask bench` reads it).

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use enforcer::policy::{Verdict, synthetic};
use serde_json::json;

/// Passes over the 1 000 requests of each policy.
const PASSES: usize = 200;

/// Policy sizes timed, in rules.
const SIZES: [usize; 3] = [10, 1_000, 10_000];

fn main() {
    let json = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--json") => true,
        Some(other) => {
            eprintln!("usage: decide_bench [--json] (unknown argument `{other}`)");
            std::process::exit(2);
        }
    };
    let clock = clock_overhead();
    if !json {
        println!("clock overhead subtracted: {clock} ns");
        println!(
            "{:>7} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}",
            "rules", "compile", "allowed", "mean", "p50", "p99", "p99.9", "max"
        );
    }
    let mut policies = Vec::new();
    for n in SIZES {
        let t = time_policy(n, clock);
        if json {
            policies.push(json!({
                "rules": n,
                "compile_ms": t.compile.as_secs_f64() * 1e3,
                "requests": t.requests,
                "allowed": t.allowed,
                "samples": t.samples.len(),
                "mean_ns": t.mean,
                "p50_ns": t.pct(0.50),
                "p99_ns": t.pct(0.99),
                "p999_ns": t.pct(0.999),
                "max_ns": t.samples[t.samples.len() - 1],
            }));
        } else {
            println!(
                "{n:>7} {:>7}ms {:>7}% {:>6.0}ns {:>6}ns {:>6}ns {:>6}ns {:>7}ns",
                t.compile.as_millis(),
                t.allowed * 100 / t.requests,
                t.mean,
                t.pct(0.50),
                t.pct(0.99),
                t.pct(0.999),
                t.samples[t.samples.len() - 1],
            );
        }
    }
    if json {
        let report = json!({
            "clock_overhead_ns": clock,
            "passes": PASSES,
            "policies": policies,
        });
        println!("{report}");
    }
}

/// What timing one policy size found.
struct Timing {
    compile: Duration,
    requests: usize,
    allowed: usize,
    /// Nanoseconds per call, timing whole passes.
    mean: f64,
    /// Nanoseconds of each call timed alone, clock overhead subtracted; sorted.
    samples: Vec<u64>,
}

impl Timing {
    fn pct(&self, p: f64) -> u64 {
        self.samples[((self.samples.len() - 1) as f64 * p) as usize]
    }
}

fn time_policy(n: usize, clock: u64) -> Timing {
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
    Timing {
        compile,
        requests: requests.len(),
        allowed,
        mean,
        samples,
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
