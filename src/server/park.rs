//! Idle HTTP/1.1 connections give hyper's buffers back.
//!
//! Data path, around a plain-TCP client connection's framing guard.
//! hyper's HTTP/1.1 server keeps an 8 KiB read buffer and a write buffer
//! for a connection's whole life and has no way to release them between
//! requests, so 10,000 idle keep-alive clients held about 20 KiB each.
//! [`Parking`] ends hyper's hold on a connection that has rested for
//! [`PARK_AFTER`]: it takes the socket out from under hyper, hands it to
//! the connection's task through a one-shot channel, and shows hyper the
//! end of the stream, which hyper reads as a client closing an idle
//! connection (it finishes and writes nothing). The task then waits for
//! the socket to turn readable, holding no buffer at all, and serves the
//! next request with a new hyper connection (as nginx frees a kept-alive
//! connection's buffers).
//!
//! A connection rests when all of these hold while hyper waits to read:
//! - the guard is between requests (no byte of the next one has come, not
//!   even a blank line before it);
//! - every request head the guard saw has ended as an exchange
//!   (`ClientConn::exchanges_ended`): hyper also reads the socket while a
//!   response is produced or sent, to notice a client that left, and an
//!   end of stream then would abort the response;
//! - every byte hyper wrote has been flushed (hyper flushes its own buffer
//!   before it flushes the socket);
//! - it is not a tunnel.
//!
//! (A head hyper refuses on its own never becomes an exchange; hyper then
//! closes the connection, and until it does the connection never parks.)
//!
//! The rest timer costs a request nothing but a poll: it is set once and
//! runs on. Every read that brings bytes, every write and every read while
//! not at rest is activity; when the timer fires on a connection at rest,
//! the connection parks if there was none since it was set, and otherwise
//! the timer is set again. A connection thus parks after resting between
//! one and two [`PARK_AFTER`]s, however long its last response took.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use super::h1_guard::H1Guard;
use crate::proxy::ClientConn;

/// How long an HTTP/1.1 connection rests before hyper's buffers are freed.
/// Clients that send back to back never wait this long; a shop's browser
/// between two pages always does.
pub(crate) const PARK_AFTER: Duration = Duration::from_secs(1);

/// The socket of a parked connection, for its task.
pub(crate) type Parked = oneshot::Receiver<TcpStream>;

pub(crate) struct Parking {
    /// `None` once parked: hyper then reads the end of the stream.
    guard: Option<H1Guard<TcpStream>>,
    conn: Arc<ClientConn>,
    /// Exchanges that had ended before this guard's first head (a woken
    /// connection's guard counts heads from zero).
    ended_before: u64,
    /// A write since the last completed flush.
    dirty: bool,
    /// Reads and writes that were not a rest, and their count when the
    /// timer was set.
    activity: u64,
    activity_at_set: u64,
    timer: Option<Pin<Box<Sleep>>>,
    hand_back: Option<oneshot::Sender<TcpStream>>,
}

impl Parking {
    /// Watches `guard`'s connection; the receiver gets its socket if it
    /// is parked.
    pub(crate) fn new(guard: H1Guard<TcpStream>, conn: Arc<ClientConn>) -> (Parking, Parked) {
        let (hand_back, parked) = oneshot::channel();
        let parking = Parking {
            guard: Some(guard),
            ended_before: conn.exchanges_ended(),
            conn,
            dirty: false,
            activity: 0,
            activity_at_set: 0,
            timer: None,
            hand_back: Some(hand_back),
        };
        (parking, parked)
    }

    fn at_rest(&self) -> bool {
        !self.dirty
            && self
                .guard
                .as_ref()
                .is_some_and(|g| g.at_rest() && self.ended_before + g.heads() == self.conn.exchanges_ended())
            && !self.conn.switched.load(Ordering::Acquire)
    }

    /// At rest and nothing to read: true once the timer fired with no
    /// activity since it was set.
    fn rested(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            let Some(timer) = self.timer.as_mut() else {
                self.timer = Some(Box::pin(tokio::time::sleep(PARK_AFTER)));
                self.activity_at_set = self.activity;
                continue;
            };
            if timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            if self.activity == self.activity_at_set {
                return true;
            }
            timer.as_mut().reset(Instant::now() + PARK_AFTER);
            self.activity_at_set = self.activity;
        }
    }

    /// A write through the guard (it dirties the connection until flushed);
    /// none once parked.
    fn write<T>(
        &mut self,
        write: impl FnOnce(Pin<&mut H1Guard<TcpStream>>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match self.guard.as_mut() {
            Some(guard) => {
                self.dirty = true;
                self.activity += 1;
                write(Pin::new(guard))
            }
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn park(&mut self) {
        if let (Some(guard), Some(hand_back)) = (self.guard.take(), self.hand_back.take()) {
            let _ = hand_back.send(guard.into_inner());
        }
    }
}

impl AsyncRead for Parking {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some(guard) = this.guard.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let r = Pin::new(guard).poll_read(cx, buf);
        if r.is_ready() || !this.at_rest() {
            this.activity += 1;
            return r;
        }
        if this.rested(cx) {
            this.park();
            return Poll::Ready(Ok(()));
        }
        Poll::Pending
    }
}

impl AsyncWrite for Parking {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.write(|guard| guard.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.write(|guard| guard.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.guard.as_ref().is_some_and(|g| g.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some(guard) = this.guard.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let r = Pin::new(guard).poll_flush(cx);
        if let Poll::Ready(Ok(())) = r {
            this.dirty = false;
        }
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.guard.as_mut() {
            Some(guard) => Pin::new(guard).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}
