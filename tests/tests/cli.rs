//! `enforcer check`, `explain`, `status` and `--version`: what an operator sees. Only
//! `status` needs a running agent (and privileges).

use std::{fs, path::Path, process::Command};

use enforcer_tests::{Agent, Cgroup, cgroup_scoped_temp, enforcer_binary, privileged};
use serde_json::{Value, json};

fn enforcer(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(enforcer_binary()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn example() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/policy.yaml").to_string()
}

#[test]
fn check_accepts_the_shipped_policy() {
    let (code, stdout, _) = enforcer(&["check", &example()]);
    assert_eq!(code, 0);
    assert!(stdout.ends_with(": ok (1 services, 1 rules)\n"), "{stdout}");
}

#[test]
fn check_lists_every_error_with_file_line_and_column() {
    let file = std::env::temp_dir().join(format!("enforcer-cli-{}.yaml", std::process::id()));
    fs::write(
        &file,
        r#"version: 1
identities:
  curl:
    exe: /usr/bin/curl
    sha256: abc
services:
  api:
    endpoints: ["127.0.0.1:18080"]
rules:
  - id: r1
    from: [curl, ghost]
    to: api
    methods: [GET, get]
    paths: ["/a/**/b", "no-slash"]
  - id: r1
    from: [curl]
    to: nowhere
    methods: [GET]
    paths: ["/x"]
"#,
    )
    .unwrap();
    let f = file.display().to_string();
    let (code, stdout, stderr) = enforcer(&["check", &f]);
    assert_eq!(code, 1);
    let want = [
        format!(
            "{f}:5:13: bad sha256 `abc`: expected 64 lower-case hex digits (as sha256sum prints)"
        ),
        format!("{f}:11:18: rule `r1`: unknown identity `ghost`"),
        format!("{f}:13:20: rule `r1`: bad method `get`: methods are case-sensitive: write `GET`"),
        format!("{f}:14:13: rule `r1`: bad path pattern `/a/**/b`: `**` must be the last segment"),
        format!("{f}:14:24: rule `r1`: bad path pattern `no-slash`: must start with `/`"),
        format!("{f}:15:9: duplicate rule id `r1` (first at line 10, column 9)"),
        format!("{f}:17:9: rule `r1`: unknown service `nowhere`"),
    ];
    assert_eq!(stdout.lines().collect::<Vec<_>>(), want);
    assert_eq!(stderr, format!("enforcer: error: 7 error(s) in {f}\n"));

    // The same for scripts: one JSON document, the same exit code.
    let (code, stdout, _) = enforcer(&["check", "--format", "json", &f]);
    assert_eq!(code, 1);
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["file"], f);
    assert_eq!(report["valid"], false);
    assert_eq!(report["services"], Value::Null);
    let errors = report["errors"].as_array().unwrap();
    assert_eq!(errors.len(), want.len());
    assert_eq!(
        errors[1],
        json!({"file": f, "line": 11, "column": 18, "message": "rule `r1`: unknown identity `ghost`"})
    );
    for (e, line) in errors.iter().zip(&want) {
        let text = format!(
            "{}:{}:{}: {}",
            e["file"].as_str().unwrap(),
            e["line"],
            e["column"],
            e["message"].as_str().unwrap()
        );
        assert_eq!(&text, line);
    }
    fs::remove_file(file).unwrap();
}

#[test]
fn check_json_reports_a_valid_policy_and_an_unreadable_file() {
    let (code, stdout, _) = enforcer(&["check", "--format", "json", &example()]);
    assert_eq!(code, 0);
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        report,
        json!({"file": example(), "valid": true, "services": 1, "rules": 1, "errors": [],
               "warnings": []})
    );
    let missing = "/nonexistent/enforcer-policy.yaml";
    let (code, stdout, _) = enforcer(&["check", "--format", "json", missing]);
    assert_eq!(code, 1);
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        report["errors"],
        json!([{"file": missing, "line": null, "column": null,
                "message": "cannot read: No such file or directory (os error 2)"}])
    );
}

#[test]
fn check_warns_of_open_doors_in_both_formats() {
    let file = std::env::temp_dir().join(format!("enforcer-cli-warn-{}.yaml", std::process::id()));
    fs::write(
        &file,
        r#"version: 1
identities:
  curl:
    exe: /usr/bin/curl
services:
  api:
    endpoints: ["127.0.0.1:18080"]
    failMode: open
rules:
  - {id: r1, from: [curl], to: api, methods: [GET], paths: ["/"]}
"#,
    )
    .unwrap();
    let f = file.display().to_string();
    let (code, stdout, _) = enforcer(&["check", &f]);
    assert_eq!(code, 0, "warnings do not fail the check");
    let first = stdout.lines().next().unwrap();
    assert!(
        first.starts_with(&format!("warning: {f}:8:15: ")) && first.contains("failMode: open"),
        "{stdout}"
    );
    let (code, stdout, _) = enforcer(&["check", "--format", "json", &f]);
    assert_eq!(code, 0);
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["valid"], true);
    assert_eq!(report["errors"], json!([]));
    let warnings = report["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{report}");
    assert_eq!(
        (&warnings[0]["line"], &warnings[0]["column"]),
        (&json!(8), &json!(15))
    );
    fs::remove_file(file).unwrap();
}

/// The commit the tree is at, as build.rs stamps it (`None` without git).
fn tree_commit() -> Option<String> {
    let out = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8(out.stdout).unwrap().trim().to_owned())
}

/// The commit `enforcer --version` names: `enforcer VERSION (COMMIT)`.
fn version_commit() -> String {
    let (code, stdout, _) = enforcer(&["--version"]);
    assert_eq!(code, 0);
    stdout
        .strip_prefix(concat!("enforcer ", env!("CARGO_PKG_VERSION"), " ("))
        .and_then(|v| v.strip_suffix(")\n"))
        .unwrap_or_else(|| panic!("{stdout:?}"))
        .to_owned()
}

#[test]
fn version_names_the_commit() {
    let version = version_commit();
    match tree_commit() {
        Some(head) => assert!(
            version == head || version == format!("{head}-dirty"),
            "--version says {version}, the tree is at {head} (rebuild after committing)"
        ),
        None => assert!(!version.is_empty()),
    }
}

/// `enforcer status` with `RUNTIME_DIRECTORY` as systemd would set it, and `args`.
fn status(runtime_dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(enforcer_binary())
        .arg("status")
        .args(args)
        .env("RUNTIME_DIRECTORY", runtime_dir)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// As in the DaemonSet: metrics on an address that is not the default (the pod IP there),
/// and `status` without a flag finds it.
#[test]
fn status_finds_the_running_agent_without_being_told_its_address() {
    if !privileged() {
        return;
    }
    let cgroup = Cgroup::new();
    let policy = fs::read_to_string(example()).unwrap();
    let mut agent = Agent::start_with(&cgroup, &policy, &["--metrics-addr", "127.0.0.9:0"]);
    let metrics = agent.metrics.unwrap();
    assert_eq!(metrics.ip().to_string(), "127.0.0.9");
    // The harness gives each agent this runtime directory.
    let run = cgroup_scoped_temp(&cgroup, "run");

    let (code, stdout, stderr) = status(&run, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("agent "), "{stdout}");
    assert!(stdout.contains("\nready              yes\n"), "{stdout}");
    assert!(
        stdout.contains(&format!("listeners          {}", agent.listen)),
        "{stdout}"
    );

    let (code, stdout, stderr) = status(&run, &["-o", "json"]);
    assert_eq!(code, 0, "{stderr}");
    let served: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(served["ready"], true);
    assert_eq!(served["version"], env!("CARGO_PKG_VERSION"));
    let listeners = served["agent"]["listeners"].as_array().unwrap();
    assert!(
        listeners.contains(&json!(agent.listen.to_string())),
        "{served}"
    );
    // The same commit in --version, /status and the build info metric.
    let commit = served["commit"].as_str().unwrap();
    assert_eq!(commit, version_commit());
    let build_info = format!(
        "enforcer_build_info{{commit=\"{commit}\",version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    assert!(
        agent.scrape().lines().any(|l| l == build_info),
        "{build_info}"
    );

    // --metrics-addr still overrides.
    let nowhere = cgroup_scoped_temp(&cgroup, "no-run");
    let (code, stdout, stderr) = status(&nowhere, &["--metrics-addr", &metrics.to_string()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("ready              yes"), "{stdout}");

    // Stopped, the agent leaves no address behind to mislead.
    agent.stop();
    let (code, _, stderr) = status(&run, &[]);
    assert_eq!(code, 1);
    assert!(
        stderr.starts_with(&format!(
            "enforcer: error: no running agent found: cannot read {}/agent.json",
            run.display()
        )),
        "{stderr}"
    );
}

#[test]
fn explain_says_which_rule_decides_and_why() {
    let curl = "/usr/bin/curl";
    let (code, stdout, _) = enforcer(&[
        "explain",
        "--policy",
        &example(),
        "--exe",
        curl,
        "GET",
        "http://127.0.0.1:18080/public/x",
    ]);
    assert_eq!(code, 0);
    let first = stdout.lines().next().unwrap();
    assert!(
        first.starts_with("decision:   allow by rule `curl-reads-public`"),
        "{stdout}"
    );
    let (_, stdout, _) = enforcer(&[
        "explain",
        "--policy",
        &example(),
        "--exe",
        curl,
        "POST",
        "http://127.0.0.1:18080/admin",
    ]);
    assert_eq!(
        stdout.lines().next(),
        Some("decision:   deny (no matching rule)")
    );
    assert!(
        stdout.contains("curl-reads-public") && stdout.contains("matches none of /, /public/**"),
        "{stdout}"
    );
    // Another binary matches no identity.
    let (_, stdout, _) = enforcer(&[
        "explain",
        "--policy",
        &example(),
        "--exe",
        "/usr/bin/python3",
        "GET",
        "http://127.0.0.1:18080/",
    ]);
    assert_eq!(
        stdout.lines().next(),
        Some("decision:   deny (no matching rule)")
    );
}
