//! Policy tests. Submodules: `check` (every diagnostic), `pattern` (paths, methods, globs),
//! `identity` (matching callers), `decide` (decisions), `explain`, `credentials` (the
//! `credentials` section and rules' `require`), `anomalies` (`settings.anomalies`).

mod anomalies;
mod check;
mod credentials;
mod decide;
mod destinations;
mod explain;
mod identity;
mod pattern;

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    sync::Arc,
};

use super::*;
use crate::{
    host::HostAddrs,
    identity::{Cgroup, Identity, Process},
};

/// Resolves the few names tests use, without DNS.
fn fake_resolve(host: &str, _port: u16) -> io::Result<Vec<IpAddr>> {
    match host {
        "payments.internal" => Ok(vec![
            "10.20.0.5".parse().unwrap(),
            "fd00::5".parse().unwrap(),
        ]),
        "empty.internal" => Ok(vec![]),
        _ => Err(io::Error::other("no such host")),
    }
}

fn parse(text: &str) -> Result<Policy, Error> {
    Policy::parse_with(Path::new("test.yaml"), text, &fake_resolve)
}

fn policy(text: &str) -> Policy {
    parse(text).unwrap_or_else(|e| panic!("valid policy expected: {e}"))
}

/// Every diagnostic, one per line.
fn diagnostics(text: &str) -> String {
    match parse(text) {
        Ok(_) => "(valid)".into(),
        Err(Error::Invalid { diagnostics }) => diagnostics
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n"),
        Err(e) => format!("unexpected error: {e}"),
    }
}

fn dests(text: &str) -> Vec<Destination> {
    Policy::parse(Path::new("test.yaml"), text)
        .expect("valid policy")
        .destinations()
        .map(|(_, d)| *d)
        .collect()
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> Ipv6Addr {
    Ipv4Addr::new(a, b, c, d).to_ipv6_mapped()
}

/// A caller, built up attribute by attribute.
#[derive(Clone)]
struct Who(Identity);

fn who() -> Who {
    Who(Identity {
        tgid: 100,
        pid: 100,
        uid: 1000,
        gid: 1000,
        comm: "test".into(),
        cgroup_id: 1,
        user: None,
        group: None,
        process: None,
        cgroup: None,
        unresolved: None,
        traced: Some(false),
    })
}

impl Who {
    fn exe(mut self, exe: &str) -> Self {
        let sha = self
            .0
            .process
            .as_ref()
            .map_or("".into(), |p| p.sha256.clone());
        self.0.process = Some(Arc::new(Process {
            exe: PathBuf::from(exe),
            exe_trusted: true,
            sha256: sha,
        }));
        self
    }

    fn sha256(mut self, sha: &str) -> Self {
        let exe = self
            .0
            .process
            .as_ref()
            .map_or(PathBuf::from("/unknown"), |p| p.exe.clone());
        self.0.process = Some(Arc::new(Process {
            exe,
            exe_trusted: true,
            sha256: sha.into(),
        }));
        self
    }

    fn user(mut self, uid: u32, name: Option<&str>) -> Self {
        self.0.uid = uid;
        self.0.user = name.map(Into::into);
        self
    }

    fn group(mut self, gid: u32, name: Option<&str>) -> Self {
        self.0.gid = gid;
        self.0.group = name.map(Into::into);
        self
    }

    fn cgroup(mut self, path: &str, unit: Option<&str>, container: Option<&str>) -> Self {
        self.0.cgroup = Some(Arc::new(Cgroup {
            path: path.into(),
            unit: unit.map(Into::into),
            container: container.map(Into::into),
        }));
        self
    }
}

fn decide_policy() -> &'static str {
    decide::POLICY
}

const SHIPPED: &str = include_str!("../../../examples/policy.yaml");

#[test]
fn shipped_default_policy_checks_and_decides() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policy.yaml");
    let checked = check(&path).map_err(|d| format!("{d:?}"));
    assert!(checked.is_ok(), "{checked:?}");

    let p = policy(SHIPPED);
    assert_eq!(
        p.service_for("127.0.0.1".parse().unwrap(), 18080, &HostAddrs::default()),
        Some("demo-api")
    );
    assert_eq!(
        p.service_for("::1".parse().unwrap(), 18080, &HostAddrs::default()),
        Some("demo-api")
    );
    let curl = p.classify(&who().exe("/usr/bin/curl").0);
    let wget = p.classify(&who().exe("/usr/bin/wget").0);
    let none: &[(&str, &str)] = &[];
    let cases = [
        (&curl, "GET", "/", Verdict::Allow, Some("curl-reads-public")),
        (
            &curl,
            "HEAD",
            "/public/a/b.css",
            Verdict::Allow,
            Some("curl-reads-public"),
        ),
        (&curl, "POST", "/admin", Verdict::Deny, None),
        (&curl, "GET", "/admin", Verdict::Deny, None),
        (&wget, "GET", "/", Verdict::Deny, None),
    ];
    for (caller, method, path, verdict, rule) in cases {
        let d = p.decide(caller, "demo-api", method, path, none, None);
        assert_eq!((d.verdict, d.rule_id()), (verdict, rule), "{method} {path}");
    }
}

#[test]
fn endpoint_forms() {
    let cases: &[(&str, Prefix, Ports)] = &[
        (
            "10.20.0.5:8080",
            Prefix {
                addr: v4(10, 20, 0, 5),
                len: 128,
            },
            Ports {
                first: 8080,
                last: 8080,
            },
        ),
        (
            "10.20.0.0/16:443",
            Prefix {
                addr: v4(10, 20, 0, 0),
                len: 112,
            },
            Ports {
                first: 443,
                last: 443,
            },
        ),
        (
            "10.1.2.3:8000-8099",
            Prefix {
                addr: v4(10, 1, 2, 3),
                len: 128,
            },
            Ports {
                first: 8000,
                last: 8099,
            },
        ),
        (
            "[fd00::5]:8080",
            Prefix {
                addr: "fd00::5".parse().unwrap(),
                len: 128,
            },
            Ports {
                first: 8080,
                last: 8080,
            },
        ),
        (
            "[fd00::/16]:1-65535",
            Prefix {
                addr: "fd00::".parse().unwrap(),
                len: 16,
            },
            Ports {
                first: 1,
                last: 65535,
            },
        ),
    ];
    for (text, prefix, ports) in cases {
        assert_eq!(
            text.parse::<Endpoint>(),
            Ok(Endpoint::Prefix(*prefix, *ports)),
            "{text}"
        );
    }
    assert_eq!(
        "Payments.Internal:8080".parse::<Endpoint>(),
        Ok(Endpoint::Host(
            "payments.internal".into(),
            Ports {
                first: 8080,
                last: 8080
            }
        ))
    );
}

#[test]
fn bad_endpoints_say_why() {
    let cases = [
        (
            "10.0.0.1",
            "invalid endpoint `10.0.0.1`: expected HOST:PORT",
        ),
        (
            "10.0.0.1:0",
            "invalid endpoint `10.0.0.1:0`: `0` is not a port (1-65535)",
        ),
        (
            "10.0.0.1:70000",
            "invalid endpoint `10.0.0.1:70000`: `70000` is not a port (1-65535)",
        ),
        (
            "10.0.0.1:90-80",
            "invalid endpoint `10.0.0.1:90-80`: port range `90-80` is empty",
        ),
        (
            "10.0.0.1/33:80",
            "invalid endpoint `10.0.0.1/33:80`: IPv4 prefix length 33 > 32",
        ),
        (
            "10.0.0.1/8:80",
            "invalid endpoint `10.0.0.1/8:80`: 10.0.0.1/8 has host bits set",
        ),
        (
            "fd00::1:80",
            "invalid endpoint `fd00::1:80`: an IPv6 address must be written in brackets",
        ),
        ("[fd00::1:80", "invalid endpoint `[fd00::1:80`: missing `]`"),
        (
            "bad_host:80",
            "invalid endpoint `bad_host:80`: `bad_host` is not a host name or IP address",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(text.parse::<Endpoint>(), Err(want.to_string()), "{text}");
    }
}

#[test]
fn host_names_resolve_at_load() {
    let d = dests("version: 1\nservices:\n  local:\n    endpoints: [\"localhost:9000\"]\n");
    assert!(
        d.iter()
            .any(|d| d.prefix == Prefix::host(IpAddr::V4(Ipv4Addr::LOCALHOST))),
        "{d:?}"
    );
    let p = policy("version: 1\nservices:\n  pay:\n    endpoints: [\"payments.internal:8080\"]\n");
    assert_eq!(
        p.service_for("10.20.0.5".parse().unwrap(), 8080, &HostAddrs::default()),
        Some("pay")
    );
    assert_eq!(
        p.service_for("fd00::5".parse().unwrap(), 8080, &HostAddrs::default()),
        Some("pay")
    );
}

#[test]
fn service_for_prefers_the_longest_prefix() {
    let p = policy(
        "version: 1\nservices:\n  wide:\n    endpoints: [\"10.0.0.0/8:80\"]\n  \
         narrow:\n    endpoints: [\"10.1.0.0/16:80\"]\n",
    );
    assert_eq!(
        p.service_for("10.1.2.3".parse().unwrap(), 80, &HostAddrs::default()),
        Some("narrow")
    );
    assert_eq!(
        p.service_for("10.2.2.3".parse().unwrap(), 80, &HostAddrs::default()),
        Some("wide")
    );
    assert_eq!(
        p.service_for("10.2.2.3".parse().unwrap(), 81, &HostAddrs::default()),
        None
    );
    assert_eq!(
        p.service_for("11.0.0.1".parse().unwrap(), 80, &HostAddrs::default()),
        None
    );
}

#[test]
fn load_errors_show_the_first_diagnostic_and_count_the_rest() {
    let err = parse("version: 1\nservices:\n  api:\n    endpoints: [\"10.0.0.1:0\"]\n")
        .expect_err("bad port");
    assert_eq!(
        err.to_string(),
        "test.yaml:4:17: invalid endpoint `10.0.0.1:0`: `0` is not a port (1-65535)"
    );
    let err =
        parse("version: 1\nservices:\n  api:\n    endpoints: [\"10.0.0.1:0\", \"x:0\", \"y:0\"]\n")
            .expect_err("bad ports");
    assert_eq!(
        err.to_string(),
        "test.yaml:4:17: invalid endpoint `10.0.0.1:0`: `0` is not a port (1-65535) \
         (and 2 more; `enforcer check test.yaml` lists them)"
    );
    let err = Policy::load(Path::new("/nonexistent/policy.yaml")).expect_err("no file");
    assert_eq!(
        err.to_string(),
        "policy /nonexistent/policy.yaml: cannot read"
    );
    assert_eq!(
        check(Path::new("/nonexistent/policy.yaml"))
            .map(|_| ())
            .map_err(|d| d.iter().map(ToString::to_string).collect::<Vec<_>>()),
        Err(vec![
            "/nonexistent/policy.yaml: cannot read: No such file or directory (os error 2)"
                .to_owned()
        ])
    );
}

#[test]
fn the_documented_example_checks() {
    let doc = include_str!("../../../docs/policy.md");
    let example = doc
        .split_once("## Example\n\n```yaml\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(yaml, _)| yaml)
        .expect("docs/policy.md has an example");
    let p = policy(example);
    assert_eq!(
        p.rules().iter().map(Rule::id).collect::<Vec<_>>(),
        ["billing-reads-invoices", "deploy-bot-releases"]
    );
}
