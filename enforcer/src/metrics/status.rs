//! `/status`: what an operator asks first (is it attached, which policy, is traffic flowing),
//! as JSON for `enforcer status`, which renders it as a table.

use std::{
    collections::BTreeMap,
    fmt, fs,
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    sync::atomic::Ordering::Relaxed,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::{COMMIT, Metrics, short_hash};
use crate::policy::Destination;

/// Families whose totals `/status` shows, by one label.
const DECISIONS: (&str, &str) = ("enforcer_requests_total", "decision");
const AUTH_FAILURES: (&str, &str) = ("enforcer_auth_failures_total", "reason");
/// Registered by the anomaly detectors, when they run.
const ANOMALIES: (&str, &str) = ("enforcer_anomalies_total", "kind");
const UPSTREAM_ERRORS: (&str, &str) = ("enforcer_upstream_errors_total", "kind");

#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub commit: String,
    pub ready: bool,
    pub uptime_seconds: u64,
    /// `None` until the programs are attached.
    pub agent: Option<AgentStatus>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AgentStatus {
    pub cgroup: String,
    pub programs: Vec<String>,
    pub listeners: Vec<String>,
    pub policy: PolicyStatus,
    pub connections: ConnectionStatus,
    /// Requests by decision (allow, deny, would_deny, reject).
    pub decisions: BTreeMap<String, u64>,
    pub auth_failures: BTreeMap<String, u64>,
    pub upstream_errors: BTreeMap<String, u64>,
    /// Anomalies by kind.
    pub anomalies: BTreeMap<String, u64>,
    /// Kernel counters by name.
    pub kernel: BTreeMap<String, u64>,
    pub audit: AuditStatus,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PolicyStatus {
    pub source: String,
    pub version: u32,
    /// First 16 hex digits of the file's SHA-256, as in `enforcer_policy_info`.
    pub hash: String,
    pub mode: String,
    pub services: Vec<ServiceStatus>,
    pub rules: usize,
    pub reloads: u64,
    pub reload_failures: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub protocol: String,
    pub destinations: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ConnectionStatus {
    pub active: u64,
    pub total: u64,
    pub rejected: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AuditStatus {
    pub written: u64,
    pub dropped: u64,
    pub write_failures: u64,
}

// === impl Metrics ===

impl Metrics {
    pub fn status(&self) -> Status {
        Status {
            version: env!("CARGO_PKG_VERSION").into(),
            commit: COMMIT.into(),
            ready: self.is_ready(),
            uptime_seconds: self.started.elapsed().as_secs(),
            agent: self.agent.get().map(|agent| self.agent_status(agent)),
        }
    }

    fn agent_status(&self, agent: &super::Agent) -> AgentStatus {
        let families = self.registry.gather();
        let totals = |(family, label): (&str, &str)| {
            let mut by = BTreeMap::new();
            for f in families.iter().filter(|f| f.name() == family) {
                for m in f.get_metric() {
                    let Some(value) = m.get_label().iter().find(|l| l.name() == label) else {
                        continue;
                    };
                    *by.entry(value.value().to_owned()).or_default() +=
                        m.get_counter().get_value() as u64;
                }
            }
            by
        };
        let policy = agent.store.current();
        let redirect = agent.redirect.upgrade();
        let mut listeners = vec![agent.listeners.v4.to_string()];
        listeners.extend(agent.listeners.v6.map(|a| a.to_string()));
        AgentStatus {
            cgroup: redirect
                .as_ref()
                .map(|r| r.cgroup().display().to_string())
                .unwrap_or_default(),
            programs: redirect
                .as_ref()
                .map(|r| r.programs().map(str::to_owned).collect())
                .unwrap_or_default(),
            listeners,
            policy: PolicyStatus {
                source: policy.source().display().to_string(),
                version: crate::policy::VERSION,
                hash: short_hash(policy.sha256()).into(),
                mode: policy.settings.mode.as_str().into(),
                services: policy
                    .services
                    .iter()
                    .map(|(name, s)| ServiceStatus {
                        name: name.clone(),
                        protocol: match s.protocol {
                            crate::policy::Protocol::Http => "http",
                            crate::policy::Protocol::Tcp => "tcp",
                        }
                        .into(),
                        destinations: s.destinations.iter().map(destination).collect(),
                    })
                    .collect(),
                rules: policy.rules().len(),
                reloads: agent.store.reloads.load(Relaxed),
                reload_failures: agent.store.failures.load(Relaxed),
            },
            connections: ConnectionStatus {
                active: self.connections_active.get().max(0) as u64,
                total: agent.connections.accepted.load(Relaxed),
                rejected: agent.connections.no_record.load(Relaxed),
            },
            decisions: totals(DECISIONS),
            auth_failures: totals(AUTH_FAILURES),
            upstream_errors: totals(UPSTREAM_ERRORS),
            anomalies: totals(ANOMALIES),
            kernel: redirect
                .map(|r| {
                    r.counters()
                        .into_iter()
                        .map(|(c, n)| (c.name().to_owned(), n))
                        .collect()
                })
                .unwrap_or_default(),
            audit: AuditStatus {
                written: agent.audit.written.load(Relaxed),
                dropped: agent.audit.dropped.load(Relaxed),
                write_failures: agent.audit.write_failures.load(Relaxed),
            },
        }
    }
}

/// `IP:PORT` for a single host, `PREFIX:PORTS` otherwise, as in the policy's `endpoints`.
fn destination(d: &Destination) -> String {
    let ports = match (d.ports.first, d.ports.last) {
        (a, b) if a == b => a.to_string(),
        (a, b) => format!("{a}-{b}"),
    };
    match (d.prefix.addr.to_ipv4_mapped(), d.prefix.len) {
        (Some(v4), 128) => format!("{v4}:{ports}"),
        (None, 128) => format!("[{}]:{ports}", d.prefix.addr),
        _ => format!("{}:{ports}", d.prefix),
    }
}

/// Where `enforcer run` writes [`AgentFile`] and `enforcer status` looks for it, unless
/// `--runtime-dir` (or systemd's `RUNTIME_DIRECTORY`, which `RuntimeDirectory=enforcer` sets to
/// this same path) says otherwise.
pub const DEFAULT_RUNTIME_DIR: &str = "/run/enforcer";

/// `agent.json` in the runtime directory: which agent runs and where its endpoint is bound.
///
/// It is how `enforcer status` finds the agent without a flag, where the agent binds a pod IP
/// or port 0. A file written after the bind names exactly the bound address; reading the
/// enforcer's listening sockets from /proc instead would need another process's descriptors
/// (CAP_SYS_PTRACE), the right network namespace's /proc/net/tcp{,6}, and a guess at which of
/// its listeners (proxy or metrics) is which.
#[derive(Debug, Serialize, Deserialize)]
pub struct AgentFile {
    pub pid: u32,
    /// `None` with `--metrics-addr off`.
    pub metrics: Option<SocketAddr>,
}

/// A published [`AgentFile`]; dropping it removes the file unless another agent has replaced
/// it meanwhile.
pub struct Published {
    path: PathBuf,
}

impl AgentFile {
    const NAME: &str = "agent.json";

    /// Write this process's file into `dir` (created if missing), atomically: a reader sees the
    /// old file or the new one, never half of it.
    pub fn publish(dir: &Path, metrics: Option<SocketAddr>) -> io::Result<Published> {
        fs::create_dir_all(dir)?;
        let file = AgentFile {
            pid: std::process::id(),
            metrics,
        };
        let path = dir.join(Self::NAME);
        let partial = dir.join(format!(".{}.{}", Self::NAME, file.pid));
        fs::write(
            &partial,
            serde_json::to_vec(&file).map_err(io::Error::other)?,
        )?;
        fs::rename(&partial, &path)?;
        Ok(Published { path })
    }

    /// The metrics address of the agent that published into `dir`, if it still runs.
    pub fn find(dir: &Path) -> Result<SocketAddr, FetchError> {
        let path = dir.join(Self::NAME);
        let text = fs::read(&path).map_err(|source| FetchError::NoAgent {
            path: path.clone(),
            source,
        })?;
        let file: AgentFile =
            serde_json::from_slice(&text).map_err(|source| FetchError::AgentFile {
                path: path.clone(),
                source,
            })?;
        // A pid that crashed away may have been reused: the process must be an enforcer too.
        let comm = |pid: &str| fs::read_to_string(format!("/proc/{pid}/comm")).ok();
        let running = comm(&file.pid.to_string()).is_some_and(|c| Some(c) == comm("self"));
        if !running {
            return Err(FetchError::NotRunning {
                path,
                pid: file.pid,
            });
        }
        file.metrics.ok_or(FetchError::MetricsOff { pid: file.pid })
    }
}

impl Drop for Published {
    fn drop(&mut self) {
        let ours = fs::read(&self.path)
            .ok()
            .and_then(|t| serde_json::from_slice::<AgentFile>(&t).ok())
            .is_some_and(|f| f.pid == std::process::id());
        if ours {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Errors of `enforcer status`.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(
        "no running agent found: cannot read {} (is `enforcer run` up, with this --runtime-dir? \
         --metrics-addr names its endpoint directly)",
        path.display()
    )]
    NoAgent {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: not an agent file", path.display())]
    AgentFile {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{} names agent pid {pid}, which no longer runs", path.display())]
    NotRunning { path: PathBuf, pid: u32 },
    #[error("agent pid {pid} runs with --metrics-addr off: it serves no status")]
    MetricsOff { pid: u32 },
    #[error(
        "cannot reach the agent's metrics endpoint at {addr} (is `enforcer run` up, with this --metrics-addr?)"
    )]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("reading /status from {addr}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("{addr}/status answered {status_line:?}")]
    Status {
        addr: SocketAddr,
        status_line: String,
    },
    #[error("{addr}/status: not a status document")]
    Json {
        addr: SocketAddr,
        #[source]
        source: serde_json::Error,
    },
}

/// Fetch `/status` from a running agent (blocking; for the CLI).
pub fn fetch_status(addr: SocketAddr) -> Result<Status, FetchError> {
    let body = fetch_status_json(addr)?;
    serde_json::from_str(&body).map_err(|source| FetchError::Json { addr, source })
}

/// `/status` from a running agent as it serves it (a JSON document).
pub fn fetch_status_json(addr: SocketAddr) -> Result<String, FetchError> {
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|source| FetchError::Connect { addr, source })?;
    let io = |source| FetchError::Io { addr, source };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream
        .write_all(b"GET /status HTTP/1.1\r\nhost: enforcer\r\nconnection: close\r\n\r\n")
        .map_err(io)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(io)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status_line = head.lines().next().unwrap_or_default();
    if !status_line.starts_with("HTTP/1.1 200 ") {
        return Err(FetchError::Status {
            addr,
            status_line: status_line.into(),
        });
    }
    Ok(body.to_owned())
}

// === impl Status ===

/// The table `enforcer status` prints.
impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let row = |f: &mut fmt::Formatter<'_>, key: &str, value: &dyn fmt::Display| {
            writeln!(f, "{key:<18} {value}")
        };
        row(
            f,
            "agent",
            &format_args!("{} ({})", self.version, self.commit),
        )?;
        row(f, "ready", &if self.ready { "yes" } else { "no" })?;
        row(f, "uptime", &format_args!("{} s", self.uptime_seconds))?;
        let Some(a) = &self.agent else {
            return row(f, "programs", &"not attached yet");
        };
        row(f, "cgroup", &a.cgroup)?;
        row(f, "programs", &a.programs.join(", "))?;
        row(f, "listeners", &a.listeners.join(", "))?;
        let p = &a.policy;
        row(
            f,
            "policy",
            &format_args!("{} (version {}, sha256 {}…)", p.source, p.version, p.hash),
        )?;
        row(
            f,
            "",
            &format_args!(
                "mode {}, {} rules, {} reloads, {} failed reloads",
                p.mode, p.rules, p.reloads, p.reload_failures
            ),
        )?;
        writeln!(f)?;
        writeln!(f, "{:<18} {:<9} DESTINATIONS", "SERVICE", "PROTOCOL")?;
        for s in &p.services {
            writeln!(
                f,
                "{:<18} {:<9} {}",
                s.name,
                s.protocol,
                s.destinations.join(", ")
            )?;
        }
        writeln!(f)?;
        let c = &a.connections;
        row(
            f,
            "connections",
            &format_args!(
                "{} active, {} total, {} rejected",
                c.active, c.total, c.rejected
            ),
        )?;
        let counts = |m: &BTreeMap<String, u64>| {
            if m.is_empty() {
                return "none".to_owned();
            }
            m.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        row(f, "decisions", &counts(&a.decisions))?;
        row(f, "auth failures", &counts(&a.auth_failures))?;
        row(f, "upstream errors", &counts(&a.upstream_errors))?;
        row(f, "anomalies", &counts(&a.anomalies))?;
        row(f, "kernel", &counts(&a.kernel))?;
        row(
            f,
            "audit",
            &format_args!(
                "{} written, {} dropped, {} write failures",
                a.audit.written, a.audit.dropped, a.audit.write_failures
            ),
        )
    }
}
