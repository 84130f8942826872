//! The foundation, proven on this machine's kernel: each test makes its own cgroup, starts the
//! real agent inside it and attached to it, and runs real clients (curl, the Rust probe) there
//! against real upstreams outside it.

use std::{
    fs,
    net::{SocketAddr, TcpStream},
    path::Path,
    process::Command,
    time::Duration,
};

use enforcer_tests::{
    Agent, Cgroup, Server, attached_program_ids, bpf_object_exists, cgroup_scoped_temp,
    enforcer_binary, privileged, probe_binary, program_map_ids, run_probe, sha256_hex, wait_for,
};
use serde_json::Value;

/// A policy protecting `addrs` as one raw TCP service, `api`: these tests are about the
/// redirect and the relay, not HTTP.
fn policy(addrs: &[SocketAddr]) -> String {
    let endpoints: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "version: 1\nservices:\n  api:\n    protocol: tcp\n    endpoints: [{}]\n",
        endpoints.join(", ")
    )
}

/// Run the probe's echo exchange from inside `cgroup`, optionally as `(uid, gid)`.
fn probe_echo(cgroup: &Cgroup, user: Option<(u32, u32)>, to: SocketAddr, bytes: u64) -> Value {
    let mut cmd = cgroup.command_as(probe_binary(), user);
    cmd.args(["echo", &to.to_string(), &bytes.to_string()]);
    run_probe(cmd)
}

fn assert_redirected(report: &Value, to: SocketAddr) {
    assert_eq!(report["error"], Value::Null, "{report}");
    assert_ne!(
        report["upstream_saw"], report["local"],
        "the upstream saw the client itself: not redirected: {report}"
    );
    assert_eq!(
        report["peer"],
        to.to_string(),
        "getpeername must show the original destination: {report}"
    );
}

fn assert_direct(report: &Value) {
    assert_eq!(report["error"], Value::Null, "{report}");
    assert_eq!(
        report["upstream_saw"], report["local"],
        "the upstream did not see the client itself: redirected: {report}"
    );
}

#[test]
fn redirects_and_attests_the_callers_identity() {
    if !privileged() {
        return;
    }
    let upstream = Server::echo("127.0.0.1:0");
    let cgroup = Cgroup::new();
    let mut agent = Agent::start(&cgroup, &policy(&[upstream.addr]));

    let report = probe_echo(&cgroup, None, upstream.addr, 1024);
    assert_redirected(&report, upstream.addr);
    assert_eq!(report["intact"], true, "{report}");

    let event = agent.connection_event(report["local"].as_str().unwrap());
    let probe = fs::canonicalize(probe_binary()).unwrap();
    assert_eq!(event["tgid"], report["pid"], "{event}");
    assert_eq!(
        event["pid"], report["pid"],
        "single-threaded connect: {event}"
    );
    assert_eq!(event["uid"], 0, "{event}");
    assert_eq!(event["gid"], 0, "{event}");
    assert_eq!(event["user"], "root", "{event}");
    assert_eq!(event["comm"], "probe", "{event}");
    assert_eq!(event["cgroup_id"], cgroup.id(), "{event}");
    let cgroup_name = cgroup.path().file_name().unwrap().to_str().unwrap();
    assert_eq!(event["cgroup"], format!("/{cgroup_name}"), "{event}");
    assert_eq!(event["exe"], probe.to_str().unwrap(), "{event}");
    assert_eq!(event["sha256"], sha256_hex(&probe), "{event}");
    assert_eq!(event["destination"], upstream.addr.to_string(), "{event}");
    assert_eq!(event["service"], "api", "{event}");
}

#[test]
fn curl_is_redirected_and_attested() {
    if !privileged() {
        return;
    }
    let upstream = Server::http("127.0.0.1:0");
    let cgroup = Cgroup::new();
    let mut agent = Agent::start(&cgroup, &policy(&[upstream.addr]));

    let out = cgroup
        .command("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "-w",
            "\n%{local_ip}:%{local_port}",
        ])
        .arg(format!("http://{}/v1/anything", upstream.addr))
        .output()
        .expect("run curl");
    assert!(out.status.success(), "curl: {out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let (body, local) = stdout.rsplit_once('\n').unwrap();
    let upstream_saw = body.strip_prefix("peer=").expect("upstream body");
    assert_ne!(upstream_saw, local, "curl was not redirected");

    let event = agent.connection_event(local);
    let curl = fs::canonicalize(which("curl")).unwrap();
    assert_eq!(event["comm"], "curl", "{event}");
    assert_eq!(event["exe"], curl.to_str().unwrap(), "{event}");
    assert_eq!(event["sha256"], sha256_hex(&curl), "{event}");
    assert_eq!(event["cgroup_id"], cgroup.id(), "{event}");
}

#[test]
fn unprivileged_callers_are_attested_with_their_uid_and_gid() {
    if !privileged() {
        return;
    }
    // The conventional "nobody" ids.
    const NOBODY: (u32, u32) = (65534, 65534);
    let upstream = Server::echo("127.0.0.1:0");
    let cgroup = Cgroup::new();
    let mut agent = Agent::start(&cgroup, &policy(&[upstream.addr]));

    let report = probe_echo(&cgroup, Some(NOBODY), upstream.addr, 16);
    assert_redirected(&report, upstream.addr);
    let event = agent.connection_event(report["local"].as_str().unwrap());
    assert_eq!(event["uid"], NOBODY.0, "{event}");
    assert_eq!(event["gid"], NOBODY.1, "{event}");
    assert_eq!(event["user"], "nobody", "{event}");
    assert_eq!(event["tgid"], report["pid"], "{event}");
    assert_eq!(
        event["exe"],
        fs::canonicalize(probe_binary()).unwrap().to_str().unwrap(),
        "{event}"
    );
}

#[test]
fn clients_outside_the_cgroup_and_unprotected_destinations_are_untouched() {
    if !privileged() {
        return;
    }
    let protected = Server::echo("127.0.0.1:0");
    let unprotected = Server::echo("127.0.0.1:0");
    let cgroup = Cgroup::new();
    let mut agent = Agent::start(&cgroup, &policy(&[protected.addr]));

    // This test process is outside the cgroup: its connect to a protected destination is
    // not redirected.
    let outside = run_probe({
        let mut c = Command::new(probe_binary());
        c.args(["echo", &protected.addr.to_string(), "16"]);
        c
    });
    assert_direct(&outside);
    assert_eq!(outside["peer"], protected.addr.to_string());

    // Inside the cgroup, a connect to an unprotected destination is not redirected.
    let inside = probe_echo(&cgroup, None, unprotected.addr, 16);
    assert_direct(&inside);

    // And a control: the protected one inside is.
    assert_redirected(
        &probe_echo(&cgroup, None, protected.addr, 16),
        protected.addr,
    );

    let (status, stopped) = agent.stop();
    assert!(status.success(), "agent exit: {status}");
    assert_eq!(stopped["redirected"], 1, "{stopped}");
    assert!(stopped["passed"].as_u64().unwrap() >= 1, "{stopped}");
}

#[test]
fn ipv6_and_dual_stack_connects_are_redirected() {
    if !privileged() {
        return;
    }
    let upstream6 = Server::echo("[::1]:0");
    let upstream4 = Server::echo("127.0.0.1:0");
    let cgroup = Cgroup::new();
    let mut agent = Agent::start(&cgroup, &policy(&[upstream6.addr, upstream4.addr]));
    assert!(agent.listen6.is_some(), "agent has an IPv6 listener");

    let report = probe_echo(&cgroup, None, upstream6.addr, 4096);
    assert_redirected(&report, upstream6.addr);
    assert_eq!(report["intact"], true, "{report}");
    let event = agent.connection_event(report["local"].as_str().unwrap());
    assert_eq!(event["destination"], upstream6.addr.to_string(), "{event}");

    // An IPv6 socket calling an IPv4 destination in mapped form.
    let mapped: SocketAddr = format!("[::ffff:127.0.0.1]:{}", upstream4.addr.port())
        .parse()
        .unwrap();
    let report = probe_echo(&cgroup, None, mapped, 4096);
    assert_redirected(&report, mapped);
    assert_eq!(report["intact"], true, "{report}");
}

#[test]
fn the_agents_own_upstream_connects_are_not_redirected() {
    if !privileged() {
        return;
    }
    // The agent runs inside the cgroup it attaches to (as it does on the whole host): its
    // connect to the original destination hits connect4 and must pass.
    let upstream = Server::echo("127.0.0.1:0");
    let cgroup = Cgroup::new();
    let mut agent = Agent::start(&cgroup, &policy(&[upstream.addr]));
    let agent_pid = agent.pid();
    let procs = fs::read_to_string(cgroup.path().join("cgroup.procs")).unwrap();
    assert!(
        procs.lines().any(|l| l.trim() == agent_pid.to_string()),
        "agent runs in the cgroup"
    );

    let report = probe_echo(&cgroup, None, upstream.addr, 64);
    assert_redirected(&report, upstream.addr);
    assert_eq!(report["intact"], true, "{report}");
    // Exactly one connection reached the upstream: the agent's, not a loop back to itself.
    assert_eq!(upstream.peers().len(), 1, "{:?}", upstream.peers());

    let (_, stopped) = agent.stop();
    assert_eq!(stopped["agent_passed"], 1, "{stopped}");
    assert_eq!(stopped["redirected"], 1, "{stopped}");
}

#[test]
fn the_protected_destinations_follow_policy_reloads() {
    if !privileged() {
        return;
    }
    let first = Server::echo("127.0.0.1:0");
    let second = Server::echo("127.0.0.1:0");
    let cgroup = Cgroup::new();
    let mut agent = Agent::start(&cgroup, &policy(&[first.addr]));
    assert_redirected(&probe_echo(&cgroup, None, first.addr, 16), first.addr);
    assert_direct(&probe_echo(&cgroup, None, second.addr, 16));

    // Protect the second instead of the first.
    fs::write(agent.policy_file(), policy(&[second.addr])).unwrap();
    agent.wait_event("policy reloaded", |e| e["event"] == "policy_reloaded");
    assert_redirected(&probe_echo(&cgroup, None, second.addr, 16), second.addr);
    assert_direct(&probe_echo(&cgroup, None, first.addr, 16));
}

#[test]
fn a_64_mib_transfer_each_way_arrives_intact_with_half_close() {
    if !privileged() {
        return;
    }
    const BYTES: u64 = 64 * 1024 * 1024;
    let upstream = Server::echo("127.0.0.1:0");
    let cgroup = Cgroup::new();
    let _agent = Agent::start(&cgroup, &policy(&[upstream.addr]));

    // The probe half-closes after sending; the echo server answers EOF with its own only after
    // echoing everything, so the exchange completes only if half-close crosses the relay.
    let report = probe_echo(&cgroup, None, upstream.addr, BYTES);
    assert_redirected(&report, upstream.addr);
    assert_eq!(report["sent"], BYTES, "{report}");
    assert_eq!(report["received"], BYTES, "{report}");
    assert_eq!(report["intact"], true, "{report}");
}

#[test]
fn an_unreachable_destination_resets_the_client() {
    if !privileged() {
        return;
    }
    // A port nothing listens on: take one from the OS and close it.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let cgroup = Cgroup::new();
    let mut agent = Agent::start(&cgroup, &policy(&[closed]));

    let report = probe_echo(&cgroup, None, closed, 16);
    assert_eq!(report["error"], "ConnectionReset", "{report}");
    let (_, stopped) = agent.stop();
    assert_eq!(stopped["upstream_failed"], 1, "{stopped}");
}

#[test]
fn a_connection_without_a_kernel_record_is_reset_and_counted() {
    if !privileged() {
        return;
    }
    let upstream = Server::echo("127.0.0.1:0");
    let cgroup = Cgroup::new();
    let mut agent = Agent::start(&cgroup, &policy(&[upstream.addr]));

    // This process is outside the cgroup: it reaches the listener directly, with no record.
    let mut s = TcpStream::connect(agent.listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let err = std::io::Read::read(&mut s, &mut [0u8; 16]).expect_err("reset");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    assert!(upstream.peers().is_empty(), "nothing reached the upstream");

    let (_, stopped) = agent.stop();
    assert_eq!(stopped["no_record"], 1, "{stopped}");
    assert_eq!(stopped["accepted"], 0, "{stopped}");
}

#[test]
fn stopping_keeps_enforcing_and_uninstall_leaves_nothing() {
    if !privileged() {
        return;
    }
    let upstream = Server::echo("127.0.0.1:0");
    let cgroup = Cgroup::new();
    let mut agent = Agent::start(&cgroup, &policy(&[upstream.addr]));
    let progs = attached_program_ids(cgroup.path());
    assert_eq!(
        progs.len(),
        5,
        "connect4/6, getpeername4/6, sock_ops: {progs:?}"
    );
    let maps: Vec<u64> = progs.iter().flat_map(|&p| program_map_ids(p)).collect();
    assert!(!maps.is_empty());

    // Stopped, the agent leaves its programs attached: the destination fails closed.
    let (status, _) = agent.stop();
    assert!(status.success(), "agent exit: {status}");
    assert_eq!(attached_program_ids(cgroup.path()), progs);
    let refused = probe_echo(&cgroup, None, upstream.addr, 16);
    assert_eq!(refused["error"], "ConnectionRefused", "{refused}");
    assert!(upstream.peers().is_empty(), "nothing reached the upstream");

    let out = agent.uninstall();
    assert!(out.status.success(), "uninstall: {out:?}");
    assert_eq!(attached_program_ids(cgroup.path()), Vec::<u64>::new());
    assert!(
        !agent.pin_path().exists(),
        "{} left behind",
        agent.pin_path().display()
    );
    for id in progs {
        wait_for(&format!("program {id} to be freed"), || {
            (!bpf_object_exists("prog", id)).then_some(())
        });
    }
    for id in maps {
        wait_for(&format!("map {id} to be freed"), || {
            (!bpf_object_exists("map", id)).then_some(())
        });
    }
    // And the redirect is gone: a connect from the cgroup now goes direct.
    assert_direct(&probe_echo(&cgroup, None, upstream.addr, 16));
}

#[test]
fn a_failing_test_still_removes_its_cgroup_and_detaches() {
    if !privileged() {
        return;
    }
    let upstream = Server::echo("127.0.0.1:0");
    let mut seen = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let cgroup = Cgroup::new();
        let agent = Agent::start(&cgroup, &policy(&[upstream.addr]));
        seen = Some((
            cgroup.path().to_path_buf(),
            attached_program_ids(cgroup.path()),
            agent.pin_path().to_path_buf(),
        ));
        panic!("deliberate failure");
    }));
    assert!(result.is_err());
    let (path, progs, pins) = seen.expect("the test got as far as attaching");
    assert_eq!(progs.len(), 5);
    assert!(!path.exists(), "{} left behind", path.display());
    assert!(!pins.exists(), "{} left behind", pins.display());
    for id in progs {
        wait_for(&format!("program {id} to be freed"), || {
            (!bpf_object_exists("prog", id)).then_some(())
        });
    }
}

// === start-up errors: one clear line, non-zero exit ===

/// Run `enforcer run` with `args` (and `as_user`), expecting it to fail at start.
fn start_error(args: &[&str], as_user: Option<(u32, u32)>) -> String {
    let cgroup = Cgroup::new(); // only to run the command in; not attached
    let out = cgroup
        .command_as(enforcer_binary(), as_user)
        .arg("run")
        .args(args)
        .output()
        .expect("run enforcer");
    assert!(!out.status.success(), "expected failure: {out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr, got: {stderr}");
    lines[0].to_string()
}

#[test]
fn start_up_errors_are_one_clear_line() {
    if !privileged() {
        return;
    }
    let cgroup = Cgroup::new();
    let cg = cgroup.path().to_str().unwrap().to_string();
    let file = |name: &str, text: &str| {
        let p = cgroup_scoped_temp(&cgroup, name);
        fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let good = file("good.yaml", &policy(&["127.0.0.1:9".parse().unwrap()]));
    let empty = file("empty.yaml", "version: 1\nservices: {}\n");
    let bad_port = file(
        "bad.yaml",
        "version: 1\nservices:\n  api:\n    endpoints: [\"10.0.0.1:http\"]\n",
    );
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();

    // (arguments, run as (uid, gid), the one line expected)
    type Case<'a> = (Vec<&'a str>, Option<(u32, u32)>, String);
    let cases: Vec<Case> = vec![
        (
            vec!["--policy", &empty, "--cgroup", &cg],
            None,
            format!("enforcer: error: {empty}:2:11: no protected destination: `services` is empty"),
        ),
        (
            vec!["--policy", &bad_port, "--cgroup", &cg],
            None,
            format!(
                "enforcer: error: {bad_port}:4:17: invalid endpoint `10.0.0.1:http`: \
                 `http` is not a port (1-65535)"
            ),
        ),
        (
            vec!["--policy", "/nonexistent/policy.yaml", "--cgroup", &cg],
            None,
            "enforcer: error: policy /nonexistent/policy.yaml: cannot read: No such file or \
             directory (os error 2)"
                .to_string(),
        ),
        (
            vec![
                "--policy",
                &good,
                "--cgroup",
                "/sys/fs/cgroup/no-such-cgroup",
                "--listen",
                "127.0.0.1:0",
            ],
            None,
            "enforcer: error: cannot attach: cgroup /sys/fs/cgroup/no-such-cgroup: cannot open: \
             No such file or directory (os error 2)"
                .to_string(),
        ),
        (
            vec!["--policy", &good, "--cgroup", &cg, "--listen", &busy_addr],
            None,
            format!(
                "enforcer: error: cannot listen on {busy_addr}: Address already in use (os error 98)"
            ),
        ),
        (
            vec![
                "--policy",
                &good,
                "--cgroup",
                &cg,
                "--listen",
                "127.0.0.1:0",
            ],
            Some((65534, 65534)),
            "enforcer: error: cannot attach: missing capabilities CAP_NET_ADMIN, CAP_SYS_PTRACE, \
             CAP_DAC_READ_SEARCH, CAP_PERFMON, CAP_BPF (run as root, or grant them)"
                .to_string(),
        ),
    ];
    for (args, user, want) in cases {
        assert_eq!(start_error(&args, user), want, "args {args:?}");
    }
    assert_eq!(attached_program_ids(cgroup.path()), Vec::<u64>::new());
}

fn which(program: &str) -> std::path::PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(program))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| Path::new("/usr/bin").join(program))
}
