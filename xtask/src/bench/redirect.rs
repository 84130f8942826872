//! `cargo xtask bench` (part `redirect`): what the redirect costs, measured against baselines in
//! the same run.
//!
//! 1. Connect rate to an unprotected destination from a process in a test cgroup, with the
//!    programs attached (an agent running) vs detached (no agent): the toll every connect that
//!    is not an API call pays.
//! 2. One keep-alive connection relayed by the agent vs a direct one to the same echo
//!    upstream: round-trip latency (`probe pingpong`) and throughput (`probe stream`).
//!
//! Baseline and measured rounds alternate, so drift on a shared VM hits both alike, and
//! medians are reported. Prints a table and writes it as JSON to `target/bench/redirect.json`.
//!
//! Placement: by default the probe, the upstreams and the agent all run on CPU 0. On this
//! project's VMs (nested virtualisation) a wakeup across vCPUs costs tens of microseconds, and
//! a redirected round trip with the agent on another CPU makes four of them where a direct one
//! makes none: the comparison would measure the VM, not the relay. On one CPU both sides pay
//! only for their own work and context switches, and the rounds are steadier too.

use std::{
    io,
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::{FromRawFd as _, OwnedFd, RawFd},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use enforcer_tests::{Agent, Cgroup, Server};
use serde_json::{Value, json};

use super::{fmt_value, median, min_max, pin};

#[derive(clap::Args)]
pub struct RedirectArgs {
    /// Redirect part: rounds of each kind (baseline and measured, interleaved); medians are
    /// reported.
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(3..))]
    rounds: u32,
    /// Seconds each connect-rate round lasts.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=60))]
    connect_secs: u64,
    /// Request/response round trips per pingpong round.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(100..))]
    round_trips: u64,
    /// Bytes per pingpong message, each way.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=65536))]
    message_bytes: u64,
    /// MiB sent (and echoed back) per stream round.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    stream_mib: u64,
    /// Redirect part: CPU of the probe client.
    #[arg(long, default_value_t = 0)]
    client_cpu: usize,
    /// Redirect part: CPU of the upstreams: the echo server and the connect-rate sink.
    #[arg(long, default_value_t = 0)]
    upstream_cpu: usize,
    /// Redirect part: CPU of the agent.
    #[arg(long, default_value_t = 0)]
    agent_cpu: usize,
}

/// The project's goal for the connect rate of unprotected destinations, attached/detached.
const CONNECT_RATE_GOAL: f64 = 0.98;

/// Time a probe gets beyond its nominal work before it counts as hung.
const PROBE_SLACK: Duration = Duration::from_secs(60);

pub fn run(args: &RedirectArgs, root: &Path, busy: f64) -> anyhow::Result<()> {
    let cpus = super::cpus();
    let started = Instant::now();

    // Threads and processes inherit the affinity of the thread that creates them: the
    // upstreams' threads are started while this thread is on the upstream CPU, the probes and
    // the agent later, from the client CPU (the agent moves once it is ready).
    pin(0, args.upstream_cpu).context("pin to --upstream-cpu")?;
    let sink = Sink::start()?;
    let echo = Server::echo("127.0.0.1:0");
    pin(0, args.client_cpu).context("pin to --client-cpu")?;
    // Protecting the echo upstream (same IP as the sink, other port) sends the sink's
    // connects down connect4's longest passing path: the prefix matches, the port does not.
    // `protocol: tcp`: the echo exchange is not HTTP, so the agent relays it unread.
    let policy = format!(
        "version: 1\nservices:\n  bench-echo:\n    protocol: tcp\n    endpoints: [\"{}\"]\n",
        echo.addr
    );
    let cgroup = Cgroup::new();
    let ctx = Ctx {
        args,
        enforcer: root.join("target/release/enforcer"),
        probe: root.join("target/release/probe"),
        cgroup: &cgroup,
        policy: &policy,
    };

    let mut rows = vec![connect_rate(&ctx, sink.addr)?];
    rows.extend(relay(&ctx, echo.addr)?);

    let placement = format!(
        "probe client on CPU {}, upstreams (echo server, connect-rate sink) on CPU {}, agent \
         on CPU {}, for baseline and measured alike",
        args.client_cpu, args.upstream_cpu, args.agent_cpu
    );
    let kernel = super::kernel();
    let header = [
        format!(
            "enforcer redirect bench: kernel {}, {cpus} CPUs ({:.0}% busy before start), \
             measured in {:.0} s",
            kernel,
            busy * 100.0,
            started.elapsed().as_secs_f64()
        ),
        format!("placement: {placement}"),
        format!(
            "{} rounds of each kind, interleaved; medians; round ratios: median (min..max) of \
             measured/baseline per round; connect rounds {} s, pingpong {} x {} B, stream {} MiB",
            args.rounds, args.connect_secs, args.round_trips, args.message_bytes, args.stream_mib
        ),
    ];
    println!("{}\n", header.join("\n"));
    print_table(&rows);

    let report = json!({
        "kernel": kernel,
        "cpus": cpus,
        "busy_before_start": busy,
        "placement": placement,
        "args": {
            "rounds": args.rounds,
            "connect_secs": args.connect_secs,
            "round_trips": args.round_trips,
            "message_bytes": args.message_bytes,
            "stream_mib": args.stream_mib,
            "client_cpu": args.client_cpu,
            "upstream_cpu": args.upstream_cpu,
            "agent_cpu": args.agent_cpu,
        },
        "metrics": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
    });
    super::write_report(&root.join("target/bench/redirect.json"), &report)
}

/// What every measurement shares.
struct Ctx<'a> {
    args: &'a RedirectArgs,
    enforcer: PathBuf,
    probe: PathBuf,
    cgroup: &'a Cgroup,
    policy: &'a str,
}

impl Ctx<'_> {
    /// Start the agent on the test cgroup and move all its threads to the agent CPU. Threads
    /// it starts later (tokio's blocking pool) inherit that from the workers that start them.
    /// It starts from this thread, pinned to one CPU, so tokio sizes its runtime for one CPU,
    /// as it would under `taskset`.
    fn agent(&self) -> anyhow::Result<Agent> {
        let agent = Agent::spawn(&self.enforcer, self.cgroup, self.policy, &[]);
        super::pin_process(agent.pid(), self.args.agent_cpu).context("pin the agent")?;
        Ok(agent)
    }

    /// The probe command, in the test cgroup or not.
    fn probe(&self, in_cgroup: bool) -> Command {
        if in_cgroup {
            self.cgroup.command(&self.probe)
        } else {
            Command::new(&self.probe)
        }
    }
}

/// Part 1: connects/s to the sink from inside the cgroup, nothing attached vs an agent
/// attached whose policy does not cover the sink.
fn connect_rate(ctx: &Ctx, sink: SocketAddr) -> anyhow::Result<Row> {
    let secs = ctx.args.connect_secs;
    let limit = Duration::from_secs(secs) + PROBE_SLACK;
    let mut row = Row::new(
        "connect rate, unprotected destination",
        "connects/s",
        ("detached", "attached"),
    );
    let mut errors = [0, 0];
    for round in 1..=ctx.args.rounds {
        for attached in [false, true] {
            let agent = attached.then(|| ctx.agent()).transpose()?;
            let out = run_probe(
                ctx.probe(true)
                    .args(["connect-rate", &sink.to_string(), &secs.to_string()]),
                limit,
            )?;
            let connects = num(&out, "connects")? as u64;
            errors[usize::from(attached)] += num(&out, "errors")? as u64;
            row.side(attached).push(num(&out, "per_second")?);
            if let Some(mut agent) = agent {
                // Proof that the round measured what it claims: connect4 saw every connect
                // and let it through.
                let (_, counters) = agent.stop();
                let passed = counters["passed"].as_u64().unwrap_or(0);
                ensure!(
                    passed >= connects && counters["redirected"] == 0,
                    "attached round {round}: the probe made {connects} connects but \
                     connect4 passed {passed}: {counters}"
                );
            }
        }
        let (detached, attached) = row.latest();
        eprintln!(
            "connect rate {round}/{}: detached {detached:.0}/s, attached {attached:.0}/s",
            ctx.args.rounds
        );
    }
    let (detached, attached) = row.medians();
    let verdict = |ratio: f64| {
        if ratio >= CONNECT_RATE_GOAL {
            "met"
        } else {
            "NOT met"
        }
    };
    let paired = median(&row.round_ratios());
    row.notes.push(format!(
        "goal attached/detached >= {CONNECT_RATE_GOAL}: ratio of medians {:.3} {}, median \
         round ratio {paired:.3} {}",
        attached / detached,
        verdict(attached / detached),
        verdict(paired)
    ));
    let programs = program_time(ctx, sink)?;
    let ns_per_connect: f64 = programs.iter().map(|p| p.runs * p.ns_per_run).sum();
    // The ratio if the programs' time were the whole cost (the hooks' dispatch is not in the
    // statistics).
    let detached_ns = 1e9 / detached;
    let implied = detached_ns / (detached_ns + ns_per_connect);
    row.notes.push(format!(
        "kernel programs' own time: {ns_per_connect:.0} ns per connect ({}), implied ratio \
         {implied:.3}",
        programs
            .iter()
            .map(|p| format!("{} {:.1} x {:.0} ns", p.name, p.runs, p.ns_per_run))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    row.details = json!({
        "program_ns_per_connect": ns_per_connect,
        "implied_ratio": implied,
        "programs": programs.iter().map(|p| json!({
            "name": p.name,
            "runs_per_connect": p.runs,
            "ns_per_run": p.ns_per_run,
        })).collect::<Vec<_>>(),
    });
    if errors != [0, 0] {
        row.notes.push(format!(
            "failed connects: {} detached, {} attached",
            errors[0], errors[1]
        ));
    }
    Ok(row)
}

/// One attached program's share of a connect.
struct ProgramTime {
    name: String,
    /// Runs per connect.
    runs: f64,
    ns_per_run: f64,
}

/// What each attached program costs per connect, from the kernel's BPF run-time statistics:
/// precise where the rate ratio is blurred by VM noise at the percent level. Taken in one
/// extra attached round, as keeping the statistics costs a little time of its own.
fn program_time(ctx: &Ctx, sink: SocketAddr) -> anyhow::Result<Vec<ProgramTime>> {
    let _stats = enable_bpf_stats()?;
    // Loaded after the statistics were enabled, the programs count this round only.
    let agent = ctx.agent()?;
    let secs = ctx.args.connect_secs;
    let out = run_probe(
        ctx.probe(true)
            .args(["connect-rate", &sink.to_string(), &secs.to_string()]),
        Duration::from_secs(secs) + PROBE_SLACK,
    )?;
    let attempts = num(&out, "connects")? + num(&out, "errors")?;
    let mut programs = Vec::new();
    for id in enforcer_tests::attached_program_ids(ctx.cgroup.path()) {
        let show = Command::new("bpftool")
            .args(["-j", "prog", "show", "id", &id.to_string()])
            .output()
            .context("run bpftool (`cargo xtask setup` installs it)")?;
        let info: Value = serde_json::from_slice(&show.stdout)
            .with_context(|| format!("bpftool prog show id {id}: {show:?}"))?;
        // bpftool leaves out counters that are zero.
        let stat = |field: &str| info[field].as_f64().unwrap_or(0.0);
        let (runs, ns) = (stat("run_cnt"), stat("run_time_ns"));
        if runs > 0.0 {
            programs.push(ProgramTime {
                name: info["name"].as_str().unwrap_or("?").to_string(),
                runs: runs / attempts,
                ns_per_run: ns / runs,
            });
        }
    }
    drop(agent);
    ensure!(
        !programs.is_empty(),
        "no attached program ran during the statistics round"
    );
    Ok(programs)
}

/// Turn the kernel's BPF run-time statistics on for as long as the returned descriptor is
/// open. Unlike the `kernel.bpf_stats_enabled` sysctl this reverts by itself, even if this
/// process is killed.
fn enable_bpf_stats() -> anyhow::Result<OwnedFd> {
    // From enum bpf_cmd and enum bpf_stats_type in linux/bpf.h (kernel >= 5.8).
    const BPF_ENABLE_STATS: libc::c_long = 32;
    const BPF_STATS_RUN_TIME: u32 = 0;
    let attr = BPF_STATS_RUN_TIME;
    // SAFETY: bpf(2) reads `size` bytes at the pointer, here a live u32 (the kernel zero-fills
    // the rest of its union).
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_ENABLE_STATS,
            &raw const attr,
            size_of::<u32>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("enable BPF run-time statistics");
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Part 2: the same keep-alive exchange with the echo upstream, direct (probe outside the
/// cgroup) vs redirected (inside it, relayed by the agent).
fn relay(ctx: &Ctx, echo: SocketAddr) -> anyhow::Result<Vec<Row>> {
    let a = ctx.args;
    let labels = ("direct", "redirected");
    let mut p50 = Row::new("pingpong p50 latency", "us", labels);
    let mut p99 = Row::new("pingpong p99 latency", "us", labels);
    let mut rate = Row::new("pingpong rate", "round trips/s", labels);
    let mut stream = Row::new("stream throughput", "MiB/s", labels);
    (p50.added, p99.added) = (true, true);
    let echo = echo.to_string();
    // Far slower than any working relay: only a hung one reaches these.
    let pingpong_limit = PROBE_SLACK + Duration::from_millis(a.round_trips);
    let stream_limit = PROBE_SLACK + Duration::from_millis(100 * a.stream_mib);

    let mut agent = ctx.agent()?;
    for round in 1..=a.rounds {
        for redirected in [false, true] {
            let out = run_probe(
                ctx.probe(redirected).args([
                    "pingpong",
                    &echo,
                    &a.round_trips.to_string(),
                    &a.message_bytes.to_string(),
                ]),
                pingpong_limit,
            )?;
            p50.side(redirected).push(num(&out, "p50_us")?);
            p99.side(redirected).push(num(&out, "p99_us")?);
            rate.side(redirected).push(num(&out, "per_second")?);
        }
        for redirected in [false, true] {
            let out = run_probe(
                ctx.probe(redirected)
                    .args(["stream", &echo, &a.stream_mib.to_string()]),
                stream_limit,
            )?;
            ensure!(
                out["intact"] == true,
                "stream round {round} ({}): the echo differs from what was sent: {out}",
                if redirected { "redirected" } else { "direct" }
            );
            stream.side(redirected).push(num(&out, "mib_per_second")?);
        }
        let ((p50_direct, p50_redirected), (mib_direct, mib_redirected)) =
            (p50.latest(), stream.latest());
        eprintln!(
            "relay {round}/{}: p50 {p50_direct:.1} / {p50_redirected:.1} us, stream \
             {mib_direct:.0} / {mib_redirected:.0} MiB/s (direct / redirected)",
            a.rounds
        );
    }
    // Proof that exactly the redirected runs went through the agent.
    let (_, counters) = agent.stop();
    let expected = u64::from(a.rounds) * 2;
    ensure!(
        counters["redirected"] == expected
            && counters["accepted"] == expected
            && counters["upstream_failed"] == 0,
        "expected {expected} relayed connections (one per redirected probe), the agent \
         counted {counters}"
    );
    Ok(vec![p50, p99, rate, stream])
}

/// One metric: per-round values of the baseline and of the measured configuration.
struct Row {
    metric: &'static str,
    unit: &'static str,
    labels: (&'static str, &'static str),
    baseline: Vec<f64>,
    measured: Vec<f64>,
    /// Latency: also report measured - baseline.
    added: bool,
    notes: Vec<String>,
    /// Anything else worth keeping in the JSON.
    details: Value,
}

impl Row {
    fn new(metric: &'static str, unit: &'static str, labels: (&'static str, &'static str)) -> Self {
        Self {
            metric,
            unit,
            labels,
            baseline: Vec::new(),
            measured: Vec::new(),
            added: false,
            notes: Vec::new(),
            details: Value::Null,
        }
    }

    /// The measured rounds, or the baseline ones.
    fn side(&mut self, measured: bool) -> &mut Vec<f64> {
        if measured {
            &mut self.measured
        } else {
            &mut self.baseline
        }
    }

    /// measured / baseline of each round: a pair ran back to back, so slow drift cancels.
    fn round_ratios(&self) -> Vec<f64> {
        self.measured
            .iter()
            .zip(&self.baseline)
            .map(|(m, b)| m / b)
            .collect()
    }

    /// The values of the round just run.
    fn latest(&self) -> (f64, f64) {
        let last = |v: &[f64]| *v.last().expect("a round ran");
        (last(&self.baseline), last(&self.measured))
    }

    fn medians(&self) -> (f64, f64) {
        (median(&self.baseline), median(&self.measured))
    }

    fn to_json(&self) -> Value {
        let (base, meas) = self.medians();
        json!({
            "metric": self.metric,
            "unit": self.unit,
            "baseline": { "name": self.labels.0, "median": base, "rounds": self.baseline },
            "measured": { "name": self.labels.1, "median": meas, "rounds": self.measured },
            "ratio": meas / base,
            "round_ratios": self.round_ratios(),
            "added": self.added.then_some(meas - base),
            "notes": self.notes,
            "details": self.details,
        })
    }
}

fn print_table(rows: &[Row]) {
    let mut table = vec![
        [
            "metric",
            "baseline",
            "measured",
            "ratio",
            "added",
            "round ratios",
        ]
        .map(String::from),
    ];
    for row in rows {
        let (base, meas) = row.medians();
        let ratios = row.round_ratios();
        let (min, max) = min_max(&ratios);
        table.push([
            format!("{} ({})", row.metric, row.unit),
            format!("{} {}", row.labels.0, fmt_value(base)),
            format!("{} {}", row.labels.1, fmt_value(meas)),
            format!("{:.3}", meas / base),
            if row.added {
                format!("{:+.1}", meas - base)
            } else {
                String::new()
            },
            format!("{:.3} ({min:.3}..{max:.3})", median(&ratios)),
        ]);
    }
    let widths: Vec<usize> = (0..table[0].len())
        .map(|i| {
            table
                .iter()
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String; 6]| {
        let padded: Vec<String> = cells
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
        padded.join("  ")
    };
    println!("{}", line(&table[0]));
    for (row, cells) in rows.iter().zip(&table[1..]) {
        println!("{}", line(cells));
        for note in &row.notes {
            println!("    {note}");
        }
    }
}

/// A number field of a probe report.
fn num(report: &Value, field: &str) -> anyhow::Result<f64> {
    report[field]
        .as_f64()
        .with_context(|| format!("probe report without a number `{field}`: {report}"))
}

/// Run a probe and parse its JSON report; kill it and fail after `limit`. (The harness's
/// `run_probe` waits without a limit.)
fn run_probe(cmd: &mut Command, limit: Duration) -> anyhow::Result<Value> {
    // The polling thread shares the client CPU: it wakes ten times a second, negligible next
    // to the probe, and the same for baseline and measured.
    let out = super::run_bounded("probe", cmd, limit)?;
    ensure!(
        out.status.success(),
        "probe {cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "probe output is not JSON: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Accepts connections and drops them: the cheapest upstream, so the connect rate measures
/// the connecting side (the probe resets its end, so nothing lingers in TIME_WAIT).
struct Sink {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sink {
    fn start() -> anyhow::Result<Self> {
        let listener =
            listen_deep(SocketAddr::from(([127, 0, 0, 1], 0))).context("listen for the sink")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::Builder::new()
            .name("sink".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if flag.load(Relaxed) {
                        break;
                    }
                    drop(conn);
                }
            })
            .context("spawn the sink thread")?;
        Ok(Self {
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

/// A listener with the deepest accept queue allowed: the connecting side outruns the sink
/// whenever the sink is descheduled for a moment, and a full queue drops SYNs, which stalls a
/// connect for the 1 s SYN retransmit (std's 128 fills in a few milliseconds).
fn listen_deep(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.bind(&addr.into())?;
    // Capped by net.core.somaxconn (4096 by default).
    socket.listen(i32::MAX)?;
    Ok(socket.into())
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        // Wake the accept loop so it sees the flag; if that fails, leave the thread be rather
        // than wait forever.
        if TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).is_ok()
            && let Some(thread) = self.thread.take()
        {
            let _ = thread.join();
        }
    }
}
