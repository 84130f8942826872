//! What a rule matches in a request: path patterns and methods.
//!
//! A path pattern is a `/`-separated list of segments:
//! - a literal segment matches itself, byte for byte;
//! - `*` or `{name}` matches exactly one non-empty segment (the name only documents);
//! - `**`, only as the last segment, matches the rest: zero or more segments, with or without a
//!   trailing slash.
//!
//! A trailing slash is significant (RFC 3986 makes `/a` and `/a/` different resources):
//! `/v1/items` does not match `/v1/items/`, and `/v1/items/` does not match `/v1/items`. `/` is
//! the root only. Paths reach the matcher normalised by the HTTP layer: no dot segments, no
//! empty segments, unreserved characters percent-decoded and other percent-encodings in upper
//! case. Patterns must be written in that form, so a pattern that could never match is an error.
//!
//! Wildcards never match a segment holding an encoded `/` or `\` (`%2F`, `%5C`) or a raw `\`:
//! an upstream that decodes them before routing would see more segments than the policy did.
//! Literal segments can name such segments explicitly.

use std::{fmt, str::FromStr};

/// A parsed path pattern.
#[derive(Debug, Clone)]
pub(super) struct PathPattern {
    text: Box<str>,
    segments: Box<[Segment]>,
    end: End,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Segment {
    Literal(Box<str>),
    /// `*` or `{name}`.
    Param,
}

/// How a pattern ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    /// The path ends after the last segment.
    Exact,
    /// The path ends after the last segment, with a `/`.
    Slash,
    /// `**`: anything may follow.
    Rest,
}

// === impl PathPattern ===

impl PathPattern {
    pub(super) fn as_str(&self) -> &str {
        &self.text
    }

    pub(super) fn segments(&self) -> &[Segment] {
        &self.segments
    }

    pub(super) fn end(&self) -> End {
        self.end
    }

    /// Whether a normalised path matches. The reference for the compiled index, and what
    /// `explain` reports per pattern.
    pub(super) fn matches(&self, path: &str) -> bool {
        let Some(path) = NormalPath::new(path) else {
            return false;
        };
        let mut rest = path.body;
        for seg in &self.segments {
            let Some((s, tail)) = next_segment(rest) else {
                return false;
            };
            let ok = match seg {
                Segment::Literal(l) => **l == *s,
                Segment::Param => wildcard_ok(s),
            };
            if !ok {
                return false;
            }
            rest = tail;
        }
        match self.end {
            End::Rest => wildcard_ok(rest),
            End::Exact => rest.is_empty() && !path.trailing_slash,
            End::Slash => rest.is_empty() && path.trailing_slash,
        }
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for PathPattern {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text.contains('?') {
            return Err("`?` starts a query: constrain it with `query`".into());
        }
        if text.contains('#') {
            return Err("`#` starts a fragment, which is never sent".into());
        }
        let Some(body) = text.strip_prefix('/') else {
            return Err("must start with `/`".into());
        };
        let (body, trailing_slash) = match body.strip_suffix('/') {
            Some(b) if !b.is_empty() => (b, true),
            // `//` is `/` plus an empty segment.
            Some(_) => return Err("empty segment (`//`)".into()),
            None => (body, false),
        };
        let mut segments = Vec::new();
        let mut end = if trailing_slash {
            End::Slash
        } else {
            End::Exact
        };
        if !body.is_empty() {
            let pieces: Vec<&str> = body.split('/').collect();
            for (i, piece) in pieces.iter().enumerate() {
                let last = i + 1 == pieces.len();
                match *piece {
                    "" => return Err("empty segment (`//`)".into()),
                    "." | ".." => {
                        return Err(format!(
                            "`{piece}` segments are resolved before matching, so never match"
                        ));
                    }
                    "**" if last && !trailing_slash => end = End::Rest,
                    "**" => return Err("`**` must be the last segment".into()),
                    "*" => segments.push(Segment::Param),
                    p if p.starts_with('{') || p.ends_with('}') => {
                        param_name(p)?;
                        segments.push(Segment::Param);
                    }
                    p => segments.push(Segment::Literal(literal(p)?.into())),
                }
            }
        }
        Ok(Self {
            text: text.into(),
            segments: segments.into(),
            end,
        })
    }
}

/// Check a `{name}` segment.
fn param_name(p: &str) -> Result<(), String> {
    let name = p
        .strip_prefix('{')
        .and_then(|p| p.strip_suffix('}'))
        .ok_or_else(|| format!("`{p}`: `{{name}}` must be a whole segment"))?;
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!(
            "`{p}`: a parameter name is a letter or `_`, then letters, digits or `_`"
        ));
    }
    Ok(())
}

/// Check a literal segment is in the normal form the HTTP layer produces.
fn literal(p: &str) -> Result<&str, String> {
    if p.contains("**") {
        return Err(format!("`{p}`: `**` must be a whole segment"));
    }
    if p.contains('*') {
        return Err(format!(
            "`{p}`: `*` matches a whole segment; partial wildcards are not supported"
        ));
    }
    pchars(p)?;
    Ok(p)
}

/// Check a segment has only path characters, with percent-encodings in normal form (upper
/// case, never an unreserved character).
fn pchars(p: &str) -> Result<(), String> {
    let b = p.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit));
            let Some(hex) = hex else {
                return Err(format!("`{p}`: `%` must start a percent-encoding (`%2F`)"));
            };
            if hex.iter().any(u8::is_ascii_lowercase) {
                return Err(format!(
                    "`{p}`: write percent-encodings in upper case (`%{}`)",
                    std::str::from_utf8(hex)
                        .unwrap_or_default()
                        .to_ascii_uppercase()
                ));
            }
            let byte = (hex_value(hex[0]) << 4) | hex_value(hex[1]);
            if is_unreserved(byte) {
                return Err(format!(
                    "`{p}`: `%{}` is decoded before matching: write `{}`",
                    std::str::from_utf8(hex).unwrap_or_default(),
                    char::from(byte)
                ));
            }
            i += 3;
            continue;
        }
        if !(is_unreserved(c) || b"!$&'()*+,;=:@".contains(&c)) {
            return Err(format!(
                "`{p}`: `{}` must be percent-encoded",
                p[i..].chars().next().unwrap_or_default()
            ));
        }
        i += 1;
    }
    Ok(())
}

fn hex_value(h: u8) -> u8 {
    match h {
        b'0'..=b'9' => h - b'0',
        b'a'..=b'f' => h - b'a' + 10,
        _ => h - b'A' + 10,
    }
}

fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

// === paths ===

/// A request path split for matching: `body` is the path without its leading `/` and without
/// a trailing `/`, so `""` means no segment.
#[derive(Debug, Clone, Copy)]
pub(super) struct NormalPath<'a> {
    pub body: &'a str,
    pub trailing_slash: bool,
}

impl<'a> NormalPath<'a> {
    /// Split a path, or `None` if it is not normalised as far as matching cares: it must start
    /// with `/` and have no empty, `.` or `..` segment. Cheap: runs on every request.
    pub(super) fn new(path: &'a str) -> Option<Self> {
        let body = path.strip_prefix('/')?;
        let (body, trailing_slash) = match body.strip_suffix('/') {
            Some(b) => (b, true),
            None => (body, false),
        };
        if body.is_empty() {
            // `/` is the root; `//` is an empty segment.
            return (!trailing_slash).then_some(Self {
                body,
                trailing_slash,
            });
        }
        if body
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return None;
        }
        Some(Self {
            body,
            trailing_slash,
        })
    }
}

/// The first segment of a body and what follows it.
pub(super) fn next_segment(rest: &str) -> Option<(&str, &str)> {
    if rest.is_empty() {
        return None;
    }
    Some(match rest.split_once('/') {
        Some((s, tail)) => (s, tail),
        None => (rest, ""),
    })
}

/// Whether a wildcard may match this text: no encoded `/` or `\`, no raw `\`.
pub(super) fn wildcard_ok(s: &str) -> bool {
    let b = s.as_bytes();
    if !b.contains(&b'%') && !b.contains(&b'\\') {
        return true;
    }
    if b.contains(&b'\\') {
        return false;
    }
    !b.windows(3).any(|w| {
        w[0] == b'%'
            && ((w[1] == b'2' && (w[2] | 0x20) == b'f') || (w[1] == b'5' && (w[2] | 0x20) == b'c'))
    })
}

// === methods ===

/// The methods a rule allows.
#[derive(Debug, Clone, Default)]
pub(super) struct Methods {
    any: bool,
    /// Bits of `KNOWN` methods.
    known: u16,
    /// Extension methods, in file order.
    other: Box<[Box<str>]>,
}

/// Methods of RFC 9110 and RFC 5789, by bit.
const KNOWN: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// A request method, looked up once per request.
#[derive(Debug, Clone, Copy)]
pub(super) enum Method<'a> {
    Known(u8),
    Other(&'a str),
}

impl<'a> Method<'a> {
    pub(super) fn new(m: &'a str) -> Self {
        match KNOWN.iter().position(|k| *k == m) {
            Some(i) => Method::Known(i as u8),
            None => Method::Other(m),
        }
    }
}

impl Methods {
    /// Add one `methods` entry.
    pub(super) fn add(&mut self, m: &str) -> Result<(), String> {
        if m == "*" {
            self.any = true;
            return Ok(());
        }
        let token = !m.is_empty()
            && m.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            return Err(format!("`{m}` is not a method"));
        }
        if m.bytes().any(|b| b.is_ascii_lowercase()) {
            return Err(format!(
                "`{m}`: methods are case-sensitive: write `{}`",
                m.to_ascii_uppercase()
            ));
        }
        match Method::new(m) {
            Method::Known(bit) => self.known |= 1 << bit,
            Method::Other(_) => {
                if !self.other.iter().any(|o| **o == *m) {
                    let mut other = std::mem::take(&mut self.other).into_vec();
                    other.push(m.into());
                    self.other = other.into();
                }
            }
        }
        Ok(())
    }

    pub(super) fn contains(&self, m: Method<'_>) -> bool {
        self.any
            || match m {
                Method::Known(bit) => self.known & (1 << bit) != 0,
                Method::Other(m) => self.other.iter().any(|o| **o == *m),
            }
    }
}

impl fmt::Display for Methods {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.any {
            return f.write_str("*");
        }
        let known = KNOWN
            .iter()
            .enumerate()
            .filter(|(i, _)| self.known & (1 << i) != 0)
            .map(|(_, m)| *m);
        let all: Vec<&str> = known.chain(self.other.iter().map(|o| &**o)).collect();
        f.write_str(&all.join(", "))
    }
}
