//! The `credentials` section and rules' `require`: from the file as written to
//! [`Credentials`](crate::credentials::Credentials) and [`Requirement`]s, with a diagnostic for
//! every problem.
//!
//! Files a credential names are read here, when the policy loads: a `secretFile` and a
//! `keysFile` are part of the configuration, so one that cannot be read or is invalid is an
//! error of the policy. A `jwksFile` is not: it is the identity provider's data, kept current by
//! another job, and may be missing when the agent starts; its credential's keys are then
//! unavailable (requests needing them get 503) until the file appears.

use std::{
    collections::{BTreeSet, HashMap},
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde_saphyr::{Location, Spanned};

use super::{
    check::{duration, is_token, name},
    diagnostic::Diagnostics,
    file::{
        ApiKeyFile, ClaimValueFile, CredentialFile, CredentialKindFile, Entries, KeysFile,
        RequireFile,
    },
};
use crate::credentials::{
    Algorithm, AlgorithmSet, ApiKey, ApiKeyLocation, ApiKeys, Binding, ClaimValue, Credential,
    Credentials, DEFAULT_LEEWAY_SECS, DEFAULT_MAX_TOKEN_BYTES, JwksFile, JwtConfig, JwtVerifier,
    KeySet, Keys, Requirement, Verifier, parse_digest, parse_rfc3339,
};

/// Largest `leeway`: past a few minutes, clock skew is a broken clock, and a generous leeway
/// quietly extends every token's life.
const MAX_LEEWAY_SECS: i64 = 600;
/// Largest `maxTokenBytes` accepted.
const MAX_TOKEN_BYTES_LIMIT: u64 = 64 * 1024;

/// Credentials being compiled: rules add the claims they test before the verifiers are built.
pub(super) struct Builders {
    list: Vec<Builder>,
    by_name: HashMap<String, u32>,
}

struct Builder {
    name: Arc<str>,
    kind: CredentialKindFile,
    spec: Spec,
    bound_to: Option<Binding>,
    bound_subjects: Vec<(Box<str>, Binding)>,
    bind_on_first_use: Option<crate::credentials::BindOnFirstUse>,
    /// Claims rules test, to keep with verified tokens.
    claims: BTreeSet<Box<str>>,
}

enum Spec {
    Jwt { config: JwtConfig, keys: Keys },
    ApiKey(ApiKeys),
}

/// Check and compile the `credentials` section; `identities` maps identity names to indices.
pub(super) fn credentials(
    d: &mut Diagnostics,
    entries: Option<Entries<CredentialFile>>,
    identities: &HashMap<String, u32>,
) -> Builders {
    let mut out = Builders {
        list: Vec::new(),
        by_name: HashMap::new(),
    };
    for (key, file) in entries.map(|e| e.0).unwrap_or_default() {
        name(d, "credential name", &key);
        let b = credential(d, &key, file, identities);
        out.by_name.insert(key.value, out.list.len() as u32);
        out.list.push(b);
    }
    out
}

fn credential(
    d: &mut Diagnostics,
    key: &Spanned<String>,
    f: CredentialFile,
    identities: &HashMap<String, u32>,
) -> Builder {
    let cname = key.value.as_str();
    let kind = f.kind.value;
    // Fields of the other kind.
    let (wrong, this, other): (&[(&str, Option<Location>)], _, _) = match kind {
        CredentialKindFile::Jwt => (
            &[
                ("header", f.header.as_ref().map(|v| v.referenced)),
                ("query", f.query.as_ref().map(|v| v.referenced)),
                ("keys", f.keys.as_ref().map(|v| v.referenced)),
                ("keysFile", f.keys_file.as_ref().map(|v| v.referenced)),
            ],
            "jwt",
            "apiKey",
        ),
        CredentialKindFile::ApiKey => (
            &[
                ("issuer", f.issuer.as_ref().map(|v| v.referenced)),
                ("audience", f.audience.as_ref().map(|v| v.referenced)),
                ("algorithms", f.algorithms.as_ref().map(|v| v.referenced)),
                ("jwksFile", f.jwks_file.as_ref().map(|v| v.referenced)),
                ("jwksUrl", f.jwks_url.as_ref().map(|v| v.referenced)),
                ("caFile", f.ca_file.as_ref().map(|v| v.referenced)),
                ("secretFile", f.secret_file.as_ref().map(|v| v.referenced)),
                ("leeway", f.leeway.as_ref().map(|v| v.referenced)),
                ("maxLifetime", f.max_lifetime.as_ref().map(|v| v.referenced)),
                (
                    "maxTokenBytes",
                    f.max_token_bytes.as_ref().map(|v| v.referenced),
                ),
                (
                    "boundSubjects",
                    f.bound_subjects
                        .as_ref()
                        .and_then(|e| e.0.first().map(|(k, _)| k.referenced)),
                ),
            ],
            "apiKey",
            "jwt",
        ),
    };
    for (field, loc) in wrong {
        if let Some(loc) = loc {
            d.at(
                loc,
                format!(
                    "credential `{cname}`: `{field}` applies to {other} credentials, not {this}"
                ),
            );
        }
    }
    let bound_to = f
        .bound_to
        .as_ref()
        .and_then(|b| binding(d, cname, b, identities));
    let spec = match kind {
        CredentialKindFile::Jwt => jwt(d, key, &f),
        CredentialKindFile::ApiKey => api_key(d, key, &f, identities),
    };
    let bound_subjects = match (kind, f.bound_subjects) {
        (CredentialKindFile::Jwt, Some(e)) => {
            e.0.into_iter()
                .filter_map(|(sub, id)| {
                    if sub.value.is_empty() {
                        d.at(
                            &sub.referenced,
                            format!("credential `{cname}`: empty subject in `boundSubjects`"),
                        );
                    }
                    Some((sub.value.into(), binding(d, cname, &id, identities)?))
                })
                .collect()
        }
        _ => Vec::new(),
    };
    Builder {
        name: cname.into(),
        kind,
        spec,
        bound_to,
        bound_subjects,
        bind_on_first_use: f.bind_on_first_use.map(|b| b.value),
        claims: BTreeSet::new(),
    }
}

fn binding(
    d: &mut Diagnostics,
    cname: &str,
    identity: &Spanned<String>,
    identities: &HashMap<String, u32>,
) -> Option<Binding> {
    match identities.get(&identity.value) {
        Some(&i) => Some(Binding {
            identity: i,
            name: identity.value.as_str().into(),
        }),
        None => {
            d.at(
                &identity.referenced,
                format!(
                    "credential `{cname}`: unknown identity `{}`",
                    identity.value
                ),
            );
            None
        }
    }
}

// === jwt ===

fn jwt(d: &mut Diagnostics, key: &Spanned<String>, f: &CredentialFile) -> Spec {
    let cname = key.value.as_str();
    let mut required =
        |v: &Option<Spanned<String>>, field: &str| -> Arc<str> {
            match v {
                None => {
                    d.at(
                    &key.referenced,
                    format!(
                        "credential `{cname}`: `{field}` is required: tokens minted for another \
                         {} must not be accepted",
                        if field == "issuer" { "issuer" } else { "service" }
                    ),
                );
                    "".into()
                }
                Some(s) if s.value.is_empty() => {
                    d.at(
                        &s.referenced,
                        format!("credential `{cname}`: `{field}` is empty"),
                    );
                    "".into()
                }
                Some(s) => s.value.as_str().into(),
            }
        };
    let issuer = required(&f.issuer, "issuer");
    let audience = required(&f.audience, "audience");

    let mut algorithms = AlgorithmSet::empty();
    let mut alg_locs: Vec<(Algorithm, Location)> = Vec::new();
    match &f.algorithms {
        None => d.at(
            &key.referenced,
            format!(
                "credential `{cname}`: `algorithms` is required: list the algorithms the issuer \
                 signs with ({})",
                AlgorithmSet::all()
            ),
        ),
        Some(list) if list.value.is_empty() => d.at(
            &list.referenced,
            format!("credential `{cname}`: `algorithms` is empty"),
        ),
        Some(list) => {
            for a in &list.value {
                if a.value.eq_ignore_ascii_case("none") {
                    d.at(
                        &a.referenced,
                        format!(
                            "credential `{cname}`: `{}` is never allowed: an unsigned token \
                             proves nothing",
                            a.value
                        ),
                    );
                } else if let Some(alg) = Algorithm::from_name(&a.value) {
                    algorithms.insert(alg);
                    alg_locs.push((alg, a.referenced));
                } else if let Some(why) = Algorithm::not_offered(&a.value) {
                    d.at(
                        &a.referenced,
                        format!(
                            "credential `{cname}`: algorithm `{}` is not offered: {why} \
                             (supported: {})",
                            a.value,
                            AlgorithmSet::all()
                        ),
                    );
                } else {
                    d.at(
                        &a.referenced,
                        format!(
                            "credential `{cname}`: unknown algorithm `{}` (supported: {})",
                            a.value,
                            AlgorithmSet::all()
                        ),
                    );
                }
            }
        }
    }

    // `jwksUrl` stands in for `jwksFile` below; `caFile` only goes with it.
    if let (Some(file), Some(url)) = (&f.jwks_file, &f.jwks_url) {
        d.at(
            &url.referenced,
            format!(
                "credential `{cname}`: give `jwksFile` or `jwksUrl`, not both (file at {}:{})",
                file.referenced.line(),
                file.referenced.column()
            ),
        );
    }
    if let (Some(ca), None) = (&f.ca_file, &f.jwks_url) {
        d.at(
            &ca.referenced,
            format!("credential `{cname}`: `caFile` applies to `jwksUrl` only"),
        );
    }
    let both = f.jwks_file.is_some() && f.jwks_url.is_some();
    let jwks_source = f.jwks_file.as_ref().or(f.jwks_url.as_ref());
    let keys = match (jwks_source, &f.secret_file) {
        _ if both => None,
        (Some(_), Some(secret)) => {
            d.at(
                &secret.referenced,
                format!(
                    "credential `{cname}`: give `jwksFile` or `secretFile`, not both: HMAC \
                     secrets and public keys are never mixed"
                ),
            );
            None
        }
        (None, None) => {
            d.at(
                &key.referenced,
                format!(
                    "credential `{cname}`: no keys: give `jwksFile` (public keys), or \
                     `secretFile` for HS256, HS384 and HS512"
                ),
            );
            None
        }
        (Some(jwks), None) => {
            for (alg, loc) in alg_locs.iter().filter(|(a, _)| a.is_hmac()) {
                d.at(
                    loc,
                    format!(
                        "credential `{cname}`: {alg} needs `secretFile`: HMAC keys never come \
                         from a JWKS"
                    ),
                );
            }
            if f.jwks_url.is_some() {
                jwks_url(d, cname, jwks, f.ca_file.as_ref())
            } else {
                absolute(d, cname, "jwksFile", jwks)
                    .map(|path| Keys::File(Arc::new(JwksFile::open(&path).0)))
            }
        }
        (None, Some(secret)) => {
            for (alg, loc) in alg_locs.iter().filter(|(a, _)| !a.is_hmac()) {
                d.at(
                    loc,
                    format!(
                        "credential `{cname}`: {alg} verifies with public keys: give `jwksFile` \
                         (a `secretFile` holds HMAC secrets only)"
                    ),
                );
            }
            absolute(d, cname, "secretFile", secret)
                .and_then(|path| secret_file(d, cname, secret, &path, algorithms))
                .map(|set| Keys::Static(Arc::new(set)))
        }
    };

    let leeway = match &f.leeway {
        None => DEFAULT_LEEWAY_SECS,
        Some(v) => match seconds(&v.value, true) {
            Ok(s) if s <= MAX_LEEWAY_SECS => s,
            Ok(_) => {
                d.at(
                    &v.referenced,
                    format!(
                        "credential `{cname}`: `leeway` `{}` is over {}m: clock skew that large \
                         is a broken clock",
                        v.value,
                        MAX_LEEWAY_SECS / 60
                    ),
                );
                DEFAULT_LEEWAY_SECS
            }
            Err(why) => {
                d.at(
                    &v.referenced,
                    format!("credential `{cname}`: bad `leeway` `{}`: {why}", v.value),
                );
                DEFAULT_LEEWAY_SECS
            }
        },
    };
    let max_lifetime = f
        .max_lifetime
        .as_ref()
        .and_then(|v| match seconds(&v.value, false) {
            Ok(s) => Some(s),
            Err(why) => {
                d.at(
                    &v.referenced,
                    format!(
                        "credential `{cname}`: bad `maxLifetime` `{}`: {why}",
                        v.value
                    ),
                );
                None
            }
        });
    let max_token_bytes = match &f.max_token_bytes {
        None => DEFAULT_MAX_TOKEN_BYTES,
        Some(v) if (1..=MAX_TOKEN_BYTES_LIMIT).contains(&v.value) => v.value as usize,
        Some(v) => {
            d.at(
                &v.referenced,
                format!(
                    "credential `{cname}`: `maxTokenBytes` must be 1 to {MAX_TOKEN_BYTES_LIMIT}"
                ),
            );
            DEFAULT_MAX_TOKEN_BYTES
        }
    };
    let mut config = JwtConfig::new(&issuer, &audience, algorithms);
    config.leeway = leeway;
    config.max_lifetime = max_lifetime;
    config.max_token_bytes = max_token_bytes;
    Spec::Jwt {
        config,
        keys: keys.unwrap_or_else(|| {
            Keys::Static(Arc::new(
                KeySet::new(Vec::new()).unwrap_or_else(|_| unreachable!("an empty set is valid")),
            ))
        }),
    }
}

fn absolute(d: &mut Diagnostics, cname: &str, field: &str, v: &Spanned<String>) -> Option<PathBuf> {
    let path = PathBuf::from(&v.value);
    if path.is_absolute() {
        Some(path)
    } else {
        d.at(
            &v.referenced,
            format!(
                "credential `{cname}`: `{field}` `{}` must be an absolute path",
                v.value
            ),
        );
        None
    }
}

/// Read a secret file: a JWK set of `oct` keys, owned by root or the agent's user and readable
/// by its owner only, each key long enough for every HMAC algorithm the credential allows.
fn secret_file(
    d: &mut Diagnostics,
    cname: &str,
    v: &Spanned<String>,
    path: &Path,
    algorithms: AlgorithmSet,
) -> Option<KeySet> {
    let mut fail = |why: String| {
        d.at(
            &v.referenced,
            format!("credential `{cname}`: secret file `{}`: {why}", v.value),
        );
        None
    };
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) => return fail(format!("cannot read: {e}")),
    };
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != euid {
        return fail(format!(
            "owned by uid {}: whoever owns it can mint tokens; it must be owned by root or by \
             the agent's user",
            meta.uid()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return fail(format!(
            "mode {:04o} lets other users read or change it; make it 0600 (or 0400)",
            meta.mode() & 0o7777
        ));
    }
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) => return fail(format!("cannot read: {e}")),
    };
    let set = match KeySet::from_secret_jwks(&bytes) {
        Ok(s) => s,
        Err(e) => return fail(e.to_string()),
    };
    for key in set.keys() {
        let len = key.secret_len().unwrap_or_default();
        if let Some(alg) = algorithms
            .iter()
            .find(|a| a.is_hmac() && len < a.min_secret())
        {
            return fail(format!(
                "key {} is {len} bytes, too short for {alg} (at least {})",
                crate::credentials::Kid::of(key.kid()),
                alg.min_secret()
            ));
        }
    }
    Some(set)
}

/// A duration in whole seconds: `30s`, `5m`, `1h`; `0s` only if `zero` is allowed.
fn seconds(s: &str, zero: bool) -> Result<i64, &'static str> {
    if zero && matches!(s, "0s" | "0ms" | "0m" | "0h") {
        return Ok(0);
    }
    let t = duration(s)?;
    if t.subsec_nanos() != 0 {
        return Err("expected whole seconds: `30s`, `5m`, `1h`");
    }
    i64::try_from(t.as_secs()).map_err(|_| "too long")
}

// === apiKey ===

fn api_key(
    d: &mut Diagnostics,
    key: &Spanned<String>,
    f: &CredentialFile,
    identities: &HashMap<String, u32>,
) -> Spec {
    let cname = key.value.as_str();
    let location = match (&f.header, &f.query) {
        (Some(h), None) => {
            if !is_token(&h.value) {
                d.at(
                    &h.referenced,
                    format!("credential `{cname}`: `{}` is not a header name", h.value),
                );
            }
            ApiKeyLocation::Header(h.value.to_ascii_lowercase().into())
        }
        (None, Some(q)) => {
            if q.value.is_empty() {
                d.at(
                    &q.referenced,
                    format!("credential `{cname}`: empty query parameter name"),
                );
            }
            ApiKeyLocation::Query(q.value.as_str().into())
        }
        (Some(_), Some(q)) => {
            d.at(
                &q.referenced,
                format!(
                    "credential `{cname}`: give `header` or `query`, not both: the key is read \
                     from one place"
                ),
            );
            ApiKeyLocation::Query(q.value.as_str().into())
        }
        (None, None) => {
            d.at(
                &key.referenced,
                format!(
                    "credential `{cname}`: say where the key is: `header: NAME` or `query: NAME`"
                ),
            );
            ApiKeyLocation::Header("".into())
        }
    };
    let mut keys = Vec::new();
    let mut seen = KeyNames::default();
    if let Some(list) = &f.keys {
        for k in &list.value {
            if let Some(k) = one_key(d, cname, k, identities, &mut seen) {
                keys.push(k);
            }
        }
    }
    if let Some(v) = &f.keys_file
        && let Some(path) = absolute(d, cname, "keysFile", v)
    {
        keys_file(d, cname, v, &path, identities, &mut seen, &mut keys);
    }
    if keys.is_empty()
        && f.keys_file.is_none()
        && f.keys.as_ref().is_none_or(|k| k.value.is_empty())
    {
        let loc = f.keys.as_ref().map_or(key.referenced, |k| k.referenced);
        d.at(
            &loc,
            format!("credential `{cname}`: no keys: list `keys` or give `keysFile`"),
        );
    }
    Spec::ApiKey(ApiKeys::new(location, keys))
}

/// Key names and digests seen so far in one credential, with where.
#[derive(Default)]
struct KeyNames {
    names: HashMap<String, String>,
    digests: HashMap<[u8; 32], String>,
}

fn one_key(
    d: &mut Diagnostics,
    cname: &str,
    k: &ApiKeyFile,
    identities: &HashMap<String, u32>,
    seen: &mut KeyNames,
) -> Option<ApiKey> {
    let kname = &k.name.value;
    name(d, "API key name", &k.name);
    let here = format!(
        "{}:{}:{}",
        d.file().display(),
        k.name.referenced.line(),
        k.name.referenced.column()
    );
    if let Some(first) = seen.names.get(kname) {
        d.at(
            &k.name.referenced,
            format!("credential `{cname}`: duplicate key name `{kname}` (first at {first})"),
        );
    } else {
        seen.names.insert(kname.clone(), here.clone());
    }
    let digest = match parse_digest(&k.sha256.value) {
        Ok(dg) => dg,
        Err(why) => {
            d.at(
                &k.sha256.referenced,
                format!("credential `{cname}`: key `{kname}`: bad `sha256`: {why}"),
            );
            return None;
        }
    };
    if let Some(first) = seen.digests.get(&digest) {
        d.at(
            &k.sha256.referenced,
            format!(
                "credential `{cname}`: key `{kname}` has the same digest as the key at {first}: \
                 one key, one name"
            ),
        );
    } else {
        seen.digests.insert(digest, here);
    }
    let mut time = |v: &Option<Spanned<String>>, field: &str| {
        let v = v.as_ref()?;
        match parse_rfc3339(&v.value) {
            Ok(t) => Some(t),
            Err(why) => {
                d.at(
                    &v.referenced,
                    format!(
                        "credential `{cname}`: key `{kname}`: bad `{field}` `{}`: {why}",
                        v.value
                    ),
                );
                None
            }
        }
    };
    let not_before = time(&k.not_before, "notBefore");
    let not_after = time(&k.not_after, "notAfter");
    if let (Some(nb), Some(na), Some(loc)) = (not_before, not_after, &k.not_after)
        && nb >= na
    {
        d.at(
            &loc.referenced,
            format!(
                "credential `{cname}`: key `{kname}`: `notAfter` ({na}) is not after \
                 `notBefore` ({nb})"
            ),
        );
    }
    let bound_to = k
        .bound_to
        .as_ref()
        .and_then(|b| binding(d, cname, b, identities));
    let mut key = ApiKey::new(kname, digest);
    key.not_before = not_before;
    key.not_after = not_after;
    key.bound_to = bound_to;
    Some(key)
}

fn keys_file(
    d: &mut Diagnostics,
    cname: &str,
    v: &Spanned<String>,
    path: &Path,
    identities: &HashMap<String, u32>,
    seen: &mut KeyNames,
    keys: &mut Vec<ApiKey>,
) {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            d.at(
                &v.referenced,
                format!(
                    "credential `{cname}`: cannot read keys file `{}`: {e}",
                    v.value
                ),
            );
            return;
        }
    };
    let mut fd = Diagnostics::new(path);
    let mut options = serde_saphyr::Options::default();
    options.strict_booleans = true;
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::Error;
    match serde_saphyr::from_str_with_options::<KeysFile>(&text, options) {
        Err(e) => {
            let diag = fd.parser_error(&e);
            fd.push(diag);
        }
        Ok(file) => {
            for k in &file.keys {
                if let Some(k) = one_key(&mut fd, cname, k, identities, seen) {
                    keys.push(k);
                }
            }
            if file.keys.is_empty() {
                d.at(
                    &v.referenced,
                    format!("credential `{cname}`: keys file `{}` lists no key", v.value),
                );
            }
        }
    }
    d.absorb(fd);
}

// === require ===

impl Builders {
    /// Compile a rule's `require`.
    pub(super) fn requirement(
        &mut self,
        d: &mut Diagnostics,
        rule: &str,
        r: Spanned<RequireFile>,
    ) -> Option<Requirement> {
        let r = r.value;
        let cred = &r.credential;
        let Some(&index) = self.by_name.get(&cred.value) else {
            d.at(
                &cred.referenced,
                format!("rule `{rule}`: unknown credential `{}`", cred.value),
            );
            return None;
        };
        let b = &mut self.list[index as usize];
        let is_key = b.kind == CredentialKindFile::ApiKey;
        let mut scopes: Vec<Box<str>> = Vec::new();
        for s in r.scopes.iter().flatten() {
            if is_key {
                d.at(
                    &s.referenced,
                    format!(
                        "rule `{rule}`: credential `{}` is an API key, which carries no scopes",
                        cred.value
                    ),
                );
                break;
            }
            // RFC 6749 §3.3 scope-token: printable ASCII but space, `"` and `\`.
            let ok = !s.value.is_empty()
                && s.value
                    .bytes()
                    .all(|c| (0x21..0x7f).contains(&c) && c != b'"' && c != b'\\');
            if !ok {
                d.at(
                    &s.referenced,
                    format!(
                        "rule `{rule}`: bad scope `{}`: one scope token, printable ASCII without \
                         spaces, `\"` or `\\`",
                        s.value
                    ),
                );
            }
            scopes.push(s.value.as_str().into());
        }
        let mut claims: Vec<(Box<str>, ClaimValue)> = Vec::new();
        for (k, v) in r.claims.map(|c| c.0).unwrap_or_default() {
            if is_key {
                d.at(
                    &k.referenced,
                    format!(
                        "rule `{rule}`: credential `{}` is an API key, which carries no claims",
                        cred.value
                    ),
                );
                break;
            }
            if k.value.is_empty() {
                d.at(&k.referenced, format!("rule `{rule}`: empty claim name"));
            }
            let value = match v.value {
                ClaimValueFile::Bool(b) => ClaimValue::Bool(b),
                ClaimValueFile::Integer(i) => ClaimValue::Integer(i),
                ClaimValueFile::Float(f) if f.fract() == 0.0 && f.abs() < 9.2e18 => {
                    ClaimValue::Integer(f as i64)
                }
                ClaimValueFile::Float(f) => ClaimValue::Float(f),
                ClaimValueFile::String(s) => ClaimValue::String(s.into()),
            };
            b.claims.insert(k.value.as_str().into());
            claims.push((k.value.into(), value));
        }
        Some(Requirement::new(
            index,
            b.name.clone(),
            scopes.into(),
            claims.into(),
        ))
    }

    /// Build the verifiers.
    pub(super) fn build(self) -> Credentials {
        Credentials::new(
            self.list
                .into_iter()
                .map(|b| {
                    let verifier = match b.spec {
                        Spec::Jwt { mut config, keys } => {
                            config.kept_claims = b.claims.into_iter().collect();
                            Verifier::Jwt(JwtVerifier::new(config, keys))
                        }
                        Spec::ApiKey(keys) => Verifier::ApiKey(keys),
                    };
                    let mut c = Credential::new(&b.name, verifier).bound_subjects(b.bound_subjects);
                    if let Some(id) = b.bound_to {
                        c = c.bound_to(id);
                    }
                    if let Some(what) = b.bind_on_first_use {
                        c = c.bind_on_first_use(what);
                    }
                    c
                })
                .collect(),
        )
    }
}

/// `jwksUrl` (and its `caFile`): checked now, fetched by the refresher once in force.
fn jwks_url(
    d: &mut Diagnostics,
    cname: &str,
    url: &Spanned<String>,
    ca: Option<&Spanned<String>>,
) -> Option<Keys> {
    let parsed = match crate::credentials::HttpsUrl::parse(&url.value) {
        Ok(u) => Some(u),
        Err(e) => {
            d.at(&url.referenced, format!("credential `{cname}`: {e}"));
            None
        }
    };
    let ca_path = match ca {
        Some(ca) => Some(absolute(d, cname, "caFile", ca)?),
        None => None,
    };
    match crate::credentials::JwksUrl::new(parsed?, ca_path.as_deref()) {
        Ok(j) => Some(Keys::Url(Arc::new(j))),
        Err(e) => {
            let at = ca.map_or(&url.referenced, |c| &c.referenced);
            d.at(at, format!("credential `{cname}`: {e}"));
            None
        }
    }
}
