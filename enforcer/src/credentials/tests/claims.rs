//! Claims: time boundaries with leeway, audiences, scopes, kept claims.

use super::*;

fn with(changes: Value) -> Value {
    let mut c = good_claims();
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn check(claims: &Value) -> Result<std::sync::Arc<VerifiedJwt>, JwtError> {
    let key = TestKey::ed25519("ed-1");
    let v = verifier(public_set(&[&key]), &[Algorithm::EdDsa]);
    v.verify(&key.token("EdDSA", claims), NOW)
}

#[test]
fn time_boundaries_with_leeway() {
    let now = NOW.as_secs();
    // Refused from exp + leeway on.
    assert!(check(&with(json!({"exp": now - 59}))).is_ok());
    assert_eq!(
        check(&with(json!({"exp": now - 60}))).unwrap_err(),
        JwtError::Expired {
            exp: UnixTime::from_secs(now - 60),
            now: NOW,
            leeway: 60
        }
    );
    // Accepted up to nbf = now + leeway.
    assert!(check(&with(json!({"nbf": now + 60}))).is_ok());
    assert!(matches!(
        check(&with(json!({"nbf": now + 61}))),
        Err(JwtError::NotYetValid { .. })
    ));
    assert!(check(&with(json!({"iat": now + 60}))).is_ok());
    // Fractions round towards refusing: exp down, nbf up.
    assert!(matches!(
        check(&with(json!({"exp": (now - 60) as f64 + 0.9}))),
        Err(JwtError::Expired { .. })
    ));
    assert!(matches!(
        check(&with(json!({"nbf": (now + 60) as f64 + 0.1}))),
        Err(JwtError::NotYetValid { .. })
    ));
    // No nbf, no iat: only exp is required (maxLifetime aside).
    let key = TestKey::ed25519("ed-1");
    let mut config = JwtConfig::new(
        ISSUER,
        AUDIENCE,
        AlgorithmSet::empty().with(Algorithm::EdDsa),
    );
    config.leeway = 0;
    let v = JwtVerifier::with_cache(
        config,
        Keys::Static(std::sync::Arc::new(public_set(&[&key]))),
        0,
    );
    let t = key.token(
        "EdDSA",
        &with(json!({"nbf": null, "iat": null, "exp": now + 1})),
    );
    assert!(v.verify(&t, NOW).is_ok());
    assert!(matches!(
        v.verify(&t, NOW.saturating_add(1)),
        Err(JwtError::Expired { leeway: 0, .. })
    ));
}

#[test]
fn audiences_and_types() {
    assert!(check(&with(json!({"aud": ["ledger-api", AUDIENCE]}))).is_ok());
    assert_eq!(
        check(&with(json!({"aud": [AUDIENCE, 1]}))).unwrap_err(),
        JwtError::BadClaim {
            claim: "aud",
            why: "is not a string or an array of strings"
        }
    );
    assert_eq!(
        check(&with(json!({"aud": []}))).unwrap_err(),
        JwtError::WrongAudience {
            expected: AUDIENCE.into()
        }
    );
    assert_eq!(
        check(&with(json!({"iss": 7}))).unwrap_err(),
        JwtError::BadClaim {
            claim: "iss",
            why: "is not a string"
        }
    );
    assert_eq!(
        check(&with(json!({"sub": ["a"]}))).unwrap_err(),
        JwtError::BadClaim {
            claim: "sub",
            why: "is not a string"
        }
    );
}

#[test]
fn scopes_from_scope_or_scp() {
    let scopes = |c: &Value| -> Result<Vec<String>, JwtError> {
        check(c).map(|v| v.scopes().map(str::to_owned).collect())
    };
    assert_eq!(
        scopes(&good_claims()).unwrap(),
        ["invoices:read", "invoices:write"]
    );
    assert_eq!(
        scopes(&with(json!({"scope": null, "scp": ["a", "b"]}))).unwrap(),
        ["a", "b"]
    );
    assert_eq!(
        scopes(&with(json!({"scope": null, "scp": "a  b"}))).unwrap(),
        ["a", "b"]
    );
    assert_eq!(
        scopes(&with(json!({"scp": ["a"]}))).unwrap_err(),
        JwtError::BadClaim {
            claim: "scope",
            why: "and `scp` are both present"
        }
    );
    assert_eq!(
        scopes(&with(json!({"scope": ["a"]}))).unwrap_err(),
        JwtError::BadClaim {
            claim: "scope",
            why: "is not a string"
        }
    );
    assert!(scopes(&with(json!({"scope": null}))).unwrap().is_empty());
}

#[test]
fn kept_claims_match_scalars_and_array_members() {
    let v = check(&with(json!({"level": 3.0, "ratio": 0.5}))).unwrap();
    let s = |x: &str| ClaimValue::String(x.into());
    assert!(v.claim_matches("tenant", &s("acme")));
    assert!(!v.claim_matches("tenant", &s("Acme")));
    assert!(v.claim_matches("level", &ClaimValue::Integer(3)));
    assert!(!v.claim_matches("level", &s("3")));
    assert!(v.claim_matches("admin", &ClaimValue::Bool(false)));
    assert!(v.claim_matches("groups", &s("ops")));
    assert!(!v.claim_matches("groups", &s("admin")));
    // Not kept: not testable.
    assert!(!v.claim_matches("ratio", &ClaimValue::Float(0.5)));
    assert!(!v.claim_matches("missing", &s("x")));
}
