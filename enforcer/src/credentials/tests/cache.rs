//! The verified-token cache: hits skip verification, and nothing stale is ever served.

use std::sync::Arc;

use super::*;

fn cached_verifier(keys: Keys) -> JwtVerifier {
    let config = JwtConfig::new(
        ISSUER,
        AUDIENCE,
        AlgorithmSet::empty().with(Algorithm::Es256),
    );
    JwtVerifier::with_cache(config, keys, 64)
}

#[test]
fn a_repeated_token_is_served_from_the_cache_and_still_expires() {
    let key = TestKey::es256("ec-1");
    let v = cached_verifier(Keys::Static(Arc::new(public_set(&[&key]))));
    let token = key.token("ES256", &good_claims());
    let first = v.verify(&token, NOW).unwrap();
    assert_eq!(v.cached(), 1);
    let again = v.verify(&token, NOW).unwrap();
    assert!(Arc::ptr_eq(&first, &again), "the second use is a cache hit");
    // Time checks run on hits: past exp + leeway the cached token is refused, and dropped.
    let late = UnixTime::from_secs(first.expires.as_secs() + 60);
    assert_eq!(
        v.verify(&token, late).unwrap_err(),
        JwtError::Expired {
            exp: first.expires,
            now: late,
            leeway: 60
        }
    );
    assert_eq!(v.cached(), 0);
    // Failures are not cached; a tampered copy of a cached token is verified, and refused.
    let fresh = v.verify(&token, NOW).unwrap();
    let mut tampered = token.clone();
    tampered.push('A');
    assert!(matches!(
        v.verify(&tampered, NOW),
        Err(JwtError::Malformed(_) | JwtError::BadSignature { .. })
    ));
    assert_eq!(v.cached(), 1);
    assert_eq!(fresh.subject, first.subject);
}

#[test]
fn a_changed_key_set_misses_every_entry() {
    let dir = scratch("cache-keys");
    let path = dir.0.join("jwks.json");
    let key = TestKey::es256("ec-1");
    write_jwks(&path, &[&key]);
    let (file, _) = JwksFile::open(&path);
    let file = Arc::new(file);
    let creds = Credentials::new(vec![Credential::new(
        "sso",
        Verifier::Jwt(cached_verifier(Keys::File(file.clone()))),
    )]);
    let Verifier::Jwt(v) = creds.get("sso").unwrap().verifier() else {
        unreachable!()
    };
    let token = key.token("ES256", &good_claims());
    v.verify(&token, NOW).unwrap();
    assert_eq!(v.cached(), 1);
    // The issuer rotates its key: the old token no longer verifies, cached or not.
    let next = TestKey::es256("ec-1");
    write_jwks(&path, &[&next]);
    let refreshed = creds.refresh_if_changed();
    assert!(matches!(
        refreshed[..],
        [KeyRefresh {
            outcome: Refresh::Loaded { keys: 1, .. },
            ..
        }]
    ));
    assert_eq!(v.cached(), 0);
    assert_eq!(
        v.verify(&token, NOW).unwrap_err(),
        JwtError::BadSignature {
            alg: Algorithm::Es256,
            kid: Kid::of(Some("ec-1"))
        }
    );
}

#[test]
fn the_cache_is_bounded() {
    let key = TestKey::ed25519("ed-1");
    let config = JwtConfig::new(
        ISSUER,
        AUDIENCE,
        AlgorithmSet::empty().with(Algorithm::EdDsa),
    );
    let v = JwtVerifier::with_cache(config, Keys::Static(Arc::new(public_set(&[&key]))), 32);
    for i in 0..500 {
        let mut c = good_claims();
        c["jti"] = json!(i);
        v.verify(&key.token("EdDSA", &c), NOW).unwrap();
        assert!(v.cached() <= 32, "{} entries", v.cached());
    }
}

/// A directory removed when dropped.
pub(crate) struct Scratch(pub std::path::PathBuf);

pub(crate) fn scratch(name: &str) -> Scratch {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "enforcer-credentials-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Replace a JWKS file atomically, as a fetcher should.
pub(crate) fn write_jwks(path: &std::path::Path, keys: &[&TestKey]) {
    let set = json!({"keys": keys.iter().map(|k| k.public.clone()).collect::<Vec<_>>()});
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, set.to_string()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
