//! Anomaly detection through the real redirect: each kind provoked by real clients (a burst,
//! failed keys, denied calls, a new endpoint, a key from a second identity, a replaced binary),
//! seen as a warn event, as exactly one audit record per episode, and in the agent's
//! `enforcer_anomalies_total` counter.

use std::{
    fs,
    io::Write as _,
    net::SocketAddr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Stdio,
};

use enforcer_tests::{
    Agent, Cgroup, HttpUpstream, cgroup_scoped_temp, metric_value, privileged, probe_binary,
    send_raw_with, sha256_hex, wait_for,
};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// The API key the `ops-key` credential accepts.
const KEY: &str = "k3y-for-anomaly-tests-0123456789";
const NOBODY: Option<(u32, u32)> = Some((65534, 65534));

/// `worker` is the probe as root, `night-worker` the probe as nobody, `mover` whatever binary
/// sits at `mover`. `/v1/*` is readable by all three and writable by `worker`; `/keyed/*`
/// needs the API key. Only the detectors in `anomalies` have test-sized thresholds.
fn policy(upstream: SocketAddr, audit: &Path, mover: &Path, anomalies: &str) -> String {
    let probe = fs::canonicalize(probe_binary()).unwrap();
    let digest: String = Sha256::digest(KEY)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        r#"version: 1
settings:
  audit: {{file: {audit}}}
  anomalies:
{anomalies}
identities:
  worker: {{exe: {probe}, user: root}}
  night-worker: {{exe: {probe}, user: nobody}}
  mover: {{exe: {mover}}}
credentials:
  ops-key:
    kind: apiKey
    header: x-api-key
    keys:
      - {{name: ops, sha256: {digest}}}
services:
  api:
    endpoints: ["{upstream}"]
rules:
  - id: read
    from: [worker, night-worker, mover]
    to: api
    methods: [GET]
    paths: ["/v1/*"]
  - id: write
    from: [worker]
    to: api
    methods: [POST]
    paths: ["/v1/*"]
  - id: keyed
    from: ["*"]
    to: api
    methods: [GET]
    paths: ["/keyed/*"]
    require: {{credential: ops-key}}
"#,
        audit = audit.display(),
        probe = probe.display(),
        mover = mover.display(),
    )
}

/// One test's agent, upstream and audit trail.
struct Setup {
    cgroup: Cgroup,
    upstream: HttpUpstream,
    audit: PathBuf,
    mover: PathBuf,
    agent: Agent,
}

impl Setup {
    fn start(anomalies: &str) -> Self {
        let upstream = HttpUpstream::start("127.0.0.1:0");
        let cgroup = Cgroup::new();
        let audit = cgroup_scoped_temp(&cgroup, "audit.jsonl");
        let mover = cgroup_scoped_temp(&cgroup, "mover");
        let policy = policy(upstream.addr(), &audit, &mover, anomalies);
        let agent = Agent::start(&cgroup, &policy);
        Self {
            cgroup,
            upstream,
            audit,
            mover,
            agent,
        }
    }

    /// Send `count` pipelined requests `head` (one connection) from the probe as `user`, and
    /// check that each is answered `status`.
    fn send(&self, user: Option<(u32, u32)>, head: &str, count: usize, status: u16) {
        let request = format!("{head}\r\nhost: api\r\n\r\n").repeat(count);
        let report = send_raw_with(
            &self.cgroup,
            user,
            self.upstream.addr(),
            request.as_bytes(),
            false,
        );
        let text = report["response"].as_str().unwrap_or_default();
        assert_eq!(
            text.matches(&format!("HTTP/1.1 {status} ")).count(),
            count,
            "{head}: {report}"
        );
    }

    /// Wait for the `anomaly` warn event of `kind` for `identity`, then for its audit record
    /// and for `enforcer_anomalies_total` to count it (the same tick writes both, but a scrape
    /// may land before it); return the record.
    fn expect_anomaly(&mut self, kind: &str, identity: &str) -> Value {
        let event = self
            .agent
            .wait_event(&format!("a {kind} anomaly of {identity}"), |e| {
                e["event"] == "anomaly" && e["kind"] == kind && e["identity"] == identity
            });
        assert_eq!(event["level"], "WARN", "{event}");
        assert!(
            event["explanation"]
                .as_str()
                .is_some_and(|x| x.contains(identity)),
            "{event}"
        );
        let record = wait_for(&format!("the {kind} audit record"), || {
            anomalies(&self.audit)
                .into_iter()
                .find(|r| r["kind"] == kind && r["identity"] == identity)
        });
        // The exposition sorts labels by name.
        let series = format!(r#"enforcer_anomalies_total{{identity="{identity}",kind="{kind}"}}"#);
        wait_for(&format!("{series} to count it"), || {
            metric_value(&self.agent.scrape(), &series).filter(|&n| n >= 1.0)
        });
        record
    }

    /// Stop the agent (flushing the audit trail) and return every anomaly record.
    fn finish(mut self) -> Vec<Value> {
        self.agent.stop();
        anomalies(&self.audit)
    }
}

/// The anomaly records of an audit trail so far.
fn anomalies(audit: &Path) -> Vec<Value> {
    fs::read_to_string(audit)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["record"] == "anomaly")
        .collect()
}

/// `(kind, identity)` of each record.
fn kinds(records: &[Value]) -> Vec<(String, String)> {
    records
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap().to_owned(),
                r["identity"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pair(kind: &str, identity: &str) -> (String, String) {
    (kind.to_owned(), identity.to_owned())
}

#[test]
fn a_request_burst_is_one_record_with_its_threshold_and_baseline() {
    if !privileged() {
        return;
    }
    // However the 100 requests fall into 1 s windows, one window reaches 2x the one before
    // it and 20: one episode.
    let mut s = Setup::start("    requestBurst: {window: 1s, factor: 2, minCount: 20}");
    s.send(None, "GET /v1/items HTTP/1.1", 100, 200);
    let record = s.expect_anomaly("request_burst", "worker");
    let observed = record["observed"].as_u64().unwrap();
    let threshold = record["threshold"].as_u64().unwrap();
    // At least minCount and above factor x the baseline of the windows before.
    let baseline = record["baseline"].as_f64().unwrap();
    assert_eq!(
        threshold,
        20.max((2.0 * baseline).floor() as u64 + 1),
        "{record}"
    );
    assert!(observed >= threshold, "{record}");
    assert_eq!(record["window_s"], 1.0, "{record}");
    assert!(
        record["explanation"]
            .as_str()
            .unwrap()
            .starts_with(&format!("worker: {observed} requests in 1 s")),
        "{record}"
    );
    assert_eq!(s.finish().len(), 1, "one record per episode");
}

#[test]
fn failed_keys_are_an_auth_failure_burst() {
    if !privileged() {
        return;
    }
    let mut s = Setup::start(
        "    authFailureBurst: {window: 1s, factor: 2, minCount: 10}\n    denySpike: {enabled: false}",
    );
    let wrong = "GET /keyed/1 HTTP/1.1\r\nx-api-key: not-the-key";
    s.send(None, wrong, 40, 401);
    let record = s.expect_anomaly("auth_failure_burst", "worker");
    assert!(record["observed"].as_u64().unwrap() >= 10, "{record}");
    assert!(
        record["explanation"]
            .as_str()
            .unwrap()
            .contains("authentication failures"),
        "{record}"
    );
    assert_eq!(kinds(&s.finish()), [pair("auth_failure_burst", "worker")]);
}

#[test]
fn denied_calls_are_a_deny_spike() {
    if !privileged() {
        return;
    }
    let mut s = Setup::start("    denySpike: {window: 1s, factor: 2, minCount: 10}");
    // `night-worker` may read, not write.
    s.send(NOBODY, "POST /v1/items HTTP/1.1", 40, 403);
    let record = s.expect_anomaly("deny_spike", "night-worker");
    assert!(record["observed"].as_u64().unwrap() >= 10, "{record}");
    assert!(s.upstream.requests().is_empty());
    assert_eq!(kinds(&s.finish()), [pair("deny_spike", "night-worker")]);
}

#[test]
fn a_new_endpoint_after_learning_is_reported_once() {
    if !privileged() {
        return;
    }
    let mut s = Setup::start("    newEndpoint: {learning: 1s}");
    s.send(None, "GET /v1/items HTTP/1.1", 2, 200);
    s.agent.wait_event("worker's learning window over", |e| {
        e["event"] == "endpoints_learned" && e["identity"] == "worker"
    });
    // Known: nothing. New: the `write` rule, and a request no rule allows.
    s.send(None, "GET /v1/items HTTP/1.1", 2, 200);
    s.send(None, "POST /v1/items HTTP/1.1", 3, 200);
    s.send(None, "DELETE /v1/items HTTP/1.1", 3, 403);
    let record = s.expect_anomaly("new_endpoint", "worker");
    assert_eq!(record["service"], "api", "{record}");
    assert_eq!(record["window_s"], 1.0, "{record}");
    assert!(record["request_id"].is_string(), "{record}");
    let records = s.finish();
    let endpoints: Vec<_> = records
        .iter()
        .map(|r| (r["kind"].as_str().unwrap(), r["endpoint"].as_str().unwrap()))
        .collect();
    assert_eq!(
        endpoints,
        [("new_endpoint", "write"), ("new_endpoint", "unmatched")]
    );
}

#[test]
fn a_key_used_by_a_second_identity_is_token_reuse() {
    if !privileged() {
        return;
    }
    let mut s = Setup::start("    tokenReuse: {enabled: true}");
    let keyed = format!("GET /keyed/1 HTTP/1.1\r\nx-api-key: {KEY}");
    s.send(None, &keyed, 2, 200);
    s.send(NOBODY, &keyed, 3, 200);
    let record = s.expect_anomaly("token_reuse", "night-worker");
    assert_eq!(record["baseline"], "worker", "{record}");
    // The key is named by the fingerprint the decision records carry, never by value.
    let decisions: Vec<Value> = fs::read_to_string(&s.audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &Value| r["credential"].is_object())
        .collect();
    assert!(!decisions.is_empty());
    assert_eq!(
        record["fingerprint"], decisions[0]["credential"]["fingerprint"],
        "{record}"
    );
    // The first identity using it again is no anomaly.
    s.send(None, &keyed, 1, 200);
    let log = s.agent.log_text();
    let records = s.finish();
    assert_eq!(kinds(&records), [pair("token_reuse", "night-worker")]);
    assert!(!log.contains(KEY), "key in the log");
    assert!(!records.iter().any(|r| r.to_string().contains(KEY)));
}

#[test]
fn a_replaced_binary_is_binary_changed() {
    if !privileged() {
        return;
    }
    let mut s = Setup::start("    binaryChanged: {enabled: true}");
    // `mover` is a copy of the probe; then the same probe with bytes appended (ignored by the
    // loader, but another SHA-256), renamed over it as a package upgrade does.
    let probe = fs::read(probe_binary()).unwrap();
    install(&s.mover, &probe);
    let before = sha256_hex(&s.mover);
    assert_eq!(send_from(&s.cgroup, &s.mover, s.upstream.addr()), "200");
    assert_eq!(send_from(&s.cgroup, &s.mover, s.upstream.addr()), "200");
    install(&s.mover, &[&probe[..], b"replaced"].concat());
    let after = sha256_hex(&s.mover);
    assert_ne!(before, after);
    assert_eq!(send_from(&s.cgroup, &s.mover, s.upstream.addr()), "200");
    let record = s.expect_anomaly("binary_changed", "mover");
    assert_eq!(record["baseline"], before, "{record}");
    assert_eq!(record["observed"], after, "{record}");
    assert_eq!(record["exe"], s.mover.to_str().unwrap(), "{record}");
    // The new digest is the one known now.
    assert_eq!(send_from(&s.cgroup, &s.mover, s.upstream.addr()), "200");
    assert_eq!(kinds(&s.finish()), [pair("binary_changed", "mover")]);
}

/// Write `bytes` as an executable at `path`, by rename (a running binary cannot be written).
fn install(path: &Path, bytes: &[u8]) {
    let staged = path.with_extension("new");
    fs::write(&staged, bytes).unwrap();
    fs::set_permissions(&staged, fs::Permissions::from_mode(0o755)).unwrap();
    fs::rename(&staged, path).unwrap();
}

/// One GET from the probe binary at `exe`; returns the status code.
fn send_from(cgroup: &Cgroup, exe: &Path, to: SocketAddr) -> String {
    let mut child = cgroup
        .command(exe)
        .args(["send", &to.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the moved probe");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET /v1/items HTTP/1.1\r\nhost: api\r\n\r\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let response = report["response"].as_str().unwrap_or_default();
    response
        .split(' ')
        .nth(1)
        .unwrap_or("no response")
        .to_owned()
}
