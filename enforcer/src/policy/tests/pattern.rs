//! Path patterns, methods and globs.

use super::super::{
    glob::Glob,
    pattern::{Method, Methods, PathPattern},
};

#[test]
fn path_patterns() {
    // (pattern, path, matches)
    let cases = [
        ("/", "/", true),
        ("/", "/a", false),
        ("/v1/invoices", "/v1/invoices", true),
        ("/v1/invoices", "/v1/invoices/", false),
        ("/v1/invoices", "/v1/invoice", false),
        ("/v1/invoices", "/v1/invoices/1", false),
        ("/v1/invoices", "/V1/invoices", false),
        ("/v1/invoices/", "/v1/invoices/", true),
        ("/v1/invoices/", "/v1/invoices", false),
        ("/v1/invoices/{id}", "/v1/invoices/42", true),
        ("/v1/invoices/{id}", "/v1/invoices/42/", false),
        ("/v1/invoices/{id}", "/v1/invoices/", false),
        ("/v1/invoices/{id}", "/v1/invoices", false),
        ("/v1/invoices/{id}", "/v1/invoices/4/2", false),
        ("/v1/*/items", "/v1/x/items", true),
        ("/v1/*/items", "/v1/items", false),
        ("/v1/{a}/{b}", "/v1/x/y", true),
        ("/v1/reports/**", "/v1/reports", true),
        ("/v1/reports/**", "/v1/reports/", true),
        ("/v1/reports/**", "/v1/reports/2024", true),
        ("/v1/reports/**", "/v1/reports/2024/q1/", true),
        ("/v1/reports/**", "/v1/reportsx", false),
        ("/v1/reports/**", "/v1", false),
        ("/**", "/", true),
        ("/**", "/anything/at/all", true),
        // Literal segments match byte for byte, encodings included.
        ("/files/a%2Fb", "/files/a%2Fb", true),
        ("/files/~me", "/files/~me", true),
        // Wildcards never match an encoded or raw separator.
        ("/files/*", "/files/a%2Fb", false),
        ("/files/*", "/files/a%2fb", false),
        ("/files/*", "/files/a%5Cb", false),
        ("/files/*", "/files/a\\b", false),
        ("/files/**", "/files/x/a%2F..%2Fb", false),
        ("/files/*", "/files/a%20b", true),
        // Paths that are not normalised match nothing.
        ("/**", "/a/../b", false),
        ("/**", "/a//b", false),
        ("/**", "//", false),
        ("/**", "a", false),
        ("/**", "", false),
    ];
    for (pattern, path, want) in cases {
        let p: PathPattern = pattern.parse().expect(pattern);
        assert_eq!(p.matches(path), want, "{pattern} vs {path}");
    }
}

#[test]
fn bad_path_patterns() {
    let cases = [
        ("", "must start with `/`"),
        ("*", "must start with `/`"),
        ("//", "empty segment (`//`)"),
        ("/a//", "empty segment (`//`)"),
        ("/**/", "`**` must be the last segment"),
        ("/a/**/b", "`**` must be the last segment"),
        ("/a**", "`a**`: `**` must be a whole segment"),
        (
            "/{}",
            "`{}`: a parameter name is a letter or `_`, then letters, digits or `_`",
        ),
        (
            "/{a-b}",
            "`{a-b}`: a parameter name is a letter or `_`, then letters, digits or `_`",
        ),
        ("/id}", "`id}`: `{name}` must be a whole segment"),
        (
            "/./a",
            "`.` segments are resolved before matching, so never match",
        ),
        ("/%41", "`%41`: `%41` is decoded before matching: write `A`"),
        (
            "/%2e",
            "`%2e`: write percent-encodings in upper case (`%2E`)",
        ),
        ("/%2", "`%2`: `%` must start a percent-encoding (`%2F`)"),
        ("/é", "`é`: `é` must be percent-encoded"),
        ("/a\"b", "`a\"b`: `\"` must be percent-encoded"),
    ];
    for (pattern, want) in cases {
        assert_eq!(
            pattern.parse::<PathPattern>().map(|_| ()),
            Err(want.to_owned()),
            "{pattern}"
        );
    }
    for ok in [
        "/a/b/",
        "/{_id}/{x9}",
        "/a:b@c!$&'()+,;=",
        "/%2F%C3%A9",
        "/v1/**",
    ] {
        assert!(ok.parse::<PathPattern>().is_ok(), "{ok}");
    }
}

#[test]
fn methods() {
    let of = |list: &[&str]| {
        let mut m = Methods::default();
        for x in list {
            m.add(x).expect(x);
        }
        m
    };
    // (methods, request method, allowed)
    let cases: &[(&[&str], &str, bool)] = &[
        (&["GET"], "GET", true),
        (&["GET"], "HEAD", false),
        (&["GET"], "get", false),
        (&["GET", "HEAD"], "HEAD", true),
        (&["*"], "DELETE", true),
        (&["*"], "PROPFIND", true),
        (&["PROPFIND"], "PROPFIND", true),
        (&["PROPFIND"], "PROPPATCH", false),
        (&["PATCH"], "PATCH", true),
    ];
    for (list, method, want) in cases {
        assert_eq!(
            of(list).contains(Method::new(method)),
            *want,
            "{list:?} {method}"
        );
    }
    assert_eq!(
        of(&["POST", "GET", "MKCOL", "GET"]).to_string(),
        "GET, POST, MKCOL"
    );
    assert_eq!(of(&["GET", "*"]).to_string(), "*");
    let mut m = Methods::default();
    assert_eq!(
        m.add("Get"),
        Err("`Get`: methods are case-sensitive: write `GET`".into())
    );
    assert_eq!(m.add(""), Err("`` is not a method".into()));
    assert_eq!(m.add("GET /"), Err("`GET /` is not a method".into()));
}

#[test]
fn path_globs() {
    // (glob, path, matches)
    let cases = [
        ("/usr/bin/curl", "/usr/bin/curl", true),
        ("/usr/bin/curl", "/usr/bin/curl2", false),
        ("/usr/bin/curl", "/usr/local/bin/curl", false),
        ("/usr/bin/*", "/usr/bin/curl", true),
        ("/usr/bin/*", "/usr/bin/", false),
        ("/usr/bin/*", "/usr/bin/x/y", false),
        ("/usr/bin/py*3", "/usr/bin/python3", true),
        ("/usr/bin/py*3", "/usr/bin/py3", true),
        ("/usr/bin/py*3", "/usr/bin/python3.11", false),
        ("/usr/bin/python3.??", "/usr/bin/python3.11", true),
        ("/usr/bin/python3.??", "/usr/bin/python3.9", false),
        ("/opt/?pp", "/opt/äpp", true),
        ("/opt/**", "/opt", true),
        ("/opt/**", "/opt/a", true),
        ("/opt/**", "/opt/a/b/c", true),
        ("/opt/**", "/optx/a", false),
        ("/opt/**/bin/app", "/opt/bin/app", true),
        ("/opt/**/bin/app", "/opt/x/y/bin/app", true),
        ("/opt/**/bin/app", "/opt/x/y/bin/app2", false),
        ("/**/bin/*", "/usr/local/bin/curl", true),
        ("/**/*.slice/**", "/system.slice/x.service", true),
        ("/**", "/", true),
        ("/", "/", true),
        ("/usr/bin/curl", "usr/bin/curl", false),
        ("/*/*", "/a/b/c", false),
        ("/a*b*c", "/aXbYbZc", true),
        ("/a*b*c", "/aXbYbZ", false),
    ];
    for (glob, text, want) in cases {
        let g = Glob::path(glob).expect(glob);
        assert_eq!(g.matches(text), want, "{glob} vs {text}");
    }
    assert_eq!(
        Glob::path("/usr/bin/curl").unwrap().exact(),
        Some("/usr/bin/curl")
    );
    assert_eq!(Glob::path("/usr/bin/*").unwrap().exact(), None);
}

#[test]
fn name_globs() {
    let cases = [
        ("nginx.service", "nginx.service", true),
        ("nginx.service", "nginx.socket", false),
        ("nginx*.service", "nginx-worker.service", true),
        ("*.service", "deploy-bot.service", true),
        ("*.service", "session-3.scope", false),
        ("user@*.service", "user@1000.service", true),
        ("getty@tty?.service", "getty@tty1.service", true),
        ("getty@tty?.service", "getty@tty10.service", false),
    ];
    for (glob, text, want) in cases {
        let g = Glob::name(glob).expect(glob);
        assert_eq!(g.matches(text), want, "{glob} vs {text}");
    }
    assert_eq!(
        Glob::name("a/b").map(|_| ()),
        Err("a name has no `/`".into())
    );
    assert_eq!(
        Glob::name("{a,b}.service").map(|_| ()),
        Err("`[`, `]`, `{` and `}` are reserved".into())
    );
}
