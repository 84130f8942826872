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
//!   until the peer closes (or 30 s of silence pass); reports what came back (lossy UTF-8) and how the
//!   connection ended.
//! - `probe pipeline ADDR`: send the bytes on stdin (pipelined requests) while reading the
//!   responses, until the peer closes (or 30 s pass); reports the count of each response
//!   status and how the connection ended. For many requests, whose responses would not fit a
//!   report or the socket buffers of a client that writes everything first.
//! - `probe get-loop ADDR PATH`: sequential `GET PATH` requests on one keep-alive
//!   connection (reconnecting if the server closes) until stdin reaches EOF; reports the count
//!   of each status and of failed exchanges.
//! - `probe keepalive ADDR PATH1 PATH2`: a well-behaved keep-alive client (RFC 9112 §9.3.1):
//!   `GET PATH1`, print `{"first": STATUS, ...}` as a line, wait for a line on stdin, then
//!   `GET PATH2` on the same connection — unless the server closed it while idle (reported as
//!   `idle_end`: `fin` or `reset`), or it closes before any response byte, in which case the
//!   request is retried once on a new connection. Prints `{"second": STATUS, "retried": ..}`.
//! - `probe load ADDR ALLOWED DENIED SECONDS`: a mix for soak runs: every 4th request asks
//!   for DENIED, the rest ALLOWED; every 8th closes its connection (`connection: close`), the
//!   rest keep it alive. Reports counts of allowed and denied outcomes, of failures, and of
//!   requests retried because a reused connection closed before any response byte.
//! - `probe hold ADDR PATH COUNT`: open COUNT connections one after the other, `GET PATH` on
//!   each and keep those that were answered open; report the count of each outcome (a status,
//!   `reset`, `closed`), then hold the connections until stdin reaches EOF.
//! - `probe paced ADDR PATH COUNT INTERVAL_MS`: COUNT `GET PATH` requests, each on a new
//!   connection, one every INTERVAL_MS; reports the count of each status, the failures, and
//!   latency percentiles (connect to full response) in microseconds.
//! - `probe flood ADDR PATH SECONDS THREADS HOLD`: for SECONDS, THREADS threads each open
//!   connections as fast as they can, send 4 pipelined `GET PATH` on each and keep the last HOLD
//!   open (older ones are closed with RST); reports connects, outcomes and statuses.
//! - `probe syn-burst ADDR PENDING`: once a line arrives on stdin, start non-blocking
//!   connects one after the other until PENDING of them stay unanswered (`SYN_SENT`), or one
//!   fails; print a line of how each connect started (`connected`, `in_progress`, `refused`,
//!   `failed`) and the count left `pending`, hold them all until stdin reaches EOF, then close
//!   them.
//! - `probe exec-after-connect ADDR fork|self EXE`: an attacker's exec after connect. Connect,
//!   then with `fork` fork a child that keeps the socket while this process execs EXE (as
//!   `EXE reap`, which waits for its children); the child waits until its parent runs EXE,
//!   sends the bytes on stdin and reports like `send`. With `self` the socket is kept across
//!   the exec (no CLOEXEC) and EXE sends on it (`EXE send-fd FD REQUEST`).
//! - `probe send-and-exit ADDR PATH`: connect, send `GET PATH` (`connection: close`), then
//!   exit without reading once a line (or EOF) arrives on stdin: a caller that is gone before
//!   its answer. Prints `{}`.
//! - `probe netns-attempt UPSTREAM AGENT_PORT LOCAL_PORT ROUTED`: run in a private network
//!   namespace: listen on 127.0.0.1:AGENT_PORT (a fake agent), connect from 127.0.0.1:LOCAL_PORT
//!   to UPSTREAM, then to ROUTED (an address outside the namespace); reports each connect's
//!   outcome (`connected` or the error kind) and whether the fake listener got a connection.

use std::{
    io::{self, BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use serde_json::json;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The halves of `exec-after-connect` that run after the exec: no address argument.
    match args.first().map(String::as_str) {
        Some("reap") => reap(),
        Some("send-fd") => {
            let fd: i32 = args
                .get(1)
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| usage());
            let request = args.get(2).unwrap_or_else(|| usage());
            // SAFETY: the descriptor was left open across exec for this process to own.
            let s = unsafe { <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            println!("{}", send_on(s, request.as_bytes()));
            return;
        }
        _ => {}
    }
    let arg = |i: usize| -> &str { args.get(i).map(String::as_str).unwrap_or_else(|| usage()) };
    let addr: SocketAddr = arg(1).parse().unwrap_or_else(|_| usage());
    let num = |i: usize| -> u64 { arg(i).parse().unwrap_or_else(|_| usage()) };
    let out = match arg(0) {
        "echo" => echo(addr, num(2)),
        "connect-rate" => connect_rate(addr, num(2)),
        "pingpong" => pingpong(addr, num(2), num(3) as usize),
        "stream" => stream(addr, num(2)),
        "send" => send(addr, args.get(2).is_some_and(|a| a == "--hold")),
        "get-loop" => get_loop(addr, arg(2)),
        "keepalive" => keepalive(addr, arg(2), arg(3)),
        "load" => load(addr, arg(2), arg(3), num(4)),
        "hold" => hold(addr, arg(2), num(3)),
        "paced" => paced(addr, arg(2), num(3), num(4)),
        "flood" => flood(addr, arg(2), num(3), num(4), num(5) as usize),
        "syn-burst" => syn_burst(addr, num(2) as usize),
        "pipeline" => pipeline(addr),
        "exec-after-connect" => exec_after_connect(addr, arg(2), arg(3)),
        "send-and-exit" => send_and_exit(addr, arg(2)),
        "netns-attempt" => netns_attempt(addr, num(2) as u16, num(3) as u16, arg(4)),
        _ => usage(),
    };
    println!("{out}");
}

fn usage() -> ! {
    eprintln!(
        "usage: probe echo|connect-rate|pingpong|stream|send|get-loop|keepalive|load|hold|paced|flood|syn-burst|pipeline ADDR ARGS..."
    );
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
        // The harness's patience: an answer slow on a loaded machine (a big binary's first
        // hash, a drain) is still an answer.
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
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

fn exec_after_connect(addr: SocketAddr, how: &str, exe: &str) -> serde_json::Value {
    use std::os::fd::AsRawFd as _;
    let mut request = Vec::new();
    io::stdin().read_to_end(&mut request).expect("stdin");
    let s = TcpStream::connect(addr).expect("connect");
    let exec = |argv: &[&str]| -> ! {
        use std::os::unix::process::CommandExt as _;
        let e = std::process::Command::new(exe).args(argv).exec();
        panic!("exec {exe}: {e}");
    };
    match how {
        "fork" => {
            let parent = std::process::id();
            // SAFETY: single-threaded; the child only runs plain Rust code before exiting.
            match unsafe { libc::fork() } {
                -1 => panic!("fork: {}", io::Error::last_os_error()),
                0 => {
                    let exe_now = || std::fs::read_link(format!("/proc/{parent}/exe")).ok();
                    let want = std::fs::canonicalize(exe).expect("exe");
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while exe_now().as_ref() != Some(&want) {
                        assert!(Instant::now() < deadline, "parent never ran {exe}");
                        thread::sleep(Duration::from_millis(1));
                    }
                    println!("{}", send_on(s, &request));
                    std::process::exit(0);
                }
                _ => {
                    drop(s);
                    exec(&["reap"])
                }
            }
        }
        "self" => {
            let fd = s.as_raw_fd();
            // SAFETY: clears FD_CLOEXEC on a descriptor this process owns.
            unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
            let request = String::from_utf8(request).expect("UTF-8 request");
            exec(&["send-fd", &fd.to_string(), &request])
        }
        _ => usage(),
    }
}

fn send_and_exit(addr: SocketAddr, path: &str) -> serde_json::Value {
    let mut s = TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: api\r\nconnection: close\r\n\r\n"
    )
    .expect("send");
    let _ = io::stdin().lock().read_line(&mut String::new());
    json!({})
}

fn netns_attempt(
    upstream: SocketAddr,
    agent_port: u16,
    local_port: u16,
    routed: &str,
) -> serde_json::Value {
    let fake = std::net::TcpListener::bind(("127.0.0.1", agent_port)).expect("fake listener");
    fake.set_nonblocking(true).unwrap();
    let outcome = |r: io::Result<()>| match r {
        Ok(()) => "connected".to_string(),
        Err(e) => format!("{:?}", e.kind()),
    };
    let from: SocketAddr = SocketAddr::from(([127, 0, 0, 1], local_port));
    let loopback = (|| {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        s.set_reuse_address(true)?;
        s.bind(&from.into())?;
        s.connect(&upstream.into())
    })();
    let routed: SocketAddr = routed.parse().unwrap_or_else(|_| usage());
    let routed = TcpStream::connect_timeout(&routed, Duration::from_secs(5)).map(drop);
    json!({
        "loopback": outcome(loopback),
        "routed": outcome(routed),
        "fake_listener_accepted": fake.accept().is_ok(),
    })
}

/// Wait for every child, then exit quietly (the children report).
fn reap() -> ! {
    // SAFETY: wait(2) with a null status pointer.
    while unsafe { libc::wait(std::ptr::null_mut()) } > 0 {}
    std::process::exit(0)
}

/// Send `request` on `s`, half-close and read to the end: `send`'s report.
fn send_on(mut s: TcpStream, request: &[u8]) -> serde_json::Value {
    let mut report = json!({ "pid": std::process::id() });
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s
        .write_all(request)
        .and_then(|()| s.shutdown(Shutdown::Write));
    let mut response = Vec::new();
    report["end"] = json!(match s.read_to_end(&mut response) {
        Ok(_) => "closed".to_string(),
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => "reset".to_string(),
        Err(e) => format!("{:?}", e.kind()),
    });
    report["response"] = json!(String::from_utf8_lossy(&response));
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

fn get_loop(addr: SocketAddr, path: &str) -> serde_json::Value {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    };
    // Until the test lets go, however long what it does under this load takes.
    let done = Arc::new(AtomicBool::new(false));
    thread::spawn({
        let done = done.clone();
        move || {
            let _ = io::copy(&mut io::stdin(), &mut io::sink());
            done.store(true, Relaxed);
        }
    });
    let mut statuses = std::collections::BTreeMap::<String, u64>::new();
    let mut failures = 0u64;
    let mut errors = Vec::new();
    let mut conn: Option<BufReader<TcpStream>> = None;
    while !done.load(Relaxed) {
        let result = (|| -> io::Result<(u16, bool)> {
            if conn.is_none() {
                let s = TcpStream::connect(addr)?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                conn = Some(BufReader::new(s));
            }
            let reader = conn.as_mut().expect("connected above");
            // One write: `write!` sends each formatted piece as its own segment, and Nagle then
            // holds the later ones for the server's delayed ACK.
            let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n");
            reader.get_mut().write_all(request.as_bytes())?;
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

/// How one exchange on a connection ended: a status, or how the connection failed.
fn outcome(result: io::Result<u16>) -> String {
    match result {
        Ok(status) => status.to_string(),
        // A reset that arrives before the request is written shows as a broken pipe.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ) =>
        {
            "reset".into()
        }
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => "closed".into(),
        Err(e) => format!("{:?}", e.kind()),
    }
}

/// Read one response (head, and a body with a content-length); returns its status.
fn read_response(reader: &mut BufReader<TcpStream>) -> io::Result<u16> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if reader.read_until(b'\n', &mut head)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    resp.parse(&head)
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    let len: u64 = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
        .unwrap_or(0);
    io::copy(&mut reader.by_ref().take(len), &mut io::sink())?;
    Ok(resp.code.unwrap_or(0))
}

fn get_request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n").into_bytes()
}

/// Connect, send `requests` pipelined GETs, read the responses.
fn exchange(
    addr: SocketAddr,
    path: &str,
    requests: usize,
) -> (Option<BufReader<TcpStream>>, Vec<String>) {
    let stream = match TcpStream::connect(addr) {
        Ok(s) => s,
        Err(e) => return (None, vec![format!("connect {:?}", e.kind())]),
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(stream);
    if let Err(e) = reader
        .get_mut()
        .write_all(&get_request(path).repeat(requests))
    {
        return (Some(reader), vec![outcome(Err(e))]);
    }
    let mut outcomes = Vec::new();
    for _ in 0..requests {
        let result = read_response(&mut reader);
        let failed = result.is_err();
        outcomes.push(outcome(result));
        if failed {
            break;
        }
    }
    (Some(reader), outcomes)
}

fn count(outcomes: impl IntoIterator<Item = String>) -> std::collections::BTreeMap<String, u64> {
    let mut counts = std::collections::BTreeMap::new();
    for o in outcomes {
        *counts.entry(o).or_default() += 1;
    }
    counts
}

fn hold(addr: SocketAddr, path: &str, conns: u64) -> serde_json::Value {
    let mut held = Vec::new();
    let mut outcomes = Vec::new();
    for _ in 0..conns {
        let (conn, mut out) = exchange(addr, path, 1);
        if out.first().is_some_and(|o| o.starts_with('2')) {
            held.extend(conn);
        }
        outcomes.append(&mut out);
    }
    println!(
        "{}",
        json!({ "outcomes": count(outcomes), "held": held.len() })
    );
    // Until the test lets go.
    let _ = io::copy(&mut io::stdin(), &mut io::sink());
    drop(held);
    json!({ "released": true })
}

/// Percentiles of latencies in microseconds.
fn percentiles(mut lat_us: Vec<f64>) -> serde_json::Value {
    if lat_us.is_empty() {
        return json!(null);
    }
    lat_us.sort_by(f64::total_cmp);
    let pct = |p: f64| lat_us[((lat_us.len() - 1) as f64 * p).round() as usize].round();
    json!({ "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": pct(1.0) })
}

fn paced(addr: SocketAddr, path: &str, requests: u64, interval_ms: u64) -> serde_json::Value {
    let interval = Duration::from_millis(interval_ms);
    let started = Instant::now();
    let mut lat_us = Vec::new();
    let mut outcomes = Vec::new();
    for i in 0..requests {
        if let Some(wait) = (started + interval * i as u32).checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        let t = Instant::now();
        let (_, mut out) = exchange(addr, path, 1);
        lat_us.push(t.elapsed().as_secs_f64() * 1e6);
        outcomes.append(&mut out);
    }
    json!({ "outcomes": count(outcomes), "latency_us": percentiles(lat_us) })
}

fn flood(
    addr: SocketAddr,
    path: &str,
    seconds: u64,
    threads: u64,
    hold: usize,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let path = path.to_string();
            thread::spawn(move || {
                let mut held = std::collections::VecDeque::new();
                let mut connects = 0u64;
                let mut outcomes = Vec::new();
                while Instant::now() < deadline {
                    let (conn, mut out) = exchange(addr, &path, 4);
                    connects += u64::from(conn.is_some());
                    outcomes.append(&mut out);
                    if let Some(conn) = conn {
                        // RST on close keeps TIME_WAIT from exhausting ephemeral ports.
                        let _ =
                            socket2::SockRef::from(conn.get_ref()).set_linger(Some(Duration::ZERO));
                        held.push_back(conn);
                    }
                    if held.len() > hold {
                        held.pop_front();
                    }
                }
                (connects, outcomes)
            })
        })
        .collect();
    let mut connects = 0;
    let mut outcomes = Vec::new();
    for w in workers {
        let (c, mut o) = w.join().expect("flood thread");
        connects += c;
        outcomes.append(&mut o);
    }
    json!({ "connects": connects, "outcomes": count(outcomes) })
}

fn syn_burst(addr: SocketAddr, wanted: usize) -> serde_json::Value {
    use socket2::{Domain, Socket, Type};
    let _ = io::stdin().read_line(&mut String::new());
    let (mut connected, mut in_progress, mut refused, mut failed) = (0u64, 0u64, 0u64, 0u64);
    let mut sockets = Vec::new();
    // Connects seen unanswered; one whose handshake was only late drops out on a recount.
    let mut pending: Vec<usize> = Vec::new();
    while pending.len() < wanted {
        let Ok(socket) = Socket::new(Domain::for_address(addr), Type::STREAM, None) else {
            failed += 1;
            break;
        };
        let _ = socket.set_nonblocking(true);
        match socket.connect(&addr.into()) {
            Ok(()) => connected += 1,
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => in_progress += 1,
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                refused += 1;
                break;
            }
            Err(_) => {
                failed += 1;
                break;
            }
        }
        if syn_sent(&socket) {
            pending.push(sockets.len());
        }
        sockets.push(socket);
        if pending.len() == wanted {
            pending.retain(|&i| syn_sent(&sockets[i]));
        }
    }
    println!(
        "{}",
        json!({ "connected": connected, "in_progress": in_progress, "refused": refused,
                "failed": failed, "pending": pending.len() })
    );
    // Until the test lets go.
    let _ = io::copy(&mut io::stdin(), &mut io::sink());
    drop(sockets);
    json!({ "released": true })
}

/// Whether `socket`'s connect is still waiting for an answer to its SYN.
fn syn_sent(socket: &socket2::Socket) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: `tcp_info` is plain data; the kernel fills at most `len` bytes of it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: a valid socket, and a buffer of `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    // `TCP_SYN_SENT` in the kernel's `tcp_states.h`; libc does not export the states.
    rc == 0 && info.tcpi_state == 2
}

/// Send `GET path` on `conn` and read the response (a `content-length` body). `Ok(None)`: the
/// connection closed or reset before any response byte, so the request may be retried.
fn get_once(
    conn: &mut BufReader<TcpStream>,
    path: &str,
    close: bool,
) -> io::Result<Option<(u16, bool)>> {
    let connection = if close { "connection: close\r\n" } else { "" };
    // One write: `write!` on the socket would send each piece as its own small segment, and
    // Nagle would hold the later ones for a delayed ACK.
    let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\n{connection}\r\n");
    let sent = conn.get_mut().write_all(request.as_bytes());
    let retryable = |e: &io::Error| {
        matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
        )
    };
    match sent {
        Err(e) if retryable(&e) => return Ok(None),
        other => other?,
    }
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut line = Vec::new();
        match conn.read_until(b'\n', &mut line) {
            Ok(0) if head.is_empty() => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(e) if head.is_empty() && retryable(&e) => return Ok(None),
            Err(e) => return Err(e),
        }
        head.extend_from_slice(&line);
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    resp.parse(&head)
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    let len: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let closes = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body)?;
    Ok(Some((resp.code.unwrap_or(0), closes)))
}

fn connect_http(addr: SocketAddr) -> io::Result<BufReader<TcpStream>> {
    let s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(BufReader::new(s))
}

/// How an idle connection stands: `open`, or closed by the server with `fin` or `reset`.
fn idle_state(conn: &BufReader<TcpStream>) -> &'static str {
    let s = conn.get_ref();
    let _ = s.set_nonblocking(true);
    let mut byte = [0u8; 1];
    let state = match s.peek(&mut byte) {
        Ok(0) => "fin",
        Ok(_) => "unsolicited bytes",
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => "open",
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => "reset",
        Err(_) => "error",
    };
    let _ = s.set_nonblocking(false);
    state
}

fn keepalive(addr: SocketAddr, first: &str, second: &str) -> serde_json::Value {
    let fail = |what: &str, e: io::Error| -> serde_json::Value {
        json!({ "pid": std::process::id(), "error": format!("{what}: {e}") })
    };
    let mut conn = match connect_http(addr) {
        Ok(c) => c,
        Err(e) => return fail("connect", e),
    };
    let status = match get_once(&mut conn, first, false) {
        Ok(Some((status, _))) => status,
        Ok(None) => return fail("first", io::ErrorKind::ConnectionAborted.into()),
        Err(e) => return fail("first", e),
    };
    let local = conn.get_ref().local_addr().map(|a| a.to_string()).ok();
    println!(
        "{}",
        json!({ "pid": std::process::id(), "first": status, "local": local })
    );
    let _ = io::stdout().flush();
    let mut go = String::new();
    let _ = io::stdin().read_line(&mut go);
    let idle_end = idle_state(&conn);
    let mut retried = false;
    let result = (|| -> io::Result<u16> {
        if idle_end == "open"
            && let Some((status, _)) = get_once(&mut conn, second, false)?
        {
            return Ok(status);
        }
        // Closed while idle, or before any response byte: a fresh connection, once.
        retried = true;
        let mut fresh = connect_http(addr)?;
        match get_once(&mut fresh, second, false)? {
            Some((status, _)) => Ok(status),
            None => Err(io::ErrorKind::ConnectionAborted.into()),
        }
    })();
    match result {
        Ok(status) => json!({ "second": status, "retried": retried, "idle_end": idle_end }),
        Err(e) => {
            json!({ "error": format!("second: {e}"), "retried": retried, "idle_end": idle_end })
        }
    }
}

fn load(addr: SocketAddr, allowed: &str, denied: &str, seconds: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut statuses = std::collections::BTreeMap::<String, u64>::new();
    let (mut allowed_ok, mut allowed_failed, mut denied_ok, mut denied_failed) = (0u64, 0, 0, 0);
    let mut retried = 0u64;
    let mut errors = Vec::new();
    let mut conn: Option<BufReader<TcpStream>> = None;
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        let deny = n.is_multiple_of(4);
        let close = n % 8 == 1;
        let path = if deny { denied } else { allowed };
        let result = (|| -> io::Result<(u16, bool)> {
            let reused = conn.is_some();
            if conn.is_none() {
                conn = Some(connect_http(addr)?);
            }
            let c = conn.as_mut().expect("connected above");
            match get_once(c, path, close)? {
                Some(answer) => Ok(answer),
                // A reused connection the server closed between requests: retry once.
                None if reused => {
                    retried += 1;
                    let c = conn.insert(connect_http(addr)?);
                    get_once(c, path, close)?.ok_or(io::ErrorKind::ConnectionAborted.into())
                }
                None => Err(io::ErrorKind::ConnectionAborted.into()),
            }
        })();
        match result {
            Ok((status, closes)) => {
                *statuses.entry(status.to_string()).or_default() += 1;
                match (deny, status) {
                    (false, 200) => allowed_ok += 1,
                    (true, 403) => denied_ok += 1,
                    (false, _) => allowed_failed += 1,
                    (true, _) => denied_failed += 1,
                }
                if closes || close {
                    conn = None;
                }
            }
            Err(e) => {
                if deny {
                    denied_failed += 1;
                } else {
                    allowed_failed += 1;
                }
                if errors.len() < 5 {
                    errors.push(format!("{path}: {e}"));
                }
                conn = None;
            }
        }
    }
    json!({
        "statuses": statuses,
        "allowed_ok": allowed_ok,
        "allowed_failed": allowed_failed,
        "denied_ok": denied_ok,
        "denied_failed": denied_failed,
        "retried": retried,
        "errors": errors,
    })
}
