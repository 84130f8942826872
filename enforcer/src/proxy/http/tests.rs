use tokio::net::TcpListener;

use super::*;

/// Both ends of a loopback TCP connection.
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let near = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (far, _) = listener.accept().await.unwrap();
    (near, far)
}

/// A body-less request whose response is already waiting when it has been sent keeps the
/// connection alive: the body's end is seen before the response's. Taking them in the other
/// order closed the client's keep-alive connection, and gave back its place under the
/// connection limits while its client still held it, about one time in two.
#[tokio::test]
async fn a_response_waiting_at_once_keeps_the_connection_alive() {
    let (mut client, mut caller) = pair().await;
    let (stream, mut server) = pair().await;
    let mut up = Upstream {
        stream,
        buf: BytesMut::new(),
    };
    let (request, _) = http::parse_request(
        b"GET /a HTTP/1.1\r\nhost: api\r\n\r\n",
        &http::Limits::default(),
    )
    .unwrap()
    .unwrap();
    let response = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let mut relayed = vec![0u8; response.len()];
    let (_draining, drain) = tokio::sync::watch::channel(false);
    for _ in 0..32 {
        server.write_all(response).await.unwrap();
        up.stream.readable().await.unwrap();
        let outcome = exchange(
            &mut client,
            &mut BytesMut::new(),
            &mut up,
            &request,
            &mut BytesMut::new(),
            &http::Limits::default(),
            &policy::Limits::default(),
            None,
            None,
            false,
            Instant::now(),
            &drain,
        )
        .await;
        assert_eq!(outcome.status, Some(200));
        assert!(
            matches!(outcome.next, Next::Continue),
            "{:?}",
            outcome.failure
        );
        caller.read_exact(&mut relayed).await.unwrap();
        assert_eq!(relayed, response);
    }
}

/// An upstream that resets the request without a byte of response leaves the exchange
/// unanswered: with `may_resend` the client is told nothing (the caller sends the request
/// again), without it the client gets 502. One byte of response and it is not unanswered.
#[tokio::test]
async fn a_reset_before_any_response_is_left_to_a_resend_only_when_allowed() {
    let (request, _) = http::parse_request(
        b"GET /a HTTP/1.1\r\nhost: api\r\n\r\n",
        &http::Limits::default(),
    )
    .unwrap()
    .unwrap();
    let (_draining, drain) = tokio::sync::watch::channel(false);
    for (may_resend, partial, unanswered, status) in [
        (true, &b""[..], true, None),
        (false, b"", true, Some(502)),
        (true, b"HTTP/1.1 2", false, Some(502)),
    ] {
        let (mut client, mut caller) = pair().await;
        let (stream, server) = pair().await;
        let mut up = Upstream {
            stream,
            buf: BytesMut::new(),
        };
        let upstream = tokio::spawn(async move {
            let mut server = server;
            let mut head = vec![0u8; b"GET /a HTTP/1.1\r\n".len()];
            server.read_exact(&mut head).await.unwrap();
            server.write_all(partial).await.unwrap();
            super::super::reset(server);
        });
        let outcome = exchange(
            &mut client,
            &mut BytesMut::new(),
            &mut up,
            &request,
            &mut BytesMut::new(),
            &http::Limits::default(),
            &policy::Limits::default(),
            None,
            None,
            may_resend,
            Instant::now(),
            &drain,
        )
        .await;
        upstream.await.unwrap();
        assert_eq!(outcome.unanswered, unanswered, "{:?}", outcome.failure);
        assert_eq!(outcome.status, status);
        drop(client);
        let mut relayed = Vec::new();
        caller.read_to_end(&mut relayed).await.unwrap();
        let expected: &[u8] = if status.is_some() { BAD_GATEWAY } else { b"" };
        assert_eq!(relayed, expected, "may_resend {may_resend}");
    }
}

/// A 101 is relayed, and the connection becomes a tunnel, only to the protocol the request
/// was allowed to upgrade to; any other 101 gets the client a 502 and ends the exchange.
#[tokio::test]
async fn a_101_switches_only_to_the_allowed_upgrade() {
    let plain = b"GET /a HTTP/1.1\r\nhost: api\r\n\r\n".as_slice();
    let ws = b"GET /ws HTTP/1.1\r\nhost: api\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"
        .as_slice();
    let switch_ws =
        b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n";
    let switch_h2c =
        b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n";
    let switch_bare = b"HTTP/1.1 101 Switching Protocols\r\n\r\n";
    // (request, the upgrade its rule allows, the upstream's 101, whether it tunnels)
    type Case<'a> = (&'a [u8], Option<&'a str>, &'a [u8], bool);
    let cases: [Case; 5] = [
        (plain, None, switch_bare, false),
        (plain, None, switch_ws, false),
        (ws, None, switch_ws, false),
        (ws, Some("websocket"), switch_h2c, false),
        (ws, Some("websocket"), switch_ws, true),
    ];
    for (request, upgrade, response, tunnels) in cases {
        let (mut client, mut caller) = pair().await;
        let (stream, mut server) = pair().await;
        let mut up = Upstream {
            stream,
            buf: BytesMut::new(),
        };
        let (request, _) = http::parse_request(request, &http::Limits::default())
            .unwrap()
            .unwrap();
        let (_draining, drain) = tokio::sync::watch::channel(false);
        server.write_all(response).await.unwrap();
        let outcome = exchange(
            &mut client,
            &mut BytesMut::new(),
            &mut up,
            &request,
            &mut BytesMut::new(),
            &http::Limits::default(),
            &policy::Limits::default(),
            None,
            upgrade,
            false,
            Instant::now(),
            &drain,
        )
        .await;
        let case = String::from_utf8_lossy(response).into_owned();
        drop(client);
        let mut relayed = Vec::new();
        caller.read_to_end(&mut relayed).await.unwrap();
        if tunnels {
            assert!(matches!(outcome.next, Next::Tunnel), "{case}");
            assert_eq!(outcome.status, Some(101));
            assert_eq!(relayed, response);
        } else {
            assert!(matches!(outcome.next, Next::UnexpectedUpgrade), "{case}");
            assert_eq!(outcome.status, Some(502), "{case}");
            assert_eq!(relayed, BAD_GATEWAY, "{case}");
        }
    }
}
