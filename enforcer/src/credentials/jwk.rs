//! Verification keys: JSON Web Keys (RFC 7517, RFC 7518 §6) read into keys `ring` can use.
//!
//! Two sources, never mixed in one [`KeySet`]:
//! - a JWK set of **public** keys (`jwksFile`), as identity providers publish them: RSA, EC
//!   P-256/P-384 and Ed25519 keys. Keys this agent cannot or must not use for signatures
//!   (encryption keys, other curves, weak RSA) are skipped and listed; a key holding private
//!   material (`d`, `p`, …, or a symmetric `k`) fails the whole set, because it means the wrong
//!   file was deployed and the signing key is exposed.
//! - a JWK set of **symmetric** keys (`secretFile`, `kty: oct`), the only source of HMAC keys.
//!   An HMAC key is therefore never made from a public key (the classic RS256→HS256 confusion:
//!   the public key's bytes used as the HMAC secret): public keys and secrets are different
//!   types, and an HS algorithm only ever selects a secret.

use std::fmt;

use base64::{
    Engine as _,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};
use ring::{hmac, signature};
use serde_json::{Map, Value};

use super::{
    Shown,
    jws::Algorithm,
    jwt::{JwtError, Kid},
};

/// Largest JWK set read, in bytes: real sets are a few KiB.
pub const MAX_JWKS_BYTES: u64 = 1024 * 1024;
/// Most keys in one set: identity providers publish a handful.
pub const MAX_KEYS: usize = 100;
/// RSA moduli accepted, in bits: `ring`'s `RSA_*_2048_8192_*` bounds (RFC 7518 §3.3 requires at
/// least 2048).
const RSA_BITS: std::ops::RangeInclusive<usize> = 2048..=8192;
/// Shortest HMAC secret, in bytes: RFC 7518 §3.2 asks for at least the hash size, and HS256 is
/// the smallest.
pub const MIN_SECRET_BYTES: usize = 32;
/// Longest key id accepted.
pub const MAX_KID: usize = 256;

/// Unpadded, canonical base64url (RFC 7515 §2): `=` padding, whitespace, characters outside
/// the URL-safe alphabet and non-zero trailing bits are all refused, so every byte string has
/// exactly one accepted encoding.
pub(crate) const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(false),
);

/// The kind of a key: which algorithms it can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
    Hmac,
}

/// One verification key.
pub struct Key {
    kid: Option<Box<str>>,
    /// The JWK's `alg`: when given, the only algorithm the key may verify.
    alg: Option<Algorithm>,
    material: Material,
}

enum Material {
    /// Big-endian, without leading zeros, as `ring` takes them.
    Rsa {
        n: Box<[u8]>,
        e: Box<[u8]>,
    },
    /// Uncompressed SEC1 point, `04 || x || y`.
    P256(Box<[u8]>),
    P384(Box<[u8]>),
    Ed25519(Box<[u8]>),
    /// The secret, keyed for HS256, HS384 and HS512; its length is kept to refuse an algorithm
    /// whose hash is longer than the secret. The bytes themselves are not kept.
    Hmac {
        keys: Box<[hmac::Key; 3]>,
        len: usize,
    },
}

/// Why a JWK cannot be used. In a public set, the key is skipped (and listed); in a secret
/// set, and for a private key, the whole set is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwkError {
    #[error("member `{member}` is missing")]
    MissingMember { member: &'static str },
    #[error("member `{member}` {why}")]
    BadMember {
        member: &'static str,
        why: &'static str,
    },
    #[error("key type `{kty}` is not supported (RSA, EC, OKP; oct only in a secret file)")]
    UnsupportedKeyType { kty: Shown },
    #[error("curve `{crv}` is not supported (P-256, P-384, Ed25519)")]
    UnsupportedCurve { crv: Shown },
    #[error("`use` is `{use_}`, not `sig`")]
    NotForSignatures { use_: Shown },
    #[error("`key_ops` does not include `verify`")]
    NoVerifyOp,
    #[error("algorithm `{alg}` is not supported")]
    UnsupportedAlg { alg: Shown },
    #[error("algorithm {alg} does not fit a {kind} key")]
    AlgDoesNotFitKey { alg: Algorithm, kind: KeyKind },
    #[error("RSA modulus of {bits} bits (2048 to 8192 accepted)")]
    RsaKeySize { bits: usize },
    #[error("RSA public exponent must be odd, at least 3 and at most 33 bits")]
    RsaExponent,
    #[error("RSA modulus has the ROCA fingerprint (CVE-2017-15361): its factors can be computed")]
    RocaVulnerable,
    #[error("holds private key material")]
    PrivateKeyMaterial,
    #[error("symmetric (`oct`) key: HMAC secrets come only from a secret file")]
    Symmetric,
    #[error("not a symmetric (`oct`) key: a secret file holds HMAC secrets only")]
    NotSecret,
    #[error("secret of {bytes} bytes; at least {MIN_SECRET_BYTES} are required")]
    SecretTooShort { bytes: usize },
    #[error("key id is not 1 to {MAX_KID} printable ASCII characters")]
    BadKid,
}

/// Why a JWK set was refused as a whole.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("cannot read {}", path.display())]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{len} bytes, over the {MAX_JWKS_BYTES}-byte limit")]
    TooLarge { len: u64 },
    #[error("not a JWK set: {0}")]
    Json(super::json::JsonWhy),
    #[error("not a JWK set: no `keys` array")]
    NoKeys,
    #[error("{count} keys, over the limit of {MAX_KEYS}")]
    TooManyKeys { count: usize },
    #[error(
        "key {index} ({kid}) holds private key material: a set for verification holds public keys only"
    )]
    PrivateKeyMaterial { index: usize, kid: Kid },
    #[error("key {index} ({kid}): {why}")]
    BadKey {
        index: usize,
        kid: Kid,
        #[source]
        why: JwkError,
    },
    #[error("two keys have the id {kid}")]
    DuplicateKid { kid: Kid },
    #[error("HMAC secrets and public keys cannot be mixed in one key set")]
    MixedKinds,
    #[error("no usable key{}", skipped_list(skipped))]
    NoUsableKey { skipped: Box<[Skipped]> },
}

fn skipped_list(skipped: &[Skipped]) -> String {
    skipped
        .iter()
        .map(|s| format!("; key {} ({}) skipped: {}", s.index, s.kid, s.why))
        .collect()
}

/// A key of a public set that was not taken, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Position in the set's `keys` array.
    pub index: usize,
    pub kid: Kid,
    pub why: JwkError,
}

/// The keys a credential verifies with: all public keys, or all HMAC secrets.
#[derive(Debug)]
pub struct KeySet {
    keys: Box<[Key]>,
    skipped: Box<[Skipped]>,
}

/// What a JWK set is expected to hold.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    Public,
    Secret,
}

// === impl KeySet ===

impl KeySet {
    /// Read a JWK set of public keys (an identity provider's JWKS).
    pub fn from_jwks(json: &[u8]) -> Result<Self, JwksError> {
        Self::parse(json, Expect::Public)
    }

    /// Read a JWK set of HMAC secrets (`kty: oct`), each at least 32 bytes.
    pub fn from_secret_jwks(json: &[u8]) -> Result<Self, JwksError> {
        Self::parse(json, Expect::Secret)
    }

    /// A set of keys built otherwise. Key ids must be unique, and secrets and public keys
    /// cannot be mixed.
    pub fn new(keys: Vec<Key>) -> Result<Self, JwksError> {
        let symmetric = keys.iter().filter(|k| k.kind() == KeyKind::Hmac).count();
        if symmetric != 0 && symmetric != keys.len() {
            return Err(JwksError::MixedKinds);
        }
        for (i, k) in keys.iter().enumerate() {
            if let Some(kid) = &k.kid
                && keys[..i].iter().any(|o| o.kid.as_deref() == Some(kid))
            {
                return Err(JwksError::DuplicateKid {
                    kid: Kid::of(Some(kid)),
                });
            }
        }
        Ok(Self {
            keys: keys.into(),
            skipped: Box::default(),
        })
    }

    fn parse(json: &[u8], expect: Expect) -> Result<Self, JwksError> {
        if json.len() as u64 > MAX_JWKS_BYTES {
            return Err(JwksError::TooLarge {
                len: json.len() as u64,
            });
        }
        let doc = super::json::object(json).map_err(JwksError::Json)?;
        let Some(Value::Array(entries)) = doc.get("keys") else {
            return Err(JwksError::NoKeys);
        };
        if entries.len() > MAX_KEYS {
            return Err(JwksError::TooManyKeys {
                count: entries.len(),
            });
        }
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for (index, entry) in entries.iter().enumerate() {
            let kid = Kid::of(entry.get("kid").and_then(Value::as_str));
            let Value::Object(jwk) = entry else {
                let why = JwkError::BadMember {
                    member: "keys",
                    why: "holds something other than an object",
                };
                match expect {
                    Expect::Secret => return Err(JwksError::BadKey { index, kid, why }),
                    Expect::Public => {
                        skipped.push(Skipped { index, kid, why });
                        continue;
                    }
                }
            };
            match Key::from_jwk(jwk, expect) {
                Ok(key) => keys.push(key),
                Err(JwkError::PrivateKeyMaterial | JwkError::Symmetric) => {
                    return Err(JwksError::PrivateKeyMaterial { index, kid });
                }
                Err(why) if expect == Expect::Secret => {
                    return Err(JwksError::BadKey { index, kid, why });
                }
                Err(why) => skipped.push(Skipped { index, kid, why }),
            }
        }
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey {
                skipped: skipped.into(),
            });
        }
        let mut set = Self::new(keys)?;
        set.skipped = skipped.into();
        Ok(set)
    }

    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// Keys of the set that were not taken, and why (to log when the set is loaded).
    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }

    /// The key a token names. A `kid` must name a key of the set; a token without one may only
    /// use a set of exactly one key. A `kid` is only ever compared with the set's ids: it never
    /// names a file or a URL.
    pub(crate) fn select(&self, kid: Option<&str>) -> Result<&Key, JwtError> {
        match kid {
            Some(kid) => {
                if let Some(key) = self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)) {
                    return Ok(key);
                }
                match self.skipped.iter().find(|s| s.kid.as_str() == Some(kid)) {
                    Some(s) => Err(JwtError::UnusableKey {
                        kid: Kid::of(Some(kid)),
                        why: s.why.clone(),
                    }),
                    None => Err(JwtError::UnknownKid {
                        kid: Kid::of(Some(kid)),
                    }),
                }
            }
            None => match &*self.keys {
                [only] => Ok(only),
                keys => Err(JwtError::MissingKid { keys: keys.len() }),
            },
        }
    }
}

// === impl Key ===

impl Key {
    fn from_jwk(jwk: &Map<String, Value>, expect: Expect) -> Result<Self, JwkError> {
        let kty = string(jwk, "kty")?.ok_or(JwkError::MissingMember { member: "kty" })?;
        let kid = match string(jwk, "kid")? {
            Some(k) if valid_kid(k) => Some(k.into()),
            Some(_) => return Err(JwkError::BadKid),
            None => None,
        };
        // Private members first: whatever else is wrong, a private key must fail the set.
        let private: &[&str] = match kty {
            "RSA" => &["d", "p", "q", "dp", "dq", "qi", "oth"],
            "EC" | "OKP" => &["d"],
            _ => &[],
        };
        if private.iter().any(|m| jwk.contains_key(*m)) {
            return Err(JwkError::PrivateKeyMaterial);
        }
        if kty == "oct" && expect == Expect::Public {
            return Err(JwkError::Symmetric);
        }
        if kty != "oct" && expect == Expect::Secret {
            return Err(JwkError::NotSecret);
        }
        if let Some(use_) = string(jwk, "use")?
            && use_ != "sig"
        {
            return Err(JwkError::NotForSignatures {
                use_: Shown::new(use_),
            });
        }
        if let Some(ops) = jwk.get("key_ops") {
            let Value::Array(ops) = ops else {
                return Err(JwkError::BadMember {
                    member: "key_ops",
                    why: "is not an array",
                });
            };
            if !ops.iter().any(|o| o.as_str() == Some("verify")) {
                return Err(JwkError::NoVerifyOp);
            }
        }
        let alg = match string(jwk, "alg")? {
            Some(a) => Some(
                Algorithm::from_name(a).ok_or(JwkError::UnsupportedAlg { alg: Shown::new(a) })?,
            ),
            None => None,
        };
        let material = match kty {
            "RSA" => rsa(jwk)?,
            "EC" => {
                let crv = string(jwk, "crv")?.ok_or(JwkError::MissingMember { member: "crv" })?;
                let size = match crv {
                    "P-256" => 32,
                    "P-384" => 48,
                    other => {
                        return Err(JwkError::UnsupportedCurve {
                            crv: Shown::new(other),
                        });
                    }
                };
                let x = fixed(jwk, "x", size)?;
                let y = fixed(jwk, "y", size)?;
                let mut point = Vec::with_capacity(1 + 2 * size);
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                if size == 32 {
                    Material::P256(point.into())
                } else {
                    Material::P384(point.into())
                }
            }
            "OKP" => {
                let crv = string(jwk, "crv")?.ok_or(JwkError::MissingMember { member: "crv" })?;
                if crv != "Ed25519" {
                    return Err(JwkError::UnsupportedCurve {
                        crv: Shown::new(crv),
                    });
                }
                Material::Ed25519(fixed(jwk, "x", 32)?.into())
            }
            "oct" => {
                let k = bytes(jwk, "k")?;
                if k.len() < MIN_SECRET_BYTES {
                    return Err(JwkError::SecretTooShort { bytes: k.len() });
                }
                Material::Hmac {
                    keys: Box::new([
                        hmac::Key::new(hmac::HMAC_SHA256, &k),
                        hmac::Key::new(hmac::HMAC_SHA384, &k),
                        hmac::Key::new(hmac::HMAC_SHA512, &k),
                    ]),
                    len: k.len(),
                }
            }
            other => {
                return Err(JwkError::UnsupportedKeyType {
                    kty: Shown::new(other),
                });
            }
        };
        let key = Key { kid, alg, material };
        if let Some(alg) = alg
            && !alg.fits(key.kind())
        {
            return Err(JwkError::AlgDoesNotFitKey {
                alg,
                kind: key.kind(),
            });
        }
        Ok(key)
    }

    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// An HMAC secret's length in bytes; `None` for a public key.
    pub fn secret_len(&self) -> Option<usize> {
        match self.material {
            Material::Hmac { len, .. } => Some(len),
            _ => None,
        }
    }

    /// The JWK's `alg`, if it gave one.
    pub fn alg(&self) -> Option<Algorithm> {
        self.alg
    }

    pub fn kind(&self) -> KeyKind {
        match self.material {
            Material::Rsa { .. } => KeyKind::Rsa,
            Material::P256(_) => KeyKind::EcP256,
            Material::P384(_) => KeyKind::EcP384,
            Material::Ed25519(_) => KeyKind::Ed25519,
            Material::Hmac { .. } => KeyKind::Hmac,
        }
    }

    /// Whether this key may verify `alg`: the JWK's own `alg` (if any) is `alg`, the key is of
    /// the kind `alg` needs, and an HMAC secret is at least as long as the hash.
    pub(crate) fn check_alg(&self, alg: Algorithm) -> Result<(), JwtError> {
        let kid = || Kid::of(self.kid.as_deref());
        if let Some(own) = self.alg
            && own != alg
        {
            return Err(JwtError::KeyAlgMismatch {
                kid: kid(),
                key_alg: own,
                alg,
            });
        }
        if !alg.fits(self.kind()) {
            return Err(JwtError::KeyTypeMismatch {
                kid: kid(),
                kind: self.kind(),
                alg,
            });
        }
        if let Material::Hmac { len, .. } = self.material
            && len < alg.min_secret()
        {
            return Err(JwtError::KeyTooShort {
                kid: kid(),
                bytes: len,
                alg,
            });
        }
        Ok(())
    }

    /// Verify `signature` over `message` with `alg`, which [`Key::check_alg`] accepted.
    pub(crate) fn verify(&self, alg: Algorithm, message: &[u8], sig: &[u8]) -> Result<(), ()> {
        use Algorithm::*;
        use signature as s;
        let rsa = |params: &'static s::RsaParameters, n: &[u8], e: &[u8]| {
            s::RsaPublicKeyComponents { n, e }.verify(params, message, sig)
        };
        let result = match (&self.material, alg) {
            (Material::Rsa { n, e }, Rs256) => rsa(&s::RSA_PKCS1_2048_8192_SHA256, n, e),
            (Material::Rsa { n, e }, Rs384) => rsa(&s::RSA_PKCS1_2048_8192_SHA384, n, e),
            (Material::Rsa { n, e }, Rs512) => rsa(&s::RSA_PKCS1_2048_8192_SHA512, n, e),
            (Material::Rsa { n, e }, Ps256) => rsa(&s::RSA_PSS_2048_8192_SHA256, n, e),
            (Material::Rsa { n, e }, Ps384) => rsa(&s::RSA_PSS_2048_8192_SHA384, n, e),
            (Material::Rsa { n, e }, Ps512) => rsa(&s::RSA_PSS_2048_8192_SHA512, n, e),
            (Material::P256(p), Es256) => {
                s::UnparsedPublicKey::new(&s::ECDSA_P256_SHA256_FIXED, p).verify(message, sig)
            }
            (Material::P384(p), Es384) => {
                s::UnparsedPublicKey::new(&s::ECDSA_P384_SHA384_FIXED, p).verify(message, sig)
            }
            (Material::Ed25519(x), EdDsa) => {
                s::UnparsedPublicKey::new(&s::ED25519, x).verify(message, sig)
            }
            (Material::Hmac { keys, .. }, Hs256) => hmac::verify(&keys[0], message, sig),
            (Material::Hmac { keys, .. }, Hs384) => hmac::verify(&keys[1], message, sig),
            (Material::Hmac { keys, .. }, Hs512) => hmac::verify(&keys[2], message, sig),
            // check_alg refused every other pair.
            _ => return Err(()),
        };
        result.map_err(|_| ())
    }
}

/// No key material: the kind, id, `alg` and size only.
impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let size = match &self.material {
            Material::Rsa { n, .. } => bit_len(n),
            Material::P256(_) => 256,
            Material::P384(_) => 384,
            Material::Ed25519(_) => 256,
            Material::Hmac { len, .. } => len * 8,
        };
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("kind", &self.kind())
            .field("bits", &size)
            .finish_non_exhaustive()
    }
}

/// Whether a key id is one this agent will look up: 1 to 256 printable ASCII characters. Any
/// such id is only compared, never used as a path or URL.
pub(crate) fn valid_kid(kid: &str) -> bool {
    !kid.is_empty() && kid.len() <= MAX_KID && kid.bytes().all(|b| (0x20..0x7f).contains(&b))
}

fn string<'a>(
    jwk: &'a Map<String, Value>,
    member: &'static str,
) -> Result<Option<&'a str>, JwkError> {
    match jwk.get(member) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(JwkError::BadMember {
            member,
            why: "is not a string",
        }),
    }
}

fn bytes(jwk: &Map<String, Value>, member: &'static str) -> Result<Vec<u8>, JwkError> {
    let s = string(jwk, member)?.ok_or(JwkError::MissingMember { member })?;
    B64.decode(s).map_err(|_| JwkError::BadMember {
        member,
        why: "is not unpadded, canonical base64url",
    })
}

/// A coordinate of exactly `size` bytes (RFC 7518 §6.2.1.2: the full size of the field).
fn fixed(jwk: &Map<String, Value>, member: &'static str, size: usize) -> Result<Vec<u8>, JwkError> {
    let b = bytes(jwk, member)?;
    if b.len() != size {
        return Err(JwkError::BadMember {
            member,
            why: "is not the curve's coordinate size",
        });
    }
    Ok(b)
}

/// An RFC 7518 §2 Base64urlUInt: big-endian, no leading zero octet.
fn uint(jwk: &Map<String, Value>, member: &'static str) -> Result<Vec<u8>, JwkError> {
    let b = bytes(jwk, member)?;
    match b.first() {
        None => Err(JwkError::BadMember {
            member,
            why: "is empty",
        }),
        Some(0) => Err(JwkError::BadMember {
            member,
            why: "has a leading zero octet (RFC 7518 §2)",
        }),
        Some(_) => Ok(b),
    }
}

fn rsa(jwk: &Map<String, Value>) -> Result<Material, JwkError> {
    let n = uint(jwk, "n")?;
    let e = uint(jwk, "e")?;
    let bits = bit_len(&n);
    if !RSA_BITS.contains(&bits) {
        return Err(JwkError::RsaKeySize { bits });
    }
    // ring's bounds: 3 ≤ e < 2^33, and e odd.
    if bit_len(&e) > 33 || e.last().is_none_or(|l| l & 1 == 0) || (e.len() == 1 && e[0] < 3) {
        return Err(JwkError::RsaExponent);
    }
    if roca_fingerprint(&n) {
        return Err(JwkError::RocaVulnerable);
    }
    Ok(Material::Rsa {
        n: n.into(),
        e: e.into(),
    })
}

fn bit_len(be: &[u8]) -> usize {
    match be.iter().position(|&b| b != 0) {
        None => 0,
        Some(i) => (be.len() - i) * 8 - be[i].leading_zeros() as usize,
    }
}

/// Whether an RSA modulus has the fingerprint of keys made by the Infineon library affected by
/// ROCA (Nemec et al., "The Return of Coppersmith's Attack", CCS 2017): for each small prime
/// `p` below, `n mod p` lies in the subgroup generated by 65537. A random modulus passes all
/// these tests with negligible probability; an affected one always does. This is a test on
/// public data, not cryptography.
fn roca_fingerprint(n: &[u8]) -> bool {
    const PRIMES: [u32; 38] = [
        3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89,
        97, 101, 103, 107, 109, 113, 127, 131, 137, 139, 149, 151, 157, 163, 167,
    ];
    PRIMES.iter().all(|&p| {
        let r = n.iter().fold(0u32, |r, &b| (r * 256 + u32::from(b)) % p);
        let g = 65_537 % p;
        let mut x = 1;
        loop {
            if x == r {
                return true;
            }
            x = x * g % p;
            if x == 1 {
                return false;
            }
        }
    })
}

// === impl KeyKind ===

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyKind::Rsa => "RSA",
            KeyKind::EcP256 => "EC P-256",
            KeyKind::EcP384 => "EC P-384",
            KeyKind::Ed25519 => "Ed25519",
            KeyKind::Hmac => "HMAC secret",
        })
    }
}
