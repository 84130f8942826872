//! Who a rule is for: named identities, matched against a caller's attested attributes once per
//! connection.
//!
//! Every attribute an identity gives must match. A caller whose attribute is unknown (the
//! executable could not be resolved, the uid has no name, the cgroup could not be read) does
//! not match an identity that constrains that attribute: an unknown caller gets no
//! privilege.

use std::{collections::HashMap, fmt, sync::Arc};

use super::glob::Glob;
use crate::identity::{Identity, Process};

/// A named identity, compiled.
#[derive(Debug, Clone, Default)]
pub(super) struct IdentityMatcher {
    pub name: Arc<str>,
    pub exe: Option<Glob>,
    pub sha256: Option<Box<str>>,
    pub user: Option<Account>,
    pub group: Option<Account>,
    pub systemd_unit: Option<Glob>,
    pub cgroup: Option<Glob>,
    pub container: Option<Box<str>>,
    /// `traced: false`: only a caller seen not traced (ptrace) matches.
    pub traced: Option<bool>,
}

/// A user or group, by name or numeric id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Account {
    Id(u32),
    Name(Box<str>),
}

/// An identity attribute, to say which one did not match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Attr {
    Exe,
    Sha256,
    User,
    Group,
    SystemdUnit,
    Cgroup,
    Container,
    Traced,
}

/// The named identities a caller matches, computed once per connection by
/// [`Policy::classify`](super::Policy::classify) and passed to every
/// [`Policy::decide`](super::Policy::decide) on that connection.
#[derive(Debug, Clone)]
pub struct IdentitySet {
    /// The policy that classified the caller: indices mean nothing in another one.
    pub(super) generation: u64,
    /// Indices into the policy's identities, ascending.
    pub(super) ids: Box<[u32]>,
    names: Box<[Arc<str>]>,
}

/// Narrows the identities worth testing: most identities name an exact executable or a digest,
/// so a caller is tested against those with its own and the rest, not all of them.
#[derive(Debug, Clone, Default)]
pub(super) struct Classifier {
    by_exe: HashMap<Box<str>, Vec<u32>>,
    by_sha256: HashMap<Box<str>, Vec<u32>>,
    others: Vec<u32>,
}

// === impl IdentityMatcher ===

impl IdentityMatcher {
    pub(super) fn matches(&self, id: &Identity) -> bool {
        self.first_mismatch(id).is_none()
    }

    /// The first attribute the caller does not match (or does not have), in the order the
    /// file format lists them.
    pub(super) fn first_mismatch(&self, id: &Identity) -> Option<Attr> {
        let process = id.process.as_deref();
        let cgroup = id.cgroup.as_deref();
        if let Some(exe) = &self.exe {
            let path = process.and_then(|p| p.trusted_exe()?.to_str());
            if !path.is_some_and(|p| exe.matches(p)) {
                return Some(Attr::Exe);
            }
        }
        if let Some(sha) = &self.sha256
            && process.is_none_or(|p| *p.sha256 != **sha)
        {
            return Some(Attr::Sha256);
        }
        if let Some(user) = &self.user
            && !user.matches(id.uid, id.user.as_deref())
        {
            return Some(Attr::User);
        }
        if let Some(group) = &self.group
            && !group.matches(id.gid, id.group.as_deref())
        {
            return Some(Attr::Group);
        }
        if let Some(unit) = &self.systemd_unit {
            let name = cgroup.and_then(|c| c.unit.as_deref());
            if !name.is_some_and(|u| unit.matches(u)) {
                return Some(Attr::SystemdUnit);
            }
        }
        if let Some(glob) = &self.cgroup
            && !cgroup.is_some_and(|c| glob.matches(&c.path))
        {
            return Some(Attr::Cgroup);
        }
        if let Some(prefix) = &self.container {
            let container = cgroup.and_then(|c| c.container.as_deref());
            if !container.is_some_and(|c| c.starts_with(&**prefix)) {
                return Some(Attr::Container);
            }
        }
        if let Some(traced) = self.traced
            && id.traced != Some(traced)
        {
            return Some(Attr::Traced);
        }
        None
    }

    /// What the identity asks for one attribute, as written in the file.
    pub(super) fn wanted(&self, attr: Attr) -> String {
        match attr {
            Attr::Exe => self.exe.as_ref().map(|g| g.as_str().to_owned()),
            Attr::Sha256 => self.sha256.as_deref().map(str::to_owned),
            Attr::User => self.user.as_ref().map(Account::to_string),
            Attr::Group => self.group.as_ref().map(Account::to_string),
            Attr::SystemdUnit => self.systemd_unit.as_ref().map(|g| g.as_str().to_owned()),
            Attr::Cgroup => self.cgroup.as_ref().map(|g| g.as_str().to_owned()),
            Attr::Container => self.container.as_deref().map(str::to_owned),
            Attr::Traced => self.traced.map(|t| t.to_string()),
        }
        .unwrap_or_default()
    }
}

// === impl Attr ===

impl Attr {
    /// The attribute's field name in the file.
    pub(super) const fn as_str(self) -> &'static str {
        match self {
            Attr::Exe => "exe",
            Attr::Sha256 => "sha256",
            Attr::User => "user",
            Attr::Group => "group",
            Attr::SystemdUnit => "systemdUnit",
            Attr::Cgroup => "cgroup",
            Attr::Container => "container",
            Attr::Traced => "traced",
        }
    }

    /// The caller's value of this attribute, or `None` if unknown.
    pub(super) fn of(self, id: &Identity) -> Option<String> {
        let process = id.process.as_deref();
        let cgroup = id.cgroup.as_deref();
        match self {
            Attr::Exe => process
                .and_then(Process::trusted_exe)
                .map(|p| p.display().to_string()),
            Attr::Sha256 => process
                .map(|p| p.sha256.to_string())
                .filter(|s| !s.is_empty()),
            Attr::User => Some(account(id.uid, id.user.as_deref())),
            Attr::Group => Some(account(id.gid, id.group.as_deref())),
            Attr::SystemdUnit => cgroup.and_then(|c| c.unit.clone()),
            Attr::Cgroup => cgroup.map(|c| c.path.clone()),
            Attr::Container => cgroup.and_then(|c| c.container.clone()),
            Attr::Traced => id.traced.map(|t| t.to_string()),
        }
    }
}

fn account(id: u32, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("{name} ({id})"),
        None => id.to_string(),
    }
}

// === parsing attributes ===

/// `exe`: an absolute path or path glob.
pub(super) fn exe(s: &str) -> Result<Glob, String> {
    Glob::path(s).map_err(|why| format!("bad exe glob `{s}`: {why}"))
}

/// `cgroup`: a cgroup v2 path (as in /proc/PID/cgroup) or path glob.
pub(super) fn cgroup(s: &str) -> Result<Glob, String> {
    Glob::path(s).map_err(|why| format!("bad cgroup glob `{s}`: {why}"))
}

/// `systemdUnit`: a unit name or name glob.
pub(super) fn systemd_unit(s: &str) -> Result<Glob, String> {
    Glob::name(s).map_err(|why| format!("bad systemdUnit glob `{s}`: {why}"))
}

/// `sha256`: as `sha256sum` prints it.
pub(super) fn sha256(s: &str) -> Result<Box<str>, String> {
    if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Ok(s.into());
    }
    Err(format!(
        "bad sha256 `{s}`: expected 64 lower-case hex digits (as sha256sum prints)"
    ))
}

/// `container`: a container id, or a prefix of one of at least 12 hex digits (as `docker ps`
/// shows).
pub(super) fn container(s: &str) -> Result<Box<str>, String> {
    if (12..=64).contains(&s.len()) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Ok(s.into());
    }
    Err(format!(
        "bad container `{s}`: expected a container id, or its first 12 or more lower-case \
         hex digits"
    ))
}

/// `user` or `group` (`what`): a name, or a numeric id. A name of digits only is an id: Linux
/// tools refuse such names.
pub(super) fn account_of(what: &str, s: &str) -> Result<Account, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse()
            .map(Account::Id)
            .map_err(|_| format!("bad {what} `{s}`: numeric ids are 0-4294967295"));
    }
    let valid = !s.is_empty()
        && s.len() <= 256
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ':' || c == '/');
    if !valid {
        return Err(format!("bad {what} `{s}`: expected a name or a numeric id"));
    }
    Ok(Account::Name(s.into()))
}

// === impl Account ===

impl Account {
    fn matches(&self, id: u32, name: Option<&str>) -> bool {
        match self {
            Account::Id(want) => *want == id,
            Account::Name(want) => name.is_some_and(|n| n == &**want),
        }
    }
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Account::Id(id) => write!(f, "{id}"),
            Account::Name(name) => f.write_str(name),
        }
    }
}

// === impl Classifier ===

impl Classifier {
    pub(super) fn new(identities: &[IdentityMatcher]) -> Self {
        let mut c = Self::default();
        for (i, m) in identities.iter().enumerate() {
            let i = i as u32;
            if let Some(exe) = m.exe.as_ref().and_then(Glob::exact) {
                c.by_exe.entry(exe.into()).or_default().push(i);
            } else if let Some(sha) = &m.sha256 {
                c.by_sha256.entry(sha.clone()).or_default().push(i);
            } else {
                c.others.push(i);
            }
        }
        c
    }

    /// Indices of the identities the caller matches, ascending.
    pub(super) fn classify(&self, identities: &[IdentityMatcher], id: &Identity) -> Vec<u32> {
        let process = id.process.as_deref();
        let by_exe = process
            .and_then(|p| p.trusted_exe()?.to_str())
            .and_then(|e| self.by_exe.get(e));
        let by_sha = process.and_then(|p| self.by_sha256.get(&*p.sha256));
        let mut ids: Vec<u32> = by_exe
            .into_iter()
            .chain(by_sha)
            .flatten()
            .chain(&self.others)
            .copied()
            .filter(|&i| identities[i as usize].matches(id))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

// === impl IdentitySet ===

impl IdentitySet {
    pub(super) fn new(generation: u64, ids: Vec<u32>, identities: &[IdentityMatcher]) -> Self {
        let names = ids
            .iter()
            .map(|&i| identities[i as usize].name.clone())
            .collect();
        Self {
            generation,
            ids: ids.into(),
            names,
        }
    }

    /// Names of the matched identities, in file order.
    pub fn names(&self) -> impl ExactSizeIterator<Item = &str> {
        self.names.iter().map(|n| &**n)
    }

    /// The names, shared: for records that outlive the connection.
    pub fn shared_names(&self) -> &[Arc<str>] {
        &self.names
    }

    /// Whether the caller matches no named identity (rules with `from: ["*"]` still apply).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }
}

/// The names, comma-separated, or `-` for none: for logs and audit records.
impl fmt::Display for IdentitySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.names.is_empty() {
            return f.write_str("-");
        }
        for (i, n) in self.names.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(n)?;
        }
        Ok(())
    }
}
