//! Caller attestation through the real redirect, attacked as issue 10 did: an exec after the
//! connect, a bind mount over the allowed path in a private mount namespace, a record made in
//! a private network namespace, a traced caller, and the first use of a big binary. Each
//! asserts what reached the upstream (nothing, for an attack) and the audit record written.

use std::{
    fs,
    io::Write as _,
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Stdio,
    thread,
};

use enforcer_tests::{
    Agent, Cgroup, HttpUpstream, cgroup_scoped_temp, metric_value, privileged, probe_binary,
    sha256_hex, wait_for,
};
use serde_json::Value;

const NOBODY: Option<(u32, u32)> = Some((65534, 65534));
/// A protected address no test host routes to: only the kernel's verdict decides its fate.
const UNROUTED: &str = "192.0.2.1:80";

/// The real probe, as the policy names it.
fn probe() -> PathBuf {
    fs::canonicalize(probe_binary()).unwrap()
}

/// `exe-probe` is the probe by path, `sha-probe` by digest, `untraced-probe` by path when not
/// traced; `/v1/path/*`, `/v1/sha/*`, `/v1/untraced/*` are allowed to each.
fn policy(upstream: SocketAddr, audit: &Path, extra: &str) -> String {
    let probe = probe();
    format!(
        r#"version: 1
settings:
  audit: {{file: {audit}}}
identities:
  exe-probe: {{exe: {probe}}}
  sha-probe: {{sha256: {sha}}}
  untraced-probe: {{exe: {probe}, traced: false}}
{extra}
services:
  api:
    endpoints: ["{upstream}"]
  unrouted:
    endpoints: ["{UNROUTED}"]
rules:
  - id: by-path
    from: [exe-probe]
    to: api
    methods: [GET]
    paths: ["/v1/path/*"]
  - id: by-sha
    from: [sha-probe]
    to: api
    methods: [GET]
    paths: ["/v1/sha/*"]
  - id: untraced
    from: [untraced-probe]
    to: api
    methods: [GET]
    paths: ["/v1/untraced/*"]
"#,
        audit = audit.display(),
        probe = probe.display(),
        sha = sha256_hex(&probe),
    )
}

struct Setup {
    cgroup: Cgroup,
    upstream: HttpUpstream,
    audit: PathBuf,
    agent: Agent,
}

impl Setup {
    fn start(extra_identities: &str) -> Self {
        Self::start_with(extra_identities, "")
    }

    /// [`Setup::start`] with `extra_rules` after the policy's rules.
    fn start_with(extra_identities: &str, extra_rules: &str) -> Self {
        let upstream = HttpUpstream::start("127.0.0.1:0");
        let cgroup = Cgroup::new();
        let audit = cgroup_scoped_temp(&cgroup, "audit.jsonl");
        let text = policy(upstream.addr(), &audit, extra_identities) + extra_rules;
        let agent = Agent::start(&cgroup, &text);
        Self {
            cgroup,
            upstream,
            audit,
            agent,
        }
    }

    /// Run `program args` in the cgroup as `user` with `request` on stdin; its JSON report.
    fn run(&self, user: Option<(u32, u32)>, program: &Path, args: &[&str], request: &str) -> Value {
        let mut child = self
            .cgroup
            .command_as(program, user)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn client");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(request.as_bytes())
            .unwrap();
        let out = child.wait_with_output().expect("client");
        assert!(out.status.success(), "client {args:?} failed: {out:?}");
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("client output ({e}): {out:?}"))
    }

    /// Requests the upstream received for paths starting with `prefix`.
    fn reached(&self, prefix: &str) -> usize {
        self.upstream
            .requests()
            .iter()
            .filter(|r| r.target.starts_with(prefix))
            .count()
    }

    /// The decision record of the request for `path`, once written.
    fn record(&self, path: &str) -> Value {
        wait_for(&format!("the audit record of {path}"), || {
            records(&self.audit).into_iter().find(|r| r["path"] == path)
        })
    }
}

fn records(audit: &Path) -> Vec<Value> {
    fs::read_to_string(audit)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["record"] != "anomaly")
        .collect()
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: api\r\nconnection: close\r\n\r\n")
}

fn status(report: &Value) -> &str {
    let text = report["response"].as_str().unwrap_or("");
    text.lines().next().unwrap_or("")
}

/// A copy of `from` at `to` with `pad` bytes appended: it runs like `from` but is another
/// file with another digest.
fn padded_copy(from: &Path, to: &Path, pad: usize) {
    let mut bytes = fs::read(from).unwrap();
    bytes.resize(bytes.len() + pad, 0xa5);
    fs::write(to, bytes).unwrap();
    fs::set_permissions(to, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Removes a file a test made, when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

#[test]
fn an_exec_after_connect_does_not_inherit_the_identity() {
    if !privileged() {
        return;
    }
    let s = Setup::start("");
    let upstream = s.upstream.addr().to_string();
    let probe = probe();
    // The attacker: any other binary (here a padded copy of the probe, which no identity names).
    let evil = TempFile(cgroup_scoped_temp(&s.cgroup, "evil"));
    padded_copy(&probe, &evil.0, 1);

    let ok = s.run(None, &probe, &["send", &upstream], &get("/v1/path/control"));
    assert!(status(&ok).starts_with("HTTP/1.1 200 "), "{ok}");

    const TRIES: usize = 20;
    let mut exec_after_connect = 0;
    for how in ["fork", "self"] {
        for i in 0..TRIES {
            let path = format!("/v1/path/{how}-{i}");
            let probe_arg = probe.to_str().unwrap();
            let r = s.run(
                None,
                &evil.0,
                &["exec-after-connect", &upstream, how, probe_arg],
                &get(&path),
            );
            assert!(status(&r).starts_with("HTTP/1.1 403 "), "{how} {i}: {r}");
            let record = s.record(&path);
            assert_eq!(record["decision"], "deny", "{record}");
            // Resolved before the exec: the connecting image, which no identity names. After
            // it: no identity at all.
            if record["reason"] == "exec after connect" {
                assert_eq!(
                    record["caller"]["unresolved"], "exec_after_connect",
                    "{record}"
                );
                assert!(record["caller"]["exe"].is_null(), "{record}");
                exec_after_connect += 1;
            } else {
                assert_eq!(record["reason"], "no matching rule", "{record}");
                assert_eq!(
                    record["caller"]["exe"],
                    evil.0.to_str().unwrap(),
                    "{record}"
                );
            }
        }
    }
    assert_eq!(s.reached("/v1/path/fork-") + s.reached("/v1/path/self-"), 0);
    eprintln!(
        "{exec_after_connect} of {} tries resolved after the exec",
        2 * TRIES
    );
    if exec_after_connect > 0 {
        let series =
            r#"enforcer_anomalies_total{identity="unidentified",kind="exec_after_connect"}"#;
        wait_for("the exec_after_connect anomaly to be counted", || {
            metric_value(&s.agent.scrape(), series).filter(|&n| n >= 1.0)
        });
    }
}

#[test]
fn a_process_identified_once_is_resolved_again_after_an_exec() {
    if !privileged() {
        return;
    }
    let bash = fs::canonicalize("/bin/bash").unwrap();
    let s = Setup::start_with(
        &format!("  shell: {{exe: {}}}", bash.display()),
        "  - id: shell\n    from: [shell]\n    to: api\n    methods: [GET]\n    paths: [\"/v1/path/*\"]\n",
    );
    let evil = TempFile(cgroup_scoped_temp(&s.cgroup, "evil"));
    padded_copy(&probe(), &evil.0, 1);
    let (ip, port) = (s.upstream.addr().ip(), s.upstream.addr().port());
    // bash connects itself (/dev/tcp) and is allowed; then the same process (same pid, same
    // start time) execs another binary, which connects anew.
    let script = format!(
        "exec 3<>/dev/tcp/{ip}/{port}; printf 'GET /v1/path/shell HTTP/1.1\\r\\nhost: api\\r\\n\
         connection: close\\r\\n\\r\\n' >&3; cat <&3 >/dev/null; exec 3>&-; \
         exec {} send {ip}:{port}",
        evil.0.display()
    );
    let r = s.run(None, &bash, &["-c", &script], &get("/v1/path/after-exec"));
    assert!(status(&r).starts_with("HTTP/1.1 403 "), "{r}");
    let first = s.record("/v1/path/shell");
    let second = s.record("/v1/path/after-exec");
    assert_eq!(first["decision"], "allow", "{first}");
    assert_eq!(
        second["caller"]["tgid"], first["caller"]["tgid"],
        "one process"
    );
    assert_eq!(
        second["caller"]["exe"],
        evil.0.to_str().unwrap(),
        "{second}"
    );
    assert_eq!(second["reason"], "no matching rule", "{second}");
    assert_eq!(s.reached("/v1/path/after-exec"), 0);
}

#[test]
fn a_bind_mount_over_the_allowed_path_is_not_believed() {
    if !privileged() {
        return;
    }
    let s = Setup::start("");
    let upstream = s.upstream.addr().to_string();
    let probe = probe();
    let evil = TempFile(cgroup_scoped_temp(&s.cgroup, "evil"));
    padded_copy(&probe, &evil.0, 1);
    let decoy = TempFile(cgroup_scoped_temp(&s.cgroup, "decoy"));
    padded_copy(&probe, &decoy.0, 2);
    let unshare = Path::new("/usr/bin/unshare");

    // As nobody, in a user + mount namespace: `over` is mounted over `at`, then `at` runs.
    let run_over = |over: &Path, at: &Path, path: &str| {
        let script = format!(
            "mount --bind {} {} && exec {} send {upstream}",
            over.display(),
            at.display(),
            at.display()
        );
        s.run(NOBODY, unshare, &["-Urm", "sh", "-c", &script], &get(path))
    };

    // Another binary over the allowed path: by path, refused and audited as untrusted.
    let r = run_over(&evil.0, &probe, "/v1/path/bind");
    assert!(status(&r).starts_with("HTTP/1.1 403 "), "{r}");
    let record = s.record("/v1/path/bind");
    assert_eq!(record["reason"], "no matching rule", "{record}");
    assert!(record["caller"]["exe"].is_null(), "{record}");
    assert_eq!(
        record["caller"]["exe_untrusted"],
        probe.to_str().unwrap(),
        "{record}"
    );
    assert_eq!(record["caller"]["sha256"], sha256_hex(&evil.0), "{record}");
    let r = run_over(&evil.0, &probe, "/v1/sha/bind");
    assert!(status(&r).starts_with("HTTP/1.1 403 "), "{r}");

    // The real probe seen under another path: the path is not believed, the digest holds.
    let r = run_over(&probe, &decoy.0, "/v1/sha/real");
    assert!(status(&r).starts_with("HTTP/1.1 200 "), "{r}");
    let record = s.record("/v1/sha/real");
    assert_eq!(
        record["caller"]["exe_untrusted"],
        decoy.0.to_str().unwrap(),
        "{record}"
    );
    assert_eq!(record["rule"], "by-sha", "{record}");

    assert_eq!(s.reached("/v1/path/"), 0);
    assert_eq!(s.reached("/v1/sha/"), 1);
}

#[test]
fn a_record_from_another_network_namespace_is_never_taken() {
    if !privileged() {
        return;
    }
    let s = Setup::start("");
    let agent_port = s.agent.listen.port();
    let upstream = s.upstream.addr();
    // A local port no one holds, for the namespace's connect and then the host's.
    let local_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kernel = |result: &str| {
        let series = format!(r#"enforcer_kernel_connects_total{{result="{result}"}}"#);
        metric_value(&s.agent.scrape(), &series).unwrap_or(0.0)
    };
    let foreign_before = kernel("foreign_netns");

    for user in [NOBODY, None] {
        // In a private network namespace: a fake listener on the agent's port, then the allowed
        // binary's connect from the chosen port, to the protected upstream and to an address
        // that would leave the namespace.
        let script = format!(
            "ip link set lo up && exec {probe} netns-attempt {upstream} {agent_port} {local_port} {UNROUTED}",
            probe = probe().display(),
        );
        let r = s.run(
            user,
            Path::new("/usr/bin/unshare"),
            &["-Urn", "sh", "-c", &script],
            "",
        );
        // The namespace's own loopback: untouched, so its (absent) upstream refuses, and the
        // fake listener was never reached.
        assert_eq!(r["loopback"], "ConnectionRefused", "{r}");
        assert_eq!(r["fake_listener_accepted"], false, "{r}");
        // Toward an address outside the namespace: refused by the kernel (EPERM).
        assert_eq!(r["routed"], "PermissionDenied", "{r}");

        // The host namespace, from the same address and port, straight to the agent.
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_reuse_address(true).unwrap();
        let from: SocketAddr = format!("127.0.0.1:{local_port}").parse().unwrap();
        socket.bind(&from.into()).unwrap();
        let to: SocketAddr = s.agent.listen;
        socket.connect(&to.into()).unwrap();
        let mut stream: TcpStream = socket.into();
        let _ = stream.write_all(get("/v1/path/netns").as_bytes());
        let mut response = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stream, &mut response);
        assert!(
            !String::from_utf8_lossy(&response).contains("200"),
            "{}",
            String::from_utf8_lossy(&response)
        );
    }
    wait_for("two connections without a record to be refused", || {
        let series = r#"enforcer_connections_rejected_total{reason="no_record"}"#;
        metric_value(&s.agent.scrape(), series).filter(|&n| n >= 2.0)
    });
    assert!(kernel("foreign_netns") >= foreign_before + 2.0);
    assert_eq!(s.reached("/"), 0);
    assert!(
        records(&s.audit)
            .iter()
            .all(|r| r["path"] != "/v1/path/netns")
    );
}

#[test]
fn a_traced_caller_is_refused_where_the_policy_says_so() {
    if !privileged() {
        return;
    }
    let s = Setup::start("");
    let upstream = s.upstream.addr().to_string();
    let probe = probe();
    let probe_arg = probe.to_str().unwrap();

    let r = s.run(
        None,
        &probe,
        &["send", &upstream],
        &get("/v1/untraced/plain"),
    );
    assert!(status(&r).starts_with("HTTP/1.1 200 "), "{r}");
    assert_eq!(s.record("/v1/untraced/plain")["caller"]["traced"], false);

    // Under strace (ptrace), with its output out of the way of the report.
    let strace = Path::new("/usr/bin/strace");
    let args = ["-f", "-o", "/dev/null", probe_arg, "send", &upstream];
    let r = s.run(None, strace, &args, &get("/v1/untraced/traced"));
    assert!(status(&r).starts_with("HTTP/1.1 403 "), "{r}");
    let record = s.record("/v1/untraced/traced");
    assert_eq!(record["reason"], "no matching rule", "{record}");
    assert_eq!(record["caller"]["traced"], true, "{record}");
    // Identities that do not mind tracing still match it.
    let r = s.run(None, strace, &args, &get("/v1/path/traced"));
    assert!(status(&r).starts_with("HTTP/1.1 200 "), "{r}");
    assert_eq!(s.reached("/v1/untraced/traced"), 0);
}

/// An agent whose policy names, beside the others, `big` (a fresh 100 MB binary) by digest
/// for `/v1/big/*`, with `limits`; and that binary.
fn big_binary_setup(limits: &str) -> (Setup, TempFile) {
    let cgroup = Cgroup::new();
    let big = TempFile(cgroup_scoped_temp(&cgroup, "big-probe"));
    padded_copy(&probe(), &big.0, 100 << 20);
    let extra = format!("  big: {{sha256: {}}}", sha256_hex(&big.0));
    let upstream = HttpUpstream::start("127.0.0.1:0");
    let audit = cgroup_scoped_temp(&cgroup, "audit.jsonl");
    let text = policy(upstream.addr(), &audit, &extra)
        .replace("settings:\n", &format!("settings:\n  limits: {limits}\n"))
        .replace(
            "rules:\n",
            "rules:\n  - id: big\n    from: [big]\n    to: api\n    methods: [GET]\n    \
             paths: [\"/v1/big/*\"]\n",
        );
    let agent = Agent::start(&cgroup, &text);
    let s = Setup {
        cgroup,
        upstream,
        audit,
        agent,
    };
    (s, big)
}

#[test]
fn parallel_first_connections_of_a_big_binary_all_get_its_identity() {
    if !privileged() {
        return;
    }
    // Room for a debug build's hash on a busy machine: the bound is tested below.
    let (s, big) = big_binary_setup("{hashTimeout: 5m}");
    let to = s.upstream.addr().to_string();
    let reports: Vec<Value> = thread::scope(|scope| {
        let handles: Vec<_> = (0..32)
            .map(|i| {
                let (s, big, to) = (&s, &big.0, &to);
                scope.spawn(move || s.run(None, big, &["send", to], &get(&format!("/v1/big/{i}"))))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &reports {
        assert!(status(r).starts_with("HTTP/1.1 200 "), "{r}");
    }
    for i in 0..32 {
        let record = s.record(&format!("/v1/big/{i}"));
        assert_eq!(record["rule"], "big", "{record}");
        assert!(record["caller"]["unresolved"].is_null(), "{record}");
    }
    assert_eq!(s.reached("/v1/big/"), 32);
}

#[test]
fn a_hash_not_ready_in_time_is_decided_without_the_digest() {
    if !privileged() {
        return;
    }
    // No 100 MB hash completes in a millisecond.
    let (s, big) = big_binary_setup("{hashTimeout: 1ms}");
    let to = s.upstream.addr().to_string();
    let r = s.run(None, &big.0, &["send", &to], &get("/v1/big/first"));
    assert!(status(&r).starts_with("HTTP/1.1 403 "), "{r}");
    let record = s.record("/v1/big/first");
    assert_eq!(record["reason"], "no matching rule", "{record}");
    assert_eq!(record["caller"]["unresolved"], "hash_timeout", "{record}");
    assert!(record["caller"]["sha256"].is_null(), "{record}");
    assert_eq!(record["caller"]["exe"], big.0.to_str().unwrap(), "{record}");
    // The hash went on: a later connection is identified by it.
    let mut n = 0;
    wait_for("a later connection of the binary to be identified", || {
        n += 1;
        let path = format!("/v1/big/later-{n}");
        let r = s.run(None, &big.0, &["send", &to], &get(&path));
        status(&r).starts_with("HTTP/1.1 200 ").then_some(())
    });
    assert_eq!(s.reached("/v1/big/first"), 0);
}

#[test]
fn a_caller_gone_before_its_hash_is_still_attributed_to_its_binary() {
    if !privileged() {
        return;
    }
    let (s, big) = big_binary_setup("{hashTimeout: 5m}");
    let to = s.upstream.addr().to_string();
    let mut caller = s
        .cgroup
        .command(&big.0)
        .args(["send-and-exit", &to, "/v1/big/gone"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn caller");
    // Once the agent holds the binary open (it hashes it through that descriptor), the caller
    // exits without waiting for its answer.
    let agent_fds = format!("/proc/{}/fd", s.agent.pid());
    wait_for("the agent to open the caller's executable", || {
        fs::read_dir(&agent_fds)
            .ok()?
            .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
            .any(|target| target == big.0)
            .then_some(())
    });
    drop(caller.stdin.take());
    assert!(caller.wait().unwrap().success());
    let record = s.record("/v1/big/gone");
    assert_eq!(record["rule"], "big", "{record}");
    assert_eq!(record["caller"]["sha256"], sha256_hex(&big.0), "{record}");
    assert!(record["caller"]["unresolved"].is_null(), "{record}");
    assert_eq!(s.reached("/v1/big/gone"), 1);
}
