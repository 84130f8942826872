//! Matching callers against identities.

use super::*;

const SHA: &str = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";
const OTHER_SHA: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const CONTAINER: &str = "4f66ad9a0b2e6f1d0c3a7b8e9f0a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2";

/// The names of the identities (one per case, defined by `attrs`) a caller matches.
fn matches(attrs: &str, caller: &Who) -> bool {
    let p = policy(&format!(
        "version: 1\nidentities:\n  it: {{{attrs}}}\nservices:\n  api: {{endpoints: \
         [\"10.0.0.1:80\"]}}\n"
    ));
    let set = p.classify(&caller.0);
    set.names().any(|n| n == "it")
}

#[test]
fn identity_attributes() {
    let curl = who().exe("/usr/bin/curl").sha256(SHA);
    let billing = who()
        .exe("/usr/local/bin/billing-worker")
        .user(1001, Some("billing"))
        .group(1002, Some("billing"))
        .cgroup(
            "/system.slice/billing.service",
            Some("billing.service"),
            None,
        );
    let unnamed_uid = who().user(1005, None).group(1006, None);
    let in_container = who().cgroup(
        &format!("/system.slice/docker-{CONTAINER}.scope"),
        Some(&format!("docker-{CONTAINER}.scope")),
        Some(CONTAINER),
    );
    let unresolved = who();
    let cases: &[(&str, &Who, bool)] = &[
        // exe: exact path or glob over the resolved path.
        ("exe: /usr/bin/curl", &curl, true),
        ("exe: /usr/bin/wget", &curl, false),
        ("exe: \"/usr/bin/*\"", &curl, true),
        ("exe: \"/usr/**\"", &billing, true),
        ("exe: \"/usr/bin/*\"", &billing, false),
        ("exe: \"/**\"", &unresolved, false),
        // sha256
        (&format!("sha256: {SHA}"), &curl, true),
        (&format!("sha256: {OTHER_SHA}"), &curl, false),
        (&format!("sha256: {SHA}"), &unresolved, false),
        // All given attributes must match.
        (&format!("exe: /usr/bin/curl, sha256: {SHA}"), &curl, true),
        (
            &format!("exe: /usr/bin/curl, sha256: {OTHER_SHA}"),
            &curl,
            false,
        ),
        // user and group: name or numeric id.
        ("user: billing", &billing, true),
        ("user: 1001", &billing, true),
        ("user: \"1001\"", &billing, true),
        ("user: root", &billing, false),
        ("user: 1005", &unnamed_uid, true),
        ("user: someone", &unnamed_uid, false),
        ("group: billing", &billing, true),
        ("group: 1002", &billing, true),
        ("group: 1001", &billing, false),
        ("group: 1006", &unnamed_uid, true),
        ("user: billing, group: wheel", &billing, false),
        // systemdUnit: exact or glob; unknown unit never matches.
        ("systemdUnit: billing.service", &billing, true),
        ("systemdUnit: \"*.service\"", &billing, true),
        ("systemdUnit: \"*.socket\"", &billing, false),
        ("systemdUnit: \"*\"", &unresolved, false),
        // cgroup: glob over the path.
        ("cgroup: /system.slice/billing.service", &billing, true),
        ("cgroup: \"/system.slice/**\"", &billing, true),
        ("cgroup: \"/user.slice/**\"", &billing, false),
        ("cgroup: \"/**\"", &unresolved, false),
        // container: id or prefix of 12+ hex digits.
        (&format!("container: {CONTAINER}"), &in_container, true),
        ("container: 4f66ad9a0b2e", &in_container, true),
        ("container: 4f66ad9a0b2f", &in_container, false),
        ("container: 4f66ad9a0b2e", &billing, false),
    ];
    for (attrs, caller, want) in cases {
        assert_eq!(matches(attrs, caller), *want, "{attrs}");
    }
}

#[test]
fn a_caller_matches_every_identity_it_fits_in_file_order() {
    let p = policy(
        "version: 1
identities:
  by-unit: {systemdUnit: \"*.service\"}
  by-exe: {exe: /usr/bin/app}
  by-sha: {sha256: 5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03}
  by-other-exe: {exe: /usr/bin/other}
  by-user: {user: app}
services:
  api: {endpoints: [\"10.0.0.1:80\"]}
",
    );
    let caller = who()
        .exe("/usr/bin/app")
        .sha256(SHA)
        .user(10, Some("app"))
        .cgroup("/system.slice/app.service", Some("app.service"), None);
    let set = p.classify(&caller.0);
    assert_eq!(
        set.names().collect::<Vec<_>>(),
        ["by-unit", "by-exe", "by-sha", "by-user"]
    );
    assert_eq!(set.to_string(), "by-unit,by-exe,by-sha,by-user");
    let nobody = p.classify(&who().0);
    assert!(nobody.is_empty());
    assert_eq!(nobody.to_string(), "-");
}
