//! Where a protected service listens: address prefixes and port ranges.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use crate::host::HostAddrs;

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

/// One `endpoints` entry: `HOST:PORTS`, `IP:PORTS`, `[IPv6]:PORTS` or `IP/LEN:PORTS` (IPv6
/// prefix as `[IPv6/LEN]:PORTS`), where PORTS is `N` or `N-M`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Endpoint {
    Prefix(Prefix, Ports),
    /// A host name, lower-cased; resolved when the policy loads.
    Host(String, Ports),
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

    /// Whether the prefix holds an address a connect to which this host answers (unspecified,
    /// loopback, or one of `host`): a service there is protected on its ports at every such
    /// address, since a server bound to the wildcard answers at all of them.
    pub fn reaches_this_host(&self, host: &HostAddrs) -> bool {
        // The first address of each range `is_this_host` knows without `host`: a prefix
        // holding one of them, or lying inside one, holds a local address.
        const LOCAL_RANGES: [Ipv6Addr; 4] = [
            Ipv6Addr::UNSPECIFIED,
            Ipv6Addr::LOCALHOST,
            Ipv4Addr::UNSPECIFIED.to_ipv6_mapped(),
            Ipv4Addr::new(127, 0, 0, 0).to_ipv6_mapped(),
        ];
        host.is_this_host(IpAddr::V6(self.addr))
            || LOCAL_RANGES.iter().any(|&ip| self.contains(ip))
            || host.iter().any(|ip| self.contains(ip))
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

pub(super) fn to_v6(ip: IpAddr) -> Ipv6Addr {
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

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
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
