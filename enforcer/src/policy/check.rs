//! From the file as written to a [`Policy`]: every semantic error is collected, with its place.
//!
//! Syntax and type errors come from the parser, which stops at the first; everything it
//! accepts is then checked here, and all problems are reported together, in file order.

use std::{
    collections::{BTreeMap, HashMap},
    io,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde_saphyr::{Location, Spanned};

use super::{
    Anomalies, AuditSink, Burst, Destination, Diagnostic, FailMode, Limits, Mode, Policy, Ports,
    Prefix, Protocol, Service, Settings, VERSION,
    caller::{self, IdentityMatcher},
    credential::{self, Builders},
    diagnostic::Diagnostics,
    endpoint::Endpoint,
    file::{
        AnomaliesFile, AuditFile, BurstFile, Entries, File, IdentityFile, LimitsFile, RuleFile,
        ServiceFile, VersionProbe,
    },
    matcher::{Callers, Rule},
    pattern::{Methods, PathPattern},
};
use crate::{
    host::HostAddrs,
    limits::{Rate, RuleLimits},
};

/// Resolves a host name (for `port`, which getaddrinfo wants) to addresses. Injected, so tests
/// need no DNS.
pub(super) type Resolve<'a> = &'a dyn Fn(&str, u16) -> io::Result<Vec<IpAddr>>;

pub(super) fn system_resolve(host: &str, port: u16) -> io::Result<Vec<IpAddr>> {
    use std::net::ToSocketAddrs as _;
    Ok((host, port).to_socket_addrs()?.map(|a| a.ip()).collect())
}

/// Longest identity name, service name or rule id: they label logs and metrics.
const MAX_NAME: usize = 64;

/// Parse, check and compile policy text; `file` only names it in diagnostics.
pub(super) fn compile(
    file: &Path,
    text: &str,
    resolve: Resolve,
) -> Result<Policy, Vec<Diagnostic>> {
    let mut d = Diagnostics::new(file);
    // Doors the policy leaves open: reported by `check`, never fatal.
    let mut w = Diagnostics::new(file);
    if let Ok(VersionProbe { version: Some(v) }) = serde_saphyr::from_str::<VersionProbe>(text)
        && v.value != VERSION
    {
        unsupported_version(&mut d, &v);
        return Err(d.into_sorted());
    }
    let mut options = serde_saphyr::Options::default();
    // `yes`, `on` and friends are strings, not booleans (YAML 1.2).
    options.strict_booleans = true;
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::Error;
    let parsed: File = match serde_saphyr::from_str_with_options(text, options) {
        Ok(f) => f,
        Err(e) => return Err(vec![d.parser_error(&e)]),
    };
    if parsed.version.value != VERSION {
        unsupported_version(&mut d, &parsed.version);
        return Err(d.into_sorted());
    }

    let settings = settings(&mut d, parsed.settings.unwrap_or_default());
    let identities = identities(&mut d, parsed.identities);
    let mut credentials = credential::credentials(&mut d, parsed.credentials, &identities.by_name);
    let services = services(&mut d, &mut w, parsed.services, resolve);
    let rules = rules(
        &mut d,
        parsed.rules.unwrap_or_default(),
        &identities,
        &services,
        &mut credentials,
    );
    if !d.is_empty() {
        return Err(d.into_sorted());
    }
    let mut policy = Policy::new(
        file.to_owned(),
        services,
        settings,
        identities.list,
        rules,
        credentials.build(),
    );
    policy.warnings = w.into_sorted();
    Ok(policy)
}

fn unsupported_version(d: &mut Diagnostics, v: &Spanned<u32>) {
    d.at(
        &v.referenced,
        format!(
            "unsupported version {} (this agent reads version {VERSION})",
            v.value
        ),
    );
}

/// Check an identity name, service name or rule id (`what`).
pub(super) fn name(d: &mut Diagnostics, what: &str, n: &Spanned<String>) {
    let s = &n.value;
    let valid = !s.is_empty()
        && s.len() <= MAX_NAME
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !valid {
        d.at(
            &n.referenced,
            format!(
                "bad {what} `{s}`: use up to {MAX_NAME} letters, digits, `.`, `_` and `-`, \
                 starting with a letter or digit"
            ),
        );
    }
}

// === settings ===

fn settings(d: &mut Diagnostics, s: super::file::SettingsFile) -> Settings {
    Settings {
        mode: s.mode.unwrap_or_default(),
        limits: limits(d, s.limits.unwrap_or_default()),
        audit_format: s.audit.as_ref().and_then(|a| a.format).unwrap_or_default(),
        audit: s.audit.map_or(AuditSink::Stdout, |a| audit(d, a)),
        anomalies: anomalies(d, s.anomalies.unwrap_or_default()),
    }
}

// === settings.anomalies ===

/// Longest window of a rate detector: its counts are kept per identity, and a longer window
/// would hide a burst in an hour of normal traffic anyway.
const MAX_WINDOW: Duration = Duration::from_secs(3600);
/// Largest `factor`: beyond it a burst could never be told from a baseline of 1.
const MAX_FACTOR: f64 = 1000.0;

fn anomalies(d: &mut Diagnostics, a: AnomaliesFile) -> Anomalies {
    let on = |enabled: Option<bool>| enabled != Some(false);
    let learning = Anomalies::NEW_ENDPOINT_LEARNING;
    Anomalies {
        request_burst: burst(d, a.request_burst, Anomalies::REQUEST_BURST, "requestBurst"),
        auth_failure_burst: burst(
            d,
            a.auth_failure_burst,
            Anomalies::AUTH_FAILURE_BURST,
            "authFailureBurst",
        ),
        deny_spike: burst(d, a.deny_spike, Anomalies::DENY_SPIKE, "denySpike"),
        new_endpoint: match a.new_endpoint {
            None => Some(learning),
            Some(n) if !on(n.enabled) => None,
            Some(n) => Some(timeout(d, n.learning, "newEndpoint.learning", learning)),
        },
        token_reuse: a.token_reuse.is_none_or(|s| on(s.enabled)),
        binary_changed: a.binary_changed.is_none_or(|s| on(s.enabled)),
        evasion_attempt: a.evasion_attempt.is_none_or(|s| on(s.enabled)),
    }
}

/// A rate detector's settings; `None` when turned off.
fn burst(
    d: &mut Diagnostics,
    file: Option<BurstFile>,
    default: Burst,
    field: &str,
) -> Option<Burst> {
    let Some(b) = file else {
        return Some(default);
    };
    if b.enabled == Some(false) {
        return None;
    }
    let window = match b.window {
        None => default.window,
        Some(w) => match duration(&w.value) {
            Ok(t) if t.subsec_nanos() == 0 && t <= MAX_WINDOW => t,
            Ok(_) => {
                d.at(
                    &w.referenced,
                    format!(
                        "bad `{field}.window` `{}`: a whole number of seconds from `1s` to `1h`",
                        w.value
                    ),
                );
                default.window
            }
            Err(why) => {
                d.at(
                    &w.referenced,
                    format!("bad `{field}.window` `{}`: {why}", w.value),
                );
                default.window
            }
        },
    };
    let factor_percent = match b.factor {
        None => default.factor_percent,
        Some(f) if (1.0..=MAX_FACTOR).contains(&f.value) => (f.value * 100.0).round() as u32,
        Some(f) => {
            d.at(
                &f.referenced,
                format!(
                    "bad `{field}.factor` `{}`: a number from 1 to {MAX_FACTOR}",
                    f.value
                ),
            );
            default.factor_percent
        }
    };
    let min_count = match b.min_count {
        None => default.min_count,
        Some(n) if n.value >= 1 => n.value,
        Some(n) => {
            d.at(
                &n.referenced,
                format!("`{field}.minCount` must be at least 1"),
            );
            default.min_count
        }
    };
    Some(Burst {
        window,
        factor_percent,
        min_count,
    })
}

fn limits(d: &mut Diagnostics, l: LimitsFile) -> Limits {
    let default = Limits::default();
    let line_loc = l
        .max_request_line
        .as_ref()
        .or(l.max_head_bytes.as_ref())
        .map(|v| v.referenced);
    let per_identity_loc = l
        .max_connections_per_identity
        .as_ref()
        .map(|v| v.referenced);
    let limits = Limits {
        max_request_line: count(
            d,
            l.max_request_line,
            "maxRequestLine",
            default.max_request_line,
        ),
        max_head_bytes: count(d, l.max_head_bytes, "maxHeadBytes", default.max_head_bytes),
        max_headers: count(d, l.max_headers, "maxHeaders", default.max_headers),
        head_timeout: timeout(d, l.head_timeout, "headTimeout", default.head_timeout),
        idle_timeout: timeout(d, l.idle_timeout, "idleTimeout", default.idle_timeout),
        max_connections: l
            .max_connections
            .map(|v| count(d, Some(v), "maxConnections", 1)),
        max_connections_per_identity: l
            .max_connections_per_identity
            .map(|v| count(d, Some(v), "maxConnectionsPerIdentity", 1)),
        rate_per_identity: rate(
            d,
            l.rate_per_identity,
            l.burst_per_identity,
            ("ratePerIdentity", "burstPerIdentity"),
        ),
        connect_timeout: timeout(
            d,
            l.connect_timeout,
            "connectTimeout",
            default.connect_timeout,
        ),
        response_timeout: timeout(
            d,
            l.response_timeout,
            "responseTimeout",
            default.response_timeout,
        ),
        hash_timeout: timeout(d, l.hash_timeout, "hashTimeout", default.hash_timeout),
    };
    if let (Some(all), Some(each)) = (limits.max_connections, limits.max_connections_per_identity)
        && each > all
        && let Some(loc) = per_identity_loc
    {
        d.at(
            &loc,
            format!(
                "`maxConnectionsPerIdentity` ({each}) exceeds `maxConnections` ({all}): one \
                 identity could then take every connection"
            ),
        );
    }
    if limits.max_request_line > limits.max_head_bytes
        && let Some(loc) = line_loc
    {
        d.at(
            &loc,
            format!(
                "`maxRequestLine` ({}) exceeds `maxHeadBytes` ({}): the request line is part \
                 of the head",
                limits.max_request_line, limits.max_head_bytes
            ),
        );
    }
    limits
}

/// A rate (`fields.0`) and its burst (`fields.1`), which needs a rate.
fn rate(
    d: &mut Diagnostics,
    rate: Option<Spanned<String>>,
    burst: Option<Spanned<u64>>,
    fields: (&str, &str),
) -> Option<Rate> {
    let (rate_field, burst_field) = fields;
    let Some(r) = rate else {
        if let Some(b) = burst {
            d.at(
                &b.referenced,
                format!("`{burst_field}` needs `{rate_field}`: a burst of what rate?"),
            );
        }
        return None;
    };
    let parsed = match r.value.parse::<Rate>() {
        Ok(rate) => rate,
        Err(e) => {
            d.at(
                &r.referenced,
                format!("bad `{rate_field}` `{}`: {e}", r.value),
            );
            return None;
        }
    };
    match burst {
        None => Some(parsed),
        Some(b) => match u32::try_from(b.value) {
            Ok(n) if n > 0 => Some(parsed.with_burst(n)),
            _ => {
                d.at(
                    &b.referenced,
                    format!("`{burst_field}` must be between 1 and {}", u32::MAX),
                );
                None
            }
        },
    }
}

fn count(d: &mut Diagnostics, v: Option<Spanned<u64>>, field: &str, default: usize) -> usize {
    let Some(v) = v else { return default };
    match usize::try_from(v.value) {
        Ok(n) if n > 0 => n,
        _ => {
            d.at(&v.referenced, format!("`{field}` must be at least 1"));
            default
        }
    }
}

fn timeout(
    d: &mut Diagnostics,
    v: Option<Spanned<String>>,
    field: &str,
    default: Duration,
) -> Duration {
    let Some(v) = v else { return default };
    match duration(&v.value) {
        Ok(t) => t,
        Err(why) => {
            d.at(&v.referenced, format!("bad `{field}` `{}`: {why}", v.value));
            default
        }
    }
}

/// `500ms`, `10s`, `2m`, `1h`: a positive whole number and a unit.
pub(super) fn duration(s: &str) -> Result<Duration, &'static str> {
    const WHY: &str = "expected a positive whole number and a unit: `500ms`, `10s`, `2m`, `1h`";
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or(WHY)?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| WHY)?;
    let t = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(WHY),
    };
    if t.is_zero() {
        return Err(WHY);
    }
    Ok(t)
}

fn audit(d: &mut Diagnostics, a: AuditFile) -> AuditSink {
    let Some(file) = a.file.filter(|f| f.value != "-") else {
        for (field, loc) in [
            ("maxBytes", a.max_bytes.as_ref().map(|v| v.referenced)),
            ("keep", a.keep.as_ref().map(|v| v.referenced)),
        ] {
            if let Some(loc) = loc {
                d.at(
                    &loc,
                    format!("`{field}` applies to an audit file, not to stdout (`-`)"),
                );
            }
        }
        return AuditSink::Stdout;
    };
    let path = PathBuf::from(&file.value);
    if !path.is_absolute() {
        d.at(
            &file.referenced,
            format!(
                "audit `file` `{}` must be an absolute path, or `-` for stdout",
                file.value
            ),
        );
    }
    let max_bytes = match a.max_bytes {
        Some(v) if v.value == 0 => {
            d.at(&v.referenced, "`maxBytes` must be at least 1");
            AuditSink::DEFAULT_MAX_BYTES
        }
        Some(v) => v.value,
        None => AuditSink::DEFAULT_MAX_BYTES,
    };
    AuditSink::File {
        path,
        max_bytes,
        keep: a.keep.map_or(AuditSink::DEFAULT_KEEP, |k| k.value),
    }
}

// === identities ===

struct Identities {
    list: Vec<IdentityMatcher>,
    /// Name → index, for every name in the file (even one with errors, so rules naming it are
    /// not reported twice).
    by_name: HashMap<String, u32>,
}

fn identities(d: &mut Diagnostics, entries: Option<Entries<IdentityFile>>) -> Identities {
    let mut out = Identities {
        list: Vec::new(),
        by_name: HashMap::new(),
    };
    for (key, file) in entries.map(|e| e.0).unwrap_or_default() {
        name(d, "identity name", &key);
        if key.value == "*" {
            // `name` reported it; also keep `*` out of the names rules can use.
            continue;
        }
        let m = identity(d, &key, file);
        out.by_name.insert(key.value, out.list.len() as u32);
        out.list.push(m);
    }
    out
}

fn identity(d: &mut Diagnostics, key: &Spanned<String>, f: IdentityFile) -> IdentityMatcher {
    fn attr<T>(
        d: &mut Diagnostics,
        v: Option<Spanned<String>>,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let v = v?;
        parse(&v.value).map_err(|e| d.at(&v.referenced, e)).ok()
    }
    let given = [
        &f.exe,
        &f.sha256,
        &f.user,
        &f.group,
        &f.systemd_unit,
        &f.cgroup,
        &f.container,
    ]
    .iter()
    .any(|a| a.is_some());
    if !given {
        d.at(
            &key.referenced,
            format!(
                "identity `{}` constrains nothing, so it would match every caller: give at least \
                 one of exe, sha256, user, group, systemdUnit, cgroup, container (or use \
                 `from: [\"*\"]` in a rule)",
                key.value
            ),
        );
    }
    IdentityMatcher {
        name: key.value.as_str().into(),
        exe: attr(d, f.exe, caller::exe),
        sha256: attr(d, f.sha256, caller::sha256),
        user: attr(d, f.user, |s| caller::account_of("user", s)),
        group: attr(d, f.group, |s| caller::account_of("group", s)),
        systemd_unit: attr(d, f.systemd_unit, caller::systemd_unit),
        cgroup: attr(d, f.cgroup, caller::cgroup),
        container: attr(d, f.container, caller::container),
        traced: f.traced,
    }
}

// === services ===

fn services(
    d: &mut Diagnostics,
    w: &mut Diagnostics,
    services: Spanned<Option<Entries<ServiceFile>>>,
    resolve: Resolve,
) -> BTreeMap<String, Service> {
    let entries = services.value.map(|e| e.0).unwrap_or_default();
    if entries.is_empty() {
        d.at(
            &services.referenced,
            "no protected destination: `services` is empty",
        );
    }
    let mut map = BTreeMap::new();
    // Ports of the services that listen on this host, with where each was given.
    let mut local: Vec<(String, Ports, Location)> = Vec::new();
    for (key, svc) in entries {
        name(d, "service name", &key);
        let protocol = svc.protocol.unwrap_or_default();
        let fail_mode = svc
            .fail_mode
            .as_ref()
            .map_or_else(FailMode::default, |m| m.value);
        if let Some(mode) = &svc.fail_mode
            && mode.value == FailMode::Open
        {
            w.at(
                &mode.referenced,
                format!(
                    "service `{}` has `failMode: open`: while no agent is ready (starting, \
                     restarting, hung), its connects reach it unseen",
                    key.value
                ),
            );
        }
        let destinations = destinations(d, w, &key, svc, resolve, &mut local);
        map.insert(
            key.value,
            Service {
                destinations,
                protocol,
                fail_mode,
            },
        );
    }
    for (i, (service, ports, at)) in local.iter().enumerate() {
        if let Some((other, other_ports, _)) = local[..i].iter().find(|(other, p, _)| {
            other != service && p.first <= ports.last && ports.first <= p.last
        }) {
            d.at(
                at,
                format!(
                    "services `{other}` and `{service}` both listen on this host, at port \
                     {other_ports} and {ports}: a connect to any local address reaches both, so \
                     they must not share a port"
                ),
            );
        }
    }
    map
}

fn destinations(
    d: &mut Diagnostics,
    w: &mut Diagnostics,
    key: &Spanned<String>,
    svc: ServiceFile,
    resolve: Resolve,
    local: &mut Vec<(String, Ports, Location)>,
) -> Vec<Destination> {
    if svc.endpoints.value.is_empty() {
        d.at(
            &svc.endpoints.referenced,
            format!("service `{}` has no endpoints", key.value),
        );
    }
    let mut out = Vec::new();
    let mut push = |dst: Destination| {
        if !out.contains(&dst) {
            out.push(dst);
        }
    };
    for ep in svc.endpoints.value {
        let mut push = |dst: Destination| {
            // Only what is local on every host: the host's own addresses are the agent's to
            // know, when it runs.
            if dst.prefix.reaches_this_host(&HostAddrs::default())
                && !local
                    .iter()
                    .any(|(s, p, _)| *s == key.value && *p == dst.ports)
            {
                local.push((key.value.clone(), dst.ports, ep.referenced));
            }
            push(dst);
        };
        match ep.value.parse::<Endpoint>() {
            Err(e) => d.at(&ep.referenced, e),
            Ok(Endpoint::Prefix(prefix, ports)) => push(Destination { prefix, ports }),
            Ok(Endpoint::Host(host, ports)) => match resolve(&host, ports.first) {
                Ok(addrs) if addrs.is_empty() => {
                    d.at(
                        &ep.referenced,
                        format!("host `{host}` resolves to no address"),
                    );
                }
                Ok(addrs) => {
                    let shown: Vec<String> = addrs.iter().map(IpAddr::to_string).collect();
                    // A name of this host (`localhost`) is covered at every local address.
                    let remote = addrs
                        .iter()
                        .any(|&ip| !HostAddrs::default().is_this_host(ip));
                    if remote {
                        w.at(
                            &ep.referenced,
                            format!(
                                "endpoint `{}` names a host: only the addresses it resolves to now \
                             ({}) are protected, until the policy is reloaded; other addresses \
                             of the same API are not",
                                ep.value,
                                shown.join(", ")
                            ),
                        );
                    }
                    for ip in addrs {
                        push(Destination {
                            prefix: Prefix::host(ip),
                            ports,
                        });
                    }
                }
                Err(e) => d.at(
                    &ep.referenced,
                    format!("host `{host}` does not resolve: {e}"),
                ),
            },
        }
    }
    out
}

// === rules ===

fn rules(
    d: &mut Diagnostics,
    files: Vec<RuleFile>,
    identities: &Identities,
    services: &BTreeMap<String, Service>,
    credentials: &mut Builders,
) -> Vec<Rule> {
    let mut seen: HashMap<String, Location> = HashMap::new();
    let mut out = Vec::new();
    for f in files {
        name(d, "rule id", &f.id);
        if let Some(first) = seen.get(&f.id.value) {
            d.at(
                &f.id.referenced,
                format!(
                    "duplicate rule id `{}` (first at line {}, column {})",
                    f.id.value,
                    first.line(),
                    first.column()
                ),
            );
        } else {
            seen.insert(f.id.value.clone(), f.id.referenced);
        }
        out.push(rule(d, f, identities, services, credentials));
    }
    out
}

fn rule(
    d: &mut Diagnostics,
    f: RuleFile,
    identities: &Identities,
    services: &BTreeMap<String, Service>,
    credentials: &mut Builders,
) -> Rule {
    let id = &f.id.value;
    // from
    let from = if f.from.value.is_empty() {
        d.at(
            &f.from.referenced,
            format!("rule `{id}`: `from` is empty: name identities, or `\"*\"` for any caller"),
        );
        Callers::Identities(Box::default())
    } else if let Some(star) = f.from.value.iter().find(|n| n.value == "*") {
        if f.from.value.len() > 1 {
            d.at(
                &star.referenced,
                format!("rule `{id}`: `*` already means any caller: list nothing else"),
            );
        }
        Callers::Any
    } else {
        let mut ids = Vec::new();
        for n in &f.from.value {
            match identities.by_name.get(&n.value) {
                Some(&i) => ids.push(i),
                None => d.at(
                    &n.referenced,
                    format!("rule `{id}`: unknown identity `{}`", n.value),
                ),
            }
        }
        ids.sort_unstable();
        ids.dedup();
        Callers::Identities(ids.into())
    };
    // to
    match services.get(&f.to.value) {
        None => d.at(
            &f.to.referenced,
            format!("rule `{id}`: unknown service `{}`", f.to.value),
        ),
        Some(s) if s.protocol == Protocol::Tcp => d.at(
            &f.to.referenced,
            format!(
                "rule `{id}`: service `{}` is `protocol: tcp`: its connections are relayed \
                 unread, so no rule applies to them",
                f.to.value
            ),
        ),
        Some(_) => {}
    }
    // methods
    let mut methods = Methods::default();
    if f.methods.value.is_empty() {
        d.at(
            &f.methods.referenced,
            format!("rule `{id}`: `methods` is empty: list methods, or `\"*\"` for any"),
        );
    }
    for m in &f.methods.value {
        if let Err(why) = methods.add(&m.value) {
            d.at(&m.referenced, format!("rule `{id}`: bad method {why}"));
        }
    }
    // paths
    if f.paths.value.is_empty() {
        d.at(
            &f.paths.referenced,
            format!("rule `{id}`: `paths` is empty: list path patterns, or `\"/**\"` for any"),
        );
    }
    let mut paths = Vec::new();
    for p in &f.paths.value {
        match p.value.parse::<PathPattern>() {
            Ok(p) => paths.push(p),
            Err(why) => d.at(
                &p.referenced,
                format!("rule `{id}`: bad path pattern `{}`: {why}", p.value),
            ),
        }
    }
    // headers
    let mut headers: Vec<(Box<str>, Box<str>)> = Vec::new();
    for (k, v) in f.headers.map(|h| h.0).unwrap_or_default() {
        let lower = k.value.to_ascii_lowercase();
        if !is_token(&k.value) {
            d.at(
                &k.referenced,
                format!("rule `{id}`: `{}` is not a header name", k.value),
            );
        } else if headers.iter().any(|(n, _)| **n == *lower) {
            d.at(
                &k.referenced,
                format!(
                    "rule `{id}`: header `{}` given twice (header names are case-insensitive)",
                    k.value
                ),
            );
        }
        let value_ok = v
            .value
            .bytes()
            .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
            && v.value.trim_matches([' ', '\t']) == v.value;
        if !value_ok {
            d.at(
                &v.referenced,
                format!(
                    "rule `{id}`: header `{}`: the value must be printable ASCII without \
                     surrounding blanks",
                    k.value
                ),
            );
        }
        headers.push((lower.into(), v.value.into()));
    }
    // query
    let mut query = Vec::new();
    for (k, v) in f.query.map(|q| q.0).unwrap_or_default() {
        if k.value.is_empty() {
            d.at(
                &k.referenced,
                format!("rule `{id}`: empty query parameter name"),
            );
        }
        query.push((k.value.into(), v.value.into()));
    }
    // hosts
    let mut hosts: Vec<Box<str>> = Vec::new();
    if let Some(h) = &f.hosts
        && h.value.is_empty()
    {
        d.at(
            &h.referenced,
            format!("rule `{id}`: `hosts` is empty: leave it out for any host"),
        );
    }
    for h in f.hosts.iter().flat_map(|h| &h.value) {
        let lower = h.value.to_ascii_lowercase();
        if !super::evasion::valid_host_pattern(&lower) {
            d.at(
                &h.referenced,
                format!(
                    "rule `{id}`: bad host `{}`: expected an ASCII name, `*.` and a name, or an \
                     IP address, without a port",
                    h.value
                ),
            );
        }
        hosts.push(lower.into());
    }
    // overrides
    let mut overrides: Vec<Box<str>> = Vec::new();
    for o in f.overrides.iter().flatten() {
        let lower = o.value.to_ascii_lowercase();
        if !super::evasion::is_override_header(&lower) {
            d.at(
                &o.referenced,
                format!(
                    "rule `{id}`: `{}` is not a method- or URL-override header (one of {})",
                    o.value,
                    super::evasion::override_header_names()
                ),
            );
        }
        overrides.push(lower.into());
    }
    // websocket
    let websocket = f.websocket.as_ref().is_some_and(|w| w.value);
    if let Some(w) = &f.websocket
        && w.value
        && !methods.contains(super::pattern::Method::new("GET"))
    {
        d.at(
            &w.referenced,
            format!("rule `{id}`: a WebSocket upgrade is a GET request: add GET to `methods`"),
        );
    }
    // require
    let require = f.require.and_then(|r| credentials.requirement(d, id, r));
    // inject
    let inject = f.inject.and_then(|i| injection(d, id, i.value));
    // limits
    let limits = f.limits.map_or_else(RuleLimits::default, |l| RuleLimits {
        rate: rate(d, l.rate, l.burst, ("rate", "burst")),
        max_body_bytes: l.max_body_bytes.map(|v| {
            if v.value == 0 {
                d.at(
                    &v.referenced,
                    format!("rule `{id}`: `maxBodyBytes` must be at least 1"),
                );
            }
            v.value
        }),
    });
    Rule {
        id: Arc::from(id.as_str()),
        from,
        service: Arc::from(f.to.value.as_str()),
        methods,
        paths: paths.into(),
        headers: headers.into(),
        query: query.into(),
        hosts: hosts.into(),
        overrides: overrides.into(),
        websocket,
        mode: f.mode.unwrap_or(Mode::Enforce),
        require,
        inject,
        limits,
        line: f.id.referenced.line(),
        column: f.id.referenced.column(),
    }
}

fn injection(
    d: &mut Diagnostics,
    id: &str,
    f: super::file::InjectFile,
) -> Option<Arc<crate::credentials::Injection>> {
    let header = f.header.value.to_ascii_lowercase();
    if !is_token(&header) {
        d.at(
            &f.header.referenced,
            format!("rule `{id}`: `{}` is not a header name", f.header.value),
        );
        return None;
    }
    if crate::credentials::NOT_INJECTABLE.contains(&header.as_str()) {
        d.at(
            &f.header.referenced,
            format!("rule `{id}`: `{header}` frames or routes the request: it cannot be injected"),
        );
        return None;
    }
    let source = match (f.file, f.oauth2) {
        (Some(file), None) => file,
        (None, Some(oauth2)) => return oauth2_injection(d, id, &header, oauth2),
        (Some(file), Some(_)) => {
            d.at(
                &file.referenced,
                format!("rule `{id}`: `inject` takes either `file` or `oauth2`, not both"),
            );
            return None;
        }
        (None, None) => {
            d.at(
                &f.header.referenced,
                format!("rule `{id}`: `inject` needs `file` or `oauth2` for its value"),
            );
            return None;
        }
    };
    let path = std::path::Path::new(&source.value);
    if !path.is_absolute() {
        d.at(
            &source.referenced,
            format!("rule `{id}`: the file to inject from must be an absolute path"),
        );
        return None;
    }
    match crate::credentials::Injection::load(&header, path) {
        Ok(i) => Some(Arc::new(i)),
        Err(e) => {
            d.at(&source.referenced, format!("rule `{id}`: {e}"));
            None
        }
    }
}

/// `inject.oauth2`: check the settings and files now; the token comes later, from the network.
fn oauth2_injection(
    d: &mut Diagnostics,
    id: &str,
    header: &str,
    f: serde_saphyr::Spanned<super::file::OAuth2File>,
) -> Option<Arc<crate::credentials::Injection>> {
    use crate::credentials::{HttpsUrl, Injection, OAuth2};
    let f = f.value;
    let url = match HttpsUrl::parse(&f.token_url.value) {
        Ok(url) => Some(url),
        Err(e) => {
            d.at(&f.token_url.referenced, format!("rule `{id}`: {e}"));
            None
        }
    };
    let mut absolute = |field: &serde_saphyr::Spanned<String>, what: &str| {
        let path = std::path::Path::new(&field.value);
        if path.is_absolute() {
            Some(path.to_owned())
        } else {
            d.at(
                &field.referenced,
                format!("rule `{id}`: {what} must be an absolute path"),
            );
            None
        }
    };
    let secret = absolute(&f.client_secret_file, "`clientSecretFile`");
    let ca = match &f.ca_file {
        Some(ca) => Some(absolute(ca, "`caFile`")?),
        None => None,
    };
    let (url, secret) = (url?, secret?);
    match OAuth2::new(
        url,
        &f.client_id.value,
        &secret,
        f.scope.as_ref().map(|s| s.value.as_str()),
        ca.as_deref(),
    ) {
        Ok(o) => Some(Arc::new(Injection::oauth2(header, o))),
        Err(e) => {
            use crate::credentials::OAuth2Error as E;
            let at = match &e {
                E::NotHttps | E::BadUrl { .. } => &f.token_url.referenced,
                E::BadField { field: "clientId" } => &f.client_id.referenced,
                E::BadField { .. } => f
                    .scope
                    .as_ref()
                    .map_or(&f.client_id.referenced, |s| &s.referenced),
                E::NoCertificate { .. } => f
                    .ca_file
                    .as_ref()
                    .map_or(&f.token_url.referenced, |c| &c.referenced),
                E::Read { path, .. } if Some(path.as_path()) == ca.as_deref() => f
                    .ca_file
                    .as_ref()
                    .map_or(&f.token_url.referenced, |c| &c.referenced),
                _ => &f.client_secret_file.referenced,
            };
            d.at(at, format!("rule `{id}`: {e}"));
            None
        }
    }
}

/// An RFC 9110 token (header names are tokens).
pub(super) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
