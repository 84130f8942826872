//! HTTP/1.1 message framing, sans I/O: request and response heads, request-target
//! normalisation and the chunked transfer coding.
//!
//! Enforces: a request is accepted only when every HTTP/1.1 implementation must agree on where
//! it ends and what it asks for. Anything an upstream server could read differently from us
//! (duplicate or malformed framing headers, bare CR or LF, obs-fold, encoded slashes or dots in
//! the path, ...) is refused with a precise error rather than repaired. What is accepted is
//! re-serialised from the parsed form ([`write_request_head`]), so the upstream receives exactly
//! the path, headers and framing that policy matched.
//!
//! Reports: a typed error per refused rule ([`RequestError`], [`ResponseError`],
//! [`ChunkedError`]). All request errors are client faults (400); response errors are upstream
//! faults (502). Offending header names are carried escaped, so they can go into an audit record
//! as they are.
//!
//! Nothing here reads a socket: callers feed bytes and act on the result.

mod chunked;
mod head;
mod path;
mod request;
mod response;

pub use chunked::{ChunkedDecoder, ChunkedError, Decoded, write_chunk, write_last_chunk};
pub use head::{HeadError, Header};
pub use path::{TargetError, normalize_path};
pub use request::{
    Body, Method, Request, RequestError, RequestParser, parse_request, write_request_head,
};
pub use response::{
    Response, ResponseBody, ResponseError, ResponseKind, ResponseParser, parse_response,
    response_body,
};

#[cfg(test)]
mod tests;

/// Bounds on what the parser buffers before it has a complete head.
///
/// Each limit is checked while the head is still incomplete, so a peer that never finishes its
/// head costs at most `max_head_bytes` of buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest request line or status line, without its CRLF.
    pub max_request_line: usize,
    /// Largest head: start line, header lines and the final empty line, CRLFs included. The same
    /// bound applies to the trailer section of a chunked body.
    pub max_head_bytes: usize,
    /// Most header fields in a head (and trailer fields in a chunked body).
    pub max_headers: usize,
}

/// 8 KiB for the request line matches the common server defaults (Apache `LimitRequestLine`
/// 8190, nginx's 8 KiB header buffer), so no target that an upstream would accept is refused
/// here. 64 KiB for the whole head leaves room for large cookies and bearer tokens while bounding
/// per-connection buffering; it is above nginx's 32 KiB default. 100 fields is hyper's and
/// Apache's default (`LimitRequestFields`); browsers send about 20.
impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_line: 8 * 1024,
            max_head_bytes: 64 * 1024,
            max_headers: 100,
        }
    }
}

/// The HTTP versions spoken here. HTTP/0.9 has no headers and so no framing to check; HTTP/2 and
/// later are not text protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

// === impl Version ===

impl Version {
    /// The version as written in a start line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http10 => "HTTP/1.0",
            Self::Http11 => "HTTP/1.1",
        }
    }

    /// httparse reports the minor version; it accepts only `HTTP/1.0` and `HTTP/1.1`.
    fn from_minor(minor: u8) -> Option<Self> {
        match minor {
            0 => Some(Self::Http10),
            1 => Some(Self::Http11),
            _ => None,
        }
    }
}
