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
            cgroup_id: 7,
            cgroup: None,
            unit: None,
            container: None,
        }),
        identities: Arc::from([]),
        service: "api".into(),
        destination: "127.0.0.1:80".into(),
        method: Some("POST".into()),
        path: Some("/admin".into()),
        status: Some(403),
        request_bytes: 0,
        response_bytes: 0,
        added_latency_us: 12,
        credential: None,
        injected: None,
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
    let audit = Audit::start(&AuditSink::File {
        path: path.clone(),
        max_bytes: 1 << 20,
        keep: 2,
    })
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
    let audit = Audit::start(&AuditSink::File {
        path: path.clone(),
        max_bytes: one * 3,
        keep: 2,
    })
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
    let Err(err) = Audit::start(&AuditSink::File {
        path: "/nonexistent-dir/audit.jsonl".into(),
        max_bytes: 1,
        keep: 1,
    }) else {
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
    let audit = Audit::start(&AuditSink::File {
        path: path.clone(),
        max_bytes: 1 << 20,
        keep: 1,
    })
    .unwrap();
    for n in 0..500 {
        audit.record(record(n));
    }
    assert!(audit.flush(Duration::from_secs(10)));
    // No waiting: flush has already seen them to the file.
    assert_eq!(fs::read_to_string(&path).unwrap().lines().count(), 500);
    fs::remove_dir_all(dir).unwrap();
}
