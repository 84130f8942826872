//! `cargo xtask soak`: the release agent under steady load for minutes, with policy reloads,
//! watched for failed requests and for growth of its memory and descriptors.
//!
//! - The agent is attached to its own test cgroup; `--clients` probe processes in it run
//!   `probe load` against a local upstream through the real redirect: a mix of allowed
//!   (`GET /allowed/…`) and denied (`GET /denied/…`, 403) requests, on keep-alive connections
//!   and on new ones (`connection: close` every 8th request).
//! - Every 10 s the policy changes (a rewritten file, put in place by rename as deployment
//!   tools do), or, every third time, the agent gets SIGHUP instead; and the agent's RSS and
//!   open descriptors are sampled.
//! - Verdict: the run fails on any failed allowed (or denied) request; on a keep-alive
//!   connection closed without notice (a request the client had to retry); on RSS growing
//!   more than `--max-rss-growth-mib` between the first sample under load and the end; or on
//!   more open descriptors once the load has stopped than before it (beyond a few for the
//!   runtime's own use).
//!
//! The agent logs at `info` except per-connection events (`enforcer::proxy=warn`): at
//! thousands of connections a minute those would fill the disk, not test anything.

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use enforcer_tests::{Cgroup, agent_pin_path, cgroup_scoped_temp};
use serde_json::{Value, json};

#[derive(clap::Args)]
pub struct Args {
    /// How long the load runs.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Concurrent client processes (each one request at a time).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    clients: u32,
    /// Largest RSS growth allowed, from the first sample under load to the last, in MiB.
    #[arg(long, default_value_t = 32)]
    max_rss_growth_mib: u64,
}

/// Between samples, and between policy changes.
const PERIOD: Duration = Duration::from_secs(10);
/// Descriptors the agent may hold after the load beyond those before it (runtime, timers).
const FD_SLACK: u64 = 4;
/// How long the agent may take to close the finished connections' descriptors.
const SETTLE: Duration = Duration::from_secs(30);
const STARTUP: Duration = Duration::from_secs(30);

pub fn run(args: Args) -> anyhow::Result<()> {
    ensure!(
        args.minutes > 0.0 && args.minutes <= 24.0 * 60.0,
        "--minutes must be more than 0 and at most a day"
    );
    crate::cargo(&[
        "build",
        "--release",
        "-p",
        "enforcer",
        "-p",
        "enforcer-tests",
        "--bins",
    ])?;
    let root = crate::workspace_root();
    let enforcer = root.join("target/release/enforcer");
    let probe = fs::canonicalize(root.join("target/release/probe")).context("probe binary")?;
    let duration = Duration::from_secs_f64(args.minutes * 60.0);

    let upstream = Upstream::start()?;
    let cgroup = Cgroup::new();
    let dir = cgroup_scoped_temp(&cgroup, "soak");
    fs::create_dir_all(&dir).context("create the soak directory")?;
    let policy_file = dir.join("policy.yaml");
    let write_policy = |generation: u64| -> anyhow::Result<()> {
        let next = dir.join("policy.yaml.next");
        fs::write(&next, policy(&probe, upstream.addr, &dir, generation))?;
        fs::rename(&next, &policy_file).context("replace the policy")
    };
    write_policy(0)?;
    let log_file = dir.join("agent.log");
    let mut agent = AgentProc::start(&enforcer, &cgroup, &policy_file, &dir, &log_file)?;
    let pid = agent.pid();
    println!("soak: agent {pid} ready; load for {:.1} min", args.minutes);

    let before = sample(pid, Duration::ZERO)?;
    let seconds = duration.as_secs().max(1).to_string();
    let target = upstream.addr.to_string();
    let mut clients = Vec::new();
    for _ in 0..args.clients {
        let child = cgroup
            .command(&probe)
            .args(["load", &target, "/allowed/item", "/denied/item", &seconds])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start a load client")?;
        clients.push(Client(Some(child)));
    }

    let started = Instant::now();
    let mut samples = vec![before];
    let (mut rewrites, mut sighups) = (0u64, 0u64);
    let mut tick = 0u64;
    while started.elapsed() + Duration::from_millis(500) < duration {
        thread::sleep(PERIOD.min(duration.saturating_sub(started.elapsed())));
        tick += 1;
        if tick.is_multiple_of(3) {
            // SAFETY: plain syscall on our own child.
            unsafe { libc::kill(pid as i32, libc::SIGHUP) };
            sighups += 1;
        } else {
            write_policy(tick)?;
            rewrites += 1;
        }
        let s = sample(pid, started.elapsed())?;
        println!(
            "soak: {:>5.0} s  rss {:>6.1} MiB  fds {:>4}",
            s.at.as_secs_f64(),
            mib(s.rss),
            s.fds
        );
        samples.push(s);
    }

    let mut load = Totals::default();
    for mut client in clients {
        let report = client.finish(duration + Duration::from_secs(60))?;
        load.add(&report);
    }
    // The closed connections' tasks end soon after their clients: the last sample is the first
    // with the descriptors back within bounds, or the one at the deadline (a leak).
    let settle = Instant::now() + SETTLE;
    let end = loop {
        let s = sample(pid, started.elapsed())?;
        if s.fds <= before.fds + FD_SLACK || Instant::now() > settle {
            break s;
        }
        thread::sleep(Duration::from_millis(100));
    };
    samples.push(end);
    let drain = agent.stop()?;
    let log = fs::read_to_string(&log_file).unwrap_or_default();
    let reloads = log.matches("\"policy_reloaded\"").count();
    let rejected = log.matches("\"policy_rejected\"").count();

    let under_load = &samples[1..samples.len() - 1];
    let first_loaded = under_load.first().unwrap_or(&end);
    let rss_growth = end.rss.saturating_sub(first_loaded.rss);
    let max_rss = samples.iter().map(|s| s.rss).max().unwrap_or(0);
    let max_fds = samples.iter().map(|s| s.fds).max().unwrap_or(0);
    let mut problems = Vec::new();
    if load.allowed_failed > 0 {
        problems.push(format!("{} allowed requests failed", load.allowed_failed));
    }
    if load.denied_failed > 0 {
        problems.push(format!(
            "{} denied requests did not get 403",
            load.denied_failed
        ));
    }
    if load.retried > 0 {
        // Under steady load nothing should close a keep-alive connection without saying so.
        problems.push(format!(
            "{} requests met a reused connection closed without notice",
            load.retried
        ));
    }
    if load.allowed_ok == 0 {
        problems.push("no allowed request succeeded".into());
    }
    if rss_growth > args.max_rss_growth_mib << 20 {
        problems.push(format!(
            "RSS grew {:.1} MiB under load (bound {} MiB)",
            mib(rss_growth),
            args.max_rss_growth_mib
        ));
    }
    if end.fds > before.fds + FD_SLACK {
        problems.push(format!(
            "{} descriptors open after the load, {} before it",
            end.fds, before.fds
        ));
    }
    if rejected > 0 {
        problems.push(format!("{rejected} policy reloads were rejected"));
    }
    if reloads as u64 != rewrites + sighups {
        problems.push(format!(
            "{reloads} reloads logged for {rewrites} rewrites and {sighups} SIGHUPs"
        ));
    }

    let report = json!({
        "minutes": args.minutes,
        "clients": args.clients,
        "requests": {
            "allowed_ok": load.allowed_ok,
            "allowed_failed": load.allowed_failed,
            "denied_ok": load.denied_ok,
            "denied_failed": load.denied_failed,
            "retried": load.retried,
            "per_second": (load.allowed_ok + load.denied_ok) as f64 / duration.as_secs_f64(),
            "errors": load.errors,
        },
        "reloads": { "rewrites": rewrites, "sighups": sighups, "logged": reloads },
        "rss_bytes": { "start": before.rss, "first_under_load": first_loaded.rss, "max": max_rss, "end": end.rss },
        "fds": { "start": before.fds, "max": max_fds, "end": end.fds },
        "bounds": { "max_rss_growth_mib": args.max_rss_growth_mib, "fd_slack": FD_SLACK },
        "samples": samples.iter().map(|s| json!({ "s": s.at.as_secs_f64(), "rss": s.rss, "fds": s.fds })).collect::<Vec<_>>(),
        "drain": drain,
        "problems": problems,
    });
    let out = root.join("target/bench/soak.json");
    fs::create_dir_all(out.parent().expect("has a parent"))?;
    fs::write(&out, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("write {}", out.display()))?;

    println!(
        "\nsoak summary ({:.1} min, {} clients)\n  requests: {} allowed ok, {} allowed failed, {} \
         denied (403), {} denied failed ({:.0}/s), {} retried on a new connection\n  reloads:  {} ({} rewrites, {} SIGHUPs)\n  \
         RSS:      start {:.1} MiB, max {:.1} MiB, end {:.1} MiB (growth under load {:.1} MiB, \
         bound {} MiB)\n  fds:      start {}, max {}, end {}\n  report:   {}",
        args.minutes,
        args.clients,
        load.allowed_ok,
        load.allowed_failed,
        load.denied_ok,
        load.denied_failed,
        (load.allowed_ok + load.denied_ok) as f64 / duration.as_secs_f64(),
        load.retried,
        reloads,
        rewrites,
        sighups,
        mib(before.rss),
        mib(max_rss),
        mib(end.rss),
        mib(rss_growth),
        args.max_rss_growth_mib,
        before.fds,
        max_fds,
        end.fds,
        out.display()
    );
    for e in &load.errors {
        println!("  error: {e}");
    }
    if !problems.is_empty() {
        bail!("soak failed: {}", problems.join("; "));
    }
    println!("soak passed");
    Ok(())
}

fn policy(probe: &Path, upstream: SocketAddr, dir: &Path, generation: u64) -> String {
    format!(
        r#"# soak generation {generation}
version: 1
settings:
  audit: {{file: {audit}, maxBytes: 67108864, keep: 1}}
identities:
  probe:
    exe: {probe}
services:
  api:
    endpoints: ["{upstream}"]
rules:
  - id: probe-reads
    from: [probe]
    to: api
    methods: [GET]
    paths: ["/allowed/**"]
  - id: generation-{generation}
    from: [probe]
    to: api
    methods: [POST]
    paths: ["/generation/{generation}"]
"#,
        audit = dir.join("audit.jsonl").display(),
        probe = probe.display(),
    )
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[derive(Clone, Copy)]
struct Sample {
    at: Duration,
    rss: u64,
    fds: u64,
}

fn sample(pid: u32, at: Duration) -> anyhow::Result<Sample> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("agent {pid} is gone"))?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS in /proc/PID/status")?;
    let fds = fs::read_dir(format!("/proc/{pid}/fd"))
        .context("list /proc/PID/fd")?
        .count() as u64;
    Ok(Sample {
        at,
        rss: rss_kib * 1024,
        fds,
    })
}

#[derive(Default)]
struct Totals {
    allowed_ok: u64,
    allowed_failed: u64,
    denied_ok: u64,
    denied_failed: u64,
    /// Retried on a new connection: a reused one closed before any response byte.
    retried: u64,
    errors: Vec<String>,
}

impl Totals {
    fn add(&mut self, report: &Value) {
        let n = |k: &str| report[k].as_u64().unwrap_or(0);
        self.allowed_ok += n("allowed_ok");
        self.allowed_failed += n("allowed_failed");
        self.denied_ok += n("denied_ok");
        self.denied_failed += n("denied_failed");
        self.retried += n("retried");
        for e in report["errors"].as_array().into_iter().flatten() {
            if self.errors.len() < 10 {
                self.errors.push(e.as_str().unwrap_or_default().to_owned());
            }
        }
    }
}

/// A load client; killed if dropped unfinished.
struct Client(Option<Child>);

impl Client {
    /// Wait (at most `limit`) for its report.
    fn finish(&mut self, limit: Duration) -> anyhow::Result<Value> {
        let mut child = self.0.take().context("client already finished")?;
        let stdout = child.stdout.take().context("client stdout")?;
        let reader = thread::spawn(move || std::io::read_to_string(stdout));
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("a load client did not finish within {limit:?}");
            }
            thread::sleep(Duration::from_millis(50));
        };
        let out = reader.join().expect("reader thread")?;
        ensure!(status.success(), "a load client failed ({status})");
        serde_json::from_str(&out).with_context(|| format!("client report: {out}"))
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The agent, logging to a file; SIGKILLed if dropped while running. Its programs stay
/// pinned when it stops, so dropping it also uninstalls them.
struct AgentProc {
    child: Option<Child>,
    bin: PathBuf,
    pin_path: PathBuf,
}

impl AgentProc {
    fn start(
        bin: &Path,
        cgroup: &Cgroup,
        policy: &Path,
        dir: &Path,
        log: &Path,
    ) -> anyhow::Result<Self> {
        let log_out = fs::File::create(log).context("create the agent log")?;
        let pin_path = agent_pin_path(cgroup);
        let child = cgroup
            .command(bin)
            .args(["--log-format", "json", "run", "--policy"])
            .arg(policy)
            .arg("--cgroup")
            .arg(cgroup.path())
            .args(["--listen", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"])
            .arg("--pin-path")
            .arg(&pin_path)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .env("ENFORCER_LOG", "info,enforcer::proxy=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_out)
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let mut agent = Self {
            child: Some(child),
            bin: bin.to_path_buf(),
            pin_path,
        };
        let deadline = Instant::now() + STARTUP;
        loop {
            if fs::read_to_string(log)
                .unwrap_or_default()
                .contains("\"event\":\"ready\"")
            {
                return Ok(agent);
            }
            if let Some(status) = agent.child.as_mut().and_then(|c| c.try_wait().ok()?) {
                bail!(
                    "the agent exited ({status}): {}",
                    fs::read_to_string(log).unwrap_or_default()
                );
            }
            ensure!(
                Instant::now() < deadline,
                "the agent was not ready within {STARTUP:?}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGTERM and wait; returns how long the drain and exit took.
    fn stop(&mut self) -> anyhow::Result<Value> {
        let mut child = self.child.take().context("agent not running")?;
        let started = Instant::now();
        // SAFETY: plain syscall on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        loop {
            if let Some(status) = child.try_wait()? {
                ensure!(status.success(), "the agent exited with {status}");
                return Ok(json!({ "exit_s": started.elapsed().as_secs_f64() }));
            }
            if started.elapsed() > STARTUP {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the agent did not exit within {STARTUP:?} of SIGTERM");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let removed = Command::new(&self.bin)
            .arg("uninstall")
            .arg("--pin-path")
            .arg(&self.pin_path)
            .output();
        if !removed.as_ref().is_ok_and(|o| o.status.success()) {
            eprintln!(
                "soak: enforcer uninstall --pin-path {} failed: {removed:?}",
                self.pin_path.display()
            );
        }
    }
}

/// A keep-alive HTTP/1.1 upstream answering `200 ok` to everything, a thread per connection.
/// It keeps nothing per request, so it does not grow over a long run.
struct Upstream {
    addr: SocketAddr,
}

impl Upstream {
    fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("bind the upstream")?;
        let addr = listener.local_addr()?;
        thread::spawn(move || {
            for conn in listener.incoming().map_while(Result::ok) {
                thread::spawn(move || serve(conn));
            }
        });
        Ok(Self { addr })
    }
}

fn serve(conn: TcpStream) {
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    loop {
        let mut close = false;
        let mut first = true;
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" && !first => break,
                Ok(_) => {}
            }
            first = false;
            let lower = line.to_ascii_lowercase();
            close |= lower.starts_with("connection:") && lower.contains("close");
        }
        if out
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")
            .is_err()
            || close
        {
            return;
        }
    }
}
