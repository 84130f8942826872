//! Request forms that an upstream may read differently from the rule that matched them:
//! look-alikes of the headers and query parameters a rule constrains, headers that override
//! the method or URL, and the `Host` a rule's `hosts` names.
//!
//! Enforces, for each rule considered: a constrained header or parameter is also absent in
//! every form an upstream framework might merge with it (case, `_`/`-` and other punctuation,
//! `;` separators, percent-encoded names, repeats); an override header appears only when the
//! rule lists it in `overrides`, and then names a method or path the rule itself allows; a
//! rule with `hosts` sees a `Host` it names. Reports each refusal as an [`Evasion`], which
//! the decision carries as its reason.

use std::fmt;

use super::{
    matcher::Headers,
    pattern::{Method, Methods, PathPattern},
};

/// Why a rule that otherwise matched refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evasion {
    /// A header named like one the rule constrains, differing in punctuation (`x_tenant` for
    /// `x-tenant`), or the constrained header repeated.
    LookalikeHeader,
    /// A query parameter the rule constrains, also present in another form: another case,
    /// percent-encoded, after a `;`, or repeated.
    LookalikeQuery,
    /// A method- or URL-override header the rule does not list in `overrides`, or one whose
    /// value the rule would not allow as the request's own method or path.
    MethodOverride,
    /// The request's `Host` is none of the rule's `hosts`.
    HostNotAllowed,
}

impl Evasion {
    pub const fn as_str(self) -> &'static str {
        match self {
            Evasion::LookalikeHeader => "lookalike header",
            Evasion::LookalikeQuery => "lookalike query parameter",
            Evasion::MethodOverride => "method override",
            Evasion::HostNotAllowed => "host not allowed",
        }
    }
}

impl fmt::Display for Evasion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an override header replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Overrides {
    Method,
    Url,
}

/// Headers that make common frameworks act on another method or URL than the request line's.
/// Any of them is refused unless the rule lists it in `overrides`:
/// - `x-http-method-override`: Rails (`Rack::MethodOverride`), Symfony and Laravel
///   (`Request::getMethod` when overrides are enabled), Express `method-override`, ASP.NET
///   Core `UseHttpMethodOverride`, Google APIs;
/// - `x-http-method`: OData and Microsoft services (SharePoint, ASP.NET Web API handlers);
/// - `x-method-override`: Express `method-override` and several API gateways' conventions;
/// - `x-original-method`: set by rewriting front ends (IIS ARR, ASP.NET Core forwarded
///   headers) and read back by the applications behind them;
/// - `x-original-url`, `x-rewrite-url`: Symfony and Zend/Laminas (IIS URL rewrite), which
///   route by them instead of the request line;
/// - `x-override-url`: the same trick under another name, honoured by some gateways.
const OVERRIDE_HEADERS: [(&str, Overrides); 7] = [
    ("x-http-method-override", Overrides::Method),
    ("x-http-method", Overrides::Method),
    ("x-method-override", Overrides::Method),
    ("x-original-method", Overrides::Method),
    ("x-original-url", Overrides::Url),
    ("x-rewrite-url", Overrides::Url),
    ("x-override-url", Overrides::Url),
];

/// Whether `name` (lower case) is one of the override headers, as written in the table.
pub(super) fn is_override_header(name: &str) -> bool {
    OVERRIDE_HEADERS.iter().any(|(known, _)| *known == name)
}

/// The override headers, for a diagnostic.
pub(super) fn override_header_names() -> String {
    OVERRIDE_HEADERS.map(|(name, _)| name).join(", ")
}

/// Whether the override headers of a request are all ones the rule lists in `overrides`,
/// each with a value the rule allows as the request's own method or path.
pub(super) fn overrides_ok<H: Headers + ?Sized>(
    headers: &H,
    listed: &[Box<str>],
    methods: &Methods,
    paths: &[PathPattern],
) -> Result<(), Evasion> {
    for (name, value) in headers.pairs() {
        let Some(&(known, kind)) = OVERRIDE_HEADERS
            .iter()
            .find(|(known, _)| same_letters(name, known))
        else {
            continue;
        };
        // Listed by its own name only: a look-alike form is never what the rule meant.
        if !name.eq_ignore_ascii_case(known) || !listed.iter().any(|l| **l == *known) {
            return Err(Evasion::MethodOverride);
        }
        let allowed = match kind {
            Overrides::Method => std::str::from_utf8(value)
                .is_ok_and(|m| !m.is_empty() && methods.contains(Method::new(m.trim()))),
            Overrides::Url => {
                override_path(value).is_some_and(|p| paths.iter().any(|pat| pat.matches(&p)))
            }
        };
        if !allowed {
            return Err(Evasion::MethodOverride);
        }
    }
    Ok(())
}

/// The normalised path of an override URL (origin form; its query is not matched).
fn override_path(value: &[u8]) -> Option<String> {
    let target = value.split(|&b| b == b'?').next()?;
    crate::http::normalize_path(target).ok()
}

/// Whether `headers` carry a look-alike of the constrained header `name` (lower case): a
/// name with the same letters and digits in other punctuation, or `name` itself twice.
pub(super) fn lookalike_header<H: Headers + ?Sized>(headers: &H, name: &str) -> bool {
    let mut exact = 0;
    for (n, _) in headers.pairs() {
        if n.eq_ignore_ascii_case(name) {
            exact += 1;
        } else if same_letters(n, name) {
            return true;
        }
    }
    exact > 1
}

/// Whether `query` carries the constrained parameter `key` in more than its one plain form:
/// a name equal to `key` ignoring case and percent-encoding but not written as `key`, a pair
/// after a `;` (which some frameworks split on, as they do on `&`), or `key` repeated.
pub(super) fn lookalike_query(query: Option<&str>, key: &str) -> bool {
    let Some(query) = query else {
        return false;
    };
    let mut plain = 0;
    for pair in query.split('&') {
        for (j, part) in pair.split(';').enumerate() {
            let name = part.split_once('=').map_or(part, |(k, _)| k);
            let written_as_key = name == key;
            if !written_as_key && !decoded_eq_ignore_case(name, key) {
                continue;
            }
            if !written_as_key || j > 0 {
                return true;
            }
            plain += 1;
        }
    }
    plain > 1
}

/// Whether `host` (a `Host` value: name or IP literal, maybe a port) is one of `patterns`
/// (lower case; `*.example.com` stands for any name below `example.com`). The port is not
/// matched here; non-ASCII names never match (IDNA is not applied).
pub(super) fn host_allowed(host: &[u8], patterns: &[Box<str>]) -> bool {
    let Ok(host) = std::str::from_utf8(host) else {
        return false;
    };
    if !host.is_ascii() {
        return false;
    }
    let name = strip_port(host);
    let name = name.strip_suffix('.').unwrap_or(name);
    patterns.iter().any(|p| match p.strip_prefix("*.") {
        // At least one label, then `.parent`.
        Some(parent) => {
            name.len() > parent.len() + 1
                && name[name.len() - parent.len()..].eq_ignore_ascii_case(parent)
                && name.as_bytes()[name.len() - parent.len() - 1] == b'.'
        }
        None => p.eq_ignore_ascii_case(name),
    })
}

/// A `Host` value without its port: `[::1]:8080` gives `[::1]`, `api:80` gives `api`.
pub(super) fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

/// Whether a host pattern is well-formed: a name of letters, digits, `-` and `.` (lower
/// case), optionally after `*.`, or an IP literal (`[v6]` in brackets).
pub(super) fn valid_host_pattern(p: &str) -> bool {
    let name = p.strip_prefix("*.").unwrap_or(p);
    if let Some(v6) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        return !p.starts_with('*') && v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// Same letters and digits, ignoring case and every other character.
fn same_letters(a: &str, b: &str) -> bool {
    fn letters(s: &str) -> impl Iterator<Item = u8> + '_ {
        s.bytes()
            .filter(u8::is_ascii_alphanumeric)
            .map(|b| b.to_ascii_lowercase())
    }
    letters(a).eq(letters(b))
}

/// `raw` percent-decoded (`+` as space); a `%` not followed by two hex digits stands for
/// itself.
fn decoded(raw: &str) -> impl Iterator<Item = u8> + '_ {
    let raw = raw.as_bytes();
    let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
    let mut i = 0;
    std::iter::from_fn(move || {
        let byte = match *raw.get(i)? {
            b'+' => b' ',
            b'%' => match (hex(raw.get(i + 1)), hex(raw.get(i + 2))) {
                (Some(h), Some(l)) => {
                    i += 2;
                    (h * 16 + l) as u8
                }
                _ => b'%',
            },
            b => b,
        };
        i += 1;
        Some(byte)
    })
}

/// Whether `raw`, percent-decoded, equals `want` ignoring ASCII case.
fn decoded_eq_ignore_case(raw: &str, want: &str) -> bool {
    decoded(raw)
        .map(|b| b.to_ascii_lowercase())
        .eq(want.bytes().map(|b| b.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests;
