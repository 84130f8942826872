//! JWS compact serialization (RFC 7515 §7.1), verified: `BASE64URL(header) . BASE64URL(payload)
//! . BASE64URL(signature)`, strictly.
//!
//! What is refused, in this order (each with its own [`JwtError`]):
//! 1. a token over the size limit, before anything is decoded;
//! 2. anything but three dot-separated parts (so the JSON serialization and JWE's five parts);
//! 3. a header that is not canonical unpadded base64url of one JSON object without duplicate
//!    names;
//! 4. `alg: none` in any case, an algorithm this agent does not implement, one the credential
//!    does not allow;
//! 5. headers that carry or point at keys (`jku`, `jwk`, `x5u`, `x5c`: keys come from the
//!    credential's configuration only), `crit` (no extension is implemented, so any critical one
//!    is not understood), `b64` and `zip` (not for JWS), `cty: JWT` (nested tokens);
//! 6. a `kid`, `typ` or `cty` that is not a string, a `kid` that is not short printable ASCII;
//! 7. an empty signature, then a payload or signature that is not canonical base64url;
//! 8. a `kid` not in the key set, a key whose type or own `alg` does not fit the algorithm;
//! 9. a signature that does not verify (`ring`).

use std::fmt;

use base64::Engine as _;
use serde_json::Value;

use super::{
    Shown, json,
    jwk::{B64, KeyKind, KeySet, valid_kid},
    jwt::{JwtError, Kid, Malformed, Part},
};

/// A JWS algorithm this agent verifies (RFC 7518 §3). `none` is not one, and never will be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    EdDsa,
    Hs256,
    Hs384,
    Hs512,
}

/// A set of algorithms: a credential's allow-list.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct AlgorithmSet(u16);

/// A JWS whose signature verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedJws {
    pub alg: Algorithm,
    pub kid: Option<Box<str>>,
    pub payload: Vec<u8>,
}

/// Verify a compact JWS with `keys`, accepting only the algorithms in `allowed`, and tokens
/// of at most `max_bytes`. See the module comment for what is refused.
pub fn verify_jws(
    token: &str,
    keys: &KeySet,
    allowed: AlgorithmSet,
    max_bytes: usize,
) -> Result<VerifiedJws, JwtError> {
    if token.len() > max_bytes {
        return Err(JwtError::TooLarge {
            len: token.len(),
            max: max_bytes,
        });
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed(Malformed::Parts {
            found: token.split('.').count(),
        }));
    };
    let header = B64
        .decode(h)
        .map_err(|_| JwtError::Malformed(Malformed::Base64 { part: Part::Header }))?;
    let header = json::object(&header).map_err(|why| {
        JwtError::Malformed(Malformed::Json {
            part: Part::Header,
            why,
        })
    })?;
    let alg = match header.get("alg") {
        Some(Value::String(a)) => a.as_str(),
        Some(_) => return Err(bad_header("alg", "is not a string")),
        None => return Err(bad_header("alg", "is missing")),
    };
    if alg.eq_ignore_ascii_case("none") {
        return Err(JwtError::AlgNone);
    }
    let alg = Algorithm::from_name(alg).ok_or_else(|| JwtError::UnsupportedAlg {
        alg: Shown::new(alg),
    })?;
    if !allowed.contains(alg) {
        return Err(JwtError::AlgNotAllowed { alg, allowed });
    }
    for name in ["jku", "jwk", "x5u", "x5c"] {
        if header.contains_key(name) {
            return Err(JwtError::KeyInHeader { name });
        }
    }
    if header.contains_key("crit") {
        return Err(JwtError::UnsupportedCritical);
    }
    for name in ["b64", "zip"] {
        if header.contains_key(name) {
            return Err(JwtError::UnsupportedHeader { name });
        }
    }
    for name in ["typ", "cty"] {
        match header.get(name) {
            None | Some(Value::String(_)) => {}
            Some(_) => return Err(bad_header(name, "is not a string")),
        }
    }
    if let Some(Value::String(cty)) = header.get("cty")
        && cty.eq_ignore_ascii_case("JWT")
    {
        return Err(JwtError::UnsupportedHeader { name: "cty" });
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) if valid_kid(k) => Some(k.as_str()),
        Some(Value::String(_)) => {
            return Err(bad_header(
                "kid",
                "is not 1 to 256 printable ASCII characters",
            ));
        }
        Some(_) => return Err(bad_header("kid", "is not a string")),
    };
    if s.is_empty() {
        return Err(JwtError::MissingSignature);
    }
    let payload = B64.decode(p).map_err(|_| {
        JwtError::Malformed(Malformed::Base64 {
            part: Part::Payload,
        })
    })?;
    let signature = B64.decode(s).map_err(|_| {
        JwtError::Malformed(Malformed::Base64 {
            part: Part::Signature,
        })
    })?;
    let key = keys.select(kid)?;
    key.check_alg(alg)?;
    let signing_input = &token.as_bytes()[..h.len() + 1 + p.len()];
    key.verify(alg, signing_input, &signature)
        .map_err(|()| JwtError::BadSignature {
            alg,
            kid: Kid::of(kid),
        })?;
    Ok(VerifiedJws {
        alg,
        kid: kid.map(Into::into),
        payload,
    })
}

fn bad_header(field: &'static str, why: &'static str) -> JwtError {
    JwtError::Malformed(Malformed::Header { field, why })
}

// === impl Algorithm ===

impl Algorithm {
    pub const ALL: [Algorithm; 12] = [
        Algorithm::Rs256,
        Algorithm::Rs384,
        Algorithm::Rs512,
        Algorithm::Ps256,
        Algorithm::Ps384,
        Algorithm::Ps512,
        Algorithm::Es256,
        Algorithm::Es384,
        Algorithm::EdDsa,
        Algorithm::Hs256,
        Algorithm::Hs384,
        Algorithm::Hs512,
    ];

    /// The registered name (RFC 7518 §3.1, RFC 8037 §3.1), case-sensitive.
    pub const fn name(self) -> &'static str {
        match self {
            Algorithm::Rs256 => "RS256",
            Algorithm::Rs384 => "RS384",
            Algorithm::Rs512 => "RS512",
            Algorithm::Ps256 => "PS256",
            Algorithm::Ps384 => "PS384",
            Algorithm::Ps512 => "PS512",
            Algorithm::Es256 => "ES256",
            Algorithm::Es384 => "ES384",
            Algorithm::EdDsa => "EdDSA",
            Algorithm::Hs256 => "HS256",
            Algorithm::Hs384 => "HS384",
            Algorithm::Hs512 => "HS512",
        }
    }

    /// The algorithm of a registered name; `None` for anything else, `none` included.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Why a registered JWS algorithm is not offered (`None` for any other name): a policy
    /// naming one is refused when it loads, rather than configuring a credential whose tokens
    /// could never verify.
    pub fn not_offered(name: &str) -> Option<&'static str> {
        match name {
            // RFC 7518 §3.4.
            "ES512" => Some("ECDSA on P-521, which `ring` does not implement"),
            // RFC 8812 §3.2.
            "ES256K" => Some("ECDSA on secp256k1, which `ring` does not implement"),
            _ => None,
        }
    }

    /// HS256, HS384, HS512: verified with a shared secret.
    pub const fn is_hmac(self) -> bool {
        matches!(self, Algorithm::Hs256 | Algorithm::Hs384 | Algorithm::Hs512)
    }

    /// Whether a key of `kind` can verify this algorithm.
    pub const fn fits(self, kind: KeyKind) -> bool {
        use Algorithm::*;
        matches!(
            (self, kind),
            (Rs256 | Rs384 | Rs512 | Ps256 | Ps384 | Ps512, KeyKind::Rsa)
                | (Es256, KeyKind::EcP256)
                | (Es384, KeyKind::EcP384)
                | (EdDsa, KeyKind::Ed25519)
                | (Hs256 | Hs384 | Hs512, KeyKind::Hmac)
        )
    }

    /// Shortest HMAC secret for this algorithm: its hash size (RFC 7518 §3.2).
    pub const fn min_secret(self) -> usize {
        match self {
            Algorithm::Hs384 => 48,
            Algorithm::Hs512 => 64,
            _ => 32,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// === impl AlgorithmSet ===

impl AlgorithmSet {
    pub const fn empty() -> Self {
        Self(0)
    }

    /// Every algorithm this agent implements.
    pub fn all() -> Self {
        Algorithm::ALL.into_iter().collect()
    }

    pub const fn with(self, alg: Algorithm) -> Self {
        Self(self.0 | 1 << alg as u16)
    }

    pub fn insert(&mut self, alg: Algorithm) {
        *self = self.with(alg);
    }

    pub const fn contains(self, alg: Algorithm) -> bool {
        self.0 & (1 << alg as u16) != 0
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Algorithm> {
        Algorithm::ALL
            .into_iter()
            .filter(move |a| self.contains(*a))
    }
}

impl FromIterator<Algorithm> for AlgorithmSet {
    fn from_iter<I: IntoIterator<Item = Algorithm>>(iter: I) -> Self {
        iter.into_iter().fold(Self::empty(), Self::with)
    }
}

impl fmt::Display for AlgorithmSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Algorithm::name).collect();
        f.write_str(&names.join(", "))
    }
}

impl fmt::Debug for AlgorithmSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}
