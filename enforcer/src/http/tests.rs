//! The HTTP desync corpus in `tests/data/http-desync` (vendored from aws/http-desync-guardian):
//! every case it calls Ambiguous or Severe must be refused, and every case that is accepted must
//! re-serialise to a head that parses to the same request.

use std::{collections::BTreeMap, fs, path::PathBuf};

use bytes::BytesMut;
use serde::Deserialize;

use super::*;

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/http-desync");

/// HTTP/1.1 cases without a `Host` get this one, so they are judged on their own faults rather
/// than all refused as `MissingHost` (the corpus predates that rule being enforced).
const INJECTED_HOST: &str = "Host: corpus.example\r\n";

/// The Compliant and Acceptable cases we accept. Each other one is refused on purpose; the
/// reasons are in the test output and in the module's docs.
const ACCEPTED: &[&str] = &[
    // acceptable.yaml: `Content-Length: 0` on GET, then on HEAD.
    "Get with a body and Content-Length:0",
    "Get with a body and Content-Length:0",
    // more-compliant-tests.yaml
    "Has a CL in PUT OK",
    "Very many headers",
    "Has a TE in PUT OK",
    "HTTP Version.1.1 OK",
    "Correct CL OK",
    "Large Size OK",
    // rfc-compliant.yaml
    "No headers",
    "Valid Transfer-Encoding (chunked)",
    "Valid Content-Length",
    "Valid Transfer-Encoding (chunked) + custom header (non-ascii)",
    "Valid custom header with tchar in name and obs-text",
    "Valid custom header with underscore in name",
    "Valid custom header with dot in name",
    "Valid custom header with digits in name",
    // uri-specific-test-cases.yaml
    "%09 in URI is OK",
    "%20 in URI is OK",
    "%0D in URI is OK",
    "%0A in URI is OK",
];

#[derive(Debug, Deserialize)]
struct Case {
    name: String,
    uri: String,
    method: String,
    version: String,
    headers: Option<Vec<CaseHeader>>,
    expected: Expected,
}

#[derive(Debug, Deserialize)]
struct CaseHeader {
    name: String,
    value: String,
}

#[derive(Debug, Deserialize)]
struct Expected {
    tier: Tier,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
enum Tier {
    Compliant,
    Acceptable,
    Ambiguous,
    Severe,
}

/// How a YAML string becomes bytes. The corpus writes raw bytes as `\xNN` escapes, which YAML
/// reads as the code point U+00NN; its authors meant the byte. Both readings are tried.
#[derive(Debug, Clone, Copy)]
enum Encoding {
    Utf8,
    /// Code points up to U+00FF as one byte each, others as UTF-8.
    Latin1,
}

fn encode(text: &str, encoding: Encoding, out: &mut Vec<u8>) {
    match encoding {
        Encoding::Utf8 => out.extend_from_slice(text.as_bytes()),
        Encoding::Latin1 => {
            for c in text.chars() {
                match u8::try_from(u32::from(c)) {
                    Ok(byte) => out.push(byte),
                    Err(_) => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                }
            }
        }
    }
}

/// `METHOD SP uri SP version CRLF` (no ` SP version` when it is empty), the fields, CRLF.
fn raw_request(case: &Case, encoding: Encoding) -> Vec<u8> {
    let mut raw = Vec::new();
    encode(&case.method, encoding, &mut raw);
    raw.push(b' ');
    encode(&case.uri, encoding, &mut raw);
    if !case.version.is_empty() {
        raw.push(b' ');
        encode(&case.version, encoding, &mut raw);
    }
    raw.extend_from_slice(b"\r\n");
    let headers = case.headers.as_deref().unwrap_or_default();
    if case.version == "HTTP/1.1" && !headers.iter().any(|h| h.name.eq_ignore_ascii_case("host")) {
        raw.extend_from_slice(INJECTED_HOST.as_bytes());
    }
    for header in headers {
        encode(&header.name, encoding, &mut raw);
        raw.extend_from_slice(b": ");
        encode(&header.value, encoding, &mut raw);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"\r\n");
    raw
}

/// The accepted head re-serialises, with the normalised target, to bytes that parse to the
/// same request and re-serialise to the same bytes.
fn check_round_trip(request: &Request, len: usize, raw: &[u8]) -> Result<(), String> {
    if len != raw.len() {
        return Err(format!("head length {len}, sent {}", raw.len()));
    }
    let mut out = BytesMut::new();
    write_request_head(request, &mut out);
    let query = request.query().map(|q| format!("?{q}")).unwrap_or_default();
    let request_line = format!("{} {}{query} ", request.method().as_str(), request.path());
    if !out.starts_with(request_line.as_bytes()) {
        return Err(format!("wrote {}", out.escape_ascii()));
    }
    match parse_request(&out, &Limits::default()) {
        Ok(Some((again, again_len))) if again == *request && again_len == out.len() => {
            let mut twice = BytesMut::new();
            write_request_head(&again, &mut twice);
            if twice == out {
                Ok(())
            } else {
                Err(format!(
                    "wrote {} then {}",
                    out.escape_ascii(),
                    twice.escape_ascii()
                ))
            }
        }
        other => Err(format!(
            "wrote {}, which parses as {other:?}",
            out.escape_ascii()
        )),
    }
}

fn corpus_files() -> Vec<PathBuf> {
    let mut files: Vec<_> = fs::read_dir(CORPUS)
        .unwrap_or_else(|e| panic!("reading {CORPUS}: {e}"))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn corpus() {
    let files = corpus_files();
    assert!(!files.is_empty(), "no corpus in {CORPUS}");
    let mut violations = Vec::new();
    // Per tier: (accepted, refused).
    let mut tally: BTreeMap<Tier, (usize, usize)> = BTreeMap::new();
    let mut accepted_good = Vec::new();
    let mut refused_good = Vec::new();
    for file in &files {
        let text = fs::read_to_string(file).unwrap();
        let cases: Vec<Case> = serde_yaml_ng::from_str(&text)
            .unwrap_or_else(|e| panic!("parsing {}: {e}", file.display()));
        let file = file.file_name().unwrap().to_string_lossy();
        for case in &cases {
            let label = format!("{file}: {} ({} {})", case.name, case.method, case.version);
            let tier = case.expected.tier;
            let mut verdicts = Vec::new();
            for encoding in [Encoding::Utf8, Encoding::Latin1] {
                let raw = raw_request(case, encoding);
                let outcome = parse_request(&raw, &Limits::default());
                match (&outcome, tier) {
                    (Ok(None), _) => violations.push(format!("{label} [{encoding:?}]: incomplete")),
                    (Ok(Some(_)), Tier::Ambiguous | Tier::Severe) => {
                        violations.push(format!("{label} [{encoding:?}]: accepted"));
                    }
                    (Ok(Some((request, len))), _) => {
                        if let Err(why) = check_round_trip(request, *len, &raw) {
                            violations.push(format!("{label} [{encoding:?}]: {why}"));
                        }
                    }
                    (Err(_), _) => {}
                }
                verdicts.push(outcome.map(|_| ()));
            }
            let refused = verdicts.iter().any(Result::is_err);
            let counts = tally.entry(tier).or_default();
            if refused {
                counts.1 += 1;
            } else {
                counts.0 += 1;
            }
            if tier <= Tier::Acceptable {
                if refused {
                    let why: Vec<_> = verdicts
                        .iter()
                        .map(|v| {
                            v.as_ref()
                                .err()
                                .map_or("accepted".into(), ToString::to_string)
                        })
                        .collect();
                    refused_good.push(format!("{tier:?} {label}: {}", why.join(" / ")));
                } else {
                    accepted_good.push(case.name.as_str().to_owned());
                }
            }
        }
    }
    println!("corpus, tier: accepted / refused");
    for (tier, (accepted, refused)) in &tally {
        println!("  {tier:?}: {accepted} / {refused}");
    }
    println!("Compliant and Acceptable cases refused [UTF-8 / Latin-1]:");
    for line in &refused_good {
        println!("  {line}");
    }
    assert!(
        violations.is_empty(),
        "corpus violations:\n{}",
        violations.join("\n")
    );
    assert_eq!(
        accepted_good, ACCEPTED,
        "accepted Compliant/Acceptable cases changed"
    );
}
