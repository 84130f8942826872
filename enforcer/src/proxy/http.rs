//! The HTTP/1.1 side of the proxy: one policy decision per request.
//!
//! Enforces: each request head is parsed strictly, decided on its own (keep-alive and
//! pipelined requests included) and, if allowed, forwarded in canonical form — the path the
//! policy matched is the path the upstream receives. A denied request gets 403 and never
//! reaches the upstream; a malformed one gets 400 and the connection is closed, since where
//! the next request starts can no longer be trusted. The limits ([`crate::limits`]) apply
//! per request: the caller identity's request rate, before the decision; the allowing rule's
//! rate and body size, after it (429 with `Retry-After`, 413); and the upstream's connect and
//! response timeouts (504). Reports: one audit record per request.
//!
//! While the agent drains (see [`super::Drain`]), a request in flight or already arriving is
//! answered with `connection: close` and the connection then closed; an idle one is closed at
//! once, with a FIN.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use bytes::{Buf, BytesMut};
use serde::Serialize;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
    sync::watch,
    time::timeout,
};
use tracing::debug;

use crate::{
    audit::{self, Caller, Record},
    binding,
    credentials::{CredentialCheck, UnixTime},
    host::HostAddrs,
    http::{
        self, Body, ChunkedDecoder, Decoded, Method, Request, RequestError, ResponseBody,
        ResponseKind,
    },
    identity::{Identity, Unresolved},
    limits::{self, IdentityLimits},
    metrics::{AuthFailure, UpstreamError},
    policy::{self, Decision, Headers, IdentitySet, Policy, Reason, Verdict},
};

use super::Relay;

/// Initial size of each read buffer; grows only for larger heads.
const BUFFER: usize = 16 * 1024;

/// How long a connection closed by the drain waits for the client to close its side, so a
/// request it sent meanwhile is not answered with an RST.
/// On loopback such a request is microseconds away; the bound is for slow peers.
const LINGER: Duration = Duration::from_millis(500);

/// One redirected connection's fixed facts, and what the policy in force at accept says of
/// its caller.
pub(super) struct Conn {
    pub peer: SocketAddr,
    pub dst: SocketAddr,
    pub identity: Arc<Identity>,
    pub policy: Arc<Policy>,
    pub ids: IdentitySet,
    pub limits: IdentityLimits,
}

/// What one policy says about this connection, worked out once per policy: the identities
/// the caller matches, the limits it is held to and the service its destination belongs to.
struct Classified {
    policy: Arc<Policy>,
    ids: IdentitySet,
    /// The identities' names, shared by every record of the connection.
    names: Arc<[Arc<str>]>,
    limits: IdentityLimits,
    service: Arc<str>,
}

impl Classified {
    fn new(
        policy: Arc<Policy>,
        ids: IdentitySet,
        limits: IdentityLimits,
        dst: SocketAddr,
        host: &HostAddrs,
    ) -> Self {
        Self {
            names: ids.shared_names().into(),
            ids,
            limits,
            service: policy
                .service_for(dst.ip(), dst.port(), host)
                .unwrap_or("unknown")
                .into(),
            policy,
        }
    }
}

impl Headers for [http::Header] {
    fn pairs(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.iter().map(|h| (h.name(), h.value()))
    }
}

/// Serve HTTP/1.1 requests on `client` until it closes, errs, is refused or `drain` says so.
pub(super) async fn serve(
    relay: &Relay,
    conn: Conn,
    mut client: TcpStream,
    mut drain: watch::Receiver<bool>,
) {
    let caller = Arc::new(Caller::from(&*conn.identity));
    let owner: Arc<str> = binding::owner_of(&conn.identity).into();
    let mut cbuf = BytesMut::with_capacity(BUFFER);
    let mut upstream: Option<Upstream> = None;
    // Which policy identities the caller matches, per policy: classified once per policy.
    let mut classified = Classified::new(
        conn.policy,
        conn.ids,
        conn.limits,
        conn.dst,
        &relay.host.current(),
    );
    let dst: Arc<str> = conn.dst.to_string().into();
    let peer: Arc<str> = conn.peer.to_string().into();
    // Reused for every request head sent upstream.
    let mut out_head = BytesMut::with_capacity(1024);
    loop {
        let policy = relay.store.current();
        let limits = policy.settings.limits;
        let http_limits = http::Limits {
            max_request_line: limits.max_request_line,
            max_head_bytes: limits.max_head_bytes,
            max_headers: limits.max_headers,
        };
        let head = read_head(
            &mut client,
            &mut cbuf,
            &http_limits,
            limits.idle_timeout,
            limits.head_timeout,
            &mut drain,
        )
        .await;
        let started = Instant::now();
        if !Arc::ptr_eq(&classified.policy, &policy) {
            let ids = policy.classify(&conn.identity);
            let limits = relay.limiter.identity(&policy, ids.shared_names().first());
            classified =
                Classified::new(policy.clone(), ids, limits, conn.dst, &relay.host.current());
        }
        let Classified {
            ids,
            names,
            service,
            limits: identity_limits,
            ..
        } = &classified;
        let mut record = Record {
            time: audit::now(),
            request_id: request_id(),
            decision: audit::Verdict::Reject,
            rule: None,
            mode: policy.settings.mode.as_str(),
            reason: "",
            detail: None,
            caller: caller.clone(),
            identities: names.clone(),
            service: service.clone(),
            client: peer.clone(),
            destination: dst.clone(),
            method: None,
            path: None,
            status: None,
            request_bytes: 0,
            response_bytes: 0,
            added_latency_us: 0,
            credential: None,
            injected: None,
            retried: false,
            auth_failure: None,
            upstream_error: None,
        };
        let mut req = match head {
            Ok(Some(req)) => req,
            Ok(None) => return,
            Err(HeadFailure::Io) => return,
            Err(HeadFailure::Drained) => return close_gracefully(client).await,
            Err(HeadFailure::Timeout) => {
                record.reason = "request head timeout";
                refuse(
                    &mut client,
                    408,
                    "request timeout",
                    None,
                    &mut record,
                    started,
                    true,
                )
                .await;
                return relay.finish(record);
            }
            Err(HeadFailure::Invalid(e)) => {
                record.detail = Some(e.to_string());
                if let RequestError::NotHttp { .. } = e {
                    // A TLS or HTTP/2 client cannot read an HTTP/1.1 error: just close.
                    record.reason = "not http/1.x";
                    record.added_latency_us = micros(started);
                } else {
                    record.reason = "malformed request";
                    refuse(
                        &mut client,
                        400,
                        "bad request",
                        None,
                        &mut record,
                        started,
                        true,
                    )
                    .await;
                }
                return relay.finish(record);
            }
        };
        record.method = Some(req.method().as_str().to_owned());
        record.path = Some(req.path().to_owned());

        // Before the decision: a storm of requests costs no credential checks either.
        if let Err(wait) = identity_limits.take(limits::now_ns()) {
            let who = names.first().map_or("unidentified", |n| &**n);
            record.reason = "rate limited";
            record.detail = Some(format!(
                "identity `{who}` over its rate {} (ratePerIdentity)",
                identity_limits
                    .rate()
                    .map(|r| r.to_string())
                    .unwrap_or_default()
            ));
            let Some(kept) = rate_limited(relay, client, &req, record, wait, started, &drain).await
            else {
                return;
            };
            client = kept;
            continue;
        }

        let mut check = CredentialCheck::new(UnixTime::now(), &relay.fingerprints);
        let decision = policy.decide_with(
            ids,
            &record.service,
            req.method().as_str(),
            req.path(),
            req.headers(),
            req.query(),
            &mut check,
        );
        describe(&decision, &mut record);
        let mut refusal = None;
        if let Some(grant) = check.grant() {
            record.credential = Some(audit::CredentialUse {
                name: grant.credential.clone(),
                subject: grant.subject.clone(),
                fingerprint: grant.fingerprint.to_string(),
            });
            if let Some(key) = &grant.bind_on_first_use
                && decision.verdict.forwards()
            {
                let bindings = relay.bindings.clone();
                let outcome = if bindings.is_bound(&grant.credential, key) {
                    bindings.check(&grant.credential, key, &owner)
                } else {
                    // A first use writes and syncs a line: off the runtime's workers.
                    let (credential, key, owner) =
                        (grant.credential.clone(), key.clone(), owner.clone());
                    tokio::task::spawn_blocking(move || bindings.check(&credential, &key, &owner))
                        .await
                        .unwrap_or(binding::Outcome::Unwritable)
                };
                let refused = match outcome {
                    binding::Outcome::Owner | binding::Outcome::Bound => None,
                    binding::Outcome::Other => Some((403, "bound on first use to another caller")),
                    binding::Outcome::Full => Some((403, "binding store full: first use refused")),
                    binding::Outcome::Unwritable => {
                        Some((503, "binding store unwritable: first use refused"))
                    }
                };
                if let Some((status, detail)) = refused {
                    record.decision = audit::Verdict::Deny;
                    if outcome == binding::Outcome::Other {
                        record.auth_failure = Some(AuthFailure::Binding);
                    }
                    record.reason = if status == 403 {
                        "credential not bound to caller"
                    } else {
                        "binding store unavailable"
                    };
                    record.detail = Some(detail.into());
                    refusal = Some((status, None));
                }
            }
        }
        // A rule's `hosts` names the virtual host; the request must also be for this
        // destination, or a name allowed on one address would be sent to another.
        if refusal.is_none()
            && decision.verdict == Verdict::Allow
            && decision.rule.is_some_and(|r| !r.hosts().is_empty())
            && !req.authority_agrees(conn.dst)
        {
            record.decision = audit::Verdict::Deny;
            record.reason = "host does not match destination";
            record.detail = Some(format!(
                "host `{}` is not destination {}",
                req.host().unwrap_or_default(),
                conn.dst
            ));
            refusal = Some((403, None));
        }
        if decision.verdict == Verdict::Deny {
            refusal = Some(match (decision.reason, check.failure()) {
                (Reason::Credential(_), Some(failure)) => {
                    // The failure's text names the credential and what was wrong, never the
                    // token or key.
                    record.detail = Some(failure.error.to_string());
                    record.auth_failure = Some(AuthFailure::of(&failure.error));
                    (failure.status(), failure.www_authenticate())
                }
                _ => (403, None),
            });
        }
        // A caller that exec'd after its connect is not the process the kernel attested: none
        // of its attributes are believed, and nothing it sends is forwarded, even in audit mode.
        if conn.identity.unresolved == Some(Unresolved::ExecAfterConnect) {
            record.decision = audit::Verdict::Deny;
            record.reason = EXEC_AFTER_CONNECT;
            refusal = Some((403, None));
        }
        // Secretless injection: the allowing rule's credential replaces whatever the client
        // sent. Only for Allow: a request forwarded as a dry-run "would deny" gets nothing.
        if refusal.is_none()
            && decision.verdict == Verdict::Allow
            && let Some(injection) = decision.rule.and_then(|r| r.injection())
        {
            match injection.value() {
                Some(value) => {
                    req.replace_header(injection.header(), value.expose());
                    record.injected = Some(injection.header().into());
                }
                // No OAuth2 token yet: forwarding would send the client's header, or none.
                None => {
                    record.decision = audit::Verdict::Deny;
                    record.reason = "injected credential unavailable";
                    refusal = Some((503, None));
                }
            }
        }
        if let Some((status, challenge)) = refusal {
            let error = match status {
                401 => "unauthorized",
                503 => "unavailable",
                _ => "forbidden",
            };
            let draining = *drain.borrow();
            refuse(
                &mut client,
                status,
                error,
                challenge.as_deref(),
                &mut record,
                started,
                draining,
            )
            .await;
            relay.finish(record);
            // A body we did not read would be taken for the next request: only a request
            // without one leaves the connection usable.
            if req.body() != Body::None || !req.keep_alive() {
                return;
            }
            if draining {
                return close_gracefully(client).await;
            }
            continue;
        }
        // The allowing rule's limits: its rate, then a body size known from the head.
        let rule_limits = match decision.rule {
            Some(rule) if decision.verdict == Verdict::Allow => *rule.limits(),
            _ => limits::RuleLimits::default(),
        };
        if let Some(rule) = decision.rule
            && decision.verdict == Verdict::Allow
            && let Err(wait) = relay.limiter.take_rule(&policy, rule, limits::now_ns())
        {
            record.decision = audit::Verdict::Reject;
            record.reason = "rate limited";
            record.detail = Some(format!(
                "rule `{}` over its rate {}",
                rule.id(),
                rule_limits.rate.map(|r| r.to_string()).unwrap_or_default()
            ));
            let Some(kept) = rate_limited(relay, client, &req, record, wait, started, &drain).await
            else {
                return;
            };
            client = kept;
            continue;
        }
        if let (Some(max), Body::Length(len)) = (rule_limits.max_body_bytes, req.body())
            && len > max
        {
            record.decision = audit::Verdict::Reject;
            record.reason = "body too large";
            record.detail = Some(format!(
                "content-length {len} over the rule's maxBodyBytes {max}"
            ));
            refuse(
                &mut client,
                413,
                "content too large",
                None,
                &mut record,
                started,
                true,
            )
            .await;
            relay.finish(record);
            return close_unread(client).await;
        }

        // An idle upstream connection may have been closed by the upstream since the last
        // response: find out before sending, not by a failed exchange.
        if upstream.as_ref().is_some_and(|up| !up.is_open()) {
            upstream = None;
        }
        // The only protocol a 101 may switch to: the one this request asked for, when the
        // rule that allowed it allows upgrading to it. Any other 101 would turn the connection
        // into a tunnel no decision covers.
        let upgrade = req.upgrade().filter(|asked| {
            decision.verdict == Verdict::Allow
                && decision.rule.is_some_and(|rule| rule.allows_upgrade(asked))
        });
        // The upstream may still close a reused connection after that check (its FIN or RST
        // already on the way), and the request then fails before any byte of a response. As
        // hyper's client and HAProxy do, such a request is sent once more on a new
        // connection, under the same decision and in the same record, when that is safe:
        // its method is idempotent (RFC 9110 §9.2.2) and it has no body, so a second copy
        // has the effect of one and nothing of it was taken from the client. Any other
        // request gets 502: the upstream may have acted on it.
        let reused = upstream.is_some();
        let not_resendable = not_resendable(&req);
        let outcome = loop {
            let may_resend = reused && !record.retried && not_resendable.is_none();
            let up = match &mut upstream {
                Some(up) => up,
                None => match connect(relay.connect_timeout(&policy), conn.dst).await {
                    Ok(up) => upstream.insert(up),
                    Err(e) => {
                        record.upstream_error = Some(UpstreamError::of_connect(&e));
                        relay.stats.upstream_failed.fetch_add(1, Relaxed);
                        let (status, error) = if e.kind() == std::io::ErrorKind::TimedOut {
                            record.reason = "upstream connect timeout";
                            (504, "gateway timeout")
                        } else {
                            record.reason = "upstream unreachable";
                            (502, "bad gateway")
                        };
                        record.detail = Some(e.to_string());
                        refuse(&mut client, status, error, None, &mut record, started, true).await;
                        return relay.finish(record);
                    }
                },
            };
            let outcome = exchange(
                &mut client,
                &mut cbuf,
                up,
                &req,
                &mut out_head,
                &http_limits,
                &limits,
                rule_limits.max_body_bytes,
                upgrade,
                may_resend,
                started,
                &drain,
            )
            .await;
            if may_resend && outcome.unanswered {
                debug!(
                    client = %conn.peer,
                    failure = outcome.failure.as_deref().unwrap_or_default(),
                    "reused upstream connection failed before any response: sending again"
                );
                upstream = None;
                record.retried = true;
                continue;
            }
            break outcome;
        };
        record.status = outcome.status;
        record.request_bytes = outcome.request_bytes;
        record.response_bytes = outcome.response_bytes;
        record.added_latency_us = outcome.added_latency_us;
        record.upstream_error = outcome.upstream_error;
        if let Some(why) = outcome.failure {
            record.detail = Some(match &not_resendable {
                Some(not) if reused && outcome.unanswered => {
                    format!("{why}; not sent again on a new connection: {not}")
                }
                _ => why,
            });
        }
        if let Next::UnexpectedUpgrade = outcome.next {
            record.decision = audit::Verdict::Reject;
            record.reason = "unexpected upgrade";
        }
        if let Next::BadRequestBody | Next::BodyTooLarge = outcome.next {
            // An abort, not an end: the upstream must not take the part it got for a request.
            if let Some(up) = upstream.take() {
                super::reset(up.stream);
            }
            record.decision = audit::Verdict::Reject;
            if let Next::BodyTooLarge = outcome.next {
                record.reason = "body too large";
                refuse(
                    &mut client,
                    413,
                    "content too large",
                    None,
                    &mut record,
                    started,
                    true,
                )
                .await;
                relay.finish(record);
                return close_unread(client).await;
            }
            record.reason = "malformed request body";
            refuse(
                &mut client,
                400,
                "bad request",
                None,
                &mut record,
                started,
                true,
            )
            .await;
            return relay.finish(record);
        }
        relay.finish(record);
        match outcome.next {
            Next::Continue | Next::ReconnectUpstream if *drain.borrow() => {
                return close_gracefully(client).await;
            }
            Next::Continue => {}
            Next::ReconnectUpstream => upstream = None,
            Next::Close | Next::BadRequestBody | Next::BodyTooLarge | Next::UnexpectedUpgrade => {
                return;
            }
            Next::Tunnel => {
                let Some(mut up) = upstream.take() else {
                    return;
                };
                tunnel(&mut client, &mut cbuf, &mut up).await;
                return;
            }
        }
    }
}

/// Audit `reason` of a request refused because its caller exec'd after connecting.
pub const EXEC_AFTER_CONNECT: &str = "exec after connect";

fn describe(decision: &Decision<'_>, record: &mut Record) {
    record.decision = match decision.verdict {
        Verdict::Allow => audit::Verdict::Allow,
        Verdict::Deny => audit::Verdict::Deny,
        Verdict::AuditDeny => audit::Verdict::WouldDeny,
    };
    record.rule = decision.rule.map(|r| r.shared_id().clone());
    record.mode = decision.mode.as_str();
    record.reason = decision.reason.as_str();
}

/// Why `req` must not be sent to the upstream a second time, if it must not (see the resend
/// in [`serve`]).
fn not_resendable(req: &Request) -> Option<String> {
    if !req.method().is_idempotent() {
        Some(format!("{} is not idempotent", req.method().as_str()))
    } else if req.body() != Body::None {
        Some("its body was sent".to_owned())
    } else {
        None
    }
}

/// Unique per request: a per-process random prefix and a counter.
pub(super) fn request_id() -> String {
    static PREFIX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        let mut bytes = [0u8; 4];
        // SAFETY: writes at most 4 bytes into `bytes`.
        let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
        if n == 4 {
            u32::from_ne_bytes(bytes)
        } else {
            std::process::id()
        }
    });
    format!("{prefix:08x}{:08x}", COUNTER.fetch_add(1, Relaxed))
}

fn micros(since: Instant) -> u64 {
    since.elapsed().as_micros() as u64
}

// === reading a request head ===

enum HeadFailure {
    /// The connection failed or closed mid-head.
    Io,
    /// The agent drains and no request has started on this connection.
    Drained,
    Timeout,
    Invalid(RequestError),
}

/// Read the next request head. `Ok(None)`: the client closed cleanly between requests.
/// Waiting for its first byte is bounded by `idle`, and ends when `drain` is set; once it has
/// started, the whole head must arrive within `head` (slowloris).
async fn read_head(
    client: &mut TcpStream,
    buf: &mut BytesMut,
    limits: &http::Limits,
    idle: Duration,
    head: Duration,
    drain: &mut watch::Receiver<bool>,
) -> Result<Option<Request>, HeadFailure> {
    let mut deadline = None::<tokio::time::Instant>;
    let mut parser = http::RequestParser::default();
    loop {
        if !buf.is_empty() {
            match parser.parse(buf, limits) {
                Ok(Some((req, len))) => {
                    buf.advance(len);
                    return Ok(Some(req));
                }
                Ok(None) => {}
                Err(e) => return Err(HeadFailure::Invalid(e)),
            }
        }
        let started = !buf.is_empty();
        let limit = match (started, deadline) {
            (false, _) => tokio::time::Instant::now() + idle,
            (true, Some(d)) => d,
            (true, None) => *deadline.insert(tokio::time::Instant::now() + head),
        };
        let read = tokio::time::timeout_at(limit, client.read_buf(buf));
        let read = if started {
            read.await
        } else {
            // Bytes already waiting are a request that arrived before the drain: read first.
            // (`read_buf` is cancel-safe: dropped unfinished, it has read nothing.)
            tokio::select! {
                biased;
                r = read => r,
                _ = drain.wait_for(|draining| *draining) => return Err(HeadFailure::Drained),
            }
        };
        match read {
            Ok(Ok(0)) if !started => return Ok(None),
            Ok(Ok(0)) | Ok(Err(_)) => return Err(HeadFailure::Io),
            Ok(Ok(_)) => {}
            // An idle keep-alive connection simply ends; a half-sent head is answered.
            Err(_) if !started => return Ok(None),
            Err(_) => return Err(HeadFailure::Timeout),
        }
    }
}

// === answering from the agent ===

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<&'a str>,
    request_id: &'a str,
}

/// Answer the client ourselves with a small JSON body: 401, 403, 429 and 503 leave the
/// connection usable unless `closing`; 400, 408, 413, 502 and 504 end it. Either way, the head
/// says so.
async fn refuse(
    client: &mut TcpStream,
    status: u16,
    error: &str,
    challenge: Option<&str>,
    record: &mut Record,
    started: Instant,
    closing: bool,
) {
    let challenge = challenge
        .map(|c| format!("www-authenticate: {c}\r\n"))
        .unwrap_or_default();
    answer(client, status, error, &challenge, record, started, closing).await;
}

/// Answer 429 and report it. The connection comes back if it can serve the next request:
/// not when the body was left unread, the client asked to close, or the agent drains.
async fn rate_limited(
    relay: &Relay,
    mut client: TcpStream,
    req: &Request,
    mut record: Record,
    wait: Duration,
    started: Instant,
    drain: &watch::Receiver<bool>,
) -> Option<TcpStream> {
    let draining = *drain.borrow();
    too_many_requests(&mut client, wait, &mut record, started, draining).await;
    relay.finish(record);
    if req.body() != Body::None {
        close_unread(client).await;
    } else if draining {
        close_gracefully(client).await;
    } else if req.keep_alive() {
        return Some(client);
    }
    None
}

/// 429, with when to try again.
async fn too_many_requests(
    client: &mut TcpStream,
    wait: Duration,
    record: &mut Record,
    started: Instant,
    closing: bool,
) {
    let retry = format!("retry-after: {}\r\n", limits::retry_after_secs(wait));
    answer(
        client,
        429,
        "too many requests",
        &retry,
        record,
        started,
        closing,
    )
    .await;
}

/// [`refuse`] with `headers` (complete lines) added to the head.
async fn answer(
    client: &mut TcpStream,
    status: u16,
    error: &str,
    headers: &str,
    record: &mut Record,
    started: Instant,
    closing: bool,
) {
    let body = serde_json::to_vec(&ErrorBody {
        error,
        reason: record.reason,
        rule: record.rule.as_deref(),
        request_id: &record.request_id,
    })
    .unwrap_or_default();
    let text = match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        408 => "Request Timeout",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Bad Gateway",
    };
    let connection = if matches!(status, 401 | 403 | 429 | 503) && !closing {
        ""
    } else {
        "connection: close\r\n"
    };
    let head = format!(
        "HTTP/1.1 {status} {text}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{headers}{connection}\r\n",
        body.len()
    );
    let mut out = Vec::with_capacity(head.len() + body.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(&body);
    let _ = client.write_all(&out).await;
    record.status = Some(status);
    record.response_bytes = out.len() as u64;
    record.added_latency_us = micros(started);
}

/// Close a connection whose request body is left unread, after answering it. Closing with
/// unread bytes would send an RST that can destroy the answer before the client reads it, so
/// the answer is followed by a FIN and what arrives is read and dropped, for a bounded time
/// and amount (as nginx's lingering close).
async fn close_unread(mut client: TcpStream) {
    const LINGER: Duration = Duration::from_secs(2);
    const MAX_DRAINED: usize = 1024 * 1024;
    let _ = client.shutdown().await;
    let deadline = tokio::time::Instant::now() + LINGER;
    let mut buf = [0u8; 8192];
    let mut drained = 0;
    while drained < MAX_DRAINED {
        match tokio::time::timeout_at(deadline, client.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => return,
        }
    }
}

// === forwarding ===

/// The upstream connection of a client connection, opened at its first allowed request and
/// reused while both sides keep it alive.
struct Upstream {
    stream: TcpStream,
    buf: BytesMut,
}

impl Upstream {
    /// Whether the upstream still keeps the connection open: no EOF, error or unrequested
    /// bytes are waiting on it.
    fn is_open(&self) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            self.stream.try_read(&mut byte),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
        )
    }
}

async fn connect(limit: Duration, dst: SocketAddr) -> std::io::Result<Upstream> {
    let stream = match timeout(limit, TcpStream::connect(dst)).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {limit:?} (connectTimeout)"),
            ));
        }
    };
    let _ = stream.set_nodelay(true);
    Ok(Upstream {
        stream,
        buf: BytesMut::with_capacity(BUFFER),
    })
}

/// What became of the connection after an exchange.
enum Next {
    Continue,
    /// The client connection goes on; the upstream one cannot be reused.
    ReconnectUpstream,
    Close,
    /// 101 Switching Protocols to the protocol the request was allowed to upgrade to: relay
    /// bytes both ways from now on.
    Tunnel,
    /// A 101 the request was not allowed to ask for: the client got 502, both connections
    /// end.
    UnexpectedUpgrade,
    /// The request body broke its framing: answer 400, abort the upstream connection.
    BadRequestBody,
    /// The chunked request body grew past the rule's limit: answer 413, abort the upstream
    /// connection.
    BodyTooLarge,
}

struct Outcome {
    status: Option<u16>,
    request_bytes: u64,
    response_bytes: u64,
    added_latency_us: u64,
    failure: Option<String>,
    /// How the upstream failed, if it did (not the client).
    upstream_error: Option<UpstreamError>,
    /// The upstream connection failed before any byte of a response. The client got 502,
    /// unless the exchange was told it may be tried again.
    unanswered: bool,
    next: Next,
}

/// Forward one allowed request and relay its response. `head` is scratch space. With
/// `may_resend`, a failure before any byte of a response is not answered: the caller sends
/// the request again.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site; the buffers are the connection's"
)]
async fn exchange(
    client: &mut TcpStream,
    cbuf: &mut BytesMut,
    up: &mut Upstream,
    req: &Request,
    head: &mut BytesMut,
    http_limits: &http::Limits,
    limits: &policy::Limits,
    max_body: Option<u64>,
    upgrade: Option<&str>,
    may_resend: bool,
    started: Instant,
    drain: &watch::Receiver<bool>,
) -> Outcome {
    let mut outcome = Outcome {
        status: None,
        request_bytes: 0,
        response_bytes: 0,
        added_latency_us: 0,
        failure: None,
        upstream_error: None,
        unanswered: false,
        next: Next::Close,
    };
    head.clear();
    http::write_request_head(req, head);
    if let Err(e) = up.stream.write_all(head).await {
        outcome.failure = Some(format!("upstream write: {e}"));
        outcome.upstream_error = Some(UpstreamError::Reset);
        outcome.unanswered = true;
        if !may_resend {
            let _ = write_bad_gateway(client).await;
            outcome.status = Some(502);
        }
        return outcome;
    }
    outcome.added_latency_us = micros(started);

    let (mut cr, mut cw) = client.split();
    let (mut ur, mut uw) = up.stream.split();
    let idle = limits.idle_timeout;
    // Whether the client is getting a response head: then the response timeout is over.
    let responding = AtomicBool::new(false);
    // The body goes up while the response comes down: the upstream may answer interim
    // responses (100 Continue) before it reads the body, or a final one without reading it.
    let (sent, answered) = {
        let body = forward_body(
            &mut cr,
            cbuf,
            &mut uw,
            req.body(),
            max_body,
            http_limits,
            idle,
        );
        let response = relay_response(
            &mut ur,
            &mut up.buf,
            &mut cw,
            req.method(),
            http_limits,
            idle,
            RelayState {
                responding: &responding,
                drain,
                upgrade,
            },
        );
        // The response timeout runs from the end of the request: a slow upload is bounded
        // by the idle timeout instead.
        let response_timeout = tokio::time::sleep(Duration::MAX);
        tokio::pin!(body, response, response_timeout);
        let mut sent = None;
        loop {
            // Body first: a request without one is sent at once, even when the response is
            // already waiting; polled second, such a response would find the body unsent and
            // the connection would close without the client being told.
            tokio::select! {
                biased;
                r = &mut body, if sent.is_none() => match r {
                    Ok(n) => {
                        sent = Some(n);
                        let deadline = tokio::time::Instant::now() + limits.response_timeout;
                        response_timeout.as_mut().reset(deadline);
                    }
                    Err(BodyError::TooLarge { max }) => {
                        outcome.failure = Some(format!(
                            "chunked request body over the rule's maxBodyBytes {max}"
                        ));
                        outcome.next = Next::BodyTooLarge;
                        return outcome;
                    }
                    Err(BodyError::Broken(e)) => {
                        // The client broke its own framing mid-body: the upstream must not
                        // act on a truncated request, so both connections end.
                        outcome.failure = Some(format!("request body: {e}"));
                        outcome.next = Next::BadRequestBody;
                        return outcome;
                    }
                },
                r = &mut response => break (sent, Some(r)),
                () = &mut response_timeout, if !responding.load(Relaxed) => break (sent, None),
            }
        }
    };
    outcome.request_bytes = sent.unwrap_or(0);
    let Some(answered) = answered else {
        outcome.failure = Some(format!(
            "no response within {:?} (responseTimeout)",
            limits.response_timeout
        ));
        let _ = cw.write_all(GATEWAY_TIMEOUT).await;
        outcome.status = Some(504);
        return outcome;
    };
    match answered {
        Ok(resp) => {
            outcome.status = Some(resp.status);
            outcome.response_bytes = resp.bytes;
            outcome.next = if resp.upgraded {
                Next::Tunnel
            } else if sent.is_none() || !req.keep_alive() || resp.until_close || resp.closing {
                // Answered before the body was all read (the rest of it is unread), the
                // body's end is the end of the connection, or the client was told it is.
                Next::Close
            } else if resp.upstream_reusable {
                Next::Continue
            } else {
                Next::ReconnectUpstream
            };
        }
        Err(e) => {
            // Closed or reset with nothing received: the upstream never answered.
            outcome.unanswered = !e.head_relayed
                && up.buf.is_empty()
                && matches!(e.upstream, Some(UpstreamError::Reset));
            if !e.head_relayed && !(may_resend && outcome.unanswered) {
                let _ = cw.write_all(BAD_GATEWAY).await;
                outcome.status = Some(502);
            }
            outcome.failure = Some(format!("response: {}", e.reason));
            outcome.upstream_error = e.upstream;
            if e.unexpected_upgrade {
                outcome.next = Next::UnexpectedUpgrade;
            }
        }
    }
    outcome
}

const BAD_GATEWAY: &[u8] =
    b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

const GATEWAY_TIMEOUT: &[u8] =
    b"HTTP/1.1 504 Gateway Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

async fn write_bad_gateway(client: &mut TcpStream) -> std::io::Result<()> {
    client.write_all(BAD_GATEWAY).await
}

/// Where relaying a message from one side to the other failed.
#[derive(Debug)]
enum Broken {
    /// The sending side closed mid-message.
    Closed,
    /// Reading from the sending side failed.
    Read(std::io::Error),
    /// The sending side went quiet for the idle timeout.
    Idle,
    /// Writing to the receiving side failed.
    Write(std::io::Error),
    /// The message broke its framing (chunked encoding).
    Framing(String),
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Broken::Closed => f.write_str("connection closed mid-message"),
            Broken::Read(e) | Broken::Write(e) => e.fmt(f),
            Broken::Idle => f.write_str("idle timeout"),
            Broken::Framing(why) => f.write_str(why),
        }
    }
}

impl Broken {
    /// The upstream's failure, when it was the sending side of a response.
    fn of_upstream(&self) -> Option<UpstreamError> {
        match self {
            Broken::Closed | Broken::Read(_) => Some(UpstreamError::Reset),
            Broken::Idle => Some(UpstreamError::Timeout),
            Broken::Framing(_) => Some(UpstreamError::Protocol),
            Broken::Write(_) => None,
        }
    }
}

/// Read into `buf`, bounded by `idle`; error at EOF.
async fn fill<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    idle: Duration,
) -> Result<(), Broken> {
    match timeout(idle, r.read_buf(buf)).await {
        Ok(Ok(0)) => Err(Broken::Closed),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(Broken::Read(e)),
        Err(_) => Err(Broken::Idle),
    }
}

/// Why a request body was not forwarded in full.
enum BodyError {
    /// Broken framing, or either connection failed.
    Broken(Broken),
    /// A chunked body grew past `max` bytes (a body with a length was checked before).
    TooLarge { max: u64 },
}

impl From<Broken> for BodyError {
    fn from(e: Broken) -> Self {
        Self::Broken(e)
    }
}

/// Forward the request body per its framing; a chunked body is re-encoded canonically, and
/// cut off past `max` bytes: what was forwarded then lacks its last chunk, so the upstream
/// cannot take it for a complete request. Returns the body bytes received.
async fn forward_body<R, W>(
    client: &mut R,
    buf: &mut BytesMut,
    upstream: &mut W,
    body: Body,
    max: Option<u64>,
    limits: &http::Limits,
    idle: Duration,
) -> Result<u64, BodyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    match body {
        Body::None => Ok(0),
        Body::Length(len) => Ok(copy_exact(client, buf, upstream, len, idle)
            .await
            .map(|()| len)?),
        Body::Chunked => {
            let mut decoder = ChunkedDecoder::new(limits);
            let mut out = BytesMut::with_capacity(BUFFER + 16);
            let mut total = 0u64;
            loop {
                if buf.is_empty() {
                    fill(client, buf, idle).await?;
                }
                match decoder
                    .decode(buf)
                    .map_err(|e| Broken::Framing(e.to_string()))?
                {
                    Decoded::Data(range) => {
                        total += range.len() as u64;
                        if let Some(max) = max
                            && total > max
                        {
                            return Err(BodyError::TooLarge { max });
                        }
                        http::write_chunk(&buf[range.clone()], &mut out);
                        buf.advance(range.end);
                    }
                    Decoded::NeedMore => buf.clear(),
                    Decoded::End { consumed } => {
                        buf.advance(consumed);
                        http::write_last_chunk(&mut out);
                        upstream.write_all(&out).await.map_err(Broken::Write)?;
                        return Ok(total);
                    }
                }
                if out.len() >= BUFFER {
                    upstream.write_all(&out).await.map_err(Broken::Write)?;
                    out.clear();
                }
            }
        }
    }
}

/// Copy exactly `len` bytes from `buf` then `from` to `to`.
async fn copy_exact<R, W>(
    from: &mut R,
    buf: &mut BytesMut,
    to: &mut W,
    mut len: u64,
    idle: Duration,
) -> Result<(), Broken>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    while len > 0 {
        if buf.is_empty() {
            fill(from, buf, idle).await?;
        }
        let n = buf.len().min(len as usize);
        to.write_all(&buf[..n]).await.map_err(Broken::Write)?;
        buf.advance(n);
        len -= n as u64;
    }
    Ok(())
}

struct Relayed {
    status: u16,
    bytes: u64,
    upgraded: bool,
    /// The body ran until the upstream closed: the client sees its end only when its own
    /// connection closes too.
    until_close: bool,
    /// The head told the client the connection closes after this response (the drain).
    closing: bool,
    upstream_reusable: bool,
}

struct RelayError {
    reason: String,
    /// Whether the client already got (part of) a response head.
    head_relayed: bool,
    /// `None` when the client failed.
    upstream: Option<UpstreamError>,
    /// The upstream switched protocols unasked (see [`RelayState::upgrade`]).
    unexpected_upgrade: bool,
}

/// What the response relay tells, and is told, while it runs.
struct RelayState<'a> {
    /// Set while a head is being relayed, and for good from the final one on: the agent can
    /// no longer answer 504 itself.
    responding: &'a AtomicBool,
    /// `true` once the agent drains.
    drain: &'a watch::Receiver<bool>,
    /// The protocol a 101 may switch to (lower case), if the request was allowed to upgrade.
    upgrade: Option<&'a str>,
}

/// Relay interim responses and the final one (head as received, body per its framing). The
/// final head leaves with the part of the body already read, in one write; while the agent
/// drains, it gains `connection: close`.
async fn relay_response<R, W>(
    upstream: &mut R,
    buf: &mut BytesMut,
    client: &mut W,
    method: &Method,
    limits: &http::Limits,
    idle: Duration,
    state: RelayState<'_>,
) -> Result<Relayed, RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut bytes = 0u64;
    let mut relayed_any = false;
    let broken = |e: Broken, head_relayed: bool| RelayError {
        reason: e.to_string(),
        head_relayed,
        upstream: e.of_upstream(),
        unexpected_upgrade: false,
    };
    loop {
        let mut parser = http::ResponseParser::default();
        let (resp, mut len) = loop {
            match parser.parse(buf, limits) {
                Ok(Some(parsed)) => break parsed,
                Ok(None) => fill(upstream, buf, idle)
                    .await
                    .map_err(|e| broken(e, relayed_any))?,
                Err(e) => return Err(broken(Broken::Framing(e.to_string()), relayed_any)),
            }
        };
        let kind = resp.kind();
        if kind == ResponseKind::SwitchingProtocols
            && let Err(why) = switch_allowed(&resp, state.upgrade)
        {
            // Checked before a byte of it goes out: the client may still get the 502. Only
            // interim responses can have gone before, and a final response may follow them.
            return Err(RelayError {
                reason: why,
                head_relayed: false,
                upstream: Some(UpstreamError::Protocol),
                unexpected_upgrade: true,
            });
        }
        // A head half-written cannot be followed by the agent's own 504.
        state.responding.store(true, Relaxed);
        if kind != ResponseKind::Final {
            write_out(client, buf, len)
                .await
                .map_err(|e| broken(e, true))?;
            bytes += len as u64;
            relayed_any = true;
            if kind == ResponseKind::Interim {
                state.responding.store(false, Relaxed);
                continue;
            }
            return Ok(Relayed {
                status: resp.status(),
                bytes,
                upgraded: true,
                until_close: false,
                closing: false,
                upstream_reusable: false,
            });
        }
        let closing = *state.drain.borrow();
        if closing {
            // Before the blank line that ends the head. Rare (shutdown only): the copy is fine.
            let rest = buf.split_off(len - 2);
            buf.extend_from_slice(b"connection: close\r\n");
            buf.unsplit(rest);
            len += b"connection: close\r\n".len();
        }
        bytes += len as u64;
        // The head is written with the body's first bytes, or alone before any further read,
        // so an upstream failing from here on always finds the head relayed.
        let framing = http::response_body(method, &resp);
        let body = match framing {
            ResponseBody::None => write_out(client, buf, len).await.map(|()| 0),
            ResponseBody::Length(n) => {
                let first = n.min((buf.len() - len) as u64);
                match write_out(client, buf, len + first as usize).await {
                    Ok(()) => copy_exact(upstream, buf, client, n - first, idle)
                        .await
                        .map(|()| n),
                    Err(e) => Err(e),
                }
            }
            ResponseBody::Chunked => relay_chunked(upstream, buf, len, client, limits, idle).await,
            ResponseBody::UntilClose => relay_until_close(upstream, buf, len, client).await,
        };
        let body = body.map_err(|e| broken(e, true))?;
        let until_close = framing == ResponseBody::UntilClose;
        return Ok(Relayed {
            status: resp.status(),
            bytes: bytes + body,
            upgraded: false,
            until_close,
            closing,
            upstream_reusable: resp.keep_alive() && !until_close,
        });
    }
}

/// Whether a 101 switches to `allowed`, the protocol the request asked for and its rule
/// allows: its `Upgrade` names exactly that protocol (RFC 9110 §7.8: the one the server
/// switches to, from those the client listed). `Err`: why the switch is refused.
fn switch_allowed(resp: &http::Response, allowed: Option<&str>) -> Result<(), String> {
    let Some(allowed) = allowed else {
        return Err("101 Switching Protocols to a request no rule allowed to upgrade".into());
    };
    let mut upgrades = resp
        .headers()
        .iter()
        .filter(|h| h.name().eq_ignore_ascii_case("upgrade"));
    match (upgrades.next(), upgrades.next()) {
        (Some(h), None) if h.value().eq_ignore_ascii_case(allowed.as_bytes()) => Ok(()),
        (Some(h), None) => Err(format!(
            "101 Switching Protocols to `{}`, not the `{allowed}` asked for",
            h.value()[..h.value().len().min(64)].escape_ascii()
        )),
        _ => Err("101 Switching Protocols without exactly one upgrade field".into()),
    }
}

/// Write the first `len` bytes of `buf` to `client` and drop them from `buf`.
async fn write_out<W: AsyncWrite + Unpin>(
    client: &mut W,
    buf: &mut BytesMut,
    len: usize,
) -> Result<(), Broken> {
    client.write_all(&buf[..len]).await.map_err(Broken::Write)?;
    buf.advance(len);
    Ok(())
}

/// Relay a chunked response body as received, finding its end with a decoder. The first
/// `head` bytes of `buf` (the response head) go out with the first part of the body. Returns
/// the body's bytes.
async fn relay_chunked<R, W>(
    upstream: &mut R,
    buf: &mut BytesMut,
    mut head: usize,
    client: &mut W,
    limits: &http::Limits,
    idle: Duration,
) -> Result<u64, Broken>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut decoder = ChunkedDecoder::new(limits);
    let mut total = 0u64;
    loop {
        if buf.len() == head {
            write_out(client, buf, head).await?;
            head = 0;
            fill(upstream, buf, idle).await?;
        }
        let (consumed, end) = match decoder
            .decode(&buf[head..])
            .map_err(|e| Broken::Framing(e.to_string()))?
        {
            Decoded::Data(range) => (range.end, false),
            Decoded::NeedMore => (buf.len() - head, false),
            Decoded::End { consumed } => (consumed, true),
        };
        write_out(client, buf, head + consumed).await?;
        head = 0;
        total += consumed as u64;
        if end {
            return Ok(total);
        }
    }
}

/// Relay a body that ends when the upstream closes, after the first `head` bytes of `buf`
/// (the response head). Returns the body's bytes.
async fn relay_until_close<R, W>(
    upstream: &mut R,
    buf: &mut BytesMut,
    head: usize,
    client: &mut W,
) -> Result<u64, Broken>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut total = (buf.len() - head) as u64;
    client.write_all(buf).await.map_err(Broken::Write)?;
    buf.clear();
    loop {
        let n = upstream.read_buf(buf).await.map_err(Broken::Read)?;
        if n == 0 {
            return Ok(total);
        }
        client.write_all(buf).await.map_err(Broken::Write)?;
        total += n as u64;
        buf.clear();
    }
}

/// End a connection the drain closes: FIN first, then read and discard until the client closes
/// too (bounded by [`LINGER`]), so a request it sent meanwhile meets an orderly close, not an
/// RST, and the client retries it elsewhere.
async fn close_gracefully(mut client: TcpStream) {
    if client.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    let _ = timeout(LINGER, async {
        while let Ok(1..) = client.read(&mut sink).await {}
    })
    .await;
}

/// After 101 Switching Protocols: pass what is buffered on, then relay raw bytes both ways.
async fn tunnel(client: &mut TcpStream, cbuf: &mut BytesMut, up: &mut Upstream) {
    if !cbuf.is_empty() && up.stream.write_all(cbuf).await.is_err() {
        return;
    }
    if !up.buf.is_empty() && client.write_all(&up.buf).await.is_err() {
        return;
    }
    if let Err(e) = tokio::io::copy_bidirectional(client, &mut up.stream).await {
        debug!(error = %e, "tunnel ended");
    }
}

#[cfg(test)]
mod tests;
