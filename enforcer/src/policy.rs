//! The policy file: which destinations are protected.
//!
//! The file is parsed straight into types that cannot be invalid: an endpoint that does not
//! parse fails deserialisation, so the error carries the line and column of the bad value.
//! Host names are resolved once, at load.

use std::{
    collections::BTreeMap,
    fmt, fs,
    net::{IpAddr, Ipv6Addr, ToSocketAddrs},
    path::{Path, PathBuf},
    str::FromStr,
};

use serde::Deserialize;

/// The only policy format version this agent reads.
const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("policy {}: cannot read", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("policy {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("policy {}: unsupported version {found} (this agent reads version {VERSION})", path.display())]
    Version { path: PathBuf, found: u32 },
    #[error("policy {}: no protected destination (`services` is empty)", path.display())]
    NoDestination { path: PathBuf },
    #[error("policy {}: service `{service}`: host `{host}` does not resolve", path.display())]
    Resolve {
        path: PathBuf,
        service: String,
        host: String,
        #[source]
        source: std::io::Error,
    },
}

/// A loaded policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub services: BTreeMap<String, Service>,
}

/// A protected API: connects to any of its endpoints go through the agent.
#[derive(Debug, Clone)]
pub struct Service {
    pub destinations: Vec<Destination>,
}

/// An address prefix and a port range, both inclusive. IPv4 is kept IPv4-mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Destination {
    pub prefix: Prefix,
    pub ports: Ports,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Prefix {
    /// Network address, IPv4-mapped for IPv4, host bits cleared.
    pub addr: Ipv6Addr,
    /// Prefix length in the IPv6 form (an IPv4 /24 is 120).
    pub len: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ports {
    pub first: u16,
    pub last: u16,
}

// === file format ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    services: BTreeMap<String, ServiceFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceFile {
    endpoints: Vec<Endpoint>,
}

/// One `endpoints` entry: `HOST:PORTS`, `IP:PORTS`, `[IPv6]:PORTS` or `IP/LEN:PORTS` (IPv6
/// prefix as `[IPv6/LEN]:PORTS`), where PORTS is `N` or `N-M`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
enum Endpoint {
    Prefix(Prefix, Ports),
    Host(String, Ports),
}

// === impl Policy ===

impl Policy {
    /// Read, parse and resolve a policy file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parse and resolve policy text; `path` only names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, Error> {
        let file: File = serde_yaml_ng::from_str(text).map_err(|e| Error::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        if file.version != VERSION {
            return Err(Error::Version {
                path: path.to_owned(),
                found: file.version,
            });
        }
        let mut services = BTreeMap::new();
        for (name, svc) in file.services {
            let mut destinations = Vec::new();
            for ep in svc.endpoints {
                match ep {
                    Endpoint::Prefix(prefix, ports) => {
                        destinations.push(Destination { prefix, ports })
                    }
                    Endpoint::Host(host, ports) => {
                        let addrs =
                            (host.as_str(), ports.first)
                                .to_socket_addrs()
                                .map_err(|source| Error::Resolve {
                                    path: path.to_owned(),
                                    service: name.clone(),
                                    host: host.clone(),
                                    source,
                                })?;
                        for a in addrs {
                            let d = Destination {
                                prefix: Prefix::host(a.ip()),
                                ports,
                            };
                            if !destinations.contains(&d) {
                                destinations.push(d);
                            }
                        }
                    }
                }
            }
            if !destinations.is_empty() {
                services.insert(name, Service { destinations });
            }
        }
        if services.is_empty() {
            return Err(Error::NoDestination {
                path: path.to_owned(),
            });
        }
        Ok(Self { services })
    }

    /// Every protected destination, with the service it belongs to.
    pub fn destinations(&self) -> impl Iterator<Item = (&str, &Destination)> {
        self.services
            .iter()
            .flat_map(|(name, s)| s.destinations.iter().map(move |d| (name.as_str(), d)))
    }

    /// The service a destination address belongs to, if any (the most specific prefix wins).
    pub fn service_for(&self, ip: IpAddr, port: u16) -> Option<&str> {
        let ip = to_v6(ip);
        self.destinations()
            .filter(|(_, d)| d.prefix.contains(ip) && d.ports.contains(port))
            .max_by_key(|(_, d)| d.prefix.len)
            .map(|(name, _)| name)
    }
}

// === impl Prefix ===

impl Prefix {
    /// A single address.
    pub fn host(ip: IpAddr) -> Self {
        Self {
            addr: to_v6(ip),
            len: 128,
        }
    }

    fn new(ip: IpAddr, len: u8) -> Result<Self, String> {
        let (addr, len) = match ip {
            IpAddr::V4(_) if len > 32 => return Err(format!("IPv4 prefix length {len} > 32")),
            IpAddr::V4(v4) => (v4.to_ipv6_mapped(), len + 96),
            IpAddr::V6(_) if len > 128 => return Err(format!("IPv6 prefix length {len} > 128")),
            IpAddr::V6(v6) => (v6, len),
        };
        let mask = mask(len);
        let net = u128::from(addr) & mask;
        if net != u128::from(addr) {
            return Err(format!("{ip}/{} has host bits set", short_len(ip, len)));
        }
        Ok(Self { addr, len })
    }

    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        u128::from(ip) & mask(self.len) == u128::from(self.addr)
    }
}

fn mask(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    }
}

fn short_len(ip: IpAddr, len: u8) -> u8 {
    if ip.is_ipv4() { len - 96 } else { len }
}

fn to_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr.to_ipv4_mapped() {
            Some(v4) if self.len >= 96 => write!(f, "{v4}/{}", self.len - 96),
            _ => write!(f, "[{}/{}]", self.addr, self.len),
        }
    }
}

// === impl Ports ===

impl Ports {
    pub fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

impl FromStr for Ports {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let port = |p: &str| -> Result<u16, String> {
            match p.parse::<u16>() {
                Ok(0) | Err(_) => Err(format!("`{p}` is not a port (1-65535)")),
                Ok(n) => Ok(n),
            }
        };
        let (first, last) = match s.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => (port(s)?, port(s)?),
        };
        if first > last {
            return Err(format!("port range `{s}` is empty"));
        }
        Ok(Self { first, last })
    }
}

// === impl Endpoint ===

impl TryFrom<String> for Endpoint {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: String| format!("invalid endpoint `{s}`: {why}");
        let (host, ports) = if let Some(rest) = s.strip_prefix('[') {
            let (host, rest) = rest
                .split_once(']')
                .ok_or_else(|| bad("missing `]`".into()))?;
            let ports = rest
                .strip_prefix(':')
                .ok_or_else(|| bad("expected `]:PORT`".into()))?;
            (host, ports)
        } else {
            let (host, ports) = s
                .rsplit_once(':')
                .ok_or_else(|| bad("expected HOST:PORT".into()))?;
            // `fd00::1:80` could mean port 80 of fd00::1 or be an address without a port.
            if host.contains(':') {
                return Err(bad("an IPv6 address must be written in brackets".into()));
            }
            (host, ports)
        };
        let ports: Ports = ports.parse().map_err(bad)?;
        if let Some((ip, len)) = host.split_once('/') {
            let ip: IpAddr = ip
                .parse()
                .map_err(|_| bad(format!("`{ip}` is not an IP address")))?;
            let len: u8 = len
                .parse()
                .map_err(|_| bad(format!("`{len}` is not a prefix length")))?;
            return Ok(Endpoint::Prefix(Prefix::new(ip, len).map_err(bad)?, ports));
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Endpoint::Prefix(Prefix::host(ip), ports));
        }
        let valid_host = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid_host {
            return Err(bad(format!("`{host}` is not a host name or IP address")));
        }
        Ok(Endpoint::Host(host.to_ascii_lowercase(), ports))
    }
}

#[cfg(test)]
mod tests;
