//! A JWKS file, reloaded when it changes.
//!
//! The agent does not fetch this file (for that, see `jwks_url.rs`): a separate job (a systemd
//! timer running `curl` over HTTPS, a secrets agent, configuration management) keeps it current,
//! and the proxy's
//! reload loop calls [`JwksFile::refresh_if_changed`], which costs one `stat` when nothing
//! changed. Write the file atomically (to a temporary file, then `rename`); a half-written file
//! fails to parse and is retried at the next change.
//!
//! A file that cannot be read or parsed never removes keys in force: the previous set stays
//! until a good one replaces it. Before the first good read the credential's keys are
//! unavailable, and requests that need them are answered 503 (the agent still starts, so the
//! rest of the policy is enforced).

use std::{
    fmt,
    fs::{self, File},
    io::Read as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use arc_swap::ArcSwapOption;

use super::{
    jwk::{JwksError, KeySet, MAX_JWKS_BYTES, Skipped},
    jwt::JwtError,
};

/// Generations of key sets, unique in the process: a verified-token cache entry names the one
/// that verified it.
pub(super) static GENERATIONS: AtomicU64 = AtomicU64::new(1);

pub struct JwksFile {
    path: PathBuf,
    loaded: ArcSwapOption<Loaded>,
    seen: Mutex<Seen>,
}

/// The file as last looked at, and why it could not be used, if it could not.
struct Seen {
    last: Option<Observed>,
    error: Option<Arc<str>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Observed {
    Missing(std::io::ErrorKind),
    File(Stamp),
}

struct Loaded {
    keys: Arc<KeySet>,
    generation: u64,
}

/// What identifies a version of the file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

/// What a refresh found.
#[derive(Debug)]
pub enum Refresh {
    /// The file has not changed since it was last read.
    Unchanged,
    /// A new key set is in force (verified tokens cached under the old one are forgotten).
    Loaded {
        keys: usize,
        /// Keys of the file that were not taken, and why.
        skipped: Box<[Skipped]>,
    },
    /// The file changed but could not be used; the previous keys, if any, stay in force.
    Failed(JwksError),
}

impl JwksFile {
    /// Read the file once. Never fails: the outcome says whether keys are available.
    pub fn open(path: &Path) -> (Self, Refresh) {
        let file = Self {
            path: path.to_owned(),
            loaded: ArcSwapOption::empty(),
            seen: Mutex::new(Seen {
                last: None,
                error: None,
            }),
        };
        let first = file.refresh_if_changed();
        (file, first)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-read the file if its identity, size or times changed since the last look (or it
    /// appeared or vanished). A vanished file is reported once; its keys stay in force.
    pub fn refresh_if_changed(&self) -> Refresh {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let (observed, missing) = match fs::metadata(&self.path) {
            Ok(m) => (Observed::File(Stamp::of(&m)), None),
            Err(e) => (Observed::Missing(e.kind()), Some(e)),
        };
        if seen.last == Some(observed) {
            return Refresh::Unchanged;
        }
        seen.last = Some(observed);
        let result = match missing {
            Some(source) => Err(JwksError::Read {
                path: self.path.clone(),
                source,
            }),
            None => self.read(),
        };
        match result {
            Ok(keys) => {
                let outcome = Refresh::Loaded {
                    keys: keys.keys().len(),
                    skipped: keys.skipped().into(),
                };
                self.loaded.store(Some(Arc::new(Loaded {
                    keys: Arc::new(keys),
                    generation: GENERATIONS.fetch_add(1, Ordering::Relaxed),
                })));
                seen.error = None;
                outcome
            }
            Err(e) => {
                seen.error = Some(e.to_string().into());
                Refresh::Failed(e)
            }
        }
    }

    fn read(&self) -> Result<KeySet, JwksError> {
        let read = |source| JwksError::Read {
            path: self.path.clone(),
            source,
        };
        let file = File::open(&self.path).map_err(read)?;
        let mut bytes = Vec::new();
        file.take(MAX_JWKS_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(read)?;
        KeySet::from_jwks(&bytes)
    }

    /// The keys in force and their generation, or why there are none.
    pub(crate) fn current(&self) -> Result<(Arc<KeySet>, u64), JwtError> {
        match &*self.loaded.load() {
            Some(l) => Ok((l.keys.clone(), l.generation)),
            None => {
                let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
                Err(JwtError::KeysUnavailable {
                    why: seen.error.clone().unwrap_or_else(|| "not read yet".into()),
                })
            }
        }
    }

    /// Whether keys are in force: their count, or why not.
    pub fn status(&self) -> Result<usize, Arc<str>> {
        self.current()
            .map(|(k, _)| k.keys().len())
            .map_err(|e| match e {
                JwtError::KeysUnavailable { why } => why,
                other => other.to_string().into(),
            })
    }
}

impl Stamp {
    fn of(m: &fs::Metadata) -> Self {
        Self {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        }
    }
}

impl fmt::Debug for JwksFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwksFile")
            .field("path", &self.path)
            .field("status", &self.status())
            .finish()
    }
}
