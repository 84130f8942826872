//! A JWKS file: loaded, refreshed on change, never emptied by a bad version.

use std::fs;

use super::{
    cache::{scratch, write_jwks},
    *,
};

#[test]
fn missing_then_present_then_broken_then_fixed() {
    let dir = scratch("jwks");
    let path = dir.0.join("jwks.json");
    let (file, first) = JwksFile::open(&path);
    assert!(matches!(first, Refresh::Failed(JwksError::Read { .. })));
    let why = format!("cannot read {}", path.display());
    assert_eq!(
        file.current().unwrap_err(),
        JwtError::KeysUnavailable {
            why: why.as_str().into()
        }
    );
    // Missing again: nothing new to say.
    assert!(matches!(file.refresh_if_changed(), Refresh::Unchanged));

    let a = TestKey::es256("a");
    write_jwks(&path, &[&a]);
    assert!(matches!(
        file.refresh_if_changed(),
        Refresh::Loaded { keys: 1, .. }
    ));
    assert!(matches!(file.refresh_if_changed(), Refresh::Unchanged));
    let (_, generation) = file.current().unwrap();

    // A broken version keeps the keys in force.
    fs::write(&path, b"{\"keys\": [").unwrap();
    assert!(matches!(
        file.refresh_if_changed(),
        Refresh::Failed(JwksError::Json(_))
    ));
    let (keys, same) = file.current().unwrap();
    assert_eq!((keys.keys()[0].kid(), same), (Some("a"), generation));

    // So does a deleted file.
    fs::remove_file(&path).unwrap();
    assert!(matches!(
        file.refresh_if_changed(),
        Refresh::Failed(JwksError::Read { .. })
    ));
    assert_eq!(file.status(), Ok(1));

    // A good version replaces them, under a new generation.
    let b = TestKey::ed25519("b");
    write_jwks(&path, &[&a, &b]);
    assert!(matches!(
        file.refresh_if_changed(),
        Refresh::Loaded { keys: 2, .. }
    ));
    let (_, newer) = file.current().unwrap();
    assert_ne!(newer, generation);
}

#[test]
fn unusable_keys_are_skipped_and_reported() {
    let ec = TestKey::es256("ec-1");
    let set = json!({"keys": [
        ec.public,
        {"kty": "RSA", "kid": "enc-1", "use": "enc", "n": "AQAB", "e": "AQAB"},
        {"kty": "EC", "kid": "p521", "crv": "P-521", "x": "AA", "y": "AA"},
        {"kty": "RSA", "kid": "small", "n": b64(&[0xc1; 128]), "e": "AQAB"},
        {"kty": "OKP", "kid": "x25519", "crv": "X25519", "x": b64(&[1; 32])},
        {"kty": "EC", "kid": "bad-alg", "alg": "RS256", "crv": "P-256",
            "x": ec.public["x"], "y": ec.public["y"]},
        {"kty": "RSA", "kid": "zero", "n": b64(&[0, 0xc1]), "e": "AQAB"},
    ]});
    let keys = KeySet::from_jwks(set.to_string().as_bytes()).unwrap();
    assert_eq!(keys.keys().len(), 1);
    let skipped: Vec<String> = keys
        .skipped()
        .iter()
        .map(|s| format!("{} {}: {}", s.index, s.kid, s.why))
        .collect();
    assert_eq!(
        skipped,
        [
            "1 `enc-1`: `use` is `enc`, not `sig`",
            "2 `p521`: curve `P-521` is not supported (P-256, P-384, Ed25519)",
            "3 `small`: RSA modulus of 1024 bits (2048 to 8192 accepted)",
            "4 `x25519`: curve `X25519` is not supported (P-256, P-384, Ed25519)",
            "5 `bad-alg`: algorithm RS256 does not fit a EC P-256 key",
            "6 `zero`: member `n` has a leading zero octet (RFC 7518 §2)",
        ]
    );
    // A token naming a skipped key says why it cannot be used.
    let v = verifier(keys, &[Algorithm::Rs256, Algorithm::Es256]);
    let t = TestKey::rsa("small").token("RS256", &good_claims());
    assert_eq!(
        v.verify(&t, NOW).unwrap_err(),
        JwtError::UnusableKey {
            kid: Kid::of(Some("small")),
            why: JwkError::RsaKeySize { bits: 1024 }
        }
    );
}

#[test]
fn whole_set_errors() {
    let ec = TestKey::es256("ec-1");
    let cases = [
        (json!({"keys": []}).to_string(), "no usable key"),
        (json!({"kyes": []}).to_string(), "not a JWK set: no `keys` array"),
        ("[]".to_owned(), "not a JWK set: not a JSON object"),
        (
            json!({"keys": [ec.public, ec.public]}).to_string(),
            "two keys have the id `ec-1`",
        ),
        (
            json!({"keys": [{"kty": "EC", "kid": "k", "crv": "P-256", "x": "AA", "y": "AA", "d": "AA"}]})
                .to_string(),
            "key 0 (`k`) holds private key material: a set for verification holds public keys only",
        ),
        (
            json!({"keys": (0..101).map(|i| json!({"kid": i})).collect::<Vec<_>>()}).to_string(),
            "101 keys, over the limit of 100",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(
            KeySet::from_jwks(text.as_bytes()).unwrap_err().to_string(),
            want
        );
    }
    let secrets = [
        (
            json!({"keys": [{"kty": "oct", "kid": "s", "k": b64(&[1; 31])}]}).to_string(),
            "key 0 (`s`): secret of 31 bytes; at least 32 are required",
        ),
        (
            json!({"keys": [ec.public]}).to_string(),
            "key 0 (`ec-1`): not a symmetric (`oct`) key: a secret file holds HMAC secrets only",
        ),
    ];
    for (text, want) in secrets {
        assert_eq!(
            KeySet::from_secret_jwks(text.as_bytes())
                .unwrap_err()
                .to_string(),
            want
        );
    }
}
