//! A JWKS fetched over HTTPS (`jwksUrl`), cached and refreshed by a task.
//!
//! The task ([`super::Refreshers`]) fetches the set when the policy is put in force, then every
//! [`REFRESH_INTERVAL`], retrying a failed fetch with the same bounded backoff as OAuth2 tokens.
//! Requests never wait on the network: a set that cannot be fetched or parsed never removes the
//! keys in force, and before the first good fetch the credential's keys are unavailable
//! (requests needing them are answered 503).

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use arc_swap::ArcSwapOption;
use tracing::{error, info};

use super::{
    https::HttpsClient,
    jwk::{JwksError, KeySet},
    jwks_file::GENERATIONS,
    jwt::JwtError,
    metrics::{SourceKind, SourceMetrics},
    oauth2::{FetchError, HttpsUrl, OAuth2Error, backoff},
};

/// How often a fetched set is fetched again: identity providers publish a new key well before
/// signing with it (RFC 7517 rotation practice), and five minutes bounds how long a removed key
/// stays trusted.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(300);

/// Why a JWKS fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum JwksFetchError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("JWKS endpoint answered status {status}")]
    Status { status: u16 },
    #[error(transparent)]
    Jwks(#[from] JwksError),
}

pub struct JwksUrl {
    url: HttpsUrl,
    ca_file: Option<PathBuf>,
    client: HttpsClient,
    loaded: ArcSwapOption<(Arc<KeySet>, u64)>,
    error: Mutex<Option<Arc<str>>>,
}

impl fmt::Debug for JwksUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwksUrl")
            .field("url", &self.url.as_str())
            .field("status", &self.status())
            .finish()
    }
}

// === impl JwksUrl ===

impl JwksUrl {
    /// Check the settings (no network): keys are unavailable until the refresher fetches them.
    pub fn new(url: HttpsUrl, ca_file: Option<&Path>) -> Result<Self, OAuth2Error> {
        Ok(Self {
            client: HttpsClient::new(&url, ca_file)?,
            url,
            ca_file: ca_file.map(Path::to_owned),
            loaded: ArcSwapOption::empty(),
            error: Mutex::new(None),
        })
    }

    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    /// Whether `other` fetches the same set (a reload may take its keys over).
    pub(super) fn same_as(&self, other: &JwksUrl) -> bool {
        (&self.url, &self.ca_file) == (&other.url, &other.ca_file)
    }

    /// Take over the keys in force of `other`.
    pub(super) fn take_keys_from(&self, other: &JwksUrl) {
        self.loaded.store(other.loaded.load_full());
    }

    /// The keys in force and their generation, or why there are none.
    pub(crate) fn current(&self) -> Result<(Arc<KeySet>, u64), JwtError> {
        match &*self.loaded.load() {
            Some(l) => Ok((l.0.clone(), l.1)),
            None => Err(JwtError::KeysUnavailable {
                why: self
                    .error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
                    .unwrap_or_else(|| "not fetched yet".into()),
            }),
        }
    }

    /// Whether keys are in force: their count, or why not.
    pub fn status(&self) -> Result<usize, Arc<str>> {
        match &*self.loaded.load() {
            Some(l) => Ok(l.0.keys().len()),
            None => Err(self
                .error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_else(|| "not fetched yet".into())),
        }
    }

    /// One fetch; on success the set is in force.
    pub async fn fetch(&self) -> Result<usize, JwksFetchError> {
        let request = hyper::Request::get(self.url.as_str())
            .header(hyper::header::HOST, self.url.host_header())
            .header(
                hyper::header::ACCEPT,
                "application/json, application/jwk-set+json",
            )
            .body(http_body_util::Full::default());
        let result = async {
            let request = request.map_err(|e| FetchError::Malformed {
                reason: format!("BUG: request not built: {e}"),
            })?;
            let (status, body) = self.client.send(request).await?;
            if status != 200 {
                return Err(JwksFetchError::Status { status });
            }
            Ok(KeySet::from_jwks(&body)?)
        }
        .await;
        match result {
            Ok(set) => {
                let n = set.keys().len();
                let generation = GENERATIONS.fetch_add(1, Ordering::Relaxed);
                self.loaded
                    .store(Some(Arc::new((Arc::new(set), generation))));
                Ok(n)
            }
            Err(e) => {
                *self.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string().into());
                Err(e)
            }
        }
    }
}

/// Keep `jwks` fetched, until aborted. `first`: wait before the first fetch (keys taken over
/// from the previous policy are fresh enough).
pub(super) async fn run(
    jwks: Arc<JwksUrl>,
    credential: Arc<str>,
    sources: Arc<SourceMetrics>,
    first: Duration,
) {
    tokio::time::sleep(first).await;
    let mut failures = 0u32;
    loop {
        let wait = match jwks.fetch().await {
            Ok(keys) => {
                failures = 0;
                sources.succeeded(SourceKind::JwksUrl, &credential);
                info!(
                    event = "keys_loaded",
                    url = jwks.url(),
                    keys,
                    "JWKS fetched"
                );
                REFRESH_INTERVAL
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                sources.failed(SourceKind::JwksUrl, &credential, (&e).into());
                let wait = backoff(failures);
                error!(
                    event = "keys_rejected",
                    url = jwks.url(),
                    error = %e,
                    retry_s = wait.as_secs(),
                    "cannot fetch the JWKS; the previous keys, if any, stay in force"
                );
                wait
            }
        };
        tokio::time::sleep(wait).await;
    }
}
