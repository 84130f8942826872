//! Request-target parsing and path normalisation (RFC 9112 §3.2, RFC 3986).
//!
//! Enforces: the path policy matches is the path the upstream receives. The target is reduced
//! to one canonical spelling: unreserved characters decoded, other escapes kept with upper-case
//! hex, empty and dot segments removed. Spellings that upstream servers resolve in different
//! ways are refused instead of normalised: encoded `/`, `\`, `.` and NUL, double encoding
//! (`%252e`), a literal `\`, path parameters (`;`), escapes that are not valid UTF-8, raw
//! non-ASCII bytes.

use thiserror::Error;

use super::head::is_control;

/// Why a request target was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TargetError {
    #[error("empty request target")]
    Empty,
    /// RFC 9112 §3.2: the target never carries a fragment; servers disagree on whether `#`
    /// ends the path.
    #[error("fragment in request target")]
    Fragment,
    /// `OPTIONS *`: it names the server, not a resource policy could match.
    #[error("asterisk-form request target")]
    AsteriskForm,
    /// Neither origin-form (`/path`) nor `http://` absolute-form: authority-form, or garbage.
    #[error("request target is not origin-form or absolute-form")]
    UnsupportedForm,
    #[error("absolute-form request target with a scheme other than http")]
    UnsupportedScheme,
    /// `http://user@host/`: credentials in the target are deprecated (RFC 9110 §4.2.4) and
    /// confuse host matching.
    #[error("user info in request target")]
    UserInfo,
    #[error("invalid authority in request target")]
    BadAuthority,
    /// Windows servers and some frameworks treat `\` as `/`.
    #[error("backslash in path")]
    Backslash,
    /// Servlet containers strip `;params` from each segment (so `/a;x/..;/b` reaches the
    /// application as `/b`), others keep them.
    #[error("path parameter (;) in path")]
    PathParameter,
    #[error("control character in request target")]
    Control,
    #[error("non-ASCII byte in request target")]
    NonAscii,
    #[error("character {} not allowed in request target", char::from(*.byte))]
    InvalidChar { byte: u8 },
    #[error("malformed percent-encoding")]
    MalformedEscape,
    /// `%2F`, `%5C`, `%2E`, `%00`: only ever sent to hide a segment separator, a dot segment
    /// or a string terminator from one parser and not another.
    #[error("forbidden percent-encoded byte %{byte:02X} in path")]
    ForbiddenEscape { byte: u8 },
    /// `%25` followed by two hex digits, as in `%252e`: one decoding gives `%2e`, two give
    /// `.`, and which the upstream does is its own business.
    #[error("double percent-encoding in path")]
    DoubleEscape,
    /// Includes overlong forms such as `%C0%AE` (an encoded `.`) that lax decoders accept.
    #[error("percent-encoded bytes are not valid UTF-8")]
    InvalidUtf8Escape,
    /// A `..` segment with no segment left to remove.
    #[error("path climbs above the root")]
    AboveRoot,
}

/// A request target split into what the request needs.
#[derive(Debug)]
pub(super) struct Target<'a> {
    /// The authority of an absolute-form target, as sent.
    pub(super) authority: Option<&'a [u8]>,
    /// The normalised path.
    pub(super) path: String,
    /// The query, verbatim, without its `?`.
    pub(super) query: Option<String>,
}

/// Parses a request target. Accepts origin-form, and `http://` absolute-form (RFC 9112 §3.2.2:
/// the form a client sends to a proxy), whose authority the caller must check against `Host`.
pub(super) fn parse_target(raw: &[u8]) -> Result<Target<'_>, TargetError> {
    if raw.is_empty() {
        return Err(TargetError::Empty);
    }
    if raw == b"*" {
        return Err(TargetError::AsteriskForm);
    }
    if raw.contains(&b'#') {
        return Err(TargetError::Fragment);
    }
    let (authority, rest) = if raw.starts_with(b"/") {
        (None, raw)
    } else if let Some(after) = strip_prefix_ignore_case(raw, b"http://") {
        let end = after
            .iter()
            .position(|&b| b == b'/' || b == b'?')
            .unwrap_or(after.len());
        let authority = &after[..end];
        if authority.contains(&b'@') {
            return Err(TargetError::UserInfo);
        }
        if !is_authority(authority) {
            return Err(TargetError::BadAuthority);
        }
        (Some(authority), &after[end..])
    } else if has_scheme(raw) {
        return Err(TargetError::UnsupportedScheme);
    } else {
        return Err(TargetError::UnsupportedForm);
    };
    let (path, query) = match rest.iter().position(|&b| b == b'?') {
        Some(at) => (&rest[..at], Some(&rest[at + 1..])),
        None => (rest, None),
    };
    Ok(Target {
        authority,
        // RFC 9112 §3.2.1: an absolute-form target with an empty path means "/".
        path: if path.is_empty() {
            String::from("/")
        } else {
            normalize_path(path)?
        },
        query: query.map(check_query).transpose()?.map(String::from),
    })
}

/// Normalises an absolute path (it must start with `/`): decodes percent-encoded unreserved
/// characters, upper-cases the hex of the other escapes, collapses empty segments and removes
/// dot segments (RFC 3986 §5.2.4). A trailing slash is kept; `/a/..` and `/a/.` become `/`
/// and `/a/`.
pub fn normalize_path(raw: &[u8]) -> Result<String, TargetError> {
    let Some(segments) = raw.strip_prefix(b"/") else {
        return Err(TargetError::UnsupportedForm);
    };
    let mut out = String::with_capacity(raw.len());
    let mut trailing_slash = false;
    for segment in segments.split(|&b| b == b'/') {
        // An empty or dot segment last in the path leaves a directory: `/a/` or `/a/b/..`.
        trailing_slash = true;
        match segment {
            b"" | b"." => {}
            b".." => {
                let parent = out.rfind('/').ok_or(TargetError::AboveRoot)?;
                out.truncate(parent);
            }
            _ => {
                trailing_slash = false;
                out.push('/');
                push_segment(segment, &mut out)?;
            }
        }
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Appends one path segment (no `/`) in canonical form.
fn push_segment(segment: &[u8], out: &mut String) -> Result<(), TargetError> {
    let mut i = 0;
    while let Some(&b) = segment.get(i) {
        i += 1;
        match b {
            b'%' => {
                let byte = escape_at(segment, i)?;
                i += 2;
                match byte {
                    b'/' | b'\\' | b'.' | 0 => return Err(TargetError::ForbiddenEscape { byte }),
                    b'%' if escape_at(segment, i).is_ok() => return Err(TargetError::DoubleEscape),
                    // `.` is unreserved too, but refused above.
                    b'-' | b'_' | b'~' => out.push(char::from(byte)),
                    _ if byte.is_ascii_alphanumeric() => out.push(char::from(byte)),
                    0x80.. => i = push_utf8_escapes(segment, i, byte, out)?,
                    _ => push_escape(byte, out),
                }
            }
            b'\\' => return Err(TargetError::Backslash),
            b';' => return Err(TargetError::PathParameter),
            _ if is_path_char(b) => out.push(char::from(b)),
            _ => return Err(char_error(b)),
        }
    }
    Ok(())
}

/// Checks the percent-encoded UTF-8 sequence that starts with `lead` (already decoded) and
/// continues at `segment[i..]`, appends it still encoded, and returns the index after it.
fn push_utf8_escapes(
    segment: &[u8],
    mut i: usize,
    lead: u8,
    out: &mut String,
) -> Result<usize, TargetError> {
    // Lead bytes C0, C1 and F5-FF never start valid UTF-8; continuation bytes never lead.
    let width = match lead {
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        _ => return Err(TargetError::InvalidUtf8Escape),
    };
    let mut bytes = [lead, 0, 0, 0];
    for byte in &mut bytes[1..width] {
        if segment.get(i) != Some(&b'%') {
            return Err(TargetError::InvalidUtf8Escape);
        }
        *byte = escape_at(segment, i + 1)?;
        i += 3;
    }
    // The standard library's validation also refuses overlong forms and surrogates.
    std::str::from_utf8(&bytes[..width]).map_err(|_| TargetError::InvalidUtf8Escape)?;
    for &byte in &bytes[..width] {
        push_escape(byte, out);
    }
    Ok(i)
}

/// The byte encoded by the two hex digits at `s[i..i + 2]`.
fn escape_at(s: &[u8], i: usize) -> Result<u8, TargetError> {
    match s.get(i..i + 2) {
        Some(&[hi, lo]) => match (hex_value(hi), hex_value(lo)) {
            (Some(hi), Some(lo)) => Ok(hi << 4 | lo),
            _ => Err(TargetError::MalformedEscape),
        },
        _ => Err(TargetError::MalformedEscape),
    }
}

fn hex_value(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

fn push_escape(byte: u8, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(byte >> 4)]));
    out.push(char::from(HEX[usize::from(byte & 0xf)]));
}

/// `pchar` of RFC 3986 §3.3 other than `%` (escapes) and `;` (refused): unreserved,
/// sub-delims, `:` and `@`.
fn is_path_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,=:@".contains(&b)
}

/// The query is forwarded verbatim and never matched against the path, so any visible ASCII
/// is allowed (clients send `{`, `|`, `[` unencoded), but escapes must be well-formed:
/// upstreams decode malformed ones differently.
fn check_query(query: &[u8]) -> Result<&str, TargetError> {
    let mut i = 0;
    while let Some(&b) = query.get(i) {
        i += 1;
        match b {
            b'%' => {
                escape_at(query, i)?;
                i += 2;
            }
            b'!'..=b'~' => {}
            _ => return Err(char_error(b)),
        }
    }
    // Every byte was checked to be ASCII.
    std::str::from_utf8(query).map_err(|_| TargetError::NonAscii)
}

fn char_error(b: u8) -> TargetError {
    if is_control(b) {
        TargetError::Control
    } else if !b.is_ascii() {
        TargetError::NonAscii
    } else {
        TargetError::InvalidChar { byte: b }
    }
}

/// `uri-host [ ":" port ]` (RFC 3986 §3.2), restricted to what API hosts use: a reg-name of
/// letters, digits, `-`, `.`, `_` and `~`, or an IPv6 literal; no percent-encoding, no
/// sub-delims. The port, if present, is 1 to 5 digits up to 65535.
pub(super) fn is_authority(raw: &[u8]) -> bool {
    let port = if let Some(literal) = raw.strip_prefix(b"[") {
        let Some(close) = literal.iter().position(|&b| b == b']') else {
            return false;
        };
        let (address, port) = (&literal[..close], &literal[close + 1..]);
        if address.is_empty()
            || !address
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return false;
        }
        port
    } else {
        let end = raw.iter().position(|&b| b == b':').unwrap_or(raw.len());
        let (name, port) = raw.split_at(end);
        if name.is_empty()
            || !name
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
        {
            return false;
        }
        port
    };
    match port {
        [] => true,
        [b':', digits @ ..] => {
            (1..=5).contains(&digits.len())
                && digits.iter().all(u8::is_ascii_digit)
                && digits
                    .iter()
                    .fold(0_u32, |n, d| n * 10 + u32::from(d - b'0'))
                    <= u32::from(u16::MAX)
        }
        _ => false,
    }
}

/// `scheme ":" "//"` (RFC 3986 §3.1).
fn has_scheme(raw: &[u8]) -> bool {
    let Some(colon) = raw.iter().position(|&b| b == b':') else {
        return false;
    };
    let scheme = &raw[..colon];
    scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        && raw[colon..].starts_with(b"://")
}

fn strip_prefix_ignore_case<'a>(raw: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let head = raw.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &raw[prefix.len()..])
}

#[cfg(test)]
mod tests;
