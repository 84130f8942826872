//! `enforcer explain`: what the policy decides for a hypothetical request, and why.

use std::{
    fmt, fs, io,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{
    Mode, Policy, Reason, Verdict,
    caller::Attr,
    check::{Resolve, system_resolve},
    matcher::Callers,
};
use crate::{
    host::HostAddrs,
    identity::{Cgroup, Identity, Process, sha256_hex},
};

/// What `explain` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// The destination the URL names (the one that is protected, if any is).
    pub destination: SocketAddr,
    pub outcome: Outcome,
    /// The caller's attributes, as identities match them: (attribute, value or `None` if
    /// unknown).
    pub caller: Vec<(&'static str, Option<String>)>,
    /// Identities the caller matches, in file order.
    pub identities: Vec<String>,
    /// Every rule for the service, in file order, and what it makes of the request.
    pub rules: Vec<RuleNote>,
    /// The policy file, to point at rules.
    pub file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No service has the destination: the kernel does not redirect the connect, so the agent
    /// never sees the request and the policy does not apply.
    Unprotected,
    Decided {
        service: String,
        verdict: Verdict,
        mode: Mode,
        reason: Reason,
        rule: Option<String>,
    },
}

/// One rule's view of the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleNote {
    pub id: String,
    pub line: u64,
    pub column: u64,
    pub mode: Mode,
    /// `None` if the rule matches; else why not.
    pub unmet: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("bad URL `{url}`: {why}")]
    Url { url: String, why: &'static str },
    #[error("host `{host}` does not resolve")]
    Resolve {
        host: String,
        #[source]
        source: io::Error,
    },
    /// The agent refuses such a path before any rule is consulted (400).
    #[error("path `{path}` is refused by the agent before any rule applies")]
    PathRefused {
        path: String,
        #[source]
        source: crate::http::TargetError,
    },
}

/// A process to explain decisions for, as `enforcer explain` flags describe it.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// Executable; its SHA-256 is computed if the file can be read.
    pub exe: Option<PathBuf>,
    /// Name or uid; default: the user running `explain`.
    pub user: Option<String>,
    /// Name or gid; default: the user's primary group.
    pub group: Option<String>,
    /// systemd unit the caller runs in.
    pub unit: Option<String>,
    /// cgroup v2 path; default with `unit`: `/system.slice/UNIT`.
    pub cgroup: Option<String>,
    /// Container id.
    pub container: Option<String>,
}

/// Decide `method url` for `identity`, and explain it. The URL's host is resolved, and its
/// address and port looked up among the services. The path is normalised as the agent does
/// ([`crate::http::normalize_path`]), and the explanation shows the result. The only header
/// sent is `Host`, the URL's authority (as curl sends it), so rules that require another say
/// so.
pub fn explain(
    policy: &Policy,
    identity: &Identity,
    method: &str,
    url: &str,
) -> Result<Explanation, ExplainError> {
    // Without the interface addresses, only loopback and the unspecified address count as
    // this host: an explanation of an address of this host then says "unprotected".
    let host = HostAddrs::read().unwrap_or_default();
    explain_with(policy, identity, method, url, &system_resolve, &host)
}

pub(super) fn explain_with(
    policy: &Policy,
    identity: &Identity,
    method: &str,
    url: &str,
    resolve: Resolve,
    host: &HostAddrs,
) -> Result<Explanation, ExplainError> {
    let bad = |why| ExplainError::Url {
        url: url.to_owned(),
        why,
    };
    let target = Target::parse(url).map_err(bad)?;
    let path = crate::http::normalize_path(target.path.as_bytes()).map_err(|source| {
        ExplainError::PathRefused {
            path: target.path.to_owned(),
            source,
        }
    })?;
    let path = path.as_str();
    let addrs = match target.host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => {
            let resolved =
                resolve(target.host, target.port).map_err(|source| ExplainError::Resolve {
                    host: target.host.to_owned(),
                    source,
                })?;
            if resolved.is_empty() {
                return Err(ExplainError::Resolve {
                    host: target.host.to_owned(),
                    source: io::Error::other("no address"),
                });
            }
            resolved
        }
    };
    let protected = addrs
        .iter()
        .find_map(|&ip| Some((ip, policy.service_for(ip, target.port, host)?)));
    let ip = protected.map_or(addrs[0], |(ip, _)| ip);
    let caller = policy.classify(identity);
    let mut explanation = Explanation {
        method: method.to_owned(),
        path: path.to_owned(),
        query: target.query.map(str::to_owned),
        destination: SocketAddr::new(ip, target.port),
        outcome: Outcome::Unprotected,
        caller: ATTRS.iter().map(|a| (a.as_str(), a.of(identity))).collect(),
        identities: caller.names().map(str::to_owned).collect(),
        rules: Vec::new(),
        file: policy.source().to_owned(),
    };
    let Some((_, service)) = protected else {
        return Ok(explanation);
    };
    let authority = if target.host.contains(':') {
        format!("[{}]:{}", target.host, target.port)
    } else {
        format!("{}:{}", target.host, target.port)
    };
    let headers: &[(&str, &str)] = &[("host", &authority)];
    let d = policy.decide(&caller, service, method, path, headers, target.query);
    explanation.outcome = Outcome::Decided {
        service: service.to_owned(),
        verdict: d.verdict,
        mode: d.mode,
        reason: d.reason,
        rule: d.rule_id().map(str::to_owned),
    };
    for rule in policy.rules().iter().filter(|r| r.service() == service) {
        let unmet = match &rule.from {
            Callers::Identities(ids) if !ids.iter().any(|i| caller.ids.contains(i)) => {
                let names: Vec<&str> = ids
                    .iter()
                    .map(|&i| &*policy.identities[i as usize].name)
                    .collect();
                Some(format!(
                    "not for this caller (from: {}){}",
                    names.join(", "),
                    near_miss(policy, ids, identity)
                ))
            }
            _ if !rule.paths.iter().any(|p| p.matches(path)) => {
                let patterns: Vec<&str> = rule.paths.iter().map(|p| p.as_str()).collect();
                Some(format!(
                    "path {path} matches none of {}",
                    patterns.join(", ")
                ))
            }
            _ => rule.unmet(method, headers, target.query),
        };
        let (line, column) = rule.location();
        explanation.rules.push(RuleNote {
            id: rule.id().to_owned(),
            line,
            column,
            mode: rule.mode(),
            unmet,
        });
    }
    Ok(explanation)
}

/// Identity attributes in file-format order.
const ATTRS: [Attr; 7] = [
    Attr::Exe,
    Attr::Sha256,
    Attr::User,
    Attr::Group,
    Attr::SystemdUnit,
    Attr::Cgroup,
    Attr::Container,
];

/// For a rule naming one identity, what the caller lacks: the common case worth spelling out.
fn near_miss(policy: &Policy, ids: &[u32], identity: &Identity) -> String {
    let [only] = ids else {
        return String::new();
    };
    let m = &policy.identities[*only as usize];
    let Some(attr) = m.first_mismatch(identity) else {
        return String::new();
    };
    let got = attr.of(identity).unwrap_or_else(|| "unknown".into());
    format!(
        ": `{}` wants {} {}, caller has {got}",
        m.name,
        attr.as_str(),
        m.wanted(attr)
    )
}

/// The parts of an `http://` URL explain needs.
struct Target<'a> {
    host: &'a str,
    port: u16,
    path: &'a str,
    query: Option<&'a str>,
}

impl<'a> Target<'a> {
    fn parse(url: &'a str) -> Result<Self, &'static str> {
        let scheme_end = url.find("://").ok_or("expected http://HOST[:PORT]/PATH")?;
        let scheme = &url[..scheme_end];
        if scheme.eq_ignore_ascii_case("https") {
            return Err("the agent reads plain HTTP; it cannot see requests inside TLS");
        }
        if !scheme.eq_ignore_ascii_case("http") {
            return Err("expected http://HOST[:PORT]/PATH");
        }
        let rest = &url[scheme_end + 3..];
        let rest = rest.split_once('#').map_or(rest, |(r, _)| r);
        let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(auth_end);
        if authority.contains('@') {
            return Err("user information (`user@`) is not supported");
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or("missing `]`")?;
            match after {
                "" => (host, None),
                p => (host, Some(p.strip_prefix(':').ok_or("expected `]:PORT`")?)),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err("no host");
        }
        let port = match port {
            None => 80,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or("bad port")?,
        };
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        Ok(Self {
            host,
            port,
            path: if path.is_empty() { "/" } else { path },
            query,
        })
    }
}

// === impl Explanation ===

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        };
        match &self.outcome {
            Outcome::Unprotected => {
                writeln!(
                    f,
                    "decision:   not protected: no service has {}, so the agent never sees \
                     the request",
                    self.destination
                )?;
                writeln!(
                    f,
                    "request:    {} {target} to {}",
                    self.method, self.destination
                )?;
            }
            Outcome::Decided {
                service,
                verdict,
                mode,
                reason,
                rule,
            } => {
                let at = |id: &str| {
                    self.rules
                        .iter()
                        .find(|r| r.id == id)
                        .map(|r| format!(" ({}:{}:{})", self.file.display(), r.line, r.column))
                        .unwrap_or_default()
                };
                match (verdict, rule) {
                    (Verdict::Allow, Some(id)) => {
                        writeln!(f, "decision:   allow by rule `{id}`{} [{mode}]", at(id))?
                    }
                    (Verdict::AuditDeny, Some(id)) => writeln!(
                        f,
                        "decision:   audit_deny ({reason}): forwarded and recorded as \
                         would-deny, as rule `{id}`{} is in audit mode",
                        at(id)
                    )?,
                    (Verdict::AuditDeny, None) => writeln!(
                        f,
                        "decision:   audit_deny ({reason}): forwarded and recorded as \
                         would-deny, as settings.mode is audit"
                    )?,
                    (verdict, _) => writeln!(f, "decision:   {verdict} ({reason})")?,
                }
                writeln!(
                    f,
                    "request:    {} {target} to {} (service {service})",
                    self.method, self.destination
                )?;
            }
        }
        let caller: Vec<String> = self
            .caller
            .iter()
            .map(|(a, v)| format!("{a}={}", v.as_deref().unwrap_or("-")))
            .collect();
        writeln!(f, "caller:     {}", caller.join(" "))?;
        let identities = if self.identities.is_empty() {
            "none".to_owned()
        } else {
            self.identities.join(", ")
        };
        writeln!(f, "identities: {identities}")?;
        if let Outcome::Decided { service, .. } = &self.outcome {
            if self.rules.is_empty() {
                writeln!(f, "rules:      none for {service}")?;
            } else {
                writeln!(f, "rules for {service}, in file order:")?;
            }
            for r in &self.rules {
                let audit = if r.mode == Mode::Audit {
                    " [audit]"
                } else {
                    ""
                };
                let what = r.unmet.as_deref().unwrap_or("matches");
                writeln!(
                    f,
                    "  {}{audit} ({}:{}:{}): {what}",
                    r.id,
                    self.file.display(),
                    r.line,
                    r.column
                )?;
            }
        }
        Ok(())
    }
}

// === impl Caller ===

impl Caller {
    /// The identity the agent would attest for such a process. It has no pid, a cgroup id of
    /// 0, and its comm is the executable's file name. The SHA-256 is empty (so it matches no
    /// `sha256`) if the executable cannot be read, and a user name that does not exist on
    /// this host keeps its name with uid 4294967295 (no uid).
    pub fn identity(&self) -> Identity {
        let (uid, user, primary_gid) = self.user();
        let (gid, group) = self.group(primary_gid);
        let comm = self
            .exe
            .as_deref()
            .and_then(Path::file_name)
            .map(|n| {
                let n = n.to_string_lossy();
                n.chars().take(15).collect()
            })
            .unwrap_or_default();
        let process = self.exe.as_ref().map(|exe| {
            Arc::new(Process {
                exe: exe.clone(),
                exe_trusted: true,
                sha256: fs::File::open(exe)
                    .and_then(|mut f| sha256_hex(&mut f))
                    .unwrap_or_default()
                    .into(),
            })
        });
        let cgroup = if self.unit.is_some() || self.cgroup.is_some() || self.container.is_some() {
            let path = self.cgroup.clone().unwrap_or_else(|| match &self.unit {
                Some(unit) => format!("/system.slice/{unit}"),
                None => "/".to_owned(),
            });
            Some(Arc::new(Cgroup {
                path,
                unit: self.unit.clone(),
                container: self.container.clone(),
            }))
        } else {
            None
        };
        Identity {
            tgid: 0,
            pid: 0,
            uid,
            gid,
            comm,
            cgroup_id: 0,
            user,
            group,
            process,
            cgroup,
            unresolved: None,
            traced: Some(false),
        }
    }

    /// (uid, name, primary gid).
    fn user(&self) -> (u32, Option<Arc<str>>, Option<u32>) {
        use nix::unistd::{Uid, User};
        let found = match &self.user {
            None => User::from_uid(Uid::current()).ok().flatten(),
            Some(u) => match u.parse::<u32>() {
                Ok(uid) => User::from_uid(uid.into()).ok().flatten(),
                Err(_) => User::from_name(u).ok().flatten(),
            },
        };
        match (found, &self.user) {
            (Some(u), _) => (u.uid.as_raw(), Some(u.name.into()), Some(u.gid.as_raw())),
            (None, Some(u)) => match u.parse::<u32>() {
                Ok(uid) => (uid, None, None),
                Err(_) => (u32::MAX, Some(u.as_str().into()), None),
            },
            (None, None) => (Uid::current().as_raw(), None, None),
        }
    }

    /// (gid, name).
    fn group(&self, primary: Option<u32>) -> (u32, Option<Arc<str>>) {
        use nix::unistd::{Gid, Group};
        let found = match &self.group {
            None => {
                let gid = primary.map_or_else(Gid::current, Gid::from_raw);
                Group::from_gid(gid).ok().flatten()
            }
            Some(g) => match g.parse::<u32>() {
                Ok(gid) => Group::from_gid(gid.into()).ok().flatten(),
                Err(_) => Group::from_name(g).ok().flatten(),
            },
        };
        match (found, &self.group) {
            (Some(g), _) => (g.gid.as_raw(), Some(g.name.into())),
            (None, Some(g)) => match g.parse::<u32>() {
                Ok(gid) => (gid, None),
                Err(_) => (u32::MAX, Some(g.as_str().into())),
            },
            (None, None) => (primary.unwrap_or_else(|| Gid::current().as_raw()), None),
        }
    }
}
