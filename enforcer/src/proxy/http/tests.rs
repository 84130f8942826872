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
