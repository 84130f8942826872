//! HTTP/1.1 responses from the upstream: enough parsing to know where each response ends.
//!
//! The proxy relays the response head as received, so nothing is re-serialised here. Enforces
//! the same line and field rules as for requests (a response the client could frame differently
//! than we do would desync the client connection) and unambiguous framing. Reports each
//! refused rule as a [`ResponseError`]: an upstream fault, so 502 and close both connections.

use thiserror::Error;

use super::{
    Limits, Version,
    head::{self, HeadError, Header, Unparsed},
    request::Method,
};

/// Why an upstream response head was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ResponseError {
    #[error(transparent)]
    Head(#[from] HeadError),
    #[error("unsupported HTTP version")]
    UnsupportedVersion,
    #[error("malformed status line")]
    BadStatusLine,
    /// RFC 9110 §15: status codes are 100 to 599.
    #[error("status code {status} outside 100-599")]
    BadStatus { status: u16 },
    /// RFC 9112 §6.3 lets `Transfer-Encoding` win, but the response "ought to be handled as
    /// an error": the client might pick `Content-Length`.
    #[error("content-length and transfer-encoding both present")]
    ContentLengthWithTransferEncoding,
    /// Also with equal values, which RFC 9112 §6.3 would let us merge; the head is relayed
    /// as received, so the client would still see both.
    #[error("more than one content-length")]
    DuplicateContentLength,
    #[error("malformed content-length")]
    BadContentLength,
    /// An element that is not a coding, `chunked` more than once (RFC 9112 §6.1), or an
    /// empty field.
    #[error("malformed transfer-encoding")]
    BadTransferEncoding,
    /// RFC 9112 §6.1: not for an HTTP/1.0 message, whose recipient cannot decode chunks.
    #[error("transfer-encoding in an HTTP/1.0 response")]
    TransferEncodingInHttp10,
    /// httparse refused the head for a reason the checks here did not name.
    #[error("malformed response head: {0}")]
    Malformed(httparse::Error),
    #[error("BUG: {detail}")]
    Unreachable { detail: &'static str },
}

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseBody {
    /// The response ends with its head.
    None,
    Length(u64),
    Chunked,
    /// The body runs until the upstream closes the connection; the connection cannot be
    /// reused.
    UntilClose,
}

/// Where a response sits in the exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseKind {
    /// 1xx other than 101 (100 Continue, 103 Early Hints): the final response follows.
    Interim,
    /// 101: after this head the connection carries the upgraded protocol.
    SwitchingProtocols,
    /// 2xx to 5xx: answers the request.
    Final,
}

/// A response head that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    version: Version,
    status: u16,
    headers: Vec<Header>,
    /// Framing from the header fields alone; [`response_body`] adds the request method and
    /// status rules.
    framing: ResponseBody,
    keep_alive: bool,
}

// === impl Response ===

impl Response {
    pub fn version(&self) -> Version {
        self.version
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    /// The header fields in the order received, values trimmed.
    pub fn headers(&self) -> &[Header] {
        &self.headers
    }

    pub fn kind(&self) -> ResponseKind {
        match self.status {
            101 => ResponseKind::SwitchingProtocols,
            100..=199 => ResponseKind::Interim,
            _ => ResponseKind::Final,
        }
    }

    /// Whether the upstream keeps the connection open after this response, by its
    /// `Connection` field and version. A body that runs [`ResponseBody::UntilClose`] ends the
    /// connection regardless.
    pub fn keep_alive(&self) -> bool {
        self.keep_alive
    }
}

/// Parses the response head at the start of `buf`, in one go: [`ResponseParser::parse`] on
/// a fresh parser.
pub fn parse_response(
    buf: &[u8],
    limits: &Limits,
) -> Result<Option<(Response, usize)>, ResponseError> {
    ResponseParser::default().parse(buf, limits)
}

/// Parses one response head as its bytes arrive, resuming the search for its end where the
/// previous call stopped (see [`super::RequestParser`]).
#[derive(Debug, Default)]
pub struct ResponseParser {
    scanner: head::Scanner,
}

// === impl ResponseParser ===

impl ResponseParser {
    /// Parses the response head at the start of `buf`, which holds what the previous call saw
    /// and possibly more. Once it returns a response or an error, start the next head with a
    /// new parser.
    ///
    /// `Ok(None)`: incomplete, read more. `Ok(Some((response, head_len)))`: the head is
    /// `buf[..head_len]`.
    pub fn parse(
        &mut self,
        buf: &[u8],
        limits: &Limits,
    ) -> Result<Option<(Response, usize)>, ResponseError> {
        let Some(scanned) = self.scanner.scan(buf, limits)? else {
            return Ok(None);
        };
        parse_scanned(buf, &scanned)
    }
}

/// Parses the head [`head::Scanner`] found at the start of `buf`.
fn parse_scanned(
    buf: &[u8],
    scanned: &head::Scanned,
) -> Result<Option<(Response, usize)>, ResponseError> {
    let head = &buf[..scanned.len];
    let response = scanned.with_slots(|slots| {
        let mut parsed = httparse::Response::new(slots);
        Unparsed::check(parsed.parse(head), head.len()).map_err(|e| match e {
            Unparsed::Invalid(error) => diagnose(head, error),
            Unparsed::Disagreed => ResponseError::Unreachable {
                detail: Unparsed::DISAGREED,
            },
        })?;
        let (Some(minor), Some(status)) = (parsed.version, parsed.code) else {
            return Err(ResponseError::Unreachable {
                detail: "httparse reported a complete response without a status line",
            });
        };
        let version = Version::from_minor(minor).ok_or(ResponseError::UnsupportedVersion)?;
        if !(100..=599).contains(&status) {
            return Err(ResponseError::BadStatus { status });
        }
        let headers = head::own_headers(head, parsed.headers);
        let (framing, keep_alive) = framing(&headers, version)?;
        Ok(Response {
            version,
            status,
            headers,
            framing,
            keep_alive,
        })
    })?;
    Ok(Some((response, head.len())))
}

/// How the body of `response` to a `request_method` request is delimited, by the rules of
/// RFC 9112 §6.3 in order: no body for HEAD, 1xx, 204 and 304 (whatever the fields say); a
/// tunnel after a 2xx to CONNECT (the parser never accepts CONNECT; the rule is here for
/// completeness); otherwise what the framing fields say, and until close when they say nothing.
pub fn response_body(request_method: &Method, response: &Response) -> ResponseBody {
    if *request_method == Method::Head || matches!(response.status, 100..=199 | 204 | 304) {
        return ResponseBody::None;
    }
    if *request_method == Method::Connect && (200..=299).contains(&response.status) {
        return ResponseBody::UntilClose;
    }
    response.framing
}

/// The framing the fields declare, and whether the connection persists.
fn framing(headers: &[Header], version: Version) -> Result<(ResponseBody, bool), ResponseError> {
    let mut lengths = 0;
    let mut length = None;
    let mut codings = 0;
    let mut chunked_last = false;
    let (mut close, mut keep_alive) = (false, false);
    for header in headers {
        let (name, value) = (header.name.as_ref(), header.value());
        if name.eq_ignore_ascii_case(b"content-length") {
            lengths += 1;
            length = head::parse_content_length(value).map(|(length, _)| length);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Several fields form one list (RFC 9110 §5.3); its last coding decides.
            let before = codings;
            for coding in head::list_elements(value) {
                let coding_name = coding.split(|&b| b == b';').next().unwrap_or_default();
                let coding_name = head::trim_ows(coding_name);
                let is_chunked = coding_name.eq_ignore_ascii_case(b"chunked");
                // After `chunked` nothing may follow (RFC 9112 §6.1), and `chunked` takes no
                // parameters: a client might still decode `chunked;x` as chunked.
                if !head::is_token(coding_name)
                    || chunked_last
                    || (is_chunked && coding.len() != coding_name.len())
                {
                    return Err(ResponseError::BadTransferEncoding);
                }
                codings += 1;
                chunked_last = is_chunked;
            }
            if codings == before {
                return Err(ResponseError::BadTransferEncoding);
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for option in head::list_elements(value) {
                close |= option.eq_ignore_ascii_case(b"close");
                keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if let Some(imitates) = head::imitated_name(name) {
            return Err(HeadError::LookalikeHeaderName {
                name: head::escaped(name),
                imitates,
            }
            .into());
        }
    }
    let keep_alive = match version {
        Version::Http11 => !close,
        Version::Http10 => keep_alive && !close,
    };
    let framing = match (lengths, codings) {
        (0, 0) => ResponseBody::UntilClose,
        (_, 1..) if lengths > 0 => return Err(ResponseError::ContentLengthWithTransferEncoding),
        (_, 1..) if version == Version::Http10 => {
            return Err(ResponseError::TransferEncodingInHttp10);
        }
        // RFC 9112 §6.3 rule 4: with a final coding other than chunked, until close.
        (_, 1..) if !chunked_last => ResponseBody::UntilClose,
        (_, 1..) => ResponseBody::Chunked,
        (1, _) => ResponseBody::Length(length.ok_or(ResponseError::BadContentLength)?),
        _ => return Err(ResponseError::DuplicateContentLength),
    };
    Ok((framing, keep_alive))
}

/// Names the rule a head broke when httparse refused it.
fn diagnose(head: &[u8], error: httparse::Error) -> ResponseError {
    let (status_line, fields) = head::lines(head);
    if let Err(error) = check_status_line(status_line) {
        return error;
    }
    head::diagnose_fields(fields).map_or(ResponseError::Malformed(error), ResponseError::from)
}

/// `HTTP-version SP 3DIGIT SP reason-phrase` (RFC 9112 §4); like httparse, the reason may be
/// missing altogether.
fn check_status_line(line: &[u8]) -> Result<(), ResponseError> {
    let Some(rest) = line
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| line.strip_prefix(b"HTTP/1.0 "))
    else {
        return Err(ResponseError::UnsupportedVersion);
    };
    match rest {
        [a, b, c, reason @ ..]
            if [a, b, c].iter().all(|d| d.is_ascii_digit())
                && (reason.is_empty() || reason.starts_with(b" "))
                && !reason.iter().any(|&b| head::is_control(b) && b != b'\t') =>
        {
            Ok(())
        }
        _ => Err(ResponseError::BadStatusLine),
    }
}

#[cfg(test)]
mod tests;
