//! JSON Web Tokens (RFC 7519) presented as `Authorization: Bearer` (RFC 6750 §2.1): the JWS is
//! verified (`jws.rs`), then its claims.
//!
//! Claims checked, all in whole seconds with the credential's leeway (default 60 s) for clock
//! skew:
//! - `iss` equals the credential's issuer; `aud` (a string, or an array of strings) contains
//!   its audience. Both are required, so a token minted for another service or by another
//!   issuer is never accepted.
//! - `exp` is required; the token is refused from `exp + leeway` on. `nbf`, if given, must be at
//!   most `now + leeway`; `iat`, if given, too (a token issued in the future is refused).
//! - With `maxLifetime`, `iat` is required and `exp - iat` may not exceed it: a token minted to
//!   live longer than policy allows is refused even while otherwise valid.
//! - `scope` (space-separated) or `scp` (an array or a space-separated string) give the scopes;
//!   a token with both is refused as ambiguous. A NumericDate with a fraction is rounded
//!   towards refusing (`exp` down, `nbf` and `iat` up).
//!
//! Verified tokens are cached ([`TokenCache`]) by SHA-256 of the token, so a repeated token costs
//! a hash and a lookup instead of a signature verification; the time checks run on every use.

use std::{fmt, sync::Arc};

use serde_json::{Map, Value};

use super::{
    ClaimValue, Shown, TokenClaim,
    cache::TokenCache,
    json::JsonWhy,
    jwk::{JwkError, KeyKind, KeySet},
    jwks_file::JwksFile,
    jws::{Algorithm, AlgorithmSet, VerifiedJws, verify_jws},
    time::UnixTime,
};
use crate::policy::Headers;

/// Default clock-skew allowance, in seconds: what most verifiers use (and RFC 7519 leaves open).
pub const DEFAULT_LEEWAY_SECS: i64 = 60;
/// Default largest token, in bytes: access tokens with a few dozen claims are 1 to 2 KiB;
/// 8 KiB is nginx's default header buffer, so anything larger is abuse or a mistake.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Default verified tokens kept per credential. At about 300 bytes each, 10 000 entries are
/// about 3 MiB, and cover the distinct tokens a host's callers present within their lifetime.
pub const DEFAULT_CACHE_ENTRIES: usize = 10_000;

/// Why a bearer token was refused. Carries the facts (times, algorithm, key id, limits), never
/// the token or key material; text taken from the token is sanitized ([`Shown`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("no bearer token")]
    Missing,
    #[error("more than one Authorization header")]
    Repeated,
    #[error("token of {len} bytes, over the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("malformed token: {0}")]
    Malformed(Malformed),
    #[error("`alg: none` is never accepted")]
    AlgNone,
    #[error("algorithm `{alg}` is not supported")]
    UnsupportedAlg { alg: Shown },
    #[error("algorithm {alg} is not allowed (allowed: {allowed})")]
    AlgNotAllowed {
        alg: Algorithm,
        allowed: AlgorithmSet,
    },
    #[error("header `{name}` is refused: keys come from the configuration, never from the token")]
    KeyInHeader { name: &'static str },
    #[error("header `crit` names extensions this agent does not implement")]
    UnsupportedCritical,
    #[error("header `{name}` is not supported")]
    UnsupportedHeader { name: &'static str },
    #[error("unknown key id {kid}")]
    UnknownKid { kid: Kid },
    #[error("key {kid} cannot be used: {why}")]
    UnusableKey { kid: Kid, why: JwkError },
    #[error("the token names no key (`kid`), and the key set has {keys} keys")]
    MissingKid { keys: usize },
    #[error("key {kid} is for {key_alg}, not {alg}")]
    KeyAlgMismatch {
        kid: Kid,
        key_alg: Algorithm,
        alg: Algorithm,
    },
    #[error("key {kid} is a {kind} key, which cannot verify {alg}")]
    KeyTypeMismatch {
        kid: Kid,
        kind: KeyKind,
        alg: Algorithm,
    },
    #[error("key {kid} is {bytes} bytes, too short for {alg}")]
    KeyTooShort {
        kid: Kid,
        bytes: usize,
        alg: Algorithm,
    },
    #[error("no signature")]
    MissingSignature,
    #[error("{alg} signature does not verify with key {kid}")]
    BadSignature { alg: Algorithm, kid: Kid },
    #[error("verification keys are unavailable: {why}")]
    KeysUnavailable { why: Arc<str> },
    #[error("claim `{claim}` is missing")]
    MissingClaim { claim: &'static str },
    #[error("claim `{claim}` {why}")]
    BadClaim {
        claim: &'static str,
        why: &'static str,
    },
    #[error("expired at {exp} (now {now}, leeway {leeway}s)")]
    Expired {
        exp: UnixTime,
        now: UnixTime,
        leeway: i64,
    },
    #[error("not valid before {nbf} (now {now}, leeway {leeway}s)")]
    NotYetValid {
        nbf: UnixTime,
        now: UnixTime,
        leeway: i64,
    },
    #[error("issued in the future, at {iat} (now {now}, leeway {leeway}s)")]
    IssuedInFuture {
        iat: UnixTime,
        now: UnixTime,
        leeway: i64,
    },
    #[error("lifetime of {lifetime}s (exp - iat) exceeds the maximum of {max}s")]
    LifetimeTooLong { lifetime: i64, max: i64 },
    #[error("issuer `{found}` is not `{expected}`")]
    WrongIssuer { expected: Arc<str>, found: Shown },
    #[error("audience does not include `{expected}`")]
    WrongAudience { expected: Arc<str> },
}

/// How a token is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("not ASCII")]
    Characters,
    #[error("{found} dot-separated parts instead of 3")]
    Parts { found: usize },
    #[error("the {part} is not unpadded, canonical base64url")]
    Base64 { part: Part },
    #[error("the {part} is {why}")]
    Json { part: Part, why: JsonWhy },
    #[error("header `{field}` {why}")]
    Header {
        field: &'static str,
        why: &'static str,
    },
}

/// A part of a compact JWS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Header,
    Payload,
    Signature,
}

/// A key id for messages: sanitized, or `no kid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kid(Option<Shown>);

/// What a JWT credential accepts.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// `iss` must equal it.
    pub issuer: Arc<str>,
    /// `aud` must contain it.
    pub audience: Arc<str>,
    pub algorithms: AlgorithmSet,
    /// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds.
    pub leeway: i64,
    /// Largest `exp - iat` accepted, in seconds; `iat` is then required.
    pub max_lifetime: Option<i64>,
    pub max_token_bytes: usize,
    /// Claims kept with a verified token, for rules' `claims` constraints.
    pub kept_claims: Box<[Box<str>]>,
}

/// Where a JWT credential's keys come from.
#[derive(Debug, Clone)]
pub enum Keys {
    /// Fixed for the life of the policy: HMAC secrets from a secret file, or a set given in code.
    Static(Arc<KeySet>),
    /// A JWKS file, reloaded when it changes ([`JwksFile::refresh_if_changed`]).
    File(Arc<JwksFile>),
    /// A JWKS fetched over HTTPS by a refresher task ([`super::Refreshers::add_jwks`]).
    Url(Arc<super::jwks_url::JwksUrl>),
}

/// Verifies bearer tokens for one credential.
#[derive(Debug)]
pub struct JwtVerifier {
    config: JwtConfig,
    keys: Keys,
    cache: Option<TokenCache>,
}

/// A token whose signature and static claims verified: what rules and the proxy may use. The
/// time checks are done again on every use ([`JwtVerifier::verify`]).
#[derive(Debug)]
pub struct VerifiedJwt {
    pub alg: Algorithm,
    pub kid: Option<Box<str>>,
    /// `sub`.
    pub subject: Option<Arc<str>>,
    pub expires: UnixTime,
    pub not_before: Option<UnixTime>,
    pub issued_at: Option<UnixTime>,
    scopes: Box<[Box<str>]>,
    claims: Box<[(Box<str>, TokenClaim)]>,
}

// === impl JwtConfig ===

impl JwtConfig {
    /// A configuration with the default leeway, size limit, no lifetime bound, and no claims
    /// kept.
    pub fn new(issuer: &str, audience: &str, algorithms: AlgorithmSet) -> Self {
        Self {
            issuer: issuer.into(),
            audience: audience.into(),
            algorithms,
            leeway: DEFAULT_LEEWAY_SECS,
            max_lifetime: None,
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            kept_claims: Box::default(),
        }
    }
}

// === impl Keys ===

impl Keys {
    /// The keys now in force, and their generation (which changes with them).
    fn current(&self) -> Result<(Arc<KeySet>, u64), JwtError> {
        match self {
            Keys::Static(set) => Ok((set.clone(), 0)),
            Keys::File(file) => file.current(),
            Keys::Url(url) => url.current(),
        }
    }
}

// === impl JwtVerifier ===

impl JwtVerifier {
    /// A verifier with a cache of [`DEFAULT_CACHE_ENTRIES`] verified tokens.
    pub fn new(config: JwtConfig, keys: Keys) -> Self {
        Self::with_cache(config, keys, DEFAULT_CACHE_ENTRIES)
    }

    /// A verifier caching up to `entries` verified tokens; 0 for none.
    pub fn with_cache(config: JwtConfig, keys: Keys, entries: usize) -> Self {
        Self {
            config,
            keys,
            cache: (entries > 0).then(|| TokenCache::new(entries)),
        }
    }

    pub fn config(&self) -> &JwtConfig {
        &self.config
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Verify a token (the part after `Bearer `) as of `now`.
    pub fn verify(&self, token: &str, now: UnixTime) -> Result<Arc<VerifiedJwt>, JwtError> {
        let max = self.config.max_token_bytes;
        if token.len() > max {
            return Err(JwtError::TooLarge {
                len: token.len(),
                max,
            });
        }
        let (keys, generation) = self.keys.current()?;
        let digest = self.cache.as_ref().map(|_| TokenCache::digest(token));
        if let (Some(cache), Some(digest)) = (&self.cache, &digest)
            && let Some(hit) = cache.get(digest, generation, now)
        {
            self.check_time(&hit, now)?;
            return Ok(hit);
        }
        let jws = verify_jws(token, &keys, self.config.algorithms, max)?;
        let verified = Arc::new(self.claims(jws)?);
        self.check_time(&verified, now)?;
        if let (Some(cache), Some(digest)) = (&self.cache, digest) {
            let until = verified.expires.saturating_add(self.config.leeway);
            cache.insert(digest, generation, until, now, verified.clone());
        }
        Ok(verified)
    }

    /// Verify the bearer token of a request.
    pub fn verify_request<H: Headers + ?Sized>(
        &self,
        headers: &H,
        now: UnixTime,
    ) -> Result<Arc<VerifiedJwt>, JwtError> {
        self.verify(bearer(headers, self.config.max_token_bytes)?, now)
    }

    /// Entries in the verified-token cache (for metrics and tests).
    pub fn cached(&self) -> usize {
        self.cache.as_ref().map_or(0, TokenCache::len)
    }

    /// The checks that do not depend on the time: issuer, audience, claim types, lifetime.
    fn claims(&self, jws: VerifiedJws) -> Result<VerifiedJwt, JwtError> {
        let claims = super::json::object(&jws.payload).map_err(|why| {
            JwtError::Malformed(Malformed::Json {
                part: Part::Payload,
                why,
            })
        })?;
        let c = &self.config;
        match claims.get("iss") {
            None => return Err(JwtError::MissingClaim { claim: "iss" }),
            Some(Value::String(iss)) if **iss == *c.issuer => {}
            Some(Value::String(iss)) => {
                return Err(JwtError::WrongIssuer {
                    expected: c.issuer.clone(),
                    found: Shown::new(iss),
                });
            }
            Some(_) => return Err(not_string("iss")),
        }
        let audience_ok = match claims.get("aud") {
            None => return Err(JwtError::MissingClaim { claim: "aud" }),
            Some(Value::String(aud)) => **aud == *c.audience,
            Some(Value::Array(auds)) => {
                let mut found = false;
                for a in auds {
                    match a {
                        Value::String(a) => found |= **a == *c.audience,
                        _ => {
                            return Err(JwtError::BadClaim {
                                claim: "aud",
                                why: "is not a string or an array of strings",
                            });
                        }
                    }
                }
                found
            }
            Some(_) => {
                return Err(JwtError::BadClaim {
                    claim: "aud",
                    why: "is not a string or an array of strings",
                });
            }
        };
        if !audience_ok {
            return Err(JwtError::WrongAudience {
                expected: c.audience.clone(),
            });
        }
        let expires = numeric_date(&claims, "exp", Round::Down)?
            .ok_or(JwtError::MissingClaim { claim: "exp" })?;
        let not_before = numeric_date(&claims, "nbf", Round::Up)?;
        let issued_at = numeric_date(&claims, "iat", Round::Up)?;
        if let Some(max) = c.max_lifetime {
            let iat = issued_at.ok_or(JwtError::MissingClaim { claim: "iat" })?;
            let lifetime = expires.as_secs().saturating_sub(iat.as_secs());
            if lifetime > max {
                return Err(JwtError::LifetimeTooLong { lifetime, max });
            }
        }
        let subject = match claims.get("sub") {
            None => None,
            Some(Value::String(s)) => Some(Arc::from(s.as_str())),
            Some(_) => return Err(not_string("sub")),
        };
        let scopes = scopes(&claims)?;
        let kept = c
            .kept_claims
            .iter()
            .filter_map(|name| Some((name.clone(), TokenClaim::of(claims.get(&**name)?))))
            .collect();
        Ok(VerifiedJwt {
            alg: jws.alg,
            kid: jws.kid,
            subject,
            expires,
            not_before,
            issued_at,
            scopes,
            claims: kept,
        })
    }

    fn check_time(&self, v: &VerifiedJwt, now: UnixTime) -> Result<(), JwtError> {
        let leeway = self.config.leeway;
        if now >= v.expires.saturating_add(leeway) {
            return Err(JwtError::Expired {
                exp: v.expires,
                now,
                leeway,
            });
        }
        if let Some(nbf) = v.not_before
            && nbf > now.saturating_add(leeway)
        {
            return Err(JwtError::NotYetValid { nbf, now, leeway });
        }
        if let Some(iat) = v.issued_at
            && iat > now.saturating_add(leeway)
        {
            return Err(JwtError::IssuedInFuture { iat, now, leeway });
        }
        Ok(())
    }

    /// Forget every cached token (the keys changed).
    pub(crate) fn clear_cache(&self) {
        if let Some(cache) = &self.cache {
            cache.clear();
        }
    }
}

fn not_string(claim: &'static str) -> JwtError {
    JwtError::BadClaim {
        claim,
        why: "is not a string",
    }
}

#[derive(Clone, Copy)]
enum Round {
    Down,
    Up,
}

/// A NumericDate claim (RFC 7519 §2), in whole seconds.
fn numeric_date(
    claims: &Map<String, Value>,
    claim: &'static str,
    round: Round,
) -> Result<Option<UnixTime>, JwtError> {
    let Some(v) = claims.get(claim) else {
        return Ok(None);
    };
    let bad = JwtError::BadClaim {
        claim,
        why: "is not a NumericDate (seconds since the epoch)",
    };
    let Value::Number(n) = v else {
        return Err(bad);
    };
    if let Some(i) = n.as_i64() {
        return Ok(Some(UnixTime::from_secs(i)));
    }
    let f = n.as_f64().ok_or(bad.clone())?;
    let f = match round {
        Round::Down => f.floor(),
        Round::Up => f.ceil(),
    };
    // Beyond ±2^62 seconds is no date; the cast would saturate anyway.
    if !f.is_finite() || f.abs() > 4.6e18 {
        return Err(bad);
    }
    Ok(Some(UnixTime::from_secs(f as i64)))
}

fn scopes(claims: &Map<String, Value>) -> Result<Box<[Box<str>]>, JwtError> {
    let split = |s: &str| {
        s.split(' ')
            .filter(|s| !s.is_empty())
            .map(Box::from)
            .collect()
    };
    match (claims.get("scope"), claims.get("scp")) {
        (None, None) => Ok(Box::default()),
        (Some(_), Some(_)) => Err(JwtError::BadClaim {
            claim: "scope",
            why: "and `scp` are both present",
        }),
        (Some(Value::String(s)), None) => Ok(split(s)),
        (Some(_), None) => Err(not_string("scope")),
        (None, Some(Value::String(s))) => Ok(split(s)),
        (None, Some(Value::Array(a))) => a
            .iter()
            .map(|s| match s {
                Value::String(s) => Ok(Box::from(s.as_str())),
                _ => Err(JwtError::BadClaim {
                    claim: "scp",
                    why: "is not a string or an array of strings",
                }),
            })
            .collect(),
        (None, Some(_)) => Err(JwtError::BadClaim {
            claim: "scp",
            why: "is not a string or an array of strings",
        }),
    }
}

/// The token of the request's single `Authorization: Bearer` header (RFC 6750 §2.1; the scheme
/// is case-insensitive). No header, or another scheme, is `Missing`; two headers are
/// `Repeated`, since a proxy and an upstream could read different ones. Tokens in the query
/// (RFC 6750 §2.3) are not read: they end up in logs.
pub fn bearer<H: Headers + ?Sized>(headers: &H, max_bytes: usize) -> Result<&str, JwtError> {
    let mut found = None;
    for (name, value) in headers.pairs() {
        if name.eq_ignore_ascii_case("authorization") {
            if found.is_some() {
                return Err(JwtError::Repeated);
            }
            found = Some(value);
        }
    }
    let value = trim(found.ok_or(JwtError::Missing)?);
    let split = value
        .iter()
        .position(|&b| b == b' ' || b == b'\t')
        .unwrap_or(value.len());
    let (scheme, rest) = value.split_at(split);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Err(JwtError::Missing);
    }
    let token = trim(rest);
    if token.is_empty() {
        return Err(JwtError::Missing);
    }
    if token.len() > max_bytes {
        return Err(JwtError::TooLarge {
            len: token.len(),
            max: max_bytes,
        });
    }
    if !token.is_ascii() {
        return Err(JwtError::Malformed(Malformed::Characters));
    }
    std::str::from_utf8(token).map_err(|_| JwtError::Malformed(Malformed::Characters))
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !matches!(b, b' ' | b'\t'));
    let end = v.iter().rposition(|b| !matches!(b, b' ' | b'\t'));
    match (start, end) {
        (Some(s), Some(e)) => &v[s..=e],
        _ => &[],
    }
}

// === impl VerifiedJwt ===

impl VerifiedJwt {
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scopes.iter().map(|s| &**s)
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| **s == *scope)
    }

    /// A kept claim (see [`JwtConfig::kept_claims`]).
    pub(crate) fn claim(&self, name: &str) -> Option<&TokenClaim> {
        self.claims
            .iter()
            .find(|(n, _)| **n == *name)
            .map(|(_, v)| v)
    }

    /// Whether claim `name` is `want`, or is an array holding `want`.
    pub fn claim_matches(&self, name: &str, want: &ClaimValue) -> bool {
        self.claim(name).is_some_and(|c| c.matches(want))
    }
}

// === impl Kid ===

impl Kid {
    pub fn of(kid: Option<&str>) -> Self {
        Self(kid.map(Shown::new))
    }

    pub fn as_str(&self) -> Option<&str> {
        self.0.as_ref().map(Shown::as_str)
    }
}

impl fmt::Display for Kid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(k) => write!(f, "`{k}`"),
            None => f.write_str("without kid"),
        }
    }
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Part::Header => "header",
            Part::Payload => "payload",
            Part::Signature => "signature",
        })
    }
}
