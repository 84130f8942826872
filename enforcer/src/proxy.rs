//! The accept/forward loop.
//!
//! Enforces: only connections the kernel redirected are served; a connection without a kernel
//! record is reset. So is a connection over the limits on open connections
//! ([`crate::limits`]): overall, checked at accept before any work is spent on it, and per
//! identity, checked once the caller is known. A connection to an `http` service is served
//! request by request ([`http`]); one to a `tcp` service is relayed to its original
//! destination as a byte stream, both directions, with half-close carried across. Reports: one
//! log event per redirected connection with the caller's identity, an audit record per
//! connection refused for a limit ("connection limit"), and counters in [`Stats`].
//!
//! Shutdown drains ([`Drain`]): once the listeners are closed, an HTTP connection finishes its
//! request in flight, answers any request already arriving with `connection: close`, and an
//! idle one is closed at once with a FIN — never mid-request and never with an RST — so a
//! client retrying an idempotent request on a fresh connection (RFC 9112 §9.3.1) loses
//! nothing. Byte-stream relays and tunnels have no request boundary: they run on until the
//! drain's time bound.

mod http;

pub use http::EXEC_AFTER_CONNECT;

use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use enforcer_common::ConnMeta;
use tokio::{
    io::copy_bidirectional_with_sizes,
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tracing::{debug, info, warn};

use crate::{
    anomaly::Detectors,
    audit::Audit,
    binding::Bindings,
    credentials::Fingerprinter,
    host::{self, HostAddrs},
    identity::{Identity, Resolver, Unresolved},
    limits::{ConnPermit, Limiter},
    metrics::{Metrics, UpstreamError},
    policy::{Policy, Protocol},
    redirect::{self, Redirect},
    reload::PolicyStore,
};

/// Relay buffer per direction. 64 KiB moves bulk transfers in few syscalls; two per
/// connection bound the relay's memory at 128 KiB per connection.
const RELAY_BUFFER: usize = 64 * 1024;

/// Agent-side counters.
#[derive(Debug, Default)]
pub struct Stats {
    /// Redirected connections accepted and matched to a kernel record.
    pub accepted: AtomicU64,
    /// Connections that reached the listener with no kernel record; reset.
    pub no_record: AtomicU64,
    /// Connections whose original destination could not be reached; reset.
    pub upstream_failed: AtomicU64,
}

/// What every connection task shares.
pub struct Relay {
    pub store: Arc<PolicyStore>,
    pub audit: Audit,
    /// Keyed fingerprints of presented tokens and keys, for records.
    pub fingerprints: Fingerprinter,
    /// Who first used each credential with `bindOnFirstUse`.
    pub bindings: Arc<Bindings>,
    pub resolver: Arc<Resolver>,
    /// This host's addresses: which local service a connection to one of them is for.
    pub host: Arc<host::Addresses>,
    /// Counts every record for the anomaly detectors.
    pub anomalies: Arc<Detectors>,
    pub stats: Arc<Stats>,
    /// Connection counts and request buckets.
    pub limiter: Limiter,
    /// `--connect-timeout`: overrides the policy's `connectTimeout` (deprecated).
    pub connect_timeout: Option<Duration>,
    /// `None` with `--metrics-addr off`: nothing is recorded.
    pub metrics: Option<Arc<Metrics>>,
    pub drain: Drain,
}

/// The shutdown signal of connections. Every connection holds a subscription for its life, so
/// the drain is over when none is left.
pub struct Drain {
    tx: watch::Sender<bool>,
}

impl Default for Drain {
    fn default() -> Self {
        Self {
            tx: watch::Sender::new(false),
        }
    }
}

impl Drain {
    /// Subscribe a connection: `true` is sent when it should finish and close.
    fn subscribe(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }

    /// Connections still open.
    pub fn connections(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Tell every connection to finish, and wait until all have closed. Call after the
    /// listeners are closed, so no connection subscribes afterwards.
    pub async fn run(&self) {
        self.tx.send_replace(true);
        self.tx.closed().await;
    }
}

/// Accept redirected connections on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, redirect: Arc<Redirect>, relay: Arc<Relay>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(meta) = redirect.take_record(peer) else {
            relay.stats.no_record.fetch_add(1, Relaxed);
            warn!(client = %peer, "connection without a kernel record: reset");
            reset(stream);
            continue;
        };
        let policy = relay.store.current();
        let Some(permit) = relay.limiter.admit(&policy) else {
            // Before any work: no task, no identity resolution. The record has what the
            // kernel attested.
            reset(stream);
            let max = relay.limiter.max_connections(&policy);
            debug!(client = %peer, max, "over the connection limit: reset");
            relay.finish(connection_refused(
                &policy,
                &relay.host.current(),
                &meta,
                peer,
                attested_caller(&meta),
                Arc::default(),
                format!("{max} connections open, the most allowed (maxConnections)"),
            ));
            continue;
        };
        relay.stats.accepted.fetch_add(1, Relaxed);
        let active = relay.metrics.as_ref().map(|m| m.connection_opened());
        // Subscribed here, not in the task: a drain starting before the task runs counts it.
        let drain = relay.drain.subscribe();
        let relay = relay.clone();
        tokio::spawn(async move {
            relay.handle(stream, peer, meta, permit, drain).await;
            drop(active);
        });
    }
}

impl Relay {
    /// Every request ends here with its record: the one place that reports a decision.
    fn finish(&self, record: crate::audit::Record) {
        self.anomalies.observe(&record);
        if let Some(metrics) = &self.metrics {
            metrics.record(&record);
        }
        self.audit.record(record);
    }

    /// How long to wait for an upstream to accept.
    fn connect_timeout(&self, policy: &Policy) -> Duration {
        self.connect_timeout
            .unwrap_or(policy.settings.limits.connect_timeout)
    }

    async fn handle(
        self: Arc<Self>,
        client: TcpStream,
        peer: SocketAddr,
        meta: ConnMeta,
        // Held until the connection ends, or given back before it is refused.
        permit: ConnPermit,
        drain: watch::Receiver<bool>,
    ) {
        let dst = redirect::original_destination(&meta);
        let policy = self.store.current();
        let service = policy.service_for(dst.ip(), dst.port(), &self.host.current());
        let protocol = service
            .and_then(|name| policy.services.get(name))
            .map_or(Protocol::Http, |s| s.protocol);
        let _ = client.set_nodelay(true);
        // Identity may read /proc and hash a binary: off the runtime's workers.
        let resolver = self.resolver.clone();
        let hash_timeout = policy.settings.limits.hash_timeout;
        let identity = tokio::task::spawn_blocking(move || resolver.resolve(&meta, hash_timeout));
        match protocol {
            Protocol::Http => {
                let identity = match identity.await {
                    Ok(identity) => Arc::new(identity),
                    Err(e) => return bug_reset(client, peer, &e),
                };
                let ids = policy.classify(&identity);
                let limits = self.limiter.identity(&policy, ids.shared_names().first());
                let Some(_identity_permit) = limits.admit() else {
                    return self
                        .refuse_connection(client, permit, peer, &policy, &meta, &identity, &ids);
                };
                log_connection(&identity, peer, dst, service, None);
                let conn = http::Conn {
                    peer,
                    dst,
                    identity,
                    policy,
                    ids,
                    limits,
                };
                http::serve(&self, conn, client, drain).await;
            }
            Protocol::Tcp => {
                self.relay_tcp(client, permit, peer, &meta, &policy, service, identity)
                    .await;
                // Held to here: the drain waits for the stream (up to its bound).
                drop(drain);
            }
        }
    }

    /// Reset a connection over its identity's connection limit, and record why. Its place
    /// among all open connections is given back first: a client that sees the reset and
    /// connects again at once must not be refused for a connection that is already gone.
    #[expect(
        clippy::too_many_arguments,
        reason = "the refused connection's parts, each needed for its record"
    )]
    fn refuse_connection(
        &self,
        client: TcpStream,
        permit: ConnPermit,
        peer: SocketAddr,
        policy: &Policy,
        meta: &ConnMeta,
        identity: &Identity,
        ids: &crate::policy::IdentitySet,
    ) {
        drop(permit);
        reset(client);
        let who = ids.names().next().unwrap_or("unidentified");
        let identified = ids.names().next().is_some();
        let max = self
            .limiter
            .max_connections_per_identity(policy, identified);
        let why = match policy.settings.limits.max_connections_per_identity {
            Some(_) => "maxConnectionsPerIdentity".to_owned(),
            None if identified => format!(
                "maxConnectionsPerIdentity default: maxConnections / {}",
                crate::limits::DEFAULT_IDENTITY_SHARE
            ),
            None => format!(
                "maxConnectionsPerIdentity default for the unidentified: maxConnections / {}",
                crate::limits::DEFAULT_UNIDENTIFIED_SHARE
            ),
        };
        debug!(
            client = %peer,
            identity = who,
            max,
            "over the identity's connection limit: reset"
        );
        self.finish(connection_refused(
            policy,
            &self.host.current(),
            meta,
            peer,
            Arc::new(crate::audit::Caller::from(identity)),
            ids.shared_names().into(),
            format!("identity `{who}` has {max} connections open, the most allowed ({why})"),
        ));
    }

    /// Relay a byte stream to the original destination; the upstream connect overlaps the
    /// identity resolution.
    #[expect(
        clippy::too_many_arguments,
        reason = "the connection's parts, as `handle` took them apart"
    )]
    async fn relay_tcp(
        &self,
        mut client: TcpStream,
        permit: ConnPermit,
        peer: SocketAddr,
        meta: &ConnMeta,
        policy: &Policy,
        service: Option<&str>,
        identity: tokio::task::JoinHandle<Identity>,
    ) {
        let dst = redirect::original_destination(meta);
        let upstream = tokio::time::timeout(self.connect_timeout(policy), TcpStream::connect(dst));
        let (identity, upstream) = tokio::join!(identity, upstream);
        let identity = match identity {
            Ok(identity) => identity,
            Err(e) => return bug_reset(client, peer, &e),
        };
        let ids = policy.classify(&identity);
        let limits = self.limiter.identity(policy, ids.shared_names().first());
        let Some(_identity_permit) = limits.admit() else {
            if let Ok(Ok(upstream)) = upstream {
                reset(upstream);
            }
            return self.refuse_connection(client, permit, peer, policy, meta, &identity, &ids);
        };
        let mut upstream = match upstream {
            Ok(Ok(upstream)) => upstream,
            failed => {
                let error = match failed {
                    Ok(Err(e)) => e,
                    _ => io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
                };
                self.stats.upstream_failed.fetch_add(1, Relaxed);
                if let Some(metrics) = &self.metrics {
                    let service = service.unwrap_or("unknown");
                    metrics.upstream_error(service, UpstreamError::of_connect(&error));
                }
                log_connection(&identity, peer, dst, service, Some(&error));
                reset(client);
                return;
            }
        };
        log_connection(&identity, peer, dst, service, None);
        let _ = upstream.set_nodelay(true);
        match copy_bidirectional_with_sizes(&mut client, &mut upstream, RELAY_BUFFER, RELAY_BUFFER)
            .await
        {
            Ok((sent, received)) => {
                debug!(client = %peer, destination = %dst, sent, received, "connection closed")
            }
            Err(e) => {
                debug!(client = %peer, destination = %dst, error = %e, "connection aborted");
                // Pass an abort on as an abort: the other side must not take it for a clean end.
                reset(client);
                reset(upstream);
            }
        }
    }
}

/// The record of a connection refused for a connection limit: no request was read.
fn connection_refused(
    policy: &Policy,
    host: &HostAddrs,
    meta: &ConnMeta,
    client: SocketAddr,
    caller: Arc<crate::audit::Caller>,
    identities: Arc<[Arc<str>]>,
    detail: String,
) -> crate::audit::Record {
    let dst = redirect::original_destination(meta);
    crate::audit::Record {
        time: crate::audit::now(),
        request_id: http::request_id(),
        decision: crate::audit::Verdict::Reject,
        rule: None,
        mode: policy.settings.mode.as_str(),
        reason: "connection limit",
        detail: Some(detail),
        caller,
        identities,
        service: policy
            .service_for(dst.ip(), dst.port(), host)
            .unwrap_or("unknown")
            .into(),
        client: client.to_string().into(),
        destination: dst.to_string().into(),
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
    }
}

/// The caller as the kernel attested it, without reading /proc: for refusals that must cost
/// next to nothing.
fn attested_caller(meta: &ConnMeta) -> Arc<crate::audit::Caller> {
    let end = meta
        .comm
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(meta.comm.len());
    Arc::new(crate::audit::Caller {
        tgid: meta.tgid,
        pid: meta.pid,
        uid: meta.uid,
        gid: meta.gid,
        user: None,
        group: None,
        comm: String::from_utf8_lossy(&meta.comm[..end]).into_owned(),
        exe: None,
        exe_untrusted: None,
        sha256: None,
        traced: None,
        unresolved: None,
        cgroup_id: meta.cgroup_id,
        cgroup: None,
        unit: None,
        container: None,
    })
}

fn bug_reset(client: TcpStream, peer: SocketAddr, e: &tokio::task::JoinError) {
    warn!(client = %peer, error = %e, "BUG: identity resolution panicked: reset");
    reset(client);
}

/// One event per redirected connection, with every attested attribute as its own field.
fn log_connection(
    id: &Identity,
    client: SocketAddr,
    destination: SocketAddr,
    service: Option<&str>,
    error: Option<&io::Error>,
) {
    let process = id.process.as_deref();
    let cgroup = id.cgroup.as_deref();
    macro_rules! event {
        ($level:ident, $msg:literal $(, $extra:tt)*) => {
            $level!(
                event = "connection",
                %client,
                %destination,
                service = service.unwrap_or("unknown"),
                tgid = id.tgid,
                pid = id.pid,
                uid = id.uid,
                gid = id.gid,
                user = id.user.as_deref(),
                group = id.group.as_deref(),
                comm = %id.comm,
                exe = process.map(|p| tracing::field::display(p.exe.display())),
                exe_trusted = process.map(|p| p.exe_trusted),
                traced = id.traced,
                sha256 = process.map(|p| &*p.sha256),
                cgroup_id = id.cgroup_id,
                cgroup = cgroup.map(|c| c.path.as_str()),
                unit = cgroup.and_then(|c| c.unit.as_deref()),
                container = cgroup.and_then(|c| c.container.as_deref()),
                unresolved = id.unresolved.map(Unresolved::as_str),
                $($extra,)*
                $msg
            )
        };
    }
    match error {
        None => event!(info, "relaying"),
        Some(e) => {
            let error = tracing::field::display(e);
            event!(warn, "upstream unreachable: client reset", error)
        }
    }
}

/// Close with RST instead of FIN, so the peer sees a refusal or abort at once.
pub(crate) fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}
