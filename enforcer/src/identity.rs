//! Who is calling: the kernel's attested record of a connect, enriched from /proc.
//!
//! The kernel attests tgid, thread id, uid, gid, cgroup id and comm at the moment of the call.
//! The agent adds the executable's path and SHA-256, the user and group names, and the cgroup
//! path with the systemd unit or container id it names. /proc is read after the fact, so each
//! enrichment is checked against pid reuse: a process that started after the connect is not the
//! caller, and its attributes are not attached (`pid_reused`); nor are those of a process that
//! exec'd since its connect (`exec_after_connect`, see [`Resolver::resolve`]).

use std::{
    collections::HashMap,
    fmt::Write as _,
    fs::{self, File},
    io::{self, Read},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex},
    time::Duration,
};

use enforcer_common::ConnMeta;
use sha2::{Digest, Sha256};

/// Entries each cache holds before it is cleared. Bounds memory whatever the host runs.
const CACHE_CAPACITY: usize = 4096;

/// A caller, as far as it could be attested.
#[derive(Debug, Clone)]
pub struct Identity {
    pub tgid: u32,
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    pub user: Option<Arc<str>>,
    pub group: Option<Arc<str>>,
    pub process: Option<Arc<Process>>,
    pub cgroup: Option<Arc<Cgroup>>,
    /// Why `process` is missing, if it is (or, for `HashTimeout`, its digest).
    pub unresolved: Option<Unresolved>,
    /// Whether the process was being traced (ptrace) when the agent looked; `None` if that
    /// could not be read.
    pub traced: Option<bool>,
}

/// Attributes of the calling process, read from /proc once per (tgid, start time, exec).
#[derive(Debug)]
pub struct Process {
    /// The executable's path as /proc shows it (from the process's mount namespace).
    pub exe: PathBuf,
    /// Whether `exe` names, in the agent's mount namespace, the very file the process runs.
    /// A path from another mount namespace (a bind mount over it, a chroot) may name another
    /// file here: it is then not believed, and only `sha256` identifies the process.
    pub exe_trusted: bool,
    /// Lowercase hex SHA-256 of the executable's content.
    pub sha256: Arc<str>,
}

impl Process {
    /// The executable's path, if it is believed.
    pub fn trusted_exe(&self) -> Option<&Path> {
        self.exe_trusted.then_some(self.exe.as_path())
    }
}

/// The caller's cgroup and what it says about the workload.
#[derive(Debug)]
pub struct Cgroup {
    pub path: String,
    pub unit: Option<String>,
    pub container: Option<String>,
}

/// Why process attributes are missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unresolved {
    /// The process exited before the agent read /proc.
    ProcessExited,
    /// The pid now belongs to a process that started after the connect.
    PidReused,
    /// /proc or the executable could not be read.
    Unreadable,
    /// The process exec'd (or began to) after its connect: the image the agent can see is not
    /// the one that connected.
    ExecAfterConnect,
    /// The executable's digest was not ready within the policy's `hashTimeout`; its other
    /// attributes are known (`sha256` is empty).
    HashTimeout,
}

impl Unresolved {
    pub const fn as_str(self) -> &'static str {
        match self {
            Unresolved::ProcessExited => "process_exited",
            Unresolved::PidReused => "pid_reused",
            Unresolved::Unreadable => "unreadable",
            Unresolved::ExecAfterConnect => "exec_after_connect",
            Unresolved::HashTimeout => "hash_timeout",
        }
    }
}

/// A process's current exec stamp, by tgid (the kernel's `EXEC_STAMPS` map).
pub type ExecStamps = Box<dyn Fn(u32) -> Option<u64> + Send + Sync>;

/// Resolves kernel records into identities, with caches.
pub struct Resolver {
    cgroup_root: PathBuf,
    exec_stamps: ExecStamps,
    /// Nanoseconds per clock tick of /proc/<pid>/stat's start time.
    ns_per_tick: u64,
    /// By (tgid, start time, exec stamp): an exec gives the same process new attributes.
    processes: Mutex<HashMap<(u32, u64, u64), Arc<Process>>>,
    /// Digest by file identity, so one binary run by many processes is hashed once: the first
    /// caller starts the hash, every caller waits on the same flight.
    digests: Mutex<HashMap<FileKey, Arc<Flight>>>,
    cgroups: Mutex<HashMap<u64, Arc<Cgroup>>>,
    users: Mutex<HashMap<u32, Option<Arc<str>>>>,
    groups: Mutex<HashMap<u32, Option<Arc<str>>>>,
}

/// One file's hash: `None` while it runs, then the digest (`None` inside: unreadable).
#[derive(Default)]
struct Flight {
    digest: Mutex<Option<Option<Arc<str>>>>,
    done: Condvar,
}

impl Flight {
    /// The outcome, waiting at most `timeout` for it: `Err` if it is still running.
    fn wait(&self, timeout: Duration) -> Result<Option<Arc<str>>, ()> {
        let digest = lock(&self.digest);
        let (digest, _) = self
            .done
            .wait_timeout_while(digest, timeout, |d| d.is_none())
            .unwrap_or_else(|e| e.into_inner());
        digest.clone().ok_or(())
    }

    fn finish(&self, digest: Option<Arc<str>>) {
        *lock(&self.digest) = Some(digest);
        self.done.notify_all();
    }
}

/// What identifies a file's content without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Resolver {
    pub fn new(cgroup_root: PathBuf, exec_stamps: ExecStamps) -> Self {
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let ticks = if ticks > 0 { ticks as u64 } else { 100 };
        Self {
            cgroup_root,
            exec_stamps,
            ns_per_tick: 1_000_000_000 / ticks,
            processes: Mutex::default(),
            digests: Mutex::default(),
            cgroups: Mutex::default(),
            users: Mutex::default(),
            groups: Mutex::default(),
        }
    }

    /// Resolve a kernel record. Blocking: reads /proc and, the first time a binary is seen,
    /// waits up to `hash_timeout` for its hash. Call it off the async runtime's worker threads.
    pub fn resolve(&self, meta: &ConnMeta, hash_timeout: Duration) -> Identity {
        let (process, traced, unresolved) = match self.process(meta, hash_timeout) {
            // Known but for its digest: decided on the rest (`sha256` identities do not match).
            Ok((p, traced)) if p.sha256.is_empty() => {
                (Some(p), traced, Some(Unresolved::HashTimeout))
            }
            Ok((p, traced)) => (Some(p), traced, None),
            Err(why) => (None, None, Some(why)),
        };
        Identity {
            tgid: meta.tgid,
            pid: meta.pid,
            uid: meta.uid,
            gid: meta.gid,
            comm: comm(&meta.comm),
            cgroup_id: meta.cgroup_id,
            user: cached(&self.users, meta.uid, || user_name(meta.uid)),
            group: cached(&self.groups, meta.gid, || group_name(meta.gid)),
            process,
            cgroup: self.cgroup(meta),
            unresolved,
            traced,
        }
    }

    /// The caller's process attributes, and whether it is traced.
    ///
    /// Order matters. Everything read by pid (the executable opened, its link, the tracing
    /// state) is read first; then the pid-reuse guard runs once: the pid's holder started
    /// before the connect, and since a pid has one holder at a time and the caller held it at
    /// the connect, the reads were of the caller. Then the exec stamp is read again. The
    /// kernel replaces a stamp when an exec begins (before the new image is installed, where
    /// `sched_prepare_exec` exists) and when it completes; a stamp equal to the one recorded
    /// at connect, read after the open, proves no exec had begun by the open, so the
    /// descriptor names the image that made the connect. Everything after reads through that
    /// descriptor, never by pid or path, so the caller may exit meanwhile.
    fn process(
        &self,
        meta: &ConnMeta,
        hash_timeout: Duration,
    ) -> Result<(Arc<Process>, Option<bool>), Unresolved> {
        let proc_dir = PathBuf::from(format!("/proc/{}", meta.tgid));
        let exe_link = proc_dir.join("exe");
        let exe_file = File::open(&exe_link).map_err(|e| gone_or_unreadable(&e));
        let exe = fs::read_link(&exe_link).map_err(|e| gone_or_unreadable(&e));
        let traced = tracer_pid(&proc_dir).map(|pid| pid != 0);
        let start = self.checked_start(&proc_dir, meta)?;
        let (exe_file, exe) = (exe_file?, exe?);
        match (self.exec_stamps)(meta.tgid) {
            Some(stamp) if stamp == meta.exec_stamp => {}
            Some(_) => return Err(Unresolved::ExecAfterConnect),
            // Removed when the process exits (or its leader thread does, or an exec by
            // another thread ends it).
            None => return Err(Unresolved::ProcessExited),
        }
        let key = (meta.tgid, start, meta.exec_stamp);
        let cached = lock(&self.processes).get(&key).cloned();
        let process = match cached {
            Some(p) => p,
            None => {
                let md = exe_file.metadata().map_err(|_| Unresolved::Unreadable)?;
                let exe_trusted = names_file(&exe, &md);
                let sha256 = match self.digest(exe_file, &md, hash_timeout) {
                    Ok(digest) => digest.ok_or(Unresolved::Unreadable)?,
                    Err(()) => "".into(),
                };
                Arc::new(Process {
                    exe,
                    exe_trusted,
                    sha256,
                })
            }
        };
        if !process.sha256.is_empty() {
            insert_bounded(&self.processes, key, process.clone());
        }
        Ok((process, traced))
    }

    /// The process's start time in ticks since boot, if it could have made the connect.
    fn checked_start(&self, proc_dir: &Path, meta: &ConnMeta) -> Result<u64, Unresolved> {
        let stat = fs::read_to_string(proc_dir.join("stat")).map_err(|e| gone_or_unreadable(&e))?;
        let start = start_time_ticks(&stat).ok_or(Unresolved::Unreadable)?;
        // Start time has tick resolution: allow one tick of rounding.
        if start.saturating_mul(self.ns_per_tick) > meta.connect_boot_ns + self.ns_per_tick {
            return Err(Unresolved::PidReused);
        }
        Ok(start)
    }

    /// SHA-256 of `file`, cached by file identity; `Err` if not ready within `timeout`. Hashed
    /// once however many callers want it at the same time, on a thread of its own so that it
    /// completes for later callers whoever stops waiting. Read through the descriptor taken at
    /// accept, so the caller may exit or the path be replaced meanwhile.
    fn digest(
        &self,
        mut file: File,
        md: &fs::Metadata,
        timeout: Duration,
    ) -> Result<Option<Arc<str>>, ()> {
        let key = FileKey {
            dev: md.dev(),
            ino: md.ino(),
            size: md.size(),
            mtime_ns: i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec()),
            ctime_ns: i128::from(md.ctime()) * 1_000_000_000 + i128::from(md.ctime_nsec()),
        };
        let (flight, first) = {
            let mut digests = lock(&self.digests);
            match digests.get(&key) {
                Some(flight) => (flight.clone(), false),
                None => {
                    if digests.len() >= CACHE_CAPACITY {
                        digests.clear();
                    }
                    (digests.entry(key).or_default().clone(), true)
                }
            }
        };
        if first {
            let hashing = flight.clone();
            let spawned = std::thread::Builder::new()
                .name("hash".into())
                .spawn(move || hashing.finish(sha256_hex(&mut file).ok().map(Into::into)));
            if spawned.is_err() {
                flight.finish(None);
            }
        }
        let digest = flight.wait(timeout);
        if digest == Ok(None) {
            // A read error is not remembered: the next caller tries again.
            lock(&self.digests).remove(&key);
        }
        digest
    }

    fn cgroup(&self, meta: &ConnMeta) -> Option<Arc<Cgroup>> {
        if let Some(c) = lock(&self.cgroups).get(&meta.cgroup_id) {
            return Some(c.clone());
        }
        let text = fs::read_to_string(format!("/proc/{}/cgroup", meta.tgid)).ok()?;
        let path = text.lines().find_map(|l| l.strip_prefix("0::"))?.to_owned();
        // The process may have moved since the connect: only trust a path whose directory is
        // the cgroup the kernel named.
        let ino = fs::metadata(self.cgroup_root.join(path.trim_start_matches('/')))
            .ok()?
            .ino();
        if ino != meta.cgroup_id {
            return None;
        }
        let cgroup = Arc::new(Cgroup {
            unit: systemd_unit(&path).map(str::to_owned),
            container: container_id(&path).map(str::to_owned),
            path,
        });
        insert_bounded(&self.cgroups, meta.cgroup_id, cgroup.clone());
        Some(cgroup)
    }
}

fn gone_or_unreadable(e: &io::Error) -> Unresolved {
    if e.kind() == io::ErrorKind::NotFound {
        Unresolved::ProcessExited
    } else {
        Unresolved::Unreadable
    }
}

/// Whether `path`, in the agent's mount namespace, is the file described by `md`.
fn names_file(path: &Path, md: &fs::Metadata) -> bool {
    fs::metadata(path).is_ok_and(|here| here.dev() == md.dev() && here.ino() == md.ino())
}

/// `TracerPid` of /proc/PID/status: the tracer's pid, 0 when not traced.
fn tracer_pid(proc_dir: &Path) -> Option<u32> {
    let status = fs::read_to_string(proc_dir.join("status")).ok()?;
    parse_tracer_pid(&status)
}

fn parse_tracer_pid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))?
        .trim()
        .parse()
        .ok()
}

/// Lower-case hex SHA-256 of everything `reader` yields, as `sha256sum` prints it.
pub fn sha256_hex(reader: &mut impl Read) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn insert_bounded<K: std::hash::Hash + Eq, V>(map: &Mutex<HashMap<K, V>>, k: K, v: V) {
    let mut map = lock(map);
    if map.len() >= CACHE_CAPACITY {
        map.clear();
    }
    map.insert(k, v);
}

fn cached(
    map: &Mutex<HashMap<u32, Option<Arc<str>>>>,
    id: u32,
    lookup: impl FnOnce() -> Option<String>,
) -> Option<Arc<str>> {
    if let Some(name) = lock(map).get(&id) {
        return name.clone();
    }
    let name: Option<Arc<str>> = lookup().map(Into::into);
    insert_bounded(map, id, name.clone());
    name
}

fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(uid.into())
        .ok()
        .flatten()
        .map(|u| u.name)
}

fn group_name(gid: u32) -> Option<String> {
    nix::unistd::Group::from_gid(gid.into())
        .ok()
        .flatten()
        .map(|g| g.name)
}

fn comm(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Field 22 (starttime) of /proc/<pid>/stat. The command name (field 2) may contain spaces and
/// parentheses, so fields are counted from the last `)`.
fn start_time_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // after_comm starts at field 3 (state); starttime is field 22.
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// The systemd unit a cgroup path names: the innermost `.service` or `.scope` component.
fn systemd_unit(path: &str) -> Option<&str> {
    path.rsplit('/')
        .find(|c| c.ends_with(".service") || c.ends_with(".scope"))
}

/// The container id a cgroup path names: a 64-hex-digit id, bare (`/docker/<id>`) or inside a
/// runtime's scope name (`docker-<id>.scope`, `cri-containerd-<id>.scope`, `crio-<id>.scope`,
/// `libpod-<id>.scope`).
fn container_id(path: &str) -> Option<&str> {
    path.rsplit('/').find_map(|component| {
        let id = component.strip_suffix(".scope").unwrap_or(component);
        let id = id.rsplit(['-', ':']).next().unwrap_or(id);
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
    })
}

#[cfg(test)]
mod tests;
