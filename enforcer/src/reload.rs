//! Policy hot reload, on file change and on SIGHUP.
//!
//! A reload compiles the new file beside the running policy. Only when it is complete is it
//! made current: first the kernel's protected-destinations map is brought in line, then the
//! policy pointer is swapped, so requests already being decided finish under the old policy
//! and every later request sees the new one. A broken file is reported and changes nothing.

use std::{
    fs, io,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwap;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::credentials::{Injection, Refresh, Refreshers, SourceKind, SourceMetrics};

use crate::{policy::Policy, redirect::Redirect};

/// How often the file is checked for changes. Polling its content (not inotify) also sees the
/// symlink swaps Kubernetes uses to update mounted ConfigMaps.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The policy in force, shared by every connection.
pub struct PolicyStore {
    current: ArcSwap<Policy>,
    /// The refresher tasks (OAuth2 tokens, JWKS URLs) of the policy in force; replaced (and so
    /// stopped) with it.
    refreshers: Mutex<Refreshers>,
    pub reloads: AtomicU64,
    pub failures: AtomicU64,
    /// Whether the last reload attempt succeeded (true before the first one: the policy in
    /// force loaded).
    pub last_reload_successful: AtomicBool,
    /// Unix time in milliseconds of the last successful load (the initial one counts) and of
    /// the last attempt.
    pub last_success_ms: AtomicU64,
    pub last_attempt_ms: AtomicU64,
    /// The health of the credential sources, kept across reloads.
    sources: Arc<SourceMetrics>,
}

impl PolicyStore {
    /// Puts `policy` in force and starts its refreshers: call inside the tokio runtime.
    pub fn new(policy: Policy, sources: Arc<SourceMetrics>) -> Self {
        let mut refreshers = Refreshers::start(&injections(&policy), &[], &sources);
        refreshers.add_jwks(&policy.credentials().jwks_urls(), &[], &sources);
        loaded_sources(&policy, &sources);
        let now = unix_ms();
        Self {
            current: ArcSwap::from_pointee(policy),
            refreshers: Mutex::new(refreshers),
            reloads: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_reload_successful: AtomicBool::new(true),
            last_success_ms: AtomicU64::new(now),
            last_attempt_ms: AtomicU64::new(now),
            sources,
        }
    }

    /// The policy in force. Connections keep per-policy facts (which identities a caller
    /// matches) beside the `Arc` and recompute them when a reload hands out a new one.
    pub fn current(&self) -> Arc<Policy> {
        self.current.load_full()
    }

    fn replace(&self, policy: Policy) {
        let mut refreshers = self.refreshers.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.current();
        let previous: Vec<_> = injections(&old).into_iter().map(|(_, i)| i).collect();
        let mut started = Refreshers::start(&injections(&policy), &previous, &self.sources);
        let previous: Vec<_> = old
            .credentials()
            .jwks_urls()
            .into_iter()
            .map(|(_, j)| j)
            .collect();
        started.add_jwks(&policy.credentials().jwks_urls(), &previous, &self.sources);
        loaded_sources(&policy, &self.sources);
        self.current.store(Arc::new(policy));
        // Dropping the old policy's refreshers stops them.
        *refreshers = started;
    }
}

/// The injections of `policy`, with the id of their rule.
fn injections(policy: &Policy) -> Vec<(Arc<str>, Arc<Injection>)> {
    policy
        .rules()
        .iter()
        .filter_map(|r| Some((r.shared_id().clone(), r.shared_injection()?.clone())))
        .collect()
}

/// Put `policy`'s credential sources in the health metrics as it is put in force: its files
/// were read by the load that built it, and sources of a replaced policy are dropped.
fn loaded_sources(policy: &Policy, sources: &SourceMetrics) {
    let mut live = Vec::new();
    for (rule, injection) in injections(policy) {
        if injection.file().is_some() {
            sources.succeeded(SourceKind::InjectFile, &rule);
            live.push((SourceKind::InjectFile, rule));
        } else {
            live.push((SourceKind::OAuth2, rule));
        }
    }
    for (credential, keys) in policy.credentials().key_sources() {
        if keys == Some(true) {
            sources.succeeded(SourceKind::JwksFile, &credential);
        }
        let kind = match keys {
            Some(_) => SourceKind::JwksFile,
            None => SourceKind::JwksUrl,
        };
        live.push((kind, credential));
    }
    let live: Vec<_> = live.iter().map(|(k, n)| (*k, &**n)).collect();
    sources.retain(&live);
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What the file holds, if that is not the version last seen, which it then becomes. A version
/// is the content's digest (`None`: unreadable): file metadata can miss a change (two writes
/// of the same size within the timestamp granularity), and the first version seen is the one
/// the policy in force was parsed from, however late the watch starts.
fn new_version(path: &Path, seen: &mut Option<String>) -> Option<io::Result<String>> {
    let text = fs::read_to_string(path);
    let version = text.as_ref().ok().map(|t| digest(t));
    if version == *seen {
        return None;
    }
    *seen = version;
    Some(text)
}

fn digest(text: &str) -> String {
    crate::identity::sha256_hex(&mut text.as_bytes()).expect("reading a byte slice cannot fail")
}

/// Watch `path` and reload on change or SIGHUP, until the returned task is dropped. SIGHUP is
/// handled from this call on, not from the task's first poll: the agent may say it is ready
/// as soon as the task is spawned, and an unhandled SIGHUP would end it.
pub fn watch(
    path: PathBuf,
    store: Arc<PolicyStore>,
    redirect: Arc<Redirect>,
) -> impl Future<Output = ()> {
    let mut sighup = signal(SignalKind::hangup())
        .inspect_err(|e| error!(error = %e, "cannot handle SIGHUP: reload on file change only"))
        .ok();
    let mut seen = Some(store.current().sha256().to_owned());
    async move {
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        loop {
            let hangup = async {
                match &mut sighup {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            let (trigger, text) = tokio::select! {
                _ = hangup => {
                    // Loaded whether or not it changed; the watch then knows it as seen.
                    let text = fs::read_to_string(&path);
                    seen = text.as_ref().ok().map(|t| digest(t));
                    ("sighup", text)
                }
                _ = tick.tick() => {
                    refresh_secrets(&store);
                    let Some(text) = new_version(&path, &mut seen) else {
                        continue;
                    };
                    ("file change", text)
                }
            };
            reload(&path, text, &store, &redirect, trigger).await;
        }
    }
}

/// Re-read the key and injected-secret files of the policy in force that changed (one `stat`
/// each otherwise).
fn refresh_secrets(store: &PolicyStore) {
    let policy = store.current();
    let sources = &store.sources;
    for (rule, injection) in injections(&policy) {
        // OAuth2 injections have their own task.
        let Some(file) = injection.file() else {
            continue;
        };
        let file = file.display();
        match injection.refresh_if_changed() {
            None => {}
            Some(Ok(())) => {
                sources.succeeded(SourceKind::InjectFile, &rule);
                info!(event = "secret_loaded", %file, "injected secret loaded")
            }
            Some(Err(e)) => {
                sources.failed(SourceKind::InjectFile, &rule, (&e).into());
                error!(
                    event = "secret_rejected",
                    error = %e,
                    "injected secret file refused; the previous value stays in force"
                )
            }
        }
    }
    for r in policy.credentials().refresh_if_changed() {
        let file = r.path.display();
        match r.outcome {
            Refresh::Unchanged => {}
            Refresh::Loaded { keys, skipped } => {
                sources.succeeded(SourceKind::JwksFile, &r.credential);
                info!(event = "keys_loaded", credential = %r.credential, %file, keys, "keys loaded");
                for s in skipped.iter() {
                    warn!(
                        credential = %r.credential,
                        %file,
                        index = s.index,
                        kid = ?s.kid,
                        why = %s.why,
                        "key not used"
                    );
                }
            }
            Refresh::Failed(e) => {
                sources.failed(SourceKind::JwksFile, &r.credential, (&e).into());
                error!(
                    event = "keys_rejected",
                    credential = %r.credential,
                    %file,
                    error = %crate::error::chain(&e),
                    "keys file refused; the previous keys stay in force"
                )
            }
        }
    }
}

/// Put the policy `text` read from `path` in force, or report why not.
async fn reload(
    path: &Path,
    text: io::Result<String>,
    store: &PolicyStore,
    redirect: &Redirect,
    trigger: &'static str,
) {
    let owned = path.to_owned();
    // Loading resolves host names: keep it off the runtime's workers.
    let loaded = tokio::task::spawn_blocking(move || match text {
        Ok(text) => Policy::parse(&owned, &text),
        Err(source) => Err(crate::policy::Error::Read {
            path: owned,
            source,
        }),
    })
    .await;
    let result = match loaded {
        Ok(Ok(policy)) => match redirect.set_destinations(&policy.protected()) {
            Ok(()) => {
                let services = policy.services.len();
                store.replace(policy);
                Ok(services)
            }
            Err(e) => Err(crate::error::chain(&e)),
        },
        Ok(Err(e)) => Err(crate::error::chain(&e)),
        Err(e) => Err(format!("BUG: policy load panicked: {e}")),
    };
    let now = unix_ms();
    store.last_attempt_ms.store(now, Relaxed);
    store.last_reload_successful.store(result.is_ok(), Relaxed);
    match result {
        Ok(services) => {
            store.last_success_ms.store(now, Relaxed);
            store.reloads.fetch_add(1, Relaxed);
            info!(
                event = "policy_reloaded",
                trigger, services, "policy reloaded"
            );
        }
        Err(e) => {
            store.failures.fetch_add(1, Relaxed);
            error!(
                event = "policy_rejected",
                trigger,
                error = %e,
                "policy reload failed; the previous policy stays in force"
            );
        }
    }
}

#[cfg(test)]
mod tests;
