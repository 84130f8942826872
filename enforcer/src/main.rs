//! enforcer: host-level API traffic enforcer. See README.md and DESIGN.md.

use std::{
    io,
    net::{Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::unix::fs::DirBuilderExt as _,
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use tokio::{
    io::{Interest, unix::AsyncFd},
    net::TcpListener,
    signal::unix::SignalKind,
};
use tracing::{error, info, warn};

use enforcer::{
    anomaly::{self, Detectors},
    audit::Audit,
    binding::{Bindings, MAX_BINDINGS},
    credentials::Fingerprinter,
    identity::Resolver,
    limits::{self, Limiter},
    metrics::{self, Metrics},
    policy::{self, Policy},
    proxy,
    proxy::{Drain, Relay, Stats},
    redirect::{self, Listeners, Redirect},
    reload::{self, PolicyStore},
};

#[derive(Parser)]
// A later flag overrides an earlier one: a wrapper can append its own `--listen`.
#[command(
    version,
    about = "eBPF-based host-level API traffic enforcer",
    args_override_self = true
)]
struct Cli {
    /// Log format of the agent's own logs (stderr).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Redirect connects toward protected destinations through this agent.
    Run(RunArgs),
    /// Check a policy file; print every error as FILE:LINE:COLUMN: reason.
    Check {
        /// Policy file (YAML).
        file: PathBuf,
    },
    /// Print what a policy decides for a request from a described process, and why.
    Explain(ExplainArgs),
    /// Detach and remove every program, link and map the agent pinned. Stopping the agent
    /// leaves them attached (protected destinations then follow their `failMode`) so that a
    /// restart opens no gap; this is how to remove the enforcer from a host.
    Uninstall {
        /// The agent's `--pin-path`.
        #[arg(long, default_value = redirect::DEFAULT_PIN_PATH)]
        pin_path: PathBuf,
    },
    /// Print a running agent's state: programs, policy, services, traffic (from its
    /// metrics endpoint's /status).
    Status {
        /// The agent's --metrics-addr.
        #[arg(long, default_value = metrics::DEFAULT_ADDR)]
        metrics_addr: SocketAddr,
    },
}

#[derive(clap::Args)]
struct ExplainArgs {
    /// Policy file (YAML).
    #[arg(long)]
    policy: PathBuf,
    /// The calling executable (its SHA-256 is computed if it can be read).
    #[arg(long)]
    exe: Option<PathBuf>,
    /// User name or uid (default: the user running this command).
    #[arg(long)]
    user: Option<String>,
    /// Group name or gid (default: the user's primary group).
    #[arg(long)]
    group: Option<String>,
    /// systemd unit the caller runs in.
    #[arg(long)]
    unit: Option<String>,
    /// cgroup v2 path of the caller.
    #[arg(long)]
    cgroup: Option<String>,
    /// Container id of the caller.
    #[arg(long)]
    container: Option<String>,
    /// HTTP method.
    method: String,
    /// URL, e.g. http://payments.internal:8080/v1/invoices/42
    url: String,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Policy file (YAML).
    #[arg(long)]
    policy: PathBuf,
    /// cgroup v2 directory whose processes (and descendants) are enforced.
    /// Default: the cgroup v2 root, i.e. the whole host.
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// IPv4 loopback address the kernel redirects to. Port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:15001")]
    listen: SocketAddrV4,
    /// IPv6 listener. Default: [::1] on the IPv4 listener's port; without one, connects to
    /// protected IPv6 destinations are refused.
    #[arg(long)]
    listen6: Option<SocketAddrV6>,
    /// Deprecated: set `settings.limits.connectTimeout` in the policy. Seconds to wait for an
    /// original destination to accept; given, it overrides the policy's value.
    #[arg(long)]
    connect_timeout: Option<f64>,
    /// Seconds SIGTERM waits for requests in flight before exiting. Listeners close at once;
    /// idle connections close at once; a request in flight finishes (its response says
    /// `connection: close`). A second SIGTERM or SIGINT ends the wait.
    #[arg(long, default_value_t = 10.0)]
    drain_timeout: f64,
    /// Where the agent keeps state that must outlive it: the per-host key that fingerprints
    /// tokens in records (so a token's fingerprint is stable across restarts), and the
    /// bind-on-first-use bindings.
    #[arg(long, default_value = "/var/lib/enforcer")]
    state_dir: PathBuf,
    /// Directory on a BPF file system where programs' links and maps are pinned, so they
    /// outlive the agent and a restarted agent adopts them. bpffs is mounted at /sys/fs/bpf if
    /// nothing is. Agents enforcing different cgroups need different pin paths.
    #[arg(long, default_value = redirect::DEFAULT_PIN_PATH)]
    pin_path: PathBuf,

    /// Where to serve /metrics (Prometheus), /healthz, /readyz and /status; `off` for no
    /// endpoint and no metrics recording. Loopback by default: /status names the policy file
    /// and services.
    #[arg(long, default_value = metrics::DEFAULT_ADDR)]
    metrics_addr: metrics::Endpoint,
}

fn main() {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Check { file } => check(&file),
        Command::Explain(args) => explain(args),
        Command::Uninstall { pin_path } => uninstall(&pin_path),
        Command::Status { metrics_addr } => status(metrics_addr),
    };
    if let Err(e) = result {
        eprintln!("enforcer: error: {e:#}");
        std::process::exit(1);
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ENFORCER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn check(file: &std::path::Path) -> anyhow::Result<()> {
    match policy::check(file) {
        Ok(p) => {
            println!(
                "{}: ok ({} services, {} rules)",
                file.display(),
                p.services.len(),
                p.rules().len()
            );
            Ok(())
        }
        Err(diagnostics) => {
            for d in &diagnostics {
                println!("{d}");
            }
            bail!("{} error(s) in {}", diagnostics.len(), file.display())
        }
    }
}

fn explain(args: ExplainArgs) -> anyhow::Result<()> {
    let policy = Policy::load(&args.policy)?;
    let caller = policy::Caller {
        exe: args.exe,
        user: args.user,
        group: args.group,
        unit: args.unit,
        cgroup: args.cgroup,
        container: args.container,
    };
    let explanation = policy::explain(&policy, &caller.identity(), &args.method, &args.url)?;
    let text = explanation.to_string();
    print!("{text}");
    if !text.ends_with('\n') {
        println!();
    }
    Ok(())
}

fn uninstall(pin_path: &std::path::Path) -> anyhow::Result<()> {
    let removed = redirect::uninstall(pin_path)?;
    info!(
        event = "uninstalled",
        pin_path = %pin_path.display(),
        links = removed.links,
        maps = removed.maps,
        "enforcer uninstalled"
    );
    Ok(())
}

fn status(addr: SocketAddr) -> anyhow::Result<()> {
    print!("{}", metrics::fetch_status(addr)?);
    Ok(())
}

#[tokio::main]
async fn run(args: RunArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let connect_timeout = match args.connect_timeout {
        None => None,
        Some(secs) if secs > 0.0 && secs.is_finite() => {
            warn!(
                "--connect-timeout is deprecated: set settings.limits.connectTimeout in the \
                 policy; until then the flag overrides it"
            );
            Some(Duration::from_secs_f64(secs))
        }
        Some(_) => bail!("--connect-timeout must be a positive number of seconds"),
    };
    let open_files = limits::raise_open_file_limit();
    if !(args.drain_timeout >= 0.0 && args.drain_timeout.is_finite()) {
        bail!("--drain-timeout must be a number of seconds, 0 or more");
    }
    let drain_timeout = Duration::from_secs_f64(args.drain_timeout);
    let policy = Policy::load(&args.policy)?;
    // The endpoint is up first, so /healthz answers and /readyz says "not yet" while the
    // programs are attached.
    let (metrics, metrics_addr) = match args.metrics_addr {
        metrics::Endpoint::Off => (None, None),
        metrics::Endpoint::At(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (--metrics-addr)"))?;
            let bound = listener.local_addr()?;
            let metrics = Arc::new(Metrics::new().context("BUG: metrics registration")?);
            tokio::spawn(metrics::serve(listener, metrics.clone()));
            (Some(metrics), Some(bound))
        }
    };
    let cgroup = match args.cgroup {
        Some(path) => path,
        None => redirect::cgroup2_root()?,
    };

    let listener4 = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let SocketAddr::V4(listen4) = listener4.local_addr()? else {
        unreachable!("bound to an IPv4 address")
    };
    let (listener6, listen6) = bind6(args.listen6, listen4.port()).await?;
    let listeners = Listeners {
        v4: listen4,
        v6: listen6,
    };

    let kernel_log_level = if tracing::enabled!(tracing::Level::DEBUG) {
        aya_log::Level::Debug
    } else {
        aya_log::Level::Warn
    };
    let (redirect, logger) = Redirect::install(
        &cgroup,
        &args.pin_path,
        listeners,
        &policy.protected(),
        kernel_log_level,
    )
    .context("cannot attach")?;
    let redirect = Arc::new(redirect);
    if let Some(logger) = logger {
        tokio::spawn(forward_kernel_logs(logger));
    }

    let audit = Audit::start(&policy.settings.audit, policy.settings.audit_format)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&args.state_dir)
        .with_context(|| format!("cannot create state directory {}", args.state_dir.display()))?;
    let fingerprints = Fingerprinter::load_or_create(&args.state_dir.join("fingerprint.key"))?;
    let bindings = Bindings::open(&args.state_dir.join("bindings.jsonl"), MAX_BINDINGS)?;
    let services = policy.services.len();
    let anomalies = Arc::new(Detectors::new(&policy.settings.anomalies));
    if let Some(metrics) = &metrics {
        anomalies
            .register(metrics.registry())
            .context("BUG: anomaly metrics registration")?;
    }
    let store = Arc::new(PolicyStore::new(policy));
    let relay_store = store.clone();
    let stats = Arc::new(Stats::default());
    let relay = Arc::new(Relay {
        store: relay_store,
        audit,
        fingerprints,
        bindings: Arc::new(bindings),
        resolver: Arc::new(Resolver::new(redirect::cgroup2_root()?, {
            let redirect = Arc::downgrade(&redirect);
            Box::new(move |tgid| redirect.upgrade()?.exec_stamp(tgid))
        })),
        anomalies: anomalies.clone(),
        stats: stats.clone(),
        limiter: Limiter::new(),
        connect_timeout,
        metrics: metrics.clone(),
        drain: Drain::default(),
    });
    if let Some(metrics) = &metrics {
        metrics.attach(metrics::Agent {
            redirect: Arc::downgrade(&redirect),
            listeners,
            store: store.clone(),
            connections: stats.clone(),
            audit: relay.audit.stats().clone(),
        });
    }
    // Every task serving connects, so shutdown can end them before the audit is flushed.
    let mut tasks = vec![
        tokio::spawn(anomaly::watch(
            anomalies,
            store.clone(),
            relay.audit.clone(),
        )),
        tokio::spawn(reload::watch(args.policy.clone(), store, redirect.clone())),
    ];
    tasks.push(tokio::spawn(proxy::serve(
        listener4,
        redirect.clone(),
        relay.clone(),
    )));
    if let Some(listener6) = listener6 {
        tasks.push(tokio::spawn(proxy::serve(
            listener6,
            redirect.clone(),
            relay.clone(),
        )));
    }
    // Handlers first: a supervisor may signal as soon as it sees "ready".
    let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt())?;
    // The listeners accept from here on: vouch for the agent, and keep vouching.
    redirect.beat().context("cannot write the heartbeat")?;
    let heartbeat = tokio::spawn(heartbeat(redirect.clone()));
    info!(
        event = "ready",
        cgroup = %redirect.cgroup().display(),
        listen = %listen4,
        listen6 = listen6.map(tracing::field::display),
        metrics = metrics_addr.map(tracing::field::display),
        services,
        pin_path = %args.pin_path.display(),
        adopted = redirect.adopted(),
        startup_ms = started.elapsed().as_millis() as u64,
        open_files,
        "enforcer ready"
    );
    if let Some(metrics) = &metrics {
        metrics.set_ready(true);
    }

    let mut heartbeat = heartbeat;
    let taken_over = tokio::select! {
        _ = sigterm.recv() => { info!("SIGTERM: shutting down"); None }
        _ = sigint.recv() => { info!("SIGINT: shutting down"); None }
        pid = &mut heartbeat => pid.ok(),
    };
    match taken_over {
        // The heartbeat is the other agent's now: leave it alone.
        Some(pid) => error!(
            pid,
            "another agent has taken over the pin path: shutting down"
        ),
        // First of all, so new connects follow their fail mode at once rather than meet a
        // listener that is closing. The programs stay attached for the next agent.
        None => {
            heartbeat.abort();
            let _ = heartbeat.await;
            if let Err(e) = redirect.stop_heartbeat() {
                warn!(error = %e, "heartbeat not cleared: connects may meet a closed listener for 1 s");
            }
        }
    }
    if let Some(metrics) = &metrics {
        metrics.set_ready(false);
    }
    // Closing the listeners stops accepting: until the programs detach, new connects are
    // refused, not let through.
    for task in &tasks {
        task.abort();
    }
    for task in tasks {
        let _ = task.await;
    }
    info!(
        event = "draining",
        connections = relay.drain.connections(),
        timeout_s = drain_timeout.as_secs_f64(),
        "draining connections"
    );
    let drained = tokio::select! {
        r = tokio::time::timeout(drain_timeout, relay.drain.run()) => r.is_ok(),
        _ = sigterm.recv() => false,
        _ = sigint.recv() => false,
    };
    if drained {
        info!(event = "drained", "every connection closed");
    } else {
        warn!(
            event = "drain_cut",
            connections = relay.drain.connections(),
            "drain ended with connections open: they are cut"
        );
    }
    // The writer thread dies with the process: write out what is queued first.
    if !relay.audit.flush(Duration::from_secs(5)) {
        warn!("audit trail not flushed within 5 s: records may be lost");
    }
    let kernel = redirect.counters();
    use std::sync::atomic::Ordering::Relaxed;
    let count = |name| {
        kernel
            .iter()
            .find(|(c, _)| c.name() == name)
            .map_or(0, |(_, n)| *n)
    };
    info!(
        event = "stopped",
        redirected = count("redirected"),
        passed = count("passed"),
        agent_passed = count("agent_passed"),
        lookup_miss = count("lookup_miss"),
        map_full = count("map_full"),
        no_listener = count("no_listener"),
        failed_closed = count("failed_closed"),
        failed_open = count("failed_open"),
        accepted = stats.accepted.load(Relaxed),
        no_record = stats.no_record.load(Relaxed),
        upstream_failed = stats.upstream_failed.load(Relaxed),
        pin_path = %args.pin_path.display(),
        "enforcer stopped; programs stay attached (`enforcer uninstall` removes them)"
    );
    match taken_over {
        Some(pid) => bail!("agent pid {pid} has taken over {}", args.pin_path.display()),
        None => Ok(()),
    }
}

/// Refresh the heartbeat. Runs on the same runtime as the accept loops, so an agent too
/// stuck to run it is also too stuck to serve, and counts as down. Returns the pid of an agent
/// that took over the pin path.
async fn heartbeat(redirect: Arc<Redirect>) -> u32 {
    let mut tick =
        tokio::time::interval(Duration::from_nanos(enforcer_common::HEARTBEAT_INTERVAL_NS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match redirect.beat() {
            Ok(()) => {}
            Err(redirect::Error::TakenOver { pid }) => return pid,
            Err(e) => {
                warn!(error = %e, "heartbeat not written: connects fail over to their fail mode")
            }
        }
    }
}

/// Bind the IPv6 listener: the address given, or [::1] on the IPv4 listener's port. A host
/// without IPv6 runs without it (protected IPv6 destinations are then refused in the kernel).
async fn bind6(
    requested: Option<SocketAddrV6>,
    port4: u16,
) -> anyhow::Result<(Option<TcpListener>, Option<SocketAddrV6>)> {
    let addr = requested.unwrap_or(SocketAddrV6::new(Ipv6Addr::LOCALHOST, port4, 0, 0));
    match TcpListener::bind(addr).await {
        Ok(l) => match l.local_addr()? {
            SocketAddr::V6(a) => Ok((Some(l), Some(a))),
            SocketAddr::V4(_) => unreachable!("bound to an IPv6 address"),
        },
        Err(e) if requested.is_none() && e.kind() == io::ErrorKind::AddrNotAvailable => {
            warn!(error = %e, "no IPv6 loopback: connects to IPv6 destinations will be refused");
            Ok((None, None))
        }
        Err(e) => Err(e).with_context(|| format!("cannot listen on {addr}")),
    }
}

/// Pass the programs' aya-log records to the agent's log.
async fn forward_kernel_logs(logger: redirect::KernelLog) {
    // SAFETY: the logger owns its ring buffer's descriptor and neither closes nor replaces it
    // while registered here.
    let registered = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) };
    let Ok(mut logger) = registered else {
        return warn!("kernel log unavailable");
    };
    loop {
        let Ok(mut guard) = logger.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
