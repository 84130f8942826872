use super::*;

fn parse(head: &[u8]) -> Result<Response, ResponseError> {
    match parse_response(head, &Limits::default())? {
        Some((response, len)) => {
            assert_eq!(len, head.len(), "head length of {}", head.escape_ascii());
            Ok(response)
        }
        None => panic!("incomplete: {}", head.escape_ascii()),
    }
}

#[test]
fn parses_a_simple_response() {
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\n";
    let mut buf = head.to_vec();
    buf.extend_from_slice(b"hello");
    let (response, len) = parse_response(&buf, &Limits::default()).unwrap().unwrap();
    assert_eq!(len, head.len());
    assert_eq!(response.version(), Version::Http11);
    assert_eq!(response.status(), 200);
    assert_eq!(response.kind(), ResponseKind::Final);
    assert!(response.keep_alive());
    assert_eq!(response.headers().len(), 2);
    assert_eq!(response.headers()[1].name(), "Content-Type");
    assert_eq!(response.headers()[1].value(), b"text/plain");
    assert_eq!(
        response_body(&Method::Get, &response),
        ResponseBody::Length(5)
    );
    for end in 0..head.len() {
        assert_eq!(
            parse_response(&head[..end], &Limits::default()),
            Ok(None),
            "{end}"
        );
    }
}

#[test]
fn classifies_responses() {
    for (status, kind) in [
        (100, ResponseKind::Interim),
        (101, ResponseKind::SwitchingProtocols),
        (103, ResponseKind::Interim),
        (200, ResponseKind::Final),
        (404, ResponseKind::Final),
        (599, ResponseKind::Final),
    ] {
        let head = format!("HTTP/1.1 {status} X\r\n\r\n");
        assert_eq!(parse(head.as_bytes()).map(|r| r.kind()), Ok(kind));
    }
}

#[test]
fn finds_the_body() {
    use ResponseBody::*;
    let cases: &[(Method, &[u8], ResponseBody)] = &[
        (
            Method::Get,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            Length(0),
        ),
        (
            Method::Get,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0012\r\n\r\n",
            Length(12),
        ),
        (
            Method::Get,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            Chunked,
        ),
        (
            Method::Get,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n",
            Chunked,
        ),
        (
            Method::Get,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
            Chunked,
        ),
        // RFC 9112 §6.3 rule 4: a final coding other than chunked runs until close.
        (
            Method::Get,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            UntilClose,
        ),
        (Method::Get, b"HTTP/1.1 200 OK\r\n\r\n", UntilClose),
        (Method::Get, b"HTTP/1.0 200 OK\r\n\r\n", UntilClose),
        // Rules 1 and 2 win over the fields.
        (
            Method::Head,
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
            None,
        ),
        (
            Method::Head,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            None,
        ),
        (Method::Head, b"HTTP/1.1 200 OK\r\n\r\n", None),
        (Method::Get, b"HTTP/1.1 100 Continue\r\n\r\n", None),
        (
            Method::Get,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            None,
        ),
        (
            Method::Get,
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
            None,
        ),
        (
            Method::Post,
            b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n",
            None,
        ),
        (
            Method::Get,
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
            None,
        ),
        (Method::Connect, b"HTTP/1.1 200 OK\r\n\r\n", UntilClose),
        (
            Method::Connect,
            b"HTTP/1.1 407 Auth\r\nContent-Length: 3\r\n\r\n",
            Length(3),
        ),
    ];
    for (method, head, expected) in cases {
        let response = parse(head).unwrap();
        assert_eq!(
            response_body(method, &response),
            *expected,
            "{method:?} {}",
            head.escape_ascii()
        );
    }
}

#[test]
fn reads_connection_persistence() {
    let cases: &[(&[u8], bool)] = &[
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", true),
        (
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            false,
        ),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false),
        (
            b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n",
            true,
        ),
    ];
    for (head, keep_alive) in cases {
        assert_eq!(
            parse(head).map(|r| r.keep_alive()),
            Ok(*keep_alive),
            "{}",
            head.escape_ascii()
        );
    }
}

#[test]
fn refuses_what_it_should() {
    use ResponseError::*;
    let cases: &[(&[u8], ResponseError)] = &[
        (b"HTTP/2 200 OK\r\n\r\n", UnsupportedVersion),
        (b"HTTP/1.2 200 OK\r\n\r\n", UnsupportedVersion),
        (b"ICY 200 OK\r\n\r\n", UnsupportedVersion),
        (b"HTTP/1.1 20 OK\r\n\r\n", BadStatusLine),
        (b"HTTP/1.1 2000 OK\r\n\r\n", BadStatusLine),
        (b"HTTP/1.1 200 O\x01K\r\n\r\n", BadStatusLine),
        (b"HTTP/1.1 000 Zero\r\n\r\n", BadStatus { status: 0 }),
        (b"HTTP/1.1 099 Low\r\n\r\n", BadStatus { status: 99 }),
        (b"HTTP/1.1 600 High\r\n\r\n", BadStatus { status: 600 }),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            ContentLengthWithTransferEncoding,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            DuplicateContentLength,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
            BadContentLength,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            BadContentLength,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            BadTransferEncoding,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            BadTransferEncoding,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            BadTransferEncoding,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked;x=1\r\n\r\n",
            BadTransferEncoding,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: ,\r\n\r\n",
            BadTransferEncoding,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding:\r\n\r\n",
            BadTransferEncoding,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: g(z)ip\r\n\r\n",
            BadTransferEncoding,
        ),
        (
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            TransferEncodingInHttp10,
        ),
        (
            b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n",
            Head(HeadError::BareLf),
        ),
        (
            b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",
            Head(HeadError::BareCr),
        ),
        (
            b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
            Head(HeadError::ObsFold),
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\n",
            Head(HeadError::WhitespaceBeforeColon {
                name: "Content-Length ".into(),
            }),
        ),
        (
            b"HTTP/1.1 200 OK\r\nX: a\x00\r\n\r\n",
            Head(HeadError::ControlInHeaderValue { name: "X".into() }),
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer_Encoding: chunked\r\n\r\n",
            Head(HeadError::LookalikeHeaderName {
                name: "Transfer_Encoding".into(),
                imitates: "transfer-encoding",
            }),
        ),
    ];
    let mut failures = Vec::new();
    for (head, expected) in cases {
        let got = parse(head);
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
fn accepts_a_missing_reason_phrase() {
    assert_eq!(parse(b"HTTP/1.1 204\r\n\r\n").map(|r| r.status()), Ok(204));
    assert_eq!(parse(b"HTTP/1.1 204 \r\n\r\n").map(|r| r.status()), Ok(204));
}

#[test]
fn enforces_limits() {
    let limits = Limits {
        max_request_line: 16,
        max_head_bytes: 64,
        max_headers: 1,
    };
    assert_eq!(
        parse_response(b"HTTP/1.1 200 A long reason", &limits),
        Err(ResponseError::Head(HeadError::StartLineTooLong {
            limit: 16
        }))
    );
    assert_eq!(
        parse_response(b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\n", &limits),
        Err(ResponseError::Head(HeadError::TooManyHeaders { limit: 1 }))
    );
}
