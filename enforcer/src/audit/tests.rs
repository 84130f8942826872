use std::time::{Duration, Instant};

use super::*;

fn record(n: u64) -> Record {
    Record {
        time: 1.5,
        request_id: format!("req-{n}"),
        decision: Verdict::Deny,
        rule: None,
        mode: "enforce",
        reason: "no matching rule",
        detail: None,
        caller: Arc::new(Caller {
            tgid: 1,
            pid: 1,
            uid: 0,
            gid: 0,
            user: Some("root".into()),
            group: None,
            comm: "curl".into(),
            exe: Some("/usr/bin/curl".into()),
            sha256: None,
            exe_untrusted: None,
            traced: None,
            unresolved: None,
            cgroup_id: 7,
            cgroup: None,
            unit: None,
            container: None,
        }),
        identities: Arc::from([]),
        service: "api".into(),
        client: "127.0.0.1:40000".into(),
        destination: "127.0.0.1:80".into(),
        method: Some("POST".into()),
        path: Some("/admin".into()),
        status: Some(403),
        request_bytes: 0,
        response_bytes: 0,
        added_latency_us: 12,
        credential: None,
        injected: None,
        retried: false,
        auth_failure: None,
        upstream_error: None,
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("enforcer-audit-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn wait_written(audit: &Audit, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while audit.stats().written.load(Relaxed) < n {
        assert!(Instant::now() < deadline, "records not written");
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn one_json_line_per_record() {
    let dir = temp_dir("lines");
    let path = dir.join("audit.jsonl");
    let audit = Audit::start(
        &AuditSink::File {
            path: path.clone(),
            max_bytes: 1 << 20,
            keep: 2,
        },
        AuditFormat::Json,
    )
    .unwrap();
    audit.record(record(1));
    audit.record(record(2));
    wait_written(&audit, 2);
    let text = fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["request_id"], "req-1");
    assert_eq!(lines[0]["decision"], "deny");
    assert_eq!(lines[0]["caller"]["exe"], "/usr/bin/curl");
    assert_eq!(lines[1]["status"], 403);
    assert!(lines[0].get("rule").is_none(), "absent fields are omitted");
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn rotates_by_size_and_keeps_n_files() {
    let dir = temp_dir("rotate");
    let path = dir.join("audit.jsonl");
    let one = serde_json::to_vec(&record(0)).unwrap().len() as u64 + 1;
    let audit = Audit::start(
        &AuditSink::File {
            path: path.clone(),
            max_bytes: one * 3,
            keep: 2,
        },
        AuditFormat::Json,
    )
    .unwrap();
    for n in 0..10 {
        audit.record(record(n));
    }
    wait_written(&audit, 10);
    let count = |p: &Path| fs::read_to_string(p).map_or(0, |t| t.lines().count());
    // 10 records, 3 per file: .2 holds 3..6, .1 holds 6..9, the live file the last one.
    assert_eq!(count(&path), 1);
    assert_eq!(count(&numbered(&path, 1)), 3);
    assert_eq!(count(&numbered(&path, 2)), 3);
    assert!(!numbered(&path, 3).exists());
    let newest = fs::read_to_string(&path).unwrap();
    assert!(newest.contains("\"req-9\""), "{newest}");
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn an_unwritable_file_is_a_clear_error() {
    let Err(err) = Audit::start(
        &AuditSink::File {
            path: "/nonexistent-dir/audit.jsonl".into(),
            max_bytes: 1,
            keep: 1,
        },
        AuditFormat::Json,
    ) else {
        panic!("opened a file in a missing directory");
    };
    assert_eq!(
        format!("{err}: {}", std::error::Error::source(&err).unwrap()),
        "audit file /nonexistent-dir/audit.jsonl: cannot open: No such file or directory (os error 2)"
    );
}

#[test]
fn flush_returns_once_every_queued_record_is_written() {
    let dir = temp_dir("flush");
    let path = dir.join("audit.jsonl");
    let audit = Audit::start(
        &AuditSink::File {
            path: path.clone(),
            max_bytes: 1 << 20,
            keep: 1,
        },
        AuditFormat::Json,
    )
    .unwrap();
    for n in 0..500 {
        audit.record(record(n));
    }
    assert!(audit.flush(Duration::from_secs(10)));
    // No waiting: flush has already seen them to the file.
    assert_eq!(fs::read_to_string(&path).unwrap().lines().count(), 500);
    fs::remove_dir_all(dir).unwrap();
}

/// Counts what reaches it.
#[derive(Clone, Default)]
struct Counting {
    lines: Arc<AtomicU64>,
    flushes: Arc<AtomicU64>,
}

impl Sink for Counting {
    fn write_line(&mut self, _: &[u8]) -> io::Result<()> {
        self.lines.fetch_add(1, Relaxed);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flushes.fetch_add(1, Relaxed);
        Ok(())
    }
}

#[test]
fn a_burst_of_records_leaves_in_a_few_batches() {
    let sink = Counting::default();
    let audit = Audit::start_sink(Box::new(sink.clone()), AuditFormat::Json).unwrap();
    audit.record(record(0));
    wait_written(&audit, 1);
    let before = sink.flushes.load(Relaxed);
    for n in 1..=200 {
        audit.record(record(n));
    }
    assert!(audit.flush(Duration::from_secs(10)));
    assert_eq!(sink.lines.load(Relaxed), 201);
    // One write per record would be 200; a preempted sender may split the burst a few times.
    let batches = sink.flushes.load(Relaxed) - before;
    assert!(batches <= 10, "{batches} batches for 200 records");
}

// === OCSF ===

/// The OCSF API Activity requirements, vendored from the schema.
const OCSF_REQUIRED: &str = include_str!("tests/ocsf-api-activity.json");
const OCSF_FINDING_REQUIRED: &str = include_str!("tests/ocsf-detection-finding.json");

/// The value at `path` (`a.b.c`) in `v`.
fn at<'v>(v: &'v serde_json::Value, path: &str) -> Option<&'v serde_json::Value> {
    path.split('.').try_fold(v, |v, key| v.get(key))
}

/// Every violation of the vendored requirements by `event`.
fn ocsf_violations(event: &serde_json::Value) -> Vec<String> {
    violations(OCSF_REQUIRED, event)
}

/// What `event` lacks or gets wrong against `spec`, a vendored list of one OCSF class's rules.
fn violations(spec: &str, event: &serde_json::Value) -> Vec<String> {
    let spec: serde_json::Value = serde_json::from_str(spec).unwrap();
    let mut bad = Vec::new();
    for name in spec["event"]["required"].as_array().unwrap() {
        let name = name.as_str().unwrap();
        if event.get(name).is_none_or(serde_json::Value::is_null) {
            bad.push(format!("missing required `{name}`"));
        }
    }
    for (path, rules) in spec["objects"].as_object().unwrap() {
        let objects: Vec<&serde_json::Value> = match path.strip_suffix("[]") {
            Some(list) => at(event, list)
                .and_then(|l| l.as_array())
                .map(|l| l.iter().collect())
                .unwrap_or_default(),
            None => at(event, path).into_iter().collect(),
        };
        for object in objects {
            for name in rules["required"].as_array().into_iter().flatten() {
                let name = name.as_str().unwrap();
                if object.get(name).is_none() {
                    bad.push(format!("`{path}` lacks required `{name}`"));
                }
            }
            if let Some(any) = rules["at_least_one"].as_array()
                && !any
                    .iter()
                    .any(|n| object.get(n.as_str().unwrap()).is_some())
            {
                bad.push(format!("`{path}` has none of {any:?}"));
            }
        }
    }
    for path in spec["integer"].as_array().unwrap() {
        let path = path.as_str().unwrap();
        if let Some(v) = at(event, path)
            && !v.is_u64()
        {
            bad.push(format!("`{path}` is not an integer: {v}"));
        }
    }
    for path in spec["string"].as_array().unwrap() {
        let path = path.as_str().unwrap();
        if let Some(v) = at(event, path)
            && !v.is_string()
        {
            bad.push(format!("`{path}` is not a string: {v}"));
        }
    }
    if event["class_uid"] != spec["class_uid"] || event["category_uid"] != spec["category_uid"] {
        bad.push(format!("not class {}", spec["class_uid"]));
    }
    let activity = event["activity_id"].as_u64().unwrap_or(0);
    if spec["activity_id"].get(activity.to_string()).is_none() {
        bad.push(format!(
            "activity_id {activity} is not one of class {}",
            spec["class_uid"]
        ));
    }
    if event["type_uid"].as_u64() != Some(event["class_uid"].as_u64().unwrap_or(0) * 100 + activity)
    {
        bad.push("type_uid is not class_uid * 100 + activity_id".into());
    }
    bad
}

fn ocsf(record: &Record) -> serde_json::Value {
    serde_json::to_value(ocsf::ApiActivity::from(record)).unwrap()
}

#[test]
fn ocsf_events_carry_every_required_attribute() {
    let mut allowed = record(1);
    allowed.decision = Verdict::Allow;
    allowed.method = Some("GET".into());
    allowed.status = Some(200);
    allowed.rule = Some("reads".into());
    allowed.caller = Arc::new(Caller {
        sha256: Some("ab".repeat(32).into()),
        ..(*allowed.caller).clone()
    });
    // Refused before a head was read: no method, path or status.
    let mut timeout = record(2);
    timeout.decision = Verdict::Reject;
    (timeout.method, timeout.path, timeout.status) = (None, None, Some(408));
    let mut not_http = record(3);
    not_http.decision = Verdict::Reject;
    (not_http.method, not_http.path, not_http.status) = (None, None, None);
    // A caller whose user has no name and whose executable is unknown.
    let mut anonymous = record(4);
    anonymous.caller = Arc::new(Caller {
        user: None,
        exe: None,
        ..(*anonymous.caller).clone()
    });
    for r in [record(0), allowed, timeout, not_http, anonymous] {
        let event = ocsf(&r);
        assert_eq!(ocsf_violations(&event), Vec::<String>::new(), "{event:#}");
    }
}

#[test]
fn the_validator_catches_a_broken_event() {
    let mut event = ocsf(&record(0));
    event.as_object_mut().unwrap().remove("src_endpoint");
    event["actor"]["process"] = serde_json::json!({ "name": "curl" });
    event["type_uid"] = 600302.into();
    let violations = ocsf_violations(&event);
    assert_eq!(
        violations,
        [
            "missing required `src_endpoint`",
            "`actor.process` has none of [String(\"pid\"), String(\"uid\"), String(\"cpid\")]",
            "type_uid is not class_uid * 100 + activity_id",
        ],
    );
}

#[test]
fn ocsf_maps_the_record() {
    let mut r = record(7);
    r.decision = Verdict::Allow;
    r.method = Some("DELETE".into());
    r.path = Some("/v1/items/9".into());
    r.status = Some(204);
    r.rule = Some("cleanup".into());
    r.time = 1_700_000_000.25;
    let event = ocsf(&r);
    assert_eq!(event["class_uid"], 6003);
    assert_eq!(event["category_uid"], 6);
    assert_eq!(
        (&event["activity_id"], &event["activity_name"]),
        (&4.into(), &"Delete".into())
    );
    assert_eq!(event["type_uid"], 600304);
    assert_eq!(event["time"], 1_700_000_000_250u64);
    assert_eq!(event["actor"]["process"]["pid"], 1);
    assert_eq!(event["actor"]["process"]["name"], "curl");
    assert_eq!(event["actor"]["process"]["file"]["path"], "/usr/bin/curl");
    assert_eq!(event["actor"]["process"]["file"]["name"], "curl");
    assert_eq!(
        event["actor"]["user"],
        serde_json::json!({ "uid": "0", "name": "root" })
    );
    assert_eq!(
        event["src_endpoint"],
        serde_json::json!({ "ip": "127.0.0.1", "port": 40000 })
    );
    assert_eq!(
        event["dst_endpoint"],
        serde_json::json!({ "ip": "127.0.0.1", "port": 80, "svc_name": "api" })
    );
    assert_eq!(
        event["http_request"],
        serde_json::json!({ "http_method": "DELETE", "url": { "path": "/v1/items/9" } })
    );
    assert_eq!(event["http_response"]["code"], 204);
    assert_eq!(event["api"]["operation"], "DELETE");
    assert_eq!(event["api"]["service"]["name"], "api");
    assert_eq!(event["policy"]["uid"], "cleanup");
    assert_eq!(
        (&event["action_id"], &event["disposition_id"]),
        (&1.into(), &1.into())
    );
    assert_eq!(
        (&event["status_id"], &event["severity_id"]),
        (&1.into(), &1.into())
    );
    assert_eq!(event["metadata"]["uid"], "req-7");
    assert_eq!(event["metadata"]["product"]["name"], "enforcer");
    assert_eq!(event["unmapped"]["decision"], "allow");

    // A denial: blocked, failed, medium; methods map to CRUD or other.
    let denied = ocsf(&record(8));
    assert_eq!(
        (&denied["action"], &denied["disposition"]),
        (&"Denied".into(), &"Blocked".into())
    );
    assert_eq!(
        (&denied["status"], &denied["severity_id"]),
        (&"Failure".into(), &3.into())
    );
    assert_eq!(denied["activity_name"], "Create");
    for (method, id) in [
        ("GET", 2),
        ("HEAD", 2),
        ("PUT", 3),
        ("PATCH", 3),
        ("OPTIONS", 99),
    ] {
        let mut r = record(9);
        r.method = Some(method.into());
        assert_eq!(ocsf(&r)["activity_id"], id, "{method}");
    }
}

#[test]
fn ocsf_format_writes_one_event_per_line() {
    let dir = temp_dir("ocsf");
    let path = dir.join("audit.jsonl");
    let audit = Audit::start(
        &AuditSink::File {
            path: path.clone(),
            max_bytes: 1 << 20,
            keep: 1,
        },
        AuditFormat::Ocsf,
    )
    .unwrap();
    audit.record(record(1));
    audit.record(record(2));
    assert!(audit.flush(Duration::from_secs(10)));
    let text = fs::read_to_string(&path).unwrap();
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 2);
    assert_eq!(events[1]["metadata"]["uid"], "req-2");
    assert!(events.iter().all(|e| ocsf_violations(e).is_empty()));
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn anomalies_are_ocsf_detection_findings_with_every_required_attribute() {
    let anomaly = AnomalyRecord {
        time: 1_700_000_000.5,
        record: "anomaly",
        kind: "token_reuse",
        identity: "worker".into(),
        observed: Measure::Text("reporter".into()),
        threshold: None,
        baseline: Some(Measure::Text("worker".into())),
        window_s: None,
        explanation: "a key first used by `worker` was presented by `reporter`".into(),
        request_id: Some("0000000100000002".into()),
        service: Some("api".into()),
        endpoint: None,
        fingerprint: Some("fp1".into()),
        exe: None,
    };
    let event = serde_json::to_value(ocsf::DetectionFinding::from(&anomaly)).unwrap();
    assert_eq!(
        violations(OCSF_FINDING_REQUIRED, &event),
        Vec::<String>::new(),
        "{event:#}"
    );
    assert_eq!(event["class_uid"], 2004);
    assert_eq!(event["type_uid"], 200401);
    assert_eq!(event["time"], 1_700_000_000_500u64);
    assert_eq!(event["finding_info"]["types"][0], "token_reuse");
    assert_eq!(event["unmapped"]["identity"], "worker");
    // A finding without `finding_info` is caught.
    let mut broken = event.clone();
    broken.as_object_mut().unwrap().remove("finding_info");
    assert_eq!(
        violations(OCSF_FINDING_REQUIRED, &broken),
        ["missing required `finding_info`"]
    );
}
