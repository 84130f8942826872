//! What requests and responses share: finding the end of a head under [`Limits`], the rules for
//! a field line, and the owned [`Header`].
//!
//! httparse tokenises the head but tolerates bare LF line endings and has one error for every
//! bad field line. The scanner here runs first: it refuses bare CR and bare LF, enforces the
//! limits while the head is still incomplete and hands httparse exactly one complete head. When
//! httparse refuses a field line, [`diagnose_fields`] names the rule it broke.

use std::ops::Range;

use bytes::Bytes;
use thiserror::Error;

use super::Limits;

/// A head whose lines or fields break RFC 9112 §2 or §5.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HeadError {
    #[error("start line longer than {limit} bytes")]
    StartLineTooLong { limit: usize },
    #[error("head larger than {limit} bytes")]
    HeadTooLarge { limit: usize },
    #[error("more than {limit} header fields")]
    TooManyHeaders { limit: usize },
    /// Some parsers end a line at LF, others only at CRLF: accepting both is a desync.
    #[error("line ends in a bare LF")]
    BareLf,
    /// Some parsers treat a lone CR as a line end, others as data.
    #[error("bare CR in head")]
    BareCr,
    /// A field line that starts with whitespace: obs-fold (RFC 9112 §5.2), or whitespace
    /// before the first field (§2.2). Either may be read as part of the previous line or as a
    /// field of its own.
    #[error("field line starts with whitespace (obs-fold)")]
    ObsFold,
    #[error("field line without a colon: {line}")]
    MissingColon { line: String },
    #[error("empty header name")]
    EmptyHeaderName,
    /// RFC 9112 §5.1: a server MUST reject whitespace between field name and colon, since
    /// lenient parsers strip it and obey a field the strict ones ignore.
    #[error("whitespace between header name and colon: {name}")]
    WhitespaceBeforeColon { name: String },
    #[error("control character in header name: {name}")]
    ControlInHeaderName { name: String },
    #[error("header name is not a token: {name}")]
    NonTokenHeaderName { name: String },
    #[error("control character in value of header {name}")]
    ControlInHeaderValue { name: String },
    /// A valid token that differs from a header we act on only in case-insensitive
    /// punctuation (`Transfer_Encoding`, `Content--Length`). CGI-style gateways map `_` to `-`,
    /// so the upstream may obey a framing field we did not see.
    #[error("header name {name} imitates {imitates}")]
    LookalikeHeaderName {
        name: String,
        imitates: &'static str,
    },
}

/// One header field as received: the name as sent, the value without surrounding whitespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Always a token: only the parsers in this module tree build headers.
    pub(super) name: Bytes,
    pub(super) value: Bytes,
}

// === impl Header ===

impl Header {
    /// The field name, in the case it was sent.
    pub fn name(&self) -> &str {
        // The parsers build headers only from names httparse accepted, and those are tokens:
        // ASCII.
        std::str::from_utf8(&self.name).expect("header names are ASCII tokens")
    }

    /// The field value without leading or trailing whitespace. It may hold obs-text (bytes
    /// 0x80-0xFF) but no control character other than HTAB.
    pub fn value(&self) -> &[u8] {
        &self.value
    }
}

/// Where a complete head ends, as found by [`Scanner::scan`].
pub(super) struct Scanned {
    /// Bytes of the head, including any empty lines before the start line and the final CRLF.
    pub(super) len: usize,
    /// Number of field lines.
    pub(super) fields: usize,
}

/// Header slots httparse gets on the stack; a head with more fields borrows them from the heap.
/// Browsers send about 20.
pub(super) const STACK_HEADERS: usize = 32;

/// Why httparse did not parse a head the scanner found complete.
pub(super) enum Unparsed {
    /// httparse refused it: the caller diagnoses why.
    Invalid(httparse::Error),
    /// httparse saw it end elsewhere, or not at all: the two parsers disagree, a bug.
    Disagreed,
}

impl Unparsed {
    /// The text of [`Unparsed::Disagreed`] errors.
    pub(super) const DISAGREED: &str =
        "httparse and the head scanner disagree on the end of the head";

    /// `status`, as httparse returned it for a head of `len` bytes.
    pub(super) fn check(status: httparse::Result<usize>, len: usize) -> Result<(), Self> {
        match status {
            Ok(httparse::Status::Complete(end)) if end == len => Ok(()),
            Ok(_) => Err(Self::Disagreed),
            Err(error) => Err(Self::Invalid(error)),
        }
    }
}

impl Scanned {
    /// Runs `parse` with one empty httparse header slot per field line: on the stack when
    /// they fit, so a common head costs no allocation for them.
    pub(super) fn with_slots<'b, T>(
        &self,
        parse: impl FnOnce(&mut [httparse::Header<'b>]) -> T,
    ) -> T {
        let mut stack = [httparse::EMPTY_HEADER; STACK_HEADERS];
        if self.fields <= STACK_HEADERS {
            parse(&mut stack[..self.fields])
        } else {
            parse(&mut vec![httparse::EMPTY_HEADER; self.fields])
        }
    }
}

/// Where the search for the end of a head stopped: fed the same buffer again with more bytes
/// appended, [`Scanner::scan`] resumes there, so a head trickled one byte per read costs
/// linear work, not a rescan from its first byte each time.
#[derive(Debug, Default)]
pub(super) struct Scanner {
    /// Start of the line being scanned.
    line_start: usize,
    /// Bytes of that line before this offset hold no CR or LF.
    searched: usize,
    seen_start_line: bool,
    /// Field lines complete so far.
    fields: usize,
    /// Bytes compared so far, for tests that count the work.
    #[cfg(test)]
    examined: usize,
}

// === impl Scanner ===

impl Scanner {
    /// Finds the end of the head at the start of `buf`, which must extend the buffer of the
    /// previous call (same bytes, more after them).
    ///
    /// `Ok(None)`: the head is incomplete and within the limits so far. Errors as soon as a
    /// limit is exceeded or a bare CR or LF is seen, complete or not; after an error or a
    /// complete head the scanner is spent.
    pub(super) fn scan(
        &mut self,
        buf: &[u8],
        limits: &Limits,
    ) -> Result<Option<Scanned>, HeadError> {
        loop {
            let from = self.searched.max(self.line_start);
            let window = &buf[from..];
            let found = window.iter().position(|&b| b == b'\r' || b == b'\n');
            #[cfg(test)]
            {
                self.examined += found.map_or(window.len(), |offset| offset + 1);
            }
            let Some(eol) = found.map(|offset| from + offset) else {
                self.searched = buf.len();
                return self.incomplete(buf, limits);
            };
            if buf[eol] == b'\n' {
                return Err(HeadError::BareLf);
            }
            match buf.get(eol + 1) {
                Some(b'\n') => {}
                Some(_) => return Err(HeadError::BareCr),
                None => {
                    // The CR may be the start of the line's CRLF: look at it again.
                    self.searched = eol;
                    return self.incomplete(buf, limits);
                }
            }
            let (line_start, next) = (self.line_start, eol + 2);
            if next > limits.max_head_bytes {
                return Err(HeadError::HeadTooLarge {
                    limit: limits.max_head_bytes,
                });
            }
            if eol == line_start {
                if self.seen_start_line {
                    return Ok(Some(Scanned {
                        len: next,
                        fields: self.fields,
                    }));
                }
                // RFC 9112 §2.2: a server SHOULD ignore empty lines before the request line
                // (old clients send a CRLF after a POST body). httparse skips them too, and they
                // count against `max_head_bytes`.
            } else if !self.seen_start_line {
                if eol - line_start > limits.max_request_line {
                    return Err(HeadError::StartLineTooLong {
                        limit: limits.max_request_line,
                    });
                }
                self.seen_start_line = true;
            } else {
                if matches!(buf[line_start], b' ' | b'\t') {
                    return Err(HeadError::ObsFold);
                }
                self.fields += 1;
                if self.fields > limits.max_headers {
                    return Err(HeadError::TooManyHeaders {
                        limit: limits.max_headers,
                    });
                }
            }
            self.line_start = next;
        }
    }

    /// The head is incomplete: refuse now if it can no longer fit the limits.
    fn incomplete(&self, buf: &[u8], limits: &Limits) -> Result<Option<Scanned>, HeadError> {
        let partial = &buf[self.line_start..];
        // A CR at the very end may be the start of the line's CRLF, not part of the line.
        let partial = partial.strip_suffix(b"\r").unwrap_or(partial);
        if !self.seen_start_line && partial.len() > limits.max_request_line {
            return Err(HeadError::StartLineTooLong {
                limit: limits.max_request_line,
            });
        }
        // The head ends past the end of `buf`, so it is already longer than `buf`.
        if buf.len() >= limits.max_head_bytes {
            return Err(HeadError::HeadTooLarge {
                limit: limits.max_head_bytes,
            });
        }
        Ok(None)
    }
}

/// Splits a scanned head into its start line and its field lines (CRLFs removed, the final
/// empty line dropped).
pub(super) fn lines(head: &[u8]) -> (&[u8], impl Iterator<Item = &[u8]>) {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .skip_while(|line| line.is_empty());
    let start_line = lines.next().unwrap_or_default();
    (start_line, lines.take_while(|line| !line.is_empty()))
}

/// Names the rule the first bad field line breaks, for a head httparse refused. `None` when
/// every field line is well-formed, so the fault is elsewhere.
pub(super) fn diagnose_fields<'a>(mut fields: impl Iterator<Item = &'a [u8]>) -> Option<HeadError> {
    fields.find_map(|line| check_field_line(line).err())
}

fn check_field_line(line: &[u8]) -> Result<(), HeadError> {
    if matches!(line.first(), Some(b' ' | b'\t')) {
        return Err(HeadError::ObsFold);
    }
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return Err(HeadError::MissingColon {
            line: escaped(line),
        });
    };
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if name.is_empty() {
        return Err(HeadError::EmptyHeaderName);
    }
    let trimmed = trim_ows(name);
    if trimmed.len() < name.len() && is_token(trimmed) {
        return Err(HeadError::WhitespaceBeforeColon {
            name: escaped(name),
        });
    }
    if name.iter().any(|&b| is_control(b)) {
        return Err(HeadError::ControlInHeaderName {
            name: escaped(name),
        });
    }
    if !name.iter().all(|&b| is_tchar(b)) {
        return Err(HeadError::NonTokenHeaderName {
            name: escaped(name),
        });
    }
    if value.iter().any(|&b| is_control(b) && b != b'\t') {
        return Err(HeadError::ControlInHeaderValue {
            name: escaped(name),
        });
    }
    Ok(())
}

/// Converts httparse's headers, which borrow `head`, into owned [`Header`]s sharing one copy of
/// the head.
pub(super) fn own_headers(head: &[u8], parsed: &[httparse::Header<'_>]) -> Vec<Header> {
    let copy = Bytes::copy_from_slice(head);
    parsed
        .iter()
        .map(|h| Header {
            name: copy.slice(range_in(head, h.name.as_bytes())),
            value: copy.slice(range_in(head, h.value)),
        })
        .collect()
}

/// Where `part`, a sub-slice of `whole`, lies within it.
fn range_in(whole: &[u8], part: &[u8]) -> Range<usize> {
    // httparse returns names and values that borrow the buffer it parsed, so the difference
    // of the addresses is an offset inside `whole`.
    let start = part.as_ptr() as usize - whole.as_ptr() as usize;
    start..start + part.len()
}

/// Header names whose meaning the enforcer relies on, guarded against lookalikes.
const GUARDED_NAMES: [&str; 6] = [
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
    "upgrade",
    "expect",
];

/// The guarded name that `name` imitates, if any: same letters and digits (ignoring case),
/// different punctuation.
pub(super) fn imitated_name(name: &[u8]) -> Option<&'static str> {
    GUARDED_NAMES.into_iter().find(|guarded| {
        !name.eq_ignore_ascii_case(guarded.as_bytes())
            && letters(name).eq(letters(guarded.as_bytes()))
    })
}

/// The letters and digits of `bytes`, lowercased.
fn letters(bytes: &[u8]) -> impl Iterator<Item = u8> + '_ {
    bytes
        .iter()
        .filter(|b| b.is_ascii_alphanumeric())
        .map(u8::to_ascii_lowercase)
}

/// `Content-Length = 1*DIGIT` (RFC 9110 §8.6), with no sign, no whitespace, no list. 18 digits
/// always fit a `u64`; longer values are refused rather than risk an overflow some upstream
/// would wrap. Returns the length and its digits without leading zeros, to forward.
pub(super) fn parse_content_length(value: &[u8]) -> Option<(u64, &[u8])> {
    const MAX_DIGITS: usize = 18;
    if value.is_empty() || value.len() > MAX_DIGITS || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let length = value
        .iter()
        .fold(0, |n: u64, d| n * 10 + u64::from(d - b'0'));
    let first_significant = value
        .iter()
        .position(|&d| d != b'0')
        .unwrap_or(value.len() - 1);
    Some((length, &value[first_significant..]))
}

/// The elements of a comma-separated field value (RFC 9110 §5.6.1), trimmed, empty ones
/// skipped as the RFC requires.
pub(super) fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|element| !element.is_empty())
}

/// Strips optional whitespace (`OWS = *( SP / HTAB )`, RFC 9110 §5.6.3) from both ends.
pub(super) fn trim_ows(mut bytes: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

/// `tchar` of RFC 9110 §5.6.2.
pub(super) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

pub(super) fn is_token(bytes: &[u8]) -> bool {
    !bytes.is_empty() && bytes.iter().all(|&b| is_tchar(b))
}

/// CTL of RFC 5234: 0x00-0x1F and DEL.
pub(super) fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

/// Attacker-supplied bytes made safe for a log line: escaped and cut to a bounded length.
pub(super) fn escaped(bytes: &[u8]) -> String {
    const MAX: usize = 64;
    let mut out = bytes[..bytes.len().min(MAX)].escape_ascii().to_string();
    if bytes.len() > MAX {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests;
