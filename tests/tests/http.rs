//! Least-privilege HTTP enforcement through the real kernel redirect: per-request decisions
//! over identities, methods and paths; smuggling and path-escape attempts; the HTTP desync
//! corpus over the wire; reload under load; the audit trail.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
};

use enforcer_tests::{
    Agent, Cgroup, HttpUpstream, cgroup_scoped_temp, privileged, probe_binary, send_raw,
    send_raw_with, wait_for,
};
use serde_json::Value;

/// A policy for `upstream` as service `api`: the probe may read invoices and reports; curl may
/// post releases; `nobody` may read /public; processes of `deploy-bot.service` may purge the
/// cache; `/ws` may be upgraded to WebSocket by the probe. `extra` is appended to `settings`.
fn policy(upstream: SocketAddr, settings: &str) -> String {
    let probe = fs::canonicalize(probe_binary()).unwrap();
    let curl = fs::canonicalize("/usr/bin/curl").unwrap();
    format!(
        r#"version: 1
settings:
  mode: enforce
{settings}
identities:
  probe:
    exe: {probe}
  curl:
    exe: {curl}
  nobody:
    user: nobody
  deploy-bot:
    systemdUnit: deploy-bot.service
services:
  api:
    endpoints: ["{upstream}"]
rules:
  - id: probe-reads
    from: [probe]
    to: api
    methods: [GET, HEAD]
    paths: ["/v1/invoices", "/v1/invoices/{{id}}", "/v1/reports/**"]
  - id: probe-posts-echo
    from: [probe]
    to: api
    methods: [POST, PUT]
    paths: ["/echo"]
  - id: probe-websocket
    from: [probe]
    to: api
    methods: [GET]
    paths: ["/ws"]
    websocket: true
  - id: curl-releases
    from: [curl]
    to: api
    methods: [POST, GET, HEAD]
    paths: ["/v1/releases/*", "/status/*", "/chunked", "/close", "/echo", "/bye", "/flaky"]
  - id: nobody-public
    from: [nobody]
    to: api
    methods: [GET]
    paths: ["/public/**"]
  - id: deploy-bot-purges
    from: [deploy-bot]
    to: api
    methods: [DELETE]
    paths: ["/v1/cache"]
"#,
        probe = probe.display(),
        curl = curl.display(),
    )
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: api\r\n\r\n").into_bytes()
}

/// The status codes of every response in `text`, in order.
fn statuses(text: &str) -> Vec<u16> {
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

fn response(report: &Value) -> &str {
    report["response"].as_str().unwrap_or("")
}

/// Send `bytes` from a probe (as root, or as `user`) in `cgroup`; return what came back.
fn send_as(cgroup: &Cgroup, user: Option<(u32, u32)>, to: SocketAddr, bytes: &[u8]) -> String {
    response(&send_raw_with(cgroup, user, to, bytes, false)).to_string()
}

#[test]
fn allow_deny_matrix_over_identities_methods_and_paths() {
    if !privileged() {
        return;
    }
    let upstream = HttpUpstream::start("127.0.0.1:0");
    let cgroup = Cgroup::new();
    let bot = cgroup.child("deploy-bot.service");
    let _agent = Agent::start(&cgroup, &policy(upstream.addr(), ""));
    const NOBODY: Option<(u32, u32)> = Some((65534, 65534));
    let u = upstream.addr();

    // (who, cgroup, run as, method, path, expected status)
    type Case<'a> = (
        &'a str,
        &'a Cgroup,
        Option<(u32, u32)>,
        &'a str,
        &'a str,
        u16,
    );
    let cases: &[Case] = &[
        ("probe", &cgroup, None, "GET", "/v1/invoices", 200),
        ("probe", &cgroup, None, "GET", "/v1/invoices/42", 200),
        ("probe", &cgroup, None, "HEAD", "/v1/invoices/42", 200),
        ("probe", &cgroup, None, "GET", "/v1/invoices/42/items", 403),
        ("probe", &cgroup, None, "DELETE", "/v1/invoices/42", 403),
        ("probe", &cgroup, None, "GET", "/v1/reports/2026/q3", 200),
        ("probe", &cgroup, None, "GET", "/v1/reports", 200),
        (
            "probe",
            &cgroup,
            None,
            "GET",
            "/v1/invoices?admin=true",
            200,
        ),
        ("probe", &cgroup, None, "GET", "/admin", 403),
        ("probe", &cgroup, None, "POST", "/v1/releases/7", 403),
        ("probe", &cgroup, None, "GET", "/public/a", 403),
        ("nobody", &cgroup, NOBODY, "GET", "/public/a", 200),
        // As nobody, the probe is still the probe (its exe): identities add up.
        ("nobody", &cgroup, NOBODY, "GET", "/v1/invoices", 200),
        ("nobody", &cgroup, NOBODY, "DELETE", "/v1/invoices/1", 403),
        ("deploy-bot", &bot, None, "DELETE", "/v1/cache", 200),
        ("deploy-bot", &bot, None, "DELETE", "/v1/cache/x", 403),
    ];
    for &(who, cg, user, method, path, want) in cases {
        let before = upstream.requests().len();
        let text = send_as(
            cg,
            user,
            u,
            format!("{method} {path} HTTP/1.1\r\nhost: api\r\n\r\n").as_bytes(),
        );
        assert_eq!(
            statuses(&text).first(),
            Some(&want),
            "{who} {method} {path}: {text}"
        );
        let reached = upstream.requests().len() > before;
        assert_eq!(
            reached,
            want == 200,
            "{who} {method} {path}: upstream reached"
        );
        if want == 403 {
            let body: Value = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap())
                .expect("JSON 403 body");
            assert_eq!(body["error"], "forbidden");
            assert!(body["request_id"].as_str().is_some_and(|s| !s.is_empty()));
        }
    }

    // curl, a different binary, is held to its own rules.
    let out = cgroup
        .command("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} ",
        ])
        .arg(format!("http://{u}/v1/invoices"))
        .args(["-X", "POST"])
        .arg(format!("http://{u}/v1/releases/9"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403 200 ");
}

#[test]
fn one_keep_alive_connection_mixes_allowed_and_denied_requests() {
    if !privileged() {
        return;
    }
    let upstream = HttpUpstream::start("127.0.0.1:0");
    let cgroup = Cgroup::new();
    let _agent = Agent::start(&cgroup, &policy(upstream.addr(), ""));
    // Pipelined: all three are sent before any response is read.
    let mut bytes = get("/v1/invoices/1");
    bytes.extend_from_slice(b"DELETE /v1/invoices/1 HTTP/1.1\r\nhost: api\r\n\r\n");
    bytes.extend_from_slice(&get("/v1/reports/x/y"));
    let report = send_raw(&cgroup, upstream.addr(), &bytes);
    let text = response(&report);
    assert_eq!(statuses(text), vec![200, 403, 200], "{text}");
    let seen: Vec<String> = upstream
        .requests()
        .iter()
        .map(|r| r.target.clone())
        .collect();
    assert_eq!(seen, vec!["/v1/invoices/1", "/v1/reports/x/y"]);
    assert_eq!(upstream.connections(), 1, "one upstream connection, reused");
}

#[test]
fn request_smuggling_vectors_are_refused_before_the_upstream() {
    if !privileged() {
        return;
    }
    let upstream = HttpUpstream::start("127.0.0.1:0");
    let cgroup = Cgroup::new();
    let _agent = Agent::start(&cgroup, &policy(upstream.addr(), ""));
    // Each hides a request for /admin (denied) behind an allowed POST /echo.
    let smuggled = "GET /admin HTTP/1.1\r\nhost: api\r\n\r\n";
    let vectors: Vec<(&str, String)> = vec![
        (
            "CL.TE",
            format!(
                "POST /echo HTTP/1.1\r\nhost: api\r\ncontent-length: 6\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "TE.CL",
            format!(
                "POST /echo HTTP/1.1\r\nhost: api\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n5c\r\n{smuggled}\r\n0\r\n\r\n"
            ),
        ),
        (
            "TE.TE space before colon",
            format!(
                "POST /echo HTTP/1.1\r\nhost: api\r\ntransfer-encoding : chunked\r\ncontent-length: 4\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "TE.TE xchunked",
            format!(
                "POST /echo HTTP/1.1\r\nhost: api\r\ntransfer-encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "TE.TE duplicate",
            format!(
                "POST /echo HTTP/1.1\r\nhost: api\r\ntransfer-encoding: chunked\r\ntransfer-encoding: identity\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "TE.TE tab",
            format!(
                "POST /echo HTTP/1.1\r\nhost: api\r\ntransfer-encoding:\tchunked\r\ntransfer-encoding: x\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "TE.TE obs-fold",
            format!(
                "POST /echo HTTP/1.1\r\nhost: api\r\ntransfer-encoding:\r\n chunked\r\ncontent-length: 3\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "duplicate content-length",
            format!(
                "POST /echo HTTP/1.1\r\nhost: api\r\ncontent-length: 0\r\ncontent-length: {}\r\n\r\n{smuggled}",
                smuggled.len()
            ),
        ),
        (
            "content-length list",
            format!(
                "POST /echo HTTP/1.1\r\nhost: api\r\ncontent-length: 0, {}\r\n\r\n{smuggled}",
                smuggled.len()
            ),
        ),
        (
            "signed content-length",
            format!("POST /echo HTTP/1.1\r\nhost: api\r\ncontent-length: +0\r\n\r\n{smuggled}"),
        ),
        (
            "bare LF line ending",
            format!("POST /echo HTTP/1.1\nhost: api\ncontent-length: 0\n\n{smuggled}"),
        ),
        (
            "bare CR in a header",
            format!(
                "POST /echo HTTP/1.1\r\nhost: api\rx: y\r\ncontent-length: 0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "chunk size overflow",
            format!(
                "POST /echo HTTP/1.1\r\nhost: api\r\ntransfer-encoding: chunked\r\n\r\n1000000000000000000005\r\nhello\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "negative chunk size",
            format!(
                "POST /echo HTTP/1.1\r\nhost: api\r\ntransfer-encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "chunk size with 0x prefix",
            format!(
                "POST /echo HTTP/1.1\r\nhost: api\r\ntransfer-encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "chunk data longer than its size",
            format!(
                "POST /echo HTTP/1.1\r\nhost: api\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhello\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "bad chunk extension",
            format!(
                "POST /echo HTTP/1.1\r\nhost: api\r\ntransfer-encoding: chunked\r\n\r\n5;a\"b\r\nhello\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "GET with a body",
            format!(
                "GET /v1/invoices HTTP/1.1\r\nhost: api\r\ncontent-length: {}\r\n\r\n{smuggled}",
                smuggled.len()
            ),
        ),
    ];
    for (name, bytes) in vectors {
        let report = send_raw(&cgroup, upstream.addr(), bytes.as_bytes());
        let text = response(&report);
        let codes = statuses(text);
        assert!(
            !codes.contains(&200) || !text.contains("/admin"),
            "{name}: smuggled request answered: {text}"
        );
        assert_eq!(codes.last(), Some(&400), "{name}: want 400: {text}");
        assert_eq!(report["end"], "closed", "{name}: connection must close");
    }
    for r in upstream.requests() {
        assert!(!r.target.contains("admin"), "reached the upstream: {r:?}");
    }
    assert!(
        !upstream.raw_text().contains("/admin"),
        "smuggled bytes reached the upstream:\n{}",
        upstream.raw_text()
    );
}

#[test]
fn path_escapes_never_reach_a_denied_endpoint() {
    if !privileged() {
        return;
    }
    let upstream = HttpUpstream::start("127.0.0.1:0");
    let cgroup = Cgroup::new();
    let _agent = Agent::start(&cgroup, &policy(upstream.addr(), ""));
    let attempts = [
        "/v1/reports/../admin",
        "/v1/reports/./../admin",
        "/v1/reports/%2e%2e/admin",
        "/v1/reports/%2E%2E/admin",
        "/v1/reports/.%2e/admin",
        "/v1/reports%2f..%2fadmin",
        "/v1/reports/..%2fadmin",
        "//admin",
        "/v1/reports/..%00/admin",
        "/v1/reports/%00/../../admin",
        "/v1/reports\\..\\admin",
        "/v1/reports/%5c..%5cadmin",
        "/v1/reports/%c0%ae%c0%ae/admin",
        "/v1/reports/%e0%80%ae%e0%80%ae/admin",
        "/v1/reports/..;/admin",
        "/v1/reports/%252e%252e/admin",
        "/%61dmin",
        "/v1/reports/../../admin",
    ];
    for path in attempts {
        let report = send_raw(&cgroup, upstream.addr(), &get(path));
        let text = response(&report);
        let code = statuses(text).first().copied();
        assert!(
            matches!(code, Some(400 | 403)),
            "{path}: want 400 or 403, got {text}"
        );
    }
    // A control: an allowed path does reach it, normalised.
    let report = send_raw(&cgroup, upstream.addr(), &get("/v1/reports/a/./b/../c//d"));
    assert_eq!(statuses(response(&report)), vec![200]);
    let targets: Vec<String> = upstream
        .requests()
        .iter()
        .map(|r| r.target.clone())
        .collect();
    assert_eq!(targets, vec!["/v1/reports/a/c/d"]);
    assert!(!upstream.raw_text().contains("admin"));
}

/// One request of the HTTP desync corpus.
struct Case {
    file: String,
    name: String,
    tier: String,
    raw: Vec<u8>,
}

fn corpus() -> Vec<Case> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/http-desync");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut cases = Vec::new();
    for file in files {
        let text = fs::read_to_string(&file).unwrap();
        let docs: Vec<Value> =
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for c in docs {
            let s = |v: &Value| match v {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            let version = s(&c["version"]);
            let mut raw = format!("{} {}", s(&c["method"]), s(&c["uri"]));
            if !version.is_empty() {
                raw.push(' ');
                raw.push_str(&version);
            }
            raw.push_str("\r\n");
            let headers = c["headers"].as_array().cloned().unwrap_or_default();
            // The cases test framing, not Host: give HTTP/1.1 requests one.
            if version == "HTTP/1.1"
                && !headers
                    .iter()
                    .any(|h| s(&h["name"]).eq_ignore_ascii_case("host"))
            {
                raw.push_str("Host: corpus.example\r\n");
            }
            for h in &headers {
                raw.push_str(&format!("{}: {}\r\n", s(&h["name"]), s(&h["value"])));
            }
            raw.push_str("\r\n");
            cases.push(Case {
                file: file.file_name().unwrap().to_string_lossy().into_owned(),
                name: s(&c["name"]),
                tier: s(&c["expected"]["tier"]),
                raw: raw.into_bytes(),
            });
        }
    }
    cases
}

#[test]
fn http_desync_corpus_over_the_wire() {
    if !privileged() {
        return;
    }
    let upstream = HttpUpstream::start("127.0.0.1:0");
    let cgroup = Cgroup::new();
    // Everything is allowed, so only framing decides what reaches the upstream.
    let allow_all = format!(
        "version: 1\nservices:\n  api:\n    endpoints: [\"{}\"]\nrules:\n  - id: all\n    from: [\"*\"]\n    to: api\n    methods: [\"*\"]\n    paths: [\"/**\"]\n",
        upstream.addr()
    );
    let _agent = Agent::start(&cgroup, &allow_all);
    let cases = corpus();
    assert!(cases.len() > 150, "corpus read: {} cases", cases.len());
    let limits = enforcer::http::Limits::default();
    let mut refused = 0;
    let mut forwarded = 0;
    for case in &cases {
        let label = format!("{} / {} ({})", case.file, case.name, case.tier);
        let before = upstream.connections();
        let report = send_raw(&cgroup, upstream.addr(), &case.raw);
        let text = response(&report);
        let must_refuse = case.tier == "Severe" || case.tier == "Ambiguous";
        // What the agent decided, computed with the agent's own parser: the canonical head it
        // forwards, or nothing.
        let expected = match enforcer::http::parse_request(&case.raw, &limits) {
            Ok(Some((req, _))) => {
                let mut head = bytes::BytesMut::new();
                enforcer::http::write_request_head(&req, &mut head);
                Some(head.to_vec())
            }
            _ => None,
        };
        // Let a forwarded request land before looking at the upstream: the client is done, so
        // the agent closes its upstream connection, which the upstream then reads to its end.
        if expected.is_some() {
            wait_for(&format!("{label} to reach the upstream"), || {
                (upstream.connections() > before && upstream.open_connections() == 0).then_some(())
            });
        }
        let reached: Vec<u8> = upstream
            .raw_connections()
            .get(before..)
            .map(|c| c.concat())
            .unwrap_or_default();
        match expected {
            None => {
                assert_eq!(
                    statuses(text).first(),
                    Some(&400),
                    "{label}: want 400: {text}"
                );
                assert_eq!(report["end"], "closed", "{label}: connection must close");
                assert!(reached.is_empty(), "{label}: reached the upstream");
                refused += 1;
            }
            Some(head) => {
                assert!(!must_refuse, "{label}: a {} case was forwarded", case.tier);
                assert_eq!(
                    String::from_utf8_lossy(&reached),
                    String::from_utf8_lossy(&head),
                    "{label}: the upstream got something other than what was decided on"
                );
                forwarded += 1;
            }
        }
    }
    eprintln!("desync corpus: {refused} refused with 400, {forwarded} forwarded canonically");
}

fn reloads(agent: &Agent) -> usize {
    agent
        .events()
        .iter()
        .filter(|e| e["event"] == "policy_reloaded")
        .count()
}

#[test]
fn reload_under_load_loses_no_request_and_a_broken_policy_changes_nothing() {
    if !privileged() {
        return;
    }
    let upstream = HttpUpstream::start("127.0.0.1:0");
    let cgroup = Cgroup::new();
    let mut agent = Agent::start(&cgroup, &policy(upstream.addr(), ""));
    let file = agent.policy_file().to_path_buf();
    // Keep-alive requests, back to back, for the whole run of reloads below.
    let mut load = cgroup
        .command(probe_binary())
        .args(["get-loop", &upstream.addr().to_string(), "/v1/invoices/1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the load");
    // After each reload, a request of the load reaches the upstream: the reload happened
    // under load, however slowly the machine runs.
    let load_after = |what: &str| {
        let seen = upstream.requests().len();
        wait_for(&format!("the load after {what}"), || {
            (upstream.requests().len() > seen).then_some(())
        });
    };
    // Each version still allows the load; odd ones are announced with SIGHUP, even ones
    // found by the file watch.
    for n in 0..4 {
        let before = reloads(&agent);
        let extra = format!(
            "  - id: extra-{n}\n    from: [curl]\n    to: api\n    methods: [GET]\n    paths: [\"/extra/{n}\"]\n"
        );
        fs::write(&file, policy(upstream.addr(), "") + &extra).unwrap();
        if n % 2 == 1 {
            // SAFETY: plain syscall on our own child.
            unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
        }
        wait_for(&format!("reload {n}"), || {
            (reloads(&agent) > before).then_some(())
        });
        load_after(&format!("reload {n}"));
    }
    fs::write(&file, "version: 1\nservices: {{{ broken").unwrap();
    agent.wait_event("the broken policy is refused", |e| {
        e["event"] == "policy_rejected"
    });
    load_after("the broken policy");
    drop(load.stdin.take());
    let out = load.wait_with_output().expect("load ends");
    assert!(out.status.success(), "load: {out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("load report");
    assert_eq!(report["failures"], 0, "{report}");
    assert!(report["statuses"]["200"].as_u64().unwrap() >= 5, "{report}");
    assert_eq!(
        report["statuses"].as_object().unwrap().len(),
        1,
        "only 200s: {report}"
    );

    // The last good policy is still in force.
    let text = send_as(&cgroup, None, upstream.addr(), &get("/v1/invoices/2"));
    assert_eq!(statuses(&text), vec![200]);
    // And a valid change applies to new requests.
    let before = reloads(&agent);
    fs::write(
        &file,
        policy(upstream.addr(), "").replace("\"/v1/invoices/{id}\", ", ""),
    )
    .unwrap();
    wait_for("the last reload", || {
        (reloads(&agent) > before).then_some(())
    });
    let text = send_as(&cgroup, None, upstream.addr(), &get("/v1/invoices/2"));
    assert_eq!(statuses(&text), vec![403]);
}

#[test]
fn every_decision_is_audited_and_no_secret_is_written_anywhere() {
    if !privileged() {
        return;
    }
    let upstream = HttpUpstream::start("127.0.0.1:0");
    let cgroup = Cgroup::new();
    let audit_file = cgroup_scoped_temp(&cgroup, "audit.jsonl");
    let settings = format!(
        "  audit:\n    file: {}\n    maxBytes: 1048576\n    keep: 2\n",
        audit_file.display()
    );
    let mut agent = Agent::start(&cgroup, &policy(upstream.addr(), &settings));
    let secrets = ["s3cr3t-bearer-token", "s3cr3t-cookie", "s3cr3t-query"];
    let request = |path: &str| {
        format!(
            "GET {path}?api_key={} HTTP/1.1\r\nhost: api\r\nauthorization: Bearer {}\r\ncookie: session={}\r\n\r\n",
            secrets[2], secrets[0], secrets[1]
        )
    };
    let mut bytes = request("/v1/invoices/7").into_bytes();
    bytes.extend_from_slice(request("/admin").as_bytes());
    bytes.extend_from_slice(b"GET /bad%2fpath HTTP/1.1\r\nhost: api\r\n\r\n");
    let report = send_raw(&cgroup, upstream.addr(), &bytes);
    assert_eq!(statuses(response(&report)), vec![200, 403, 400]);
    // The credential was forwarded to the upstream, which is the application's business.
    assert_eq!(
        upstream.requests()[0].header("authorization"),
        Some(&*format!("Bearer {}", secrets[0]))
    );

    agent.stop();
    let text = fs::read_to_string(&audit_file).unwrap();
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 3, "{text}");
    let (allow, deny, reject) = (&records[0], &records[1], &records[2]);
    assert_eq!(allow["decision"], "allow");
    assert_eq!(allow["rule"], "probe-reads");
    assert_eq!(allow["status"], 200);
    assert_eq!(allow["path"], "/v1/invoices/7");
    assert_eq!(allow["method"], "GET");
    assert_eq!(allow["service"], "api");
    assert_eq!(allow["destination"], upstream.addr().to_string());
    assert_eq!(allow["identities"], serde_json::json!(["probe"]));
    assert_eq!(allow["caller"]["tgid"], report["pid"]);
    assert!(allow["caller"]["sha256"].as_str().is_some());
    assert!(allow["response_bytes"].as_u64().unwrap() > 0);
    assert!(allow["added_latency_us"].is_u64());
    assert_eq!(deny["decision"], "deny");
    assert_eq!(deny["status"], 403);
    assert_eq!(deny["reason"], "no matching rule");
    assert_eq!(reject["decision"], "reject");
    assert_eq!(reject["status"], 400);
    let ids: Vec<&str> = records
        .iter()
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    assert!(ids[0] != ids[1] && ids[1] != ids[2], "{ids:?}");

    let log = agent.log_text();
    for secret in secrets {
        assert!(!text.contains(secret), "{secret} in the audit file");
        assert!(!log.contains(secret), "{secret} in the agent's log");
    }
    let _ = fs::remove_file(audit_file);
}

#[test]
fn non_http_bytes_are_refused_with_a_clear_audit_reason() {
    if !privileged() {
        return;
    }
    let upstream = HttpUpstream::start("127.0.0.1:0");
    let cgroup = Cgroup::new();
    let audit_file = cgroup_scoped_temp(&cgroup, "audit.jsonl");
    let settings = format!("  audit:\n    file: {}\n", audit_file.display());
    let mut agent = Agent::start(&cgroup, &policy(upstream.addr(), &settings));
    // The start of a TLS ClientHello, and the HTTP/2 connection preface.
    let hello: &[u8] = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
    let preface: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    for bytes in [hello, preface] {
        let report = send_raw(&cgroup, upstream.addr(), bytes);
        assert_eq!(
            response(&report),
            "",
            "no HTTP/1.1 answer to a non-HTTP client"
        );
        assert_eq!(report["end"], "closed");
    }
    assert_eq!(upstream.connections(), 0);
    agent.stop();
    let text = fs::read_to_string(&audit_file).unwrap();
    let details: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|r| format!("{} {}", r["reason"], r["detail"]))
        .collect();
    assert_eq!(
        details,
        vec![
            "\"not http/1.x\" \"not HTTP/1.x: tls\"",
            "\"not http/1.x\" \"not HTTP/1.x: http2\""
        ]
    );
    let _ = fs::remove_file(audit_file);
}

#[test]
fn a_slow_head_times_out_with_408() {
    if !privileged() {
        return;
    }
    let upstream = HttpUpstream::start("127.0.0.1:0");
    let cgroup = Cgroup::new();
    let settings = "  limits:\n    headTimeout: 1s\n";
    let _agent = Agent::start(&cgroup, &policy(upstream.addr(), settings));
    // Half a head, then nothing (the probe keeps the connection open).
    let half = b"GET /v1/invoices HTTP/1.1\r\nhost: api\r\n";
    let report = send_raw_with(&cgroup, None, upstream.addr(), half, true);
    assert_eq!(statuses(response(&report)), vec![408], "{report}");
    assert_eq!(report["end"], "closed");
    assert_eq!(upstream.connections(), 0);
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    if !privileged() {
        return;
    }
    let upstream = HttpUpstream::start("127.0.0.1:0");
    let cgroup = Cgroup::new();
    let settings = "  limits:\n    idleTimeout: 1s\n";
    let _agent = Agent::start(&cgroup, &policy(upstream.addr(), settings));
    // One complete request, then silence on an open connection: the probe would wait 30 s,
    // the agent closes after 1 s.
    let report = send_raw_with(&cgroup, None, upstream.addr(), &get("/v1/invoices"), true);
    assert_eq!(statuses(response(&report)), vec![200], "{report}");
    assert_eq!(
        report["end"], "closed",
        "closed by the agent, not timed out: {report}"
    );
}

#[test]
fn responses_are_framed_correctly_for_every_kind_of_body() {
    if !privileged() {
        return;
    }
    let upstream = HttpUpstream::start("127.0.0.1:0");
    let cgroup = Cgroup::new();
    let _agent = Agent::start(&cgroup, &policy(upstream.addr(), ""));
    let u = upstream.addr();
    // One curl, one keep-alive connection, several framings in a row.
    let out = cgroup
        .command("curl")
        .args(["-sS", "--max-time", "20", "-w", "[%{http_code}]\n"])
        .arg(format!("http://{u}/status/204"))
        .arg(format!("http://{u}/status/304"))
        .arg(format!("http://{u}/chunked"))
        // `--next` starts an operation with fresh options: each gets its own time bound.
        .args([
            "--next",
            "-sS",
            "--max-time",
            "20",
            "-I",
            "-w",
            "[%{http_code}]\n",
        ])
        .arg(format!("http://{u}/status/200"))
        .args([
            "--next",
            "-sS",
            "--max-time",
            "20",
            "-w",
            "[%{http_code}]\n",
        ])
        .arg(format!("http://{u}/close"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.starts_with("[204]\n[304]\nhello world[200]\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("HTTP/1.1 200 Status"),
        "HEAD response: {stdout}"
    );
    assert!(stdout.ends_with("until close[200]\n"), "{stdout}");

    // An upstream that drops a keep-alive connection after its response: the next request on
    // the client's connection goes to a new upstream connection, not to a 502.
    let out = cgroup
        .command("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "-w",
            "[%{http_code} %{num_connects}]\n",
        ])
        .arg(format!("http://{u}/bye"))
        .arg(format!("http://{u}/bye"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "bye[200 1]\nbye[200 0]\n",
        "one client connection, both answered"
    );

    // Expect: 100-continue with a chunked body, through curl.
    let body = "x".repeat(100_000);
    let out = cgroup
        .command("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "-H",
            "Expect: 100-continue",
            "-H",
        ])
        .arg("Transfer-Encoding: chunked")
        .args(["--data-binary", &body])
        .arg(format!("http://{u}/echo"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout.len(), body.len());
    let last = upstream.requests().pop().unwrap();
    assert_eq!(last.body.len(), body.len());
    assert_eq!(last.header("transfer-encoding"), Some("chunked"));
}

/// curl's `-w` for one request: its status and how many connections it opened.
const STATUS_AND_CONNECTS: &str = "[%{http_code} %{num_connects}]\n";

#[test]
fn a_request_reset_unanswered_on_a_reused_connection_is_sent_again_only_when_safe() {
    if !privileged() {
        return;
    }
    let upstream = HttpUpstream::start("127.0.0.1:0");
    let cgroup = Cgroup::new();
    let audit_file = cgroup_scoped_temp(&cgroup, "audit.jsonl");
    let settings = format!("  audit:\n    file: {}\n", audit_file.display());
    let mut agent = Agent::start(&cgroup, &policy(upstream.addr(), &settings));
    let u = upstream.addr();
    // After `/flaky` the upstream still holds its connection open, so the agent reuses it for
    // the next request; the upstream reads that request and resets it unanswered. A GET
    // without a body is sent again on a new connection.
    let out = cgroup
        .command("curl")
        .args(["-sS", "--max-time", "20", "-w", STATUS_AND_CONNECTS])
        .arg(format!("http://{u}/flaky"))
        .arg(format!("http://{u}/status/200"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "flaky[200 1]\nstatus body[200 0]\n",
        "{out:?}"
    );
    let connections = upstream.raw_connections();
    assert_eq!(connections.len(), 2, "{}", upstream.raw_text());
    let second = String::from_utf8_lossy(&connections[1]);
    assert!(
        second.starts_with("GET /status/200 HTTP/1.1\r\n"),
        "{second}"
    );
    assert_eq!(
        second.matches(" HTTP/1.1\r\n").count(),
        1,
        "the new connection carried the request once: {second}"
    );

    // A POST with a body is not sent again: the upstream may have acted on it.
    let out = cgroup
        .command("curl")
        .args(["-sS", "--max-time", "20", "-w", STATUS_AND_CONNECTS])
        .arg(format!("http://{u}/flaky"))
        .args([
            "--next",
            "-sS",
            "--max-time",
            "20",
            "-w",
            STATUS_AND_CONNECTS,
            "--data-binary",
            "pay once",
        ])
        .arg(format!("http://{u}/echo"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "flaky[200 1]\n[502 0]\n",
        "{out:?}"
    );
    assert_eq!(upstream.connections(), 3, "{}", upstream.raw_text());
    let posts = upstream.requests();
    let posts: Vec<_> = posts.iter().filter(|r| r.method == "POST").collect();
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].body, b"pay once");

    agent.stop();
    let records: Vec<Value> = fs::read_to_string(&audit_file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |path: &str| -> Vec<&Value> { records.iter().filter(|r| r["path"] == path).collect() };
    let get = of("/status/200");
    assert_eq!(get.len(), 1, "one decision, one record: {get:?}");
    assert_eq!(get[0]["status"], 200);
    assert_eq!(get[0]["retried"], true, "{}", get[0]);
    let post = of("/echo");
    assert_eq!(post.len(), 1, "{post:?}");
    assert_eq!(post[0]["status"], 502);
    assert!(post[0].get("retried").is_none(), "{}", post[0]);
    let detail = post[0]["detail"].as_str().unwrap_or_default();
    assert!(
        detail.ends_with("not sent again on a new connection: POST is not idempotent"),
        "{detail}"
    );
    let _ = fs::remove_file(audit_file);
}

#[test]
fn websocket_upgrades_only_where_a_rule_allows_them() {
    if !privileged() {
        return;
    }
    let upstream = HttpUpstream::start("127.0.0.1:0");
    let cgroup = Cgroup::new();
    let _agent = Agent::start(&cgroup, &policy(upstream.addr(), ""));
    let upgrade = |path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nhost: api\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\nframes after the upgrade"
        )
    };
    let report = send_raw(&cgroup, upstream.addr(), upgrade("/ws").as_bytes());
    let text = response(&report);
    assert!(text.starts_with("HTTP/1.1 101 "), "{text}");
    assert!(
        text.ends_with("frames after the upgrade"),
        "tunnelled both ways: {text}"
    );
    // /v1/invoices is readable, but not upgradable.
    let report = send_raw(&cgroup, upstream.addr(), upgrade("/v1/invoices").as_bytes());
    assert_eq!(statuses(response(&report)).first(), Some(&403));
}
