//! The metrics endpoint: a small HTTP/1.1 responder on the agent's runtime, parsing with the
//! proxy's strict parser. One request per connection (`connection: close`): scrapers open a
//! connection per scrape at most every few seconds, so keep-alive would buy nothing.

use std::{sync::Arc, time::Duration};

use bytes::BytesMut;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tracing::{debug, warn};

use super::Metrics;
use crate::http::{self, Method};

/// Connections served at once; more are closed at accept, so a misbehaving scraper cannot
/// make the agent hold unbounded buffers.
const MAX_CONNECTIONS: usize = 16;
/// Time for a client to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Request heads here are a line and a few headers.
const LIMITS: http::Limits = http::Limits {
    max_request_line: 1024,
    max_head_bytes: 8 * 1024,
    max_headers: 32,
};

/// Answer `/metrics`, `/healthz`, `/readyz` and `/status` on `listener` until the task is
/// dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            debug!("metrics endpoint: too many connections, closing one");
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &metrics).await {
                debug!(error = %e, "metrics endpoint: connection failed");
            }
            drop(permit);
        });
    }
}

async fn answer(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(1024);
    let request = tokio::time::timeout(HEAD_TIMEOUT, async {
        loop {
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok(None);
            }
            match http::parse_request(&buf, &LIMITS) {
                Ok(Some((req, _))) => return Ok(Some(Ok(req))),
                Ok(None) => {}
                Err(e) => return Ok(Some(Err(e))),
            }
        }
    })
    .await;
    let response = match request {
        Err(_) | Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(Some(Err(_)))) => Response::text(400, "bad request\n"),
        Ok(Ok(Some(Ok(req)))) => route(metrics, req.method(), req.path()),
    };
    stream.write_all(&response.bytes()).await?;
    stream.shutdown().await
}

/// What each path answers.
fn route(metrics: &Metrics, method: &Method, path: &str) -> Response {
    if !matches!(method, Method::Get) {
        return Response::text(405, "method not allowed\n");
    }
    match path {
        "/metrics" => Response {
            status: 200,
            content_type: prometheus::TEXT_FORMAT,
            body: metrics.encode().into_bytes(),
        },
        // The runtime answered: that is what liveness asks.
        "/healthz" => Response::text(200, "ok\n"),
        "/readyz" if metrics.is_ready() => Response::text(200, "ready\n"),
        "/readyz" => Response::text(503, "not ready\n"),
        "/status" => match serde_json::to_vec(&metrics.status()) {
            Ok(body) => Response {
                status: 200,
                content_type: "application/json",
                body,
            },
            Err(e) => Response::text(500, &format!("BUG: status not serializable: {e}\n")),
        },
        _ => Response::text(404, "not found\n"),
    }
}

struct Response {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Response {
    fn text(status: u16, body: &str) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            503 => "Service Unavailable",
            _ => "Internal Server Error",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            self.status,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}
