use super::*;
use crate::http::head::STACK_HEADERS;

/// Parses a complete head with the default limits.
fn parse(head: &[u8]) -> Result<Request, RequestError> {
    parse_with(head, &Limits::default())
}

fn parse_with(head: &[u8], limits: &Limits) -> Result<Request, RequestError> {
    match parse_request(head, limits)? {
        Some((request, len)) => {
            assert_eq!(len, head.len(), "head length of {}", head.escape_ascii());
            Ok(request)
        }
        None => panic!("incomplete: {}", head.escape_ascii()),
    }
}

fn written(request: &Request) -> String {
    let mut out = BytesMut::new();
    write_request_head(request, &mut out);
    String::from_utf8(out.to_vec()).unwrap()
}

fn header_values(request: &Request, name: &str) -> Vec<String> {
    request
        .headers()
        .iter()
        .filter(|h| h.name().eq_ignore_ascii_case(name))
        .map(|h| String::from_utf8(h.value().to_vec()).unwrap())
        .collect()
}

fn head_error(error: HeadError) -> RequestError {
    RequestError::Head(error)
}

#[test]
fn parses_a_simple_request() {
    let request =
        parse(b"GET /a/./b?x=1 HTTP/1.1\r\nHost: api.example\r\nAccept: */*\r\n\r\n").unwrap();
    assert_eq!(request.method(), &Method::Get);
    assert_eq!(request.path(), "/a/b");
    assert_eq!(request.query(), Some("x=1"));
    assert_eq!(request.version(), Version::Http11);
    assert_eq!(request.host(), Some("api.example"));
    assert_eq!(request.body(), Body::None);
    assert!(request.keep_alive());
    assert!(!request.expect_continue());
    assert_eq!(request.upgrade(), None);
    let names: Vec<_> = request.headers().iter().map(Header::name).collect();
    assert_eq!(names, ["Host", "Accept"]);
}

#[test]
fn returns_none_until_the_head_is_complete() {
    let head = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n";
    for end in 0..head.len() {
        assert_eq!(
            parse_request(&head[..end], &Limits::default()),
            Ok(None),
            "{end}"
        );
    }
    let mut buf = head.to_vec();
    buf.extend_from_slice(b"abcGET / HTTP/1.1\r\n");
    let (request, len) = parse_request(&buf, &Limits::default()).unwrap().unwrap();
    assert_eq!(len, head.len());
    assert_eq!(request.body(), Body::Length(3));
}

#[test]
fn accepts_what_it_should() {
    let cases: &[&[u8]] = &[
        // Empty lines before the request line (RFC 9112 §2.2).
        b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
        b"HEAD / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
        b"DELETE /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n",
        b"OPTIONS /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nX-Empty:\r\nX-Obs-Text: \x80\xff\r\nX-Tab: a\tb\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: [::1]:8443\r\nConnection: keep-alive, te\r\nTE: trailers\r\n\r\n",
        b"PROPFIND /dav HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nMy_Custom_Header: 1\r\nX_Forwarded_For: 2\r\n\r\n",
    ];
    for head in cases {
        if let Err(error) = parse(head) {
            panic!("{}: {error:?}", head.escape_ascii());
        }
    }
}

#[test]
fn derives_framing() {
    let cases: &[(&[u8], Body)] = &[
        (b"POST / HTTP/1.1\r\nHost: a\r\n\r\n", Body::None),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:  42 \r\n\r\n",
            Body::Length(42),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 007\r\n\r\n",
            Body::Length(7),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            Body::Chunked,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding: ChUnKeD\r\n\r\n",
            Body::Chunked,
        ),
        (
            b"POST / HTTP/1.0\r\nContent-Length: 5\r\n\r\n",
            Body::Length(5),
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
            Body::Length(0),
        ),
    ];
    for (head, body) in cases {
        assert_eq!(
            parse(head).map(|r| r.body()),
            Ok(*body),
            "{}",
            head.escape_ascii()
        );
    }
}

#[test]
fn derives_connection_state() {
    // (head, keep_alive, expect_continue, upgrade)
    let cases: &[(&[u8], bool, bool, Option<&str>)] = &[
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", true, false, None),
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", false, false, None),
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive, CLOSE\r\n\r\n", false, false, None),
        (b"GET / HTTP/1.0\r\n\r\n", false, false, None),
        (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true, false, None),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n",
            true,
            true,
            None,
        ),
        // RFC 9110 §10.1.1: ignored on HTTP/1.0.
        (
            b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            false,
            false,
            None,
        ),
        (
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\n\r\n",
            true,
            false,
            Some("websocket"),
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n",
            true,
            false,
            Some("h2c"),
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: HTTP/2.0\r\n\r\n",
            true,
            false,
            Some("http/2.0"),
        ),
        // `Connection: upgrade` alone asks for nothing.
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n", true, false, None),
    ];
    for (head, keep_alive, expect_continue, upgrade) in cases {
        let request = parse(head).unwrap();
        assert_eq!(request.keep_alive(), *keep_alive, "{}", head.escape_ascii());
        assert_eq!(
            request.expect_continue(),
            *expect_continue,
            "{}",
            head.escape_ascii()
        );
        assert_eq!(request.upgrade(), *upgrade, "{}", head.escape_ascii());
    }
}

#[test]
fn parses_methods() {
    for (token, method) in [
        ("GET", Method::Get),
        ("HEAD", Method::Head),
        ("POST", Method::Post),
        ("PUT", Method::Put),
        ("DELETE", Method::Delete),
        ("OPTIONS", Method::Options),
        ("PATCH", Method::Patch),
        ("TRACE", Method::Trace),
        ("PROPFIND", Method::Other("PROPFIND".into())),
        // Methods are case-sensitive.
        ("get", Method::Other("get".into())),
    ] {
        let head = format!("{token} / HTTP/1.1\r\nHost: a\r\n\r\n");
        let request = parse(head.as_bytes()).unwrap();
        assert_eq!(request.method(), &method);
        assert_eq!(request.method().as_str(), token);
    }
    assert_eq!(Method::Connect.as_str(), "CONNECT");
}

#[test]
fn idempotent_methods_are_those_of_rfc_9110() {
    let idempotent = |token: &str| {
        let head = format!("{token} / HTTP/1.1\r\nHost: a\r\n\r\n");
        parse(head.as_bytes()).unwrap().method().is_idempotent()
    };
    for token in ["GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"] {
        assert!(idempotent(token), "{token}");
    }
    // Unknown methods are not assumed safe to repeat.
    for token in ["POST", "PATCH", "PROPFIND", "get"] {
        assert!(!idempotent(token), "{token}");
    }
    assert!(!Method::Connect.is_idempotent());
}

#[test]
fn refuses_what_it_should() {
    use RequestError::*;
    let cases: &[(&[u8], RequestError)] = &[
        // Not HTTP/1.x; refused before the head is complete.
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", NotHttp { what: "tls" }),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", NotHttp { what: "http2" }),
        (b"PRI * HTTP/2.0", NotHttp { what: "http2" }),
        // Request line.
        (b"GET\r\n\r\n", BadRequestLine),
        (b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", BadMethod),
        (b" GET / HTTP/1.1\r\nHost: a\r\n\r\n", BadMethod),
        (b"bad_method\x01 / HTTP/1.1\r\nHost: a\r\n\r\n", BadMethod),
        (b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", Target(TargetError::Empty)),
        (b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", UnsupportedVersion),
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", UnsupportedVersion),
        (b"GET / HTTP/0.9\r\nHost: a\r\n\r\n", UnsupportedVersion),
        (b"GET / http/1.1\r\nHost: a\r\n\r\n", UnsupportedVersion),
        (b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", UnsupportedVersion),
        (b"GET / HTTP/1.1 HTTP/1.1\r\nHost: a\r\n\r\n", UnsupportedVersion),
        (b"GET /\r\nHost: a\r\n\r\n", UnsupportedVersion),
        (b"GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n", Target(TargetError::Control)),
        (b"GET /a\x00 HTTP/1.1\r\nHost: a\r\n\r\n", Target(TargetError::Control)),
        (b"GET /\xff HTTP/1.1\r\nHost: a\r\n\r\n", Target(TargetError::NonAscii)),
        (b"GET /a\\b HTTP/1.1\r\nHost: a\r\n\r\n", Target(TargetError::Backslash)),
        (b"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n", Target(TargetError::Fragment)),
        (
            b"GET /a%2fb HTTP/1.1\r\nHost: a\r\n\r\n",
            Target(TargetError::ForbiddenEscape { byte: b'/' }),
        ),
        (b"GET /.. HTTP/1.1\r\nHost: a\r\n\r\n", Target(TargetError::AboveRoot)),
        (b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n", Connect),
        (b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", Target(TargetError::AsteriskForm)),
        (b"GET a.example:443 HTTP/1.1\r\nHost: a\r\n\r\n", Target(TargetError::UnsupportedForm)),
        (b"GET https://a/ HTTP/1.1\r\nHost: a\r\n\r\n", Target(TargetError::UnsupportedScheme)),
        (b"GET http://b/x HTTP/1.1\r\nHost: a\r\n\r\n", HostMismatch),
        (b"GET http://a:8080/x HTTP/1.1\r\nHost: a\r\n\r\n", HostMismatch),
        (b"GET http://a/x HTTP/1.0\r\n\r\n", MissingHost),
        // Framing.
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            ContentLengthWithTransferEncoding,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n",
            ContentLengthWithTransferEncoding,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nContent-Length: 1\r\n\r\n",
            ContentLengthWithTransferEncoding,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 42\r\nContent-Length: 42\r\n\r\n",
            DuplicateContentLength,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\ncontent-length: 2\r\n\r\n",
            DuplicateContentLength,
        ),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 42, 42\r\n\r\n", BadContentLength),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 42,42\r\n\r\n", BadContentLength),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n", BadContentLength),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", BadContentLength),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 0\r\n\r\n", BadContentLength),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n", BadContentLength),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", BadContentLength),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\xa0\r\n\r\n", BadContentLength),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1234567890123456789\r\n\r\n",
            BadContentLength,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            DuplicateTransferEncoding,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            UnsupportedTransferEncoding,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            UnsupportedTransferEncoding,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;x\r\n\r\n",
            UnsupportedTransferEncoding,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n",
            UnsupportedTransferEncoding,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n",
            UnsupportedTransferEncoding,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
            UnsupportedTransferEncoding,
        ),
        (
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            TransferEncodingInHttp10,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n",
            UnexpectedBody { method: "GET" },
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            UnexpectedBody { method: "GET" },
        ),
        (
            b"HEAD / HTTP/1.1\r\nHost: a\r\nContent-Length: 9000\r\n\r\n",
            UnexpectedBody { method: "HEAD" },
        ),
        (
            b"HEAD / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            UnexpectedBody { method: "HEAD" },
        ),
        (
            b"TRACE / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
            UnexpectedBody { method: "TRACE" },
        ),
        // Field lines.
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nX: a\r\n chunked\r\n\r\n",
            head_error(HeadError::ObsFold),
        ),
        (
            b"POST / HTTP/1.1\r\n Transfer-Encoding: chunked\r\nHost: a\r\n\r\n",
            head_error(HeadError::ObsFold),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\n   \t\t  : chunked\r\n\r\n",
            head_error(HeadError::ObsFold),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\n",
            head_error(HeadError::WhitespaceBeforeColon {
                name: "Content-Length ".into(),
            }),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding\t: chunked\r\n\r\n",
            head_error(HeadError::WhitespaceBeforeColon {
                name: "Transfer-Encoding\\t".into(),
            }),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\n: chunked\r\n\r\n",
            head_error(HeadError::EmptyHeaderName),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\n:SomeHeader:Transfer-Encoding: chunked\r\n\r\n",
            head_error(HeadError::EmptyHeaderName),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding\r\n\r\n",
            head_error(HeadError::MissingColon {
                line: "Transfer-Encoding".into(),
            }),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\n\x01Transfer-Encoding: chunked\r\n\r\n",
            head_error(HeadError::ControlInHeaderName {
                name: "\\x01Transfer-Encoding".into(),
            }),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length\x00: 5\r\n\r\n",
            head_error(HeadError::ControlInHeaderName {
                name: "Content-Length\\x00".into(),
            }),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer- Encoding: chunked\r\n\r\n",
            head_error(HeadError::NonTokenHeaderName {
                name: "Transfer- Encoding".into(),
            }),
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTranſfer-Encoding: chunked\r\n\r\n".as_bytes(),
            head_error(HeadError::NonTokenHeaderName {
                name: "Tran\\xc5\\xbffer-Encoding".into(),
            }),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n",
            head_error(HeadError::ControlInHeaderValue { name: "X".into() }),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\x7f\r\n\r\n",
            head_error(HeadError::ControlInHeaderValue {
                name: "Transfer-Encoding".into(),
            }),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nX: a\x00\r\n\r\n",
            head_error(HeadError::ControlInHeaderValue { name: "X".into() }),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nX: a\rTransfer-Encoding: chunked\r\n\r\n",
            head_error(HeadError::BareCr),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\nTransfer-Encoding: chunked\r\n\r\n",
            head_error(HeadError::BareLf),
        ),
        (b"GET / HTTP/1.1\nHost: a\n\n", head_error(HeadError::BareLf)),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer_Encoding: chunked\r\n\r\n",
            head_error(HeadError::LookalikeHeaderName {
                name: "Transfer_Encoding".into(),
                imitates: "transfer-encoding",
            }),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent---Length: 5\r\n\r\n",
            head_error(HeadError::LookalikeHeaderName {
                name: "Content---Length".into(),
                imitates: "content-length",
            }),
        ),
        (
            b"GET / HTTP/1.1\r\nHo_st: b\r\nHost: a\r\n\r\n",
            head_error(HeadError::LookalikeHeaderName {
                name: "Ho_st".into(),
                imitates: "host",
            }),
        ),
        // Host.
        (b"GET / HTTP/1.1\r\n\r\n", MissingHost),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", DuplicateHost),
        (b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", DuplicateHost),
        (b"GET / HTTP/1.1\r\nHost:\r\n\r\n", BadHost),
        (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", BadHost),
        (b"GET / HTTP/1.1\r\nHost: a@b\r\n\r\n", BadHost),
        (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", BadHost),
        (b"GET / HTTP/1.1\r\nHost: a:99999\r\n\r\n", BadHost),
        (b"GET / HTTP/1.1\r\nHost: a, b\r\n\r\n", BadHost),
        // Connection, Upgrade, Expect.
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nConnection: close, Content-Length\r\nContent-Length: 5\r\n\r\n",
            ConnectionNominatesFramingField {
                name: "content-length",
            },
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: host\r\n\r\n",
            ConnectionNominatesFramingField { name: "host" },
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n",
            BadUpgrade {
                reason: "upgrade without the connection upgrade option",
            },
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\nUpgrade: h2c\r\n\r\n",
            BadUpgrade {
                reason: "more than one upgrade field",
            },
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket, h2c\r\n\r\n",
            BadUpgrade {
                reason: "not exactly one protocol",
            },
        ),
        (
            b"GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            BadUpgrade {
                reason: "upgrade in an HTTP/1.0 request",
            },
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n",
            UnsupportedExpectation,
        ),
    ];
    let mut failures = Vec::new();
    for (head, expected) in cases {
        let got = match parse_request(head, &Limits::default()) {
            Ok(Some((request, _))) => Ok(request),
            Ok(None) => panic!("incomplete: {}", head.escape_ascii()),
            Err(error) => Err(error),
        };
        if got.as_ref().err() != Some(expected) {
            failures.push(format!(
                "{}: {got:?}, not {expected:?}",
                head.escape_ascii()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn enforces_limits() {
    let limits = Limits {
        max_request_line: 20,
        max_head_bytes: 64,
        max_headers: 2,
    };
    assert_eq!(
        parse_with(b"GET /0123456789 HTTP/1.1\r\nHost: a\r\n\r\n", &limits),
        Err(head_error(HeadError::StartLineTooLong { limit: 20 }))
    );
    // No CRLF yet, already too long.
    assert_eq!(
        parse_request(b"GET /0123456789abcdef", &limits),
        Err(head_error(HeadError::StartLineTooLong { limit: 20 }))
    );
    let incomplete = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}", "y".repeat(40));
    assert_eq!(incomplete.len(), 68);
    assert_eq!(
        parse_request(incomplete.as_bytes(), &limits),
        Err(head_error(HeadError::HeadTooLarge { limit: 64 }))
    );
    assert_eq!(
        parse_with(b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\n\r\n", &limits)
            .map(|r| r.headers().len()),
        Ok(2)
    );
    assert_eq!(
        parse_request(b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n", &limits),
        Err(head_error(HeadError::TooManyHeaders { limit: 2 }))
    );
}

#[test]
fn handles_more_fields_than_the_stack_holds() {
    let mut head = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
    for i in 0..STACK_HEADERS * 2 {
        head.push_str(&format!("X-{i}: {i}\r\n"));
    }
    head.push_str("\r\n");
    let request = parse(head.as_bytes()).unwrap();
    assert_eq!(request.headers().len(), STACK_HEADERS * 2 + 1);
    assert_eq!(written(&request), head);
}

#[test]
fn writes_a_canonical_head() {
    let request = parse(
        b"\r\nPOST http://API.example:8080//v1/./x/../items?b=%2F&a HTTP/1.1\r\n\
          HOST: API.Example:8080\r\n\
          X-Trim: \t  padded value \t\r\n\
          content-length:  0042 \r\n\
          Accept: */*\r\n\r\n",
    )
    .unwrap();
    assert_eq!(request.path(), "/v1/items");
    assert_eq!(request.query(), Some("b=%2F&a"));
    assert_eq!(request.host(), Some("api.example:8080"));
    assert_eq!(request.body(), Body::Length(42));
    assert_eq!(
        written(&request),
        "POST /v1/items?b=%2F&a HTTP/1.1\r\n\
         HOST: api.example:8080\r\n\
         X-Trim: padded value\r\n\
         content-length: 42\r\n\
         Accept: */*\r\n\r\n"
    );
}

#[test]
fn forwards_framing_in_canonical_form() {
    let request =
        parse(b"PUT /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:   CHUNKED\r\n\r\n").unwrap();
    assert_eq!(header_values(&request, "transfer-encoding"), ["chunked"]);
    assert_eq!(
        written(&request),
        "PUT /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let request = parse(b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 000\r\n\r\n").unwrap();
    assert_eq!(header_values(&request, "content-length"), ["0"]);
}

#[test]
fn re_parses_what_it_writes() {
    let heads: &[&[u8]] = &[
        b"GET /a/./b/../c//d/?q=%2f.. HTTP/1.1\r\nHost: A.example\r\nX:  y \r\n\r\n",
        b"POST /%7euser/%c3%a9 HTTP/1.0\r\nContent-Length: 0005\r\nConnection: keep-alive\r\n\r\n",
        b"PATCH http://a.example/x?y HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: Chunked\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nX-Empty:\r\n\r\n",
    ];
    for head in heads {
        let first = parse(head).unwrap();
        let mut out = BytesMut::new();
        write_request_head(&first, &mut out);
        let second = parse(&out).unwrap();
        assert_eq!(second, first, "{}", head.escape_ascii());
        let mut again = BytesMut::new();
        write_request_head(&second, &mut again);
        assert_eq!(again, out);
    }
}

#[test]
fn errors_read_well_in_an_audit_record() {
    assert_eq!(
        RequestError::ContentLengthWithTransferEncoding.to_string(),
        "content-length and transfer-encoding both present"
    );
    assert_eq!(
        RequestError::Target(TargetError::ForbiddenEscape { byte: b'/' }).to_string(),
        "forbidden percent-encoded byte %2F in path"
    );
    assert_eq!(
        RequestError::Head(HeadError::WhitespaceBeforeColon {
            name: "Transfer-Encoding\\t".into()
        })
        .to_string(),
        "whitespace between header name and colon: Transfer-Encoding\\t"
    );
    assert_eq!(
        RequestError::NotHttp { what: "tls" }.to_string(),
        "not HTTP/1.x: tls"
    );
}

/// `Host` agrees with the destination: the same port (80 when none is given), and for an IP
/// literal the same address, IPv4-mapped forms included.
#[test]
fn host_agrees_with_the_destination() {
    let dst4: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let dst80: std::net::SocketAddr = "10.0.0.5:80".parse().unwrap();
    let dst6: std::net::SocketAddr = "[::1]:8080".parse().unwrap();
    let cases: &[(&str, std::net::SocketAddr, bool)] = &[
        ("api.example.com:8080", dst4, true),
        ("API.example.com:8080", dst4, true),
        ("api.example.com", dst4, false),
        ("api.example.com:80", dst4, false),
        ("api.example.com:08080", dst4, true),
        ("api.example.com", dst80, true),
        ("api.example.com:80", dst80, true),
        ("127.0.0.1:8080", dst4, true),
        ("127.0.0.2:8080", dst4, false),
        ("10.0.0.5", dst80, true),
        ("10.0.0.6", dst80, false),
        ("[::1]:8080", dst6, true),
        ("[::2]:8080", dst6, false),
        ("[::ffff:127.0.0.1]:8080", dst4, true),
        ("[::1]:8080", dst4, false),
    ];
    for (host, dst, agrees) in cases {
        let head = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let (req, _) = parse_request(head.as_bytes(), &Limits::default())
            .unwrap()
            .unwrap();
        assert_eq!(req.authority_agrees(*dst), *agrees, "{host} to {dst}");
    }
    let (no_host, _) = parse_request(b"GET / HTTP/1.0\r\n\r\n", &Limits::default())
        .unwrap()
        .unwrap();
    assert!(!no_host.authority_agrees(dst80));
}
