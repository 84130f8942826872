//! `cargo xtask bench` (part `http`): keep-alive HTTP through the enforcer, against the same
//! traffic sent directly and through HAProxy with an equivalent rule set.
//!
//! - Upstream: nginx (`return 200 "ok\n"`, one process, no access log), fast, so the proxies'
//!   share dominates.
//! - Load generator: wrk, one thread, keep-alive connections; a Lua `done()` hook prints its
//!   exact microsecond percentiles as JSON. Two kinds of runs: *load* (`--http-connections`
//!   connections for `--http-secs`: throughput, and latency under saturation) and *single*
//!   (one connection for `--http-latency-secs`: the latency of one request at a time, the
//!   proxies' own added latency without queueing).
//! - Three configurations, interleaved round by round (the order rotates each round, so none
//!   always runs first or after a particular other), medians reported with ratios:
//!   - `direct`: wrk → nginx;
//!   - `enforcer`: wrk started inside a test cgroup the agent is attached to, so its connects
//!     to nginx are redirected; the policy has `--http-rules` rules for wrk's executable, the
//!     last of which allows `GET /bench`: every request is decided and audited (to a file);
//!   - `haproxy`: wrk → HAProxy on a loopback port → nginx, with the same rules as ACLs
//!     (`http-request allow if <method> <path>` per rule, then `http-request deny`), path
//!     normalisation on (`normalize-uri`, as the agent normalises paths), `nbthread 1`, no
//!     log unless `--http-haproxy-log`.
//!
//! Placement (defaults, on 2 CPUs): nginx, HAProxy and the agent (all its threads: the tokio
//! worker, which sizes itself to one CPU, the audit writer and the blocking pool) share
//! `--http-server-cpu` 0, so the proxies get the same CPU budget, one CPU shared with the
//! upstream as on a busy host; the load runs' wrk has CPU 1 to itself
//! (`--http-client-cpu`), so the generator is not what is measured. The single-connection
//! runs put wrk on the server CPU too (`--http-latency-cpu`): a wakeup across vCPUs costs
//! tens of microseconds on this project's VMs (see `redirect`), and one request at a time
//! would measure those; on one CPU each request costs only the work and the switches of
//! client, proxy and upstream.
//!
//! Noise: this project's VMs are shared (builds and tests of other work run beside). Each
//! round measures the CPU time taken by anything but the benchmark (all CPUs' busy time in
//! /proc/stat minus that of its own processes) and the hypervisor's steal; a round where
//! either exceeds 5% of the CPUs is discarded and run again (at most 3 x `--http-rounds`
//! attempts in all, then disturbed rounds are kept and the report says so), and the report
//! gives both shares for the rounds kept.
//!
//! Ports: nginx and HAProxy cannot be told to take port 0, so a free port is found by binding
//! port 0 and closing it, then handed over. Another process could take it in between; the
//! server then fails to start and is retried on a new port (three attempts).
//!
//! Goals (the issue's): more throughput than HAProxy in the load runs, and less added latency
//! (p50 and p99, configuration − direct) in the single-connection runs, where it is the
//! proxy's own. Under load, latency is mostly queueing (p50 ≈ connections / throughput) and
//! its p99 mostly the VM's cross-CPU wakeups: those rows are shown, not judged.
//!
//! Checks: every run must get only 2xx answers (else it fails); every request through the
//! enforcer must leave one audit record: the records are counted against wrk's completed
//! requests (up to one more per connection, for requests in flight when wrk stops), and a
//! shortfall is reported as records lost. The agent must have accepted exactly the enforcer
//! runs' connections (reported if not).

use std::{
    fmt::Write as _,
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use enforcer_tests::{Agent, Cgroup};
use serde_json::{Value, json};

use super::{Proc, median, min_max, pin, pin_command, pin_process};

#[derive(clap::Args)]
pub struct HttpArgs {
    /// HTTP part: rounds of each configuration (direct, enforcer, HAProxy), interleaved;
    /// medians are reported.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(3..=100))]
    pub(super) http_rounds: u32,
    /// HTTP part: seconds each load run lasts.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=120))]
    pub(super) http_secs: u64,
    /// HTTP part: keep-alive connections of the load runs (wrk, one thread).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub(super) http_connections: u32,
    /// HTTP part: seconds each single-connection latency run lasts.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=120))]
    pub(super) http_latency_secs: u64,
    /// HTTP part: rules in the enforcer policy and in HAProxy's ACLs; the last one allows the
    /// benchmarked `GET /bench`.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    http_rules: u32,
    /// HTTP part: CPU of wrk in the load runs (default: 1 if there are two CPUs or more, else
    /// 0).
    #[arg(long)]
    http_client_cpu: Option<usize>,
    /// HTTP part: CPU of nginx, HAProxy and the agent (every thread of each). Also the CPU
    /// `decide_bench` runs on.
    #[arg(long, default_value_t = 0)]
    http_server_cpu: usize,
    /// HTTP part: CPU of wrk in the single-connection runs (default: --http-server-cpu).
    #[arg(long)]
    http_latency_cpu: Option<usize>,
    /// HTTP part: let HAProxy log every request (`option httplog`, to a file), as the agent
    /// audits every request. Off by default: the bar is HAProxy at its fastest.
    #[arg(long)]
    http_haproxy_log: bool,
}

impl HttpArgs {
    pub fn server_cpu(&self) -> usize {
        self.http_server_cpu
    }

    /// The CPUs of nginx and the agent, of wrk in load runs and of wrk in single-connection
    /// runs, checked against the `cpus` this machine has.
    pub(super) fn placement(&self, cpus: usize) -> anyhow::Result<(usize, usize, usize)> {
        let server_cpu = self.http_server_cpu;
        let client_cpu = self
            .http_client_cpu
            .unwrap_or(if cpus >= 2 { 1 } else { 0 });
        let latency_cpu = self.http_latency_cpu.unwrap_or(server_cpu);
        for (flag, cpu) in [
            ("--http-server-cpu", server_cpu),
            ("--http-client-cpu", client_cpu),
            ("--http-latency-cpu", latency_cpu),
        ] {
            ensure!(cpu < cpus, "{flag} {cpu}: this machine has CPUs 0..{cpus}");
        }
        Ok((server_cpu, client_cpu, latency_cpu))
    }
}

/// The benchmarked request's path, and the rule that allows it.
const BENCH_PATH: &str = "/bench";
const BENCH_RULE: &str = "bench-get";
/// Unrecorded load run of each configuration before the rounds: connections, caches, the
/// agent's identity cache.
const WARMUP_SECS: u64 = 1;
/// Time wrk gets beyond its duration before it counts as hung.
const WRK_SLACK: Duration = Duration::from_secs(30);
/// Connections wrk opens and closes before its run, without a request: its default
/// `wrk.resolve` tries each address of the URL's host once.
const WRK_PROBE_CONNECTS: u64 = 1;
/// Share of the CPUs other work (or the hypervisor's steal) may take during a round before
/// the round is run again.
const OTHER_WORK_LIMIT: f64 = 0.05;
/// Attempts allowed per round kept, disturbed ones included.
const MAX_ATTEMPTS_PER_ROUND: usize = 3;
/// How long a server gets to answer its first request.
const STARTUP: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    Direct,
    Enforcer,
    Haproxy,
}

impl Target {
    const ALL: [Target; 3] = [Target::Direct, Target::Enforcer, Target::Haproxy];

    fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Enforcer => "enforcer",
            Target::Haproxy => "haproxy",
        }
    }
}

/// The kind of a run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Load,
    Single,
}

pub fn run(args: &HttpArgs, root: &Path, busy: f64) -> anyhow::Result<Value> {
    let started = Instant::now();
    let cpus = super::cpus();
    let (server_cpu, client_cpu, latency_cpu) = args.placement(cpus)?;
    let wrk = find_program("wrk")?;
    let nginx_bin = find_program("nginx")?;
    let haproxy_bin = find_program("haproxy")?;
    let enforcer = root.join("target/release/enforcer");
    let dir = TempDir::new("enforcer-bench-http")?;
    let script = dir.path.join("report.lua");
    fs::write(&script, WRK_REPORT).context("write the wrk script")?;
    let rules = rules(args.http_rules as usize);

    let nginx = start_nginx(&nginx_bin, &dir.path, server_cpu)?;
    let access_log = args
        .http_haproxy_log
        .then(|| dir.path.join("haproxy-access.log"));
    let (haproxy, haproxy_config) = start_haproxy(
        &haproxy_bin,
        &dir.path,
        server_cpu,
        nginx.addr,
        &rules,
        access_log.as_deref(),
    )?;
    let denied = http_get(haproxy.addr, "/not-allowed")?;
    ensure!(
        denied == 403,
        "HAProxy answered {denied} to a request no rule allows, not 403: check its config\n\
         {haproxy_config}"
    );

    let audit_path = dir.path.join("audit.jsonl");
    let policy = policy_yaml(&wrk, nginx.addr, &rules, &audit_path, true);
    let cgroup = Cgroup::new();
    // The agent starts from this thread pinned to the server CPU, so tokio sizes its runtime
    // for one CPU (as under `taskset`), and is then moved there thread by thread.
    pin(0, server_cpu).context("pin to --http-server-cpu")?;
    let mut agent = Agent::spawn(&enforcer, &cgroup, &policy, &[]);
    pin_process(agent.pid(), server_cpu).context("pin the agent")?;
    // This thread only waits for wrk from now on.
    pin(0, client_cpu).context("pin to --http-client-cpu")?;

    let bench = Bench {
        wrk: &wrk,
        script: &script,
        cgroup: &cgroup,
        nginx: nginx.addr,
        haproxy: haproxy.addr,
    };
    let mut audit = AuditLog::new(audit_path);
    let mut audited = AuditTotals::default();
    let mut enforcer_connections = 0u64;
    let mut errors: Vec<String> = Vec::new();
    let conns = args.http_connections;

    for target in Target::ALL {
        let run = bench.wrk(target, conns, WARMUP_SECS, client_cpu)?;
        if target == Target::Enforcer {
            enforcer_connections += u64::from(conns) + WRK_PROBE_CONNECTS;
            audited.add(&run, audit.settle()?, conns, Kind::Load);
        }
    }
    let mut load = Series::default();
    let mut single = Series::default();
    let ledger = Ledger::new(vec![nginx.pid, haproxy.pid, agent.pid()], cpus);
    let (mut other, mut steal) = (Vec::new(), Vec::new());
    // A round during which other work took more than OTHER_WORK_LIMIT of the CPUs is run
    // again, up to 2 x `rounds` extra attempts; if they run out, disturbed rounds are kept (and the
    // report says so).
    let mut disturbed = Vec::new();
    let mut attempt = 0;
    while load.rps[0].len() < args.http_rounds as usize {
        if attempt == MAX_ATTEMPTS_PER_ROUND * args.http_rounds as usize {
            break;
        }
        attempt += 1;
        let before = ledger.sample();
        let order: Vec<Target> = (0..3).map(|i| Target::ALL[(i + attempt) % 3]).collect();
        let (mut round_load, mut round_single) = (Series::default(), Series::default());
        for (kind, series, conns, secs, cpu) in [
            (
                Kind::Load,
                &mut round_load,
                conns,
                args.http_secs,
                client_cpu,
            ),
            (
                Kind::Single,
                &mut round_single,
                1,
                args.http_latency_secs,
                latency_cpu,
            ),
        ] {
            for &target in &order {
                let run = bench.wrk(target, conns, secs, cpu)?;
                if run.socket_errors > 0 {
                    errors.push(format!(
                        "attempt {attempt}, {} {}: {} socket errors ({})",
                        target.name(),
                        if kind == Kind::Load { "load" } else { "single" },
                        run.socket_errors,
                        run.errors
                    ));
                }
                if target == Target::Enforcer {
                    enforcer_connections += u64::from(conns) + WRK_PROBE_CONNECTS;
                    audited.add(&run, audit.settle()?, conns, kind);
                }
                series.push(target, &run);
            }
        }
        let (o, st) = ledger.shares(before, ledger.sample());
        let attempts_left = MAX_ATTEMPTS_PER_ROUND * args.http_rounds as usize - attempt;
        let needed = args.http_rounds as usize - load.rps[0].len();
        let keep = o.max(st) <= OTHER_WORK_LIMIT || attempts_left < needed;
        let first = |s: &Series, i: usize| s.rps[i][0];
        eprintln!(
            "http {attempt}: {conns} conns {:.0} / {:.0} / {:.0} req/s, 1 conn p50 {:.0} / \
             {:.0} / {:.0} us (direct / enforcer / haproxy); other work {:.1}%, steal {:.1}% \
             of the CPUs{}",
            first(&round_load, 0),
            first(&round_load, 1),
            first(&round_load, 2),
            round_single.p50[0][0],
            round_single.p50[1][0],
            round_single.p50[2][0],
            o * 100.0,
            st * 100.0,
            if keep {
                String::new()
            } else {
                format!(
                    ": disturbed, run again ({} kept of {})",
                    load.rps[0].len(),
                    args.http_rounds
                )
            }
        );
        if keep {
            load.extend(round_load);
            single.extend(round_single);
            other.push(o);
            steal.push(st);
        } else {
            disturbed.push(
                json!({ "attempt": attempt, "other_work_share": o, "steal_share": st,
                "load": round_load.to_json(), "single": round_single.to_json() }),
            );
        }
    }

    // Proof that the enforcer runs, and only they, went through the agent.
    let (_, counters) = agent.stop();
    let accepted = counters["accepted"].as_u64().unwrap_or(0);
    let mut agent_notes = Vec::new();
    if accepted != enforcer_connections
        || counters["no_record"] != 0
        || counters["upstream_failed"] != 0
    {
        agent_notes.push(format!(
            "the enforcer runs opened {enforcer_connections} connections, the agent counted \
             {counters}"
        ));
    }
    let monitoring_cost = MonitoringCost {
        bench: &bench,
        enforcer: &enforcer,
        dir: &dir.path,
        rules: &rules,
        server_cpu,
        client_cpu,
    }
    .measure(args.http_rounds, conns, args.http_secs)?;
    drop(haproxy);
    drop(nginx);
    let haproxy_logged = access_log.as_deref().map(|p| count_lines(p).unwrap_or(0));

    let metrics = metrics(&load, &single);
    let goals = goals(&metrics, conns);
    let placement = format!(
        "nginx, HAProxy (nbthread 1) and the agent (all threads) on CPU {server_cpu}; wrk \
         (1 thread) on CPU {client_cpu} in load runs, on CPU {latency_cpu} in single-connection \
         runs"
    );
    let versions = [
        ("nginx", version(&nginx_bin, "-v")),
        ("haproxy", version(&haproxy_bin, "-v")),
        ("wrk", version(&wrk, "-v")),
    ];
    let header = [
        format!(
            "enforcer HTTP bench: kernel {}, {cpus} CPUs ({:.0}% busy before start), measured \
             in {:.0} s",
            super::kernel(),
            busy * 100.0,
            started.elapsed().as_secs_f64()
        ),
        format!("placement: {placement}"),
        format!(
            "{} rounds, configurations interleaved (order rotating); medians; load runs: wrk \
             -t1 -c{conns} -d{}s; single: -c1 -d{}s; GET {BENCH_PATH} to nginx `return 200`; \
             {} rules in the policy and in HAProxy's ACLs, the last one matching{}",
            args.http_rounds,
            args.http_secs,
            args.http_latency_secs,
            rules.len(),
            if args.http_haproxy_log {
                "; HAProxy logs every request"
            } else {
                "; HAProxy logs nothing, the agent audits every request"
            }
        ),
        format!(
            "versions: {}",
            versions
                .iter()
                .map(|(name, v)| format!("{name} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ];
    println!("\n{}\n", header.join("\n"));
    print_table(&metrics);
    for goal in &goals {
        println!("    {}", goal.line);
    }
    println!("    {}", audited.line());
    println!("    {}", monitoring_cost.line);
    if let Some(n) = haproxy_logged {
        println!("    HAProxy access log: {n} lines");
    }
    let (other_max, steal_max) = (min_max(&other).1, min_max(&steal).1);
    println!(
        "    other work on the machine during the rounds kept: median {:.1}%, max {:.1}% of all \
         CPU time; steal median {:.1}%, max {:.1}%; {} disturbed rounds (> {:.0}%) run again{}",
        median(&other) * 100.0,
        other_max * 100.0,
        median(&steal) * 100.0,
        steal_max * 100.0,
        disturbed.len(),
        OTHER_WORK_LIMIT * 100.0,
        if other_max.max(steal_max) > OTHER_WORK_LIMIT {
            "; attempts ran out: DISTURBED rounds are in these medians"
        } else {
            ""
        }
    );
    for note in errors.iter().chain(&agent_notes) {
        println!("    {note}");
    }

    let mut runs = serde_json::Map::new();
    for (kind, series) in [("load", &load), ("single", &single)] {
        runs.insert(kind.into(), series.to_json());
    }
    Ok(json!({
        "placement": placement,
        "args": {
            "rounds": args.http_rounds,
            "secs": args.http_secs,
            "connections": conns,
            "latency_secs": args.http_latency_secs,
            "rules": rules.len(),
            "server_cpu": server_cpu,
            "client_cpu": client_cpu,
            "latency_cpu": latency_cpu,
            "haproxy_log": args.http_haproxy_log,
        },
        "versions": versions.iter().map(|(n, v)| (n.to_string(), Value::from(v.clone())))
            .collect::<serde_json::Map<_, _>>(),
        "measured_secs": started.elapsed().as_secs_f64(),
        "metrics": metrics.iter().map(Metric::to_json).collect::<Vec<_>>(),
        "goals": goals.iter().map(|g| g.json.clone()).collect::<Vec<_>>(),
        "runs": runs,
        "audit": audited.to_json(),
        "monitoring_cost": monitoring_cost.json,
        "haproxy_access_log_lines": haproxy_logged,
        "agent_counters": counters,
        "other_work_share_per_round": other,
        "steal_share_per_round": steal,
        "disturbed_rounds_discarded": disturbed,
        "errors": errors,
        "notes": agent_notes,
        "policy": policy,
        "haproxy_config": haproxy_config,
    }))
}

// === what metrics and anomaly detection cost ===

/// `enforcer run` arguments that turn metrics off (no endpoint, no recording).
const METRICS_OFF: &[&str] = &["--metrics-addr", "off"];
/// The issue's bound on what metrics and anomaly detection together may cost in throughput.
const MONITORING_COST_LIMIT: f64 = 0.05;

/// The agent with metrics (endpoint, recording, and a scrape every second, more often than
/// Prometheus is usually set to) and the default anomaly detectors, against one with metrics
/// off and every detector disabled, on otherwise the same policy: two agents on the server
/// CPU, each on its own cgroup, loaded in turn with the same wrk run.
struct MonitoringCost<'a> {
    bench: &'a Bench<'a>,
    enforcer: &'a Path,
    dir: &'a Path,
    rules: &'a [Rule],
    server_cpu: usize,
    client_cpu: usize,
}

struct MonitoringCostResult {
    line: String,
    json: Value,
}

impl MonitoringCost<'_> {
    fn measure(&self, rounds: u32, conns: u32, secs: u64) -> anyhow::Result<MonitoringCostResult> {
        let start = |name: &str, on: bool| -> anyhow::Result<(Cgroup, Agent)> {
            let cgroup = Cgroup::new();
            let audit = self.dir.join(format!("audit-{name}.jsonl"));
            let policy = policy_yaml(self.bench.wrk, self.bench.nginx, self.rules, &audit, on);
            let extra = if on { &[][..] } else { METRICS_OFF };
            pin(0, self.server_cpu).context("pin to --http-server-cpu")?;
            let agent = Agent::spawn(self.enforcer, &cgroup, &policy, extra);
            pin_process(agent.pid(), self.server_cpu).context("pin the agent")?;
            pin(0, self.client_cpu).context("pin to --http-client-cpu")?;
            Ok((cgroup, agent))
        };
        let (on_cgroup, on) = start("monitoring-on", true)?;
        let (off_cgroup, _off) = start("monitoring-off", false)?;
        let endpoint = on
            .metrics
            .context("the agent with metrics has no endpoint")?;
        let run = |cgroup: &Cgroup, secs: u64| {
            Bench {
                cgroup,
                ..*self.bench
            }
            .wrk(Target::Enforcer, conns, secs, self.client_cpu)
        };
        run(&on_cgroup, WARMUP_SECS)?;
        run(&off_cgroup, WARMUP_SECS)?;
        let (mut with, mut without) = (Vec::new(), Vec::new());
        let mut scrapes = 0u64;
        for round in 0..rounds {
            // Alternate which goes first, so drift over time does not favour one.
            for monitoring_on in [round % 2 == 0, round % 2 == 1] {
                if monitoring_on {
                    let done = std::sync::atomic::AtomicBool::new(false);
                    let (result, n) = thread::scope(|scope| {
                        let scraper = scope.spawn(|| {
                            let mut n = 0u64;
                            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                                if http_get(endpoint, "/metrics").is_ok_and(|s| s == 200) {
                                    n += 1;
                                }
                                thread::sleep(Duration::from_secs(1));
                            }
                            n
                        });
                        let result = run(&on_cgroup, secs);
                        done.store(true, std::sync::atomic::Ordering::Relaxed);
                        (result, scraper.join().unwrap_or(0))
                    });
                    scrapes += n;
                    with.push(result?.rps);
                } else {
                    without.push(run(&off_cgroup, secs)?.rps);
                }
            }
        }
        let (on_rps, off_rps) = (median(&with), median(&without));
        let cost = 1.0 - on_rps / off_rps;
        let met = cost < MONITORING_COST_LIMIT;
        let line = format!(
            "metrics + anomaly detection cost ({conns} conns, {rounds} interleaved rounds, \
             {scrapes} scrapes at 1 s): on {on_rps:.0} vs off {off_rps:.0} req/s, ratio {:.3}, \
             cost {:.1}%: goal under {:.0}%: {}",
            on_rps / off_rps,
            cost * 100.0,
            MONITORING_COST_LIMIT * 100.0,
            if met { "met" } else { "NOT met" }
        );
        eprintln!("{line}");
        Ok(MonitoringCostResult {
            line,
            json: json!({
                "on": "metrics (scraped every 1 s) and the default anomaly detectors",
                "off": "--metrics-addr off and every anomaly detector disabled",
                "on_rps": with, "off_rps": without,
                "median": { "on": on_rps, "off": off_rps },
                "ratio": on_rps / off_rps, "cost": cost, "scrapes": scrapes,
                "limit": MONITORING_COST_LIMIT, "met": met,
            }),
        })
    }
}

// === the rule set, for the agent and for HAProxy ===

/// One allow rule: methods, and a path alone or with everything below it.
struct Rule {
    id: String,
    methods: &'static [&'static str],
    path: String,
    subtree: bool,
}

/// `n` rules: `n - 1` that the benchmarked request does not match, then the one it matches,
/// last, so both the agent and HAProxy go through all of them (the agent's policy is decided
/// in file order too).
fn rules(n: usize) -> Vec<Rule> {
    let mut rules: Vec<Rule> = (0..n.saturating_sub(1))
        .map(|k| Rule {
            id: format!("rule-{k}"),
            methods: if k % 2 == 0 {
                &["GET"]
            } else {
                &["GET", "POST"]
            },
            path: format!("/api/v{}/res{k}", k % 4),
            subtree: true,
        })
        .collect();
    rules.push(Rule {
        id: BENCH_RULE.into(),
        methods: &["GET"],
        path: BENCH_PATH.into(),
        subtree: false,
    });
    rules
}

/// The bench policy: `rules` for wrk to nginx, audited to `audit`, with the default anomaly
/// detectors or, without `anomalies`, every one of them disabled.
fn policy_yaml(
    wrk: &Path,
    upstream: SocketAddr,
    rules: &[Rule],
    audit: &Path,
    anomalies: bool,
) -> String {
    let detectors = if anomalies {
        ""
    } else {
        "  anomalies:\n    \
             requestBurst: { enabled: false }\n    \
             authFailureBurst: { enabled: false }\n    \
             denySpike: { enabled: false }\n    \
             newEndpoint: { enabled: false }\n    \
             tokenReuse: { enabled: false }\n    \
             binaryChanged: { enabled: false }\n"
    };
    let mut y = format!(
        "version: 1\n\
         settings:\n  \
           # Records go to a file (not the agent's stdout); no rotation during the bench.\n  \
           audit: {{ file: \"{}\", maxBytes: 1099511627776 }}\n\
         {detectors}\
         identities:\n  \
           wrk: {{ exe: \"{}\" }}\n\
         services:\n  \
           bench-nginx:\n    \
             endpoints: [\"{upstream}\"]\n\
         rules:\n",
        audit.display(),
        wrk.display()
    );
    for r in rules {
        let paths = if r.subtree {
            format!("[\"{0}\", \"{0}/**\"]", r.path)
        } else {
            format!("[\"{}\"]", r.path)
        };
        let _ = write!(
            y,
            "  - id: {}\n    from: [wrk]\n    to: bench-nginx\n    methods: [{}]\n    paths: \
             {paths}\n",
            r.id,
            r.methods.join(", ")
        );
    }
    y
}

fn haproxy_config(port: u16, upstream: SocketAddr, rules: &[Rule], log: bool) -> String {
    let (global_log, defaults_log) = if log {
        (
            "  log stdout format raw local0\n",
            "  log global\n  option httplog\n",
        )
    } else {
        ("", "")
    };
    let mut c = format!(
        "global\n  \
           # One thread, as the agent has one worker on one CPU.\n  \
           nbthread 1\n  \
           maxconn 4096\n  \
           # normalize-uri is experimental in HAProxy 2.6.\n  \
           expose-experimental-directives\n\
         {global_log}\
         defaults\n  \
           mode http\n\
         {defaults_log}  \
           option http-keep-alive\n  \
           timeout connect 5s\n  \
           timeout client 60s\n  \
           timeout server 60s\n\
         frontend bench\n  \
           bind 127.0.0.1:{port}\n  \
           # As the agent: match the normalised path.\n  \
           http-request normalize-uri path-merge-slashes\n  \
           http-request normalize-uri path-strip-dot\n  \
           http-request normalize-uri path-strip-dotdot\n  \
           http-request normalize-uri percent-decode-unreserved\n  \
           http-request normalize-uri percent-to-uppercase\n"
    );
    for r in rules {
        let methods = r.methods.join(" ");
        let _ = write!(
            c,
            "  # {}\n  http-request allow if {{ method {methods} }} {{ path {} }}",
            r.id, r.path
        );
        if r.subtree {
            let _ = write!(c, " || {{ method {methods} }} {{ path_beg {}/ }}", r.path);
        }
        c.push('\n');
    }
    let _ = write!(
        c,
        "  http-request deny deny_status 403\n  \
           default_backend upstream\n\
         backend upstream\n  \
           server nginx {upstream}\n"
    );
    c
}

// === servers ===

/// A server process and the address it answers on.
pub(super) struct Server {
    pub(super) addr: SocketAddr,
    pub(super) pid: u32,
    _proc: Proc,
}

pub(super) fn start_nginx(bin: &Path, dir: &Path, cpu: usize) -> anyhow::Result<Server> {
    start_server("nginx", dir, None, |port| {
        let conf = dir.join("nginx.conf");
        let d = dir.display();
        fs::write(
            &conf,
            format!(
                "# One process (no master): one pid to stop; its event loop is a worker's.\n\
                 master_process off;\n\
                 worker_processes 1;\n\
                 daemon off;\n\
                 pid {d}/nginx.pid;\n\
                 error_log {d}/nginx-error.log warn;\n\
                 events {{ worker_connections 4096; }}\n\
                 http {{\n  \
                   access_log off;\n  \
                   # Default 1000: wrk would reconnect every 1000 requests, and each new\n  \
                   # connection through the agent is a new identity lookup.\n  \
                   keepalive_requests 1000000000;\n  \
                   keepalive_timeout 300s;\n  \
                   client_body_temp_path {d}/nginx-body;\n  \
                   proxy_temp_path {d}/nginx-proxy;\n  \
                   fastcgi_temp_path {d}/nginx-fastcgi;\n  \
                   uwsgi_temp_path {d}/nginx-uwsgi;\n  \
                   scgi_temp_path {d}/nginx-scgi;\n  \
                   server {{\n    \
                     listen 127.0.0.1:{port};\n    \
                     location / {{ return 200 \"ok\\n\"; }}\n  \
                   }}\n\
                 }}\n"
            ),
        )
        .context("write nginx.conf")?;
        let mut cmd = Command::new(bin);
        // -e: the error log from the start, before the config names it (else
        // /var/log/nginx/error.log).
        cmd.arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.join("nginx-error.log"));
        pin_command(&mut cmd, cpu)?;
        Ok(cmd)
    })
}

fn start_haproxy(
    bin: &Path,
    dir: &Path,
    cpu: usize,
    upstream: SocketAddr,
    rules: &[Rule],
    access_log: Option<&Path>,
) -> anyhow::Result<(Server, String)> {
    let conf = dir.join("haproxy.cfg");
    // With a log, HAProxy writes it to its standard output (`log stdout`).
    let server = start_server("haproxy", dir, access_log, |port| {
        let text = haproxy_config(port, upstream, rules, access_log.is_some());
        fs::write(&conf, &text).context("write haproxy.cfg")?;
        let mut cmd = Command::new(bin);
        // -db: foreground, no daemon.
        cmd.arg("-db").arg("-f").arg(&conf);
        pin_command(&mut cmd, cpu)?;
        Ok(cmd)
    })?;
    let text = fs::read_to_string(&conf).context("read haproxy.cfg")?;
    Ok((server, text))
}

/// Start a server on a free loopback port and wait until it answers `GET /bench` with 200.
/// Its output goes to `DIR/NAME.out`, its standard output to `stdout` if given.
fn start_server(
    name: &str,
    dir: &Path,
    stdout: Option<&Path>,
    command: impl Fn(u16) -> anyhow::Result<Command>,
) -> anyhow::Result<Server> {
    let out = dir.join(format!("{name}.out"));
    let mut failures = Vec::new();
    for _attempt in 0..3 {
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut cmd = command(port)?;
        let log = fs::File::create(&out).with_context(|| format!("create {}", out.display()))?;
        let stdout = match stdout {
            Some(path) => {
                fs::File::create(path).with_context(|| format!("create {}", path.display()))?
            }
            None => log.try_clone()?,
        };
        cmd.stdin(Stdio::null()).stdout(stdout).stderr(log);
        let mut proc = Proc::spawn(name, &mut cmd)?;
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Some(status) = proc.exited() {
                failures.push(format!(
                    "port {port}: exited ({status}): {}",
                    fs::read_to_string(&out).unwrap_or_default().trim()
                ));
                break;
            }
            if matches!(http_get(addr, BENCH_PATH), Ok(200)) {
                let pid = proc.pid();
                return Ok(Server {
                    addr,
                    pid,
                    _proc: proc,
                });
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} did not answer GET {BENCH_PATH} with 200 on {addr} within \
                     {STARTUP:?}; its output: {}",
                    fs::read_to_string(&out).unwrap_or_default().trim()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
    bail!(
        "{name} would not start (a port taken between our probe and its bind?):\n{}",
        failures.join("\n")
    )
}

/// A port free a moment ago: bind port 0, read what the OS chose, close. (nginx and HAProxy
/// take no port 0.) Racy, so the caller retries.
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).context("bind a free port")?;
    Ok(listener.local_addr()?.port())
}

/// The status of `GET path` on a fresh connection, with bounded waits.
pub(super) fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<u16> {
    let timeout = Duration::from_secs(2);
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    s.take(64 * 1024).read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("not an HTTP/1.1 response from {addr}: {text:.200}"))
}

pub(super) fn find_program(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("{name} not found: `cargo xtask setup` installs it"))?
        .canonicalize()
        .with_context(|| format!("resolve {name}"))
}

pub(super) fn version(bin: &Path, flag: &str) -> String {
    let out = Command::new(bin).arg(flag).output();
    let text = out
        .map(|o| {
            let mut t = String::from_utf8_lossy(&o.stdout).into_owned();
            t.push_str(&String::from_utf8_lossy(&o.stderr));
            t
        })
        .unwrap_or_default();
    let line = text.lines().next().unwrap_or("?");
    // "nginx version: nginx/1.22.1", "HAProxy version 2.6.12-1+deb12u4 2026/10/17 - ...",
    // "wrk debian/4.1.0-3+b2 [epoll] Copyright ...".
    line.split_whitespace()
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()) || w.contains('/'))
        .map_or(line, |w| w.rsplit('/').next().unwrap_or(w))
        .to_string()
}

/// A directory removed with everything in it when dropped.
pub(super) struct TempDir {
    pub(super) path: PathBuf,
}

impl TempDir {
    pub(super) fn new(prefix: &str) -> anyhow::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        fs::create_dir(&path).with_context(|| format!("mkdir {}", path.display()))?;
        Ok(Self { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            eprintln!("remove {}: {e}", self.path.display());
        }
    }
}

// === wrk ===

/// Prints wrk's totals and exact percentiles (microseconds) as one JSON line at the end.
pub(super) const WRK_REPORT: &str = r#"done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max))
end
"#;

struct Bench<'a> {
    wrk: &'a Path,
    script: &'a Path,
    cgroup: &'a Cgroup,
    nginx: SocketAddr,
    haproxy: SocketAddr,
}

/// What one wrk run reported.
pub(super) struct WrkRun {
    pub(super) requests: u64,
    pub(super) rps: f64,
    pub(super) p50: f64,
    pub(super) p99: f64,
    pub(super) p999: f64,
    pub(super) socket_errors: u64,
    /// Answers that are not 2xx or 3xx.
    pub(super) status_errors: u64,
    pub(super) errors: Value,
}

impl Bench<'_> {
    fn wrk(&self, target: Target, conns: u32, secs: u64, cpu: usize) -> anyhow::Result<WrkRun> {
        let to = match target {
            // The enforcer's client calls nginx itself: its connects are redirected.
            Target::Direct | Target::Enforcer => self.nginx,
            Target::Haproxy => self.haproxy,
        };
        let mut cmd = if target == Target::Enforcer {
            self.cgroup.command(self.wrk)
        } else {
            Command::new(self.wrk)
        };
        let run = wrk(
            target.name(),
            &mut cmd,
            self.script,
            &format!("http://{to}{BENCH_PATH}"),
            conns,
            secs,
            cpu,
        )?;
        ensure!(
            run.status_errors == 0,
            "wrk ({}) got {} answers that are not 2xx or 3xx: the policy or HAProxy's ACLs \
             refuse GET {BENCH_PATH}",
            target.name(),
            run.status_errors
        );
        Ok(run)
    }
}

/// Run wrk (`cmd`, its program) with one thread, `conns` keep-alive connections for `secs`
/// seconds against `url`, pinned to `cpu`, with `script` (which must print [`WRK_REPORT`]'s
/// line), and read its report. `name` names the run in errors.
pub(super) fn wrk(
    name: &str,
    cmd: &mut Command,
    script: &Path,
    url: &str,
    conns: u32,
    secs: u64,
    cpu: usize,
) -> anyhow::Result<WrkRun> {
    cmd.args([
        "-t1",
        &format!("-c{conns}"),
        &format!("-d{secs}s"),
        "--latency",
    ])
    .arg("-s")
    .arg(script)
    .arg(url);
    pin_command(cmd, cpu)?;
    let limit = Duration::from_secs(secs) + WRK_SLACK;
    let out = super::run_bounded("wrk", cmd, limit)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "wrk ({name}) failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .and_then(|l| serde_json::from_str(l).ok())
        .with_context(|| format!("no JSON report in wrk's output: {stdout}"))?;
    let n = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let e = &report["errors"];
    let requests = report["requests"].as_u64().unwrap_or(0);
    ensure!(requests > 0, "wrk ({name}) completed no request: {stdout}");
    let socket_errors = ["connect", "read", "write", "timeout"]
        .iter()
        .map(|k| e[k].as_u64().unwrap_or(0))
        .sum();
    let latency = &report["latency_us"];
    Ok(WrkRun {
        requests,
        rps: requests as f64 / (n(&report["duration_us"]) / 1e6),
        p50: n(&latency["p50"]),
        p99: n(&latency["p99"]),
        p999: n(&latency["p999"]),
        socket_errors,
        status_errors: e["status"].as_u64().unwrap_or(0),
        errors: e.clone(),
    })
}

/// Per-round values of each configuration (indexed by `Target as usize`).
#[derive(Default)]
struct Series {
    rps: [Vec<f64>; 3],
    p50: [Vec<f64>; 3],
    p99: [Vec<f64>; 3],
    p999: [Vec<f64>; 3],
}

impl Series {
    fn push(&mut self, target: Target, run: &WrkRun) {
        let i = target as usize;
        self.rps[i].push(run.rps);
        self.p50[i].push(run.p50);
        self.p99[i].push(run.p99);
        self.p999[i].push(run.p999);
    }

    fn extend(&mut self, other: Series) {
        for (mine, theirs) in [
            (&mut self.rps, other.rps),
            (&mut self.p50, other.p50),
            (&mut self.p99, other.p99),
            (&mut self.p999, other.p999),
        ] {
            for (m, t) in mine.iter_mut().zip(theirs) {
                m.extend(t);
            }
        }
    }

    fn to_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        for t in Target::ALL {
            let i = t as usize;
            m.insert(
                t.name().into(),
                json!({
                    "requests_per_second": self.rps[i],
                    "p50_us": self.p50[i],
                    "p99_us": self.p99[i],
                    "p999_us": self.p999[i],
                }),
            );
        }
        Value::Object(m)
    }
}

// === the audit trail ===

/// Reads the agent's audit file as it grows.
struct AuditLog {
    path: PathBuf,
    offset: u64,
}

/// The records written for one run.
struct AuditRun {
    records: u64,
    /// Records saying `allow` by the benchmarked rule.
    allowed: u64,
    /// `added_latency_us` of each record: the agent's own time from a parsed head to the
    /// request sent upstream.
    added_us: Vec<f64>,
}

impl AuditLog {
    fn new(path: PathBuf) -> Self {
        Self { path, offset: 0 }
    }

    /// Wait until the file stops growing (the writer thread drains its queue within
    /// milliseconds once requests stop), then read the records added since the last call.
    fn settle(&mut self) -> anyhow::Result<AuditRun> {
        let size = || fs::metadata(&self.path).map_or(0, |m| m.len());
        let deadline = Instant::now() + Duration::from_secs(10);
        let (mut last, mut stable_since) = (size(), Instant::now());
        while stable_since.elapsed() < Duration::from_millis(300) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
            let now = size();
            if now != last {
                (last, stable_since) = (now, Instant::now());
            }
        }
        let mut file = match fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(AuditRun {
                    records: 0,
                    allowed: 0,
                    added_us: Vec::new(),
                });
            }
            Err(e) => return Err(e).with_context(|| format!("open {}", self.path.display())),
        };
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(self.offset))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        // Whole lines only; a partial last line is read next time.
        let end = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        self.offset += end as u64;
        let mut run = AuditRun {
            records: 0,
            allowed: 0,
            added_us: Vec::new(),
        };
        let allow = format!("\"decision\":\"allow\",\"rule\":\"{BENCH_RULE}\"");
        for line in String::from_utf8_lossy(&bytes[..end]).lines() {
            run.records += 1;
            if line.contains(&allow) {
                run.allowed += 1;
            }
            if let Some(v) = line
                .split("\"added_latency_us\":")
                .nth(1)
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|digits| digits.parse::<f64>().ok())
            {
                run.added_us.push(v);
            }
        }
        Ok(run)
    }
}

#[derive(Default)]
struct AuditTotals {
    runs: u64,
    /// Requests wrk completed through the enforcer.
    completed: u64,
    records: u64,
    allowed: u64,
    /// Requests that may have been in flight when wrk stopped: one per connection per run.
    in_flight_bound: u64,
    /// Runs with fewer records than completed requests, and how many fewer in all.
    short_runs: u64,
    missing: u64,
    /// More records than completed requests plus connections: something else was audited.
    excess: u64,
    added_load: Vec<f64>,
    added_single: Vec<f64>,
}

impl AuditTotals {
    fn add(&mut self, run: &WrkRun, audit: AuditRun, conns: u32, kind: Kind) {
        self.runs += 1;
        self.completed += run.requests;
        self.records += audit.records;
        self.allowed += audit.allowed;
        self.in_flight_bound += u64::from(conns);
        if audit.records < run.requests {
            self.short_runs += 1;
            self.missing += run.requests - audit.records;
        } else if audit.records > run.requests + u64::from(conns) {
            self.excess += audit.records - run.requests - u64::from(conns);
        }
        match kind {
            Kind::Load => self.added_load.extend(audit.added_us),
            Kind::Single => self.added_single.extend(audit.added_us),
        }
    }

    fn line(&self) -> String {
        let verdict = if self.missing == 0 && self.excess == 0 {
            "every completed request audited".to_string()
        } else {
            format!(
                "{} completed requests WITHOUT a record ({} runs short: dropped by the audit \
                 queue or lost), {} records beyond the in-flight bound",
                self.missing, self.short_runs, self.excess
            )
        };
        let pct = |v: &[f64], p: f64| percentile(v, p);
        format!(
            "audit: {} records for {} completed requests in {} enforcer runs (up to {} more may \
             be in flight as wrk stops), {} allow by {BENCH_RULE}: {verdict}; the agent's own \
             added_latency_us p50/p99: {:.0}/{:.0} under load, {:.0}/{:.0} single",
            self.records,
            self.completed,
            self.runs,
            self.in_flight_bound,
            self.allowed,
            pct(&self.added_load, 0.5),
            pct(&self.added_load, 0.99),
            pct(&self.added_single, 0.5),
            pct(&self.added_single, 0.99),
        )
    }

    fn to_json(&self) -> Value {
        json!({
            "runs": self.runs,
            "completed_requests": self.completed,
            "records": self.records,
            "allowed_by_bench_rule": self.allowed,
            "in_flight_bound": self.in_flight_bound,
            "missing": self.missing,
            "short_runs": self.short_runs,
            "excess": self.excess,
            "agent_added_latency_us": {
                "load": { "p50": percentile(&self.added_load, 0.5),
                          "p99": percentile(&self.added_load, 0.99) },
                "single": { "p50": percentile(&self.added_single, 0.5),
                            "p99": percentile(&self.added_single, 0.99) },
            },
        })
    }
}

pub(super) fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p) as usize]
}

fn count_lines(path: &Path) -> anyhow::Result<u64> {
    let bytes = fs::read(path)?;
    Ok(bytes.iter().filter(|&&b| b == b'\n').count() as u64)
}

// === other work on the machine ===

/// CPU time used by anything but the benchmark while rounds run: all CPUs' busy time (from
/// /proc/stat) minus that of nginx, HAProxy, the agent, wrk (reaped children), this process
/// and the kernel's softirq threads (which carry loopback traffic). On a shared VM another
/// build or test run skews the rounds it overlaps; this says which.
pub(super) struct Ledger {
    pids: Vec<u32>,
    ticks_per_sec: f64,
    cpus: f64,
}

#[derive(Clone, Copy)]
pub(super) struct LedgerSample {
    at: Instant,
    /// user + nice + system + irq + softirq, all CPUs, in clock ticks.
    busy: u64,
    steal: u64,
    ours: f64,
}

impl Ledger {
    pub(super) fn new(mut pids: Vec<u32>, cpus: usize) -> Self {
        for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.starts_with("ksoftirqd/"))
            {
                pids.push(pid);
            }
        }
        // SAFETY: plain libc call.
        let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Self {
            pids,
            ticks_per_sec: if tck > 0 { tck as f64 } else { 100.0 },
            cpus: cpus as f64,
        }
    }

    pub(super) fn sample(&self) -> LedgerSample {
        let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
        let t: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        let at = |i: usize| t.get(i).copied().unwrap_or(0);
        let mut ours = 0.0;
        for pid in &self.pids {
            // utime and stime: fields 14 and 15, the 12th and 13th after the `)` ending comm.
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let f: Vec<&str> = rest.split_whitespace().collect();
            for i in [11, 12] {
                ours += f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            }
        }
        for who in [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN] {
            // SAFETY: getrusage fills the struct it is given.
            let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
            if unsafe { libc::getrusage(who, &mut ru) } == 0 {
                let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
                ours += (secs(ru.ru_utime) + secs(ru.ru_stime)) * self.ticks_per_sec;
            }
        }
        LedgerSample {
            at: Instant::now(),
            busy: at(0) + at(1) + at(2) + at(5) + at(6),
            steal: at(7),
            ours,
        }
    }

    /// (other work, steal) between two samples, as shares of all CPUs' time.
    pub(super) fn shares(&self, from: LedgerSample, to: LedgerSample) -> (f64, f64) {
        let capacity = (to.at - from.at).as_secs_f64() * self.ticks_per_sec * self.cpus;
        let other = (to.busy - from.busy) as f64 - (to.ours - from.ours);
        (
            (other / capacity).max(0.0),
            (to.steal - from.steal) as f64 / capacity,
        )
    }
}

// === results ===

/// One metric's per-round values for the three configurations.
struct Metric {
    name: String,
    kind: Kind,
    unit: &'static str,
    /// Latency: a row of added latency (configuration − direct) follows.
    latency: bool,
    /// Higher is better (rates).
    rate: bool,
    rounds: [Vec<f64>; 3],
}

impl Metric {
    fn medians(&self) -> [f64; 3] {
        [0, 1, 2].map(|i| median(&self.rounds[i]))
    }

    /// enforcer / haproxy of each round.
    fn enforcer_haproxy_rounds(&self) -> Vec<f64> {
        self.rounds[1]
            .iter()
            .zip(&self.rounds[2])
            .map(|(e, h)| e / h)
            .collect()
    }

    /// Median added latency (configuration − direct) of the enforcer and HAProxy.
    fn added(&self) -> (f64, f64) {
        let [d, e, h] = self.medians();
        (e - d, h - d)
    }

    fn to_json(&self) -> Value {
        let [d, e, h] = self.medians();
        let (added_e, added_h) = self.added();
        json!({
            "metric": self.name,
            "unit": self.unit,
            "median": { "direct": d, "enforcer": e, "haproxy": h },
            "rounds": { "direct": self.rounds[0], "enforcer": self.rounds[1],
                        "haproxy": self.rounds[2] },
            "ratio": { "enforcer/direct": e / d, "haproxy/direct": h / d,
                       "enforcer/haproxy": e / h },
            "enforcer/haproxy_rounds": self.enforcer_haproxy_rounds(),
            "added": self.latency.then(|| json!({
                "enforcer": added_e, "haproxy": added_h, "enforcer/haproxy": added_e / added_h,
            })),
        })
    }
}

fn metrics(load: &Series, single: &Series) -> Vec<Metric> {
    let mut out = Vec::new();
    for (kind, what, s) in [(Kind::Load, "load", load), (Kind::Single, "1 conn", single)] {
        let rate_name = match kind {
            Kind::Load => "throughput, load",
            Kind::Single => "rate, 1 conn",
        };
        out.push(Metric {
            name: rate_name.to_string(),
            kind,
            unit: "req/s",
            latency: false,
            rate: true,
            rounds: s.rps.clone(),
        });
        for (p, v) in [("p50", &s.p50), ("p99", &s.p99), ("p99.9", &s.p999)] {
            out.push(Metric {
                name: format!("latency {p}, {what}"),
                kind,
                unit: "us",
                latency: p != "p99.9",
                rate: false,
                rounds: v.clone(),
            });
        }
    }
    out
}

struct Goal {
    line: String,
    json: Value,
}

/// The issue's goal: more throughput than HAProxy, and less added latency. Added latency is
/// judged on the single-connection runs, where it is the proxy's own; under load, latency is
/// mostly queueing (p50 is about connections / throughput), so it follows the throughput.
fn goals(metrics: &[Metric], conns: u32) -> Vec<Goal> {
    let mut goals = Vec::new();
    let verdict = |met: bool| if met { "met" } else { "NOT met" };
    for m in metrics {
        let [_, e, h] = m.medians();
        if m.rate && m.kind == Kind::Load {
            let met = e > h;
            goals.push(Goal {
                line: format!(
                    "goal: throughput above HAProxy's ({conns} conns): enforcer {e:.0} vs \
                     haproxy {h:.0} req/s, ratio {:.3}: {}",
                    e / h,
                    verdict(met)
                ),
                json: json!({ "goal": "throughput above haproxy", "metric": m.name,
                              "enforcer": e, "haproxy": h, "met": met }),
            });
        } else if m.latency && m.kind == Kind::Single {
            let (ae, ah) = m.added();
            let met = ae < ah;
            goals.push(Goal {
                line: format!(
                    "goal: added {} below HAProxy's: enforcer {ae:+.0} vs haproxy {ah:+.0} us: {}",
                    m.name,
                    verdict(met)
                ),
                json: json!({ "goal": "added latency below haproxy", "metric": m.name,
                              "enforcer": ae, "haproxy": ah, "met": met }),
            });
        }
    }
    goals
}

fn print_table(metrics: &[Metric]) {
    let mut table: Vec<[String; 8]> = vec![
        [
            "metric",
            "direct",
            "enforcer",
            "haproxy",
            "enf/direct",
            "hap/direct",
            "enf/hap",
            "enf/hap rounds",
        ]
        .map(String::from),
    ];
    for m in metrics {
        let [d, e, h] = m.medians();
        let rounds = m.enforcer_haproxy_rounds();
        let (lo, hi) = min_max(&rounds);
        table.push([
            format!("{} ({})", m.name, m.unit),
            super::fmt_value(d),
            super::fmt_value(e),
            super::fmt_value(h),
            format!("{:.3}", e / d),
            format!("{:.3}", h / d),
            format!("{:.3}", e / h),
            format!("{lo:.2}..{hi:.2}"),
        ]);
        if m.latency {
            let (ae, ah) = m.added();
            let paired = |i: usize| -> Vec<f64> {
                m.rounds[i]
                    .iter()
                    .zip(&m.rounds[0])
                    .map(|(x, d)| x - d)
                    .collect()
            };
            let ratios: Vec<f64> = paired(1)
                .iter()
                .zip(paired(2))
                .map(|(e, h)| e / h)
                .collect();
            let (lo, hi) = min_max(&ratios);
            table.push([
                format!("  added {} ({})", m.name, m.unit),
                "-".into(),
                format!("{ae:+.1}"),
                format!("{ah:+.1}"),
                String::new(),
                String::new(),
                format!("{:.3}", ae / ah),
                format!("{lo:.2}..{hi:.2}"),
            ]);
        }
    }
    let widths: Vec<usize> = (0..8)
        .map(|i| {
            table
                .iter()
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in &table {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, &w))| {
                if i == 0 {
                    format!("{cell:<w$}")
                } else {
                    format!("{cell:>w$}")
                }
            })
            .collect();
        println!("{}", cells.join("  "));
    }
}
