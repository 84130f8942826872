use super::*;

#[test]
fn normalizes_paths() {
    let cases: &[(&str, &str)] = &[
        ("/", "/"),
        ("/a/./b/../c", "/a/c"),
        ("//a///b/", "/a/b/"),
        ("//evil.example/x", "/evil.example/x"),
        ("/%7Euser", "/~user"),
        ("/A%2dB", "/A-B"),
        ("/%41%62%5f%30", "/Ab_0"),
        ("/a%20b", "/a%20b"),
        ("/a%3bb%3F%23", "/a%3Bb%3F%23"),
        ("/a%2bb", "/a%2Bb"),
        ("/%25", "/%25"),
        ("/path-%09-uri", "/path-%09-uri"),
        ("/path-%0d-uri", "/path-%0D-uri"),
        ("/%c3%a9t%C3%A9", "/%C3%A9t%C3%A9"),
        ("/%E2%82%AC", "/%E2%82%AC"),
        ("/%f0%9f%98%80", "/%F0%9F%98%80"),
        ("/a/b/..", "/a/"),
        ("/a/b/.", "/a/b/"),
        ("/a/..", "/"),
        ("/.", "/"),
        ("/./", "/"),
        ("/a/b/../../c", "/c"),
        ("/a/b/c/../../", "/a/"),
        ("/a//..", "/"),
        ("/...", "/..."),
        ("/..a/a..", "/..a/a.."),
        ("/.well-known/x", "/.well-known/x"),
        ("/a:b@c!$&'()*+,=", "/a:b@c!$&'()*+,="),
    ];
    for (raw, expected) in cases {
        assert_eq!(
            normalize_path(raw.as_bytes()).as_deref(),
            Ok(*expected),
            "{raw}"
        );
    }
}

#[test]
fn normalizing_is_idempotent() {
    for raw in ["/a/./b/../c/", "//x//%7e%2d%c3%a9/.", "/a%20b/%3B"] {
        let once = normalize_path(raw.as_bytes()).unwrap();
        assert_eq!(normalize_path(once.as_bytes()), Ok(once.clone()), "{raw}");
    }
}

#[test]
fn refuses_paths() {
    use TargetError::*;
    let cases: &[(&[u8], TargetError)] = &[
        (b"/a%2fb", ForbiddenEscape { byte: b'/' }),
        (b"/a/%252e%252e/b", DoubleEscape),
        (b"/a%252Fb", DoubleEscape),
        (b"/a%2Fb", ForbiddenEscape { byte: b'/' }),
        (b"/%2e%2e/", ForbiddenEscape { byte: b'.' }),
        (b"/a/%2E", ForbiddenEscape { byte: b'.' }),
        (b"/a%5cb", ForbiddenEscape { byte: b'\\' }),
        (b"/a%5C", ForbiddenEscape { byte: b'\\' }),
        (b"/a%00", ForbiddenEscape { byte: 0 }),
        (b"/..", AboveRoot),
        (b"/../a", AboveRoot),
        (b"/a/../..", AboveRoot),
        (b"/a/./../../b", AboveRoot),
        // Overlong encodings of `.` and `/`.
        (b"/a/%C0%AE%C0%AE/", InvalidUtf8Escape),
        (b"/%c0%af", InvalidUtf8Escape),
        (b"/%E0%80%AE", InvalidUtf8Escape),
        (b"/%F0%80%80%AF", InvalidUtf8Escape),
        // A surrogate, and a code point above U+10FFFF.
        (b"/%ED%A0%80", InvalidUtf8Escape),
        (b"/%F4%90%80%80", InvalidUtf8Escape),
        // A lone continuation byte, a truncated sequence, a sequence broken by a raw byte.
        (b"/%80", InvalidUtf8Escape),
        (b"/%C3", InvalidUtf8Escape),
        (b"/%C3x", InvalidUtf8Escape),
        (b"/%C3%41", InvalidUtf8Escape),
        (b"/%FF", InvalidUtf8Escape),
        (b"/%C3%", MalformedEscape),
        (b"/a%", MalformedEscape),
        (b"/a%1", MalformedEscape),
        (b"/a%g0", MalformedEscape),
        (b"/a%%41", MalformedEscape),
        (b"/a\\b", Backslash),
        (b"/a;b", PathParameter),
        (b"/allowed/..;/admin", PathParameter),
        (b"/a\tb", Control),
        (b"/a\x00", Control),
        (b"/a\x7f", Control),
        ("/é".as_bytes(), NonAscii),
        (b"/\xff", NonAscii),
        (b"/a b", InvalidChar { byte: b' ' }),
        (b"/a<b", InvalidChar { byte: b'<' }),
        (b"/a\"b", InvalidChar { byte: b'"' }),
        (b"/a|b", InvalidChar { byte: b'|' }),
        (b"/a[b", InvalidChar { byte: b'[' }),
        (b"/a{b", InvalidChar { byte: b'{' }),
        (b"/a^b", InvalidChar { byte: b'^' }),
        (b"/a`b", InvalidChar { byte: b'`' }),
        (b"a", UnsupportedForm),
    ];
    for (raw, expected) in cases {
        assert_eq!(
            normalize_path(raw).as_ref(),
            Err(expected),
            "{}",
            raw.escape_ascii()
        );
    }
}

#[test]
fn splits_target_into_path_and_query() {
    let cases: &[(&str, Option<&str>, &str, Option<&str>)] = &[
        ("/x?q=%2F..", None, "/x", Some("q=%2F..")),
        ("/a/../b?x=1&y=/../z", None, "/b", Some("x=1&y=/../z")),
        ("/x?", None, "/x", Some("")),
        ("/x?a=b?c", None, "/x", Some("a=b?c")),
        ("/x?%dd=%ee", None, "/x", Some("%dd=%ee")),
        (
            "/x?f={\"a\":[1]}|^`\\",
            None,
            "/x",
            Some("f={\"a\":[1]}|^`\\"),
        ),
        ("/x?a;b", None, "/x", Some("a;b")),
        (
            "http://a.example/x/../y?z",
            Some("a.example"),
            "/y",
            Some("z"),
        ),
        ("HTTP://A.example:8080", Some("A.example:8080"), "/", None),
        ("http://a.example?z", Some("a.example"), "/", Some("z")),
        ("http://[::1]:80//", Some("[::1]:80"), "/", None),
    ];
    for (raw, authority, path, query) in cases {
        let target = parse_target(raw.as_bytes()).unwrap();
        assert_eq!(target.authority, authority.map(str::as_bytes), "{raw}");
        assert_eq!(target.path, *path, "{raw}");
        assert_eq!(target.query.as_deref(), *query, "{raw}");
    }
}

#[test]
fn refuses_targets() {
    use TargetError::*;
    let cases: &[(&[u8], TargetError)] = &[
        (b"", Empty),
        (b"*", AsteriskForm),
        (b"/x#f", Fragment),
        (b"/x?a#f", Fragment),
        (b"a.example:443", UnsupportedForm),
        (b"x", UnsupportedForm),
        (b"https://a.example/", UnsupportedScheme),
        (b"ftp://a.example/", UnsupportedScheme),
        (b"http://user@a.example/", UserInfo),
        (b"http://a.example:99999/", BadAuthority),
        (b"http:///x", BadAuthority),
        (b"http://a%2eexample/", BadAuthority),
        (b"http://a.example/%2e%2e/", ForbiddenEscape { byte: b'.' }),
        (b"/x?a\x01", Control),
        (b"/x?a b", InvalidChar { byte: b' ' }),
        (b"/x?\xc3\xa9", NonAscii),
        (b"/x?%zz", MalformedEscape),
        (b"/x?100%", MalformedEscape),
    ];
    for (raw, expected) in cases {
        assert_eq!(
            parse_target(raw).map(|t| t.path).as_ref(),
            Err(expected),
            "{}",
            raw.escape_ascii()
        );
    }
}

#[test]
fn checks_authorities() {
    for good in [
        "example.com",
        "Example.COM:8080",
        "a_b.c~d-e",
        "10.0.0.1:1",
        "[::1]",
        "[::1]:443",
        "[2001:db8::192.0.2.1]",
        "x:65535",
    ] {
        assert!(is_authority(good.as_bytes()), "{good}");
    }
    for bad in [
        "",
        ":80",
        "a:",
        "a:65536",
        "a:123456",
        "a:+80",
        "a: 80",
        "a b",
        "a@b",
        "a/b",
        "a%20b",
        "a:80:90",
        "[::1",
        "[]",
        "[::g]",
        "[::1]x",
        "é.example",
    ] {
        assert!(!is_authority(bad.as_bytes()), "{bad}");
    }
}
