//! The service manager's notification protocol (sd_notify(3)): `READY=1` once the agent
//! enforces, `STOPPING=1` when it drains, `STATUS=` lines, and `WATCHDOG=1` keep-alives, each a
//! datagram to the Unix socket systemd names in `NOTIFY_SOCKET` (a path, or `@name` for an
//! abstract address). Outside systemd (`NOTIFY_SOCKET` unset) nothing is sent.
//!
//! The variables are passed in, not read here, so that tests give their own.

use std::{
    ffi::OsStr,
    io,
    os::{
        linux::net::SocketAddrExt as _,
        unix::{
            ffi::OsStrExt as _,
            net::{SocketAddr, UnixDatagram},
        },
    },
    time::Duration,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("NOTIFY_SOCKET={value:?}: not a socket path or @abstract name")]
    Address {
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot open a socket for NOTIFY_SOCKET")]
    Socket(#[source] io::Error),
    #[error("{name}={value:?}: {reason}")]
    Variable {
        name: &'static str,
        value: String,
        reason: &'static str,
    },
}

/// A connection to the service manager's notification socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// The notifier for `NOTIFY_SOCKET`'s value, `None` when it is unset or empty.
    pub fn new(notify_socket: Option<&OsStr>) -> Result<Option<Self>, Error> {
        let Some(value) = notify_socket.filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        let bytes = value.as_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name),
            None => SocketAddr::from_pathname(value),
        }
        .map_err(|source| Error::Address {
            value: value.to_string_lossy().into_owned(),
            source,
        })?;
        let socket = UnixDatagram::unbound().map_err(Error::Socket)?;
        // A manager that does not read must never stall the runtime: drop the message instead.
        socket.set_nonblocking(true).map_err(Error::Socket)?;
        Ok(Some(Self { socket, addr }))
    }

    /// `READY=1`: the programs are attached and the listeners accept.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// `STOPPING=1`: shutdown has begun (draining).
    pub fn stopping(&self, status: &str) {
        self.send(&format!("STOPPING=1\nSTATUS={status}"));
    }

    /// `WATCHDOG=1`: the agent is alive (see [`watchdog_interval`]).
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    fn send(&self, message: &str) {
        if let Err(e) = self.socket.send_to_addr(message.as_bytes(), &self.addr) {
            tracing::debug!(error = %e, message, "service manager notification not sent");
        }
    }
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, as sd_watchdog_enabled(3)
/// advises, when the watchdog is on for this process (`WATCHDOG_PID` unset or `pid`).
pub fn watchdog_interval(
    usec: Option<&str>,
    watchdog_pid: Option<&str>,
    pid: u32,
) -> Result<Option<Duration>, Error> {
    let Some(usec) = usec.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let bad = |name, value: &str, reason| Error::Variable {
        name,
        value: value.into(),
        reason,
    };
    if let Some(p) = watchdog_pid.filter(|v| !v.is_empty()) {
        let p: u32 = p
            .parse()
            .map_err(|_| bad("WATCHDOG_PID", p, "not a process id"))?;
        if p != pid {
            return Ok(None);
        }
    }
    match usec.parse::<u64>() {
        Ok(0) | Err(_) => Err(bad(
            "WATCHDOG_USEC",
            usec,
            "not a positive number of microseconds",
        )),
        Ok(us) => Ok(Some(Duration::from_micros(us) / 2)),
    }
}

#[cfg(test)]
mod tests;
