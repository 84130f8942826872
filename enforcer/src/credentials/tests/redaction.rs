//! No secret in `Debug` or `Display`: tokens, HMAC secrets, API keys, fingerprint keys.

use std::sync::Arc;

use super::*;

#[test]
fn debug_output_holds_no_secret() {
    let secret = [0x5au8; 48];
    let hs = TestKey::hmac("hs-1", &secret);
    let set = secret_set(&[&hs]);
    let v = verifier(set, &[Algorithm::Hs384]);
    let token = hs.token("HS384", &good_claims());
    let verified = v.verify(&token, NOW).unwrap();
    let api = ApiKeys::new(
        ApiKeyLocation::Header("x-api-key".into()),
        vec![ApiKey::new("k", api_key_digest(b"the-api-key"))],
    );
    let fp = Fingerprinter::from_key(&[0x42; 32]);
    let creds = Credentials::new(vec![
        Credential::new("hs", Verifier::Jwt(v)),
        Credential::new("keys", Verifier::ApiKey(api)),
    ]);
    let texts = [
        format!("{creds:?}"),
        format!("{verified:?}"),
        format!("{fp:?}"),
        format!("{:?}", Arc::new(secret_set(&[&hs]))),
    ];
    let forbidden = [
        b64(&secret),
        hex(&secret),
        token.clone(),
        token.split('.').nth(2).unwrap().to_owned(),
        "the-api-key".to_owned(),
        hex(&api_key_digest(b"the-api-key")),
        hex(&[0x42; 32]),
        "90, 90, 90".to_owned(),
        "66, 66, 66".to_owned(),
    ];
    for t in &texts {
        for f in &forbidden {
            assert!(!t.contains(f.as_str()), "{f} in {t}");
        }
    }
    // Errors carry facts, not tokens.
    let err = verifier(secret_set(&[&hs]), &[Algorithm::Hs256])
        .verify(&token, NOW)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "algorithm HS384 is not allowed (allowed: HS256)"
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}
