//! The health of credential sources (JWKS URLs and files, OAuth2 token endpoints, injected
//! secret files): when each last worked and why it failed. A failing source turns into 503s
//! (keys unavailable, no token yet) or a stale credential, so it needs its own series.
//!
//! Series are labelled by the source's kind and the policy name it belongs to (the credential
//! for JWKS, the rule for injections): bounded by the policy. The gauges of a source a reload
//! removed are dropped ([`SourceMetrics::retain`]) so they cannot alert forever; the failure
//! counters stay (counters never go backwards).

use std::{
    collections::HashSet,
    sync::Mutex,
    time::{SystemTime, UNIX_EPOCH},
};

use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry};

use super::{
    inject::InjectError,
    jwk::JwksError,
    jwks_url::JwksFetchError,
    oauth2::{FetchError, TokenError},
};

/// What kind of source: the `kind` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKind {
    JwksUrl,
    JwksFile,
    OAuth2,
    InjectFile,
}

impl SourceKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            SourceKind::JwksUrl => "jwks_url",
            SourceKind::JwksFile => "jwks_file",
            SourceKind::OAuth2 => "oauth2",
            SourceKind::InjectFile => "inject_file",
        }
    }
}

/// Why a source failed: the `reason` label, a closed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceFailure {
    /// The host name did not resolve.
    Resolve,
    /// No connection (refused, unreachable, or through the proxy).
    Connect,
    /// The TLS handshake failed (certificate, protocol).
    Tls,
    /// No complete answer within the exchange timeout.
    Timeout,
    /// The endpoint answered a status other than success.
    HttpStatus,
    /// The answer or file is not what it must be (framing, JSON, keys, token, value).
    Parse,
    /// Reading a file (secret, keys, value) or the connection failed.
    Io,
}

impl SourceFailure {
    pub const fn as_str(self) -> &'static str {
        match self {
            SourceFailure::Resolve => "resolve",
            SourceFailure::Connect => "connect",
            SourceFailure::Tls => "tls",
            SourceFailure::Timeout => "timeout",
            SourceFailure::HttpStatus => "http_status",
            SourceFailure::Parse => "parse",
            SourceFailure::Io => "io",
        }
    }
}

impl From<&FetchError> for SourceFailure {
    fn from(e: &FetchError) -> Self {
        match e {
            FetchError::Secret(_) | FetchError::Io { .. } => SourceFailure::Io,
            FetchError::Resolve { .. } => SourceFailure::Resolve,
            FetchError::Connect { .. } => SourceFailure::Connect,
            FetchError::Tls { .. } => SourceFailure::Tls,
            FetchError::TimedOut => SourceFailure::Timeout,
            FetchError::TooLarge | FetchError::Malformed { .. } => SourceFailure::Parse,
            FetchError::Token(TokenError::Refused { .. } | TokenError::Status { .. }) => {
                SourceFailure::HttpStatus
            }
            FetchError::Token(_) => SourceFailure::Parse,
        }
    }
}

impl From<&JwksFetchError> for SourceFailure {
    fn from(e: &JwksFetchError) -> Self {
        match e {
            JwksFetchError::Fetch(e) => e.into(),
            JwksFetchError::Status { .. } => SourceFailure::HttpStatus,
            JwksFetchError::Jwks(e) => e.into(),
        }
    }
}

impl From<&JwksError> for SourceFailure {
    fn from(e: &JwksError) -> Self {
        match e {
            JwksError::Read { .. } => SourceFailure::Io,
            _ => SourceFailure::Parse,
        }
    }
}

impl From<&InjectError> for SourceFailure {
    fn from(e: &InjectError) -> Self {
        match e {
            InjectError::Read { .. } => SourceFailure::Io,
            InjectError::Empty { .. }
            | InjectError::TooLong { .. }
            | InjectError::NotAHeaderValue { .. } => SourceFailure::Parse,
        }
    }
}

/// The families of credential-source health, registered once and kept across reloads.
pub struct SourceMetrics {
    last_success: GaugeVec,
    last_attempt_successful: IntGaugeVec,
    failures: IntCounterVec,
    /// The sources with gauge series, to drop those a reload removed.
    known: Mutex<HashSet<(SourceKind, Box<str>)>>,
}

impl SourceMetrics {
    pub fn new() -> prometheus::Result<Self> {
        let labels = &["kind", "name"];
        Ok(Self {
            last_success: GaugeVec::new(
                Opts::new(
                    "enforcer_credential_source_last_success_timestamp_seconds",
                    "When the credential source last loaded or fetched successfully (Unix time).",
                ),
                labels,
            )?,
            last_attempt_successful: IntGaugeVec::new(
                Opts::new(
                    "enforcer_credential_source_last_attempt_successful",
                    "1 if the credential source's last load or fetch succeeded, else 0.",
                ),
                labels,
            )?,
            failures: IntCounterVec::new(
                Opts::new(
                    "enforcer_credential_source_failures_total",
                    "Failed loads or fetches of a credential source, by reason.",
                ),
                &["kind", "name", "reason"],
            )?,
            known: Mutex::new(HashSet::new()),
        })
    }

    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.last_success.clone()))?;
        registry.register(Box::new(self.last_attempt_successful.clone()))?;
        registry.register(Box::new(self.failures.clone()))
    }

    pub fn succeeded(&self, kind: SourceKind, name: &str) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.last_success
            .with_label_values(&[kind.as_str(), name])
            .set(now);
        self.attempted(kind, name, true);
    }

    pub fn failed(&self, kind: SourceKind, name: &str, reason: SourceFailure) {
        self.failures
            .with_label_values(&[kind.as_str(), name, reason.as_str()])
            .inc();
        self.attempted(kind, name, false);
    }

    fn attempted(&self, kind: SourceKind, name: &str, ok: bool) {
        self.last_attempt_successful
            .with_label_values(&[kind.as_str(), name])
            .set(i64::from(ok));
        self.lock().insert((kind, name.into()));
    }

    /// Drop the gauges of every source not in `live` (the sources of the policy in force).
    pub fn retain(&self, live: &[(SourceKind, &str)]) {
        self.lock().retain(|(kind, name)| {
            let keep = live.iter().any(|(k, n)| k == kind && *n == &**name);
            if !keep {
                let labels = [kind.as_str(), &**name];
                // A source without a success yet has no timestamp series: nothing to remove.
                let _ = self.last_success.remove_label_values(&labels);
                let _ = self.last_attempt_successful.remove_label_values(&labels);
            }
            keep
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<(SourceKind, Box<str>)>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(registry: &Registry) -> Vec<String> {
        let mut text = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&registry.gather(), &mut text)
            .unwrap();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| match l.split_once("_timestamp_seconds{") {
                // The time is the clock's: keep the series, not the value.
                Some((name, rest)) => format!(
                    "{name}_timestamp_seconds{{{}",
                    rest.rsplit_once(' ').unwrap().0
                ),
                None => l.to_owned(),
            })
            .collect()
    }

    #[test]
    fn successes_failures_and_removed_sources() {
        let registry = Registry::new();
        let m = SourceMetrics::new().unwrap();
        m.register(&registry).unwrap();
        m.succeeded(SourceKind::JwksUrl, "idp");
        m.failed(SourceKind::JwksUrl, "idp", SourceFailure::Connect);
        m.failed(SourceKind::OAuth2, "billing", SourceFailure::HttpStatus);
        assert_eq!(
            lines(&registry),
            [
                r#"enforcer_credential_source_failures_total{kind="jwks_url",name="idp",reason="connect"} 1"#,
                r#"enforcer_credential_source_failures_total{kind="oauth2",name="billing",reason="http_status"} 1"#,
                r#"enforcer_credential_source_last_attempt_successful{kind="jwks_url",name="idp"} 0"#,
                r#"enforcer_credential_source_last_attempt_successful{kind="oauth2",name="billing"} 0"#,
                r#"enforcer_credential_source_last_success_timestamp_seconds{kind="jwks_url",name="idp"}"#,
            ]
        );
        m.retain(&[(SourceKind::OAuth2, "billing")]);
        assert_eq!(
            lines(&registry),
            [
                r#"enforcer_credential_source_failures_total{kind="jwks_url",name="idp",reason="connect"} 1"#,
                r#"enforcer_credential_source_failures_total{kind="oauth2",name="billing",reason="http_status"} 1"#,
                r#"enforcer_credential_source_last_attempt_successful{kind="oauth2",name="billing"} 0"#,
            ]
        );
    }

    #[test]
    fn fetch_errors_map_to_their_reason() {
        let cases = [
            (FetchError::TimedOut, SourceFailure::Timeout),
            (FetchError::Tls { reason: "x".into() }, SourceFailure::Tls),
            (
                FetchError::Token(TokenError::Status { status: 502 }),
                SourceFailure::HttpStatus,
            ),
            (FetchError::Token(TokenError::NotJson), SourceFailure::Parse),
            (FetchError::TooLarge, SourceFailure::Parse),
        ];
        for (e, want) in cases {
            assert_eq!(SourceFailure::from(&e), want, "{e}");
        }
    }
}
