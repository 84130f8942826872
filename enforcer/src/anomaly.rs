//! Anomaly detection: callers behaving unlike themselves.
//!
//! Reports seven kinds, each as `enforcer_anomalies_total{kind, identity}` and one audit record
//! (plus a warn event `event="anomaly"`) per episode, never per request:
//! - `request_burst`, `auth_failure_burst`, `deny_spike`: an identity's count per window (all
//!   requests; credentials missing, invalid or not bound to the caller; denied and would-deny
//!   requests) is at least `minCount` and above `factor` times its own baseline, the moving
//!   average of its past windows. The episode lasts until a window falls below the threshold.
//! - `new_endpoint`: an (identity, service, endpoint) seen for the first time after the
//!   identity's learning window (from its first request). The endpoint is the rule that
//!   decided, or `unmatched`.
//! - `token_reuse`: a token or API key (by keyed fingerprint) presented by an identity other
//!   than the first that presented it; once per (token, other identity) in a row.
//! - `binary_changed`: an executable path whose SHA-256 differs from when the same identity
//!   last called through it.
//! - `evasion_attempt`: an identity's requests refused as evasions ([`EVASIONS`]); an
//!   episode lasts while every tick sees another.
//! - `exec_after_connect`: a request refused because its caller exec'd after connecting (an
//!   attempt to pass for the binary it exec'd); every one, always on.
//!
//! The identity is the first policy identity the caller matches, or `unidentified`: a closed
//! set, as a metric label must be. Work is split so the request path stays cheap:
//! [`Detectors::observe`] only bumps atomic counters and looks a hash up in bounded tables;
//! [`Detectors::tick`], once per [`TICK`] off the request path, closes windows, compares them
//! with baselines and builds the records. Memory is bounded: per-identity state is keyed by
//! policy identity names (at most [`MAX_IDENTITIES`]), and the tables keyed by endpoint, token
//! or executable keep at most [`MAX_PAIRS`], [`MAX_TOKENS`] and [`MAX_BINARIES`] entries of a
//! 64-bit key each, forgetting the oldest first.

use std::{
    collections::{HashMap, VecDeque, hash_map::RandomState},
    hash::{BuildHasher, BuildHasherDefault, Hasher},
    sync::{
        Arc, Mutex, PoisonError, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use prometheus::{IntCounterVec, Opts, Registry};
use tracing::{info, warn};

use crate::{
    audit::{self, AnomalyRecord, Audit, Measure, Record, Verdict},
    credentials::Rejection,
    policy::{Anomalies, Burst},
    reload::PolicyStore,
};

/// How often windows are counted and judged: the resolution of every window.
pub const TICK: Duration = Duration::from_secs(1);
/// Identities tracked. Names come from the policy, so this only limits a policy with more
/// identities than this, or many reloads that rename them.
pub const MAX_IDENTITIES: usize = 4096;
/// (identity, service, endpoint) triples remembered: beyond, the oldest learned is forgotten,
/// and reported as new if it comes back. About 0.5 MiB.
pub const MAX_PAIRS: usize = 16_384;
/// Tokens and keys remembered with their first identity; beyond, the oldest is forgotten.
pub const MAX_TOKENS: usize = 16_384;
/// (identity, executable) digests remembered; beyond, the oldest is forgotten.
pub const MAX_BINARIES: usize = 4096;
/// Anomalies found on the request path waiting for the next tick; beyond, they are counted in
/// `lost` and logged, not reported one by one.
const MAX_PENDING: usize = 1024;
/// Weight of the newest window in the baseline: it follows about the last 1/ALPHA = 5
/// windows, so a lasting change of load becomes the new normal within a minute at 10 s.
const ALPHA: f64 = 0.2;
/// The identity label of a caller that matches no policy identity.
pub const UNIDENTIFIED: &str = "unidentified";
/// The endpoint of a request no rule decided.
const UNMATCHED: &str = "unmatched";
/// Records whose reason says the credential failed authentication: missing, invalid, or
/// presented by a caller it is not bound to. Scope and claim mismatches are authorisation, and
/// count as denials only.
const AUTH_FAILURES: [Rejection; 3] = [Rejection::Missing, Rejection::Invalid, Rejection::NotBound];
/// Record reasons that say a request was refused for a form that would have reached the
/// upstream as something other than what was decided: no client sends these by mistake.
const EVASIONS: [&str; 6] = [
    "lookalike header",
    "lookalike query parameter",
    "method override",
    "host not allowed",
    "host does not match destination",
    "unexpected upgrade",
];

/// What an anomaly is (the `kind` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    RequestBurst,
    AuthFailureBurst,
    NewEndpoint,
    TokenReuse,
    DenySpike,
    BinaryChanged,
    EvasionAttempt,
    ExecAfterConnect,
}

/// The rate detectors, in the order of [`Tracked::counts`].
const RATES: [Kind; 3] = [Kind::RequestBurst, Kind::AuthFailureBurst, Kind::DenySpike];

/// The anomaly detectors, shared by every connection task and the ticking task.
pub struct Detectors {
    identities: RwLock<HashMap<Arc<str>, Arc<Tracked>>>,
    /// Set once the identity table is full, so that is logged once.
    identities_full: AtomicBool,
    pairs: Mutex<Bounded<()>>,
    tokens: Mutex<Bounded<TokenSeen>>,
    /// The digest last seen per (identity, executable).
    binaries: Mutex<Bounded<Arc<str>>>,
    pending: Mutex<Vec<Finding>>,
    /// Findings dropped because `pending` was full.
    lost: AtomicU64,
    /// Keys the tables' hashes, so that no caller can choose colliding names.
    keys: RandomState,
    unmatched: Arc<str>,
    /// Which request-path detectors are on; [`Detectors::tick`] follows the policy.
    new_endpoint: AtomicBool,
    token_reuse: AtomicBool,
    binary_changed: AtomicBool,
    evasion_attempt: AtomicBool,
    anomalies_total: IntCounterVec,
}

/// One identity's counters and windows.
struct Tracked {
    name: Arc<str>,
    /// Requests, authentication failures and denials since the last tick (see [`RATES`]).
    counts: [AtomicU64; 3],
    first_seen: Instant,
    /// Still within its `new_endpoint` learning window.
    learning: AtomicBool,
    /// Only the ticking task takes this.
    rates: Mutex<[Rate; 3]>,
    /// Evasion attempts since the last tick, and the index in [`EVASIONS`] of the latest.
    evasions: AtomicU64,
    evasion: AtomicU64,
    /// The last tick saw an evasion attempt: the next one is the same episode.
    evasion_episode: AtomicBool,
}

/// A rate detector's state for one identity.
#[derive(Debug, Default, Clone, PartialEq)]
struct Rate {
    count: u64,
    elapsed: Duration,
    /// Moving average of past windows; `None` before the first window closed.
    baseline: Option<f64>,
    /// The last window was anomalous: the next one is the same episode.
    episode: bool,
}

/// A window that begins an episode.
#[derive(Debug, PartialEq)]
struct Window {
    count: u64,
    threshold: u64,
    baseline: f64,
}

struct TokenSeen {
    first: Arc<str>,
    /// The other identity last reported, so one that keeps using the token is one episode.
    reported: Option<Arc<str>>,
}

/// An anomaly the request path found, reported at the next tick.
enum Finding {
    NewEndpoint {
        identity: Arc<str>,
        service: Arc<str>,
        endpoint: Arc<str>,
        request_id: String,
    },
    TokenReuse {
        identity: Arc<str>,
        first: Arc<str>,
        credential: Arc<str>,
        fingerprint: Arc<str>,
        request_id: String,
    },
    BinaryChanged {
        identity: Arc<str>,
        exe: Arc<str>,
        previous: Arc<str>,
        current: Arc<str>,
        request_id: String,
    },
    ExecAfterConnect {
        identity: Arc<str>,
        tgid: u32,
        request_id: String,
    },
}

/// A map of 64-bit keys that forgets its oldest entry when full.
struct Bounded<V> {
    map: HashMap<u64, V, BuildHasherDefault<KeyIsHash>>,
    order: VecDeque<u64>,
    cap: usize,
}

// === impl Kind ===

impl Kind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::RequestBurst => "request_burst",
            Kind::AuthFailureBurst => "auth_failure_burst",
            Kind::NewEndpoint => "new_endpoint",
            Kind::TokenReuse => "token_reuse",
            Kind::DenySpike => "deny_spike",
            Kind::BinaryChanged => "binary_changed",
            Kind::EvasionAttempt => "evasion_attempt",
            Kind::ExecAfterConnect => "exec_after_connect",
        }
    }
}

// === impl Detectors ===

impl Detectors {
    pub fn new(config: &Anomalies) -> Self {
        // Fails only on an invalid name or label, and these are constants.
        let anomalies_total = IntCounterVec::new(
            Opts::new(
                "enforcer_anomalies_total",
                "Anomaly episodes detected, by kind and policy identity (unstable).",
            ),
            &["kind", "identity"],
        )
        .expect("BUG: constant metric name and labels are valid");
        Self {
            identities: RwLock::default(),
            identities_full: AtomicBool::new(false),
            pairs: Mutex::new(Bounded::new(MAX_PAIRS)),
            tokens: Mutex::new(Bounded::new(MAX_TOKENS)),
            binaries: Mutex::new(Bounded::new(MAX_BINARIES)),
            pending: Mutex::default(),
            lost: AtomicU64::new(0),
            keys: RandomState::new(),
            unmatched: UNMATCHED.into(),
            new_endpoint: AtomicBool::new(config.new_endpoint.is_some()),
            token_reuse: AtomicBool::new(config.token_reuse),
            binary_changed: AtomicBool::new(config.binary_changed),
            evasion_attempt: AtomicBool::new(config.evasion_attempt),
            anomalies_total,
        }
    }

    /// Register `enforcer_anomalies_total` in `registry`.
    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.anomalies_total.clone()))
    }

    /// Count one request's record: atomic increments and bounded-table lookups only. What it
    /// reveals is reported at the next [`Detectors::tick`].
    pub fn observe(&self, record: &Record) {
        let name = record.identities.first().map_or(UNIDENTIFIED, |n| &**n);
        let Some(tracked) = self.tracked(name) else {
            return;
        };
        let auth_failure = AUTH_FAILURES.iter().any(|r| r.as_str() == record.reason);
        let denied = matches!(record.decision, Verdict::Deny | Verdict::WouldDeny);
        for (counter, counts) in tracked.counts.iter().zip([true, auth_failure, denied]) {
            if counts {
                counter.fetch_add(1, Relaxed);
            }
        }
        // A malformed request has no endpoint to learn.
        if self.new_endpoint.load(Relaxed) && record.decision != Verdict::Reject {
            self.see_endpoint(&tracked, record);
        }
        if self.token_reuse.load(Relaxed) {
            self.see_token(&tracked, record);
        }
        if self.binary_changed.load(Relaxed) {
            self.see_binary(&tracked, record);
        }
        if self.evasion_attempt.load(Relaxed)
            && let Some(i) = EVASIONS.iter().position(|r| *r == record.reason)
        {
            tracked.evasion.store(i as u64, Relaxed);
            tracked.evasions.fetch_add(1, Relaxed);
        }
        if record.reason == crate::proxy::EXEC_AFTER_CONNECT {
            self.found(Finding::ExecAfterConnect {
                identity: tracked.name.clone(),
                tgid: record.caller.tgid,
                request_id: record.request_id.clone(),
            });
        }
    }

    /// Advance every identity's windows by one [`TICK`] under `config`, and return the
    /// anomalies that begin now, counted in `enforcer_anomalies_total`.
    pub fn tick(&self, config: &Anomalies, now: Instant) -> Vec<AnomalyRecord> {
        self.new_endpoint
            .store(config.new_endpoint.is_some(), Relaxed);
        self.token_reuse.store(config.token_reuse, Relaxed);
        self.binary_changed.store(config.binary_changed, Relaxed);
        self.evasion_attempt.store(config.evasion_attempt, Relaxed);
        let tracked: Vec<_> = read(&self.identities).values().cloned().collect();
        let bursts = [
            config.request_burst,
            config.auth_failure_burst,
            config.deny_spike,
        ];
        let mut found = Vec::new();
        for t in tracked {
            if let Some(learning) = config.new_endpoint
                && now.saturating_duration_since(t.first_seen) >= learning
                && t.learning.swap(false, Relaxed)
            {
                info!(
                    event = "endpoints_learned",
                    identity = %t.name,
                    "new_endpoint: learning window over, new endpoints are reported from now"
                );
            }
            let evasions = t.evasions.swap(0, Relaxed);
            let ongoing = t.evasion_episode.swap(evasions > 0, Relaxed);
            if evasions > 0 && !ongoing {
                let reason = EVASIONS[t.evasion.load(Relaxed) as usize % EVASIONS.len()];
                found.push(evasion_record(&t.name, evasions, reason));
            }
            let mut rates = lock(&t.rates);
            for (i, rate) in rates.iter_mut().enumerate() {
                let count = t.counts[i].swap(0, Relaxed);
                let Some(burst) = &bursts[i] else {
                    *rate = Rate::default();
                    continue;
                };
                if let Some(window) = rate.tick(count, burst) {
                    found.push(rate_record(RATES[i], &t.name, &window, burst));
                }
            }
        }
        let pending = std::mem::take(&mut *lock(&self.pending));
        let learning = config.new_endpoint.unwrap_or_default();
        found.extend(pending.into_iter().map(|f| f.record(learning)));
        for record in &found {
            self.anomalies_total
                .with_label_values(&[record.kind, &*record.identity])
                .inc();
        }
        let lost = self.lost.swap(0, Relaxed);
        if lost > 0 {
            warn!(
                event = "anomalies_lost",
                lost, "anomalies found faster than reported: some were not reported"
            );
        }
        found
    }

    /// The identity's state, created on its first request; `None` once the table is full.
    fn tracked(&self, name: &str) -> Option<Arc<Tracked>> {
        if let Some(t) = read(&self.identities).get(name) {
            return Some(t.clone());
        }
        let mut identities = self
            .identities
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(t) = identities.get(name) {
            return Some(t.clone());
        }
        if identities.len() >= MAX_IDENTITIES {
            if !self.identities_full.swap(true, Relaxed) {
                warn!(
                    identity = name,
                    max = MAX_IDENTITIES,
                    "anomaly detection: identity table full, new identities are not tracked"
                );
            }
            return None;
        }
        let name: Arc<str> = name.into();
        let t = Arc::new(Tracked {
            name: name.clone(),
            counts: Default::default(),
            first_seen: Instant::now(),
            learning: AtomicBool::new(true),
            rates: Mutex::default(),
            evasions: AtomicU64::new(0),
            evasion: AtomicU64::new(0),
            evasion_episode: AtomicBool::new(false),
        });
        identities.insert(name, t.clone());
        Some(t)
    }

    fn see_endpoint(&self, tracked: &Tracked, record: &Record) {
        let endpoint = record.rule.as_ref().unwrap_or(&self.unmatched);
        let key = self
            .keys
            .hash_one((&*tracked.name, &*record.service, &**endpoint));
        {
            let mut pairs = lock(&self.pairs);
            if pairs.map.contains_key(&key) {
                return;
            }
            pairs.insert(key, ());
        }
        if !tracked.learning.load(Relaxed) {
            self.found(Finding::NewEndpoint {
                identity: tracked.name.clone(),
                service: record.service.clone(),
                endpoint: endpoint.clone(),
                request_id: record.request_id.clone(),
            });
        }
    }

    fn see_token(&self, tracked: &Tracked, record: &Record) {
        let Some(credential) = &record.credential else {
            return;
        };
        let key = self.keys.hash_one(&credential.fingerprint);
        let mut tokens = lock(&self.tokens);
        let Some(seen) = tokens.map.get_mut(&key) else {
            tokens.insert(
                key,
                TokenSeen {
                    first: tracked.name.clone(),
                    reported: None,
                },
            );
            return;
        };
        if seen.first == tracked.name || seen.reported.as_ref() == Some(&tracked.name) {
            return;
        }
        seen.reported = Some(tracked.name.clone());
        let first = seen.first.clone();
        drop(tokens);
        self.found(Finding::TokenReuse {
            identity: tracked.name.clone(),
            first,
            credential: credential.name.clone(),
            fingerprint: credential.fingerprint.as_str().into(),
            request_id: record.request_id.clone(),
        });
    }

    fn see_binary(&self, tracked: &Tracked, record: &Record) {
        let (Some(exe), Some(digest)) = (&record.caller.exe, &record.caller.sha256) else {
            return;
        };
        let key = self.keys.hash_one((&*tracked.name, exe));
        let mut binaries = lock(&self.binaries);
        let Some(last) = binaries.map.get_mut(&key) else {
            binaries.insert(key, digest.clone());
            return;
        };
        if last == digest {
            return;
        }
        let previous = std::mem::replace(last, digest.clone());
        drop(binaries);
        self.found(Finding::BinaryChanged {
            identity: tracked.name.clone(),
            exe: exe.as_str().into(),
            previous,
            current: digest.clone(),
            request_id: record.request_id.clone(),
        });
    }

    fn found(&self, finding: Finding) {
        let mut pending = lock(&self.pending);
        if pending.len() < MAX_PENDING {
            pending.push(finding);
        } else {
            self.lost.fetch_add(1, Relaxed);
        }
    }
}

/// Run the detectors' clock until the task is dropped: every [`TICK`], judge the windows under
/// the current policy's `settings.anomalies` and report what begins.
pub async fn watch(detectors: Arc<Detectors>, store: Arc<PolicyStore>, audit: Audit) {
    let mut ticks = tokio::time::interval(TICK);
    // After a stall, carry on from now rather than closing windows in a rush.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let config = store.current().settings.anomalies;
        for record in detectors.tick(&config, Instant::now()) {
            warn!(
                event = "anomaly",
                kind = record.kind,
                identity = %record.identity,
                observed = %record.observed,
                threshold = record.threshold.as_ref().map(tracing::field::display),
                baseline = record.baseline.as_ref().map(tracing::field::display),
                window_s = record.window_s,
                explanation = %record.explanation,
                "anomaly"
            );
            audit.anomaly(record);
        }
    }
}

fn rate_record(kind: Kind, identity: &Arc<str>, w: &Window, burst: &Burst) -> AnomalyRecord {
    let seconds = burst.window.as_secs();
    let what = match kind {
        Kind::RequestBurst => "requests",
        Kind::AuthFailureBurst => {
            "authentication failures (credential missing, invalid or not bound to the caller)"
        }
        _ => "denied requests",
    };
    let explanation = format!(
        "{identity}: {count} {what} in {seconds} s, at least the threshold of {threshold} \
         (minCount {min}, or above {factor}x its baseline of {baseline:.1} per window)",
        count = w.count,
        threshold = w.threshold,
        min = burst.min_count,
        factor = burst.factor(),
        baseline = w.baseline,
    );
    AnomalyRecord {
        window_s: Some(burst.window.as_secs_f64()),
        threshold: Some(Measure::Count(w.threshold)),
        baseline: Some(Measure::Level(w.baseline)),
        ..AnomalyRecord::new(kind, identity.clone(), Measure::Count(w.count), explanation)
    }
}

fn evasion_record(identity: &Arc<str>, count: u64, reason: &str) -> AnomalyRecord {
    let explanation = format!(
        "{identity}: {count} requests refused as evasion attempts in {} s, the latest for \
         `{reason}`",
        TICK.as_secs()
    );
    AnomalyRecord {
        window_s: Some(TICK.as_secs_f64()),
        ..AnomalyRecord::new(
            Kind::EvasionAttempt,
            identity.clone(),
            Measure::Count(count),
            explanation,
        )
    }
}

// === impl Finding ===

impl Finding {
    fn record(self, learning: Duration) -> AnomalyRecord {
        match self {
            Finding::NewEndpoint {
                identity,
                service,
                endpoint,
                request_id,
            } => {
                let explanation = format!(
                    "{identity} called {service} endpoint {endpoint} for the first time, after \
                     its learning window of {} s",
                    learning.as_secs_f64()
                );
                AnomalyRecord {
                    window_s: Some(learning.as_secs_f64()),
                    request_id: Some(request_id),
                    service: Some(service),
                    endpoint: Some(endpoint.clone()),
                    ..AnomalyRecord::new(
                        Kind::NewEndpoint,
                        identity,
                        Measure::Text(endpoint),
                        explanation,
                    )
                }
            }
            Finding::TokenReuse {
                identity,
                first,
                credential,
                fingerprint,
                request_id,
            } => {
                let explanation = format!(
                    "credential {credential} (fingerprint {fingerprint}), first presented by \
                     {first}, was presented by {identity}"
                );
                AnomalyRecord {
                    baseline: Some(Measure::Text(first)),
                    request_id: Some(request_id),
                    fingerprint: Some(fingerprint),
                    ..AnomalyRecord::new(
                        Kind::TokenReuse,
                        identity.clone(),
                        Measure::Text(identity),
                        explanation,
                    )
                }
            }
            Finding::BinaryChanged {
                identity,
                exe,
                previous,
                current,
                request_id,
            } => {
                let explanation = format!(
                    "{exe} calling as {identity} has SHA-256 {current}, not {previous} as when \
                     last seen"
                );
                AnomalyRecord {
                    baseline: Some(Measure::Text(previous)),
                    request_id: Some(request_id),
                    exe: Some(exe),
                    ..AnomalyRecord::new(
                        Kind::BinaryChanged,
                        identity,
                        Measure::Text(current),
                        explanation,
                    )
                }
            }
            Finding::ExecAfterConnect {
                identity,
                tgid,
                request_id,
            } => {
                let explanation = format!(
                    "process {tgid} exec'd after its connect and sent a request on it: refused"
                );
                AnomalyRecord {
                    request_id: Some(request_id),
                    ..AnomalyRecord::new(
                        Kind::ExecAfterConnect,
                        identity,
                        Measure::Text(tgid.to_string().into()),
                        explanation,
                    )
                }
            }
        }
    }
}

// === impl AnomalyRecord ===

impl AnomalyRecord {
    fn new(kind: Kind, identity: Arc<str>, observed: Measure, explanation: String) -> Self {
        Self {
            time: audit::now(),
            record: "anomaly",
            kind: kind.as_str(),
            identity,
            observed,
            threshold: None,
            baseline: None,
            window_s: None,
            explanation,
            request_id: None,
            service: None,
            endpoint: None,
            fingerprint: None,
            exe: None,
        }
    }
}

// === impl Rate ===

impl Rate {
    /// Add one tick's count; when that ends a window, judge the window against the baseline
    /// so far, then fold it into the baseline. Returns the window if it begins an episode.
    fn tick(&mut self, count: u64, burst: &Burst) -> Option<Window> {
        self.count = self.count.saturating_add(count);
        self.elapsed += TICK;
        if self.elapsed < burst.window {
            return None;
        }
        let count = std::mem::take(&mut self.count);
        self.elapsed = Duration::ZERO;
        // A new identity's first window is held to `minCount` alone.
        let baseline = self.baseline.unwrap_or(0.0);
        let threshold = threshold(burst, baseline);
        let anomalous = count >= threshold;
        self.baseline = Some(match self.baseline {
            // The first window may be partial; it is still the best guess there is.
            None => count as f64,
            Some(b) => b + ALPHA * (count as f64 - b),
        });
        let begins = anomalous && !self.episode;
        self.episode = anomalous;
        begins.then_some(Window {
            count,
            threshold,
            baseline,
        })
    }
}

/// The smallest anomalous count: at least `minCount`, and above `factor` × `baseline`.
fn threshold(burst: &Burst, baseline: f64) -> u64 {
    let above = (burst.factor() * baseline).floor() as u64 + 1;
    above.max(burst.min_count)
}

// === impl Bounded ===

impl<V> Bounded<V> {
    fn new(cap: usize) -> Self {
        Self {
            map: HashMap::default(),
            order: VecDeque::new(),
            cap,
        }
    }

    /// Insert a key not in the map, forgetting the oldest entry if full.
    fn insert(&mut self, key: u64, value: V) {
        if self.map.len() >= self.cap
            && let Some(oldest) = self.order.pop_front()
        {
            self.map.remove(&oldest);
        }
        self.map.insert(key, value);
        self.order.push_back(key);
    }
}

/// The tables' keys are already keyed hashes: hashing them again would only cost time.
#[derive(Default)]
struct KeyIsHash(u64);

impl Hasher for KeyIsHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, key: u64) {
        self.0 = key;
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys come here; anything else still gets a usable hash.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The tables stay consistent whatever panicked: keep detecting.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
