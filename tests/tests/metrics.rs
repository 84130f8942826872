//! Metrics, health and status of the real agent, with traffic through the real redirect: the
//! exposition passes `promtool check metrics`, a real Prometheus server scrapes it while
//! traffic runs, 100 000 distinct paths and ids leave the series count unchanged, and
//! `enforcer status` renders the agent's state.

use std::{
    fs,
    io::{BufRead as _, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::Instant,
};

use enforcer_tests::{
    Agent, Cgroup, HttpUpstream, PATIENCE, cgroup_scoped_temp, enforcer_binary, metric_value,
    privileged, probe_binary, send_raw, sha256_hex, wait_for,
};
use serde_json::Value;

/// The raw API key the tests present, and one that expired.
const KEY: &str = "k-3d9f2a7c41b8e605";
const OLD_KEY: &str = "k-old-77aa01";

/// The probe may read invoices and keyed paths (with the API key) from `api`, and anything
/// from `dead` (a port nothing listens on) and `broken` (an upstream that answers garbage).
fn policy(upstream: SocketAddr, dead: SocketAddr, broken: SocketAddr) -> String {
    let probe = fs::canonicalize(probe_binary()).unwrap();
    let digest = |k: &str| {
        use sha2::{Digest, Sha256};
        Sha256::digest(k.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    format!(
        r#"version: 1
identities:
  probe:
    exe: {probe}
  root-user:
    user: root
credentials:
  ops-key:
    kind: apiKey
    header: x-api-key
    keys:
      - name: current
        sha256: {key}
      - name: retired
        sha256: {old}
        notAfter: "2020-01-01T00:00:00Z"
services:
  api:
    endpoints: ["{upstream}"]
  dead:
    endpoints: ["{dead}"]
  broken:
    endpoints: ["{broken}"]
rules:
  - id: probe-reads
    from: [probe]
    to: api
    methods: [GET]
    paths: ["/v1/invoices/*"]
  - id: probe-keyed
    from: [probe]
    to: api
    methods: [GET]
    paths: ["/keyed/*"]
    require: {{credential: ops-key}}
  - id: probe-dead
    from: [probe]
    to: dead
    methods: [GET]
    paths: ["/**"]
  - id: probe-broken
    from: [probe]
    to: broken
    methods: [GET]
    paths: ["/**"]
"#,
        probe = probe.display(),
        key = digest(KEY),
        old = digest(OLD_KEY),
    )
}

/// A loopback address nothing listens on.
fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// GET `path` from the metrics endpoint: (status, body).
fn get(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_owned())
}

/// The series, less the anomaly ones: those appear when a detector reports, labelled only by
/// policy identity and kind.
fn series_count(text: &str) -> usize {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("enforcer_anomalies_total{"))
        .count()
}

/// Pipeline `requests` from a probe in `cgroup`; returns its report (`statuses`: the count
/// of each response status, `end`).
fn pipeline(cgroup: &Cgroup, to: SocketAddr, requests: &[u8]) -> Value {
    let mut cmd = cgroup.command(probe_binary());
    cmd.args(["pipeline", &to.to_string()]);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn probe");
    let mut stdin = child.stdin.take().unwrap();
    let bytes = requests.to_vec();
    let writer = thread::spawn(move || stdin.write_all(&bytes));
    let out = child.wait_with_output().expect("probe");
    writer.join().unwrap().expect("write probe stdin");
    assert!(out.status.success(), "probe pipeline failed: {out:?}");
    serde_json::from_slice(&out.stdout).expect("probe JSON")
}

fn get_request(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: api\r\n{extra}\r\n")
}

#[test]
fn endpoint_answers_health_readiness_and_status() {
    if !privileged() {
        return;
    }
    let upstream = HttpUpstream::start("127.0.0.1:0");
    let cgroup = Cgroup::new();
    let mut agent = Agent::start(
        &cgroup,
        &policy(upstream.addr(), closed_port(), closed_port()),
    );
    let addr = agent
        .metrics
        .expect("the ready event names the metrics endpoint");
    assert!(addr.ip().is_loopback());

    assert_eq!(get(addr, "GET", "/healthz"), (200, "ok\n".into()));
    assert_eq!(get(addr, "GET", "/readyz"), (200, "ready\n".into()));
    assert_eq!(get(addr, "GET", "/nope").0, 404);
    assert_eq!(get(addr, "POST", "/metrics").0, 405);
    let mut bad = TcpStream::connect(addr).unwrap();
    bad.write_all(b"GET /metrics HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    bad.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");

    let u = upstream.addr();
    let mut requests = String::new();
    requests += &get_request("/v1/invoices/1", "");
    requests += &get_request("/admin", "connection: close\r\n");
    let report = send_raw(&cgroup, u, requests.as_bytes());
    assert_eq!(
        statuses(report["response"].as_str().unwrap()),
        [200, 403],
        "{report}"
    );

    let (status, body) = get(addr, "GET", "/status");
    assert_eq!(status, 200);
    let json: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["ready"], true);
    assert_eq!(json["agent"]["decisions"]["allow"], 1, "{json}");
    assert_eq!(json["agent"]["decisions"]["deny"], 1, "{json}");

    let out = Command::new(enforcer_binary())
        .args(["status", "--metrics-addr", &addr.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8(out.stdout).unwrap();
    let hash = &sha256_hex(agent.policy_file())[..16];
    // The tracepoint programs follow the cgroup ones; sched_prepare_exec is Linux 6.10's.
    let programs = "programs           enf_sockops, enf_getpeer4, enf_getpeer6, enf_connect4, \
                    enf_connect6, enf_exec, enf_exit";
    assert!(
        table
            .lines()
            .any(|l| l == programs || l == format!("{programs}, enf_prepare_exec")),
        "no line {programs:?} in\n{table}"
    );
    for line in [
        "ready              yes".to_string(),
        format!("cgroup             {}", cgroup.path().display()),
        format!(
            "policy             {} (version 1, sha256 {hash}…)",
            agent.policy_file().display()
        ),
        format!("api                http      {u}"),
        "decisions          allow 1, deny 1".into(),
        "connections        0 active, 1 total, 0 rejected".into(),
    ] {
        assert!(
            table.lines().any(|l| l == line),
            "no line {line:?} in\n{table}"
        );
    }

    // Shutting down: not ready any more, then gone.
    agent.stop();
    let refused = TcpStream::connect(addr);
    assert!(refused.is_err(), "the endpoint outlived the agent");
    let out = Command::new(enforcer_binary())
        .args(["status", "--metrics-addr", &addr.to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!(
            "cannot reach the agent's metrics endpoint at {addr}"
        )),
        "{out:?}"
    );
}

#[test]
fn metrics_off_serves_nothing_and_still_enforces() {
    if !privileged() {
        return;
    }
    let upstream = HttpUpstream::start("127.0.0.1:0");
    let cgroup = Cgroup::new();
    let mut agent = Agent::start_with(
        &cgroup,
        &policy(upstream.addr(), closed_port(), closed_port()),
        &["--metrics-addr", "off"],
    );
    assert_eq!(agent.metrics, None);
    let ready = agent.wait_event("ready", |e| e["event"] == "ready");
    assert!(ready.get("metrics").is_none(), "{ready}");
    let report = send_raw(
        &cgroup,
        upstream.addr(),
        get_request("/admin", "connection: close\r\n").as_bytes(),
    );
    assert_eq!(statuses(report["response"].as_str().unwrap()), [403]);
}

/// Every family, with traffic behind it, as the exact series a dashboard would read; and the
/// whole exposition is valid for promtool.
#[test]
fn a_scrape_of_a_running_agent_counts_every_outcome_and_passes_promtool() {
    if !privileged() {
        return;
    }
    let upstream = HttpUpstream::start("127.0.0.1:0");
    let dead = closed_port();
    let cgroup = Cgroup::new();
    // Answers one connection with something that is not HTTP.
    let garbage = TcpListener::bind("127.0.0.1:0").unwrap();
    let broken = garbage.local_addr().unwrap();
    let garbage = thread::spawn(move || {
        let (mut s, _) = garbage.accept().unwrap();
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf);
        let _ = s.write_all(b"HTTP/1.1 2xx whatever\r\n\r\n");
    });
    let mut agent = Agent::start(&cgroup, &policy(upstream.addr(), dead, broken));
    let u = upstream.addr();

    let mut requests = String::new();
    for n in 0..3 {
        requests += &get_request(&format!("/v1/invoices/{n}"), "");
    }
    requests += &get_request("/admin", "");
    requests += &get_request("/keyed/a", &format!("x-api-key: {KEY}\r\n"));
    requests += &get_request("/keyed/b", "");
    requests += &get_request("/keyed/c", &format!("x-api-key: {OLD_KEY}\r\n"));
    requests += &get_request("/keyed/d", "x-api-key: wrong\r\nconnection: close\r\n");
    let report = send_raw(&cgroup, u, requests.as_bytes());
    assert_eq!(
        statuses(report["response"].as_str().unwrap()),
        [200, 200, 200, 403, 200, 401, 401, 401],
        "{report}"
    );
    let report = send_raw(&cgroup, dead, get_request("/x", "").as_bytes());
    assert_eq!(statuses(report["response"].as_str().unwrap()), [502]);
    let report = send_raw(&cgroup, broken, get_request("/x", "").as_bytes());
    assert_eq!(statuses(report["response"].as_str().unwrap()), [502]);
    garbage.join().unwrap();
    let report = send_raw(&cgroup, u, b"BREW /pot HTCPCP/1.0\r\n\r\n");
    assert_eq!(statuses(report["response"].as_str().unwrap()), [400]);

    // One reload that works, one that does not.
    let file = agent.policy_file().to_path_buf();
    let text = fs::read_to_string(&file).unwrap();
    fs::write(&file, format!("{text}# reloaded\n")).unwrap();
    agent.wait_event("reload", |e| e["event"] == "policy_reloaded");
    let good_hash = sha256_hex(&file)[..16].to_owned();
    fs::write(&file, "version: 1\nrules: [oops\n").unwrap();
    agent.wait_event("rejected reload", |e| e["event"] == "policy_rejected");

    let text = wait_for("the audit records to be written", || {
        let text = agent.scrape();
        (metric_value(&text, "enforcer_audit_records_dropped_total") == Some(0.0)
            && metric_value(&text, r#"enforcer_requests_total{decision="reject",identity="probe",rule="none",service="api"}"#).is_some())
        .then_some(text)
    });
    let expect = [
        (
            r#"enforcer_requests_total{decision="allow",identity="probe",rule="probe-reads",service="api"}"#,
            3.0,
        ),
        (
            r#"enforcer_requests_total{decision="allow",identity="probe",rule="probe-keyed",service="api"}"#,
            1.0,
        ),
        (
            r#"enforcer_requests_total{decision="deny",identity="probe",rule="none",service="api"}"#,
            4.0,
        ),
        (
            r#"enforcer_requests_total{decision="allow",identity="probe",rule="probe-dead",service="dead"}"#,
            1.0,
        ),
        (
            r#"enforcer_requests_total{decision="reject",identity="probe",rule="none",service="api"}"#,
            1.0,
        ),
        (
            r#"enforcer_auth_failures_total{identity="probe",reason="missing"}"#,
            1.0,
        ),
        (
            r#"enforcer_auth_failures_total{identity="probe",reason="expired"}"#,
            1.0,
        ),
        (
            r#"enforcer_auth_failures_total{identity="probe",reason="invalid"}"#,
            1.0,
        ),
        (
            r#"enforcer_upstream_errors_total{kind="connect",service="dead"}"#,
            1.0,
        ),
        (
            r#"enforcer_upstream_errors_total{kind="protocol",service="broken"}"#,
            1.0,
        ),
        (
            r#"enforcer_added_latency_seconds_count{service="api"}"#,
            9.0,
        ),
        ("enforcer_connections_total", 4.0),
        ("enforcer_connections_active", 0.0),
        (
            r#"enforcer_connections_rejected_total{reason="no_record"}"#,
            0.0,
        ),
        (
            r#"enforcer_kernel_connects_total{result="redirected"}"#,
            4.0,
        ),
        (r#"enforcer_kernel_connects_total{result="map_full"}"#, 0.0),
        (
            r#"enforcer_kernel_connects_total{result="lookup_miss"}"#,
            0.0,
        ),
        (r#"enforcer_policy_reloads_total{result="success"}"#, 1.0),
        (r#"enforcer_policy_reloads_total{result="failure"}"#, 1.0),
        ("enforcer_audit_write_failures_total", 0.0),
        ("enforcer_audit_records_dropped_total", 0.0),
        (
            r#"enforcer_audit_records_lost_total{reason="queue_full"}"#,
            0.0,
        ),
        (
            r#"enforcer_audit_records_lost_total{reason="write_error"}"#,
            0.0,
        ),
        // The file on disk is the broken one: the last attempt failed.
        ("enforcer_policy_last_reload_successful", 0.0),
    ];
    for (series, want) in expect {
        assert_eq!(
            metric_value(&text, series),
            Some(want),
            "{series} in\n{text}"
        );
    }
    let reload_at = |result: &str| {
        let series =
            format!(r#"enforcer_policy_last_reload_timestamp_seconds{{result="{result}"}}"#);
        metric_value(&text, &series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    assert!(
        reload_at("attempt") >= reload_at("success") && reload_at("success") > 0.0,
        "{text}"
    );
    let info = format!(
        r#"enforcer_policy_info{{hash="{good_hash}",source="{}",version="1"}}"#,
        file.display()
    );
    assert_eq!(metric_value(&text, &info), Some(1.0), "{info} in\n{text}");
    let build = format!(
        r#"enforcer_build_info{{commit="{}",version="{}"}}"#,
        enforcer::metrics::COMMIT,
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(metric_value(&text, &build), Some(1.0), "{text}");
    // Every kernel counter, by the names the kernel crate gives them.
    for result in [
        "redirected",
        "passed",
        "agent_passed",
        "lookup_miss",
        "map_full",
        "no_listener",
    ] {
        let s = format!(r#"enforcer_kernel_connects_total{{result="{result}"}}"#);
        assert!(metric_value(&text, &s).is_some(), "no {s}");
    }
    // No secret, path or pid leaks into a label. The pid is looked for in label sets only:
    // its digits can stand in a sample value by chance (`process_start_time_seconds`).
    for leak in [KEY, OLD_KEY, "/keyed", "/v1/invoices"] {
        assert!(!text.contains(leak), "{leak:?} in\n{text}");
    }
    let pid = agent.pid().to_string();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let labels = line
            .split_once('{')
            .and_then(|(_, rest)| rest.rsplit_once('}'))
            .map_or("", |(labels, _)| labels);
        assert!(!labels.contains(&pid), "pid {pid} in the labels of {line}");
    }

    let mut promtool = Command::new("/usr/bin/promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {out:?}\n{text}"
    );
}

/// A real Prometheus on loopback, with its own storage; stopped and removed on drop.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Prometheus {
    fn start(cgroup: &Cgroup, target: SocketAddr) -> Self {
        let dir = cgroup_scoped_temp(cgroup, "prometheus");
        fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  \
                 - job_name: enforcer\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        // The port is free when asked for; Prometheus takes it a moment later.
        let addr = closed_port();
        let child = Command::new("/usr/bin/prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        let p = Self { child, dir, addr };
        wait_for("prometheus to be ready", || {
            (TcpStream::connect(p.addr).is_ok() && get(p.addr, "GET", "/-/ready").0 == 200)
                .then_some(())
        });
        p
    }

    /// The instant vector of `query`, as (labels, value) pairs.
    fn query(&self, query: &str) -> Vec<(Value, f64)> {
        let encoded: String = query
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (status, body) = get(self.addr, "GET", &format!("/api/v1/query?query={encoded}"));
        assert_eq!(status, 200, "{query}: {body}");
        let json: Value = serde_json::from_str(&body).unwrap();
        json["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let v = r["value"][1].as_str().unwrap().parse().unwrap();
                (r["metric"].clone(), v)
            })
            .collect()
    }

    /// The single value of `query`, if it has one.
    fn scalar(&self, query: &str) -> Option<f64> {
        match self.query(query).as_slice() {
            [(_, v)] => Some(*v),
            _ => None,
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // SIGTERM, so Prometheus closes its storage. SAFETY: plain syscall on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn prometheus_scrapes_the_agent_while_traffic_runs() {
    if !privileged() {
        return;
    }
    let upstream = HttpUpstream::start("127.0.0.1:0");
    let cgroup = Cgroup::new();
    let agent = Agent::start(
        &cgroup,
        &policy(upstream.addr(), closed_port(), closed_port()),
    );
    let metrics = agent.metrics.unwrap();
    let prometheus = Prometheus::start(&cgroup, metrics);
    wait_for("a first successful scrape", || {
        (prometheus.scalar(r#"up{job="enforcer"}"#) == Some(1.0)).then_some(())
    });

    // A keep-alive connection, held open after its first request until a scrape has shown it
    // open and that request counted.
    let mut client = cgroup
        .command(probe_binary())
        .args([
            "keepalive",
            &upstream.addr().to_string(),
            "/v1/invoices/7",
            "/v1/invoices/8",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start probe");
    let mut reports = BufReader::new(client.stdout.take().unwrap());
    let mut line = String::new();
    reports.read_line(&mut line).unwrap();
    let first: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(first["first"], 200, "{first}");
    let allowed = r#"enforcer_requests_total{decision="allow",rule="probe-reads",identity="probe",service="api",job="enforcer"}"#;
    wait_for("a scrape of the open connection and its request", || {
        (prometheus.scalar("enforcer_connections_active") == Some(1.0)
            && prometheus.scalar(allowed) == Some(1.0))
        .then_some(())
    });
    client.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut rest = String::new();
    reports.read_to_string(&mut rest).unwrap();
    assert!(client.wait().unwrap().success(), "{rest}");
    let second: Value = serde_json::from_str(&rest).unwrap();
    assert_eq!(second["second"], 200, "{second}");
    assert_eq!(second["retried"], false, "{second}");
    let ok = 2;

    // Later scrapes see the second request counted and the connection closed.
    wait_for(
        "a scrape of the second request and the closed connection",
        || {
            (prometheus.scalar(allowed) == Some(f64::from(ok))
                && prometheus.scalar("enforcer_connections_active") == Some(0.0))
            .then_some(())
        },
    );
    assert_eq!(
        prometheus.scalar(r#"sum(enforcer_added_latency_seconds_count{service="api"})"#),
        Some(f64::from(ok))
    );
    let hash = &sha256_hex(agent.policy_file())[..16];
    assert_eq!(
        prometheus.scalar(&format!(r#"enforcer_policy_info{{hash="{hash}"}}"#)),
        Some(1.0)
    );
    assert!(
        prometheus
            .scalar(r#"enforcer_kernel_connects_total{result="redirected"}"#)
            .is_some_and(|v| v >= 1.0)
    );
    assert_eq!(prometheus.scalar("enforcer_build_info"), Some(1.0));
}

/// 100 000 requests with distinct paths, query ids, request ids and tokens, pipelined on one
/// keep-alive connection: the series are those of the policy names, before and after.
#[test]
fn cardinality_is_bounded_by_the_policy() {
    if !privileged() {
        return;
    }
    let upstream = HttpUpstream::start("127.0.0.1:0");
    let cgroup = Cgroup::new();
    let audit = cgroup_scoped_temp(&cgroup, "audit.jsonl");
    let text = policy(upstream.addr(), closed_port(), closed_port()).replace(
        "version: 1\n",
        &format!(
            "version: 1\nsettings:\n  audit: {{file: {}}}\n",
            audit.display()
        ),
    );
    let agent = Agent::start(&cgroup, &text);
    let u = upstream.addr();
    let batch = |from: u32, to: u32| {
        let mut out = String::with_capacity((to - from) as usize * 120);
        for n in from..to {
            let path = if n % 10 == 0 {
                format!("/v1/invoices/{n}?id={n}")
            } else {
                format!("/n{n}/x?id={n}")
            };
            let close = if n + 1 == to {
                "connection: close\r\n"
            } else {
                ""
            };
            out += &get_request(
                &path,
                &format!("x-request-id: r{n}\r\nauthorization: Bearer t{n}\r\n{close}"),
            );
        }
        out.into_bytes()
    };

    // Every label combination this traffic can produce, once.
    let check = |report: Value, allowed: u64, denied: u64| {
        let log = || {
            let events = agent.events();
            let warnings: Vec<_> = events.iter().filter(|e| e["level"] != "INFO").collect();
            let records = fs::read_to_string(&audit).unwrap_or_default();
            let last: Vec<_> = records.lines().rev().take(3).collect();
            format!("{warnings:#?}\n{last:#?}")
        };
        assert_eq!(report["end"], "closed", "{report}\n{}", log());
        assert_eq!(report["statuses"]["200"], allowed, "{report}\n{}", log());
        assert_eq!(report["statuses"]["403"], denied, "{report}\n{}", log());
    };
    check(pipeline(&cgroup, u, &batch(0, 1_000)), 100, 900);
    let before = agent.scrape();

    let started = Instant::now();
    let report = pipeline(&cgroup, u, &batch(1_000, 101_000));
    let secs = started.elapsed().as_secs_f64();
    check(report, 10_000, 90_000);
    eprintln!("100 000 pipelined requests in {secs:.1} s");

    let after = agent.scrape();
    assert_eq!(
        metric_value(
            &after,
            r#"enforcer_requests_total{decision="deny",identity="probe",rule="none",service="api"}"#
        ),
        Some(90_900.0)
    );
    assert_eq!(
        metric_value(
            &after,
            r#"enforcer_requests_total{decision="allow",identity="probe",rule="probe-reads",service="api"}"#
        ),
        Some(10_100.0)
    );
    // The burst itself may raise anomalies (a request burst, a deny spike): their series are
    // the policy's identities times the six kinds, bounded as well. Nothing else may appear.
    let appeared: Vec<&str> = after
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let name = l.split(' ').next().unwrap();
            !before.lines().any(|b| b.split(' ').next() == Some(name))
        })
        .collect();
    let (anomalies, other): (Vec<&str>, Vec<&str>) = appeared
        .iter()
        .partition(|l| l.starts_with("enforcer_anomalies_total{"));
    assert!(other.is_empty(), "series appeared:\n{}", other.join("\n"));
    assert!(
        anomalies.len() <= 6 && anomalies.iter().all(|l| l.contains(r#"identity="probe""#)),
        "{anomalies:#?}"
    );
    assert_eq!(series_count(&after), series_count(&before));
    for leak in ["/n1", "x-request-id", "r1000", "Bearer", "t1000"] {
        assert!(!after.contains(leak), "{leak:?} in\n{after}");
    }
}

/// The status codes of every response in `text`, in order.
fn statuses(text: &str) -> Vec<u16> {
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

/// The families of the table under docs/metrics.md's `## Metrics`, with their type.
fn documented_families() -> std::collections::BTreeSet<(String, String)> {
    let doc = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md"))
        .expect("docs/metrics.md");
    let (_, section) = doc
        .split_once("\n## Metrics\n")
        .expect("a `## Metrics` section");
    let section = section.split("\n## ").next().unwrap();
    section
        .lines()
        .filter_map(|l| {
            let mut cells = l.strip_prefix("| `")?.split('|');
            let name = cells.next()?.trim().strip_suffix('`')?;
            let kind = cells.next()?.trim();
            Some((name.to_owned(), kind.to_owned()))
        })
        .collect()
}

/// The families of an exposition, with their type.
fn exported_families(text: &str) -> std::collections::BTreeSet<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let (name, kind) = l.strip_prefix("# TYPE ")?.split_once(' ')?;
            Some((name.to_owned(), kind.to_owned()))
        })
        .collect()
}

/// After traffic of every kind (allowed, denied, refused credentials, an anomaly, upstream
/// failures, a failing JWKS URL, an injected file, reloads), the agent exports exactly the
/// families docs/metrics.md documents, with the documented types.
#[test]
fn every_exported_family_is_documented_and_every_documented_one_exported() {
    if !privileged() {
        return;
    }
    let upstream = HttpUpstream::start("127.0.0.1:0");
    let dead = closed_port();
    let broken = closed_port();
    let cgroup = Cgroup::new();
    let injected = cgroup_scoped_temp(&cgroup, "injected");
    fs::write(&injected, "Bearer injected-value\n").unwrap();
    let policy = policy(upstream.addr(), dead, broken)
        .replace(
            "credentials:\n",
            &format!(
                "credentials:\n  idp:\n    kind: jwt\n    issuer: https://idp.test\n    \
                 audience: api\n    algorithms: [EdDSA]\n    jwksUrl: https://{dead}/jwks\n"
            ),
        )
        .replace(
            "rules:\n",
            &format!(
                "rules:\n  - id: probe-sso\n    from: [probe]\n    to: api\n    methods: [GET]\n    \
                 paths: [\"/sso/*\"]\n    require: {{credential: idp}}\n  - id: probe-injected\n    \
                 from: [probe]\n    to: api\n    methods: [GET]\n    paths: [\"/injected/*\"]\n    \
                 inject: {{header: x-injected, file: {}}}\n",
                injected.display()
            ),
        )
        + "settings:\n  anomalies:\n    authFailureBurst: {window: 1s, minCount: 2}\n";
    let mut agent = Agent::start(&cgroup, &policy);
    let u = upstream.addr();
    let mut requests = get_request("/v1/invoices/1", "") + &get_request("/admin", "");
    requests += &get_request("/injected/a", "");
    for n in 0..4 {
        requests += &get_request(&format!("/keyed/{n}"), "");
    }
    requests += &get_request(
        "/keyed/x",
        &format!("x-api-key: {KEY}\r\nconnection: close\r\n"),
    );
    let report = send_raw(&cgroup, u, requests.as_bytes());
    assert_eq!(
        statuses(report["response"].as_str().unwrap()),
        [200, 403, 200, 401, 401, 401, 401, 200],
        "{report}"
    );
    let report = send_raw(&cgroup, dead, get_request("/x", "").as_bytes());
    assert_eq!(statuses(report["response"].as_str().unwrap()), [502]);
    let file = agent.policy_file().to_path_buf();
    let text = fs::read_to_string(&file).unwrap();
    fs::write(&file, format!("{text}# reloaded\n")).unwrap();
    agent.wait_event("reload", |e| e["event"] == "policy_reloaded");

    let text = wait_for("an anomaly and the JWKS URL's failure", || {
        let text = agent.scrape();
        (text.contains("enforcer_anomalies_total{")
            && text.contains(r#"enforcer_credential_source_failures_total{kind="jwks_url",name="idp",reason="connect"}"#))
        .then_some(text)
    });
    assert_eq!(
        metric_value(
            &text,
            r#"enforcer_credential_source_last_attempt_successful{kind="jwks_url",name="idp"}"#
        ),
        Some(0.0),
        "{text}"
    );
    assert!(
        metric_value(
            &text,
            r#"enforcer_credential_source_last_success_timestamp_seconds{kind="inject_file",name="probe-injected"}"#
        )
        .is_some_and(|t| t > 0.0),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "enforcer_policy_last_reload_successful"),
        Some(1.0)
    );
    let exported = exported_families(&text);
    let documented = documented_families();
    let undocumented: Vec<_> = exported.difference(&documented).collect();
    let missing: Vec<_> = documented.difference(&exported).collect();
    assert!(
        undocumented.is_empty() && missing.is_empty(),
        "exported, not in docs/metrics.md (or another type): {undocumented:?}\n\
         documented, not exported: {missing:?}\n{text}"
    );
}
