//! Every Wycheproof JWS and JWK test vector (vendored in `tests/data/wycheproof`, read in place).
//!
//! Each group's key is loaded the way the agent loads keys: public keys through the JWKS
//! reader (`jwksFile`), `oct` keys through the secret-file reader (`secretFile`). Every
//! algorithm the agent implements is allowed, the most permissive configuration, so that what
//! refuses a vector is the key handling and the verification, not an allow-list. A key set that
//! is refused refuses every token of its group.
//!
//! Every vector must give its expected result: `valid` accepted, `invalid` refused,
//! `acceptable` either (Wycheproof's "undefined, legacy or weak": counted; these files have
//! none). The expected result is the vector's label unless the vector itself shows that the
//! label cannot hold, by one of the [`Reading`] rules below. The rules look at the key and the
//! token only, never at a case number, and how many vectors each one reads is asserted exactly,
//! so a changed corpus or a changed verifier fails the test instead of slipping through.

use std::{collections::BTreeMap, path::PathBuf};

use super::*;

fn corpus(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data/wycheproof")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

const JWS: &str = "json_web_signature_test.json";
const JWK: &str = "json_web_key_test.json";

/// What the agent made of a vector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Accepted,
    /// The group's key set was refused.
    KeysRefused(String),
    Refused(JwtError),
}

/// How a vector is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Reading {
    /// By its label.
    Label,
    /// Not applicable, algorithm not offered: the token's `alg` is a registered algorithm the
    /// agent does not implement ([`Algorithm::not_offered`]: ES512, as `ring` has no P-521), so
    /// no policy can configure it. Whatever the label, the token must be refused.
    NotOffered,
    /// Wrong primitive: the key's own `alg` names another algorithm than the token's. The
    /// file's note `WrongPrimitive` ("The signature uses a different algorithm than the
    /// algorithm specified in the key") marks such tokens invalid, and Wycheproof's
    /// documentation (C2SP/wycheproof `doc/json_web_crypto.md`, "Ignoring "alg" field in key")
    /// expects them rejected without trying the signature: that is why Wycheproof added `alg`
    /// to RFC 7520's keys. Must be refused with `KeyAlgMismatch`, whatever the label: RFC
    /// 7520's PS384 example under the key Wycheproof marked `PS256` carries `valid` and no
    /// flag, yet cannot be told apart from the flagged vectors.
    WrongPrimitive,
    /// Labelled valid, but the MAC does not cover the token: recomputed independently over the
    /// token's signing input as sent (RFC 7515 §5.2 step 8: the bytes before the second `.`), it
    /// differs. Accepting it would take a verifier that MACs a re-encoding of what a lenient
    /// decoder made of the parts (here, `?` dropped from the header or the payload), which RFC
    /// 7515 rules out. Must be refused.
    MacNotOverToken,
    /// Byte for byte the token of another vector of the group (same key) that has the opposite
    /// label: both labels cannot hold. The signature verifies over the token as sent and every
    /// part is canonical, so the valid label is the one that holds: must be accepted like its
    /// twin. (The vectors are named for base64 padding that is not in the token; padded parts
    /// are refused in `attacks`.)
    TwinOfValid,
}

/// Load a group's keys as the agent would: a set of `oct` keys as a secret file, anything else
/// as a public JWKS.
fn keys(keyset: &Value) -> Result<KeySet, String> {
    let text = json!({ "keys": jwks(keyset) }).to_string();
    let set = if jwks(keyset).iter().any(|k| k["kty"] == "oct") {
        KeySet::from_secret_jwks(text.as_bytes())
    } else {
        KeySet::from_jwks(text.as_bytes())
    };
    set.map_err(|e| e.to_string())
}

/// The keys of a group's key, which is a JWK or a JWK set.
fn jwks(keyset: &Value) -> Vec<Value> {
    match keyset.get("keys") {
        Some(k) => k.as_array().unwrap().clone(),
        None => vec![keyset.clone()],
    }
}

fn outcome(keys: &Result<KeySet, String>, jws: &str) -> Outcome {
    match keys {
        Err(e) => Outcome::KeysRefused(e.clone()),
        Ok(set) => match verify_jws(jws, set, AlgorithmSet::all(), DEFAULT_MAX_TOKEN_BYTES) {
            Ok(_) => Outcome::Accepted,
            Err(e) => Outcome::Refused(e),
        },
    }
}

/// The token's protected header, if it is canonical base64url of a JSON object.
fn header(jws: &str) -> Option<serde_json::Map<String, Value>> {
    let bytes = B64.decode(jws.split('.').next()?).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(h) => Some(h),
        _ => None,
    }
}

/// Which rule judges `case` of `group` (see [`Reading`]).
fn reading(group: &Value, keyset: &Value, case: &Value) -> Reading {
    let jws = case["jws"].as_str().unwrap();
    let label = case["result"].as_str().unwrap();
    let header = header(jws);
    let alg = header.as_ref().and_then(|h| h.get("alg")?.as_str());
    if alg.is_some_and(|a| Algorithm::not_offered(a).is_some()) {
        return Reading::NotOffered;
    }
    // The key the token names, or the only one.
    let keys = jwks(keyset);
    let kid = header.as_ref().and_then(|h| h.get("kid"));
    let key = match kid {
        Some(kid) => keys.iter().find(|k| k.get("kid") == Some(kid)),
        None if keys.len() == 1 => keys.first(),
        None => None,
    };
    let key_alg = key.and_then(|k| k["alg"].as_str());
    // Both algorithms the agent implements: a key or token naming anything else is refused
    // by its label's own account (`none`, unknown or unsupported names).
    if let (Some(alg), Some(key_alg)) = (
        alg.and_then(Algorithm::from_name),
        key_alg.and_then(Algorithm::from_name),
    ) && alg != key_alg
    {
        return Reading::WrongPrimitive;
    }
    // The key's `alg` says which MAC it makes, even where the header is not readable.
    if label == "valid"
        && let Some(mac) = independent_mac(key, key_alg.or(alg), jws)
        && Some(mac) != jws.rsplit('.').next().and_then(|s| B64.decode(s).ok())
    {
        return Reading::MacNotOverToken;
    }
    let twin_valid = group["tests"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["jws"] == case["jws"] && t["result"] == "valid");
    if label == "invalid" && twin_valid {
        return Reading::TwinOfValid;
    }
    Reading::Label
}

/// The HMAC of the token's signing input as sent, computed with `ring::hmac` alone (not the
/// verifier under test), when the key is an `oct` secret and `alg` an HS algorithm.
fn independent_mac(key: Option<&Value>, alg: Option<&str>, jws: &str) -> Option<Vec<u8>> {
    let key = key.filter(|k| k["kty"] == "oct")?;
    let secret = B64.decode(key["k"].as_str()?).ok()?;
    let hash = match alg? {
        "HS256" => hmac::HMAC_SHA256,
        "HS384" => hmac::HMAC_SHA384,
        "HS512" => hmac::HMAC_SHA512,
        _ => return None,
    };
    let (input, _) = jws.rsplit_once('.')?;
    let tag = hmac::sign(&hmac::Key::new(hash, &secret), input.as_bytes());
    Some(tag.as_ref().to_vec())
}

/// Whether `got` is what `reading` requires of a vector labelled `label`.
fn gives_expected(reading: Reading, label: &str, got: &Outcome) -> bool {
    match (reading, label, got) {
        (Reading::Label, "valid", Outcome::Accepted) => true,
        (Reading::Label, "invalid", Outcome::KeysRefused(_) | Outcome::Refused(_)) => true,
        (Reading::Label, "acceptable", _) => true,
        (Reading::Label, _, _) => false,
        (Reading::NotOffered, _, got) => {
            // The key is skipped from the set (no P-521), or the token's alg refused.
            matches!(got, Outcome::KeysRefused(_))
                || matches!(got, Outcome::Refused(JwtError::UnsupportedAlg { .. }))
        }
        (Reading::WrongPrimitive, _, got) => {
            matches!(got, Outcome::Refused(JwtError::KeyAlgMismatch { .. }))
        }
        (Reading::MacNotOverToken, _, got) => matches!(got, Outcome::Refused(_)),
        (Reading::TwinOfValid, _, got) => *got == Outcome::Accepted,
    }
}

/// Judge every vector of `file`; fail on any that does not give its expected result. Returns
/// how many vectors each (reading, label) covers.
fn run(file: &str) -> BTreeMap<(Reading, String), usize> {
    let doc = corpus(file);
    let mut counts = BTreeMap::new();
    let mut failures = Vec::new();
    let mut total = 0;
    for group in doc["testGroups"].as_array().unwrap() {
        let keyset = group.get("public").unwrap_or(&group["private"]);
        let keys = keys(keyset);
        for case in group["tests"].as_array().unwrap() {
            total += 1;
            let label = case["result"].as_str().unwrap();
            let got = outcome(&keys, case["jws"].as_str().unwrap());
            let reading = reading(group, keyset, case);
            *counts.entry((reading, label.to_owned())).or_insert(0) += 1;
            if reading != Reading::Label {
                eprintln!(
                    "{file} tcId {} ({}, labelled {label}): read as {reading:?}: {got:?}",
                    case["tcId"],
                    case["comment"].as_str().unwrap()
                );
            }
            if !gives_expected(reading, label, &got) {
                failures.push(format!(
                    "{file} tcId {} ({}, labelled {label}, read as {reading:?}): {got:?}",
                    case["tcId"],
                    case["comment"].as_str().unwrap()
                ));
            }
        }
    }
    assert_eq!(total, doc["numberOfTests"].as_u64().unwrap() as usize);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!("{file}: {total} vectors, each gives its expected result: {counts:?}");
    counts
}

fn counts(entries: &[(Reading, &str, usize)]) -> BTreeMap<(Reading, String), usize> {
    entries
        .iter()
        .map(|&(r, label, n)| ((r, label.to_owned()), n))
        .collect()
}

#[test]
fn json_web_signature_vectors() {
    assert_eq!(
        run(JWS),
        counts(&[
            (Reading::Label, "valid", 40),
            (Reading::Label, "invalid", 347),
            (Reading::NotOffered, "valid", 2),
            (Reading::WrongPrimitive, "valid", 2),
            (Reading::WrongPrimitive, "invalid", 6),
            (Reading::MacNotOverToken, "valid", 2),
            (Reading::TwinOfValid, "invalid", 2),
        ])
    );
}

#[test]
fn json_web_key_vectors() {
    assert_eq!(
        run(JWK),
        counts(&[
            (Reading::Label, "valid", 5),
            (Reading::Label, "invalid", 21)
        ])
    );
}

#[test]
fn an_algorithm_not_offered_cannot_be_configured() {
    // What makes `NotOffered` a reading and not an exception: no credential can list ES512, so
    // no ES512 token can be accepted (policy::tests::credentials checks the error message).
    assert_eq!(Algorithm::from_name("ES512"), None);
    assert!(Algorithm::not_offered("ES512").is_some());
    assert!(
        Algorithm::ALL
            .iter()
            .all(|a| Algorithm::not_offered(a.name()).is_none())
    );
}
