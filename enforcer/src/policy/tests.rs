use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::*;

fn parse(text: &str) -> Result<Policy, Error> {
    Policy::parse(Path::new("test.yaml"), text)
}

fn dests(text: &str) -> Vec<Destination> {
    parse(text)
        .expect("valid policy")
        .destinations()
        .map(|(_, d)| *d)
        .collect()
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> Ipv6Addr {
    Ipv4Addr::new(a, b, c, d).to_ipv6_mapped()
}

#[test]
fn shipped_default_policy_loads() {
    let policy = parse(include_str!("../../../examples/policy.yaml")).expect("default policy");
    assert!(!policy.services.is_empty());
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
fn errors_carry_line_and_column() {
    let err = parse("version: 1\nservices:\n  api:\n    endpoints: [\"10.0.0.1:0\"]\n")
        .expect_err("bad port");
    assert_eq!(
        err.to_string(),
        "policy test.yaml: services.api.endpoints: invalid endpoint `10.0.0.1:0`: \
         `0` is not a port (1-65535) at line 4 column 16"
    );
    let err = parse("version: 1\nservices: {}\nrulez: []\n").expect_err("unknown field");
    assert!(
        err.to_string().starts_with(
            "policy test.yaml: unknown field `rulez`, expected `version` or `services` at line 3"
        ),
        "{err}"
    );
}

#[test]
fn empty_or_wrong_version_is_refused() {
    assert_eq!(
        parse("version: 1\nservices: {}\n").unwrap_err().to_string(),
        "policy test.yaml: no protected destination (`services` is empty)"
    );
    assert_eq!(
        parse("version: 1\nservices:\n  a:\n    endpoints: []\n")
            .unwrap_err()
            .to_string(),
        "policy test.yaml: no protected destination (`services` is empty)"
    );
    assert_eq!(
        parse("version: 2\nservices: {}\n").unwrap_err().to_string(),
        "policy test.yaml: unsupported version 2 (this agent reads version 1)"
    );
}

#[test]
fn host_names_resolve_at_load() {
    let d = dests("version: 1\nservices:\n  local:\n    endpoints: [\"localhost:9000\"]\n");
    assert!(
        d.iter()
            .any(|d| d.prefix == Prefix::host(IpAddr::V4(Ipv4Addr::LOCALHOST))),
        "{d:?}"
    );
}

#[test]
fn service_for_prefers_the_longest_prefix() {
    let p = parse(
        "version: 1\nservices:\n  wide:\n    endpoints: [\"10.0.0.0/8:80\"]\n  \
         narrow:\n    endpoints: [\"10.1.0.0/16:80\"]\n",
    )
    .unwrap();
    assert_eq!(
        p.service_for("10.1.2.3".parse().unwrap(), 80),
        Some("narrow")
    );
    assert_eq!(p.service_for("10.2.2.3".parse().unwrap(), 80), Some("wide"));
    assert_eq!(p.service_for("10.2.2.3".parse().unwrap(), 81), None);
    assert_eq!(p.service_for("11.0.0.1".parse().unwrap(), 80), None);
}
