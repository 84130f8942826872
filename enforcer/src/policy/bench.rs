//! A synthetic policy to time [`Policy::decide`] with (`cargo xtask bench`,
//! `enforcer/examples/decide_bench.rs`). Not part of the API.

use std::{fmt::Write as _, path::Path, path::PathBuf, sync::Arc};

use super::{IdentitySet, Policy};
use crate::identity::{Identity, Process};

/// Identities in a synthetic policy: rules are spread over them, so a caller's share is
/// `1/IDENTITIES` of the rules.
const IDENTITIES: usize = 20;

/// A policy of `n_rules` rules, a caller, and requests to decide for it.
#[doc(hidden)]
pub struct Synthetic {
    pub policy: Policy,
    pub caller: IdentitySet,
    pub service: &'static str,
    /// (method, path, query): about a third allowed, the rest denied at various depths.
    pub requests: Vec<(String, String, Option<String>)>,
    /// Headers every request carries, as a typical API client sends them.
    pub headers: Vec<(String, String)>,
}

/// Build a policy of `n_rules` rules on one service, from 20 identities (the caller is one of
/// them, so 1/20 of the rules can apply to it), with parameters, `**`, header and query
/// constraints, rules for any caller and rules in audit mode; and 1 000 requests.
#[doc(hidden)]
pub fn synthetic(n_rules: usize) -> Synthetic {
    let mut y = String::from(
        "version: 1\nservices:\n  bench:\n    endpoints: [\"10.99.0.1:8080\"]\nidentities:\n",
    );
    for i in 0..IDENTITIES {
        let _ = writeln!(y, "  id{i}: {{exe: /usr/bin/bench-{i}}}");
    }
    y.push_str("rules:\n");
    for k in 0..n_rules {
        let v = k % 4;
        let from = if k % 97 == 50 {
            "\"*\"".to_owned()
        } else {
            format!("id{}", k % IDENTITIES)
        };
        let methods = if k % 2 == 0 { "[GET]" } else { "[GET, POST]" };
        let _ = write!(
            y,
            "  - id: r{k}\n    from: [{from}]\n    to: bench\n    methods: {methods}\n    \
             paths: [\"/api/v{v}/res{k}\", \"/api/v{v}/res{k}/{{id}}\", \
             \"/api/v{v}/res{k}/{{id}}/items/**\"]\n"
        );
        if k % 7 == 3 {
            let _ = writeln!(y, "    headers: {{x-tenant: t{k}}}");
        }
        if k % 11 == 5 {
            let _ = writeln!(y, "    query: {{format: json}}");
        }
        if k % 13 == 6 {
            y.push_str("    mode: audit\n");
        }
    }
    let policy = Policy::parse(Path::new("synthetic.yaml"), &y)
        .unwrap_or_else(|e| panic!("BUG: the synthetic policy is invalid: {e}"));
    let identity = Identity {
        tgid: 1,
        pid: 1,
        uid: 1000,
        gid: 1000,
        comm: "bench-0".into(),
        cgroup_id: 0,
        user: None,
        group: None,
        process: Some(Arc::new(Process {
            exe: PathBuf::from("/usr/bin/bench-0"),
            exe_trusted: true,
            sha256: "".into(),
        })),
        cgroup: None,
        unresolved: None,
        traced: Some(false),
    };
    let caller = policy.classify(&identity);

    // A fixed linear congruential sequence: the same requests on every run.
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = |bound: usize| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((seed >> 33) as usize) % bound.max(1)
    };
    let mut requests = Vec::new();
    for i in 0..1000 {
        let k = next(n_rules);
        let v = k % 4;
        let r = match i % 6 {
            // The caller's own rules: allowed, unless the rule wants a header.
            0 => {
                let k = k - k % IDENTITIES;
                let v = k % 4;
                ("GET", format!("/api/v{v}/res{k}/{}", next(10_000)), None)
            }
            1 => {
                let k = k - k % IDENTITIES;
                let v = k % 4;
                (
                    "GET",
                    format!("/api/v{v}/res{k}/{}/items/a/b/c", next(10_000)),
                    Some("format=json".to_owned()),
                )
            }
            // Other callers' rules: denied.
            2 => ("GET", format!("/api/v{v}/res{k}/{}", next(10_000)), None),
            // A method no rule allows: denied after the path matched.
            3 => ("DELETE", format!("/api/v{v}/res{k}"), None),
            // Unknown paths: denied early, or deep.
            4 => ("GET", format!("/api/v{v}/nothing/{}", next(10_000)), None),
            _ => (
                "POST",
                format!("/static/{}/assets/app.{}.js", next(100), next(1_000_000)),
                None,
            ),
        };
        requests.push((r.0.to_owned(), r.1, r.2));
    }
    let headers = [
        ("host", "bench.internal:8080"),
        ("user-agent", "bench/1.0"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip"),
        ("x-request-id", "3f0c2a9e-4d1b-4c8e-9a57-1d2e3f4a5b6c"),
    ]
    .iter()
    .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
    .collect();
    Synthetic {
        policy,
        caller,
        service: "bench",
        requests,
        headers,
    }
}
