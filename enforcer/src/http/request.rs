//! HTTP/1.1 requests: a strict parser for the head and the canonical re-serialisation the
//! proxy forwards.
//!
//! Enforces RFC 9112 framing with no leniency where implementations differ: exactly one way to
//! find the body (`Content-Length` or a single `chunked`, never both, never repeated), exactly
//! one valid `Host`, and a request target reduced to one spelling (see [`super::path`]).
//! Reports each refused rule as its own [`RequestError`] variant.

use std::net::{IpAddr, SocketAddr};

use bytes::{Bytes, BytesMut};
use thiserror::Error;

use super::{
    Limits, Version,
    head::{self, HeadError, Header, Unparsed},
    path::{self, TargetError},
};

/// The first byte of a TLS handshake record: a client speaking TLS to a plaintext port.
const TLS_HANDSHAKE: u8 = 0x16;

/// The start of the HTTP/2 connection preface (RFC 9113 §3.4): prior-knowledge h2.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// Connection options that would make a proxy drop a field this request is framed or routed
/// by, so the next hop sees a different request than we checked.
const FRAMING_FIELDS: [&str; 3] = ["content-length", "transfer-encoding", "host"];

/// Why a request head was refused. Every variant is a client fault: answer 400 and close.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RequestError {
    /// The client speaks another protocol (`"tls"` or `"http2"`) to the plaintext port.
    #[error("not HTTP/1.x: {what}")]
    NotHttp { what: &'static str },
    #[error(transparent)]
    Head(#[from] HeadError),
    #[error("method is not a token")]
    BadMethod,
    #[error("malformed request line")]
    BadRequestLine,
    /// Anything but `HTTP/1.0` and `HTTP/1.1`, including no version at all (HTTP/0.9).
    #[error("unsupported HTTP version")]
    UnsupportedVersion,
    /// A tunnel would carry bytes past the enforcer unparsed.
    #[error("CONNECT is not supported")]
    Connect,
    #[error(transparent)]
    Target(#[from] TargetError),
    /// RFC 9112 §6.1: "ought to be handled as an error"; the classic CL.TE / TE.CL desync.
    #[error("content-length and transfer-encoding both present")]
    ContentLengthWithTransferEncoding,
    /// Also when the values are equal: RFC 9112 §6.3 allows rejecting, and merging would
    /// forward a head that differs from the one received.
    #[error("more than one content-length")]
    DuplicateContentLength,
    /// Not `1*DIGIT` (no sign, no list such as `42, 42`, no whitespace inside), or more than
    /// 18 digits.
    #[error("malformed content-length")]
    BadContentLength,
    #[error("more than one transfer-encoding")]
    DuplicateTransferEncoding,
    /// Anything but exactly `chunked`: we do not decode other codings, and an upstream that
    /// does not know one could not find the end of the body.
    #[error("transfer-encoding other than a single chunked")]
    UnsupportedTransferEncoding,
    /// HTTP/1.0 has no chunked coding; a 1.0 server would read the chunks as the body and the
    /// rest as the next request.
    #[error("transfer-encoding in an HTTP/1.0 request")]
    TransferEncodingInHttp10,
    /// Content in a GET, HEAD or TRACE request: servers that ignore it would parse the body as
    /// the next request.
    #[error("{method} request with content")]
    UnexpectedBody { method: &'static str },
    /// RFC 9112 §3.2: an HTTP/1.1 request without `Host` gets 400.
    #[error("missing host")]
    MissingHost,
    #[error("more than one host")]
    DuplicateHost,
    #[error("malformed host")]
    BadHost,
    /// An absolute-form target whose authority differs from `Host`: RFC 9112 §3.2.2 says the
    /// target wins, many servers route by `Host`.
    #[error("request-target authority differs from host")]
    HostMismatch,
    #[error("connection option nominates {name}")]
    ConnectionNominatesFramingField { name: &'static str },
    #[error("bad upgrade: {reason}")]
    BadUpgrade { reason: &'static str },
    /// RFC 9110 §10.1.1: only `100-continue` is defined (a server may answer 417).
    #[error("unsupported expectation")]
    UnsupportedExpectation,
    /// httparse refused the head for a reason the checks here did not name.
    #[error("malformed request head: {0}")]
    Malformed(httparse::Error),
    #[error("BUG: {detail}")]
    Unreachable { detail: &'static str },
}

/// A request method. The common ones are variants so matching on them needs no allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
    Patch,
    Trace,
    Connect,
    /// Any other token, case preserved (methods are case-sensitive).
    Other(String),
}

// === impl Method ===

impl Method {
    fn from_token(token: &str) -> Self {
        match token {
            "GET" => Self::Get,
            "HEAD" => Self::Head,
            "POST" => Self::Post,
            "PUT" => Self::Put,
            "DELETE" => Self::Delete,
            "OPTIONS" => Self::Options,
            "PATCH" => Self::Patch,
            "TRACE" => Self::Trace,
            "CONNECT" => Self::Connect,
            other => Self::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
            Self::Options => "OPTIONS",
            Self::Patch => "PATCH",
            Self::Trace => "TRACE",
            Self::Connect => "CONNECT",
            Self::Other(token) => token,
        }
    }

    /// Whether the method is idempotent (RFC 9110 §9.2.2): sending it twice has the effect of
    /// sending it once, so a request that may or may not have reached the server can be sent
    /// again.
    pub fn is_idempotent(&self) -> bool {
        matches!(
            self,
            Self::Get | Self::Head | Self::Put | Self::Delete | Self::Options | Self::Trace
        )
    }

    /// Methods that must not carry content here. GET and HEAD content "has no generally
    /// defined semantics" (RFC 9110 §9.3.1-2) and servers differ on whether they read it;
    /// TRACE content is forbidden (§9.3.8). DELETE and OPTIONS are allowed content: APIs use
    /// it, and servers read it as framed.
    fn refuses_content(&self) -> Option<&'static str> {
        match self {
            Self::Get => Some("GET"),
            Self::Head => Some("HEAD"),
            Self::Trace => Some("TRACE"),
            _ => None,
        }
    }
}

/// How the request body is framed (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// No `Content-Length` and no `Transfer-Encoding`: the request ends with its head.
    None,
    Length(u64),
    Chunked,
}

/// A request head that passed every check. Its header list is what gets forwarded: framing
/// and `Host` values in it are already canonical (see [`write_request_head`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    method: Method,
    path: String,
    query: Option<String>,
    version: Version,
    headers: Vec<Header>,
    body: Body,
    keep_alive: bool,
    expect_continue: bool,
    upgrade: Option<String>,
    host: Option<String>,
}

// === impl Request ===

impl Request {
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The normalised path: what policy matches and what the upstream receives.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The query without its `?`, verbatim; `Some("")` for a target ending in `?`.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// The header fields in the order received. `Content-Length` is without leading zeros,
    /// `Transfer-Encoding` is `chunked` and `Host` is in lower case, as forwarded.
    pub fn headers(&self) -> &[Header] {
        &self.headers
    }

    pub fn body(&self) -> Body {
        self.body
    }

    /// Whether the client may send another request on this connection: HTTP/1.1 unless
    /// `Connection: close`, HTTP/1.0 only with `Connection: keep-alive`.
    pub fn keep_alive(&self) -> bool {
        self.keep_alive
    }

    /// `Expect: 100-continue` on an HTTP/1.1 request; RFC 9110 §10.1.1 says to ignore it on
    /// HTTP/1.0.
    pub fn expect_continue(&self) -> bool {
        self.expect_continue
    }

    /// The protocol asked for with `Upgrade` plus `Connection: upgrade`, lower case
    /// (`websocket`, `h2c`).
    pub fn upgrade(&self) -> Option<&str> {
        self.upgrade.as_deref()
    }

    /// The `Host` authority in lower case; `None` only for HTTP/1.0 without `Host`.
    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    /// Whether `Host` agrees with the destination the connection was made to: its port
    /// (explicit, or 80) is the destination's, and an IP-literal host is the destination's
    /// address. A name agrees whatever address it resolves to: the agent does not resolve.
    pub fn authority_agrees(&self, dst: SocketAddr) -> bool {
        let Some(host) = &self.host else {
            return false;
        };
        let (name, port) = match host.strip_prefix('[') {
            Some(rest) => match rest.split_once(']') {
                Some((addr, "")) => (addr, None),
                Some((addr, after)) => match after.strip_prefix(':') {
                    Some(port) => (addr, Some(port)),
                    None => return false,
                },
                None => return false,
            },
            None => match host.rsplit_once(':') {
                Some((name, port)) => (name, Some(port)),
                None => (host.as_str(), None),
            },
        };
        let port_agrees = match port {
            Some(port) => port.parse::<u16>().is_ok_and(|p| p == dst.port()),
            None => dst.port() == 80,
        };
        let address_agrees = match name.parse::<IpAddr>() {
            Ok(ip) => ip.to_canonical() == dst.ip().to_canonical(),
            // Only an IPv6 address goes in brackets.
            Err(_) => !host.starts_with('['),
        };
        port_agrees && address_agrees
    }

    /// Replace every field named `name` with one `name: value`, last. For the credentials the
    /// agent injects: `name` must be a token and not a field that frames or routes the
    /// request, and `value` a valid field value (the policy checks both when it loads).
    pub fn replace_header(&mut self, name: &str, value: &[u8]) {
        self.headers
            .retain(|h| !h.name().eq_ignore_ascii_case(name));
        self.headers.push(Header {
            name: Bytes::copy_from_slice(name.as_bytes()),
            value: Bytes::copy_from_slice(value),
        });
    }

    fn from_parsed(head: &[u8], parsed: &httparse::Request<'_, '_>) -> Result<Self, RequestError> {
        let (Some(method), Some(target), Some(minor)) =
            (parsed.method, parsed.path, parsed.version)
        else {
            return Err(RequestError::Unreachable {
                detail: "httparse reported a complete request without a request line",
            });
        };
        let method = Method::from_token(method);
        if method == Method::Connect {
            return Err(RequestError::Connect);
        }
        let version = Version::from_minor(minor).ok_or(RequestError::UnsupportedVersion)?;
        let target = path::parse_target(target.as_bytes())?;
        let mut headers = head::own_headers(head, parsed.headers);
        let fields = Fields::collect(&headers)?;
        let body = fields.body(&headers, &method, version)?;
        let host = fields.host(&headers, version)?;
        if let Some(authority) = target.authority {
            match &host {
                Some(host) if authority.eq_ignore_ascii_case(host.as_bytes()) => {}
                Some(_) => return Err(RequestError::HostMismatch),
                None => return Err(RequestError::MissingHost),
            }
        }
        let upgrade = fields.upgrade(&headers, version)?;
        fields.canonicalize(&mut headers, host.as_deref());
        Ok(Self {
            method,
            path: target.path,
            query: target.query,
            version,
            headers,
            body,
            keep_alive: match version {
                Version::Http11 => !fields.close,
                Version::Http10 => fields.keep_alive && !fields.close,
            },
            expect_continue: version == Version::Http11 && fields.expect_continue,
            upgrade,
            host,
        })
    }
}

/// Parses the request head at the start of `buf`, in one go: [`RequestParser::parse`] on a
/// fresh parser.
pub fn parse_request(
    buf: &[u8],
    limits: &Limits,
) -> Result<Option<(Request, usize)>, RequestError> {
    RequestParser::default().parse(buf, limits)
}

/// Parses one request head as its bytes arrive, resuming the search for its end where the
/// previous call stopped.
#[derive(Debug, Default)]
pub struct RequestParser {
    scanner: head::Scanner,
}

// === impl RequestParser ===

impl RequestParser {
    /// Parses the request head at the start of `buf`, which holds what the previous call saw
    /// and possibly more (call again only when bytes have arrived). Once it returns a request
    /// or an error, start the next head with a new parser.
    ///
    /// `Ok(None)`: incomplete, read more. `Ok(Some((request, head_len)))`: the head is
    /// `buf[..head_len]` and the body, if any, starts right after. Errors come as soon as the
    /// bytes seen so far cannot become a valid head, limits included.
    ///
    /// Accepts origin-form targets, and `http://` absolute-form whose authority equals `Host`
    /// (it is forwarded in origin-form). Refuses CONNECT, `OPTIONS *` and authority-form.
    ///
    /// Each byte is scanned about once however the head is split (linear work); bound the
    /// time a head may take all the same (slowloris).
    pub fn parse(
        &mut self,
        buf: &[u8],
        limits: &Limits,
    ) -> Result<Option<(Request, usize)>, RequestError> {
        // Checked first: neither has a CRLF soon, so the scanner would wait for more bytes.
        if buf.first() == Some(&TLS_HANDSHAKE) {
            return Err(RequestError::NotHttp { what: "tls" });
        }
        if buf.starts_with(H2_PREFACE) {
            return Err(RequestError::NotHttp { what: "http2" });
        }
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
) -> Result<Option<(Request, usize)>, RequestError> {
    let head = &buf[..scanned.len];
    let request = scanned.with_slots(|slots| {
        let mut parsed = httparse::Request::new(slots);
        Unparsed::check(parsed.parse(head), head.len()).map_err(|e| match e {
            Unparsed::Invalid(error) => diagnose(head, error),
            Unparsed::Disagreed => RequestError::Unreachable {
                detail: Unparsed::DISAGREED,
            },
        })?;
        Request::from_parsed(head, &parsed)
    })?;
    Ok(Some((request, head.len())))
}

/// Writes `request`'s head as it is forwarded: `METHOD SP path[?query] SP HTTP/1.x CRLF`, each
/// header as `name: value CRLF` in the order received, then CRLF.
///
/// The framing fields come out as validated, never as received: the one `Content-Length` or
/// `Transfer-Encoding: chunked` that [`Request::body`] was derived from, in canonical form.
pub fn write_request_head(request: &Request, out: &mut BytesMut) {
    const LINE_OVERHEAD: usize = " ? HTTP/1.1\r\n".len();
    let fields: usize = request
        .headers
        .iter()
        .map(|h| h.name.len() + ": \r\n".len() + h.value.len())
        .sum();
    let method = request.method.as_str().as_bytes();
    let query = request.query.as_deref().unwrap_or_default();
    out.reserve(
        method.len() + request.path.len() + query.len() + LINE_OVERHEAD + fields + "\r\n".len(),
    );
    out.extend_from_slice(method);
    out.extend_from_slice(b" ");
    out.extend_from_slice(request.path.as_bytes());
    if let Some(query) = &request.query {
        out.extend_from_slice(b"?");
        out.extend_from_slice(query.as_bytes());
    }
    out.extend_from_slice(b" ");
    out.extend_from_slice(request.version.as_str().as_bytes());
    out.extend_from_slice(b"\r\n");
    for header in &request.headers {
        out.extend_from_slice(&header.name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(&header.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Names the rule a head broke when httparse refused it.
fn diagnose(head: &[u8], error: httparse::Error) -> RequestError {
    let (request_line, fields) = head::lines(head);
    if let Err(error) = check_request_line(request_line) {
        return error;
    }
    head::diagnose_fields(fields).map_or(RequestError::Malformed(error), RequestError::from)
}

/// `method SP request-target SP HTTP-version`, each part checked by the rules the successful
/// path applies.
fn check_request_line(line: &[u8]) -> Result<(), RequestError> {
    let mut parts = line.splitn(3, |&b| b == b' ');
    if !parts.next().is_some_and(head::is_token) {
        return Err(RequestError::BadMethod);
    }
    let Some(target) = parts.next() else {
        return Err(RequestError::BadRequestLine);
    };
    path::parse_target(target)?;
    match parts.next() {
        Some(b"HTTP/1.0" | b"HTTP/1.1") => Ok(()),
        _ => Err(RequestError::UnsupportedVersion),
    }
}

/// Where a header appears, and how often.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    first: Option<usize>,
    count: usize,
}

// === impl Seen ===

impl Seen {
    fn note(&mut self, index: usize) {
        self.first.get_or_insert(index);
        self.count += 1;
    }
}

/// What the header fields say about framing and the connection, gathered in one pass.
#[derive(Debug, Default)]
struct Fields {
    content_length: Seen,
    transfer_encoding: Seen,
    host: Seen,
    upgrade: Seen,
    close: bool,
    keep_alive: bool,
    connection_upgrade: bool,
    expect_continue: bool,
}

// === impl Fields ===

impl Fields {
    fn collect(headers: &[Header]) -> Result<Self, RequestError> {
        let mut fields = Self::default();
        for (index, header) in headers.iter().enumerate() {
            let name = header.name.as_ref();
            if name.eq_ignore_ascii_case(b"content-length") {
                fields.content_length.note(index);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                fields.transfer_encoding.note(index);
            } else if name.eq_ignore_ascii_case(b"host") {
                fields.host.note(index);
            } else if name.eq_ignore_ascii_case(b"upgrade") {
                fields.upgrade.note(index);
            } else if name.eq_ignore_ascii_case(b"connection") {
                fields.connection(header.value())?;
            } else if name.eq_ignore_ascii_case(b"expect") {
                if !header.value().eq_ignore_ascii_case(b"100-continue") {
                    return Err(RequestError::UnsupportedExpectation);
                }
                fields.expect_continue = true;
            } else if let Some(imitates) = head::imitated_name(name) {
                return Err(HeadError::LookalikeHeaderName {
                    name: head::escaped(name),
                    imitates,
                }
                .into());
            }
        }
        Ok(fields)
    }

    fn connection(&mut self, value: &[u8]) -> Result<(), RequestError> {
        for option in head::list_elements(value) {
            if option.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if option.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if option.eq_ignore_ascii_case(b"upgrade") {
                self.connection_upgrade = true;
            } else if let Some(name) = FRAMING_FIELDS
                .into_iter()
                .find(|name| option.eq_ignore_ascii_case(name.as_bytes()))
            {
                return Err(RequestError::ConnectionNominatesFramingField { name });
            }
        }
        Ok(())
    }

    fn body(
        &self,
        headers: &[Header],
        method: &Method,
        version: Version,
    ) -> Result<Body, RequestError> {
        let (length, coding) = (self.content_length, self.transfer_encoding);
        if length.count > 0 && coding.count > 0 {
            return Err(RequestError::ContentLengthWithTransferEncoding);
        }
        if length.count > 1 {
            return Err(RequestError::DuplicateContentLength);
        }
        if coding.count > 1 {
            return Err(RequestError::DuplicateTransferEncoding);
        }
        let body = if let Some(index) = length.first {
            let (length, _) = head::parse_content_length(headers[index].value())
                .ok_or(RequestError::BadContentLength)?;
            Body::Length(length)
        } else if let Some(index) = coding.first {
            if version == Version::Http10 {
                return Err(RequestError::TransferEncodingInHttp10);
            }
            if !headers[index].value().eq_ignore_ascii_case(b"chunked") {
                return Err(RequestError::UnsupportedTransferEncoding);
            }
            Body::Chunked
        } else {
            Body::None
        };
        // `Content-Length: 0` on a GET is common and frames nothing, so it stays.
        if let Some(method) = method.refuses_content()
            && !matches!(body, Body::None | Body::Length(0))
        {
            return Err(RequestError::UnexpectedBody { method });
        }
        Ok(body)
    }

    fn host(&self, headers: &[Header], version: Version) -> Result<Option<String>, RequestError> {
        match (self.host.first, self.host.count) {
            (None, _) if version == Version::Http11 => Err(RequestError::MissingHost),
            (None, _) => Ok(None),
            (Some(index), 1) => {
                let value = headers[index].value();
                if !path::is_authority(value) {
                    return Err(RequestError::BadHost);
                }
                String::from_utf8(value.to_ascii_lowercase())
                    .map(Some)
                    .map_err(|_| RequestError::BadHost)
            }
            (Some(_), _) => Err(RequestError::DuplicateHost),
        }
    }

    fn upgrade(
        &self,
        headers: &[Header],
        version: Version,
    ) -> Result<Option<String>, RequestError> {
        let Some(index) = self.upgrade.first else {
            return Ok(None);
        };
        let reason = if self.upgrade.count > 1 {
            "more than one upgrade field"
        } else if version == Version::Http10 {
            "upgrade in an HTTP/1.0 request"
        } else if !self.connection_upgrade {
            // The upstream might switch protocols anyway; we would not expect it.
            "upgrade without the connection upgrade option"
        } else {
            let value = headers[index].value();
            let mut parts = value.splitn(2, |&b| b == b'/');
            if parts.all(head::is_token) {
                return String::from_utf8(value.to_ascii_lowercase())
                    .map(Some)
                    .map_err(|_| RequestError::BadUpgrade {
                        reason: "not a protocol",
                    });
            }
            "not exactly one protocol"
        };
        Err(RequestError::BadUpgrade { reason })
    }

    /// Rewrites the framing and `Host` values into the form they are matched and forwarded
    /// in, so the header list is exactly what the upstream receives.
    fn canonicalize(&self, headers: &mut [Header], host: Option<&str>) {
        if let Some(index) = self.content_length.first
            && let Some((_, digits)) = head::parse_content_length(&headers[index].value)
        {
            // Leading zeros dropped: a sub-slice, so no copy.
            headers[index].value = headers[index].value.slice_ref(digits);
        }
        if let Some(index) = self.transfer_encoding.first {
            headers[index].value = Bytes::from_static(b"chunked");
        }
        if let (Some(index), Some(host)) = (self.host.first, host)
            && headers[index].value != host.as_bytes()
        {
            headers[index].value = Bytes::copy_from_slice(host.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests;
