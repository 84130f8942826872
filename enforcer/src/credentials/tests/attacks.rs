//! Hostile tokens, each refused with its exact error and answered 401 `invalid_token`.

use super::*;
use crate::credentials::json::JsonWhy;

/// The verifier attacks are tried against: RS256, PS256 and ES256 from a JWKS of an RSA and an
/// EC key.
struct Target {
    rsa: TestKey,
    ec: TestKey,
    verifier: JwtVerifier,
}

fn target() -> Target {
    let rsa = TestKey::rsa("rsa-1");
    let ec = TestKey::es256("ec-1");
    let verifier = verifier(
        public_set(&[&rsa, &ec]),
        &[Algorithm::Rs256, Algorithm::Ps256, Algorithm::Es256],
    );
    Target { rsa, ec, verifier }
}

fn header(v: Value) -> String {
    b64(v.to_string().as_bytes())
}

fn payload(v: &Value) -> String {
    b64(v.to_string().as_bytes())
}

/// Headers, and the bearer token they carry (or why not).
type BearerCase<'a> = (&'a [(&'a str, &'a str)], Result<&'a str, JwtError>);

fn kid(k: &str) -> Kid {
    Kid::of(Some(k))
}

#[test]
fn the_control_token_verifies() {
    let t = target();
    for token in [
        t.rsa.token("RS256", &good_claims()),
        t.rsa.token("PS256", &good_claims()),
        t.ec.token("ES256", &good_claims()),
    ] {
        let v = t.verifier.verify(&token, NOW).unwrap();
        assert_eq!(v.subject.as_deref(), Some("billing@svc"));
    }
}

#[test]
fn attacks_are_refused_with_their_exact_error() {
    let t = target();
    let claims = good_claims();
    let p = payload(&claims);
    let now = NOW.as_secs();
    let with = |changes: Value| {
        let mut c = good_claims();
        for (k, v) in changes.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let rsa_public_bytes = t.rsa.public.to_string();
    let confused = TestKey::hmac("rsa-1", rsa_public_bytes.as_bytes());
    let good = t.rsa.token("RS256", &claims);
    let (gh, gp, gs) = {
        let mut it = good.split('.');
        (
            it.next().unwrap().to_owned(),
            it.next().unwrap().to_owned(),
            it.next().unwrap().to_owned(),
        )
    };
    // Base64 with its `=` padding (RFC 4648 §5), which RFC 7515 §2 leaves out.
    let padded = |s: &str| format!("{s}{}", "=".repeat(4 - s.len() % 4));
    let big = t.rsa.token(
        "RS256",
        &with(json!({"pad": "x".repeat(DEFAULT_MAX_TOKEN_BYTES)})),
    );
    let cases: Vec<(&str, String, JwtError)> = vec![
        (
            "alg none",
            format!("{}.{p}.", header(json!({"alg": "none", "kid": "rsa-1"}))),
            JwtError::AlgNone,
        ),
        (
            "alg None",
            format!("{}.{p}.", header(json!({"alg": "None"}))),
            JwtError::AlgNone,
        ),
        (
            "alg NONE",
            format!("{}.{p}.", header(json!({"alg": "NONE"}))),
            JwtError::AlgNone,
        ),
        (
            "alg nOnE, with a signature",
            format!("{}.{p}.{gs}", header(json!({"alg": "nOnE"}))),
            JwtError::AlgNone,
        ),
        (
            "HS256 signed with the RSA public key as secret (not allowed)",
            confused.token("HS256", &claims),
            JwtError::AlgNotAllowed {
                alg: Algorithm::Hs256,
                allowed: AlgorithmSet::empty()
                    .with(Algorithm::Rs256)
                    .with(Algorithm::Ps256)
                    .with(Algorithm::Es256),
            },
        ),
        (
            "stripped signature",
            format!("{gh}.{gp}."),
            JwtError::MissingSignature,
        ),
        (
            "signature and its dot stripped",
            format!("{gh}.{gp}"),
            JwtError::Malformed(Malformed::Parts { found: 2 }),
        ),
        (
            "JWE-shaped",
            format!("{gh}.{gp}.{gs}.a.b"),
            JwtError::Malformed(Malformed::Parts { found: 5 }),
        ),
        (
            "signature of another payload",
            format!(
                "{gh}.{}.{gs}",
                payload(&with(json!({"sub": "admin@svc"})))
            ),
            JwtError::BadSignature {
                alg: Algorithm::Rs256,
                kid: kid("rsa-1"),
            },
        ),
        (
            "signed by another key under a known kid",
            TestKey::es256("ec-1").token("ES256", &claims),
            JwtError::BadSignature {
                alg: Algorithm::Es256,
                kid: kid("ec-1"),
            },
        ),
        (
            "expired",
            t.rsa.token("RS256", &with(json!({"exp": now - 61}))),
            JwtError::Expired {
                exp: UnixTime::from_secs(now - 61),
                now: NOW,
                leeway: 60,
            },
        ),
        (
            "not yet valid",
            t.rsa.token("RS256", &with(json!({"nbf": now + 61}))),
            JwtError::NotYetValid {
                nbf: UnixTime::from_secs(now + 61),
                now: NOW,
                leeway: 60,
            },
        ),
        (
            "issued in the future",
            t.rsa.token("RS256", &with(json!({"iat": now + 61}))),
            JwtError::IssuedInFuture {
                iat: UnixTime::from_secs(now + 61),
                now: NOW,
                leeway: 60,
            },
        ),
        (
            "wrong audience",
            t.rsa.token("RS256", &with(json!({"aud": "ledger-api"}))),
            JwtError::WrongAudience {
                expected: AUDIENCE.into(),
            },
        ),
        (
            "wrong audience, in an array",
            t.rsa
                .token("RS256", &with(json!({"aud": ["ledger-api", "payments"]}))),
            JwtError::WrongAudience {
                expected: AUDIENCE.into(),
            },
        ),
        (
            "no audience",
            t.rsa.token("RS256", &with(json!({"aud": null}))),
            JwtError::MissingClaim { claim: "aud" },
        ),
        (
            "wrong issuer",
            t.rsa
                .token("RS256", &with(json!({"iss": "https://evil.test"}))),
            JwtError::WrongIssuer {
                expected: ISSUER.into(),
                found: Shown::new("https://evil.test"),
            },
        ),
        (
            "issuer with a trailing slash",
            t.rsa
                .token("RS256", &with(json!({"iss": "https://issuer.test/"}))),
            JwtError::WrongIssuer {
                expected: ISSUER.into(),
                found: Shown::new("https://issuer.test/"),
            },
        ),
        (
            "no expiry",
            t.rsa.token("RS256", &with(json!({"exp": null}))),
            JwtError::MissingClaim { claim: "exp" },
        ),
        (
            "expiry as a string",
            t.rsa.token("RS256", &with(json!({"exp": "2099-01-01"}))),
            JwtError::BadClaim {
                claim: "exp",
                why: "is not a NumericDate (seconds since the epoch)",
            },
        ),
        (
            "unknown kid",
            t.rsa.sign("RS256", json!({"kid": "rsa-2"}), &claims),
            JwtError::UnknownKid { kid: kid("rsa-2") },
        ),
        (
            "kid with path traversal",
            t.rsa.sign("RS256", json!({"kid": "../../dev/null"}), &claims),
            JwtError::UnknownKid {
                kid: kid("../../dev/null"),
            },
        ),
        (
            "kid with a NUL",
            t.rsa.sign("RS256", json!({"kid": "rsa-1\u{0}"}), &claims),
            JwtError::Malformed(Malformed::Header {
                field: "kid",
                why: "is not 1 to 256 printable ASCII characters",
            }),
        ),
        (
            "kid that is not a string",
            t.rsa.sign("RS256", json!({"kid": 1}), &claims),
            JwtError::Malformed(Malformed::Header {
                field: "kid",
                why: "is not a string",
            }),
        ),
        (
            "no kid, two keys",
            t.rsa
                .sign_parts("RS256", &header(json!({"alg": "RS256"})), &p),
            JwtError::MissingKid { keys: 2 },
        ),
        (
            "jku injection",
            t.rsa.sign(
                "RS256",
                json!({"jku": "https://evil.test/jwks.json"}),
                &claims,
            ),
            JwtError::KeyInHeader { name: "jku" },
        ),
        (
            "x5u injection",
            t.rsa
                .sign("RS256", json!({"x5u": "https://evil.test/cert.pem"}), &claims),
            JwtError::KeyInHeader { name: "x5u" },
        ),
        (
            "embedded jwk",
            t.ec.sign("ES256", json!({"jwk": t.ec.public}), &claims),
            JwtError::KeyInHeader { name: "jwk" },
        ),
        (
            "embedded x5c",
            t.rsa.sign("RS256", json!({"x5c": ["MIIB"]}), &claims),
            JwtError::KeyInHeader { name: "x5c" },
        ),
        (
            "crit extension",
            t.rsa
                .sign("RS256", json!({"crit": ["exp"], "exp": 1}), &claims),
            JwtError::UnsupportedCritical,
        ),
        (
            "unencoded payload",
            t.rsa.sign("RS256", json!({"b64": false}), &claims),
            JwtError::UnsupportedHeader { name: "b64" },
        ),
        (
            "nested JWT",
            t.rsa.sign("RS256", json!({"cty": "JWT"}), &claims),
            JwtError::UnsupportedHeader { name: "cty" },
        ),
        (
            "oversized",
            big.clone(),
            JwtError::TooLarge {
                len: big.len(),
                max: DEFAULT_MAX_TOKEN_BYTES,
            },
        ),
        (
            "padded header",
            format!("{gh}=.{gp}.{gs}"),
            JwtError::Malformed(Malformed::Base64 { part: Part::Header }),
        ),
        (
            "padded payload",
            format!("{gh}.{}.{gs}", padded(&gp)),
            JwtError::Malformed(Malformed::Base64 {
                part: Part::Payload,
            }),
        ),
        (
            "padded signature",
            format!("{gh}.{gp}.{}", padded(&gs)),
            JwtError::Malformed(Malformed::Base64 {
                part: Part::Signature,
            }),
        ),
        (
            "standard base64 in the payload",
            format!("{gh}.{}.{gs}", gp.replace('-', "+").replace('_', "/") + "+"),
            JwtError::Malformed(Malformed::Base64 {
                part: Part::Payload,
            }),
        ),
        (
            "whitespace in the signature",
            format!("{gh}.{gp}.{} {}", &gs[..10], &gs[10..]),
            JwtError::Malformed(Malformed::Base64 {
                part: Part::Signature,
            }),
        ),
        (
            "non-zero trailing bits in the payload",
            format!("{gh}.AB.{gs}"),
            JwtError::Malformed(Malformed::Base64 {
                part: Part::Payload,
            }),
        ),
        (
            "header is not JSON",
            format!("{}.{gp}.{gs}", b64(b"{\"alg\":\"RS256\"")),
            JwtError::Malformed(Malformed::Json {
                part: Part::Header,
                why: JsonWhy::Syntax { line: 1, column: 14 },
            }),
        ),
        (
            "duplicate alg in the header",
            format!(
                "{}.{gp}.{gs}",
                b64(br#"{"alg":"RS256","kid":"rsa-1","alg":"none"}"#)
            ),
            JwtError::Malformed(Malformed::Json {
                part: Part::Header,
                why: JsonWhy::DuplicateName,
            }),
        ),
        (
            "duplicate claim",
            t.rsa.sign_parts(
                "RS256",
                &gh,
                &b64(format!(
                    "{{\"iss\":\"{ISSUER}\",\"aud\":\"{AUDIENCE}\",\"exp\":{},\"sub\":\"a\",\"sub\":\"admin\"}}",
                    now + 60
                )
                .as_bytes()),
            ),
            JwtError::Malformed(Malformed::Json {
                part: Part::Payload,
                why: JsonWhy::DuplicateName,
            }),
        ),
        (
            "duplicate nested claim",
            t.rsa.sign_parts(
                "RS256",
                &gh,
                &b64(br#"{"realm":{"role":"user","role":"admin"}}"#),
            ),
            JwtError::Malformed(Malformed::Json {
                part: Part::Payload,
                why: JsonWhy::DuplicateName,
            }),
        ),
        (
            "deeply nested claims",
            t.rsa.sign_parts(
                "RS256",
                &gh,
                &b64(format!("{{\"a\":{}1{}}}", "[".repeat(40), "]".repeat(40)).as_bytes()),
            ),
            JwtError::Malformed(Malformed::Json {
                part: Part::Payload,
                why: JsonWhy::TooDeep,
            }),
        ),
        (
            "claims are not an object",
            t.rsa.sign_parts("RS256", &gh, &b64(b"[1,2]")),
            JwtError::Malformed(Malformed::Json {
                part: Part::Payload,
                why: JsonWhy::NotObject,
            }),
        ),
        (
            "lifetime over maxLifetime",
            t.rsa
                .token("RS256", &with(json!({"iat": now - 11, "exp": now + 3590}))),
            JwtError::LifetimeTooLong {
                lifetime: 3601,
                max: 3600,
            },
        ),
        (
            "no iat with maxLifetime",
            t.rsa.token("RS256", &with(json!({"iat": null}))),
            JwtError::MissingClaim { claim: "iat" },
        ),
        (
            "algorithm not allowed",
            t.rsa.token("RS384", &claims),
            JwtError::AlgNotAllowed {
                alg: Algorithm::Rs384,
                allowed: AlgorithmSet::empty()
                    .with(Algorithm::Rs256)
                    .with(Algorithm::Ps256)
                    .with(Algorithm::Es256),
            },
        ),
        (
            "algorithm not supported",
            format!("{}.{gp}.{gs}", header(json!({"alg": "ES512", "kid": "ec-1"}))),
            JwtError::UnsupportedAlg {
                alg: Shown::new("ES512"),
            },
        ),
        (
            "algorithm names are case-sensitive",
            format!("{}.{gp}.{gs}", header(json!({"alg": "rs256", "kid": "rsa-1"}))),
            JwtError::UnsupportedAlg {
                alg: Shown::new("rs256"),
            },
        ),
        (
            "EC key named by an RSA token",
            t.rsa.sign("RS256", json!({"kid": "ec-1"}), &claims),
            JwtError::KeyTypeMismatch {
                kid: kid("ec-1"),
                kind: KeyKind::EcP256,
                alg: Algorithm::Rs256,
            },
        ),
    ];
    let mut failures = Vec::new();
    for (name, token, want) in cases {
        let got = t.verifier.verify(&token, NOW);
        match got {
            Err(e) if e == want => {
                // Every one is an invalid token: 401 with RFC 6750's `invalid_token` challenge.
                let failure = Failure {
                    credential: "sso".into(),
                    kind: CredentialKind::Jwt,
                    rule: "r".into(),
                    error: e.into(),
                };
                let challenge = failure.www_authenticate().unwrap_or_default();
                if failure.status() != 401
                    || !challenge.starts_with(r#"Bearer realm="sso", error="invalid_token""#)
                {
                    failures.push(format!(
                        "{name}: answered {} with challenge `{challenge}`, want 401 and \
                         `invalid_token`",
                        failure.status()
                    ));
                }
            }
            other => failures.push(format!("{name}: want {want:?}, got {other:?}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn hs_rs_confusion_is_refused_even_with_hs256_allowed() {
    // A careless allow-list with HS256 on a JWKS credential (the policy refuses it, see
    // policy::tests::credentials): the RSA key cannot serve as an HMAC secret.
    let rsa = TestKey::rsa("rsa-1");
    let v = verifier(public_set(&[&rsa]), &[Algorithm::Rs256, Algorithm::Hs256]);
    for secret in [
        rsa.public.to_string().into_bytes(),
        B64.decode(rsa.public["n"].as_str().unwrap()).unwrap(),
    ] {
        let forged = TestKey::hmac("rsa-1", &secret).token("HS256", &good_claims());
        assert_eq!(
            v.verify(&forged, NOW).unwrap_err(),
            JwtError::KeyTypeMismatch {
                kid: Kid::of(Some("rsa-1")),
                kind: KeyKind::Rsa,
                alg: Algorithm::Hs256,
            }
        );
    }
    // And an HMAC secret set holds no public key to confuse.
    let hs = TestKey::hmac("hs-1", &[7; 32]);
    let v = verifier(secret_set(&[&hs]), &[Algorithm::Hs256, Algorithm::Rs256]);
    let rs = TestKey::rsa("hs-1").token("RS256", &good_claims());
    assert_eq!(
        v.verify(&rs, NOW).unwrap_err(),
        JwtError::KeyTypeMismatch {
            kid: Kid::of(Some("hs-1")),
            kind: KeyKind::Hmac,
            alg: Algorithm::Rs256,
        }
    );
}

#[test]
fn a_key_is_used_only_for_its_own_alg() {
    let rsa = TestKey::rsa("rsa-1");
    let mut jwk = rsa.public.clone();
    jwk["alg"] = json!("RS256");
    let set = KeySet::from_jwks(json!({"keys": [jwk]}).to_string().as_bytes()).unwrap();
    let v = verifier(set, &[Algorithm::Rs256, Algorithm::Ps256]);
    assert!(v.verify(&rsa.token("RS256", &good_claims()), NOW).is_ok());
    assert_eq!(
        v.verify(&rsa.token("PS256", &good_claims()), NOW)
            .unwrap_err(),
        JwtError::KeyAlgMismatch {
            kid: Kid::of(Some("rsa-1")),
            key_alg: Algorithm::Rs256,
            alg: Algorithm::Ps256,
        }
    );
}

#[test]
fn a_token_without_kid_uses_a_single_key() {
    let ec = TestKey::es256("ec-1");
    let v = verifier(public_set(&[&ec]), &[Algorithm::Es256]);
    let token = ec.sign_parts(
        "ES256",
        &header(json!({"alg": "ES256"})),
        &payload(&good_claims()),
    );
    assert!(v.verify(&token, NOW).is_ok());
}

#[test]
fn bearer_headers() {
    let t = target();
    let token = t.rsa.token("RS256", &good_claims());
    let ok = format!("Bearer {token}");
    let lower = format!("bearer   {token}  ");
    let one = [("authorization", ok.as_str())];
    let spaced = [("Authorization", lower.as_str())];
    let twice = [
        ("authorization", ok.as_str()),
        ("Authorization", ok.as_str()),
    ];
    let cases: Vec<BearerCase> = vec![
        (&[], Err(JwtError::Missing)),
        (&one, Ok(&token)),
        (&spaced, Ok(&token)),
        (
            &[("authorization", "Basic dXNlcjpwYXNz")],
            Err(JwtError::Missing),
        ),
        (&[("authorization", "Bearer")], Err(JwtError::Missing)),
        (&[("authorization", "Bearer ")], Err(JwtError::Missing)),
        (&twice, Err(JwtError::Repeated)),
        (
            &[("authorization", "Bearer jé.x.y")],
            Err(JwtError::Malformed(Malformed::Characters)),
        ),
    ];
    for (headers, want) in cases {
        assert_eq!(
            bearer(headers, DEFAULT_MAX_TOKEN_BYTES),
            want,
            "{headers:?}"
        );
    }
    let long = format!("Bearer {}", "a".repeat(9000));
    assert_eq!(
        bearer(&[("authorization", long.as_str())][..], 8192),
        Err(JwtError::TooLarge {
            len: 9000,
            max: 8192
        })
    );
    let v = &t.verifier;
    let headers = [("authorization", ok.as_str())];
    assert!(v.verify_request(&headers[..], NOW).is_ok());
}
