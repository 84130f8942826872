//! A real TCP client for end-to-end tests and benchmarks. Prints one JSON object on stdout.
//!
//! - `probe echo ADDR BYTES`: talk to an echo upstream (see `enforcer_tests::EchoServer`):
//!   read the `peer ADDR` line it greets with, stream BYTES of a pattern while reading the echo,
//!   half-close, read to EOF and check every byte. Reports our address, `getpeername`, what the
//!   upstream saw, counts, and an error kind if the exchange failed.
//! - `probe connect-rate ADDR SECONDS`: connect and close in a loop; reports connects/second.
//! - `probe pingpong ADDR ROUNDS SIZE`: request/response of SIZE bytes over one connection;
//!   reports latency percentiles in microseconds.
//! - `probe stream ADDR MIB`: send MIB mebibytes and read the echo; reports MiB/s.
//! - `probe send ADDR [--hold]`: send the bytes on stdin, half-close (unless `--hold`), read
//!   until the peer closes (or 10 s pass); reports what came back (lossy UTF-8) and how the
//!   connection ended.
//! - `probe pipeline ADDR`: send the bytes on stdin (pipelined requests) while reading the
//!   responses, until the peer closes (or 30 s pass); reports the count of each response
//!   status and how the connection ended. For many requests, whose responses would not fit a
//!   report or the socket buffers of a client that writes everything first.
//! - `probe get-loop ADDR PATH SECONDS`: sequential `GET PATH` requests on one keep-alive
//!   connection (reconnecting if the server closes) for SECONDS; reports the count of each
//!   status and of failed exchanges.

use std::{
    io::{self, BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use serde_json::json;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| -> &str { args.get(i).map(String::as_str).unwrap_or_else(|| usage()) };
    let addr: SocketAddr = arg(1).parse().unwrap_or_else(|_| usage());
    let num = |i: usize| -> u64 { arg(i).parse().unwrap_or_else(|_| usage()) };
    let out = match arg(0) {
        "echo" => echo(addr, num(2)),
        "connect-rate" => connect_rate(addr, num(2)),
        "pingpong" => pingpong(addr, num(2), num(3) as usize),
        "stream" => stream(addr, num(2)),
        "send" => send(addr, args.get(2).is_some_and(|a| a == "--hold")),
        "get-loop" => get_loop(addr, arg(2), num(3)),
        "pipeline" => pipeline(addr),
        _ => usage(),
    };
    println!("{out}");
}

fn usage() -> ! {
    eprintln!("usage: probe echo|connect-rate|pingpong|stream|send ADDR ARGS...");
    std::process::exit(2)
}

/// Byte `i` of the test pattern: not periodic on any power of two, so shifted or dropped
/// chunks are caught.
fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

fn echo(addr: SocketAddr, bytes: u64) -> serde_json::Value {
    let started = Instant::now();
    let mut report = json!({ "pid": std::process::id(), "sent": 0, "received": 0 });
    let result = (|| -> io::Result<()> {
        let stream = TcpStream::connect(addr)?;
        report["local"] = json!(stream.local_addr()?.to_string());
        report["peer"] = json!(stream.peer_addr()?.to_string());
        let mut reader = BufReader::with_capacity(256 * 1024, stream.try_clone()?);
        let mut greeting = String::new();
        reader.read_line(&mut greeting)?;
        let saw = greeting
            .strip_prefix("peer ")
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no greeting"))?;
        report["upstream_saw"] = json!(saw.trim());

        let mut writer = stream;
        let sender = thread::spawn(move || -> io::Result<u64> {
            let mut buf = vec![0u8; 64 * 1024];
            let mut sent = 0u64;
            while sent < bytes {
                let n = buf.len().min((bytes - sent) as usize);
                for (j, b) in buf[..n].iter_mut().enumerate() {
                    *b = pattern(sent + j as u64);
                }
                writer.write_all(&buf[..n])?;
                sent += n as u64;
            }
            writer.shutdown(Shutdown::Write)?;
            Ok(sent)
        });
        let mut buf = vec![0u8; 64 * 1024];
        let mut received = 0u64;
        let mut intact = true;
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            intact &= buf[..n]
                .iter()
                .enumerate()
                .all(|(j, &b)| b == pattern(received + j as u64));
            received += n as u64;
        }
        let sent = sender.join().expect("sender thread")?;
        report["sent"] = json!(sent);
        report["received"] = json!(received);
        report["intact"] = json!(intact && received == sent);
        Ok(())
    })();
    if let Err(e) = result {
        report["error"] = json!(format!("{:?}", e.kind()));
        report["error_message"] = json!(e.to_string());
    }
    report["elapsed_ms"] = json!(started.elapsed().as_millis() as u64);
    report
}

fn connect_rate(addr: SocketAddr, seconds: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut connects = 0u64;
    let mut errors = 0u64;
    while Instant::now() < deadline {
        match TcpStream::connect(addr) {
            Ok(s) => {
                // RST on close keeps TIME_WAIT from exhausting ephemeral ports.
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                connects += 1;
            }
            Err(_) => errors += 1,
        }
    }
    let secs = started.elapsed().as_secs_f64();
    json!({ "connects": connects, "errors": errors, "per_second": connects as f64 / secs })
}

fn pingpong(addr: SocketAddr, rounds: u64, size: usize) -> serde_json::Value {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let mut reader = BufReader::new(s.try_clone().expect("clone"));
    let mut greeting = String::new();
    reader.read_line(&mut greeting).expect("greeting");
    let msg = vec![7u8; size];
    let mut back = vec![0u8; size];
    let mut lat_us = Vec::with_capacity(rounds as usize);
    let started = Instant::now();
    for _ in 0..rounds {
        let t = Instant::now();
        s.write_all(&msg).expect("write");
        reader.read_exact(&mut back).expect("read");
        lat_us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let total = started.elapsed().as_secs_f64();
    lat_us.sort_by(f64::total_cmp);
    let pct = |p: f64| lat_us[((lat_us.len() - 1) as f64 * p).round() as usize];
    json!({
        "rounds": rounds,
        "p50_us": pct(0.50),
        "p99_us": pct(0.99),
        "per_second": rounds as f64 / total,
    })
}

fn stream(addr: SocketAddr, mib: u64) -> serde_json::Value {
    let started = Instant::now();
    let report = echo(addr, mib * 1024 * 1024);
    let secs = started.elapsed().as_secs_f64();
    json!({
        "mib": mib,
        "intact": report["intact"],
        "mib_per_second": mib as f64 / secs,
    })
}

fn send(addr: SocketAddr, hold: bool) -> serde_json::Value {
    let mut request = Vec::new();
    io::stdin().read_to_end(&mut request).expect("stdin");
    let mut report = json!({ "pid": std::process::id() });
    let result = (|| -> io::Result<Vec<u8>> {
        let mut s = TcpStream::connect(addr)?;
        report["local"] = json!(s.local_addr()?.to_string());
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        // The server may close before reading everything (a 400 at the first bad byte):
        // keep what it answered even if the rest of the write fails.
        let _ = s.write_all(&request).and_then(|()| {
            if hold {
                Ok(())
            } else {
                s.shutdown(Shutdown::Write)
            }
        });
        let mut response = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) => {
                    report["end"] = json!("closed");
                    return Ok(response);
                }
                Ok(n) => response.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    report["end"] = json!("reset");
                    return Ok(response);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    report["end"] = json!("timeout");
                    return Ok(response);
                }
                Err(e) => return Err(e),
            }
        }
    })();
    match result {
        Ok(response) => report["response"] = json!(String::from_utf8_lossy(&response)),
        Err(e) => report["error"] = json!(format!("{:?}", e.kind())),
    }
    report
}

fn pipeline(addr: SocketAddr) -> serde_json::Value {
    let mut request = Vec::new();
    io::stdin().read_to_end(&mut request).expect("stdin");
    let mut report = json!({ "pid": std::process::id() });
    let result = (|| -> io::Result<std::collections::BTreeMap<String, u64>> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut writer = s.try_clone()?;
        let sender = thread::spawn(move || writer.write_all(&request));
        let mut statuses = std::collections::BTreeMap::new();
        // Status lines are found across reads: the tail of each read is kept.
        let mut window = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let end = loop {
            let n = match s.read(&mut buf) {
                Ok(0) => break "closed",
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break "reset",
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    break "timeout";
                }
                Err(e) => return Err(e),
            };
            window.extend_from_slice(&buf[..n]);
            let mut i = 0;
            while let Some(at) = find(&window[i..], b"HTTP/1.1 ") {
                let start = i + at + 9;
                if window.len() < start + 3 {
                    break;
                }
                let code = String::from_utf8_lossy(&window[start..start + 3]).into_owned();
                *statuses.entry(code).or_insert(0) += 1;
                i = start + 3;
            }
            // Keep what may hold the start of a status line cut by this read.
            let keep = window.len().saturating_sub(11).max(i).min(window.len());
            window.drain(..keep);
        };
        report["end"] = json!(end);
        if let Ok(Err(e)) = sender.join() {
            report["write_error"] = json!(format!("{:?}", e.kind()));
        }
        Ok(statuses)
    })();
    match result {
        Ok(statuses) => report["statuses"] = json!(statuses),
        Err(e) => report["error"] = json!(format!("{:?}", e.kind())),
    }
    report
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn get_loop(addr: SocketAddr, path: &str, seconds: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut statuses = std::collections::BTreeMap::<String, u64>::new();
    let mut failures = 0u64;
    let mut errors = Vec::new();
    let mut conn: Option<BufReader<TcpStream>> = None;
    while Instant::now() < deadline {
        let result = (|| -> io::Result<(u16, bool)> {
            if conn.is_none() {
                let s = TcpStream::connect(addr)?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                conn = Some(BufReader::new(s));
            }
            let reader = conn.as_mut().expect("connected above");
            write!(
                reader.get_mut(),
                "GET {path} HTTP/1.1\r\nhost: test\r\n\r\n"
            )?;
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut line = Vec::new();
                if reader.read_until(b'\n', &mut line)? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                head.extend_from_slice(&line);
            }
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            resp.parse(&head)
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
            let status = resp.code.unwrap_or(0);
            let header = |name: &str| {
                resp.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| String::from_utf8_lossy(h.value).into_owned())
            };
            let len: usize = header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
            let mut body = vec![0u8; len];
            reader.read_exact(&mut body)?;
            Ok((status, close))
        })();
        match result {
            Ok((status, close)) => {
                *statuses.entry(status.to_string()).or_default() += 1;
                if close {
                    conn = None;
                }
            }
            Err(e) => {
                failures += 1;
                if errors.len() < 5 {
                    errors.push(e.to_string());
                }
                conn = None;
            }
        }
    }
    json!({ "statuses": statuses, "failures": failures, "errors": errors })
}
