//! Secretless injection: a rule adds a credential the application never holds.
//!
//! The value of one request header is read from a file the agent watches (written by whatever
//! manages the secret); on every request the rule allows, the agent replaces whatever the
//! application sent on that header with it. A rotated file takes effect at the next check,
//! without a restart. The value never appears in a log, a record or an error.

use std::{
    fmt, fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use arc_swap::ArcSwapOption;

use super::oauth2::OAuth2;

/// Longest injected value, in bytes: a large bearer token fits.
pub const MAX_INJECTED_BYTES: usize = 8 * 1024;

/// Header fields the agent never injects: they frame or route the request, and an injected
/// one would change what the policy decided on.
pub const NOT_INJECTABLE: [&str; 10] = [
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
    "upgrade",
    "expect",
    "te",
    "trailer",
    "keep-alive",
    "proxy-connection",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    #[error("cannot read {}: {reason}", path.display())]
    Read { path: PathBuf, reason: String },
    #[error("{} is empty", path.display())]
    Empty { path: PathBuf },
    #[error("{} holds more than {MAX_INJECTED_BYTES} bytes", path.display())]
    TooLong { path: PathBuf },
    #[error("{} holds a control character or line break: not a header value", path.display())]
    NotAHeaderValue { path: PathBuf },
}

/// A header value to inject. Shows as `<redacted>`.
pub struct Secret(Box<[u8]>);

impl Secret {
    pub(super) fn new(value: Box<[u8]>) -> Self {
        Self(value)
    }

    /// The value, for the request head only.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One rule's `inject`: a header and where its value comes from.
pub struct Injection {
    header: Box<str>,
    source: Source,
    /// `None` only for OAuth2, until the first token arrives.
    value: ArcSwapOption<Secret>,
}

enum Source {
    File {
        file: PathBuf,
        /// The file's stamp when last read.
        seen: Mutex<Option<Stamp>>,
    },
    OAuth2(OAuth2),
}

impl fmt::Debug for Injection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Injection");
        d.field("header", &self.header);
        match &self.source {
            Source::File { file, .. } => d.field("file", file),
            Source::OAuth2(o) => d.field("oauth2", o),
        };
        d.finish_non_exhaustive()
    }
}

impl Injection {
    /// Read `file` now; an unreadable or invalid file is an error (the policy is refused).
    pub fn load(header: &str, file: &Path) -> Result<Self, InjectError> {
        let (stamp, secret) = read(file)?;
        Ok(Self {
            header: header.to_ascii_lowercase().into(),
            source: Source::File {
                file: file.to_owned(),
                seen: Mutex::new(Some(stamp)),
            },
            value: ArcSwapOption::new(Some(Arc::new(secret))),
        })
    }

    /// An injection whose value comes from an OAuth2 token endpoint: none until the refresher
    /// ([`super::Refreshers`]) obtains the first token.
    pub fn oauth2(header: &str, oauth2: OAuth2) -> Self {
        Self {
            header: header.to_ascii_lowercase().into(),
            source: Source::OAuth2(oauth2),
            value: ArcSwapOption::empty(),
        }
    }

    /// The header, lower case.
    pub fn header(&self) -> &str {
        &self.header
    }

    /// The file the value is read from; `None` for OAuth2.
    pub fn file(&self) -> Option<&Path> {
        match &self.source {
            Source::File { file, .. } => Some(file),
            Source::OAuth2(_) => None,
        }
    }

    /// The token endpoint settings, for OAuth2.
    pub fn oauth2_source(&self) -> Option<&OAuth2> {
        match &self.source {
            Source::File { .. } => None,
            Source::OAuth2(o) => Some(o),
        }
    }

    /// The value in force: the last good read of the file, or the last token obtained.
    /// `None`: no OAuth2 token yet; the request must not be forwarded without it.
    pub fn value(&self) -> Option<Arc<Secret>> {
        self.value.load_full()
    }

    pub(super) fn set_value(&self, value: Arc<Secret>) {
        self.value.store(Some(value));
    }

    /// Re-read the file if it changed since the last read (one `stat` otherwise). `None`:
    /// unchanged. A file that became unreadable or invalid keeps the previous value in force.
    /// OAuth2 injections are refreshed by their own task: always `None`.
    pub fn refresh_if_changed(&self) -> Option<Result<(), InjectError>> {
        let Source::File { file, seen } = &self.source else {
            return None;
        };
        let stamp = match stamp(file) {
            Ok(stamp) => stamp,
            Err(e) => return Some(Err(e)),
        };
        let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
        if *seen == Some(stamp) {
            return None;
        }
        *seen = Some(stamp);
        Some(read(file).map(|(_, secret)| self.set_value(Arc::new(secret))))
    }
}

/// (device, inode, size, mtime ns): what tells a changed file without reading it.
type Stamp = (u64, u64, u64, i64);

fn stamp(path: &Path) -> Result<Stamp, InjectError> {
    let md = fs::metadata(path).map_err(|e| read_error(path, e))?;
    Ok((
        md.dev(),
        md.ino(),
        md.size(),
        md.mtime() * 1_000_000_000 + md.mtime_nsec(),
    ))
}

fn read_error(path: &Path, e: std::io::Error) -> InjectError {
    InjectError::Read {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

/// Read and check a value file.
fn read(path: &Path) -> Result<(Stamp, Secret), InjectError> {
    let stamp = stamp(path)?;
    let mut bytes = fs::read(path).map_err(|e| read_error(path, e))?;
    // One final line break is how files end, not part of the value.
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    let path = path.to_owned();
    if bytes.is_empty() {
        return Err(InjectError::Empty { path });
    }
    if bytes.len() > MAX_INJECTED_BYTES {
        return Err(InjectError::TooLong { path });
    }
    // RFC 9110 field-value: visible characters, obs-text, and inner spaces or tabs.
    let visible = bytes
        .iter()
        .all(|&b| b == b'\t' || b == b' ' || (b >= 0x21 && b != 0x7f));
    let trimmed =
        !matches!(bytes.first(), Some(b' ' | b'\t')) && !matches!(bytes.last(), Some(b' ' | b'\t'));
    if !visible || !trimmed {
        return Err(InjectError::NotAHeaderValue { path });
    }
    Ok((stamp, Secret(bytes.into_boxed_slice())))
}
