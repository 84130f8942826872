//! The agent under a service manager, with a real notify socket as systemd gives it
//! (`NOTIFY_SOCKET`, `WATCHDOG_USEC`): READY=1 once it enforces, WATCHDOG=1 while its runtime
//! and heartbeat run (and never while it is stopped), STOPPING=1 on SIGTERM. Its text logs,
//! on a pipe as journald reads them, carry no colour codes, and `--log-level` beats
//! `ENFORCER_LOG`.

use std::{
    fs,
    io::{self, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::unix::net::UnixDatagram,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
};

use enforcer_tests::{
    Cgroup, PATIENCE, agent_pin_path, cgroup_scoped_temp, enforcer_binary, privileged, wait_for,
};

/// An agent started as systemd would start it; stopped, reaped and uninstalled on drop.
struct Supervised {
    child: Child,
    pin_path: PathBuf,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Supervised {
    fn start(cgroup: &Cgroup, notify_socket: &str, watchdog_usec: &str) -> Self {
        let policy = cgroup_scoped_temp(cgroup, "policy.yaml");
        fs::write(
            &policy,
            fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../examples/policy.yaml"
            ))
            .unwrap(),
        )
        .unwrap();
        let pin_path = agent_pin_path(cgroup);
        let mut child = cgroup
            .command(enforcer_binary())
            .args([
                "--log-format",
                "text",
                "--log-level",
                "info",
                "run",
                "--policy",
            ])
            .arg(&policy)
            .arg("--cgroup")
            .arg(cgroup.path())
            .args(["--listen", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"])
            .arg("--state-dir")
            .arg(cgroup_scoped_temp(cgroup, "state"))
            .arg("--pin-path")
            .arg(&pin_path)
            .arg("--runtime-dir")
            .arg(cgroup_scoped_temp(cgroup, "run"))
            // The flag must win: with this alone, "enforcer ready" would not be logged.
            .env("ENFORCER_LOG", "error")
            .env("NOTIFY_SOCKET", notify_socket)
            .env("WATCHDOG_USEC", watchdog_usec)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn enforcer");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        thread::spawn(move || {
            let mut buf = [0; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Self {
            child,
            pin_path,
            stderr,
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn signal(&self, signal: i32) {
        // SAFETY: plain syscall on our own child.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0);
    }

    /// Whether every thread of the agent is stopped (group stop done: none can send).
    fn stopped(&self) -> bool {
        let tasks = fs::read_dir(format!("/proc/{}/task", self.pid())).unwrap();
        tasks.flatten().all(|t| {
            let stat = fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            // The state follows the parenthesised command name.
            let state = stat.rsplit_once(") ").map(|(_, rest)| &rest[..1]);
            state == Some("T") || state == Some("t")
        })
    }

    fn log(&self) -> Vec<u8> {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        // SAFETY: plain syscalls on our own child; it may be stopped.
        unsafe { libc::kill(self.pid(), libc::SIGCONT) };
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = Command::new(enforcer_binary())
            .args(["uninstall", "--pin-path"])
            .arg(&self.pin_path)
            .output();
    }
}

/// The next datagram on the notify socket, or `None` if none comes within [`PATIENCE`].
fn next(socket: &UnixDatagram) -> Option<String> {
    socket.set_nonblocking(false).unwrap();
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = [0; 4096];
    let n = socket.recv(&mut buf).ok()?;
    Some(String::from_utf8(buf[..n].to_vec()).unwrap())
}

/// Every datagram queued now, without waiting.
fn queued(socket: &UnixDatagram) -> Vec<String> {
    socket.set_nonblocking(true).unwrap();
    let mut buf = [0; 4096];
    let mut all = Vec::new();
    loop {
        match socket.recv(&mut buf) {
            Ok(n) => all.push(String::from_utf8(buf[..n].to_vec()).unwrap()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return all,
            Err(e) => panic!("notify socket: {e}"),
        }
    }
}

fn readyz(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines().next().unwrap_or_default().to_owned()
}

#[test]
fn the_agent_notifies_ready_feeds_the_watchdog_while_alive_and_notifies_stopping() {
    if !privileged() {
        return;
    }
    let cgroup = Cgroup::new();
    let path = cgroup_scoped_temp(&cgroup, "notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    // Every 0.5 s.
    let mut agent = Supervised::start(&cgroup, path.to_str().unwrap(), "1000000");

    // Keep-alives may come first; READY=1 comes once the agent enforces, and by then it has
    // said where its endpoint is and answers ready there.
    let ready = wait_for("READY=1", || {
        let message = next(&socket).expect("no datagram from the agent");
        (message != "WATCHDOG=1").then_some(message)
    });
    assert_eq!(ready, "READY=1\nSTATUS=enforcing 1 services");
    let file = fs::read_to_string(cgroup_scoped_temp(&cgroup, "run").join("agent.json")).unwrap();
    let file: serde_json::Value = serde_json::from_str(&file).unwrap();
    assert_eq!(file["pid"], agent.pid());
    let metrics: SocketAddr = file["metrics"].as_str().unwrap().parse().unwrap();
    assert_eq!(readyz(metrics), "HTTP/1.1 200 OK");

    for _ in 0..3 {
        assert_eq!(next(&socket).as_deref(), Some("WATCHDOG=1"));
    }

    // A stopped agent sends nothing: whatever it sent before it stopped is drained; then,
    // until it is continued, nothing arrives. It is continued once the kernel, too, counts it
    // as down (its heartbeat went stale: protected connects fail closed), which is longer than
    // the watchdog interval.
    agent.signal(libc::SIGSTOP);
    wait_for("the agent stopped", || agent.stopped().then_some(()));
    queued(&socket);
    wait_for("connects to fail closed", || {
        let curl = cgroup
            .command("curl")
            .args(["-s", "-o", "/dev/null", "--max-time", "1"])
            .arg("http://127.0.0.1:18080/")
            .status()
            .unwrap();
        // 7: could not connect (refused). A redirect to the stopped agent times out (28).
        (curl.code() == Some(7)).then_some(())
    });
    assert_eq!(
        queued(&socket),
        Vec::<String>::new(),
        "a stopped agent fed the watchdog"
    );
    agent.signal(libc::SIGCONT);
    assert_eq!(next(&socket).as_deref(), Some("WATCHDOG=1"));

    agent.signal(libc::SIGTERM);
    let stopping = wait_for("STOPPING=1", || {
        let message = next(&socket).expect("no STOPPING=1 before the socket went quiet");
        (message != "WATCHDOG=1").then_some(message)
    });
    assert_eq!(stopping, "STOPPING=1\nSTATUS=draining");
    let status = agent.child.wait().unwrap();
    assert!(status.success(), "{status}");

    // Logs as journald gets them: `--log-level info` over ENFORCER_LOG=error, plain text.
    wait_for("the stderr reader to see the exit", || {
        String::from_utf8_lossy(&agent.log())
            .contains("enforcer stopped")
            .then_some(())
    });
    let log = agent.log();
    let text = String::from_utf8_lossy(&log);
    assert!(
        text.contains(" INFO ") && text.contains("enforcer ready"),
        "{text}"
    );
    assert!(!log.contains(&0x1b), "ANSI escapes on a pipe:\n{text:?}");
    // The agent removed its agent.json on the way out.
    assert!(
        !cgroup_scoped_temp(&cgroup, "run")
            .join("agent.json")
            .exists()
    );
}

#[test]
fn an_abstract_notify_socket_gets_ready() {
    if !privileged() {
        return;
    }
    use std::os::linux::net::SocketAddrExt as _;
    let cgroup = Cgroup::new();
    let name = cgroup
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
    let socket = UnixDatagram::bind_addr(&addr).unwrap();
    let _agent = Supervised::start(&cgroup, &format!("@{name}"), "");
    assert_eq!(
        next(&socket).as_deref(),
        Some("READY=1\nSTATUS=enforcing 1 services"),
        "without WATCHDOG_USEC the first message is READY=1"
    );
}
