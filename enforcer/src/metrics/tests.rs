use std::sync::Arc;

use super::*;
use crate::{
    audit::{Caller, Verdict},
    credentials::ApiKeyLocation,
};

fn record(decision: Verdict, rule: Option<&str>, identities: &[&str], path: &str) -> Record {
    Record {
        time: 1.5,
        request_id: format!("req-{path}"),
        decision,
        rule: rule.map(Into::into),
        mode: "enforce",
        reason: "",
        detail: None,
        caller: Arc::new(Caller {
            tgid: 42,
            pid: 42,
            uid: 0,
            gid: 0,
            user: None,
            group: None,
            comm: "curl".into(),
            exe: None,
            sha256: None,
            exe_untrusted: None,
            traced: None,
            unresolved: None,
            cgroup_id: 7,
            cgroup: None,
            unit: None,
            container: None,
        }),
        identities: identities.iter().map(|&i| Arc::from(i)).collect(),
        service: "payments".into(),
        client: "127.0.0.1:40000".into(),
        destination: "10.0.0.1:80".into(),
        method: Some("GET".into()),
        path: Some(path.into()),
        status: Some(200),
        request_bytes: 0,
        response_bytes: 0,
        added_latency_us: 120,
        credential: None,
        injected: None,
        retried: false,
        auth_failure: None,
        upstream_error: None,
    }
}

/// The lines of the exposition that start with `prefix`.
fn lines(metrics: &Metrics, prefix: &str) -> Vec<String> {
    metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_request_is_counted_under_its_policy_names() {
    let m = Metrics::new().unwrap();
    m.record(&record(
        Verdict::Allow,
        Some("read-invoices"),
        &["billing", "ops"],
        "/v1/invoices/1",
    ));
    m.record(&record(Verdict::Deny, None, &[], "/admin"));
    assert_eq!(
        lines(&m, "enforcer_requests_total{"),
        [
            r#"enforcer_requests_total{decision="allow",identity="billing",rule="read-invoices",service="payments"} 1"#,
            r#"enforcer_requests_total{decision="deny",identity="unidentified",rule="none",service="payments"} 1"#,
        ]
    );
    // 120 µs: above the 100 µs bucket, within 250 µs.
    let latency = lines(&m, "enforcer_added_latency_seconds_bucket");
    assert!(
        latency.contains(
            &r#"enforcer_added_latency_seconds_bucket{service="payments",le="0.0001"} 0"#
                .to_owned()
        ),
        "{latency:#?}"
    );
    assert!(
        latency.contains(
            &r#"enforcer_added_latency_seconds_bucket{service="payments",le="0.00025"} 2"#
                .to_owned()
        ),
        "{latency:#?}"
    );
    assert_eq!(
        lines(&m, "enforcer_added_latency_seconds_count"),
        [r#"enforcer_added_latency_seconds_count{service="payments"} 2"#]
    );
}

#[test]
fn auth_failures_and_upstream_errors_carry_their_reason() {
    let m = Metrics::new().unwrap();
    let mut r = record(Verdict::Deny, None, &["billing"], "/x");
    r.auth_failure = Some(AuthFailure::Expired);
    m.record(&r);
    let mut r = record(Verdict::Allow, Some("any"), &["billing"], "/y");
    r.upstream_error = Some(UpstreamError::Timeout);
    m.record(&r);
    m.upstream_error("db", UpstreamError::Connect);
    assert_eq!(
        lines(&m, "enforcer_auth_failures_total{"),
        [r#"enforcer_auth_failures_total{identity="billing",reason="expired"} 1"#]
    );
    assert_eq!(
        lines(&m, "enforcer_upstream_errors_total{"),
        [
            r#"enforcer_upstream_errors_total{kind="connect",service="db"} 1"#,
            r#"enforcer_upstream_errors_total{kind="timeout",service="payments"} 1"#,
        ]
    );
}

/// Paths, request ids, pids and callers vary per request; none is a label, so the series
/// stay those of the policy names.
#[test]
fn distinct_paths_and_callers_add_no_series() {
    let m = Metrics::new().unwrap();
    for n in 0..10_000u32 {
        let mut r = record(Verdict::Allow, Some("r"), &["billing"], &format!("/p/{n}"));
        r.caller = Arc::new(Caller {
            pid: n,
            tgid: n,
            ..(*r.caller).clone()
        });
        r.added_latency_us = u64::from(n);
        m.record(&r);
    }
    let requests = lines(&m, "enforcer_requests_total{");
    assert_eq!(
        requests,
        [
            r#"enforcer_requests_total{decision="allow",identity="billing",rule="r",service="payments"} 10000"#
        ]
    );
    let series = m
        .encode()
        .lines()
        .filter(|l| l.starts_with("enforcer_"))
        .count();
    // build info, one request series, one histogram (14 buckets, +Inf, sum, count), active.
    assert_eq!(series, 1 + 1 + 17 + 1, "{}", m.encode());
}

/// The standard process families, under the names every exporter uses.
#[test]
fn process_metrics_have_the_standard_names() {
    let m = Metrics::new().unwrap();
    let text = m.encode();
    for family in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(family)?.strip_prefix(' '))
            .and_then(|v| v.parse::<f64>().ok());
        // CPU time is whole seconds: 0 for a short test.
        assert!(value.is_some_and(|v| v >= 0.0), "{family} in\n{text}");
    }
}

#[test]
fn build_info_and_active_connections() {
    let m = Metrics::new().unwrap();
    assert_eq!(
        lines(&m, "enforcer_build_info{"),
        [format!(
            r#"enforcer_build_info{{commit="{COMMIT}",version="{}"}} 1"#,
            env!("CARGO_PKG_VERSION")
        )]
    );
    let a = m.connection_opened();
    let b = m.connection_opened();
    assert_eq!(
        lines(&m, "enforcer_connections_active "),
        ["enforcer_connections_active 2"]
    );
    drop(a);
    drop(b);
    assert_eq!(
        lines(&m, "enforcer_connections_active "),
        ["enforcer_connections_active 0"]
    );
}

#[test]
fn not_ready_until_attached_and_told() {
    let m = Metrics::new().unwrap();
    m.set_ready(true);
    // Nothing attached: ready would be a lie, and the scrape-time families are absent.
    assert!(!m.is_ready());
    assert!(lines(&m, "enforcer_kernel_connects_total").is_empty());
    assert!(m.status().agent.is_none());
}

#[test]
fn auth_failure_reasons_from_credential_errors() {
    use crate::credentials::JwtError;
    let cases: [(CredentialError, AuthFailure); 7] = [
        (JwtError::Missing.into(), AuthFailure::Missing),
        (
            ApiKeyError::Missing {
                location: ApiKeyLocation::Header("x-api-key".into()),
            }
            .into(),
            AuthFailure::Missing,
        ),
        (ApiKeyError::Unknown.into(), AuthFailure::Invalid),
        (JwtError::MissingSignature.into(), AuthFailure::Invalid),
        (
            JwtError::KeysUnavailable { why: "x".into() }.into(),
            AuthFailure::KeysUnavailable,
        ),
        (
            CredentialError::InsufficientScope {
                missing: "w".into(),
                required: "w".into(),
            },
            AuthFailure::Scope,
        ),
        (
            CredentialError::NotBound {
                identity: "billing".into(),
            },
            AuthFailure::Binding,
        ),
    ];
    for (error, reason) in cases {
        assert_eq!(AuthFailure::of(&error), reason, "{error}");
    }
}

#[test]
fn endpoint_is_an_address_or_off() {
    assert_eq!("off".parse::<Endpoint>().unwrap(), Endpoint::Off);
    assert_eq!(
        DEFAULT_ADDR.parse::<Endpoint>().unwrap(),
        Endpoint::At("127.0.0.1:17090".parse().unwrap())
    );
    assert_eq!(
        "localhost:9090"
            .parse::<Endpoint>()
            .unwrap_err()
            .to_string(),
        "`localhost:9090` is neither an address (IP:PORT) nor `off`"
    );
}

#[test]
fn latency_buckets_rise() {
    assert!(LATENCY_BUCKETS.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(LATENCY_BUCKETS[0], 0.000_05);
    assert_eq!(LATENCY_BUCKETS[LATENCY_BUCKETS.len() - 1], 1.0);
}

#[test]
fn status_renders_as_a_table() {
    let status = Status {
        version: "0.1.0".into(),
        commit: "unknown".into(),
        ready: true,
        uptime_seconds: 12,
        agent: Some(status::AgentStatus {
            cgroup: "/sys/fs/cgroup/unified/app".into(),
            programs: vec!["enf_sockops".into(), "enf_connect4".into()],
            listeners: vec!["127.0.0.1:17001".into()],
            policy: status::PolicyStatus {
                source: "/etc/enforcer/policy.yaml".into(),
                version: 1,
                hash: "0123456789abcdef".into(),
                mode: "enforce".into(),
                services: vec![status::ServiceStatus {
                    name: "payments".into(),
                    protocol: "http".into(),
                    destinations: vec!["10.0.0.0/24:80".into()],
                }],
                rules: 3,
                reloads: 1,
                reload_failures: 0,
            },
            connections: status::ConnectionStatus {
                active: 2,
                total: 9,
                rejected: 0,
            },
            decisions: [("allow".into(), 7), ("deny".into(), 2)].into(),
            auth_failures: Default::default(),
            upstream_errors: Default::default(),
            anomalies: [("request_burst".into(), 1)].into(),
            kernel: [("redirected".into(), 9)].into(),
            audit: status::AuditStatus {
                written: 9,
                dropped: 0,
                write_failures: 0,
            },
        }),
    };
    let text = status.to_string();
    for line in [
        "ready              yes",
        "cgroup             /sys/fs/cgroup/unified/app",
        "programs           enf_sockops, enf_connect4",
        "policy             /etc/enforcer/policy.yaml (version 1, sha256 0123456789abcdef…)",
        "payments           http      10.0.0.0/24:80",
        "connections        2 active, 9 total, 0 rejected",
        "decisions          allow 7, deny 2",
        "auth failures      none",
        "anomalies          request_burst 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "no line {line:?} in\n{text}"
        );
    }
    // It survives the trip through /status.
    let json = serde_json::to_string(&status).unwrap();
    let back: Status = serde_json::from_str(&json).unwrap();
    assert_eq!(back.to_string(), text);
}
