//! Kernel half of the enforcer: redirect connects toward protected destinations to the agent.
//!
//! - `cgroup/connect4`, `cgroup/connect6`: a TCP connect whose destination is in `PROTECTED`
//!   (under its own address, or, for any address that reaches this host, under `THIS_HOST`)
//!   gets a [`ConnMeta`] recorded under its socket cookie and its destination rewritten to the
//!   agent's listener. The agent's own connects (matched by tgid) and everything else pass.
//!   While no agent is ready (its `HEARTBEAT` is older than `HEARTBEAT_TIMEOUT_NS`), the
//!   destination's fail mode applies instead: closed refuses the connect with `ECONNREFUSED`,
//!   open lets it go to the original destination.
//! - `sockops`: when a redirected connection is established, re-key its record by the client's
//!   address so the agent can find it from an accepted socket's peer address; drop the cookie
//!   record when the socket closes.
//! - `cgroup/getpeername4`, `cgroup/getpeername6`: report the original destination as the peer,
//!   so the application cannot tell it was redirected.
//! - raw tracepoints `sched_prepare_exec` (Linux 6.10; optional), `sched_process_exec` and
//!   `sched_process_exit`: keep each process's exec stamp in `EXEC_STAMPS`, which connect4/6
//!   copy into the record so the agent can tell a caller that exec'd after its connect.
//! - A protected connect made in another network namespace than the agent's is refused
//!   (counted `foreign_netns`): the agent's listener is not there, and that namespace's routes
//!   may reach the destination. Only its own loopback and any-address pass: they never leave it.
//!
//! Hooked kernel interfaces (uapi/linux/bpf.h, `struct bpf_sock_addr`, `struct bpf_sock_ops`):
//! <https://github.com/torvalds/linux/blob/v6.18/include/uapi/linux/bpf.h>
#![no_std]
#![no_main]

use core::ptr::read_volatile;

use aya_ebpf::{
    EbpfContext as _, Global,
    bindings::{
        BPF_ANY, BPF_F_NO_PREALLOC, BPF_NOEXIST, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
        BPF_TCP_CLOSE,
    },
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_netns_cookie, bpf_get_socket_cookie,
            bpf_ktime_get_boot_ns, bpf_set_retval,
        },
    },
    macros::{cgroup_sock_addr, map, raw_tracepoint, sock_ops},
    maps::{
        Array, HashMap, LruHashMap, PerCpuArray,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{RawTracePointContext, SockAddrContext, SockOpsContext},
};
use aya_log_ebpf::{debug, warn};
use enforcer_common::{
    AgentConfig, CONFIG_HAS_V6, CONFIG_NETNS_INIT, CONN_MAX_ENTRIES, COUNTERS_LEN, ClientKey,
    ConnMeta, Counter, EXEC_STAMPS_DEFAULT_ENTRIES, FailMode, HOST_ADDRS_MAX_ENTRIES, Ip6Words,
    PROTECTED_MAX_ENTRIES, PortRanges, THIS_HOST, agent_ready, is_namespace_local, is_this_host,
    is_v4_mapped, v4_mapped_from_be,
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const SOCK_STREAM: u32 = 1;

/// cgroup/connect* and getpeername* return values.
const ALLOW: i32 = 1;
/// Makes connect() fail with EPERM (or the errno set by `bpf_set_retval`).
const REFUSE: i32 = 0;
/// linux/errno.h. Fail-closed connects get "connection refused", as when a server is not
/// running: clients report and retry it as a transient outage, and it reads differently from
/// EPERM, which remains the errno of a connect refused for good (no listener, map full).
const ECONNREFUSED: i32 = 111;

/// Set to 1 by the agent where the kernel has `bpf_set_retval` (Linux 5.18); older kernels
/// (5.10, 6.1) then give EPERM for fail-closed connects too. A load-time constant in frozen
/// .rodata, so an older kernel's verifier prunes the branch and never sees the helper.
#[unsafe(no_mangle)]
static SET_RETVAL: Global<u8> = Global::new(0);

#[map(name = "PROTECTED")]
static PROTECTED: LpmTrie<Ip6Words, PortRanges> =
    LpmTrie::with_max_entries(PROTECTED_MAX_ENTRIES, 0);

#[map(name = "HOST_ADDRS")]
static HOST_ADDRS: HashMap<Ip6Words, u32> = HashMap::with_max_entries(HOST_ADDRS_MAX_ENTRIES, 0);

#[map(name = "CONFIG")]
static CONFIG: Array<AgentConfig> = Array::with_max_entries(1, 0);

#[map(name = "CONN_BY_COOKIE")]
static CONN_BY_COOKIE: LruHashMap<u64, ConnMeta> =
    LruHashMap::with_max_entries(CONN_MAX_ENTRIES, 0);

#[map(name = "CONN_BY_CLIENT")]
static CONN_BY_CLIENT: LruHashMap<ClientKey, ConnMeta> =
    LruHashMap::with_max_entries(CONN_MAX_ENTRIES, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);

#[map(name = "HEARTBEAT")]
static HEARTBEAT: Array<u64> = Array::with_max_entries(1, 0);

/// See `enforcer_common::EXEC_STAMPS_MAP` for why a plain hash sized to `pid_max`.
#[map(name = "EXEC_STAMPS")]
static EXEC_STAMPS: HashMap<u32, u64> =
    HashMap::with_max_entries(EXEC_STAMPS_DEFAULT_ENTRIES, BPF_F_NO_PREALLOC);

#[inline(always)]
fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, and programs do not preempt each other on one CPU.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn config() -> Option<&'static AgentConfig> {
    CONFIG.get(0)
}

/// The fail mode of `ip`:`port_be` if a connect to it must go through the agent: its own
/// entry first, then, if it reaches this host, the ports of the services listening here.
#[inline(always)]
fn protection(ip: Ip6Words, port_be: u16) -> Option<FailMode> {
    let port = u16::from_be(port_be);
    let at = |ip: Ip6Words| {
        PROTECTED
            .get(&Key::new(128, ip))
            .and_then(|ranges| ranges.lookup(port))
    };
    at(ip).or_else(|| {
        if is_this_host(&ip, |ip| HOST_ADDRS.get_ptr(ip).is_some()) {
            at(THIS_HOST)
        } else {
            None
        }
    })
}

/// Whether an agent has vouched for itself recently enough to be sent connects.
#[inline(always)]
fn agent_is_ready() -> bool {
    let beat = HEARTBEAT.get(0).copied().unwrap_or(0);
    // SAFETY: helper without arguments.
    agent_ready(beat, unsafe { bpf_ktime_get_boot_ns() })
}

/// A protected connect while no agent is ready: refuse it, or let it through untouched.
#[inline(always)]
fn agent_down(mode: FailMode) -> i32 {
    match mode {
        FailMode::Closed => {
            count(Counter::FailedClosed);
            if SET_RETVAL.load() != 0 {
                // SAFETY: plain helper; connect4/6 may set their return value.
                unsafe { bpf_set_retval(-ECONNREFUSED) };
            }
            REFUSE
        }
        FailMode::Open => {
            count(Counter::FailedOpen);
            ALLOW
        }
    }
}

/// What [`record`] did with a protected connect.
enum Recorded {
    /// Stored: redirect the connect to the agent.
    Stored,
    /// Refuse the connect: it could not be recorded, or it was made in another network
    /// namespace toward an address that may leave it.
    Refused,
    /// Made in another network namespace toward that namespace's own loopback or any-address:
    /// let it go where it was going, untouched.
    Local,
}

/// Record who is calling and where to, under the socket's cookie, if the caller is in the
/// agent's network namespace. Anything that cannot be stored is refused rather than let it
/// bypass the agent.
#[inline(always)]
fn record(
    ctx: &SockAddrContext,
    cfg: &AgentConfig,
    orig_ip: Ip6Words,
    orig_port_be: u16,
    family: u16,
) -> Recorded {
    // SAFETY: a sock_addr context, or NULL for the initial namespace's cookie.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let agent_netns = if cfg.flags & CONFIG_NETNS_INIT != 0 {
        // SAFETY: NULL asks for the initial network namespace's cookie.
        unsafe { bpf_get_netns_cookie(core::ptr::null_mut()) }
    } else {
        cfg.netns_cookie
    };
    if netns_cookie != agent_netns {
        if is_namespace_local(&orig_ip) {
            return Recorded::Local;
        }
        count(Counter::ForeignNetns);
        return Recorded::Refused;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Some(exec_stamp) = exec_stamp(tgid) else {
        count(Counter::MapFull);
        warn!(ctx, "exec stamp not stored: map full");
        return Recorded::Refused;
    };
    let uid_gid = bpf_get_current_uid_gid();
    let meta = ConnMeta {
        orig_ip,
        orig_port_be,
        family,
        tgid,
        pid: pid_tgid as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        _pad: 0,
        // SAFETY: helpers without pointer arguments.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        connect_boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        exec_stamp,
        // Equal to the caller's (checked above), in the agent's notation: 0 where it cannot
        // learn its cookie (CONFIG_NETNS_INIT), as it then looks records up with 0.
        netns_cookie: cfg.netns_cookie,
    };
    // SAFETY: the context is a socket-bearing sock_addr context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if CONN_BY_COOKIE
        .insert(&cookie, &meta, BPF_ANY as u64)
        .is_err()
    {
        count(Counter::MapFull);
        warn!(ctx, "connect record not stored: map full");
        return Recorded::Refused;
    }
    Recorded::Stored
}

/// The caller's exec stamp, stamping it now if it has none (it has not exec'd since the
/// programs were attached): a record never carries "no stamp", so an entry that is later
/// removed or replaced always differs from the recorded one.
#[inline(always)]
fn exec_stamp(tgid: u32) -> Option<u64> {
    // SAFETY: copied out at once.
    if let Some(stamp) = unsafe { EXEC_STAMPS.get(&tgid) } {
        return Some(*stamp);
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    // NOEXIST: an exec of another thread stamping meanwhile wins, and is read back.
    let _ = EXEC_STAMPS.insert(&tgid, &now, BPF_NOEXIST as u64);
    // SAFETY: copied out at once.
    unsafe { EXEC_STAMPS.get(&tgid) }.copied()
}

/// Whether the caller is the agent itself (any of its threads).
#[inline(always)]
fn is_agent(cfg: &AgentConfig) -> bool {
    (bpf_get_current_pid_tgid() >> 32) as u32 == cfg.agent_tgid
}

// === connect ===

#[cgroup_sock_addr(connect4)]
pub fn enf_connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands a valid context; fields are read one at a time.
    let (sock_type, ip4_be, port_be) = unsafe {
        let sa = &*ctx.sock_addr;
        (sa.type_, sa.user_ip4, sa.user_port as u16)
    };
    if sock_type != SOCK_STREAM {
        return ALLOW;
    }
    let orig_ip = v4_mapped_from_be(ip4_be);
    let Some(fail_mode) = protection(orig_ip, port_be) else {
        count(Counter::Passed);
        return ALLOW;
    };
    let Some(cfg) = config() else {
        return REFUSE;
    };
    if !agent_is_ready() {
        return agent_down(fail_mode);
    }
    if is_agent(cfg) {
        count(Counter::AgentPassed);
        return ALLOW;
    }
    match record(&ctx, cfg, orig_ip, port_be, AF_INET) {
        Recorded::Stored => {}
        Recorded::Refused => return REFUSE,
        Recorded::Local => return ALLOW,
    }
    // SAFETY: user_ip4 and user_port are writable in connect4.
    unsafe {
        (*ctx.sock_addr).user_ip4 = cfg.listen_ip4_be;
        (*ctx.sock_addr).user_port = cfg.listen_port4_be as u32;
    }
    count(Counter::Redirected);
    debug!(&ctx, "redirected connect4");
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn enf_connect6(ctx: SockAddrContext) -> i32 {
    // SAFETY: valid context; user_ip6 is read word by word (the verifier rejects an array read).
    let (sock_type, orig_ip, port_be) = unsafe {
        let sa = ctx.sock_addr;
        (
            (*sa).type_,
            [
                (*sa).user_ip6[0],
                (*sa).user_ip6[1],
                (*sa).user_ip6[2],
                (*sa).user_ip6[3],
            ],
            (*sa).user_port as u16,
        )
    };
    if sock_type != SOCK_STREAM {
        return ALLOW;
    }
    let Some(fail_mode) = protection(orig_ip, port_be) else {
        count(Counter::Passed);
        return ALLOW;
    };
    let Some(cfg) = config() else {
        return REFUSE;
    };
    if !agent_is_ready() {
        return agent_down(fail_mode);
    }
    if is_agent(cfg) {
        count(Counter::AgentPassed);
        return ALLOW;
    }
    // A dual-stack socket calling an IPv4 peer goes to the IPv4 listener, in mapped form.
    let (ip, port) = if is_v4_mapped(&orig_ip) {
        (v4_mapped_from_be(cfg.listen_ip4_be), cfg.listen_port4_be)
    } else if cfg.flags & CONFIG_HAS_V6 != 0 {
        (cfg.listen_ip6, cfg.listen_port6_be)
    } else {
        count(Counter::NoListener);
        return REFUSE;
    };
    match record(&ctx, cfg, orig_ip, port_be, AF_INET6) {
        Recorded::Stored => {}
        Recorded::Refused => return REFUSE,
        Recorded::Local => return ALLOW,
    }
    // SAFETY: user_ip6 and user_port are writable in connect6; written word by word.
    unsafe {
        let sa = ctx.sock_addr;
        (*sa).user_ip6[0] = ip[0];
        (*sa).user_ip6[1] = ip[1];
        (*sa).user_ip6[2] = ip[2];
        (*sa).user_ip6[3] = ip[3];
        (*sa).user_port = port as u32;
    }
    count(Counter::Redirected);
    debug!(&ctx, "redirected connect6");
    ALLOW
}

// === getpeername ===

#[cgroup_sock_addr(getpeername4)]
pub fn enf_getpeer4(ctx: SockAddrContext) -> i32 {
    // SAFETY: socket-bearing context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out at once.
    if let Some(meta) = unsafe { CONN_BY_COOKIE.get(&cookie) } {
        let (ip, port) = (meta.orig_ip[3], meta.orig_port_be);
        // SAFETY: user_ip4 and user_port are writable in getpeername4.
        unsafe {
            (*ctx.sock_addr).user_ip4 = ip;
            (*ctx.sock_addr).user_port = port as u32;
        }
    }
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn enf_getpeer6(ctx: SockAddrContext) -> i32 {
    // SAFETY: socket-bearing context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out at once.
    if let Some(meta) = unsafe { CONN_BY_COOKIE.get(&cookie) } {
        let (ip, port) = (meta.orig_ip, meta.orig_port_be);
        // SAFETY: user_ip6 and user_port are writable in getpeername6.
        unsafe {
            let sa = ctx.sock_addr;
            (*sa).user_ip6[0] = ip[0];
            (*sa).user_ip6[1] = ip[1];
            (*sa).user_ip6[2] = ip[2];
            (*sa).user_ip6[3] = ip[3];
            (*sa).user_port = port as u32;
        }
    }
    ALLOW
}

// === sock_ops ===

#[sock_ops]
pub fn enf_sockops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        // The SYN of a redirected connect: ask for state callbacks now, so a connect that never
        // establishes (the agent's accept queue full, the client giving up) still drops its
        // cookie record at close instead of holding an LRU slot until evicted — a flood of
        // such connects would otherwise push out other callers' pending records.
        BPF_SOCK_OPS_TCP_CONNECT_CB => {
            if config().is_some_and(|cfg| is_to_listener(&ctx, cfg)) {
                let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
            }
        }
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => on_established(&ctx),
        // args[1] is the new state.
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == BPF_TCP_CLOSE => {
            // SAFETY: socket-bearing context.
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            let _ = CONN_BY_COOKIE.remove(&cookie);
        }
        _ => {}
    }
    1
}

#[inline(always)]
fn on_established(ctx: &SockOpsContext) {
    // Every connection established in the cgroup comes here; only one to the agent's
    // listener can have been redirected. Comparing addresses first spares the others a map
    // lookup: this runs on every connect, protected or not.
    let Some(cfg) = config() else {
        return;
    };
    if !is_to_listener(ctx, cfg) {
        return;
    }
    // SAFETY: socket-bearing context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: copied out at once.
    let Some(meta) = (unsafe { CONN_BY_COOKIE.get(&cookie) }).copied() else {
        // To the listener without a record: evicted, or a direct connect to the agent's port
        // (which the agent refuses too).
        count(Counter::LookupMiss);
        return;
    };
    // Every field is read unconditionally, then the values are chosen: loads in the two arms
    // of a branch get merged by LLVM into one load through a computed context pointer, which
    // the verifier rejects.
    // SAFETY: in-bounds fields of the kernel-provided context.
    let (family, ip4, ip6) = unsafe {
        let ops = ctx.ops;
        (
            read_volatile(&(*ops).family),
            read_volatile(&(*ops).local_ip4),
            [
                read_volatile(&(*ops).local_ip6[0]),
                read_volatile(&(*ops).local_ip6[1]),
                read_volatile(&(*ops).local_ip6[2]),
                read_volatile(&(*ops).local_ip6[3]),
            ],
        )
    };
    let ip = if family == AF_INET as u32 {
        v4_mapped_from_be(ip4)
    } else {
        ip6
    };
    let key = ClientKey {
        ip,
        // SAFETY: as above.
        port: unsafe { read_volatile(&(*ctx.ops).local_port) },
        _pad: 0,
        // From the record: sock_ops has no netns cookie helper before Linux 5.15.
        netns_cookie: meta.netns_cookie,
    };
    if CONN_BY_CLIENT.insert(&key, &meta, BPF_ANY as u64).is_err() {
        count(Counter::MapFull);
        warn!(ctx, "client record not stored: map full");
        return;
    }
    // Ask for state callbacks on this socket only, to forget its cookie record at close.
    let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
}

/// Whether the socket's peer is one of the agent's listeners.
#[inline(always)]
fn is_to_listener(ctx: &SockOpsContext, cfg: &AgentConfig) -> bool {
    // SAFETY: in-bounds fields of the kernel-provided context, all read unconditionally (see
    // the note on merged loads in `on_established`).
    let (family, remote_ip4, remote_port) = unsafe {
        let ops = ctx.ops;
        (
            read_volatile(&(*ops).family),
            read_volatile(&(*ops).remote_ip4),
            read_volatile(&(*ops).remote_port),
        )
    };
    // remote_port holds the port in network byte order in its upper 16 bits.
    let port_be = (remote_port >> 16) as u16;
    if family == AF_INET as u32 {
        remote_ip4 == cfg.listen_ip4_be && port_be == cfg.listen_port4_be
    } else {
        // IPv6 sockets reach the IPv6 listener, or the IPv4 one in mapped form.
        port_be == cfg.listen_port6_be || port_be == cfg.listen_port4_be
    }
}

// === exec stamps ===

/// Stamp the exec'ing process. Fires in the exec'ing task, whose tgid stays the process's
/// across the exec (a non-leader thread takes the leader's pid).
#[inline(always)]
fn stamp_exec() {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    // Cannot fail for lack of room (see EXEC_STAMPS). Were the map full anyway, a process
    // without an entry gets none at connect either, and its connects are refused (map_full).
    let _ = EXEC_STAMPS.insert(&tgid, &now, BPF_ANY as u64);
}

/// Beginning of an exec, before the new image replaces the old one (Linux 6.10): a caller
/// opened by the agent after this point no longer counts as the one that connected.
#[raw_tracepoint(tracepoint = "sched_prepare_exec")]
pub fn enf_prepare_exec(_ctx: RawTracePointContext) -> i32 {
    stamp_exec();
    0
}

/// An exec completed: the process runs a new image.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn enf_exec(_ctx: RawTracePointContext) -> i32 {
    stamp_exec();
    0
}

/// A task exits: forget its process's stamp when it is the thread-group leader. (A leader
/// that exits before its other threads makes their later checks fail: conservative.)
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn enf_exit(_ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if pid_tgid >> 32 == pid_tgid & 0xffff_ffff {
        let _ = EXEC_STAMPS.remove(&((pid_tgid >> 32) as u32));
    }
    0
}

/// Any reachable panic leaves an infinite loop, which the verifier rejects at load: panics
/// are found when the agent starts, never at run time.
#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
