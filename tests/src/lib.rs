//! Harness for end-to-end tests: real cgroups, the real agent binary, real upstream servers.
//!
//! Everything a test creates is owned by a guard whose `Drop` undoes it, so a failing test
//! still removes its cgroup, stops its agent and uninstalls the programs it pinned.

use std::{
    fs,
    io::{self, BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::unix::{fs::MetadataExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod stale;

/// How long a test waits for something that should happen at once.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Whether this process can run the privileged tests. Outside CI, a test that cannot run says
/// why and passes vacuously; under `CI=true` it fails, so CI never skips silently.
pub fn privileged() -> bool {
    let reason = if unsafe { libc::geteuid() } != 0 {
        Some("needs root (CAP_BPF, CAP_NET_ADMIN)".to_string())
    } else if cgroup2_root().is_none() {
        Some("no cgroup v2 mount".to_string())
    } else {
        None
    };
    let Some(reason) = reason else { return true };
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let msg = format!(
        "end-to-end test cannot run on kernel {}: {reason}",
        kernel.trim()
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg} (CI=true: failing instead of skipping)");
    }
    eprintln!("SKIPPED: {msg}");
    false
}

/// The cgroup v2 mount point (`/sys/fs/cgroup` or `/sys/fs/cgroup/unified`).
pub fn cgroup2_root() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (fields, rest) = line.split_once(" - ")?;
        let mount_point = fields.split_whitespace().nth(4)?;
        (rest.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

/// A path of a binary built beside this one (same target directory and profile).
pub fn sibling_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // Test binaries live in target/<profile>/deps, others in target/<profile>.
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join(name)
}

/// The agent binary: `ENFORCER_BIN`, or `enforcer` beside this binary.
pub fn enforcer_binary() -> PathBuf {
    let path = std::env::var_os("ENFORCER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| sibling_binary("enforcer"));
    assert!(
        path.exists(),
        "{} not found: build it first (`cargo xtask test` does)",
        path.display()
    );
    path
}

pub fn sha256_hex(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(fs::read(path).expect("read binary"));
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The value of the series written exactly `series` (name and labels as exposed) in a
/// Prometheus text exposition.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Poll `f` until it returns `Some`, or panic after [`PATIENCE`] naming `what`.
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

// === Cgroup ===

/// A cgroup v2 directory made for one test, with a temp directory of its own; on drop its
/// processes are killed, then both are removed.
///
/// Its name, `enforcer-test-<pid>-<start time>-<seq>`, names the test process that made it
/// (the start time tells it from a later process given the same pid), and so does every pin
/// path and temp directory derived from it: [`Cgroup::new`] first removes those of test
/// processes that are dead (killed runs, whose guards never ran), never another live run's.
pub struct Cgroup {
    path: PathBuf,
    /// Where [`cgroup_scoped_temp`] puts this cgroup's files.
    temp: PathBuf,
    /// For a child cgroup, the prefix of its files in its parent's temp directory.
    temp_prefix: Option<String>,
}

impl Cgroup {
    pub fn new() -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        static SWEEP: std::sync::Once = std::sync::Once::new();
        let root = cgroup2_root().expect("cgroup2 mount");
        SWEEP.call_once(|| stale::sweep(&root));
        let me = stale::Owner::current();
        let name = format!(
            "{}{}-{}-{}",
            stale::PREFIX,
            me.pid,
            me.start,
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let path = root.join(&name);
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        let temp = std::env::temp_dir().join(&name);
        fs::create_dir(&temp).unwrap_or_else(|e| panic!("mkdir {}: {e}", temp.display()));
        // Readable and writable by every user, as the temp directory itself: tests run
        // clients as other users.
        fs::set_permissions(&temp, std::os::unix::fs::PermissionsExt::from_mode(0o1777))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", temp.display()));
        Self {
            path,
            temp,
            temp_prefix: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cgroup id the kernel reports: the directory's inode number.
    pub fn id(&self) -> u64 {
        fs::metadata(&self.path).expect("stat cgroup").ino()
    }

    /// A command whose process starts inside this cgroup, as root.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.command_as(program, None)
    }

    /// A command whose process starts inside this cgroup, optionally as `(uid, gid)`.
    pub fn command_as(
        &self,
        program: impl AsRef<std::ffi::OsStr>,
        user: Option<(u32, u32)>,
    ) -> Command {
        let procs = self.path.join("cgroup.procs");
        let mut cmd = Command::new(program);
        // SAFETY: only async-signal-safe calls (open, write, close, set*id) between fork and
        // exec; the path string was allocated before the fork.
        let procs = std::ffi::CString::new(procs.into_os_string().into_encoded_bytes())
            .expect("path without NUL");
        unsafe {
            cmd.pre_exec(move || {
                // Move in first (as root), then drop privileges.
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
                let err = io::Error::last_os_error();
                libc::close(fd);
                if !ok {
                    return Err(err);
                }
                if let Some((uid, gid)) = user
                    && (libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(gid) != 0
                        || libc::setuid(uid) != 0)
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// A child cgroup named `name` (e.g. `deploy-bot.service`, which the agent reads as the
    /// caller's systemd unit). Removed with its parent guard's drop, after its processes.
    pub fn child(&self, name: &str) -> Cgroup {
        let path = self.path.join(name);
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Cgroup {
            path,
            temp: self.temp.clone(),
            temp_prefix: Some(name.to_owned()),
        }
    }

    /// This cgroup's temp directory (its parent's for a child cgroup), removed on drop.
    pub fn temp_dir(&self) -> &Path {
        &self.temp
    }
}

impl Default for Cgroup {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        if !stale::kill_all(&self.path, deadline) {
            eprintln!("cgroup {}: processes would not die", self.path.display());
        }
        if self.temp_prefix.is_none() {
            let _ = fs::remove_dir_all(&self.temp);
        }
        // rmdir fails with EBUSY while exiting tasks are still being reaped.
        while let Err(e) = fs::remove_dir(&self.path) {
            if Instant::now() > deadline {
                eprintln!("rmdir {}: {e}", self.path.display());
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

// === Agent ===

/// A running `enforcer run`, started inside a test cgroup and attached to it. It pins under a
/// path of its own cgroup's (so a second agent started on the same cgroup adopts the first
/// one's pins, state directory and policy file); dropping it stops the agent and runs
/// `enforcer uninstall` on that path.
pub struct Agent {
    child: Option<Child>,
    binary: PathBuf,
    events: Arc<(Mutex<Vec<Value>>, Condvar)>,
    policy_file: PathBuf,
    pin_path: PathBuf,
    pub listen: SocketAddr,
    pub listen6: Option<SocketAddr>,
    /// When the process was spawned, and the `ready` event.
    pub spawned: Instant,
    pub ready: Value,
    /// The metrics endpoint (`None` with `--metrics-addr off`).
    pub metrics: Option<SocketAddr>,
}

impl Agent {
    /// Start the agent with `policy` (YAML), attached to and running inside `cgroup`, and wait
    /// until it is ready.
    pub fn start(cgroup: &Cgroup, policy: &str) -> Self {
        Self::start_with(cgroup, policy, &[])
    }

    pub fn start_with(cgroup: &Cgroup, policy: &str, extra_args: &[&str]) -> Self {
        Self::spawn(&enforcer_binary(), cgroup, policy, extra_args)
    }

    /// Start `binary` as the agent (see [`Agent::start`]). Its metrics endpoint takes a free
    /// port unless `extra_args` says `--metrics-addr`: agents of parallel tests must not
    /// collide on the default.
    pub fn spawn(binary: &Path, cgroup: &Cgroup, policy: &str, extra_args: &[&str]) -> Self {
        let policy_file = cgroup_scoped_temp(cgroup, "policy.yaml");
        fs::write(&policy_file, policy).expect("write policy");
        let state_dir = cgroup_scoped_temp(cgroup, "state");
        // Its own pin path, unless the test names one.
        let pin_arg = extra_args.iter().position(|a| *a == "--pin-path");
        let pin_path = match pin_arg {
            Some(i) => PathBuf::from(extra_args[i + 1]),
            None => agent_pin_path(cgroup),
        };
        let spawned = Instant::now();
        let metrics_args: &[&str] = if extra_args.contains(&"--metrics-addr") {
            &[]
        } else {
            &["--metrics-addr", "127.0.0.1:0"]
        };
        let mut child = cgroup
            .command(binary)
            .args(["--log-format", "json", "run", "--policy"])
            .arg(&policy_file)
            .arg("--cgroup")
            .arg(cgroup.path())
            .args(["--listen", "127.0.0.1:0"])
            .arg("--state-dir")
            .arg(&state_dir)
            // Its `agent.json` too: not the host's /run/enforcer.
            .arg("--runtime-dir")
            .arg(cgroup_scoped_temp(cgroup, "run"))
            .args(pin_arg.is_none().then_some("--pin-path"))
            .args(pin_arg.is_none().then_some(&pin_path))
            .args(metrics_args)
            .args(extra_args)
            .env("ENFORCER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn enforcer");
        let events = Arc::new((Mutex::new(Vec::<Value>::new()), Condvar::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = events.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({ "raw": line }));
                let (lock, cv) = &*sink;
                lock.lock().unwrap().push(value);
                cv.notify_all();
            }
        });
        let mut agent = Self {
            child: Some(child),
            binary: binary.to_owned(),
            events,
            policy_file,
            pin_path,
            listen: "0.0.0.0:0".parse().unwrap(),
            listen6: None,
            spawned,
            ready: Value::Null,
            metrics: None,
        };
        let ready = agent.wait_event("agent ready", |e| e["event"] == "ready");
        agent.listen = ready["listen"].as_str().unwrap().parse().unwrap();
        agent.listen6 = ready["listen6"].as_str().map(|s| s.parse().unwrap());
        agent.metrics = ready["metrics"].as_str().map(|s| s.parse().unwrap());
        agent.ready = ready;
        agent
    }

    /// Where the agent pins its programs' links and maps.
    pub fn pin_path(&self) -> &Path {
        &self.pin_path
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The policy file the agent runs on; tests rewrite it to reload.
    pub fn policy_file(&self) -> &Path {
        &self.policy_file
    }

    /// The agent's `/metrics` exposition; panics unless it answers 200.
    pub fn scrape(&self) -> String {
        let addr = self.metrics.expect("the agent serves metrics");
        let mut s = TcpStream::connect(addr).expect("connect to the metrics endpoint");
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        assert!(head.starts_with("HTTP/1.1 200 "), "{text}");
        body.to_owned()
    }

    /// Every log event so far.
    pub fn events(&self) -> Vec<Value> {
        self.events.0.lock().unwrap().clone()
    }

    /// Wait for the first event matching `pred`; panics with the log if the agent exits first.
    pub fn wait_event(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + PATIENCE;
        let (lock, cv) = &*self.events;
        let mut events = lock.lock().unwrap();
        loop {
            if let Some(e) = events.iter().find(|e| pred(e)) {
                return e.clone();
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                drop(events);
                thread::sleep(Duration::from_millis(100)); // let the reader drain stderr
                panic!(
                    "agent exited ({status}) while waiting for {what}; log:\n{}",
                    self.log_text()
                );
            }
            let now = Instant::now();
            assert!(now < deadline, "timed out waiting for {what}; log:\n{}", {
                drop(events);
                self.log_text()
            });
            events = cv
                .wait_timeout(events, (deadline - now).min(Duration::from_millis(100)))
                .unwrap()
                .0;
        }
    }

    /// The `connection` event logged for client address `client`.
    pub fn connection_event(&mut self, client: &str) -> Value {
        self.wait_event(&format!("connection event for {client}"), |e| {
            e["event"] == "connection" && e["client"] == client
        })
    }

    pub fn log_text(&self) -> String {
        self.events()
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// SIGTERM, wait for exit, and return the status and the final `stopped` event (with the
    /// counters). The programs stay attached: see [`Agent::uninstall`].
    pub fn stop(&mut self) -> (ExitStatus, Value) {
        let mut child = self.child.take().expect("agent running");
        // SAFETY: plain syscall on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = wait_child(&mut child);
        // The reader thread stores the last lines at EOF, just after the exit.
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(e) = self.events().into_iter().find(|e| e["event"] == "stopped") {
                return (status, e);
            }
            assert!(
                Instant::now() < deadline,
                "agent exited ({status}) without a `stopped` event; log:\n{}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL the agent and reap it, as a crash would end it: no clean-up of any kind.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("agent running");
        child.kill().expect("SIGKILL the agent");
        child.wait().expect("reap the agent");
    }

    /// Run `enforcer uninstall` on this agent's pin path; returns its output.
    pub fn uninstall(&self) -> std::process::Output {
        Command::new(&self.binary)
            .args(["--log-format", "json", "uninstall", "--pin-path"])
            .arg(&self.pin_path)
            .output()
            .expect("run enforcer uninstall")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: plain syscall on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            wait_child(&mut child);
        }
        let out = self.uninstall();
        if !out.status.success() {
            eprintln!(
                "enforcer uninstall --pin-path {} failed: {}",
                self.pin_path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Where an agent started on `cgroup` pins (one path per cgroup, so tests never share pins).
pub fn agent_pin_path(cgroup: &Cgroup) -> PathBuf {
    Path::new("/sys/fs/bpf").join(cgroup.path().file_name().unwrap())
}

/// Wait for a child to exit; SIGKILL it if it does not within [`PATIENCE`].
fn wait_child(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return child.wait().expect("wait");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// A temp file path unique to a cgroup (and so to a test), in its temp directory, readable by
/// every user; removed with the cgroup.
pub fn cgroup_scoped_temp(cgroup: &Cgroup, name: &str) -> PathBuf {
    match &cgroup.temp_prefix {
        None => cgroup.temp.join(name),
        Some(prefix) => cgroup.temp.join(format!("{prefix}-{name}")),
    }
}

// === Upstreams ===

/// A TCP server on a port the OS picks. Each connection is handled on its own thread; the
/// server stops accepting when dropped.
pub struct Server {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Peer addresses of accepted connections, in order.
    peers: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Server {
    /// Greets each connection with `peer ADDR\n` (the address it sees), then echoes every
    /// byte until the client half-closes, then half-closes itself.
    pub fn echo(bind: &str) -> Self {
        Self::start(bind, |mut s, peer| {
            s.write_all(format!("peer {peer}\n").as_bytes())?;
            let mut r = s.try_clone()?;
            io::copy(&mut r, &mut s)?;
            s.shutdown(Shutdown::Write)
        })
    }

    /// Answers every HTTP/1.1 request with 200 and the body `peer=ADDR`, then closes.
    pub fn http(bind: &str) -> Self {
        Self::start(bind, |mut s, peer| {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if s.read(&mut byte)? == 0 {
                    return Ok(());
                }
                head.push(byte[0]);
            }
            let body = format!("peer={peer}");
            write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )?;
            s.shutdown(Shutdown::Write)
        })
    }

    fn start(
        bind: &str,
        handler: impl Fn(TcpStream, SocketAddr) -> io::Result<()> + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind(bind).unwrap_or_else(|e| panic!("bind {bind}: {e}"));
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let peers = Arc::new(Mutex::new(Vec::new()));
        let handler = Arc::new(handler);
        let (stop2, peers2) = (stop.clone(), peers.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                // A connection reset before we got here has no peer any more; it still counts.
                let peer = conn
                    .peer_addr()
                    .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
                peers2.lock().unwrap().push(peer);
                let handler = handler.clone();
                thread::spawn(move || {
                    let _ = handler(conn, peer);
                });
            }
        });
        Self { addr, stop, peers }
    }

    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

// === Clients ===

/// Run the probe client (`src/bin/probe.rs`) via `cmd`, return its JSON report. A probe that
/// has not finished within [`PATIENCE`] is killed and the test fails.
pub fn run_probe(mut cmd: Command) -> Value {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run probe");
    // Drain the pipes while waiting, so a large report cannot block the probe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait probe") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("probe did not finish within {PATIENCE:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    let (stdout, stderr) = (
        stdout.join().expect("stdout"),
        stderr.join().expect("stderr"),
    );
    assert!(
        status.success(),
        "probe failed ({status}): {}",
        String::from_utf8_lossy(&stderr)
    );
    serde_json::from_slice(&stdout).unwrap_or_else(|e| {
        panic!(
            "probe output is not JSON ({e}): {}",
            String::from_utf8_lossy(&stdout)
        )
    })
}

/// The probe binary.
pub fn probe_binary() -> PathBuf {
    let p = sibling_binary("probe");
    assert!(p.exists(), "{} not built", p.display());
    p
}

// === bpftool ===

/// IDs of the BPF programs attached to `cgroup` (via `bpftool cgroup show`).
pub fn attached_program_ids(cgroup: &Path) -> Vec<u64> {
    let out = Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(cgroup)
        .output()
        .expect("bpftool (apt-get install bpftool; `cargo xtask setup` does)");
    assert!(out.status.success(), "bpftool cgroup show failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Vec::new();
    }
    let v: Value = serde_json::from_str(&text).expect("bpftool JSON");
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["id"].as_u64())
        .collect()
}

/// IDs of the maps used by program `prog_id`.
pub fn program_map_ids(prog_id: u64) -> Vec<u64> {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show", "id", &prog_id.to_string()])
        .output()
        .expect("bpftool");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v["map_ids"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .collect()
}

/// Whether a BPF object (`prog` or `map`) with this id still exists.
pub fn bpf_object_exists(kind: &str, id: u64) -> bool {
    Command::new("bpftool")
        .args([kind, "show", "id", &id.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("bpftool")
        .success()
}

// === HTTP upstream ===

/// One request as the HTTP upstream received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    /// The request target exactly as sent on the wire.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The head's bytes exactly as received.
    pub raw_head: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP/1.1 upstream for end-to-end tests. It records every request and every raw byte
/// each connection carried, and answers by path:
/// - `/status/NNN`: status NNN (no body for 1xx, 204, 304 and HEAD);
/// - `/chunked`: a chunked body `hello world` in two chunks;
/// - `/close`: a body without length, delimited by closing the connection;
/// - `/ws`: with `Upgrade: websocket`, 101 then an echo of every byte;
/// - `/echo`: the request body back;
/// - `/bye`: 200 with a length, then the upstream closes the connection without saying so
///   (as an upstream's idle timeout does);
/// - `/flaky`: 200 with a length; the connection then reads the next request in full and
///   resets without answering it (an upstream whose keep-alive close crossed that request);
/// - anything else: 200 with the body `ok METHOD TARGET`.
///
/// `Expect: 100-continue` gets a `100 Continue` before the body is read.
pub struct HttpUpstream {
    server: Server,
    requests: Arc<Mutex<Vec<Received>>>,
    raw: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Connections read to their end (or failed).
    finished: Arc<AtomicUsize>,
}

impl HttpUpstream {
    pub fn start(bind: &str) -> Self {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let raw = Arc::new(Mutex::new(Vec::new()));
        let finished = Arc::new(AtomicUsize::new(0));
        let (r2, raw2, finished2) = (requests.clone(), raw.clone(), finished.clone());
        let server = Server::start(bind, move |s, _| {
            // Answers take several small writes: without this, Nagle's algorithm holds each
            // keep-alive response ~40 ms for the previous one's ACK.
            s.set_nodelay(true)?;
            let slot = {
                let mut raw = raw2.lock().unwrap();
                raw.push(Vec::new());
                raw.len() - 1
            };
            let result = serve_http(s, &r2, &raw2, slot);
            finished2.fetch_add(1, Ordering::SeqCst);
            result
        });
        Self {
            server,
            requests,
            raw,
            finished,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    pub fn requests(&self) -> Vec<Received> {
        self.requests.lock().unwrap().clone()
    }

    /// Every byte every connection delivered, concatenated, lossy.
    pub fn raw_text(&self) -> String {
        let raw = self.raw.lock().unwrap();
        raw.iter()
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join("\n--- next connection ---\n")
    }

    pub fn connections(&self) -> usize {
        self.raw.lock().unwrap().len()
    }

    /// Connections accepted and not yet read to their end: once a client is gone, 0 means
    /// every request it sent has been counted.
    pub fn open_connections(&self) -> usize {
        self.connections() - self.finished.load(Ordering::SeqCst)
    }

    /// The bytes each connection delivered so far, in accept order.
    pub fn raw_connections(&self) -> Vec<Vec<u8>> {
        self.raw.lock().unwrap().clone()
    }
}

/// Reads from a connection, logging every byte into `raw[slot]`.
struct Logged<'a> {
    stream: TcpStream,
    buf: Vec<u8>,
    raw: &'a Mutex<Vec<Vec<u8>>>,
    slot: usize,
}

impl Logged<'_> {
    /// Read more bytes into `buf`; false at EOF.
    fn fill(&mut self) -> io::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk)?;
        self.raw.lock().unwrap()[self.slot].extend_from_slice(&chunk[..n]);
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    fn take(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill()? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    fn line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf.drain(..i + 2).collect::<Vec<_>>();
                return Ok(line[..i].to_vec());
            }
            if !self.fill()? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}

fn serve_http(
    stream: TcpStream,
    requests: &Mutex<Vec<Received>>,
    raw: &Mutex<Vec<Vec<u8>>>,
    slot: usize,
) -> io::Result<()> {
    // Responses go out in several writes: without this, each waits for the agent's delayed
    // ACK (40 ms), and pipelined runs crawl.
    stream.set_nodelay(true)?;
    let mut out = stream.try_clone()?;
    let mut conn = Logged {
        stream,
        buf: Vec::new(),
        raw,
        slot,
    };
    // After `/flaky`: the next request is recorded, then reset.
    let mut reset_next = false;
    loop {
        // Parse a head.
        let (mut req, head_len) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 128];
            let mut r = httparse::Request::new(&mut headers);
            match r.parse(&conn.buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let req = Received {
                        method: r.method.unwrap_or("").to_string(),
                        target: r.path.unwrap_or("").to_string(),
                        headers: r
                            .headers
                            .iter()
                            .map(|h| {
                                (
                                    h.name.to_string(),
                                    String::from_utf8_lossy(h.value).into_owned(),
                                )
                            })
                            .collect(),
                        body: Vec::new(),
                        raw_head: conn.buf[..n].to_vec(),
                    };
                    break (req, n);
                }
                Ok(httparse::Status::Partial) => {
                    if !conn.fill()? {
                        return Ok(());
                    }
                }
                Err(_) => {
                    out.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")?;
                    return Ok(());
                }
            }
        };
        conn.buf.drain(..head_len);
        if req
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
        {
            out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let chunked = req
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        if chunked {
            loop {
                let size_line = conn.line()?;
                let size_text = String::from_utf8_lossy(&size_line);
                let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                    .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
                if size == 0 {
                    while !conn.line()?.is_empty() {}
                    break;
                }
                let data = conn.take(size)?;
                req.body.extend_from_slice(&data);
                conn.take(2)?;
            }
        } else if let Some(len) = req.header("content-length") {
            let len: usize = len.trim().parse().unwrap_or(0);
            req.body = conn.take(len)?;
        }
        requests.lock().unwrap().push(req.clone());
        if reset_next {
            socket2::SockRef::from(&out).set_linger(Some(Duration::ZERO))?;
            return Ok(());
        }

        let close = req
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let path = req.target.split('?').next().unwrap_or("");
        let head_only = req.method == "HEAD";
        if let Some(code) = path.strip_prefix("/status/") {
            let code: u16 = code.parse().unwrap_or(500);
            let body = if head_only || code == 204 || code == 304 || code < 200 {
                ""
            } else {
                "status body"
            };
            let length = if code == 204 || code == 304 {
                String::new()
            } else {
                format!("content-length: {}\r\n", "status body".len())
            };
            write!(out, "HTTP/1.1 {code} Status\r\n{length}\r\n{body}")?;
        } else if path == "/chunked" {
            out.write_all(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n",
            )?;
        } else if path == "/bye" {
            out.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nbye")?;
            return out.shutdown(Shutdown::Both);
        } else if path == "/flaky" {
            out.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nflaky")?;
            reset_next = true;
        } else if path == "/close" {
            out.write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil close")?;
            return out.shutdown(Shutdown::Write);
        } else if path == "/ws" && req.header("upgrade").is_some() {
            out.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
            )?;
            // Echo whatever was already read, then the rest of the stream.
            let pending = std::mem::take(&mut conn.buf);
            out.write_all(&pending)?;
            loop {
                if !conn.fill()? {
                    return out.shutdown(Shutdown::Write);
                }
                let data = std::mem::take(&mut conn.buf);
                out.write_all(&data)?;
            }
        } else {
            let body = if path == "/echo" {
                req.body.clone()
            } else {
                format!("ok {} {}", req.method, req.target).into_bytes()
            };
            write!(
                out,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                body.len()
            )?;
            if !head_only {
                out.write_all(&body)?;
            }
        }
        if close {
            return out.shutdown(Shutdown::Write);
        }
    }
}

/// Send raw `bytes` from a probe running inside `cgroup` to `to`; returns the probe's report
/// (`response`: what came back, `end`: closed | reset | timeout).
pub fn send_raw(cgroup: &Cgroup, to: SocketAddr, bytes: &[u8]) -> Value {
    send_raw_with(cgroup, None, to, bytes, false)
}

/// [`send_raw`] as `(uid, gid)` if given, and with `hold` keeping the connection open for
/// writing after `bytes` (a client that goes quiet), instead of half-closing it.
pub fn send_raw_with(
    cgroup: &Cgroup,
    user: Option<(u32, u32)>,
    to: SocketAddr,
    bytes: &[u8],
    hold: bool,
) -> Value {
    let mut cmd = cgroup.command_as(probe_binary(), user);
    cmd.args(["send", &to.to_string()]);
    if hold {
        cmd.arg("--hold");
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn probe");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(bytes)
        .expect("write probe stdin");
    let out = child.wait_with_output().expect("probe");
    assert!(out.status.success(), "probe send failed: {out:?}");
    serde_json::from_slice(&out.stdout).expect("probe JSON")
}
