//! RFC 7520 §4 signature examples ("Examples of Protecting Content Using JSON Object Signing
//! and Encryption"), embedded: the payload is Figure 7, the keys Figures 1, 3 and 5.

use super::*;

/// RFC 7520 §3.4, Figure 3: the RSA public key.
const RSA_PUBLIC: &str = r#"{"keys": [{"kty": "RSA", "kid": "bilbo.baggins@hobbiton.example", "use": "sig", "n": "n4EPtAOCc9AlkeQHPzHStgAbgs7bTZLwUBZdR8_KuKPEHLd4rHVTeT-O-XV2jRojdNhxJWTDvNd7nqQ0VEiZQHz_AJmSCpMaJMRBSFKrKb2wqVwGU_NsYOYL-QtiWN2lbzcEe6XC0dApr5ydQLrHqkHHig3RBordaZ6Aj-oBHqFEHYpPe7Tpe-OfVfHd1E6cS6M1FZcD1NNLYD5lFHpPI9bTwJlsde3uhGqC0ZCuEHg8lhzwOHrtIQbS0FVbb9k3-tVTU4fg_3L_vniUFAKwuCLqKnS2BYwdq_mzSnbLY7h_qixoR7jig3__kRhuaxwUkRz5iaiQkqgc5gHdrNP5zw", "e": "AQAB"}]}"#;

/// RFC 7520 §3.2, Figure 1: the EC P-521 public key.
const EC_P521_PUBLIC: &str = r#"{"keys": [{"kty": "EC", "kid": "bilbo.baggins@hobbiton.example", "use": "sig", "crv": "P-521", "x": "AHKZLLOsCOzz5cY97ewNUajB957y-C-U88c3v13nmGZx6sYl_oJXu9A5RkTKqjqvjyekWF-7ytDyRXYgCF5cj0Kt", "y": "AdymlHvOiLxXkEhayXQnNCvDX4h9htZaCJN34kfmC6pV5OhQHiraVySsUdaQkAgDPrwQrJmbnX9cwlGfP-HqHZR1"}]}"#;

/// RFC 7520 §3.5, Figure 5: the symmetric key, as a secret file holds it.
const HMAC_SECRET: &str = r#"{"keys": [{"kty": "oct", "kid": "018c0ae5-4d9b-471b-bfd6-eef314bc7037", "use": "sig", "alg": "HS256", "k": "hJtXIZ2uSN5kbQfbtTNWbpdmhkV8FJG-Onbc6mxCcYg"}]}"#;

/// Figure 7, base64url-encoded (Figure 8).
const PAYLOAD: &str = "SXTigJlzIGEgZGFuZ2Vyb3VzIGJ1c2luZXNzLCBGcm9kbywgZ29pbmcgb3V0IHlvdXIgZG9vci4gWW91IHN0ZXAgb250byB0aGUgcm9hZCwgYW5kIGlmIHlvdSBkb24ndCBrZWVwIHlvdXIgZmVldCwgdGhlcmXigJlzIG5vIGtub3dpbmcgd2hlcmUgeW91IG1pZ2h0IGJlIHN3ZXB0IG9mZiB0by4";

/// §4.1.3, Figure 13: RS256.
const RS256: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImJpbGJvLmJhZ2dpbnNAaG9iYml0b24uZXhhbXBsZSJ9.SXTigJlzIGEgZGFuZ2Vyb3VzIGJ1c2luZXNzLCBGcm9kbywgZ29pbmcgb3V0IHlvdXIgZG9vci4gWW91IHN0ZXAgb250byB0aGUgcm9hZCwgYW5kIGlmIHlvdSBkb24ndCBrZWVwIHlvdXIgZmVldCwgdGhlcmXigJlzIG5vIGtub3dpbmcgd2hlcmUgeW91IG1pZ2h0IGJlIHN3ZXB0IG9mZiB0by4.MRjdkly7_-oTPTS3AXP41iQIGKa80A0ZmTuV5MEaHoxnW2e5CZ5NlKtainoFmKZopdHM1O2U4mwzJdQx996ivp83xuglII7PNDi84wnB-BDkoBwA78185hX-Es4JIwmDLJK3lfWRa-XtL0RnltuYv746iYTh_qHRD68BNt1uSNCrUCTJDt5aAE6x8wW1Kt9eRo4QPocSadnHXFxnt8Is9UzpERV0ePPQdLuW3IS_de3xyIrDaLGdjluPxUAhb6L2aXic1U12podGU0KLUQSE_oI-ZnmKJ3F4uOZDnd6QZWJushZ41Axf_fcIe8u9ipH84ogoree7vjbU5y18kDquDg";

/// §4.2.3, Figure 20: PS384 (randomized: verified only).
const PS384: &str = "eyJhbGciOiJQUzM4NCIsImtpZCI6ImJpbGJvLmJhZ2dpbnNAaG9iYml0b24uZXhhbXBsZSJ9.SXTigJlzIGEgZGFuZ2Vyb3VzIGJ1c2luZXNzLCBGcm9kbywgZ29pbmcgb3V0IHlvdXIgZG9vci4gWW91IHN0ZXAgb250byB0aGUgcm9hZCwgYW5kIGlmIHlvdSBkb24ndCBrZWVwIHlvdXIgZmVldCwgdGhlcmXigJlzIG5vIGtub3dpbmcgd2hlcmUgeW91IG1pZ2h0IGJlIHN3ZXB0IG9mZiB0by4.cu22eBqkYDKgIlTpzDXGvaFfz6WGoz7fUDcfT0kkOy42miAh2qyBzk1xEsnk2IpN6-tPid6VrklHkqsGqDqHCdP6O8TTB5dDDItllVo6_1OLPpcbUrhiUSMxbbXUvdvWXzg-UD8biiReQFlfz28zGWVsdiNAUf8ZnyPEgVFn442ZdNqiVJRmBqrYRXe8P_ijQ7p8Vdz0TTrxUeT3lm8d9shnr2lfJT8ImUjvAA2Xez2Mlp8cBE5awDzT0qI0n6uiP1aCN_2_jLAeQTlqRHtfa64QQSUmFAAjVKPbByi7xho0uTOcbH510a6GYmJUAfmWjwZ6oD4ifKo8DYM-X72Eaw";

/// §4.3.3, Figure 27: ES512.
const ES512: &str = "eyJhbGciOiJFUzUxMiIsImtpZCI6ImJpbGJvLmJhZ2dpbnNAaG9iYml0b24uZXhhbXBsZSJ9.SXTigJlzIGEgZGFuZ2Vyb3VzIGJ1c2luZXNzLCBGcm9kbywgZ29pbmcgb3V0IHlvdXIgZG9vci4gWW91IHN0ZXAgb250byB0aGUgcm9hZCwgYW5kIGlmIHlvdSBkb24ndCBrZWVwIHlvdXIgZmVldCwgdGhlcmXigJlzIG5vIGtub3dpbmcgd2hlcmUgeW91IG1pZ2h0IGJlIHN3ZXB0IG9mZiB0by4.AE_R_YZCChjn4791jSQCrdPZCNYqHXCTZH0-JZGYNlaAjP2kqaluUIIUnC9qvbu9Plon7KRTzoNEuT4Va2cmL1eJAQy3mtPBu_u_sDDyYjnAMDxXPn7XrT0lw-kvAD890jl8e2puQens_IEKBpHABlsbEPX6sFY8OcGDqoRuBomu9xQ2";

/// §4.4.3, Figure 34: HS256.
const HS256: &str = "eyJhbGciOiJIUzI1NiIsImtpZCI6IjAxOGMwYWU1LTRkOWItNDcxYi1iZmQ2LWVlZjMxNGJjNzAzNyJ9.SXTigJlzIGEgZGFuZ2Vyb3VzIGJ1c2luZXNzLCBGcm9kbywgZ29pbmcgb3V0IHlvdXIgZG9vci4gWW91IHN0ZXAgb250byB0aGUgcm9hZCwgYW5kIGlmIHlvdSBkb24ndCBrZWVwIHlvdXIgZmVldCwgdGhlcmXigJlzIG5vIGtub3dpbmcgd2hlcmUgeW91IG1pZ2h0IGJlIHN3ZXB0IG9mZiB0by4.s0h6KThzkfBBBkLspW1h84VsJZFTsPPqMDA7g1Md7p0";

fn payload() -> Vec<u8> {
    B64.decode(PAYLOAD).unwrap()
}

fn verify(token: &str, keys: &KeySet, alg: Algorithm) -> Result<VerifiedJws, JwtError> {
    verify_jws(
        token,
        keys,
        AlgorithmSet::empty().with(alg),
        DEFAULT_MAX_TOKEN_BYTES,
    )
}

#[test]
fn rs256_figure_13() {
    let keys = KeySet::from_jwks(RSA_PUBLIC.as_bytes()).unwrap();
    let v = verify(RS256, &keys, Algorithm::Rs256).unwrap();
    assert_eq!(
        (v.alg, v.kid.as_deref(), v.payload),
        (
            Algorithm::Rs256,
            Some("bilbo.baggins@hobbiton.example"),
            payload()
        )
    );
    // RSASSA-PKCS1-v1_5 is deterministic: signing again gives Figure 13's signature.
    let again = TestKey::rsa("bilbo.baggins@hobbiton.example").sign_parts(
        "RS256",
        RS256.split('.').next().unwrap(),
        PAYLOAD,
    );
    assert_eq!(again, RS256);
}

#[test]
fn ps384_figure_20() {
    let keys = KeySet::from_jwks(RSA_PUBLIC.as_bytes()).unwrap();
    let v = verify(PS384, &keys, Algorithm::Ps384).unwrap();
    assert_eq!((v.alg, v.payload), (Algorithm::Ps384, payload()));
    // Not RS384 with the same key: the allow-list and the padding both differ.
    assert_eq!(
        verify(PS384, &keys, Algorithm::Rs384).unwrap_err(),
        JwtError::AlgNotAllowed {
            alg: Algorithm::Ps384,
            allowed: AlgorithmSet::empty().with(Algorithm::Rs384),
        }
    );
}

#[test]
fn es512_figure_27_is_not_supported() {
    // `ring` has no P-521 ECDSA: the token is refused before any key is looked up, and the
    // key is skipped from a JWKS (which then has no usable key).
    let keys = KeySet::from_jwks(RSA_PUBLIC.as_bytes()).unwrap();
    assert_eq!(
        verify_jws(ES512, &keys, AlgorithmSet::all(), DEFAULT_MAX_TOKEN_BYTES).unwrap_err(),
        JwtError::UnsupportedAlg {
            alg: Shown::new("ES512"),
        }
    );
    assert_eq!(
        KeySet::from_jwks(EC_P521_PUBLIC.as_bytes())
            .unwrap_err()
            .to_string(),
        "no usable key; key 0 (`bilbo.baggins@hobbiton.example`) skipped: curve `P-521` is not \
         supported (P-256, P-384, Ed25519)"
    );
}

#[test]
fn hs256_figure_34() {
    let keys = KeySet::from_secret_jwks(HMAC_SECRET.as_bytes()).unwrap();
    let v = verify(HS256, &keys, Algorithm::Hs256).unwrap();
    assert_eq!(
        (v.alg, v.kid.as_deref(), v.payload),
        (
            Algorithm::Hs256,
            Some("018c0ae5-4d9b-471b-bfd6-eef314bc7037"),
            payload()
        )
    );
    // The secret never verifies as a public key set, and the key is HS256 only.
    assert_eq!(
        KeySet::from_jwks(HMAC_SECRET.as_bytes())
            .unwrap_err()
            .to_string(),
        "key 0 (`018c0ae5-4d9b-471b-bfd6-eef314bc7037`) holds private key material: a set for \
         verification holds public keys only"
    );
    let forged = {
        let key = TestKey::hmac(
            "018c0ae5-4d9b-471b-bfd6-eef314bc7037",
            &B64.decode("hJtXIZ2uSN5kbQfbtTNWbpdmhkV8FJG-Onbc6mxCcYg")
                .unwrap(),
        );
        let header = b64(br#"{"alg":"HS512","kid":"018c0ae5-4d9b-471b-bfd6-eef314bc7037"}"#);
        key.sign_parts("HS512", &header, PAYLOAD)
    };
    assert_eq!(
        verify_jws(&forged, &keys, AlgorithmSet::all(), DEFAULT_MAX_TOKEN_BYTES).unwrap_err(),
        JwtError::KeyAlgMismatch {
            kid: Kid::of(Some("018c0ae5-4d9b-471b-bfd6-eef314bc7037")),
            key_alg: Algorithm::Hs256,
            alg: Algorithm::Hs512,
        }
    );
}
