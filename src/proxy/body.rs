//! The body returned to the client, never buffered whole.
//!
//! Data path. [`ResponseBody`] is either the backend's body, carrying the
//! request's in-flight slot and its keep-alive connection until the last
//! byte has gone (so in-flight falls when the response has really finished,
//! and a half-read connection is never reused), or a short body tidegate
//! wrote itself. (The request body on its way to a backend is
//! `upstream::body::RequestBody`.)
//!
//! Two things can end a backend's body early, each freeing the slot at
//! once and counted under its reason:
//! - the backend sends nothing for `timeouts.read` (as nginx's
//!   `proxy_read_timeout`): a backend fault, it counts toward ejection;
//! - over HTTP/2, the body keeps the connection's stall accounting (see
//!   `conn.rs`), so a client that never takes it is cut by the server.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::conn::{ClientConn, OpenExchange};
use super::error::UPSTREAM_READ_TIMEOUT;
use crate::access_log::{AccessLog, Line, Outcome};
use crate::pool::health::note_failure;
use crate::pool::InFlight;
use crate::upstream::{UpstreamBody, UpstreamError};

/// What a finished upstream body gives back (its HTTP/1.1 connection,
/// which the body owns, goes back to the backend's pool with it).
struct Lease {
    slot: InFlight,
}

/// Why a response body ended before its end.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ResponseBodyError {
    #[error("backend body: {0}")]
    Upstream(#[from] UpstreamError),
    #[error("the backend sent nothing for {0:?}")]
    ReadTimeout(Duration),
}

/// The body returned to the client.
pub(crate) struct ResponseBody {
    kind: Kind,
    /// The request's access-log line, sent when the body is dropped (its
    /// last byte gone, or the client gone).
    logged: Option<Box<Logged>>,
    /// The exchange this body ends (counted on its connection when dropped).
    exchange: Option<OpenExchange>,
}

/// An access-log line waiting for its response to end.
pub(crate) struct Logged {
    pub(crate) log: Arc<AccessLog>,
    /// The request's side, written at arrival.
    pub(crate) line: Line,
    pub(crate) outcome: Outcome,
    pub(crate) started: Instant,
    /// The request body's byte count (added when that body is dropped).
    pub(crate) bytes_in: Option<Arc<AtomicU64>>,
}

enum Kind {
    Upstream(Streaming),
    Full(Option<Bytes>),
    /// What was already read of a body (the cache buffered it, then found
    /// it too large to store), then the rest of it.
    Resumed(Option<Bytes>, Box<ResponseBody>),
}

/// A backend's body on its way through.
struct Streaming {
    inner: UpstreamBody,
    lease: Option<Lease>,
    /// Bytes passed on, added to the pool's count once, when the lease
    /// ends (not one shared atomic add per frame).
    sent: u64,
    client: Arc<ClientConn>,
    /// Counted in the connection's untaken bodies (HTTP/2 only).
    untaken: bool,
    read_timeout: Duration,
    /// Allocated on the first wait for the backend, then re-armed.
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl ResponseBody {
    /// The backend's body, holding the slot (and the HTTP/1.1 connection
    /// to return to the pool) until it ends; cut when the backend sends
    /// nothing for `read_timeout`.
    pub(crate) fn upstream(
        inner: UpstreamBody,
        slot: InFlight,
        client: Arc<ClientConn>,
        read_timeout: Duration,
    ) -> ResponseBody {
        let untaken = client.is_h2();
        if untaken {
            client.untaken();
        }
        let mut body = ResponseBody::from(Kind::Upstream(Streaming {
            inner,
            lease: Some(Lease { slot }),
            sent: 0,
            client,
            untaken,
            read_timeout,
            timer: None,
            armed: false,
        }));
        if body.is_end_stream() {
            body.finish();
        }
        body
    }

    pub(crate) fn full(bytes: impl Into<Bytes>) -> ResponseBody {
        ResponseBody::from(Kind::Full(Some(bytes.into())))
    }

    /// `seen`, then the rest of `rest`.
    pub(crate) fn resumed(seen: Bytes, rest: ResponseBody) -> ResponseBody {
        ResponseBody::from(Kind::Resumed(Some(seen), Box::new(rest)))
    }

    pub(crate) fn empty() -> ResponseBody {
        ResponseBody::from(Kind::Full(None))
    }

    fn from(kind: Kind) -> ResponseBody {
        ResponseBody {
            kind,
            logged: None,
            exchange: None,
        }
    }

    /// Logs the request in `logged` when this body ends.
    pub(crate) fn logged(mut self, logged: Box<Logged>) -> ResponseBody {
        self.logged = Some(logged);
        self
    }

    /// Holds `exchange` open until this body is dropped.
    pub(crate) fn hold(&mut self, exchange: OpenExchange) {
        self.exchange = Some(exchange);
    }

    /// The body ended cleanly: the connection may carry another request.
    fn finish(&mut self) {
        if let Kind::Upstream(s) = &mut self.kind {
            s.finish();
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some(l) = self.logged.take() {
            let Logged {
                log,
                line,
                mut outcome,
                started,
                bytes_in,
            } = *l;
            outcome.duration = started.elapsed();
            outcome.bytes_in = bytes_in.map_or(0, |b| b.load(Ordering::Relaxed));
            outcome.incomplete = !self.is_end_stream();
            log.send(line, &outcome);
        }
    }
}

impl Streaming {
    /// Ends the lease (if it has not ended), counting the bytes sent.
    fn release(&mut self) -> Option<Lease> {
        let lease = self.lease.take()?;
        lease.slot.pool().count_bytes_out(std::mem::take(&mut self.sent));
        Some(lease)
    }

    fn finish(&mut self) {
        if let Some(Lease { slot }) = self.release() {
            if let Some(conn) = self.inner.reusable() {
                slot.backend().upstream.check_in(conn);
            }
            drop(slot);
        }
    }

    /// Waiting on the backend: `true` once it has sent nothing for
    /// `read_timeout`.
    fn read_timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.armed {
            let deadline = Instant::now() + self.read_timeout;
            match &mut self.timer {
                Some(t) => t.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed = true;
        }
        self.timer.as_mut().is_some_and(|t| t.as_mut().poll(cx).is_ready())
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        self.release();
        if self.untaken {
            self.client.taken();
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = ResponseBodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = this.kind.poll_frame(cx);
        if let (Some(l), Poll::Ready(Some(Ok(frame)))) = (&mut this.logged, &polled) {
            l.outcome.bytes_out += frame.data_ref().map_or(0, |d| d.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::Upstream(s) => s.inner.is_end_stream(),
            Kind::Resumed(seen, rest) => seen.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Upstream(s) => s.inner.size_hint(),
            Kind::Resumed(..) => SizeHint::default(),
        }
    }
}

impl Kind {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, ResponseBodyError>>> {
        let s = match self {
            Kind::Full(bytes) => return Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Resumed(seen, rest) => {
                if let Some(b) = seen.take() {
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                return rest.kind.poll_frame(cx);
            }
            Kind::Upstream(s) => s,
        };
        if s.untaken {
            s.untaken = false;
            s.client.taken();
        }
        match Pin::new(&mut s.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                s.armed = false;
                if let (true, Some(data)) = (s.lease.is_some(), frame.data_ref()) {
                    s.sent += data.len() as u64;
                }
                if s.inner.is_end_stream() {
                    s.finish();
                } else if s.client.is_h2() {
                    s.untaken = true;
                    s.client.untaken();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                // Broken upstream body: free the slot, drop the connection.
                s.release();
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                s.finish();
                Poll::Ready(None)
            }
            Poll::Pending if s.lease.is_some() && s.read_timed_out(cx) => {
                if let Some(lease) = s.release() {
                    let backend = lease.slot.backend();
                    tracing::info!(backend = %backend.address, timeout = ?s.read_timeout, "the backend stalled mid-body; ending the response");
                    note_failure(backend);
                    lease.slot.pool().count_error(UPSTREAM_READ_TIMEOUT);
                }
                Poll::Ready(Some(Err(ResponseBodyError::ReadTimeout(s.read_timeout))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
