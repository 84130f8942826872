//! Protected destinations: every address a connect reaches a local service through is
//! protected, not only the one the policy names. Any-address forms (`0.0.0.0`, `::`,
//! `::ffff:0.0.0.0`), loopback aliases and the host's own addresses (in a network namespace
//! each test makes, never the machine's real ones), through the real redirect. Each attempt
//! must be decided and recorded, and nothing the policy does not allow may reach the upstream.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    thread,
};

use enforcer_tests::{
    Agent, Cgroup, HttpUpstream, cgroup_scoped_temp, privileged, probe_binary, send_raw_with,
    wait_for,
};
use serde_json::Value;

/// The conventional "nobody" ids.
const NOBODY: (u32, u32) = (65534, 65534);

/// A policy protecting `endpoint` as service `api`, where the probe (any user) may GET
/// `/allowed` and nothing else; decisions go to `audit`.
fn policy(endpoint: &str, audit: &Path) -> String {
    let probe = fs::canonicalize(probe_binary()).unwrap();
    format!(
        r#"version: 1
settings:
  audit:
    file: {audit}
identities:
  probe:
    exe: {probe}
services:
  api:
    endpoints: ["{endpoint}"]
rules:
  - id: probe-allowed
    from: [probe]
    to: api
    methods: [GET]
    paths: ["/allowed"]
"#,
        audit = audit.display(),
        probe = probe.display(),
    )
}

/// A running agent protecting `endpoint`, with its audit file.
struct Setup {
    cgroup: Cgroup,
    agent: Agent,
    audit: PathBuf,
}

impl Setup {
    fn start(endpoint: &str) -> Self {
        let cgroup = Cgroup::new();
        let audit = cgroup_scoped_temp(&cgroup, "audit.jsonl");
        let agent = Agent::start(&cgroup, &policy(endpoint, &audit));
        Self {
            cgroup,
            agent,
            audit,
        }
    }

    /// GET `path` from `to` as the probe (as root, or `user`): the status it got, 0 for none.
    fn get(&self, user: Option<(u32, u32)>, to: SocketAddr, path: &str) -> u16 {
        let request = format!("GET {path} HTTP/1.1\r\nhost: api\r\nconnection: close\r\n\r\n");
        let report = send_raw_with(&self.cgroup, user, to, request.as_bytes(), false);
        report["response"]
            .as_str()
            .and_then(|r| r.strip_prefix("HTTP/1.1 "))
            .and_then(|r| r.get(..3))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// The audit record of the request by `uid` for `path` to `to`, once written. Records
    /// name an IPv4-mapped destination in its IPv4 form.
    fn record(&self, uid: u32, to: SocketAddr, path: &str) -> Value {
        let to = match to {
            SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
                Some(v4) => SocketAddr::new(v4.into(), v6.port()),
                None => to,
            },
            v4 => v4,
        };
        wait_for(&format!("the audit record of {path} to {to}"), || {
            fs::read_to_string(&self.audit)
                .ok()?
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|r| {
                    r["path"] == path
                        && r["destination"] == to.to_string()
                        && r["caller"]["uid"] == uid
                })
        })
    }

    /// Send an allowed and a denied request to `to` as `user`; both must be decided for
    /// service `api` and recorded with the destination the client asked for.
    fn assert_decided(&self, user: Option<(u32, u32)>, to: SocketAddr) {
        assert_eq!(self.get(user, to, "/allowed"), 200, "GET /allowed to {to}");
        assert_eq!(self.get(user, to, "/denied"), 403, "GET /denied to {to}");
        let uid = user.map_or(0, |(uid, _)| uid);
        let allowed = self.record(uid, to, "/allowed");
        assert_eq!(allowed["decision"], "allow", "{allowed}");
        assert_eq!(allowed["service"], "api", "{allowed}");
        let denied = self.record(uid, to, "/denied");
        assert_eq!(denied["decision"], "deny", "{denied}");
        assert_eq!(denied["service"], "api", "{denied}");
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.audit);
    }
}

/// Only the allowed requests reached the upstream: `n` of them, each `GET /allowed`.
fn assert_only_allowed_reached(upstream: &HttpUpstream, n: usize) {
    let targets: Vec<String> = upstream
        .requests()
        .iter()
        .map(|r| r.target.clone())
        .collect();
    assert_eq!(targets, vec!["/allowed".to_string(); n], "{targets:?}");
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().unwrap()
}

#[test]
fn any_address_and_loopback_aliases_reach_a_service_protected_at_127_0_0_1() {
    if !privileged() {
        return;
    }
    // Bound to the wildcard: it answers at every local address.
    let upstream = HttpUpstream::start("0.0.0.0:0");
    let port = upstream.addr().port();
    let setup = Setup::start(&format!("127.0.0.1:{port}"));
    let tries = [
        addr("127.0.0.1", port),
        addr("0.0.0.0", port),
        addr("[::ffff:0.0.0.0]", port),
        addr("127.0.0.2", port),
        addr("127.255.1.9", port),
        addr("[::ffff:127.0.0.2]", port),
    ];
    for to in tries {
        setup.assert_decided(None, to);
    }
    assert_only_allowed_reached(&upstream, tries.len());

    // Another local port stays unprotected at every local address: reached directly, and
    // no record.
    let other = HttpUpstream::start("0.0.0.0:0");
    let to = addr("127.0.0.2", other.addr().port());
    assert_eq!(setup.get(None, to, "/denied"), 200, "GET /denied to {to}");
    assert_eq!(other.requests().len(), 1);
    assert_eq!(setup.get(None, addr("127.0.0.1", port), "/last"), 403);
    let last = setup.record(0, addr("127.0.0.1", port), "/last");
    assert!(
        !fs::read_to_string(&setup.audit)
            .unwrap()
            .contains(&to.to_string()),
        "a record for the unprotected {to}; last: {last}"
    );
}

#[test]
fn any_address_attempts_as_nobody_are_decided_too() {
    if !privileged() {
        return;
    }
    let upstream = HttpUpstream::start("0.0.0.0:0");
    let port = upstream.addr().port();
    let setup = Setup::start(&format!("127.0.0.1:{port}"));
    let tries = [
        addr("0.0.0.0", port),
        addr("[::ffff:0.0.0.0]", port),
        addr("127.0.0.3", port),
    ];
    for to in tries {
        setup.assert_decided(Some(NOBODY), to);
    }
    assert_only_allowed_reached(&upstream, tries.len());
}

#[test]
fn a_dual_stack_upstream_is_protected_at_every_local_address_of_both_families() {
    if !privileged() {
        return;
    }
    // `[::]` with IPV6_V6ONLY off (Linux's default): IPv4 and IPv6 at once.
    let upstream = HttpUpstream::start("[::]:0");
    let port = upstream.addr().port();
    for endpoint in [format!("[::1]:{port}"), format!("127.0.0.1:{port}")] {
        let before = upstream.requests().len();
        let setup = Setup::start(&endpoint);
        assert!(
            setup.agent.listen6.is_some(),
            "the agent needs its IPv6 listener here: {}",
            setup.agent.ready
        );
        let tries = [
            addr("[::]", port),
            addr("[::1]", port),
            addr("0.0.0.0", port),
            addr("127.0.0.1", port),
            addr("127.0.0.2", port),
        ];
        for to in tries {
            setup.assert_decided(None, to);
        }
        assert_eq!(
            upstream.requests().len(),
            before + tries.len(),
            "{endpoint}"
        );
    }
    assert_only_allowed_reached(&upstream, 10);
}

/// Run `ip` with `args` (in the calling thread's network namespace).
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {args:?}: {out:?}");
}

#[test]
fn host_addresses_reach_a_local_service_including_one_added_later() {
    if !privileged() {
        return;
    }
    // A network namespace of this test's own: its thread unshares it, so the agent, the
    // upstream and the clients started from here live in it, and it vanishes with them. The
    // machine's own interface addresses are never used.
    let body = thread::spawn(|| {
        // SAFETY: plain syscall; affects only this thread, which nothing else uses.
        assert_eq!(
            unsafe { libc::unshare(libc::CLONE_NEWNET) },
            0,
            "unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        );
        ip(&["link", "set", "lo", "up"]);
        // A bridge without ports stands in for a dummy interface (this kernel has no dummy
        // module): its addresses are the host's all the same.
        ip(&["link", "add", "enf0", "type", "bridge"]);
        ip(&["addr", "add", "10.200.0.1/24", "dev", "enf0"]);
        // No duplicate address detection: usable at once (a bridge without ports has no
        // carrier to detect on).
        ip(&["addr", "add", "fd00:200::1/64", "dev", "enf0", "nodad"]);
        ip(&["link", "set", "enf0", "up"]);

        // Dual-stack, so it answers at the IPv6 host address too.
        let upstream = HttpUpstream::start("[::]:0");
        let port = upstream.addr().port();
        let mut setup = Setup::start(&format!("127.0.0.1:{port}"));
        setup.assert_decided(None, addr("10.200.0.1", port));
        setup.assert_decided(Some(NOBODY), addr("10.200.0.1", port));
        setup.assert_decided(None, addr("[fd00:200::1]", port));

        // Added while the agent runs: the watcher must pick it up from the address event.
        ip(&["addr", "add", "198.18.0.1/15", "dev", "enf0"]);
        setup.agent.wait_event("the new host address", |e| {
            e["added"]
                .as_str()
                .is_some_and(|a| a.contains("198.18.0.1"))
        });
        setup.assert_decided(None, addr("198.18.0.1", port));

        // Removed: no longer this host's, so no longer looked up as a local service (the
        // connect then finds no route to it, or at least no listener).
        ip(&["addr", "del", "198.18.0.1/15", "dev", "enf0"]);
        setup.agent.wait_event("the removed host address", |e| {
            e["removed"]
                .as_str()
                .is_some_and(|a| a.contains("198.18.0.1"))
        });
        assert_only_allowed_reached(&upstream, 4);
    });
    if let Err(panic) = body.join() {
        std::panic::resume_unwind(panic);
    }
}
