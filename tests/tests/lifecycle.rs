//! The agent's life cycle through the real kernel redirect: SIGTERM drains (a request in
//! flight completes, the drain is bounded), and an upgrade — stop the old agent, start a new
//! one on the same port — loses no request of a keep-alive client idle in between. (SIGHUP
//! reload under load: `http.rs`, `reload_under_load_loses_no_request_and_a_broken_policy_
//! changes_nothing`.)

use std::{
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::Stdio,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use enforcer_tests::{
    Agent, Cgroup, PATIENCE, cgroup_scoped_temp, privileged, probe_binary, send_raw_with, wait_for,
};
use serde_json::Value;

/// An HTTP/1.1 upstream that answers every request with 200 `ok PATH`, keeping connections
/// alive; `/slow/MS` answers after MS milliseconds. Each request's path is sent on the channel
/// as it arrives.
fn upstream() -> (SocketAddr, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for conn in listener.incoming().map_while(Result::ok) {
            let tx = tx.clone();
            thread::spawn(move || serve(conn, &tx));
        }
    });
    (addr, rx)
}

fn serve(conn: TcpStream, arrived: &mpsc::Sender<String>) {
    let mut out = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_owned();
        let _ = arrived.send(path.clone());
        if let Some(ms) = path.strip_prefix("/slow/") {
            thread::sleep(Duration::from_millis(ms.parse().unwrap_or(0)));
        }
        let body = format!("ok {path}");
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if out.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// The probe may GET anything on the upstream; records go to `audit` as `format`.
fn policy(upstream: SocketAddr, audit: &Path, format: &str) -> String {
    let probe = fs::canonicalize(probe_binary()).unwrap();
    format!(
        r#"version: 1
settings:
  audit: {{file: {audit}, format: {format}}}
identities:
  probe:
    exe: {probe}
services:
  api:
    endpoints: ["{upstream}"]
rules:
  - id: probe-reads
    from: [probe]
    to: api
    methods: [GET]
    paths: ["/**"]
"#,
        audit = audit.display(),
        probe = probe.display(),
    )
}

fn lines(path: &Path) -> Vec<Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: api\r\n\r\n").into_bytes()
}

#[test]
fn an_upgrade_loses_no_request_of_an_idle_keep_alive_client() {
    if !privileged() {
        return;
    }
    let (upstream, arrived) = upstream();
    let cgroup = Cgroup::new();
    let (old_audit, new_audit) = (
        cgroup_scoped_temp(&cgroup, "old-audit.jsonl"),
        cgroup_scoped_temp(&cgroup, "new-audit.jsonl"),
    );
    let mut old = Agent::start(&cgroup, &policy(upstream, &old_audit, "json"));

    let mut client = cgroup
        .command(probe_binary())
        .args(["keepalive", &upstream.to_string(), "/first", "/second"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut reports = BufReader::new(client.stdout.take().unwrap());
    let mut line = String::new();
    reports.read_line(&mut line).unwrap();
    let first: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(first["first"], 200, "{first}");
    assert_eq!(arrived.recv_timeout(PATIENCE).unwrap(), "/first");

    // The old agent stops while the client idles; a new one takes its port.
    let (status, _) = old.stop();
    assert!(status.success(), "{status}");
    assert!(
        old.events().iter().any(|e| e["event"] == "drained"),
        "an idle connection ends the drain at once: {}",
        old.log_text()
    );
    let port = old.listen.port().to_string();
    let new = Agent::start_with(
        &cgroup,
        &policy(upstream, &new_audit, "ocsf"),
        &["--listen", &format!("127.0.0.1:{port}")],
    );
    assert_eq!(new.listen, old.listen);

    client.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut rest = String::new();
    reports.read_to_string(&mut rest).unwrap();
    assert!(client.wait().unwrap().success());
    let second: Value = serde_json::from_str(rest.trim()).unwrap();
    assert_eq!(second["second"], 200, "{second}");
    // Closed while idle, with a FIN: the client reconnected before sending.
    assert_eq!(second["idle_end"], "fin", "{second}");
    assert_eq!(second["retried"], true, "{second}");
    assert_eq!(arrived.recv_timeout(PATIENCE).unwrap(), "/second");

    // Each request is in the trail of the agent it passed: the second in the new one's (OCSF).
    let old_records = lines(&old_audit);
    assert_eq!(old_records.len(), 1, "{old_records:?}");
    assert_eq!(old_records[0]["path"], "/first");
    assert_eq!(old_records[0]["caller"]["tgid"], first["pid"]);
    let events = wait_for("the new agent's record", || {
        let events = lines(&new_audit);
        (!events.is_empty()).then_some(events)
    });
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_eq!(event["class_uid"], 6003);
    assert_eq!(event["activity_name"], "Read");
    assert_eq!(event["http_request"]["url"]["path"], "/second");
    assert_eq!(event["http_response"]["code"], 200);
    assert_eq!(event["actor"]["process"]["pid"], first["pid"]);
    assert_eq!(event["policy"]["uid"], "probe-reads");
    assert_eq!(event["disposition"], "Allowed");
}

#[test]
fn a_request_in_flight_completes_during_the_drain() {
    if !privileged() {
        return;
    }
    let (upstream, arrived) = upstream();
    let cgroup = Cgroup::new();
    let audit = cgroup_scoped_temp(&cgroup, "audit.jsonl");
    // A drain far longer than the upstream's 1.5 s, however slowly a loaded host runs.
    let mut agent = Agent::start_with(
        &cgroup,
        &policy(upstream, &audit, "json"),
        &["--drain-timeout", "60"],
    );
    let slow = {
        let bytes = get("/slow/1500");
        let cgroup = &cgroup;
        thread::scope(|s| {
            let client = s.spawn(move || send_raw_with(cgroup, None, upstream, &bytes, true));
            assert_eq!(arrived.recv_timeout(PATIENCE).unwrap(), "/slow/1500");
            // The agent waits for the response before exiting: the complete response below
            // shows it, whatever the time the stop took.
            let (status, _) = agent.stop();
            assert!(status.success(), "{status}");
            client.join().unwrap()
        })
    };
    let response = slow["response"].as_str().unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{slow}");
    assert!(response.ends_with("ok /slow/1500"), "{slow}");
    // Told to close, then closed with a FIN.
    assert!(response.contains("\r\nconnection: close\r\n"), "{slow}");
    assert_eq!(slow["end"], "closed", "{slow}");
    let log = agent.log_text();
    assert!(
        agent.events().iter().any(|e| e["event"] == "drained"),
        "{log}"
    );
    let records = lines(&audit);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["status"], 200);
    assert_eq!(records[0]["path"], "/slow/1500");
}

#[test]
fn the_drain_is_bounded() {
    if !privileged() {
        return;
    }
    let (upstream, arrived) = upstream();
    let cgroup = Cgroup::new();
    let audit = cgroup_scoped_temp(&cgroup, "audit.jsonl");
    let mut agent = Agent::start_with(
        &cgroup,
        &policy(upstream, &audit, "json"),
        &["--drain-timeout", "1"],
    );
    let cgroup = &cgroup;
    let stuck = thread::scope(|s| {
        let client =
            s.spawn(move || send_raw_with(cgroup, None, upstream, &get("/slow/20000"), true));
        assert_eq!(arrived.recv_timeout(PATIENCE).unwrap(), "/slow/20000");
        let stopping = Instant::now();
        let (status, _) = agent.stop();
        let took = stopping.elapsed();
        assert!(status.success(), "{status}");
        // At least the drain timeout: its timer starts after the SIGTERM. That the exit came
        // before the upstream's answer shows in the client's report below.
        assert!(took >= Duration::from_secs(1), "exited after {took:?}");
        client.join().unwrap()
    });
    // The stuck request is cut: no response, and the client is not left hanging.
    assert_eq!(stuck["response"], "", "{stuck}");
    assert_ne!(stuck["end"], "timeout", "{stuck}");
    let cut = agent
        .events()
        .into_iter()
        .find(|e| e["event"] == "drain_cut")
        .unwrap_or_else(|| panic!("no drain_cut event: {}", agent.log_text()));
    assert_eq!(cut["connections"], 1, "{cut}");
}
