//! What one client connection and the exchanges on it share: whether it
//! switched to a tunnel, and whether its client still takes the responses
//! it is sent.
//!
//! Data path; atomics only. The server creates one [`ClientConn`] per
//! accepted connection and hands it to the framing guard (which steps aside
//! once `switched` is set) and to the proxy service (whose responses keep
//! the stall accounting below).
//!
//! **Send stalls (HTTP/2).** A client that stops reading shows at the
//! socket for HTTP/1.1 (a write that makes no progress, caught by the
//! server's write timer). Over HTTP/2 it need not: a client that keeps its
//! flow-control window at 0 never lets a response body be polled, so the
//! socket is idle and the backend slot is held forever. Each response body
//! therefore counts itself *untaken* from the moment it exists or hands a
//! frame on until hyper asks it for the next one; the server's watchdog
//! ([`ClientConn::stalled`]) ends the connection when some body has been
//! untaken and none taken for `client_send_timeout`. (A client that
//! trickles one stream to shield stalled others keeps the connection; the
//! per-connection stream limit bounds what that holds.)
//!
//! **Ended exchanges.** Each request holds an [`OpenExchange`] from the
//! proxy's call until its response body is dropped (the last byte handed
//! to hyper, or the client gone), and counts as ended then. The server
//! parks an idle HTTP/1.1 connection only when every request head its
//! framing guard saw has ended (hyper also reads the socket while a
//! response is still being produced, to notice a client that left). The
//! guard counts a head as its bytes arrive, before hyper calls the proxy,
//! so no moment between the two reads as a rest.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::clock::clock_ns;

/// One client connection's shared state.
#[derive(Default)]
pub(crate) struct ClientConn {
    /// Set when the connection switched protocols (a tunnel started).
    pub(crate) switched: AtomicBool,
    /// Set when a write to the client made no progress for
    /// `client_send_timeout` (the server ends the connection).
    pub(crate) send_timed_out: AtomicBool,
    /// The connection speaks HTTP/2 (set by the server once it knows).
    h2: AtomicBool,
    /// Response bodies created or holding a handed-on frame, not yet asked
    /// for more (HTTP/2 only).
    untaken: AtomicU32,
    /// When a body was last asked for a frame, or the untaken count left 0.
    last_taken_ns: AtomicU64,
    became_untaken: Notify,
    /// Exchanges whose response body has been dropped.
    ended: AtomicU64,
}

/// One exchange on a client connection, open until dropped (it rides on
/// the response body).
pub(crate) struct OpenExchange(Arc<ClientConn>);

impl OpenExchange {
    pub(crate) fn new(conn: &Arc<ClientConn>) -> OpenExchange {
        OpenExchange(Arc::clone(conn))
    }
}

impl Drop for OpenExchange {
    fn drop(&mut self) {
        self.0.ended.fetch_add(1, Ordering::Release);
    }
}

impl ClientConn {
    /// The connection speaks HTTP/2: response bodies keep stall accounting.
    pub(crate) fn set_h2(&self) {
        self.h2.store(true, Ordering::Relaxed);
    }

    pub(crate) fn is_h2(&self) -> bool {
        self.h2.load(Ordering::Relaxed)
    }

    /// Exchanges whose response has ended.
    pub(crate) fn exchanges_ended(&self) -> u64 {
        self.ended.load(Ordering::Acquire)
    }

    /// A body now waits for the client to take it (created, or handed a
    /// frame on).
    pub(crate) fn untaken(&self) {
        if self.untaken.fetch_add(1, Ordering::AcqRel) == 0 {
            self.last_taken_ns.store(clock_ns(), Ordering::Relaxed);
            self.became_untaken.notify_one();
        }
    }

    /// A waiting body was asked for its next frame (or went away).
    pub(crate) fn taken(&self) {
        self.untaken.fetch_sub(1, Ordering::AcqRel);
        self.last_taken_ns.store(clock_ns(), Ordering::Relaxed);
    }

    /// Completes when some response has waited on the client, with no
    /// response taken at all, for `timeout`: the client stopped reading.
    pub(crate) async fn stalled(&self, timeout: Duration) {
        let timeout_ns = timeout.as_nanos() as u64;
        loop {
            if self.untaken.load(Ordering::Acquire) == 0 {
                self.became_untaken.notified().await;
                continue;
            }
            let since = self.last_taken_ns.load(Ordering::Relaxed);
            let now = clock_ns();
            if now.saturating_sub(since) >= timeout_ns {
                return;
            }
            tokio::time::sleep(Duration::from_nanos(since + timeout_ns - now)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_body_nobody_takes_stalls_the_connection_after_the_timeout() {
        let conn = ClientConn::default();
        conn.set_h2();
        let started = tokio::time::Instant::now();
        conn.untaken();
        conn.stalled(Duration::from_secs(60)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn taking_bodies_keeps_the_connection() {
        let conn = std::sync::Arc::new(ClientConn::default());
        let watch = {
            let conn = std::sync::Arc::clone(&conn);
            tokio::spawn(async move { conn.stalled(Duration::from_secs(60)).await })
        };
        // A body that is taken every 30 s never stalls.
        for _ in 0..10 {
            conn.untaken();
            tokio::time::sleep(Duration::from_secs(30)).await;
            conn.taken();
        }
        assert!(!watch.is_finished());
        // Nothing waiting: nothing to time out, however long.
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert!(!watch.is_finished());
        conn.untaken();
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert!(watch.is_finished());
    }
}
