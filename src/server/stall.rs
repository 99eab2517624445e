//! Client writes that make no progress end the connection.
//!
//! Data path, around every client connection's IO. A client that stops
//! reading lets the socket's send buffer fill: writes return `Pending` and
//! the response, its backend slot and its buffers would be held for as long
//! as the TCP connection lives. [`SendTimeout`] arms a timer when a write
//! (or flush) cannot proceed and disarms it on progress; when it fires the
//! write fails with `TimedOut`, hyper ends the connection, and every
//! response on it frees its slot (as nginx's `send_timeout`: the time
//! between two successive writes). The timer is allocated on the first
//! stall only.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::proxy::ClientConn;

pub(crate) struct SendTimeout<IO> {
    io: IO,
    timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
    /// Told when a write timed out, so the server can count and log it.
    conn: Arc<ClientConn>,
}

impl<IO> SendTimeout<IO> {
    pub(crate) fn new(io: IO, timeout: Duration, conn: Arc<ClientConn>) -> SendTimeout<IO> {
        SendTimeout {
            io,
            timeout,
            timer: None,
            armed: false,
            conn,
        }
    }

    /// After a write attempt: disarm on progress; on `Pending`, run the
    /// timer and turn its expiry into an error.
    fn watch<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if r.is_ready() {
            self.armed = false;
            return r;
        }
        if !self.armed {
            let deadline = Instant::now() + self.timeout;
            match &mut self.timer {
                Some(t) => t.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed = true;
        }
        if self.timer.as_mut().is_some_and(|t| t.as_mut().poll(cx).is_ready()) {
            self.conn.send_timed_out.store(true, Ordering::Relaxed);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "client_send_timeout: the client took nothing",
            )));
        }
        Poll::Pending
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for SendTimeout<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for SendTimeout<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.watch(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
