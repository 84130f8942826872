//! Decisions: allow, deny, audit scopes, global audit, first match, unknown service; and the
//! compiled index against a plain scan of the rules.

use super::*;

pub(super) const POLICY: &str = "version: 1
identities:
  billing: {exe: /usr/local/bin/billing-worker}
  deploy: {systemdUnit: deploy-bot.service}
  ops: {group: ops}
services:
  payments: {endpoints: [\"10.20.0.5:8080\"]}
  ledger: {endpoints: [\"10.20.0.6:8080\"]}
  legacy: {endpoints: [\"10.20.0.7:5432\"], protocol: tcp}
rules:
  - id: billing-reads-invoices
    from: [billing]
    to: payments
    methods: [GET, HEAD]
    paths: [\"/v1/invoices\", \"/v1/invoices/{id}\", \"/v1/reports/**\"]
  - id: billing-tenant-export
    from: [billing]
    to: payments
    methods: [POST]
    paths: [/v1/exports]
    headers: {X-Tenant: acme}
    query: {format: json}
  - id: ops-reads-all
    from: [ops, billing]
    to: payments
    methods: [GET]
    paths: [\"/**\"]
  - id: billing-live
    from: [billing]
    to: payments
    methods: [GET]
    paths: [/v1/live]
    websocket: true
  - id: deploy-releases
    from: [deploy]
    to: payments
    methods: [POST]
    paths: [\"/v1/releases/*\"]
    mode: audit
  - id: health
    from: [\"*\"]
    to: payments
    methods: [GET]
    paths: [/healthz]
  - id: billing-ledger
    from: [billing]
    to: ledger
    methods: [GET]
    paths: [\"/entries/{id}\"]
";

type Outcome = (Verdict, Option<&'static str>, Mode, Reason);

fn callers() -> [(&'static str, Identity); 4] {
    [
        ("billing", who().exe("/usr/local/bin/billing-worker").0),
        (
            "deploy",
            who()
                .exe("/usr/bin/deploy-bot")
                .cgroup(
                    "/system.slice/deploy-bot.service",
                    Some("deploy-bot.service"),
                    None,
                )
                .0,
        ),
        ("ops", who().exe("/usr/bin/curl").group(50, Some("ops")).0),
        ("nobody", who().exe("/usr/bin/wget").0),
    ]
}

struct Case {
    caller: &'static str,
    service: &'static str,
    method: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    query: Option<&'static str>,
    want: Outcome,
}

const fn case(
    caller: &'static str,
    service: &'static str,
    method: &'static str,
    path: &'static str,
    want: Outcome,
) -> Case {
    Case {
        caller,
        service,
        method,
        path,
        headers: &[],
        query: None,
        want,
    }
}

const fn with(
    c: Case,
    headers: &'static [(&'static str, &'static str)],
    query: Option<&'static str>,
) -> Case {
    Case {
        headers,
        query,
        ..c
    }
}

fn run(p: &Policy, cases: &[Case]) {
    let callers = callers();
    for c in cases {
        let identity = &callers
            .iter()
            .find(|(n, _)| *n == c.caller)
            .expect(c.caller)
            .1;
        let set = p.classify(identity);
        let d = p.decide(&set, c.service, c.method, c.path, c.headers, c.query);
        assert_eq!(
            (d.verdict, d.rule_id(), d.mode, d.reason),
            c.want,
            "{} {} {} {} {:?} {:?}",
            c.caller,
            c.service,
            c.method,
            c.path,
            c.headers,
            c.query
        );
    }
}

const ALLOW: Verdict = Verdict::Allow;
const DENY: Verdict = Verdict::Deny;
const AUDIT_DENY: Verdict = Verdict::AuditDeny;
const ENFORCE: Mode = Mode::Enforce;
const AUDIT: Mode = Mode::Audit;
const RULE: Reason = Reason::Rule;
const NO_RULE: Reason = Reason::NoMatchingRule;
const LOOKALIKE_HEADER: Reason = Reason::Evasion(Evasion::LookalikeHeader);
const LOOKALIKE_QUERY: Reason = Reason::Evasion(Evasion::LookalikeQuery);
const METHOD_OVERRIDE: Reason = Reason::Evasion(Evasion::MethodOverride);

#[test]
fn decisions() {
    let p = policy(POLICY);
    let invoices = Some("billing-reads-invoices");
    let export = Some("billing-tenant-export");
    let ops = Some("ops-reads-all");
    let release = Some("deploy-releases");
    let good_export: &[(&str, &str)] = &[("x-tenant", "acme")];
    run(
        &p,
        &[
            // The first matching rule in file order allows, and is reported.
            case(
                "billing",
                "payments",
                "GET",
                "/v1/invoices",
                (ALLOW, invoices, ENFORCE, RULE),
            ),
            case(
                "billing",
                "payments",
                "HEAD",
                "/v1/invoices/7",
                (ALLOW, invoices, ENFORCE, RULE),
            ),
            case(
                "billing",
                "payments",
                "GET",
                "/v1/reports",
                (ALLOW, invoices, ENFORCE, RULE),
            ),
            case(
                "billing",
                "payments",
                "GET",
                "/v1/reports/2024/q1",
                (ALLOW, invoices, ENFORCE, RULE),
            ),
            case(
                "billing",
                "payments",
                "GET",
                "/v1/other",
                (ALLOW, ops, ENFORCE, RULE),
            ),
            case(
                "ops",
                "payments",
                "GET",
                "/v1/invoices",
                (ALLOW, ops, ENFORCE, RULE),
            ),
            // Default deny: method, path or caller not allowed.
            case(
                "billing",
                "payments",
                "HEAD",
                "/v1/other",
                (DENY, None, ENFORCE, NO_RULE),
            ),
            case(
                "billing",
                "payments",
                "DELETE",
                "/v1/invoices/7",
                (DENY, None, ENFORCE, NO_RULE),
            ),
            case(
                "billing",
                "payments",
                "GET",
                "/v1/invoices/7/",
                (ALLOW, ops, ENFORCE, RULE),
            ),
            case(
                "ops",
                "payments",
                "HEAD",
                "/v1/invoices",
                (DENY, None, ENFORCE, NO_RULE),
            ),
            case(
                "nobody",
                "payments",
                "GET",
                "/v1/invoices",
                (DENY, None, ENFORCE, NO_RULE),
            ),
            // Rules for any caller.
            case(
                "nobody",
                "payments",
                "GET",
                "/healthz",
                (ALLOW, Some("health"), ENFORCE, RULE),
            ),
            // An allowed request's mode is its rule's (the audit scope softens denials only).
            case(
                "deploy",
                "payments",
                "GET",
                "/healthz",
                (ALLOW, Some("health"), ENFORCE, RULE),
            ),
            // Header and query constraints.
            with(
                case(
                    "billing",
                    "payments",
                    "POST",
                    "/v1/exports",
                    (ALLOW, export, ENFORCE, RULE),
                ),
                good_export,
                Some("format=json"),
            ),
            with(
                case(
                    "billing",
                    "payments",
                    "POST",
                    "/v1/exports",
                    (ALLOW, export, ENFORCE, RULE),
                ),
                &[("Accept", "*/*"), ("X-TENANT", " acme\t")],
                Some("a=1&format=%6Aso%6E&b"),
            ),
            with(
                case(
                    "billing",
                    "payments",
                    "POST",
                    "/v1/exports",
                    (DENY, None, ENFORCE, NO_RULE),
                ),
                &[],
                Some("format=json"),
            ),
            with(
                case(
                    "billing",
                    "payments",
                    "POST",
                    "/v1/exports",
                    (DENY, None, ENFORCE, LOOKALIKE_HEADER),
                ),
                &[("x-tenant", "acme"), ("x-tenant", "acme")],
                Some("format=json"),
            ),
            with(
                case(
                    "billing",
                    "payments",
                    "POST",
                    "/v1/exports",
                    (DENY, None, ENFORCE, NO_RULE),
                ),
                &[("x-tenant", "Acme")],
                Some("format=json"),
            ),
            with(
                case(
                    "billing",
                    "payments",
                    "POST",
                    "/v1/exports",
                    (DENY, None, ENFORCE, LOOKALIKE_QUERY),
                ),
                good_export,
                Some("format=json&format=xml"),
            ),
            // Look-alikes of a constrained header or parameter, which upstream frameworks
            // may merge with it, are refused with their own reason.
            with(
                case(
                    "billing",
                    "payments",
                    "POST",
                    "/v1/exports",
                    (DENY, None, ENFORCE, LOOKALIKE_HEADER),
                ),
                &[("x-tenant", "acme"), ("x_tenant", "other")],
                Some("format=json"),
            ),
            with(
                case(
                    "billing",
                    "payments",
                    "POST",
                    "/v1/exports",
                    (DENY, None, ENFORCE, LOOKALIKE_QUERY),
                ),
                good_export,
                Some("format=json&FORMAT=csv"),
            ),
            with(
                case(
                    "billing",
                    "payments",
                    "POST",
                    "/v1/exports",
                    (DENY, None, ENFORCE, LOOKALIKE_QUERY),
                ),
                good_export,
                Some("format=json;format=csv"),
            ),
            with(
                case(
                    "billing",
                    "payments",
                    "POST",
                    "/v1/exports",
                    (DENY, None, ENFORCE, LOOKALIKE_QUERY),
                ),
                good_export,
                Some("%66ormat=json"),
            ),
            // A method override no rule lists is refused, even where a rule would allow the
            // request line.
            with(
                case(
                    "billing",
                    "payments",
                    "GET",
                    "/v1/invoices",
                    (DENY, None, ENFORCE, METHOD_OVERRIDE),
                ),
                &[("X-HTTP-Method-Override", "DELETE")],
                None,
            ),
            with(
                case(
                    "billing",
                    "payments",
                    "POST",
                    "/v1/exports",
                    (DENY, None, ENFORCE, NO_RULE),
                ),
                good_export,
                None,
            ),
            // WebSocket upgrades need `websocket: true`; other upgrades are never allowed.
            with(
                case(
                    "billing",
                    "payments",
                    "GET",
                    "/v1/live",
                    (ALLOW, Some("billing-live"), ENFORCE, RULE),
                ),
                &[("connection", "Upgrade"), ("upgrade", "WebSocket")],
                None,
            ),
            case(
                "billing",
                "payments",
                "GET",
                "/v1/live",
                (ALLOW, ops, ENFORCE, RULE),
            ),
            with(
                case(
                    "billing",
                    "payments",
                    "GET",
                    "/v1/invoices",
                    (DENY, None, ENFORCE, NO_RULE),
                ),
                &[("upgrade", "websocket")],
                None,
            ),
            with(
                case(
                    "billing",
                    "payments",
                    "GET",
                    "/v1/live",
                    (DENY, None, ENFORCE, NO_RULE),
                ),
                &[("upgrade", "h2c")],
                None,
            ),
            with(
                case(
                    "billing",
                    "payments",
                    "GET",
                    "/v1/live",
                    (DENY, None, ENFORCE, NO_RULE),
                ),
                &[("upgrade", "websocket, h2c")],
                None,
            ),
            // A rule in audit mode: its own matches are allowed; the rest of its scope (from ×
            // to) is forwarded as would-deny, naming it.
            case(
                "deploy",
                "payments",
                "POST",
                "/v1/releases/42",
                (ALLOW, release, AUDIT, RULE),
            ),
            case(
                "deploy",
                "payments",
                "POST",
                "/v1/other",
                (AUDIT_DENY, release, AUDIT, NO_RULE),
            ),
            case(
                "deploy",
                "payments",
                "DELETE",
                "/",
                (AUDIT_DENY, release, AUDIT, NO_RULE),
            ),
            // ... but only its scope: another service, another caller.
            case(
                "deploy",
                "ledger",
                "GET",
                "/entries/1",
                (DENY, None, ENFORCE, NO_RULE),
            ),
            case(
                "nobody",
                "payments",
                "POST",
                "/v1/releases/42",
                (DENY, None, ENFORCE, NO_RULE),
            ),
            // Services.
            case(
                "billing",
                "ledger",
                "GET",
                "/entries/1",
                (ALLOW, Some("billing-ledger"), ENFORCE, RULE),
            ),
            case(
                "billing",
                "ledger",
                "GET",
                "/v1/invoices",
                (DENY, None, ENFORCE, NO_RULE),
            ),
            case(
                "billing",
                "legacy",
                "GET",
                "/",
                (DENY, None, ENFORCE, NO_RULE),
            ),
            case(
                "billing",
                "unknown",
                "GET",
                "/",
                (DENY, None, ENFORCE, Reason::UnknownService),
            ),
            // Paths the HTTP layer should have normalised are never allowed.
            case(
                "billing",
                "payments",
                "GET",
                "/v1/invoices/../admin",
                (DENY, None, ENFORCE, Reason::PathNotNormal),
            ),
            case(
                "billing",
                "payments",
                "GET",
                "//v1/invoices",
                (DENY, None, ENFORCE, Reason::PathNotNormal),
            ),
            case(
                "billing",
                "payments",
                "GET",
                "*",
                (DENY, None, ENFORCE, Reason::PathNotNormal),
            ),
            case(
                "deploy",
                "payments",
                "POST",
                "/v1/releases/./1",
                (AUDIT_DENY, release, AUDIT, Reason::PathNotNormal),
            ),
        ],
    );
}

#[test]
fn global_audit_mode_forwards_what_it_would_deny() {
    let p = policy(&POLICY.replace("version: 1\n", "version: 1\nsettings: {mode: audit}\n"));
    let invoices = Some("billing-reads-invoices");
    run(
        &p,
        &[
            case(
                "billing",
                "payments",
                "GET",
                "/v1/invoices",
                (ALLOW, invoices, AUDIT, RULE),
            ),
            case(
                "billing",
                "payments",
                "DELETE",
                "/v1/invoices",
                (AUDIT_DENY, None, AUDIT, NO_RULE),
            ),
            case(
                "nobody",
                "payments",
                "GET",
                "/",
                (AUDIT_DENY, None, AUDIT, NO_RULE),
            ),
            // An audit rule's scope still names the rule.
            case(
                "deploy",
                "payments",
                "GET",
                "/",
                (AUDIT_DENY, Some("deploy-releases"), AUDIT, NO_RULE),
            ),
            case(
                "nobody",
                "nowhere",
                "GET",
                "/",
                (AUDIT_DENY, None, AUDIT, Reason::UnknownService),
            ),
        ],
    );
}

#[test]
fn file_order_beats_specificity() {
    let p = policy(
        "version: 1
identities:
  billing: {exe: /usr/local/bin/billing-worker}
services:
  payments: {endpoints: [\"10.20.0.5:8080\"]}
rules:
  - {id: any-item, from: [billing], to: payments, methods: [GET], paths: [\"/a/{x}\"]}
  - {id: item-b, from: [billing], to: payments, methods: [GET], paths: [/a/b]}
  - {id: rest, from: [\"*\"], to: payments, methods: [GET, POST], paths: [\"/**\"]}
  - {id: post-b, from: [billing], to: payments, methods: [POST], paths: [/a/b]}
",
    );
    run(
        &p,
        &[
            case(
                "billing",
                "payments",
                "GET",
                "/a/b",
                (ALLOW, Some("any-item"), ENFORCE, RULE),
            ),
            case(
                "billing",
                "payments",
                "POST",
                "/a/b",
                (ALLOW, Some("rest"), ENFORCE, RULE),
            ),
            case(
                "nobody",
                "payments",
                "POST",
                "/x",
                (ALLOW, Some("rest"), ENFORCE, RULE),
            ),
        ],
    );
}

#[test]
fn identities_from_another_policy_are_refused() {
    let a = policy(POLICY);
    let b = policy(POLICY);
    let billing = a.classify(&callers()[0].1);
    let none: &[(&str, &str)] = &[];
    let d = b.decide(&billing, "payments", "GET", "/v1/invoices", none, None);
    assert_eq!(
        (d.verdict, d.rule_id(), d.reason),
        (DENY, None, Reason::StaleIdentities)
    );
    // A clone is the same policy.
    let clone = a.clone();
    let d = clone.decide(&billing, "payments", "GET", "/v1/invoices", none, None);
    assert_eq!(d.verdict, ALLOW);
}

/// The first rule a plain scan finds, for comparison with the index.
fn reference<'p>(
    p: &'p Policy,
    caller: &IdentitySet,
    service: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    query: Option<&str>,
) -> Option<&'p str> {
    p.rules()
        .iter()
        .find(|r| {
            r.service() == service
                && match &r.from {
                    super::super::matcher::Callers::Any => true,
                    super::super::matcher::Callers::Identities(ids) => {
                        ids.iter().any(|i| caller.ids.contains(i))
                    }
                }
                && r.paths.iter().any(|pat| pat.matches(path))
                && r.unmet(method, headers, query).is_none()
        })
        .map(Rule::id)
}

/// A small deterministic random sequence.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) as usize) % bound
    }

    fn pick<'a>(&mut self, of: &[&'a str]) -> &'a str {
        of[self.next(of.len())]
    }
}

#[test]
fn the_index_agrees_with_a_scan_of_the_rules() {
    // Overlapping patterns over a tiny alphabet, so that many rules compete for each path.
    let mut rng = Lcg(7);
    let mut text = String::from(
        "version: 1\nidentities:\n  a: {user: a}\n  b: {user: b}\nservices:\n  s: {endpoints: \
         [\"10.0.0.1:80\"]}\n  t: {endpoints: [\"10.0.0.2:80\"]}\nrules:\n",
    );
    for k in 0..300 {
        let depth = rng.next(4);
        let mut pattern = String::new();
        for _ in 0..depth {
            pattern.push('/');
            pattern.push_str(rng.pick(&["a", "b", "c", "*", "{x}"]));
        }
        match rng.next(4) {
            0 => pattern.push_str("/**"),
            1 if depth > 0 => pattern.push('/'),
            _ if depth == 0 => pattern.push('/'),
            _ => {}
        }
        let from = rng.pick(&["[a]", "[b]", "[a, b]", "[\"*\"]"]);
        let to = rng.pick(&["s", "s", "t"]);
        let methods = rng.pick(&["[GET]", "[POST]", "[GET, POST]", "[\"*\"]"]);
        text.push_str(&format!(
            "  - {{id: r{k}, from: {from}, to: {to}, methods: {methods}, paths: [\"{pattern}\"]"
        ));
        match rng.next(6) {
            0 => text.push_str(", headers: {x-h: \"1\"}"),
            1 => text.push_str(", query: {q: \"1\"}"),
            2 => text.push_str(", mode: audit"),
            _ => {}
        }
        text.push_str("}\n");
    }
    let p = policy(&text);
    let callers = [
        who().user(1, Some("a")),
        who().user(2, Some("b")),
        who().user(3, Some("c")),
    ];
    let headers: [&[(&str, &str)]; 2] = [&[], &[("x-h", "1")]];
    let mut compared = 0;
    for caller in &callers {
        let set = p.classify(&caller.0);
        for _ in 0..3000 {
            let mut path = String::new();
            for _ in 0..rng.next(5) {
                path.push('/');
                path.push_str(rng.pick(&["a", "b", "c", "d"]));
            }
            if path.is_empty() || rng.next(4) == 0 {
                path.push('/');
            }
            let service = rng.pick(&["s", "t"]);
            let method = rng.pick(&["GET", "POST", "PUT"]);
            let headers = headers[rng.next(2)];
            let query = [None, Some("q=1")][rng.next(2)];
            let d = p.decide(&set, service, method, &path, headers, query);
            let want = reference(&p, &set, service, method, &path, headers, query);
            let got = (d.verdict == ALLOW).then(|| d.rule_id()).flatten();
            assert_eq!(got, want, "{method} {service} {path} {headers:?} {query:?}");
            compared += 1;
        }
    }
    assert_eq!(compared, 9000);
}

#[test]
fn the_synthetic_benchmark_policy_decides_as_a_scan_does() {
    let s = crate::policy::synthetic(2000);
    let headers: Vec<(&str, &str)> = s
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let mut allowed = 0;
    for (method, path, query) in &s.requests {
        let d = s.policy.decide(
            &s.caller,
            s.service,
            method,
            path,
            &headers[..],
            query.as_deref(),
        );
        let want = reference(
            &s.policy,
            &s.caller,
            s.service,
            method,
            path,
            &headers,
            query.as_deref(),
        );
        let got = (d.verdict == ALLOW).then(|| d.rule_id()).flatten();
        assert_eq!(got, want, "{method} {path}");
        allowed += usize::from(got.is_some());
    }
    // The mix is meant to be about a third allowed.
    assert!((200..500).contains(&allowed), "{allowed} allowed");
}
