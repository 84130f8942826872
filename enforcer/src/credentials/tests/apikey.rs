//! API keys: digests, rotation windows, where the key is read from.

use super::*;

/// Headers, and the key they present (or why not).
type HeaderCase<'a> = (&'a [(&'a str, &'a str)], Result<&'a [u8], ApiKeyError>);
/// A query, and the key it presents (or why not).
type QueryCase<'a> = (Option<&'a str>, Result<&'a [u8], ApiKeyError>);

fn keys(location: ApiKeyLocation) -> ApiKeys {
    let mut old = ApiKey::new("ops-2024", api_key_digest(b"old-secret-key-0123456789"));
    old.not_after = Some(parse_rfc3339("2025-02-01T00:00:00Z").unwrap());
    let mut new = ApiKey::new("ops-2025", api_key_digest(b"new-secret-key-9876543210"));
    new.not_before = Some(parse_rfc3339("2025-01-15T00:00:00Z").unwrap());
    ApiKeys::new(location, vec![old, new])
}

fn at(s: &str) -> UnixTime {
    parse_rfc3339(s).unwrap()
}

#[test]
fn rotation_overlap() {
    let k = keys(ApiKeyLocation::Header("x-api-key".into()));
    let old = b"old-secret-key-0123456789".as_slice();
    let new = b"new-secret-key-9876543210".as_slice();
    let name = |r: Result<&ApiKey, ApiKeyError>| r.map(|k| k.name.to_string());
    // Before the rotation: the old key only.
    let t = at("2025-01-10T00:00:00Z");
    assert_eq!(name(k.verify(old, t)), Ok("ops-2024".into()));
    assert_eq!(
        name(k.verify(new, t)),
        Err(ApiKeyError::NotYetValid {
            name: "ops-2025".into(),
            not_before: at("2025-01-15T00:00:00Z"),
            now: t
        })
    );
    // During the overlap: both.
    let t = at("2025-01-20T00:00:00Z");
    assert_eq!(name(k.verify(old, t)), Ok("ops-2024".into()));
    assert_eq!(name(k.verify(new, t)), Ok("ops-2025".into()));
    // notBefore is inclusive, notAfter exclusive.
    assert_eq!(
        name(k.verify(new, at("2025-01-15T00:00:00Z"))),
        Ok("ops-2025".into())
    );
    let t = at("2025-02-01T00:00:00Z");
    assert_eq!(
        name(k.verify(old, t)),
        Err(ApiKeyError::Expired {
            name: "ops-2024".into(),
            not_after: t,
            now: t
        })
    );
    assert_eq!(name(k.verify(new, t)), Ok("ops-2025".into()));
    // A key that is no key.
    assert_eq!(name(k.verify(b"guess", t)), Err(ApiKeyError::Unknown));
    assert_eq!(
        name(k.verify(b"old-secret-key-012345678", t)),
        Err(ApiKeyError::Unknown)
    );
}

#[test]
fn read_from_one_header() {
    let k = keys(ApiKeyLocation::Header("x-api-key".into()));
    let loc = ApiKeyLocation::Header("x-api-key".into());
    let cases: Vec<HeaderCase> = vec![
        (&[("X-Api-Key", " abc ")], Ok(b"abc")),
        (
            &[],
            Err(ApiKeyError::Missing {
                location: loc.clone(),
            }),
        ),
        (
            &[("x-api-key", "")],
            Err(ApiKeyError::Missing {
                location: loc.clone(),
            }),
        ),
        (
            &[("x-api-key", "a"), ("X-API-KEY", "b")],
            Err(ApiKeyError::Repeated {
                location: loc.clone(),
            }),
        ),
    ];
    for (headers, want) in cases {
        assert_eq!(
            k.presented(headers, Some("x-api-key=zzz"))
                .as_deref()
                .map_err(Clone::clone),
            want,
            "{headers:?}"
        );
    }
    let long = "k".repeat(MAX_API_KEY_BYTES + 1);
    assert_eq!(
        k.presented(&[("x-api-key", long.as_str())][..], None),
        Err(ApiKeyError::TooLong {
            len: MAX_API_KEY_BYTES + 1
        })
    );
}

#[test]
fn read_from_one_query_parameter() {
    let k = keys(ApiKeyLocation::Query("api_key".into()));
    let none: &[(&str, &str)] = &[("api_key", "from-a-header")];
    let loc = ApiKeyLocation::Query("api_key".into());
    let cases: Vec<QueryCase> = vec![
        (Some("a=1&api_key=abc&b=2"), Ok(b"abc")),
        (Some("api%5Fkey=a%2Bb+c"), Ok(b"a+b c")),
        (
            Some("api_key=a&api_key=a"),
            Err(ApiKeyError::Repeated {
                location: loc.clone(),
            }),
        ),
        (
            Some("apikey=a"),
            Err(ApiKeyError::Missing {
                location: loc.clone(),
            }),
        ),
        (
            None,
            Err(ApiKeyError::Missing {
                location: loc.clone(),
            }),
        ),
    ];
    for (query, want) in cases {
        assert_eq!(
            k.presented(none, query).as_deref().map_err(Clone::clone),
            want,
            "{query:?}"
        );
    }
}

#[test]
fn digests() {
    assert_eq!(
        api_key_digest(b"abc"),
        parse_digest("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad").unwrap()
    );
    let why = "expected 64 lower-case hex digits (the SHA-256 of the key, never the key)";
    for bad in [
        "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD",
        "ba7816bf",
        "zz7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    ] {
        assert_eq!(parse_digest(bad), Err(why));
    }
}
