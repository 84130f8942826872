//! The policy: which destinations are protected, which callers may make which HTTP requests to
//! them, and how decisions are reported. Everything not allowed is denied.
//!
//! The file format is documented in `docs/policy.md` (schema: `docs/policy.schema.json`). Here:
//! - [`check`] and [`Policy::load`] parse a file into a [`Policy`] that cannot be invalid. The
//!   parser stops at the first syntax or type error; every semantic error is then collected,
//!   each as a [`Diagnostic`] with file, line and column. Host names are resolved once, here.
//! - [`Policy::classify`] matches a caller against every named identity, once per connection.
//! - [`Policy::decide`] decides one request, without allocating (see `matcher.rs`);
//!   [`Policy::decide_with`] also returns what a rule's required credential established
//!   (`crate::credentials`), or why it failed.
//! - [`explain`] says why a hypothetical request would be decided the way it is.

mod bench;
mod caller;
mod check;
mod credential;
mod diagnostic;
mod endpoint;
mod evasion;
mod explain;
mod file;
mod glob;
mod matcher;
mod pattern;

use std::{
    collections::BTreeMap,
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::Deserialize;

use crate::{credentials::Credentials, host::HostAddrs, limits::Rate};

#[doc(hidden)]
pub use self::bench::{Synthetic, synthetic};
#[cfg(test)]
use self::endpoint::Endpoint;
pub use self::{
    caller::IdentitySet,
    diagnostic::Diagnostic,
    endpoint::{Destination, Ports, Prefix},
    evasion::Evasion,
    explain::{Caller, ExplainError, Explanation, Outcome, RuleNote, explain},
    matcher::{Decision, Headers, Reason, Rule, Verdict},
};
use self::{
    caller::{Classifier, IdentityMatcher},
    check::{Resolve, system_resolve},
    endpoint::to_v6,
    matcher::Index,
};

/// The only policy format version this agent reads.
pub const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("policy {}: cannot read", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The first diagnostic, and how many more there are (`enforcer check` lists them all).
    #[error("{}", summary(diagnostics))]
    Invalid { diagnostics: Vec<Diagnostic> },
}

fn summary(diagnostics: &[Diagnostic]) -> String {
    match diagnostics {
        [] => "BUG: invalid policy without a diagnostic".into(),
        [one] => one.to_string(),
        [first, rest @ ..] => format!(
            "{first} (and {} more; `enforcer check {}` lists them)",
            rest.len(),
            first.file.display()
        ),
    }
}

/// A loaded policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub services: BTreeMap<String, Service>,
    pub settings: Settings,
    /// The file it was read from, to point `explain` at rules.
    source: PathBuf,
    identities: Vec<IdentityMatcher>,
    classifier: Classifier,
    rules: Vec<Rule>,
    index: Index,
    /// The credentials rules require, with their verifiers (shared by clones).
    credentials: Arc<Credentials>,
    /// Tells this policy's identity sets from another's (see [`Reason::StaleIdentities`]).
    generation: u64,
    /// SHA-256 of the text it was parsed from (hex), to tell which file is in force.
    sha256: String,
    /// Where the policy leaves a door open (see [`Policy::warnings`]).
    warnings: Vec<Diagnostic>,
}

/// A protected API: connects to any of its endpoints go through the agent.
#[derive(Debug, Clone)]
pub struct Service {
    pub destinations: Vec<Destination>,
    pub protocol: Protocol,
    pub fail_mode: FailMode,
}

/// `failMode`: what the kernel does with a connect to the service while no agent is ready
/// (not started yet, restarting, killed, or hung for more than a second).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// The connect fails at once with ECONNREFUSED: nothing bypasses the policy.
    #[default]
    Closed,
    /// The connect goes to the original destination untouched (and is counted).
    Open,
}

/// How the agent serves a service's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.x, decided request by request.
    #[default]
    Http,
    /// Relayed as a byte stream, unread (TLS, databases): logged per connection, and no rule
    /// can name it.
    Tcp,
}

/// `settings`: how the agent enforces and reports.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Settings {
    pub mode: Mode,
    pub limits: Limits,
    pub audit: AuditSink,
    pub anomalies: Anomalies,
    pub audit_format: AuditFormat,
}

/// Enforce decisions, or only record them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Deny what no rule allows (403).
    #[default]
    Enforce,
    /// Forward what no rule allows, and record it as "would deny".
    Audit,
}

/// `settings.limits`: bounds on what the HTTP layer reads before deciding, and on the
/// resources callers may take (enforced by [`crate::limits`]). The defaults are those of
/// common servers, so requests they accept are not refused here (see `docs/policy.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest request line (method, target, version), in bytes.
    pub max_request_line: usize,
    /// Largest request head (request line and headers), in bytes.
    pub max_head_bytes: usize,
    pub max_headers: usize,
    /// Longest wait for a complete request head.
    pub head_timeout: Duration,
    /// Longest wait for the next request on an idle keep-alive connection.
    pub idle_timeout: Duration,
    /// Connections open at once over all callers. `None`: derived from the agent's open-file
    /// limit ([`crate::limits::Limiter::new`]).
    pub max_connections: Option<usize>,
    /// Connections open at once per identity (see [`crate::limits`] for which identity).
    pub max_connections_per_identity: Option<usize>,
    /// Requests per identity.
    pub rate_per_identity: Option<Rate>,
    /// Longest wait for an upstream to accept a connection.
    pub connect_timeout: Duration,
    /// Longest wait for an upstream's response head once the request is sent in full.
    pub response_timeout: Duration,
    /// Longest wait for the first hash of a caller's executable; then it is decided without
    /// its digest.
    pub hash_timeout: Duration,
}

/// `settings.audit`: where decision records go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AuditSink {
    /// `file: "-"`, or no `audit` section: JSON lines on stdout (the journal, under systemd).
    #[default]
    Stdout,
    /// JSON lines appended to `path`, rotated to `path.1` … `path.KEEP` past `max_bytes`.
    File {
        path: PathBuf,
        max_bytes: u64,
        keep: u32,
    },
}

/// `settings.anomalies`: what the anomaly detectors (`crate::anomaly`) report, and when. A
/// detector set to `None` (or `false`) is off. The defaults are explained in `docs/policy.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anomalies {
    /// Requests per window, against the identity's own baseline.
    pub request_burst: Option<Burst>,
    /// Credentials missing, invalid or not bound to the caller, per window.
    pub auth_failure_burst: Option<Burst>,
    /// Denied (and would-deny) requests per window.
    pub deny_spike: Option<Burst>,
    /// How long an identity's (service, endpoint) pairs are learned, from its first request,
    /// before a pair not seen yet is reported.
    pub new_endpoint: Option<Duration>,
    /// A token or API key presented by a second identity.
    pub token_reuse: bool,
    /// An executable path whose SHA-256 changed under the same identity.
    pub binary_changed: bool,
    /// Requests refused as evasions (look-alikes, overrides, hosts, unasked upgrades).
    pub evasion_attempt: bool,
}

/// A count per window is anomalous when it is at least `min_count` and above `factor` times
/// the identity's baseline (the moving average of its past windows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Burst {
    /// A whole number of seconds, at least 1 (the detectors' clock ticks every second).
    pub window: Duration,
    /// `factor` × 100, so that settings stay `Eq`.
    pub factor_percent: u32,
    pub min_count: u64,
}

/// `settings.audit.format`: how each record is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditFormat {
    /// The agent's own record, one JSON object per line (see `docs/policy.md`).
    #[default]
    Json,
    /// OCSF API Activity (class 6003) events, one per line, for SIEM ingestion.
    Ocsf,
}

/// Numbers a policy is identified by; see [`Policy::generation`].
static GENERATIONS: AtomicU64 = AtomicU64::new(1);

// === impl Policy ===

impl Policy {
    /// Read, parse, check and resolve a policy file. The error holds every diagnostic and
    /// displays the first.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parse, check and resolve policy text; `path` only names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, Error> {
        Self::parse_with(path, text, &system_resolve)
    }

    fn parse_with(path: &Path, text: &str, resolve: Resolve) -> Result<Self, Error> {
        let mut policy = check::compile(path, text, resolve)
            .map_err(|diagnostics| Error::Invalid { diagnostics })?;
        policy.sha256 = crate::identity::sha256_hex(&mut text.as_bytes())
            .expect("reading a byte slice cannot fail");
        Ok(policy)
    }

    fn new(
        source: PathBuf,
        services: BTreeMap<String, Service>,
        settings: Settings,
        identities: Vec<IdentityMatcher>,
        rules: Vec<Rule>,
        credentials: Credentials,
    ) -> Self {
        let index = Index::new(services.keys().map(String::as_str), &rules);
        Self {
            credentials: Arc::new(credentials),
            classifier: Classifier::new(&identities),
            services,
            settings,
            source,
            identities,
            rules,
            index,
            generation: GENERATIONS.fetch_add(1, Ordering::Relaxed),
            sha256: String::new(),
            warnings: Vec::new(),
        }
    }

    /// Every protected destination, with the service it belongs to.
    /// Every protected destination with its service's fail mode: what the kernel is told.
    pub fn protected(&self) -> Vec<(Destination, FailMode)> {
        self.services
            .values()
            .flat_map(|s| s.destinations.iter().map(|d| (*d, s.fail_mode)))
            .collect()
    }

    pub fn destinations(&self) -> impl Iterator<Item = (&str, &Destination)> {
        self.services
            .iter()
            .flat_map(|(name, s)| s.destinations.iter().map(move |d| (name.as_str(), d)))
    }

    /// The service a destination address belongs to, if any: the most specific prefix that
    /// holds it, else, for an address that reaches this host (as the kernel decides it, with
    /// `host`), the local service on that port (`check` refuses two of them on one port).
    pub fn service_for(&self, ip: IpAddr, port: u16, host: &HostAddrs) -> Option<&str> {
        let v6 = to_v6(ip);
        let on_port = || self.destinations().filter(|(_, d)| d.ports.contains(port));
        on_port()
            .filter(|(_, d)| d.prefix.contains(v6))
            .max_by_key(|(_, d)| d.prefix.len)
            .or_else(|| {
                host.is_this_host(ip)
                    .then(|| on_port().find(|(_, d)| d.prefix.reaches_this_host(host)))?
            })
            .map(|(name, _)| name)
    }

    /// The named identities a caller matches. Once per connection: the result serves every
    /// [`Policy::decide`] on it, and lists the names for audit records.
    pub fn classify(&self, identity: &crate::identity::Identity) -> IdentitySet {
        let ids = self.classifier.classify(&self.identities, identity);
        IdentitySet::new(self.generation, ids, &self.identities)
    }

    /// The policy's credentials: to refresh their JWKS files
    /// ([`Credentials::refresh_if_changed`]) and report unavailable keys.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// The rules, in file order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The file the policy was read from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Tells policies apart: a policy loaded later has a greater generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The named identities, in file order.
    pub fn identity_names(&self) -> impl Iterator<Item = &str> {
        self.identities.iter().map(|i| &*i.name)
    }

    /// Where the policy, valid as it is, leaves a way to a protected API unseen (a service
    /// given by host name, `failMode: open`), in file order. `enforcer check` prints them.
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.warnings
    }

    /// Lower-case hex SHA-256 of the policy text, as `sha256sum` prints it for the file.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }
}

/// Read and check a policy file, reporting every error found (`enforcer check`).
pub fn check(path: &Path) -> Result<Policy, Vec<Diagnostic>> {
    match Policy::load(path) {
        Ok(p) => Ok(p),
        Err(Error::Invalid { diagnostics }) => Err(diagnostics),
        Err(Error::Read { path, source }) => Err(vec![Diagnostic {
            file: path,
            line: 0,
            column: 0,
            message: format!("cannot read: {source}"),
        }]),
    }
}

// === impl Mode ===

impl Mode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl Limits ===

impl Default for Limits {
    fn default() -> Self {
        Self {
            // Apache's LimitRequestLine (8190) and nginx's large header buffer (8k).
            max_request_line: 8192,
            // Above what browsers and API clients send; bounds memory per connection.
            max_head_bytes: 64 * 1024,
            // Apache's LimitRequestFields and hyper's default.
            max_headers: 100,
            // Slow-loris bound; a real client sends its head in one round trip.
            head_timeout: Duration::from_secs(10),
            // Near nginx's keepalive_timeout (75 s) and under common load balancers' (60 s).
            idle_timeout: Duration::from_secs(60),
            max_connections: None,
            // Which callers deserve how much is the policy author's call: no default.
            max_connections_per_identity: None,
            rate_per_identity: None,
            // An upstream that has not accepted in 5 s is down or overloaded; the agent's
            // earlier `--connect-timeout` default.
            connect_timeout: Duration::from_secs(5),
            // nginx's proxy_read_timeout and HAProxy's usual `timeout server` (60 s).
            response_timeout: Duration::from_secs(60),
            // Hashing runs at hundreds of MB/s: 5 s covers binaries of a gigabyte or more on a
            // busy host, and is what a caller already waits for an upstream to accept.
            hash_timeout: Duration::from_secs(5),
        }
    }
}

// === impl Anomalies ===

impl Anomalies {
    /// 20 requests/s sustained over 10 s, and 4× the usual: an idle identity's first few calls
    /// are not a burst, and a busy one's daily swing (about 2×) is not either.
    pub const REQUEST_BURST: Burst = Burst {
        window: Duration::from_secs(10),
        factor_percent: 400,
        min_count: 200,
    };
    /// One failure a second for 10 s: above a client retrying an expired token a few times,
    /// well below a credential-stuffing run.
    pub const AUTH_FAILURE_BURST: Burst = Burst {
        window: Duration::from_secs(10),
        factor_percent: 300,
        min_count: 10,
    };
    /// Two denials a second for 10 s: a misconfigured client shows up once, then its baseline
    /// absorbs it; a caller probing endpoints shows up as a spike.
    pub const DENY_SPIKE: Burst = Burst {
        window: Duration::from_secs(10),
        factor_percent: 300,
        min_count: 20,
    };
    /// Long enough to see a service's startup and its first periodic jobs.
    pub const NEW_ENDPOINT_LEARNING: Duration = Duration::from_secs(600);
}

impl Default for Anomalies {
    fn default() -> Self {
        Self {
            request_burst: Some(Self::REQUEST_BURST),
            auth_failure_burst: Some(Self::AUTH_FAILURE_BURST),
            deny_spike: Some(Self::DENY_SPIKE),
            new_endpoint: Some(Self::NEW_ENDPOINT_LEARNING),
            token_reuse: true,
            binary_changed: true,
            evasion_attempt: true,
        }
    }
}

// === impl Burst ===

impl Burst {
    pub fn factor(&self) -> f64 {
        f64::from(self.factor_percent) / 100.0
    }
}

// === impl AuditSink ===

impl AuditSink {
    /// 100 MiB: a day or more of records on a busy host.
    pub const DEFAULT_MAX_BYTES: u64 = 100 * 1024 * 1024;
    /// Rotated files kept besides the current one.
    pub const DEFAULT_KEEP: u32 = 5;
}

#[cfg(test)]
mod tests;
