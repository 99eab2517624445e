//! systemd's readiness protocol (`sd_notify(3)`) without a crate: one
//! datagram per state change, sent to the Unix socket `$NOTIFY_SOCKET`
//! names (a path, or an abstract name written with a leading `@`).
//!
//! Leaf: imports no other tidegate module. The composition root sends
//! `READY=1` once the listeners are bound and serving and `STOPPING=1` when
//! a stop signal arrives; the reload owner (`control/`) brackets every
//! reload with `RELOADING=1` (and `MONOTONIC_USEC`, which systemd uses to
//! order reload cycles) and `READY=1`. Without `$NOTIFY_SOCKET` (not
//! started by systemd with `Type=notify`) every call is a no-op. Sending
//! never blocks: the socket is non-blocking, and a message the manager
//! cannot take is dropped and logged, never waited for.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The variable systemd sets for a `Type=notify` service.
pub(crate) const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// A state change the service manager is told about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// Serving (after start, or after a reload), with a line for
    /// `systemctl status`.
    Ready(String),
    /// A reload began; `MONOTONIC_USEC` is added when sent.
    Reloading,
    /// Shutting down.
    Stopping,
}

/// Why a notification could not be sent.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NotifyError {
    /// `$NOTIFY_SOCKET` is neither an absolute path nor `@name`.
    #[error("${NOTIFY_SOCKET} `{0}` is neither an absolute path nor an abstract name (`@name`)")]
    Address(String),
    /// The socket could not be created or the datagram not sent.
    #[error("${NOTIFY_SOCKET} `{socket}`: {source}")]
    Send {
        /// The socket as the variable names it.
        socket: String,
        /// The OS error.
        source: io::Error,
    },
}

/// The datagram for `event`; `monotonic_usec` is `CLOCK_MONOTONIC` in
/// microseconds (read by the caller, so this stays pure).
pub(crate) fn message(event: &Event, monotonic_usec: u64) -> String {
    match event {
        Event::Ready(status) => format!("READY=1\nSTATUS={}", one_line(status)),
        Event::Reloading => format!("RELOADING=1\nSTATUS=reloading\nMONOTONIC_USEC={monotonic_usec}"),
        Event::Stopping => "STOPPING=1\nSTATUS=stopping".to_string(),
    }
}

/// A status must stay on its line: a newline would start another field.
fn one_line(status: &str) -> String {
    status.replace(['\n', '\r'], " ")
}

/// Where `$NOTIFY_SOCKET` points: `@name` is an abstract socket, anything
/// else must be an absolute path.
pub(crate) fn address(socket: &str) -> Result<SocketAddr, NotifyError> {
    let bad = || NotifyError::Address(socket.to_string());
    match socket.strip_prefix('@') {
        Some(name) if !name.is_empty() => SocketAddr::from_abstract_name(name.as_bytes()).map_err(|_| bad()),
        Some(_) => Err(bad()),
        None if socket.starts_with('/') => SocketAddr::from_pathname(socket).map_err(|_| bad()),
        None => Err(bad()),
    }
}

/// Tells the service manager about `event`; `Ok(false)` when there is
/// none to tell (no `$NOTIFY_SOCKET`).
pub(crate) fn notify(event: &Event) -> Result<bool, NotifyError> {
    let Some(socket) = std::env::var_os(NOTIFY_SOCKET) else {
        return Ok(false);
    };
    let socket = socket.to_string_lossy().into_owned();
    let addr = address(&socket)?;
    let send_error = |source| NotifyError::Send {
        socket: socket.clone(),
        source,
    };
    let datagram = UnixDatagram::unbound().map_err(send_error)?;
    datagram.set_nonblocking(true).map_err(send_error)?;
    datagram
        .send_to_addr(message(event, monotonic_usec()).as_bytes(), &addr)
        .map_err(send_error)?;
    Ok(true)
}

/// [`notify`], logging a failure instead of returning it: the service
/// manager missing a message is worth a warning, never a stop.
pub(crate) fn send(event: Event) {
    if let Err(e) = notify(&event) {
        tracing::warn!(error = %e, ?event, "could not notify the service manager");
    }
}

/// `CLOCK_MONOTONIC` in microseconds, the clock systemd compares
/// `MONOTONIC_USEC` with (std's `Instant` hides its value).
fn monotonic_usec() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec.max(0) as u64) * 1_000_000 + (t.tv_nsec.max(0) as u64) / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_follow_the_protocol() {
        assert_eq!(
            message(&Event::Ready("generation 3\nsecond line".into()), 0),
            "READY=1\nSTATUS=generation 3 second line"
        );
        assert_eq!(
            message(&Event::Reloading, 42),
            "RELOADING=1\nSTATUS=reloading\nMONOTONIC_USEC=42"
        );
        assert!(message(&Event::Stopping, 0).starts_with("STOPPING=1\n"));
    }

    #[test]
    fn addresses_are_paths_or_abstract_names() {
        assert!(address("/run/systemd/notify").unwrap().as_pathname().is_some());
        let abs = address("@tidegate/notify").unwrap();
        assert_eq!(abs.as_abstract_name(), Some(&b"tidegate/notify"[..]));
        for bad in ["", "@", "relative/path"] {
            assert!(matches!(address(bad), Err(NotifyError::Address(_))), "{bad:?}");
        }
    }

    #[test]
    fn the_monotonic_clock_moves_forward() {
        let (a, b) = (monotonic_usec(), monotonic_usec());
        assert!(a > 0 && b >= a);
    }
}
