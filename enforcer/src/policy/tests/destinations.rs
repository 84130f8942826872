//! Which service a destination belongs to when it reaches this host, and what `check` says
//! about local services and the doors a policy leaves.

use super::*;

fn host(addrs: &[&str]) -> HostAddrs {
    HostAddrs::new(addrs.iter().map(|a| a.parse().unwrap()))
}

fn service_of<'p>(p: &'p Policy, ip: &str, port: u16, host: &HostAddrs) -> Option<&'p str> {
    p.service_for(ip.parse().unwrap(), port, host)
}

#[test]
fn every_address_of_this_host_finds_the_local_service_on_its_port() {
    let p = policy(
        "version: 1\nservices:\n  api:\n    endpoints: [\"127.0.0.1:8080\"]\n  \
         remote:\n    endpoints: [\"10.0.0.5:8080\"]\n  \
         six:\n    endpoints: [\"[::1]:9000\"]\n",
    );
    let h = host(&["10.200.0.1", "fd00::1"]);
    for ip in [
        "127.0.0.1",
        "0.0.0.0",
        "::ffff:0.0.0.0",
        "127.0.0.2",
        "127.255.255.254",
        "::ffff:127.9.9.9",
        "::",
        "::1",
        "10.200.0.1",
        "fd00::1",
    ] {
        assert_eq!(service_of(&p, ip, 8080, &h), Some("api"), "{ip}");
        assert_eq!(service_of(&p, ip, 9000, &h), Some("six"), "{ip}");
        assert_eq!(
            service_of(&p, ip, 8081, &h),
            None,
            "{ip}: no local service there"
        );
    }
    assert_eq!(service_of(&p, "10.0.0.5", 8080, &h), Some("remote"));
    for ip in ["10.200.0.2", "10.0.0.6", "::2", "::127.0.0.1"] {
        assert_eq!(service_of(&p, ip, 8080, &h), None, "{ip} is not this host");
    }
    assert_eq!(
        service_of(&p, "10.200.0.1", 8080, &HostAddrs::default()),
        None,
        "not a host address any more"
    );
}

#[test]
fn an_exact_endpoint_wins_over_the_local_service() {
    let p = policy(
        "version: 1\nservices:\n  api:\n    endpoints: [\"127.0.0.1:8080\"]\n  \
         on-host:\n    endpoints: [\"10.200.0.1:8080\"]\n",
    );
    let h = host(&["10.200.0.1"]);
    assert_eq!(service_of(&p, "10.200.0.1", 8080, &h), Some("on-host"));
    assert_eq!(service_of(&p, "127.0.0.1", 8080, &h), Some("api"));
}

#[test]
fn a_wildcard_or_loopback_prefix_endpoint_is_local() {
    let p = policy(
        "version: 1\nservices:\n  any:\n    endpoints: [\"0.0.0.0:80\"]\n  \
         lo:\n    endpoints: [\"127.0.0.0/8:81\"]\n  \
         six:\n    endpoints: [\"[::]:82\"]\n",
    );
    let h = HostAddrs::default();
    assert_eq!(service_of(&p, "127.0.0.1", 80, &h), Some("any"));
    assert_eq!(service_of(&p, "::1", 81, &h), Some("lo"));
    assert_eq!(service_of(&p, "127.0.0.1", 82, &h), Some("six"));
}

#[test]
fn two_local_services_on_one_port_are_an_error() {
    assert_eq!(
        diagnostics(
            "version: 1\nservices:\n  a:\n    endpoints: [\"127.0.0.1:8080\"]\n  \
             b:\n    endpoints: [\"10.0.0.1:8080\", \"[::1]:8000-8090\"]\n"
        ),
        "test.yaml:6:34: services `a` and `b` both listen on this host, at port 8080 and \
         8000-8090: a connect to any local address reaches both, so they must not share a port"
    );
    assert_eq!(
        diagnostics(
            "version: 1\nservices:\n  a:\n    endpoints: [\"0.0.0.0:80\"]\n  \
             b:\n    endpoints: [\"127.0.0.0/8:80\"]\n"
        ),
        "test.yaml:6:17: services `a` and `b` both listen on this host, at port 80 and 80: \
         a connect to any local address reaches both, so they must not share a port"
    );
    // One service at several local addresses, or local services on other ports: fine.
    policy(
        "version: 1\nservices:\n  a:\n    endpoints: [\"127.0.0.1:80\", \"[::1]:80\"]\n  \
         b:\n    endpoints: [\"127.0.0.1:81\", \"10.0.0.1:80\"]\n",
    );
}

#[test]
fn check_warns_where_a_policy_leaves_a_door() {
    let p = policy(
        "version: 1\nservices:\n  pay:\n    endpoints: [\"payments.internal:8080\"]\n  \
         open:\n    endpoints: [\"10.0.0.1:80\"]\n    failMode: open\n  \
         shut:\n    endpoints: [\"10.0.0.2:80\"]\n    failMode: closed\n",
    );
    let warnings: Vec<String> = p.warnings().iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            "test.yaml:4:17: endpoint `payments.internal:8080` names a host: only the \
             addresses it resolves to now (10.20.0.5, fd00::5) are protected, until the policy \
             is reloaded; other addresses of the same API are not",
            "test.yaml:7:15: service `open` has `failMode: open`: while no agent is ready \
             (starting, restarting, hung), its connects reach it unseen",
        ]
    );
    assert!(
        policy("version: 1\nservices:\n  a:\n    endpoints: [\"10.0.0.1:80\"]\n")
            .warnings()
            .is_empty()
    );
    // A name of this host is covered at every local address: no door (the system resolver,
    // as `host_names_resolve_at_load` uses it).
    let local = "version: 1\nservices:\n  a:\n    endpoints: [\"localhost:80\"]\n";
    let p = Policy::parse(Path::new("test.yaml"), local).expect("valid policy");
    assert!(p.warnings().is_empty(), "{:?}", p.warnings());
}
