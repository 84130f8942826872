//! API keys: a secret in a named header or query parameter, known to the agent only by its
//! SHA-256 digest.
//!
//! The policy (or a keys file) lists each key's name, digest and optional validity window
//! (`notBefore` inclusive, `notAfter` exclusive, RFC 3339), so that during a rotation the old
//! and the new key are both accepted until the old one's `notAfter`. The presented key is
//! hashed and compared with every digest in constant time (`subtle`), without stopping at a
//! match, so timing tells nothing about which digest bytes matched.

use std::{borrow::Cow, fmt, sync::Arc};

use subtle::ConstantTimeEq as _;

use super::{Shown, time::UnixTime};
use crate::policy::Headers;

/// Longest API key read, in bytes: keys are 20 to 100 characters; longer is abuse.
pub const MAX_API_KEY_BYTES: usize = 512;

/// Where a credential's API key is presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiKeyLocation {
    /// A header, by lower-case name. It must appear exactly once.
    Header(Box<str>),
    /// A query parameter, by name (compared percent-decoded). It must appear exactly once.
    Query(Box<str>),
}

/// One accepted key.
pub struct ApiKey {
    pub name: Arc<str>,
    digest: [u8; 32],
    pub not_before: Option<UnixTime>,
    pub not_after: Option<UnixTime>,
    /// The policy identity the key is bound to (an index into the policy's identities, named
    /// for messages): only callers matching it may present the key.
    pub bound_to: Option<super::Binding>,
}

/// The keys of one credential.
#[derive(Debug)]
pub struct ApiKeys {
    location: ApiKeyLocation,
    keys: Box<[ApiKey]>,
}

/// Why an API key was refused. Never holds the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiKeyError {
    #[error("no API key in the {location}")]
    Missing { location: ApiKeyLocation },
    #[error("the API key is given more than once in the {location}")]
    Repeated { location: ApiKeyLocation },
    #[error("API key of {len} bytes, over the {MAX_API_KEY_BYTES}-byte limit")]
    TooLong { len: usize },
    #[error("unknown API key")]
    Unknown,
    #[error("API key `{name}` is not valid before {not_before} (now {now})")]
    NotYetValid {
        name: Arc<str>,
        not_before: UnixTime,
        now: UnixTime,
    },
    #[error("API key `{name}` expired at {not_after} (now {now})")]
    Expired {
        name: Arc<str>,
        not_after: UnixTime,
        now: UnixTime,
    },
}

// === impl ApiKey ===

impl ApiKey {
    pub fn new(name: &str, sha256: [u8; 32]) -> Self {
        Self {
            name: name.into(),
            digest: sha256,
            not_before: None,
            not_after: None,
            bound_to: None,
        }
    }

    /// Whether the key is valid at `now`.
    fn check_time(&self, now: UnixTime) -> Result<(), ApiKeyError> {
        if let Some(nb) = self.not_before
            && now < nb
        {
            return Err(ApiKeyError::NotYetValid {
                name: self.name.clone(),
                not_before: nb,
                now,
            });
        }
        if let Some(na) = self.not_after
            && now >= na
        {
            return Err(ApiKeyError::Expired {
                name: self.name.clone(),
                not_after: na,
                now,
            });
        }
        Ok(())
    }
}

/// The digest is not printed: it is not the key, but it need not be in logs either.
impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("name", &self.name)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("bound_to", &self.bound_to)
            .finish_non_exhaustive()
    }
}

/// A `sha256` value: 64 lower-case hex digits.
pub fn parse_digest(hex: &str) -> Result<[u8; 32], &'static str> {
    const WHY: &str = "expected 64 lower-case hex digits (the SHA-256 of the key, never the key)";
    let b = hex.as_bytes();
    if b.len() != 64 {
        return Err(WHY);
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.as_chunks::<2>().0.iter().enumerate() {
        let nib = |c: u8| match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            _ => Err(WHY),
        };
        out[i] = (nib(pair[0])? << 4) | nib(pair[1])?;
    }
    Ok(out)
}

/// The SHA-256 of a key, as the policy lists it.
pub fn digest(key: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, key);
    let mut out = [0; 32];
    out.copy_from_slice(d.as_ref());
    out
}

// === impl ApiKeys ===

impl ApiKeys {
    pub fn new(location: ApiKeyLocation, keys: Vec<ApiKey>) -> Self {
        Self {
            location,
            keys: keys.into(),
        }
    }

    pub fn location(&self) -> &ApiKeyLocation {
        &self.location
    }

    pub fn keys(&self) -> &[ApiKey] {
        &self.keys
    }

    /// The key a request presents, from its header or query parameter.
    pub fn presented<'r, H: Headers + ?Sized>(
        &self,
        headers: &'r H,
        query: Option<&'r str>,
    ) -> Result<Cow<'r, [u8]>, ApiKeyError> {
        let mut found: Option<Cow<'r, [u8]>> = None;
        let mut seen = |v: Cow<'r, [u8]>| {
            if found.is_some() {
                return Err(ApiKeyError::Repeated {
                    location: self.location.clone(),
                });
            }
            found = Some(v);
            Ok(())
        };
        match &self.location {
            ApiKeyLocation::Header(name) => {
                for (n, v) in headers.pairs() {
                    if n.eq_ignore_ascii_case(name) {
                        seen(Cow::Borrowed(trim(v)))?;
                    }
                }
            }
            ApiKeyLocation::Query(name) => {
                for pair in query.unwrap_or("").split('&') {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    if *decode(k) == *name.as_bytes() {
                        seen(decode(v))?;
                    }
                }
            }
        }
        let key = found
            .filter(|k| !k.is_empty())
            .ok_or_else(|| ApiKeyError::Missing {
                location: self.location.clone(),
            })?;
        if key.len() > MAX_API_KEY_BYTES {
            return Err(ApiKeyError::TooLong { len: key.len() });
        }
        Ok(key)
    }

    /// The key whose digest is the presented key's, if it is valid at `now`.
    pub fn verify(&self, presented: &[u8], now: UnixTime) -> Result<&ApiKey, ApiKeyError> {
        let d = digest(presented);
        let mut found = None;
        for (i, k) in self.keys.iter().enumerate() {
            if bool::from(k.digest.ct_eq(&d)) {
                found = Some(i);
            }
        }
        let key = &self.keys[found.ok_or(ApiKeyError::Unknown)?];
        key.check_time(now)?;
        Ok(key)
    }
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !matches!(b, b' ' | b'\t'));
    let end = v.iter().rposition(|b| !matches!(b, b' ' | b'\t'));
    match (start, end) {
        (Some(s), Some(e)) => &v[s..=e],
        _ => &[],
    }
}

/// Percent-decode (with `+` as a space, as rules' `query` constraints read parameters). A `%`
/// not followed by two hex digits stands for itself.
fn decode(raw: &str) -> Cow<'_, [u8]> {
    let b = raw.as_bytes();
    if !b.iter().any(|&c| c == b'%' || c == b'+') {
        return Cow::Borrowed(b);
    }
    let hex = |c: Option<&u8>| match c {
        Some(c @ b'0'..=b'9') => Some(c - b'0'),
        Some(c @ b'a'..=b'f') => Some(c - b'a' + 10),
        Some(c @ b'A'..=b'F') => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => match (hex(b.get(i + 1)), hex(b.get(i + 2))) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Cow::Owned(out)
}

impl fmt::Display for ApiKeyLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiKeyLocation::Header(h) => write!(f, "header `{}`", Shown::new(h)),
            ApiKeyLocation::Query(q) => write!(f, "query parameter `{}`", Shown::new(q)),
        }
    }
}
