//! The agent, built from its configuration and run until it is told to stop.
//!
//! `main.rs` parses the command line into a [`Config`] and calls [`run`]. The phases, in the
//! order they happen:
//! 1. [`Config::from_args`] checks the flags (durations) before anything is touched;
//! 2. [`Agent::start`]: the policy is loaded, the metrics endpoint comes up first (so
//!    `/healthz` answers and `/readyz` says "not yet"), the listeners are bound, the programs
//!    attached (or adopted from the pin path), the state loaded, the proxy's shared context
//!    built and every task spawned; then the heartbeat vouches for the agent and it says
//!    `ready` (log, `/readyz`, systemd);
//! 3. [`Agent::wait`]: until SIGTERM, SIGINT, or another agent taking the pin path over;
//! 4. [`Agent::stop`]: not ready, listeners closed, connections drained within
//!    `--drain-timeout`, the audit trail flushed, a last log line with the counters. The
//!    programs stay attached for the next agent (`enforcer uninstall` removes them).
//!
//! Reports: the `ready`, `draining`, `drained`/`drain_cut` and `stopped` log events.
//! Errors here are the operator's to read, as the CLI prints them: `anyhow` with context.

mod supervisor;
#[cfg(test)]
mod tests;

use std::{
    io,
    net::{Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::unix::fs::DirBuilderExt as _,
    path::PathBuf,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use tokio::{
    io::{Interest, unix::AsyncFd},
    net::TcpListener,
    signal::unix::{Signal, SignalKind},
    task::JoinHandle,
};
use tracing::{error, info, warn};

use crate::{
    anomaly::{self, Detectors},
    audit::Audit,
    binding::{Bindings, MAX_BINDINGS},
    cli::RunArgs,
    credentials::{Fingerprinter, SourceMetrics},
    host::{self, HostAddrs},
    identity::Resolver,
    limits::{self, Limiter},
    metrics::{
        self, Metrics,
        status::{AgentFile, Published},
    },
    notify::Notifier,
    policy::Policy,
    proxy::{self, Drain, Relay, Stats},
    redirect::{self, Listeners, Redirect},
    reload::{self, PolicyStore},
};

/// What `enforcer run` is told, checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub policy: PathBuf,
    /// The cgroup v2 directory enforced; `None`: the cgroup v2 root (the whole host).
    pub cgroup: Option<PathBuf>,
    pub listen: SocketAddrV4,
    pub listen6: Option<SocketAddrV6>,
    /// Overrides the policy's `connectTimeout` (the deprecated `--connect-timeout`).
    pub connect_timeout: Option<Duration>,
    pub drain_timeout: Duration,
    pub state_dir: PathBuf,
    pub pin_path: PathBuf,
    pub metrics_addr: metrics::Endpoint,
    pub runtime_dir: PathBuf,
}

/// A flag `enforcer run` cannot take.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("--connect-timeout must be a positive number of seconds, not {0}")]
    ConnectTimeout(f64),
    #[error("--drain-timeout must be a number of seconds, 0 or more, not {0}")]
    DrainTimeout(f64),
}

impl Config {
    pub fn from_args(args: RunArgs) -> Result<Self, ConfigError> {
        let connect_timeout = match args.connect_timeout {
            None => None,
            Some(secs) if secs > 0.0 && secs.is_finite() => Some(Duration::from_secs_f64(secs)),
            Some(secs) => return Err(ConfigError::ConnectTimeout(secs)),
        };
        if !(args.drain_timeout >= 0.0 && args.drain_timeout.is_finite()) {
            return Err(ConfigError::DrainTimeout(args.drain_timeout));
        }
        Ok(Self {
            policy: args.policy,
            cgroup: args.cgroup,
            listen: args.listen,
            listen6: args.listen6,
            connect_timeout,
            drain_timeout: Duration::from_secs_f64(args.drain_timeout),
            state_dir: args.state_dir,
            pin_path: args.pin_path,
            metrics_addr: args.metrics_addr,
            runtime_dir: args.runtime_dir,
        })
    }
}

/// Run the agent until it is told to stop; `Err` if it could not start, or was taken over.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let mut agent = Agent::start(config).await?;
    let stop = agent.wait().await;
    agent.stop(stop).await
}

/// Why the agent stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM or SIGINT.
    Signal,
    /// Another agent, this pid, has taken over the pin path (and the heartbeat with it).
    TakenOver { pid: u32 },
}

/// A started agent: serving, and ready.
pub struct Agent {
    config: Config,
    redirect: Arc<Redirect>,
    relay: Arc<Relay>,
    stats: Arc<Stats>,
    metrics: Option<Arc<Metrics>>,
    notifier: Option<Arc<Notifier>>,
    /// Every task serving connects or watching a source, so stopping can end them before
    /// the audit is flushed.
    tasks: Vec<JoinHandle<()>>,
    /// `None` once it has ended (its result taken by [`Agent::wait`]).
    heartbeat: Option<JoinHandle<u32>>,
    signals: Signals,
    /// Removed when the agent is dropped.
    _published: Option<Published>,
}

/// SIGTERM and SIGINT, listened for from before "ready": a supervisor may signal as soon as
/// it sees it.
struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn install() -> io::Result<Self> {
        Ok(Self {
            term: tokio::signal::unix::signal(SignalKind::terminate())?,
            int: tokio::signal::unix::signal(SignalKind::interrupt())?,
        })
    }

    /// The next SIGTERM or SIGINT.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

// === impl Agent ===

impl Agent {
    /// Everything up to "ready".
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        let started = Instant::now();
        if let Some(secs) = config.connect_timeout {
            warn!(
                seconds = secs.as_secs_f64(),
                "--connect-timeout is deprecated: set settings.limits.connectTimeout in the \
                 policy; until then the flag overrides it"
            );
        }
        let open_files = limits::raise_open_file_limit();
        let policy = Policy::load(&config.policy)?;
        let (notifier, watchdog) = supervisor::from_env()?;
        let (metrics, metrics_addr) = serve_metrics(config.metrics_addr).await?;
        let cgroup = match &config.cgroup {
            Some(path) => path.clone(),
            None => redirect::cgroup2_root()?,
        };
        let (listener4, listener6, listeners) = bind_listeners(&config).await?;

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
            &config.pin_path,
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
            .create(&config.state_dir)
            .with_context(|| {
                let dir = config.state_dir.display();
                format!("cannot create state directory {dir}")
            })?;
        let fingerprints =
            Fingerprinter::load_or_create(&config.state_dir.join("fingerprint.key"))?;
        let bindings = Bindings::open(&config.state_dir.join("bindings.jsonl"), MAX_BINDINGS)?;
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
        let stats = Arc::new(Stats::default());
        let relay = Arc::new(Relay {
            store: store.clone(),
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
            connect_timeout: config.connect_timeout,
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
        let mut tasks = vec![
            tokio::spawn(anomaly::watch(
                anomalies,
                store.clone(),
                relay.audit.clone(),
            )),
            tokio::spawn(reload::watch(
                config.policy.clone(),
                store,
                redirect.clone(),
            )),
        ];
        for listener in [Some(listener4), listener6].into_iter().flatten() {
            tasks.push(tokio::spawn(proxy::serve(
                listener,
                redirect.clone(),
                relay.clone(),
            )));
        }
        let signals = Signals::install()?;
        // The listeners accept from here on: vouch for the agent, and keep vouching.
        redirect.beat().context("cannot write the heartbeat")?;
        let heartbeat = tokio::spawn(supervisor::heartbeat(redirect.clone(), watchdog));
        // Ready in every way before the log says so: whoever reads "ready" may ask at once.
        if let Some(metrics) = &metrics {
            metrics.set_ready(true);
        }
        let published = AgentFile::publish(&config.runtime_dir, metrics_addr)
            .inspect_err(|e| {
                let dir = config.runtime_dir.display();
                warn!(error = %e, "cannot write {dir}/agent.json: `enforcer status` needs --metrics-addr")
            })
            .ok();
        info!(
            event = "ready",
            cgroup = %redirect.cgroup().display(),
            listen = %listeners.v4,
            listen6 = listeners.v6.map(tracing::field::display),
            metrics = metrics_addr.map(tracing::field::display),
            services,
            pin_path = %config.pin_path.display(),
            adopted = redirect.adopted(),
            startup_ms = started.elapsed().as_millis() as u64,
            open_files,
            "enforcer ready"
        );
        if let Some(n) = &notifier {
            n.ready(&format!("enforcing {services} services"));
        }
        Ok(Self {
            config,
            redirect,
            relay,
            stats,
            metrics,
            notifier,
            tasks,
            heartbeat: Some(heartbeat),
            signals,
            _published: published,
        })
    }

    /// Until a signal, or another agent taking the pin path over.
    pub async fn wait(&mut self) -> Stop {
        let Some(heartbeat) = &mut self.heartbeat else {
            return Stop::Signal;
        };
        let ended = tokio::select! {
            signal = self.signals.next() => {
                info!("{signal}: shutting down");
                return Stop::Signal;
            }
            ended = heartbeat => ended,
        };
        self.heartbeat = None;
        match ended {
            Ok(pid) => Stop::TakenOver { pid },
            // The heartbeat task ends no other way; if it panicked, stop as on a signal
            // rather than serve with nobody vouching.
            Err(e) => {
                error!(error = %e, "BUG: heartbeat task ended: shutting down");
                Stop::Signal
            }
        }
    }

    /// Drain, flush and report; `Err` if the agent was taken over.
    pub async fn stop(mut self, stop: Stop) -> anyhow::Result<()> {
        match stop {
            // The heartbeat is the other agent's now: leave it alone.
            Stop::TakenOver { pid } => error!(
                pid,
                "another agent has taken over the pin path: shutting down"
            ),
            // First of all, so new connects follow their fail mode at once rather than meet
            // a listener that is closing. The programs stay attached for the next agent.
            Stop::Signal => {
                if let Some(heartbeat) = self.heartbeat.take() {
                    heartbeat.abort();
                    let _ = heartbeat.await;
                }
                if let Err(e) = self.redirect.stop_heartbeat() {
                    warn!(error = %e, "heartbeat not cleared: connects may meet a closed listener for 1 s");
                }
            }
        }
        if let Some(metrics) = &self.metrics {
            metrics.set_ready(false);
        }
        if let Some(n) = &self.notifier {
            n.stopping("draining");
        }
        // Closing the listeners stops accepting: until the programs detach, new connects are
        // refused, not let through.
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        self.drain().await;
        // The writer thread dies with the process: write out what is queued first.
        if !self.relay.audit.flush(Duration::from_secs(5)) {
            warn!("audit trail not flushed within 5 s: records may be lost");
        }
        self.log_stopped();
        match stop {
            Stop::TakenOver { pid } => {
                bail!(
                    "agent pid {pid} has taken over {}",
                    self.config.pin_path.display()
                )
            }
            Stop::Signal => Ok(()),
        }
    }

    /// Wait for open connections within `--drain-timeout`; a second signal ends the wait.
    async fn drain(&mut self) {
        let timeout = self.config.drain_timeout;
        let drain = &self.relay.drain;
        info!(
            event = "draining",
            connections = drain.connections(),
            timeout_s = timeout.as_secs_f64(),
            "draining connections"
        );
        let drained = tokio::select! {
            r = tokio::time::timeout(timeout, drain.run()) => r.is_ok(),
            _ = self.signals.next() => false,
        };
        if drained {
            info!(event = "drained", "every connection closed");
        } else {
            warn!(
                event = "drain_cut",
                connections = drain.connections(),
                "drain ended with connections open: they are cut"
            );
        }
    }

    fn log_stopped(&self) {
        let kernel = self.redirect.counters();
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
            accepted = self.stats.accepted.load(Relaxed),
            no_record = self.stats.no_record.load(Relaxed),
            upstream_failed = self.stats.upstream_failed.load(Relaxed),
            pin_path = %self.config.pin_path.display(),
            "enforcer stopped; programs stay attached (`enforcer uninstall` removes them)"
        );
    }
}

/// The metrics endpoint, serving from now on; `None` with `--metrics-addr off`.
async fn serve_metrics(
    endpoint: metrics::Endpoint,
) -> anyhow::Result<(Option<Arc<Metrics>>, Option<SocketAddr>)> {
    match endpoint {
        metrics::Endpoint::Off => Ok((None, None)),
        metrics::Endpoint::At(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (--metrics-addr)"))?;
            let bound = listener.local_addr()?;
            let metrics = Arc::new(Metrics::new().context("BUG: metrics registration")?);
            tokio::spawn(metrics::serve(listener, metrics.clone()));
            Ok((Some(metrics), Some(bound)))
        }
    }
}

/// The listeners the kernel redirects to, and their bound addresses for the programs.
async fn bind_listeners(
    config: &Config,
) -> anyhow::Result<(TcpListener, Option<TcpListener>, Listeners)> {
    let listener4 = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let SocketAddr::V4(listen4) = listener4.local_addr()? else {
        unreachable!("bound to an IPv4 address")
    };
    let (listener6, listen6) = bind6(config.listen6, listen4.port()).await?;
    let listeners = Listeners {
        v4: listen4,
        v6: listen6,
    };
    Ok((listener4, listener6, listeners))
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
