//! The chunked transfer coding (RFC 9112 §7.1): a streaming decoder and the encoder for the
//! canonical form the proxy forwards.
//!
//! Enforces one reading of the chunk stream: sizes are bare hex (no `0x`, sign or whitespace)
//! of at most 16 digits, every chunk's data ends in CRLF, every line ends in CRLF, and
//! extensions and trailer fields are well-formed. Re-encoding drops extensions and trailers,
//! so whatever an upstream might make of them never reaches it. Reports a [`ChunkedError`].
//!
//! The decoder keeps no input: it walks each byte once and hands back where the data is, so
//! it never buffers more than the caller already holds.

use std::ops::Range;

use bytes::BytesMut;
use thiserror::Error;

use super::{
    Limits,
    head::{is_control, is_tchar},
};

/// Hex digits in a chunk size: 16 fit a `u64`, so the size can never overflow. Leading zeros
/// count, so a size line stays short.
const MAX_SIZE_DIGITS: u32 = 16;

/// Bytes of extensions on one chunk-size line. Nothing uses extensions; the bound keeps a
/// peer from streaming an endless size line that never yields data.
const MAX_EXTENSION_BYTES: usize = 1024;

/// A chunked body that breaks RFC 9112 §7.1.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChunkedError {
    /// Not `1*HEXDIG` followed by `;`, or CRLF: `0x10`, `-1`, ` 5`, an empty line.
    #[error("malformed chunk size")]
    BadChunkSize,
    #[error("chunk size longer than {MAX_SIZE_DIGITS} hex digits")]
    ChunkSizeTooLong,
    /// Not `;name[=token|quoted-string]`, or whitespace around `;` and `=` (which RFC 9112
    /// calls BWS, and which parsers have split on differently).
    #[error("malformed chunk extension")]
    BadExtension,
    #[error("chunk extensions longer than {MAX_EXTENSION_BYTES} bytes")]
    ExtensionTooLong,
    /// A chunk's data is not followed by CRLF: the size and the data disagree.
    #[error("chunk data not followed by CRLF")]
    MissingDataCrlf,
    /// A size or trailer line ending in anything but CRLF.
    #[error("chunk line does not end in CRLF")]
    BadLineEnding,
    #[error("bad trailer field: {reason}")]
    BadTrailer { reason: &'static str },
    #[error("trailer section larger than {limit} bytes")]
    TrailerTooLarge { limit: usize },
    #[error("more than {limit} trailer fields")]
    TooManyTrailers { limit: usize },
}

/// What one call to [`ChunkedDecoder::decode`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// `input[range]` is body data; the decoder has consumed `input[..range.end]`. Call again
    /// with the rest.
    Data(Range<usize>),
    /// The input was all framing and has been consumed; feed more.
    NeedMore,
    /// The body ended after `input[..consumed]`; what follows belongs to the next message.
    End { consumed: usize },
}

/// Decodes a chunked body fed in arbitrary slices.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
    max_trailer_bytes: usize,
    max_trailers: usize,
    trailer_bytes: usize,
    trailers: usize,
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Inside a size line, extensions or trailers: one byte at a time.
    Framing(Framing),
    /// Inside a chunk's data, with this many bytes left (never 0).
    Data { remaining: u64 },
    /// After the final CRLF.
    Done,
}

#[derive(Debug, Clone, Copy)]
enum Framing {
    /// Expecting the first hex digit of a chunk size.
    SizeStart,
    Size {
        size: u64,
        digits: u32,
    },
    Extension {
        size: u64,
        at: ExtPos,
        len: usize,
    },
    /// Size line read up to its CR.
    SizeLf {
        size: u64,
    },
    DataCr,
    DataLf,
    TrailerLineStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    /// The CR of the empty line that ends the body was read.
    EndLf,
}

/// Position inside `chunk-ext = *( ";" chunk-ext-name [ "=" chunk-ext-val ] )`.
#[derive(Debug, Clone, Copy)]
enum ExtPos {
    NameStart,
    Name,
    ValueStart,
    Token,
    Quoted,
    QuotedPair,
    AfterQuoted,
}

// === impl ChunkedDecoder ===

impl ChunkedDecoder {
    /// A decoder for one body; trailers are bounded like a head.
    pub fn new(limits: &Limits) -> Self {
        Self {
            state: State::Framing(Framing::SizeStart),
            max_trailer_bytes: limits.max_head_bytes,
            max_trailers: limits.max_headers,
            trailer_bytes: 0,
            trailers: 0,
        }
    }

    /// Consumes framing from the start of `input` up to the next run of data, the end of the
    /// body, or the end of `input`. Errors are final: the stream cannot be resynchronised.
    pub fn decode(&mut self, input: &[u8]) -> Result<Decoded, ChunkedError> {
        let mut at = 0;
        loop {
            match self.state {
                State::Done => return Ok(Decoded::End { consumed: at }),
                State::Data { remaining } => {
                    let available = input.len() - at;
                    if available == 0 {
                        return Ok(Decoded::NeedMore);
                    }
                    // The rest of the chunk if the input holds it, else all of the input.
                    let (taken, left) = match usize::try_from(remaining) {
                        Ok(remaining) if remaining <= available => (remaining, 0),
                        _ => (available, remaining - available as u64),
                    };
                    self.state = match left {
                        0 => State::Framing(Framing::DataCr),
                        remaining => State::Data { remaining },
                    };
                    return Ok(Decoded::Data(at..at + taken));
                }
                State::Framing(framing) => {
                    let Some(&byte) = input.get(at) else {
                        return Ok(Decoded::NeedMore);
                    };
                    at += 1;
                    self.state = self.step(framing, byte)?;
                }
            }
        }
    }

    fn step(&mut self, framing: Framing, b: u8) -> Result<State, ChunkedError> {
        use Framing::*;
        let next = match framing {
            SizeStart => Size {
                size: hex_digit(b).ok_or(ChunkedError::BadChunkSize)?,
                digits: 1,
            },
            Size { size, digits } => match b {
                b'\r' => SizeLf { size },
                b';' => Extension {
                    size,
                    at: ExtPos::NameStart,
                    len: 1,
                },
                _ => {
                    let digit = hex_digit(b).ok_or(ChunkedError::BadChunkSize)?;
                    if digits == MAX_SIZE_DIGITS {
                        return Err(ChunkedError::ChunkSizeTooLong);
                    }
                    Size {
                        size: (size << 4) | digit,
                        digits: digits + 1,
                    }
                }
            },
            Extension { size, at, len } => {
                if len == MAX_EXTENSION_BYTES {
                    return Err(ChunkedError::ExtensionTooLong);
                }
                match extension_step(at, b)? {
                    Some(at) => Extension {
                        size,
                        at,
                        len: len + 1,
                    },
                    None => SizeLf { size },
                }
            }
            SizeLf { size } => match (b, size) {
                (b'\n', 0) => TrailerLineStart,
                (b'\n', remaining) => return Ok(State::Data { remaining }),
                _ => return Err(ChunkedError::BadLineEnding),
            },
            DataCr => match b {
                b'\r' => DataLf,
                _ => return Err(ChunkedError::MissingDataCrlf),
            },
            DataLf => match b {
                b'\n' => SizeStart,
                _ => return Err(ChunkedError::MissingDataCrlf),
            },
            TrailerLineStart | TrailerName | TrailerValue | TrailerLf | EndLf => {
                self.trailer_bytes += 1;
                if self.trailer_bytes > self.max_trailer_bytes {
                    return Err(ChunkedError::TrailerTooLarge {
                        limit: self.max_trailer_bytes,
                    });
                }
                return self.trailer_step(framing, b);
            }
        };
        Ok(State::Framing(next))
    }

    /// The trailer section: `*( field-line CRLF ) CRLF`, checked like header fields.
    fn trailer_step(&mut self, framing: Framing, b: u8) -> Result<State, ChunkedError> {
        use Framing::*;
        let bad = |reason| Err(ChunkedError::BadTrailer { reason });
        let next = match (framing, b) {
            (TrailerLineStart, b'\r') => EndLf,
            (TrailerLineStart, b' ' | b'\t') => return bad("field line starts with whitespace"),
            (TrailerLineStart, b':') => return bad("empty field name"),
            (TrailerLineStart, b) if is_tchar(b) => {
                self.trailers += 1;
                if self.trailers > self.max_trailers {
                    return Err(ChunkedError::TooManyTrailers {
                        limit: self.max_trailers,
                    });
                }
                TrailerName
            }
            (TrailerName, b':') => TrailerValue,
            (TrailerName, b) if is_tchar(b) => TrailerName,
            (TrailerLineStart | TrailerName | TrailerValue, b'\n') => {
                return Err(ChunkedError::BadLineEnding);
            }
            (TrailerName, b'\r') => return bad("field line without a colon"),
            (TrailerLineStart | TrailerName, _) => return bad("field name is not a token"),
            (TrailerValue, b'\r') => TrailerLf,
            (TrailerValue, b) if b == b'\t' || !is_control(b) => TrailerValue,
            (TrailerValue, _) => return bad("control character in field value"),
            (TrailerLf, b'\n') => TrailerLineStart,
            (EndLf, b'\n') => return Ok(State::Done),
            _ => return Err(ChunkedError::BadLineEnding),
        };
        Ok(State::Framing(next))
    }
}

/// One byte of extensions; `None` when the CR that ends the size line was read.
fn extension_step(at: ExtPos, b: u8) -> Result<Option<ExtPos>, ChunkedError> {
    use ExtPos::*;
    let next = match (at, b) {
        (Name | Token | AfterQuoted, b'\r') => return Ok(None),
        (Name | Token | AfterQuoted, b';') => NameStart,
        (NameStart | Name, b) if is_tchar(b) => Name,
        (Name, b'=') => ValueStart,
        (ValueStart, b'"') => Quoted,
        (ValueStart | Token, b) if is_tchar(b) => Token,
        (Quoted, b'"') => AfterQuoted,
        (Quoted, b'\\') => QuotedPair,
        // qdtext: HTAB, SP, VCHAR except `"` and `\`, obs-text.
        (Quoted, b) if b == b'\t' || !is_control(b) => Quoted,
        // quoted-pair: HTAB, SP, VCHAR, obs-text.
        (QuotedPair, b) if b == b'\t' || !is_control(b) => Quoted,
        _ => return Err(ChunkedError::BadExtension),
    };
    Ok(Some(next))
}

fn hex_digit(b: u8) -> Option<u64> {
    char::from(b).to_digit(16).map(u64::from)
}

/// Appends `data` as one chunk. Empty data writes nothing: a zero-size chunk would end the
/// body.
pub fn write_chunk(data: &[u8], out: &mut BytesMut) {
    if data.is_empty() {
        return;
    }
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut digits = [0; 2 * size_of::<usize>()];
    let mut start = digits.len();
    let mut size = data.len();
    while size > 0 {
        start -= 1;
        digits[start] = HEX[size & 0xf];
        size >>= 4;
    }
    out.reserve(digits.len() - start + data.len() + 4);
    out.extend_from_slice(&digits[start..]);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Appends the last chunk and an empty trailer section: the end of the body.
pub fn write_last_chunk(out: &mut BytesMut) {
    out.extend_from_slice(b"0\r\n\r\n");
}

#[cfg(test)]
mod tests;
