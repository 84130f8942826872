//! OAuth2 client-credentials injection (RFC 6749 §4.4): the injected value is an access token
//! the agent obtains from a token endpoint, not a file.
//!
//! One tokio task per injection ([`Refreshers`]) fetches a token, stores `Bearer <token>` in
//! the injection, and refreshes it before it expires, with bounded exponential backoff on
//! failure. Requests never wait on the network: they use the last good token, and before the
//! first one arrives the proxy answers 503. Neither the token nor the client secret appears in
//! a log, an error or `Debug` output.
//!
//! The HTTP client is a minimal HTTP/1.1 one over tokio and rustls: one request per
//! connection, `Connection: close`, the response head parsed by [`crate::http::parse_response`]
//! and the body bounded by [`MAX_RESPONSE_BYTES`]. A token endpoint speaks exactly this much
//! HTTP, and the project's own parser already handles framing; hyper would add a dependency
//! tree for one POST a few times an hour.

use std::{
    fmt, fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    time::{Instant, timeout},
};
use tracing::{error, info};

use super::{
    inject::{Injection, MAX_INJECTED_BYTES, Secret},
    jwks_url::JwksUrl,
    metrics::{SourceKind, SourceMetrics},
};

/// Largest token response read, head and body: a token response is a few hundred bytes; the
/// bound keeps a misbehaving endpoint from filling memory.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Longest client secret file, in bytes.
const MAX_SECRET_BYTES: usize = 4 * 1024;

/// One whole exchange (resolve, connect, handshake, request, response). Token endpoints answer
/// in milliseconds; 10 s tolerates a slow one without stalling refreshes for long.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// Path and query, for the request line.
    target: String,
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
        let (authority, target) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_owned()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_owned()),
        };
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
            target,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// Path and query, for the request line.
    pub(super) fn target(&self) -> &str {
        &self.target
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
    tls: Arc<rustls::ClientConfig>,
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
        let tls = tls_config(ca_file)?;
        Ok(Self {
            url,
            client_id: client_id.to_owned(),
            secret_file: secret_file.to_owned(),
            scope: scope.map(str::to_owned),
            ca_file: ca_file.map(Path::to_owned),
            tls,
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
    fn request(&self, secret: &[u8]) -> Vec<u8> {
        let mut body = b"grant_type=client_credentials".to_vec();
        if let Some(scope) = &self.scope {
            body.extend_from_slice(b"&scope=");
            form_encode(scope.as_bytes(), &mut body);
        }
        let mut credentials = Vec::new();
        form_encode(self.client_id.as_bytes(), &mut credentials);
        credentials.push(b':');
        form_encode(secret, &mut credentials);
        let host = self.url.host_header();
        let mut out = format!(
            "POST {} HTTP/1.1\r\nhost: {host}\r\nauthorization: Basic {}\r\n\
             content-type: application/x-www-form-urlencoded\r\naccept: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n",
            self.url.target,
            B64.encode(&credentials),
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(&body);
        out
    }

    /// One exchange with the token endpoint.
    pub async fn fetch(&self) -> Result<Token, FetchError> {
        let secret = read_secret(&self.secret_file).map_err(FetchError::Secret)?;
        let request = self.request(&secret);
        let (status, body) = exchange(&self.url, &self.tls, &request).await?;
        Ok(parse_token_response(status, &body)?)
    }
}

/// The TLS settings for an HTTPS fetch: trust `ca_file`'s certificates only, or else the
/// compiled-in Mozilla roots.
pub(super) fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, OAuth2Error> {
    let roots = match ca_file {
        Some(path) => ca_roots(path)?,
        None => rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        // The ring provider implements TLS 1.2 and 1.3, the safe defaults.
        .expect("ring supports rustls's default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(tls))
}

/// One request on a new connection to `url`, within [`EXCHANGE_TIMEOUT`]: the final
/// response's status and body.
pub(super) async fn exchange(
    url: &HttpsUrl,
    tls: &Arc<rustls::ClientConfig>,
    request: &[u8],
) -> Result<(u16, Vec<u8>), FetchError> {
    timeout(EXCHANGE_TIMEOUT, exchange_now(url, tls, request))
        .await
        .map_err(|_| FetchError::TimedOut)?
}

async fn exchange_now(
    url: &HttpsUrl,
    tls: &Arc<rustls::ClientConfig>,
    request: &[u8],
) -> Result<(u16, Vec<u8>), FetchError> {
    {
        let io = |e: std::io::Error| FetchError::Io {
            reason: e.to_string(),
        };
        let addrs: Vec<_> = tokio::net::lookup_host((url.host.as_str(), url.port))
            .await
            .map_err(|e| FetchError::Resolve {
                host: url.host.clone(),
                reason: e.to_string(),
            })?
            .collect();
        let mut last = None;
        let mut tcp = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = Some(e.to_string()),
            }
        }
        let tcp = tcp.ok_or_else(|| FetchError::Connect {
            reason: last.unwrap_or_else(|| "no address".into()),
        })?;
        let name = ServerName::try_from(url.host.clone()).map_err(|_| FetchError::Tls {
            reason: "BUG: host checked at load is not a server name".into(),
        })?;
        let mut tls = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| FetchError::Tls {
                reason: e.to_string(),
            })?;
        tls.write_all(request).await.map_err(io)?;
        tls.flush().await.map_err(io)?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = match tls.read(&mut chunk).await {
                Ok(n) => n,
                // Many servers close without close_notify after `Connection: close`; the
                // framing below tells a complete body from a cut one.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
                Err(e) => return Err(io(e)),
            };
            if n == 0 {
                break;
            }
            if buf.len() + n > MAX_RESPONSE_BYTES {
                return Err(FetchError::TooLarge);
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(done) = complete_response(&buf, false)? {
                return Ok(done);
            }
        }
        complete_response(&buf, true)?.ok_or_else(|| FetchError::Malformed {
            reason: "connection closed before the response was complete".into(),
        })
    }
}

/// `Some((status, body))` once `buf` holds a whole final response; `eof`: the peer closed.
fn complete_response(buf: &[u8], eof: bool) -> Result<Option<(u16, Vec<u8>)>, FetchError> {
    use crate::http::{ChunkedDecoder, Decoded, Limits, Method, ResponseBody, ResponseKind};
    let malformed = |reason: String| FetchError::Malformed { reason };
    let limits = Limits::default();
    let mut at = 0;
    loop {
        let Some((response, head_len)) = crate::http::parse_response(&buf[at..], &limits)
            .map_err(|e| malformed(e.to_string()))?
        else {
            return Ok(None);
        };
        let start = at + head_len;
        match response.kind() {
            ResponseKind::Interim => {
                at = start;
                continue;
            }
            ResponseKind::SwitchingProtocols => return Err(malformed("101 to a POST".into())),
            ResponseKind::Final => {}
        }
        let rest = &buf[start..];
        let body = match crate::http::response_body(&Method::Post, &response) {
            ResponseBody::None => Some(Vec::new()),
            ResponseBody::Length(n) => {
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                if n > MAX_RESPONSE_BYTES {
                    return Err(FetchError::TooLarge);
                }
                (rest.len() >= n).then(|| rest[..n].to_vec())
            }
            ResponseBody::Chunked => {
                let mut decoder = ChunkedDecoder::new(&limits);
                let mut body = Vec::new();
                let mut input = rest;
                loop {
                    match decoder
                        .decode(input)
                        .map_err(|e| malformed(e.to_string()))?
                    {
                        Decoded::Data(range) => {
                            body.extend_from_slice(&input[range.clone()]);
                            input = &input[range.end..];
                        }
                        Decoded::NeedMore => break None,
                        Decoded::End { .. } => break Some(body),
                    }
                }
            }
            ResponseBody::UntilClose => eof.then(|| rest.to_vec()),
        };
        return Ok(body.map(|b| (response.status(), b)));
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

fn ca_roots(path: &Path) -> Result<rustls::RootCertStore, OAuth2Error> {
    let pem = fs::read(path).map_err(|e| OAuth2Error::Read {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let Ok(cert) = cert else {
            return Err(OAuth2Error::NoCertificate {
                path: path.to_owned(),
            });
        };
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(OAuth2Error::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(roots)
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
        assert_eq!(
            (u.host.as_str(), u.port, u.target.as_str()),
            ("auth.internal", 443, "/oauth2/token")
        );
        let u = HttpsUrl::parse("https://127.0.0.1:8443?x=1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.target.as_str()),
            ("127.0.0.1", 8443, "/?x=1")
        );
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
        let request = String::from_utf8(o.request(&read_secret(&secret).unwrap())).unwrap();
        let basic = B64.encode("billing+app:s3cr%3At%2F%2B");
        assert_eq!(
            request,
            format!(
                "POST /token HTTP/1.1\r\nhost: auth.internal:8443\r\nauthorization: Basic {basic}\r\n\
                 content-type: application/x-www-form-urlencoded\r\naccept: application/json\r\n\
                 content-length: 57\r\nconnection: close\r\n\r\n\
                 grant_type=client_credentials&scope=payments%3Awrite+read"
            )
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

    #[test]
    fn responses_are_framed_and_bounded() {
        let body = r#"{"access_token":"t","token_type":"Bearer"}"#;
        let cl = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        assert_eq!(
            complete_response(cl.as_bytes(), false).unwrap(),
            Some((200, body.as_bytes().to_vec()))
        );
        assert_eq!(
            complete_response(&cl.as_bytes()[..cl.len() - 1], true).unwrap(),
            None
        );
        let chunked = format!(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
             5\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n",
            &body[..5],
            body.len() - 5,
            &body[5..]
        );
        assert_eq!(
            complete_response(chunked.as_bytes(), false).unwrap(),
            Some((200, body.as_bytes().to_vec()))
        );
        assert_eq!(
            complete_response(
                b"HTTP/1.1 200 OK\r\ncontent-length: 99999999\r\n\r\n",
                false
            )
            .unwrap_err(),
            FetchError::TooLarge
        );
        // Delimited by close: complete at EOF only.
        let close = b"HTTP/1.1 200 OK\r\n\r\n{}";
        assert_eq!(complete_response(close, false).unwrap(), None);
        assert_eq!(
            complete_response(close, true).unwrap(),
            Some((200, b"{}".to_vec()))
        );
    }
}
