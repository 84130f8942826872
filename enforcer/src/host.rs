//! This host's own addresses: the interface addresses of the agent's network namespace, kept
//! current from rtnetlink address events.
//!
//! Linux delivers a connect to any of them locally, so a service listening here is reached at
//! each of them. [`watch`] copies every change into the kernel's `HOST_ADDRS` map (where the
//! connect programs count such a connect as "this host", `enforcer_common::is_this_host`) and
//! into [`Addresses`], which the proxy resolves services with: both sides decide with the same
//! set and the same function. Reports: a log line per change.

use std::{
    collections::BTreeSet,
    io,
    net::{IpAddr, Ipv6Addr},
    os::fd::{AsRawFd as _, OwnedFd},
    sync::{Arc, RwLock},
};

use enforcer_common::Ip6Words;
use nix::sys::socket::{
    AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, socket,
};
use tracing::{info, warn};

use crate::redirect::{Redirect, ip6_from_words, ip6_words};

/// rtnetlink multicast groups (linux/rtnetlink.h): IPv4 and IPv6 address changes.
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV6_IFADDR: u32 = 0x100;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot subscribe to rtnetlink address events")]
    Subscribe(#[source] nix::Error),
    #[error("cannot read the interface addresses")]
    Read(#[source] io::Error),
    #[error("cannot start the host address watcher")]
    Spawn(#[source] io::Error),
}

/// One reading of the host's addresses, IPv4 ones IPv4-mapped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostAddrs(BTreeSet<Ipv6Addr>);

// === impl HostAddrs ===

impl HostAddrs {
    pub fn new(addrs: impl IntoIterator<Item = IpAddr>) -> Self {
        Self(addrs.into_iter().map(to_v6).collect())
    }

    /// The addresses of every interface of the calling thread's network namespace.
    pub fn read() -> Result<Self, Error> {
        let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
        // SAFETY: valid out pointer; the list is freed below and not used after.
        if unsafe { libc::getifaddrs(&mut head) } != 0 {
            return Err(Error::Read(io::Error::last_os_error()));
        }
        let mut addrs = BTreeSet::new();
        let mut next = head;
        while !next.is_null() {
            // SAFETY: a node of the list getifaddrs returned; `ifa_addr` may be null, and
            // points to a sockaddr of the size its family says.
            unsafe {
                let ifa = &*next;
                if let Some(ip) = sockaddr_ip(ifa.ifa_addr) {
                    addrs.insert(to_v6(ip));
                }
                next = ifa.ifa_next;
            }
        }
        // SAFETY: the list from getifaddrs above, freed once.
        unsafe { libc::freeifaddrs(head) };
        Ok(Self(addrs))
    }

    /// Whether a connect to `ip` is delivered to this host (see `enforcer_common::is_this_host`).
    pub fn is_this_host(&self, ip: IpAddr) -> bool {
        enforcer_common::is_this_host(&ip6_words(to_v6(ip)), |w| self.contains_words(w))
    }

    pub fn iter(&self) -> impl Iterator<Item = Ipv6Addr> + '_ {
        self.0.iter().copied()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn contains_words(&self, words: &Ip6Words) -> bool {
        self.0.contains(&ip6_from_words(*words))
    }
}

/// # Safety
/// `sa` is null or points to a socket address of the size its family implies.
unsafe fn sockaddr_ip(sa: *const libc::sockaddr) -> Option<IpAddr> {
    if sa.is_null() {
        return None;
    }
    // SAFETY: as the caller promises.
    unsafe {
        match i32::from((*sa).sa_family) {
            libc::AF_INET => {
                let sin = &*sa.cast::<libc::sockaddr_in>();
                Some(IpAddr::from(sin.sin_addr.s_addr.to_ne_bytes()))
            }
            libc::AF_INET6 => {
                let sin6 = &*sa.cast::<libc::sockaddr_in6>();
                Some(IpAddr::from(sin6.sin6_addr.s6_addr))
            }
            _ => None,
        }
    }
}

fn to_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// The host's addresses as last read, shared with the connections being served.
#[derive(Debug, Default)]
pub struct Addresses(RwLock<Arc<HostAddrs>>);

// === impl Addresses ===

impl Addresses {
    pub fn new(addrs: HostAddrs) -> Self {
        Self(RwLock::new(Arc::new(addrs)))
    }

    pub fn current(&self) -> Arc<HostAddrs> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, addrs: HostAddrs) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(addrs);
    }
}

/// Addresses as a log field: IPv4 ones in their own form.
fn list<'a>(addrs: impl Iterator<Item = &'a Ipv6Addr>) -> String {
    let shown: Vec<String> = addrs
        .map(|ip| match ip.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => ip.to_string(),
        })
        .collect();
    shown.join(" ")
}

/// A socket subscribed to address changes. Subscribe before the first [`HostAddrs::read`], so
/// no change between the two is missed.
pub struct Subscription(OwnedFd);

impl Subscription {
    pub fn new() -> Result<Self, Error> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )
        .map_err(Error::Subscribe)?;
        bind(
            fd.as_raw_fd(),
            &NetlinkAddr::new(0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR),
        )
        .map_err(Error::Subscribe)?;
        Ok(Self(fd))
    }

    /// Block until at least one address change is announced. The messages themselves are not
    /// parsed: the addresses are read afresh after any of them, which also covers messages
    /// lost to a full socket buffer (`ENOBUFS`).
    fn wait(&self) -> Result<(), nix::Error> {
        let mut buf = [0u8; 8192];
        match recv(
            self.0.as_raw_fd(),
            &mut buf,
            nix::sys::socket::MsgFlags::empty(),
        ) {
            Ok(_) | Err(nix::Error::ENOBUFS) => Ok(()),
            Err(nix::Error::EINTR) => self.wait(),
            Err(e) => Err(e),
        }
    }
}

/// Keep the kernel's set and `shared` equal to the host's addresses, on a thread of its own
/// (it blocks on the netlink socket), for the life of the process.
pub fn watch(
    subscription: Subscription,
    redirect: Arc<Redirect>,
    shared: Arc<Addresses>,
) -> Result<(), Error> {
    std::thread::Builder::new()
        .name("host-addrs".into())
        .spawn(move || {
            loop {
                if let Err(e) = subscription.wait() {
                    // The set can no longer follow the host: say so loudly, keep the last one.
                    warn!(error = %e, "address events lost: host addresses no longer followed");
                    return;
                }
                let addrs = match HostAddrs::read() {
                    Ok(addrs) => addrs,
                    Err(e) => {
                        warn!(error = %e, "host addresses not re-read");
                        continue;
                    }
                };
                let old = shared.current();
                if *old == addrs {
                    continue;
                }
                // The kernel first, so a connection redirected as "this host" finds its
                // service in `shared`.
                match redirect.set_host_addrs(&addrs) {
                    Ok(()) => info!(
                        added = %list(addrs.0.difference(&old.0)),
                        removed = %list(old.0.difference(&addrs.0)),
                        "host addresses changed"
                    ),
                    Err(e) => warn!(error = %e, "host addresses not given to the kernel"),
                }
                shared.set(addrs);
            }
        })
        .map(drop)
        .map_err(Error::Spawn)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn this_host_includes_host_addresses_only_when_listed() {
        let host = HostAddrs::new(["10.200.0.1".parse().unwrap(), "fd00::1".parse().unwrap()]);
        for local in ["10.200.0.1", "fd00::1", "127.0.0.9", "0.0.0.0", "::", "::1"] {
            assert!(host.is_this_host(local.parse().unwrap()), "{local}");
        }
        for remote in ["10.200.0.2", "fd00::2", "192.0.2.1"] {
            assert!(!host.is_this_host(remote.parse().unwrap()), "{remote}");
        }
        assert!(!HostAddrs::default().is_this_host("10.200.0.1".parse().unwrap()));
    }

    #[test]
    fn reads_loopback() {
        let host = HostAddrs::read().unwrap();
        assert!(
            host.iter()
                .any(|ip| ip == Ipv4Addr::LOCALHOST.to_ipv6_mapped()),
            "{host:?}"
        );
    }
}
