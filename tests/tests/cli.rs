//! `enforcer check` and `enforcer explain`: what an operator sees. No privileges needed.

use std::{fs, process::Command};

use enforcer_tests::enforcer_binary;

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
    fs::remove_file(file).unwrap();
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
