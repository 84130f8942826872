//! enforcer: host-level API traffic enforcer. See README.md and DESIGN.md.

use std::{
    io::{self, IsTerminal as _},
    net::{Ipv6Addr, SocketAddr, SocketAddrV6},
    os::unix::fs::DirBuilderExt as _,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Parser as _;
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
    cli::{Cli, Command, ExplainArgs, LogFormat, LogLevel, Output, RunArgs},
    credentials::{Fingerprinter, SourceMetrics},
    host::{self, HostAddrs},
    identity::Resolver,
    limits::{self, Limiter},
    metrics::{self, Metrics, status::AgentFile},
    notify::{self, Notifier},
    policy::{self, Policy},
    proxy,
    proxy::{Drain, Relay, Stats},
    redirect::{self, Listeners, Redirect},
    reload::{self, PolicyStore},
};

fn main() {
    let cli = Cli::parse();
    init_logging(cli.log_format, cli.log_level);
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Check { file, format } => check(&file, format),
        Command::Explain(args) => explain(args),
        Command::Uninstall { pin_path } => uninstall(&pin_path),
        Command::Status {
            metrics_addr,
            runtime_dir,
            output,
        } => status(metrics_addr, &runtime_dir, output),
    };
    if let Err(e) = result {
        eprintln!("enforcer: error: {e:#}");
        std::process::exit(1);
    }
}

/// `--log-level` wins over `ENFORCER_LOG`, which wins over `info`. Colours only on a terminal:
/// journald and `kubectl logs` store what they get, escape codes included.
fn init_logging(format: LogFormat, level: Option<LogLevel>) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(level) => EnvFilter::new(level.as_str()),
        None => EnvFilter::try_from_env("ENFORCER_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(io::stderr().is_terminal())
        .with_writer(io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn check(file: &Path, format: Output) -> anyhow::Result<()> {
    let result = policy::check(file);
    if let Output::Json = format {
        return check_json(file, result);
    }
    match result {
        Ok(p) => {
            for w in p.warnings() {
                println!("warning: {w}");
            }
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

/// `check --format json`, documented in docs/policy.md ("Checking a policy").
fn check_json(file: &Path, result: Result<Policy, Vec<policy::Diagnostic>>) -> anyhow::Result<()> {
    let (services, rules, errors, warnings) = match &result {
        Ok(p) => (
            Some(p.services.len()),
            Some(p.rules().len()),
            &[][..],
            p.warnings(),
        ),
        Err(diagnostics) => (None, None, &diagnostics[..], &[][..]),
    };
    let as_json = |diagnostics: &[policy::Diagnostic]| -> Vec<serde_json::Value> {
        diagnostics
            .iter()
            .map(|d| {
                // Line 0: the file as a whole (it could not be read).
                let at = |n: u64| (n > 0).then_some(n);
                serde_json::json!({
                    "file": d.file.display().to_string(),
                    "line": at(d.line),
                    "column": at(d.column),
                    "message": d.message,
                })
            })
            .collect()
    };
    let report = serde_json::json!({
        "file": file.display().to_string(),
        "valid": result.is_ok(),
        "services": services,
        "rules": rules,
        "errors": as_json(errors),
        "warnings": as_json(warnings),
    });
    println!("{report}");
    if !errors.is_empty() {
        bail!("{} error(s) in {}", errors.len(), file.display());
    }
    Ok(())
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

fn uninstall(pin_path: &Path) -> anyhow::Result<()> {
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

fn status(addr: Option<SocketAddr>, runtime_dir: &Path, output: Output) -> anyhow::Result<()> {
    let addr = match addr {
        Some(addr) => addr,
        None => AgentFile::find(runtime_dir)?,
    };
    match output {
        Output::Text => print!("{}", metrics::fetch_status(addr)?),
        Output::Json => println!("{}", metrics::fetch_status_json(addr)?),
    }
    Ok(())
}

#[tokio::main]
async fn run(args: RunArgs) -> anyhow::Result<()> {
    let started = Instant::now();
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
    let (notifier, watchdog) = supervisor()?;
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
    // Subscribed before the first reading, so no change in between is missed.
    let host_events = host::Subscription::new()?;
    let host_addrs = HostAddrs::read()?;
    let (redirect, logger) = Redirect::install(
        &cgroup,
        &args.pin_path,
        listeners,
        &policy.protected(),
        &host_addrs,
        kernel_log_level,
    )
    .context("cannot attach")?;
    let redirect = Arc::new(redirect);
    let host = Arc::new(host::Addresses::new(host_addrs));
    host::watch(host_events, redirect.clone(), host.clone())?;
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
    let sources = Arc::new(SourceMetrics::new().context("BUG: credential source metrics")?);
    if let Some(metrics) = &metrics {
        anomalies
            .register(metrics.registry())
            .context("BUG: anomaly metrics registration")?;
        sources
            .register(metrics.registry())
            .context("BUG: credential source metrics registration")?;
    }
    let store = Arc::new(PolicyStore::new(policy, sources));
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
        host,
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
    let heartbeat = tokio::spawn(heartbeat(redirect.clone(), watchdog));
    // Ready in every way before the log says so: whoever reads "ready" may ask at once.
    if let Some(metrics) = &metrics {
        metrics.set_ready(true);
    }
    let _published = AgentFile::publish(&args.runtime_dir, metrics_addr)
        .inspect_err(|e| {
            let dir = args.runtime_dir.display();
            warn!(error = %e, "cannot write {dir}/agent.json: `enforcer status` needs --metrics-addr")
        })
        .ok();
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
    if let Some(n) = &notifier {
        n.ready(&format!("enforcing {services} services"));
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
    if let Some(n) = &notifier {
        n.stopping("draining");
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

/// The service manager's notifier (`NOTIFY_SOCKET`), and the watchdog's keep-alive interval
/// with it (`WATCHDOG_USEC`, `WATCHDOG_PID`); both `None` outside systemd's `Type=notify`.
type Watchdog = Option<(Arc<Notifier>, Duration)>;

fn supervisor() -> anyhow::Result<(Option<Arc<Notifier>>, Watchdog)> {
    let var = |name| std::env::var(name).ok();
    let socket = std::env::var_os("NOTIFY_SOCKET");
    let notifier = Notifier::new(socket.as_deref())?.map(Arc::new);
    let every = notify::watchdog_interval(
        var("WATCHDOG_USEC").as_deref(),
        var("WATCHDOG_PID").as_deref(),
        std::process::id(),
    )?;
    let watchdog = notifier.clone().zip(every);
    Ok((notifier, watchdog))
}

/// Refresh the heartbeat. Runs on the same runtime as the accept loops, so an agent too
/// stuck to run it is also too stuck to serve, and counts as down. Returns the pid of an agent
/// that took over the pin path.
///
/// The systemd watchdog is fed here, after a heartbeat written, and nowhere else: a keep-alive
/// then proves that the runtime schedules tasks and that the kernel still sees the agent as up.
/// A thread of its own would keep feeding an agent whose runtime is wedged (and whose
/// connects fail over); a task of its own would keep feeding one whose heartbeat fails.
async fn heartbeat(redirect: Arc<Redirect>, watchdog: Watchdog) -> u32 {
    let mut tick =
        tokio::time::interval(Duration::from_nanos(enforcer_common::HEARTBEAT_INTERVAL_NS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut fed: Option<Instant> = None;
    loop {
        tick.tick().await;
        match redirect.beat() {
            Ok(()) => {
                if let Some((notifier, every)) = &watchdog
                    && fed.is_none_or(|at| at.elapsed() >= *every)
                {
                    notifier.watchdog();
                    fed = Some(Instant::now());
                }
            }
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
