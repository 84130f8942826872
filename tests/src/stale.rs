//! Leftovers of killed test runs. A test killed with SIGKILL (or a runner that times out) never
//! runs its guards: its cgroup, the agent running in it with programs attached, the agent's
//! pins and the test's temp directory stay behind. Each is named after the test process that
//! made it ([`PREFIX`], its pid and start time), so a later run can tell a leftover from the
//! live work of a suite running beside it: a leftover is one whose maker is dead. Names never
//! make anything stale by themselves, and neither does age.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::PATIENCE;

/// How every test cgroup, pin directory and temp directory is named.
pub const PREFIX: &str = "enforcer-test-";

/// Where test agents pin ([`crate::agent_pin_path`]).
const PIN_ROOT: &str = "/sys/fs/bpf";

/// A process: its pid, and its start time (clock ticks after boot, field 22 of
/// `/proc/<pid>/stat`), which tells it from a later process given the same pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub start: u64,
}

impl Owner {
    /// This process.
    pub fn current() -> Self {
        Self::of(std::process::id()).expect("this process's /proc/self/stat")
    }

    /// The process `pid`, if it runs.
    pub fn of(pid: u32) -> Option<Self> {
        start_time(pid).map(|start| Self { pid, start })
    }

    /// Whether the process still runs: one with this pid and this start time.
    pub fn is_alive(&self) -> bool {
        start_time(self.pid) == Some(self.start)
    }
}

fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count after its last `)`.
    // The state is field 3, the start time field 22.
    let rest = stat.rsplit_once(") ")?.1;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Who made a leftover, as its name says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Maker {
    /// `enforcer-test-<pid>-<start>-<seq>`.
    Process(Owner),
    /// `enforcer-test-<pid>-<seq>[-<file>]`, as harnesses before start times named things:
    /// only a pid with no process at all is dead (a reused pid keeps it, never the reverse).
    Pid(u32),
}

impl Maker {
    /// The maker named by `name`; `None` for a name of any other form.
    pub fn of(name: &str) -> Option<Self> {
        let rest = name.strip_prefix(PREFIX)?;
        let fields: Vec<&str> = rest.split('-').collect();
        let number = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        match (number(0), number(1), number(2)) {
            (Some(pid), Some(start), Some(_)) if fields.len() == 3 => Some(Self::Process(Owner {
                pid: u32::try_from(pid).ok()?,
                start,
            })),
            (Some(pid), Some(_), _) => Some(Self::Pid(u32::try_from(pid).ok()?)),
            _ => None,
        }
    }

    pub fn is_alive(&self) -> bool {
        match self {
            Self::Process(owner) => owner.is_alive(),
            Self::Pid(pid) => Path::new(&format!("/proc/{pid}")).exists(),
        }
    }
}

/// Whether `name` is a leftover: a test's, whose maker is dead.
fn is_stale(name: &str) -> bool {
    Maker::of(name).is_some_and(|maker| !maker.is_alive())
}

fn names_in(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(PREFIX))
        .collect()
}

/// Remove every leftover of a killed run: test cgroups under `cgroup_root` (processes killed,
/// programs detached), pin directories and temp directories, each only if its maker is dead.
pub fn sweep(cgroup_root: &Path) {
    for name in names_in(cgroup_root) {
        if is_stale(&name) {
            remove(cgroup_root, &name);
        }
    }
    // Pins and temp files whose cgroup is already gone.
    for name in names_in(Path::new(PIN_ROOT)) {
        if is_stale(&name) {
            unpin(&name);
        }
    }
    let temp = std::env::temp_dir();
    for name in names_in(&temp) {
        if is_stale(&name) {
            let path = temp.join(&name);
            let _ = fs::remove_file(&path).or_else(|_| fs::remove_dir_all(&path));
        }
    }
}

/// Remove the test cgroup `name` under `cgroup_root`, whoever made it: kill its processes,
/// detach the programs attached to it, unpin its agent's pins, remove it and its temp
/// directory.
pub fn remove(cgroup_root: &Path, name: &str) {
    let path = cgroup_root.join(name);
    let deadline = Instant::now() + PATIENCE;
    if !kill_all(&path, deadline) {
        eprintln!("stale cgroup {}: processes would not die", path.display());
    }
    let tree = subtree(&path);
    detach_all(&tree);
    unpin(name);
    // Deepest first: a cgroup with children cannot be removed.
    for dir in tree.iter().rev() {
        while let Err(e) = fs::remove_dir(dir) {
            if e.kind() == std::io::ErrorKind::NotFound || Instant::now() > deadline {
                if e.kind() != std::io::ErrorKind::NotFound {
                    eprintln!("rmdir {}: {e}", dir.display());
                }
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
    let _ = fs::remove_dir_all(std::env::temp_dir().join(name));
}

/// `cgroup` and every cgroup below it, parents before children; none if it is gone.
fn subtree(cgroup: &Path) -> Vec<PathBuf> {
    if !cgroup.is_dir() {
        return Vec::new();
    }
    let mut tree = vec![cgroup.to_path_buf()];
    let mut i = 0;
    while i < tree.len() {
        let children = fs::read_dir(&tree[i])
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path());
        tree.extend(children.collect::<Vec<_>>());
        i += 1;
    }
    tree
}

fn pids(cgroup: &Path) -> Vec<i32> {
    fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Kill every process in `cgroup` and below, and wait until none is left; false if some
/// remain at `deadline`. `cgroup.kill` (Linux ≥ 5.14) kills the whole subtree at once, forks
/// racing it included; before it, SIGKILL every listed process until the lists stay empty.
pub(crate) fn kill_all(cgroup: &Path, deadline: Instant) -> bool {
    let killer = fs::write(cgroup.join("cgroup.kill"), "1").is_ok();
    loop {
        let left: Vec<i32> = subtree(cgroup).iter().flat_map(|c| pids(c)).collect();
        if left.is_empty() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        if !killer {
            for pid in left {
                // SAFETY: plain syscall.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Run bpftool; `None` (said once on stderr) where it fails or is missing.
fn bpftool(args: &[&str]) -> Option<Value> {
    let out = Command::new("bpftool").arg("-j").args(args).output();
    match out {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            Some(serde_json::from_str(text.trim()).unwrap_or(Value::Null))
        }
        Ok(out) => {
            eprintln!(
                "bpftool {}: {} {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
            None
        }
        Err(e) => {
            eprintln!("bpftool {}: {e}", args.join(" "));
            None
        }
    }
}

/// Detach every program attached to the cgroups of `tree`: links first (a program attached
/// through a link cannot be detached by its id), then programs attached without one.
fn detach_all(tree: &[PathBuf]) {
    use std::os::unix::fs::MetadataExt;
    let ids: Vec<u64> = tree
        .iter()
        .filter_map(|c| fs::metadata(c).ok())
        .map(|m| m.ino())
        .collect();
    let links = bpftool(&["link", "show"]).unwrap_or(Value::Null);
    for link in links.as_array().into_iter().flatten() {
        if link["cgroup_id"]
            .as_u64()
            .is_some_and(|id| ids.contains(&id))
            && let Some(id) = link["id"].as_u64()
        {
            bpftool(&["link", "detach", "id", &id.to_string()]);
        }
    }
    for cgroup in tree {
        let path = cgroup.to_string_lossy();
        let progs = bpftool(&["cgroup", "show", &path]).unwrap_or(Value::Null);
        for prog in progs.as_array().into_iter().flatten() {
            if let (Some(id), Some(kind)) = (prog["id"].as_u64(), prog["attach_type"].as_str()) {
                bpftool(&["cgroup", "detach", &path, kind, "id", &id.to_string()]);
            }
        }
    }
}

/// Remove the pin directory `name` (an agent's links and maps).
fn unpin(name: &str) {
    let pins = Path::new(PIN_ROOT).join(name);
    if let Err(e) = fs::remove_dir_all(&pins)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        eprintln!("unpin {}: {e}", pins.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_say_who_made_them() {
        let owner = Owner {
            pid: 4321,
            start: 987_654,
        };
        assert_eq!(
            Maker::of("enforcer-test-4321-987654-0"),
            Some(Maker::Process(owner))
        );
        assert_eq!(Maker::of("enforcer-test-4321-3"), Some(Maker::Pid(4321)));
        assert_eq!(
            Maker::of("enforcer-test-4321-3-policy.yaml"),
            Some(Maker::Pid(4321))
        );
        for other in [
            "enforcer",
            "enforcer-test-",
            "enforcer-test-x-1",
            "enforcer-test-12",
            "enforcer-soak-1-2",
            "system.slice",
        ] {
            assert_eq!(Maker::of(other), None, "{other}");
        }
    }

    #[test]
    fn this_process_is_alive_and_a_changed_start_time_is_not() {
        let me = Owner::current();
        assert!(me.is_alive());
        let earlier = Owner {
            start: me.start + 1,
            ..me
        };
        assert!(!earlier.is_alive(), "another process with the same pid");
    }
}
