//! Resource limits (OWASP API4, unrestricted resource consumption): how many connections
//! callers may hold open and how fast they may send requests.
//!
//! Enforces, as the policy's `settings.limits` and rules' `limits` say:
//! - connections open at once over all callers (`maxConnections`) and per identity
//!   (`maxConnectionsPerIdentity`, by default a share of `maxConnections`, smaller for the
//!   callers that match no identity, so no one identity can starve the rest): the proxy resets an excess connection (TCP RST) as soon as
//!   it is accepted, before reading a byte of it;
//! - requests per identity (`ratePerIdentity`) and per rule (`limits.rate`): token buckets;
//!   the proxy answers an excess request 429 with `Retry-After`.
//!
//! A caller counts against the first policy identity it matches (the name records and
//! metrics lead with), or against one slot shared by every caller that matches none: state
//! is bounded by the policy, whatever the host runs. A reload keeps the state of every limit
//! it leaves unchanged, and the open-connection counts of every identity it still names.
//!
//! Reports nothing itself: the proxy writes an audit record for each refusal.

use std::{
    collections::HashMap,
    fmt,
    str::FromStr,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;

use crate::policy::{Policy, Rule};

/// Descriptors kept for the agent's own files (BPF maps, audit trail, policy, key files)
/// when the connection limit is derived from the open-file limit.
const RESERVED_FILES: u64 = 256;

/// Without `maxConnectionsPerIdentity`, an identity may hold this fraction of
/// `maxConnections`: one identity (a runaway or hostile client) can then take at most a
/// quarter of the places, so at least three quarters stay for everyone else, while a single
/// busy identity still gets far more connections than any client pool opens.
pub const DEFAULT_IDENTITY_SHARE: usize = 4;

/// The share, likewise, of every caller that matches no identity, together: they all count
/// against one slot, and anyone on the host can be unidentified, so they get the least.
pub const DEFAULT_UNIDENTIFIED_SHARE: usize = 16;

// === Rate ===

/// A request rate with a burst: `rate` requests per period on average, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    requests: u32,
    period: Duration,
    burst: u32,
}

/// Why a rate does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected requests per unit, such as `100/s`, `600/m` or `1000/h`, at least 1")]
pub struct BadRate;

impl FromStr for Rate {
    type Err = BadRate;

    /// `N/s`, `N/m` or `N/h`, N ≥ 1. The burst defaults to a second's worth of requests (at
    /// least 1): a client may send a second's requests at once, but never more.
    fn from_str(s: &str) -> Result<Self, BadRate> {
        let (n, unit) = s.split_once('/').ok_or(BadRate)?;
        let requests: u32 = n.parse().map_err(|_| BadRate)?;
        let period = match unit {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(BadRate),
        };
        if requests == 0 || !n.bytes().all(|b| b.is_ascii_digit()) {
            return Err(BadRate);
        }
        let per_second = u64::from(requests).div_ceil(period.as_secs()).max(1);
        Ok(Self {
            requests,
            period,
            burst: u32::try_from(per_second).unwrap_or(u32::MAX),
        })
    }
}

impl Rate {
    /// The same rate with another burst (at least 1).
    pub fn with_burst(self, burst: u32) -> Self {
        Self {
            burst: burst.max(1),
            ..self
        }
    }

    /// Time between two requests at the sustained rate.
    fn interval_ns(&self) -> u64 {
        (self.period.as_nanos() as u64 / u64::from(self.requests)).max(1)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.period.as_secs() {
            1 => "s",
            60 => "m",
            _ => "h",
        };
        write!(f, "{}/{unit} (burst {})", self.requests, self.burst)
    }
}

/// A rule's `limits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RuleLimits {
    /// Requests the rule allows, over all its callers together.
    pub rate: Option<Rate>,
    /// Largest request body the rule allows, in bytes.
    pub max_body_bytes: Option<u64>,
}

// === Bucket ===

/// A token bucket, in its GCRA form: one atomic "theoretical arrival time" instead of a token
/// count and a refill time, so taking a token is a single compare-and-swap, without a lock.
#[derive(Debug)]
pub struct Bucket {
    rate: Rate,
    /// When the bucket will be full again, in ns of [`now_ns`]'s clock.
    full_at: AtomicU64,
}

impl Bucket {
    fn new(rate: Rate) -> Self {
        Self {
            rate,
            full_at: AtomicU64::new(0),
        }
    }

    /// Take a token at `now` (ns). `Err`: the bucket is empty; the time until the next token.
    pub fn take(&self, now: u64) -> Result<(), Duration> {
        let interval = self.rate.interval_ns();
        let capacity = interval.saturating_mul(u64::from(self.rate.burst));
        let mut full_at = self.full_at.load(Relaxed);
        loop {
            let next = full_at.max(now).saturating_add(interval);
            let debt = next - now;
            if debt > capacity {
                return Err(Duration::from_nanos(debt - capacity));
            }
            match self
                .full_at
                .compare_exchange_weak(full_at, next, Relaxed, Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(actual) => full_at = actual,
            }
        }
    }
}

/// The buckets' clock: monotonic nanoseconds since the first call.
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// `Retry-After` for a wait (RFC 9110 §10.2.3: whole seconds), rounded up so a client that
/// waits that long finds a token.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_nanos().div_ceil(1_000_000_000).max(1) as u64
}

// === Limiter ===

/// The limits in force and their state, shared by every connection.
pub struct Limiter {
    /// Connections open now, over all callers.
    open: Arc<AtomicUsize>,
    /// `maxConnections` when the policy sets none (see [`Limiter::new`]).
    default_max_connections: usize,
    tables: ArcSwap<Tables>,
    /// Serialises rebuilds, which happen once per policy.
    rebuild: Mutex<()>,
}

/// One policy's limits with their state.
struct Tables {
    generation: u64,
    /// By identity name; `None`: callers that match no identity.
    identities: HashMap<Option<Arc<str>>, IdentityLimits>,
    /// For a name the table does not hold (none of this policy's): the unidentified limits.
    unmatched: IdentityLimits,
    rules: HashMap<Arc<str>, Arc<Bucket>>,
}

/// What limits the connections and requests of one identity.
#[derive(Clone, Default)]
pub struct IdentityLimits {
    /// The identity's open connections (kept across reloads).
    open: Arc<AtomicUsize>,
    max_open: Option<usize>,
    bucket: Option<Arc<Bucket>>,
}

/// Holds a place among the open connections; gives it back when dropped.
#[must_use = "the connection counts as open while this lives"]
pub struct ConnPermit {
    open: Arc<AtomicUsize>,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Relaxed);
    }
}

/// Take a place if fewer than `max` are held.
fn admit(open: &Arc<AtomicUsize>, max: usize) -> Option<ConnPermit> {
    open.try_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1))
        .ok()
        .map(|_| ConnPermit { open: open.clone() })
}

impl Limiter {
    /// Without `maxConnections`, the agent stops accepting before it runs out of descriptors:
    /// each connection holds two (client and upstream), and some are kept for its own files.
    /// An accept failing for want of one would stall every caller, not just the one flooding.
    pub fn new() -> Self {
        let files = open_file_limit();
        Self::with_default_max_connections(
            ((files.saturating_sub(RESERVED_FILES)) / 2).max(1) as usize
        )
    }

    fn with_default_max_connections(default_max_connections: usize) -> Self {
        Self {
            open: Arc::default(),
            default_max_connections,
            tables: ArcSwap::from_pointee(Tables {
                generation: 0,
                identities: HashMap::new(),
                unmatched: IdentityLimits::default(),
                rules: HashMap::new(),
            }),
            rebuild: Mutex::new(()),
        }
    }

    /// The limit on connections open at once under `policy`.
    pub fn max_connections(&self, policy: &Policy) -> usize {
        policy
            .settings
            .limits
            .max_connections
            .unwrap_or(self.default_max_connections)
    }

    /// The limit on connections one identity holds open at once under `policy` (`identified`:
    /// the caller matches a policy identity; else the limit of all unidentified callers
    /// together): `maxConnectionsPerIdentity`, or a share of the overall limit
    /// ([`DEFAULT_IDENTITY_SHARE`], [`DEFAULT_UNIDENTIFIED_SHARE`]), at least 1.
    pub fn max_connections_per_identity(&self, policy: &Policy, identified: bool) -> usize {
        if let Some(max) = policy.settings.limits.max_connections_per_identity {
            return max;
        }
        let share = if identified {
            DEFAULT_IDENTITY_SHARE
        } else {
            DEFAULT_UNIDENTIFIED_SHARE
        };
        (self.max_connections(policy) / share).max(1)
    }

    /// Admit a new connection under the overall limit; `None`: refuse it.
    pub fn admit(&self, policy: &Policy) -> Option<ConnPermit> {
        admit(&self.open, self.max_connections(policy))
    }

    /// The limits of the caller whose first matching identity is `first` (`None`: it matches
    /// none).
    pub fn identity(&self, policy: &Policy, first: Option<&Arc<str>>) -> IdentityLimits {
        let tables = self.tables(policy);
        tables
            .identities
            .get(&first.cloned())
            .unwrap_or(&tables.unmatched)
            .clone()
    }

    /// Take a token from `rule`'s bucket, if it has a rate.
    pub fn take_rule(&self, policy: &Policy, rule: &Rule, now: u64) -> Result<(), Duration> {
        if rule.limits().rate.is_none() {
            return Ok(());
        }
        match self.tables(policy).rules.get(rule.shared_id()) {
            Some(bucket) => bucket.take(now),
            None => Ok(()),
        }
    }

    /// The tables for `policy`, built the first time a connection sees it. A connection still
    /// on an older policy uses the newer tables: its limits are the ones in force.
    fn tables(&self, policy: &Policy) -> Arc<Tables> {
        let tables = self.tables.load_full();
        if policy.generation() <= tables.generation {
            return tables;
        }
        let _rebuilding = self.rebuild.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.tables.load_full();
        if policy.generation() <= old.generation {
            return old;
        }
        let max_open = |identified| self.max_connections_per_identity(policy, identified);
        let new = Arc::new(Tables::build(policy, &old, max_open));
        self.tables.store(new.clone());
        new
    }
}

impl Default for Limiter {
    fn default() -> Self {
        Self::new()
    }
}

impl Tables {
    /// The tables of `policy`, keeping `old`'s state where the limit is unchanged.
    /// `max_open(identified)`: the connection limit of an identity, or of the unidentified.
    fn build(policy: &Policy, old: &Tables, max_open: impl Fn(bool) -> usize) -> Self {
        let limits = &policy.settings.limits;
        let mut identities = HashMap::new();
        let names = policy.identity_names().map(|n| Some(Arc::from(n)));
        for name in names.chain([None]) {
            let previous = old.identities.get(&name);
            let bucket = limits.rate_per_identity.map(|rate| {
                previous
                    .and_then(|p| p.bucket.clone())
                    .filter(|b| b.rate == rate)
                    .unwrap_or_else(|| Arc::new(Bucket::new(rate)))
            });
            let entry = IdentityLimits {
                open: previous.map(|p| p.open.clone()).unwrap_or_default(),
                max_open: Some(max_open(name.is_some())),
                bucket,
            };
            identities.insert(name, entry);
        }
        let unmatched = identities.get(&None).cloned().unwrap_or_default();
        let mut rules = HashMap::new();
        for rule in policy.rules() {
            let Some(rate) = rule.limits().rate else {
                continue;
            };
            let bucket = old
                .rules
                .get(rule.shared_id())
                .filter(|b| b.rate == rate)
                .cloned()
                .unwrap_or_else(|| Arc::new(Bucket::new(rate)));
            rules.insert(rule.shared_id().clone(), bucket);
        }
        Self {
            generation: policy.generation(),
            identities,
            unmatched,
            rules,
        }
    }
}

// === impl IdentityLimits ===

impl IdentityLimits {
    /// Admit a connection under the identity's limit; `None`: refuse it.
    pub fn admit(&self) -> Option<ConnPermit> {
        admit(&self.open, self.max_open.unwrap_or(usize::MAX))
    }

    /// Take a token from the identity's bucket, if it has a rate.
    pub fn take(&self, now: u64) -> Result<(), Duration> {
        self.bucket.as_ref().map_or(Ok(()), |b| b.take(now))
    }

    pub fn rate(&self) -> Option<Rate> {
        self.bucket.as_ref().map(|b| b.rate)
    }
}

// === open files ===

/// Raise the soft open-file limit to the hard one: a proxy holds two descriptors per
/// connection, and the usual soft default (1024) would cap it near 500. Returns the limit.
pub fn raise_open_file_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return open_file_limit();
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct it is given. Failing leaves the limit as it was.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) };
    }
    open_file_limit()
}

fn open_file_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    lim.rlim_cur
}

#[cfg(test)]
mod tests;
