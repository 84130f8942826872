//! The harness cleans up like a production tool: what a killed run left behind (its cgroup, an
//! agent still running there with its programs attached, the agent's pins, its temp files) is
//! removed by the next run, and what a live run, in this process or another, holds is left
//! alone.

use std::{
    fs,
    io::{BufRead, BufReader},
    os::unix::{fs::MetadataExt, process::ExitStatusExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
};

use enforcer_tests::{
    Agent, Cgroup, PATIENCE, attached_program_ids, bpf_object_exists, cgroup_scoped_temp,
    cgroup2_root, enforcer_binary, privileged,
    stale::{self, Owner, PREFIX},
};
use serde_json::Value;

const POLICY: &str =
    "version: 1\nservices:\n  api:\n    protocol: tcp\n    endpoints: [\"127.0.0.1:9\"]\n";

/// A test cgroup as a run made for `owner` would name it, with what such a run leaves: a child
/// cgroup with a process in it, an agent attached to it and pinned under its name, a temp
/// directory. Whatever a failed test leaves of it is removed on drop.
struct Leftover {
    root: PathBuf,
    name: String,
    sleeper: Child,
    agent: Child,
}

impl Leftover {
    fn new(owner: Owner) -> Self {
        let root = cgroup2_root().expect("cgroup2 mount");
        let name = format!("{PREFIX}{}-{}-0", owner.pid, owner.start);
        let cgroup = root.join(&name);
        let temp = std::env::temp_dir().join(&name);
        for dir in [cgroup.join("app.service"), temp.clone()] {
            fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        }
        let sleeper = Command::new("sleep").arg("infinity").spawn().unwrap();
        enter(&cgroup.join("app.service"), sleeper.id());
        let policy = temp.join("policy.yaml");
        fs::write(&policy, POLICY).unwrap();
        let mut agent = Command::new(enforcer_binary())
            .args(["--log-format", "json", "run", "--policy"])
            .arg(&policy)
            .arg("--cgroup")
            .arg(&cgroup)
            .args(["--listen", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"])
            .arg("--state-dir")
            .arg(temp.join("state"))
            .arg("--pin-path")
            .arg(Path::new("/sys/fs/bpf").join(&name))
            .env("ENFORCER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn enforcer");
        enter(&cgroup, agent.id());
        let stderr = agent.stderr.take().unwrap();
        let leftover = Self {
            root,
            name,
            sleeper,
            agent,
        };
        let (ready, seen) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let event: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                if event["event"] == "ready" {
                    let _ = ready.send(());
                }
            }
        });
        seen.recv_timeout(PATIENCE)
            .expect("the agent's `ready` event");
        leftover
    }

    fn cgroup(&self) -> PathBuf {
        self.root.join(&self.name)
    }

    fn pins(&self) -> PathBuf {
        Path::new("/sys/fs/bpf").join(&self.name)
    }

    fn temp(&self) -> PathBuf {
        std::env::temp_dir().join(&self.name)
    }
}

/// Move process `pid` into `cgroup`.
fn enter(cgroup: &Path, pid: u32) {
    fs::write(cgroup.join("cgroup.procs"), pid.to_string()).expect("move into the cgroup");
}

impl Drop for Leftover {
    fn drop(&mut self) {
        let _ = self.agent.kill();
        let _ = self.agent.wait();
        let _ = self.sleeper.kill();
        let _ = self.sleeper.wait();
        stale::remove(&self.root, &self.name);
    }
}

/// A child process, killed on drop (a failing test leaves no process behind).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A process that has exited: its pid and start time, taken while it ran.
fn dead_process() -> Owner {
    let mut child = Command::new("sleep").arg("infinity").spawn().unwrap();
    let owner = Owner::of(child.id()).expect("the child's /proc stat");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!owner.is_alive());
    owner
}

/// The ids of the BPF links attached to the cgroup with inode `id`.
fn links_on(id: u64) -> Vec<u64> {
    let out = Command::new("bpftool")
        .args(["-j", "link", "show"])
        .output()
        .expect("bpftool");
    assert!(out.status.success(), "bpftool link show: {out:?}");
    let links: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    links
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["cgroup_id"].as_u64() == Some(id))
        .filter_map(|l| l["id"].as_u64())
        .collect()
}

#[test]
fn a_killed_runs_cgroup_agent_programs_and_pins_are_removed() {
    if !privileged() {
        return;
    }
    let mut leftover = Leftover::new(dead_process());
    let cgroup = leftover.cgroup();
    let id = fs::metadata(&cgroup).unwrap().ino();
    let progs = attached_program_ids(&cgroup);
    assert!(!progs.is_empty(), "the agent attached its programs");
    // Killed as a crash or a killed test run ends it: no clean-up of any kind. Its programs
    // stay attached and pinned, a process is left in the cgroup.
    leftover.agent.kill().unwrap();
    leftover.agent.wait().unwrap();
    assert_eq!(attached_program_ids(&cgroup), progs);
    assert!(leftover.pins().exists());

    stale::sweep(&leftover.root);

    let sleeper = leftover.sleeper.wait().unwrap();
    assert_eq!(
        sleeper.signal(),
        Some(libc::SIGKILL),
        "the process left in the cgroup"
    );
    assert!(!cgroup.exists(), "{} is removed", cgroup.display());
    assert!(!leftover.pins().exists(), "the pins are removed");
    assert!(!leftover.temp().exists(), "the temp directory is removed");
    assert_eq!(links_on(id), [] as [u64; 0], "links still on the cgroup");
    for prog in progs {
        assert!(!bpf_object_exists("prog", prog), "program {prog} is freed");
    }
}

#[test]
fn a_live_runs_cgroups_are_left_alone() {
    if !privileged() {
        return;
    }
    // Another run, alive: a process of its own named in the cgroup.
    let mut other_run = Running(Command::new("sleep").arg("infinity").spawn().unwrap());
    let other = Leftover::new(Owner::of(other_run.0.id()).unwrap());
    // This run's own cgroup, with an agent and a temp file.
    let mine = Cgroup::new();
    let agent = Agent::start(&mine, POLICY);
    let note = cgroup_scoped_temp(&mine, "note");
    fs::write(&note, "mine").unwrap();
    let mine_progs = attached_program_ids(mine.path());
    let other_progs = attached_program_ids(&other.cgroup());

    stale::sweep(&other.root);

    assert!(mine.path().exists() && agent.pin_path().exists() && note.exists());
    assert_eq!(attached_program_ids(mine.path()), mine_progs);
    assert!(other.cgroup().exists() && other.pins().exists() && other.temp().exists());
    assert_eq!(attached_program_ids(&other.cgroup()), other_progs);
    let mut other = other;
    assert_eq!(other.sleeper.try_wait().unwrap(), None, "still running");
    assert_eq!(other.agent.try_wait().unwrap(), None, "still running");

    // Once that run is gone, its cgroup is a leftover like any other.
    other_run.0.kill().unwrap();
    other_run.0.wait().unwrap();
    stale::sweep(&other.root);
    assert!(!other.cgroup().exists() && !other.pins().exists() && !other.temp().exists());
    assert!(mine.path().exists() && agent.pin_path().exists() && note.exists());
}

#[test]
fn a_dropped_cgroup_takes_its_processes_and_temp_directory() {
    if !privileged() {
        return;
    }
    let cgroup = Cgroup::new();
    let child = cgroup.child("app.service");
    let mut sleepers: Vec<Child> = [&cgroup, &child]
        .iter()
        .map(|c| c.command("sleep").arg("infinity").spawn().unwrap())
        .collect();
    let file = cgroup_scoped_temp(&child, "file");
    fs::write(&file, "x").unwrap();
    let (path, temp) = (cgroup.path().to_owned(), cgroup.temp_dir().to_owned());
    assert!(file.starts_with(&temp));
    drop(child);
    drop(cgroup);
    for sleeper in &mut sleepers {
        assert_eq!(sleeper.wait().unwrap().signal(), Some(libc::SIGKILL));
    }
    assert!(!temp.exists(), "{} is removed", temp.display());
    assert!(!path.exists(), "{} is removed", path.display());
}
