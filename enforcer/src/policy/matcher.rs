//! The compiled rules and the per-request decision.
//!
//! Per service, rules are indexed by caller identity and then by path: each (service,
//! identity) pair has its own path-segment trie, and a rule sits in the trie of every identity
//! in its `from` (rules with `from: ["*"]` in one more trie that every caller walks). A
//! decision walks only the tries of the identities the caller matched, so its cost depends on
//! the path's depth and on the rules that could apply to this caller and path, not on the size
//! of the policy. Trie nodes hold rule indices in file order, and every node knows the smallest
//! rule index below it, so the walk stops as soon as no subtree can beat the first matching
//! rule found so far. Deciding does not allocate.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    hash::{BuildHasher, Hasher},
    sync::Arc,
};

use super::{
    IdentitySet, Mode, Policy,
    evasion::{self, Evasion},
    pattern::{End, Method, Methods, NormalPath, PathPattern, Segment, next_segment, wildcard_ok},
};
use crate::credentials::{CredentialCheck, Credentials, Rejection, Requirement};

/// One rule, compiled.
#[derive(Debug, Clone)]
pub struct Rule {
    pub(super) id: Arc<str>,
    pub(super) from: Callers,
    pub(super) service: Arc<str>,
    pub(super) methods: Methods,
    pub(super) paths: Box<[PathPattern]>,
    /// Header names lower-cased.
    pub(super) headers: Box<[(Box<str>, Box<str>)]>,
    pub(super) query: Box<[(Box<str>, Box<str>)]>,
    /// `Host` names the rule is for (lower case; `*.` prefixes): empty for any.
    pub(super) hosts: Box<[Box<str>]>,
    /// Method- and URL-override headers the rule lets through (lower case).
    pub(super) overrides: Box<[Box<str>]>,
    pub(super) websocket: bool,
    pub(super) mode: Mode,
    /// A header to replace in allowed requests, with its value's file.
    pub(super) inject: Option<Arc<crate::credentials::Injection>>,
    /// A credential the request must present (`require`).
    pub(super) require: Option<Requirement>,
    /// The rule's request rate and body size limits.
    pub(super) limits: crate::limits::RuleLimits,
    /// Where the rule's `id` is, for `explain`.
    pub(super) line: u64,
    pub(super) column: u64,
}

/// A rule's `from`.
#[derive(Debug, Clone)]
pub(super) enum Callers {
    /// `["*"]`: every caller, even one that matches no identity.
    Any,
    /// Indices of named identities.
    Identities(Box<[u32]>),
}

/// What to do with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Forward it: a rule allows it.
    Allow,
    /// Refuse it (403).
    Deny,
    /// Forward it, but record that enforcing would have refused it.
    AuditDeny,
}

/// Why a decision went the way it did: a closed set, fit for metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A rule allows the request.
    Rule,
    /// No rule allows the request.
    NoMatchingRule,
    /// The destination is not a service of this policy.
    UnknownService,
    /// The path is not normalised (dot or empty segments): the HTTP layer should have refused
    /// or normalised it, so no rule is trusted to match it.
    PathNotNormal,
    /// The identity set was classified by another policy (one replaced since): a bug in the
    /// caller, so nothing is allowed.
    StaleIdentities,
    /// No rule allows the request, and a rule that would have required a credential the
    /// request did not satisfy: the answer is the rejection's (401, 403 or 503), and the
    /// details are in the [`CredentialCheck`].
    Credential(Rejection),
    /// No rule allows the request, and a rule that otherwise matched refused a form of it an
    /// upstream may read differently (see [`Evasion`]).
    Evasion(Evasion),
}

/// A decision, with the evidence for it.
#[derive(Debug, Clone, Copy)]
pub struct Decision<'p> {
    pub verdict: Verdict,
    /// The rule that allowed the request, or for `AuditDeny` the rule whose audit scope let it
    /// through (`None` when the global `settings.mode: audit` did).
    pub rule: Option<&'p Rule>,
    /// `Audit` when the decision was taken in dry run: the global mode is `audit`, or the rule
    /// that decided (allowing, or whose scope applies) is in `mode: audit`.
    pub mode: Mode,
    pub reason: Reason,
}

/// Request headers as the HTTP layer has them, in order, with repeats. Implement it for the
/// HTTP layer's own header type to decide without copying headers.
pub trait Headers {
    fn pairs(&self) -> impl Iterator<Item = (&str, &[u8])>;
}

impl Headers for [(&str, &str)] {
    fn pairs(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.iter().map(|(n, v)| (*n, v.as_bytes()))
    }
}

impl Headers for [(&str, &[u8])] {
    fn pairs(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.iter().map(|(n, v)| (*n, *v))
    }
}

impl Headers for [(String, String)] {
    fn pairs(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.iter().map(|(n, v)| (n.as_str(), v.as_bytes()))
    }
}

/// Rules indexed for deciding.
#[derive(Debug, Clone, Default)]
pub(super) struct Index {
    /// By service name, sorted.
    services: Box<[(Box<str>, ServiceIndex)]>,
}

#[derive(Debug, Clone, Default)]
struct ServiceIndex {
    nodes: Vec<Node>,
    /// (identity, root node), by identity.
    roots: Box<[(u32, u32)]>,
    /// Root of the rules with `from: ["*"]`.
    any_root: Option<u32>,
    /// (identity, first rule in `mode: audit` naming it), by identity.
    audit: Box<[(u32, u32)]>,
    /// First rule in `mode: audit` with `from: ["*"]`.
    any_audit: Option<u32>,
}

#[derive(Debug, Clone, Default)]
struct Node {
    literals: Literals,
    /// `*` or `{name}`.
    param: Option<u32>,
    /// Rules (indices, ascending) whose pattern ends here.
    exact: Vec<u32>,
    /// ... ends here with a trailing slash.
    slash: Vec<u32>,
    /// ... ends here with `**`.
    rest: Vec<u32>,
    /// The smallest rule index in this subtree.
    min_rule: u32,
}

/// A node's literal children: a short list is scanned (most nodes have one or two children, and
/// comparing lengths rejects most at once); a long one is hashed.
#[derive(Debug, Clone)]
enum Literals {
    Few(Vec<(Box<str>, u32)>),
    Many(HashMap<Box<str>, u32, FxBuild>),
}

/// Children up to which scanning beats hashing.
const FEW_LITERALS: usize = 8;

/// What a request asks to upgrade to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upgrade {
    None,
    WebSocket,
    /// Any other protocol: no rule allows it, since the agent could not read what follows.
    Other,
}

/// One request being decided.
struct Request<'r, 'c, H: ?Sized> {
    rules: &'r [Rule],
    credentials: &'r Credentials,
    caller: &'r IdentitySet,
    check: &'r mut CredentialCheck<'c>,
    method: Method<'r>,
    trailing_slash: bool,
    upgrade: Upgrade,
    headers: &'r H,
    query: Option<&'r str>,
    /// The `Host` value, if any.
    host: Option<&'r [u8]>,
    /// The first matching rule so far, or `u32::MAX`.
    best: u32,
    /// What the earliest rule that refused an evasion refused.
    evasion: Option<(u32, Evasion)>,
}

// === impl Policy ===

impl Policy {
    /// Decide one request from a caller classified by [`Policy::classify`] to `service` (as
    /// [`Policy::service_for`] names it). `path` is the normalised path without the query;
    /// `query` the raw query string, without `?`.
    ///
    /// The first rule in file order that matches allows the request. Otherwise, the request is
    /// forwarded and recorded (`AuditDeny`) if a rule in `mode: audit` covers this caller and
    /// service, or the policy is in `settings.mode: audit`; else it is denied.
    ///
    /// Rules that `require` a credential are checked as [`Policy::decide_with`] does, as of the
    /// system clock; what the credential established is not returned.
    pub fn decide<'p, H: Headers + ?Sized>(
        &'p self,
        caller: &IdentitySet,
        service: &str,
        method: &str,
        path: &str,
        headers: &H,
        query: Option<&str>,
    ) -> Decision<'p> {
        let mut check = CredentialCheck::without_grant();
        self.decide_with(caller, service, method, path, headers, query, &mut check)
    }

    /// [`Policy::decide`], checking credentials with `check` (one per request: it is reset
    /// here). A rule with `require` matches only if the request also presents its credential,
    /// verified, with the scopes and claims the rule asks for, by a caller it is bound to.
    ///
    /// - Allowed by such a rule: `check.grant()` says what the credential established.
    /// - Not allowed, and a rule that otherwise matched had a requirement fail: the reason is
    ///   [`Reason::Credential`], and `check.failure()` has the details. When several did, the
    ///   most significant failure decides: keys unavailable (503) over a valid credential that
    ///   lacks a scope, a claim or a binding (403), over an invalid one (401), over none (401);
    ///   among equals, the earliest rule's.
    /// - A rule without `require` that matches allows as before, whatever other rules' requirements
    ///   made of the request.
    #[expect(
        clippy::too_many_arguments,
        reason = "decide's arguments, plus the credential state"
    )]
    pub fn decide_with<'p, H: Headers + ?Sized>(
        &'p self,
        caller: &IdentitySet,
        service: &str,
        method: &str,
        path: &str,
        headers: &H,
        query: Option<&str>,
        check: &mut CredentialCheck<'_>,
    ) -> Decision<'p> {
        check.reset();
        let Some(svc) = self.index.service(service) else {
            return self.refuse(None, Reason::UnknownService);
        };
        if caller.generation != self.generation {
            return self.refuse(None, Reason::StaleIdentities);
        }
        let Some(path) = NormalPath::new(path) else {
            return self.refuse(svc.audit_scope(caller), Reason::PathNotNormal);
        };
        let mut req = Request {
            rules: &self.rules,
            credentials: &self.credentials,
            caller,
            check,
            method: Method::new(method),
            trailing_slash: path.trailing_slash,
            upgrade: upgrade(headers),
            headers,
            query,
            host: headers
                .pairs()
                .find(|(n, _)| n.eq_ignore_ascii_case("host"))
                .map(|(_, v)| v),
            best: u32::MAX,
            evasion: None,
        };
        for root in svc.roots(caller) {
            svc.walk(root, path.body, &mut req);
        }
        match self.rules.get(req.best as usize) {
            Some(rule) => {
                req.check.clear_failure();
                if let Some(require) = &rule.require {
                    req.check
                        .grant_for(&self.credentials, require, headers, query);
                }
                Decision {
                    verdict: Verdict::Allow,
                    rule: Some(rule),
                    mode: self.settings.mode.max(rule.mode),
                    reason: Reason::Rule,
                }
            }
            None => {
                let reason = match (req.check.failure(), req.evasion) {
                    (Some(f), _) => Reason::Credential(f.rejection()),
                    (None, Some((_, evasion))) => Reason::Evasion(evasion),
                    (None, None) => Reason::NoMatchingRule,
                };
                self.refuse(svc.audit_scope(caller), reason)
            }
        }
    }

    /// No rule allows the request: what the audit scope and the global mode make of that.
    fn refuse(&self, audit_rule: Option<u32>, reason: Reason) -> Decision<'_> {
        let rule = audit_rule.and_then(|r| self.rules.get(r as usize));
        let verdict = if rule.is_some() || self.settings.mode == Mode::Audit {
            Verdict::AuditDeny
        } else {
            Verdict::Deny
        };
        Decision {
            verdict,
            rule,
            mode: if verdict == Verdict::Deny {
                Mode::Enforce
            } else {
                Mode::Audit
            },
            reason,
        }
    }
}

// === impl Rule ===

impl Rule {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The id, shared: for records that outlive the decision.
    pub fn shared_id(&self) -> &Arc<str> {
        &self.id
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The rule's `limits`.
    pub fn limits(&self) -> &crate::limits::RuleLimits {
        &self.limits
    }

    /// The service the rule is for (`to`).
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Line and column of the rule's `id` in the policy file.
    pub fn location(&self) -> (u64, u64) {
        (self.line, self.column)
    }

    /// The credential the rule requires, if any.
    /// The header this rule injects into the requests it allows, if any.
    pub fn injection(&self) -> Option<&crate::credentials::Injection> {
        self.inject.as_deref()
    }

    /// The same, shared: for the task that keeps an OAuth2 token fresh.
    pub fn shared_injection(&self) -> Option<&Arc<crate::credentials::Injection>> {
        self.inject.as_ref()
    }

    pub fn requirement(&self) -> Option<&Requirement> {
        self.require.as_ref()
    }

    /// Whether the rule allows a request it matched to switch to `protocol` (the request's
    /// `Upgrade`, lower case): the same test the request side applies, for the proxy to hold a
    /// 101 to.
    pub fn allows_upgrade(&self, protocol: &str) -> bool {
        self.websocket && protocol == "websocket"
    }

    /// The `Host` names the rule is for; empty: any.
    pub fn hosts(&self) -> &[Box<str>] {
        &self.hosts
    }

    /// Whether the rule matches a request, the caller, service and credential aside.
    /// `Err(Some(_))`: it would have, but for an evasion it refuses.
    fn matches<H: Headers + ?Sized>(
        &self,
        req: &Request<'_, '_, H>,
    ) -> Result<(), Option<Evasion>> {
        let plain = self.methods.contains(req.method)
            && match req.upgrade {
                Upgrade::None => true,
                Upgrade::WebSocket => self.websocket,
                Upgrade::Other => false,
            };
        if !plain {
            return Err(None);
        }
        self.evasion(req.headers, req.query, req.host)
            .map_err(Some)?;
        let constrained = self
            .headers
            .iter()
            .all(|(n, v)| header_is(req.headers, n, v))
            && self.query.iter().all(|(k, v)| query_is(req.query, k, v));
        if constrained { Ok(()) } else { Err(None) }
    }

    /// The forms of a request the rule refuses though it might otherwise match it.
    fn evasion<H: Headers + ?Sized>(
        &self,
        headers: &H,
        query: Option<&str>,
        host: Option<&[u8]>,
    ) -> Result<(), Evasion> {
        if !self.hosts.is_empty() && !host.is_some_and(|h| evasion::host_allowed(h, &self.hosts)) {
            return Err(Evasion::HostNotAllowed);
        }
        if self
            .headers
            .iter()
            .any(|(n, _)| evasion::lookalike_header(headers, n))
        {
            return Err(Evasion::LookalikeHeader);
        }
        if self
            .query
            .iter()
            .any(|(k, _)| evasion::lookalike_query(query, k))
        {
            return Err(Evasion::LookalikeQuery);
        }
        evasion::overrides_ok(headers, &self.overrides, &self.methods, &self.paths)
    }

    /// What the rule requires of a request beyond the caller, service and path, and does not
    /// find: for `explain`.
    pub(super) fn unmet<H: Headers + ?Sized>(
        &self,
        method: &str,
        headers: &H,
        query: Option<&str>,
    ) -> Option<String> {
        if !self.methods.contains(Method::new(method)) {
            return Some(format!("method {method} is not one of {}", self.methods));
        }
        match upgrade(headers) {
            Upgrade::WebSocket if !self.websocket => {
                return Some("a WebSocket upgrade needs `websocket: true`".into());
            }
            Upgrade::Other => return Some("no rule allows upgrades other than WebSocket".into()),
            _ => {}
        }
        let host = headers
            .pairs()
            .find(|(n, _)| n.eq_ignore_ascii_case("host"))
            .map(|(_, v)| v);
        if let Err(e) = self.evasion(headers, query, host) {
            return Some(match e {
                Evasion::HostNotAllowed => format!(
                    "needs a Host among {}, matching the destination",
                    self.hosts.join(", ")
                ),
                other => format!("refuses the request: {other}"),
            });
        }
        for (n, v) in &self.headers {
            if !header_is(headers, n, v) {
                return Some(format!("needs header `{n}: {v}`, once"));
            }
        }
        for (k, v) in &self.query {
            if !query_is(query, k, v) {
                return Some(format!("needs query parameter `{k}={v}`, once"));
            }
        }
        if let Some(require) = &self.require {
            return Some(format!(
                "needs credential `{}`, which explain cannot present",
                require.credential()
            ));
        }
        None
    }
}

/// Whether a header appears exactly once, with this value (surrounding blanks aside). Twice is
/// no match: the upstream might read either copy.
fn header_is<H: Headers + ?Sized>(headers: &H, name: &str, want: &str) -> bool {
    let mut found = false;
    for (n, v) in headers.pairs() {
        if n.eq_ignore_ascii_case(name) {
            if found || trim_blanks(v) != want.as_bytes() {
                return false;
            }
            found = true;
        }
    }
    found
}

/// Whether a query parameter appears exactly once, with this value; names and values are
/// compared percent-decoded, with `+` as a space (HTML form encoding).
fn query_is(query: Option<&str>, key: &str, want: &str) -> bool {
    let Some(query) = query else {
        return false;
    };
    let mut found = false;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if decoded_eq(k, key) {
            if found || !decoded_eq(v, want) {
                return false;
            }
            found = true;
        }
    }
    found
}

/// Whether `raw`, percent-decoded (`+` as space), equals `want`; no allocation. A `%` not
/// followed by two hex digits stands for itself.
fn decoded_eq(raw: &str, want: &str) -> bool {
    let (raw, want) = (raw.as_bytes(), want.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < raw.len() {
        let (byte, used) = match raw[i] {
            b'+' => (b' ', 1),
            b'%' => match (raw.get(i + 1).and_then(hex), raw.get(i + 2).and_then(hex)) {
                (Some(h), Some(l)) => ((h << 4) | l, 3),
                _ => (b'%', 1),
            },
            b => (b, 1),
        };
        if want.get(j) != Some(&byte) {
            return false;
        }
        i += used;
        j += 1;
    }
    j == want.len()
}

fn hex(b: &u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn trim_blanks(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !matches!(b, b' ' | b'\t'));
    let end = v.iter().rposition(|b| !matches!(b, b' ' | b'\t'));
    match (start, end) {
        (Some(s), Some(e)) => &v[s..=e],
        _ => &[],
    }
}

/// What the `Upgrade` headers ask for. Any token but `websocket` makes it `Other`.
fn upgrade<H: Headers + ?Sized>(headers: &H) -> Upgrade {
    let mut kind = Upgrade::None;
    for (n, v) in headers.pairs() {
        if !n.eq_ignore_ascii_case("upgrade") {
            continue;
        }
        for token in v.split(|&b| b == b',').map(trim_blanks) {
            if token.is_empty() {
                continue;
            }
            if token.eq_ignore_ascii_case(b"websocket") {
                if kind == Upgrade::None {
                    kind = Upgrade::WebSocket;
                }
            } else {
                kind = Upgrade::Other;
            }
        }
    }
    kind
}

// === impl Verdict, Reason, Decision ===

impl Verdict {
    pub const fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::AuditDeny => "audit_deny",
        }
    }

    /// Whether the request goes to the upstream.
    pub const fn forwards(self) -> bool {
        !matches!(self, Verdict::Deny)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Reason {
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Rule => "rule",
            Reason::NoMatchingRule => "no matching rule",
            Reason::UnknownService => "unknown service",
            Reason::PathNotNormal => "path not normalised",
            Reason::StaleIdentities => "BUG: identities classified by another policy",
            Reason::Credential(r) => r.as_str(),
            Reason::Evasion(e) => e.as_str(),
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'p> Decision<'p> {
    pub fn rule_id(&self) -> Option<&'p str> {
        self.rule.map(Rule::id)
    }
}

// === impl Index ===

impl Index {
    /// Index `rules` for `services` (every rule's service is one of them).
    pub(super) fn new<'a>(services: impl Iterator<Item = &'a str>, rules: &[Rule]) -> Self {
        let mut builders: BTreeMap<&str, Builder> =
            services.map(|s| (s, Builder::default())).collect();
        for (r, rule) in rules.iter().enumerate() {
            let Some(b) = builders.get_mut(&*rule.service) else {
                debug_assert!(false, "BUG: rule `{}` for an unknown service", rule.id);
                continue;
            };
            let r = r as u32;
            let keys: Vec<Option<u32>> = match &rule.from {
                Callers::Any => vec![None],
                Callers::Identities(ids) => ids.iter().copied().map(Some).collect(),
            };
            for key in keys {
                let root = b.root(key);
                for p in &rule.paths {
                    b.insert(root, p, r);
                }
                if rule.mode == Mode::Audit {
                    let first = match key {
                        Some(i) => b.audit.entry(i).or_insert(r),
                        None => b.any_audit.get_or_insert(r),
                    };
                    *first = (*first).min(r);
                }
            }
        }
        let services = builders
            .into_iter()
            .map(|(name, b)| (name.into(), b.finish()))
            .collect();
        Self { services }
    }

    fn service(&self, name: &str) -> Option<&ServiceIndex> {
        self.services
            .binary_search_by(|(n, _)| (**n).cmp(name))
            .ok()
            .map(|i| &self.services[i].1)
    }
}

#[derive(Default)]
struct Builder {
    nodes: Vec<Node>,
    roots: BTreeMap<u32, u32>,
    any_root: Option<u32>,
    audit: BTreeMap<u32, u32>,
    any_audit: Option<u32>,
}

impl Builder {
    fn new_node(&mut self) -> u32 {
        self.nodes.push(Node::default());
        (self.nodes.len() - 1) as u32
    }

    fn root(&mut self, identity: Option<u32>) -> u32 {
        let existing = match identity {
            Some(i) => self.roots.get(&i).copied(),
            None => self.any_root,
        };
        if let Some(n) = existing {
            return n;
        }
        let n = self.new_node();
        match identity {
            Some(i) => {
                self.roots.insert(i, n);
            }
            None => self.any_root = Some(n),
        }
        n
    }

    fn insert(&mut self, root: u32, pattern: &PathPattern, rule: u32) {
        let mut n = root;
        for seg in pattern.segments() {
            let next = match seg {
                Segment::Literal(l) => self.nodes[n as usize].literals.get(l),
                Segment::Param => self.nodes[n as usize].param,
            };
            n = match next {
                Some(next) => next,
                None => {
                    let child = self.new_node();
                    let node = &mut self.nodes[n as usize];
                    match seg {
                        Segment::Literal(l) => node.literals.insert(l.clone(), child),
                        Segment::Param => node.param = Some(child),
                    }
                    child
                }
            };
        }
        let node = &mut self.nodes[n as usize];
        let list = match pattern.end() {
            End::Exact => &mut node.exact,
            End::Slash => &mut node.slash,
            End::Rest => &mut node.rest,
        };
        // Rules come in file order, so lists stay sorted; a rule may repeat a pattern.
        if list.last() != Some(&rule) {
            list.push(rule);
        }
    }

    fn finish(mut self) -> ServiceIndex {
        // Children are created after their parents, so a reverse sweep sees every child first.
        for n in (0..self.nodes.len()).rev() {
            let node = &self.nodes[n];
            let own = [&node.exact, &node.slash, &node.rest]
                .into_iter()
                .filter_map(|l| l.first().copied());
            let children = node.literals.children().chain(node.param);
            let min = own
                .chain(children.map(|c| self.nodes[c as usize].min_rule))
                .min()
                .unwrap_or(u32::MAX);
            self.nodes[n].min_rule = min;
        }
        ServiceIndex {
            nodes: self.nodes,
            roots: self.roots.into_iter().collect(),
            any_root: self.any_root,
            audit: self.audit.into_iter().collect(),
            any_audit: self.any_audit,
        }
    }
}

// === impl ServiceIndex ===

impl ServiceIndex {
    /// The tries this caller walks.
    fn roots<'s>(&'s self, caller: &'s IdentitySet) -> impl Iterator<Item = u32> + 's {
        caller
            .ids
            .iter()
            .filter_map(|i| lookup(&self.roots, *i))
            .chain(self.any_root)
    }

    /// The first rule in `mode: audit` whose scope (from, to) covers this caller.
    fn audit_scope(&self, caller: &IdentitySet) -> Option<u32> {
        caller
            .ids
            .iter()
            .filter_map(|i| lookup(&self.audit, *i))
            .chain(self.any_audit)
            .min()
    }

    fn walk<H: Headers + ?Sized>(&self, n: u32, rest: &str, req: &mut Request<'_, '_, H>) {
        let node = &self.nodes[n as usize];
        if node.min_rule >= req.best {
            return;
        }
        if !node.rest.is_empty() && wildcard_ok(rest) {
            req.consider(&node.rest);
        }
        match next_segment(rest) {
            None => req.consider(if req.trailing_slash {
                &node.slash
            } else {
                &node.exact
            }),
            Some((segment, tail)) => {
                if let Some(child) = node.literals.get(segment) {
                    self.walk(child, tail, req);
                }
                if let Some(child) = node.param
                    && wildcard_ok(segment)
                {
                    self.walk(child, tail, req);
                }
            }
        }
    }
}

fn lookup(pairs: &[(u32, u32)], key: u32) -> Option<u32> {
    pairs
        .binary_search_by_key(&key, |(k, _)| *k)
        .ok()
        .map(|i| pairs[i].1)
}

impl<H: Headers + ?Sized> Request<'_, '_, H> {
    /// Take the first rule of `candidates` (ascending) that matches, if it beats the best. A
    /// rule whose credential requirement fails does not match; the failure is noted.
    fn consider(&mut self, candidates: &[u32]) {
        for &r in candidates {
            if r >= self.best {
                return;
            }
            let rule = &self.rules[r as usize];
            match rule.matches(self) {
                Ok(()) => {}
                Err(None) => continue,
                Err(Some(evasion)) => {
                    if self.evasion.is_none_or(|(first, _)| r < first) {
                        self.evasion = Some((r, evasion));
                    }
                    continue;
                }
            }
            let Some(require) = &rule.require else {
                self.best = r;
                return;
            };
            let caller = self.caller;
            let caller_is = |i: u32| caller.ids.binary_search(&i).is_ok();
            match self.check.satisfies(
                self.credentials,
                require,
                &caller_is,
                self.headers,
                self.query,
            ) {
                Ok(()) => {
                    self.best = r;
                    return;
                }
                Err(e) => self.check.note(self.credentials, require, r, &rule.id, e),
            }
        }
    }
}

// === impl Literals ===

impl Default for Literals {
    fn default() -> Self {
        Literals::Few(Vec::new())
    }
}

impl Literals {
    #[inline]
    fn get(&self, segment: &str) -> Option<u32> {
        match self {
            Literals::Few(few) => few.iter().find(|(l, _)| **l == *segment).map(|(_, c)| *c),
            Literals::Many(map) => map.get(segment).copied(),
        }
    }

    fn insert(&mut self, literal: Box<str>, child: u32) {
        match self {
            Literals::Few(few) if few.len() < FEW_LITERALS => few.push((literal, child)),
            Literals::Few(few) => {
                let mut map: HashMap<_, _, FxBuild> = std::mem::take(few).into_iter().collect();
                map.insert(literal, child);
                *self = Literals::Many(map);
            }
            Literals::Many(map) => {
                map.insert(literal, child);
            }
        }
    }

    fn children(&self) -> impl Iterator<Item = u32> + '_ {
        let (few, many) = match self {
            Literals::Few(few) => (Some(few.iter().map(|(_, c)| *c)), None),
            Literals::Many(map) => (None, Some(map.values().copied())),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }
}

// === FxHash ===

/// The Firefox/rustc hash: a few cycles per word. Keys come from the policy, not from
/// requests, so flooding one bucket would take a hostile policy; a keyed hash buys nothing.
#[derive(Debug, Clone, Copy, Default)]
struct FxBuild;

struct FxHasher(u64);

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(FX_SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let (words, tail) = bytes.as_chunks::<8>();
        for w in words {
            self.add(u64::from_le_bytes(*w));
        }
        if !tail.is_empty() {
            let mut word = [0; 8];
            word[..tail.len()].copy_from_slice(tail);
            self.add(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

impl BuildHasher for FxBuild {
    type Hasher = FxHasher;

    #[inline]
    fn build_hasher(&self) -> FxHasher {
        FxHasher(0)
    }
}
