//! Evasions through the real kernel redirect, each tried as a process in the enforced cgroup
//! would: an upstream's 101 to a request that did not ask to upgrade (it must not open a
//! tunnel), look-alikes of the headers and query parameters a rule constrains, method- and
//! URL-override headers, `Host` values a rule's `hosts` or the destination refuse, and one
//! identity holding connections under the default per-identity cap. Each asserts the exact
//! audit reason and that nothing refused reached the upstream (counted there).

use std::{
    fs,
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    path::Path,
    process::{Child, Stdio},
};

use enforcer_tests::{
    Agent, Cgroup, HttpUpstream, cgroup_scoped_temp, privileged, probe_binary, send_raw,
    send_raw_with, wait_for,
};
use serde_json::{Value, json};

/// Callers are told apart by their systemd unit. `limits` goes under `settings.limits`.
/// Rules, all for `attacker` (and `reads` also for `other`):
/// - `reads`: GET `/status/*` and `/v1/items/**`;
/// - `ws`: GET `/ws`, upgradable to WebSocket;
/// - `export`: GET `/v1/export` with `x-tenant: acme` and `format=json`;
/// - `legacy`: GET or POST `/v1/legacy/**`, which may carry `x-http-method-override`;
/// - `vhost`: GET `/vhost/**` for the hosts `api.example.com` and `127.0.0.2`.
fn policy(upstream: SocketAddr, limits: &str, audit: &Path) -> String {
    format!(
        r#"version: 1
settings:
  limits: {limits}
  audit: {{file: {audit}}}
identities:
  attacker: {{systemdUnit: attacker.service}}
  other: {{systemdUnit: other.service}}
services:
  api:
    endpoints: ["{upstream}"]
rules:
  - id: reads
    from: [attacker, other]
    to: api
    methods: [GET]
    paths: ["/status/*", "/v1/items/**"]
  - id: ws
    from: [attacker]
    to: api
    methods: [GET]
    paths: ["/ws"]
    websocket: true
  - id: export
    from: [attacker]
    to: api
    methods: [GET]
    paths: ["/v1/export"]
    headers: {{x-tenant: acme}}
    query: {{format: json}}
  - id: legacy
    from: [attacker]
    to: api
    methods: [GET, POST]
    paths: ["/v1/legacy/**"]
    overrides: [X-HTTP-Method-Override]
  - id: vhost
    from: [attacker]
    to: api
    methods: [GET]
    paths: ["/vhost/**"]
    hosts: [api.example.com, "127.0.0.2"]
"#,
        audit = audit.display(),
    )
}

/// The status codes of every response in `text`, in order.
fn statuses(text: &str) -> Vec<u16> {
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

fn send(cgroup: &Cgroup, to: SocketAddr, bytes: &[u8]) -> String {
    send_raw(cgroup, to, bytes)["response"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// The audit records written so far (complete lines only: a buffered write may split one).
fn records(audit: &Path) -> Vec<Value> {
    let text = fs::read_to_string(audit).unwrap_or_default();
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    complete
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The records of requests whose path starts with `prefix`, once `n` are written.
fn wait_records(audit: &Path, prefix: &str, n: usize) -> Vec<Value> {
    wait_for(&format!("{n} audit records for {prefix}"), || {
        let found: Vec<Value> = records(audit)
            .into_iter()
            .filter(|r| r["path"].as_str().is_some_and(|p| p.starts_with(prefix)))
            .collect();
        (found.len() >= n).then_some(found)
    })
}

/// The targets the upstream received under `prefix`.
fn received(upstream: &HttpUpstream, prefix: &str) -> Vec<String> {
    upstream
        .requests()
        .into_iter()
        .map(|r| r.target)
        .filter(|t| t.starts_with(prefix))
        .collect()
}

/// The fixture: an upstream, a cgroup with the two callers' units, the agent with its audit
/// file.
struct Setup {
    upstream: HttpUpstream,
    attacker: Cgroup,
    other: Cgroup,
    audit: std::path::PathBuf,
    _agent: Agent,
    _cgroup: Cgroup,
}

impl Setup {
    fn start(limits: &str) -> Self {
        let upstream = HttpUpstream::start("127.0.0.1:0");
        let cgroup = Cgroup::new();
        let attacker = cgroup.child("attacker.service");
        let other = cgroup.child("other.service");
        let audit = cgroup_scoped_temp(&cgroup, "audit.jsonl");
        let agent = Agent::start(&cgroup, &policy(upstream.addr(), limits, &audit));
        Self {
            upstream,
            attacker,
            other,
            audit,
            _agent: agent,
            _cgroup: cgroup,
        }
    }

    fn u(&self) -> SocketAddr {
        self.upstream.addr()
    }
}

/// Issue 10, bypass 5: an allowed request that the upstream answers `101 Switching
/// Protocols` does not turn the connection into a tunnel. The client gets 502, both
/// connections close, and the request pipelined behind it never reaches the upstream.
#[test]
fn an_unasked_101_is_a_502_and_opens_no_tunnel() {
    if !privileged() {
        return;
    }
    let s = Setup::start("{}");
    let u = s.u();
    // `/status/101`: the upstream answers 101 to a plain GET, then reads the connection as
    // HTTP again, so a tunnelled request would be received, and counted, there.
    let text = send(
        &s.attacker,
        u,
        b"GET /status/101 HTTP/1.1\r\nhost: api\r\n\r\n\
          GET /v1/secret HTTP/1.1\r\nhost: api\r\n\r\n",
    );
    assert_eq!(statuses(&text), [502], "{text}");
    assert_eq!(received(&s.upstream, "/"), ["/status/101"]);
    let refused = wait_records(&s.audit, "/status/101", 1);
    assert_eq!(refused[0]["reason"], "unexpected upgrade");
    assert_eq!(refused[0]["decision"], "reject");
    assert_eq!(refused[0]["status"], 502);
    assert_eq!(refused[0]["rule"], "reads");
    assert_eq!(
        refused[0]["detail"],
        "response: 101 Switching Protocols to a request no rule allowed to upgrade"
    );
    // The second request was never read as one: no decision, no record.
    assert!(
        records(&s.audit).iter().all(|r| r["path"] != "/v1/secret"),
        "{:?}",
        records(&s.audit)
    );

    // The same as an unprivileged user, on a connection held open after the request: the
    // agent closes it.
    let report = send_raw_with(
        &s.attacker,
        Some((65534, 65534)),
        u,
        b"GET /status/101 HTTP/1.1\r\nhost: api\r\n\r\nGET /v1/secret HTTP/1.1\r\nhost: api\r\n\r\n",
        true,
    );
    assert_eq!(
        statuses(report["response"].as_str().unwrap()),
        [502],
        "{report}"
    );
    assert_eq!(report["end"], "closed", "{report}");
    assert_eq!(received(&s.upstream, "/"), ["/status/101", "/status/101"]);
    let refused = wait_records(&s.audit, "/status/101", 2);
    assert_eq!(refused[1]["reason"], "unexpected upgrade");
    assert_eq!(refused[1]["caller"]["uid"], 65534);

    // A WebSocket upgrade the rule allows still becomes a tunnel.
    let text = send(
        &s.attacker,
        u,
        b"GET /ws HTTP/1.1\r\nhost: api\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\nping",
    );
    assert_eq!(statuses(&text), [101], "{text}");
    assert!(text.ends_with("\r\n\r\nping"), "{text}");
}

/// An upstream that answers every request head with `101 Switching Protocols` to WebSocket,
/// asked or not, and writes each connection's bytes to `log` (one file per connection:
/// `log.N`). A Python process, ended by pid when dropped.
struct SwitchingUpstream {
    child: Child,
    addr: SocketAddr,
}

const SWITCHING_UPSTREAM: &str = r#"
import socket, sys, threading
log = sys.argv[1]
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(16)
print(srv.getsockname()[1], flush=True)
def serve(conn, n):
    with conn, open(f"{log}.{n}", "wb") as out:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(65536)
            if not chunk:
                return
            head += chunk
            out.write(chunk); out.flush()
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n")
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                return
            out.write(chunk); out.flush()
n = 0
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn, n), daemon=True).start()
    n += 1
"#;

impl SwitchingUpstream {
    fn start(log: &Path) -> Self {
        let mut child = std::process::Command::new("python3")
            .args(["-c", SWITCHING_UPSTREAM, &log.display().to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn python3");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .expect("the upstream's port");
        let port: u16 = line.trim().parse().expect("a port");
        Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

impl Drop for SwitchingUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The same with an upstream (Python) that switches every request to WebSocket: a plain GET
/// it answers with a 101 is answered 502, and the bytes sent after it never reach it.
#[test]
fn a_python_upstream_switching_a_plain_get_gets_nothing_more() {
    if !privileged() {
        return;
    }
    let cgroup = Cgroup::new();
    let attacker = cgroup.child("attacker.service");
    let audit = cgroup_scoped_temp(&cgroup, "audit.jsonl");
    let log = cgroup_scoped_temp(&cgroup, "upstream");
    let upstream = SwitchingUpstream::start(&log);
    let _agent = Agent::start(&cgroup, &policy(upstream.addr, "{}", &audit));
    let first = b"GET /status/200 HTTP/1.1\r\nhost: api\r\n\r\n";
    let mut sent = first.to_vec();
    sent.extend_from_slice(b"GET /v1/secret HTTP/1.1\r\nhost: api\r\n\r\nraw tunnel bytes");
    let text = send(&attacker, upstream.addr, &sent);
    assert_eq!(statuses(&text), [502], "{text}");
    let refused = wait_records(&audit, "/status/200", 1);
    assert_eq!(refused[0]["reason"], "unexpected upgrade");
    // What the upstream got: the allowed request's head, as forwarded, and nothing after it.
    let received = fs::read(format!("{}.0", log.display())).unwrap();
    assert!(
        received.starts_with(b"GET /status/200 HTTP/1.1\r\n") && received.ends_with(b"\r\n\r\n"),
        "{}",
        received.escape_ascii()
    );
    assert_eq!(received.windows(4).filter(|w| w == b"\r\n\r\n").count(), 1);
    assert!(!fs::exists(format!("{}.1", log.display())).unwrap());
}

/// Look-alikes of a header or query parameter a rule constrains are refused (403) with their
/// own reasons, and never reach the upstream.
#[test]
fn lookalike_headers_and_parameters_are_refused() {
    if !privileged() {
        return;
    }
    let s = Setup::start("{}");
    let u = s.u();
    // (query, extra header lines, status, reason)
    let cases: [(&str, &str, u16, &str); 7] = [
        ("format=json", "", 200, "rule"),
        (
            "format=json",
            "x_tenant: globex\r\n",
            403,
            "lookalike header",
        ),
        (
            "format=json",
            "X.Tenant: globex\r\n",
            403,
            "lookalike header",
        ),
        (
            "format=json&FORMAT=csv",
            "",
            403,
            "lookalike query parameter",
        ),
        (
            "format=json;format=csv",
            "",
            403,
            "lookalike query parameter",
        ),
        ("%66ormat=json", "", 403, "lookalike query parameter"),
        (
            "format=json&format=csv",
            "",
            403,
            "lookalike query parameter",
        ),
    ];
    for (query, extra, status, _) in &cases {
        let request = format!(
            "GET /v1/export?{query} HTTP/1.1\r\nhost: api\r\nx-tenant: acme\r\n{extra}\r\n"
        );
        let text = send(&s.attacker, u, request.as_bytes());
        assert_eq!(statuses(&text), [*status], "{query} {extra}: {text}");
    }
    assert_eq!(
        received(&s.upstream, "/v1/export"),
        ["/v1/export?format=json"]
    );
    let decided = wait_records(&s.audit, "/v1/export", cases.len());
    let reasons: Vec<&str> = decided
        .iter()
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    let expected: Vec<&str> = cases.iter().map(|c| c.3).collect();
    assert_eq!(reasons, expected);
    assert!(
        decided[1..]
            .iter()
            .all(|r| r["decision"] == "deny" && r["status"] == 403)
    );
    // The attempts are an anomaly of the identity that made them.
    let anomaly = wait_for("the evasion_attempt anomaly", || {
        records(&s.audit)
            .into_iter()
            .find(|r| r["record"] == "anomaly" && r["kind"] == "evasion_attempt")
    });
    assert_eq!(anomaly["identity"], "attacker");
}

/// Method- and URL-override headers are refused unless the rule lists them, and then only
/// with a method the rule allows.
#[test]
fn override_headers_are_refused_unless_the_rule_allows_them() {
    if !privileged() {
        return;
    }
    let s = Setup::start("{}");
    let u = s.u();
    // (path, header line, status)
    let cases: [(&str, &str, u16); 6] = [
        ("/v1/items/1", "X-HTTP-Method-Override: DELETE", 403),
        ("/v1/items/1", "X-Original-URL: /admin", 403),
        ("/v1/items/1", "x-http-method: DELETE", 403),
        ("/v1/legacy/1", "X-HTTP-Method-Override: DELETE", 403),
        ("/v1/legacy/1", "X_HTTP_Method_Override: POST", 403),
        ("/v1/legacy/1", "X-HTTP-Method-Override: POST", 200),
    ];
    for (path, header, status) in cases {
        let request = format!("GET {path} HTTP/1.1\r\nhost: api\r\n{header}\r\n\r\n");
        let text = send(&s.attacker, u, request.as_bytes());
        assert_eq!(statuses(&text), [status], "{path} {header}: {text}");
    }
    assert_eq!(received(&s.upstream, "/v1/"), ["/v1/legacy/1"]);
    let records = wait_records(&s.audit, "/v1/", cases.len());
    let reasons: Vec<&str> = records
        .iter()
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        [["method override"; 5].as_slice(), &["rule"]].concat()
    );
}

/// A rule's `hosts` sees the `Host` header, and the `Host` it allows must name the
/// destination: the same port (80 when none is given), and for an IP literal the same
/// address.
#[test]
fn hosts_match_the_host_header_which_must_agree_with_the_destination() {
    if !privileged() {
        return;
    }
    let s = Setup::start("{}");
    let u = s.u();
    let port = u.port();
    let cases = [
        (format!("api.example.com:{port}"), 200, "rule"),
        (format!("API.Example.com:{port}"), 200, "rule"),
        (format!("www.example.com:{port}"), 403, "host not allowed"),
        (
            "api.example.com".to_string(),
            403,
            "host does not match destination",
        ),
        (
            format!("api.example.com:{}", port ^ 1),
            403,
            "host does not match destination",
        ),
        (
            format!("127.0.0.2:{port}"),
            403,
            "host does not match destination",
        ),
    ];
    for (host, status, _) in &cases {
        let request = format!("GET /vhost/a HTTP/1.1\r\nhost: {host}\r\n\r\n");
        let text = send(&s.attacker, u, request.as_bytes());
        assert_eq!(statuses(&text), [*status], "{host}: {text}");
    }
    assert_eq!(received(&s.upstream, "/vhost/"), ["/vhost/a", "/vhost/a"]);
    let records = wait_records(&s.audit, "/vhost/", cases.len());
    let reasons: Vec<&str> = records
        .iter()
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    let expected: Vec<&str> = cases.iter().map(|c| c.2).collect();
    assert_eq!(reasons, expected);
    assert_eq!(
        records[5]["detail"],
        format!("host `127.0.0.2:{port}` is not destination {u}")
    );
}

/// A `probe hold` in `cgroup`: its connections stay open until [`Holder::release`].
struct Holder {
    child: Child,
    report: Value,
}

impl Holder {
    fn start(cgroup: &Cgroup, to: SocketAddr, count: u32) -> Self {
        let mut child = cgroup
            .command(probe_binary())
            .args(["hold", &to.to_string(), "/status/200", &count.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn probe");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .expect("probe report");
        let report = serde_json::from_str(&line).unwrap_or_else(|_| panic!("report: {line}"));
        Self { child, report }
    }

    fn release(mut self) {
        drop(self.child.stdin.take());
        let mut rest = String::new();
        let _ = self.child.stdout.take().unwrap().read_to_string(&mut rest);
        assert!(self.child.wait().unwrap().success());
    }
}

/// Without `maxConnectionsPerIdentity`, an identity holds at most a quarter of
/// `maxConnections` (here 8, so 2): its further connections are reset, and another identity
/// is still served.
#[test]
fn the_default_per_identity_cap_keeps_places_for_others() {
    if !privileged() {
        return;
    }
    let s = Setup::start("{maxConnections: 8}");
    let u = s.u();
    let flooder = Holder::start(&s.attacker, u, 5);
    assert_eq!(
        flooder.report,
        json!({ "outcomes": { "200": 2, "reset": 3 }, "held": 2 })
    );
    let calm = Holder::start(&s.other, u, 2);
    assert_eq!(calm.report, json!({ "outcomes": { "200": 2 }, "held": 2 }));
    let refused = wait_for("3 connection limit records", || {
        let found: Vec<Value> = records(&s.audit)
            .into_iter()
            .filter(|r| r["reason"] == "connection limit")
            .collect();
        (found.len() >= 3).then_some(found)
    });
    assert!(
        refused
            .iter()
            .all(|r| r["identities"] == json!(["attacker"]))
    );
    assert_eq!(
        refused[0]["detail"],
        "identity `attacker` has 2 connections open, the most allowed \
         (maxConnectionsPerIdentity default: maxConnections / 4)"
    );
    flooder.release();
    calm.release();
}
