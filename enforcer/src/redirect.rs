//! Loads the kernel programs, attaches them to a cgroup and fills their maps.
//!
//! Enforces: TCP connects from the cgroup toward a protected destination reach the agent's
//! listener, never the destination directly, while a [`Redirect`] is alive. Reports: the
//! kernel's record of each redirected connect ([`Redirect::take_record`]) and its counters.
//! Dropping the [`Redirect`] detaches and unloads everything: nothing is pinned.

use std::{
    collections::BTreeSet,
    fs::File,
    io,
    net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    path::{Path, PathBuf},
    sync::Mutex,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, lpm_trie::Key},
    programs::{CgroupAttachMode, CgroupSockAddr, SockOps},
};
use enforcer_common::{
    AgentConfig, CONFIG_HAS_V6, CONFIG_MAP, CONN_BY_CLIENT_MAP, COUNTERS_MAP, ClientKey, ConnMeta,
    Counter, Ip6Words, MAX_PORT_RANGES, PROTECTED_MAP, PROTECTED_MAX_ENTRIES, PortRange,
    PortRanges,
};

use crate::policy::{Destination, Ports, Prefix};

/// The kernel object built by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/enforcer"));

/// aya attaches with a BPF link (kernel >= 5.7), and cgroup links always coexist with other
/// programs on the cgroup; the kernel rejects any attach flag on them, so `Single` (no flag).
const ATTACH_MODE: CgroupAttachMode = CgroupAttachMode::Single;

/// Programs in the object, by function name, in the order they are attached. sock_ops comes
/// first so no redirected connection can be established before its record can be re-keyed.
const SOCK_OPS: &str = "enf_sockops";
const SOCK_ADDR_PROGRAMS: [&str; 4] = [
    "enf_getpeer4",
    "enf_getpeer6",
    "enf_connect4",
    "enf_connect6",
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no cgroup v2 mount found in /proc/self/mountinfo")]
    NoCgroup2Mount,
    #[error("cgroup {}: cannot open", path.display())]
    OpenCgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cgroup {}: not a cgroup v2 directory", path.display())]
    NotCgroup2 { path: PathBuf },
    #[error("missing capabilities {missing} (run as root, or grant them)")]
    MissingCapabilities { missing: String },
    #[error("loading eBPF programs")]
    Load(#[source] aya::EbpfError),
    #[error("eBPF program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("BUG: eBPF object has no {what} `{name}`")]
    Missing {
        what: &'static str,
        name: &'static str,
    },
    #[error("eBPF map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error(
        "destination {prefix}: more than {MAX_PORT_RANGES} distinct port ranges apply; merge some"
    )]
    TooManyPortRanges { prefix: Prefix },
    #[error("more than {PROTECTED_MAX_ENTRIES} protected prefixes")]
    TooManyPrefixes,
}

/// Reader of the programs' aya-log records.
pub type KernelLog = aya_log::EbpfLogger<&'static dyn log::Log>;

/// Where the agent listens for redirected connections.
#[derive(Debug, Clone, Copy)]
pub struct Listeners {
    pub v4: SocketAddrV4,
    pub v6: Option<SocketAddrV6>,
}

/// The loaded and attached programs. Detached on drop.
pub struct Redirect {
    /// Owns the programs and their links: dropping it detaches them.
    _ebpf: Ebpf,
    conn_by_client: Mutex<HashMap<MapData, ClientKey, ConnMeta>>,
    protected: Mutex<Protected>,
    counters: PerCpuArray<MapData, u64>,
    cgroup: PathBuf,
}

impl Redirect {
    /// Load the programs, fill their maps, attach them to `cgroup`. Returns the loader's log
    /// reader too; it must be polled (see `aya_log::EbpfLogger::flush`) and kept alive.
    pub fn attach(
        cgroup: &Path,
        listeners: Listeners,
        destinations: &[Destination],
        kernel_log_level: aya_log::Level,
    ) -> Result<(Self, Option<KernelLog>), Error> {
        check_capabilities()?;
        let cgroup_dir = open_cgroup(cgroup)?;
        let entries = protected_entries(destinations)?;

        let mut ebpf = EbpfLoader::new()
            .override_global(aya_log::LEVEL, &(kernel_log_level as u8), false)
            .load(EBPF_OBJECT)
            .map_err(Error::Load)?;
        // No log map means no log statement survived compilation: nothing to read.
        let logger = aya_log::EbpfLogger::init(&mut ebpf).ok();

        let mut config: Array<_, AgentConfig> = take_map(&mut ebpf, CONFIG_MAP)?;
        config
            .set(0, &agent_config(listeners), 0)
            .map_err(|source| Error::Map {
                name: CONFIG_MAP,
                source,
            })?;
        let mut protected = Protected {
            map: take_map(&mut ebpf, PROTECTED_MAP)?,
            prefixes: BTreeSet::new(),
        };
        protected.replace(entries)?;
        let conn_by_client = take_map(&mut ebpf, CONN_BY_CLIENT_MAP)?;
        let counters = take_map(&mut ebpf, COUNTERS_MAP)?;

        let prog: &mut SockOps = program(&mut ebpf, SOCK_OPS)?;
        prog.load().map_err(|source| Error::Program {
            name: SOCK_OPS,
            source,
        })?;
        prog.attach(&cgroup_dir, ATTACH_MODE)
            .map_err(|source| Error::Program {
                name: SOCK_OPS,
                source,
            })?;
        for name in SOCK_ADDR_PROGRAMS {
            let prog: &mut CgroupSockAddr = program(&mut ebpf, name)?;
            prog.load()
                .map_err(|source| Error::Program { name, source })?;
            prog.attach(&cgroup_dir, ATTACH_MODE)
                .map_err(|source| Error::Program { name, source })?;
        }
        Ok((
            Self {
                _ebpf: ebpf,
                conn_by_client: Mutex::new(conn_by_client),
                protected: Mutex::new(protected),
                counters,
                cgroup: cgroup.to_owned(),
            },
            logger,
        ))
    }

    /// Make `destinations` the protected set, as one step for new connects: entries are
    /// added or updated before stale ones are removed, so no destination that stays protected
    /// is ever missing from the map.
    pub fn set_destinations(&self, destinations: &[Destination]) -> Result<(), Error> {
        let entries = protected_entries(destinations)?;
        lock(&self.protected).replace(entries)
    }

    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// The names of the attached programs.
    pub fn programs(&self) -> impl Iterator<Item = &'static str> {
        std::iter::once(SOCK_OPS).chain(SOCK_ADDR_PROGRAMS)
    }

    /// Take (look up and forget) the kernel's record for an accepted connection, found by the
    /// connection's peer address.
    pub fn take_record(&self, peer: SocketAddr) -> Option<ConnMeta> {
        let key = client_key(peer);
        // Two syscalls; the lock is held only by the accept loops.
        let mut map = self
            .conn_by_client
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let meta = map.get(&key, 0).ok()?;
        let _ = map.remove(&key);
        Some(meta)
    }

    /// Kernel-side counters, summed over CPUs.
    pub fn counters(&self) -> Vec<(Counter, u64)> {
        Counter::ALL
            .iter()
            .map(|&c| {
                let total = self
                    .counters
                    .get(&(c as u32), 0)
                    .map(|per_cpu| per_cpu.iter().sum())
                    .unwrap_or(0);
                (c, total)
            })
            .collect()
    }
}

/// The protected-destinations map and the prefixes it holds.
struct Protected {
    map: LpmTrie<MapData, Ip6Words, PortRanges>,
    /// (prefix length, address words) of every entry in `map`.
    prefixes: BTreeSet<(u32, Ip6Words)>,
}

impl Protected {
    fn replace(&mut self, entries: Vec<(Key<Ip6Words>, PortRanges)>) -> Result<(), Error> {
        let map_err = |source| Error::Map {
            name: PROTECTED_MAP,
            source,
        };
        let mut next = BTreeSet::new();
        for (key, ranges) in &entries {
            self.map.insert(key, ranges, 0).map_err(map_err)?;
            next.insert((key.prefix_len(), key.data()));
        }
        for &(len, data) in self.prefixes.difference(&next) {
            self.map.remove(&Key::new(len, data)).map_err(map_err)?;
        }
        self.prefixes = next;
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, Error>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(Error::Missing { what: "map", name })?;
    T::try_from(map).map_err(|source| Error::Map { name, source })
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, Error>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf.program_mut(name).ok_or(Error::Missing {
        what: "program",
        name,
    })?;
    prog.try_into()
        .map_err(|source| Error::Program { name, source })
}

// === cgroups ===

/// The root of the cgroup v2 hierarchy, wherever it is mounted (`/sys/fs/cgroup` on a pure v2
/// host, `/sys/fs/cgroup/unified` on a hybrid one).
pub fn cgroup2_root() -> Result<PathBuf, Error> {
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| Error::OpenCgroup {
            path: "/proc/self/mountinfo".into(),
            source,
        })?;
    cgroup2_root_in(&mountinfo).ok_or(Error::NoCgroup2Mount)
}

/// Find the cgroup2 mount point in mountinfo text (proc(5): fields, ` - `, fstype, ...).
fn cgroup2_root_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (fields, rest) = line.split_once(" - ")?;
        let fstype = rest.split_whitespace().next()?;
        let mount_point = fields.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount_path(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal `\NNN`.
fn unescape_mount_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(b) => {
                out.push(b as char);
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn open_cgroup(path: &Path) -> Result<File, Error> {
    let dir = File::open(path).map_err(|source| Error::OpenCgroup {
        path: path.to_owned(),
        source,
    })?;
    let fs = nix::sys::statfs::fstatfs(&dir).map_err(|errno| Error::OpenCgroup {
        path: path.to_owned(),
        source: errno.into(),
    })?;
    if fs.filesystem_type() != nix::sys::statfs::CGROUP2_SUPER_MAGIC {
        return Err(Error::NotCgroup2 {
            path: path.to_owned(),
        });
    }
    Ok(dir)
}

// === capabilities ===

/// Capabilities the agent needs, with their bit numbers (linux/capability.h).
const REQUIRED_CAPS: [(&str, u32); 5] = [
    // Attach to cgroups; load sock_addr and sock_ops programs.
    ("CAP_NET_ADMIN", 12),
    // Read /proc/<pid>/exe of processes of other users.
    ("CAP_SYS_PTRACE", 19),
    // Read any caller's binary to digest it.
    ("CAP_DAC_READ_SEARCH", 2),
    // Programs read the current task's identity and the socket cookie.
    ("CAP_PERFMON", 38),
    // Create maps and load programs.
    ("CAP_BPF", 39),
];

fn check_capabilities() -> Result<(), Error> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let missing: Vec<&str> = REQUIRED_CAPS
        .iter()
        .filter(|(_, bit)| effective & (1 << bit) == 0)
        .map(|(name, _)| *name)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::MissingCapabilities {
            missing: missing.join(", "),
        })
    }
}

// === map contents ===

fn ip6_words(ip: Ipv6Addr) -> Ip6Words {
    let o = ip.octets();
    // The kernel compares these as bytes in network order: keep the bytes as they are.
    std::array::from_fn(|i| {
        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
    })
}

fn ip6_from_words(words: Ip6Words) -> Ipv6Addr {
    let mut o = [0u8; 16];
    for (i, w) in words.iter().enumerate() {
        o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
    }
    Ipv6Addr::from(o)
}

fn client_key(peer: SocketAddr) -> ClientKey {
    let ip = match peer.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    ClientKey {
        ip: ip6_words(ip),
        port: u32::from(peer.port()),
    }
}

/// The original destination recorded in `meta`.
pub fn original_destination(meta: &ConnMeta) -> SocketAddr {
    let ip = ip6_from_words(meta.orig_ip);
    let port = u16::from_be(meta.orig_port_be);
    match ip.to_ipv4_mapped() {
        Some(v4) => SocketAddr::new(IpAddr::V4(v4), port),
        None => SocketAddr::new(IpAddr::V6(ip), port),
    }
}

fn agent_config(listeners: Listeners) -> AgentConfig {
    let v6 = listeners.v6;
    AgentConfig {
        agent_tgid: std::process::id(),
        flags: if v6.is_some() { CONFIG_HAS_V6 } else { 0 },
        listen_ip4_be: u32::from_ne_bytes(listeners.v4.ip().octets()),
        listen_port4_be: listeners.v4.port().to_be(),
        listen_port6_be: v6.map_or(0, |a| a.port().to_be()),
        listen_ip6: v6.map_or([0; 4], |a| ip6_words(*a.ip())),
    }
}

/// The LPM trie's entries. An LPM lookup returns only the longest matching prefix, so each
/// entry carries the port ranges of every destination whose prefix covers it.
fn protected_entries(
    destinations: &[Destination],
) -> Result<Vec<(Key<Ip6Words>, PortRanges)>, Error> {
    let prefixes: BTreeSet<Prefix> = destinations.iter().map(|d| d.prefix).collect();
    if prefixes.len() > PROTECTED_MAX_ENTRIES as usize {
        return Err(Error::TooManyPrefixes);
    }
    prefixes
        .into_iter()
        .map(|prefix| {
            let covering = destinations
                .iter()
                .filter(|d| d.prefix.len <= prefix.len && d.prefix.contains(prefix.addr))
                .map(|d| d.ports);
            let merged = merge_ports(covering);
            if merged.len() > MAX_PORT_RANGES {
                return Err(Error::TooManyPortRanges { prefix });
            }
            let mut ranges = PortRanges {
                len: merged.len() as u32,
                ..Default::default()
            };
            for (slot, p) in ranges.ranges.iter_mut().zip(&merged) {
                *slot = PortRange {
                    first: p.first,
                    last: p.last,
                };
            }
            Ok((
                Key::new(u32::from(prefix.len), ip6_words(prefix.addr)),
                ranges,
            ))
        })
        .collect()
}

/// Sorted, with overlapping and adjacent ranges joined.
fn merge_ports(ports: impl Iterator<Item = Ports>) -> Vec<Ports> {
    let mut all: Vec<Ports> = ports.collect();
    all.sort();
    let mut out: Vec<Ports> = Vec::with_capacity(all.len());
    for p in all {
        match out.last_mut() {
            Some(last) if u32::from(p.first) <= u32::from(last.last) + 1 => {
                last.last = last.last.max(p.last)
            }
            _ => out.push(p),
        }
    }
    out
}

#[cfg(test)]
mod tests;
