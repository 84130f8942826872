use super::*;

#[test]
fn header_lookalikes() {
    let cases: &[(&[(&str, &str)], bool)] = &[
        (&[("x-tenant", "a")], false),
        (&[("X-Tenant", "a")], false),
        (&[("X-TENANT", "a"), ("accept", "*/*")], false),
        (&[("x_tenant", "a")], true),
        (&[("X_Tenant", "a"), ("x-tenant", "a")], true),
        (&[("x-tenant", "a"), ("x.tenant", "b")], true),
        (&[("xtenant", "a")], true),
        (&[("x-tenant", "a"), ("X-Tenant", "b")], true),
        (&[("x-tenants", "a")], false),
        (&[("tenant", "a")], false),
    ];
    for (headers, lookalike) in cases {
        assert_eq!(
            lookalike_header(*headers, "x-tenant"),
            *lookalike,
            "{headers:?}"
        );
    }
}

#[test]
fn query_lookalikes() {
    let cases: &[(Option<&str>, bool)] = &[
        (None, false),
        (Some("format=json"), false),
        (Some("a=1&format=json&b=2"), false),
        (Some("formats=json"), false),
        (Some("FORMAT=json"), true),
        (Some("format=json&FORMAT=xml"), true),
        (Some("Format=json"), true),
        (Some("format=json;format=xml"), true),
        (Some("a=1;format=xml"), true),
        (Some("format=json&format=xml"), true),
        (Some("%66ormat=json"), true),
        (Some("form%61t=xml"), true),
        (Some("format"), false),
        (Some("format&format"), true),
        (Some("a=format"), false),
    ];
    for (query, lookalike) in cases {
        assert_eq!(lookalike_query(*query, "format"), *lookalike, "{query:?}");
    }
}

#[test]
fn host_patterns() {
    let patterns: Vec<Box<str>> = vec!["api.example.com".into(), "*.svc.example".into()];
    let cases: &[(&[u8], bool)] = &[
        (b"api.example.com", true),
        (b"API.Example.COM", true),
        (b"api.example.com:8080", true),
        (b"api.example.com.", true),
        (b"www.example.com", false),
        (b"example.com", false),
        (b"a.svc.example", true),
        (b"a.b.svc.example:443", true),
        (b"svc.example", false),
        (b".svc.example", false),
        (b"xsvc.example", false),
        (b"api.example.com.evil", false),
        ("äpi.example.com".as_bytes(), false),
        (b"\xffapi", false),
    ];
    for (host, allowed) in cases {
        assert_eq!(
            host_allowed(host, &patterns),
            *allowed,
            "{}",
            host.escape_ascii()
        );
    }
    let literals: Vec<Box<str>> = vec!["127.0.0.1".into(), "[::1]".into()];
    assert!(host_allowed(b"127.0.0.1:8080", &literals));
    assert!(host_allowed(b"[::1]:8080", &literals));
    assert!(!host_allowed(b"127.0.0.2", &literals));
}

#[test]
fn host_pattern_syntax() {
    for good in [
        "api.example.com",
        "*.example.com",
        "localhost",
        "10.0.0.1",
        "[::1]",
        "a-b.c",
    ] {
        assert!(valid_host_pattern(good), "{good}");
    }
    for bad in [
        "",
        "*",
        "*.",
        "api.example.com:80",
        "a..b",
        "*.[::1]",
        "[nope]",
        "a b",
        "äpi.de",
        "x/y",
    ] {
        assert!(!valid_host_pattern(bad), "{bad}");
    }
}

#[test]
fn overrides_are_refused_unless_listed_and_allowed() {
    let mut methods = Methods::default();
    methods.add("GET").unwrap();
    methods.add("POST").unwrap();
    let paths: Vec<PathPattern> = vec!["/v1/items/**".parse().unwrap()];
    let listed: Vec<Box<str>> = vec!["x-http-method-override".into(), "x-original-url".into()];
    let none: Vec<Box<str>> = vec![];
    let refused = Err(Evasion::MethodOverride);
    // (headers, the rule's `overrides`, verdict)
    type Case<'a> = (
        &'a [(&'a str, &'a str)],
        &'a [Box<str>],
        Result<(), Evasion>,
    );
    let cases: &[Case] = &[
        (&[("accept", "*/*")], &none, Ok(())),
        (&[("X-HTTP-Method-Override", "GET")], &none, refused),
        (&[("X-HTTP-Method-Override", "GET")], &listed, Ok(())),
        (&[("X-HTTP-Method-Override", "DELETE")], &listed, refused),
        (&[("X_HTTP_Method_Override", "GET")], &listed, refused),
        (&[("x-http-method", "GET")], &listed, refused),
        (&[("X-Method-Override", "POST")], &none, refused),
        (&[("X-Original-Method", "POST")], &none, refused),
        (&[("X-Original-URL", "/v1/items/3")], &listed, Ok(())),
        (&[("X-Original-URL", "/admin")], &listed, refused),
        (
            &[("X-Original-URL", "/v1/items/../../admin")],
            &listed,
            refused,
        ),
        (
            &[("X-Original-URL", "http://x/v1/items/3")],
            &listed,
            refused,
        ),
        (&[("X-Rewrite-URL", "/v1/items/3")], &listed, refused),
        (&[("X-Override-URL", "/v1/items/3")], &none, refused),
    ];
    for (headers, listed, want) in cases {
        assert_eq!(
            overrides_ok(*headers, listed, &methods, &paths),
            *want,
            "{headers:?} with {listed:?}"
        );
    }
}
