//! What the agent reports to operators: Prometheus metrics, health and readiness, and a status
//! summary (`/metrics`, `/healthz`, `/readyz`, `/status` on `--metrics-addr`).
//!
//! One [`prometheus::Registry`] holds every family; other modules register theirs into it
//! ([`Metrics::registry`]). Two kinds of families:
//! - recorded on the request path: requests, added latency, upstream errors, authentication
//!   failures, active connections ([`Metrics::record`] from `Relay::finish`);
//! - read at scrape time from counters the agent keeps anyway (kernel per-CPU counters,
//!   accepted connections, policy reloads, the audit trail) by [`Scraped`], so they cost the
//!   request path nothing.
//!
//! Cardinality is bounded by construction: every label value is a policy name (identity, rule,
//! service), a closed enum, or a constant — never a pid, path, address or token. The names,
//! types and labels are documented in `docs/metrics.md`.

mod server;
pub mod status;

use std::{
    fmt, io,
    net::SocketAddr,
    str::FromStr,
    sync::{
        Arc, Mutex, OnceLock, Weak,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::Instant,
};

use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    core::{Collector, Desc},
    proto::MetricFamily,
};

use crate::{
    audit::{self, Record},
    credentials::{ApiKeyError, CredentialError, JwtError},
    proxy,
    redirect::{Listeners, Redirect},
    reload::PolicyStore,
};

pub use self::{
    server::serve,
    status::{Status, fetch_status, fetch_status_json},
};

/// Where the endpoint listens unless told otherwise: loopback only, since `/status` names the
/// policy file and services; a port beside the proxy's 17001 (README, "Ports", says why).
pub const DEFAULT_ADDR: &str = "127.0.0.1:17090";

/// Buckets of `enforcer_added_latency_seconds`: 50 µs (a decision on a warm connection) to 1 s
/// (an upstream connect timing out), about three per decade.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];

/// The value of `commit` in `enforcer_build_info`: `ENFORCER_COMMIT` at build time.
pub const COMMIT: &str = match option_env!("ENFORCER_COMMIT") {
    Some(c) => c,
    None => "unknown",
};

/// `--metrics-addr`: an address, or `off` for no endpoint and no recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Off,
    At(SocketAddr),
}

#[derive(Debug, thiserror::Error)]
#[error("`{0}` is neither an address (IP:PORT) nor `off`")]
pub struct EndpointError(String);

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "off" {
            return Ok(Endpoint::Off);
        }
        s.parse()
            .map(Endpoint::At)
            .map_err(|_| EndpointError(s.into()))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Off => f.write_str("off"),
            Endpoint::At(a) => a.fmt(f),
        }
    }
}

/// Why a caller's credential was refused: the `reason` of `enforcer_auth_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthFailure {
    /// No credential presented.
    Missing,
    /// Malformed, badly signed, unknown key, wrong issuer or audience, unknown API key.
    Invalid,
    Expired,
    NotYetValid,
    /// Valid, without a scope the rule requires.
    Scope,
    /// Valid, a claim without the value the rule requires.
    Claim,
    /// Valid, bound to another caller (policy binding or bind-on-first-use).
    Binding,
    /// The keys to verify it are not available.
    KeysUnavailable,
}

impl AuthFailure {
    pub fn of(error: &CredentialError) -> Self {
        match error {
            CredentialError::Jwt(JwtError::Missing)
            | CredentialError::ApiKey(ApiKeyError::Missing { .. }) => AuthFailure::Missing,
            CredentialError::Jwt(JwtError::Expired { .. })
            | CredentialError::ApiKey(ApiKeyError::Expired { .. }) => AuthFailure::Expired,
            CredentialError::Jwt(JwtError::NotYetValid { .. })
            | CredentialError::ApiKey(ApiKeyError::NotYetValid { .. }) => AuthFailure::NotYetValid,
            CredentialError::Jwt(JwtError::KeysUnavailable { .. }) => AuthFailure::KeysUnavailable,
            CredentialError::Jwt(_) | CredentialError::ApiKey(_) => AuthFailure::Invalid,
            CredentialError::InsufficientScope { .. } => AuthFailure::Scope,
            CredentialError::ClaimMismatch { .. } => AuthFailure::Claim,
            CredentialError::NotBound { .. } => AuthFailure::Binding,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Invalid => "invalid",
            AuthFailure::Expired => "expired",
            AuthFailure::NotYetValid => "not_yet_valid",
            AuthFailure::Scope => "scope",
            AuthFailure::Claim => "claim",
            AuthFailure::Binding => "binding",
            AuthFailure::KeysUnavailable => "keys_unavailable",
        }
    }
}

/// How an upstream failed a request or connection: the `kind` of
/// `enforcer_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamError {
    /// The connect was refused or failed.
    Connect,
    /// The connect, or the wait for the response, timed out.
    Timeout,
    /// The connection broke: reset, or closed before the response ended.
    Reset,
    /// The response was not valid HTTP/1.1 (head or body framing).
    Protocol,
}

impl UpstreamError {
    /// A failed connect.
    pub fn of_connect(e: &io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::TimedOut => UpstreamError::Timeout,
            _ => UpstreamError::Connect,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            UpstreamError::Connect => "connect",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Reset => "reset",
            UpstreamError::Protocol => "protocol",
        }
    }
}

/// Why a connection reaching the listener was reset before it was served: the `reason` of
/// `enforcer_connections_rejected_total`.
const REJECTED_NO_RECORD: &str = "no_record";

/// The families recorded on the request path, and the registry every family is in.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    added_latency: HistogramVec,
    upstream_errors: IntCounterVec,
    auth_failures: IntCounterVec,
    connections_active: IntGauge,
    /// What scrape-time families and `/status` read; set once the agent is up.
    agent: Arc<OnceLock<Agent>>,
    ready: AtomicBool,
    started: Instant,
}

/// The parts of the running agent the endpoint reads.
pub struct Agent {
    /// Weak: shutdown takes the redirect back to detach the programs.
    pub redirect: Weak<Redirect>,
    pub listeners: Listeners,
    pub store: Arc<PolicyStore>,
    pub connections: Arc<proxy::Stats>,
    pub audit: Arc<audit::Stats>,
}

/// An open redirected connection, counted in `enforcer_connections_active` until dropped.
pub struct Active(IntGauge);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.dec();
    }
}

// === impl Metrics ===

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let build = IntGaugeVec::new(
            Opts::new(
                "enforcer_build_info",
                "Always 1; the labels say which build runs.",
            ),
            &["version", "commit"],
        )?;
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION"), COMMIT])
            .set(1);
        registry.register(Box::new(build))?;
        let requests = IntCounterVec::new(
            Opts::new(
                "enforcer_requests_total",
                "HTTP requests decided, by audit decision, deciding rule, first matched \
                 identity and service.",
            ),
            &["decision", "rule", "identity", "service"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        let added_latency = HistogramVec::new(
            HistogramOpts::new(
                "enforcer_added_latency_seconds",
                "Time the agent added to a request: from its complete head to it leaving for \
                 the upstream, or to the agent's own answer.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["service"],
        )?;
        registry.register(Box::new(added_latency.clone()))?;
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "enforcer_upstream_errors_total",
                "Requests (http) or connections (tcp) the upstream failed, by kind.",
            ),
            &["service", "kind"],
        )?;
        registry.register(Box::new(upstream_errors.clone()))?;
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "enforcer_auth_failures_total",
                "Requests refused because of the caller's credential, by reason.",
            ),
            &["reason", "identity"],
        )?;
        registry.register(Box::new(auth_failures.clone()))?;
        let connections_active = IntGauge::new(
            "enforcer_connections_active",
            "Redirected connections being served.",
        )?;
        registry.register(Box::new(connections_active.clone()))?;
        let agent = Arc::new(OnceLock::new());
        registry.register(Box::new(Scraped::new(agent.clone())?))?;
        // The standard `process_*` families (CPU, memory, descriptors, start time), read from
        // /proc/self at scrape time.
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Self {
            registry,
            requests,
            added_latency,
            upstream_errors,
            auth_failures,
            connections_active,
            agent,
            ready: AtomicBool::new(false),
            started: Instant::now(),
        })
    }

    /// The registry every family is in: register other components' families here.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Connect the scrape-time families and `/status` to the running agent. Once; later
    /// calls are ignored.
    pub fn attach(&self, agent: Agent) {
        let _ = self.agent.set(agent);
    }

    /// `/readyz` answers 200 from now on (programs attached, policy loaded, listeners bound)
    /// until `false` (shutting down).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Relaxed) && self.agent.get().is_some()
    }

    /// Count one request from its audit record.
    pub fn record(&self, record: &Record) {
        let identity = record.identities.first().map_or("unidentified", |i| i);
        let rule = record.rule.as_deref().unwrap_or("none");
        let service: &str = &record.service;
        self.requests
            .with_label_values(&[decision(record.decision), rule, identity, service])
            .inc();
        self.added_latency
            .with_label_values(&[service])
            .observe(record.added_latency_us as f64 / 1e6);
        if let Some(failure) = record.auth_failure {
            self.auth_failures
                .with_label_values(&[failure.as_str(), identity])
                .inc();
        }
        if let Some(kind) = record.upstream_error {
            self.upstream_error(service, kind);
        }
    }

    /// Count an upstream failure outside a request (a `tcp` service's connect).
    pub fn upstream_error(&self, service: &str, kind: UpstreamError) {
        self.upstream_errors
            .with_label_values(&[service, kind.as_str()])
            .inc();
    }

    /// A redirected connection is being served until the returned guard drops.
    pub fn connection_opened(&self) -> Active {
        self.connections_active.inc();
        Active(self.connections_active.clone())
    }

    /// Everything in the registry, in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Encoding into a String fails only on a family without metrics or with a bad name,
        // which registration has ruled out; report it in the body rather than panic.
        if let Err(e) =
            prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut text)
        {
            text = format!("# BUG: cannot encode metrics: {e}\n");
        }
        text
    }
}

fn decision(v: audit::Verdict) -> &'static str {
    match v {
        audit::Verdict::Allow => "allow",
        audit::Verdict::Deny => "deny",
        audit::Verdict::WouldDeny => "would_deny",
        audit::Verdict::Reject => "reject",
    }
}

/// Families read at scrape time from counters the agent keeps anyway.
struct Scraped {
    agent: Arc<OnceLock<Agent>>,
    /// Each scrape resets and refills the families: one scrape at a time.
    scraping: Mutex<()>,
    kernel: IntCounterVec,
    connections: IntCounterVec,
    rejected: IntCounterVec,
    reloads: IntCounterVec,
    reload_successful: IntGaugeVec,
    reload_times: GaugeVec,
    policy: IntGaugeVec,
    audit_lost: IntCounterVec,
    audit_failures: IntCounterVec,
    audit_dropped: IntCounterVec,
}

/// Why an audit record was lost: the `reason` of `enforcer_audit_records_lost_total`.
const LOST_QUEUE_FULL: &str = "queue_full";
const LOST_WRITE_ERROR: &str = "write_error";

// === impl Scraped ===

impl Scraped {
    fn new(agent: Arc<OnceLock<Agent>>) -> Result<Self, prometheus::Error> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
        };
        Ok(Self {
            agent,
            scraping: Mutex::new(()),
            kernel: counter(
                "enforcer_kernel_connects_total",
                "Connects seen by the kernel programs (per-CPU map counters, summed), by result.",
                &["result"],
            )?,
            connections: counter(
                "enforcer_connections_total",
                "Redirected connections accepted and matched to their kernel record.",
                &[],
            )?,
            rejected: counter(
                "enforcer_connections_rejected_total",
                "Connections reset at accept, by reason.",
                &["reason"],
            )?,
            reloads: counter(
                "enforcer_policy_reloads_total",
                "Policy reloads (file change or SIGHUP), by result; a failed one leaves the \
                 previous policy in force.",
                &["result"],
            )?,
            reload_successful: IntGaugeVec::new(
                Opts::new(
                    "enforcer_policy_last_reload_successful",
                    "1 if the last policy reload attempt succeeded (or none was made yet), else \
                     0: the file on disk is not the policy in force.",
                ),
                &[],
            )?,
            reload_times: GaugeVec::new(
                Opts::new(
                    "enforcer_policy_last_reload_timestamp_seconds",
                    "When the policy was last loaded successfully (the initial load counts), or \
                     last attempted, by result (Unix time).",
                ),
                &["result"],
            )?,
            policy: IntGaugeVec::new(
                Opts::new(
                    "enforcer_policy_info",
                    "Always 1; the labels say which policy is in force (hash: first 16 hex \
                     digits of the file's SHA-256).",
                ),
                &["hash", "version", "source"],
            )?,
            audit_lost: counter(
                "enforcer_audit_records_lost_total",
                "Audit records lost, by reason: the writer's queue was full, or the write failed.",
                &["reason"],
            )?,
            audit_failures: counter(
                "enforcer_audit_write_failures_total",
                "Deprecated: enforcer_audit_records_lost_total{reason=\"write_error\"}.",
                &[],
            )?,
            audit_dropped: counter(
                "enforcer_audit_records_dropped_total",
                "Deprecated: sum of enforcer_audit_records_lost_total.",
                &[],
            )?,
        })
    }

    fn families(&self) -> [&dyn Collector; 10] {
        [
            &self.kernel,
            &self.connections,
            &self.rejected,
            &self.reloads,
            &self.reload_successful,
            &self.reload_times,
            &self.policy,
            &self.audit_lost,
            &self.audit_failures,
            &self.audit_dropped,
        ]
    }
}

impl Collector for Scraped {
    fn desc(&self) -> Vec<&Desc> {
        self.families().into_iter().flat_map(|f| f.desc()).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Some(agent) = self.agent.get() else {
            return Vec::new();
        };
        let _scraping = self.scraping.lock().unwrap_or_else(|e| e.into_inner());
        // Reset first: a policy replaced since the last scrape leaves no series behind.
        self.kernel.reset();
        self.reloads.reset();
        self.rejected.reset();
        self.policy.reset();
        self.audit_lost.reset();
        for c in [&self.connections, &self.audit_failures, &self.audit_dropped] {
            c.reset();
        }
        if let Some(redirect) = agent.redirect.upgrade() {
            for (counter, n) in redirect.counters() {
                self.kernel.with_label_values(&[counter.name()]).inc_by(n);
            }
        }
        self.connections
            .with_label_values(&[] as &[&str])
            .inc_by(agent.connections.accepted.load(Relaxed));
        self.rejected
            .with_label_values(&[REJECTED_NO_RECORD])
            .inc_by(agent.connections.no_record.load(Relaxed));
        self.reloads
            .with_label_values(&["success"])
            .inc_by(agent.store.reloads.load(Relaxed));
        self.reloads
            .with_label_values(&["failure"])
            .inc_by(agent.store.failures.load(Relaxed));
        let store = &agent.store;
        self.reload_successful
            .with_label_values(&[] as &[&str])
            .set(i64::from(store.last_reload_successful.load(Relaxed)));
        for (result, ms) in [
            ("success", &store.last_success_ms),
            ("attempt", &store.last_attempt_ms),
        ] {
            self.reload_times
                .with_label_values(&[result])
                .set(ms.load(Relaxed) as f64 / 1e3);
        }
        let current = agent.store.current();
        self.policy
            .with_label_values(&[
                short_hash(current.sha256()),
                &crate::policy::VERSION.to_string(),
                &current.source().display().to_string(),
            ])
            .set(1);
        // `dropped` counts every loss and `write_failures` those of a failed write; the rest
        // found the queue full (or its writer gone). A failure counted between the two loads is
        // clamped so the difference never goes negative.
        let dropped = agent.audit.dropped.load(Relaxed);
        let write_failures = agent.audit.write_failures.load(Relaxed).min(dropped);
        self.audit_lost
            .with_label_values(&[LOST_QUEUE_FULL])
            .inc_by(dropped - write_failures);
        self.audit_lost
            .with_label_values(&[LOST_WRITE_ERROR])
            .inc_by(write_failures);
        self.audit_failures
            .with_label_values(&[] as &[&str])
            .inc_by(write_failures);
        self.audit_dropped
            .with_label_values(&[] as &[&str])
            .inc_by(dropped);
        self.families()
            .into_iter()
            .flat_map(|f| f.collect())
            .collect()
    }
}

/// The policy hash as labels and `/status` show it.
pub fn short_hash(sha256: &str) -> &str {
    sha256.get(..16).unwrap_or(sha256)
}

#[cfg(test)]
mod tests;
