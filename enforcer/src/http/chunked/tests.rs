use super::*;

/// Feeds `pieces` in order, as a proxy would feed reads. Returns the decoded data and where
/// the body ended in the concatenated input, if it did.
fn decode_pieces(
    limits: &Limits,
    pieces: &[&[u8]],
) -> Result<(Vec<u8>, Option<usize>), ChunkedError> {
    let mut decoder = ChunkedDecoder::new(limits);
    let mut data = Vec::new();
    let mut offset = 0;
    for piece in pieces {
        let mut rest = *piece;
        loop {
            match decoder.decode(rest)? {
                Decoded::Data(range) => {
                    assert!(!range.is_empty());
                    data.extend_from_slice(&rest[range.clone()]);
                    offset += range.end;
                    rest = &rest[range.end..];
                }
                Decoded::NeedMore => {
                    offset += rest.len();
                    break;
                }
                Decoded::End { consumed } => return Ok((data, Some(offset + consumed))),
            }
        }
    }
    Ok((data, None))
}

fn decode(input: &[u8]) -> Result<(Vec<u8>, Option<usize>), ChunkedError> {
    decode_pieces(&Limits::default(), &[input])
}

const VALID: &[(&[u8], &[u8])] = &[
    (b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
    (b"0\r\n\r\n", b""),
    (
        b"3\r\nabc\r\n1\r\nd\r\nA\r\n0123456789\r\n0\r\n\r\n",
        b"abcd0123456789",
    ),
    (b"a\r\n0123456789\r\n00\r\n\r\n", b"0123456789"),
    (b"0005\r\nhello\r\n0\r\n\r\n", b"hello"),
    (
        b"5;name\r\nhello\r\n3;a=b;c=\"q \\\" ;\"\r\nxyz\r\n0;last\r\n\r\n",
        b"helloxyz",
    ),
    (
        b"2\r\n\r\n\r\n0\r\nExpires: never\r\nX-Sum:\t\x80ab\r\n\r\n",
        b"\r\n",
    ),
];

#[test]
fn decodes_whole_inputs() {
    for (input, expected) in VALID {
        assert_eq!(
            decode(input),
            Ok((expected.to_vec(), Some(input.len()))),
            "{}",
            input.escape_ascii()
        );
    }
}

#[test]
fn decodes_inputs_split_at_every_boundary() {
    for (input, expected) in VALID {
        for split in 0..=input.len() {
            let (a, b) = input.split_at(split);
            assert_eq!(
                decode_pieces(&Limits::default(), &[a, b]),
                Ok((expected.to_vec(), Some(input.len()))),
                "{} split at {split}",
                input.escape_ascii()
            );
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(
            decode_pieces(&Limits::default(), &bytes),
            Ok((expected.to_vec(), Some(input.len()))),
            "{} byte by byte",
            input.escape_ascii()
        );
    }
}

#[test]
fn stops_at_the_end_of_the_body() {
    let input = b"3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
    assert_eq!(decode(input), Ok((b"abc".to_vec(), Some(13))));
    let mut decoder = ChunkedDecoder::new(&Limits::default());
    assert_eq!(
        decoder.decode(b"0\r\n\r\nX"),
        Ok(Decoded::End { consumed: 5 })
    );
    assert_eq!(decoder.decode(b"X"), Ok(Decoded::End { consumed: 0 }));
}

#[test]
fn reports_partial_data() {
    let mut decoder = ChunkedDecoder::new(&Limits::default());
    assert_eq!(decoder.decode(b"a\r\n0123"), Ok(Decoded::Data(3..7)));
    assert_eq!(decoder.decode(b""), Ok(Decoded::NeedMore));
    assert_eq!(decoder.decode(b"456789\r\n"), Ok(Decoded::Data(0..6)));
    assert_eq!(decoder.decode(b"\r\n"), Ok(Decoded::NeedMore));
    // The largest size that fits: data keeps coming.
    let mut decoder = ChunkedDecoder::new(&Limits::default());
    assert_eq!(
        decoder.decode(b"ffffffffffffffff\r\nabc"),
        Ok(Decoded::Data(18..21))
    );
    assert_eq!(decoder.decode(b"def"), Ok(Decoded::Data(0..3)));
}

#[test]
fn refuses_malformed_streams() {
    use ChunkedError::*;
    let cases: &[(&[u8], ChunkedError)] = &[
        (b"0x10\r\n", BadChunkSize),
        (b"-1\r\n", BadChunkSize),
        (b"+1\r\n", BadChunkSize),
        (b" 5\r\n", BadChunkSize),
        (b"5 \r\n", BadChunkSize),
        (b"\r\n", BadChunkSize),
        (b"g\r\n", BadChunkSize),
        (b"5\n", BadChunkSize),
        (b"ffffffffffffffffff\r\n", ChunkSizeTooLong),
        (b"00000000000000001\r\n", ChunkSizeTooLong),
        (b"5\r\r", BadLineEnding),
        (b"5\rx", BadLineEnding),
        (b"5\r\nhelloX", MissingDataCrlf),
        (b"5\r\nhello\rX", MissingDataCrlf),
        (b"5\r\nhello\n", MissingDataCrlf),
        (b"5\r\nhello world\r\n", MissingDataCrlf),
        (b"5;\r\n", BadExtension),
        (b"5; a\r\n", BadExtension),
        (b"5 ;a\r\n", BadChunkSize),
        (b"5;a =b\r\n", BadExtension),
        (b"5;a= b\r\n", BadExtension),
        (b"5;a=\r\n", BadExtension),
        (b"5;=b\r\n", BadExtension),
        (b"5;a=b=c\r\n", BadExtension),
        (b"5;a=\"x\r\n", BadExtension),
        (b"5;a=\"x\"y\r\n", BadExtension),
        (b"5;a=\"\\\x01\"\r\n", BadExtension),
        (b"5;a\n", BadExtension),
        (b"5;a(b)\r\n", BadExtension),
        (b"0\r\nX: a\n", BadLineEnding),
        (b"0\r\n\r\r", BadLineEnding),
        (b"0\r\n\n", BadLineEnding),
        (b"0\r\nX\n", BadLineEnding),
        (b"0\r\nX: a\r\r", BadLineEnding),
        (
            b"0\r\n a: b\r\n\r\n",
            BadTrailer {
                reason: "field line starts with whitespace",
            },
        ),
        (
            b"0\r\n: b\r\n\r\n",
            BadTrailer {
                reason: "empty field name",
            },
        ),
        (
            b"0\r\nX : b\r\n\r\n",
            BadTrailer {
                reason: "field name is not a token",
            },
        ),
        (
            b"0\r\nX\r\n\r\n",
            BadTrailer {
                reason: "field line without a colon",
            },
        ),
        (
            b"0\r\n\x01X: b\r\n\r\n",
            BadTrailer {
                reason: "field name is not a token",
            },
        ),
        (
            b"0\r\nX: a\x00b\r\n\r\n",
            BadTrailer {
                reason: "control character in field value",
            },
        ),
    ];
    let mut failures = Vec::new();
    for (input, expected) in cases {
        let got = decode(input);
        if got.as_ref().err() != Some(expected) {
            failures.push(format!(
                "{}: {got:?}, not {expected:?}",
                input.escape_ascii()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn bounds_extensions_and_trailers() {
    let mut long = b"5;a=".to_vec();
    long.extend(std::iter::repeat_n(b'x', MAX_EXTENSION_BYTES));
    assert_eq!(decode(&long), Err(ChunkedError::ExtensionTooLong));
    let mut fits = b"5;a=".to_vec();
    fits.extend(std::iter::repeat_n(b'x', MAX_EXTENSION_BYTES - 4));
    fits.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
    assert_eq!(decode(&fits), Ok((b"hello".to_vec(), Some(fits.len()))));

    let limits = Limits {
        max_request_line: 100,
        max_head_bytes: 16,
        max_headers: 2,
    };
    assert_eq!(
        decode_pieces(&limits, &[b"0\r\nA: 1\r\nB: 2\r\n\r\n"]),
        Ok((Vec::new(), Some(17)))
    );
    assert_eq!(
        decode_pieces(&limits, &[b"0\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"]),
        Err(ChunkedError::TooManyTrailers { limit: 2 })
    );
    assert_eq!(
        decode_pieces(&limits, &[b"0\r\nA: 0123456789abcdef\r\n\r\n"]),
        Err(ChunkedError::TrailerTooLarge { limit: 16 })
    );
}

#[test]
fn encodes_chunks() {
    let mut out = BytesMut::new();
    write_chunk(b"hello", &mut out);
    write_chunk(b"", &mut out);
    write_chunk(&[b'x'; 255], &mut out);
    write_last_chunk(&mut out);
    let mut expected = b"5\r\nhello\r\nFF\r\n".to_vec();
    expected.extend_from_slice(&[b'x'; 255]);
    expected.extend_from_slice(b"\r\n0\r\n\r\n");
    assert_eq!(out, expected);
}

#[test]
fn re_encoding_keeps_the_data_and_drops_the_rest() {
    for (input, expected) in VALID {
        let mut decoder = ChunkedDecoder::new(&Limits::default());
        let mut out = BytesMut::new();
        let mut rest = *input;
        while let Decoded::Data(range) = decoder.decode(rest).unwrap() {
            write_chunk(&rest[range.clone()], &mut out);
            rest = &rest[range.end..];
        }
        write_last_chunk(&mut out);
        assert_eq!(
            decode(&out),
            Ok((expected.to_vec(), Some(out.len()))),
            "{}",
            input.escape_ascii()
        );
    }
    let input = b"005;name=\"v\"\r\nhello\r\n0;x\r\nTrailer: y\r\n\r\n";
    let mut decoder = ChunkedDecoder::new(&Limits::default());
    let mut out = BytesMut::new();
    let Ok(Decoded::Data(range)) = decoder.decode(input) else {
        panic!("no data");
    };
    write_chunk(&input[range.clone()], &mut out);
    assert_eq!(
        decoder.decode(&input[range.end..]),
        Ok(Decoded::End {
            consumed: input.len() - range.end
        })
    );
    write_last_chunk(&mut out);
    assert_eq!(out, &b"5\r\nhello\r\n0\r\n\r\n"[..]);
}
