//! Loads the kernel programs, attaches them to a cgroup, pins them and fills their maps.
//!
//! Enforces: TCP connects from the cgroup toward a protected destination reach the agent's
//! listener, never the destination directly, while the agent's heartbeat is fresh; while it is
//! not, each destination's fail mode applies (refused, or direct). Reports: the kernel's record
//! of each redirected connect ([`Redirect::take_record`]) and its counters.
//!
//! Everything outlives the agent process: links and the maps that hold state are pinned under
//! the pin directory (`maps/NAME`, `links/PROGRAM`), so stopping or killing the agent leaves
//! the programs attached and failing safe. A new agent adopts the pinned maps and swaps its
//! programs into the pinned links in place ([`Redirect::install`]); [`uninstall`] removes it
//! all.

mod link;

use std::{
    collections::BTreeSet,
    fs::File,
    io,
    net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::{
        fd::AsFd as _,
        unix::fs::{DirBuilderExt as _, MetadataExt as _},
    },
    path::{Path, PathBuf},
    sync::Mutex,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, lpm_trie::Key},
    programs::{
        CgroupAttachMode, CgroupSockAddr, RawTracePoint, SockOps,
        links::{FdLink, LinkError},
    },
};
use enforcer_common::{
    AgentConfig, CONFIG_HAS_V6, CONFIG_MAP, CONFIG_NETNS_INIT, CONN_BY_CLIENT_MAP, COUNTERS_MAP,
    ClientKey, ConnMeta, Counter, EXEC_STAMPS_DEFAULT_ENTRIES, EXEC_STAMPS_MAP, HEARTBEAT_MAP,
    HOST_ADDRS_MAP, HOST_ADDRS_MAX_ENTRIES, Ip6Words, LAYOUT_VERSION, MAX_PORT_RANGES,
    PID_MAX_LIMIT, PINNED_MAPS, PROTECTED_MAP, PROTECTED_MAX_ENTRIES, PortRange, PortRanges,
    THIS_HOST, agent_ready,
};
use tracing::{info, warn};

use crate::{
    host::HostAddrs,
    policy::{Destination, FailMode, Ports, Prefix},
};

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
/// Raw tracepoint programs and the tracepoint each is attached to (global, not per cgroup).
/// They are attached before the connect programs, so every exec after those can be seen.
const TRACEPOINT_PROGRAMS: [(&str, &str); 3] = [
    ("enf_exec", "sched_process_exec"),
    ("enf_exit", "sched_process_exit"),
    ("enf_prepare_exec", "sched_prepare_exec"),
];
/// The tracepoint a kernel may lack (Linux 6.10). Without it an exec is seen only once it has
/// completed: see "What attestation sees" in docs/policy.md.
const OPTIONAL_TRACEPOINT: &str = "sched_prepare_exec";

/// Where the agent pins by default.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/enforcer";
/// Where bpffs is conventionally mounted; the agent mounts it there if nothing is.
const BPFFS: &str = "/sys/fs/bpf";
/// linux/magic.h
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

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
    #[error("more than {HOST_ADDRS_MAX_ENTRIES} host addresses")]
    TooManyHostAddrs,
    #[error("pin path {}: {what}", path.display())]
    Pin {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("pin path {}: not on a BPF file system (mount -t bpf bpf DIR)", path.display())]
    NotBpffs { path: PathBuf },
    #[error("pin path {}: agent pid {pid} is running on it; stop it first", path.display())]
    InUse { path: PathBuf, pid: u32 },
    #[error(
        "cannot learn the agent's network namespace cookie (SO_NETNS_COOKIE needs Linux 5.14) \
         outside the initial network namespace"
    )]
    NetnsCookie(#[source] io::Error),
    #[error("agent pid {pid} has taken over the pin path")]
    TakenOver { pid: u32 },
}

/// Reader of the programs' aya-log records.
pub type KernelLog = aya_log::EbpfLogger<&'static dyn log::Log>;

/// Where the agent listens for redirected connections.
#[derive(Debug, Clone, Copy)]
pub struct Listeners {
    pub v4: SocketAddrV4,
    pub v6: Option<SocketAddrV6>,
}

/// The loaded programs, attached through pinned links, and their maps. Dropping it leaves
/// everything attached and pinned: see [`uninstall`].
pub struct Redirect {
    /// The programs and the log map.
    _ebpf: Ebpf,
    conn_by_client: Mutex<HashMap<MapData, ClientKey, ConnMeta>>,
    exec_stamps: HashMap<MapData, u32, u64>,
    /// Cookie of the agent's network namespace (0 where the programs use the initial one's).
    netns_cookie: u64,
    /// The tracepoints attached: the optional one may be missing.
    tracepoints: Vec<&'static str>,
    protected: Mutex<Protected>,
    counters: PerCpuArray<MapData, u64>,
    heartbeat: Mutex<Array<MapData, u64>>,
    config: Array<MapData, AgentConfig>,
    cgroup: PathBuf,
    adopted: bool,
}

impl Redirect {
    /// Load the programs, adopt the maps pinned under `pin_path` (or create and pin them),
    /// point them at this agent, and put the programs in the pinned links of `cgroup` (or
    /// attach and pin new links). Connects keep following the previous programs, or the fail
    /// modes, until each link is swapped: there is no instant without a program. The new
    /// programs treat this agent as down until [`Redirect::beat`].
    ///
    /// Returns the loader's log reader too; it must be polled (see
    /// `aya_log::EbpfLogger::flush`) and kept alive.
    pub fn install(
        cgroup: &Path,
        pin_path: &Path,
        listeners: Listeners,
        protected: &[(Destination, FailMode)],
        host: &HostAddrs,
        kernel_log_level: aya_log::Level,
    ) -> Result<(Self, Option<KernelLog>), Error> {
        check_capabilities()?;
        let cgroup_dir = open_cgroup(cgroup)?;
        let netns = own_netns()?;
        let entries = protected_entries(protected, host)?;
        let pins = Pins::prepare(pin_path)?;
        // Before anything is touched: two agents on one pin path would undo each other.
        if let Some(pid) = running_agent(&pins.maps) {
            return Err(Error::InUse {
                path: pin_path.to_owned(),
                pid,
            });
        }

        let (mut ebpf, previous) = pins.load(kernel_log_level)?;
        let adopted = previous.layout == LAYOUT_VERSION;
        // No log map means no log statement survived compilation: nothing to read.
        let logger = aya_log::EbpfLogger::init(&mut ebpf).ok();

        let heartbeat = take_map(&mut ebpf, HEARTBEAT_MAP)?;
        let mut config: Array<_, AgentConfig> = take_map(&mut ebpf, CONFIG_MAP)?;
        config
            .set(0, &agent_config(listeners, netns), 0)
            .map_err(|source| Error::Map {
                name: CONFIG_MAP,
                source,
            })?;
        let map: LpmTrie<MapData, Ip6Words, PortRanges> = take_map(&mut ebpf, PROTECTED_MAP)?;
        let prefixes = map
            .keys()
            .filter_map(Result::ok)
            .map(|k| (k.prefix_len(), k.data()))
            .collect();
        let host_addrs = take_map(&mut ebpf, HOST_ADDRS_MAP)?;
        let mut protected = Protected {
            map,
            prefixes,
            destinations: protected.to_vec(),
            host_addrs,
            host: host.clone(),
        };
        protected.set_host_addrs(host)?;
        protected.replace(entries)?;
        let conn_by_client = take_map(&mut ebpf, CONN_BY_CLIENT_MAP)?;
        let counters = take_map(&mut ebpf, COUNTERS_MAP)?;
        let exec_stamps = take_map(&mut ebpf, EXEC_STAMPS_MAP)?;

        let mut tracepoints = Vec::new();
        for (name, tracepoint) in TRACEPOINT_PROGRAMS {
            let prog: &mut RawTracePoint = program(&mut ebpf, name)?;
            prog.load().map_err(program_error(name))?;
            // A restart attaches the new program beside the old one before unpinning it, so
            // some program stamps every exec at every instant; both write the same map.
            let old = pins.open_link(name)?;
            let id = match prog.attach(tracepoint) {
                Ok(id) => id,
                Err(e) if tracepoint == OPTIONAL_TRACEPOINT => {
                    info!(tracepoint, error = %e, "tracepoint unavailable: execs are seen once they complete");
                    continue;
                }
                Err(e) => return Err(program_error(name)(e)),
            };
            let link = prog.take_link(id).map_err(program_error(name))?;
            pins.pin_link(name, Ok(link.into()), Replaced(old))?;
            tracepoints.push(name);
        }

        let prog: &mut SockOps = program(&mut ebpf, SOCK_OPS)?;
        prog.load().map_err(program_error(SOCK_OPS))?;
        let fd = prog.fd().map_err(program_error(SOCK_OPS))?;
        if let Some(replaced) = pins.replace_or_attach(SOCK_OPS, &cgroup_dir, fd)? {
            let id = prog
                .attach(&cgroup_dir, ATTACH_MODE)
                .map_err(program_error(SOCK_OPS))?;
            let link = prog.take_link(id).map_err(program_error(SOCK_OPS))?;
            pins.pin_link(SOCK_OPS, link.try_into(), replaced)?;
        }
        for name in SOCK_ADDR_PROGRAMS {
            let prog: &mut CgroupSockAddr = program(&mut ebpf, name)?;
            prog.load().map_err(program_error(name))?;
            let fd = prog.fd().map_err(program_error(name))?;
            if let Some(replaced) = pins.replace_or_attach(name, &cgroup_dir, fd)? {
                let id = prog
                    .attach(&cgroup_dir, ATTACH_MODE)
                    .map_err(program_error(name))?;
                let link = prog.take_link(id).map_err(program_error(name))?;
                pins.pin_link(name, link.try_into(), replaced)?;
            }
        }
        pins.remove_stale_links(&tracepoints)?;
        Ok((
            Self {
                _ebpf: ebpf,
                conn_by_client: Mutex::new(conn_by_client),
                exec_stamps,
                netns_cookie: netns.cookie,
                tracepoints,
                protected: Mutex::new(protected),
                counters,
                heartbeat: Mutex::new(heartbeat),
                config,
                cgroup: cgroup.to_owned(),
                adopted,
            },
            logger,
        ))
    }

    /// Vouch that the agent is ready for about `HEARTBEAT_TIMEOUT_NS` more. Refused once
    /// another agent has taken the pin path over (this one was hung while it started): the
    /// programs now send connects to that agent, and this one must not vouch for it.
    pub fn beat(&self) -> Result<(), Error> {
        let owner = self
            .config
            .get(&0, 0)
            .map_err(|source| Error::Map {
                name: CONFIG_MAP,
                source,
            })?
            .agent_tgid;
        if owner != std::process::id() {
            return Err(Error::TakenOver { pid: owner });
        }
        self.set_heartbeat(boot_ns())
    }

    /// Declare the agent down at once: new connects follow their fail mode. Only for an
    /// agent whose [`Redirect::beat`] has not been refused.
    pub fn stop_heartbeat(&self) -> Result<(), Error> {
        self.set_heartbeat(0)
    }

    fn set_heartbeat(&self, value: u64) -> Result<(), Error> {
        lock(&self.heartbeat)
            .set(0, &value, 0)
            .map_err(|source| Error::Map {
                name: HEARTBEAT_MAP,
                source,
            })
    }

    /// Make `protected` the protected set, as one step for new connects: entries are added or
    /// updated before stale ones are removed, so no destination that stays protected is ever
    /// missing from the map.
    pub fn set_destinations(&self, protected: &[(Destination, FailMode)]) -> Result<(), Error> {
        let mut current = lock(&self.protected);
        let entries = protected_entries(protected, &current.host)?;
        current.replace(entries)?;
        current.destinations = protected.to_vec();
        Ok(())
    }

    /// Make `host` the host's addresses the programs count as "this host", and protect the
    /// local services at them (a service whose endpoint is a host address is local).
    pub fn set_host_addrs(&self, host: &HostAddrs) -> Result<(), Error> {
        let mut current = lock(&self.protected);
        let entries = protected_entries(&current.destinations, host)?;
        current.set_host_addrs(host)?;
        current.replace(entries)
    }

    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// Whether pinned state of a previous agent was adopted (rather than created).
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// The names of the attached programs.
    pub fn programs(&self) -> impl Iterator<Item = &'static str> {
        std::iter::once(SOCK_OPS)
            .chain(SOCK_ADDR_PROGRAMS)
            .chain(self.tracepoints.iter().copied())
    }

    /// Take (look up and forget) the kernel's record for an accepted connection, found by the
    /// connection's peer address in the agent's own network namespace (the only one its
    /// listeners accept from).
    pub fn take_record(&self, peer: SocketAddr) -> Option<ConnMeta> {
        let key = client_key(peer, self.netns_cookie);
        // Two syscalls; the lock is held only by the accept loops.
        let mut map = self
            .conn_by_client
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let meta = map.get(&key, 0).ok()?;
        let _ = map.remove(&key);
        Some(meta)
    }

    /// The exec stamp process `tgid` has now, if any (see `enforcer_common::EXEC_STAMPS_MAP`).
    pub fn exec_stamp(&self, tgid: u32) -> Option<u64> {
        self.exec_stamps.get(&tgid, 0).ok()
    }

    /// Kernel-side counters, summed over CPUs, since the pinned maps were created.
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

/// `CLOCK_BOOTTIME` in ns, the clock of `bpf_ktime_get_boot_ns`.
fn boot_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer; CLOCK_BOOTTIME always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

// === pins ===

/// The pin directory: `maps/NAME` for each of [`PINNED_MAPS`], `links/PROGRAM` for each
/// program's cgroup link.
struct Pins {
    maps: PathBuf,
    links: PathBuf,
}

/// What a newly attached link replaces: the program's pinned link on another cgroup, if any.
struct Replaced(Option<std::os::fd::OwnedFd>);

impl Pins {
    fn prepare(root: &Path) -> Result<Self, Error> {
        ensure_bpffs(root)?;
        let pins = Self {
            maps: root.join("maps"),
            links: root.join("links"),
        };
        for dir in [root, &pins.maps, &pins.links] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| Error::Pin {
                    what: "cannot create",
                    path: dir.to_owned(),
                    source,
                })?;
        }
        Ok(pins)
    }

    /// Load the object on the pinned maps, and return the configuration the previous agent
    /// left in them (all zero if they are new). Pinned maps of another layout are unpinned
    /// (programs still attached keep them until their links are swapped) and made anew.
    fn load(&self, level: aya_log::Level) -> Result<(Ebpf, AgentConfig), Error> {
        let mut ebpf = match self.load_once(level) {
            Err(Error::Load(aya::EbpfError::MapError(
                e @ MapError::IncompatiblePinnedMap { .. },
            ))) => {
                warn!(error = %e, "pinned maps of another agent version: recreating them, state is lost");
                self.unpin_maps()?;
                self.load_once(level)?
            }
            other => other?,
        };
        let previous = read_config(&mut ebpf)?;
        if previous.layout != 0 && previous.layout != LAYOUT_VERSION {
            warn!(
                pinned = previous.layout,
                ours = LAYOUT_VERSION,
                "pinned maps of another layout version: recreating them, state is lost"
            );
            drop(ebpf);
            self.unpin_maps()?;
            ebpf = self.load_once(level)?;
            return Ok((ebpf, AgentConfig::default()));
        }
        Ok((ebpf, previous))
    }

    fn load_once(&self, level: aya_log::Level) -> Result<Ebpf, Error> {
        let paths: Vec<(&str, PathBuf)> = PINNED_MAPS
            .iter()
            .map(|&name| (name, self.maps.join(name)))
            .collect();
        let level = level as u8;
        let mut loader = EbpfLoader::new();
        loader.override_global(aya_log::LEVEL, &level, false);
        let set_retval = u8::from(set_retval_supported());
        loader.override_global("SET_RETVAL", &set_retval, true);
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        loader.map_max_entries(EXEC_STAMPS_MAP, exec_stamps_capacity());
        loader.load(EBPF_OBJECT).map_err(Error::Load)
    }

    fn unpin_maps(&self) -> Result<(), Error> {
        for name in PINNED_MAPS {
            remove_pin(&self.maps.join(name))?;
        }
        Ok(())
    }

    /// Swap `prog` into the link pinned for `name` if it is attached to `cgroup`. Otherwise
    /// return what the caller must hand to [`Pins::pin_link`] after attaching a new link.
    fn replace_or_attach(
        &self,
        name: &'static str,
        cgroup: &File,
        prog: &aya::programs::ProgramFd,
    ) -> Result<Option<Replaced>, Error> {
        let path = self.links.join(name);
        let old = match link::open_pinned(&path) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Some(Replaced(None))),
            Err(source) => return Err(pin_error("cannot open pinned link", &path, source)),
        };
        let cgroup_id = cgroup.metadata().map(|m| m.ino()).unwrap_or(0);
        match link::cgroup_id(old.as_fd()) {
            Ok(id) if id == cgroup_id => {
                link::update(old.as_fd(), prog.as_fd()).map_err(|source| {
                    pin_error("cannot replace the linked program", &path, source)
                })?;
                Ok(None)
            }
            Ok(id) => {
                info!(
                    program = name,
                    from_cgroup_id = id,
                    to_cgroup_id = cgroup_id,
                    "moving to another cgroup"
                );
                Ok(Some(Replaced(Some(old))))
            }
            Err(source) => Err(pin_error("cannot read pinned link", &path, source)),
        }
    }

    /// Pin a newly attached link for `name`; detach the one it replaces only now, so the
    /// cgroup is never without the program.
    fn pin_link(
        &self,
        name: &'static str,
        new: Result<FdLink, LinkError>,
        replaced: Replaced,
    ) -> Result<(), Error> {
        let new = new.map_err(|e| program_error(name)(e.into()))?;
        let path = self.links.join(name);
        if let Some(old) = replaced.0 {
            detach(old.as_fd(), &path)?;
            remove_pin(&path)?;
        }
        new.pin(&path)
            .map_err(|e| pin_error("cannot pin link", &path, io::Error::other(e)))?;
        Ok(())
    }

    /// The link pinned for `name`, if any.
    fn open_link(&self, name: &'static str) -> Result<Option<std::os::fd::OwnedFd>, Error> {
        let path = self.links.join(name);
        match link::open_pinned(&path) {
            Ok(fd) => Ok(Some(fd)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(pin_error("cannot open pinned link", &path, source)),
        }
    }

    /// Detach links pinned by an agent with programs this one no longer has (or could not
    /// attach: `tracepoints` are those it did).
    fn remove_stale_links(&self, tracepoints: &[&str]) -> Result<(), Error> {
        let ours: BTreeSet<&str> = std::iter::once(SOCK_OPS)
            .chain(SOCK_ADDR_PROGRAMS)
            .chain(tracepoints.iter().copied())
            .collect();
        for entry in read_dir(&self.links)? {
            if !entry.to_str().is_some_and(|n| ours.contains(n)) {
                let path = self.links.join(&entry);
                warn!(link = %path.display(), "detaching a link no program of this agent uses");
                detach_and_unpin(&path)?;
            }
        }
        Ok(())
    }
}

fn read_config(ebpf: &mut Ebpf) -> Result<AgentConfig, Error> {
    let map = ebpf.map(CONFIG_MAP).ok_or(Error::Missing {
        what: "map",
        name: CONFIG_MAP,
    })?;
    let config: Array<_, AgentConfig> = Array::try_from(map).map_err(|source| Error::Map {
        name: CONFIG_MAP,
        source,
    })?;
    Ok(config.get(&0, 0).unwrap_or_default())
}

fn program_error(name: &'static str) -> impl Fn(aya::programs::ProgramError) -> Error {
    move |source| Error::Program { name, source }
}

fn pin_error(what: &'static str, path: &Path, source: io::Error) -> Error {
    Error::Pin {
        what,
        path: path.to_owned(),
        source,
    }
}

fn remove_pin(path: &Path) -> Result<(), Error> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(pin_error("cannot unpin", path, e)),
        _ => Ok(()),
    }
}

fn read_dir(dir: &Path) -> Result<Vec<std::ffi::OsString>, Error> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(|e| pin_error("cannot list", dir, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(pin_error("cannot list", dir, e)),
    }
}

/// Detach a link now. Tracepoint links cannot be detached (the kernel has no detach for
/// them): they go when the last reference does, the pin and the descriptor the caller drops.
fn detach(fd: std::os::fd::BorrowedFd<'_>, path: &Path) -> Result<(), Error> {
    match link::detach(fd) {
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(()),
        other => other.map_err(|e| pin_error("cannot detach", path, e)),
    }
}

fn detach_and_unpin(path: &Path) -> Result<(), Error> {
    match link::open_pinned(path) {
        Ok(fd) => detach(fd.as_fd(), path)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(pin_error("cannot open pinned link", path, e)),
    }
    remove_pin(path)
}

/// Make sure `root` can be created on a BPF file system: mount one at [`BPFFS`] if `root` is
/// under it and nothing is mounted there (a host without systemd, a container).
fn ensure_bpffs(root: &Path) -> Result<(), Error> {
    let existing = root
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    if is_bpffs(existing)? {
        return Ok(());
    }
    if existing != Path::new(BPFFS) {
        return Err(Error::NotBpffs {
            path: root.to_owned(),
        });
    }
    // Serialise with other agents starting at the same moment, or both would mount and the
    // second mount would hide the first one's pins.
    let dir = File::open(BPFFS).map_err(|e| pin_error("cannot open", Path::new(BPFFS), e))?;
    nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| pin_error("cannot lock", Path::new(BPFFS), e.into()))
        .and_then(|_guard| {
            if is_bpffs(Path::new(BPFFS))? {
                return Ok(());
            }
            nix::mount::mount(
                Some("bpf"),
                BPFFS,
                Some("bpf"),
                nix::mount::MsFlags::empty(),
                Some("mode=0700"),
            )
            .map_err(|e| pin_error("cannot mount bpffs", Path::new(BPFFS), e.into()))?;
            info!(path = BPFFS, "mounted the BPF file system");
            Ok(())
        })
}

fn is_bpffs(path: &Path) -> Result<bool, Error> {
    let fs =
        nix::sys::statfs::statfs(path).map_err(|e| pin_error("cannot stat", path, e.into()))?;
    Ok(fs.filesystem_type().0 as i64 == BPF_FS_MAGIC)
}

/// What [`uninstall`] removed.
#[derive(Debug, Default)]
pub struct Removed {
    pub links: usize,
    pub maps: usize,
}

/// Detach and unpin every link and map pinned under `pin_path`, then remove the directory.
/// The programs and maps are freed by the kernel once nothing holds them. Refuses while an
/// agent is running on it. Nothing pinned is not an error.
pub fn uninstall(pin_path: &Path) -> Result<Removed, Error> {
    let mut removed = Removed::default();
    if !pin_path.exists() {
        return Ok(removed);
    }
    let pins = Pins {
        maps: pin_path.join("maps"),
        links: pin_path.join("links"),
    };
    if let Some(pid) = running_agent(&pins.maps) {
        return Err(Error::InUse {
            path: pin_path.to_owned(),
            pid,
        });
    }
    for name in read_dir(&pins.links)? {
        detach_and_unpin(&pins.links.join(name))?;
        removed.links += 1;
    }
    for name in read_dir(&pins.maps)? {
        remove_pin(&pins.maps.join(name))?;
        removed.maps += 1;
    }
    for dir in [&pins.links, &pins.maps, pin_path] {
        match std::fs::remove_dir(dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(pin_error("cannot remove", dir, e));
            }
            _ => {}
        }
    }
    Ok(removed)
}

/// The pid of another live agent whose heartbeat is fresh in the maps pinned at `maps`.
fn running_agent(maps: &Path) -> Option<u32> {
    let heartbeat = MapData::from_pin(maps.join(HEARTBEAT_MAP)).ok()?;
    let heartbeat: Array<_, u64> = Array::try_from(aya::maps::Map::Array(heartbeat)).ok()?;
    let config = MapData::from_pin(maps.join(CONFIG_MAP)).ok()?;
    let config: Array<_, AgentConfig> = Array::try_from(aya::maps::Map::Array(config)).ok()?;
    let beat = heartbeat.get(&0, 0).ok()?;
    let pid = config.get(&0, 0).ok()?.agent_tgid;
    (agent_ready(beat, boot_ns()) && pid != std::process::id() && alive(pid)).then_some(pid)
}

/// Whether process `pid` exists and has not exited (a killed agent stays a zombie until its
/// supervisor reaps it).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // pid (comm) state ...: comm may hold spaces and parentheses, the state follows the last ')'.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        !matches!(state, None | Some("Z" | "X"))
    })
}

/// The protected-destinations map and the prefixes it holds, and the host addresses map with
/// the set it holds: the map entries at [`THIS_HOST`] depend on both.
struct Protected {
    map: LpmTrie<MapData, Ip6Words, PortRanges>,
    /// (prefix length, address words) of every entry in `map`.
    prefixes: BTreeSet<(u32, Ip6Words)>,
    /// What `map` was filled from.
    destinations: Vec<(Destination, FailMode)>,
    host_addrs: HashMap<MapData, Ip6Words, u32>,
    /// What `host_addrs` holds.
    host: HostAddrs,
}

impl Protected {
    /// Add the addresses of `host` missing from the map, then remove those not in it.
    fn set_host_addrs(&mut self, host: &HostAddrs) -> Result<(), Error> {
        let map_err = |source| Error::Map {
            name: HOST_ADDRS_MAP,
            source,
        };
        if host.len() > HOST_ADDRS_MAX_ENTRIES as usize {
            return Err(Error::TooManyHostAddrs);
        }
        let next: BTreeSet<Ip6Words> = host.iter().map(ip6_words).collect();
        let stale: Vec<Ip6Words> = self
            .host_addrs
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !next.contains(k))
            .collect();
        for key in &next {
            self.host_addrs.insert(key, &0, 0).map_err(map_err)?;
        }
        for key in &stale {
            self.host_addrs.remove(key).map_err(map_err)?;
        }
        self.host = host.clone();
        Ok(())
    }

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

pub(crate) fn ip6_words(ip: Ipv6Addr) -> Ip6Words {
    let o = ip.octets();
    // The kernel compares these as bytes in network order: keep the bytes as they are.
    std::array::from_fn(|i| {
        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
    })
}

pub(crate) fn ip6_from_words(words: Ip6Words) -> Ipv6Addr {
    let mut o = [0u8; 16];
    for (i, w) in words.iter().enumerate() {
        o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
    }
    Ipv6Addr::from(o)
}

fn client_key(peer: SocketAddr, netns_cookie: u64) -> ClientKey {
    let ip = match peer.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    ClientKey {
        ip: ip6_words(ip),
        port: u32::from(peer.port()),
        _pad: 0,
        netns_cookie,
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

fn agent_config(listeners: Listeners, netns: OwnNetns) -> AgentConfig {
    let v6 = listeners.v6;
    let mut flags = if v6.is_some() { CONFIG_HAS_V6 } else { 0 };
    if netns.cookie == 0 {
        flags |= CONFIG_NETNS_INIT;
    }
    AgentConfig {
        layout: LAYOUT_VERSION,
        _pad: 0,
        agent_tgid: std::process::id(),
        flags,
        netns_cookie: netns.cookie,
        listen_ip4_be: u32::from_ne_bytes(listeners.v4.ip().octets()),
        listen_port4_be: listeners.v4.port().to_be(),
        listen_port6_be: v6.map_or(0, |a| a.port().to_be()),
        listen_ip6: v6.map_or([0; 4], |a| ip6_words(*a.ip())),
    }
}

/// The agent's network namespace as the programs are told it.
#[derive(Clone, Copy)]
struct OwnNetns {
    /// Its cookie; 0 where the kernel cannot tell it and the agent is in the initial
    /// namespace, whose cookie the programs then ask for themselves.
    cookie: u64,
}

/// linux/socket.h (Linux 5.14); not in every libc crate release.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// Learn the agent's network namespace cookie from a socket of its own (Linux 5.14). On older
/// kernels only the initial namespace can be named (the programs read its cookie), recognised
/// as the namespace of pid 1 as the agent sees it (so run it in the host's pid namespace
/// there); an agent elsewhere refuses to start rather than guard no namespace boundary.
fn own_netns() -> Result<OwnNetns, Error> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").map_err(Error::NetnsCookie)?;
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid socket, out pointer and length of a u64.
    let ret = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if ret == 0 && cookie != 0 {
        return Ok(OwnNetns { cookie });
    }
    let error = io::Error::last_os_error();
    let ns =
        |pid: &str| std::fs::metadata(format!("/proc/{pid}/ns/net")).map(|m| (m.dev(), m.ino()));
    match (ns("self"), ns("1")) {
        (Ok(own), Ok(init)) if own == init => Ok(OwnNetns { cookie: 0 }),
        _ => Err(Error::NetnsCookie(error)),
    }
}

/// Capacity of the exec stamps map: the host's `pid_max`, the most tgids that can be live.
fn exec_stamps_capacity() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .map_or(PID_MAX_LIMIT, |n| {
            n.clamp(EXEC_STAMPS_DEFAULT_ENTRIES, PID_MAX_LIMIT)
        })
}

/// The LPM trie's entries. An LPM lookup returns only the longest matching prefix, so each
/// entry carries the port ranges of every destination whose prefix covers it, each with its
/// fail mode; where ranges of both modes overlap, `closed` wins. The entry at [`THIS_HOST`]
/// carries the ports of every destination that reaches this host (with `host` as its
/// addresses), for the programs to look any local address up there.
fn protected_entries(
    protected: &[(Destination, FailMode)],
    host: &HostAddrs,
) -> Result<Vec<(Key<Ip6Words>, PortRanges)>, Error> {
    let this_host = Prefix::host(IpAddr::V6(ip6_from_words(THIS_HOST)));
    let mut prefixes: BTreeSet<Prefix> = protected.iter().map(|(d, _)| d.prefix).collect();
    if protected
        .iter()
        .any(|(d, _)| d.prefix.reaches_this_host(host))
    {
        prefixes.insert(this_host);
    }
    if prefixes.len() > PROTECTED_MAX_ENTRIES as usize {
        return Err(Error::TooManyPrefixes);
    }
    prefixes
        .into_iter()
        .map(|prefix| {
            let covering = || {
                protected.iter().filter(move |(d, _)| {
                    if prefix == this_host {
                        d.prefix.reaches_this_host(host)
                    } else {
                        d.prefix.len <= prefix.len && d.prefix.contains(prefix.addr)
                    }
                })
            };
            let ports_of = |mode| {
                merge_ports(
                    covering()
                        .filter(move |(_, m)| *m == mode)
                        .map(|(d, _)| d.ports),
                )
            };
            let closed = ports_of(FailMode::Closed);
            let open = subtract(ports_of(FailMode::Open), &closed);
            let mut merged: Vec<(Ports, FailMode)> = closed
                .into_iter()
                .map(|p| (p, FailMode::Closed))
                .chain(open.into_iter().map(|p| (p, FailMode::Open)))
                .collect();
            merged.sort_by_key(|(p, _)| *p);
            if merged.len() > MAX_PORT_RANGES {
                return Err(Error::TooManyPortRanges { prefix });
            }
            let mut ranges = PortRanges {
                len: merged.len() as u32,
                ..Default::default()
            };
            for (i, (p, mode)) in merged.iter().enumerate() {
                ranges.ranges[i] = PortRange {
                    first: p.first,
                    last: p.last,
                };
                if *mode == FailMode::Open {
                    ranges.fail_open |= 1 << i;
                }
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

/// The ports of `from` not in `remove` (both sorted and merged).
fn subtract(from: Vec<Ports>, remove: &[Ports]) -> Vec<Ports> {
    let mut out = Vec::with_capacity(from.len());
    for p in from {
        let mut first = u32::from(p.first);
        let last = u32::from(p.last);
        for r in remove {
            let (rf, rl) = (u32::from(r.first), u32::from(r.last));
            if rl < first || rf > last {
                continue;
            }
            if rf > first {
                out.push(ports(first, rf - 1));
            }
            first = rl + 1;
        }
        if first <= last {
            out.push(ports(first, last));
        }
    }
    out
}

fn ports(first: u32, last: u32) -> Ports {
    // Within the u16 bounds of the ranges they were cut from.
    Ports {
        first: first as u16,
        last: last as u16,
    }
}

#[cfg(test)]
mod tests;

/// Whether connect programs may choose their errno (`bpf_set_retval`, Linux 5.18).
fn set_retval_supported() -> bool {
    aya::util::KernelVersion::current().is_ok_and(|v| v >= aya::util::KernelVersion::new(5, 18, 0))
}
