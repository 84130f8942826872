//! OAuth2 client-credentials injection (RFC 6749 §4.4): the injected value is an access token
//! the agent obtains from a token endpoint, not a file.
//!
//! One tokio task per injection ([`Refreshers`]) fetches a token, stores `Bearer <token>` in
//! the injection, and refreshes it before it expires, with bounded exponential backoff on
//! failure. Requests never wait on the network: they use the last good token, and before the
//! first one arrives the proxy answers 503. Neither the token nor the client secret appears in
//! a log, an error or `Debug` output.
//!
//! The HTTPS client (addresses raced, `HTTPS_PROXY` honoured, bounded) is
//! [`super::https::HttpsClient`]; this module builds the request and checks the answer
//! strictly (RFC 6749 §5.1, §5.2).

use std::{
    fmt, fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Request,
    header::{self, HeaderValue},
};
use rustls::pki_types::ServerName;
use tokio::time::Instant;
use tracing::{error, info};

use super::{
    https::{EXCHANGE_TIMEOUT, HttpsClient, MAX_RESPONSE_BYTES},
    inject::{Injection, MAX_INJECTED_BYTES, Secret},
    jwks_url::JwksUrl,
    metrics::{SourceKind, SourceMetrics},
};

/// Longest client secret file, in bytes.
const MAX_SECRET_BYTES: usize = 4 * 1024;

/// Backoff after a failed fetch: doubles from the first to the last.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// A token refreshes at 80% of its lifetime, but at least this long before it expires.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(10);
/// Never refresh more often than this, whatever `expires_in` says.
pub const MIN_REFRESH: Duration = Duration::from_secs(1);
/// `expires_in` is optional (RFC 6749 §5.1): without it, the token is refreshed after this.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OAuth2Error {
    #[error("URL must use https://")]
    NotHttps,
    #[error("URL `{url}` is malformed: {reason}")]
    BadUrl { url: String, reason: &'static str },
    #[error("cannot read {}: {reason}", path.display())]
    Read { path: PathBuf, reason: String },
    #[error("{} is readable by group or others (mode {mode:o}): it must be 0600", path.display())]
    SecretModeTooOpen { path: PathBuf, mode: u32 },
    #[error("{} is owned by uid {uid}: it must be owned by root or the agent", path.display())]
    SecretOwner { path: PathBuf, uid: u32 },
    #[error("{} is empty or longer than {MAX_SECRET_BYTES} bytes", path.display())]
    BadSecret { path: PathBuf },
    #[error("{} holds no usable PEM certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error("the proxy for this URL (HTTPS_PROXY) must be an http:// proxy, not `{scheme}`")]
    UnsupportedProxy { scheme: String },
    #[error("`{field}` holds a character a form field cannot carry")]
    BadField { field: &'static str },
}

/// Why a fetch failed. Never carries the token or the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("client secret: {0}")]
    Secret(OAuth2Error),
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("cannot connect: {reason}")]
    Connect { reason: String },
    #[error("TLS: {reason}")]
    Tls { reason: String },
    #[error("I/O: {reason}")]
    Io { reason: String },
    #[error("no answer within {}s", EXCHANGE_TIMEOUT.as_secs())]
    TimedOut,
    #[error("response larger than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
    #[error("malformed response: {reason}")]
    Malformed { reason: String },
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// A token response refused (RFC 6749 §5.1, §5.2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// §5.2: the endpoint said why; `error` is its code (`invalid_client`, ...).
    #[error("token endpoint refused (status {status}): {error}")]
    Refused { status: u16, error: String },
    #[error("token endpoint answered status {status}")]
    Status { status: u16 },
    #[error("token response is not the JSON object RFC 6749 §5.1 describes")]
    NotJson,
    #[error("token type `{token_type}` is not Bearer")]
    NotBearer { token_type: String },
    #[error("access token empty, too long or not a header value")]
    BadToken,
    #[error("expires_in is 0")]
    ZeroLifetime,
}

/// A token the endpoint issued: the header value and how long it lasts.
pub struct Token {
    pub value: Secret,
    pub lifetime: Duration,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

/// An `https://` URL (a token endpoint, a JWKS), split for connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpsUrl {
    url: String,
    host: String,
    port: u16,
}

// === impl HttpsUrl ===

impl HttpsUrl {
    pub fn parse(url: &str) -> Result<Self, OAuth2Error> {
        let bad = |reason| OAuth2Error::BadUrl {
            url: url.to_owned(),
            reason,
        };
        let Some(rest) = url.strip_prefix("https://") else {
            return Err(OAuth2Error::NotHttps);
        };
        if url.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
            return Err(bad("spaces, control or non-ASCII characters"));
        }
        if rest.contains('#') {
            return Err(bad("a fragment"));
        }
        let authority = rest.find(['/', '?']).map_or(rest, |i| &rest[..i]);
        if authority.contains('@') {
            return Err(bad("user information"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed `[`"))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let port = match port {
            None => 443,
            Some(p) => p
                .parse()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| bad("bad port"))?,
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        ServerName::try_from(host).map_err(|_| bad("bad host"))?;
        Ok(Self {
            url: url.to_owned(),
            host: host.to_owned(),
            port,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// The `Host` field value.
    pub(super) fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 443 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// One rule's `inject.oauth2`: where and how to get a token.
pub struct OAuth2 {
    url: HttpsUrl,
    client_id: String,
    secret_file: PathBuf,
    scope: Option<String>,
    ca_file: Option<PathBuf>,
    client: HttpsClient,
    /// When the token in force should be refreshed; `None` before the first one.
    refresh_at: Mutex<Option<Instant>>,
}

impl fmt::Debug for OAuth2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuth2")
            .field("token_url", &self.url.url)
            .field("client_id", &self.client_id)
            .field("client_secret_file", &self.secret_file)
            .field("scope", &self.scope)
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

// === impl OAuth2 ===

impl OAuth2 {
    /// Check the settings now (the secret file's mode and owner, the CA file); an error refuses
    /// the policy. No network here.
    pub fn new(
        url: HttpsUrl,
        client_id: &str,
        secret_file: &Path,
        scope: Option<&str>,
        ca_file: Option<&Path>,
    ) -> Result<Self, OAuth2Error> {
        // RFC 6749 Appendix A: client ids and scopes are printable ASCII.
        let printable = |s: &str| !s.is_empty() && s.bytes().all(|b| (0x20..0x7f).contains(&b));
        if !printable(client_id) {
            return Err(OAuth2Error::BadField { field: "clientId" });
        }
        if scope.is_some_and(|s| !printable(s)) {
            return Err(OAuth2Error::BadField { field: "scope" });
        }
        read_secret(secret_file)?;
        let client = HttpsClient::new(&url, ca_file)?;
        Ok(Self {
            url,
            client_id: client_id.to_owned(),
            secret_file: secret_file.to_owned(),
            scope: scope.map(str::to_owned),
            ca_file: ca_file.map(Path::to_owned),
            client,
            refresh_at: Mutex::new(None),
        })
    }

    pub fn token_url(&self) -> &str {
        self.url.as_str()
    }

    /// Whether `other` asks the same endpoint for the same token (a reload may take it over).
    fn same_as(&self, other: &OAuth2) -> bool {
        (
            &self.url,
            &self.client_id,
            &self.secret_file,
            &self.scope,
            &self.ca_file,
        ) == (
            &other.url,
            &other.client_id,
            &other.secret_file,
            &other.scope,
            &other.ca_file,
        )
    }

    /// The request: POST, Basic client authentication (RFC 6749 §2.3.1), form body.
    fn request(&self, secret: &[u8]) -> Result<Request<Full<Bytes>>, FetchError> {
        let mut body = b"grant_type=client_credentials".to_vec();
        if let Some(scope) = &self.scope {
            body.extend_from_slice(b"&scope=");
            form_encode(scope.as_bytes(), &mut body);
        }
        let mut credentials = Vec::new();
        form_encode(self.client_id.as_bytes(), &mut credentials);
        credentials.push(b':');
        form_encode(secret, &mut credentials);
        let mut authorization =
            HeaderValue::try_from(format!("Basic {}", B64.encode(&credentials))).map_err(|_| {
                FetchError::Secret(OAuth2Error::BadField {
                    field: "clientSecret",
                })
            })?;
        authorization.set_sensitive(true);
        Request::post(self.url.as_str())
            .header(header::HOST, self.url.host_header())
            .header(header::AUTHORIZATION, authorization)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| FetchError::Malformed {
                reason: format!("BUG: request not built: {e}"),
            })
    }

    /// One exchange with the token endpoint.
    pub async fn fetch(&self) -> Result<Token, FetchError> {
        let secret = read_secret(&self.secret_file).map_err(FetchError::Secret)?;
        let (status, body) = self.client.send(self.request(&secret)?).await?;
        Ok(parse_token_response(status, &body)?)
    }
}

/// Check a token response (RFC 6749 §5.1 success, §5.2 error).
pub fn parse_token_response(status: u16, body: &[u8]) -> Result<Token, TokenError> {
    #[derive(serde::Deserialize)]
    struct Success {
        access_token: String,
        token_type: String,
        expires_in: Option<u64>,
    }
    #[derive(serde::Deserialize)]
    struct Failure {
        error: String,
    }
    if status != 200 {
        return Err(match serde_json::from_slice::<Failure>(body) {
            // The code is the endpoint's text: keep it short and printable for the log.
            Ok(f) if (400..500).contains(&status) => TokenError::Refused {
                status,
                error: f
                    .error
                    .chars()
                    .filter(|c| c.is_ascii_graphic())
                    .take(64)
                    .collect(),
            },
            _ => TokenError::Status { status },
        });
    }
    let s: Success = serde_json::from_slice(body).map_err(|_| TokenError::NotJson)?;
    if !s.token_type.eq_ignore_ascii_case("bearer") {
        return Err(TokenError::NotBearer {
            token_type: s.token_type.chars().take(32).collect(),
        });
    }
    // RFC 6750 §2.1 b64token: visible ASCII without spaces is all a header can carry safely.
    let token = s.access_token.as_bytes();
    if token.is_empty()
        || token.len() + b"Bearer ".len() > MAX_INJECTED_BYTES
        || !token.iter().all(|b| (0x21..0x7f).contains(b))
    {
        return Err(TokenError::BadToken);
    }
    let lifetime = match s.expires_in {
        Some(0) => return Err(TokenError::ZeroLifetime),
        Some(n) => Duration::from_secs(n),
        None => DEFAULT_LIFETIME,
    };
    let mut value = b"Bearer ".to_vec();
    value.extend_from_slice(token);
    Ok(Token {
        value: Secret::new(value.into_boxed_slice()),
        lifetime,
    })
}

/// How long after obtaining a token of `lifetime` to refresh it: at 80% of the lifetime, but at
/// least [`REFRESH_MARGIN`] before it runs out, and not sooner than [`MIN_REFRESH`].
pub fn refresh_delay(lifetime: Duration) -> Duration {
    let at_80 = lifetime.mul_f64(0.8);
    let before_margin = lifetime.saturating_sub(REFRESH_MARGIN);
    at_80.min(before_margin).max(MIN_REFRESH)
}

/// The wait after `failures` consecutive failed fetches (1 or more).
pub fn backoff(failures: u32) -> Duration {
    BACKOFF_FIRST
        .saturating_mul(
            1u32.checked_shl(failures.saturating_sub(1))
                .unwrap_or(u32::MAX),
        )
        .min(BACKOFF_MAX)
}

/// RFC 6749 Appendix B: `application/x-www-form-urlencoded`.
fn form_encode(s: &[u8], out: &mut Vec<u8>) {
    for &b in s {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => out.push(b),
            b' ' => out.push(b'+'),
            _ => out.extend_from_slice(format!("%{b:02X}").as_bytes()),
        }
    }
}

/// Read the client secret: a file only root or the agent owns and reads.
fn read_secret(path: &Path) -> Result<Vec<u8>, OAuth2Error> {
    let read_error = |e: std::io::Error| OAuth2Error::Read {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let md = fs::metadata(path).map_err(read_error)?;
    let mode = md.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(OAuth2Error::SecretModeTooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    let uid = md.uid();
    if uid != 0 && uid != nix::unistd::geteuid().as_raw() {
        return Err(OAuth2Error::SecretOwner {
            path: path.to_owned(),
            uid,
        });
    }
    let mut bytes = fs::read(path).map_err(read_error)?;
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    if bytes.is_empty() || bytes.len() > MAX_SECRET_BYTES {
        return Err(OAuth2Error::BadSecret {
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

/// The refresher tasks of one policy (OAuth2 tokens, JWKS URLs): started when it is put in
/// force, aborted when this is dropped (the policy was replaced).
#[derive(Default)]
pub struct Refreshers {
    tasks: Vec<tokio::task::AbortHandle>,
}

impl fmt::Debug for Refreshers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Refreshers")
            .field("tasks", &self.tasks.len())
            .finish()
    }
}

// === impl Refreshers ===

impl Refreshers {
    /// Start one task per OAuth2 injection in `injections` (by rule id). An injection asking
    /// for the same token as one in `previous` (the policy being replaced) takes over its token
    /// and refresh time, so a reload does not leave requests without a credential. Each task
    /// reports to `sources`. Must run inside a tokio runtime.
    pub fn start(
        injections: &[(Arc<str>, Arc<Injection>)],
        previous: &[Arc<Injection>],
        sources: &Arc<SourceMetrics>,
    ) -> Self {
        let mut tasks = Vec::new();
        for (rule, injection) in injections {
            let Some(oauth2) = injection.oauth2_source() else {
                continue;
            };
            let mut first = Duration::ZERO;
            let old = previous
                .iter()
                .find(|o| o.oauth2_source().is_some_and(|p| p.same_as(oauth2)));
            if let Some(old) = old
                && let (Some(value), Some(at)) = (
                    old.value(),
                    old.oauth2_source().and_then(|o| *lock(&o.refresh_at)),
                )
            {
                injection.set_value(value);
                *lock(&oauth2.refresh_at) = Some(at);
                first = at.saturating_duration_since(Instant::now());
            }
            let task = run(injection.clone(), rule.clone(), sources.clone(), first);
            tasks.push(tokio::spawn(task).abort_handle());
        }
        Self { tasks }
    }
}

impl Refreshers {
    /// Start one task per JWKS URL in `jwks` (by credential name). One fetching the same set
    /// as one in `previous` takes over its keys (and fetches again at once). Must run inside a
    /// tokio runtime.
    pub fn add_jwks(
        &mut self,
        jwks: &[(Arc<str>, Arc<JwksUrl>)],
        previous: &[Arc<JwksUrl>],
        sources: &Arc<SourceMetrics>,
    ) {
        for (credential, j) in jwks {
            if let Some(old) = previous.iter().find(|o| o.same_as(j)) {
                j.take_keys_from(old);
            }
            let task = super::jwks_url::run(
                j.clone(),
                credential.clone(),
                sources.clone(),
                Duration::ZERO,
            );
            self.tasks.push(tokio::spawn(task).abort_handle());
        }
    }
}

impl Drop for Refreshers {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Keep `injection`'s token fresh, until aborted. Never ends otherwise.
async fn run(
    injection: Arc<Injection>,
    rule: Arc<str>,
    sources: Arc<SourceMetrics>,
    first: Duration,
) {
    let Some(oauth2) = injection.oauth2_source() else {
        return;
    };
    let url = oauth2.token_url();
    tokio::time::sleep(first).await;
    let mut failures = 0u32;
    loop {
        let wait = match oauth2.fetch().await {
            Ok(token) => {
                failures = 0;
                sources.succeeded(SourceKind::OAuth2, &rule);
                let delay = refresh_delay(token.lifetime);
                injection.set_value(Arc::new(token.value));
                *lock(&oauth2.refresh_at) = Some(Instant::now() + delay);
                info!(
                    event = "token_obtained",
                    token_url = url,
                    lifetime_s = token.lifetime.as_secs(),
                    "OAuth2 access token obtained"
                );
                delay
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                sources.failed(SourceKind::OAuth2, &rule, (&e).into());
                let wait = backoff(failures);
                error!(
                    event = "token_failed",
                    token_url = url,
                    error = %e,
                    retry_s = wait.as_secs(),
                    "cannot obtain an OAuth2 access token; the previous one, if any, stays in force"
                );
                wait
            }
        };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_responses() {
        let ok = |body: &str| parse_token_response(200, body.as_bytes());
        let t = ok(r#"{"access_token":"tok-1","token_type":"Bearer","expires_in":3600}"#).unwrap();
        assert_eq!(t.value.expose(), b"Bearer tok-1");
        assert_eq!(t.lifetime, Duration::from_secs(3600));
        // token_type is case-insensitive (RFC 6749 §5.1); expires_in is optional.
        let t = ok(r#"{"access_token":"tok-2","token_type":"bearer"}"#).unwrap();
        assert_eq!(t.lifetime, DEFAULT_LIFETIME);
        assert!(!format!("{t:?}").contains("tok-2"), "{t:?}");

        let cases: [(u16, &str, TokenError); 9] = [
            (
                200,
                r#"{"access_token":"t","token_type":"mac","expires_in":60}"#,
                TokenError::NotBearer {
                    token_type: "mac".into(),
                },
            ),
            (
                200,
                r#"{"access_token":"t","expires_in":60}"#,
                TokenError::NotJson,
            ),
            (200, r#"{"token_type":"Bearer"}"#, TokenError::NotJson),
            (200, "not json", TokenError::NotJson),
            (
                200,
                r#"{"access_token":"a b","token_type":"Bearer"}"#,
                TokenError::BadToken,
            ),
            (
                200,
                r#"{"access_token":"","token_type":"Bearer"}"#,
                TokenError::BadToken,
            ),
            (
                200,
                r#"{"access_token":"t","token_type":"Bearer","expires_in":0}"#,
                TokenError::ZeroLifetime,
            ),
            (
                401,
                r#"{"error":"invalid_client","error_description":"bad secret"}"#,
                TokenError::Refused {
                    status: 401,
                    error: "invalid_client".into(),
                },
            ),
            (
                502,
                "<html>bad gateway</html>",
                TokenError::Status { status: 502 },
            ),
        ];
        for (status, body, want) in cases {
            assert_eq!(
                parse_token_response(status, body.as_bytes()).unwrap_err(),
                want,
                "{body}"
            );
        }
        let long = format!(
            r#"{{"access_token":"{}","token_type":"Bearer"}}"#,
            "a".repeat(MAX_INJECTED_BYTES)
        );
        assert_eq!(ok(&long).unwrap_err(), TokenError::BadToken);
    }

    #[test]
    fn refresh_schedule_and_backoff() {
        let s = Duration::from_secs;
        // 80% of the lifetime, at least 10 s before expiry, never under 1 s.
        for (lifetime, want) in [
            (s(3600), s(2880)),
            (s(100), s(80)),
            (s(40), s(30)),
            (s(12), s(2)),
            (s(5), s(1)),
            (s(1), s(1)),
        ] {
            assert_eq!(refresh_delay(lifetime), want, "{lifetime:?}");
        }
        let waits: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn token_urls() {
        let u = HttpsUrl::parse("https://auth.internal/oauth2/token").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("auth.internal", 443));
        let u = HttpsUrl::parse("https://127.0.0.1:8443?x=1").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", 8443));
        let u = HttpsUrl::parse("https://[::1]:9/t").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9));
        let bad = |url: &str, reason| OAuth2Error::BadUrl {
            url: url.into(),
            reason,
        };
        for (url, want) in [
            ("http://auth.internal/token", OAuth2Error::NotHttps),
            ("HTTPS://auth.internal/token", OAuth2Error::NotHttps),
            (
                "https://u:p@auth/t",
                bad("https://u:p@auth/t", "user information"),
            ),
            ("https://auth:0/t", bad("https://auth:0/t", "bad port")),
            ("https://auth:x/t", bad("https://auth:x/t", "bad port")),
            ("https:///t", bad("https:///t", "no host")),
            ("https://auth/t#f", bad("https://auth/t#f", "a fragment")),
            (
                "https://auth/a b",
                bad(
                    "https://auth/a b",
                    "spaces, control or non-ASCII characters",
                ),
            ),
        ] {
            assert_eq!(HttpsUrl::parse(url).unwrap_err(), want, "{url}");
        }
    }

    #[test]
    fn the_request_authenticates_with_basic_and_a_form() {
        let dir = std::env::temp_dir().join(format!("enforcer-oauth2-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("secret");
        fs::write(&secret, "s3cr:t/+\n").unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
        let o = OAuth2::new(
            HttpsUrl::parse("https://auth.internal:8443/token").unwrap(),
            "billing app",
            &secret,
            Some("payments:write read"),
            None,
        )
        .unwrap();
        let request = o.request(&read_secret(&secret).unwrap()).unwrap();
        let basic = B64.encode("billing+app:s3cr%3At%2F%2B");
        assert_eq!(request.method(), hyper::Method::POST);
        assert_eq!(request.uri(), "https://auth.internal:8443/token");
        let headers: Vec<(&str, &str)> = request
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            headers,
            [
                ("host", "auth.internal:8443"),
                ("authorization", &*format!("Basic {basic}")),
                ("content-type", "application/x-www-form-urlencoded"),
                ("accept", "application/json"),
            ]
        );
        assert!(request.headers()[header::AUTHORIZATION].is_sensitive());
        let body = request.into_body();
        let body = futures_body(body);
        assert_eq!(
            body,
            b"grant_type=client_credentials&scope=payments%3Awrite+read"
        );
        assert!(!format!("{o:?}").contains("s3cr"), "{o:?}");

        fs::set_permissions(&secret, fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(
            read_secret(&secret).unwrap_err(),
            OAuth2Error::SecretModeTooOpen {
                path: secret.clone(),
                mode: 0o640
            }
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A reload that keeps the same OAuth2 settings keeps the token in force: no 503 window.
    #[tokio::test]
    async fn a_reload_takes_over_the_token_in_force() {
        let dir = std::env::temp_dir().join(format!("enforcer-oauth2-r-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("secret");
        fs::write(&secret, "s").unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
        let make = |url: &str| {
            let o = OAuth2::new(HttpsUrl::parse(url).unwrap(), "c", &secret, None, None).unwrap();
            Arc::new(Injection::oauth2("Authorization", o))
        };
        let old = make("https://auth.invalid/t");
        old.set_value(Arc::new(Secret::new(
            b"Bearer old".to_vec().into_boxed_slice(),
        )));
        *lock(&old.oauth2_source().unwrap().refresh_at) =
            Some(Instant::now() + Duration::from_secs(3600));
        let (same, other) = (
            make("https://auth.invalid/t"),
            make("https://other.invalid/t"),
        );
        let sources = Arc::new(SourceMetrics::new().unwrap());
        let refreshers = Refreshers::start(
            &[("a".into(), same.clone()), ("b".into(), other.clone())],
            &[old],
            &sources,
        );
        assert_eq!(same.value().unwrap().expose(), b"Bearer old");
        assert!(other.value().is_none());
        assert_eq!(format!("{refreshers:?}"), "Refreshers { tasks: 2 }");
        drop(refreshers);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// The bytes of a request body built in memory.
    fn futures_body(body: Full<Bytes>) -> Vec<u8> {
        use http_body_util::BodyExt as _;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime
            .block_on(body.collect())
            .unwrap()
            .to_bytes()
            .to_vec()
    }
}
