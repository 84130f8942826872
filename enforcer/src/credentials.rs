//! Credentials as governed identities: bearer JWTs and API keys that a rule can require on top
//! of the kernel-attested caller identity.
//!
//! A policy's `credentials` section (see `docs/policy.md`) names credentials; a rule's
//! `require: {credential: NAME, scopes: [...], claims: {...}}` allows a request only if the
//! request presents that credential, it verifies, and it grants those scopes and claims. This
//! module holds the verification core the policy compiles into ([`Credentials`]) and the
//! per-request state the decision fills in ([`CredentialCheck`]):
//!
//! - `jws.rs`, `jwk.rs`, `jwt.rs`: compact JWS verified with `ring` (RS/PS 256/384/512, ES256,
//!   ES384, EdDSA; HS256/384/512 only with a configured secret), JWK sets, JWT claims.
//! - `jwks_file.rs`: a JWKS file reloaded when it changes ([`JwksFile::refresh_if_changed`]).
//! - `cache.rs`: verified tokens by hash, so a repeated token skips the signature check.
//! - `apikey.rs`: API keys known by their SHA-256, with validity windows for rotation.
//! - `fingerprint.rs`: per-host HMAC fingerprints, the only way records refer to a secret.
//! - `inject.rs`: secretless injection of a header value from a watched file or, with
//!   `oauth2.rs`, an OAuth2 client-credentials token kept fresh by a task per injection
//!   ([`Refreshers`], started and stopped with the policy in force by `reload::PolicyStore`).
//! - `jwks_url.rs`: a JWKS fetched over HTTPS and refreshed by a task ([`JwksUrl`]).
//! - `https.rs`: the HTTPS client of both (hyper-util over hyper-rustls: addresses raced,
//!   `HTTPS_PROXY`/`NO_PROXY` honoured).
//! - `metrics.rs`: each source's health, by kind and policy name ([`SourceMetrics`]).
//!
//! What the proxy does with it:
//!
//! ```ignore
//! let fingerprints = Fingerprinter::load_or_create(Path::new("/var/lib/enforcer/fp.key"))?;
//! // per request:
//! let mut check = CredentialCheck::new(UnixTime::now(), &fingerprints);
//! let d = policy.decide_with(&ids, service, method, path, headers, query, &mut check);
//! match (d.verdict, d.reason) {
//!     (Verdict::Deny, Reason::Credential(r)) => {
//!         // 401 + WWW-Authenticate, 403 or 503: r.status(); the details (for the audit
//!         // record) and the challenge are in check.failure().
//!         let f = check.failure().expect("a credential reason comes with its failure");
//!         answer(r.status(), f.www_authenticate());
//!     }
//!     (Verdict::Allow, _) => {
//!         if let Some(grant) = check.grant() {
//!             // grant.subject, grant.fingerprint for headers and the audit record;
//!             // grant.bind_on_first_use: check or record the binding, 403 on conflict.
//!         }
//!     }
//!     _ => {}
//! }
//! // in the reload loop:
//! for r in policy.credentials().refresh_if_changed() { log(r) }
//! ```

mod apikey;
mod cache;
mod fingerprint;
mod https;
mod inject;
mod json;
mod jwk;
mod jwks_file;
mod jwks_url;
mod jws;
mod jwt;
mod metrics;
mod oauth2;
mod time;

use std::{fmt, path::PathBuf, sync::Arc};

use serde_json::Value;

pub use self::{
    apikey::{
        ApiKey, ApiKeyError, ApiKeyLocation, ApiKeys, MAX_API_KEY_BYTES, digest as api_key_digest,
        parse_digest,
    },
    cache::TokenCache,
    fingerprint::{Fingerprint, FingerprintError, Fingerprinter},
    inject::{InjectError, Injection, MAX_INJECTED_BYTES, NOT_INJECTABLE, Secret},
    json::JsonWhy,
    jwk::{JwkError, JwksError, Key, KeyKind, KeySet, MIN_SECRET_BYTES, Skipped},
    jwks_file::{JwksFile, Refresh},
    jwks_url::{JwksFetchError, JwksUrl, REFRESH_INTERVAL as JWKS_REFRESH_INTERVAL},
    jws::{Algorithm, AlgorithmSet, VerifiedJws, verify_jws},
    jwt::{
        DEFAULT_CACHE_ENTRIES, DEFAULT_LEEWAY_SECS, DEFAULT_MAX_TOKEN_BYTES, JwtConfig, JwtError,
        JwtVerifier, Keys, Kid, Malformed, Part, VerifiedJwt, bearer,
    },
    metrics::{SourceFailure, SourceKind, SourceMetrics},
    oauth2::{
        FetchError, HttpsUrl, OAuth2, OAuth2Error, Refreshers, Token, TokenError, backoff,
        parse_token_response, refresh_delay,
    },
    time::{UnixTime, parse_rfc3339},
};
use crate::policy::Headers;

/// Why a credential requirement failed, as a closed set: the HTTP answer it calls for, and a
/// label for metrics and audit records. The details are in the [`Failure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// No credential presented (401, challenge without an error code: RFC 6750 §3.1).
    Missing,
    /// A credential that does not verify: malformed, bad signature, expired, wrong issuer or
    /// audience, unknown key, unknown or expired API key (401, `invalid_token`).
    Invalid,
    /// The keys to verify it are not available (503: retry later).
    Unavailable,
    /// Valid, but without a scope the rule requires (403, `insufficient_scope`).
    InsufficientScope,
    /// Valid, but a claim does not have the value the rule requires (403).
    ClaimMismatch,
    /// Valid, but bound to an identity the caller does not match (403).
    NotBound,
}

/// One requirement that failed: which credential, for which rule, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub credential: Arc<str>,
    pub kind: CredentialKind,
    /// The rule whose requirement failed.
    pub rule: Arc<str>,
    pub error: CredentialError,
}

/// Why a credential did not satisfy a requirement, with the facts.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CredentialError {
    #[error(transparent)]
    Jwt(#[from] JwtError),
    #[error(transparent)]
    ApiKey(#[from] ApiKeyError),
    #[error("scope `{missing}` is not granted (the rule requires `{required}`)")]
    InsufficientScope {
        missing: Box<str>,
        /// Every scope the rule requires, space-separated (for the challenge's `scope`).
        required: Box<str>,
    },
    #[error("claim `{claim}` does not have the required value")]
    ClaimMismatch { claim: Box<str> },
    #[error("the credential is bound to identity `{identity}`, which the caller does not match")]
    NotBound { identity: Arc<str> },
}

/// What an allowing rule's credential established, for the proxy: headers to add, the audit
/// record, and bind-on-first-use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub credential: Arc<str>,
    pub kind: CredentialKind,
    /// The JWT's `sub`, or the API key's name.
    pub subject: Option<Arc<str>>,
    /// Fingerprint of the presented token or key.
    pub fingerprint: Fingerprint,
    /// The JWT's `exp`, or the API key's `notAfter`.
    pub expires: Option<UnixTime>,
    /// Set when the credential has `bindOnFirstUse`: the proxy looks this key up (scoped by
    /// `credential`); unbound, it binds it to the caller; bound to another caller, it answers
    /// 403 ([`Rejection::NotBound`]).
    pub bind_on_first_use: Option<BindingKey>,
}

/// What bind-on-first-use binds to a caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BindingKey {
    /// The JWT's subject: every token for it.
    Subject(Arc<str>),
    /// One token or API key, by fingerprint.
    Token(Fingerprint),
}

/// `bindOnFirstUse`: what a credential is bound to on its first use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BindOnFirstUse {
    /// The JWT's `sub` (required then), or the API key's name.
    Subject,
    /// The presented token or key itself.
    Token,
}

/// The kind of a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// `Authorization: Bearer` JWT.
    Jwt,
    /// A key in a header or query parameter.
    ApiKey,
}

/// A policy identity a credential is bound to: its index in the policy, and its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub identity: u32,
    pub name: Arc<str>,
}

/// A rule's `require`, compiled.
#[derive(Debug, Clone)]
pub struct Requirement {
    credential: u32,
    name: Arc<str>,
    scopes: Box<[Box<str>]>,
    claims: Box<[(Box<str>, ClaimValue)]>,
}

/// A value a claim must have: what a policy can write.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimValue {
    String(Box<str>),
    Integer(i64),
    Float(f64),
    Bool(bool),
}

/// A claim of a verified token, as far as rules can test it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TokenClaim {
    One(ClaimValue),
    /// An array: its scalar members.
    Many(Box<[ClaimValue]>),
    /// An object, null, or an array of non-scalars: equal to nothing.
    Other,
}

/// Every credential of a policy, by index.
#[derive(Debug, Default)]
pub struct Credentials {
    list: Box<[Credential]>,
}

/// One named credential.
#[derive(Debug)]
pub struct Credential {
    name: Arc<str>,
    verifier: Verifier,
    bound_to: Option<Binding>,
    bound_subjects: Box<[(Box<str>, Binding)]>,
    bind_on_first_use: Option<BindOnFirstUse>,
}

/// How a credential is verified.
#[derive(Debug)]
pub enum Verifier {
    Jwt(JwtVerifier),
    ApiKey(ApiKeys),
}

/// A JWKS file's refresh outcome, named.
#[derive(Debug)]
pub struct KeyRefresh {
    pub credential: Arc<str>,
    pub path: PathBuf,
    pub outcome: Refresh,
}

/// Credential state for one request: each credential is verified at most once whatever the
/// number of rules that require it, and what was found is kept for the answer and the audit
/// record.
pub struct CredentialCheck<'a> {
    now: Option<UnixTime>,
    /// `None` for [`Policy::decide`](crate::policy::Policy::decide), which returns no grant.
    fingerprints: Option<&'a Fingerprinter>,
    verified: Vec<(u32, Result<Presented, CredentialError>)>,
    /// The most significant failure so far: (rank, rule index, failure).
    failure: Option<(u8, u32, Failure)>,
    grant: Option<Grant>,
}

#[derive(Clone)]
enum Presented {
    Jwt(Arc<VerifiedJwt>),
    /// Index into the credential's keys.
    ApiKey(usize),
}

/// Text that came from a request or a key file, safe to log: printable ASCII (anything else
/// shows as `?`), at most 256 characters (then `…`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Shown(Box<str>);

// === impl Rejection ===

impl Rejection {
    pub const fn as_str(self) -> &'static str {
        match self {
            Rejection::Missing => "credential missing",
            Rejection::Invalid => "credential invalid",
            Rejection::Unavailable => "credential keys unavailable",
            Rejection::InsufficientScope => "insufficient scope",
            Rejection::ClaimMismatch => "claim mismatch",
            Rejection::NotBound => "credential not bound to caller",
        }
    }

    /// The HTTP status to answer with.
    pub const fn status(self) -> u16 {
        match self {
            Rejection::Missing | Rejection::Invalid => 401,
            Rejection::Unavailable => 503,
            Rejection::InsufficientScope | Rejection::ClaimMismatch | Rejection::NotBound => 403,
        }
    }

    /// Which failure decides the answer when several rules' requirements failed: keys
    /// unavailable (the answer is not known: retry), then a valid credential that lacks
    /// something (403: the caller authenticated), then an invalid one, then none.
    const fn rank(self) -> u8 {
        match self {
            Rejection::Missing => 1,
            Rejection::Invalid => 2,
            Rejection::InsufficientScope | Rejection::ClaimMismatch | Rejection::NotBound => 3,
            Rejection::Unavailable => 4,
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl CredentialError, Failure ===

impl CredentialError {
    pub fn rejection(&self) -> Rejection {
        match self {
            CredentialError::Jwt(JwtError::Missing)
            | CredentialError::ApiKey(ApiKeyError::Missing { .. }) => Rejection::Missing,
            CredentialError::Jwt(JwtError::KeysUnavailable { .. }) => Rejection::Unavailable,
            CredentialError::Jwt(_) | CredentialError::ApiKey(_) => Rejection::Invalid,
            CredentialError::InsufficientScope { .. } => Rejection::InsufficientScope,
            CredentialError::ClaimMismatch { .. } => Rejection::ClaimMismatch,
            CredentialError::NotBound { .. } => Rejection::NotBound,
        }
    }
}

impl Failure {
    pub fn rejection(&self) -> Rejection {
        self.error.rejection()
    }

    pub fn status(&self) -> u16 {
        self.rejection().status()
    }

    /// The `WWW-Authenticate` value to send with the answer, if it takes one: every 401, and a
    /// 403 for a missing scope (RFC 6750 §3). Bearer challenges name the credential as realm
    /// and use RFC 6750's error codes; API keys get an `ApiKey` challenge. Nothing from the
    /// request is echoed (credential names and scopes come from the policy).
    pub fn www_authenticate(&self) -> Option<String> {
        let realm = &self.credential;
        match (self.kind, &self.error) {
            (CredentialKind::Jwt, CredentialError::InsufficientScope { required, .. }) => {
                Some(format!(
                    "Bearer realm=\"{realm}\", error=\"insufficient_scope\", scope=\"{required}\""
                ))
            }
            (_, e) if e.rejection().status() != 401 => None,
            (CredentialKind::Jwt, CredentialError::Jwt(JwtError::Missing)) => {
                Some(format!("Bearer realm=\"{realm}\""))
            }
            (CredentialKind::Jwt, CredentialError::Jwt(JwtError::Repeated)) => Some(format!(
                "Bearer realm=\"{realm}\", error=\"invalid_request\""
            )),
            (CredentialKind::Jwt, CredentialError::Jwt(JwtError::Expired { .. })) => Some(format!(
                "Bearer realm=\"{realm}\", error=\"invalid_token\", \
                 error_description=\"the token expired\""
            )),
            (CredentialKind::Jwt, _) => {
                Some(format!("Bearer realm=\"{realm}\", error=\"invalid_token\""))
            }
            (CredentialKind::ApiKey, _) => Some(format!("ApiKey realm=\"{realm}\"")),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rule `{}`: credential `{}`: {}",
            self.rule, self.credential, self.error
        )
    }
}

// === impl Requirement ===

impl Requirement {
    /// A requirement of credential number `credential` (an index into [`Credentials`]).
    pub fn new(
        credential: u32,
        name: Arc<str>,
        scopes: Box<[Box<str>]>,
        claims: Box<[(Box<str>, ClaimValue)]>,
    ) -> Self {
        Self {
            credential,
            name,
            scopes,
            claims,
        }
    }

    /// The credential's name.
    pub fn credential(&self) -> &str {
        &self.name
    }

    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scopes.iter().map(|s| &**s)
    }

    pub fn claims(&self) -> impl Iterator<Item = (&str, &ClaimValue)> {
        self.claims.iter().map(|(n, v)| (&**n, v))
    }
}

// === impl ClaimValue, TokenClaim ===

impl ClaimValue {
    /// A scalar JSON value; `None` for anything else. Whole numbers are integers.
    fn of_json(v: &Value) -> Option<Self> {
        match v {
            Value::String(s) => Some(ClaimValue::String(s.as_str().into())),
            Value::Bool(b) => Some(ClaimValue::Bool(*b)),
            Value::Number(n) => Some(match n.as_i64() {
                Some(i) => ClaimValue::Integer(i),
                None => {
                    let f = n.as_f64()?;
                    if f.fract() == 0.0 && f.abs() < 9.2e18 {
                        ClaimValue::Integer(f as i64)
                    } else {
                        ClaimValue::Float(f)
                    }
                }
            }),
            _ => None,
        }
    }
}

impl fmt::Display for ClaimValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClaimValue::String(s) => write!(f, "{s:?}"),
            ClaimValue::Integer(i) => write!(f, "{i}"),
            ClaimValue::Float(x) => write!(f, "{x}"),
            ClaimValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

impl TokenClaim {
    pub(crate) fn of(v: &Value) -> Self {
        match v {
            Value::Array(items) => {
                TokenClaim::Many(items.iter().filter_map(ClaimValue::of_json).collect())
            }
            v => ClaimValue::of_json(v).map_or(TokenClaim::Other, TokenClaim::One),
        }
    }

    /// Equal to `want`, or an array holding it.
    pub(crate) fn matches(&self, want: &ClaimValue) -> bool {
        match self {
            TokenClaim::One(v) => v == want,
            TokenClaim::Many(vs) => vs.iter().any(|v| v == want),
            TokenClaim::Other => false,
        }
    }
}

// === impl Credentials ===

impl Credentials {
    pub fn new(list: Vec<Credential>) -> Self {
        Self { list: list.into() }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Credential> {
        self.list.iter()
    }

    pub fn get(&self, name: &str) -> Option<&Credential> {
        self.list.iter().find(|c| *c.name == *name)
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Re-read every JWKS file that changed (one `stat` each otherwise). Call it from the reload
    /// loop, every few seconds; log what is not [`Refresh::Unchanged`].
    pub fn refresh_if_changed(&self) -> Vec<KeyRefresh> {
        let mut out = Vec::new();
        for c in &self.list {
            if let Verifier::Jwt(v) = &c.verifier
                && let Keys::File(file) = v.keys()
            {
                let outcome = file.refresh_if_changed();
                if let Refresh::Loaded { .. } = outcome {
                    v.clear_cache();
                }
                out.push(KeyRefresh {
                    credential: c.name.clone(),
                    path: file.path().to_owned(),
                    outcome,
                });
            }
        }
        out
    }

    /// The JWKS URLs of the credentials with the credential's name, for their refresher tasks
    /// ([`Refreshers::add_jwks`]).
    pub fn jwks_urls(&self) -> Vec<(Arc<str>, Arc<JwksUrl>)> {
        self.list
            .iter()
            .filter_map(|c| match &c.verifier {
                Verifier::Jwt(v) => match v.keys() {
                    Keys::Url(u) => Some((c.name.clone(), u.clone())),
                    _ => None,
                },
                Verifier::ApiKey(_) => None,
            })
            .collect()
    }

    /// The credentials whose keys come from a JWKS file or URL, for the source metrics:
    /// `Some(keys in force)` for a file, `None` for a URL (its task reports it).
    pub fn key_sources(&self) -> Vec<(Arc<str>, Option<bool>)> {
        self.list
            .iter()
            .filter_map(|c| match &c.verifier {
                Verifier::Jwt(v) => match v.keys() {
                    Keys::File(f) => Some((c.name.clone(), Some(f.status().is_ok()))),
                    Keys::Url(_) => Some((c.name.clone(), None)),
                    _ => None,
                },
                Verifier::ApiKey(_) => None,
            })
            .collect()
    }

    /// Credentials whose keys are unavailable, and why (for the startup log and `check`).
    pub fn unavailable(&self) -> Vec<(Arc<str>, Arc<str>)> {
        self.list
            .iter()
            .filter_map(|c| match &c.verifier {
                Verifier::Jwt(v) => match v.keys() {
                    Keys::File(f) => f.status().err().map(|why| (c.name.clone(), why)),
                    Keys::Url(u) => u.status().err().map(|why| (c.name.clone(), why)),
                    Keys::Static(_) => None,
                },
                Verifier::ApiKey(_) => None,
            })
            .collect()
    }

    fn at(&self, index: u32) -> &Credential {
        &self.list[index as usize]
    }
}

// === impl Credential ===

impl Credential {
    pub fn new(name: &str, verifier: Verifier) -> Self {
        Self {
            name: name.into(),
            verifier,
            bound_to: None,
            bound_subjects: Box::default(),
            bind_on_first_use: None,
        }
    }

    /// Only callers matching `identity` may present this credential.
    pub fn bound_to(mut self, identity: Binding) -> Self {
        self.bound_to = Some(identity);
        self
    }

    /// A JWT whose `sub` is listed may only be presented by callers matching its identity.
    pub fn bound_subjects(mut self, subjects: Vec<(Box<str>, Binding)>) -> Self {
        self.bound_subjects = subjects.into();
        self
    }

    pub fn bind_on_first_use(mut self, what: BindOnFirstUse) -> Self {
        self.bind_on_first_use = Some(what);
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> CredentialKind {
        match self.verifier {
            Verifier::Jwt(_) => CredentialKind::Jwt,
            Verifier::ApiKey(_) => CredentialKind::ApiKey,
        }
    }

    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    fn verify<H: Headers + ?Sized>(
        &self,
        headers: &H,
        query: Option<&str>,
        now: UnixTime,
    ) -> Result<Presented, CredentialError> {
        match &self.verifier {
            Verifier::Jwt(v) => Ok(Presented::Jwt(v.verify_request(headers, now)?)),
            Verifier::ApiKey(keys) => {
                let presented = keys.presented(headers, query)?;
                let key = keys.verify(&presented, now)?;
                let index = keys
                    .keys()
                    .iter()
                    .position(|k| std::ptr::eq(k, key))
                    .unwrap_or_default();
                Ok(Presented::ApiKey(index))
            }
        }
    }
}

// === impl CredentialCheck ===

impl<'a> CredentialCheck<'a> {
    /// A check as of `now`, fingerprinting presented secrets with `fingerprints`.
    pub fn new(now: UnixTime, fingerprints: &'a Fingerprinter) -> Self {
        Self {
            now: Some(now),
            fingerprints: Some(fingerprints),
            verified: Vec::new(),
            failure: None,
            grant: None,
        }
    }

    /// For a decision that wants no grant: the system clock, read only if a credential is
    /// checked, and no fingerprints.
    pub(crate) fn without_grant() -> CredentialCheck<'static> {
        CredentialCheck {
            now: None,
            fingerprints: None,
            verified: Vec::new(),
            failure: None,
            grant: None,
        }
    }

    /// What the allowing rule's credential established; `None` if the allowing rule requires
    /// no credential (or nothing allowed).
    pub fn grant(&self) -> Option<&Grant> {
        self.grant.as_ref()
    }

    /// The failure that decides the answer when no rule allowed and requirements failed (see
    /// [`Rejection`] for which one that is).
    pub fn failure(&self) -> Option<&Failure> {
        self.failure.as_ref().map(|(_, _, f)| f)
    }

    fn now(&mut self) -> UnixTime {
        *self.now.get_or_insert_with(UnixTime::now)
    }

    /// Whether the request satisfies `req`, for a caller matching the identities for which
    /// `caller_is` is true.
    pub(crate) fn satisfies<H: Headers + ?Sized>(
        &mut self,
        credentials: &Credentials,
        req: &Requirement,
        caller_is: &dyn Fn(u32) -> bool,
        headers: &H,
        query: Option<&str>,
    ) -> Result<(), CredentialError> {
        let cred = credentials.at(req.credential);
        let presented = match self.verified.iter().find(|(i, _)| *i == req.credential) {
            Some((_, r)) => r.clone(),
            None => {
                let now = self.now();
                let r = cred.verify(headers, query, now);
                self.verified.push((req.credential, r.clone()));
                r
            }
        }?;
        let not_bound = |b: &Binding| CredentialError::NotBound {
            identity: b.name.clone(),
        };
        if let Some(b) = &cred.bound_to
            && !caller_is(b.identity)
        {
            return Err(not_bound(b));
        }
        match presented {
            Presented::Jwt(v) => {
                if let Some(sub) = &v.subject
                    && let Some((_, b)) = cred.bound_subjects.iter().find(|(s, _)| **s == **sub)
                    && !caller_is(b.identity)
                {
                    return Err(not_bound(b));
                }
                if cred.bind_on_first_use == Some(BindOnFirstUse::Subject) && v.subject.is_none() {
                    return Err(JwtError::MissingClaim { claim: "sub" }.into());
                }
                if let Some(missing) = req.scopes.iter().find(|s| !v.has_scope(s)) {
                    return Err(CredentialError::InsufficientScope {
                        missing: missing.clone(),
                        required: req.scopes.join(" ").into(),
                    });
                }
                if let Some((claim, _)) = req
                    .claims
                    .iter()
                    .find(|(n, want)| !v.claim_matches(n, want))
                {
                    return Err(CredentialError::ClaimMismatch {
                        claim: claim.clone(),
                    });
                }
            }
            Presented::ApiKey(i) => {
                if let Verifier::ApiKey(keys) = &cred.verifier
                    && let Some(b) = &keys.keys()[i].bound_to
                    && !caller_is(b.identity)
                {
                    return Err(not_bound(b));
                }
            }
        }
        Ok(())
    }

    /// Record a failed requirement of rule number `rule`; the most significant one is kept
    /// (ties: the earliest rule).
    pub(crate) fn note(
        &mut self,
        credentials: &Credentials,
        req: &Requirement,
        rule: u32,
        rule_id: &Arc<str>,
        error: CredentialError,
    ) {
        let rank = error.rejection().rank();
        let better = match &self.failure {
            None => true,
            Some((r, i, _)) => rank > *r || (rank == *r && rule < *i),
        };
        if better {
            let cred = credentials.at(req.credential);
            self.failure = Some((
                rank,
                rule,
                Failure {
                    credential: cred.name.clone(),
                    kind: cred.kind(),
                    rule: rule_id.clone(),
                    error,
                },
            ));
        }
    }

    /// Build the grant of the allowing rule's requirement, which [`Self::satisfies`] accepted.
    pub(crate) fn grant_for<H: Headers + ?Sized>(
        &mut self,
        credentials: &Credentials,
        req: &Requirement,
        headers: &H,
        query: Option<&str>,
    ) {
        let Some(fingerprints) = self.fingerprints else {
            return;
        };
        let cred = credentials.at(req.credential);
        let Some((_, Ok(presented))) = self.verified.iter().find(|(i, _)| *i == req.credential)
        else {
            return;
        };
        let (secret, subject, expires): (Option<std::borrow::Cow<'_, [u8]>>, _, _) =
            match (presented, &cred.verifier) {
                (Presented::Jwt(v), Verifier::Jwt(verifier)) => (
                    bearer(headers, verifier.config().max_token_bytes)
                        .ok()
                        .map(|t| t.as_bytes().into()),
                    v.subject.clone(),
                    Some(v.expires),
                ),
                (Presented::ApiKey(i), Verifier::ApiKey(keys)) => {
                    let key = &keys.keys()[*i];
                    (
                        keys.presented(headers, query).ok(),
                        Some(key.name.clone()),
                        key.not_after,
                    )
                }
                _ => return,
            };
        let Some(secret) = secret else { return };
        let fingerprint = fingerprints.fingerprint(&secret);
        let bind_on_first_use = match cred.bind_on_first_use {
            None => None,
            Some(BindOnFirstUse::Token) => Some(BindingKey::Token(fingerprint)),
            Some(BindOnFirstUse::Subject) => subject.clone().map(BindingKey::Subject),
        };
        self.grant = Some(Grant {
            credential: cred.name.clone(),
            kind: cred.kind(),
            subject,
            fingerprint,
            expires,
            bind_on_first_use,
        });
    }

    /// Start over, for a new request.
    pub(crate) fn reset(&mut self) {
        self.verified.clear();
        self.failure = None;
        self.grant = None;
    }

    /// Forget the failures of rules that did not decide (a rule allowed after all).
    pub(crate) fn clear_failure(&mut self) {
        self.failure = None;
    }
}

impl fmt::Debug for CredentialCheck<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialCheck")
            .field("now", &self.now)
            .field("verified", &self.verified.len())
            .field("failure", &self.failure())
            .field("grant", &self.grant)
            .finish()
    }
}

// === impl Shown ===

impl Shown {
    const MAX: usize = 256;

    pub fn new(s: &str) -> Self {
        let mut out: String = s
            .chars()
            .take(Self::MAX)
            .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
            .collect();
        if s.chars().nth(Self::MAX).is_some() {
            out.push('…');
        }
        Self(out.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

#[cfg(test)]
pub(crate) mod tests;
