//! The HTTPS client of credential sources (OAuth2 token endpoints, JWKS URLs): hyper-util's
//! legacy client under hyper-rustls, on the same rustls (ring) as the rest of the agent.
//!
//! - A name's addresses are raced (happy eyeballs, hyper-util's `HttpConnector`): one dead
//!   address of the preferred family costs 300 ms before the other family is tried, not the
//!   whole budget.
//! - `HTTPS_PROXY` (or `https_proxy`, else `ALL_PROXY`) and `NO_PROXY` are honoured, as
//!   hyper-util's matcher reads them (curl's rules): a source the proxy intercepts is reached through an HTTP `CONNECT` tunnel, with TLS end to end.
//! - Trust: the source's `caFile` only, or else the compiled-in Mozilla roots.
//! - One request per connection (no pool: a source is fetched a few times an hour), the whole
//!   exchange within [`EXCHANGE_TIMEOUT`], the body bounded by [`MAX_RESPONSE_BYTES`].

use std::{
    error::Error as StdError,
    future::Future,
    net::SocketAddr,
    path::Path,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{Request, Uri};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::{
        legacy::{
            Client,
            connect::{
                HttpConnector,
                dns::{GaiResolver, Name},
                proxy::Tunnel,
            },
        },
        proxy::matcher::Matcher,
    },
    rt::{TokioExecutor, TokioIo},
};
use rustls::pki_types::{CertificateDer, pem::PemObject as _};
use tokio::{net::TcpStream, time::timeout};
use tower_service::Service;

use super::oauth2::{FetchError, HttpsUrl, OAuth2Error};

/// Largest response body read: a token response or a JWK set is a few kilobytes; the bound
/// keeps a misbehaving endpoint from filling memory.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// One whole exchange (resolve, connect, handshake, request, response). Token endpoints answer
/// in milliseconds; 10 s tolerates a slow one without stalling refreshes for long.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// The client of one source: its trust and its route (direct or through the proxy).
pub struct HttpsClient {
    /// Boxed: the client is large, and sources keep one each.
    client: Box<Client<HttpsConnector<Route>, Full<Bytes>>>,
    /// The whole exchange's budget: [`EXCHANGE_TIMEOUT`] (tests give a shorter one).
    budget: Duration,
}

impl std::fmt::Debug for HttpsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsClient").finish_non_exhaustive()
    }
}

impl HttpsClient {
    /// The client for `url`: trusting `ca_file`'s certificates or the Mozilla roots, through
    /// the proxy the environment names for it, if any. No network here.
    pub fn new(url: &HttpsUrl, ca_file: Option<&Path>) -> Result<Self, OAuth2Error> {
        Self::with(
            url,
            ca_file,
            &Matcher::from_env(),
            Resolver::System(GaiResolver::new()),
            EXCHANGE_TIMEOUT,
            EXCHANGE_TIMEOUT,
        )
    }

    /// `budget` bounds the whole exchange, `connect` the TCP connects (tests set them apart).
    fn with(
        url: &HttpsUrl,
        ca_file: Option<&Path>,
        proxies: &Matcher,
        resolver: Resolver,
        budget: Duration,
        connect: Duration,
    ) -> Result<Self, OAuth2Error> {
        let mut http = HttpConnector::new_with_resolver(resolver);
        // The TLS layer above speaks https; this one only carries TCP.
        http.enforce_http(false);
        http.set_nodelay(true);
        // Split between a family's addresses; the other family starts after 300 ms anyway.
        http.set_connect_timeout(Some(connect));
        let uri: Uri = url.as_str().parse().map_err(|_| OAuth2Error::BadUrl {
            url: url.as_str().to_owned(),
            reason: "not a URI",
        })?;
        let route = match proxies.intercept(&uri) {
            None => Route::Direct(http),
            Some(proxy) => {
                if proxy.uri().scheme_str() != Some("http") {
                    return Err(OAuth2Error::UnsupportedProxy {
                        scheme: proxy.uri().scheme_str().unwrap_or("").to_owned(),
                    });
                }
                let mut tunnel = Tunnel::new(proxy.uri().clone(), http);
                if let Some(auth) = proxy.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                Route::Proxy(tunnel)
            }
        };
        let tls = tls_config(ca_file)?;
        let https = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(route);
        let client = Box::new(
            Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build(https),
        );
        Ok(Self { client, budget })
    }

    /// Send `request` within [`EXCHANGE_TIMEOUT`]: the final response's status and body.
    pub async fn send(&self, request: Request<Full<Bytes>>) -> Result<(u16, Bytes), FetchError> {
        timeout(self.budget, self.send_now(request))
            .await
            .map_err(|_| FetchError::TimedOut)?
    }

    async fn send_now(&self, request: Request<Full<Bytes>>) -> Result<(u16, Bytes), FetchError> {
        let host = request.uri().host().unwrap_or("").to_owned();
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| request_error(&e, &host))?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    FetchError::TooLarge
                } else {
                    FetchError::Io {
                        reason: crate::error::chain(&*e),
                    }
                }
            })?
            .to_bytes();
        Ok((status, body))
    }
}

/// What a failed request says, by the layer that failed: name resolution, TLS, the connect
/// (direct or through the proxy), or the exchange after it.
fn request_error(e: &hyper_util::client::legacy::Error, host: &str) -> FetchError {
    let reason = crate::error::chain(e);
    let mut causes = Vec::new();
    let mut cause: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(c) = cause {
        causes.push(c);
        cause = c.source();
    }
    if causes.iter().any(|c| is_tls(*c)) {
        return FetchError::Tls { reason };
    }
    if !e.is_connect() {
        let parse = causes
            .iter()
            .filter_map(|c| c.downcast_ref::<hyper::Error>())
            .any(hyper::Error::is_parse);
        return if parse {
            FetchError::Malformed { reason }
        } else {
            FetchError::Io { reason }
        };
    }
    // hyper-util's connector names a failed lookup "dns error"; the tunnel's errors and the
    // TCP connect's are connect failures.
    if reason.contains("dns error") {
        return FetchError::Resolve {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            reason,
        };
    }
    FetchError::Connect { reason }
}

/// Whether `e` is a rustls error, possibly wrapped in I/O errors (tokio-rustls and hyper-rustls
/// each wrap it once; `io::Error::source` skips the wrapped error, `get_ref` does not).
fn is_tls(e: &(dyn StdError + 'static)) -> bool {
    if e.is::<rustls::Error>() {
        return true;
    }
    match e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
    {
        Some(inner) => is_tls(inner),
        None => false,
    }
}

/// The TLS settings for an HTTPS fetch: trust `ca_file`'s certificates only, or else the
/// compiled-in Mozilla roots.
fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, OAuth2Error> {
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
    Ok(tls)
}

fn ca_roots(path: &Path) -> Result<rustls::RootCertStore, OAuth2Error> {
    let pem = std::fs::read(path).map_err(|e| OAuth2Error::Read {
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

/// How a connection to a source is made: straight to it, or through a `CONNECT` tunnel.
#[derive(Clone)]
enum Route {
    Direct(HttpConnector<Resolver>),
    Proxy(Tunnel<HttpConnector<Resolver>>),
}

type BoxError = Box<dyn StdError + Send + Sync>;
type Connecting = Pin<Box<dyn Future<Output = Result<TokioIo<TcpStream>, BoxError>> + Send>>;

impl Service<Uri> for Route {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self {
            Route::Direct(c) => c.poll_ready(cx).map_err(Into::into),
            Route::Proxy(t) => t.poll_ready(cx).map_err(Into::into),
        }
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        match self {
            Route::Direct(c) => {
                let f = c.call(dst);
                Box::pin(async move { f.await.map_err(Into::into) })
            }
            Route::Proxy(t) => {
                let f = t.call(dst);
                Box::pin(async move { f.await.map_err(Into::into) })
            }
        }
    }
}

/// Name resolution: the system's (getaddrinfo, off the runtime), or fixed addresses in tests.
#[derive(Clone)]
enum Resolver {
    System(GaiResolver),
    #[cfg(test)]
    Fixed(Vec<SocketAddr>),
}

type Resolving =
    Pin<Box<dyn Future<Output = Result<std::vec::IntoIter<SocketAddr>, BoxError>> + Send>>;

impl Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = Resolving;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self {
            Resolver::System(r) => r.poll_ready(cx).map_err(Into::into),
            #[cfg(test)]
            Resolver::Fixed(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let addrs: Pin<Box<dyn Future<Output = Result<Vec<SocketAddr>, BoxError>> + Send>> =
            match self {
                Resolver::System(r) => {
                    let f = r.call(name);
                    Box::pin(async move { Ok(f.await?.collect()) })
                }
                #[cfg(test)]
                Resolver::Fixed(addrs) => {
                    let addrs = addrs.clone();
                    Box::pin(async move { Ok(addrs) })
                }
            };
        // A name without addresses is a failed lookup, not an unreachable network.
        Box::pin(async move {
            let addrs = addrs.await?;
            if addrs.is_empty() {
                return Err("the name has no address".into());
            }
            Ok(addrs.into_iter())
        })
    }
}

#[cfg(test)]
mod tests;
