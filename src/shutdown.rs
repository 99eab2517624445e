//! Shutdown signals and the accept loop's error back-off, shared by every
//! listener (client listeners, the admin listener, the demo's backends).
//!
//! Leaf: imports no other tidegate module. A stop is a
//! `watch::Receiver<bool>` that turns `true` once; [`stopped`] completes
//! then (or when the sender is gone). [`accept`] never spins: an accept
//! error such as EMFILE (out of file descriptors) is logged and followed by
//! a pause before the next attempt, as mini-redis's `Listener::accept` does.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Pause after a failed accept before trying again.
pub(crate) const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Completes once the stop flag is set (or its sender is gone).
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// The next connection, or `None` once `stop` turns true. Errors are
/// logged under `listener` and followed by [`ACCEPT_ERROR_BACKOFF`].
pub(crate) async fn accept(
    listener: &TcpListener,
    stop: &mut watch::Receiver<bool>,
    name: &str,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok(accepted) => return Some(accepted),
                Err(e) => {
                    tracing::warn!(listener = %name, error = %e, "accept failed; backing off");
                    tokio::select! {
                        _ = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => {}
                        _ = stopped(stop) => return None,
                    }
                }
            },
            _ = stopped(stop) => return None,
        }
    }
}
