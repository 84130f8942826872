//! `explain`.

use super::{super::explain::explain_with, *};

fn run(p: &Policy, identity: &Identity, method: &str, url: &str) -> String {
    match explain_with(
        p,
        identity,
        method,
        url,
        &fake_resolve,
        &HostAddrs::default(),
    ) {
        Ok(e) => e.to_string(),
        Err(e) => format!("error: {e}"),
    }
}

#[test]
fn explains_allowed_and_denied_requests() {
    let p = policy(SHIPPED);
    let curl = who()
        .exe("/usr/bin/curl")
        .sha256("5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03")
        .user(1000, Some("alice"))
        .group(1000, Some("alice"))
        .0;
    assert_eq!(
        run(
            &p,
            &curl,
            "GET",
            "http://127.0.0.1:18080/public/./css/../app.css?v=2#top"
        ),
        "decision:   allow by rule `curl-reads-public` (test.yaml:54:9) [enforce]
request:    GET /public/app.css?v=2 to 127.0.0.1:18080 (service demo-api)
caller:     exe=/usr/bin/curl \
sha256=5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03 user=alice (1000) \
group=alice (1000) systemdUnit=- cgroup=- container=-
identities: curl
rules for demo-api, in file order:
  curl-reads-public (test.yaml:54:9): matches
"
    );
    assert_eq!(
        run(&p, &curl, "POST", "http://[::1]:18080/admin"),
        "decision:   deny (no matching rule)
request:    POST /admin to [::1]:18080 (service demo-api)
caller:     exe=/usr/bin/curl \
sha256=5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03 user=alice (1000) \
group=alice (1000) systemdUnit=- cgroup=- container=-
identities: curl
rules for demo-api, in file order:
  curl-reads-public (test.yaml:54:9): path /admin matches none of /, /public/**
"
    );
    let wget = who().exe("/usr/bin/wget").user(0, Some("root")).0;
    assert_eq!(
        run(&p, &wget, "GET", "http://127.0.0.1:18080/"),
        "decision:   deny (no matching rule)
request:    GET / to 127.0.0.1:18080 (service demo-api)
caller:     exe=/usr/bin/wget sha256=- user=root (0) group=1000 systemdUnit=- cgroup=- \
container=-
identities: none
rules for demo-api, in file order:
  curl-reads-public (test.yaml:54:9): not for this caller (from: curl): `curl` wants exe \
/usr/bin/curl, caller has /usr/bin/wget
"
    );
    assert_eq!(
        run(&p, &curl, "GET", "http://127.0.0.1:8080/"),
        "decision:   not protected: no service has 127.0.0.1:8080, so the agent never sees the \
request
request:    GET / to 127.0.0.1:8080
caller:     exe=/usr/bin/curl \
sha256=5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03 user=alice (1000) \
group=alice (1000) systemdUnit=- cgroup=- container=-
identities: curl
"
    );
}

#[test]
fn explains_audit_scopes_and_unmet_constraints() {
    let p = policy(super::decide_policy());
    let deploy = who()
        .cgroup(
            "/system.slice/deploy-bot.service",
            Some("deploy-bot.service"),
            None,
        )
        .0;
    let out = run(
        &p,
        &deploy,
        "DELETE",
        "http://payments.internal:8080/v1/releases/1",
    );
    assert!(
        out.starts_with(
            "decision:   audit_deny (no matching rule): forwarded and recorded as would-deny, \
             as rule `deploy-releases` (test.yaml:34:9) is in audit mode\n\
             request:    DELETE /v1/releases/1 to 10.20.0.5:8080 (service payments)\n"
        ),
        "{out}"
    );
    assert!(
        out.contains(
            "  deploy-releases [audit] (test.yaml:34:9): method DELETE is not one of POST\n"
        ),
        "{out}"
    );
    let billing = who().exe("/usr/local/bin/billing-worker").0;
    let out = run(
        &p,
        &billing,
        "POST",
        "http://10.20.0.5:8080/v1/exports?format=json",
    );
    assert!(
        out.contains(
            "  billing-tenant-export (test.yaml:16:9): needs header `x-tenant: acme`, once\n"
        ),
        "{out}"
    );
}

/// A rule's `hosts` is matched against the URL's authority, sent as `Host`.
#[test]
fn explains_hosts() {
    let p = policy(
        "version: 1
identities:
  w: {exe: /usr/bin/w}
services:
  api: {endpoints: [\"10.20.0.5:8080\"]}
rules:
  - id: vhost
    from: [w]
    to: api
    methods: [GET]
    paths: [\"/**\"]
    hosts: [\"*.internal\"]
",
    );
    let w = who().exe("/usr/bin/w").0;
    let out = run(&p, &w, "GET", "http://10.20.0.5:8080/a");
    assert!(
        out.starts_with("decision:   deny (host not allowed)"),
        "{out}"
    );
    assert!(
        out.contains(
            "  vhost (test.yaml:7:9): needs a Host among *.internal, matching the destination\n"
        ),
        "{out}"
    );
    let out = run(&p, &w, "GET", "http://payments.internal:8080/a");
    assert!(
        out.starts_with("decision:   allow by rule `vhost`"),
        "{out}"
    );
}

#[test]
fn explain_errors() {
    let p = policy(SHIPPED);
    let caller = who().0;
    let cases = [
        (
            "https://127.0.0.1:18080/",
            "error: bad URL `https://127.0.0.1:18080/`: the agent reads plain HTTP; it cannot see \
             requests inside TLS",
        ),
        (
            "127.0.0.1:18080/",
            "error: bad URL `127.0.0.1:18080/`: expected http://HOST[:PORT]/PATH",
        ),
        (
            "http://u@127.0.0.1/",
            "error: bad URL `http://u@127.0.0.1/`: user information (`user@`) is not supported",
        ),
        (
            "http://127.0.0.1:0/",
            "error: bad URL `http://127.0.0.1:0/`: bad port",
        ),
        (
            "http://nowhere.invalid/",
            "error: host `nowhere.invalid` does not resolve",
        ),
        (
            "http://127.0.0.1:18080/a%2Fb",
            "error: path `/a%2Fb` is refused by the agent before any rule applies",
        ),
    ];
    for (url, want) in cases {
        assert_eq!(run(&p, &caller, "GET", url), want, "{url}");
    }
}

#[test]
fn a_synthetic_caller_has_the_flags_attributes() {
    let dir = std::env::temp_dir().join(format!("enforcer-policy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("some-long-program-name");
    std::fs::write(&exe, "hello\n").unwrap();
    let identity = Caller {
        exe: Some(exe.clone()),
        user: Some("4242424".into()),
        group: Some("no-such-group-here".into()),
        unit: Some("deploy-bot.service".into()),
        cgroup: None,
        container: None,
    }
    .identity();
    std::fs::remove_dir_all(&dir).unwrap();
    let process = identity.process.as_deref().expect("process");
    assert_eq!(process.exe, exe);
    assert_eq!(
        &*process.sha256,
        "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
    );
    assert_eq!(identity.comm, "some-long-progr");
    assert_eq!((identity.uid, identity.user.as_deref()), (4242424, None));
    assert_eq!(
        (identity.gid, identity.group.as_deref()),
        (u32::MAX, Some("no-such-group-here"))
    );
    let cgroup = identity.cgroup.as_deref().expect("cgroup");
    assert_eq!(cgroup.path, "/system.slice/deploy-bot.service");
    assert_eq!(cgroup.unit.as_deref(), Some("deploy-bot.service"));

    let missing = Caller {
        exe: Some("/nonexistent/program".into()),
        ..Caller::default()
    }
    .identity();
    assert_eq!(missing.process.as_deref().map(|p| &*p.sha256), Some(""));
    assert!(missing.cgroup.is_none());
}
