//! The client against real local endpoints: a TLS server, a black-holing address, a `CONNECT`
//! proxy. Names resolve through a fixed resolver, so no host file is touched.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv6Addr, SocketAddr, SocketAddrV6, TcpListener, TcpStream},
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use http_body_util::Full;
use hyper::Request;
use hyper_util::client::proxy::matcher::Matcher;

use super::MAX_RESPONSE_BYTES;
use super::{HttpsClient, Resolver};
use crate::credentials::oauth2::{FetchError, HttpsUrl};

const NAME: &str = "token.test";
/// The exchange budget here: ample for a loaded machine.
const BUDGET: Duration = Duration::from_secs(30);
/// The connect timeout here, split between a family's addresses: tried one after the other,
/// a dead address would cost half of it, more than the whole budget, so only racing the
/// other family can get an answer within the budget.
const CONNECT: Duration = Duration::from_secs(120);
const BODY: &str = r#"{"access_token":"t-1","token_type":"Bearer"}"#;

/// A TLS endpoint for `NAME` on loopback, answering every request with the same response,
/// and the file holding the CA that signed its certificate.
struct Endpoint {
    addr: SocketAddr,
    ca: TempFile,
}

/// A file removed on drop.
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Endpoint {
    /// An endpoint answering `BODY`.
    fn start() -> Self {
        Self::answering(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{BODY}",
                BODY.len()
            )
            .into_bytes(),
        )
    }

    /// An endpoint answering `response` (head and body), then closing the connection.
    fn answering(response: Vec<u8>) -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec![NAME.to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { continue };
                let conn = rustls::ServerConnection::new(config.clone()).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let _ = answer(&mut tls, &response);
            }
        });
        let path = std::env::temp_dir().join(format!(
            "enforcer-https-ca-{}-{}.pem",
            std::process::id(),
            addr.port()
        ));
        std::fs::write(&path, ca.pem()).unwrap();
        Self {
            addr,
            ca: TempFile(path),
        }
    }

    fn url(&self) -> HttpsUrl {
        HttpsUrl::parse(&format!("https://{NAME}:{}/token", self.addr.port())).unwrap()
    }

    fn client(&self, proxies: &Matcher, addrs: Vec<SocketAddr>) -> HttpsClient {
        HttpsClient::with(
            &self.url(),
            Some(&self.ca.0),
            proxies,
            Resolver::Fixed(addrs),
            BUDGET,
            CONNECT,
        )
        .unwrap()
    }
}

/// Read one request head, answer it with `response` and end the TLS session.
fn answer(
    tls: &mut rustls::StreamOwned<rustls::ServerConnection, TcpStream>,
    response: &[u8],
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tls.read(&mut byte)? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    tls.write_all(response)?;
    tls.conn.send_close_notify();
    tls.flush()
}

fn get(url: &HttpsUrl) -> Request<Full<bytes::Bytes>> {
    Request::get(url.as_str()).body(Full::default()).unwrap()
}

/// A listener on `[::1]:port` whose accept queue is full: the kernel drops further SYNs, so a
/// connect there never completes (the black hole stays local). Dropped with the guard.
struct BlackHole {
    _listener: socket2::Socket,
    _queued: TcpStream,
}

impl BlackHole {
    fn at(port: u16) -> Self {
        use socket2::{Domain, Protocol, Socket, Type};
        let addr = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, port, 0, 0));
        let listener = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP)).unwrap();
        listener.set_only_v6(true).unwrap();
        listener.bind(&addr.into()).unwrap();
        // Backlog 0 holds one connection; it is never accepted.
        listener.listen(0).unwrap();
        let queued = TcpStream::connect(addr).unwrap();
        Self {
            _listener: listener,
            _queued: queued,
        }
    }
}

/// The name's first address never answers (an IPv6 address that drops SYNs); the second, of
/// the other family, is raced in and the answer arrives (tried one after the other, the first
/// would take half the connect timeout, longer than the budget, and the exchange time out).
#[tokio::test]
async fn a_dead_first_address_still_gets_the_answer() {
    let endpoint = Endpoint::start();
    let port = endpoint.addr.port();
    let _hole = BlackHole::at(port);
    let dead = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, port, 0, 0));
    let client = endpoint.client(&Matcher::builder().build(), vec![dead, endpoint.addr]);
    let (status, body) = client.send(get(&endpoint.url())).await.unwrap();
    assert_eq!((status, &body[..]), (200, BODY.as_bytes()));
}

/// A one-connection-at-a-time `CONNECT` proxy to `upstream`: records each request line.
fn connect_proxy(upstream: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = lines.clone();
    thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { continue };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if client.read(&mut byte).unwrap_or(0) == 0 {
                    break;
                }
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).to_string();
            seen.lock()
                .unwrap()
                .push(head.lines().next().unwrap_or("").to_owned());
            let Ok(server) = TcpStream::connect(upstream) else {
                continue;
            };
            let _ = client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let up = thread::spawn(move || std::io::copy(&mut c2, &mut s2));
            let (mut client, mut server) = (client, server);
            let _ = std::io::copy(&mut server, &mut client);
            let _ = client.shutdown(std::net::Shutdown::Both);
            let _ = up.join();
        }
    });
    (addr, lines)
}

/// With a proxy for https, the client tunnels through it (the name is resolved by the proxy,
/// not here: the client's resolver knows no address); `NO_PROXY` names go direct.
#[tokio::test]
async fn the_https_proxy_tunnels_and_no_proxy_bypasses_it() {
    let endpoint = Endpoint::start();
    let (proxy, lines) = connect_proxy(endpoint.addr);
    let proxies = Matcher::builder().https(format!("http://{proxy}")).build();
    let client = endpoint.client(&proxies, Vec::new());
    let (status, body) = client.send(get(&endpoint.url())).await.unwrap();
    assert_eq!((status, &body[..]), (200, BODY.as_bytes()));
    let port = endpoint.addr.port();
    assert_eq!(
        *lines.lock().unwrap(),
        [format!("CONNECT {NAME}:{port} HTTP/1.1")]
    );

    let bypass = Matcher::builder()
        .https(format!("http://{proxy}"))
        .no(NAME)
        .build();
    let client = endpoint.client(&bypass, vec![endpoint.addr]);
    let (status, _) = client.send(get(&endpoint.url())).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        lines.lock().unwrap().len(),
        1,
        "NO_PROXY went through the proxy"
    );
}

/// Each layer's failure keeps its kind: no address, refused, wrong trust.
#[tokio::test]
async fn failures_say_which_layer_failed() {
    let endpoint = Endpoint::start();
    let no_proxy = Matcher::builder().build();
    let unresolved = endpoint.client(&no_proxy, Vec::new());
    let e = unresolved.send(get(&endpoint.url())).await.unwrap_err();
    assert!(
        matches!(e, FetchError::Resolve { ref host, .. } if host == NAME),
        "{e:?}"
    );

    // The port is the URL's: on 127.0.0.2 nothing listens on it.
    let closed = SocketAddr::from(([127, 0, 0, 2], endpoint.addr.port()));
    let refused = endpoint.client(&no_proxy, vec![closed]);
    let e = refused.send(get(&endpoint.url())).await.unwrap_err();
    assert!(matches!(e, FetchError::Connect { .. }), "{e:?}");

    // The Mozilla roots do not know the test CA.
    let untrusted = HttpsClient::with(
        &endpoint.url(),
        None,
        &no_proxy,
        Resolver::Fixed(vec![endpoint.addr]),
        BUDGET,
        CONNECT,
    )
    .unwrap();
    let e = untrusted.send(get(&endpoint.url())).await.unwrap_err();
    assert!(matches!(e, FetchError::Tls { .. }), "{e:?}");
}

/// A body over the cap is refused, whether its length is declared up front or only shown by
/// the connection's end.
#[tokio::test]
async fn a_body_over_the_cap_is_too_large() {
    let body = "x".repeat(MAX_RESPONSE_BYTES + 1);
    let declared = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let to_close = format!("HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n{body}");
    for response in [declared, to_close] {
        let endpoint = Endpoint::answering(response.into_bytes());
        let client = endpoint.client(&Matcher::builder().build(), vec![endpoint.addr]);
        let e = client.send(get(&endpoint.url())).await.unwrap_err();
        assert!(matches!(e, FetchError::TooLarge), "{e:?}");
    }
}

/// A body at the cap is read whole, however it is delimited: the cap is not off by one.
#[tokio::test]
async fn a_body_at_the_cap_is_read() {
    let body = "x".repeat(MAX_RESPONSE_BYTES);
    let declared = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let to_close = format!("HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n{body}");
    for response in [declared, to_close] {
        let endpoint = Endpoint::answering(response.into_bytes());
        let client = endpoint.client(&Matcher::builder().build(), vec![endpoint.addr]);
        let (status, got) = client.send(get(&endpoint.url())).await.unwrap();
        assert_eq!((status, got.len()), (200, MAX_RESPONSE_BYTES));
    }
}
