//! Types that cross the kernel/user boundary.
//!
//! Every type here is `#[repr(C)]`, has no implicit padding (explicit `_pad` fields instead, so
//! no byte of a map key is ever uninitialised) and has its size asserted at compile time. Each
//! map's name constant sits beside the types it holds. Addresses are kept as four 32-bit words in
//! network byte order, the layout of `bpf_sock_addr.user_ip6`; IPv4 addresses are stored
//! IPv4-mapped (`::ffff:a.b.c.d`) so that one map serves both families.
#![no_std]

/// An IPv6 address (or IPv4-mapped IPv4 address) as four words in network byte order.
pub type Ip6Words = [u32; 4];

/// The IPv4-mapped form of an IPv4 address given in network byte order.
pub const fn v4_mapped_from_be(ip4_be: u32) -> Ip6Words {
    [0, 0, u32::to_be(0x0000_ffff), ip4_be]
}

/// Whether `ip` is an IPv4-mapped IPv6 address.
pub const fn is_v4_mapped(ip: &Ip6Words) -> bool {
    ip[0] == 0 && ip[1] == 0 && ip[2] == u32::to_be(0x0000_ffff)
}

// === This host ===

/// Hash of this host's own addresses (key an [`Ip6Words`], IPv4 mapped; value unused, 0): the
/// addresses of the agent's network namespace, kept current by the agent.
pub const HOST_ADDRS_MAP: &str = "HOST_ADDRS";
/// Capacity of [`HOST_ADDRS_MAP`].
pub const HOST_ADDRS_MAX_ENTRIES: u32 = 4_096;

/// The key under which [`PROTECTED_MAP`] holds the ports of services that listen on this host
/// (the unspecified address `::`, itself one of the forms of "this host"). A connect whose
/// destination [`is_this_host`] is looked up there as well as under its own address: a
/// server bound to the wildcard answers at every local address, so a local service is
/// protected on its ports at all of them.
pub const THIS_HOST: Ip6Words = [0; 4];

/// Whether a connect to `ip` is delivered to this host: the unspecified address (`0.0.0.0`,
/// `::`, `::ffff:0.0.0.0`), loopback (`127.0.0.0/8`, `::1`, `::ffff:127.0.0.0/104`), or one
/// of the host's own addresses, which `is_host_addr` tells. Both the connect programs and the
/// agent's service lookup decide with this one function, so they cannot disagree.
#[inline(always)]
pub fn is_this_host(ip: &Ip6Words, is_host_addr: impl FnOnce(&Ip6Words) -> bool) -> bool {
    is_namespace_local(ip) || is_host_addr(ip)
}

// === Protected destinations ===

/// LPM trie of protected destinations: key data is an [`Ip6Words`] (prefix length counts from
/// the first bit of the IPv6 form, so an IPv4 /24 is stored as /120), value a [`PortRanges`].
pub const PROTECTED_MAP: &str = "PROTECTED";
/// Capacity of [`PROTECTED_MAP`].
pub const PROTECTED_MAX_ENTRIES: u32 = 16_384;
/// Port ranges one prefix can carry. The agent folds the ranges of every covering (shorter)
/// prefix into each entry, because an LPM lookup only returns the longest match.
pub const MAX_PORT_RANGES: usize = 16;

/// An inclusive range of TCP ports, host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

/// The ports protected at one prefix. Only the first `len` entries of `ranges` are used.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRanges {
    pub len: u32,
    /// Bit `i` set: connects matching `ranges[i]` go to their destination untouched while no
    /// agent is ready (`failMode: open`); clear: they are refused (`failMode: closed`).
    pub fail_open: u32,
    pub ranges: [PortRange; MAX_PORT_RANGES],
}

/// What happens to a protected connect while no agent is ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailMode {
    /// Refused at once (`ECONNREFUSED`): nothing bypasses the policy.
    Closed,
    /// Sent to the original destination untouched, and counted.
    Open,
}

impl PortRanges {
    /// The fail mode of the range `port` (host byte order) falls in, if it is protected.
    #[inline(always)]
    pub fn lookup(&self, port: u16) -> Option<FailMode> {
        // A fixed bound keeps the loop verifiable; `len` only cuts it short.
        let mut i = 0;
        while i < MAX_PORT_RANGES {
            if i as u32 >= self.len {
                return None;
            }
            let r = self.ranges[i];
            if r.first <= port && port <= r.last {
                return Some(if self.fail_open & (1 << i) != 0 {
                    FailMode::Open
                } else {
                    FailMode::Closed
                });
            }
            i += 1;
        }
        None
    }
}

const _: () = assert!(
    MAX_PORT_RANGES <= u32::BITS as usize,
    "fail_open is a bit set"
);

// === Agent configuration ===

/// Single-slot array holding the [`AgentConfig`] the programs redirect to.
pub const CONFIG_MAP: &str = "CONFIG";

/// `AgentConfig::flags`: the agent has an IPv6 listener.
pub const CONFIG_HAS_V6: u32 = 1;
/// `AgentConfig::flags`: the kernel cannot tell the agent its network namespace cookie
/// (`SO_NETNS_COOKIE` is Linux 5.14) and the agent runs in the initial network namespace:
/// programs compare callers against the initial namespace's cookie instead of `netns_cookie`.
pub const CONFIG_NETNS_INIT: u32 = 2;

/// Version of the pinned maps' layout and meaning. A restarted agent adopts pinned maps only
/// of its own version (and aya also refuses maps whose sizes differ); bump it whenever a map's
/// key or value changes meaning, even at the same size.
pub const LAYOUT_VERSION: u32 = 3;

/// Where redirected connects go, and who the agent is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentConfig {
    /// [`LAYOUT_VERSION`] of the agent that wrote it; 0 in a map no agent has written yet.
    pub layout: u32,
    pub _pad: u32,
    /// The agent's process id (tgid). Connects made by any of its threads are never redirected.
    pub agent_tgid: u32,
    /// `CONFIG_*` bits.
    pub flags: u32,
    /// IPv4 listener address, network byte order.
    pub listen_ip4_be: u32,
    /// IPv4 listener port, network byte order.
    pub listen_port4_be: u16,
    /// IPv6 listener port, network byte order.
    pub listen_port6_be: u16,
    /// IPv6 listener address.
    pub listen_ip6: Ip6Words,
    /// Cookie of the agent's network namespace (see [`CONFIG_NETNS_INIT`]). Only connects made
    /// in it are redirected: the agent's listener is not in any other.
    pub netns_cookie: u64,
}

// === Readiness ===

/// Single-slot array: `CLOCK_BOOTTIME` in ns at the agent's last heartbeat; 0 once it stopped.
/// The agent writes it every [`HEARTBEAT_INTERVAL_NS`]; programs treat the agent as down (and
/// apply each destination's [`FailMode`]) when it is older than [`HEARTBEAT_TIMEOUT_NS`], so a
/// killed or hung agent counts as down within that time.
pub const HEARTBEAT_MAP: &str = "HEARTBEAT";
pub const HEARTBEAT_INTERVAL_NS: u64 = 200_000_000;
pub const HEARTBEAT_TIMEOUT_NS: u64 = 1_000_000_000;

/// Whether a heartbeat written at `beat` (boot ns) still vouches for the agent at `now`.
#[inline(always)]
pub const fn agent_ready(beat: u64, now: u64) -> bool {
    beat != 0 && now.wrapping_sub(beat) < HEARTBEAT_TIMEOUT_NS
}

// === Connection records ===

/// LRU hash: socket cookie (u64) → [`ConnMeta`], written at connect, read by getpeername and
/// sock_ops, removed when the socket closes.
pub const CONN_BY_COOKIE_MAP: &str = "CONN_BY_COOKIE";
/// LRU hash: [`ClientKey`] → [`ConnMeta`], written by sock_ops when a redirected connection is
/// established, taken (looked up and removed) by the agent when it accepts it.
pub const CONN_BY_CLIENT_MAP: &str = "CONN_BY_CLIENT";
/// Capacity of each connection map.
pub const CONN_MAX_ENTRIES: u32 = 65_536;

/// What the kernel attests about a redirected connect, recorded at the moment of the call.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnMeta {
    /// Original destination address (IPv4-mapped for IPv4).
    pub orig_ip: Ip6Words,
    /// Original destination port, network byte order.
    pub orig_port_be: u16,
    /// `AF_INET` or `AF_INET6`: the family of the calling socket.
    pub family: u16,
    /// Process id (thread group id) of the caller.
    pub tgid: u32,
    /// Thread id of the caller.
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub _pad: u32,
    /// cgroup v2 id (inode number of the cgroup directory) of the caller.
    pub cgroup_id: u64,
    /// `CLOCK_BOOTTIME` at connect, in ns; lets the agent detect pid reuse.
    pub connect_boot_ns: u64,
    /// Task command name, NUL padded.
    pub comm: [u8; 16],
    /// The caller's [`EXEC_STAMPS_MAP`] entry at connect. Never 0: connect stamps a process
    /// that has none. The agent refuses the identity if the entry differs when it has opened
    /// the caller's executable: the process exec'd (or began to) since its connect.
    pub exec_stamp: u64,
    /// Cookie of the caller's network namespace, which is the agent's (connects from others
    /// are not recorded), as the agent names it ([`AgentConfig::netns_cookie`]).
    pub netns_cookie: u64,
}

/// The client end of a redirected connection as the agent sees it (its peer address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ClientKey {
    /// Client address (IPv4-mapped for IPv4 sockets and for IPv4 peers of IPv6 sockets).
    pub ip: Ip6Words,
    /// Client port, host byte order (u32 so the key has no padding).
    pub port: u32,
    pub _pad: u32,
    /// Cookie of the client's network namespace: a record made in another namespace is never
    /// found by a connection in the agent's, whatever its address.
    pub netns_cookie: u64,
}

// === Exec stamps ===

/// Hash without preallocation: tgid (u32) → `CLOCK_BOOTTIME` ns (u64) of the process's last
/// exec (stamped when it begins, where the kernel has `sched_prepare_exec`, and when it
/// completes), or of its first protected connect if no exec was seen. Removed when the
/// thread-group leader exits. Sized by the agent to the host's `pid_max`: keys are tgids, so
/// the map can never hold more live keys than that and an insert cannot fail for lack of room,
/// while an LRU map could be flushed by an attacker forking processes, evicting the entries of
/// others (whose connects then fail as if they had exec'd).
pub const EXEC_STAMPS_MAP: &str = "EXEC_STAMPS";
/// Capacity compiled into the object; the agent sets the real one at load.
pub const EXEC_STAMPS_DEFAULT_ENTRIES: u32 = 32_768;
/// Upper bound of `pid_max` (`PID_MAX_LIMIT` on 64-bit).
pub const PID_MAX_LIMIT: u32 = 4 * 1024 * 1024;

/// Whether a connect to `ip` in a network namespace other than the agent's stays inside that
/// namespace: its loopback and any-address (IPv4, IPv6 and IPv4-mapped forms), which never
/// reach the host's services.
#[inline(always)]
pub const fn is_namespace_local(ip: &Ip6Words) -> bool {
    if is_v4_mapped(ip) {
        let first = u32::from_be(ip[3]) >> 24;
        return first == 127 || ip[3] == 0;
    }
    ip[0] == 0 && ip[1] == 0 && ip[2] == 0 && (ip[3] == 0 || ip[3] == u32::to_be(1))
}

// === Counters ===

/// Per-CPU array of u64 event counters, indexed by [`Counter`].
pub const COUNTERS_MAP: &str = "COUNTERS";

/// Kernel-side events, counted per CPU.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// A connect to a protected destination was sent to the agent.
    Redirected = 0,
    /// A TCP connect to an unprotected destination passed untouched.
    Passed = 1,
    /// A connect by the agent itself passed untouched.
    AgentPassed = 2,
    /// A redirected connection was established but its connect record was gone.
    LookupMiss = 3,
    /// A record could not be stored; the connect was refused (fail closed).
    MapFull = 4,
    /// A protected IPv6 connect was refused because the agent has no IPv6 listener.
    NoListener = 5,
    /// No agent was ready: a connect to a `failMode: closed` destination was refused.
    FailedClosed = 6,
    /// No agent was ready: a connect to a `failMode: open` destination went direct.
    FailedOpen = 7,
    /// A protected connect from another network namespace than the agent's was refused.
    ForeignNetns = 8,
}

impl Counter {
    pub const ALL: [Counter; 9] = [
        Counter::Redirected,
        Counter::Passed,
        Counter::AgentPassed,
        Counter::LookupMiss,
        Counter::MapFull,
        Counter::NoListener,
        Counter::FailedClosed,
        Counter::FailedOpen,
        Counter::ForeignNetns,
    ];

    /// Stable snake_case name, used in logs and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Redirected => "redirected",
            Counter::Passed => "passed",
            Counter::AgentPassed => "agent_passed",
            Counter::LookupMiss => "lookup_miss",
            Counter::MapFull => "map_full",
            Counter::NoListener => "no_listener",
            Counter::FailedClosed => "failed_closed",
            Counter::FailedOpen => "failed_open",
            Counter::ForeignNetns => "foreign_netns",
        }
    }
}

/// Number of slots in [`COUNTERS_MAP`]: room to add counters without changing the pinned
/// map's size, so an agent with more counters still adopts it.
pub const COUNTERS_LEN: u32 = 32;

// === Pinning ===

/// The maps a restarted agent adopts from the pin directory: every piece of state that must
/// outlive one agent process. (The log ring buffer is the programs' own and is not pinned.)
pub const PINNED_MAPS: [&str; 7] = [
    PROTECTED_MAP,
    CONFIG_MAP,
    CONN_BY_COOKIE_MAP,
    CONN_BY_CLIENT_MAP,
    COUNTERS_MAP,
    HEARTBEAT_MAP,
    EXEC_STAMPS_MAP,
];

const _: () = {
    assert!(core::mem::size_of::<PortRange>() == 4);
    assert!(core::mem::size_of::<PortRanges>() == 8 + 4 * MAX_PORT_RANGES);
    assert!(core::mem::size_of::<AgentConfig>() == 48);
    assert!(Counter::ALL.len() <= COUNTERS_LEN as usize);
    assert!(core::mem::size_of::<ConnMeta>() == 88);
    assert!(core::mem::size_of::<ClientKey>() == 32);
};

#[cfg(feature = "user")]
mod user {
    // SAFETY: all are #[repr(C)], Copy, contain only integers and have no padding (asserted above).
    unsafe impl aya::Pod for super::PortRanges {}
    unsafe impl aya::Pod for super::AgentConfig {}
    unsafe impl aya::Pod for super::ConnMeta {}
    unsafe impl aya::Pod for super::ClientKey {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_respect_len() {
        let mut r = PortRanges {
            len: 1,
            ..Default::default()
        };
        r.ranges[0] = PortRange {
            first: 80,
            last: 80,
        };
        r.ranges[1] = PortRange {
            first: 443,
            last: 443,
        };
        assert_eq!(r.lookup(80), Some(FailMode::Closed));
        assert_eq!(r.lookup(443), None, "entries past len are ignored");
        r.len = 2;
        r.fail_open = 0b10;
        assert_eq!(r.lookup(443), Some(FailMode::Open));
        assert_eq!(r.lookup(80), Some(FailMode::Closed));
        assert_eq!(r.lookup(81), None);
    }

    #[test]
    fn heartbeat_expires() {
        assert!(!agent_ready(0, 5), "never written");
        assert!(agent_ready(10, 10 + HEARTBEAT_TIMEOUT_NS - 1));
        assert!(!agent_ready(10, 10 + HEARTBEAT_TIMEOUT_NS));
    }

    #[test]
    fn this_host_forms() {
        let v4 = |a: [u8; 4]| v4_mapped_from_be(u32::from_ne_bytes(a));
        let v6 = |s: &str| {
            let o = s.parse::<core::net::Ipv6Addr>().unwrap().octets();
            core::array::from_fn(|i| {
                u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
            })
        };
        let none = |_: &Ip6Words| false;
        for local in [
            v4([0, 0, 0, 0]),
            v4([127, 0, 0, 1]),
            v4([127, 0, 0, 2]),
            v4([127, 255, 255, 254]),
            v6("::"),
            v6("::1"),
            v6("::ffff:0.0.0.0"),
            v6("::ffff:127.1.2.3"),
        ] {
            assert!(is_this_host(&local, none), "{local:x?}");
        }
        for remote in [
            v4([10, 0, 0, 1]),
            v4([128, 0, 0, 1]),
            v4([126, 255, 255, 255]),
            v4([0, 0, 0, 1]),
            v6("::2"),
            v6("::127.0.0.1"),
            v6("fe80::1"),
            v6("2001:db8::1"),
            v6("1::1"),
            v6("0:0:1::1"),
        ] {
            assert!(!is_this_host(&remote, none), "{remote:x?}");
        }
        let host = v4([10, 200, 0, 1]);
        assert!(is_this_host(&host, |ip| *ip == host));
        assert!(!is_this_host(&v4([10, 200, 0, 2]), |ip| *ip == host));
    }

    #[test]
    fn namespace_local_destinations() {
        let v4 = |a, b, c, d| v4_mapped_from_be(u32::from_be_bytes([a, b, c, d]).to_be());
        let v6 = |last: u32| [0, 0, 0, last.to_be()];
        assert!(is_namespace_local(&v4(127, 0, 0, 1)));
        assert!(is_namespace_local(&v4(127, 3, 2, 1)));
        assert!(is_namespace_local(&v4(0, 0, 0, 0)));
        assert!(is_namespace_local(&v6(0)), "::");
        assert!(is_namespace_local(&v6(1)), "::1");
        assert!(!is_namespace_local(&v4(10, 0, 0, 1)));
        assert!(!is_namespace_local(&v4(128, 0, 0, 1)));
        assert!(!is_namespace_local(&v6(2)));
        assert!(!is_namespace_local(&[
            u32::to_be(0x2001_0db8),
            0,
            0,
            1u32.to_be()
        ]));
    }

    #[test]
    fn v4_mapping() {
        let ip = v4_mapped_from_be(u32::from_be_bytes([10, 0, 0, 1]).to_be());
        assert!(is_v4_mapped(&ip));
        assert!(!is_v4_mapped(&[0, 0, 0, 1u32.to_be()]));
    }
}
