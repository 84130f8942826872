//! Fingerprints: how a record refers to a token or key without holding it.
//!
//! `HMAC-SHA256(host key, secret)`, truncated to 64 bits and written as 16 hex digits. The host
//! key is 32 random bytes in a file only the agent can read, created on first use and kept
//! across restarts, so the same token has the same fingerprint in every record of this host
//! (and bind-on-first-use state survives a restart), while a fingerprint is useless on another
//! host and cannot be checked against a guessed token without the key. 64 bits make an
//! accidental collision among the tokens a host sees (far below 2^32) negligible.

use std::{
    fmt,
    fs::{self, File, OpenOptions},
    io::{self, Read as _, Write as _},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use ring::{
    hmac,
    rand::{SecureRandom as _, SystemRandom},
};

/// Hashes secrets into [`Fingerprint`]s with a per-host key.
pub struct Fingerprinter {
    key: hmac::Key,
}

/// 16 lower-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 16]);

#[derive(Debug, thiserror::Error)]
pub enum FingerprintError {
    #[error("fingerprint key {}: cannot read", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("fingerprint key {}: cannot create", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("fingerprint key {}: {len} bytes instead of {KEY_BYTES}", path.display())]
    Length { path: PathBuf, len: u64 },
    #[error("fingerprint key {}: not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error("fingerprint key {}: owned by uid {uid}, not by the agent (uid {euid})", path.display())]
    Owner { path: PathBuf, uid: u32, euid: u32 },
    #[error(
        "fingerprint key {}: mode {mode:04o} lets other users read or change it (expected 0600)",
        path.display()
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("the operating system's random number generator failed")]
    Random,
}

/// Size of the host key, in bytes: HMAC-SHA256's block-independent full strength.
pub const KEY_BYTES: usize = 32;

impl Fingerprinter {
    /// The host key from `path`, created (mode 0600, 32 random bytes) if the file does not
    /// exist. Refuses a key file that is not a regular file (symbolic links are not followed),
    /// is not owned by the agent's user, is not 32 bytes, or is readable or writable by group or
    /// others. The directory is the caller's to choose: one only the agent's user can write.
    pub fn load_or_create(path: &Path) -> Result<Self, FingerprintError> {
        match Self::load(path) {
            Err(FingerprintError::Read { source, .. })
                if source.kind() == io::ErrorKind::NotFound =>
            {
                Self::create(path)?;
                Self::load(path)
            }
            other => other,
        }
    }

    /// A fingerprinter with a random key that is not kept: fingerprints differ from one run to
    /// the next. For tools and tests.
    pub fn ephemeral() -> Result<Self, FingerprintError> {
        let mut key = [0u8; KEY_BYTES];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| FingerprintError::Random)?;
        Ok(Self::from_key(&key))
    }

    pub fn from_key(key: &[u8; KEY_BYTES]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        }
    }

    pub fn fingerprint(&self, secret: &[u8]) -> Fingerprint {
        let tag = hmac::sign(&self.key, secret);
        let mut out = [0u8; 16];
        for (i, b) in tag.as_ref()[..8].iter().enumerate() {
            out[2 * i] = HEX[usize::from(b >> 4)];
            out[2 * i + 1] = HEX[usize::from(b & 0xf)];
        }
        Fingerprint(out)
    }

    fn load(path: &Path) -> Result<Self, FingerprintError> {
        let read = |source| FingerprintError::Read {
            path: path.to_owned(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(read)?;
        let meta = file.metadata().map_err(read)?;
        if !meta.is_file() {
            return Err(FingerprintError::NotAFile {
                path: path.to_owned(),
            });
        }
        let euid = nix::unistd::geteuid().as_raw();
        if meta.uid() != euid {
            return Err(FingerprintError::Owner {
                path: path.to_owned(),
                uid: meta.uid(),
                euid,
            });
        }
        if meta.mode() & 0o077 != 0 {
            return Err(FingerprintError::Permissions {
                path: path.to_owned(),
                mode: meta.mode() & 0o7777,
            });
        }
        if meta.len() != KEY_BYTES as u64 {
            return Err(FingerprintError::Length {
                path: path.to_owned(),
                len: meta.len(),
            });
        }
        let mut key = [0u8; KEY_BYTES];
        file.take(KEY_BYTES as u64)
            .read_exact(&mut key)
            .map_err(read)?;
        Ok(Self::from_key(&key))
    }

    /// Write a new key to a temporary file and link it into place, so no reader ever sees a
    /// partial key, and two agents starting at once agree on one key (the second link fails,
    /// and both read the first).
    fn create(path: &Path) -> Result<(), FingerprintError> {
        let create = |source| FingerprintError::Create {
            path: path.to_owned(),
            source,
        };
        let mut key = [0u8; KEY_BYTES];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| FingerprintError::Random)?;
        let name = path
            .file_name()
            .ok_or_else(|| create(io::Error::other("no file name")))?;
        let tmp = path.with_file_name(format!(
            ".{}.{}.tmp",
            name.to_string_lossy(),
            std::process::id()
        ));
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)?;
            f.write_all(&key)?;
            f.sync_all()?;
            match fs::hard_link(&tmp, path) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
                _ => Ok(()),
            }
        })();
        let _ = fs::remove_file(&tmp);
        written.map_err(create)?;
        // Make the new name durable, so a crash does not lose the key (and change every
        // fingerprint after the restart).
        if let Some(dir) = path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            File::open(dir).and_then(|d| d.sync_all()).map_err(create)?;
        }
        Ok(())
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The key is never printed.
impl fmt::Debug for Fingerprinter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Fingerprinter { .. }")
    }
}

// === impl Fingerprint ===

impl Fingerprint {
    pub fn as_str(&self) -> &str {
        // Only hex digits are ever written.
        std::str::from_utf8(&self.0).unwrap_or("????????????????")
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.as_str())
    }
}
