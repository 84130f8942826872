//! Agent restarts without a gap: pinned programs and maps outlive a killed agent and follow
//! each service's `failMode` while no agent is ready; a new agent adopts them, with the state
//! it must keep; `enforcer uninstall` leaves nothing behind.

use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::SocketAddr,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use enforcer_tests::{
    Agent, Cgroup, HttpUpstream, PATIENCE, Server, agent_pin_path, attached_program_ids,
    bpf_object_exists, cgroup_scoped_temp, enforcer_binary, privileged, probe_binary,
    program_map_ids, run_probe, send_raw_with, wait_for,
};
use serde_json::Value;
use sha2::Digest as _;

const API_KEY: &str = "restart-test-key-7f3a";
const NOBODY: Option<(u32, u32)> = Some((65534, 65534));

/// `/load/**` is open to anyone; `/keyed/**` needs the API key, bound to its first user.
fn http_policy(upstream: SocketAddr) -> String {
    format!(
        r#"version: 1
credentials:
  keys:
    kind: apiKey
    header: x-api-key
    bindOnFirstUse: subject
    keys:
      - name: reporter
        sha256: {digest}
services:
  api:
    endpoints: ["{upstream}"]
    failMode: closed
rules:
  - id: load
    from: ["*"]
    to: api
    methods: [GET]
    paths: ["/load/**"]
  - id: keyed
    from: ["*"]
    to: api
    methods: [GET]
    paths: ["/keyed/**"]
    require: {{credential: keys}}
"#,
        digest = sha2::Sha256::digest(API_KEY)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
    )
}

fn tcp_policy(upstream: SocketAddr, fail_mode: &str) -> String {
    format!(
        "version: 1\nservices:\n  api:\n    protocol: tcp\n    failMode: {fail_mode}\n    \
         endpoints: [\"{upstream}\"]\n"
    )
}

/// The probe's echo exchange with `to`, from inside `cgroup`.
fn echo(cgroup: &Cgroup, to: SocketAddr) -> Value {
    let mut cmd = cgroup.command(probe_binary());
    cmd.args(["echo", &to.to_string(), "16"]);
    run_probe(cmd)
}

/// The exchange succeeded through the agent (the upstream saw the agent, not the client).
fn redirected(r: &Value) -> bool {
    r["error"].is_null() && r["upstream_saw"] != r["local"]
}

/// The exchange succeeded straight to the upstream.
fn direct(r: &Value) -> bool {
    r["error"].is_null() && r["upstream_saw"] == r["local"]
}

/// Status line of a keyed GET sent from a probe in `cgroup` as `user`.
fn keyed_get(cgroup: &Cgroup, user: Option<(u32, u32)>, to: SocketAddr) -> String {
    let request = format!("GET /keyed/1 HTTP/1.1\r\nhost: api\r\nx-api-key: {API_KEY}\r\n\r\n");
    let report = send_raw_with(cgroup, user, to, request.as_bytes(), false);
    let text = report["response"].as_str().unwrap_or("");
    text.lines().next().unwrap_or("").to_string()
}

fn load_requests(upstream: &HttpUpstream) -> usize {
    upstream
        .requests()
        .iter()
        .filter(|r| r.target.starts_with("/load/"))
        .count()
}

/// IDs of the BPF links that hold any of `progs`.
fn links_of(progs: &[u64]) -> Vec<u64> {
    let out = Command::new("bpftool")
        .args(["-j", "link", "show"])
        .output()
        .expect("bpftool");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v.as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["prog_id"].as_u64().is_some_and(|p| progs.contains(&p)))
        .filter_map(|l| l["id"].as_u64())
        .collect()
}

/// Uninstall a stopped agent through its guard and prove with bpftool that nothing of ours is left.
fn assert_uninstall_leaves_nothing(agent: &Agent, cgroup: &Cgroup) {
    let progs = attached_program_ids(cgroup.path());
    assert_eq!(progs.len(), 5, "{progs:?}");
    let maps: Vec<u64> = progs.iter().flat_map(|&p| program_map_ids(p)).collect();
    let links = links_of(&progs);
    assert_eq!(links.len(), 5, "one link per program: {links:?}");

    let out = agent.uninstall();
    assert!(out.status.success(), "uninstall: {out:?}");
    assert_eq!(attached_program_ids(cgroup.path()), Vec::<u64>::new());
    assert!(
        !agent.pin_path().exists(),
        "{} left behind",
        agent.pin_path().display()
    );
    for (kind, ids) in [("link", &links), ("prog", &progs), ("map", &maps)] {
        for &id in ids {
            wait_for(&format!("{kind} {id} to be freed"), || {
                (!bpf_object_exists(kind, id)).then_some(())
            });
        }
    }
}

#[test]
fn kill_9_under_load_fails_closed_and_a_new_agent_resumes_with_its_state() {
    if !privileged() {
        return;
    }
    let upstream = HttpUpstream::start("127.0.0.1:0");
    let u = upstream.addr();
    let cgroup = Cgroup::new();
    let policy = http_policy(u);
    let mut first = Agent::start(&cgroup, &policy);
    assert_eq!(first.ready["adopted"], false, "{}", first.ready);
    let first_progs = attached_program_ids(cgroup.path());

    // The key binds to its first user (the probe as nobody); as root it is another caller.
    assert_eq!(keyed_get(&cgroup, NOBODY, u), "HTTP/1.1 200 OK");
    assert_eq!(keyed_get(&cgroup, None, u), "HTTP/1.1 403 Forbidden");

    // Load: one keep-alive client in the cgroup, reconnecting after every failure.
    let mut load = cgroup
        .command(probe_binary())
        .args(["get-loop", &u.to_string(), "/load/x"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the load");
    wait_for("load through the first agent", || {
        (load_requests(&upstream) >= 20).then_some(())
    });

    first.kill();
    // A request the dead agent had already forwarded may still be landing: its connections
    // closed with it, so once the upstream has read them to their end every such request is
    // counted.
    wait_for("the upstream to read the dead agent's connections", || {
        (upstream.open_connections() == 0).then_some(())
    });
    let at_kill = load_requests(&upstream);
    // Past the heartbeat's timeout: the programs now fail closed. Watched for a while: nothing
    // may arrive, however long the window.
    thread::sleep(Duration::from_millis(1300));
    assert_eq!(
        load_requests(&upstream),
        at_kill,
        "a request reached the upstream while no agent was ready"
    );
    assert_eq!(attached_program_ids(cgroup.path()), first_progs);

    let mut second = Agent::start(&cgroup, &policy);
    let start_to_ready = second.spawned.elapsed();
    eprintln!(
        "restart: spawn to ready {start_to_ready:?}, agent's own startup_ms {}",
        second.ready["startup_ms"]
    );
    assert_eq!(second.ready["adopted"], true, "{}", second.ready);
    // Enforcing at once, with the binding made before the kill.
    assert_eq!(keyed_get(&cgroup, None, u), "HTTP/1.1 403 Forbidden");
    assert_eq!(keyed_get(&cgroup, NOBODY, u), "HTTP/1.1 200 OK");
    wait_for("load through the new agent", || {
        (load_requests(&upstream) > at_kill + 40).then_some(())
    });

    // The programs were swapped in place: still five, none of the first agent's left.
    let progs = attached_program_ids(cgroup.path());
    assert_eq!(progs.len(), 5, "{progs:?}");
    assert!(
        progs.iter().all(|p| !first_progs.contains(p)),
        "{progs:?} vs {first_progs:?}"
    );

    let report: Value = {
        drop(load.stdin.take());
        let status = load.wait().expect("load ends");
        assert!(status.success(), "load: {status}");
        let mut out = String::new();
        std::io::Read::read_to_string(&mut load.stdout.take().unwrap(), &mut out).unwrap();
        serde_json::from_str(&out).unwrap_or_else(|_| panic!("load output: {out}"))
    };
    assert!(report["statuses"]["200"].as_u64().unwrap() > 40, "{report}");
    assert_eq!(
        report["statuses"].as_object().unwrap().len(),
        1,
        "only 200s: {report}"
    );
    assert!(report["failures"].as_u64().unwrap() > 0, "{report}");

    let (_, stopped) = second.stop();
    assert!(stopped["failed_closed"].as_u64().unwrap() > 0, "{stopped}");
    assert_eq!(stopped["failed_open"], 0, "{stopped}");
    assert_uninstall_leaves_nothing(&second, &cgroup);
}

#[test]
fn fail_open_connects_go_direct_until_a_new_agent_is_ready() {
    if !privileged() {
        return;
    }
    let upstream = Server::echo("127.0.0.1:0");
    let cgroup = Cgroup::new();
    let policy = tcp_policy(upstream.addr, "open");
    let echo = || echo(&cgroup, upstream.addr);
    let mut first = Agent::start(&cgroup, &policy);
    let r = echo();
    assert!(redirected(&r), "{r}");

    first.kill();
    let killed = Instant::now();
    // Within the heartbeat's timeout connects still meet the dead listener; then they go
    // straight to the upstream.
    let r = wait_for("a direct connect", || Some(echo()).filter(direct));
    eprintln!("fail open: direct {:?} after the kill", killed.elapsed());
    assert!(direct(&r), "{r}");

    let mut second = Agent::start(&cgroup, &policy);
    let r = echo();
    assert!(
        redirected(&r),
        "redirected again once the new agent is ready: {r}"
    );
    let (_, stopped) = second.stop();
    assert!(stopped["failed_open"].as_u64().unwrap() >= 1, "{stopped}");
    assert_eq!(stopped["failed_closed"], 0, "{stopped}");

    // Stopped (not killed): at once, no listener, connects go direct.
    let r = echo();
    assert!(direct(&r), "{r}");
    assert_uninstall_leaves_nothing(&second, &cgroup);
}

#[test]
fn a_second_agent_refuses_a_pin_path_in_use() {
    if !privileged() {
        return;
    }
    let upstream = Server::echo("127.0.0.1:0");
    let cgroup = Cgroup::new();
    let agent = Agent::start(&cgroup, &tcp_policy(upstream.addr, "closed"));
    let out = cgroup
        .command(enforcer_binary())
        .args(["run", "--policy"])
        .arg(agent.policy_file())
        .arg("--cgroup")
        .arg(cgroup.path())
        .args(["--listen", "127.0.0.1:0", "--state-dir"])
        .arg(cgroup_scoped_temp(&cgroup, "second-state"))
        .arg("--pin-path")
        .arg(agent.pin_path())
        .output()
        .expect("run a second agent");
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim(),
        format!(
            "enforcer: error: cannot attach: pin path {}: agent pid {} is running on it; stop \
             it first",
            agent.pin_path().display(),
            agent.pid()
        )
    );
    // And uninstall refuses too while the agent runs.
    let out = agent.uninstall();
    assert!(!out.status.success(), "{out:?}");
    assert!(agent.pin_path().exists());
}

/// Wait until every thread of the SIGSTOPped agent `pid` has stopped (so none can write
/// another heartbeat), then past the heartbeat's timeout (1 s): from then on its heartbeat is
/// stale, however slowly the stop was delivered.
fn wait_heartbeat_stale(pid: u32) {
    wait_for("every thread of the agent to stop", || {
        let tasks = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
        tasks
            .flatten()
            .all(|task| {
                let stat = fs::read_to_string(task.path().join("stat")).unwrap_or_default();
                // The state follows the parenthesised command name.
                stat.rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('T'))
            })
            .then_some(())
    });
    thread::sleep(Duration::from_millis(1200));
}

#[test]
fn a_hung_agent_counts_as_down() {
    if !privileged() {
        return;
    }
    let upstream = Server::echo("127.0.0.1:0");
    let cgroup = Cgroup::new();
    let agent = Agent::start(&cgroup, &tcp_policy(upstream.addr, "open"));
    let echo = || echo(&cgroup, upstream.addr);

    // SAFETY: plain syscalls on our own child.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGSTOP) };
    // Until its heartbeat is stale a connect would wait on the frozen agent: probe after.
    wait_heartbeat_stale(agent.pid());
    let r = echo();
    assert!(direct(&r), "a frozen agent is down: {r}");

    unsafe { libc::kill(agent.pid() as i32, libc::SIGCONT) };
    wait_for("redirects again once the agent runs", || {
        Some(echo()).filter(redirected)
    });
}

#[test]
fn pinned_maps_of_another_layout_are_recreated() {
    if !privileged() {
        return;
    }
    let upstream = Server::echo("127.0.0.1:0");
    let cgroup = Cgroup::new();
    let policy = tcp_policy(upstream.addr, "closed");
    let pins = agent_pin_path(&cgroup);
    let bpftool = |args: &[&str]| {
        let out = Command::new("bpftool")
            .args(args)
            .output()
            .expect("bpftool");
        assert!(out.status.success(), "bpftool {args:?}: {out:?}");
    };

    // A CONFIG map of another size, as an older agent might have left.
    fs::create_dir_all(pins.join("maps")).unwrap();
    let config = pins.join("maps/CONFIG");
    let config = config.to_str().unwrap();
    bpftool(&[
        "map", "create", config, "type", "array", "key", "4", "value", "8", "entries", "1", "name",
        "CONFIG",
    ]);
    let mut agent = Agent::start(&cgroup, &policy);
    assert_eq!(agent.ready["adopted"], false, "{}", agent.ready);
    assert!(
        agent
            .log_text()
            .contains("cannot reuse pinned map `CONFIG`"),
        "{}",
        agent.log_text()
    );
    let r = echo(&cgroup, upstream.addr);
    assert!(redirected(&r), "{r}");
    agent.stop();

    // Same sizes, another layout version (the first word of CONFIG).
    let mut value = vec!["0"; 48];
    value[0] = "1";
    let mut args = vec![
        "map", "update", "pinned", config, "key", "0", "0", "0", "0", "value",
    ];
    args.extend(value);
    bpftool(&args);
    let mut agent = Agent::start(&cgroup, &policy);
    assert_eq!(agent.ready["adopted"], false, "{}", agent.ready);
    assert!(
        agent.log_text().contains("another layout version"),
        "{}",
        agent.log_text()
    );
    let r = echo(&cgroup, upstream.addr);
    assert!(redirected(&r), "{r}");
    agent.stop();
    assert_uninstall_leaves_nothing(&agent, &cgroup);
}

#[test]
fn an_agent_on_another_cgroup_moves_the_programs_there() {
    if !privileged() {
        return;
    }
    let upstream = Server::echo("127.0.0.1:0");
    let policy = tcp_policy(upstream.addr, "closed");
    let old_cgroup = Cgroup::new();
    let mut first = Agent::start(&old_cgroup, &policy);
    first.stop();
    let pins = first.pin_path().to_str().unwrap().to_string();

    let cgroup = Cgroup::new();
    let second = Agent::start_with(&cgroup, &policy, &["--pin-path", &pins]);
    assert_eq!(second.ready["adopted"], true, "{}", second.ready);
    assert!(
        second.log_text().contains("moving to another cgroup"),
        "{}",
        second.log_text()
    );
    assert_eq!(attached_program_ids(old_cgroup.path()), Vec::<u64>::new());
    assert_eq!(attached_program_ids(cgroup.path()).len(), 5);
    assert!(direct(&echo(&old_cgroup, upstream.addr)));
    assert!(redirected(&echo(&cgroup, upstream.addr)));
}

#[test]
fn a_hung_agent_that_wakes_after_a_takeover_steps_aside() {
    if !privileged() {
        return;
    }
    let upstream = Server::echo("127.0.0.1:0");
    let cgroup = Cgroup::new();
    let policy = tcp_policy(upstream.addr, "closed");
    let mut first = Agent::start(&cgroup, &policy);
    // SAFETY: plain syscall on our own child.
    unsafe { libc::kill(first.pid() as i32, libc::SIGSTOP) };
    wait_heartbeat_stale(first.pid());
    // Its heartbeat is stale: a supervisor's new agent may take over.
    let second = Agent::start(&cgroup, &policy);
    assert_eq!(second.ready["adopted"], true, "{}", second.ready);

    unsafe { libc::kill(first.pid() as i32, libc::SIGCONT) };
    first.wait_event("the first agent to step aside", |e| {
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("another agent has taken over"))
    });
    let (status, _) = first.stop();
    assert!(!status.success(), "{status}");
    // The new agent's heartbeat was left alone.
    assert!(redirected(&echo(&cgroup, upstream.addr)));
}

/// A redirected connect that never establishes (the agent's accept queue is full while it is
/// stalled, and the client gives up) drops its record when it closes: a burst of them must not
/// linger in the LRU map, where it would push out other callers' pending records.
#[test]
fn connects_that_never_establish_leave_no_record() {
    if !privileged() {
        return;
    }
    const PENDING: usize = 64;
    let upstream = Server::echo("127.0.0.1:0");
    let cgroup = Cgroup::new();
    let agent = Agent::start(&cgroup, &tcp_policy(upstream.addr, "closed"));
    let mut probe = cgroup
        .command(probe_binary())
        .args([
            "syn-burst",
            &upstream.addr.to_string(),
            &PENDING.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start probe");
    // Stalled, the agent accepts nothing: its queue fills and later SYNs go unanswered. The
    // burst stops as soon as enough of them are, well before the heartbeat goes stale.
    // SAFETY: plain syscall on our own child.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGSTOP) };
    let mut stdin = probe.stdin.take().expect("probe stdin");
    stdin.write_all(b"go\n").expect("start the burst");
    let mut reports = BufReader::new(probe.stdout.take().expect("probe stdout"));
    let mut line = String::new();
    reports.read_line(&mut line).expect("probe report");
    let report: Value = serde_json::from_str(&line).expect("probe report");
    let records = cgroup_records(&agent);
    // Held, the unanswered connects keep their records: the map shows the burst reached it.
    let held = records();
    drop(stdin);
    let mut rest = String::new();
    reports.read_to_string(&mut rest).expect("probe output");
    let status = probe.wait().expect("probe");
    let deadline = Instant::now() + PATIENCE;
    let lingering = loop {
        let n = records();
        if n == 0 || Instant::now() > deadline {
            break n;
        }
        thread::sleep(Duration::from_millis(100));
    };
    // SAFETY: as above.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGCONT) };
    assert!(status.success(), "{status} {rest}");
    assert_eq!(
        report["pending"], PENDING,
        "the burst must reach the stalled agent, not be failed closed: {report}"
    );
    assert!(
        held >= PENDING,
        "{held} records for {PENDING} unanswered connects ({report})"
    );
    assert_eq!(lingering, 0, "records left by closed connects ({report})");
}

/// A counter of the entries in the agent's pinned cookie-keyed record map.
fn cgroup_records(agent: &Agent) -> impl Fn() -> usize {
    let map = agent.pin_path().join("maps/CONN_BY_COOKIE");
    move || {
        let out = Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned"])
            .arg(&map)
            .output()
            .expect("bpftool");
        assert!(out.status.success(), "bpftool map dump: {out:?}");
        let entries: Value = serde_json::from_slice(&out.stdout).expect("bpftool json");
        entries.as_array().map_or(0, Vec::len)
    }
}
