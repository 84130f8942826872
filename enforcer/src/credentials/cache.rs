//! Verified tokens, by SHA-256 of the token: a repeated token skips decoding, JSON parsing and
//! the signature check.
//!
//! Safe because only tokens that fully verified are stored, the key is a collision-resistant
//! hash of the whole token (a different token cannot hit another's entry), entries expire with
//! the token (`exp` + leeway), and each entry carries the generation of the key set that
//! verified it, so a changed key set misses every older entry. Time checks still run on each
//! hit. Bounded: [`TokenCache::new`]'s capacity is spread over shards; a full shard first drops
//! expired and stale entries, and if still full is cleared (as the identity caches are), which
//! costs a re-verification of the tokens in use, never a wrong answer.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex, MutexGuard},
};

use super::{jwt::VerifiedJwt, time::UnixTime};

/// Shards, so that threads verifying different tokens rarely wait for one another.
const SHARDS: usize = 16;

pub struct TokenCache {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
}

/// Entries by SHA-256 of the token.
type Shard = HashMap<[u8; 32], Entry>;

struct Entry {
    verified: Arc<VerifiedJwt>,
    generation: u64,
    /// The entry is dropped at this time: the token's `exp` plus leeway.
    until: UnixTime,
}

impl TokenCache {
    /// A cache of about `entries` tokens (rounded up to a multiple of the shard count).
    pub fn new(entries: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            per_shard: entries.div_ceil(SHARDS).max(1),
        }
    }

    /// The cache key of a token.
    pub fn digest(token: &str) -> [u8; 32] {
        let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut out = [0; 32];
        out.copy_from_slice(d.as_ref());
        out
    }

    pub fn get(
        &self,
        digest: &[u8; 32],
        generation: u64,
        now: UnixTime,
    ) -> Option<Arc<VerifiedJwt>> {
        let mut shard = self.shard(digest);
        let e = shard.get(digest)?;
        if e.generation == generation && now < e.until {
            return Some(e.verified.clone());
        }
        shard.remove(digest);
        None
    }

    pub fn insert(
        &self,
        digest: [u8; 32],
        generation: u64,
        until: UnixTime,
        now: UnixTime,
        verified: Arc<VerifiedJwt>,
    ) {
        let mut shard = self.shard(&digest);
        if shard.len() >= self.per_shard && !shard.contains_key(&digest) {
            shard.retain(|_, e| e.generation == generation && now < e.until);
            if shard.len() >= self.per_shard {
                shard.clear();
            }
        }
        shard.insert(
            digest,
            Entry {
                verified,
                generation,
                until,
            },
        );
    }

    pub fn clear(&self) {
        for s in &self.shards {
            lock(s).clear();
        }
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, digest: &[u8; 32]) -> MutexGuard<'_, Shard> {
        lock(&self.shards[usize::from(digest[0]) % SHARDS])
    }
}

/// A panic while holding a shard cannot leave an entry half-written (inserts are single
/// operations), so a poisoned lock is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache")
            .field("entries", &self.len())
            .field("capacity", &(self.per_shard * SHARDS))
            .finish()
    }
}
