use super::*;

fn limits(max_request_line: usize, max_head_bytes: usize, max_headers: usize) -> Limits {
    Limits {
        max_request_line,
        max_head_bytes,
        max_headers,
    }
}

/// One scan of `buf` as (head length, field count), for comparing.
fn scanned(buf: &[u8], limits: &Limits) -> Result<Option<(usize, usize)>, HeadError> {
    Scanner::default()
        .scan(buf, limits)
        .map(|s| s.map(|s| (s.len, s.fields)))
}

#[test]
fn finds_the_end_of_the_head() {
    let head = b"GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n\r\n";
    let mut buf = head.to_vec();
    buf.extend_from_slice(b"body\r\n\r\n");
    assert_eq!(scanned(&buf, &Limits::default()), Ok(Some((head.len(), 2))));
}

#[test]
fn every_proper_prefix_is_incomplete() {
    let head = b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
    for end in 0..head.len() {
        assert_eq!(scanned(&head[..end], &Limits::default()), Ok(None), "{end}");
    }
    assert_eq!(scanned(head, &Limits::default()), Ok(Some((head.len(), 1))));
}

#[test]
fn refuses_bad_line_endings() {
    let cases: &[(&[u8], HeadError)] = &[
        (b"GET / HTTP/1.1\n", HeadError::BareLf),
        (b"GET / HTTP/1.1\r\nHost: a\n\r\n", HeadError::BareLf),
        (b"GET / HTTP/1.1\r\nHost: a\r\n\n", HeadError::BareLf),
        (b"\nGET / HTTP/1.1\r\n\r\n", HeadError::BareLf),
        (b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", HeadError::BareCr),
        (b"GET / HTTP/1.1\r\nX: a\r\r\n", HeadError::BareCr),
        (b"GET /\r HTTP/1.1\r\n\r\n", HeadError::BareCr),
        (b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", HeadError::ObsFold),
        (b"GET / HTTP/1.1\r\n\tX: a\r\n\r\n", HeadError::ObsFold),
    ];
    for (buf, expected) in cases {
        assert_eq!(
            scanned(buf, &Limits::default()).as_ref(),
            Err(expected),
            "{}",
            buf.escape_ascii()
        );
    }
}

#[test]
fn refuses_a_long_start_line_before_its_end_arrives() {
    let limits = limits(16, 1024, 10);
    // 16 bytes and a CR that may start the CRLF: still acceptable.
    assert_eq!(scanned(b"GET /0123456789a\r", &limits), Ok(None));
    assert_eq!(
        scanned(b"GET /0123456789a\r\n\r\n", &limits),
        Ok(Some((20, 0)))
    );
    assert_eq!(
        scanned(b"GET /0123456789ab", &limits),
        Err(HeadError::StartLineTooLong { limit: 16 })
    );
    assert_eq!(
        scanned(b"GET /0123456789ab\r\n\r\n", &limits),
        Err(HeadError::StartLineTooLong { limit: 16 })
    );
}

#[test]
fn refuses_a_large_head_before_its_end_arrives() {
    let limits = limits(64, 32, 10);
    let head = b"GET / HTTP/1.1\r\nX: 0123456789\r\n\r\n";
    assert_eq!(head.len(), 33);
    assert_eq!(
        scanned(head, &limits),
        Err(HeadError::HeadTooLarge { limit: 32 })
    );
    assert_eq!(scanned(&head[..31], &limits), Ok(None));
    assert_eq!(
        scanned(&head[..32], &limits),
        Err(HeadError::HeadTooLarge { limit: 32 })
    );
    assert_eq!(scanned(&head[..31], &Limits::default()), Ok(None));
    // Empty lines before the start line count too.
    assert_eq!(
        scanned(&b"\r\n".repeat(16), &limits),
        Err(HeadError::HeadTooLarge { limit: 32 })
    );
}

#[test]
fn refuses_too_many_fields_before_the_end_arrives() {
    let limits = limits(64, 1024, 2);
    assert_eq!(
        scanned(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\n\r\n", &limits),
        Ok(Some((30, 2)))
    );
    assert_eq!(
        scanned(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n", &limits),
        Err(HeadError::TooManyHeaders { limit: 2 })
    );
}

#[test]
fn diagnoses_field_lines() {
    let cases: &[(&[u8], HeadError)] = &[
        (b" X: a", HeadError::ObsFold),
        (b"X", HeadError::MissingColon { line: "X".into() }),
        (b": a", HeadError::EmptyHeaderName),
        (
            b"Content-Length : 1",
            HeadError::WhitespaceBeforeColon {
                name: "Content-Length ".into(),
            },
        ),
        (
            b"Transfer-Encoding\t: chunked",
            HeadError::WhitespaceBeforeColon {
                name: "Transfer-Encoding\\t".into(),
            },
        ),
        (
            b"X\x01: a",
            HeadError::ControlInHeaderName {
                name: "X\\x01".into(),
            },
        ),
        (
            b"X\x0c : a",
            HeadError::ControlInHeaderName {
                name: "X\\x0c ".into(),
            },
        ),
        (
            b"Transfer- Encoding: a",
            HeadError::NonTokenHeaderName {
                name: "Transfer- Encoding".into(),
            },
        ),
        (
            b"X\xa0: a",
            HeadError::NonTokenHeaderName {
                name: "X\\xa0".into(),
            },
        ),
        (
            b"X: a\x00",
            HeadError::ControlInHeaderValue { name: "X".into() },
        ),
        (
            b"X: \x7f",
            HeadError::ControlInHeaderValue { name: "X".into() },
        ),
    ];
    for (line, expected) in cases {
        assert_eq!(
            diagnose_fields([*line].into_iter()).as_ref(),
            Some(expected),
            "{}",
            line.escape_ascii()
        );
    }
    let fine: [&[u8]; 3] = [b"X: a\tb", b"X:", b"My.Custom_Header!#$%&'*+^`|~: \x80\xff"];
    assert_eq!(diagnose_fields(fine.into_iter()), None);
}

#[test]
fn splits_lines() {
    let (start, fields) = lines(b"\r\n\r\nGET / HTTP/1.1\r\nA: 1\r\nB: 2\r\n\r\n");
    assert_eq!(start, b"GET / HTTP/1.1");
    assert_eq!(fields.collect::<Vec<_>>(), [&b"A: 1"[..], b"B: 2"]);
}

#[test]
fn spots_lookalike_names() {
    for (name, imitates) in [
        ("Transfer_Encoding", Some("transfer-encoding")),
        ("Transfer---Encoding", Some("transfer-encoding")),
        ("transferencoding", Some("transfer-encoding")),
        ("Content_Length", Some("content-length")),
        ("Content-Length.", Some("content-length")),
        ("HO_ST", Some("host")),
        ("Connection_", Some("connection")),
        ("Transfer-Encoding", None),
        ("CONTENT-LENGTH", None),
        ("X-Content-Length", None),
        ("Content-Lengths", None),
        ("X_Forwarded_For", None),
        ("Hostname", None),
    ] {
        assert_eq!(imitated_name(name.as_bytes()), imitates, "{name}");
    }
}

#[test]
fn parses_content_length() {
    type Case<'a> = (&'a [u8], Option<(u64, &'a [u8])>);
    let cases: &[Case] = &[
        (b"0", Some((0, b"0"))),
        (b"000", Some((0, b"0"))),
        (b"42", Some((42, b"42"))),
        (b"0042", Some((42, b"42"))),
        (
            b"999999999999999999",
            Some((999_999_999_999_999_999, b"999999999999999999")),
        ),
        (b"1000000000000000000", None),
        (b"18446744073709551616", None),
        (b"", None),
        (b"+1", None),
        (b"-1", None),
        (b"1 0", None),
        (b"42, 42", None),
        (b"42,42", None),
        (b"0x10", None),
        (b"1.0", None),
        (b"1e3", None),
        ("١".as_bytes(), None),
    ];
    for (value, expected) in cases {
        assert_eq!(
            parse_content_length(value),
            *expected,
            "{}",
            value.escape_ascii()
        );
    }
}

#[test]
fn splits_lists() {
    assert_eq!(
        list_elements(b" a ,, b\t,c , ").collect::<Vec<_>>(),
        [&b"a"[..], b"b", b"c"]
    );
    assert_eq!(list_elements(b" , ").count(), 0);
}

#[test]
fn escapes_for_logs() {
    assert_eq!(escaped(b"a\r\n\x00\xff"), "a\\r\\n\\x00\\xff");
    assert_eq!(escaped(&[b'a'; 100]), format!("{}...", "a".repeat(64)));
}

/// Fed one byte per call, the scanner looks at each byte about once: at most twice for a CR
/// that ends a read (it may start a CRLF), never a rescan from the head's start.
#[test]
fn a_trickled_head_is_scanned_in_linear_work() {
    let mut head = b"GET /a HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..90 {
        head.extend_from_slice(format!("X-Field-{i}: {}\r\n", "v".repeat(200)).as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    let mut scanner = Scanner::default();
    for end in 1..head.len() {
        assert_eq!(
            scanner
                .scan(&head[..end], &Limits::default())
                .map(|s| s.is_none()),
            Ok(true),
            "{end}"
        );
    }
    let done = scanner.scan(&head, &Limits::default());
    assert_eq!(
        done.map(|s| s.map(|s| (s.len, s.fields))),
        Ok(Some((head.len(), 91)))
    );
    let crs = head.iter().filter(|&&b| b == b'\r').count();
    assert!(
        scanner.examined <= head.len() + crs,
        "{} bytes examined for a head of {}",
        scanner.examined,
        head.len()
    );
}

/// Resuming finds what one scan of the whole buffer finds, wherever the reads split it: the
/// same end, the same refusals.
#[test]
fn resuming_agrees_with_one_scan() {
    let cases: &[&[u8]] = &[
        b"\r\nGET / HTTP/1.1\r\nHost: a\r\nX: y\r\n\r\nnext",
        b"GET / HTTP/1.1\r\nHost: a\n\r\n",
        b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
        b"GET / HTTP/1.1\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n",
    ];
    let limits = limits(64, 256, 2);
    for buf in cases {
        let whole = scanned(buf, &limits);
        for step in 1..=4 {
            let mut scanner = Scanner::default();
            let mut end = 0;
            let resumed = loop {
                end = (end + step).min(buf.len());
                match scanner.scan(&buf[..end], &limits) {
                    Ok(None) if end < buf.len() => continue,
                    r => break r.map(|s| s.map(|s| (s.len, s.fields))),
                }
            };
            assert_eq!(resumed, whole, "{} in steps of {step}", buf.escape_ascii());
        }
    }
}
