//! `cargo xtask bench`: what the enforcer costs, measured against baselines in one run.
//!
//! Five parts, run in this order (`--only` picks some):
//! - `redirect` ([`redirect`]): the kernel redirect and the TCP relay: connect rate of
//!   unprotected destinations with the programs attached vs detached, and a relayed keep-alive
//!   connection vs a direct one. Writes `target/bench/redirect.json`.
//! - `decide` ([`decide`]): `Policy::decide` at 10, 1 000 and 10 000 rules, timed in a release
//!   build (`enforcer/examples/decide_bench.rs`).
//! - `http` ([`http`]): keep-alive HTTP through the enforcer vs direct vs HAProxy with the
//!   same rules, driven by wrk against nginx.
//! - `jwt` ([`jwt`]): bearer-token verification per request (RS256, ES256, EdDSA; no cache vs
//!   the cache of verified tokens), timed in a release build (`enforcer/examples/jwt_bench.rs`),
//!   and HTTP through the enforcer with a rule requiring a JWT vs the same without. Writes
//!   `target/bench/jwt.json`.
//! - `identity` ([`identity`]): time to first response of 1 and 32 parallel first connections
//!   from a new 100 MB binary vs a known one. Writes `target/bench/identity.json`.
//!
//! `decide` and `http` write `target/bench/http.json`. Every number is a median of interleaved
//! rounds, reported with ratios to its baseline in the same run.

mod decide;
mod http;
mod identity;
mod jwt;
mod redirect;

use std::{
    fs, io,
    io::Read,
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, Command, ExitStatus, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use serde_json::{Value, json};

#[derive(clap::Args)]
pub struct Args {
    /// Run only these parts, comma-separated (default: all, in the order redirect, decide,
    /// http, jwt, identity).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Part>,
    #[command(flatten)]
    redirect: redirect::RedirectArgs,
    #[command(flatten)]
    http: http::HttpArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    /// Connect rate and TCP relay (`target/bench/redirect.json`).
    Redirect,
    /// `Policy::decide` time at 10, 1 000 and 10 000 rules.
    Decide,
    /// Keep-alive HTTP: direct vs enforcer vs HAProxy.
    Http,
    /// JWT verification per request (no cache vs cached), and HTTP with a JWT rule vs without
    /// (`target/bench/jwt.json`).
    Jwt,
    /// Time to first response of a new 100 MB binary's first connections vs a known binary's
    /// (`target/bench/identity.json`).
    Identity,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let wants = |part| args.only.is_empty() || args.only.contains(&part);
    let privileged =
        wants(Part::Redirect) || wants(Part::Http) || wants(Part::Jwt) || wants(Part::Identity);
    // SAFETY: plain syscall.
    if privileged && unsafe { libc::geteuid() } != 0 {
        bail!(
            "cargo xtask bench must run as root: it attaches BPF programs to a cgroup \
             (try `sudo -E cargo xtask bench`, or `--only decide`)"
        );
    }
    ensure!(
        !privileged || enforcer_tests::cgroup2_root().is_some(),
        "no cgroup v2 mount in /proc/self/mountinfo"
    );
    let started = Instant::now();
    if privileged {
        crate::cargo(&[
            "build",
            "--release",
            "-p",
            "enforcer",
            "-p",
            "enforcer-tests",
            "--bins",
        ])?;
    }
    for (part, example) in [(Part::Decide, "decide_bench"), (Part::Jwt, "jwt_bench")] {
        if wants(part) {
            crate::cargo(&["build", "--release", "-p", "enforcer", "--example", example])?;
        }
    }
    let root = crate::workspace_root();
    let busy = busy_share(Duration::from_secs(1))?;
    if busy > 0.1 {
        eprintln!(
            "warning: other work keeps {:.0}% of the CPU time busy: expect noisy results",
            busy * 100.0
        );
    }

    if wants(Part::Redirect) {
        redirect::run(&args.redirect, &root, busy)?;
    }
    let decide = if wants(Part::Decide) {
        let report = decide::run(&root, args.http.server_cpu())?;
        Some(report)
    } else {
        None
    };
    let http = if wants(Part::Http) {
        Some(http::run(&args.http, &root, busy)?)
    } else {
        None
    };
    if decide.is_some() || http.is_some() {
        let report = json!({
            "kernel": kernel(),
            "cpus": cpus(),
            "busy_before_start": busy,
            "decide": decide,
            "http": http,
        });
        write_report(&root.join("target/bench/http.json"), &report)?;
    }
    if wants(Part::Jwt) {
        let report = json!({
            "kernel": kernel(),
            "cpus": cpus(),
            "busy_before_start": busy,
            "jwt": jwt::run(&args.http, &root)?,
        });
        write_report(&root.join("target/bench/jwt.json"), &report)?;
    }
    if wants(Part::Identity) {
        let report = json!({
            "kernel": kernel(),
            "cpus": cpus(),
            "busy_before_start": busy,
            "identity": identity::run(&root)?,
        });
        write_report(&root.join("target/bench/identity.json"), &report)?;
    }
    println!(
        "\ncargo xtask bench: {:.0} s in all (builds included)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn kernel() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// CPUs online. (Not `available_parallelism`, which counts the calling thread's affinity,
/// and the parts pin this thread.)
fn cpus() -> usize {
    // SAFETY: plain libc call.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

/// Write `report` as pretty JSON to `out`, and say so.
fn write_report(out: &Path, report: &Value) -> anyhow::Result<()> {
    fs::create_dir_all(out.parent().expect("file in a directory"))
        .with_context(|| format!("mkdir for {}", out.display()))?;
    fs::write(out, serde_json::to_string_pretty(report)? + "\n")
        .with_context(|| format!("write {}", out.display()))?;
    println!("\nwritten to {}", out.display());
    Ok(())
}

/// Enough digits to compare, no more: microseconds keep one decimal, rates none.
fn fmt_value(v: f64) -> String {
    if v < 1000.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.is_empty() {
        f64::NAN
    } else if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    }
}

fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

/// Share of all CPU time spent busy over `window`, while this process sleeps: on two CPUs,
/// anything else running distorts every number here.
fn busy_share(window: Duration) -> anyhow::Result<f64> {
    // The first line of /proc/stat sums all CPUs: user nice system idle iowait irq softirq
    // steal (then guest time, already counted in user).
    let sample = || -> anyhow::Result<(u64, u64)> {
        let stat = fs::read_to_string("/proc/stat").context("read /proc/stat")?;
        let ticks: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .context("parse /proc/stat")?;
        ensure!(ticks.len() == 8, "unexpected /proc/stat: {stat:.80}");
        Ok((ticks.iter().sum(), ticks[3] + ticks[4]))
    };
    let (total0, idle0) = sample()?;
    thread::sleep(window);
    let (total1, idle1) = sample()?;
    Ok(1.0 - (idle1 - idle0) as f64 / (total1 - total0).max(1) as f64)
}

/// A CPU set holding `cpu` alone.
fn cpu_set(cpu: usize) -> io::Result<libc::cpu_set_t> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("no CPU {cpu}"),
        ));
    }
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is within the set, checked above (CPU_SET does not check).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    Ok(set)
}

/// Restrict thread `tid` (0: the calling thread) to `cpu`.
fn pin(tid: libc::pid_t, cpu: usize) -> io::Result<()> {
    let set = cpu_set(cpu)?;
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    if unsafe { libc::sched_setaffinity(tid, size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Make `cmd`'s process start restricted to `cpu` (its threads inherit that), as `taskset`.
fn pin_command(cmd: &mut Command, cpu: usize) -> io::Result<&mut Command> {
    let set = cpu_set(cpu)?;
    // SAFETY: sched_setaffinity is a plain syscall, async-signal-safe, on a set copied into
    // the closure before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })
    };
    Ok(cmd)
}

/// Every thread of process `pid` to `cpu`. Threads it starts later inherit the affinity of the
/// thread that starts them.
fn pin_process(pid: u32, cpu: usize) -> anyhow::Result<()> {
    let tasks = format!("/proc/{pid}/task");
    for task in fs::read_dir(&tasks).with_context(|| format!("list {tasks}"))? {
        let tid: libc::pid_t = task?
            .file_name()
            .to_string_lossy()
            .parse()
            .context("task id in /proc")?;
        pin(tid, cpu).with_context(|| format!("pin thread {tid} of {pid} to CPU {cpu}"))?;
    }
    Ok(())
}

/// A child process that is stopped (SIGTERM by its pid, then SIGKILL) when dropped, so an
/// error or a panic anywhere leaves no server or load generator running.
struct Proc {
    name: String,
    child: Option<Child>,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command) -> anyhow::Result<Self> {
        let child = cmd
            .spawn()
            .with_context(|| format!("start {name}: {cmd:?}"))?;
        Ok(Self {
            name: name.to_string(),
            child: Some(child),
        })
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The exit status, if it has exited.
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL. Returns the exit status.
    fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        // SAFETY: plain syscall on our own child, not yet reaped (so its pid is not reused).
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(10));
        }
        eprintln!("{} did not stop within {grace:?}: killed", self.name);
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// Run `cmd` to completion with its output captured; kill it and fail after `limit`.
/// Run a release example on `cpu` (`name` is its file name, for messages) within `limit`, and
/// return the JSON report it prints.
fn run_example_report(
    bin: &Path,
    name: &str,
    args: &[&str],
    cpu: usize,
    limit: Duration,
) -> anyhow::Result<Value> {
    let mut cmd = Command::new(bin);
    cmd.args(args);
    pin_command(&mut cmd, cpu).with_context(|| format!("pin {name}"))?;
    let out = run_bounded(name, &mut cmd, limit)?;
    ensure!(
        out.status.success(),
        "{} failed ({}): {}",
        bin.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "{name} output is not JSON: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn run_bounded(name: &str, cmd: &mut Command, limit: Duration) -> anyhow::Result<Output> {
    let mut proc = Proc::spawn(
        name,
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )?;
    let child = proc.child.as_mut().expect("just spawned");
    // Drain both pipes while waiting, so a chatty child cannot block on a full pipe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + limit;
    // Polling wakes this thread ten times a second: negligible next to what it waits for.
    let status = loop {
        if let Some(status) = proc.exited() {
            break status;
        }
        if Instant::now() > deadline {
            proc.stop(Duration::from_secs(1));
            bail!("{name} ({cmd:?}) still running after {limit:?}: killed");
        }
        thread::sleep(Duration::from_millis(100));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}
