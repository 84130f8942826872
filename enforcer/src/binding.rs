//! Bind-on-first-use: the first caller to present a credential owns it.
//!
//! Enforces: once a token (or a JWT subject, or an API key) has been used by one caller, any
//! other caller presenting it is refused, across agent restarts. A caller is its attested
//! process identity: executable path, uid, systemd unit and container — not the binary's
//! digest, so an upgrade of the owner's binary does not lock it out.
//!
//! Bindings are never removed by the agent, so the store is an append-only file of JSON lines,
//! each written and synced before the first use it records is allowed, and replayed at start.
//! The store is bounded: when full it refuses new bindings rather than evicting old ones,
//! since evicting would let a stolen token be bound afresh.

use std::{
    collections::{HashMap, hash_map::Entry},
    fs::{File, OpenOptions},
    io::{self, BufRead, BufReader, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::Mutex,
};

use serde::{Deserialize, Serialize};

use crate::{credentials::BindingKey, identity::Identity};

/// Bindings kept at most. At ~150 bytes each, about 15 MiB.
pub const MAX_BINDINGS: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("binding store {}: cannot open", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("binding store {}: line {line} is not a binding", path.display())]
    Corrupt { path: PathBuf, line: usize },
}

/// What the store says about a credential presented by a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The caller owns it already.
    Owner,
    /// First use: it is now bound to the caller (and on disk).
    Bound,
    /// Another caller owns it.
    Other,
    /// First use, but the store is full: not bound, so not allowed.
    Full,
    /// First use, but the binding could not be written: not bound, so not allowed.
    Unwritable,
}

#[derive(Serialize, Deserialize)]
struct Line {
    credential: String,
    key: String,
    owner: String,
}

/// The bindings, in memory and in their file.
pub struct Bindings {
    path: PathBuf,
    max: usize,
    state: Mutex<State>,
}

struct State {
    /// (credential, key) → owner.
    owners: HashMap<(String, String), String>,
    /// Where new bindings are appended.
    file: File,
}

impl Bindings {
    /// Open (or create, mode 0600) the store at `path` and replay it.
    pub fn open(path: &Path, max: usize) -> Result<Self, Error> {
        let open_err = |source| Error::Open {
            path: path.to_owned(),
            source,
        };
        let mut map = HashMap::new();
        match File::open(path) {
            Ok(file) => {
                for (n, line) in BufReader::new(file).lines().enumerate() {
                    let line = line.map_err(open_err)?;
                    let l: Line = serde_json::from_str(&line).map_err(|_| Error::Corrupt {
                        path: path.to_owned(),
                        line: n + 1,
                    })?;
                    // The first binding of a key wins, as it did when it was written.
                    map.entry((l.credential, l.key)).or_insert(l.owner);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(open_err(e)),
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(open_err)?;
        Ok(Self {
            path: path.to_owned(),
            max,
            state: Mutex::new(State { owners: map, file }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.lock().owners.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Check `key` of `credential` for `owner`, binding it on first use. Blocking: a first use
    /// writes and syncs a line, so call it off the runtime's workers when it may bind.
    pub fn check(&self, credential: &str, key: &BindingKey, owner: &str) -> Outcome {
        let key = key_text(key);
        let mut guard = self.lock();
        let State { owners, file } = &mut *guard;
        let len = owners.len();
        match owners.entry((credential.to_owned(), key)) {
            Entry::Occupied(e) if e.get() == owner => Outcome::Owner,
            Entry::Occupied(_) => Outcome::Other,
            Entry::Vacant(_) if len >= self.max => Outcome::Full,
            Entry::Vacant(e) => {
                let line = Line {
                    credential: credential.to_owned(),
                    key: e.key().1.clone(),
                    owner: owner.to_owned(),
                };
                let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
                bytes.push(b'\n');
                match file.write_all(&bytes).and_then(|()| file.sync_data()) {
                    Ok(()) => {
                        e.insert(owner.to_owned());
                        Outcome::Bound
                    }
                    Err(err) => {
                        tracing::error!(
                            store = %self.path.display(),
                            error = %err,
                            "binding not written: first use refused"
                        );
                        Outcome::Unwritable
                    }
                }
            }
        }
    }

    /// Whether `key` of `credential` is already bound (to anyone): if not, [`Bindings::check`]
    /// would write.
    pub fn is_bound(&self, credential: &str, key: &BindingKey) -> bool {
        self.lock()
            .owners
            .contains_key(&(credential.to_owned(), key_text(key)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A binding key as stored: a subject as itself, a token by its fingerprint (never the token).
fn key_text(key: &BindingKey) -> String {
    match key {
        BindingKey::Subject(s) => format!("sub:{s}"),
        BindingKey::Token(fp) => format!("tok:{fp}"),
    }
}

/// The caller a binding names: its attested executable, uid, systemd unit and container.
pub fn owner_of(id: &Identity) -> String {
    let exe = id
        .process
        .as_ref()
        .and_then(|p| p.trusted_exe())
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "-".into());
    let cgroup = id.cgroup.as_deref();
    let unit = cgroup.and_then(|c| c.unit.as_deref()).unwrap_or("-");
    let container = cgroup.and_then(|c| c.container.as_deref()).unwrap_or("-");
    format!("exe={exe} uid={} unit={unit} container={container}", id.uid)
}

#[cfg(test)]
mod tests;
