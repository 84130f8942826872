//! Every Wycheproof JWS and JWK test vector (`/work/shared/corpora/wycheproof`, read in place).
//!
//! Each group's key is loaded the way the agent loads keys: public keys through the JWKS
//! reader (`jwksFile`), `oct` keys through the secret-file reader (`secretFile`). Every
//! algorithm the agent implements is allowed, the most permissive configuration, so that what
//! refuses a vector is the key handling and the verification, not an allow-list. A key set that
//! is refused refuses every token of its group.
//!
//! Results: `valid` must be accepted and `invalid` refused, except for the deviations listed
//! in [`DEVIATIONS`], each with the outcome asserted exactly and the reason. There are no
//! `acceptable` vectors in these files; one would be accepted or refused, and counted.

use std::{collections::BTreeMap, path::PathBuf};

use super::*;

fn corpus(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/corpora/wycheproof")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// What the agent made of a vector: accepted, or refused with this message.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Accepted,
    Refused(String),
}

/// Vectors whose expected result the agent deliberately does not give, with what it does
/// instead: (file, tcId, outcome, why).
const DEVIATIONS: &[(&str, u64, &str, &str)] = &[
    (
        JWS,
        346,
        "key `bilbo.baggins@hobbiton.example` is for PS256, not PS384",
        "valid in Wycheproof, but its key says `\"alg\": \"PS256\"` and the token is PS384: a \
         JWK's `alg` restricts the key (RFC 7517 §4.4), and the agent honours it. RFC 7520's own \
         key has no `alg`, and the same token verifies (rfc7520::ps384_figure_20).",
    ),
    (
        JWS,
        350,
        "key `bilbo.baggins@hobbiton.example` is for PS256, not PS384",
        "as 346, with `key_ops` instead of `use`",
    ),
    (
        JWS,
        347,
        "key set: no usable key; key 0 (`bilbo.baggins@hobbiton.example`) skipped: algorithm \
         `ES521` is not supported",
        "valid in Wycheproof: ES512 (P-521), which `ring` does not implement; the key is skipped \
         and the token would be refused as `UnsupportedAlg` (rfc7520::es512_figure_27_is_not_supported)",
    ),
    (
        JWS,
        351,
        "key set: no usable key; key 0 (`bilbo.baggins@hobbiton.example`) skipped: algorithm \
         `ES521` is not supported",
        "as 347",
    ),
    (
        JWS,
        367,
        "accepted",
        "invalid in Wycheproof, but the vector is byte for byte tcId 357, which is valid (the \
         padding it is named after is not in it): both cannot hold, and the signature verifies",
    ),
    (JWS, 370, "accepted", "as 367"),
    (
        JWS,
        372,
        "malformed token: the header is not unpadded, canonical base64url",
        "valid in Wycheproof (a decoder that skips the `?` it inserts accepts it), but RFC 7515 \
         §2 base64url has no such character: the agent decodes strictly, so that one token has \
         one meaning",
    ),
    (
        JWS,
        373,
        "malformed token: the payload is not unpadded, canonical base64url",
        "as 372, in the payload",
    ),
];

const JWS: &str = "json_web_signature_test.json";

/// Load a group's keys as the agent would: a set of `oct` keys as a secret file, anything else
/// as a public JWKS.
fn keys(keyset: &Value) -> Result<KeySet, String> {
    let keys = match keyset.get("keys") {
        Some(k) => k.clone(),
        None => json!([keyset]),
    };
    let symmetric = keys.as_array().unwrap().iter().any(|k| k["kty"] == "oct");
    let text = json!({ "keys": keys }).to_string();
    let set = if symmetric {
        KeySet::from_secret_jwks(text.as_bytes())
    } else {
        KeySet::from_jwks(text.as_bytes())
    };
    set.map_err(|e| format!("key set: {e}"))
}

fn outcome(keys: &Result<KeySet, String>, jws: &str) -> Outcome {
    match keys {
        Err(e) => Outcome::Refused(e.clone()),
        Ok(set) => match verify_jws(jws, set, AlgorithmSet::all(), DEFAULT_MAX_TOKEN_BYTES) {
            Ok(_) => Outcome::Accepted,
            Err(e) => Outcome::Refused(e.to_string()),
        },
    }
}

fn run(file: &str) -> BTreeMap<String, usize> {
    let doc = corpus(file);
    let mut counts = BTreeMap::new();
    let mut failures = Vec::new();
    let mut total = 0;
    for group in doc["testGroups"].as_array().unwrap() {
        let keyset = group.get("public").unwrap_or(&group["private"]);
        let keys = keys(keyset);
        for case in group["tests"].as_array().unwrap() {
            total += 1;
            let id = case["tcId"].as_u64().unwrap();
            let expected = case["result"].as_str().unwrap();
            let got = outcome(&keys, case["jws"].as_str().unwrap());
            let deviation = DEVIATIONS
                .iter()
                .find(|(f, i, _, _)| *f == file && *i == id);
            let ok = match (deviation, expected, &got) {
                (Some((_, _, want, _)), _, got) => {
                    let want = if *want == "accepted" {
                        Outcome::Accepted
                    } else {
                        Outcome::Refused((*want).to_owned())
                    };
                    *got == want
                }
                (None, "valid", Outcome::Accepted) => true,
                (None, "invalid", Outcome::Refused(_)) => true,
                (None, "acceptable", _) => true,
                _ => false,
            };
            let kind = match (deviation.is_some(), &got) {
                (true, _) => "deviation",
                (false, Outcome::Accepted) => "accepted",
                (false, Outcome::Refused(_)) => "refused",
            };
            *counts.entry(format!("{expected} {kind}")).or_insert(0) += 1;
            if !ok {
                failures.push(format!(
                    "{file} tcId {id} ({}, {expected}): {got:?}",
                    case["comment"].as_str().unwrap()
                ));
            }
        }
    }
    assert_eq!(total, doc["numberOfTests"].as_u64().unwrap() as usize);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!("{file}: {counts:?}");
    counts
}

#[test]
fn json_web_signature_vectors() {
    let counts = run(JWS);
    assert_eq!(
        counts,
        BTreeMap::from([
            ("invalid deviation".to_owned(), 2),
            ("invalid refused".to_owned(), 353),
            ("valid accepted".to_owned(), 40),
            ("valid deviation".to_owned(), 6),
        ])
    );
}

#[test]
fn the_padding_vectors_are_the_valid_vector() {
    let doc = corpus(JWS);
    let jws = |id: u64| {
        doc["testGroups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["tests"].as_array().unwrap())
            .find(|t| t["tcId"] == id)
            .map(|t| t["jws"].as_str().unwrap().to_owned())
            .unwrap()
    };
    assert_eq!(jws(367), jws(357));
    assert_eq!(jws(370), jws(357));
    assert!(!jws(357).contains('='));
}

#[test]
fn json_web_key_vectors() {
    let counts = run("json_web_key_test.json");
    assert_eq!(
        counts,
        BTreeMap::from([
            ("invalid refused".to_owned(), 21),
            ("valid accepted".to_owned(), 5),
        ])
    );
}
